//! HTTP integration: a tower [`Layer`] that puts a [`Limiter`] in front of a service.
//!
//! [`RateLimitLayer`] decides every request with [`Limiter::check`] under a key taken from the
//! request, passes allowed requests on and answers refused ones itself with
//! `429 Too Many Requests`. It works with any `http` 1.x based stack (axum, hyper, tonic)
//! without depending on one.
//!
//! ## Keys
//!
//! In this order:
//!
//! 1. `user:{id}` when the request carries a [`RateLimitKey`] extension: insert it in the
//!    authentication middleware, which must run before this layer (in axum, add it with a
//!    later `.layer(..)` call).
//! 2. `ip:{addr}` when it carries a [`PeerAddr`] extension, the TCP peer of the connection.
//!    Only when the peer is one of the [`trusted_proxies`](RateLimitLayer::trusted_proxies) is
//!    `X-Forwarded-For` read: the client is the rightmost address in it that is not a trusted
//!    proxy (the leftmost when all are). A malformed entry stops the walk at the nearest
//!    trusted hop, so a forged header can never buy a fresh budget. Any other peer's
//!    forwarding headers are ignored. IPv4-mapped IPv6 addresses count as IPv4.
//! 3. `ip:unknown` otherwise: every such request shares **one** budget (and a warning is
//!    logged once), so a forgotten [`PeerAddr`] shows up as early 429s, never as no limit.
//!
//! axum keeps the peer address as `ConnectInfo<SocketAddr>`; copy it into [`PeerAddr`] with a
//! small middleware, as in the example below.
//!
//! ## Responses
//!
//! - Allowed: the inner service answers; the layer adds the rate-limit headers, and the
//!   [`Decision`] is available to handlers as a request extension.
//! - Refused: the inner service is not called. The layer answers `429 Too Many Requests` with
//!   `Retry-After` (seconds, rounded up, at least 1), the same rate-limit headers and a short
//!   `text/plain` body.
//!
//! The rate-limit headers follow draft-ietf-httpapi-ratelimit-headers-07:
//!
//! ```text
//! RateLimit-Policy: 100;w=60
//! RateLimit: limit=100, remaining=42, reset=17
//! ```
//!
//! `w` is the window in seconds, `reset` the seconds until the whole quota is back (both rounded
//! up). With [`legacy_headers`](RateLimitLayer::legacy_headers) the layer also sends
//! `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds, not a
//! timestamp).
//!
//! # Examples
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr, SocketAddr};
//! use std::time::Duration;
//!
//! use axum::extract::{ConnectInfo, Request};
//! use axum::middleware::{self, Next};
//! use axum::response::Response;
//! use axum::routing::get;
//! use axum::Router;
//! use tierkit::ratelimit::layer::{PeerAddr, RateLimitKey, RateLimitLayer};
//! use tierkit::ratelimit::Quota;
//!
//! /// Tells the limiter who is calling: the TCP peer, and the user once authenticated.
//! async fn identify(mut req: Request, next: Next) -> Response {
//!     if let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
//!         let peer = PeerAddr(*addr);
//!         req.extensions_mut().insert(peer);
//!     }
//!     let user = req.headers().get("x-user").and_then(|v| v.to_str().ok()).map(String::from);
//!     if let Some(id) = user {
//!         // In real code: the id of the authenticated user, never a bare client header.
//!         req.extensions_mut().insert(RateLimitKey(id));
//!     }
//!     next.run(req).await
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> tierkit::Result<()> {
//! let kit = tierkit::Tierkit::embedded();
//! let limiter = kit.limiter("api", Quota::new(100, Duration::from_secs(60))?).build()?;
//! let load_balancer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(RateLimitLayer::new(limiter).trusted_proxies([load_balancer]))
//!     .layer(middleware::from_fn(identify)); // added last: runs first
//!
//! // Serve it with the peer address recorded as `ConnectInfo`:
//! // axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # drop(app);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Request, Response, StatusCode};
use tower::{Layer, Service};

use super::{Decision, Limiter};

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The body of a `429` answer.
const REFUSED_BODY: &str = "Too Many Requests\n";

/// Request extension that keys the request by user: the layer uses `user:{id}`.
///
/// Insert it in the middleware that authenticates the request, before this layer runs. Without
/// it the layer keys by client IP.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RateLimitKey(pub String);

/// Request extension carrying the TCP peer address of the connection, for keying by client IP.
///
/// The server integration inserts it; with axum, copy `ConnectInfo<SocketAddr>` into it (see
/// the [module example](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// A tower [`Layer`] that rate-limits requests with a [`Limiter`]; see the
/// [module docs](self) for keys and responses. Cheap to clone.
#[derive(Clone, Debug)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct RateLimitLayer {
    limiter: Limiter,
    trusted_proxies: Vec<IpAddr>,
    legacy_headers: bool,
}

