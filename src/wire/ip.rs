//! IPv4 and IPv6 headers: validated once into an [`IpLayout`] of offsets into the caller's
//! buffer (nothing is copied), then read and written through those offsets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use super::Malformed;
use super::field::{be16, u8_at};

/// IPv6 extension headers that netnat walks over (RFC 8200 section 4, RFC 4302).
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH_HEADER: u8 = 51;
const NO_NEXT_HEADER: u8 = 59;
const DEST_OPTIONS: u8 = 60;

/// IP version of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Length of an address of this family.
    pub fn addr_len(self) -> usize {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    /// Family of `addr`.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// A validated IP header: where things are in the buffer it was parsed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpLayout {
    pub family: Family,
    /// Offset of the transport header (after IPv4 options or IPv6 extension headers).
    pub l4: usize,
    /// End of the IP packet: the length the header declares (for a quoted packet, capped to
    /// the bytes actually quoted). Bytes beyond it are not part of the packet.
    pub end: usize,
    /// Transport protocol number (the last Next Header for IPv6).
    pub protocol: u8,
    /// The first fragment of a fragmented datagram: ports are there, the rest is not.
    pub first_fragment: bool,
}

impl IpLayout {
    /// Where the source address lies.
    pub fn src(&self) -> Range<usize> {
        match self.family {
            Family::V4 => 12..16,
            Family::V6 => 8..24,
        }
    }

    /// Where the destination address lies.
    pub fn dst(&self) -> Range<usize> {
        match self.family {
            Family::V4 => 16..20,
            Family::V6 => 24..40,
        }
    }

    /// Length of the transport part (segment, datagram or ICMP message).
    pub fn l4_len(&self) -> usize {
        self.end - self.l4
    }
}

/// An address of either family held by value, so that old and new addresses can be kept
/// while the buffer is rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrBytes {
    bytes: [u8; 16],
    len: u8,
}

impl AddrBytes {
    /// Reads the address at `r` (4 or 16 bytes) from `buf`.
    pub fn read(buf: &[u8], r: Range<usize>) -> Option<AddrBytes> {
        let src = buf.get(r)?;
        let mut bytes = [0u8; 16];
        bytes.get_mut(..src.len())?.copy_from_slice(src);
        Some(AddrBytes {
            bytes,
            len: src.len() as u8,
        })
    }

    pub fn from_ip(ip: IpAddr) -> AddrBytes {
        match ip {
            IpAddr::V4(a) => {
                let mut bytes = [0u8; 16];
                bytes[..4].copy_from_slice(&a.octets());
                AddrBytes { bytes, len: 4 }
            }
            IpAddr::V6(a) => AddrBytes {
                bytes: a.octets(),
                len: 16,
            },
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(16)]
    }

    pub fn to_ip(self) -> IpAddr {
        if self.len == 4 {
            let [a, b, c, d, ..] = self.bytes;
            IpAddr::V4(Ipv4Addr::new(a, b, c, d))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.bytes))
        }
    }

    /// The 4 bytes of an IPv4 address (zeros past a short address).
    pub fn v4(&self) -> [u8; 4] {
        let [a, b, c, d, ..] = self.bytes;
        [a, b, c, d]
    }

    pub fn v6(&self) -> [u8; 16] {
        self.bytes
    }
}

/// Parses the IP header of a whole packet (as queued: it starts at the IP header).
///
/// The packet must be as long as its header says (`Truncated` otherwise); trailing bytes in
/// `buf` past that length are ignored. Non-first fragments give `Malformed::Fragment`.
pub fn parse(buf: &[u8]) -> Result<IpLayout, Malformed> {
    match u8_at(buf, 0).ok_or(Malformed::Truncated)? >> 4 {
        4 => parse_v4(buf, false),
        6 => parse_v6(buf, false),
        _ => Err(Malformed::BadVersion),
    }
}

/// Parses the IP header of a packet quoted in an ICMP error.
///
/// Quotes are usually truncated, so the declared length is not required to be there: `end`
/// is the smaller of the declared length and `buf.len()` (which keeps RFC 4884 padding and
/// extension objects out of the quote). The IP header itself, and for IPv6 its extension
/// headers, must be complete.
pub fn parse_quoted(buf: &[u8]) -> Result<IpLayout, Malformed> {
    match u8_at(buf, 0).ok_or(Malformed::Truncated)? >> 4 {
        4 => parse_v4(buf, true),
        6 => parse_v6(buf, true),
        _ => Err(Malformed::BadVersion),
    }
}

