//! Translation of plain TCP/UDP packets, and the dispatch by protocol.
//!
//! Every function here validates everything first and writes only once nothing can fail any
//! more: the caller's buffer is untouched unless the outcome is `Rewritten`.

use std::net::SocketAddr;

use super::checksum::{Delta, finish, pseudo_header_v4, pseudo_header_v6, sum};
use super::field::{be16, get16, put_bytes, put16, u8_at};
use super::ip::{self, AddrBytes, Family, IpLayout};
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
        (Family::V4, PROTO_ICMP) | (Family::V6, PROTO_ICMPV6) => {
            icmp::translate(pkt, &ip, dir, csum, lookup)
        }
        (_, p) => match Protocol::from_number(p) {
            Some(proto) => plain(pkt, &ip, proto, dir, csum, lookup),
            None => Outcome::Malformed(Malformed::UnsupportedProtocol),
        },
    }
}

/// A validated TCP or UDP header.
struct Transport {
    /// Number of bytes, from the start of the header, that the checksum covers.
    covered: usize,
    syn: bool,
}

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

/// Source and destination endpoints of the IP header `ip` and the ports at `ports`.
pub(super) fn endpoints(
    pkt: &[u8],
    ip: &IpLayout,
    base: usize,
    ports: usize,
) -> Option<(SocketAddr, SocketAddr)> {
    let src = AddrBytes::read(pkt, base + ip.src().start..base + ip.src().end)?;
    let dst = AddrBytes::read(pkt, base + ip.dst().start..base + ip.dst().end)?;
    let sport = be16(pkt, ports)?;
    let dport = be16(pkt, ports + 2)?;
    Some((
        SocketAddr::new(src.to_ip(), sport),
        SocketAddr::new(dst.to_ip(), dport),
    ))
}

/// Unfolded pseudo-header sum for the packet whose IP header is at the start of `pkt`.
pub(super) fn pseudo_header(pkt: &[u8], ip: &IpLayout, protocol: u8, len: usize) -> u64 {
    let src = AddrBytes::read(pkt, ip.src()).unwrap_or(AddrBytes::from_ip([0u8; 16].into()));
    let dst = AddrBytes::read(pkt, ip.dst()).unwrap_or(AddrBytes::from_ip([0u8; 16].into()));
    match ip.family {
        // Lengths were validated against the 16-bit IPv4 total length and IPv6 payload length.
        Family::V4 => pseudo_header_v4(src.v4(), dst.v4(), protocol, len as u16),
        Family::V6 => pseudo_header_v6(src.v6(), dst.v6(), protocol, len as u32),
    }
}

fn plain<T>(
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
    let Some((src, dst)) = endpoints(pkt, ip, 0, ip.l4) else {
        return Outcome::Malformed(Malformed::Truncated);
    };
    let flow = Flow {
        protocol: proto,
        src,
        dst,
    };
    let (addr_at, port_at, old) = match dir {
        Direction::Inbound => (ip.dst(), ip.l4 + 2, dst),
        Direction::Reply => (ip.src(), ip.l4, src),
    };
    let Some((new, token)) = lookup(proto, old) else {
        return Outcome::NotOurs { kind };
    };
    if Family::of(new.ip()) != ip.family {
        return Outcome::Malformed(Malformed::AddressFamily);
    }

    // Nothing can fail from here on.
    let old_addr = AddrBytes::from_ip(old.ip());
    let new_addr = AddrBytes::from_ip(new.ip());
    let mut delta = Delta::new();
    delta.bytes(old_addr.as_slice(), new_addr.as_slice());
    put_bytes(pkt, addr_at, new_addr.as_slice());
    if ip.family == Family::V4 {
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
            if udp && ip.family == Family::V4 && c == 0 {
                // IPv4 UDP without a checksum: it stays without one.
                return Outcome::Rewritten { token, flow, kind };
            }
            delta.apply(c)
        }
        ChecksumState::NotReady => {
            // The field holds only the pseudo-header seed of the offload: compute it all.
            put16(pkt, csum_at, 0);
            let body = pkt.get(ip.l4..ip.l4 + tp.covered).unwrap_or_default();
            finish(pseudo_header(pkt, ip, proto.number(), tp.covered) + sum(body))
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
