//! Policy rules into nftables expressions: each [`Match`] of a rule becomes the loads and
//! compares nft itself would generate, each [`Verdict`] its verdict expression.
//!
//! May use: `nftnl` expressions, `expr` for the ones nftnl lacks, `policy` for what to build.

use std::ffi::CString;
use std::net::IpAddr;

use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Conntrack, Expression, Immediate, Ipv4HeaderField, Ipv6HeaderField,
    Lookup, Meta, NetworkHeaderField, Payload, Register, States, TransportHeaderField,
};
use nftnl::set::Set;
use nftnl::{Chain, Rule};

use super::batch::QueueExprKind;
use super::expr::{
    CompatNfqueue, Ct, FibDaddrIifType, Load, NativeQueue, RTN_LOCAL, Source, ct_label_bytes,
    ifname_bytes, reg32_at,
};
use super::family::Family;
use super::objects::NoKey;
use super::rules::{Match, QueueSpec, Rule as PolicyRule, Verdict};
use super::sets::KeyField;

fn eq(data: &[u8]) -> Cmp<&[u8]> {
    Cmp::new(CmpOp::Eq, data)
}

fn add(rule: &mut Rule<'_>, load: &impl Expression, value: &[u8]) {
    rule.add_expr(load);
    rule.add_expr(&eq(value));
}

/// Transport header bytes (nftnl's "bits" fields of raw payloads are really bytes).
fn th(offset: u32, len: u32) -> Payload {
    Payload::Transport(TransportHeaderField::Raw {
        offset_bits: offset,
        length_bits: len,
    })
}

/// Where a key component comes from.
pub(super) fn key_source(f: KeyField) -> Source {
    let meta = |k: libc::c_int| Source::Meta(k as u32);
    let net = |offset, len| Source::Network { offset, len };
    match f {
        KeyField::IifName => meta(libc::NFT_META_IIFNAME),
        KeyField::OifName => meta(libc::NFT_META_OIFNAME),
        KeyField::L4Proto => meta(libc::NFT_META_L4PROTO),
        KeyField::Saddr(Family::Ipv4) => net(12, 4),
        KeyField::Daddr(Family::Ipv4) => net(16, 4),
        KeyField::Saddr(Family::Ipv6) => net(8, 16),
        KeyField::Daddr(Family::Ipv6) => net(24, 16),
        KeyField::Sport => Source::Transport { offset: 0, len: 2 },
        KeyField::Dport => Source::Transport { offset: 2, len: 2 },
        KeyField::Iif => meta(libc::NFT_META_IIF),
        KeyField::Oif => meta(libc::NFT_META_OIF),
        KeyField::Ports => Source::Transport { offset: 0, len: 4 },
    }
}

/// Where a reply set's key component comes from when looked up with the packet quoted in an
/// ICMP error (8 bytes of ICMP header, then the quoted IP header): the quote's destination
/// address, protocol and destination port stand where a reply's source, protocol and source
/// port stand. Offsets assume a 20-byte quoted IPv4 header or a 40-byte IPv6 one.
fn quoted_key_source(f: KeyField, family: Family) -> Source {
    let th = |offset, len| Source::Transport { offset, len };
    match (f, family) {
        (KeyField::Saddr(Family::Ipv4), _) => th(8 + 16, 4),
        (KeyField::Saddr(Family::Ipv6), _) => th(8 + 24, 16),
        (KeyField::L4Proto, Family::Ipv4) => th(8 + 9, 1),
        (KeyField::L4Proto, Family::Ipv6) => th(8 + 6, 1),
        (KeyField::Sport, Family::Ipv4) => th(8 + 20 + 2, 2),
        (KeyField::Sport, Family::Ipv6) => th(8 + 40 + 2, 2),
        (other, _) => key_source(other),
    }
}

