//! The rate limiter, each behaviour written once and run per backend (`per_backend!`):
//!
//! - `decisions`: the fields of a decision, weighted requests and `retry_after`, on every
//!   backend (embedded, a server, a cluster);
//! - `redis_window`: the Redis algorithms, the log's exactness against a reference model and
//!   the counter's bound, on a server and a cluster;
//! - `local_tier`: the local tier's guarantees (the local share in any window, the whole quota
//!   when embedded, bounded buckets, `fail_open`, blocks), on embedded and on Redis with health
//!   forced Down, over randomized histories on a manual clock;
//!
//! then the faults only a real server makes (kill, hang), and what a blocked key saves Redis.
//!
//! The local tier and block windows run on the configured clock, so these tests advance a
//! `ManualClock` instead of sleeping; Redis's windows run on the server's clock, in real time.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{fast_builder, per_backend, Backend};
use tierkit::clock::{Clock, ManualClock};
use tierkit::health::{HealthState, MisconfigurationKind};
use tierkit::ratelimit::{Algorithm, Decision, ErrorPolicy, Limiter, Quota, Tier};
use tierkit::{Error, Tierkit};

const OP_TIMEOUT: Duration = Duration::from_millis(100);

/// Every way Redis counts.
const ALGORITHMS: [Algorithm; 3] = [
    Algorithm::SlidingLog,
    Algorithm::SlidingCounter,
    Algorithm::PipelinedCounter,
];

