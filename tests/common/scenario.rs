//! The data-path scenarios, written once and run against two translators: the kernel's own
//! `dnat` (the reference, which passes on any kernel with nf_nat) and netnat.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use super::capture::{self, Capture};
use super::status::{self, Value};
use super::{
    CmdOutput, Family, PYTHON, Proc, Topology, excerpt, heavy_lock, host, require_root,
    run_bounded, script,
};

/// Who translates apparent → actual on the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Translator {
    /// `dnat` in a nat prerouting chain (plus the same mark netnat sets), the reference.
    KernelDnat,
    /// `netnat run` with the equivalent configuration.
    Netnat,
}

/// The apparent address of the services under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppAddr {
    /// The extra public address 10.99.1.80 / fd99:1::80.
    Fixed,
    /// `*`: pub0's natural address, 10.99.1.1 / fd99:1::1.
    Star,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One service mapping: apparent port → actual port on the actual server.
#[derive(Clone, Copy, Debug)]
pub struct Mapping {
    pub proto: Proto,
    pub app_port: u16,
    pub act_port: u16,
}

pub const HTTP: Mapping = Mapping {
    proto: Proto::Tcp,
    app_port: 8080,
    act_port: 80,
};
pub const UPLOAD: Mapping = Mapping {
    proto: Proto::Tcp,
    app_port: 8081,
    act_port: 81,
};
pub const DOWNLOAD: Mapping = Mapping {
    proto: Proto::Tcp,
    app_port: 8082,
    act_port: 82,
};
pub const UDP: Mapping = Mapping {
    proto: Proto::Udp,
    app_port: 5300,
    act_port: 53,
};
pub const MAPPINGS: [Mapping; 4] = [HTTP, UPLOAD, DOWNLOAD, UDP];

/// The documented firewall rule for mapped traffic (default mark 0x4e00).
pub const MARK_RULE: &str = "meta mark & 0x4e00 == 0x4e00 accept";

/// Size of the bulk transfers.
pub const BULK_BYTES: u64 = 50 * 1024 * 1024;

/// One combination under test.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub tr: Translator,
    pub fam: Family,
    pub app: AppAddr,
}

impl Case {
    pub fn new(tr: Translator, fam: Family, app: AppAddr) -> Case {
        Case { tr, fam, app }
    }

    /// The address the client connects to.
    pub fn app_ip(&self) -> &'static str {
        match self.app {
            AppAddr::Fixed => self.fam.extra_pub(),
            AppAddr::Star => self.fam.router_pub(),
        }
    }

    /// netnat's configuration for [`MAPPINGS`].
    pub fn netnat_config(&self) -> String {
        let app = match self.app {
            AppAddr::Fixed => self.fam.extra_pub(),
            AppAddr::Star => "*",
        };
        let mut s = String::from("# netnat data-path test\n");
        for m in MAPPINGS {
            s.push_str(&format!(
                "service pub0 port {app} {} {} {} {}\n",
                m.app_port,
                m.proto.name().to_uppercase(),
                self.fam.server(),
                m.act_port
            ));
        }
        s
    }

    /// The kernel-NAT reference for [`MAPPINGS`]: the same match, the same mark, `dnat`.
    pub fn dnat_ruleset(&self) -> String {
        let (nfproto, ipkw) = match self.fam {
            Family::V4 => ("ipv4", "ip"),
            Family::V6 => ("ipv6", "ip6"),
        };
        let dst = match self.app {
            AppAddr::Fixed => format!("{ipkw} daddr {}", self.fam.extra_pub()),
            AppAddr::Star => format!("meta nfproto {nfproto} fib daddr . iif type local"),
        };
        let mut rules = String::new();
        for m in MAPPINGS {
            rules.push_str(&format!(
                "\t\tiifname \"pub0\" {dst} {} dport {} meta mark set meta mark | 0x4e00 dnat {ipkw} to {}\n",
                m.proto.name(),
                m.app_port,
                self.fam.hostport(self.fam.server(), m.act_port)
            ));
        }
        format!(
            "table inet nnref {{\n\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n{rules}\t}}\n}}\n"
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Translators

/// Path of the netnat binary, once the crate has one. `NETNAT_BIN` overrides it (to check the
/// harness with tests/scripts/fake_netnat.py, which is not netnat).
pub fn netnat_bin() -> &'static str {
    static OVERRIDE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if let Some(p) = OVERRIDE.get_or_init(|| std::env::var("NETNAT_BIN").ok()) {
        eprintln!("NETNAT_BIN: using {p}, not the crate's netnat");
        return p;
    }
    match option_env!("CARGO_BIN_EXE_netnat") {
        Some(p) => p,
        None => panic!(
            "the crate has no `netnat` binary target yet (no src/main.rs): \
             the netnat data-path tests cannot run"
        ),
    }
}

/// The environment variable of the offload pass: `NETNAT_TEST_OFFLOAD=on` runs the scenario
/// tests with `offload on` (scripts/test's second pass); unset, empty or `off`: queue mode.
pub const OFFLOAD_ENV: &str = "NETNAT_TEST_OFFLOAD";

/// Whether this run is the offload pass ([`OFFLOAD_ENV`] is `on`). Any other value than `on`,
/// `off` or empty stops the test, naming the variable: a typo must not run queue mode unseen.
pub fn test_offload() -> bool {
    match std::env::var(OFFLOAD_ENV) {
        Err(std::env::VarError::NotPresent) => false,
        Ok(v) if v.is_empty() || v == "off" => false,
        Ok(v) if v == "on" => true,
        other => panic!("{OFFLOAD_ENV}={other:?}: expected on or off (or unset)"),
    }
}

/// What the offload knob does to a configuration, see [`with_test_offload`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Knob {
    /// Not the offload pass: the configuration as the test wrote it.
    Off,
    /// `offload on` appended.
    Appended,
    /// The configuration has an `offload` line of its own: left as it is.
    SetByTest,
    /// The configuration turns `header-only off`, which offload cannot go with: left as it is.
    HeaderOnlyOff,
}

