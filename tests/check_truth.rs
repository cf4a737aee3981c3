//! `netnat check` tells the truth (issue 15): it fails (exit 1) wherever `netnat run` fails —
//! a queue another process holds, no CAP_NET_ADMIN — says when it cannot know, and warns
//! about the services run leaves out or that cannot work with exactly run's words.
//!
//! Everything runs in the router namespace of a [`Topology`] (forwarding on there), so that
//! the host's own settings do not decide the exit status and the busy queue is the test's.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::scenario::netnat_bin;
use common::{CmdOutput, Topology, require_root};

const QUEUE: u16 = 4853;

/// Services run accepts but leaves out or cannot make work, on the router's pub0
/// (10.99.1.1, 10.99.1.80, fd99:1::1).
fn config() -> String {
    format!(
        "queue {QUEUE}\n\
         service pub0 port * 80 TCP 192.168.77.10 80\n\
         # the interface's own address on the port `*` already holds: run drops it\n\
         service pub0 port 10.99.1.1 80 TCP 192.168.77.10 81\n\
         service pub0 port * 82 TCP 127.0.0.1 8082\n\
         service pub0 port fe80::1 83 TCP fd99:77::10 83\n\
         service pub0 port 10.99.1.80 84 TCP 10.99.1.80 84\n"
    )
}

fn check(t: &Topology, conf: &str, as_nobody: bool) -> CmdOutput {
    let mut argv = Vec::new();
    if as_nobody {
        argv.extend([
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
        ]);
    }
    argv.extend([netnat_bin(), "check", "--config", conf]);
    t.rtr.run(&argv)
}

fn code(out: &CmdOutput) -> Option<i32> {
    out.status.and_then(|s| s.code())
}

/// The detail of every `warning  service:` finding of a check.
fn service_warnings(out: &CmdOutput) -> Vec<String> {
    out.stdout
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("warning  service: "))
        .map(String::from)
        .collect()
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn check_fails_where_run_fails_and_warns_in_runs_words() {
    if !require_root("check_fails_where_run_fails_and_warns_in_runs_words") {
        return;
    }
    let t = Topology::new();
    // nobody must be able to read the file.
    fs::set_permissions(&t.dir.path, fs::Permissions::from_mode(0o755)).unwrap();
    let conf = t.dir.file("netnat.conf");
    fs::write(&conf, config()).unwrap();
    fs::set_permissions(&conf, fs::Permissions::from_mode(0o644)).unwrap();
    let conf_s = conf.to_str().unwrap();

    // Before the daemon: the system is fit, the services only warrant warnings.
    let before = check(&t, conf_s, false);
    assert_eq!(code(&before), Some(0), "{before}");
    assert!(
        before.stdout.contains(&format!("queues {QUEUE}-")) && before.stdout.contains("free"),
        "{before}"
    );
    let warned = service_warnings(&before);
    assert_eq!(
        warned.len(),
        4,
        "one warning per doubtful service\n{before}"
    );
    for (line, words) in [
        (
            4,
            "service left out, its apparent endpoint is taken by service pub0 port * 80 TCP",
        ),
        (5, "the actual address 127.0.0.1 is a loopback address"),
        (6, "the apparent address fe80::1 is link-local"),
        (7, "the actual endpoint is the apparent one (10.99.1.80:84)"),
    ] {
        let want = format!("{conf_s}:{line}: {words}");
        assert!(
            warned.iter().any(|w| w.starts_with(&want)),
            "missing {want:?}\n{before}"
        );
    }

    // As nobody: run would be refused, and the queue cannot be known.
    let nobody = check(&t, conf_s, true);
    assert_eq!(code(&nobody), Some(1), "{nobody}");
    assert!(
        nobody
            .stdout
            .contains("error  privilege: no CAP_NET_ADMIN: `netnat run` would be refused"),
        "{nobody}"
    );

    // run logs the very same warnings.
    let ctl = t.dir.file("control.sock");
    let mut daemon = t.spawn(
        &t.rtr,
        "netnat",
        &[
            netnat_bin(),
            "run",
            "--config",
            conf_s,
            "--log-stderr",
            "--control",
            ctl.to_str().unwrap(),
        ],
    );
    daemon
        .wait_stderr("ready", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("netnat did not start: {e}"));
    let logged = daemon.stderr();
    for w in &warned {
        assert!(
            logged.contains(&format!("netnat: warning: {w}\n")),
            "run does not log check's warning {w:?}\n{}",
            daemon.evidence()
        );
    }

    // With the queue held by the daemon: exit 1, as root and as nobody (who cannot see it).
    let busy = check(&t, conf_s, false);
    assert_eq!(code(&busy), Some(1), "{busy}");
    assert!(
        busy.stdout.contains("error  queue number: queue ")
            && busy.stdout.contains(&format!("(of queues {QUEUE}-")),
        "{busy}"
    );
    assert!(
        busy.stdout.contains("`netnat run` would be refused"),
        "{busy}"
    );
    let nobody = check(&t, conf_s, true);
    assert_eq!(code(&nobody), Some(1), "{nobody}");
    let queue_line = nobody
        .stdout
        .lines()
        .find(|l| l.contains("queue number:"))
        .unwrap_or_else(|| panic!("no queue finding\n{nobody}"))
        .to_string();
    assert!(
        queue_line.contains("unknown") && !queue_line.contains("free"),
        "{queue_line}"
    );

    // And run itself fails on the busy queue, as check said.
    let second = t.rtr.run(&[
        netnat_bin(),
        "run",
        "--config",
        conf_s,
        "--log-stderr",
        "--control",
        t.dir.file("second.sock").to_str().unwrap(),
    ]);
    assert_eq!(code(&second), Some(1), "{second}");

    daemon.signal(libc::SIGTERM);
    let st = daemon.wait_timeout(Duration::from_secs(10));
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", daemon.evidence());
}
