//! A small HTTP service on tierkit and axum: an events API cached in front of a (fake, slow)
//! database, login sessions with "where am I logged in", per-user / per-IP rate limiting,
//! `/health` and Prometheus `/metrics`.
//!
//! Runs with no Redis at all (embedded: everything in-process), or with Redis behind it:
//!
//! ```sh
//! cargo run --example service --features tower,metrics
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example service --features tower,metrics
//! ```
//!
//! Environment: `BIND` (default `127.0.0.1:3000`), `RATE_LIMIT` as `LIMIT/SECONDS` (default
//! `100/900`: 100 requests per 15 minutes), `ACCESS_TOKEN_SECRET` (the key access tokens are
//! signed with; every instance needs the same; default: random per process), `RUST_LOG`
//! (default `info`), and the Redis settings of [`tierkit::Config::from_env`] (`REDIS_URL`,
//! `REDIS_HOST`, ...).
//!
//! ## Endpoints
//!
//! | endpoint | what |
//! |---|---|
//! | `POST /login` `{"user","device","deviceName"?}` | a new session: `201 {"sessionId","refreshToken","accessToken"}` |
//! | `POST /logout` (bearer) | revokes the session: `204` |
//! | `POST /refresh` `{"refreshToken"}` | rotates the refresh token: `{"refreshToken"}`; `401` unknown, `409` reused (the session is revoked) |
//! | `GET /api/events/{id}` | an event through the cache: `{"event", "source": "l1"\|"l2"\|"loader"}`; public |
//! | `GET /api/sessions` (bearer) | the caller's sessions, newest first |
//! | `GET /api/me` (bearer, `X-Access-Token` optional) | `{"userId","degraded"}`: who is calling; `degraded` when only the signed access token vouched (Redis down) |
//! | `GET /health` | the tierkit health report: `200` healthy or degraded, `503` unhealthy |
//! | `GET /metrics` | Prometheus text |
//!
//! "bearer" means `Authorization: Bearer <sessionId>`. Everything under `/api/` is rate limited:
//! per user when the request carries a valid session, per client IP otherwise.
//!
//! Try it:
//!
//! ```sh
//! curl -s localhost:3000/api/events/42           # "source":"loader" (the database, ~20 ms)
//! curl -s localhost:3000/api/events/42           # "source":"l1" (in-process copy)
//! curl -s -XPOST localhost:3000/login -H 'content-type: application/json' \
//!      -d '{"user":"ada","device":"desktop"}'
//! curl -s localhost:3000/api/sessions -H "authorization: Bearer $SESSION_ID"
//! curl -s localhost:3000/health
//! ```
//!
//! ## When Redis is down
//!
//! - Cached reads keep working: L1 first, then the database. `/health` says `degraded` (still
//!   `200`) and turns `unhealthy` (`503`) only after Redis has been down for 5 minutes.
//! - Rate limiting continues on each instance's local limiter.
//! - A session this instance validated within the last 30 s still validates (a local copy).
//!   Otherwise validation is `Unavailable`: public endpoints serve the caller anonymously
//!   (rate limited by IP), endpoints that need a session answer `503` with `Retry-After`, not
//!   `401` (the client should retry, not log the user out).
//! - Login, logout, refresh and the session list answer `503`: tierkit never pretends a session
//!   write or a revocation happened when Redis did not take it.
//! - With `X-Access-Token` (the signed token from login), a session this instance has no copy
//!   of is still recognised ("JWT-only validation"): the token's HMAC signature, expiry and
//!   session binding vouch for the user, and `/api/me` says `degraded`. A revocation made
//!   elsewhere during the outage cannot be seen that way, so keep access tokens short-lived.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hmac::{Hmac, Mac};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tierkit::cache::{Namespace, Source};
use tierkit::ratelimit::layer::{PeerAddr, RateLimitKey, RateLimitLayer};
use tierkit::ratelimit::Quota;
use tierkit::report::Status;
use tierkit::session::{Device, DeviceKind, NewSession, Refresh, Session, Sessions, Validation};
use tierkit::Tierkit;

// ---------------------------------------------------------------------------------------------
// The fake database
// ---------------------------------------------------------------------------------------------

/// An event, as the database stores it and the API returns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: u64,
    pub title: String,
    pub venue: String,
    pub attendees: Vec<u64>,
}

/// The database's "no such row".
#[derive(Debug)]
pub struct NotFound;

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no such event")
    }
}

impl StdError for NotFound {}

/// Stands in for the service's database: events `1..=1000`, 20 ms per query, and a query
/// counter that shows what the cache saves.
#[derive(Debug, Default)]
pub struct Database {
    queries: AtomicU64,
}

