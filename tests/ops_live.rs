//! Operations, end to end: the real `netnat run` in a router namespace, real clients and
//! servers, records read from a syslog socket the test binds, the control socket driven by the
//! real CLI.
//!
//! Topology and cleanup come from `tests/common` (namespaces `nn-<pid>-<n>-*`, removed on
//! drop, every command bounded). Each test uses its own queue number. Root is required: without
//! it the tests say so loudly, and fail when `CI` is set.

mod common;

use std::fs;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::scenario::{Knob, offload_knob_if, with_test_offload};
use common::status::{self, Doc};
use common::{CmdOutput, PYTHON, Proc, Topology, require_root, run_bounded, script};

const BIN: &str = env!("CARGO_BIN_EXE_netnat");

/// RFC 3164 priority of facility LOCAL2 (18) with severity INFO (6): 18 * 8 + 6.
const LOCAL2_INFO: u8 = 150;

// ---------------------------------------------------------------------------------------------
// A syslog socket of the test's own

/// A Unix datagram socket standing in for /dev/log, read by a thread into memory.
struct Syslog {
    path: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Syslog {
    /// Binds the socket from inside the router namespace, after raising that namespace's
    /// `net.unix.max_dgram_qlen`: the queue limit of a datagram socket comes from the namespace
    /// it was created in, and the default of 10 would make the burst tests count lost lines
    /// instead of records. The host's own settings are not touched.
    fn bind(t: &Topology) -> Syslog {
        t.rtr
            .must(&["sysctl", "-qw", "net.unix.max_dgram_qlen=4096"]);
        let path = t.dir.file("syslog.sock");
        let ns = format!("/var/run/netns/{}", t.rtr.name);
        let p = path.clone();
        let sock = thread::spawn(move || {
            let f = fs::File::open(&ns).expect("open router netns");
            // SAFETY: setns on a namespace fd we hold open, for this short-lived thread only.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            UnixDatagram::bind(&p).expect("bind syslog socket")
        })
        .join()
        .expect("syslog bind thread");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (Arc::clone(&lines), Arc::clone(&stop));
        let reader = thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                match sock.recv(&mut buf) {
                    Ok(n) => l
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => panic!("syslog socket: {e}"),
                }
            }
        });
        Syslog {
            path,
            lines,
            stop,
            reader: Some(reader),
        }
    }

    fn raw(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The message parts of the lines with priority `<150>` that start with `prefix`.
    fn records(&self, prefix: &str) -> Vec<String> {
        self.raw()
            .iter()
            .filter_map(|l| parse_3164(l))
            .filter(|(pri, msg)| *pri == LOCAL2_INFO && msg.starts_with(prefix))
            .map(|(_, m)| m)
            .collect()
    }

    /// Waits until `done` holds for the records starting with `prefix`.
    fn wait(
        &self,
        prefix: &str,
        timeout: Duration,
        done: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let end = Instant::now() + timeout;
        loop {
            let r = self.records(prefix);
            if done(&r) || Instant::now() >= end {
                return r;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// `<PRI>Mmm dd hh:mm:ss netnat[PID]: MESSAGE` → (PRI, MESSAGE); None for anything else.
fn parse_3164(line: &str) -> Option<(u8, String)> {
    let (pri, rest) = line.strip_prefix('<')?.split_once('>')?;
    let pri: u8 = pri.parse().ok()?;
    let ts = rest.get(..15)?.as_bytes();
    let shape = ts[3] == b' ' && ts[6] == b' ' && ts[9] == b':' && ts[12] == b':';
    if !shape || rest.as_bytes().get(15) != Some(&b' ') {
        return None;
    }
    let (pid, msg) = rest.get(16..)?.strip_prefix("netnat[")?.split_once("]: ")?;
    pid.parse::<u32>().ok()?;
    Some((pri, msg.to_string()))
}

// ---------------------------------------------------------------------------------------------
// netnat and its clients

struct Netnat {
    proc: Proc,
    conf: PathBuf,
    /// What [`Netnat::start`] wrote into `conf`: the test's text, with `offload on` appended on
    /// the offload pass (common::scenario::offload_knob).
    written: String,
    ctl: PathBuf,
}

impl Netnat {
    /// Writes the configuration and starts `netnat run` in the router namespace with its
    /// control socket in a directory others may enter (so the daemon's own uid check is what
    /// refuses them). Waits for `ready`.
    fn start(t: &Topology, conf: &str, extra: &[&str]) -> Netnat {
        let path = t.dir.file("netnat.conf");
        let written = with_test_offload(conf, "netnat");
        fs::write(&path, &written).unwrap();
        let ctl_dir = t.dir.file("ctl");
        fs::create_dir_all(&ctl_dir).unwrap();
        fs::set_permissions(&ctl_dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&t.dir.path, fs::Permissions::from_mode(0o755)).unwrap();
        let ctl = ctl_dir.join("control.sock");
        let mut argv = vec![
            BIN,
            "run",
            "--config",
            path.to_str().unwrap(),
            "--control",
            ctl.to_str().unwrap(),
        ];
        argv.extend_from_slice(extra);
        let mut proc = t.spawn(&t.rtr, "netnat", &argv);
        proc.wait_stderr("ready", Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("netnat did not start: {e}"));
        Netnat {
            proc,
            conf: path,
            written,
            ctl,
        }
    }

    /// `netnat <args> --control <ctl>` as root, from the host (the socket is a file).
    fn ctl(&self, args: &[&str]) -> CmdOutput {
        let mut c = Command::new(BIN);
        c.args(args).arg("--control").arg(&self.ctl);
        run_bounded(c, Duration::from_secs(30))
    }

    /// The same as uid/gid 65534 without groups.
    fn ctl_as_nobody(&self, args: &[&str]) -> CmdOutput {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            BIN,
        ])
        .args(args)
        .arg("--control")
        .arg(&self.ctl);
        run_bounded(c, Duration::from_secs(30))
    }

    fn status_json(&self) -> String {
        let out = self.ctl(&["status", "--json"]);
        assert!(
            out.success(),
            "status --json failed\n{out}\n{}",
            self.proc.evidence()
        );
        out.stdout
    }

    /// Whether this netnat runs with `offload on` (the offload pass's knob appended it; this
    /// file's configurations have no `offload` line of their own).
    fn offloaded(&self) -> bool {
        offload_knob_if(true, &self.written).1 == Knob::SetByTest
    }

    /// `status --json` for comparing counters: in queue mode at once (netnat counts each packet
    /// as it passes); with offload once every service's counters (which take in the kernel's,
    /// refreshed about every 2 s) stood still for 2.5 s, at most 15 s.
    fn settled_json(&self) -> String {
        let mut last = self.status_json();
        if !self.offloaded() {
            return last;
        }
        let key = |json: &str| {
            let doc = status::parse(json);
            status::services(&doc)
                .iter()
                .map(|s| (s.n("in_packets"), s.n("out_packets")))
                .collect::<Vec<_>>()
        };
        let start = Instant::now();
        let mut since = Instant::now();
        while since.elapsed() < Duration::from_millis(2500) {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the counters did not settle in 15 s: {last}"
            );
            thread::sleep(Duration::from_millis(250));
            let now = self.status_json();
            if key(&now) != key(&last) {
                since = Instant::now();
            }
            last = now;
        }
        last
    }

    /// SIGTERM and the exit status within 10 s.
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.signal(libc::SIGTERM);
        self.proc.wait_timeout(Duration::from_secs(10))
    }
}

