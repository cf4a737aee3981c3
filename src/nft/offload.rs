//! Flow offload (`offload on`): after netnat has decided a flow's first packet in a direction,
//! the kernel rewrites the flow's further packets in that direction without queueing them,
//! the way Suricata's bypass hands inspected flows back to the kernel, but stateless and kept
//! in netnat's own table.
//!
//! How a flow gets there. The consumer decides a packet of a service as always (lookups, the
//! 0x8000 record, the new-connection count) and, when the flow may be offloaded, accepts it
//! the header-only way (no payload, `mark | rewrite bit`) plus the offload bit, the third bit
//! below the rewrite bit. The first rule of the rewrite chain right after the queue
//! (`rewrite_in` at -299, `rewrite_out` at 301) adds the packet's flow key, read before the
//! rewrite, to the direction's flow set (`add @flows_in4 { ... }`); the rewrite rules after it
//! write the actual (or apparent) endpoint as for any header-only verdict.
//!
//! The reply direction is offloaded with the inbound packet where it can be: the consumer
//! leaves the slot bits of an inbound offload verdict zero when the reply will leave from the
//! address the client used (the service's default one), and a rule after the inbound rewrite
//! adds the reply's flow key, read from the rewritten packet with source and destination
//! swapped, to the reply flow set. A connection then costs one queued packet, its SYN.
//!
//! How an offloaded packet goes. The first rules of the queueing chains (`prerouting` at -300,
//! `postrouting` at 300) look the packet's flow key up in the flow set; on a hit they update
//! the direction's counter set (one element per service endpoint, each with a counter: this is
//! how `status`, the metrics and the 0x4000 volume records stay true for packets the consumer
//! never sees), set netnat's mark bits and the rewrite bit and accept: the queue rules after
//! them are skipped, and the rewrite chain applies the rewrite. A counter set that is full
//! stops the rule before the accept, so the packet goes to the queue as before.
//!
//! How a flow leaves. A TCP segment with FIN or RST of an offloaded flow moves the flow from
//! the flow set to the direction's closing set, which holds it for [`CLOSING_TIMEOUT_MS`]
//! (TCP's TIME-WAIT): the FINs and the last ACKs are still rewritten by the kernel (and
//! counted), but the closing flow is never offloaded again, so its elements are gone a minute
//! after the connection ended. A SYN without ACK always goes to the consumer, also when a
//! client reuses the ports of a flow still in a set: every new connection is recorded and
//! counted. Flow elements also expire [`FLOW_TIMEOUT_MS`] after they were added: a flow
//! still alive then is decided by the consumer once more and offloaded again. Every install
//! of the policy (a reload, `service add`/`del`, a `*` address move) creates the flow sets
//! anew, empty, so every flow's next packet is decided by the consumer under the new services,
//! exactly as in queue mode. The counter sets are kept across installs (their counts are read
//! by the daemon); the table, with every set, goes with the process that owns it, and the
//! leak guard (in its own table) keeps replies of the flows it saw from leaving untranslated.
//! A full flow set (`offload-flows`) makes the add fail: the flow stays on the queue path.
//!
//! What stays on the queue path: ICMP errors (the sets key TCP and UDP flows only), services
//! with flag 0x2000 (the consumer never sets the offload bit for them), TCP SYNs without
//! ACK, and
//! reply flows of `*` services kept at an address other than the default one (their slot is
//! in the mark, which the sets do not hold).
//!
//! May use: `sets`, `family`, `expr`, `objects`, `translate` (key loads), `error`, `rewrite`
//! (slot bits).

use std::fmt::Write;

use nftnl::expr::{Bitwise, Cmp, CmpOp, Lookup, Meta};
use nftnl::set::Set;
use nftnl::{Batch, Chain, MsgType, Table};

use super::error::Label;
use super::expr::{Dynset, DynsetOp, Load, NotInSet, Source, reg32_at};
use super::family::Family;
use super::objects::{NoKey, dynamic_set};
use super::render::{family_name, field_name};
use super::rewrite::slot_bits;
use super::sets::KeyField;
use super::translate::key_source;

