//! The kernel half of header-only verdicts (`header-only on`): maps from a service's key to the
//! endpoint to write, and two chains that write it into the packets netnat's verdict asked for.
//!
//! A packet longer than the queue's copy range reaches netnat with its headers only; netnat
//! decides it as any other and accepts it with its `mark` bits plus the rewrite bit (see
//! `engine::datapath`). ACCEPT goes on with the next hook entry, so the chain right after the
//! queueing one sees the mark: `rewrite_in` (prerouting -299: after the queue at -300, before
//! conntrack at -200, so conntrack records the rewritten tuple) and `rewrite_out` (postrouting
//! 301: after the reply queue at 300, before the guard's drop at 310). Each rule of theirs looks
//! the packet's key up in a map keyed like the queueing sets (`in4`, `out4`, ...), whose data is
//! the endpoint to write (`ipv4_addr . inet_service`, two 32-bit registers), writes address and
//! port with payload statements (the kernel updates the IPv4 header checksum and the transport
//! checksum, pseudo-header included, right for CHECKSUM_PARTIAL and GSO packets) and clears the
//! rewrite bit. The last rule drops a packet that still carries both bits: it asked for a
//! rewrite no map entry gave (a service gone between verdict and rule), and passing it would
//! send, for a reply, the private address.
//!
//! The maps hold what the consumer decides by: inbound the actual endpoint; for replies the
//! apparent endpoint, for a `*` service the address its replies leave from by default
//! (`reply_from`, supplied by the daemon from its lookup table and installed again when the
//! address moves). A `*` flow that the flow memory keeps at another of the interface's
//! addresses names it in the verdict's mark: the two bits below the rewrite bit hold a slot
//! 1-3, the position of the address in the entry's list (apparent address, then the others,
//! see [`slot_bits`]), and the reply maps `rw_out4_1` .. `rw_out6_3` hold, per slot, that
//! address. A flow at a fourth or later address is not served here (the consumer drops its long
//! packets; `header-only off` serves it).
//!
//! May use: `sets`, `rules` and `family` (key layouts, set kinds, chains), `expr`, `translate` (key loads), `objects` and
//! `elements` (the map and its elements), `config`.

use std::collections::HashSet;
use std::ffi::CString;
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

use nftnl::expr::{Bitwise, Cmp, CmpOp, Meta};
use nftnl::set::Set;
use nftnl::{Batch, Chain, MsgType, Table};

use super::elements::{ElementsMsg, element_attr_len};
use super::error::Label;
use super::expr::{CSUM_INET, L4CSUM_PSEUDOHDR, Load, MapLookup, PayloadWrite, reg32_at};
use super::family::Family;
use super::objects::{NoKey, new_map};
use super::offload::{self, Offload};
use super::render::render_element;
use super::rules::{ChainSpec, Hook};
use super::sets::{KeyField, KeyValue, SetKind, SetSpec, key_len};
use super::translate::key_source;
use crate::config::{AppAddr, Protocol, Service};
use crate::netlink::frame::{NLA_HDRLEN, NLA_MAX_LEN};

/// Priority of the inbound rewrite chain: right after netnat's queueing chain (-300), before
/// conntrack (-200).
pub const PREROUTING_PRIORITY: i32 = -299;
/// Priority of the reply rewrite chain: right after netnat's reply chain (300), before the
/// leak guard's drop (310).
pub const POSTROUTING_PRIORITY: i32 = 301;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// A rewrite map: keyed like the queueing set `set`; for replies, the address slot it serves
/// (0: the default address, 1-3: see [`slot_bits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapKind {
    pub set: SetKind,
    pub slot: u8,
}

/// Slots for addresses other than a reply's default (bits below the rewrite bit).
pub const SLOTS: u8 = 3;

/// The mark bits naming slot `slot` (0: the default address, 1-3) with rewrite bit `bit`: the
/// slot number in the two bits right below it.
pub fn slot_bits(bit: u32, slot: u8) -> u32 {
    (u32::from(slot) & 3) * (bit >> 2)
}

impl MapKind {
    pub const IN4: MapKind = MapKind::of(SetKind::In4, 0);
    pub const IN4_LOCAL: MapKind = MapKind::of(SetKind::In4Local, 0);
    pub const IN6: MapKind = MapKind::of(SetKind::In6, 0);
    pub const IN6_LOCAL: MapKind = MapKind::of(SetKind::In6Local, 0);
    pub const OUT4: MapKind = MapKind::of(SetKind::Out4, 0);
    pub const OUT6: MapKind = MapKind::of(SetKind::Out6, 0);

