//! `netnat run`: start-up order, the packet loop, signals, reload, the control socket and
//! shutdown.
//!
//! Order matters: the configuration is validated first (a bad file installs nothing), the
//! control socket is bound next (a second daemon on the same socket is refused before it
//! touches the kernel), the queue is bound and configured before any rule can send packets to
//! it, and on shutdown the table is removed before the queue is drained, so every packet that
//! was queued gets its verdict.
//!
//! One thread does everything: it polls the queue, the signal pipe and the control socket
//! together, handles packets in batches and serves control requests between batches, so the
//! counters need no lock. Every change of the service set (SIGHUP, `reload`, `service add`,
//! `service del`) goes through [`Daemon::apply`]: validated like a configuration file, rules
//! and lookup table replaced together, or nothing changes. Services equal to running ones keep
//! their counters and UDP flow memory.

use std::fmt;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::config::{self, Config, ConfigError, Service, ServiceLine};
use crate::control::{self, Outcome, Request, Response, Server};
use crate::datapath;
use crate::iface::{Change, Snapshot, Watcher};
use crate::log::Logger;
use crate::monitor::{Clock, Monitor};
use crate::nft::{NftSession, Policy, QueueExprKind};
use crate::queue::{Queue, QueueOptions};
use crate::save;
use crate::service::ServiceTable;
use crate::status::{Report, ServiceReport, ServiceState};

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

/// The running service set: the configuration and its lookup table, replaced as a whole.
struct Active {
    config: Config,
    table: Arc<ServiceTable>,
    /// The interfaces the table was resolved against (`*` addresses, ifindexes).
    ifaces: Snapshot,
}

impl Active {
    fn build(config: Config) -> Result<Active, DaemonError> {
        let ifaces = Snapshot::read().map_err(|e| sys("reading interfaces", e))?;
        let table = ServiceTable::build(&services_of(&config), &ifaces);
        Ok(Active {
            config,
            table: Arc::new(table),
            ifaces,
        })
    }

    /// The service interfaces' changes between the table's snapshot and `newer`.
    fn changes(&self, newer: &Snapshot) -> Vec<Change> {
        let mut names: Vec<&str> = self
            .config
            .services
            .iter()
            .map(|l| l.service.iface.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        self.ifaces.diff(newer, &names)
    }

    /// Resolves the same services against `ifaces`: `*` follows the interface's new address,
    /// a re-created interface its new index. Rules do not change (they match by name, and `*`
    /// by `fib daddr . iif type local`), so only the lookup table is swapped.
    fn follow(&mut self, ifaces: Snapshot) {
        self.table = Arc::new(ServiceTable::build(&services_of(&self.config), &ifaces));
        self.ifaces = ifaces;
    }

    /// Logs the services that wait for their interface and those left out by a conflict.
    fn report(&self, log: &mut Logger) {
        let services = &self.config.services;
        for &id in self.table.waiting() {
            log.warn(format_args!(
                "service waits for its interface or address: {}",
                services[id].service
            ));
        }
        // A `*` service can meet a fixed one on the same address only once `*` is resolved.
        for c in self.table.conflicts() {
            log.warn(format_args!(
                "service left out, its {:?} endpoint is taken by {}: {}",
                c.direction, services[c.with].service, services[c.id].service
            ));
        }
    }
}

/// Everything the packet loop owns besides the queue.
struct Daemon<'a> {
    opts: &'a RunOptions,
    active: Active,
    monitor: Monitor,
    nft: NftSession,
    kind: QueueExprKind,
    log: Logger,
    started: Instant,
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
    let active = Active::build(config)?;
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
    active.report(&mut log);

    let signals = Signals::register().map_err(|e| sys("registering signals", e))?;
    let control_note = match &server {
        Some(s) => format!(", control socket {}", s.path().display()),
        None => String::new(),
    };
    log.info(format_args!(
        "ready: {} services on queue {queue_num} ({kind}){control_note}",
        active.config.services.len()
    ));
    if opts.log_stderr {
        // Tests and scripts wait for this line; with syslog it is in the log above.
    } else {
        eprintln!("netnat: ready");
    }

    let mut d = Daemon {
        opts,
        monitor: Monitor::new(services_of(&active.config)),
        active,
        nft,
        kind,
        log,
        started: Instant::now(),
    };
    let mut server = server;
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(4 + control::MAX_CONNECTIONS);
    let mut next_volume = Instant::now() + opts.volume_interval;