/// The first word of each line of `config` (comments cut at `#`), lower case, with the second.
fn directives(config: &str) -> impl Iterator<Item = (String, String)> + '_ {
    config.lines().filter_map(|l| {
        let l = l.split('#').next().unwrap_or("");
        let mut w = l.split_whitespace();
        let first = w
            .next()?
            .trim_start_matches('\u{feff}')
            .to_ascii_lowercase();
        Some((first, w.next().unwrap_or("").to_ascii_lowercase()))
    })
}

/// `config` as the test runs it, and what the knob did: on the offload pass `offload on` is
/// appended (after the last line, so that every line keeps its number; with the file's own line
/// ending), unless the configuration sets `offload` itself or has `header-only off`.
pub fn offload_knob(config: &str) -> (String, Knob) {
    offload_knob_if(test_offload(), config)
}

/// [`offload_knob`] with the pass given (`on`: the offload pass), for the knob's own test.
pub fn offload_knob_if(on: bool, config: &str) -> (String, Knob) {
    if !on {
        return (config.to_string(), Knob::Off);
    }
    let mut header_only_off = false;
    for (d, v) in directives(config) {
        if d == "offload" {
            return (config.to_string(), Knob::SetByTest);
        }
        header_only_off |= d == "header-only" && v == "off";
    }
    if header_only_off {
        return (config.to_string(), Knob::HeaderOnlyOff);
    }
    let eol = if config.contains("\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let mut s = config.to_string();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push_str(eol);
    }
    s.push_str("offload on");
    s.push_str(eol);
    (s, Knob::Appended)
}

/// [`offload_knob`], saying on stderr (the test's output) what it did for `label`.
pub fn with_test_offload(config: &str, label: &str) -> String {
    let (s, knob) = offload_knob(config);
    match knob {
        Knob::Off => {}
        Knob::Appended => eprintln!("{OFFLOAD_ENV}=on: {label}: `offload on` appended"),
        Knob::SetByTest => eprintln!(
            "{OFFLOAD_ENV}=on: {label}: the configuration sets offload itself, left as it is"
        ),
        Knob::HeaderOnlyOff => eprintln!(
            "{OFFLOAD_ENV}=on: {label}: the configuration has header-only off, which offload \
             needs on: left in queue mode"
        ),
    }
    s
}

/// How long netnat may take to print `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `netnat run` in the router namespace.
pub struct Netnat {
    pub proc: Proc,
    pub config: PathBuf,
    /// Its control socket (`<label>.sock` in the test's directory).
    pub control: PathBuf,
}

impl Netnat {
    /// Writes `config`, starts netnat and waits for `ready` on its stderr.
    /// On the offload pass ([`OFFLOAD_ENV`]) the configuration gets `offload on` (see
    /// [`offload_knob`]); the file holds what netnat runs.
    pub fn start(t: &Topology, config: &str, label: &str) -> Result<Netnat, String> {
        let path = t.dir.file(&format!("{label}.conf"));
        let config = &with_test_offload(config, label);
        fs::write(&path, config).expect("write netnat config");
        let p = path.to_str().expect("utf-8 path");
        // A control socket of the test's own, not the system's /run/netnat.
        let control = t.dir.file(&format!("{label}.sock"));
        let c = control.to_str().expect("utf-8 path");
        let mut proc = t.spawn(
            &t.rtr,
            label,
            &[
                netnat_bin(),
                "run",
                "--config",
                p,
                "--log-stderr",
                "--control",
                c,
            ],
        );
        match proc.wait_stderr("ready", READY_TIMEOUT) {
            Ok(()) => Ok(Netnat {
                proc,
                config: path,
                control,
            }),
            Err(e) => Err(format!("{e}\n  config:\n{config}")),
        }
    }

    /// `netnat <args> --control <its socket>` on the host (a socket path reaches the daemon
    /// from any network namespace), bounded.
    pub fn ctl(&self, args: &[&str]) -> CmdOutput {
        let mut c = Command::new(netnat_bin());
        c.args(args).arg("--control").arg(&self.control);
        run_bounded(c, Duration::from_secs(20))
    }

    /// `netnat status --json`, parsed; panics with the evidence when it fails.
    pub fn status_json(&self) -> Value {
        let out = self.ctl(&["status", "--json"]);
        assert!(
            out.success(),
            "netnat status --json failed\n{out}\n{}",
            self.proc.evidence()
        );
        status::parse(out.stdout.trim())
    }

    /// SIGTERM, then waits at most `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.signal(libc::SIGTERM);
        self.proc.wait_timeout(timeout)
    }
}

impl Drop for Netnat {
    fn drop(&mut self) {
        // Orderly first; Proc's own drop kills whatever is left.
        if self.proc.try_status().is_none() {
            let _ = self.terminate(Duration::from_secs(5));
        }
    }
}

/// What keeps a translator active; dropping it stops netnat.
pub enum Active {
    KernelDnat,
    Netnat(Netnat),
}

impl Active {
    pub fn evidence(&self) -> String {
        match self {
            Active::KernelDnat => String::from("  (kernel dnat)"),
            Active::Netnat(n) => n.proc.evidence(),
        }
    }
}

