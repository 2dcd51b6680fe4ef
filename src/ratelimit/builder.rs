//! Declaring a limiter: [`LimiterBuilder`] collects the settings, checks them, and assembles
//! the tiers a [`Limiter`] holds.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::block::Blocks;
use super::decider::{Fallbacks, Picker};
use super::limiter::Limiter;
use super::local::{Local, LocalSet};
use super::scripts::{AppClock, RedisWindow};
use super::shared::Shared;
use super::watch::{Registry, Watch};
use super::{Algorithm, ErrorPolicy, Quota};
use crate::config::SharedClock;
use crate::conn::Conn;
#[cfg(feature = "testing")]
use crate::conn::StandIn;
use crate::error::{Error, Result};
use crate::keys::Keys;

/// The most quotas one limiter decides together.
const MAX_QUOTAS: usize = 4;

/// Declares a limiter; get one from [`Tierkit::limiter`](crate::Tierkit::limiter).
#[must_use = "a builder does nothing until build() is called"]
pub struct LimiterBuilder {
    conn: Option<Conn>,
    keys: Keys,
    clock: SharedClock,
    name: String,
    quota: Quota,
    /// Further quotas decided together with `quota`.
    extra: Vec<Quota>,
    algorithm: Algorithm,
    instances: u32,
    fail_open: bool,
    on_redis_error: ErrorPolicy,
    block_for: Option<Duration>,
    local_max_keys: u64,
    app_clock: AppClock,
    registry: Arc<Registry>,
    /// Embedded with fault injection: what stands in for Redis.
    #[cfg(feature = "testing")]
    standin: Option<StandIn>,
}