fn quota(limit: u32, window: Duration) -> Quota {
    Quota::new(limit, window).unwrap()
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

/// The tier that decides on `b` while Redis is up.
fn deciding_tier(b: &Backend) -> Tier {
    if b.is_embedded() {
        Tier::Local
    } else {
        Tier::Redis
    }
}

/// Lets `d` pass for whoever decides on `b`: the manual clock moves the local tier, real time
/// moves Redis's windows (the server's clock).
async fn pass(b: &Backend, clock: &ManualClock, d: Duration) {
    if b.is_embedded() {
        clock.advance(d);
    } else {
        tokio::time::sleep(d).await;
    }
}

/// How many of `calls` checks of `key` are allowed.
async fn allowed_of(limiter: &Limiter, key: &str, calls: u32) -> u32 {
    let mut allowed = 0;
    for _ in 0..calls {
        allowed += limiter.check(key).await.allowed as u32;
    }
    allowed
}

#[tokio::test]
async fn invalid_quotas_and_units_are_refused_with_clear_errors() {
    assert!(Quota::new(0, Duration::from_secs(1))
        .unwrap_err()
        .to_string()
        .contains("limit"));
    assert!(Quota::new(1, Duration::ZERO)
        .unwrap_err()
        .to_string()
        .contains("window"));
    let kit = Tierkit::embedded();
    let q = quota(5, Duration::from_secs(60));
    assert!(kit.limiter("bad name", q).build().is_err());
    assert!(kit.limiter("api", q).instances(0).build().is_err());
    assert!(kit
        .limiter("api", q)
        .block_for(Duration::ZERO)
        .build()
        .is_err());
    assert!(kit.limiter("api", q).local_max_keys(0).build().is_err());
    let api = kit.limiter("api", q).build().unwrap();
    for n in [0, 6] {
        match api.check_n("k", n).await.unwrap_err() {
            Error::InvalidInput { what, .. } => assert_eq!(what, "n"),
            other => panic!("{other:?}"),
        }
    }
    // Bad input touched nothing: the key still has its whole quota.
    assert_eq!(api.check_n("k", 5).await.unwrap().remaining, 0);
}

/// What a decision says, on every backend.
///
/// (`::redis::cmd` below: `per_backend!` declares a module named `redis` in here.)
mod decisions {
    use super::*;

    per_backend!([embedded, redis, cluster] [
        decisions_carry_every_field_and_weighted_requests_count_n,
        waiting_retry_after_is_enough_for_both_algorithms,
        a_large_weighted_request_is_one_cheap_decision,
        peek_refund_and_reset_act_on_the_key,
        several_quotas_are_decided_together_all_or_nothing,
    ]);

    /// Two quotas on one key (a short burst limit and a longer one): a request is allowed
    /// only if both have room, and a request one refuses spends on neither; on both
    /// algorithms and every backend.
    async fn several_quotas_are_decided_together_all_or_nothing(b: Backend) {
        let clock = ManualClock::new();
        let kit = b.kit_with(b.builder().clock(clock.clone())).await;
        let short = Duration::from_millis(600);
        for (i, algorithm) in ALGORITHMS.into_iter().enumerate() {
            let api = kit
                .limiter(format!("multi{i}"), quota(2, short))
                .also(quota(3, Duration::from_secs(3600)))
                .algorithm(algorithm)
                .build()
                .unwrap();
            let context = format!("{algorithm:?}");
            assert!(api.check("k").await.allowed, "{context}");
            assert!(api.check("k").await.allowed, "{context}");
            // The short quota refuses: the long one is not spent.
            let refused = api.check("k").await;
            assert!(!refused.allowed, "{context}");
            assert_eq!(refused.limit, 2, "{context}: the quota that refused");
            let retry = refused.retry_after.unwrap();
            assert!(retry <= short * 2, "{context}: {retry:?}");
            // Past the short window (real time for Redis, the clock for the local tier).
            clock.advance(short * 2);
            if !b.is_embedded() {
                tokio::time::sleep(short * 2).await;
            }
            // One unit of the long quota is left, whatever the refusals before.
            let last = api.check("k").await;
            assert!(last.allowed, "{context}: {last:?}");
            assert_eq!((last.limit, last.remaining), (3, 0), "{context}: {last:?}");
            let long = api.check("k").await;
            assert!(!long.allowed, "{context}");
            assert_eq!(long.limit, 3, "{context}: the long quota refuses now");
        }
        assert!(kit
            .limiter("five", quota(1, Duration::from_secs(1)))
            .also(quota(1, Duration::from_secs(2)))
            .also(quota(1, Duration::from_secs(3)))
            .also(quota(1, Duration::from_secs(4)))
            .also(quota(1, Duration::from_secs(5)))
            .build()
            .is_err());
    }

    /// `peek` spends nothing, `refund` gives units back (never more than were spent), `reset`
    /// forgets the key and ends its block; on both algorithms, on every backend, and in the
    /// local tier while Redis is down.
    async fn peek_refund_and_reset_act_on_the_key(b: Backend) {
        let clock = ManualClock::new();
        let kit = b.kit_with(b.builder().clock(clock.clone())).await;
        for (i, algorithm) in ALGORITHMS.into_iter().enumerate() {
            let api = kit
                .limiter(format!("ctl{i}"), quota(10, Duration::from_secs(600)))
                .algorithm(algorithm)
                .block_for(Duration::from_secs(600))
                .build()
                .unwrap();
            let context = format!("{algorithm:?}");
            api.check_n("k", 7).await.unwrap();
            for _ in 0..3 {
                let p = api.peek("k").await;
                assert_eq!((p.allowed, p.remaining), (true, 3), "{context}");
            }
            api.refund("k", 4).await.unwrap();
            assert_eq!(api.peek("k").await.remaining, 7, "{context}");
            // More back than was spent: only what was spent.
            api.refund("k", 100).await.unwrap();
            assert_eq!(api.peek("k").await.remaining, 10, "{context}");
            assert!(matches!(
                api.refund("k", 0).await,
                Err(Error::InvalidInput { .. })
            ));
            // Spent and blocked; a reset ends both.
            api.check_n("k", 10).await.unwrap();
            assert!(!api.check("k").await.allowed);
            let p = api.peek("k").await;
            assert!(!p.allowed && p.retry_after.is_some(), "{context}: {p:?}");
            api.reset("k").await.unwrap();
            assert_eq!(api.peek("k").await.remaining, 10, "{context}");
            assert!(api.check("k").await.allowed, "{context}");
        }
        // The local tier, with Redis forced down: the same controls on this instance's share.
        if let Some(health) = kit.health() {
            health.force(HealthState::Down);
            let api = kit
                .limiter("ctl-local", quota(10, Duration::from_secs(600)))
                .build()
                .unwrap();
            // Down: half the share as a burst.
            api.check_n("k", 4).await.unwrap();
            let p = api.peek("k").await;
            assert_eq!((p.remaining, p.degraded), (1, true));
            api.refund("k", 2).await.unwrap_err();
            api.reset("k").await.unwrap_err();
            assert_eq!(
                api.peek("k").await.remaining,
                5,
                "reset reached the local tier"
            );
            health.unforce();
        }
    }

    async fn decisions_carry_every_field_and_weighted_requests_count_n(b: Backend) {
        let clock = ManualClock::new();
        let kit = b.kit_with(b.builder().clock(clock.clone())).await;
        let api = kit
            .limiter("api", quota(10, Duration::from_secs(60)))
            .build()
            .unwrap();
        let d = api.check("user:1").await;
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining, d.tier), (10, 9, deciding_tier(&b)));
        assert_eq!(d.retry_after, None);
        if b.is_embedded() {
            // GCRA: one unit comes back every window / limit.
            assert_eq!(d.reset_after, Duration::from_secs(6));
            assert_eq!(d.decided_at, None);
        } else {
            assert!(
                d.reset_after > Duration::from_secs(59) && d.reset_after <= Duration::from_secs(60)
            );
            assert!(d.decided_at.is_some());
        }
        let d = api.check_n("user:1", 9).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        let d = api.check_n("user:1", 2).await.unwrap();
        assert!(!d.allowed);
        let retry = d.retry_after.unwrap();
        if b.is_embedded() {
            assert_eq!(retry, Duration::from_secs(12), "two units back");
        } else {
            assert!(
                retry > Duration::from_secs(59) && retry <= Duration::from_secs(60),
                "{retry:?}"
            );
        }
        // Another key has its own budget.
        assert!(api.check("user:2").await.allowed);

        if !b.is_embedded() {
            // Keys live under the limiter's name and expire on their own.
            let pttl: i64 = b.query(&kit, ::redis::cmd("PTTL"), "rl:api:log:user:1");
            assert!(pttl > 59_000 && pttl <= 60_000, "{pttl}");
        }
    }

    async fn waiting_retry_after_is_enough_for_both_algorithms(b: Backend) {
        let clock = ManualClock::new();
        let kit = b.kit_with(b.builder().clock(clock.clone())).await;
        for algorithm in ALGORITHMS {
            let api = kit
                .limiter(
                    format!("retry{}", algorithm as u8),
                    quota(3, Duration::from_millis(300)),
                )
                .algorithm(algorithm)
                .build()
                .unwrap();
            for round in 0..3 {
                let mut refused = None;
                for _ in 0..10 {
                    let d = api.check("k").await;
                    assert_eq!(d.tier, deciding_tier(&b));
                    if !d.allowed {
                        refused = Some(d);
                        break;
                    }
                }
                let retry = refused.expect("the limit is reached").retry_after.unwrap();
                assert!(
                    retry <= Duration::from_millis(600),
                    "{algorithm:?}: {retry:?}"
                );
                pass(&b, &clock, retry + Duration::from_millis(5)).await;
                let d = api.check("k").await;
                assert!(
                    d.allowed,
                    "{algorithm:?} round {round}: still refused after {retry:?}: {d:?}"
                );
            }
        }
    }

    /// A weighted request costs Redis one log entry whatever its weight: `check_n` of 100,000 on
    /// a limit of 1,000,000 is decided by Redis within a 100 ms call bound (a slower call would
    /// have fallen back to the local tier) and adds one member, well under 1 MiB.
    async fn a_large_weighted_request_is_one_cheap_decision(b: Backend) {
        // The manual clock holds the embedded governor still, so its remaining units are exact.
        let clock = ManualClock::new();
        let kit = b
            .kit_with(
                b.builder()
                    .clock(clock.clone())
                    .op_timeout(Duration::from_millis(100)),
            )
            .await;
        let api = kit
            .limiter("bulk", quota(1_000_000, Duration::from_secs(60)))
            .build()
            .unwrap();
        for round in 1..=10u32 {
            let d = api.check_n("k", 100_000).await.unwrap();
            assert_eq!(
                (d.allowed, d.tier, d.remaining),
                (true, deciding_tier(&b), 1_000_000 - round * 100_000),
                "round {round}"
            );
        }
        let refused = api.check_n("k", 100_000).await.unwrap();
        assert!(!refused.allowed);
        if !b.is_embedded() {
            assert_eq!(refused.tier, Tier::Redis);
            // The first entry's expiry frees enough: retry is about the window.
            let retry = refused.retry_after.unwrap();
            assert!(
                retry > Duration::from_secs(59) && retry <= Duration::from_secs(60),
                "{retry:?}"
            );
            let size: u64 = b.query(&kit, ::redis::cmd("ZCARD"), "rl:bulk:log:k");
            assert_eq!(size, 10, "one member per admitted request");
            let mut usage = ::redis::cmd("MEMORY");
            usage.arg("USAGE");
            let bytes: u64 = b.query(&kit, usage, "rl:bulk:log:k");
            assert!(bytes < 1 << 20, "{bytes} bytes for ten requests");
        }
        // Above the log's ceiling the builder asks for the counter.
        let err = kit
            .limiter(
                "huge",
                quota(Algorithm::LOG_MAX_LIMIT + 1, Duration::from_secs(1)),
            )
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("SlidingCounter"), "{err}");
        kit.limiter(
            "huge",
            quota(Algorithm::LOG_MAX_LIMIT + 1, Duration::from_secs(1)),
        )
        .algorithm(Algorithm::SlidingCounter)
        .build()
        .unwrap();
    }
}

