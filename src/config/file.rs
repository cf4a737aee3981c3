//! The configuration file: one directive per line.
//!
//! ```text
//! # comment                      whole-line, or trailing: `#` anywhere starts one
//! service ppp0 port * 80 TCP 192.168.1.10 8080 0x8000
//! queue 4747                     NFQUEUE number 0-65535, at most once
//! queues auto                    queues from `queue` on: 1-64 or auto (one per CPU), at most once
//! busy-poll 50                   µs a queue thread polls after work before it sleeps, 0-1000
//! drain-idle 300                 s a removed service's TCP connection may idle, 0-86400
//! mark 0x4e00                    nonzero hex u32, at most once
//! header-only on                 on|off: long packets' rewrite applied by the kernel, at most once
//! rewrite-mark 0x100             one hex bit, not in `mark`: header-only's request bit
//! offload off                    on|off: the kernel rewrites a flow after its first packet
//! offload-flows 65536            flows each offload set holds, 1-1048576
//! syslog-facility local2         kern|user|daemon|auth|local0..local7, at most once
//! syslog-priority info           emerg|alert|crit|err|warning|notice|info|debug, at most once
//! log-rate 100                   records/s per service and record class, 1-100000, at most once
//! log-burst 200                  records at once per service and record class, 1-100000
//! metrics-listen 127.0.0.1:9464  serve GET /metrics there (off by default), at most once
//! ```
//!
//! A `#` starts a comment wherever it stands, also right after a value (`8081#web`), as
//! netnat.conf(5) says; no value of the file can contain one (interface names with `#` are
//! refused by the grammar). Directive names are case-insensitive.
//!
//! Every error of the file is reported, each located as `file:line:column: message`, and any
//! error rejects the whole file: a half-loaded configuration would silently drop services.
//! Besides each line's own grammar, two checks span lines, because netnat translates each
//! packet on its own, with no connection state:
//! - one apparent endpoint (interface, protocol, address or `*`, port) has one service;
//! - one actual endpoint (interface, protocol, address, port) answers for one apparent
//!   endpoint, or a reply could not be mapped back.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::grammar::{self, Field, Word};
use super::{AppAddr, Config, Protocol, Service, ServiceLine, Settings};

/// Largest configuration file accepted: far beyond any real one, small enough to never hurt.
pub const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;
/// Longest line accepted (without its line ending).
pub const MAX_LINE_BYTES: usize = 4096;

/// The directives, in the order error messages list them.
pub const DIRECTIVES: [&str; 15] = [
    "service",
    "queue",
    "queues",
    "busy-poll",
    "drain-idle",
    "mark",
    "header-only",
    "rewrite-mark",
    "offload",
    "offload-flows",
    "syslog-facility",
    "syslog-priority",
    "log-rate",
    "log-burst",
    "metrics-listen",
];
/// Facilities accepted by `syslog-facility`.
pub const FACILITIES: [&str; 12] = [
    "kern", "user", "daemon", "auth", "local0", "local1", "local2", "local3", "local4", "local5",
    "local6", "local7",
];
/// Priorities accepted by `syslog-priority`.
pub const PRIORITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// An error located in a configuration file: `file:line:column: message`.
///
/// Lines and columns are 1-based; columns count characters. Errors about the file as a whole
/// (cannot be read, too large) are at line 0, column 0, and shown as `file: message`: there
/// is no place in the file to point at. The place, the field and, for an error spanning lines,
/// the other line are data, so that a caller (the daemon naming the services of a refused
/// change) need not read them back out of the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The field the error is about; `None` for the line or file as a whole.
    pub field: Option<Field>,
    /// For an error between two lines: what clashes, and with which earlier line.
    pub conflict: Option<Conflict>,
    pub message: String,
}

/// Two lines of a file that may not stand together; the error is on the later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub kind: ConflictKind,
    /// The earlier line: the first to claim the endpoint or to give the setting.
    pub line: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictKind {
    /// Both lines claim one apparent endpoint.
    ApparentEndpoint,
    /// Both lines map to one actual endpoint.
    ActualEndpoint,
    /// Both lines give the same setting.
    SettingTwice,
}

impl ConfigError {
    /// The lines the error is about: its own, and the earlier one of a conflict.
    pub fn lines(&self) -> Vec<usize> {
        let mut lines: Vec<usize> = self.conflict.iter().map(|c| c.line).collect();
        lines.push(self.line);
        lines
    }
}

// Written by hand: the two shapes (with and without a place) are more than one format string
// of `thiserror` can say, and the error has no source to declare.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}", self.file, self.message);
        }
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// Parses a whole configuration; any error means no services at all.
pub fn parse_config(text: &str, origin: &str) -> Result<Config, Vec<ConfigError>> {
    let mut parser = Parser::new(origin);
    if text.len() > MAX_FILE_BYTES {
        parser.whole_file(too_large(text.len()));
        return parser.finish();
    }
    for (number, line) in (1..).zip(text.split('\n')) {
        parser.line(number, line.as_bytes());
    }
    parser.finish()
}

/// Reads and parses a configuration file. I/O problems come back as errors at line 0; lines
/// that are not UTF-8 are reported one by one, with the other lines still checked. A file that
/// users other than its owner may change (see [`check_not_writable_by_others`]) is refused
/// before it is read.
pub fn load_config(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let origin = path.display().to_string();
    let mut parser = Parser::new(&origin);
    match read_limited(path) {
        Ok(bytes) => {
            for (number, line) in (1..).zip(bytes.split(|&b| b == b'\n')) {
                parser.line(number, line);
            }
        }
        Err(message) => parser.whole_file(message),
    }
    parser.finish()
}

/// Reads at most one byte more than the limit, so that a huge or endless file (a device, a
/// FIFO, a file still growing) cannot exhaust memory whatever its metadata says.
fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let describe = |e: std::io::Error| {
        let what = match e.kind() {
            std::io::ErrorKind::NotFound => "file not found".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            std::io::ErrorKind::IsADirectory => "it is a directory".to_owned(),
            _ => e.to_string(),
        };
        format!("cannot read: {what}")
    };
    let file = std::fs::File::open(path).map_err(describe)?;
    if let Ok(meta) = file.metadata() {
        // A directory is reported as such by the read below, whatever its mode (/tmp is 1777).
        if !meta.is_dir() {
            check_not_writable_by_others(path, meta.permissions().mode())?;
        }
        if meta.len() > MAX_FILE_BYTES as u64 {
            return Err(too_large(usize::try_from(meta.len()).unwrap_or(usize::MAX)));
        }
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(describe)?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(format!(
            "the configuration is larger than the limit of {MAX_FILE_BYTES} bytes (16 MiB)"
        ));
    }
    Ok(bytes)
}

