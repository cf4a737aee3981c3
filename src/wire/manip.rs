//! The header manipulations, one per layer and protocol, each written once and used both on a
//! packet and on the packet an ICMP error quotes (as the kernel's `nf_nat_proto.c` reuses its
//! per-protocol manip): [`address`] (IP layer, with the IPv4 header checksum) and
//! [`transport`] (TCP or UDP port and transport checksum, with UDP's zero rules).
//!
//! They write into a buffer validated before: they cannot fail. Each returns the sum of the
//! 16-bit word changes it made, so that a checksum covering them from outside (the ICMP
//! checksum around a quoted packet) can follow incrementally. They are forced inline: this is
//! the hot path, and inlined into a plain packet's rewrite, the changes it does not need are
//! never computed (a call cost 7 more instructions per packet than the code before them). What differs for a quoted packet
//! (a transport header cut before its checksum, a checksum that covers bytes not quoted) is
//! decided by the caller and passed in as [`L4Checksum`]. Uses `addr`, `checksum`, `field`
//! and `header`.

use super::addr::{Octets, pseudo_header};
use super::checksum::{Delta, finish, sum};
use super::field::{get16, put_bytes, put16};
use super::header::{ipv4, ports, proto, tcp, udp};
use super::ip::Family;
use crate::config::Protocol;

/// Which end of a header (address or port) is rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Src,
    Dst,
}

/// What an [`address`] manip changed.
#[derive(Clone, Copy, Debug)]
pub struct AddrChange {
    /// The address words alone: the change the pseudo-header of a transport (or ICMPv6)
    /// checksum sees.
    pub pseudo: Delta,
    /// Every word of the IP header that changed (the address, the IPv4 header checksum): the
    /// change a checksum covering the whole header sees.
    pub header: Delta,
}

/// Writes `new` over the `end` address (`old`) of the IP header at `ip`, and updates the IPv4
/// header checksum (IPv6 has none).
#[inline(always)]
pub fn address<A: Octets>(pkt: &mut [u8], ip: usize, end: End, old: A, new: A) -> AddrChange {
    let at = ip
        + match end {
            End::Src => A::SRC,
            End::Dst => A::DST,
        };
    let mut pseudo = Delta::new();
    pseudo.sums(old.word_sum(), new.word_sum());
    put_bytes(pkt, at..at + A::LEN, new.as_ref());
    let mut header = pseudo;
    if A::FAMILY == Family::V4 {
        // The IPv4 header checksum covers the addresses (and not the ports).
        let at = ip + ipv4::CHECKSUM;
        let old_csum = get16(pkt, at);
        let new_csum = pseudo.apply(old_csum);
        put16(pkt, at, new_csum);
        header.word(old_csum, new_csum);
    }
    AddrChange { pseudo, header }
}

/// How the transport checksum follows a port manip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Checksum {
    /// The field holds a complete checksum: update it incrementally (RFC 1624). Also right for
    /// a quoted packet whose checksum covers bytes not quoted, which no computation could.
    Update,
    /// The field holds only the offload's pseudo-header seed: compute it over the
    /// pseudo-header and the first `covered` bytes of the transport part.
    Compute { covered: usize },
    /// A quote cut before the checksum field: there is none to follow.
    Absent,
}

/// Where the checksum of a `protocol` header lies, relative to that header.
pub fn checksum_field(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Tcp => tcp::CHECKSUM,
        Protocol::Udp => udp::CHECKSUM,
    }
}

/// The port manip of TCP and UDP: writes the new `end` port (`port` is old, new) of the
/// `protocol` header at `l4` and follows with the checksum; `pseudo` is the address change its
/// pseudo-header saw, `ip` the IP header's offset (for a computation). Returns the words
/// changed in the transport header.
///
/// UDP's checksum rules on top: over IPv4 a checksum of 0 means "none" and stays 0 (when it is
/// complete; a seed is never "none"); a checksum that updates or computes to 0 is sent as
/// 0xFFFF, over IPv4 because 0 would mean "none", over IPv6 because UDP there must always
/// carry one (RFC 8200 section 8.1).
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the manip's inputs, each needed; a struct would only rename them
pub fn transport<A: Octets>(
    pkt: &mut [u8],
    protocol: Protocol,
    ip: usize,
    l4: usize,
    end: End,
    port: (u16, u16),
    pseudo: Delta,
    how: L4Checksum,
) -> Delta {
    let mut changed = port_word(pkt, l4, end, port);
    if how == L4Checksum::Absent {
        return changed;
    }
    // One checksum body, compiled once per protocol (`UDP` is a constant in each): the
    // protocol is tested once here, not again inside (measured: testing it inside cost up to
    // 12 instructions per packet).
    match protocol {
        Protocol::Tcp => follow_checksum::<A, false>(pkt, ip, l4, &mut changed, pseudo, how),
        Protocol::Udp => follow_checksum::<A, true>(pkt, ip, l4, &mut changed, pseudo, how),
    }
    changed
}