impl RateLimitLayer {
    /// A layer deciding with `limiter`.
    pub fn new(limiter: Limiter) -> Self {
        RateLimitLayer {
            limiter,
            trusted_proxies: Vec::new(),
            legacy_headers: false,
        }
    }

    /// Proxies whose `X-Forwarded-For` header is believed (exact addresses; replaces any
    /// earlier list). List every proxy hop in front of the service, or clients behind an
    /// unlisted hop share that hop's budget. Default: none, so forwarding headers are
    /// ignored and the TCP peer is the client.
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = IpAddr>) -> Self {
        self.trusted_proxies = proxies.into_iter().map(|ip| ip.to_canonical()).collect();
        self
    }

    /// Also send the legacy `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
    /// `X-RateLimit-Reset` headers. Default: false.
    pub fn legacy_headers(mut self, yes: bool) -> Self {
        self.legacy_headers = yes;
        self
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let window = ceil_secs(self.limiter.quota().window());
        RateLimitService {
            inner,
            shared: Arc::new(Shared {
                limiter: self.limiter.clone(),
                trusted_proxies: self.trusted_proxies.clone(),
                legacy_headers: self.legacy_headers,
                window_secs: window,
                warned_unknown: AtomicBool::new(false),
            }),
        }
    }
}

/// The [`Service`] made by [`RateLimitLayer`]. Cheap to clone when `S` is.
#[derive(Debug)]
pub struct RateLimitService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for RateLimitService<S> {
    fn clone(&self) -> Self {
        RateLimitService {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

#[derive(Debug)]
struct Shared {
    limiter: Limiter,
    trusted_proxies: Vec<IpAddr>,
    legacy_headers: bool,
    window_secs: u64,
    warned_unknown: AtomicBool,
}

impl<S, B, ResBody> Service<Request<B>> for RateLimitService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResBody: From<&'static str> + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone may not be ready; keep the instance `poll_ready` readied for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        let key = shared.key(&req);
        Box::pin(async move {
            let decision = shared.limiter.check(&key).await;
            if !decision.allowed {
                return Ok(shared.refused(&decision));
            }
            req.extensions_mut().insert(decision.clone());
            let mut res = inner.call(req).await?;
            shared.set_headers(res.headers_mut(), &decision);
            Ok(res)
        })
    }
}

impl Shared {
    fn key<B>(&self, req: &Request<B>) -> String {
        if let Some(RateLimitKey(id)) = req.extensions().get::<RateLimitKey>() {
            return format!("user:{id}");
        }
        if let Some(PeerAddr(peer)) = req.extensions().get::<PeerAddr>() {
            return format!("ip:{}", self.client_ip(peer.ip(), req.headers()));
        }
        if !self.warned_unknown.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limiter = %self.limiter.name(),
                "tierkit: request without RateLimitKey or PeerAddr extension; all such requests \
                 share the `ip:unknown` budget (insert PeerAddr in the server integration)"
            );
        }
        "ip:unknown".to_owned()
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.contains(&ip)
    }

    /// The peer, or, when the peer is a trusted proxy, the rightmost untrusted hop of
    /// `X-Forwarded-For` (header lines in order, entries right to left).
    fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.is_trusted(client) {
            return client;
        }
        for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
            let Ok(line) = line.to_str() else {
                return client;
            };
            for entry in line.rsplit(',') {
                let Some(ip) = parse_hop(entry.trim()) else {
                    return client;
                };
                client = ip;
                if !self.is_trusted(ip) {
                    return ip;
                }
            }
        }
        client
    }

    fn set_headers(&self, headers: &mut HeaderMap, d: &Decision) {
        let reset = ceil_secs(d.reset_after);
        insert(
            headers,
            RATELIMIT_POLICY,
            format!("{};w={}", d.limit, self.window_secs),
        );
        insert(
            headers,
            RATELIMIT,
            format!(
                "limit={}, remaining={}, reset={reset}",
                d.limit, d.remaining
            ),
        );
        if self.legacy_headers {
            headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(d.limit));
            headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(d.remaining));
            headers.insert(X_RATELIMIT_RESET, HeaderValue::from(reset));
        }
    }

    fn refused<ResBody: From<&'static str>>(&self, d: &Decision) -> Response<ResBody> {
        let mut res = Response::new(ResBody::from(REFUSED_BODY));
        *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let retry = ceil_secs(d.retry_after.unwrap_or(d.reset_after)).max(1);
        let headers = res.headers_mut();
        headers.insert(RETRY_AFTER, HeaderValue::from(retry));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        self.set_headers(headers, d);
        res
    }
}

