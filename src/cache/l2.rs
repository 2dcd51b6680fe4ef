//! The second tier behind one trait, and the one rule that picks it per call.
//!
//! [`L2`] is what the cache asks of a shared tier: framed bytes by key with the epochs that
//! say whether to trust them, conditional writes, epochs to drop, loading leases, and the
//! backplane message that goes with each change. Two tiers implement it:
//! [`RedisL2`](redis::RedisL2), and [`NoL2`] for embedded mode, where nothing is stored, reads
//! miss and writes reach every tier there is (the L1). [`Tier::pick`] chooses per call from
//! Redis's health, so no read, write, invalidation or warm-up branches on the connection.
//!
//! An L2 call is a Redis round trip (tens of microseconds), so the trait is `dyn` with boxed
//! futures; the L1 hit path never reaches here.

// Shadows the `redis` crate in this file only, which sends nothing to Redis itself.
mod redis;

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::backplane::Op;
use super::pattern::Pattern;
use super::stats::{bump, Counters};
use crate::conn::{Conn, ServerFigures};
use crate::error::{Error, Result};
use crate::health::Health;
use crate::keys::Keys;

/// A namespace's place in the key schema: what an L2 needs to name its keys, and how long an
/// invalidated key of it stays a tombstone.
#[derive(Debug)]
pub(super) struct Keyspace {
    /// `{prefix}:c:{name}:v{version}:`
    entries: String,
    /// `{prefix}:c:{name}:e{version}`
    epoch: String,
    /// `{prefix}:c:{name}:g{version}:`
    tag_epochs: String,
    /// `{prefix}:c:{name}:l{version}:`
    leases: String,
    /// `{prefix}:c:{name}:*`: every key of the namespace, all versions.
    all_versions: String,
    /// How long an invalidated key stays a tombstone: the namespace's TTL.
    pub(super) tombstone_ttl: Duration,
}

impl Keyspace {
    pub(super) fn new(keys: &Keys, name: &str, version: u32, tombstone_ttl: Duration) -> Keyspace {
        Keyspace {
            tombstone_ttl,
            entries: keys.cache_entries(name, version),
            epoch: keys.cache_epoch(name, version),
            tag_epochs: keys.cache_tag_epochs(name, version),
            leases: keys.cache_leases(name, version),
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

    /// The Redis key of an epoch.
    fn epoch(&self, of: EpochOf<'_>) -> String {
        match of {
            EpochOf::Namespace => self.epoch.clone(),
            EpochOf::Tag(tag) => format!("{}{tag}", self.tag_epochs),
        }
    }

    /// The Redis key of the lease on loading `key`.
    fn lease(&self, key: &str) -> String {
        format!("{}{key}", self.leases)
    }
}

/// What an L2 holds at a key.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stored {
    /// Nothing.
    Absent,
    /// Bytes, and until when the tier keeps them at the latest, on this process's clock
    /// (`None`: no expiry): a deadline taken no later than the tier's, so an L1 copy that ends
    /// at it never outlives its L2 entry, however long the read takes after Redis answered.
    Value {
        bytes: Vec<u8>,
        until: Option<Instant>,
    },
    /// Something a string read cannot return (another writer's hash, set, ...): a miss that
    /// the next fill overwrites.
    Foreign,
}

/// Which epoch: the namespace's, or a tag's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum EpochOf<'a> {
    Namespace,
    Tag(&'a str),
}

/// An epoch to make where absent; a tag's is kept alive at least `ttl` (zero: the
/// namespace's, which never expires).
#[derive(Clone, Copy, Debug)]
pub(super) struct EpochUse<'a> {
    pub(super) of: EpochOf<'a>,
    pub(super) epoch: u64,
    pub(super) ttl: Duration,
}

/// One entry to store: its key, its [frame](super::frame), its TTL, and, for a fill, the
/// version it must replace (see [`Expect`]).
pub(super) struct Entry<'a> {
    pub(super) key: &'a str,
    pub(super) frame: &'a [u8],
    pub(super) ttl: Duration,
    pub(super) expect: Option<&'a Expect>,
    /// A fill that also lands where the key is absent: what its read saw (a copy near the end
    /// of its life, a tombstone) expired by itself while the load ran, and this instance,
    /// coherent, heard of no change to the key since.
    pub(super) or_absent: bool,
}

/// What a fill must find at its key to land: what the read before the load saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Expect {
    Absent,
    /// A frame of this version (a value, a tombstone, or one that did not decode).
    Version(u64),
    /// Anything that is not a frame: another type, another program's bytes.
    Foreign,
}

