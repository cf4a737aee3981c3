//! Network namespaces owned by a test: the one harness every kernel test builds on.
//!
//! An [`Ns`] is a namespace named `nn-<pid>-<n>-<role>`: the test process's pid makes the name
//! unique among the test binaries running at the same time (other checkouts included), the
//! counter among the tests of one binary. Dropping it kills every process left inside and
//! deletes it, also when the test panics; a binary killed before its destructors ran leaves
//! namespaces whose pid is gone, and the first [`Ns`] of the next run removes those.
//!
//! It may use: `ip`/`sysctl` through [`super::run_bounded`] (every command bounded in time)
//! and `setns` in threads of its own. The host's own namespace is never changed: commands run
//! through `ip -n` / `ip netns exec`, sockets in a thread that has joined the namespace.

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use super::{CMD_TIMEOUT, CmdOutput, run_bounded, unique_id};

/// One network namespace, deleted on drop (kept when `NN_KEEP_NS` is set, for a post-mortem).
pub struct Ns {
    pub name: String,
}

impl Ns {
    /// A new namespace `nn-<pid>-<n>-<role>` with its loopback up.
    pub fn new(role: &str) -> Ns {
        Ns::named(&unique_id(), role)
    }

    /// A new namespace `nn-<id>-<role>`, where `id` comes from [`unique_id`]: the namespaces of
    /// one topology share it.
    pub fn named(id: &str, role: &str) -> Ns {
        assert!(
            !role.is_empty() && role.bytes().all(|b| b.is_ascii_alphanumeric()),
            "role {role:?}: letters and digits only (stale-namespace sweep parses the name)"
        );
        sweep_stale_namespaces();
        let name = format!("nn-{id}-{role}");
        let mut c = Command::new("ip");
        c.args(["netns", "add", &name]);
        run_bounded(c, CMD_TIMEOUT).expect_ok("ip netns add");
        // From here on, Drop removes it whatever fails next.
        let ns = Ns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `f` in a thread of its own inside this namespace (setns is per thread), e.g. to
    /// create sockets there: a sender in Rust is far faster than any script. For threads that
    /// outlive the caller's scope; [`Ns::enter`] for a body that returns.
    pub fn thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = self.path();
        thread::spawn(move || {
            join_namespace(&path);
            f()
        })
    }

    /// Runs `f` inside this namespace, in a scoped thread (so `f` may borrow, this [`Ns`]
    /// included), and returns its result. A panic in `f` is re-raised here with its message.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        thread::scope(|s| {
            s.spawn(move || {
                join_namespace(&path);
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// `ip netns exec <name> argv...`
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    pub fn run(&self, argv: &[&str]) -> CmdOutput {
        run_bounded(self.command(argv), CMD_TIMEOUT)
    }

    pub fn run_timeout(&self, argv: &[&str], timeout: Duration) -> CmdOutput {
        run_bounded(self.command(argv), timeout)
    }

    /// Runs and panics with the evidence unless it exits 0; returns stdout.
    pub fn must(&self, argv: &[&str]) -> String {
        let what = format!("in namespace {}", self.name);
        self.run(argv).expect_ok(&what).stdout
    }

    /// `sh -c script` inside the namespace.
    pub fn sh(&self, script: &str) -> CmdOutput {
        self.run(&["sh", "-c", script])
    }

    /// `ip -n <name> args…` (iproute2 switches into the namespace itself); panics unless it
    /// exits 0, returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut c = Command::new("ip");
        c.args(["-n", &self.name]).args(args);
        let what = format!("ip in namespace {}", self.name);
        run_bounded(c, CMD_TIMEOUT).expect_ok(&what).stdout
    }

    /// `sysctl -qw setting…` inside the namespace.
    pub fn sysctl(&self, settings: &[&str]) {
        let mut argv = vec!["sysctl", "-qw"];
        argv.extend_from_slice(settings);
        self.must(&argv);
    }

    /// `nft args…` inside the namespace (not checked: tests look at refusals too).
    pub fn nft(&self, args: &[&str]) -> CmdOutput {
        let mut argv = vec!["nft"];
        argv.extend_from_slice(args);
        self.run(&argv)
    }

    /// `nft args…`; panics unless it exits 0, returns stdout.
    pub fn nft_ok(&self, args: &[&str]) -> String {
        self.nft(args).expect_ok("nft").stdout
    }

    /// `nft -f` (or `nft -c -f` with `check_only`) of `ruleset`, through a file: stdin of
    /// bounded commands is closed.
    pub fn nft_file(&self, ruleset: &str, check_only: bool) -> CmdOutput {
        let path = std::env::temp_dir().join(format!("{}-{}.nft", self.name, unique_id()));
        fs::write(&path, ruleset).expect("write ruleset file");
        let p = path.to_str().expect("utf-8 path");
        let out = if check_only {
            self.nft(&["-c", "-f", p])
        } else {
            self.nft(&["-f", p])
        };
        let _ = fs::remove_file(&path);
        out
    }

    /// `nft -f` of `ruleset`, written into `dir` (kept there as evidence).
    pub fn nft_load(&self, dir: &Path, ruleset: &str) -> CmdOutput {
        let path = dir.join(format!("ruleset-{}.nft", unique_id()));
        fs::write(&path, ruleset).expect("write ruleset file");
        self.nft(&["-f", path.to_str().expect("utf-8 path")])
    }

    /// ifindex of `dev`, as iproute2 reports it ("7: name: <...").
    pub fn ifindex(&self, dev: &str) -> u32 {
        let out = self.ip(&["-o", "link", "show", "dev", dev]);
        out.split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no index in {out:?}"))
    }

    /// MAC address of `dev`.
    pub fn mac(&self, dev: &str) -> String {
        let path = format!("/sys/class/net/{dev}/address");
        self.must(&["cat", &path]).trim().to_string()
    }

    /// A veth pair `a`/`b` inside this namespace, both up (so the link has a carrier and IPv6
    /// DAD runs).
    pub fn veth(&self, a: &str, b: &str) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        self.ip(&["link", "set", a, "up"]);
        self.ip(&["link", "set", b, "up"]);
    }

