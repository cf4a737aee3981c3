//! `netnat run`: start-up order, the packet loop, signals, reload, the control socket and
//! shutdown.
//!
//! Order matters: the configuration is validated first (a bad file installs nothing), the
//! control socket is bound next (a second daemon on the same socket is refused before it
//! touches the kernel), the queues are bound and configured before any rule can send packets to
//! them, and on shutdown the table is removed before the queues are drained, so every packet
//! that was queued gets its verdict.
//!
//! Threads: one per queue ([`crate::engine::consumer`]) handles packets; the main thread polls the
//! signal pipe, the interface watcher and the control socket. Nothing is locked between them:
//! the main thread publishes each change as a new generation (table, services, mark, rate) that
//! the queue threads take at their next batch, and reads their counters from the shards they
//! publish, summed ([`Hub`]), for status, metrics, drain expiry and volume records. Every change of the service set (SIGHUP, `reload`, `service add`,
//! `service del`) goes through [`Daemon::apply`]: validated like a configuration file, rules
//! and lookup table replaced together, or nothing changes. Services equal to running ones keep
//! their counters and UDP flow memory.

mod changes;
mod offload;
pub mod prereq;

use changes::{Drained, policy_with};
pub use changes::{policy_of, services_of};

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::config::{self, Config, ConfigError, Service};
use crate::control::metrics_http::MetricsServer;
use crate::control::save;
use crate::control::status::{OffloadReport, Report, ServiceReport, ServiceState};
use crate::control::{self, Outcome, Request, Response, Server};
use crate::engine::consumer::{Consumer, Hub};
use crate::engine::service::ServiceTable;
use crate::engine::stats::Rate;
use crate::iface::{Change, Snapshot, Watcher};
use crate::log::Logger;
use crate::nft::{NftSession, QueueExprKind};
use crate::queue::{Queue, QueueOptions};

/// What `netnat run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config: PathBuf,
    pub log_stderr: bool,
    /// A syslog socket other than the system's (tests, chroots).
    pub syslog_socket: Option<PathBuf>,
    /// The control socket. `None`: [`control::DEFAULT_PATH`], where a socket held by another
    /// running netnat (one per network namespace, say) only costs this one its control socket;
    /// a path given explicitly must be usable or netnat does not start.
    pub control: Option<PathBuf>,
    /// Time between volume records (flag 0x4000).
    pub volume_interval: Duration,
}

/// Default time between volume records.
pub const DEFAULT_VOLUME_INTERVAL: Duration = Duration::from_secs(60);

impl RunOptions {
    /// Options with defaults for everything but the configuration file.
    pub fn new(config: PathBuf) -> RunOptions {
        RunOptions {
            config,
            log_stderr: false,
            syslog_socket: None,
            control: None,
            volume_interval: DEFAULT_VOLUME_INTERVAL,
        }
    }
}

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration has errors; nothing was installed.
    #[error("{}", lines(.0))]
    Config(Vec<ConfigError>),
    /// The system refused (privileges, queue busy, netlink): `context` is what was being done.
    #[error("{context}: {source}")]
    System {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The daemon had to stop (a queue thread ended), with no error behind it to name.
    #[error("{0}")]
    Stopped(String),
}

/// Every error on a line of its own.
fn lines(errors: &[ConfigError]) -> String {
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    shown.join("\n")
}

fn sys(context: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> DaemonError {
    DaemonError::System {
        context: context.to_string(),
        source: e.into(),
    }
}

/// How often the main loop makes sure the leak guard is still there.
const GUARD_CHECK: Duration = Duration::from_secs(2);

fn wall_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_secs())
}

/// The running service set: the configuration and its lookup table, replaced as a whole.
struct Active {
    config: Config,
    /// Removed services still translating their established connections; in the table after
    /// the configuration's services (ids from `config.services.len()` on).
    draining: Vec<Drained>,
    table: Arc<ServiceTable>,
    /// The interfaces the table was resolved against (`*` addresses, ifindexes).
    ifaces: Snapshot,
}

