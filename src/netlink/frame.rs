//! Netlink framing: message headers (`struct nlmsghdr`), attributes (`struct nlattr`) with
//! their 4-byte alignment, and nested attributes, decoded and encoded.
//!
//! Decoding is pure and panic-free over any byte slice: every length the bytes claim is
//! checked against the bytes really there before it is used, and values are handed out as
//! absolute ranges of the input, so a caller can turn one into a `&mut` slice of its own
//! receive buffer afterwards (the queue rewrites packets in place). Headers and attribute
//! headers are in host byte order (`linux/netlink.h`); what the values mean is the protocol's
//! business, not this module's.

use std::ops::Range;

/// Size of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Size of `struct nlattr`.
pub const NLA_HDRLEN: usize = 4;

/// Control message types (`linux/netlink.h`).
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

/// Header flags (`linux/netlink.h`).
pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_MULTI: u16 = 0x02;
pub const NLM_F_ACK: u16 = 0x04;
/// The dump was interrupted by a change: its content may be inconsistent.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// `NLM_F_ROOT | NLM_F_MATCH`.
pub const NLM_F_DUMP: u16 = 0x100 | 0x200;
/// On an NLMSG_ERROR: the original request was not echoed beyond its header.
pub const NLM_F_CAPPED: u16 = 0x100;
/// On an NLMSG_ERROR: extended-ACK attributes follow the echoed request.
pub const NLM_F_ACK_TLVS: u16 = 0x200;

/// Attribute type flag of a nested attribute.
pub const NLA_F_NESTED: u16 = 0x8000;
/// The two top bits of an attribute type (`NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`) are flags,
/// not part of the type.
pub const NLA_TYPE_MASK: u16 = 0x3fff;
/// Largest attribute, header included: its length field is 16 bits.
pub const NLA_MAX_LEN: usize = u16::MAX as usize;

/// Rounds up to the 4-byte netlink alignment. Saturates instead of overflowing, so that a
/// hostile length near `usize::MAX` cannot panic in debug builds.
pub const fn align4(n: usize) -> usize {
    match n.checked_add(3) {
        Some(v) => v & !3,
        None => usize::MAX & !3,
    }
}

/// Why the framing of a datagram could not be followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes left than a message header.
    #[error("truncated netlink header at offset {offset}")]
    ShortHeader { offset: usize },
    /// `nlmsg_len` smaller than the header or larger than the bytes left.
    #[error("bad netlink message length {len} at offset {offset}")]
    BadMessageLength { offset: usize, len: u32 },
    /// An attribute header or value extends past the end of its message.
    #[error("attribute at offset {offset} overruns its message")]
    BadAttribute { offset: usize },
}

/// The fields of one `struct nlmsghdr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
}

/// One message of a datagram: its header and where it lies, as absolute offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    /// Where the message starts (its header).
    pub start: usize,
    /// The bytes after the header, up to `nlmsg_len` (padding excluded).
    pub body: Range<usize>,
}

/// Iterator over the messages of one datagram; see [`messages`].
#[derive(Clone, Debug)]
pub struct Messages<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
}

/// The messages of `buf`. A header that lies (length too small, or past the end) yields `Err`
/// once and ends the iteration: nothing after it can be located reliably. Never panics.
pub fn messages(buf: &[u8]) -> Messages<'_> {
    Messages {
        buf,
        pos: 0,
        done: false,
    }
}

impl Iterator for Messages<'_> {
    type Item = Result<Frame, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.buf.len() {
            return None;
        }
        let offset = self.pos;
        let Some(header) = header_at(self.buf, offset) else {
            self.done = true;
            return Some(Err(FrameError::ShortHeader { offset }));
        };
        let len = header.len as usize;
        if len < NLMSG_HDRLEN || len > self.buf.len() - offset {
            self.done = true;
            return Some(Err(FrameError::BadMessageLength {
                offset,
                len: header.len,
            }));
        }
        // The next message starts at the aligned end; the last one may lack its padding.
        self.pos = offset.saturating_add(align4(len)).min(self.buf.len());
        Some(Ok(Frame {
            header,
            start: offset,
            body: offset + NLMSG_HDRLEN..offset + len,
        }))
    }
}

