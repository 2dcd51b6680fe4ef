//! The storage primitives a session store needs, implemented by Redis and by process memory.
//! Every rule (expiry, touch, rotation, reuse) lives above them, in `Sessions`, so both stores
//! behave the same.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use super::record::{now_ms, Millis, Record};
use crate::codec::Codec;
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::keys::Keys;

/// Where sessions live.
pub(crate) enum Store {
    Redis(RedisStore),
    Memory(MemoryStore),
}

/// An entry of a user's index: the session hash and its device kind (so a vanished session
/// can still be taken off the per-device counts).
pub(crate) fn member(hash: &str, kind: &str) -> String {
    format!("{hash}|{kind}")
}

pub(crate) fn split_member(member: &str) -> (&str, &str) {
    member.split_once('|').unwrap_or((member, "other"))
}

impl Store {
    pub(crate) async fn create(
        &self,
        tag: &str,
        hash: &str,
        rt_hash: &str,
        rec: &Record,
        ttl: Duration,
        kind: &str,
    ) -> Result<()> {
        match self {
            Store::Redis(s) => s.create(tag, hash, rt_hash, rec, ttl, kind).await,
            Store::Memory(s) => s.create(hash, rt_hash, rec, ttl, kind),
        }
    }

    pub(crate) async fn load(&self, tag: &str, hash: &str) -> Result<Option<Record>> {
        match self {
            Store::Redis(s) => s.load(tag, hash).await,
            Store::Memory(s) => Ok(s.load(hash)),
        }
    }

    pub(crate) async fn load_many(
        &self,
        tag: &str,
        hashes: &[&str],
    ) -> Result<Vec<Option<Record>>> {
        match self {
            Store::Redis(s) => s.load_many(tag, hashes).await,
            Store::Memory(s) => Ok(hashes.iter().map(|h| s.load(h)).collect()),
        }
    }

    /// Writes `rec` if the stored version is still `expected`.
    pub(crate) async fn cas(
        &self,
        tag: &str,
        hash: &str,
        expected: u64,
        rec: &Record,
        ttl: Duration,
    ) -> Result<bool> {
        match self {
            Store::Redis(s) => s.cas(tag, hash, expected, rec, ttl).await,
            Store::Memory(s) => Ok(s.cas(hash, expected, rec, ttl)),
        }
    }

    /// Deletes a session; returns whether it existed.
    pub(crate) async fn remove(
        &self,
        tag: &str,
        hash: &str,
        user: &str,
        kind: &str,
    ) -> Result<bool> {
        match self {
            Store::Redis(s) => s.remove(tag, hash, user, kind).await,
            Store::Memory(s) => Ok(s.remove(hash, user, kind)),
        }
    }

    /// The index of a user: members, newest first.
    pub(crate) async fn index(&self, tag: &str, user: &str) -> Result<Vec<String>> {
        match self {
            Store::Redis(s) => s.index(tag, user).await,
            Store::Memory(s) => Ok(s.index(user)),
        }
    }

    /// Takes vanished sessions off a user's index and the counts; returns how many.
    pub(crate) async fn prune(&self, tag: &str, user: &str, members: &[String]) -> Result<u64> {
        match self {
            Store::Redis(s) => s.prune(tag, user, members).await,
            Store::Memory(s) => Ok(s.prune(user, members)),
        }
    }

    pub(crate) async fn refresh_lookup(&self, tag: &str, rt_hash: &str) -> Result<Option<String>> {
        match self {
            Store::Redis(s) => s.refresh_lookup(tag, rt_hash).await,
            Store::Memory(s) => Ok(s.refresh_lookup(rt_hash)),
        }
    }

    pub(crate) async fn refresh_link(
        &self,
        tag: &str,
        rt_hash: &str,
        hash: &str,
        ttl: Duration,
    ) -> Result<()> {
        match self {
            Store::Redis(s) => s.refresh_link(tag, rt_hash, hash, ttl).await,
            Store::Memory(s) => {
                s.refresh_link(rt_hash, hash, ttl);
                Ok(())
            }
        }
    }

    /// Active sessions in total and by device kind.
    pub(crate) async fn counts(&self) -> Result<BTreeMap<String, i64>> {
        match self {
            Store::Redis(s) => s.counts().await,
            Store::Memory(s) => Ok(s.counts()),
        }
    }

