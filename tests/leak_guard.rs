//! No reply ever reaches the public side with the actual server's private address: not when a
//! service is deleted or reloaded away, not when netnat stops (SIGTERM), dies (SIGKILL) or is
//! stopped (SIGSTOP), for TCP over IPv4 and IPv6 and for UDP.
//!
//! Each case runs one flow through the router that keeps going both ways for several seconds
//! (a rate-limited 20 MB TCP download, or a UDP ping-pong), hits it with the event 2 s in and
//! captures everything the *client* receives. The oracle is the client's capture: not one
//! packet with a private address (outer or quoted in an ICMP error) may be in it, and the
//! translated packets must be there (the oracle was looking). What the flow did afterwards
//! (completed, or cut) is asserted per event as netnat(8) documents it.
//!
//! The events and what the flow does:
//! - `service del`, and a reload whose configuration no longer has the service: the established
//!   TCP connection is translated until it ends (drain) and completes byte-exact; new
//!   connections are not served. A UDP flow stops at once.
//! - a reload that moves the service to another actual port: the client's next packets go to
//!   the new endpoint, which refuses them; the flow is cut cleanly (a reset or a port
//!   unreachable reaches the client, translated), nothing of the old one leaks.
//! - SIGTERM, SIGKILL: the flow is cut; the guard drops what the server still sends.
//! - SIGSTOP for 2 s, then SIGCONT: the flow resumes and completes.
//!
//! Needs root and: iproute2 (tc) nftables socat tcpdump tshark python3.

mod common;

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::capture::{self, Capture};
use common::scenario::{Netnat, netnat_bin, random_file, with_test_offload};
use common::{PYTHON, Proc, Topology, heavy_lock, require_root, run_bounded, script};

/// Any private-side address, as outer source or anywhere in a quoted packet.
const PRIVATE: &str = "ip.addr == 192.168.77.0/24 || ipv6.addr == fd99:77::/64";
/// Size of the download.
const BULK: u64 = 20 * 1024 * 1024;
/// The server's sending rate: 20 MB take about 7 s.
const RATE: &str = "24mbit";
/// When the event hits, after the flow started.
const EVENT_AFTER: Duration = Duration::from_secs(2);
/// How long SIGSTOP lasts.
const STOPPED_FOR: Duration = Duration::from_secs(2);
/// How long the UDP ping-pong runs.
const UDP_SECONDS: u32 = 7;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    ServiceDel,
    ReloadWithout,
    /// A reload that moves the service to another actual port (where nothing listens).
    ReloadChanged,
    Sigterm,
    Sigkill,
    Sigstop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    TcpV4,
    TcpV6,
    UdpV4,
}

impl Flow {
    /// The service line (without `service`) the flow goes through.
    fn words(self) -> &'static [&'static str] {
        match self {
            Flow::TcpV4 => &[
                "pub0",
                "port",
                "10.99.1.80",
                "8082",
                "TCP",
                "192.168.77.10",
                "82",
            ],
            Flow::TcpV6 => &[
                "pub0",
                "port",
                "fd99:1::80",
                "8082",
                "TCP",
                "fd99:77::10",
                "82",
            ],
            Flow::UdpV4 => &[
                "pub0",
                "port",
                "10.99.1.80",
                "5300",
                "UDP",
                "192.168.77.10",
                "53",
            ],
        }
    }

    /// Display filter for the translated packets the client receives.
    fn translated(self) -> &'static str {
        match self {
            Flow::TcpV4 => "ip.src == 10.99.1.80 && tcp.srcport == 8082",
            Flow::TcpV6 => "ipv6.src == fd99:1::80 && tcp.srcport == 8082",
            Flow::UdpV4 => "ip.src == 10.99.1.80 && udp.srcport == 5300",
        }
    }
}

/// Every flow's service plus one that no flow uses, so that a reload without the flow's
/// service still leaves netnat with work.
fn config(without: Option<Flow>) -> String {
    config_with(without, None)
}

/// [`config`], with `changed`'s service moved to actual port 83 instead.
fn config_with(without: Option<Flow>, changed: Option<Flow>) -> String {
    let mut c = String::new();
    for f in [Flow::TcpV4, Flow::TcpV6, Flow::UdpV4] {
        if Some(f) == changed {
            let mut w = f.words().to_vec();
            w[6] = "83";
            c.push_str(&format!("service {}\n", w.join(" ")));
        } else if Some(f) != without {
            c.push_str(&format!("service {}\n", f.words().join(" ")));
        }
    }
    c.push_str("service pub0 port * 9999 TCP 192.168.77.10 9999\n");
    c
}

