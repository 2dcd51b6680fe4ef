//! Rate limiting in axum: a sliding window of 5 requests per minute per client, decided in
//! Redis when one is configured and by this process otherwise, answered with `429` and
//! `Retry-After` past the quota. Sends itself requests from two clients and asserts what it
//! prints.
//!
//! ```sh
//! cargo run --features tower --example ratelimit                                  # embedded
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --features tower --example ratelimit # in Redis
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use tierkit::ratelimit::layer::{PeerAddr, RateLimitLayer};
use tierkit::ratelimit::Quota;
use tierkit::Tierkit;
use tower::ServiceExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kit = Tierkit::from_env()?;
    kit.ready(Duration::from_secs(2)).await;
    // A name of its own per run, so a shared Redis holds no earlier run's counts.
    let name = format!("example-api-{}", std::process::id());
    let limiter = kit
        .limiter(name, Quota::new(5, Duration::from_secs(60))?)
        .build()?;
    let app = Router::new()
        .route("/api/events", get(|| async { "[]" }))
        .layer(RateLimitLayer::new(limiter));

    // Served for real, the peer comes from the connection: record it as `PeerAddr` with a
    // small middleware (see `tierkit::ratelimit::layer`). Here requests go straight in.
    let mut refused = 0;
    for (client, count) in [("203.0.113.7:50000", 7), ("198.51.100.23:50000", 2)] {
        let peer: SocketAddr = client.parse()?;
        for i in 1..=count {
            let mut request = Request::get("/api/events").body(Body::empty())?;
            request.extensions_mut().insert(PeerAddr(peer));
            let response = app.clone().oneshot(request).await?;
            let status = response.status();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned()
            };
            println!(
                "{client} #{i}: {status}  RateLimit: {}  Retry-After: {}",
                header("ratelimit"),
                header("retry-after")
            );
            let expected = if i <= 5 {
                StatusCode::OK
            } else {
                StatusCode::TOO_MANY_REQUESTS
            };
            assert_eq!(status, expected);
            refused += usize::from(status == StatusCode::TOO_MANY_REQUESTS);
        }
    }
    println!("{refused} requests refused; the second client kept its own budget");
    assert_eq!(refused, 2);
    Ok(())
}
