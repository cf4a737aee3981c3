//! Faults while traffic flows through netnat: SIGKILL, SIGHUP, SIGSTOP and a queue overflow.
//!
//! What must hold whatever happens to the consumer: the queue has no bypass, so a packet that
//! netnat does not handle is dropped, never passed untranslated; in particular no reply from
//! the private side ever reaches the public side with its private source address. A capture of
//! everything the router sends out of pub0 is the oracle for that (it must drop nothing), the
//! kernel's /proc/net/netfilter/nfnetlink_queue counts the drops.
//!
//! Needs root and: iproute2 (tc) nftables curl socat tcpdump tshark python3.

mod common;

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::capture::{self, Capture};
use common::scenario::{
    Active, AppAddr, Case, Netnat, Servers, Translator, UPLOAD, assert_http_ok, assert_udp_ok,
    random_file, sha256, transfer_both_ways,
};
use common::{
    CmdOutput, Family, KernelQueue, Ns, PYTHON, Proc, Topology, heavy_lock, kernel_queues,
    require_root,
};

/// Size of the bulk transfers the faults hit.
const BULK: u64 = 200 * 1024 * 1024;
/// The flood service: UDP apparent port 5400 → 54 on the actual server, both families.
const FLOOD_APP_PORT: u16 = 5400;
const FLOOD_ACT_PORT: u16 = 54;
/// Display filter for any private-side address (outer or quoted in an ICMP error).
const PRIVATE: &str = "ip.addr == 192.168.77.0/24 || ipv6.addr == fd99:77::/64";

fn case() -> Case {
    Case::new(Translator::Netnat, Family::V4, AppAddr::Fixed)
}

/// The data-path services (IPv4, fixed address) plus the flood service for both families.
fn config() -> String {
    format!(
        "{}service pub0 port 10.99.1.80 {FLOOD_APP_PORT} UDP 192.168.77.10 {FLOOD_ACT_PORT}\n\
         service pub0 port fd99:1::80 {FLOOD_APP_PORT} UDP fd99:77::10 {FLOOD_ACT_PORT}\n",
        case().netnat_config()
    )
}

fn flood_targets() -> Vec<SocketAddr> {
    vec![
        format!("10.99.1.80:{FLOOD_APP_PORT}").parse().unwrap(),
        format!("[fd99:1::80]:{FLOOD_APP_PORT}").parse().unwrap(),
    ]
}

// ---------------------------------------------------------------------------------------------
// Helpers of this file

