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
//! 2. `ip:{client}` when it carries a [`PeerAddr`] extension, the TCP peer of the connection.
//!    The client is the peer, or, when the peer is one of the
//!    [`trusted_proxies`](RateLimitLayer::trusted_proxies) (addresses or CIDR ranges), the
//!    rightmost hop of the [forwarding header](ForwardedHeader) that is not a trusted proxy
//!    (the leftmost when all are). Any other peer's forwarding headers are ignored.
//!    IPv4-mapped IPv6 addresses count as IPv4.
//!
//!    A client is keyed by its network, not its address: `/64` for IPv6 (anyone with a VPS
//!    holds a whole `/64` and could rotate addresses within it) and `/32` for IPv4, both set
//!    with [`client_prefixes`](RateLimitLayer::client_prefixes): `ip:203.0.113.7`,
//!    `ip:2001:db8:1:2::/64`.
//! 3. `ip:malformed` when a trusted proxy's header holds an entry that is not an address (or
//!    an RFC 7239 `unknown` or obfuscated identifier) before any untrusted hop: every such
//!    request shares **one** budget, so a forged or broken header buys neither a fresh budget
//!    nor a place on the proxy's own.
//! 4. `ip:unknown` otherwise: every such request shares **one** budget (and a warning is
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
//! The rate-limit headers follow draft-ietf-httpapi-ratelimit-headers-07 by default:
//!
//! ```text
//! RateLimit-Policy: 100;w=60
//! RateLimit: limit=100, remaining=42, reset=17
//! ```
//!
//! or, with [`header_syntax`](RateLimitLayer::header_syntax)`(`[`HeaderSyntax::Draft10`]`)`,
//! the draft's current structured form, named after the limiter:
//!
//! ```text
//! RateLimit-Policy: "api";q=100;w=60
//! RateLimit: "api";r=42;t=17
//! ```
//!
//! `w` is the window in seconds, `reset` (`t`) the seconds until the whole quota is back (both
//! rounded up). With [`degraded_header`](RateLimitLayer::degraded_header), an answer decided
//! without Redis also carries `X-RateLimit-Degraded: local` (or `policy`). With
//! [`legacy_headers`](RateLimitLayer::legacy_headers) the layer also sends `X-RateLimit-Limit`,
//! `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds, not a timestamp).
//!
//! ## Allow and deny lists
//!
//! [`allow_list`](RateLimitLayer::allow_list) names users and networks the limit does not
//! apply to (never counted, no headers); [`deny_list`](RateLimitLayer::deny_list) those
//! refused outright with `403 Forbidden`. Networks match the client address after trusted
//! proxies; deny wins.
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
//! use tierkit::ratelimit::layer::{IpNet, PeerAddr, RateLimitKey, RateLimitLayer};
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
//! let internal: IpNet = "fd00::/8".parse().expect("a CIDR range");
//!
//! let layer = RateLimitLayer::new(limiter)
//!     .trusted_proxies([IpNet::from(load_balancer), internal])
//!     .client_prefixes(32, 64)?;
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(layer)
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

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, FORWARDED, RETRY_AFTER};
use http::{HeaderMap, Request, Response, StatusCode};
pub use ipnet::IpNet;
use tower::{Layer, Service};

use super::{Decision, Limiter, Tier};
use crate::error::{Error, Result};

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_RATELIMIT_DEGRADED: HeaderName = HeaderName::from_static("x-ratelimit-degraded");

/// The body of a `429` answer.
const REFUSED_BODY: &str = "Too Many Requests\n";
/// The body of the `403` a deny-listed client gets.
const FORBIDDEN_BODY: &str = "Forbidden\n";

/// What the allow and deny lists say of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listed {
    Allowed,
    Denied,
}

/// One side of the allow and deny lists: users (the [`RateLimitKey`] id) and networks (the
/// client address, after trusted proxies).
#[derive(Clone, Debug, Default)]
struct Lists {
    users: Vec<String>,
    nets: Vec<IpNet>,
}