/// The expressions of one rule: each plain match is a load into register 1 and an equality
/// compare; a lookup loads its key's components into consecutive 32-bit registers from
/// `NFT_REG32_00` (the first quarter of register 1, where the lookup reads) and looks the key
/// up. Compared data is in the byte order the load produces: network order for packet fields,
/// native order for meta and fib values.
pub(super) fn rule<'a>(
    chain: &'a Chain<'a>,
    r: &PolicyRule,
    q: &QueueSpec,
    kind: QueueExprKind,
    sets: &[Set<'_, NoKey>],
) -> Rule<'a> {
    let mut rule = Rule::new(chain);
    for m in &r.matches {
        match m {
            Match::IifName(n) => add(&mut rule, &Meta::IifName, &ifname_bytes(n)),
            Match::OifName(n) => add(&mut rule, &Meta::OifName, &ifname_bytes(n)),
            Match::NfProto(f) => add(&mut rule, &Meta::NfProto, &[f.nfproto()]),
            Match::Daddr(IpAddr::V4(a)) => add(
                &mut rule,
                &Payload::Network(NetworkHeaderField::Ipv4(Ipv4HeaderField::Daddr)),
                &a.octets(),
            ),
            Match::Daddr(IpAddr::V6(a)) => add(
                &mut rule,
                &Payload::Network(NetworkHeaderField::Ipv6(Ipv6HeaderField::Daddr)),
                &a.octets(),
            ),
            Match::Saddr(IpAddr::V4(a)) => add(
                &mut rule,
                &Payload::Network(NetworkHeaderField::Ipv4(Ipv4HeaderField::Saddr)),
                &a.octets(),
            ),
            Match::Saddr(IpAddr::V6(a)) => add(
                &mut rule,
                &Payload::Network(NetworkHeaderField::Ipv6(Ipv6HeaderField::Saddr)),
                &a.octets(),
            ),
            Match::FibDaddrIifLocal => add(&mut rule, &FibDaddrIifType, &RTN_LOCAL.to_ne_bytes()),
            Match::L4Proto(p) => add(&mut rule, &Meta::L4Proto, &[*p]),
            Match::Dport(p) => add(&mut rule, &th(2, 2), &p.to_be_bytes()),
            Match::Sport(p) => add(&mut rule, &th(0, 2), &p.to_be_bytes()),
            Match::IcmpType(t) => add(&mut rule, &th(0, 1), &[*t]),
            Match::QuotedByteNot { offset, value } => {
                rule.add_expr(&th(u32::from(*offset), 1));
                rule.add_expr(&Cmp::new(CmpOp::Neq, *value));
            }
            Match::Lookup(set_kind) | Match::LookupQuoted(set_kind) => {
                let quoted = matches!(m, Match::LookupQuoted(_));
                let mut offset = 0;
                for &f in set_kind.key() {
                    let source = if quoted {
                        quoted_key_source(f, set_kind.family())
                    } else {
                        key_source(f)
                    };
                    rule.add_expr(&Load {
                        source,
                        dreg: reg32_at(offset),
                    });
                    offset += f.padded_len();
                }
                let wanted = CString::new(set_kind.name()).expect("set name without NUL");
                let set = sets
                    .iter()
                    .find(|s| s.get_name() == wanted.as_c_str())
                    .expect("the policy has a set for each of its lookups");
                rule.add_expr(&Lookup::new(set));
            }
            Match::CtStateNew => {
                // What nft generates for `ct state new`: state is a bit mask, so mask and test
                // for non-zero rather than compare for equality.
                let new = States::NEW.bits();
                rule.add_expr(&Conntrack::State);
                rule.add_expr(&Bitwise::new(new, 0u32));
                rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
            }
            Match::CtStateInvalid => {
                rule.add_expr(&Conntrack::State);
                rule.add_expr(&Bitwise::new(States::INVALID.bits(), 0u32));
                rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
            }
            Match::CtDirection(d) => add(
                &mut rule,
                &Ct {
                    key: libc::NFT_CT_DIRECTION as u32,
                    set: false,
                },
                &[d.value()],
            ),
            Match::CtLabel(bit) => {
                // As nft does it: mask the 128 label bits with the one wanted, test non-zero.
                let label = ct_label_bytes(*bit);
                rule.add_expr(&Ct {
                    key: libc::NFT_CT_LABELS as u32,
                    set: false,
                });
                rule.add_expr(&Bitwise::new(&label[..], &[0u8; 16][..]));
                rule.add_expr(&Cmp::new(CmpOp::Neq, &[0u8; 16][..]));
            }
            Match::MarkHas(bits) | Match::MarkLacks(bits) => {
                let op = if matches!(m, Match::MarkHas(_)) {
                    CmpOp::Eq
                } else {
                    CmpOp::Neq
                };
                rule.add_expr(&Meta::Mark { set: false });
                rule.add_expr(&Bitwise::new(*bits, 0u32));
                rule.add_expr(&Cmp::new(op, *bits));
            }
        }
    }
    match r.verdict {
        Verdict::Queue => match kind {
            QueueExprKind::Native => rule.add_expr(&NativeQueue {
                num: q.num,
                total: q.total,
                flags: q.flags(),
            }),
            QueueExprKind::Compat => rule.add_expr(&CompatNfqueue {
                num: q.num,
                total: q.total,
                flags: q.flags(),
            }),
        },
        Verdict::Continue => {}
        Verdict::Drop => rule.add_expr(&nftnl::expr::Verdict::Drop),
        Verdict::SetCtLabel(bit) => {
            rule.add_expr(&Immediate::new(ct_label_bytes(bit), Register::Reg1));
            rule.add_expr(&Ct {
                key: libc::NFT_CT_LABELS as u32,
                set: true,
            });
        }
        Verdict::ClearMark(bits) => {
            rule.add_expr(&Meta::Mark { set: false });
            rule.add_expr(&Bitwise::new(!bits, 0u32));
            rule.add_expr(&Meta::Mark { set: true });
        }
    }
    if let Some(c) = r.comment {
        let c = CString::new(c).expect("comment without NUL");
        rule.set_comment(c)
            .expect("netnat's comments fit libnftnl's limit");
    }
    rule
}

