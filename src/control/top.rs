//! `netnat top`: a live view of the running daemon, refreshed every interval (1 s by default).
//!
//! A thin layer over the control socket: each refresh asks for `status prometheus` (the
//! metrics of [`crate::control::metrics`], the same report `netnat status` prints) and shows the
//! difference to the previous one as rates: per service new connections/s, packets/s and
//! bytes/s each way and drops/s, sorted by activity; a header with the queue's figures.
//!
//! On a terminal it redraws the screen in place (fitted to its size, 80×24 and up, rows that
//! do not fit are counted in the last line) and quits on `q` (or Ctrl-C); the terminal is put
//! in non-canonical, no-echo mode for single keys and restored on every way out. When stdout
//! is not a terminal it prints one block per interval, `--count` blocks (default 1 there),
//! for scripts and logs.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::control::status::duration;
use crate::control::{self, Format, Outcome, Request};

/// How `netnat top` runs.
pub struct TopOptions<'a> {
    pub control: &'a Path,
    pub interval: Duration,
    /// Refreshes shown before it returns; `None`: until `q` (terminal) or 1 (not a terminal).
    pub count: Option<u64>,
}

/// A failure: the exit status and the message (empty: nothing to say, e.g. stdout closed).
#[derive(Debug)]
pub struct TopError {
    pub code: u8,
    pub message: String,
}

/// One service as a refresh saw it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Svc {
    /// The canonical line: what matches a service across refreshes (ids move on changes).
    pub line: String,
    pub iface: String,
    pub protocol: String,
    /// As configured: `*:80` or `address:port`.
    pub apparent: String,
    pub state: String,
    /// What `*` resolves to now.
    pub address: Option<String>,
    pub in_packets: u64,
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
    pub new_connections: u64,
    pub drops: u64,
}

/// One refresh: the daemon-wide figures (unlabelled samples by name) and the services.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub global: HashMap<String, u64>,
    pub services: Vec<Svc>,
}

impl Snapshot {
    fn get(&self, name: &str) -> u64 {
        self.global.get(name).copied().unwrap_or(0)
    }

    /// Reads the metrics text of [`crate::control::metrics::render`].
    pub fn parse(text: &str) -> Snapshot {
        let mut snap = Snapshot::default();
        let mut by_id: HashMap<String, usize> = HashMap::new();
        let samples: Vec<Sample<'_>> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(sample)
            .collect();
        for (name, labels, v) in &samples {
            let label = |k: &str| {
                labels
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            if labels.is_empty() {
                snap.global.insert((*name).to_string(), *v);
            } else if *name == "netnat_reloads_total" {
                snap.global
                    .insert(format!("netnat_reloads_total_{}", label("result")), *v);
            } else if *name == "netnat_service_info" {
                by_id.insert(label("id"), snap.services.len());
                snap.services.push(Svc {
                    line: label("service"),
                    iface: label("iface"),
                    protocol: label("protocol"),
                    apparent: label("apparent"),
                    state: label("state"),
                    ..Svc::default()
                });
            }
        }
        for (name, labels, v) in samples {
            let Some(id) = labels.iter().find(|(k, _)| k == "id").map(|(_, v)| v) else {
                continue;
            };
            let Some(s) = by_id.get(id).and_then(|&i| snap.services.get_mut(i)) else {
                continue;
            };
            match name {
                "netnat_service_in_packets_total" => s.in_packets = v,
                "netnat_service_in_bytes_total" => s.in_bytes = v,
                "netnat_service_out_packets_total" => s.out_packets = v,
                "netnat_service_out_bytes_total" => s.out_bytes = v,
                "netnat_service_new_connections_total" => s.new_connections = v,
                "netnat_service_drops_total" => s.drops += v,
                "netnat_service_apparent_address" => {
                    s.address = labels
                        .iter()
                        .find(|(k, _)| k == "address")
                        .map(|(_, v)| v.clone())
                }
                _ => {}
            }
        }
        snap
    }
}

/// A sample's name, labels (name, value) and value.
type Sample<'a> = (&'a str, Vec<(String, String)>, u64);

/// `name{k="v",...} value` → its parts; label values unescaped.
fn sample(line: &str) -> Option<Sample<'_>> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = value.parse::<u64>().ok()?;
    let Some((name, rest)) = head.split_once('{') else {
        return Some((head, Vec::new(), value));
    };
    let mut labels = Vec::new();
    let mut chars = rest.chars();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() || key == "}" {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut v = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => v.push('\n'),
                    c => v.push(c),
                },
                '"' => break,
                c => v.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').to_string(), v));
    }
    Some((name, labels, value))
}

