//! Header-only verdicts (`header-only on`, the default) against the full-payload path
//! (`header-only off`, the reference): the same traffic through a router whose firewall has
//! `ct state invalid drop`, and the same result at the far ends.
//!
//! - captures at the client and at the server (TX checksum offload off, so every checksum on
//!   the wire is final): only apparent endpoints at the client, only actual ones at the server,
//!   the same connections on both sides, no bad checksum; for both modes;
//! - bulk TCP both ways with offloads on (GSO super-packets, CHECKSUM_PARTIAL), sha256 equal;
//! - UDP datagrams longer than the copy range, and one fragmented datagram, echoed intact;
//! - in every run: conntrack marked nothing INVALID (the firewall's counter), and netnat
//!   counted header-only verdicts exactly when the mode is on;
//! - SIGKILL during a header-only download: no packet with the server's address leaves on the
//!   public side.
//!
//! Run as root: `cargo test --test header_only -- --include-ignored`.

mod common;

use std::time::Duration;

use common::capture::{self, Capture};
use common::scenario::{
    AppAddr, Case, HTTP, Knob, Netnat, Servers, Translator, UDP, check_captures, firewall_ruleset,
    http_get, offload_knob_if, random_file, transfer_both_ways,
};
use common::status::Doc;
use common::{Family, PYTHON, Proc, Topology, heavy_lock, require_root, script};

/// The two modes compared.
const MODES: [bool; 2] = [true, false];

fn config(case: Case, header_only: bool) -> String {
    let mode = if header_only { "on" } else { "off" };
    format!("{}header-only {mode}\n", case.netnat_config())
}

/// The router with its firewall (default-drop forward chain with the mark rule and `ct state
/// invalid counter drop`), netnat in `header_only` mode, the HTTP server and a UDP echo server
/// at the actual server.
struct Run {
    t: Topology,
    case: Case,
    netnat: Netnat,
    _servers: [Proc; 2],
}

impl Run {
    fn start(case: Case, header_only: bool, offload: bool) -> Run {
        let t = Topology::new();
        if !offload {
            t.tx_offload_off();
        }
        t.rtr
            .nft_load(&t.dir.path, &firewall_ruleset(true))
            .expect_ok("loading the router's firewall");
        let fam = case.fam;
        let log = t.dir.file("http-peers.log");
        let http = Servers::http(&t, fam, &log);
        let echo = t.spawn(
            &t.srv,
            "udp-echo",
            &[
                PYTHON,
                &script("udp_echo.py"),
                fam.server(),
                &UDP.act_port.to_string(),
                "300",
            ],
        );
        t.srv
            .wait_listening("tcp", HTTP.act_port, Duration::from_secs(10));
        t.srv
            .wait_listening("udp", UDP.act_port, Duration::from_secs(10));
        let netnat = Netnat::start(&t, &config(case, header_only), "netnat")
            .unwrap_or_else(|e| panic!("netnat did not become ready: {e}"));
        Run {
            t,
            case,
            netnat,
            _servers: [http, echo],
        }
    }

    /// HTTP once, then UDP datagrams of `sizes` bytes echoed intact.
    fn http_and_udp(&self, name: &str, sizes: &[usize]) {
        let out = http_get(&self.t, self.case, 10);
        assert!(
            out.success() && out.stdout.contains("REMOTE"),
            "{name}: HTTP failed\n{out}\n{}",
            self.netnat.proc.evidence()
        );
        for size in sizes {
            let out = self.t.cli.run(&[
                PYTHON,
                &script("udp_big.py"),
                self.case.app_ip(),
                &UDP.app_port.to_string(),
                &size.to_string(),
                "5",
                "2",
            ]);
            assert!(
                out.success(),
                "{name}: {size}-byte UDP datagrams not echoed intact\n{out}\n{}",
                self.netnat.proc.evidence()
            );
        }
    }