    /// A veth pair from `dev` here to `peer_dev` in `peer`, both down and without addresses.
    pub fn veth_to(&self, dev: &str, peer: &Ns, peer_dev: &str) {
        self.ip(&[
            "link", "add", dev, "type", "veth", "peer", "name", peer_dev, "netns", &peer.name,
        ]);
    }

    /// Adds `cidr` to `dev`; IPv6 without duplicate address detection (usable at once).
    pub fn addr(&self, dev: &str, cidr: &str) {
        if cidr.contains(':') {
            self.ip(&["addr", "add", cidr, "dev", dev, "nodad"]);
        } else {
            self.ip(&["addr", "add", cidr, "dev", dev]);
        }
    }

    pub fn up(&self, dev: &str) {
        self.ip(&["link", "set", dev, "up"]);
    }

    /// Polls until something listens on `port` (`tcp` or `udp`); panics after `timeout`.
    pub fn wait_listening(&self, proto: &str, port: u16, timeout: Duration) {
        let flag = if proto == "udp" { "-Hlnu" } else { "-Hlnt" };
        let filter = format!("sport = :{port}");
        let start = Instant::now();
        let mut last;
        loop {
            last = self.run(&["ss", flag, &filter]);
            if last.success() && !last.stdout.trim().is_empty() {
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "nothing listens on {proto} port {port} in {} after {timeout:?}\n{last}",
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if std::env::var_os("NN_KEEP_NS").is_some() {
            eprintln!("NN_KEEP_NS: keeping namespace {}", self.name);
            return;
        }
        let gone = destroy_namespace(&self.name);
        // A namespace that outlives its test is a leak the next runs trip over: say so, unless
        // the test is failing already (a second panic would abort and hide the first).
        if !gone && !thread::panicking() {
            panic!("could not delete namespace {}", self.name);
        }
    }
}

/// Moves the calling thread into the namespace at `path`; never goes on in the host's.
fn join_namespace(path: &str) {
    let nsf = File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: setns on a namespace fd we hold open; CLONE_NEWNET moves only this thread,
    // which exists to run the caller's body there.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&nsf), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// Kills what runs in `name` and deletes it; true when it is gone.
fn destroy_namespace(name: &str) -> bool {
    let mut c = Command::new("ip");
    c.args(["netns", "pids", name]);
    let pids = run_bounded(c, CMD_TIMEOUT);
    let me = std::process::id() as i32;
    for pid in pids
        .stdout
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|&p| p != me)
    {
        // SAFETY: plain syscall; every process in a test namespace was started by its test.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let mut c = Command::new("ip");
    c.args(["netns", "delete", name]);
    let _ = run_bounded(c, CMD_TIMEOUT);
    !Path::new(&format!("/var/run/netns/{name}")).exists()
}

/// Deletes namespaces `nn-<pid>-<n>-<role>` of test processes that are gone (a test binary
/// killed by a timeout cannot run its destructors). Once per process.
fn sweep_stale_namespaces() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        let mut c = Command::new("ip");
        c.args(["netns", "list"]);
        let list = run_bounded(c, CMD_TIMEOUT);
        for line in list.stdout.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let parts: Vec<&str> = name.split('-').collect();
            let ours = parts.len() == 4
                && parts[0] == "nn"
                && parts[1].parse::<u32>().is_ok()
                && parts[2].parse::<u32>().is_ok()
                && !parts[3].is_empty()
                && parts[3].bytes().all(|b| b.is_ascii_alphanumeric());
            if ours && !Path::new(&format!("/proc/{}", parts[1])).exists() {
                eprintln!("removing stale test namespace {name}");
                destroy_namespace(name);
            }
        }
    });
}
