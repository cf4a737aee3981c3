//! Which packets netnat steers into its queue, as plain data.
//!
//! The policy is computed from the services alone, without the kernel, so it can be tested,
//! rendered for `netnat rules` and turned into netlink messages by the same code path. Every
//! [`Match`] item corresponds to one group of nftables expressions (a load and a compare, or
//! the loads of a concatenated key and a set lookup); the order of the items is the order of the
//! expressions in the rule.
//!
//! Scale: the services themselves are not rules but elements of a few sets with concatenated
//! keys (see [`SetKind`]), one lookup rule per set. A packet therefore costs the same handful of
//! rules whether there are 3 services or 10,000: the kernel looks its key up in a hash table
//! instead of walking one rule per service. The ICMP error rules for fixed apparent addresses
//! look the (interface, address) pair up in a set as well, so they do not grow with the number
//! of addresses either; only the ICMP rules of `*` services and of replies are per interface,
//! and interfaces are few.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::config::{AppAddr, Protocol, Service};

/// Name of netnat's table (family `inet`). Nothing outside this table is ever touched.
pub const TABLE_NAME: &str = "netnat";

/// Priority of the inbound chain: after defragmentation (-400) and before conntrack (-200), so
/// conntrack records the rewritten (client → actual) tuple.
pub const PREROUTING_PRIORITY: i32 = -300;

/// Priority of the reply chain: after source NAT (100), because a reply rewrite must come after
/// routing and after any masquerade the host does.
pub const POSTROUTING_PRIORITY: i32 = 300;

/// Name of the leak guard's table (family `inet`). Unlike netnat's own table it has no owner
/// flag, so it stays when netnat stops or dies: see [`Guard`].
pub const GUARD_TABLE: &str = "netnat_guard";

/// The conntrack label bit that marks a connection netnat translated. The highest of the 128
/// bits, far from the low bits people number their own labels from.
pub const GUARD_LABEL: u8 = 127;

/// Priority of the guard chain that labels translated connections: after conntrack (-200) has
/// attached the connection to the packet netnat translated at -300.
pub const GUARD_LABEL_PRIORITY: i32 = -150;

/// Priority of the guard chain that clears netnat's mark bits on replies before netnat's reply
/// chain (300) sees them, so that only netnat's own verdict can put them back (a firewall that
/// restores the connection mark into the packet mark must not make an untranslated reply look
/// translated).
pub const GUARD_CLEAR_PRIORITY: i32 = 290;

/// Priority of the guard chain that drops replies netnat did not translate: after netnat's
/// reply chain (300), whose verdict sets the mark bits on every reply it translates.
pub const GUARD_DROP_PRIORITY: i32 = 310;

/// Name of the regular chain holding the rule that activates conntrack (see
/// [`Policy::conntrack`]).
pub const CONNTRACK_CHAIN: &str = "conntrack";

/// Comment on that rule, shown by `nft list`: nobody reading the ruleset should have to guess
/// why an unreachable chain holds a rule (libnftnl limits comments to 127 bytes).
pub const CONNTRACK_COMMENT: &str =
    "never jumped to: its ct expression keeps conntrack, and with it reassembly, active";

/// ICMPv4 error types whose quoted packet netnat translates: destination unreachable, time
/// exceeded, parameter problem.
pub const ICMP_ERROR_TYPES: [u8; 3] = [3, 11, 12];

/// ICMPv6 error types: destination unreachable, packet too big, time exceeded, parameter problem.
pub const ICMPV6_ERROR_TYPES: [u8; 4] = [1, 2, 3, 4];

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// Address family of a rule (`meta nfproto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// `NFPROTO_IPV4` / `NFPROTO_IPV6`, the value `meta nfproto` loads.
    pub fn nfproto(self) -> u8 {
        match self {
            Family::Ipv4 => libc::NFPROTO_IPV4 as u8,
            Family::Ipv6 => libc::NFPROTO_IPV6 as u8,
        }
    }

    /// The ICMP flavour of this family: protocol number and the error types netnat handles.
    pub fn icmp(self) -> (u8, &'static [u8]) {
        match self {
            Family::Ipv4 => (IPPROTO_ICMP, &ICMP_ERROR_TYPES),
            Family::Ipv6 => (IPPROTO_ICMPV6, &ICMPV6_ERROR_TYPES),
        }
    }

    /// Length of an address of this family in bytes.
    pub fn addr_len(self) -> usize {
        match self {
            Family::Ipv4 => 4,
            Family::Ipv6 => 16,
        }
    }
}

/// One component of a concatenated set key: what is loaded from the packet, in key order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyField {
    /// `iifname` (datatype `ifname`, IFNAMSIZ bytes, zero-padded).
    IifName,
    /// `oifname`.
    OifName,
    /// `ip daddr` / `ip6 daddr`.
    Daddr(Family),
    /// `ip saddr` / `ip6 saddr`.
    Saddr(Family),
    /// `meta l4proto` (datatype `inet_proto`, one byte).
    L4Proto,
    /// `th dport` (datatype `inet_service`, two bytes, network order).
    Dport,
    /// `th sport`.
    Sport,
}

// nft's datatype numbers (nftables' include/datatype.h), from which the concatenated type id is
// built; `nft list` uses it to name the set's type and to print its elements.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_IFNAME: u32 = 41;
/// Bits per component in a concatenated type id (nft's TYPE_BITS).
const TYPE_BITS: u32 = 6;

impl KeyField {
    /// Bytes the load puts into the registers (before padding).
    pub fn loaded_len(self) -> usize {
        match self {
            KeyField::IifName | KeyField::OifName => super::expr::IFNAMSIZ,
            KeyField::Daddr(f) | KeyField::Saddr(f) => f.addr_len(),
            KeyField::L4Proto => 1,
            KeyField::Dport | KeyField::Sport => 2,
        }
    }

    /// Bytes the component occupies in the key: registers are 32 bits wide and each component
    /// starts in a register of its own, so every field is padded to a multiple of 4.
    pub fn padded_len(self) -> usize {
        self.loaded_len().next_multiple_of(4)
    }

