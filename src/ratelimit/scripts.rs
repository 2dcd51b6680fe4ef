//! The Redis tier of the limiter: one Lua script per algorithm, one key per call, timed by the
//! server's `TIME` so application clocks never matter.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::decider::{Control, Controlled, Decider};
use super::pipelined::{Counters, Expiries, Mode, ServerClock, Settled};
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
    /// Every quota, decided together; the first is the limiter's own.
    quotas: Vec<Quota>,
    algorithm: Algorithm,
    app_clock: AppClock,
    /// Last measured application-minus-Redis clock difference; `i64::MIN` until measured.
    drift_ms: AtomicI64,
    /// The Redis clock as read without a script, and the counters given an expiry, for
    /// [`Algorithm::PipelinedCounter`].
    server_clock: ServerClock,
    expiries: Expiries,
    settled: Settled,
}

impl RedisWindow {
    pub(super) fn new(
        conn: Conn,
        key_prefix: String,
        quotas: Vec<Quota>,
        algorithm: Algorithm,
        app_clock: AppClock,
    ) -> Self {
        RedisWindow {
            conn,
            key_prefix,
            quotas,
            algorithm,
            app_clock,
            drift_ms: AtomicI64::new(i64::MIN),
            server_clock: ServerClock::default(),
            expiries: Expiries::default(),
            settled: Settled::default(),
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
            Control::Reset if self.algorithm == Algorithm::PipelinedCounter => {
                self.run(key, 1, "reset").await
            }
            Control::Reset => {
                let redis_key = format!("{}{key}", self.key_prefix);
                self.conn
                    .query::<()>(redis::cmd("DEL").arg(&redis_key))
                    .await?;
                Ok(Decision::fresh(self.quotas[0], Tier::Redis))
            }
        }
    }
}

impl RedisWindow {
    async fn run(&self, key: &str, n: u32, mode: &str) -> Result<Decision> {
        let decision = if self.algorithm == Algorithm::PipelinedCounter {
            let mode = match mode {
                "check" => Mode::Check,
                "peek" => Mode::Peek,
                "refund" => Mode::Refund,
                _ => Mode::Reset,
            };
            let counters = Counters {
                conn: &self.conn,
                clock: &self.server_clock,
                expiries: &self.expiries,
                settled: &self.settled,
                app_now: &*self.app_clock,
                prefix: &self.key_prefix,
                quotas: &self.quotas,
            };
            counters.decide(key, n, mode).await?
        } else {
            let redis_key = format!("{}{key}", self.key_prefix);
            decide(
                &self.conn,
                self.algorithm,
                &redis_key,
                &self.quotas,
                n,
                mode,
            )
            .await?
        };
        if let Some(ms) = drift_ms((self.app_clock)(), &decision) {
            self.drift_ms.store(ms, Ordering::Relaxed);
        }
        Ok(decision)
    }
}

/// Exact sliding-window log, O(1) per request whatever its weight, for one or several quotas
/// at once. A sorted set of the admitted requests: the score is the server time of admission
/// (µs), the member `{cumulative units, 16 digits}:{units}`. The cumulative count makes every
/// count a subtraction (units in a window = cumulative through the newest entry minus
/// cumulative through the newest entry older than the window), so a request of `n` units adds
/// one member, not `n`; one set serves every quota's window; and `retry_after` is a binary
/// search over ranks. A refused request records nothing, so a key holds at most as many
/// members as the longest window's limit.
///
/// Time per key never runs backwards: `now` is at least the newest entry's time, so a server
/// clock stepped back (a failover to a skewed replica) delays expiry (stricter) instead of
/// reordering the log. Members older than the longest window go in batches of at most 1,000
/// per call; the ones left are already outside every count. A member that is not in this
/// format (another writer, an older tierkit) empties the key: a fresh window, never a crash.
///
/// ARGV: n, mode (`check`; `peek`: decide without recording; `refund`: give back up to n
/// units), the number of quotas k, then k pairs of window (µs) and limit. Returns {allowed,
/// remaining, reset µs, retry µs, server seconds, server µs, the index of the quota that
/// binds (1-based)}.
pub(super) const LOG_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local mode = ARGV[2]
local k = tonumber(ARGV[3])
local windows, limits, longest = {}, {}, 0
for i = 1, k do
  windows[i] = tonumber(ARGV[2 + 2 * i])
  limits[i] = tonumber(ARGV[3 + 2 * i])
  if windows[i] > longest then longest = windows[i] end
end
local key = KEYS[1]
local function parse(m)
  if not m then return nil end
  local c, u = string.match(m, '^(%d+):(%d+)$')
  return tonumber(c), tonumber(u)
