//! Least privilege: netnat needs CAP_NET_ADMIN and nothing else, refuses a configuration that
//! other users could change, and keeps `unsafe` code to the modules that talk to C or the
//! kernel, each block with its `// SAFETY:` reasoning.
//!
//! The privilege tests run the real `netnat run` under `capsh` (libcap2-bin) in a router
//! namespace of the test harness, with every capability but CAP_NET_ADMIN dropped from the
//! bounding set, and read the running process's capability sets from /proc/PID/status.
//! Needs root and: iproute2 nftables curl python3 capsh setpriv.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::scenario::{
    Active, AppAddr, Case, Netnat, Servers, Translator, assert_http_ok, assert_udp_ok,
    wait_table_gone,
};
use common::{CmdOutput, Family, Proc, Topology, require_root, run_bounded};

const BIN: &str = env!("CARGO_BIN_EXE_netnat");

/// Bit 12 of the capability sets: CAP_NET_ADMIN and nothing else.
const NET_ADMIN_ONLY: &str = "0000000000001000";

// ---------------------------------------------------------------------------------------------
// `unsafe` only where netnat talks to C or the kernel

/// The source files allowed to hold `unsafe`, each with the C or kernel interface it uses.
const UNSAFE_ALLOWED: [(&str, &str); 11] = [
    (
        "src/daemon/mod.rs",
        "poll(2) over the signal pipe, watcher and control sockets; pipe2(2)",
    ),
    (
        "src/control/server.rs",
        "getsockopt(SO_PEERCRED) on the control socket",
    ),
    (
        "src/netlink/socket.rs",
        "the netlink socket: socket, bind, options, sendmsg, recvfrom, poll",
    ),
    (
        "src/queue/mod.rs",
        "Send for the queue's iovecs; sendmsg of the verdicts",
    ),
    (
        "src/queue/area.rs",
        "the queue's receive mapping and recvmmsg",
    ),
    (
        "src/nft/objects.rs",
        "raw libnftnl objects: owned table, rule flush, concatenated sets",
    ),
    (
        "src/nft/elements.rs",
        "set element messages written into libnftnl's batch buffer",
    ),
    (
        "src/nft/expr.rs",
        "libnftnl expressions (queue, compat target, fib, meta)",
    ),
    ("src/iface/name.rs", "if_indextoname(3)"),
    (
        "src/engine/flows.rs",
        "the flow memories' slot table from zeroed pages (alloc_zeroed: untouched pages cost no memory)",
    ),
    (
        "src/control/top.rs",
        "netnat top's terminal: termios, poll(2) and read(2) on stdin, TIOCGWINSZ",
    ),
];

/// How many lines above an `unsafe` its `// SAFETY:` comment may start (multi-line comments).
const SAFETY_WINDOW: usize = 6;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code part of a line: without a trailing `//` comment and without string literals, so
/// that `unsafe` in prose or messages does not count. Good enough for this code base (no
/// raw strings containing `unsafe`, no block comments).
fn code_part(line: &str) -> String {
    let mut out = String::new();
    let mut in_str = false;
    let mut escaped = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        if c == '"' {
            in_str = true;
            continue;
        }
        if c == '/' && chars.peek() == Some(&'/') {
            break;
        }
        out.push(c);
    }
    out
}

fn has_unsafe_keyword(code: &str) -> bool {
    code.match_indices("unsafe").any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + "unsafe".len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !word(before) && !word(after)
    })
}

