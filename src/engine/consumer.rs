//! The queue threads, one per bound queue, each receiving, deciding and returning verdicts for
//! its own queue, and the main thread's side of what they share ([`Hub`]).
//!
//! Why this shape: the rules spread packets over the queues by the CPU that handles them
//! (`fanout`), so with one thread per queue each CPU's packets are handled by their own thread
//! and the expensive parts, the two system calls that copy packets out of and back into the
//! kernel, run in parallel. No queue thread takes a lock, and none waits for the main thread:
//! - what the main thread decides (lookup table, services and their flags, mark, rate limit)
//!   is one immutable [`Generation`], published whole by an atomic pointer swap
//!   (`arc_swap::ArcSwap`). A thread looks once per batch; when there is a newer one it carries
//!   its own state over (counters, rate limits: by the generation's carry map, as a reload
//!   keeps the counters of equal services) and decides the batch by it. A batch is
//!   decided by one generation, never half by one and half by the next;
//! - each thread owns its [`Worker`]: its [`Monitor`] (counters in a [`Shard`] of
//!   single-writer atomics, rate limits) and its own log handle (a sender
//!   of the bounded log queue; a full queue counts and drops). The main thread reads the
//!   shards it publishes here and sums them (`status`, metrics, `top`, drain expiry) and
//!   writes the volume records from the sums;
//! - the two things the threads write together are lock-free tables: the [`FlowMemory`] of
//!   `*` services (a flow's inbound packet and its reply may meet different queues) and the
//!   UDP new-flow memory ([`NewFlows`]: a flow's packets may meet different queues too; keyed
//!   by service serials that a reload carries over).
//!
//! After a batch a thread keeps looking for the next one for a short while (`busy-poll`) before
//! it sleeps in `poll`: a request/response exchange brings its next packet within tens of
//! microseconds, and catching it awake saves the wake-up of a sleeping thread (the larger part
//! of netnat's added latency on a virtual machine). An idle queue costs nothing: the thread
//! only spins right after it had work.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::config::{Flags, Service};
use crate::engine::datapath;
use crate::engine::flows::FlowsRefused;
use crate::engine::monitor::{Clock, Monitor, ServiceSet};
use crate::engine::record::{NewFlows, VolumeRecord};
use crate::engine::service::{FlowMemory, ServiceTable};
use crate::engine::stats::{
    Carry, Counters, LiveStats, Rate, Shard, Stats, add_queue_stats, carried, carry_map, compose,
};
use crate::log::Logger;
use crate::queue::{Decision, Packet, Queue, QueueStats};

/// Batches handled before the thread looks at the stop flag again.
const BATCHES_PER_ROUND: usize = 64;

/// Everything a batch is decided by, as the main thread published it; never changed after.
pub struct Generation {
    /// Counts up from 0, one per publication.
    pub id: u64,
    /// The lookup table the packets are decided by.
    pub table: Arc<ServiceTable>,
    /// The services and their flags, by the ids of `table` and of the counters.
    pub set: Arc<ServiceSet>,
    /// Mark bits for translated packets.
    pub mark: u32,
    /// Each queue's share of the record rate limit.
    pub rate: Rate,
    /// For every generation a queue thread may still be at when this one is published (the
    /// previous one, and those of threads that have not had a batch since), how its service ids
    /// map to this one's: carry maps composed over the generations between.
    carries: Vec<(u64, Carry)>,
}

impl Generation {
    /// How generation `id`'s service ids map to this one's; `None` when `id` is not one a
    /// thread could be at (then the services themselves are compared).
    fn carry_from(&self, id: u64) -> Option<&Carry> {
        self.carries.iter().find(|(g, _)| *g == id).map(|(_, c)| c)
    }
}

/// The shards the queue threads publish, one slot per queue: each thread stores its current
/// [`Shard`] (a new one when the services change), the main thread loads them to sum.
struct Shards(Box<[ArcSwap<Shard>]>);

