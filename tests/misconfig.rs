//! Settings Redis refuses are configuration errors, not outages: credentials it does not take,
//! a database it does not have, a command the ACL user may not run. Health names each with
//! what to fix, one error-level log line says it, and the health report carries it.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::RedisServer;
use tierkit::health::{HealthState, Misconfiguration, MisconfigurationKind};
use tierkit::{Config, Tierkit};

/// Log lines at error level, kept for the test to count.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn config(url: &str) -> Config {
    Config::builder()
        .redis_url(url)
        .probe_interval(Duration::from_millis(100))
        .probe_timeout(Duration::from_millis(100))
        .op_timeout(Duration::from_millis(100))
        .build()
        .expect("valid config")
}

/// Waits until health names a configuration problem; asserts what it says.
async fn named(kit: &Tierkit, kind: MisconfigurationKind, fix_says: &str) -> Misconfiguration {
    let health = kit.health().expect("redis configured");
    let mut changes = health.subscribe();
    let found = tokio::time::timeout(
        Duration::from_secs(5),
        changes.wait_for(|s| s.misconfigured.is_some()),
    )
    .await;
    assert!(found.is_ok(), "never named: {:?}", health.status());
    let status = health.status();
    let problem = status.misconfigured.clone().expect("named");
    assert_eq!(problem.kind, kind, "{problem:?}");
    assert!(problem.fix.contains(fix_says), "{}", problem.fix);
    assert_eq!(status.state, HealthState::Down, "nothing can be sent");
    problem
}

#[tokio::test]
async fn refused_credentials_and_databases_are_named_with_their_fix() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::ERROR)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let addr = server.addr();
    let cases = [
        (
            format!("redis://{addr}"),
            MisconfigurationKind::Authentication,
            "REDIS_PASSWORD",
        ),
        (
            format!("redis://:wrong@{addr}"),
            MisconfigurationKind::Authentication,
            "REDIS_PASSWORD",
        ),
        (
            format!("redis://:s3cret@{addr}/99"),
            MisconfigurationKind::Database,
            "REDIS_DB",
        ),
    ];
    for (url, kind, fix_says) in cases {
        let kit = Tierkit::new(config(&url)).unwrap();
        let problem = named(&kit, kind, fix_says).await;
        // Probes go on failing the same way: the problem is logged once, not once per probe.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let log = lines.text();
        let said = log.matches("Redis refused tierkit's configuration").count();
        assert_eq!(said, 1, "{log}");
        assert!(log.contains(fix_says), "{log}");
        lines.0.lock().unwrap().clear();

        // The report carries it; the public form keeps the kind and the fix, not Redis's words.
        let report = serde_json::to_value(kit.health_report().await).unwrap();
        assert_eq!(report["redis"]["status"], "unhealthy");
        assert_eq!(report["redis"]["misconfigured"]["kind"], kind.as_str());
        assert_eq!(
            report["redis"]["misconfigured"]["fix"],
            problem.fix.as_str()
        );
        assert!(report["redis"]["misconfigured"]["error"].is_string());
        let public = serde_json::to_value(kit.health_report().await.public()).unwrap();
        assert_eq!(public["redis"]["misconfigured"]["kind"], kind.as_str());
        assert!(public["redis"]["misconfigured"].get("error").is_none());
    }

    // Right credentials and database: up, and nothing named.
    let kit = Tierkit::new(config(&format!("redis://:s3cret@{addr}/3"))).unwrap();
    let health = kit.health().unwrap();
    assert!(
        health
            .wait_for(HealthState::Up, Duration::from_secs(5))
            .await
    );
    assert_eq!(health.status().misconfigured, None);
}

/// A password an operator sets while tierkit runs: the first probe after it names the problem,
/// and the first probe after it is put right clears it.
#[tokio::test]
async fn a_problem_put_right_is_cleared_by_the_next_probe() {
    let server = RedisServer::start();
    let kit = Tierkit::new(config(&server.url())).unwrap();
    let health = kit.health().unwrap();
    assert!(
        health
            .wait_for(HealthState::Up, Duration::from_secs(5))
            .await
    );
    let mut admin = server.client().get_connection().unwrap();
    // Kill tierkit's connection too, so it must authenticate again on reconnecting.
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "later"])
        .query(&mut admin)
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
        .query(&mut admin)
        .unwrap();
    named(&kit, MisconfigurationKind::Authentication, "REDIS_PASSWORD").await;
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", ""])
        .query(&mut admin)
        .unwrap();
    assert!(
        health
            .wait_for(HealthState::Up, Duration::from_secs(5))
            .await
    );
    assert_eq!(health.status().misconfigured, None);
}