/// [`transport`]'s checksum half for TCP (`UDP` false) or UDP: follows the port change
/// `changed` (and `pseudo`) in the checksum, adding the checksum's own change to `changed`.
#[inline(always)]
fn follow_checksum<A: Octets, const UDP: bool>(
    pkt: &mut [u8],
    ip: usize,
    l4: usize,
    changed: &mut Delta,
    pseudo: Delta,
    how: L4Checksum,
) {
    let (at, number) = if UDP {
        (l4 + udp::CHECKSUM, proto::UDP)
    } else {
        (l4 + tcp::CHECKSUM, proto::TCP)
    };
    let old = get16(pkt, at);
    let new = match how {
        L4Checksum::Compute { covered } => compute::<A>(pkt, ip, l4, at, number, covered),
        _ if UDP && A::FAMILY == Family::V4 && old == udp::NO_CHECKSUM => return,
        _ => with(pseudo, *changed).apply(old),
    };
    let new = if UDP && new == 0 {
        udp::ZERO_SENT_AS
    } else {
        new
    };
    put16(pkt, at, new);
    changed.word(old, new);
}

/// Writes the new port (`port` is old, new) at the `end` of the ports at `l4`.
#[inline]
fn port_word(pkt: &mut [u8], l4: usize, end: End, (old, new): (u16, u16)) -> Delta {
    let at = l4
        + match end {
            End::Src => ports::SRC,
            End::Dst => ports::DST,
        };
    put16(pkt, at, new);
    let mut d = Delta::new();
    d.word(old, new);
    d
}

/// The sum of two changes.
#[inline]
fn with(mut a: Delta, b: Delta) -> Delta {
    a.add(b);
    a
}