/// Installs the translator for `case` on the router of `t`.
pub fn activate(t: &Topology, case: Case) -> Active {
    match case.tr {
        Translator::KernelDnat => {
            t.rtr
                .nft_load(&t.dir.path, &case.dnat_ruleset())
                .expect_ok("loading the kernel dnat reference rules");
            Active::KernelDnat
        }
        Translator::Netnat => match Netnat::start(t, &case.netnat_config(), "netnat") {
            Ok(n) => Active::Netnat(n),
            Err(e) => panic!("netnat did not become ready: {e}"),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Peers

/// The HTTP and UDP servers on the actual server, logging the peers they see.
pub struct Servers {
    pub http: Proc,
    pub udp: Proc,
    pub http_log: PathBuf,
    pub udp_log: PathBuf,
}

impl Servers {
    /// The HTTP server on the actual HTTP port, logging each client's address to `log`.
    pub fn http(t: &Topology, fam: Family, log: &Path) -> Proc {
        t.spawn(
            &t.srv,
            "http-server",
            &[
                PYTHON,
                &script("http_server.py"),
                fam.server(),
                &HTTP.act_port.to_string(),
                log.to_str().expect("utf-8"),
                "300",
            ],
        )
    }

    pub fn start(t: &Topology, fam: Family) -> Servers {
        let http_log = t.dir.file("http-peers.log");
        let udp_log = t.dir.file("udp-peers.log");
        let http = Servers::http(t, fam, &http_log);
        let udp = t.spawn(
            &t.srv,
            "udp-server",
            &[
                PYTHON,
                &script("udp_server.py"),
                fam.server(),
                &UDP.act_port.to_string(),
                udp_log.to_str().expect("utf-8"),
                "300",
            ],
        );
        t.srv
            .wait_listening("tcp", HTTP.act_port, Duration::from_secs(10));
        t.srv
            .wait_listening("udp", UDP.act_port, Duration::from_secs(10));
        Servers {
            http,
            udp,
            http_log,
            udp_log,
        }
    }

    pub fn http_peers(&self) -> String {
        fs::read_to_string(&self.http_log).unwrap_or_default()
    }

    pub fn udp_peers(&self) -> String {
        fs::read_to_string(&self.udp_log).unwrap_or_default()
    }
}

/// curl from the client to the apparent HTTP endpoint.
pub fn http_get(t: &Topology, case: Case, max_time_s: u32) -> CmdOutput {
    let url = format!(
        "http://{}/probe",
        case.fam.hostport(case.app_ip(), HTTP.app_port)
    );
    let max = max_time_s.to_string();
    t.cli.run(&[
        "curl",
        "-sS",
        "-g",
        "--noproxy",
        "*",
        "--max-time",
        &max,
        "-w",
        "\nREMOTE %{remote_ip} %{remote_port}\n",
        &url,
    ])
}

/// One UDP request from the client to the apparent UDP endpoint.
pub fn udp_request(t: &Topology, case: Case, timeout_s: u32, tries: u32) -> CmdOutput {
    t.cli.run(&[
        PYTHON,
        &script("udp_client.py"),
        case.app_ip(),
        &UDP.app_port.to_string(),
        "hello-netnat",
        &timeout_s.to_string(),
        &tries.to_string(),
    ])
}

fn line_value<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(str::trim)
}

/// HTTP: the client reached the server through the apparent endpoint; the server saw the real
/// client; the client saw only the apparent endpoint.
pub fn assert_http_ok(t: &Topology, case: Case, servers: &Servers, active: &Active) {
    let out = http_get(t, case, 5);
    let ctx = || {
        format!(
            "{out}\n  server log: {}\n  server: {}\n{}",
            servers.http_peers(),
            servers.http.evidence(),
            active.evidence()
        )
    };
    assert!(out.success(), "{case:?}: HTTP request failed\n{}", ctx());
    let body_peer = line_value(&out.stdout, "peer=").unwrap_or("");
    assert!(
        body_peer.starts_with(&format!("{} ", case.fam.client())),
        "{case:?}: server answered for peer {body_peer:?}, expected the real client {}\n{}",
        case.fam.client(),
        ctx()
    );
    let remote = line_value(&out.stdout, "REMOTE ").unwrap_or("");
    let want = format!("{} {}", case.app_ip(), HTTP.app_port);
    assert_eq!(
        remote,
        want,
        "{case:?}: curl saw remote {remote:?}, expected the apparent endpoint {want:?}\n{}",
        ctx()
    );
    let log = servers.http_peers();
    assert!(
        log.contains(&format!("peer={} ", case.fam.client())),
        "{case:?}: the server's log does not show the real client {}\n{}",
        case.fam.client(),
        ctx()
    );
}

/// UDP: the reply comes from the apparent endpoint; the server saw the real client.
pub fn assert_udp_ok(t: &Topology, case: Case, servers: &Servers, active: &Active) {
    let out = udp_request(t, case, 2, 3);
    let ctx = || {
        format!(
            "{out}\n  server log: {}\n  server: {}\n{}",
            servers.udp_peers(),
            servers.udp.evidence(),
            active.evidence()
        )
    };
    assert!(out.success(), "{case:?}: no UDP reply\n{}", ctx());
    let from = line_value(&out.stdout, "from=").unwrap_or("");
    let want = format!("{} {} ", case.app_ip(), UDP.app_port);
    assert!(
        from.starts_with(&want),
        "{case:?}: the UDP reply came from {from:?}, expected the apparent endpoint {want:?}\n{}",
        ctx()
    );
    assert!(
        from.contains(&format!("data=peer={} ", case.fam.client())),
        "{case:?}: the UDP server answered for another peer than the real client\n{}",
        ctx()
    );
    assert!(
        servers
            .udp_peers()
            .contains(&format!("peer={} ", case.fam.client())),
        "{case:?}: the UDP server's log does not show the real client\n{}",
        ctx()
    );
}

// ---------------------------------------------------------------------------------------------
// Bulk transfers

/// A random file of `bytes` in the test's directory.
pub fn random_file(t: &Topology, name: &str, bytes: u64) -> PathBuf {
    let path = t.dir.file(name);
    let out = host(&[
        "sh",
        "-c",
        &format!("head -c {bytes} /dev/urandom > '{}'", path.display()),
    ]);
    assert!(out.success(), "cannot make random file\n{out}");
    let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, bytes, "random file has the wrong size");
    path
}

pub fn sha256(path: &Path) -> String {
    let out = host(&["sha256sum", path.to_str().expect("utf-8")]);
    assert!(out.success(), "sha256sum failed\n{out}");
    out.stdout
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// The address socat logged (`-d -d`) right after `marker`, e.g. `accepting connection from`:
/// `AF=2 10.99.1.2:4711` or `AF=10 [fd99:0001:...:0002]:4711` (socat writes IPv6 in full).
pub fn socat_logged_addr(log: &str, marker: &str) -> Option<IpAddr> {
    let rest = &log[log.find(marker)? + marker.len()..];
    let mut words = rest.split_whitespace();
    let af = words.next()?;
    let addr = words.next()?;
    if !af.starts_with("AF=") {
        return None;
    }
    let host = match addr.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => addr.rsplit_once(':')?.0,
    };
    host.parse().ok()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid IP literal")
}

/// Upload (client → server) and download (server → client) of `src` through the apparent
/// endpoints, with socat; asserts identical sha256 and that the server saw the real client.
/// Returns a one-line summary with the durations.
pub fn transfer_both_ways(t: &Topology, case: Case, src: &Path, timeout: Duration) -> String {
    let fam = case.fam;
    let want = sha256(src);
    let size = fs::metadata(src).map(|m| m.len()).unwrap_or(0);
    let srcs = src.to_str().expect("utf-8");
    let tcp = fam.socat_tcp();
    let mut summary = String::new();

    // Upload.
    let recv = t.dir.file("upload.recv");
    let mut server = t.spawn(
        &t.srv,
        "socat-upload-server",
        &[
            "socat",
            "-d",
            "-d",
            "-u",
            &format!("{tcp}-LISTEN:{},reuseaddr", UPLOAD.act_port),
            &format!("OPEN:{},creat,trunc", recv.display()),
        ],
    );
    t.srv
        .wait_listening("tcp", UPLOAD.act_port, Duration::from_secs(10));
    let client = t.cli.run_timeout(
        &[
            "socat",
            "-d",
            "-d",
            "-u",
            &format!("OPEN:{srcs}"),
            &format!("{tcp}:{}", fam.hostport(case.app_ip(), UPLOAD.app_port)),
        ],
        timeout,
    );
    let server_done = server.wait_timeout(Duration::from_secs(20));
    let got = sha256(&recv);
    let ctx = |what: &str, client: &CmdOutput, server: &Proc| {
        format!(
            "{case:?}: {what}\n  client:\n{client}\n  server:\n{}\n  received {} of {size} bytes",
            server.evidence(),
            fs::metadata(&recv).map(|m| m.len()).unwrap_or(0)
        )
    };
    assert!(
        client.success(),
        "{}",
        ctx("upload client failed", &client, &server)
    );
    assert!(
        server_done.is_some_and(|s| s.success()),
        "{}",
        ctx("upload server did not finish cleanly", &client, &server)
    );
    assert_eq!(
        got,
        want,
        "{}",
        ctx("uploaded file differs (sha256)", &client, &server)
    );
    let peer = socat_logged_addr(&server.stderr(), "accepting connection from");
    assert_eq!(
        peer,
        Some(ip(fam.client())),
        "{}",
        ctx(
            "the upload server did not see the real client address",
            &client,
            &server
        )
    );
    summary.push_str(&format!(
        "upload {} MiB in {:.2}s",
        size >> 20,
        client.elapsed.as_secs_f64()
    ));
    let _ = fs::remove_file(&recv);

    // Download.
    let recv = t.dir.file("download.recv");
    let mut server = t.spawn(
        &t.srv,
        "socat-download-server",
        &[
            "socat",
            "-d",
            "-d",
            "-u",
            &format!("OPEN:{srcs}"),
            &format!("{tcp}-LISTEN:{},reuseaddr", DOWNLOAD.act_port),
        ],
    );
    t.srv
        .wait_listening("tcp", DOWNLOAD.act_port, Duration::from_secs(10));
    let client = t.cli.run_timeout(
        &[
            "socat",
            "-d",
            "-d",
            "-u",
            &format!("{tcp}:{}", fam.hostport(case.app_ip(), DOWNLOAD.app_port)),
            &format!("OPEN:{},creat,trunc", recv.display()),
        ],
        timeout,
    );
    let server_done = server.wait_timeout(Duration::from_secs(20));
    let got = sha256(&recv);
    let ctx = |what: &str, client: &CmdOutput, server: &Proc| {
        format!(
            "{case:?}: {what}\n  client:\n{client}\n  server:\n{}\n  received {} of {size} bytes",
            server.evidence(),
            fs::metadata(&recv).map(|m| m.len()).unwrap_or(0)
        )
    };
    assert!(
        client.success(),
        "{}",
        ctx("download client failed", &client, &server)
    );
    assert!(
        server_done.is_some_and(|s| s.success()),
        "{}",
        ctx("download server did not finish cleanly", &client, &server)
    );
    assert_eq!(
        got,
        want,
        "{}",
        ctx("downloaded file differs (sha256)", &client, &server)
    );
    let peer = socat_logged_addr(&server.stderr(), "accepting connection from");
    assert_eq!(
        peer,
        Some(ip(fam.client())),
        "{}",
        ctx(
            "the download server did not see the real client address",
            &client,
            &server
        )
    );
    // What the client connected to, in socat's own words.
    let to = socat_logged_addr(&client.stderr, "opening connection to");
    assert_eq!(
        to,
        Some(ip(case.app_ip())),
        "{}",
        ctx(
            "the client's socat did not connect to the apparent address",
            &client,
            &server
        )
    );
    summary.push_str(&format!(
        ", download {} MiB in {:.2}s",
        size >> 20,
        client.elapsed.as_secs_f64()
    ));
    let _ = fs::remove_file(&recv);
    summary
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// HTTP and UDP through the apparent endpoints: endpoints seen on each side.
pub fn scenario_endpoints(name: &str, case: Case) {
    if !require_root(name) {
        return;
    }
    let t = Topology::new();
    let servers = Servers::start(&t, case.fam);
    let active = activate(&t, case);
    assert_http_ok(&t, case, &servers, &active);
    assert_udp_ok(&t, case, &servers, &active);
    active.assert_queue_used(&t, name);
}

/// 50 MiB each way with identical sha256; `offload` false turns TX checksum offload off on
/// every veth end first.
pub fn scenario_bulk(name: &str, case: Case, offload: bool) {
    if !require_root(name) {
        return;
    }
    let _heavy = heavy_lock();
    let t = Topology::new();
    if !offload {
        t.tx_offload_off();
    }
    let file = random_file(&t, "random.bin", BULK_BYTES);
    let active = activate(&t, case);
    let s = transfer_both_ways(&t, case, &file, Duration::from_secs(120));
    eprintln!(
        "{name}: {s} (offload {})",
        if offload { "on" } else { "off" }
    );
    active.assert_queue_used(&t, name);
    drop(active);
}

/// Captures on both sides of the router with TX checksum offload off everywhere: addresses and
/// ports on each side, and no bad checksum.
pub fn scenario_capture(name: &str, case: Case) {
    if !require_root(name) {
        return;
    }
    let _heavy = heavy_lock();
    let fam = case.fam;
    let t = Topology::new();
    t.tx_offload_off();
    let file = random_file(&t, "random.bin", 4 * 1024 * 1024);
    let servers = Servers::start(&t, fam);
    let active = activate(&t, case);
    let cap_pub = Capture::start(&t, &t.rtr, "pub0");
    let cap_priv = Capture::start(&t, &t.rtr, "priv0");
    assert_http_ok(&t, case, &servers, &active);
    assert_udp_ok(&t, case, &servers, &active);
    let s = transfer_both_ways(&t, case, &file, Duration::from_secs(60));
    let pub_pcap = cap_pub.stop();
    let priv_pcap = cap_priv.stop();
    active.assert_queue_used(&t, name);
    drop(active);
    eprintln!("{name}: {s}");
    check_captures(name, case, &pub_pcap, &priv_pcap);
}

/// The capture assertions, apart so that they can be read (and reused) on their own.
pub fn check_captures(name: &str, case: Case, pub_pcap: &Path, priv_pcap: &Path) {
    let fam = case.fam;
    let app = case.app_ip();
    let client = fam.client();
    let server = fam.server();
    let ipf = fam.ip_field();

    // Public side: no private address anywhere (also not inside ICMP errors).
    let leaks = capture::count(pub_pcap, fam.private_net_filter());
    assert_eq!(
        leaks,
        0,
        "{name}: private addresses on pub0:\n{}",
        capture::summary(pub_pcap, fam.private_net_filter(), 20)
    );
    // Private side: no public address of the router.
    let pub_filter = format!(
        "{ipf}.addr == {} || {ipf}.addr == {}",
        fam.router_pub(),
        fam.extra_pub()
    );
    let leaks = capture::count(priv_pcap, &pub_filter);
    assert_eq!(
        leaks,
        0,
        "{name}: router public addresses on priv0:\n{}",
        capture::summary(priv_pcap, &pub_filter, 20)
    );

    // Every TCP/UDP packet, side by side: client port → (proto, port on the other end).
    let check_side = |pcap: &Path, far: &str, side: &str, port_of: &dyn Fn(Mapping) -> u16| {
        let flows = capture::flows(pcap, fam);
        let mut bad = Vec::new();
        let mut seen: BTreeMap<(&'static str, u16), BTreeSet<u16>> = BTreeMap::new();
        let mut directions: BTreeSet<(&'static str, u16, bool)> = BTreeSet::new();
        for f in &flows {
            let port_ok = |p: u16| {
                MAPPINGS
                    .iter()
                    .any(|m| m.proto.name() == f.proto && port_of(*m) == p)
            };
            if f.src == client && f.dst == far && port_ok(f.dport) {
                seen.entry((f.proto, f.sport)).or_default().insert(f.dport);
                directions.insert((f.proto, f.dport, true));
            } else if f.src == far && f.dst == client && port_ok(f.sport) {
                seen.entry((f.proto, f.dport)).or_default().insert(f.sport);
                directions.insert((f.proto, f.sport, false));
            } else {
                bad.push(f.to_string());
            }
        }
        assert!(
            bad.is_empty(),
            "{name}: on {side}, {} packet(s) not between the client {client} and {far} on a \
             service port, e.g.:\n    {}\nall of {side}:\n{}",
            bad.len(),
            bad.iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n    "),
            capture::summary(pcap, "tcp || udp", 40)
        );
        for m in MAPPINGS {
            for inbound in [true, false] {
                assert!(
                    directions.contains(&(m.proto.name(), port_of(m), inbound)),
                    "{name}: on {side}, no {} packet {} port {} of {far}\n{}",
                    m.proto.name(),
                    if inbound { "to" } else { "from" },
                    port_of(m),
                    capture::summary(pcap, "tcp || udp", 40)
                );
            }
        }
        seen
    };
    let pub_seen = check_side(pub_pcap, app, "pub0", &|m| m.app_port);
    let priv_seen = check_side(priv_pcap, server, "priv0", &|m| m.act_port);

    // The same connections on both sides: same client ports, apparent port ↔ actual port.
    let translate = |proto: &str, app_port: u16| {
        MAPPINGS
            .iter()
            .find(|m| m.proto.name() == proto && m.app_port == app_port)
            .map(|m| m.act_port)
    };
    let pub_mapped: BTreeMap<(&str, u16), BTreeSet<u16>> = pub_seen
        .iter()
        .map(|(k, ports)| {
            (
                *k,
                ports.iter().filter_map(|p| translate(k.0, *p)).collect(),
            )
        })
        .collect();
    let priv_only: BTreeMap<_, _> = priv_seen
        .iter()
        .filter(|(k, _)| !pub_mapped.contains_key(*k))
        .collect();
    assert!(
        pub_mapped == priv_seen,
        "{name}: connections differ between the sides (client port -> actual port)\n  pub0 \
         (translated): {pub_mapped:?}\n  priv0: {priv_seen:?}\n  only on priv0: {priv_only:?}"
    );

    capture::assert_checksums_good(pub_pcap, fam, &format!("{name} pub0"));
    capture::assert_checksums_good(priv_pcap, fam, &format!("{name} priv0"));

    // Evidence for the record: the first HTTP request on each side.
    let first = |pcap: &Path, port: u16| {
        capture::summary(pcap, &format!("http.request && tcp.port == {port}"), 1)
    };
    eprintln!(
        "{name}: translated HTTP request\n  pub0:\n{}\n  priv0:\n{}",
        first(pub_pcap, HTTP.app_port),
        first(priv_pcap, HTTP.act_port)
    );
    let udp = |pcap: &Path, port: u16| capture::summary(pcap, &format!("udp.port == {port}"), 2);
    eprintln!(
        "{name}: translated UDP exchange\n  pub0:\n{}\n  priv0:\n{}",
        udp(pub_pcap, UDP.app_port),
        udp(priv_pcap, UDP.act_port)
    );
}

/// The router's own firewall: forward policy drop, established/related accept, invalid drop,
/// LAN masquerade; `mark_rule` adds the one documented rule for netnat's traffic.
pub fn firewall_ruleset(mark_rule: bool) -> String {
    let mark = if mark_rule {
        format!("\t\t{MARK_RULE}\n")
    } else {
        String::new()
    };
    format!(
        "table inet filter {{
\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\tct state established,related counter accept
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state established,related counter accept
\t\tct state invalid counter drop
{mark}\t\tiifname \"priv0\" oifname \"pub0\" counter accept
\t\tcounter comment \"dropped by policy\"
\t}}
\tchain output {{
\t\ttype filter hook output priority filter; policy accept;
\t}}
}}
table ip nat {{
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname \"pub0\" counter masquerade
\t}}
}}
"
    )
}

