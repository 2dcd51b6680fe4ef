//! The one trait behind the tier choice: the storage primitives a session store needs
//! ([`SessionStore`]), implemented by Redis ([`RedisStore`]) and by process memory
//! ([`MemoryStore`]), and [`LocalCopy`], which wraps a store that can fail (Redis) in the
//! local copy that validates while it is unreachable. Every rule (expiry, touch, rotation,
//! reuse) lives above them, in `Sessions`, so every store behaves the same.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use super::record::{Millis, Record};
use crate::error::Result;

mod local_copy;
mod memory_store;
mod redis_store;
#[cfg(feature = "testing")]
mod stand_in;

pub(crate) use local_copy::LocalCopy;
pub(crate) use memory_store::MemoryStore;
pub(crate) use redis_store::RedisStore;
#[cfg(feature = "testing")]
pub(crate) use stand_in::StandInStore;

/// Where sessions live. A `Sessions` handle holds one boxed, and async-trait boxes each call's
/// future: a session call costs microseconds of Redis or lock time, next to which an
/// allocation or two is noise.
///
/// Keys: `tag` is the user's routing tag (one Redis Cluster slot per user), `name` the user as
/// named in keys (both from [`UserNames`](super::names::UserNames): the plain user id, or a
/// keyed hash of it), `hash` the SHA-256 of a session id, `rt_hash` that of a refresh token. TTLs are durations from now, given by
/// the caller, which owns the clock (the memory store reads the same clock for its expiry).
#[async_trait]
pub(crate) trait SessionStore: Send + Sync {
    /// The tier, as `Debug` shows it.
    fn name(&self) -> &'static str;

    /// Stores a new session for `life`, links its refresh token to it, admits it
    /// to the index of its user (`name`) as `admit` says, and counts it. Returns the index
    /// members of the sessions evicted to make room (already deleted and counted off).
    ///
    /// [`Error::SessionLimit`](crate::Error::SessionLimit) when the user is at the limit and
    /// the policy refuses: nothing is left of the new session then.
    async fn create(
        &self,
        tag: &str,
        name: &str,
        hash: &str,
        rec: &Record,
        life: Life,
        admit: Admit,
    ) -> Result<Vec<String>>;

    /// One session.
    async fn load(&self, tag: &str, hash: &str) -> Result<Option<Record>>;

    /// The read of a validation: [`load`](Self::load), or, from a [`LocalCopy`] whose store
    /// cannot be reached, the copy of the session as this instance last validated it. An
    /// error means neither answered.
    async fn read(&self, tag: &str, hash: &str) -> Result<Read> {
        Ok(Read::Stored(self.load(tag, hash).await?))
    }

    /// Keeps `rec`, just validated, as the local copy of session `hash`. Stores without a
    /// local copy (always reachable) ignore it.
    fn keep_copy(&self, _hash: &str, _rec: &Record) {}

    /// Drops the local copy of session `hash`, if any.
    fn drop_copy(&self, _hash: &str) {}

    /// Drops the local copies of the sessions of `user_id` (the id itself: copies are in
    /// process memory), except `keep`; returns their hashes.
    fn drop_copies_of(&self, _user_id: &str, _keep: Option<&str>) -> Vec<String> {
        Vec::new()
    }

    /// Sessions of one user, in the order of `hashes`. A record that no longer decodes is
    /// absent: a session that cannot be honoured.
    async fn load_many(&self, tag: &str, hashes: &[&str]) -> Result<Vec<Option<Record>>>;

    /// Writes `rec` for `life` if the stored version is still `expected`, and moves its entry
    /// in its user's (`name`) index to the new expiry; returns whether it did.
    async fn cas(
        &self,
        tag: &str,
        hash: &str,
        name: &str,
        expected: u64,
        rec: &Record,
        life: Life,
    ) -> Result<bool>;

