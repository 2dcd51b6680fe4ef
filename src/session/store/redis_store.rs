//! Sessions in Redis: every key of one user carries the user's routing tag as a hash tag, so
//! each script and multi-key step stays in one cluster slot; the global counts and the sweep's
//! user list follow each session write, and are owed when their shard does not take them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{member, px, split_member, Admit, Life, SessionStore, PRUNE_PER_CALL};
use crate::codec::{Codec, Keyring};
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::keys::Keys;
use crate::session::record::{self, Millis, Record};

/// Sessions in Redis. Every key of one user carries the user's tag as a hash tag, so each
/// script touches one slot.
pub(crate) struct RedisStore {
    conn: Conn,
    codec: Codec,
    /// With encryption keys configured: records are sealed, bound to their session's key.
    keyring: Option<Keyring>,
    keys: Keys,
    /// Count adjustments Redis did not take yet (device kinds of sessions taken off an index):
    /// a session removal that succeeded is never reported failed over its counts.
    owed: Mutex<Owed>,
    /// Replicas that must acknowledge each write, and for how long to wait.
    replicated: Option<(u32, Duration)>,
}

/// Count changes and user registrations Redis did not take yet, paid with the next ones.
#[derive(Debug, Default)]
struct Owed {
    /// Device kind and change of its active count.
    counts: Vec<(String, i64)>,
    /// Users to register for the sweep.
    users: Vec<String>,
}

/// Deletes a session and takes it off its user's index, in one step on the user's slot.
/// Returns whether the index entry was there: only the caller that removed it adjusts the
/// counts, so concurrent revocations and prunes never count a session off twice.
const REMOVE_LUA: &str = "redis.call('DEL', KEYS[1]) return redis.call('ZREM', KEYS[2], ARGV[1])";

static REMOVE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(REMOVE_LUA));

/// Lua: extends the TTL of a user's index to a day past `ms` unless it already lives longer:
/// the index expires a day after its last session. The day is for the sweep (or a listing) to
/// take the dead entries off first and count them off: an index that expired with entries in
/// it would leave them counted as active.
const EXTEND_FN: &str = "local function extend(key, ms) \
    ms = ms + 86400000 \
    local left = redis.call('PTTL', key) \
    if left == -1 or (left >= 0 and left < ms) then redis.call('PEXPIRE', key, ms) end end ";

/// Lua: takes off the index `KEYS[1]` the entries scored before `now` whose session key (the
/// member's hash after `prefix`) is gone, at most `per_call`; an entry whose session still
/// lives (a score from an older tierkit, or a clock behind Redis's) is re-scored from the key's
/// own TTL instead. Returns the members taken off.
const PRUNE_FN: &str = "local function prune(idx, now, prefix, per_call) \
    local gone = {} \
    local stale = redis.call('ZRANGE', idx, '-inf', now, 'BYSCORE', 'LIMIT', 0, per_call) \
    for _, m in ipairs(stale) do \
      local hash = string.match(m, '^[^|]+') \
      local left = redis.call('PTTL', prefix .. hash) \
      if left == -2 then redis.call('ZREM', idx, m) gone[#gone + 1] = m \
      elseif left == -1 then redis.call('ZADD', idx, now + 86400000, m) \
      else redis.call('ZADD', idx, now + left, m) end \
    end \
    return gone end ";

/// Writes the record if the stored version is `ARGV[1]`, and moves its index entry to its new
/// expiry (only if the entry is still there: a removal in between stays removed).
///
/// KEYS: session, index. ARGV: expected version, new version, record, ttl ms, expiry score,
/// member.
static CAS_LUA: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{EXTEND_FN} if redis.call('HGET', KEYS[1], 'v') == ARGV[1] then \
        redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3]) \
        redis.call('PEXPIRE', KEYS[1], ARGV[4]) \
        if redis.call('ZSCORE', KEYS[2], ARGV[6]) then \
          redis.call('ZADD', KEYS[2], ARGV[5], ARGV[6]) extend(KEYS[2], tonumber(ARGV[4])) end \
        return 1 end return 0"
    )
});

