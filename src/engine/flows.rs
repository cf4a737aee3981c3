//! One lock-free table of flows, shared by every queue thread: the slots both flow memories
//! keep their flows in (the `*` memory of [`crate::engine::service::FlowMemory`], which address
//! a flow came to, and the new-flow memory of [`crate::engine::record::NewFlows`], whether a
//! UDP packet starts a flow). The users pick the keys and the data; this module holds the
//! atomics. Pure std: no other module of netnat is used.
//!
//! A fixed table of slots allocated once (zeroed pages, so untouched slots cost no memory),
//! open addressing over a window of [`PROBE`] slots from the one the key names. A slot is two
//! `AtomicU64`s: the key (a 64-bit keyed hash the user computes, never 0; 0 is an empty slot)
//! and a value that packs a check (16 bits taken from the key), 16 bits of the user's data and
//! the second the flow expires (0: dead, taken back by the new-flow memory).
//!
//! Bounded: at most `limit` slots are ever used (reserved before an empty slot is claimed);
//! an expired or dead slot is taken over first, so that the count stays where it is; with no
//! room but live flows, a claim is refused and counted ([`SlotTable::refused`]).
//!
//! Why a claim writes the value first (by compare-and-swap from the value it judged expired or
//! empty) and the key after it: the value decides who owns the slot, one claimant wins it, and
//! whoever sees the new key also sees the value that goes with it. A slot whose value is live
//! is never taken, also while its key still names the flow before. A reader of the old key
//! meanwhile finds a value whose check is not its key's and passes over it.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Slots a flow may take, from the one its key names: a lookup reads at most this many (two
/// cache lines).
pub const PROBE: usize = 8;

/// The memory ordering of every slot access: the new-flow memory's settling of racing claims
/// needs each thread's key store and its later loads in one order (SeqCst); on x86 loads cost
/// the same, and a store is a claim, which is rare.
const ORD: Ordering = Ordering::SeqCst;

/// One flow: its key (0: never used) and its packed value.
#[derive(Default)]
struct Slot {
    key: AtomicU64,
    value: AtomicU64,
}

/// What became of a [`SlotTable::claim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The slot at this index holds the key and the value now.
    Won(usize),
    /// Another thread took the slot first: look again.
    Lost,
    /// No room but live flows (counted as refused).
    Full,
}

/// The value word: check (bits 48..64, never 0), data (32..48), expiry second (0..32).
#[inline]
pub fn pack(key: u64, data: u16, expires_s: u32) -> u64 {
    (u64::from(check_of(key)) << 48) | (u64::from(data) << 32) | u64::from(expires_s)
}

/// The user's data of a value word.
#[inline]
pub fn data(v: u64) -> u16 {
    (v >> 32) as u16
}

/// The second a value word's flow expires (0: dead).
#[inline]
pub fn expires(v: u64) -> u32 {
    v as u32
}

/// The value of a dead flow of `key`: its slot is free to take, no lookup finds it.
#[inline]
pub fn dead(key: u64) -> u64 {
    pack(key, 0, 0)
}

fn check_of(key: u64) -> u16 {
    ((key >> 48) as u16) | 1
}

/// Whether `v` is a value of `key` (and not one left by, or written for, another key).
#[inline]
pub fn owns(key: u64, v: u64) -> bool {
    (v >> 48) as u16 == check_of(key)
}

/// Flows the two memories had no room for, as `status` shows them: `star`, the `*` memory
/// (a flow whose address is not remembered); `udp`, the new-flow memory (a flow counted new at
/// each packet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowsRefused {
    pub star: u64,
    pub udp: u64,
}

/// The shared slots (see the module comment).
pub struct SlotTable {
    slots: Box<[Slot]>,
    mask: usize,
    limit: usize,
    /// Slots ever claimed; at most `limit`.
    used: AtomicUsize,
    /// The newest clock a queue thread set ([`SlotTable::set_now`]), in seconds.
    now_s: AtomicU32,
    refused: AtomicU64,
}