/// How long a flow stays offloaded after it was added (not refreshed by its packets: a flow
/// alive after this is decided by the consumer once more, which costs one queued packet).
pub const FLOW_TIMEOUT_MS: u64 = 30_000;
/// How long a TCP flow that sent FIN or RST is kept from being offloaded again (its last
/// ACKs, and a late retransmission, stay with the consumer): TCP's TIME-WAIT.
pub const CLOSING_TIMEOUT_MS: u64 = 60_000;
/// How long a counter element lives without packets. The daemon reads the counters every
/// [`READ_INTERVAL_MS`], far more often, so no count is lost to an expiry.
pub const COUNT_TIMEOUT_MS: u64 = 3_600_000;
/// Counter elements each counter set may hold: one per service endpoint (per address of a `*`
/// service) that has offloaded packets.
pub const COUNT_SIZE: u32 = 65_536;
/// How often the daemon reads the counter sets back.
pub const READ_INTERVAL_MS: u64 = 2_000;

const IPPROTO_TCP: u8 = 6;
/// TCP flags FIN (0x01) and RST (0x04), in the flags byte at offset 13 of the TCP header.
const FIN_RST: u8 = 0x05;

/// The offload part of netnat's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offload {
    /// netnat's `mark` bits.
    pub mark: u32,
    /// The rewrite bit (`rewrite-mark`).
    pub bit: u32,
    /// Bound of each flow set (`offload-flows`).
    pub flows: u32,
}

/// The offload bit for rewrite bit `rewrite_bit`: the third bit below it (the two right below
/// it hold an address slot, see `rewrite::slot_bits`).
pub fn offload_bit(rewrite_bit: u32) -> u32 {
    rewrite_bit >> 3
}

impl Offload {
    pub fn offload_bit(&self) -> u32 {
        offload_bit(self.bit)
    }

    /// The bits an offloaded packet's mark gets: netnat's and the rewrite bit.
    fn set_bits(&self) -> u32 {
        self.mark | self.bit
    }

    /// The bits cleared first: netnat's, the rewrite bit, the slot bits, the offload bit (a
    /// value of the administrator's in them must not pick a slot or ask for an offload).
    fn clear_bits(&self) -> u32 {
        self.mark | self.bit | slot_bits(self.bit, 3) | self.offload_bit()
    }
}

/// One direction of one family: a flow set and a counter set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Way {
    pub family: Family,
    /// Client → server (prerouting); else the server's replies (postrouting).
    pub inbound: bool,
}

/// The four ways, in the order of their sets in the table.
pub const WAYS: [Way; 4] = [
    Way {
        family: Family::Ipv4,
        inbound: true,
    },
    Way {
        family: Family::Ipv6,
        inbound: true,
    },
    Way {
        family: Family::Ipv4,
        inbound: false,
    },
    Way {
        family: Family::Ipv6,
        inbound: false,
    },
];

impl Way {
    fn index(self) -> u32 {
        u32::from(!self.inbound) * 2 + u32::from(self.family == Family::Ipv6)
    }

    /// `flows_in4`, `flows_in6`, `flows_out4`, `flows_out6`.
    pub fn flows_name(self) -> &'static str {
        ["flows_in4", "flows_in6", "flows_out4", "flows_out6"][self.index() as usize]
    }

    /// `closing_in4`, `closing_in6`, `closing_out4`, `closing_out6`.
    pub fn closing_name(self) -> &'static str {
        ["closing_in4", "closing_in6", "closing_out4", "closing_out6"][self.index() as usize]
    }

    /// `count_in4`, `count_in6`, `count_out4`, `count_out6`.
    pub fn count_name(self) -> &'static str {
        ["count_in4", "count_in6", "count_out4", "count_out6"][self.index() as usize]
    }

    /// A flow's key, read from the packet as it arrives (before any rewrite): interface,
    /// source, destination, protocol, and both ports as one field (five components, which
    /// nft's listing can name).
    pub fn flow_key(self) -> [KeyField; 5] {
        let f = self.family;
        use KeyField::*;
        if self.inbound {
            [Iif, Saddr(f), Daddr(f), L4Proto, Ports]
        } else {
            // Without the interface: a reply flow is added from its inbound packet too (see
            // [`add_reply_rules`]), before the reply's route is known; a reply that leaves by
            // another interface than its service's finds no rewrite map entry and is dropped,
            // as the leak guard would drop it untranslated.
            [Saddr(f), Daddr(f), L4Proto, Sport, Dport]
        }
    }

    /// The reply flow's key loaded from an inbound packet after its rewrite: the server
    /// (now its destination) is the reply's source, the client its destination, the ports
    /// swapped likewise.
    fn reply_key_sources(self) -> [Source; 5] {
        let f = self.family;
        use KeyField::*;
        [Daddr(f), Saddr(f), L4Proto, Dport, Sport].map(key_source)
    }

    /// A service endpoint's key: inbound the apparent endpoint the packet is addressed to,
    /// for replies the actual endpoint it comes from (what `ServiceTable::inbound` and
    /// `ServiceTable::reply` look up).
    pub fn count_key(self) -> [KeyField; 4] {
        let f = self.family;
        use KeyField::*;
        if self.inbound {
            [Iif, Daddr(f), L4Proto, Dport]
        } else {
            [Oif, Saddr(f), L4Proto, Sport]
        }
    }

    /// Batch ids (unique within the install batch: the service sets use 1-16, the rewrite
    /// maps 100 and up).
    fn flows_id(self, live: bool) -> u32 {
        200 + self.index() * 2 + u32::from(live)
    }

    fn count_id(self) -> u32 {
        220 + self.index()
    }

    fn closing_id(self, live: bool) -> u32 {
        230 + self.index() * 2 + u32::from(live)
    }
}