/// Admits a new session (whose key is already written) to its user's index: prunes dead
/// entries, then at the limit refuses (returns -1, and deletes the new session) or evicts the
/// entries that expire first (deleting their sessions), adds the new entry and extends the
/// index's TTL.
///
/// KEYS: index. ARGV: now, session key prefix, per-call prune bound, max (0: none), refuse
/// (1/0), score, member, ttl ms, the new session's key and refresh-token key.
/// Returns {admitted (1/-1), gone members, evicted members}.
static ADMIT_LUA: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{EXTEND_FN}{PRUNE_FN} \
        local idx, now, prefix = KEYS[1], tonumber(ARGV[1]), ARGV[2] \
        local gone = prune(idx, now, prefix, tonumber(ARGV[3])) \
        local max = tonumber(ARGV[4]) \
        local evicted = {{}} \
        if max > 0 then \
          local n = redis.call('ZCARD', idx) \
          if n >= max then \
            if ARGV[5] == '1' then redis.call('DEL', ARGV[9], ARGV[10]) return {{-1, gone, evicted}} end \
            evicted = redis.call('ZRANGE', idx, 0, n - max) \
            for _, m in ipairs(evicted) do \
              redis.call('ZREM', idx, m) \
              redis.call('DEL', prefix .. string.match(m, '^[^|]+')) \
            end \
          end \
        end \
        redis.call('ZADD', idx, ARGV[6], ARGV[7]) \
        extend(idx, tonumber(ARGV[8])) \
        return {{1, gone, evicted}}"
    )
});

static ADMIT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(&ADMIT_LUA));

/// The live part of a user's index: prunes dead entries (bounded), then the entries scored at
/// or after `now`, latest first, at most `limit`.
///
/// KEYS: index. ARGV: now, session key prefix, per-call prune bound, limit.
/// Returns {gone members, live members}.
static INDEX_LUA: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{PRUNE_FN} \
        local gone = prune(KEYS[1], tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])) \
        local live = redis.call('ZRANGE', KEYS[1], '+inf', ARGV[1], 'BYSCORE', 'REV', 'LIMIT', 0, tonumber(ARGV[4])) \
        return {{gone, live}}"
    )
});

/// Moves a session to a new key in one step (see `SessionStore::rekey`).
///
/// KEYS: old session, new session, index, then the refresh-token keys to relink. ARGV:
/// expected version, record, ttl ms, expiry score, old member, new member, new hash, refresh
/// ttl ms. Returns 1 when moved, 0 when the version no longer matched.
const REKEY_LUA: &str = "if redis.call('HGET', KEYS[1], 'v') ~= ARGV[1] then return 0 end \
    redis.call('HSET', KEYS[2], 'v', ARGV[1], 'd', ARGV[2]) \
    redis.call('PEXPIRE', KEYS[2], ARGV[3]) \
    redis.call('DEL', KEYS[1]) \
    if redis.call('ZREM', KEYS[3], ARGV[5]) == 1 then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[6]) end \
    for i = 4, #KEYS do redis.call('SET', KEYS[i], ARGV[7], 'PX', ARGV[8]) end \
    return 1";

static REKEY: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(REKEY_LUA));

static INDEX: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(&INDEX_LUA));

static CAS: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(&CAS_LUA));

impl RedisStore {
    /// Sessions on `conn`, under `keys`; with `replicated`, every session write waits for that
    /// many replicas for up to that long.
    pub(crate) fn new(
        conn: Conn,
        codec: Codec,
        keyring: Option<Keyring>,
        keys: Keys,
        replicated: Option<(u32, Duration)>,
    ) -> Self {
        RedisStore {
            conn,
            codec,
            keyring,
            keys,
            owed: Mutex::default(),
            replicated,
        }
    }

    fn session_key(&self, tag: &str, hash: &str) -> String {
        self.keys.session(tag, hash)
    }

    fn index_key(&self, tag: &str, name: &str) -> String {
        self.keys.session_index(tag, name)
    }

    fn refresh_key(&self, tag: &str, rt_hash: &str) -> String {
        self.keys.refresh_token(tag, rt_hash)
    }

