//! The rate limiter's tower layer through a real axum HTTP server on loopback, driven by
//! hand-written HTTP/1.1 over a `TcpStream`: headers, 429s, user and IP keys, trusted proxies.
//! Each test runs once embedded and once on a private redis-server (`per_backend!`): the layer
//! answers the same whichever tier decides.

#![cfg(feature = "tower")]

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use support::http::Reply;
use support::{per_backend, Backend};
use tierkit::ratelimit::layer::{
    ForwardedHeader, HeaderSyntax, IpNet, ListEntry, PeerAddr, RateLimitKey, RateLimitLayer,
};
use tierkit::ratelimit::{Decision, Limiter, Quota};
use tierkit::Tierkit;
use tokio::net::TcpListener;

const LIMIT: u32 = 3;
const WINDOW: Duration = Duration::from_secs(60);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

per_backend!([embedded, redis] [
    users_have_own_budgets_with_ietf_headers_and_429_retry_after,
    forwarded_for_counts_only_from_trusted_proxies,
    legacy_headers_appear_only_when_enabled,
    ipv6_clients_are_keyed_by_their_64_and_broken_headers_share_one_budget,
    allow_and_deny_lists_and_the_current_header_syntax,
]);

/// What the handler echoes of the tier that decides on `b`.
fn ok_body(b: &Backend) -> &'static str {
    if b.is_embedded() {
        "ok Local"
    } else {
        "ok Redis"
    }
}

fn limiter(kit: &Tierkit, name: &str) -> Limiter {
    kit.limiter(name, Quota::new(LIMIT, WINDOW).unwrap())
        .build()
        .unwrap()
}

/// Test stand-in for a server's integration and auth middleware: the peer address from
/// axum's `ConnectInfo`, and the user id from `x-user`.
async fn identify(mut req: Request, next: Next) -> Response {
    if let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
        let peer = PeerAddr(*addr);
        req.extensions_mut().insert(peer);
    }
    let user = req
        .headers()
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    if let Some(id) = user {
        req.extensions_mut().insert(RateLimitKey(id));
    }
    next.run(req).await
}

/// A served app; `calls` counts requests that reached the handler.
struct App {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
}

async fn serve(layer: RateLimitLayer) -> App {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    // An allow-listed request carries no decision: the limit did not apply to it.
    let handler = move |decision: Option<Extension<Decision>>| async move {
        counter.fetch_add(1, Ordering::SeqCst);
        match decision {
            Some(Extension(d)) => format!("ok {:?}", d.tier),
            None => "ok unlimited".to_owned(),
        }
    };
    let app = Router::new()
        .route("/", get(handler))
        .layer(layer)
        .layer(middleware::from_fn(identify));
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    App { addr, calls }
}

impl Reply {
    fn secs(&self, name: &str) -> u64 {
        let v = self
            .header(name)
            .unwrap_or_else(|| panic!("no {name}: {self:?}"));
        v.parse().unwrap_or_else(|_| panic!("{name}: {v:?}"))
    }

    /// Checks `RateLimit-Policy` and `RateLimit` and returns `reset`.
    fn assert_ratelimit(&self, remaining: u32) -> u64 {
        assert_eq!(self.header("ratelimit-policy"), Some("3;w=60"), "{self:?}");
        let rl = self
            .header("ratelimit")
            .unwrap_or_else(|| panic!("{self:?}"));
        let prefix = format!("limit=3, remaining={remaining}, reset=");
        let reset: u64 = rl
            .strip_prefix(&prefix)
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("RateLimit: {rl:?}, want {prefix}N"));
        assert!((1..=60).contains(&reset), "{rl}");
        reset
    }
}

