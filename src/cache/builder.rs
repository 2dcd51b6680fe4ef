//! Declaring a namespace: its settings, their defaults, and the checks that make a bad
//! declaration an error at start-up rather than a surprise at the first write.

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::base::CacheCore;
use super::epochs::Epochs;
use super::flight::Flights;
use super::l2::Keyspace;
use super::life::EagerRefresh;
use super::namespace::{Namespace, NsShared};
use super::options::{FailSafe, Resilience, Tiers};
use super::owed::Owed;
use super::stamp::Freshness;
use super::stats::Counters;
use super::writing::Writing;
use crate::error::{Error, Result};

const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// FusionCache's default, and long enough that a failing database is not hammered.
const DEFAULT_THROTTLE: Duration = Duration::from_secs(30);

/// Declares a namespace; get one from [`Tierkit::namespace`](crate::Tierkit::namespace).
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
    lease: Option<Duration>,
    encrypted: bool,
    tiers: Tiers,
    fail_safe: Option<Duration>,
    throttle: Duration,
    soft_timeout: Option<Duration>,
    hard_timeout: Option<Duration>,
    eager: Option<EagerRefresh>,
    negative_ttl: Option<Duration>,
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
            .field("single_flight", &self.lease)
            .field("encrypted", &self.encrypted)
            .field("tiers", &self.tiers)
            .field("fail_safe", &self.fail_safe)
            .field("fail_safe_throttle", &self.throttle)
            .field("soft_timeout", &self.soft_timeout)
            .field("hard_timeout", &self.hard_timeout)
            .field("eager_refresh", &self.eager)
            .field("negative_ttl", &self.negative_ttl)
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
            lease: None,
            encrypted: false,
            tiers: Tiers::Both,
            fail_safe: None,
            throttle: DEFAULT_THROTTLE,
            soft_timeout: None,
            hard_timeout: None,
            eager: None,
            negative_ttl: None,
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

    /// Encrypts every value this namespace stores in Redis (XChaCha20-Poly1305, under the
    /// configuration's [`encryption_keys`](crate::ConfigBuilder::encryption_keys)), bound to
    /// its full Redis key: a value copied to another key, tampered with, sealed with a key no
    /// longer listed, or written in plain by anyone, is a miss (counted in
    /// `decode_failures`) that the next fill replaces; never read as plaintext. L1 copies are
    /// decoded values in process memory, as in any namespace. Default: off.
    ///
    /// # Examples
    ///
    /// ```
    /// use tierkit::codec::Keyring;
    ///
    /// let keys = Keyring::new([(1, [7u8; 32].as_slice())])?;
    /// let kit = tierkit::Tierkit::new(tierkit::Config::builder().encryption_keys(keys).build()?)?;
    /// let profiles = kit.namespace::<String>("profiles").encrypted().build()?;
    /// # let _ = profiles;
    /// // Without keys in the configuration, an encrypted namespace is refused.
    /// let plain = tierkit::Tierkit::embedded();
    /// assert!(plain.namespace::<String>("profiles").encrypted().build().is_err());
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn encrypted(mut self) -> Self {
        self.encrypted = true;
        self
    }

    /// Keeps this namespace's values in the in-process L1 only, for data that must not be
    /// cached in Redis at all: reads never go to Redis (a miss runs the loader), writes and
    /// loads put into L1 only. Writes and invalidations are still announced on the backplane,
    /// so other instances drop their copies and load afresh; announcements Redis did not take
    /// are owed and replayed, as any change. Default: off. Not with
    /// [`single_flight`](Self::single_flight), which shares a loaded value through Redis.
    ///
    /// # Examples
    ///
    /// ```
    /// let kit = tierkit::Tierkit::embedded();
    /// let tokens = kit.namespace::<String>("oauth-tokens").l1_only().build()?;
    /// # let _ = tokens;
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn l1_only(mut self) -> Self {
        self.tiers = Tiers::L1Only;
        self
    }

    /// Which tiers keep this namespace's values: both (the default), the L1 only (as
    /// [`l1_only`](Self::l1_only)), or Redis only, for values every instance must read exactly
    /// as Redis holds them (no in-process copy; a read is a round trip). Without Redis, an
    /// L2-only namespace uses the L1, the one tier there is.
    pub fn tiers(mut self, tiers: Tiers) -> Self {
        self.tiers = tiers;
        self
    }

    /// Fail-safe: keeps each entry up to `max` past its expiry (in L1, and in Redis, whose TTL
    /// grows by `max`), and when the loader then fails or times out, serves that expired copy,
    /// marked [`Source::Stale`](super::Source::Stale), instead of the error. Never a copy more
    /// than `max` past expiry, and never one a write or an invalidation replaced: those are
    /// gone from every tier. While a key is served stale its loader is tried at most once per
    /// [`fail_safe_throttle`](Self::fail_safe_throttle). Default: off.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let kit = tierkit::Tierkit::embedded();
    /// let events = kit
    ///     .namespace::<String>("events")
    ///     .ttl(Duration::from_secs(60))
    ///     .fail_safe(Duration::from_secs(3600))
    ///     .fail_safe_throttle(Duration::from_secs(10))
    ///     .soft_timeout(Duration::from_millis(100))
    ///     .hard_timeout(Duration::from_secs(2))
    ///     .build()?;
    /// # let _ = events;
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn fail_safe(mut self, max: Duration) -> Self {
        self.fail_safe = Some(max);
        self
    }

    /// After the loader failed and a stale copy was served, how long the key's callers get
    /// that copy before the loader is tried again. The rest is kept with the L1 copy, so an
    /// L2-only namespace (which keeps none) asks its loader on every call. Default: 30 s.
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.throttle = throttle;
        self
    }

    /// How long a caller waits for the loader when a stale copy is at hand (needs
    /// [`fail_safe`](Self::fail_safe)): past it the caller gets the copy, and the load goes on
    /// in the background (one per key, at most 256 per instance) and fills the cache when it
    /// is done, unless the [`hard_timeout`](Self::hard_timeout) ends it first. Needs both: a
    /// copy to answer with, and a hard timeout, so that a hung load ends. Default: none (wait
    /// for the load).
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// The longest a load may run: past it, the load is dropped and callers get the stale
    /// copy (with [`fail_safe`](Self::fail_safe)) or
    /// [`Error::LoaderTimeout`](crate::Error::LoaderTimeout). Default: none.
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = Some(timeout);
        self
    }

    /// Refreshes an entry read in the last part of its life in the background, once, while
    /// its readers keep getting the current value: a hot key never expires under load. Needs
    /// the loader of [`get_or_set`](super::Namespace::get_or_set) or
    /// [`get_or_load`](super::Namespace::get_or_load) (a plain `get` does not refresh), a
    /// tokio runtime to run the refresh on, and a [`hard_timeout`](Self::hard_timeout) that
    /// ends a hung refresh (a caller that misses the key waits for the refresh in flight).
    /// Default: off.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierkit::cache::EagerRefresh;
    ///
    /// let kit = tierkit::Tierkit::embedded();
    /// let feed = kit
    ///     .namespace::<Vec<u64>>("feed")
    ///     .eager_refresh(EagerRefresh::after(0.8))
    ///     .hard_timeout(Duration::from_secs(2))
    ///     .build()?;
    /// # let _ = feed;
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn eager_refresh(mut self, when: EagerRefresh) -> Self {
        self.eager = Some(when);
        self
    }

    /// Caches a loader's [`Loaded::not_found`](super::Loaded::not_found) for `ttl`, so a key
    /// that does not exist does not reach the loader on every read. Default: not cached.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Shortens each entry's TTL by a random fraction up to `fraction` (0 to 1, exclusive), so
    /// entries written together do not expire together. Default: 0 (no jitter).
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// Loads a cold key on one instance at a time, across every instance sharing the Redis:
    /// the first to miss takes a lease on the key in Redis (for `lease`) and runs the loader;
    /// the others poll Redis for its value instead of running theirs, and load themselves only
    /// when the lease ends without one (a holder that died or failed blocks no one longer than
    /// `lease`). Worth it for loaders that are expensive or not deterministic; it costs a
    /// round trip on every cold load. Without Redis, or while it is down, loads are per
    /// process as always. Default: off. `lease` is 1 ms to 1 hour, and should exceed a
    /// load's usual time.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let kit = tierkit::Tierkit::embedded();
    /// let reports = kit
    ///     .namespace::<String>("reports")
    ///     .single_flight(Duration::from_secs(5))
    ///     .build()?;
    /// # let _ = reports;
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn single_flight(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Validates and declares the namespace. Declaring the same name again with the same type
    /// and settings gives a handle to the same namespace.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a name outside `A-Z a-z 0-9 _ - .` (1-64 characters), a zero TTL,
    /// an L1 TTL above the TTL, a jitter outside `[0, 1)`, a single-flight lease outside 1 ms
    /// to 1 hour, a zero fail-safe, throttle or timeout, a soft timeout without fail-safe or
    /// without a longer hard timeout, an eager refresh outside its range or without a hard
    /// timeout, or a name already
    /// declared with another type or settings.
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
        if let Some(lease) = self.lease {
            if lease < Duration::from_millis(1) || lease > Duration::from_secs(3600) {
                return Err(Error::config(
                    "single_flight",
                    format!("a lease of {lease:?} is outside 1 ms to 1 hour"),
                ));
            }
        }
        let resilience = self.resilience()?;
        if self.tiers == Tiers::L1Only && self.lease.is_some() {
            return Err(Error::config(
                "single_flight",
                "an L1-only namespace keeps no value in Redis for other instances to wait on; \
                 drop one of single_flight and l1_only",
            ));
        }
        let keyring = match (self.encrypted, &self.core.keyring) {
            (false, _) => None,
            (true, Some(keys)) => Some(keys.clone()),
            (true, None) => {
                return Err(Error::config(
                    "encrypted",
                    "needs encryption keys: ConfigBuilder::encryption_keys or \
                     TIERKIT_ENCRYPTION_KEYS",
                ))
            }
        };
        let core = &self.core;
        let shared = core.register(NsShared {
            id: 0,
            keyspace: Keyspace::new(&core.keys, &self.name, self.version, self.ttl),
            name: self.name,
            version: self.version,
            type_id: TypeId::of::<V>(),
            ttl: self.ttl,
            l1_ttl,
            jitter: self.jitter,
            counters: Counters::default(),
            fresh: Freshness::default(),
            epochs: Epochs::default(),
            owed: Owed::default(),
            flights: Flights::default(),
            refreshes: Flights::default(),
            writing: Writing::default(),
            lease: self.lease,
            keyring,
            tiers: self.tiers,
            resilience,
            load_nanos: AtomicU64::new(0),
        })?;
        Ok(Namespace {
            l1: core.l1.clone(),
            l1_on: shared.uses_l1(core),
            ns: shared,
            core: self.core,
            _type: PhantomData,
        })
    }
}