    /// nft's datatype number of the component.
    pub fn type_id(self) -> u32 {
        match self {
            KeyField::IifName | KeyField::OifName => TYPE_IFNAME,
            KeyField::Daddr(Family::Ipv4) | KeyField::Saddr(Family::Ipv4) => TYPE_IPADDR,
            KeyField::Daddr(Family::Ipv6) | KeyField::Saddr(Family::Ipv6) => TYPE_IP6ADDR,
            KeyField::L4Proto => TYPE_INET_PROTOCOL,
            KeyField::Dport | KeyField::Sport => TYPE_INET_SERVICE,
        }
    }

    /// nft's name of the component's datatype (`type ...` line of a set).
    pub fn type_name(self) -> &'static str {
        match self {
            KeyField::IifName | KeyField::OifName => "ifname",
            KeyField::Daddr(Family::Ipv4) | KeyField::Saddr(Family::Ipv4) => "ipv4_addr",
            KeyField::Daddr(Family::Ipv6) | KeyField::Saddr(Family::Ipv6) => "ipv6_addr",
            KeyField::L4Proto => "inet_proto",
            KeyField::Dport | KeyField::Sport => "inet_service",
        }
    }
}

/// The concatenated type id of a key: each component's datatype shifted in, first component
/// in the most significant position (how nft encodes `type a . b . c`).
pub fn concat_type(key: &[KeyField]) -> u32 {
    key.iter()
        .fold(0, |acc, f| (acc << TYPE_BITS) | f.type_id())
}

/// Length of a concatenated key in bytes (sum of the padded components).
pub fn key_len(key: &[KeyField]) -> usize {
    key.iter().map(|f| f.padded_len()).sum()
}

/// The sets netnat may have in its table, each with a fixed key. A set is only created when it
/// has elements; the install batch deletes the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetKind {
    /// Inbound, fixed IPv4 apparent address: `iifname . ip daddr . meta l4proto . th dport`.
    In4,
    /// Inbound, `*` services of family IPv4: `iifname . meta l4proto . th dport`, with
    /// `fib daddr . iif type local` in the rule.
    In4Local,
    /// Inbound, fixed IPv6 apparent address.
    In6,
    /// Inbound, `*` services of family IPv6.
    In6Local,
    /// Replies from IPv4 actual servers: `oifname . ip saddr . meta l4proto . th sport`.
    Out4,
    /// Replies from IPv6 actual servers.
    Out6,
    /// ICMP errors addressed to a fixed IPv4 apparent address: `iifname . ip daddr`.
    IcmpIn4,
    /// ICMPv6 errors addressed to a fixed IPv6 apparent address.
    IcmpIn6,
}

impl SetKind {
    pub const ALL: [SetKind; 8] = [
        SetKind::In4,
        SetKind::In4Local,
        SetKind::In6,
        SetKind::In6Local,
        SetKind::Out4,
        SetKind::Out6,
        SetKind::IcmpIn4,
        SetKind::IcmpIn6,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SetKind::In4 => "in4",
            SetKind::In4Local => "in4_local",
            SetKind::In6 => "in6",
            SetKind::In6Local => "in6_local",
            SetKind::Out4 => "out4",
            SetKind::Out6 => "out6",
            SetKind::IcmpIn4 => "icmp_in4",
            SetKind::IcmpIn6 => "icmp_in6",
        }
    }

    pub fn family(self) -> Family {
        match self {
            SetKind::In4 | SetKind::In4Local | SetKind::Out4 | SetKind::IcmpIn4 => Family::Ipv4,
            SetKind::In6 | SetKind::In6Local | SetKind::Out6 | SetKind::IcmpIn6 => Family::Ipv6,
        }
    }

    /// The key's components, in the order the rule loads them.
    pub fn key(self) -> &'static [KeyField] {
        use Family::{Ipv4, Ipv6};
        use KeyField::*;
        match self {
            SetKind::In4 => &[IifName, Daddr(Ipv4), L4Proto, Dport],
            SetKind::In6 => &[IifName, Daddr(Ipv6), L4Proto, Dport],
            SetKind::In4Local | SetKind::In6Local => &[IifName, L4Proto, Dport],
            SetKind::Out4 => &[OifName, Saddr(Ipv4), L4Proto, Sport],
            SetKind::Out6 => &[OifName, Saddr(Ipv6), L4Proto, Sport],
            SetKind::IcmpIn4 => &[IifName, Daddr(Ipv4)],
            SetKind::IcmpIn6 => &[IifName, Daddr(Ipv6)],
        }
    }
}

/// One component value of a set element.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyValue {
    IfName(String),
    Addr(IpAddr),
    Proto(u8),
    /// Host order here.
    Port(u16),
}

/// A named set of netnat's table and its elements (no duplicates, first-seen order).
///
/// The elements are kept compact, since a policy may hold tens of thousands of them and a
/// reload builds a second policy while the running service set is still in memory: each is a
/// 24-byte [`Element`], interface names are stored once per set. [`SetSpec::elements`] gives
/// them as [`KeyValue`] lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSpec {
    pub kind: SetKind,
    ifnames: Vec<String>,
    elements: Vec<Element>,
}

/// One set element, compactly: the components the set's key does not have are left at their
/// defaults (unspecified address, protocol and port 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    /// Index of the interface name in [`SetSpec::ifnames`].
    pub ifname: u32,
    pub addr: IpAddr,
    pub proto: u8,
    /// Host order here.
    pub port: u16,
}

impl SetSpec {
    /// A set of `kind` with these elements (each in key order), duplicates dropped.
    pub fn from_values(kind: SetKind, elements: &[Vec<KeyValue>]) -> SetSpec {
        let mut list = ElementList::new(kind, elements.len());
        for e in elements {
            assert_eq!(e.len(), kind.key().len(), "{kind:?} {e:?}");
            let mut iface = "";
            let (mut addr, mut proto, mut port) = (UNSPECIFIED, 0, 0);
            for v in e {
                match v {
                    KeyValue::IfName(n) => iface = n,
                    KeyValue::Addr(a) => addr = *a,
                    KeyValue::Proto(p) => proto = *p,
                    KeyValue::Port(p) => port = *p,
                }
            }
            list.push(iface, addr, proto, port);
        }
        list.finish()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.elements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    /// The interface names the elements use, each once.
    pub fn ifnames(&self) -> &[String] {
        &self.ifnames
    }

    /// The elements in compact form, in order.
    pub fn raw(&self) -> &[Element] {
        &self.elements
    }

    /// The interface name of an element of this set.
    pub fn ifname(&self, e: &Element) -> &str {
        &self.ifnames[e.ifname as usize]
    }

    /// An element's component values, in key order.
    pub fn values(&self, e: &Element) -> Vec<KeyValue> {
        self.kind
            .key()
            .iter()
            .map(|f| match f {
                KeyField::IifName | KeyField::OifName => {
                    KeyValue::IfName(self.ifname(e).to_string())
                }
                KeyField::Daddr(_) | KeyField::Saddr(_) => KeyValue::Addr(e.addr),
                KeyField::L4Proto => KeyValue::Proto(e.proto),
                KeyField::Dport | KeyField::Sport => KeyValue::Port(e.port),
            })
            .collect()
    }

    /// Every element's component values, in order.
    pub fn elements(&self) -> impl Iterator<Item = Vec<KeyValue>> + '_ {
        self.elements.iter().map(|e| self.values(e))
    }
}

