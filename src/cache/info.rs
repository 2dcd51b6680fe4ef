//! The cache's figures: counters per namespace and in total, the L1's size, the backplane's
//! state and, when asked, the server's; and their publication as metrics.

use super::base::CacheCore;
use super::stats::CacheStats;

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
    /// The whole cache's figures; with `redis`, also the server's key count and memory.
    pub(crate) async fn info(&self, redis: bool) -> CacheInfo {
        // Evictions and expiries are applied lazily; settle them so the figures are exact.
        self.l1.run_pending_tasks();
        let namespaces: Vec<(String, CacheStats)> = self
            .namespaces()
            .iter()
            .map(|ns| (ns.name.clone(), ns.counters.snapshot()))
            .collect();
        let total = namespaces
            .iter()
            .fold(CacheStats::default(), |acc, (_, s)| acc + *s);
        let server = if redis {
            self.l2.figures().await
        } else {
            Default::default()
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
                stale_served: s.stale_served,
                negative_hits: s.negative_hits,
                loader_timeouts: s.loader_timeouts,
                background_loads: s.background_loads,
            })
            .collect();
        crate::metrics::publish_cache(&figures, info.l1_entries, info.l1_bytes);
    }
}
