//! The two-tier cache: typed namespaces over one moka L1 (in-process, bounded in bytes) and a
//! Redis L2 (encoded with [`Codec`](crate::Codec)).
//!
//! Declare a namespace once with [`Tierkit::namespace`](crate::Tierkit::namespace) and keep
//! the typed, cheap-to-clone [`Namespace`] handle.
//!
//! ## Behavior
//!
//! | | Redis up | Redis down or timing out | Redis back |
//! |---|---|---|---|
//! | read | L1, then L2, then the loader | L1, then the loader; no Redis call, no waiting | L2 again |
//! | write | L1 + L2 + backplane publish | L1 only, counted as `l2_skipped` | L2 again |
//! | coherence | other instances evict their L1 copy within milliseconds | none | each instance drops its L1 when its backplane resubscribes |
//!
//! - An L1 hit is one moka lookup and an `Arc` clone: no decoding, no Redis call.
//! - Concurrent `get_or_set` calls on one cold key run one load per process; a loader error
//!   reaches every waiting caller and is not cached.
//! - Nothing on the read path returns a Redis error: a failed or timed-out L2 call counts in
//!   `l2_errors` and the read falls back to the loader.
//! - Stored bytes that no longer decode as the namespace's type (an old schema, another writer)
//!   are a miss, counted in `decode_failures`, and overwritten by the next write.
//!
//! ## Redis keys
//!
//! | key | holds |
//! |---|---|
//! | `{prefix}:c:{namespace}:v{version}:{key}` | an entry |
//! | `{prefix}:c:{namespace}:t{version}:{tag}` | the set of keys written with a tag |
//! | `{prefix}:c:backplane` | the pub/sub channel of the coherence backplane |
//!
//! Every command and script touches one key, so the layout runs unchanged on Redis Cluster.

mod backplane;
mod l1;
mod namespace;
mod pattern;
mod stats;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::{oneshot, watch};

pub use namespace::{Hit, Namespace, NamespaceBuilder, Reach, SetOptions, Source, WarmProgress};
pub use stats::CacheStats;

pub(crate) use namespace::NsShared;

use crate::codec::Codec;
use crate::config::Config;
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::keys::Keys;
use backplane::{Message, Op};
use l1::L1;

/// Every namespace declared in one process, by name and by id.
#[derive(Default)]
struct Registry {
    by_name: HashMap<String, Arc<NsShared>>,
    by_id: Vec<Arc<NsShared>>,
}

/// What one [`Tierkit`](crate::Tierkit) shares between its namespaces: the L1, the L2 (the
/// Redis connection, when there is one), the codec, the key schema and the backplane.
pub(crate) struct CacheCore {
    pub(crate) l1: L1,
    pub(crate) conn: Option<Conn>,
    pub(crate) codec: Codec,
    pub(crate) keys: Keys,
    pub(crate) channel: String,
    /// Tags this instance's backplane messages so it skips its own.
    pub(crate) origin: u64,
    /// Whether the backplane is subscribed (always false in embedded mode).
    pub(crate) coherent: watch::Sender<bool>,
    registry: Arc<RwLock<Registry>>,
    _stop_backplane: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for CacheCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheCore")
            .field("l1_entries", &self.l1.entry_count())
            .field("coherent", &*self.coherent.borrow())
            .finish_non_exhaustive()
    }
}

/// A snapshot of the whole cache: per-namespace and total counters, L1 size, and Redis figures
/// when Redis answered.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let kit = tierkit::Tierkit::embedded();
/// let info = kit.cache_info().await;
/// assert_eq!(info.total.l1_hits, 0);
/// assert_eq!(info.redis_keys, None);
/// # }
/// ```
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CacheInfo {
    /// Counters per namespace, by name.
    pub namespaces: Vec<(String, CacheStats)>,
    /// All namespaces added up.
    pub total: CacheStats,
    /// Entries in the L1.
    pub l1_entries: u64,
    /// Weight of the L1 in bytes (encoded values plus keys).
    pub l1_bytes: u64,
    /// Whether the backplane is subscribed, so other instances' writes evict this L1.
    pub coherent: bool,
    /// Keys in the Redis database (`DBSIZE`), when Redis answered.
    pub redis_keys: Option<u64>,
    /// Memory Redis uses (`INFO memory`, `used_memory`) in bytes, when Redis answered.
    pub redis_used_memory: Option<u64>,
}