/// The main thread's side: publishes generations, sums the shards, writes volume records.
pub struct Hub {
    published: Arc<ArcSwap<Generation>>,
    shards: Arc<Shards>,
    flows: Arc<FlowMemory>,
    new_flows: Arc<NewFlows>,
    current: Arc<Generation>,
    queues: usize,
    /// Per service (current ids), the summed counters at its previous volume record.
    volume_base: Vec<Counters>,
    /// The header-only path's mark bit (0: off); fixed for the daemon's life, like the copy
    /// range the queues were bound with.
    rewrite_mark: u32,
    /// Flow offload (`offload on`), fixed for the daemon's life like `rewrite_mark`.
    offload: bool,
    /// Per service (current ids), what the kernel counted of the packets it rewrote without
    /// the consumer (offloaded flows; see `nft::offload`), added by the daemon.
    kernel: Vec<Counters>,
}

impl Hub {
    /// Generation 0 for `queues` queue threads.
    pub fn new(
        table: Arc<ServiceTable>,
        services: Vec<Service>,
        mark: u32,
        rate: Rate,
        queues: usize,
    ) -> Hub {
        let set = Arc::new(ServiceSet::new(services));
        let n = set.len();
        let generation = Arc::new(Generation {
            id: 0,
            table,
            set,
            mark,
            rate: rate.per_queue(queues),
            carries: Vec::new(),
        });
        let shards = (0..queues)
            .map(|_| ArcSwap::from_pointee(Shard::new(0, LiveStats::new(n))))
            .collect();
        Hub {
            published: Arc::new(ArcSwap::new(Arc::clone(&generation))),
            shards: Arc::new(Shards(shards)),
            flows: Arc::new(FlowMemory::default()),
            new_flows: Arc::default(),
            current: generation,
            queues,
            volume_base: vec![Counters::default(); n],
            rewrite_mark: 0,
            offload: false,
            kernel: vec![Counters::default(); n],
        }
    }

    /// Offloaded flows' verdicts (see `datapath::handle_with`) for the workers made from now
    /// on; needs a rewrite mark.
    pub fn with_offload(mut self, offload: bool) -> Hub {
        self.offload = offload;
        self
    }

    /// Adds what the kernel counted for service `id` (current ids) since the last call:
    /// `packets` and `bytes` of offloaded packets in direction `inbound`, seen at `now` (Unix
    /// seconds).
    pub fn add_kernel(&mut self, id: usize, inbound: bool, (packets, bytes): (u64, u64), now: u64) {
        let Some(c) = self.kernel.get_mut(id) else {
            return;
        };
        if inbound {
            c.in_packets += packets;
            c.in_bytes += bytes;
        } else {
            c.out_packets += packets;
            c.out_bytes += bytes;
        }
        if packets > 0 {
            c.last_seen = c.last_seen.max(now);
        }
    }

    /// Header-only verdicts with bit `rewrite_mark` (0: full-payload verdicts only) for the
    /// workers made from now on (see `datapath::handle`).
    pub fn with_rewrite_mark(mut self, rewrite_mark: u32) -> Hub {
        self.rewrite_mark = rewrite_mark;
        self
    }

    /// The part of queue thread `index` (< `queues`), logging to `log` (a handle of the
    /// daemon's logger).
    pub fn worker(&self, index: usize, log: Logger) -> Worker {
        let generation = self.published.load_full();
        let shard = Arc::new(Shard::new(
            generation.id,
            LiveStats::new(generation.set.len()),
        ));
        self.shards.0[index].store(Arc::clone(&shard));
        Worker {
            published: Arc::clone(&self.published),
            monitor: Monitor::new(
                Arc::clone(&generation.set),
                shard,
                generation.rate,
                Arc::clone(&self.new_flows),
            ),
            generation,
            flows: Arc::clone(&self.flows),
            shards: Arc::clone(&self.shards),
            index,
            log,
            rewrite_mark: self.rewrite_mark,
            offload: self.offload,
        }
    }

