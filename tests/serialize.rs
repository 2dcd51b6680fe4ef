//! The results a service hands on (to a log, a dashboard, an admin endpoint) serialize to JSON
//! in camelCase, as the health report does, with times in milliseconds.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::Backend;
use tierkit::ratelimit::Quota;
use tierkit::Tierkit;

fn to_json(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("serializes")
}

#[tokio::test]
async fn cache_limiter_and_session_results_serialize_in_camel_case() {
    let kit = Tierkit::embedded();
    let ns = kit.namespace::<u64>("ser").build().unwrap();
    let reach = ns.set("k", 1).await.unwrap();
    assert_eq!(to_json(reach), json!("allTiers"));
    assert_eq!(to_json(tierkit::cache::Reach::L1Only), json!("l1Only"));
    let warmed = ns
        .warm(
            ["a", "b"],
            2,
            |_| async { Ok::<_, std::io::Error>(7) },
            |_| {},
        )
        .await
        .unwrap();
    let warmed = to_json(warmed);
    assert_eq!(warmed["total"], 2);
    assert_eq!(warmed["loaded"], 2);
    let stats = to_json(ns.stats());
    assert!(stats.get("l1Hits").is_some() && stats.get("staleServed").is_some());

    let limiter = kit
        .limiter("ser", Quota::new(1, Duration::from_secs(60)).unwrap())
        .build()
        .unwrap();
    limiter.check("u").await;
    let refused = to_json(limiter.check("u").await);
    assert_eq!(refused["allowed"], false);
    assert_eq!(refused["tier"], "local");
    let retry = refused["retryAfterMs"].as_f64().expect("milliseconds");
    assert!(retry > 0.0 && retry <= 60_000.0, "{refused}");
    assert!(refused["resetAfterMs"].as_f64().is_some());
    assert_eq!(refused["decidedAtMs"], Value::Null);

    let sessions = kit.sessions().build().unwrap();
    let stats = to_json(sessions.stats().await.unwrap());
    assert!(stats.is_object(), "{stats}");
}

#[tokio::test]
async fn a_health_status_serializes_with_its_times_in_milliseconds() {
    let b = Backend::redis();
    let kit = b.kit().await;
    let status = to_json(kit.health().expect("Redis mode").status());
    assert_eq!(status["state"], "up");
    assert_eq!(status["forced"], false);
    assert!(status["latencyMs"].as_f64().is_some(), "{status}");
    assert!(status["sinceAgoMs"].as_f64().is_some_and(|ms| ms >= 0.0));
    assert!(status.get("consecutiveFailures").is_some());
    assert!(status["unreachable"].as_array().is_some_and(Vec::is_empty));
}
