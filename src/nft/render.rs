//! The policy in nft syntax, as `nft list table inet netnat` prints the installed table.
//!
//! The kernel test compares this text with nft's own listing, so the spelling follows what nft
//! prints for the expressions netnat installs, including the dependencies nft leaves out when
//! listing: `meta nfproto` before `ip daddr` or `icmp type` (also inside a concatenation), and
//! `meta l4proto` before a transport port or ICMP type.
//!
//! Set elements are printed in the policy's order; nft prints them in the kernel's hash order,
//! so a comparison with `nft list` has to sort the element lines of each set.

use std::fmt::Write;
use std::net::IpAddr;

use super::family::{Family, IPPROTO_ICMP, IPPROTO_ICMPV6};
use super::policy::Policy;
use super::rules::{ChainSpec, CtDirection, Hook, Match, QueueSpec, Rule, Verdict};
use super::sets::{KeyField, KeyValue, SetSpec};

/// Both tables, netnat's and the leak guard's, each ending in a newline, a blank line between.
pub fn render(policy: &Policy) -> String {
    let mut out = render_table(policy);
    out.push('\n');
    out.push_str(&render_guard(policy));
    out
}

/// The leak guard's table, as `nft list table inet netnat_guard` prints it.
pub fn render_guard(policy: &Policy) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table inet {} {{", policy.guard.table);
    for (i, chain) in policy.guard.chains().into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        render_chain(&mut out, chain, &policy.queue_spec(), &[]);
    }
    out.push_str("}\n");
    out
}