    /// One page of users that have (or had) sessions, for the sweep.
    pub(crate) async fn users_page(&self, cursor: u64, count: usize) -> Result<(u64, Vec<String>)> {
        match self {
            Store::Redis(s) => s.users_page(cursor, count).await,
            Store::Memory(s) => Ok(s.users_page(cursor, count)),
        }
    }

    /// Drops a user from the sweep's list once no session is left in their index.
    /// Lets the memory store expire what Redis would have expired on its own.
    pub(crate) fn purge(&self) {
        if let Store::Memory(s) = self {
            s.purge();
        }
    }

    pub(crate) async fn forget_user(&self, tag: &str, user: &str) -> Result<()> {
        match self {
            Store::Redis(s) => s.forget_user(tag, user).await,
            Store::Memory(s) => {
                s.forget_user(user);
                Ok(())
            }
        }
    }
}

/// Sessions in Redis. Every key of one user carries the user's tag as a hash tag, so each
/// script touches one slot.
pub(crate) struct RedisStore {
    pub(crate) conn: Conn,
    pub(crate) codec: Codec,
    pub(crate) keys: Keys,
    /// Count adjustments Redis did not take yet (device kinds of sessions taken off an index):
    /// a session removal that succeeded is never reported failed over its counts.
    pub(crate) owed: std::sync::Mutex<Owed>,
    /// Replicas that must acknowledge each write, and for how long to wait.
    pub(crate) replicated: Option<(u32, Duration)>,
}

/// Count changes and user registrations Redis did not take yet, paid with the next ones.
#[derive(Debug, Default)]
pub(crate) struct Owed {
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

/// Writes the record if the stored version is `ARGV[1]`: one key.
const CAS_LUA: &str = "if redis.call('HGET', KEYS[1], 'v') == ARGV[1] then \
    redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3]) \
    redis.call('PEXPIRE', KEYS[1], ARGV[4]) return 1 end return 0";

static CAS: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(CAS_LUA));

