//! What a queue thread learns from each packet's fate: counters ([`crate::engine::stats`]) and
//! the records the services' flags ask for ([`crate::engine::record`]).
//!
//! One [`Monitor`] per queue thread, owned by it: its counters (the thread's [`Shard`], which
//! the main thread reads and sums) and its rate limits; nothing of these is shared with another
//! queue thread, so nothing is locked. The one thing the monitors share is the UDP new-flow
//! memory ([`NewFlows`], lock-free). What the services are and what
//! their flags ask for comes from the generation's [`ServiceSet`], built by the main thread and
//! only read here. Per packet it does integer increments; it formats a record only when a flag
//! asks for one and the rate limit of that service and record class admits it.
//!
//! Rate limits are per queue: each thread's buckets get `log-rate` and `log-burst` divided
//! among the queues (at least 1 each, [`Rate::per_queue`]), so that a flood of spoofed sources
//! spread over every CPU still gets about `log-rate` records per second per service and class,
//! and one `sup` line per thread for the rest. The UDP new-flow memory is not per queue: the
//! packets of one flow can be handled by two CPUs (and so two queues), and the flow must count
//! once. Volume records (0x4000) are the main thread's: it sums the
//! shards ([`crate::engine::consumer::Hub::volume_records`]).

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{Flags, Protocol, Service};
use crate::engine::datapath::{self, Event};
use crate::engine::record::{
    DropAction, DropRecord, IcmpRecord, MappingEvent, NewFlows, PacketRecord, RecordKind,
    SuppressedRecord, icmp_type_code,
};
use crate::engine::service::server_index;
use crate::engine::stats::{Carry, DropReason, LiveStats, Rate, Shard, TokenBucket};
use crate::log::Logger;
use crate::queue::Packet;
use crate::wire::{self, Direction, Kind};

/// The clocks of one batch, read once per batch rather than per packet.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock {
    /// Monotonic milliseconds since the daemon started (rate limits).
    pub ms: u64,
    /// Wall clock, seconds since the Unix epoch (`last seen`).
    pub wall: u64,
}

impl Clock {
    fn secs(&self) -> u32 {
        (self.ms / 1000) as u32
    }
}

/// The services of one generation as the monitors read them: built once by the main thread,
/// never changed, shared by every queue thread.
#[derive(Debug)]
pub struct ServiceSet {
    services: Vec<Service>,
    flags: Vec<Flags>,
    /// Some service has flag 0x1000, so packets of no service are reported too.
    any_drops: bool,
    /// Per service, its index among the [`Limits`] of a monitor, or [`NO_LIMITS`] when its
    /// flags ask for no rate limited record: with thousands of services, most have none.
    limit_of: Vec<u32>,
    limits: usize,
    /// Per service, its serial: the key of its UDP flows in the [`NewFlows`] memory. A service
    /// a reload carries over keeps it ([`ServiceSet::carrying`]), any other gets a new one.
    serials: Vec<u64>,
}