    /// Every map netnat may have, in the order they are created; their names, in that order.
    pub const ALL: [MapKind; 12] = [
        MapKind::IN4,
        MapKind::IN4_LOCAL,
        MapKind::IN6,
        MapKind::IN6_LOCAL,
        MapKind::OUT4,
        MapKind::OUT6,
        MapKind::of(SetKind::Out4, 1),
        MapKind::of(SetKind::Out4, 2),
        MapKind::of(SetKind::Out4, 3),
        MapKind::of(SetKind::Out6, 1),
        MapKind::of(SetKind::Out6, 2),
        MapKind::of(SetKind::Out6, 3),
    ];
    const NAMES: [&'static str; 12] = [
        "rw_in4",
        "rw_in4_local",
        "rw_in6",
        "rw_in6_local",
        "rw_out4",
        "rw_out6",
        "rw_out4_1",
        "rw_out4_2",
        "rw_out4_3",
        "rw_out6_1",
        "rw_out6_2",
        "rw_out6_3",
    ];

    const fn of(set: SetKind, slot: u8) -> MapKind {
        MapKind { set, slot }
    }

    /// Position in [`MapKind::ALL`].
    fn index(self) -> usize {
        MapKind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }

    pub fn name(self) -> &'static str {
        MapKind::NAMES[self.index()]
    }

    /// The address slot this reply map serves (0: the default address).
    pub fn slot(self) -> u8 {
        self.slot
    }

    /// The reply map of `slot` of the family.
    fn reply(v6: bool, slot: u8) -> MapKind {
        MapKind::of(if v6 { SetKind::Out6 } else { SetKind::Out4 }, slot)
    }

    /// The queueing set whose key this map has.
    pub fn keyed_like(self) -> SetKind {
        self.set
    }

    pub fn inbound(self) -> bool {
        !matches!(self.set, SetKind::Out4 | SetKind::Out6)
    }

    /// The data: the endpoint written, destination inbound, source on replies.
    pub fn data(self) -> [KeyField; 2] {
        let f = self.keyed_like().family();
        if self.inbound() {
            [KeyField::Daddr(f), KeyField::Dport]
        } else {
            [KeyField::Saddr(f), KeyField::Sport]
        }
    }

    /// Batch-unique ids of the placeholder that is deleted and of the live map (the queueing
    /// sets use 1 to 16).
    fn id(self, live: bool) -> u32 {
        100 + 2 * self.index() as u32 + u32::from(live)
    }
}

/// One map and its elements: the keys (as a set of [`MapKind::keyed_like`]) and, in the same
/// order, the endpoint each maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub kind: MapKind,
    pub keys: SetSpec,
    pub data: Vec<SocketAddr>,
}

/// One rewrite rule: the packets of `map`'s family and protocol `proto`. UDP over IPv4 comes
/// twice: a datagram without checksum (0) must keep none, so its port is written without a
/// checksum update (`udp_zero: Some(true)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RewriteRule {
    pub map: MapKind,
    pub proto: u8,
    pub udp_zero: Option<bool>,
}

impl RewriteRule {
    /// Reply rules test the slot bits (0 for the default map), inbound ones do not.
    fn slot(&self) -> Option<u8> {
        (!self.map.inbound()).then(|| self.map.slot())
    }
}

/// The header-only path's maps and chains, part of netnat's table when `header-only on`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    /// netnat's `mark` bits, which every verdict that translates sets.
    pub mark: u32,
    /// The rewrite bit (`rewrite-mark`), set only by header-only verdicts.
    pub bit: u32,
    /// The maps with elements, in [`MapKind`] order.
    pub maps: Vec<MapSpec>,
    /// The offload bit (`nft::offload`; 0 without offload), cleared with the rewrite bit.
    pub offload_bit: u32,
}

/// The chains of the header-only path (names, hooks and priorities).
pub fn chains() -> [ChainSpec; 2] {
    let chain = |name, hook, priority| ChainSpec {
        name,
        hook: Some(hook),
        priority,
        rules: Vec::new(),
    };
    [
        chain("rewrite_in", Hook::Prerouting, PREROUTING_PRIORITY),
        chain("rewrite_out", Hook::Postrouting, POSTROUTING_PRIORITY),
    ]
}