impl Active {
    /// `previous`: the running table, whose `*` addresses held for older flows carry over.
    fn build(
        config: Config,
        draining: Vec<Drained>,
        previous: Option<&ServiceTable>,
    ) -> Result<Active, DaemonError> {
        let ifaces = Snapshot::read().map_err(|e| sys("reading interfaces", e))?;
        let mut active = Active {
            config,
            draining,
            table: Arc::new(ServiceTable::empty()),
            ifaces,
        };
        let table = active.resolve(&active.ifaces);
        active.table = Arc::new(match previous {
            Some(p) => table.carry_over(p),
            None => table,
        });
        Ok(active)
    }

    /// The configuration's services, then the draining ones: the ids of the table and of the
    /// monitor's counters.
    fn services(&self) -> Vec<Service> {
        changes::all_services(&self.config, &self.draining)
    }

    fn resolve(&self, ifaces: &Snapshot) -> ServiceTable {
        ServiceTable::build_draining(&self.services(), self.config.services.len(), ifaces)
    }

    /// The rules of this set over `queues` queues, the header-only reply map from the table.
    fn policy(&self, queues: u16) -> crate::nft::Policy {
        let table = &self.table;
        let reply_from = |i: usize| {
            table
                .entry(i)
                .map(crate::engine::datapath::reply_slots)
                .unwrap_or_default()
        };
        policy_with(&self.config, &self.services(), queues, &reply_from)
    }

    /// The service interfaces' changes between the table's snapshot and `newer`.
    fn changes(&self, newer: &Snapshot) -> Vec<Change> {
        self.ifaces.diff(newer, &self.config.interfaces())
    }

    /// Resolves the same services against `ifaces`: `*` follows the interface's new address,
    /// a re-created interface its new index. Rules do not change (they match by name, and `*`
    /// by `fib daddr . iif type local`), so only the lookup table is swapped.
    /// Flows made before `*` moved keep its old address while it stays valid (`carry_over`).
    fn follow(&mut self, ifaces: Snapshot) {
        self.table = Arc::new(self.resolve(&ifaces).carry_over(&self.table));
        self.ifaces = ifaces;
    }

    /// Logs the services that wait for their interface, those left out by a conflict and
    /// those that cannot work: the same findings `netnat check` prints.
    fn report(&self, log: &mut Logger, file: &Path) {
        let file = file.display().to_string();
        for f in prereq::service_findings(&self.config.services, &self.table, &file) {
            log.warn(format_args!("{}", f.detail));
        }
    }
}

/// Everything the main thread owns: the service set, the nft session, and its share of what
/// the queue threads use.
struct Daemon<'a> {
    opts: &'a RunOptions,
    active: Active,
    nft: NftSession,
    kind: QueueExprKind,
    /// Number of queues bound, one thread each (from `queue` in the configuration on, which
    /// a reload may not change).
    queues: u16,
    /// What the queue threads are given and what they count.
    hub: Hub,
    log: Logger,
    /// `busy-poll` of the running configuration, read by the queue threads after each batch.
    busy_poll: Arc<AtomicU32>,
    started: Instant,
    /// `started` on the wall clock, Unix seconds, for the report.
    start_unix: u64,
    /// Reloads applied and refused since the start, for the report.
    reloads_ok: u64,
    reloads_refused: u64,
    /// `metrics-listen` as the daemon started with it (bound then, kept by reloads).
    metrics_listen: Option<std::net::SocketAddr>,
    /// What the kernel counted for offloaded flows (`offload on`; fixed for the daemon's life).
    offload: Option<offload::KernelCounts>,
    /// Whether the last reading of the kernel's counts failed (logged once until it works).
    offload_failing: bool,
}

/// Whether `settings` offload flows (`offload on`, with the header-only path it needs; the
/// file refuses it without).
fn offloading(settings: &crate::config::Settings) -> bool {
    settings.offload && settings.header_only
}

/// The queue threads and what stops them.
struct Threads {
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Write end of the pipe the threads poll beside their queue: dropping it wakes them all.
    wake: Option<OwnedFd>,
    /// Read end, kept open until the threads are joined.
    _wake_read: OwnedFd,
}

