//! rtnetlink messages about links and addresses, decoded by hand from a datagram.
//!
//! Pure and panic-free over any byte slice: every length the bytes claim (message, attribute)
//! is checked against what is really there before it is used, so a truncated or lying
//! datagram yields an error value, never a panic or an out-of-bounds read. This is the only
//! part of the interface watch that sees bytes from outside; it is unit-tested and fuzzable
//! through [`messages`] without a kernel.
//!
//! Layouts are those of the Linux uapi headers `linux/netlink.h`, `linux/rtnetlink.h`,
//! `linux/if_link.h` and `linux/if_addr.h`. Netlink is in host byte order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::netlink::{ack, frame};

// linux/netlink.h, from the shared framing (re-exported: tests and fuzzers build messages).
pub use crate::netlink::frame::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_MULTI, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN,
    NLMSG_NOOP, NLMSG_OVERRUN,
};

// linux/rtnetlink.h
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;
/// Multicast groups (the legacy bitmask form, for `nl_groups` in bind).
pub const RTMGRP_LINK: u32 = 0x1;
pub const RTMGRP_IPV4_IFADDR: u32 = 0x10;
pub const RTMGRP_IPV6_IFADDR: u32 = 0x100;

// linux/if_link.h
pub const IFLA_IFNAME: u16 = 3;
/// `struct ifinfomsg`: family u8, pad u8, type u16, index i32, flags u32, change u32.
pub const IFINFOMSG_LEN: usize = 16;

// linux/if_addr.h
pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_LABEL: u16 = 3;
pub const IFA_CACHEINFO: u16 = 6;
pub const IFA_FLAGS: u16 = 8;
/// `struct ifaddrmsg`: family u8, prefixlen u8, flags u8, scope u8, index u32.
pub const IFADDRMSG_LEN: usize = 8;
/// `struct ifa_cacheinfo`: preferred u32, valid u32, cstamp u32, tstamp u32.
pub const IFA_CACHEINFO_LEN: usize = 16;

/// IPv4: a secondary address of its subnet. IPv6 uses the same bit for IFA_F_TEMPORARY
/// (a privacy address), which is not the interface's own stable address either.
pub const IFA_F_SECONDARY: u32 = 0x01;
pub const IFA_F_NODAD: u32 = 0x02;
pub const IFA_F_OPTIMISTIC: u32 = 0x04;
pub const IFA_F_DADFAILED: u32 = 0x08;
pub const IFA_F_DEPRECATED: u32 = 0x20;
pub const IFA_F_TENTATIVE: u32 = 0x40;
pub const IFA_F_PERMANENT: u32 = 0x80;

// linux/if.h
pub const IFF_UP: u32 = 0x1;
pub const IFF_POINTOPOINT: u32 = 0x10;
pub const IFF_RUNNING: u32 = 0x40;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// rtnetlink scopes (`enum rt_scope_t`): smaller is wider.
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;
pub const RT_SCOPE_HOST: u8 = 254;

/// Why bytes could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Fewer bytes than a netlink header, or a header length below 16 or beyond the datagram.
    #[error("bad netlink header length")]
    Header,
    /// The fixed part after the header (ifinfomsg, ifaddrmsg, nlmsgerr) does not fit.
    #[error("message too short for its type")]
    Body,
    /// An attribute's length is below 4 or runs past its message.
    #[error("bad attribute length")]
    Attribute,
    /// An attribute has a length its type does not allow (e.g. a 5-byte IPv4 address).
    #[error("attribute value of the wrong size")]
    AttributeValue,
}

/// A link (network interface) message: RTM_NEWLINK or RTM_DELLINK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkMsg {
    /// RTM_NEWLINK (created or changed) rather than RTM_DELLINK.
    pub new: bool,
    /// ifindex; the kernel never uses 0 or negative indexes, so a lying value is just a number.
    pub index: u32,
    /// IFF_* flags.
    pub flags: u32,
    /// IFLA_IFNAME, up to its NUL; lossy UTF-8 (a name that is not UTF-8 cannot be configured).
    pub name: Option<String>,
}

