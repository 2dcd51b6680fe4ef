//! The in-process tier: one moka cache shared by every namespace, bounded in bytes, each entry
//! expiring after its own TTL on moka's clock.

use std::any::Any;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use compact_str::CompactString;
use moka::notification::RemovalCause;
use moka::{Equivalent, Expiry};

use super::life::Life;

/// A namespace id (assigned per process at declaration) plus the caller's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct L1Key {
    pub(crate) ns: u32,
    pub(crate) key: CompactString,
}

impl L1Key {
    pub(crate) fn new(ns: u32, key: &str) -> Self {
        L1Key {
            ns,
            key: CompactString::new(key),
        }
    }
}

// L1Key and KeyRef must hash identically: a hit is looked up by KeyRef without allocating.
impl Hash for L1Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u32(self.ns);
        self.key.as_str().hash(state);
    }
}

/// The borrowed form of [`L1Key`], so an L1 hit needs no allocation.
pub(crate) struct KeyRef<'a> {
    pub(crate) ns: u32,
    pub(crate) key: &'a str,
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u32(self.ns);
        self.key.hash(state);
    }
}

impl Equivalent<L1Key> for KeyRef<'_> {
    fn equivalent(&self, key: &L1Key) -> bool {
        self.ns == key.ns && self.key == key.key.as_str()
    }
}

/// A value of some namespace's type, or a marker (a cached "not found").
pub(crate) type AnyValue = Arc<dyn Any + Send + Sync>;

/// A decoded value as L1 keeps it. Cloning it (what a moka hit does) is one `Arc` increment.
#[derive(Clone)]
pub(crate) struct L1Value {
    pub(crate) value: AnyValue,
    /// The namespace's L1 generation when the entry was made; an older one is not served.
    pub(crate) generation: u64,
    /// The namespace's count of many-key changes when the entry was made: a hit after a later
    /// one checks whether it covers the entry.
    pub(crate) epoch: u64,
    /// Decoded size in bytes, so the L1 is bounded by what values weigh, not by their count.
    pub(crate) weight: u32,
    pub(crate) ttl: Duration,
    pub(crate) tags: Option<Arc<[Box<str>]>>,
    /// The entry's version in Redis, or `LOCAL` for what this instance wrote or loaded:
    /// a copy never replaces a newer one.
    pub(crate) version: u64,
    /// The logical life, in namespaces that keep expired copies or refresh early; `ttl` is
    /// then how long moka keeps the copy, past its logical expiry.
    pub(crate) life: Option<Arc<Life>>,
}

impl L1Value {
    pub(crate) fn has_tag(&self, tag: &str) -> bool {
        self.tags
            .as_deref()
            .is_some_and(|tags| tags.iter().any(|t| &**t == tag))
    }
}

/// An entry weighs its decoded body (the uncompressed bincode length), not its stored
/// envelope: a value that compresses 1000:1 still takes its whole size in process memory, so
/// `l1_capacity` bounds memory, not Redis bytes.
pub(crate) fn weight(body_len: usize) -> u32 {
    u32::try_from(body_len).unwrap_or(u32::MAX)
}

/// Expiry after each entry's own TTL, timed by moka (its `Instant`s, not tierkit's clock).
struct PerEntryTtl;

