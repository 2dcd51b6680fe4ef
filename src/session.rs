//! User sessions: created at login, validated on every request, listed per user ("where you
//! are logged in"), revoked one by one or all at once, with refresh-token rotation.
//!
//! Build a [`Sessions`] store with [`Tierkit::sessions`](crate::Tierkit::sessions). With Redis
//! configured the sessions live in Redis; embedded, in process memory, with the same API and
//! the same rules.
//!
//! ## Behavior
//!
//! - Session ids and refresh tokens are 256 bits from the OS random source, shaped
//!   `{tag}.{64 hex}` where `tag` is 32 bits of a hash of the user id (it routes every key of
//!   one user to one Redis Cluster slot). Stores keep only their SHA-256; comparisons of
//!   secrets are constant-time. A copy of Redis holds nothing that logs anyone in.
//! - A session ends `idle_timeout` after its last use (sliding) and `max_lifetime` after its
//!   creation at the latest. Uses move `last_seen` at most once per `touch_interval`, so a
//!   validation is one read.
//! - [`Sessions::refresh`] retires the presented refresh token and returns a new one. The
//!   immediately previous token stays good for `refresh_grace` (two tabs refreshing at once
//!   both succeed); any older token presented again revokes the whole session
//!   ([`Refresh::Reused`]).
//! - A revoked session never validates again on the instance that revoked it, whatever Redis
//!   does (a revocation Redis could not take is retried by the sweep until it does); on other
//!   instances at once while Redis is up, and within `staleness` while it is down.
//! - While Redis is down, [`Sessions::validate`] answers from a local copy of sessions it
//!   validated within `staleness` (default 30 s), else [`Validation::Unavailable`], so the
//!   service can fall back to stateless checks. `create`, `refresh` and the revocations
//!   return [`Error::Unavailable`] (or the Redis error) rather than pretend. (A `create` that
//!   fails part way may leave records behind; their id never reached anyone, so they can never
//!   validate, and they expire.)
//! - Validation waits for one read: the sliding-expiry touch and the removal of an expired
//!   record happen in the background.
//! - The routing tag is an unkeyed hash of the user id: whoever guesses a user id can tell
//!   whether a session id belongs to that user (not use it). Keep user ids opaque if that
//!   matters.
//!
//! ## Redis keys
//!
//! | key | holds |
//! |---|---|
//! | `{prefix}:s:{tag}:sess:{sha256(session id)}` | the session (hash: version, record) |
//! | `{prefix}:s:{tag}:idx:{user id}` | the user's sessions, by creation time (sorted set) |
//! | `{prefix}:s:{tag}:rt:{sha256(refresh token)}` | the session a refresh token belongs to |
//! | `{prefix}:s:users` | users with sessions, walked by the bounded sweep |
//! | `{prefix}:s:counts` | active sessions in total and per device kind |
//!
//! The `{tag}` braces are a Redis Cluster hash tag: every script and multi-key step of one user
//! stays in one slot; nothing crosses users.

mod record;
mod store;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::codec::Codec;
use crate::config::SharedClock;
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::keys::Keys;
use record::{digest, new_secret, now_ms, tag_of, user_tag, Record, Rotation};
use store::{split_member, MemoryStore, RedisStore, Store};

const CAS_ATTEMPTS: usize = 8;

/// The kind of device a session was created on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DeviceKind {
    /// A desktop or laptop browser or app.
    Desktop,
    /// A phone.
    Mobile,
    /// A tablet.
    Tablet,
    /// Anything else.
    #[default]
    Other,
}

impl DeviceKind {
    /// The lowercase name, as used in counts.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Desktop => "desktop",
            DeviceKind::Mobile => "mobile",
            DeviceKind::Tablet => "tablet",
            DeviceKind::Other => "other",
        }
    }
}

/// The device a session was created on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Its kind.
    pub kind: DeviceKind,
    /// A display name, e.g. "Firefox on Linux".
    pub name: String,
}

