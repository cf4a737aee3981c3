//! The daemon under adverse conditions around its log and its start-up, end to end: a SIGHUP
//! during start-up, a syslog daemon that restarts, a log reader that stalls, a flood of new
//! connections against every record class.
//!
//! Each test builds its own namespaces (tests/common: Topology, removed on drop) and binds its
//! own syslog socket inside the router namespace; every loop is bounded in count and time.

mod common;

use std::fs;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::scenario::{
    AppAddr, Case, HTTP, READY_TIMEOUT, Servers, Translator, UDP, http_get, netnat_bin, udp_request,
};
use common::{Family, PYTHON, Proc, Topology, require_root, run_bounded};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Runs `f` in the network namespace of `t`'s router, on a short-lived thread: sockets bound
/// there belong to that namespace (a datagram socket's queue limit, for one, comes from it).
fn in_router<T: Send + 'static>(t: &Topology, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = format!("/var/run/netns/{}", t.rtr.name);
    thread::spawn(move || {
        let file = fs::File::open(&ns).expect("open router netns");
        // SAFETY: setns on a namespace fd we hold open, for this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("router namespace thread")
}

/// A datagram socket standing in for /dev/log, read by a thread into memory. It can be closed
/// and bound again on the same path: a syslog daemon that restarts.
struct Syslog {
    path: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Syslog {
    fn bind(t: &Topology, path: &Path) -> Syslog {
        t.rtr
            .must(&["sysctl", "-qw", "net.unix.max_dgram_qlen=4096"]);
        let p = path.to_path_buf();
        let sock = in_router(t, move || {
            UnixDatagram::bind(&p).expect("bind syslog socket")
        });
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
            path: path.to_path_buf(),
            lines,
            stop,
            reader: Some(reader),
        }
    }

    /// Closes the socket and removes its file, as a stopping syslog daemon does.
    fn close(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let _ = fs::remove_file(&self.path);
    }

    /// The message parts (after `netnat[PID]: `) of the lines received so far.
    fn messages(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.split_once("]: ").map(|(_, m)| m.to_string()))
            .collect()
    }

    fn count(&self, prefix: &str) -> usize {
        self.messages()
            .iter()
            .filter(|m| m.starts_with(prefix))
            .count()
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

/// Starts `netnat run` with `config` in the router namespace, logging to the syslog socket
/// `syslog`, with a control socket of its own; waits for `ready`.
fn start_syslog_netnat(t: &Topology, config: &str, syslog: &Path) -> (Proc, PathBuf) {
    let conf = t.dir.file("netnat.conf");
    fs::write(&conf, config).expect("write config");
    let control = t.dir.file("netnat.sock");
    let mut p = t.spawn(
        &t.rtr,
        "netnat",
        &[
            netnat_bin(),
            "run",
            "--config",
            conf.to_str().unwrap(),
            "--syslog-socket",
            syslog.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ],
    );
    if let Err(e) = p.wait_stderr("ready", READY_TIMEOUT) {
        panic!("netnat did not start: {e}");
    }
    (p, control)
}

/// `netnat status` over `control`, bounded by `timeout`: (answered in time, elapsed, output).
fn status(t: &Topology, control: &Path, timeout: Duration) -> (bool, Duration, String) {
    let started = Instant::now();
    let mut cmd = t.rtr.command(&[
        netnat_bin(),
        "status",
        "--control",
        control.to_str().unwrap(),
    ]);
    cmd.env_remove("RUST_BACKTRACE");
    let out = run_bounded(cmd, timeout);
    (out.success(), started.elapsed(), out.to_string())
}

/// The resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Whether `pid` has a handler for signal `sig` (its bit in /proc/PID/status `SigCgt`).
fn catches(pid: u32, sig: i32) -> bool {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

/// Whether `pid` runs the netnat binary yet (`ip netns exec` execs it in the same process).
fn is_netnat(pid: u32) -> bool {
    fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("netnat"))
    })
}

const V4_STAR: Case = Case {
    tr: Translator::Netnat,
    fam: Family::V4,
    app: AppAddr::Star,
};

// ---------------------------------------------------------------------------------------------
// §3: signals during start-up

/// Opens the FIFO `path` for writing as soon as a reader has it open (bounded by `timeout`).
/// A reader that opened it then waits in read(2) until the returned file is written or closed.
fn fifo_writer(path: &Path, timeout: Duration) -> Result<fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let start = Instant::now();
    loop {
        // Non-blocking open for writing fails with ENXIO while nobody reads (a reader blocked
        // in its own open(2) counts as one).
        match fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => return Ok(f),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
            Err(e) => return Err(format!("open {}: {e}", path.display())),
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "nobody opened {} within {timeout:?}",
                path.display()
            ));
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn feed(mut f: fs::File, text: &str) {
    use std::io::Write;
    f.write_all(text.as_bytes()).expect("write the FIFO");
}

/// A SIGHUP that arrives while netnat starts must not kill it: the handlers are the first thing
/// it installs. The configuration file is a FIFO, so netnat is held inside start-up, reading
/// it, for as long as the test wants: SIGHUP is sent then, before the configuration, the
/// queues and the rules. The signal is not lost either: once running, netnat reloads (and
/// reads the FIFO again).
#[test]
fn sighup_during_start_up_does_not_kill_netnat() {
    if !require_root("sighup_during_start_up_does_not_kill_netnat") {
        return;
    }
    let t = Topology::new();
    let config = "queue 4811\nservice pub0 port * 8080 TCP 192.168.77.10 80\n";
    let conf = t.dir.file("netnat.conf");
    let c = std::ffi::CString::new(conf.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mode 0600 (the file must not be writable by others).
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let control = t.dir.file("netnat.sock");
    let mut p = t.spawn(
        &t.rtr,
        "netnat",
        &[
            netnat_bin(),
            "run",
            "--config",
            conf.to_str().unwrap(),
            "--log-stderr",
            "--control",
            control.to_str().unwrap(),
        ],
    );
    // netnat has the FIFO open and waits for its content: it is in start-up, before the
    // configuration is known, the queues bound or any rule installed.
    let writer = fifo_writer(&conf, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", p.evidence()));
    p.signal(libc::SIGHUP);
    thread::sleep(Duration::from_millis(200));
    assert!(
        p.try_status().is_none(),
        "netnat died of a SIGHUP during start-up\n{}",
        p.evidence()
    );
    feed(writer, config);
    p.wait_stderr("ready", READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    // The SIGHUP of start-up: a reload, which reads the FIFO again.
    let writer = fifo_writer(&conf, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("reload: {e}\n{}", p.evidence()));
    feed(writer, config);
    let wait = Instant::now();
    while !p.stderr().contains("reloaded: 1 services") && wait.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        p.stderr().contains("reloaded: 1 services"),
        "{}",
        p.evidence()
    );
    p.signal(libc::SIGTERM);
    let st = p.wait_timeout(Duration::from_secs(20));
    assert!(st.is_some_and(|s| s.success()), "{}", p.evidence());
}