impl Threads {
    /// A thread that ended while the daemon runs has panicked: its queue is no longer served.
    fn any_finished(&self) -> bool {
        self.handles.iter().any(|h| h.is_finished())
    }

    /// Tells the threads to drain their queues and return; waits for them.
    fn stop(mut self) -> bool {
        self.stop.store(true, Ordering::Relaxed);
        self.wake = None;
        let mut clean = true;
        for h in self.handles.drain(..) {
            clean &= h.join().is_ok();
        }
        clean
    }
}

/// Runs until SIGINT or SIGTERM; returns after the table is removed and the queues drained.
pub fn run(opts: &RunOptions) -> Result<(), DaemonError> {
    // First of all: until the handlers are in place, SIGHUP and SIGTERM keep their default
    // action and kill the process, which during start-up (rules installed, thread not yet
    // serving) would take the table with it. A signal caught this early sets its flag and is
    // acted on when the main loop starts: a reload, or an orderly stop.
    let signals = Signals::register().map_err(|e| sys("registering signals", e))?;
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

    let server = match &opts.control {
        Some(path) => Some(Server::bind(path).map_err(|e| sys("control socket", e))?),
        None => match Server::bind(Path::new(control::DEFAULT_PATH)) {
            Ok(s) => Some(s),
            Err(e) => {
                log.warn(format_args!("running without a control socket: {e}"));
                None
            }
        },
    };

    // Bound before anything is installed: an address that cannot be had stops the start here,
    // with nothing to undo. Read once: a reload keeps the listener it started with.
    let listen_at_start = config.settings.metrics_listen;
    let mut metrics = match config.settings.metrics_listen {
        Some(addr) => {
            Some(MetricsServer::bind(addr).map_err(|e| sys(&format!("metrics-listen {addr}"), e))?)
        }
        None => None,
    };

    // Opened before the first snapshot, so that no address change falls between the two.
    let mut watcher = match Watcher::open() {
        Ok(w) => Some(w),
        Err(e) => {
            log.warn(format_args!(
                "cannot watch interfaces ({e}): `*` services will not follow address changes"
            ));
            None
        }
    };
    let active = Active::build(config, Vec::new(), None)?;
    let queue_num = active.config.settings.queue;
    let queue_count = active.config.settings.queue_count();
    // Every queue is bound before any rule can send packets to it.
    let mut queues = Vec::with_capacity(usize::from(queue_count));
    for num in (0..queue_count).map(|i| queue_num + i) {
        let q = Queue::open(&QueueOptions {
            num,
            copy_range: if active.config.settings.header_only {
                crate::queue::COPY_HEADERS
            } else {
                crate::queue::COPY_WHOLE
            },
            ..QueueOptions::default()
        })
        .map_err(|e| sys("binding the queue", e))?;
        queues.push(q);
    }
    let mut nft = NftSession::open().map_err(|e| sys("opening netlink", e))?;
    let policy = active.policy(queue_count);
    let kind = nft
        .install(&policy)
        .map_err(|e| sys("installing rules", e))?;
    drop(policy);
    active.report(&mut log, &opts.config);

    let mut control_note = match &server {
        Some(s) => format!(", control socket {}", s.path().display()),
        None => String::new(),
    };
    if let Some(m) = &metrics {
        control_note.push_str(&format!(", metrics on http://{}/metrics", m.addr()));
    }
    let queue_note = if queue_count == 1 {
        format!("queue {queue_num}")
    } else {
        format!(
            "queues {queue_num}-{}, one thread each",
            u32::from(queue_num) + u32::from(queue_count) - 1
        )
    };
    log.info(format_args!(
        "ready: {} services on {queue_note} ({kind}){control_note}",
        active.config.services.len()
    ));
    if !log.on_stderr() {
        // Scripts wait for `ready` on stderr; logging there, they have it from the line above.
        // Through the logging thread: a stderr nobody reads must not hold up the start.
        log.stderr_line("ready");
    }

    let started = Instant::now();
    let hub = Hub::new(
        Arc::clone(&active.table),
        services_of(&active.config),
        active.config.settings.mark,
        Rate::of(&active.config.settings),
        queues.len(),
    )
    .with_rewrite_mark(if active.config.settings.header_only {
        active.config.settings.rewrite_mark
    } else {
        0
    })
    .with_offload(offloading(&active.config.settings));
    let busy_poll = Arc::new(AtomicU32::new(active.config.settings.busy_poll_us));
    let kernel_counts = offloading(&active.config.settings)
        .then(|| offload::KernelCounts::new(active.config.settings.offload_flows));
    let threads = spawn_threads(queues, &hub, &log, started, &busy_poll)?;
    let mut d = Daemon {
        opts,
        active,
        nft,
        kind,
        queues: queue_count,
        hub,
        log,
        busy_poll,
        started,
        start_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        reloads_ok: 0,
        reloads_refused: 0,
        metrics_listen: listen_at_start,
        offload: kernel_counts,
        offload_failing: false,
    };
    let mut server = server;
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(
        4 + control::MAX_CONNECTIONS + crate::control::metrics_http::MAX_CONNECTIONS,
    );
    let mut next_volume = Instant::now() + opts.volume_interval;
    let mut next_guard_check = Instant::now() + GUARD_CHECK;
    let mut failed = None;

    loop {
        fds.clear();
        fds.push(pollfd(signals.wake.as_raw_fd()));
        // Slot 1 is the interface watcher's (or an fd poll ignores), control sockets follow.
        fds.push(pollfd(watcher.as_ref().map_or(-1, |w| w.as_raw_fd())));
        if let Some(s) = &server {
            s.poll_fds(&mut fds);
        }
        let control_end = fds.len();
        if let Some(m) = &metrics {
            m.poll_fds(&mut fds);
        }
        let timeout = next_volume
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        poll(&mut fds, timeout);
        if fds[0].revents != 0 {
            signals.drain_pipe();
        }
        if signals.stop.load(Ordering::Relaxed) {
            break;
        }
        if threads.any_finished() {
            failed = Some("a queue thread stopped unexpectedly; its queue is not served");
            break;
        }
        if signals.reload.swap(false, Ordering::Relaxed) {
            let _ = d.logged_reload("SIGHUP");
        }
        if fds[1].revents != 0
            && let Some(w) = &mut watcher
        {
            d.follow_interfaces(w);
        }
        if let Some(s) = &mut server {
            // Only when the socket has news or a connection is open (its deadline runs).
            if s.busy() || fds[2..control_end].iter().any(|f| f.revents != 0) {
                s.serve(&mut |req| d.handle(req));
            }
        }
        if let Some(m) = &mut metrics
            && (m.busy() || fds[control_end..].iter().any(|f| f.revents != 0))
        {
            d.read_offload(true);
            m.serve(&mut || crate::control::metrics::render(&d.report()));
        }
        d.expire_drained();
        if d.offload.as_ref().is_some_and(|k| k.due()) {
            d.read_offload(false);
        }
        if Instant::now() >= next_guard_check {
            d.keep_guard();
            next_guard_check = Instant::now() + GUARD_CHECK;
        }
        let now = Instant::now();
        if now >= next_volume {
            d.hub.volume_records(&mut d.log);
            next_volume += opts.volume_interval;
            if next_volume <= now {
                next_volume = now + opts.volume_interval;
            }
        }
    }

    match failed {
        Some(why) => d.log.error(format_args!("{why}; stopping")),
        None => d
            .log
            .info("stopping: removing the table and draining the queues"),
    }
    drop(server); // no more requests; the socket file goes
    let removed = d.nft.remove();
    // Packets queued before the table went away still get their verdicts: each thread drains
    // its queue before it returns.
    let clean = threads.stop();
    removed.map_err(|e| sys("removing the table", e))?;
    if let Some(why) = failed.or((!clean).then_some("a queue thread panicked")) {
        return Err(DaemonError::Stopped(why.to_string()));
    }
    d.log.info("stopped");
    Ok(())
}