/// What a login knows about the new session.
///
/// # Examples
///
/// ```
/// use tierkit::session::{DeviceKind, NewSession};
///
/// let new = NewSession::new("user-42")
///     .user_agent("Mozilla/5.0 (X11; Linux x86_64)")
///     .ip("203.0.113.7")
///     .device(DeviceKind::Desktop, "Firefox on Linux")
///     .access_token("eyJhbGciOi...")
///     .meta("tenant", "acme");
/// # let _ = new;
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct NewSession {
    user_id: String,
    user_agent: String,
    ip: String,
    device: Device,
    access_token: Option<String>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession")
            .field("user_id", &self.user_id)
            .field("user_agent", &self.user_agent)
            .field("ip", &self.ip)
            .field("device", &self.device)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("metadata", &self.metadata)
            .finish()
    }
}

impl NewSession {
    /// A session for `user_id`.
    pub fn new(user_id: impl Into<String>) -> Self {
        NewSession {
            user_id: user_id.into(),
            ..NewSession::default()
        }
    }

    /// The client's user agent.
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = ua.into();
        self
    }

    /// The client's IP address.
    pub fn ip(mut self, ip: impl Into<String>) -> Self {
        self.ip = ip.into();
        self
    }

    /// The device.
    pub fn device(mut self, kind: DeviceKind, name: impl Into<String>) -> Self {
        self.device = Device {
            kind,
            name: name.into(),
        };
        self
    }

    /// An access token (e.g. a JWT) to bind to the session: only its hash is kept, and
    /// [`Sessions::validate_access`] checks it.
    pub fn access_token(mut self, token: impl Into<String>) -> Self {
        self.access_token = Some(token.into());
        self
    }

    /// Application metadata.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// A session as a service sees it. Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Session {
    /// A public handle (the SHA-256 of the session id): safe to show, and what
    /// [`Sessions::revoke_handle`] takes to log out one device from a list.
    pub handle: String,
    /// The user.
    pub user_id: String,
    /// The device.
    pub device: Device,
    /// The user agent at login.
    pub user_agent: String,
    /// The IP address at login.
    pub ip: String,
    /// Application metadata.
    pub metadata: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it was last used (to within `touch_interval`).
    pub last_seen: SystemTime,
    /// When it ends if not used again.
    pub expires_at: SystemTime,
}

/// A secret handed to the client once: the session id or a refresh token. `Debug` never
/// shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, to send to the client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A new session.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Created {
    /// The session id for the client (cookie or header).
    pub session_id: Secret,
    /// The first refresh token.
    pub refresh_token: Secret,
    /// The session.
    pub session: Session,
}

/// The answer of [`Sessions::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Validation {
    /// A live session.
    Valid(Session),
    /// Unknown, expired or revoked.
    Invalid,
    /// Redis is down and this instance has no recent copy: fall back to stateless checks.
    Unavailable,
}

impl Validation {
    /// The session, when valid.
    pub fn session(&self) -> Option<&Session> {
        match self {
            Validation::Valid(s) => Some(s),
            _ => None,
        }
    }
}

/// The answer of [`Sessions::refresh`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Refresh {
    /// The presented token is retired; use this one from now on.
    Rotated {
        /// The new refresh token.
        refresh_token: Secret,
        /// The session.
        session: Box<Session>,
    },
    /// Unknown token, or its session ended.
    Invalid,
    /// A retired token was presented again: the session is revoked (token theft is the
    /// likely cause).
    Reused,
}

/// Session analytics. Activity counters are this instance's since it started; the active
/// counts are global (kept in Redis, or in memory when embedded) and catch up with sessions
/// that simply expired when a list or the sweep finds them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SessionStats {
    /// Sessions created here.
    pub created: u64,
    /// Successful validations here (local copies included).
    pub validated: u64,
    /// Validations answered from the local copy while Redis was down.
    pub validated_locally: u64,
    /// Refresh rotations here.
    pub refreshed: u64,
    /// Sessions revoked here (reuse detection included).
    pub revoked: u64,
    /// Expired sessions found here (by validation, listing or sweep).
    pub expired: u64,
    /// Active sessions, all users.
    pub active: i64,
    /// Active sessions per device kind.
    pub by_device: BTreeMap<String, i64>,
}

