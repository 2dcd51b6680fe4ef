//! Pub/sub subscriptions that survive reconnects, hung servers and node failures, and say
//! when they (re)subscribed: a subscriber can only have missed messages between a
//! [`Event::Lost`] and the next [`Event::Subscribed`].

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::Conn;
use crate::health::{Health, HealthState};

/// What a subscription reports, in order.
#[derive(Debug)]
pub(crate) enum Event {
    /// Subscribed (again): messages published from now on arrive.
    Subscribed,
    /// The subscription dropped; messages may be missed until the next `Subscribed`.
    Lost(&'static str),
    /// A message's payload.
    Message(Vec<u8>),
}

/// A channel subscription kept alive in the background; dropping it unsubscribes.
pub(crate) struct Subscription {
    rx: mpsc::Receiver<Event>,
}

impl Subscription {
    /// The next event; `None` once the connection handle is gone.
    pub(crate) async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

/// How long to wait before trying to subscribe again after a failed attempt.
const RETRY: Duration = Duration::from_millis(100);

/// Events a slow subscriber may leave unread before the reader waits for it (redis-rs then
/// buffers): a bound on memory, not on messages.
const BUFFER: usize = 1024;

impl Conn {
    /// Subscribes to `channel` on the server (on a cluster, on the first seed node that
    /// answers: a cluster delivers every `PUBLISH` to subscribers on all nodes), and keeps
    /// the subscription up until the returned handle drops.
    ///
    /// The subscription waits while health is `Down`, drops when health goes `Down`, and
    /// PINGs its own connection every probe interval, so a hung node or a partition (which
    /// neither closes it nor, on a cluster, makes health `Down`) is noticed; it then moves to
    /// another node.
    pub(crate) fn subscribe(&self, channel: String) -> Subscription {
        let (tx, rx) = mpsc::channel(BUFFER);
        let worker = Worker {
            clients: self.pubsub_clients(),
            health: self.health().clone(),
            channel,
            connect_timeout: self.0.connect_timeout,
            op_timeout: self.0.op_timeout,
        };
        tokio::spawn(worker.run(tx));
        Subscription { rx }
    }
}

struct Worker {
    /// Tried in turn until one subscribes: the server, or the seed nodes of a cluster.
    clients: Vec<redis::Client>,
    health: Health,
    channel: String,
    connect_timeout: Duration,
    op_timeout: Duration,
}

impl Worker {
    async fn run(self, tx: mpsc::Sender<Event>) {
        let mut health = self.health.subscribe();
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                r = health.wait_for(|s| s.state.is_available()) => if r.is_err() { return },
            }
            let subscribed = tokio::select! {
                _ = tx.closed() => return,
                s = self.subscribe() => s,
            };
            let (mut sink, mut stream) = match subscribed {
                Ok(pubsub) => pubsub.split(),
                Err(why) => {
                    tracing::debug!(%why, channel = %self.channel, "tierkit: subscribe failed; retrying");
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(RETRY) => continue,
                    }
                }
            };
            if tx.send(Event::Subscribed).await.is_err() {
                return;
            }
            let mut liveness = tokio::time::interval(self.health.config().probe_interval);
            liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            liveness.tick().await;
            let reason = loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = liveness.tick() => {
                        let ping = sink.ping::<redis::Value>();
                        if !matches!(tokio::time::timeout(self.op_timeout, ping).await, Ok(Ok(_))) {
                            break "subscription connection not answering PING";
                        }
                    }
                    msg = stream.next() => match msg {
                        None => break "subscription connection closed",
                        Some(msg) => {
                            let payload = msg.get_payload_bytes().to_vec();
                            if tx.send(Event::Message(payload)).await.is_err() {
                                return;
                            }
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
            if tx.send(Event::Lost(reason)).await.is_err() {
                return;
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