/// An entry of an allow or deny list: a user id or a network.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListEntry {
    /// The id a [`RateLimitKey`] carries.
    User(String),
    /// Client addresses (after trusted proxies), as a CIDR range.
    Network(IpNet),
}

impl From<IpNet> for ListEntry {
    fn from(net: IpNet) -> Self {
        ListEntry::Network(net)
    }
}

impl From<IpAddr> for ListEntry {
    fn from(ip: IpAddr) -> Self {
        ListEntry::Network(IpNet::from(ip.to_canonical()))
    }
}

impl Lists {
    fn from_entries(entries: impl IntoIterator<Item = impl Into<ListEntry>>) -> Self {
        let mut lists = Lists::default();
        for entry in entries {
            match entry.into() {
                ListEntry::User(id) => lists.users.push(id),
                ListEntry::Network(net) => lists.nets.push(net.trunc()),
            }
        }
        lists
    }
}

/// Which form the rate-limit headers take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderSyntax {
    /// draft-ietf-httpapi-ratelimit-headers-07: `RateLimit-Policy: 100;w=60` and
    /// `RateLimit: limit=100, remaining=42, reset=17`.
    #[default]
    Draft07,
    /// The draft's current form (-09 and -10), structured fields naming the policy:
    /// `RateLimit-Policy: "api";q=100;w=60` and `RateLimit: "api";r=42;t=17`, where the name
    /// is the limiter's.
    Draft10,
}

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

/// Which header a trusted proxy names the client in. Read only one: a proxy that appends to
/// one header passes the other through as the client wrote it, so reading both would let a
/// client pick its own address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1` (the de facto standard).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for="[2001:db8::1]:4711"`: the `for`
    /// parameter of each element.
    Forwarded,
}

/// A tower [`Layer`] that rate-limits requests with a [`Limiter`]; see the
/// [module docs](self) for keys and responses. Cheap to clone.
#[derive(Clone, Debug)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct RateLimitLayer {
    limiter: Limiter,
    trusted_proxies: Vec<IpNet>,
    header: ForwardedHeader,
    v4_prefix: u8,
    v6_prefix: u8,
    legacy_headers: bool,
    degraded_header: bool,
    syntax: HeaderSyntax,
    allow: Lists,
    deny: Lists,
}

impl RateLimitLayer {
    /// A layer deciding with `limiter`.
    pub fn new(limiter: Limiter) -> Self {
        RateLimitLayer {
            limiter,
            trusted_proxies: Vec::new(),
            header: ForwardedHeader::default(),
            v4_prefix: 32,
            v6_prefix: 64,
            legacy_headers: false,
            degraded_header: false,
            syntax: HeaderSyntax::default(),
            allow: Lists::default(),
            deny: Lists::default(),
        }
    }

    /// Clients the limit does not apply to: users or networks (replaces any earlier list).
    /// Their requests are never counted and carry no rate-limit headers. A deny-list entry
    /// wins over an allow-list one.
    pub fn allow_list(mut self, entries: impl IntoIterator<Item = impl Into<ListEntry>>) -> Self {
        self.allow = Lists::from_entries(entries);
        self
    }

    /// Clients refused outright with `403 Forbidden`, before the limiter is asked: users or
    /// networks (replaces any earlier list).
    pub fn deny_list(mut self, entries: impl IntoIterator<Item = impl Into<ListEntry>>) -> Self {
        self.deny = Lists::from_entries(entries);
        self
    }

    /// The form of the rate-limit headers. Default: [`HeaderSyntax::Draft07`].
    pub fn header_syntax(mut self, syntax: HeaderSyntax) -> Self {
        self.syntax = syntax;
        self
    }

