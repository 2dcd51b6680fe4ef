//! The second tier behind one trait, and the one rule that picks it per call.
//!
//! [`L2`] is what the cache asks of a shared tier: bytes by key, writes with their tags,
//! removals, and the backplane message that goes with each change. Two tiers implement it:
//! [`RedisL2`](redis::RedisL2), and [`NoL2`] for embedded mode, where nothing is stored, reads
//! miss and writes reach every tier there is (the L1). [`Tier::pick`] chooses per call from
//! Redis's health, so no read, write, invalidation or warm-up branches on the connection.
//!
//! An L2 call is a Redis round trip (tens of microseconds), so the trait is `dyn` with boxed
//! futures; the L1 hit path never reaches here.

// Shadows the `redis` crate in this file only, which sends nothing to Redis itself.
mod redis;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use super::backplane::Op;
use super::pattern::Pattern;
use super::stats::{bump, Counters};
use crate::conn::{Conn, ServerFigures};
use crate::error::{Error, Result};
use crate::health::Health;
use crate::keys::Keys;

/// A namespace's place in the key schema: what an L2 needs to name its keys.
#[derive(Debug)]
pub(super) struct Keyspace {
    /// `{prefix}:c:{name}:v{version}:`
    entries: String,
    /// `{prefix}:c:{name}:t{version}:`
    tags: String,
    /// `{prefix}:c:{name}:*`: every key of the namespace, all versions.
    all_versions: String,
}

impl Keyspace {
    pub(super) fn new(keys: &Keys, name: &str, version: u32) -> Keyspace {
        Keyspace {
            entries: keys.cache_entries(name, version),
            tags: keys.cache_tags(name, version),
            all_versions: keys.cache_namespace_glob(name),
        }
    }

    /// The Redis key of the caller's `key`.
    pub(super) fn entry(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.entries.len() + key.len());
        k.push_str(&self.entries);
        k.push_str(key);
        k
    }

    /// The Redis key of the set of keys written with `tag`.
    fn tag(&self, tag: &str) -> String {
        format!("{}{tag}", self.tags)
    }
}

/// What an L2 holds at a key.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stored {
    /// Nothing.
    Absent,
    /// Bytes, and how long the tier keeps them (`None`: no expiry), read in the same round
    /// trip so an L1 copy never outlives its L2 entry.
    Value {
        bytes: Vec<u8>,
        ttl: Option<Duration>,
    },
    /// Something a string read cannot return (another writer's hash, set, ...): a miss that
    /// the next fill overwrites.
    Foreign,
}

/// One entry to store: its key, stored bytes, TTL and tags.
pub(super) struct Entry<'a> {
    pub(super) key: &'a str,
    pub(super) bytes: &'a [u8],
    pub(super) ttl: Duration,
    pub(super) tags: &'a [Box<str>],
}

/// A shared second tier. Every call either reaches the tier or fails with the error that says
/// why (counted by the caller, never shown to a reader); every change carries the backplane
/// [`Op`] that tells other instances to evict their L1 copies, sent in the same round trip.
#[async_trait]
pub(super) trait L2: Send + Sync + fmt::Debug {
    /// Whether this tier keeps values. When it does not, values are only measured for the L1,
    /// never encoded, and the L1 is the deepest tier a key can be in.
    fn stores_values(&self) -> bool;

    /// What is stored at `key`, with its remaining TTL.
    async fn get(&self, space: &Keyspace, key: &str) -> Result<Stored>;

    /// What is stored at each of `keys`, in one round trip; in the order of `keys`.
    async fn get_many(&self, space: &Keyspace, keys: &[&str]) -> Result<Vec<Stored>>;

    /// Which of `keys` are stored, in one round trip; in the order of `keys`.
    async fn contains(&self, space: &Keyspace, keys: &[String]) -> Result<Vec<bool>>;

    /// Stores a loaded value; unless `overwrite`, only where the key is absent, so a load never
    /// replaces what another writer stored meanwhile. No backplane message: nothing changed
    /// that another instance may hold.
    async fn fill(
        &self,
        space: &Keyspace,
        key: &str,
        bytes: Vec<u8>,
        ttl: Duration,
        overwrite: bool,
    ) -> Result<()>;

