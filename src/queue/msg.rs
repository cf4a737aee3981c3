//! Pure encoding and decoding of the nfnetlink_queue messages netnat exchanges with the kernel.
//!
//! Nothing here touches a socket, so every function is testable (and fuzzable) without a
//! kernel. Decoding never panics and never trusts a length field: every length read from the
//! input is checked against the bytes actually present before it is used. Decoded payloads are
//! returned as byte *ranges* into the input rather than slices, so the caller can turn them into
//! `&mut` slices of its own receive buffer afterwards (zero copy, no borrow held by the parser).
//!
//! Byte orders, as the kernel defines them (`linux/netlink.h`, `linux/netfilter/nfnetlink.h`,
//! `linux/netfilter/nfnetlink_queue.h`):
//! - `nlmsghdr` and `nlattr` headers are host byte order;
//! - `nfgenmsg.res_id` (the queue number) and every nfqueue attribute value are big endian,
//!   except `NFQA_SKB_INFO`, `NFQA_CAP_LEN` and the ifindex attributes, which the kernel also
//!   writes big endian (`nla_put_be32`), so all u32 attribute values here are read big endian.

use std::ops::Range;

use crate::netlink::frame::{self, FrameError};
use crate::netlink::{ack, frame::Frame};

// The shared framing's constants, re-exported: tests and fuzz seeds build messages with them.
pub use crate::netlink::frame::{
    NLA_HDRLEN, NLM_F_ACK, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, NLMSG_NOOP,
    NLMSG_OVERRUN, align4,
};

/// Size of `struct nfgenmsg`.
pub const NFGENMSG_LEN: usize = 4;

/// `NFNL_SUBSYS_QUEUE` from `nfnetlink.h`; the message type is `subsys << 8 | msg`.
pub const NFNL_SUBSYS_QUEUE: u16 = 3;
pub const NFNETLINK_V0: u8 = 0;

pub const NFQNL_MSG_PACKET: u16 = 0;
pub const NFQNL_MSG_VERDICT: u16 = 1;
pub const NFQNL_MSG_CONFIG: u16 = 2;

pub const NFQA_PACKET_HDR: u16 = 1;
pub const NFQA_VERDICT_HDR: u16 = 2;
pub const NFQA_MARK: u16 = 3;
pub const NFQA_IFINDEX_INDEV: u16 = 5;
pub const NFQA_IFINDEX_OUTDEV: u16 = 6;
pub const NFQA_PAYLOAD: u16 = 10;
pub const NFQA_CAP_LEN: u16 = 13;
pub const NFQA_SKB_INFO: u16 = 14;

pub const NFQA_CFG_CMD: u16 = 1;
pub const NFQA_CFG_PARAMS: u16 = 2;
pub const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
pub const NFQA_CFG_MASK: u16 = 4;
pub const NFQA_CFG_FLAGS: u16 = 5;

pub const NFQNL_CFG_CMD_BIND: u8 = 1;
pub const NFQNL_CFG_CMD_UNBIND: u8 = 2;

pub const NFQNL_COPY_PACKET: u8 = 2;

pub const NFQA_CFG_F_FAIL_OPEN: u32 = 1 << 0;
pub const NFQA_CFG_F_GSO: u32 = 1 << 2;

pub const NFQA_SKB_CSUMNOTREADY: u32 = 1 << 0;
pub const NFQA_SKB_GSO: u32 = 1 << 1;

/// Netfilter verdicts (`linux/netfilter.h`).
pub const NF_DROP: u32 = 0;
pub const NF_ACCEPT: u32 = 1;

/// `nla_len` is a u16 that includes the 4-byte attribute header, so no attribute value can be
/// longer than this. The kernel's copy range tops out at the same figure.
pub const MAX_PAYLOAD: usize = u16::MAX as usize - NLA_HDRLEN;

/// Longest verdict header [`encode_verdict_head`] writes: nlmsghdr, nfgenmsg, verdict header
/// attribute, mark attribute, payload attribute header.
pub const VERDICT_HEAD_MAX: usize = NLMSG_HDRLEN + NFGENMSG_LEN + 12 + 8 + NLA_HDRLEN;

/// Why a received datagram (or part of it) could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer bytes left than a netlink message header.
    #[error("truncated netlink header at offset {offset}")]
    ShortHeader { offset: usize },
    /// `nlmsg_len` smaller than the header or larger than the bytes left.
    #[error("bad netlink message length {len} at offset {offset}")]
    BadMessageLength { offset: usize, len: u32 },
    /// A queue message shorter than its `nfgenmsg`.
    #[error("queue message at offset {offset} shorter than nfgenmsg")]
    ShortNfgenmsg { offset: usize },
    /// An attribute header or value extends past the end of its message.
    #[error("attribute at offset {offset} overruns its message")]
    BadAttribute { offset: usize },
    /// A known attribute has a value too short for its type.
    #[error("attribute {attr} too short for its type")]
    ShortAttributeValue { attr: u16 },
    /// A packet message without `NFQA_PACKET_HDR`: there is no id to give a verdict for.
    #[error("packet message without NFQA_PACKET_HDR")]
    MissingPacketHeader,
    /// An `NLMSG_ERROR` message shorter than its error code.
    #[error("NLMSG_ERROR at offset {offset} shorter than its error code")]
    ShortError { offset: usize },
}