/// The address of elements whose key has none.
const UNSPECIFIED: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

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
    /// `ct state new`: only there for its side effect (see [`Policy::conntrack`]).
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
    /// Queue verdict; number and spread come from the [`Policy`] so that every rule agrees.
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

/// netnat's whole table: what [`super::NftSession::install`] sends and [`super::render`] prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub table: &'static str,
    /// First queue number of every queue verdict.
    pub queue: u16,
    /// How many queues the verdicts spread over (1 = no fanout; `queues` in the configuration).
    pub queues_total: u16,
    /// The sets with at least one element, in [`SetKind`] order.
    pub sets: Vec<SetSpec>,
    /// Inbound: public side → apparent endpoint, and ICMP errors addressed to it.
    pub prerouting: ChainSpec,
    /// Replies: actual server → public side, and ICMP errors leaving on a public interface.
    pub postrouting: ChainSpec,
    /// A regular chain that no rule jumps to, holding one `ct state new` rule without a
    /// verdict. Why: fragments are reassembled at priority -400 only while conntrack is active
    /// in the namespace, and netnat's inbound chain (-300) needs whole datagrams, since
    /// non-first fragments carry no ports. The kernel activates conntrack (and defragmentation)
    /// for the namespace when a rule holding a `ct` expression is added, whether or not the
    /// rule is ever evaluated, and keeps it active while such a rule exists. Never evaluated,
    /// the rule changes no packet's fate and costs nothing per packet; it goes away with the
    /// table.
    pub conntrack: ChainSpec,
    /// The leak guard, installed in the same batch as the table, in a table of its own.
    pub guard: Guard,
    /// The header-only path's maps and chains (`header-only on`), see `nft::rewrite`.
    pub rewrite: Option<super::rewrite::Rewrite>,
}

/// The leak guard: what makes sure that no reply ever leaves with the actual server's private
/// address, also when netnat has stopped, died, is stopped (SIGSTOP) or has lost the service.
///
/// Replies are rewritten statelessly at postrouting 300 by netnat's own table, which the kernel
/// removes with the process (owner flag), and only while a service's set element matches them.
/// Without more, a reply of an established connection would leave untranslated the moment the
/// service or the table is gone. The guard closes that gap with conntrack, in a table without
/// the owner flag, which therefore outlives netnat:
///
/// 1. `flows` (prerouting, after conntrack): a packet netnat translated inbound carries the
///    `mark` bits (netnat's verdict sets them); its connection gets conntrack label
///    [`GUARD_LABEL`]. Only connections netnat translated ever carry it. An ICMP error netnat
///    translated inbound that conntrack relates to no connection (`ct state invalid`: an
///    unsolicited or forged error, CVE-2019-5598) goes back to the queue, where netnat sees
///    its own mark at prerouting, drops it and counts it (see `datapath::handle`).
/// 2. `replies_clear` (postrouting 290): replies of labelled connections lose the mark bits, so
///    that nothing but netnat's verdict at 300 can set them.
/// 3. `replies_guard` (postrouting 310): a reply of a labelled connection without the mark bits
///    was not translated by netnat: dropped.
///
/// Traffic of connections netnat never translated is not looked at beyond the label test, so
/// the guard black-holes nothing but replies that would leak. A netnat started again translates
/// the replies of the labelled connections at once (the rewrite is stateless). `netnat flush`
/// removes the guard with the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    pub table: &'static str,
    /// The `mark` bits netnat's verdicts set on every packet they translate.
    pub mark: u32,
    pub flows: ChainSpec,
    pub replies_clear: ChainSpec,
    pub replies_guard: ChainSpec,
}

impl Guard {
    pub fn new(mark: u32) -> Guard {
        let rule = |matches, verdict| Rule {
            matches,
            verdict,
            comment: None,
        };
        let labelled_reply = || {
            vec![
                Match::CtDirection(CtDirection::Reply),
                Match::CtLabel(GUARD_LABEL),
            ]
        };
        let base = |name, hook, priority, r| ChainSpec {
            name,
            hook: Some(hook),
            priority,
            rules: vec![r],
        };
        let mut lacks = labelled_reply();
        lacks.push(Match::MarkLacks(mark));
        let unrelated_icmp = |proto| {
            rule(
                vec![
                    Match::MarkHas(mark),
                    Match::L4Proto(proto),
                    Match::CtStateInvalid,
                ],
                Verdict::Queue,
            )
        };
        let mut flows = base(
            "flows",
            Hook::Prerouting,
            GUARD_LABEL_PRIORITY,
            rule(
                vec![
                    Match::MarkHas(mark),
                    Match::CtDirection(CtDirection::Original),
                ],
                Verdict::SetCtLabel(GUARD_LABEL),
            ),
        );
        flows.rules.push(unrelated_icmp(IPPROTO_ICMP));
        flows.rules.push(unrelated_icmp(IPPROTO_ICMPV6));
        Guard {
            table: GUARD_TABLE,
            mark,
            flows,
            replies_clear: base(
                "replies_clear",
                Hook::Postrouting,
                GUARD_CLEAR_PRIORITY,
                rule(labelled_reply(), Verdict::ClearMark(mark)),
            ),
            replies_guard: base(
                "replies_guard",
                Hook::Postrouting,
                GUARD_DROP_PRIORITY,
                rule(lacks, Verdict::Drop),
            ),
        }
    }

