//! Which packets netnat steers into its queue, as plain data.
//!
//! The policy is computed from the services alone, without the kernel, so it can be tested,
//! rendered for `netnat rules` and turned into netlink messages by the same code path. Every
//! [`Match`] item corresponds to exactly one "load + compare" pair of nftables expressions; the
//! order of the items is the order of the expressions in the rule.
//!
//! Scaling note: with thousands of services, per-service rules would be replaced by set or map
//! lookups (`Match::Lookup`-style items plus a list of sets in the policy). The rule list keeps
//! that door open: nothing outside this module assumes one rule per service.

use std::collections::HashSet;
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
}

/// One match of a rule: a load and an equality compare.
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
}

/// What a rule does with a matching packet. Only the queue for now; its number and spread come
/// from the [`Policy`] so that every rule agrees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Queue,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub verdict: Verdict,
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

/// A base chain of type filter with policy accept (netnat never drops by itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSpec {
    pub name: &'static str,
    pub hook: Hook,
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
    /// How many queues the verdicts spread over (1 = no fanout). Kept here so that fanout over
    /// several consumer threads can come later without changing the rules.
    pub queues_total: u16,
    /// Inbound: public side → apparent endpoint, and ICMP errors addressed to it.
    pub prerouting: ChainSpec,
    /// Replies: actual server → public side, and ICMP errors leaving on a public interface.
    pub postrouting: ChainSpec,
}

impl Policy {
    /// The rules steering exactly the services' packets (and the ICMP errors about them) to
    /// queue `queue`. Duplicate rules (e.g. the ICMP rules shared by services on the same
    /// interface) appear once, in first-seen order.
    pub fn new(services: &[Service], queue: u16) -> Policy {
        let mut pre = RuleList::default();
        let mut post = RuleList::default();

        for s in services {
            pre.push(inbound_rule(s));
            post.push(reply_rule(s));
        }
        // ICMP errors after the service rules: they are rare, the service rules are hot.
        for s in services {
            let (family, dst) = inbound_destination(s);
            let (proto, types) = family.icmp();
            for &t in types {
                let mut m = vec![Match::IifName(s.iface.clone())];
                m.extend(dst.iter().cloned());
                m.push(Match::L4Proto(proto));
                m.push(Match::IcmpType(t));
                pre.push(queue_rule(m));
            }
        }
        for s in services {
            let family = Family::of(&s.act_addr);
            let (proto, types) = family.icmp();
            for &t in types {
                reply_icmp_rule(&mut post, &s.iface, family, proto, t);
            }
        }

        Policy {
            table: TABLE_NAME,
            queue,
            queues_total: 1,
            prerouting: ChainSpec {
                name: "prerouting",
                hook: Hook::Prerouting,
                priority: PREROUTING_PRIORITY,
                rules: pre.rules,
            },
            postrouting: ChainSpec {
                name: "postrouting",
                hook: Hook::Postrouting,
                priority: POSTROUTING_PRIORITY,
                rules: post.rules,
            },
        }
    }

    /// The queue verdict's parameters: never bypass, no CPU fanout.
    pub fn queue_spec(&self) -> QueueSpec {
        QueueSpec {
            num: self.queue,
            total: self.queues_total.max(1),
            bypass: false,
            cpu_fanout: false,
        }
    }