/// What one case saw.
#[derive(Debug)]
struct Seen {
    private: usize,
    translated: usize,
    /// TCP: the download completed byte-exact. UDP: replies still came at the end.
    completed: bool,
    /// The client ended by itself (TCP: completed or reset), rather than waiting to be killed.
    ended: bool,
    detail: String,
    evidence: String,
}

fn netnat_ctl(ctl: &Path, args: &[&str]) -> common::CmdOutput {
    let mut c = std::process::Command::new(netnat_bin());
    c.args(args).arg("--control").arg(ctl);
    run_bounded(c, Duration::from_secs(20))
}

/// Applies `event` to the running netnat `n` (and undoes SIGSTOP after [`STOPPED_FOR`]).
fn hit(t: &Topology, n: &mut Netnat, event: Event, flow: Flow) {
    let ctl = t.dir.file("netnat.sock");
    match event {
        Event::ServiceDel => {
            let mut args = vec!["service", "del"];
            args.extend_from_slice(flow.words());
            netnat_ctl(&ctl, &args).expect_ok("netnat service del");
        }
        Event::ReloadWithout => {
            fs::write(&n.config, with_test_offload(&config(Some(flow)), "reload"))
                .expect("rewrite config");
            netnat_ctl(&ctl, &["reload"]).expect_ok("netnat reload");
        }
        Event::ReloadChanged => {
            fs::write(
                &n.config,
                with_test_offload(&config_with(None, Some(flow)), "reload"),
            )
            .expect("rewrite config");
            netnat_ctl(&ctl, &["reload"]).expect_ok("netnat reload");
        }
        Event::Sigterm => {
            n.proc.signal(libc::SIGTERM);
            assert!(
                n.proc.wait_timeout(Duration::from_secs(10)).is_some(),
                "netnat did not stop on SIGTERM\n{}",
                n.proc.evidence()
            );
        }
        Event::Sigkill => {
            n.proc.signal(libc::SIGKILL);
            assert!(n.proc.wait_timeout(Duration::from_secs(5)).is_some());
        }
        Event::Sigstop => {
            n.proc.signal(libc::SIGSTOP);
            thread::sleep(STOPPED_FOR);
            n.proc.signal(libc::SIGCONT);
        }
    }
}

fn run_tcp(t: &Topology, n: &mut Netnat, event: Event, flow: Flow) -> (bool, bool, String, Proc) {
    let file = random_file(t, "bulk.bin", BULK);
    let (listen, connect) = match flow {
        Flow::TcpV4 => ("TCP4-LISTEN:82,reuseaddr", "TCP4:10.99.1.80:8082"),
        _ => ("TCP6-LISTEN:82,reuseaddr", "TCP6:[fd99:1::80]:8082"),
    };
    let server = t.spawn(
        &t.srv,
        "socat-server",
        &["socat", "-u", &format!("OPEN:{}", file.display()), listen],
    );
    t.srv.wait_listening("tcp", 82, Duration::from_secs(10));
    let recv = t.dir.file("bulk.recv");
    let mut client = t.spawn(
        &t.cli,
        "socat-client",
        &[
            "socat",
            "-u",
            connect,
            &format!("CREATE:{}", recv.display()),
        ],
    );
    let size = || fs::metadata(&recv).map(|m| m.len()).unwrap_or(0);
    let start = Instant::now();
    while size() == 0 && start.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        size() > 0,
        "the download did not start\n{}",
        client.evidence()
    );
    thread::sleep(EVENT_AFTER.saturating_sub(start.elapsed()));
    let at_event = size();
    assert!(at_event < BULK, "the download finished before the event");
    hit(t, n, event, flow);
    if matches!(event, Event::ServiceDel | Event::ReloadWithout) {
        // Draining keeps the established connection, never a new one.
        let fresh = t.cli.run(&["socat", "-T", "3", "-u", connect, "-"]);
        assert!(
            !fresh.success() && fresh.stderr.contains("Connection refused"),
            "a new connection to a removed service was not refused\n{fresh}"
        );
    }
    // 20 MB at 3 MB/s: done within 15 s of the event if the flow goes on.
    let exit = client.wait_timeout(Duration::from_secs(15));
    let got = size();
    let completed = exit.is_some_and(|s| s.success())
        && got == BULK
        && common::scenario::sha256(&recv) == common::scenario::sha256(&file);
    let detail = format!(
        "{at_event} bytes when hit, {got} of {BULK} in the end, client {}",
        match exit {
            Some(s) => format!("exited ({s})"),
            None => "still waiting 15 s after the event (killed)".into(),
        }
    );
    drop(server);
    (completed, exit.is_some(), detail, client)
}

