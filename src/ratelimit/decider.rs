//! The tier choice: one [`Decider`] trait, which the Redis window
//! ([`RedisWindow`](super::scripts::RedisWindow)) and the local share
//! ([`Local`](super::local::Local)) implement, and the [`Picker`] that chooses between them from
//! health, written once.
//!
//! Dispatch is static (`impl Future` in the trait, generics in the picker): a local decision
//! takes tens of nanoseconds, and a boxed future would be a large part of it.

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::num::NonZeroU32;

use super::{Decision, Quota, Tier};
use crate::health::Health;

/// Decides requests of `n` units for keys.
pub(super) trait Decider: Send + Sync {
    /// Why no decision was made; [`Infallible`] for a tier that always answers.
    type Error;

    /// Decides a request of `n` units for `key`.
    fn decide(
        &self,
        key: &str,
        n: NonZeroU32,
    ) -> impl Future<Output = Result<Decision, Self::Error>> + Send;
}

/// Redis while health allows it; the local tier (or, with `fail_open`, an allowance) while
/// Redis is down and for any call that fails or times out; the local tier alone when embedded.
pub(super) struct Picker<R, L> {
    /// `None` when embedded.
    redis: Option<Remote<R>>,
    local: L,
}

struct Remote<R> {
    health: Health,
    decider: R,
    /// With `fail_open`, the quota an allowance reports; `None` asks the local tier instead.
    fail_open: Option<Quota>,
    /// The limiter's name, for the log.
    name: String,
}

impl<R, L> Picker<R, L> {
    /// No Redis: the local tier decides everything.
    pub(super) fn embedded(local: L) -> Self {
        Picker { redis: None, local }
    }

    /// `redis` while `health` allows it, else `local`, or an allowance when `fail_open` holds
    /// the quota to report.
    pub(super) fn tiered(
        name: String,
        health: Health,
        redis: R,
        local: L,
        fail_open: Option<Quota>,
    ) -> Self {
        Picker {
            redis: Some(Remote {
                health,
                decider: redis,
                fail_open,
                name,
            }),
            local,
        }
    }

    pub(super) fn local(&self) -> &L {
        &self.local
    }

    pub(super) fn redis(&self) -> Option<&R> {
        self.redis.as_ref().map(|r| &r.decider)
    }

    /// The tier that decides now: `Redis` when health allows it, else `Local`.
    pub(super) fn tier(&self) -> Tier {
        match &self.redis {
            Some(r) if r.health.state().is_available() => Tier::Redis,
            _ => Tier::Local,
        }
    }
}

impl<R, L> Picker<R, L>
where
    L: Decider<Error = Infallible>,
{
    async fn fallback(&self, fail_open: Option<Quota>, key: &str, n: NonZeroU32) -> Decision {
        match fail_open {
            Some(quota) => Decision::open(quota, n),
            None => {
                let Ok(decision) = self.local.decide(key, n).await;
                decision
            }
        }
    }
}