    fn users_key(&self) -> String {
        self.keys.session_users()
    }

    fn counts_key(&self) -> String {
        self.keys.session_counts()
    }

    /// Adds count changes and user registrations to `pipe`.
    fn add_globals(&self, pipe: &mut redis::Pipeline, counts: &[(String, i64)], users: &[&str]) {
        let mut per_kind: HashMap<&str, i64> = HashMap::new();
        for (kind, n) in counts {
            *per_kind.entry(kind.as_str()).or_default() += n;
        }
        let total: i64 = per_kind.values().sum();
        if total != 0 {
            pipe.cmd("HINCRBY")
                .arg(self.counts_key())
                .arg("active")
                .arg(total)
                .ignore();
        }
        for (kind, n) in per_kind.into_iter().filter(|(_, n)| *n != 0) {
            pipe.cmd("HINCRBY")
                .arg(self.counts_key())
                .arg(format!("device:{kind}"))
                .arg(n)
                .ignore();
        }
        if !users.is_empty() {
            pipe.cmd("SADD").arg(self.users_key()).arg(users).ignore();
        }
    }

    /// Applies count changes and user registrations, with whatever is owed. What was surely
    /// not sent (Redis known down, connection refused) stays owed and is paid with the next
    /// call; what failed after it may have reached Redis (a timeout, a dropped connection) is
    /// not sent again, since a hung server applies it once it resumes: the counts are never
    /// counted twice, at the price of missing a change lost with a crashed server.
    async fn settle(&self, counts: Vec<(String, i64)>, users: Vec<String>) {
        let mut owed = std::mem::take(&mut *self.owed.lock().unwrap_or_else(|p| p.into_inner()));
        owed.counts.extend(counts);
        owed.users.extend(users);
        if owed.counts.is_empty() && owed.users.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        let users: Vec<&str> = owed.users.iter().map(String::as_str).collect();
        self.add_globals(&mut pipe, &owed.counts, &users);
        if pipe.is_empty() {
            return;
        }
        let unsent = match self.conn.pipeline::<()>(&pipe).await {
            Ok(()) => false,
            Err(Error::Unavailable) => true,
            Err(Error::Redis(e)) => e.is_connection_refusal(),
            Err(_) => false,
        };
        if unsent {
            let mut now = self.owed.lock().unwrap_or_else(|p| p.into_inner());
            now.counts.extend(owed.counts);
            now.users.extend(owed.users);
        }
    }

    /// With replicated writes on, waits until enough replicas of the primary holding `key`
    /// took what this connection wrote there.
    async fn replicated(&self, key: &str) -> Result<()> {
        let Some((required, wait)) = self.replicated else {
            return Ok(());
        };
        let acknowledged = self.conn.wait_replicas(key, required, wait).await?;
        if acknowledged < required {
            return Err(Error::NotReplicated {
                acknowledged,
                required,
            });
        }
        Ok(())
    }

    /// A record as stored at `key`: sealed when keys are configured.
    fn encode(&self, key: &str, rec: &Record) -> Result<Vec<u8>> {
        let blob = record::encode(&self.codec, rec)?;
        match &self.keyring {
            Some(keys) => keys.seal(&blob, key.as_bytes()),
            None => Ok(blob),
        }
    }

    /// The record stored at `key`. With keys configured only a record sealed for that key
    /// opens: a plain one (written before encryption was turned on, or by anyone with access
    /// to Redis) is refused, never read.
    fn decode(&self, key: &str, blob: Option<Vec<u8>>) -> Result<Option<Record>> {
        let Some(blob) = blob else { return Ok(None) };
        let plain = match &self.keyring {
            Some(keys) => keys.open(&blob, key.as_bytes())?,
            None => blob,
        };
        record::decode(&self.codec, &plain).map(Some)
    }