impl From<FrameError> for ParseError {
    fn from(e: FrameError) -> ParseError {
        match e {
            FrameError::ShortHeader { offset } => ParseError::ShortHeader { offset },
            FrameError::BadMessageLength { offset, len } => {
                ParseError::BadMessageLength { offset, len }
            }
            FrameError::BadAttribute { offset } => ParseError::BadAttribute { offset },
        }
    }
}

/// What the kernel says about a queued packet besides its bytes: the same for the decoded
/// message and for the [`super::Packet`] handed to the handler (both deref to it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketMeta {
    /// Kernel packet id, what the verdict refers to.
    pub id: u32,
    /// EtherType of the packet in host order (0x0800 IPv4, 0x86dd IPv6).
    pub hw_protocol: u16,
    /// Netfilter hook: 0 prerouting, 1 input, 2 forward, 3 output, 4 postrouting.
    pub hook: u8,
    /// Input interface index, 0 when none.
    pub indev: u32,
    /// Output interface index, 0 when none.
    pub outdev: u32,
    pub mark: u32,
}

/// One queued packet as the kernel described it. Offsets are absolute within the datagram
/// given to [`parse_datagram`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketMsg {
    /// Queue number from `nfgenmsg.res_id`.
    pub queue: u16,
    pub meta: PacketMeta,
    /// `NFQA_SKB_INFO` bits, 0 when absent.
    pub skb_info: u32,
    /// `NFQA_CAP_LEN`: the kernel sends it only when it copied fewer bytes than the packet
    /// has, and its value is the packet's *original* length.
    pub cap_len: Option<u32>,
    /// The `NFQA_PAYLOAD` value; empty range when absent.
    pub payload: Range<usize>,
}

impl std::ops::Deref for PacketMsg {
    type Target = PacketMeta;
    fn deref(&self) -> &PacketMeta {
        &self.meta
    }
}

impl std::ops::DerefMut for PacketMsg {
    fn deref_mut(&mut self) -> &mut PacketMeta {
        &mut self.meta
    }
}

impl PacketMsg {
    /// False when the L4 checksum field holds only the pseudo-header seed (partial checksum,
    /// to be completed by offload): an incremental checksum update is wrong on such a packet.
    pub fn checksum_ready(&self) -> bool {
        self.skb_info & NFQA_SKB_CSUMNOTREADY == 0
    }

    /// The packet is a GSO super-packet (larger than the device MTU).
    pub fn gso(&self) -> bool {
        self.skb_info & NFQA_SKB_GSO != 0
    }

    /// The payload is shorter than the packet: returning it in a verdict would *cut the
    /// packet*, so such a packet must never be given a payload back.
    pub fn truncated(&self) -> bool {
        match self.cap_len {
            Some(original) => original as usize > self.payload.len(),
            None => false,
        }
    }
}

/// One message decoded from a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `NFQNL_MSG_PACKET`: a packet waiting for a verdict.
    Packet(PacketMsg),
    /// `NLMSG_ERROR` with code 0: an acknowledgement of the request with sequence `seq`.
    Ack { seq: u32 },
    /// `NLMSG_ERROR` with a (positive) errno, for the request with sequence `seq` (0 when the
    /// original header was not echoed).
    Error { errno: i32, seq: u32 },
    /// `NLMSG_DONE`, `NLMSG_NOOP`, `NLMSG_OVERRUN` or any other type: nothing to act on.
    Other { ty: u16 },
}

/// Iterator over the netlink messages in one received datagram; see [`parse_datagram`].
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    buf: &'a [u8],
    frames: frame::Messages<'a>,
}

/// Decodes one received datagram. The entry point for fuzzing: any byte string is valid input.
///
/// Yields one item per netlink message. An error inside a message (bad attribute) yields `Err`
/// and decoding continues with the next message; an error in the framing itself (a message
/// length that lies) yields `Err` once and ends the iteration, since nothing after it can be
/// located reliably.
pub fn parse_datagram(buf: &[u8]) -> Messages<'_> {
    Messages {
        buf,
        frames: frame::messages(buf),
    }
}

impl Iterator for Messages<'_> {
    type Item = Result<Message, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(match self.frames.next()? {
            Ok(f) => decode_message(self.buf, &f),
            Err(e) => Err(e.into()),
        })
    }
}