/// A UDP sender from the client to `targets` (round robin) for `duration`: as fast as it can
/// (`pps` None) or paced to about `pps` datagrams per second. Stops early when `stop` is set.
/// Returns the number of datagrams the kernel accepted.
fn udp_flood(
    t: &Topology,
    targets: Vec<SocketAddr>,
    duration: Duration,
    pps: Option<u64>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<u64> {
    t.cli.thread(move || {
        let v4 = UdpSocket::bind("0.0.0.0:0").expect("bind v4");
        let v6 = UdpSocket::bind("[::]:0").expect("bind v6");
        let payload = [0x5au8; 100];
        let start = Instant::now();
        let mut sent: u64 = 0;
        let mut i: u64 = 0;
        // Bounded in time and in count.
        while i < 50_000_000 {
            if i.is_multiple_of(256) {
                let elapsed = start.elapsed();
                if elapsed >= duration || stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(pps) = pps {
                    let due = Duration::from_secs_f64(i as f64 / pps as f64);
                    if due > elapsed {
                        thread::sleep(due - elapsed);
                    }
                }
            }
            let to = targets[(i as usize) % targets.len()];
            let sock = if to.is_ipv4() { &v4 } else { &v6 };
            // ENOBUFS and friends under a flood are expected: count what went out.
            if sock.send_to(&payload, to).is_ok() {
                sent += 1;
            }
            i += 1;
        }
        sent
    })
}

/// A UDP responder on the actual server for both families (dual-stack socket on port 54).
fn udp_responder(t: &Topology) -> Proc {
    let code = format!(
        "import socket, time\n\
         s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)\n\
         s.bind(('::', {FLOOD_ACT_PORT}))\n\
         s.settimeout(0.5)\n\
         end = time.monotonic() + 240\n\
         while time.monotonic() < end:\n\
         \x20   try:\n\
         \x20       data, peer = s.recvfrom(2048)\n\
         \x20   except socket.timeout:\n\
         \x20       continue\n\
         \x20   s.sendto(b'pong ' + data[:16], peer)\n"
    );
    let p = t.spawn(&t.srv, "udp-responder", &[PYTHON, "-c", &code]);
    t.srv
        .wait_listening("udp", FLOOD_ACT_PORT, Duration::from_secs(10));
    p
}

/// One request to the flood service at `addr` (v4 or v6 apparent address); the reply's source.
fn flood_service_probe(t: &Topology, addr: &str) -> CmdOutput {
    let fam = if addr.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let code = format!(
        "import socket\n\
         s = socket.socket(socket.{fam}, socket.SOCK_DGRAM)\n\
         s.settimeout(1)\n\
         for i in range(5):\n\
         \x20   s.sendto(b'probe', ('{addr}', {FLOOD_APP_PORT}))\n\
         \x20   try:\n\
         \x20       data, peer = s.recvfrom(2048)\n\
         \x20   except socket.timeout:\n\
         \x20       continue\n\
         \x20   if data.startswith(b'pong probe'):\n\
         \x20       print('from', peer[0], peer[1])\n\
         \x20       break\n\
         else:\n\
         \x20   raise SystemExit('no reply')\n"
    );
    t.cli.run(&[PYTHON, "-c", &code])
}

fn assert_flood_service_ok(t: &Topology, what: &str) {
    for addr in ["10.99.1.80", "fd99:1::80"] {
        let out = flood_service_probe(t, addr);
        assert!(
            out.success()
                && out
                    .stdout
                    .contains(&format!("from {addr} {FLOOD_APP_PORT}")),
            "{what}: the UDP service at {addr} did not answer from its apparent endpoint\n{out}"
        );
    }
}

/// tcpdump of everything the router *sends* on pub0 (`-Q out`): where a reply passed
/// untranslated would show. Must drop nothing, or "no private address" proves nothing.
fn pub0_out_capture(t: &Topology) -> Capture {
    Capture::on("pub0")
        .name("pub0-out")
        .outbound()
        .buffer_kib(32768)
        .snaplen(128)
        .open_tail()
        .start(t, &t.rtr)
}

/// The capture shows not a single packet with a private address, and it did see the
/// translated traffic (so the oracle was looking).
fn assert_no_private_on_pub0(name: &str, pcap: &Path, captured: u64) -> usize {
    let leaks = capture::count(pcap, PRIVATE);
    assert_eq!(
        leaks,
        0,
        "{name}: {leaks} packet(s) with a private address left the router on pub0:\n{}",
        capture::summary(pcap, PRIVATE, 20)
    );
    let translated = capture::count(
        pcap,
        &format!(
            "(ip.src == 10.99.1.80 || ipv6.src == fd99:1::80) && (udp.srcport == {FLOOD_APP_PORT} || tcp.srcport == 8080)"
        ),
    );
    assert!(
        translated > 0,
        "{name}: the capture holds no translated reply: the oracle saw nothing ({captured} packets)"
    );
    eprintln!(
        "{name}: pub0 outbound capture: {captured} packets, {translated} translated replies, \
         {leaks} with a private address"
    );
    translated
}

/// Limits `dev` in `ns` to `rate` so that a bulk transfer lasts long enough to be hit.
fn rate_limit(ns: &Ns, dev: &str, rate: &str) {
    ns.must(&[
        "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "512kb", "latency",
        "100ms",
    ]);
}

/// `netnat status` through the control socket `ctl` as text, with whatever it said on
/// stderr (the daemon may be gone by then).
fn netnat_status(ctl: &Path) -> String {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_netnat"));
    c.args(["status", "--control"]).arg(ctl);
    let out = common::run_bounded(c, Duration::from_secs(20));
    format!("{}{}", out.stdout, out.stderr)
}

// ---------------------------------------------------------------------------------------------
// (a) SIGKILL during a bulk transfer

/// SIGKILL while 200 MiB flow up through netnat: its owner-flagged table is gone from the
/// router's ruleset within a second (no rule left steering packets into a queue nobody
/// reads), the sending client learns at once (the router's own stack resets the connection
/// instead of the packets vanishing), and a new netnat starts and serves new connections.
///
/// What the router sends on pub0 meanwhile is captured: not one packet with a private address.
/// Segments the actual server still had in flight for the dead connection are dropped by the
/// leak guard, the table without the owner flag that outlives netnat (see `nft::Guard`).
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn fault_sigkill_during_bulk_table_gone_restart_serves() {
    let name = "fault_sigkill_during_bulk_table_gone_restart_serves";
    if !require_root(name) {
        return;
    }
    let _heavy = heavy_lock();
    let t = Topology::new();
    let file = random_file(&t, "bulk.bin", BULK);
    let servers = Servers::start(&t, Family::V4);
    let mut n = Netnat::start(&t, &config(), "netnat").unwrap_or_else(|e| panic!("{e}"));
    // 200 MiB at 400 Mbit/s last about 4 s: long enough to be in the middle of it.
    rate_limit(&t.cli, "eth0", "400mbit");
    let recv = t.dir.file("upload.recv");
    let _server = t.spawn(
        &t.srv,
        "socat-upload-server",
        &[
            "socat",
            "-u",
            &format!("TCP4-LISTEN:{},reuseaddr", UPLOAD.act_port),
            &format!("OPEN:{},creat,trunc", recv.display()),
        ],
    );
    t.srv
        .wait_listening("tcp", UPLOAD.act_port, Duration::from_secs(10));
    let cap = pub0_out_capture(&t);
    let mut client = t.spawn(
        &t.cli,
        "socat-upload-client",
        &[
            "socat",
            "-u",
            &format!("OPEN:{}", file.display()),
            &format!("TCP4:10.99.1.80:{}", UPLOAD.app_port),
        ],
    );
    let size = || fs::metadata(&recv).map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while size() < BULK / 5 {
        assert!(
            Instant::now() < deadline && client.try_status().is_none(),
            "{name}: the upload did not get going ({} bytes)\n{}\n{}",
            size(),
            client.evidence(),
            n.proc.evidence()
        );
        thread::sleep(Duration::from_millis(5));
    }
    let before_kill = size();
    assert!(
        before_kill < BULK,
        "{name}: the transfer finished before the kill"
    );

    let killed = Instant::now();
    n.proc.signal(libc::SIGKILL);
    let mut polls = 0;
    let gone_after = loop {
        polls += 1;
        let tables = t.rtr.must(&["nft", "list", "tables"]);
        // The leak guard stays, on purpose: netnat's own table must go.
        if !tables.lines().any(|l| l.trim() == "table inet netnat") {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "{name}: netnat's table still listed {:?} after SIGKILL:\n{tables}",
            killed.elapsed()
        );
        thread::sleep(Duration::from_millis(10));
    };
    assert!(
        n.proc.wait_timeout(Duration::from_secs(5)).is_some(),
        "{name}: netnat survived SIGKILL?"
    );
    let client_exit = client.wait_timeout(Duration::from_secs(10));
    let failed_after = killed.elapsed();
    let moved = size();
    assert!(
        client_exit.is_some_and(|s| !s.success()),
        "{name}: the sending client did not fail within 10 s of the kill ({client_exit:?}, \
         {moved} bytes received)\n{}",
        client.evidence()
    );
    assert!(
        moved < BULK,
        "{name}: the transfer completed across a SIGKILL?"
    );
    let (pcap, captured) = cap.stop_counted();
    let private = capture::count(&pcap, PRIVATE);
    eprintln!(
        "{name}: {before_kill} bytes received when SIGKILL hit, {moved} in the end; table gone \
         after {gone_after:?} ({polls} listings); the client failed after {failed_after:?} \
         ({client_exit:?}); pub0 outbound: {captured} packets, {private} untranslated from the \
         private side after the table was gone"
    );
    assert_eq!(
        private,
        0,
        "{name}: packets with a private address left pub0 after SIGKILL:\n{}",
        capture::summary(&pcap, PRIVATE, 10)
    );

    let again = Netnat::start(&t, &config(), "netnat-restart")
        .unwrap_or_else(|e| panic!("{name}: netnat does not start again after SIGKILL: {e}"));
    let active = Active::Netnat(again);
    assert_http_ok(&t, case(), &servers, &active);
    assert_udp_ok(&t, case(), &servers, &active);
    active.assert_queue_used(&t, name);
}

// ---------------------------------------------------------------------------------------------
// (b) SIGHUP during a bulk transfer

/// 200 MiB up and 200 MiB down through an unchanged service, byte-exact (sha256), while
/// netnat reloads its configuration again and again: the same file, and the same file plus an
/// unrelated service, in turn.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn fault_sighup_during_bulk_transfer_byte_exact() {
    let name = "fault_sighup_during_bulk_transfer_byte_exact";
    if !require_root(name) {
        return;
    }
    let _heavy = heavy_lock();
    let t = Topology::new();
    let file = random_file(&t, "bulk.bin", BULK);
    let n = Netnat::start(&t, &config(), "netnat").unwrap_or_else(|e| panic!("{e}"));
    // About 2 s per direction at 1 Gbit/s: room for a dozen reloads in each.
    rate_limit(&t.cli, "eth0", "1gbit");
    rate_limit(&t.srv, "eth0", "1gbit");

    let stop = Arc::new(AtomicBool::new(false));
    let reloader = {
        let stop = Arc::clone(&stop);
        let pid = n.proc.pid() as i32;
        let conf = n.config.clone();
        let err = n.proc.stderr_path.clone();
        let plain = config();
        let extra = format!("{plain}service pub0 port 10.99.1.80 8090 TCP 192.168.77.10 90\n");
        thread::spawn(move || {
            let reloaded = || {
                fs::read_to_string(&err)
                    .unwrap_or_default()
                    .matches("reloaded:")
                    .count()
            };
            let mut sent = 0usize;
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed)
                && sent < 500
                && start.elapsed() < Duration::from_secs(120)
            {
                let text = if sent.is_multiple_of(2) {
                    &plain
                } else {
                    &extra
                };
                fs::write(&conf, text).expect("write config");
                let before = reloaded();
                // SAFETY: plain kill(2) to the netnat this test started.
                unsafe {
                    libc::kill(pid, libc::SIGHUP);
                }
                sent += 1;
                let wait = Instant::now();
                while reloaded() == before && wait.elapsed() < Duration::from_secs(5) {
                    thread::sleep(Duration::from_millis(5));
                }
                thread::sleep(Duration::from_millis(100));
            }
            sent
        })
    };
    let summary = transfer_both_ways(&t, case(), &file, Duration::from_secs(120));
    stop.store(true, Ordering::Relaxed);
    let signals = reloader.join().expect("reloader thread");
    let err = n.proc.stderr();
    let reloads = err.matches("reloaded:").count();
    let with_extra = err.matches("reloaded: 7 services").count();
    assert!(
        !err.contains("reload refused"),
        "{name}: a reload was refused\n{}",
        n.proc.evidence()
    );
    assert!(
        reloads >= 6 && with_extra >= 3 && reloads + 1 >= signals,
        "{name}: only {reloads} reloads ({with_extra} with the extra service) for {signals} \
         SIGHUPs during the transfers\n{}",
        n.proc.evidence()
    );
    eprintln!(
        "{name}: {summary}; {signals} SIGHUPs, {reloads} reloads ({with_extra} adding a \
         service) during {} MiB each way, sha256 identical: {}",
        BULK >> 20,
        sha256(&file)
    );
    let active = Active::Netnat(n);
    active.assert_queue_used(&t, name);
}

