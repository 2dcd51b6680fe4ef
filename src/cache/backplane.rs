//! Cross-instance L1 coherence over Redis pub/sub.
//!
//! Every write and invalidation publishes what it changed on one channel per key prefix; every
//! instance evicts the matching L1 entries. Messages are at most once: when the subscription
//! drops (or health goes `Down`, which makes the subscription suspect), the instance forgets
//! its whole L1 on resubscribing, since it may have missed messages meanwhile.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::CacheCore;
use crate::health::{Health, HealthState};

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

pub(crate) fn channel(prefix: &str) -> String {
    format!("{prefix}:c:backplane")
}

const RETRY: Duration = Duration::from_millis(100);

pub(crate) struct Listener {
    pub(crate) core: Weak<CacheCore>,
    /// Tried in turn until one subscribes: the server, or the seed nodes of a cluster.
    pub(crate) clients: Vec<redis::Client>,
    pub(crate) health: Health,
    pub(crate) channel: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) op_timeout: Duration,
}

impl Listener {
    /// Subscribes and applies messages until `stop` fires (the last handle dropped).
    pub(crate) async fn run(self, mut stop: oneshot::Receiver<()>) {
        let mut health = self.health.subscribe();
        let mut lost_logged = false;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                r = health.wait_for(|s| s.state.is_available()) => if r.is_err() { return },
            }
            let subscribed = tokio::select! {
                _ = &mut stop => return,
                s = self.subscribe() => s,
            };
            let (mut sink, mut stream) = match subscribed {
                Ok(pubsub) => pubsub.split(),
                Err(why) => {
                    tracing::debug!(%why, "tierkit: cache backplane subscribe failed; retrying");
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(RETRY) => continue,
                    }
                }
            };
            let Some(core) = self.core.upgrade() else {
                return;
            };
            // Messages may have been missed while not subscribed: nothing in L1 is trusted.
            core.forget_all();
            core.coherent.store(true, Ordering::Release);
            if lost_logged {
                tracing::info!("tierkit: cache backplane resubscribed; L1 dropped");
                lost_logged = false;
            }
            drop(core);

            // A node that hangs (or a partition) neither closes the subscription nor, on a
            // cluster, makes health Down: a PING each probe interval tells a live subscription
            // from one that would silently miss every message.
            let mut liveness = tokio::time::interval(self.health.config().probe_interval);
            liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            liveness.tick().await;
            let reason = loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = liveness.tick() => {
                        let ping = sink.ping::<redis::Value>();
                        if !matches!(tokio::time::timeout(self.op_timeout, ping).await, Ok(Ok(_))) {
                            break "subscription connection not answering PING";
                        }
                    }
                    msg = stream.next() => match msg {
                        None => break "subscription connection closed",
                        Some(msg) => {
                            let Some(core) = self.core.upgrade() else { return };
                            core.on_message(msg.get_payload_bytes()).await;
                        }
                    },
                    changed = health.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if health.borrow_and_update().state == HealthState::Down {
                            break "Redis health is down";
                        }
                    }
                }
            };
            if let Some(core) = self.core.upgrade() {
                core.coherent.store(false, Ordering::Release);
            }
            if !lost_logged {
                tracing::warn!(
                    reason,
                    "tierkit: cache backplane lost; L1 copies may go stale until it resubscribes"
                );
                lost_logged = true;
            }
        }
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSub, String> {
        let mut last = "no node to subscribe on".to_owned();
        for client in &self.clients {
            match self.subscribe_on(client).await {
                Ok(pubsub) => return Ok(pubsub),
                Err(why) => last = why,
            }
        }
        Err(last)
    }

    async fn subscribe_on(&self, client: &redis::Client) -> Result<redis::aio::PubSub, String> {
        let mut pubsub = tokio::time::timeout(self.connect_timeout, client.get_async_pubsub())
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(self.op_timeout, pubsub.subscribe(&self.channel))
            .await
            .map_err(|_| "SUBSCRIBE timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(pubsub)
    }
}
