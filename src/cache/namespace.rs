//! A typed namespace: the handle a service keeps for one kind of cached value.

use std::any::{Any, TypeId};
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::backplane::Op;
use super::l1::{KeyRef, L1Key, L1Value, L1};
use super::pattern::Pattern;
use super::stats::{add, bump, CacheStats, Counters};
use super::CacheCore;
use crate::error::{Error, Result};

const DEFAULT_TTL: Duration = Duration::from_secs(3600);
const SCAN_COUNT: usize = 1000;

/// What a namespace is, shared by every handle to it.
pub(crate) struct NsShared {
    pub(crate) id: u32,
    pub(crate) name: String,
    version: u32,
    type_id: TypeId,
    ttl: Duration,
    l1_ttl: Duration,
    jitter: f64,
    pub(crate) counters: Counters,
    /// Change counters: `epoch` for whole-namespace changes (tags, patterns, clears), a stripe
    /// per key hash for single keys. A read that raced a change does not keep its result.
    epoch: AtomicU64,
    stripes: Box<[AtomicU64]>,
    /// L1 entries made under an older generation are not served: dropping the whole L1 is
    /// one increment here, instead of moka's `invalidate_all`, whose clean-up of every entry
    /// (100-300 ms for 100k entries) would land inline on one unlucky request.
    l1_generation: AtomicU64,
    /// `{prefix}:c:{name}:v{version}:`
    key_prefix: String,
    /// `{prefix}:c:{name}:t{version}:`
    tag_prefix: String,
    /// `{prefix}:c:{name}:*`: every key of the namespace, all versions.
    all_versions: String,
}

impl NsShared {
    pub(crate) fn same_declaration(&self, other: &NsShared) -> bool {
        self.type_id == other.type_id
            && self.version == other.version
            && self.ttl == other.ttl
            && self.l1_ttl == other.l1_ttl
            && self.jitter == other.jitter
    }

    /// Marks every key of the namespace as changed.
    pub(crate) fn bump_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Stops serving every L1 entry made so far (and marks every key changed, so no load in
    /// flight keeps its result). The entries leave L1 when next read, replaced or evicted.
    pub(crate) fn forget_l1(&self) {
        self.bump_all();
        self.l1_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Marks `key` (and the few keys sharing its stripe) as changed.
    pub(crate) fn bump_key(&self, key: &str) {
        self.stripe(key).fetch_add(1, Ordering::AcqRel);
    }

    fn stamp(&self, key: &str) -> Stamp {
        Stamp(
            self.epoch.load(Ordering::Acquire),
            self.stripe(key).load(Ordering::Acquire),
        )
    }

    fn changed_since(&self, key: &str, stamp: Stamp) -> bool {
        self.stamp(key) != stamp
    }

    fn stripe(&self, key: &str) -> &AtomicU64 {
        // Fx: a few cycles per word; a crafted collision only costs a spurious re-read.
        let h = std::hash::BuildHasher::hash_one(&rustc_hash::FxBuildHasher, key);
        &self.stripes[(h as usize) % STRIPES]
    }
}

const STRIPES: usize = 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp(u64, u64);

/// A Redis write a load decided on, done after the waiters of the load are released.
struct PendingWrite {
    bytes: Vec<u8>,
    ttl: Duration,
    /// Overwrite undecodable bytes; otherwise only fill an absent key, so a load never
    /// overwrites a value another instance wrote meanwhile.
    overwrite: bool,
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
    value: Arc<V>,
    source: Source,
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

/// How far a write or invalidation reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    ttl: Option<Duration>,
    tags: Vec<String>,
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

    /// Adds a tag, for [`Namespace::invalidate_tag`].
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
}

/// Declares a namespace; get one from [`Tierkit::namespace`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let kit = tierkit::Tierkit::embedded();
/// let events = kit
///     .namespace::<Vec<String>>("events")
///     .ttl(Duration::from_secs(30 * 60))
///     .l1_ttl(Duration::from_secs(60))
///     .version(2)
///     .jitter(0.1)
///     .build()?;
/// # let _ = events;
/// # Ok::<(), tierkit::Error>(())
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct NamespaceBuilder<V> {
    core: Arc<CacheCore>,
    name: String,
    ttl: Duration,
    l1_ttl: Option<Duration>,
    version: u32,
    jitter: f64,
    _type: PhantomData<fn() -> V>,
}

impl<V> std::fmt::Debug for NamespaceBuilder<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceBuilder")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .field("l1_ttl", &self.l1_ttl)
            .field("version", &self.version)
            .field("jitter", &self.jitter)
            .finish()
    }
}

