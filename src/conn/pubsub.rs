//! Pub/sub subscriptions that survive reconnects, hung servers and node failures, and say
//! when they (re)subscribed: a subscriber can only have missed messages between a
//! [`Report::Lost`](super::Report::Lost) and the next [`Report::Up`](super::Report::Up). The
//! keeping up is [`kept`](super::kept)'s.

use std::time::Duration;

use futures_util::StreamExt;

use super::kept::{Opener, Reports, Session};
use super::Conn;

/// A channel subscription's reports: each message's payload.
pub(crate) type Subscription = Reports<Vec<u8>>;

impl Conn {
    /// Subscribes to `channel` on the server (on a cluster, on the first seed node that
    /// answers: a cluster delivers every `PUBLISH` to subscribers on all nodes), and keeps
    /// the subscription up until the returned handle drops.
    pub(crate) fn subscribe(&self, channel: String) -> Subscription {
        self.keep(Subscribe { channel })
    }
}

struct Subscribe {
    channel: String,
}

struct Subscribed {
    sink: redis::aio::PubSubSink,
    stream: redis::aio::PubSubStream,
}

impl Opener for Subscribe {
    type Session = Subscribed;

    fn what(&self) -> &'static str {
        "backplane subscription"
    }

    async fn open(
        &self,
        client: &redis::Client,
        connect: Duration,
        op: Duration,
    ) -> Result<Subscribed, String> {
        let mut pubsub = tokio::time::timeout(connect, client.get_async_pubsub())
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(op, pubsub.subscribe(&self.channel))
            .await
            .map_err(|_| "SUBSCRIBE timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let (sink, stream) = pubsub.split();
        Ok(Subscribed { sink, stream })
    }
}

impl Session for Subscribed {
    type Item = Vec<u8>;

    async fn ping(&mut self) -> bool {
        self.sink.ping::<redis::Value>().await.is_ok()
    }

    async fn next(&mut self) -> Result<Vec<u8>, &'static str> {
        match self.stream.next().await {
            Some(msg) => Ok(msg.get_payload_bytes().to_vec()),
            None => Err("subscription connection closed"),
        }
    }
}
