//! `netnat run`: start-up order, the packet loop, signals, reload and shutdown.
//!
//! Order matters: the configuration is validated first (a bad file installs nothing), the queue
//! is bound and configured before any rule can send packets to it, and on shutdown the table is
//! removed before the queue is drained, so every packet that was queued gets its verdict.

use std::fmt;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::config::{self, Config, ConfigError, Flags, Protocol, Service};
use crate::datapath::{self, Event};
use crate::iface::Snapshot;
use crate::log::Logger;
use crate::nft::{NftSession, Policy};
use crate::queue::{Queue, QueueOptions};
use crate::record::{FlowMemory, MappingEvent};
use crate::service::ServiceTable;
use crate::wire::{Direction, Kind};

/// What `netnat run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config: PathBuf,
    pub log_stderr: bool,
    /// A syslog socket other than the system's (tests, chroots).
    pub syslog_socket: Option<PathBuf>,
}

/// Why the daemon could not start or had to stop.
#[derive(Debug)]
pub enum DaemonError {
    /// The configuration has errors; nothing was installed.
    Config(Vec<ConfigError>),
    /// The system refused (privileges, queue busy, netlink).
    System(String),
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonError::Config(errors) => {
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
            DaemonError::System(msg) => f.write_str(msg),
        }
    }
}

fn sys(context: &str, e: impl fmt::Display) -> DaemonError {
    DaemonError::System(format!("{context}: {e}"))
}

/// The services of a configuration, without their line numbers.
pub fn services_of(config: &Config) -> Vec<Service> {
    config.services.iter().map(|l| l.service.clone()).collect()
}

/// The running state that a reload replaces as a whole.
struct Active {
    config: Config,
    table: Arc<ServiceTable>,
    /// Which UDP flows were seen lately, for the mapping event of their first packet.
    udp_flows: FlowMemory,
    started: Instant,
}

impl Active {
    fn build(config: Config, log: &mut Logger) -> Result<Active, DaemonError> {
        let ifaces = Snapshot::read().map_err(|e| sys("reading interfaces", e))?;
        let services = services_of(&config);
        let table = ServiceTable::build(&services, &ifaces);
        for &id in table.waiting() {
            log.warn(format_args!(
                "service waits for its interface or address: {}",
                services[id]
            ));
        }
        // A `*` service can meet a fixed one on the same address only once `*` is resolved.
        for c in table.conflicts() {
            log.warn(format_args!(
                "service left out, its {:?} endpoint is taken by line {}: {}",
                c.direction, config.services[c.with].line, services[c.id]
            ));
        }
        Ok(Active {
            config,
            table: Arc::new(table),
            udp_flows: FlowMemory::default(),
            started: Instant::now(),
        })
    }
}

/// Runs until SIGINT or SIGTERM; returns after the table is removed and the queue drained.
pub fn run(opts: &RunOptions) -> Result<(), DaemonError> {
    let config = config::load_config(&opts.config).map_err(DaemonError::Config)?;
    let mut log = if opts.log_stderr {
        Logger::stderr()
    } else {
        let s = &config.settings;
        Logger::syslog(
            &s.syslog_facility,
            &s.syslog_priority,
            opts.syslog_socket.as_deref(),
        )
    };

    let mut active = Active::build(config, &mut log)?;
    let queue_num = active.config.settings.queue;
    let mut queue = Queue::open(&QueueOptions {
        num: queue_num,
        ..QueueOptions::default()
    })
    .map_err(|e| sys("binding the queue", e))?;
    let mut nft = NftSession::open().map_err(|e| sys("opening netlink", e))?;
    let policy = Policy::new(&services_of(&active.config), queue_num);
    let kind = nft
        .install(&policy)
        .map_err(|e| sys("installing rules", e))?;

    let signals = Signals::register().map_err(|e| sys("registering signals", e))?;
    log.info(format_args!(
        "ready: {} services on queue {queue_num} ({kind:?} queue expression)",
        active.config.services.len()
    ));
    if opts.log_stderr {
        // Tests and scripts wait for this line; with syslog it is in the log above.
    } else {
        eprintln!("netnat: ready");
    }

    loop {
        let queue_ready = signals.wait(&queue, Duration::from_secs(1));
        if signals.stop.load(Ordering::Relaxed) {
            break;
        }
        if signals.reload.swap(false, Ordering::Relaxed) {
            reload(&opts.config, &mut active, &mut nft, &mut log);
        }
        if queue_ready {
            drain(&mut queue, &mut active, &mut log, 64);
        }
    }

    log.info("stopping: removing the table and draining the queue");
    let removed = nft.remove();
    // Packets queued before the table went away still get their verdicts.
    for _ in 0..100 {
        if !queue.wait(Duration::from_millis(20)).unwrap_or(false) {
            break;
        }
        drain(&mut queue, &mut active, &mut log, 1000);
    }
    removed.map_err(|e| sys("removing the table", e))?;
    log.info("stopped");
    Ok(())
}