impl<V> NamespaceBuilder<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    pub(crate) fn new(core: Arc<CacheCore>, name: String) -> Self {
        NamespaceBuilder {
            core,
            name,
            ttl: DEFAULT_TTL,
            l1_ttl: None,
            version: 1,
            jitter: 0.0,
            _type: PhantomData,
        }
    }

    /// How long an entry lives in Redis. Default: 1 hour.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long an entry lives in the L1, at most the TTL. A shorter L1 TTL bounds how stale
    /// an L1 copy can get when the backplane is down. Default: the TTL.
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = Some(ttl);
        self
    }

    /// The schema version of `V`. Bump it when a deploy changes the type: old entries become
    /// unreachable instead of being read as the new type. Default: 1.
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Shortens each entry's TTL by a random fraction up to `fraction` (0 to 1, exclusive), so
    /// entries written together do not expire together. Default: 0 (no jitter).
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// Validates and declares the namespace. Declaring the same name again with the same type
    /// and settings gives a handle to the same namespace.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a name outside `A-Z a-z 0-9 _ - .` (1-64 characters), a zero TTL,
    /// an L1 TTL above the TTL, a jitter outside `[0, 1)`, or a name already declared with
    /// another type or settings.
    pub fn build(self) -> Result<Namespace<V>> {
        crate::keys::validate_name("namespace", &self.name)?;
        if let Some(problem) = ttl_problem(self.ttl) {
            return Err(Error::config("ttl", problem));
        }
        let l1_ttl = self.l1_ttl.unwrap_or(self.ttl);
        if l1_ttl.is_zero() || l1_ttl > self.ttl {
            return Err(Error::config(
                "l1_ttl",
                format!(
                    "{l1_ttl:?} must be positive and at most the TTL {:?}",
                    self.ttl
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(Error::config(
                "jitter",
                format!(
                    "{} is outside [0, 1); e.g. 0.1 shortens TTLs by up to 10%",
                    self.jitter
                ),
            ));
        }
        let core = &self.core;
        let name = &self.name;
        let shared = core.register(NsShared {
            id: 0,
            name: name.clone(),
            version: self.version,
            type_id: TypeId::of::<V>(),
            ttl: self.ttl,
            l1_ttl,
            jitter: self.jitter,
            counters: Counters::default(),
            epoch: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            l1_generation: AtomicU64::new(0),
            key_prefix: core.keys.cache_entries(name, self.version),
            tag_prefix: core.keys.cache_tags(name, self.version),
            all_versions: core.keys.cache_namespace_glob(name),
        })?;
        Ok(Namespace {
            l1: core.l1.clone(),
            ns: shared,
            core: self.core,
            _type: PhantomData,
        })
    }
}

/// Redis takes TTLs in milliseconds up to `i64::MAX`; the problem, if `ttl` is outside.
fn ttl_problem(ttl: Duration) -> Option<String> {
    const MAX: Duration = Duration::from_millis(i64::MAX as u64);
    (ttl < Duration::from_millis(1) || ttl > MAX)
        .then(|| format!("{ttl:?} is outside 1 ms ..= {MAX:?}; give a TTL Redis accepts"))
}

/// A typed, cheap-to-clone handle to one cache namespace.
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
    l1: L1,
    ns: Arc<NsShared>,
    core: Arc<CacheCore>,
    _type: PhantomData<fn() -> V>,
}

impl<V> Clone for Namespace<V> {
    fn clone(&self) -> Self {
        Namespace {
            l1: self.l1.clone(),
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

/// Classifies a failed L2 call for the counters; Redis errors never reach a reader.
fn count_l2_failure(counters: &Counters, err: &Error) {
    match err {
        Error::Unavailable => bump(&counters.l2_skipped),
        _ => bump(&counters.l2_errors),
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
        let mut k = String::with_capacity(self.ns.key_prefix.len() + key.len());
        k.push_str(&self.ns.key_prefix);
        k.push_str(key);
        k
    }

    /// An L1 hit, counted. The hot path: one lookup, one `Arc` clone, one relaxed add.
    async fn l1_hit(&self, key: &str) -> Option<Hit<V>> {
        let key_ref = KeyRef {
            ns: self.ns.id,
            key,
        };
        let found = self.l1.get(&key_ref).await?;
        if found.generation != self.ns.l1_generation.load(Ordering::Acquire) {
            // Made before the L1 was dropped: a miss, and out of the way of the next fill.
            self.l1.invalidate(&key_ref).await;
            return None;
        }
        // Namespace ids are bound to one type at declaration, so this cannot fail; if it did,
        // a miss is the safe answer.
        let value = Arc::downcast::<V>(found.value).ok()?;
        bump(&self.ns.counters.l1_hits);
        Some(Hit {
            value,
            source: Source::L1,
        })
    }

    /// Reads `key`: L1, then Redis. `None` when neither has it. Never returns a Redis error:
    /// when Redis is down or fails, the read is answered from L1 alone.
    pub async fn get(&self, key: &str) -> Option<Hit<V>> {
        if let Some(hit) = self.l1_hit(key).await {
            return Some(hit);
        }
        let stamp = self.ns.stamp(key);
        match self.l2_get(key).await {
            Some((value, weight)) => {
                let value = Arc::new(value);
                self.fill_l1(key, value.clone(), weight, stamp).await;
                Some(Hit {
                    value,
                    source: Source::L2,
                })
            }
            None => {
                bump(&self.ns.counters.misses);
                None
            }
        }
    }

    /// L2 read: the decoded value and its stored size, counting hits, errors and decode
    /// failures. A miss is counted by the caller.
    async fn l2_get(&self, key: &str) -> Option<(V, u32)> {
        match self.l2_read(key).await {
            L2Read::Hit(value, weight) => Some((value, weight)),
            _ => None,
        }
    }

    async fn l2_read(&self, key: &str) -> L2Read<V> {
        let Some(conn) = self.core.conn.as_ref() else {
            return L2Read::Unreachable;
        };
        let counters = &self.ns.counters;
        match conn
            .query::<Option<Vec<u8>>>(redis::cmd("GET").arg(self.redis_key(key)))
            .await
        {
            Ok(Some(bytes)) => match self.core.codec.decode::<V>(&bytes) {
                Ok(value) => {
                    bump(&counters.l2_hits);
                    L2Read::Hit(value, weight_of(&bytes))
                }
                Err(e) => {
                    bump(&counters.decode_failures);
                    tracing::debug!(namespace = %self.ns.name, error = %e,
                        "tierkit: stored value does not decode; treating as a miss");
                    L2Read::Undecodable
                }
            },
            Ok(None) => L2Read::Absent,
            Err(e) => {
                count_l2_failure(counters, &e);
                L2Read::Unreachable
            }
        }
    }

    /// Keeps a value read from L2 in L1, for the namespace's L1 TTL, unless the key changed
    /// since `stamp` was taken (before the read). Checked after the insert: a change that
    /// lands in between is then either seen here or overwrites this value itself.
    async fn fill_l1(&self, key: &str, value: Arc<V>, weight: u32, stamp: Stamp) {
        let value = self.l1_value(value, weight, self.ns.l1_ttl, None);
        self.l1.insert(L1Key::new(self.ns.id, key), value).await;
        if self.ns.changed_since(key, stamp) {
            self.l1
                .invalidate(&KeyRef {
                    ns: self.ns.id,
                    key,
                })
                .await;
        }
    }

    fn l1_value(
        &self,
        value: Arc<V>,
        weight: u32,
        ttl: Duration,
        tags: Option<Arc<[Box<str>]>>,
    ) -> L1Value {
        L1Value {
            value: value as Arc<dyn Any + Send + Sync>,
            generation: self.ns.l1_generation.load(Ordering::Acquire),
            weight,
            ttl: ttl.min(self.ns.l1_ttl),
            tags,
        }
    }

    /// Reads `key` through both tiers and, when neither has it, runs `loader` and writes its
    /// value to both (cache-aside).
    ///
    /// Concurrent calls for one missing key run one load per process: the others wait for it
    /// and share its value, or its error.
    ///
    /// # Errors
    ///
    /// [`Error::Loader`] when the loader fails (nothing is cached); [`Error::TooLarge`] or
    /// [`Error::Encode`] when its value cannot be stored. Never a Redis error: Redis failures
    /// make the call skip L2.
    pub async fn get_or_set<F, Fut, E>(&self, key: &str, loader: F) -> Result<Hit<V>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<V, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(hit) = self.l1_hit(key).await {
            return Ok(hit);
        }
        let stamp = self.ns.stamp(key);
        let mut source = Source::L1;
        let mut pending = None;
        let entry = self
            .l1
            .entry(L1Key::new(self.ns.id, key))
            .or_try_insert_with(self.load(key, loader, &mut source, &mut pending))
            .await;
        let entry = entry.map_err(Error::from_shared)?;
        let fresh = entry.is_fresh();
        let value = Arc::downcast::<V>(entry.into_value().value)
            .map_err(|_| Error::Internal("an L1 entry of this namespace holds another type"))?;
        if !fresh {
            bump(&self.ns.counters.l1_hits);
            return Ok(Hit {
                value,
                source: Source::L1,
            });
        }
        if self.ns.changed_since(key, stamp) {
            // A write or invalidation landed while this value was loading: hand it to the
            // caller, but keep what may already be stale in neither tier.
            self.l1
                .invalidate(&KeyRef {
                    ns: self.ns.id,
                    key,
                })
                .await;
        } else if let Some(write) = pending {
            // After the waiters are released: they need not wait for Redis to take the value.
            self.fill_l2(key, write).await;
        }
        Ok(Hit { value, source })
    }

    async fn load<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
        source: &mut Source,
        pending: &mut Option<PendingWrite>,
    ) -> Result<L1Value>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<V, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let counters = &self.ns.counters;
        let read = self.l2_read(key).await;
        let overwrite = match read {
            L2Read::Hit(value, weight) => {
                *source = Source::L2;
                return Ok(self.l1_value(Arc::new(value), weight, self.ns.l1_ttl, None));
            }
            L2Read::Absent => Some(false),
            L2Read::Undecodable => Some(true),
            L2Read::Unreachable => None,
        };
        bump(&counters.misses);
        bump(&counters.loader_calls);
        let started = Instant::now();
        let span = tracing::debug_span!("tierkit.loader", namespace = %self.ns.name);
        let loaded = tracing::Instrument::instrument(loader(), span).await;
        crate::metrics::loader(&self.ns.name, started.elapsed());
        let value = loaded.map_err(|e| {
            bump(&counters.loader_errors);
            Error::Loader(Arc::from(e.into()))
        })?;
        *source = Source::Loader;
        let (bytes, weight) = self.encode(&value)?;
        let ttl = self.jittered(self.ns.ttl);
        match (bytes, overwrite) {
            (Some(bytes), Some(overwrite)) => {
                *pending = Some(PendingWrite {
                    bytes,
                    ttl,
                    overwrite,
                })
            }
            // The read just failed: a write now would most likely wait out another timeout.
            (Some(_), None) => bump(&counters.l2_skipped),
            // Embedded: nothing to store.
            (None, _) => {}
        }
        Ok(self.l1_value(Arc::new(value), weight, ttl, None))
    }

    async fn fill_l2(&self, key: &str, write: PendingWrite) {
        let Some(conn) = self.core.conn.as_ref() else {
            return;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.redis_key(key))
            .arg(write.bytes)
            .arg("PX")
            .arg(millis(write.ttl));
        if !write.overwrite {
            cmd.arg("NX");
        }
        if let Err(e) = conn.query::<Option<String>>(&cmd).await {
            count_l2_failure(&self.ns.counters, &e);
        }
    }

    /// The stored bytes of `value` and its L1 weight. Embedded, nothing is stored: the value
    /// is only measured (no buffer, no compression) for its weight and size limit.
    fn encode(&self, value: &V) -> Result<(Option<Vec<u8>>, u32)> {
        if self.core.conn.as_ref().is_none() {
            let len = self.core.codec.measure(value)?;
            return Ok((None, u32::try_from(len).unwrap_or(u32::MAX)));
        }
        let started = Instant::now();
        let (bytes, info) = self.core.codec.encode_with_info(value)?;
        let counters = &self.ns.counters;
        add(&counters.encode_nanos, started.elapsed().as_nanos() as u64);
        add(&counters.encoded_bytes, info.body_len as u64);
        add(&counters.stored_bytes, info.stored_len as u64);
        let weight = weight_of(&bytes);
        Ok((Some(bytes), weight))
    }

    fn jittered(&self, ttl: Duration) -> Duration {
        if self.ns.jitter == 0.0 {
            return ttl;
        }
        let cut = ttl.mul_f64(self.ns.jitter * fastrand::f64());
        ttl.saturating_sub(cut).max(Duration::from_millis(1))
    }

    /// Writes `value` to L1 and Redis (write-through) and evicts other instances' L1 copies.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] or [`Error::Encode`] when the value cannot be stored; nothing is
    /// written then. Redis failures are not errors: see [`Reach`].
    pub async fn set(&self, key: &str, value: V) -> Result<Reach> {
        self.set_with(key, value, SetOptions::default()).await
    }

    /// [`set`](Self::set) with a TTL override and tags.
    ///
    /// # Errors
    ///
    /// As [`set`](Self::set), and [`Error::InvalidInput`] for a TTL under 1 ms or an empty tag.
    pub async fn set_with(&self, key: &str, value: V, opts: SetOptions) -> Result<Reach> {
        let batch = self.prepare(key, value, &opts)?;
        self.write(vec![batch]).await
    }

    /// Writes many entries in one Redis round trip.
    ///
    /// # Errors
    ///
    /// As [`set`](Self::set); when any value cannot be stored, nothing is written.
    pub async fn set_many<K: AsRef<str>>(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Reach> {
        let opts = SetOptions::default();
        let batch = entries
            .into_iter()
            .map(|(k, v)| self.prepare(k.as_ref(), v, &opts))
            .collect::<Result<Vec<_>>>()?;
        self.write(batch).await
    }

    fn prepare(&self, key: &str, value: V, opts: &SetOptions) -> Result<Prepared<V>> {
        let ttl = opts.ttl.unwrap_or(self.ns.ttl);
        if let Some(problem) = ttl_problem(ttl) {
            return Err(Error::invalid("ttl", problem));
        }
        if opts.tags.iter().any(String::is_empty) {
            return Err(Error::invalid(
                "tag",
                "is empty; tags need at least one character",
            ));
        }
        let (bytes, weight) = self.encode(&value)?;
        let tags: Option<Arc<[Box<str>]>> =
            (!opts.tags.is_empty()).then(|| opts.tags.iter().map(|t| t.as_str().into()).collect());
        Ok(Prepared {
            key: key.to_owned(),
            value: Arc::new(value),
            bytes,
            weight,
            ttl: self.jittered(ttl),
            tags,
        })
    }

    async fn write(&self, batch: Vec<Prepared<V>>) -> Result<Reach> {
        let mut pipe = redis::pipe();
        let mut keys = Vec::with_capacity(batch.len());
        for p in batch {
            if let Some(bytes) = p.bytes {
                let ms = millis(p.ttl);
                pipe.cmd("SET")
                    .arg(self.redis_key(&p.key))
                    .arg(bytes)
                    .arg("PX")
                    .arg(ms)
                    .ignore();
                for tag in p.tags.iter().flat_map(|t| t.iter()) {
                    let tag_key = format!("{}{tag}", self.ns.tag_prefix);
                    pipe.cmd("EVAL")
                        .arg(TAG_SCRIPT)
                        .arg(1)
                        .arg(&tag_key)
                        .arg(&p.key)
                        .arg(ms)
                        .ignore();
                }
            }
            self.ns.bump_key(&p.key);
            let value = self.l1_value(p.value, p.weight, p.ttl, p.tags);
            self.l1.insert(L1Key::new(self.ns.id, &p.key), value).await;
            keys.push(p.key);
        }
        let op = Op::Keys {
            ns: self.ns.name.clone(),
            keys,
        };
        self.to_l2(pipe, op).await
    }

    /// Sends a write pipeline with the backplane publish appended, in one round trip.
    async fn to_l2(&self, mut pipe: redis::Pipeline, op: Op) -> Result<Reach> {
        let Some(conn) = self.core.conn.as_ref() else {
            return Ok(Reach::AllTiers);
        };
        let core = &self.core;
        pipe.cmd("PUBLISH")
            .arg(&core.channel)
            .arg(core.message(op))
            .ignore();
        match conn.pipeline::<()>(&pipe).await {
            Ok(()) => Ok(Reach::AllTiers),
            Err(e) => {
                count_l2_failure(&self.ns.counters, &e);
                Ok(Reach::L1Only)
            }
        }
    }

    /// Reads many keys: L1 first, then every L1 miss from Redis in one round trip. The result
    /// lines up with `keys`.
    pub async fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Vec<Option<Hit<V>>> {
        let counters = &self.ns.counters;
        let mut out = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let hit = self.l1_hit(key.as_ref()).await;
            if hit.is_none() {
                missing.push(i);
            }
            out.push(hit);
        }
        if missing.is_empty() {
            return out;
        }
        let stamps: Vec<Stamp> = missing
            .iter()
            .map(|&i| self.ns.stamp(keys[i].as_ref()))
            .collect();
        let fetched = match self.core.conn.as_ref() {
            Some(conn) => {
                let mut pipe = redis::pipe();
                for &i in &missing {
                    pipe.cmd("GET").arg(self.redis_key(keys[i].as_ref()));
                }
                match conn.pipeline::<Vec<Option<Vec<u8>>>>(&pipe).await {
                    Ok(found) => found,
                    Err(e) => {
                        count_l2_failure(counters, &e);
                        Vec::new()
                    }
                }
            }
            None => Vec::new(),
        };
        let mut fetched = fetched.into_iter();
        for (i, stamp) in missing.into_iter().zip(stamps) {
            let decoded = fetched.next().flatten().and_then(|bytes| {
                self.core
                    .codec
                    .decode::<V>(&bytes)
                    .map(|v| (v, weight_of(&bytes)))
                    .map_err(|_| bump(&counters.decode_failures))
                    .ok()
            });
            match decoded {
                Some((value, weight)) => {
                    bump(&counters.l2_hits);
                    let value = Arc::new(value);
                    self.fill_l1(keys[i].as_ref(), value.clone(), weight, stamp)
                        .await;
                    out[i] = Some(Hit {
                        value,
                        source: Source::L2,
                    });
                }
                None => bump(&counters.misses),
            }
        }
        out
    }

    /// Removes `key` from L1, Redis and the other instances' L1.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for input checks. Redis failures give
    /// [`Reach::L1Only`].
    pub async fn invalidate(&self, key: &str) -> Result<Reach> {
        let op = Op::Keys {
            ns: self.ns.name.clone(),
            keys: vec![key.to_owned()],
        };
        self.core.apply(&self.ns, &op).await;
        let mut pipe = redis::pipe();
        pipe.cmd("UNLINK").arg(self.redis_key(key)).ignore();
        self.to_l2(pipe, op).await
    }

    /// Removes every entry written with `tag` (see [`SetOptions::tag`]), in every tier and
    /// instance.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty tag. Redis failures give [`Reach::L1Only`].
    pub async fn invalidate_tag(&self, tag: &str) -> Result<Reach> {
        if tag.is_empty() {
            return Err(Error::invalid(
                "tag",
                "is empty; tags need at least one character",
            ));
        }
        let core = &self.core;
        // Entries this instance wrote with the tag, whether or not Redis is reachable.
        let local = Op::Tag {
            ns: self.ns.name.clone(),
            tag: tag.to_owned(),
            keys: Vec::new(),
        };
        core.apply(&self.ns, &local).await;
        let Some(conn) = self.core.conn.as_ref() else {
            return Ok(Reach::AllTiers);
        };
        // Read and delete the tag set in one step, so a key tagged meanwhile is either in
        // this batch or in a fresh set, never lost.
        let tag_key = format!("{}{tag}", self.ns.tag_prefix);
        let keys = match conn.invoke::<Vec<String>>(&TAKE_SET.key(&tag_key)).await {
            Ok(keys) => keys,
            Err(e) => {
                count_l2_failure(&self.ns.counters, &e);
                return Ok(Reach::L1Only);
            }
        };
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("UNLINK").arg(self.redis_key(key)).ignore();
        }
        // Entries read from L2 (here or elsewhere) do not know their tags: evict them by key.
        let op = Op::Tag {
            ns: self.ns.name.clone(),
            tag: tag.to_owned(),
            keys,
        };
        core.apply(&self.ns, &op).await;
        self.to_l2(pipe, op).await
    }

    /// Removes every entry whose key matches `pattern`, in every tier and instance, and returns
    /// how many Redis entries were removed.
    ///
    /// The pattern is a glob over this namespace's keys only: `*` matches any run of
    /// characters, `?` one character, `\` makes the next character literal, and everything
    /// else (`[`, `]`, ...) is literal. Redis is walked with `SCAN` in batches, never `KEYS`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a pattern ending in a lone `\`. When Redis fails part way, the
    /// entries removed so far stay removed and [`Reach::L1Only`] comes back with the count.
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<(Reach, u64)> {
        let parsed = Pattern::parse(pattern)?;
        let op = Op::Pattern {
            ns: self.ns.name.clone(),
            pattern: parsed.source().to_owned(),
        };
        self.core.apply(&self.ns, &op).await;
        let glob = parsed.to_redis_glob(&self.ns.key_prefix);
        self.scan_unlink(&glob, Some(&parsed), op).await
    }

    /// Removes every entry of this namespace, of every version, in every tier and instance,
    /// and returns how many Redis keys were removed.
    ///
    /// # Errors
    ///
    /// None today; Redis failures give [`Reach::L1Only`] with the count removed so far.
    pub async fn clear(&self) -> Result<(Reach, u64)> {
        let op = Op::Clear {
            ns: self.ns.name.clone(),
        };
        self.core.apply(&self.ns, &op).await;
        let glob = self.ns.all_versions.clone();
        self.scan_unlink(&glob, None, op).await
    }

    /// SCANs `glob` and UNLINKs what it finds, batch by batch. With `filter`, only keys of this
    /// namespace's current version whose key matches are removed: Redis's `?` matches a byte,
    /// ours a character, so the glob is a superset and the filter decides.
    async fn scan_unlink(
        &self,
        glob: &str,
        filter: Option<&Pattern>,
        op: Op,
    ) -> Result<(Reach, u64)> {
        let Some(conn) = self.core.conn.as_ref() else {
            return Ok((Reach::AllTiers, 0));
        };
        // A cluster keeps each key on one primary: every primary's keyspace is walked.
        let nodes = match conn.nodes().await {
            Ok(nodes) => nodes,
            Err(e) => {
                count_l2_failure(&self.ns.counters, &e);
                return Ok((Reach::L1Only, 0));
            }
        };
        let mut removed = 0;
        for node in &nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(glob)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let (next, mut keys): (u64, Vec<Vec<u8>>) = match conn.query_node(node, &scan).await
                {
                    Ok(page) => page,
                    Err(e) => {
                        count_l2_failure(&self.ns.counters, &e);
                        return Ok((Reach::L1Only, removed));
                    }
                };
                if let Some(pattern) = filter {
                    let prefix = self.ns.key_prefix.as_bytes();
                    keys.retain(|k| {
                        k.strip_prefix(prefix)
                            .and_then(|rest| std::str::from_utf8(rest).ok())
                            .is_some_and(|rest| pattern.matches(rest))
                    });
                }
                if !keys.is_empty() {
                    let mut pipe = redis::pipe();
                    for key in &keys {
                        pipe.cmd("UNLINK").arg(key);
                    }
                    match conn.pipeline::<Vec<u64>>(&pipe).await {
                        Ok(counts) => removed += counts.iter().sum::<u64>(),
                        Err(e) => {
                            count_l2_failure(&self.ns.counters, &e);
                            return Ok((Reach::L1Only, removed));
                        }
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        let reach = self.to_l2(redis::pipe(), op).await?;
        Ok((reach, removed))
    }
}

/// Adds a key to a tag set and makes the set live at least as long as the entry: the set must
/// outlive every entry it lists. (Plain EVAL: the script is tiny, Redis caches it, and EVAL in
/// a pipeline needs no NOSCRIPT handling. Works on any Redis with Lua, unlike PEXPIRE NX/GT.)
const TAG_SCRIPT: &str = "redis.call('SADD', KEYS[1], ARGV[1]) \
    if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then \
    redis.call('PEXPIRE', KEYS[1], ARGV[2]) end";

/// Returns the members of a set and deletes it, atomically, touching one key.
static TAKE_SET: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local m = redis.call('SMEMBERS', KEYS[1]) redis.call('UNLINK', KEYS[1]) return m",
    )
});

