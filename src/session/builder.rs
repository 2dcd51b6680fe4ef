//! The settings of a session store and their checks: [`SessionsBuilder`], and the
//! [`SessionConfig`] every rule reads.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::events::Events;
use super::names::UserNames;
use super::sessions::{Counters, Inner, Sessions};
#[cfg(feature = "testing")]
use super::store::StandInStore;
use super::store::{LocalCopy, MemoryStore, RedisStore, SessionStore};
use super::sweep::sweep_loop;
use super::types::StatelessVerifier;
use super::window::Window;
use crate::codec::{Codec, Keyring};
use crate::config::{NameKey, SharedClock};
use crate::conn::Conn;
#[cfg(feature = "testing")]
use crate::conn::StandIn;
use crate::error::{Error, Result};
use crate::keys::Keys;

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
    /// The most sessions one user may have (0: no limit), and what a login beyond it meets.
    pub(crate) max_per_user: u32,
    pub(crate) at_limit: AtLimit,
}

/// What a login meets when its user already has
/// [`max_sessions_per_user`](SessionsBuilder::max_sessions_per_user) sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AtLimit {
    /// The session that would expire first (the least recently used) is revoked to make room.
    #[default]
    EvictOldest,
    /// The login fails with [`Error::SessionLimit`]; the user revokes a session first.
    Refuse,
}

impl SessionConfig {
    /// The most index entries a listing reads: the limit, or all of them without one.
    pub(crate) fn listing_limit(&self) -> usize {
        match self.max_per_user {
            0 => 1 << 40,
            max => usize::try_from(max).unwrap_or(usize::MAX),
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle: Duration::from_secs(14 * 86_400),
            max_lifetime: Duration::from_secs(30 * 86_400),
            touch_interval: Duration::from_secs(60),
            refresh_grace: Duration::from_secs(10),
            staleness: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(60),
            sweep_batch: 100,
            replicated: None,
            max_per_user: 100,
            at_limit: AtLimit::EvictOldest,
        }
    }
}

/// Configures a [`Sessions`] store; get one from [`Tierkit::sessions`](crate::Tierkit::sessions).
#[must_use = "a builder does nothing until build() is called"]
pub struct SessionsBuilder {
    conn: Option<Conn>,
    codec: Codec,
    /// With encryption keys configured, records are sealed in Redis.
    keyring: Option<Keyring>,
    /// With it, users are named in keys by a keyed hash.
    name_key: Option<NameKey>,
    keys: Keys,
    clock: SharedClock,
    cfg: SessionConfig,
    verifier: Option<Arc<dyn StatelessVerifier>>,
    /// Embedded with fault injection: what stands in for Redis.
    #[cfg(feature = "testing")]
    standin: Option<StandIn>,
}

impl std::fmt::Debug for SessionsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionsBuilder")
            .field("redis", &self.conn.is_some())
            .field("encrypted", &self.keyring.is_some())
            .field("keyed_names", &self.name_key.is_some())
            .field("config", &self.cfg)
            .field("stateless_verifier", &self.verifier.is_some())
            .finish_non_exhaustive()
    }
}

impl SessionsBuilder {
    pub(crate) fn new(
        conn: Option<Conn>,
        codec: Codec,
        keyring: Option<Keyring>,
        name_key: Option<NameKey>,
        keys: Keys,
        clock: SharedClock,
    ) -> Self {
        SessionsBuilder {
            conn,
            codec,
            keyring,
            name_key,
            keys,
            clock,
            cfg: SessionConfig::default(),
            verifier: None,
            #[cfg(feature = "testing")]
            standin: None,
        }
    }

    /// Embedded, keeps sessions behind `standin` (fault injection).
    #[cfg(feature = "testing")]
    pub(crate) fn stand_in(mut self, standin: Option<StandIn>) -> Self {
        self.standin = standin;
        self
    }

    /// The "JWT-only" fallback: while Redis cannot be reached,
    /// [`validate_access`](Sessions::validate_access) asks `verifier` about the access token
    /// and answers [`Validation::Stateless`](super::Validation::Stateless) when it vouches,
    /// instead of `Unavailable`. A session revoked on this instance stays invalid. Default:
    /// none.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn check_signature(_: &str, _: &str) -> Option<String> { None }
    /// let kit = tierkit::Tierkit::embedded();
    /// let sessions = kit
    ///     .sessions()
    ///     // A real verifier checks the token's signature, expiry and session claim.
    ///     .stateless_verifier(|session_id: &str, token: &str| check_signature(session_id, token))
    ///     .build()?;
    /// # drop(sessions);
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn stateless_verifier(mut self, verifier: impl StatelessVerifier) -> Self {
        self.verifier = Some(Arc::new(verifier));
        self
    }

