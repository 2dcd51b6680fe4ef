//! What a namespace is set to do when its loader is slow or failing, what a call may change of
//! it ([`ReadOptions`]), what a loader may decide about its own result ([`Loaded`]), and which
//! tiers a namespace keeps its values in ([`Tiers`]).

use std::time::{Duration, Instant};

use super::life::{EagerRefresh, Life};
use crate::error::{Error, Result};

/// Which tiers a namespace keeps its values in. Set with
/// [`NamespaceBuilder::tiers`](super::NamespaceBuilder::tiers).
///
/// # Examples
///
/// ```
/// use tierkit::cache::Tiers;
///
/// let kit = tierkit::Tierkit::embedded();
/// let balances = kit.namespace::<u64>("balances").tiers(Tiers::L2Only).build()?;
/// # let _ = balances;
/// # Ok::<(), tierkit::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Tiers {
    /// The in-process L1 in front of Redis.
    #[default]
    Both,
    /// The L1 only: values never go to Redis; changes are announced to the other instances.
    /// See [`NamespaceBuilder::l1_only`](super::NamespaceBuilder::l1_only).
    L1Only,
    /// Redis only: no in-process copy, so every instance reads exactly what Redis holds, at
    /// the cost of a round trip per read. Without Redis (embedded), the L1 is the one tier
    /// there is and is used as the shared one.
    L2Only,
}

/// A namespace's fail-safe: how long an expired copy may still be served, and how often the
/// loader is tried meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FailSafe {
    pub(super) max: Duration,
    pub(super) throttle: Duration,
}

/// What a namespace does when its loader is slow or failing, and how it refreshes early.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Resilience {
    pub(super) fail_safe: Option<FailSafe>,
    pub(super) soft_timeout: Option<Duration>,
    pub(super) hard_timeout: Option<Duration>,
    pub(super) eager: Option<EagerRefresh>,
    pub(super) negative_ttl: Option<Duration>,
}

impl Resilience {
    /// How long past its logical expiry a tier keeps an entry of this namespace.
    pub(super) fn grace(&self) -> Duration {
        self.fail_safe.map_or(Duration::ZERO, |f| f.max)
    }

    /// Whether L1 entries need a [`Life`](super::life::Life).
    pub(super) fn tracks_life(&self) -> bool {
        self.fail_safe.is_some() || self.eager.is_some()
    }

    /// The settings of one call: the namespace's, with what `opts` overrides.
    pub(super) fn for_call(&self, opts: &ReadOptions) -> Policy {
        let fail_safe = match (self.fail_safe, opts.fail_safe) {
            (None, _) | (_, Some(None)) => None,
            (Some(f), None) => Some(f),
            // A call can shorten the bound, not lengthen what the namespace keeps.
            (Some(f), Some(Some(max))) => Some(FailSafe {
                max: max.min(f.max),
                throttle: f.throttle,
            }),
        };
        Policy {
            fail_safe,
            soft_timeout: opts.soft_timeout.unwrap_or(self.soft_timeout),
            hard_timeout: opts.hard_timeout.unwrap_or(self.hard_timeout),
            skip_l1: opts.skip_l1,
        }
    }
}

/// The resilience settings of one call.
#[derive(Clone, Copy, Debug)]
pub(super) struct Policy {
    pub(super) fail_safe: Option<FailSafe>,
    pub(super) soft_timeout: Option<Duration>,
    pub(super) hard_timeout: Option<Duration>,
    pub(super) skip_l1: bool,
}

impl Policy {
    /// Refuses a soft timeout left without a longer hard one (a call's options can make one
    /// of a namespace's).
    pub(super) fn check(&self) -> Result<()> {
        match super::builder::soft_problem(self.soft_timeout, self.hard_timeout) {
            Some(problem) => Err(Error::invalid("soft_timeout", problem)),
            None => Ok(()),
        }
    }

    /// Whether fail-safe may serve a copy of this life now: it is on, and the copy is within
    /// its bound past expiry.
    pub(super) fn serves(&self, life: &Life) -> bool {
        self.fail_safe
            .is_some_and(|f| life.expired_for(Instant::now()) <= f.max)
    }
}

