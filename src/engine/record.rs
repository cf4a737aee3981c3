//! Service records for the log, one per flag bit, and the memory of UDP flows that tells a
//! flow's first packet from the rest ([`NewFlows`], shared by the queue threads, on the slot
//! table of [`crate::engine::flows`]). Pure; the daemon decides when to call it.
//!
//! Every record is one colon-delimited line, first the record type, then the public interface
//! of the service (the syslog daemon adds date, time and host in front). Common conventions:
//! - addresses in hex without separators: IPv4 as 8 digits (`0a630102` is 10.99.1.2), IPv6 as
//!   32 digits; a service's configured apparent address `*` is written `*`;
//! - ports, protocol numbers (6 TCP, 17 UDP), counts and lengths in decimal;
//! - a direction is `in` (public side → actual server) or `out` (actual server → public side);
//! - a field that cannot be known is `-`.
//!
//! | flag   | record                                                        |
//! |--------|---------------------------------------------------------------|
//! | 0x8000 | [`MappingEvent`]: `pr:int:srcip:srcport:dstip:dstport:prot`   |
//! | 0x4000 | [`VolumeRecord`]: `vol:int:app:appport:prot:in_pkts:in_bytes:out_pkts:out_bytes:new` |
//! | 0x2000 | [`PacketRecord`]: `pk:int:dir:srcip:srcport:dstip:dstport:prot:len` |
//! | 0x1000 | [`DropRecord`]: `dr:int:dir:action:reason:srcip:srcport:dstip:dstport:prot` |
//! | 0x0800 | [`IcmpRecord`]: `ic:int:dir:type:code:srcip:srcport:dstip:dstport:prot` |
//! | 0x8000, 0x2000, 0x1000, 0x0800 | [`SuppressedRecord`]: `sup:int:app:appport:prot:kind:count` |
//!
//! Records of 0x8000, 0x2000, 0x1000 and 0x0800 are rate-limited per service and per flag by a
//! token bucket (`log-rate` records per second, bursts of `log-burst`; 100 and 200 by default,
//! [`crate::engine::stats::Rate`]): spoofed SYNs or UDP from random sources must not write one line per
//! packet. When records were held back, the next record of that kind written is preceded by a
//! `sup` record counting them. Volume records (0x4000) come once per interval and need no
//! limit.

use std::fmt;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};

use crate::config::{AppAddr, Service};
use crate::engine::datapath::{Peek, Refusal};
use crate::engine::flows::{self, Claim, SlotTable};
use crate::wire::{self, Direction, Flow};

/// NetNAT's mapping event: `pr:int:srcip:srcport:dstip:dstport:prot`.
///
/// Addresses are written in hex: IPv4 as 8 digits (`0a630102`), IPv6 as 32 digits; ports and
/// the protocol number in decimal. `dst` is the apparent endpoint the client addressed.
pub struct MappingEvent<'a> {
    pub iface: &'a str,
    pub flow: &'a Flow,
}

impl fmt::Display for MappingEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Flow { protocol, src, dst } = self.flow;
        write!(f, "pr:{}:", self.iface)?;
        write_hex_addr(f, src.ip())?;
        write!(f, ":{}:", src.port())?;
        write_hex_addr(f, dst.ip())?;
        write!(f, ":{}:{}", dst.port(), protocol.number())
    }
}

fn write_hex_addr(f: &mut fmt::Formatter<'_>, a: IpAddr) -> fmt::Result {
    match a {
        IpAddr::V4(v4) => write!(f, "{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => write!(f, "{:032x}", u128::from(v6)),
    }
}

/// `srcip:srcport:dstip:dstport:prot` of a flow.
fn write_flow(f: &mut fmt::Formatter<'_>, flow: &Flow) -> fmt::Result {
    write_hex_addr(f, flow.src.ip())?;
    write!(f, ":{}:", flow.src.port())?;
    write_hex_addr(f, flow.dst.ip())?;
    write!(f, ":{}:{}", flow.dst.port(), flow.protocol.number())
}

/// `int:app:appport:prot`: which service, as configured (`*` stays `*`).
fn write_service_id(f: &mut fmt::Formatter<'_>, s: &Service) -> fmt::Result {
    write!(f, "{}:", s.iface)?;
    match s.app_addr {
        AppAddr::Interface => f.write_str("*")?,
        AppAddr::Fixed(a) => write_hex_addr(f, a)?,
    }
    write!(f, ":{}:{}", s.app_port, s.protocol.number())
}

fn dir_name(dir: Direction) -> &'static str {
    match dir {
        Direction::Inbound => "in",
        Direction::Reply => "out",
    }
}

