//! Soak: mixed TCP and UDP load through a real netnat for a configurable time, with
//! connections and flows opening and closing all along. Asserts that netnat's memory stays flat
//! after warm-up (VmRSS within 5 %) although far more UDP flows pass than its flow memory has
//! holds (65,536), that every request is answered, and that no packet is left in the kernel
//! queue at the end.
//!
//! The suite runs it for 60 s; `scripts/soak [--minutes N]` runs the same test for N minutes
//! (env `NETNAT_SOAK_SECS`). Needs root and: iproute2 nftables python3 iperf3.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::scenario::{AppAddr, Case, Netnat, Translator};
use common::{Family, PYTHON, Proc, Topology, kernel_queues, require_root, run_bounded, script};

/// The UDP new-flow memory's documented bound (src/engine/record.rs, `UDP_FLOW_LIMIT`; one
/// memory shared by every queue thread).
const UDP_FLOW_SLOTS: u64 = 65_536;
const IPERF_PORT: u16 = 5201;

#[derive(Default)]
struct Counters {
    http_ok: AtomicU64,
    http_err: AtomicU64,
    udp_ok: AtomicU64,
    udp_err: AtomicU64,
    /// Datagrams sent from fresh source ports only to create flows (not answered-checked).
    churn_flows: AtomicU64,
}

/// One HTTP/1.0 GET on a new connection; true when the server answered for the real client.
fn http_once(to: SocketAddr) -> bool {
    let run = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /soak HTTP/1.0\r\nHost: soak\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    };
    run().is_ok_and(|b| b.starts_with("HTTP/1.0 200") && b.contains("peer=10.99.1.2 "))
}

/// One UDP request from a new socket (a new flow), up to 3 tries; true when answered from the
/// apparent endpoint for the real client.
fn udp_once(to: SocketAddr) -> bool {
    let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
        return false;
    };
    if s.set_read_timeout(Some(Duration::from_secs(1))).is_err() {
        return false;
    }
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        if s.send_to(b"soak", to).is_err() {
            continue;
        }
        if let Ok((n, from)) = s.recv_from(&mut buf)
            && from == to
            && String::from_utf8_lossy(&buf[..n]).contains("peer=10.99.1.2 ")
        {
            return true;
        }
    }
    false
}

/// Paced request loops (HTTP and UDP, about `rate` each per second) until `stop`.
fn request_loops(
    t: &Topology,
    rate: u64,
    stop: Arc<AtomicBool>,
    c: Arc<Counters>,
) -> Vec<thread::JoinHandle<()>> {
    let http: SocketAddr = "10.99.1.80:8080".parse().unwrap();
    let udp: SocketAddr = "10.99.1.80:5300".parse().unwrap();
    let gap = Duration::from_micros(1_000_000 / rate.max(1));
    let mut v = Vec::new();
    for kind in ["http", "udp"] {
        let (stop, c) = (Arc::clone(&stop), Arc::clone(&c));
        v.push(t.cli.thread(move || {
            // Bounded in count as well as by the stop flag.
            for _ in 0..10_000_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let began = Instant::now();
                if kind == "http" {
                    let ctr = if http_once(http) {
                        &c.http_ok
                    } else {
                        &c.http_err
                    };
                    ctr.fetch_add(1, Ordering::Relaxed);
                } else {
                    let ctr = if udp_once(udp) { &c.udp_ok } else { &c.udp_err };
                    ctr.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(rest) = gap.checked_sub(began.elapsed()) {
                    thread::sleep(rest);
                }
            }
        }));
    }
    v
}