/// A number of the service object whose `"service"` is `line`, or at `path` from the top
/// when `line` is empty; `path` as [`Doc::at`] takes it (`queue.received`).
fn json_num(json: &str, line: &str, path: &str) -> Option<u64> {
    let doc = status::parse(json);
    let obj = if line.is_empty() {
        &doc
    } else {
        status::service_exact(&doc, line)?
    };
    obj.at(path)?.as_u64()
}

fn http_server(t: &Topology, port: u16) -> Proc {
    let log = t.dir.file(&format!("http-{port}.log"));
    let p = t.spawn(
        &t.srv,
        &format!("http-{port}"),
        &[
            PYTHON,
            &script("http_server.py"),
            "192.168.77.10",
            &port.to_string(),
            log.to_str().unwrap(),
            "120",
        ],
    );
    t.srv.wait_listening("tcp", port, Duration::from_secs(10));
    p
}

fn udp_server(t: &Topology, port: u16) -> Proc {
    let log = t.dir.file(&format!("udp-{port}.log"));
    let p = t.spawn(
        &t.srv,
        &format!("udp-{port}"),
        &[
            PYTHON,
            &script("udp_server.py"),
            "192.168.77.10",
            &port.to_string(),
            log.to_str().unwrap(),
            "120",
        ],
    );
    t.srv.wait_listening("udp", port, Duration::from_secs(10));
    p
}

/// curl from the client to 10.99.1.1:`port`, optionally from a fixed source port.
fn curl(t: &Topology, port: u16, local_port: Option<u16>) -> CmdOutput {
    let url = format!("http://10.99.1.1:{port}/probe");
    let lp = local_port.map(|p| p.to_string());
    let mut argv = vec!["curl", "-sS", "--noproxy", "*", "--max-time", "4"];
    if let Some(lp) = &lp {
        argv.extend_from_slice(&["--local-port", lp]);
    }
    argv.push(&url);
    t.cli.run(&argv)
}

