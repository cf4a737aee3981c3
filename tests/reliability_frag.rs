//! Fragmented UDP through the mapping (the "reliability" issue, item 2).
//!
//! Datagrams of 3000 and 8000 bytes cross a 1500-byte path as fragments. Non-first fragments
//! carry no ports, so netnat needs the kernel to reassemble them before its prerouting chain
//! (-300): reassembly happens at -400 only while conntrack is active in the namespace, and the
//! router here has no rule of its own, so it is netnat's table (its never-jumped `ct` chain)
//! that must activate it. The echo comes back fragmented by the server, is reassembled on the
//! router too, translated whole at postrouting and fragmented again towards the client.
//!
//! Needs root and: iproute2 nftables conntrack tcpdump tshark python3.

mod common;

use std::time::Duration;

use common::capture::{Capture, fields};
use common::scenario::{Netnat, netnat_bin};
use common::status::{Doc, service, settle};
use common::{Family, PYTHON, Topology, require_root, script};

fn fragments(name: &str, fam: Family) {
    if !require_root(name) {
        return;
    }
    let t = Topology::new();
    // No rule of the router's own: nothing but netnat can have activated conntrack.
    let ruleset = t.rtr.must(&["nft", "list", "ruleset"]);
    assert!(
        ruleset.trim().is_empty(),
        "{name}: the router has rules before netnat:\n{ruleset}"
    );
    let _echo = {
        let mut p = t.spawn(
            &t.srv,
            "udp-echo",
            &[PYTHON, &script("udp_echo.py"), fam.server(), "53", "120"],
        );
        t.srv.wait_listening("udp", 53, Duration::from_secs(10));
        assert!(
            p.try_status().is_none(),
            "echo server died\n{}",
            p.evidence()
        );
        p
    };
    let svc = format!(
        "service pub0 port {} 5300 UDP {} 53",
        fam.extra_pub(),
        fam.server()
    );
    let conf = format!("{svc}\n");
    let n = Netnat::start(&t, &conf, "netnat").unwrap_or_else(|e| panic!("{name}: {e}"));

    // Only netnat's tables (its own and the leak guard), and the ct expressions in them are
    // their own.
    let ruleset = t.rtr.must(&["nft", "list", "ruleset"]);
    let tables: Vec<&str> = ruleset
        .lines()
        .filter(|l| l.starts_with("table "))
        .collect();
    assert_eq!(tables.len(), 2, "{name}: {ruleset}");
    assert!(
        tables[0].starts_with("table inet netnat {") && tables[1] == "table inet netnat_guard {",
        "{name}: {ruleset}"
    );

    let cap = Capture::on("pub0")
        .filter("udp or icmp or icmp6 or ip6")
        .open_tail()
        .start(&t, &t.rtr);
    let mut moved = 0u64;
    for size in [3000usize, 8000] {
        let out = t.cli.run(&[
            PYTHON,
            &script("udp_big.py"),
            fam.extra_pub(),
            "5300",
            &size.to_string(),
            "3",
        ]);
        assert!(
            out.success(),
            "{name}: {size}-byte datagrams did not come back intact\n{out}\n{}",
            n.proc.evidence()
        );
        let ok = out.stdout.lines().filter(|l| l.starts_with("ok ")).count();
        assert_eq!(ok, 3, "{name}: {out}");
        moved += 2 * 3 * size as u64;
    }
    let st = settle(&n, Duration::from_millis(300), Duration::from_secs(10));
    let pcap = cap.stop();

    // netnat saw whole datagrams only: six in, six out, nothing dropped as a fragment.
    let s = service(&st, &svc);
    assert_eq!(
        (
            s.n("in_packets"),
            s.n("out_packets"),
            s.n("drops.malformed")
        ),
        (6, 6, 0),
        "{name}: {st:?}"
    );
    assert!(
        s.n("in_bytes") > 3 * (3000 + 8000),
        "{name}: netnat saw less than whole datagrams: {st:?}"
    );
    assert_eq!(st.n("unattributed_drops.malformed"), 0, "{name}: {st:?}");

    // The wire really carried fragments, both ways, and nothing private.
    let frag_filter = match fam {
        Family::V4 => "ip.flags.mf == 1 || ip.frag_offset > 0",
        Family::V6 => "ipv6.fraghdr",
    };
    let frags = fields(
        &pcap,
        frag_filter,
        &["frame.number", &format!("{}.src", fam.ip_field())],
    );
    let from_client = frags.iter().filter(|f| f[1] == fam.client()).count();
    let to_client = frags.iter().filter(|f| f[1] == fam.extra_pub()).count();
    assert!(
        from_client >= 6 * 2 && to_client >= 6 * 2,
        "{name}: expected fragments both ways on pub0, saw {from_client} from the client and \
         {to_client} from the apparent address"
    );
    let leaks = fields(&pcap, fam.private_net_filter(), &["frame.number"]).len();
    assert_eq!(leaks, 0, "{name}: private addresses on pub0");

    // conntrack tracked the flow as translated (client → actual server).
    let ct = t.rtr.run(&["conntrack", "-L", "-p", "udp"]);
    let flow = ct
        .stdout
        .lines()
        .chain(ct.stderr.lines())
        .find(|l| l.contains(&format!("dst={}", fam.server())) && l.contains("dport=53"));
    assert!(
        flow.is_some_and(|l| l.contains(&format!("src={}", fam.client()))),
        "{name}: conntrack in the router does not show client → actual server:\n{ct}"
    );

    // `netnat check` in the router namespace reports conntrack.
    let check = t.rtr.run(&[
        netnat_bin(),
        "check",
        "--config",
        n.config.to_str().expect("utf-8"),
    ]);
    let line = check
        .stdout
        .lines()
        .chain(check.stderr.lines())
        .find(|l| l.contains("conntrack"))
        .unwrap_or_else(|| panic!("{name}: `netnat check` says nothing of conntrack\n{check}"));
    assert!(
        line.contains("available") && line.contains("activates"),
        "{name}: `netnat check` conntrack finding: {line}\n{check}"
    );
    eprintln!(
        "{name}: 3x3000 + 3x8000 bytes echoed intact ({moved} payload bytes moved), \
         {from_client} fragments in, {to_client} out on pub0, netnat saw 6+6 whole datagrams, \
         conntrack: {}",
        flow.unwrap_or("").trim()
    );
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn frag_udp_3000_8000_cross_intact_v4() {
    fragments("frag_udp_3000_8000_cross_intact_v4", Family::V4);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn frag_udp_3000_8000_cross_intact_v6() {
    fragments("frag_udp_3000_8000_cross_intact_v6", Family::V6);
}