/// A rate in a 6-column field: `0`, `950`, `12.3k`, `4.5M`, `1.2G`.
fn human(rate: f64) -> String {
    let r = rate.max(0.0);
    if r < 9999.5 {
        if r > 0.0 && r < 10.0 && r.fract() != 0.0 {
            format!("{r:.1}")
        } else {
            format!("{r:.0}")
        }
    } else if r < 999_950.0 {
        format!("{:.1}k", r / 1e3)
    } else if r < 999_950_000.0 {
        format!("{:.1}M", r / 1e6)
    } else {
        format!("{:.1}G", r / 1e9)
    }
}

/// Cuts `s` to `n` characters (with `~` as the last one when cut).
fn fit(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut o: String = s.chars().take(n.saturating_sub(1)).collect();
        o.push('~');
        o
    }
}

/// The lines of one view: `cur` against `prev`, `secs` apart, in a `width` × `height` screen
/// (`height` `None`: all rows, for the plain print).
pub fn render(
    prev: &Snapshot,
    cur: &Snapshot,
    secs: f64,
    width: usize,
    height: Option<usize>,
) -> Vec<String> {
    let secs = if secs > 0.0 { secs } else { 1.0 };
    let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
    let g = |name: &str| rate(cur.get(name), prev.get(name));
    let mut lines = vec![
        format!(
            "netnat top: {} service{}, queue {} ({} thread{}), up {}, reloads {} ok {} no",
            cur.services.len(),
            if cur.services.len() == 1 { "" } else { "s" },
            cur.get("netnat_queue_first"),
            cur.get("netnat_queue_threads"),
            if cur.get("netnat_queue_threads") == 1 {
                ""
            } else {
                "s"
            },
            duration(cur.get("netnat_uptime_seconds")),
            cur.get("netnat_reloads_total_ok"),
            cur.get("netnat_reloads_total_refused"),
        ),
        format!(
            "queue: {} pkt/s in, {} verdicts/s, ENOBUFS {} ({}/s), failed closed {}, lost {}",
            human(g("netnat_queue_received_total")),
            human(g("netnat_queue_verdicts_total")),
            cur.get("netnat_queue_enobufs_total"),
            human(g("netnat_queue_enobufs_total")),
            cur.get("netnat_queue_failed_closed_total")
                + cur.get("netnat_queue_send_failed_dropped_total"),
            cur.get("netnat_queue_verdicts_lost_total"),
        ),
        String::new(),
        format!(
            "{:<22} {:<15} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
            "SERVICE", "ADDRESS", "CONN/s", "INp/s", "INB/s", "OUTp/s", "OUTB/s", "DROP/s"
        ),
    ];
    let before: HashMap<&str, &Svc> = prev.services.iter().map(|s| (s.line.as_str(), s)).collect();
    let zero = Svc::default();
    let mut rows: Vec<(f64, f64, &Svc, [f64; 6])> = cur
        .services
        .iter()
        .map(|s| {
            // A service new since the last refresh counts from zero.
            let p = before.get(s.line.as_str()).copied().unwrap_or(&zero);
            let r = [
                rate(s.new_connections, p.new_connections),
                rate(s.in_packets, p.in_packets),
                rate(s.in_bytes, p.in_bytes),
                rate(s.out_packets, p.out_packets),
                rate(s.out_bytes, p.out_bytes),
                rate(s.drops, p.drops),
            ];
            (r[1] + r[3] + r[5], r[0], s, r)
        })
        .collect();
    // Busiest first (packets, then new connections); ties in configuration order.
    rows.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal))
    });
    let room = height.map_or(usize::MAX, |h| h.saturating_sub(lines.len() + 1));
    let shown = if rows.len() > room {
        room.saturating_sub(1)
    } else {
        rows.len()
    };
    for (_, _, s, r) in &rows[..shown] {
        let address = match s.state.as_str() {
            "active" | "draining" if s.apparent.starts_with('*') => {
                let a = s.address.clone().unwrap_or_default();
                if s.state == "draining" {
                    format!("{a} (drain)")
                } else {
                    a
                }
            }
            "active" => "-".to_string(),
            other => other.to_string(),
        };
        let name = format!("{} {} {}", s.iface, s.protocol, s.apparent);
        lines.push(format!(
            "{:<22} {:<15} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
            fit(&name, 22),
            fit(&address, 15),
            human(r[0]),
            human(r[1]),
            human(r[2]),
            human(r[3]),
            human(r[4]),
            human(r[5]),
        ));
    }
    if shown < rows.len() {
        lines.push(format!(
            "... {} more services (a larger terminal shows them)",
            rows.len() - shown
        ));
    }
    if height.is_some() {
        while lines.len() + 1 < height.unwrap_or(0) {
            lines.push(String::new());
        }
        lines.push("q quits; sorted by packets/s".to_string());
    }
    lines.into_iter().map(|l| fit(&l, width)).collect()
}