/// One `X-Forwarded-For` entry: an IP address, optionally with a port.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()?;
    Some(ip.to_canonical())
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Inserts a header built from text, skipping it (never panicking) if the text is not a valid
/// header value.
fn insert(headers: &mut HeaderMap, name: HeaderName, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn shared(trusted: &[&str]) -> Shared {
        let quota = super::super::Quota::new(3, Duration::from_millis(1500)).unwrap();
        let limiter = super::super::LimiterBuilder::new(
            None,
            crate::keys::Keys::default(),
            crate::config::SharedClock::default(),
            "t".into(),
            quota,
            Default::default(),
        )
        .build()
        .unwrap();
        let layer = RateLimitLayer::new(limiter)
            .trusted_proxies(trusted.iter().map(|s| s.parse::<IpAddr>().unwrap()));
        let svc = layer.layer(());
        Arc::try_unwrap(svc.shared).unwrap()
    }

    fn request(peer: Option<&str>, xff: &[&str]) -> Request<()> {
        let mut req = Request::new(());
        if let Some(peer) = peer {
            req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
        }
        for line in xff {
            req.headers_mut()
                .append(X_FORWARDED_FOR, HeaderValue::from_str(line).unwrap());
        }
        req
    }

    #[test]
    fn user_key_wins_over_ip() {
        let s = shared(&[]);
        let mut req = request(Some("192.0.2.1:5000"), &[]);
        req.extensions_mut().insert(RateLimitKey("42".into()));
        assert_eq!(s.key(&req), "user:42");
    }

    #[test]
    fn untrusted_peer_ignores_forwarded_for() {
        let s = shared(&[]);
        let req = request(Some("192.0.2.1:5000"), &["198.51.100.9"]);
        assert_eq!(s.key(&req), "ip:192.0.2.1");
    }

    #[test]
    fn trusted_peer_takes_rightmost_untrusted_hop() {
        let s = shared(&["10.0.0.1", "10.0.0.2"]);
        let req = request(
            Some("10.0.0.1:443"),
            &["203.0.113.66, 198.51.100.9", "10.0.0.2"],
        );
        assert_eq!(s.key(&req), "ip:198.51.100.9");
        // All hops trusted: the leftmost one.
        let req = request(Some("10.0.0.1:443"), &["10.0.0.2"]);
        assert_eq!(s.key(&req), "ip:10.0.0.2");
        // No header: the proxy itself.
        let req = request(Some("10.0.0.1:443"), &[]);
        assert_eq!(s.key(&req), "ip:10.0.0.1");
    }

    #[test]
    fn malformed_hop_stops_at_nearest_trusted() {
        let s = shared(&["10.0.0.1", "10.0.0.2"]);
        let req = request(Some("10.0.0.1:443"), &["198.51.100.9, garbage, 10.0.0.2"]);
        assert_eq!(s.key(&req), "ip:10.0.0.2");
        let req = request(Some("10.0.0.1:443"), &["198.51.100.9,"]);
        assert_eq!(s.key(&req), "ip:10.0.0.1");
    }

    #[test]
    fn hops_with_ports_and_mapped_addresses() {
        let s = shared(&["::ffff:10.0.0.1"]);
        let req = request(Some("10.0.0.1:443"), &["[2001:db8::1]:8080"]);
        assert_eq!(s.key(&req), "ip:2001:db8::1");
        let mapped = Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped();
        let req = request(None, &["198.51.100.9:1234"]);
        let mut req = req;
        req.extensions_mut()
            .insert(PeerAddr(SocketAddr::new(IpAddr::V6(mapped), 443)));
        assert_eq!(s.key(&req), "ip:198.51.100.9");
        assert_eq!(parse_hop("::1"), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }

    #[test]
    fn no_peer_shares_unknown() {
        let s = shared(&[]);
        assert_eq!(s.key(&request(None, &[])), "ip:unknown");
    }

    #[test]
    fn headers_round_up() {
        let s = shared(&[]);
        assert_eq!(s.window_secs, 2);
        let d = Decision {
            allowed: false,
            limit: 3,
            remaining: 0,
            reset_after: Duration::from_millis(1200),
            retry_after: Some(Duration::from_millis(10)),
            tier: super::super::Tier::Local,
            decided_at: None,
            degraded: false,
        };
        let res: Response<String> = s.refused(&d);
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = res.headers();
        assert_eq!(h[RETRY_AFTER], "1");
        assert_eq!(h[RATELIMIT_POLICY], "3;w=2");
        assert_eq!(h[RATELIMIT], "limit=3, remaining=0, reset=2");
        assert!(h.get(X_RATELIMIT_LIMIT).is_none());
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_secs(60)), 60);
    }
}