    /// Counts sessions off; what Redis does not take now is owed and paid with the next
    /// change.
    async fn count_off(&self, kinds: &[&str]) {
        let counts = kinds.iter().map(|k| ((*k).to_owned(), -1)).collect();
        self.settle(counts, Vec::new()).await;
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn create(
        &self,
        tag: &str,
        name: &str,
        hash: &str,
        rec: &Record,
        life: Life,
        admit: Admit,
    ) -> Result<Vec<String>> {
        let kind = rec.device.kind.as_str();
        let key = self.session_key(tag, hash);
        let rt_key = self.refresh_key(tag, rec.newest_refresh());
        let blob = self.encode(&key, rec)?;
        // The record first, then its index entry: a listing in between never meets an entry
        // without its record (which it would prune, leaving the session out of revoke_all).
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&key)
            .arg("v")
            .arg(rec.version)
            .arg("d")
            .arg(blob)
            .ignore();
        pipe.cmd("PEXPIRE").arg(&key).arg(px(life.ttl)).ignore();
        pipe.cmd("SET")
            .arg(&rt_key)
            .arg(hash)
            .arg("PX")
            .arg(px(admit.refresh_ttl))
            .ignore();
        self.conn.pipeline::<()>(&pipe).await?;
        let mut inv = ADMIT.key(self.index_key(tag, name));
        inv.arg(admit.now)
            .arg(self.session_key(tag, ""))
            .arg(PRUNE_PER_CALL)
            .arg(admit.max)
            .arg(u8::from(admit.refuse))
            .arg(life.expires)
            .arg(member(hash, kind))
            .arg(px(life.ttl))
            .arg(&key)
            .arg(&rt_key);
        let (admitted, gone, evicted): (i64, Vec<String>, Vec<String>) =
            self.conn.invoke(&inv).await?;
        let mut counts: Vec<(String, i64)> = gone
            .iter()
            .chain(&evicted)
            .map(|m| (split_member(m).1.to_owned(), -1))
            .collect();
        if admitted != 1 {
            self.settle(counts, Vec::new()).await;
            return Err(Error::SessionLimit { max: admit.max });
        }
        counts.push((kind.to_owned(), 1));
        self.settle(counts, vec![name.to_owned()]).await;
        self.replicated(&key).await?;
        Ok(evicted)
    }

    async fn load(&self, tag: &str, hash: &str) -> Result<Option<Record>> {
        let key = self.session_key(tag, hash);
        let blob: Option<Vec<u8>> = self
            .conn
            .query(redis::cmd("HGET").arg(&key).arg("d"))
            .await?;
        self.decode(&key, blob)
    }