fn fetch(path: &Path) -> Result<Snapshot, TopError> {
    let req = Request::Status {
        format: Format::Prometheus,
    };
    match control::request(path, &req, Duration::from_secs(5)) {
        Ok(r) if r.outcome == Outcome::Ok => Ok(Snapshot::parse(&r.body)),
        Ok(r) => Err(TopError {
            code: r.outcome.exit_code(),
            message: r.body.trim_end().to_string(),
        }),
        Err(e) => Err(TopError {
            code: e.exit_code(),
            message: e.to_string(),
        }),
    }
}

fn write_out(out: &mut impl Write, text: &str) -> Result<(), TopError> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| TopError {
            // A closed pipe (`| head`) ends the view quietly, as the other commands do.
            code: if e.kind() == io::ErrorKind::BrokenPipe {
                141
            } else {
                1
            },
            message: if e.kind() == io::ErrorKind::BrokenPipe {
                String::new()
            } else {
                format!("writing to stdout: {e}")
            },
        })
}

/// Runs the view until `q`, Ctrl-C or `count` refreshes.
pub fn run(opts: &TopOptions<'_>) -> Result<(), TopError> {
    let tty = io::stdout().is_terminal() && io::stdin().is_terminal();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| TopError {
            code: 1,
            message: format!("registering signals: {e}"),
        })?;
    }
    let mut prev = fetch(opts.control)?;
    let mut prev_at = Instant::now();
    let count = opts.count.unwrap_or(if tty { u64::MAX } else { 1 });
    let mut out = io::stdout().lock();
    let _raw = if tty { Some(RawMode::enter()) } else { None };
    if tty {
        // Cursor hidden while the view runs (shown again by RawMode's drop).
        write_out(&mut out, "\x1b[?25l\x1b[H\x1b[2J")?;
    }
    let mut shown = 0;
    while shown < count {
        let quit = if tty {
            wait_key(opts.interval, &stop)
        } else {
            sleep_unless(opts.interval, &stop)
        };
        if quit || stop.load(Ordering::Relaxed) {
            break;
        }
        let cur = fetch(opts.control)?;
        let now = Instant::now();
        let secs = now.duration_since(prev_at).as_secs_f64();
        if tty {
            let (w, h) = terminal_size();
            let lines = render(&prev, &cur, secs, w, Some(h));
            let mut screen = String::from("\x1b[H");
            for (i, l) in lines.iter().enumerate() {
                // Clear to the end of each line: a shorter line leaves nothing behind.
                let _ = write!(
                    screen,
                    "{l}\x1b[K{}",
                    if i + 1 < lines.len() { "\r\n" } else { "" }
                );
            }
            screen.push_str("\x1b[J");
            write_out(&mut out, &screen)?;
        } else {
            let mut block = render(&prev, &cur, secs, 80, None).join("\n");
            block.push_str("\n\n");
            write_out(&mut out, &block)?;
        }
        prev = cur;
        prev_at = now;
        shown += 1;
    }
    if tty {
        write_out(&mut out, "\x1b[?25h\r\n")?;
    }
    Ok(())
}

/// Sleeps `d` in short steps so that a signal ends it early; true when it did.
fn sleep_unless(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    false
}

/// Waits `d` for keys on stdin; true on `q`/`Q` (or end of input).
fn wait_key(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || stop.load(Ordering::Relaxed) {
            return false;
        }
        let mut fd = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, 100) as libc::c_int;
        // SAFETY: one valid pollfd for the call.
        let n = unsafe { libc::poll(&mut fd, 1, ms) };
        if n > 0 {
            let mut buf = [0u8; 64];
            // SAFETY: reads at most buf.len() bytes into buf.
            let got = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
            if got <= 0 || buf[..got as usize].iter().any(|&b| b == b'q' || b == b'Q') {
                return true;
            }
        }
    }
}