/// The settings of a [`Sessions`] store.
#[derive(Clone, Debug)]
pub(crate) struct SessionConfig {
    pub(crate) idle: Duration,
    pub(crate) max_lifetime: Duration,
    pub(crate) touch_interval: Duration,
    pub(crate) refresh_grace: Duration,
    pub(crate) staleness: Duration,
    pub(crate) sweep_interval: Duration,
    pub(crate) sweep_batch: usize,
    /// Replicas that must acknowledge each write (Redis `WAIT`), and how long to wait.
    pub(crate) replicated: Option<(u32, Duration)>,
}

/// Configures a [`Sessions`] store; get one from [`Tierkit::sessions`](crate::Tierkit::sessions).
#[must_use = "a builder does nothing until build() is called"]
#[derive(Debug)]
pub struct SessionsBuilder {
    conn: Option<Conn>,
    codec: Codec,
    keys: Keys,
    // Read by the session clock seam (expiry decisions) as it lands.
    #[allow(dead_code)]
    clock: SharedClock,
    cfg: SessionConfig,
}

impl SessionsBuilder {
    pub(crate) fn new(conn: Option<Conn>, codec: Codec, keys: Keys, clock: SharedClock) -> Self {
        SessionsBuilder {
            conn,
            codec,
            keys,
            clock,
            cfg: SessionConfig {
                idle: Duration::from_secs(14 * 86_400),
                max_lifetime: Duration::from_secs(30 * 86_400),
                touch_interval: Duration::from_secs(60),
                refresh_grace: Duration::from_secs(10),
                staleness: Duration::from_secs(30),
                sweep_interval: Duration::from_secs(60),
                sweep_batch: 100,
                replicated: None,
            },
        }
    }

    /// A session ends this long after its last use. Default: 14 days.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.cfg.idle = d;
        self
    }

    /// A session ends this long after its creation, however much it is used. Default: 30 days.
    pub fn max_lifetime(mut self, d: Duration) -> Self {
        self.cfg.max_lifetime = d;
        self
    }

    /// Uses move `last_seen` (and the sliding expiry) at most this often. Default: 60 s.
    pub fn touch_interval(mut self, d: Duration) -> Self {
        self.cfg.touch_interval = d;
        self
    }

    /// How long a just-replaced refresh token is still accepted. Default: 10 s.
    pub fn refresh_grace(mut self, d: Duration) -> Self {
        self.cfg.refresh_grace = d;
        self
    }

    /// How old a local copy may be to validate while Redis is down. Default: 30 s.
    pub fn staleness(mut self, d: Duration) -> Self {
        self.cfg.staleness = d;
        self
    }

    /// How often the background sweep prunes stale index entries, and how many users one pass
    /// visits. Default: every 60 s, 100 users.
    pub fn sweep(mut self, every: Duration, users: usize) -> Self {
        self.cfg.sweep_interval = every;
        self.cfg.sweep_batch = users;
        self
    }

    /// Makes every session write (create, refresh, revoke, touch) wait until `replicas`
    /// replicas of the primary holding the session acknowledged it (Redis `WAIT`), for up to
    /// `wait`, which must be shorter than the configured `op_timeout`. A write fewer replicas
    /// took in time returns [`Error::NotReplicated`]: it is done on the primary, but a failover
    /// before replication could lose it. Do not retry it blindly: a retried create makes a
    /// second session, and a refresh already rotated the token (the previous one is still
    /// accepted within `refresh_grace`). With this set, a session write that returned `Ok`
    /// survives the promotion of any replica that acknowledged it, with one gap: `WAIT` counts
    /// the writes of its own connection, so a reconnect between the write and the `WAIT` (the
    /// write then failed or was cut off anyway) is not covered. Costs one more round trip (plus
    /// replication) per write; reads are unchanged. Applies to the session's own keys; the
    /// global analytics counts are not waited for. Default: off (a write is acknowledged once
    /// the primary has it).
    ///
    /// ```no_run
    /// # fn demo(kit: tierkit::Tierkit) -> tierkit::Result<()> {
    /// use std::time::Duration;
    /// let sessions = kit
    ///     .sessions()
    ///     .replicated_writes(1, Duration::from_millis(50))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn replicated_writes(mut self, replicas: u32, wait: Duration) -> Self {
        self.cfg.replicated = Some((replicas, wait));
        self
    }

    /// Validates and builds the store.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a zero duration, an idle timeout above the maximum lifetime, a
    /// zero sweep batch, or [`replicated_writes`](Self::replicated_writes) asking for zero
    /// replicas, no time, or a wait not shorter than `op_timeout`.
    pub fn build(self) -> Result<Sessions> {
        let c = &self.cfg;
        for (field, d) in [
            ("idle_timeout", c.idle),
            ("max_lifetime", c.max_lifetime),
            ("touch_interval", c.touch_interval),
            ("staleness", c.staleness),
            ("sweep_interval", c.sweep_interval),
        ] {
            if d.is_zero() {
                return Err(Error::config(field, "is zero; give a positive duration"));
            }
        }
        if c.idle > c.max_lifetime {
            return Err(Error::config(
                "idle_timeout",
                format!("{:?} exceeds max_lifetime {:?}", c.idle, c.max_lifetime),
            ));
        }
        if c.sweep_batch == 0 {
            return Err(Error::config("sweep", "visits zero users; use 1 or more"));
        }
        match c.replicated {
            Some((0, _)) => {
                return Err(Error::config(
                    "replicated_writes",
                    "asks for zero replicas; use 1 or more, or leave it off",
                ))
            }
            Some((_, wait)) if wait.is_zero() => {
                return Err(Error::config(
                    "replicated_writes",
                    "waits zero time; give a positive duration",
                ))
            }
            Some((_, wait)) if self.conn.as_ref().is_some_and(|c| wait >= c.op_timeout()) => {
                return Err(Error::config(
                    "replicated_writes",
                    format!(
                        "waits {wait:?}, not less than op_timeout {:?}; the wait must fit in one \
                         Redis call, so raise op_timeout or wait less",
                        self.conn.as_ref().map(Conn::op_timeout).unwrap_or_default()
                    ),
                ))
            }
            _ => {}
        }
        let store = match self.conn {
            Some(conn) => Store::Redis(RedisStore {
                conn,
                codec: self.codec,
                keys: self.keys,
                owed: std::sync::Mutex::default(),
                replicated: self.cfg.replicated,
            }),
            None => Store::Memory(MemoryStore::default()),
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let sessions = Sessions(Arc::new(Inner {
            local: window(self.cfg.staleness),
            // No session outlives max_lifetime, so neither need its revocation.
            revoked: window(self.cfg.max_lifetime),
            pending: std::sync::Mutex::new(Vec::new()),
            counters: Counters::default(),
            store,
            cfg: self.cfg,
            _stop_sweep: stop_tx,
        }));
        // Embedded stores prune as they are read; the Redis store also sweeps in the
        // background (given a runtime to run on).
        if let (Store::Redis(_), Ok(rt)) =
            (&sessions.0.store, tokio::runtime::Handle::try_current())
        {
            rt.spawn(sweep_loop(Arc::downgrade(&sessions.0), stop_rx));
        }
        Ok(sessions)
    }
}