    /// Proxies whose forwarding header is believed: addresses ([`IpAddr`]) or CIDR ranges
    /// ([`IpNet`]); replaces any earlier list. List every proxy hop in front
    /// of the service, or clients behind an unlisted hop share that hop's budget. Default:
    /// none, so forwarding headers are ignored and the TCP peer is the client.
    pub fn trusted_proxies<P: Into<IpNet>>(mut self, proxies: impl IntoIterator<Item = P>) -> Self {
        self.trusted_proxies = proxies
            .into_iter()
            .map(|net| {
                let net = net.into().trunc();
                match net {
                    // An IPv4 range also covers its IPv4-mapped form, which canonical
                    // addresses never take: checked as IPv4.
                    IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                        Some(v4) if v6.prefix_len() >= 96 => {
                            IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net)
                        }
                        _ => net,
                    },
                    v4 => v4,
                }
            })
            .collect();
        self
    }

    /// The header trusted proxies name the client in. Default:
    /// [`ForwardedHeader::XForwardedFor`].
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// How much of a client's address its key keeps: an IPv4 client is keyed by its `/v4`
    /// network, an IPv6 one by its `/v6` network. Default: `/32` and `/64` (an IPv6 host is
    /// normally given a whole `/64`, and can rotate addresses within it at will).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `v4` above 32 or `v6` above 128.
    pub fn client_prefixes(mut self, v4: u8, v6: u8) -> Result<Self> {
        if v4 > 32 {
            return Err(Error::config(
                "client_prefixes.v4",
                format!("/{v4} is above /32"),
            ));
        }
        if v6 > 128 {
            return Err(Error::config(
                "client_prefixes.v6",
                format!("/{v6} is above /128"),
            ));
        }
        self.v4_prefix = v4;
        self.v6_prefix = v6;
        Ok(self)
    }

    /// Mark answers decided without Redis ([`Decision::degraded`]) with
    /// `X-RateLimit-Degraded: local` (the local tier or `fail_open`) or
    /// `X-RateLimit-Degraded: policy` (the [error policy](super::ErrorPolicy)), so clients and
    /// dashboards see that only this instance's share was enforced. Default: false.
    pub fn degraded_header(mut self, yes: bool) -> Self {
        self.degraded_header = yes;
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
                header: self.header,
                v4_prefix: self.v4_prefix,
                v6_prefix: self.v6_prefix,
                legacy_headers: self.legacy_headers,
                degraded_header: self.degraded_header,
                syntax: self.syntax,
                allow: self.allow.clone(),
                deny: self.deny.clone(),
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
    trusted_proxies: Vec<IpNet>,
    header: ForwardedHeader,
    v4_prefix: u8,
    v6_prefix: u8,
    legacy_headers: bool,
    degraded_header: bool,
    syntax: HeaderSyntax,
    allow: Lists,
    deny: Lists,
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
        let (key, listed) = shared.identify(&req);
        Box::pin(async move {
            match listed {
                Some(Listed::Denied) => return Ok(Shared::forbidden()),
                // Never counted, no rate-limit headers: the limit does not apply.
                Some(Listed::Allowed) => return inner.call(req).await,
                None => {}
            }
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
    #[cfg(test)]
    fn key<B>(&self, req: &Request<B>) -> String {
        self.identify(req).0
    }

    /// The request's key, and what the allow and deny lists say of it (deny wins; both are
    /// checked against the user and the client address alike).
    fn identify<B>(&self, req: &Request<B>) -> (String, Option<Listed>) {
        let user = req.extensions().get::<RateLimitKey>().map(|k| k.0.as_str());
        let ip = req
            .extensions()
            .get::<PeerAddr>()
            .map(|PeerAddr(peer)| self.client_ip(peer.ip(), req.headers()));
        let listed = |list: &Lists| {
            user.is_some_and(|u| list.users.iter().any(|x| x == u))
                || ip
                    .flatten()
                    .is_some_and(|ip| list.nets.iter().any(|net| net.contains(&ip)))
        };
        let verdict = if listed(&self.deny) {
            Some(Listed::Denied)
        } else if listed(&self.allow) {
            Some(Listed::Allowed)
        } else {
            None
        };
        let key = match (user, ip) {
            (Some(id), _) => format!("user:{id}"),
            (None, Some(Some(ip))) => format!("ip:{}", self.network(ip)),
            (None, Some(None)) => "ip:malformed".to_owned(),
            (None, None) => {
                if !self.warned_unknown.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        limiter = %self.limiter.name(),
                        "tierkit: request without RateLimitKey or PeerAddr extension; all such \
                         requests share the `ip:unknown` budget (insert PeerAddr in the server \
                         integration)"
                    );
                }
                "ip:unknown".to_owned()
            }
        };
        (key, verdict)
    }

    fn forbidden<ResBody: From<&'static str>>() -> Response<ResBody> {
        let mut res = Response::new(ResBody::from(FORBIDDEN_BODY));
        *res.status_mut() = StatusCode::FORBIDDEN;
        res.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        res
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// `ip` as the key names it: the whole address at a full prefix, else its network.
    fn network(&self, ip: IpAddr) -> String {
        let len = match ip {
            IpAddr::V4(_) => self.v4_prefix,
            IpAddr::V6(_) => self.v6_prefix,
        };
        match IpNet::new(ip, len) {
            Ok(net) if net.prefix_len() < net.max_prefix_len() => net.trunc().to_string(),
            _ => ip.to_string(),
        }
    }

    /// The peer, or, when the peer is a trusted proxy, the rightmost untrusted hop of the
    /// forwarding header (header lines in order, entries right to left); `None` when a hop
    /// that is not an address comes first.
    fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        let mut client = peer.to_canonical();
        if !self.is_trusted(client) {
            return Some(client);
        }
        let name = match self.header {
            ForwardedHeader::XForwardedFor => X_FORWARDED_FOR,
            ForwardedHeader::Forwarded => FORWARDED,
        };
        for line in headers.get_all(name).iter().rev() {
            // Bytes, not `to_str`: a stray non-ASCII byte a client wrote at the left of the
            // line must not hide the hops the proxies appended to its right.
            for entry in split_unquoted(line.as_bytes(), b',').rev() {
                let hop = match self.header {
                    ForwardedHeader::XForwardedFor => parse_hop(entry),
                    ForwardedHeader::Forwarded => forwarded_for(entry).and_then(parse_hop),
                };
                client = hop?;
                if !self.is_trusted(client) {
                    return Some(client);
                }
            }
        }
        Some(client)
    }

    fn set_headers(&self, headers: &mut HeaderMap, d: &Decision) {
        let reset = ceil_secs(d.reset_after);
        let (policy, current) = match self.syntax {
            HeaderSyntax::Draft07 => (
                format!("{};w={}", d.limit, self.window_secs),
                format!(
                    "limit={}, remaining={}, reset={reset}",
                    d.limit, d.remaining
                ),
            ),
            // Limiter names are `A-Z a-z 0-9 _ - .`: a valid sf-string as they are.
            HeaderSyntax::Draft10 => {
                let name = self.limiter.name();
                (
                    format!("\"{name}\";q={};w={}", d.limit, self.window_secs),
                    format!("\"{name}\";r={};t={reset}", d.remaining),
                )
            }
        };
        insert(headers, RATELIMIT_POLICY, policy);
        insert(headers, RATELIMIT, current);
        if self.degraded_header && d.degraded {
            let by = if d.tier == Tier::Policy {
                "policy"
            } else {
                "local"
            };
            headers.insert(X_RATELIMIT_DEGRADED, HeaderValue::from_static(by));
        }
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

/// One hop: an IP address, optionally with a port, IPv6 optionally in brackets, optionally
/// quoted (RFC 7239). `None` for anything else, including `unknown` and obfuscated names.
fn parse_hop(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    let ip = text
        .parse::<IpAddr>()
        .or_else(|_| text.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .or_else(|| {
            // `[v6]` without a port.
            let inner = text.strip_prefix('[')?.strip_suffix(']')?;
            inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
        })?;
    Some(ip.to_canonical())
}

/// The value of the `for` parameter of one `Forwarded` element; `None` without one.
fn forwarded_for(element: &[u8]) -> Option<&[u8]> {
    split_unquoted(element, b';').find_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (pair[..eq].trim_ascii(), &pair[eq + 1..]);
        name.eq_ignore_ascii_case(b"for")
            .then_some(value.trim_ascii())
    })
}