fn run_udp(t: &Topology, n: &mut Netnat, event: Event, flow: Flow) -> (bool, bool, String, Proc) {
    let server = t.spawn(
        &t.srv,
        "udp-echo",
        &[PYTHON, &script("udp_echo.py"), "192.168.77.10", "53", "60"],
    );
    t.srv.wait_listening("udp", 53, Duration::from_secs(10));
    let mut client = t.spawn(
        &t.cli,
        "udp-pingpong",
        &[
            PYTHON,
            &script("udp_pingpong.py"),
            "10.99.1.80",
            "5300",
            &UDP_SECONDS.to_string(),
        ],
    );
    thread::sleep(EVENT_AFTER);
    hit(t, n, event, flow);
    let exit = client.wait_timeout(Duration::from_secs(u64::from(UDP_SECONDS) + 10));
    assert!(
        exit.is_some(),
        "the UDP client did not end\n{}",
        client.evidence()
    );
    let line = client.stdout();
    let field = |k: &str| -> f64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    // Replies until the last second: the flow went on (or resumed).
    let completed = field("last_reply_s=") > f64::from(UDP_SECONDS) - 1.0;
    drop(server);
    (completed, true, line.trim().to_string(), client)
}

fn run_case(event: Event, flow: Flow) -> Seen {
    let t = Topology::new();
    let mut n = Netnat::start(&t, &config(None), "netnat").unwrap_or_else(|e| panic!("{e}"));
    t.srv.must(&[
        "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", RATE, "burst", "64kb",
        "latency", "200ms",
    ]);
    let cap = Capture::start(&t, &t.cli, "eth0");
    let (completed, ended, detail, client) = match flow {
        Flow::UdpV4 => run_udp(&t, &mut n, event, flow),
        _ => run_tcp(&t, &mut n, event, flow),
    };
    let pcap = cap.stop();
    let private = capture::count(&pcap, PRIVATE);
    let translated = capture::count(&pcap, flow.translated());
    let evidence = format!(
        "{}\n{}\n  private packets at the client:\n{}",
        client.evidence(),
        n.proc.evidence(),
        capture::summary(&pcap, PRIVATE, 10)
    );
    Seen {
        private,
        translated,
        completed,
        ended,
        detail,
        evidence,
    }
}