/// Decodes one framed message of `buf`.
fn decode_message(buf: &[u8], f: &Frame) -> Result<Message, ParseError> {
    match f.header.ty {
        NLMSG_ERROR => {
            // The original request header follows the code; its seq tells us which request
            // failed. With NETLINK_CAP_ACK only that header is echoed, which is all we need.
            let e = ack::parse(buf, f).ok_or(ParseError::ShortError { offset: f.start })?;
            let seq = e.seq.unwrap_or(0);
            if e.is_ack() {
                Ok(Message::Ack { seq })
            } else {
                Ok(Message::Error {
                    errno: e.errno,
                    seq,
                })
            }
        }
        t if t == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET => {
            decode_packet(buf, f.start, f.body.end)
        }
        other => Ok(Message::Other { ty: other }),
    }
}

fn decode_packet(buf: &[u8], start: usize, end: usize) -> Result<Message, ParseError> {
    let nfg = start + NLMSG_HDRLEN;
    if end - nfg < NFGENMSG_LEN {
        return Err(ParseError::ShortNfgenmsg { offset: start });
    }
    let queue = be_u16(buf, nfg + 2);
    let mut pkt = PacketMsg {
        queue,
        meta: PacketMeta::default(),
        skb_info: 0,
        cap_len: None,
        payload: 0..0,
    };
    let mut have_hdr = false;
    for attr in frame::attrs(buf, nfg + NFGENMSG_LEN, end) {
        let frame::Attr { ty, value, .. } = attr?;
        let v = &buf[value.clone()];
        match ty {
            NFQA_PACKET_HDR => {
                // struct nfqnl_msg_packet_hdr is packed: be32 id, be16 hw_protocol, u8 hook.
                if v.len() < 7 {
                    return Err(ParseError::ShortAttributeValue { attr: ty });
                }
                pkt.id = be_u32(v, 0);
                pkt.hw_protocol = be_u16(v, 4);
                pkt.hook = v[6];
                have_hdr = true;
            }
            NFQA_MARK => pkt.mark = attr_u32(v, ty)?,
            NFQA_IFINDEX_INDEV => pkt.indev = attr_u32(v, ty)?,
            NFQA_IFINDEX_OUTDEV => pkt.outdev = attr_u32(v, ty)?,
            NFQA_SKB_INFO => pkt.skb_info = attr_u32(v, ty)?,
            NFQA_CAP_LEN => pkt.cap_len = Some(attr_u32(v, ty)?),
            NFQA_PAYLOAD => pkt.payload = value,
            // Timestamps, hardware addresses, conntrack, uid/gid...: not requested, not needed.
            _ => {}
        }
    }
    if !have_hdr {
        return Err(ParseError::MissingPacketHeader);
    }
    Ok(Message::Packet(pkt))
}

fn attr_u32(v: &[u8], attr: u16) -> Result<u32, ParseError> {
    if v.len() < 4 {
        return Err(ParseError::ShortAttributeValue { attr });
    }
    Ok(be_u32(v, 0))
}

// Integer readers. Callers check the length first; a read past the end would give 0, never
// UB or a panic.
fn ne_u32(b: &[u8], at: usize) -> u32 {
    frame::ne_u32(b, at).unwrap_or(0)
}
fn be_u16(b: &[u8], at: usize) -> u16 {
    frame::be_u16(b, at).unwrap_or(0)
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    frame::be_u32(b, at).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A payload longer than [`MAX_PAYLOAD`] does not fit an attribute.
    #[error("payload of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    PayloadTooLong { len: usize },
}

/// Appends a message header claiming length `len` (0 until [`finish_msg`] sets it).
fn put_nlmsghdr(buf: &mut Vec<u8>, len: u32, ty: u16, flags: u16, seq: u32) {
    let start = frame::put_header(buf, ty, flags, seq);
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn put_nfgenmsg(buf: &mut Vec<u8>, queue: u16) {
    buf.push(libc::AF_UNSPEC as u8);
    buf.push(NFNETLINK_V0);
    buf.extend_from_slice(&queue.to_be_bytes());
}

/// Appends one attribute with its padding (all callers here pass fixed small values or cut
/// to [`MAX_PAYLOAD`]).
fn put_attr(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    frame::put_attr(buf, ty, value)
}

/// Patches the `nlmsg_len` of the message starting at `start` to run to the end of `buf`.
fn finish_msg(buf: &mut [u8], start: usize) {
    frame::finish(buf, start)
}

/// What one `NFQNL_MSG_CONFIG` message asks for. The kernel applies the command first, then
/// parameters, max length and flags, all from one message, so binding and configuring in one
/// message is atomic: no packet can be queued under a half-applied configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigRequest {
    /// `NFQNL_CFG_CMD_*`.
    pub cmd: Option<u8>,
    /// (copy mode, copy range).
    pub params: Option<(u8, u32)>,
    pub max_len: Option<u32>,
    /// (flags, mask): only the bits in the mask are changed.
    pub flags: Option<(u32, u32)>,
    /// Ask for an acknowledgement (`NLM_F_ACK`).
    pub ack: bool,
}

