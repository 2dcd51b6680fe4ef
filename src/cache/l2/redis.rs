//! The Redis L2: entries written by a small script that versions them, epochs as plain
//! strings, pattern work by `SCAN` on every primary, and the backplane `PUBLISH` appended to
//! the pipeline of the change it announces, so a change is one round trip.
//!
//! The hot scripts (a write's, a tag epoch's) go by hash (`EVALSHA`), so Redis neither
//! receives nor hashes their text on every write; a pipeline that meets `NOSCRIPT` goes again
//! with their text ([`RedisL2::scripted`]). The rare ones go as `EVAL`. Each touches one key, so
//! they run unchanged on a cluster.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Entry, EpochOf, EpochUse, Expect, Keyspace, Stored, Written, L2};
use crate::cache::backplane::{self, Op};
use crate::cache::frame;
use crate::cache::pattern::Pattern;
use crate::conn::{time_reply, Conn, ServerFigures};
use crate::error::{Error, Result};

/// Keys per `SCAN` page and per removal pipeline.
const SCAN_COUNT: usize = 1000;

/// Writes a frame (`ARGV[1]`) for `ARGV[2]` ms and stamps its version: the server's `TIME` in
/// microseconds, and always above the version of the frame it replaces, so versions of a key
/// only grow whichever instance writes. With `ARGV[3]` (a fill), writes only where the key
/// still holds what the fill's read saw: `''` absent, `'*'` not a frame, or the 16 version
/// digits of a frame; with `ARGV[4]` too, also where the key is absent (what the read saw
/// expired by itself). Returns the version, or 0 when the fill did not land. Only the head of
/// the old entry is read (`GETRANGE`), so a large value is never copied into Lua. A format-3
/// frame also gets its expiry, from the same `TIME`, and the key expires at exactly that
/// instant (`PEXPIREAT`): `SET PX` alone counts from the script's start on Redis 7.2 and
/// later, which a server paused mid-script puts before this `TIME`. Capped at 9e15 ms (the
/// year 287,000), so it fits its 16 digits and a Lua number holds it exactly.
const WRITE: &str = r"
local head = redis.pcall('GETRANGE', KEYS[1], 0, 19)
local old = nil
if type(head) == 'string' and #head == 20 and string.sub(head, 1, 2) == 'TE' then
  old = string.sub(head, 5, 20)
end
if ARGV[3] then
  local seen
  if type(head) ~= 'string' then seen = '*'
  elseif head == '' then seen = ''
  elseif old then seen = old
  else seen = '*' end
  if seen ~= ARGV[3] and not (seen == '' and ARGV[4]) then return 0 end
end
local t = redis.call('TIME')
local v = tonumber(t[1]) * 1000000 + tonumber(t[2])
local o = tonumber(old or '0') or 0
if o >= v then v = o + 1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if string.byte(ARGV[1], 3) == 3 then
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local expiry = math.min(ms + tonumber(ARGV[2]), 9000000000000000)
  redis.call('SETRANGE', KEYS[1], 4, string.format('%016d%016d', v, expiry))
  redis.call('PEXPIREAT', KEYS[1], expiry)
else
  redis.call('SETRANGE', KEYS[1], 4, string.format('%016d', v))
end
return v";

/// The epoch at `KEYS[1]`; made `ARGV[1]` where absent unless that is `''`; for a tag
/// (`ARGV[2]` ms, not `'0'`), kept alive at least that long, so it outlives every entry framed
/// under it.
const EPOCH: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  if ARGV[1] == '' then return false end
  v = ARGV[1]
  if ARGV[2] == '0' then redis.call('SET', KEYS[1], v)
  else redis.call('SET', KEYS[1], v, 'PX', ARGV[2]) end
elseif ARGV[2] ~= '0' then
  local left = redis.call('PTTL', KEYS[1])
  if left >= 0 and left < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
end
return v";

