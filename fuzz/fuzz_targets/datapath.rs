//! One queued packet through `datapath::handle`, as a queue thread hands it in: arbitrary
//! bytes with arbitrary metadata (hook, input and output interface, checksum state, truncated,
//! GSO, mark), against a table of fixed services (both families, `*` and fixed apparent
//! addresses, TCP and UDP, two interfaces and one that is absent) or of services made from the
//! input. Then what the monitor reads from the packet: `datapath::peek`, `icmp_type_code` and
//! every record the event could produce.
//!
//! Input: `hook flags mark[4] [count services[6]...] packet...` (see [`Meta::read`]).
//!
//! Beyond "never panics":
//! - the decision matches the event (only a translation sends a payload and sets the mark, to
//!   the packet's mark OR netnat's), and only hooks 0 and 4 and untruncated packets are
//!   translated;
//! - a packet not translated is left byte for byte as it came;
//! - a translated packet keeps its length, IP version and IP lengths; an IPv4 header checksum
//!   and (checksum complete) a TCP, UDP or ICMP checksum that were right stay right; UDP over
//!   IPv4 without a checksum stays without, and never gets a zero one;
//! - a translated TCP/UDP packet now carries the service's actual (inbound) or apparent
//!   (reply) endpoint, the other end unchanged, on the service's interface; a translated ICMP
//!   error keeps its type and code;
//! - records are one line with the documented number of fields.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use netnat::config::{AppAddr, Flags, Protocol, Service, parse_service};
use netnat::engine::datapath::{self, Event, Refusal};
use netnat::queue::{Packet, Verdict};
use netnat::engine::record::{
    DropAction, DropRecord, IcmpRecord, MappingEvent, PacketRecord, icmp_type_code,
};
use netnat::engine::service::{FlowMemory, Interfaces, ServiceTable};
use netnat::wire::{Direction, Kind};

/// netnat's default mark bits.
const MARK: u32 = 0x4e00;

const FIXED: [&str; 7] = [
    "service pub0 port * 80 TCP 192.168.77.10 8080 0xf800",
    "service pub0 port * 53 UDP 192.168.77.53 53 0xf800",
    "service pub0 port 10.99.1.5 443 TCP 192.168.77.11 443 0x8000",
    "service pub0 port * 80 TCP fd00::10 8080 0xf800",
    "service pub0 port 2001:db8::5 53 UDP fd00::53 5353 0x1800",
    "service ppp0 port * 25 TCP 10.0.0.25 25 0x0800",
    "service pub1 port * 80 TCP 192.168.77.12 80",
];

/// pub0 (ifindex 7) with an address of each family, ppp0 (8) with IPv4 only; pub1 is absent,
/// so its services wait.
struct Ifaces;

impl Interfaces for Ifaces {
    fn index(&self, name: &str) -> Option<u32> {
        match name {
            "pub0" => Some(7),
            "ppp0" => Some(8),
            _ => None,
        }
    }

    fn address(&self, name: &str, v6: bool) -> Option<IpAddr> {
        let a = match (name, v6) {
            ("pub0", false) => "10.99.1.1",
            ("pub0", true) => "2001:db8::1",
            ("ppp0", false) => "203.0.113.1",
            _ => return None,
        };
        a.parse().ok()
    }
}

/// The interface indexes a packet may name: pub0, ppp0, none, one no service has.
const IFINDEX: [u32; 4] = [7, 8, 0, 9];

/// Addresses the services made from the input pick from: the interfaces' own and the fixed
/// services', so that such services and the seeds' packets meet.
const APP4: [&str; 3] = ["10.99.1.1", "10.99.1.5", "203.0.113.1"];
const APP6: [&str; 3] = ["2001:db8::1", "2001:db8::5", "fd00::10"];
const ACT4: [&str; 4] = ["192.168.77.10", "192.168.77.53", "10.0.0.25", "10.99.1.1"];
const ACT6: [&str; 4] = ["fd00::10", "fd00::53", "2001:db8::1", "fd00::1"];

struct Meta {
    hook: u8,
    checksum_ready: bool,
    truncated: bool,
    gso: bool,
    indev: u32,
    outdev: u32,
    mark: u32,
    /// Services made from the input instead of the fixed ones.
    services: Option<Vec<Service>>,
}