/// `n` datagrams, each from a socket of its own: `n` new UDP flows for netnat to remember.
fn churn_flows(t: &Topology, n: u64, c: Arc<Counters>) -> thread::JoinHandle<()> {
    let udp: SocketAddr = "10.99.1.80:5300".parse().unwrap();
    t.cli.thread(move || {
        for _ in 0..n {
            if let Ok(s) = UdpSocket::bind("0.0.0.0:0")
                && s.send_to(b"churn", udp).is_ok()
            {
                c.churn_flows.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn netnat_status(ctl: &Path) -> String {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_netnat"));
    c.args(["status", "--control"]).arg(ctl);
    let out = run_bounded(c, Duration::from_secs(20));
    assert!(out.success(), "netnat status failed\n{out}");
    out.stdout
}

/// `received` and `verdicts` from the status line `queue: R received, V verdicts, ...`.
fn received_verdicts(status: &str) -> Option<(u64, u64)> {
    let line = status.lines().find(|l| l.starts_with("queue:"))?;
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    Some((*nums.first()?, *nums.get(1)?))
}

fn soak_secs() -> u64 {
    std::env::var("NETNAT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s| (20..=86_400).contains(s))
        .unwrap_or(60)
}

fn spawn_server(t: &Topology, which: &str, port: u16, lifetime: u64) -> Proc {
    let log = t.dir.file(&format!("{which}-{port}.log"));
    let p = t.spawn(
        &t.srv,
        &format!("{which}-{port}"),
        &[
            PYTHON,
            &script(&format!("{which}_server.py")),
            "192.168.77.10",
            &port.to_string(),
            log.to_str().unwrap(),
            &lifetime.to_string(),
        ],
    );
    let proto = if which == "udp" { "udp" } else { "tcp" };
    t.srv.wait_listening(proto, port, Duration::from_secs(10));
    p
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn soak_mixed_load_rss_flat_no_packet_left() {
    let name = "soak_mixed_load_rss_flat_no_packet_left";
    if !require_root(name) {
        return;
    }
    let secs = soak_secs();
    let total = Duration::from_secs(secs);
    // Warm-up: allocator arenas, socket buffers and the flow memory reach their working size.
    let warmup = Duration::from_secs((secs / 5).clamp(12, 60));
    let sample_every = Duration::from_secs(if secs <= 120 { 2 } else { 5 });
    let t = Topology::new();
    let lifetime = secs + 120;
    let _http = spawn_server(&t, "http", 80, lifetime);
    let _udp = spawn_server(&t, "udp", 53, lifetime);
    let _iperf_srv = t.spawn(
        &t.srv,
        "iperf3-server",
        &["iperf3", "-s", "-B", "192.168.77.10", "-p", "5201"],
    );
    t.srv
        .wait_listening("tcp", IPERF_PORT, Duration::from_secs(10));
    let case = Case::new(Translator::Netnat, Family::V4, AppAddr::Fixed);
    let config = format!(
        "{}service pub0 port 10.99.1.80 {IPERF_PORT} TCP 192.168.77.10 {IPERF_PORT}\n",
        case.netnat_config()
    );
    let n = Netnat::start(&t, &config, "netnat").unwrap_or_else(|e| panic!("{e}"));
    let pid = n.proc.pid();
    let ctl = t.dir.file("netnat.sock");

    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let loops = request_loops(&t, 40, Arc::clone(&stop), Arc::clone(&counters));
    // A few parallel streams, opened and closed in rounds of 10 s (3 streams of 20 Mbit/s).
    let iperf = format!(
        "end=$(( $(date +%s) + {secs} - 12 )); i=0; ok=0; \
         while [ $i -lt 10000 ] && [ $(date +%s) -lt $end ]; do \
           timeout 30 iperf3 -c 10.99.1.80 -p {IPERF_PORT} -t 10 -P 3 -b 20M \
             --connect-timeout 3000 > /dev/null 2>&1 && ok=$((ok+1)); \
           i=$((i+1)); \
         done; echo \"iperf3 rounds $i ok $ok\""
    );
    let mut streams = t.spawn(&t.cli, "iperf3-rounds", &["sh", "-c", &iperf]);

    let start = Instant::now();
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut churners = Vec::new();
    let mut next_churn = Duration::ZERO;
    // Enough bursts over the run to pass the flow memory's size several times.
    let churn_every = Duration::from_secs(if secs <= 120 { 6 } else { 20 });
    let churn_burst = 24_000;
    while start.elapsed() < total {
        let now = start.elapsed();
        if now >= next_churn && now + Duration::from_secs(5) < total {
            churners.push(churn_flows(&t, churn_burst, Arc::clone(&counters)));
            next_churn = now + churn_every;
        }
        let rss = vm_rss_kib(pid)
            .unwrap_or_else(|| panic!("{name}: netnat is gone\n{}", n.proc.evidence()));
        samples.push((now, rss));
        thread::sleep(sample_every);
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.join().expect("request loop");
    }
    for c in churners {
        c.join().expect("churn thread");
    }
    assert!(
        streams.wait_timeout(Duration::from_secs(60)).is_some(),
        "{name}: iperf3 rounds did not end\n{}",
        streams.evidence()
    );
    let stream_summary = streams.stdout().trim().to_string();

    // Nothing left in the kernel queue once the load is gone.
    let mut q = kernel_queues(&t.rtr, 4747).expect("netnat's queues bound");
    let end = Instant::now() + Duration::from_secs(5);
    while q.waiting > 0 && Instant::now() < end {
        thread::sleep(Duration::from_millis(100));
        q = kernel_queues(&t.rtr, 4747).expect("netnat's queues bound");
    }
    let status = netnat_status(&ctl);
    let final_rss = vm_rss_kib(pid).unwrap_or(0);
    samples.push((start.elapsed(), final_rss));

    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let c = &counters;
    let (http_ok, http_err) = (get(&c.http_ok), get(&c.http_err));
    let (udp_ok, udp_err) = (get(&c.udp_ok), get(&c.udp_err));
    let churn = get(&c.churn_flows);
    let after: Vec<u64> = samples
        .iter()
        .filter(|(at, _)| *at >= warmup)
        .map(|(_, r)| *r)
        .collect();
    let base = *after.first().expect("samples after warm-up");
    let (lo, hi) = (*after.iter().min().unwrap(), *after.iter().max().unwrap());
    let max_all = samples.iter().map(|(_, r)| *r).max().unwrap_or(0);
    let series: Vec<String> = samples
        .iter()
        .map(|(at, r)| format!("{}s:{r}", at.as_secs()))
        .collect();
    let report = format!(
        "{name}: {secs} s; RSS KiB start {} after warm-up ({}s) {base} end {final_rss} max \
         {max_all} (post-warm-up range {lo}..{hi}, {:+.2}%..{:+.2}%); HTTP {http_ok} ok \
         {http_err} errors; UDP request/response {udp_ok} ok {udp_err} errors; {churn} extra \
         UDP flows from fresh ports ({} flows in all vs {UDP_FLOW_SLOTS} slots); {stream_summary}; \
         kernel queue at the end: waiting {} queue_dropped {} user_dropped {} packets {}\n  \
         netnat {}\n  RSS series: {}",
        samples[0].1,
        warmup.as_secs(),
        (lo as f64 / base as f64 - 1.0) * 100.0,
        (hi as f64 / base as f64 - 1.0) * 100.0,
        udp_ok + udp_err + churn,
        q.waiting,
        q.queue_dropped,
        q.user_dropped,
        q.id_sequence,
        status
            .lines()
            .find(|l| l.starts_with("queue:"))
            .unwrap_or(""),
        series.join(" ")
    );
    eprintln!("{report}");

    assert!(
        n.proc.stderr().contains("ready") && vm_rss_kib(pid).is_some(),
        "{name}: netnat died\n{}",
        n.proc.evidence()
    );
    assert_eq!(
        q.waiting, 0,
        "{name}: packets left waiting in the kernel queue\n{report}"
    );
    let (received, verdicts) = received_verdicts(&status).expect("queue line in status");
    assert_eq!(
        received, verdicts,
        "{name}: packets without a verdict\n{status}"
    );
    assert!(
        lo * 100 >= base * 95 && hi * 100 <= base * 105,
        "{name}: RSS not flat within 5 % after warm-up\n{report}"
    );
    assert!(
        udp_ok + udp_err + churn > 2 * UDP_FLOW_SLOTS,
        "{name}: too few UDP flows to fill the flow memory\n{report}"
    );
    assert!(
        http_ok > secs * 10 && udp_ok > secs * 10,
        "{name}: too few requests completed\n{report}"
    );
    assert_eq!(http_err, 0, "{name}: HTTP requests failed\n{report}");
    assert_eq!(udp_err, 0, "{name}: UDP requests failed\n{report}");
    assert!(
        stream_summary.starts_with("iperf3 rounds") && !stream_summary.ends_with(" ok 0") && {
            let w: Vec<&str> = stream_summary.split_whitespace().collect();
            w.get(2) == w.get(4)
        },
        "{name}: iperf3 rounds failed: {stream_summary}\n{}",
        streams.evidence()
    );
}
