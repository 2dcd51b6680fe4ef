//! The example service (`examples/service.rs`) end to end: served on loopback, driven by
//! hand-written HTTP/1.1 over a `TcpStream`, in front of a private redis-server that is killed
//! and restarted underneath it; and once in embedded mode.

#![cfg(all(feature = "tower", feature = "metrics"))]

mod support;

#[path = "../examples/service.rs"]
#[allow(dead_code)]
mod service;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};
use service::{Database, Settings};
use support::http::Reply;
use support::RedisServer;
use tierkit::ratelimit::Quota;
use tierkit::Tierkit;
use tokio::net::TcpListener;

/// The `/api/*` quota of the served app: 5 requests per minute.
const LIMIT: u32 = 5;
const WINDOW: Duration = Duration::from_secs(60);
/// The refresh grace: short, so the test sees a token past it.
const GRACE: Duration = Duration::from_millis(300);

/// The recorder is process-global: installed once, shared by every app of this binary.
fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .expect("install the Prometheus recorder")
        })
        .clone()
}

/// Serves the example app on a free loopback port with an `/api/*` quota of `limit` per minute.
async fn serve(kit: Tierkit, db: Arc<Database>, limit: u32) -> SocketAddr {
    let settings = Settings {
        rate_limit: Quota::new(limit, WINDOW).unwrap(),
        metrics: metrics(),
        refresh_grace: GRACE,
        access_token_secret: b"a test key of 32 bytes or longer".to_vec(),
    };
    let router = service::app(kit, db, settings).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// Asserts the status and returns the JSON body.
    fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        self.json()
    }
}

