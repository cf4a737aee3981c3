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
}

/// The daemon's logger. `records` is the level of service records (the `syslog-priority`
/// directive); operational messages use their own levels.
pub struct Logger {
    sink: Sink,
    records: Level,
}

impl Logger {
    pub fn stderr() -> Logger {
        Logger {
            sink: Sink::Stderr,
            records: Level::Info,
        }
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
            Ok(l) => Logger {
                sink: Sink::Syslog(l),
                records,
            },
            Err(e) => {
                eprintln!("netnat: warning: no syslog socket ({e}); logging to stderr");
                Logger {
                    sink: Sink::Stderr,
                    records,
                }
            }
        }
    }

    pub fn log(&mut self, level: Level, msg: impl Display) {
        match &mut self.sink {
            Sink::Stderr => eprintln!("netnat: {}: {msg}", level.tag()),
            Sink::Syslog(l) => {
                // A lost log line must not stop packet processing: errors are ignored here.
                let _ = match level {
                    Level::Err => l.err(msg),
                    Level::Warning => l.warning(msg),
                    Level::Notice => l.notice(msg),
                    Level::Info => l.info(msg),
                    Level::Debug => l.debug(msg),
                };
            }
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
