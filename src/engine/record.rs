//! Service records for the log, one per flag bit, and the memory of UDP flows that tells a
//! flow's first packet from the rest. Pure; the daemon decides when to call it.
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
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, SocketAddr};

use crate::config::{AppAddr, Service};
use crate::engine::datapath::{Peek, Refusal};
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
///   another flow).
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
            DropAction::Pass => "pass",
        };
        write!(f, "dr:{}:{}:{action}:", self.iface, dir_name(self.dir))?;
        match self.reason {
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
/// Number of UDP flows remembered at once; memory is `SLOTS` × one slot, allocated once.
pub const UDP_FLOW_SLOTS: usize = 16384;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    service: usize,
    client: SocketAddr,
}

#[derive(Clone, Copy)]
struct Slot {
    key: FlowKey,
    last_seen: u32,
}

/// A bounded, direct-mapped memory of recent UDP flows. A flow that collides with another
/// evicts it; the evicted flow's next packet is then reported as new again. That is the price
/// of a bound that holds under a flood of spoofed sources.
pub struct FlowMemory {
    slots: Box<[Option<Slot>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for FlowMemory {
    fn default() -> Self {
        FlowMemory::with_slots(UDP_FLOW_SLOTS)
    }
}

impl FlowMemory {
    /// `slots` is rounded up to a power of two.
    pub fn with_slots(slots: usize) -> FlowMemory {
        let n = slots.max(1).next_power_of_two();
        FlowMemory {
            slots: vec![None; n].into_boxed_slice(),
            hasher: Default::default(),
        }
    }

    /// Records a packet of `client` to `service` at `now` (seconds, any monotonic origin) and
    /// says whether it starts a flow: unseen, or silent for longer than the idle timeout.
    pub fn is_new(&mut self, service: usize, client: SocketAddr, now: u32) -> bool {
        let key = FlowKey { service, client };
        let i = (self.hasher.hash_one(key) as usize) & (self.slots.len() - 1);
        let slot = &mut self.slots[i];
        let new = match slot {
            Some(s) if s.key == key => now.wrapping_sub(s.last_seen) > UDP_IDLE_SECS,
            _ => true,
        };
        *slot = Some(Slot {
            key,
            last_seen: now,
        });
        new
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Keeps the flows of services that continue under a new id after a reload
    /// (`map[old] = Some(new)`, see [`crate::engine::stats::carry_map`]) and forgets the others.
    pub fn remap(&mut self, map: &[Option<usize>]) {
        let mut next = FlowMemory {
            slots: vec![None; self.slots.len()].into_boxed_slice(),
            hasher: self.hasher.clone(),
        };
        for slot in self.slots.iter().flatten() {
            if let Some(Some(new)) = map.get(slot.key.service) {
                let key = FlowKey {
                    service: *new,
                    client: slot.key.client,
                };
                let i = (next.hasher.hash_one(key) as usize) & (next.slots.len() - 1);
                let keep = match next.slots[i] {
                    Some(other) => other.last_seen.wrapping_sub(slot.last_seen) > u32::MAX / 2,
                    None => true,
                };
                if keep {
                    next.slots[i] = Some(Slot {
                        key,
                        last_seen: slot.last_seen,
                    });
                }
            }
        }
        *self = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mapping_event_matches_netnat_example() {
        let flow = Flow {
            protocol: Protocol::Tcp,
            src: sa("10.99.1.2:40312"),
            dst: sa("10.99.1.1:80"),
        };
        let rec = MappingEvent {
            iface: "pub0",
            flow: &flow,
        }
        .to_string();
        assert_eq!(rec, "pr:pub0:0a630102:40312:0a630101:80:6");
    }

    #[test]
    fn mapping_event_ipv6_uses_32_hex_digits() {
        let flow = Flow {
            protocol: Protocol::Udp,
            src: sa("[fd99:1::2]:5000"),
            dst: sa("[2001:db8::5]:53"),
        };
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

    #[test]
    fn udp_flow_is_new_once_then_again_after_idle() {
        let mut m = FlowMemory::with_slots(1024);
        let c = sa("10.0.0.1:1234");
        assert!(m.is_new(0, c, 100));
        assert!(!m.is_new(0, c, 101));
        assert!(!m.is_new(0, c, 101 + UDP_IDLE_SECS));
        assert!(m.is_new(0, c, 102 + 2 * UDP_IDLE_SECS));
        assert!(m.is_new(1, c, 500), "another service is another flow");
    }

    #[test]
    fn remap_keeps_continuing_services_only() {
        let mut m = FlowMemory::with_slots(1024);
        let c = sa("10.0.0.1:1234");
        assert!(m.is_new(0, c, 10));
        assert!(m.is_new(1, c, 10));
        // Service 0 continues as 1, service 1 is gone.
        m.remap(&[Some(1), None]);
        assert!(
            !m.is_new(1, c, 11),
            "flow of the continuing service is remembered"
        );
        assert!(m.is_new(0, c, 11), "nothing left under the old id");
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
        let flow = Flow {
            protocol: Protocol::Tcp,
            src: sa("10.99.1.2:40312"),
            dst: sa("10.99.1.1:80"),
        };
        let r = PacketRecord {
            iface: "pub0",
            dir: Direction::Inbound,
            flow: &flow,
            len: 60,
        };
        assert_eq!(r.to_string(), "pk:pub0:in:0a630102:40312:0a630101:80:6:60");
        let back = Flow {
            protocol: Protocol::Udp,
            src: sa("192.168.77.10:5353"),
            dst: sa("10.99.1.2:41000"),
        };
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
        let quoted = Flow {
            protocol: Protocol::Udp,
            src: sa("10.99.1.2:41000"),
            dst: sa("192.168.77.10:5353"),
        };
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
        let mut m = FlowMemory::with_slots(100);
        assert_eq!(m.capacity(), 128);
        for port in 1..=50_000u16 {
            m.is_new(0, SocketAddr::from(([10, 0, 0, 1], port)), 1);
        }
        assert_eq!(m.capacity(), 128);
    }
}
