//! Revocation: one session by id or by handle, all of a user's, all but the current one. A
//! revocation holds on this instance at once, whatever Redis does; one Redis could not take is
//! remembered and replayed the moment health says Redis is back (and by every sweep).

use super::events::{RevokeReason, SessionEvent};
use super::record::{digest, tag_of, Record};
use super::sessions::{bump, Sessions};
use super::types::Validation;
use crate::error::{Error, Result};

impl Sessions {
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

    /// Revokes one session of `user_id` by its public
    /// [`Session::handle`](super::Session::handle) (from [`list`](Self::list)). Returns whether
    /// it existed.
    ///
    /// # Errors
    ///
    /// As [`revoke`](Self::revoke).
    pub async fn revoke_handle(&self, user_id: &str, handle: &str) -> Result<bool> {
        let tag = self.0.names.of(user_id).tag;
        // One read of that session, not a listing of them all: it must belong to the user.
        match self.0.store.load(&tag, handle).await? {
            Some(rec) if rec.user_id == user_id => self.revoke_hash(&tag, handle).await,
            _ => Ok(false),
        }
    }

    async fn revoke_hash(&self, tag: &str, hash: &str) -> Result<bool> {
        let inner = &self.0;
        inner.revoked.insert(hash.to_owned(), ());
        inner.store.drop_copy(hash);
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

    /// Removes a session: never validated here again, whether or not the store takes it.
    pub(super) async fn remove(&self, tag: &str, hash: &str, rec: &Record) -> Result<bool> {
        self.0.revoked.insert(hash.to_owned(), ());
        let name = self.0.names.index_name(tag, &rec.user_id);
        self.0
            .store
            .remove(tag, hash, &name, rec.device.kind.as_str())
            .await
    }

    pub(super) async fn delete(&self, tag: &str, hash: &str) -> Result<bool> {
        let Some(rec) = self.0.store.load(tag, hash).await? else {
            return Ok(false);
        };
        let existed = self.remove(tag, hash, &rec).await?;
        if existed {
            bump(&self.0.counters.revoked, 1);
            crate::metrics::session_event("revoked");
            self.0.events.emit(|| SessionEvent::Revoked {
                user_id: rec.user_id.clone(),
                handle: hash.to_owned(),
                reason: RevokeReason::Revoked,
            });
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
        let tag = self.0.names.of(user_id).tag;
        let mut revoked = 0;
        let sessions = match self.list(user_id).await {
            Ok(sessions) => sessions,
            Err(e) => {
                // Redis cannot list them: at least this instance stops honouring the ones it
                // knows of.
                for hash in self.0.store.drop_copies_of(user_id, keep) {
                    self.0.revoked.insert(hash, ());
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
}