/// SHA1 digests of the scripts sent by hash.
static WRITE_SHA: LazyLock<String> = LazyLock::new(|| redis::Script::new(WRITE).get_hash().into());
static EPOCH_SHA: LazyLock<String> = LazyLock::new(|| redis::Script::new(EPOCH).get_hash().into());

/// How a pipeline names its scripts.
#[derive(Clone, Copy, Debug)]
enum By {
    Hash,
    Text,
}

/// Appends a call of the script `text` (digest `sha`) to `pipe`, named as `by` says, with
/// room for `args` more arguments of `bytes` in all: a write's frame is then copied once,
/// not through the doublings of a growing buffer (a tenth of a write's time in the process).
fn eval<'p>(
    pipe: &'p mut redis::Pipeline,
    text: &'static str,
    sha: &str,
    by: By,
    (args, bytes): (usize, usize),
) -> &'p mut redis::Pipeline {
    let (command, script) = match by {
        By::Hash => ("EVALSHA", sha),
        By::Text => ("EVAL", text),
    };
    let mut cmd = redis::Cmd::with_capacity(args + 2, bytes + command.len() + script.len());
    cmd.arg(command).arg(script);
    pipe.add_command(cmd)
}

/// Whether Redis answered that it does not know a script.
fn no_script(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// Gives a lease back only to its holder.
static END_LEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end \
         return 0",
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

    /// Sends the pipeline `build` makes, its scripts named by hash. The commands Redis
    /// answered `NOSCRIPT` (a restart, a `SCRIPT FLUSH`, a node new to the slot) did nothing;
    /// only they go again, with the scripts' text, which loads them, and `build` appends its
    /// `PUBLISH` again after them, so no instance acting on it reads before they landed. Each
    /// command's reply, or the first error reply.
    async fn scripted(
        &self,
        build: impl Fn(By, Option<&[usize]>) -> redis::Pipeline,
    ) -> Result<Vec<redis::Value>> {
        type Replies = Vec<redis::RedisResult<redis::Value>>;
        let mut replies = self
            .conn
            .pipeline::<Replies>(&build(By::Hash, None))
            .await?;
        let unknown: Vec<usize> = (0..replies.len())
            .filter(|&i| replies[i].as_ref().is_err_and(no_script))
            .collect();
        if !unknown.is_empty() {
            let again = self
                .conn
                .pipeline::<Replies>(&build(By::Text, Some(&unknown)))
                .await?;
            if again.len() != unknown.len() {
                return Err(Error::Internal("Redis sent fewer replies than commands"));
            }
            for (i, reply) in unknown.into_iter().zip(again) {
                replies[i] = reply;
            }
        }
        replies
            .into_iter()
            .map(|r| r.map_err(Error::Redis))
            .collect()
    }

    /// `GET` and `PTTL` of each key in one round trip.
    async fn read_with_pttl(&self, space: &Keyspace, keys: &[&str]) -> Result<Vec<Stored>> {
        let mut pipe = redis::pipe();
        for key in keys {
            let entry = space.entry(key);
            pipe.cmd("GET").arg(&entry).cmd("PTTL").arg(entry);
        }
        pipe.ignore_errors();
        let sent = Instant::now();
        let replies: Vec<redis::RedisResult<redis::Value>> = self.conn.pipeline(&pipe).await?;
        let mut replies = replies.into_iter();
        let mut out = Vec::with_capacity(keys.len());
        while let (Some(value), Some(pttl)) = (replies.next(), replies.next()) {
            out.push(with_pttl(got(value)?, pttl, sent)?);
        }
        Ok(out)
    }

    /// The time left of entries read without it (`ask`, indices into `keys` and `out`), from
    /// Redis: a `PTTL`, with the head of the entry, so an entry replaced since its `GET` (whose
    /// `PTTL` would be the newer entry's) reads as absent, a miss.
    async fn ask_pttl(
        &self,
        space: &Keyspace,
        keys: &[&str],
        ask: Vec<usize>,
        out: &mut [Stored],
    ) -> Result<()> {
        let mut pipe = redis::pipe();
        for &i in &ask {
            let entry = space.entry(keys[i]);
            let head = frame::HEAD_LEN - 1;
            pipe.cmd("GETRANGE").arg(&entry).arg(0).arg(head);
            pipe.cmd("PTTL").arg(entry);
        }
        pipe.ignore_errors();
        let sent = Instant::now();
        let replies: Vec<redis::RedisResult<redis::Value>> = self.conn.pipeline(&pipe).await?;
        let mut replies = replies.into_iter();
        for i in ask {
            let (Some(head), Some(pttl)) = (replies.next(), replies.next()) else {
                return Err(Error::Internal("Redis sent fewer replies than commands"));
            };
            let stored = std::mem::replace(&mut out[i], Stored::Absent);
            let Stored::Value { bytes, .. } = &stored else {
                out[i] = stored;
                continue;
            };
            let head: Option<Vec<u8>> = head.ok().and_then(|h| redis::from_redis_value(h).ok());
            let same = head.is_some_and(|h| {
                frame::version_of(&h).is_some_and(|v| Some(v) == frame::version_of(bytes))
            });
            if same {
                out[i] = with_pttl(stored, pttl, sent)?;
            }
        }
        Ok(())
    }
}

