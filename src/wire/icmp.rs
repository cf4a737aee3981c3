//! ICMP and ICMPv6 errors: translation of the packet they quote and of the outer header.
//!
//! An error about one of netnat's flows quotes a packet as it was on the wire on the side the
//! error comes from, so the quote has to be translated the other way round than the packets of
//! the same direction: an error arriving inbound quotes one of our replies (source =
//! apparent endpoint), an error leaving as a reply quotes an inbound packet that was already
//! rewritten (destination = actual endpoint).

use std::net::SocketAddr;

use super::checksum::{Delta, finish, sum};
use super::field::{get16, put_bytes, put16, u8_at};
use super::ip::{self, AddrBytes, Family, IpLayout};
use super::rewrite::{IPV4_CSUM, csum_offset, endpoints, pseudo_header};
use super::{ChecksumState, Direction, Flow, Kind, Malformed, Outcome};
use crate::config::Protocol;

/// Length of the ICMP header before the quoted packet (type, code, checksum, 4 more bytes).
const ICMP_HEADER: usize = 8;
const ICMP_CSUM: usize = 2;

/// Whether an ICMP message type is an error that quotes a packet and that netnat translates.
fn is_error(family: Family, ty: u8) -> bool {
    match family {
        // Destination unreachable, time exceeded, parameter problem.
        Family::V4 => matches!(ty, 3 | 11 | 12),
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        Family::V6 => matches!(ty, 1..=4),
    }
}

pub(super) fn translate<T>(
    pkt: &mut [u8],
    outer: &IpLayout,
    dir: Direction,
    csum: ChecksumState,
    lookup: impl FnOnce(Protocol, SocketAddr) -> Option<(SocketAddr, T)>,
) -> Outcome<T> {
    const NOT_OURS: Kind = Kind::IcmpError;
    if outer.l4_len() < ICMP_HEADER {
        return Outcome::Malformed(Malformed::Truncated);
    }
    let Some(ty) = u8_at(pkt, outer.l4) else {
        return Outcome::Malformed(Malformed::Truncated);
    };
    if !is_error(outer.family, ty) {
        return Outcome::NotOurs { kind: NOT_OURS };
    }
    if outer.first_fragment && csum == ChecksumState::NotReady {
        return Outcome::Malformed(Malformed::Fragment);
    }
    let qbase = outer.l4 + ICMP_HEADER;
    let Some(quote) = pkt.get(qbase..outer.end) else {
        return Outcome::Malformed(Malformed::Truncated);
    };
    let inner = match ip::parse_quoted(quote) {
        Ok(inner) => inner,
        Err(e) => return Outcome::Malformed(e),
    };
    if inner.family != outer.family {
        // ICMPv4 quoting IPv6 or the reverse: not a valid error message.
        return Outcome::Malformed(Malformed::BadVersion);
    }
    let Some(proto) = Protocol::from_number(inner.protocol) else {
        return Outcome::NotOurs { kind: NOT_OURS };
    };
    // The ports are the first four bytes of both TCP and UDP; the 8 bytes that every ICMP
    // error must quote hold them.
    if inner.l4_len() < 8 {
        return Outcome::Malformed(Malformed::Truncated);
    }
    let ports_at = qbase + inner.l4;
    let Some((src, dst)) = endpoints(pkt, &inner, qbase, ports_at) else {
        return Outcome::Malformed(Malformed::Truncated);
    };
    let flow = Flow {
        protocol: proto,
        src,
        dst,
    };
    // Inbound: the quote is one of our replies, its source is the apparent endpoint; the
    // outer destination is the apparent address if the error is addressed to us.
    // Reply: the quote is a translated inbound packet, its destination is the actual endpoint;
    // the outer source is the actual address if the server itself sent the error.
    let (quoted_addr, quoted_port, outer_addr, old) = match dir {
        Direction::Inbound => (inner.src(), ports_at, outer.dst(), src),
        Direction::Reply => (inner.dst(), ports_at + 2, outer.src(), dst),
    };
    let quoted_addr = qbase + quoted_addr.start..qbase + quoted_addr.end;
    let Some((new, token)) = lookup(proto, old) else {
        return Outcome::NotOurs { kind: NOT_OURS };
    };
    if Family::of(new.ip()) != outer.family {
        return Outcome::Malformed(Malformed::AddressFamily);
    }

    // Nothing can fail from here on.
    let old_addr = AddrBytes::from_ip(old.ip());
    let new_addr = AddrBytes::from_ip(new.ip());
    // Every change inside the ICMP message, for the ICMP checksum.
    let mut icmp_delta = Delta::new();

    let mut addr_delta = Delta::new();
    addr_delta.bytes(old_addr.as_slice(), new_addr.as_slice());
    put_bytes(pkt, quoted_addr, new_addr.as_slice());
    icmp_delta.add(addr_delta);
    if inner.family == Family::V4 {
        let at = qbase + IPV4_CSUM;
        let old_csum = get16(pkt, at);
        let new_csum = addr_delta.apply(old_csum);
        put16(pkt, at, new_csum);
        icmp_delta.word(old_csum, new_csum);
    }

    let mut l4_delta = addr_delta;
    l4_delta.word(old.port(), new.port());
    icmp_delta.word(old.port(), new.port());
    put16(pkt, quoted_port, new.port());

    // The quoted transport checksum, when the quote reaches it. It may cover more than was
    // quoted, which is why only an incremental update makes sense here.
    let csum_rel = csum_offset(proto);
    if inner.l4_len() >= csum_rel + 2 {
        let at = ports_at + csum_rel;
        let old_csum = get16(pkt, at);
        let udp = proto == Protocol::Udp;
        if !(udp && inner.family == Family::V4 && old_csum == 0) {
            let mut new_csum = l4_delta.apply(old_csum);
            if udp && new_csum == 0 {
                new_csum = 0xFFFF;
            }
            put16(pkt, at, new_csum);
            icmp_delta.word(old_csum, new_csum);
        }
    }

    // The outer address, only where it is the translated endpoint's own address: a router's
    // error carries the router's address, which must stay.
    if AddrBytes::read(pkt, outer_addr.clone()) == Some(old_addr) {
        put_bytes(pkt, outer_addr, new_addr.as_slice());
        match outer.family {
            Family::V4 => {
                let c = get16(pkt, IPV4_CSUM);
                put16(pkt, IPV4_CSUM, addr_delta.apply(c));
            }
            // The ICMPv6 checksum covers the pseudo-header, so the outer addresses.
            Family::V6 => icmp_delta.add(addr_delta),
        }
    }

    let at = outer.l4 + ICMP_CSUM;
    let new_csum = match csum {
        ChecksumState::Complete => icmp_delta.apply(get16(pkt, at)),
        ChecksumState::NotReady => {
            put16(pkt, at, 0);
            let body = pkt.get(outer.l4..outer.end).unwrap_or_default();
            let pseudo = match outer.family {
                Family::V4 => 0,
                Family::V6 => pseudo_header(pkt, outer, outer.protocol, outer.l4_len()),
            };
            finish(pseudo + sum(body))
        }
    };
    put16(pkt, at, new_csum);
    Outcome::Rewritten {
        token,
        flow,
        kind: Kind::IcmpError,
    }
}
