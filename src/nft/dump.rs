//! Reading netnat's offload sets back from the kernel: the elements of one set by an
//! `NFT_MSG_GETSETELEM` dump ([`set_elements`], [`count_elements`]), what their counters grew
//! by since the last reading ([`CounterDeltas`]), and what a key of a `count_*` set says
//! ([`decode_count_key`]).
//!
//! Offloaded packets skip the queue consumer; the kernel counts them in the per-element
//! counters of the `count_*` sets, and the `flows_*` sets hold one element per offloaded flow.
//!
//! A dump comes in many datagrams (`NLM_F_MULTI`), each holding one `NEWSETELEM` message with
//! as many elements as fit, and ends with `NLMSG_DONE`. The kernel builds the next datagram
//! when the previous one has been read, so the reading is bounded by a deadline, never by
//! waiting for an end that does not come. The decoding (`DumpReader`) is pure and checked
//! over synthetic datagrams; the socket part is a thin loop around it.
//!
//! What a dump of a live set can and cannot promise: the kernel walks the set's hash table
//! anew for every datagram and skips the elements it has already sent, by count. Elements
//! inserted or removed (by the packet path, or by timeouts) while the dump runs shift that
//! count, so in that one dump some elements come twice and others not at all. Measured here
//! (tests/nft_dump.rs's layout, 20,000 long-lived elements in a set of 65,536 that UDP to
//! 50,000 ports filled with 1-second elements at 50,000 to 70,000 packets/s): dumps of that set saw as
//! few as 13,835 of the 20,000 and listed up to 15,000 keys twice; with the same churn in a
//! set of another table, every dump of the 20,000 was whole and exact. So:
//! - [`set_elements`] lists each key once (the larger reading of one listed twice) and
//!   [`count_elements`] counts distinct keys, but neither can find what the kernel skipped:
//!   the count of a churning flow set is an estimate, low by up to a third under heavy churn;
//! - a counter set read for volume must not churn itself (elements per service, refreshed,
//!   not per flow): [`CounterDeltas::observe`] forgets a key missing from one dump and counts
//!   its whole counter again when it is back.
//!
//! May use: [`crate::netlink`] for the socket and the framing, `error` for what is reported.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use super::elements::{
    NFTA_DATA_VALUE, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET,
};
use super::error::NftError;
use crate::netlink::socket::{NETLINK_CAP_ACK, NETLINK_EXT_ACK, SOL_NETLINK};
use crate::netlink::{Buffer, Socket, ack, frame};

// linux/netfilter/nf_tables.h, the attributes not defined elsewhere in this module's tree.
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_EXPR: u16 = 7;
const NFTA_SET_ELEM_EXPRESSIONS: u16 = 11;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

/// Longest table or set name the kernel takes (`NFT_NAME_MAXLEN` − 1).
const NAME_MAX: usize = 255;

/// How long one call may take, from the first request to the last `NLMSG_DONE`, retries of
/// interrupted dumps included; checked after every datagram, so a dump that never ends is
/// cut off as surely as one that stops. The kernel's cost grows with the square of the set's
/// size (every datagram walks the set from its start, skipping what was sent): reading a
/// counted set took 0.02 s of kernel time here at 8,192 elements, 0.17 s at 32,768 and 0.55 s
/// at 65,536 (173 datagrams); a whole debug-build read of 65,536 took 0.8 to 1.1 s, up to
/// 2 s with both cores busy.
pub const DUMP_DEADLINE: Duration = Duration::from_secs(5);

/// A dump marked inconsistent (`NLM_F_DUMP_INTR`: the ruleset changed under it) is asked for
/// again, this many times in all.
const DUMP_ATTEMPTS: usize = 3;

/// One receive. The kernel sizes a dump's datagrams after the reader's buffer but at most
/// 32 KiB, so this one is never cut short.
const RECV_BUF: usize = 64 * 1024;

/// Receive buffer asked for: the kernel may build a few datagrams ahead of the reader.
const RCVBUF: usize = 1 << 20;

/// One element of a dumped set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpedElement {
    /// The key's bytes as the kernel holds them (`NFTA_SET_ELEM_KEY` → `NFTA_DATA_VALUE`):
    /// a concatenation is one 4-byte-aligned field after another. Empty for the catch-all
    /// element, which has no key.
    pub key: Vec<u8>,
    /// The element's counter as (packets, bytes), if it has one.
    pub counter: Option<(u64, u64)>,
}

/// The elements of set `set` in table `inet <table>`, read with one dump on a socket of its
/// own (in the calling thread's network namespace), each key once, in the kernel's order. An
/// absent table or set is an empty list: the offload sets exist only while offload is on. A
/// dump the kernel marks interrupted by a ruleset change is read again (3 times in all).
///
/// A key the dump lists twice (it raced a change of the set, see the module's text) is kept
/// once, where it came first, with the larger of its counter readings.
pub fn set_elements(table: &str, set: &str) -> Result<Vec<DumpedElement>, NftError> {
    Ok(dump(table, set, Elements::default, Elements::add)?.list)
}

/// How many distinct keys set `set` of table `inet <table>` holds (0 if it does not exist),
/// by the same dump as [`set_elements`], keeping only the keys. For a set that changes while
/// it is read (a flow set under load) this is an estimate: see the module's text.
pub fn count_elements(table: &str, set: &str) -> Result<usize, NftError> {
    Ok(dump(table, set, Keys::default, Keys::add)?.0.len())
}

