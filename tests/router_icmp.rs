//! The router's own ICMP errors about traffic that is none of netnat's still reach the client
//! while netnat runs (traceroute's router hop, refusals). Regression: reply-side ICMP rules used
//! to queue every error leaving the public interface, and the kernel drops a queued packet that
//! shares an unconfirmed conntrack entry, which the router's error about a flow's first packet
//! does.

mod common;

use common::scenario::{HTTP, Netnat};
use common::{Topology, require_root};

/// One TTL-1 ping from the client to `dst`: what came back.
fn ttl1_ping(t: &Topology, dst: &str) -> String {
    t.cli
        .run(&["ping", "-n", "-c", "1", "-W", "2", "-t", "1", dst])
        .stdout
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn router_time_exceeded_for_unmapped_traffic_reaches_the_client() {
    if !require_root("router_time_exceeded_for_unmapped_traffic_reaches_the_client") {
        return;
    }
    let t = Topology::new();
    // Reference first: without netnat the router answers a TTL-1 ping to the server.
    let before = ttl1_ping(&t, "192.168.77.10");
    assert!(
        before.contains("Time to live exceeded"),
        "reference without netnat: {before}"
    );

    let config = format!(
        "service pub0 port * {} TCP 192.168.77.10 {}\n",
        HTTP.app_port, HTTP.act_port
    );
    let mut netnat = Netnat::start(&t, &config, "netnat").expect("netnat ready");
    let during = ttl1_ping(&t, "192.168.77.10");
    assert!(
        during.contains("From 10.99.1.1") && during.contains("Time to live exceeded"),
        "with netnat running the router's own error must still arrive: {during}\n{}",
        netnat.proc.evidence()
    );
    assert_eq!(
        netnat
            .terminate(std::time::Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
}