/// What a write did: per entry, whether it landed (a fill may not); per tag epoch it kept
/// alive (in the order given), the epoch Redis holds now.
#[derive(Debug, Default)]
pub(super) struct Written {
    pub(super) landed: Vec<bool>,
    pub(super) epochs: Vec<u64>,
}

/// A shared second tier. Every call either reaches the tier or fails with the error that says
/// why (counted by the caller, never shown to a reader); every change carries the backplane
/// [`Op`] that tells other instances to evict their L1 copies, sent in the same round trip.
#[async_trait]
pub(super) trait L2: Send + Sync + fmt::Debug {
    /// Whether this tier keeps values. When it does not, values are only measured for the L1,
    /// never encoded, and the L1 is the deepest tier a key can be in.
    fn stores_values(&self) -> bool;

    /// What is stored at each of `keys` with its remaining TTL, in one round trip; in the
    /// order of `keys`.
    async fn read(&self, space: &Keyspace, keys: &[&str]) -> Result<Vec<Stored>>;

    /// The current value of each epoch (`None`: absent), in one round trip.
    async fn epochs(&self, space: &Keyspace, of: &[EpochOf<'_>]) -> Result<Vec<Option<u64>>>;

    /// The current value of each epoch, made (at random) where it is absent.
    async fn make_epochs(&self, space: &Keyspace, wanted: &[EpochUse<'_>]) -> Result<Vec<u64>>;

    /// Stores `entries` (each version set by the server above the one it replaces; a fill
    /// only where its [`Expect`] holds), keeps the tag epochs in `alive` alive as long as
    /// their `ttl` (made anew where absent), and publishes `op`, in one round trip.
    async fn write(
        &self,
        space: &Keyspace,
        entries: &[Entry<'_>],
        alive: &[EpochUse<'_>],
        op: Option<&Op>,
    ) -> Result<Written>;

    /// Makes each of `op`'s keys a tombstone (for the keyspace's `tombstone_ttl`), so a load
    /// that read it before cannot fill it after, and publishes `op`, in one round trip.
    async fn tombstone(&self, space: &Keyspace, op: &Op) -> Result<()> {
        let frame = super::frame::tombstone();
        let entries: Vec<Entry<'_>> = op
            .keys()
            .iter()
            .map(|key| Entry {
                key,
                frame: &frame,
                ttl: space.tombstone_ttl,
                expect: None,
                or_absent: false,
            })
            .collect();
        self.write(space, &entries, &[], Some(op)).await.map(drop)
    }

    /// Deletes the namespace's epoch (`namespace`) and those of `tags`, which invalidates
    /// every entry framed under them, and publishes `op`, in one round trip.
    async fn drop_epochs(
        &self,
        space: &Keyspace,
        namespace: bool,
        tags: &[&str],
        op: Option<&Op>,
    ) -> Result<()>;

    /// Tombstones every entry matching `pattern`, or removes every key of every version of
    /// the namespace for `None`, then publishes `op`. Returns how many entries it reached, and the
    /// error that stopped it part way, if one did: what was reached stays so.
    async fn remove_matching(
        &self,
        space: &Keyspace,
        pattern: Option<&Pattern>,
        op: &Op,
    ) -> (u64, Result<()>);

    /// Takes the lease on loading `key` for `lease` when no one holds it: `true` when taken.
    async fn take_lease(
        &self,
        space: &Keyspace,
        key: &str,
        token: u64,
        lease: Duration,
    ) -> Result<bool>;

    /// Gives the lease back, if `token` still holds it.
    async fn end_lease(&self, space: &Keyspace, key: &str, token: u64) -> Result<()>;

    /// The server's key count and memory, when it answers.
    async fn figures(&self) -> ServerFigures;

    /// Which server runs hold the data: see [`Conn::server_runs`].
    async fn runs(&self) -> Result<Vec<(String, String)>>;

    /// Sends `op` to the other instances and stores nothing: the changes of an L1-only
    /// namespace.
    async fn publish(&self, op: &Op) -> Result<()>;
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

    async fn read(&self, _: &Keyspace, keys: &[&str]) -> Result<Vec<Stored>> {
        Ok(keys.iter().map(|_| Stored::Absent).collect())
    }

    async fn epochs(&self, _: &Keyspace, of: &[EpochOf<'_>]) -> Result<Vec<Option<u64>>> {
        Ok(vec![None; of.len()])
    }

    async fn make_epochs(&self, _: &Keyspace, wanted: &[EpochUse<'_>]) -> Result<Vec<u64>> {
        Ok(vec![0; wanted.len()])
    }

    async fn write(
        &self,
        _: &Keyspace,
        entries: &[Entry<'_>],
        _: &[EpochUse<'_>],
        _: Option<&Op>,
    ) -> Result<Written> {
        Ok(Written {
            landed: vec![true; entries.len()],
            epochs: Vec::new(),
        })
    }

    async fn drop_epochs(&self, _: &Keyspace, _: bool, _: &[&str], _: Option<&Op>) -> Result<()> {
        Ok(())
    }

    async fn remove_matching(
        &self,
        _: &Keyspace,
        _: Option<&Pattern>,
        _: &Op,
    ) -> (u64, Result<()>) {
        (0, Ok(()))
    }

    async fn take_lease(&self, _: &Keyspace, _: &str, _: u64, _: Duration) -> Result<bool> {
        Ok(true)
    }

    async fn end_lease(&self, _: &Keyspace, _: &str, _: u64) -> Result<()> {
        Ok(())
    }

    async fn figures(&self) -> ServerFigures {
        ServerFigures::default()
    }

    async fn runs(&self) -> Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }

    async fn publish(&self, _: &Op) -> Result<()> {
        Ok(())
    }
}

/// The embedded tier behind what stands in for Redis (fault injection, feature `testing`):
/// [`NoL2`], each call meeting the faults in force, as a Redis call would.
#[cfg(feature = "testing")]
#[derive(Debug)]
struct StandInL2(crate::conn::StandIn);

#[cfg(feature = "testing")]
#[async_trait]
impl L2 for StandInL2 {
    fn stores_values(&self) -> bool {
        false
    }

    async fn read(&self, space: &Keyspace, keys: &[&str]) -> Result<Vec<Stored>> {
        self.0.gate(NoL2.read(space, keys)).await
    }

    async fn epochs(&self, space: &Keyspace, of: &[EpochOf<'_>]) -> Result<Vec<Option<u64>>> {
        self.0.gate(NoL2.epochs(space, of)).await
    }

    async fn make_epochs(&self, space: &Keyspace, wanted: &[EpochUse<'_>]) -> Result<Vec<u64>> {
        self.0.gate(NoL2.make_epochs(space, wanted)).await
    }

    async fn write(
        &self,
        space: &Keyspace,
        entries: &[Entry<'_>],
        alive: &[EpochUse<'_>],
        op: Option<&Op>,
    ) -> Result<Written> {
        self.0.gate(NoL2.write(space, entries, alive, op)).await
    }

    async fn drop_epochs(
        &self,
        space: &Keyspace,
        namespace: bool,
        tags: &[&str],
        op: Option<&Op>,
    ) -> Result<()> {
        self.0
            .gate(NoL2.drop_epochs(space, namespace, tags, op))
            .await
    }

    async fn remove_matching(
        &self,
        space: &Keyspace,
        pattern: Option<&Pattern>,
        op: &Op,
    ) -> (u64, Result<()>) {
        let removed = async { Ok(NoL2.remove_matching(space, pattern, op).await) };
        match self.0.gate(removed).await {
            Ok(done) => done,
            Err(e) => (0, Err(e)),
        }
    }

    async fn take_lease(
        &self,
        space: &Keyspace,
        key: &str,
        token: u64,
        lease: Duration,
    ) -> Result<bool> {
        self.0.gate(NoL2.take_lease(space, key, token, lease)).await
    }

    async fn end_lease(&self, space: &Keyspace, key: &str, token: u64) -> Result<()> {
        self.0.gate(NoL2.end_lease(space, key, token)).await
    }

    async fn figures(&self) -> ServerFigures {
        ServerFigures::default()
    }

    async fn runs(&self) -> Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }

    async fn publish(&self, op: &Op) -> Result<()> {
        self.0.gate(NoL2.publish(op)).await
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

    /// No L2, behind what stands in for Redis (fault injection): the embedded tier, whose
    /// calls meet the faults in force and whose health is the stand-in's.
    #[cfg(feature = "testing")]
    pub(super) fn stand_in(standin: crate::conn::StandIn) -> Tier {
        Tier {
            health: Some(standin.health().clone()),
            l2: Box::new(StandInL2(standin)),
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

    /// Which server runs hold the data; not picked, like [`figures`](Self::figures).
    pub(super) async fn runs(&self) -> Result<Vec<(String, String)>> {
        self.l2.runs().await
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
        Error::Unavailable => bump(&counters.here().l2_skipped),
        _ => bump(&counters.here().l2_errors),
    }
}
