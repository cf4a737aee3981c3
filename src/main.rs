//! The `netnat` command: parses arguments and calls one command function each.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use netnat::config::{self, ConfigError};
use netnat::daemon::{self, DaemonError, RunOptions};
use netnat::nft;

/// Default configuration file.
const DEFAULT_CONFIG: &str = "/etc/netnat/netnat.conf";

/// Exit status: a configuration or usage error (nothing was changed).
const EXIT_CONFIG: u8 = 2;
/// Exit status: the system refused (privileges, queue busy, netlink errors).
const EXIT_SYSTEM: u8 = 1;

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
    /// Remove a table left behind by a netnat that is no longer running.
    Flush,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            log_stderr,
            syslog_socket,
        } => {
            let opts = RunOptions {
                config,
                log_stderr,
                syslog_socket,
            };
            match daemon::run(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e @ DaemonError::Config(_)) => fail(EXIT_CONFIG, e),
                Err(e) => fail(EXIT_SYSTEM, e),
            }
        }
        Command::Check { config } => match config::load_config(&config) {
            Ok(c) => {
                println!(
                    "{}: {} services, no errors",
                    config.display(),
                    c.services.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => config_errors(&errors),
        },
        Command::Rules { config } => match config::load_config(&config) {
            Ok(c) => {
                let policy = nft::Policy::new(&daemon::services_of(&c), c.settings.queue);
                print!("{}", nft::render(&policy));
                ExitCode::SUCCESS
            }
            Err(errors) => config_errors(&errors),
        },
        Command::Flush => match nft::flush_leftover() {
            Ok(true) => {
                println!("removed table inet netnat");
                ExitCode::SUCCESS
            }
            Ok(false) => {
                println!("no netnat table to remove");
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_SYSTEM, e),
        },
    }
}

fn config_errors(errors: &[ConfigError]) -> ExitCode {
    for e in errors {
        eprintln!("netnat: {e}");
    }
    ExitCode::from(EXIT_CONFIG)
}

fn fail(code: u8, e: impl std::fmt::Display) -> ExitCode {
    for line in e.to_string().lines() {
        eprintln!("netnat: {line}");
    }
    ExitCode::from(code)
}
