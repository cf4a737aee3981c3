//! Reference data-path tests: the kernel's own `dnat` doing netnat's mappings on the same
//! topology, checked by the same scenarios as netnat (tests/datapath.rs). They show what the
//! right result looks like, and that the harness and its oracles work, on any kernel with
//! nf_nat, before and independently of netnat.
//!
//! Needs root and: iproute2 nftables curl socat tcpdump tshark ethtool python3 (+ scapy for
//! the forged-checksum test).

mod common;

use std::time::Duration;

use common::capture::{self, Capture};
use common::scenario::{
    AppAddr, Case, Translator, scenario_bulk, scenario_capture, scenario_endpoints,
    scenario_firewall,
};
use common::{Family, PYTHON, Topology, matrix, require_root, script};

const TR: Translator = Translator::KernelDnat;

matrix! { TR, scenario_endpoints:
    dnat_endpoints_v4_fixed => V4, Fixed;
    dnat_endpoints_v4_star => V4, Star;
    dnat_endpoints_v6_fixed => V6, Fixed;
    dnat_endpoints_v6_star => V6, Star;
}

matrix! { TR, scenario_capture:
    dnat_capture_v4_fixed => V4, Fixed;
    dnat_capture_v4_star => V4, Star;
    dnat_capture_v6_fixed => V6, Fixed;
    dnat_capture_v6_star => V6, Star;
}

matrix! { TR, scenario_firewall:
    dnat_firewall_mark_rule_v4_fixed => V4, Fixed;
    dnat_firewall_mark_rule_v6_star => V6, Star;
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn dnat_bulk_50mib_v4_fixed() {
    let name = "dnat_bulk_50mib_v4_fixed";
    scenario_bulk(name, Case::new(TR, Family::V4, AppAddr::Fixed), true);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn dnat_bulk_50mib_v6_fixed() {
    let name = "dnat_bulk_50mib_v6_fixed";
    scenario_bulk(name, Case::new(TR, Family::V6, AppAddr::Fixed), true);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn dnat_bulk_50mib_offload_off_v4_star() {
    let name = "dnat_bulk_50mib_offload_off_v4_star";
    scenario_bulk(name, Case::new(TR, Family::V4, AppAddr::Star), false);
}

/// The capture tests' checksum filter really catches bad checksums: scapy sends packets with
/// forged IPv4 header, TCP and UDP checksums (v4 and v6) from the client; the capture on the
/// router's pub0 must flag exactly those, each with the right kind.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn capture_filter_catches_forged_bad_checksums() {
    let name = "capture_filter_catches_forged_bad_checksums";
    if !require_root(name) {
        return;
    }
    let t = Topology::new();
    t.tx_offload_off();
    let mac = t.mac(&t.rtr, "pub0");
    let cap = Capture::start(&t, &t.rtr, "pub0");
    let sent = t.cli.run(&[
        PYTHON,
        &script("forge_bad_checksums.py"),
        "eth0",
        &mac,
        Family::V4.client(),
        Family::V4.router_pub(),
        Family::V6.client(),
        Family::V6.router_pub(),
    ]);
    assert!(sent.success(), "scapy could not send\n{sent}");
    std::thread::sleep(Duration::from_millis(200));
    let pcap = cap.stop();
    let expect = [
        (
            "ip.checksum.status == \"Bad\" && udp.srcport == 40001",
            "IPv4 header",
        ),
        (
            "tcp.checksum.status == \"Bad\" && ip && tcp.srcport == 40002",
            "IPv4/TCP",
        ),
        (
            "udp.checksum.status == \"Bad\" && ip && udp.srcport == 40003",
            "IPv4/UDP",
        ),
        (
            "tcp.checksum.status == \"Bad\" && ipv6 && tcp.srcport == 40004",
            "IPv6/TCP",
        ),
        (
            "udp.checksum.status == \"Bad\" && ipv6 && udp.srcport == 40005",
            "IPv6/UDP",
        ),
    ];
    let all = capture::summary(&pcap, "", 50);
    for (filter, what) in expect {
        let n = capture::count(
            &pcap,
            &format!("({}) && ({filter})", capture::BAD_CHECKSUM_FILTER),
        );
        assert_eq!(
            n, 1,
            "{name}: the filter did not flag the forged {what} checksum once\n{all}"
        );
    }
    // 0xFFFF for a computed 0x0000 is the same zero: not flagged.
    for port in [40006, 40007] {
        let f = format!("tcp.srcport == {port}");
        assert_eq!(
            capture::count(&pcap, &f),
            1,
            "{name}: forged packet {port} missing\n{all}"
        );
        let n = capture::count(&pcap, &format!("({}) && {f}", capture::BAD_CHECKSUM_FILTER));
        assert_eq!(
            n, 0,
            "{name}: TCP checksum 0xFFFF for 0x0000 flagged as bad\n{all}"
        );
    }
    // A UDP checksum of 0 is caught apart.
    let n = capture::count(
        &pcap,
        &format!(
            "({}) && udp.srcport == 40008",
            capture::MISSING_UDP_CHECKSUM_FILTER
        ),
    );
    assert_eq!(
        n, 1,
        "{name}: the UDP packet without checksum was not caught\n{all}"
    );
    // And nothing else: the router's own answers (RST, port unreachable) are all good.
    let bad = capture::count(&pcap, capture::BAD_CHECKSUM_FILTER);
    assert_eq!(
        bad, 5,
        "{name}: expected exactly the 5 forged packets flagged\n{all}"
    );
}