/// Refuses a configuration that any local user could change: the file decides which packets
/// netnat (a CAP_NET_ADMIN daemon) rewrites and where to, so whoever can write it controls the
/// router's mappings. Refused are a world-writable file (mode o+w) and a file below a
/// world-writable directory without the sticky bit (anyone may then rename or replace the file,
/// or a directory on its path). `file_mode` is the mode of the opened file itself, taken from
/// its descriptor, so that a file swapped in after the check is not the one judged.
///
/// Both the path as given (its parent directories, symbolic links followed per component) and
/// its resolved form are checked: a link in a safe directory to a file in an unsafe one, and a
/// link in an unsafe directory, are both refused.
pub fn check_not_writable_by_others(path: &Path, file_mode: u32) -> Result<(), String> {
    if file_mode & 0o002 != 0 {
        return Err(format!(
            "refusing the configuration file {}: it is world-writable (mode {:04o}), so any \
             user could change what netnat maps; make it writable by root only \
             (chmod o-w {})",
            path.display(),
            file_mode & 0o7777,
            path.display()
        ));
    }
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let mut dirs: Vec<PathBuf> = absolute
        .ancestors()
        .skip(1)
        .map(Path::to_path_buf)
        .collect();
    if let Ok(real) = std::fs::canonicalize(path) {
        dirs.extend(real.ancestors().skip(1).map(Path::to_path_buf));
    }
    for dir in dirs {
        if dir.as_os_str().is_empty() {
            continue;
        }
        // An ancestor that cannot be inspected would already have stopped the open.
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Err(format!(
                "refusing the configuration file {}: the directory {} on its path is \
                 world-writable without the sticky bit (mode {:04o}), so any user could \
                 replace the file; make the directory writable by root only (chmod o-w {})",
                path.display(),
                dir.display(),
                mode & 0o7777,
                dir.display()
            ));
        }
    }
    Ok(())
}

/// `on` or `off`, in any case.
fn on_off(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

fn too_large(len: usize) -> String {
    format!(
        "the configuration is {len} bytes, larger than the limit of {MAX_FILE_BYTES} bytes (16 MiB)"
    )
}

/// An apparent address and the protocol, on an interface: its ports are claimed by services.
/// `*` is its own address (per family): whether it equals a fixed address on the same
/// interface is only known at run time (the service table sees it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct AppKey {
    iface: String,
    protocol: Protocol,
    addr: AppAddr,
    v6: bool,
}

/// An actual address as a reply leaving through the public interface shows it, with the
/// protocol: its ports are claimed by services.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ActKey {
    iface: String,
    protocol: Protocol,
    addr: IpAddr,
}

/// An apparent address and its ports (first, last), as an actual claim names them.
type AppPorts = (AppAddr, (u16, u16));

/// Port ranges claimed on one key, disjoint: first port -> (last port, what claimed them).
type Claims<T> = BTreeMap<u16, (u16, T)>;

/// The ports of `ports` (first, last) that a claim already holds, and that claim's data.
fn overlap<T>(claims: &Claims<T>, ports: (u16, u16)) -> Option<((u16, u16), &T)> {
    // The claims are disjoint: only the last one starting at or before `last` can reach
    // back into the range.
    let (&start, (end, data)) = claims.range(..=ports.1).next_back()?;
    (*end >= ports.0).then(|| ((start.max(ports.0), (*end).min(ports.1)), data))
}

/// A port, or a range `first-last`.
fn show_ports((first, last): (u16, u16)) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