/// One request over a fresh connection, by hand.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    session: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nUser-Agent: service-test/1.0\r\n"
    );
    if let Some(id) = session {
        request.push_str(&format!("Authorization: Bearer {id}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let what = format!("{method} {path}");
    support::http::exchange(addr, &request, Duration::from_secs(5), &what).await
}

async fn get(addr: SocketAddr, path: &str, session: Option<&str>) -> Reply {
    send(addr, "GET", path, session, None, &[]).await
}

async fn post(addr: SocketAddr, path: &str, session: Option<&str>, body: Value) -> Reply {
    send(addr, "POST", path, session, Some(body), &[]).await
}

/// `GET /api/me` with the session and its signed access token.
async fn me(addr: SocketAddr, session: &str, access_token: &str) -> Reply {
    let headers = [("X-Access-Token", access_token)];
    send(addr, "GET", "/api/me", Some(session), None, &headers).await
}

/// Logs `user` in and returns `(session id, refresh token)`.
async fn login(addr: SocketAddr, user: &str, device: &str) -> (String, String) {
    let (session, refresh, _) = login_with_access(addr, user, device).await;
    (session, refresh)
}

/// Logs `user` in and returns `(session id, refresh token, access token)`.
async fn login_with_access(addr: SocketAddr, user: &str, device: &str) -> (String, String, String) {
    let r = post(
        addr,
        "/login",
        None,
        json!({ "user": user, "device": device }),
    )
    .await;
    let body = r.expect(201);
    let field = |name: &str| {
        body[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name}: {r:?}"))
            .to_owned()
    };
    (
        field("sessionId"),
        field("refreshToken"),
        field("accessToken"),
    )
}

/// Reads an event and returns the `source` it came from.
async fn event_source(addr: SocketAddr, id: u64, session: Option<&str>) -> String {
    let r = get(addr, &format!("/api/events/{id}"), session).await;
    let body = r.expect(200);
    assert_eq!(body["event"]["id"], id, "{r:?}");
    body["source"].as_str().unwrap().to_owned()
}

/// Polls `/health` until its overall status is `want` and Redis's is `redis` (answered with
/// `http_status`); returns that report.
async fn health_becomes(addr: SocketAddr, want: &str, redis: &str, http_status: u16) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(addr, "/health", None).await;
        let report = r.json();
        if r.status == http_status && report["status"] == want && report["redis"]["status"] == redis
        {
            return report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/health never said {want} (Redis {redis}): {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_serves_through_a_redis_outage() {
    support::init_tracing();
    let mut server = RedisServer::start();
    let kit = support::connected(&server.url()).await;
    let db = Arc::new(Database::default());
    let addr = serve(kit.clone(), db.clone(), LIMIT).await;

    let report = health_becomes(addr, "healthy", "healthy", 200).await;
    assert_eq!(report["rateLimiter"]["tier"], "redis", "{report}");

    // Login, then cached reads: one database query for two reads.
    let (alice, _) = login(addr, "alice", "mobile").await;
    let first = get(addr, "/api/events/7", Some(&alice)).await;
    assert_eq!(first.expect(200)["source"], "loader", "{first:?}");
    let rl = first.header("ratelimit").unwrap_or_default();
    assert!(rl.starts_with("limit=5, remaining=4, reset="), "{first:?}");
    assert_eq!(
        first.header("x-ratelimit-remaining"),
        Some("4"),
        "{first:?}"
    );
    assert_eq!(event_source(addr, 7, Some(&alice)).await, "l1");
    assert_eq!(db.queries(), 1);

    // "Where am I logged in": the login, with its device and client metadata.
    let r = get(addr, "/api/sessions", Some(&alice)).await;
    let sessions = r.expect(200)["sessions"].clone();
    assert_eq!(sessions.as_array().map(Vec::len), Some(1), "{r:?}");
    let s = &sessions[0];
    assert_eq!(s["device"]["kind"], "mobile", "{r:?}");
    assert_eq!(s["userAgent"], "service-test/1.0", "{r:?}");
    assert_eq!(s["ip"], "127.0.0.1", "{r:?}");
    assert_eq!(s["current"], true, "{r:?}");

    // Anonymous callers (keyed by IP): sessions need a login; events are public.
    let r = get(addr, "/api/sessions", None).await;
    r.expect(401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{r:?}");
    get(addr, "/api/events/123456", None).await.expect(404);
    assert_eq!(db.queries(), 2, "a missing event is looked up");

    // Alice's 6th /api request in the window is refused.
    assert_eq!(event_source(addr, 8, Some(&alice)).await, "loader");
    assert_eq!(event_source(addr, 8, Some(&alice)).await, "l1");
    let refused = get(addr, "/api/events/8", Some(&alice)).await;
    assert_eq!(refused.status, 429, "{refused:?}");
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{refused:?}"));
    assert!((1..=60).contains(&retry), "{refused:?}");
    let rl = refused.header("ratelimit").unwrap_or_default();
    assert!(
        rl.starts_with("limit=5, remaining=0, reset="),
        "{refused:?}"
    );
    assert_eq!(refused.header("ratelimit-policy"), Some("5;w=60"));
    assert_eq!(refused.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(db.queries(), 3);

    // Refresh rotation: a retired token still rotates within the grace (two tabs at once);
    // after it, presenting it again is reuse, which revokes the session.
    let (bob, t0) = login(addr, "bob", "desktop").await;
    let t1 = post(addr, "/refresh", None, json!({ "refreshToken": t0 }))
        .await
        .expect(200)["refreshToken"]
        .clone();
    assert_ne!(t1, json!(t0));
    post(addr, "/refresh", None, json!({ "refreshToken": t1 }))
        .await
        .expect(200);
    post(addr, "/refresh", None, json!({ "refreshToken": t0 }))
        .await
        .expect(200);
    tokio::time::sleep(GRACE + Duration::from_millis(100)).await;
    post(addr, "/refresh", None, json!({ "refreshToken": t0 }))
        .await
        .expect(409);
    get(addr, "/api/sessions", Some(&bob)).await.expect(401);
    post(addr, "/refresh", None, json!({ "refreshToken": "nope" }))
        .await
        .expect(401);

    // Logout revokes once.
    let (carol, _) = login(addr, "carol", "tablet").await;
    assert_eq!(
        post(addr, "/logout", Some(&carol), json!({})).await.status,
        204
    );
    post(addr, "/logout", Some(&carol), json!({}))
        .await
        .expect(401);

    let m = get(addr, "/metrics", None).await;
    assert_eq!(m.status, 200, "{m:?}");
    assert!(
        m.body
            .contains(r#"tierkit_cache_loader_calls_total{namespace="events"}"#),
        "tierkit's cache counters are published at the scrape: {m:?}"
    );
    assert!(
        m.header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain"),
        "{m:?}"
    );

    // A login with a signed access token on another instance (same Redis, same signing
    // key), checked against Redis while it is up: this instance holds no copy of it.
    let other_kit = support::connected(&server.url()).await;
    let other = serve(other_kit, Arc::new(Database::default()), LIMIT).await;
    let (erin, _, erin_access) = login_with_access(other, "erin", "mobile").await;
    let r = me(other, &erin, &erin_access).await.expect(200);
    assert_eq!(r, json!({ "userId": "erin", "degraded": false }));

    // Redis crashes: the service degrades but keeps serving cached and public reads.
    server.stop();
    // Down for less than 5 minutes: degraded, still 200, so load balancers keep the instance.
    let report = health_becomes(addr, "degraded", "unhealthy", 200).await;
    assert_eq!(report["rateLimiter"]["tier"], "local", "{report}");
    // Each instance's local limiter decides now, with a budget of its own per key (smaller
    // than the quota): spread the reads over the IP and alice, whose session this instance
    // validated moments ago and still accepts from its local copy.
    assert_eq!(event_source(addr, 7, None).await, "l1");
    assert_eq!(event_source(addr, 9, Some(&alice)).await, "loader");
    assert_eq!(db.queries(), 4);
    // A session this instance has no copy of cannot be checked: 503, not 401.
    let unknown = format!("{}.{}", "0".repeat(8), "0".repeat(64));
    let r = get(addr, "/api/sessions", Some(&unknown)).await;
    r.expect(503);
    assert!(r.header("retry-after").is_some(), "{r:?}");
    // JWT-only validation: the signed token vouches for its session on its own, marked
    // degraded; a forged one does not, nor a genuine one presented with another session.
    let r = me(addr, &erin, &erin_access).await.expect(200);
    assert_eq!(r, json!({ "userId": "erin", "degraded": true }));
    // (Refused callers are keyed by IP, whose local budget is nearly spent here: one check.)
    let forged = erin_access.replace("erin.", "mallory.");
    me(addr, &erin, &forged).await.expect(401);
    // Nothing pretends a session was created.
    post(addr, "/login", None, json!({ "user": "dave" }))
        .await
        .expect(503);

    // Redis is back: so is the report.
    server.restart();
    health_becomes(addr, "healthy", "healthy", 200).await;
    // (Served from L1 or the database: L1 is dropped when the backplane resubscribes.)
    event_source(addr, 7, None).await;
    login(addr, "dave", "other").await;
}

#[tokio::test]
async fn service_runs_embedded_without_redis() {
    let db = Arc::new(Database::default());
    let addr = serve(Tierkit::embedded(), db.clone(), 100).await;

    let report = get(addr, "/health", None).await.expect(200);
    assert_eq!(report["status"], "healthy", "{report}");
    assert_eq!(report["redis"]["status"], "disabled", "{report}");

    assert_eq!(event_source(addr, 1, None).await, "loader");
    assert_eq!(event_source(addr, 1, None).await, "l1");
    assert_eq!(db.queries(), 1);
    assert_eq!(
        get(addr, "/api/events/abc", None).await.status,
        400,
        "a malformed id"
    );

    let (ada, refresh) = login(addr, "ada", "desktop").await;
    tokio::time::sleep(Duration::from_millis(5)).await; // creation times order the list (ms)
    let (ada2, _) = login(addr, "ada", "mobile").await;
    let r = get(addr, "/api/sessions", Some(&ada2)).await;
    let sessions = r.expect(200)["sessions"].clone();
    let kinds: Vec<&str> = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["device"]["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["mobile", "desktop"], "newest first: {r:?}");
    assert_eq!(sessions[0]["current"], true);
    assert_eq!(sessions[1]["current"], false);

    post(addr, "/refresh", None, json!({ "refreshToken": refresh }))
        .await
        .expect(200);
    assert_eq!(
        post(addr, "/logout", Some(&ada), json!({})).await.status,
        204
    );
    get(addr, "/api/sessions", Some(&ada)).await.expect(401);
    let r = post(addr, "/login", None, json!({ "user": " " })).await;
    r.expect(400);
}