/// The sets of an install batch, by [`WAYS`] order.
pub(super) struct Sets<'a> {
    flows: Vec<Set<'a, NoKey>>,
    closing: Vec<Set<'a, NoKey>>,
    count: Vec<Set<'a, NoKey>>,
}

/// Adds the offload sets to an install batch (after the table's rule flush): each flow set
/// deleted (added first if missing) and created anew, empty; each counter set created if
/// missing and otherwise kept with its counts.
pub(super) fn add_sets<'a>(
    batch: &mut Batch,
    labels: &mut Vec<Label>,
    off: &Offload,
    table: &'a Table,
) -> Sets<'a> {
    let mut sets = Sets {
        flows: Vec::new(),
        closing: Vec::new(),
        count: Vec::new(),
    };
    for way in WAYS {
        // The flow and closing sets: deleted (added first if missing), created anew, empty.
        for (name, ids, timeout, to) in [
            (
                way.flows_name(),
                [way.flows_id(false), way.flows_id(true)],
                FLOW_TIMEOUT_MS,
                &mut sets.flows,
            ),
            (
                way.closing_name(),
                [way.closing_id(false), way.closing_id(true)],
                CLOSING_TIMEOUT_MS,
                &mut sets.closing,
            ),
        ] {
            let set = |id| {
                dynamic_set(
                    name,
                    &way.flow_key(),
                    (id, table),
                    timeout,
                    off.flows,
                    false,
                )
            };
            let old = set(ids[0]);
            batch.add(&old, MsgType::Add);
            labels.push(Label::Set(name));
            batch.add(&old, MsgType::Del);
            labels.push(Label::DelSet(name));
            let live = set(ids[1]);
            batch.add(&live, MsgType::Add);
            labels.push(Label::Set(name));
            to.push(live);
        }

        let name = way.count_name();
        let id = (way.count_id(), table);
        let count = dynamic_set(
            name,
            &way.count_key(),
            id,
            COUNT_TIMEOUT_MS,
            COUNT_SIZE,
            true,
        );
        batch.add(&count, MsgType::Add);
        labels.push(Label::Set(name));
        sets.count.push(count);
    }
    sets
}

/// Loads `key` into consecutive 32-bit registers from the first.
fn load_key(rule: &mut nftnl::Rule<'_>, key: &[KeyField]) {
    let mut offset = 0;
    for &f in key {
        rule.add_expr(&Load {
            source: key_source(f),
            dreg: reg32_at(offset),
        });
        offset += f.padded_len();
    }
}

fn nfproto(rule: &mut nftnl::Rule<'_>, family: Family) {
    rule.add_expr(&Meta::NfProto);
    rule.add_expr(&Cmp::new(CmpOp::Eq, &[family.nfproto()][..]));
}

/// `key != @set`, the key in the registers from the first.
fn not_in(set: &Set<'_, NoKey>) -> NotInSet {
    NotInSet {
        set: set.get_name().to_owned(),
        set_id: set.get_id(),
        sreg: reg32_at(0),
    }
}