    /// Publishes a new generation: `table`, with `services` when the service set changed
    /// (`None`: the same services, e.g. after an address change), `mark` and `rate`. The queue
    /// threads take it at their next batch; nothing waits.
    pub fn publish(
        &mut self,
        table: Arc<ServiceTable>,
        services: Option<Vec<Service>>,
        mark: u32,
        rate: Rate,
    ) {
        let old = &self.current;
        let (set, carry): (Arc<ServiceSet>, Carry) = match services {
            None => (Arc::clone(&old.set), None),
            Some(s) => {
                let map = carry_map(old.set.services(), &s);
                let set = ServiceSet::new(s).carrying(&old.set, &map);
                (Arc::new(set), Some(map.into()))
            }
        };
        // A thread is at the current generation, or at one it was lagging at already (it can
        // only move on to the current one): each gets its map to the new generation.
        let mut carries = vec![(old.id, carry.clone())];
        for slot in self.shards.0.iter() {
            let at = slot.load().generation();
            if carries.iter().any(|(g, _)| *g == at) {
                continue;
            }
            if let Some(before) = old.carry_from(at) {
                carries.push((at, compose(before, &carry)));
            }
        }
        self.volume_base = carried(&self.volume_base, &carry, set.len());
        self.kernel = carried(&self.kernel, &carry, set.len());
        let next = Arc::new(Generation {
            id: old.id + 1,
            table,
            set,
            mark,
            rate: rate.per_queue(self.queues),
            carries,
        });
        self.published.store(Arc::clone(&next));
        self.current = next;
    }

    /// The services of the current generation (the ids of [`Hub::stats`]).
    pub fn services(&self) -> &[Service] {
        self.current.set.services()
    }

    /// Every queue thread's counters summed, by the current generation's service ids.
    pub fn stats(&self) -> Stats {
        let mut sum = Stats::new(self.current.set.len());
        for slot in self.shards.0.iter() {
            let shard = slot.load();
            let at = shard.generation();
            let carry = if at == self.current.id {
                &None
            } else if let Some(c) = self.current.carry_from(at) {
                c
            } else {
                // Cannot happen: `publish` maps every generation a thread can be at.
                continue;
            };
            shard.stats.add_to(carry, &mut sum);
        }
        sum.add_kernel(&self.kernel);
        sum
    }

    /// Flows the `*` memory and the UDP new-flow memory had no room for.
    pub fn flows_refused(&self) -> FlowsRefused {
        FlowsRefused {
            star: self.flows.refused(),
            udp: self.new_flows.refused(),
        }
    }

    /// Every queue's statistics summed.
    pub fn queue_stats(&self) -> QueueStats {
        let mut sum = QueueStats::default();
        for slot in self.shards.0.iter() {
            add_queue_stats(&mut sum, &slot.load().queue_stats());
        }
        sum
    }

    /// Writes a volume record for every service with flag 0x4000: what it carried since its
    /// previous one, summed over the queues.
    pub fn volume_records(&mut self, log: &mut Logger) {
        let stats = self.stats();
        for (id, service) in self.current.set.services().iter().enumerate() {
            if !service.flags.has(Flags::VOLUME) {
                continue;
            }
            let Some(base) = self.volume_base.get_mut(id) else {
                continue;
            };
            let now = stats.service(id);
            let base = std::mem::replace(base, now);
            log.record(VolumeRecord {
                service,
                in_packets: now.in_packets.saturating_sub(base.in_packets),
                in_bytes: now.in_bytes.saturating_sub(base.in_bytes),
                out_packets: now.out_packets.saturating_sub(base.out_packets),
                out_bytes: now.out_bytes.saturating_sub(base.out_bytes),
                new_connections: now.new_connections.saturating_sub(base.new_connections),
            });
        }
    }
}