#[cfg(test)]
mod tests {
    use super::super::batch::{self, NFT_TABLE_F_OWNER, set_id};
    use super::super::error::Label;
    use super::super::guard::GUARD_TABLE;
    use super::super::sets::SetKind;
    use super::super::walk::*;
    use super::*;

    #[test]
    fn native_queue_expression_attributes() {
        let (batch, labels) = batch::install(&sample(), QueueExprKind::Native);
        let all = rules(&batch);
        let rule_labels = labels
            .iter()
            .filter(|l| matches!(l, Label::Rule { .. }))
            .count();
        assert_eq!(all.len(), rule_labels, "one label per rule message");
        let rules = queue_rules(&batch);
        assert_eq!(rules.len(), queue_rule_count(&sample()));
        assert_eq!(
            all.len(),
            rules.len() + 1 + 3,
            "plus the conntrack rule and the guard's three without a queue verdict"
        );
        for r in &rules {
            let (name, data) = r.last().unwrap();
            assert_eq!(name, "queue");
            let a = attrs(data);
            // NFTA_QUEUE_NUM/TOTAL/FLAGS: 16-bit, network byte order.
            assert_eq!(attr(&a, 1), Some(&4747u16.to_be_bytes()[..]));
            assert_eq!(attr(&a, 2), Some(&1u16.to_be_bytes()[..]));
            assert_eq!(
                attr(&a, 3),
                Some(&0u16.to_be_bytes()[..]),
                "no bypass, no fanout"
            );
        }
    }

    #[test]
    fn compat_queue_expression_attributes() {
        let (batch, _) = batch::install(&sample(), QueueExprKind::Compat);
        let rules = queue_rules(&batch);
        assert_eq!(rules.len(), queue_rule_count(&sample()));
        for r in rules {
            let (name, data) = r.last().unwrap();
            assert_eq!(name, "target");
            let a = attrs(data);
            assert_eq!(cstr(attr(&a, 1).unwrap()), "NFQUEUE");
            assert_eq!(attr(&a, 2), Some(&3u32.to_be_bytes()[..]), "revision 3");
            let info = attr(&a, 3).unwrap();
            assert_eq!(info, &crate::nft::expr::nfqueue_v3_info(4747, 1, 0)[..]);
        }
    }

