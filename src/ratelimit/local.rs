//! The in-process tier of the limiter: a keyed governor (GCRA) holding this instance's share of
//! the quota, over a bounded key space.

use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::RateLimiter;
use rustc_hash::FxBuildHasher;

use super::{Decision, Tier};

// Buckets are already hashes: a cheap multiplicative hasher is all the map needs.
type Keyed = RateLimiter<
    u64,
    DefaultKeyedStateStore<u64, FxBuildHasher>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// How often (in checks) idle keys are dropped from the state store.
const PRUNE_EVERY: u64 = 4096;

pub(crate) struct Local {
    limiter: Keyed,
    clock: DefaultClock,
    /// The share of the quota this tier enforces.
    share: NonZeroU32,
    /// Time for one unit of the share to come back.
    period: Duration,
    window: Duration,
    /// Keys are hashed into this many buckets, so no flood of distinct keys can grow the state
    /// past it; two keys in one bucket share a budget (stricter, never laxer).
    buckets: u64,
    checks: AtomicU64,
}

impl Local {
    pub(crate) fn new(share: NonZeroU32, window: Duration, buckets: u64) -> Self {
        // GCRA: a burst of `share`, refilled one unit per window/share: at most `share` in any
        // window plus what refills during it.
        let period = (window / share.get()).max(Duration::from_nanos(1));
        let quota = governor::Quota::with_period(period)
            .unwrap_or_else(|| governor::Quota::per_second(share))
            .allow_burst(share);
        let clock = DefaultClock::default();
        Local {
            limiter: RateLimiter::new(
                quota,
                DefaultKeyedStateStore::with_hasher(FxBuildHasher),
                clock.clone(),
            ),
            clock,
            share,
            period,
            window,
            buckets: buckets.max(1),
            checks: AtomicU64::new(0),
        }
    }

    pub(crate) fn share(&self) -> u32 {
        self.share.get()
    }

    /// Live buckets in the state store.
    pub(crate) fn len(&self) -> usize {
        self.limiter.len()
    }

    pub(crate) fn decide(&self, key: &str, n: NonZeroU32, limit: u32) -> Decision {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        // Fx, not SipHash: crafted collisions only make keys share a (stricter) budget, and the
        // map holds at most `buckets` entries, so there is nothing to flood.
        let bucket = FxBuildHasher.hash_one(key) % self.buckets;
        let share = self.share.get();
        match self.limiter.check_key_n(&bucket, n) {
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    limit,
                    remaining,
                    reset_after: self.period * (share - remaining.min(share)),
                    retry_after: None,
                    tier: Tier::Local,
                    decided_at: None,
                }
            }
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision {
                    allowed: false,
                    limit,
                    remaining: 0,
                    reset_after: self.period * share,
                    retry_after: Some(wait.max(Duration::from_millis(1))),
                    tier: Tier::Local,
                    decided_at: None,
                }
            }
            // More units than this instance's whole share: never allowed locally.
            Err(_) => Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset_after: self.window,
                retry_after: Some(self.window),
                tier: Tier::Local,
                decided_at: None,
            },
        }
    }
}