    /// The firewall's `ct state invalid counter drop` packets.
    fn invalid_dropped(&self) -> u64 {
        let fw = self
            .t
            .rtr
            .run(&["nft", "list", "chain", "inet", "filter", "forward"]);
        fw.stdout
            .lines()
            .find(|l| l.contains("ct state invalid"))
            .and_then(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let i = w.iter().position(|x| *x == "packets")?;
                w.get(i + 1)?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no invalid counter in\n{}", fw.stdout))
    }

    /// Both modes' common checks: nothing INVALID, no fail-closed drop, header-only verdicts
    /// exactly when on (on the offload pass, where the kernel takes a flow's long packets
    /// before they reach netnat, the kernel's rewrites count with them: [`fast_path`]).
    fn assert_clean(&self, name: &str, header_only: bool) {
        let hov = if header_only {
            fast_path_grew(&self.netnat, 0, name)
        } else {
            fast_path(&self.netnat)
        };
        let st = self.netnat.status_json();
        eprintln!(
            "{name}: header-only {header_only}: {hov} header-only verdicts (and, on the offload \
             pass, kernel rewrites) of {} received",
            st.n("queue.received")
        );
        assert_eq!(
            self.invalid_dropped(),
            0,
            "{name}: conntrack found packets INVALID\n{}",
            self.netnat.proc.evidence()
        );
        assert_eq!(st.n("queue.failed_closed"), 0, "{name}: {st}");
        if header_only {
            assert!(hov > 0, "{name}: no header-only verdict: {st}");
        } else {
            assert_eq!(hov, 0, "{name}: header-only verdicts with header-only off");
        }
    }
}

/// Whether netnat of this run got `offload on` from the offload pass's knob (this file's
/// configurations have no `offload` line of their own).
fn offloaded(n: &Netnat) -> bool {
    let conf = std::fs::read_to_string(&n.config).unwrap_or_default();
    offload_knob_if(true, &conf).1 == Knob::SetByTest
}

/// The packets that took the kernel's rewrite: header-only verdicts, plus on the offload pass
/// the packets the kernel rewrote without netnat (`offload.packets`).
fn fast_path(n: &Netnat) -> u64 {
    let st = n.status_json();
    let hov = st.n("queue.header_only");
    if offloaded(n) {
        hov + st.n("offload.packets")
    } else {
        hov
    }
}

/// Waits until [`fast_path`] is above `before` (the kernel's counters are refreshed about every
/// 2 s on the offload pass; at most 6 s) and returns it; the count as it is when it does not.
fn fast_path_grew(n: &Netnat, before: u64, name: &str) -> u64 {
    let start = std::time::Instant::now();
    loop {
        let now = fast_path(n);
        if now > before || start.elapsed() > Duration::from_secs(6) {
            if offloaded(n) {
                eprintln!("{name}: offload pass: {now} header-only verdicts and kernel rewrites");
            }
            return now;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Captures at the client and the server, offloads off; the same oracle for both modes.
fn captures(name: &str, fam: Family, app: AppAddr) {
    if !require_root(name) {
        return;
    }
    let _heavy = heavy_lock();
    let case = Case::new(Translator::Netnat, fam, app);
    for header_only in MODES {
        let run = Run::start(case, header_only, false);
        let t = &run.t;
        let file = random_file(t, "random.bin", 4 * 1024 * 1024);
        let cap_cli = Capture::on("eth0").name("cli").start(t, &t.cli);
        let cap_srv = Capture::on("eth0").name("srv").start(t, &t.srv);
        run.http_and_udp(name, &[100, 1400]);
        let s = transfer_both_ways(t, case, &file, Duration::from_secs(60));
        let (cli, srv) = (cap_cli.stop(), cap_srv.stop());
        eprintln!("{name}: header-only {header_only}: {s}");
        let label = format!("{name} (header-only {header_only})");
        check_captures(&label, case, &cli, &srv);
        // Long segments really crossed: more than the copy range, at both ends.
        let long = "frame.len > 1300 && tcp";
        assert!(
            capture::count(&cli, long) > 0 && capture::count(&srv, long) > 0,
            "{label}: no long TCP segments"
        );
        run.assert_clean(&label, header_only);
    }
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn captures_agree_v4_fixed() {
    captures("captures_agree_v4_fixed", Family::V4, AppAddr::Fixed);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn captures_agree_v4_star() {
    captures("captures_agree_v4_star", Family::V4, AppAddr::Star);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn captures_agree_v6_fixed() {
    captures("captures_agree_v6_fixed", Family::V6, AppAddr::Fixed);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn captures_agree_v6_star() {
    captures("captures_agree_v6_star", Family::V6, AppAddr::Star);
}

/// Offloads on (GSO, CHECKSUM_PARTIAL): 16 MiB each way, sha256 equal, UDP longer than the copy
/// range and one fragmented datagram, both modes.
fn bulk(name: &str, fam: Family, app: AppAddr) {
    if !require_root(name) {
        return;
    }
    let _heavy = heavy_lock();
    let case = Case::new(Translator::Netnat, fam, app);
    for header_only in MODES {
        let run = Run::start(case, header_only, true);
        let file = random_file(&run.t, "random.bin", 16 * 1024 * 1024);
        run.http_and_udp(name, &[1400, 3000]);
        let s = transfer_both_ways(&run.t, case, &file, Duration::from_secs(120));
        eprintln!("{name}: header-only {header_only}: {s}");
        run.assert_clean(&format!("{name} (header-only {header_only})"), header_only);
    }
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn bulk_and_udp_agree_v4_fixed() {
    bulk("bulk_and_udp_agree_v4_fixed", Family::V4, AppAddr::Fixed);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn bulk_and_udp_agree_v4_star() {
    bulk("bulk_and_udp_agree_v4_star", Family::V4, AppAddr::Star);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn bulk_and_udp_agree_v6_fixed() {
    bulk("bulk_and_udp_agree_v6_fixed", Family::V6, AppAddr::Fixed);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn bulk_and_udp_agree_v6_star() {
    bulk("bulk_and_udp_agree_v6_star", Family::V6, AppAddr::Star);
}

/// SIGKILL during a download whose long segments take the header-only path: the owner table
/// (queues and rewrite chains) goes with the process, the leak guard stays and drops what the
/// server still sends; the client never sees the server's private address.
fn sigkill(name: &str, fam: Family) {
    if !require_root(name) {
        return;
    }
    let case = Case::new(Translator::Netnat, fam, AppAddr::Fixed);
    let mut run = Run::start(case, true, true);
    let t = &run.t;
    // Slow enough to be killed in the middle: 24 Mbit/s out of the server.
    t.srv.must(&[
        "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "24mbit", "burst", "64kb",
        "latency", "200ms",
    ]);
    let bytes = 20 * 1024 * 1024;
    let file = random_file(t, "bulk.bin", bytes);
    let tcp = fam.socat_tcp();
    let _server = t.spawn(
        &t.srv,
        "socat-server",
        &[
            "socat",
            "-u",
            &format!("OPEN:{}", file.display()),
            &format!("{tcp}-LISTEN:{},reuseaddr", DOWNLOAD_ACT_PORT),
        ],
    );
    t.srv
        .wait_listening("tcp", DOWNLOAD_ACT_PORT, Duration::from_secs(10));
    let cap = Capture::on("eth0").name("cli-leak").start(t, &t.cli);
    let recv = t.dir.file("bulk.recv");
    let mut client = t.spawn(
        &t.cli,
        "socat-client",
        &[
            "socat",
            "-u",
            &format!("{tcp}:{}", fam.hostport(case.app_ip(), DOWNLOAD_APP_PORT)),
            &format!("CREATE:{}", recv.display()),
        ],
    );
    let size = || std::fs::metadata(&recv).map(|m| m.len()).unwrap_or(0);
    let start = std::time::Instant::now();
    while size() < 1024 * 1024 && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = fast_path_grew(&run.netnat, 0, name);
    let at_kill = size();
    assert!(
        at_kill >= 1024 * 1024 && at_kill < bytes,
        "{name}: {at_kill} bytes downloaded when netnat was to be killed"
    );
    assert!(
        before > 0,
        "{name}: the download took no header-only verdict"
    );
    run.netnat.proc.signal(libc::SIGKILL);
    assert!(
        run.netnat
            .proc
            .wait_timeout(Duration::from_secs(5))
            .is_some()
    );
    // The server keeps sending (retransmissions) for a while: give it time to leak.
    std::thread::sleep(Duration::from_secs(3));
    let _ = client.wait_timeout(Duration::from_millis(100));
    let pcap = cap.stop();
    let leaks = capture::count(&pcap, fam.private_net_filter());
    assert_eq!(
        leaks,
        0,
        "{name}: private addresses reached the client after SIGKILL:\n{}",
        capture::summary(&pcap, fam.private_net_filter(), 20)
    );
    let from_app = capture::count(
        &pcap,
        &format!("{}.src == {} && tcp", fam.ip_field(), case.app_ip()),
    );
    assert!(from_app > 0, "{name}: the capture saw no download");
    eprintln!(
        "{name}: killed at {at_kill} bytes after {before} header-only verdicts; {from_app} \
         packets from the apparent endpoint, none with a private address"
    );
}

/// The download service of [`Case::netnat_config`].
const DOWNLOAD_APP_PORT: u16 = common::scenario::DOWNLOAD.app_port;
const DOWNLOAD_ACT_PORT: u16 = common::scenario::DOWNLOAD.act_port;

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn sigkill_during_a_header_only_download_never_leaks_v4() {
    sigkill(
        "sigkill_during_a_header_only_download_never_leaks_v4",
        Family::V4,
    );
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn sigkill_during_a_header_only_download_never_leaks_v6() {
    sigkill(
        "sigkill_during_a_header_only_download_never_leaks_v6",
        Family::V6,
    );
}

/// `*` follows a renumbered interface on the header-only path too: the reply map is installed
/// again with the new address, so a download's long replies (written by the kernel) leave from
/// it, and nothing leaves from the old one or with the private address.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn star_reply_map_follows_a_renumbered_address_v4() {
    let name = "star_reply_map_follows_a_renumbered_address_v4";
    if !require_root(name) {
        return;
    }
    let case = Case::new(Translator::Netnat, Family::V4, AppAddr::Star);
    let run = Run::start(case, true, true);
    let t = &run.t;
    let bytes = 8 * 1024 * 1024;
    let file = random_file(t, "bulk.bin", bytes);
    let download = |to: &str, label: &str| {
        let recv = t.dir.file(&format!("{label}.recv"));
        let mut server = t.spawn(
            &t.srv,
            &format!("socat-{label}"),
            &[
                "socat",
                "-u",
                &format!("OPEN:{}", file.display()),
                &format!("TCP4-LISTEN:{DOWNLOAD_ACT_PORT},reuseaddr"),
            ],
        );
        t.srv
            .wait_listening("tcp", DOWNLOAD_ACT_PORT, Duration::from_secs(10));
        let out = t.cli.run_timeout(
            &[
                "socat",
                "-u",
                &format!("TCP4:{to}:{DOWNLOAD_APP_PORT},connect-timeout=2"),
                &format!("CREATE:{}", recv.display()),
            ],
            Duration::from_secs(30),
        );
        let _ = server.wait_timeout(Duration::from_secs(5));
        (
            out.success() && common::scenario::sha256(&recv) == common::scenario::sha256(&file),
            out,
        )
    };
    let (ok, out) = download("10.99.1.1", "before");
    assert!(ok, "{name}: download before the change\n{out}");
    let before = fast_path_grew(&run.netnat, 0, name);

    t.rtr
        .must(&["ip", "addr", "del", "10.99.1.1/24", "dev", "pub0"]);
    t.rtr
        .must(&["ip", "addr", "add", "10.99.1.5/24", "dev", "pub0"]);
    // Wait until netnat answers from the new address (it follows within milliseconds).
    let start = std::time::Instant::now();
    loop {
        let st = run.netnat.status_json();
        let now = common::status::services(&st).iter().any(|s| {
            s.at("apparent")
                .and_then(|v| v.as_str())
                .is_some_and(|a| a.starts_with("10.99.1.5:"))
        });
        if now {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{name}: `*` did not follow: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let cap = Capture::on("eth0").name("cli-renumbered").start(t, &t.cli);
    let (ok, out) = download("10.99.1.5", "after");
    let pcap = cap.stop();
    assert!(
        ok,
        "{name}: download after the change\n{out}\n{}",
        run.netnat.proc.evidence()
    );
    let after = fast_path_grew(&run.netnat, before, name);
    assert!(
        after > before,
        "{name}: no header-only verdict after the change"
    );
    let sport = format!("tcp.srcport == {DOWNLOAD_APP_PORT}");
    let from_new = capture::count(&pcap, &format!("ip.src == 10.99.1.5 && {sport}"));
    let from_other = capture::count(&pcap, &format!("ip.src != 10.99.1.5 && {sport}"));
    assert!(
        from_new > 0 && from_other == 0,
        "{name}: {from_new} packets from the new address, {from_other} from another\n{}",
        capture::summary(&pcap, &sport, 20)
    );
    eprintln!(
        "{name}: {} header-only verdicts after the change, {from_new} packets from 10.99.1.5",
        after - before
    );
}