    #[test]
    fn lookup_rule_loads_the_key_into_consecutive_registers() {
        let (batch, _) = batch::install(&sample(), QueueExprKind::Native);
        // The `*` service's rule: nfproto guard, key loads, lookup, fib, queue.
        let inbound = &rules(&batch)[0];
        let names: Vec<&str> = inbound.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "meta", "cmp", "meta", "meta", "payload", "lookup", "fib", "cmp", "queue"
            ]
        );
        assert_eq!(cmp_value(&inbound[1]), [libc::NFPROTO_IPV4 as u8]);
        // NFTA_META_DREG 1, NFTA_META_KEY 2.
        let meta = |i: usize| {
            let a = attrs(&inbound[i].1);
            (u32_attr(&a, 2).unwrap(), u32_attr(&a, 1).unwrap())
        };
        assert_eq!(
            meta(2),
            (libc::NFT_META_IIFNAME as u32, 8),
            "16 bytes: 8..=11"
        );
        assert_eq!(meta(3), (libc::NFT_META_L4PROTO as u32, 12));
        // NFTA_PAYLOAD_DREG 1, BASE 2, OFFSET 3, LEN 4.
        let p = attrs(&inbound[4].1);
        assert_eq!(u32_attr(&p, 1), Some(13));
        assert_eq!(
            u32_attr(&p, 2),
            Some(libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32)
        );
        assert_eq!((u32_attr(&p, 3), u32_attr(&p, 4)), (Some(2), Some(2)));
        // NFTA_LOOKUP_SET 1, SREG 2, SET_ID 4.
        let l = attrs(&inbound[5].1);
        assert_eq!(cstr(attr(&l, 1).unwrap()), "in4_local");
        assert_eq!(u32_attr(&l, 2), Some(libc::NFT_REG_1 as u32));
        assert_eq!(u32_attr(&l, 4), Some(set_id(SetKind::In4Local, true)));
        let fib = attrs(&inbound[6].1);
        // NFTA_FIB_DREG, NFTA_FIB_RESULT (addrtype), NFTA_FIB_FLAGS (daddr | iif).
        assert_eq!(attr(&fib, 1), Some(&1u32.to_be_bytes()[..]));
        assert_eq!(attr(&fib, 2), Some(&3u32.to_be_bytes()[..]));
        assert_eq!(attr(&fib, 3), Some(&(2u32 | 8).to_be_bytes()[..]));
        assert_eq!(
            cmp_value(&inbound[7]),
            2u32.to_ne_bytes(),
            "RTN_LOCAL, native order"
        );
    }

    #[test]
    fn icmp_rules_keep_plain_compares() {
        let (batch, _) = batch::install(&sample(), QueueExprKind::Native);
        let icmp = &rules(&batch)[1];
        let names: Vec<&str> = icmp.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "meta", "cmp", "meta", "cmp", "fib", "cmp", "meta", "cmp", "payload", "cmp",
                "queue"
            ]
        );
        let mut ifname = b"ppp0".to_vec();
        ifname.resize(16, 0);
        assert_eq!(
            cmp_value(&icmp[1]),
            ifname,
            "interface name zero-padded to IFNAMSIZ"
        );
        assert_eq!(cmp_value(&icmp[7]), [1], "ICMP");
        assert_eq!(cmp_value(&icmp[9]), [3], "destination unreachable");
    }

    #[test]
    fn conntrack_rule_is_ct_state_new_without_verdict() {
        let (batch, labels) = batch::install(&sample(), QueueExprKind::Native);
        let all = rules(&batch);
        // The table's last rule; the guard's five follow it.
        let ct = &all[all.len() - 6];
        let names: Vec<&str> = ct.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["ct", "bitwise", "cmp"], "no verdict expression");
        let rule_labels: Vec<&Label> = labels
            .iter()
            .filter(|l| matches!(l, Label::Rule { .. }))
            .collect();
        match rule_labels[rule_labels.len() - 6] {
            Label::Rule {
                chain,
                text,
                queues,
            } => {
                assert_eq!(*chain, "conntrack");
                assert!(text.starts_with("ct state new comment "), "{text}");
                assert!(!queues);
            }
            l => panic!("{l:?}"),
        }
        // The chain message has no hook.
        let msgs = messages(&batch);
        let chain = msgs
            .iter()
            .filter(|(t, _, _)| *t == libc::NFT_MSG_NEWCHAIN as u16)
            .map(|(_, _, a)| a.clone())
            .find(|a| cstr(attr(&attrs(a), 3).unwrap()) == "conntrack")
            .expect("conntrack chain");
        // NFTA_CHAIN_HOOK 4.
        assert_eq!(attr(&attrs(&chain), 4), None);
    }

    #[test]
    fn guard_rules_in_their_own_unowned_table_in_the_same_batch() {
        let p = sample().with_mark(0x4e00);
        let (batch, labels) = batch::install(&p, QueueExprKind::Native);
        let msgs = messages(&batch);
        // Both tables are added; only netnat's carries the owner flag (NFTA_TABLE_FLAGS 2).
        let tables: Vec<(String, Option<Vec<u8>>)> = msgs
            .iter()
            .filter(|(t, _, _)| *t == libc::NFT_MSG_NEWTABLE as u16)
            .map(|(_, _, a)| {
                let a = attrs(a);
                (
                    cstr(attr(&a, 1).unwrap()).to_string(),
                    attr(&a, 2).map(<[u8]>::to_vec),
                )
            })
            .collect();
        assert_eq!(
            tables,
            [
                (
                    "netnat".to_string(),
                    Some(NFT_TABLE_F_OWNER.to_be_bytes().to_vec())
                ),
                ("netnat_guard".to_string(), None),
            ]
        );
        assert!(labels.contains(&Label::FlushRules(GUARD_TABLE)));
        let all = rules(&batch);
        let guard = &all[all.len() - 5..];
        let names =
            |r: &[(String, Vec<u8>)]| -> Vec<String> { r.iter().map(|(n, _)| n.clone()).collect() };
        // flows: mark & M == M, ct direction original, label bit 127 set.
        assert_eq!(
            names(&guard[0]),
            ["meta", "bitwise", "cmp", "ct", "cmp", "immediate", "ct"]
        );
        assert_eq!(cmp_value(&guard[0][2]), 0x4e00u32.to_ne_bytes());
        assert_eq!(cmp_value(&guard[0][4]), [0], "IP_CT_DIR_ORIGINAL");
        // Translated ICMP errors that conntrack relates to nothing go back to the queue.
        for (r, proto) in [(&guard[1], 1u8), (&guard[2], 58)] {
            let queued = [
                "meta", "bitwise", "cmp", "meta", "cmp", "ct", "bitwise", "cmp", "queue",
            ];
            assert_eq!(names(r), queued);
            assert_eq!(cmp_value(&r[4]), [proto]);
        }
        // replies_clear: reply, label, then mark & ~M written back.
        let clear = [
            "ct", "cmp", "ct", "bitwise", "cmp", "meta", "bitwise", "meta",
        ];
        assert_eq!(names(&guard[3]), clear);
        assert_eq!(cmp_value(&guard[3][1]), [1], "IP_CT_DIR_REPLY");
        assert_eq!(cmp_value(&guard[3][4]), [0u8; 16], "label test: non-zero");
        // replies_guard: reply, label, mark lacks M, drop.
        let drop = [
            "ct",
            "cmp",
            "ct",
            "bitwise",
            "cmp",
            "meta",
            "bitwise",
            "cmp",
            "immediate",
        ];
        assert_eq!(names(&guard[4]), drop);
        assert_eq!(cmp_value(&guard[4][7]), 0x4e00u32.to_ne_bytes());
    }

    #[test]
    fn label_127_is_the_top_bit_of_the_last_word() {
        let b = super::super::expr::ct_label_bytes(127);
        assert_eq!(&b[12..], &0x8000_0000u32.to_ne_bytes());
        assert!(b[..12].iter().all(|&x| x == 0));
        let b = super::super::expr::ct_label_bytes(0);
        assert_eq!(&b[..4], &1u32.to_ne_bytes());
    }
}