/// One `GET /` over a fresh connection, by hand.
async fn fetch(addr: SocketAddr, headers: &[(&str, &str)]) -> Reply {
    let mut request = String::from("GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    support::http::exchange(addr, &request, Duration::from_secs(10), "GET /").await
}

/// Spends a fresh key's budget: `LIMIT` allowed requests counting down, then a 429.
async fn exhaust(app: &App, headers: &[(&str, &str)]) -> Reply {
    for i in 0..LIMIT {
        let r = fetch(app.addr, headers).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        r.assert_ratelimit(LIMIT - 1 - i);
    }
    let r = fetch(app.addr, headers).await;
    assert_eq!(r.status, 429, "{r:?}");
    r
}

async fn users_have_own_budgets_with_ietf_headers_and_429_retry_after(b: Backend) {
    let kit = b.kit().await;
    let app = serve(RateLimitLayer::new(limiter(&kit, "http-users"))).await;
    let alice = [("x-user", "alice")];

    let first = fetch(app.addr, &alice).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body, ok_body(&b)); // the handler saw the Decision and who decided
    first.assert_ratelimit(2);
    assert!(first.header("x-ratelimit-limit").is_none(), "{first:?}");
    assert!(first.header("retry-after").is_none(), "{first:?}");
    for remaining in [1, 0] {
        let r = fetch(app.addr, &alice).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.assert_ratelimit(remaining);
    }

    let refused = fetch(app.addr, &alice).await;
    assert_eq!(refused.status, 429, "{refused:?}");
    let retry = refused.secs("retry-after");
    assert!((1..=60).contains(&retry), "{refused:?}");
    refused.assert_ratelimit(0);
    assert_eq!(refused.body, "Too Many Requests\n");
    assert!(refused.header("x-ratelimit-remaining").is_none());
    assert_eq!(
        app.calls.load(Ordering::SeqCst),
        3,
        "refused requests reach the handler"
    );

    // Another user, and an anonymous client keyed by its IP, have budgets of their own.
    let bob = fetch(app.addr, &[("x-user", "bob")]).await;
    assert_eq!(bob.status, 200, "{bob:?}");
    bob.assert_ratelimit(2);
    exhaust(&app, &[]).await;
    assert_eq!(fetch(app.addr, &alice).await.status, 429);
}

async fn forwarded_for_counts_only_from_trusted_proxies(b: Backend) {
    let kit = b.kit().await;

    // 127.0.0.1 is a trusted proxy: each forwarded client has its own budget.
    let behind_proxy =
        serve(RateLimitLayer::new(limiter(&kit, "http-proxied")).trusted_proxies([LOCALHOST]))
            .await;
    exhaust(&behind_proxy, &[("x-forwarded-for", "203.0.113.5")]).await;
    // A client prepending a forged hop is still keyed by the hop the proxy saw: the
    // rightmost untrusted address.
    let forged = [("x-forwarded-for", "198.51.100.1, 203.0.113.5")];
    assert_eq!(fetch(behind_proxy.addr, &forged).await.status, 429);
    // Trusted hops are skipped, also across header lines.
    let r = fetch(
        behind_proxy.addr,
        &[
            ("x-forwarded-for", "203.0.113.5"),
            ("x-forwarded-for", "127.0.0.1"),
        ],
    )
    .await;
    assert_eq!(r.status, 429, "{r:?}");
    let other = fetch(behind_proxy.addr, &[("x-forwarded-for", "203.0.113.6")]).await;
    assert_eq!(other.status, 200, "{other:?}");
    other.assert_ratelimit(2);
    // Without the header the proxy itself is the client.
    let direct = fetch(behind_proxy.addr, &[]).await;
    assert_eq!(direct.status, 200, "{direct:?}");
    direct.assert_ratelimit(2);

    // Nothing trusted: the header is ignored, every request is the peer 127.0.0.1.
    let exposed = serve(RateLimitLayer::new(limiter(&kit, "http-exposed"))).await;
    for (i, forged) in ["203.0.113.7", "203.0.113.8", "203.0.113.9"]
        .into_iter()
        .enumerate()
    {
        let r = fetch(exposed.addr, &[("x-forwarded-for", forged)]).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.assert_ratelimit(LIMIT - 1 - i as u32);
    }
    let r = fetch(exposed.addr, &[("x-forwarded-for", "203.0.113.10")]).await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(exposed.calls.load(Ordering::SeqCst), 3);
}