// ---------------------------------------------------------------------------------------------
// (c) consumer stopped under load, (d) queue overflow

/// Load for the stop and flood tests: a curl loop (new TCP connections, bounded in count and
/// time) from the client.
fn curl_loop(t: &Topology, seconds: u32) -> Proc {
    let script = format!(
        "i=0; end=$(( $(date +%s) + {seconds} )); ok=0; \
         while [ $i -lt 2000 ] && [ $(date +%s) -lt $end ]; do \
           curl -s -o /dev/null --noproxy '*' -m 1 http://10.99.1.80:8080/load && ok=$((ok+1)); \
           i=$((i+1)); \
         done; echo \"curl $i tries $ok ok\""
    );
    t.spawn(&t.cli, "curl-loop", &["sh", "-c", &script])
}

/// netnat frozen with SIGSTOP for 3 s under UDP (both families) and TCP load: the kernel
/// queue fills and drops (no bypass), not one packet with a private address leaves pub0, and
/// after SIGCONT the queue drains and every service answers again.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn fault_sigstop_under_load_drops_never_leaks() {
    let name = "fault_sigstop_under_load_drops_never_leaks";
    if !require_root(name) {
        return;
    }
    let _heavy = heavy_lock();
    let t = Topology::new();
    let servers = Servers::start(&t, Family::V4);
    let _responder = udp_responder(&t);
    let n = Netnat::start(&t, &config(), "netnat").unwrap_or_else(|e| panic!("{e}"));
    let ctl = n.control.clone();
    let active = Active::Netnat(n);
    assert_flood_service_ok(&t, name);
    let cap = pub0_out_capture(&t);

    let stop = Arc::new(AtomicBool::new(false));
    // 8000 datagrams/s: more than the queue's 8192 in a 3 s stop, little enough for the
    // capture and the responder to keep up with.
    let flood = udp_flood(
        &t,
        flood_targets(),
        Duration::from_secs(9),
        Some(8000),
        Arc::clone(&stop),
    );
    let mut curls = curl_loop(&t, 9);
    thread::sleep(Duration::from_millis(1500));
    let Active::Netnat(n) = &active else {
        unreachable!()
    };
    let before = kernel_queues(&t.rtr, 4747).expect("netnat's queues bound");
    n.proc.signal(libc::SIGSTOP);
    let stopped_at = Instant::now();
    let mut max_waiting = 0;
    while stopped_at.elapsed() < Duration::from_secs(3) {
        if let Some(q) = kernel_queues(&t.rtr, 4747) {
            max_waiting = max_waiting.max(q.waiting);
        }
        thread::sleep(Duration::from_millis(200));
    }
    let during = kernel_queues(&t.rtr, 4747).expect("netnat's queues bound");
    n.proc.signal(libc::SIGCONT);
    let resumed = Instant::now();
    // The backlog is handled within a moment.
    let drained = loop {
        let q = kernel_queues(&t.rtr, 4747).expect("netnat's queues bound");
        if q.waiting < 100 || resumed.elapsed() > Duration::from_secs(5) {
            break resumed.elapsed();
        }
        thread::sleep(Duration::from_millis(50));
    };
    let sent = flood.join().expect("flood thread");
    assert!(
        curls.wait_timeout(Duration::from_secs(30)).is_some(),
        "curl loop did not end"
    );
    let curl_summary = curls.stdout();
    let after = kernel_queues(&t.rtr, 4747).expect("netnat's queues bound");
    let status = netnat_status(&ctl);

    assert!(
        during.drops() > before.drops(),
        "{name}: nothing was dropped while netnat was stopped (before {before:?}, during \
         {during:?}): did the queue pass packets?"
    );
    assert!(
        max_waiting > 0,
        "{name}: no packet waited in the queue while netnat was stopped"
    );
    // Back in service: HTTP, UDP on both families, all from the apparent endpoints.
    assert_http_ok(&t, case(), &servers, &active);
    assert_udp_ok(&t, case(), &servers, &active);
    assert_flood_service_ok(&t, name);
    let (pcap, captured) = cap.stop_counted();
    assert_no_private_on_pub0(name, &pcap, captured);
    let waiting_end = kernel_queues(&t.rtr, 4747).map_or(u64::MAX, |q| q.waiting);
    assert_eq!(waiting_end, 0, "{name}: packets left in the queue");
    eprintln!(
        "{name}: flood sent {sent} datagrams, {}; while stopped 3 s: up to {max_waiting} \
         waiting, kernel drops {} (queue_dropped {} -> {}, user_dropped {} -> {}); backlog \
         handled {drained:?} after SIGCONT; at the end {after:?}\n  status: {}",
        curl_summary.trim(),
        during.drops() - before.drops(),
        before.queue_dropped,
        during.queue_dropped,
        before.user_dropped,
        during.user_dropped,
        status
            .lines()
            .find(|l| l.starts_with("queue"))
            .unwrap_or("")
    );
}

