//! Session validation: tierkit's `validate` answered by Redis next to the raw Redis read it
//! needs (one `HGET` of the record), and answered from the local copy (health
//! forced `Down`) next to a raw in-process map read.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput};
use tierkit::health::HealthState;
use tierkit::session::{DeviceKind, NewSession, Validation};
use tierkit::Config;

use crate::runtimes;
use crate::support::RedisServer;

const SESSIONS: usize = 1_000;

pub fn validate(c: &mut Criterion) {
    let server = RedisServer::start();
    for (flavor, rt) in runtimes() {
        let mut group = c.benchmark_group(format!("session_validate/{flavor}"));
        group.throughput(Throughput::Elements(1));
        let (kit, sessions, ids, conn) = rt.block_on(async {
            let kit = crate::support::connected_with(
                Config::builder().redis_url(server.url()).build().unwrap(),
            )
            .await;
            // Touches at most once an hour: a validation is one read, as in production.
            let sessions = kit
                .sessions()
                .touch_interval(Duration::from_secs(3600))
                .build()
                .unwrap();
            let mut ids = Vec::new();
            for i in 0..SESSIONS {
                let new = NewSession::new(format!("user-{i}"))
                    .user_agent("Mozilla/5.0 (X11; Linux x86_64)")
                    .ip("203.0.113.7")
                    .device(DeviceKind::Desktop, "Firefox on Linux");
                ids.push(
                    sessions
                        .create(new)
                        .await
                        .unwrap()
                        .session_id
                        .expose()
                        .to_owned(),
                );
            }
            let conn = server.fastest_connection().await;
            (kit, sessions, ids, conn)
        });
        // The keys validate reads: found by the same scan a service's ops would use.
        let keys: Vec<String> = rt.block_on(async {
            let mut c = conn.clone();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("tierkit:s:*:sess:*")
                .query_async(&mut c)
                .await
                .unwrap();
            keys
        });
        let i = AtomicUsize::new(0);
        let next = || i.fetch_add(1, Ordering::Relaxed) % SESSIONS;
        group.bench_function("raw_hget", |b| {
            b.to_async(&rt).iter(|| async {
                let mut c = conn.clone();
                let blob: Vec<u8> = redis::cmd("HGET")
                    .arg(&keys[next()])
                    .arg("d")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                blob
            })
        });
        group.bench_function("tierkit_validate_redis", |b| {
            b.to_async(&rt).iter(|| async {
                assert!(matches!(
                    sessions.validate(&ids[next()]).await,
                    Validation::Valid(_)
                ));
            })
        });
        let local: moka::sync::Cache<String, String> = moka::sync::Cache::new(10_000);
        for id in &ids {
            local.insert(id.clone(), id.clone());
        }
        kit.health().unwrap().force(HealthState::Down);
        group.bench_function("raw_moka_get", |b| {
            b.to_async(&rt)
                .iter(|| async { local.get(&ids[next()]).unwrap() })
        });
        group.bench_function("tierkit_validate_local_copy", |b| {
            b.to_async(&rt).iter(|| async {
                assert!(matches!(
                    sessions.validate(&ids[next()]).await,
                    Validation::Valid(_)
                ));
            })
        });
        kit.health().unwrap().unforce();
        group.finish();
    }
}