/// Flag 0x4000, every volume interval (60 s by default) for each service that has the flag:
/// `vol:int:app:appport:prot:in_pkts:in_bytes:out_pkts:out_bytes:new`.
///
/// `int:app:appport:prot` name the service as configured (`app` is `*` or the hex address).
/// The counts cover the interval since the service's previous volume record (or since it
/// started): packets and bytes translated inbound (`in_*`) and outbound (`out_*`), bytes as
/// IP lengths, and `new` connections (TCP SYNs, new UDP flows). A record is written for every
/// interval, also when all counts are zero. Example: `vol:pub0:*:80:6:12:1040:10:8312:2`.
pub struct VolumeRecord<'a> {
    pub service: &'a Service,
    pub in_packets: u64,
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
    pub new_connections: u64,
}

impl fmt::Display for VolumeRecord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("vol:")?;
        write_service_id(f, self.service)?;
        write!(
            f,
            ":{}:{}:{}:{}:{}",
            self.in_packets, self.in_bytes, self.out_packets, self.out_bytes, self.new_connections
        )
    }
}

/// Flag 0x2000, for every TCP/UDP packet translated for the service (rate-limited):
/// `pk:int:dir:srcip:srcport:dstip:dstport:prot:len`.
///
/// Addresses and ports are the packet's as it arrived, before translation: inbound packets show
/// client → apparent endpoint, outbound ones actual server → client. `len` is the IP length in
/// bytes (a GSO super-packet is one record). Example: `pk:pub0:in:0a630102:40312:0a630101:80:6:60`.
/// Translated ICMP errors are not `pk` records; flag 0x0800 reports them.
pub struct PacketRecord<'a> {
    pub iface: &'a str,
    pub dir: Direction,
    pub flow: &'a Flow,
    pub len: usize,
}

impl fmt::Display for PacketRecord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pk:{}:{}:", self.iface, dir_name(self.dir))?;
        write_flow(f, self.flow)?;
        write!(f, ":{}", self.len)
    }
}

/// What became of a packet netnat did not translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropAction {
    /// Dropped (verdict DROP).
    Drop,
    /// Passed on unchanged (not a service's packet).
    Pass,
    /// Passed on unchanged: the service's `from` list leaves the client out, so for it the
    /// service does not exist. Written `pass:refused`.
    Refused,
}

/// Flag 0x1000, for every packet dropped or left untranslated (rate-limited):
/// `dr:int:dir:action:reason:srcip:srcport:dstip:dstport:prot`.
///
/// - `int`: the interface of the service the packet belongs to; for a packet of no service,
///   the interface it arrived on (`in`) or leaves through (`out`). Packets of no service are
///   reported when any service has the flag, under one shared rate limit.
/// - `action`: `drop` or `pass`.
/// - `reason`: `oversize` (longer than the queue's copy range: a verdict with payload would cut
///   it), `malformed-<what>` (`malformed-truncated`, `-bad-version`, `-bad-header-length`,
///   `-bad-total-length`, `-fragment`, `-bad-extension-header`, `-unsupported-protocol`,
///   `-source-routed`, `-address-family`), `unmapped-reply` (a reply no service maps back:
///   passing it would leak the private address), `not-ours` (passed: e.g. an ICMP error about
///   another flow), `refused` (passed: the client is not in the service's `from` list, so the
///   router's own stack answers it).
/// - addresses, ports and protocol as far as the headers can be read, `-` otherwise.
///
/// Example: `dr:pub0:in:drop:malformed-bad-header-length:0a630102:1234:0a630101:80:6`.
pub struct DropRecord<'a> {
    pub iface: &'a str,
    pub dir: Direction,
    pub action: DropAction,
    /// `None`: passed, not ours.
    pub reason: Option<Refusal>,
    pub peek: Option<Peek>,
}

