//! The command line as an administrator meets it: exit statuses, located errors, `rules`.

use std::process::Command;

fn netnat(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_netnat"))
        .args(args)
        .output()
        .expect("run netnat")
}

fn scratch(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("netnat-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The tests that need root are `#[ignore]`d, so that `cargo test` as a user lists them as not
/// run; scripts/test (and CI, as root) runs them with `--include-ignored`. Forced without root
/// (`--ignored` as a user) they fail here, saying why, rather than pass having done nothing.
fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(euid == 0, "{what}: needs root (uid {euid})");
}

#[test]
fn rules_output_is_the_file_in_nftables_dir() {
    let out = netnat(&["rules", "--config", "examples/netnat.conf"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::fs::read_to_string("nftables/example.nft").unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        committed,
        "nftables/example.nft is stale: regenerate it with `netnat rules --config examples/netnat.conf`"
    );
}

#[test]
fn check_accepts_the_example() {
    // The configuration is fine; the system half may find this host's forwarding off (exit 1).
    let out = netnat(&["check", "--config", "examples/netnat.conf"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    assert!(stdout.contains("6 services, no errors"), "{stdout}");
    for what in [
        "NFQUEUE:",
        "conntrack:",
        "queue number:",
        "interface: ppp0 is absent",
    ] {
        assert!(stdout.contains(what), "check reports {what}: {stdout}");
    }
}

/// `check` in a network namespace of its own: forwarding on → exit 0, off → exit 1 naming it.
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn check_judges_forwarding() {
    require_root("check_judges_forwarding: a network namespace of its own");
    let bin = env!("CARGO_BIN_EXE_netnat");
    let run = |fwd: &str| {
        let script = format!(
            "sysctl -qw net.ipv4.ip_forward={fwd} net.ipv6.conf.all.forwarding={fwd} && \
             exec {bin} check --config examples/netnat.conf"
        );
        Command::new("unshare")
            .args(["-n", "sh", "-c", &script])
            .output()
            .unwrap()
    };
    let on = run("1");
    let text = String::from_utf8_lossy(&on.stdout);
    assert_eq!(
        on.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&on.stderr)
    );
    assert!(
        text.contains("IPv4 forwarding: on") && text.contains("IPv6 forwarding: on"),
        "{text}"
    );
    let off = run("0");
    let text = String::from_utf8_lossy(&off.stdout);
    assert_eq!(off.status.code(), Some(1), "{text}");
    assert!(text.contains("error  IPv4 forwarding: off"), "{text}");
}

/// Issue 13's forms: `check` and `rules` read them, then refuse each one not installed yet at
/// its word (exit 2, nothing printed as rules) and accept the installed ones; bad forms are
/// grammar errors at their word.
#[test]
fn check_and_rules_refuse_forms_not_installed_yet() {
    let path = scratch(
        "forms.conf",
        "service pub0 port * 8000-8009 TCP 192.168.77.10 9000-9009 0x8000\n\
         service pub0 port * 6000-6009 UDP 192.168.77.10 7000\n\
         service pub0 port * 80 TCP 192.168.77.10,192.168.77.11 8080 0x8000\n\
         service pub0 port * 22 TCP 192.168.77.10 22 from 198.51.100.0/24,203.0.113.7\n\
         service pub0 port * 443 TCP 192.168.77.10 8443 0x8000 hairpin\n\
         service pub0 port * 9000-8000 TCP 192.168.77.10 80\n\
         service pub0 port * 22 TCP 192.168.77.10 22 from\n\
         service pub0 port * 23 TCP 192.168.77.10 23 from 10.0.0.0/8,fd00::/8\n\
         service pub0 port * 70-79 TCP 192.168.77.10 60-70\n",
    );
    let p = path.display();
    for command in ["check", "rules"] {
        let out = netnat(&[command, "--config", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{command}: {out:?}");
        assert!(
            out.stdout.is_empty() || command == "check",
            "{command}: {out:?}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        for want in [
            format!("{p}:2:49: a port range onto one actual port needs \"header-only off\""),
            format!("{p}:5:55: hairpin is not installed yet"),
            format!("{p}:6:21: the range 9000-8000 is reversed"),
            format!("{p}:7:49: missing field: the clients after \"from\""),
            format!("{p}:8:61: client fd00::/8 is IPv6 but the service is IPv4"),
            format!(
                "{p}:9:45: the actual range 60-70 has 11 ports but the apparent range 70-79 (10 ports)"
            ),
        ] {
            assert!(
                err.contains(&want),
                "{command}: {want} missing from:\n{err}"
            );
        }
        // The installed forms (a 1:1 range, servers, a from list) are not errors.
        for line in [":1:", ":3:", ":4:"] {
            assert!(!err.contains(&format!("{p}{line}")), "{command}: {err}");
        }
    }
}

#[test]
fn check_reports_every_error_located_and_exits_2() {
    let path = scratch(
        "bad.conf",
        "service eth0 port * 80 TCP 192.168.1.10 8080\nservice eth0 port * http TCP 10.0.0.1 80\nqueue 1\nqueue 2\n",
    );
    let out = netnat(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let p = path.display();
    assert!(
        err.contains(&format!("{p}:2:21: expected a port number")),
        "{err}"
    );
    assert!(err.contains(&format!("{p}:4:")), "{err}");
}

#[test]
fn run_with_a_bad_config_exits_2_before_touching_anything() {
    // The config is refused before any privilege is needed, so this runs as any user and
    // proves that nothing was attempted: the error is the config's, not a netlink one.
    let path = scratch("bad-run.conf", "service eth0 port * 80 SCTP 10.0.0.1 80\n");
    let out = netnat(&["run", "--config", path.to_str().unwrap(), "--log-stderr"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown protocol \"SCTP\""), "{err}");
    assert!(!err.contains("netlink") && !err.contains("queue"), "{err}");
}

#[test]
fn missing_config_is_a_clear_error() {
    let out = netnat(&["check", "--config", "/nonexistent/netnat.conf"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/netnat.conf") && err.contains("file not found"),
        "{err}"
    );
}

#[test]
fn help_names_every_subcommand() {
    let out = netnat(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in ["run", "check", "rules", "flush"] {
        assert!(help.contains(sub), "--help lacks {sub}: {help}");
    }
}

/// Without CAP_NET_ADMIN, `run` refuses with a message that says what is missing, and exit 1.
/// Runs in a network namespace of its own (`unshare -n`), as nobody (`setpriv`).
#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn run_without_cap_net_admin_is_refused_clearly() {
    require_root("run_without_cap_net_admin_is_refused_clearly: becoming nobody");
    let path = scratch(
        "nocap.conf",
        "service pub0 port * 80 TCP 192.168.1.10 8080\n",
    );
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::set_permissions(
        path.parent().unwrap(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new("unshare")
        .args([
            "-n",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_netnat"))
        .args(["run", "--log-stderr", "--config"])
        .arg(&path)
        .output()
        .expect("unshare/setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("CAP_NET_ADMIN"), "{err}");
}

/// `queue 0` is valid (netnat.conf(5)): `rules` and `check` once panicked on it (an overflow in
/// the queue range). A range past 65535 is refused at the `queues` value, located.
#[test]
fn queue_zero_works_and_a_range_past_65535_is_located() {
    let svc = "service pub0 port * 80 TCP 192.168.1.10 8080\n";
    let zero = scratch("queue0.conf", &format!("queue 0\nqueues 64\n{svc}"));
    let out = netnat(&["rules", "--config", zero.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("queue num 0-63 fanout"), "{stdout}");
    let auto = scratch("queue0-auto.conf", &format!("queue 0\n{svc}"));
    for cmd in ["rules", "check"] {
        let out = netnat(&[cmd, "--config", auto.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // check may find this host unfit (exit 1), but never panics (101).
        assert!(matches!(out.status.code(), Some(0 | 1)), "{cmd}: {stderr}");
        assert!(!stderr.contains("panicked"), "{cmd}: {stderr}");
    }
    let past = scratch("queue-past.conf", &format!("queue 65500\nqueues 64\n{svc}"));
    let out = netnat(&["check", "--config", past.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:2:8: 64 queues from queue 65500",
            past.display()
        )),
        "{stderr}"
    );
}

/// Runs netnat with stdout on a pipe whose reader is gone, as `netnat rules | head -1` leaves it
/// once head has exited.
fn into_closed_pipe(args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_netnat"))
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run netnat")
}

/// A control socket that answers one request with `body`, as the daemon would: enough for the
/// client commands, which only print what comes back.
fn fake_daemon(name: &str, body: String) -> (std::path::PathBuf, std::thread::JoinHandle<()>) {
    use std::io::{BufRead, Write};
    let path = scratch(name, "");
    std::fs::remove_file(&path).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let serve = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&conn).read_line(&mut line).unwrap();
        (&conn)
            .write_all(&netnat::control::Response::ok(body).encode())
            .unwrap();
    });
    (path, serve)
}

/// A closed stdout ends the command quietly with 141 (what a shell shows for SIGPIPE, as for
/// `nft list ruleset | head -1`), never a panic with exit 101 and a backtrace.
#[test]
fn a_closed_stdout_ends_quietly_with_141() {
    let conf = scratch(
        "pipe.conf",
        "service pub0 port * 80 TCP 192.168.1.10 8080\n",
    );
    let conf = conf.to_str().unwrap();
    let mut runs: Vec<(String, std::process::Output)> = Vec::new();
    for args in [
        vec!["rules", "--config", conf],
        vec!["check", "--config", conf],
        vec!["--help"],
        vec!["--version"],
        vec!["rules", "--help"],
    ] {
        runs.push((args.join(" "), into_closed_pipe(&args)));
    }
    let listing: String = (0..200)
        .map(|i| {
            format!(
                "service pub0 port * {} TCP 192.168.1.10 8080 0x0000\n",
                i + 1
            )
        })
        .collect();
    for (cmd, args) in [
        ("status", vec!["status"]),
        ("service list", vec!["service", "list"]),
    ] {
        let (socket, serve) =
            fake_daemon(&format!("{}.sock", cmd.replace(' ', "-")), listing.clone());
        let mut full = args.clone();
        full.extend(["--control", socket.to_str().unwrap()]);
        runs.push((cmd.to_owned(), into_closed_pipe(&full)));
        serve.join().unwrap();
    }
    for (cmd, out) in runs {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "netnat {cmd}: {stderr}");
        assert!(stderr.is_empty(), "netnat {cmd}: {stderr}");
    }
}
