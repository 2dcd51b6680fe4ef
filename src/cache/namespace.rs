//! The handle a service keeps for one kind of cached value, what its clones share, and the
//! small types its calls return. Its calls live by job: [`read`](super::read),
//! [`loader`](super::loader), [`write`](super::write), [`invalidate`](super::invalidate),
//! [`warm`](super::warm).

use std::any::TypeId;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::backplane::Op;
use super::base::CacheCore;
use super::epochs::Epochs;
use super::flight::Flights;
use super::l1::L1;
use super::l2::{count_failure, Keyspace, L2};
use super::options::{Resilience, Tiers};
use super::owed::Owed;
use super::stamp::Freshness;
use super::stats::{CacheStats, Counters};
use super::writing::Writing;
use crate::codec::Keyring;
use crate::error::Result;

/// What a namespace is, shared by every handle to it.
pub(super) struct NsShared {
    /// Assigned at registration; part of every L1 key.
    pub(super) id: u32,
    pub(super) name: String,
    pub(super) version: u32,
    pub(super) type_id: TypeId,
    pub(super) ttl: Duration,
    pub(super) l1_ttl: Duration,
    pub(super) jitter: f64,
    pub(super) counters: Counters,
    /// A read that raced a change does not keep its result.
    pub(super) fresh: Freshness,
    pub(super) keyspace: Keyspace,
    /// The namespace's and its tags' epochs as last seen.
    pub(super) epochs: Epochs,
    /// Changes Redis has not taken yet.
    pub(super) owed: Owed,
    /// The loads in flight in this process, one per key.
    pub(super) flights: Flights,
    /// The eager refreshes in flight of an L2-only namespace, whose readers never wait on
    /// them ([`Namespace::refresh_early`](super::Namespace)).
    pub(super) refreshes: Flights,
    /// This instance's writes Redis has not answered yet.
    pub(super) writing: Writing,
    /// With [`NamespaceBuilder::single_flight`](super::NamespaceBuilder::single_flight): how
    /// long one instance may load a cold key while the others wait for it.
    pub(super) lease: Option<Duration>,
    /// With [`NamespaceBuilder::encrypted`](super::NamespaceBuilder::encrypted): the keys its
    /// values are sealed with in Redis.
    pub(super) keyring: Option<Keyring>,
    /// Where values are kept ([`NamespaceBuilder::tiers`](super::NamespaceBuilder::tiers)).
    pub(super) tiers: Tiers,
    /// Fail-safe, loader timeouts, eager refresh, negative caching.
    pub(super) resilience: Resilience,
    /// A moving average of the loader's time, in nanoseconds: XFetch's `δ`.
    pub(super) load_nanos: AtomicU64,
}

impl NsShared {
    pub(super) fn same_declaration(&self, other: &NsShared) -> bool {
        self.type_id == other.type_id
            && self.version == other.version
            && self.ttl == other.ttl
            && self.l1_ttl == other.l1_ttl
            && self.jitter == other.jitter
            && self.lease == other.lease
            && self.keyring.is_some() == other.keyring.is_some()
            && self.tiers == other.tiers
            && self.resilience == other.resilience
    }

    /// Whether an L1 holds this namespace's values: not in an L2-only namespace that has a
    /// Redis to use instead.
    pub(super) fn uses_l1(&self, core: &CacheCore) -> bool {
        self.tiers != Tiers::L2Only || !core.l2.stores_values()
    }

    /// Takes a loader's time into the moving average.
    pub(super) fn record_load(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.load_nanos.load(Ordering::Relaxed);
        // A lost update between two loads only skews an average.
        let new = if old == 0 {
            took
        } else {
            old - old / 8 + took / 8
        };
        self.load_nanos.store(new, Ordering::Relaxed);
    }

    /// The loader's usual time.
    pub(super) fn load_time(&self) -> Duration {
        Duration::from_nanos(self.load_nanos.load(Ordering::Relaxed))
    }
}

/// Where a read's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Source {
    /// The in-process L1 (including a value another caller was loading at the same time).
    L1,
    /// Redis.
    L2,
    /// The `get_or_set` loader.
    Loader,
    /// An expired copy, served by fail-safe because the loader failed or timed out (or was
    /// throttled after it did), or a soft timeout passed while the load goes on.
    Stale,
}

/// A cached value and where it came from. Derefs to the value.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> tierkit::Result<()> {
/// use tierkit::cache::Source;
///
/// let kit = tierkit::Tierkit::embedded();
/// let names = kit.namespace::<String>("names").build()?;
/// let hit = names.get_or_set("1", || async { Ok::<_, std::io::Error>("ada".to_string()) }).await?;
/// assert_eq!(hit.source(), Source::Loader);
/// assert_eq!(hit.len(), 3); // Deref to String
/// assert_eq!(names.get("1").await.unwrap().source(), Source::L1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Hit<V> {
    pub(super) value: Arc<V>,
    pub(super) source: Source,
}

impl<V> Hit<V> {
    /// Where the value came from.
    pub fn source(&self) -> Source {
        self.source
    }

    /// The shared value.
    pub fn value(&self) -> &Arc<V> {
        &self.value
    }