fn dynset(set: &Set<'_, NoKey>, op: DynsetOp) -> Dynset {
    Dynset {
        set: set.get_name().to_owned(),
        set_id: set.get_id(),
        op,
        sreg: reg32_at(0),
    }
}

/// One offload rule of a queueing chain, per way, in chain order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// A TCP segment with FIN or RST of an offloaded flow: the flow moves from the flow set to
    /// the closing set (no verdict: `HitClosing` then rewrites the segment).
    End,
    /// A TCP segment of an offloaded flow (not a SYN without ACK): counted, marked, accepted.
    HitTcp,
    /// A UDP datagram of an offloaded flow.
    HitUdp,
    /// The same for a closing flow (its FINs, its last ACKs).
    HitClosing,
}

const STEPS: [Step; 4] = [Step::End, Step::HitTcp, Step::HitUdp, Step::HitClosing];

const IPPROTO_UDP: u8 = 17;
/// TCP flags SYN and ACK: a SYN without ACK (a connection's first segment) always reaches the
/// consumer (its record and count, also when a client reuses the ports of a flow still in a
/// set); the SYN-ACK of an offloaded reply flow does not need to.
const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;

impl Step {
    fn proto(self) -> u8 {
        match self {
            Step::HitUdp => IPPROTO_UDP,
            _ => IPPROTO_TCP,
        }
    }

    /// The TCP flags test: `flags & mask != value`.
    fn flags(self) -> Option<(u8, u8)> {
        match self {
            // FIN or RST set.
            Step::End => Some((FIN_RST, 0)),
            // Not a SYN without ACK.
            Step::HitTcp | Step::HitClosing => Some((SYN_ACK, SYN)),
            Step::HitUdp => None,
        }
    }

    fn closing(self) -> bool {
        self == Step::HitClosing
    }
}

/// Adds the offload rules of a queueing chain (`inbound`: prerouting, else postrouting) to
/// the batch; they go before the chain's queue rules.
pub(super) fn add_queue_rules(
    batch: &mut Batch,
    labels: &mut Vec<Label>,
    (off, sets): (&Offload, &Sets<'_>),
    (chain, chain_name): (&Chain<'_>, &'static str),
    inbound: bool,
) {
    for (i, way) in WAYS
        .iter()
        .enumerate()
        .filter(|(_, w)| w.inbound == inbound)
    {
        for step in STEPS {
            let mut rule = nftnl::Rule::new(chain);
            nfproto(&mut rule, way.family);
            rule.add_expr(&Meta::L4Proto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, &[step.proto()][..]));
            if let Some((mask, value)) = step.flags() {
                rule.add_expr(&Load {
                    source: Source::Transport { offset: 13, len: 1 },
                    dreg: libc::NFT_REG_1 as u32,
                });
                rule.add_expr(&Bitwise::new(&[mask][..], &[0u8][..]));
                rule.add_expr(&Cmp::new(CmpOp::Neq, &[value][..]));
            }
            load_key(&mut rule, &way.flow_key());
            let looked_up = if step.closing() {
                &sets.closing[i]
            } else {
                // Only offloaded flows: the FINs of all the other traffic through the router
                // must not fill the closing set.
                &sets.flows[i]
            };
            rule.add_expr(&Lookup::new(looked_up));
            if step == Step::End {
                rule.add_expr(&dynset(&sets.flows[i], DynsetOp::Delete));
                rule.add_expr(&dynset(&sets.closing[i], DynsetOp::Add));
            } else {
                load_key(&mut rule, &way.count_key());
                rule.add_expr(&dynset(&sets.count[i], DynsetOp::Update));
                rule.add_expr(&Meta::Mark { set: false });
                rule.add_expr(&Bitwise::new(!off.clear_bits(), off.set_bits()));
                rule.add_expr(&Meta::Mark { set: true });
                rule.add_expr(&nftnl::expr::Verdict::Accept);
            }
            batch.add(&rule, MsgType::Add);
            labels.push(Label::Rule {
                chain: chain_name,
                text: step_text(off, *way, step).into(),
                queues: false,
            });
        }
    }
}