    /// At most `max` sessions per user; a login beyond it revokes the session that expires first
    /// ([`AtLimit::EvictOldest`]) or fails ([`AtLimit::Refuse`]); 0 lifts the limit. Default:
    /// 100, evicting.
    ///
    /// The check and the eviction run in one Redis script with the new session's admission,
    /// so concurrent logins never pass the limit.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> tierkit::Result<()> {
    /// use tierkit::session::{AtLimit, NewSession};
    ///
    /// let kit = tierkit::Tierkit::embedded();
    /// let sessions = kit.sessions().max_sessions_per_user(2, AtLimit::Refuse).build()?;
    /// sessions.create(NewSession::new("ann")).await?;
    /// sessions.create(NewSession::new("ann")).await?;
    /// let third = sessions.create(NewSession::new("ann")).await;
    /// assert!(matches!(third, Err(tierkit::Error::SessionLimit { max: 2 })));
    /// # Ok(()) }
    /// ```
    pub fn max_sessions_per_user(mut self, max: u32, at_limit: AtLimit) -> Self {
        self.cfg.max_per_user = max;
        self.cfg.at_limit = at_limit;
        self
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
    /// zero sweep batch, [`replicated_writes`](Self::replicated_writes) asking for zero
    /// replicas, no time, or a wait not shorter than `op_timeout`, or, in Redis, encryption
    /// keys without a [`session_name_key`](crate::ConfigBuilder::session_name_key) (the user
    /// ids would show in key names next to the sealed records).
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
        if self.conn.is_some() && self.keyring.is_some() && self.name_key.is_none() {
            return Err(Error::config(
                "session_name_key",
                "is not set, but encryption keys are: sealed session records would still be \
                 filed under plain user ids in Redis key names; set ConfigBuilder::\
                 session_name_key or TIERKIT_SESSION_NAME_KEY (32 random bytes, kept stable)",
            ));
        }
        let names = UserNames::new(self.name_key.as_ref())?;
        // Embedded stores prune as they are read; the Redis store (and the stand-in for it under
        // fault injection) also sweeps in the background, and replays missed revocations as
        // soon as health says it is back.
        #[cfg(feature = "testing")]
        let standin = self.standin;
        #[cfg(not(feature = "testing"))]
        let standin: Option<std::convert::Infallible> = None;
        let health = match (&self.conn, &standin) {
            (Some(conn), _) => Some(conn.health().subscribe()),
            #[cfg(feature = "testing")]
            (None, Some(standin)) => Some(standin.health().subscribe()),
            _ => None,
        };
        let sweeps = health.is_some();
        let store: Box<dyn SessionStore> = match self.conn {
            // Redis can fail: a local copy validates while it does.
            Some(conn) => Box::new(LocalCopy::new(
                RedisStore::new(
                    conn,
                    self.codec,
                    self.keyring,
                    self.keys,
                    self.cfg.replicated,
                ),
                Window::new(self.cfg.staleness, self.clock.clone()),
            )),
            None => {
                let memory = MemoryStore::new(self.clock.clone());
                match standin {
                    // As with Redis: the stand-in can fail, a local copy validates while it does.
                    #[cfg(feature = "testing")]
                    Some(standin) => Box::new(LocalCopy::new(
                        StandInStore::new(memory, standin),
                        Window::new(self.cfg.staleness, self.clock.clone()),
                    )),
                    _ => Box::new(memory),
                }
            }
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let sessions = Sessions(Arc::new(Inner {
            // No session outlives max_lifetime, so neither need its revocation.
            revoked: Window::new(self.cfg.max_lifetime, self.clock.clone()),
            pending: std::sync::Mutex::new(Vec::new()),
            counters: Counters::default(),
            events: Events::new(),
            verifier: self.verifier,
            store,
            names,
            clock: self.clock,
            cfg: self.cfg,
            _stop_sweep: stop_tx,
        }));
        // Without a runtime there is nothing to run it on: `sweep()` is then the caller's.
        if let (true, Ok(rt)) = (sweeps, tokio::runtime::Handle::try_current()) {
            rt.spawn(sweep_loop(Arc::downgrade(&sessions.0), health, stop_rx));
        }
        Ok(sessions)
    }
}