    async fn load_many(&self, tag: &str, hashes: &[&str]) -> Result<Vec<Option<Record>>> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = hashes.iter().map(|h| self.session_key(tag, h)).collect();
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("HGET").arg(key).arg("d");
        }
        let blobs: Vec<Option<Vec<u8>>> = self.conn.pipeline(&pipe).await?;
        // A record that no longer decodes is a session that cannot be honoured: absent.
        Ok(blobs
            .into_iter()
            .zip(&keys)
            .map(|(b, key)| self.decode(key, b).ok().flatten())
            .collect())
    }

    async fn cas(
        &self,
        tag: &str,
        hash: &str,
        name: &str,
        expected: u64,
        rec: &Record,
        life: Life,
    ) -> Result<bool> {
        let key = self.session_key(tag, hash);
        let blob = self.encode(&key, rec)?;
        let mut inv = CAS.key(&key);
        inv.key(self.index_key(tag, name))
            .arg(expected)
            .arg(rec.version)
            .arg(blob)
            .arg(px(life.ttl))
            .arg(life.expires)
            .arg(member(hash, rec.device.kind.as_str()));
        let written = self.conn.invoke::<i64>(&inv).await? == 1;
        if written {
            self.replicated(&key).await?;
        }
        Ok(written)
    }

    async fn remove(&self, tag: &str, hash: &str, name: &str, kind: &str) -> Result<bool> {
        let key = self.session_key(tag, hash);
        let mut inv = REMOVE.key(&key);
        inv.key(self.index_key(tag, name)).arg(member(hash, kind));
        let removed: i64 = self.conn.invoke(&inv).await?;
        if removed == 1 {
            self.count_off(&[kind]).await;
        }
        self.replicated(&key).await?;
        Ok(removed == 1)
    }

    async fn index(
        &self,
        tag: &str,
        name: &str,
        now: Millis,
        limit: usize,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let mut inv = INDEX.key(self.index_key(tag, name));
        inv.arg(now)
            .arg(self.session_key(tag, ""))
            .arg(PRUNE_PER_CALL)
            .arg(limit);
        let (gone, live): (Vec<String>, Vec<String>) = self.conn.invoke(&inv).await?;
        let kinds: Vec<&str> = gone.iter().map(|m| split_member(m).1).collect();
        self.count_off(&kinds).await;
        Ok((live, gone))
    }

    async fn prune(&self, tag: &str, name: &str, members: &[String]) -> Result<Vec<String>> {
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let index = self.index_key(tag, name);
        let mut pipe = redis::pipe();
        for m in members {
            pipe.cmd("ZREM").arg(&index).arg(m);
        }
        let removed: Vec<i64> = self.conn.pipeline(&pipe).await?;
        // Only what this call took off the index is counted off.
        let taken: Vec<String> = members
            .iter()
            .zip(&removed)
            .filter(|(_, r)| **r == 1)
            .map(|(m, _)| m.clone())
            .collect();
        let kinds: Vec<&str> = taken.iter().map(|m| split_member(m).1).collect();
        self.count_off(&kinds).await;
        Ok(taken)
    }

    async fn rekey(
        &self,
        tag: &str,
        name: &str,
        (old, new): (&str, &str),
        rec: &Record,
        life: Life,
        rt_ttl: Duration,
    ) -> Result<bool> {
        let new_key = self.session_key(tag, new);
        // Sealed records are bound to their key: sealed afresh for the new one.
        let blob = self.encode(&new_key, rec)?;
        let kind = rec.device.kind.as_str();
        let mut inv = REKEY.key(self.session_key(tag, old));
        inv.key(&new_key).key(self.index_key(tag, name));
        for token in rec.refresh_tokens() {
            inv.key(self.refresh_key(tag, token));
        }
        inv.arg(rec.version)
            .arg(blob)
            .arg(px(life.ttl))
            .arg(life.expires)
            .arg(member(old, kind))
            .arg(member(new, kind))
            .arg(new)
            .arg(px(rt_ttl));
        let moved = self.conn.invoke::<i64>(&inv).await? == 1;
        if moved {
            self.replicated(&new_key).await?;
        }
        Ok(moved)
    }

    async fn refresh_lookup(&self, tag: &str, rt_hash: &str) -> Result<Option<String>> {
        self.conn
            .query(redis::cmd("GET").arg(self.refresh_key(tag, rt_hash)))
            .await
    }

    async fn refresh_link(
        &self,
        tag: &str,
        rt_hash: &str,
        hash: &str,
        ttl: Duration,
    ) -> Result<()> {
        self.conn
            .query(
                redis::cmd("SET")
                    .arg(self.refresh_key(tag, rt_hash))
                    .arg(hash)
                    .arg("PX")
                    .arg(px(ttl)),
            )
            .await
    }

    async fn counts(&self) -> Result<BTreeMap<String, i64>> {
        self.count_off(&[]).await;
        let all: HashMap<String, i64> = self
            .conn
            .query(redis::cmd("HGETALL").arg(self.counts_key()))
            .await?;
        Ok(all.into_iter().collect())
    }

    async fn users_page(&self, cursor: u64, count: usize) -> Result<(u64, Vec<String>)> {
        self.conn
            .query(
                redis::cmd("SSCAN")
                    .arg(self.users_key())
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(count),
            )
            .await
    }

    async fn forget_user(&self, tag: &str, name: &str) -> Result<()> {
        let left: u64 = self
            .conn
            .query(redis::cmd("ZCARD").arg(self.index_key(tag, name)))
            .await?;
        if left == 0 {
            self.conn
                .query::<()>(redis::cmd("SREM").arg(self.users_key()).arg(name))
                .await?;
        }
        Ok(())
    }
}