    /// Both chains, in the order they are created.
    pub fn chains(&self) -> [&ChainSpec; 2] {
        [&self.prerouting, &self.postrouting]
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

fn inbound_rule(s: &Service) -> Rule {
    let (_, dst) = inbound_destination(s);
    let mut m = vec![Match::IifName(s.iface.clone())];
    m.extend(dst);
    m.push(Match::L4Proto(l4(s.protocol)));
    m.push(Match::Dport(s.app_port));
    queue_rule(m)
}

fn reply_rule(s: &Service) -> Rule {
    let f = Family::of(&s.act_addr);
    queue_rule(vec![
        Match::OifName(s.iface.clone()),
        Match::NfProto(f),
        Match::Saddr(s.act_addr),
        Match::L4Proto(l4(s.protocol)),
        Match::Sport(s.act_port),
    ])
}

/// ICMP errors leaving on a public interface: from the actual server (quoting its private
/// address) or from the router itself (quoting the rewritten tuple), so no address match.
fn reply_icmp_rule(list: &mut RuleList, iface: &str, family: Family, proto: u8, t: u8) {
    list.push(queue_rule(vec![
        Match::OifName(iface.to_string()),
        Match::NfProto(family),
        Match::L4Proto(proto),
        Match::IcmpType(t),
    ]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Flags;

    fn svc(
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
            flags: Flags(0),
        }
    }

    fn fixed(a: &str) -> AppAddr {
        AppAddr::Fixed(a.parse().unwrap())
    }

    fn q(m: Vec<Match>) -> Rule {
        queue_rule(m)
    }

    #[test]
    fn chains_hooks_priorities_and_queue_defaults() {
        let p = Policy::new(&[], 4747);
        assert_eq!(p.table, "netnat");
        assert_eq!(p.prerouting.hook, Hook::Prerouting);
        assert_eq!(p.prerouting.priority, -300);
        assert_eq!(p.postrouting.hook, Hook::Postrouting);
        assert_eq!(p.postrouting.priority, 300);
        assert!(p.prerouting.rules.is_empty() && p.postrouting.rules.is_empty());
        assert_eq!(p.queues_total, 1);
        let qs = p.queue_spec();
        assert_eq!((qs.num, qs.total, qs.flags()), (4747, 1, 0));
        assert!(!qs.bypass);
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
        let ip = |a: &str| -> IpAddr { a.parse().unwrap() };
        assert_eq!(
            p.prerouting.rules[0],
            q(vec![
                Match::IifName("pub0".into()),
                Match::NfProto(Family::Ipv4),
                Match::Daddr(ip("10.99.1.1")),
                Match::L4Proto(6),
                Match::Dport(80),
            ])
        );
        // Then the three ICMPv4 error types addressed to the apparent address.
        let icmp: Vec<_> = p.prerouting.rules[1..].to_vec();
        assert_eq!(icmp.len(), 3);
        for (r, t) in icmp.iter().zip([3, 11, 12]) {
            assert_eq!(
                r,
                &q(vec![
                    Match::IifName("pub0".into()),
                    Match::NfProto(Family::Ipv4),
                    Match::Daddr(ip("10.99.1.1")),
                    Match::L4Proto(1),
                    Match::IcmpType(t),
                ])
            );
        }
        assert_eq!(
            p.postrouting.rules[0],
            q(vec![
                Match::OifName("pub0".into()),
                Match::NfProto(Family::Ipv4),
                Match::Saddr(ip("192.168.77.10")),
                Match::L4Proto(6),
                Match::Sport(8080),
            ])
        );
        assert_eq!(p.postrouting.rules.len(), 1 + 3);
        assert_eq!(
            p.postrouting.rules[3],
            q(vec![
                Match::OifName("pub0".into()),
                Match::NfProto(Family::Ipv4),
                Match::L4Proto(1),
                Match::IcmpType(12),
            ])
        );
    }

    #[test]
    fn ipv6_interface_service_uses_fib_and_family_guard() {
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
            p.prerouting.rules[0].matches,
            vec![
                Match::IifName("ppp0".into()),
                Match::NfProto(Family::Ipv6),
                Match::FibDaddrIifLocal,
                Match::L4Proto(17),
                Match::Dport(53),
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
            p.postrouting.rules[0].matches[1..3],
            [
                Match::NfProto(Family::Ipv6),
                Match::Saddr("fd00::10".parse().unwrap())
            ]
        );
        assert_eq!(p.postrouting.rules.len(), 1 + 4);
    }

    #[test]
    fn ipv4_interface_service_guards_family_before_fib() {
        let s = svc(
            "ppp0",
            AppAddr::Interface,
            25,
            Protocol::Tcp,
            "192.168.77.10",
            25,
        );
        let p = Policy::new(&[s], 1);
        assert_eq!(
            p.prerouting.rules[0].matches[1..3],
            [Match::NfProto(Family::Ipv4), Match::FibDaddrIifLocal]
        );
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
        // pub0/10.99.1.1: 3, pub0/10.99.1.2: 3, pub0/fib v6: 4, pub1/fib v4: 3.
        assert_eq!(pre_icmp, 3 + 3 + 4 + 3);
        let post_icmp = p.postrouting.rules.iter().filter(is_icmp).count();
        // pub0 v4: 3, pub0 v6: 4, pub1 v4: 3.
        assert_eq!(post_icmp, 3 + 4 + 3);
        // Every rule exactly once.
        for chain in p.chains() {
            let set: HashSet<_> = chain.rules.iter().collect();
            assert_eq!(set.len(), chain.rules.len());
        }
        // Service rules come first, in service order.
        assert_eq!(
            p.prerouting.rules[0].matches.last(),
            Some(&Match::Dport(80))
        );
        assert_eq!(
            p.prerouting.rules[1].matches.last(),
            Some(&Match::Dport(53))
        );
        assert_eq!(p.prerouting.rules.len(), 6 + 13);
        assert_eq!(p.postrouting.rules.len(), 6 + 10);
    }

    #[test]
    fn identical_services_give_one_rule() {
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
        assert_eq!(p.postrouting.rules.len(), 1 + 3);
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
        assert!(p.prerouting.rules[0].matches.contains(&Match::L4Proto(17)));
        assert!(p.postrouting.rules[0].matches.contains(&Match::L4Proto(17)));
    }
}
