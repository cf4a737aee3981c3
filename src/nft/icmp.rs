//! The rules that steer ICMP errors about the services' flows to the queue: errors addressed to
//! an apparent address (fixed ones through a set, `*` ones per interface) and errors leaving
//! on a public interface that quote an actual endpoint. Steps of [`super::Policy::new`].
//!
//! Pure; uses `config` (the services), `family`, `sets` and `rules`.

use std::collections::HashSet;

use super::family::Family;
use super::rules::{Match, RuleList, queue_rule};
use super::sets::{SetKind, SetSpec};
use crate::config::{AppAddr, Service};

/// ICMP errors addressed to fixed apparent addresses: one rule per error type and family.
pub(super) fn fixed_address_icmp_rules(sets: &[SetSpec], pre: &mut RuleList) {
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
pub(super) fn interface_icmp_rules(services: &[Service], pre: &mut RuleList) {
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
pub(super) fn outbound_icmp_rules(services: &[Service], post: &mut RuleList) {
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