impl Meta {
    /// Splits the input into the metadata and the packet.
    fn read(data: &[u8]) -> Option<(Meta, &[u8])> {
        let head = data.get(..6)?;
        let flags = head[1];
        let hook = match head[0] % 8 {
            0..=2 => 0,
            3..=5 => 4,
            n => n - 5, // 1 (input) or 2 (forward): hooks netnat never queues from
        };
        let mut rest = &data[6..];
        let services = if flags & 0x08 != 0 {
            let (&count, tail) = rest.split_first()?;
            let n = usize::from(count % 4) + 1;
            let spec = tail.get(..n * 6)?;
            rest = &tail[n * 6..];
            Some(spec.chunks(6).map(service_from).collect())
        } else {
            None
        };
        let meta = Meta {
            hook,
            checksum_ready: flags & 0x01 != 0,
            truncated: flags & 0x02 != 0,
            gso: flags & 0x04 != 0,
            indev: IFINDEX[usize::from(flags >> 4) & 3],
            outdev: IFINDEX[usize::from(flags >> 6) & 3],
            mark: u32::from_be_bytes([head[2], head[3], head[4], head[5]]),
            services,
        };
        Some((meta, rest))
    }
}

/// A service from 6 bytes: interface, family, apparent address or `*`, protocol, ports, actual
/// address and flags each from a few bits, mostly from the pools above.
fn service_from(b: &[u8]) -> Service {
    let v6 = b[0] & 0x04 != 0;
    let pick = |pool4: &[&str], pool6: &[&str], i: u8| -> IpAddr {
        let pool = if v6 { pool6 } else { pool4 };
        pool[usize::from(i) % pool.len()].parse().unwrap()
    };
    let app_addr = match (b[0] >> 3) & 3 {
        0 => AppAddr::Interface,
        i => AppAddr::Fixed(pick(&APP4, &APP6, i - 1)),
    };
    let app_port = match b[1] & 3 {
        0 => 80,
        1 => 53,
        2 => 443,
        _ => u16::from_be_bytes([b[2], b[3]]).max(1),
    };
    let act_port = match b[5] & 3 {
        0 => 8080,
        1 => 53,
        2 => 80,
        _ => u16::from_be_bytes([b[2] ^ b[5], b[3]]).max(1),
    };
    let protocol = if b[0] & 0x20 != 0 {
        Protocol::Udp
    } else {
        Protocol::Tcp
    };
    Service::single(
        ["pub0", "ppp0", "pub1", "pub0"][usize::from(b[0] & 3)],
        app_addr,
        app_port,
        protocol,
        pick(&ACT4, &ACT6, b[4]),
        act_port,
        // Bits 11-15: exactly the flags netnat knows.
        Flags(u16::from(b[4] >> 3) << 11),
    )
}

