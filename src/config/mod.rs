//! The configuration model: services in the seed's syntax plus a few settings.
//!
//! `grammar` parses one `service ...` line (shared by the config file and the CLI), `file` reads
//! a whole configuration with located errors, `format` writes the canonical form back.

use std::fmt;
use std::net::IpAddr;

mod file;
mod format;
mod grammar;

pub use file::{
    ConfigError, Conflict, ConflictKind, check_not_writable_by_others, load_config, parse_config,
};
pub use file::{DIRECTIVES, FACILITIES, MAX_FILE_BYTES, MAX_LINE_BYTES, PRIORITIES};
pub use grammar::MAX_IFACE_LEN;
pub use grammar::{
    Field, GivenService, GrammarError, parse_given_words, parse_service, parse_service_words,
};

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IANA protocol number (6 or 17), as it stands in the IP header and in log records.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// Canonical spelling in the configuration ("TCP", "UDP").
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// The apparent address of a service: fixed, or `*`, the interface's own address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AppAddr {
    /// `*`: the interface's natural (primary) address of the actual address's family.
    Interface,
    Fixed(IpAddr),
}

/// Monitoring and logging flags of a service (the seed's hex bitmask).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u16);

impl Flags {
    /// NetNAT's mapping event: log the first inbound packet of each connection.
    pub const MAPPING_EVENT: u16 = 0x8000;
    /// Periodic volume records: packets and bytes per direction.
    pub const VOLUME: u16 = 0x4000;
    /// Every translated packet (rate-limited).
    pub const EVERY_PACKET: u16 = 0x2000;
    /// Packets dropped or left untranslated, with the reason.
    pub const DROPS: u16 = 0x1000;
    /// ICMP errors translated for the service.
    pub const ICMP: u16 = 0x0800;
    /// Every bit netnat defines; any other bit is a configuration error.
    pub const KNOWN: u16 =
        Self::MAPPING_EVENT | Self::VOLUME | Self::EVERY_PACKET | Self::DROPS | Self::ICMP;

    pub fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }
}

/// One `service` line: apparent endpoint on a public interface mapped to an actual server.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Service {
    /// Public interface name (Linux interface name, at most 15 bytes).
    pub iface: String,
    pub app_addr: AppAddr,
    pub app_port: u16,
    pub protocol: Protocol,
    pub act_addr: IpAddr,
    pub act_port: u16,
    pub flags: Flags,
}

impl Service {
    /// Address family of the service: the actual address's (`*` takes that family too).
    pub fn is_ipv6(&self) -> bool {
        self.act_addr.is_ipv6()
    }
}

impl fmt::Display for Service {
    /// The canonical form; `parse_service(&s.to_string()) == Ok(s)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        format::write_service(f, self)
    }
}

/// A service together with the line it came from (1-based; 0 when it did not come from a file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLine {
    pub line: usize,
    pub service: Service,
}

/// Default NFQUEUE number; `queue N` in the configuration changes it.
pub const DEFAULT_QUEUE: u16 = 4747;
/// Most queues (and consumer threads) `queues` accepts.
pub const MAX_QUEUES: u16 = 64;
/// Most queues `auto` picks: each queue holds 2.2 MiB of receive buffers, so a machine with
/// many CPUs gets 16 (35 MiB) unless `queues` asks for more.
pub const MAX_AUTO_QUEUES: u16 = 16;
/// Default of `busy-poll`, in microseconds.
pub const DEFAULT_BUSY_POLL_US: u32 = 50;
/// Largest `busy-poll` accepted: beyond a millisecond spinning stops paying for itself.
pub const MAX_BUSY_POLL_US: u32 = 1000;
/// Default of `drain-idle`: seconds an established TCP connection of a removed service may be
/// idle before netnat stops translating it.
pub const DEFAULT_DRAIN_IDLE_SECS: u32 = 300;
/// Largest `drain-idle`: a day.
pub const MAX_DRAIN_IDLE_SECS: u32 = 86_400;
/// Default of `log-rate`: records per second per service and record class.
pub const DEFAULT_LOG_RATE: u32 = 100;
/// Default of `log-burst`: records at once per service and record class.
pub const DEFAULT_LOG_BURST: u32 = 200;
/// Largest `log-rate` and `log-burst` accepted.
pub const MAX_LOG_RATE: u32 = 100_000;
/// Default packet mark bit set on translated inbound packets (`mark` directive).
pub const DEFAULT_MARK: u32 = 0x0000_4e00;

/// Default `rewrite-mark`: one bit beside the default `mark`, not in it.
pub const DEFAULT_REWRITE_MARK: u32 = 0x0000_0100;
/// Default of `offload-flows`: flows each of the four offload flow sets (inbound and replies,
/// IPv4 and IPv6) may hold.
pub const DEFAULT_OFFLOAD_FLOWS: u32 = 65_536;
/// Largest `offload-flows` accepted: a kernel hash set of a million flows is tens of MiB.
pub const MAX_OFFLOAD_FLOWS: u32 = 1_048_576;