/// One queue thread's state and its per-batch logic, kernel-free: [`Consumer`] feeds it the
/// queue's batches, a test feeds it packets.
pub struct Worker {
    published: Arc<ArcSwap<Generation>>,
    generation: Arc<Generation>,
    flows: Arc<FlowMemory>,
    monitor: Monitor,
    shards: Arc<Shards>,
    index: usize,
    pub log: Logger,
    rewrite_mark: u32,
    offload: bool,
}

impl Worker {
    /// Decides one batch at `now`: first takes the newest generation, then lets `each` run
    /// every packet of the batch through the handler it is given. Returns what `each` returns
    /// (the number of packets).
    pub fn batch(
        &mut self,
        now: Clock,
        each: impl FnOnce(&mut dyn FnMut(&mut Packet<'_>) -> Decision) -> usize,
    ) -> usize {
        self.refresh();
        self.flows.set_now(now.ms);
        let Worker {
            generation,
            flows,
            monitor,
            log,
            rewrite_mark,
            offload,
            ..
        } = self;
        let (table, marks) = (&*generation.table, (generation.mark, *rewrite_mark));
        let offload = *offload;
        each(&mut |pkt| {
            let (decision, event) = datapath::handle_with(table, flows, marks, offload, pkt);
            monitor.observe(event, pkt, now, log);
            decision
        })
    }

    /// Takes a newer generation if the main thread published one, carrying this queue's
    /// state over to its service ids.
    fn refresh(&mut self) {
        let newest = self.published.load();
        if newest.id == self.generation.id {
            return;
        }
        let newest = arc_swap::Guard::into_inner(newest);
        let computed;
        let carry = match newest.carry_from(self.generation.id) {
            Some(c) => c,
            None => {
                computed =
                    Some(carry_map(self.generation.set.services(), newest.set.services()).into());
                &computed
            }
        };
        let before = Arc::as_ptr(self.monitor.shard());
        self.monitor
            .replace(Arc::clone(&newest.set), newest.id, carry);
        self.monitor.set_rate(newest.rate);
        if Arc::as_ptr(self.monitor.shard()) != before {
            self.shards.0[self.index].store(Arc::clone(self.monitor.shard()));
        }
        self.generation = newest;
    }

    /// Shows the main thread the queue's statistics.
    pub fn publish_queue_stats(&self, stats: &QueueStats) {
        self.monitor.shard().set_queue_stats(stats);
    }
}

/// One queue thread.
pub struct Consumer {
    pub queue: Queue,
    pub worker: Worker,
    pub started: Instant,
    /// Set by the main thread when the table is gone: drain what is queued, then return.
    pub stop: Arc<AtomicBool>,
    /// Readable (hung up) once the main thread wants the threads to look at `stop`.
    pub wake: RawFd,
    /// `busy-poll`: how long to keep polling after work, in µs (0: sleep at once). Shared
    /// with the main thread, which changes it on reload.
    pub busy_poll_us: Arc<AtomicU32>,
}

impl Consumer {
    /// The thread's body: until stopped, wait for packets and handle them.
    pub fn run(mut self) {
        // Whatever arrived while the bind was acknowledged waits in the queue's stash, which
        // poll cannot see.
        self.drain(BATCHES_PER_ROUND);
        while !self.stop.load(Ordering::Relaxed) {
            // An error here (EINTR aside, none is expected) shows in the next receive.
            if !self
                .queue
                .wait_or(self.wake, Duration::from_secs(1))
                .unwrap_or(true)
            {
                continue;
            }
            if self.drain(BATCHES_PER_ROUND) > 0 {
                self.spin();
            }
        }
        // Packets queued before the table went away still get their verdicts.
        for _ in 0..100 {
            if !self.queue.wait(Duration::from_millis(20)).unwrap_or(false) {
                break;
            }
            self.drain(1000);
        }
        self.worker.publish_queue_stats(&self.queue.stats());
    }

    /// Polls the queue without sleeping until `busy-poll` passes with nothing new.
    fn spin(&mut self) {
        let us = self.busy_poll_us.load(Ordering::Relaxed);
        if us == 0 {
            return;
        }
        let budget = Duration::from_micros(u64::from(us));
        let mut since = Instant::now();
        while since.elapsed() < budget && !self.stop.load(Ordering::Relaxed) {
            if self.drain(BATCHES_PER_ROUND) > 0 {
                since = Instant::now();
            } else {
                // Polite polling: a runnable task on this CPU (a sender, a server, the other
                // end of the exchange) goes first; the poll only uses time nobody wants.
                std::thread::yield_now();
            }
        }
    }

    /// Handles every packet waiting now, batch by batch, at most `max_batches`. Returns the
    /// number of packets handled.
    fn drain(&mut self, max_batches: usize) -> usize {
        let mut handled = 0;
        for _ in 0..max_batches {
            match self.queue.receive_batch() {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    self.worker.log.error(format_args!("queue: {e}"));
                    break;
                }
            }
            // The clocks are read once per batch, not per packet.
            let now = Clock {
                ms: self.started.elapsed().as_millis() as u64,
                wall: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |t| t.as_secs()),
            };
            let queue = &mut self.queue;
            handled += self.worker.batch(now, |handler| queue.decide(handler));
            if let Err(e) = self.queue.send_verdicts() {
                self.worker.log.error(format_args!("queue: {e}"));
                break;
            }
        }
        if handled > 0 {
            self.worker.publish_queue_stats(&self.queue.stats());
        }
        handled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_service;
    use crate::engine::service::OnePublic;
    use crate::queue::Verdict;

    /// 10.99.1.2:`sport` -> 10.99.1.1:`dport`, UDP over IPv4.
    fn udp(sport: u16, dport: u16) -> Vec<u8> {
        crate::engine::monitor::tests::udp([10, 99, 1, 2], sport, [10, 99, 1, 1], dport)
    }

    /// One batch of inbound packets (on ifindex 7, prerouting) through `w`.
    fn batch(w: &mut Worker, packets: &mut [Vec<u8>]) -> Vec<Decision> {
        let mut out = Vec::new();
        w.batch(Clock { ms: 0, wall: 99 }, |handle| {
            for bytes in packets.iter_mut() {
                let mut pkt = crate::engine::datapath::tests::ipv4_packet(bytes, 0, 7, 0, 0);
                out.push(handle(&mut pkt));
            }
            out.len()
        });
        out
    }

    fn services(lines: &[&str]) -> Vec<Service> {
        lines.iter().map(|l| parse_service(l).unwrap()).collect()
    }

    const A: &str = "service pub0 port * 53 UDP 192.168.77.10 5353 0x4000";
    const B: &str = "service pub0 port * 54 UDP 192.168.77.10 5354 0x4000";

    #[test]
    fn batches_are_decided_by_the_newest_generation_and_counters_carry_over() {
        let svcs = services(&[A]);
        let table = Arc::new(ServiceTable::build(&svcs, &OnePublic));
        let mut hub = Hub::new(table, svcs, 0x100, Rate::default(), 2);
        let (mut q0, mut q1) = (
            hub.worker(0, Logger::memory()),
            hub.worker(1, Logger::memory()),
        );
        let d = batch(&mut q0, &mut [udp(1000, 53), udp(1001, 54)]);
        assert_eq!(
            d.iter()
                .map(|d| (d.verdict, d.modified))
                .collect::<Vec<_>>(),
            [(Verdict::Accept, true), (Verdict::Accept, false)],
            "54 is nobody's yet"
        );
        assert_eq!(d[0].mark, Some(0x100));
        batch(&mut q1, &mut [udp(1002, 53)]);
        let s = hub.stats();
        assert_eq!(
            (s.service(0).in_packets, s.passed),
            (2, 1),
            "both shards summed"
        );
        assert_eq!(s.service(0).last_seen, 99);

        // A reload that puts B first: A moves to id 1. q1 is idle, q0 sees it at once.
        let svcs = services(&[B, A]);
        let table = Arc::new(ServiceTable::build(&svcs, &OnePublic));
        hub.publish(table, Some(svcs), 0x200, Rate::default());
        let s = hub.stats();
        assert_eq!(
            s.service(1).in_packets,
            2,
            "lagging shards mapped to the new ids"
        );
        assert_eq!(s.service(0).in_packets, 0);
        let d = batch(&mut q0, &mut [udp(1003, 54)]);
        assert!(
            d[0].modified && d[0].mark == Some(0x200),
            "the new table and mark"
        );
        // An address change (same services) while q1 still lags two generations behind.
        let t = Arc::new(ServiceTable::build(hub.services(), &OnePublic));
        hub.publish(t, None, 0x200, Rate::default());
        let s = hub.stats();
        assert_eq!((s.service(0).in_packets, s.service(1).in_packets), (1, 2));
        batch(&mut q1, &mut [udp(1004, 53)]);
        let s = hub.stats();
        assert_eq!((s.service(0).in_packets, s.service(1).in_packets), (1, 3));
        assert_eq!(s.passed, 1, "daemon-wide counters carried too");
    }

    #[test]
    fn volume_records_sum_the_queues_and_survive_a_reload() {
        let svcs = services(&[A]);
        let table = Arc::new(ServiceTable::build(&svcs, &OnePublic));
        let mut hub = Hub::new(table, svcs, 0, Rate::default(), 2);
        let (mut q0, mut q1) = (
            hub.worker(0, Logger::memory()),
            hub.worker(1, Logger::memory()),
        );
        let mut log = Logger::memory();
        let lines = |log: &mut Logger| -> Vec<String> {
            log.take_lines().into_iter().map(|(_, l)| l).collect()
        };
        batch(&mut q0, &mut [udp(1000, 53)]);
        batch(&mut q1, &mut [udp(2000, 53)]);
        hub.volume_records(&mut log);
        assert_eq!(lines(&mut log), ["vol:pub0:*:53:17:2:64:0:0:2"]);
        hub.volume_records(&mut log);
        assert_eq!(lines(&mut log), ["vol:pub0:*:53:17:0:0:0:0:0"]);
        let svcs = services(&[B, A]);
        let table = Arc::new(ServiceTable::build(&svcs, &OnePublic));
        hub.publish(table, Some(svcs), 0, Rate::default());
        // The same flow again on q0: remembered across the reload, not a new connection.
        batch(&mut q0, &mut [udp(1000, 53)]);
        hub.volume_records(&mut log);
        assert_eq!(
            lines(&mut log),
            ["vol:pub0:*:54:17:0:0:0:0:0", "vol:pub0:*:53:17:1:32:0:0:0"]
        );
    }

    #[test]
    fn the_rate_limit_is_shared_out_among_the_queues() {
        let svcs = services(&["service pub0 port * 53 UDP 192.168.77.10 5353 0x2000"]);
        let table = Arc::new(ServiceTable::build(&svcs, &OnePublic));
        let rate = Rate {
            per_sec: 10,
            burst: 20,
        };
        let hub = Hub::new(table, svcs, 0, rate, 2);
        let mut q0 = hub.worker(0, Logger::memory());
        let mut q1 = hub.worker(1, Logger::memory());
        let flood = || (0..100).map(|_| udp(1000, 53)).collect::<Vec<_>>();
        batch(&mut q0, &mut flood());
        batch(&mut q1, &mut flood());
        let written = q0.log.take_lines().len() + q1.log.take_lines().len();
        assert_eq!(written, 20, "one burst in all");
        let c = hub.stats().service(0);
        assert_eq!((c.records, c.records_suppressed), (20, 180));
    }
}
