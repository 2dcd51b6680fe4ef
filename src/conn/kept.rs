//! A connection of its own kept up in the background, for what listens rather than asks: the
//! backplane's pub/sub subscription ([`pubsub`](super::pubsub)) and client tracking
//! ([`tracking`](super::tracking)). The loop is one: it waits while health is `Down`, opens a
//! session on the first node that takes it, PINGs it every probe interval (a hung server or a
//! partition neither closes it nor, on a cluster, makes health `Down`), ends it when health
//! goes `Down`, and reports when it came up and when it was lost, since anything sent in
//! between may have been missed.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Conn;
use crate::health::{Health, HealthState};

/// What a kept connection reports, in order.
#[derive(Debug)]
pub(crate) enum Report<T> {
    /// Up (again): everything sent from now on arrives.
    Up,
    /// The session dropped; items may be missed until the next `Up`.
    Lost(&'static str),
    /// What the server sent.
    Item(T),
}

/// The reports of a kept connection; dropping it ends the connection.
pub(crate) struct Reports<T> {
    rx: mpsc::Receiver<Report<T>>,
}

impl<T> Reports<T> {
    /// The next report; `None` once the connection handle is gone.
    pub(crate) async fn next(&mut self) -> Option<Report<T>> {
        self.rx.recv().await
    }
}

/// One open session of a kept connection.
pub(super) trait Session: Send + 'static {
    type Item: Send + 'static;

    /// Whether the server answers a PING.
    fn ping(&mut self) -> impl Future<Output = bool> + Send;

    /// The next item the server sent, or why the session ended.
    fn next(&mut self) -> impl Future<Output = Result<Self::Item, &'static str>> + Send;
}

/// How to open a session on one node.
pub(super) trait Opener: Send + Sync + 'static {
    type Session: Session;

    /// What the session is, for logs.
    fn what(&self) -> &'static str;

    /// Opens a session on `client`'s node, within `connect` to connect and `op` per command.
    fn open(
        &self,
        client: &redis::Client,
        connect: Duration,
        op: Duration,
    ) -> impl Future<Output = Result<Self::Session, String>> + Send;
}

/// How long to wait before trying again after a failed open.
const RETRY: Duration = Duration::from_millis(100);

/// Reports a slow reader may leave unread before the session waits for it: a bound on memory,
/// not on items.
const BUFFER: usize = 1024;

type Item<O> = <<O as Opener>::Session as Session>::Item;

impl Conn {
    /// Keeps a session of `opener`'s up until the returned reports are dropped: on the
    /// server, or on the first seed node of a cluster that takes it.
    pub(super) fn keep<O: Opener>(&self, opener: O) -> Reports<Item<O>> {
        let (tx, rx) = mpsc::channel(BUFFER);
        let keeper = Keeper {
            clients: self.pubsub_clients(),
            health: self.health().clone(),
            connect_timeout: self.0.connect_timeout,
            op_timeout: self.0.op_timeout,
            opener,
        };
        tokio::spawn(keeper.run(tx));
        Reports { rx }
    }
}

struct Keeper<O> {
    /// Tried in turn until one opens: the server, or the seed nodes of a cluster.
    clients: Vec<redis::Client>,
    health: Health,
    connect_timeout: Duration,
    op_timeout: Duration,
    opener: O,
}

impl<O: Opener> Keeper<O> {
    async fn run(self, tx: mpsc::Sender<Report<Item<O>>>) {
        let mut health = self.health.subscribe();
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                r = health.wait_for(|s| s.state.is_available()) => if r.is_err() { return },
            }
            let opened = tokio::select! {
                _ = tx.closed() => return,
                s = self.open() => s,
            };
            let mut session = match opened {
                Ok(session) => session,
                Err(why) => {
                    tracing::debug!(%why, what = self.opener.what(), "tierkit: could not open; retrying");
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(RETRY) => continue,
                    }
                }
            };
            if tx.send(Report::Up).await.is_err() {
                return;
            }
            let mut liveness = tokio::time::interval(self.health.config().probe_interval);
            liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            liveness.tick().await;
            let reason = loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = liveness.tick() => {
                        let ping = tokio::time::timeout(self.op_timeout, session.ping());
                        if !matches!(ping.await, Ok(true)) {
                            break "connection not answering PING";
                        }
                    }
                    item = session.next() => match item {
                        Ok(item) => {
                            if tx.send(Report::Item(item)).await.is_err() {
                                return;
                            }
                        }
                        Err(why) => break why,
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
            if tx.send(Report::Lost(reason)).await.is_err() {
                return;
            }
        }
    }

    async fn open(&self) -> Result<O::Session, String> {
        let mut last = "no node to open on".to_owned();
        for client in &self.clients {
            let opened = self
                .opener
                .open(client, self.connect_timeout, self.op_timeout)
                .await;
            match opened {
                Ok(session) => return Ok(session),
                Err(why) => last = why,
            }
        }
        Err(last)
    }
}
