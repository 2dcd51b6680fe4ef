//! Testing a service's degraded mode with fault injection (feature `testing`): a small axum
//! service (events cached in front of a slow database, rate limited per client, `/health`),
//! driven through a hung and a flaky Redis without signalling any server. Its test is
//! `tests/degraded_mode.rs`; the README's "Testing your service's degraded mode" walks it.
//!
//! ```sh
//! cargo run --features tower,testing --example degraded   # embedded, faults on the stand-in
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --features tower,testing --example degraded
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tierkit::cache::Namespace;
use tierkit::ratelimit::layer::{PeerAddr, RateLimitLayer};
use tierkit::ratelimit::Quota;
use tierkit::{Config, Tierkit};
use tower::ServiceExt;

/// An event, as the database has it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// Its id.
    pub id: u64,
    /// Its title.
    pub title: String,
}

/// The service's state: the kit, its events namespace, and how often the database was asked.
#[derive(Clone)]
pub struct AppState {
    kit: Tierkit,
    events: Namespace<Event>,
    /// Database queries so far.
    pub queries: Arc<AtomicU64>,
}

/// The service: `GET /events/{id}` (cached; says where the answer came from in `x-source`),
/// rate limited to `per_minute` per client, and `GET /health`.
pub fn app(kit: &Tierkit, per_minute: u32) -> tierkit::Result<(Router, AppState)> {
    let events = kit
        .namespace::<Event>("events")
        .ttl(Duration::from_secs(600))
        .l1_ttl(Duration::from_secs(60))
        .build()?;
    let limiter = kit
        .limiter("api", Quota::new(per_minute, Duration::from_secs(60))?)
        .build()?;
    let state = AppState {
        kit: kit.clone(),
        events,
        queries: Arc::default(),
    };
    let router = Router::new()
        .route("/events/{id}", get(event))
        .layer(RateLimitLayer::new(limiter).degraded_header(true))
        .route("/health", get(health))
        .with_state(state.clone());
    Ok((router, state))
}

async fn event(State(state): State<AppState>, Path(id): Path<u64>) -> Response {
    let queries = state.queries.clone();
    let loaded = state
        .events
        .get_or_set(&id.to_string(), move || async move {
            queries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(2)).await; // the database
            Ok::<_, std::io::Error>(Event {
                id,
                title: format!("Meetup #{id}"),
            })
        })
        .await;
    match loaded {
        Ok(event) => {
            let source = format!("{:?}", event.source());
            ([("x-source", source)], Json((*event).clone())).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn health(State(state): State<AppState>) -> Response {
    Json(state.kit.health_report().await.public()).into_response()
}

/// One request from `peer`: status, `x-source` and `x-ratelimit-degraded` headers.
pub async fn call(router: &Router, peer: &str, path: &str) -> (StatusCode, String, String) {
    let mut request = Request::get(path)
        .body(Body::empty())
        .expect("a valid request");
    let peer: SocketAddr = peer.parse().expect("a socket address");
    request.extensions_mut().insert(PeerAddr(peer));
    let Ok(response) = router.clone().oneshot(request).await;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    (
        response.status(),
        header("x-source"),
        header("x-ratelimit-degraded"),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // With REDIS_URL, faults on the Redis connection; without, the in-process tiers stand in
    // for Redis behind the same faults.
    let kit = match std::env::var_os("REDIS_URL") {
        Some(_) => Tierkit::from_env()?,
        None => Tierkit::new(Config::builder().fault_injection(true).build()?)?,
    };
    let faults = kit.faults().ok_or("fault injection is on in both modes")?;
    kit.ready(Duration::from_secs(2)).await;
    let (router, _) = app(&kit, 100)?;
    let show = |what: &str, r: (StatusCode, String, String)| {
        println!("{what:<28} {} source {:<7} limiter {}", r.0, r.1, r.2);
    };
    show(
        "healthy, first read",
        call(&router, "203.0.113.7:1", "/events/1").await,
    );
    show(
        "healthy, again",
        call(&router, "203.0.113.7:1", "/events/1").await,
    );

    faults.hang();
    for i in 0..4 {
        let r = call(&router, "203.0.113.7:1", "/events/1").await;
        assert_eq!((r.0, r.2.as_str()), (StatusCode::OK, "local"));
        show(&format!("Redis hung, read {i}"), r);
    }
    show(
        "Redis hung, new key",
        call(&router, "203.0.113.7:1", "/events/2").await,
    );
    let state = kit.health().map(|h| h.state());
    println!("health while hung: {state:?}");

    faults.heal();
    kit.ready(Duration::from_secs(2)).await;
    show("healed", call(&router, "203.0.113.7:1", "/events/2").await);
    Ok(())
}
