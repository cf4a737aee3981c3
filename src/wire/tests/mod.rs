//! Test support: packet builders and an independent verifier.
//!
//! Packets are assembled here byte by byte and their checksums are computed with
//! `pnet_packet`, never with the code under test, so that a mistake in `wire::checksum`
//! cannot hide itself. The verifier walks headers on its own for the same reason.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};

use pnet_packet::icmp::IcmpPacket;
use pnet_packet::icmpv6::Icmpv6Packet;
use pnet_packet::ipv4::Ipv4Packet;
use pnet_packet::tcp::TcpPacket;
use pnet_packet::udp::UdpPacket;

use super::*;
use crate::config::Protocol;

mod props;
mod unit;

/// An IPv6 extension header for the builder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options of `1 + n` 8-byte units.
    HopByHop(u8),
    /// Destination options of `1 + n` 8-byte units.
    DestOpts(u8),
    /// Type 0 routing header, no segments left (one 8-byte unit, no addresses).
    Routing {
        segments_left: u8,
    },
    Fragment {
        offset: u16,
        more: bool,
    },
    /// Authentication header of `(n + 2) * 4` bytes.
    Auth(u8),
}

impl Ext {
    fn number(self) -> u8 {
        match self {
            Ext::HopByHop(_) => 0,
            Ext::DestOpts(_) => 60,
            Ext::Routing { .. } => 43,
            Ext::Fragment { .. } => 44,
            Ext::Auth(_) => 51,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop(n) | Ext::DestOpts(n) => {
                let mut b = vec![0u8; (usize::from(n) + 1) * 8];
                b[0] = next;
                b[1] = n;
                // PadN option filling the rest, so that the header is well-formed.
                b[2] = 1;
                b[3] = (b.len() - 4) as u8;
                b
            }
            Ext::Routing { segments_left } => vec![next, 0, 0, segments_left, 0, 0, 0, 0],
            Ext::Fragment { offset, more } => {
                let w = (offset << 3) | u16::from(more);
                let [hi, lo] = w.to_be_bytes();
                vec![next, 0, hi, lo, 0x12, 0x34, 0x56, 0x78]
            }
            Ext::Auth(n) => {
                let mut b = vec![0u8; (usize::from(n) + 2) * 4];
                b[0] = next;
                b[1] = n;
                b
            }
        }
    }
}

/// What a TCP/UDP packet to build looks like.
#[derive(Clone, Debug)]
pub struct Spec {
    pub proto: Protocol,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
    /// IPv4 option words (NOPs), 0..=10.
    pub v4_option_words: u8,
    pub v6_ext: Vec<Ext>,
    pub tcp_flags: u8,
    /// TCP option words (NOPs), 0..=10.
    pub tcp_option_words: u8,
    /// IPv4 UDP sent without checksum.
    pub udp_no_csum: bool,
    /// IPv4: set the More Fragments bit (the builder still writes the whole datagram).
    pub v4_more_fragments: bool,
}

