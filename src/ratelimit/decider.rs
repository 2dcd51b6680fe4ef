//! The tier choice: one [`Decider`] trait, which the Redis window
//! ([`RedisWindow`](super::scripts::RedisWindow)) and the local share
//! ([`LocalSet`](super::local::LocalSet)) implement, and the [`Picker`] that chooses between them from
//! health, written once.
//!
//! Dispatch is static (`impl Future` in the trait, generics in the picker): a local decision
//! takes tens of nanoseconds, and a boxed future would be a large part of it.

use std::convert::Infallible;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;

use super::watch::Watch;
use super::{Decision, ErrorPolicy, Quota, Tier};
use crate::error::Error;
use crate::health::Health;

/// What a limiter does to a key besides deciding a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Control {
    /// Whether one more unit would be allowed now, spending nothing.
    Peek,
    /// Gives back up to `n` units the key spent in the current window.
    Refund(NonZeroU32),
    /// Forgets everything the key spent.
    Reset,
}

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

/// A tier that keeps per-key state a caller can act on.
pub(super) trait Controlled: Decider {
    /// Applies `op` to `key`; the answer says what the key has left afterwards (for a peek,
    /// whether one more unit would be allowed).
    fn control(
        &self,
        key: &str,
        op: Control,
    ) -> impl Future<Output = Result<Decision, Self::Error>> + Send;
}

/// Redis while health allows it; the local tier (or, with `fail_open`, an allowance) while
/// Redis is down and for any call that meets an outage (refused, reset, timed out, a server
/// loading or failing over); the [`ErrorPolicy`] for a call Redis answered with any other
/// error; the local tier alone when embedded.
pub(super) struct Picker<R, L> {
    /// `None` when embedded.
    redis: Option<Remote<R>>,
    local: L,
}

struct Remote<R> {
    health: Health,
    decider: R,
    quota: Quota,
    /// With `fail_open`, allow during outages instead of asking the local tier.
    fail_open: bool,
    on_error: ErrorPolicy,
    /// Takeovers and errors, for logs, metrics and the report.
    watch: Arc<Watch>,
    /// The local tier's share, for the takeover's log line.
    share: u32,
}

/// How a Redis-backed limiter meets trouble.
pub(super) struct Fallbacks {
    pub(super) quota: Quota,
    pub(super) fail_open: bool,
    pub(super) on_error: ErrorPolicy,
    pub(super) share: u32,
}

impl<R, L> Picker<R, L> {
    /// No Redis: the local tier decides everything.
    pub(super) fn embedded(local: L) -> Self {
        Picker { redis: None, local }
    }