impl<R, L> Decider for Picker<R, L>
where
    R: Decider,
    R::Error: Display,
    L: Decider<Error = Infallible>,
{
    /// Some tier always answers.
    type Error = Infallible;

    async fn decide(&self, key: &str, n: NonZeroU32) -> Result<Decision, Infallible> {
        let Some(redis) = &self.redis else {
            return self.local.decide(key, n).await;
        };
        // Down: no call is even tried, so no decision waits for a timeout during an outage.
        if !redis.health.state().is_available() {
            return Ok(self.fallback(redis.fail_open, key, n).await);
        }
        match redis.decider.decide(key, n).await {
            Ok(decision) => return Ok(decision),
            // The error ends with this arm, so the fallback's future need not hold it.
            Err(e) => tracing::debug!(limiter = %redis.name, error = %e,
                "tierkit: Redis rate-limit call failed; deciding locally"),
        }
        Ok(self.fallback(redis.fail_open, key, n).await)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::health::HealthState;

    /// A tier that answers with its own mark, or fails when told to, and counts its calls.
    struct Fake {
        tier: Tier,
        fails: bool,
        calls: AtomicU32,
    }

    impl Fake {
        fn new(tier: Tier, fails: bool) -> Self {
            Fake {
                tier,
                fails,
                calls: AtomicU32::new(0),
            }
        }

        fn calls(&self) -> u32 {
            self.calls.load(Ordering::Relaxed)
        }
    }

    impl Decider for Fake {
        type Error = String;

        async fn decide(&self, _: &str, n: NonZeroU32) -> Result<Decision, String> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.fails {
                return Err("connection refused".into());
            }
            let mut d = Decision::open(quota(), n);
            d.tier = self.tier;
            Ok(d)
        }
    }

    struct Always(Fake);

    impl Decider for Always {
        type Error = Infallible;

        async fn decide(&self, key: &str, n: NonZeroU32) -> Result<Decision, Infallible> {
            Ok(self
                .0
                .decide(key, n)
                .await
                .unwrap_or_else(|e| panic!("{e}")))
        }
    }

    fn quota() -> Quota {
        Quota::new(10, Duration::from_secs(60)).unwrap()
    }

    fn health(state: HealthState) -> Health {
        let h = Health::new(crate::Config::default().health, Duration::ZERO);
        h.force(state);
        h
    }

    fn tiered(state: HealthState, fails: bool, fail_open: bool) -> Picker<Fake, Always> {
        Picker::tiered(
            "t".into(),
            health(state),
            Fake::new(Tier::Redis, fails),
            Always(Fake::new(Tier::Local, false)),
            fail_open.then(quota),
        )
    }

    async fn tier_of<R: Decider>(picker: &Picker<R, Always>) -> Tier
    where
        R::Error: Display,
    {
        let Ok(d) = picker.decide("k", NonZeroU32::MIN).await;
        d.tier
    }

    #[tokio::test]
    async fn redis_decides_while_health_allows_it() {
        for state in [HealthState::Up, HealthState::Degraded] {
            let p = tiered(state, false, false);
            assert_eq!(p.tier(), Tier::Redis);
            assert_eq!(tier_of(&p).await, Tier::Redis);
            assert_eq!(p.local().0.calls(), 0);
        }
    }

    #[tokio::test]
    async fn down_never_calls_redis() {
        let p = tiered(HealthState::Down, false, false);
        assert_eq!(p.tier(), Tier::Local);
        assert_eq!(tier_of(&p).await, Tier::Local);
        assert_eq!(p.redis().map(Fake::calls), Some(0));
    }

    #[tokio::test]
    async fn a_failed_call_falls_back_for_that_call() {
        let p = tiered(HealthState::Up, true, false);
        assert_eq!(tier_of(&p).await, Tier::Local);
        assert_eq!(p.redis().map(Fake::calls), Some(1));
        assert_eq!(p.local().0.calls(), 1);
    }

    #[tokio::test]
    async fn fail_open_allows_instead_of_the_local_tier() {
        for (state, fails) in [(HealthState::Down, false), (HealthState::Up, true)] {
            let p = tiered(state, fails, true);
            let Ok(d) = p.decide("k", NonZeroU32::new(3).unwrap()).await;
            assert_eq!(
                (d.allowed, d.tier, d.remaining, d.retry_after),
                (true, Tier::Local, 7, None)
            );
            assert_eq!(p.local().0.calls(), 0);
        }
    }

    #[tokio::test]
    async fn embedded_asks_only_the_local_tier() {
        let p: Picker<Fake, Always> = Picker::embedded(Always(Fake::new(Tier::Local, false)));
        assert_eq!(p.tier(), Tier::Local);
        assert_eq!(tier_of(&p).await, Tier::Local);
        assert!(p.redis().is_none());
    }
}