impl<V> NamespaceBuilder<V> {
    /// The fail-safe, timeout, refresh and negative-caching settings, checked.
    fn resilience(&self) -> Result<Resilience> {
        let fail_safe = match self.fail_safe {
            None => None,
            Some(max) => {
                if max.is_zero() || ttl_problem(self.ttl.saturating_add(max)).is_some() {
                    return Err(Error::config(
                        "fail_safe",
                        format!(
                            "{max:?} must be positive, and the TTL plus it a TTL Redis accepts"
                        ),
                    ));
                }
                if self.throttle.is_zero() {
                    return Err(Error::config(
                        "fail_safe_throttle",
                        "is zero: the loader would be tried on every call; give e.g. 30 s",
                    ));
                }
                Some(FailSafe {
                    max,
                    throttle: self.throttle,
                })
            }
        };
        for (what, timeout) in [
            ("soft_timeout", self.soft_timeout),
            ("hard_timeout", self.hard_timeout),
        ] {
            if timeout.is_some_and(|t| t.is_zero()) {
                return Err(Error::config(what, "is zero; give a positive timeout"));
            }
        }
        if self.soft_timeout.is_some() && fail_safe.is_none() {
            return Err(Error::config(
                "soft_timeout",
                "answers with a stale copy, which only fail_safe keeps: set fail_safe too, or \
                 use hard_timeout to bound the wait",
            ));
        }
        if let Some(problem) = soft_problem(self.soft_timeout, self.hard_timeout) {
            return Err(Error::config("soft_timeout", problem));
        }
        if let Some(problem) = self.eager.and_then(|e| e.problem()) {
            return Err(Error::config("eager_refresh", problem));
        }
        if self.eager.is_some() && self.hard_timeout.is_none() {
            return Err(Error::config(
                "eager_refresh",
                "runs the loader in the background, which must end: set hard_timeout too \
                 (a refresh leads the key's load, so a hung one would hold every caller \
                 that misses)",
            ));
        }
        if let Some(problem) = self.negative_ttl.and_then(ttl_problem) {
            return Err(Error::config("negative_ttl", problem));
        }
        Ok(Resilience {
            fail_safe,
            soft_timeout: self.soft_timeout,
            hard_timeout: self.hard_timeout,
            eager: self.eager,
            negative_ttl: self.negative_ttl,
        })
    }
}

