//! The `netnat` command: parses arguments and calls one command function each.

use std::fmt;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use netnat::config::{self, ConfigError};
use netnat::control::{self, Outcome, Request};
use netnat::daemon::prereq;
use netnat::daemon::{self, DaemonError, RunOptions};
use netnat::engine::service::{Interfaces, ServiceTable};
use netnat::iface;
use netnat::nft;

/// Default configuration file.
const DEFAULT_CONFIG: &str = "/etc/netnat/netnat.conf";

/// Exit status: a configuration or usage error (nothing was changed).
const EXIT_CONFIG: u8 = 2;
/// Exit status: the system refused (privileges, queue busy, netlink errors).
const EXIT_SYSTEM: u8 = 1;
// Exit status 3: netnat is not running (no control socket); 4: the daemon refused the caller
// (not root). Both come from `control`.

/// Exit status when stdout is a pipe whose reader went away (`netnat rules | head -1`). Rust
/// ignores SIGPIPE, so the write fails with EPIPE, and `print!` would panic (exit 101 with a
/// backtrace). The rest of the output is no longer wanted, so netnat stops quietly, with the
/// status a shell shows for a command that SIGPIPE killed (128 + 13), as `nft list ruleset |
/// head -1` ends: under `set -o pipefail` the pipeline still learns that not all was written.
const EXIT_BROKEN_PIPE: i32 = 141;

/// `print!` for the commands' output: see [`write_out`].
macro_rules! out {
    ($($arg:tt)*) => { write_out(format_args!($($arg)*)) };
}