    /// Stores `entries` with their tags and publishes `op`, in one round trip.
    async fn write(&self, space: &Keyspace, entries: &[Entry<'_>], op: &Op) -> Result<()>;

    /// Removes the keys `op` names and publishes it, in one round trip.
    async fn remove(&self, space: &Keyspace, op: &Op) -> Result<()>;

    /// The keys written with `tag`, taken and forgotten in one step, so a key tagged meanwhile
    /// is either in this answer or in a fresh set, never lost.
    async fn take_tag(&self, space: &Keyspace, tag: &str) -> Result<Vec<String>>;

    /// Removes every key matching `pattern` (every key of every version of the namespace for
    /// `None`), then publishes `op`. Returns how many keys were removed, and the error that
    /// stopped it part way, if one did: what was removed stays removed.
    async fn remove_matching(
        &self,
        space: &Keyspace,
        pattern: Option<&Pattern>,
        op: &Op,
    ) -> (u64, Result<()>);

    /// The server's key count and memory, when it answers.
    async fn figures(&self) -> ServerFigures;
}

/// The embedded tier: nothing stored, every read a miss, every change done (the L1, the only
/// tier, has already taken it).
#[derive(Debug)]
pub(super) struct NoL2;

#[async_trait]
impl L2 for NoL2 {
    fn stores_values(&self) -> bool {
        false
    }

    async fn get(&self, _: &Keyspace, _: &str) -> Result<Stored> {
        Ok(Stored::Absent)
    }

    async fn get_many(&self, _: &Keyspace, keys: &[&str]) -> Result<Vec<Stored>> {
        Ok(keys.iter().map(|_| Stored::Absent).collect())
    }

    async fn contains(&self, _: &Keyspace, keys: &[String]) -> Result<Vec<bool>> {
        Ok(vec![false; keys.len()])
    }

    async fn fill(&self, _: &Keyspace, _: &str, _: Vec<u8>, _: Duration, _: bool) -> Result<()> {
        Ok(())
    }

    async fn write(&self, _: &Keyspace, _: &[Entry<'_>], _: &Op) -> Result<()> {
        Ok(())
    }

    async fn remove(&self, _: &Keyspace, _: &Op) -> Result<()> {
        Ok(())
    }

    async fn take_tag(&self, _: &Keyspace, _: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    async fn remove_matching(
        &self,
        _: &Keyspace,
        _: Option<&Pattern>,
        _: &Op,
    ) -> (u64, Result<()>) {
        (0, Ok(()))
    }

    async fn figures(&self) -> ServerFigures {
        ServerFigures::default()
    }
}

/// The L2 of one instance and the health that decides, per call, whether to use it.
pub(super) struct Tier {
    l2: Box<dyn L2>,
    /// Redis's health; `None` for the embedded tier, which is always there.
    health: Option<Health>,
}

impl fmt::Debug for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tier")
            .field("l2", &self.l2)
            .field("down", &self.is_down())
            .finish()
    }
}

impl Tier {
    /// Redis through `conn`, publishing changes on `channel` as `origin`.
    pub(super) fn redis(conn: Conn, channel: String, origin: u64) -> Tier {
        Tier {
            health: Some(conn.health().clone()),
            l2: Box::new(redis::RedisL2::new(conn, channel, origin)),
        }
    }

    /// No L2: the embedded tier.
    pub(super) fn none() -> Tier {
        Tier {
            l2: Box::new(NoL2),
            health: None,
        }
    }

    fn is_down(&self) -> bool {
        self.health.as_ref().is_some_and(Health::is_down)
    }

    /// The L2 for this call: the configured one, or, while health says Redis is down,
    /// [`Error::Unavailable`] at once, so no call waits for a timeout during an outage.
    pub(super) fn pick(&self) -> Result<&dyn L2> {
        if self.is_down() {
            // Counted as the connection counts a call it refuses while Down.
            crate::metrics::redis_call(crate::metrics::stopwatch(), Some(&Error::Unavailable));
            return Err(Error::Unavailable);
        }
        Ok(&*self.l2)
    }

    /// What the configured L2 is, whatever its health: see [`L2::stores_values`].
    pub(super) fn stores_values(&self) -> bool {
        self.l2.stores_values()
    }

    /// The server's figures. Not picked: the connection refuses its own calls while Down,
    /// and a report asks whatever the health.
    pub(super) async fn figures(&self) -> ServerFigures {
        self.l2.figures().await
    }
}

/// Counts a failed L2 call: skipped while Redis was down, an error otherwise. Redis errors
/// never reach a reader.
pub(super) fn count_failure(counters: &Counters, err: &Error) {
    match err {
        Error::Unavailable => bump(&counters.l2_skipped),
        _ => bump(&counters.l2_errors),
    }
}