/// The problem with a soft timeout beside `hard`, if any: a load it sends to the background
/// must end, so it needs a hard timeout, and a longer one.
pub(super) fn soft_problem(soft: Option<Duration>, hard: Option<Duration>) -> Option<String> {
    match (soft?, hard) {
        (_, None) => {
            Some("sends a load to the background, which must end: set hard_timeout too".to_string())
        }
        (soft, Some(hard)) if soft >= hard => Some(format!(
            "{soft:?} must be shorter than the hard timeout {hard:?}"
        )),
        _ => None,
    }
}

/// Redis takes TTLs in milliseconds up to `i64::MAX`; the problem, if `ttl` is outside.
pub(super) fn ttl_problem(ttl: Duration) -> Option<String> {
    const MAX: Duration = Duration::from_millis(i64::MAX as u64);
    (ttl < Duration::from_millis(1) || ttl > MAX)
        .then(|| format!("{ttl:?} is outside 1 ms ..= {MAX:?}; give a TTL Redis accepts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_redis_refuses_are_named() {
        assert!(ttl_problem(Duration::ZERO).is_some());
        assert!(ttl_problem(Duration::from_micros(999)).is_some());
        assert!(ttl_problem(Duration::from_millis(1)).is_none());
        assert!(ttl_problem(Duration::MAX).is_some());
    }
}
