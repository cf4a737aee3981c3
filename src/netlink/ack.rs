//! NLMSG_ERROR: the kernel's acknowledgement (error 0) or refusal of one request, with the
//! extended-ACK attributes (`linux/netlink.h`, `NETLINK_EXT_ACK`): the kernel's message and
//! the offset of the attribute it refused.
//!
//! `struct nlmsgerr { int error; struct nlmsghdr msg; }`, then the rest of the original
//! request unless the socket asked for capped ACKs (`NLM_F_CAPPED`), then, with
//! `NLM_F_ACK_TLVS`, the extended-ACK attributes. Pure and panic-free.

use super::frame::{self, Frame, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLMSG_ERROR, NLMSG_HDRLEN};

/// Extended-ACK attribute types (`enum nlmsgerr_attrs`).
pub const NLMSGERR_ATTR_MSG: u16 = 1;
pub const NLMSGERR_ATTR_OFFS: u16 = 2;

/// One decoded NLMSG_ERROR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMsg {
    /// 0 for an acknowledgement, otherwise the (positive) errno of the refusal.
    pub errno: i32,
    /// Sequence number of the request answered, from the echoed header; `None` when the
    /// message is too short to echo it.
    pub seq: Option<u32>,
    /// The kernel's extended-ACK text (`NLMSGERR_ATTR_MSG`).
    pub message: Option<String>,
    /// Offset of the refused attribute in the original request (`NLMSGERR_ATTR_OFFS`).
    pub offset: Option<u32>,
}

impl ErrorMsg {
    pub fn is_ack(&self) -> bool {
        self.errno == 0
    }
}

/// Decodes the NLMSG_ERROR `frame` of `buf`. `None` when it is another type or shorter
/// than its error code.
pub fn parse(buf: &[u8], frame: &Frame) -> Option<ErrorMsg> {
    if frame.header.ty != NLMSG_ERROR {
        return None;
    }
    let body = buf.get(frame.body.clone())?;
    let code = frame::ne_u32(body, 0)? as i32;
    // The kernel sends a negative errno; i32::MIN has no positive counterpart.
    let errno = code.checked_neg().unwrap_or(i32::MAX);
    let inner = frame::header_at(body, 4);
    let mut out = ErrorMsg {
        errno,
        seq: inner.map(|h| h.seq),
        message: None,
        offset: None,
    };
    let (Some(inner), true) = (inner, frame.header.flags & NLM_F_ACK_TLVS != 0) else {
        return Some(out);
    };
    let echoed = if frame.header.flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        frame::align4(inner.len as usize)
    };
    let tlvs = 4usize.saturating_add(echoed);
    for a in frame::attrs(body, tlvs, body.len()).map_while(Result::ok) {
        let v = &body[a.value];
        match a.ty {
            NLMSGERR_ATTR_MSG => out.message = Some(frame::c_string(v)),
            NLMSGERR_ATTR_OFFS => out.offset = frame::ne_u32(v, 0),
            _ => {}
        }
    }
    Some(out)
}

/// Every NLMSG_ERROR of a datagram, in order; other messages and broken framing are skipped.
pub fn errors_in(buf: &[u8]) -> impl Iterator<Item = ErrorMsg> + '_ {
    frame::messages(buf)
        .map_while(Result::ok)
        .filter_map(move |f| parse(buf, &f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::frame::{finish, put_attr, put_header, put_str};

    fn error_msg(flags: u16, code: i32, seq: u32, tlvs: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut m = Vec::new();
        let s = put_header(&mut m, NLMSG_ERROR, flags, 9);
        m.extend(code.to_ne_bytes());
        // The original header; with NLM_F_CAPPED nothing of its payload follows.
        let inner = put_header(&mut m, 0x0a00, 0, seq);
        m[inner..inner + 4].copy_from_slice(&60u32.to_ne_bytes());
        tlvs(&mut m);
        finish(&mut m, s);
        m
    }

    fn one(m: &[u8]) -> ErrorMsg {
        let f = frame::messages(m).next().unwrap().unwrap();
        parse(m, &f).unwrap()
    }

    #[test]
    fn extended_ack_message_and_offset() {
        let m = error_msg(NLM_F_CAPPED | NLM_F_ACK_TLVS, -libc::EPERM, 7, |m| {
            put_str(m, NLMSGERR_ATTR_MSG, "Table is owned");
            put_attr(m, NLMSGERR_ATTR_OFFS, &36u32.to_ne_bytes());
        });
        let e = one(&m);
        assert_eq!(e.seq, Some(7));
        assert_eq!(e.errno, libc::EPERM);
        assert_eq!(e.message.as_deref(), Some("Table is owned"));
        assert_eq!(e.offset, Some(36));
        assert!(!e.is_ack());
    }

    #[test]
    fn plain_ack_and_short_forms() {
        let e = one(&error_msg(NLM_F_CAPPED, 0, 3, |_| {}));
        assert!(e.is_ack());
        assert_eq!((e.seq, e.message, e.offset), (Some(3), None, None));
        // Only the error code: no seq. i32::MIN does not overflow.
        let mut m = Vec::new();
        let s = put_header(&mut m, NLMSG_ERROR, 0, 0);
        m.extend(i32::MIN.to_ne_bytes());
        finish(&mut m, s);
        assert_eq!(one(&m).seq, None);
        assert_eq!(one(&m).errno, i32::MAX);
        // Shorter than the code: not an error message at all.
        let mut m = Vec::new();
        let s = put_header(&mut m, NLMSG_ERROR, 0, 0);
        finish(&mut m, s);
        let f = frame::messages(&m).next().unwrap().unwrap();
        assert_eq!(parse(&m, &f), None);
        // TLVs flagged but cut short: what is there is still read.
        let mut m = error_msg(NLM_F_CAPPED | NLM_F_ACK_TLVS, -libc::EINVAL, 4, |m| {
            put_str(m, NLMSGERR_ATTR_MSG, "x")
        });
        let n = m.len();
        m[n - 8..n - 6].copy_from_slice(&200u16.to_ne_bytes());
        assert_eq!(one(&m).message, None);
        assert_eq!(one(&m).errno, libc::EINVAL);
    }

    #[test]
    fn uncapped_errors_skip_the_echoed_request() {
        // Not capped: the whole original message (60 bytes) is echoed before the TLVs.
        let m = error_msg(NLM_F_ACK_TLVS, -libc::ENOENT, 5, |m| {
            m.resize(m.len() + 60 - 16, 0xee);
            put_str(m, NLMSGERR_ATTR_MSG, "No such file");
        });
        assert_eq!(one(&m).message.as_deref(), Some("No such file"));
        let all: Vec<ErrorMsg> = errors_in(&[m.clone(), m].concat()).collect();
        assert_eq!(all.len(), 2);
    }
}