end
-- The cumulative count through the newest entry, and through the newest entry before each
-- window (or before the oldest entry); nil when a member is foreign.
local function measure()
  local bases = {}
  local newest = redis.call('ZRANGE', key, -1, -1)
  if not newest[1] then
    for i = 1, k do bases[i] = 0 end
    return 0, bases
  end
  local top = parse(newest[1])
  local oc, ou = parse(redis.call('ZRANGE', key, 0, 0)[1])
  if not top or not oc or not ou then return nil end
  for i = 1, k do
    local gone = redis.call('ZREVRANGEBYSCORE', key, now - windows[i], '-inf', 'LIMIT', 0, 1)
    if gone[1] then bases[i] = parse(gone[1]) else bases[i] = oc - ou end
    if not bases[i] or bases[i] > top then return nil end
  end
  return top, bases
end
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
if last[2] and tonumber(last[2]) > now then now = tonumber(last[2]) end
local expired = redis.call('ZCOUNT', key, '-inf', now - longest)
if expired > 0 then redis.call('ZREMRANGEBYRANK', key, 0, math.min(expired, 1000) - 1) end
local top, bases = measure()
if not top then
  redis.call('DEL', key)
  top, bases = measure()
end
local allowed = 0
if mode == 'refund' then
  -- Gives back up to n units, newest first, within the longest window: the newest entry
  -- shrinks or goes, so the cumulative counts stay a prefix sum. Bounded like the expiry.
  local left, steps = n, 0
  while left > 0 and steps < 1000 do
    local e = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    local c, u = parse(e[1])
    if not c or tonumber(e[2]) <= now - longest then break end
    redis.call('ZREM', key, e[1])
    if u > left then
      redis.call('ZADD', key, e[2], string.format('%016d:%d', c - left, u - left))
      left = 0
    else
      left = left - u
    end
    steps = steps + 1
  end
  top, bases = measure()
  allowed = 1
else
  local fits = true
  for i = 1, k do
    if top - bases[i] + n > limits[i] then fits = false end
  end
  if fits then
    allowed = 1
    if mode ~= 'peek' then
      top = top + n
      redis.call('ZADD', key, now, string.format('%016d:%d', top, n))
      redis.call('PEXPIRE', key, math.ceil(longest / 1000))
    end
  end
end
-- The quota that binds: the one with the fewest units left.
local idx, remaining = 1, nil
for i = 1, k do
  local left = limits[i] - (top - bases[i])
  if remaining == nil or left < remaining then idx, remaining = i, left end
end
local reset = 0
local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
if newest[2] then reset = tonumber(newest[2]) + longest - now end
local retry = 0
if allowed == 0 then
  -- For each quota the request does not fit: the oldest entry whose expiry frees enough
  -- (cumulative through it >= top + n - limit); the latest of them binds.
  for i = 1, k do
    if top - bases[i] + n > limits[i] then
      local target = top + n - limits[i]
      local lo, hi = 0, redis.call('ZCARD', key) - 1
      while lo < hi do
        local mid = math.floor((lo + hi) / 2)
        local c = parse(redis.call('ZRANGE', key, mid, mid)[1]) or 0
        if c >= target then hi = mid else lo = mid + 1 end
      end
      local e = redis.call('ZRANGE', key, lo, lo, 'WITHSCORES')
      local wait = 0
      if e[2] then wait = tonumber(e[2]) + windows[i] - now end
      if wait > retry then
        retry = wait
        idx, remaining = i, limits[i] - (top - bases[i])
      end
    end
  end
end
return {allowed, remaining, reset, retry, tonumber(t[1]), tonumber(t[2]), idx}
";
static LOG: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(LOG_LUA));

/// Sliding-window counter, for one or several quotas at once: per quota, the current and
/// previous fixed windows (aligned to multiples of the window on the server clock), in one
/// hash (fields `start`, `cur`, `prev` for the first quota, `s2`, `c2`, `p2` for the second,
/// ...); the estimate weighs the previous window by the share of it still inside the sliding
/// window. O(1) memory per key and quota.
///
/// ARGV and reply as `LOG`.
pub(super) const COUNTER_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local mode = ARGV[2]
local k = tonumber(ARGV[3])
local function field(name, i)
  if i == 1 then return name end
  return string.sub(name, 1, 1) .. i