impl Spec {
    pub fn new(proto: Protocol, src: &str, dst: &str) -> Spec {
        Spec {
            proto,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            payload: b"netnat test payload".to_vec(),
            v4_option_words: 0,
            v6_ext: Vec::new(),
            tcp_flags: 0x18,
            tcp_option_words: 0,
            udp_no_csum: false,
            v4_more_fragments: false,
        }
    }
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Builds the transport segment without its checksum.
fn transport(spec: &Spec) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&spec.src.port().to_be_bytes());
    l4.extend_from_slice(&spec.dst.port().to_be_bytes());
    match spec.proto {
        Protocol::Tcp => {
            l4.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            l4.extend_from_slice(&0x9abc_def0u32.to_be_bytes());
            l4.push((5 + spec.tcp_option_words) << 4);
            l4.push(spec.tcp_flags);
            l4.extend_from_slice(&[0xfa, 0xf0, 0, 0, 0, 0]);
            l4.extend(std::iter::repeat_n(
                1u8,
                usize::from(spec.tcp_option_words) * 4,
            ));
        }
        Protocol::Udp => {
            l4.extend_from_slice(&((8 + spec.payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
    }
    l4.extend_from_slice(&spec.payload);
    l4
}

/// Checksum of a transport segment by pnet (UDP's computed 0 written as 0xFFFF).
fn pnet_l4_checksum(proto: Protocol, l4: &[u8], src: IpAddr, dst: IpAddr) -> u16 {
    match (proto, src, dst) {
        (Protocol::Tcp, IpAddr::V4(s), IpAddr::V4(d)) => {
            pnet_packet::tcp::ipv4_checksum(&TcpPacket::new(l4).unwrap(), &s, &d)
        }
        (Protocol::Tcp, IpAddr::V6(s), IpAddr::V6(d)) => {
            pnet_packet::tcp::ipv6_checksum(&TcpPacket::new(l4).unwrap(), &s, &d)
        }
        (Protocol::Udp, IpAddr::V4(s), IpAddr::V4(d)) => udp_nonzero(
            pnet_packet::udp::ipv4_checksum(&UdpPacket::new(l4).unwrap(), &s, &d),
        ),
        (Protocol::Udp, IpAddr::V6(s), IpAddr::V6(d)) => udp_nonzero(
            pnet_packet::udp::ipv6_checksum(&UdpPacket::new(l4).unwrap(), &s, &d),
        ),
        _ => panic!("mixed address families"),
    }
}

fn udp_nonzero(c: u16) -> u16 {
    if c == 0 { 0xFFFF } else { c }
}

/// Wraps an L4 message into an IP header (with `spec`'s options / extension headers).
fn ip_packet(
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    l4: &[u8],
    v4_option_words: u8,
    v4_more_fragments: bool,
    v6_ext: &[Ext],
) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            let ihl = 5 + v4_option_words;
            let total = usize::from(ihl) * 4 + l4.len();
            let mut p = vec![0x40 | ihl, 0];
            p.extend_from_slice(&(total as u16).to_be_bytes());
            p.extend_from_slice(&[0xbe, 0xef]);
            p.extend_from_slice(if v4_more_fragments {
                &[0x20, 0]
            } else {
                &[0x40, 0]
            });
            p.extend_from_slice(&[64, protocol, 0, 0]);
            p.extend_from_slice(&octets(src));
            p.extend_from_slice(&octets(dst));
            p.extend(std::iter::repeat_n(1u8, usize::from(v4_option_words) * 4));
            let c = pnet_packet::ipv4::checksum(&Ipv4Packet::new(&p).unwrap());
            p[10..12].copy_from_slice(&c.to_be_bytes());
            p.extend_from_slice(l4);
            p
        }
        (IpAddr::V6(_), IpAddr::V6(_)) => {
            let mut ext = Vec::new();
            for (i, e) in v6_ext.iter().enumerate() {
                let next = v6_ext.get(i + 1).map_or(protocol, |n| n.number());
                ext.extend_from_slice(&e.bytes(next));
            }
            let first = v6_ext.first().map_or(protocol, |e| e.number());
            let mut p = vec![0x60, 0x0a, 0xbc, 0xde];
            p.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
            p.extend_from_slice(&[first, 64]);
            p.extend_from_slice(&octets(src));
            p.extend_from_slice(&octets(dst));
            p.extend_from_slice(&ext);
            p.extend_from_slice(l4);
            p
        }
        _ => panic!("mixed address families"),
    }
}

/// Builds a TCP/UDP packet with correct checksums (computed by pnet).
pub fn build(spec: &Spec) -> Vec<u8> {
    let mut l4 = transport(spec);
    let c = pnet_l4_checksum(spec.proto, &l4, spec.src.ip(), spec.dst.ip());
    let at = csum_at(spec.proto);
    let no_csum = spec.proto == Protocol::Udp && spec.udp_no_csum && spec.src.is_ipv4();
    if !no_csum {
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    ip_packet(
        spec.src.ip(),
        spec.dst.ip(),
        spec.proto.number(),
        &l4,
        spec.v4_option_words,
        spec.v4_more_fragments,
        &spec.v6_ext,
    )
}

fn csum_at(proto: Protocol) -> usize {
    match proto {
        Protocol::Tcp => 16,
        Protocol::Udp => 6,
    }
}

/// The pseudo-header seed that a CHECKSUM_PARTIAL packet carries in its checksum field:
/// the folded (not complemented) pseudo-header sum, computed here with plain u32 arithmetic.
pub fn seed(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u16 {
    let mut s: u32 = 0;
    for pair in octets(src).chunks(2).chain(octets(dst).chunks(2)) {
        s += u32::from(pair[0]) << 8 | u32::from(pair[1]);
    }
    s += u32::from(proto) + (len as u32 >> 16) + (len as u32 & 0xFFFF);
    while s > 0xFFFF {
        s = (s & 0xFFFF) + (s >> 16);
    }
    s as u16
}

/// Builds an ICMP (v4) or ICMPv6 message from `src` to `dst` with a correct checksum.
pub fn icmp(src: IpAddr, dst: IpAddr, ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let (proto, c) = match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (
            1,
            pnet_packet::icmp::checksum(&IcmpPacket::new(&m).unwrap()),
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => (
            58,
            pnet_packet::icmpv6::checksum(&Icmpv6Packet::new(&m).unwrap(), &s, &d),
        ),
        _ => panic!("mixed address families"),
    };
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ip_packet(src, dst, proto, &m, 0, false, &[])
}

/// Independent header walk: (is_v4, src, dst, protocol, l4 offset, end).
pub fn walk(p: &[u8]) -> Option<(IpAddr, IpAddr, u8, usize, usize)> {
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 15) * 4;
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            let src: [u8; 4] = p.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = p.get(16..20)?.try_into().ok()?;
            Some((src.into(), dst.into(), p[9], ihl, total.min(p.len())))
        }
        6 => {
            let src: [u8; 16] = p.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = p.get(24..40)?.try_into().ok()?;
            let end = (40 + usize::from(u16::from_be_bytes([p[4], p[5]]))).min(p.len());
            let mut next = p[6];
            let mut off = 40;
            loop {
                let len = match next {
                    0 | 43 | 60 => (usize::from(*p.get(off + 1)?) + 1) * 8,
                    51 => (usize::from(*p.get(off + 1)?) + 2) * 4,
                    44 => 8,
                    _ => return Some((src.into(), dst.into(), next, off, end)),
                };
                next = *p.get(off)?;
                off += len;
            }
        }
        _ => None,
    }
}