/// Appends an `NFQNL_MSG_CONFIG` message for `queue`.
pub fn encode_config(buf: &mut Vec<u8>, queue: u16, seq: u32, req: &ConfigRequest) {
    let start = buf.len();
    let flags = NLM_F_REQUEST | if req.ack { NLM_F_ACK } else { 0 };
    put_nlmsghdr(
        buf,
        0,
        (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG,
        flags,
        seq,
    );
    put_nfgenmsg(buf, queue);
    if let Some(cmd) = req.cmd {
        // struct nfqnl_msg_config_cmd { u8 command; u8 _pad; be16 pf }; pf is only read by the
        // obsolete PF_BIND commands.
        put_attr(buf, NFQA_CFG_CMD, &[cmd, 0, 0, 0]);
    }
    if let Some((mode, range)) = req.params {
        // struct nfqnl_msg_config_params is packed: be32 copy_range, u8 copy_mode.
        let r = range.to_be_bytes();
        put_attr(buf, NFQA_CFG_PARAMS, &[r[0], r[1], r[2], r[3], mode]);
    }
    if let Some(max_len) = req.max_len {
        put_attr(buf, NFQA_CFG_QUEUE_MAXLEN, &max_len.to_be_bytes());
    }
    if let Some((flags, mask)) = req.flags {
        // The kernel refuses FLAGS without MASK (EINVAL).
        put_attr(buf, NFQA_CFG_MASK, &mask.to_be_bytes());
        put_attr(buf, NFQA_CFG_FLAGS, &flags.to_be_bytes());
    }
    finish_msg(buf, start);
}

/// Appends the head of an `NFQNL_MSG_VERDICT` message: everything except the payload bytes
/// themselves, so that the payload can be sent straight from the receive buffer (an iovec of
/// its own). With `payload_len: Some(n)`, the message length already counts the `n` payload
/// bytes and their padding, and the returned value is the number of zero padding bytes the
/// caller must send after the payload. Without a payload the message is complete and the
/// return value is 0.
pub fn encode_verdict_head(
    buf: &mut Vec<u8>,
    queue: u16,
    id: u32,
    verdict: u32,
    mark: Option<u32>,
    payload_len: Option<usize>,
) -> Result<usize, EncodeError> {
    if let Some(n) = payload_len
        && n > MAX_PAYLOAD
    {
        return Err(EncodeError::PayloadTooLong { len: n });
    }
    let start = buf.len();
    // No NLM_F_ACK: verdicts are fire and forget; the kernel still reports a failed one with
    // an NLMSG_ERROR, which process_batch counts.
    put_nlmsghdr(
        buf,
        0,
        (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT,
        NLM_F_REQUEST,
        0,
    );
    put_nfgenmsg(buf, queue);
    let mut hdr = [0u8; 8];
    hdr[..4].copy_from_slice(&verdict.to_be_bytes());
    hdr[4..].copy_from_slice(&id.to_be_bytes());
    put_attr(buf, NFQA_VERDICT_HDR, &hdr);
    if let Some(mark) = mark {
        put_attr(buf, NFQA_MARK, &mark.to_be_bytes());
    }
    finish_msg(buf, start);
    let Some(n) = payload_len else {
        return Ok(0);
    };
    frame::put_attr_header(buf, NFQA_PAYLOAD, n);
    let pad = align4(n) - n;
    let total = (buf.len() - start + n + pad) as u32;
    buf[start..start + 4].copy_from_slice(&total.to_ne_bytes());
    Ok(pad)
}

/// Appends a complete `NFQNL_MSG_VERDICT` message with the payload copied in (the contiguous
/// form of [`encode_verdict_head`], for tests and for callers without scatter/gather).
pub fn encode_verdict(
    buf: &mut Vec<u8>,
    queue: u16,
    id: u32,
    verdict: u32,
    mark: Option<u32>,
    payload: Option<&[u8]>,
) -> Result<(), EncodeError> {
    let pad = encode_verdict_head(buf, queue, id, verdict, mark, payload.map(<[u8]>::len))?;
    if let Some(p) = payload {
        buf.extend_from_slice(p);
        buf.resize(buf.len() + pad, 0);
    }
    Ok(())
}

/// A verdict message as decoded by [`parse_verdict`] (the kernel's side of the exchange; used
/// to check the encoder, and as a second fuzz target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictMsg {
    pub queue: u16,
    pub id: u32,
    pub verdict: u32,
    pub mark: Option<u32>,
    pub payload: Option<Range<usize>>,
    /// Aligned length of the message: where the next message in the buffer starts.
    pub next: usize,
}

/// Decodes one `NFQNL_MSG_VERDICT` message at the start of `buf`, the way the kernel reads it.
pub fn parse_verdict(buf: &[u8]) -> Result<VerdictMsg, ParseError> {
    if buf.len() < NLMSG_HDRLEN {
        return Err(ParseError::ShortHeader { offset: 0 });
    }
    let len = ne_u32(buf, 0);
    if (len as usize) < NLMSG_HDRLEN + NFGENMSG_LEN || len as usize > buf.len() {
        return Err(ParseError::BadMessageLength { offset: 0, len });
    }
    let end = len as usize;
    let queue = be_u16(buf, NLMSG_HDRLEN + 2);
    let mut out = VerdictMsg {
        queue,
        id: 0,
        verdict: 0,
        mark: None,
        payload: None,
        next: align4(end).min(buf.len()),
    };
    let mut have_hdr = false;
    for attr in frame::attrs(buf, NLMSG_HDRLEN + NFGENMSG_LEN, end) {
        let frame::Attr { ty, value, .. } = attr?;
        let v = &buf[value.clone()];
        match ty {
            NFQA_VERDICT_HDR => {
                if v.len() < 8 {
                    return Err(ParseError::ShortAttributeValue { attr: ty });
                }
                out.verdict = be_u32(v, 0);
                out.id = be_u32(v, 4);
                have_hdr = true;
            }
            NFQA_MARK => out.mark = Some(attr_u32(v, ty)?),
            NFQA_PAYLOAD => out.payload = Some(value),
            _ => {}
        }
    }
    if !have_hdr {
        return Err(ParseError::MissingPacketHeader);
    }
    Ok(out)
}

/// Fields of a packet message built by [`encode_packet`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PacketSpec<'a> {
    pub queue: u16,
    pub id: u32,
    pub hw_protocol: u16,
    pub hook: u8,
    pub indev: Option<u32>,
    pub outdev: Option<u32>,
    pub mark: Option<u32>,
    pub skb_info: Option<u32>,
    pub cap_len: Option<u32>,
    pub payload: Option<&'a [u8]>,
}