    /// The chains, in the order they are created (and listed).
    pub fn chains(&self) -> [&ChainSpec; 3] {
        [&self.flows, &self.replies_clear, &self.replies_guard]
    }
}

impl Policy {
    /// The sets and rules steering exactly the services' packets (and the ICMP errors about
    /// them) to queue `queue`. Duplicate elements and rules appear once, in first-seen order.
    pub fn new(services: &[Service], queue: u16) -> Policy {
        let sets = service_sets(services);
        let mut pre = RuleList::default();
        let mut post = RuleList::default();
        lookup_rules(&sets, &mut pre, &mut post);
        // ICMP errors after the service rules: they are rare, the service rules are hot.
        fixed_address_icmp_rules(&sets, &mut pre);
        interface_icmp_rules(services, &mut pre);
        outbound_icmp_rules(services, &mut post);
        Policy {
            table: TABLE_NAME,
            queue,
            queues_total: 1,
            sets: sets.into_iter().filter(|s| !s.is_empty()).collect(),
            prerouting: base_chain(
                "prerouting",
                Hook::Prerouting,
                PREROUTING_PRIORITY,
                pre.rules,
            ),
            postrouting: base_chain(
                "postrouting",
                Hook::Postrouting,
                POSTROUTING_PRIORITY,
                post.rules,
            ),
            conntrack: conntrack_chain(),
            guard: Guard::new(crate::config::DEFAULT_MARK),
            rewrite: None,
        }
    }

    /// The same rules with the header-only path's maps and chains (or without, `None`).
    pub fn with_rewrite(mut self, rewrite: Option<super::rewrite::Rewrite>) -> Policy {
        self.rewrite = rewrite;
        self
    }

    /// The same rules with the guard keyed to `mark`, the bits netnat's verdicts set (the
    /// `mark` setting).
    pub fn with_mark(mut self, mark: u32) -> Policy {
        self.guard = Guard::new(mark);
        self
    }

    /// The same rules sending to `total` queues from `queue` on, spread by CPU.
    pub fn with_queues(mut self, total: u16) -> Policy {
        self.queues_total = total.max(1);
        self
    }

    /// The queue verdict's parameters: never bypass; with several queues, CPU fanout (the
    /// queue of the CPU the packet is handled on, so that the packet's data stays in that
    /// CPU's cache and one flow's packets are not handed between threads).
    pub fn queue_spec(&self) -> QueueSpec {
        let total = self.queues_total.max(1);
        QueueSpec {
            num: self.queue,
            total,
            bypass: false,
            cpu_fanout: total > 1,
        }
    }

    /// The chains, in the order they are created (and listed).
    pub fn chains(&self) -> [&ChainSpec; 3] {
        [&self.prerouting, &self.postrouting, &self.conntrack]
    }

    /// The set of this kind, if the policy has one.
    pub fn set(&self, kind: SetKind) -> Option<&SetSpec> {
        self.sets.iter().find(|s| s.kind == kind)
    }

    /// Number of set elements over all sets.
    pub fn element_count(&self) -> usize {
        self.sets.iter().map(|s| s.len()).sum()
    }
}

/// Every set of [`SetKind::ALL`], in that order (empty ones too), with each service's element
/// in its inbound set, its reply set and, for a fixed apparent address, its ICMP set.
fn service_sets(services: &[Service]) -> Vec<SetSpec> {
    // Counted first, so that each set's elements are allocated once, at their size.
    let mut counts = [0usize; SetKind::ALL.len()];
    for s in services {
        counts[inbound_element(s).0 as usize] += 1;
        counts[reply_element(s).0 as usize] += 1;
        if let AppAddr::Fixed(a) = s.app_addr {
            counts[icmp_set(a) as usize] += 1;
        }
    }
    let mut sets: Vec<ElementList> = SetKind::ALL
        .iter()
        .map(|&kind| ElementList::new(kind, counts[kind as usize]))
        .collect();
    for s in services {
        let (kind, addr, port) = inbound_element(s);
        sets[kind as usize].push(&s.iface, addr, l4(s.protocol), port);
        let (kind, addr, port) = reply_element(s);
        sets[kind as usize].push(&s.iface, addr, l4(s.protocol), port);
        if let AppAddr::Fixed(a) = s.app_addr {
            sets[icmp_set(a) as usize].push(&s.iface, a, 0, 0);
        }
    }
    sets.into_iter().map(ElementList::finish).collect()
}

/// One lookup rule per service set that has elements: inbound sets into `pre`, reply sets
/// into `post`.
fn lookup_rules(sets: &[SetSpec], pre: &mut RuleList, post: &mut RuleList) {
    for set in sets {
        if set.is_empty() {
            continue;
        }
        let f = set.kind.family();
        let rule = match set.kind {
            SetKind::In4 | SetKind::In6 | SetKind::Out4 | SetKind::Out6 => {
                queue_rule(vec![Match::NfProto(f), Match::Lookup(set.kind)])
            }
            // The lookup before fib: the route lookup is the dearer of the two, so it only
            // runs for packets that are addressed to a `*` service's interface and port.
            SetKind::In4Local | SetKind::In6Local => queue_rule(vec![
                Match::NfProto(f),
                Match::Lookup(set.kind),
                Match::FibDaddrIifLocal,
            ]),
            SetKind::IcmpIn4 | SetKind::IcmpIn6 => continue,
        };
        match set.kind {
            SetKind::Out4 | SetKind::Out6 => post.push(rule),
            _ => pre.push(rule),
        }
    }
}

/// ICMP errors addressed to fixed apparent addresses: one rule per error type and family.
fn fixed_address_icmp_rules(sets: &[SetSpec], pre: &mut RuleList) {
    for kind in [SetKind::IcmpIn4, SetKind::IcmpIn6] {
        if sets[kind as usize].is_empty() {
            continue;
        }
        let f = kind.family();
        let (proto, types) = f.icmp();
        for &t in types {
            pre.push(queue_rule(vec![
                Match::NfProto(f),
                Match::Lookup(kind),
                Match::L4Proto(proto),
                Match::IcmpType(t),
            ]));
        }
    }
}

