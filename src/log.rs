//! Where netnat's messages go: syslog (facility and priority from the configuration) or stderr.
//!
//! Only this module formats log lines; the packet path calls it only when a service's flags ask
//! for a record (and the rate limit admits it), so nothing is formatted per packet otherwise.
//!
//! Why a thread of its own: a log sink can stall (a syslog daemon that stops reading, a stream
//! socket whose reader hangs, a stderr pipe nobody drains) or fail (EPIPE, a restarted syslog).
//! The queue threads and the main thread must never wait for it, so they only hand each line
//! to a bounded queue ([`LINE_QUEUE`] lines) and go on; when the queue is full the line is
//! counted as lost. Each queue thread logs through its own [`Logger::handle`] (a sender of the
//! same queue; the lost count is one shared atomic), so no two threads share a `Logger`. One
//! logging thread writes the lines out: to syslog through a non-blocking
//! socket with a bounded wait ([`SEND_TIMEOUT`]), reconnecting after errors with a backoff
//! (a syslog daemon that restarts gets the records again), or to stderr, whose errors are
//! counted and never panic. Once lines were lost it writes `N log lines lost` when it can.

use std::fmt::Display;
use std::io::{self, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use syslog::{Facility, Formatter3164, LogFormat, Severity};

/// Lines waiting for the logging thread, at most. At ~100 bytes a line, about 1 MiB.
pub const LINE_QUEUE: usize = 8192;
/// Longest a write to syslog may wait for room in the socket before the line is given up.
pub const SEND_TIMEOUT: Duration = Duration::from_millis(200);
/// First wait before reconnecting to syslog after an error; doubled per failure.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A connection that lived this long resets the backoff when it fails.
const HEALTHY: Duration = Duration::from_secs(30);
/// How long the logging thread gets to write what is queued when the logger is dropped.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(500);
/// Where syslog listens when no socket is configured (as the `syslog` crate looks).
const DEFAULT_SOCKETS: [&str; 3] = ["/dev/log", "/var/run/syslog", "/var/run/log"];

/// Severity of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Only as the priority of service records (`syslog-priority`): netnat's own messages
    /// are never this severe.
    Emerg,
    Alert,
    Crit,
    Err,
    Warning,
    Notice,
    Info,
    Debug,
}