/// Starts one thread per queue.
fn spawn_threads(
    queues: Vec<Queue>,
    hub: &Hub,
    log: &Logger,
    started: Instant,
    busy_poll: &Arc<AtomicU32>,
) -> Result<Threads, DaemonError> {
    let (read, write) = pipe().map_err(|e| sys("creating the wake-up pipe", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(queues.len());
    for (index, queue) in queues.into_iter().enumerate() {
        let c = Consumer {
            queue,
            worker: hub.worker(index, log.handle()),
            started,
            stop: Arc::clone(&stop),
            wake: read.as_raw_fd(),
            busy_poll_us: Arc::clone(busy_poll),
        };
        let h = std::thread::Builder::new()
            .name(format!("netnat-q{index}"))
            .spawn(move || c.run())
            .map_err(|e| sys("starting a queue thread", e))?;
        handles.push(h);
    }
    Ok(Threads {
        handles,
        stop,
        wake: Some(write),
        _wake_read: read,
    })
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Daemon<'_> {
    /// Answers one control request.
    fn handle(&mut self, req: Request) -> Response {
        // The kernel's counts first: fresh in a report, and attributed by the services they
        // were counted for before a change replaces them.
        self.read_offload(matches!(req, Request::Status { .. }));
        let result = match req {
            Request::Status { format } => Ok(self.report().render(format)),
            Request::List => Ok(self
                .active
                .config
                .services
                .iter()
                .map(|l| format!("{}\n", l.service))
                .collect()),
            Request::Reload => self.logged_reload("netnat reload"),
            Request::Add { save, words } => self.add(&words, save),
            Request::Del { save, words } => self.del(&words, save),
        };
        match result {
            Ok(body) => Response::ok(body),
            Err(r) => r,
        }
    }

    /// Adds what the kernel counted for offloaded flows since the last reading (see
    /// [`offload::KernelCounts::read`]); with `flows`, counts the offloaded flows too.
    fn read_offload(&mut self, flows: bool) {
        let Some(k) = &mut self.offload else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match k.read(&self.active.table, &mut self.hub, now, flows) {
            Ok(()) => self.offload_failing = false,
            Err(e) if !self.offload_failing => {
                self.offload_failing = true;
                self.log.warn(format_args!(
                    "reading the offload counters: {e}; offloaded packets are missing from \
                     the counters until it works again"
                ));
            }
            Err(_) => {}
        }
    }

    fn report(&self) -> Report {
        let table = &self.active.table;
        // Live counters, summed over the queue threads' shards without stopping them.
        let stats = self.hub.stats();
        let services = self
            .hub
            .services()
            .iter()
            .enumerate()
            .map(|(id, s)| ServiceReport {
                line: s.to_string(),
                iface: s.iface.clone(),
                state: match table.entry(id) {
                    Some(e) if e.draining => ServiceState::Draining { apparent: e.app },
                    Some(e) => ServiceState::Active { apparent: e.app },
                    None if table.waiting().contains(&id) => ServiceState::Waiting,
                    None => ServiceState::Conflict,
                },
                counters: stats.service(id),
            })
            .collect();
        let queue_stats = self.hub.queue_stats();
        Report {
            queue: self.active.config.settings.queue,
            queues: self.queues,
            expression: match self.kind {
                QueueExprKind::Native => "native",
                QueueExprKind::Compat => "compat",
            }
            .to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            queue_stats,
            unattributed: stats.unattributed,
            passed: stats.passed,
            log_lost: self.log.lost(),
            start_unix: self.start_unix,
            reloads_ok: self.reloads_ok,
            reloads_refused: self.reloads_refused,
            services,
            flows_refused: self.hub.flows_refused(),
            offload: self.offload.as_ref().map(|k| OffloadReport {
                flows: k.flows as u64,
                flows_limit: u64::from(k.flows_limit),
                packets: k.packets,
                bytes: k.bytes,
            }),
        }
    }

    /// rtnetlink said something changed: take a new snapshot and, if a service's interface
    /// changed (address, index, presence), resolve the services against it and log each change.
    fn follow_interfaces(&mut self, watcher: &mut Watcher) {
        match watcher.drain() {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                self.log.error(format_args!("interface watch: {e}"));
                return;
            }
        }
        let newer = match Snapshot::read() {
            Ok(s) => s,
            Err(e) => {
                self.log.error(format_args!("reading interfaces: {e}"));
                return;
            }
        };
        let changes = self.active.changes(&newer);
        if changes.is_empty() {
            return;
        }
        let header_only = self.active.config.settings.header_only;
        let before = header_only.then(|| self.active.policy(self.queues).rewrite);
        self.active.follow(newer);
        let policy = header_only.then(|| self.active.policy(self.queues));
        if let (Some(before), Some(policy)) = (before, policy)
            && policy.rewrite != before
        {
            // The reply map holds the `*` addresses the table now answers from: installed
            // before the queue threads decide by the new table.
            if let Err(e) = self.nft.install(&policy) {
                self.log.error(format_args!(
                    "header-only reply map not updated ({e}): long replies of `*` services \
                     are dropped until the next install"
                ));
            }
        }
        let settings = &self.active.config.settings;
        self.hub.publish(
            Arc::clone(&self.active.table),
            None,
            settings.mark,
            Rate::of(settings),
        );
        for c in &changes {
            self.log.info(format_args!("interface change: {c}"));
        }
        self.active.report(&mut self.log, &self.opts.config);
    }

    /// [`Daemon::reload`], logged the same way whoever asked (`via`: SIGHUP, `netnat reload`).
    fn logged_reload(&mut self, via: &str) -> Result<String, Response> {
        let result = self.reload();
        match &result {
            Ok(_) => self.reloads_ok += 1,
            Err(_) => self.reloads_refused += 1,
        }
        match &result {
            Ok(msg) => self.log.info(format_args!("{msg} ({via})")),
            Err(r) => {
                for line in r.body.lines() {
                    self.log
                        .error(format_args!("reload refused ({via}): {line}"));
                }
            }
        }
        result
    }

    /// SIGHUP and `netnat reload`: the configuration file again, all or nothing.
    fn reload(&mut self) -> Result<String, Response> {
        let config =
            config::load_config(&self.opts.config).map_err(|e| changes::reload_refused(&e))?;
        // The metrics listener is bound once, at start: a new address waits for a restart,
        // and the reload says so (it is no reason to refuse the services).
        let metrics_was = self.metrics_listen;
        let metrics_now = config.settings.metrics_listen;
        self.apply(config, None)?;
        let mut msg = format!("reloaded: {} services", self.active.config.services.len());
        if metrics_now != metrics_was {
            let shown =
                |a: Option<std::net::SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
            msg.push_str(&format!(
                "; metrics-listen {} takes effect at the next restart (now {})",
                shown(metrics_now),
                shown(metrics_was)
            ));
        }
        Ok(msg)
    }

    /// Installs a new service set: rules and lookup table together, or nothing changes.
    /// `new` is the id of an added service, which is refused if the table leaves it out. The
    /// TCP services the new set no longer has go on draining (see [`Drained`]).
    fn apply(&mut self, config: Config, new: Option<usize>) -> Result<(), Response> {
        let draining = self.next_draining(&config);
        self.install(config, draining, new)
    }

    fn next_draining(&self, config: &Config) -> Vec<Drained> {
        changes::next_draining(
            &self.active.config,
            &self.active.draining,
            config,
            wall_secs(),
        )
    }

    /// Installs the rules again when the leak guard's table is gone (an `nft flush ruleset`
    /// removes it while netnat's own table, which the kernel protects, stays): without it, the
    /// replies of a service removed later, or of connections when netnat stops, would leak.
    fn keep_guard(&mut self) {
        match self.nft.guard_present() {
            Ok(true) => {}
            Ok(false) => {
                let draining = self.active.draining.clone();
                let result = self.install(self.active.config.clone(), draining, None);
                match result {
                    Ok(()) => self.log.warn(
                        "the leak guard (table inet netnat_guard) was deleted from outside \
                         (nft flush ruleset?): installed again",
                    ),
                    Err(r) => self.log.error(format_args!(
                        "the leak guard (table inet netnat_guard) is gone and could not be \
                         installed again: {}",
                        r.body.trim()
                    )),
                }
            }
            Err(e) => self
                .log
                .error(format_args!("looking for the leak guard: {e}")),
        }
    }

    /// Forgets the draining services that have been idle for `drain-idle` seconds (checked
    /// about once a second by the main loop): their rules and table entries go.
    fn expire_drained(&mut self) {
        if self.active.draining.is_empty() {
            return;
        }
        let idle_max = u64::from(self.active.config.settings.drain_idle_secs);
        let now = wall_secs();
        let first = self.active.config.services.len();
        let idle: Vec<bool> = {
            let stats = self.hub.stats();
            self.active
                .draining
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let seen = stats.service(first + i).last_seen;
                    now.saturating_sub(d.since.max(seen)) >= idle_max
                })
                .collect()
        };
        if !idle.contains(&true) {
            return;
        }
        let (mut gone, mut keep) = (Vec::new(), Vec::new());
        for (d, &idle) in self.active.draining.iter().zip(&idle) {
            if idle {
                gone.push(d.clone());
            } else {
                keep.push(d.clone());
            }
        }
        match self.install(self.active.config.clone(), keep, None) {
            Ok(()) => {
                for d in &gone {
                    self.log.info(format_args!(
                        "service drained (idle {idle_max} s): {}",
                        d.service
                    ));
                }
            }
            Err(r) => self
                .log
                .error(format_args!("drained services stay: {}", r.body.trim())),
        }
    }

    /// Installs `config` with `draining`: rules and lookup table together, or nothing changes.
    fn install(
        &mut self,
        config: Config,
        draining: Vec<Drained>,
        new: Option<usize>,
    ) -> Result<(), Response> {
        if let Some(r) =
            changes::restart_needed(&self.active.config.settings, &config.settings, self.queues)
        {
            return Err(r);
        }
        let next = Active::build(config, draining, Some(&self.active.table))
            .map_err(|e| Response::err(Outcome::System, e.to_string()))?;
        if let Some(id) = new
            && let Some(c) = next.table.conflicts().iter().find(|c| c.id == id)
        {
            return Err(Response::err(
                Outcome::Config,
                format!(
                    "refused, nothing changed: its {:?} endpoint, as the interface's address \
                     resolves now, is taken by the running {}",
                    c.direction, next.config.services[c.with].service
                ),
            ));
        }
        let policy = next.policy(self.queues);
        self.nft.install(&policy).map_err(|e| {
            Response::err(Outcome::System, format!("refused, rules unchanged: {e}"))
        })?;
        drop(policy);
        // Rules and lookup table change together, as far as the queue threads can tell: they
        // decide each batch by one published generation or the next.
        next.report(&mut self.log, &self.opts.config);
        for d in next
            .draining
            .iter()
            .filter(|d| !self.active.draining.contains(d))
        {
            self.log.info(format_args!(
                "service removed, draining its established connections (until idle {} s): {}",
                next.config.settings.drain_idle_secs, d.service
            ));
        }
        self.hub.publish(
            Arc::clone(&next.table),
            Some(next.services()),
            next.config.settings.mark,
            Rate::of(&next.config.settings),
        );
        self.busy_poll
            .store(next.config.settings.busy_poll_us, Ordering::Relaxed);
        self.active = next;
        Ok(())
    }

    /// `service add`: the running set plus one, checked like a configuration file.
    fn add(&mut self, words: &[String], save: bool) -> Result<String, Response> {
        let changes::Edit { lines, service } = changes::added(&self.active.config.services, words)?;
        let saving = if save {
            Some(self.prepare_save(|text| (save::with_added(text, &service), 1))?)
        } else {
            None
        };
        let new = lines.len() - 1;
        let config = Config {
            services: lines,
            settings: self.active.config.settings.clone(),
        };
        self.apply(config, Some(new))?;
        self.log.info(format_args!("service added: {service}"));
        let mut msg = format!("added: {service}\n");
        self.finish_save(saving, &mut msg, "added")?;
        Ok(msg)
    }

    /// `service del`: the running service equal to the words (flags compared only when given).
    fn del(&mut self, words: &[String], save: bool) -> Result<String, Response> {
        let changes::Edit { lines, service } =
            changes::deleted(&self.active.config.services, words)?;
        let saving = if save {
            Some(self.prepare_save(|text| save::with_deleted(text, &service))?)
        } else {
            None
        };
        let config = Config {
            services: lines,
            settings: self.active.config.settings.clone(),
        };
        self.apply(config, None)?;
        self.log.info(format_args!("service deleted: {service}"));
        let mut msg = format!("deleted: {service}\n");
        self.finish_save(saving, &mut msg, "deleted")?;
        Ok(msg)
    }

    /// Reads the configuration file and computes its edited text; refuses (before anything
    /// changes) when the file cannot be read or would not load afterwards.
    fn prepare_save(
        &self,
        edit: impl FnOnce(&str) -> (String, usize),
    ) -> Result<(PathBuf, String, usize), Response> {
        let io = |e: save::SaveError| match e {
            save::SaveError::Invalid(_) => Response::err(
                Outcome::Config,
                format!("refused, nothing changed (--save): {e}"),
            ),
            save::SaveError::Unsafe(_) | save::SaveError::Io { .. } => Response::err(
                Outcome::System,
                format!("refused, nothing changed (--save): {e}"),
            ),
        };
        let (real, text) = save::read(&self.opts.config).map_err(io)?;
        let (edited, count) = edit(&text);
        if count > 0 {
            save::check(&self.opts.config, &edited).map_err(io)?;
        }
        Ok((real, edited, count))
    }

    /// Writes the edited file after the change is live; a failure here is reported with the
    /// change itself standing.
    fn finish_save(
        &mut self,
        saving: Option<(PathBuf, String, usize)>,
        msg: &mut String,
        what: &str,
    ) -> Result<(), Response> {
        let Some((real, text, count)) = saving else {
            return Ok(());
        };
        let file = self.opts.config.display();
        if count == 0 {
            msg.push_str(&format!("not in {file}: the file stays as it is\n"));
            return Ok(());
        }
        match save::write_atomic(&real, &text) {
            Ok(()) => {
                msg.push_str(&format!("saved to {file}\n"));
                Ok(())
            }
            Err(e) => {
                self.log.error(format_args!("saving {file}: {e}"));
                Err(Response::err(
                    Outcome::Unsaved,
                    format!(
                        "{msg}applied live, NOT saved: the service is {what} in the running \
                         netnat, but {file} was not saved ({e}); a reload or restart undoes it"
                    ),
                ))
            }
        }
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Waits until one of `fds` is ready or `timeout` passes; the result is in their `revents`.
fn poll(fds: &mut [libc::pollfd], timeout: Duration) {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd structs for the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        // EINTR (a signal): nothing is ready; the loop looks at the signal flags.
        for f in fds.iter_mut() {
            f.revents = 0;
        }
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

    /// Empties the wake-up pipe after a signal.
    fn drain_pipe(&self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = (&self.wake).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn daemon_errors_read_as_before_and_keep_their_source() {
        let e = sys(
            "binding the queue",
            std::io::Error::from_raw_os_error(libc::EPERM),
        );
        assert_eq!(
            e.to_string(),
            "binding the queue: Operation not permitted (os error 1)"
        );
        let io = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(io.and_then(std::io::Error::raw_os_error), Some(libc::EPERM));
        let errors = config::parse_config("queue x\nbogus\n", "f").unwrap_err();
        let e = DaemonError::Config(errors);
        assert_eq!(
            e.to_string().lines().collect::<Vec<_>>(),
            [
                "f:1:7: expected a queue number 0-65535, found \"x\"",
                "f:2:1: unknown directive \"bogus\" (known directives: service, queue, queues, \
                 busy-poll, drain-idle, mark, header-only, rewrite-mark, offload, offload-flows, syslog-facility, \
                 syslog-priority, log-rate, \
                 log-burst, metrics-listen)",
            ]
        );
    }
}