/// How Redis counts, on a server and on a cluster.
mod redis_window {
    use super::*;

    per_backend!([redis, cluster] [
        the_log_records_only_admitted_requests,
        the_sliding_log_matches_the_reference_model_across_skewed_instances,
        the_sliding_counter_stays_within_its_documented_bound,
        the_pipelined_counter_stays_within_its_documented_bound,
    ]);

    async fn the_log_records_only_admitted_requests(b: Backend) {
        let kit = b.kit().await;
        let api = kit
            .limiter("api", quota(10, Duration::from_secs(60)))
            .build()
            .unwrap();
        assert_eq!(allowed_of(&api, "greedy", 500).await, 10);
        let size: u64 = b.query(&kit, ::redis::cmd("ZCARD"), "rl:api:log:greedy");
        assert_eq!(size, 10, "a client ignoring refusals must not grow the key");
    }

    async fn the_sliding_log_matches_the_reference_model_across_skewed_instances(b: Backend) {
        let window = Duration::from_millis(300);
        let w = window.as_micros() as i64;
        for seed in 1..=3u64 {
            let limit = 4 + seed as u32 * 2;
            let seen = stress(&b, Algorithm::SlidingLog, limit, window, seed).await;
            let (mut allowed, mut refused) = (0, 0);
            for s in &seen {
                let before = admitted_in(&seen, s.key, s.at_us - w, s.at_us);
                if s.allowed {
                    allowed += 1;
                    // Never more than `limit` in any window ending at an admission.
                    assert!(before <= limit, "seed {seed}: {before} > {limit} at {s:?}");
                } else {
                    refused += 1;
                    // Never a refusal the model allows (ties in one microsecond count as before).
                    assert!(
                        before + s.n > limit,
                        "seed {seed}: refused {s:?} with {before} admitted"
                    );
                }
            }
            assert!(
                allowed > 20 && refused > 20,
                "seed {seed}: a weak schedule ({allowed}/{refused})"
            );
        }
    }

    async fn the_sliding_counter_stays_within_its_documented_bound(b: Backend) {
        let window = Duration::from_millis(300);
        let w = window.as_micros() as i64;
        for seed in 1..=2u64 {
            let limit = 10;
            let seen = stress(&b, Algorithm::SlidingCounter, limit, window, 10 + seed).await;
            assert_counter_bound(&seen, limit, w, seed);
            assert!(seen.iter().filter(|s| s.allowed).count() > 20);
        }
    }

    /// The counter without a script, on the Redis clock as each instance reads it (its own
    /// clock, minutes off, plus the offset it measured): the same bound as the script's
    /// counter, checked on the time each decision was placed at, and the reading itself close
    /// to the Redis clock.
    async fn the_pipelined_counter_stays_within_its_documented_bound(b: Backend) {
        let window = Duration::from_millis(300);
        let w = window.as_micros() as i64;
        for seed in 1..=2u64 {
            let limit = 10;
            let seen = stress(&b, Algorithm::PipelinedCounter, limit, window, 20 + seed).await;
            assert_counter_bound(&seen, limit, w, seed);
            let allowed = seen.iter().filter(|s| s.allowed).count();
            let refused = seen.len() - allowed;
            assert!(
                allowed > 20 && refused > 20,
                "seed {seed}: {allowed}/{refused}"
            );
        }
        // Each decision was placed on the Redis clock within a round trip of it.
        let kit = b.kit().await;
        let api = kit
            .limiter("placed", quota(1_000, Duration::from_secs(60)))
            .algorithm(Algorithm::PipelinedCounter)
            .app_clock(|| SystemTime::now() - Duration::from_secs(3_600))
            .build()
            .unwrap();
        for _ in 0..20 {
            let conn = kit.conn().unwrap();
            let before: (i64, i64) = conn.query(&::redis::cmd("TIME")).await.unwrap();
            let d = api.check("k").await;
            let after: (i64, i64) = conn.query(&::redis::cmd("TIME")).await.unwrap();
            let us = |(s, u): (i64, i64)| s * 1_000_000 + u;
            let at = micros(d.decided_at.unwrap());
            assert_eq!(d.tier, Tier::Redis);
            // Loopback round trips: a few ms of slack on a loaded machine.
            assert!(
                at >= us(before) - 5_000 && at <= us(after) + 5_000,
                "placed at {at}, Redis read {} then {}",
                us(before),
                us(after)
            );
        }
    }