/// `bytes` split at `sep` outside double quotes.
fn split_unquoted(bytes: &[u8], sep: u8) -> impl DoubleEndedIterator<Item = &[u8]> {
    let mut quoted = false;
    let mut cuts = vec![0];
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            cuts.push(i);
        }
    }
    cuts.push(bytes.len());
    (0..cuts.len() - 1).map(move |i| {
        let start = if i == 0 { 0 } else { cuts[i] + 1 };
        &bytes[start..cuts[i + 1]]
    })
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
        let layer = RateLimitLayer::new(limiter).trusted_proxies(trusted.iter().map(|s| {
            s.parse::<IpNet>()
                .unwrap_or_else(|_| IpNet::from(s.parse::<IpAddr>().unwrap()))
        }));
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
    fn a_malformed_hop_never_lands_on_a_proxys_budget() {
        let s = shared(&["10.0.0.1", "10.0.0.2"]);
        for xff in [
            "198.51.100.9, garbage, 10.0.0.2",
            "198.51.100.9,",
            "unknown",
        ] {
            let req = request(Some("10.0.0.1:443"), &[xff]);
            assert_eq!(s.key(&req), "ip:malformed", "{xff}");
        }
        // Junk a client wrote at the left never hides the hop the proxy appended.
        let mut req = request(Some("10.0.0.1:443"), &[]);
        req.headers_mut().append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"\xff\xfe junk, 198.51.100.9").unwrap(),
        );
        assert_eq!(s.key(&req), "ip:198.51.100.9");
    }

    #[test]
    fn trusted_ranges_and_client_networks() {
        let s = shared(&["10.0.0.0/8", "fd00::/8"]);
        let req = request(Some("10.9.8.7:443"), &["2001:db8:1:2:aaaa::1, fd12::3"]);
        assert_eq!(s.key(&req), "ip:2001:db8:1:2::/64");
        let req = request(Some("[fd00::1]:443"), &["203.0.113.7"]);
        assert_eq!(s.key(&req), "ip:203.0.113.7");
        // Two addresses of one /64 share a key; another /64 does not.
        let a = s.key(&request(Some("[2001:db8::1]:1"), &[]));
        let b = s.key(&request(Some("[2001:db8::ffff:1]:1"), &[]));
        let c = s.key(&request(Some("[2001:db8:0:1::1]:1"), &[]));
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Mapped IPv4 proxies fall in IPv4 ranges.
        let req = request(Some("[::ffff:10.1.2.3]:443"), &["198.51.100.9"]);
        assert_eq!(s.key(&req), "ip:198.51.100.9");
    }

    #[test]
    fn client_prefixes_are_checked_and_applied() {
        let limiter = || shared(&[]).limiter;
        assert!(RateLimitLayer::new(limiter())
            .client_prefixes(33, 64)
            .is_err());
        assert!(RateLimitLayer::new(limiter())
            .client_prefixes(32, 129)
            .is_err());
        let layer = RateLimitLayer::new(limiter())
            .client_prefixes(24, 128)
            .unwrap();
        let s = Arc::try_unwrap(layer.layer(()).shared).unwrap();
        assert_eq!(
            s.key(&request(Some("192.0.2.77:1"), &[])),
            "ip:192.0.2.0/24"
        );
        assert_eq!(
            s.key(&request(Some("[2001:db8::1]:1"), &[])),
            "ip:2001:db8::1"
        );
    }

    #[test]
    fn lists_match_users_and_networks_and_deny_wins() {
        let mut s = shared(&["10.0.0.1"]);
        s.allow = Lists::from_entries([
            ListEntry::User("ops".into()),
            ListEntry::from("198.51.100.0/24".parse::<IpNet>().unwrap()),
        ]);
        s.deny = Lists::from_entries([
            ListEntry::User("mallory".into()),
            ListEntry::from("198.51.100.66".parse::<IpAddr>().unwrap()),
        ]);
        let verdict = |user: Option<&str>, xff: &str| {
            let mut req = request(Some("10.0.0.1:443"), &[xff]);
            if let Some(u) = user {
                req.extensions_mut().insert(RateLimitKey(u.into()));
            }
            s.identify(&req).1
        };
        assert_eq!(verdict(Some("ops"), "203.0.113.1"), Some(Listed::Allowed));
        assert_eq!(verdict(None, "198.51.100.7"), Some(Listed::Allowed));
        assert_eq!(verdict(None, "198.51.100.66"), Some(Listed::Denied));
        // An allowed user from a denied address is denied.
        assert_eq!(verdict(Some("ops"), "198.51.100.66"), Some(Listed::Denied));
        assert_eq!(
            verdict(Some("mallory"), "198.51.100.7"),
            Some(Listed::Denied)
        );
        assert_eq!(verdict(None, "203.0.113.1"), None);
        // The proxy's own address is not the client's.
        assert_eq!(verdict(None, "garbage"), None);
    }

    #[test]
    fn draft_10_headers_name_the_policy() {
        let mut s = shared(&[]);
        s.syntax = HeaderSyntax::Draft10;
        let d = Decision {
            allowed: true,
            limit: 3,
            remaining: 2,
            reset_after: Duration::from_millis(1200),
            retry_after: None,
            tier: super::super::Tier::Local,
            decided_at: None,
            degraded: false,
        };
        let mut h = HeaderMap::new();
        s.set_headers(&mut h, &d);
        assert_eq!(h[RATELIMIT_POLICY], r#""t";q=3;w=2"#);
        assert_eq!(h[RATELIMIT], r#""t";r=2;t=2"#);
    }

    #[test]
    fn rfc_7239_forwarded() {
        let mut s = shared(&["10.0.0.1"]);
        s.header = ForwardedHeader::Forwarded;
        let forwarded = |line: &str| {
            let mut req = request(Some("10.0.0.1:443"), &[]);
            req.headers_mut()
                .append(FORWARDED, HeaderValue::from_str(line).unwrap());
            s.key(&req)
        };
        assert_eq!(
            forwarded(
                r#"for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711""#
            ),
            "ip:2001:db8:cafe::/64"
        );
        assert_eq!(
            forwarded("for=198.51.100.9;proto=https, for=10.0.0.1"),
            "ip:198.51.100.9"
        );
        assert_eq!(forwarded(r#"for="198.51.100.9:80""#), "ip:198.51.100.9");
        assert_eq!(forwarded("for=unknown"), "ip:malformed");
        assert_eq!(forwarded("for=_hidden, for=10.0.0.1"), "ip:malformed");
        assert_eq!(forwarded("proto=https"), "ip:malformed");
        // The other header is not read.
        let req = request(Some("10.0.0.1:443"), &["198.51.100.9"]);
        assert_eq!(s.key(&req), "ip:10.0.0.1");
    }

    #[test]
    fn hops_with_ports_and_mapped_addresses() {
        let s = shared(&["::ffff:10.0.0.1"]);
        let req = request(Some("10.0.0.1:443"), &["[2001:db8::1]:8080"]);
        assert_eq!(s.key(&req), "ip:2001:db8::/64");
        let mapped = Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped();
        let req = request(None, &["198.51.100.9:1234"]);
        let mut req = req;
        req.extensions_mut()
            .insert(PeerAddr(SocketAddr::new(IpAddr::V6(mapped), 443)));
        assert_eq!(s.key(&req), "ip:198.51.100.9");
        assert_eq!(parse_hop(b"::1"), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(parse_hop(b"[::1]"), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
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
        assert!(h.get(X_RATELIMIT_DEGRADED).is_none());
        let mut s = s;
        s.degraded_header = true;
        assert!(s
            .refused::<String>(&d)
            .headers()
            .get(X_RATELIMIT_DEGRADED)
            .is_none());
        let degraded = Decision {
            degraded: true,
            ..d.clone()
        };
        assert_eq!(
            s.refused::<String>(&degraded).headers()[X_RATELIMIT_DEGRADED],
            "local"
        );
        let policy = Decision {
            tier: Tier::Policy,
            ..degraded
        };
        assert_eq!(
            s.refused::<String>(&policy).headers()[X_RATELIMIT_DEGRADED],
            "policy"
        );
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_secs(60)), 60);
    }
}
