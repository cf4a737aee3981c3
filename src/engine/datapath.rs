//! One packet's journey through netnat: which direction it crosses, which service it belongs
//! to, how it is rewritten and which verdict it gets. Kernel-free: the queue layer hands in the
//! packet, this module hands back the decision.

use std::net::{IpAddr, SocketAddr};

use crate::config::Protocol;
use crate::engine::service::{Entry, FlowMemory, ServiceTable};
use crate::queue::{Decision, Packet, Verdict};
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
    /// An inbound ICMP error that quotes no connection conntrack knows (unsolicited or forged,
    /// as in CVE-2019-5598): handed back by the leak guard after netnat translated it.
    UnrelatedIcmp,
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
    /// Dropped; `id` is the service whose endpoint the packet's header names, when it names
    /// one (see [`attribute`]).
    Dropped { reason: Refusal, id: Option<usize> },
}

/// The direction a packet queued at netfilter hook `hook` crosses the mapping: prerouting is
/// inbound, postrouting is the reply path; other hooks are not netnat's.
pub fn direction_of(hook: u8) -> Option<Direction> {
    match hook {
        HOOK_PREROUTING => Some(Direction::Inbound),
        HOOK_POSTROUTING => Some(Direction::Reply),
        _ => None,
    }
}

/// Decides the fate of one queued packet, rewriting it in place when it is ours.
///
/// `mark` is OR-ed into the packet mark of every packet netnat translates. Inbound, it lets one
/// firewall rule pass mapped traffic through a default-drop forward chain, and it is what the
/// leak guard labels the connection by; on replies it is the proof, checked by the guard after
/// netnat's reply chain, that this reply was translated (see `nft::Guard`).
///
/// `flows` remembers which address each flow of a `*` service came to when that is not the
/// address its replies leave from by default (see [`FlowMemory`]); it is only written when the
/// service's interface has more than one address, and only read when it holds something.
///
/// `rewrite_mark` is the bit of the header-only path (`rewrite-mark`; 0 when `header-only
/// off`): a truncated packet (longer than the copy range) is decided from its headers and
/// accepted with `mark | rewrite_mark` and no payload, and netnat's rewrite chain applies the
/// rewrite in the kernel (see `nft::rewrite`). Every other verdict clears that bit, so that
/// only a header-only verdict ever asks the kernel for a rewrite.
pub fn handle(
    table: &ServiceTable,
    flows: &FlowMemory,
    marks: (u32, u32),
    pkt: &mut Packet<'_>,
) -> (Decision, Event) {
    handle_with(table, flows, marks, false, pkt)
}

/// [`handle`], with flow offload when `offload` (`offload on`, which needs a `rewrite_mark`):
/// a whole TCP or UDP packet of a service is decided and rewritten as always (its lookups,
/// flow memory and refusals, checked on the whole packet), but when its flow may be offloaded
/// the rewritten payload is not returned: the verdict is the header-only one plus the offload
/// bit ([`offload_bit`]), so that the kernel applies the same rewrite and adds the flow to its
/// flow set (see `nft::offload`). Not offloaded: ICMP errors, services with flag 0x2000,
/// draining services, TCP segments with FIN or RST, and replies of `*` flows kept at an
/// address other than the service's default one.
pub fn handle_with(
    table: &ServiceTable,
    flows: &FlowMemory,
    (mark, rewrite_mark): (u32, u32),
    offload: bool,
    pkt: &mut Packet<'_>,
) -> (Decision, Event) {
    let offload = offload && rewrite_mark != 0;
    let (mut d, e) = decide(table, flows, (mark, rewrite_mark), offload, pkt);
    if offload
        && d.modified
        && let Event::Translated {
            id,
            dir,
            flow,
            kind,
        } = e
        && whole_offloadable(table, flows, (id, dir, flow, kind), pkt.payload)
    {
        let obit = offload_bit(rewrite_mark);
        let arrived = pkt.mark & !(3 * (rewrite_mark >> 2)) & !obit;
        d.modified = false;
        d.mark = Some(arrived | mark | rewrite_mark | obit);
        return (d, e);
    }
    // A translated packet without a payload is a header-only verdict: it keeps the bit.
    let header_only = matches!(e, Event::Translated { .. }) && !d.modified;
    if rewrite_mark != 0 && !header_only {
        let current = d.mark.unwrap_or(pkt.mark);
        if current & rewrite_mark != 0 {
            d.mark = Some(current & !rewrite_mark);
        }
    }
    (d, e)
}

/// The offload bit for rewrite bit `rewrite_mark`: the third below it (`nft::offload`).
pub fn offload_bit(rewrite_mark: u32) -> u32 {
    rewrite_mark >> 3
}

/// Whether a service's flow may be handed to the kernel at all: not for flag 0x2000 (every
/// packet recorded), not for a draining service (its new connections are refused by the
/// consumer), not at a TCP segment with FIN or RST (the end of a connection is the consumer's).
fn may_offload(e: &Entry, fin_rst: bool) -> bool {
    !e.draining && !e.flags.has(crate::config::Flags::EVERY_PACKET) && !fin_rst
}

/// Whether the TCP segment at `l4` of `payload` carries FIN or RST (true when unreadable).
fn fin_or_rst(payload: &[u8], l4: usize) -> bool {
    wire::field::u8_at(payload, l4 + wire::header::tcp::FLAGS).is_none_or(|f| f & 0x05 != 0)
}

