//! Cross-instance L1 coherence over Redis pub/sub.
//!
//! Every write and invalidation publishes what it changed on one channel per key prefix; every
//! instance evicts the matching L1 entries. Messages are at most once: when the subscription
//! drops (or health goes `Down`, which makes the subscription suspect), the instance forgets
//! its whole L1 on resubscribing, since it may have missed messages meanwhile. The
//! subscription itself (reconnects, node failover, liveness) is `conn`'s.

use std::sync::Weak;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::CacheCore;
use crate::conn::{Event, Subscription};

/// What changed, by namespace name (ids are per process).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Op {
    Keys {
        ns: String,
        keys: Vec<String>,
    },
    /// A tag, with the keys Redis listed under it: entries another instance read from L2 do
    /// not know their tags.
    Tag {
        ns: String,
        tag: String,
        keys: Vec<String>,
    },
    Pattern {
        ns: String,
        pattern: String,
    },
    Clear {
        ns: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Message {
    /// The publishing instance, so it skips its own messages.
    pub(crate) origin: u64,
    pub(crate) op: Op,
}

/// Applies other instances' messages until `stop` fires (the last handle dropped). On every
/// (re)subscription the L1 is forgotten: messages may have been missed while not subscribed.
pub(crate) async fn listen(
    core: Weak<CacheCore>,
    mut subscription: Subscription,
    mut stop: oneshot::Receiver<()>,
) {
    let mut lost_logged = false;
    loop {
        let event = tokio::select! {
            _ = &mut stop => return,
            e = subscription.next() => e,
        };
        let Some(event) = event else { return };
        let Some(core) = core.upgrade() else { return };
        match event {
            Event::Subscribed => {
                core.forget_all();
                core.coherent.send_replace(true);
                if lost_logged {
                    tracing::info!("tierkit: cache backplane resubscribed; L1 dropped");
                    lost_logged = false;
                }
            }
            Event::Message(payload) => core.on_message(&payload).await,
            Event::Lost(reason) => {
                core.coherent.send_replace(false);
                if !lost_logged {
                    tracing::warn!(
                        reason,
                        "tierkit: cache backplane lost; L1 copies may go stale until it resubscribes"
                    );
                    lost_logged = true;
                }
            }
        }
    }
}
