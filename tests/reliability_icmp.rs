//! ICMP errors through the mapping, end to end (the "reliability" issue, item 1).
//!
//! - The actual server's port unreachable reaches the client as a refusal that quotes only the
//!   apparent endpoint (IPv4 and IPv6).
//! - With the router's private link at MTU 1400, a 50 MiB upload completes byte-exact: the
//!   router's "fragmentation needed" / "packet too big", which quote the translated (private)
//!   tuple, are translated on their way to the client, or the client would never learn the
//!   path MTU and the upload would stall in a PMTU black hole.
//! - Forged ICMP errors from the public side about flows that are no service's are passed to
//!   the router unchanged and never reach the private side; forged ones quoting a service's
//!   endpoint but no connection are dropped and counted (CVE-2019-5598), while the same error
//!   about a real connection reaches the server.
//!
//! Needs root and: iproute2 nftables socat tcpdump tshark python3 with scapy.

mod common;

use std::time::Duration;

use common::capture::{Capture, fields};
use common::scenario::{Netnat, random_file, sha256};
use common::status::{Doc, service, settle};
use common::{Family, PYTHON, Topology, heavy_lock, require_root};

/// Captures what may carry a private address on pub0: any ICMP (errors quote packets) and any
/// packet whose outer header holds a private address.
const LEAK_FILTER: &str = "icmp or icmp6 or net 192.168.77.0/24 or net fd99:77::/64";

fn private_filter(fam: Family) -> &'static str {
    fam.private_net_filter()
}

fn quiet() -> Duration {
    Duration::from_millis(300)
}

// ---------------------------------------------------------------------------------------------
// 1a: port unreachable from the actual server

