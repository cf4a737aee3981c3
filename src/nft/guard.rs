//! The leak guard: table `inet netnat_guard`, installed and replaced in the same batch as
//! netnat's table but without the owner flag, so it stays when netnat stops or dies (see
//! [`Guard`]).
//!
//! Pure data; uses `rules` for the chains and `family` for the ICMP protocol numbers.

use super::family::{IPPROTO_ICMP, IPPROTO_ICMPV6};
use super::rules::{ChainSpec, CtDirection, Hook, Match, Rule, Verdict};

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
#[cfg(test)]
mod tests {
    use super::super::policy::Policy;
    use super::*;

    /// Conntrack's priority in prerouting.
    const CONNTRACK_PRIORITY: i32 = -200;

    #[test]
    fn chains_sit_around_netnats_own() {
        let p = Policy::new(&[], 1).with_mark(0x4e00);
        let g = &p.guard;
        assert_eq!(g.table, GUARD_TABLE);
        // Labelling needs the connection conntrack attaches after netnat's inbound rewrite.
        assert!(p.prerouting.priority < CONNTRACK_PRIORITY);
        assert!(CONNTRACK_PRIORITY < g.flows.priority);
        assert_eq!(g.flows.hook, Some(Hook::Prerouting));
        // Clearing before netnat's reply chain, dropping after it.
        assert!(g.replies_clear.priority < p.postrouting.priority);
        assert!(p.postrouting.priority < g.replies_guard.priority);
        assert_eq!(g.replies_guard.hook, Some(Hook::Postrouting));
        // Only one rule drops: replies of labelled connections that lack netnat's mark.
        let drops: Vec<&Rule> = g
            .chains()
            .into_iter()
            .flat_map(|c| &c.rules)
            .filter(|r| r.verdict == Verdict::Drop)
            .collect();
        let lacks_mark = Rule {
            matches: vec![
                Match::CtDirection(CtDirection::Reply),
                Match::CtLabel(GUARD_LABEL),
                Match::MarkLacks(0x4e00),
            ],
            verdict: Verdict::Drop,
            comment: None,
        };
        assert_eq!(drops, [&lacks_mark]);
    }
}
