//! The Redis L2: entries as `SET ... PX`, tag sets kept alive by a small script, removals by
//! `UNLINK`, pattern work by `SCAN` on every primary, and the backplane `PUBLISH` appended to
//! the pipeline of the change it announces, so a change is one round trip.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;

use super::{Entry, Keyspace, Stored, L2};
use crate::cache::backplane::{self, Op};
use crate::cache::pattern::Pattern;
use crate::conn::{Conn, ServerFigures};
use crate::error::{Error, Result};

/// Keys per `SCAN` page and per `UNLINK` pipeline.
const SCAN_COUNT: usize = 1000;

/// Adds a key to a tag set and makes the set live at least as long as the entry: the set must
/// outlive every entry it lists. (Plain EVAL: the script is tiny, Redis caches it, and EVAL in
/// a pipeline needs no NOSCRIPT handling. Works on any Redis with Lua, unlike PEXPIRE NX/GT.)
const TAG_SCRIPT: &str = "redis.call('SADD', KEYS[1], ARGV[1]) \
    if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then \
    redis.call('PEXPIRE', KEYS[1], ARGV[2]) end";

/// Returns the members of a set and deletes it, atomically, touching one key.
static TAKE_SET: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "local m = redis.call('SMEMBERS', KEYS[1]) redis.call('UNLINK', KEYS[1]) return m",
    )
});

/// Redis through one [`Conn`], publishing changes on the backplane channel.
#[derive(Debug)]
pub(super) struct RedisL2 {
    conn: Conn,
    channel: String,
    /// Tags this instance's backplane messages so it skips its own.
    origin: u64,
}

impl RedisL2 {
    pub(super) fn new(conn: Conn, channel: String, origin: u64) -> RedisL2 {
        RedisL2 {
            conn,
            channel,
            origin,
        }
    }

    /// Appends the backplane message for `op` to `pipe` and sends it.
    async fn send_publishing(&self, mut pipe: redis::Pipeline, op: &Op) -> Result<()> {
        pipe.cmd("PUBLISH")
            .arg(&self.channel)
            .arg(backplane::message(self.origin, op))
            .ignore();
        self.conn.pipeline::<()>(&pipe).await
    }
}

/// One key's `GET` and `PTTL` replies as what is stored there.
fn stored(
    value: redis::RedisResult<redis::Value>,
    pttl: redis::RedisResult<redis::Value>,
) -> Result<Stored> {
    let bytes = match value {
        Ok(redis::Value::Nil) => return Ok(Stored::Absent),
        Ok(value) => {
            redis::from_redis_value::<Vec<u8>>(value).map_err(|e| Error::Redis(e.into()))?
        }
        Err(e) if e.code() == Some("WRONGTYPE") => return Ok(Stored::Foreign),
        Err(e) => return Err(Error::Redis(e)),
    };
    // -1: no expiry; -2: gone between the two commands (they run back to back, so only an
    // expiry at that instant), read as absent.
    let pttl: i64 =
        redis::from_redis_value(pttl.map_err(Error::Redis)?).map_err(|e| Error::Redis(e.into()))?;
    let ttl = match pttl {
        -2 => return Ok(Stored::Absent),
        ms if ms >= 0 => Some(Duration::from_millis(ms.unsigned_abs())),
        _ => None,
    };
    Ok(Stored::Value { bytes, ttl })
}