/// A flood from a fast sender (as fast as the client can send, both families, 4 s) while
/// netnat runs: the queue overflows and drops, nothing private leaves pub0, and once the
/// flood stops every service answers normally.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn fault_queue_overflow_under_udp_flood_drops_never_leaks() {
    let name = "fault_queue_overflow_under_udp_flood_drops_never_leaks";
    if !require_root(name) {
        return;
    }
    let _heavy = heavy_lock();
    let t = Topology::new();
    let servers = Servers::start(&t, Family::V4);
    let _responder = udp_responder(&t);
    let n = Netnat::start(&t, &config(), "netnat").unwrap_or_else(|e| panic!("{e}"));
    let ctl = n.control.clone();
    let active = Active::Netnat(n);
    assert_flood_service_ok(&t, name);
    let cap = pub0_out_capture(&t);
    let before = kernel_queues(&t.rtr, 4747).expect("netnat's queues bound");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    // Two senders: one per CPU of the test machines.
    let floods: Vec<_> = (0..2)
        .map(|_| {
            udp_flood(
                &t,
                flood_targets(),
                Duration::from_secs(4),
                None,
                Arc::clone(&stop),
            )
        })
        .collect();
    let mut curls = curl_loop(&t, 4);
    let mut peak = KernelQueue::default();
    while started.elapsed() < Duration::from_secs(4) {
        if let Some(q) = kernel_queues(&t.rtr, 4747) {
            peak.waiting = peak.waiting.max(q.waiting);
        }
        thread::sleep(Duration::from_millis(100));
    }
    let sent: u64 = floods.into_iter().map(|f| f.join().expect("flood")).sum();
    let flood_time = started.elapsed();
    assert!(
        curls.wait_timeout(Duration::from_secs(30)).is_some(),
        "curl loop did not end"
    );
    let during = kernel_queues(&t.rtr, 4747).expect("netnat's queues bound");
    assert!(
        during.drops() > before.drops(),
        "{name}: the flood of {sent} datagrams in {flood_time:?} did not overflow the queue \
         ({before:?} -> {during:?})"
    );
    // The queue empties once the flood stops.
    let end = Instant::now() + Duration::from_secs(5);
    while kernel_queues(&t.rtr, 4747).is_some_and(|q| q.waiting > 0) && Instant::now() < end {
        thread::sleep(Duration::from_millis(50));
    }
    assert_http_ok(&t, case(), &servers, &active);
    assert_udp_ok(&t, case(), &servers, &active);
    assert_flood_service_ok(&t, name);
    let (pcap, captured) = cap.stop_counted();
    assert_no_private_on_pub0(name, &pcap, captured);
    let after = kernel_queues(&t.rtr, 4747).expect("netnat's queues bound");
    assert_eq!(after.waiting, 0, "{name}: packets left in the queue");
    let status = netnat_status(&ctl);
    eprintln!(
        "{name}: {sent} datagrams in {flood_time:?} ({:.0}/s), {}; peak waiting {}; kernel \
         drops {} (queue_dropped {} -> {}, user_dropped {} -> {}), {} packets queued in all\n  \
         status: {}",
        sent as f64 / flood_time.as_secs_f64(),
        curls.stdout().trim(),
        peak.waiting,
        during.drops() - before.drops(),
        before.queue_dropped,
        during.queue_dropped,
        before.user_dropped,
        during.user_dropped,
        after.id_sequence,
        status
            .lines()
            .find(|l| l.starts_with("queue"))
            .unwrap_or("")
    );
}