impl Expiry<L1Key, L1Value> for PerEntryTtl {
    fn expire_after_create(&self, _: &L1Key, value: &L1Value, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _: &L1Key,
        value: &L1Value,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    // moka calls this on every hit with the time it has just read: the only clock an entry's
    // logical life needs, so a hit reads none of its own.
    #[inline]
    fn expire_after_read(
        &self,
        _: &L1Key,
        value: &L1Value,
        now: Instant,
        duration_until_expiry: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        if let Some(life) = &value.life {
            life.observe(now);
        }
        duration_until_expiry
    }
}

/// moka's synchronous cache: every L1 operation is in memory and never waits on anything, so
/// an `async` API would only add a state machine to each hit, and a put can be checked against
/// the copy it replaces under a plain lock ([`Freshness::put_lock`](super::stamp::Freshness::put_lock)).
pub(crate) type L1 = moka::sync::Cache<L1Key, L1Value>;

/// Builds the L1; `on_evict`, when given, hears the namespace id of each entry evicted for
/// lack of room. Without it there is no listener, so moka takes no per-key locks.
pub(crate) fn build(capacity: u64, on_evict: Option<impl Fn(u32) + Send + Sync + 'static>) -> L1 {
    let builder = moka::sync::Cache::builder()
        .max_capacity(capacity)
        .weigher(|key: &L1Key, value: &L1Value| {
            let key_len = u32::try_from(key.key.len()).unwrap_or(u32::MAX);
            value.weight.saturating_add(key_len)
        })
        .expire_after(PerEntryTtl)
        // Tags, patterns and namespace clears evict by predicate.
        .support_invalidation_closures();
    match on_evict {
        Some(on_evict) => builder
            .eviction_listener(move |key: Arc<L1Key>, _, cause| {
                if cause == RemovalCause::Size {
                    on_evict(key.ns);
                }
            })
            .build(),
        None => builder.build(),
    }
}

/// Which values read from Redis a full L1 takes in: a value whose key was read again within
/// about as many L1 fills as L1 holds entries. A key that comes back less often than that
/// would be evicted before its next read anyway, so putting it in only costs an insert and
/// evicts an entry that might have been read (a scan over more keys than L1 holds, or keys
/// read once, push out the hot set otherwise). While L1 has room everything goes in.
///
/// A direct-mapped table remembers, per key, the fill count at its last read from Redis: a
/// keyed hash (SipHash under a per-process random key) picks the slot and tags it with
/// another 32 bits, so no key can be aimed at another's slot. A slot another key took only
/// forgets that key once (it goes in at its next read).
pub(crate) struct Admission {
    slots: Box<[AtomicU64]>,
    hasher: RandomState,
    fills: AtomicU32,
}

/// Slots of [`Admission`] (512 KiB). It judges while L1 holds at most half as many entries;
/// an L1 holding more takes everything in, as it would without it.
const ADMISSION_SLOTS: usize = 1 << 16;

impl Default for Admission {
    fn default() -> Self {
        Admission {
            slots: (0..ADMISSION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
            fills: AtomicU32::new(0),
        }
    }
}

impl Admission {
    /// Records a read of `key` from Redis and says whether `l1` should take the value in.
    pub(crate) fn admit(&self, ns: u32, key: &str, l1: &L1) -> bool {
        let full = l1
            .policy()
            .max_capacity()
            .is_some_and(|cap| l1.weighted_size().saturating_mul(10) >= cap.saturating_mul(9));
        let entries = l1.entry_count();
        if !full || entries > (ADMISSION_SLOTS / 2) as u64 {
            return true;
        }
        let hash = self.hasher.hash_one((ns, key));
        let slot = &self.slots[usize::try_from(hash).unwrap_or(0) % ADMISSION_SLOTS];
        let tag = (hash >> 32) | 1;
        let fill = self.fills.fetch_add(1, Ordering::Relaxed);
        let last = slot.swap(tag << 32 | u64::from(fill), Ordering::Relaxed);
        let seen = u32::try_from(last & u64::from(u32::MAX)).unwrap_or(0);
        last >> 32 == tag && u64::from(fill.wrapping_sub(seen)) <= entries.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(weight: u32) -> L1Value {
        L1Value {
            value: Arc::new(()),
            generation: 0,
            epoch: 0,
            weight,
            ttl: Duration::from_secs(60),
            tags: None,
            version: 0,
            life: None,
        }
    }

    /// An L1 of 1 KiB filled with ten entries of about 100 bytes.
    fn full_l1() -> L1 {
        let l1 = build(1024, None::<fn(u32)>);
        for i in 0..10 {
            l1.insert(L1Key::new(0, &format!("hot{i}")), entry(98));
        }
        l1.run_pending_tasks();
        l1
    }

    #[test]
    fn a_full_l1_takes_a_key_read_again_within_its_size() {
        let (l1, admission) = (full_l1(), Admission::default());
        assert!(!admission.admit(0, "a", &l1), "first read");
        assert!(admission.admit(0, "a", &l1), "read again at once");
        // Another namespace's key of the same name is another key.
        assert!(!admission.admit(1, "a", &l1));
        // Read again after more fills than L1 holds entries: it would have been evicted.
        for i in 0..20 {
            admission.admit(0, &format!("scan{i}"), &l1);
        }
        assert!(!admission.admit(0, "a", &l1));
    }

    #[test]
    fn an_l1_with_room_takes_everything() {
        let (l1, admission) = (build(1 << 20, None::<fn(u32)>), Admission::default());
        assert!(admission.admit(0, "a", &l1));
        assert!(admission.admit(0, "b", &l1));
    }
}
