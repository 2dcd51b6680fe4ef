//! The handle: a [`Limiter`] checks the arguments, answers blocked keys from memory, asks the
//! tier the picker chooses, and counts the decision.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;

use super::block::Blocks;
use super::decider::{Control, Decider, Picker};
use super::local::LocalSet;
use super::shared::Shared;
use super::watch::{LimiterReport, Watch};
use super::{Algorithm, Decision, Quota, Tier};
use crate::error::{Error, Result};
use crate::metrics;

/// A rate limiter. Cheap to clone.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> tierkit::Result<()> {
/// use std::time::Duration;
/// use tierkit::ratelimit::Quota;
///
/// let kit = tierkit::Tierkit::embedded();
/// let login = kit
///     .limiter("login", Quota::new(5, Duration::from_secs(15 * 60))?)
///     .instances(3)
///     .block_for(Duration::from_secs(60))
///     .build()?;
/// let d = login.check("ip:203.0.113.7").await;
/// assert!(d.allowed);
/// assert_eq!(d.remaining, 4);
/// // A weighted request takes several units at once.
/// assert!(login.check_n("ip:203.0.113.7", 3).await?.allowed);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Limiter(Arc<Inner>);

struct Inner {
    name: String,
    quota: Quota,
    algorithm: Algorithm,
    picker: Picker<Shared, LocalSet>,
    blocks: Option<Blocks>,
    watch: Arc<Watch>,
    metrics: metrics::Decisions,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("name", &self.0.name)
            .field("quota", &self.0.quota)
            .field("algorithm", &self.0.algorithm)
            .field("local_share", &self.local_share())
            .finish_non_exhaustive()
    }
}

impl Limiter {
    pub(super) fn new(
        name: String,
        quota: Quota,
        algorithm: Algorithm,
        picker: Picker<Shared, LocalSet>,
        blocks: Option<Blocks>,
        watch: Arc<Watch>,
    ) -> Self {
        Limiter(Arc::new(Inner {
            metrics: metrics::Decisions::new(&name),
            name,
            quota,
            algorithm,
            picker,
            blocks,
            watch,
        }))
    }