/// netnat's own table, ending in a newline. The table carries the owner flag when installed,
/// which nft lists as `flags owner`; nft also appends `# progname <owner>` to the first line of
/// an owned table, which depends on the running process and is left out here.
pub fn render_table(policy: &Policy) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table inet {} {{", policy.table);
    let _ = writeln!(out, "\tflags owner");
    for set in &policy.sets {
        out.push('\n');
        render_set(&mut out, set);
    }
    if let Some(off) = &policy.offload {
        super::offload::render_sets(&mut out, off);
    }
    for chain in policy.chains() {
        out.push('\n');
        let first = match (&policy.offload, chain.hook) {
            (Some(off), Some(hook)) => {
                super::offload::queue_rules_text(off, hook == Hook::Prerouting)
            }
            _ => Vec::new(),
        };
        render_chain(&mut out, chain, &policy.queue_spec(), &first);
    }
    if let Some(rw) = &policy.rewrite {
        super::rewrite::render(&mut out, rw, policy.offload.as_ref());
    }
    out.push_str("}\n");
    out
}

/// A named set the way nft lists one with a concatenated key: one element per line, the
/// continuation lines aligned under the first element.
fn render_set(out: &mut String, set: &SetSpec) {
    let _ = writeln!(out, "\tset {} {{", set.kind.name());
    let types: Vec<&str> = set.kind.key().iter().map(|f| f.type_name()).collect();
    let _ = writeln!(out, "\t\ttype {}", types.join(" . "));
    if !set.is_empty() {
        let elements: Vec<String> = set.elements().map(|e| render_element(&e)).collect();
        let _ = writeln!(
            out,
            "\t\telements = {{ {} }}",
            elements.join(",\n\t\t\t     ")
        );
    }
    let _ = writeln!(out, "\t}}");
}

/// One set element: its component values joined by ` . `.
pub fn render_element(element: &[KeyValue]) -> String {
    let parts: Vec<String> = element
        .iter()
        .map(|v| match v {
            KeyValue::IfName(n) => format!("\"{n}\""),
            KeyValue::Addr(a) => a.to_string(),
            KeyValue::Proto(p) => proto_name(*p),
            KeyValue::Port(p) => p.to_string(),
        })
        .collect();
    parts.join(" . ")
}

/// A chain, `first` (rules of another part, e.g. offload's) before its own rules.
fn render_chain(out: &mut String, chain: &ChainSpec, queue: &QueueSpec, first: &[String]) {
    let _ = writeln!(out, "\tchain {} {{", chain.name);
    if let Some(hook) = chain.hook {
        let _ = writeln!(
            out,
            "\t\ttype filter hook {} priority {}; policy accept;",
            hook.name(),
            priority_name(hook, chain.priority)
        );
    }
    for text in first {
        let _ = writeln!(out, "\t\t{text}");
    }
    for rule in &chain.rules {
        let _ = writeln!(out, "\t\t{}", render_rule(rule, queue));
    }
    let _ = writeln!(out, "\t}}");
}

/// nft names the standard priorities of `inet` filter chains and prints others as numbers.
fn priority_name(hook: Hook, prio: i32) -> String {
    let name = match (prio, hook) {
        (-300, _) => Some("raw"),
        (-150, _) => Some("mangle"),
        (-100, Hook::Prerouting) => Some("dstnat"),
        (0, _) => Some("filter"),
        (50, _) => Some("security"),
        (100, Hook::Postrouting) => Some("srcnat"),
        _ => None,
    };
    name.map_or_else(|| prio.to_string(), str::to_string)
}

/// One rule on one line, without the chain's indentation.
pub fn render_rule(rule: &Rule, queue: &QueueSpec) -> String {
    let l4 = rule.matches.iter().find_map(|m| match m {
        Match::L4Proto(p) => Some(*p),
        _ => None,
    });
    let mut words: Vec<String> = Vec::new();
    for (i, m) in rule.matches.iter().enumerate() {
        let next = rule.matches.get(i + 1);
        match m {
            Match::IifName(n) => words.push(format!("iifname \"{n}\"")),
            Match::OifName(n) => words.push(format!("oifname \"{n}\"")),
            Match::NfProto(f) => {
                let implied_by_addr = matches!(next, Some(Match::Daddr(a) | Match::Saddr(a))
                    if Family::of(a) == *f)
                    || matches!(next, Some(Match::Lookup(k)) if k.key().iter().any(|c|
                        matches!(c, KeyField::Daddr(g) | KeyField::Saddr(g) if g == f)));
                let implied_by_icmp =
                    matches!(
                        (f, l4),
                        (Family::Ipv4, Some(IPPROTO_ICMP)) | (Family::Ipv6, Some(IPPROTO_ICMPV6))
                    ) && rule.matches.iter().any(|m| matches!(m, Match::IcmpType(_)));
                if !implied_by_addr && !implied_by_icmp {
                    words.push(format!("meta nfproto {}", family_name(*f)));
                }
            }
            Match::Daddr(a) => words.push(format!("{} daddr {a}", ip_kw(a))),
            Match::Saddr(a) => words.push(format!("{} saddr {a}", ip_kw(a))),
            Match::FibDaddrIifLocal => words.push("fib daddr . iif type local".into()),
            Match::L4Proto(p) => {
                let implied = matches!(
                    next,
                    Some(Match::Dport(_) | Match::Sport(_) | Match::IcmpType(_))
                );
                if !implied {
                    words.push(format!("meta l4proto {}", proto_name(*p)));
                }
            }
            Match::Dport(p) => words.push(format!("{} dport {p}", th_kw(l4))),
            Match::Sport(p) => words.push(format!("{} sport {p}", th_kw(l4))),
            Match::IcmpType(t) => words.push(match l4 {
                Some(IPPROTO_ICMPV6) => format!("icmpv6 type {}", icmpv6_type_name(*t)),
                _ => format!("icmp type {}", icmp_type_name(*t)),
            }),
            Match::Lookup(kind) => {
                let fields: Vec<&str> = kind.key().iter().map(|f| field_name(*f)).collect();
                words.push(format!("{} @{}", fields.join(" . "), kind.name()));
            }
            Match::LookupQuoted(kind) => {
                // Raw transport-header loads, in bits as nft writes them (see netlink.rs).
                let quoted = match kind.family() {
                    Family::Ipv4 => "@th,192,32 . @th,136,8 . @th,240,16",
                    Family::Ipv6 => "@th,256,128 . @th,112,8 . @th,400,16",
                };
                words.push(format!("oifname . {quoted} @{}", kind.name()));
            }
            Match::QuotedByteNot { offset, value } => {
                words.push(format!("@th,{},8 != {value:#x}", u32::from(*offset) * 8));
            }
            Match::CtStateNew => words.push("ct state new".into()),
            Match::CtDirection(d) => words.push(format!(
                "ct direction {}",
                match d {
                    CtDirection::Original => "original",
                    CtDirection::Reply => "reply",
                }
            )),
            Match::CtLabel(bit) => words.push(format!("ct label {bit}")),
            // nft prints mark values of a masked compare at their full 32-bit width.
            Match::MarkHas(m) => words.push(format!("meta mark & {m:#010x} == {m:#010x}")),
            Match::MarkLacks(m) => words.push(format!("meta mark & {m:#010x} != {m:#010x}")),
            Match::CtStateInvalid => words.push("ct state invalid".into()),
        }
    }
    match rule.verdict {
        Verdict::Queue => words.push(render_queue(queue)),
        Verdict::Continue => {}
        Verdict::Drop => words.push("drop".into()),
        Verdict::SetCtLabel(bit) => words.push(format!("ct label set {bit}")),
        Verdict::ClearMark(m) => words.push(format!("meta mark set meta mark & {:#010x}", !m)),
    }
    if let Some(c) = rule.comment {
        words.push(format!("comment \"{c}\""));
    }
    words.join(" ")
}

fn render_queue(q: &QueueSpec) -> String {
    let mut s = if q.total <= 1 {
        format!("queue num {}", q.num)
    } else {
        format!(
            "queue num {}-{}",
            q.num,
            u32::from(q.num) + u32::from(q.total) - 1
        )
    };
    let mut flags = Vec::new();
    if q.bypass {
        flags.push("bypass");
    }
    if q.cpu_fanout {
        flags.push("fanout");
    }
    if !flags.is_empty() {
        s.push(' ');
        s.push_str(&flags.join(","));
    }
    s
}

/// A key component as nft prints it inside a concatenation (`th`, not `tcp`: the protocol is
/// part of the key, not a dependency).
pub(super) fn field_name(f: KeyField) -> &'static str {
    match f {
        KeyField::IifName => "iifname",
        KeyField::OifName => "oifname",
        KeyField::Daddr(Family::Ipv4) => "ip daddr",
        KeyField::Daddr(Family::Ipv6) => "ip6 daddr",
        KeyField::Saddr(Family::Ipv4) => "ip saddr",
        KeyField::Saddr(Family::Ipv6) => "ip6 saddr",
        KeyField::L4Proto => "meta l4proto",
        KeyField::Dport => "th dport",
        KeyField::Sport => "th sport",
        KeyField::Iif => "meta iif",
        KeyField::Oif => "meta oif",
        KeyField::Ports => "th sport . th dport",
    }
}

