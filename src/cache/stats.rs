//! Hit/miss counters per namespace.

use std::cell::Cell;
use std::ops::{Add, AddAssign};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

use serde::Serialize;

/// Counters of one namespace, or of all of them added up.
///
/// # Examples
///
/// ```
/// use tierkit::cache::CacheStats;
///
/// let stats = CacheStats::default();
/// assert_eq!(stats.hit_ratio(), 0.0);
/// let total = stats + stats;
/// assert_eq!(total.l1_hits, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads answered by the in-process L1.
    pub l1_hits: u64,
    /// Reads answered by Redis (L1 missed).
    pub l2_hits: u64,
    /// Reads that found the key in neither tier.
    pub misses: u64,
    /// Times a `get_or_set` loader ran.
    pub loader_calls: u64,
    /// Times a loader returned an error (never cached).
    pub loader_errors: u64,
    /// Redis calls that failed or timed out; the call fell back to L1 and the loader.
    pub l2_errors: u64,
    /// Reads and writes that skipped Redis because health was `Down`.
    pub l2_skipped: u64,
    /// Stored bytes that no longer decode as the type (old schema, foreign writer); each
    /// counted as a miss and overwritten.
    pub decode_failures: u64,
    /// L1 entries evicted to stay within `l1_capacity`; counted only with
    /// [`l1_eviction_counts`](crate::ConfigBuilder::l1_eviction_counts) on (it is off by
    /// default), 0 otherwise.
    pub evictions: u64,
    /// Bytes of values encoded for writing to Redis, before compression (0 when embedded:
    /// values kept only in process are measured, never encoded).
    pub encoded_bytes: u64,
    /// Bytes of values as stored in Redis, after compression where it paid.
    pub stored_bytes: u64,
    /// Time spent encoding (and compressing) values for Redis, in nanoseconds of wall-clock
    /// time on the calling thread (so it includes any preemption meanwhile).
    pub encode_nanos: u64,
    /// Expired copies served by fail-safe ([`Source::Stale`](super::Source::Stale)).
    pub stale_served: u64,
    /// Loads a hard timeout ended.
    pub loader_timeouts: u64,
    /// Loads that went on in the background: past a soft timeout, or an eager refresh.
    pub background_loads: u64,
    /// Reads answered by a cached "not found" ([`Loaded::not_found`](super::Loaded::not_found)).
    pub negative_hits: u64,
}

impl CacheStats {
    /// Share of reads answered from a cache tier: `(l1_hits + l2_hits) / reads`; 0 with no
    /// reads.
    pub fn hit_ratio(&self) -> f64 {
        let hits = self.l1_hits + self.l2_hits;
        let reads = hits + self.misses;
        if reads == 0 {
            0.0
        } else {
            hits as f64 / reads as f64
        }
    }

    /// Bytes compression saved: `encoded_bytes - stored_bytes` (the envelope header included).
    pub fn bytes_saved(&self) -> u64 {
        self.encoded_bytes.saturating_sub(self.stored_bytes)
    }
}

impl Add for CacheStats {
    type Output = CacheStats;

    fn add(mut self, other: CacheStats) -> CacheStats {
        self += other;
        self
    }
}

impl AddAssign for CacheStats {
    fn add_assign(&mut self, o: CacheStats) {
        self.l1_hits += o.l1_hits;
        self.l2_hits += o.l2_hits;
        self.misses += o.misses;
        self.loader_calls += o.loader_calls;
        self.loader_errors += o.loader_errors;
        self.l2_errors += o.l2_errors;
        self.l2_skipped += o.l2_skipped;
        self.decode_failures += o.decode_failures;
        self.evictions += o.evictions;
        self.encoded_bytes += o.encoded_bytes;
        self.stored_bytes += o.stored_bytes;
        self.encode_nanos += o.encode_nanos;
        self.stale_served += o.stale_served;
        self.loader_timeouts += o.loader_timeouts;
        self.background_loads += o.background_loads;
        self.negative_hits += o.negative_hits;
    }
}

/// The live counters behind [`CacheStats`]: relaxed atomics, one add per event, in per-thread
/// stripes ([`here`](Self::here)). A hit is counted on every core at once;
/// one shared count would pass its cache line from core to core on every hit (and, by sharing
/// it, the namespace's read-mostly state next to it), so each thread adds to its own stripe
/// and a snapshot adds the stripes up.
pub(crate) struct Counters {
    stripes: Box<[CachePadded<Tally>]>,
}

/// One stripe of [`Counters`].
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) l1_hits: AtomicU64,
    pub(crate) l2_hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) loader_calls: AtomicU64,
    pub(crate) loader_errors: AtomicU64,
    pub(crate) l2_errors: AtomicU64,
    pub(crate) l2_skipped: AtomicU64,
    pub(crate) decode_failures: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) encoded_bytes: AtomicU64,
    pub(crate) stored_bytes: AtomicU64,
    pub(crate) encode_nanos: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) loader_timeouts: AtomicU64,
    pub(crate) background_loads: AtomicU64,
    pub(crate) negative_hits: AtomicU64,
}

/// Stripes per namespace: threads take them in turn, so up to this many threads never share
/// one. 2 KiB a namespace.
const STRIPES: usize = 16;

thread_local! {
    /// This thread's stripe, taken at its first count.
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The next thread's stripe.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

#[inline]
fn stripe() -> usize {
    STRIPE.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(i);
        }
        i
    })
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            stripes: (0..STRIPES).map(|_| CachePadded::default()).collect(),
        }
    }
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    /// The calling thread's stripe, to count on.
    #[inline]
    pub(crate) fn here(&self) -> &Tally {
        &self.stripes[stripe()]
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.stripes
            .iter()
            .map(|t| CacheStats {
                l1_hits: get(&t.l1_hits),
                l2_hits: get(&t.l2_hits),
                misses: get(&t.misses),
                loader_calls: get(&t.loader_calls),
                loader_errors: get(&t.loader_errors),
                l2_errors: get(&t.l2_errors),
                l2_skipped: get(&t.l2_skipped),
                decode_failures: get(&t.decode_failures),
                evictions: get(&t.evictions),
                encoded_bytes: get(&t.encoded_bytes),
                stored_bytes: get(&t.stored_bytes),
                encode_nanos: get(&t.encode_nanos),
                stale_served: get(&t.stale_served),
                loader_timeouts: get(&t.loader_timeouts),
                background_loads: get(&t.background_loads),
                negative_hits: get(&t.negative_hits),
            })
            .fold(CacheStats::default(), |sum, t| sum + t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_more_threads_than_stripes_all_add_up() {
        let counters = Counters::default();
        let threads = STRIPES * 2 + 3;
        std::thread::scope(|scope| {
            for t in 0..threads {
                let counters = &counters;
                scope.spawn(move || {
                    for _ in 0..1_000 {
                        bump(&counters.here().l1_hits);
                    }
                    add(&counters.here().stored_bytes, t as u64);
                });
            }
        });
        let stats = counters.snapshot();
        assert_eq!(stats.l1_hits, threads as u64 * 1_000);
        assert_eq!(stats.stored_bytes, (0..threads as u64).sum::<u64>());
        assert_eq!(stats.l2_hits, 0);
    }
}
