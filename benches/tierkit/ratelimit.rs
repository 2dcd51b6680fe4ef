//! Rate-limit decisions: tierkit's Redis decision next to a raw `EVALSHA` of the same script
//! through redis-rs, tierkit's local decision next to a raw keyed governor `check`, and the
//! throughput of 64 concurrent decisions (counter and log) next to 64 concurrent raw `GET`s.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use tierkit::ratelimit::{Algorithm, Quota};
use tierkit::{Config, Tierkit};

use crate::cache::{concurrent, TASKS};
use crate::runtimes;
use crate::support::RedisServer;

const KEYS: usize = 10_000;

fn next(counter: &AtomicUsize) -> usize {
    counter.fetch_add(1, Ordering::Relaxed) % KEYS
}

pub fn redis_decision(c: &mut Criterion) {
    let server = RedisServer::start();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("user:{i}")).collect();
    // A short window keeps every sorted set small, so both sides do the same bounded work.
    let window = Duration::from_millis(100);
    let quota = Quota::new(1_000_000, window).unwrap();
    for (flavor, rt) in runtimes() {
        let mut group = c.benchmark_group(format!("ratelimit_redis/{flavor}"));
        group.throughput(Throughput::Elements(1));
        let (kit, limiter, conn) = rt.block_on(async {
            let kit = crate::support::connected_with(
                Config::builder().redis_url(server.url()).build().unwrap(),
            )
            .await;
            let limiter = kit.limiter("bench", quota).build().unwrap();
            let conn = server.fastest_connection().await;
            (kit, limiter, conn)
        });
        let script = redis::Script::new(Algorithm::SlidingLog.lua().expect("a script"));
        let window_us = window.as_micros() as u64;
        let i = AtomicUsize::new(0);
        group.bench_function("raw_evalsha", |b| {
            b.to_async(&rt).iter(|| async {
                let mut conn = conn.clone();
                let mut inv = script.key(format!("raw:{}", keys[next(&i)]));
                // ARGV as the limiter sends it: units, mode, one quota of window and limit.
                inv.arg(1).arg("check").arg(1).arg(window_us).arg(1_000_000);
                let reply: (i64, i64, i64, i64, u64, u64, usize) =
                    inv.invoke_async(&mut conn).await.unwrap();
                reply
            })
        });
        group.bench_function("tierkit_check", |b| {
            b.to_async(&rt).iter(|| async {
                let d = limiter.check(&keys[next(&i)]).await;
                assert!(d.allowed);
                d
            })
        });
        group.finish();
        print_commandstats(&server, &format!("ratelimit_redis/{flavor}"));
        drop(kit);
    }
}

pub fn local_decision(c: &mut Criterion) {
    let keys: Vec<String> = (0..KEYS).map(|i| format!("user:{i}")).collect();
    let limit = NonZeroU32::new(1_000_000).unwrap();
    for (flavor, rt) in runtimes() {
        let mut group = c.benchmark_group(format!("ratelimit_local/{flavor}"));
        group.throughput(Throughput::Elements(1));
        let raw = governor::RateLimiter::keyed(governor::Quota::per_second(limit));
        // The same check that also says how many units are left, as tierkit's decision does
        // (what a service sending rate-limit headers needs): governor's state middleware.
        let raw_info = governor::RateLimiter::keyed(governor::Quota::per_second(limit))
            .with_middleware::<governor::middleware::StateInformationMiddleware>();
        let kit = Tierkit::embedded();
        let limiter = kit
            .limiter(
                "bench",
                Quota::new(limit.get(), Duration::from_secs(1)).unwrap(),
            )
            .build()
            .unwrap();
        let i = AtomicUsize::new(0);
        group.bench_function("raw_governor_check_key", |b| {
            b.to_async(&rt)
                .iter(|| async { raw.check_key(&keys[next(&i)]).is_ok() })
        });
        group.bench_function("raw_governor_check_key_remaining", |b| {
            b.to_async(&rt).iter(|| async {
                raw_info
                    .check_key(&keys[next(&i)])
                    .map_or(0, |s| s.remaining_burst_capacity())
            })
        });
        group.bench_function("tierkit_check", |b| {
            b.to_async(&rt)
                .iter(|| async { limiter.check(&keys[next(&i)]).await.allowed })
        });
        group.finish();
    }
}

