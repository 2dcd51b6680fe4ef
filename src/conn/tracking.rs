//! Server-assisted invalidation (Redis 6+ client-side caching): a RESP3 connection of its own
//! asks the server, with `CLIENT TRACKING ON BCAST PREFIX ...`, to push the name of every key
//! under the prefixes that anyone modifies, tierkit or not. Kept up like a subscription
//! ([`pubsub`](super::pubsub)): it waits while health is `Down`, PINGs its own connection, and
//! reports when it started and when it lost track, since pushes may have been missed between.

use std::time::Duration;

use redis::{ProtocolVersion, PushKind, Value};
use tokio::sync::mpsc;

use super::Conn;
use crate::health::{Health, HealthState};

/// What a tracking connection reports, in order.
#[derive(Debug)]
pub(crate) enum Tracked {
    /// Tracking (again): every modification from now on is pushed.
    Started,
    /// The connection dropped; modifications may be missed until the next `Started`.
    Lost(&'static str),
    /// These keys were modified.
    Keys(Vec<Vec<u8>>),
    /// Every key may have been (`FLUSHALL`, `FLUSHDB`).
    All,
}

/// Tracking kept alive in the background; dropping it ends it.
pub(crate) struct Tracking {
    rx: mpsc::Receiver<Tracked>,
}

impl Tracking {
    /// The next report; `None` once the connection handle is gone.
    pub(crate) async fn next(&mut self) -> Option<Tracked> {
        self.rx.recv().await
    }
}

const RETRY: Duration = Duration::from_millis(100);
const BUFFER: usize = 1024;

impl Conn {
    /// Tracks every key under `prefixes` on the server. A single server only: on a cluster a
    /// tracking connection sees one node's keys (the configuration refuses it there).
    pub(crate) fn track(&self, prefixes: Vec<String>) -> Tracking {
        let (tx, rx) = mpsc::channel(BUFFER);
        let worker = Worker {
            clients: self.pubsub_clients(),
            health: self.health().clone(),
            prefixes,
            connect_timeout: self.0.connect_timeout,
            op_timeout: self.0.op_timeout,
        };
        tokio::spawn(worker.run(tx));
        Tracking { rx }
    }
}

struct Worker {
    clients: Vec<redis::Client>,
    health: Health,
    prefixes: Vec<String>,
    connect_timeout: Duration,
    op_timeout: Duration,
}

impl Worker {
    async fn run(self, tx: mpsc::Sender<Tracked>) {
        let mut health = self.health.subscribe();
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                r = health.wait_for(|s| s.state.is_available()) => if r.is_err() { return },
            }
            let (push_tx, mut pushes) = mpsc::unbounded_channel();
            let started = tokio::select! {
                _ = tx.closed() => return,
                s = self.start(push_tx) => s,
            };
            let mut conn = match started {
                Ok(conn) => conn,
                Err(why) => {
                    tracing::debug!(%why, "tierkit: client tracking failed to start; retrying");
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(RETRY) => continue,
                    }
                }
            };
            if tx.send(Tracked::Started).await.is_err() {
                return;
            }
            let mut liveness = tokio::time::interval(self.health.config().probe_interval);
            liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            liveness.tick().await;
            let reason = loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = liveness.tick() => {
                        let ping = redis::cmd("PING");
                        let answer = ping.query_async::<Value>(&mut conn);
                        if !matches!(tokio::time::timeout(self.op_timeout, answer).await, Ok(Ok(_))) {
                            break "tracking connection not answering PING";
                        }
                    }
                    push = pushes.recv() => {
                        let Some(push) = push else { break "tracking connection closed" };
                        let report = match push.kind {
                            PushKind::Invalidate => invalidated(push.data),
                            PushKind::Disconnection => break "tracking connection closed",
                            _ => None,
                        };
                        if let Some(report) = report {
                            if tx.send(report).await.is_err() {
                                return;
                            }
                        }
                    }
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
            if tx.send(Tracked::Lost(reason)).await.is_err() {
                return;
            }
        }
    }

    async fn start(
        &self,
        pushes: mpsc::UnboundedSender<redis::PushInfo>,
    ) -> Result<redis::aio::MultiplexedConnection, String> {
        let mut last = "no server to track on".to_owned();
        for client in &self.clients {
            match self.start_on(client, pushes.clone()).await {
                Ok(conn) => return Ok(conn),
                Err(why) => last = why,
            }
        }
        Err(last)
    }

    async fn start_on(
        &self,
        client: &redis::Client,
        pushes: mpsc::UnboundedSender<redis::PushInfo>,
    ) -> Result<redis::aio::MultiplexedConnection, String> {
        let info = client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client =
            redis::Client::open(info.set_redis_settings(resp3)).map_err(|e| e.to_string())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.op_timeout))
            .set_push_sender(pushes);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("TRACKING").arg("ON").arg("BCAST");
        for prefix in &self.prefixes {
            cmd.arg("PREFIX").arg(prefix);
        }
        cmd.query_async::<()>(&mut conn)
            .await
            .map_err(|e| format!("CLIENT TRACKING: {e}"))?;
        Ok(conn)
    }
}

/// The report an `invalidate` push makes: its keys, or every key for a null (a flush).
fn invalidated(data: Vec<Value>) -> Option<Tracked> {
    match data.into_iter().next()? {
        Value::Array(keys) => Some(Tracked::Keys(
            keys.into_iter()
                .filter_map(|k| match k {
                    Value::BulkString(bytes) => Some(bytes),
                    Value::SimpleString(s) => Some(s.into_bytes()),
                    _ => None,
                })
                .collect(),
        )),
        Value::Nil => Some(Tracked::All),
        _ => None,
    }
}
