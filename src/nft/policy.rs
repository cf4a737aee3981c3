//! Which packets netnat steers into its queue, as plain data: [`Policy`], built from the
//! services by [`Policy::new`] in named steps.
//!
//! The policy is computed from the services alone, without the kernel, so it can be tested,
//! rendered for `netnat rules` and turned into netlink messages by the same code path.
//!
//! Scale: the services themselves are not rules but elements of a few sets with concatenated
//! keys (see [`SetKind`]), one lookup rule per set. A packet therefore costs the same handful of
//! rules whether there are 3 services or 10,000: the kernel looks its key up in a hash table
//! instead of walking one rule per service. The ICMP error rules for fixed apparent addresses
//! look the (interface, address) pair up in a set as well, so they do not grow with the number
//! of addresses either; only the ICMP rules of `*` services and of replies are per interface,
//! and interfaces are few.
//!
//! Pure; uses `config` (the services), `family`, `sets`, `rules`, `icmp` (the ICMP error
//! rules) and `guard`.

use std::net::IpAddr;

use super::family::Family;
use super::guard::Guard;
use super::icmp::{fixed_address_icmp_rules, interface_icmp_rules, outbound_icmp_rules};
use super::rules::{ChainSpec, Hook, Match, QueueSpec, Rule, RuleList, Verdict, queue_rule};
use super::sets::{ElementList, SetKind, SetSpec, UNSPECIFIED};
use crate::config::{AppAddr, Protocol, Service};

/// Name of netnat's table (family `inet`). Nothing outside this table is ever touched.
pub const TABLE_NAME: &str = "netnat";

/// Priority of the inbound chain: after defragmentation (-400) and before conntrack (-200), so
/// conntrack records the rewritten (client → actual) tuple.
pub const PREROUTING_PRIORITY: i32 = -300;

/// Priority of the reply chain: after source NAT (100), because a reply rewrite must come after
/// routing and after any masquerade the host does.
pub const POSTROUTING_PRIORITY: i32 = 300;

/// Name of the regular chain holding the rule that activates conntrack (see
/// [`Policy::conntrack`]).
pub const CONNTRACK_CHAIN: &str = "conntrack";

/// Comment on that rule, shown by `nft list`: nobody reading the ruleset should have to guess
/// why an unreachable chain holds a rule (libnftnl limits comments to 127 bytes).
pub const CONNTRACK_COMMENT: &str =
    "never jumped to: its ct expression keeps conntrack, and with it reassembly, active";

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
    /// Flow offload (`offload on`), see `nft::offload`; only with `rewrite`.
    pub offload: Option<super::offload::Offload>,
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
            offload: None,
        }
    }

    /// The same rules with the header-only path's maps and chains (or without, `None`).
    /// With flow offload (`offload`; it needs the rewrite chains, so it is dropped without
    /// them): the rewrite rules clear the offload bit too.
    pub fn with_offload(mut self, offload: Option<super::offload::Offload>) -> Policy {
        self.offload = offload.filter(|_| self.rewrite.is_some());
        if let (Some(rw), Some(off)) = (&mut self.rewrite, &self.offload) {
            rw.offload_bit = off.offload_bit();
        }
        self
    }

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

/// The set of ICMP errors addressed to a fixed apparent address.
fn icmp_set(addr: IpAddr) -> SetKind {
    match Family::of(&addr) {
        Family::Ipv4 => SetKind::IcmpIn4,
        Family::Ipv6 => SetKind::IcmpIn6,
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
    use std::collections::HashSet;

    use super::super::sets::{KeyValue, values};
    use super::*;

    fn fixed(a: &str) -> AppAddr {
        AppAddr::Fixed(a.parse().unwrap())
    }

    /// A service of apparent address 10.99.1.1 on pub0, actual server 192.168.77.10.
    fn pub0_v4(app_port: u16, p: Protocol, act_port: u16) -> Service {
        svc(
            "pub0",
            fixed("10.99.1.1"),
            app_port,
            p,
            "192.168.77.10",
            act_port,
        )
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
    fn ipv4_fixed_service() {
        let s = pub0_v4(80, Protocol::Tcp, 8080);
        let p = Policy::new(&[s], 7);
        assert_eq!(
            p.sets,
            vec![
                SetSpec::from_values(SetKind::In4, &[values("pub0", "10.99.1.1", 6, 80)]),
                SetSpec::from_values(SetKind::Out4, &[values("pub0", "192.168.77.10", 6, 8080)]),
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
            vec![values("ppp0", "fd00::10", 17, 5353)]
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
            pub0_v4(80, Protocol::Tcp, 80),
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
        let s = pub0_v4(80, Protocol::Tcp, 80);
        let p = Policy::new(&[s.clone(), s], 1);
        assert_eq!(p.prerouting.rules.len(), 1 + 3);
        assert_eq!(p.postrouting.rules.len(), 1 + 3 * 2);
        assert_eq!(p.element_count(), 3);
    }

    #[test]
    fn protocols_map_to_numbers() {
        let s = pub0_v4(53, Protocol::Udp, 53);
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
    fn elements_differ_only_in_their_key() {
        // Two `*` services on the same port with different actual servers: one inbound element
        // (the set's key has no address), two reply elements.
        let services: Vec<Service> = ["192.168.77.10", "192.168.77.11"]
            .iter()
            .map(|act| svc("pub0", AppAddr::Interface, 53, Protocol::Udp, act, 53))
            .collect();
        let p = Policy::new(&services, 1);
        assert_eq!(p.set(SetKind::In4Local).unwrap().len(), 1);
        assert_eq!(p.set(SetKind::Out4).unwrap().len(), 2);
    }
}