fn fixed_services() -> Vec<Service> {
    FIXED.iter().map(|l| parse_service(l).unwrap()).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((meta, packet)) = Meta::read(data) else {
        return;
    };
    let services = meta.services.clone().unwrap_or_else(fixed_services);
    let table = ServiceTable::build(&services, &Ifaces);

    // What the monitor reads from any queued packet, before and after: lenient, never panics.
    let peek_before = datapath::peek(packet);
    if let Some(p) = peek_before {
        assert_eq!(p.src.is_ipv4(), p.dst.is_ipv4());
        assert_eq!(p.src.is_ipv4(), packet[0] >> 4 == 4);
    }
    let type_code_before = icmp_type_code(packet);

    let mut buf = packet.to_vec();
    let mut pkt = Packet {
        meta: netnat::queue::PacketMeta {
            id: 1,
            hw_protocol: match packet.first().map(|b| b >> 4) {
                Some(6) => 0x86dd,
                _ => 0x0800,
            },
            hook: meta.hook,
            indev: meta.indev,
            outdev: meta.outdev,
            mark: meta.mark,
        },
        checksum_ready: meta.checksum_ready,
        gso: meta.gso,
        truncated: meta.truncated,
        orig_len: None,
        payload: &mut buf,
    };
    let (decision, event) = datapath::handle(&table, &FlowMemory::default(), (MARK, 0), &mut pkt);
    let dir = datapath::direction_of(meta.hook);

    match event {
        Event::Translated {
            id,
            dir: tdir,
            flow,
            kind,
        } => {
            assert_eq!(Some(tdir), dir);
            assert!(!meta.truncated);
            assert!(decision.modified && decision.verdict == Verdict::Accept);
            // Every translated packet carries netnat's bits, replies too (the leak guard
            // checks them).
            assert_eq!(decision.mark, Some(meta.mark | MARK));
            let entry = table
                .entry(id)
                .expect("translated for a service in the table");
            let service = &services[id];
            assert_eq!(entry.protocol, flow.protocol);
            let ifindex = match tdir {
                Direction::Inbound => meta.indev,
                Direction::Reply => meta.outdev,
            };
            assert_eq!(ifindex, entry.ifindex);
            assert_eq!(buf.len(), packet.len());
            same_ip_lengths(packet, &buf);
            if let (Some(before), Some(after)) = (ip_header_sum(packet), ip_header_sum(&buf)) {
                assert!(!before || after, "a right IPv4 header checksum went wrong");
            }
            if meta.checksum_ready {
                transport_checksum_kept(packet, &buf);
            }
            match kind {
                Kind::Plain { .. } => {
                    match tdir {
                        Direction::Inbound => assert_eq!(flow.dst, entry.app),
                        Direction::Reply => assert_eq!(flow.src, entry.act),
                    }
                    endpoints_rewritten(packet, &buf, tdir, entry.act, entry.app);
                }
                Kind::IcmpError => {
                    assert_eq!(icmp_type_code(&buf), type_code_before);
                    assert!(type_code_before.is_some() || packet[0] >> 4 == 6);
                }
            }
            let line = MappingEvent {
                iface: &service.iface,
                flow: &flow,
            }
            .to_string();
            fields(&line, "pr", 7);
            let line = PacketRecord {
                iface: &service.iface,
                dir: tdir,
                flow: &flow,
                len: buf.len(),
            }
            .to_string();
            fields(&line, "pk", 9);
            let line = IcmpRecord {
                iface: &service.iface,
                dir: tdir,
                type_code: icmp_type_code(&buf),
                quoted: &flow,
            }
            .to_string();
            fields(&line, "ic", 10);
        }
        // Refused (a client outside a from list) is passed untouched like Passed.
        Event::Passed | Event::Refused { .. } | Event::Dropped { .. } => {
            assert!(!decision.modified, "{event:?}");
            assert_eq!(decision.mark, None);
            assert!(buf == packet, "untranslated packet changed: {event:?}");
            if let Event::Dropped { reason, id } = event {
                assert_eq!(decision.verdict, Verdict::Drop);
                assert!(dir.is_some());
                // netnat's own bits on an inbound packet: back from the guard after a first
                // translation (an ICMP error conntrack relates to nothing), dropped first.
                let second_pass = dir == Some(Direction::Inbound) && meta.mark & MARK == MARK;
                assert_eq!(reason == Refusal::UnrelatedIcmp, second_pass, "{reason:?}");
                if !second_pass {
                    assert_eq!(reason == Refusal::Truncated, meta.truncated, "{reason:?}");
                }
                if let Some(id) = id {
                    assert!(table.entry(id).is_some(), "dropped for service {id}");
                    // Attributed by the ports of the packet, or of its quote when it is an
                    // ICMP error back from the guard.
                    assert!(second_pass || peek_before.is_some_and(|p| p.ports.is_some()));
                }
            } else {
                assert_eq!(decision.verdict, Verdict::Accept);
                assert!(dir.is_none() || !meta.truncated);
            }
            if let Some(dir) = dir {
                let (action, reason) = match event {
                    Event::Dropped { reason, .. } => (DropAction::Drop, Some(reason)),
                    _ => (DropAction::Pass, None),
                };
                let line = DropRecord {
                    iface: "pub0",
                    dir,
                    action,
                    reason,
                    peek: datapath::peek(&buf),
                }
                .to_string();
                fields(&line, "dr", 10);
            }
        }
    }
});