/// One key's `GET` reply as what is stored there, its time left not yet known (`None`).
fn got(value: redis::RedisResult<redis::Value>) -> Result<Stored> {
    match value {
        Ok(redis::Value::Nil) => Ok(Stored::Absent),
        Ok(value) => redis::from_redis_value::<Vec<u8>>(value)
            .map(|bytes| Stored::Value { bytes, until: None })
            .map_err(|e| Error::Redis(e.into())),
        Err(e) if e.code() == Some("WRONGTYPE") => Ok(Stored::Foreign),
        Err(e) => Err(Error::Redis(e)),
    }
}

/// What a `PTTL` reply, to a request sent at `sent` right after the `GET` that read `stored`,
/// says of its time left: counted from `sent`, so never later than Redis's.
fn with_pttl(
    stored: Stored,
    pttl: redis::RedisResult<redis::Value>,
    sent: Instant,
) -> Result<Stored> {
    let Stored::Value { bytes, .. } = stored else {
        return Ok(stored);
    };
    // -1: no expiry; -2: gone since the `GET`, read as absent.
    let pttl: i64 =
        redis::from_redis_value(pttl.map_err(Error::Redis)?).map_err(|e| Error::Redis(e.into()))?;
    let until = match pttl {
        -2 => return Ok(Stored::Absent),
        ms if ms >= 0 => Some(sent + Duration::from_millis(ms.unsigned_abs())),
        _ => None,
    };
    Ok(Stored::Value { bytes, until })
}

/// What a frame's own expiry says of its time left, given `now`: an instant of this process
/// and a reading of the server's clock in ms no earlier than the server's time at that
/// instant. `Err` when only Redis knows: a frame of an earlier format, or no reading.
fn with_expiry(stored: Stored, now: Option<(Instant, u64)>) -> std::result::Result<Stored, Stored> {
    let Stored::Value { bytes, until } = stored else {
        return Ok(stored);
    };
    match (frame::expiry_of(&bytes), now) {
        // At or past the expiry by the reading, which runs a little ahead: no time left, but
        // still what Redis holds, so a fill replacing it names its version.
        (Some(expiry), Some((at, now_ms))) => Ok(Stored::Value {
            bytes,
            until: Some(at + Duration::from_millis(expiry.saturating_sub(now_ms))),
        }),
        // A frame whose time left only Redis knows.
        _ if frame::version_of(&bytes).is_some() => Err(Stored::Value { bytes, until }),
        // Not a frame: a miss that the next fill overwrites, its time left unused.
        _ => Ok(Stored::Value { bytes, until }),
    }
}

