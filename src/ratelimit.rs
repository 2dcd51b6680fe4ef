//! Distributed rate limiting: a sliding window evaluated inside Redis, with a local governor
//! limiter that takes over whenever Redis is down or fails.
//!
//! Build a [`Limiter`] with [`Tierkit::limiter`](crate::Tierkit::limiter) from a name (which
//! namespaces its keys) and a [`Quota`], then decide per key (a user id, or a client IP) with
//! [`Limiter::check`].
//!
//! ## Behavior
//!
//! | Redis | who decides | with what |
//! |---|---|---|
//! | up | Redis, one Lua script, one key, one round trip | the whole quota, shared by every instance, timed by the server clock |
//! | down, or a call fails or times out | this instance's governor | `limit / instances` (at least 1), never allow-all unless [`LimiterBuilder::fail_open`] |
//! | back up | Redis again | |
//! | embedded (no Redis) | the governor | the whole quota (GCRA: burst of `limit`, refilled over the window) |
//!
//! While Redis is down the governor never lets more than the local share through in any
//! window: it allows a burst of half the share and refills the other half over two windows,
//! so a client hammering one instance gets half its share per window until Redis is back.
//!
//! - No error reaches the caller because of Redis, and no decision waits longer than the op
//!   timeout (while health is `Down`, not at all).
//! - [`Algorithm::SlidingLog`] is exact: it never allows more than `limit` in any window and
//!   never refuses a request that fits. It records admitted requests only, so a key holds at
//!   most `limit` entries.
//! - [`Algorithm::SlidingCounter`] keeps two counters per key (O(1) memory). It never allows
//!   more than `limit` in any fixed window aligned to the window length, nor more than
//!   `2 × limit` in any sliding window; it may refuse a little early.
//! - With [`LimiterBuilder::block_for`], a refused key is refused from process memory, with no
//!   Redis call, until the block ends.
//! - The local tier hashes keys into a bounded number of buckets
//!   ([`LimiterBuilder::local_max_keys`]) and drops idle ones, so a flood of distinct keys
//!   cannot grow memory without bound.
//!
//! ## Redis keys
//!
//! `{prefix}:rl:{limiter}:{key}`: a sorted set (log) or a hash (counter), expiring on its own
//! once idle for a window (two for the counter).

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod layer;
mod local;
mod scripts;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::config::SharedClock;
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::keys::Keys;
use local::Local;

/// A limit per window.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tierkit::ratelimit::Quota;
///
/// let quota = Quota::new(100, Duration::from_secs(15 * 60))?;
/// assert_eq!(quota.limit(), 100);
/// assert!(Quota::new(0, Duration::from_secs(1)).is_err());
/// assert!(Quota::new(10, Duration::ZERO).is_err());
/// # Ok::<(), tierkit::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    limit: u32,
    window: Duration,
}

impl Quota {
    /// `limit` requests (units) per sliding `window`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a zero limit, or a window under 1 ms or over 30 days.
    pub fn new(limit: u32, window: Duration) -> Result<Quota> {
        if limit == 0 {
            return Err(Error::config(
                "quota.limit",
                "is zero; allow at least 1 per window",
            ));
        }
        if window < Duration::from_millis(1) || window > Duration::from_secs(30 * 86_400) {
            return Err(Error::config(
                "quota.window",
                format!("{window:?} is outside 1 ms ..= 30 days"),
            ));
        }
        Ok(Quota { limit, window })
    }

    /// The limit per window.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }
}

/// How Redis counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum Algorithm {
    /// Exact sliding-window log: memory per key up to `limit` entries.
    #[default]
    SlidingLog,
    /// Sliding-window counter: two counters per key, for large limits; see the module docs
    /// for its bound.
    SlidingCounter,
}

impl Algorithm {
    /// The Lua source Redis runs for this algorithm (one key; `ARGV`: window in µs, limit,
    /// units, and for the log a nonce), for review or to run it by hand.
    pub fn lua(self) -> &'static str {
        match self {
            Algorithm::SlidingLog => scripts::LOG_LUA,
            Algorithm::SlidingCounter => scripts::COUNTER_LUA,
        }
    }
}

/// Which tier made a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Tier {
    /// The sliding window in Redis.
    Redis,
    /// This instance's governor (Redis down or failing, or embedded mode).
    Local,
    /// The key is blocked in process memory after exceeding its limit.
    Blocked,
}