fn parse_v4(buf: &[u8], quoted: bool) -> Result<IpLayout, Malformed> {
    if buf.len() < 20 {
        return Err(Malformed::Truncated);
    }
    let ihl = usize::from(buf[0] & 0x0F) * 4;
    if ihl < 20 {
        return Err(Malformed::BadHeaderLength);
    }
    if buf.len() < ihl {
        return Err(Malformed::Truncated);
    }
    let total = usize::from(be16(buf, 2).ok_or(Malformed::Truncated)?);
    if total < ihl {
        return Err(Malformed::BadTotalLength);
    }
    let end = if quoted {
        total.min(buf.len())
    } else if total > buf.len() {
        return Err(Malformed::Truncated);
    } else {
        total
    };
    let frag = be16(buf, 6).ok_or(Malformed::Truncated)?;
    let more_fragments = frag & 0x2000 != 0;
    let offset = frag & 0x1FFF;
    if offset != 0 {
        return Err(Malformed::Fragment);
    }
    Ok(IpLayout {
        family: Family::V4,
        l4: ihl,
        end,
        protocol: buf[9],
        first_fragment: more_fragments,
    })
}

fn parse_v6(buf: &[u8], quoted: bool) -> Result<IpLayout, Malformed> {
    if buf.len() < 40 {
        return Err(Malformed::Truncated);
    }
    let total = 40 + usize::from(be16(buf, 4).ok_or(Malformed::Truncated)?);
    let end = if quoted {
        total.min(buf.len())
    } else if total > buf.len() {
        return Err(Malformed::Truncated);
    } else {
        total
    };
    // Only the packet proper is walked: an extension header running past `end` is cut off.
    let pkt = buf.get(..end).ok_or(Malformed::Truncated)?;
    let mut next = buf[6];
    let mut off = 40;
    let mut first_fragment = false;
    loop {
        let len = match next {
            HOP_BY_HOP | ROUTING | DEST_OPTIONS | AUTH_HEADER => {
                if next == HOP_BY_HOP && off != 40 {
                    // RFC 8200: hop-by-hop options only ever follow the fixed header.
                    return Err(Malformed::BadExtensionHeader);
                }
                let hdr_len = usize::from(u8_at(pkt, off + 1).ok_or(Malformed::Truncated)?);
                if next == ROUTING {
                    let segments_left = u8_at(pkt, off + 3).ok_or(Malformed::Truncated)?;
                    if segments_left != 0 {
                        // The checksum pseudo-header then uses the final destination from
                        // the routing header, not the header's destination field: rewriting
                        // the latter would neither translate nor checksum correctly.
                        return Err(Malformed::SourceRouted);
                    }
                }
                if next == AUTH_HEADER {
                    (hdr_len + 2) * 4
                } else {
                    (hdr_len + 1) * 8
                }
            }
            FRAGMENT => {
                let word = be16(pkt, off + 2).ok_or(Malformed::Truncated)?;
                if word >> 3 != 0 {
                    return Err(Malformed::Fragment);
                }
                // An atomic fragment (offset 0, M clear) is a whole datagram.
                first_fragment = word & 1 != 0;
                8
            }
            NO_NEXT_HEADER => return Err(Malformed::UnsupportedProtocol),
            protocol => {
                return Ok(IpLayout {
                    family: Family::V6,
                    l4: off,
                    end,
                    protocol,
                    first_fragment,
                });
            }
        };
        if off + len > pkt.len() {
            return Err(Malformed::Truncated);
        }
        next = pkt[off];
        off += len;
        // Every header is at least 8 bytes and `off` never passes `end`, so this terminates.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_header(ihl_words: u8, total: u16, frag: u16, proto: u8) -> Vec<u8> {
        let mut h = vec![0u8; usize::from(total).max(usize::from(ihl_words) * 4)];
        h[0] = 0x40 | ihl_words;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[9] = proto;
        h
    }

    #[test]
    fn v4_plain_and_options() {
        let l = parse(&v4_header(5, 40, 0, 6)).unwrap();
        assert_eq!(
            (l.l4, l.end, l.protocol, l.first_fragment),
            (20, 40, 6, false)
        );
        let l = parse(&v4_header(15, 80, 0x4000, 17)).unwrap();
        assert_eq!(
            (l.l4, l.end, l.protocol, l.first_fragment),
            (60, 80, 17, false)
        );
    }

    #[test]
    fn v4_errors() {
        assert_eq!(parse(&[]), Err(Malformed::Truncated));
        assert_eq!(
            parse(&v4_header(5, 40, 0, 6)[..39]),
            Err(Malformed::Truncated)
        );
        assert_eq!(
            parse(&v4_header(4, 40, 0, 6)),
            Err(Malformed::BadHeaderLength)
        );
        assert_eq!(
            parse(&v4_header(6, 20, 0, 6)),
            Err(Malformed::BadTotalLength)
        );
        assert_eq!(
            parse(&v4_header(5, 40, 0x2000, 6)).map(|l| l.first_fragment),
            Ok(true)
        );
        assert_eq!(
            parse(&v4_header(5, 40, 0x0001, 6)),
            Err(Malformed::Fragment)
        );
        let mut bad = v4_header(5, 40, 0, 6);
        bad[0] = 0x55;
        assert_eq!(parse(&bad), Err(Malformed::BadVersion));
    }

    #[test]
    fn v4_quoted_is_capped() {
        let h = v4_header(5, 1500, 0, 6);
        let l = parse_quoted(&h[..28]).unwrap();
        assert_eq!(l.end, 28);
        assert_eq!(parse(&h[..28]), Err(Malformed::Truncated));
    }

    fn v6_with(exts: &[(u8, Vec<u8>)], last: u8, payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        let first = exts.first().map_or(last, |e| e.0);
        p[6] = first;
        for (i, (_, body)) in exts.iter().enumerate() {
            let nh = exts.get(i + 1).map_or(last, |e| e.0);
            let mut b = body.clone();
            b[0] = nh;
            p.extend_from_slice(&b);
        }
        p.extend(std::iter::repeat_n(0u8, payload));
        let plen = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        p
    }

    #[test]
    fn v6_extension_walk() {
        let hbh = (HOP_BY_HOP, vec![0u8; 8]);
        let mut dst_opts = vec![0u8; 16];
        dst_opts[1] = 1;
        let rt = (ROUTING, vec![0, 0, 0, 0, 0, 0, 0, 0]);
        let frag_first = (FRAGMENT, vec![0, 0, 0, 1, 0, 0, 0, 7]);
        let mut ah = vec![0u8; 16];
        ah[1] = 2; // (2 + 2) * 4 = 16 bytes
        let p = v6_with(
            &[
                hbh.clone(),
                (DEST_OPTIONS, dst_opts),
                rt,
                (AUTH_HEADER, ah),
                frag_first,
            ],
            6,
            20,
        );
        let l = parse(&p).unwrap();
        assert_eq!(l.l4, 40 + 8 + 16 + 8 + 16 + 8);
        assert_eq!((l.protocol, l.first_fragment, l.end), (6, true, p.len()));

        let later = (FRAGMENT, vec![0, 0, 0, 8, 0, 0, 0, 7]);
        assert_eq!(parse(&v6_with(&[later], 6, 20)), Err(Malformed::Fragment));
        let routed = (ROUTING, vec![0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(
            parse(&v6_with(&[routed], 6, 20)),
            Err(Malformed::SourceRouted)
        );
        let late_hbh = v6_with(&[(DEST_OPTIONS, vec![0; 8]), hbh], 6, 0);
        assert_eq!(parse(&late_hbh), Err(Malformed::BadExtensionHeader));
        assert_eq!(
            parse(&v6_with(&[], NO_NEXT_HEADER, 0)),
            Err(Malformed::UnsupportedProtocol)
        );
        // An extension header longer than the payload length.
        let mut long = vec![0u8; 8];
        long[1] = 3;
        let p = v6_with(&[(DEST_OPTIONS, long)], 17, 0);
        assert_eq!(parse(&p), Err(Malformed::Truncated));
        assert_eq!(parse(&p[..39]), Err(Malformed::Truncated));
    }

    #[test]
    fn addr_bytes_round_trip() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(AddrBytes::from_ip(a).to_ip(), a);
        let b: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(AddrBytes::from_ip(b).to_ip(), b);
        assert_eq!(AddrBytes::from_ip(b).as_slice(), &[10, 1, 2, 3]);
    }
}