/// Adds the rules that offload the reply flow of an inbound packet, after `rewrite_in`'s
/// rewrite rules (they read the rewritten packet) and before its final drop: the add, and the
/// clearing of the offload and slot bits the rewrite rules left.
pub(super) fn add_reply_rules(
    batch: &mut Batch,
    labels: &mut Vec<Label>,
    (off, sets): (&Offload, &Sets<'_>),
    (chain, chain_name): (&Chain<'_>, &'static str),
) {
    for (i, way) in WAYS.iter().enumerate().filter(|(_, w)| !w.inbound) {
        let mut add = nftnl::Rule::new(chain);
        let (mask, want) = reply_bits(off);
        add.add_expr(&Meta::Mark { set: false });
        add.add_expr(&Bitwise::new(mask, 0u32));
        add.add_expr(&Cmp::new(CmpOp::Eq, want));
        nfproto(&mut add, way.family);
        let mut offset = 0;
        for (source, f) in way.reply_key_sources().into_iter().zip(way.flow_key()) {
            add.add_expr(&Load {
                source,
                dreg: reg32_at(offset),
            });
            offset += f.padded_len();
        }
        add.add_expr(&not_in(&sets.closing[i]));
        add.add_expr(&dynset(&sets.flows[i], DynsetOp::Add));
        batch.add(&add, MsgType::Add);
        labels.push(Label::Rule {
            chain: chain_name,
            text: reply_add_text(off, *way).into(),
            queues: false,
        });
    }
    let mut clear = nftnl::Rule::new(chain);
    let obit = off.offload_bit();
    clear.add_expr(&Meta::Mark { set: false });
    clear.add_expr(&Bitwise::new(obit, 0u32));
    clear.add_expr(&Cmp::new(CmpOp::Eq, obit));
    clear.add_expr(&Meta::Mark { set: false });
    clear.add_expr(&Bitwise::new(!reply_clear(off), 0u32));
    clear.add_expr(&Meta::Mark { set: true });
    batch.add(&clear, MsgType::Add);
    labels.push(Label::Rule {
        chain: chain_name,
        text: reply_clear_text(off).into(),
        queues: false,
    });
}

/// The mark test of the reply add: netnat's bits and the offload bit set, the rewrite bit
/// clear (the rewrite was done) and the slot bits zero (the reply leaves from the default
/// address).
fn reply_bits(off: &Offload) -> (u32, u32) {
    let mask = off.mark | off.bit | slot_bits(off.bit, 3) | off.offload_bit();
    (mask, off.mark | off.offload_bit())
}

/// The bits cleared after the reply add.
fn reply_clear(off: &Offload) -> u32 {
    slot_bits(off.bit, 3) | off.offload_bit()
}

fn reply_add_text(off: &Offload, way: Way) -> String {
    let (mask, want) = reply_bits(off);
    let f = way.family;
    let swapped = key_text(&[
        KeyField::Daddr(f),
        KeyField::Saddr(f),
        KeyField::L4Proto,
        KeyField::Dport,
        KeyField::Sport,
    ]);
    format!(
        "meta mark & {mask:#010x} == {want:#010x} meta nfproto {} {swapped} != @{} add @{} \
         {{ {swapped} }}",
        family_name(f),
        way.closing_name(),
        way.flows_name()
    )
}

fn reply_clear_text(off: &Offload) -> String {
    let o = off.offload_bit();
    format!(
        "meta mark & {o:#010x} == {o:#010x} meta mark set meta mark & {:#010x}",
        !reply_clear(off)
    )
}

/// The rules after `rewrite_in`'s rewrite rules, as `netnat rules` prints them.
pub fn reply_rules_text(off: &Offload) -> Vec<String> {
    WAYS.iter()
        .filter(|w| !w.inbound)
        .map(|w| reply_add_text(off, *w))
        .chain([reply_clear_text(off)])
        .collect()
}

/// Adds the rules that offload a flow to a rewrite chain (`inbound`: `rewrite_in`); they go
/// before the chain's rewrite rules, which must see the packet unrewritten.
pub(super) fn add_rewrite_rules(
    batch: &mut Batch,
    labels: &mut Vec<Label>,
    (off, sets): (&Offload, &Sets<'_>),
    (chain, chain_name): (&Chain<'_>, &'static str),
    inbound: bool,
) {
    for (i, way) in WAYS
        .iter()
        .enumerate()
        .filter(|(_, w)| w.inbound == inbound)
    {
        let mut add = nftnl::Rule::new(chain);
        let asked = off.set_bits() | off.offload_bit();
        add.add_expr(&Meta::Mark { set: false });
        add.add_expr(&Bitwise::new(asked, 0u32));
        add.add_expr(&Cmp::new(CmpOp::Eq, asked));
        nfproto(&mut add, way.family);
        load_key(&mut add, &way.flow_key());
        add.add_expr(&not_in(&sets.closing[i]));
        add.add_expr(&dynset(&sets.flows[i], DynsetOp::Add));
        batch.add(&add, MsgType::Add);
        labels.push(Label::Rule {
            chain: chain_name,
            text: add_text(off, *way).into(),
            queues: false,
        });
    }
}

fn key_text(key: &[KeyField]) -> String {
    let names: Vec<&str> = key.iter().map(|f| field_name(*f)).collect();
    names.join(" . ")
}

/// An offload rule of a queueing chain as nft lists it.
fn step_text(off: &Offload, way: Way, step: Step) -> String {
    let key = key_text(&way.flow_key());
    let proto = if step.proto() == IPPROTO_TCP {
        "tcp"
    } else {
        "udp"
    };
    let flags = match step.flags() {
        Some((FIN_RST, _)) => " tcp flags & (fin | rst) != 0",
        Some(_) => " tcp flags & (syn | ack) != syn",
        None => "",
    };
    let set = if step.closing() {
        way.closing_name()
    } else {
        way.flows_name()
    };
    let action = if step == Step::End {
        format!(
            "delete @{set} {{ {key} }} add @{} {{ {key} }}",
            way.closing_name()
        )
    } else {
        format!(
            "update @{} {{ {} }} meta mark set meta mark & {:#010x} | {:#010x} accept",
            way.count_name(),
            key_text(&way.count_key()),
            !off.clear_bits(),
            off.set_bits()
        )
    };
    format!(
        "meta nfproto {} meta l4proto {proto}{flags} {key} @{set} {action}",
        family_name(way.family)
    )
}

/// The rule that offloads a flow, as nft lists it.
fn add_text(off: &Offload, way: Way) -> String {
    let asked = off.set_bits() | off.offload_bit();
    let key = key_text(&way.flow_key());
    format!(
        "meta mark & {asked:#010x} == {asked:#010x} meta nfproto {} {key} != @{} add @{} \
         {{ {key} }}",
        family_name(way.family),
        way.closing_name(),
        way.flows_name(),
    )
}

/// The offload rules of a queueing chain, as `netnat rules` prints them first in it.
pub fn queue_rules_text(off: &Offload, inbound: bool) -> Vec<String> {
    WAYS.iter()
        .filter(|w| w.inbound == inbound)
        .flat_map(|w| STEPS.map(|step| step_text(off, *w, step)))
        .collect()
}

/// The offload rules of a rewrite chain, as `netnat rules` prints them first in it.
pub fn rewrite_rules_text(off: &Offload, inbound: bool) -> Vec<String> {
    WAYS.iter()
        .filter(|w| w.inbound == inbound)
        .map(|w| add_text(off, *w))
        .collect()
}

/// The offload sets as `netnat rules` prints them (nft lists their elements too).
pub fn render_sets(out: &mut String, off: &Offload) {
    let types = |key: &[KeyField]| {
        let t: Vec<&str> = key.iter().map(|f| f.type_name()).collect();
        t.join(" . ")
    };
    for way in WAYS {
        let _ = writeln!(out, "\n\tset {} {{", way.flows_name());
        let _ = writeln!(out, "\t\ttype {}", types(&way.flow_key()));
        let _ = writeln!(out, "\t\tsize {}", off.flows);
        let _ = writeln!(out, "\t\tflags dynamic,timeout");
        let _ = writeln!(out, "\t\ttimeout {}s", FLOW_TIMEOUT_MS / 1000);
        let _ = writeln!(out, "\t}}");
        let _ = writeln!(out, "\n\tset {} {{", way.closing_name());
        let _ = writeln!(out, "\t\ttype {}", types(&way.flow_key()));
        let _ = writeln!(out, "\t\tsize {}", off.flows);
        let _ = writeln!(out, "\t\tflags dynamic,timeout");
        let _ = writeln!(out, "\t\ttimeout {}s", CLOSING_TIMEOUT_MS / 1000);
        let _ = writeln!(out, "\t}}");
        let _ = writeln!(out, "\n\tset {} {{", way.count_name());
        let _ = writeln!(out, "\t\ttype {}", types(&way.count_key()));
        let _ = writeln!(out, "\t\tsize {COUNT_SIZE}");
        let _ = writeln!(out, "\t\tflags dynamic,timeout");
        let _ = writeln!(out, "\t\tcounter");
        let _ = writeln!(out, "\t\ttimeout {}h", COUNT_TIMEOUT_MS / 3_600_000);
        let _ = writeln!(out, "\t}}");
    }
}

/// The names of the offload sets, in table order (for the kernel tests and `status`).
pub fn set_names() -> impl Iterator<Item = (&'static str, &'static str)> {
    WAYS.iter().map(|w| (w.flows_name(), w.count_name()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::sets::key_len;

    #[test]
    fn keys_fit_the_registers_and_are_distinct_per_way() {
        for way in WAYS {
            // 16 32-bit registers hold at most 64 bytes of key.
            assert!(key_len(&way.flow_key()) <= 64, "{way:?}");
            assert!(key_len(&way.count_key()) <= 64, "{way:?}");
        }
        assert_eq!(key_len(&WAYS[0].flow_key()), 20);
        assert_eq!(key_len(&WAYS[1].flow_key()), 44);
        assert_eq!(key_len(&WAYS[0].count_key()), 16);
        assert_eq!(key_len(&WAYS[3].count_key()), 28);
        let names: std::collections::HashSet<&str> = WAYS
            .iter()
            .flat_map(|w| [w.flows_name(), w.closing_name(), w.count_name()])
            .collect();
        assert_eq!(names.len(), 12);
        let ids: std::collections::HashSet<u32> = WAYS
            .iter()
            .flat_map(|w| {
                let flows = [w.flows_id(false), w.flows_id(true)];
                let closing = [w.closing_id(false), w.closing_id(true)];
                [flows, closing].concat().into_iter().chain([w.count_id()])
            })
            .collect();
        assert_eq!(ids.len(), 20);
    }

    #[test]
    fn the_reply_key_is_the_inbound_key_swapped() {
        let off = Offload {
            mark: 0x4e00,
            bit: 0x100,
            flows: 1,
        };
        for way in WAYS.iter().filter(|w| !w.inbound) {
            let f = way.family;
            assert_eq!(
                way.reply_key_sources(),
                [
                    KeyField::Daddr(f),
                    KeyField::Saddr(f),
                    KeyField::L4Proto,
                    KeyField::Dport,
                    KeyField::Sport
                ]
                .map(key_source)
            );
        }
        // The reply is added only when the rewrite is done (rewrite bit clear), the offload
        // bit is set and no slot is named; then offload's bits go.
        assert_eq!(reply_bits(&off), (0x4e00 | 0x100 | 0xc0 | 0x20, 0x4e20));
        let texts = reply_rules_text(&off);
        assert_eq!(texts.len(), 3);
        assert_eq!(
            texts[2],
            "meta mark & 0x00000020 == 0x00000020 meta mark set meta mark & 0xffffff1f"
        );
        assert!(texts[0].contains("ip daddr . ip saddr . meta l4proto . th dport . th sport"));
    }

    #[test]
    fn mark_bits_clear_ours_and_set_both() {
        let off = Offload {
            mark: 0x4e00,
            bit: 0x100,
            flows: 65_536,
        };
        assert_eq!(off.offload_bit(), 0x20);
        assert_eq!(off.clear_bits(), 0x4e00 | 0x100 | 0xc0 | 0x20);
        assert_eq!(off.set_bits(), 0x4f00);
        let text = step_text(&off, WAYS[0], Step::HitTcp);
        assert!(
            text.contains("meta mark & 0xffffb01f | 0x00004f00 accept"),
            "{text}"
        );
        assert!(
            text.contains("meta iif . ip saddr . ip daddr . meta l4proto . th sport . th dport"),
            "{text}"
        );
        let key = "ip saddr . ip daddr . meta l4proto . th sport . th dport";
        assert_eq!(
            add_text(&off, WAYS[2]),
            format!(
                "meta mark & 0x00004f20 == 0x00004f20 meta nfproto ipv4 {key} != @closing_out4 \
                 add @flows_out4 {{ {key} }}"
            )
        );
    }
}
