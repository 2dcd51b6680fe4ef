//! The in-process tier of the limiter: a keyed governor (GCRA) holding this instance's share of
//! the quota, over a bounded key space, timed by the configured clock.

use std::convert::Infallible;
use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::RateLimiter;
use rustc_hash::FxBuildHasher;

use super::clock::LocalClock;
use super::decider::Decider;
use super::{Decision, Quota, Tier};
use crate::config::SharedClock;

// Buckets are already hashes: a cheap multiplicative hasher is all the map needs.
type Keyed = RateLimiter<
    u64,
    DefaultKeyedStateStore<u64, FxBuildHasher>,
    LocalClock,
    StateInformationMiddleware,
>;

/// How often (in checks) idle keys are dropped from the state store. The store never holds
/// more than `buckets` keys, so pruning only returns memory of idle buckets; a pass walks the
/// whole store, so it is rare.
const PRUNE_EVERY: u64 = 1 << 16;

pub(super) struct Local {
    limiter: Keyed,
    /// The quota's limit, which decisions report.
    limit: u32,
    /// The share of the quota this tier enforces.
    share: NonZeroU32,
    /// The GCRA burst: half the share.
    burst: u32,
    /// Time for one unit to come back.
    period: Duration,
    window: Duration,
    /// Keys are hashed into this many buckets, so no flood of distinct keys can grow the state
    /// past it; two keys in one bucket share a budget (stricter, never laxer).
    buckets: u64,
}

thread_local! {
    static CHECKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Local {
    /// `strict`: never more than `share` in any window (the fallback for a Redis that is down,
    /// where the share is a promise to the other instances). Otherwise plain GCRA with the
    /// whole share as burst (embedded mode): a client can reach up to twice the share across
    /// a window boundary, as with governor itself.
    pub(super) fn new(
        quota: Quota,
        share: NonZeroU32,
        buckets: u64,
        strict: bool,
        clock: &SharedClock,
    ) -> Self {
        let window = quota.window();
        // GCRA allows its burst plus one unit per period in any window: a burst of half the
        // share, refilled over two windows, never lets more than the share through in any
        // window (a steady client gets half the share per window while Redis is down).
        let burst = if strict {
            NonZeroU32::new(share.get().div_ceil(2)).unwrap_or(NonZeroU32::MIN)
        } else {
            share
        };
        let refill = if strict {
            share.get() - burst.get()
        } else {
            share.get()
        };
        let period = if refill == 0 {
            window * 2
        } else {
            (window / refill).max(Duration::from_nanos(1))
        };
        let gcra = governor::Quota::with_period(period)
            .unwrap_or_else(|| governor::Quota::per_second(burst))
            .allow_burst(burst);
        Local {
            limiter: RateLimiter::new(
                gcra,
                DefaultKeyedStateStore::with_hasher(FxBuildHasher),
                LocalClock::new(clock),
            ),
            limit: quota.limit(),
            share,
            burst: burst.get(),
            period,
            window,
            buckets: buckets.max(1),
        }
    }

    pub(super) fn share(&self) -> u32 {
        self.share.get()
    }

    /// Live buckets in the state store.
    pub(super) fn len(&self) -> usize {
        self.limiter.len()
    }

    /// The bucket `key` shares its budget in. Fx, not SipHash: crafted collisions only make
    /// keys share a (stricter) budget, and the map holds at most `buckets` entries, so there
    /// is nothing to flood. The high bits of the product pick the bucket (Lemire's
    /// multiply-shift): no division, and Fx's high bits are its well-mixed ones.
    fn bucket(&self, key: &str) -> u64 {
        let hash = FxBuildHasher.hash_one(key);
        ((u128::from(hash) * u128::from(self.buckets)) >> 64) as u64
    }

    fn decide_now(&self, key: &str, n: NonZeroU32) -> Decision {
        // Counted per thread (one count for every limiter on it): a shared atomic would cost a
        // locked add on every check for an event that only has to happen now and then.
        let due = CHECKS.with(|c| {
            let next = c.get().wrapping_add(1);
            c.set(next);
            next % PRUNE_EVERY == 0
        });
        if due {
            // No shrink_to_fit: the store is bounded by `buckets` anyway, and shrinking made
            // the next inserts grow (rehash) it again, a sixth of a check's time in a profile.
            self.limiter.retain_recent();
        }
        let limit = self.limit;
        let burst = self.burst;
        match self.limiter.check_key_n(&self.bucket(key), n) {
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    limit,
                    remaining,
                    reset_after: self.period * (burst - remaining.min(burst)),
                    retry_after: None,
                    tier: Tier::Local,
                    decided_at: None,
                    degraded: false,
                }
            }
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Decision {
                    allowed: false,
                    limit,
                    remaining: 0,
                    reset_after: self.period * burst,
                    retry_after: Some(wait.max(Duration::from_millis(1))),
                    tier: Tier::Local,
                    decided_at: None,
                    degraded: false,
                }
            }
            // More units than the local burst: never allowed locally.
            Err(_) => Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset_after: self.window,
                retry_after: Some(self.window),
                tier: Tier::Local,
                decided_at: None,
                degraded: false,
            },
        }
    }
}

