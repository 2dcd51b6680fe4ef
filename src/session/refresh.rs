//! Refresh-token rotation: the presented token is retired and a new one returned; the
//! immediately previous token stays good for `refresh_grace`, and an older one presented again
//! revokes the session (reuse detection).

use super::events::{RevokeReason, SessionEvent};
use super::record::{digest, new_secret, tag_of, Rotation};
use super::sessions::{bump, Sessions};
use super::types::{Refresh, Secret};
use crate::error::{Error, Result};

const CAS_ATTEMPTS: usize = 8;

impl Sessions {
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
        if inner.revoked.contains(&hash) {
            return Ok(Refresh::Invalid);
        }
        for _ in 0..CAS_ATTEMPTS {
            let Some(mut rec) = inner.store.load(tag, &hash).await? else {
                return Ok(Refresh::Invalid);
            };
            let now = inner.clock.now_ms();
            // As in validation: a session of another naming of users is not honoured.
            if !rec.is_live(now, &inner.cfg) || !inner.names.honours(tag, &rec.user_id) {
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
