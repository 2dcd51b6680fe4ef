//! The value initializer: `get_or_set`, where an L1 miss becomes one load per key per process
//! (moka's entry API coalesces the callers), the load asks L2 and then the loader, and a loaded
//! value is written to L2 only after the waiters are released, and only if no change raced it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::l1::{L1Key, L1Value};
use super::l2::count_failure;
use super::namespace::{Hit, Namespace, Source};
use super::read::L2Read;
use super::stats::bump;
use crate::error::{Error, Result};

/// A Redis write a load decided on, done after the waiters of the load are released.
struct PendingWrite {
    bytes: Vec<u8>,
    ttl: Duration,
    /// Overwrite undecodable bytes; otherwise only fill an absent key, so a load never
    /// overwrites a value another instance wrote meanwhile.
    overwrite: bool,
}

impl<V> Namespace<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
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
        let stamp = self.ns.fresh.stamp(key);
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
        if self.ns.fresh.changed_since(key, stamp) {
            // A write or invalidation landed while this value was loading: hand it to the
            // caller, but keep what may already be stale in neither tier.
            self.drop_l1(key).await;
        } else if let Some(write) = pending {
            // After the waiters are released: they need not wait for Redis to take the value.
            self.fill_l2(key, write).await;
        }
        Ok(Hit { value, source })
    }

    /// The single-flight load: L2, then the loader. Decides the L2 write, if any, into
    /// `pending`.
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
        let overwrite = match self.l2_read(key).await {
            L2Read::Hit(value, weight, ttl) => {
                *source = Source::L2;
                return Ok(self.l1_value(Arc::new(value), weight, ttl, None));
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
            // No L2 that stores values: nothing to write.
            (None, _) => {}
        }
        Ok(self.l1_value(Arc::new(value), weight, ttl, None))
    }

    async fn fill_l2(&self, key: &str, write: PendingWrite) {
        let filled = async {
            self.l2()?
                .fill(
                    &self.ns.keyspace,
                    key,
                    write.bytes,
                    write.ttl,
                    write.overwrite,
                )
                .await
        }
        .await;
        if let Err(e) = filled {
            count_failure(&self.ns.counters, &e);
        }
    }
}
