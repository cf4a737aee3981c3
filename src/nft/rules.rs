//! The vocabulary of netnat's rules, as plain data: matches, verdicts, rules, chains and the
//! queue they send to.
//!
//! Every [`Match`] item corresponds to one group of nftables expressions (a load and a compare,
//! or the loads of a concatenated key and a set lookup); the order of the items is the order of
//! the expressions in the rule. Pure; uses `family` and `sets` (which set a lookup names).

use std::collections::HashSet;
use std::net::IpAddr;

use super::family::Family;
use super::sets::SetKind;

/// One match of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Match {
    /// `iifname "X"`: by name, because a PPP interface gets a new ifindex on every reconnect.
    IifName(String),
    /// `oifname "X"`.
    OifName(String),
    /// `meta nfproto ipv4|ipv6`: guards every network-header load in an `inet` table.
    NfProto(Family),
    /// `ip daddr A` / `ip6 daddr A` (family follows the address).
    Daddr(IpAddr),
    /// `ip saddr A` / `ip6 saddr A`.
    Saddr(IpAddr),
    /// `fib daddr . iif type local`: the destination is an address of the incoming interface,
    /// which is what `*` (the interface's natural address) means, across address changes.
    FibDaddrIifLocal,
    /// `meta l4proto N`.
    L4Proto(u8),
    /// Transport destination port (`th dport`), host order here.
    Dport(u16),
    /// Transport source port (`th sport`), host order here.
    Sport(u16),
    /// ICMP/ICMPv6 type: first byte of the transport header (the flavour comes from the
    /// preceding `L4Proto`).
    IcmpType(u8),
    /// `k1 . k2 . ... @set`: the set's key loaded into consecutive registers, looked up.
    Lookup(SetKind),
    /// A reply set (`out4`/`out6`) looked up with the packet *quoted* in an ICMP error: outgoing
    /// interface, quoted destination address, protocol and destination port, which for an
    /// error about a mapped flow are the actual endpoint. Assumes a quoted IPv4 header without
    /// options and a quoted IPv6 header followed directly by TCP/UDP; [`Match::QuotedByteNot`]
    /// rules catch the other quotes.
    LookupQuoted(SetKind),
    /// Byte `offset` of the transport header (of an ICMP error: its quote) differs from `value`.
    QuotedByteNot { offset: u8, value: u8 },
    /// `ct state new`: only there for its side effect (see [`super::Policy::conntrack`]).
    CtStateNew,
    /// `ct direction original|reply`.
    CtDirection(CtDirection),
    /// `ct label N`: the connection carries label bit N.
    CtLabel(u8),
    /// `meta mark & M == M`: every bit of M is set.
    MarkHas(u32),
    /// `meta mark & M != M`: some bit of M is clear.
    MarkLacks(u32),
    /// `ct state invalid`: conntrack knows no connection the packet belongs or relates to.
    CtStateInvalid,
}

/// Direction of a packet within its connection, as conntrack sees it: `Original` is the
/// direction of the packet that created the connection (for netnat's: client → server).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtDirection {
    Original,
    Reply,
}

impl CtDirection {
    /// `IP_CT_DIR_ORIGINAL` / `IP_CT_DIR_REPLY`, the byte `ct direction` loads.
    pub fn value(self) -> u8 {
        match self {
            CtDirection::Original => 0,
            CtDirection::Reply => 1,
        }
    }
}

/// What a rule does with a matching packet: its verdict, or the statement it applies before
/// evaluation goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Queue verdict; number and spread come from the [`super::Policy`] so that every rule agrees.
    Queue,
    /// No verdict statement: evaluation goes on with the next rule.
    Continue,
    /// `drop`.
    Drop,
    /// `ct label set N`, then on with the next rule.
    SetCtLabel(u8),
    /// `meta mark set meta mark & ~M`, then on with the next rule.
    ClearMark(u32),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub verdict: Verdict,
    /// Shown by `nft list` as `comment "..."`.
    pub comment: Option<&'static str>,
}

/// Netfilter hook of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    Prerouting,
    Postrouting,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// A chain of netnat's tables. With a hook it is a base chain of type filter with policy accept
/// (only the guard's one rule ever drops); without, a regular chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSpec {
    pub name: &'static str,
    pub hook: Option<Hook>,
    /// Only meaningful for base chains.
    pub priority: i32,
    pub rules: Vec<Rule>,
}

/// The queue every verdict sends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QueueSpec {
    /// First queue number.
    pub num: u16,
    /// Number of queues (`num .. num+total-1`), at least 1.
    pub total: u16,
    /// Let packets pass when no process listens. Always false for netnat: a reply passing
    /// untranslated would leak the private address.
    pub bypass: bool,
    /// Spread by CPU instead of by flow hash (only meaningful with `total > 1`).
    pub cpu_fanout: bool,
}

impl QueueSpec {
    /// `NFT_QUEUE_FLAG_*` bits (the same values as the xtables NFQUEUE v3 flags).
    pub fn flags(&self) -> u16 {
        let mut f = 0;
        if self.bypass {
            f |= libc::NFT_QUEUE_FLAG_BYPASS as u16;
        }
        if self.cpu_fanout {
            f |= libc::NFT_QUEUE_FLAG_CPU_FANOUT as u16;
        }
        f
    }
}

/// Rules in order, without duplicates.
#[derive(Default)]
pub(super) struct RuleList {
    pub(super) rules: Vec<Rule>,
    seen: HashSet<Rule>,
}

impl RuleList {
    pub(super) fn push(&mut self, r: Rule) {
        if self.seen.insert(r.clone()) {
            self.rules.push(r);
        }
    }
}

/// A rule sending its packets to the queue.
pub(super) fn queue_rule(matches: Vec<Match>) -> Rule {
    Rule {
        matches,
        verdict: Verdict::Queue,
        comment: None,
    }
}