/// Per-call options of [`Namespace::get_with`](super::Namespace::get_with) and
/// [`Namespace::get_or_load`](super::Namespace::get_or_load): each overrides the namespace's
/// setting for this call only.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tierkit::cache::ReadOptions;
///
/// // A read that must see Redis, and will wait at most 2 s for the loader.
/// let opts = ReadOptions::new().skip_l1().hard_timeout(Some(Duration::from_secs(2)));
/// # let _ = opts;
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct ReadOptions {
    skip_l1: bool,
    fail_safe: Option<Option<Duration>>,
    soft_timeout: Option<Option<Duration>>,
    hard_timeout: Option<Option<Duration>>,
}

impl ReadOptions {
    /// The namespace's settings, unchanged.
    pub fn new() -> Self {
        ReadOptions::default()
    }

    /// Skips this instance's L1: the read goes to Redis (then the loader), and what it finds
    /// replaces the L1 copy. For a read that must see what Redis holds now.
    pub fn skip_l1(mut self) -> Self {
        self.skip_l1 = true;
        self
    }

    /// Turns fail-safe off for this call (`None`), or bounds it tighter (`Some(max)`: serve a
    /// copy at most `max` past its expiry). A call cannot keep copies longer than its
    /// namespace's [`fail_safe`](super::NamespaceBuilder::fail_safe) keeps them.
    pub fn fail_safe(mut self, max: Option<Duration>) -> Self {
        self.fail_safe = Some(max);
        self
    }

    /// This call's soft timeout (`None`: none). See
    /// [`NamespaceBuilder::soft_timeout`](super::NamespaceBuilder::soft_timeout).
    pub fn soft_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// This call's hard timeout (`None`: none). See
    /// [`NamespaceBuilder::hard_timeout`](super::NamespaceBuilder::hard_timeout).
    pub fn hard_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.hard_timeout = Some(timeout);
        self
    }

    pub(super) fn skips_l1(&self) -> bool {
        self.skip_l1
    }

    pub(super) fn check(&self) -> Result<()> {
        let timeouts = [
            ("soft_timeout", self.soft_timeout),
            ("hard_timeout", self.hard_timeout),
        ];
        for (what, timeout) in timeouts {
            if timeout.flatten().is_some_and(|t| t.is_zero()) {
                return Err(Error::invalid(
                    what,
                    "is zero; give a positive timeout or None",
                ));
            }
        }
        Ok(())
    }
}

/// What a loader of [`Namespace::get_or_load`](super::Namespace::get_or_load) found, and how
/// to cache it: the namespace's TTL and no tags unless it says otherwise.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tierkit::cache::Loaded;
///
/// // A profile that changes rarely, invalidated with its user's tag.
/// let found = Loaded::value("ada".to_string()).ttl(Duration::from_secs(3600)).tag("user:42");
/// // A row that does not exist: cached for the namespace's negative_ttl, if it has one.
/// let missing = Loaded::<String>::not_found();
/// // An answer not to keep (a partial result, a fallback).
/// let partial = Loaded::value("partial".to_string()).uncached();
/// # let _ = (found, missing, partial);
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Loaded<V> {
    pub(super) value: Option<V>,
    pub(super) ttl: Option<Duration>,
    pub(super) tags: Vec<String>,
    pub(super) cache: bool,
}

impl<V> Loaded<V> {
    /// A value, cached with the namespace's settings.
    pub fn value(value: V) -> Self {
        Loaded {
            value: Some(value),
            ttl: None,
            tags: Vec::new(),
            cache: true,
        }
    }

    /// Nothing to find: cached as such for the namespace's
    /// [`negative_ttl`](super::NamespaceBuilder::negative_ttl) (or [`ttl`](Self::ttl)), so
    /// the loader is not asked again meanwhile; not cached when neither is set.
    pub fn not_found() -> Self {
        Loaded {
            value: None,
            ttl: None,
            tags: Vec::new(),
            cache: true,
        }
    }

    /// This entry's TTL instead of the namespace's (jitter still applies). From 1 ms to what
    /// Redis takes, fail-safe's grace included: outside, the call answers
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) and caches nothing.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Tags the entry, for [`Namespace::invalidate_tag`](super::Namespace::invalidate_tag);
    /// limits as [`SetOptions::tag`](super::SetOptions::tag).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Serves the answer to this call (and the calls waiting on it) without caching it
    /// anywhere.
    pub fn uncached(mut self) -> Self {
        self.cache = false;
        self
    }
}
