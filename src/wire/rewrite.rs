//! Translation of plain TCP/UDP packets, and the dispatch by protocol and family.
//!
//! Every function here validates everything first and writes only once nothing can fail any
//! more: the caller's buffer is untouched unless the outcome is `Rewritten`. The writing is
//! the manips' of `manip`, the same ones the ICMP error translation uses on a quoted packet.

use std::net::SocketAddr;

use super::addr::{Octets, endpoints};
use super::field::{be16, u8_at};
use super::header::{PACKET_IP, proto, tcp, udp};
use super::ip::{self, Family, IpLayout};
use super::manip::{self, End, L4Checksum};
use super::{ChecksumState, Direction, Flow, Kind, Malformed, Outcome, icmp};
use crate::config::Protocol;

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
        (Family::V4, proto::ICMP) => icmp::translate::<[u8; 4], T>(pkt, &ip, dir, csum, lookup),
        (Family::V6, proto::ICMPV6) => icmp::translate::<[u8; 16], T>(pkt, &ip, dir, csum, lookup),
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
            if len < udp::LEN {
                return Err(Malformed::Truncated);
            }
            let ulen = usize::from(be16(pkt, ip.l4 + udp::LENGTH).ok_or(Malformed::Truncated)?);
            if ip.first_fragment {
                // The UDP length is the whole datagram's; this piece holds only part of it.
                return Ok(Transport {
                    covered: len,
                    syn: false,
                });
            }
            if ulen < udp::LEN || ulen > len {
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
            if len < tcp::MIN_LEN {
                return Err(Malformed::Truncated);
            }
            let offset = u8_at(pkt, ip.l4 + tcp::DATA_OFFSET).ok_or(Malformed::Truncated)?;
            let header = usize::from(offset >> tcp::DATA_OFFSET_SHIFT) * tcp::DATA_OFFSET_UNIT;
            if header < tcp::MIN_LEN {
                return Err(Malformed::BadHeaderLength);
            }
            if header > len {
                return Err(Malformed::Truncated);
            }
            let flags = u8_at(pkt, ip.l4 + tcp::FLAGS).ok_or(Malformed::Truncated)?;
            Ok(Transport {
                covered: len,
                syn: flags & (tcp::SYN | tcp::ACK) == tcp::SYN,
            })
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
    let Some((src, dst)) = endpoints::<A>(pkt, PACKET_IP, ip.l4) else {
        return Outcome::Malformed(Malformed::Truncated);
    };
    let flow = Flow {
        protocol: proto,
        src,
        dst,
    };
    let (end, old) = match dir {
        Direction::Inbound => (End::Dst, dst),
        Direction::Reply => (End::Src, src),
    };
    let Some((new, token)) = lookup(proto, old) else {
        return Outcome::NotOurs { kind };
    };
    let (Some(old_addr), Some(new_addr)) = (A::from_ip(old.ip()), A::from_ip(new.ip())) else {
        return Outcome::Malformed(Malformed::AddressFamily);
    };

    // Nothing can fail from here on.
    let how = match csum {
        ChecksumState::Complete => L4Checksum::Update,
        ChecksumState::NotReady => L4Checksum::Compute {
            covered: tp.covered,
        },
    };
    let change = manip::address::<A>(pkt, PACKET_IP, end, old_addr, new_addr);
    let port = (old.port(), new.port());
    manip::transport::<A>(pkt, proto, PACKET_IP, ip.l4, end, port, change.pseudo, how);
    Outcome::Rewritten { token, flow, kind }
}
