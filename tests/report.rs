//! The health report and the promise that no secret reaches a log line or `Debug` output.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::RedisServer;
use tierkit::health::HealthState;
use tierkit::session::{DeviceKind, NewSession, Refresh};
use tierkit::{Config, Tierkit};

const OP_TIMEOUT: Duration = Duration::from_millis(100);

fn config(url: &str) -> Config {
    Config::builder()
        .redis_url(url)
        .probe_interval(Duration::from_millis(100))
        .probe_timeout(Duration::from_millis(80))
        .op_timeout(OP_TIMEOUT)
        .fail_threshold(2)
        .recover_threshold(1)
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_report_has_the_shape_services_serve_and_follows_redis() {
    let mut server = RedisServer::start();
    let kit = Tierkit::new(config(&server.url())).unwrap();
    let health = kit.health().unwrap().clone();
    assert!(
        health
            .wait_for(HealthState::Up, Duration::from_secs(5))
            .await
    );
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

    let json = serde_json::to_value(kit.health_report_with(&sessions).await).unwrap();
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
    let json = serde_json::to_value(kit.health_report_with(&sessions).await).unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(json["status"], "degraded", "{json}");
    assert_eq!(json["redis"]["status"], "unhealthy");
    assert_eq!(json["rateLimiter"]["tier"], "local");
    assert!(json["cache"]["totalKeys"].is_null());
    assert!(json["redis"]["lastError"].is_string());

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

/// Collects every log line, at every level, of every crate.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn no_secret_reaches_a_log_line_or_debug_output() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let password = "s3cret-pa55word";
    let server = RedisServer::start_with(&["--requirepass", password]);
    let url = format!("redis://:{password}@127.0.0.1:{}", server.port());
    let mut secrets = vec![password.to_string(), "access-token-xyz".to_string()];
    let mut debug = String::new();

    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let config = config(&url);
            debug.push_str(&format!("{config:?}"));
            let kit = Tierkit::new(config).unwrap();
            debug.push_str(&format!("{kit:?}"));
            assert!(
                kit.health()
                    .unwrap()
                    .wait_for(HealthState::Up, Duration::from_secs(5))
                    .await
            );
            let sessions = kit
                .sessions()
                .refresh_grace(Duration::from_millis(10))
                .build()
                .unwrap();
            let new = NewSession::new("user-1")
                .access_token("access-token-xyz")
                .ip("198.51.100.1");
            debug.push_str(&format!("{new:?}"));
            let created = sessions.create(new).await.unwrap();
            debug.push_str(&format!("{created:?}"));
            let sid = created.session_id.expose().to_owned();
            let t0 = created.refresh_token.expose().to_owned();
            secrets.extend([
                sid.clone(),
                t0.clone(),
                sid[9..].to_string(),
                t0[9..].to_string(),
            ]);
            debug.push_str(&format!("{:?}", sessions.validate(&sid).await));
            debug.push_str(&format!(
                "{:?}",
                sessions.validate_access(&sid, "access-token-xyz").await
            ));
            let refreshed = sessions.refresh(&t0).await.unwrap();
            debug.push_str(&format!("{refreshed:?}"));
            if let Refresh::Rotated { refresh_token, .. } = &refreshed {
                secrets.push(refresh_token.expose().to_owned());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            // Reuse of a retired token: the warning must not quote it.
            debug.push_str(&format!("{:?}", sessions.refresh(&t0).await.unwrap()));
            debug.push_str(&format!("{:?}", sessions.list("user-1").await.unwrap()));
            sessions.revoke(&sid).await.unwrap();
            debug.push_str(&format!("{sessions:?}"));
        });
    });
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("Redis is up"), "the capture works: {logs}");
    assert!(logs.contains("retired refresh token"), "{logs}");
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret in the logs");
        assert!(!debug.contains(secret.as_str()), "a secret in Debug output");
    }
}