    /// The counter's bound over a history: at most `2 × limit` in any sliding window of `w`
    /// µs, and at most `limit` in the fixed window (aligned on the time decisions were placed
    /// at) holding each admission.
    fn assert_counter_bound(seen: &[Seen], limit: u32, w: i64, seed: u64) {
        for s in seen.iter().filter(|s| s.allowed) {
            let sliding = admitted_in(seen, s.key, s.at_us - w, s.at_us);
            assert!(
                sliding <= 2 * limit,
                "seed {seed}: {sliding} in a sliding window"
            );
            let start = s.at_us - s.at_us.rem_euclid(w);
            let fixed = admitted_in(seen, s.key, start - 1, start + w - 1);
            assert!(fixed <= limit, "seed {seed}: {fixed} in a fixed window");
        }
    }

    /// One decision as recorded by the stress driver.
    #[derive(Clone, Debug)]
    struct Seen {
        key: usize,
        n: u32,
        at_us: i64,
        allowed: bool,
    }

    /// Drives a random schedule through three limiters (each on its own tierkit instance, with
    /// an application clock skewed by minutes) sharing one Redis.
    async fn stress(
        backend: &Backend,
        algorithm: Algorithm,
        limit: u32,
        window: Duration,
        seed: u64,
    ) -> Vec<Seen> {
        let skews_min = [-7i64, 0, 5];
        let mut limiters = Vec::new();
        for (i, skew) in skews_min.iter().enumerate() {
            // Three instances of many tasks on 2 shared cores: a generous call bound and probe,
            // so Redis decides every call (what is checked is the window, not the timeouts).
            let kit = backend
                .kit_with(
                    backend
                        .builder()
                        .op_timeout(Duration::from_secs(1))
                        .probe_interval(Duration::from_millis(500))
                        .probe_timeout(Duration::from_millis(400)),
                )
                .await;
            let skew = *skew;
            let limiter = kit
                .limiter(format!("stress{seed}"), quota(limit, window))
                .algorithm(algorithm)
                .instances(3)
                .app_clock(move || {
                    let now = SystemTime::now();
                    let by = Duration::from_secs(skew.unsigned_abs() * 60);
                    if skew < 0 {
                        now - by
                    } else {
                        now + by
                    }
                })
                .build()
                .unwrap();
            limiters.push((i, kit, limiter));
        }
        let tasks: Vec<_> = limiters
            .into_iter()
            .map(|(i, kit, limiter)| {
                tokio::spawn(async move {
                    let mut rng = fastrand::Rng::with_seed(seed * 31 + i as u64);
                    let mut seen = Vec::new();
                    let started = Instant::now();
                    while started.elapsed() < window * 4 {
                        let key = rng.usize(0..2);
                        let n = rng.u32(1..=3.min(limit));
                        let d: Decision = limiter.check_n(&format!("k{key}"), n).await.unwrap();
                        assert_eq!(d.tier, Tier::Redis, "Redis must decide here");
                        seen.push(Seen {
                            key,
                            n,
                            at_us: micros(d.decided_at.unwrap()),
                            allowed: d.allowed,
                        });
                        if rng.u8(0..4) == 0 {
                            tokio::time::sleep(Duration::from_millis(rng.u64(0..8))).await;
                        }
                    }
                    let drift = limiter.clock_drift_ms().unwrap();
                    drop(kit);
                    (seen, drift)
                })
            })
            .collect();
        let mut all = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            let (seen, drift) = t.await.unwrap();
            // Each instance sees its own skew against the Redis clock.
            let expected = skews_min[i] * 60_000;
            assert!(
                (drift - expected).abs() < 2_000,
                "instance {i}: drift {drift} ms, skew {expected} ms"
            );
            all.extend(seen);
        }
        all.sort_by_key(|s| s.at_us);
        all
    }

    /// Units admitted for `key` in the window `(from_exclusive, to_inclusive]`.
    fn admitted_in(seen: &[Seen], key: usize, from_exclusive: i64, to_inclusive: i64) -> u32 {
        seen.iter()
            .filter(|s| {
                s.allowed && s.key == key && s.at_us > from_exclusive && s.at_us <= to_inclusive
            })
            .map(|s| s.n)
            .sum()
    }
}

/// What the local tier guarantees: on embedded (the whole quota), and on Redis backends with
/// health forced Down (this instance's share), on a manual clock.
mod local_tier {
    use super::*;

    per_backend!([embedded, redis, cluster] [
        random_histories_never_exceed_the_local_share,
        the_local_tier_serves_its_share_and_bounds_its_keys,
        a_flood_of_new_keys_leaves_a_victims_budget_untouched,
        fail_open_allows_everything_only_when_asked,
        blocked_keys_are_refused_until_the_block_ends_on_the_clock,
    ]);

    /// A ready instance on `b` whose in-process time is `clock`, with Redis (if any) forced
    /// Down, so the local tier decides.
    async fn local_kit(b: &Backend, clock: &ManualClock) -> Tierkit {
        let kit = b.kit_with(b.builder().clock(clock.clone())).await;
        if let Some(health) = kit.health() {
            health.force(HealthState::Down);
        }
        kit
    }

    /// Seeds of the randomized histories: `TIERKIT_SEEDS=n` runs `n` of them (default 16);
    /// `TIERKIT_SEED=s` replays the one a failure names.
    fn seeds() -> Vec<u64> {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        match (var("TIERKIT_SEED"), var("TIERKIT_SEEDS")) {
            (Some(seed), _) => vec![seed],
            (None, n) => (1..=n.unwrap_or(16)).collect(),
        }
    }

    /// One decision of a local-tier history.
    #[derive(Clone, Debug)]
    struct Step {
        key: usize,
        n: u32,
        at: Duration,
        allowed: bool,
    }

