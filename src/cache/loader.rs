//! The value initializer: `get_or_set`, where an L1 miss becomes one load per key per process
//! ([`flight`](super::flight)), or per key across instances with
//! [`single_flight`](super::NamespaceBuilder::single_flight). A load asks L2, then the loader;
//! a loaded value enters L1 at once and Redis after the waiters are released, and only if the
//! key still holds what the load's read saw there: a load never replaces a write or an
//! invalidation that landed while it ran, on any instance.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::flight::{self, Seat};
use super::frame::{self, Kind};
use super::l2::{count_failure, Entry, EpochOf, EpochUse, Expect};
use super::lease::Waited;
use super::namespace::{Hit, Namespace, Source};
use super::read::L2Read;
use super::stamp::Stamp;
use super::stats::bump;
use crate::error::{Error, Result};

/// A Redis fill a load decided on, done after the waiters of the load are released, and the
/// lease to give back after it.
type Pending = Option<(Fill, Option<u64>)>;

/// A Redis fill.
struct Fill {
    frame: Vec<u8>,
    ttl: Duration,
    /// What the key must still hold for the fill to land: what the load's read saw.
    expect: Expect,
}

/// What a read before a load leaves to the load: what a fill must find, and the namespace
/// epoch to frame it under. `None` when Redis is not to be filled.
pub(super) type FillBasis = Option<(Expect, u64)>;