/// ICMP errors addressed to `*` services' interfaces: per interface and family.
///
/// These rules depend only on the interface and family (and for `*` services the way the
/// destination is matched), not on the port: each combination is built once rather than once
/// per service and deduplicated (10,000 services on one interface make a handful of rules
/// either way, but building 80,000 first costs time and memory).
fn interface_icmp_rules(services: &[Service], pre: &mut RuleList) {
    let mut done: HashSet<(&str, Family)> = HashSet::new();
    for s in services {
        if let AppAddr::Fixed(_) = s.app_addr {
            continue;
        }
        let (family, dst) = inbound_destination(s);
        if !done.insert((&s.iface, family)) {
            continue;
        }
        let (proto, types) = family.icmp();
        for &t in types {
            let mut m = vec![Match::IifName(s.iface.clone())];
            m.extend(dst.iter().cloned());
            m.push(Match::L4Proto(proto));
            m.push(Match::IcmpType(t));
            pre.push(queue_rule(m));
        }
    }
}

/// ICMP errors leaving on the services' public interfaces that may quote a mapped flow (see
/// [`reply_icmp_rules`]): per interface and family of the actual servers.
fn outbound_icmp_rules(services: &[Service], post: &mut RuleList) {
    let mut done: HashSet<(&str, Family)> = HashSet::new();
    for s in services {
        let family = Family::of(&s.act_addr);
        if !done.insert((&s.iface, family)) {
            continue;
        }
        let (proto, types) = family.icmp();
        for &t in types {
            reply_icmp_rules(post, &s.iface, family, proto, t);
        }
    }
}

/// A base chain of netnat's table: filter type, policy accept.
fn base_chain(name: &'static str, hook: Hook, priority: i32, rules: Vec<Rule>) -> ChainSpec {
    ChainSpec {
        name,
        hook: Some(hook),
        priority,
        rules,
    }
}

/// The unhooked chain whose one `ct` rule keeps conntrack, and with it reassembly, active
/// (see [`Policy::conntrack`]).
fn conntrack_chain() -> ChainSpec {
    ChainSpec {
        name: CONNTRACK_CHAIN,
        hook: None,
        priority: 0,
        rules: vec![Rule {
            matches: vec![Match::CtStateNew],
            verdict: Verdict::Continue,
            comment: Some(CONNTRACK_COMMENT),
        }],
    }
}

/// Elements of one set in order while they are collected; duplicates are dropped at the end.
struct ElementList<'a> {
    kind: SetKind,
    ifnames: Vec<String>,
    ifname_ids: HashMap<&'a str, u32>,
    /// The interface name of the previous element and its id: services come in runs on the
    /// same interface.
    last: Option<(&'a str, u32)>,
    elements: Vec<Element>,
}

impl<'a> ElementList<'a> {
    fn new(kind: SetKind, capacity: usize) -> ElementList<'a> {
        ElementList {
            kind,
            ifnames: Vec::new(),
            ifname_ids: HashMap::new(),
            last: None,
            elements: Vec::with_capacity(capacity),
        }
    }

    fn ifname_id(&mut self, iface: &'a str) -> u32 {
        if let Some((name, id)) = self.last
            && name == iface
        {
            return id;
        }
        let id = match self.ifname_ids.get(iface) {
            Some(&id) => id,
            None => {
                let id = self.ifnames.len() as u32;
                self.ifnames.push(iface.to_string());
                self.ifname_ids.insert(iface, id);
                id
            }
        };
        self.last = Some((iface, id));
        id
    }

    /// Adds an element; the components the set's key lacks are ignored.
    fn push(&mut self, iface: &'a str, addr: IpAddr, proto: u8, port: u16) {
        let key = self.kind.key();
        let has = |f: fn(&KeyField) -> bool| key.iter().any(f);
        let e = Element {
            ifname: self.ifname_id(iface),
            addr: if has(|f| matches!(f, KeyField::Daddr(_) | KeyField::Saddr(_))) {
                addr
            } else {
                UNSPECIFIED
            },
            proto: if has(|f| *f == KeyField::L4Proto) {
                proto
            } else {
                0
            },
            port: if has(|f| matches!(f, KeyField::Dport | KeyField::Sport)) {
                port
            } else {
                0
            },
        };
        self.elements.push(e);
    }

    /// The set, each element once, where it first appeared. Duplicates are found by sorting
    /// the positions by element (4 bytes each) rather than with a hash set of the elements,
    /// which for 10,000 services would take ten times the memory while the policy is built.
    fn finish(mut self) -> SetSpec {
        let v = &self.elements;
        if v.len() > 1 {
            let mut order: Vec<u32> = (0..v.len() as u32).collect();
            order.sort_unstable_by(|&a, &b| v[a as usize].cmp(&v[b as usize]).then(a.cmp(&b)));
            let mut keep = vec![true; v.len()];
            for w in order.windows(2) {
                if v[w[0] as usize] == v[w[1] as usize] {
                    keep[w[1] as usize] = false;
                }
            }
            let mut i = 0;
            self.elements.retain(|_| {
                i += 1;
                keep[i - 1]
            });
        }
        self.elements.shrink_to_fit();
        SetSpec {
            kind: self.kind,
            ifnames: self.ifnames,
            elements: self.elements,
        }
    }
}

/// The set of ICMP errors addressed to a fixed apparent address.
fn icmp_set(addr: IpAddr) -> SetKind {
    match Family::of(&addr) {
        Family::Ipv4 => SetKind::IcmpIn4,
        Family::Ipv6 => SetKind::IcmpIn6,
    }
}

/// Rules in order, without duplicates.
#[derive(Default)]
struct RuleList {
    rules: Vec<Rule>,
    seen: HashSet<Rule>,
}

impl RuleList {
    fn push(&mut self, r: Rule) {
        if self.seen.insert(r.clone()) {
            self.rules.push(r);
        }
    }
}

fn queue_rule(matches: Vec<Match>) -> Rule {
    Rule {
        matches,
        verdict: Verdict::Queue,
        comment: None,
    }
}

/// Family and destination matches of packets addressed to the service's apparent address.
/// The family guard (`meta nfproto`) comes first because the address load reads the network
/// header at a family-specific offset.
fn inbound_destination(s: &Service) -> (Family, Vec<Match>) {
    match s.app_addr {
        AppAddr::Fixed(a) => {
            let f = Family::of(&a);
            (f, vec![Match::NfProto(f), Match::Daddr(a)])
        }
        AppAddr::Interface => {
            let f = Family::of(&s.act_addr);
            (f, vec![Match::NfProto(f), Match::FibDaddrIifLocal])
        }
    }
}