/// With the router's firewall: without the mark rule nothing reaches the server; after adding
/// it, HTTP and UDP work (the rule is needed and sufficient).
pub fn scenario_firewall(name: &str, case: Case) {
    if !require_root(name) {
        return;
    }
    let t = Topology::new();
    t.rtr
        .nft_load(&t.dir.path, &firewall_ruleset(false))
        .expect_ok("loading the router's firewall");
    let servers = Servers::start(&t, case.fam);
    let active = activate(&t, case);

    let http = http_get(&t, case, 3);
    let udp = udp_request(&t, case, 1, 2);
    let fw = t.rtr.run(&["nft", "list", "table", "inet", "filter"]);
    assert!(
        !http.success() && !udp.success(),
        "{name}: traffic passed the default-drop forward chain without the mark rule\n  \
         http:\n{http}\n  udp:\n{udp}\n  firewall:\n{}",
        fw.stdout
    );
    assert!(
        servers.http_peers().is_empty() && servers.udp_peers().is_empty(),
        "{name}: the server saw clients although the firewall had no mark rule:\n  http: {}\n  \
         udp: {}",
        servers.http_peers(),
        servers.udp_peers()
    );
    // The policy drop counter proves the firewall, not the translator, stopped the traffic.
    let dropped = fw
        .stdout
        .lines()
        .find(|l| l.contains("dropped by policy"))
        .and_then(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "packets")?;
            w.get(i + 1)?.parse::<u64>().ok()
        });
    assert!(
        dropped.is_some_and(|n| n > 0),
        "{name}: the forward chain's policy dropped nothing ({dropped:?}): the translator never \
         forwarded\n{}\n{}",
        fw.stdout,
        active.evidence()
    );

    t.rtr.must(&[
        "nft", "add", "rule", "inet", "filter", "forward", "meta", "mark", "&", "0x4e00", "==",
        "0x4e00", "accept",
    ]);
    assert_http_ok(&t, case, &servers, &active);
    assert_udp_ok(&t, case, &servers, &active);
}