    /// The shared value, owned.
    pub fn into_arc(self) -> Arc<V> {
        self.value
    }
}

impl<V> Clone for Hit<V> {
    fn clone(&self) -> Self {
        Hit {
            value: self.value.clone(),
            source: self.source,
        }
    }
}

impl<V> Deref for Hit<V> {
    type Target = V;

    fn deref(&self) -> &V {
        &self.value
    }
}

/// How far a write or invalidation reached. Serializes as `"allTiers"` or `"l1Only"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum Reach {
    /// Every configured tier: L1, and with Redis, L2 and the other instances' L1 copies.
    AllTiers,
    /// Only this instance's L1: Redis is down or the call failed. Other instances and the L2
    /// may keep the old value until its TTL ends.
    L1Only,
}

/// Per-write options: a TTL override and tags.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tierkit::cache::SetOptions;
///
/// let opts = SetOptions::new().ttl(Duration::from_secs(60)).tag("user:42").tag("feed");
/// # let _ = opts;
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct SetOptions {
    pub(super) ttl: Option<Duration>,
    pub(super) tags: Vec<String>,
}

impl SetOptions {
    /// No override, no tags.
    pub fn new() -> Self {
        SetOptions::default()
    }

    /// The TTL of this entry instead of the namespace's (jitter still applies). Must be at
    /// least 1 ms.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Adds a tag, for [`Namespace::invalidate_tag`]. An entry takes at most 32 tags of 1 to
    /// 256 bytes each; more is an [`Error::InvalidInput`](crate::Error::InvalidInput) from the
    /// write.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
}

/// A typed, cheap-to-clone handle to one cache namespace. Declare one with
/// [`Tierkit::namespace`](crate::Tierkit::namespace).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> tierkit::Result<()> {
/// use std::time::Duration;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Profile { name: String }
///
/// let kit = tierkit::Tierkit::embedded();
/// let profiles = kit.namespace::<Profile>("profiles").ttl(Duration::from_secs(3600)).build()?;
///
/// let p = profiles
///     .get_or_set("42", || async { Ok::<_, std::io::Error>(Profile { name: "Ada".into() }) })
///     .await?;
/// assert_eq!(p.name, "Ada");
/// profiles.invalidate("42").await?;
/// assert!(profiles.get("42").await.is_none());
/// # Ok(()) }
/// ```
pub struct Namespace<V> {
    // The L1 handle is kept here as well as in the core: one pointer less on the hit path.
    pub(super) l1: L1,
    /// [`NsShared::uses_l1`], kept here for the hit path.
    pub(super) l1_on: bool,
    pub(super) ns: Arc<NsShared>,
    pub(super) core: Arc<CacheCore>,
    pub(super) _type: PhantomData<fn() -> V>,
}

impl<V> Clone for Namespace<V> {
    fn clone(&self) -> Self {
        Namespace {
            l1: self.l1.clone(),
            l1_on: self.l1_on,
            ns: self.ns.clone(),
            core: self.core.clone(),
            _type: PhantomData,
        }
    }
}

impl<V> std::fmt::Debug for Namespace<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.ns.name)
            .field("version", &self.ns.version)
            .field("ttl", &self.ns.ttl)
            .field("l1_ttl", &self.ns.l1_ttl)
            .finish_non_exhaustive()
    }
}

impl<V> Namespace<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.ns.name
    }

    /// The counters of this namespace.
    pub fn stats(&self) -> CacheStats {
        self.ns.counters.snapshot()
    }

    /// The Redis key of `key` in this namespace.
    pub fn redis_key(&self, key: &str) -> String {
        self.ns.keyspace.entry(key)
    }

    /// Decodes what Redis holds at `key`'s place in this namespace ([`redis_key`](Self::redis_key)):
    /// for tools and tests that read Redis directly. The key is needed to open an encrypted
    /// namespace's values, which are bound to it. Entries are framed (a version, the epochs
    /// they were written under, their tags) around the [`Codec`](crate::Codec) envelope; this
    /// checks no epoch, so it also decodes entries a clear or tag invalidation has retired.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`](crate::Error::Decode): [`DecodeError::Foreign`](crate::DecodeError::Foreign)
    /// for bytes that are not an entry (or a tombstone, left by an invalidation), otherwise what
    /// the codec found wrong with the value.
    ///
    /// # Examples
    ///
    /// ```
    /// # let kit = tierkit::Tierkit::embedded();
    /// let names = kit.namespace::<String>("names").build()?;
    /// assert!(names.decode_entry("alice", b"not an entry").is_err());
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn decode_entry(&self, key: &str, bytes: &[u8]) -> Result<V> {
        match super::frame::parse(bytes) {
            Some(f) if f.kind == super::frame::Kind::Value => Ok(self.decode_body(key, f.body)?.0),
            _ => Err(crate::error::DecodeError::Foreign.into()),
        }
    }

    /// Whether this namespace's values go to an L2: not in an L1-only namespace, nor with no
    /// Redis.
    pub(super) fn stores_values(&self) -> bool {
        self.ns.tiers != Tiers::L1Only && self.core.l2.stores_values()
    }

    /// A change of a namespace whose values stay in L1 (see
    /// [`stores_values`](Self::stores_values)) told to the other instances, so they drop
    /// their copies; owed like any change when Redis does not take the message.
    pub(super) async fn announce(&self, op: &Op) -> Reach {
        if !self.core.l2.stores_values() {
            // No Redis: no other instance to tell, and nothing owed. What stands in for Redis
            // (fault injection) is told all the same, so a change meets the faults and reaches
            // only the L1 when it is down, as with Redis.
            let sent = match self.l2() {
                Ok(l2) => l2.publish(op).await,
                Err(e) => Err(e),
            };
            return self.reach(sent);
        }
        let owing = self.ns.owed.until_paid(op);
        let sent = match self.l2() {
            Ok(l2) => l2.publish(op).await,
            Err(e) => Err(e),
        };
        owing.settle(&sent);
        self.reach(sent)
    }

    /// The L2 for this call ([`Tier::pick`](super::l2::Tier::pick)).
    pub(super) fn l2(&self) -> Result<&dyn L2> {
        self.core.l2.pick()
    }

    /// How far a change reached, given how its L2 call went; a failure is counted.
    pub(super) fn reach(&self, sent: Result<()>) -> Reach {
        match sent {
            Ok(()) => Reach::AllTiers,
            Err(e) => {
                tracing::debug!(namespace = %self.ns.name, error = %e,
                    "tierkit: a change reached only this instance's L1; it is owed to Redis");
                count_failure(&self.ns.counters, &e);
                Reach::L1Only
            }
        }
    }
}