#[derive(Default)]
struct Counters {
    created: AtomicU64,
    validated: AtomicU64,
    validated_locally: AtomicU64,
    refreshed: AtomicU64,
    revoked: AtomicU64,
    expired: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A session store. Cheap to clone.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> tierkit::Result<()> {
/// use tierkit::session::{DeviceKind, NewSession, Refresh, Validation};
///
/// let kit = tierkit::Tierkit::embedded();
/// let sessions = kit.sessions().build()?;
/// let login = sessions
///     .create(NewSession::new("user-42").device(DeviceKind::Mobile, "Pixel").ip("198.51.100.9"))
///     .await?;
///
/// let sid = login.session_id.expose();
/// assert!(matches!(sessions.validate(sid).await, Validation::Valid(_)));
/// assert_eq!(sessions.list("user-42").await?.len(), 1);
///
/// let Refresh::Rotated { refresh_token, .. } =
///     sessions.refresh(login.refresh_token.expose()).await?
/// else {
///     panic!("a fresh token rotates")
/// };
/// assert_ne!(refresh_token, login.refresh_token);
///
/// sessions.revoke(sid).await?;
/// assert_eq!(sessions.validate(sid).await, Validation::Invalid);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Sessions(Arc<Inner>);

struct Inner {
    store: Store,
    cfg: SessionConfig,
    /// Sessions validated recently, for validating while Redis is down.
    local: moka::sync::Cache<String, Session>,
    /// Sessions revoked here: never validated again here, whatever a read in flight, a local
    /// copy or a Redis that missed the deletion says.
    revoked: moka::sync::Cache<String, ()>,
    /// Revocations Redis did not take (it was down): retried by the sweep.
    pending: std::sync::Mutex<Vec<(String, String)>>,
    counters: Counters,
    _stop_sweep: oneshot::Sender<()>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("config", &self.0.cfg)
            .field(
                "store",
                &match self.0.store {
                    Store::Redis(_) => "redis",
                    Store::Memory(_) => "memory",
                },
            )
            .finish_non_exhaustive()
    }
}

/// Whether an error means "could not reach the store" (as opposed to bad data).
fn unreachable(e: &Error) -> bool {
    e.is_connectivity()
}

impl Sessions {
    /// Creates a session for a login.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty user id; [`Error::Unavailable`], [`Error::Timeout`] or
    /// [`Error::Redis`] when Redis cannot take it (nothing is created then).
    pub async fn create(&self, new: NewSession) -> Result<Created> {
        if new.user_id.is_empty() {
            return Err(Error::invalid("user_id", "is empty"));
        }
        let cfg = &self.0.cfg;
        let tag = user_tag(&new.user_id);
        let session_id = new_secret(&tag)?;
        let refresh_token = new_secret(&tag)?;
        let now = now_ms();
        let lifetime = u64::try_from(cfg.max_lifetime.as_millis()).unwrap_or(u64::MAX);
        let rec = Record {
            user_id: new.user_id,
            device: new.device,
            user_agent: new.user_agent,
            ip: new.ip,
            metadata: new.metadata,
            access_hash: new.access_token.as_deref().map(digest),
            created: now,
            seen: now,
            deadline: now.saturating_add(lifetime),
            refresh: digest(&refresh_token),
            grace: None,
            version: 0,
        };
        let hash = digest(&session_id);
        let kind = rec.device.kind.as_str();
        self.0
            .store
            .create(&tag, &hash, &rec.refresh, &rec, rec.ttl(now, cfg), kind)
            .await?;
        bump(&self.0.counters.created, 1);
        crate::metrics::session_event("created");
        let session = rec.to_session(&hash, cfg);
        self.0.local.insert(hash, session.clone());
        Ok(Created {
            session_id: Secret(session_id),
            refresh_token: Secret(refresh_token),
            session,
        })
    }