impl Database {
    /// The highest event id that exists.
    pub const EVENTS: u64 = 1000;
    const QUERY_TIME: Duration = Duration::from_millis(20);

    /// Queries run so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    async fn event(&self, id: u64) -> Result<Event, NotFound> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Self::QUERY_TIME).await;
        if !(1..=Self::EVENTS).contains(&id) {
            return Err(NotFound);
        }
        Ok(Event {
            id,
            title: format!("Meetup #{id}"),
            venue: format!("Room {}", id % 7 + 1),
            attendees: (0..id % 50).collect(),
        })
    }
}

/// The events cache: declared once here, so the app and the warm-up share it.
fn events_namespace(kit: &Tierkit) -> tierkit::Result<Namespace<Event>> {
    kit.namespace::<Event>("events")
        .ttl(Duration::from_secs(30 * 60)) // in Redis
        .l1_ttl(Duration::from_secs(60)) // in-process copies: bounds staleness without Redis
        .build()
}

/// Warms the first `count` events before serving (8 database queries at a time, skipping
/// what Redis already holds), drawing a progress bar on stderr.
pub async fn warm_events(kit: &Tierkit, db: &Database, count: u64) -> tierkit::Result<()> {
    let events = events_namespace(kit)?;
    let done = events
        .warm(
            (1..=count).map(|id| id.to_string()),
            8,
            |key| async move {
                let id = key.parse::<u64>().map_err(|_| NotFound)?;
                db.event(id).await
            },
            |p| {
                let width = 30;
                let filled = p.done * width / p.total.max(1);
                eprint!(
                    "\rwarming events [{}{}] {}/{}",
                    "#".repeat(filled),
                    ".".repeat(width - filled),
                    p.done,
                    p.total
                );
            },
        )
        .await?;
    eprintln!(
        "\nwarmed: {} loaded, {} already cached, {} failed",
        done.loaded, done.skipped, done.failed
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The app
// ---------------------------------------------------------------------------------------------

/// What the app is built with beyond tierkit and the database. `main` reads it from the
/// environment; tests pass their own.
pub struct Settings {
    /// The `/api/*` quota per user (or per IP when anonymous).
    pub rate_limit: Quota,
    /// Renders `/metrics`. The Prometheus recorder is process-global, so whoever starts the
    /// process installs it (see `main`) and hands the handle in.
    pub metrics: PrometheusHandle,
    /// How long a retired refresh token still rotates (two tabs refreshing at once); after
    /// it, presenting the token again is reuse.
    pub refresh_grace: Duration,
    /// The key access tokens are signed with (HMAC-SHA256); the same on every instance.
    pub access_token_secret: Vec<u8>,
}

/// How long an access token holds: it vouches on its own only while Redis is down, and a
/// revocation cannot reach it then, so it is short.
const ACCESS_TOKEN_LIFE: Duration = Duration::from_secs(15 * 60);

/// Signed access tokens, `{user}.{expiry unix secs}.{hex HMAC-SHA256 of session id, user and
/// expiry}`: bound to one session, checkable without Redis.
#[derive(Clone)]
struct AccessTokens(Arc<Vec<u8>>);

impl AccessTokens {
    fn mac(&self, session_id: &str, user: &str, expiry: u64) -> Hmac<Sha256> {
        // A key of any length is accepted by HMAC.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key");
        mac.update(format!("{session_id}\n{user}\n{expiry}").as_bytes());
        mac
    }

    fn issue(&self, session_id: &str, user: &str) -> String {
        let expiry = unix_secs(SystemTime::now() + ACCESS_TOKEN_LIFE);
        let sig = self.mac(session_id, user, expiry).finalize().into_bytes();
        let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
        format!("{user}.{expiry}.{hex}")
    }

    /// The user, when the token is genuine, unexpired and issued for `session_id`.
    fn verify(&self, session_id: &str, token: &str) -> Option<String> {
        let (rest, hex) = token.rsplit_once('.')?;
        let (user, expiry) = rest.rsplit_once('.')?;
        let expiry: u64 = expiry.parse().ok()?;
        if expiry < unix_secs(SystemTime::now()) || hex.len() != 64 {
            return None;
        }
        let sig: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect::<Option<_>>()?;
        // Constant time, through the MAC's own comparison.
        self.mac(session_id, user, expiry)
            .verify_slice(&sig)
            .ok()
            .map(|()| user.to_owned())
    }
}

/// Everything the handlers share. Cheap to clone: every field is a handle.
#[derive(Clone)]
struct AppState {
    kit: Tierkit,
    db: Arc<Database>,
    events: Namespace<Event>,
    sessions: Sessions,
    tokens: AccessTokens,
    metrics: PrometheusHandle,
}

/// Builds the service on `kit`: declares the cache namespace, the session store and the
/// limiter, and wires the routes. Serve it with the peer address recorded, which the rate
/// limiter and the session metadata need:
///
/// ```ignore
/// axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await
/// ```
pub fn app(kit: Tierkit, db: Arc<Database>, settings: Settings) -> tierkit::Result<Router> {
    let events = events_namespace(&kit)?;
    // 14-day sliding expiry, 30 days at most. While Redis is down, a signed access token
    // vouches for its session on its own.
    let tokens = AccessTokens(Arc::new(settings.access_token_secret));
    let verifier = tokens.clone();
    let sessions = kit
        .sessions()
        .refresh_grace(settings.refresh_grace)
        .stateless_verifier(move |sid: &str, token: &str| verifier.verify(sid, token))
        .build()?;
    let limiter = kit.limiter("api", settings.rate_limit).build()?;
    let state = AppState {
        kit,
        db,
        events,
        sessions,
        tokens,
        metrics: settings.metrics,
    };

    let api = Router::new()
        .route("/events/{id}", get(get_event))
        .route("/sessions", get(my_sessions))
        .route("/me", get(me))
        // Layers run bottom-up: `authenticate` first (it tells the limiter who is calling),
        // then the limiter, then the handler. Behind a load balancer, add
        // `.trusted_proxies([its address])` so clients are keyed by X-Forwarded-For.
        .layer(RateLimitLayer::new(limiter).legacy_headers(true))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));

    Ok(Router::new()
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/refresh", post(refresh))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .nest("/api", api)
        .with_state(state))
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Every failure a handler can answer with, as `{"error": "..."}`.
#[derive(Debug)]
enum ApiError {
    BadRequest(&'static str),
    /// No session, or one that is unknown, expired or revoked.
    Unauthorized,
    NotFound,
    Conflict(&'static str),
    /// Redis is down and the answer needs it: retry shortly.
    Unavailable,
    Internal,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "not logged in"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not found"),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "session store unavailable, retry shortly",
            ),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        };
        let mut res = (status, Json(serde_json::json!({ "error": message }))).into_response();
        match status {
            StatusCode::UNAUTHORIZED => {
                res.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                res.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        res
    }
}

impl From<tierkit::Error> for ApiError {
    fn from(e: tierkit::Error) -> Self {
        if e.is_connectivity() {
            ApiError::Unavailable
        } else {
            tracing::error!(error = %e, "request failed");
            ApiError::Internal
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

/// Who is calling, as [`authenticate`] found out; a request extension on `/api/*`.
#[derive(Clone, Debug)]
enum Caller {
    /// No `Authorization` header.
    Anonymous,
    /// A live session.
    User(Box<Session>),
    /// A session id that is unknown, expired or revoked.
    Invalid,
    /// Redis is down and this instance has no recent copy of the session.
    Unavailable,
    /// Redis is down; the signed access token vouched for this user.
    Stateless(String),
}

impl Caller {
    /// The session, for endpoints that need one.
    fn session(&self) -> Result<&Session, ApiError> {
        match self {
            Caller::User(session) => Ok(session),
            Caller::Unavailable | Caller::Stateless(_) => Err(ApiError::Unavailable),
            Caller::Anonymous | Caller::Invalid => Err(ApiError::Unauthorized),
        }
    }

    /// The user and whether only the access token vouched, for endpoints that need no more.
    fn user(&self) -> Result<(&str, bool), ApiError> {
        match self {
            Caller::Stateless(user) => Ok((user, true)),
            other => other.session().map(|s| (s.user_id.as_str(), false)),
        }
    }
}

/// `X-Access-Token`: the signed token from login.
const ACCESS_TOKEN: &str = "x-access-token";

/// The session id of `Authorization: Bearer <id>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Middleware of `/api/*`: records the TCP peer for the limiter's per-IP key, validates the
/// bearer session if there is one, and keys the limiter by user when it is valid. Never
/// rejects: each handler decides whether it needs a session ([`Caller::session`]).
async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
        let peer = PeerAddr(*addr);
        req.extensions_mut().insert(peer);
    }
    let access = req
        .headers()
        .get(ACCESS_TOKEN)
        .and_then(|v| v.to_str().ok());
    let caller = match bearer(req.headers()) {
        None => Caller::Anonymous,
        Some(session_id) => {
            // The signed token is the fallback for when Redis cannot answer: Redis does not
            // know it (it is signed over the session id, so issued after the session).
            let validation = match (state.sessions.validate(session_id).await, access) {
                (Validation::Unavailable, Some(token)) => {
                    state.sessions.validate_access(session_id, token).await
                }
                (validation, _) => validation,
            };
            match validation {
                Validation::Valid(session) => Caller::User(Box::new(session)),
                Validation::Stateless { user_id } => Caller::Stateless(user_id),
                Validation::Unavailable => Caller::Unavailable,
                _ => Caller::Invalid,
            }
        }
    };
    if let Ok((user, _)) = caller.user() {
        let key = RateLimitKey(user.to_owned());
        req.extensions_mut().insert(key);
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

// ---------------------------------------------------------------------------------------------
// Events: cache-aside over the database
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct EventReply<'a> {
    event: &'a Event,
    /// `l1` (this process), `l2` (Redis) or `loader` (the database).
    source: Source,
}

/// `GET /api/events/{id}`: public. One database query per id per process however many
/// requests arrive at once; Redis shares the result with the other instances.
async fn get_event(
    State(state): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    let db = state.db.clone();
    let hit = state
        .events
        .get_or_set(&id.to_string(), move || async move { db.event(id).await })
        .await
        .map_err(|e| match &e {
            // A missing row is not cached: each lookup of it asks the database again.
            tierkit::Error::Loader(cause) if cause.downcast_ref::<NotFound>().is_some() => {
                ApiError::NotFound
            }
            _ => ApiError::from(e),
        })?;
    Ok(Json(EventReply {
        event: &hit,
        source: hit.source(),
    })
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoginRequest {
    user: String,
    /// `desktop`, `mobile`, `tablet`; anything else counts as `other`.
    #[serde(default)]
    device: String,
    /// A display name such as "Firefox on Linux"; default: the user agent.
    device_name: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LoginReply<'a> {
    session_id: &'a str,
    refresh_token: &'a str,
    access_token: String,
}

/// `POST /login`: creates a session with the client's device, user agent and IP.
///
/// A stand-in: a real service checks a password (or OAuth, ...) before this point.
async fn login(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Json(body): Json<LoginRequest>,
) -> Result<Response, ApiError> {
    let user = body.user.trim();
    if user.is_empty() {
        return Err(ApiError::BadRequest("user is empty"));
    }
    let kind = match body.device.to_ascii_lowercase().as_str() {
        "desktop" => DeviceKind::Desktop,
        "mobile" => DeviceKind::Mobile,
        "tablet" => DeviceKind::Tablet,
        _ => DeviceKind::Other,
    };
    let user_agent = headers
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let device_name = match body.device_name {
        Some(name) if !name.is_empty() => name,
        _ if !user_agent.is_empty() => user_agent.to_owned(),
        _ => "unknown device".to_owned(),
    };
    let mut new = NewSession::new(user)
        .device(kind, device_name)
        .user_agent(user_agent);
    if let Some(Extension(ConnectInfo(addr))) = peer {
        new = new.ip(addr.ip().to_canonical().to_string());
    }
    // The signed token is bound to the session id, which exists only once created: it is
    // issued after, so Redis does not hold its hash and it serves only as the fallback.
    let created = state.sessions.create(new).await?;
    let reply = LoginReply {
        session_id: created.session_id.expose(),
        refresh_token: created.refresh_token.expose(),
        access_token: state.tokens.issue(created.session_id.expose(), user),
    };
    Ok((StatusCode::CREATED, Json(reply)).into_response())
}

/// `POST /logout`: revokes the bearer session, everywhere at once.
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Result<StatusCode, ApiError> {
    let session_id = bearer(&headers).ok_or(ApiError::Unauthorized)?;
    if state.sessions.revoke(session_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::Unauthorized)
    }
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct RefreshBody {
    refresh_token: String,
}

/// `POST /refresh`: trades a refresh token for a new one. The old one stays good for a few
/// seconds (two tabs refreshing at once); presenting an older one again revokes the session.
async fn refresh(
    State(state): State<AppState>,
    Json(body): Json<RefreshBody>,
) -> Result<Json<RefreshBody>, ApiError> {
    match state.sessions.refresh(&body.refresh_token).await? {
        Refresh::Rotated { refresh_token, .. } => Ok(Json(RefreshBody {
            refresh_token: refresh_token.expose().to_owned(),
        })),
        Refresh::Reused => Err(ApiError::Conflict(
            "refresh token was already used; the session is revoked, log in again",
        )),
        _ => Err(ApiError::Unauthorized),
    }
}

/// One row of "where you are logged in". Times are Unix seconds.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionView<'a> {
    /// Public id of the session (never the session id itself).
    handle: &'a str,
    device: &'a Device,
    user_agent: &'a str,
    ip: &'a str,
    created_at: u64,
    last_seen: u64,
    expires_at: u64,
    /// Whether this is the session making the request.
    current: bool,
}

#[derive(Serialize)]
struct SessionsReply<'a> {
    sessions: Vec<SessionView<'a>>,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Me<'a> {
    user_id: &'a str,
    degraded: bool,
}

/// `GET /api/me`: who is calling. `degraded` when Redis is down and only the signed access
/// token vouched.
async fn me(Extension(caller): Extension<Caller>) -> Result<Response, ApiError> {
    let (user_id, degraded) = caller.user()?;
    Ok(Json(Me { user_id, degraded }).into_response())
}

/// `GET /api/sessions`: the caller's sessions, newest first.
async fn my_sessions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let me = caller.session()?;
    let sessions = state.sessions.list(&me.user_id).await?;
    let views: Vec<SessionView<'_>> = sessions
        .iter()
        .map(|s| SessionView {
            handle: &s.handle,
            device: &s.device,
            user_agent: &s.user_agent,
            ip: &s.ip,
            created_at: unix_secs(s.created_at),
            last_seen: unix_secs(s.last_seen),
            expires_at: unix_secs(s.expires_at),
            current: s.handle == me.handle,
        })
        .collect();
    Ok(Json(SessionsReply { sessions: views }).into_response())
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// `GET /health`: the report as JSON; `503` only when unhealthy, so a load balancer keeps a
/// degraded instance (still serving from its in-process tier) in rotation. The public form:
/// error text and node addresses are for internal endpoints only.
async fn health(State(state): State<AppState>) -> Response {
    let report = state.kit.health_report_with(&state.sessions).await.public();
    let status = match report.status {
        Status::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    (status, Json(report)).into_response()
}

/// `GET /metrics`: whatever tierkit (and the rest of the process) recorded.
async fn metrics(State(state): State<AppState>) -> Response {
    // Cache counters are published once a second; publish now for exact figures.
    state.kit.publish_metrics().await;
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(CONTENT_TYPE, content_type)], state.metrics.render()).into_response()
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

/// `ACCESS_TOKEN_SECRET` (at least 32 bytes of text); without it, 32 random bytes, which only
/// this process knows (tokens it signs are worth nothing to other instances).
fn access_token_secret() -> Result<Vec<u8>, Box<dyn StdError>> {
    match std::env::var("ACCESS_TOKEN_SECRET") {
        Ok(secret) if secret.len() >= 32 => Ok(secret.into_bytes()),
        Ok(_) => Err("ACCESS_TOKEN_SECRET must be at least 32 bytes".into()),
        Err(_) => {
            let mut key = vec![0u8; 32];
            getrandom::fill(&mut key).map_err(|e| format!("OS random source: {e}"))?;
            Ok(key)
        }
    }
}

/// `RATE_LIMIT=LIMIT/SECONDS`, default 100 per 15 minutes.
fn rate_limit_from_env() -> Result<Quota, Box<dyn StdError>> {
    let spec = std::env::var("RATE_LIMIT").unwrap_or_default();
    if spec.trim().is_empty() {
        return Ok(Quota::new(100, Duration::from_secs(15 * 60))?);
    }
    let parsed = spec
        .split_once('/')
        .and_then(|(limit, secs)| Some((limit.trim().parse().ok()?, secs.trim().parse().ok()?)));
    let Some((limit, secs)) = parsed else {
        return Err(format!("RATE_LIMIT={spec:?}: expected LIMIT/SECONDS, e.g. 100/900").into());
    };
    Ok(Quota::new(limit, Duration::from_secs(secs))?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn StdError>> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    // Process-global: install before tierkit starts so its first figures are recorded too.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep(); // keeps histograms bounded
        }
    });

    let kit = Tierkit::from_env()?; // embedded unless REDIS_URL (or REDIS_HOST) is set
    let mode = if kit.is_embedded() {
        "embedded, no Redis"
    } else {
        "Redis, connecting in the background"
    };
    let settings = Settings {
        rate_limit: rate_limit_from_env()?,
        metrics,
        refresh_grace: Duration::from_secs(10),
        access_token_secret: access_token_secret()?,
    };
    let db = Arc::new(Database::default());
    let warm = std::env::var("WARM")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    warm_events(&kit, &db, warm).await?;
    let router = app(kit, db, settings)?;

    let bind = std::env::var("BIND")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .map_err(|e| format!("bind {bind}: {e}"))?;
    println!("listening on http://{} ({mode})", listener.local_addr()?);

    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