/// A UDP exchange from 10.99.1.2:`sport` to 10.99.1.1:`dport`: sends `count` datagrams and
/// prints each answer's first word, `refused` on an ICMP port unreachable, `timeout` else.
fn udp_from(t: &Topology, sport: u16, dport: u16, count: u32) -> CmdOutput {
    let code = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('10.99.1.2', {sport}))\n\
         s.connect(('10.99.1.1', {dport}))\n\
         s.settimeout(2)\n\
         for i in range({count}):\n\
         \x20   s.send(b'q%d' % i)\n\
         \x20   try:\n\
         \x20       print(s.recv(2048).decode().split()[0], flush=True)\n\
         \x20   except ConnectionRefusedError:\n\
         \x20       print('refused', flush=True)\n\
         \x20   except socket.timeout:\n\
         \x20       print('timeout', flush=True)\n"
    );
    t.cli.run(&[PYTHON, "-c", &code])
}

// ---------------------------------------------------------------------------------------------
// Records

/// 0x8000: the exact NetNAT mapping event, once per TCP connection and once per UDP flow,
/// at LOCAL2.INFO, in an RFC 3164 line.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn ops_mapping_event_records_are_exact() {
    if !require_root("ops_mapping_event_records_are_exact") {
        return;
    }
    let t = Topology::new();
    let log = Syslog::bind(&t);
    let _h = http_server(&t, 8080);
    let _u = udp_server(&t, 5353);
    // The default queues (one per CPU): one flow's packets sent from two CPUs are still one
    // flow, one mapping record (the new-flow memory is shared by the queue threads).
    let n = Netnat::start(
        &t,
        "queue 4811\n\
         service pub0 port * 80 TCP 192.168.77.10 8080 0x8000\n\
         service pub0 port * 53 UDP 192.168.77.10 5353 0x8000\n",
        &["--syslog-socket", log.path.to_str().unwrap()],
    );
    let c = curl(&t, 80, Some(40312));
    assert!(
        c.success() && c.stdout.contains("peer=10.99.1.2"),
        "{c}\n{}",
        n.proc.evidence()
    );
    let u = udp_from(&t, 40313, 53, 2);
    assert_eq!(u.stdout, "peer=10.99.1.2\npeer=10.99.1.2\n", "{u}");

    let want = [
        "pr:pub0:0a630102:40312:0a630101:80:6",
        "pr:pub0:0a630102:40313:0a630101:53:17",
    ];
    let got = log.wait("pr:", Duration::from_secs(5), |r| r.len() >= 2);
    thread::sleep(Duration::from_millis(300)); // nothing more may come
    assert_eq!(log.records("pr:"), want, "all lines: {:#?}", log.raw());
    assert_eq!(got, want);
    // The raw line: priority 150, then the RFC 3164 header, then the record.
    let raw = log.raw();
    let line = raw.iter().find(|l| l.ends_with(want[0])).unwrap();
    assert!(line.starts_with("<150>"), "{line}");
    // Both flow memories had room: `status --json` says how many flows each refused.
    let doc = status::parse(&n.status_json());
    assert_eq!(doc["flows_refused"]["udp"], 0, "{doc}");
    assert_eq!(doc["flows_refused"]["star"], 0, "{doc}");
}