    /// `redis` while `health` allows it, else `local` (or an allowance with `fail_open`).
    pub(super) fn tiered(
        watch: Arc<Watch>,
        health: Health,
        redis: R,
        local: L,
        fallbacks: Fallbacks,
    ) -> Self {
        Picker {
            redis: Some(Remote {
                health,
                decider: redis,
                quota: fallbacks.quota,
                fail_open: fallbacks.fail_open,
                on_error: fallbacks.on_error,
                watch,
                share: fallbacks.share,
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
    /// The decision during an outage: an allowance with `fail_open`, else the local share.
    async fn outage(&self, remote: &Remote<R>, key: &str, n: NonZeroU32) -> Decision {
        let decision = if remote.fail_open {
            Decision::open(remote.quota, n)
        } else {
            self.local_share(key, n).await
        };
        remote
            .watch
            .decided_without_redis(decision.allowed, "outage", remote.share);
        decision
    }

    /// The decision when Redis answered with an error: the error policy's, never `fail_open`.
    async fn policy(&self, remote: &Remote<R>, key: &str, n: NonZeroU32) -> Decision {
        let decision = match remote.on_error {
            ErrorPolicy::LocalShare => self.local_share(key, n).await,
            ErrorPolicy::Refuse => Decision::refused_by_policy(remote.quota),
        };
        remote
            .watch
            .decided_without_redis(decision.allowed, "redis error", remote.share);
        decision
    }

    async fn local_share(&self, key: &str, n: NonZeroU32) -> Decision {
        let Ok(mut decision) = self.local.decide(key, n).await;
        decision.degraded = true;
        decision
    }
}

impl<R, L> Decider for Picker<R, L>
where
    R: Decider<Error = Error>,
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
            return Ok(self.outage(redis, key, n).await);
        }
        // The error ends with this match, so the fallback's future need not hold it.
        let outage = match redis.decider.decide(key, n).await {
            Ok(decision) => {
                redis.watch.redis_decided();
                return Ok(decision);
            }
            Err(e) if e.is_outage() => true,
            Err(e) => {
                redis.watch.error(&e);
                false
            }
        };
        Ok(if outage {
            self.outage(redis, key, n).await
        } else {
            self.policy(redis, key, n).await
        })
    }
}

impl<R, L> Picker<R, L>
where
    R: Controlled<Error = Error>,
    L: Controlled<Error = Infallible>,
{
    /// Applies `op` where decisions are made now: Redis while health allows it (its error
    /// returned, except that a peek falls back as a check would), else the local tier. A reset
    /// or refund also reaches the local tier, so that it agrees once it takes over.
    pub(super) async fn control(&self, key: &str, op: Control) -> Result<Decision, Error> {
        let Ok(local) = self.local.control(key, op).await;
        let Some(redis) = &self.redis else {
            return Ok(local);
        };
        if !redis.health.state().is_available() {
            return match op {
                Control::Peek => Ok(Decision {
                    degraded: true,
                    ..local
                }),
                _ => Err(Error::Unavailable),
            };
        }
        match redis.decider.control(key, op).await {
            Ok(decision) => Ok(decision),
            // A peek answers as a check would: an outage or the local-share policy asks the
            // local tier; the refusing policy refuses.
            Err(e) if op == Control::Peek => {
                if !e.is_outage() {
                    redis.watch.error(&e);
                    if redis.on_error == ErrorPolicy::Refuse {
                        return Ok(Decision::refused_by_policy(redis.quota));
                    }
                }
                Ok(Decision {
                    degraded: true,
                    ..local
                })
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::health::HealthState;

    /// How a fake tier fails.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Fails {
        No,
        /// Connection refused.
        Outage,
        /// `NOPERM`: an answer, not an outage.
        Reply,
    }

    /// A tier that answers with its own mark, or fails when told to, and counts its calls.
    struct Fake {
        tier: Tier,
        fails: Fails,
        calls: AtomicU32,
    }

    impl Fake {
        fn new(tier: Tier, fails: Fails) -> Self {
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
        type Error = Error;

        async fn decide(&self, _: &str, n: NonZeroU32) -> Result<Decision, Error> {
            use redis::{ErrorKind, RedisError, ServerErrorKind};
            self.calls.fetch_add(1, Ordering::Relaxed);
            let kind = match self.fails {
                Fails::No => None,
                Fails::Outage => Some(ErrorKind::Io),
                Fails::Reply => Some(ErrorKind::Server(ServerErrorKind::NoPerm)),
            };
            if let Some(kind) = kind {
                return Err(Error::Redis(RedisError::from((kind, "failed"))));
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

    fn tiered_with(
        state: HealthState,
        fails: Fails,
        fail_open: bool,
        on_error: ErrorPolicy,
    ) -> Picker<Fake, Always> {
        Picker::tiered(
            Arc::new(Watch::new("t")),
            health(state),
            Fake::new(Tier::Redis, fails),
            Always(Fake::new(Tier::Local, Fails::No)),
            Fallbacks {
                quota: quota(),
                fail_open,
                on_error,
                share: 10,
            },
        )
    }

    fn tiered(state: HealthState, fails: bool, fail_open: bool) -> Picker<Fake, Always> {
        let fails = if fails { Fails::Outage } else { Fails::No };
        tiered_with(state, fails, fail_open, ErrorPolicy::default())
    }

    async fn tier_of(picker: &Picker<Fake, Always>) -> Tier {
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
                (d.allowed, d.tier, d.remaining, d.retry_after, d.degraded),
                (true, Tier::Local, 7, None, true)
            );
            assert_eq!(p.local().0.calls(), 0);
        }
    }

    #[tokio::test]
    async fn an_error_reply_goes_to_the_policy_never_to_fail_open() {
        for fail_open in [false, true] {
            let p = tiered_with(
                HealthState::Up,
                Fails::Reply,
                fail_open,
                ErrorPolicy::Refuse,
            );
            let Ok(d) = p.decide("k", NonZeroU32::MIN).await;
            assert_eq!((d.allowed, d.tier, d.degraded), (false, Tier::Policy, true));
            assert_eq!(d.retry_after, Some(Duration::from_secs(1)));
            assert_eq!(p.local().0.calls(), 0);
            let p = tiered_with(
                HealthState::Up,
                Fails::Reply,
                fail_open,
                ErrorPolicy::LocalShare,
            );
            assert_eq!(tier_of(&p).await, Tier::Local);
            assert_eq!(p.local().0.calls(), 1);
        }
    }

    #[tokio::test]
    async fn embedded_asks_only_the_local_tier() {
        let p: Picker<Fake, Always> = Picker::embedded(Always(Fake::new(Tier::Local, Fails::No)));
        assert_eq!(p.tier(), Tier::Local);
        assert_eq!(tier_of(&p).await, Tier::Local);
        assert!(p.redis().is_none());
    }
}