fn field(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

/// Checks every checksum of `p` with pnet. For ICMP errors, the quoted IPv4 header checksum
/// and, when the quote holds the whole packet, the quoted packet's checksums as well.
pub fn verify(p: &[u8]) -> Result<(), String> {
    let (src, dst, proto, l4, end) = walk(p).ok_or("unwalkable")?;
    if src.is_ipv4() {
        let want = pnet_packet::ipv4::checksum(&Ipv4Packet::new(&p[..l4]).unwrap());
        if field(p, 10) != want {
            return Err(format!(
                "IPv4 header checksum {:04x} != {want:04x}",
                field(p, 10)
            ));
        }
    }
    let seg = &p[l4..end];
    match Protocol::from_number(proto) {
        Some(Protocol::Udp) if src.is_ipv4() && field(seg, 6) == 0 => Ok(()),
        Some(pr) => {
            let seg = if pr == Protocol::Udp {
                &seg[..usize::from(field(seg, 4))]
            } else {
                seg
            };
            let want = pnet_l4_checksum(pr, seg, src, dst);
            let got = field(seg, csum_at(pr));
            if got == want {
                Ok(())
            } else {
                Err(format!("{pr:?} checksum {got:04x} != {want:04x}"))
            }
        }
        None => {
            let want = match (src, dst) {
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    pnet_packet::icmpv6::checksum(&Icmpv6Packet::new(seg).unwrap(), &s, &d)
                }
                _ => pnet_packet::icmp::checksum(&IcmpPacket::new(seg).unwrap()),
            };
            if field(seg, 2) != want {
                return Err(format!("ICMP checksum {:04x} != {want:04x}", field(seg, 2)));
            }
            let quote = &seg[8..];
            let (_, _, _, ql4, qend) = walk(quote).ok_or("unwalkable quote")?;
            let declared = if quote[0] >> 4 == 4 {
                usize::from(field(quote, 2))
            } else {
                40 + usize::from(field(quote, 4))
            };
            let min_l4 = if walk(quote).map(|w| w.2) == Some(6) {
                20
            } else {
                8
            };
            if declared <= quote.len() && declared >= ql4 + min_l4 {
                verify(&quote[..declared]).map_err(|e| format!("quote: {e}"))
            } else if quote[0] >> 4 == 4 {
                let want = pnet_packet::ipv4::checksum(&Ipv4Packet::new(&quote[..ql4]).unwrap());
                if field(quote, 10) == want {
                    Ok(())
                } else {
                    Err(format!(
                        "quoted IPv4 checksum {:04x} != {want:04x}",
                        field(quote, 10)
                    ))
                }
            } else {
                let _ = qend;
                Ok(())
            }
        }
    }
}

/// Swaps source and destination (addresses and ports) of a TCP/UDP packet, or of an ICMP
/// error and of the packet it quotes. No checksum changes: each covers both addresses (or
/// ports) alike.
pub fn mirror(p: &mut [u8]) {
    let (src, _, proto, l4, _) = walk(p).unwrap();
    let (s, d, n) = if src.is_ipv4() {
        (12, 16, 4)
    } else {
        (8, 24, 16)
    };
    for i in 0..n {
        p.swap(s + i, d + i);
    }
    if Protocol::from_number(proto).is_some() {
        p.swap(l4, l4 + 2);
        p.swap(l4 + 1, l4 + 3);
    } else {
        mirror(&mut p[l4 + 8..]);
    }
}

/// A lookup that maps `from` to `to`, counts its calls and records what it was asked.
pub struct Map {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub calls: Cell<u32>,
    pub asked: Cell<Option<(Protocol, SocketAddr)>>,
}

impl Map {
    pub fn new(from: &str, to: &str) -> Map {
        Map::of(from.parse().unwrap(), to.parse().unwrap())
    }

    pub fn of(from: SocketAddr, to: SocketAddr) -> Map {
        Map {
            from,
            to,
            calls: Cell::new(0),
            asked: Cell::new(None),
        }
    }

    pub fn lookup(&self) -> impl FnOnce(Protocol, SocketAddr) -> Option<(SocketAddr, u32)> + '_ {
        move |proto, addr| {
            self.calls.set(self.calls.get() + 1);
            self.asked.set(Some((proto, addr)));
            (addr == self.from).then_some((self.to, 7))
        }
    }
}
