//! Addresses held by value ([`Octets`]: 4 or 16 bytes, the family known at compile time), and
//! what is read through them from an IP header: the endpoints of a packet and its
//! pseudo-header sum. Uses `field` and `header`; writes nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::field::be16;
use super::header::{ipv4, ipv6, ports};
use super::ip::Family;

/// An address as it stands in a header, held by value, so that old and new addresses can be
/// kept while the buffer is rewritten.
///
/// The translation code is generic over it: with the size known at compile time, reading,
/// comparing, summing and writing an address compile to a few fixed-size moves and adds.
pub trait Octets: Copy + PartialEq + AsRef<[u8]> {
    const FAMILY: Family;
    /// Offsets of the source and destination addresses in the IP header.
    const SRC: usize;
    const DST: usize;
    const LEN: usize;

    /// The address at offset `at` of `buf`.
    fn read(buf: &[u8], at: usize) -> Option<Self>;
    fn to_ip(self) -> IpAddr;
    /// The octets of `ip`, or `None` when it is of the other family.
    fn from_ip(ip: IpAddr) -> Option<Self>;
    /// Unfolded ones-complement sum of the address's 16-bit words.
    fn word_sum(self) -> u64;
    /// Unfolded pseudo-header sum for these addresses.
    fn pseudo_header(src: Self, dst: Self, protocol: u8, len: usize) -> u64;
}

impl Octets for [u8; ipv4::ADDR_LEN] {
    const FAMILY: Family = Family::V4;
    const SRC: usize = ipv4::SRC;
    const DST: usize = ipv4::DST;
    const LEN: usize = ipv4::ADDR_LEN;

    #[inline]
    fn read(buf: &[u8], at: usize) -> Option<Self> {
        buf.get(at..at.checked_add(Self::LEN)?)?.try_into().ok()
    }

    #[inline]
    fn to_ip(self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self))
    }

    #[inline]
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(a) => Some(a.octets()),
            IpAddr::V6(_) => None,
        }
    }

    #[inline]
    fn word_sum(self) -> u64 {
        let [a, b, c, d] = self;
        u64::from(u16::from_be_bytes([a, b])) + u64::from(u16::from_be_bytes([c, d]))
    }

    #[inline]
    fn pseudo_header(src: Self, dst: Self, protocol: u8, len: usize) -> u64 {
        // Validated lengths come from the 16-bit IPv4 total length.
        src.word_sum() + dst.word_sum() + u64::from(protocol) + (len as u64 & 0xFFFF)
    }
}

impl Octets for [u8; ipv6::ADDR_LEN] {
    const FAMILY: Family = Family::V6;
    const SRC: usize = ipv6::SRC;
    const DST: usize = ipv6::DST;
    const LEN: usize = ipv6::ADDR_LEN;

    #[inline]
    fn read(buf: &[u8], at: usize) -> Option<Self> {
        buf.get(at..at.checked_add(Self::LEN)?)?.try_into().ok()
    }

    #[inline]
    fn to_ip(self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(self))
    }

    #[inline]
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(a) => Some(a.octets()),
            IpAddr::V4(_) => None,
        }
    }

    #[inline]
    fn word_sum(self) -> u64 {
        // Two 64-bit halves, each summed as four 16-bit words: unrolled by the compiler.
        let mut s = 0;
        for pair in self.as_chunks::<2>().0 {
            s += u64::from(u16::from_be_bytes(*pair));
        }
        s
    }

    #[inline]
    fn pseudo_header(src: Self, dst: Self, protocol: u8, len: usize) -> u64 {
        // Validated lengths come from the 16-bit IPv6 payload length (or a jumbogram's 32).
        src.word_sum() + dst.word_sum() + u64::from(protocol) + (len as u64 & 0xFFFF_FFFF)
    }
}

/// Source and destination endpoints of the IP header at `ip` and the transport header (its
/// ports) at `l4`.
#[inline]
pub fn endpoints<A: Octets>(pkt: &[u8], ip: usize, l4: usize) -> Option<(SocketAddr, SocketAddr)> {
    let src = A::read(pkt, ip + A::SRC)?;
    let dst = A::read(pkt, ip + A::DST)?;
    let sport = be16(pkt, l4 + ports::SRC)?;
    let dport = be16(pkt, l4 + ports::DST)?;
    Some((
        SocketAddr::new(src.to_ip(), sport),
        SocketAddr::new(dst.to_ip(), dport),
    ))
}

/// Unfolded pseudo-header sum for the transport part, `len` bytes of `protocol`, of the packet
/// whose IP header is at `ip`.
#[inline]
pub fn pseudo_header<A: Octets>(pkt: &[u8], ip: usize, protocol: u8, len: usize) -> u64 {
    match (A::read(pkt, ip + A::SRC), A::read(pkt, ip + A::DST)) {
        (Some(src), Some(dst)) => A::pseudo_header(src, dst, protocol, len),
        _ => {
            debug_assert!(false, "pseudo-header of an unvalidated packet");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octets_round_trip() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let o = <[u8; 16]>::from_ip(a).unwrap();
        assert_eq!(o.to_ip(), a);
        assert_eq!(<[u8; 4]>::from_ip(a), None);
        let b: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(<[u8; 4]>::from_ip(b), Some([10, 1, 2, 3]));
        assert_eq!(<[u8; 16]>::from_ip(b), None);
        let buf = [0, 10, 1, 2, 3];
        assert_eq!(<[u8; 4]>::read(&buf, 1).map(Octets::to_ip), Some(b));
        assert_eq!(<[u8; 4]>::read(&buf, 2), None);
        assert_eq!(<[u8; 4]>::read(&buf, usize::MAX), None);
    }

    #[test]
    fn endpoints_read_at_the_named_fields() {
        let mut p = vec![0u8; 24];
        p[ipv4::SRC..ipv4::SRC + 4].copy_from_slice(&[10, 0, 0, 1]);
        p[ipv4::DST..ipv4::DST + 4].copy_from_slice(&[10, 0, 0, 2]);
        p[20..24].copy_from_slice(&[0x12, 0x34, 0x00, 0x50]);
        let (s, d) = endpoints::<[u8; 4]>(&p, 0, 20).unwrap();
        assert_eq!(s, "10.0.0.1:4660".parse().unwrap());
        assert_eq!(d, "10.0.0.2:80".parse().unwrap());
        assert_eq!(endpoints::<[u8; 4]>(&p, 0, 21), None);
        assert_eq!(endpoints::<[u8; 16]>(&p, 0, 20), None);
    }
}