/// The elements of a dump, each key once.
#[derive(Debug, Default)]
struct Elements {
    list: Vec<DumpedElement>,
    /// Where each key is in `list`.
    at: HashMap<Vec<u8>, usize>,
}

impl Elements {
    fn add(&mut self, e: ElementRef<'_>) {
        match self.at.get(e.key) {
            Some(&i) => {
                let kept = &mut self.list[i];
                kept.counter = match (kept.counter, e.counter) {
                    (Some((p, b)), Some((q, c))) => Some((p.max(q), b.max(c))),
                    (a, b) => a.or(b),
                };
            }
            None => {
                self.at.insert(e.key.to_vec(), self.list.len());
                self.list.push(DumpedElement {
                    key: e.key.to_vec(),
                    counter: e.counter,
                });
            }
        }
    }
}

/// The distinct keys of a dump.
#[derive(Debug, Default)]
struct Keys(HashSet<Vec<u8>>);

impl Keys {
    fn add(&mut self, e: ElementRef<'_>) {
        if !self.0.contains(e.key) {
            self.0.insert(e.key.to_vec());
        }
    }
}

/// The dump itself: `start` makes a fresh accumulator for every attempt, `each` takes the
/// elements in the order the kernel sends them.
fn dump<T>(
    table: &str,
    set: &str,
    start: impl Fn() -> T,
    each: impl Fn(&mut T, ElementRef<'_>),
) -> Result<T, NftError> {
    check_name("table", table)?;
    check_name("set", set)?;
    let io = |op: &'static str| move |source: io::Error| NftError::Io { op, source };
    let sock = Socket::open(libc::NETLINK_NETFILTER, false, 0).map_err(io("socket"))?;
    // Refinements only: capped errors are short, extended ones may carry the kernel's reason.
    let _ = sock.set_option(SOL_NETLINK, NETLINK_CAP_ACK, 1);
    let _ = sock.set_option(SOL_NETLINK, NETLINK_EXT_ACK, 1);
    // Without CAP_NET_ADMIN this falls back to the plain, capped size; the dump still works
    // (the kernel waits for the reader), only with fewer datagrams built ahead.
    let _ = sock.set_buffer(Buffer::Receive, RCVBUF);
    let port = sock.port_id().map_err(io("getsockname"))?;
    let what = || format!("dumping set {set} of table inet {table}");
    let mut buf = vec![0u8; RECV_BUF];
    let deadline = Instant::now() + DUMP_DEADLINE;
    let late = |elements: usize| {
        NftError::Protocol(format!(
            "{} took longer than {DUMP_DEADLINE:?} (no end of the dump after {elements} \
             elements)",
            what()
        ))
    };
    for attempt in 1..=DUMP_ATTEMPTS {
        let seq = attempt as u32;
        sock.send(&get_set_elements_msg(table, set, seq))
            .map_err(io("sendmsg"))?;
        let mut acc = start();
        let mut reader = DumpReader::new(seq, port);
        loop {
            // Checked before every datagram: a kernel that never stops sending is cut off
            // as surely as one that stops.
            if Instant::now() >= deadline {
                return Err(late(reader.elements));
            }
            let got = match sock.recv(&mut buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !sock.wait_readable(deadline).map_err(io("poll"))? {
                        return Err(late(reader.elements));
                    }
                    continue;
                }
                // The kernel dropped part of the dump for want of buffer: what was read is
                // not the whole set.
                Err(e) => return Err(io("recv")(e)),
            };
            if !got.from_kernel {
                continue;
            }
            if got.truncated {
                return Err(NftError::Protocol(format!(
                    "{}: a datagram longer than {RECV_BUF} bytes was cut short",
                    what()
                )));
            }
            match reader.feed(&buf[..got.len], &mut |e| each(&mut acc, e)) {
                Ok(Status::More) => {}
                Ok(Status::Done) => break,
                Err(DumpFailure::Kernel {
                    errno: libc::ENOENT,
                    ..
                }) => return Ok(start()),
                Err(DumpFailure::Kernel { errno, message }) => {
                    return Err(NftError::Kernel {
                        what: what(),
                        errno,
                        message,
                    });
                }
                Err(DumpFailure::Malformed(why)) => {
                    return Err(NftError::Protocol(format!("{}: {why}", what())));
                }
            }
        }
        if !reader.interrupted {
            return Ok(acc);
        }
    }
    Err(NftError::Protocol(format!(
        "{}: the ruleset changed during each of {DUMP_ATTEMPTS} dumps (NLM_F_DUMP_INTR)",
        what()
    )))
}

/// A name the request can carry unchanged: a NUL would cut it (another set would be read),
/// and the kernel takes at most 255 bytes.
fn check_name(what: &str, name: &str) -> Result<(), NftError> {
    let why = if name.is_empty() {
        "is empty"
    } else if name.contains('\0') {
        "contains a NUL byte"
    } else if name.len() > NAME_MAX {
        "is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(NftError::Io {
        op: "request",
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} name {name:?} {why}"),
        ),
    })
}

/// `NFT_MSG_GETSETELEM` as a dump of set `set` in table `inet <table>`.
fn get_set_elements_msg(table: &str, set: &str, seq: u32) -> Vec<u8> {
    let ty = ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | libc::NFT_MSG_GETSETELEM as u16;
    let mut m = Vec::with_capacity(64 + table.len() + set.len());
    let start = frame::put_header(&mut m, ty, frame::NLM_F_REQUEST | frame::NLM_F_DUMP, seq);
    // nfgenmsg: family, version, resource id (network order).
    m.push(libc::NFPROTO_INET as u8);
    m.push(libc::NFNETLINK_V0 as u8);
    m.extend_from_slice(&0u16.to_be_bytes());
    frame::put_str(&mut m, NFTA_SET_ELEM_LIST_TABLE, table);
    frame::put_str(&mut m, NFTA_SET_ELEM_LIST_SET, set);
    frame::finish(&mut m, start);
    m
}

