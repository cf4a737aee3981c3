//! The batches netnat sends: the install batch that replaces both tables' content in one
//! commit, and the batch that deletes tables. Each message goes with a [`Label`] saying what
//! it is, so that a refusal can name it.
//!
//! May use: `nftnl` for chains, sets and the batch framing; `objects`, `elements` and
//! `translate` for the rest of what goes in; `render` for the rule texts of the labels.

use std::ffi::CString;
use std::fmt;

use nftnl::set::Set;
use nftnl::{
    Batch, Chain, ChainType, FinalizedBatch, MsgType, ProtoFamily, Table, default_batch_page_size,
};

use super::elements::{ElementsMsg, element_attr_len, elements_per_msg};
use super::error::Label;
use super::objects::{FlushRules, NoKey, TableMsg, new_set};
use super::policy::Policy;
use super::render::render_rule;
use super::rules::{ChainSpec, Hook, QueueSpec, Verdict};
use super::sets::SetKind;
use super::translate;

/// `NFT_TABLE_F_OWNER` from linux/netfilter/nf_tables.h (kernel ≥ 5.12).
pub const NFT_TABLE_F_OWNER: u32 = 0x2;

/// Which form of the queue verdict the kernel accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueExprKind {
    /// nft_queue's own `queue` expression.
    Native,
    /// The xtables NFQUEUE target (revision 3) through nft_compat. `nft list` shows it as a
    /// queue statement too, but a dump of it cannot be reloaded with `nft -f`.
    Compat,
}

impl fmt::Display for QueueExprKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueExprKind::Native => "native nft queue expression",
            QueueExprKind::Compat => "xtables NFQUEUE target through nft_compat",
        })
    }
}

/// The bytes of the batch [`NftSession::install`] sends for `policy`, built without a socket:
/// for the `config_to_batch` fuzz target, not an interface.
#[doc(hidden)]
pub fn install_batch_bytes(policy: &Policy, kind: QueueExprKind) -> Vec<u8> {
    let (batch, _) = install(policy, kind);
    batch.iter().flatten().copied().collect()
}

/// The install batch and what each of its messages is.
///
/// Order: the table (owned by this socket), its chains, a flush of all its rules, then each set
/// netnat knows of is deleted (created first if missing: add-then-delete is how an object that
/// may or may not exist is removed within one batch); then the policy's sets are created anew
/// with their elements, then the rules. Flushing the rules first releases every rule's
/// reference to a set, which is what allows deleting the sets in the same batch. Re-creating
/// the sets (rather than flushing and refilling them) keeps their order in the table the
/// policy's order, so `nft list` shows them as `render` does. The chains are kept, so the
/// hooks stay registered across a replacement; everything takes effect in one commit.
pub(super) fn install(policy: &Policy, kind: QueueExprKind) -> (FinalizedBatch, Vec<Label>) {
    // One page for the whole batch where it is bigger than the default: the batch is written
    // once, in order, and libnftnl moves a message that crosses a page's end to a new page, so
    // smaller pages would leave up to a maximal message (64 KiB) of slack in each.
    let estimate = policy
        .sets
        .iter()
        .map(|s| s.len() * element_attr_len(s.kind) + 128)
        .sum::<usize>()
        + 64 * 1024;
    let page = (default_batch_page_size() as usize).max(estimate);
    let mut batch = Batch::with_page_size(u32::try_from(page).unwrap_or(u32::MAX / 2));
    let mut labels = Vec::new();
    let name = CString::new(policy.table).expect("table name without NUL");
    // Only used for its name and family by the chain, set and rule messages.
    let table = Table::new(&name, ProtoFamily::Inet);
    let specs = policy.chains();
    let chains = add_table(
        &mut batch,
        &mut labels,
        (policy.table, &table),
        Some(NFT_TABLE_F_OWNER),
        &specs,
    );

    for set_kind in SetKind::ALL {
        let set = new_set(set_kind, set_id(set_kind, false), &table);
        batch.add(&set, MsgType::Add);
        labels.push(Label::Set(set_kind.name()));
        batch.add(&set, MsgType::Del);
        labels.push(Label::DelSet(set_kind.name()));
    }
    let mut sets = Vec::new();
    for spec in &policy.sets {
        let set_name = spec.kind.name();
        let id = set_id(spec.kind, true);
        let set = new_set(spec.kind, id, &table);
        batch.add(&set, MsgType::Add);
        labels.push(Label::Set(set_name));
        // As many elements per message as the element list attribute can hold (64 KiB), so
        // thousands of elements take a handful of messages.
        for elements in spec.raw().chunks(elements_per_msg(spec.kind)) {
            let msg = ElementsMsg {
                table: &name,
                name: set_name,
                set: spec,
                elements,
                data: None,
                id,
            };
            batch.add(&msg, MsgType::Add);
            labels.push(Label::Elements(set_name));
        }
        sets.push(set);
    }

    // Offload's sets, and its rules first in the queueing chains: an offloaded packet is
    // accepted before the queue rules see it.
    let offload = policy.offload.as_ref().map(|o| {
        (
            o,
            super::offload::add_sets(&mut batch, &mut labels, o, &table),
        )
    });
    if let Some((off, off_sets)) = &offload {
        for (spec, chain) in specs.iter().zip(&chains) {
            if let Some(hook) = spec.hook {
                let inbound = hook == Hook::Prerouting;
                let at = (chain, spec.name);
                super::offload::add_queue_rules(
                    &mut batch,
                    &mut labels,
                    (*off, off_sets),
                    at,
                    inbound,
                );
            }
        }
    }

    let queue = policy.queue_spec();
    let rules = Rules {
        queue: &queue,
        kind,
        sets: &sets,
    };
    rules.add(&mut batch, &mut labels, &specs, &chains);
    if let Some(rw) = &policy.rewrite {
        let off = offload.as_ref().map(|(o, s)| (*o, s));
        super::rewrite::add_to_batch(&mut batch, &mut labels, rw, (&name, &table), off);
    }

    // The leak guard, in the same commit: there is no moment in which a connection is
    // translated but not guarded, or the guard is keyed to a mark netnat no longer sets. Its
    // table is not owned (it must outlive this process); its chains are kept and its rules
    // replaced, like netnat's.
    let guard = &policy.guard;
    let guard_name = CString::new(guard.table).expect("table name without NUL");
    let guard_table = Table::new(&guard_name, ProtoFamily::Inet);
    let guard_specs = guard.chains();
    let guard_chains = add_table(
        &mut batch,
        &mut labels,
        (guard.table, &guard_table),
        None,
        &guard_specs,
    );
    rules.add(&mut batch, &mut labels, &guard_specs, &guard_chains);
    (batch.finalize(), labels)
}