/// An epoch as Redis holds it (decimal text); `None` for absent. Anything else (another
/// program's value at the key) reads as absent too: it matches no frame, so it costs misses.
fn epoch(value: redis::RedisResult<redis::Value>) -> Result<Option<u64>> {
    match value {
        Ok(redis::Value::Nil) => Ok(None),
        Ok(value) => Ok(redis::from_redis_value::<String>(value)
            .ok()
            .and_then(|s| s.parse().ok())),
        Err(e) if e.code() == Some("WRONGTYPE") => Ok(None),
        Err(e) => Err(Error::Redis(e)),
    }
}

/// Redis takes TTLs in whole milliseconds, at least one.
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A tag's epoch TTL argument; `0` for the namespace's, which never expires.
fn epoch_ttl(of: EpochOf<'_>, ttl: Duration) -> u64 {
    match of {
        EpochOf::Namespace => 0,
        EpochOf::Tag(_) => millis(ttl),
    }
}

/// A fresh epoch: random, so one made after an eviction never equals one before it. Never 0,
/// which the embedded tier uses.
fn fresh_epoch() -> u64 {
    fastrand::u64(1..)
}

/// Appends `entry`'s write to `pipe`.
fn push_write(pipe: &mut redis::Pipeline, space: &Keyspace, entry: &Entry<'_>, by: By) {
    let key = space.entry(entry.key);
    // Key, frame and TTL digits, and at most two arguments of a few bytes.
    let room = (6, key.len() + entry.frame.len() + 32);
    let cmd = eval(pipe, WRITE, &WRITE_SHA, by, room)
        .arg(1)
        .arg(key)
        .arg(entry.frame)
        .arg(millis(entry.ttl));
    match entry.expect {
        None => {}
        Some(Expect::Absent) => {
            cmd.arg("");
        }
        Some(Expect::Foreign) => {
            cmd.arg("*");
        }
        Some(Expect::Version(v)) => {
            cmd.arg(frame::version_digits(*v));
        }
    }
    if entry.or_absent {
        cmd.arg(1);
    }
}

#[async_trait]
impl L2 for RedisL2 {
    fn stores_values(&self) -> bool {
        true
    }

