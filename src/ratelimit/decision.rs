//! What a limiter answers: the [`Decision`] for one request, and the [`Tier`] that made it.

use std::num::NonZeroU32;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::Quota;
use crate::codec::json_time;

/// Which tier made a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Tier {
    /// The sliding window in Redis.
    Redis,
    /// This instance's governor (Redis down or failing, or embedded mode; with fault
    /// injection, embedded decisions made through the stand-in read [`Tier::Redis`]).
    Local,
    /// The key is blocked in process memory after exceeding its limit.
    Blocked,
    /// Redis answered with an error that is not an outage (no permission, out of memory, a
    /// wrong type, a script error), and the limiter's [`ErrorPolicy`] decided.
    Policy,
}

/// What a Redis-backed limiter answers when Redis replies with an error that is not an outage:
/// `NOPERM` (an ACL user without scripting), `OOM`, `WRONGTYPE` (another writer on the key), a
/// script error. Outages (refused, reset, timed out, Down, loading, failing over) always go to
/// the local tier, or to an allowance with
/// [`fail_open`](super::LimiterBuilder::fail_open); these never do: they would not heal by
/// waiting, and `fail_open` would turn a misconfiguration into no limit at all.
///
/// Either way the error is counted, logged at warn (at most once per 10 s per limiter, with the
/// count since the last line) and shown in the health report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum ErrorPolicy {
    /// Refuse the request (`retry_after` one second, or the window if shorter): nothing gets
    /// past a limiter that cannot count, and the misconfiguration shows at once.
    #[default]
    Refuse,
    /// Decide with the local tier's strict share, as during an outage, but without counting
    /// it as one (health stays up).
    LocalShare,
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
///
/// It serializes (camelCase, like the health report) with times as milliseconds:
/// `resetAfterMs`, `retryAfterMs`, and `decidedAtMs` since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Decision {
    /// Whether the request may go ahead.
    pub allowed: bool,
    /// The quota's limit.
    pub limit: u32,
    /// Units left in the current window after this decision.
    pub remaining: u32,
    /// Time until the whole quota is available again.
    #[serde(rename = "resetAfterMs", serialize_with = "json_time::millis")]
    pub reset_after: Duration,
    /// When refused: time until a request of the same size could be allowed.
    #[serde(rename = "retryAfterMs", serialize_with = "json_time::opt_millis")]
    pub retry_after: Option<Duration>,
    /// Who decided.
    pub tier: Tier,
    /// The Redis server clock when Redis decided.
    #[serde(rename = "decidedAtMs", serialize_with = "json_time::opt_epoch_millis")]
    pub decided_at: Option<SystemTime>,
    /// Whether a Redis-backed limiter decided without Redis (the local tier during an outage,
    /// a `fail_open` allowance, or the [`ErrorPolicy`]): the decision holds this instance's
    /// share, not the shared quota. Always false when embedded, where the local tier is the
    /// quota (unless fault injection puts a stand-in for Redis there: then as with Redis).
    pub degraded: bool,
}

impl Decision {
    /// `fail_open` while Redis is down: allowed, as if the window were fresh.
    pub(super) fn open(quota: Quota, n: NonZeroU32) -> Decision {
        Decision {
            allowed: true,
            limit: quota.limit(),
            remaining: quota.limit().saturating_sub(n.get()),
            reset_after: quota.window(),
            retry_after: None,
            tier: Tier::Local,
            decided_at: None,
            degraded: true,
        }
    }

    /// A key with nothing spent.
    pub(super) fn fresh(quota: Quota, tier: Tier) -> Decision {
        Decision {
            allowed: true,
            limit: quota.limit(),
            remaining: quota.limit(),
            reset_after: Duration::ZERO,
            retry_after: None,
            tier,
            decided_at: None,
            degraded: false,
        }
    }

    /// The [`ErrorPolicy::Refuse`] answer.
    pub(super) fn refused_by_policy(quota: Quota) -> Decision {
        let retry = quota.window().min(Duration::from_secs(1));
        Decision {
            allowed: false,
            limit: quota.limit(),
            remaining: 0,
            reset_after: retry,
            retry_after: Some(retry),
            tier: Tier::Policy,
            decided_at: None,
            degraded: true,
        }
    }

    /// A refusal from the block list, `left` before the block ends.
    pub(super) fn blocked(limit: u32, left: Duration) -> Decision {
        Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset_after: left,
            retry_after: Some(left),
            tier: Tier::Blocked,
            decided_at: None,
            degraded: false,
        }
    }
}
