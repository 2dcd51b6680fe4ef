//! The session handle, [`Sessions`]: what it holds, and the hot path (create, validate, list,
//! stats). Revocation, refresh and the sweep add to it from their own files.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::builder::AtLimit;
use super::builder::SessionConfig;
use super::events::{Events, RevokeReason, SessionEvent};
use super::names::{UserName, UserNames};
use super::record::{digest, new_secret, Millis, Record};
use super::store::{split_member, Admit, SessionStore};
use super::types::{Created, NewSession, Secret, Session, SessionStats, StatelessVerifier};
use super::window::Window;
use crate::config::SharedClock;
use crate::error::{Error, Result};

#[derive(Default)]
pub(super) struct Counters {
    pub(super) created: AtomicU64,
    pub(super) validated: AtomicU64,
    pub(super) validated_locally: AtomicU64,
    pub(super) refreshed: AtomicU64,
    pub(super) revoked: AtomicU64,
    pub(super) expired: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64, n: u64) {
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
pub struct Sessions(pub(super) Arc<Inner>);

pub(super) struct Inner {
    pub(super) store: Box<dyn SessionStore>,
    pub(super) cfg: SessionConfig,
    /// How users are named in keys: plain, or keyed with the session name key.
    pub(super) names: UserNames,
    /// Every time decision of the store reads it.
    pub(super) clock: SharedClock,
    /// Sessions revoked here: never validated again here, whatever a read in flight, a local
    /// copy or a Redis that missed the deletion says.
    pub(super) revoked: Window<()>,
    /// Revocations Redis did not take (it was down): retried by the sweep.
    pub(super) pending: std::sync::Mutex<Vec<(String, String)>>,
    pub(super) counters: Counters,
    /// Session events for audit logs.
    pub(super) events: Events,
    /// Vouches for access tokens while Redis is down, if the service gave one.
    pub(super) verifier: Option<Arc<dyn StatelessVerifier>>,
    pub(super) _stop_sweep: oneshot::Sender<()>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("config", &self.0.cfg)
            .field("store", &self.0.store.name())
            .finish_non_exhaustive()
    }
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
        let user = self.0.names.of(&new.user_id);
        let session_id = new_secret(&user.tag)?;
        let refresh_token = new_secret(&user.tag)?;
        let now = self.0.clock.now_ms();
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
            refresh: vec![digest(&refresh_token)],
            grace: Vec::new(),
            data: Default::default(),
            version: 0,
        };
        let hash = digest(&session_id);
        // The refresh token resolves for as long as the session can live.
        let rt_ttl = Duration::from_millis(rec.deadline.saturating_sub(now));
        let admit = Admit {
            now,
            max: cfg.max_per_user,
            refuse: cfg.at_limit == AtLimit::Refuse,
            refresh_ttl: rt_ttl,
        };
        let evicted = self
            .0
            .store
            .create(
                &user.tag,
                &user.name,
                &hash,
                &rec,
                rec.life(now, cfg),
                admit,
            )
            .await?;
        for mem in &evicted {
            // Gone from Redis already; never honoured here again either.
            let handle = split_member(mem).0;
            self.0.revoked.insert(handle.to_owned(), ());
            bump(&self.0.counters.revoked, 1);
            crate::metrics::session_event("revoked");
            self.0.events.emit(|| SessionEvent::Revoked {
                user_id: rec.user_id.clone(),
                handle: handle.to_owned(),
                reason: RevokeReason::Evicted,
            });
        }
        bump(&self.0.counters.created, 1);
        self.0.events.emit(|| SessionEvent::Created {
            user_id: rec.user_id.clone(),
            handle: hash.clone(),
            device: rec.device.kind,
        });
        crate::metrics::session_event("created");
        Ok(Created {
            session_id: Secret(session_id),
            refresh_token: Secret(refresh_token),
            session: rec.to_session(&hash, cfg),
        })
    }

    /// A user's live sessions, newest first. Vanished entries are pruned on the way.
    ///
    /// # Errors
    ///
    /// The Redis error when Redis cannot answer.
    pub async fn list(&self, user_id: &str) -> Result<Vec<Session>> {
        let user = self.0.names.of(user_id);
        let (live, _) = self.list_and_prune(&user).await?;
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

    /// The record of session `hash` if this instance honours it now (not revoked here, stored,
    /// live, and named as users are named now), with the clock reading it was judged at.
    pub(super) async fn honoured(&self, tag: &str, hash: &str) -> Result<Option<(Record, Millis)>> {
        let inner = &self.0;
        if inner.revoked.contains(hash) {
            return Ok(None);
        }
        let Some(rec) = inner.store.load(tag, hash).await? else {
            return Ok(None);
        };
        let now = inner.clock.now_ms();
        // As in validation: a session of another naming of users is not honoured.
        let honoured = rec.is_live(now, &inner.cfg) && inner.names.honours(tag, &rec.user_id);
        Ok(honoured.then_some((rec, now)))
    }

    /// The live sessions of `user` and how many vanished ones were pruned off their index. A
    /// session is live only if its record names the same user: under keyed naming, an index
    /// of a plain name (made before the key was set) holds none.
    pub(super) async fn list_and_prune(&self, user: &UserName) -> Result<(Vec<Session>, u64)> {
        let inner = &self.0;
        let (tag, name) = (user.tag.as_str(), user.name.as_str());
        let now = self.0.clock.now_ms();
        let (members, gone) = inner
            .store
            .index(tag, name, now, inner.cfg.listing_limit())
            .await?;
        let hashes: Vec<&str> = members.iter().map(|m| split_member(m).0).collect();
        let records = inner.store.load_many(tag, &hashes).await?;
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for ((member, hash), rec) in members.iter().zip(&hashes).zip(records) {
            match rec {
                Some(rec)
                    if rec.is_live(now, &inner.cfg) && inner.names.of(&rec.user_id) == *user =>
                {
                    live.push(rec.to_session(hash, &inner.cfg));
                }
                _ => dead.push(member.clone()),
            }
        }
        let mut gone = gone;
        gone.extend(inner.store.prune(tag, name, &dead).await?);
        let pruned = gone.len() as u64;
        for mem in &gone {
            let handle = split_member(mem).0;
            inner.events.emit(|| SessionEvent::Expired {
                handle: handle.to_owned(),
            });
        }
        // Newest first, as documented: the index orders by expiry.
        live.sort_by_key(|s: &Session| std::cmp::Reverse(s.created_at));
        bump(&inner.counters.expired, pruned);
        for _ in 0..pruned {
            crate::metrics::session_event("expired");
        }
        Ok((live, pruned))
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