/// Whether the flow of a whole packet just translated (payload rewritten) may be handed to the
/// kernel: see [`handle_with`].
fn whole_offloadable(
    table: &ServiceTable,
    flows: &FlowMemory,
    (id, dir, flow, kind): (usize, Direction, Flow, Kind),
    payload: &[u8],
) -> bool {
    if !matches!(kind, Kind::Plain { .. }) {
        return false;
    }
    let Some(e) = table.entry(id) else {
        return false;
    };
    // The flags byte is where it was: the rewrite only changed addresses and ports.
    let fin_rst = flow.protocol == Protocol::Tcp
        && match wire::ip::glance(payload).map(|g| g.transport) {
            Some(Ok(l)) => fin_or_rst(payload, l.l4),
            _ => true,
        };
    if !may_offload(e, fin_rst) {
        return false;
    }
    match dir {
        Direction::Inbound => true,
        // A reply leaves from its flow's address; the kernel's default map writes the
        // service's default one, so a flow kept elsewhere stays with the consumer.
        Direction::Reply => {
            !table.has_others()
                || flows.is_empty()
                || flows.reply(e, flow.dst).ip() == e.reply_default()
        }
    }
}

fn decide(
    table: &ServiceTable,
    flows: &FlowMemory,
    (mark, rewrite_mark): (u32, u32),
    offload: bool,
    pkt: &mut Packet<'_>,
) -> (Decision, Event) {
    let Some(dir) = direction_of(pkt.hook) else {
        // Only our two chains queue to us; anything else is not ours to touch.
        return (pass(), Event::Passed);
    };
    if dir == Direction::Inbound && mark != 0 && pkt.mark & mark == mark {
        // Only netnat's verdict sets these bits, so this packet was translated already and is
        // back from the guard's `flows` chain (after conntrack), which queues exactly the
        // translated ICMP errors that conntrack relates to no connection.
        let id = quoted_reply_owner(table, pkt);
        let reason = Refusal::UnrelatedIcmp;
        return (drop(), Event::Dropped { reason, id });
    }
    if pkt.truncated && rewrite_mark != 0 {
        return header_only(table, flows, (mark, rewrite_mark), offload, dir, pkt);
    }
    if pkt.truncated {
        let id = attribute(table, dir, pkt);
        let reason = Refusal::Truncated;
        return (drop(), Event::Dropped { reason, id });
    }
    if dir == Direction::Inbound && table.has_draining() && opens_draining(table, pkt) {
        // A removed service keeps its established connections, not new ones: the host answers
        // as if netnat were not there (the router's own stack refuses it).
        return (pass(), Event::Passed);
    }
    let csum = if pkt.checksum_ready {
        ChecksumState::Complete
    } else {
        ChecksumState::NotReady
    };
    let (indev, outdev) = (pkt.indev, pkt.outdev);
    // The client a reply goes to, needed only when a flow may keep another address.
    let peer = match dir {
        Direction::Reply if table.has_others() && !flows.is_empty() => reply_peer(pkt.payload),
        _ => None,
    };
    let outcome = wire::rewrite(pkt.payload, dir, csum, |proto, endpoint| match dir {
        Direction::Inbound => table.inbound(indev, proto, endpoint).map(|e| (e.act, e)),
        Direction::Reply => table.reply(outdev, proto, endpoint).map(|e| {
            let app = match peer {
                Some(client) => flows.reply(e, client),
                None => SocketAddr::new(e.reply_default(), e.app.port()),
            };
            (app, e)
        }),
    });
    match outcome {
        Outcome::Rewritten { token, flow, kind } => {
            let token: &Entry = token;
            if let (Direction::Inbound, Kind::Plain { syn }) = (dir, kind) {
                flows.inbound(token, flow.src, flow.dst.ip(), syn);
            }
            let token = token.id;
            let decision = Decision {
                verdict: Verdict::Accept,
                modified: true,
                mark: Some(pkt.mark | mark),
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
        Outcome::NotOurs { .. } => {
            let reason = Refusal::UnmappedReply;
            (drop(), Event::Dropped { reason, id: None })
        }
        Outcome::Malformed(m) => {
            let id = attribute(table, dir, pkt);
            let reason = Refusal::Malformed(m);
            (drop(), Event::Dropped { reason, id })
        }
    }
}

/// The decision for a packet longer than the copy range, from its headers alone: the same
/// lookups, flow memory, counters and refusals as [`decide`] on a whole packet, but instead of
/// a rewritten payload an ACCEPT with `mark | rewrite_mark`, the request for netnat's rewrite
/// chain to write the actual (inbound) or apparent (reply) endpoint from its maps. The maps
/// hold what the table holds: the actual endpoint, and for replies the entry's
/// [`Entry::reply_default`] (the daemon re-installs them when a `*` address moves).
fn header_only(
    table: &ServiceTable,
    flows: &FlowMemory,
    (mark, rewrite_mark): (u32, u32),
    offload: bool,
    dir: Direction,
    pkt: &Packet<'_>,
) -> (Decision, Event) {
    use wire::field::{be16, u8_at};
    use wire::header::{ports, tcp};
    let refuse = |reason| {
        let id = attribute(table, dir, pkt);
        (drop(), Event::Dropped { reason, id })
    };
    let Some(g) = wire::ip::glance(pkt.payload) else {
        return refuse(Refusal::Malformed(wire::Malformed::Truncated));
    };
    let l = match g.transport {
        Ok(l) => l,
        Err(m) => return refuse(Refusal::Malformed(m)),
    };
    let Some(protocol) = Protocol::from_number(l.protocol) else {
        // An ICMP error longer than the copy range (which covers every standard one): its
        // quote cannot be rewritten from here.
        return refuse(Refusal::Truncated);
    };
    if l.first_fragment {
        // The kernel leaves a fragment's transport checksum alone; it would be wrong.
        return refuse(Refusal::Malformed(wire::Malformed::Fragment));
    }
    let (Some(sport), Some(dport)) = (
        be16(pkt.payload, l.l4 + ports::SRC),
        be16(pkt.payload, l.l4 + ports::DST),
    ) else {
        return refuse(Refusal::Malformed(wire::Malformed::Truncated));
    };
    let flow = Flow {
        protocol,
        src: SocketAddr::new(g.src, sport),
        dst: SocketAddr::new(g.dst, dport),
    };
    let syn = protocol == Protocol::Tcp
        && u8_at(pkt.payload, l.l4 + tcp::FLAGS).is_some_and(|f| f & 0x12 == 0x02);
    let kind = Kind::Plain { syn };
    let entry = match dir {
        Direction::Inbound => table.inbound(pkt.indev, protocol, flow.dst),
        Direction::Reply => table.reply(pkt.outdev, protocol, flow.src),
    };
    let Some(e) = entry else {
        return match dir {
            Direction::Inbound => (pass(), Event::Passed),
            Direction::Reply => refuse(Refusal::UnmappedReply),
        };
    };
    match dir {
        Direction::Inbound => flows.inbound(e, flow.src, flow.dst.ip(), syn),
        Direction::Reply => {}
    }
    let mut slot = 0;
    if dir == Direction::Reply && table.has_others() && !flows.is_empty() {
        // A flow the memory keeps at another address: its slot in the mark picks the reply
        // map that holds it. Past the last slot the kernel cannot write it: dropped and
        // counted rather than sent from the wrong address (`header-only off` serves it).
        let at = flows.reply(e, flow.dst).ip();
        if at != e.reply_default() {
            match slot_addresses(e).position(|a| a == at) {
                Some(i) => slot = i as u32 + 1,
                None => return refuse(Refusal::Truncated),
            }
        }
    }
    // The slot in the two bits below the rewrite bit (`nft::rewrite::slot_bits`).
    let slot_unit = rewrite_mark >> 2;
    // The slot bits are netnat's: whatever they held on arrival must not pick another slot's
    // map (or none, which the rewrite chain drops), so they are cleared before the slot is set.
    let mut arrived = pkt.mark & !(3 * slot_unit);
    let mut obit = 0;
    if offload {
        // Offloaded again when its flow set entry expired while the flow went on (a long
        // download's replies are all long): see `handle_with`.
        arrived &= !offload_bit(rewrite_mark);
        let fin_rst = protocol == Protocol::Tcp && fin_or_rst(pkt.payload, l.l4);
        if slot == 0 && may_offload(e, fin_rst) {
            obit = offload_bit(rewrite_mark);
        }
    }
    let decision = Decision {
        verdict: Verdict::Accept,
        modified: false,
        mark: Some(arrived | mark | rewrite_mark | (slot * slot_unit) | obit),
    };
    let dir_event = Event::Translated {
        id: e.id,
        dir,
        flow,
        kind,
    };
    (decision, dir_event)
}

/// The addresses of slots 1-3 of a `*` entry, in order: its apparent address, then its others.
fn slot_addresses(e: &Entry) -> impl Iterator<Item = IpAddr> + '_ {
    std::iter::once(e.app.ip())
        .chain(e.others.iter().copied())
        .take(3)
}

/// The addresses the header-only reply maps hold for entry `e`: the default (the map without a
/// slot), then slots 1-3 (a flow's address, named in the verdict's mark).
pub fn reply_slots(e: &Entry) -> Vec<IpAddr> {
    std::iter::once(e.reply_default())
        .chain(slot_addresses(e))
        .collect()
}

/// The client endpoint of a reply: the destination of a TCP or UDP packet, the source of the
/// packet an ICMP error quotes. None when it cannot be read (the reply then leaves from the
/// service's default address).
fn reply_peer(payload: &[u8]) -> Option<SocketAddr> {
    let outer = wire::ip::parse(payload).ok()?;
    let quoted = matches!(outer.protocol, 1 | 58);
    let (addrs, l4, protocol) = if quoted {
        let quote = payload.get(outer.l4 + 8..outer.end)?;
        let inner = wire::ip::parse_quoted(quote).ok()?;
        (quote, inner.l4, inner.protocol)
    } else {
        (payload, outer.l4, outer.protocol)
    };
    Protocol::from_number(protocol)?;
    let ip: IpAddr = match (addrs.first()? >> 4, quoted) {
        // A packet's destination; a quoted packet's source.
        (4, false) => <[u8; 4]>::try_from(addrs.get(16..20)?).ok()?.into(),
        (4, true) => <[u8; 4]>::try_from(addrs.get(12..16)?).ok()?.into(),
        (6, false) => <[u8; 16]>::try_from(addrs.get(24..40)?).ok()?.into(),
        (6, true) => <[u8; 16]>::try_from(addrs.get(8..24)?).ok()?.into(),
        _ => return None,
    };
    let at = if quoted { l4 } else { l4 + 2 };
    let port = addrs.get(at..at + 2)?;
    Some(SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]])))
}