impl<V> Namespace<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Reads `key` through both tiers and, when neither has it, runs `loader` and writes its
    /// value to both (cache-aside).
    ///
    /// Concurrent calls for one missing key run one load per process (per every instance with
    /// [`single_flight`](super::NamespaceBuilder::single_flight)): the others wait for it and
    /// share its value, or its error.
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
        if let Some(hit) = self.l1_hit(key) {
            return Ok(hit);
        }
        let mut loader = Some(loader);
        loop {
            let lead = match self.ns.flights.join(key) {
                Seat::Lead(lead) => lead,
                Seat::Wait(wait) => match flight::outcome(wait).await {
                    Some(outcome) => return self.shared(outcome),
                    // The leader's call was dropped: lead (or wait for) the next load.
                    None => continue,
                },
            };
            // A load that finished while this call queued for the lead left its value in L1.
            if let Some(hit) = self.l1_hit(key) {
                lead.finish(Ok((hit.value.clone(), hit.source)));
                return Ok(hit);
            }
            let Some(loader) = loader.take() else {
                return Err(Error::Internal("a load led twice by one call"));
            };
            let stamp = self.ns.fresh.stamp(key);
            let (loaded, fill) = match self.load(key, loader, stamp).await {
                Ok(done) => done,
                Err(e) => {
                    let e = Arc::new(e);
                    lead.finish(Err(e.clone()));
                    return Err(Error::from_shared(e));
                }
            };
            if self.ns.fresh.changed_since(key, stamp) {
                // A change landed during the load: its value may be older than what a waiter
                // that joined late has already seen, so the waiters read again instead.
                drop(lead);
            } else {
                lead.finish(Ok((loaded.value.clone(), loaded.source)));
            }
            if let Some((fill, lease)) = fill {
                // After the waiters are released: they need not wait for Redis to take it.
                self.fill_l2(key, fill).await;
                self.end_lease(key, lease).await;
            }
            return Ok(loaded);
        }
    }

    /// A waiter's share of a load: the value as an L1 hit, or the load's error.
    fn shared(&self, outcome: flight::Outcome) -> Result<Hit<V>> {
        let (value, _) = outcome.map_err(Error::from_shared)?;
        let value = Arc::downcast::<V>(value)
            .map_err(|_| Error::Internal("a load of this namespace gave another type"))?;
        bump(&self.ns.counters.l1_hits);
        Ok(Hit {
            value,
            source: Source::L1,
        })
    }

    /// The lead's load: L2, then (after waiting for another instance's load, with a lease)
    /// the loader. Returns the value, in L1 unless a change raced it, and the fill to do.
    async fn load<F, Fut, E>(&self, key: &str, loader: F, stamp: Stamp) -> Result<(Hit<V>, Pending)>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<V, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let counters = &self.ns.counters;
        let mut basis = match self.l2_read(key).await {
            L2Read::Hit(found) => return Ok((self.keep_found(key, found, stamp), None)),
            L2Read::Miss { expect, epoch } => self.fill_basis(expect, epoch).await,
            L2Read::Unreachable => None,
        };
        let mut lease = None;
        if let (Some(_), Some(ttl)) = (&basis, self.ns.lease) {
            match self.await_other_load(key, ttl, stamp, basis).await {
                Waited::Loaded(hit) => return Ok((hit, None)),
                Waited::Lead { token, basis: b } => {
                    lease = token;
                    basis = b;
                }
            }
        }
        bump(&counters.misses);
        bump(&counters.loader_calls);
        let started = Instant::now();
        let span = tracing::debug_span!("tierkit.loader", namespace = %self.ns.name);
        let loaded = tracing::Instrument::instrument(loader(), span).await;
        crate::metrics::loader(&self.ns.name, started.elapsed());
        let loaded = loaded.map_err(|e| {
            bump(&counters.loader_errors);
            Error::Loader(Arc::from(e.into()))
        });
        let value = match loaded {
            Ok(value) => value,
            Err(e) => {
                self.end_lease(key, lease).await;
                return Err(e);
            }
        };
        let (bytes, weight) = match self.encode(key, &value) {
            Ok(encoded) => encoded,
            Err(e) => {
                self.end_lease(key, lease).await;
                return Err(e);
            }
        };
        let ttl = self.jittered(self.ns.ttl);
        let value = Arc::new(value);
        // As new as what the read before the load found, and no newer: a copy L1 took from
        // Redis meanwhile reflects a write that landed after that read, and wins.
        let version = match &basis {
            Some((Expect::Version(v), _)) => *v,
            _ => 0,
        };
        let entry = self.l1_value(value.clone(), weight, ttl, None, version);
        let hit = self.keep_l1(key, value, entry, stamp, Source::Loader);
        let fill = match (bytes, basis) {
            // A change raced the load: what it loaded may be stale already.
            _ if self.ns.fresh.changed_since(key, stamp) => None,
            (Some(bytes), Some((expect, epoch))) => Some(Fill {
                frame: frame::encode(Kind::Value, epoch, &[], &bytes),
                ttl,
                expect,
            }),
            // The read failed: a write now would most likely wait out another timeout.
            (Some(_), None) => {
                bump(&counters.l2_skipped);
                None
            }
            // No L2 that stores values: nothing to write.
            (None, _) => None,
        };
        if fill.is_none() {
            self.end_lease(key, lease).await;
            return Ok((hit, None));
        }
        // A lease is given back after the fill, so the waiters find the value, not a free lease.
        Ok((hit, fill.map(|f| (f, lease))))
    }

    /// What a fill after a load must find and frame under, from the read before the load. The
    /// namespace's epoch is made now when absent, before the loader runs: a clear during the
    /// load then still invalidates the fill.
    pub(super) async fn fill_basis(&self, expect: Expect, epoch: Option<u64>) -> FillBasis {
        if !self.stores_values() {
            return None;
        }
        if let Some(epoch) = epoch {
            return Some((expect, epoch));
        }
        let made = async {
            let wanted = [EpochUse {
                of: EpochOf::Namespace,
                epoch: 0,
                ttl: Duration::ZERO,
            }];
            let asked = self.ns.epochs.asking();
            let made = self.l2()?.make_epochs(&self.ns.keyspace, &wanted).await?;
            let epoch = made.first().copied();
            self.ns.epochs.learn(asked, EpochOf::Namespace, epoch);
            epoch.ok_or(Error::Internal("no epoch made"))
        }
        .await;
        match made {
            Ok(epoch) => Some((expect, epoch)),
            Err(e) => {
                count_failure(&self.ns.counters, &e);
                None
            }
        }
    }

    async fn fill_l2(&self, key: &str, fill: Fill) {
        let entry = [Entry {
            key,
            frame: &fill.frame,
            ttl: fill.ttl,
            expect: Some(&fill.expect),
        }];
        let filled = async { self.l2()?.write(&self.ns.keyspace, &entry, &[], None).await }.await;
        match filled {
            Ok(written) if written.landed.first() == Some(&false) => {
                tracing::debug!(namespace = %self.ns.name,
                    "tierkit: a change landed while loading; the loaded value stays out of Redis");
            }
            Ok(_) => {}
            Err(e) => count_failure(&self.ns.counters, &e),
        }
    }
}