impl std::fmt::Debug for LimiterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimiterBuilder")
            .field("name", &self.name)
            .field("quota", &self.quota)
            .field("also", &self.extra)
            .field("algorithm", &self.algorithm)
            .field("instances", &self.instances)
            .field("fail_open", &self.fail_open)
            .field("on_redis_error", &self.on_redis_error)
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
        registry: Arc<Registry>,
    ) -> Self {
        LimiterBuilder {
            conn,
            keys,
            clock,
            name,
            quota,
            extra: Vec::new(),
            algorithm: Algorithm::default(),
            instances: 1,
            fail_open: false,
            on_redis_error: ErrorPolicy::default(),
            block_for: None,
            local_max_keys: 100_000,
            app_clock: Arc::new(SystemTime::now),
            registry,
            #[cfg(feature = "testing")]
            standin: None,
        }
    }

    /// Embedded, shares the quota through `standin` (fault injection).
    #[cfg(feature = "testing")]
    pub(crate) fn stand_in(mut self, standin: Option<StandIn>) -> Self {
        self.standin = standin;
        self
    }

    /// Another quota on the same keys, decided together with the first, all or nothing: a
    /// request is allowed only if every quota has room, and then spends on all of them (per
    /// second and per day, say). At most four quotas in all. In Redis one key holds them all
    /// (the log's one set serves every window), so they cost one round trip.
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
    /// let api = kit
    ///     .limiter("api", Quota::new(10, Duration::from_secs(1))?)
    ///     .also(Quota::new(1_000, Duration::from_secs(86_400))?)
    ///     .build()?;
    /// assert!(api.check("user:1").await.allowed);
    /// # Ok(()) }
    /// ```
    pub fn also(mut self, quota: Quota) -> Self {
        self.extra.push(quota);
        self
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

    /// While Redis is down, allow everything instead of enforcing the local share. Embedded
    /// mode has no Redis to be down and enforces the whole quota either way (with fault
    /// injection, the stand-in for Redis can be down, and this applies to it). Default: false.
    pub fn fail_open(mut self, yes: bool) -> Self {
        self.fail_open = yes;
        self
    }

    /// What to answer when Redis replies with an error that is not an outage (`NOPERM`, `OOM`,
    /// `WRONGTYPE`, a script error); see [`ErrorPolicy`]. `fail_open` never applies to these.
    /// Default: [`ErrorPolicy::Refuse`].
    pub fn on_redis_error(mut self, policy: ErrorPolicy) -> Self {
        self.on_redis_error = policy;
        self
    }

    /// Refuse a key that exceeded its limit for this long, from process memory without asking
    /// Redis. Default: no blocking.
    pub fn block_for(mut self, duration: Duration) -> Self {
        self.block_for = Some(duration);
        self
    }

    /// Keys the local tier keeps an exact state for (its memory bound). Past that many active
    /// keys, new keys share as many buckets, chosen by a hash under a random per-process key,
    /// until idle states are dropped: a flood of new keys never spends an active key's budget,
    /// and at most `2 × n` states of about 20 bytes each are held. Default: 100 000.
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
    /// instances, a zero block duration, zero local keys, more than four quotas, or a sliding
    /// log with a limit above [`Algorithm::LOG_MAX_LIMIT`].
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
        if self.extra.len() + 1 > MAX_QUOTAS {
            return Err(Error::config(
                "also",
                format!(
                    "{} quotas; at most {MAX_QUOTAS} are decided together",
                    self.extra.len() + 1
                ),
            ));
        }
        let quotas: Vec<Quota> = std::iter::once(self.quota).chain(self.extra).collect();
        let biggest = quotas.iter().map(Quota::limit).max().unwrap_or(0);
        if self.algorithm == Algorithm::SlidingLog && biggest > Algorithm::LOG_MAX_LIMIT {
            return Err(Error::config(
                "algorithm",
                format!(
                    "the sliding log holds an entry per admitted request, and a limit of \
                     {biggest} is above its ceiling of {}; use Algorithm::SlidingCounter",
                    Algorithm::LOG_MAX_LIMIT
                ),
            ));
        }
        if self.local_max_keys == 0 {
            return Err(Error::config("local_max_keys", "is zero; use 1 or more"));
        }
        let quota = self.quota;
        let blocks = self
            .block_for
            .map(|ttl| Blocks::new(ttl, self.local_max_keys, self.clock.clone()));
        let watch = Arc::new(Watch::new(&self.name));
        // Embedded mode has no one to share with: the whole quota, as plain GCRA. With Redis
        // (or what stands in for it), each instance's strict share while it is down.
        let local_set = |whole: bool| {
            LocalSet::new(
                quotas
                    .iter()
                    .map(|q| {
                        let share = if whole {
                            q.limit()
                        } else {
                            q.limit() / instances.get()
                        };
                        let share = NonZeroU32::new(share).unwrap_or(NonZeroU32::MIN);
                        Local::new(*q, share, self.local_max_keys, !whole, &self.clock)
                    })
                    .collect(),
            )
        };
        #[cfg(feature = "testing")]
        let standin = self.standin;
        #[cfg(not(feature = "testing"))]
        let standin: Option<std::convert::Infallible> = None;
        // The tier the quota is shared through, and the health that says whether it is there.
        let shared = match (self.conn, standin) {
            (Some(conn), _) => {
                let health = conn.health().clone();
                let redis = RedisWindow::new(
                    conn,
                    self.keys.limiter(&self.name, self.algorithm.key_segment()),
                    quotas.clone(),
                    self.algorithm,
                    self.app_clock,
                );
                Some((health, Shared::Redis(redis)))
            }
            #[cfg(feature = "testing")]
            (None, Some(standin)) => Some((
                standin.health().clone(),
                Shared::StandIn {
                    quota: local_set(true),
                    standin,
                },
            )),
            _ => None,
        };
        let picker = match shared {
            None => Picker::embedded(local_set(true)),
            Some((health, shared)) => {
                let local = local_set(false);
                let fallbacks = Fallbacks {
                    quota,
                    fail_open: self.fail_open,
                    on_error: self.on_redis_error,
                    share: local.share(),
                };
                Picker::tiered(Arc::clone(&watch), health, shared, local, fallbacks)
            }
        };
        self.registry.register(&watch);
        Ok(Limiter::new(
            self.name,
            quota,
            self.algorithm,
            picker,
            blocks,
            watch,
        ))
    }
}