/// The header at `at`, if 16 bytes are there (its length field is not checked here).
pub fn header_at(buf: &[u8], at: usize) -> Option<Header> {
    Some(Header {
        len: ne_u32(buf, at)?,
        ty: ne_u16(buf, at.checked_add(4)?)?,
        flags: ne_u16(buf, at.checked_add(6)?)?,
        seq: ne_u32(buf, at.checked_add(8)?)?,
        pid: ne_u32(buf, at.checked_add(12)?)?,
    })
}

/// One attribute: its type without the flag bits, whether it is flagged nested, where its
/// header starts and its value, as absolute offsets into the buffer iterated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ty: u16,
    pub nested: bool,
    pub offset: usize,
    pub value: Range<usize>,
}

/// Iterator over the attributes in `buf[start..end]`; see [`attrs`].
#[derive(Clone, Debug)]
pub struct Attrs<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

/// The attributes in `buf[start..end]` (`end` is clamped to the buffer). Stops after the
/// first malformed attribute, which yields `Err`. Never panics.
pub fn attrs(buf: &[u8], start: usize, end: usize) -> Attrs<'_> {
    Attrs {
        buf,
        pos: start,
        end: end.min(buf.len()),
    }
}

/// The attributes of a whole slice (a nest's value, say).
pub fn attrs_of(buf: &[u8]) -> Attrs<'_> {
    attrs(buf, 0, buf.len())
}

impl Iterator for Attrs<'_> {
    type Item = Result<Attr, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.end {
            return None;
        }
        let offset = self.pos;
        let left = self.end - offset;
        let (Some(len), Some(ty)) = (
            ne_u16(self.buf, offset),
            offset.checked_add(2).and_then(|at| ne_u16(self.buf, at)),
        ) else {
            self.pos = self.end;
            return Some(Err(FrameError::BadAttribute { offset }));
        };
        let len = usize::from(len);
        if left < NLA_HDRLEN || len < NLA_HDRLEN || len > left {
            self.pos = self.end;
            return Some(Err(FrameError::BadAttribute { offset }));
        }
        self.pos = offset.saturating_add(align4(len)).min(self.end);
        Some(Ok(Attr {
            ty: ty & NLA_TYPE_MASK,
            nested: ty & NLA_F_NESTED != 0,
            offset,
            value: offset + NLA_HDRLEN..offset + len,
        }))
    }
}

/// The value of a string attribute up to its NUL, lossy UTF-8.
pub fn c_string(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

// Integer readers: `None` when the bytes are not all there.
fn bytes<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}
pub fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    bytes(b, at).map(u16::from_ne_bytes)
}
pub fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    bytes(b, at).map(u32::from_ne_bytes)
}
pub fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    bytes(b, at).map(u16::from_be_bytes)
}
pub fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    bytes(b, at).map(u32::from_be_bytes)
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Appends a message header with length 0; [`finish`] fills the length in once the body is
/// there. `nlmsg_pid` is 0: the kernel fills in the sender itself. Returns where it starts.
pub fn put_header(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    start
}

/// Sets the `nlmsg_len` of the message starting at `start` to run to the end of `buf`.
pub fn finish(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// Appends attribute `ty` with `value` and its padding. `value` must fit an attribute
/// (at most [`NLA_MAX_LEN`] − 4 bytes; every caller passes short values or checks first).
pub fn put_attr(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    debug_assert!(value.len() <= NLA_MAX_LEN - NLA_HDRLEN);
    put_attr_header(buf, ty, value.len());
    buf.extend_from_slice(value);
    buf.resize(align4(buf.len()), 0);
}

/// Appends only the header of an attribute whose `value_len` bytes (and padding) the caller
/// sends after it, e.g. from a buffer of its own.
pub fn put_attr_header(buf: &mut Vec<u8>, ty: u16, value_len: usize) {
    let len = (NLA_HDRLEN + value_len) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
}

/// Appends a NUL-terminated string attribute.
pub fn put_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    put_attr(buf, ty, &v);
}

/// Starts a nested attribute (flagged `NLA_F_NESTED`); [`end_nest`] fills in its length.
pub fn start_nest(buf: &mut Vec<u8>, ty: u16) -> usize {
    start_attr(buf, ty | NLA_F_NESTED)
}

/// Starts an attribute of type `ty` (flags as given) whose value the caller appends;
/// [`end_nest`] fills in its length.
pub fn start_attr(buf: &mut Vec<u8>, ty: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    at
}