/// Columns and rows of the terminal on stdout; 80×24 when it does not say.
fn terminal_size() -> (usize, usize) {
    // SAFETY: winsize is plain data; TIOCGWINSZ writes one into it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a winsize for the ioctl.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_col > 0 && ws.ws_row > 0 {
        (usize::from(ws.ws_col), usize::from(ws.ws_row))
    } else {
        (80, 24)
    }
}

/// The terminal in non-canonical, no-echo mode (keys arrive one by one, unshown); Ctrl-C still
/// raises SIGINT. Restored when dropped, whichever way the view ends.
struct RawMode {
    saved: Option<libc::termios>,
}

impl RawMode {
    fn enter() -> RawMode {
        // SAFETY: termios is plain data, filled by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer for tcgetattr on stdin.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return RawMode { saved: None };
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: valid termios for tcsetattr on stdin.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            // SAFETY: restores the termios read at enter.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
        }
        let _ = io::stdout().write_all(b"\x1b[?25h");
        let _ = io::stdout().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::status::tests::report;

    #[test]
    fn parses_the_metrics_of_a_report() {
        let snap = Snapshot::parse(&crate::control::metrics::render(&report()));
        assert_eq!(snap.get("netnat_queue_received_total"), 5);
        assert_eq!(snap.get("netnat_queue_first"), 4747);
        assert_eq!(snap.services.len(), 2);
        let s = &snap.services[0];
        assert_eq!(
            s.line,
            "service pub0 port * 80 TCP 192.168.77.10 8080 0x8000"
        );
        assert_eq!(
            (s.in_packets, s.in_bytes, s.out_packets, s.out_bytes),
            (3, 180, 2, 1500)
        );
        assert_eq!((s.new_connections, s.drops), (1, 2));
        assert_eq!(s.address.as_deref(), Some("10.99.1.1"));
        assert_eq!(snap.services[1].state, "waiting");
        assert_eq!(snap.services[1].address, None);
        let (_, l, _) = sample("x{a=\"q\\\"\\\\\\n\",b=\"\"} 7").unwrap();
        assert_eq!(
            l,
            vec![("a".into(), "q\"\\\n".into()), ("b".into(), "".into())]
        );
    }

    #[test]
    fn rates_sorted_by_activity_within_80x24() {
        let r = report();
        let prev = Snapshot::parse(&crate::control::metrics::render(&r));
        let mut r2 = r.clone();
        // The waiting service (second) becomes the busier one.
        r2.services[1].counters.in_packets += 2000;
        r2.services[1].counters.in_bytes += 3_000_000;
        r2.services[0].counters.in_packets += 10;
        r2.services[0].counters.new_connections += 4;
        r2.queue_stats.received += 2010;
        let cur = Snapshot::parse(&crate::control::metrics::render(&r2));
        let lines = render(&prev, &cur, 2.0, 80, Some(24));
        assert_eq!(lines.len(), 24);
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{lines:#?}");
        assert!(
            lines[0].starts_with("netnat top: 2 services, queue 4747 (1 thread)"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("queue: 1005 pkt/s in, 0 verdicts/s"),
            "{}",
            lines[1]
        );
        assert!(lines[3].starts_with("SERVICE "), "{}", lines[3]);
        // Busiest first: 1000 packets/s, 1.5 MB/s in.
        assert!(lines[4].starts_with("ppp0 TCP *:25"), "{}", lines[4]);
        assert!(
            lines[4].contains(" waiting ") && lines[4].contains("  1000   1.5M "),
            "{}",
            lines[4]
        );
        assert!(lines[5].starts_with("pub0 TCP *:80"), "{}", lines[5]);
        assert!(
            lines[5].contains("10.99.1.1") && lines[5].contains("     2      5 "),
            "{}",
            lines[5]
        );
        assert_eq!(lines[23], "q quits; sorted by packets/s");
        // A small terminal: rows that do not fit are counted.
        let small = render(&prev, &cur, 2.0, 40, Some(6));
        assert_eq!(small.len(), 6);
        assert!(small[4].starts_with("... 2 more services"), "{small:#?}");
        assert!(small.iter().all(|l| l.chars().count() <= 40));
    }

    #[test]
    fn human_rates() {
        assert_eq!(human(0.0), "0");
        assert_eq!(human(0.5), "0.5");
        assert_eq!(human(950.0), "950");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(4_500_000.0), "4.5M");
        assert_eq!(human(2e9), "2.0G");
    }
}
