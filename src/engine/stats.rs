//! Per-service counters and the rate limiter of per-packet records.
//!
//! Each queue thread owns a [`Shard`]: its counters ([`LiveStats`]) and its queue's statistics.
//! They are single-writer atomics: the owner does a relaxed load and store per count (no
//! locked instruction, no lock, no allocation, no formatting on the packet path), and the main
//! thread reads them with relaxed loads and sums the shards into a plain [`Stats`]. Counters
//! are indexed by the service ids of one generation of the service set; a change of the set
//! moves them by a [`Carry`] (see [`crate::engine::consumer`]).
//!
//! What is counted, per service:
//! - `in_*`: packets translated on the way in (public side → actual server), `out_*` on the way
//!   back (actual server → public side), each with its IP length in bytes. Packets are counted
//!   as the queue sees them: a GSO super-packet (up to ~64 KiB) counts once, with all its bytes.
//!   Translated ICMP errors count here too, in the direction they travel.
//! - `new_connections`: inbound TCP SYNs (without ACK) and inbound UDP packets that start a
//!   flow (unseen client address and port, or silent for longer than
//!   [`crate::engine::record::UDP_IDLE_SECS`]).
//! - `icmp_errors`: ICMP/ICMPv6 errors translated for the service (either direction).
//! - `drops`: packets of the service dropped, by [`DropReason`]. A drop is the service's when
//!   its header still names the service's endpoint; the rest are counted as unattributed.
//! - `last_seen`: wall-clock time (seconds since the Unix epoch, UTC) of the last translated
//!   packet, taken once per batch; 0 when none was seen yet.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Service;
use crate::engine::datapath::Refusal;
use crate::queue::QueueStats;

/// Why netnat dropped a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Longer than the queue's copy range (65531 bytes): a verdict with a payload would cut it.
    Oversize = 0,
    /// Could not be parsed (bad header lengths, a non-first fragment, ...).
    Malformed = 1,
    /// A reply leaving through a public interface that no service maps back: passing it would
    /// leak a private address.
    UnmappedReply = 2,
    /// An inbound ICMP error quoting no connection: translating it would let anyone on the
    /// public side send errors about made-up flows to the private servers.
    UnrelatedIcmp = 3,
}

/// Number of [`DropReason`]s, the length of every drop array.
pub const DROP_REASONS: usize = 4;

impl DropReason {
    pub const ALL: [DropReason; DROP_REASONS] = [
        DropReason::Oversize,
        DropReason::Malformed,
        DropReason::UnmappedReply,
        DropReason::UnrelatedIcmp,
    ];

    /// The name used in `status` output (text and JSON keys).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Oversize => "oversize",
            DropReason::Malformed => "malformed",
            DropReason::UnmappedReply => "unmapped_reply",
            DropReason::UnrelatedIcmp => "unrelated_icmp",
        }
    }

    pub fn of(refusal: Refusal) -> DropReason {
        match refusal {
            Refusal::Truncated => DropReason::Oversize,
            Refusal::Malformed(_) => DropReason::Malformed,
            Refusal::UnmappedReply => DropReason::UnmappedReply,
            Refusal::UnrelatedIcmp => DropReason::UnrelatedIcmp,
        }
    }
}

/// The counters of one service. See the module comment for what each one counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub in_packets: u64,
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
    pub new_connections: u64,
    pub icmp_errors: u64,
    /// Records written for the service (every flag class), and records its rate limit held
    /// back (`log-rate`, `log-burst`).
    pub records: u64,
    pub records_suppressed: u64,
    /// Indexed by `DropReason as usize`.
    pub drops: [u64; DROP_REASONS],
    /// Seconds since the Unix epoch of the last translated packet; 0 = never.
    pub last_seen: u64,
}

/// How many figures [`Counters::figures`] lists.
pub const FIGURES: usize = 8;