/// Adds table `name` (with `flags`), its chains and a flush of all its rules to the batch;
/// returns the chains, for the rules that follow. Chains are kept across installs (their
/// hooks stay registered), rules replaced.
fn add_table<'a>(
    batch: &mut Batch,
    labels: &mut Vec<Label>,
    (name, table): (&'static str, &'a Table),
    flags: Option<u32>,
    specs: &[&ChainSpec],
) -> Vec<Chain<'a>> {
    batch.add(&TableMsg::new(name, flags), MsgType::Add);
    labels.push(Label::Table(name));
    let chains: Vec<Chain<'a>> = specs.iter().map(|s| chain(s, table)).collect();
    for (spec, chain) in specs.iter().zip(&chains) {
        batch.add(chain, MsgType::Add);
        labels.push(Label::Chain(spec.name));
    }
    batch.add(&FlushRules::new(table.get_name()), MsgType::Del);
    labels.push(Label::FlushRules(name));
    chains
}

/// What every rule of one install batch is built with.
struct Rules<'a> {
    queue: &'a QueueSpec,
    kind: QueueExprKind,
    sets: &'a [Set<'a, NoKey>],
}

impl Rules<'_> {
    /// Adds the rules of `specs` to their `chains`, each labelled with its nft text.
    fn add(
        &self,
        batch: &mut Batch,
        labels: &mut Vec<Label>,
        specs: &[&ChainSpec],
        chains: &[Chain<'_>],
    ) {
        for (spec, chain) in specs.iter().zip(chains) {
            for r in &spec.rules {
                let rule = translate::rule(chain, r, self.queue, self.kind, self.sets);
                batch.add(&rule, MsgType::Add);
                labels.push(Label::Rule {
                    chain: spec.name,
                    text: render_rule(r, self.queue).into(),
                    queues: r.verdict == Verdict::Queue,
                });
            }
        }
    }
}

/// Batch-unique set ids: the placeholder that is deleted, and the set that replaces it.
pub(super) fn set_id(kind: SetKind, live: bool) -> u32 {
    let n = kind as u32 + 1;
    if live {
        n + SetKind::ALL.len() as u32
    } else {
        n
    }
}

/// A base chain (filter, policy accept) or, without a hook, a regular chain.
pub(super) fn chain<'a>(spec: &ChainSpec, table: &'a Table) -> Chain<'a> {
    let name = CString::new(spec.name).expect("chain name without NUL");
    let mut c = Chain::new(&name, table);
    if let Some(hook) = spec.hook {
        let hook = match hook {
            Hook::Prerouting => nftnl::Hook::PreRouting,
            Hook::Postrouting => nftnl::Hook::PostRouting,
        };
        c.set_hook(hook, spec.priority);
        c.set_type(ChainType::Filter);
        c.set_policy(nftnl::Policy::Accept);
    }
    c
}