impl Rewrite {
    /// The maps for `services`; `reply_from(i)` lists the addresses replies of the `*`
    /// service `services[i]` leave from now: first the default, then slots 1-3 (empty:
    /// unresolved, no reply element). A key is mapped once, by the first service that has it
    /// (the lookup table's rule too).
    pub fn new(
        services: &[Service],
        reply_from: &dyn Fn(usize) -> Vec<IpAddr>,
        mark: u32,
        bit: u32,
    ) -> Rewrite {
        let mut lists: Vec<(Vec<Vec<KeyValue>>, Vec<SocketAddr>)> = MapKind::ALL
            .iter()
            .map(|_| (Vec::new(), Vec::new()))
            .collect();
        let mut seen: HashSet<(MapKind, Vec<KeyValue>)> = HashSet::new();
        let mut put = |kind: MapKind, key: Vec<KeyValue>, to: SocketAddr| {
            if seen.insert((kind, key.clone())) {
                lists[kind.index()].0.push(key);
                lists[kind.index()].1.push(to);
            }
        };
        for (i, s) in services.iter().enumerate() {
            let iface = || KeyValue::IfName(s.iface.clone());
            let proto = KeyValue::Proto(l4(s.protocol));
            let act = SocketAddr::new(s.act_addr, s.act_port);
            let v6 = Family::of(&s.act_addr) == Family::Ipv6;
            match s.app_addr {
                AppAddr::Fixed(a) => {
                    let kind = if v6 { MapKind::IN6 } else { MapKind::IN4 };
                    let key = vec![iface(), KeyValue::Addr(a), proto.clone(), port(s.app_port)];
                    put(kind, key, act);
                }
                AppAddr::Interface => {
                    let kind = if v6 {
                        MapKind::IN6_LOCAL
                    } else {
                        MapKind::IN4_LOCAL
                    };
                    put(kind, vec![iface(), proto.clone(), port(s.app_port)], act);
                }
            }
            let from = match s.app_addr {
                AppAddr::Fixed(a) => vec![a],
                AppAddr::Interface => reply_from(i),
            };
            let key = vec![iface(), KeyValue::Addr(s.act_addr), proto, port(s.act_port)];
            for (slot, a) in (0..=SLOTS).zip(from) {
                if Family::of(&a) == Family::of(&s.act_addr) {
                    let to = SocketAddr::new(a, s.app_port);
                    put(MapKind::reply(v6, slot), key.clone(), to);
                }
            }
        }
        let maps = MapKind::ALL
            .iter()
            .zip(lists)
            .filter(|(_, (keys, _))| !keys.is_empty())
            .map(|(&kind, (keys, data))| MapSpec {
                kind,
                keys: SetSpec::from_values(kind.keyed_like(), &keys),
                data,
            })
            .collect();
        Rewrite {
            mark,
            bit,
            maps,
            offload_bit: 0,
        }
    }

    /// The rules of the inbound (`inbound`) or reply chain, before the final drop.
    pub fn rules(&self, inbound: bool) -> Vec<RewriteRule> {
        let mut out = Vec::new();
        for m in self.maps.iter().filter(|m| m.kind.inbound() == inbound) {
            let protos: Vec<u8> = [IPPROTO_TCP, IPPROTO_UDP]
                .into_iter()
                .filter(|p| m.keys.raw().iter().any(|e| e.proto == *p))
                .collect();
            for proto in protos {
                let v4_udp = proto == IPPROTO_UDP && m.kind.keyed_like().family() == Family::Ipv4;
                if v4_udp {
                    for zero in [false, true] {
                        out.push(RewriteRule {
                            map: m.kind,
                            proto,
                            udp_zero: Some(zero),
                        });
                    }
                } else {
                    out.push(RewriteRule {
                        map: m.kind,
                        proto,
                        udp_zero: None,
                    });
                }
            }
        }
        out
    }

    /// Both bits: what a header-only verdict sets.
    fn both(&self) -> u32 {
        self.mark | self.bit
    }

    /// The rewrite bit and the slot bits, cleared together once the rewrite is done.
    fn ours(&self) -> u32 {
        self.bit | slot_bits(self.bit, 3) | self.offload_bit
    }
}