/// `nft list ruleset` with counters zeroed, whitespace normalized and netnat's tables (its own
/// and the leak guard) removed. Returns (the rest, whether a `table inet netnat` was present).
pub fn ruleset_without_netnat(raw: &str) -> (String, bool) {
    let mut out = Vec::new();
    let mut in_netnat = false;
    let mut found = false;
    for line in raw.lines() {
        if line.starts_with("table inet netnat ") {
            in_netnat = true;
            found = true;
            continue;
        }
        if line.starts_with("table inet netnat_guard ") {
            in_netnat = true;
            continue;
        }
        if in_netnat {
            if line == "}" {
                in_netnat = false;
            }
            continue;
        }
        let mut words: Vec<&str> = line.split_whitespace().collect();
        for i in 1..words.len() {
            if words[i - 1] == "packets" || words[i - 1] == "bytes" {
                words[i] = "N";
            }
        }
        if !words.is_empty() {
            out.push(words.join(" "));
        }
    }
    (out.join("\n"), found)
}

/// Waits until `nft list table inet netnat` fails in the router (bounded).
pub fn wait_table_gone(t: &Topology, timeout: Duration) -> Result<(), CmdOutput> {
    let start = Instant::now();
    loop {
        let out = t.rtr.run(&["nft", "list", "table", "inet", "netnat"]);
        if !out.success() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(out);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lines of a multi-line string that differ, for failure messages.
pub fn diff_lines(a: &str, b: &str) -> String {
    let la: BTreeSet<&str> = a.lines().collect();
    let lb: BTreeSet<&str> = b.lines().collect();
    let mut s = String::new();
    for l in la.difference(&lb) {
        s.push_str(&format!("  - {l}\n"));
    }
    for l in lb.difference(&la) {
        s.push_str(&format!("  + {l}\n"));
    }
    excerpt(&s, 4000)
}

// ---------------------------------------------------------------------------------------------
// netnat-only scenarios

fn list_ruleset(t: &Topology) -> String {
    t.rtr.must(&["nft", "list", "ruleset"])
}

/// The router's ruleset outside netnat's table is the same (counters aside) before, while and
/// after netnat runs, with a realistic firewall in place and traffic flowing.
pub fn scenario_ruleset_untouched(name: &str, case: Case) {
    if !require_root(name) {
        return;
    }
    let t = Topology::new();
    t.rtr
        .nft_load(&t.dir.path, &firewall_ruleset(true))
        .expect_ok("loading the router's firewall");
    let servers = Servers::start(&t, case.fam);
    let raw_before = list_ruleset(&t);
    let (before, had) = ruleset_without_netnat(&raw_before);
    assert!(
        !had,
        "{name}: a netnat table exists before netnat ran:\n{raw_before}"
    );

    let mut active = activate(&t, case);
    assert_http_ok(&t, case, &servers, &active);
    assert_udp_ok(&t, case, &servers, &active);
    let Active::Netnat(netnat) = &mut active else {
        panic!("{name} is a netnat test");
    };
    let raw_during = list_ruleset(&t);
    let (during, has) = ruleset_without_netnat(&raw_during);
    assert!(
        has,
        "{name}: no `table inet netnat` in the ruleset while netnat runs:\n{raw_during}\n{}",
        netnat.proc.evidence()
    );
    assert!(
        before == during,
        "{name}: the ruleset outside netnat's table changed while netnat runs:\n{}\nbefore:\n{raw_before}\nduring:\n{raw_during}",
        diff_lines(&before, &during)
    );

    let status = netnat.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{name}: netnat did not exit 0 on SIGTERM ({status:?})\n{}",
        netnat.proc.evidence()
    );
    let raw_after = list_ruleset(&t);
    let (after, has) = ruleset_without_netnat(&raw_after);
    assert!(
        !has,
        "{name}: netnat's table is left after SIGTERM:\n{raw_after}"
    );
    assert!(
        before == after,
        "{name}: the ruleset changed after netnat ran:\n{}\nbefore:\n{raw_before}\nafter:\n{raw_after}",
        diff_lines(&before, &after)
    );
}

/// The table is there while netnat runs (chains at the documented hooks and priorities), and
/// gone after `sig`; SIGTERM must give exit status 0. After SIGKILL, a new netnat starts.
pub fn scenario_signal_cleanup(name: &str, case: Case, sig: i32) {
    if !require_root(name) {
        return;
    }
    let t = Topology::new();
    let Active::Netnat(mut netnat) = activate(&t, case) else {
        panic!("{name} is a netnat test");
    };
    let table = t.rtr.run(&["nft", "list", "table", "inet", "netnat"]);
    assert!(
        table.success(),
        "{name}: no `table inet netnat` after ready\n{table}\n{}",
        netnat.proc.evidence()
    );
    // nft prints priority -300 as `raw`.
    for (hook, prios) in [
        ("prerouting", ["-300", "raw"]),
        ("postrouting", ["300", "300"]),
    ] {
        let found = prios
            .iter()
            .any(|p| table.stdout.contains(&format!("hook {hook} priority {p};")));
        assert!(
            found,
            "{name}: netnat's table has no chain at hook {hook} priority {}:\n{}",
            prios[0], table.stdout
        );
    }

    netnat.proc.signal(sig);
    let status = netnat.proc.wait_timeout(Duration::from_secs(10));
    assert!(
        status.is_some(),
        "{name}: netnat still runs 10 s after signal {sig}\n{}",
        netnat.proc.evidence()
    );
    if sig == libc::SIGTERM {
        assert!(
            status.is_some_and(|s| s.success()),
            "{name}: netnat exited with {status:?} on SIGTERM, expected 0\n{}",
            netnat.proc.evidence()
        );
    }
    if let Err(left) = wait_table_gone(&t, Duration::from_secs(5)) {
        panic!(
            "{name}: netnat's table is still there 5 s after signal {sig} ({status:?})\n{left}\n{}",
            netnat.proc.evidence()
        );
    }
    if sig == libc::SIGKILL {
        // Nothing left behind that blocks a restart (queue binding, table).
        let again = Netnat::start(&t, &case.netnat_config(), "netnat-restart");
        if let Err(e) = again {
            panic!("{name}: netnat does not start again after SIGKILL: {e}");
        }
    }
}

/// Config errors: netnat exits non-zero with a message naming the line, and installs nothing.
pub fn scenario_bad_config(name: &str) {
    if !require_root(name) {
        return;
    }
    let t = Topology::new();
    let config = "# one good line, one bad line\n\
                  service pub0 port 10.99.1.80 8080 TCP 192.168.77.10 80\n\
                  service pub0 port 10.99.1.80 8081 SCTP 192.168.77.10 81\n";
    let path = t.dir.file("bad.conf");
    fs::write(&path, config).expect("write config");
    let mut p = t.spawn(
        &t.rtr,
        "netnat-bad-config",
        &[
            netnat_bin(),
            "run",
            "--config",
            path.to_str().expect("utf-8"),
            "--log-stderr",
        ],
    );
    let status = p.wait_timeout(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| !s.success()),
        "{name}: netnat did not refuse the bad config ({status:?})\n{}",
        p.evidence()
    );
    let err = p.stderr();
    assert!(
        err.contains(":3") || err.contains("line 3"),
        "{name}: the error message does not point at line 3:\n{}",
        p.evidence()
    );
    assert!(
        !err.contains("ready"),
        "{name}: netnat said ready with a bad config\n{}",
        p.evidence()
    );
    let tables = t.rtr.must(&["nft", "list", "tables"]);
    assert!(
        !tables.contains("netnat"),
        "{name}: netnat installed a table from a bad config:\n{tables}"
    );
}