impl Counters {
    pub fn drops_total(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// The figures that are plain sums (all but `drops` and `last_seen`), each with its
    /// field's name, in the order of the struct: the one list of them that the sums,
    /// `status --json` (the names are its keys) and the metrics (in their names) go through.
    pub fn figures_mut(&mut self) -> [(&'static str, &mut u64); FIGURES] {
        let Counters {
            in_packets,
            in_bytes,
            out_packets,
            out_bytes,
            new_connections,
            icmp_errors,
            records,
            records_suppressed,
            drops: _,
            last_seen: _,
        } = self;
        [
            ("in_packets", in_packets),
            ("in_bytes", in_bytes),
            ("out_packets", out_packets),
            ("out_bytes", out_bytes),
            ("new_connections", new_connections),
            ("icmp_errors", icmp_errors),
            ("records", records),
            ("records_suppressed", records_suppressed),
        ]
    }

    /// [`Counters::figures_mut`]'s names with the values.
    pub fn figures(&self) -> [(&'static str, u64); FIGURES] {
        let mut c = *self;
        c.figures_mut().map(|(name, v)| (name, *v))
    }
}

/// Every counter of the daemon, summed over the queue threads' shards (see [`Shard`]): what
/// `status`, the metrics and the volume records read. Plain numbers, owned by the reader.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    services: Vec<Counters>,
    /// Drops that name no service, by reason.
    pub unattributed: [u64; DROP_REASONS],
    /// Packets queued to netnat and passed on unchanged because they are not a service's
    /// (e.g. an ICMP error about another flow).
    pub passed: u64,
}

impl Stats {
    /// Adds the kernel's counts of offloaded packets, by service id (see `Hub::add_kernel`).
    pub fn add_kernel(&mut self, kernel: &[Counters]) {
        for (c, k) in self.services.iter_mut().zip(kernel) {
            c.in_packets += k.in_packets;
            c.in_bytes += k.in_bytes;
            c.out_packets += k.out_packets;
            c.out_bytes += k.out_bytes;
            c.last_seen = c.last_seen.max(k.last_seen);
        }
    }

    /// Zeroed counters for `services` services.
    pub fn new(services: usize) -> Stats {
        Stats {
            services: vec![Counters::default(); services],
            ..Stats::default()
        }
    }

    /// The counters of service `id` (zero for an unknown id).
    pub fn service(&self, id: usize) -> Counters {
        self.services.get(id).copied().unwrap_or_default()
    }

    /// Adds one shard's counters of service `id`: sums, and the latest `last_seen`.
    fn add(&mut self, id: usize, c: &Counters) {
        let Some(s) = self.services.get_mut(id) else {
            return;
        };
        for ((_, s), (_, n)) in s.figures_mut().into_iter().zip(c.figures()) {
            *s += n;
        }
        for (d, n) in s.drops.iter_mut().zip(c.drops) {
            *d += n;
        }
        s.last_seen = s.last_seen.max(c.last_seen);
    }
}

/// How the service ids of one generation map to the next: `map[old] = Some(new)` (see
/// [`carry_map`]); `None` for a change that kept the services (an address change: only the
/// lookup table was swapped).
pub type Carry = Option<Arc<[Option<usize>]>>;

/// `first`, then `then`: how the ids of a generation map two (or more) changes later.
pub fn compose(first: &Carry, then: &Carry) -> Carry {
    match (first, then) {
        (None, c) | (c, None) => c.clone(),
        (Some(a), Some(b)) => Some(
            a.iter()
                .map(|x| x.and_then(|i| b.get(i).copied().flatten()))
                .collect(),
        ),
    }
}

/// `old` (indexed by the previous generation's service ids) for `new_len` services, each kept
/// where `carry` moves it; new services get the default.
pub fn carried<T: Clone + Default>(old: &[T], carry: &Carry, new_len: usize) -> Vec<T> {
    let mut next = vec![T::default(); new_len];
    match carry {
        None => {
            for (n, o) in next.iter_mut().zip(old) {
                *n = o.clone();
            }
        }
        Some(map) => {
            for (o, to) in old.iter().zip(map.iter()) {
                if let Some(slot) = to.and_then(|to| next.get_mut(to)) {
                    *slot = o.clone();
                }
            }
        }
    }
    next
}

/// `n` more on a counter only its owner thread writes: a plain load and store, no locked
/// instruction, as cheap as an increment of a plain integer; readers see it whole.
#[inline]
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// One service's [`Counters`] in a [`LiveStats`].
#[derive(Default)]
struct LiveCounters {
    in_packets: AtomicU64,
    in_bytes: AtomicU64,
    out_packets: AtomicU64,
    out_bytes: AtomicU64,
    new_connections: AtomicU64,
    icmp_errors: AtomicU64,
    records: AtomicU64,
    records_suppressed: AtomicU64,
    drops: [AtomicU64; DROP_REASONS],
    last_seen: AtomicU64,
}

impl LiveCounters {
    fn load(&self) -> Counters {
        Counters {
            in_packets: get(&self.in_packets),
            in_bytes: get(&self.in_bytes),
            out_packets: get(&self.out_packets),
            out_bytes: get(&self.out_bytes),
            new_connections: get(&self.new_connections),
            icmp_errors: get(&self.icmp_errors),
            records: get(&self.records),
            records_suppressed: get(&self.records_suppressed),
            drops: std::array::from_fn(|i| get(&self.drops[i])),
            last_seen: get(&self.last_seen),
        }
    }

    fn of(c: &Counters) -> LiveCounters {
        LiveCounters {
            in_packets: c.in_packets.into(),
            in_bytes: c.in_bytes.into(),
            out_packets: c.out_packets.into(),
            out_bytes: c.out_bytes.into(),
            new_connections: c.new_connections.into(),
            icmp_errors: c.icmp_errors.into(),
            records: c.records.into(),
            records_suppressed: c.records_suppressed.into(),
            drops: c.drops.map(AtomicU64::new),
            last_seen: c.last_seen.into(),
        }
    }
}

/// One queue thread's counters, by the service ids of one generation. Single writer: only the
/// owning thread changes them ([`bump`]); the main thread reads them to sum the shards. A
/// reader sees each counter whole but not all of them at one instant (a packet's bytes may
/// show before its count), which is what a live counter can promise.
pub struct LiveStats {
    services: Box<[LiveCounters]>,
    unattributed: [AtomicU64; DROP_REASONS],
    passed: AtomicU64,
}

impl LiveStats {
    /// Zeroed counters for `services` services.
    pub fn new(services: usize) -> LiveStats {
        LiveStats {
            services: (0..services).map(|_| LiveCounters::default()).collect(),
            unattributed: Default::default(),
            passed: AtomicU64::new(0),
        }
    }

    /// A translated packet of service `id`. `inbound` is the direction, `bytes` its IP length,
    /// `now` the wall clock of the batch (Unix seconds).
    #[inline]
    pub fn translated(&self, id: usize, inbound: bool, bytes: usize, now: u64) {
        if let Some(c) = self.services.get(id) {
            if inbound {
                bump(&c.in_packets, 1);
                bump(&c.in_bytes, bytes as u64);
            } else {
                bump(&c.out_packets, 1);
                bump(&c.out_bytes, bytes as u64);
            }
            c.last_seen.store(now, Ordering::Relaxed);
        }
    }

    #[inline]
    pub fn new_connection(&self, id: usize) {
        if let Some(c) = self.services.get(id) {
            bump(&c.new_connections, 1);
        }
    }

    #[inline]
    pub fn icmp_error(&self, id: usize) {
        if let Some(c) = self.services.get(id) {
            bump(&c.icmp_errors, 1);
        }
    }

    /// A record of service `id` the rate limit wrote (`true`) or held back.
    #[inline]
    pub fn record(&self, id: usize, written: bool) {
        if let Some(c) = self.services.get(id) {
            bump(
                if written {
                    &c.records
                } else {
                    &c.records_suppressed
                },
                1,
            );
        }
    }

    /// A dropped packet, of service `id` when known.
    #[inline]
    pub fn dropped(&self, id: Option<usize>, reason: DropReason) {
        match id.and_then(|id| self.services.get(id)) {
            Some(c) => bump(&c.drops[reason as usize], 1),
            None => bump(&self.unattributed[reason as usize], 1),
        }
    }

    /// A packet passed on unchanged (not a service's).
    #[inline]
    pub fn passed(&self) {
        bump(&self.passed, 1);
    }

    /// The counters of service `id` (zero for an unknown id).
    pub fn service(&self, id: usize) -> Counters {
        self.services.get(id).map(|c| c.load()).unwrap_or_default()
    }

    /// Drops that named no service, by reason.
    pub fn unattributed(&self) -> [u64; DROP_REASONS] {
        self.unattributed.each_ref().map(get)
    }

    /// The counters for the next generation's `new_len` services: a service keeps its counters
    /// when `carry` moves it; new services start at zero; daemon-wide counters are kept.
    pub fn carried(&self, carry: &Carry, new_len: usize) -> LiveStats {
        let old: Vec<Counters> = self.services.iter().map(|c| c.load()).collect();
        LiveStats {
            services: carried(&old, carry, new_len)
                .iter()
                .map(LiveCounters::of)
                .collect(),
            unattributed: std::array::from_fn(|i| get(&self.unattributed[i]).into()),
            passed: get(&self.passed).into(),
        }
    }

    /// Adds these counters to `sum`, whose ids are those `carry` maps this shard's to.
    pub fn add_to(&self, carry: &Carry, sum: &mut Stats) {
        for (old, c) in self.services.iter().enumerate() {
            let id = match carry {
                None => Some(old),
                Some(map) => map.get(old).copied().flatten(),
            };
            if let Some(id) = id {
                sum.add(id, &c.load());
            }
        }
        for (s, a) in sum.unattributed.iter_mut().zip(&self.unattributed) {
            *s += get(a);
        }
        sum.passed += get(&self.passed);
    }
}

/// What one queue thread shows the main thread: its counters for the services of generation
/// [`Shard::generation`], and its queue's statistics. Written by that thread only; the main
/// thread sums every thread's shard (`status`, metrics, `top`, drain expiry, volume records).
pub struct Shard {
    generation: AtomicU64,
    pub stats: LiveStats,
    queue: [AtomicU64; QUEUE_FIELDS],
}

impl Shard {
    pub fn new(generation: u64, stats: LiveStats) -> Shard {
        Shard {
            generation: generation.into(),
            stats,
            queue: Default::default(),
        }
    }

    /// The generation whose service ids the counters use.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Moves the shard to a generation with the same services (only the table changed).
    pub fn set_generation(&self, id: u64) {
        self.generation.store(id, Ordering::Release);
    }

    /// The queue's statistics as its thread last published them.
    pub fn queue_stats(&self) -> QueueStats {
        let mut q = QueueStats::default();
        for ((_, f), a) in queue_fields_mut(&mut q).into_iter().zip(&self.queue) {
            *f = get(a);
        }
        q
    }

    pub fn set_queue_stats(&self, q: &QueueStats) {
        for (a, (_, v)) in self.queue.iter().zip(queue_fields(q)) {
            a.store(v, Ordering::Relaxed);
        }
    }

    /// Carries the queue statistics over from the shard this one replaces.
    pub fn take_queue_stats(&self, from: &Shard) {
        self.set_queue_stats(&from.queue_stats());
    }
}

/// How many figures a [`QueueStats`] holds.
pub const QUEUE_FIELDS: usize = 8;

/// The figures of `q`, each with its field's name, in the order of the struct: the one list
/// of them that the shards, `status --json` (the names are its keys) and the metrics (the
/// names are in theirs) go through.
pub fn queue_fields_mut(q: &mut QueueStats) -> [(&'static str, &mut u64); QUEUE_FIELDS] {
    let QueueStats {
        received,
        verdicts,
        enobufs,
        async_errors,
        failed_closed,
        send_failed_dropped,
        verdicts_lost,
        header_only,
    } = q;
    [
        ("received", received),
        ("verdicts", verdicts),
        ("enobufs", enobufs),
        ("async_errors", async_errors),
        ("failed_closed", failed_closed),
        ("send_failed_dropped", send_failed_dropped),
        ("verdicts_lost", verdicts_lost),
        ("header_only", header_only),
    ]
}

/// [`queue_fields_mut`]'s names with the values.
pub fn queue_fields(q: &QueueStats) -> [(&'static str, u64); QUEUE_FIELDS] {
    queue_fields_mut(&mut q.clone()).map(|(name, v)| (name, *v))
}

/// `q` added to `sum`, field by field.
pub fn add_queue_stats(sum: &mut QueueStats, q: &QueueStats) {
    for ((_, s), (_, v)) in queue_fields_mut(sum).into_iter().zip(queue_fields(q)) {
        *s += v;
    }
}

/// Which running service continues as which service of a new set: `map[old] = Some(new)` when
/// the two are equal (`Service` equality: same interface, endpoints, protocol and flags). Each
/// new service takes at most one old one.
pub fn carry_map(old: &[Service], new: &[Service]) -> Vec<Option<usize>> {
    // The first new service of each value, and for each new service the next equal one: no
    // allocation per service (a reload of 10,000 services runs this while both sets are live).
    const END: usize = usize::MAX;
    let mut first: HashMap<&Service, usize> = HashMap::with_capacity(new.len());
    let mut next = vec![END; new.len()];
    for (i, s) in new.iter().enumerate().rev() {
        if let Some(j) = first.insert(s, i) {
            next[i] = j;
        }
    }
    old.iter()
        .map(|s| {
            let head = first.get_mut(s)?;
            if *head == END {
                return None;
            }
            let taken = *head;
            *head = next[taken];
            Some(taken)
        })
        .collect()
}

/// Default records per second a [`TokenBucket`] lets through in the long run (`log-rate`).
pub const RECORD_RATE: u64 = crate::config::DEFAULT_LOG_RATE as u64;
/// Default records a [`TokenBucket`] lets through at once after a quiet time (`log-burst`).
pub const RECORD_BURST: u64 = crate::config::DEFAULT_LOG_BURST as u64;

/// The limit of a [`TokenBucket`]: `per_sec` records per second, bursts of `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: u64,
    pub burst: u64,
}

impl Default for Rate {
    fn default() -> Self {
        Rate {
            per_sec: RECORD_RATE,
            burst: RECORD_BURST,
        }
    }
}

impl Rate {
    /// One queue thread's share when `queues` threads each keep their own buckets: the rate
    /// and the burst divided among them (each at least 1), so that all of them together write
    /// about what one limit would (a flood spread over every CPU gets no more records).
    pub fn per_queue(self, queues: usize) -> Rate {
        let n = queues.max(1) as u64;
        Rate {
            per_sec: (self.per_sec / n).max(1),
            burst: (self.burst / n).max(1),
        }
    }

    /// The `log-rate` and `log-burst` settings (each at least 1).
    pub fn of(settings: &crate::config::Settings) -> Rate {
        Rate {
            per_sec: u64::from(settings.log_rate.max(1)),
            burst: u64::from(settings.log_burst.max(1)),
        }
    }
}

/// A token bucket limiting one class of log records of one service (every flag's records:
/// 0x8000, 0x2000, 0x1000, 0x0800): [`Rate::per_sec`] per second, bursts of [`Rate::burst`].
/// Integer arithmetic in thousandths of a token. The rate is passed on each call rather than
/// kept, so that a reload's new limit applies to running buckets.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    milli_tokens: u64,
    last_ms: u64,
    suppressed: u64,
}

impl Default for TokenBucket {
    /// Full: the first call caps the tokens at its burst.
    fn default() -> Self {
        TokenBucket {
            milli_tokens: u64::MAX,
            last_ms: 0,
            suppressed: 0,
        }
    }
}

impl TokenBucket {
    /// Asks for one record at `now_ms` (milliseconds, any monotonic origin) under `rate`.
    /// `None`: over the limit, the record is counted as suppressed. `Some(n)`: write it, after
    /// a record saying that `n` records were suppressed since the last one written (when
    /// `n > 0`).
    #[inline]
    pub fn admit(&mut self, now_ms: u64, rate: Rate) -> Option<u64> {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        // N per second is N thousandths of a token per millisecond.
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(rate.per_sec))
            .min(rate.burst.saturating_mul(1000));
        if self.milli_tokens < 1000 {
            self.suppressed += 1;
            return None;
        }
        self.milli_tokens -= 1000;
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Records suppressed since the last one admitted.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_service;

    #[test]
    fn counts_by_direction_and_reason() {
        let s = LiveStats::new(2);
        s.translated(0, true, 60, 1000);
        s.translated(0, true, 40, 1001);
        s.translated(0, false, 1500, 1002);
        s.new_connection(0);
        s.icmp_error(1);
        s.dropped(Some(1), DropReason::Malformed);
        s.dropped(None, DropReason::UnmappedReply);
        s.dropped(Some(99), DropReason::Oversize); // unknown id: not lost, unattributed
        s.passed();
        let c = s.service(0);
        assert_eq!(
            (c.in_packets, c.in_bytes, c.out_packets, c.out_bytes),
            (2, 100, 1, 1500)
        );
        assert_eq!((c.new_connections, c.last_seen), (1, 1002));
        let d = s.service(1);
        assert_eq!(
            (d.icmp_errors, d.drops, d.drops_total()),
            (1, [0, 1, 0, 0], 1)
        );
        assert_eq!(d.last_seen, 0);
        assert_eq!(s.service(7), Counters::default());
        let mut sum = Stats::new(2);
        s.add_to(&None, &mut sum);
        assert_eq!((sum.unattributed, sum.passed), ([1, 0, 1, 0], 1));
        assert_eq!(sum.service(0), c);
    }

    #[test]
    fn counters_follow_equal_services_across_a_reload() {
        let svc = |l: &str| parse_service(l).unwrap();
        let a = svc("service pub0 port * 80 TCP 192.168.77.10 8080 0x8000");
        let b = svc("service pub0 port * 53 UDP 192.168.77.10 5353");
        let b_flags = svc("service pub0 port * 53 UDP 192.168.77.10 5353 0x4000");
        let c = svc("service pub0 port * 81 TCP 192.168.77.10 8081");
        let old = vec![a.clone(), b.clone()];
        let new = vec![c, a, b_flags];
        let map = carry_map(&old, &new);
        // `a` moved to position 1; `b` changed its flags, so it is another service.
        assert_eq!(map, vec![Some(1), None]);

        let s = LiveStats::new(2);
        s.translated(0, true, 10, 5);
        s.translated(1, true, 20, 5);
        s.passed();
        let next = s.carried(&Some(map.into()), new.len());
        assert_eq!(next.service(1).in_bytes, 10);
        assert_eq!(next.service(0), Counters::default());
        assert_eq!(next.service(2), Counters::default());
        let mut sum = Stats::new(3);
        next.add_to(&None, &mut sum);
        assert_eq!(sum.passed, 1);
        // The same services (an address change): everything stays where it is.
        let same = s.carried(&None, 2);
        assert_eq!(same.service(1).in_bytes, 20);
    }

    #[test]
    fn shards_sum_by_the_current_ids_whatever_their_generation() {
        // Shard A is at the current generation; shard B still counts by the previous one,
        // where the service now at id 0 was at id 1 and the one at id 0 is gone.
        let a = LiveStats::new(2);
        a.translated(0, true, 100, 50);
        a.translated(1, false, 7, 40);
        let b = LiveStats::new(2);
        b.translated(1, true, 1000, 60);
        b.translated(0, true, 1, 70);
        b.dropped(None, DropReason::Malformed);
        let carry: Carry = Some(vec![None, Some(0)].into());
        let mut sum = Stats::new(2);
        a.add_to(&None, &mut sum);
        b.add_to(&carry, &mut sum);
        let s0 = sum.service(0);
        assert_eq!((s0.in_packets, s0.in_bytes, s0.last_seen), (2, 1100, 60));
        let s1 = sum.service(1);
        assert_eq!((s1.in_packets, s1.out_bytes, s1.last_seen), (0, 7, 40));
        assert_eq!(sum.unattributed, [0, 1, 0, 0]);
    }

    #[test]
    fn carries_compose_and_none_keeps_the_ids() {
        let ab: Carry = Some(vec![Some(1), None, Some(0)].into());
        let bc: Carry = Some(vec![None, Some(2), Some(0)].into());
        assert_eq!(
            compose(&ab, &bc).as_deref(),
            Some(&[Some(2), None, None][..])
        );
        assert_eq!(compose(&None, &bc), bc);
        assert_eq!(compose(&ab, &None), ab);
        assert_eq!(compose(&None, &None), None);
        assert_eq!(carried(&[1, 2, 3], &ab, 2), vec![3, 1]);
        assert_eq!(carried(&[1, 2, 3], &None, 4), vec![1, 2, 3, 0]);
    }

    /// Queue statistics whose figures are `k`, `2k`, ... `7k` in the order of the struct.
    fn numbered(k: u64) -> QueueStats {
        let mut q = QueueStats::default();
        for (i, (_, f)) in queue_fields_mut(&mut q).into_iter().enumerate() {
            *f = k * (i as u64 + 1);
        }
        q
    }

    #[test]
    fn a_shard_keeps_its_queue_statistics() {
        let s = Shard::new(3, LiveStats::new(0));
        let q = numbered(1);
        s.set_queue_stats(&q);
        let t = Shard::new(4, LiveStats::new(0));
        t.take_queue_stats(&s);
        let mut sum = t.queue_stats();
        add_queue_stats(&mut sum, &q);
        assert_eq!(format!("{sum:?}"), format!("{:?}", numbered(2)));
        assert_eq!((s.generation(), t.generation()), (3, 4));
    }

    #[test]
    fn queue_fields_are_named_after_the_struct() {
        let q = numbered(1);
        let listed: Vec<String> = queue_fields(&q)
            .iter()
            .map(|(name, v)| format!("{name}: {v}"))
            .collect();
        // `{:?}` is "QueueStats { received: 1, verdicts: 2, ... }": the same names, in order.
        assert_eq!(
            format!("{q:?}"),
            format!("QueueStats {{ {} }}", listed.join(", "))
        );
    }

    #[test]
    fn counter_figures_are_named_after_the_struct() {
        let mut c = Counters::default();
        for (i, (_, f)) in c.figures_mut().into_iter().enumerate() {
            *f = i as u64 + 1;
        }
        let listed: Vec<String> = c
            .figures()
            .iter()
            .map(|(name, v)| format!("{name}: {v}"))
            .collect();
        // `{:?}` lists the fields in order: the figures first, then drops and last_seen.
        assert_eq!(
            format!("{c:?}"),
            format!(
                "Counters {{ {}, drops: [0, 0, 0, 0], last_seen: 0 }}",
                listed.join(", ")
            )
        );
        let mut sum = Stats::new(1);
        sum.add(0, &c);
        sum.add(0, &c);
        assert_eq!(sum.service(0).records_suppressed, 16);
    }

    #[test]
    fn duplicates_are_matched_one_to_one() {
        let a = parse_service("service eth0 port * 80 TCP 10.0.0.1 80").unwrap();
        let map = carry_map(&[a.clone(), a.clone()], std::slice::from_ref(&a));
        assert_eq!(map, vec![Some(0), None]);
        // Equal services on both sides pair up in order.
        let b = parse_service("service eth0 port * 81 TCP 10.0.0.1 81").unwrap();
        let c = parse_service("service eth0 port * 82 TCP 10.0.0.1 82").unwrap();
        let old = [a.clone(), b.clone(), a.clone(), a.clone(), c.clone()];
        let new = [c, a.clone(), b, a];
        assert_eq!(
            carry_map(&old, &new),
            vec![Some(1), Some(2), Some(3), None, Some(0)]
        );
    }

    impl TokenBucket {
        fn admit_default(&mut self, now_ms: u64) -> Option<u64> {
            self.admit(now_ms, Rate::default())
        }
    }

    #[test]
    fn the_rate_is_divided_among_the_queues() {
        let r = Rate {
            per_sec: 50,
            burst: 101,
        };
        assert_eq!(r.per_queue(1), r);
        assert_eq!(r.per_queue(0), r);
        assert_eq!(
            r.per_queue(2),
            Rate {
                per_sec: 25,
                burst: 50
            }
        );
        assert_eq!(
            r.per_queue(200),
            Rate {
                per_sec: 1,
                burst: 1
            }
        );
    }

    #[test]
    fn a_configured_rate_and_burst_apply() {
        let r = Rate {
            per_sec: 5,
            burst: 2,
        };
        let mut b = TokenBucket::default();
        assert!(b.admit(0, r).is_some() && b.admit(0, r).is_some());
        assert_eq!(b.admit(0, r), None);
        // 5 per second: one token per 200 ms.
        assert_eq!(b.admit(199, r), None);
        assert_eq!(b.admit(200, r), Some(2));
        // A reload with a larger burst refills up to it, no more.
        let big = Rate {
            per_sec: 5,
            burst: 10,
        };
        let n = (0..100).filter(|_| b.admit(100_000, big).is_some()).count();
        assert_eq!(n, 10);
    }

    #[test]
    fn bucket_allows_burst_then_rate_and_reports_suppressed() {
        let mut b = TokenBucket::default();
        let mut admitted = 0;
        for _ in 0..500 {
            if b.admit_default(0).is_some() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, RECORD_BURST);
        assert_eq!(b.suppressed(), 300);
        // 10 ms later: one token (100/s); the first admitted record reports the 300.
        assert_eq!(b.admit_default(10), Some(300));
        assert_eq!(b.admit_default(10), None);
        assert_eq!(b.suppressed(), 1);
        // One second of 100/s: exactly 100 more.
        let mut admitted = 0;
        for _ in 0..1000 {
            if b.admit_default(1010).is_some() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 100);
        // A long quiet time refills only up to the burst.
        let mut admitted = 0;
        for _ in 0..1000 {
            if b.admit_default(1_000_000).is_some() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, RECORD_BURST);
    }

    #[test]
    fn bucket_tolerates_time_going_backwards() {
        let mut b = TokenBucket::default();
        for _ in 0..RECORD_BURST {
            b.admit_default(5000);
        }
        assert_eq!(
            b.admit_default(4000),
            None,
            "no refill from an earlier clock"
        );
        assert_eq!(b.admit_default(5000), None);
        assert!(b.admit_default(5010).is_some());
    }
}
