//! The Redis tier of the limiter: one Lua script per algorithm, one key per call, timed by the
//! server's `TIME` so application clocks never matter.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::decider::{Control, Controlled, Decider};
use super::{Algorithm, Decision, Quota, Tier};
use crate::conn::Conn;
use crate::error::{Error, Result};

/// The application clock, read only to measure drift against the Redis clock.
pub(super) type AppClock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The sliding window in Redis, for one limiter's keys.
pub(super) struct RedisWindow {
    conn: Conn,
    /// `{prefix}:rl:{limiter}:{algorithm}:`, to which a key is appended.
    key_prefix: String,
    quota: Quota,
    algorithm: Algorithm,
    app_clock: AppClock,
    /// Last measured application-minus-Redis clock difference; `i64::MIN` until measured.
    drift_ms: AtomicI64,
}

impl RedisWindow {
    pub(super) fn new(
        conn: Conn,
        key_prefix: String,
        quota: Quota,
        algorithm: Algorithm,
        app_clock: AppClock,
    ) -> Self {
        RedisWindow {
            conn,
            key_prefix,
            quota,
            algorithm,
            app_clock,
            drift_ms: AtomicI64::new(i64::MIN),
        }
    }

    /// How far the application clock was ahead of the Redis clock at the last decision Redis
    /// made, in milliseconds; `None` before one.
    pub(super) fn drift_ms(&self) -> Option<i64> {
        let v = self.drift_ms.load(Ordering::Relaxed);
        (v != i64::MIN).then_some(v)
    }
}

impl Decider for RedisWindow {
    type Error = Error;

    async fn decide(&self, key: &str, n: NonZeroU32) -> Result<Decision> {
        self.run(key, n.get(), "check").await
    }
}

impl Controlled for RedisWindow {
    async fn control(&self, key: &str, op: Control) -> Result<Decision> {
        match op {
            Control::Peek => self.run(key, 1, "peek").await,
            Control::Refund(n) => self.run(key, n.get(), "refund").await,
            Control::Reset => {
                let redis_key = format!("{}{key}", self.key_prefix);
                self.conn
                    .query::<()>(redis::cmd("DEL").arg(&redis_key))
                    .await?;
                Ok(Decision::fresh(self.quota, Tier::Redis))
            }
        }
    }
}

impl RedisWindow {
    async fn run(&self, key: &str, n: u32, mode: &str) -> Result<Decision> {
        let redis_key = format!("{}{key}", self.key_prefix);
        let decision = decide(&self.conn, self.algorithm, &redis_key, self.quota, n, mode).await?;
        if let Some(ms) = drift_ms((self.app_clock)(), &decision) {
            self.drift_ms.store(ms, Ordering::Relaxed);
        }
        Ok(decision)
    }
}

/// Exact sliding-window log, O(1) per request whatever its weight. A sorted set of the admitted
/// requests: the score is the server time of admission (µs), the member
/// `{cumulative units, 16 digits}:{units}`. The cumulative count makes every count a
/// subtraction (units in the window = cumulative through the newest entry minus cumulative
/// through the newest expired one), so a request of `n` units adds one member, not `n`, and
/// `retry_after` is a binary search over ranks. A refused request records nothing, so a key
/// holds at most `limit` members however hard a client pushes.
///
/// Time per key never runs backwards: `now` is at least the newest entry's time, so a server
/// clock stepped back (a failover to a skewed replica) delays expiry (stricter) instead of
/// reordering the log. Expired members go in batches of at most 1,000 per call; the ones left
/// are already outside the count. A member that is not in this format (another writer, an
/// older tierkit) empties the key: a fresh window, never a crash.
///
/// ARGV: window (µs), limit, n, mode (`check`; `peek`: decide without recording; `refund`:
/// give back up to n units). Returns {allowed, remaining, reset µs, retry µs, server seconds,
/// server µs}.
pub(super) const LOG_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local key = KEYS[1]
local function parse(m)
  if not m then return nil end
  local c, u = string.match(m, '^(%d+):(%d+)$')
  return tonumber(c), tonumber(u)
end
local top, base = 0, 0
local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
if newest[1] then
  top = parse(newest[1])
  local last = tonumber(newest[2])
  if last and last > now then now = last end
  local cutoff = now - window
  local gone = redis.call('ZREVRANGEBYSCORE', key, cutoff, '-inf', 'LIMIT', 0, 1)
  if gone[1] then
    base = parse(gone[1])
    local expired = redis.call('ZCOUNT', key, '-inf', cutoff)
    redis.call('ZREMRANGEBYRANK', key, 0, math.min(expired, 1000) - 1)
  else
    local c, u = parse(redis.call('ZRANGE', key, 0, 0)[1])
    if c and u then base = c - u else base = nil end
  end
  if not top or not base or base > top then
    redis.call('DEL', key)
    top, base = 0, 0
  end
end
local count = top - base
local allowed = 0
local mode = ARGV[4]
if mode == 'refund' then
  -- Gives back up to n units, newest first, within the window: the newest entry shrinks or
  -- goes, so the cumulative counts stay a prefix sum. Bounded like the expiry.
  local left, steps = n, 0
  while left > 0 and steps < 1000 do
    local e = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    local c, u = parse(e[1])
    if not c or tonumber(e[2]) <= now - window then break end
    redis.call('ZREM', key, e[1])
    if u > left then
      redis.call('ZADD', key, e[2], string.format('%016d:%d', c - left, u - left))
      left = 0
    else
      left = left - u
    end
    steps = steps + 1
  end
  count = count - (n - left)
  allowed = 1
