//! The one IP parser: IPv4 and IPv6 headers, validated once into an [`IpLayout`] of offsets
//! into the caller's buffer (nothing is copied), with the IPv6 extension-header walk. Three
//! entry points differ only in how much of the packet the declared lengths must find in the
//! buffer: [`parse`] (a queued packet), [`parse_quoted`] (the packet an ICMP error quotes) and
//! [`glance`] (a lenient look at any packet, for records and drop attribution). Uses `field`
//! and `header`; writes nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Malformed;
use super::field::{be16, u8_at};
use super::header::ipv6::ext;
use super::header::{VERSION_4, VERSION_6, VERSION_SHIFT, ipv4, ipv6};

/// IP version of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// A validated IP header: where things are in the buffer it was parsed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpLayout {
    pub family: Family,
    /// Offset of the transport header (after IPv4 options or IPv6 extension headers).
    pub l4: usize,
    /// End of the IP packet: the length the header declares (for a quoted packet, capped to
    /// the bytes actually quoted; for a glance, the buffer's end). Bytes beyond it are not
    /// part of the packet.
    pub end: usize,
    /// Transport protocol number (the last Next Header for IPv6).
    pub protocol: u8,
    /// The first fragment of a fragmented datagram: ports are there, the rest is not.
    pub first_fragment: bool,
}

impl IpLayout {
    /// Length of the transport part (segment, datagram or ICMP message).
    pub fn l4_len(&self) -> usize {
        self.end - self.l4
    }
}

/// How much of the packet the header's lengths must find in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bounds {
    /// A queued packet: all of it, or `Truncated`.
    Whole,
    /// A quoted packet: as much as was quoted; the end is the smaller of the two.
    Quoted,
    /// A look at any packet: the declared lengths are not checked, the buffer is the end.
    Lenient,
}

/// Parses the IP header of a whole packet (as queued: it starts at the IP header).
///
/// The packet must be as long as its header says (`Truncated` otherwise); trailing bytes in
/// `buf` past that length are ignored. Non-first fragments give `Malformed::Fragment`.
#[inline]
pub fn parse(buf: &[u8]) -> Result<IpLayout, Malformed> {
    walk(buf, Bounds::Whole)
}

/// Parses the IP header of a packet quoted in an ICMP error.
///
/// Quotes are usually truncated, so the declared length is not required to be there: `end`
/// is the smaller of the declared length and `buf.len()` (which keeps RFC 4884 padding and
/// extension objects out of the quote). The IP header itself, and for IPv6 its extension
/// headers, must be complete.
pub fn parse_quoted(buf: &[u8]) -> Result<IpLayout, Malformed> {
    walk(buf, Bounds::Quoted)
}

/// What a lenient look at a packet shows, whatever state it is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Glance {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The protocol field of the fixed header (IPv6: the first next header).
    pub header_protocol: u8,
    /// The transport header, found as [`parse`] finds it (extension headers walked,
    /// non-first fragments refused) but without requiring the declared lengths: its `end` is
    /// the buffer's.
    pub transport: Result<IpLayout, Malformed>,
}

/// Reads what can be read of the IP header at the start of `buf`: `None` when not even the
/// addresses are there (or the version is neither 4 nor 6). Never panics.
pub fn glance(buf: &[u8]) -> Option<Glance> {
    let (src, dst, header_protocol) = match u8_at(buf, 0)? >> VERSION_SHIFT {
        VERSION_4 => {
            let src: [u8; ipv4::ADDR_LEN] = buf.get(ipv4::SRC..ipv4::DST)?.try_into().ok()?;
            let dst: [u8; ipv4::ADDR_LEN] = buf.get(ipv4::DST..ipv4::MIN_LEN)?.try_into().ok()?;
            let src = IpAddr::V4(Ipv4Addr::from(src));
            (src, IpAddr::V4(Ipv4Addr::from(dst)), buf[ipv4::PROTOCOL])
        }
        VERSION_6 => {
            let src: [u8; ipv6::ADDR_LEN] = buf.get(ipv6::SRC..ipv6::DST)?.try_into().ok()?;
            let dst: [u8; ipv6::ADDR_LEN] = buf.get(ipv6::DST..ipv6::LEN)?.try_into().ok()?;
            let src = IpAddr::V6(Ipv6Addr::from(src));
            (src, IpAddr::V6(Ipv6Addr::from(dst)), buf[ipv6::NEXT_HEADER])
        }
        _ => return None,
    };
    Some(Glance {
        src,
        dst,
        header_protocol,
        transport: walk(buf, Bounds::Lenient),
    })
}