/// 0x4000 volume records add up to the status counters; 0x1000 reports a malformed packet
/// forged with scapy; 0x0800 reports the server's port unreachable, translated.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn ops_volume_drop_and_icmp_records() {
    if !require_root("ops_volume_drop_and_icmp_records") {
        return;
    }
    let t = Topology::new();
    let log = Syslog::bind(&t);
    let _h = http_server(&t, 8081);
    let web = "service pub0 port * 81 TCP 192.168.77.10 8081 0x4000";
    let drops = "service pub0 port * 82 TCP 192.168.77.10 8082 0x1000";
    let icmp = "service pub0 port * 55 UDP 192.168.77.10 5355 0x0800";
    let n = Netnat::start(
        &t,
        &format!("queue 4812\n{web}\n{drops}\n{icmp}\n"),
        &[
            "--syslog-socket",
            log.path.to_str().unwrap(),
            "--volume-interval",
            "1",
        ],
    );

    // 0x4000.
    let c = curl(&t, 81, None);
    assert!(c.success(), "{c}\n{}", n.proc.evidence());
    thread::sleep(Duration::from_millis(300));
    let json = n.settled_json();
    let counters: Vec<u64> = [
        "in_packets",
        "in_bytes",
        "out_packets",
        "out_bytes",
        "new_connections",
    ]
    .iter()
    .map(|k| json_num(&json, web, k).unwrap_or_else(|| panic!("{k} in {json}")))
    .collect();
    assert!(
        counters[0] >= 4 && counters[2] >= 4 && counters[4] == 1,
        "{json}"
    );
    // Two more intervals: every packet so far is in some record.
    let before = log.records("vol:pub0:*:81:6:").len();
    let vols = log.wait("vol:pub0:*:81:6:", Duration::from_secs(5), |r| {
        r.len() >= before + 2
    });
    assert!(
        vols.len() >= before + 2,
        "no volume records: {:#?}",
        log.raw()
    );
    let mut sums = [0u64; 5];
    for v in &vols {
        let fields: Vec<u64> = v
            .trim_start_matches("vol:pub0:*:81:6:")
            .split(':')
            .map(|f| f.parse().unwrap())
            .collect();
        assert_eq!(fields.len(), 5, "{v}");
        for (s, f) in sums.iter_mut().zip(&fields) {
            *s += f;
        }
    }
    assert_eq!(
        sums.to_vec(),
        counters,
        "volume records {vols:#?} vs status {json}"
    );
    assert!(vols.last().unwrap().ends_with(":0:0:0:0:0"), "{vols:?}");
    assert!(
        log.records("vol:pub0:*:82").is_empty(),
        "0x4000 not set on 82"
    );

    // 0x1000: a TCP header claiming 8 bytes (data offset 2).
    let forge = "from scapy.all import IP, TCP, send\n\
                 send(IP(src='10.99.1.2', dst='10.99.1.1')/TCP(sport=1234, dport=82, dataofs=2, flags='S'), verbose=0)\n";
    t.cli.run(&[PYTHON, "-c", forge]).expect_ok("scapy");
    let dr = log.wait("dr:", Duration::from_secs(5), |r| !r.is_empty());
    assert_eq!(dr.len(), 1, "{:#?}", log.raw());
    assert!(
        dr[0].starts_with("dr:pub0:in:drop:malformed-")
            && dr[0].ends_with(":0a630102:1234:0a630101:82:6"),
        "{dr:?}"
    );
    let json = n.status_json();
    let doc = status::parse(&json);
    let svc = status::service_exact(&doc, drops).unwrap_or_else(|| panic!("{drops} in {json}"));
    assert_eq!(
        svc["drops"],
        serde_json::json!({"oversize": 0, "malformed": 1, "unmapped_reply": 0, "unrelated_icmp": 0}),
        "{json}"
    );

    // 0x0800: nobody listens on 5355; the server's port unreachable reaches the client
    // translated (the socket sees "refused"), and is reported.
    let u = udp_from(&t, 40555, 55, 1);
    assert_eq!(u.stdout, "refused\n", "{u}");
    let ic = log.wait("ic:", Duration::from_secs(5), |r| !r.is_empty());
    assert_eq!(
        ic,
        ["ic:pub0:out:3:3:0a630102:40555:c0a84d0a:5355:17"],
        "{:#?}",
        log.raw()
    );
    assert_eq!(json_num(&n.status_json(), icmp, "icmp_errors"), Some(1));
}

/// 0x2000: a record per translated packet, at most the burst plus the rate, and a `sup` record
/// with the exact number held back when records resume. Nothing is lost uncounted.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn ops_every_packet_records_are_rate_limited() {
    if !require_root("ops_every_packet_records_are_rate_limited") {
        return;
    }
    let t = Topology::new();
    let log = Syslog::bind(&t);
    let svc = "service pub0 port * 54 UDP 192.168.77.10 5354 0x2000";
    let n = Netnat::start(
        &t,
        // One queue: the burst asserted below is the whole log-burst, which netnat divides
        // among its queues (a flow is handled by one of them).
        &format!("queue 4813\nqueues 1\n{svc}\n"),
        &["--syslog-socket", log.path.to_str().unwrap()],
    );
    const BURST: u32 = 1000;
    let code = format!(
        "import socket, time\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('10.99.1.2', 40654))\n\
         for i in range({BURST}):\n\
         \x20   s.sendto(b'x', ('10.99.1.1', 54))\n\
         time.sleep(1.5)\n\
         s.sendto(b'x', ('10.99.1.1', 54))\n"
    );
    let start = Instant::now();
    t.cli.run(&[PYTHON, "-c", &code]).expect_ok("udp burst");
    let elapsed = start.elapsed().as_secs_f64();
    let pk_prefix = "pk:pub0:in:0a630102:40654:0a630101:54:17:29";
    let held = |sup: &[String]| -> u64 {
        sup.iter()
            .map(|r| {
                r.strip_prefix("sup:pub0:*:54:17:pk:")
                    .unwrap_or_else(|| panic!("{r}"))
                    .parse::<u64>()
                    .unwrap()
            })
            .sum()
    };
    // Records resume (with a `sup` first) whenever tokens come back, possibly already during
    // the burst; the last packet, after a quiet 1.5 s, always gets its record.
    log.wait("sup:", Duration::from_secs(5), |sup| {
        held(sup) + log.records(pk_prefix).len() as u64 > u64::from(BURST)
    });
    thread::sleep(Duration::from_millis(300));

    let json = n.status_json();
    assert_eq!(
        json_num(&json, svc, "in_packets"),
        Some(u64::from(BURST) + 1),
        "{json}"
    );
    let lost = json_num(&json, "", "log_lost").unwrap();
    let pk = log.records(pk_prefix);
    let sup = log.records("sup:");
    let held = held(&sup);
    assert!(held > 0, "nothing was held back");
    assert_eq!(
        pk.len() as u64 + held + lost,
        u64::from(BURST) + 1,
        "records {} + suppressed {held} ({sup:?}) + lost {lost}",
        pk.len()
    );
    let bound = 200.0 + 100.0 * elapsed + 1.0;
    assert!(
        (pk.len() as f64) <= bound && pk.len() > 200,
        "{} pk records in {elapsed:.2} s (bound {bound})",
        pk.len()
    );
    // Every `sup` record is followed by the record it announces.
    let msgs: Vec<String> = log
        .raw()
        .iter()
        .filter_map(|l| parse_3164(l))
        .map(|(_, m)| m)
        .collect();
    for (i, m) in msgs.iter().enumerate() {
        if m.starts_with("sup:") {
            assert!(
                msgs.get(i + 1).is_some_and(|n| n.starts_with(pk_prefix)),
                "{:?}",
                &msgs[i..]
            );
        }
    }
    assert!(
        msgs.last().is_some_and(|m| m.starts_with(pk_prefix)),
        "last packet logged"
    );
}