elseif count + n <= limit then
  allowed = 1
  if mode ~= 'peek' then
    top = top + n
    count = count + n
    redis.call('ZADD', key, now, string.format('%016d:%d', top, n))
    redis.call('PEXPIRE', key, math.ceil(window / 1000))
  end
end
local reset = 0
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
if last[2] then reset = tonumber(last[2]) + window - now end
local retry = 0
if allowed == 0 then
  -- The oldest entry whose expiry frees enough: cumulative through it >= top + n - limit.
  local target = top + n - limit
  local lo, hi = 0, redis.call('ZCARD', key) - 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local c = parse(redis.call('ZRANGE', key, mid, mid)[1]) or 0
    if c >= target then hi = mid else lo = mid + 1 end
  end
  local e = redis.call('ZRANGE', key, lo, lo, 'WITHSCORES')
  if e[2] then retry = tonumber(e[2]) + window - now end
end
return {allowed, limit - count, reset, retry, tonumber(t[1]), tonumber(t[2])}
";
static LOG: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(LOG_LUA));

/// Sliding-window counter: the current and previous fixed windows (aligned to multiples of
/// the window on the server clock) in one hash; the estimate weighs the previous window by
/// the share of it still inside the sliding window. O(1) memory per key.
///
/// ARGV: window (µs), limit, n, mode (as `LOG`). Returns as `LOG`.
pub(super) const COUNTER_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local start = now - (now % window)
local h = redis.call('HMGET', KEYS[1], 'start', 'cur', 'prev')
local s = tonumber(h[1])
local cur = tonumber(h[2]) or 0
local prev = tonumber(h[3]) or 0
if s ~= start then
  if s == start - window then prev = cur else prev = 0 end
  cur = 0
end
local elapsed = now - start
local weight = (window - elapsed) / window
local estimate = prev * weight + cur
local allowed = 0
local mode = ARGV[4]
if mode == 'refund' then
  local back = math.min(cur, n)
  cur = cur - back
  estimate = estimate - back
  allowed = 1
elseif estimate + n <= limit then
  allowed = 1
  if mode ~= 'peek' then
    cur = cur + n
    estimate = estimate + n
  end
end
-- Written only when something changed, and its TTL set only when a window begins (two
-- windows from then covers this one and the next, which still weighs it): a refused
-- request in a running window costs the server two calls, not four. A peek writes nothing.
if mode == 'peek' then
elseif s ~= start then
  redis.call('HSET', KEYS[1], 'start', start, 'cur', cur, 'prev', prev)
  redis.call('PEXPIRE', KEYS[1], math.ceil(2 * window / 1000))
elseif allowed == 1 then
  redis.call('HSET', KEYS[1], 'cur', cur)
end
local remaining = math.max(0, math.floor(limit - estimate))
local reset = window - elapsed
if cur > 0 then reset = reset + window end
local retry = 0
if allowed == 0 then
  local need = estimate + n - limit
  if prev > 0 and need <= prev * weight and cur + n <= limit then
    -- The previous window's weight decays enough within this window.
    retry = math.ceil(need * window / prev)
  elseif cur > 0 and cur + n > limit then
    -- Only in the next window, once this window's count (then the previous one) has
    -- decayed enough: cur * (1 - t / window) + n <= limit.
    retry = window - elapsed + math.ceil((cur + n - limit) * window / cur)
  else
    retry = window - elapsed
  end
end
return {allowed, remaining, reset, math.max(retry, 1), tonumber(t[1]), tonumber(t[2])}
";
static COUNTER: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(COUNTER_LUA));

/// Decides in Redis.
async fn decide(
    conn: &Conn,
    algorithm: Algorithm,
    key: &str,
    quota: Quota,
    n: u32,
    mode: &str,
) -> Result<Decision> {
    let window_us = u64::try_from(quota.window().as_micros()).unwrap_or(u64::MAX);
    let script = match algorithm {
        Algorithm::SlidingLog => &*LOG,
        Algorithm::SlidingCounter => &*COUNTER,
    };
    let mut inv = script.key(key);
    inv.arg(window_us).arg(quota.limit()).arg(n).arg(mode);
    let reply: (i64, i64, i64, i64, u64, u64) = conn.invoke(&inv).await?;
    let (allowed, remaining, reset_us, retry_us, secs, micros) = reply;
    let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    Ok(Decision {
        allowed: allowed == 1,
        limit: quota.limit(),
        remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
        reset_after: us(reset_us),
        retry_after: (allowed != 1).then(|| us(retry_us)),
        tier: Tier::Redis,
        decided_at: UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))
            .and_then(|t| t.checked_add(Duration::from_micros(micros))),
        degraded: false,
    })
}

/// The application clock's lead over the server clock that decided, in milliseconds.
fn drift_ms(app_now: SystemTime, decision: &Decision) -> Option<i64> {
    let server = decision.decided_at?;
    Some(match app_now.duration_since(server) {
        Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
        Err(behind) => -i64::try_from(behind.duration().as_millis()).unwrap_or(i64::MAX),
    })
}