/// Handles every packet waiting now, batch by batch (bounded so signals are seen).
fn drain(queue: &mut Queue, active: &mut Active, log: &mut Logger, max_batches: usize) {
    let table = Arc::clone(&active.table);
    let mark = active.config.settings.mark;
    for _ in 0..max_batches {
        let now = active.started.elapsed().as_secs() as u32;
        let mut handler = |pkt: &mut crate::queue::Packet<'_>| {
            let (decision, event) = datapath::handle(&table, mark, pkt);
            if let Event::Translated {
                id,
                dir: Direction::Inbound,
                flow,
                kind: Kind::Plain { syn },
            } = event
            {
                let service = &active.config.services[id].service;
                if service.flags.has(Flags::MAPPING_EVENT) {
                    let first = match flow.protocol {
                        Protocol::Tcp => syn,
                        Protocol::Udp => active.udp_flows.is_new(id, flow.src, now),
                    };
                    if first {
                        log.record(MappingEvent {
                            iface: &service.iface,
                            flow: &flow,
                        });
                    }
                }
            }
            decision
        };
        match queue.process_batch(&mut handler) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                log.error(format_args!("queue: {e}"));
                return;
            }
        }
    }
}

/// SIGHUP: a new configuration replaces rules and table together, or nothing changes.
fn reload(path: &Path, active: &mut Active, nft: &mut NftSession, log: &mut Logger) {
    let config = match config::load_config(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                log.error(format_args!("reload refused: {e}"));
            }
            return;
        }
    };
    if config.settings.queue != active.config.settings.queue {
        log.error("reload refused: changing the queue number needs a restart");
        return;
    }
    let next = match Active::build(config, log) {
        Ok(a) => a,
        Err(e) => {
            log.error(format_args!("reload refused: {e}"));
            return;
        }
    };
    let policy = Policy::new(&services_of(&next.config), next.config.settings.queue);
    match nft.install(&policy) {
        Ok(_) => {
            *active = next;
            log.info(format_args!(
                "reloaded: {} services",
                active.config.services.len()
            ));
        }
        Err(e) => log.error(format_args!("reload refused, rules unchanged: {e}")),
    }
}

/// Signal flags plus a self-pipe, so that a signal wakes the poll on the queue at once
/// (signal-hook restarts blocking calls, a flag alone would be seen late).
struct Signals {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
    wake: UnixStream,
}

impl Signals {
    fn register() -> std::io::Result<Signals> {
        let stop = Arc::new(AtomicBool::new(false));
        let reload = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(SIGTERM, Arc::clone(&stop))?;
        signal_hook::flag::register(SIGINT, Arc::clone(&stop))?;
        signal_hook::flag::register(SIGHUP, Arc::clone(&reload))?;
        let (wake, notify) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        for sig in [SIGTERM, SIGINT, SIGHUP] {
            signal_hook::low_level::pipe::register(sig, notify.try_clone()?)?;
        }
        Ok(Signals { stop, reload, wake })
    }

    /// Waits for the queue or a signal; true when the queue has packets.
    fn wait(&self, queue: &Queue, timeout: Duration) -> bool {
        let mut fds = [
            libc::pollfd {
                fd: queue.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of two pollfd structs for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n <= 0 {
            return false;
        }
        if fds[1].revents != 0 {
            let mut buf = [0u8; 64];
            let _ = (&self.wake).read(&mut buf);
        }
        fds[0].revents & libc::POLLIN != 0
    }
}