/// Redis takes TTLs in whole milliseconds, at least one.
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl L2 for RedisL2 {
    fn stores_values(&self) -> bool {
        true
    }

    async fn get(&self, space: &Keyspace, key: &str) -> Result<Stored> {
        let mut found = self.get_many(space, &[key]).await?;
        Ok(found.pop().unwrap_or(Stored::Absent))
    }

    /// `GET` and `PTTL` of each key in one round trip. Error replies are taken one by one, so
    /// a key of another type (`WRONGTYPE`) is [`Stored::Foreign`] instead of failing them all.
    async fn get_many(&self, space: &Keyspace, keys: &[&str]) -> Result<Vec<Stored>> {
        let mut pipe = redis::pipe();
        for key in keys {
            let entry = space.entry(key);
            pipe.cmd("GET").arg(&entry).cmd("PTTL").arg(entry);
        }
        pipe.ignore_errors();
        let replies: Vec<redis::RedisResult<redis::Value>> = self.conn.pipeline(&pipe).await?;
        let mut replies = replies.into_iter();
        let mut out = Vec::with_capacity(keys.len());
        while let (Some(value), Some(pttl)) = (replies.next(), replies.next()) {
            out.push(stored(value, pttl)?);
        }
        Ok(out)
    }

    async fn contains(&self, space: &Keyspace, keys: &[String]) -> Result<Vec<bool>> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("EXISTS").arg(space.entry(key));
        }
        self.conn.pipeline(&pipe).await
    }

    async fn fill(
        &self,
        space: &Keyspace,
        key: &str,
        bytes: Vec<u8>,
        ttl: Duration,
        overwrite: bool,
    ) -> Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(space.entry(key))
            .arg(bytes)
            .arg("PX")
            .arg(millis(ttl));
        if !overwrite {
            cmd.arg("NX");
        }
        // `OK`, or nil when NX found the key: either way the call went through.
        self.conn.query::<Option<String>>(&cmd).await.map(drop)
    }

    async fn write(&self, space: &Keyspace, entries: &[Entry<'_>], op: &Op) -> Result<()> {
        let mut pipe = redis::pipe();
        for entry in entries {
            let ms = millis(entry.ttl);
            pipe.cmd("SET")
                .arg(space.entry(entry.key))
                .arg(entry.bytes)
                .arg("PX")
                .arg(ms)
                .ignore();
            for tag in entry.tags {
                pipe.cmd("EVAL")
                    .arg(TAG_SCRIPT)
                    .arg(1)
                    .arg(space.tag(tag))
                    .arg(entry.key)
                    .arg(ms)
                    .ignore();
            }
        }
        self.send_publishing(pipe, op).await
    }

    async fn remove(&self, space: &Keyspace, op: &Op) -> Result<()> {
        let mut pipe = redis::pipe();
        for key in op.keys() {
            pipe.cmd("UNLINK").arg(space.entry(key)).ignore();
        }
        self.send_publishing(pipe, op).await
    }

    async fn take_tag(&self, space: &Keyspace, tag: &str) -> Result<Vec<String>> {
        self.conn.invoke(&TAKE_SET.key(space.tag(tag))).await
    }

    /// SCANs and UNLINKs batch by batch. With a pattern, the glob is a superset (Redis's `?`
    /// matches a byte, ours a character) and only keys of this version that the pattern
    /// matches are removed.
    async fn remove_matching(
        &self,
        space: &Keyspace,
        pattern: Option<&Pattern>,
        op: &Op,
    ) -> (u64, Result<()>) {
        let glob = match pattern {
            Some(p) => p.to_redis_glob(&space.entries),
            None => space.all_versions.clone(),
        };
        let conn = &self.conn;
        // A cluster keeps each key on one primary: every primary's keyspace is walked.
        let nodes = match conn.nodes().await {
            Ok(nodes) => nodes,
            Err(e) => return (0, Err(e)),
        };
        let mut removed = 0;
        for node in &nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&glob)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let (next, mut keys): (u64, Vec<Vec<u8>>) = match conn.query_node(node, &scan).await
                {
                    Ok(page) => page,
                    Err(e) => return (removed, Err(e)),
                };
                if let Some(pattern) = pattern {
                    let prefix = space.entries.as_bytes();
                    keys.retain(|k| {
                        k.strip_prefix(prefix)
                            .and_then(|rest| std::str::from_utf8(rest).ok())
                            .is_some_and(|rest| pattern.matches(rest))
                    });
                }
                if !keys.is_empty() {
                    let mut pipe = redis::pipe();
                    for key in &keys {
                        pipe.cmd("UNLINK").arg(key);
                    }
                    match conn.pipeline::<Vec<u64>>(&pipe).await {
                        Ok(counts) => removed += counts.iter().sum::<u64>(),
                        Err(e) => return (removed, Err(e)),
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        (removed, self.send_publishing(redis::pipe(), op).await)
    }

    async fn figures(&self) -> ServerFigures {
        self.conn.server_figures().await
    }
}