    /// Deletes a session and takes it off its user's index. Returns whether the index entry
    /// was there: only the caller that removed it counts the session off, so concurrent
    /// revocations and prunes never count one twice.
    async fn remove(&self, tag: &str, hash: &str, name: &str, kind: &str) -> Result<bool>;

    /// The index of a user as of `now`: the members ([`member`]) of sessions that may still
    /// be live, at most `limit`, latest expiry first; and the entries of sessions that are gone
    /// it took off (and counted off) on the way. Entries are scored by expiry, so the
    /// dead ones are found by score, a bounded number per call, never by reading them all.
    async fn index(
        &self,
        tag: &str,
        name: &str,
        now: Millis,
        limit: usize,
    ) -> Result<(Vec<String>, Vec<String>)>;

    /// Takes vanished sessions off a user's index and the counts; returns the members this call
    /// took off.
    async fn prune(&self, tag: &str, name: &str, members: &[String]) -> Result<Vec<String>>;

    /// The session a refresh token belongs to.
    async fn refresh_lookup(&self, tag: &str, rt_hash: &str) -> Result<Option<String>>;

    /// Moves session `old` to `new` (a new session id for the same record), if its stored
    /// version is still `rec.version`: the record under the new key for `life`, the index
    /// entry renamed, every refresh token of `rec` linked to `new` for `rt_ttl`, the old key
    /// gone. Returns whether it moved.
    async fn rekey(
        &self,
        tag: &str,
        name: &str,
        (old, new): (&str, &str),
        rec: &Record,
        life: Life,
        rt_ttl: Duration,
    ) -> Result<bool>;

    /// Links a refresh token to its session for `ttl`.
    async fn refresh_link(&self, tag: &str, rt_hash: &str, hash: &str, ttl: Duration)
        -> Result<()>;

    /// Active sessions in total (`active`) and by device kind (`device:{kind}`).
    async fn counts(&self) -> Result<BTreeMap<String, i64>>;

    /// One page of users (their names) that have or had sessions, for the sweep, and the next
    /// cursor (0 when done).
    async fn users_page(&self, cursor: u64, count: usize) -> Result<(u64, Vec<String>)>;

    /// Drops a user from the sweep's list once no session is left in their index.
    async fn forget_user(&self, tag: &str, name: &str) -> Result<()>;

    /// Drops what has expired, for a store that has no expiry of its own. Redis expires keys
    /// itself.
    fn purge(&self) {}
}

/// How long a record lives: its TTL from now, and its expiry on the session clock, by which
/// its user's index scores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Life {
    pub(crate) ttl: Duration,
    pub(crate) expires: Millis,
}

/// How a new session enters its user's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Admit {
    /// The session clock now.
    pub(crate) now: Millis,
    /// The most sessions a user may have; 0 for no limit.
    pub(crate) max: u32,
    /// At the limit: refuse the new session (true) or evict the one that expires first.
    pub(crate) refuse: bool,
    /// How long the new session's refresh token resolves.
    pub(crate) refresh_ttl: Duration,
}

/// How many dead index entries one call takes off at most: each costs the server a lookup, and
/// a call must stay short however many sessions a user let expire.
pub(crate) const PRUNE_PER_CALL: usize = 1_000;

/// What the read of a validation found.
pub(crate) enum Read {
    /// The store's answer: the session, or none (unknown, expired or removed).
    Stored(Option<Record>),
    /// The store could not be reached: the local copy of the session, as last validated here
    /// within `staleness`.
    Copy(Record),
}

/// An entry of a user's index: the session hash and its device kind (so a vanished session
/// can still be taken off the per-device counts).
pub(crate) fn member(hash: &str, kind: &str) -> String {
    format!("{hash}|{kind}")
}

/// The session hash and device kind of an index entry.
pub(crate) fn split_member(member: &str) -> (&str, &str) {
    member.split_once('|').unwrap_or((member, "other"))
}

/// A TTL in whole milliseconds, at least 1 (Redis refuses a zero `PX`).
pub(crate) fn px(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
