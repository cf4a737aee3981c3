//! One packet's journey through netnat: which direction it crosses, which service it belongs
//! to, how it is rewritten and which verdict it gets. Kernel-free: the queue layer hands in the
//! packet, this module hands back the decision.

use crate::queue::{Decision, Packet, Verdict};
use crate::service::ServiceTable;
use crate::wire::{self, ChecksumState, Direction, Flow, Kind, Outcome};

/// Netfilter hook numbers as the queue reports them (NF_INET_PRE_ROUTING, NF_INET_POST_ROUTING).
const HOOK_PREROUTING: u8 = 0;
const HOOK_POSTROUTING: u8 = 4;

/// Why a packet was dropped or left untranslated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Longer than the copy range: a payload verdict would shorten it.
    Truncated,
    /// Could not be parsed.
    Malformed(wire::Malformed),
    /// A reply that matches no service: passing it would leak the private address.
    UnmappedReply,
}

/// What happened to one packet, for counters and logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Translated for service `id`.
    Translated {
        id: usize,
        dir: Direction,
        flow: Flow,
        kind: Kind,
    },
    /// Passed unchanged (not ours: e.g. an ICMP error about another flow).
    Passed,
    Dropped(Refusal),
}

/// Decides the fate of one queued packet, rewriting it in place when it is ours.
///
/// `mark` is OR-ed into the packet mark of translated inbound packets, so that one firewall
/// rule can let mapped traffic through a default-drop forward chain.
pub fn handle(table: &ServiceTable, mark: u32, pkt: &mut Packet<'_>) -> (Decision, Event) {
    let dir = match pkt.hook {
        HOOK_PREROUTING => Direction::Inbound,
        HOOK_POSTROUTING => Direction::Reply,
        // Only our two chains queue to us; anything else is not ours to touch.
        _ => return (pass(), Event::Passed),
    };
    if pkt.truncated {
        return (drop(), Event::Dropped(Refusal::Truncated));
    }
    let csum = if pkt.checksum_ready {
        ChecksumState::Complete
    } else {
        ChecksumState::NotReady
    };
    let (indev, outdev) = (pkt.indev, pkt.outdev);
    let outcome = wire::rewrite(pkt.payload, dir, csum, |proto, endpoint| match dir {
        Direction::Inbound => table.inbound(indev, proto, endpoint).map(|e| (e.act, e.id)),
        Direction::Reply => table.reply(outdev, proto, endpoint).map(|e| (e.app, e.id)),
    });
    match outcome {
        Outcome::Rewritten { token, flow, kind } => {
            let mark = (dir == Direction::Inbound).then_some(pkt.mark | mark);
            let decision = Decision {
                verdict: Verdict::Accept,
                modified: true,
                mark,
            };
            (
                decision,
                Event::Translated {
                    id: token,
                    dir,
                    flow,
                    kind,
                },
            )
        }
        // An ICMP error about some other flow, or an inbound packet for an address that is not
        // (or no longer) a service's: the host handles it as if netnat were not there.
        Outcome::NotOurs {
            kind: Kind::IcmpError,
        } => (pass(), Event::Passed),
        Outcome::NotOurs { .. } if dir == Direction::Inbound => (pass(), Event::Passed),
        Outcome::NotOurs { .. } => (drop(), Event::Dropped(Refusal::UnmappedReply)),
        Outcome::Malformed(m) => (drop(), Event::Dropped(Refusal::Malformed(m))),
    }
}

fn pass() -> Decision {
    Decision {
        verdict: Verdict::Accept,
        modified: false,
        mark: None,
    }
}

fn drop() -> Decision {
    Decision {
        verdict: Verdict::Drop,
        modified: false,
        mark: None,
    }
}