/// The answer for one request.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> tierkit::Result<()> {
/// use std::time::Duration;
/// use tierkit::ratelimit::{Quota, Tier};
///
/// let kit = tierkit::Tierkit::embedded();
/// let api = kit.limiter("api", Quota::new(2, Duration::from_secs(60))?).build()?;
/// assert!(api.check("user:1").await.allowed);
/// assert!(api.check("user:1").await.allowed);
/// let third = api.check("user:1").await;
/// assert!(!third.allowed);
/// assert_eq!(third.tier, Tier::Local); // embedded: the governor decides
/// assert!(third.retry_after.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the request may go ahead.
    pub allowed: bool,
    /// The quota's limit.
    pub limit: u32,
    /// Units left in the current window after this decision.
    pub remaining: u32,
    /// Time until the whole quota is available again.
    pub reset_after: Duration,
    /// When refused: time until a request of the same size could be allowed.
    pub retry_after: Option<Duration>,
    /// Who decided.
    pub tier: Tier,
    /// The Redis server clock when Redis decided.
    pub decided_at: Option<SystemTime>,
}

type AppClock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Declares a limiter; get one from [`Tierkit::limiter`](crate::Tierkit::limiter).
#[must_use = "a builder does nothing until build() is called"]
pub struct LimiterBuilder {
    conn: Option<Conn>,
    keys: Keys,
    clock: SharedClock,
    name: String,
    quota: Quota,
    algorithm: Algorithm,
    instances: u32,
    fail_open: bool,
    block_for: Option<Duration>,
    local_max_keys: u64,
    app_clock: AppClock,
}

impl std::fmt::Debug for LimiterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimiterBuilder")
            .field("name", &self.name)
            .field("quota", &self.quota)
            .field("algorithm", &self.algorithm)
            .field("instances", &self.instances)
            .field("fail_open", &self.fail_open)
            .field("block_for", &self.block_for)
            .field("local_max_keys", &self.local_max_keys)
            .finish_non_exhaustive()
    }
}

impl LimiterBuilder {
    pub(crate) fn new(
        conn: Option<Conn>,
        keys: Keys,
        clock: SharedClock,
        name: String,
        quota: Quota,
    ) -> Self {
        LimiterBuilder {
            conn,
            keys,
            clock,
            name,
            quota,
            algorithm: Algorithm::default(),
            instances: 1,
            fail_open: false,
            block_for: None,
            local_max_keys: 100_000,
            app_clock: Arc::new(SystemTime::now),
        }
    }

    /// How Redis counts. Default: [`Algorithm::SlidingLog`].
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// How many instances share the quota; while Redis is down each allows
    /// `limit / instances` (at least 1). Default: 1.
    pub fn instances(mut self, n: u32) -> Self {
        self.instances = n;
        self
    }

    /// While Redis is down, allow everything instead of enforcing the local share. Default:
    /// false.
    pub fn fail_open(mut self, yes: bool) -> Self {
        self.fail_open = yes;
        self
    }

    /// Refuse a key that exceeded its limit for this long, from process memory without asking
    /// Redis. Default: no blocking.
    pub fn block_for(mut self, duration: Duration) -> Self {
        self.block_for = Some(duration);
        self
    }

    /// Buckets of the local tier's key space (its memory bound). Default: 100 000.
    pub fn local_max_keys(mut self, n: u64) -> Self {
        self.local_max_keys = n;
        self
    }

    /// The application clock, used only to report drift against the Redis clock (decisions
    /// never use it). Default: `SystemTime::now`.
    pub fn app_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.app_clock = Arc::new(clock);
        self
    }

    /// Validates and builds the limiter.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a name outside `A-Z a-z 0-9 _ - .` (1-64 characters), zero
    /// instances, a zero block duration, or zero local keys.
    pub fn build(self) -> Result<Limiter> {
        crate::keys::validate_name("limiter", &self.name)?;
        let instances = NonZeroU32::new(self.instances)
            .ok_or_else(|| Error::config("instances", "is zero; give the expected count"))?;
        if self.block_for.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(
                "block_for",
                "is zero; omit it for no blocking",
            ));
        }
        if self.local_max_keys == 0 {
            return Err(Error::config("local_max_keys", "is zero; use 1 or more"));
        }
        let quota = self.quota;
        // Embedded mode has no one to share with: the whole quota.
        let divisor = if self.conn.is_none() {
            1
        } else {
            instances.get()
        };
        let share = NonZeroU32::new(quota.limit / divisor).unwrap_or(NonZeroU32::MIN);
        let blocks = self.block_for.map(|ttl| {
            moka::sync::Cache::builder()
                .max_capacity(self.local_max_keys)
                .time_to_live(ttl)
                .build()
        });
        Ok(Limiter(Arc::new(Inner {
            key_prefix: self.keys.limiter(&self.name),
            local: Local::new(
                share,
                quota.window,
                self.local_max_keys,
                self.conn.is_some(),
            ),
            metrics: crate::metrics::Decisions::new(&self.name),
            conn: self.conn,
            clock: self.clock,
            name: self.name,
            quota,
            algorithm: self.algorithm,
            fail_open: self.fail_open,
            blocks,
            app_clock: self.app_clock,
            drift_ms: AtomicI64::new(i64::MIN),
        })))
    }
}

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
    conn: Option<Conn>,
    /// Held for the local tier's time decisions.
    #[allow(dead_code)]
    clock: SharedClock,
    name: String,
    key_prefix: String,
    quota: Quota,
    algorithm: Algorithm,
    fail_open: bool,
    local: Local,
    blocks: Option<moka::sync::Cache<String, Instant>>,
    app_clock: AppClock,
    /// Last measured application-minus-Redis clock difference; `i64::MIN` until measured.
    drift_ms: AtomicI64,
    metrics: crate::metrics::Decisions,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("name", &self.0.name)
            .field("quota", &self.0.quota)
            .field("algorithm", &self.0.algorithm)
            .field("local_share", &self.0.local.share())
            .finish_non_exhaustive()
    }
}