/// Runs `event` against every flow: zero private packets at the client each time, the flow
/// seen translated before, and the flow's fate as documented.
fn check(name: &str, event: Event, completes: impl Fn(Flow) -> bool) {
    if !require_root(name) {
        return;
    }
    let _heavy = heavy_lock();
    for flow in [Flow::TcpV4, Flow::TcpV6, Flow::UdpV4] {
        let seen = run_case(event, flow);
        eprintln!(
            "{name} {flow:?}: {} private-source packets reached the client, {} translated; \
             completed: {}; {}",
            seen.private, seen.translated, seen.completed, seen.detail
        );
        assert_eq!(
            seen.private, 0,
            "{name} {flow:?}: packets with a private address reached the client\n{}",
            seen.evidence
        );
        assert!(
            seen.translated > 0,
            "{name} {flow:?}: the client received no translated packet: the oracle saw nothing\n{}",
            seen.evidence
        );
        assert_eq!(
            seen.completed,
            completes(flow),
            "{name} {flow:?}: the flow {} ({})\n{}",
            if seen.completed {
                "completed, but should have been cut"
            } else {
                "was cut, but should have completed"
            },
            seen.detail,
            seen.evidence
        );
        if event == Event::ReloadChanged {
            assert!(
                seen.ended,
                "{name} {flow:?}: cut, but not cleanly: the client was left waiting ({})\n{}",
                seen.detail, seen.evidence
            );
        }
    }
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn service_del_drains_tcp_and_never_leaks() {
    check(
        "service_del_drains_tcp_and_never_leaks",
        Event::ServiceDel,
        |f| f != Flow::UdpV4,
    );
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn reload_without_the_service_drains_tcp_and_never_leaks() {
    check(
        "reload_without_the_service_drains_tcp_and_never_leaks",
        Event::ReloadWithout,
        |f| f != Flow::UdpV4,
    );
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn reload_that_changes_the_actual_server_cuts_cleanly_and_never_leaks() {
    check(
        "reload_that_changes_the_actual_server_cuts_cleanly_and_never_leaks",
        Event::ReloadChanged,
        |_| false,
    );
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn sigterm_cuts_and_never_leaks() {
    check("sigterm_cuts_and_never_leaks", Event::Sigterm, |_| false);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn sigkill_cuts_and_never_leaks() {
    check("sigkill_cuts_and_never_leaks", Event::Sigkill, |_| false);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn sigstop_holds_and_never_leaks() {
    check("sigstop_holds_and_never_leaks", Event::Sigstop, |_| true);
}

/// After netnat is gone (SIGKILL) only its guard is left: it black-holes nothing that is not a
/// service's (a connection routed straight to the server's private address works), a restart
/// serves at once, and `netnat flush` removes everything.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn after_death_only_the_guard_stays_and_flush_removes_it() {
    let name = "after_death_only_the_guard_stays_and_flush_removes_it";
    if !require_root(name) {
        return;
    }
    let t = Topology::new();
    let mut n = Netnat::start(&t, &config(None), "netnat").unwrap_or_else(|e| panic!("{e}"));
    n.proc.signal(libc::SIGKILL);
    assert!(n.proc.wait_timeout(Duration::from_secs(5)).is_some());
    let tables = |t: &Topology| t.rtr.must(&["nft", "list", "tables"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tables(&t).lines().any(|l| l.trim() == "table inet netnat") {
        assert!(
            Instant::now() < deadline,
            "netnat's owned table outlived it"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        tables(&t).trim(),
        "table inet netnat_guard",
        "only the guard stays after SIGKILL"
    );

    // Not a service's traffic: routed to the server's private address, no translation.
    let _srv = t.spawn(
        &t.srv,
        "socat-direct",
        &[
            "socat",
            "TCP4-LISTEN:7777,reuseaddr,fork",
            "EXEC:echo direct-ok",
        ],
    );
    t.srv.wait_listening("tcp", 7777, Duration::from_secs(10));
    let direct = t
        .cli
        .run(&["socat", "-T", "5", "-", "TCP4:192.168.77.10:7777"]);
    assert!(
        direct.stdout.contains("direct-ok"),
        "a connection that is no service's is disturbed by the guard\n{direct}"
    );

    // A restart serves at once, and replaces the guard rather than adding a second one.
    let again = Netnat::start(&t, &config(None), "netnat-again")
        .unwrap_or_else(|e| panic!("netnat does not start again: {e}"));
    let listed = t
        .rtr
        .must(&["nft", "list", "table", "inet", "netnat_guard"]);
    assert_eq!(
        listed.matches("drop").count(),
        1,
        "the guard holds one drop rule after a restart:\n{listed}"
    );
    drop(again);

    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", &t.rtr.name, netnat_bin(), "flush"]);
    let flushed = run_bounded(c, Duration::from_secs(20));
    assert!(flushed.success(), "netnat flush failed\n{flushed}");
    assert_eq!(
        tables(&t).trim(),
        "",
        "netnat flush left something of netnat's\n{flushed}"
    );
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", &t.rtr.name, netnat_bin(), "flush"]);
    let again = run_bounded(c, Duration::from_secs(20));
    assert!(
        again.success() && again.stdout.contains("nothing"),
        "a second flush: {again}"
    );
}

/// An echo exchange through the service: `a`, then after `pause_s` seconds `b`. Prints what
/// came back (`got a`, `got b`, or why not).
const ECHO_CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection(("10.99.1.80", 8082), timeout=5)
s.sendall(b"a\n"); print("got", s.recv(100).decode().strip(), flush=True)
time.sleep(float(sys.argv[1]))
try:
    s.sendall(b"b\n"); s.settimeout(3); data = s.recv(100)
    print("got", data.decode().strip() if data else "EOF", flush=True)
except OSError as e:
    print("error", e, flush=True)
"#;

/// A draining connection goes on across an idle pause shorter than `drain-idle`, and is cut
/// (by the router's own reset, never leaking) once the removed service was idle longer: then
/// the service is forgotten, in the log, in `status` and in the rules.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn drain_ends_after_drain_idle_seconds_without_traffic() {
    let name = "drain_ends_after_drain_idle_seconds_without_traffic";
    if !require_root(name) {
        return;
    }
    for (drain_idle, pause, survives) in [(30, 4, true), (2, 5, false)] {
        let t = Topology::new();
        let conf = format!("drain-idle {drain_idle}\n{}", config(None));
        let n = Netnat::start(&t, &conf, "netnat").unwrap_or_else(|e| panic!("{e}"));
        let _echo = t.spawn(
            &t.srv,
            "echo",
            &["socat", "TCP4-LISTEN:82,reuseaddr,fork", "EXEC:cat"],
        );
        t.srv.wait_listening("tcp", 82, Duration::from_secs(10));
        let cap = Capture::start(&t, &t.cli, "eth0");
        let mut client = t.spawn(
            &t.cli,
            "echo-client",
            &[PYTHON, "-c", ECHO_CLIENT, &pause.to_string()],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !client.stdout().contains("got a") {
            assert!(
                Instant::now() < deadline,
                "no first echo\n{}",
                client.evidence()
            );
            thread::sleep(Duration::from_millis(20));
        }
        let ctl = t.dir.file("netnat.sock");
        let mut del = vec!["service", "del"];
        del.extend_from_slice(Flow::TcpV4.words());
        netnat_ctl(&ctl, &del).expect_ok("service del");
        let status = netnat_ctl(&ctl, &["status"]).expect_ok("status");
        assert!(
            status.stdout.contains("draining"),
            "status does not show the draining service:\n{status}"
        );
        assert!(client.wait_timeout(Duration::from_secs(15)).is_some());
        let out = client.stdout();
        let pcap = cap.stop();
        let private = capture::count(&pcap, PRIVATE);
        eprintln!(
            "{name}: drain-idle {drain_idle}, pause {pause} s: {:?}; {private} private packets",
            out.trim()
        );
        assert_eq!(
            private,
            0,
            "{name}: {}",
            capture::summary(&pcap, PRIVATE, 10)
        );
        if survives {
            assert!(
                out.contains("got b"),
                "{name}: the drained connection was cut\n{out}"
            );
            continue;
        }
        assert!(
            !out.contains("got b"),
            "{name}: the connection outlived drain-idle\n{out}"
        );
        let log = n.proc.stderr();
        assert!(
            log.contains("service drained (idle 2 s)"),
            "{name}: no drained record\n{log}"
        );
        let status = netnat_ctl(&ctl, &["status"]).expect_ok("status");
        assert!(!status.stdout.contains("draining"), "{status}");
        let listing = t.rtr.must(&["nft", "list", "table", "inet", "netnat"]);
        let rules = without_counter_sets(&listing);
        assert!(
            !rules.contains("192.168.77.10 . tcp . 82"),
            "{name}: the drained service's element is still in the rules:\n{rules}"
        );
    }
}

/// A listing of netnat's table without offload's counter sets (`set count_in4 { ... }` ...):
/// they hold a counter per service endpoint that had offloaded packets and keep it (up to an
/// hour) after the service went, by design; the rules and the service sets must forget it.
fn without_counter_sets(listing: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in listing.lines() {
        if line.trim_start().starts_with("set count_") {
            skipping = true;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
        if skipping && line.trim() == "}" {
            skipping = false;
        }
    }
    out
}

/// `nft flush ruleset` (what many ruleset files start with) deletes the guard, which has no
/// owner flag, while netnat's own table stays: netnat notices within seconds and installs it
/// again.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn a_flushed_ruleset_gets_its_guard_back() {
    let name = "a_flushed_ruleset_gets_its_guard_back";
    if !require_root(name) {
        return;
    }
    let t = Topology::new();
    let mut n = Netnat::start(&t, &config(None), "netnat").unwrap_or_else(|e| panic!("{e}"));
    let guard = |t: &Topology| t.rtr.run(&["nft", "list", "table", "inet", "netnat_guard"]);
    assert!(guard(&t).success(), "no guard while netnat runs");
    t.rtr.must(&["nft", "flush", "ruleset"]);
    let flushed = Instant::now();
    assert!(
        t.rtr
            .run(&["nft", "list", "table", "inet", "netnat"])
            .success(),
        "the kernel keeps the owned table through a flush"
    );
    while !guard(&t).success() {
        assert!(
            flushed.elapsed() < Duration::from_secs(6),
            "{name}: the guard did not come back\n{}",
            n.proc.evidence()
        );
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{name}: guard back after {:?}", flushed.elapsed());
    n.proc
        .wait_stderr("installed again", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        guard(&t).stdout.matches("drop").count(),
        1,
        "{}",
        guard(&t).stdout
    );
}
