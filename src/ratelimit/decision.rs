//! What a limiter answers: the [`Decision`] for one request, and the [`Tier`] that made it.

use std::num::NonZeroU32;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::Quota;

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
        }
    }
}