// ---------------------------------------------------------------------------------------------
// Control socket

/// `service add/del` change live traffic; a non-root caller is refused by the daemon (exit 4)
/// and changes nothing; a duplicate is refused with the reason (exit 2); `--save` edits the
/// file keeping comments and mode.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn ops_service_add_del_over_the_control_socket() {
    if !require_root("ops_service_add_del_over_the_control_socket") {
        return;
    }
    let t = Topology::new();
    let _h0 = http_server(&t, 8080);
    let _h1 = http_server(&t, 8081);
    let conf = "# netnat for the test\nqueue 4814\n\nservice pub0 port * 80 TCP 192.168.77.10 8080 # web\n";
    let n = Netnat::start(&t, conf, &["--log-stderr"]);
    fs::set_permissions(&n.conf, fs::Permissions::from_mode(0o640)).unwrap();
    let words = ["pub0", "port", "*", "81", "TCP", "192.168.77.10", "8081"];
    let add: Vec<&str> = ["service", "add"].iter().chain(&words).copied().collect();
    let del: Vec<&str> = ["service", "del"].iter().chain(&words).copied().collect();

    assert!(!curl(&t, 81, None).success(), "81 is not mapped yet");

    let denied = n.ctl_as_nobody(&add);
    assert_eq!(denied.status.and_then(|s| s.code()), Some(4), "{denied}");
    assert!(
        denied
            .stderr
            .contains("only root may control netnat (you are uid 65534)"),
        "{denied}"
    );
    let denied = n.ctl_as_nobody(&["status"]);
    assert_eq!(denied.status.and_then(|s| s.code()), Some(4), "{denied}");
    assert!(
        !curl(&t, 81, None).success(),
        "a refused add changes nothing"
    );

    let mut add_save = add.clone();
    add_save.push("--save");
    let out = n.ctl(&add_save);
    assert!(out.success(), "{out}\n{}", n.proc.evidence());
    assert!(
        out.stdout
            .contains("added: service pub0 port * 81 TCP 192.168.77.10 8081 0x0000"),
        "{out}"
    );
    let c = curl(&t, 81, None);
    assert!(
        c.success() && c.stdout.contains("peer=10.99.1.2"),
        "{c}\n{}",
        n.proc.evidence()
    );
    let saved = format!(
        "{}service pub0 port * 81 TCP 192.168.77.10 8081 0x0000\n",
        n.written
    );
    assert_eq!(fs::read_to_string(&n.conf).unwrap(), saved);
    let mode = fs::metadata(&n.conf).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640, "the file keeps its mode");

    // Same apparent endpoint, other server: refused, nothing changes.
    let dup = n.ctl(&[
        "service",
        "add",
        "pub0",
        "port",
        "*",
        "81",
        "TCP",
        "192.168.77.10",
        "9999",
    ]);
    assert_eq!(dup.status.and_then(|s| s.code()), Some(2), "{dup}");
    assert!(
        dup.stderr.contains("both claim the apparent endpoint"),
        "{dup}"
    );
    assert!(
        curl(&t, 81, None).success(),
        "still mapped after a refused add"
    );
    let bad = n.ctl(&[
        "service", "add", "pub0", "port", "*", "99999", "TCP", "10.0.0.1", "1",
    ]);
    assert_eq!(bad.status.and_then(|s| s.code()), Some(2), "{bad}");

    let list = n.ctl(&["service", "list"]);
    assert_eq!(
        list.stdout,
        "service pub0 port * 80 TCP 192.168.77.10 8080 0x0000\n\
         service pub0 port * 81 TCP 192.168.77.10 8081 0x0000\n",
        "{list}"
    );

    let mut del_save = del.clone();
    del_save.push("--save");
    let out = n.ctl(&del_save);
    assert!(out.success(), "{out}");
    assert!(!curl(&t, 81, None).success(), "81 unmapped after del");
    assert!(curl(&t, 80, None).success(), "80 untouched");
    assert_eq!(
        fs::read_to_string(&n.conf).unwrap(),
        format!(
            "{}# deleted by netnat service del: service pub0 port * 81 TCP 192.168.77.10 8081 0x0000\n",
            n.written
        )
    );
    let again = n.ctl(&del);
    assert_eq!(again.status.and_then(|s| s.code()), Some(2), "{again}");
    assert!(
        again.stderr.contains("no running service matches"),
        "{again}"
    );

    let mut n = n;
    assert!(n.terminate().is_some_and(|s| s.success()));
    let gone = n.ctl(&["status"]);
    assert_eq!(gone.status.and_then(|s| s.code()), Some(3), "{gone}");
    assert!(!n.ctl.exists(), "control socket removed at exit");
}

