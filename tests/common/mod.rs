//! The test harness every namespace test builds on: root guard, bounded commands, processes
//! with their output in files, temp dirs, the test addresses, the kernel's queue counters.
//!
//! - [`netns`]: [`Ns`], one network namespace owned by a test (pid-unique name, removed on drop,
//!   commands and threads inside it, veth pairs);
//! - [`topology`]: [`Topology`], client, router and server joined by veth pairs;
//! - [`capture`]: tcpdump inside a namespace, read back with tshark;
//! - [`scenario`]: the data-path scenarios, run against kernel NAT and netnat;
//! - [`status`]: `netnat status --json` read with serde_json;
//! - [`matrix!`]: one `#[test]` per combination of a scenario's parameters.
//!
//! Everything a test starts runs inside its namespaces; traffic only ever goes between them.
//! Every command and every wait is bounded in time.

#![allow(dead_code)] // each test crate uses a different part of the harness
#![allow(unused_macros)] // likewise `matrix!`

pub mod capture;
pub mod netns;
pub mod scenario;
pub mod status;
pub mod topology;

pub use netns::Ns;
pub use topology::Topology;

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Default bound for one command run inside a namespace.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// The guard of a test that needs root; returns true (the test goes on) or panics.
///
/// Such tests are marked `#[ignore = "needs root: ..."]`, so that `cargo test` as a user reports
/// them as ignored, not as passed; `scripts/test` (and CI, as root) runs them with
/// `--include-ignored`. Forced without root (`--ignored` or `--include-ignored` as a user) the
/// test fails here, saying why: a test that did nothing must never be reported `ok`. A test
/// that calls this without being `#[ignore]`d fails as a user the same way, so the mark cannot
/// be forgotten unnoticed.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "{test}: needs root (network namespaces, nftables, CAP_NET_ADMIN), running as uid \
         {euid}: run it as root (scripts/test), and mark it #[ignore = \"needs root: ...\"] so \
         that cargo test as a user lists it as not run"
    );
    true
}

/// Serializes the heavy tests (bulk transfers, captures) of one test binary: 2 CPUs.
pub fn heavy_lock() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `<pid>-<counter>`: unique among the tests of this process and among live processes.
pub fn unique_id() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

// ---------------------------------------------------------------------------------------------
// Commands with a deadline

/// What a bounded command did. `status` is `None` when it was killed at its deadline.
#[derive(Debug)]
pub struct CmdOutput {
    pub cmd: String,
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// Panics with the whole evidence unless the command exited 0.
    pub fn expect_ok(self, what: &str) -> CmdOutput {
        if !self.success() {
            panic!("{what}: command failed\n{self}");
        }
        self
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Some(s) => format!("{s}"),
            None => format!("KILLED at its deadline after {:?}", self.elapsed),
        };
        writeln!(f, "  command: {}", self.cmd)?;
        writeln!(f, "  status:  {status}")?;
        writeln!(f, "  stdout:  {}", excerpt(&self.stdout, 3000))?;
        write!(f, "  stderr:  {}", excerpt(&self.stderr, 3000))
    }
}

/// At most `max` characters of `s` (head and tail), for evidence in failure messages.
pub fn excerpt(s: &str, max: usize) -> String {
    let s = s.trim_end();
    if s.chars().count() <= max {
        return s.to_string();
    }
    let head: String = s.chars().take(max / 2).collect();
    let tail: String = {
        let v: Vec<char> = s.chars().collect();
        v[v.len() - max / 2..].iter().collect()
    };
    format!("{head}\n    [... cut ...]\n{tail}")
}

fn kill_group(pgid: u32, sig: i32) {
    // SAFETY: plain syscall; the group is one this harness created (process_group(0)).
    unsafe {
        libc::kill(-(pgid as i32), sig);
    }
}

fn read_all_in_thread<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` in its own process group, with stdin closed, and kills the whole group at the
/// deadline. Whatever the command left running in its group is killed when it exits.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> CmdOutput {
    let desc = describe(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{desc}`: {e}"));
    let out = read_all_in_thread(child.stdout.take().expect("piped stdout"));
    let err = read_all_in_thread(child.stderr.take().expect("piped stderr"));
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) => {}
            Err(e) => panic!("waiting for `{desc}`: {e}"),
        }
        if start.elapsed() >= timeout {
            kill_group(child.id(), libc::SIGKILL);
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    // Stragglers in the group would keep the pipes open.
    kill_group(child.id(), libc::SIGKILL);
    CmdOutput {
        cmd: desc,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$;|&<>".contains(c)) {
            s.push_str(&format!(" '{}'", a.replace('\'', "'\\''")));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

/// A command on the host that only reads files (tshark on a pcap, sha256sum).
pub fn host(argv: &[&str]) -> CmdOutput {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]);
    run_bounded(c, Duration::from_secs(120))
}