/// Settings from directives other than `service`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// NFQUEUE number the rules send packets to.
    pub queue: u16,
    /// Queues `queue .. queue+n-1`, one consumer thread each (`queues N`); `None` (`queues
    /// auto`, the default) is one per CPU this process may run on. Packets are spread over them
    /// by the CPU that handles them (`fanout`), so the work stays on that CPU.
    pub queues: Option<u16>,
    /// Microseconds a queue thread keeps polling after it handled packets before it sleeps
    /// (`busy-poll N`, 0 = never): the next packet of an exchange, caught awake, is not
    /// delayed by the wake-up of a sleeping thread. Costs CPU only right after traffic.
    pub busy_poll_us: u32,
    /// Seconds an established TCP connection of a removed (or changed) service may be idle and
    /// still be translated (`drain-idle N`); 0: removed services stop at once.
    pub drain_idle_secs: u32,
    /// Bits OR-ed into the packet mark of translated inbound packets, so that one firewall rule
    /// (`meta mark & MARK == MARK accept`) lets mapped traffic through a default-drop forward chain.
    pub mark: u32,
    /// Header-only verdicts (`header-only on|off`, default on): packets longer than the copy
    /// range reach netnat with their headers only and the kernel applies the rewrite netnat
    /// decided; off: every packet comes and goes whole (the reference path).
    pub header_only: bool,
    /// The mark bit a header-only verdict sets to ask for the kernel's rewrite
    /// (`rewrite-mark`); never one of `mark`'s.
    pub rewrite_mark: u32,
    /// Flow offload (`offload on|off`, default off; needs `header-only on`): after netnat has
    /// decided, counted and logged a flow's first packet in a direction, the kernel rewrites
    /// the flow's further packets in that direction without queueing them (see
    /// `nft::offload`). Services with flag 0x2000, TCP FIN and RST, and ICMP errors stay on
    /// the queue path.
    pub offload: bool,
    /// Bound of each offload flow set (`offload-flows N`); when one is full, new flows stay
    /// on the queue path.
    pub offload_flows: u32,
    /// Syslog facility name (e.g. "local2").
    pub syslog_facility: String,
    /// Syslog priority name (e.g. "info").
    pub syslog_priority: String,
    /// Records per second each service may write per record class, in the long run
    /// (`log-rate N`); beyond it records are counted and summarised (`sup`).
    pub log_rate: u32,
    /// Records a service may write per class at once after a quiet time (`log-burst N`).
    pub log_burst: u32,
    /// Where the daemon serves `GET /metrics` (`metrics-listen ADDR:PORT`); `None`, the
    /// default: nowhere. Never a wildcard address (the file refuses it).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            queue: DEFAULT_QUEUE,
            queues: None,
            busy_poll_us: DEFAULT_BUSY_POLL_US,
            drain_idle_secs: DEFAULT_DRAIN_IDLE_SECS,
            mark: DEFAULT_MARK,
            header_only: true,
            rewrite_mark: DEFAULT_REWRITE_MARK,
            offload: false,
            offload_flows: DEFAULT_OFFLOAD_FLOWS,
            syslog_facility: "local2".into(),
            syslog_priority: "info".into(),
            log_rate: DEFAULT_LOG_RATE,
            log_burst: DEFAULT_LOG_BURST,
            metrics_listen: None,
        }
    }
}

impl Settings {
    /// How many queues the daemon binds: `queues N`, or for `auto` the CPUs available to this
    /// process, at most [`MAX_AUTO_QUEUES`]; at least 1 and never past queue number 65535
    /// (the file parser refuses an explicit `queues` that would go past it; `auto` is cut).
    pub fn queue_count(&self) -> u16 {
        let n = self.queues.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get().min(usize::from(MAX_AUTO_QUEUES)) as u16)
        });
        // Queues `queue ..= 65535` remain: 65536 of them from queue 0, which is one more than
        // a u16 holds, so the room is counted in u32 (it is always at least 1).
        let room = u32::from(u16::MAX) + 1 - u32::from(self.queue);
        let n = u32::from(n.max(1)).min(room);
        u16::try_from(n).unwrap_or(u16::MAX)
    }
}

/// A whole, valid configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub services: Vec<ServiceLine>,
    pub settings: Settings,
}

impl Config {
    /// The interfaces the services name, sorted, each once.
    pub fn interfaces(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .services
            .iter()
            .map(|l| l.service.iface.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(queue: u16, queues: Option<u16>) -> Settings {
        Settings {
            queue,
            queues,
            ..Settings::default()
        }
    }

    /// `queue 0` is valid (netnat.conf(5)); the range arithmetic once overflowed there and
    /// `clamp` panicked with min > max.
    #[test]
    fn queue_count_stays_within_the_queue_numbers() {
        assert_eq!(settings(0, Some(1)).queue_count(), 1);
        assert_eq!(settings(0, Some(MAX_QUEUES)).queue_count(), MAX_QUEUES);
        assert!((1..=MAX_AUTO_QUEUES).contains(&settings(0, None).queue_count()));
        assert_eq!(settings(65535, None).queue_count(), 1);
        assert_eq!(settings(65535, Some(64)).queue_count(), 1);
        assert_eq!(settings(65534, Some(64)).queue_count(), 2);
        assert_eq!(settings(7, Some(0)).queue_count(), 1);
        // Every combination: at least one queue, the last one a valid queue number.
        for queue in [0, 1, 4747, 65472, 65473, 65534, 65535] {
            for queues in [
                None,
                Some(0),
                Some(1),
                Some(2),
                Some(MAX_QUEUES),
                Some(u16::MAX),
            ] {
                let n = settings(queue, queues).queue_count();
                assert!(n >= 1, "queue {queue} queues {queues:?}");
                assert!(
                    u32::from(queue) + u32::from(n) - 1 <= u32::from(u16::MAX),
                    "queue {queue} queues {queues:?}: {n}"
                );
            }
        }
    }
}