/// The service a dropped packet belongs to, if its headers still name a service's endpoint:
/// the destination for inbound packets, the source for replies. Only on the drop path.
fn attribute(table: &ServiceTable, dir: Direction, pkt: &Packet<'_>) -> Option<usize> {
    let p = peek(pkt.payload)?;
    let proto = Protocol::from_number(p.protocol)?;
    let (sport, dport) = p.ports?;
    let e = match dir {
        Direction::Inbound => table.inbound(pkt.indev, proto, SocketAddr::new(p.dst, dport)),
        Direction::Reply => table.reply(pkt.outdev, proto, SocketAddr::new(p.src, sport)),
    }?;
    Some(e.id)
}

/// The service whose actual endpoint an (already translated) inbound ICMP error quotes as its
/// source, for counting its drop.
fn quoted_reply_owner(table: &ServiceTable, pkt: &Packet<'_>) -> Option<usize> {
    let outer = wire::ip::parse(pkt.payload).ok()?;
    let quote = pkt.payload.get(outer.l4 + 8..outer.end)?;
    let inner = wire::ip::parse_quoted(quote).ok()?;
    let src: IpAddr = match inner.family {
        wire::ip::Family::V4 => <[u8; 4]>::try_from(quote.get(12..16)?).ok()?.into(),
        wire::ip::Family::V6 => <[u8; 16]>::try_from(quote.get(8..24)?).ok()?.into(),
    };
    let sport = quote.get(inner.l4..inner.l4 + 2)?;
    let proto = Protocol::from_number(inner.protocol)?;
    let endpoint = SocketAddr::new(src, u16::from_be_bytes([sport[0], sport[1]]));
    Some(table.reply(pkt.indev, proto, endpoint)?.id)
}