impl fmt::Display for DropRecord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            DropAction::Drop => "drop",
            DropAction::Pass | DropAction::Refused => "pass",
        };
        write!(f, "dr:{}:{}:{action}:", self.iface, dir_name(self.dir))?;
        match self.reason {
            None if self.action == DropAction::Refused => f.write_str("refused")?,
            None => f.write_str("not-ours")?,
            Some(Refusal::Truncated) => f.write_str("oversize")?,
            Some(Refusal::UnmappedReply) => f.write_str("unmapped-reply")?,
            Some(Refusal::UnrelatedIcmp) => f.write_str("unrelated-icmp")?,
            Some(Refusal::Malformed(m)) => write!(f, "malformed-{}", malformed_name(m))?,
        }
        match self.peek {
            Some(p) => {
                f.write_str(":")?;
                write_hex_addr(f, p.src)?;
                match p.ports {
                    Some((s, _)) => write!(f, ":{s}:")?,
                    None => f.write_str(":-:")?,
                }
                write_hex_addr(f, p.dst)?;
                match p.ports {
                    Some((_, d)) => write!(f, ":{d}:{}", p.protocol),
                    None => write!(f, ":-:{}", p.protocol),
                }
            }
            None => f.write_str(":-:-:-:-:-"),
        }
    }
}

fn malformed_name(m: wire::Malformed) -> &'static str {
    use wire::Malformed as M;
    match m {
        M::Truncated => "truncated",
        M::BadVersion => "bad-version",
        M::BadHeaderLength => "bad-header-length",
        M::BadTotalLength => "bad-total-length",
        M::Fragment => "fragment",
        M::BadExtensionHeader => "bad-extension-header",
        M::UnsupportedProtocol => "unsupported-protocol",
        M::SourceRouted => "source-routed",
        M::AddressFamily => "address-family",
    }
}

/// Flag 0x0800, for every ICMP/ICMPv6 error translated for the service (rate-limited: errors
/// from the public side can be forged at any rate):
/// `ic:int:dir:type:code:srcip:srcport:dstip:dstport:prot`.
///
/// `dir` is the direction the error travels: `out` for an error from the private side to the
/// client (e.g. the actual server's port unreachable), `in` for one from the public side about
/// a reply. `type` and `code` are the ICMP (IPv4) or ICMPv6 type and code, `-` if unreadable.
/// The addresses, ports and protocol are those of the packet the error quotes, as quoted
/// before translation. Example, a UDP service whose server does not listen:
/// `ic:pub0:out:3:3:0a630102:41000:c0a84d0a:5353:17`.
pub struct IcmpRecord<'a> {
    pub iface: &'a str,
    pub dir: Direction,
    pub type_code: Option<(u8, u8)>,
    pub quoted: &'a Flow,
}

impl fmt::Display for IcmpRecord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ic:{}:{}:", self.iface, dir_name(self.dir))?;
        match self.type_code {
            Some((t, c)) => write!(f, "{t}:{c}:")?,
            None => f.write_str("-:-:")?,
        }
        write_flow(f, self.quoted)
    }
}

/// Type and code of the ICMP/ICMPv6 message in `pkt` (an IP packet), found by the rewrite's
/// own IP parser (`wire::ip::glance`: IPv4 options and IPv6 extension headers walked, later
/// fragments refused, declared lengths not required).
pub fn icmp_type_code(pkt: &[u8]) -> Option<(u8, u8)> {
    use wire::field::u8_at;
    use wire::header::{icmp, proto};
    use wire::ip::Family;
    let l = wire::ip::glance(pkt)?.transport.ok()?;
    match (l.family, l.protocol) {
        (Family::V4, proto::ICMP) | (Family::V6, proto::ICMPV6) => Some((
            u8_at(pkt, l.l4 + icmp::TYPE)?,
            u8_at(pkt, l.l4 + icmp::CODE)?,
        )),
        _ => None,
    }
}

