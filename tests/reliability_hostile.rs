//! Hostile packets on the live path (the "reliability" issue, item 3).
//!
//! From the client namespace, tests/scripts/hostile.py sends 54 classes × 200 crafted packets
//! at layer 2 to the apparent endpoints: broken IPv4 headers, IP options, odd TCP headers,
//! odd UDP, bad checksums, IPv6 extension headers, fragments, forged ICMP errors. Each class
//! goes to a service of its own (apparent port 7000 + index), so netnat's per-service counters
//! tell what it did with each class; a counting chain of the test's own at prerouting -350
//! (after the kernel's input checks and defragmentation at -400, before netnat at -300) tells
//! what the kernel let through to netnat's hook at all.
//!
//! The expected fate of every class is written down in [`CLASSES`] before anything runs.
//! Afterwards: netnat still runs, every queued packet got a verdict (status and the kernel's
//! queue table agree, nothing waiting or dropped), curl still works, no private address ever
//! appeared on pub0, and SIGTERM gives exit status 0.
//!
//! Needs root and: iproute2 nftables curl tcpdump tshark python3 with scapy.

mod common;

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use common::capture::{Capture, fields};
use common::scenario::Netnat;
use common::status::{Doc, Value, service, settle};
use common::{PYTHON, Topology, kernel_queues, require_root, script};

/// Packets per class.
const COUNT: u64 = 200;

/// What a careful engineer expects to become of one class, decided from the kernel's input
/// path (net/ipv4/ip_input.c, net/ipv6/ip6_input.c, the defragmenters), netnat's rules
/// (nftables/README.md) and its documented rewrite contract (src/wire/mod.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// The kernel drops it before prerouting (header checks, hop-by-hop options, incomplete
    /// or overlapping fragments held or discarded by the defragmenter): netnat never sees it.
    Kernel,
    /// Reaches prerouting but matches none of netnat's rules (no TCP/UDP port to look up, not
    /// an ICMP error): never queued.
    NotQueued,
    /// Queued and translated (in_packets of the class's service).
    Translated,
    /// Fragment pairs: the kernel reassembles each pair into one datagram, which is translated.
    PairsTranslated,
    /// Queued and dropped as malformed, counted on the class's service (its header still
    /// names the service's endpoint).
    Dropped,
    /// Queued and dropped as malformed, counted as unattributed (no readable service port).
    DroppedNobody,
    /// Queued and passed unchanged (an ICMP error about no service's flow).
    Passed,
}

use Fate::*;