fn port_unreachable(name: &str, fam: Family) {
    if !require_root(name) {
        return;
    }
    let t = Topology::new();
    // Nothing listens on the actual port 53 of the server: its kernel answers with a port
    // unreachable that quotes client → 192.168.77.10:53 (the translated datagram).
    let svc = format!(
        "service pub0 port {} 5300 UDP {} 53",
        fam.extra_pub(),
        fam.server()
    );
    let n = Netnat::start(&t, &format!("{svc} 0x0800\n"), "netnat")
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let cap = Capture::on("pub0")
        .name("pub0-icmp")
        .filter(LEAK_FILTER)
        .open_tail()
        .start(&t, &t.rtr);

    // A connected UDP socket reports the translated error as ECONNREFUSED on the next call.
    let af = if fam == Family::V4 {
        "AF_INET"
    } else {
        "AF_INET6"
    };
    let code = format!(
        "import socket\n\
         s = socket.socket(socket.{af}, socket.SOCK_DGRAM)\n\
         s.connect(('{app}', 5300))\n\
         s.settimeout(2)\n\
         for i in range(3):\n\
         \x20   s.send(b'are you there')\n\
         \x20   try:\n\
         \x20       s.recv(2048)\n\
         \x20       print('answer', flush=True)\n\
         \x20   except ConnectionRefusedError:\n\
         \x20       print('refused', flush=True)\n\
         \x20       break\n\
         \x20   except socket.timeout:\n\
         \x20       print('timeout', flush=True)\n",
        app = fam.extra_pub()
    );
    let out = t.cli.run(&[PYTHON, "-c", &code]);
    let st = settle(&n, quiet(), Duration::from_secs(10));
    let pcap = cap.stop();
    assert!(
        out.success() && out.stdout.trim() == "refused",
        "{name}: the client's connected UDP socket did not see ECONNREFUSED\n{out}\n{}",
        n.proc.evidence()
    );
    assert!(
        service(&st, &svc).n("icmp_errors") >= 1,
        "{name}: no ICMP error counted for the service: {st:?}"
    );

    let leaks = fields(&pcap, private_filter(fam), &["frame.number"]).len();
    assert_eq!(
        leaks, 0,
        "{name}: {leaks} packet(s) on pub0 carry a private address (outer or quoted)"
    );
    // The error the client got: port unreachable, from and quoting the apparent endpoint.
    let (filter, f) = match fam {
        Family::V4 => (
            "icmp.type == 3 && icmp.code == 3",
            ["ip.src", "ip.dst", "udp.srcport", "udp.dstport"],
        ),
        Family::V6 => (
            "icmpv6.type == 1 && icmpv6.code == 4",
            ["ipv6.src", "ipv6.dst", "udp.srcport", "udp.dstport"],
        ),
    };
    let errs = fields(&pcap, filter, &f);
    assert!(
        !errs.is_empty(),
        "{name}: no port unreachable on pub0 at all"
    );
    for e in &errs {
        // Outer and quoted addresses come comma-separated: outer src, quoted src.
        let srcs: Vec<&str> = e[0].split(',').collect();
        let dsts: Vec<&str> = e[1].split(',').collect();
        assert_eq!(
            srcs,
            [fam.extra_pub(), fam.client()],
            "{name}: error {e:?}: outer source must be the apparent address, the quote from the client"
        );
        assert_eq!(
            dsts,
            [fam.client(), fam.extra_pub()],
            "{name}: error {e:?}: the quote must name the apparent address"
        );
        assert_eq!(
            e[3], "5300",
            "{name}: the quote must name the apparent port: {e:?}"
        );
    }
    eprintln!(
        "{name}: {} port unreachable(s) on pub0, all quoting {}:5300; private addresses on pub0: 0",
        errs.len(),
        fam.extra_pub()
    );
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn icmp_port_unreachable_quotes_apparent_endpoint_v4() {
    port_unreachable(
        "icmp_port_unreachable_quotes_apparent_endpoint_v4",
        Family::V4,
    );
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn icmp_port_unreachable_quotes_apparent_endpoint_v6() {
    port_unreachable(
        "icmp_port_unreachable_quotes_apparent_endpoint_v6",
        Family::V6,
    );
}

// ---------------------------------------------------------------------------------------------
// 1b, 1c: path MTU discovery through the mapping

/// 50 MiB client → server through `app:8081` with the router's priv0 at MTU 1400. The server
/// keeps MTU 1500, so its SYN-ACK advertises MSS 1460 and the client sends full-size DF
/// segments (or GSO super-packets of them, which the router checks against the MTU per
/// segment): the router must answer with "fragmentation needed" (IPv4) or "packet too big"
/// (IPv6), quoting the translated tuple. Only the upload: the server's own full-size packets
/// would be dropped by priv0's receive check, which is not what this test is about.
fn pmtu_upload(name: &str, fam: Family) {
    if !require_root(name) {
        return;
    }
    let _heavy = heavy_lock();
    let t = Topology::new();
    t.rtr.must(&["ip", "link", "set", "priv0", "mtu", "1400"]);
    let svc = format!(
        "service pub0 port {} 8081 TCP {} 81",
        fam.extra_pub(),
        fam.server()
    );
    let n = Netnat::start(&t, &format!("{svc} 0x0800\n"), "netnat")
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let src = random_file(&t, "upload.bin", 50 * 1024 * 1024);
    let want = sha256(&src);
    let recv = t.dir.file("upload.recv");
    let tcp = fam.socat_tcp();
    let mut server = t.spawn(
        &t.srv,
        "socat-server",
        &[
            "socat",
            "-u",
            &format!("{tcp}-LISTEN:81,reuseaddr"),
            &format!("OPEN:{},creat,trunc", recv.display()),
        ],
    );
    t.srv.wait_listening("tcp", 81, Duration::from_secs(10));
    let cap = Capture::on("pub0")
        .name("pub0-pmtu")
        .filter(LEAK_FILTER)
        .open_tail()
        .start(&t, &t.rtr);
    let client = t.cli.run_timeout(
        &[
            "socat",
            "-u",
            &format!("OPEN:{}", src.display()),
            &format!("{tcp}:{}", fam.hostport(fam.extra_pub(), 8081)),
        ],
        Duration::from_secs(90),
    );
    let done = server.wait_timeout(Duration::from_secs(20));
    let st = settle(&n, quiet(), Duration::from_secs(10));
    let pcap = cap.stop();
    assert!(
        client.success() && done.is_some_and(|s| s.success()),
        "{name}: the upload did not complete (PMTU black hole?)\n{client}\n{}\n{}",
        server.evidence(),
        n.proc.evidence()
    );
    assert_eq!(sha256(&recv), want, "{name}: uploaded file differs");

    let (filter, f) = match fam {
        Family::V4 => (
            "icmp.type == 3 && icmp.code == 4",
            ["icmp.mtu", "ip.dst", "tcp.dstport"],
        ),
        Family::V6 => (
            "icmpv6.type == 2",
            ["icmpv6.mtu", "ipv6.dst", "tcp.dstport"],
        ),
    };
    let errs = fields(&pcap, filter, &f);
    assert!(
        !errs.is_empty(),
        "{name}: the router sent no fragmentation-needed/packet-too-big to the client: the \
         test did not exercise PMTU discovery"
    );
    for e in &errs {
        assert_eq!(e[0], "1400", "{name}: {e:?}");
        assert_eq!(
            e[1].split(',').collect::<Vec<_>>(),
            [fam.client(), fam.extra_pub()],
            "{name}: the quote must name the apparent address: {e:?}"
        );
        assert_eq!(
            e[2], "8081",
            "{name}: the quote must name the apparent port: {e:?}"
        );
    }
    let leaks = fields(&pcap, private_filter(fam), &["frame.number"]).len();
    assert_eq!(
        leaks, 0,
        "{name}: {leaks} packet(s) on pub0 name a private address"
    );
    let icmp = service(&st, &svc).n("icmp_errors");
    assert!(
        icmp >= errs.len() as u64,
        "{name}: icmp_errors {icmp} < {} seen",
        errs.len()
    );
    eprintln!(
        "{name}: 50 MiB uploaded in {:.2}s, sha256 equal; {} PMTU error(s) translated \
         (icmp_errors {icmp}), private addresses on pub0: 0",
        client.elapsed.as_secs_f64(),
        errs.len()
    );
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn icmp_frag_needed_translated_upload_50mib_v4() {
    pmtu_upload("icmp_frag_needed_translated_upload_50mib_v4", Family::V4);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn icmp_packet_too_big_translated_upload_50mib_v6() {
    pmtu_upload("icmp_packet_too_big_translated_upload_50mib_v6", Family::V6);
}

// ---------------------------------------------------------------------------------------------
// 1d: forged errors about no service's flow

/// scapy, in the client: ICMP errors to the apparent addresses quoting (a) the apparent
/// address with a port that is no service, (b) a random flow of strangers, each 5 times, IPv4
/// and IPv6; then (c) one quoting a service's apparent endpoint.
const FORGE: &str = r#"
import sys
from scapy.all import IP, ICMP, UDP, IPv6, ICMPv6DestUnreach, Raw, send
which = sys.argv[1]
pk = []
if which == "unrelated":
    for i in range(5):
        pk.append(IP(src="10.99.1.2", dst="10.99.1.80")/ICMP(type=3, code=3)/
                  IP(src="10.99.1.80", dst="10.99.1.2")/UDP(sport=9999, dport=40000 + i)/Raw(b"x" * 8))
        pk.append(IP(src="10.99.1.2", dst="10.99.1.80")/ICMP(type=3, code=3)/
                  IP(src="203.0.113.7", dst="198.51.100.9")/UDP(sport=1234 + i, dport=5678)/Raw(b"x" * 8))
        pk.append(IPv6(src="fd99:1::2", dst="fd99:1::80")/ICMPv6DestUnreach(code=4)/
                  IPv6(src="fd99:1::80", dst="fd99:1::2")/UDP(sport=9999, dport=40000 + i)/Raw(b"x" * 8))
        pk.append(IPv6(src="fd99:1::2", dst="fd99:1::80")/ICMPv6DestUnreach(code=4)/
                  IPv6(src="2001:db8::7", dst="2001:db8::9")/UDP(sport=1234 + i, dport=5678)/Raw(b"x" * 8))
elif which == "service":
    # Quoting the service's apparent endpoint, about client ports no flow ever used.
    pk.append(IP(src="10.99.1.2", dst="10.99.1.80")/ICMP(type=3, code=3)/
              IP(src="10.99.1.80", dst="10.99.1.2")/UDP(sport=5300, dport=40001)/Raw(b"x" * 8))
    pk.append(IP(src="10.99.1.2", dst="10.99.1.80")/ICMP(type=3, code=4)/
              IP(src="10.99.1.80", dst="10.99.1.77")/UDP(sport=5300, dport=33333)/Raw(b"x" * 8))
    pk.append(IPv6(src="fd99:1::2", dst="fd99:1::80")/ICMPv6DestUnreach(code=4)/
              IPv6(src="fd99:1::80", dst="fd99:1::2")/UDP(sport=5300, dport=40002)/Raw(b"x" * 8))
else:
    # About the real flow from client port 47000 that the test opened before.
    pk.append(IP(src="10.99.1.2", dst="10.99.1.80")/ICMP(type=3, code=3)/
              IP(src="10.99.1.80", dst="10.99.1.2")/UDP(sport=5300, dport=47000)/Raw(b"x" * 8))
send(pk, verbose=0)
print("sent", len(pk))
"#;

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn icmp_forged_errors_about_no_service_stay_on_the_public_side() {
    let name = "icmp_forged_errors_about_no_service_stay_on_the_public_side";
    if !require_root(name) {
        return;
    }
    let t = Topology::new();
    let v4 = "service pub0 port 10.99.1.80 5300 UDP 192.168.77.10 53";
    let v6 = "service pub0 port fd99:1::80 5300 UDP fd99:77::10 53";
    let n = Netnat::start(&t, &format!("{v4}\n{v6}\n"), "netnat")
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let cap = Capture::on("priv0")
        .name("priv0-icmp")
        .filter("icmp or icmp6")
        .open_tail()
        .start(&t, &t.rtr);
    let before = settle(&n, quiet(), Duration::from_secs(10));
    t.cli
        .run(&[PYTHON, "-c", FORGE, "unrelated"])
        .expect_ok("scapy forging unrelated errors");
    let mid = settle(&n, quiet(), Duration::from_secs(10));

    // All 20 were steered to netnat (they are ICMP errors to an apparent address) and passed
    // unchanged: none was translated, none dropped.
    let d = |k: &str| mid.n(k) - before.n(k);
    assert_eq!(d("passed"), 20, "{name}: before {before:?}\nafter {mid:?}");
    assert_eq!(d("queue.received"), 20, "{name}: {mid:?}");
    for s in [v4, v6] {
        assert_eq!(service(&mid, s).n("icmp_errors"), 0, "{name}: {s} {mid:?}");
        assert_eq!(service(&mid, s).n("in_packets"), 0, "{name}: {s} {mid:?}");
    }

    // Quoting a service's endpoint but a flow that never existed: netnat translates it (it
    // keeps no per-flow state), then conntrack relates it to no connection and the guard hands
    // it back: dropped and counted, as kernel NAT forwards none of them.
    t.cli
        .run(&[PYTHON, "-c", FORGE, "service"])
        .expect_ok("scapy forging errors about no connection of the service");
    let forged = settle(&n, quiet(), Duration::from_secs(10));
    assert_eq!(
        service(&forged, v4).n("drops.unrelated_icmp"),
        2,
        "{name}: {forged:?}"
    );
    assert_eq!(
        service(&forged, v6).n("drops.unrelated_icmp"),
        1,
        "{name}: {forged:?}"
    );

    // The same error about a real flow (client port 47000, answered by the server) is
    // related by conntrack and reaches the server.
    let _echo = t.spawn(
        &t.srv,
        "udp-echo",
        &[
            PYTHON,
            &common::script("udp_echo.py"),
            "192.168.77.10",
            "53",
            "30",
        ],
    );
    t.srv.wait_listening("udp", 53, Duration::from_secs(10));
    let exchange = "import socket\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        s.bind(('10.99.1.2', 47000))\n\
        s.settimeout(3)\n\
        s.sendto(b'hello', ('10.99.1.80', 5300))\n\
        print(s.recvfrom(100))\n";
    t.cli
        .run(&[PYTHON, "-c", exchange])
        .expect_ok("a real UDP exchange through the service");
    t.cli
        .run(&[PYTHON, "-c", FORGE, "flow"])
        .expect_ok("scapy sending an error about the real flow");
    let after = settle(&n, quiet(), Duration::from_secs(10));
    assert_eq!(
        service(&after, v4).n("drops.unrelated_icmp"),
        2,
        "{name}: the error about a real flow was dropped: {after:?}"
    );
    let pcap = cap.stop();

    // On the private side: exactly the one error about the real flow, quoting the actual
    // endpoint; none of the 23 others.
    let errs = fields(
        &pcap,
        "icmp.type == 3 || icmpv6.type == 1",
        &["ip.dst", "udp.srcport", "udp.dstport"],
    );
    assert_eq!(
        errs,
        vec![vec![
            "192.168.77.10,10.99.1.2".to_string(),
            "53".to_string(),
            "47000".to_string()
        ]],
        "{name}: ICMP errors on priv0 other than the one about the real flow"
    );
    eprintln!(
        "{name}: 20 forged errors about no service: passed unchanged to the router; 3 quoting a \
         service but no connection: dropped as unrelated; 1 about a real flow: translated; on \
         priv0 only that one"
    );
}