    /// The local tier's promise over a history, per key: at most `cap` units admitted in any
    /// closed window of length `window`, and at most `burst` at any one instant.
    fn check_history(
        history: &[Step],
        window: Duration,
        cap: u32,
        burst: u32,
    ) -> Result<(), String> {
        let admitted: Vec<&Step> = history.iter().filter(|s| s.allowed).collect();
        for (i, first) in admitted.iter().enumerate() {
            // The clock only moves forward, so the history is in time order.
            let rest = || admitted[i..].iter().filter(|s| s.key == first.key);
            let in_window: u32 = rest()
                .take_while(|s| s.at <= first.at + window)
                .map(|s| s.n)
                .sum();
            if in_window > cap {
                return Err(format!(
                    "{in_window} units in the window from {first:?}, cap {cap}"
                ));
            }
            let at_once: u32 = rest().take_while(|s| s.at == first.at).map(|s| s.n).sum();
            if at_once > burst {
                return Err(format!(
                    "{at_once} units at once from {first:?}, burst {burst}"
                ));
            }
        }
        Ok(())
    }

    /// Random keys, weights and clock moves (zero, a millisecond, just under a window, a window,
    /// anything in between), with probes that hold the tier to its word: a refused request is
    /// refused 1 ms before its `retry_after` and allowed at it; an allowed one's `remaining`
    /// units are allowed at once, and one more is not. Then the whole history is checked.
    async fn random_histories_never_exceed_the_local_share(b: Backend) {
        let clock = ManualClock::new();
        let kit = local_kit(&b, &clock).await;
        for seed in seeds() {
            let mut rng = fastrand::Rng::with_seed(seed);
            let limit = rng.u32(1..=24);
            let instances = rng.u32(1..=4);
            let window = Duration::from_millis(rng.u64(1..=5_000));
            // Now and then so few buckets that keys share them (stricter, never laxer).
            let buckets = if rng.u8(0..4) == 0 {
                rng.u64(1..=3)
            } else {
                100_000
            };
            let api = kit
                .limiter(format!("history{seed}"), quota(limit, window))
                .instances(instances)
                .local_max_keys(buckets)
                .build()
                .unwrap();
            let share = api.local_share();
            // Embedded: the whole quota as a burst, refilled over the window, so at most twice
            // the limit in a window. Redis down: half the share as a burst, the rest over two
            // windows, so never more than the share in any window.
            let (cap, burst) = if b.is_embedded() {
                assert_eq!(share, limit, "seed {seed}: embedded has the whole quota");
                (2 * limit, limit)
            } else {
                assert_eq!(share, (limit / instances).max(1), "seed {seed}");
                (share, share.div_ceil(2))
            };
            let context = format!("seed {seed} (limit {limit}, share {share}, {window:?})");
            let mut history = Vec::new();
            let decide = |key: usize, n: u32| {
                let api = api.clone();
                let at = clock.elapsed();
                async move {
                    let d = api.check_n(&format!("k{key}"), n).await.unwrap();
                    (
                        d,
                        Step {
                            key,
                            n,
                            at,
                            allowed: false,
                        },
                    )
                }
            };

            // A fresh key gets the whole burst at once, and no more.
            for i in 0..=burst {
                let (d, mut step) = decide(0, 1).await;
                assert_eq!(
                    d.allowed,
                    i < burst,
                    "{context}: unit {i} of a fresh key: {d:?}"
                );
                step.allowed = d.allowed;
                history.push(step);
            }
            for op in 0..300 {
                match rng.u8(0..10) {
                    0 => clock.advance(Duration::ZERO),
                    1 => clock.advance(Duration::from_millis(1)),
                    2 => clock.advance(window.saturating_sub(Duration::from_millis(1))),
                    3 => clock.advance(window),
                    4 => clock.advance(Duration::from_millis(
                        rng.u64(0..=window.as_millis() as u64),
                    )),
                    _ => {
                        let key = rng.usize(0..4);
                        // Now and then more than the burst, which the local tier never allows.
                        let n = rng.u32(1..=(burst + 1).min(limit));
                        let (d, mut step) = decide(key, n).await;
                        let context = format!("{context}, op {op}: {n} for k{key}: {d:?}");
                        assert_eq!((d.tier, d.limit), (Tier::Local, limit), "{context}");
                        step.allowed = d.allowed;
                        history.push(step);
                        if d.allowed {
                            assert!(d.retry_after.is_none() && d.remaining < burst, "{context}");
                            if d.remaining > 0 && rng.bool() {
                                let (all, mut step) = decide(key, d.remaining).await;
                                assert!(all.allowed && all.remaining == 0, "{context}: {all:?}");
                                step.allowed = true;
                                history.push(step);
                                let (more, step) = decide(key, 1).await;
                                assert!(!more.allowed, "{context}: {more:?}");
                                history.push(step);
                            }
                            continue;
                        }
                        let retry = d.retry_after.expect("a refusal says when to retry");
                        if n > burst {
                            assert_eq!(retry, window, "{context}");
                            continue;
                        }
                        assert!(!retry.is_zero() && retry <= window * 2, "{context}");
                        if rng.bool() {
                            clock.advance(retry.saturating_sub(Duration::from_millis(1)));
                            let (early, step) = decide(key, n).await;
                            assert!(!early.allowed, "{context}: early {early:?}");
                            history.push(step);
                            clock.advance(Duration::from_millis(1));
                            let (on_time, mut step) = decide(key, n).await;
                            assert!(on_time.allowed, "{context}: on time {on_time:?}");
                            step.allowed = true;
                            history.push(step);
                        }
                    }
                }
            }
            if let Err(broken) = check_history(&history, window, cap, burst) {
                panic!("{context}: {broken}");
            }
            let admitted = history.iter().filter(|s| s.allowed).count();
            assert!(
                admitted > burst as usize,
                "{context}: a weak history ({admitted})"
            );
            // Exact states for up to `buckets` keys, and as many shared buckets past them.
            assert!(
                api.local_keys() as u64 <= 2 * buckets,
                "{context}: {}",
                api.local_keys()
            );
        }
    }