/// The classes hostile.py knows, in the order sent, with the expected fate and whether the
/// service behind it is TCP (else UDP).
const CLASSES: &[(&str, bool, Fate)] = &[
    ("v4_tcp_syn", true, Translated),
    // ip_rcv_core: header checksum, IHL < 5, IHL or total length past the packet, total
    // length below the header: all dropped before any hook.
    ("v4_ip_bad_checksum", true, Kernel),
    ("v4_ihl_4", true, Kernel),
    ("v4_ihl_beyond_packet", true, Kernel),
    ("v4_total_len_beyond_packet", true, Kernel),
    ("v4_total_len_below_ihl", true, Kernel),
    // Bytes after the total length are trimmed by the kernel: a normal SYN then.
    ("v4_trailing_bytes", true, Translated),
    // Total length 30 cuts the TCP header to 10 bytes: ports readable, header not complete.
    ("v4_total_len_cuts_tcp", true, Dropped),
    // IP options are checked after prerouting; netnat translates whatever options there are.
    ("v4_ip_options_nop", true, Translated),
    ("v4_ip_option_router_alert", true, Translated),
    ("v4_ip_option_garbage", true, Translated),
    // TCP data offset below 5 or past the segment.
    ("v4_tcp_doff_2", true, Dropped),
    ("v4_tcp_doff_15", true, Dropped),
    // netnat rewrites addresses and ports, never judges flags or options.
    ("v4_tcp_all_flags", true, Translated),
    ("v4_tcp_no_flags", true, Translated),
    ("v4_tcp_odd_options", true, Translated),
    ("v4_tcp_option_bad_length", true, Translated),
    // A bad checksum stays exactly as bad (incremental update), as with kernel NAT.
    ("v4_tcp_bad_checksum", true, Translated),
    // Two bytes of TCP: `th dport` cannot be read, the rule does not match.
    ("v4_tcp_2_bytes", true, NotQueued),
    ("v4_udp_empty", false, Translated),
    ("v4_udp_len_0", false, Dropped),
    ("v4_udp_len_beyond", false, Dropped),
    ("v4_udp_no_checksum", false, Translated),
    ("v4_udp_bad_checksum", false, Translated),
    // netnat's table activates conntrack, so the defragmenter at -400 holds lone fragments
    // (until ipfrag_time) and discards overlapping ones (RFC 5722 behaviour); only complete
    // datagrams reach prerouting.
    ("v4_frag_first_alone", false, Kernel),
    ("v4_frag_later_alone", false, Kernel),
    ("v4_frag_pairs", false, PairsTranslated),
    ("v4_frag_overlapping", false, Kernel),
    // Translated inbound. The router's time exceeded that should follow is NOT seen on pub0
    // with netnat running (open finding, see the report of this branch): the capture only
    // proves that nothing private leaks.
    ("v4_ttl_1", true, Translated),
    ("v4_other_protocol", false, NotQueued),
    ("v4_icmp_echo", false, NotQueued),
    ("v4_icmp_error_unrelated", false, Passed),
    // Errors quoting less than 8 bytes of transport header, or a packet of the other family.
    ("v4_icmp_error_short_quote", false, DroppedNobody),
    ("v4_icmp_error_quotes_ipv6", false, DroppedNobody),
    ("v6_tcp_syn", true, Translated),
    // ipv6_rcv: payload length past the packet.
    ("v6_payload_len_beyond", true, Kernel),
    ("v6_trailing_bytes", true, Translated),
    ("v6_tcp_short_header", true, Dropped),
    ("v6_hop_by_hop", true, Translated),
    // Hop-by-hop options are parsed before prerouting; option type 0x5e says "discard".
    ("v6_hop_by_hop_discard_option", true, Kernel),
    ("v6_dest_options", true, Translated),
    ("v6_routing_segments_left_0", true, Translated),
    // Documented: with segments left the checksum covers the final destination, so netnat
    // refuses to rewrite (Malformed::SourceRouted); no port is read through extension
    // headers for attribution, so the drop is nobody's.
    ("v6_routing_segments_left_1", true, DroppedNobody),
    // Hop-by-hop anywhere but first is invalid (RFC 8200).
    ("v6_hop_by_hop_not_first", true, DroppedNobody),
    ("v6_ext_chain", true, Translated),
    // An atomic fragment (offset 0, M clear) is a whole datagram.
    ("v6_atomic_fragment", true, Translated),
    ("v6_frag_first_alone", false, Kernel),
    ("v6_frag_later_alone", false, Kernel),
    ("v6_frag_pairs", false, PairsTranslated),
    ("v6_hop_limit_1", true, Translated),
    // Invalid on IPv6, but netnat only updates checksums, it does not police them.
    ("v6_udp_zero_checksum", false, Translated),
    ("v6_no_next_header", false, NotQueued),
    ("v6_icmp_error_unrelated", false, Passed),
];

/// What was measured for one class: deltas over the class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Seen {
    /// Packets from the client counted at prerouting -350.
    pre: u64,
    /// Translated inbound for the class's service.
    translated: u64,
    /// Dropped as malformed, on the class's service.
    dropped: u64,
    /// Dropped as malformed, unattributed.
    dropped_nobody: u64,
    passed: u64,
    /// All packets netnat received (both directions: also the reactions of server and router).
    received: u64,
}

fn expected(fate: Fate) -> Seen {
    let n = COUNT;
    let q = |translated, dropped, dropped_nobody, passed| Seen {
        pre: n,
        translated,
        dropped,
        dropped_nobody,
        passed,
        received: 0,
    };
    match fate {
        Kernel => Seen::default(),
        NotQueued => q(0, 0, 0, 0),
        Translated => q(n, 0, 0, 0),
        PairsTranslated => Seen {
            pre: n / 2,
            translated: n / 2,
            ..Seen::default()
        },
        Dropped => q(0, n, 0, 0),
        DroppedNobody => q(0, 0, n, 0),
        Passed => q(0, 0, 0, n),
    }
}

fn app(v6: bool) -> &'static str {
    if v6 { "fd99:1::80" } else { "10.99.1.80" }
}

fn act(v6: bool) -> &'static str {
    if v6 { "fd99:77::10" } else { "192.168.77.10" }
}

fn service_line(i: usize) -> String {
    let (name, tcp, _) = CLASSES[i];
    let v6 = name.starts_with("v6");
    format!(
        "service pub0 port {} {} {} {} {}",
        app(v6),
        7000 + i,
        if tcp { "TCP" } else { "UDP" },
        act(v6),
        9000 + i
    )
}

/// The test's counting chain: packets of the client at prerouting -350, without neighbour
/// discovery and MLD (the client's kernel sends those on its own).
const COUNTING: &str = "table inet nnrel {\n\
    \tchain pre {\n\
    \t\ttype filter hook prerouting priority -350; policy accept;\n\
    \t\tmeta l4proto ipv6-icmp icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, mld-listener-report, mld2-listener-report } return\n\
    \t\tip saddr 10.99.1.2 counter\n\
    \t\tip6 saddr fd99:1::2 counter\n\
    \t}\n\
    }\n";