/// Appends an `NFQNL_MSG_PACKET` message laid out as the kernel lays it out. For tests and
/// fuzz seeds: netnat itself never sends one. Payloads longer than [`MAX_PAYLOAD`] are cut.
pub fn encode_packet(buf: &mut Vec<u8>, spec: &PacketSpec<'_>) {
    let start = buf.len();
    put_nlmsghdr(buf, 0, (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET, 0, 0);
    put_nfgenmsg(buf, spec.queue);
    let mut hdr = [0u8; 7];
    hdr[..4].copy_from_slice(&spec.id.to_be_bytes());
    hdr[4..6].copy_from_slice(&spec.hw_protocol.to_be_bytes());
    hdr[6] = spec.hook;
    put_attr(buf, NFQA_PACKET_HDR, &hdr);
    for (ty, v) in [
        (NFQA_MARK, spec.mark),
        (NFQA_IFINDEX_INDEV, spec.indev),
        (NFQA_IFINDEX_OUTDEV, spec.outdev),
        (NFQA_CAP_LEN, spec.cap_len),
        (NFQA_SKB_INFO, spec.skb_info),
    ] {
        if let Some(v) = v {
            put_attr(buf, ty, &v.to_be_bytes());
        }
    }
    if let Some(p) = spec.payload {
        put_attr(buf, NFQA_PAYLOAD, &p[..p.len().min(MAX_PAYLOAD)]);
    }
    finish_msg(buf, start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ne_u16(b: &[u8], at: usize) -> u16 {
        frame::ne_u16(b, at).unwrap()
    }

    fn one(buf: &[u8]) -> Message {
        let mut it = parse_datagram(buf);
        let m = it.next().expect("one message").expect("valid");
        assert!(it.next().is_none());
        m
    }

    #[test]
    fn packet_round_trip() {
        let payload: Vec<u8> = (0..41u8).collect();
        let spec = PacketSpec {
            queue: 0x1234,
            id: 0xdead_beef,
            hw_protocol: 0x0800,
            hook: 3,
            indev: Some(7),
            outdev: Some(9),
            mark: Some(0x8000_0001),
            skb_info: Some(NFQA_SKB_CSUMNOTREADY | NFQA_SKB_GSO),
            cap_len: None,
            payload: Some(&payload),
        };
        let mut buf = Vec::new();
        encode_packet(&mut buf, &spec);
        assert_eq!(buf.len() % 4, 0);
        let Message::Packet(p) = one(&buf) else {
            panic!("not a packet")
        };
        assert_eq!(p.queue, 0x1234);
        assert_eq!(p.id, 0xdead_beef);
        assert_eq!(p.hw_protocol, 0x0800);
        assert_eq!(p.hook, 3);
        assert_eq!((p.indev, p.outdev, p.mark), (7, 9, 0x8000_0001));
        assert!(!p.checksum_ready());
        assert!(p.gso());
        assert!(!p.truncated());
        assert_eq!(&buf[p.payload.clone()], &payload[..]);
    }

    #[test]
    fn cap_len_marks_truncation_only_when_longer() {
        let payload = [1u8; 100];
        for (cap, truncated) in [(Some(100), false), (Some(70_000), true), (None, false)] {
            let mut buf = Vec::new();
            encode_packet(
                &mut buf,
                &PacketSpec {
                    cap_len: cap,
                    payload: Some(&payload),
                    ..Default::default()
                },
            );
            let Message::Packet(p) = one(&buf) else {
                panic!()
            };
            assert_eq!(p.truncated(), truncated, "cap {cap:?}");
            assert!(p.checksum_ready());
        }
    }

    #[test]
    fn several_messages_in_one_datagram() {
        let mut buf = Vec::new();
        for id in 0..5 {
            encode_packet(
                &mut buf,
                &PacketSpec {
                    id,
                    payload: Some(&[0xaa; 3][..]),
                    ..Default::default()
                },
            );
        }
        let ids: Vec<u32> = parse_datagram(&buf)
            .map(|m| match m.unwrap() {
                Message::Packet(p) => p.id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn error_and_ack_messages() {
        let mut req = Vec::new();
        encode_config(
            &mut req,
            5,
            77,
            &ConfigRequest {
                cmd: Some(NFQNL_CFG_CMD_BIND),
                ack: true,
                ..Default::default()
            },
        );
        for code in [0i32, -libc::EPERM] {
            let mut buf = Vec::new();
            let len = (NLMSG_HDRLEN + 4 + NLMSG_HDRLEN) as u32;
            put_nlmsghdr(&mut buf, len, NLMSG_ERROR, 0, 77);
            buf.extend_from_slice(&code.to_ne_bytes());
            buf.extend_from_slice(&req[..NLMSG_HDRLEN]);
            let m = one(&buf);
            if code == 0 {
                assert_eq!(m, Message::Ack { seq: 77 });
            } else {
                assert_eq!(
                    m,
                    Message::Error {
                        errno: libc::EPERM,
                        seq: 77
                    }
                );
            }
        }
        // i32::MIN as an error code must not overflow on negation.
        let mut buf = Vec::new();
        put_nlmsghdr(&mut buf, 20, NLMSG_ERROR, 0, 0);
        buf.extend_from_slice(&i32::MIN.to_ne_bytes());
        assert!(matches!(one(&buf), Message::Error { seq: 0, .. }));
    }

    #[test]
    fn config_encoding_layout() {
        let mut buf = Vec::new();
        encode_config(
            &mut buf,
            0x0102,
            9,
            &ConfigRequest {
                cmd: Some(NFQNL_CFG_CMD_BIND),
                params: Some((NFQNL_COPY_PACKET, 0xffff)),
                max_len: Some(8192),
                flags: Some((NFQA_CFG_F_GSO, NFQA_CFG_F_GSO)),
                ack: true,
            },
        );
        // header 16 + nfgen 4 + cmd 8 + params 12 (9 padded) + maxlen 8 + mask 8 + flags 8
        assert_eq!(buf.len(), 64);
        assert_eq!(ne_u32(&buf, 0), 64);
        assert_eq!(ne_u16(&buf, 4), 0x0302);
        assert_eq!(ne_u16(&buf, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(ne_u32(&buf, 8), 9);
        assert_eq!(&buf[16..20], &[0, 0, 0x01, 0x02]);
        // cmd attribute
        assert_eq!(&buf[20..28], &[8, 0, 1, 0, 1, 0, 0, 0][..]);
        // params: len 9, type 2, be32 0xffff, mode 2, 3 bytes pad
        assert_eq!(ne_u16(&buf, 28), 9);
        assert_eq!(&buf[32..40], &[0, 0, 0xff, 0xff, 2, 0, 0, 0]);
        assert_eq!(be_u32(&buf, 44), 8192);
        assert_eq!(ne_u16(&buf, 50), NFQA_CFG_MASK);
        assert_eq!(be_u32(&buf, 52), NFQA_CFG_F_GSO);
        assert_eq!(ne_u16(&buf, 58), NFQA_CFG_FLAGS);
        assert_eq!(be_u32(&buf, 60), NFQA_CFG_F_GSO);
    }

    #[test]
    fn verdict_round_trip_with_and_without_payload() {
        for len in [0usize, 1, 2, 3, 4, 5, 1500, MAX_PAYLOAD] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            for mark in [None, Some(0xfeed_f00d)] {
                let mut buf = Vec::new();
                encode_verdict(&mut buf, 42, 0x0a0b_0c0d, NF_ACCEPT, mark, Some(&payload)).unwrap();
                assert_eq!(buf.len() % 4, 0);
                assert_eq!(ne_u32(&buf, 0) as usize, buf.len());
                let v = parse_verdict(&buf).unwrap();
                assert_eq!(v.queue, 42);
                assert_eq!(v.id, 0x0a0b_0c0d);
                assert_eq!(v.verdict, NF_ACCEPT);
                assert_eq!(v.mark, mark);
                assert_eq!(&buf[v.payload.unwrap()], &payload[..]);
                assert_eq!(v.next, buf.len());
            }
        }
        let mut buf = Vec::new();
        encode_verdict(&mut buf, 1, 2, NF_DROP, None, None).unwrap();
        assert_eq!(buf.len(), NLMSG_HDRLEN + NFGENMSG_LEN + 12);
        let v = parse_verdict(&buf).unwrap();
        assert_eq!(
            (v.id, v.verdict, v.mark, v.payload),
            (2, NF_DROP, None, None)
        );
    }

    #[test]
    fn verdict_head_matches_contiguous_form() {
        let payload = [9u8; 13];
        let mut whole = Vec::new();
        encode_verdict(&mut whole, 3, 4, NF_ACCEPT, Some(5), Some(&payload)).unwrap();
        let mut head = Vec::new();
        let pad = encode_verdict_head(&mut head, 3, 4, NF_ACCEPT, Some(5), Some(13)).unwrap();
        assert_eq!(pad, 3);
        assert!(head.len() <= VERDICT_HEAD_MAX);
        head.extend_from_slice(&payload);
        head.extend_from_slice(&[0; 3]);
        assert_eq!(head, whole);
    }

    #[test]
    fn oversized_payload_is_refused() {
        let mut buf = Vec::new();
        assert_eq!(
            encode_verdict_head(&mut buf, 0, 0, NF_ACCEPT, None, Some(MAX_PAYLOAD + 1)),
            Err(EncodeError::PayloadTooLong {
                len: MAX_PAYLOAD + 1
            })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn lying_lengths_are_rejected() {
        let mut good = Vec::new();
        encode_packet(
            &mut good,
            &PacketSpec {
                id: 1,
                payload: Some(&[1, 2, 3, 4, 5][..]),
                ..Default::default()
            },
        );
        // nlmsg_len too large, too small, zero.
        for lie in [good.len() as u32 + 1, 15, 0, u32::MAX] {
            let mut b = good.clone();
            b[..4].copy_from_slice(&lie.to_ne_bytes());
            let items: Vec<_> = parse_datagram(&b).collect();
            assert_eq!(items.len(), 1);
            assert!(matches!(items[0], Err(ParseError::BadMessageLength { .. })));
        }
        // The payload attribute claims more than the message holds.
        let mut b = good.clone();
        let payload_attr = NLMSG_HDRLEN + NFGENMSG_LEN + 12;
        assert_eq!(ne_u16(&b, payload_attr + 2), NFQA_PAYLOAD);
        b[payload_attr..payload_attr + 2].copy_from_slice(&500u16.to_ne_bytes());
        assert!(matches!(
            one_result(&b),
            Err(ParseError::BadAttribute { .. })
        ));
        // An attribute length below the header size.
        b[payload_attr..payload_attr + 2].copy_from_slice(&2u16.to_ne_bytes());
        assert!(matches!(
            one_result(&b),
            Err(ParseError::BadAttribute { .. })
        ));
        // A packet header attribute too short for its struct.
        let mut b = Vec::new();
        put_nlmsghdr(&mut b, 0, 0x0300, 0, 0);
        put_nfgenmsg(&mut b, 0);
        put_attr(&mut b, NFQA_PACKET_HDR, &[0, 0, 0, 1]);
        finish_msg(&mut b, 0);
        assert_eq!(
            one_result(&b),
            Err(ParseError::ShortAttributeValue {
                attr: NFQA_PACKET_HDR
            })
        );
        // No packet header at all.
        let mut b = Vec::new();
        put_nlmsghdr(&mut b, 0, 0x0300, 0, 0);
        put_nfgenmsg(&mut b, 0);
        finish_msg(&mut b, 0);
        assert_eq!(one_result(&b), Err(ParseError::MissingPacketHeader));
        // Shorter than nfgenmsg.
        let mut b = Vec::new();
        put_nlmsghdr(&mut b, 18, 0x0300, 0, 0);
        b.extend_from_slice(&[0, 0]);
        assert!(matches!(
            one_result(&b),
            Err(ParseError::ShortNfgenmsg { .. })
        ));
        // Every truncation of a good message is handled.
        for cut in 0..good.len() {
            for m in parse_datagram(&good[..cut]) {
                let _ = m;
            }
        }
    }

    fn one_result(buf: &[u8]) -> Result<Message, ParseError> {
        parse_datagram(buf).next().expect("one item")
    }

    #[test]
    fn nested_flag_bits_are_masked() {
        let mut b = Vec::new();
        put_nlmsghdr(&mut b, 0, 0x0300, 0, 0);
        put_nfgenmsg(&mut b, 0);
        put_attr(&mut b, NFQA_PACKET_HDR, &[0, 0, 0, 7, 8, 0, 1]);
        put_attr(&mut b, NFQA_MARK | 0x4000, &5u32.to_be_bytes());
        finish_msg(&mut b, 0);
        let Message::Packet(p) = one(&b) else {
            panic!()
        };
        assert_eq!((p.id, p.mark), (7, 5));
    }

    /// Checks the invariants every successful decode must satisfy on arbitrary input.
    fn check_datagram(bytes: &[u8]) {
        let mut count = 0usize;
        for m in parse_datagram(bytes) {
            count += 1;
            assert!(count <= bytes.len() / NLMSG_HDRLEN + 1, "no progress");
            if let Ok(Message::Packet(p)) = m {
                assert!(p.payload.start <= p.payload.end);
                assert!(p.payload.end <= bytes.len());
            }
        }
        if let Ok(v) = parse_verdict(bytes) {
            if let Some(r) = v.payload {
                assert!(r.end <= bytes.len());
            }
            assert!(v.next <= bytes.len());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            check_datagram(&bytes);
        }

        /// Random corruption of well-formed messages reaches deeper into the attribute parser
        /// than pure noise, which mostly fails the first header check.
        #[test]
        fn corrupted_messages_never_panic(
            id in any::<u32>(),
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            mark in proptest::option::of(any::<u32>()),
            cap in proptest::option::of(any::<u32>()),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
        ) {
            let mut buf = Vec::new();
            encode_packet(&mut buf, &PacketSpec {
                id, mark, cap_len: cap, payload: Some(&payload), ..Default::default()
            });
            encode_verdict(&mut buf, 1, id, NF_ACCEPT, mark, Some(&payload)).unwrap();
            for (at, val) in flips {
                let n = buf.len();
                buf[at % n] = val;
            }
            let cut = cut % (buf.len() + 1);
            check_datagram(&buf[..cut]);
            check_datagram(&buf);
        }

        #[test]
        fn packet_round_trip_prop(
            queue in any::<u16>(),
            id in any::<u32>(),
            hw in any::<u16>(),
            hook in any::<u8>(),
            indev in proptest::option::of(any::<u32>()),
            outdev in proptest::option::of(any::<u32>()),
            mark in proptest::option::of(any::<u32>()),
            info in proptest::option::of(0u32..8),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut buf = Vec::new();
            encode_packet(&mut buf, &PacketSpec {
                queue, id, hw_protocol: hw, hook, indev, outdev, mark, skb_info: info,
                cap_len: None, payload: Some(&payload),
            });
            let Message::Packet(p) = one(&buf) else { panic!() };
            prop_assert_eq!(p.queue, queue);
            prop_assert_eq!(p.id, id);
            prop_assert_eq!(p.hw_protocol, hw);
            prop_assert_eq!(p.hook, hook);
            prop_assert_eq!(p.indev, indev.unwrap_or(0));
            prop_assert_eq!(p.outdev, outdev.unwrap_or(0));
            prop_assert_eq!(p.mark, mark.unwrap_or(0));
            prop_assert_eq!(p.skb_info, info.unwrap_or(0));
            prop_assert_eq!(&buf[p.payload.clone()], &payload[..]);
        }

        #[test]
        fn verdict_round_trip_prop(
            queue in any::<u16>(),
            id in any::<u32>(),
            accept in any::<bool>(),
            mark in proptest::option::of(any::<u32>()),
            payload in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        ) {
            let verdict = if accept { NF_ACCEPT } else { NF_DROP };
            let mut buf = Vec::new();
            encode_verdict(&mut buf, queue, id, verdict, mark, payload.as_deref()).unwrap();
            // A second message behind it must be found at `next`.
            let first_len = buf.len();
            encode_verdict(&mut buf, queue, id ^ 1, verdict, None, None).unwrap();
            let v = parse_verdict(&buf).unwrap();
            prop_assert_eq!(v.queue, queue);
            prop_assert_eq!(v.id, id);
            prop_assert_eq!(v.verdict, verdict);
            prop_assert_eq!(v.mark, mark);
            prop_assert_eq!(v.payload.map(|r| buf[r].to_vec()), payload);
            prop_assert_eq!(v.next, first_len);
            let w = parse_verdict(&buf[v.next..]).unwrap();
            prop_assert_eq!(w.id, id ^ 1);
        }
    }
}