/// The attack shapes of client keys: 200 addresses of one IPv6 /64 behind a trusted proxy share
/// one budget while another /64 has its own; a header that is not an address never lands on
/// the proxy's own budget (nor buys a fresh one); RFC 7239 `Forwarded` is read when chosen.
async fn ipv6_clients_are_keyed_by_their_64_and_broken_headers_share_one_budget(b: Backend) {
    let kit = b.kit().await;
    let loopback: IpNet = "127.0.0.0/8".parse().unwrap();
    let app =
        serve(RateLimitLayer::new(limiter(&kit, "http-v6")).trusted_proxies([loopback])).await;
    let mut allowed = 0;
    for i in 0..200u32 {
        let addr = format!("2001:db8:aa:bb:{:x}:{:x}::1", i * 7919 % 65536, i);
        let r = fetch(app.addr, &[("x-forwarded-for", addr.as_str())]).await;
        allowed += u32::from(r.status == 200);
    }
    assert_eq!(allowed, LIMIT, "one /64, one budget");
    let other = fetch(app.addr, &[("x-forwarded-for", "2001:db8:aa:bc::1")]).await;
    assert_eq!(other.status, 200, "another /64: {other:?}");

    // Broken headers share one budget, apart from the proxy's own.
    for junk in ["garbage", "unknown", "203.0.113.9, ,", "_hidden"] {
        let _ = fetch(app.addr, &[("x-forwarded-for", junk)]).await;
    }
    let junk = fetch(app.addr, &[("x-forwarded-for", "still garbage")]).await;
    assert_eq!(junk.status, 429, "{junk:?}");
    let direct = fetch(app.addr, &[]).await;
    assert_eq!(
        direct.status, 200,
        "the proxy's budget is untouched: {direct:?}"
    );

    // RFC 7239, and only the header chosen.
    let forwarded = serve(
        RateLimitLayer::new(limiter(&kit, "http-forwarded"))
            .trusted_proxies([loopback])
            .forwarded_header(ForwardedHeader::Forwarded),
    )
    .await;
    let client = [("forwarded", r#"for="[2001:db8:cafe::17]:4711";proto=https"#)];
    for _ in 0..LIMIT {
        assert_eq!(fetch(forwarded.addr, &client).await.status, 200);
    }
    let same_64 = [("forwarded", "for=\"[2001:db8:cafe::99]\"")];
    assert_eq!(fetch(forwarded.addr, &same_64).await.status, 429);
    let xff = [("x-forwarded-for", "2001:db8:cafe::17")];
    assert_eq!(
        fetch(forwarded.addr, &xff).await.status,
        200,
        "XFF is not read"
    );
}

/// Allow-listed clients pass uncounted and without headers, deny-listed ones get 403 before the
/// limiter is asked; the draft's current header syntax names the policy.
async fn allow_and_deny_lists_and_the_current_header_syntax(b: Backend) {
    let kit = b.kit().await;
    let loopback: IpNet = "127.0.0.0/8".parse().unwrap();
    let app = serve(
        RateLimitLayer::new(limiter(&kit, "http-lists"))
            .trusted_proxies([loopback])
            .allow_list([ListEntry::from("192.0.2.0/24".parse::<IpNet>().unwrap())])
            .deny_list([ListEntry::User("mallory".into())])
            .header_syntax(HeaderSyntax::Draft10),
    )
    .await;
    for _ in 0..LIMIT * 3 {
        let r = fetch(app.addr, &[("x-forwarded-for", "192.0.2.9")]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, "ok unlimited");
        assert!(r.header("ratelimit").is_none());
    }
    let denied = fetch(app.addr, &[("x-user", "mallory")]).await;
    assert_eq!(denied.status, 403, "{denied:?}");
    let r = fetch(app.addr, &[("x-forwarded-for", "203.0.113.50")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("ratelimit-policy"),
        Some(r#""http-lists";q=3;w=60"#)
    );
    let current = r.header("ratelimit").unwrap_or_default();
    assert!(current.starts_with(r#""http-lists";r=2;t="#), "{current}");
    // Only the counted request reached the limiter's budget, and the denied one no handler.
    assert_eq!(app.calls.load(Ordering::SeqCst), LIMIT as usize * 3 + 1);
}

async fn legacy_headers_appear_only_when_enabled(b: Backend) {
    let kit = b.kit().await;
    let app = serve(RateLimitLayer::new(limiter(&kit, "http-legacy")).legacy_headers(true)).await;
    let user = [("x-user", "carol")];

    let r = fetch(app.addr, &user).await;
    assert_eq!(r.status, 200, "{r:?}");
    let reset = r.assert_ratelimit(2);
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));
    assert_eq!(r.secs("x-ratelimit-reset"), reset);

    fetch(app.addr, &user).await;
    fetch(app.addr, &user).await;
    let refused = fetch(app.addr, &user).await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    assert!(refused.secs("retry-after") >= 1);
    // The IETF fields are there too.
    refused.assert_ratelimit(0);
}

#[tokio::test]
async fn embedded_mode_limits_over_http_without_redis() {
    let kit = Tierkit::embedded();
    let app = serve(RateLimitLayer::new(limiter(&kit, "http-embedded"))).await;
    let first = fetch(app.addr, &[("x-user", "dave")]).await;
    assert_eq!(first.body, "ok Local", "{first:?}");
    first.assert_ratelimit(2);
    fetch(app.addr, &[("x-user", "dave")]).await;
    fetch(app.addr, &[("x-user", "dave")]).await;
    let refused = fetch(app.addr, &[("x-user", "dave")]).await;
    assert_eq!(refused.status, 429, "{refused:?}");
    let retry = refused.secs("retry-after");
    assert!((1..=60).contains(&retry), "{refused:?}");
    exhaust(&app, &[]).await; // the peer IP, its own budget
    assert_eq!(app.calls.load(Ordering::SeqCst), 6);
}