/// Which rate-limited record kind a [`SuppressedRecord`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// `pr` records (0x8000).
    Mapping,
    /// `ic` records (0x0800).
    Icmp,
    /// `pk` records (0x2000).
    Packet,
    /// `dr` records (0x1000).
    Drop,
}

/// Written before the next admitted record of a kind when the rate limit held records of that
/// kind back: `sup:int:app:appport:prot:kind:count`.
///
/// `int:app:appport:prot` name the service as in [`VolumeRecord`]; for the shared limit of
/// packets of no service it is `-:-:-:-`. `kind` is `pr`, `pk`, `dr` or `ic`, `count` the number of records
/// not written since the last one of that kind. Example: `sup:pub0:*:53:17:pk:1187`.
pub struct SuppressedRecord<'a> {
    pub service: Option<&'a Service>,
    pub kind: RecordKind,
    pub count: u64,
}

impl fmt::Display for SuppressedRecord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sup:")?;
        match self.service {
            Some(s) => write_service_id(f, s)?,
            None => f.write_str("-:-:-:-")?,
        }
        let kind = match self.kind {
            RecordKind::Mapping => "pr",
            RecordKind::Icmp => "ic",
            RecordKind::Packet => "pk",
            RecordKind::Drop => "dr",
        };
        write!(f, ":{kind}:{}", self.count)
    }
}

/// Seconds a UDP flow may stay silent before its next packet counts as a new flow.
pub const UDP_IDLE_SECS: u32 = 120;
/// Number of UDP flows remembered at once, by every queue thread together; the table has twice
/// as many slots of 16 bytes, allocated once (zeroed: only the pages flows touch take memory).
pub const UDP_FLOW_LIMIT: usize = 65_536;

/// A claim still settling a race with other claims of the same flow (see [`NewFlows`]).
const PENDING: u16 = 1;

/// Which UDP flows were seen lately: tells a flow's first packet (within the idle time) from
/// the rest, for the mapping record and the new-connection counter. One memory for every queue
/// thread, without a lock: with one queue per CPU the packets of one flow can meet two
/// threads, and the flow must still count once.
///
/// A flow is keyed by its service's serial ([`crate::engine::monitor::ServiceSet`]: kept by a
/// service a reload carries over, new for any other, so the flows of a removed or changed
/// service are forgotten) and the client's endpoint, hashed with a random seed. It lives in a
/// [`SlotTable`]; bounded, a flow that finds no room (the table full of live flows) counts as
/// new at each packet and [`NewFlows::refused`] counts it.
///
/// Exactly one of the threads that race on a new flow is told it is new: renewing an expired
/// flow is one compare-and-swap on its slot. Two threads that find no slot may claim two
/// different ones (their views of which slot is free can differ); a claim is written pending,
/// then the claimant looks at the window again and settles: a claim of the flow earlier in
/// the window, or one settled already, wins and it takes its own back; a later pending one it
/// takes back itself. Each claimant stores its key before it looks (both in one order), so at
/// least one of two sees the other, and the slot whose value they both compare-and-swap
/// decides between them.
pub struct NewFlows {
    table: SlotTable,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for NewFlows {
    fn default() -> Self {
        NewFlows::new(UDP_FLOW_LIMIT)
    }
}

impl NewFlows {
    /// An empty memory for at most `limit` flows.
    pub fn new(limit: usize) -> NewFlows {
        NewFlows {
            table: SlotTable::new(limit),
            hasher: Default::default(),
        }
    }

    /// Flows that found no room, each counted as new at every packet.
    pub fn refused(&self) -> u64 {
        self.table.refused()
    }