/// Whether an inbound packet opens a new TCP connection (SYN without ACK) to a draining service.
fn opens_draining(table: &ServiceTable, pkt: &Packet<'_>) -> bool {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    let Some(p) = peek(pkt.payload) else {
        return false;
    };
    let (Some(flags), Some((_, dport))) = (p.tcp_flags, p.ports) else {
        return false;
    };
    flags & (SYN | ACK) == SYN
        && table
            .inbound(pkt.indev, Protocol::Tcp, SocketAddr::new(p.dst, dport))
            .is_some_and(|e| e.draining)
}

/// What a quick look at a packet's headers shows, for drop records and for attributing drops.
/// Lenient on purpose (the packet may be malformed): only what can be read is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peek {
    /// IP protocol number: the transport's when its header can be found (IPv6: past the
    /// extension headers), else the IP header's protocol field (IPv6: the first next header).
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Source and destination port, when the transport header's first 4 bytes are present
    /// (TCP or UDP, not a later fragment).
    pub ports: Option<(u16, u16)>,
    /// TCP flags, when the packet is TCP and they are present.
    pub tcp_flags: Option<u8>,
}

/// Reads addresses, protocol and ports from the start of an IP packet; `None` when not even the
/// IP addresses can be read. Never panics. The headers are found by `wire::ip::glance`, the
/// same parser the rewrite uses, without its length checks.
pub fn peek(pkt: &[u8]) -> Option<Peek> {
    use wire::field::{be16, u8_at};
    use wire::header::{ports, tcp};
    let g = wire::ip::glance(pkt)?;
    let l4 = g.transport.ok();
    let ports = l4
        .filter(|l| Protocol::from_number(l.protocol).is_some())
        .and_then(|l| Some((be16(pkt, l.l4 + ports::SRC)?, be16(pkt, l.l4 + ports::DST)?)));
    let tcp_flags = l4
        .filter(|l| l.protocol == wire::header::proto::TCP)
        .and_then(|l| u8_at(pkt, l.l4 + tcp::FLAGS));
    Some(Peek {
        protocol: l4.map_or(g.header_protocol, |l| l.protocol),
        src: g.src,
        dst: g.dst,
        ports,
        tcp_flags,
    })
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

#[cfg(test)]
pub(crate) mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::config::parse_service;
    use crate::engine::service::OnePublic;

    fn table() -> ServiceTable {
        let s = parse_service("service pub0 port * 80 TCP 192.168.77.10 8080 0x8000").unwrap();
        ServiceTable::build(&[s], &OnePublic)
    }

    /// A minimal IPv4/TCP SYN with correct checksums.
    fn tcp_syn(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[32] = 0x50;
        p[33] = 0x02; // SYN
        let ip = pnet_packet::ipv4::Ipv4Packet::new(&p).unwrap();
        let ipc = pnet_packet::ipv4::checksum(&ip);
        let tcp = pnet_packet::tcp::TcpPacket::new(&p[20..]).unwrap();
        let tc = pnet_packet::tcp::ipv4_checksum(&tcp, &src.into(), &dst.into());
        p[10..12].copy_from_slice(&ipc.to_be_bytes());
        p[36..38].copy_from_slice(&tc.to_be_bytes());
        p
    }

    fn packet(payload: &mut [u8], hook: u8, indev: u32, outdev: u32) -> Packet<'_> {
        // An administrator's mark bit, which every verdict must keep.
        ipv4_packet(payload, hook, indev, outdev, 0x1)
    }

    /// A whole IPv4 packet as the queue delivers it (checksum ready, not GSO, not truncated);
    /// the consumer's and the monitor's tests use it too.
    pub(crate) fn ipv4_packet(
        payload: &mut [u8],
        hook: u8,
        indev: u32,
        outdev: u32,
        mark: u32,
    ) -> Packet<'_> {
        Packet {
            meta: crate::queue::PacketMeta {
                id: 1,
                hw_protocol: 0x0800,
                hook,
                indev,
                outdev,
                mark,
            },
            checksum_ready: true,
            gso: false,
            truncated: false,
            orig_len: None,
            payload,
        }
    }

    #[test]
    fn inbound_syn_is_translated_marked_and_reported() {
        let t = table();
        let mut bytes = tcp_syn([10, 99, 1, 2], 40312, [10, 99, 1, 1], 80);
        let mut pkt = packet(&mut bytes, HOOK_PREROUTING, 7, 0);
        let (d, e) = handle(&t, &FlowMemory::default(), (0x4e00, 0), &mut pkt);
        assert_eq!(d.verdict, Verdict::Accept);
        assert!(d.modified);
        assert_eq!(
            d.mark,
            Some(0x4e01),
            "netnat's bits are OR-ed into the existing mark"
        );
        match e {
            Event::Translated {
                id: 0,
                dir: Direction::Inbound,
                flow,
                kind: Kind::Plain { syn: true },
            } => {
                assert_eq!(flow.dst, "10.99.1.1:80".parse().unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(&bytes[16..20], &[192, 168, 77, 10]);
        assert_eq!(u16::from_be_bytes([bytes[22], bytes[23]]), 8080);
    }

    #[test]
    fn inbound_on_another_interface_passes_unchanged() {
        let t = table();
        let mut bytes = tcp_syn([10, 99, 1, 2], 40312, [10, 99, 1, 1], 80);
        let before = bytes.clone();
        let mut pkt = packet(&mut bytes, HOOK_PREROUTING, 8, 0);
        let (d, e) = handle(&t, &FlowMemory::default(), (0x4e00, 0), &mut pkt);
        assert_eq!(
            (d.verdict, d.modified, e),
            (Verdict::Accept, false, Event::Passed)
        );
        assert_eq!(bytes, before);
    }

    #[test]
    fn unmapped_reply_is_dropped_never_leaked() {
        let t = table();
        // From the right server but the wrong port: no service, so no translation.
        let mut bytes = tcp_syn([192, 168, 77, 10], 9999, [10, 99, 1, 2], 40312);
        let mut pkt = packet(&mut bytes, HOOK_POSTROUTING, 0, 7);
        let (d, e) = handle(&t, &FlowMemory::default(), (0x4e00, 0), &mut pkt);
        assert_eq!(d.verdict, Verdict::Drop);
        assert_eq!(
            e,
            Event::Dropped {
                reason: Refusal::UnmappedReply,
                id: None
            }
        );
    }

    #[test]
    fn reply_is_translated_and_marked_for_the_guard() {
        let t = table();
        let mut bytes = tcp_syn([192, 168, 77, 10], 8080, [10, 99, 1, 2], 40312);
        let mut pkt = packet(&mut bytes, HOOK_POSTROUTING, 0, 7);
        let (d, _) = handle(&t, &FlowMemory::default(), (0x4e00, 0), &mut pkt);
        assert_eq!(
            (d.verdict, d.modified, d.mark),
            (Verdict::Accept, true, Some(0x4e01))
        );
        assert_eq!(&bytes[12..16], &[10, 99, 1, 1]);
        assert_eq!(u16::from_be_bytes([bytes[20], bytes[21]]), 80);
    }

    #[test]
    fn truncated_and_malformed_packets_are_dropped() {
        let t = table();
        let mut bytes = tcp_syn([10, 99, 1, 2], 40312, [10, 99, 1, 1], 80);
        let mut pkt = packet(&mut bytes, HOOK_PREROUTING, 7, 0);
        pkt.truncated = true;
        let (d, e) = handle(&t, &FlowMemory::default(), (0, 0), &mut pkt);
        // The headers still name service 0's apparent endpoint: the drop is its.
        assert_eq!(
            (d.verdict, e),
            (
                Verdict::Drop,
                Event::Dropped {
                    reason: Refusal::Truncated,
                    id: Some(0)
                }
            )
        );

        let mut short = bytes[..30].to_vec();
        let mut pkt = packet(&mut short, HOOK_PREROUTING, 7, 0);
        let (d, e) = handle(&t, &FlowMemory::default(), (0, 0), &mut pkt);
        assert_eq!(d.verdict, Verdict::Drop);
        assert!(
            matches!(
                e,
                Event::Dropped {
                    reason: Refusal::Malformed(_),
                    id: Some(0)
                }
            ),
            "{e:?}"
        );

        // Too short even for the ports: dropped, but nobody's.
        let mut shorter = bytes[..22].to_vec();
        let mut pkt = packet(&mut shorter, HOOK_PREROUTING, 7, 0);
        let (_, e) = handle(&t, &FlowMemory::default(), (0, 0), &mut pkt);
        assert!(
            matches!(
                e,
                Event::Dropped {
                    reason: Refusal::Malformed(_),
                    id: None
                }
            ),
            "{e:?}"
        );
    }

    /// A 2000-byte TCP segment as a 1280-byte copy range delivers it: headers and the start of
    /// the data, the IP length still the packet's.
    fn long_segment(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut p = tcp_syn(src, sport, dst, dport);
        p[2..4].copy_from_slice(&2000u16.to_be_bytes());
        p[33] = 0x10; // ACK
        p.resize(1280, 0xab);
        p
    }

    #[test]
    fn a_truncated_packet_gets_accept_and_the_rewrite_mark_never_a_payload() {
        let t = table();
        let marks = (0x4e00, 0x100);
        let mut bytes = long_segment([10, 99, 1, 2], 40312, [10, 99, 1, 1], 80);
        let before = bytes.clone();
        let mut pkt = packet(&mut bytes, HOOK_PREROUTING, 7, 0);
        pkt.truncated = true;
        let (d, e) = handle(&t, &FlowMemory::default(), marks, &mut pkt);
        assert_eq!(
            (d.verdict, d.modified, d.mark),
            (Verdict::Accept, false, Some(0x4f01)),
            "netnat's bits and the rewrite bit, the packet's own kept"
        );
        assert!(
            matches!(e, Event::Translated { id: 0, dir: Direction::Inbound, kind: Kind::Plain { syn: false }, flow }
                if flow.dst == "10.99.1.1:80".parse().unwrap() && flow.src == "10.99.1.2:40312".parse().unwrap()),
            "{e:?}"
        );
        assert_eq!(bytes, before, "the kernel rewrites it, not netnat");

        // A reply the same way; one from an unmapped port is still dropped.
        let mut reply = long_segment([192, 168, 77, 10], 8080, [10, 99, 1, 2], 40312);
        let mut pkt = packet(&mut reply, HOOK_POSTROUTING, 0, 7);
        pkt.truncated = true;
        let (d, e) = handle(&t, &FlowMemory::default(), marks, &mut pkt);
        assert_eq!(
            (d.verdict, d.modified, d.mark),
            (Verdict::Accept, false, Some(0x4f01))
        );
        assert!(
            matches!(
                e,
                Event::Translated {
                    dir: Direction::Reply,
                    ..
                }
            ),
            "{e:?}"
        );
        // Slot bits the reply arrived with name no slot: the default map is asked for.
        let mut reply = long_segment([192, 168, 77, 10], 8080, [10, 99, 1, 2], 40312);
        let mut pkt = packet(&mut reply, HOOK_POSTROUTING, 0, 7);
        pkt.truncated = true;
        pkt.mark |= 0xc0;
        let (d, _) = handle(&t, &FlowMemory::default(), marks, &mut pkt);
        assert_eq!(d.mark, Some(0x4f01), "arrived slot bits cleared");
        let mut stray = long_segment([192, 168, 77, 10], 9999, [10, 99, 1, 2], 40312);
        let mut pkt = packet(&mut stray, HOOK_POSTROUTING, 0, 7);
        pkt.truncated = true;
        let (d, e) = handle(&t, &FlowMemory::default(), marks, &mut pkt);
        assert_eq!(d.verdict, Verdict::Drop);
        assert_eq!(
            e,
            Event::Dropped {
                reason: Refusal::UnmappedReply,
                id: None
            }
        );

        // Header-only off: a truncated packet is dropped, as before.
        let mut again = long_segment([10, 99, 1, 2], 40312, [10, 99, 1, 1], 80);
        let mut pkt = packet(&mut again, HOOK_PREROUTING, 7, 0);
        pkt.truncated = true;
        let (d, e) = handle(&t, &FlowMemory::default(), (0x4e00, 0), &mut pkt);
        assert_eq!(d.verdict, Verdict::Drop);
        assert!(matches!(
            e,
            Event::Dropped {
                reason: Refusal::Truncated,
                id: Some(0)
            }
        ));
    }

    #[test]
    fn a_truncated_icmp_error_is_dropped_and_whole_packets_lose_the_rewrite_bit() {
        let t = table();
        let marks = (0x4e00, 0x100);
        let mut err = port_unreachable(1000);
        err[2..4].copy_from_slice(&1400u16.to_be_bytes());
        let mut pkt = packet(&mut err, HOOK_POSTROUTING, 0, 7);
        pkt.truncated = true;
        let (d, e) = handle(&t, &FlowMemory::default(), marks, &mut pkt);
        assert_eq!(d.verdict, Verdict::Drop);
        assert!(
            matches!(
                e,
                Event::Dropped {
                    reason: Refusal::Truncated,
                    ..
                }
            ),
            "{e:?}"
        );

        // A whole packet that arrives with the bit: rewritten here, the bit cleared, so the
        // kernel's rewrite chain leaves it alone.
        let mut syn = tcp_syn([10, 99, 1, 2], 40312, [10, 99, 1, 1], 80);
        let mut pkt = packet(&mut syn, HOOK_PREROUTING, 7, 0);
        pkt.mark = 0x101;
        let (d, _) = handle(&t, &FlowMemory::default(), marks, &mut pkt);
        assert_eq!((d.modified, d.mark), (true, Some(0x4e01)));
        // Passed unchanged (not ours): the bit cleared too.
        let mut other = tcp_syn([10, 99, 1, 2], 40312, [10, 99, 1, 1], 81);
        let mut pkt = packet(&mut other, HOOK_PREROUTING, 7, 0);
        pkt.mark = 0x101;
        let (d, e) = handle(&t, &FlowMemory::default(), marks, &mut pkt);
        assert_eq!(
            (d.verdict, d.modified, d.mark, e),
            (Verdict::Accept, false, Some(0x1), Event::Passed)
        );
    }

    /// The service of [`table`], removed and draining (one other service configured).
    fn draining_table() -> ServiceTable {
        let other = parse_service("service pub0 port * 22 TCP 192.168.77.11 22").unwrap();
        let gone = parse_service("service pub0 port * 80 TCP 192.168.77.10 8080").unwrap();
        ServiceTable::build_draining(&[other, gone], 1, &OnePublic)
    }

    #[test]
    fn a_draining_service_refuses_new_connections_and_keeps_established_ones() {
        let t = draining_table();
        assert!(t.has_draining() && !table().has_draining());
        // A SYN: passed unchanged, for the router's own stack to refuse.
        let mut syn = tcp_syn([10, 99, 1, 2], 40312, [10, 99, 1, 1], 80);
        let before = syn.clone();
        let mut pkt = packet(&mut syn, HOOK_PREROUTING, 7, 0);
        let (d, e) = handle(&t, &FlowMemory::default(), (0x4e00, 0), &mut pkt);
        assert_eq!(
            (d.verdict, d.modified, e),
            (Verdict::Accept, false, Event::Passed)
        );
        assert_eq!(syn, before);
        // A segment of an established connection (ACK): translated as before the removal.
        let mut ack = tcp_syn([10, 99, 1, 2], 40312, [10, 99, 1, 1], 80);
        ack[33] = 0x10;
        let mut pkt = packet(&mut ack, HOOK_PREROUTING, 7, 0);
        let (d, e) = handle(&t, &FlowMemory::default(), (0x4e00, 0), &mut pkt);
        assert!(d.modified, "{e:?}");
        assert!(matches!(e, Event::Translated { id: 1, .. }), "{e:?}");
        assert_eq!(&ack[16..20], &[192, 168, 77, 10]);
        // Its replies too, marked for the guard.
        let mut reply = tcp_syn([192, 168, 77, 10], 8080, [10, 99, 1, 2], 40312);
        reply[33] = 0x12; // SYN-ACK: a reply, not a new connection
        let mut pkt = packet(&mut reply, HOOK_POSTROUTING, 0, 7);
        let (d, _) = handle(&t, &FlowMemory::default(), (0x4e00, 0), &mut pkt);
        assert_eq!((d.modified, d.mark), (true, Some(0x4e01)));
        // The configured service is untouched: its SYN is translated.
        let mut ssh = tcp_syn([10, 99, 1, 2], 40313, [10, 99, 1, 1], 22);
        let mut pkt = packet(&mut ssh, HOOK_PREROUTING, 7, 0);
        assert!(
            handle(&t, &FlowMemory::default(), (0x4e00, 0), &mut pkt)
                .0
                .modified
        );
    }

    #[test]
    fn a_packet_back_with_netnats_mark_is_an_unrelated_icmp_error_and_dropped() {
        let t = table();
        // Port unreachable from the client quoting actual:8080 → client (as translated).
        let quoted = tcp_syn([192, 168, 77, 10], 8080, [10, 99, 1, 2], 40312);
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((28 + quoted.len()) as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 1;
        p[12..16].copy_from_slice(&[10, 99, 1, 2]);
        p[16..20].copy_from_slice(&[192, 168, 77, 10]);
        p[20] = 3;
        p[21] = 3;
        p.extend_from_slice(&quoted);
        let mut pkt = packet(&mut p, HOOK_PREROUTING, 7, 0);
        pkt.mark = 0x4e00;
        let (d, e) = handle(&t, &FlowMemory::default(), (0x4e00, 0), &mut pkt);
        assert_eq!(d.verdict, Verdict::Drop);
        assert_eq!(
            e,
            Event::Dropped {
                reason: Refusal::UnrelatedIcmp,
                id: Some(0)
            }
        );
    }

    #[test]
    fn a_configured_service_wins_an_endpoint_over_a_draining_one() {
        let moved = parse_service("service pub0 port * 80 TCP 192.168.77.12 8080").unwrap();
        let gone = parse_service("service pub0 port * 80 TCP 192.168.77.10 8080").unwrap();
        let t = ServiceTable::build_draining(&[moved, gone], 1, &OnePublic);
        let mut syn = tcp_syn([10, 99, 1, 2], 40312, [10, 99, 1, 1], 80);
        let mut pkt = packet(&mut syn, HOOK_PREROUTING, 7, 0);
        let (d, e) = handle(&t, &FlowMemory::default(), (0x4e00, 0), &mut pkt);
        assert!(
            d.modified && matches!(e, Event::Translated { id: 0, .. }),
            "{e:?}"
        );
        assert_eq!(&syn[16..20], &[192, 168, 77, 12]);
        assert_eq!(
            t.conflicts().len(),
            1,
            "the draining one lost its apparent endpoint"
        );
        // What the old server still sends is translated (and the client's answer goes to the
        // new server, which resets the old connection).
        let mut reply = tcp_syn([192, 168, 77, 10], 8080, [10, 99, 1, 2], 40312);
        reply[33] = 0x10;
        let mut pkt = packet(&mut reply, HOOK_POSTROUTING, 0, 7);
        let (d, e) = handle(&t, &FlowMemory::default(), (0x4e00, 0), &mut pkt);
        assert!(
            d.modified && matches!(e, Event::Translated { id: 1, .. }),
            "{e:?}"
        );
        assert_eq!(&reply[12..16], &[10, 99, 1, 1]);
    }

    /// pub0 (ifindex 7) with `*` at `v4` and the other valid IPv4 addresses `others`.
    struct Pub0(&'static str, &'static [&'static str]);

    impl crate::engine::service::Interfaces for Pub0 {
        fn index(&self, name: &str) -> Option<u32> {
            (name == "pub0").then_some(7)
        }
        fn address(&self, name: &str, v6: bool) -> Option<IpAddr> {
            (name == "pub0" && !v6).then(|| self.0.parse().unwrap())
        }
        fn others(&self, _: &str, _: bool) -> Vec<IpAddr> {
            self.1.iter().map(|a| a.parse().unwrap()).collect()
        }
    }

    /// Port unreachable from the server about a segment it got from the client (as
    /// translated), as it leaves towards the client.
    fn port_unreachable(client_port: u16) -> Vec<u8> {
        let quoted = tcp_syn([10, 99, 1, 2], client_port, [192, 168, 77, 10], 8080);
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((28 + quoted.len()) as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 1;
        p[12..16].copy_from_slice(&[192, 168, 77, 10]);
        p[16..20].copy_from_slice(&[10, 99, 1, 2]);
        p[20] = 3;
        p[21] = 3;
        p.extend_from_slice(&quoted);
        p
    }

    /// Sends one packet through `handle`, returns the source address it leaves with (the
    /// quoted destination for an ICMP error) or None when not translated.
    fn through(
        t: &ServiceTable,
        m: &mut FlowMemory,
        mut bytes: Vec<u8>,
        hook: u8,
    ) -> Option<[u8; 4]> {
        let (indev, outdev) = if hook == HOOK_PREROUTING {
            (7, 0)
        } else {
            (0, 7)
        };
        let mut pkt = packet(&mut bytes, hook, indev, outdev);
        let (d, e) = handle(t, m, (0x4e00, 0), &mut pkt);
        if !d.modified {
            return None;
        }
        assert!(matches!(e, Event::Translated { .. }), "{e:?}");
        let at = match (hook, bytes[9]) {
            (HOOK_PREROUTING, _) => 16,
            (_, 1) => 28 + 16, // the quoted destination
            _ => 12,
        };
        Some(bytes[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn flows_keep_their_address_when_star_moves_until_it_is_removed() {
        let svcs = [parse_service("service pub0 port * 80 TCP 192.168.77.10 8080").unwrap()];
        let before = ServiceTable::build(&svcs, &Pub0("10.99.1.1", &["10.99.1.80"]));
        let mut m = FlowMemory::default();
        let syn = |port, to| tcp_syn([10, 99, 1, 2], port, to, 80);
        let reply = |port| tcp_syn([192, 168, 77, 10], 8080, [10, 99, 1, 2], port);
        let (a, b) = ([10, 99, 1, 1], [10, 99, 1, 80]);
        // A connection to `*` and one to the secondary; only the second is remembered.
        assert!(through(&before, &mut m, syn(1000, a), HOOK_PREROUTING).is_some());
        assert!(m.is_empty());
        assert!(through(&before, &mut m, syn(1001, b), HOOK_PREROUTING).is_some());
        assert_eq!(m.len(), 1);
        assert_eq!(
            through(&before, &mut m, reply(1000), HOOK_POSTROUTING),
            Some(a)
        );
        assert_eq!(
            through(&before, &mut m, reply(1001), HOOK_POSTROUTING),
            Some(b)
        );

        // `*` moves to .80 while .1 stays valid: each flow keeps its address, its ICMP
        // errors too; a new connection to .80 is answered from .80.
        let moved =
            ServiceTable::build(&svcs, &Pub0("10.99.1.80", &["10.99.1.1"])).carry_over(&before);
        assert_eq!(
            through(&moved, &mut m, reply(1000), HOOK_POSTROUTING),
            Some(a)
        );
        assert_eq!(
            through(&moved, &mut m, reply(1001), HOOK_POSTROUTING),
            Some(b)
        );
        assert_eq!(
            through(&moved, &mut m, port_unreachable(1001), HOOK_POSTROUTING),
            Some(b)
        );
        assert_eq!(
            through(&moved, &mut m, port_unreachable(1000), HOOK_POSTROUTING),
            Some(a)
        );
        assert!(through(&moved, &mut m, syn(1002, b), HOOK_PREROUTING).is_some());
        assert_eq!(
            through(&moved, &mut m, reply(1002), HOOK_POSTROUTING),
            Some(b)
        );
        assert!(through(&moved, &mut m, syn(1003, a), HOOK_PREROUTING).is_some());
        assert_eq!(
            through(&moved, &mut m, reply(1003), HOOK_POSTROUTING),
            Some(a)
        );

        // .1 removed: everything leaves from `*`, and .1 is no longer served.
        let removed = ServiceTable::build(&svcs, &Pub0("10.99.1.80", &[])).carry_over(&moved);
        for port in 1000..1004 {
            assert_eq!(
                through(&removed, &mut m, reply(port), HOOK_POSTROUTING),
                Some(b)
            );
        }
        assert_eq!(
            through(&removed, &mut m, syn(1004, a), HOOK_PREROUTING),
            None
        );
    }

    #[test]
    fn a_long_reply_of_a_flow_kept_at_another_address_names_its_slot() {
        let svcs = [parse_service("service pub0 port * 80 TCP 192.168.77.10 8080").unwrap()];
        let t = ServiceTable::build(&svcs, &Pub0("10.99.1.1", &["10.99.1.80"]));
        let e = t.entry(0).unwrap();
        let slots: Vec<String> = reply_slots(e).iter().map(|a| a.to_string()).collect();
        assert_eq!(slots, ["10.99.1.1", "10.99.1.1", "10.99.1.80"]);
        let mut m = FlowMemory::default();
        let syn = tcp_syn([10, 99, 1, 2], 1001, [10, 99, 1, 80], 80);
        assert!(through(&t, &mut m, syn, HOOK_PREROUTING).is_some());
        let reply = |port| {
            let mut r = long_segment([192, 168, 77, 10], 8080, [10, 99, 1, 2], port);
            let mut pkt = packet(&mut r, HOOK_POSTROUTING, 0, 7);
            pkt.truncated = true;
            let (d, e) = handle(&t, &m, (0x4e00, 0x100), &mut pkt);
            assert!(matches!(e, Event::Translated { .. }), "{e:?}");
            d.mark
        };
        // Kept at .80, slot 2 (0x80); another flow leaves from the default, no slot bits.
        assert_eq!(reply(1001), Some(0x4f81));
        assert_eq!(reply(1002), Some(0x4f01));
    }

    #[test]
    fn with_one_address_the_flow_memory_stays_empty() {
        let t = table();
        assert!(!t.has_others());
        let mut m = FlowMemory::default();
        let syn = tcp_syn([10, 99, 1, 2], 1000, [10, 99, 1, 1], 80);
        assert!(through(&t, &mut m, syn, HOOK_PREROUTING).is_some());
        let reply = tcp_syn([192, 168, 77, 10], 8080, [10, 99, 1, 2], 1000);
        assert_eq!(
            through(&t, &mut m, reply, HOOK_POSTROUTING),
            Some([10, 99, 1, 1])
        );
        assert!(m.is_empty());
    }

    #[test]
    fn peek_reads_what_is_there() {
        let bytes = tcp_syn([10, 99, 1, 2], 40312, [10, 99, 1, 1], 80);
        let p = peek(&bytes).unwrap();
        assert_eq!(p.protocol, 6);
        assert_eq!(p.src, IpAddr::from([10, 99, 1, 2]));
        assert_eq!(p.ports, Some((40312, 80)));
        assert_eq!(p.tcp_flags, Some(0x02));
        assert_eq!(peek(&bytes[..22]).unwrap().ports, None);
        assert_eq!(peek(&bytes[..33]).unwrap().tcp_flags, None);
        assert_eq!(peek(&bytes[..19]), None);
        assert_eq!(peek(&[]), None);
        let mut frag = bytes.clone();
        frag[7] = 1; // fragment offset 8: no ports
        assert_eq!(peek(&frag).unwrap().ports, None);
    }

    #[test]
    fn peek_walks_ipv6_extension_headers() {
        // IPv6, hop-by-hop options (8 bytes), then UDP 2001:db8::2:5353 -> 2001:db8::1:53.
        let mut p = vec![0u8; 40 + 8 + 8];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&16u16.to_be_bytes());
        p[6] = 0; // hop-by-hop
        p[8..24].copy_from_slice(
            &"2001:db8::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        p[24..40].copy_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        p[40] = 17; // next: UDP
        p[48..50].copy_from_slice(&5353u16.to_be_bytes());
        p[50..52].copy_from_slice(&53u16.to_be_bytes());
        let got = peek(&p).unwrap();
        assert_eq!(
            (got.protocol, got.ports, got.tcp_flags),
            (17, Some((5353, 53)), None)
        );
        // A later fragment: addresses, no ports, the protocol field as it stands.
        p[40] = 44;
        p[48..56].copy_from_slice(&[17, 0, 0, 8, 0, 0, 0, 1]);
        let got = peek(&p).unwrap();
        assert_eq!((got.protocol, got.ports), (0, None));
        assert_eq!(got.dst, "2001:db8::1".parse::<IpAddr>().unwrap());
    }
}
