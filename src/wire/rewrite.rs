//! Translation of plain TCP/UDP packets, and the dispatch by protocol and family.
//!
//! Every function here validates everything first and writes only once nothing can fail any
//! more: the caller's buffer is untouched unless the outcome is `Rewritten`.

use std::net::SocketAddr;

use super::checksum::{Delta, finish, sum};
use super::field::{be16, get16, put_bytes, put16, u8_at};
use super::ip::{self, Family, IpLayout, Octets};
use super::{ChecksumState, Direction, Flow, Kind, Malformed, Outcome, icmp};
use crate::config::Protocol;

pub(super) const PROTO_ICMP: u8 = 1;
pub(super) const PROTO_ICMPV6: u8 = 58;

/// Offset of the header checksum in an IPv4 header.
pub(super) const IPV4_CSUM: usize = 10;

/// Where the checksum of a transport header lies, relative to that header.
pub(super) fn csum_offset(proto: Protocol) -> usize {
    match proto {
        Protocol::Tcp => 16,
        Protocol::Udp => 6,
    }
}

pub(super) fn translate<T>(
    pkt: &mut [u8],
    dir: Direction,
    csum: ChecksumState,
    lookup: impl FnOnce(Protocol, SocketAddr) -> Option<(SocketAddr, T)>,
) -> Outcome<T> {
    let ip = match ip::parse(pkt) {
        Ok(ip) => ip,
        Err(e) => return Outcome::Malformed(e),
    };
    match (ip.family, ip.protocol) {
        (Family::V4, PROTO_ICMP) => icmp::translate::<[u8; 4], T>(pkt, &ip, dir, csum, lookup),
        (Family::V6, PROTO_ICMPV6) => icmp::translate::<[u8; 16], T>(pkt, &ip, dir, csum, lookup),
        (family, p) => match (Protocol::from_number(p), family) {
            (Some(proto), Family::V4) => plain::<[u8; 4], T>(pkt, &ip, proto, dir, csum, lookup),
            (Some(proto), Family::V6) => plain::<[u8; 16], T>(pkt, &ip, proto, dir, csum, lookup),
            (None, _) => Outcome::Malformed(Malformed::UnsupportedProtocol),
        },
    }
}

/// A validated TCP or UDP header.
struct Transport {
    /// Number of bytes, from the start of the header, that the checksum covers.
    covered: usize,
    syn: bool,
}

#[inline]
fn transport(pkt: &[u8], ip: &IpLayout, proto: Protocol) -> Result<Transport, Malformed> {
    let len = ip.l4_len();
    match proto {
        Protocol::Udp => {
            if len < 8 {
                return Err(Malformed::Truncated);
            }
            let ulen = usize::from(be16(pkt, ip.l4 + 4).ok_or(Malformed::Truncated)?);
            if ip.first_fragment {
                // The UDP length is the whole datagram's; this piece holds only part of it.
                return Ok(Transport {
                    covered: len,
                    syn: false,
                });
            }
            if ulen < 8 || ulen > len {
                return Err(Malformed::BadTotalLength);
            }
            // The checksum covers the datagram as UDP delimits it; IP padding after it is not
            // part of it.
            Ok(Transport {
                covered: ulen,
                syn: false,
            })
        }
        Protocol::Tcp => {
            if len < 20 {
                return Err(Malformed::Truncated);
            }
            let data_offset = usize::from(u8_at(pkt, ip.l4 + 12).ok_or(Malformed::Truncated)? >> 4);
            if data_offset < 5 {
                return Err(Malformed::BadHeaderLength);
            }
            if data_offset * 4 > len {
                return Err(Malformed::Truncated);
            }
            let flags = u8_at(pkt, ip.l4 + 13).ok_or(Malformed::Truncated)?;
            Ok(Transport {
                covered: len,
                syn: flags & 0x12 == 0x02,
            })
        }
    }
}