    /// Slots holding a flow, live or not.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn key(&self, service: u64, client: SocketAddr) -> u64 {
        let plain = SocketAddr::new(client.ip(), client.port());
        self.hasher.hash_one((service, plain)).max(1)
    }

    /// Records a packet of `client` to the service of serial `service` at `now` (seconds, any
    /// monotonic origin) and says whether it starts a flow: unseen, or silent for longer than
    /// [`UDP_IDLE_SECS`].
    pub fn is_new(&self, service: u64, client: SocketAddr, now: u32) -> bool {
        let key = self.key(service, client);
        // Live while now < expires, so that `now - last <= UDP_IDLE_SECS` is not new.
        let expires = now.saturating_add(UDP_IDLE_SECS + 1);
        let settled = flows::pack(key, 0, expires);
        // A few looks: each lost compare-and-swap means another packet of the flow changed
        // it, and the next look finds what that one did.
        for _ in 0..4 {
            match self.table.find(key) {
                Some((i, v)) if flows::expires(v) > now => {
                    // Refreshed once a second; a pending claim is its claimant's to change.
                    if flows::data(v) & PENDING == 0 && flows::expires(v) < expires {
                        self.table.replace(i, v, settled);
                    }
                    return false;
                }
                Some((i, v)) => {
                    if self.table.replace(i, v, settled) {
                        return true;
                    }
                }
                None => match self
                    .table
                    .claim(key, flows::pack(key, PENDING, expires), now)
                {
                    Claim::Won(i) => return self.settle(key, i, expires),
                    Claim::Lost => {}
                    Claim::Full => return true,
                },
            }
        }
        false
    }