impl Level {
    pub fn from_name(name: &str) -> Option<Level> {
        Some(match name {
            "emerg" => Level::Emerg,
            "alert" => Level::Alert,
            "crit" => Level::Crit,
            "err" => Level::Err,
            "warning" => Level::Warning,
            "notice" => Level::Notice,
            "info" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }

    fn tag(self) -> &'static str {
        match self {
            Level::Emerg => "emerg",
            Level::Alert => "alert",
            Level::Crit => "crit",
            Level::Err => "error",
            Level::Warning => "warning",
            Level::Notice => "notice",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    fn severity(self) -> Severity {
        match self {
            Level::Emerg => Severity::LOG_EMERG,
            Level::Alert => Severity::LOG_ALERT,
            Level::Crit => Severity::LOG_CRIT,
            Level::Err => Severity::LOG_ERR,
            Level::Warning => Severity::LOG_WARNING,
            Level::Notice => Severity::LOG_NOTICE,
            Level::Info => Severity::LOG_INFO,
            Level::Debug => Severity::LOG_DEBUG,
        }
    }
}

/// One line for the logging thread.
struct Line {
    level: Level,
    text: String,
    /// To stderr whatever the sink (the `ready` line scripts wait for).
    stderr: bool,
}

/// What the logging thread and the loggers' owners share.
#[derive(Default)]
struct Counters {
    /// Lines not handed over: the queue was full.
    dropped: AtomicU64,
    /// Lines the sink did not take (socket full or gone, stderr closed).
    failed: AtomicU64,
    /// Set when the logger is dropped: write what can go out at once, wait for nothing.
    closing: AtomicBool,
}

impl Counters {
    fn lost(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

enum Sink {
    /// Lines go to the logging thread.
    Thread {
        tx: Option<SyncSender<Line>>,
        counters: Arc<Counters>,
        done: Receiver<()>,
        thread: Option<JoinHandle<()>>,
    },
    /// A handle of another logger's thread ([`Logger::handle`]): the same queue and lost
    /// count, without the thread.
    Handle {
        tx: Option<SyncSender<Line>>,
        counters: Arc<Counters>,
    },
    /// Lines kept in memory, for tests of what would be logged.
    Memory(Vec<(Level, String)>),
}

/// The daemon's logger. `records` is the level of service records (the `syslog-priority`
/// directive); operational messages use their own levels. Nothing it does blocks or fails.
pub struct Logger {
    sink: Sink,
    records: Level,
    /// The sink is stderr (asked for, or syslog was not there).
    on_stderr: bool,
}

impl Logger {
    /// Lines to stderr, written by the logging thread.
    pub fn stderr() -> Logger {
        Logger::spawn(Output::Stderr, Level::Info)
    }

    /// A logger that keeps every line in memory (see [`Logger::take_lines`]).
    pub fn memory() -> Logger {
        Logger {
            sink: Sink::Memory(Vec::new()),
            records: Level::Info,
            on_stderr: false,
        }
    }

    /// Another logger writing through this one's logging thread and bounded queue, with the
    /// same record priority and the one lost count: what each queue thread logs with, so that
    /// no two threads share a `Logger`. A sender clone and a reference count: cheap. The handle
    /// of a memory logger keeps its own lines.
    pub fn handle(&self) -> Logger {
        let sink = match &self.sink {
            Sink::Thread { tx, counters, .. } | Sink::Handle { tx, counters } => Sink::Handle {
                tx: tx.clone(),
                counters: Arc::clone(counters),
            },
            Sink::Memory(_) => Sink::Memory(Vec::new()),
        };
        Logger {
            sink,
            records: self.records,
            on_stderr: self.on_stderr,
        }
    }

    /// The lines a [`Logger::memory`] logger kept so far, emptied.
    pub fn take_lines(&mut self) -> Vec<(Level, String)> {
        match &mut self.sink {
            Sink::Memory(lines) => std::mem::take(lines),
            _ => Vec::new(),
        }
    }

    /// Lines lost so far: the queue to the logging thread was full, or the sink did not take
    /// them (syslog socket full, stalled or gone; stderr closed).
    pub fn lost(&self) -> u64 {
        match &self.sink {
            Sink::Thread { counters, .. } | Sink::Handle { counters, .. } => counters.lost(),
            Sink::Memory(_) => 0,
        }
    }

    /// Syslog on `socket` (or the system's default sockets); stderr where none exists, as in
    /// containers and CI, rather than failing. A syslog that goes away later is reconnected.
    pub fn syslog(facility: &str, priority: &str, socket: Option<&Path>) -> Logger {
        let records = Level::from_name(priority).unwrap_or(Level::Info);
        let facility: Facility = facility.parse().unwrap_or(Facility::LOG_LOCAL2);
        let formatter = Formatter3164 {
            facility,
            hostname: None,
            process: "netnat".into(),
            pid: std::process::id(),
        };
        let paths: Vec<PathBuf> = match socket {
            Some(p) => vec![p.to_path_buf()],
            None => DEFAULT_SOCKETS.iter().map(PathBuf::from).collect(),
        };
        let mut out = SyslogOut {
            formatter,
            paths,
            conn: None,
            connected_at: Instant::now(),
            next_try: Instant::now(),
            backoff: BACKOFF_MIN,
            buf: Vec::with_capacity(512),
        };
        match out.connect() {
            Ok(()) => Logger::spawn(Output::Syslog(Box::new(out)), records),
            Err(e) => {
                let _ = writeln!(
                    io::stderr(),
                    "netnat: warning: no syslog socket ({e}); logging to stderr"
                );
                Logger::spawn(Output::Stderr, records)
            }
        }
    }

    /// Whether the lines go to stderr: then the `ready` line scripts wait for is there already.
    pub fn on_stderr(&self) -> bool {
        self.on_stderr
    }

    fn spawn(mut out: Output, records: Level) -> Logger {
        let on_stderr = matches!(out, Output::Stderr);
        let (tx, rx) = mpsc::sync_channel::<Line>(LINE_QUEUE);
        let (done_tx, done) = mpsc::sync_channel::<()>(1);
        let counters = Arc::new(Counters::default());
        let c = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("netnat-log".into())
            .spawn(move || {
                writer_loop(&mut out, &rx, &c);
                let _ = done_tx.send(());
            });
        match thread {
            Ok(h) => Logger {
                sink: Sink::Thread {
                    tx: Some(tx),
                    counters,
                    done,
                    thread: Some(h),
                },
                records,
                on_stderr,
            },
            // No thread, no log: counted as lost (the channel is closed), nothing else fails.
            Err(_) => Logger {
                sink: Sink::Thread {
                    tx: None,
                    counters,
                    done,
                    thread: None,
                },
                records,
                on_stderr,
            },
        }
    }

    fn push(&mut self, level: Level, msg: impl Display, stderr: bool) {
        match &mut self.sink {
            Sink::Thread { tx, counters, .. } | Sink::Handle { tx, counters } => {
                let Some(tx) = tx else {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let line = Line {
                    level,
                    text: msg.to_string(),
                    stderr,
                };
                match tx.try_send(line) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Sink::Memory(lines) => lines.push((level, msg.to_string())),
        }
    }

    pub fn log(&mut self, level: Level, msg: impl Display) {
        self.push(level, msg, false)
    }

    /// `msg` on stderr as `netnat: MSG`, whatever the sink (written by the logging thread,
    /// so a stderr nobody reads blocks nobody).
    pub fn stderr_line(&mut self, msg: impl Display) {
        self.push(Level::Notice, msg, true)
    }

    /// A service record (mapping event, volume, ...) at the configured priority.
    pub fn record(&mut self, msg: impl Display) {
        let level = self.records;
        self.log(level, msg)
    }

    pub fn info(&mut self, msg: impl Display) {
        self.log(Level::Info, msg)
    }

    pub fn warn(&mut self, msg: impl Display) {
        self.log(Level::Warning, msg)
    }

    pub fn error(&mut self, msg: impl Display) {
        self.log(Level::Err, msg)
    }
}

impl Drop for Logger {
    /// Lets the logging thread write what is queued, for at most [`FLUSH_TIMEOUT`]; a sink
    /// that stalls does not hold up the exit.
    fn drop(&mut self) {
        if let Sink::Thread {
            tx,
            counters,
            done,
            thread,
        } = &mut self.sink
        {
            counters.closing.store(true, Ordering::Relaxed);
            *tx = None;
            if done.recv_timeout(FLUSH_TIMEOUT).is_ok()
                && let Some(h) = thread.take()
            {
                let _ = h.join();
            }
        }
    }
}

/// Where the logging thread writes.
enum Output {
    Stderr,
    Syslog(Box<SyslogOut>),
    /// Lines into shared memory: the thread's own behaviour under test.
    #[cfg(test)]
    Test(Arc<std::sync::Mutex<Vec<String>>>),
}

impl Output {
    /// Writes one line; false when it did not go out.
    fn write(&mut self, level: Level, text: &str, closing: bool) -> bool {
        match self {
            Output::Stderr => write_stderr(level, text),
            Output::Syslog(s) => s.write(level, text, closing),
            #[cfg(test)]
            Output::Test(lines) => {
                lines
                    .lock()
                    .unwrap()
                    .push(format!("{}: {text}", level.tag()));
                true
            }
        }
    }

    /// Whether a line written now has a chance (not waiting for a reconnection).
    fn up(&self) -> bool {
        match self {
            Output::Syslog(s) => s.conn.is_some() || Instant::now() >= s.next_try,
            _ => true,
        }
    }
}

/// The logging thread: writes lines until every sender is gone (or the logger is dropped and
/// the queue is empty), and reports lost lines once the sink takes lines again.
fn writer_loop(out: &mut Output, rx: &Receiver<Line>, counters: &Counters) {
    let mut reported = 0u64;
    let mut last_report = Instant::now();
    loop {
        let line = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) => Some(l),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let closing = counters.closing.load(Ordering::Relaxed);
        // At most one summary a second, and only when it can get through.
        let lost = counters.lost();
        if lost > reported && out.up() && (line.is_none() || last_report.elapsed().as_secs() >= 1) {
            last_report = Instant::now();
            let msg = format!(
                "{} log lines lost (log queue full, or the log socket full, stalled or gone)",
                lost - reported
            );
            if out.write(Level::Warning, &msg, closing) {
                reported = lost;
            } else {
                // Itself lost: the next summary, a second later at the earliest, counts it.
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let Some(line) = line else { continue };
        let ok = if line.stderr {
            let mut e = io::stderr().lock();
            writeln!(e, "netnat: {}", line.text).is_ok()
        } else {
            out.write(line.level, &line.text, closing)
        };
        if !ok {
            counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `netnat: LEVEL: MSG` on stderr; an error (EPIPE, a closed descriptor) is reported, never a
/// panic.
fn write_stderr(level: Level, text: &str) -> bool {
    let mut e = io::stderr().lock();
    writeln!(e, "netnat: {}: {text}", level.tag()).is_ok()
}

/// A syslog connection: a datagram socket (the usual /dev/log) or a stream one.
enum Conn {
    Dgram(UnixDatagram),
    Stream(UnixStream),
}

/// Syslog output with reconnection.
struct SyslogOut {
    formatter: Formatter3164,
    /// Tried in order at each connection attempt.
    paths: Vec<PathBuf>,
    conn: Option<Conn>,
    /// When `conn` was made.
    connected_at: Instant,
    /// No reconnection attempt before this.
    next_try: Instant,
    backoff: Duration,
    buf: Vec<u8>,
}

impl SyslogOut {
    /// Connects to the first socket that takes a connection.
    fn connect(&mut self) -> io::Result<()> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no syslog socket");
        for p in &self.paths {
            match connect_unix(p) {
                Ok(c) => {
                    self.conn = Some(c);
                    self.connected_at = Instant::now();
                    return Ok(());
                }
                Err(e) => {
                    // Say what it means: a socket file nobody listens on is a syslog daemon
                    // that is not running.
                    let why = match e.kind() {
                        io::ErrorKind::NotFound => "no such socket".to_string(),
                        io::ErrorKind::ConnectionRefused => {
                            "no syslog daemon listens on it".to_string()
                        }
                        _ => e.to_string(),
                    };
                    last = io::Error::new(e.kind(), format!("{}: {why}", p.display()))
                }
            }
        }
        Err(last)
    }

    /// After a failure: no connection until the backoff has passed. `was_up`: a connection
    /// (not only an attempt) failed; if it had worked for a while ([`HEALTHY`]) the backoff
    /// starts afresh, while one that fails again soon (a reader that keeps stalling, a syslog
    /// that stays away) makes the waits longer.
    fn lose_connection(&mut self, was_up: bool) {
        if was_up && self.connected_at.elapsed() > HEALTHY {
            self.backoff = BACKOFF_MIN;
        }
        self.conn = None;
        self.next_try = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Sends the formatted line in `buf` on the current connection.
    fn send(&mut self, timeout: Duration) -> Sent {
        match &self.conn {
            Some(Conn::Dgram(s)) => send_dgram(s, &self.buf, timeout),
            Some(Conn::Stream(s)) => {
                // Stream syslog frames a message with a NUL, as the `syslog` crate does.
                self.buf.push(0);
                let sent = send_stream(s, &self.buf, timeout);
                self.buf.pop();
                sent
            }
            None => Sent::Broken,
        }
    }

    fn write(&mut self, level: Level, text: &str, closing: bool) -> bool {
        self.buf.clear();
        if self
            .formatter
            .format(&mut self.buf, level.severity(), text)
            .is_err()
        {
            return false;
        }
        if self.conn.is_none() {
            if Instant::now() < self.next_try {
                return false;
            }
            if self.connect().is_err() {
                self.lose_connection(false);
                return false;
            }
        }
        let timeout = if closing {
            Duration::ZERO
        } else {
            SEND_TIMEOUT
        };
        match self.send(timeout) {
            Sent::Yes => true,
            // Datagram socket full for the whole wait: this line is lost, the socket is fine.
            Sent::Full => false,
            // A stream reader that takes nothing for the whole wait: give the connection up
            // (a line may be cut in it) and come back after the backoff, not at once.
            Sent::Stalled => {
                self.lose_connection(true);
                false
            }
            // The peer is gone (syslog restarted: ECONNREFUSED, or the file removed): try a
            // new connection at once, so that a restarted syslog loses as little as possible.
            Sent::Broken => {
                if self.connect().is_ok() {
                    match self.send(timeout) {
                        Sent::Yes => return true,
                        Sent::Full => return false,
                        Sent::Broken | Sent::Stalled => {}
                    }
                }
                self.lose_connection(true);
                false
            }
        }
    }
}

enum Sent {
    Yes,
    /// Datagram socket full (or the line too long for it): this line is lost.
    Full,
    /// Stream socket full for the whole wait.
    Stalled,
    /// The peer is gone.
    Broken,
}

/// A non-blocking (close-on-exec, as std makes every socket) connection to the Unix socket
/// `path`: datagram first, stream when the socket is a stream one (EPROTOTYPE).
///
/// std offers no non-blocking connect: a stream listener whose backlog is full makes this
/// call wait until it accepts. Only the logging thread connects after start-up, so such a
/// listener stalls the log (lines are then lost and counted), never the packets.
fn connect_unix(path: &Path) -> io::Result<Conn> {
    let d = UnixDatagram::unbound()?;
    match d.connect(path) {
        Ok(()) => {
            d.set_nonblocking(true)?;
            Ok(Conn::Dgram(d))
        }
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => {
            let s = UnixStream::connect(path)?;
            s.set_nonblocking(true)?;
            Ok(Conn::Stream(s))
        }
        Err(e) => Err(e),
    }
}

/// How often a send that found the socket full looks again, until its deadline. Polling
/// rather than poll(2): it only happens while syslog lags, and keeps this module free of
/// unsafe code.
const RETRY_EVERY: Duration = Duration::from_millis(2);

/// Sleeps a retry step if `deadline` leaves time for one; false when it does not.
fn wait_before(deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return false;
    }
    std::thread::sleep(left.min(RETRY_EVERY));
    true
}

fn send_dgram(s: &UnixDatagram, buf: &[u8], timeout: Duration) -> Sent {
    let deadline = Instant::now() + timeout;
    loop {
        match s.send(buf) {
            Ok(_) => return Sent::Yes,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait_before(deadline) {
                    return Sent::Full;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Too long for the socket: this line only.
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => return Sent::Full,
            Err(_) => return Sent::Broken,
        }
    }
}

/// Writes all of `buf`. A reader that went away is an EPIPE error here, not a signal: the Rust
/// runtime ignores SIGPIPE in netnat's process.
fn send_stream(mut s: &UnixStream, buf: &[u8], timeout: Duration) -> Sent {
    let deadline = Instant::now() + timeout;
    let mut at = 0;
    while at < buf.len() {
        match s.write(&buf[at..]) {
            Ok(0) => return Sent::Broken,
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait_before(deadline) {
                    // A line cut in the middle would leave the stream unusable anyway.
                    return Sent::Stalled;
                }
            }
            Err(_) => return Sent::Broken,
        }
    }
    Sent::Yes
}

#[cfg(test)]
mod level_tests {
    use super::*;

    #[test]
    fn every_documented_priority_is_its_own_severity() {
        let all: Vec<Severity> = crate::config::PRIORITIES
            .iter()
            .map(|n| Level::from_name(n).expect(n).severity())
            .collect();
        let want = [
            Severity::LOG_EMERG,
            Severity::LOG_ALERT,
            Severity::LOG_CRIT,
            Severity::LOG_ERR,
            Severity::LOG_WARNING,
            Severity::LOG_NOTICE,
            Severity::LOG_INFO,
            Severity::LOG_DEBUG,
        ];
        assert_eq!(all.len(), want.len());
        for (a, w) in all.iter().zip(want) {
            assert_eq!(*a as i32, w as i32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::sync::Mutex;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("netnat-log-{}-{name}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let p = dir.join("sock");
        let _ = std::fs::remove_file(&p);
        p
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn handles_write_through_the_same_thread_and_share_the_lost_count() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let held = lines.lock().unwrap();
        let log = Logger::spawn(Output::Test(Arc::clone(&lines)), Level::Notice);
        let mut h = log.handle();
        let start = Instant::now();
        let lost = std::thread::spawn(move || {
            for i in 0..(LINE_QUEUE + 500) {
                h.record(format_args!("r {i}"));
            }
            h.lost()
        })
        .join()
        .unwrap();
        assert!(start.elapsed() < Duration::from_secs(2), "never blocks");
        assert!((499..=500).contains(&lost), "lost {lost}");
        assert_eq!(log.lost(), lost, "one count");
        drop(held);
        wait_for("the handle's first record", || {
            lines.lock().unwrap().iter().any(|l| l == "notice: r 0")
        });
    }

    #[test]
    fn a_full_queue_loses_lines_without_blocking_and_says_so() {
        // A logging thread that cannot write (its output blocks on a lock the test holds).
        let lines = Arc::new(Mutex::new(Vec::new()));
        let held = lines.lock().unwrap();
        let mut log = Logger::spawn(Output::Test(Arc::clone(&lines)), Level::Info);
        let start = Instant::now();
        for i in 0..(LINE_QUEUE + 1000) {
            log.info(format_args!("line {i}"));
        }
        assert!(start.elapsed() < Duration::from_secs(2), "never blocks");
        // The thread holds one line (blocked writing it); the queue the rest it can.
        let lost = log.lost();
        assert!((999..=1000).contains(&lost), "lost {lost}");
        drop(held);
        wait_for("the summary", || {
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("log lines lost"))
        });
        let l = lines.lock().unwrap().clone();
        let summary = l.iter().find(|l| l.contains("log lines lost")).unwrap();
        assert!(
            summary.starts_with(&format!("warning: {lost} log lines lost")),
            "{summary}"
        );
        assert!(l.len() as u64 >= LINE_QUEUE as u64 - 1, "{}", l.len());
    }

    #[test]
    fn syslog_reconnects_after_the_socket_is_removed_and_recreated() {
        let path = temp_path("reconnect");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut log = Logger::syslog("local2", "info", Some(&path));
        log.info("first");
        let mut buf = [0u8; 1024];
        let n = sock.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            got.starts_with("<150>")
                && got.ends_with(&format!("netnat[{}]: first", std::process::id())),
            "{got}"
        );
        // The syslog daemon restarts: socket gone, then a new one on the same path.
        drop(sock);
        std::fs::remove_file(&path).unwrap();
        log.info("while away");
        std::thread::sleep(Duration::from_millis(100));
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut seen = Vec::new();
        let start = Instant::now();
        let mut i = 0;
        while !seen.iter().any(|s: &String| s.ends_with(": back")) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nothing after the restart: {seen:?}"
            );
            log.info("back");
            i += 1;
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        assert!(i < 100, "{i}");
        // What was lost meanwhile is said once the socket works again.
        let start = Instant::now();
        while !seen.iter().any(|s| s.contains("log lines lost"))
            && start.elapsed() < Duration::from_secs(5)
        {
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        assert!(
            seen.iter().any(|s| s.contains("log lines lost")),
            "{seen:?}"
        );
        assert!(log.lost() >= 1);
    }

    #[test]
    fn a_stalled_stream_reader_blocks_nobody() {
        let path = temp_path("stalled");
        let listener = UnixListener::bind(&path).unwrap();
        // Accepts, never reads.
        let held = Arc::new(Mutex::new(Vec::new()));
        let h = Arc::clone(&held);
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let acceptor = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok((c, _)) = listener.accept() {
                    h.lock().unwrap().push(c);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let mut log = Logger::syslog("local2", "info", Some(&path));
        let start = Instant::now();
        let line = "x".repeat(200);
        for _ in 0..20_000 {
            log.record(&line);
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert!(log.lost() > 0);
        let start = Instant::now();
        drop(log);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "drop took {:?}",
            start.elapsed()
        );
        stop.store(true, Ordering::Relaxed);
        acceptor.join().unwrap();
        assert!(!held.lock().unwrap().is_empty(), "it did connect");
    }

    #[test]
    fn stream_syslog_gets_nul_framed_lines() {
        let path = temp_path("stream");
        let listener = UnixListener::bind(&path).unwrap();
        let mut log = Logger::syslog("local2", "info", Some(&path));
        let (mut c, _) = listener.accept().unwrap();
        log.warn("one");
        log.info("two");
        drop(log);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut all = Vec::new();
        let _ = io::Read::read_to_end(&mut c, &mut all);
        let text = String::from_utf8_lossy(&all);
        let parts: Vec<&str> = text.split('\0').filter(|s| !s.is_empty()).collect();
        assert_eq!(parts.len(), 2, "{text:?}");
        assert!(
            parts[0].starts_with("<148>") && parts[0].ends_with(": one"),
            "{text:?}"
        );
        assert!(
            parts[1].starts_with("<150>") && parts[1].ends_with(": two"),
            "{text:?}"
        );
    }

    #[test]
    fn a_missing_socket_falls_back_to_stderr() {
        let path = temp_path("missing");
        let mut log = Logger::syslog("local2", "info", Some(&path));
        log.info("to stderr");
        assert!(matches!(log.sink, Sink::Thread { .. }));
        assert_eq!(log.lost(), 0);
    }
}