fn counted(t: &Topology) -> u64 {
    let out = t
        .rtr
        .must(&["nft", "list", "chain", "inet", "nnrel", "pre"]);
    out.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "packets")?;
            w.get(i + 1)?.parse::<u64>().ok()
        })
        .sum()
}

fn measure(st: &Value, svc: &str, pre: u64) -> Seen {
    let s = service(st, svc);
    Seen {
        pre,
        translated: s.n("in_packets"),
        dropped: s.n("drops.malformed"),
        dropped_nobody: st.n("unattributed_drops.malformed"),
        passed: st.n("passed"),
        received: st.n("queue.received"),
    }
}

fn delta(a: Seen, b: Seen) -> Seen {
    Seen {
        pre: b.pre - a.pre,
        translated: b.translated - a.translated,
        dropped: b.dropped - a.dropped,
        dropped_nobody: b.dropped_nobody - a.dropped_nobody,
        passed: b.passed - a.passed,
        received: b.received - a.received,
    }
}

/// Waits until hostile.py says it sent `class`.
fn wait_sent(p: &mut common::Proc, class: &str) {
    let needle = format!("sent {class} ");
    if let Err(e) = p.wait_stderr_or_stdout(&needle) {
        panic!("hostile.py: {e}");
    }
}

trait WaitOut {
    fn wait_stderr_or_stdout(&mut self, needle: &str) -> Result<(), String>;
}