    /// 300,000 keys never seen before, each spending its budget, while a victim that was active
    /// before them holds half its budget: afterwards the victim has exactly the other half,
    /// and the local tier's memory stayed within `2 × local_max_keys` states.
    async fn a_flood_of_new_keys_leaves_a_victims_budget_untouched(b: Backend) {
        let clock = ManualClock::new();
        let kit = local_kit(&b, &clock).await;
        let api = kit
            .limiter("flood", quota(8, Duration::from_secs(60)))
            .build()
            .unwrap();
        // Embedded: the whole quota at once; Down: half the share.
        let budget = if b.is_embedded() { 8 } else { 4 };
        assert_eq!(allowed_of(&api, "victim", budget / 2).await, budget / 2);
        let mut peak = 0;
        for i in 0..300_000u32 {
            let key = format!("attacker-{i}");
            api.check_n(&key, budget).await.unwrap();
            if i % 10_000 == 0 {
                peak = peak.max(api.local_keys());
            }
        }
        peak = peak.max(api.local_keys());
        println!(
            "after 300,000 new keys: {} states, about {} KiB",
            api.local_keys(),
            api.local_bytes() / 1024
        );
        assert!(peak <= 200_000, "{peak} states for a bound of 2 x 100,000");
        assert!(api.local_bytes() < 16 << 20, "{} bytes", api.local_bytes());
        assert_eq!(
            allowed_of(&api, "victim", budget).await,
            budget / 2,
            "the victim's budget is its own"
        );
    }

    async fn the_local_tier_serves_its_share_and_bounds_its_keys(b: Backend) {
        let clock = ManualClock::new();
        let kit = local_kit(&b, &clock).await;
        let api = kit
            .limiter("api", quota(5, Duration::from_secs(60)))
            .instances(3)
            .local_max_keys(100)
            .build()
            .unwrap();
        if b.is_embedded() {
            assert_eq!(api.local_share(), 5, "embedded: nobody to share with");
        } else {
            assert_eq!(api.local_share(), 1, "5 / 3 instances");
        }
        let mut got = 0;
        for _ in 0..20 {
            let d = api.check("k").await;
            assert_eq!(d.tier, Tier::Local);
            got += d.allowed as u32;
        }
        // Embedded: the whole quota at once. Down: half the share at once (at least one).
        assert_eq!(got, if b.is_embedded() { 5 } else { 1 });
        // A flood of distinct keys stays within the bound: exact states plus shared buckets.
        for i in 0..10_000 {
            api.check(&format!("flood{i}")).await;
        }
        assert!(api.local_keys() <= 200, "{}", api.local_keys());

        // Back up: Redis decides again, with its own (fresh) window.
        if let Some(health) = kit.health() {
            health.unforce();
            assert_eq!(api.tier(), Tier::Redis);
            let d = api.check("k").await;
            assert_eq!((d.allowed, d.tier), (true, Tier::Redis));
        }
    }

    async fn fail_open_allows_everything_only_when_asked(b: Backend) {
        let clock = ManualClock::new();
        let kit = local_kit(&b, &clock).await;
        let open = kit
            .limiter("open", quota(2, Duration::from_secs(60)))
            .fail_open(true)
            .build()
            .unwrap();
        let closed = kit
            .limiter("closed", quota(2, Duration::from_secs(60)))
            .build()
            .unwrap();
        if b.is_embedded() {
            // No Redis to be down: the whole quota, whatever fail_open says.
            assert_eq!(allowed_of(&open, "k", 50).await, 2);
            assert_eq!(allowed_of(&closed, "k", 50).await, 2);
            return;
        }
        for _ in 0..50 {
            let d = open.check("k").await;
            assert!(d.allowed && d.tier == Tier::Local, "{d:?}");
        }
        // The strict local share of 2: a burst of 1 now, the other unit over the window.
        assert_eq!(allowed_of(&closed, "k", 50).await, 1);
    }

    async fn blocked_keys_are_refused_until_the_block_ends_on_the_clock(b: Backend) {
        let clock = ManualClock::new();
        let kit = local_kit(&b, &clock).await;
        let block = Duration::from_millis(500);
        let api = kit
            .limiter("api", quota(2, Duration::from_millis(200)))
            .block_for(block)
            .build()
            .unwrap();
        // Embedded: a burst of the whole quota; Down: half the share.
        let burst = if b.is_embedded() { 2 } else { 1 };
        for _ in 0..burst {
            assert!(api.check("k").await.allowed);
        }
        let d = api.check("k").await;
        assert_eq!((d.allowed, d.tier), (false, Tier::Local));
        for _ in 0..20 {
            let d = api.check("k").await;
            assert_eq!((d.allowed, d.tier), (false, Tier::Blocked));
            assert_eq!(d.retry_after, Some(block), "the clock has not moved");
        }
        // Other keys are unaffected.
        assert_eq!(api.check("other").await.tier, Tier::Local);
        clock.advance(block - Duration::from_millis(1));
        let d = api.check("k").await;
        assert_eq!((d.allowed, d.tier), (false, Tier::Blocked));
        assert_eq!(d.retry_after, Some(Duration::from_millis(1)));
        clock.advance(Duration::from_millis(1));
        let d = api.check("k").await;
        assert_eq!((d.allowed, d.tier), (true, Tier::Local));
    }
}

