//! The tier a limiter shares its quota through: the sliding window in Redis, or, in an
//! embedded instance with fault injection (feature `testing`), the whole quota in process
//! memory reached through what stands in for Redis, so faults take the limiter down the paths
//! a Redis outage would (the local share, `fail_open`, the error policy).

use std::num::NonZeroU32;

use super::decider::{Control, Controlled, Decider};
#[cfg(feature = "testing")]
use super::local::LocalSet;
use super::scripts::RedisWindow;
use super::Decision;
#[cfg(feature = "testing")]
use super::Tier;
#[cfg(feature = "testing")]
use crate::conn::StandIn;
use crate::error::{Error, Result};

/// Where decisions are shared.
pub(super) enum Shared {
    Redis(RedisWindow),
    /// The whole quota, as the embedded limiter keeps it, behind the stand-in.
    #[cfg(feature = "testing")]
    StandIn {
        quota: LocalSet,
        standin: StandIn,
    },
}

impl Shared {
    /// How far the application clock is ahead of the Redis clock, in ms, as last seen.
    pub(super) fn drift_ms(&self) -> Option<i64> {
        match self {
            Shared::Redis(window) => window.drift_ms(),
            #[cfg(feature = "testing")]
            Shared::StandIn { .. } => None,
        }
    }
}

/// A decision made through the stand-in reads as one made by Redis, which it stands in for.
#[cfg(feature = "testing")]
fn as_shared(mut decision: Decision) -> Decision {
    if decision.tier == Tier::Local {
        decision.tier = Tier::Redis;
    }
    decision
}

impl Decider for Shared {
    type Error = Error;

    async fn decide(&self, key: &str, n: NonZeroU32) -> Result<Decision> {
        match self {
            Shared::Redis(window) => window.decide(key, n).await,
            #[cfg(feature = "testing")]
            Shared::StandIn { quota, standin } => {
                let decided = async {
                    let Ok(decision) = quota.decide(key, n).await;
                    Ok(as_shared(decision))
                };
                standin.gate(decided).await
            }
        }
    }
}

impl Controlled for Shared {
    async fn control(&self, key: &str, op: Control) -> Result<Decision> {
        match self {
            Shared::Redis(window) => window.control(key, op).await,
            #[cfg(feature = "testing")]
            Shared::StandIn { quota, standin } => {
                let done = async {
                    let Ok(decision) = quota.control(key, op).await;
                    Ok(as_shared(decision))
                };
                standin.gate(done).await
            }
        }
    }
}