    /// What this limiter saw of Redis: takeovers by the local tier, decisions made without
    /// Redis, errors that were not outages (also in
    /// [`Tierkit::health_report`](crate::Tierkit::health_report)).
    pub fn report(&self) -> LimiterReport {
        self.0.watch.report()
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The quota.
    pub fn quota(&self) -> Quota {
        self.0.quota
    }

    /// The share of the quota the local tier enforces while Redis is down.
    pub fn local_share(&self) -> u32 {
        self.0.picker.local().share()
    }

    /// States the local tier holds now: keys with a state of their own plus shared buckets
    /// (see [`LimiterBuilder::local_max_keys`](super::LimiterBuilder::local_max_keys)).
    pub fn local_keys(&self) -> usize {
        self.0.picker.local().len()
    }

    /// Approximate bytes the local tier's states take.
    pub fn local_bytes(&self) -> usize {
        self.0.picker.local().bytes()
    }

    /// The tier that decides now: `Redis` when health allows it, else `Local`.
    pub fn tier(&self) -> Tier {
        self.0.picker.tier()
    }

    /// How far the application clock is ahead of the Redis clock (negative: behind), in
    /// milliseconds, as of the last decision Redis made; `None` before one.
    pub fn clock_drift_ms(&self) -> Option<i64> {
        self.0.picker.redis().and_then(Shared::drift_ms)
    }

    /// Decides one request for `key`.
    //
    // `decide`'s own future, not an `async fn` around it: one layer less to copy the decision
    // through on the local path, which is benchmarked at tens of nanoseconds.
    pub fn check<'a>(&'a self, key: &'a str) -> impl Future<Output = Decision> + Send + 'a {
        self.decide(key, NonZeroU32::MIN)
    }

    /// Decides a request of `n` units for `key`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `n` is zero or above the limit (it could never be allowed).
    pub async fn check_n(&self, key: &str, n: u32) -> Result<Decision> {
        let units = NonZeroU32::new(n)
            .filter(|n| n.get() <= self.0.quota.limit())
            .ok_or_else(|| {
                Error::invalid(
                    "n",
                    format!("{n} units is outside 1 ..= limit {}", self.0.quota.limit()),
                )
            })?;
        Ok(self.decide(key, units).await)
    }

    /// What `key` has left, spending nothing: `allowed` says whether one more unit would be
    /// allowed now, `remaining` how many. Decided where a check would be (Redis, else the local
    /// tier, marked [`degraded`](Decision::degraded)).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> tierkit::Result<()> {
    /// use std::time::Duration;
    /// use tierkit::ratelimit::Quota;
    ///
    /// let kit = tierkit::Tierkit::embedded();
    /// let login = kit.limiter("login", Quota::new(5, Duration::from_secs(900))?).build()?;
    /// login.check_n("ip:203.0.113.7", 4).await?;
    /// assert_eq!(login.peek("ip:203.0.113.7").await.remaining, 1);
    /// assert_eq!(login.peek("ip:203.0.113.7").await.remaining, 1); // peeking spends nothing
    /// login.refund("ip:203.0.113.7", 2).await?;
    /// assert_eq!(login.peek("ip:203.0.113.7").await.remaining, 3);
    /// login.reset("ip:203.0.113.7").await?; // e.g. after a successful login
    /// assert_eq!(login.peek("ip:203.0.113.7").await.remaining, 5);
    /// # Ok(()) }
    /// ```
    pub async fn peek(&self, key: &str) -> Decision {
        let inner = &self.0;
        if let Some(left) = inner.blocks.as_ref().and_then(|b| b.left(key)) {
            return Decision::blocked(inner.quota.limit(), left);
        }
        // A peek always gets an answer: the picker falls back as for a check.
        match inner.picker.control(key, Control::Peek).await {
            Ok(decision) => decision,
            Err(_) => Decision::refused_by_policy(inner.quota),
        }
    }

    /// Gives back up to `n` units `key` spent in the current window (a request that turned out
    /// not to count). In the local tier only a key with a state of its own gets them back.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for zero units; [`Error::Unavailable`] or the Redis error when
    /// Redis decides and cannot take it (the local tier has it anyway).
    pub async fn refund(&self, key: &str, n: u32) -> Result<Decision> {
        let n = NonZeroU32::new(n).ok_or_else(|| Error::invalid("n", "is zero"))?;
        self.0.picker.control(key, Control::Refund(n)).await
    }

    /// Forgets everything `key` spent, and ends its block (e.g. after a successful login).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] or the Redis error when Redis decides and cannot take it (the
    /// local tier and the block list have it anyway).
    pub async fn reset(&self, key: &str) -> Result<()> {
        if let Some(blocks) = &self.0.blocks {
            blocks.unblock(key);
        }
        self.0.picker.control(key, Control::Reset).await.map(drop)
    }

    // Blocks, the tier and the count in one async fn: each async layer on the local path moves
    // the decision once more, and a local decision is benchmarked at tens of nanoseconds.
    async fn decide(&self, key: &str, n: NonZeroU32) -> Decision {
        let inner = &self.0;
        let decision = match inner.blocks.as_ref().and_then(|b| b.left(key)) {
            Some(left) => Decision::blocked(inner.quota.limit(), left),
            None => {
                let Ok(decision) = inner.picker.decide(key, n).await;
                // A refusal of the error policy says nothing of the key: no block for it.
                if !decision.allowed && decision.tier != Tier::Policy {
                    if let Some(blocks) = &inner.blocks {
                        blocks.block(key);
                    }
                }
                decision
            }
        };
        let decider = match decision.tier {
            Tier::Redis => metrics::Decider::Redis,
            Tier::Local => metrics::Decider::Local,
            Tier::Blocked => metrics::Decider::Blocked,
            Tier::Policy => metrics::Decider::Policy,
        };
        inner.metrics.record(decider, decision.allowed);
        decision
    }
}