/// `println!` for the commands' output: see [`write_out`].
macro_rules! outln {
    ($($arg:tt)*) => { write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!` without its panic: a message that cannot be written (stderr closed or a broken
/// pipe) is dropped, and the exit status still says what happened.
macro_rules! errln {
    ($($arg:tt)*) => {{ let _ = writeln!(io::stderr(), $($arg)*); }};
}

/// Writes to stdout, flushed at once so that a closed reader is noticed here, not in an
/// unchecked flush at exit. A broken pipe ends the process quietly ([`EXIT_BROKEN_PIPE`]);
/// any other failure (`> /dev/full`) is reported on stderr and ends it with exit 1.
fn write_out(args: fmt::Arguments<'_>) {
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        errln!("netnat: cannot write the output: {e}");
        std::process::exit(i32::from(EXIT_SYSTEM));
    }
}

/// How long a client waits for the daemon's answer (a reload of a large file takes a while).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "netnat",
    version,
    about = "Port-service proxy: maps apparent public endpoints to actual private servers through NFQUEUE",
    long_about = "netnat maps an apparent endpoint on a public interface (address or `*`, port, TCP or UDP) \
to an actual server on the private side. It installs its own nftables table `inet netnat` that steers \
exactly those packets into NFQUEUE, rewrites them there and recomputes their checksums.\n\n\
Services use the syntax of NetNAT's Port Service Proxy:\n  \
service <int> port <app IP|*> <app port> <TCP|UDP> <act IP> <act port> [flags]"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run in the foreground: install the table, translate packets until SIGINT/SIGTERM.
    Run {
        /// Configuration file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Log to stderr instead of syslog.
        #[arg(long)]
        log_stderr: bool,
        /// Syslog socket to use instead of the system's (/dev/log).
        #[arg(long, value_name = "PATH")]
        syslog_socket: Option<PathBuf>,
        /// Control socket [default: /run/netnat/control.sock; if another netnat holds the
        /// default, this one runs without]. A path given here must be free.
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        /// Seconds between volume records (flag 0x4000).
        #[arg(long, value_name = "SECS", default_value_t = 60,
              value_parser = clap::value_parser!(u64).range(1..=86400))]
        volume_interval: u64,
    },
    /// Check the configuration file and report every error with its line and column.
    Check {
        /// Configuration file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print, in nft syntax, the table netnat would install for the configuration.
    Rules {
        /// Configuration file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Remove everything netnat installs once it is stopped for good: the leak guard (table
    /// inet netnat_guard) and a table left behind by a netnat that is no longer running.
    Flush,
    /// Show the running services with their counters, and the queue's statistics.
    Status {
        /// Output format: text (for people), json (for programs), prometheus (the Prometheus
        /// text exposition format, e.g. for node_exporter's textfile collector).
        #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
        format: StatusFormat,
        /// The same as --format json.
        #[arg(long, conflicts_with = "format")]
        json: bool,
        #[command(flatten)]
        control: ControlArg,
    },
    /// A live view of the running netnat, refreshed every second: per service new
    /// connections/s, packets/s and bytes/s each way, drops/s, sorted by activity; the queue's
    /// figures on top. Quits on q. Not on a terminal: prints one block per interval.
    Top {
        /// Seconds between refreshes (0.1-3600).
        #[arg(long, value_name = "SECS", default_value_t = 1.0,
              value_parser = parse_interval)]
        interval: f64,
        /// Refreshes to show before quitting [default: until q on a terminal, else 1].
        #[arg(long, short = 'n', value_name = "N",
              value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Change or list the running services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Read the configuration file again (as SIGHUP) and report the result.
    Reload {
        #[command(flatten)]
        control: ControlArg,
    },
}

/// `netnat top --interval`: seconds, 0.1 to 3600.
fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("expected seconds 0.1-3600, found {s:?}")),
    }
}

/// `netnat status --format`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum StatusFormat {
    Text,
    Json,
    Prometheus,
}

impl From<StatusFormat> for control::Format {
    fn from(f: StatusFormat) -> control::Format {
        match f {
            StatusFormat::Text => control::Format::Text,
            StatusFormat::Json => control::Format::Json,
            StatusFormat::Prometheus => control::Format::Prometheus,
        }
    }
}

#[derive(clap::Args)]
struct ControlArg {
    /// The running netnat's control socket.
    #[arg(long, value_name = "PATH", default_value = control::DEFAULT_PATH)]
    control: PathBuf,
}

/// The words and options of `service add` and `service del`.
#[derive(clap::Args)]
struct ServiceChange {
    /// The service, as in the configuration file (the leading `service` is optional).
    #[arg(required = true, num_args = 1.., value_name = "WORD")]
    words: Vec<String>,
    /// Also change the daemon's configuration file: `add` appends the service, `del`
    /// comments it out.
    #[arg(long)]
    save: bool,
    #[command(flatten)]
    control: ControlArg,
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Add a service to the running netnat:
    /// <int> port <app IP|*> <app port> <TCP|UDP> <act IP> <act port> [flags].
    /// The new set is checked like a configuration file; rules and table change together.
    Add(ServiceChange),
    /// Delete a running service (the same words; flags, when given, must match too).
    Del(ServiceChange),
    /// List the running services, one canonical line each.
    List {
        #[command(flatten)]
        control: ControlArg,
    },
}

fn main() -> ExitCode {
    // As `Cli::parse`, but `--help` or `--version` into a closed pipe ends like any other
    // output (clap would exit 0 there, ignoring the error).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if let Err(io) = e.print().and_then(|()| io::stdout().flush())
                && io.kind() == io::ErrorKind::BrokenPipe
                && !e.use_stderr()
            {
                std::process::exit(EXIT_BROKEN_PIPE);
            }
            std::process::exit(e.exit_code());
        }
    };
    match cli.command {
        Command::Run {
            config,
            log_stderr,
            syslog_socket,
            control,
            volume_interval,
        } => {
            let opts = RunOptions {
                config,
                log_stderr,
                syslog_socket,
                control,
                volume_interval: Duration::from_secs(volume_interval),
            };
            match daemon::run(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e @ DaemonError::Config(_)) => fail(EXIT_CONFIG, e),
                Err(e) => fail(EXIT_SYSTEM, e),
            }
        }
        Command::Check { config } => match config::load_config(&config) {
            Ok(c) => {
                outln!(
                    "{}: {} services, no errors",
                    config.display(),
                    c.services.len()
                );
                check_system(&c, &config)
            }
            Err(errors) => config_errors(&errors),
        },
        Command::Rules { config } => match config::load_config(&config) {
            Ok(c) => {
                let policy = daemon::policy_of(&c, c.settings.queue_count());
                out!("{}", nft::render(&policy));
                ExitCode::SUCCESS
            }
            Err(errors) => config_errors(&errors),
        },
        Command::Flush => match nft::flush_leftover() {
            Ok(true) => {
                outln!("removed netnat's tables (inet netnat, inet netnat_guard)");
                ExitCode::SUCCESS
            }
            Ok(false) => {
                outln!("nothing of netnat's to remove");
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_SYSTEM, e),
        },
        Command::Status {
            format,
            json,
            control,
        } => {
            let format = if json {
                control::Format::Json
            } else {
                format.into()
            };
            client(&control.control, Request::Status { format })
        }
        Command::Top {
            interval,
            count,
            control,
        } => match netnat::control::top::run(&netnat::control::top::TopOptions {
            control: &control.control,
            interval: Duration::from_secs_f64(interval),
            count,
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.message.is_empty() => ExitCode::from(e.code),
            Err(e) => fail(e.code, e.message),
        },
        Command::Reload { control } => client(&control.control, Request::Reload),
        Command::Service(ServiceCommand::List { control }) => {
            client(&control.control, Request::List)
        }
        Command::Service(ServiceCommand::Add(c)) => {
            service_change(c, |save, words| Request::Add { save, words })
        }
        Command::Service(ServiceCommand::Del(c)) => {
            service_change(c, |save, words| Request::Del { save, words })
        }
    }
}

/// `service add` or `service del`: the words checked here, then `request` to the daemon.
fn service_change(c: ServiceChange, request: fn(bool, Vec<String>) -> Request) -> ExitCode {
    match check_words(c.words) {
        Ok(words) => client(&c.control.control, request(c.save, words)),
        Err(code) => code,
    }
}

/// The system half of `netnat check`: prerequisites, the services' interfaces and what `run`
/// would say about the services resolved against them. Exit 1 when `run` would fail or
/// something would stop netnat's data path from working.
fn check_system(c: &config::Config, file: &std::path::Path) -> ExitCode {
    let mut findings = prereq::check(c, &prereq::System::default());
    match iface::Snapshot::read() {
        Ok(snap) => {
            for name in c.interfaces() {
                let present = snap.index(name).is_some();
                findings.push(prereq::Finding {
                    severity: if present {
                        prereq::Severity::Ok
                    } else {
                        prereq::Severity::Warning
                    },
                    what: "interface",
                    detail: if present {
                        snap.describe(name)
                    } else {
                        format!("{name} is absent: its services wait for it")
                    },
                });
            }
            let table = ServiceTable::build(&daemon::services_of(c), &snap);
            let file = file.display().to_string();
            findings.extend(prereq::service_findings(&c.services, &table, &file));
        }
        Err(e) => findings.push(prereq::Finding {
            severity: prereq::Severity::Warning,
            what: "interfaces",
            detail: format!("cannot read them: {e}"),
        }),
    }
    for f in &findings {
        outln!("{f}");
    }
    if findings
        .iter()
        .any(|f| f.severity == prereq::Severity::Error)
    {
        ExitCode::from(EXIT_SYSTEM)
    } else {
        ExitCode::SUCCESS
    }
}

/// Checks the service words here first, so that a typo is reported (exit 2) even when the
/// daemon is not running; the daemon checks them again. A whole line given as one quoted word
/// (`'pub0 port * 91 TCP ...'`) is the same words: each argument is split at whitespace.
fn check_words(words: Vec<String>) -> Result<Vec<String>, ExitCode> {
    let words: Vec<String> = words
        .iter()
        .flat_map(|w| w.split_whitespace())
        .map(String::from)
        .collect();
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    config::parse_service_words(&refs)
        .map(|_| words.clone())
        .map_err(|e| {
            // Columns are 1-based word numbers; a 0 would be a grammar bug, not a reason to
            // panic.
            let at = e
                .column
                .checked_sub(1)
                .and_then(|i| refs.get(i))
                .map_or(String::from("the end"), |w| format!("{w:?}"));
            errln!("netnat: word {} ({at}): {}", e.column, e.message);
            ExitCode::from(EXIT_CONFIG)
        })
}

/// Sends one request to the daemon and prints its answer.
fn client(path: &std::path::Path, req: Request) -> ExitCode {
    match control::request(path, &req, CLIENT_TIMEOUT) {
        Ok(resp) => {
            if resp.outcome == Outcome::Ok {
                out!("{}", resp.body);
            } else {
                for line in resp.body.lines() {
                    errln!("netnat: {line}");
                }
            }
            ExitCode::from(resp.outcome.exit_code())
        }
        Err(e) => fail(e.exit_code(), e),
    }
}

fn config_errors(errors: &[ConfigError]) -> ExitCode {
    for e in errors {
        errln!("netnat: {e}");
    }
    ExitCode::from(EXIT_CONFIG)
}

fn fail(code: u8, e: impl std::fmt::Display) -> ExitCode {
    for line in e.to_string().lines() {
        errln!("netnat: {line}");
    }
    ExitCode::from(code)
}