/// A second netnat on the same queue is refused and leaves the first one working.
pub fn scenario_second_instance(name: &str, case: Case) {
    if !require_root(name) {
        return;
    }
    let t = Topology::new();
    let servers = Servers::start(&t, case.fam);
    let first = activate(&t, case);
    let path = t.dir.file("second.conf");
    fs::write(
        &path,
        with_test_offload(&case.netnat_config(), "netnat-second"),
    )
    .expect("write config");
    let mut second = t.spawn(
        &t.rtr,
        "netnat-second",
        &[
            netnat_bin(),
            "run",
            "--config",
            path.to_str().expect("utf-8"),
            "--log-stderr",
        ],
    );
    let status = second.wait_timeout(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| !s.success()),
        "{name}: a second netnat on the same queue was not refused ({status:?})\n{}\n  first:\n{}",
        second.evidence(),
        first.evidence()
    );
    assert_http_ok(&t, case, &servers, &first);
    assert_udp_ok(&t, case, &servers, &first);
}

/// Queue statistics of the router's namespace (/proc/net/netfilter/nfnetlink_queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueStats {
    pub queue: u32,
    pub queue_dropped: u64,
    pub user_dropped: u64,
    /// Packets queued so far (the id of the last one).
    pub id_sequence: u64,
}

