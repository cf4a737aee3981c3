//! `netnat top` in a real terminal (tmux, 80×24) on a running netnat under traffic (issue 14):
//! the header and a packet rate that changes with the traffic are on the screen, `q` quits,
//! and the terminal's modes (canonical input, echo) are restored afterwards.
//!
//! tmux runs with a server of its own (`-S` socket in the test's directory), so no tmux of the
//! host is touched; the pane's shell enters the router namespace, where netnat runs.

mod common;

use std::time::{Duration, Instant};

use common::scenario::{Netnat, netnat_bin};
use common::{CmdOutput, PYTHON, Topology, require_root, run_bounded, script};

fn tmux(sock: &str, args: &[&str]) -> CmdOutput {
    let mut c = std::process::Command::new("tmux");
    c.args(["-S", sock]).args(args);
    run_bounded(c, Duration::from_secs(10))
}

/// The screen, or an empty string once the session is gone.
fn screen(sock: &str) -> String {
    tmux(sock, &["capture-pane", "-p", "-t", "top"]).stdout
}

/// The INp/s figure of the `pub0 UDP *:5300` row on the screen.
fn rate(screen: &str) -> Option<u64> {
    let row = screen.lines().find(|l| l.starts_with("pub0 UDP *:5300"))?;
    row.split_whitespace().nth(5)?.parse().ok()
}

#[test]
#[ignore = "needs root: run scripts/test, or cargo test -- --include-ignored as root"]
fn top_in_tmux_shows_changing_rates_and_quits_on_q() {
    if !require_root("top_in_tmux_shows_changing_rates_and_quits_on_q") {
        return;
    }
    let t = Topology::new();
    let n = Netnat::start(
        &t,
        "queue 4865\nqueues 1\nservice pub0 port * 5300 UDP 192.168.77.10 53 0x0000\n",
        "netnat",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let _server = t.spawn(
        &t.srv,
        "udp-echo",
        &[PYTHON, &script("udp_echo.py"), "192.168.77.10", "53", "60"],
    );
    t.srv.wait_listening("udp", 53, Duration::from_secs(10));
    let sock_path = t.dir.file("tmux.sock");
    let sock = sock_path.to_str().unwrap();
    let ctl = n.config.with_extension("sock");
    let modes = t.dir.file("stty-after");
    // After top: the terminal's modes, as the shell sees them; then the pane waits, so that
    // the test reads them and ends the session itself.
    let pane = format!(
        "ip netns exec {} {} top --control {}; stty -a > {}; sleep 30",
        t.rtr.name,
        netnat_bin(),
        ctl.display(),
        modes.display()
    );
    let started = tmux(
        sock,
        &[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "80",
            "-y",
            "24",
            "sh",
            "-c",
            &pane,
        ],
    );
    assert!(started.success(), "{started}");
    // Whatever happens below, the tmux server and what runs in it end with the test.
    struct KillServer(String);
    impl Drop for KillServer {
        fn drop(&mut self) {
            let _ = tmux(&self.0, &["kill-server"]);
        }
    }
    let _kill = KillServer(sock.to_string());

    // Phase 1: slow traffic (20 packets/s), phase 2: fast (200 packets/s).
    let mut rates = Vec::new();
    let mut last = String::new();
    for (phase, interval_ms) in [("slow", "50"), ("fast", "5")] {
        let mut client = t.spawn(
            &t.cli,
            "udp-pingpong",
            &[
                PYTHON,
                &script("udp_pingpong.py"),
                "10.99.1.1",
                "5300",
                "4",
                interval_ms,
            ],
        );
        std::thread::sleep(Duration::from_millis(3200));
        last = screen(sock);
        let r = rate(&last);
        eprintln!("{phase}: INp/s {r:?}\n{last}");
        rates.push(r.unwrap_or_else(|| panic!("no rate on the screen\n{last}")));
        let _ = client.wait_timeout(Duration::from_secs(10));
    }
    let lines: Vec<&str> = last.lines().collect();
    assert!(
        lines[0].starts_with("netnat top: 1 service, queue 4865 (1 thread)"),
        "{last}"
    );
    assert!(lines[1].starts_with("queue: "), "{last}");
    assert!(lines[3].starts_with("SERVICE"), "{last}");
    assert!(
        last.contains("10.99.1.1"),
        "the apparent address of *\n{last}"
    );
    assert!(lines.iter().all(|l| l.chars().count() <= 80), "{last}");
    assert!(
        (10..=40).contains(&rates[0]) && rates[1] >= 100 && rates[1] > rates[0] * 3,
        "rates {rates:?}"
    );

    let q = tmux(sock, &["send-keys", "-t", "top", "q"]);
    assert!(q.success(), "{q}");
    let start = Instant::now();
    while !modes.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "top did not quit on q\n{}",
            screen(sock)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let stty = std::fs::read_to_string(&modes).unwrap();
    let words: Vec<&str> = stty.split_whitespace().collect();
    assert!(
        words.contains(&"icanon") && words.contains(&"echo"),
        "terminal modes not restored: {stty}"
    );
}