impl SlotTable {
    /// An empty table for at most `limit` flows, in twice as many slots (a power of two).
    pub fn new(limit: usize) -> SlotTable {
        let n = limit.saturating_mul(2).next_power_of_two().max(PROBE);
        SlotTable {
            slots: zeroed_slots(n),
            mask: n - 1,
            limit,
            used: AtomicUsize::new(0),
            now_s: AtomicU32::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Moves the shared clock (milliseconds, monotonic, the same origin for every thread);
    /// called once per batch. It only goes forward, and is written at most once a second, so
    /// the threads do not fight over its cache line.
    #[inline]
    pub fn set_now(&self, ms: u64) {
        let s = u32::try_from(ms / 1000).unwrap_or(u32::MAX);
        if self.now_s.load(Ordering::Relaxed) < s {
            self.now_s.fetch_max(s, Ordering::Relaxed);
        }
    }

    /// The shared clock, in seconds.
    #[inline]
    pub fn now(&self) -> u32 {
        self.now_s.load(Ordering::Relaxed)
    }

    /// Slots holding a flow (an expired or dead flow counts until a new one takes its slot).
    pub fn len(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Claims refused because there was no room but live flows.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts one more refused claim (a caller that gave up after lost races).
    pub fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The slot indices of `key`'s window, in probe order.
    #[inline]
    pub fn window(&self, key: u64) -> impl Iterator<Item = usize> + use<> {
        let (start, mask) = (key as usize, self.mask);
        (0..PROBE).map(move |k| start.wrapping_add(k) & mask)
    }

    #[inline]
    pub fn key_at(&self, i: usize) -> u64 {
        self.slots[i].key.load(ORD)
    }

    #[inline]
    pub fn value_at(&self, i: usize) -> u64 {
        self.slots[i].value.load(ORD)
    }

    /// The first slot of `key`'s window that holds `key` with a value of its own and not dead,
    /// with that value; expired flows are found too (the caller judges the time).
    #[inline]
    pub fn find(&self, key: u64) -> Option<(usize, u64)> {
        self.window(key).find_map(|i| {
            if self.key_at(i) != key {
                return None;
            }
            let v = self.value_at(i);
            (owns(key, v) && expires(v) != 0).then_some((i, v))
        })
    }

    /// Replaces the value of slot `i` if it is still `old`; false if another thread changed it.
    #[inline]
    pub fn replace(&self, i: usize, old: u64, new: u64) -> bool {
        self.slots[i]
            .value
            .compare_exchange(old, new, ORD, Ordering::Relaxed)
            .is_ok()
    }

    /// Puts `key` with `value` into a slot of its window that holds no live flow at `now`
    /// (seconds): an expired or dead one first, else an empty one while fewer than `limit`
    /// are used. The caller has looked for `key` already ([`SlotTable::find`]).
    pub fn claim(&self, key: u64, value: u64, now: u32) -> Claim {
        let (mut expired, mut empty) = (None, None);
        for i in self.window(key) {
            let v = self.value_at(i);
            if v == 0 {
                // Never claimed: a claimed value always carries a check, so is never 0.
                empty = empty.or(Some(i));
            } else if expires(v) <= now {
                expired = Some((i, v));
                break;
            }
        }
        if let Some((i, old)) = expired {
            return self.take(i, old, key, value);
        }
        let Some(i) = empty else {
            self.count_refused();
            return Claim::Full;
        };
        let reserved = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok();
        if !reserved {
            self.count_refused();
            return Claim::Full;
        }
        let won = self.take(i, 0, key, value);
        if won == Claim::Lost {
            self.used.fetch_sub(1, Ordering::AcqRel);
        }
        won
    }

    /// Value first, by compare-and-swap from `old`, then the key (see the module comment).
    fn take(&self, i: usize, old: u64, key: u64, value: u64) -> Claim {
        if !self.replace(i, old, value) {
            return Claim::Lost;
        }
        self.slots[i].key.store(key, ORD);
        Claim::Won(i)
    }
}

impl std::fmt::Debug for SlotTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotTable")
            .field("len", &self.len())
            .field("limit", &self.limit)
            .field("refused", &self.refused())
            .finish_non_exhaustive()
    }
}

/// `n` (> 0) empty slots from zeroed memory: large tables come as fresh pages from the system,
/// so only the slots that flows touch take memory.
fn zeroed_slots(n: usize) -> Box<[Slot]> {
    let layout = std::alloc::Layout::array::<Slot>(n).expect("slot table size");
    // SAFETY: `layout` has a non-zero size (n > 0, a Slot is 16 bytes). All-zero bytes are a
    // valid `Slot` (two `AtomicU64`s of value 0, the same layout as u64), so the zeroed block
    // is `n` initialised slots; the Box takes ownership of exactly that allocation, with the
    // layout the global allocator will free it with.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut Slot;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_key_is_found_with_its_value_and_the_bound_holds() {
        let t = SlotTable::new(4);
        assert!(t.is_empty() && t.find(77).is_none());
        let v = pack(77, 5, 10);
        let Claim::Won(i) = t.claim(77, v, 0) else {
            panic!("an empty table takes a flow")
        };
        assert_eq!(t.find(77), Some((i, v)));
        assert_eq!((data(v), expires(v), owns(77, v)), (5, 10, true));
        // Keys in the same window until the limit: then refused.
        for k in 1..=3u64 {
            assert!(matches!(
                t.claim(77 + (k << 48), pack(k, 0, 10), 0),
                Claim::Won(_)
            ));
        }
        assert_eq!(t.claim(99, pack(99, 0, 10), 0), Claim::Full);
        assert_eq!((t.len(), t.refused()), (4, 1));
        // Expired at 10: taken over without growing.
        assert!(matches!(t.claim(99, pack(99, 0, 30), 10), Claim::Won(_)));
        assert_eq!(t.len(), 4);
        assert!(t.find(99).is_some());
    }

    #[test]
    fn a_dead_or_foreign_value_is_not_found_and_a_stale_compare_fails() {
        let t = SlotTable::new(8);
        let Claim::Won(i) = t.claim(5, pack(5, 1, 10), 0) else {
            panic!()
        };
        assert!(!t.replace(i, pack(5, 2, 10), dead(5)), "not the value held");
        assert!(t.replace(i, pack(5, 1, 10), dead(5)));
        assert!(t.find(5).is_none(), "dead");
        assert!(!owns(5 ^ (2 << 48), pack(5, 0, 1)), "another key's check");
    }
}