    /// Validates a session id, sliding its expiry.
    pub async fn validate(&self, session_id: &str) -> Validation {
        self.validate_inner(session_id, None).await
    }

    /// Validates a session id and the access token bound to it at creation.
    pub async fn validate_access(&self, session_id: &str, access_token: &str) -> Validation {
        self.validate_inner(session_id, Some(access_token)).await
    }

    async fn validate_inner(&self, session_id: &str, access: Option<&str>) -> Validation {
        let inner = &self.0;
        let Some(tag) = tag_of(session_id) else {
            return Validation::Invalid;
        };
        let hash = digest(session_id);
        if inner.revoked.contains_key(&hash) {
            return Validation::Invalid;
        }
        // Known down: straight to the local copy, without building a call that would be
        // refused anyway.
        if let Store::Redis(redis) = &inner.store {
            if redis.conn.health().state() == crate::health::HealthState::Down {
                return self.validate_locally(&hash, access);
            }
        }
        let loaded = inner.store.load(tag, &hash).await;
        let now = now_ms();
        let rec = match loaded {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                inner.local.invalidate(&hash);
                return Validation::Invalid;
            }
            Err(e) if unreachable(&e) => return self.validate_locally(&hash, access),
            Err(e) => {
                tracing::warn!(error = %e, "tierkit: unreadable session record; treating as invalid");
                return Validation::Invalid;
            }
        };
        if !rec.is_live(now, &inner.cfg) {
            let (this, tag, hash2) = (self.clone(), tag.to_owned(), hash.clone());
            self.in_background(async move {
                if this.remove(&tag, &hash2, &rec).await.unwrap_or(false) {
                    bump(&this.0.counters.expired, 1);
                    crate::metrics::session_event("expired");
                }
            })
            .await;
            return Validation::Invalid;
        }
        if access.is_some_and(|token| !rec.access_matches(token)) {
            return Validation::Invalid;
        }
        let mut rec = rec;
        if rec.wants_touch(now, &inner.cfg) {
            let expected = rec.version;
            rec.touch(now);
            let ttl = rec.ttl(now, &inner.cfg);
            let (this, tag, hash2, touched) =
                (self.clone(), tag.to_owned(), hash.clone(), rec.clone());
            // Off the request's path: a validation waits for one read only. A lost race means
            // another use touched it, fine either way.
            self.in_background(async move {
                let _ = this
                    .0
                    .store
                    .cas(&tag, &hash2, expected, &touched, ttl)
                    .await;
            })
            .await;
        }
        let session = rec.to_session(&hash, &inner.cfg);
        inner.local.insert(hash.clone(), session.clone());
        // A revocation that landed while this read was in flight wins.
        if inner.revoked.contains_key(&hash) {
            inner.local.invalidate(&hash);
            return Validation::Invalid;
        }
        bump(&inner.counters.validated, 1);
        crate::metrics::session_event("validated");
        Validation::Valid(session)
    }