impl Limiter {
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
        self.0.local.share()
    }

    /// Keys (buckets) the local tier holds now.
    pub fn local_keys(&self) -> usize {
        self.0.local.len()
    }

    /// The tier that decides now: `Redis` when health allows it, else `Local`.
    pub fn tier(&self) -> Tier {
        match self.0.conn.as_ref().map(Conn::health) {
            Some(h) if h.state().is_available() => Tier::Redis,
            _ => Tier::Local,
        }
    }

    /// How far the application clock is ahead of the Redis clock (negative: behind), in
    /// milliseconds, as of the last decision Redis made; `None` before one.
    pub fn clock_drift_ms(&self) -> Option<i64> {
        let v = self.0.drift_ms.load(Ordering::Relaxed);
        (v != i64::MIN).then_some(v)
    }

    /// Decides one request for `key`.
    pub async fn check(&self, key: &str) -> Decision {
        self.decide(key, NonZeroU32::MIN).await
    }

    /// Decides a request of `n` units for `key`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `n` is zero or above the limit (it could never be allowed).
    pub async fn check_n(&self, key: &str, n: u32) -> Result<Decision> {
        let units = NonZeroU32::new(n)
            .filter(|n| n.get() <= self.0.quota.limit)
            .ok_or_else(|| {
                Error::invalid(
                    "n",
                    format!("{n} units is outside 1 ..= limit {}", self.0.quota.limit),
                )
            })?;
        Ok(self.decide(key, units).await)
    }

    async fn decide(&self, key: &str, n: NonZeroU32) -> Decision {
        let decision = self.decide_inner(key, n).await;
        let decider = match decision.tier {
            Tier::Redis => crate::metrics::Decider::Redis,
            Tier::Local => crate::metrics::Decider::Local,
            Tier::Blocked => crate::metrics::Decider::Blocked,
        };
        self.0.metrics.record(decider, decision.allowed);
        decision
    }

    async fn decide_inner(&self, key: &str, n: NonZeroU32) -> Decision {
        let inner = &self.0;
        if let Some(blocked) = self.blocked(key) {
            return blocked;
        }
        let decision = match inner.conn.as_ref() {
            Some(conn) if !conn.health().state().is_available() => self.fallback(key, n),
            Some(conn) => {
                let redis_key = format!("{}{key}", inner.key_prefix);
                match scripts::decide(conn, inner.algorithm, &redis_key, inner.quota, n.get()).await
                {
                    Ok(decision) => {
                        if let Some(ms) = scripts::drift_ms((inner.app_clock)(), &decision) {
                            inner.drift_ms.store(ms, Ordering::Relaxed);
                        }
                        decision
                    }
                    Err(e) => {
                        tracing::debug!(limiter = %inner.name, error = %e,
                            "tierkit: Redis rate-limit call failed; deciding locally");
                        self.fallback(key, n)
                    }
                }
            }
            None => inner.local.decide(key, n, inner.quota.limit),
        };
        if !decision.allowed {
            if let Some(blocks) = &inner.blocks {
                blocks.insert(key.to_owned(), Instant::now());
            }
        }
        decision
    }

    fn fallback(&self, key: &str, n: NonZeroU32) -> Decision {
        let inner = &self.0;
        if inner.fail_open {
            return Decision {
                allowed: true,
                limit: inner.quota.limit,
                remaining: inner.quota.limit - n.get(),
                reset_after: inner.quota.window,
                retry_after: None,
                tier: Tier::Local,
                decided_at: None,
            };
        }
        inner.local.decide(key, n, inner.quota.limit)
    }

    fn blocked(&self, key: &str) -> Option<Decision> {
        let blocks = self.0.blocks.as_ref()?;
        let since = blocks.get(key)?;
        let ttl = blocks.policy().time_to_live()?;
        let left = ttl.saturating_sub(since.elapsed());
        if left.is_zero() {
            return None;
        }
        Some(Decision {
            allowed: false,
            limit: self.0.quota.limit,
            remaining: 0,
            reset_after: left,
            retry_after: Some(left),
            tier: Tier::Blocked,
            decided_at: None,
        })
    }
}
