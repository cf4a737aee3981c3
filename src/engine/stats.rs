//! Per-service counters and the rate limiter of per-packet records.
//!
//! The consumer thread owns every counter here: the packet path does plain integer increments
//! indexed by service id (no atomics, no locks, no allocation, no formatting), and the control
//! socket, served by the same thread between batches, reads them directly.
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

use crate::config::Service;
use crate::engine::datapath::Refusal;

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

impl Counters {
    pub fn drops_total(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// Every counter of the daemon.
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
    /// Zeroed counters for `services` services.
    pub fn new(services: usize) -> Stats {
        Stats {
            services: vec![Counters::default(); services],
            ..Stats::default()
        }
    }

    /// A translated packet of service `id`. `inbound` is the direction, `bytes` its IP length,
    /// `now` the wall clock of the batch (Unix seconds).
    #[inline]
    pub fn translated(&mut self, id: usize, inbound: bool, bytes: usize, now: u64) {
        if let Some(c) = self.services.get_mut(id) {
            if inbound {
                c.in_packets += 1;
                c.in_bytes += bytes as u64;
            } else {
                c.out_packets += 1;
                c.out_bytes += bytes as u64;
            }
            c.last_seen = now;
        }
    }

    #[inline]
    pub fn new_connection(&mut self, id: usize) {
        if let Some(c) = self.services.get_mut(id) {
            c.new_connections += 1;
        }
    }

    #[inline]
    pub fn icmp_error(&mut self, id: usize) {
        if let Some(c) = self.services.get_mut(id) {
            c.icmp_errors += 1;
        }
    }

    /// A record of service `id` the rate limit wrote (`true`) or held back.
    #[inline]
    pub fn record(&mut self, id: usize, written: bool) {
        if let Some(c) = self.services.get_mut(id) {
            if written {
                c.records += 1;
            } else {
                c.records_suppressed += 1;
            }
        }
    }

    /// A dropped packet, of service `id` when known.
    #[inline]
    pub fn dropped(&mut self, id: Option<usize>, reason: DropReason) {
        match id.and_then(|id| self.services.get_mut(id)) {
            Some(c) => c.drops[reason as usize] += 1,
            None => self.unattributed[reason as usize] += 1,
        }
    }

    /// The counters of service `id` (zero for an unknown id).
    pub fn service(&self, id: usize) -> Counters {
        self.services.get(id).copied().unwrap_or_default()
    }

    /// The counters for a new set of services after a reload or a `service add/del`: a service
    /// keeps its counters when an equal service was running (`carry[old] == Some(new)`, see
    /// [`carry_map`]); new services start at zero. Daemon-wide counters are kept.
    pub fn carried(&self, carry: &[Option<usize>], new_len: usize) -> Stats {
        let mut next = Stats {
            services: vec![Counters::default(); new_len],
            unattributed: self.unattributed,
            passed: self.passed,
        };
        for (old, new) in carry.iter().enumerate() {
            if let (Some(new), Some(c)) = (new, self.services.get(old)) {
                next.services[*new] = *c;
            }
        }
        next
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
        let mut s = Stats::new(2);
        s.translated(0, true, 60, 1000);
        s.translated(0, true, 40, 1001);
        s.translated(0, false, 1500, 1002);
        s.new_connection(0);
        s.icmp_error(1);
        s.dropped(Some(1), DropReason::Malformed);
        s.dropped(None, DropReason::UnmappedReply);
        s.dropped(Some(99), DropReason::Oversize); // unknown id: not lost, unattributed
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
        assert_eq!(s.unattributed, [1, 0, 1, 0]);
        assert_eq!(s.service(7), Counters::default());
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

        let mut s = Stats::new(2);
        s.translated(0, true, 10, 5);
        s.translated(1, true, 20, 5);
        s.passed = 3;
        let next = s.carried(&map, new.len());
        assert_eq!(next.service(1).in_bytes, 10);
        assert_eq!(next.service(0), Counters::default());
        assert_eq!(next.service(2), Counters::default());
        assert_eq!(next.passed, 3);
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