impl Decider for Local {
    /// The local tier always answers.
    type Error = Infallible;

    // Decided when polled: a few instructions cheaper per check than `ready(..)`, which moves
    // the decision through an `Option` (callgrind on the local-decision bench).
    async fn decide(&self, key: &str, n: NonZeroU32) -> Result<Decision, Infallible> {
        Ok(self.decide_now(key, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn local(limit: u32, window_ms: u64, strict: bool, clock: &ManualClock) -> Local {
        let quota = Quota::new(limit, Duration::from_millis(window_ms)).unwrap();
        let share = NonZeroU32::new(limit).unwrap();
        Local::new(
            quota,
            share,
            1_000,
            strict,
            &SharedClock::new(clock.clone()),
        )
    }

    fn allowed(local: &Local, key: &str, times: u32) -> u32 {
        (0..times)
            .map(|_| u32::from(local.decide_now(key, NonZeroU32::MIN).allowed))
            .sum()
    }

    #[test]
    fn strict_shares_burst_half_and_refill_the_rest_over_two_windows() {
        let clock = ManualClock::new();
        let local = local(10, 1_000, true, &clock);
        assert_eq!(allowed(&local, "k", 20), 5);
        // One unit per 200 ms: the other half of the share over the window.
        clock.advance(Duration::from_millis(199));
        assert_eq!(allowed(&local, "k", 20), 0);
        clock.advance(Duration::from_millis(1));
        assert_eq!(allowed(&local, "k", 20), 1);
        clock.advance(Duration::from_millis(800));
        assert_eq!(allowed(&local, "k", 20), 4);
    }

    #[test]
    fn embedded_bursts_the_whole_share_and_refills_it_over_one_window() {
        let clock = ManualClock::new();
        let local = local(10, 1_000, false, &clock);
        let first = local.decide_now("k", NonZeroU32::MIN);
        assert_eq!(
            (first.remaining, first.reset_after),
            (9, Duration::from_millis(100))
        );
        assert_eq!(allowed(&local, "k", 20), 9);
        let refused = local.decide_now("k", NonZeroU32::MIN);
        assert_eq!(refused.retry_after, Some(Duration::from_millis(100)));
        clock.advance(Duration::from_millis(1_000));
        assert_eq!(allowed(&local, "k", 20), 10);
    }

    #[test]
    fn more_units_than_the_burst_are_never_allowed() {
        let clock = ManualClock::new();
        let local = local(10, 1_000, true, &clock);
        let d = local.decide_now("k", NonZeroU32::new(6).unwrap());
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(Duration::from_secs(1)));
        // It spent nothing.
        assert_eq!(allowed(&local, "k", 20), 5);
    }

    #[test]
    fn a_bucket_is_picked_within_the_bound() {
        let clock = ManualClock::new();
        for buckets in [1, 2, 7, 1_000] {
            let quota = Quota::new(1, Duration::from_secs(1)).unwrap();
            let l = Local::new(
                quota,
                NonZeroU32::MIN,
                buckets,
                false,
                &SharedClock::new(clock.clone()),
            );
            for i in 0..1_000 {
                assert!(l.bucket(&format!("key{i}")) < buckets);
            }
        }
    }
}