/// Every `unsafe` in src/ is in an allowed file and has a `// SAFETY:` comment on its line or
/// within [`SAFETY_WINDOW`] lines above it.
#[test]
fn privilege_unsafe_only_in_kernel_modules_each_with_safety_comment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 20, "src/ looks empty: {files:?}");
    let mut outside = Vec::new();
    let mut undocumented = Vec::new();
    let mut sites = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(root)
            .expect("under the crate")
            .to_string_lossy()
            .into_owned();
        let text = fs::read_to_string(f).expect("read source");
        let lines: Vec<&str> = text.lines().collect();
        let mut count = 0;
        for (i, line) in lines.iter().enumerate() {
            if !has_unsafe_keyword(&code_part(line)) {
                continue;
            }
            count += 1;
            let from = i.saturating_sub(SAFETY_WINDOW);
            if !lines[from..=i].iter().any(|l| l.contains("SAFETY:")) {
                undocumented.push(format!("{rel}:{}: {}", i + 1, line.trim()));
            }
        }
        if count > 0 {
            sites.push(format!("{rel}: {count}"));
            if !UNSAFE_ALLOWED.iter().any(|(p, _)| *p == rel) {
                outside.push(rel);
            }
        }
    }
    eprintln!("unsafe sites per file: {}", sites.join(", "));
    assert!(
        outside.is_empty(),
        "`unsafe` outside the modules that talk to C or the kernel: {outside:?}\n\
         allowed: {UNSAFE_ALLOWED:?}"
    );
    assert!(
        undocumented.is_empty(),
        "`unsafe` without a `// SAFETY:` comment within {SAFETY_WINDOW} lines above:\n  {}",
        undocumented.join("\n  ")
    );
    // The pure core must stay pure: the checker itself would miss nothing there.
    assert!(
        !sites
            .iter()
            .any(|s| s.starts_with("src/wire/") || s.starts_with("src/config/")),
        "{sites:?}"
    );
}

#[test]
fn privilege_unsafe_checker_sees_what_it_must() {
    assert!(has_unsafe_keyword(&code_part(
        "    let x = unsafe { f() };"
    )));
    assert!(has_unsafe_keyword(&code_part("unsafe impl Send for Q {}")));
    assert!(!has_unsafe_keyword(&code_part("// the unsafe block below")));
    assert!(!has_unsafe_keyword(&code_part(
        "let m = \"unsafe code\"; // unsafe"
    )));
    assert!(!has_unsafe_keyword(&code_part("fn unsafe_ish() {}")));
    assert!(has_unsafe_keyword(&code_part(
        "let s = \"a \\\" b\"; unsafe { g() }"
    )));
}

// ---------------------------------------------------------------------------------------------
// A configuration other users could change is refused