pub fn queue_stats(t: &Topology, queue: u32) -> Option<QueueStats> {
    let text = t
        .rtr
        .run(&["cat", "/proc/net/netfilter/nfnetlink_queue"])
        .stdout;
    text.lines().find_map(|l| {
        let f: Vec<u64> = l
            .split_whitespace()
            .map(|w| w.parse().unwrap_or(u64::MAX))
            .collect();
        (f.len() >= 8 && f[0] == u64::from(queue)).then(|| QueueStats {
            queue,
            queue_dropped: f[5],
            user_dropped: f[6],
            id_sequence: f[7],
        })
    })
}

impl Active {
    /// For netnat: the packets really went through its queues (default 4747 and, one per CPU,
    /// the ones after it: the kernel picks the queue by the CPU that handles the packet, so
    /// any one of them may have seen none). Prints the drop counters, which TCP recovers from
    /// (they cost throughput, not correctness).
    pub fn assert_queue_used(&self, t: &Topology, name: &str) {
        let Active::Netnat(n) = self else {
            return;
        };
        let bound: Vec<QueueStats> = (4747..4747 + 64).map_while(|q| queue_stats(t, q)).collect();
        assert!(
            !bound.is_empty(),
            "{name}: no NFQUEUE 4747 bound in the router namespace\n{}",
            n.proc.evidence()
        );
        assert!(
            bound.iter().any(|st| st.id_sequence > 0),
            "{name}: no packet went through netnat's queues: {bound:?}\n{}",
            n.proc.evidence()
        );
        eprintln!("{name}: {bound:?}");
    }
}