fn px(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisStore {
    fn session_key(&self, tag: &str, hash: &str) -> String {
        self.keys.session(tag, hash)
    }

    fn index_key(&self, tag: &str, user: &str) -> String {
        self.keys.session_index(tag, user)
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

    async fn create(
        &self,
        tag: &str,
        hash: &str,
        rt_hash: &str,
        rec: &Record,
        ttl: Duration,
        kind: &str,
    ) -> Result<()> {
        let blob = self.codec.encode(rec)?;
        let key = self.session_key(tag, hash);
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&key)
            .arg("v")
            .arg(rec.version)
            .arg("d")
            .arg(blob)
            .ignore();
        pipe.cmd("PEXPIRE").arg(&key).arg(px(ttl)).ignore();
        let deadline = Duration::from_millis(rec.deadline.saturating_sub(now_ms()));
        pipe.cmd("SET")
            .arg(self.refresh_key(tag, rt_hash))
            .arg(hash)
            .arg("PX")
            .arg(px(deadline))
            .ignore();
        // No TTL on the index: its entries must outlive their sessions so that pruning (lazy,
        // or the sweep) can take them off the counts; Redis drops the set once it is empty.
        let index = self.index_key(tag, &rec.user_id);
        pipe.cmd("ZADD")
            .arg(&index)
            .arg(rec.created)
            .arg(member(hash, kind))
            .ignore();
        if self.conn.is_cluster() {
            // The global keys live on other shards: losing one of them must not fail every
            // login, so they follow the session's own write (never counting a session that
            // was not written) and are owed if their shard does not take them.
            self.conn.pipeline::<()>(&pipe).await?;
            self.settle(vec![(kind.to_owned(), 1)], vec![rec.user_id.clone()])
                .await;
        } else {
            self.add_globals(&mut pipe, &[(kind.to_owned(), 1)], &[&rec.user_id]);
            self.conn.pipeline::<()>(&pipe).await?;
        }
        self.replicated(&key).await
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

    fn decode(&self, blob: Option<Vec<u8>>) -> Result<Option<Record>> {
        blob.map(|b| self.codec.decode::<Record>(&b)).transpose()
    }

    async fn load(&self, tag: &str, hash: &str) -> Result<Option<Record>> {
        let blob: Option<Vec<u8>> = self
            .conn
            .query(redis::cmd("HGET").arg(self.session_key(tag, hash)).arg("d"))
            .await?;
        self.decode(blob)
    }

    async fn load_many(&self, tag: &str, hashes: &[&str]) -> Result<Vec<Option<Record>>> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for h in hashes {
            pipe.cmd("HGET").arg(self.session_key(tag, h)).arg("d");
        }
        let blobs: Vec<Option<Vec<u8>>> = self.conn.pipeline(&pipe).await?;
        // A record that no longer decodes is a session that cannot be honoured: absent.
        Ok(blobs
            .into_iter()
            .map(|b| self.decode(b).ok().flatten())
            .collect())
    }

    async fn cas(
        &self,
        tag: &str,
        hash: &str,
        expected: u64,
        rec: &Record,
        ttl: Duration,
    ) -> Result<bool> {
        let blob = self.codec.encode(rec)?;
        let key = self.session_key(tag, hash);
        let mut inv = CAS.key(&key);
        inv.arg(expected).arg(rec.version).arg(blob).arg(px(ttl));
        let written = self.conn.invoke::<i64>(&inv).await? == 1;
        if written {
            self.replicated(&key).await?;
        }
        Ok(written)
    }

    async fn remove(&self, tag: &str, hash: &str, user: &str, kind: &str) -> Result<bool> {
        let key = self.session_key(tag, hash);
        let mut inv = REMOVE.key(&key);
        inv.key(self.index_key(tag, user)).arg(member(hash, kind));
        let removed: i64 = self.conn.invoke(&inv).await?;
        if removed == 1 {
            self.count_off(&[kind]).await;
        }
        self.replicated(&key).await?;
        Ok(removed == 1)
    }

    /// Counts sessions off; what Redis does not take now is owed and paid with the next
    /// change.
    async fn count_off(&self, kinds: &[&str]) {
        let counts = kinds.iter().map(|k| ((*k).to_owned(), -1)).collect();
        self.settle(counts, Vec::new()).await;
    }

    async fn index(&self, tag: &str, user: &str) -> Result<Vec<String>> {
        self.conn
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.index_key(tag, user))
                    .arg(0)
                    .arg(-1)
                    .arg("REV"),
            )
            .await
    }

    async fn prune(&self, tag: &str, user: &str, members: &[String]) -> Result<u64> {
        if members.is_empty() {
            return Ok(0);
        }
        let index = self.index_key(tag, user);
        let mut pipe = redis::pipe();
        for m in members {
            pipe.cmd("ZREM").arg(&index).arg(m);
        }
        let removed: Vec<i64> = self.conn.pipeline(&pipe).await?;
        // Only what this call took off the index is counted off.
        let kinds: Vec<&str> = members
            .iter()
            .zip(&removed)
            .filter(|(_, r)| **r == 1)
            .map(|(m, _)| split_member(m).1)
            .collect();
        self.count_off(&kinds).await;
        Ok(kinds.len() as u64)
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

    async fn forget_user(&self, tag: &str, user: &str) -> Result<()> {
        let left: u64 = self
            .conn
            .query(redis::cmd("ZCARD").arg(self.index_key(tag, user)))
            .await?;
        if left == 0 {
            self.conn
                .query::<()>(redis::cmd("SREM").arg(self.users_key()).arg(user))
                .await?;
        }
        Ok(())
    }
}

/// Sessions in process memory, with the same expiry as Redis keys.
#[derive(Default)]
pub(crate) struct MemoryStore {
    state: Mutex<Mem>,
}

#[derive(Default)]
struct Mem {
    sessions: HashMap<String, (Record, Millis)>,
    refresh: HashMap<String, (String, Millis)>,
    index: HashMap<String, Vec<(Millis, String)>>,
    users: Vec<String>,
    counts: BTreeMap<String, i64>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Mem> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn create(
        &self,
        hash: &str,
        rt_hash: &str,
        rec: &Record,
        ttl: Duration,
        kind: &str,
    ) -> Result<()> {
        let now = now_ms();
        let mut m = self.lock();
        let until = now.saturating_add(px(ttl));
        m.sessions.insert(hash.to_owned(), (rec.clone(), until));
        m.refresh
            .insert(rt_hash.to_owned(), (hash.to_owned(), rec.deadline));
        m.index
            .entry(rec.user_id.clone())
            .or_default()
            .push((rec.created, member(hash, kind)));
        if !m.users.contains(&rec.user_id) {
            m.users.push(rec.user_id.clone());
        }
        *m.counts.entry("active".into()).or_default() += 1;
        *m.counts.entry(format!("device:{kind}")).or_default() += 1;
        Ok(())
    }