/// Issue 13's forms that the kernel side cannot install yet: the first one the service uses,
/// at the column where it is written, with the message saying so. Nothing that cannot work
/// is ever loaded: `netnat check`, start, reload and `service add` all come through here.
/// Installed: port ranges, several actual servers and `from` lists (a range onto one actual
/// port with `header-only off` only, see [`Parser::finish`]). Not yet: `hairpin`.
fn not_installed(s: &Service, words: &[Word<'_>]) -> Option<(usize, Field, String)> {
    let keyword = |kw: &str| {
        words
            .iter()
            .skip(8)
            .find(|w| w.text.eq_ignore_ascii_case(kw))
            .map_or(0, |w| w.column)
    };
    if s.hairpin {
        return Some((
            keyword("hairpin"),
            Field::Hairpin,
            format!("hairpin is not installed yet: {NOT_YET}"),
        ));
    }
    None
}

/// Why [`not_installed`] refuses a form.
const NOT_YET: &str = "this netnat reads the form but has no rules for it in the kernel";

/// Collects everything a file says, and every error in it.
struct Parser {
    origin: String,
    errors: Vec<ConfigError>,
    services: Vec<ServiceLine>,
    settings: Settings,
    /// Line and column of the `queues` value (checked against `queue` at the end).
    queues_at: Option<(usize, usize)>,
    /// Where `mark` and `rewrite-mark` were set, for the error when they overlap.
    mark_at: Option<(usize, usize)>,
    rewrite_mark_at: Option<(usize, usize)>,
    /// Where `offload on` and `header-only` were set, for the error when offload lacks it.
    offload_at: Option<(usize, usize)>,
    header_only_at: Option<(usize, usize)>,
    /// Line and column (of the actual port) of each range onto one port: they need
    /// `header-only off`, which may come later in the file.
    many_to_one_at: Vec<(usize, usize)>,
    /// Line on which each setting directive was first given.
    set_on: HashMap<&'static str, usize>,
    /// The line claiming each apparent port.
    apparent: HashMap<AppKey, Claims<usize>>,
    /// The line mapping to each actual port, with the apparent address and ports it maps.
    actual: HashMap<ActKey, Claims<(usize, AppPorts)>>,
}

impl Parser {
    fn new(origin: &str) -> Parser {
        Parser {
            origin: origin.to_owned(),
            errors: Vec::new(),
            services: Vec::new(),
            settings: Settings::default(),
            set_on: HashMap::new(),
            queues_at: None,
            mark_at: None,
            rewrite_mark_at: None,
            offload_at: None,
            header_only_at: None,
            many_to_one_at: Vec::new(),
            apparent: HashMap::new(),
            actual: HashMap::new(),
        }
    }

    fn error(&mut self, line: usize, column: usize, message: String) {
        self.push(line, column, None, None, message);
    }

    fn push(
        &mut self,
        line: usize,
        column: usize,
        field: Option<Field>,
        conflict: Option<Conflict>,
        message: String,
    ) {
        self.errors.push(ConfigError {
            file: self.origin.clone(),
            line,
            column,
            field,
            conflict,
            message,
        });
    }

    /// An error about the value of the setting `name`.
    fn bad_value(&mut self, name: &'static str, line: usize, column: usize, message: String) {
        self.push(line, column, Some(Field::Setting(name)), None, message);
    }

    fn whole_file(&mut self, message: String) {
        self.error(0, 0, message);
    }

    fn finish(mut self) -> Result<Config, Vec<ConfigError>> {
        if let (Some(n), Some(&(line, column))) = (self.settings.queues, self.queues_at.as_ref()) {
            let last = u32::from(self.settings.queue) + u32::from(n) - 1;
            if last > u32::from(u16::MAX) {
                self.bad_value(
                    "queues",
                    line,
                    column,
                    format!(
                        "{n} queues from queue {} would end at {last}, past the last queue \
                         number 65535",
                        self.settings.queue
                    ),
                );
            }
        }
        let rw = self.settings.rewrite_mark;
        // Below the rewrite bit: two bits of address slot, and with offload the offload bit.
        let (below, what) = if self.settings.offload {
            (3, "three bits")
        } else {
            (2, "two bits")
        };
        let borrowed = (0..=below).fold(0, |b, i| b | rw >> i);
        if self.settings.offload && rw < 8 {
            let (line, column) = self.rewrite_mark_at.or(self.offload_at).unwrap_or((0, 0));
            self.bad_value(
                "rewrite-mark",
                line,
                column,
                format!(
                    "rewrite-mark {rw:#x} leaves no room for the three bits below it that \
                     offload uses: choose a bit from 0x8 up"
                ),
            );
        } else if self.settings.header_only && borrowed & self.settings.mark != 0 {
            // The bit would be set by every translating verdict: the kernel would rewrite
            // packets netnat had rewritten already.
            let (line, column) = self.rewrite_mark_at.or(self.mark_at).unwrap_or((0, 0));
            self.bad_value(
                "rewrite-mark",
                line,
                column,
                format!(
                    "rewrite-mark {rw:#x} (with the {what} below it, {borrowed:#x}) overlaps \
                     mark {:#x}: choose a bit outside it",
                    self.settings.mark
                ),
            );
        }
        if self.settings.offload && !self.settings.header_only {
            // Offloaded packets are rewritten by the header-only path's maps and chains.
            let (line, column) = self.offload_at.unwrap_or((0, 0));
            let at = match self.header_only_at {
                Some((l, _)) => format!(" (line {l})"),
                None => String::new(),
            };
            self.bad_value(
                "offload",
                line,
                column,
                format!(
                    "offload on needs header-only on{at}: offloaded packets are rewritten by \
                     the header-only path's rules"
                ),
            );
        }
        if self.settings.header_only {
            for (line, column) in std::mem::take(&mut self.many_to_one_at) {
                self.push(
                    line,
                    column,
                    Some(Field::ActPort),
                    None,
                    "a port range onto one actual port needs \"header-only off\": the \
                     kernel's header-only maps cannot tell which apparent port a long reply \
                     shows (only netnat's flow memory can)"
                        .into(),
                );
            }
        }
        if self.errors.is_empty() {
            Ok(Config {
                services: self.services,
                settings: self.settings,
            })
        } else {
            Err(self.errors)
        }
    }

    /// One raw line, without its `\n` (a `\r` before it is a CRLF ending and is dropped).
    fn line(&mut self, number: usize, raw: &[u8]) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                let good = &raw[..e.valid_up_to()];
                // The valid prefix is UTF-8 by definition; count its characters for the column.
                let column = std::str::from_utf8(good).map_or(1, |g| g.chars().count() + 1);
                self.error(number, column, "the line is not valid UTF-8".into());
                return;
            }
        };
        if text.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let column = text[..cut].chars().count() + 1;
            self.error(
                number,
                column,
                format!(
                    "the line is {} bytes long, longer than the limit of {MAX_LINE_BYTES} bytes",
                    text.len()
                ),
            );
            return;
        }
        // Some editors on other systems start a UTF-8 file with a byte order mark; it is
        // invisible there, so it is no part of the first word (nor of its columns).
        let text = if number == 1 {
            text.strip_prefix('\u{feff}').unwrap_or(text)
        } else {
            text
        };
        // The comment is cut before the words are split, so columns stay those of the line.
        let code = text.split('#').next().unwrap_or("");
        let words = grammar::split_words(code);
        let Some(first) = words.first() else { return };
        let directive = first.text.to_ascii_lowercase();
        match directive.as_str() {
            "service" => self.service(number, &words),
            "queue" => self.queue(number, &words),
            "queues" => self.queues(number, &words),
            "busy-poll" => self.busy_poll(number, &words),
            "drain-idle" => self.drain_idle(number, &words),
            "mark" => self.mark(number, &words),
            "header-only" => self.header_only(number, &words),
            "rewrite-mark" => self.rewrite_mark(number, &words),
            "offload" => self.offload(number, &words),
            "offload-flows" => self.offload_flows(number, &words),
            "syslog-facility" => self.facility(number, &words),
            "syslog-priority" => self.priority(number, &words),
            "log-rate" | "log-burst" => self.log_limit(number, &words, directive == "log-rate"),
            "metrics-listen" => self.metrics_listen(number, &words),
            _ => self.push(
                number,
                first.column,
                Some(Field::Keyword),
                None,
                format!(
                    "unknown directive {:?} (known directives: {})",
                    first.text,
                    DIRECTIVES.join(", ")
                ),
            ),
        }
    }

    fn service(&mut self, number: usize, words: &[Word<'_>]) {
        let service = match grammar::parse_words(words, grammar::end_column(words)) {
            Ok(s) => s,
            Err(e) => return self.push(number, e.column, Some(e.field), None, e.message),
        };
        // The grammar accepted the line, so the fields sit at fixed word positions.
        let app_column = words[3].column;
        // Column of each server in the actual address word (a comma-separated list).
        let server_columns: Vec<usize> = {
            let w = &words[6];
            let mut columns = vec![w.column];
            for (i, c) in w.text.chars().enumerate() {
                if c == ',' {
                    columns.push(w.column + i + 1);
                }
            }
            columns
        };

        let app = app_key(&service);
        let app_ports = (service.app_port, service.app_port_last);
        if let Some((ports, &first)) = self
            .apparent
            .get(&app)
            .and_then(|claims| overlap(claims, app_ports))
        {
            let conflict = Conflict {
                kind: ConflictKind::ApparentEndpoint,
                line: first,
            };
            return self.push(
                number,
                app_column,
                Some(Field::AppAddr),
                Some(conflict),
                format!(
                    "lines {first} and {number} both claim the apparent endpoint {}",
                    describe_app(&app, ports)
                ),
            );
        }
        let act_ports = (service.act_port, service.act_port_last);
        let acts: Vec<ActKey> = service
            .servers()
            .map(|addr| ActKey {
                iface: service.iface.clone(),
                protocol: service.protocol,
                addr,
            })
            .collect();
        for (act, &column) in acts.iter().zip(&server_columns) {
            let Some((ports, &(first, first_app))) = self
                .actual
                .get(act)
                .and_then(|claims| overlap(claims, act_ports))
            else {
                continue;
            };
            let message = format!(
                "lines {first} and {number} both map to the actual endpoint {} {} {} on {} \
                 (from {} {} and {} {}): replies from it could not be told apart, \
                 since netnat translates each packet on its own",
                act.addr,
                show_ports(ports),
                act.protocol.name(),
                act.iface,
                show_app_addr(first_app.0),
                show_ports(first_app.1),
                show_app_addr(app.addr),
                show_ports(app_ports),
            );
            let conflict = Conflict {
                kind: ConflictKind::ActualEndpoint,
                line: first,
            };
            return self.push(
                number,
                column,
                Some(Field::ActAddr),
                Some(conflict),
                message,
            );
        }
        // Claimed also when the line is refused below: a later line that overlaps it is
        // still named, so that one pass shows every conflict.
        self.apparent
            .entry(app.clone())
            .or_default()
            .insert(app_ports.0, (app_ports.1, number));
        for act in acts {
            self.actual
                .entry(act)
                .or_default()
                .insert(act_ports.0, (act_ports.1, (number, (app.addr, app_ports))));
        }
        if let Some((column, field, message)) = not_installed(&service, words) {
            return self.push(number, column, Some(field), None, message);
        }
        if service.is_many_to_one() {
            self.many_to_one_at.push((number, words[7].column));
        }
        self.services.push(ServiceLine {
            line: number,
            service,
        });
    }

    /// The common shape of a setting: `name value`, given at most once. Returns the value word.
    fn setting<'w>(
        &mut self,
        number: usize,
        words: &[Word<'w>],
        name: &'static str,
        what: &str,
    ) -> Option<Word<'w>> {
        let Some(&value) = words.get(1) else {
            self.bad_value(
                name,
                number,
                grammar::end_column(words),
                format!("missing field: {what}"),
            );
            return None;
        };
        if let Some(extra) = words.get(2) {
            self.push(
                number,
                extra.column,
                Some(Field::Trailing),
                None,
                format!(
                    "unexpected {:?} after the {what} (nothing may follow it)",
                    extra.text
                ),
            );
            return None;
        }
        if let Some(&first) = self.set_on.get(name) {
            let conflict = Conflict {
                kind: ConflictKind::SettingTwice,
                line: first,
            };
            self.push(
                number,
                words[0].column,
                Some(Field::Keyword),
                Some(conflict),
                format!("\"{name}\" given twice: already set on line {first}"),
            );
            return None;
        }
        self.set_on.insert(name, number);
        Some(value)
    }

    fn queue(&mut self, number: usize, words: &[Word<'_>]) {
        let Some(w) = self.setting(number, words, "queue", "queue number") else {
            return;
        };
        let valid = !w.text.is_empty()
            && w.text.len() <= 5
            && w.text.bytes().all(|b| b.is_ascii_digit())
            && (w.text == "0" || !w.text.starts_with('0'));
        match w
            .text
            .parse::<u32>()
            .ok()
            .filter(|_| valid)
            .and_then(|n| u16::try_from(n).ok())
        {
            Some(n) => self.settings.queue = n,
            None => self.bad_value(
                "queue",
                number,
                w.column,
                format!("expected a queue number 0-65535, found {:?}", w.text),
            ),
        }
    }

    fn queues(&mut self, number: usize, words: &[Word<'_>]) {
        let Some(w) = self.setting(number, words, "queues", "number of queues") else {
            return;
        };
        if w.text.eq_ignore_ascii_case("auto") {
            self.settings.queues = None;
            return;
        }
        match decimal_in(w.text, 1..=u32::from(super::MAX_QUEUES)) {
            Some(n) => {
                // Cannot fail: at most MAX_QUEUES.
                self.settings.queues = u16::try_from(n).ok();
                self.queues_at = Some((number, w.column));
            }
            None => self.bad_value(
                "queues",
                number,
                w.column,
                format!(
                    "expected a number of queues 1-{} or \"auto\", found {:?}",
                    super::MAX_QUEUES,
                    w.text
                ),
            ),
        }
    }

    fn busy_poll(&mut self, number: usize, words: &[Word<'_>]) {
        let Some(w) = self.setting(number, words, "busy-poll", "microseconds") else {
            return;
        };
        match decimal_in(w.text, 0..=super::MAX_BUSY_POLL_US) {
            Some(n) => self.settings.busy_poll_us = n,
            None => self.bad_value(
                "busy-poll",
                number,
                w.column,
                format!(
                    "expected microseconds 0-{} (0: never busy-poll), found {:?}",
                    super::MAX_BUSY_POLL_US,
                    w.text
                ),
            ),
        }
    }

    fn drain_idle(&mut self, number: usize, words: &[Word<'_>]) {
        let Some(w) = self.setting(number, words, "drain-idle", "seconds") else {
            return;
        };
        match decimal_in(w.text, 0..=super::MAX_DRAIN_IDLE_SECS) {
            Some(n) => self.settings.drain_idle_secs = n,
            None => self.bad_value(
                "drain-idle",
                number,
                w.column,
                format!(
                    "expected seconds 0-{} (0: cut a removed service's connections at once), \
                     found {:?}",
                    super::MAX_DRAIN_IDLE_SECS,
                    w.text
                ),
            ),
        }
    }

    /// `metrics-listen ADDR:PORT`: where the daemon serves its metrics. A wildcard address is
    /// refused: the metrics name the private servers (actual addresses and ports) and their
    /// traffic, which must not be served to every network the router is on by accident; a
    /// loopback address, or one specific address of the host, is a deliberate choice.
    fn metrics_listen(&mut self, number: usize, words: &[Word<'_>]) {
        let Some(w) = self.setting(number, words, "metrics-listen", "address and port") else {
            return;
        };
        match w.text.parse::<std::net::SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() => self.bad_value(
                "metrics-listen",
                number,
                w.column,
                format!(
                    "{:?} listens on every address: give a loopback address (127.0.0.1:{port}, \
                     [::1]:{port}) or one address of this host, because the metrics name the \
                     private servers and their traffic",
                    w.text,
                    port = a.port()
                ),
            ),
            Ok(a) if a.port() == 0 => self.bad_value(
                "metrics-listen",
                number,
                w.column,
                format!("expected a port 1-65535, found {:?}", w.text),
            ),
            Ok(a) => self.settings.metrics_listen = Some(a),
            Err(_) => self.bad_value(
                "metrics-listen",
                number,
                w.column,
                format!(
                    "expected ADDRESS:PORT (127.0.0.1:9464, [::1]:9464), found {:?}",
                    w.text
                ),
            ),
        }
    }

    /// `log-rate N` (`rate`) or `log-burst N`: the token bucket of every record class.
    fn log_limit(&mut self, number: usize, words: &[Word<'_>], rate: bool) {
        let (name, what) = if rate {
            ("log-rate", "records per second")
        } else {
            ("log-burst", "records")
        };
        let Some(w) = self.setting(number, words, name, what) else {
            return;
        };
        match decimal_in(w.text, 1..=super::MAX_LOG_RATE) {
            Some(n) if rate => self.settings.log_rate = n,
            Some(n) => self.settings.log_burst = n,
            None => self.bad_value(
                name,
                number,
                w.column,
                format!(
                    "expected {what} 1-{}, found {:?}",
                    super::MAX_LOG_RATE,
                    w.text
                ),
            ),
        }
    }

    fn mark(&mut self, number: usize, words: &[Word<'_>]) {
        let Some(w) = self.setting(number, words, "mark", "mark") else {
            return;
        };
        match hex_u32(w.text) {
            // Zero would mark nothing: the firewall rule that lets mapped traffic through could
            // never match.
            Some(0) => self.bad_value("mark", number, w.column, "the mark must not be zero".into()),
            Some(m) => {
                self.settings.mark = m;
                self.mark_at = Some((number, w.column));
            }
            None => self.bad_value(
                "mark",
                number,
                w.column,
                format!(
                    "expected a mark as 1-8 hex digits (e.g. 0x4e00), found {:?}",
                    w.text
                ),
            ),
        }
    }

    /// An `on|off` setting `name`: its value and where it stands, or the error recorded.
    fn switch(
        &mut self,
        number: usize,
        words: &[Word<'_>],
        name: &'static str,
    ) -> Option<(bool, (usize, usize))> {
        let w = self.setting(number, words, name, "on or off")?;
        let on = on_off(w.text);
        if on.is_none() {
            let message = format!("expected on or off, found {:?}", w.text);
            self.bad_value(name, number, w.column, message);
        }
        on.map(|on| (on, (number, w.column)))
    }

    fn header_only(&mut self, number: usize, words: &[Word<'_>]) {
        if let Some((on, at)) = self.switch(number, words, "header-only") {
            self.settings.header_only = on;
            self.header_only_at = Some(at);
        }
    }

    fn offload(&mut self, number: usize, words: &[Word<'_>]) {
        if let Some((on, at)) = self.switch(number, words, "offload") {
            self.settings.offload = on;
            self.offload_at = Some(at);
        }
    }

    fn offload_flows(&mut self, number: usize, words: &[Word<'_>]) {
        let Some(w) = self.setting(number, words, "offload-flows", "number of flows") else {
            return;
        };
        match decimal_in(w.text, 1..=super::MAX_OFFLOAD_FLOWS) {
            Some(n) => self.settings.offload_flows = n,
            None => self.bad_value(
                "offload-flows",
                number,
                w.column,
                format!(
                    "expected flows per offload set 1-{}, found {:?}",
                    super::MAX_OFFLOAD_FLOWS,
                    w.text
                ),
            ),
        }
    }

    fn rewrite_mark(&mut self, number: usize, words: &[Word<'_>]) {
        let Some(w) = self.setting(number, words, "rewrite-mark", "mark bit") else {
            return;
        };
        match hex_u32(w.text) {
            // The two bits below it name an address slot (`*` flows kept at other addresses).
            Some(m) if m.count_ones() == 1 && m >= 4 => {
                self.settings.rewrite_mark = m;
                self.rewrite_mark_at = Some((number, w.column));
            }
            _ => self.bad_value(
                "rewrite-mark",
                number,
                w.column,
                format!(
                    "expected one bit from 0x4 up as hex digits (e.g. 0x100), found {:?}",
                    w.text
                ),
            ),
        }
    }

    fn facility(&mut self, number: usize, words: &[Word<'_>]) {
        let name = "syslog-facility";
        let Some(w) = self.setting(number, words, name, "syslog facility") else {
            return;
        };
        match FACILITIES.iter().find(|f| f.eq_ignore_ascii_case(w.text)) {
            Some(f) => self.settings.syslog_facility = (*f).to_owned(),
            None => self.bad_value(
                "syslog-facility",
                number,
                w.column,
                format!(
                    "unknown syslog facility {:?} (expected one of: {})",
                    w.text,
                    FACILITIES.join(", ")
                ),
            ),
        }
    }

    fn priority(&mut self, number: usize, words: &[Word<'_>]) {
        let name = "syslog-priority";
        let Some(w) = self.setting(number, words, name, "syslog priority") else {
            return;
        };
        match PRIORITIES.iter().find(|p| p.eq_ignore_ascii_case(w.text)) {
            Some(p) => self.settings.syslog_priority = (*p).to_owned(),
            None => self.bad_value(
                "syslog-priority",
                number,
                w.column,
                format!(
                    "unknown syslog priority {:?} (expected one of: {})",
                    w.text,
                    PRIORITIES.join(", ")
                ),
            ),
        }
    }
}

fn app_key(s: &Service) -> AppKey {
    AppKey {
        iface: s.iface.clone(),
        protocol: s.protocol,
        addr: s.app_addr,
        v6: s.is_ipv6(),
    }
}

fn show_app_addr(a: AppAddr) -> String {
    match a {
        AppAddr::Interface => "*".into(),
        AppAddr::Fixed(ip) => ip.to_string(),
    }
}

fn describe_app(k: &AppKey, ports: (u16, u16)) -> String {
    let family = match (k.addr, k.v6) {
        (AppAddr::Interface, true) => " (IPv6)",
        (AppAddr::Interface, false) => " (IPv4)",
        (AppAddr::Fixed(_), _) => "",
    };
    format!(
        "{}{family} {} {} on {}",
        show_app_addr(k.addr),
        show_ports(ports),
        k.protocol.name(),
        k.iface
    )
}

/// `text` as a plain decimal number (digits only, no more of them than `range`'s end has)
/// within `range`.
fn decimal_in(text: &str, range: std::ops::RangeInclusive<u32>) -> Option<u32> {
    let max_digits = range.end().to_string().len();
    (text.len() <= max_digits && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse::<u32>().ok())
        .flatten()
        .filter(|n| range.contains(n))
}

/// A u32 as 1-8 hex digits, with or without `0x`.
fn hex_u32(text: &str) -> Option<u32> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    (!digits.is_empty() && digits.len() <= 8 && digits.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(digits, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A directory of its own under the system's temporary directory (sticky, so itself fine).
    struct Dir(PathBuf);

    impl Dir {
        fn new(mode: u32) -> Dir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "netnat-perm-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir(&path).unwrap();
            // set_permissions, not the creation mode: the umask must not decide the test.
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            Dir(path)
        }

        fn file(&self, name: &str, mode: u32) -> PathBuf {
            let p = self.0.join(name);
            fs::write(&p, "queue 7\n").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn refused(path: &Path) -> ConfigError {
        let errs = load_config(path).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!((errs[0].line, errs[0].column), (0, 0));
        errs[0].clone()
    }

    #[test]
    fn world_writable_file_is_refused_naming_it() {
        let d = Dir::new(0o755);
        let f = d.file("netnat.conf", 0o666);
        let e = refused(&f);
        let shown = f.display().to_string();
        assert!(
            e.message.contains(&format!("configuration file {shown}"))
                && e.message.contains("world-writable (mode 0666)")
                && e.message.contains(&format!("chmod o-w {shown}")),
            "{e}"
        );
        assert!(
            e.to_string().starts_with(&format!(
                "{shown}: refusing the configuration file {shown}: "
            )),
            "{e}"
        );
        // o+w alone is enough; group write is the administrator's business.
        fs::set_permissions(&f, fs::Permissions::from_mode(0o602)).unwrap();
        assert!(refused(&f).message.contains("mode 0602"));
        fs::set_permissions(&f, fs::Permissions::from_mode(0o664)).unwrap();
        assert_eq!(load_config(&f).unwrap().settings.queue, 7);
    }

    #[test]
    fn world_writable_directory_without_sticky_bit_is_refused() {
        let d = Dir::new(0o777);
        let f = d.file("netnat.conf", 0o644);
        let e = refused(&f);
        assert!(
            e.message
                .contains(&format!("the directory {} on its path", d.0.display()))
                && e.message.contains("without the sticky bit (mode 0777)")
                && e.message.contains(&f.display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn sticky_world_writable_directory_is_accepted() {
        // Like /tmp: others may create files there but not replace this one.
        let d = Dir::new(0o1777);
        let f = d.file("netnat.conf", 0o644);
        assert_eq!(load_config(&f).unwrap().settings.queue, 7);
    }

    #[test]
    fn ordinary_modes_are_accepted() {
        let d = Dir::new(0o755);
        for mode in [0o600, 0o640, 0o644, 0o400] {
            let f = d.file(&format!("m{mode:o}.conf"), mode);
            assert!(load_config(&f).is_ok(), "mode {mode:o}");
        }
    }

    #[test]
    fn unsafe_ancestor_directory_is_refused() {
        let top = Dir::new(0o777);
        let sub = top.0.join("etc");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        let f = sub.join("netnat.conf");
        fs::write(&f, "queue 7\n").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        let e = refused(&f);
        assert!(
            e.message
                .contains(&format!("the directory {} on its path", top.0.display())),
            "{e}"
        );
    }

    #[test]
    fn relative_path_checks_the_real_directories() {
        // The current directory of the test process is the crate, a safe place; a relative
        // path into an unsafe directory must still be judged by that directory.
        let d = Dir::new(0o777);
        let f = d.file("netnat.conf", 0o644);
        let cwd = std::env::current_dir().unwrap();
        let depth = cwd.components().count() - 1;
        let rel = PathBuf::from("../".repeat(depth)).join(f.strip_prefix("/").unwrap());
        let e = refused(&rel);
        assert!(e.message.contains("without the sticky bit"), "{e}");
    }

    #[test]
    fn symlinks_are_judged_on_both_ends() {
        let safe = Dir::new(0o755);
        let open = Dir::new(0o777);
        // A link in a safe directory to a file in an unsafe one.
        let target = open.file("real.conf", 0o644);
        let link = safe.0.join("link.conf");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = refused(&link);
        assert!(
            e.message
                .contains(&format!("the directory {}", open.0.display())),
            "{e}"
        );
        // A link in an unsafe directory to a file in a safe one.
        let good = safe.file("good.conf", 0o644);
        let link = open.0.join("link.conf");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let e = refused(&link);
        assert!(
            e.message
                .contains(&format!("the directory {}", open.0.display())),
            "{e}"
        );
        // A link to a world-writable file: the file's own mode, not the link's (0777), counts.
        let ww = safe.file("ww.conf", 0o646);
        let link = safe.0.join("ww-link.conf");
        std::os::unix::fs::symlink(&ww, &link).unwrap();
        assert!(refused(&link).message.contains("mode 0646"));
        let link = safe.0.join("good-link.conf");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(load_config(&link).is_ok());
    }

    #[test]
    fn conflicts_carry_the_earlier_line() {
        let text = "service e0 port * 80 TCP 10.0.0.1 80\n\
                    queue 5\n\
                    service e0 port * 80 TCP 10.0.0.2 80\n\
                    service e0 port * 81 TCP 10.0.0.1 80\n\
                    queue 6\n";
        let errs = parse_config(text, "c").unwrap_err();
        let got: Vec<_> = errs
            .iter()
            .map(|e| (e.line, e.field, e.conflict, e.lines()))
            .collect();
        let conflict = |kind, line| Some(Conflict { kind, line });
        assert_eq!(
            got,
            [
                (
                    3,
                    Some(Field::AppAddr),
                    conflict(ConflictKind::ApparentEndpoint, 1),
                    vec![1, 3]
                ),
                (
                    4,
                    Some(Field::ActAddr),
                    conflict(ConflictKind::ActualEndpoint, 1),
                    vec![1, 4]
                ),
                (
                    5,
                    Some(Field::Keyword),
                    conflict(ConflictKind::SettingTwice, 2),
                    vec![2, 5]
                ),
            ],
            "{errs:?}"
        );
        // The messages stay the administrator's: the lines are in them too.
        assert!(
            errs[0].message.starts_with("lines 1 and 3 both claim"),
            "{}",
            errs[0]
        );
    }

    /// Issue 13's forms parse, but until their kernel side exists every entry point refuses
    /// them, at the word that uses the form.
    #[test]
    fn forms_not_installed_yet_are_refused_where_they_are_written() {
        let one = |text: &str| {
            let errs = parse_config(text, "n.conf").unwrap_err();
            assert_eq!(errs.len(), 1, "{errs:?}");
            let e = &errs[0];
            (e.line, e.column, e.field, e.to_string())
        };
        // Many to one: only with header-only off, wherever that stands in the file.
        let (line, column, field, text) =
            one("# many to one\nservice pub0 port * 6000-6009 UDP 192.168.77.10 7000\n");
        assert_eq!((line, column, field), (2, 49, Some(Field::ActPort)));
        assert_eq!(
            text,
            "n.conf:2:49: a port range onto one actual port needs \"header-only off\": the \
             kernel's header-only maps cannot tell which apparent port a long reply shows (only \
             netnat's flow memory can)"
        );
        let c = parse_config(
            "service pub0 port * 6000-6009 UDP 192.168.77.10 7000\nheader-only off\n",
            "n",
        )
        .unwrap();
        assert!(c.services[0].service.is_many_to_one());
        let (_, column, field, text) =
            one("service pub0 port * 443 TCP 192.168.77.10 8443 0x8000 hairpin\n");
        assert_eq!((column, field), (55, Some(Field::Hairpin)));
        assert!(text.contains("hairpin is not installed yet"), "{text}");
        // The plain line and the installed forms load.
        let c = parse_config(
            "service pub0 port * 443 TCP 192.168.77.10 8443 0x8000\n\
             service pub0 port * 8000-8009 TCP 192.168.77.10 9000-9009 0x8000\n\
             service pub0 port * 22 TCP 192.168.77.10 22 from 198.51.100.0/24,203.0.113.7\n\
             service pub0 port * 80 TCP 192.168.77.10,192.168.77.11 8080 0x8000\n",
            "n",
        )
        .unwrap();
        assert_eq!(c.services.len(), 4);
        assert!(c.services[1].service.is_range() && c.services[2].service.from.len() == 2);
    }

    /// Ranges claim every port they hold: an overlap (apparent, or actual at any of the
    /// servers) is refused like a duplicate, naming both lines and the ports in common.
    #[test]
    fn overlapping_ranges_conflict_like_duplicates() {
        let conflicts = |text: &str| -> Vec<(usize, usize, Option<Conflict>, String)> {
            parse_config(text, "o")
                .unwrap_err()
                .into_iter()
                .filter(|e| e.conflict.is_some())
                .map(|e| (e.line, e.column, e.conflict, e.message))
                .collect()
        };
        let app = |line| {
            Some(Conflict {
                kind: ConflictKind::ApparentEndpoint,
                line,
            })
        };
        let act = |line| {
            Some(Conflict {
                kind: ConflictKind::ActualEndpoint,
                line,
            })
        };
        let got = conflicts(
            "service e0 port * 8000-8009 TCP 10.0.0.1 9000-9009\n\
             service e0 port * 8005 TCP 10.0.0.2 80\n\
             service e0 port * 7990-8000 TCP 10.0.0.2 81-91\n\
             service e0 port * 8010-8020 TCP 10.0.0.2 9000-9010\n\
             service e0 port * 8010-8020 UDP 10.0.0.1 9000-9010\n\
             service e0 port * 8030 TCP 10.0.0.3,10.0.0.1 9009\n",
        );
        assert_eq!(got.len(), 3, "{got:#?}");
        assert_eq!((got[0].0, got[0].1, got[0].2), (2, 17, app(1)));
        assert_eq!(
            got[0].3,
            "lines 1 and 2 both claim the apparent endpoint * (IPv4) 8005 TCP on e0"
        );
        assert_eq!((got[1].0, got[1].2), (3, app(1)));
        assert!(got[1].3.contains("* (IPv4) 8000 TCP on e0"), "{}", got[1].3);
        // Line 4 overlaps nothing (other server, other ports); line 5 is UDP. Line 6's second
        // server meets line 1's actual range, at its own column.
        assert_eq!((got[2].0, got[2].1, got[2].2), (6, 37, act(1)));
        assert_eq!(
            got[2].3,
            "lines 1 and 6 both map to the actual endpoint 10.0.0.1 9009 TCP on e0 (from * \
             8000-8009 and * 8030): replies from it could not be told apart, since netnat \
             translates each packet on its own"
        );
        // Adjacent ranges do not overlap; the same range at another address does not either.
        let text = "service e0 port * 1-10 UDP 10.0.0.1 1-10\n\
                    service e0 port * 11-20 UDP 10.0.0.1 11-20\n\
                    service e0 port 10.0.0.9 1-10 UDP 10.0.0.2 1-10\n";
        assert_eq!(parse_config(text, "o").map(|c| c.services.len()), Ok(3));
    }

    #[test]
    fn errors_name_their_field() {
        let field = |text: &str| parse_config(text, "f").unwrap_err()[0].field;
        assert_eq!(field("queue x\n"), Some(Field::Setting("queue")));
        assert_eq!(field("log-burst 0\n"), Some(Field::Setting("log-burst")));
        assert_eq!(field("mark 0\n"), Some(Field::Setting("mark")));
        assert_eq!(
            field("queues 64\nqueue 65535\n"),
            Some(Field::Setting("queues"))
        );
        assert_eq!(field("queue 1 2\n"), Some(Field::Trailing));
        assert_eq!(field("bogus 1\n"), Some(Field::Keyword));
        assert_eq!(
            field("service e0 port * 80 TCP 10.0.0.1 0\n"),
            Some(Field::ActPort)
        );
        // A line too long is about the line as a whole.
        assert_eq!(field(&"x".repeat(MAX_LINE_BYTES + 1)), None);
    }

    #[test]
    fn log_rate_and_burst_directives() {
        let q = |text: &str| parse_config(text, "f").map(|c| c.settings);
        let d = q("").unwrap();
        assert_eq!((d.log_rate, d.log_burst), (100, 200));
        let s = q("log-rate 5\nLOG-BURST 7\n").unwrap();
        assert_eq!((s.log_rate, s.log_burst), (5, 7));
        assert_eq!(q("log-rate 100000\n").unwrap().log_rate, 100_000);
        for (text, column, part) in [
            ("log-rate 0\n", 10, "1-100000, found \"0\""),
            ("log-burst 100001\n", 11, "1-100000"),
            ("log-rate 10/s\n", 10, "found \"10/s\""),
            ("log-rate\n", 9, "missing field: records per second"),
            ("log-burst 5\nlog-burst 6\n", 1, "given twice"),
        ] {
            let e = q(text).unwrap_err();
            assert_eq!(e.len(), 1, "{text:?}: {e:?}");
            assert_eq!(e[0].column, column, "{text:?}: {e:?}");
            assert!(e[0].message.contains(part), "{text:?}: {}", e[0].message);
        }
    }

    #[test]
    fn metrics_listen_directive() {
        let q = |text: &str| parse_config(text, "m").map(|c| c.settings);
        assert_eq!(q("").unwrap().metrics_listen, None);
        assert_eq!(
            q("metrics-listen 127.0.0.1:9464\n").unwrap().metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(
            q("Metrics-Listen [::1]:9100\n").unwrap().metrics_listen,
            Some("[::1]:9100".parse().unwrap())
        );
        // A specific address of the host, given on purpose.
        assert!(q("metrics-listen 10.0.0.1:9464\n").is_ok());
        for (text, column, part) in [
            (
                "metrics-listen 0.0.0.0:9464\n",
                16,
                "listens on every address",
            ),
            ("metrics-listen [::]:9464\n", 16, "name the private servers"),
            ("metrics-listen 127.0.0.1\n", 16, "expected ADDRESS:PORT"),
            (
                "metrics-listen localhost:9464\n",
                16,
                "expected ADDRESS:PORT",
            ),
            ("metrics-listen 127.0.0.1:0\n", 16, "port 1-65535"),
            ("metrics-listen\n", 15, "missing field: address and port"),
            (
                "metrics-listen 127.0.0.1:1\nmetrics-listen 127.0.0.1:2\n",
                1,
                "given twice",
            ),
        ] {
            let e = q(text).unwrap_err();
            assert_eq!(e.len(), 1, "{text:?}: {e:?}");
            assert_eq!(e[0].column, column, "{text:?}: {e:?}");
            assert!(e[0].message.contains(part), "{text:?}: {}", e[0].message);
        }
    }

    #[test]
    fn queues_and_busy_poll_directives() {
        let q = |text: &str| parse_config(text, "t").map(|c| c.settings);
        assert_eq!(q("").unwrap().queues, None);
        assert_eq!(q("queues auto\n").unwrap().queues, None);
        assert_eq!(q("QUEUES 4\n").unwrap().queues, Some(4));
        assert_eq!(q("queue 65534\nqueues 2\n").unwrap().queue_count(), 2);
        assert_eq!(q("").unwrap().busy_poll_us, 50);
        assert_eq!(q("busy-poll 0\n").unwrap().busy_poll_us, 0);
        assert_eq!(q("busy-poll 1000\n").unwrap().busy_poll_us, 1000);
        assert_eq!(q("").unwrap().drain_idle_secs, 300);
        assert_eq!(q("drain-idle 0\n").unwrap().drain_idle_secs, 0);
        assert_eq!(q("Drain-Idle 86400\n").unwrap().drain_idle_secs, 86_400);
        for (text, column, says) in [
            ("queues 0\n", 8, "1-64 or \"auto\""),
            ("queues 65\n", 8, "1-64"),
            ("queues -1\n", 8, "found \"-1\""),
            ("queues 2 3\n", 10, ""),
            ("queues 3\nqueue 65534\n", 8, "would end at 65536"),
            ("queues 1\nqueues 2\n", 1, "given twice"),
            ("busy-poll 1001\n", 11, "0-1000"),
            ("busy-poll 5us\n", 11, "found \"5us\""),
            ("drain-idle 86401\n", 12, "0-86400"),
            ("drain-idle 1m\n", 12, "found \"1m\""),
            ("drain-idle 1\ndrain-idle 2\n", 1, "given twice"),
        ] {
            let e = q(text).unwrap_err();
            assert_eq!(e.len(), 1, "{text:?}: {e:?}");
            assert_eq!(e[0].column, column, "{text:?}: {}", e[0]);
            assert!(e[0].message.contains(says), "{text:?}: {}", e[0]);
        }
    }

    #[test]
    fn offload_directives() {
        let q = |text: &str| parse_config(text, "t").map(|c| c.settings);
        let d = q("").unwrap();
        assert_eq!((d.offload, d.offload_flows), (false, 65_536));
        let s = q("Offload ON\noffload-flows 2\n").unwrap();
        assert_eq!((s.offload, s.offload_flows), (true, 2));
        assert!(!q("offload off\n").unwrap().offload);
        // Without offload the third bit below the rewrite bit is free.
        assert!(q("mark 0x1\nrewrite-mark 8\n").is_ok());
        for (text, line, column, says) in [
            ("offload maybe\n", 1, 9, "expected on or off"),
            ("offload\n", 1, 8, "missing field"),
            (
                "offload-flows 0\n",
                1,
                15,
                "expected flows per offload set 1-1048576",
            ),
            ("offload-flows 1048577\n", 1, 15, "1-1048576"),
            ("offload on\noffload off\n", 2, 1, "given twice"),
            (
                "header-only off\noffload on\n",
                2,
                9,
                "needs header-only on (line 1)",
            ),
            ("offload on\nrewrite-mark 4\n", 2, 14, "from 0x8 up"),
            // 0x20 is the offload bit below the default rewrite bit 0x100.
            (
                "offload on\nmark 0x20\n",
                2,
                6,
                "three bits below it, 0x1e0",
            ),
        ] {
            let e = q(text).unwrap_err();
            assert_eq!(e.len(), 1, "{text:?}: {e:?}");
            assert_eq!(
                (e[0].line, e[0].column),
                (line, column),
                "{text:?}: {}",
                e[0]
            );
            assert!(e[0].message.contains(says), "{text:?}: {}", e[0]);
        }
    }

    #[test]
    fn header_only_and_rewrite_mark_directives() {
        let q = |text: &str| parse_config(text, "t").map(|c| c.settings);
        let d = q("").unwrap();
        assert_eq!((d.header_only, d.rewrite_mark), (true, 0x100));
        assert!(!q("header-only off\n").unwrap().header_only);
        assert!(q("Header-Only ON\n").unwrap().header_only);
        assert_eq!(
            q("rewrite-mark 0x80000000\n").unwrap().rewrite_mark,
            1 << 31
        );
        assert_eq!(q("mark 0x1\nrewrite-mark 8\n").unwrap().rewrite_mark, 8);
        // Unused with header-only off: any mark goes.
        assert!(q("mark 0xffffffff\nheader-only off\n").is_ok());
        for (text, line, column, says) in [
            ("header-only yes\n", 1, 13, "expected on or off"),
            ("rewrite-mark 0x300\n", 1, 14, "one bit"),
            ("rewrite-mark 0\n", 1, 14, "one bit"),
            ("rewrite-mark 0x200\n", 1, 14, "overlaps mark 0x4e00"),
            (
                "rewrite-mark 0x10\nmark 0x30\n",
                1,
                14,
                "overlaps mark 0x30",
            ),
            ("mark 0x100\n", 1, 6, "overlaps mark 0x100"),
            ("header-only on\nheader-only off\n", 2, 1, "given twice"),
            ("mark 0xffffffff\n", 1, 6, "overlaps mark 0xffffffff"),
        ] {
            let e = q(text).unwrap_err();
            assert_eq!(e.len(), 1, "{text:?}: {e:?}");
            assert_eq!(
                (e[0].line, e[0].column),
                (line, column),
                "{text:?}: {}",
                e[0]
            );
            assert!(e[0].message.contains(says), "{text:?}: {}", e[0]);
        }
    }
}