/// What an L2 read found.
enum L2Read<V> {
    Hit(V, u32),
    Absent,
    /// Bytes that do not decode as `V`: a miss that the next write must overwrite.
    Undecodable,
    /// Redis failed, timed out, is down, or is not configured.
    Unreachable,
}

struct Prepared<V> {
    key: String,
    value: Arc<V>,
    /// `None` when embedded: nothing goes to Redis.
    bytes: Option<Vec<u8>>,
    weight: u32,
    ttl: Duration,
    tags: Option<Arc<[Box<str>]>>,
}

/// An entry weighs what it takes to store: the encoded (and maybe compressed) envelope.
fn weight_of(bytes: &[u8]) -> u32 {
    u32::try_from(bytes.len()).unwrap_or(u32::MAX)
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Progress of [`Namespace::warm`], reported after every key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmProgress {
    /// Keys handled so far.
    pub done: usize,
    /// Keys to handle.
    pub total: usize,
    /// Keys loaded and written.
    pub loaded: usize,
    /// Keys skipped because Redis already had them.
    pub skipped: usize,
    /// Keys whose loader failed (nothing written for them).
    pub failed: usize,
}

impl<V> Namespace<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Fills the cache ahead of traffic: for every key Redis does not have yet, runs `loader`
    /// (at most `concurrency` at a time) and writes the value through. Keys Redis already holds
    /// (embedded: the L1) are skipped, checked in batches of one round trip each. `progress`
    /// hears about every key.
    ///
    /// A failed loader is counted and the warm-up goes on; so does a Redis that is down (every
    /// key is then loaded into L1 only).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> tierkit::Result<()> {
    /// let kit = tierkit::Tierkit::embedded();
    /// let events = kit.namespace::<String>("events").build()?;
    /// let keys = (1..=100).map(|i| i.to_string());
    /// let done = events
    ///     .warm(keys, 8, |k| async move { Ok::<_, std::io::Error>(format!("event {k}")) }, |p| {
    ///         if p.done == p.total {
    ///             println!("warmed {} of {}", p.loaded, p.total);
    ///         }
    ///     })
    ///     .await?;
    /// assert_eq!(done.loaded, 100);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a zero `concurrency`. Loader and Redis failures are counted in
    /// the result, not returned.
    pub async fn warm<K, F, Fut, E>(
        &self,
        keys: impl IntoIterator<Item = K>,
        concurrency: usize,
        loader: F,
        progress: impl Fn(WarmProgress),
    ) -> Result<WarmProgress>
    where
        K: Into<String>,
        F: Fn(String) -> Fut,
        Fut: Future<Output = std::result::Result<V, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        use futures_util::StreamExt;

        if concurrency == 0 {
            return Err(Error::invalid("concurrency", "is zero; use 1 or more"));
        }
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        let mut state = WarmProgress {
            total: keys.len(),
            ..WarmProgress::default()
        };
        for batch in keys.chunks(SCAN_COUNT) {
            let present = self.present_in_l2(batch).await;
            let (skip, todo): (Vec<_>, Vec<_>) =
                batch.iter().zip(present).partition(|(_, present)| *present);
            for _ in skip {
                state.skipped += 1;
                state.done += 1;
                progress(state);
            }
            let mut loads = futures_util::stream::iter(todo.into_iter().map(|(key, _)| {
                let load = loader(key.clone());
                async move { (key, load.await) }
            }))
            .buffer_unordered(concurrency);
            while let Some((key, loaded)) = loads.next().await {
                match loaded {
                    Ok(value) => match self.set(key, value).await {
                        Ok(_) => state.loaded += 1,
                        Err(_) => state.failed += 1,
                    },
                    Err(e) => {
                        let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                        tracing::debug!(namespace = %self.ns.name, error = %e,
                            "tierkit: warm-up loader failed");
                        state.failed += 1;
                    }
                }
                state.done += 1;
                progress(state);
            }
        }
        Ok(state)
    }

    /// Which of `keys` Redis holds, in one round trip; all `false` when Redis cannot answer.
    /// Embedded, the L1 is the only tier, so it is asked instead.
    async fn present_in_l2(&self, keys: &[String]) -> Vec<bool> {
        let Some(conn) = self.core.conn.as_ref() else {
            let mut present = Vec::with_capacity(keys.len());
            for key in keys {
                present.push(self.l1.contains_key(&KeyRef {
                    ns: self.ns.id,
                    key,
                }));
            }
            return present;
        };
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("EXISTS").arg(self.redis_key(key));
        }
        match conn.pipeline::<Vec<bool>>(&pipe).await {
            Ok(present) if present.len() == keys.len() => present,
            Ok(_) => vec![false; keys.len()],
            Err(e) => {
                count_l2_failure(&self.ns.counters, &e);
                vec![false; keys.len()]
            }
        }
    }
}