/// An address message: RTM_NEWADDR or RTM_DELADDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrMsg {
    /// RTM_NEWADDR (added or changed, e.g. DAD finished) rather than RTM_DELADDR.
    pub new: bool,
    pub family: u8,
    pub prefix_len: u8,
    /// IFA_F_* flags: the 32-bit IFA_FLAGS attribute when present (it supersedes the 8-bit
    /// field of the header), else the header's field.
    pub flags: u32,
    pub scope: u8,
    pub index: u32,
    /// IFA_LOCAL: the interface's own address. On point-to-point links IFA_ADDRESS is the peer.
    pub local: Option<IpAddr>,
    /// IFA_ADDRESS: the prefix address on broadcast links, the peer on point-to-point links.
    pub address: Option<IpAddr>,
    /// IFA_LABEL (IPv4 only, e.g. "eth0:1").
    pub label: Option<String>,
    /// `cstamp` of IFA_CACHEINFO: creation time in hundredths of a second since boot.
    pub created: Option<u32>,
}

impl AddrMsg {
    /// The interface's own address this message is about: IFA_LOCAL when present (it differs
    /// from IFA_ADDRESS exactly on point-to-point links, where IFA_ADDRESS is the peer), else
    /// IFA_ADDRESS (IPv6 on broadcast links sends only that one).
    pub fn own_address(&self) -> Option<IpAddr> {
        self.local.or(self.address)
    }

    /// Whether the address may stand for its interface under `*`: not a secondary IPv4 (or
    /// temporary IPv6) address, not IPv6 link-local, and usable now (no DAD pending or failed,
    /// not deprecated).
    pub fn is_candidate(&self) -> bool {
        const UNUSABLE: u32 =
            IFA_F_SECONDARY | IFA_F_TENTATIVE | IFA_F_DEPRECATED | IFA_F_DADFAILED;
        if self.flags & UNUSABLE != 0 {
            return false;
        }
        match self.own_address() {
            Some(IpAddr::V4(_)) => self.family == AF_INET,
            Some(IpAddr::V6(a)) => self.family == AF_INET6 && !is_link_local(&a),
            None => false,
        }
    }

    /// Whether the address still receives packets for the interface although it may not stand
    /// for it under `*`: a secondary IPv4 address, a deprecated (or temporary) IPv6 one. Such an
    /// address keeps the connections made to it (see `Snapshot::from_messages`). Not while
    /// DAD is pending or failed, and never IPv6 link-local.
    pub fn is_valid(&self) -> bool {
        if self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED) != 0 {
            return false;
        }
        match self.own_address() {
            Some(IpAddr::V4(_)) => self.family == AF_INET,
            Some(IpAddr::V6(a)) => self.family == AF_INET6 && !is_link_local(&a),
            None => false,
        }
    }
}

/// fe80::/10.
pub(crate) fn is_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// The body of one netlink message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Link(LinkMsg),
    Addr(AddrMsg),
    /// NLMSG_DONE: the end of a dump.
    Done,
    /// NLMSG_ERROR: 0 is an acknowledgement, otherwise a positive errno.
    Error(i32),
    /// NLMSG_OVERRUN.
    Overrun,
    /// NLMSG_NOOP, or a message type this module does not decode.
    Other,
    /// The header was sound but the body was not; the next message is still read.
    Malformed(Malformed),
}

/// One netlink message: its header fields and decoded body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    pub body: Body,
}

/// Iterator over the messages of one datagram. Yields `Err` once and then stops when a
/// header is broken (nothing after it can be located); a broken body only spoils its message.
#[derive(Clone, Debug)]
pub struct Messages<'a> {
    buf: &'a [u8],
    frames: frame::Messages<'a>,
}

/// Decodes the netlink messages in `datagram`. Never panics, whatever the bytes.
pub fn messages(datagram: &[u8]) -> Messages<'_> {
    Messages {
        buf: datagram,
        frames: frame::messages(datagram),
    }
}

impl Iterator for Messages<'_> {
    type Item = Result<Message, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        let f = match self.frames.next()? {
            Ok(f) => f,
            Err(_) => return Some(Err(Malformed::Header)),
        };
        let h = f.header;
        let payload = &self.buf[f.body.clone()];
        let body = match h.ty {
            RTM_NEWLINK | RTM_DELLINK => link(h.ty == RTM_NEWLINK, payload),
            RTM_NEWADDR | RTM_DELADDR => addr(h.ty == RTM_NEWADDR, payload),
            NLMSG_DONE => Ok(Body::Done),
            // struct nlmsgerr starts with `int error`, a negative errno (0 for an ACK).
            NLMSG_ERROR => ack::parse(self.buf, &f)
                .map(|e| Body::Error(e.errno))
                .ok_or(Malformed::Body),
            NLMSG_OVERRUN => Ok(Body::Overrun),
            _ => Ok(Body::Other),
        };
        Some(Ok(Message {
            kind: h.ty,
            flags: h.flags,
            seq: h.seq,
            pid: h.pid,
            body: body.unwrap_or_else(Body::Malformed),
        }))
    }
}

