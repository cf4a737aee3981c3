//! ICMP and ICMPv6 errors: translation of the packet they quote and of the outer header.
//!
//! An error about one of netnat's flows quotes a packet as it was on the wire on the side the
//! error comes from, so the quote has to be translated the other way round than the packets of
//! the same direction: an error arriving inbound quotes one of our replies (source =
//! apparent endpoint), an error leaving as a reply quotes an inbound packet that was already
//! rewritten (destination = actual endpoint).
//!
//! The quote is rewritten with the manips of `manip`, the same as a packet; what differs is
//! decided here: its transport checksum is updated only when the quote holds it, and only
//! incrementally (it covers data not quoted), and every word changed inside the message goes
//! into the ICMP checksum.

use std::net::SocketAddr;

use super::addr::{Octets, endpoints, pseudo_header};
use super::checksum::{Delta, finish, sum};
use super::field::{get16, put16, u8_at};
use super::header::{PACKET_IP, WORD_LEN, icmp};
use super::ip::{self, Family, IpLayout};
use super::manip::{self, End, L4Checksum};
use super::{ChecksumState, Direction, Flow, Kind, Malformed, Outcome};
use crate::config::Protocol;

/// Whether an ICMP message type is an error that quotes a packet and that netnat translates.
fn is_error(family: Family, ty: u8) -> bool {
    match family {
        Family::V4 => matches!(
            ty,
            icmp::V4_DEST_UNREACHABLE | icmp::V4_TIME_EXCEEDED | icmp::V4_PARAMETER_PROBLEM
        ),
        Family::V6 => (icmp::V6_DEST_UNREACHABLE..=icmp::V6_PARAMETER_PROBLEM).contains(&ty),
    }
}

pub(super) fn translate<A: Octets, T>(
    pkt: &mut [u8],
    outer: &IpLayout,
    dir: Direction,
    csum: ChecksumState,
    lookup: impl FnOnce(Protocol, SocketAddr) -> Option<(SocketAddr, T)>,
) -> Outcome<T> {
    const NOT_OURS: Kind = Kind::IcmpError;
    if outer.l4_len() < icmp::LEN {
        return Outcome::Malformed(Malformed::Truncated);
    }
    let Some(ty) = u8_at(pkt, outer.l4 + icmp::TYPE) else {
        return Outcome::Malformed(Malformed::Truncated);
    };
    if !is_error(outer.family, ty) {
        return Outcome::NotOurs { kind: NOT_OURS };
    }
    if outer.first_fragment && csum == ChecksumState::NotReady {
        return Outcome::Malformed(Malformed::Fragment);
    }
    let qbase = outer.l4 + icmp::LEN;
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
    if inner.l4_len() < icmp::QUOTED_L4_MIN {
        return Outcome::Malformed(Malformed::Truncated);
    }
    let ports_at = qbase + inner.l4;
    let Some((src, dst)) = endpoints::<A>(pkt, qbase, ports_at) else {
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
    let (quoted_end, outer_end, old) = match dir {
        Direction::Inbound => (End::Src, End::Dst, src),
        Direction::Reply => (End::Dst, End::Src, dst),
    };
    let Some((new, token)) = lookup(proto, old) else {
        return Outcome::NotOurs { kind: NOT_OURS };
    };
    let (Some(old_addr), Some(new_addr)) = (A::from_ip(old.ip()), A::from_ip(new.ip())) else {
        return Outcome::Malformed(Malformed::AddressFamily);
    };

    // Nothing can fail from here on.
    // Every change inside the ICMP message, for the ICMP checksum.
    let mut icmp_delta = Delta::new();

    // The quoted IP header is whole (`parse_quoted` saw to it), its checksum with it.
    let quoted = manip::address::<A>(pkt, qbase, quoted_end, old_addr, new_addr);
    icmp_delta.add(quoted.header);

    // The quoted transport checksum, when the quote reaches it. It may cover more than was
    // quoted, which is why only an incremental update makes sense here.
    let how = if inner.l4_len() >= manip::checksum_field(proto) + WORD_LEN {
        L4Checksum::Update
    } else {
        L4Checksum::Absent
    };
    let port = (old.port(), new.port());
    icmp_delta.add(manip::transport::<A>(
        pkt,
        proto,
        qbase,
        ports_at,
        quoted_end,
        port,
        quoted.pseudo,
        how,
    ));

    // The outer address, only where it is the translated endpoint's own address: a router's
    // error carries the router's address, which must stay.
    let outer_at = PACKET_IP
        + match outer_end {
            End::Src => A::SRC,
            End::Dst => A::DST,
        };
    if A::read(pkt, outer_at) == Some(old_addr) {
        let change = manip::address::<A>(pkt, PACKET_IP, outer_end, old_addr, new_addr);
        if A::FAMILY == Family::V6 {
            // The ICMPv6 checksum covers the pseudo-header, so the outer addresses.
            icmp_delta.add(change.pseudo);
        }
    }

    let at = outer.l4 + icmp::CHECKSUM;
    let new_csum = match csum {
        ChecksumState::Complete => icmp_delta.apply(get16(pkt, at)),
        ChecksumState::NotReady => {
            put16(pkt, at, 0);
            let body = pkt.get(outer.l4..outer.end).unwrap_or_default();
            let pseudo = match A::FAMILY {
                Family::V4 => 0,
                Family::V6 => pseudo_header::<A>(pkt, PACKET_IP, outer.protocol, outer.l4_len()),
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