/// `service add --save` with the line as one quoted word; on a CRLF file the saved line ends in
/// CRLF too; `#` right after a value is a comment in the file the daemon loads. On a file the
/// daemon cannot write (a read-only bind mount of its directory, in the daemon's own mount
/// namespace), the change is live but not saved: exit 5, and the message says both.
#[test]
fn ops_save_keeps_crlf_and_says_live_but_not_saved() {
    if !require_root("ops_save_keeps_crlf_and_says_live_but_not_saved") {
        return;
    }
    let t = Topology::new();
    let _h0 = http_server(&t, 8080);
    let _h1 = http_server(&t, 8081);
    let _h2 = http_server(&t, 8082);
    let conf = "# edited on another system\r\nqueue 4817\r\nservice pub0 port * 80 TCP 192.168.77.10 8080#web\r\n";
    let mut n = Netnat::start(&t, conf, &["--log-stderr"]);
    assert!(curl(&t, 80, None).success(), "{}", n.proc.evidence());
    let line81 = "pub0 port * 81 TCP 192.168.77.10 8081";
    let out = n.ctl(&["service", "add", line81, "--save"]);
    assert!(out.success(), "one quoted line is accepted\n{out}");
    assert!(curl(&t, 81, None).success(), "{}", n.proc.evidence());
    let saved = fs::read_to_string(&n.conf).unwrap();
    assert_eq!(
        saved,
        format!("{}service {line81} 0x0000\r\n", n.written),
        "CRLF kept"
    );
    // status --json: a format version, and each service's fields beside its line.
    let json = n.status_json();
    assert!(json.starts_with("{\"format\":1,"), "{json}");
    assert!(
        json.contains(&format!(
            "{{\"service\":\"service {line81} 0x0000\",\"iface\":\"pub0\",\"protocol\":\"TCP\",\
             \"apparent_addr\":\"*\",\"apparent_port\":81,\"actual_addr\":\"192.168.77.10\",\
             \"actual_port\":8081,\"flags\":0,\"state\":\"active\",\"apparent\":\"10.99.1.1:81\","
        )),
        "{json}"
    );
    assert!(n.terminate().is_some_and(|s| s.success()));

    // The same file in a directory mounted read-only for the daemon only.
    let etc = t.dir.file("etc");
    fs::create_dir_all(&etc).unwrap();
    let ro_conf = etc.join("netnat.conf");
    let ro_text = with_test_offload(
        "queue 4817\nservice pub0 port * 80 TCP 192.168.77.10 8080\n",
        "netnat-ro",
    );
    fs::write(&ro_conf, &ro_text).unwrap();
    let ctl = t.dir.file("ro.sock");
    let e = etc.to_str().unwrap();
    let script = format!(
        "mount --bind {e} {e} && mount -o remount,bind,ro {e} && exec {BIN} run --config {} \
         --log-stderr --control {}",
        ro_conf.display(),
        ctl.display()
    );
    let mut ro = t.spawn(&t.rtr, "netnat-ro", &["sh", "-c", &script]);
    ro.wait_stderr("ready", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("netnat did not start: {e}"));
    let mut c = Command::new(BIN);
    c.args(["service", "add", "pub0", "port", "*", "82", "TCP"])
        .args(["192.168.77.10", "8082", "--save", "--control"])
        .arg(&ctl);
    let out = run_bounded(c, Duration::from_secs(30));
    assert_eq!(out.status.and_then(|s| s.code()), Some(5), "{out}");
    assert!(
        out.stderr
            .contains("added: service pub0 port * 82 TCP 192.168.77.10 8082 0x0000")
            && out.stderr.contains("applied live, NOT saved")
            && out.stderr.contains(&ro_conf.display().to_string())
            && out.stderr.contains("Read-only file system"),
        "{out}"
    );
    assert!(
        curl(&t, 82, None).success(),
        "the change is live\n{}",
        ro.evidence()
    );
    assert_eq!(
        fs::read_to_string(&ro_conf).unwrap(),
        ro_text,
        "the file is unchanged"
    );
    ro.signal(libc::SIGTERM);
    let st = ro.wait_timeout(Duration::from_secs(10));
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", ro.evidence());
}

