//! No session id, token, password, cache key or cached value ever reaches a log line, a trace
//! or `Debug` output. Apart from the other suites: each test installs a thread-local
//! subscriber, and tracing caches which call sites are enabled process-wide, so a test running
//! beside them without one could hide events from them.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::RedisServer;
use tierkit::cache::{EagerRefresh, Source};
use tierkit::health::HealthState;
use tierkit::session::{NewSession, Refresh};
use tierkit::Tierkit;

/// Collects every log line and closed span, at every level, of every crate.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// Runs `work` to its end on a current-thread runtime, with every log line and closed
    /// span of this thread written here.
    fn run<F: std::future::Future>(&self, work: F) -> F::Output {
        tracing::subscriber::with_default(self.subscriber(), || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(work)
        })
    }

    /// A subscriber writing every event, and every span as it closes with its fields, here.
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
    }
}

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
    let password = "s3cret-pa55word";
    let server = RedisServer::start_with(&["--requirepass", password]);
    let url = format!("redis://:{password}@127.0.0.1:{}", server.port());
    let mut secrets = vec![password.to_string(), "access-token-xyz".to_string()];
    let mut debug = String::new();

    capture.run(async {
        let config = support::fast_config(&url);
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
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("Redis is up"), "the capture works: {logs}");
    assert!(logs.contains("retired refresh token"), "{logs}");
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret in the logs");
        assert!(!debug.contains(secret.as_str()), "a secret in Debug output");
    }
}

// ---- Traces ---------------------------------------------------------------------------------

/// Loads, fail-safe answers, timeouts and refreshes leave spans an OpenTelemetry collector can
/// take (`tierkit.cache.*`, dotted `cache.*` fields), and none of them names a key or a value.
#[test]
fn traces_name_namespaces_and_outcomes_never_keys_or_values() {
    let buf = Capture::default();
    buf.run(async {
        let kit = Tierkit::embedded();
        let ns = kit
            .namespace::<String>("traced")
            .ttl(Duration::from_millis(50))
            .fail_safe(Duration::from_secs(10))
            .soft_timeout(Duration::from_millis(10))
            .hard_timeout(Duration::from_millis(200))
            .eager_refresh(EagerRefresh::after(0.5))
            .build()
            .unwrap();
        let key = "secret-key-8d1f";
        ns.get_or_set(key, || async {
            Ok::<_, std::io::Error>("secret-value-77ab".to_string())
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Due for refresh: a background refresh runs.
        ns.get_or_set(key, || async {
            Ok::<_, std::io::Error>("secret-value-77ab".to_string())
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Expired: the loader fails, the stale copy answers.
        let hit = ns
            .get_or_set(key, || async {
                Err::<String, _>(std::io::Error::other("the database is down"))
            })
            .await
            .unwrap();
        assert_eq!(hit.source(), Source::Stale);
    });
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    for wanted in [
        "tierkit.cache.load",
        "tierkit.cache.refresh",
        "cache.namespace=traced",
        "cache.outcome=\"loaded\"",
        "cache.source=\"stale\"",
        "cache.loader_ms=",
    ] {
        assert!(out.contains(wanted), "no {wanted} in:\n{out}");
    }
    for secret in ["secret-key-8d1f", "secret-value-77ab"] {
        assert!(!out.contains(secret), "{secret} leaked into traces:\n{out}");
    }
}