/// What the two peers observe of one HTTP request and one UDP exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `ip port` curl reports as the remote end.
    pub http_remote: String,
    /// Address the HTTP server saw as its peer (port left out: ephemeral).
    pub http_peer: String,
    /// `ip port` the UDP reply came from, as the client's socket reports it.
    pub udp_from: String,
    /// Address the UDP server saw as its peer.
    pub udp_peer: String,
}

fn observe(t: &Topology, case: Case, what: &str) -> Observed {
    let http = http_get(t, case, 5);
    assert!(http.success(), "{what}: HTTP request failed\n{http}");
    let udp = udp_request(t, case, 2, 3);
    assert!(udp.success(), "{what}: no UDP reply\n{udp}");
    let first_word = |s: Option<&str>| s.unwrap_or("").split(' ').next().unwrap_or("").to_string();
    let from = line_value(&udp.stdout, "from=").unwrap_or("");
    let mut words = from.split(' ');
    let udp_from = format!(
        "{} {}",
        words.next().unwrap_or(""),
        words.next().unwrap_or("")
    );
    Observed {
        http_remote: line_value(&http.stdout, "REMOTE ")
            .unwrap_or("")
            .to_string(),
        http_peer: first_word(line_value(&http.stdout, "peer=")),
        udp_from,
        udp_peer: first_word(from.split("data=peer=").nth(1)),
    }
}

/// On one topology: the kernel's dnat first, then netnat; the client and the server observe
/// the same endpoints with both (ephemeral client ports aside).
pub fn scenario_same_as_dnat(name: &str, fam: Family, app: AppAddr) {
    if !require_root(name) {
        return;
    }
    let t = Topology::new();
    let servers = Servers::start(&t, fam);
    let reference = Case::new(Translator::KernelDnat, fam, app);
    let _ = activate(&t, reference);
    let with_dnat = observe(&t, reference, &format!("{name} (kernel dnat)"));
    t.rtr.must(&["nft", "delete", "table", "inet", "nnref"]);
    // Forget the reference's connections: netnat must stand on its own.
    t.rtr.run(&["conntrack", "-F"]);
    let case = Case::new(Translator::Netnat, fam, app);
    let active = activate(&t, case);
    let with_netnat = observe(&t, case, &format!("{name} (netnat)"));
    eprintln!("{name}: kernel dnat {with_dnat:?}\n{name}: netnat      {with_netnat:?}");
    assert_eq!(
        with_netnat,
        with_dnat,
        "{name}: netnat's observed endpoints differ from the kernel dnat reference\n  server \
         logs: http {} udp {}\n{}",
        servers.http_peers(),
        servers.udp_peers(),
        active.evidence()
    );
    assert_eq!(
        with_dnat.http_peer,
        fam.client(),
        "{name}: reference broken?"
    );
}