/// A record: one line, its type first, `n` colon-separated fields.
fn fields(line: &str, kind: &str, n: usize) {
    assert!(!line.contains('\n'), "{line:?}");
    assert!(line.starts_with(&format!("{kind}:")), "{line:?}");
    assert_eq!(line.split(':').count(), n, "{line:?}");
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The IP version and the lengths the IP header declares are the same after a translation.
fn same_ip_lengths(before: &[u8], after: &[u8]) {
    assert_eq!(before[0] >> 4, after[0] >> 4);
    match before[0] >> 4 {
        4 => {
            assert_eq!(before[0] & 0x0f, after[0] & 0x0f);
            assert_eq!(be16(before, 2), be16(after, 2));
        }
        6 => assert_eq!(be16(before, 4), be16(after, 4)),
        v => panic!("translated a packet of IP version {v}"),
    }
}

/// One's complement sum of `bytes` as 16-bit big-endian words (odd length: zero padded).
fn sum(bytes: &[u8]) -> u64 {
    let mut s = 0u64;
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        s += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        s += u64::from(*last) << 8;
    }
    s
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Whether the IPv4 header checksum is right; `None` for anything but a whole IPv4 header.
fn ip_header_sum(p: &[u8]) -> Option<bool> {
    if p.first()? >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let header = p.get(..ihl).filter(|_| ihl >= 20)?;
    Some(fold(sum(header)) == 0xffff)
}

/// The transport part of an unfragmented packet whose transport header follows the IP header
/// directly: protocol, the bytes (to the declared end), and the pseudo-header sum that its
/// checksum covers (none for ICMPv4).
fn transport(p: &[u8]) -> Option<(u8, &[u8], u64)> {
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let total = usize::from(be16(p.get(..20)?, 2));
            let frag = be16(p, 6);
            if ihl < 20 || total < ihl || total > p.len() || frag & 0x3fff != 0 {
                return None;
            }
            let proto = p[9];
            let l4 = &p[ihl..total];
            let pseudo = sum(&p[12..20]) + u64::from(proto) + l4.len() as u64;
            Some((proto, l4, if proto == 1 { 0 } else { pseudo }))
        }
        6 => {
            let head = p.get(..40)?;
            let total = 40 + usize::from(be16(head, 4));
            if total > p.len() {
                return None;
            }
            let proto = p[6];
            let l4 = &p[40..total];
            Some((
                proto,
                l4,
                sum(&p[8..40]) + u64::from(proto) + l4.len() as u64,
            ))
        }
        _ => None,
    }
}

/// Offset of the checksum field in the transport header of `proto`.
fn checksum_at(proto: u8) -> Option<usize> {
    match proto {
        6 => Some(16),
        17 => Some(6),
        1 | 58 => Some(2),
        _ => None,
    }
}

/// A transport checksum that was right stays right (the packet's checksum state was
/// "complete"); UDP over IPv4 without one (0) stays without, and a computed 0 is sent as 0xFFFF.
fn transport_checksum_kept(before: &[u8], after: &[u8]) {
    let (Some((proto, l4b, pb)), Some((_, l4a, pa))) = (transport(before), transport(after)) else {
        return;
    };
    let Some(at) = checksum_at(proto) else {
        return;
    };
    if l4b.len() < at + 2 {
        return;
    }
    let (fb, fa) = (be16(l4b, at), be16(l4a, at));
    let udp4 = proto == 17 && before[0] >> 4 == 4;
    if udp4 && fb == 0 {
        assert_eq!(fa, 0, "UDP/IPv4 without checksum got one");
        return;
    }
    let right_before = fold(sum(l4b) + pb) == 0xffff;
    let right_after = fold(sum(l4a) + pa) == 0xffff;
    assert!(
        !right_before || right_after,
        "protocol {proto}: a right checksum {fb:#06x} became a wrong {fa:#06x}"
    );
    if proto == 17 && fb != 0 {
        assert_ne!(fa, 0, "a UDP checksum became 0 (none)");
    }
}

/// The address and port of a TCP/UDP packet, as `datapath::peek` reads them.
fn ends(p: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let p = datapath::peek(p)?;
    let (s, d) = p.ports?;
    Some((SocketAddr::new(p.src, s), SocketAddr::new(p.dst, d)))
}

/// Inbound: the destination is now the actual endpoint; reply: the source is now the apparent
/// one. The other end is untouched.
fn endpoints_rewritten(
    before: &[u8],
    after: &[u8],
    dir: Direction,
    act: SocketAddr,
    app: SocketAddr,
) {
    // peek finds the headers with the rewrite's own parser: it reads the ports of every
    // packet the rewrite translated, before and after.
    let (Some((src_b, dst_b)), Some((src_a, dst_a))) = (ends(before), ends(after)) else {
        panic!("peek found no ports in a translated packet");
    };
    match dir {
        Direction::Inbound => {
            assert_eq!(dst_b, app);
            assert_eq!(dst_a, act);
            assert_eq!(src_a, src_b);
        }
        Direction::Reply => {
            assert_eq!(src_b, act);
            assert_eq!(src_a, app);
            assert_eq!(dst_a, dst_b);
        }
    }
}