/// The end of the packet whose header declares `total` bytes, as `bounds` allows it.
#[inline]
fn end_of(buf: &[u8], total: usize, bounds: Bounds) -> Result<usize, Malformed> {
    match bounds {
        Bounds::Whole if total > buf.len() => Err(Malformed::Truncated),
        Bounds::Whole => Ok(total),
        Bounds::Quoted => Ok(total.min(buf.len())),
        Bounds::Lenient => Ok(buf.len()),
    }
}

#[inline]
fn walk(buf: &[u8], bounds: Bounds) -> Result<IpLayout, Malformed> {
    match u8_at(buf, 0).ok_or(Malformed::Truncated)? >> VERSION_SHIFT {
        VERSION_4 => parse_v4(buf, bounds),
        VERSION_6 => parse_v6(buf, bounds),
        _ => Err(Malformed::BadVersion),
    }
}

#[inline]
fn parse_v4(buf: &[u8], bounds: Bounds) -> Result<IpLayout, Malformed> {
    if buf.len() < ipv4::MIN_LEN {
        return Err(Malformed::Truncated);
    }
    let ihl = usize::from(buf[ipv4::VERSION_IHL] & ipv4::IHL_MASK) * ipv4::IHL_UNIT;
    if ihl < ipv4::MIN_LEN {
        return Err(Malformed::BadHeaderLength);
    }
    if buf.len() < ihl {
        return Err(Malformed::Truncated);
    }
    let total = usize::from(be16(buf, ipv4::TOTAL_LEN).ok_or(Malformed::Truncated)?);
    if total < ihl && bounds != Bounds::Lenient {
        return Err(Malformed::BadTotalLength);
    }
    let end = end_of(buf, total, bounds)?;
    let frag = be16(buf, ipv4::FRAGMENT).ok_or(Malformed::Truncated)?;
    if frag & ipv4::FRAGMENT_OFFSET != 0 {
        return Err(Malformed::Fragment);
    }
    Ok(IpLayout {
        family: Family::V4,
        l4: ihl,
        end,
        protocol: buf[ipv4::PROTOCOL],
        first_fragment: frag & ipv4::MORE_FRAGMENTS != 0,
    })
}

