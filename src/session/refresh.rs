//! Rotation of a session's secrets: refresh tokens (the presented token is retired and a new
//! one returned; a retired token still rotates within `refresh_grace`, and presented again
//! after it revokes the session: reuse detection), and the session id itself
//! ([`Sessions::rotate_id`], for privilege changes).

use super::events::{RevokeReason, SessionEvent};
use super::record::{digest, new_secret, tag_of, Rotation};
use super::sessions::{bump, Sessions};
use super::types::{Refresh, Secret};
use crate::error::{Error, Result};

const CAS_ATTEMPTS: usize = 8;

impl Sessions {
    /// Gives the session a new id and retires the old one, keeping everything else (user,
    /// device, data, refresh tokens, expiry): call it when the session's privileges change
    /// (a login step-up, a role change), so an id seen before the change is worth nothing
    /// after it. Returns the new id; the old one never validates again.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> tierkit::Result<()> {
    /// use tierkit::session::{NewSession, Validation};
    ///
    /// let kit = tierkit::Tierkit::embedded();
    /// let sessions = kit.sessions().build()?;
    /// let login = sessions.create(NewSession::new("user-7")).await?;
    /// let old = login.session_id.expose().to_owned();
    /// let new = sessions.rotate_id(&old).await?;
    /// assert_eq!(sessions.validate(&old).await, Validation::Invalid);
    /// assert!(matches!(sessions.validate(new.expose()).await, Validation::Valid(_)));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `session_id` is not a live session; the Redis error when
    /// Redis cannot take it (the old id then still works);
    /// [`Error::Conflict`] when the session kept changing under the move.
    pub async fn rotate_id(&self, session_id: &str) -> Result<Secret> {
        let inner = &self.0;
        let not_live = || Error::invalid("session_id", "is not a live session");
        let tag = tag_of(session_id).ok_or_else(not_live)?;
        let old = digest(session_id);
        for _ in 0..CAS_ATTEMPTS {
            let Some((rec, now)) = self.honoured(tag, &old).await? else {
                return Err(not_live());
            };
            let id = new_secret(tag)?;
            let new = digest(&id);
            let name = inner.names.index_name(tag, &rec.user_id);
            let rt_ttl = std::time::Duration::from_millis(rec.deadline.saturating_sub(now).max(1));
            let life = rec.life(now, &inner.cfg);
            if inner
                .store
                .rekey(tag, &name, (&old, &new), &rec, life, rt_ttl)
                .await?
            {
                inner.revoked.insert(old.clone(), ());
                inner.events.emit(|| SessionEvent::IdRotated {
                    user_id: rec.user_id.clone(),
                    old_handle: old.clone(),
                    new_handle: new.clone(),
                });
                return Ok(Secret(id));
            }
        }
        Err(Error::Conflict(format!(
            "the session changed under {CAS_ATTEMPTS} id rotations in a row"
        )))
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
        for _ in 0..CAS_ATTEMPTS {
            let Some((mut rec, now)) = self.honoured(tag, &hash).await? else {
                return Ok(Refresh::Invalid);
            };
            let token = new_secret(tag)?;
            let token_hash = digest(&token);
            let expected = rec.version;
            match rec.rotate(&presented, token_hash.clone(), now, &inner.cfg) {
                Rotation::Reused => {
                    tracing::warn!(
                        "tierkit: a retired refresh token was presented again; revoking its session"
                    );
                    inner.events.emit(|| SessionEvent::ReuseDetected {
                        user_id: rec.user_id.clone(),
                        handle: hash.clone(),
                    });
                    if self.remove(tag, &hash, &rec).await? {
                        bump(&inner.counters.revoked, 1);
                        crate::metrics::session_event("revoked");
                        inner.events.emit(|| SessionEvent::Revoked {
                            user_id: rec.user_id.clone(),
                            handle: hash.clone(),
                            reason: RevokeReason::Reuse,
                        });
                    }
                    return Ok(Refresh::Reused);
                }
                Rotation::Rotated => {
                    let life = rec.life(now, &inner.cfg);
                    let name = inner.names.index_name(tag, &rec.user_id);
                    // Link first: a token that reaches the client always resolves.
                    let until =
                        std::time::Duration::from_millis(rec.deadline.saturating_sub(now).max(1));
                    inner
                        .store
                        .refresh_link(tag, &token_hash, &hash, until)
                        .await?;
                    if inner
                        .store
                        .cas(tag, &hash, &name, expected, &rec, life)
                        .await?
                    {
                        bump(&inner.counters.refreshed, 1);
                        crate::metrics::session_event("refreshed");
                        inner.events.emit(|| SessionEvent::Refreshed {
                            user_id: rec.user_id.clone(),
                            handle: hash.clone(),
                        });
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
}
