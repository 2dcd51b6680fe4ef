//! What a limiter enforces: the [`Quota`] (a limit per window) and the [`Algorithm`] Redis
//! counts it with.

use std::time::Duration;

use serde::Serialize;

use super::scripts;
use crate::error::{Error, Result};

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
    /// Exact sliding-window log: one entry per admitted request whatever its weight, so
    /// memory per key is up to `limit` entries (about 80 bytes each). Limits above
    /// [`Algorithm::LOG_MAX_LIMIT`] are refused by the builder: use the counter for them.
    #[default]
    SlidingLog,
    /// Sliding-window counter: two counters per key, for large limits; see the module docs
    /// for its bound.
    SlidingCounter,
    /// The sliding-window counter with no Lua script: plain counters per fixed window, bumped
    /// and read in one pipeline, the window placed on the Redis clock by an offset the limiter
    /// measures with `TIME`. The cheapest decision Redis can make (no script runs on its one
    /// thread), and one an ACL user without scripting may make. Same bound as
    /// [`SlidingCounter`](Self::SlidingCounter) on the Redis clock as the limiter reads it; see
    /// the module docs for what the clock's reading adds.
    PipelinedCounter,
}

impl Algorithm {
    /// The largest limit the sliding log accepts: a key may hold one entry per unit when every
    /// request weighs one, and a million entries (about 80 MB) is already more than a single
    /// key should hold. [`Algorithm::SlidingCounter`] has no such ceiling.
    pub const LOG_MAX_LIMIT: u32 = 1_000_000;

    /// The segment of the Redis key that names the algorithm: a limiter switched from one
    /// algorithm to the other never meets the other's data (a sorted set against a hash).
    pub(super) fn key_segment(self) -> &'static str {
        match self {
            Algorithm::SlidingLog => "log",
            Algorithm::SlidingCounter => "ctr",
            Algorithm::PipelinedCounter => "pc",
        }
    }

    /// The Lua source Redis runs for this algorithm (one key; `ARGV`: units, mode
    /// (`check`, `peek` or `refund`), the number of quotas, then each quota's window in µs and
    /// limit), for review or to run it by hand; `None` for
    /// [`PipelinedCounter`](Self::PipelinedCounter), which runs none.
    ///
    /// # Examples
    ///
    /// ```
    /// use tierkit::ratelimit::Algorithm;
    ///
    /// assert!(Algorithm::SlidingLog.lua().is_some_and(|lua| lua.contains("TIME")));
    /// assert!(Algorithm::PipelinedCounter.lua().is_none());
    /// ```
    pub fn lua(self) -> Option<&'static str> {
        match self {
            Algorithm::SlidingLog => Some(scripts::LOG_LUA),
            Algorithm::SlidingCounter => Some(scripts::COUNTER_LUA),
            Algorithm::PipelinedCounter => None,
        }
    }
}
