//! The rate limiter against real redis-server processes: exactness against a reference model,
//! the counter's bound, takeover by governor on kill and hang, blocking, clock drift. `suite!`
//! runs the shared behaviour on a single server and on a 3+3 Redis Cluster.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{connected, connected_with, fast_cluster_config, RedisCluster, RedisServer};
use tierkit::health::HealthState;
use tierkit::ratelimit::{Algorithm, Decision, Quota, Tier};
use tierkit::{Error, Tierkit};

const OP_TIMEOUT: Duration = Duration::from_millis(100);

fn quota(limit: u32, window: Duration) -> Quota {
    Quota::new(limit, window).unwrap()
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

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

#[tokio::test]
async fn governor_takes_over_on_kill_within_the_local_share_and_redis_takes_back() {
    let mut server = RedisServer::start();
    let kit = connected(&server.url()).await;
    let api = kit
        .limiter("api", quota(30, Duration::from_secs(60)))
        .instances(3)
        .build()
        .unwrap();
    assert_eq!(api.local_share(), 10);
    for _ in 0..5 {
        assert_eq!(api.check("user").await.tier, Tier::Redis);
    }
    server.stop();
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
    // ever sees more than the share), plus at most one unit refilled during the run.
    assert!((5..=6).contains(&allowed_during), "{allowed_during}");
    // The failed calls and probes take health Down: from then on no call is even tried.
    assert!(
        kit.health()
            .unwrap()
            .wait_for(HealthState::Down, Duration::from_secs(2))
            .await
    );
    assert_eq!(api.tier(), Tier::Local);

    server.restart();
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
    let mut server = RedisServer::start();
    let kit = connected(&server.url()).await;
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
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.hang();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.tier(), Tier::Local);
    server.resume();
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
async fn fail_open_allows_everything_only_when_asked() {
    let mut server = RedisServer::start();
    let kit = connected(&server.url()).await;
    let open = kit
        .limiter("open", quota(2, Duration::from_secs(60)))
        .fail_open(true)
        .build()
        .unwrap();
    let closed = kit
        .limiter("closed", quota(2, Duration::from_secs(60)))
        .build()
        .unwrap();
    server.stop();
    assert!(
        kit.health()
            .unwrap()
            .wait_for(HealthState::Down, Duration::from_secs(2))
            .await
    );
    for _ in 0..50 {
        let d = open.check("k").await;
        assert!(d.allowed && d.tier == Tier::Local);
    }
    // The strict local share of 2: a burst of 1 now, the other unit over the window.
    let allowed: u32 = futures_sum(&closed).await;
    assert_eq!(allowed, 1);
}

async fn futures_sum(limiter: &tierkit::ratelimit::Limiter) -> u32 {
    let mut allowed = 0;
    for _ in 0..50 {
        allowed += limiter.check("k").await.allowed as u32;
    }
    allowed
}

#[tokio::test]
async fn blocked_keys_are_answered_from_memory_until_the_block_ends() {
    let server = RedisServer::start();
    let kit = connected(&server.url()).await;
    let api = kit
        .limiter("api", quota(2, Duration::from_millis(200)))
        .block_for(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(api.check("k").await.allowed);
    assert!(api.check("k").await.allowed);
    let d = api.check("k").await;
    assert_eq!((d.allowed, d.tier), (false, Tier::Redis));

    let evals = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let mut c = server.async_connection().await;
    let before: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    for _ in 0..20 {
        let d = api.check("k").await;
        assert_eq!((d.allowed, d.tier), (false, Tier::Blocked));
        assert!(d.retry_after.unwrap() <= Duration::from_millis(500));
    }
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

    tokio::time::sleep(Duration::from_millis(550)).await;
    let d = api.check("k").await;
    assert_eq!((d.allowed, d.tier), (true, Tier::Redis));
}

#[tokio::test]
async fn embedded_mode_serves_the_whole_quota_and_bounds_its_keys() {
    let kit = Tierkit::embedded();
    let api = kit
        .limiter("api", quota(5, Duration::from_secs(60)))
        .instances(3)
        .local_max_keys(100)
        .build()
        .unwrap();
    assert_eq!(api.local_share(), 5, "embedded: nobody to share with");
    let mut got = 0;
    for _ in 0..20 {
        let d = api.check("k").await;
        assert_eq!(d.tier, Tier::Local);
        got += d.allowed as u32;
    }
    assert_eq!(got, 5);
    // A flood of distinct keys stays within the bucket bound.
    for i in 0..10_000 {
        api.check(&format!("flood{i}")).await;
    }
    assert!(api.local_keys() <= 100, "{}", api.local_keys());
}

#[tokio::test]
async fn the_local_tier_never_allows_more_than_its_share_in_any_window() {
    // Redis configured but never reachable: the fallback decides from the start.
    let kit = Tierkit::new(support::fast_config("redis://127.0.0.1:1")).unwrap();
    let window = Duration::from_millis(400);
    let api = kit.limiter("api", quota(10, window)).build().unwrap();
    let started = Instant::now();
    let mut allowed_at = Vec::new();
    while started.elapsed() < window * 5 {
        if api.check("k").await.allowed {
            allowed_at.push(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (i, t) in allowed_at.iter().enumerate() {
        let in_window = allowed_at[i..]
            .iter()
            .take_while(|u| **u < *t + window)
            .count();
        assert!(
            in_window <= 10,
            "{in_window} allowed in one window from {t:?}"
        );
    }
    // A steady client still gets through: at least half the share per window.
    assert!(allowed_at.len() >= 5 * 5, "{}", allowed_at.len());
}

/// Where a shared test runs: its own redis-server, or the shared cluster under a prefix of
/// its own (every instance a test makes shares that prefix, as a service's instances do).
enum Backend {
    Server(RedisServer),
    Cluster {
        cluster: Arc<RedisCluster>,
        config: Box<tierkit::Config>,
    },
}

impl Backend {
    fn redis() -> Backend {
        Backend::Server(RedisServer::start())
    }

    fn cluster() -> Backend {
        let cluster = RedisCluster::shared();
        let config = fast_cluster_config(&cluster);
        Backend::Cluster {
            cluster,
            config: Box::new(config),
        }
    }

    /// One more tierkit instance on this backend, once Redis is up.
    async fn kit(&self) -> Tierkit {
        match self {
            Backend::Server(server) => connected(&server.url()).await,
            Backend::Cluster { config, .. } => connected_with((**config).clone()).await,
        }
    }

    /// `cmd` on `{prefix}:{key}`, sent to the node holding it.
    fn query<T: redis::FromRedisValue>(&self, kit: &Tierkit, mut cmd: redis::Cmd, key: &str) -> T {
        let key = format!("{}:{key}", kit.config().prefix());
        let node = match self {
            Backend::Server(server) => server,
            Backend::Cluster { cluster, .. } => {
                &cluster.nodes()[cluster.primary_of(&key).expect("a primary serves the key")]
            }
        };
        let mut con = node.client().get_connection().unwrap();
        cmd.arg(&key).query(&mut con).unwrap()
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

/// Drives a random schedule through `instances` limiters (each on its own tierkit instance,
/// with an application clock skewed by minutes) sharing one Redis.
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
        let kit = backend.kit().await;
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

/// Units admitted for `key` in the window `(t - w, t]`.
fn admitted_in(seen: &[Seen], key: usize, from_exclusive: i64, to_inclusive: i64) -> u32 {
    seen.iter()
        .filter(|s| {
            s.allowed && s.key == key && s.at_us > from_exclusive && s.at_us <= to_inclusive
        })
        .map(|s| s.n)
        .sum()
}

/// The limiter's behaviour on Redis, written once for a single server and for a cluster.
macro_rules! suite {
    ($module:ident, $backend:ident) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn redis_decisions_carry_every_field_and_weighted_requests_count_n() {
                let backend = Backend::$backend();
                let kit = backend.kit().await;
                let api = kit
                    .limiter("api", quota(10, Duration::from_secs(60)))
                    .build()
                    .unwrap();
                let d = api.check("user:1").await;
                assert!(d.allowed);
                assert_eq!((d.limit, d.remaining, d.tier), (10, 9, Tier::Redis));
                assert!(
                    d.reset_after > Duration::from_secs(59)
                        && d.reset_after <= Duration::from_secs(60)
                );
                assert_eq!(d.retry_after, None);
                assert!(d.decided_at.is_some());
                let d = api.check_n("user:1", 9).await.unwrap();
                assert!(d.allowed);
                assert_eq!(d.remaining, 0);
                let d = api.check_n("user:1", 2).await.unwrap();
                assert!(!d.allowed);
                let retry = d.retry_after.unwrap();
                assert!(
                    retry > Duration::from_secs(59) && retry <= Duration::from_secs(60),
                    "{retry:?}"
                );
                // Another key has its own budget.
                assert!(api.check("user:2").await.allowed);

                // Keys live under the limiter's name and expire on their own.
                let pttl: i64 = backend.query(&kit, redis::cmd("PTTL"), "rl:api:user:1");
                assert!(pttl > 59_000 && pttl <= 60_000, "{pttl}");
            }

            #[tokio::test]
            async fn the_log_records_only_admitted_requests() {
                let backend = Backend::$backend();
                let kit = backend.kit().await;
                let api = kit
                    .limiter("api", quota(10, Duration::from_secs(60)))
                    .build()
                    .unwrap();
                let mut allowed = 0;
                for _ in 0..500 {
                    allowed += api.check("greedy").await.allowed as u32;
                }
                assert_eq!(allowed, 10);
                let size: u64 = backend.query(&kit, redis::cmd("ZCARD"), "rl:api:greedy");
                assert_eq!(size, 10, "a client ignoring refusals must not grow the key");
            }

            #[tokio::test]
            async fn the_sliding_log_matches_the_reference_model_across_skewed_instances() {
                let backend = Backend::$backend();
                let window = Duration::from_millis(300);
                let w = window.as_micros() as i64;
                for seed in 1..=3u64 {
                    let limit = 4 + seed as u32 * 2;
                    let seen = stress(&backend, Algorithm::SlidingLog, limit, window, seed).await;
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

            #[tokio::test]
            async fn the_sliding_counter_stays_within_its_documented_bound() {
                let backend = Backend::$backend();
                let window = Duration::from_millis(300);
                let w = window.as_micros() as i64;
                for seed in 1..=2u64 {
                    let limit = 10;
                    let seen = stress(
                        &backend,
                        Algorithm::SlidingCounter,
                        limit,
                        window,
                        10 + seed,
                    )
                    .await;
                    for s in seen.iter().filter(|s| s.allowed) {
                        // Any sliding window: at most 2 x limit.
                        let sliding = admitted_in(&seen, s.key, s.at_us - w, s.at_us);
                        assert!(
                            sliding <= 2 * limit,
                            "seed {seed}: {sliding} in a sliding window"
                        );
                        // The fixed window (aligned on the server clock) holding it: at most limit.
                        let start = s.at_us - s.at_us.rem_euclid(w);
                        let fixed = admitted_in(&seen, s.key, start - 1, start + w - 1);
                        assert!(fixed <= limit, "seed {seed}: {fixed} in a fixed window");
                    }
                    assert!(seen.iter().filter(|s| s.allowed).count() > 20);
                }
            }

            #[tokio::test]
            async fn waiting_retry_after_is_enough_for_both_algorithms() {
                let backend = Backend::$backend();
                let kit = backend.kit().await;
                for algorithm in [Algorithm::SlidingLog, Algorithm::SlidingCounter] {
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
                        tokio::time::sleep(retry + Duration::from_millis(5)).await;
                        let d = api.check("k").await;
                        assert!(
                            d.allowed,
                            "{algorithm:?} round {round}: still refused after {retry:?}: {d:?}"
                        );
                    }
                }
            }

            #[tokio::test]
            async fn a_large_weighted_request_is_one_cheap_script_call() {
                let backend = Backend::$backend();
                let kit = backend.kit().await;
                let api = kit
                    .limiter("bulk", quota(5_000, Duration::from_secs(60)))
                    .build()
                    .unwrap();
                let d = api.check_n("k", 5_000).await.unwrap();
                assert_eq!((d.allowed, d.tier, d.remaining), (true, Tier::Redis, 0));
                let size: u64 = backend.query(&kit, redis::cmd("ZCARD"), "rl:bulk:k");
                assert_eq!(size, 5_000);
                assert!(!api.check("k").await.allowed);
            }
        }
    };
}

suite!(on_redis, redis);
suite!(on_cluster, cluster);
