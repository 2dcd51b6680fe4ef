//! The health report: its JSON shape, its status rules, its time bound, and its public form
//! (the detailed one without the error text).

mod support;

use std::time::{Duration, Instant};

use support::RedisServer;
use tierkit::health::HealthState;
use tierkit::session::{DeviceKind, NewSession};
use tierkit::Tierkit;

const OP_TIMEOUT: Duration = Duration::from_millis(100);

#[tokio::test]
async fn the_report_has_the_shape_services_serve_and_follows_redis() {
    let mut server = RedisServer::start();
    // Ready (Up and backplane subscribed) before the first read: a load that races the first
    // subscription is rightly forgotten (it may have missed another instance's write), which
    // made the hit ratio below flaky.
    let kit = support::connected(&server.url()).await;
    let health = kit.health().unwrap().clone();
    let events = kit.namespace::<String>("events").build().unwrap();
    events
        .get_or_set("1", || async { Ok::<_, std::io::Error>("e".to_string()) })
        .await
        .unwrap();
    events.get("1").await.unwrap();
    let sessions = kit.sessions().build().unwrap();
    sessions
        .create(NewSession::new("u").device(DeviceKind::Mobile, "p"))
        .await
        .unwrap();

    let report = kit.health_report_with(&sessions).await;
    let json = serde_json::to_value(&report).unwrap();
    // Healthy: nothing to leave out, so the public form is the whole report.
    assert_eq!(serde_json::to_value(report.public()).unwrap(), json);
    assert_eq!(json["status"], "healthy");
    assert_eq!(json["redis"]["status"], "healthy");
    assert!(json["redis"]["latency"].as_u64().is_some(), "{json}");
    assert!(json["cache"]["totalKeys"].as_u64().unwrap() >= 1, "{json}");
    let memory = json["cache"]["memoryUsage"].as_str().unwrap();
    assert!(memory.ends_with("MB"), "{memory}");
    assert_eq!(json["cache"]["namespaces"]["events"]["hitRatio"], 0.5);
    assert_eq!(json["rateLimiter"]["tier"], "redis");
    assert_eq!(json["sessions"]["active"], 1);
    assert_eq!(json["sessions"]["byDevice"]["mobile"], 1);

    // Hung: the report still answers within the op timeout (probe state, no waiting).
    server.hang();
    let started = Instant::now();
    let report = kit.health_report_with(&sessions).await;
    assert!(
        started.elapsed() <= OP_TIMEOUT + Duration::from_millis(80),
        "{:?}",
        started.elapsed()
    );
    let _ = report;
    assert!(
        health
            .wait_for(HealthState::Down, Duration::from_secs(2))
            .await
    );
    let started = Instant::now();
    let report = kit.health_report_with(&sessions).await;
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "{:?}",
        started.elapsed()
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["status"], "degraded", "{json}");
    assert_eq!(json["redis"]["status"], "unhealthy");
    assert_eq!(json["rateLimiter"]["tier"], "local");
    assert!(json["cache"]["totalKeys"].is_null());
    assert!(json["redis"]["lastError"].is_string());
    // The public form of the same report: no error text, everything else as it was.
    let public = serde_json::to_value(report.public()).unwrap();
    assert!(public["redis"].get("lastError").is_none(), "{public}");
    let mut expected = json.clone();
    expected["redis"]
        .as_object_mut()
        .unwrap()
        .remove("lastError");
    assert_eq!(public, expected);
    assert_eq!(public["redis"]["status"], "unhealthy");
    assert_eq!(public["redis"]["state"], "down");
    assert_eq!(public["sessions"]["active"], json["sessions"]["active"]);

    server.resume();
    assert!(
        health
            .wait_for(HealthState::Up, Duration::from_secs(3))
            .await
    );
    let json = serde_json::to_value(kit.health_report().await).unwrap();
    assert_eq!(json["status"], "healthy");
    assert!(json.get("sessions").is_none());

    // Embedded: healthy by design, Redis disabled.
    let json = serde_json::to_value(Tierkit::embedded().health_report().await).unwrap();
    assert_eq!(
        (json["status"].as_str(), json["redis"]["status"].as_str()),
        (Some("healthy"), Some("disabled"))
    );
}