fn l4(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

fn port(p: u16) -> KeyValue {
    KeyValue::Port(p)
}

/// A map element's data as the registers hold it: the address, then the port in network order
/// padded to its own register.
fn data_bytes(out: &mut Vec<u8>, to: SocketAddr) {
    match to.ip() {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
    out.extend_from_slice(&to.port().to_be_bytes());
    out.extend_from_slice(&[0, 0]);
}

/// Adds the header-only path to an install batch of netnat's table (after the table's rule
/// flush, which releases the rules' references to the maps): each map deleted (added first if
/// missing), the live maps with their elements, the two chains and their rules.
pub(super) fn add_to_batch(
    batch: &mut Batch,
    labels: &mut Vec<Label>,
    rewrite: &Rewrite,
    (name, table): (&CString, &Table),
    offload: Option<(&Offload, &offload::Sets<'_>)>,
) {
    for kind in MapKind::ALL {
        let key = kind.keyed_like().key();
        let map = new_map(kind.name(), key, &kind.data(), kind.id(false), table);
        batch.add(&map, MsgType::Add);
        labels.push(Label::Set(kind.name()));
        batch.add(&map, MsgType::Del);
        labels.push(Label::DelSet(kind.name()));
    }
    let mut maps = Vec::new();
    for spec in &rewrite.maps {
        let kind = spec.kind;
        let map = new_map(
            kind.name(),
            kind.keyed_like().key(),
            &kind.data(),
            kind.id(true),
            table,
        );
        batch.add(&map, MsgType::Add);
        labels.push(Label::Set(kind.name()));
        let data_len = key_len(&kind.data());
        let mut data = Vec::with_capacity(spec.data.len() * data_len);
        for to in &spec.data {
            data_bytes(&mut data, *to);
        }
        let per_element = element_attr_len(kind.keyed_like()) + 2 * NLA_HDRLEN + data_len;
        let per_msg = (NLA_MAX_LEN - NLA_HDRLEN) / per_element;
        for (n, elements) in spec.keys.raw().chunks(per_msg).enumerate() {
            let at = n * per_msg * data_len;
            let msg = ElementsMsg {
                table: name,
                name: kind.name(),
                set: &spec.keys,
                elements,
                data: Some((&data[at..at + elements.len() * data_len], data_len)),
                id: kind.id(true),
            };
            batch.add(&msg, MsgType::Add);
            labels.push(Label::Elements(kind.name()));
        }
        maps.push(map);
    }
    for (spec, inbound) in chains().iter().zip([true, false]) {
        let chain = super::batch::chain(spec, table);
        batch.add(&chain, MsgType::Add);
        labels.push(Label::Chain(spec.name));
        if let Some(off) = offload {
            offload::add_rewrite_rules(batch, labels, off, (&chain, spec.name), inbound);
        }
        for r in rewrite.rules(inbound) {
            let rule = translate(&chain, rewrite, &r, &maps);
            batch.add(&rule, MsgType::Add);
            labels.push(Label::Rule {
                chain: spec.name,
                text: render_rule(rewrite, &r).into(),
                queues: false,
            });
        }
        let rule = drop_rule(&chain, rewrite);
        batch.add(&rule, MsgType::Add);
        labels.push(Label::Rule {
            chain: spec.name,
            text: render_drop(rewrite).into(),
            queues: false,
        });
    }
}

/// `meta mark & bits == bits`.
fn mark_has(rule: &mut nftnl::Rule<'_>, bits: u32) {
    rule.add_expr(&Meta::Mark { set: false });
    rule.add_expr(&Bitwise::new(bits, 0u32));
    rule.add_expr(&Cmp::new(CmpOp::Eq, bits));
}

/// One rewrite rule's expressions.
fn translate<'a>(
    chain: &'a Chain<'a>,
    rw: &Rewrite,
    r: &RewriteRule,
    maps: &[Set<'_, NoKey>],
) -> nftnl::Rule<'a> {
    let mut rule = nftnl::Rule::new(chain);
    let family = r.map.keyed_like().family();
    mark_has(&mut rule, rw.both());
    if let Some(slot) = r.slot() {
        rule.add_expr(&Meta::Mark { set: false });
        rule.add_expr(&Bitwise::new(slot_bits(rw.bit, 3), 0u32));
        rule.add_expr(&Cmp::new(CmpOp::Eq, slot_bits(rw.bit, slot)));
    }
    rule.add_expr(&Meta::NfProto);
    rule.add_expr(&Cmp::new(CmpOp::Eq, &[family.nfproto()][..]));
    rule.add_expr(&Meta::L4Proto);
    rule.add_expr(&Cmp::new(CmpOp::Eq, &[r.proto][..]));
    if let Some(zero) = r.udp_zero {
        rule.add_expr(&Load {
            source: super::expr::Source::Transport { offset: 6, len: 2 },
            dreg: libc::NFT_REG_1 as u32,
        });
        let op = if zero { CmpOp::Eq } else { CmpOp::Neq };
        rule.add_expr(&Cmp::new(op, 0u16));
    }
    let mut offset = 0;
    for &f in r.map.keyed_like().key() {
        rule.add_expr(&Load {
            source: key_source(f),
            dreg: reg32_at(offset),
        });
        offset += f.padded_len();
    }
    let name = CString::new(r.map.name()).expect("map name without NUL");
    debug_assert!(maps.iter().any(|m| m.get_name() == name.as_c_str()));
    rule.add_expr(&MapLookup {
        map: name,
        map_id: r.map.id(true),
        sreg: reg32_at(0),
        dreg: reg32_at(0),
    });
    let [addr, _] = r.map.data();
    let addr_write = match (family, r.map.inbound()) {
        (Family::Ipv4, true) => (16, 4),
        (Family::Ipv4, false) => (12, 4),
        (Family::Ipv6, true) => (24, 16),
        (Family::Ipv6, false) => (8, 16),
    };
    // IPv4: the header checksum at byte 10 and the transport checksum (pseudo-header);
    // IPv6 has no header checksum, only the pseudo-header's part.
    let (csum_type, csum_offset) = match family {
        Family::Ipv4 => (CSUM_INET, 10),
        Family::Ipv6 => (0, 0),
    };
    rule.add_expr(&PayloadWrite {
        transport: false,
        offset: addr_write.0,
        len: addr_write.1,
        sreg: reg32_at(0),
        csum_type,
        csum_offset,
        csum_flags: L4CSUM_PSEUDOHDR,
    });
    // The port is not in the pseudo-header: only the transport checksum, which UDP without a
    // checksum does not get.
    let l4_csum = if r.proto == IPPROTO_TCP { 16 } else { 6 };
    let (csum_type, csum_offset) = match r.udp_zero {
        Some(true) => (0, 0),
        _ => (CSUM_INET, l4_csum),
    };
    rule.add_expr(&PayloadWrite {
        transport: true,
        offset: if r.map.inbound() { 2 } else { 0 },
        len: 2,
        sreg: reg32_at(addr.padded_len()),
        csum_type,
        csum_offset,
        csum_flags: 0,
    });
    rule.add_expr(&Meta::Mark { set: false });
    rule.add_expr(&Bitwise::new(!rw.ours(), 0u32));
    rule.add_expr(&Meta::Mark { set: true });
    rule
}

/// The last rule of both chains: a packet that asked for a rewrite and did not get one.
fn drop_rule<'a>(chain: &'a Chain<'a>, rw: &Rewrite) -> nftnl::Rule<'a> {
    let mut rule = nftnl::Rule::new(chain);
    mark_has(&mut rule, rw.both());
    rule.add_expr(&nftnl::expr::Verdict::Drop);
    rule.set_comment(CString::from(DROP_COMMENT))
        .expect("the comment fits libnftnl's limit");
    rule
}

/// The comment on the last rule of both chains, shown by `nft list`.
const DROP_COMMENT: &std::ffi::CStr = c"a rewrite asked for, none found";

/// A rewrite rule in nft-like syntax (nft has no one statement for writing concatenated map
/// data; this names what the expressions do).
pub fn render_rule(rw: &Rewrite, r: &RewriteRule) -> String {
    let family = r.map.keyed_like().family();
    let (ip, proto) = (
        match family {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        },
        if r.proto == IPPROTO_TCP { "tcp" } else { "udp" },
    );
    let (addr, port) = if r.map.inbound() {
        ("daddr", "dport")
    } else {
        ("saddr", "sport")
    };
    let key: Vec<&str> = r
        .map
        .keyed_like()
        .key()
        .iter()
        .map(|f| match f {
            KeyField::IifName => "iifname",
            KeyField::OifName => "oifname",
            KeyField::Daddr(_) => "ip daddr",
            KeyField::Saddr(_) => "ip saddr",
            KeyField::L4Proto => "meta l4proto",
            KeyField::Dport => "th dport",
            KeyField::Sport => "th sport",
            KeyField::Iif => "meta iif",
            KeyField::Oif => "meta oif",
            KeyField::Ports => "th sport . th dport",
        })
        .map(|s| match (family, s) {
            (Family::Ipv6, "ip daddr") => "ip6 daddr",
            (Family::Ipv6, "ip saddr") => "ip6 saddr",
            _ => s,
        })
        .collect();
    let mut out = format!("meta mark & {:#010x} == {:#010x} ", rw.both(), rw.both());
    if let Some(slot) = r.slot() {
        let _ = write!(
            out,
            "meta mark & {:#010x} == {:#010x} ",
            slot_bits(rw.bit, 3),
            slot_bits(rw.bit, slot)
        );
    }
    let _ = write!(
        out,
        "meta nfproto {} meta l4proto {proto} ",
        match family {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    );
    match r.udp_zero {
        Some(true) => out.push_str("udp checksum 0 "),
        Some(false) => out.push_str("udp checksum != 0 "),
        None => {}
    }
    let _ = write!(
        out,
        "{ip} {addr} . {proto} {port} set {} map @{} meta mark set meta mark & {:#010x}",
        key.join(" . "),
        r.map.name(),
        !rw.ours()
    );
    out
}

fn render_drop(rw: &Rewrite) -> String {
    format!(
        "meta mark & {:#010x} == {:#010x} drop comment \"{}\"",
        rw.both(),
        rw.both(),
        DROP_COMMENT.to_string_lossy()
    )
}

/// The maps and chains as `netnat rules` prints them, after the rest of netnat's table.
pub fn render(out: &mut String, rw: &Rewrite, off: Option<&Offload>) {
    for m in &rw.maps {
        let _ = writeln!(out, "\n\tmap {} {{", m.kind.name());
        let key: Vec<&str> = m
            .kind
            .keyed_like()
            .key()
            .iter()
            .map(|f| f.type_name())
            .collect();
        let data: Vec<&str> = m.kind.data().iter().map(|f| f.type_name()).collect();
        let _ = writeln!(out, "\t\ttype {} : {}", key.join(" . "), data.join(" . "));
        let elements: Vec<String> = m
            .keys
            .elements()
            .zip(&m.data)
            .map(|(k, to)| {
                let to = [KeyValue::Addr(to.ip()), KeyValue::Port(to.port())];
                format!("{} : {}", render_element(&k), render_element(&to))
            })
            .collect();
        let _ = writeln!(
            out,
            "\t\telements = {{ {} }}",
            elements.join(",\n\t\t\t     ")
        );
        let _ = writeln!(out, "\t}}");
    }
    for (spec, inbound) in chains().iter().zip([true, false]) {
        let hook = spec.hook.map_or("", Hook::name);
        let _ = writeln!(out, "\n\tchain {} {{", spec.name);
        let _ = writeln!(
            out,
            "\t\ttype filter hook {hook} priority {}; policy accept;",
            spec.priority
        );
        for text in off.map_or_else(Vec::new, |o| offload::rewrite_rules_text(o, inbound)) {
            let _ = writeln!(out, "\t\t{text}");
        }
        for r in rw.rules(inbound) {
            let _ = writeln!(out, "\t\t{}", render_rule(rw, &r));
        }
        let _ = writeln!(out, "\t\t{}", render_drop(rw));
        let _ = writeln!(out, "\t}}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_service;

    fn services() -> Vec<Service> {
        [
            "service pub0 port 10.99.1.1 80 TCP 192.168.77.10 8080",
            "service pub0 port * 53 UDP 192.168.77.10 5353",
            "service pub0 port 2001:db8:1::1 443 TCP fd00::10 4443",
            // The same apparent endpoint again: mapped once, by the first.
            "service pub0 port 10.99.1.1 80 TCP 192.168.77.11 8080",
        ]
        .iter()
        .map(|l| parse_service(l).unwrap())
        .collect()
    }

    fn star_at(i: usize) -> Vec<IpAddr> {
        match i {
            1 => vec!["10.99.1.1".parse().unwrap()],
            _ => Vec::new(),
        }
    }

    #[test]
    fn maps_hold_what_the_consumer_decides() {
        let rw = Rewrite::new(&services(), &star_at, 0x4e00, 0x100);
        let kinds: Vec<MapKind> = rw.maps.iter().map(|m| m.kind).collect();
        assert_eq!(
            kinds,
            [
                MapKind::IN4,
                MapKind::IN4_LOCAL,
                MapKind::IN6,
                MapKind::OUT4,
                MapKind::OUT6
            ]
        );
        let text = |k: MapKind| {
            let m = rw.maps.iter().find(|m| m.kind == k).unwrap();
            m.keys
                .elements()
                .zip(&m.data)
                .map(|(key, to)| format!("{} : {to}", render_element(&key)))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            text(MapKind::IN4),
            ["\"pub0\" . 10.99.1.1 . tcp . 80 : 192.168.77.10:8080"]
        );
        assert_eq!(
            text(MapKind::IN4_LOCAL),
            ["\"pub0\" . udp . 53 : 192.168.77.10:5353"]
        );
        assert_eq!(
            text(MapKind::OUT4),
            [
                "\"pub0\" . 192.168.77.10 . tcp . 8080 : 10.99.1.1:80",
                "\"pub0\" . 192.168.77.10 . udp . 5353 : 10.99.1.1:53",
                "\"pub0\" . 192.168.77.11 . tcp . 8080 : 10.99.1.1:80",
            ]
        );
        assert_eq!(
            text(MapKind::OUT6),
            ["\"pub0\" . fd00::10 . tcp . 4443 : [2001:db8:1::1]:443"]
        );
        // An unresolved `*`: no reply element (its long replies are dropped by the last rule).
        let rw = Rewrite::new(&services(), &|_| Vec::new(), 0x4e00, 0x100);
        let out4 = rw.maps.iter().find(|m| m.kind == MapKind::OUT4).unwrap();
        assert_eq!(out4.keys.len(), 2);
    }

    #[test]
    fn rules_per_map_and_protocol_udp_over_ipv4_twice() {
        let rw = Rewrite::new(&services(), &star_at, 0x4e00, 0x100);
        let r: Vec<(MapKind, u8, Option<bool>)> = rw
            .rules(true)
            .iter()
            .map(|r| (r.map, r.proto, r.udp_zero))
            .collect();
        assert_eq!(
            r,
            [
                (MapKind::IN4, 6, None),
                (MapKind::IN4_LOCAL, 17, Some(false)),
                (MapKind::IN4_LOCAL, 17, Some(true)),
                (MapKind::IN6, 6, None),
            ]
        );
        assert_eq!(rw.rules(false).len(), 4);
        let text = render_rule(&rw, &rw.rules(true)[0]);
        assert_eq!(
            text,
            "meta mark & 0x00004f00 == 0x00004f00 meta nfproto ipv4 meta l4proto tcp ip daddr . \
             tcp dport set iifname . ip daddr . meta l4proto . th dport map @rw_in4 meta mark set \
             meta mark & 0xfffffe3f"
        );
    }

    #[test]
    fn a_star_service_s_other_addresses_get_slot_maps_and_slot_rules() {
        let svcs = services();
        let at = |i: usize| match i {
            // Default .1 (the address held for older flows), slots .5, .1, .80.
            1 => ["10.99.1.1", "10.99.1.5", "10.99.1.1", "10.99.1.80"]
                .map(|a| a.parse().unwrap())
                .to_vec(),
            _ => Vec::new(),
        };
        let rw = Rewrite::new(&svcs, &at, 0x4e00, 0x100);
        let slot_maps: Vec<(MapKind, Vec<SocketAddr>)> = rw
            .maps
            .iter()
            .filter(|m| m.kind.slot() > 0)
            .map(|m| (m.kind, m.data.clone()))
            .collect();
        let to = |a: &str| vec![a.parse::<SocketAddr>().unwrap()];
        assert_eq!(
            slot_maps,
            [
                (MapKind::of(SetKind::Out4, 1), to("10.99.1.5:53")),
                (MapKind::of(SetKind::Out4, 2), to("10.99.1.1:53")),
                (MapKind::of(SetKind::Out4, 3), to("10.99.1.80:53")),
            ]
        );
        let r = rw
            .rules(false)
            .into_iter()
            .find(|r| r.map == MapKind::of(SetKind::Out4, 2))
            .unwrap();
        assert!(
            render_rule(&rw, &r).starts_with(
                "meta mark & 0x00004f00 == 0x00004f00 meta mark & 0x000000c0 == 0x00000080 "
            ),
            "{}",
            render_rule(&rw, &r)
        );
        let default = rw.rules(false).into_iter().next().unwrap();
        assert_eq!(default.map, MapKind::OUT4);
        assert!(render_rule(&rw, &default).contains("meta mark & 0x000000c0 == 0x00000000 "));
        assert_eq!(
            (
                slot_bits(0x100, 0),
                slot_bits(0x100, 1),
                slot_bits(0x100, 3)
            ),
            (0, 0x40, 0xc0)
        );
    }

    #[test]
    fn map_data_is_address_then_port_each_in_its_registers() {
        let mut b = Vec::new();
        data_bytes(&mut b, "192.168.77.10:8080".parse().unwrap());
        assert_eq!(b, [192, 168, 77, 10, 0x1f, 0x90, 0, 0]);
        assert_eq!(b.len(), key_len(&MapKind::IN4.data()));
        let mut b = Vec::new();
        data_bytes(&mut b, "[fd00::10]:4443".parse().unwrap());
        assert_eq!(b.len(), key_len(&MapKind::OUT6.data()));
        assert_eq!(&b[16..], &[0x11, 0x5b, 0, 0]);
    }

    #[test]
    fn the_batch_holds_maps_with_data_and_rules_that_write_from_registers() {
        use super::super::batch::{QueueExprKind, install};
        use super::super::policy::Policy;
        use super::super::sets::concat_type;
        use super::super::walk::*;
        let svcs = services();
        let rw = Rewrite::new(&svcs, &star_at, 0x4e00, 0x100);
        let p = Policy::new(&svcs, 4747).with_rewrite(Some(rw));
        let (batch, _) = install(&p, QueueExprKind::Native);
        let msgs = messages(&batch);

        // NFTA_SET_NAME 2, FLAGS 3, DATA_TYPE 6, DATA_LEN 7.
        let live = msgs
            .iter()
            .filter(|(t, _, _)| *t == libc::NFT_MSG_NEWSET as u16)
            .map(|(_, _, a)| attrs(a))
            .rfind(|a| attr(a, 2).map(cstr) == Some("rw_in4"))
            .expect("rw_in4 created");
        assert_eq!(u32_attr(&live, 3), Some(libc::NFT_SET_MAP as u32));
        let data = MapKind::IN4.data();
        assert_eq!(u32_attr(&live, 6), Some(concat_type(&data)));
        assert_eq!(u32_attr(&live, 7), Some(8));

        // Its element: key nest (1) and data nest (2) holding the value (1).
        let elements = msgs
            .iter()
            .filter(|(t, _, _)| *t == libc::NFT_MSG_NEWSETELEM as u16)
            .map(|(_, _, a)| attrs(a))
            .find(|a| attr(a, 2).map(cstr) == Some("rw_in4"))
            .expect("rw_in4 elements");
        let list = attrs(attr(&elements, 3).unwrap());
        assert_eq!(list.len(), 1);
        let element = attrs(list[0].1);
        let value = attrs(attr(&element, 2).expect("data nest"));
        assert_eq!(
            attr(&value, 1),
            Some(&[192, 168, 77, 10, 0x1f, 0x90, 0, 0][..])
        );

        // The first rewrite rule: mark, family, protocol, key loads, lookup into registers,
        // two payload writes from them, the bit cleared.
        let all = rules(&batch);
        let r = all
            .iter()
            .find(|r| {
                r.iter()
                    .any(|(n, d)| n == "lookup" && u32_attr(&attrs(d), 3).is_some())
            })
            .expect("a map lookup with a data register");
        let names: Vec<&str> = r.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "meta", "bitwise", "cmp", "meta", "cmp", "meta", "cmp", "meta", "payload", "meta",
                "payload", "lookup", "payload", "payload", "meta", "bitwise", "meta"
            ]
        );
        assert_eq!(cmp_value(&r[2]), 0x4f00u32.to_ne_bytes());
        let lookup = attrs(&r[11].1);
        // NFTA_LOOKUP_SET 1, SREG 2, DREG 3.
        assert_eq!(cstr(attr(&lookup, 1).unwrap()), "rw_in4");
        assert_eq!(
            (u32_attr(&lookup, 2), u32_attr(&lookup, 3)),
            (Some(8), Some(8))
        );
        // NFTA_PAYLOAD_SREG 5, BASE 2, OFFSET 3, LEN 4, CSUM_TYPE 6, CSUM_OFFSET 7, FLAGS 8.
        let write = |i: usize| {
            let a = attrs(&r[i].1);
            [5, 2, 3, 4, 6, 7, 8].map(|t| u32_attr(&a, t).unwrap_or(u32::MAX))
        };
        let (net, th) = (
            libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
            libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
        );
        assert_eq!(write(12), [8, net, 16, 4, CSUM_INET, 10, L4CSUM_PSEUDOHDR]);
        assert_eq!(write(13), [9, th, 2, 2, CSUM_INET, 16, 0]);
        // The last rule of each chain drops what still asks for a rewrite.
        let drops = all
            .iter()
            .filter(|r| {
                r.len() == 4 && r[3].0 == "immediate" && cmp_value(&r[2]) == 0x4f00u32.to_ne_bytes()
            })
            .count();
        assert_eq!(drops, 2);
    }
}