/// Deletes `tables` in one batch (all or none).
pub(super) fn delete_tables(tables: &[&'static str]) -> (FinalizedBatch, Vec<Label>) {
    let mut batch = Batch::new();
    let msgs: Vec<TableMsg> = tables.iter().map(|t| TableMsg::new(t, None)).collect();
    for m in &msgs {
        batch.add(m, MsgType::Del);
    }
    let labels = tables.iter().map(|t| Label::DelTable(t)).collect();
    (batch.finalize(), labels)
}

#[cfg(test)]
mod tests {
    use super::super::elements::{
        NFTA_DATA_VALUE, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET,
        push_element_key,
    };
    use super::super::sets::{concat_type, key_len};
    use super::super::walk::*;
    use super::*;
    use crate::config::{AppAddr, Flags, Protocol, Service};

    #[test]
    fn sets_are_created_filled_or_deleted() {
        const NFTA_SET_TABLE: u16 = 1;
        const NFTA_SET_NAME: u16 = 2;
        const NFTA_SET_KEY_TYPE: u16 = 4;
        const NFTA_SET_KEY_LEN: u16 = 5;
        let (batch, labels) = install(&sample(), QueueExprKind::Native);
        let msgs = messages(&batch);
        assert_eq!(msgs.len(), labels.len());
        let mut seen = Vec::new();
        for ((ty, _, a), label) in msgs.iter().zip(&labels) {
            let a = attrs(a);
            match label {
                Label::Set(n) => {
                    assert_eq!(*ty, libc::NFT_MSG_NEWSET as u16);
                    assert_eq!(cstr(attr(&a, NFTA_SET_TABLE).unwrap()), "netnat");
                    assert_eq!(cstr(attr(&a, NFTA_SET_NAME).unwrap()), *n);
                    let kind = SetKind::ALL.into_iter().find(|k| k.name() == *n).unwrap();
                    assert_eq!(
                        u32_attr(&a, NFTA_SET_KEY_TYPE),
                        Some(concat_type(kind.key()))
                    );
                    assert_eq!(
                        u32_attr(&a, NFTA_SET_KEY_LEN),
                        Some(key_len(kind.key()) as u32)
                    );
                    seen.push(format!("new {n}"));
                }
                Label::Elements(n) => {
                    assert_eq!(*ty, libc::NFT_MSG_NEWSETELEM as u16);
                    assert_eq!(cstr(attr(&a, NFTA_SET_ELEM_LIST_SET).unwrap()), *n);
                    let list = attrs(attr(&a, NFTA_SET_ELEM_LIST_ELEMENTS).unwrap());
                    seen.push(format!("{} in {n}", list.len()));
                }
                Label::DelSet(n) => {
                    assert_eq!(*ty, libc::NFT_MSG_DELSET as u16);
                    seen.push(format!("del {n}"));
                }
                _ => {}
            }
        }
        assert_eq!(
            seen,
            [
                "new in4",
                "del in4",
                "new in4_local",
                "del in4_local",
                "new in6",
                "del in6",
                "new in6_local",
                "del in6_local",
                "new out4",
                "del out4",
                "new out6",
                "del out6",
                "new icmp_in4",
                "del icmp_in4",
                "new icmp_in6",
                "del icmp_in6",
                "new in4_local",
                "1 in in4_local",
                "new out4",
                "1 in out4",
            ]
        );
    }

    #[test]
    fn thousands_of_elements_take_few_messages() {
        let services: Vec<Service> = (0..10_000u16)
            .map(|i| Service {
                iface: "pub0".into(),
                app_addr: AppAddr::Fixed("10.99.1.1".parse().unwrap()),
                app_port: i,
                protocol: Protocol::Tcp,
                act_addr: "192.168.77.10".parse().unwrap(),
                act_port: i,
                flags: Flags(0),
            })
            .collect();
        let policy = Policy::new(&services, 1);
        let (batch, labels) = install(&policy, QueueExprKind::Native);
        let element_msgs = labels
            .iter()
            .filter(|l| matches!(l, Label::Elements(_)))
            .count();
        // 28-byte keys, 10,000 in each of 2 sets: well over 500 elements per 64 KiB message.
        assert!(
            (3..=40).contains(&element_msgs),
            "{element_msgs} element messages"
        );
        assert!(labels.len() < 100, "{} messages", labels.len());
        assert_eq!(
            batch.iter().count(),
            1,
            "the batch is sized to fit one page"
        );

        // Decoded, the element messages give back every key of every set, in order.
        let mut got: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for (ty, _, a) in messages(&batch) {
            if ty != libc::NFT_MSG_NEWSETELEM as u16 {
                continue;
            }
            assert!(a.len() <= u16::MAX as usize + 64, "{} bytes", a.len());
            let a = attrs(&a);
            let set = cstr(attr(&a, NFTA_SET_ELEM_LIST_SET).unwrap()).to_string();
            let keys = attrs(attr(&a, NFTA_SET_ELEM_LIST_ELEMENTS).unwrap())
                .into_iter()
                .map(|(_, elem)| {
                    let elem = attrs(elem);
                    assert_eq!(elem.len(), 1, "the key alone");
                    let key = attrs(attr(&elem, NFTA_SET_ELEM_KEY).unwrap());
                    attr(&key, NFTA_DATA_VALUE).unwrap().to_vec()
                })
                .collect();
            match got.last_mut() {
                Some((name, all)) if *name == set => all.extend::<Vec<_>>(keys),
                _ => got.push((set, keys)),
            }
        }
        let want: Vec<(String, Vec<Vec<u8>>)> = policy
            .sets
            .iter()
            .map(|s| {
                let keys = s
                    .raw()
                    .iter()
                    .map(|e| {
                        let mut k = Vec::new();
                        push_element_key(&mut k, s, e);
                        k
                    })
                    .collect();
                (s.kind.name().to_string(), keys)
            })
            .collect();
        assert_eq!(
            got.iter()
                .map(|(n, k)| (n.as_str(), k.len()))
                .collect::<Vec<_>>(),
            [("in4", 10_000), ("out4", 10_000), ("icmp_in4", 1)]
        );
        assert!(got == want, "keys differ");
        // The keys are the services' own, not just consistent with the policy.
        let mut first = b"pub0".to_vec();
        first.resize(16, 0);
        first.extend([10, 99, 1, 1, 6, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(got[0].1[0], first);
        assert_eq!(&got[0].1[9999][24..26], &9999u16.to_be_bytes());
    }

    #[test]
    fn the_delete_batch_deletes_each_table_by_name() {
        let (batch, labels) = delete_tables(&["netnat", "netnat_guard"]);
        assert_eq!(
            labels,
            [Label::DelTable("netnat"), Label::DelTable("netnat_guard")]
        );
        let got: Vec<(u16, String)> = messages(&batch)
            .into_iter()
            .map(|(ty, _, a)| (ty, cstr(attr(&attrs(&a), NFTA_TABLE_NAME).unwrap()).into()))
            .collect();
        let del = libc::NFT_MSG_DELTABLE as u16;
        assert_eq!(
            got,
            [
                (del, "netnat".to_string()),
                (del, "netnat_guard".to_string())
            ]
        );
    }

    #[test]
    fn table_has_owner_flag_and_flush_names_only_the_table() {
        let (batch, labels) = install(&sample(), QueueExprKind::Native);
        let msgs = messages(&batch);
        assert_eq!(msgs.len(), labels.len());
        let (ty, _, a) = &msgs[0];
        assert_eq!(*ty, libc::NFT_MSG_NEWTABLE as u16);
        let a = attrs(a);
        assert_eq!(cstr(attr(&a, NFTA_TABLE_NAME).unwrap()), "netnat");
        assert_eq!(attr(&a, NFTA_TABLE_FLAGS), Some(&2u32.to_be_bytes()[..]));
        for m in &msgs[1..4] {
            assert_eq!(m.0, libc::NFT_MSG_NEWCHAIN as u16);
        }
        let (ty, _, a) = &msgs[4];
        assert_eq!(*ty, libc::NFT_MSG_DELRULE as u16);
        let a = attrs(a);
        assert_eq!(cstr(attr(&a, NFTA_RULE_TABLE).unwrap()), "netnat");
        assert_eq!(attr(&a, NFTA_RULE_CHAIN), None, "flush covers every chain");
        // Every set message comes after the rule flush (which releases the sets) and before
        // the first rule (which references them).
        let first_rule = labels
            .iter()
            .position(|l| matches!(l, Label::Rule { .. }))
            .unwrap();
        for (i, l) in labels.iter().enumerate() {
            if matches!(l, Label::Set(_) | Label::Elements(_) | Label::DelSet(_)) {
                assert!(i > 4 && i < first_rule, "{l:?} at {i}");
            }
        }
        assert!(
            msgs.iter()
                .all(|(_, flags, _)| flags & libc::NLM_F_ACK as u16 != 0),
            "every message asks for an ACK, so silence is detectable"
        );
    }
}