    /// After a won claim of slot `mine`: whether it is the one claim of the flow that counts
    /// (see [`NewFlows`]).
    fn settle(&self, key: u64, mine: usize, expires: u32) -> bool {
        let pending = flows::pack(key, PENDING, expires);
        let mut earlier = true;
        for i in self.table.window(key) {
            if i == mine {
                earlier = false;
                continue;
            }
            if self.table.key_at(i) != key {
                continue;
            }
            for _ in 0..4 {
                let v = self.table.value_at(i);
                if !flows::owns(key, v) || flows::expires(v) == 0 {
                    break;
                }
                if earlier || flows::data(v) & PENDING == 0 {
                    self.table.replace(mine, pending, flows::dead(key));
                    return false;
                }
                if self.table.replace(i, v, flows::dead(key)) {
                    break;
                }
            }
        }
        // Fails when an earlier claim took this one back meanwhile.
        self.table
            .replace(mine, pending, flows::pack(key, 0, expires))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;
    use std::sync::atomic::Ordering;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mapping_event_matches_netnat_example() {
        let flow = flow(Protocol::Tcp, "10.99.1.2:40312", "10.99.1.1:80");
        let rec = MappingEvent {
            iface: "pub0",
            flow: &flow,
        }
        .to_string();
        assert_eq!(rec, "pr:pub0:0a630102:40312:0a630101:80:6");
    }

    #[test]
    fn mapping_event_ipv6_uses_32_hex_digits() {
        let flow = flow(Protocol::Udp, "[fd99:1::2]:5000", "[2001:db8::5]:53");
        let rec = MappingEvent {
            iface: "eth0",
            flow: &flow,
        }
        .to_string();
        assert_eq!(
            rec,
            "pr:eth0:fd990001000000000000000000000002:5000:20010db8000000000000000000000005:53:17"
        );
    }

    /// A flow of `protocol` from `src` to `dst` (socket addresses as text).
    fn flow(protocol: Protocol, src: &str, dst: &str) -> Flow {
        Flow {
            protocol,
            src: sa(src),
            dst: sa(dst),
        }
    }

    #[test]
    fn udp_flow_is_new_once_then_again_after_idle() {
        let m = NewFlows::new(1024);
        let c = sa("10.0.0.1:1234");
        assert!(m.is_new(0, c, 100));
        assert!(!m.is_new(0, c, 101));
        assert!(!m.is_new(0, c, 101 + UDP_IDLE_SECS));
        assert!(m.is_new(0, c, 102 + 2 * UDP_IDLE_SECS));
        assert!(m.is_new(1, c, 500), "another service is another flow");
        assert_eq!((m.len(), m.refused()), (2, 0), "one slot per flow");
    }

    #[test]
    fn a_reload_keeps_the_flows_of_carried_services_only() {
        use crate::engine::monitor::ServiceSet;
        let (a, b) = (
            svc("service pub0 port * 53 UDP 192.168.77.10 5353"),
            svc("service pub0 port * 54 UDP 192.168.77.10 5354"),
        );
        let old = ServiceSet::new(vec![a.clone(), b]);
        // `a` continues as id 1, `b` is gone; a new `c` takes id 0.
        let c = svc("service pub0 port * 55 UDP 192.168.77.10 5355");
        let new = ServiceSet::new(vec![c, a]).carrying(&old, &[Some(1), None]);
        let serial = |set: &ServiceSet, id| set.serial(id).unwrap();
        assert_eq!(serial(&new, 1), serial(&old, 0), "carried");
        assert!(serial(&new, 0) != serial(&old, 0) && serial(&new, 0) != serial(&old, 1));
        let m = NewFlows::new(1024);
        let client = sa("10.0.0.1:1234");
        assert!(m.is_new(serial(&old, 0), client, 10));
        assert!(m.is_new(serial(&old, 1), client, 10));
        assert!(!m.is_new(serial(&new, 1), client, 11), "remembered");
        assert!(
            m.is_new(serial(&new, 0), client, 11),
            "a new service: new flows"
        );
    }

    #[test]
    fn racing_threads_report_each_flow_new_exactly_once() {
        // 8 threads see the same 10,000 flows, each in its own order, twice, in a table of
        // the default size (a smaller one would refuse flows in the odd full window).
        const FLOWS: u16 = 10_000;
        let m = NewFlows::default();
        let news: Vec<std::sync::atomic::AtomicU32> =
            (0..FLOWS).map(|_| Default::default()).collect();
        std::thread::scope(|scope| {
            for t in 0..8u16 {
                let (m, news) = (&m, &news);
                scope.spawn(move || {
                    for round in 0..2 {
                        for k in 0..FLOWS {
                            let port = (k + t * 1237 + round * 77) % FLOWS;
                            let client = SocketAddr::from(([10, 0, 0, 1], port));
                            if m.is_new(7, client, 5) {
                                news[usize::from(port)]
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        let counts: Vec<u32> = news.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        let wrong: Vec<(usize, u32)> = (counts.iter().copied().enumerate())
            .filter(|&(_, n)| n != 1)
            .collect();
        assert!(wrong.is_empty(), "flows not new exactly once: {wrong:?}");
        assert_eq!(m.refused(), 0);
        assert!(m.len() >= usize::from(FLOWS), "{}", m.len());
    }

    #[test]
    fn racing_threads_renew_an_idle_flow_exactly_once() {
        let m = NewFlows::new(64);
        let client = sa("10.0.0.1:1234");
        let mut renewed = 0;
        for epoch in 1..=200u32 {
            let now = epoch * (UDP_IDLE_SECS + 1);
            let news = std::sync::atomic::AtomicU32::new(0);
            std::thread::scope(|scope| {
                for _ in 0..4 {
                    scope.spawn(|| {
                        for _ in 0..50 {
                            if m.is_new(1, client, now) {
                                news.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            assert_eq!(news.load(Ordering::Relaxed), 1, "epoch {epoch}");
            renewed += 1;
        }
        assert_eq!((renewed, m.len()), (200, 1), "one slot, renewed in place");
    }

    #[test]
    fn two_claims_of_one_flow_in_two_slots_settle_on_one() {
        // What two threads that each claimed a slot for the same flow do, one after the
        // other: whichever order they settle in, exactly one counts it.
        for first_settles in [0, 1] {
            let m = NewFlows::new(64);
            let (key, expires) = (m.key(3, sa("10.0.0.1:1234")), 200);
            let pending = flows::pack(key, PENDING, expires);
            let claims: Vec<usize> = (0..2)
                .map(|_| match m.table.claim(key, pending, 0) {
                    Claim::Won(i) => i,
                    other => panic!("{other:?}"),
                })
                .collect();
            let order = [claims[first_settles], claims[1 - first_settles]];
            let won: Vec<bool> = order.iter().map(|&i| m.settle(key, i, expires)).collect();
            assert_eq!(won.iter().filter(|&&w| w).count(), 1, "{won:?}");
            assert!(!m.is_new(3, sa("10.0.0.1:1234"), 1), "settled: known");
            let live = claims
                .iter()
                .filter(|&&i| flows::expires(m.table.value_at(i)) != 0)
                .count();
            assert_eq!(live, 1, "the other claim was taken back");
        }
    }

    #[test]
    fn expired_flows_make_room_and_live_ones_are_refused() {
        let m = NewFlows::new(4);
        let client = |port| SocketAddr::from(([10, 0, 0, 1], port));
        for port in 1..=4 {
            assert!(m.is_new(0, client(port), 0));
        }
        assert_eq!(m.len(), 4);
        // Full of live flows: a fifth is new at every packet, and counted.
        assert!(m.is_new(0, client(5), 1));
        assert!(m.is_new(0, client(5), 1));
        assert_eq!(m.refused(), 2);
        assert!(!m.is_new(0, client(1), 1), "the live ones stay");
        // Once they idle out, new flows take their slots; the memory does not grow.
        let later = 2 + UDP_IDLE_SECS;
        for port in 10..=13 {
            assert!(m.is_new(0, client(port), later));
            assert!(!m.is_new(0, client(port), later));
        }
        assert_eq!((m.len(), m.refused()), (4, 2));
    }

    fn svc(line: &str) -> Service {
        crate::config::parse_service(line).unwrap()
    }

    #[test]
    fn volume_record_format() {
        let s = svc("service pub0 port * 80 TCP 192.168.77.10 8080 0x4000");
        let r = VolumeRecord {
            service: &s,
            in_packets: 12,
            in_bytes: 1040,
            out_packets: 10,
            out_bytes: 8312,
            new_connections: 2,
        };
        assert_eq!(r.to_string(), "vol:pub0:*:80:6:12:1040:10:8312:2");
        let s = svc("service pub0 port 10.99.1.1 53 UDP 192.168.77.10 5353 0x4000");
        let r = VolumeRecord {
            service: &s,
            in_packets: 0,
            in_bytes: 0,
            out_packets: 0,
            out_bytes: 0,
            new_connections: 0,
        };
        assert_eq!(r.to_string(), "vol:pub0:0a630101:53:17:0:0:0:0:0");
    }

    #[test]
    fn packet_record_format() {
        let there = flow(Protocol::Tcp, "10.99.1.2:40312", "10.99.1.1:80");
        let r = PacketRecord {
            iface: "pub0",
            dir: Direction::Inbound,
            flow: &there,
            len: 60,
        };
        assert_eq!(r.to_string(), "pk:pub0:in:0a630102:40312:0a630101:80:6:60");
        let back = flow(Protocol::Udp, "192.168.77.10:5353", "10.99.1.2:41000");
        let r = PacketRecord {
            iface: "pub0",
            dir: Direction::Reply,
            flow: &back,
            len: 33,
        };
        assert_eq!(
            r.to_string(),
            "pk:pub0:out:c0a84d0a:5353:0a630102:41000:17:33"
        );
    }

    #[test]
    fn drop_record_format() {
        let peek = Peek {
            protocol: 6,
            src: "10.99.1.2".parse().unwrap(),
            dst: "10.99.1.1".parse().unwrap(),
            ports: Some((1234, 80)),
            tcp_flags: None,
        };
        let r = DropRecord {
            iface: "pub0",
            dir: Direction::Inbound,
            action: DropAction::Drop,
            reason: Some(Refusal::Malformed(wire::Malformed::BadHeaderLength)),
            peek: Some(peek),
        };
        assert_eq!(
            r.to_string(),
            "dr:pub0:in:drop:malformed-bad-header-length:0a630102:1234:0a630101:80:6"
        );
        let r = DropRecord {
            iface: "pub0",
            dir: Direction::Reply,
            action: DropAction::Drop,
            reason: Some(Refusal::UnmappedReply),
            peek: Some(Peek {
                ports: None,
                ..peek
            }),
        };
        assert_eq!(
            r.to_string(),
            "dr:pub0:out:drop:unmapped-reply:0a630102:-:0a630101:-:6"
        );
        let r = DropRecord {
            iface: "-",
            dir: Direction::Inbound,
            action: DropAction::Pass,
            reason: None,
            peek: None,
        };
        assert_eq!(r.to_string(), "dr:-:in:pass:not-ours:-:-:-:-:-");
        let r = DropRecord {
            iface: "pub0",
            dir: Direction::Inbound,
            action: DropAction::Drop,
            reason: Some(Refusal::Truncated),
            peek: None,
        };
        assert_eq!(r.to_string(), "dr:pub0:in:drop:oversize:-:-:-:-:-");
    }

    #[test]
    fn icmp_record_format_and_type_code() {
        let quoted = flow(Protocol::Udp, "10.99.1.2:41000", "192.168.77.10:5353");
        let r = IcmpRecord {
            iface: "pub0",
            dir: Direction::Reply,
            type_code: Some((3, 3)),
            quoted: &quoted,
        };
        assert_eq!(
            r.to_string(),
            "ic:pub0:out:3:3:0a630102:41000:c0a84d0a:5353:17"
        );
        let r = IcmpRecord {
            type_code: None,
            ..r
        };
        assert_eq!(
            r.to_string(),
            "ic:pub0:out:-:-:0a630102:41000:c0a84d0a:5353:17"
        );

        let mut v4 = vec![0u8; 28];
        v4[0] = 0x45;
        v4[9] = 1;
        v4[20] = 3;
        v4[21] = 3;
        assert_eq!(icmp_type_code(&v4), Some((3, 3)));
        v4[9] = 17;
        assert_eq!(icmp_type_code(&v4), None);
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[6] = 58;
        v6[40] = 1;
        v6[41] = 4;
        assert_eq!(icmp_type_code(&v6), Some((1, 4)));
        assert_eq!(icmp_type_code(&v6[..40]), None);
        // Past a destination options header (8 bytes), as the rewrite finds it.
        let mut v6 = vec![0u8; 56];
        v6[0] = 0x60;
        v6[6] = 60;
        v6[40] = 58;
        v6[48] = 2;
        assert_eq!(icmp_type_code(&v6), Some((2, 0)));
        // IPv4: a header length below 20 bytes, or a later fragment, holds no ICMP header.
        let mut v4 = vec![0u8; 28];
        v4[0] = 0x44;
        v4[9] = 1;
        assert_eq!(icmp_type_code(&v4), None);
        v4[0] = 0x45;
        v4[7] = 1;
        assert_eq!(icmp_type_code(&v4), None);
    }

    #[test]
    fn suppressed_record_format() {
        let s = svc("service pub0 port * 53 UDP 192.168.77.10 5353 0x2000");
        let r = SuppressedRecord {
            service: Some(&s),
            kind: RecordKind::Packet,
            count: 1187,
        };
        assert_eq!(r.to_string(), "sup:pub0:*:53:17:pk:1187");
        let r = SuppressedRecord {
            service: None,
            kind: RecordKind::Drop,
            count: 3,
        };
        assert_eq!(r.to_string(), "sup:-:-:-:-:dr:3");
    }

    #[test]
    fn memory_stays_bounded_under_many_flows() {
        let m = NewFlows::new(100);
        for port in 1..=50_000u16 {
            m.is_new(0, SocketAddr::from(([10, 0, 0, 1], port)), 1);
        }
        assert_eq!(m.len(), 100);
        assert!(m.refused() >= 49_900, "{}", m.refused());
    }
}