/// The next service serial (0 is never given out).
static SERIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl ServiceSet {
    pub fn new(services: Vec<Service>) -> ServiceSet {
        let mut limits = 0;
        let limit_of = services
            .iter()
            .map(|s| {
                if needs_limits(s.flags) {
                    limits += 1;
                    (limits - 1) as u32
                } else {
                    NO_LIMITS
                }
            })
            .collect();
        ServiceSet {
            flags: services.iter().map(|s| s.flags).collect(),
            any_drops: services.iter().any(|s| s.flags.has(Flags::DROPS)),
            serials: (0..services.len())
                .map(|_| SERIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                .collect(),
            services,
            limit_of,
            limits,
        }
    }

    /// The services `map` carries over from `old` (`map[old] = Some(new)`, see
    /// [`crate::engine::stats::carry_map`]) keep their serials, so their UDP flows are still
    /// known; the others keep their new ones.
    pub fn carrying(mut self, old: &ServiceSet, map: &[Option<usize>]) -> ServiceSet {
        for (from, to) in map.iter().enumerate() {
            if let (Some(&serial), Some(slot)) = (
                old.serials.get(from),
                to.and_then(|t| self.serials.get_mut(t)),
            ) {
                *slot = serial;
            }
        }
        self
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The serial of service `id` (see [`ServiceSet::carrying`]).
    pub fn serial(&self, id: usize) -> Option<u64> {
        self.serials.get(id).copied()
    }
}

/// One service's rate limits in one monitor, a bucket per record class.
#[derive(Clone, Copy, Default)]
struct Limits {
    mappings: TokenBucket,
    icmp: TokenBucket,
    packets: TokenBucket,
    drops: TokenBucket,
}

/// One queue thread's monitor (see the module comment).
pub struct Monitor {
    set: Arc<ServiceSet>,
    shard: Arc<Shard>,
    flows: Arc<NewFlows>,
    limits: Vec<Limits>,
    /// Rate limit of drop records for packets of no service.
    shared_drops: TokenBucket,
    /// This queue's share of `log-rate`, `log-burst`.
    rate: Rate,
}

impl Monitor {
    /// A monitor for `set`, counting into `shard` (whose ids are `set`'s), telling new UDP
    /// flows by `flows` (the memory every queue thread shares).
    pub fn new(
        set: Arc<ServiceSet>,
        shard: Arc<Shard>,
        rate: Rate,
        flows: Arc<NewFlows>,
    ) -> Monitor {
        Monitor {
            limits: vec![Limits::default(); set.limits],
            set,
            shard,
            flows,
            shared_drops: TokenBucket::default(),
            rate,
        }
    }

    /// The limit of every record class; running buckets keep their tokens (capped at the new
    /// burst).
    pub fn set_rate(&mut self, rate: Rate) {
        self.rate = rate;
    }

    /// The next generation's services, generation `id`: a service `carry` moves keeps its
    /// counters and rate limits (and its UDP flows, by its serial); others start afresh. With the same services
    /// (`carry` is `None`) the shard stays and only says its new generation; otherwise a new
    /// shard takes the carried counters, and the caller publishes it.
    pub fn replace(&mut self, set: Arc<ServiceSet>, id: u64, carry: &Carry) {
        if carry.is_none() && set.len() == self.set.len() {
            self.set = set;
            self.shard.set_generation(id);
            return;
        }
        let mut limits = vec![Limits::default(); set.limits];
        for (old, new) in (0..self.set.len()).map(|old| {
            let new = match carry {
                None => Some(old),
                Some(map) => map.get(old).copied().flatten(),
            };
            (old, new)
        }) {
            if let Some(new) = new
                && let Some(from) = limits_of(&self.set.limit_of, &mut self.limits, old)
                && let Some(to) = limits_of(&set.limit_of, &mut limits, new)
            {
                *to = *from;
            }
        }
        let shard = Shard::new(id, self.shard.stats.carried(carry, set.len()));
        shard.take_queue_stats(&self.shard);
        self.shard = Arc::new(shard);
        self.limits = limits;
        self.set = set;
    }

    /// The shard this monitor counts into.
    pub fn shard(&self) -> &Arc<Shard> {
        &self.shard
    }

    pub fn stats(&self) -> &LiveStats {
        &self.shard.stats
    }

    pub fn services(&self) -> &[Service] {
        &self.set.services
    }

    /// Counts one packet's fate and writes the records its service's flags ask for.
    #[inline]
    pub fn observe(&mut self, event: Event, pkt: &Packet<'_>, now: Clock, log: &mut Logger) {
        let Monitor {
            set,
            shard,
            flows,
            limits,
            rate,
            ..
        } = self;
        let stats = &shard.stats;
        let rate = *rate;
        match event {
            Event::Translated {
                id,
                dir,
                flow,
                kind,
            } => {
                let inbound = dir == Direction::Inbound;
                stats.translated(id, inbound, pkt.len(), now.wall);
                let flags = set.flags.get(id).copied().unwrap_or_default();
                let Some(service) = set.services.get(id) else {
                    return;
                };
                let mut opened = false;
                match kind {
                    Kind::Plain { syn } => {
                        if inbound {
                            let new = match flow.protocol {
                                Protocol::Tcp => syn,
                                Protocol::Udp => set.serial(id).is_some_and(|serial| {
                                    flows.is_new(serial, flow.src, now.secs())
                                }),
                            };
                            opened = new;
                            if new {
                                stats.new_connection(id);
                                if flags.has(Flags::MAPPING_EVENT)
                                    && let Some(limits) = limits_of(&set.limit_of, limits, id)
                                    && let Some(held) =
                                        admit(stats, id, &mut limits.mappings, now.ms, rate)
                                {
                                    suppressed(log, Some(service), RecordKind::Mapping, held);
                                    log.record(MappingEvent {
                                        iface: &service.iface,
                                        flow: &flow,
                                    });
                                }
                            }
                        }
                        if flags.has(Flags::EVERY_PACKET)
                            && let Some(limits) = limits_of(&set.limit_of, limits, id)
                            && let Some(held) = admit(stats, id, &mut limits.packets, now.ms, rate)
                        {
                            suppressed(log, Some(service), RecordKind::Packet, held);
                            log.record(PacketRecord {
                                iface: &service.iface,
                                dir,
                                flow: &flow,
                                len: pkt.len(),
                            });
                        }
                    }
                    Kind::IcmpError => {
                        stats.icmp_error(id);
                        if flags.has(Flags::ICMP)
                            && let Some(limits) = limits_of(&set.limit_of, limits, id)
                            && let Some(held) = admit(stats, id, &mut limits.icmp, now.ms, rate)
                        {
                            suppressed(log, Some(service), RecordKind::Icmp, held);
                            log.record(IcmpRecord {
                                iface: &service.iface,
                                dir,
                                type_code: icmp_type_code(pkt.payload),
                                quoted: &flow,
                            });
                        }
                    }
                }
                stats.server(id, server_of(service, dir, kind, &flow), opened);
            }
            Event::Passed => {
                stats.passed();
                if set.any_drops {
                    self.unattributed_record(pkt, DropAction::Pass, None, now, log);
                }
            }
            Event::Refused { id } => {
                // Passed as a packet of no service is; recorded as the service's when its
                // flags ask for drop records.
                stats.passed();
                let flags = set.flags.get(id).copied().unwrap_or_default();
                let (Some(service), true) = (set.services.get(id), flags.has(Flags::DROPS)) else {
                    return;
                };
                let Some(limits) = limits_of(&set.limit_of, limits, id) else {
                    return;
                };
                if let Some(held) = admit(stats, id, &mut limits.drops, now.ms, rate) {
                    suppressed(log, Some(service), RecordKind::Drop, held);
                    log.record(DropRecord {
                        iface: &service.iface,
                        dir: Direction::Inbound,
                        action: DropAction::Refused,
                        reason: None,
                        peek: datapath::peek(pkt.payload),
                    });
                }
            }
            Event::Dropped { reason, id } => {
                stats.dropped(id, DropReason::of(reason));
                match id {
                    Some(id) => {
                        let flags = set.flags.get(id).copied().unwrap_or_default();
                        let (Some(service), true) = (set.services.get(id), flags.has(Flags::DROPS))
                        else {
                            return;
                        };
                        let Some(dir) = datapath::direction_of(pkt.hook) else {
                            return;
                        };
                        let Some(limits) = limits_of(&set.limit_of, limits, id) else {
                            return;
                        };
                        if let Some(held) = admit(stats, id, &mut limits.drops, now.ms, rate) {
                            suppressed(log, Some(service), RecordKind::Drop, held);
                            log.record(DropRecord {
                                iface: &service.iface,
                                dir,
                                action: DropAction::Drop,
                                reason: Some(reason),
                                peek: datapath::peek(pkt.payload),
                            });
                        }
                    }
                    None if set.any_drops => {
                        self.unattributed_record(pkt, DropAction::Drop, Some(reason), now, log)
                    }
                    None => {}
                }
            }
        }
    }

    /// A drop record for a packet of no service, under the shared rate limit.
    fn unattributed_record(
        &mut self,
        pkt: &Packet<'_>,
        action: DropAction,
        reason: Option<datapath::Refusal>,
        now: Clock,
        log: &mut Logger,
    ) {
        let Some(dir) = datapath::direction_of(pkt.hook) else {
            return;
        };
        let Some(held) = self.shared_drops.admit(now.ms, self.rate) else {
            return;
        };
        suppressed(log, None, RecordKind::Drop, held);
        let index = match dir {
            Direction::Inbound => pkt.indev,
            Direction::Reply => pkt.outdev,
        };
        let name = crate::iface::name_of(index);
        log.record(DropRecord {
            iface: name.as_deref().unwrap_or("-"),
            dir,
            action,
            reason,
            peek: datapath::peek(pkt.payload),
        });
    }
}

/// Index of a service without [`Limits`].
const NO_LIMITS: u32 = u32::MAX;

/// Whether a service's flags ask for rate-limited records: mapping, packet, drop and ICMP.
fn needs_limits(flags: Flags) -> bool {
    flags.has(Flags::MAPPING_EVENT)
        || flags.has(Flags::EVERY_PACKET)
        || flags.has(Flags::DROPS)
        || flags.has(Flags::ICMP)
}

/// The limits of service `id`, if its flags need any.
fn limits_of<'a>(limit_of: &[u32], limits: &'a mut [Limits], id: usize) -> Option<&'a mut Limits> {
    let slot = *limit_of.get(id)?;
    limits.get_mut(slot as usize)
}

