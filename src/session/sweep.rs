//! The sweep: a bounded pass over the users with sessions that prunes their indexes (and so the
//! counts) of sessions that simply expired, and retries the revocations Redis could not take.
//! Runs in the background with Redis (or what stands in for it under fault injection); callable
//! at any time.

use std::sync::Weak;

use tokio::sync::{oneshot, watch};

use super::names::UserName;
use super::sessions::{Inner, Sessions};
use crate::error::Result;
use crate::health::HealthStatus;

impl Sessions {
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
        self.replay_pending().await?;
        let (next, users) = inner
            .store
            .users_page(cursor, inner.cfg.sweep_batch)
            .await?;
        let mut pruned = 0;
        let mut failed = 0;
        for name in users {
            let user = UserName {
                tag: inner.names.tag_of_name(&name),
                name,
            };
            // One user whose keys fail (a wrong type, a slot unserved) must not stop the pass
            // on this page for good: skip them, and the cursor still advances.
            let done = match self.list_and_prune(&user).await {
                Ok((live, n)) => {
                    pruned += n;
                    if live.is_empty() {
                        inner.store.forget_user(&user.tag, &user.name).await
                    } else {
                        Ok(())
                    }
                }
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                failed += 1;
                tracing::debug!(error = %e, "tierkit: session sweep skipped a user");
            }
        }
        if failed > 0 {
            tracing::warn!(
                failed,
                "tierkit: the session sweep could not prune some users; it moved on"
            );
        }
        Ok((pruned, next))
    }

    /// Replays the revocations Redis did not take, oldest first; stops at the first that still
    /// fails (Redis is still away), keeping it and the rest.
    pub(super) async fn replay_pending(&self) -> Result<()> {
        let inner = &self.0;
        let pending = std::mem::take(&mut *inner.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for (i, (tag, hash)) in pending.iter().enumerate() {
            if let Err(e) = self.delete(tag, hash).await {
                let mut kept = inner.pending.lock().unwrap_or_else(|p| p.into_inner());
                let newer = std::mem::take(&mut *kept);
                kept.extend(pending[i..].iter().cloned());
                kept.extend(newer);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Runs the sweep every `sweep_interval` until the store drops, and replays the revocations
/// Redis missed the moment health says Redis is back, before the next tick.
pub(super) async fn sweep_loop(
    sessions: Weak<Inner>,
    mut health: Option<watch::Receiver<HealthStatus>>,
    mut stop: oneshot::Receiver<()>,
) {
    let Some(every) = sessions.upgrade().map(|s| s.cfg.sweep_interval) else {
        return;
    };
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    let mut cursor = 0;
    let mut was_available = true;
    loop {
        let back = async {
            match health.as_mut() {
                Some(rx) => rx.changed().await.map(|()| rx.borrow_and_update().state),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => {}
            changed = back => {
                let Ok(state) = changed else {
                    // The monitor is gone: ticks only.
                    health = None;
                    continue;
                };
                let available = state.is_available();
                let returned = available && !was_available;
                was_available = available;
                if !returned {
                    continue;
                }
                let Some(inner) = sessions.upgrade() else {
                    return;
                };
                if let Err(e) = Sessions(inner).replay_pending().await {
                    tracing::debug!(error = %e, "tierkit: replaying revocations failed; the sweep retries");
                }
                continue;
            }
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
