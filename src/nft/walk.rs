//! Test helpers shared by the nft unit tests: a batch walked back into messages, attributes
//! and expressions, and a sample policy.

use nftnl::FinalizedBatch;

use super::policy::Policy;
use super::rules::Verdict;
use crate::config::{AppAddr, Flags, Protocol, Service};
use crate::netlink::frame;

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    frame::ne_u16(b, off)
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    frame::ne_u32(b, off)
}

// nf_tables netlink attribute numbers (linux/netfilter/nf_tables.h).
pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(super) const NFTA_TABLE_NAME: u16 = 1;
pub(super) const NFTA_TABLE_FLAGS: u16 = 2;
pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
pub(super) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_EXPR_NAME: u16 = 1;
pub(super) const NFTA_EXPR_DATA: u16 = 2;
pub(super) const NFTA_CMP_DATA: u16 = 3;
pub(super) const NFTA_DATA_VALUE: u16 = 1;

/// (type without flag bits, payload) of each attribute in `b`.
pub(super) fn attrs(b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 4 <= b.len() {
        let len = u16_at(b, off).unwrap() as usize;
        let ty = u16_at(b, off + 2).unwrap() & 0x3fff;
        assert!(len >= 4 && off + len <= b.len(), "malformed attribute");
        out.push((ty, &b[off + 4..off + len]));
        off += len.next_multiple_of(4);
    }
    out
}

pub(super) fn attr<'a>(list: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    list.iter().find(|(t, _)| *t == ty).map(|(_, p)| *p)
}

pub(super) fn cstr(b: &[u8]) -> &str {
    std::str::from_utf8(b.split(|&c| c == 0).next().unwrap()).unwrap()
}

/// Every (nf_tables message type, attributes after nfgenmsg) of a batch, batch
/// begin/end left out.
pub(super) fn messages(batch: &FinalizedBatch) -> Vec<(u16, u16, Vec<u8>)> {
    let bytes: Vec<u8> = batch.iter().flatten().copied().collect();
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= bytes.len() {
        let len = u32_at(&bytes, off).unwrap() as usize;
        let ty = u16_at(&bytes, off + 4).unwrap();
        let flags = u16_at(&bytes, off + 6).unwrap();
        if ty >> 8 == NFNL_SUBSYS_NFTABLES {
            out.push((ty & 0xff, flags, bytes[off + 20..off + len].to_vec()));
        }
        off += len.next_multiple_of(4);
    }
    out
}

/// (name, data attributes) of each expression of a NEWRULE message.
pub(super) fn expressions(rule_attrs: &[u8]) -> Vec<(String, Vec<u8>)> {
    let top = attrs(rule_attrs);
    let list = attr(&top, NFTA_RULE_EXPRESSIONS).expect("expressions");
    attrs(list)
        .into_iter()
        .filter(|(t, _)| *t == NFTA_LIST_ELEM)
        .map(|(_, e)| {
            let e = attrs(e);
            let name = cstr(attr(&e, NFTA_EXPR_NAME).unwrap()).to_string();
            (name, attr(&e, NFTA_EXPR_DATA).unwrap_or(&[]).to_vec())
        })
        .collect()
}

pub(super) fn sample() -> Policy {
    Policy::new(
        &[Service::single(
            "ppp0",
            AppAddr::Interface,
            80,
            Protocol::Tcp,
            "192.168.77.10".parse().unwrap(),
            8080,
            Flags(0),
        )],
        4747,
    )
}

pub(super) fn rules(batch: &FinalizedBatch) -> Vec<Vec<(String, Vec<u8>)>> {
    messages(batch)
        .into_iter()
        .filter(|(t, _, _)| *t == libc::NFT_MSG_NEWRULE as u16)
        .map(|(_, _, a)| expressions(&a))
        .collect()
}

/// Rules whose last expression is a queue verdict (either form).
pub(super) fn queue_rules(batch: &FinalizedBatch) -> Vec<Vec<(String, Vec<u8>)>> {
    rules(batch)
        .into_iter()
        .filter(|r| matches!(r.last(), Some((n, _)) if n == "queue" || n == "target"))
        .collect()
}

pub(super) fn queue_rule_count(p: &Policy) -> usize {
    p.chains()
        .iter()
        .chain(p.guard.chains().iter())
        .flat_map(|c| &c.rules)
        .filter(|r| r.verdict == Verdict::Queue)
        .count()
}

pub(super) fn u32_attr(a: &[(u16, &[u8])], ty: u16) -> Option<u32> {
    attr(a, ty).map(|v| u32::from_be_bytes(v.try_into().unwrap()))
}

pub(super) fn cmp_value(expr: &(String, Vec<u8>)) -> Vec<u8> {
    assert_eq!(expr.0, "cmp");
    let a = attrs(&expr.1);
    let d = attrs(attr(&a, NFTA_CMP_DATA).unwrap());
    attr(&d, NFTA_DATA_VALUE).unwrap().to_vec()
}

/// Zeroes the padding after each attribute in `b`, nested ones included (libmnl leaves
/// whatever the buffer held there).
pub(super) fn zero_padding(b: &mut [u8]) {
    let mut off = 0;
    while off + 4 <= b.len() {
        let len = u16_at(b, off).unwrap() as usize;
        let ty = u16_at(b, off + 2).unwrap();
        assert!(len >= 4 && off + len <= b.len(), "malformed attribute");
        if ty & 0x8000 != 0 {
            zero_padding(&mut b[off + 4..off + len]);
        }
        let end = (off + len.next_multiple_of(4)).min(b.len());
        b[off + len..end].fill(0);
        off += len.next_multiple_of(4);
    }
}

/// Every message of a batch, whole (header included), padding zeroed.
pub(super) fn raw_messages(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= bytes.len() {
        let len = u32_at(bytes, off).unwrap() as usize;
        let mut m = bytes[off..off + len].to_vec();
        zero_padding(&mut m[20..]);
        out.push(m);
        off += len.next_multiple_of(4);
    }
    out
}