    /// Runs `work` on the runtime without waiting for it, or inline without a runtime.
    async fn in_background(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(work);
            }
            Err(_) => work.await,
        }
    }

    fn validate_locally(&self, hash: &str, access: Option<&str>) -> Validation {
        let inner = &self.0;
        // Access tokens are checked only against the store, which holds their hash.
        if access.is_some() {
            return Validation::Unavailable;
        }
        match inner.local.get(hash) {
            Some(session) if session.expires_at > SystemTime::now() => {
                bump(&inner.counters.validated, 1);
                bump(&inner.counters.validated_locally, 1);
                crate::metrics::session_event("validated_locally");
                Validation::Valid(session)
            }
            _ => Validation::Unavailable,
        }
    }

    async fn remove(&self, tag: &str, hash: &str, rec: &Record) -> Result<bool> {
        self.0.revoked.insert(hash.to_owned(), ());
        self.0.local.invalidate(hash);
        self.0
            .store
            .remove(tag, hash, &rec.user_id, rec.device.kind.as_str())
            .await
    }

    /// A user's live sessions, newest first. Vanished entries are pruned on the way.
    ///
    /// # Errors
    ///
    /// The Redis error when Redis cannot answer.
    pub async fn list(&self, user_id: &str) -> Result<Vec<Session>> {
        let tag = user_tag(user_id);
        let (live, _) = self.list_and_prune(&tag, user_id).await?;
        Ok(live)
    }

    /// How many live sessions a user has.
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    pub async fn active_for(&self, user_id: &str) -> Result<usize> {
        Ok(self.list(user_id).await?.len())
    }

    async fn list_and_prune(&self, tag: &str, user_id: &str) -> Result<(Vec<Session>, u64)> {
        let inner = &self.0;
        let members = inner.store.index(tag, user_id).await?;
        let hashes: Vec<&str> = members.iter().map(|m| split_member(m).0).collect();
        let records = inner.store.load_many(tag, &hashes).await?;
        let now = now_ms();
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for ((member, hash), rec) in members.iter().zip(&hashes).zip(records) {
            match rec {
                Some(rec) if rec.is_live(now, &inner.cfg) && rec.user_id == user_id => {
                    live.push(rec.to_session(hash, &inner.cfg));
                }
                _ => dead.push(member.clone()),
            }
        }
        let pruned = inner.store.prune(tag, user_id, &dead).await?;
        bump(&inner.counters.expired, pruned);
        for _ in 0..pruned {
            crate::metrics::session_event("expired");
        }
        Ok((live, pruned))
    }

    /// Revokes one session by its id. Returns whether it existed.
    ///
    /// # Errors
    ///
    /// The Redis error when Redis cannot take it; the session is revoked on this instance
    /// anyway (it never validates here again).
    pub async fn revoke(&self, session_id: &str) -> Result<bool> {
        let Some(tag) = tag_of(session_id) else {
            return Ok(false);
        };
        let hash = digest(session_id);
        self.revoke_hash(tag, &hash).await
    }

    /// Revokes one session of `user_id` by its public [`Session::handle`] (from
    /// [`list`](Self::list)). Returns whether it existed.
    ///
    /// # Errors
    ///
    /// As [`revoke`](Self::revoke).
    pub async fn revoke_handle(&self, user_id: &str, handle: &str) -> Result<bool> {
        let tag = user_tag(user_id);
        // One read of that session, not a listing of them all: it must belong to the user.
        match self.0.store.load(&tag, handle).await? {
            Some(rec) if rec.user_id == user_id => self.revoke_hash(&tag, handle).await,
            _ => Ok(false),
        }
    }

    async fn revoke_hash(&self, tag: &str, hash: &str) -> Result<bool> {
        let inner = &self.0;
        inner.revoked.insert(hash.to_owned(), ());
        inner.local.invalidate(hash);
        match self.delete(tag, hash).await {
            Ok(existed) => Ok(existed),
            Err(e) => {
                let mut pending = inner.pending.lock().unwrap_or_else(|p| p.into_inner());
                // Bounded: beyond it the revocation still holds here, and the caller has the
                // error to retry with.
                if pending.len() < 100_000 {
                    pending.push((tag.to_owned(), hash.to_owned()));
                }
                Err(e)
            }
        }
    }

    async fn delete(&self, tag: &str, hash: &str) -> Result<bool> {
        let Some(rec) = self.0.store.load(tag, hash).await? else {
            return Ok(false);
        };
        let existed = self.remove(tag, hash, &rec).await?;
        if existed {
            bump(&self.0.counters.revoked, 1);
            crate::metrics::session_event("revoked");
        }
        Ok(existed)
    }

    /// Revokes every session of a user. Returns how many were revoked.
    ///
    /// # Errors
    ///
    /// As [`revoke`](Self::revoke).
    pub async fn revoke_all(&self, user_id: &str) -> Result<u64> {
        self.revoke_user_except(user_id, None).await
    }

    /// Revokes every session of the current session's user except the current one ("log out
    /// everywhere else"). Returns how many were revoked.
    ///
    /// # Errors
    ///
    /// As [`revoke`](Self::revoke); [`Error::InvalidInput`] when `current` is not a live session.
    pub async fn revoke_others(&self, current: &str) -> Result<u64> {
        let Validation::Valid(session) = self.validate(current).await else {
            return Err(Error::invalid("current", "is not a live session"));
        };
        self.revoke_user_except(&session.user_id, Some(&session.handle))
            .await
    }

    async fn revoke_user_except(&self, user_id: &str, keep: Option<&str>) -> Result<u64> {
        let tag = user_tag(user_id);
        let mut revoked = 0;
        let sessions = match self.list(user_id).await {
            Ok(sessions) => sessions,
            Err(e) => {
                // Redis cannot list them: at least this instance stops honouring the ones it
                // knows of.
                for (hash, session) in self.0.local.iter() {
                    if session.user_id == user_id && keep != Some(session.handle.as_str()) {
                        self.0.revoked.insert((*hash).clone(), ());
                        self.0.local.invalidate(&*hash);
                    }
                }
                return Err(e);
            }
        };
        for session in sessions {
            if keep != Some(session.handle.as_str())
                && self.revoke_hash(&tag, &session.handle).await?
            {
                revoked += 1;
            }
        }
        Ok(revoked)
    }

    /// Exchanges a refresh token for a new one.
    ///
    /// # Errors
    ///
    /// The Redis error when Redis cannot take it (the presented token stays good).
    pub async fn refresh(&self, refresh_token: &str) -> Result<Refresh> {
        let inner = &self.0;
        let Some(tag) = tag_of(refresh_token) else {
            return Ok(Refresh::Invalid);
        };
        let presented = digest(refresh_token);
        let Some(hash) = inner.store.refresh_lookup(tag, &presented).await? else {
            return Ok(Refresh::Invalid);
        };
        if inner.revoked.contains_key(&hash) {
            return Ok(Refresh::Invalid);
        }
        for _ in 0..CAS_ATTEMPTS {
            let Some(mut rec) = inner.store.load(tag, &hash).await? else {
                return Ok(Refresh::Invalid);
            };
            let now = now_ms();
            if !rec.is_live(now, &inner.cfg) {
                return Ok(Refresh::Invalid);
            }
            let token = new_secret(tag)?;
            let token_hash = digest(&token);
            let expected = rec.version;
            match rec.rotate(&presented, token_hash.clone(), now, &inner.cfg) {
                Rotation::Reused => {
                    tracing::warn!(
                        "tierkit: a retired refresh token was presented again; revoking its session"
                    );
                    if self.remove(tag, &hash, &rec).await? {
                        bump(&inner.counters.revoked, 1);
                        crate::metrics::session_event("revoked");
                    }
                    return Ok(Refresh::Reused);
                }
                Rotation::Rotated => {
                    let ttl = rec.ttl(now, &inner.cfg);
                    // Link first: a token that reaches the client always resolves.
                    let until =
                        std::time::Duration::from_millis(rec.deadline.saturating_sub(now).max(1));
                    inner
                        .store
                        .refresh_link(tag, &token_hash, &hash, until)
                        .await?;
                    if inner.store.cas(tag, &hash, expected, &rec, ttl).await? {
                        bump(&inner.counters.refreshed, 1);
                        crate::metrics::session_event("refreshed");
                        return Ok(Refresh::Rotated {
                            refresh_token: Secret(token),
                            session: Box::new(rec.to_session(&hash, &inner.cfg)),
                        });
                    }
                }
            }
        }
        Err(Error::Conflict(format!(
            "the session changed under {CAS_ATTEMPTS} refresh attempts in a row"
        )))
    }

    /// One bounded pass of the sweep: prunes the index of up to `sweep_batch` users. Runs in
    /// the background every `sweep_interval` with Redis; call it to prune now. Returns how
    /// many stale entries it removed.
    ///
    /// # Errors
    ///
    /// The Redis error when Redis cannot answer.
    pub async fn sweep(&self) -> Result<u64> {
        self.sweep_from(0).await.map(|(pruned, _)| pruned)
    }

    async fn sweep_from(&self, cursor: u64) -> Result<(u64, u64)> {
        let inner = &self.0;
        inner.store.purge();
        let pending = std::mem::take(&mut *inner.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for (i, (tag, hash)) in pending.iter().enumerate() {
            if let Err(e) = self.delete(tag, hash).await {
                // Still down: keep this one and the rest for the next pass.
                inner
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(pending[i..].iter().cloned());
                return Err(e);
            }
        }
        let (next, users) = inner
            .store
            .users_page(cursor, inner.cfg.sweep_batch)
            .await?;
        let mut pruned = 0;
        for user in users {
            let tag = user_tag(&user);
            let (live, n) = self.list_and_prune(&tag, &user).await?;
            pruned += n;
            if live.is_empty() {
                inner.store.forget_user(&tag, &user).await?;
            }
        }
        Ok((pruned, next))
    }

    /// Analytics: this instance's activity counters and the global active counts.
    ///
    /// # Errors
    ///
    /// The Redis error when Redis cannot answer.
    pub async fn stats(&self) -> Result<SessionStats> {
        let c = &self.0.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counts = self.0.store.counts().await?;
        Ok(SessionStats {
            created: get(&c.created),
            validated: get(&c.validated),
            validated_locally: get(&c.validated_locally),
            refreshed: get(&c.refreshed),
            revoked: get(&c.revoked),
            expired: get(&c.expired),
            active: counts.get("active").copied().unwrap_or(0),
            by_device: counts
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix("device:")?.to_owned(), *v)))
                .filter(|(_, v)| *v > 0)
                .collect(),
        })
    }
}

/// A process-memory map whose entries live `ttl`.
fn window<V: Clone + Send + Sync + 'static>(ttl: Duration) -> moka::sync::Cache<String, V> {
    moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(ttl)
        .build()
}

/// Runs the sweep every `sweep_interval` until the store drops.
async fn sweep_loop(sessions: Weak<Inner>, mut stop: oneshot::Receiver<()>) {
    let Some(every) = sessions.upgrade().map(|s| s.cfg.sweep_interval) else {
        return;
    };
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    let mut cursor = 0;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => {}
        }
        let Some(inner) = sessions.upgrade() else {
            return;
        };
        match Sessions(inner).sweep_from(cursor).await {
            Ok((_, next)) => cursor = next,
            Err(e) => tracing::debug!(error = %e, "tierkit: session sweep skipped"),
        }
    }
}