/// 64 concurrent decisions in Redis, sliding-window counter and sliding-window log, next to 64
/// concurrent raw `GET`s of a small value on one multiplexed connection (the cheapest Redis
/// round trip) and 64 concurrent raw `EVALSHA`s of the counter script (what the script alone
/// costs). Afterwards it prints Redis's own time per call (`INFO commandstats`), which tells
/// the server's share from the client's.
pub fn redis_decision_64_tasks(c: &mut Criterion) {
    let server = RedisServer::start();
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("user:{i}")).collect());
    let window = Duration::from_millis(100);
    let quota = Quota::new(1_000_000, window).unwrap();
    for (flavor, rt) in runtimes() {
        let mut group = c.benchmark_group(format!("ratelimit_redis_64_tasks/{flavor}"));
        group.throughput(Throughput::Elements(TASKS as u64));
        let (kit, counter, log, pipelined, conn) = rt.block_on(async {
            let kit = crate::support::connected_with(
                Config::builder().redis_url(server.url()).build().unwrap(),
            )
            .await;
            let counter = kit
                .limiter("bench_counter", quota)
                .algorithm(Algorithm::SlidingCounter)
                .build()
                .unwrap();
            let log = kit
                .limiter("bench_log", quota)
                .algorithm(Algorithm::SlidingLog)
                .build()
                .unwrap();
            let pipelined = kit
                .limiter("bench_pipelined", quota)
                .algorithm(Algorithm::PipelinedCounter)
                .build()
                .unwrap();
            let mut conn = server.fastest_connection().await;
            for k in keys.iter() {
                let _: () = redis::cmd("SET")
                    .arg(format!("raw:{k}"))
                    .arg("1")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
            (kit, counter, log, pipelined, conn)
        });
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut server.client().get_connection().unwrap())
            .unwrap();
        group.bench_function(BenchmarkId::new("raw_get", "64_tasks"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (conn, keys) = (conn.clone(), keys.clone());
                concurrent(iters, move |i| {
                    let mut conn = conn.clone();
                    let key = format!("raw:{}", keys[i % KEYS]);
                    async move {
                        let v: Option<String> = redis::cmd("GET")
                            .arg(key)
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        assert!(v.is_some());
                    }
                })
            })
        });
        let script = Arc::new(redis::Script::new(
            Algorithm::SlidingCounter.lua().expect("a script"),
        ));
        let window_us = window.as_micros() as u64;
        group.bench_function(BenchmarkId::new("raw_evalsha_counter", "64_tasks"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (conn, keys, script) = (conn.clone(), keys.clone(), script.clone());
                concurrent(iters, move |i| {
                    let (mut conn, script) = (conn.clone(), script.clone());
                    let key = format!("raw:rl:{}", keys[i % KEYS]);
                    async move {
                        let mut inv = script.key(key);
                        inv.arg(1).arg("check").arg(1).arg(window_us).arg(1_000_000);
                        let reply: (i64, i64, i64, i64, u64, u64, usize) =
                            inv.invoke_async(&mut conn).await.unwrap();
                        assert_eq!(reply.0, 1);
                    }
                })
            })
        });
        // What the counter without a script sends: one pipeline per decision.
        group.bench_function(
            BenchmarkId::new("raw_pipeline_incrby_get", "64_tasks"),
            |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (conn, keys) = (conn.clone(), keys.clone());
                    concurrent(iters, move |i| {
                        let mut conn = conn.clone();
                        let key = format!("raw:pc:{{{}}}", keys[i % KEYS]);
                        async move {
                            let (count, _prev): (i64, Option<i64>) = redis::pipe()
                                .cmd("INCRBY")
                                .arg(format!("{key}:1"))
                                .arg(1)
                                .cmd("PEXPIRE")
                                .arg(format!("{key}:1"))
                                .arg(200)
                                .ignore()
                                .cmd("GET")
                                .arg(format!("{key}:0"))
                                .query_async(&mut conn)
                                .await
                                .unwrap();
                            assert!(count > 0);
                        }
                    })
                })
            },
        );
        for (name, limiter) in [
            ("tierkit_counter", &counter),
            ("tierkit_log", &log),
            ("tierkit_pipelined", &pipelined),
        ] {
            group.bench_function(BenchmarkId::new(name, "64_tasks"), |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (limiter, keys) = (limiter.clone(), keys.clone());
                    concurrent(iters, move |i| {
                        let (limiter, keys) = (limiter.clone(), keys.clone());
                        async move {
                            let d = limiter.check(&keys[i % KEYS]).await;
                            // A Redis decision, not the local fallback's.
                            assert!(d.allowed && d.tier == tierkit::ratelimit::Tier::Redis);
                        }
                    })
                })
            });
        }
        group.finish();
        print_commandstats(&server, &format!("ratelimit_redis_64_tasks/{flavor}"));
        drop(kit);
    }
}

/// Prints Redis's own time per `GET` and `EVALSHA` so far (`INFO commandstats`), which tells
/// the server's share of a decision from the client's.
fn print_commandstats(server: &RedisServer, group: &str) {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.client().get_connection().unwrap())
        .unwrap();
    for line in stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_get:") || l.starts_with("cmdstat_evalsha:"))
    {
        eprintln!("{group}: redis-server {line}");
    }
}