    loop {
        fds.clear();
        fds.push(pollfd(queue.as_raw_fd()));
        fds.push(pollfd(signals.wake.as_raw_fd()));
        // Slot 2 is the interface watcher's (or an fd poll ignores), control sockets follow.
        fds.push(pollfd(watcher.as_ref().map_or(-1, |w| w.as_raw_fd())));
        if let Some(s) = &server {
            s.poll_fds(&mut fds);
        }
        let timeout = next_volume
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        poll(&mut fds, timeout);
        if fds[1].revents != 0 {
            signals.drain_pipe();
        }
        if signals.stop.load(Ordering::Relaxed) {
            break;
        }
        if signals.reload.swap(false, Ordering::Relaxed) {
            match d.reload() {
                Ok(msg) => d.log.info(msg),
                Err(r) => {
                    for line in r.body.lines() {
                        d.log.error(format_args!("reload refused: {line}"));
                    }
                }
            }
        }
        if fds[2].revents != 0
            && let Some(w) = &mut watcher
        {
            d.follow_interfaces(w);
        }
        if fds[0].revents & libc::POLLIN != 0 {
            drain(&mut queue, &mut d, 64);
        }
        if let Some(s) = &mut server {
            // Only when the socket has news or a connection is open (its deadline runs): a busy
            // packet loop wakes up often and need not try accept() each time.
            if s.busy() || fds[3..].iter().any(|f| f.revents != 0) {
                // Between batches: the counters are at rest while a request reads them.
                s.serve(&mut |req| d.handle(req, &queue));
            }
        }
        let now = Instant::now();
        if now >= next_volume {
            d.monitor.volume_records(&mut d.log);
            next_volume += opts.volume_interval;
            if next_volume <= now {
                next_volume = now + opts.volume_interval;
            }
        }
    }

    d.log
        .info("stopping: removing the table and draining the queue");
    drop(server); // no more requests; the socket file goes
    let removed = d.nft.remove();
    // Packets queued before the table went away still get their verdicts.
    for _ in 0..100 {
        if !queue.wait(Duration::from_millis(20)).unwrap_or(false) {
            break;
        }
        drain(&mut queue, &mut d, 1000);
    }
    removed.map_err(|e| sys("removing the table", e))?;
    d.log.info("stopped");
    Ok(())
}

/// Handles every packet waiting now, batch by batch (bounded so signals are seen).
fn drain(queue: &mut Queue, d: &mut Daemon<'_>, max_batches: usize) {
    let table = Arc::clone(&d.active.table);
    let mark = d.active.config.settings.mark;
    for _ in 0..max_batches {
        // The clocks are read once per batch, not per packet.
        let now = Clock {
            ms: d.started.elapsed().as_millis() as u64,
            wall: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |t| t.as_secs()),
        };
        let monitor = &mut d.monitor;
        let log = &mut d.log;
        let mut handler = |pkt: &mut crate::queue::Packet<'_>| {
            let (decision, event) = datapath::handle(&table, mark, pkt);
            monitor.observe(event, pkt, now, log);
            decision
        };
        match queue.process_batch(&mut handler) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                d.log.error(format_args!("queue: {e}"));
                return;
            }
        }
    }
}