/// One element as decoded, borrowing the key from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ElementRef<'a> {
    key: &'a [u8],
    counter: Option<(u64, u64)>,
}

/// Whether a dump goes on after a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    More,
    Done,
}

/// Why a dump failed, before it is told as an [`NftError`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum DumpFailure {
    /// NLMSG_ERROR, or NLMSG_DONE carrying an error: the (positive) errno.
    Kernel { errno: i32, message: Option<String> },
    /// The answer could not be followed.
    Malformed(String),
}

/// The decoding of one dump's answers, datagram by datagram: pure.
#[derive(Debug)]
struct DumpReader {
    seq: u32,
    port: u32,
    /// An answer was flagged `NLM_F_DUMP_INTR`.
    interrupted: bool,
    /// Elements decoded so far.
    elements: usize,
}

impl DumpReader {
    fn new(seq: u32, port: u32) -> DumpReader {
        DumpReader {
            seq,
            port,
            interrupted: false,
            elements: 0,
        }
    }

    /// Decodes one datagram and hands every element in it to `each`. Messages that answer
    /// another request (another sequence number or port id) are skipped.
    fn feed(
        &mut self,
        buf: &[u8],
        each: &mut dyn FnMut(ElementRef<'_>),
    ) -> Result<Status, DumpFailure> {
        let newsetelem =
            ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | libc::NFT_MSG_NEWSETELEM as u16;
        for f in frame::messages(buf) {
            let f = f.map_err(|e| DumpFailure::Malformed(e.to_string()))?;
            if f.header.ty == frame::NLMSG_ERROR {
                // An error echoes the request's header: its sequence number is the one to
                // match (the outer one is the same, but the inner one is what it answers).
                let e = ack::parse(buf, &f)
                    .ok_or_else(|| DumpFailure::Malformed("short NLMSG_ERROR".into()))?;
                if e.seq.is_some_and(|s| s != self.seq) {
                    continue;
                }
                if e.errno == 0 {
                    // An acknowledgement; not asked for, and not the end of the dump.
                    continue;
                }
                return Err(DumpFailure::Kernel {
                    errno: e.errno,
                    message: e.message,
                });
            }
            if f.header.seq != self.seq || f.header.pid != self.port {
                continue;
            }
            if f.header.flags & frame::NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            match f.header.ty {
                frame::NLMSG_DONE => {
                    // The payload is the dump's result: 0, or the negative errno of a dump
                    // that failed after it started (the set deleted under it, say).
                    let code = frame::ne_u32(buf, f.body.start).map_or(0, |c| c as i32);
                    if code < 0 {
                        return Err(DumpFailure::Kernel {
                            errno: code.checked_neg().unwrap_or(i32::MAX),
                            message: None,
                        });
                    }
                    return Ok(Status::Done);
                }
                frame::NLMSG_OVERRUN => {
                    return Err(DumpFailure::Malformed("NLMSG_OVERRUN".into()));
                }
                ty if ty == newsetelem => {
                    self.elements += elements_of(&buf[f.body.clone()], each)?;
                }
                _ => {}
            }
        }
        Ok(Status::More)
    }
}

/// Calls `f` with every attribute of `v` in turn; the first malformed one ends the walk with
/// an error naming `what`. (No list is built: a dump of 65,536 elements walks some 10 nests
/// per element.)
fn each_attr(
    v: &[u8],
    what: &str,
    mut f: impl FnMut(frame::Attr) -> Result<(), DumpFailure>,
) -> Result<(), DumpFailure> {
    for a in frame::attrs_of(v) {
        f(a.map_err(|e| DumpFailure::Malformed(format!("{what}: {e}")))?)?;
    }
    Ok(())
}

/// The elements of one NEWSETELEM message body (nfgenmsg, then attributes); how many.
fn elements_of(body: &[u8], each: &mut dyn FnMut(ElementRef<'_>)) -> Result<usize, DumpFailure> {
    let Some(list) = body.get(4..) else {
        return Err(DumpFailure::Malformed("NEWSETELEM without nfgenmsg".into()));
    };
    let mut n = 0;
    // The kernel starts the nests without NLA_F_NESTED: the type alone says what they are.
    each_attr(list, "NEWSETELEM", |a| {
        if a.ty != NFTA_SET_ELEM_LIST_ELEMENTS {
            return Ok(());
        }
        let elements = &list[a.value];
        each_attr(elements, "element list", |e| {
            if e.ty == NFTA_LIST_ELEM {
                each(element(&elements[e.value])?);
                n += 1;
            }
            Ok(())
        })
    })?;
    Ok(n)
}

/// One NFTA_LIST_ELEM's value: its key and its counter.
fn element(v: &[u8]) -> Result<ElementRef<'_>, DumpFailure> {
    let mut out = ElementRef {
        key: &[],
        counter: None,
    };
    each_attr(v, "element", |a| {
        let value = &v[a.value];
        match a.ty {
            NFTA_SET_ELEM_KEY => each_attr(value, "element key", |d| {
                if d.ty == NFTA_DATA_VALUE {
                    out.key = &value[d.value];
                }
                Ok(())
            }),
            NFTA_SET_ELEM_EXPR if out.counter.is_none() => {
                out.counter = counter_of(value)?;
                Ok(())
            }
            NFTA_SET_ELEM_EXPRESSIONS => each_attr(value, "element expressions", |x| {
                if x.ty == NFTA_LIST_ELEM && out.counter.is_none() {
                    out.counter = counter_of(&value[x.value])?;
                }
                Ok(())
            }),
            _ => Ok(()),
        }
    })?;
    Ok(out)
}

/// The (packets, bytes) of one expression if it is a counter; `None` for another expression.
fn counter_of(expr: &[u8]) -> Result<Option<(u64, u64)>, DumpFailure> {
    let mut name: Option<&[u8]> = None;
    let mut data = None;
    each_attr(expr, "expression", |a| {
        match a.ty {
            NFTA_EXPR_NAME => name = Some(&expr[a.value]),
            NFTA_EXPR_DATA => data = Some(&expr[a.value]),
            _ => {}
        }
        Ok(())
    })?;
    // The name is NUL-terminated.
    if name.map(|n| n.split(|&b| b == 0).next().unwrap_or(n)) != Some(b"counter") {
        return Ok(None);
    }
    let data = data.ok_or_else(|| DumpFailure::Malformed("counter without data".into()))?;
    let (mut packets, mut bytes) = (None, None);
    each_attr(data, "counter", |a| {
        let v = &data[a.value];
        let n = || {
            <[u8; 8]>::try_from(v)
                .map(u64::from_be_bytes)
                .map_err(|_| DumpFailure::Malformed(format!("counter value of {} bytes", v.len())))
        };
        match a.ty {
            NFTA_COUNTER_PACKETS => packets = Some(n()?),
            NFTA_COUNTER_BYTES => bytes = Some(n()?),
            // NFTA_COUNTER_PAD aligns the 64-bit values.
            _ => {}
        }
        Ok(())
    })?;
    match (packets, bytes) {
        (Some(p), Some(b)) => Ok(Some((p, b))),
        _ => Err(DumpFailure::Malformed(
            "counter without its packets or bytes".into(),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Deltas

/// What the counters of each set's elements read last, so that each reading tells what grew
/// since the one before. Pure.
#[derive(Clone, Debug, Default)]
pub struct CounterDeltas {
    /// Per set name, per key: (packets, bytes) at the last reading.
    last: HashMap<String, HashMap<Vec<u8>, (u64, u64)>>,
}

impl CounterDeltas {
    pub fn new() -> CounterDeltas {
        CounterDeltas::default()
    }

    /// Takes a fresh dump of set `set` and returns, per key, (key, packets, bytes) that
    /// counted since the last dump of that set, in the order of the dump; keys that did not
    /// grow are left out. A key not seen before counts with its whole counter; so does a key
    /// whose packets or bytes went down, which means the element was deleted and created
    /// again (a flow that ended and came back) and its counter started from zero. Keys of
    /// `set` absent from this dump are forgotten. Elements without a counter are not
    /// tracked. A key listed twice (a dump that raced a change of the set) counts once, with
    /// the larger reading.
    ///
    /// What readings cannot tell apart: a key absent from one dump only because the dump
    /// raced a change is forgotten all the same, and its whole counter counts again when it
    /// is seen next (counted twice); an element re-created between two readings whose new
    /// counter has already passed the old one looks like growth and counts the difference
    /// only (its first packets are missed). Reading often keeps both small.
    pub fn observe(&mut self, set: &str, elems: &[DumpedElement]) -> Vec<(Vec<u8>, u64, u64)> {
        let old = self.last.remove(set).unwrap_or_default();
        let mut now: HashMap<Vec<u8>, (u64, u64)> = HashMap::with_capacity(elems.len());
        let mut order: Vec<&[u8]> = Vec::new();
        for e in elems {
            let Some((p, b)) = e.counter else { continue };
            match now.get_mut(e.key.as_slice()) {
                Some(seen) => *seen = (seen.0.max(p), seen.1.max(b)),
                None => {
                    now.insert(e.key.clone(), (p, b));
                    order.push(&e.key);
                }
            }
        }
        let mut out = Vec::new();
        for key in order {
            let (p, b) = now[key];
            let (dp, db) = match old.get(key) {
                Some(&(lp, lb)) if p >= lp && b >= lb => (p - lp, b - lb),
                // New, or re-created: everything it holds counted since the last reading.
                _ => (p, b),
            };
            if dp != 0 || db != 0 {
                out.push((key.to_vec(), dp, db));
            }
        }
        if !now.is_empty() {
            self.last.insert(set.to_string(), now);
        }
        out
    }

    /// How many keys of `set` are remembered.
    pub fn tracked(&self, set: &str) -> usize {
        self.last.get(set).map_or(0, HashMap::len)
    }
}

// ---------------------------------------------------------------------------------------------
// Keys of the count_* sets

/// Length of a `count_in4` / `count_out4` key: ifindex, IPv4 address, protocol and port, each
/// in a 4-byte field.
pub const COUNT_KEY_LEN_V4: usize = 16;
/// Length of a `count_in6` / `count_out6` key.
pub const COUNT_KEY_LEN_V6: usize = 28;

/// What a key of a `count_*` set says: (interface index, address, IP protocol, port). The
/// layout is `meta iif|oif` (u32, host byte order) . address (network order) . `meta
/// l4proto` (1 byte, 3 zero bytes) . `th dport|sport` (network order, 2 zero bytes). `None`
/// for a key of another length or with non-zero padding (not a key of that layout).
pub fn decode_count_key(set_is_v6: bool, key: &[u8]) -> Option<(u32, IpAddr, u8, u16)> {
    let (want, addr_len) = if set_is_v6 {
        (COUNT_KEY_LEN_V6, 16)
    } else {
        (COUNT_KEY_LEN_V4, 4)
    };
    if key.len() != want {
        return None;
    }
    let ifindex = frame::ne_u32(key, 0)?;
    let addr_end = 4 + addr_len;
    let addr: IpAddr = if set_is_v6 {
        Ipv6Addr::from(<[u8; 16]>::try_from(&key[4..addr_end]).ok()?).into()
    } else {
        Ipv4Addr::from(<[u8; 4]>::try_from(&key[4..addr_end]).ok()?).into()
    };
    let proto = &key[addr_end..addr_end + 4];
    let port = &key[addr_end + 4..addr_end + 8];
    if proto[1..] != [0, 0, 0] || port[2..] != [0, 0] {
        return None;
    }
    Some((
        ifindex,
        addr,
        proto[0],
        u16::from_be_bytes([port[0], port[1]]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::frame::{end_nest, finish, put_attr, put_header, put_str, start_attr};

    const SEQ: u32 = 7;
    const PORT: u32 = 4242;

    fn newsetelem_ty() -> u16 {
        ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | libc::NFT_MSG_NEWSETELEM as u16
    }

    /// An expression nest's content: name and data, the counter's values as the kernel puts
    /// them (a pad attribute before each 64-bit value when it is needed for alignment).
    fn counter_expr(m: &mut Vec<u8>, packets: u64, bytes: u64) {
        put_str(m, NFTA_EXPR_NAME, "counter");
        let d = start_attr(m, NFTA_EXPR_DATA | frame::NLA_F_NESTED);
        put_attr(m, 3, &[]); // NFTA_COUNTER_PAD
        put_attr(m, NFTA_COUNTER_BYTES, &bytes.to_be_bytes());
        put_attr(m, NFTA_COUNTER_PACKETS, &packets.to_be_bytes());
        end_nest(m, d);
    }

    /// How an element's counter is carried.
    #[derive(Clone, Copy)]
    enum Ctr {
        None,
        /// NFTA_SET_ELEM_EXPR.
        Expr(u64, u64),
        /// NFTA_SET_ELEM_EXPRESSIONS: a `limit` first, then the counter.
        List(u64, u64),
    }

    fn put_element(m: &mut Vec<u8>, key: &[u8], ctr: Ctr) {
        let e = start_attr(m, NFTA_LIST_ELEM);
        let k = start_attr(m, NFTA_SET_ELEM_KEY);
        put_attr(m, NFTA_DATA_VALUE, key);
        end_nest(m, k);
        put_attr(m, 3, &0u32.to_be_bytes()); // NFTA_SET_ELEM_FLAGS
        put_attr(m, 4, &60_000u64.to_be_bytes()); // NFTA_SET_ELEM_TIMEOUT
        match ctr {
            Ctr::None => {}
            Ctr::Expr(p, b) => {
                let x = start_attr(m, NFTA_SET_ELEM_EXPR);
                counter_expr(m, p, b);
                end_nest(m, x);
            }
            Ctr::List(p, b) => {
                let l = start_attr(m, NFTA_SET_ELEM_EXPRESSIONS);
                let x = start_attr(m, NFTA_LIST_ELEM);
                put_str(m, NFTA_EXPR_NAME, "limit");
                let d = start_attr(m, NFTA_EXPR_DATA);
                put_attr(m, 1, &10u64.to_be_bytes());
                end_nest(m, d);
                end_nest(m, x);
                let x = start_attr(m, NFTA_LIST_ELEM);
                counter_expr(m, p, b);
                end_nest(m, x);
                end_nest(m, l);
            }
        }
        end_nest(m, e);
    }

    /// A NEWSETELEM message of the dump with `elems`.
    fn newsetelem(m: &mut Vec<u8>, flags: u16, seq: u32, elems: &[(&[u8], Ctr)]) {
        let s = put_header(m, newsetelem_ty(), frame::NLM_F_MULTI | flags, seq);
        m[s + 12..s + 16].copy_from_slice(&PORT.to_ne_bytes());
        m.extend_from_slice(&[libc::NFPROTO_INET as u8, 0, 0, 1]);
        put_str(m, NFTA_SET_ELEM_LIST_TABLE, "netnat");
        put_str(m, NFTA_SET_ELEM_LIST_SET, "count_in4");
        let l = start_attr(m, NFTA_SET_ELEM_LIST_ELEMENTS);
        for (k, c) in elems {
            put_element(m, k, *c);
        }
        end_nest(m, l);
        finish(m, s);
    }

    fn done(m: &mut Vec<u8>, seq: u32, code: i32) {
        let s = put_header(m, frame::NLMSG_DONE, frame::NLM_F_MULTI, seq);
        m[s + 12..s + 16].copy_from_slice(&PORT.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        finish(m, s);
    }

    fn error(m: &mut Vec<u8>, seq: u32, code: i32, text: Option<&str>) {
        let flags = frame::NLM_F_CAPPED
            | if text.is_some() {
                frame::NLM_F_ACK_TLVS
            } else {
                0
            };
        let s = put_header(m, frame::NLMSG_ERROR, flags, seq);
        m.extend_from_slice(&code.to_ne_bytes());
        let inner = put_header(m, 0x0a0d, frame::NLM_F_REQUEST | frame::NLM_F_DUMP, seq);
        finish(m, inner);
        if let Some(t) = text {
            put_str(m, ack::NLMSGERR_ATTR_MSG, t);
        }
        finish(m, s);
    }

    /// Feeds the datagrams in order; the elements and the outcome of the last one fed.
    fn read(datagrams: &[Vec<u8>]) -> (Vec<DumpedElement>, Result<Status, DumpFailure>, bool) {
        let mut r = DumpReader::new(SEQ, PORT);
        let mut out = Vec::new();
        let mut last = Ok(Status::More);
        for d in datagrams {
            last = r.feed(d, &mut |e| {
                out.push(DumpedElement {
                    key: e.key.to_vec(),
                    counter: e.counter,
                })
            });
            if last != Ok(Status::More) {
                break;
            }
        }
        assert_eq!(r.elements, out.len());
        (out, last, r.interrupted)
    }

    fn el(key: &[u8], counter: Option<(u64, u64)>) -> DumpedElement {
        DumpedElement {
            key: key.to_vec(),
            counter,
        }
    }

    #[test]
    fn a_multi_part_dump_is_read_to_its_end() {
        let mut a = Vec::new();
        newsetelem(
            &mut a,
            0,
            SEQ,
            &[
                (&[1; 16], Ctr::Expr(3, 300)),
                (&[2; 16], Ctr::List(1, 1 << 40)),
            ],
        );
        let mut b = Vec::new();
        newsetelem(&mut b, 0, SEQ, &[(&[3; 4], Ctr::None)]);
        // The last part: an empty element list, then the end, in one datagram.
        newsetelem(&mut b, 0, SEQ, &[]);
        done(&mut b, SEQ, 0);
        let (got, status, intr) = read(&[a.clone(), b.clone()]);
        assert_eq!(status, Ok(Status::Done));
        assert!(!intr);
        assert_eq!(
            got,
            vec![
                el(&[1; 16], Some((3, 300))),
                el(&[2; 16], Some((1, 1 << 40))),
                el(&[3; 4], None),
            ]
        );
        // Without its end the dump is not over.
        let (got, status, _) = read(&[a]);
        assert_eq!((got.len(), status), (2, Ok(Status::More)));
    }

    #[test]
    fn answers_to_another_request_are_skipped() {
        let mut d = Vec::new();
        newsetelem(&mut d, 0, SEQ + 1, &[(&[9; 16], Ctr::Expr(1, 1))]);
        done(&mut d, SEQ + 1, 0);
        error(&mut d, SEQ + 1, -libc::EINVAL, None);
        newsetelem(&mut d, 0, SEQ, &[(&[1; 16], Ctr::Expr(1, 2))]);
        let (got, status, _) = read(&[d]);
        assert_eq!(got, vec![el(&[1; 16], Some((1, 2)))]);
        assert_eq!(status, Ok(Status::More));
    }

    #[test]
    fn errors_end_the_dump_with_their_errno() {
        let mut d = Vec::new();
        error(&mut d, SEQ, -libc::ENOENT, None);
        assert_eq!(
            read(&[d]).1,
            Err(DumpFailure::Kernel {
                errno: libc::ENOENT,
                message: None
            })
        );
        let mut d = Vec::new();
        error(
            &mut d,
            SEQ,
            -libc::ERANGE,
            Some("Attribute failed policy validation"),
        );
        assert_eq!(
            read(&[d]).1,
            Err(DumpFailure::Kernel {
                errno: libc::ERANGE,
                message: Some("Attribute failed policy validation".into())
            })
        );
        // A dump that failed after it started: NLMSG_DONE with a negative errno.
        let mut d = Vec::new();
        newsetelem(&mut d, 0, SEQ, &[(&[1; 16], Ctr::Expr(1, 2))]);
        done(&mut d, SEQ, -libc::ENOENT);
        let (got, status, _) = read(&[d]);
        assert_eq!(got.len(), 1);
        assert_eq!(
            status,
            Err(DumpFailure::Kernel {
                errno: libc::ENOENT,
                message: None
            })
        );
        // An acknowledgement is not an end.
        let mut d = Vec::new();
        error(&mut d, SEQ, 0, None);
        assert_eq!(read(&[d]).1, Ok(Status::More));
    }

    #[test]
    fn an_interrupted_dump_says_so() {
        let mut d = Vec::new();
        newsetelem(
            &mut d,
            frame::NLM_F_DUMP_INTR,
            SEQ,
            &[(&[1; 16], Ctr::None)],
        );
        done(&mut d, SEQ, 0);
        let (_, status, intr) = read(&[d]);
        assert_eq!(status, Ok(Status::Done));
        assert!(intr);
    }

    #[test]
    fn broken_answers_are_refused_not_guessed() {
        let mut good = Vec::new();
        newsetelem(&mut good, 0, SEQ, &[(&[1; 16], Ctr::Expr(5, 6))]);
        // A counter value of 4 bytes instead of 8: find the packets attribute and cut it.
        let needle = [12u8, 0, NFTA_COUNTER_PACKETS as u8, 0];
        let at = good
            .windows(4)
            .position(|w| w == needle)
            .expect("packets attribute");
        let mut bad = good.clone();
        bad[at] = 8;
        match read(&[bad]).1 {
            Err(DumpFailure::Malformed(why)) => assert!(why.starts_with("counter"), "{why}"),
            other => panic!("{other:?}"),
        }
        // An 8-byte attribute of 4 bytes' value, followed by a well-formed one.
        let mut m = Vec::new();
        put_str(&mut m, NFTA_EXPR_NAME, "counter");
        let d = start_attr(&mut m, NFTA_EXPR_DATA);
        put_attr(&mut m, NFTA_COUNTER_BYTES, &9u64.to_be_bytes());
        put_attr(&mut m, NFTA_COUNTER_PACKETS, &9u32.to_be_bytes());
        end_nest(&mut m, d);
        assert_eq!(
            counter_of(&m),
            Err(DumpFailure::Malformed("counter value of 4 bytes".into()))
        );
        // A counter without its packets.
        let mut m = Vec::new();
        put_str(&mut m, NFTA_EXPR_NAME, "counter");
        let d = start_attr(&mut m, NFTA_EXPR_DATA);
        put_attr(&mut m, NFTA_COUNTER_BYTES, &9u64.to_be_bytes());
        end_nest(&mut m, d);
        assert!(matches!(counter_of(&m), Err(DumpFailure::Malformed(_))));
        // An element nest claiming more than its list holds.
        let mut bad = good.clone();
        let list = frame::attrs(&bad, 16 + 4, bad.len())
            .map(Result::unwrap)
            .find(|a| a.ty == NFTA_SET_ELEM_LIST_ELEMENTS)
            .expect("element list");
        let first = list.value.start;
        assert_eq!(frame::ne_u16(&bad, first + 2), Some(NFTA_LIST_ELEM));
        bad[first..first + 2].copy_from_slice(&0x7fffu16.to_ne_bytes());
        match read(&[bad]).1 {
            Err(DumpFailure::Malformed(why)) => assert!(why.contains("element list"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A message header that lies about its length.
        let mut bad = good;
        bad[0] = 0xff;
        bad[1] = 0xff;
        assert!(matches!(read(&[bad]).1, Err(DumpFailure::Malformed(_))));
    }

    #[test]
    fn the_request_names_table_and_set_and_asks_for_a_dump() {
        let m = get_set_elements_msg("netnat", "count_in4", 3);
        let f = frame::messages(&m).next().unwrap().unwrap();
        assert_eq!(f.header.len as usize, m.len());
        assert_eq!(f.header.ty, 0x0a0d, "nftables subsystem, GETSETELEM");
        assert_eq!(f.header.flags, frame::NLM_F_REQUEST | frame::NLM_F_DUMP);
        assert_eq!(f.header.seq, 3);
        assert_eq!(m[f.body.start], libc::NFPROTO_INET as u8);
        let a: Vec<(u16, String)> = frame::attrs(&m, f.body.start + 4, f.body.end)
            .map(|a| {
                let a = a.unwrap();
                (a.ty, frame::c_string(&m[a.value]))
            })
            .collect();
        assert_eq!(
            a,
            vec![
                (NFTA_SET_ELEM_LIST_TABLE, "netnat".into()),
                (NFTA_SET_ELEM_LIST_SET, "count_in4".into())
            ]
        );
    }

    #[test]
    fn names_that_would_read_another_set_are_refused() {
        for (name, why) in [
            ("", "is empty"),
            ("count\0in4", "contains a NUL byte"),
            (&"x".repeat(256), "is longer than 255 bytes"),
        ] {
            let e = check_name("set", name).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
            assert!(e.to_string().contains("set name"), "{e}");
        }
        assert!(check_name("set", &"x".repeat(255)).is_ok());
        // Refused before any socket is opened: no root needed to see it.
        let e = set_elements("netnat", "a\0b").unwrap_err();
        assert!(e.to_string().contains("contains a NUL byte"), "{e}");
        let e = count_elements("", "count_in4").unwrap_err();
        assert!(e.to_string().contains("table name \"\" is empty"), "{e}");
    }

    #[test]
    fn a_key_listed_twice_is_kept_once_with_its_larger_reading() {
        let r = |key: &'static [u8], counter| ElementRef { key, counter };
        let mut e = Elements::default();
        let mut k = Keys::default();
        for x in [
            r(&[1; 16], Some((3, 300))),
            r(&[2; 16], Some((1, 10))),
            r(&[1; 16], Some((4, 350))),
            r(&[2; 16], Some((1, 10))),
            r(&[3; 4], None),
            r(&[3; 4], None),
        ] {
            e.add(x);
            k.add(x);
        }
        assert_eq!(
            e.list,
            vec![
                el(&[1; 16], Some((4, 350))),
                el(&[2; 16], Some((1, 10))),
                el(&[3; 4], None)
            ]
        );
        assert_eq!(k.0.len(), 3);
    }

    // ---- deltas

    #[test]
    fn first_reading_counts_everything_then_only_growth() {
        let mut d = CounterDeltas::new();
        let a = [1u8; 16];
        let b = [2u8; 16];
        let got = d.observe(
            "count_in4",
            &[el(&a, Some((3, 300))), el(&b, Some((1, 60)))],
        );
        assert_eq!(got, vec![(a.to_vec(), 3, 300), (b.to_vec(), 1, 60)]);
        let got = d.observe(
            "count_in4",
            &[el(&a, Some((5, 420))), el(&b, Some((1, 60)))],
        );
        assert_eq!(got, vec![(a.to_vec(), 2, 120)], "b did not grow: left out");
        assert!(
            d.observe(
                "count_in4",
                &[el(&a, Some((5, 420))), el(&b, Some((1, 60)))]
            )
            .is_empty()
        );
        assert_eq!(d.tracked("count_in4"), 2);
    }

    #[test]
    fn a_counter_that_went_down_is_a_new_element() {
        let mut d = CounterDeltas::new();
        let a = [1u8; 16];
        d.observe("count_in4", &[el(&a, Some((10, 1000)))]);
        // Deleted and created again: it holds what came since, from zero.
        assert_eq!(
            d.observe("count_in4", &[el(&a, Some((2, 5000)))]),
            vec![(a.to_vec(), 2, 5000)]
        );
        // Bytes down, packets not: re-created all the same.
        assert_eq!(
            d.observe("count_in4", &[el(&a, Some((3, 100)))]),
            vec![(a.to_vec(), 3, 100)]
        );
        assert_eq!(
            d.observe("count_in4", &[el(&a, Some((4, 160)))]),
            vec![(a.to_vec(), 1, 60)]
        );
    }

    #[test]
    fn absent_keys_are_forgotten_and_count_whole_when_back() {
        let mut d = CounterDeltas::new();
        let a = [1u8; 16];
        let b = [2u8; 16];
        d.observe(
            "count_in4",
            &[el(&a, Some((3, 300))), el(&b, Some((1, 60)))],
        );
        assert!(d.observe("count_in4", &[el(&b, Some((1, 60)))]).is_empty());
        assert_eq!(d.tracked("count_in4"), 1, "a forgotten");
        assert_eq!(
            d.observe(
                "count_in4",
                &[el(&a, Some((3, 300))), el(&b, Some((1, 60)))]
            ),
            vec![(a.to_vec(), 3, 300)]
        );
        // An empty dump (the set gone) forgets the set.
        assert!(d.observe("count_in4", &[]).is_empty());
        assert_eq!(d.tracked("count_in4"), 0);
        assert_eq!(
            d.observe("count_in4", &[el(&b, Some((1, 60)))]),
            vec![(b.to_vec(), 1, 60)]
        );
    }

    #[test]
    fn sets_are_kept_apart_and_uncounted_elements_ignored() {
        let mut d = CounterDeltas::new();
        let k = [7u8; 16];
        d.observe("count_in4", &[el(&k, Some((1, 10)))]);
        // The same key bytes in another set: a key of its own.
        assert_eq!(
            d.observe("count_out4", &[el(&k, Some((4, 40)))]),
            vec![(k.to_vec(), 4, 40)]
        );
        // Observing one set forgets nothing of another.
        assert_eq!(
            d.observe("count_in4", &[el(&k, Some((2, 20)))]),
            vec![(k.to_vec(), 1, 10)]
        );
        assert!(d.observe("flows_in4", &[el(&k, None)]).is_empty());
        assert_eq!(d.tracked("flows_in4"), 0);
        assert_eq!(d.tracked("count_out4"), 1);
    }

    #[test]
    fn a_key_dumped_twice_counts_once_with_the_larger_reading() {
        let mut d = CounterDeltas::new();
        let a = [1u8; 16];
        let got = d.observe(
            "count_in4",
            &[el(&a, Some((3, 300))), el(&a, Some((4, 350)))],
        );
        assert_eq!(got, vec![(a.to_vec(), 4, 350)]);
        let got = d.observe(
            "count_in4",
            &[el(&a, Some((4, 350))), el(&a, Some((5, 400)))],
        );
        assert_eq!(got, vec![(a.to_vec(), 1, 50)]);
    }

    // ---- keys

    fn v4_key(ifindex: u32, addr: [u8; 4], proto: u8, port: u16) -> Vec<u8> {
        let mut k = ifindex.to_ne_bytes().to_vec();
        k.extend_from_slice(&addr);
        k.extend_from_slice(&[proto, 0, 0, 0]);
        k.extend_from_slice(&port.to_be_bytes());
        k.extend_from_slice(&[0, 0]);
        k
    }

    #[test]
    fn count_keys_decode_in_both_families() {
        let k = v4_key(3, [192, 0, 2, 7], 6, 443);
        assert_eq!(k.len(), COUNT_KEY_LEN_V4);
        assert_eq!(
            decode_count_key(false, &k),
            Some((3, IpAddr::from([192, 0, 2, 7]), 6, 443))
        );
        let addr: Ipv6Addr = "2001:db8::1:2".parse().unwrap();
        let mut k6 = 70_000u32.to_ne_bytes().to_vec();
        k6.extend_from_slice(&addr.octets());
        k6.extend_from_slice(&[17, 0, 0, 0]);
        k6.extend_from_slice(&[0xff, 0xfe, 0, 0]);
        assert_eq!(k6.len(), COUNT_KEY_LEN_V6);
        assert_eq!(
            decode_count_key(true, &k6),
            Some((70_000, IpAddr::V6(addr), 17, 0xfffe))
        );
        // The family decides the length expected.
        assert_eq!(decode_count_key(true, &k), None);
        assert_eq!(decode_count_key(false, &k6), None);
        assert_eq!(decode_count_key(false, &k[..15]), None);
        assert_eq!(decode_count_key(false, &[]), None);
    }

    #[test]
    fn count_keys_with_padding_set_are_not_of_the_layout() {
        let k = v4_key(1, [127, 0, 0, 1], 17, 53);
        for at in [9, 10, 11, 14, 15] {
            let mut bad = k.clone();
            bad[at] = 1;
            assert_eq!(decode_count_key(false, &bad), None, "padding byte {at}");
        }
        // The port's own bytes are network order: 53 is [0, 53].
        assert_eq!(&k[12..14], &[0, 53]);
    }
}