/// Source and destination endpoints of the IP header at `base` and the ports at `ports`.
pub(super) fn endpoints<A: Octets>(
    pkt: &[u8],
    base: usize,
    ports: usize,
) -> Option<(SocketAddr, SocketAddr)> {
    let src = A::read(pkt, base + A::SRC)?;
    let dst = A::read(pkt, base + A::DST)?;
    let sport = be16(pkt, ports)?;
    let dport = be16(pkt, ports + 2)?;
    Some((
        SocketAddr::new(src.to_ip(), sport),
        SocketAddr::new(dst.to_ip(), dport),
    ))
}

/// Unfolded pseudo-header sum for the packet whose IP header is at the start of `pkt`.
pub(super) fn pseudo_header<A: Octets>(pkt: &[u8], protocol: u8, len: usize) -> u64 {
    match (A::read(pkt, A::SRC), A::read(pkt, A::DST)) {
        (Some(src), Some(dst)) => A::pseudo_header(src, dst, protocol, len),
        _ => {
            debug_assert!(false, "pseudo-header of an unvalidated packet");
            0
        }
    }
}

/// Rewrites a validated TCP/UDP packet of the family of `A`.
fn plain<A: Octets, T>(
    pkt: &mut [u8],
    ip: &IpLayout,
    proto: Protocol,
    dir: Direction,
    csum: ChecksumState,
    lookup: impl FnOnce(Protocol, SocketAddr) -> Option<(SocketAddr, T)>,
) -> Outcome<T> {
    let tp = match transport(pkt, ip, proto) {
        Ok(tp) => tp,
        Err(e) => return Outcome::Malformed(e),
    };
    let kind = Kind::Plain { syn: tp.syn };
    if ip.first_fragment && csum == ChecksumState::NotReady {
        // The full checksum covers the whole datagram, of which this is only the start.
        return Outcome::Malformed(Malformed::Fragment);
    }
    let Some((src, dst)) = endpoints::<A>(pkt, 0, ip.l4) else {
        return Outcome::Malformed(Malformed::Truncated);
    };
    let flow = Flow {
        protocol: proto,
        src,
        dst,
    };
    let (addr_at, port_at, old) = match dir {
        Direction::Inbound => (A::DST, ip.l4 + 2, dst),
        Direction::Reply => (A::SRC, ip.l4, src),
    };
    let Some((new, token)) = lookup(proto, old) else {
        return Outcome::NotOurs { kind };
    };
    let (Some(old_addr), Some(new_addr)) = (A::from_ip(old.ip()), A::from_ip(new.ip())) else {
        return Outcome::Malformed(Malformed::AddressFamily);
    };

    // Nothing can fail from here on.
    let mut delta = Delta::new();
    delta.sums(old_addr.word_sum(), new_addr.word_sum());
    put_bytes(pkt, addr_at..addr_at + A::LEN, new_addr.as_ref());
    if A::FAMILY == Family::V4 {
        // The IPv4 header checksum covers the addresses but not the ports.
        put16(pkt, IPV4_CSUM, delta.apply(get16(pkt, IPV4_CSUM)));
    }
    delta.word(old.port(), new.port());
    put16(pkt, port_at, new.port());

    let csum_at = ip.l4 + csum_offset(proto);
    let udp = proto == Protocol::Udp;
    let new_csum = match csum {
        ChecksumState::Complete => {
            let c = get16(pkt, csum_at);
            if udp && A::FAMILY == Family::V4 && c == 0 {
                // IPv4 UDP without a checksum: it stays without one.
                return Outcome::Rewritten { token, flow, kind };
            }
            delta.apply(c)
        }
        ChecksumState::NotReady => {
            // The field holds only the pseudo-header seed of the offload: compute it all.
            put16(pkt, csum_at, 0);
            let body = pkt.get(ip.l4..ip.l4 + tp.covered).unwrap_or_default();
            finish(pseudo_header::<A>(pkt, proto.number(), tp.covered) + sum(body))
        }
    };
    // A UDP checksum that computes to 0 is sent as 0xFFFF: 0 would mean "no checksum".
    let new_csum = if udp && new_csum == 0 {
        0xFFFF
    } else {
        new_csum
    };
    put16(pkt, csum_at, new_csum);
    Outcome::Rewritten { token, flow, kind }
}
