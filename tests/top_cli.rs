//! `netnat top` and `netnat status --format` as a script meets them, against a fake daemon
//! (a control socket answering like netnat): the plain periodic print when stdout is not a
//! terminal, its rates, `--count`, and the formats `status --help` lists.

use std::io::{BufRead, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netnat::control::status::{Report, ServiceReport, ServiceState};
use netnat::control::{Request, Response};
use netnat::engine::stats::Counters;
use netnat::queue::QueueStats;

fn netnat(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_netnat"))
        .args(args)
        .output()
        .expect("run netnat")
}

/// The report of the `n`th request: service 0 gets 100 packets of 50 bytes in and out and one
/// new connection per request, service 1 nothing.
fn report(n: u64) -> Report {
    let busy = Counters {
        in_packets: 100 * n,
        in_bytes: 5000 * n,
        out_packets: 100 * n,
        out_bytes: 5000 * n,
        new_connections: n,
        ..Counters::default()
    };
    Report {
        queue: 4747,
        queues: 2,
        expression: "native".into(),
        uptime_secs: 60 + n,
        queue_stats: QueueStats {
            received: 200 * n,
            verdicts: 200 * n,
            ..QueueStats::default()
        },
        unattributed: [0; 4],
        passed: 0,
        log_lost: 0,
        start_unix: 1_764_658_800,
        reloads_ok: 0,
        reloads_refused: 0,
        flows_refused: Default::default(),
        offload: None,
        services: vec![
            ServiceReport {
                line: "service pub0 port 10.99.1.80 53 UDP 192.168.77.10 53 0x0000".into(),
                iface: "pub0".into(),
                state: ServiceState::Active {
                    apparent: "10.99.1.80:53".parse().unwrap(),
                },
                counters: Counters::default(),
            },
            ServiceReport {
                line: "service pub0 port * 80 TCP 192.168.77.10 8080 0x0000".into(),
                iface: "pub0".into(),
                state: ServiceState::Active {
                    apparent: "10.99.1.1:80".parse().unwrap(),
                },
                counters: busy,
            },
        ],
    }
}

/// A control socket answering `requests` requests, the nth with `report(n)` in the format
/// asked for; the request lines are kept.
fn fake_daemon(name: &str, requests: u64) -> (PathBuf, JoinHandle<()>, Arc<Mutex<Vec<String>>>) {
    let dir = std::env::temp_dir().join(format!("netnat-top-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&seen);
    let serve = std::thread::spawn(move || {
        for n in 1..=requests {
            let (conn, _) = listener.accept().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(&conn).read_line(&mut line).unwrap();
            let body = match Request::parse(line.trim_end()) {
                Ok(Request::Status { format }) => report(n).render(format),
                other => panic!("unexpected request {other:?}"),
            };
            kept.lock().unwrap().push(line.trim_end().to_string());
            let _ = (&conn).write_all(&Response::ok(body).encode());
        }
    });
    (path, serve, seen)
}

#[test]
fn top_prints_one_block_per_interval_when_not_a_terminal() {
    let (sock, serve, seen) = fake_daemon("top.sock", 4);
    let start = Instant::now();
    let out = netnat(&[
        "top",
        "--count",
        "3",
        "--interval",
        "0.2",
        "--control",
        sock.to_str().unwrap(),
    ]);
    let took = start.elapsed();
    serve.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One fetch to start from, then one per block; 3 intervals of 0.2 s.
    assert_eq!(seen.lock().unwrap().len(), 4);
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|l| l == "status prometheus")
    );
    assert!(took >= Duration::from_millis(600), "{took:?}");
    let blocks: Vec<String> = text
        .split("netnat top: ")
        .skip(1)
        .map(|b| format!("netnat top: {b}"))
        .collect();
    assert_eq!(blocks.len(), 3, "{text}");
    for b in &blocks {
        let lines: Vec<&str> = b.lines().collect();
        assert!(
            lines[0].starts_with("netnat top: 2 services, queue 4747 (2 threads), up 00:01:0")
                && lines[0].ends_with("reloads 0 ok 0 no"),
            "{b}"
        );
        // 200 packets per ~0.2 s: about 1000/s; the exact figure depends on the timing.
        assert!(lines[1].starts_with("queue: "), "{b}");
        assert!(lines[3].starts_with("SERVICE"), "{b}");
        // Busiest first: the `*` service with its address, though it is second in the file.
        assert!(lines[4].starts_with("pub0 TCP *:80"), "{b}");
        assert!(lines[4].contains("10.99.1.1"), "{b}");
        let rate: f64 = lines[4].split_whitespace().nth(5).unwrap().parse().unwrap();
        assert!((100.0..=600.0).contains(&rate), "INp/s {rate} in {b}");
        assert!(lines[5].starts_with("pub0 UDP 10.99.1.80:53 -"), "{b}");
        assert!(
            lines[5].ends_with("     0      0      0      0      0      0"),
            "{b}"
        );
        // No terminal control sequences in the plain print.
        assert!(!b.contains('\x1b'), "{b:?}");
        assert!(lines.iter().all(|l| l.len() <= 80), "{b}");
    }
}

#[test]
fn top_without_a_daemon_exits_3() {
    let out = netnat(&["top", "--control", "/nonexistent/netnat.sock"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("netnat is not running"));
}

#[test]
fn status_formats_and_json_alias() {
    let help = String::from_utf8_lossy(&netnat(&["status", "--help"]).stdout).into_owned();
    assert!(help.contains("--format <FORMAT>"), "{help}");
    assert!(
        help.contains("text") && help.contains("json") && help.contains("prometheus"),
        "{help}"
    );
    for (args, want, first) in [
        (vec!["--json"], "status json", "{\"format\":1,"),
        (vec!["--format", "json"], "status json", "{\"format\":1,"),
        (vec!["--format", "text"], "status", "netnat: 2 services"),
        (vec![], "status", "netnat: 2 services"),
        (
            vec!["--format", "prometheus"],
            "status prometheus",
            "# HELP netnat_build_info",
        ),
    ] {
        let (sock, serve, seen) =
            fake_daemon(&format!("status-{}.sock", want.len() + args.len()), 1);
        let mut full = vec!["status"];
        full.extend(args.iter().copied());
        full.extend(["--control", sock.to_str().unwrap()]);
        let out = netnat(&full);
        serve.join().unwrap();
        assert!(out.status.success(), "{full:?}");
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            [want.to_string()],
            "{full:?}"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(first),
            "{full:?}"
        );
    }
    let bad = netnat(&["status", "--format", "yaml"]);
    assert_eq!(bad.status.code(), Some(2));
    let both = netnat(&["status", "--json", "--format", "text"]);
    assert_eq!(both.status.code(), Some(2));
}
