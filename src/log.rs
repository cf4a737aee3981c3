//! Where netnat's messages go: syslog (facility and priority from the configuration) or stderr.
//!
//! Only this module formats log lines; the packet path calls it only when a service's flags ask
//! for a record, so nothing is formatted per packet otherwise.

use std::fmt::Display;
use std::path::Path;

use syslog::{Facility, Formatter3164, Logger as SysLogger, LoggerBackend};

/// Severity of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Err,
    Warning,
    Notice,
    Info,
    Debug,
}

impl Level {
    pub fn from_name(name: &str) -> Option<Level> {
        Some(match name {
            "emerg" | "alert" | "crit" | "err" => Level::Err,
            "warning" => Level::Warning,
            "notice" => Level::Notice,
            "info" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }

    fn tag(self) -> &'static str {
        match self {
            Level::Err => "error",
            Level::Warning => "warning",
            Level::Notice => "notice",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

enum Sink {
    Stderr,
    Syslog(SysLogger<LoggerBackend, Formatter3164>),
    /// Lines kept in memory, for tests of what would be logged.
    Memory(Vec<(Level, String)>),
}

/// The daemon's logger. `records` is the level of service records (the `syslog-priority`
/// directive); operational messages use their own levels.
pub struct Logger {
    sink: Sink,
    records: Level,
    lost: u64,
}

impl Logger {
    pub fn stderr() -> Logger {
        Logger {
            sink: Sink::Stderr,
            records: Level::Info,
            lost: 0,
        }
    }

    /// A logger that keeps every line in memory (see [`Logger::take_lines`]).
    pub fn memory() -> Logger {
        Logger {
            sink: Sink::Memory(Vec::new()),
            records: Level::Info,
            lost: 0,
        }
    }

    /// The lines a [`Logger::memory`] logger kept so far, emptied.
    pub fn take_lines(&mut self) -> Vec<(Level, String)> {
        match &mut self.sink {
            Sink::Memory(lines) => std::mem::take(lines),
            _ => Vec::new(),
        }
    }

    /// Lines that could not be handed to syslog (its socket full or gone). The socket does not
    /// block: a stalled syslog daemon costs log lines, never packets.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Syslog on `socket` (or the system's default sockets); stderr where none exists, as in
    /// containers and CI, rather than failing.
    pub fn syslog(facility: &str, priority: &str, socket: Option<&Path>) -> Logger {
        let records = Level::from_name(priority).unwrap_or(Level::Info);
        let facility: Facility = facility.parse().unwrap_or(Facility::LOG_LOCAL2);
        let formatter = Formatter3164 {
            facility,
            hostname: None,
            process: "netnat".into(),
            pid: std::process::id(),
        };
        let logger = match socket {
            Some(path) => syslog::unix_custom(formatter, path),
            None => syslog::unix(formatter),
        };
        match logger {
            Ok(l) => {
                // The packet thread writes the records: a syslog daemon that stops reading must
                // not stop it. A datagram socket is made non-blocking (a full socket loses the
                // line, counted in `lost`); a stream socket stays blocking, because a partial
                // write would cut a line in the middle of the stream.
                if let LoggerBackend::Unix(sock) = &l.backend {
                    let _ = sock.set_nonblocking(true);
                }
                Logger {
                    sink: Sink::Syslog(l),
                    records,
                    lost: 0,
                }
            }
            Err(e) => {
                eprintln!("netnat: warning: no syslog socket ({e}); logging to stderr");
                Logger {
                    sink: Sink::Stderr,
                    records,
                    lost: 0,
                }
            }
        }
    }

    pub fn log(&mut self, level: Level, msg: impl Display) {
        match &mut self.sink {
            Sink::Stderr => eprintln!("netnat: {}: {msg}", level.tag()),
            Sink::Syslog(l) => {
                // A lost log line must not stop packet processing: it is only counted.
                let sent = match level {
                    Level::Err => l.err(msg),
                    Level::Warning => l.warning(msg),
                    Level::Notice => l.notice(msg),
                    Level::Info => l.info(msg),
                    Level::Debug => l.debug(msg),
                };
                if sent.is_err() {
                    self.lost += 1;
                }
            }
            Sink::Memory(lines) => lines.push((level, msg.to_string())),
        }
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