impl WaitOut for common::Proc {
    /// Waits (at most 60 s) for `needle` on stdout; fails early when the process exits.
    fn wait_stderr_or_stdout(&mut self, needle: &str) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if self.stdout().contains(needle) {
                return Ok(());
            }
            if let Some(s) = self.try_status() {
                if self.stdout().contains(needle) {
                    return Ok(());
                }
                return Err(format!(
                    "exited ({s}) before {needle:?}\n{}",
                    self.evidence()
                ));
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!("no {needle:?} within 60 s\n{}", self.evidence()));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn hostile_packets_get_documented_verdicts_and_netnat_survives() {
    let name = "hostile_packets_get_documented_verdicts_and_netnat_survives";
    if !require_root(name) {
        return;
    }
    let start = Instant::now();
    let t = Topology::new();
    let http_log = t.dir.file("http.log");
    let _http = t.spawn(
        &t.srv,
        "http-server",
        &[
            PYTHON,
            &script("http_server.py"),
            "192.168.77.10",
            "80",
            http_log.to_str().expect("utf-8"),
            "300",
        ],
    );
    t.srv.wait_listening("tcp", 80, Duration::from_secs(10));
    let http = "service pub0 port 10.99.1.80 8080 TCP 192.168.77.10 80";
    let mut conf = format!("{http}\n");
    for i in 0..CLASSES.len() {
        conf.push_str(&service_line(i));
        conf.push('\n');
    }
    let mut n = Netnat::start(&t, &conf, "netnat").unwrap_or_else(|e| panic!("{name}: {e}"));
    t.rtr
        .nft_load(&t.dir.path, COUNTING)
        .expect_ok("loading the counting chain");
    // Lone fragments wait for ipfrag_time; when it ends the kernel answers with ICMP time
    // exceeded, which would land in a later class's counters. Keep them for the whole test.
    for s in [
        "net.ipv4.ipfrag_time=300",
        "net.netfilter.nf_conntrack_frag6_timeout=300",
    ] {
        t.rtr.must(&["sysctl", "-qw", s]);
    }
    let cap = Capture::on("pub0")
        .filter("icmp or icmp6 or net 192.168.77.0/24 or net fd99:77::/64")
        .open_tail()
        .start(&t, &t.rtr);

    let godir = t.dir.file("go");
    fs::create_dir_all(&godir).expect("go dir");
    let rmac = t.mac(&t.rtr, "pub0");
    let mut argv: Vec<String> = vec![
        PYTHON.into(),
        script("hostile.py"),
        "eth0".into(),
        rmac,
        godir.to_str().expect("utf-8").into(),
        COUNT.to_string(),
    ];
    argv.extend(
        CLASSES
            .iter()
            .enumerate()
            .map(|(i, (c, _, _))| format!("{c}:{}", 7000 + i)),
    );
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    // The counts before the first class, taken before the sender starts: it sends the first
    // class at once (settling takes 2.5 s with offload, longer than scapy takes to start).
    let quiet = Duration::from_millis(200);
    let mut rows = Vec::new();
    let mut before = settle(&n, quiet, Duration::from_secs(10));
    let mut pre_before = counted(&t);
    let mut sender = t.spawn(&t.cli, "hostile", &argv);
    for (i, &(class, _, fate)) in CLASSES.iter().enumerate() {
        let svc = service_line(i);
        let a = measure(&before, &svc, pre_before);
        wait_sent(&mut sender, class);
        let after = settle(&n, quiet, Duration::from_secs(20));
        let pre = counted(&t);
        let b = measure(&after, &svc, pre);
        rows.push((class, fate, delta(a, b)));
        before = after;
        pre_before = pre;
        fs::write(godir.join(format!("go-{class}")), "").expect("go file");
    }
    let done = sender.wait_timeout(Duration::from_secs(30));
    assert!(
        done.is_some_and(|s| s.success()),
        "{name}: hostile.py did not finish cleanly\n{}",
        sender.evidence()
    );

    // The table, and every mismatch at once.
    let mut table = String::from(
        "class                              expected           pre  transl  drop  drop-nobody  passed  queued(all)\n",
    );
    let mut wrong = Vec::new();
    let mut totals = Seen::default();
    for (class, fate, seen) in &rows {
        table.push_str(&format!(
            "{class:<34} {:<16} {:>5} {:>7} {:>5} {:>12} {:>7} {:>12}\n",
            format!("{fate:?}"),
            seen.pre,
            seen.translated,
            seen.dropped,
            seen.dropped_nobody,
            seen.passed,
            seen.received
        ));
        let mut want = expected(*fate);
        want.received = seen.received;
        if *fate == NotQueued {
            // The router answers some of these itself (protocol unreachable), and netnat
            // passes those errors on as not its own: allowed here, nowhere else.
            want.passed = seen.passed;
        }
        if want != *seen {
            wrong.push(format!("{class}: expected {want:?}\n      saw {seen:?}"));
        }
        totals.pre += seen.pre;
        totals.translated += seen.translated;
        totals.dropped += seen.dropped;
        totals.dropped_nobody += seen.dropped_nobody;
        totals.passed += seen.passed;
        totals.received += seen.received;
    }
    let sent = COUNT * CLASSES.len() as u64;
    table.push_str(&format!(
        "TOTAL sent {sent}: reached prerouting {}, translated in {}, dropped {} + {} unattributed, \
         passed {}, queued in all (with replies) {}\n",
        totals.pre,
        totals.translated,
        totals.dropped,
        totals.dropped_nobody,
        totals.passed,
        totals.received
    ));
    eprintln!("{name}:\n{table}");
    assert!(
        wrong.is_empty(),
        "{name}: {} class(es) not as documented:\n  {}\n{table}\n{}",
        wrong.len(),
        wrong.join("\n  "),
        n.proc.evidence()
    );
    assert!(sent >= 10_000, "{name}: only {sent} packets");

    // Every packet got a verdict; the kernel agrees; netnat still runs.
    assert!(
        n.proc.try_status().is_none(),
        "{name}: netnat died\n{}",
        n.proc.evidence()
    );
    let st = settle(&n, quiet, Duration::from_secs(10));
    assert_eq!(
        st.n("queue.received"),
        st.n("queue.verdicts"),
        "{name}: {st:?}"
    );
    let kq = kernel_queues(&t.rtr, 4747).expect("netnat's queues bound");
    assert_eq!(
        (kq.waiting, kq.queue_dropped, kq.user_dropped),
        (0, 0, 0),
        "{name}: kernel queue table {kq:?}"
    );

    // Normal traffic still works.
    let curl = t.cli.run(&[
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        "5",
        "http://10.99.1.80:8080/after-the-storm",
    ]);
    assert!(
        curl.success() && curl.stdout.contains("peer=10.99.1.2 "),
        "{name}: curl after the hostile packets\n{curl}\n{}",
        n.proc.evidence()
    );

    // Nothing private ever left on the public side, also in the errors sent back about
    // translated packets (the server's port unreachables, translated by netnat).
    let pcap = cap.stop();
    let leaks = fields(
        &pcap,
        "ip.addr == 192.168.77.0/24 || ipv6.addr == fd99:77::/64",
        &["frame.number"],
    )
    .len();
    let errors = fields(
        &pcap,
        "icmp.type == 3 || icmp.type == 11 || icmp.type == 12 || icmpv6.type <= 4",
        &["frame.number"],
    )
    .len();
    assert_eq!(
        leaks, 0,
        "{name}: {leaks} packet(s) with a private address on pub0"
    );
    assert!(
        errors > 0,
        "{name}: no ICMP error came back at all: capture broken?"
    );

    let status = n.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{name}: netnat exit {status:?} on SIGTERM\n{}",
        n.proc.evidence()
    );
    eprintln!(
        "{name}: {sent} crafted packets; {errors} ICMP errors on pub0, private addresses on \
         pub0: 0; queue {kq:?}; netnat exit 0; {:.1}s",
        start.elapsed().as_secs_f64()
    );
}