/// `netnat check` and `netnat run` refuse (exit 2) a world-writable file and a file in a
/// world-writable directory without the sticky bit, naming the file; `run` installs nothing.
/// The same file with safe modes is accepted.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn privilege_world_writable_config_refused_with_exit_2() {
    if !require_root("privilege_world_writable_config_refused_with_exit_2") {
        return;
    }
    let t = Topology::new();
    let conf = "service pub0 port 10.99.1.80 8080 TCP 192.168.77.10 80\n";
    let safe = t.dir.file("safe");
    fs::create_dir(&safe).unwrap();
    fs::set_permissions(&safe, fs::Permissions::from_mode(0o755)).unwrap();
    let open = t.dir.file("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let ww = safe.join("world-writable.conf");
    fs::write(&ww, conf).unwrap();
    fs::set_permissions(&ww, fs::Permissions::from_mode(0o666)).unwrap();
    let in_open = open.join("netnat.conf");
    fs::write(&in_open, conf).unwrap();
    fs::set_permissions(&in_open, fs::Permissions::from_mode(0o644)).unwrap();

    let ctl_path = t.dir.file("ctl.sock");
    let cases: [(&Path, &str); 2] = [
        (&ww, "is world-writable (mode 0666)"),
        (
            &in_open,
            "world-writable without the sticky bit (mode 0777)",
        ),
    ];
    for (path, why) in cases {
        let p = path.to_str().unwrap();
        for cmd in ["check", "run"] {
            let mut argv = vec![BIN, cmd, "--config", p];
            if cmd == "run" {
                argv.extend_from_slice(&["--log-stderr", "--control"]);
                argv.push(ctl_path.to_str().unwrap());
            }
            let out = t.rtr.run_timeout(&argv, Duration::from_secs(20));
            assert_eq!(
                out.status.and_then(|s| s.code()),
                Some(2),
                "`netnat {cmd}` did not exit 2 for {p}\n{out}"
            );
            assert!(
                out.stderr
                    .contains(&format!("{p}: refusing the configuration file {p}"))
                    && out.stderr.contains(why),
                "`netnat {cmd}`: the message does not name {p} and say why ({why})\n{out}"
            );
            assert!(!out.stderr.contains("ready"), "{out}");
            eprintln!("netnat {cmd}: {}", out.stderr.trim());
        }
        let tables = t.rtr.must(&["nft", "list", "tables"]);
        assert!(
            !tables.contains("netnat"),
            "a refused configuration installed a table:\n{tables}"
        );
        assert!(!ctl_path.exists(), "control socket bound");
    }

    // Fixed: o-w on the file, the file moved to the safe directory. Both accepted by `check`
    // (its system part may still complain: only the configuration part is judged here).
    fs::set_permissions(&ww, fs::Permissions::from_mode(0o644)).unwrap();
    let moved = safe.join("moved.conf");
    fs::rename(&in_open, &moved).unwrap();
    for path in [&ww, &moved] {
        let p = path.to_str().unwrap();
        let out = t.rtr.run(&[BIN, "check", "--config", p]);
        assert!(
            out.stdout.contains(&format!("{p}: 1 services, no errors")),
            "`netnat check` refused a safe file {p}\n{out}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// CAP_NET_ADMIN only

/// Capability names of the bounding set of this system, from capsh itself.
fn all_caps() -> Vec<String> {
    let mut c = Command::new("capsh");
    c.arg("--print");
    let out = run_bounded(c, Duration::from_secs(10));
    assert!(out.success(), "capsh --print failed\n{out}");
    let line = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Bounding set ="))
        .unwrap_or_else(|| panic!("no bounding set in capsh --print\n{out}"));
    line.split(',').map(|s| s.trim().to_string()).collect()
}

/// The capsh arguments that leave CAP_NET_ADMIN alone in every set. As root: the bounding set
/// is cut to CAP_NET_ADMIN, so the exec'd netnat (uid 0, no file capabilities) gets exactly
/// that, as under the systemd unit (CapabilityBoundingSet=CAP_NET_ADMIN). As nobody: the uid
/// changes with the permitted set kept, CAP_NET_ADMIN goes into the ambient set (which survives
/// exec for a non-root uid) and the helpers needed for the switch are dropped last.
fn capsh_args(as_nobody: bool) -> Vec<String> {
    let keep: &[&str] = if as_nobody {
        &["cap_net_admin", "cap_setuid", "cap_setgid", "cap_setpcap"]
    } else {
        &["cap_net_admin"]
    };
    let drop: Vec<String> = all_caps()
        .into_iter()
        .filter(|c| !keep.contains(&c.as_str()))
        .collect();
    let mut a = vec![format!("--drop={}", drop.join(","))];
    if as_nobody {
        a.extend([
            "--caps=cap_net_admin,cap_setuid,cap_setgid,cap_setpcap+eip".to_string(),
            "--keep=1".to_string(),
            "--user=nobody".to_string(),
            "--addamb=cap_net_admin".to_string(),
            "--drop=cap_setuid,cap_setgid,cap_setpcap".to_string(),
        ]);
    } else {
        a.push("--caps=cap_net_admin+eip".to_string());
    }
    a
}

/// Fields of /proc/PID/status.
fn proc_status(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// The control client as uid/gid 65534 without groups.
fn ctl_as_nobody(ctl: &Path, args: &[&str]) -> CmdOutput {
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
    .arg(ctl);
    run_bounded(c, Duration::from_secs(20))
}

fn ctl_as_root(ctl: &Path, args: &[&str]) -> CmdOutput {
    let mut c = Command::new(BIN);
    c.args(args).arg("--control").arg(ctl);
    run_bounded(c, Duration::from_secs(20))
}

/// netnat under capsh with CAP_NET_ADMIN only: ready, its own capability sets are CAP_NET_ADMIN
/// and nothing else, it proxies HTTP (curl) and UDP end to end, answers `status` to root and
/// refuses a non-root peer (exit 4), and on SIGTERM exits 0 with its table removed.
fn scenario_net_admin_only(name: &str, as_nobody: bool) {
    if !require_root(name) {
        return;
    }
    let t = Topology::new();
    let case = Case::new(Translator::Netnat, Family::V4, AppAddr::Fixed);
    let servers = Servers::start(&t, case.fam);
    let config = t.dir.file("netnat.conf");
    fs::write(&config, case.netnat_config()).unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
    // The control socket's directory belongs to the daemon's user (netnat creates it 0700
    // when missing; a non-root daemon could not create it in the root-owned temp dir).
    let ctl_dir = t.dir.file("ctl");
    fs::create_dir(&ctl_dir).unwrap();
    if as_nobody {
        std::os::unix::fs::chown(&ctl_dir, Some(65534), Some(65534)).unwrap();
    }
    fs::set_permissions(&ctl_dir, fs::Permissions::from_mode(0o755)).unwrap();
    let ctl = ctl_dir.join("control.sock");

    let mut argv: Vec<String> = vec!["capsh".into()];
    argv.extend(capsh_args(as_nobody));
    // capsh runs bash with what follows `--`; bash execs netnat, so the pid stays the same.
    argv.extend(
        [
            "--",
            "-c",
            "exec \"$0\" \"$@\"",
            BIN,
            "run",
            "--config",
            config.to_str().unwrap(),
            "--log-stderr",
            "--control",
            ctl.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut proc: Proc = t.spawn(&t.rtr, "netnat-capped", &refs);
    if let Err(e) = proc.wait_stderr("ready", Duration::from_secs(20)) {
        panic!("{name}: netnat with CAP_NET_ADMIN only did not start: {e}");
    }

    // The process that runs now is netnat itself (ip netns exec, capsh and bash all exec).
    let pid = proc.pid();
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "netnat", "{name}: pid {pid} is not netnat");
    let status = proc_status(pid);
    for key in ["CapPrm:", "CapEff:", "CapBnd:"] {
        assert_eq!(
            status_field(&status, key),
            NET_ADMIN_ONLY,
            "{name}: {key} of netnat is not CAP_NET_ADMIN only\n{status}"
        );
    }
    let uid = status_field(&status, "Uid:");
    let want_uid = if as_nobody { "65534" } else { "0" };
    assert!(
        uid.split_whitespace().all(|u| u == want_uid),
        "{name}: netnat runs with uids {uid:?}, expected {want_uid} throughout"
    );
    eprintln!(
        "{name}: netnat pid {pid} uid {want_uid} CapPrm/CapEff/CapBnd {NET_ADMIN_ONLY} \
         CapAmb {} CapInh {}",
        status_field(&status, "CapAmb:"),
        status_field(&status, "CapInh:")
    );

    let active = Active::Netnat(Netnat {
        proc,
        config: config.clone(),
        control: ctl.clone(),
    });
    assert_http_ok(&t, case, &servers, &active);
    assert_udp_ok(&t, case, &servers, &active);
    active.assert_queue_used(&t, name);

    let st = ctl_as_root(&ctl, &["status"]);
    assert!(
        st.success() && st.stdout.contains("8080"),
        "{name}: status as root\n{st}"
    );
    let denied = ctl_as_nobody(&ctl, &["status"]);
    assert_eq!(
        denied.status.and_then(|s| s.code()),
        Some(4),
        "{name}: a non-root peer was not refused\n{denied}"
    );
    assert!(
        denied
            .stderr
            .contains("only root may control netnat (you are uid 65534)"),
        "{name}: {denied}"
    );

    let Active::Netnat(mut n) = active else {
        unreachable!()
    };
    let started = Instant::now();
    let exit = n.terminate(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| s.success()),
        "{name}: netnat did not exit 0 on SIGTERM ({exit:?})\n{}",
        n.proc.evidence()
    );
    if let Err(left) = wait_table_gone(&t, Duration::from_secs(2)) {
        panic!("{name}: the table is left after SIGTERM\n{left}");
    }
    assert!(!ctl.exists(), "{name}: control socket left behind");
    eprintln!("{name}: SIGTERM to table gone in {:?}", started.elapsed());
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn privilege_net_admin_only_as_root_bounding_set() {
    scenario_net_admin_only("privilege_net_admin_only_as_root_bounding_set", false);
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn privilege_net_admin_only_as_nobody_ambient() {
    scenario_net_admin_only("privilege_net_admin_only_as_nobody_ambient", true);
}
