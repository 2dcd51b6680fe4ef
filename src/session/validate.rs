//! Validation, the hot path: one read of the session, the rules applied to it (expiry, access
//! token, revocations here), and the sliding-expiry touch and the removal of an expired record
//! sent off in the background. While the store cannot be reached, the local copy answers
//! within `staleness`, else [`Validation::Unavailable`].

use super::events::SessionEvent;
use super::record::{digest, tag_of, Record};
use super::sessions::{bump, Sessions};
use super::store::Read;
use super::types::Validation;

impl Sessions {
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
        if inner.revoked.contains(&hash) {
            return Validation::Invalid;
        }
        let read = inner.store.read(tag, &hash).await;
        let now = inner.clock.now_ms();
        let rec = match read {
            // Made under another naming of users (before the session name key was set or
            // changed): a revocation of its user's sessions would not reach it.
            Ok(Read::Stored(Some(rec))) if !inner.names.honours(tag, &rec.user_id) => {
                return Validation::Invalid
            }
            Ok(Read::Stored(Some(rec))) => rec,
            Ok(Read::Stored(None)) => return Validation::Invalid,
            Ok(Read::Copy(rec)) => {
                return match self.validate_copy(&hash, &rec, access) {
                    Validation::Unavailable => self.stateless(session_id, access),
                    answer => answer,
                }
            }
            // Unreachable, and no recent copy here.
            Err(e) if e.is_connectivity() => return self.stateless(session_id, access),
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
                    this.0
                        .events
                        .emit(|| SessionEvent::Expired { handle: hash2 });
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
            let life = rec.life(now, &inner.cfg);
            let name = inner.names.index_name(tag, &rec.user_id);
            let (this, tag, hash2, touched) =
                (self.clone(), tag.to_owned(), hash.clone(), rec.clone());
            // Off the request's path: a validation waits for one read only. A lost race means
            // another use touched it, fine either way.
            self.in_background(async move {
                let _ = this
                    .0
                    .store
                    .cas(&tag, &hash2, &name, expected, &touched, life)
                    .await;
            })
            .await;
        }
        inner.store.keep_copy(&hash, &rec);
        // A revocation that landed while this read was in flight wins.
        if inner.revoked.contains(&hash) {
            inner.store.drop_copy(&hash);
            return Validation::Invalid;
        }
        bump(&inner.counters.validated, 1);
        crate::metrics::session_event("validated");
        Validation::Valid(rec.to_session(&hash, &inner.cfg))
    }

    /// Redis cannot answer: the stateless verifier's word on the access token, if there are
    /// both, else `Unavailable`.
    fn stateless(&self, session_id: &str, access: Option<&str>) -> Validation {
        let (Some(verifier), Some(token)) = (&self.0.verifier, access) else {
            return Validation::Unavailable;
        };
        match verifier.verify(session_id, token) {
            Some(user_id) => {
                bump(&self.0.counters.validated, 1);
                crate::metrics::session_event("validated_stateless");
                Validation::Stateless { user_id }
            }
            None => Validation::Invalid,
        }
    }

    /// The answer from the local copy while the store cannot be reached.
    fn validate_copy(&self, hash: &str, rec: &Record, access: Option<&str>) -> Validation {
        let inner = &self.0;
        // Access tokens are checked only against the store, which holds their hash.
        if access.is_some() || !rec.is_live(inner.clock.now_ms(), &inner.cfg) {
            return Validation::Unavailable;
        }
        bump(&inner.counters.validated, 1);
        bump(&inner.counters.validated_locally, 1);
        crate::metrics::session_event("validated_locally");
        Validation::Valid(rec.to_session(hash, &inner.cfg))
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
}