/// The full checksum of the `covered` transport bytes at `l4`, its field (at `at`) zeroed
/// first, with the pseudo-header of the IP header at `ip`.
#[inline]
fn compute<A: Octets>(
    pkt: &mut [u8],
    ip: usize,
    l4: usize,
    at: usize,
    protocol: u8,
    covered: usize,
) -> u16 {
    put16(pkt, at, 0);
    let body = pkt.get(l4..l4 + covered).unwrap_or_default();
    finish(pseudo_header::<A>(pkt, ip, protocol, covered) + sum(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum::checksum;

    /// An IPv4/UDP packet 10.0.0.1:1000 -> 10.0.0.2:53 with both checksums right (computed
    /// here the long way, over pseudo-header and datagram).
    fn udp_v4(payload: &[u8]) -> Vec<u8> {
        let len = 28 + payload.len();
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto::UDP;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&1000u16.to_be_bytes());
        p[22..24].copy_from_slice(&53u16.to_be_bytes());
        p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
        p[28..].copy_from_slice(payload);
        let mut pseudo = p[12..20].to_vec();
        pseudo.extend_from_slice(&[0, proto::UDP]);
        pseudo.extend_from_slice(&((len - 20) as u16).to_be_bytes());
        pseudo.extend_from_slice(&p[20..]);
        let c = checksum(&pseudo);
        p[26..28].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// [`transport`] on the UDP header of a test packet (at 20, after an IP header at 0).
    fn udp<A: Octets>(
        p: &mut [u8],
        end: End,
        port: (u16, u16),
        pseudo: Delta,
        how: L4Checksum,
    ) -> Delta {
        transport::<A>(p, Protocol::Udp, 0, 20, end, port, pseudo, how)
    }

    fn verify_udp_v4(p: &[u8]) -> bool {
        let mut pseudo = p[12..20].to_vec();
        pseudo.extend_from_slice(&[0, proto::UDP]);
        pseudo.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        pseudo.extend_from_slice(&p[20..]);
        checksum(&p[..20]) == 0 && checksum(&pseudo) == 0
    }

    /// The words a manip reports changed are exactly those that changed in the buffer: an
    /// enclosing checksum updated with them equals one computed after.
    #[test]
    fn reported_changes_are_the_buffer_changes() {
        let mut p = udp_v4(b"abc");
        let before = checksum(&p);
        let (old, new) = ([10, 0, 0, 2], [192, 168, 1, 9]);
        let a = address::<[u8; 4]>(&mut p, 0, End::Dst, old, new);
        let u = udp::<[u8; 4]>(&mut p, End::Dst, (53, 5353), a.pseudo, L4Checksum::Update);
        assert!(verify_udp_v4(&p));
        assert_eq!(&p[16..20], &new);
        assert_eq!(u16::from_be_bytes([p[22], p[23]]), 5353);
        let mut outer = a.header;
        outer.add(u);
        assert_eq!(outer.apply(before), checksum(&p));
    }

    #[test]
    fn update_and_compute_agree() {
        let mut a = udp_v4(b"netnat");
        let mut b = a.clone();
        for (p, how) in [
            (&mut a, L4Checksum::Update),
            (&mut b, L4Checksum::Compute { covered: 14 }),
        ] {
            let ch = address::<[u8; 4]>(p, 0, End::Src, [10, 0, 0, 1], [10, 9, 8, 7]);
            udp::<[u8; 4]>(p, End::Src, (1000, 2000), ch.pseudo, how);
        }
        assert_eq!(a, b);
        assert!(verify_udp_v4(&a));
    }

    #[test]
    fn udp_v4_without_checksum_stays_without_and_absent_leaves_it() {
        let mut p = udp_v4(b"x");
        p[26..28].copy_from_slice(&[0, 0]);
        let d = udp::<[u8; 4]>(&mut p, End::Dst, (53, 54), Delta::new(), L4Checksum::Update);
        assert_eq!(&p[26..28], &[0, 0]);
        let mut port_only = Delta::new();
        port_only.word(53, 54);
        assert_eq!(d, port_only);

        let mut p = udp_v4(b"x");
        let c = [p[26], p[27]];
        let d = udp::<[u8; 4]>(&mut p, End::Dst, (53, 54), Delta::new(), L4Checksum::Absent);
        assert_eq!([p[26], p[27]], c);
        assert_eq!(d, port_only);
    }

    #[test]
    fn udp_never_writes_a_computed_zero() {
        let p0 = udp_v4(b"zero");
        let c = u16::from_be_bytes([p0[26], p0[27]]);
        // The new port that makes the updated checksum 0: it must be sent as 0xFFFF, over
        // IPv4 (0 would mean "none") and over IPv6 (UDP there always carries one).
        let new_port = (0u16..=u16::MAX)
            .find(|&n| {
                let mut d = Delta::new();
                d.word(53, n);
                d.apply(c) == 0
            })
            .expect("some port update sums to 0");
        let (mut v4, mut v6) = (p0.clone(), p0);
        let how = L4Checksum::Update;
        udp::<[u8; 4]>(&mut v4, End::Dst, (53, new_port), Delta::new(), how);
        udp::<[u8; 16]>(&mut v6, End::Dst, (53, new_port), Delta::new(), how);
        for p in [v4, v6] {
            assert_eq!(u16::from_be_bytes([p[26], p[27]]), udp::ZERO_SENT_AS);
        }
    }

    #[test]
    fn tcp_checksum_follows_both_ports() {
        let mut d = Delta::new();
        d.word(0x1111, 0x2222);
        let mut p = vec![0u8; 40];
        p[20..22].copy_from_slice(&0x1111u16.to_be_bytes());
        p[36..38].copy_from_slice(&0x4000u16.to_be_bytes());
        transport::<[u8; 4]>(
            &mut p,
            Protocol::Tcp,
            0,
            20,
            End::Src,
            (0x1111, 0x2222),
            Delta::new(),
            L4Checksum::Update,
        );
        assert_eq!(u16::from_be_bytes([p[36], p[37]]), d.apply(0x4000));
        assert_eq!(u16::from_be_bytes([p[20], p[21]]), 0x2222);
    }
}