#[tokio::test]
async fn governor_takes_over_on_kill_within_the_local_share_and_redis_takes_back() {
    let mut b = Backend::redis();
    // The local tier's time stands still: its decisions are exact.
    let clock = ManualClock::new();
    let kit = b.kit_with(b.builder().clock(clock.clone())).await;
    let api = kit
        .limiter("api", quota(30, Duration::from_secs(60)))
        .instances(3)
        .build()
        .unwrap();
    let open = kit
        .limiter("open", quota(30, Duration::from_secs(60)))
        .fail_open(true)
        .build()
        .unwrap();
    assert_eq!(api.local_share(), 10);
    for _ in 0..5 {
        assert_eq!(api.check("user").await.tier, Tier::Redis);
    }
    b.server_mut().unwrap().stop();
    let mut allowed_during = 0;
    let mut slowest = Duration::ZERO;
    for _ in 0..200 {
        let started = Instant::now();
        let d = api.check("user").await;
        slowest = slowest.max(started.elapsed());
        allowed_during += d.allowed as u32;
        if d.tier == Tier::Redis {
            panic!("Redis cannot decide while killed: {d:?}");
        }
    }
    assert!(
        slowest <= OP_TIMEOUT + Duration::from_millis(50),
        "{slowest:?}"
    );
    // Half the local share as a burst (the other half refills over two windows, so no window
    // ever sees more than the share); the clock did not move, so nothing refilled.
    assert_eq!(allowed_during, 5);
    // The failed calls and probes take health Down: from then on no call is even tried.
    assert!(
        kit.health()
            .unwrap()
            .wait_for(HealthState::Down, Duration::from_secs(2))
            .await
    );
    assert_eq!(api.tier(), Tier::Local);
    // Observed Down (not forced): fail_open allows everything.
    for _ in 0..50 {
        let d = open.check("user").await;
        assert!(d.allowed && d.tier == Tier::Local, "{d:?}");
    }

    b.server_mut().unwrap().restart();
    assert!(
        kit.health()
            .unwrap()
            .wait_for(HealthState::Up, Duration::from_secs(3))
            .await
    );
    let d = api.check("user").await;
    assert_eq!(d.tier, Tier::Redis);
    assert!(
        d.allowed,
        "a restarted (empty) Redis has the whole quota again"
    );
}

#[tokio::test]
async fn a_hung_server_never_holds_a_decision_past_the_op_timeout() {
    let mut b = Backend::redis();
    let kit = b.kit().await;
    let api = kit
        .limiter("api", quota(1000, Duration::from_secs(60)))
        .build()
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let api = api.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                let mut tiers = std::collections::HashSet::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = Instant::now();
                    let d = api.check(&format!("w{w}")).await;
                    slowest = slowest.max(started.elapsed());
                    tiers.insert(d.tier);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                (slowest, tiers)
            })
        })
        .collect();
    // Real time throughout: the workers must meet Redis answering, hung and back.
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.server_mut().unwrap().hang();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.tier(), Tier::Local);
    b.server_mut().unwrap().resume();
    assert!(
        kit.health()
            .unwrap()
            .wait_for(HealthState::Up, Duration::from_secs(3))
            .await
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        let (slowest, tiers) = w.await.unwrap();
        assert!(
            slowest <= OP_TIMEOUT + Duration::from_millis(80),
            "{slowest:?}"
        );
        assert!(
            tiers.contains(&Tier::Redis) && tiers.contains(&Tier::Local),
            "{tiers:?}"
        );
    }
}

#[tokio::test]
async fn blocked_keys_are_answered_from_memory_until_the_block_ends() {
    let b = Backend::redis();
    let clock = ManualClock::new();
    let kit = b.kit_with(b.builder().clock(clock.clone())).await;
    let window = Duration::from_millis(200);
    let block = Duration::from_millis(500);
    let api = kit
        .limiter("api", quota(2, window))
        .block_for(block)
        .build()
        .unwrap();
    assert!(api.check("k").await.allowed);
    assert!(api.check("k").await.allowed);
    let admitted = Instant::now();
    let d = api.check("k").await;
    assert_eq!((d.allowed, d.tier), (false, Tier::Redis));

    let evals = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let server = b.server().unwrap();
    let mut c = server.async_connection().await;
    let before: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    for _ in 0..20 {
        let d = api.check("k").await;
        assert_eq!((d.allowed, d.tier), (false, Tier::Blocked));
        assert_eq!(
            d.retry_after,
            Some(block),
            "the block runs on the manual clock"
        );
    }
    clock.advance(block - Duration::from_millis(1));
    let d = api.check("k").await;
    assert_eq!((d.allowed, d.tier), (false, Tier::Blocked));
    let after: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        evals(before),
        evals(after),
        "a blocked key must not reach Redis"
    );
    // Other keys are unaffected.
    assert_eq!(api.check("other").await.tier, Tier::Redis);

    // The block ends on the manual clock; Redis's window ends in real time.
    clock.advance(Duration::from_millis(1));
    tokio::time::sleep((window + Duration::from_millis(20)).saturating_sub(admitted.elapsed()))
        .await;
    let d = api.check("k").await;
    assert_eq!((d.allowed, d.tier), (true, Tier::Redis));
}

#[tokio::test]
async fn the_local_tier_never_allows_more_than_its_share_in_any_window() {
    // Redis configured but never reachable: the fallback decides from the start.
    let clock = ManualClock::new();
    let config = fast_builder()
        .redis_url("redis://127.0.0.1:1")
        .clock(clock.clone())
        .build()
        .unwrap();
    let kit = Tierkit::new(config).unwrap();
    let window = Duration::from_millis(400);
    let api = kit.limiter("api", quota(10, window)).build().unwrap();
    let started = clock.elapsed();
    let mut allowed_at = Vec::new();
    while clock.elapsed() - started < window * 5 {
        if api.check("k").await.allowed {
            allowed_at.push(clock.elapsed() - started);
        }
        clock.advance(Duration::from_millis(5));
    }
    for (i, t) in allowed_at.iter().enumerate() {
        let in_window = allowed_at[i..]
            .iter()
            .take_while(|u| **u <= *t + window)
            .count();
        assert!(
            in_window <= 10,
            "{in_window} allowed in one window from {t:?}"
        );
    }
    // A steady client still gets through: at least half the share per window.
    assert!(allowed_at.len() >= 5 * 5, "{}", allowed_at.len());
}

