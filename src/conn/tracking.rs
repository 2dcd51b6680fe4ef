//! Server-assisted invalidation (Redis 6+ client-side caching): a RESP3 connection of its own
//! asks the server, with `CLIENT TRACKING ON BCAST PREFIX ...`, to push the name of every key
//! under the prefixes that anyone modifies, tierkit or not. Kept up by [`kept`](super::kept),
//! which says when tracking started and when it was lost, since pushes may have been missed
//! between.

use std::time::Duration;

use redis::{ProtocolVersion, PushKind, Value};
use tokio::sync::mpsc;

use super::kept::{Opener, Reports, Session};
use super::Conn;

/// What the server said was modified.
#[derive(Debug)]
pub(crate) enum Invalidated {
    /// These keys.
    Keys(Vec<Vec<u8>>),
    /// Every key may have been (`FLUSHALL`, `FLUSHDB`).
    All,
}

/// Client tracking's reports.
pub(crate) type Tracking = Reports<Invalidated>;

impl Conn {
    /// Tracks every key under `prefixes` on the server. A single server only: on a cluster a
    /// tracking connection sees one node's keys (the configuration refuses it there).
    pub(crate) fn track(&self, prefixes: Vec<String>) -> Tracking {
        self.keep(Track { prefixes })
    }
}

struct Track {
    prefixes: Vec<String>,
}

struct Tracked {
    conn: redis::aio::MultiplexedConnection,
    pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
}

impl Opener for Track {
    type Session = Tracked;

    fn what(&self) -> &'static str {
        "client tracking"
    }

    async fn open(
        &self,
        client: &redis::Client,
        connect: Duration,
        op: Duration,
    ) -> Result<Tracked, String> {
        let info = client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client =
            redis::Client::open(info.set_redis_settings(resp3)).map_err(|e| e.to_string())?;
        let (tx, pushes) = mpsc::unbounded_channel();
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(op))
            .set_push_sender(tx);
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
        Ok(Tracked { conn, pushes })
    }
}

impl Session for Tracked {
    type Item = Invalidated;

    async fn ping(&mut self) -> bool {
        redis::cmd("PING")
            .query_async::<Value>(&mut self.conn)
            .await
            .is_ok()
    }

    async fn next(&mut self) -> Result<Invalidated, &'static str> {
        loop {
            let push = self
                .pushes
                .recv()
                .await
                .ok_or("tracking connection closed")?;
            match push.kind {
                PushKind::Invalidate => {
                    if let Some(invalidated) = invalidated(push.data) {
                        return Ok(invalidated);
                    }
                }
                PushKind::Disconnection => return Err("tracking connection closed"),
                // Nothing else is asked of this connection.
                _ => {}
            }
        }
    }
}

/// What an `invalidate` push says: its keys, or every key for a null (a flush).
fn invalidated(data: Vec<Value>) -> Option<Invalidated> {
    match data.into_iter().next()? {
        Value::Array(keys) => Some(Invalidated::Keys(
            keys.into_iter()
                .filter_map(|k| match k {
                    Value::BulkString(bytes) => Some(bytes),
                    Value::SimpleString(s) => Some(s.into_bytes()),
                    _ => None,
                })
                .collect(),
        )),
        Value::Nil => Some(Invalidated::All),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_read_as_keys_or_a_flush() {
        let keys = vec![Value::Array(vec![
            Value::BulkString(b"p:c:ns:v1:a".to_vec()),
            Value::Int(7),
        ])];
        assert!(
            matches!(invalidated(keys), Some(Invalidated::Keys(k)) if k == [b"p:c:ns:v1:a".to_vec()])
        );
        assert!(matches!(
            invalidated(vec![Value::Nil]),
            Some(Invalidated::All)
        ));
        assert!(invalidated(vec![]).is_none());
        assert!(invalidated(vec![Value::Int(1)]).is_none());
    }
}
