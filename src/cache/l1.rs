//! The in-process tier: one moka cache shared by every namespace, bounded in bytes, each entry
//! expiring after its own TTL on moka's clock.

use std::any::Any;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::{Equivalent, Expiry};

use super::life::Life;

/// A namespace id (assigned per process at declaration) plus the caller's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct L1Key {
    pub(crate) ns: u32,
    pub(crate) key: Box<str>,
}

impl L1Key {
    pub(crate) fn new(ns: u32, key: &str) -> Self {
        L1Key {
            ns,
            key: key.into(),
        }
    }
}

// L1Key and KeyRef must hash identically: a hit is looked up by KeyRef without allocating.
impl Hash for L1Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u32(self.ns);
        self.key.hash(state);
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
        self.ns == key.ns && self.key == &*key.key
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