impl Daemon<'_> {
    /// Answers one control request.
    fn handle(&mut self, req: Request, queue: &Queue) -> Response {
        let result = match req {
            Request::Status { json } => {
                let r = self.report(queue);
                Ok(if json { r.json() } else { r.text() })
            }
            Request::List => Ok(self
                .active
                .config
                .services
                .iter()
                .map(|l| format!("{}\n", l.service))
                .collect()),
            Request::Reload => self.reload(),
            Request::Add { save, words } => self.add(&words, save),
            Request::Del { save, words } => self.del(&words, save),
        };
        match result {
            Ok(body) => Response::ok(body),
            Err(r) => r,
        }
    }

    fn report(&self, queue: &Queue) -> Report {
        let table = &self.active.table;
        let stats = self.monitor.stats();
        let services = self
            .monitor
            .services()
            .iter()
            .enumerate()
            .map(|(id, s)| ServiceReport {
                line: s.to_string(),
                iface: s.iface.clone(),
                state: match table.entry(id) {
                    Some(e) => ServiceState::Active { apparent: e.app },
                    None if table.waiting().contains(&id) => ServiceState::Waiting,
                    None => ServiceState::Conflict,
                },
                counters: stats.service(id),
            })
            .collect();
        Report {
            queue: queue.num(),
            expression: match self.kind {
                QueueExprKind::Native => "native",
                QueueExprKind::Compat => "compat",
            }
            .to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            queue_stats: queue.stats(),
            unattributed: stats.unattributed,
            passed: stats.passed,
            log_lost: self.log.lost(),
            services,
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
        for c in &changes {
            self.log.info(format_args!("interface change: {c}"));
        }
        self.active.follow(newer);
        self.active.report(&mut self.log);
    }

    /// SIGHUP and `netnat reload`: the configuration file again, all or nothing.
    fn reload(&mut self) -> Result<String, Response> {
        let config = config::load_config(&self.opts.config).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            Response::err(Outcome::Config, lines.join("\n"))
        })?;
        self.apply(config, None)?;
        Ok(format!(
            "reloaded: {} services",
            self.active.config.services.len()
        ))
    }

    /// Installs a new service set: rules and lookup table together, or nothing changes.
    /// `new` is the id of an added service, which is refused if the table leaves it out.
    fn apply(&mut self, config: Config, new: Option<usize>) -> Result<(), Response> {
        if config.settings.queue != self.active.config.settings.queue {
            return Err(Response::err(
                Outcome::Config,
                "changing the queue number needs a restart",
            ));
        }
        let next =
            Active::build(config).map_err(|e| Response::err(Outcome::System, e.to_string()))?;
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
        let policy = Policy::new(&services_of(&next.config), next.config.settings.queue);
        self.nft.install(&policy).map_err(|e| {
            Response::err(Outcome::System, format!("refused, rules unchanged: {e}"))
        })?;
        next.report(&mut self.log);
        self.monitor.replace(services_of(&next.config));
        self.active = next;
        Ok(())
    }

    /// `service add`: the running set plus one, checked like a configuration file.
    fn add(&mut self, words: &[String], save: bool) -> Result<String, Response> {
        let service = parse_words(words)?;
        let mut lines = self.active.config.services.clone();
        lines.push(ServiceLine {
            line: 0,
            service: service.clone(),
        });
        let services: Vec<Service> = lines.iter().map(|l| l.service.clone()).collect();
        check_set(&services)?;
        let saving = if save {
            Some(self.prepare_save(|text| (save::with_added(text, &service), 1))?)
        } else {
            None
        };
        let config = Config {
            services: lines,
            settings: self.active.config.settings.clone(),
        };
        self.apply(config, Some(services.len() - 1))?;
        self.log.info(format_args!("service added: {service}"));
        let mut msg = format!("added: {service}\n");
        self.finish_save(saving, &mut msg, "added")?;
        Ok(msg)
    }

    /// `service del`: the running service equal to the words (flags compared only when given).
    fn del(&mut self, words: &[String], save: bool) -> Result<String, Response> {
        let target = parse_words(words)?;
        let flags_given = {
            let is = |i: usize, kw: &str| words.get(i).is_some_and(|w| w.eq_ignore_ascii_case(kw));
            let keyword = is(0, "service") && (!is(1, "port") || is(2, "port"));
            words.len() - usize::from(keyword) >= 8
        };
        let lines = &self.active.config.services;
        let Some(index) = lines.iter().position(|l| {
            let s = &l.service;
            if flags_given {
                *s == target
            } else {
                *s == Service {
                    flags: s.flags,
                    ..target.clone()
                }
            }
        }) else {
            return Err(Response::err(
                Outcome::Config,
                format!(
                    "no running service matches: {}",
                    describe(&target, flags_given)
                ),
            ));
        };
        let service = lines[index].service.clone();
        let mut lines = lines.clone();
        lines.remove(index);
        let services: Vec<Service> = lines.iter().map(|l| l.service.clone()).collect();
        check_set(&services)?;
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
            save::SaveError::Io(_) => Response::err(
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
                    Outcome::System,
                    format!(
                        "{msg}the service is {what} in the running netnat, but {file} was not saved: {e}"
                    ),
                ))
            }
        }
    }
}

/// The service words of a request, parsed by the same grammar as the file.
fn parse_words(words: &[String]) -> Result<Service, Response> {
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    config::parse_service_words(&refs).map_err(|e| {
        let at = refs
            .get(e.column - 1)
            .map_or(String::from("the end"), |w| format!("{w:?}"));
        Response::err(
            Outcome::Usage,
            format!("word {} ({at}): {}", e.column, e.message),
        )
    })
}

fn describe(s: &Service, flags_given: bool) -> String {
    let text = s.to_string();
    if flags_given {
        text
    } else {
        // The canonical form always ends with the flags; they were not part of the question.
        text.rsplit_once(' ')
            .map_or(text.clone(), |(rest, _)| rest.to_string())
    }
}

/// Checks a service set exactly as the configuration file would be checked (one service per
/// apparent endpoint, one apparent endpoint per actual endpoint, ...). Errors name the
/// services by their position in the running set, listed after the errors.
fn check_set(services: &[Service]) -> Result<(), Response> {
    let text: String = services.iter().map(|s| format!("{s}\n")).collect();
    let Err(errors) = config::parse_config(&text, "service set") else {
        return Ok(());
    };
    let mut body = String::from("refused, nothing changed:\n");
    let mut mentioned = Vec::new();
    for e in &errors {
        body.push_str(&format!("  {}\n", e.message));
        mentioned.push(e.line);
        // "lines 1 and 3 both claim ...": the other line is in the message.
        let words: Vec<&str> = e.message.split_whitespace().collect();
        for pair in words.windows(2) {
            if matches!(pair[0], "line" | "lines" | "and")
                && let Ok(n) = pair[1].parse::<usize>()
            {
                mentioned.push(n);
            }
        }
    }
    mentioned.sort_unstable();
    mentioned.dedup();
    for n in mentioned {
        if let Some(s) = n.checked_sub(1).and_then(|i| services.get(i)) {
            let role = if n == services.len() {
                "new or last"
            } else {
                "running"
            };
            body.push_str(&format!("  line {n} ({role}): {s}\n"));
        }
    }
    Err(Response::err(Outcome::Config, body))
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