end
local fields = {}
for i = 1, k do
  fields[#fields + 1] = field('start', i)
  fields[#fields + 1] = field('cur', i)
  fields[#fields + 1] = field('prev', i)
end
local h = redis.call('HMGET', KEYS[1], unpack(fields))
local q = {}
local fits = true
local longest = 0
for i = 1, k do
  local window = tonumber(ARGV[2 + 2 * i])
  local limit = tonumber(ARGV[3 + 2 * i])
  if window > longest then longest = window end
  local start = now - (now % window)
  local s = tonumber(h[3 * i - 2])
  local cur = tonumber(h[3 * i - 1]) or 0
  local prev = tonumber(h[3 * i]) or 0
  if s ~= start then
    if s == start - window then prev = cur else prev = 0 end
    cur = 0
  end
  local elapsed = now - start
  local weight = (window - elapsed) / window
  local estimate = prev * weight + cur
  if estimate + n > limit then fits = false end
  q[i] = {window = window, limit = limit, start = start, rolled = s ~= start, cur = cur,
          prev = prev, elapsed = elapsed, weight = weight, estimate = estimate}
end
local allowed = 0
if mode == 'refund' then
  for i = 1, k do
    local back = math.min(q[i].cur, n)
    q[i].cur = q[i].cur - back
    q[i].estimate = q[i].estimate - back
  end
  allowed = 1
elseif fits then
  allowed = 1
  if mode ~= 'peek' then
    for i = 1, k do
      q[i].cur = q[i].cur + n
      q[i].estimate = q[i].estimate + n
    end
  end
end
-- Written only when something changed, and the TTL set then (two of the longest windows
-- cover every quota's current and previous window). A peek writes nothing.
if mode ~= 'peek' then
  local writes = {}
  for i = 1, k do
    if q[i].rolled or allowed == 1 then
      writes[#writes + 1] = field('start', i)
      writes[#writes + 1] = q[i].start
      writes[#writes + 1] = field('cur', i)
      writes[#writes + 1] = q[i].cur
      writes[#writes + 1] = field('prev', i)
      writes[#writes + 1] = q[i].prev
    end
  end
  if #writes > 0 then
    redis.call('HSET', KEYS[1], unpack(writes))
    redis.call('PEXPIRE', KEYS[1], math.ceil(2 * longest / 1000))
  end
end
local idx, remaining, reset, retry = 1, nil, 0, 0
for i = 1, k do
  local x = q[i]
  local left = math.max(0, math.floor(x.limit - x.estimate))
  if remaining == nil or left < remaining then idx, remaining = i, left end
  local r = x.window - x.elapsed
  if x.cur > 0 then r = r + x.window end
  if r > reset then reset = r end
end
if allowed == 0 then
  for i = 1, k do
    local x = q[i]
    if x.estimate + n > x.limit then
      local need = x.estimate + n - x.limit
      local wait
      if x.prev > 0 and need <= x.prev * x.weight and x.cur + n <= x.limit then
        -- The previous window's weight decays enough within this window.
        wait = math.ceil(need * x.window / x.prev)
      elseif x.cur > 0 and x.cur + n > x.limit then
        -- Only in the next window, once this window's count (then the previous one) has
        -- decayed enough: cur * (1 - t / window) + n <= limit.
        wait = x.window - x.elapsed + math.ceil((x.cur + n - x.limit) * x.window / x.cur)
      else
        wait = x.window - x.elapsed
      end
      if wait > retry then
        retry = wait
        idx, remaining = i, math.max(0, math.floor(x.limit - x.estimate))
      end
    end
  end
end
return {allowed, remaining, reset, math.max(retry, 1), tonumber(t[1]), tonumber(t[2]), idx}
";
static COUNTER: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(COUNTER_LUA));

/// Decides in Redis, all of `quotas` at once.
async fn decide(
    conn: &Conn,
    algorithm: Algorithm,
    key: &str,
    quotas: &[Quota],
    n: u32,
    mode: &str,
) -> Result<Decision> {
    let script = match algorithm {
        Algorithm::SlidingLog => &*LOG,
        Algorithm::SlidingCounter => &*COUNTER,
        Algorithm::PipelinedCounter => return Err(Error::Internal("a script for the pipeline")),
    };
    let mut inv = script.key(key);
    inv.arg(n).arg(mode).arg(quotas.len());
    for quota in quotas {
        let window_us = u64::try_from(quota.window().as_micros()).unwrap_or(u64::MAX);
        inv.arg(window_us).arg(quota.limit());
    }
    let reply: (i64, i64, i64, i64, u64, u64, usize) = conn.invoke(&inv).await?;
    let (allowed, remaining, reset_us, retry_us, secs, micros, binds) = reply;
    // The quota that binds, as the script names it (1-based); the first if out of range.
    let quota = binds
        .checked_sub(1)
        .and_then(|i| quotas.get(i))
        .or(quotas.first())
        .copied()
        .ok_or(Error::Internal("a limiter without a quota"))?;
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
