//! Fault injection (feature `testing`) driving the degraded paths of the example service
//! (`examples/degraded.rs`): a hung, an unreachable, a slow and a flaky Redis, made without
//! signalling the server, and the service answering through each of them. This file is what
//! the README's "Testing your service's degraded mode" shows.

#![cfg(all(feature = "tower", feature = "testing"))]

mod support;

#[path = "../examples/degraded.rs"]
#[allow(dead_code)]
mod degraded;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use degraded::{app, call};
use support::RedisServer;
use tierkit::health::HealthState;
use tierkit::Error;

const CLIENT: &str = "203.0.113.7:40000";

#[tokio::test]
async fn the_service_answers_through_a_hung_unreachable_slow_and_flaky_redis() {
    let server = RedisServer::start();
    let kit = support::connected(&server.url()).await;
    let faults = kit.faults().expect("Redis is configured");
    let health = kit.health().unwrap();
    let (router, state) = app(&kit, 1_000).unwrap();

    through_a_hang_and_an_outage(&kit, &router).await;

    // Slower than the op timeout: each call times out, and the service still answers.
    faults.latency(Duration::from_millis(150));
    let conn = kit.conn().unwrap();
    let slow = conn.query::<String>(&redis::cmd("PING")).await;
    assert!(matches!(slow, Err(Error::Timeout(_))), "{slow:?}");
    let (status, _, _) = call(&router, CLIENT, "/events/4").await;
    assert_eq!(status, StatusCode::OK);
    // Slow but within it: answered, late.
    faults.latency(Duration::from_millis(30));
    assert!(
        health
            .wait_for(HealthState::Up, Duration::from_secs(5))
            .await
    );
    let started = Instant::now();
    let pong: String = conn.query(&redis::cmd("PING")).await.unwrap();
    assert_eq!(
        (
            pong.as_str(),
            started.elapsed() >= Duration::from_millis(30)
        ),
        ("PONG", true)
    );
    faults.heal();

    // Flaky: a third of the calls fail; not one request does.
    faults.seed(3);
    faults.error_rate(0.3).unwrap();
    let before = faults.injected();
    for id in 10..40 {
        let (status, _, _) = call(&router, CLIENT, &format!("/events/{id}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(faults.injected() > before, "some calls met the fault");
    faults.heal();
    assert!(state.queries.load(Ordering::Relaxed) >= 30);
}

/// Embedded with fault injection: the same service, with no Redis anywhere, goes down the same
/// degraded paths when the in-process tiers that stand in for Redis are hung or unreachable.
#[tokio::test]
async fn an_embedded_service_goes_down_the_same_degraded_paths() {
    let config = support::fast_builder()
        .fault_injection(true)
        .build()
        .unwrap();
    let kit = tierkit::Tierkit::new(config).unwrap();
    assert!(kit.is_embedded());
    let faults = kit.faults().expect("fault injection is on");
    let health = kit.health().expect("the stand-in has a health");
    assert_eq!(health.state(), HealthState::Up, "in process: up at once");
    // Nothing to be coherent with: ready as soon as the stand-in is up.
    let started = Instant::now();
    assert!(kit.ready(Duration::from_secs(2)).await);
    assert!(started.elapsed() < Duration::from_secs(1));
    let (router, state) = app(&kit, 1_000).unwrap();

    through_a_hang_and_an_outage(&kit, &router).await;
    assert!(faults.injected() > 0);
    assert!(state.queries.load(Ordering::Relaxed) >= 3);
}

/// Embedded sessions behind a hung stand-in: a session validated here still validates from its
/// local copy, an unknown one is `Unavailable`, nothing new is created, and a revocation made
/// meanwhile holds here at once and everywhere once the stand-in answers again.
#[tokio::test]
async fn embedded_sessions_validate_from_their_copy_and_replay_revocations() {
    use tierkit::session::{NewSession, Validation};

    let config = support::fast_builder()
        .fault_injection(true)
        .build()
        .unwrap();
    let kit = tierkit::Tierkit::new(config).unwrap();
    let sessions = kit.sessions().build().unwrap();
    let faults = kit.faults().unwrap();
    let health = kit.health().unwrap();
    let kept = sessions.create(NewSession::new("ada")).await.unwrap();
    let revoked = sessions.create(NewSession::new("ada")).await.unwrap();
    for s in [&kept, &revoked] {
        let v = sessions.validate(s.session_id.expose()).await;
        assert!(matches!(v, Validation::Valid(_)), "{v:?}");
    }

    faults.hang();
    assert!(sessions.create(NewSession::new("bob")).await.is_err());
    assert!(
        health
            .wait_for(HealthState::Down, Duration::from_secs(2))
            .await
    );
    let v = sessions.validate(kept.session_id.expose()).await;
    assert!(matches!(v, Validation::Valid(_)), "from the copy: {v:?}");
    // Revoked while down: the store cannot take it, this instance holds it at once.
    assert!(sessions.revoke(revoked.session_id.expose()).await.is_err());
    let v = sessions.validate(revoked.session_id.expose()).await;
    assert!(matches!(v, Validation::Invalid), "{v:?}");
    let unknown = sessions.validate("no-such-session").await;
    assert!(
        matches!(unknown, Validation::Invalid | Validation::Unavailable),
        "{unknown:?}"
    );

    faults.heal();
    assert!(
        health
            .wait_for(HealthState::Up, Duration::from_secs(5))
            .await
    );
    // The revocation reaches the store once it answers again: it counts the session off (no
    // read here prunes it first: the count is the store's own).
    let mut active = i64::MAX;
    for _ in 0..50 {
        active = sessions.stats().await.unwrap().active;
        if active == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(active, 1, "the revocation was replayed");
    assert_eq!(sessions.list("ada").await.unwrap().len(), 1);
    let v = sessions.validate(kept.session_id.expose()).await;
    assert!(matches!(v, Validation::Valid(_)), "{v:?}");
}

/// Embedded cache behind a failing stand-in: every read still answers from L1 or the loader,
/// and a change reaches only the L1 (counted) while the stand-in is down, as with Redis.
#[tokio::test]
async fn an_embedded_cache_reports_where_its_changes_reached() {
    use tierkit::cache::Reach;

    let config = support::fast_builder()
        .fault_injection(true)
        .build()
        .unwrap();
    let kit = tierkit::Tierkit::new(config).unwrap();
    let ns = kit.namespace::<u64>("counts").build().unwrap();
    let (faults, health) = (kit.faults().unwrap(), kit.health().unwrap());
    assert_eq!(ns.set("a", 1).await.unwrap(), Reach::AllTiers);

    faults.unreachable();
    assert_eq!(ns.set("a", 2).await.unwrap(), Reach::L1Only);
    assert!(
        health
            .wait_for(HealthState::Down, Duration::from_secs(2))
            .await
    );
    assert_eq!(ns.invalidate("a").await.unwrap(), Reach::L1Only);
    assert_eq!(ns.get("a").await.map(|v| *v), None, "invalidated here");
    assert_eq!(ns.set("b", 3).await.unwrap(), Reach::L1Only);
    assert_eq!(ns.get("b").await.map(|v| *v), Some(3), "L1 still answers");
    let stats = ns.stats();
    assert!(stats.l2_errors >= 1 && stats.l2_skipped >= 2, "{stats:?}");

    faults.heal();
    assert!(
        health
            .wait_for(HealthState::Up, Duration::from_secs(5))
            .await
    );
    assert_eq!(ns.set("a", 4).await.unwrap(), Reach::AllTiers);
}

/// Embedded, the same seed gives the same faults to the same calls too.
#[tokio::test]
async fn an_embedded_seed_replays_the_same_faults() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let config = support::fast_builder()
            .fault_injection(true)
            .fail_threshold(1_000)
            .build()
            .unwrap();
        let kit = tierkit::Tierkit::new(config).unwrap();
        let limiter = kit
            .limiter(
                "seeded",
                tierkit::ratelimit::Quota::new(1_000, Duration::from_secs(60)).unwrap(),
            )
            .build()
            .unwrap();
        let faults = kit.faults().unwrap();
        faults.seed(11);
        faults.error_rate(0.5).unwrap();
        let mut degraded = Vec::new();
        for _ in 0..40 {
            degraded.push(limiter.check("k").await.degraded);
        }
        runs.push(degraded);
    }
    assert_eq!(runs[0], runs[1]);
    let failed = runs[0].iter().filter(|d| **d).count();
    assert!((8..=32).contains(&failed), "{failed} of 40 at 0.5");
}

/// The same seed gives the same faults to the same calls: a failing test replays.
#[tokio::test]
async fn a_seed_replays_the_same_faults() {
    let server = RedisServer::start();
    let mut runs = Vec::new();
    for _ in 0..2 {
        // Failures here must not take health down between calls, or later calls would not
        // draw at all: a threshold no run of 40 reaches.
        let config = support::fast_builder()
            .fail_threshold(1_000)
            .redis_url(server.url())
            .build()
            .unwrap();
        let kit = support::connected_with(config).await;
        let faults = kit.faults().unwrap();
        faults.seed(11);
        faults.error_rate(0.5).unwrap();
        let conn = kit.conn().unwrap();
        let mut outcomes = Vec::new();
        for _ in 0..40 {
            outcomes.push(conn.query::<String>(&redis::cmd("PING")).await.is_ok());
        }
        runs.push(outcomes);
    }
    assert_eq!(runs[0], runs[1]);
    let failed = runs[0].iter().filter(|ok| !**ok).count();
    assert!((8..=32).contains(&failed), "{failed} of 40 at 0.5");
}

/// Bad settings are refused and leave the faults in force as they were.
#[tokio::test]
async fn bad_fault_settings_are_refused() {
    let server = RedisServer::start();
    let kit = support::connected(&server.url()).await;
    let faults = kit.faults().unwrap();
    assert!(matches!(
        faults.error_rate(-0.1),
        Err(Error::InvalidInput { .. })
    ));
    assert!(faults
        .latency_between(Duration::from_secs(2), Duration::from_secs(1))
        .is_err());
    let pong: String = kit
        .conn()
        .unwrap()
        .query(&redis::cmd("PING"))
        .await
        .unwrap();
    assert_eq!(pong, "PONG");
    assert_eq!(faults.injected(), 0);
    assert!(tierkit::Tierkit::embedded().faults().is_none());
    let standin = tierkit::Config::builder().fault_injection(true).build();
    let kit = tierkit::Tierkit::new(standin.unwrap()).unwrap();
    assert!(kit.faults().is_some() && kit.health().is_some() && kit.is_embedded());
}

/// Healthy, hung, healed, unreachable and healed again: every request answered, none waiting
/// past the op timeout, the limiter local while the shared tier is down, health and `/health`
/// following. Run on Redis and on the embedded stand-in alike.
async fn through_a_hang_and_an_outage(kit: &tierkit::Tierkit, router: &axum::Router) {
    let faults = kit.faults().expect("faults are on");
    let health = kit.health().expect("a health to follow");
    // Healthy: the first read loads, the next comes from L1; Redis decides the limit.
    let first = call(router, CLIENT, "/events/1").await;
    assert_eq!(
        (first.0, first.1.as_str(), first.2.as_str()),
        (StatusCode::OK, "Loader", "-")
    );
    assert_eq!(call(router, CLIENT, "/events/1").await.1, "L1");

    // Hung: every answer is still a 200, none waits past the op timeout, the limiter decides
    // locally, and health is Down after two calls time out together.
    faults.hang();
    for _ in 0..5 {
        let started = Instant::now();
        let (status, source, limiter) = call(router, CLIENT, "/events/1").await;
        assert_eq!(
            (status, source.as_str(), limiter.as_str()),
            (StatusCode::OK, "L1", "local")
        );
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(
        health
            .wait_for(HealthState::Down, Duration::from_secs(2))
            .await
    );
    // A key never cached still answers, from the database.
    let (status, source, _) = call(router, CLIENT, "/events/2").await;
    assert_eq!((status, source.as_str()), (StatusCode::OK, "Loader"));
    let report = call_json(router, "/health").await;
    assert_eq!(report["status"], "degraded");
    assert_eq!(report["redis"]["status"], "unhealthy");

    // Healed: the probe brings Redis back, and Redis decides again.
    faults.heal();
    assert!(
        health
            .wait_for(HealthState::Up, Duration::from_secs(5))
            .await
    );
    let (status, _, limiter) = call(router, CLIENT, "/events/1").await;
    assert_eq!((status, limiter.as_str()), (StatusCode::OK, "-"));

    // Unreachable: refused at once, so health is Down before any call waits.
    faults.unreachable();
    assert!(
        health
            .wait_for(HealthState::Down, Duration::from_secs(2))
            .await
    );
    let started = Instant::now();
    let (status, _, limiter) = call(router, CLIENT, "/events/3").await;
    assert_eq!((status, limiter.as_str()), (StatusCode::OK, "local"));
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    faults.heal();
    assert!(
        health
            .wait_for(HealthState::Up, Duration::from_secs(5))
            .await
    );
}

async fn call_json(router: &axum::Router, path: &str) -> serde_json::Value {
    use tower::ServiceExt;
    let request = axum::http::Request::get(path)
        .body(axum::body::Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}