fn l4(p: Protocol) -> u8 {
    p.number()
}

/// The inbound set a service belongs to and its element's address and port there (the
/// interface and protocol are the service's).
fn inbound_element(s: &Service) -> (SetKind, IpAddr, u16) {
    match s.app_addr {
        AppAddr::Fixed(a) => {
            let kind = match Family::of(&a) {
                Family::Ipv4 => SetKind::In4,
                Family::Ipv6 => SetKind::In6,
            };
            (kind, a, s.app_port)
        }
        AppAddr::Interface => {
            let kind = match Family::of(&s.act_addr) {
                Family::Ipv4 => SetKind::In4Local,
                Family::Ipv6 => SetKind::In6Local,
            };
            (kind, UNSPECIFIED, s.app_port)
        }
    }
}

/// The reply set a service belongs to and its element's address and port there.
fn reply_element(s: &Service) -> (SetKind, IpAddr, u16) {
    let kind = match Family::of(&s.act_addr) {
        Family::Ipv4 => SetKind::Out4,
        Family::Ipv6 => SetKind::Out6,
    };
    (kind, s.act_addr, s.act_port)
}

/// ICMP errors leaving on a public interface that may quote a mapped flow: from the actual
/// server (quoting the client's packet to the private address) or from the router itself
/// (quoting the rewritten tuple, as "fragmentation needed" does). Only errors whose quote names
/// a service's actual endpoint are queued, plus the few whose quote the lookup cannot read.
///
/// Why not every error: the router's own error about a packet whose conntrack entry is not
/// confirmed yet (TTL exceeded or port unreachable for the first packet of a flow) shares that
/// entry, and the kernel refuses to queue such packets: it drops them. Queued broadly, the
/// router's traceroute hop and its refusals would vanish for traffic that is none of netnat's.
fn reply_icmp_rules(list: &mut RuleList, iface: &str, family: Family, proto: u8, t: u8) {
    let out = match family {
        Family::Ipv4 => SetKind::Out4,
        Family::Ipv6 => SetKind::Out6,
    };
    list.push(queue_rule(vec![
        Match::NfProto(family),
        Match::L4Proto(proto),
        Match::IcmpType(t),
        Match::LookupQuoted(out),
    ]));
    // Quotes the lookup cannot read: an IPv4 header with options (first byte not 0x45), an
    // IPv6 header followed by an extension header (next header neither TCP nor UDP).
    let mut odd = vec![
        Match::OifName(iface.to_string()),
        Match::NfProto(family),
        Match::L4Proto(proto),
        Match::IcmpType(t),
    ];
    match family {
        Family::Ipv4 => odd.push(Match::QuotedByteNot {
            offset: 8,
            value: 0x45,
        }),
        Family::Ipv6 => odd.extend([
            Match::QuotedByteNot {
                offset: 14,
                value: 6,
            },
            Match::QuotedByteNot {
                offset: 14,
                value: 17,
            },
        ]),
    }
    list.push(queue_rule(odd));
}