/// Asks service `id`'s bucket of one record class for a record, and counts the answer.
fn admit(
    stats: &LiveStats,
    id: usize,
    bucket: &mut TokenBucket,
    now_ms: u64,
    rate: Rate,
) -> Option<u64> {
    let held = bucket.admit(now_ms, rate);
    stats.record(id, held.is_some());
    held
}

fn suppressed(log: &mut Logger, service: Option<&Service>, kind: RecordKind, count: u64) {
    if count > 0 {
        log.record(SuppressedRecord {
            service,
            kind,
            count,
        });
    }
}

/// The apparent address of a service as the table resolved it, for `status`.
pub fn resolved_app(table: &crate::engine::service::ServiceTable, id: usize) -> Option<IpAddr> {
    table.entry(id).map(|e| e.app.ip())
}

/// The position in `service`'s servers of the server a translated packet went to or came
/// from: inbound the flow's by the hash (the client is the source, or for an ICMP error the
/// quoted packet's destination), a reply's its source (the quoted packet's destination).
fn server_of(service: &Service, dir: Direction, kind: Kind, flow: &wire::Flow) -> usize {
    if service.more_act_addrs.is_empty() {
        return 0;
    }
    let n = service.more_act_addrs.len() + 1;
    match (dir, kind) {
        (Direction::Inbound, Kind::Plain { .. }) => server_index(flow.src, n),
        (Direction::Inbound, Kind::IcmpError) => server_index(flow.dst, n),
        (Direction::Reply, Kind::Plain { .. }) => position(service, flow.src.ip()),
        (Direction::Reply, Kind::IcmpError) => position(service, flow.dst.ip()),
    }
}