    fn load(&self, hash: &str) -> Option<Record> {
        let now = now_ms();
        let mut m = self.lock();
        match m.sessions.get(hash) {
            Some((rec, until)) if now < *until => Some(rec.clone()),
            Some(_) => {
                m.sessions.remove(hash);
                None
            }
            None => None,
        }
    }

    fn cas(&self, hash: &str, expected: u64, rec: &Record, ttl: Duration) -> bool {
        let now = now_ms();
        let mut m = self.lock();
        match m.sessions.get_mut(hash) {
            Some((stored, until)) if now < *until && stored.version == expected => {
                *stored = rec.clone();
                *until = now.saturating_add(px(ttl));
                true
            }
            _ => false,
        }
    }

    fn remove(&self, hash: &str, user: &str, kind: &str) -> bool {
        let mut m = self.lock();
        m.sessions.remove(hash);
        let member = member(hash, kind);
        let mut indexed = false;
        if let Some(idx) = m.index.get_mut(user) {
            let before = idx.len();
            idx.retain(|(_, mem)| *mem != member);
            indexed = idx.len() < before;
        }
        if indexed {
            *m.counts.entry("active".into()).or_default() -= 1;
            *m.counts.entry(format!("device:{kind}")).or_default() -= 1;
        }
        indexed
    }

    /// Drops expired sessions and refresh links, as Redis expiry would.
    fn purge(&self) {
        let now = now_ms();
        let mut m = self.lock();
        m.sessions.retain(|_, (_, until)| now < *until);
        m.refresh.retain(|_, (_, until)| now < *until);
    }

    fn index(&self, user: &str) -> Vec<String> {
        let m = self.lock();
        let mut idx = m.index.get(user).cloned().unwrap_or_default();
        idx.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        idx.into_iter().map(|(_, mem)| mem).collect()
    }

    fn prune(&self, user: &str, members: &[String]) -> u64 {
        let mut m = self.lock();
        let gone: HashSet<&String> = members.iter().collect();
        let mut removed = Vec::new();
        if let Some(idx) = m.index.get_mut(user) {
            idx.retain(|(_, mem)| {
                let keep = !gone.contains(mem);
                if !keep {
                    removed.push(mem.clone());
                }
                keep
            });
        }
        for mem in &removed {
            let kind = split_member(mem).1.to_owned();
            *m.counts.entry("active".into()).or_default() -= 1;
            *m.counts.entry(format!("device:{kind}")).or_default() -= 1;
        }
        removed.len() as u64
    }

    fn refresh_lookup(&self, rt_hash: &str) -> Option<String> {
        let now = now_ms();
        let m = self.lock();
        m.refresh
            .get(rt_hash)
            .filter(|(_, until)| now < *until)
            .map(|(h, _)| h.clone())
    }

    fn refresh_link(&self, rt_hash: &str, hash: &str, ttl: Duration) {
        let until = now_ms().saturating_add(px(ttl));
        self.lock()
            .refresh
            .insert(rt_hash.to_owned(), (hash.to_owned(), until));
    }

    fn counts(&self) -> BTreeMap<String, i64> {
        self.lock().counts.clone()
    }

    fn users_page(&self, cursor: u64, count: usize) -> (u64, Vec<String>) {
        let m = self.lock();
        let start = usize::try_from(cursor)
            .unwrap_or(usize::MAX)
            .min(m.users.len());
        let end = start.saturating_add(count).min(m.users.len());
        let page = m.users[start..end].to_vec();
        let next = if end >= m.users.len() { 0 } else { end as u64 };
        (next, page)
    }

    fn forget_user(&self, user: &str) {
        let mut m = self.lock();
        if m.index.get(user).is_none_or(|i| i.is_empty()) {
            m.index.remove(user);
            m.users.retain(|u| u != user);
        }
    }
}