/// Handles to one namespace kept per [`Tierkit`](crate::Tierkit) instance, for a `static` that
/// declares its namespace once per instance: what the `#[cached]` attribute macro (feature
/// `macros`) keeps for each function. Get a handle out with
/// [`Tierkit::namespace_in`](crate::Tierkit::namespace_in).
///
/// It holds no instance alive: an instance dropped is forgotten at the next declaration, and
/// its handles go with it.
///
/// # Examples
///
/// ```
/// use tierkit::cache::NamespaceSlot;
///
/// static NAMES: NamespaceSlot<String> = NamespaceSlot::new();
///
/// let kit = tierkit::Tierkit::embedded();
/// let names = kit.namespace_in(&NAMES, |kit| kit.namespace::<String>("names").build())?;
/// // The second time, the handle comes from the slot; the closure does not run.
/// let again = kit.namespace_in(&NAMES, |_| unreachable!())?;
/// assert_eq!(names.name(), again.name());
/// # Ok::<(), tierkit::Error>(())
/// ```
pub struct NamespaceSlot<V> {
    /// The instances' caches, and the namespace declared in each, both weakly held: a `Weak`
    /// keeps its allocation's address from being reused, so a live cache at the same address
    /// is the same cache.
    held: RwLock<Vec<(Weak<CacheCore>, Weak<NsShared>)>>,
    _type: PhantomData<fn() -> V>,
}

impl<V> NamespaceSlot<V> {
    /// An empty slot, for a `static`.
    pub const fn new() -> Self {
        NamespaceSlot {
            held: RwLock::new(Vec::new()),
            _type: PhantomData,
        }
    }
}

impl<V> Default for NamespaceSlot<V> {
    fn default() -> Self {
        NamespaceSlot::new()
    }
}

impl<V> std::fmt::Debug for NamespaceSlot<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        let live = held.iter().filter(|(core, _)| core.strong_count() > 0);
        f.debug_struct("NamespaceSlot")
            .field("instances", &live.count())
            .finish()
    }
}

impl<V> NamespaceSlot<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The handle kept for the instance whose cache is `core`, if any.
    pub(crate) fn find(&self, core: &Arc<CacheCore>) -> Option<Namespace<V>> {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        let (_, ns) = held
            .iter()
            .find(|(kept, _)| std::ptr::eq(kept.as_ptr(), Arc::as_ptr(core)))?;
        // The cache's registry holds its namespaces as long as the cache lives.
        let ns = ns.upgrade()?;
        Some(Namespace {
            l1: core.l1.clone(),
            l1_on: ns.uses_l1(core),
            ns,
            core: core.clone(),
            _type: PhantomData,
        })
    }

    /// Keeps `ns`, declared on the instance whose cache is `core`, and forgets the instances
    /// dropped since.
    pub(crate) fn keep(&self, core: &Arc<CacheCore>, ns: &Namespace<V>) -> Result<()> {
        if !Arc::ptr_eq(core, &ns.core) {
            return Err(crate::error::Error::invalid(
                "declare",
                "declared the namespace on another Tierkit than the one asked; declare it on \
                 the instance the closure is given",
            ));
        }
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        held.retain(|(kept, _)| kept.strong_count() > 0);
        if !held
            .iter()
            .any(|(kept, _)| std::ptr::eq(kept.as_ptr(), Arc::as_ptr(core)))
        {
            held.push((Arc::downgrade(core), Arc::downgrade(&ns.ns)));
        }
        Ok(())
    }
}