fn position(service: &Service, server: std::net::IpAddr) -> usize {
    service.servers().position(|a| a == server).unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::parse_service;
    use crate::engine::service::{OnePublic, ServiceTable};
    use crate::engine::stats::carry_map;
    use std::net::SocketAddr;

    fn monitor(services: Vec<Service>) -> Monitor {
        let shard = Arc::new(Shard::new(0, LiveStats::new(services.len())));
        let set = Arc::new(ServiceSet::new(services));
        Monitor::new(set, shard, Rate::default(), Default::default())
    }

    /// What the main thread publishes for a new service set, as the queue thread takes it.
    fn replace(mon: &mut Monitor, services: Vec<Service>) {
        let map = carry_map(mon.services(), &services);
        let set = ServiceSet::new(services).carrying(&mon.set, &map);
        mon.replace(Arc::new(set), 1, &Some(map.into()));
    }

    /// `src`:`sport` -> `dst`:`dport`, UDP over IPv4 with 4 zero bytes of payload, no UDP
    /// checksum, a correct IP header checksum (also the consumer's tests' packet).
    pub(crate) fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 32];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&32u16.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[24..26].copy_from_slice(&12u16.to_be_bytes());
        let ip = pnet_packet::ipv4::Ipv4Packet::new(&p).unwrap();
        let c = pnet_packet::ipv4::checksum(&ip);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn run(
        mon: &mut Monitor,
        table: &ServiceTable,
        bytes: &mut [u8],
        hook: u8,
        now: Clock,
        log: &mut Logger,
    ) -> Event {
        let indev = if hook == 0 { 7 } else { 3 };
        let outdev = if hook == 4 { 7 } else { 0 };
        let mut pkt = crate::engine::datapath::tests::ipv4_packet(bytes, hook, indev, outdev, 0);
        let (_, e) = datapath::handle(
            table,
            &crate::engine::service::FlowMemory::default(),
            (0, 0),
            &mut pkt,
        );
        mon.observe(e, &pkt, now, log);
        e
    }

    fn lines(log: &mut Logger) -> Vec<String> {
        log.take_lines().into_iter().map(|(_, l)| l).collect()
    }

    #[test]
    fn udp_flow_counts_once_and_logs_mapping_event_and_packets() {
        let svcs =
            vec![parse_service("service pub0 port * 53 UDP 192.168.77.10 5353 0xa000").unwrap()];
        let table = ServiceTable::build(&svcs, &OnePublic);
        let mut mon = monitor(svcs);
        let mut log = Logger::memory();
        let now = Clock { ms: 0, wall: 1234 };
        for _ in 0..3 {
            let mut p = udp([10, 99, 1, 2], 41000, [10, 99, 1, 1], 53);
            run(&mut mon, &table, &mut p, 0, now, &mut log);
        }
        let mut r = udp([192, 168, 77, 10], 5353, [10, 99, 1, 2], 41000);
        run(&mut mon, &table, &mut r, 4, now, &mut log);
        let c = mon.stats().service(0);
        assert_eq!((c.in_packets, c.in_bytes, c.out_packets), (3, 96, 1));
        assert_eq!((c.new_connections, c.last_seen), (1, 1234));
        assert_eq!(
            lines(&mut log),
            vec![
                "pr:pub0:0a630102:41000:0a630101:53:17",
                "pk:pub0:in:0a630102:41000:0a630101:53:17:32",
                "pk:pub0:in:0a630102:41000:0a630101:53:17:32",
                "pk:pub0:in:0a630102:41000:0a630101:53:17:32",
                "pk:pub0:out:c0a84d0a:5353:0a630102:41000:17:32",
            ]
        );
    }

    #[test]
    fn nothing_is_formatted_without_flags() {
        let svcs =
            vec![parse_service("service pub0 port * 53 UDP 192.168.77.10 5353 0x0000").unwrap()];
        let table = ServiceTable::build(&svcs, &OnePublic);
        let mut mon = monitor(svcs);
        let mut log = Logger::memory();
        let mut p = udp([10, 99, 1, 2], 41000, [10, 99, 1, 1], 53);
        run(&mut mon, &table, &mut p, 0, Clock::default(), &mut log);
        let mut bad = udp([192, 168, 77, 10], 9999, [10, 99, 1, 2], 41000);
        run(&mut mon, &table, &mut bad, 4, Clock::default(), &mut log);
        assert!(lines(&mut log).is_empty());
        assert_eq!(mon.stats().service(0).in_packets, 1);
        assert_eq!(
            mon.stats().unattributed()[DropReason::UnmappedReply as usize],
            1
        );
    }

    #[test]
    fn packet_records_are_rate_limited_with_a_suppressed_count() {
        let svcs =
            vec![parse_service("service pub0 port * 53 UDP 192.168.77.10 5353 0x2000").unwrap()];
        let table = ServiceTable::build(&svcs, &OnePublic);
        let mut mon = monitor(svcs);
        let mut log = Logger::memory();
        for _ in 0..250 {
            let mut p = udp([10, 99, 1, 2], 41000, [10, 99, 1, 1], 53);
            run(&mut mon, &table, &mut p, 0, Clock::default(), &mut log);
        }
        assert_eq!(lines(&mut log).len(), 200);
        let later = Clock { ms: 2000, wall: 0 };
        let mut p = udp([10, 99, 1, 2], 41000, [10, 99, 1, 1], 53);
        run(&mut mon, &table, &mut p, 0, later, &mut log);
        let l = lines(&mut log);
        assert_eq!(l[0], "sup:pub0:*:53:17:pk:50");
        assert!(l[1].starts_with("pk:pub0:in:"), "{l:?}");
        // The counters status and the metrics show: 201 written, 50 held back.
        let c = mon.stats().service(0);
        assert_eq!((c.records, c.records_suppressed), (201, 50));
    }

    #[test]
    fn mapping_events_of_a_flood_are_rate_limited_by_the_configured_rate() {
        let svcs =
            vec![parse_service("service pub0 port * 53 UDP 192.168.77.10 5353 0x8000").unwrap()];
        let table = ServiceTable::build(&svcs, &OnePublic);
        let mut mon = monitor(svcs);
        mon.set_rate(Rate {
            per_sec: 10,
            burst: 20,
        });
        let mut log = Logger::memory();
        // 1000 new flows (new source ports) at once: 20 records, the rest held back.
        for port in 0..1000u16 {
            let mut p = udp([10, 99, 1, 2], 20000 + port, [10, 99, 1, 1], 53);
            run(&mut mon, &table, &mut p, 0, Clock::default(), &mut log);
        }
        let l = lines(&mut log);
        assert_eq!(l.len(), 20);
        assert!(l.iter().all(|r| r.starts_with("pr:pub0:")), "{l:?}");
        assert_eq!(mon.stats().service(0).new_connections, 1000, "all counted");
        // One second later: 10 more, the first preceded by the count of those held back.
        for port in 0..100u16 {
            let mut p = udp([10, 99, 1, 3], 20000 + port, [10, 99, 1, 1], 53);
            run(
                &mut mon,
                &table,
                &mut p,
                0,
                Clock { ms: 1000, wall: 0 },
                &mut log,
            );
        }
        let l = lines(&mut log);
        assert_eq!(l[0], "sup:pub0:*:53:17:pr:980");
        assert_eq!(l.len(), 11, "{l:?}");
    }

    /// The actual server's port unreachable to the client about `quoted` (an inbound packet
    /// as translated), as it leaves the router (postrouting).
    fn port_unreachable(quoted: &[u8]) -> Vec<u8> {
        let mut icmp = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quoted);
        let c = pnet_packet::icmp::checksum(&pnet_packet::icmp::IcmpPacket::new(&icmp).unwrap());
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut p = udp([192, 168, 77, 10], 0, [10, 99, 1, 2], 0)[..20].to_vec();
        p[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        p[9] = 1;
        p[10..12].copy_from_slice(&[0, 0]);
        let ip = pnet_packet::ipv4::Ipv4Packet::new(&p).unwrap();
        let c = pnet_packet::ipv4::checksum(&ip);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&icmp);
        p
    }

    #[test]
    fn icmp_records_are_rate_limited_too() {
        let svcs =
            vec![parse_service("service pub0 port * 53 UDP 192.168.77.10 5353 0x0800").unwrap()];
        let table = ServiceTable::build(&svcs, &OnePublic);
        let mut mon = monitor(svcs);
        mon.set_rate(Rate {
            per_sec: 1,
            burst: 3,
        });
        let mut log = Logger::memory();
        let quoted = udp([10, 99, 1, 2], 41000, [192, 168, 77, 10], 5353);
        for _ in 0..50 {
            let mut e = port_unreachable(&quoted);
            run(&mut mon, &table, &mut e, 4, Clock::default(), &mut log);
        }
        let l = lines(&mut log);
        assert_eq!(l.len(), 3, "{l:?}");
        assert!(l[0].starts_with("ic:pub0:out:3:3:"), "{l:?}");
        assert_eq!(mon.stats().service(0).icmp_errors, 50, "all counted");
        let mut e = port_unreachable(&quoted);
        run(
            &mut mon,
            &table,
            &mut e,
            4,
            Clock { ms: 1000, wall: 0 },
            &mut log,
        );
        let l = lines(&mut log);
        assert_eq!(l[0], "sup:pub0:*:53:17:ic:47");
        assert_eq!(l.len(), 2, "{l:?}");
    }

    #[test]
    fn drops_are_attributed_and_logged_with_flag_0x1000() {
        let svcs =
            vec![parse_service("service pub0 port * 53 UDP 192.168.77.10 5353 0x1000").unwrap()];
        let table = ServiceTable::build(&svcs, &OnePublic);
        let mut mon = monitor(svcs);
        let mut log = Logger::memory();
        // UDP length field larger than the packet: malformed, but the ports name the service.
        let mut p = udp([10, 99, 1, 2], 41000, [10, 99, 1, 1], 53);
        p[24..26].copy_from_slice(&200u16.to_be_bytes());
        run(&mut mon, &table, &mut p, 0, Clock::default(), &mut log);
        let c = mon.stats().service(0);
        assert_eq!(c.drops[DropReason::Malformed as usize], 1);
        let l = lines(&mut log);
        assert_eq!(l.len(), 1);
        assert!(
            l[0].starts_with("dr:pub0:in:drop:malformed-")
                && l[0].ends_with(":0a630102:41000:0a630101:53:17"),
            "{l:?}"
        );
        // A reply no service maps: nobody's, reported because a service has 0x1000.
        let mut r = udp([192, 168, 77, 10], 9999, [10, 99, 1, 2], 41000);
        run(&mut mon, &table, &mut r, 4, Clock::default(), &mut log);
        let l = lines(&mut log);
        assert_eq!(l.len(), 1);
        assert!(
            l[0].contains(":out:drop:unmapped-reply:c0a84d0a:9999:0a630102:41000:17"),
            "{l:?}"
        );
    }

    /// A client outside a `from` list: passed, counted as passed, and written as the
    /// service's `pass:refused` record only when the service has 0x1000.
    #[test]
    fn refused_clients_are_recorded_as_the_services_with_flag_0x1000() {
        let lines_of = |flags: &str| {
            let line =
                format!("service pub0 port * 53 UDP 192.168.77.10 5353 {flags} from 10.99.1.0/30");
            let svcs = vec![parse_service(&line).unwrap()];
            let table = ServiceTable::build(&svcs, &OnePublic);
            let mut mon = monitor(svcs);
            let mut log = Logger::memory();
            let mut p = udp([10, 99, 1, 9], 41000, [10, 99, 1, 1], 53);
            let e = run(&mut mon, &table, &mut p, 0, Clock::default(), &mut log);
            assert_eq!(e, Event::Refused { id: 0 });
            let c = mon.stats().service(0);
            assert_eq!((c.in_packets, c.drops.iter().sum::<u64>()), (0, 0));
            // An admitted client is translated as ever.
            let mut p = udp([10, 99, 1, 2], 41000, [10, 99, 1, 1], 53);
            let e = run(&mut mon, &table, &mut p, 0, Clock::default(), &mut log);
            assert!(matches!(e, Event::Translated { id: 0, .. }), "{e:?}");
            lines(&mut log)
        };
        assert_eq!(
            lines_of("0x1000"),
            ["dr:pub0:in:pass:refused:0a630109:41000:0a630101:53:17"]
        );
        assert!(lines_of("0x0000").is_empty());
    }

    /// Several servers: each new flow and each packet counts at the server it went to (by the
    /// hash, inbound) or came from (replies).
    #[test]
    fn several_servers_are_counted_each() {
        let line = "service pub0 port * 53 UDP 192.168.77.10,192.168.77.11 5353";
        let svcs = vec![parse_service(line).unwrap()];
        let table = ServiceTable::build(&svcs, &OnePublic);
        let mut mon = monitor(svcs);
        let mut log = Logger::memory();
        let mut want = [0u64; 2];
        for port in 41000..41040u16 {
            let mut p = udp([10, 99, 1, 2], port, [10, 99, 1, 1], 53);
            run(&mut mon, &table, &mut p, 0, Clock::default(), &mut log);
            let k = server_index(SocketAddr::from(([10, 99, 1, 2], port)), 2);
            want[k] += 1;
        }
        let c = mon.stats().service(0);
        assert_eq!(c.new_connections, 40);
        assert_eq!(c.server_connections[..2], want);
        assert_eq!(c.server_packets[..2], want);
        assert!(want[0] > 0 && want[1] > 0, "{want:?}");
        // A reply from the second server counts there, not as a new connection.
        let mut r = udp([192, 168, 77, 11], 5353, [10, 99, 1, 2], 41000);
        let e = run(&mut mon, &table, &mut r, 4, Clock::default(), &mut log);
        assert!(matches!(e, Event::Translated { .. }), "{e:?}");
        let c = mon.stats().service(0);
        assert_eq!(c.server_packets[1], want[1] + 1);
        assert_eq!(c.server_connections[..2], want);
    }

    #[test]
    fn rate_limits_follow_their_service_across_a_replace() {
        // Only flagged services have limits; a replace that puts unflagged services around a
        // flagged one must still hand it its own, spent, bucket.
        let a = parse_service("service pub0 port * 53 UDP 192.168.77.10 5353 0x2000").unwrap();
        let c = parse_service("service pub0 port * 54 UDP 192.168.77.10 5354 0x0000").unwrap();
        let d = parse_service("service pub0 port * 55 UDP 192.168.77.10 5355 0x2000").unwrap();
        let table = ServiceTable::build(std::slice::from_ref(&a), &OnePublic);
        let mut mon = monitor(vec![a.clone()]);
        let mut log = Logger::memory();
        for _ in 0..250 {
            let mut p = udp([10, 99, 1, 2], 41000, [10, 99, 1, 1], 53);
            run(&mut mon, &table, &mut p, 0, Clock::default(), &mut log);
        }
        assert_eq!(lines(&mut log).len(), 200);

        replace(&mut mon, vec![c, d, a]);
        let table = ServiceTable::build(mon.services(), &OnePublic);
        // Service 53 (now id 2): its bucket is still empty.
        let mut p = udp([10, 99, 1, 2], 41000, [10, 99, 1, 1], 53);
        run(&mut mon, &table, &mut p, 0, Clock::default(), &mut log);
        assert!(lines(&mut log).is_empty(), "still rate limited");
        // Service 55, new and flagged: a full bucket of its own.
        let mut p = udp([10, 99, 1, 2], 41000, [10, 99, 1, 1], 55);
        run(&mut mon, &table, &mut p, 0, Clock::default(), &mut log);
        let l = lines(&mut log);
        assert_eq!(l.len(), 1);
        assert!(l[0].starts_with("pk:pub0:in:"), "{l:?}");
        // Service 54 has no flag: counted, nothing written.
        let mut p = udp([10, 99, 1, 2], 41000, [10, 99, 1, 1], 54);
        run(&mut mon, &table, &mut p, 0, Clock::default(), &mut log);
        assert!(lines(&mut log).is_empty());
        assert_eq!(mon.stats().service(0).in_packets, 1);
        // Later, service 53 reports what it held back.
        let later = Clock { ms: 2000, wall: 0 };
        let mut p = udp([10, 99, 1, 2], 41000, [10, 99, 1, 1], 53);
        run(&mut mon, &table, &mut p, 0, later, &mut log);
        assert_eq!(lines(&mut log)[0], "sup:pub0:*:53:17:pk:51");
    }
}