impl CacheCore {
    pub(crate) fn new(config: &Config, conn: Option<Conn>) -> Arc<Self> {
        let registry = Arc::new(RwLock::new(Registry::default()));
        let evictions = Arc::downgrade(&registry);
        let on_evict = config.l1_eviction_counts.then_some(move |ns| {
            if let Some(reg) = evictions.upgrade() {
                if let Some(shared) = read(&reg).by_id.get(ns as usize) {
                    stats::bump(&shared.counters.evictions);
                }
            }
        });
        let l1 = l1::build(config.l1_capacity, on_evict);
        let channel = config.keys.backplane_channel();
        let subscription = conn.as_ref().map(|c| c.subscribe(channel.clone()));
        let (stop, stop_rx) = match subscription {
            Some(_) => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let core = Arc::new(CacheCore {
            l1,
            conn,
            codec: config.codec.clone(),
            keys: config.keys.clone(),
            channel,
            origin: fastrand::u64(..),
            coherent: watch::Sender::new(false),
            registry,
            _stop_backplane: stop,
        });
        if let (Some(subscription), Some(stop_rx)) = (subscription, stop_rx) {
            tokio::spawn(backplane::listen(
                Arc::downgrade(&core),
                subscription,
                stop_rx,
            ));
        }
        core
    }

    /// Returns once the backplane is subscribed (never, embedded).
    pub(crate) async fn wait_coherent(&self) {
        let mut coherent = self.coherent.subscribe();
        // Err only when the core is gone, which cannot happen while `self` lives.
        let _ = coherent.wait_for(|c| *c).await;
    }

    /// Registers a namespace, or returns the one already declared under that name when it has
    /// the same type and settings.
    pub(crate) fn register(&self, candidate: NsShared) -> Result<Arc<NsShared>> {
        let mut reg = self.registry.write().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = reg.by_name.get(&candidate.name) {
            return if existing.same_declaration(&candidate) {
                Ok(existing.clone())
            } else {
                Err(Error::config(
                    "namespace",
                    format!(
                        "{:?} is already declared with another type or other settings; \
                         declare it once and clone the handle",
                        candidate.name
                    ),
                ))
            };
        }
        let id = u32::try_from(reg.by_id.len())
            .map_err(|_| Error::config("namespace", "too many namespaces"))?;
        let mut candidate = candidate;
        candidate.id = id;
        let shared = Arc::new(candidate);
        reg.by_name.insert(shared.name.clone(), shared.clone());
        reg.by_id.push(shared.clone());
        Ok(shared)
    }

    pub(crate) fn namespaces(&self) -> Vec<Arc<NsShared>> {
        read(&self.registry).by_id.clone()
    }

    fn by_name(&self, name: &str) -> Option<Arc<NsShared>> {
        read(&self.registry).by_name.get(name).cloned()
    }

    /// Stops serving every L1 entry of every namespace, at once and without a clean-up pass.
    pub(crate) fn forget_all(&self) {
        for ns in read(&self.registry).by_id.iter() {
            ns.forget_l1();
        }
    }

    /// Evicts the L1 entries an operation touched, here or (from the backplane) elsewhere.
    pub(crate) async fn apply(&self, ns: &NsShared, op: &Op) {
        let id = ns.id;
        // Bump before evicting: a read racing this sees either the bump or the eviction.
        match op {
            Op::Keys { keys, .. } => {
                for key in keys {
                    ns.bump_key(key);
                    self.l1.invalidate(&l1::KeyRef { ns: id, key }).await;
                }
            }
            Op::Tag { tag, keys, .. } => {
                ns.bump_all();
                for key in keys {
                    self.l1.invalidate(&l1::KeyRef { ns: id, key }).await;
                }
                let tag = tag.clone();
                self.evict_if(move |k, v| k.ns == id && v.has_tag(&tag));
            }
            Op::Pattern { pattern, .. } => {
                ns.bump_all();
                match pattern::Pattern::parse(pattern) {
                    Ok(p) => self.evict_if(move |k, _| k.ns == id && p.matches(&k.key)),
                    // A pattern no instance could have sent; drop the namespace to be safe.
                    Err(_) => self.evict_if(move |k, _| k.ns == id),
                }
            }
            Op::Clear { .. } => {
                ns.bump_all();
                self.evict_if(move |k, _| k.ns == id);
            }
        }
    }

    fn evict_if(&self, pred: impl Fn(&l1::L1Key, &l1::L1Value) -> bool + Send + Sync + 'static) {
        if let Err(e) = self.l1.invalidate_entries_if(pred) {
            // Cannot happen: the L1 is built with support_invalidation_closures. Dropping all of
            // L1 keeps the promise that invalidated entries are never served.
            tracing::error!(error = %e, "tierkit: L1 predicate invalidation failed; dropping L1");
            self.l1.invalidate_all();
        }
    }

    async fn on_message(&self, payload: &[u8]) {
        let msg: Message = match crate::Codec::new().decode(payload) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::debug!(error = %e, "tierkit: ignoring an unreadable backplane message");
                return;
            }
        };
        if msg.origin == self.origin {
            return;
        }
        let name = match &msg.op {
            Op::Keys { ns, .. }
            | Op::Tag { ns, .. }
            | Op::Pattern { ns, .. }
            | Op::Clear { ns } => ns,
        };
        if let Some(ns) = self.by_name(name) {
            self.apply(&ns, &msg.op).await;
        }
    }

    pub(crate) fn message(&self, op: Op) -> Vec<u8> {
        // A message of strings always encodes; an empty payload is ignored by receivers.
        crate::Codec::new()
            .encode(&Message {
                origin: self.origin,
                op,
            })
            .unwrap_or_default()
    }

    /// The whole cache's figures; with `redis`, also the server's key count and memory.
    pub(crate) async fn info(&self, redis: bool) -> CacheInfo {
        // Evictions and expiries are applied lazily; settle them so the figures are exact.
        self.l1.run_pending_tasks().await;
        let namespaces: Vec<(String, CacheStats)> = self
            .namespaces()
            .iter()
            .map(|ns| (ns.name.clone(), ns.counters.snapshot()))
            .collect();
        let total = namespaces
            .iter()
            .fold(CacheStats::default(), |acc, (_, s)| acc + *s);
        let server = match (&self.conn, redis) {
            (Some(conn), true) => conn.server_figures().await,
            _ => Default::default(),
        };
        CacheInfo {
            namespaces,
            total,
            l1_entries: self.l1.entry_count(),
            l1_bytes: self.l1.weighted_size(),
            coherent: *self.coherent.borrow(),
            redis_keys: server.keys,
            redis_used_memory: server.used_memory,
        }
    }

    /// Publishes the counters to the `metrics` recorder.
    #[cfg(feature = "metrics")]
    pub(crate) async fn publish_metrics(&self) {
        let info = self.info(false).await;
        let figures: Vec<crate::metrics::NamespaceFigures<'_>> = info
            .namespaces
            .iter()
            .map(|(name, s)| crate::metrics::NamespaceFigures {
                name,
                l1_hits: s.l1_hits,
                l2_hits: s.l2_hits,
                misses: s.misses,
                loader_calls: s.loader_calls,
                loader_errors: s.loader_errors,
                l2_errors: s.l2_errors,
                l2_skipped: s.l2_skipped,
                decode_failures: s.decode_failures,
                evictions: s.evictions,
                bytes_saved: s.bytes_saved(),
            })
            .collect();
        crate::metrics::publish_cache(&figures, info.l1_entries, info.l1_bytes);
    }
}

fn read(reg: &RwLock<Registry>) -> std::sync::RwLockReadGuard<'_, Registry> {
    reg.read().unwrap_or_else(|p| p.into_inner())
}