/// `status --json` numbers follow the traffic; the text form names the apparent address.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn ops_status_counters_move_with_traffic() {
    if !require_root("ops_status_counters_move_with_traffic") {
        return;
    }
    let t = Topology::new();
    let _h = http_server(&t, 8080);
    let svc = "service pub0 port * 80 TCP 192.168.77.10 8080 0x0000";
    let n = Netnat::start(&t, &format!("queue 4815\n{svc}\n"), &["--log-stderr"]);
    let before = n.status_json();
    assert_eq!(json_num(&before, svc, "in_packets"), Some(0), "{before}");
    let doc = status::parse(&before);
    let obj = status::service_exact(&doc, svc).unwrap_or_else(|| panic!("{svc} in {before}"));
    assert_eq!(obj["state"], "active", "{before}");
    assert_eq!(obj["apparent"], "10.99.1.1:80", "{before}");
    assert!(obj["last_seen"].is_null(), "{before}");
    for _ in 0..3 {
        assert!(curl(&t, 80, None).success());
    }
    let after = n.settled_json();
    let num = |k: &str| json_num(&after, svc, k).unwrap();
    assert_eq!(num("new_connections"), 3, "{after}");
    assert!(
        num("in_packets") >= 3 * 4 && num("out_packets") >= 3 * 4,
        "{after}"
    );
    assert!(num("in_bytes") > num("in_packets") * 40, "{after}");
    assert!(num("last_seen") > 1_600_000_000, "{after}");
    let received = json_num(&after, "", "queue.received").unwrap();
    if n.offloaded() {
        // netnat saw each flow's first packets; the service counts the kernel's too.
        assert!(
            received > 0 && received <= num("in_packets") + num("out_packets"),
            "{after}"
        );
    } else {
        assert_eq!(received, num("in_packets") + num("out_packets"), "{after}");
    }
    let text = n.ctl(&["status"]);
    assert!(text.stdout.contains("  apparent 10.99.1.1:80\n"), "{text}");
    assert!(text.stdout.contains("3 new connections"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Signals

/// SIGHUP with a changed file: new service live, removed one gone, unchanged ones keep their
/// counters and UDP flows. A broken file is refused and the running set stays; `netnat reload`
/// reports the located errors.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn ops_sighup_reload_keeps_counters_and_refuses_broken_files() {
    if !require_root("ops_sighup_reload_keeps_counters_and_refuses_broken_files") {
        return;
    }
    let t = Topology::new();
    let _h0 = http_server(&t, 8080);
    let _h1 = http_server(&t, 8081);
    let _h2 = http_server(&t, 8082);
    let _u = udp_server(&t, 5353);
    let web = "service pub0 port * 80 TCP 192.168.77.10 8080 0x0000";
    let dns = "service pub0 port * 53 UDP 192.168.77.10 5353 0x0000";
    let old = "service pub0 port * 81 TCP 192.168.77.10 8081 0x0000";
    let new = "service pub0 port * 82 TCP 192.168.77.10 8082 0x0000";
    let mut n = Netnat::start(
        &t,
        // The default queues: the second exchange of the same flow (a new client process) may
        // be sent from the other CPU, and is still the same flow.
        &format!("queue 4816\n{web}\n{dns}\n{old}\n"),
        &["--log-stderr"],
    );
    assert!(curl(&t, 80, None).success());
    assert_eq!(udp_from(&t, 40777, 53, 1).stdout, "peer=10.99.1.2\n");
    assert!(curl(&t, 81, None).success());
    let before = n.settled_json();
    let web_in = json_num(&before, web, "in_packets").unwrap();
    assert!(web_in > 0);
    assert_eq!(json_num(&before, dns, "new_connections"), Some(1));

    fs::write(
        &n.conf,
        with_test_offload(&format!("queue 4816\n{dns}\n{new}\n{web}\n"), "reload"),
    )
    .unwrap();
    n.proc.signal(libc::SIGHUP);
    n.proc
        .wait_stderr("reloaded: 3 services", Duration::from_secs(10))
        .unwrap();
    assert!(curl(&t, 82, None).success(), "{}", n.proc.evidence());
    assert!(!curl(&t, 81, None).success(), "81 removed");
    // The same UDP flow again: remembered across the reload, so no new connection.
    assert_eq!(udp_from(&t, 40777, 53, 1).stdout, "peer=10.99.1.2\n");
    let after = n.settled_json();
    assert_eq!(json_num(&after, web, "in_packets"), Some(web_in), "{after}");
    assert_eq!(json_num(&after, dns, "new_connections"), Some(1), "{after}");
    assert_eq!(json_num(&after, dns, "in_packets"), Some(2), "{after}");
    // The removed TCP service stays only as draining (its established connections go on).
    let doc = status::parse(&after);
    assert!(
        status::service_exact(&doc, old).is_none_or(|r| r["state"] == "draining"),
        "{after}"
    );

    fs::write(
        &n.conf,
        with_test_offload(
            &format!("queue 4816\n{web}\nservice pub0 port * 83 SCTP 10.0.0.1 1\n"),
            "reload",
        ),
    )
    .unwrap();
    n.proc.signal(libc::SIGHUP);
    n.proc
        .wait_stderr("reload refused", Duration::from_secs(10))
        .unwrap();
    assert!(curl(&t, 82, None).success(), "the running set stays");
    let r = n.ctl(&["reload"]);
    assert_eq!(r.status.and_then(|s| s.code()), Some(2), "{r}");
    let located = format!("{}:3:", n.conf.display());
    assert!(
        r.stderr.contains(&located) && r.stderr.contains("SCTP"),
        "{r}"
    );
    // `netnat reload` is logged as SIGHUP is, naming who asked.
    let refused = format!("netnat: error: reload refused (netnat reload): {located}");
    n.proc
        .wait_stderr(&refused, Duration::from_secs(5))
        .unwrap();
    assert!(
        n.proc
            .stderr()
            .contains("netnat: error: reload refused (SIGHUP): "),
        "{}",
        n.proc.evidence()
    );
    assert!(curl(&t, 82, None).success());

    fs::write(
        &n.conf,
        with_test_offload(&format!("queue 4816\n{web}\n"), "reload"),
    )
    .unwrap();
    let r = n.ctl(&["reload"]);
    assert!(
        r.success() && r.stdout.contains("reloaded: 1 services"),
        "{r}"
    );
    n.proc
        .wait_stderr(
            "netnat: info: reloaded: 1 services (netnat reload)\n",
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(
        n.proc
            .stderr()
            .contains("netnat: info: reloaded: 3 services (SIGHUP)\n"),
        "{}",
        n.proc.evidence()
    );
    assert!(!curl(&t, 82, None).success());
    assert!(curl(&t, 80, None).success());
}

/// SIGTERM while UDP traffic flows: exit 0, the table is gone, the control socket too.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn ops_sigterm_during_traffic_exits_cleanly() {
    if !require_root("ops_sigterm_during_traffic_exits_cleanly") {
        return;
    }
    let t = Topology::new();
    let _u = udp_server(&t, 5353);
    let mut n = Netnat::start(
        &t,
        "queue 4817\nservice pub0 port * 53 UDP 192.168.77.10 5353 0x0000\n",
        &["--log-stderr"],
    );
    let flood = "import socket, time\n\
                 s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 end = time.monotonic() + 4\n\
                 while time.monotonic() < end:\n\
                 \x20   s.sendto(b'x' * 200, ('10.99.1.1', 53))\n";
    let _traffic = t.spawn(&t.cli, "flood", &[PYTHON, "-c", flood]);
    // Traffic is flowing through netnat before the signal.
    let end = Instant::now() + Duration::from_secs(5);
    // With offload the kernel takes the flow after its first datagram (its count: every 2 s).
    let through = |json: &str| {
        json_num(json, "", "queue.received").unwrap_or(0)
            + json_num(json, "", "offload.packets").unwrap_or(0)
    };
    while through(&n.status_json()) < 100 {
        assert!(Instant::now() < end, "no traffic reached netnat");
        thread::sleep(Duration::from_millis(50));
    }
    let status = n.terminate();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}\n{}",
        n.proc.evidence()
    );
    assert!(n.proc.stderr().contains("stopped"), "{}", n.proc.evidence());
    let table = t.rtr.run(&["nft", "list", "table", "inet", "netnat"]);
    assert!(!table.success(), "table still there:\n{table}");
    assert!(!Path::new(&n.ctl).exists(), "control socket left behind");
}