pub(super) fn family_name(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "ipv4",
        Family::Ipv6 => "ipv6",
    }
}

fn ip_kw(a: &IpAddr) -> &'static str {
    match a {
        IpAddr::V4(_) => "ip",
        IpAddr::V6(_) => "ip6",
    }
}

fn th_kw(l4: Option<u8>) -> &'static str {
    match l4 {
        Some(6) => "tcp",
        Some(17) => "udp",
        _ => "th",
    }
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        IPPROTO_ICMPV6 => "ipv6-icmp".into(),
        n => n.to_string(),
    }
}

fn icmp_type_name(t: u8) -> String {
    match t {
        3 => "destination-unreachable".into(),
        11 => "time-exceeded".into(),
        12 => "parameter-problem".into(),
        n => n.to_string(),
    }
}

fn icmpv6_type_name(t: u8) -> String {
    match t {
        1 => "destination-unreachable".into(),
        2 => "packet-too-big".into(),
        3 => "time-exceeded".into(),
        4 => "parameter-problem".into(),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AppAddr, Protocol};
    use crate::nft::policy::svc;

    #[test]
    fn renders_the_table_as_nft_lists_it() {
        let services = [
            svc(
                "pub0",
                AppAddr::Fixed("10.99.1.1".parse().unwrap()),
                80,
                Protocol::Tcp,
                "192.168.77.10",
                8080,
            ),
            svc(
                "pub0",
                AppAddr::Fixed("10.99.1.1".parse().unwrap()),
                53,
                Protocol::Udp,
                "192.168.77.10",
                53,
            ),
            svc(
                "ppp0",
                AppAddr::Interface,
                53,
                Protocol::Udp,
                "fd00::53",
                53,
            ),
        ];
        let text = render_table(&Policy::new(&services, 4747));
        // A file, so that the expected listing reads as nft prints it (tabs, quotes).
        let expected = include_str!("testdata/table.nft");
        assert_eq!(text, expected);
    }

    #[test]
    fn guard_renders_as_nft_lists_it() {
        // What nft 1.0.6 printed for the same rules loaded from text.
        let expected = "\
table inet netnat_guard {
\tchain flows {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tmeta mark & 0x00004e00 == 0x00004e00 ct direction original ct label set 127
\t\tmeta mark & 0x00004e00 == 0x00004e00 meta l4proto icmp ct state invalid queue num 1
\t\tmeta mark & 0x00004e00 == 0x00004e00 meta l4proto ipv6-icmp ct state invalid queue num 1
\t}

\tchain replies_clear {
\t\ttype filter hook postrouting priority 290; policy accept;
\t\tct direction reply ct label 127 meta mark set meta mark & 0xffffb1ff
\t}

\tchain replies_guard {
\t\ttype filter hook postrouting priority 310; policy accept;
\t\tct direction reply ct label 127 meta mark & 0x00004e00 != 0x00004e00 drop
\t}
}
";
        let p = Policy::new(&[], 1).with_mark(0x4e00);
        assert_eq!(render_guard(&p), expected);
        let all = render(&p);
        assert!(all.starts_with(&render_table(&p)));
        assert!(all.ends_with(&format!("\n{expected}")));
        // The guard follows the `mark` setting.
        assert!(render_guard(&Policy::new(&[], 1).with_mark(0x10)).contains("& 0xffffffef"));
    }

    #[test]
    fn empty_policy_has_the_chains_and_no_set() {
        let text = render_table(&Policy::new(&[], 1));
        assert!(text.contains("chain prerouting {\n\t\ttype filter hook prerouting priority raw;"));
        assert!(
            text.contains("chain postrouting {\n\t\ttype filter hook postrouting priority 300;")
        );
        assert!(text.contains("\tchain conntrack {\n\t\tct state new comment "));
        assert!(!text.contains("queue"));
        assert!(!text.contains("set "));
    }

    #[test]
    fn queue_range_and_flags() {
        let mut q = QueueSpec {
            num: 10,
            total: 4,
            bypass: false,
            cpu_fanout: false,
        };
        assert_eq!(render_queue(&q), "queue num 10-13");
        q.total = 1;
        assert_eq!(render_queue(&q), "queue num 10");
        q.bypass = true;
        q.cpu_fanout = true;
        assert_eq!(render_queue(&q), "queue num 10 bypass,fanout");
    }

    #[test]
    fn ipv4_interface_service_keeps_nfproto() {
        let s = svc(
            "ppp0",
            AppAddr::Interface,
            25,
            Protocol::Tcp,
            "192.168.77.10",
            2525,
        );
        let p = Policy::new(&[s], 5);
        let line = render_rule(&p.prerouting.rules[0], &p.queue_spec());
        // No address in the key, so nft shows the family guard.
        assert_eq!(
            line,
            "meta nfproto ipv4 iifname . meta l4proto . th dport @in4_local fib daddr . iif type local queue num 5"
        );
        let line = render_rule(&p.postrouting.rules[0], &p.queue_spec());
        assert_eq!(
            line,
            "oifname . ip saddr . meta l4proto . th sport @out4 queue num 5"
        );
    }

    #[test]
    fn several_queues_fan_out_by_cpu() {
        let one = Policy::new(&[], 4747);
        assert_eq!(render_queue(&one.queue_spec()), "queue num 4747");
        let two = Policy::new(&[], 4747).with_queues(2);
        let q = two.queue_spec();
        assert!(q.cpu_fanout && !q.bypass && q.total == 2);
        assert_eq!(render_queue(&q), "queue num 4747-4748 fanout");
        assert_eq!(Policy::new(&[], 9).with_queues(0).queue_spec().total, 1);
    }
}