/// A process started in a namespace. Its stdout and stderr go to files; dropping it kills its
/// whole process group.
pub struct Proc {
    pub label: String,
    child: Child,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the process itself (not its group).
    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            // SAFETY: plain syscall on a child we have not reaped yet.
            unsafe {
                libc::kill(self.child.id() as i32, sig);
            }
        }
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until `needle` shows up in the process's stderr. Fails early, with the evidence,
    /// when the process exits first.
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if self.stderr().contains(needle) {
                return Ok(());
            }
            if let Some(s) = self.try_status() {
                // One last look: it may have printed and exited.
                if self.stderr().contains(needle) {
                    return Ok(());
                }
                return Err(format!(
                    "{} exited ({s}) before printing {needle:?}\n{}",
                    self.label,
                    self.evidence()
                ));
            }
            if start.elapsed() >= timeout {
                return Err(format!(
                    "{} did not print {needle:?} within {timeout:?}\n{}",
                    self.label,
                    self.evidence()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn evidence(&self) -> String {
        format!(
            "  [{}] stdout: {}\n  [{}] stderr: {}",
            self.label,
            excerpt(&self.stdout(), 3000),
            self.label,
            excerpt(&self.stderr(), 3000)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A directory for pcaps, logs and files of one test; removed on drop unless `NN_KEEP` is set.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(id: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("nn-itest-{id}"));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("NN_KEEP").is_some() {
            eprintln!("NN_KEEP: keeping {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Addresses

/// Address family of a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn client(self) -> &'static str {
        match self {
            Family::V4 => "10.99.1.2",
            Family::V6 => "fd99:1::2",
        }
    }
    /// The router's natural public address (what `*` stands for on pub0).
    pub fn router_pub(self) -> &'static str {
        match self {
            Family::V4 => "10.99.1.1",
            Family::V6 => "fd99:1::1",
        }
    }
    /// The extra public address used as a fixed apparent address.
    pub fn extra_pub(self) -> &'static str {
        match self {
            Family::V4 => "10.99.1.80",
            Family::V6 => "fd99:1::80",
        }
    }
    pub fn router_priv(self) -> &'static str {
        match self {
            Family::V4 => "192.168.77.1",
            Family::V6 => "fd99:77::1",
        }
    }
    pub fn server(self) -> &'static str {
        match self {
            Family::V4 => "192.168.77.10",
            Family::V6 => "fd99:77::10",
        }
    }
    /// Display-filter matching any private-side address.
    pub fn private_net_filter(self) -> &'static str {
        match self {
            Family::V4 => "ip.addr == 192.168.77.0/24",
            Family::V6 => "ipv6.addr == fd99:77::/64",
        }
    }
    /// `host:port` as URLs and socat want it.
    pub fn hostport(self, ip: &str, port: u16) -> String {
        match self {
            Family::V4 => format!("{ip}:{port}"),
            Family::V6 => format!("[{ip}]:{port}"),
        }
    }
    pub fn socat_tcp(self) -> &'static str {
        match self {
            Family::V4 => "TCP4",
            Family::V6 => "TCP6",
        }
    }
    pub fn ip_field(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ipv6",
        }
    }
}

/// Prometheus metrics as the real parser (`prometheus_client`, tests/scripts/prom_parse.py)
/// reads them: one `name{labels} value type` line per sample. Panics when it refuses them.
pub fn prometheus_samples(text: &str) -> Vec<String> {
    let mut child = Command::new(PYTHON)
        .arg(script("prom_parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// Path of a helper script under tests/scripts.
pub fn script(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(name);
    assert!(p.exists(), "missing helper script {}", p.display());
    p.to_string_lossy().into_owned()
}

/// The system Python, which has scapy (the `python3` on PATH may not).
pub const PYTHON: &str = "/usr/bin/python3";

// ---------------------------------------------------------------------------------------------
// The kernel's view of netnat's queues

/// netnat's queues in a namespace, as /proc/net/netfilter/nfnetlink_queue counts them, summed:
/// queue `first` and the ones after it (one per CPU by default; the kernel hands a packet to
/// the queue of the CPU that handles it, so which one saw a packet is the scheduler's choice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelQueue {
    /// How many queues are bound.
    pub queues: u32,
    /// Packets waiting for a verdict now.
    pub waiting: u64,
    /// Dropped because a queue was full.
    pub queue_dropped: u64,
    /// Dropped because netlink could not deliver them (socket buffer full).
    pub user_dropped: u64,
    /// Packets queued so far.
    pub id_sequence: u64,
}

impl KernelQueue {
    pub fn drops(&self) -> u64 {
        self.queue_dropped + self.user_dropped
    }
}

/// [`KernelQueue`] of queues `first..first+64` in `ns`; `None` when none is bound.
pub fn kernel_queues(ns: &Ns, first: u32) -> Option<KernelQueue> {
    let text = ns
        .run(&["cat", "/proc/net/netfilter/nfnetlink_queue"])
        .stdout;
    let range = u64::from(first)..u64::from(first) + 64;
    let mut sum: Option<KernelQueue> = None;
    for l in text.lines() {
        let f: Vec<u64> = l
            .split_whitespace()
            .map(|w| w.parse().unwrap_or(u64::MAX))
            .collect();
        if f.len() >= 8 && range.contains(&f[0]) {
            let k = sum.get_or_insert_with(KernelQueue::default);
            k.queues += 1;
            k.waiting += f[2];
            k.queue_dropped += f[5];
            k.user_dropped += f[6];
            k.id_sequence += f[7];
        }
    }
    sum
}

// ---------------------------------------------------------------------------------------------
// One test per combination

/// One root test per `name => family, apparent address;` line, each running `scenario` with
/// the translator `tr`: `matrix! { TR, scenario_endpoints: netnat_endpoints_v4_fixed => V4,
/// Fixed; ... }`. The same matrix serves both translators (datapath.rs, datapath_reference.rs).
macro_rules! matrix {
    ($tr:expr, $scenario:ident: $($name:ident => $fam:ident, $app:ident;)*) => {
        $(
            #[test]
            #[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
            fn $name() {
                $scenario(
                    stringify!($name),
                    $crate::common::scenario::Case::new(
                        $tr,
                        $crate::common::Family::$fam,
                        $crate::common::scenario::AppAddr::$app,
                    ),
                );
            }
        )*
    };
}
#[allow(unused_imports)] // only the matrix test files use it
pub(crate) use matrix;
