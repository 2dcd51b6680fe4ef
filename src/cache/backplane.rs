//! Cross-instance L1 coherence over Redis pub/sub: what a message says, how it is encoded, and
//! the listener that applies other instances' messages.
//!
//! Every write and invalidation publishes what it changed on one channel per key prefix (the
//! Redis L2 appends the `PUBLISH` to the change's own pipeline); every instance evicts the
//! matching L1 entries. Messages are at most once: when the subscription
//! drops (or health goes `Down`, which makes the subscription suspect), the instance forgets
//! its whole L1 on resubscribing, since it may have missed messages meanwhile. The
//! subscription itself (reconnects, node failover, liveness) is `conn`'s.

use std::sync::Weak;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::base::CacheCore;
use crate::codec::Codec;
use crate::conn::{Report, Subscription};

/// What changed, by namespace name (ids are per process).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Op {
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

impl Op {
    /// The namespace the op is about.
    pub(super) fn namespace(&self) -> &str {
        match self {
            Op::Keys { ns, .. }
            | Op::Tag { ns, .. }
            | Op::Pattern { ns, .. }
            | Op::Clear { ns } => ns,
        }
    }

    /// The keys the op names one by one (none for patterns and clears).
    pub(super) fn keys(&self) -> &[String] {
        match self {
            Op::Keys { keys, .. } | Op::Tag { keys, .. } => keys,
            Op::Pattern { .. } | Op::Clear { .. } => &[],
        }
    }
}

#[derive(Debug, Deserialize)]
struct Message {
    /// The publishing instance, so it skips its own messages.
    origin: u64,
    op: Op,
}

/// [`Message`] as sent: the op borrowed, so announcing a change copies none of its keys. Same
/// fields in the same order, so it encodes exactly as a `Message`.
#[derive(Serialize)]
struct MessageRef<'a> {
    origin: u64,
    op: &'a Op,
}

/// The payload announcing `op` from the instance `origin`.
pub(super) fn message(origin: u64, op: &Op) -> Vec<u8> {
    // A message of strings always encodes; an empty payload is ignored by receivers.
    Codec::new()
        .encode(&MessageRef { origin, op })
        .unwrap_or_default()
}

impl CacheCore {
    /// Applies another instance's message; skips this instance's own and unreadable ones.
    async fn on_message(&self, payload: &[u8]) {
        let msg: Message = match Codec::new().decode(payload) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::debug!(error = %e, "tierkit: ignoring an unreadable backplane message");
                return;
            }
        };
        if msg.origin == self.origin {
            return;
        }
        if let Some(ns) = self.by_name(msg.op.namespace()) {
            self.apply(&ns, &msg.op).await;
        }
    }
}

/// Applies other instances' messages until `stop` fires (the last handle dropped). On every
/// (re)subscription the L1 is forgotten: messages may have been missed while not subscribed.
pub(super) async fn listen(
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
            Report::Up => {
                // A restarted server's data is retired (messages queue meanwhile), and changes
                // owed while Redis or the subscription was away go out.
                core.runs_unchecked
                    .store(true, std::sync::atomic::Ordering::Release);
                core.forget_all();
                core.check_runs().await;
                core.replay_all().await;
                core.watch_epochs().await;
                core.coherent.send_replace(true);
                if lost_logged {
                    tracing::info!("tierkit: cache backplane resubscribed; L1 dropped");
                    lost_logged = false;
                }
            }
            Report::Item(payload) => core.on_message(&payload).await,
            Report::Lost(reason) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_sent_reads_back_as_sent() {
        let op = Op::Tag {
            ns: "events".into(),
            tag: "t".into(),
            keys: vec!["a".into(), "b".into()],
        };
        let msg: Message = Codec::new().decode(&message(7, &op)).unwrap();
        assert_eq!((msg.origin, &msg.op), (7, &op));
        assert_eq!(msg.op.keys(), ["a", "b"]);
        assert_eq!(msg.op.namespace(), "events");
        let clear = Op::Clear { ns: "x".into() };
        assert!(clear.keys().is_empty());
    }
}