#[inline]
fn parse_v6(buf: &[u8], bounds: Bounds) -> Result<IpLayout, Malformed> {
    if buf.len() < ipv6::LEN {
        return Err(Malformed::Truncated);
    }
    let payload = usize::from(be16(buf, ipv6::PAYLOAD_LEN).ok_or(Malformed::Truncated)?);
    let end = end_of(buf, ipv6::LEN + payload, bounds)?;
    // Only the packet proper is walked: an extension header running past `end` is cut off.
    let pkt = buf.get(..end).ok_or(Malformed::Truncated)?;
    let mut next = buf[ipv6::NEXT_HEADER];
    let mut off = ipv6::LEN;
    let mut first_fragment = false;
    loop {
        let len = match next {
            ext::HOP_BY_HOP | ext::ROUTING | ext::DEST_OPTIONS | ext::AUTH_HEADER => {
                if next == ext::HOP_BY_HOP && off != ipv6::LEN {
                    // RFC 8200: hop-by-hop options only ever follow the fixed header.
                    return Err(Malformed::BadExtensionHeader);
                }
                let units = usize::from(u8_at(pkt, off + ext::LEN).ok_or(Malformed::Truncated)?);
                if next == ext::ROUTING {
                    let segments_left =
                        u8_at(pkt, off + ext::SEGMENTS_LEFT).ok_or(Malformed::Truncated)?;
                    if segments_left != 0 {
                        // The checksum pseudo-header then uses the final destination from
                        // the routing header, not the header's destination field: rewriting
                        // the latter would neither translate nor checksum correctly.
                        return Err(Malformed::SourceRouted);
                    }
                }
                if next == ext::AUTH_HEADER {
                    (units + 2) * ext::AUTH_UNIT
                } else {
                    (units + 1) * ext::OPTIONS_UNIT
                }
            }
            ext::FRAGMENT => {
                let word = be16(pkt, off + ext::FRAGMENT_WORD).ok_or(Malformed::Truncated)?;
                if word >> ext::FRAGMENT_OFFSET_SHIFT != 0 {
                    return Err(Malformed::Fragment);
                }
                // An atomic fragment (offset 0, M clear) is a whole datagram.
                first_fragment = word & ext::MORE_FRAGMENTS != 0;
                ext::FRAGMENT_LEN
            }
            ext::NO_NEXT_HEADER => return Err(Malformed::UnsupportedProtocol),
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
        next = pkt[off + ext::NEXT];
        off += len;
        // Every header is at least 8 bytes and `off` never passes `end`, so this terminates.
    }
}

#[cfg(test)]
mod tests {
    use super::ext::*;
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
    fn glance_reads_addresses_of_anything_and_ignores_declared_lengths() {
        // The declared total (1500) is far past the buffer, as for a packet cut by the copy
        // range: the addresses and the transport are still found, the buffer being the end.
        let mut h = v4_header(5, 1500, 0, 6);
        h[12..16].copy_from_slice(&[10, 0, 0, 1]);
        h[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let g = glance(&h[..30]).unwrap();
        assert_eq!(g.src, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(g.dst, IpAddr::from([10, 0, 0, 2]));
        assert_eq!(g.header_protocol, 6);
        let l = g.transport.unwrap();
        assert_eq!((l.l4, l.end, l.protocol), (20, 30, 6));
        // A total shorter than the header, which `parse` refuses, does not hide the transport.
        assert_eq!(
            glance(&v4_header(6, 20, 0, 17))
                .unwrap()
                .transport
                .map(|l| l.l4),
            Ok(24)
        );
        // The header itself must be sound, and a later fragment has no transport header.
        let bad_ihl = glance(&v4_header(4, 40, 0, 6)).unwrap();
        assert_eq!(bad_ihl.transport, Err(Malformed::BadHeaderLength));
        let later = glance(&v4_header(5, 40, 0x0001, 6)).unwrap();
        assert_eq!(later.transport, Err(Malformed::Fragment));
        // Without the addresses, nothing.
        assert_eq!(glance(&h[..19]), None);
        assert_eq!(glance(&[]), None);
        let mut bad = v4_header(5, 40, 0, 6);
        bad[0] = 0x55;
        assert_eq!(glance(&bad), None);
    }

    #[test]
    fn glance_walks_ipv6_extension_headers_as_parse_does() {
        let hbh = (HOP_BY_HOP, vec![0u8; 8]);
        let frag_first = (FRAGMENT, vec![0, 0, 0, 1, 0, 0, 0, 7]);
        let p = v6_with(&[hbh.clone(), frag_first], 17, 8);
        let g = glance(&p).unwrap();
        assert_eq!(g.header_protocol, HOP_BY_HOP);
        assert_eq!(g.transport, parse(&p));
        assert_eq!(g.transport.map(|l| (l.l4, l.protocol)), Ok((56, 17)));
        // Cut short: the walk still finds the transport header; past the cut it cannot.
        assert_eq!(glance(&p[..58]).unwrap().transport.map(|l| l.l4), Ok(56));
        assert_eq!(
            glance(&p[..50]).unwrap().transport,
            Err(Malformed::Truncated)
        );
        let later = (FRAGMENT, vec![0, 0, 0, 8, 0, 0, 0, 7]);
        let p = v6_with(&[hbh, later], 6, 20);
        assert_eq!(glance(&p).unwrap().transport, Err(Malformed::Fragment));
        assert_eq!(glance(&p[..39]), None);
    }
}