/// A service for the unit tests of this module and of `render`.
#[cfg(test)]
pub(super) fn svc(
    iface: &str,
    app: AppAddr,
    app_port: u16,
    p: Protocol,
    act: &str,
    act_port: u16,
) -> Service {
    Service {
        iface: iface.into(),
        app_addr: app,
        app_port,
        protocol: p,
        act_addr: act.parse().unwrap(),
        act_port,
        flags: crate::config::Flags(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(a: &str) -> AppAddr {
        AppAddr::Fixed(a.parse().unwrap())
    }

    fn q(m: Vec<Match>) -> Rule {
        queue_rule(m)
    }

    fn ip(a: &str) -> IpAddr {
        a.parse().unwrap()
    }

    fn name(n: &str) -> KeyValue {
        KeyValue::IfName(n.into())
    }

    #[test]
    fn chains_hooks_priorities_and_queue_defaults() {
        let p = Policy::new(&[], 4747);
        assert_eq!(p.table, "netnat");
        assert_eq!(p.prerouting.hook, Some(Hook::Prerouting));
        assert_eq!(p.prerouting.priority, -300);
        assert_eq!(p.postrouting.hook, Some(Hook::Postrouting));
        assert_eq!(p.postrouting.priority, 300);
        assert!(p.prerouting.rules.is_empty() && p.postrouting.rules.is_empty());
        assert!(p.sets.is_empty());
        assert_eq!(p.queues_total, 1);
        let qs = p.queue_spec();
        assert_eq!((qs.num, qs.total, qs.flags()), (4747, 1, 0));
        assert!(!qs.bypass);
    }

    #[test]
    fn conntrack_rule_is_in_an_unhooked_chain_without_verdict() {
        // Also with no services: reassembly must not depend on what is configured.
        for p in [
            Policy::new(&[], 1),
            Policy::new(
                &[svc(
                    "pub0",
                    fixed("10.0.0.1"),
                    1,
                    Protocol::Udp,
                    "10.1.0.1",
                    1,
                )],
                1,
            ),
        ] {
            assert_eq!(p.conntrack.hook, None, "a regular chain: never evaluated");
            assert_eq!(
                p.conntrack.rules,
                vec![Rule {
                    matches: vec![Match::CtStateNew],
                    verdict: Verdict::Continue,
                    comment: Some(CONNTRACK_COMMENT),
                }]
            );
            // No other chain jumps anywhere (there is no jump match at all) and no other rule
            // uses ct.
            for c in [&p.prerouting, &p.postrouting] {
                assert!(
                    c.rules
                        .iter()
                        .all(|r| !r.matches.contains(&Match::CtStateNew))
                );
            }
        }
        assert!(CONNTRACK_COMMENT.len() < 128, "libnftnl's comment limit");
    }

    #[test]
    fn concatenated_type_ids_and_lengths() {
        // `ifname . ipv4_addr . inet_proto . inet_service` as nft itself encodes it (seen with
        // `nft --debug=mnl add set`).
        assert_eq!(concat_type(SetKind::In4.key()), 0x00a4_730d);
        assert_eq!(key_len(SetKind::In4.key()), 16 + 4 + 4 + 4);
        assert_eq!(key_len(SetKind::In6.key()), 16 + 16 + 4 + 4);
        assert_eq!(key_len(SetKind::In4Local.key()), 16 + 4 + 4);
        assert_eq!(
            concat_type(SetKind::In6Local.key()),
            (TYPE_IFNAME << 12) | (TYPE_INET_PROTOCOL << 6) | TYPE_INET_SERVICE
        );
        // Every key fits the 16 32-bit registers.
        for k in SetKind::ALL {
            assert!(key_len(k.key()) <= 64, "{k:?}");
        }
    }

    #[test]
    fn ipv4_fixed_service() {
        let s = svc(
            "pub0",
            fixed("10.99.1.1"),
            80,
            Protocol::Tcp,
            "192.168.77.10",
            8080,
        );
        let p = Policy::new(&[s], 7);
        assert_eq!(
            p.sets,
            vec![
                SetSpec::from_values(
                    SetKind::In4,
                    &[vec![
                        name("pub0"),
                        KeyValue::Addr(ip("10.99.1.1")),
                        KeyValue::Proto(6),
                        KeyValue::Port(80),
                    ]],
                ),
                SetSpec::from_values(
                    SetKind::Out4,
                    &[vec![
                        name("pub0"),
                        KeyValue::Addr(ip("192.168.77.10")),
                        KeyValue::Proto(6),
                        KeyValue::Port(8080),
                    ]],
                ),
                SetSpec::from_values(
                    SetKind::IcmpIn4,
                    &[vec![name("pub0"), KeyValue::Addr(ip("10.99.1.1"))]],
                ),
            ]
        );
        assert_eq!(
            p.prerouting.rules[0],
            q(vec![
                Match::NfProto(Family::Ipv4),
                Match::Lookup(SetKind::In4)
            ])
        );
        // Then the three ICMPv4 error types addressed to an apparent address.
        let icmp: Vec<_> = p.prerouting.rules[1..].to_vec();
        assert_eq!(icmp.len(), 3);
        for (r, t) in icmp.iter().zip([3, 11, 12]) {
            assert_eq!(
                r,
                &q(vec![
                    Match::NfProto(Family::Ipv4),
                    Match::Lookup(SetKind::IcmpIn4),
                    Match::L4Proto(1),
                    Match::IcmpType(t),
                ])
            );
        }
        assert_eq!(
            p.postrouting.rules[0],
            q(vec![
                Match::NfProto(Family::Ipv4),
                Match::Lookup(SetKind::Out4)
            ])
        );
        // Per ICMP error type: the lookup keyed by the quoted packet, and the odd quotes.
        assert_eq!(p.postrouting.rules.len(), 1 + 3 * 2);
        assert_eq!(
            p.postrouting.rules[5],
            q(vec![
                Match::NfProto(Family::Ipv4),
                Match::L4Proto(1),
                Match::IcmpType(12),
                Match::LookupQuoted(SetKind::Out4),
            ])
        );
        assert_eq!(
            p.postrouting.rules[6],
            q(vec![
                Match::OifName("pub0".into()),
                Match::NfProto(Family::Ipv4),
                Match::L4Proto(1),
                Match::IcmpType(12),
                Match::QuotedByteNot {
                    offset: 8,
                    value: 0x45
                },
            ])
        );
    }

    #[test]
    fn ipv6_interface_service_uses_fib_after_the_lookup() {
        let s = svc(
            "ppp0",
            AppAddr::Interface,
            53,
            Protocol::Udp,
            "fd00::10",
            5353,
        );
        let p = Policy::new(&[s], 1);
        assert_eq!(
            p.set(SetKind::In6Local)
                .unwrap()
                .elements()
                .collect::<Vec<_>>(),
            vec![vec![name("ppp0"), KeyValue::Proto(17), KeyValue::Port(53)]]
        );
        assert_eq!(
            p.prerouting.rules[0].matches,
            vec![
                Match::NfProto(Family::Ipv6),
                Match::Lookup(SetKind::In6Local),
                Match::FibDaddrIifLocal,
            ]
        );
        let icmp_types: Vec<u8> = p.prerouting.rules[1..]
            .iter()
            .map(|r| match (&r.matches[2], r.matches.last()) {
                (Match::FibDaddrIifLocal, Some(Match::IcmpType(t))) => *t,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(icmp_types, vec![1, 2, 3, 4]);
        assert!(
            p.prerouting.rules[1..]
                .iter()
                .all(|r| r.matches[3] == Match::L4Proto(58))
        );
        assert_eq!(
            p.set(SetKind::Out6).unwrap().elements().collect::<Vec<_>>(),
            vec![vec![
                name("ppp0"),
                KeyValue::Addr(ip("fd00::10")),
                KeyValue::Proto(17),
                KeyValue::Port(5353)
            ]]
        );
        assert_eq!(p.postrouting.rules.len(), 1 + 4 * 2);
        assert_eq!(p.sets.len(), 2);
    }

    #[test]
    fn many_services_make_few_rules() {
        // The point of the sets: the rule count does not grow with the services.
        let services: Vec<Service> = (0..10_000u16)
            .map(|i| {
                let (app, act) = match i % 4 {
                    0 => (fixed("10.99.1.1"), "192.168.77.10"),
                    1 => (AppAddr::Interface, "192.168.77.11"),
                    2 => (fixed("2001:db8::1"), "fd00::10"),
                    _ => (AppAddr::Interface, "fd00::11"),
                };
                let p = if i % 3 == 0 {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                };
                svc("pub0", app, 1000 + i, p, act, 1000 + i)
            })
            .collect();
        let p = Policy::new(&services, 1);
        assert_eq!(p.sets.len(), 8);
        // Plus one ICMP element per fixed apparent address.
        assert_eq!(p.element_count(), 2 * 10_000 + 2);
        let lookups = |c: &ChainSpec| {
            c.rules
                .iter()
                .filter(|r| r.matches.iter().any(|m| matches!(m, Match::Lookup(_))))
                .count()
        };
        assert_eq!(lookups(&p.prerouting), 4 + 3 + 4);
        assert_eq!(lookups(&p.postrouting), 2);
        // ICMP: fixed v4 (3), fib v4 (3), fixed v6 (4), fib v6 (4); replies v4 3 + v6 4, each
        // as a quoted lookup and as an odd-quote rule.
        assert_eq!(p.prerouting.rules.len(), 4 + 3 + 3 + 4 + 4);
        assert_eq!(p.postrouting.rules.len(), 2 + 2 * (3 + 4));
    }

    #[test]
    fn icmp_rules_are_deduplicated() {
        let services = [
            svc(
                "pub0",
                fixed("10.99.1.1"),
                80,
                Protocol::Tcp,
                "192.168.77.10",
                80,
            ),
            svc(
                "pub0",
                fixed("10.99.1.1"),
                53,
                Protocol::Udp,
                "192.168.77.11",
                53,
            ),
            // Another apparent address on the same interface: own inbound ICMP rules, shared
            // reply ICMP rules.
            svc(
                "pub0",
                fixed("10.99.1.2"),
                80,
                Protocol::Tcp,
                "192.168.77.12",
                80,
            ),
            // IPv6 on the same interface: its own family's ICMPv6 rules.
            svc(
                "pub0",
                AppAddr::Interface,
                80,
                Protocol::Tcp,
                "fd00::10",
                80,
            ),
            svc(
                "pub0",
                AppAddr::Interface,
                443,
                Protocol::Tcp,
                "fd00::10",
                443,
            ),
            // Another interface.
            svc(
                "pub1",
                AppAddr::Interface,
                80,
                Protocol::Tcp,
                "192.168.77.10",
                80,
            ),
        ];
        let p = Policy::new(&services, 1);
        let is_icmp = |r: &&Rule| matches!(r.matches.last(), Some(Match::IcmpType(_)));
        let pre_icmp = p.prerouting.rules.iter().filter(is_icmp).count();
        // Fixed IPv4 addresses, through the set: 3; pub0/fib v6: 4, pub1/fib v4: 3.
        assert_eq!(pre_icmp, 3 + 4 + 3);
        assert_eq!(
            p.set(SetKind::IcmpIn4)
                .unwrap()
                .elements()
                .collect::<Vec<_>>(),
            vec![
                vec![name("pub0"), KeyValue::Addr(ip("10.99.1.1"))],
                vec![name("pub0"), KeyValue::Addr(ip("10.99.1.2"))],
            ]
        );
        let has_icmp = |r: &&Rule| r.matches.iter().any(|m| matches!(m, Match::IcmpType(_)));
        let post_icmp = p.postrouting.rules.iter().filter(has_icmp).count();
        // Quoted lookups per family and type (v4 3, v6 4, whatever the interface); odd quotes
        // per interface: pub0 v4 3, pub0 v6 4, pub1 v4 3.
        assert_eq!(post_icmp, (3 + 4) + (3 + 4 + 3));
        // Every rule exactly once.
        for chain in p.chains() {
            let set: HashSet<_> = chain.rules.iter().collect();
            assert_eq!(set.len(), chain.rules.len());
        }
        // Lookup rules first, in set order: in4, in4_local, in6_local (no fixed IPv6).
        let lookups: Vec<SetKind> = p
            .prerouting
            .rules
            .iter()
            .filter_map(|r| {
                r.matches.iter().find_map(|m| match m {
                    Match::Lookup(k) => Some(*k),
                    _ => None,
                })
            })
            .collect();
        assert_eq!(
            lookups,
            [
                SetKind::In4,
                SetKind::In4Local,
                SetKind::In6Local,
                SetKind::IcmpIn4,
                SetKind::IcmpIn4,
                SetKind::IcmpIn4
            ]
        );
        assert!(matches!(
            p.prerouting.rules[0].matches[1],
            Match::Lookup(SetKind::In4)
        ));
        assert_eq!(p.prerouting.rules.len(), 3 + 10);
        assert_eq!(p.postrouting.rules.len(), 2 + 7 + 10);
        assert_eq!(p.set(SetKind::In4).unwrap().len(), 3);
        assert_eq!(p.set(SetKind::In6Local).unwrap().len(), 2);
        assert_eq!(p.set(SetKind::Out4).unwrap().len(), 4);
        assert_eq!(p.set(SetKind::Out6).unwrap().len(), 2);
    }

    #[test]
    fn identical_services_give_one_element() {
        let s = svc(
            "pub0",
            fixed("10.99.1.1"),
            80,
            Protocol::Tcp,
            "192.168.77.10",
            80,
        );
        let p = Policy::new(&[s.clone(), s], 1);
        assert_eq!(p.prerouting.rules.len(), 1 + 3);
        assert_eq!(p.postrouting.rules.len(), 1 + 3 * 2);
        assert_eq!(p.element_count(), 3);
    }

    #[test]
    fn protocols_map_to_numbers() {
        let s = svc(
            "pub0",
            fixed("10.99.1.1"),
            53,
            Protocol::Udp,
            "192.168.77.10",
            53,
        );
        let p = Policy::new(&[s], 1);
        for set in &p.sets {
            if set.kind != SetKind::IcmpIn4 {
                assert!(
                    set.elements()
                        .next()
                        .unwrap()
                        .contains(&KeyValue::Proto(17))
                );
            }
        }
    }
    #[test]
    fn set_elements_keep_first_seen_order_without_duplicates() {
        let e = |iface: &str, port: u16| {
            vec![
                name(iface),
                KeyValue::Addr(ip("10.99.1.1")),
                KeyValue::Proto(6),
                KeyValue::Port(port),
            ]
        };
        let set = SetSpec::from_values(
            SetKind::In4,
            &[
                e("pub1", 90),
                e("pub0", 80),
                e("pub1", 90),
                e("pub0", 70),
                e("pub0", 80),
                e("pub1", 80),
                e("pub0", 70),
            ],
        );
        assert_eq!(
            set.elements().collect::<Vec<_>>(),
            vec![e("pub1", 90), e("pub0", 80), e("pub0", 70), e("pub1", 80)]
        );
        assert_eq!(set.ifnames(), ["pub1", "pub0"]);
        // Components outside the key do not make elements differ.
        let local = |port: u16| (AppAddr::Interface, port);
        let services: Vec<Service> = [local(53), local(53)]
            .iter()
            .zip(["192.168.77.10", "192.168.77.11"])
            .map(|(&(app, port), act)| svc("pub0", app, port, Protocol::Udp, act, 53))
            .collect();
        let p = Policy::new(&services, 1);
        assert_eq!(p.set(SetKind::In4Local).unwrap().len(), 1);
        assert_eq!(p.set(SetKind::Out4).unwrap().len(), 2);
    }
}