fn link(new: bool, p: &[u8]) -> Result<Body, Malformed> {
    if p.len() < IFINFOMSG_LEN {
        return Err(Malformed::Body);
    }
    let index = u32_at(p, 4).ok_or(Malformed::Body)?;
    let flags = u32_at(p, 8).ok_or(Malformed::Body)?;
    let mut name = None;
    for attr in attributes(&p[IFINFOMSG_LEN..]) {
        let (kind, value) = attr?;
        if kind == IFLA_IFNAME {
            name = Some(c_string(value));
        }
    }
    Ok(Body::Link(LinkMsg {
        new,
        index,
        flags,
        name,
    }))
}

fn addr(new: bool, p: &[u8]) -> Result<Body, Malformed> {
    if p.len() < IFADDRMSG_LEN {
        return Err(Malformed::Body);
    }
    let family = p[0];
    let mut msg = AddrMsg {
        new,
        family,
        prefix_len: p[1],
        flags: u32::from(p[2]),
        scope: p[3],
        index: u32_at(p, 4).ok_or(Malformed::Body)?,
        local: None,
        address: None,
        label: None,
        created: None,
    };
    for attr in attributes(&p[IFADDRMSG_LEN..]) {
        let (kind, value) = attr?;
        match kind {
            IFA_ADDRESS => msg.address = ip(family, value)?,
            IFA_LOCAL => msg.local = ip(family, value)?,
            IFA_LABEL => msg.label = Some(c_string(value)),
            IFA_FLAGS => msg.flags = u32_at(value, 0).ok_or(Malformed::AttributeValue)?,
            IFA_CACHEINFO if value.len() >= IFA_CACHEINFO_LEN => msg.created = u32_at(value, 8),
            IFA_CACHEINFO => return Err(Malformed::AttributeValue),
            _ => {}
        }
    }
    Ok(Body::Addr(msg))
}

/// An address attribute of the message's family. Other families (e.g. AF_DECnet) carry no
/// IP address: their attribute is ignored rather than misread.
fn ip(family: u8, v: &[u8]) -> Result<Option<IpAddr>, Malformed> {
    match family {
        AF_INET => <[u8; 4]>::try_from(v)
            .map(|b| Some(IpAddr::V4(Ipv4Addr::from(b))))
            .map_err(|_| Malformed::AttributeValue),
        AF_INET6 => <[u8; 16]>::try_from(v)
            .map(|b| Some(IpAddr::V6(Ipv6Addr::from(b))))
            .map_err(|_| Malformed::AttributeValue),
        _ => Ok(None),
    }
}

/// Iterator over the attributes (`struct nlattr`: len u16, type u16, value, padding to 4),
/// type without its flag bits; stops after the first malformed one.
fn attributes(rest: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), Malformed>> {
    frame::attrs_of(rest).map(move |a| {
        a.map(|a| (a.ty, &rest[a.value]))
            .map_err(|_| Malformed::Attribute)
    })
}

fn c_string(v: &[u8]) -> String {
    frame::c_string(v)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    frame::ne_u32(b, at)
}

/// Appends a dump request for `kind` (RTM_GETLINK or RTM_GETADDR) of every family: the
/// header and a zeroed ifinfomsg / ifaddrmsg (family AF_UNSPEC, no filter).
pub(crate) fn dump_request(out: &mut Vec<u8>, kind: u16, seq: u32) {
    let body = if kind == RTM_GETLINK {
        IFINFOMSG_LEN
    } else {
        IFADDRMSG_LEN
    };
    // pid 0: the kernel fills in ours.
    let start = frame::put_header(out, kind, NLM_F_REQUEST | NLM_F_DUMP, seq);
    out.resize(out.len() + body, 0);
    frame::finish(out, start);
}