/// Ends the attribute started at `at`: its length runs to the end of `buf`, then padding.
/// Panics if it grew past 64 KiB, which the callers rule out by sizing their runs.
pub fn end_nest(buf: &mut Vec<u8>, at: usize) {
    let len = u16::try_from(buf.len() - at).expect("an attribute fits its 16-bit length");
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    buf.resize(align4(buf.len()), 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_message_with_attributes_and_a_nest_round_trips() {
        let mut b = Vec::new();
        let start = put_header(&mut b, 0x0a01, NLM_F_REQUEST | NLM_F_ACK, 7);
        b.extend_from_slice(&[1, 0, 0, 0]);
        put_str(&mut b, 1, "netnat");
        let nest = start_nest(&mut b, 3);
        put_attr(&mut b, 1, &[9, 9, 9]);
        end_nest(&mut b, nest);
        finish(&mut b, start);
        assert_eq!(b.len() % 4, 0);

        let frames: Vec<Frame> = messages(&b).map(Result::unwrap).collect();
        assert_eq!(frames.len(), 1);
        let f = &frames[0];
        assert_eq!(f.header.len as usize, b.len());
        assert_eq!((f.header.ty, f.header.seq), (0x0a01, 7));
        assert_eq!(f.header.flags, NLM_F_REQUEST | NLM_F_ACK);
        let list: Vec<Attr> = attrs(&b, f.body.start + 4, f.body.end)
            .map(Result::unwrap)
            .collect();
        assert_eq!(list.len(), 2);
        assert_eq!(c_string(&b[list[0].value.clone()]), "netnat");
        assert!(!list[0].nested && list[1].nested);
        assert_eq!(list[1].ty, 3, "flag bits masked");
        let inner: Vec<Attr> = attrs(&b, list[1].value.start, list[1].value.end)
            .map(Result::unwrap)
            .collect();
        assert_eq!(inner.len(), 1);
        assert_eq!(&b[inner[0].value.clone()], &[9, 9, 9]);
        assert_eq!(inner[0].value.end, inner[0].offset + 7, "padding excluded");
    }

    #[test]
    fn lying_lengths_end_the_walk() {
        let mut b = Vec::new();
        let s = put_header(&mut b, 1, 0, 0);
        put_attr(&mut b, 1, &[1, 2, 3, 4]);
        finish(&mut b, s);
        for lie in [b.len() as u32 + 1, 15, 0, u32::MAX] {
            let mut c = b.clone();
            c[..4].copy_from_slice(&lie.to_ne_bytes());
            let items: Vec<_> = messages(&c).collect();
            assert_eq!(
                items,
                vec![Err(FrameError::BadMessageLength {
                    offset: 0,
                    len: lie
                })]
            );
        }
        assert_eq!(
            messages(&b[..10]).collect::<Vec<_>>(),
            vec![Err(FrameError::ShortHeader { offset: 0 })]
        );
        // An attribute claiming more than its message, or less than its header.
        for lie in [500u16, 2] {
            let mut c = b.clone();
            c[16..18].copy_from_slice(&lie.to_ne_bytes());
            let items: Vec<_> = attrs(&c, 16, c.len()).collect();
            assert_eq!(items, vec![Err(FrameError::BadAttribute { offset: 16 })]);
        }
    }

    #[test]
    fn the_last_message_may_lack_its_padding() {
        let mut b = Vec::new();
        for seq in 0..2 {
            let s = put_header(&mut b, 1, 0, seq);
            b.push(0xaa);
            finish(&mut b, s);
            if seq == 0 {
                b.resize(align4(b.len()), 0);
            }
        }
        let seqs: Vec<u32> = messages(&b).map(|f| f.unwrap().header.seq).collect();
        assert_eq!(seqs, [0, 1]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5_000))]

        #[test]
        fn any_bytes_are_walked_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut count = 0usize;
            for m in messages(&bytes) {
                count += 1;
                prop_assert!(count <= bytes.len() / NLMSG_HDRLEN + 1);
                if let Ok(f) = m {
                    prop_assert!(f.body.end <= bytes.len());
                    for a in attrs(&bytes, f.body.start, f.body.end).flatten() {
                        prop_assert!(a.value.start <= a.value.end && a.value.end <= f.body.end);
                    }
                }
            }
        }
    }
}
