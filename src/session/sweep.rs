//! The sweep: a bounded pass over the users with sessions that prunes their indexes (and so the
//! counts) of sessions that simply expired, and retries the revocations Redis could not take.
//! Runs in the background with Redis; callable at any time.

use std::sync::Weak;

use tokio::sync::oneshot;

use super::names::UserName;
use super::sessions::{Inner, Sessions};
use crate::error::Result;

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
        for name in users {
            let user = UserName {
                tag: inner.names.tag_of_name(&name),
                name,
            };
            let (live, n) = self.list_and_prune(&user).await?;
            pruned += n;
            if live.is_empty() {
                inner.store.forget_user(&user.tag, &user.name).await?;
            }
        }
        Ok((pruned, next))
    }
}

/// Runs the sweep every `sweep_interval` until the store drops.
pub(super) async fn sweep_loop(sessions: Weak<Inner>, mut stop: oneshot::Receiver<()>) {
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