/// A Redis user without scripting (`-@scripting`) meets `NOPERM` on every decision: that is an
/// answer, not an outage. Health stays up, `fail_open` does not turn it into an allow-all, the
/// error policy decides (refuse by default, the local share when asked), and the report counts
/// the errors with their kind.
#[tokio::test]
async fn an_acl_user_without_scripting_is_neither_an_outage_nor_an_allow_all() {
    let server = support::RedisServer::start();
    let mut admin = server.client().get_connection().unwrap();
    let _: () = ::redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "nolua",
            "on",
            ">pw",
            "~*",
            "&*",
            "+@all",
            "-@scripting",
        ])
        .query(&mut admin)
        .unwrap();
    let url = format!("redis://nolua:pw@127.0.0.1:{}", server.port());
    let kit = support::connected(&url).await;
    let refuse = kit
        .limiter("acl", quota(5, Duration::from_secs(60)))
        .fail_open(true)
        .build()
        .unwrap();
    let local = kit
        .limiter("acl-local", quota(10, Duration::from_secs(60)))
        .instances(2)
        .fail_open(true)
        .on_redis_error(ErrorPolicy::LocalShare)
        .build()
        .unwrap();
    for _ in 0..20 {
        let d = refuse.check("k").await;
        assert_eq!((d.allowed, d.tier, d.degraded), (false, Tier::Policy, true));
        assert!(d.retry_after.is_some());
    }
    // The local share is 5, and its strict burst half of it: nowhere near 20.
    assert_eq!(allowed_of(&local, "k", 20).await, 3);
    // A policy refusal says nothing of the key: it starts no block.
    let blocking = kit
        .limiter("acl-block", quota(5, Duration::from_secs(60)))
        .block_for(Duration::from_secs(60))
        .build()
        .unwrap();
    for _ in 0..2 {
        assert_eq!(blocking.check("k").await.tier, Tier::Policy);
    }
    assert_eq!(
        kit.health().unwrap().state(),
        HealthState::Up,
        "errors that are answers never take health down"
    );
    // Health names it as what it is: a command the user may not run, to grant.
    let problem = kit.health().unwrap().status().misconfigured.expect("named");
    assert_eq!(problem.kind, MisconfigurationKind::Permission);
    assert!(problem.fix.contains("evalsha"), "{}", problem.fix);
    // The counter without a script is a decision such a user may have Redis make.
    let pipelined = kit
        .limiter("acl-pc", quota(5, Duration::from_secs(60)))
        .algorithm(Algorithm::PipelinedCounter)
        .build()
        .unwrap();
    for i in 0..8 {
        let d = pipelined.check("k").await;
        assert_eq!((d.allowed, d.tier), (i < 5, Tier::Redis), "{i}: {d:?}");
    }
    let r = refuse.report();
    assert_eq!(r.redis_errors, 20);
    assert_eq!(r.last_error_kind.as_deref(), Some("NOPERM"));
    assert!(r.degraded && r.takeovers == 1);
    let report = kit.health_report().await;
    let acl = &report.rate_limiter.limiters[0];
    assert_eq!((acl.name.as_str(), acl.redis_errors), ("acl", 20));
    assert!(acl.last_error.is_some());
    let public = report.public();
    assert!(public.rate_limiter.limiters[0].last_error.is_none());
    assert_eq!(
        public.rate_limiter.limiters[0].last_error_kind.as_deref(),
        Some("NOPERM")
    );
}

/// The algorithm is part of the key: a limiter switched from the log to the counter (and back)
/// never meets the other's data, so Redis keeps deciding. A foreign value of the wrong type on
/// a limiter key is an error reply for the policy, not an outage.
#[tokio::test]
async fn an_algorithm_switch_stays_on_redis_and_a_foreign_key_is_not_an_outage() {
    let server = support::RedisServer::start();
    let kit = support::connected(&server.url()).await;
    for algorithm in [
        Algorithm::SlidingLog,
        Algorithm::SlidingCounter,
        Algorithm::SlidingLog,
    ] {
        let l = kit
            .limiter("switch", quota(3, Duration::from_secs(60)))
            .algorithm(algorithm)
            .build()
            .unwrap();
        let d = l.check("k").await;
        assert_eq!((d.tier, d.degraded), (Tier::Redis, false), "{algorithm:?}");
        assert_eq!(l.report().redis_errors, 0);
    }
    let mut admin = server.client().get_connection().unwrap();
    let prefix = kit.config().prefix().to_owned();
    let _: () = ::redis::cmd("SET")
        .arg(format!("{prefix}:rl:switch:log:foreign"))
        .arg("not a log")
        .query(&mut admin)
        .unwrap();
    let l = kit
        .limiter("switch", quota(3, Duration::from_secs(60)))
        .build()
        .unwrap();
    let d = l.check("foreign").await;
    assert_eq!((d.allowed, d.tier), (false, Tier::Policy));
    assert_eq!(l.report().last_error_kind.as_deref(), Some("WRONGTYPE"));
    assert_eq!(kit.health().unwrap().state(), HealthState::Up);
    // Other keys are untouched.
    assert_eq!(l.check("k").await.tier, Tier::Redis);
}

/// Every counter of the counter without a script expires: the ones this instance made, and the
/// ones made again after a reset or after Redis lost its data (a restart, an eviction), which
/// this instance had already set an expiry on under the same name.
#[tokio::test]
async fn the_pipelined_counters_always_expire() {
    let server = support::RedisServer::start();
    let kit = support::connected(&server.url()).await;
    let api = kit
        .limiter("exp", quota(100, Duration::from_secs(60)))
        .algorithm(Algorithm::PipelinedCounter)
        .build()
        .unwrap();
    let client = server.client();
    let ttls = || -> Vec<i64> {
        let mut admin = client.get_connection().unwrap();
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg("*:pc:*")
            .query(&mut admin)
            .unwrap();
        keys.iter()
            .map(|k| ::redis::cmd("PTTL").arg(k).query(&mut admin).unwrap())
            .collect()
    };
    let expiring = |ttls: Vec<i64>| !ttls.is_empty() && ttls.iter().all(|t| *t > 0);
    assert!(api.check("k").await.allowed);
    assert!(expiring(ttls()));
    api.reset("k").await.unwrap();
    assert!(ttls().is_empty());
    assert!(api.check("k").await.allowed);
    assert!(expiring(ttls()), "remade after a reset");
    let _: () = ::redis::cmd("FLUSHALL")
        .query(&mut client.get_connection().unwrap())
        .unwrap();
    assert!(api.check("k").await.allowed);
    assert!(expiring(ttls()), "remade after Redis lost it");
    assert_eq!(api.peek("k").await.remaining, 99);
}