    /// Each key's bytes and time left in one round trip: a `GET` per key, the time left from
    /// the expiry in each frame and the server's clock as the probe reads it, or from a `TIME`
    /// in the same pipeline when there is no such reading. On a cluster, whose nodes each keep
    /// their own time, and for frames of an earlier format, Redis says it (`PTTL`). Error
    /// replies are taken one by one, so a key of another type (`WRONGTYPE`) is
    /// [`Stored::Foreign`] instead of failing them all.
    async fn read(&self, space: &Keyspace, keys: &[&str]) -> Result<Vec<Stored>> {
        if self.conn.is_cluster() {
            return self.read_with_pttl(space, keys).await;
        }
        let sent = Instant::now();
        // The probe's reading for the send instant: the entries' deadlines count from there.
        let reading = self.conn.server_ms_at(sent);
        let timed = reading.is_none();
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("GET").arg(space.entry(key));
        }
        if timed {
            pipe.cmd("TIME");
        }
        pipe.ignore_errors();
        let mut replies: Vec<redis::RedisResult<redis::Value>> = self.conn.pipeline(&pipe).await?;
        let now = if timed {
            // Its own `TIME`, which ran no earlier than `sent`: the deadlines count from
            // there, so their error is this read's round trip. The clock learns from it too.
            let time = replies.pop().and_then(|t| t.ok());
            let us = time.as_ref().and_then(time_reply);
            if let Some(us) = us {
                self.conn.record_server_time(sent, Instant::now(), us);
            }
            us.map(|us| (sent, us.div_ceil(1000)))
        } else {
            reading.map(|ms| (sent, ms))
        };
        if replies.len() != keys.len() {
            return Err(Error::Internal("Redis sent fewer replies than commands"));
        }
        let mut out = Vec::with_capacity(keys.len());
        let mut ask = Vec::new();
        for reply in replies {
            match with_expiry(got(reply)?, now) {
                Ok(stored) => out.push(stored),
                Err(stored) => {
                    ask.push(out.len());
                    out.push(stored);
                }
            }
        }
        if !ask.is_empty() {
            self.ask_pttl(space, keys, ask, &mut out).await?;
        }
        Ok(out)
    }

    /// One command per epoch, each to the node holding it ([`Conn::node_of`]), concurrently.
    async fn epochs(&self, space: &Keyspace, of: &[EpochOf<'_>]) -> Result<Vec<Option<u64>>> {
        let asks = of.iter().map(|of| async move {
            let key = space.epoch(*of);
            let node = self.conn.node_of(&key).await?;
            let value = self
                .conn
                .query_node::<redis::Value>(&node, redis::cmd("GET").arg(&key))
                .await;
            match value {
                Ok(value) => epoch(Ok(value)),
                Err(Error::Redis(e)) => epoch(Err(e)),
                Err(e) => Err(e),
            }
        });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .collect()
    }

    async fn make_epochs(&self, space: &Keyspace, wanted: &[EpochUse<'_>]) -> Result<Vec<u64>> {
        let makes = wanted.iter().map(|want| async move {
            let key = space.epoch(want.of);
            let node = self.conn.node_of(&key).await?;
            let mut eval = redis::cmd("EVAL");
            eval.arg(EPOCH)
                .arg(1)
                .arg(&key)
                .arg(fresh_epoch().to_string())
                .arg(epoch_ttl(want.of, want.ttl));
            let made: String = self.conn.query_node(&node, &eval).await?;
            made.parse()
                .map_err(|_| Error::Internal("an epoch key holds something else"))
        });
        futures_util::future::join_all(makes)
            .await
            .into_iter()
            .collect()
    }

    async fn write(
        &self,
        space: &Keyspace,
        entries: &[Entry<'_>],
        alive: &[EpochUse<'_>],
        op: Option<&Op>,
    ) -> Result<Written> {
        // Tags' epochs only: the namespace's lives on a shard of its own in a cluster, and a
        // write must not wait on a shard none of its keys is on (a hung one would stall every
        // write of the namespace). An evicted namespace epoch is found by the epoch watch.
        let tags: Vec<&EpochUse<'_>> = alive
            .iter()
            .filter(|u| matches!(u.of, EpochOf::Tag(_)))
            .collect();
        // Command `i` of the pipeline: the entries' writes, then the tags' epochs.
        let push = |pipe: &mut redis::Pipeline, i: usize, by: By| match entries.get(i) {
            Some(entry) => push_write(pipe, space, entry, by),
            None => {
                let used = tags[i - entries.len()];
                // Absent (dropped, evicted): made anew, never the epoch the entries carry, so
                // what was framed under the old one stays retired; the writer learns the new
                // one.
                eval(pipe, EPOCH, &EPOCH_SHA, by, (4, 128))
                    .arg(1)
                    .arg(space.epoch(used.of))
                    .arg(fresh_epoch().to_string())
                    .arg(epoch_ttl(used.of, used.ttl));
            }
        };
        let build = |by: By, only: Option<&[usize]>| {
            let mut pipe = redis::pipe();
            match only {
                Some(only) => only.iter().for_each(|&i| push(&mut pipe, i, by)),
                None => (0..entries.len() + tags.len()).for_each(|i| push(&mut pipe, i, by)),
            }
            if let Some(op) = op {
                pipe.cmd("PUBLISH")
                    .arg(&self.channel)
                    .arg(backplane::message(self.origin, op))
                    .ignore();
            }
            pipe.ignore_errors();
            pipe
        };
        let replies = self.scripted(build).await?;
        let (versions, epochs) = replies.split_at(entries.len().min(replies.len()));
        let landed = versions
            .iter()
            .map(|v| matches!(v, redis::Value::Int(n) if *n > 0))
            .collect();
        let epochs = epochs
            .iter()
            .map(|v| epoch(Ok(v.clone())).map(Option::unwrap_or_default))
            .collect::<Result<_>>()?;
        Ok(Written { landed, epochs })
    }

    /// Each epoch is deleted on the node holding it ([`Conn::node_of`]), then `op` is
    /// published: only once every epoch is gone, so no instance acting on the message can
    /// still read under one of them.
    async fn drop_epochs(
        &self,
        space: &Keyspace,
        namespace: bool,
        tags: &[&str],
        op: Option<&Op>,
    ) -> Result<()> {
        let mut gone: Vec<EpochOf<'_>> = tags.iter().map(|t| EpochOf::Tag(t)).collect();
        if namespace {
            gone.push(EpochOf::Namespace);
        }
        let drops = gone.iter().map(|of| async move {
            let key = space.epoch(*of);
            let node = self.conn.node_of(&key).await?;
            self.conn
                .query_node::<i64>(&node, redis::cmd("UNLINK").arg(&key))
                .await
                .map(|_| node)
        });
        let mut last = None;
        for dropped in futures_util::future::join_all(drops).await {
            last = Some(dropped?);
        }
        let (Some(op), Some(node)) = (op, last) else {
            return Ok(());
        };
        // Through a node that just answered: any node relays a PUBLISH to the whole cluster.
        let mut publish = redis::cmd("PUBLISH");
        publish
            .arg(&self.channel)
            .arg(backplane::message(self.origin, op));
        self.conn.query_node::<i64>(&node, &publish).await.map(drop)
    }

    /// SCANs batch by batch. With a pattern, the glob is a superset (Redis's `?` matches a
    /// byte, ours a character) and only entries of this version that the pattern matches are
    /// tombstoned, so a load that read one before cannot fill it after; without, every key
    /// is unlinked (the namespace's epoch is gone already).
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
        let tombstone = frame::tombstone();
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
                let (next, keys): (u64, Vec<Vec<u8>>) = match conn.query_node(node, &scan).await {
                    Ok(page) => page,
                    Err(e) => return (removed, Err(e)),
                };
                let mut pipe = redis::pipe();
                match pattern {
                    Some(pattern) => {
                        let prefix = space.entries.as_bytes();
                        for key in &keys {
                            let Some(key) = key
                                .strip_prefix(prefix)
                                .and_then(|rest| std::str::from_utf8(rest).ok())
                                .filter(|rest| pattern.matches(rest))
                            else {
                                continue;
                            };
                            let entry = Entry {
                                key,
                                frame: &tombstone,
                                ttl: space.tombstone_ttl,
                                expect: None,
                                or_absent: false,
                            };
                            push_write(&mut pipe, space, &entry, By::Text);
                        }
                    }
                    None => {
                        for key in &keys {
                            pipe.cmd("UNLINK").arg(key);
                        }
                    }
                }
                if !keys.is_empty() {
                    match conn.pipeline::<Vec<u64>>(&pipe).await {
                        Ok(counts) => removed += counts.iter().filter(|&&n| n > 0).count() as u64,
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

    async fn take_lease(
        &self,
        space: &Keyspace,
        key: &str,
        token: u64,
        lease: Duration,
    ) -> Result<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(space.lease(key))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(millis(lease));
        Ok(self.conn.query::<Option<String>>(&cmd).await?.is_some())
    }

    async fn end_lease(&self, space: &Keyspace, key: &str, token: u64) -> Result<()> {
        self.conn
            .invoke::<i64>(END_LEASE.key(space.lease(key)).arg(token))
            .await
            .map(drop)
    }

    async fn figures(&self) -> ServerFigures {
        self.conn.server_figures().await
    }

    async fn runs(&self) -> Result<Vec<(String, String)>> {
        self.conn.server_runs().await
    }

    async fn publish(&self, op: &Op) -> Result<()> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&self.channel)
            .arg(backplane::message(self.origin, op));
        // The reply is the number of subscribers reached; none is no failure.
        self.conn.query::<i64>(&cmd).await.map(drop)
    }
}
