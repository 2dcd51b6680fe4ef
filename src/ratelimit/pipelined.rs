//! [`Algorithm::PipelinedCounter`](super::Algorithm::PipelinedCounter): the sliding-window
//! counter with no Lua script. Each quota keeps one plain counter per fixed window; a decision
//! is one pipeline (`INCRBY` and `PEXPIRE` of the current window's counter, `GET` of the
//! previous one), and a refusal takes its units back with a `DECRBY`.
//!
//! The window index needs the server's time, which a script reads with `TIME`: here the
//! limiter keeps the offset of the Redis clock from the application clock, measured by a `TIME`
//! riding in a decision's pipeline every [`RESYNC`] (and alone before the first decision), and
//! reads `application clock + offset`. The offset is taken at the midpoint of the round trip
//! that measured it, so its error is at most half that round trip plus what the application
//! clock drifts until the next measurement.
//!
//! Both counters of a key share its hash tag, so on a cluster they live on one slot and the
//! pipeline is one round trip to one node.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Decision, Quota, Tier};
use crate::conn::Conn;
use crate::error::{Error, Result};

/// How often the offset of the Redis clock is measured again.
pub(super) const RESYNC: Duration = Duration::from_secs(10);

/// Which counters this process has set an expiry on, by a hash of the key and its window: a
/// direct-mapped table, so a decision on a counter it set one on sends no `PEXPIRE`. An entry
/// is written only once Redis confirmed the expiry; a collision only costs one more
/// `PEXPIRE`.
pub(super) struct Expiries(Box<[AtomicU64]>);

/// Entries of [`Expiries`]: 128 KiB per limiter.
const EXPIRIES: usize = 16_384;

impl Default for Expiries {
    fn default() -> Self {
        Expiries((0..EXPIRIES).map(|_| AtomicU64::new(0)).collect())
    }
}

impl Expiries {
    fn slot(&self, key: &str) -> (&AtomicU64, u64) {
        let hash = std::hash::BuildHasher::hash_one(&rustc_hash::FxBuildHasher, key) | 1;
        let i = usize::try_from(hash >> 32).unwrap_or(0) % self.0.len();
        (&self.0[i], hash)
    }

    fn is_set(&self, key: &str) -> bool {
        let (slot, hash) = self.slot(key);
        slot.load(Ordering::Relaxed) == hash
    }

    fn set(&self, key: &str) {
        let (slot, hash) = self.slot(key);
        slot.store(hash, Ordering::Relaxed);
    }
}

/// Counts of windows that are over, as read once they were: a window past its end only
/// shrinks (refused requests' units taken back), so a decision on a hot key reads its previous
/// window from here and sends a lone `INCRBY`. A direct-mapped table under a keyed hash
/// (SipHash with a per-process random key, full 64 bits compared), so no key can be aimed at
/// another's slot; a slot taken by another key only costs a `GET`. A count kept here that
/// Redis has since lowered makes decisions stricter, never looser.
pub(super) struct Settled {
    slots: Box<[std::sync::Mutex<(u64, i64)>]>,
    hasher: std::collections::hash_map::RandomState,
}

/// Entries of [`Settled`]: 192 KiB per limiter.
const SETTLED: usize = 8_192;

impl Default for Settled {
    fn default() -> Self {
        Settled {
            slots: (0..SETTLED)
                .map(|_| std::sync::Mutex::new((0, 0)))
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl Settled {
    fn slot(&self, key: &str) -> (std::sync::MutexGuard<'_, (u64, i64)>, u64) {
        let hash = std::hash::BuildHasher::hash_one(&self.hasher, key) | 1;
        let i = usize::try_from(hash >> 40).unwrap_or(0) % self.slots.len();
        // A slot is two plain numbers, valid whatever a panicking holder left.
        let slot = self.slots[i].lock().unwrap_or_else(|p| p.into_inner());
        (slot, hash)
    }

    fn get(&self, key: &str) -> Option<i64> {
        let (slot, hash) = self.slot(key);
        (slot.0 == hash).then_some(slot.1)
    }

    fn put(&self, key: &str, count: i64) {
        let (mut slot, hash) = self.slot(key);
        *slot = (hash, count);
    }

    fn forget(&self, key: &str) {
        let (mut slot, hash) = self.slot(key);
        if slot.0 == hash {
            *slot = (0, 0);
        }
    }
}

/// How far into a window its previous one is taken as settled: every instance has moved on by
/// then (their readings of the Redis clock differ by far less), so no increment of it is still
/// coming.
fn settled_after(window: i64) -> i64 {
    (window / 4).min(1_000_000)
}

/// The Redis clock as this process reads it: its own clock plus a measured offset.
pub(super) struct ServerClock {
    /// Redis minus application clock, in µs; `i64::MIN` until measured.
    offset_us: AtomicI64,
    /// When it was last measured, in ms since `origin` (+1; 0 is never).
    measured_ms: AtomicU64,
    origin: Instant,
}

impl Default for ServerClock {
    fn default() -> Self {
        ServerClock {
            offset_us: AtomicI64::new(i64::MIN),
            measured_ms: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }
}

impl ServerClock {
    fn offset(&self) -> Option<i64> {
        let v = self.offset_us.load(Ordering::Relaxed);
        (v != i64::MIN).then_some(v)
    }

    /// Whether a measurement is due, claiming it if so: one decision at a time carries it.
    fn claim_resync(&self) -> bool {
        let now = u64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.measured_ms.load(Ordering::Relaxed);
        let every = u64::try_from(RESYNC.as_millis()).unwrap_or(u64::MAX);
        (last == 0 || now.saturating_sub(last) >= every)
            && self
                .measured_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Folds in a `TIME` reply (`server_us`) read between `sent` and `received`.
    fn record(&self, sent: SystemTime, received: SystemTime, server_us: i64) {
        let (Some(a), Some(b)) = (micros(sent), micros(received)) else {
            return;
        };
        let midpoint = a + (b - a).max(0) / 2;
        self.offset_us
            .store(server_us.saturating_sub(midpoint), Ordering::Relaxed);
    }
}

/// µs since the epoch; `None` before it.
fn micros(t: SystemTime) -> Option<i64> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_micros()).ok())
}

/// What a call does to the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Check,
    Peek,
    Refund,
    Reset,
}

/// One quota's counters at the time of a call.
struct Window {
    quota: Quota,
    /// Window length and how far into it, in µs.
    length: i64,
    elapsed: i64,
    cur_key: String,
    prev_key: String,
    /// The current window's count, this call's units included when it added them.
    cur: i64,
    prev: i64,
    /// Whether `prev` is read from Redis in this call (else it was settled).
    prev_read: bool,
}

impl Window {
    fn weight(&self) -> f64 {
        (self.length - self.elapsed) as f64 / self.length as f64
    }

    fn estimate(&self) -> f64 {
        self.prev as f64 * self.weight() + self.cur as f64
    }
}

/// The counter keys of one quota of `key` for window `index`. The key is wrapped in a hash tag,
/// so the current and previous windows of every quota share a slot (their names differ only
/// after it); the window length is in the name, so a changed quota never reads another's
/// counts.
fn counter_key(key: &str, quota: &Quota, index: i64) -> String {
    format!("{{{key}}}:{}:{index}", quota.window().as_millis())
}

/// Adds the expiry of a current window's counter to `pipe`. Its count is read by the next
/// window as its previous one, so it must outlive both: two windows past its first count.
fn expire_counter(pipe: &mut redis::Pipeline, key: &str, quota: &Quota) {
    let ttl_ms = quota.window().as_millis().saturating_mul(2).max(1);
    pipe.cmd("PEXPIRE")
        .arg(key)
        .arg(u64::try_from(ttl_ms).unwrap_or(u64::MAX))
        .ignore();
}

/// One limiter's counters in Redis.
pub(super) struct Counters<'a> {
    pub(super) conn: &'a Conn,
    pub(super) clock: &'a ServerClock,
    pub(super) expiries: &'a Expiries,
    pub(super) settled: &'a Settled,
    pub(super) app_now: &'a (dyn Fn() -> SystemTime + Send + Sync),
    /// `{prefix}:rl:{limiter}:pc:`, to which a key is appended.
    pub(super) prefix: &'a str,
    pub(super) quotas: &'a [Quota],
}

impl Counters<'_> {
    /// Decides `n` units of `key` under every quota, as `mode` says.
    pub(super) async fn decide(&self, key: &str, n: u32, mode: Mode) -> Result<Decision> {
        let Counters {
            conn,
            clock,
            expiries,
            settled,
            app_now,
            prefix,
            quotas,
        } = *self;
        let key = &format!("{prefix}{key}");
        let offset = match clock.offset() {
            Some(offset) => offset,
            None => {
                let sent = app_now();
                let (secs, us): (i64, i64) = conn.query(&redis::cmd("TIME")).await?;
                clock.record(sent, app_now(), secs * 1_000_000 + us);
                clock
                    .offset()
                    .ok_or(Error::Internal("a measured clock offset"))?
            }
        };
        let sent = app_now();
        let now = micros(sent)
            .ok_or(Error::Internal("an application clock after 1970"))?
            .saturating_add(offset);
        let units = i64::from(n);
        let mut windows = Vec::with_capacity(quotas.len());
        let mut expire = Vec::new();
        let mut pipe = redis::pipe();
        for quota in quotas {
            let length = i64::try_from(quota.window().as_micros()).unwrap_or(i64::MAX);
            let index = now.div_euclid(length);
            let cur_key = counter_key(key, quota, index);
            let prev_key = counter_key(key, quota, index - 1);
            match mode {
                Mode::Check => {
                    pipe.cmd("INCRBY").arg(&cur_key).arg(units);
                    if !expiries.is_set(&cur_key) {
                        expire_counter(&mut pipe, &cur_key, quota);
                        expire.push(cur_key.clone());
                    }
                }
                Mode::Peek => {
                    pipe.cmd("GET").arg(&cur_key);
                }
                Mode::Refund => {
                    pipe.cmd("DECRBY").arg(&cur_key).arg(units);
                }
                Mode::Reset => {
                    pipe.cmd("DEL").arg(&cur_key).arg(&prev_key).ignore();
                }
            }
            let known = match mode {
                Mode::Check => settled.get(&prev_key),
                Mode::Reset => {
                    settled.forget(&prev_key);
                    None
                }
                Mode::Peek | Mode::Refund => None,
            };
            if known.is_none() && mode != Mode::Reset {
                pipe.cmd("GET").arg(&prev_key);
            }
            windows.push(Window {
                quota: *quota,
                length,
                elapsed: now - index * length,
                cur_key,
                prev_key,
                cur: 0,
                prev: known.unwrap_or(0),
                prev_read: known.is_none(),
            });
        }
        let resync = clock.claim_resync();
        if resync {
            pipe.cmd("TIME");
        }
        let reply: Vec<redis::Value> = conn.pipeline(&pipe).await?;
        let received = app_now();
        for key in &expire {
            expiries.set(key);
        }
        let mut values = reply.into_iter();
        if mode != Mode::Reset {
            for w in &mut windows {
                w.cur = count(values.next())?;
                if w.prev_read {
                    w.prev = count(values.next())?;
                    if mode == Mode::Check && w.elapsed >= settled_after(w.length) {
                        settled.put(&w.prev_key, w.prev);
                    }
                }
            }
        }
        if mode == Mode::Check {
            // A count that starts at this call's units was just made, though this process set
            // an expiry on that name before: a reset, a restart or an eviction took it. It
            // gets one now, or it would never go.
            let mut owed = redis::pipe();
            for (w, quota) in windows.iter().zip(quotas) {
                if w.cur == units && !expire.contains(&w.cur_key) {
                    expire_counter(&mut owed, &w.cur_key, quota);
                }
            }
            if owed.cmd_iter().next().is_some() {
                if let Err(e) = conn.pipeline::<()>(&owed).await {
                    tracing::debug!(error = %e, "tierkit: a counter's expiry was not set");
                }
            }
        }
        if resync {
            let (secs, us): (i64, i64) = redis::from_redis_value(
                values
                    .next()
                    .ok_or(Error::Internal("a TIME reply in the pipeline"))?,
            )
            .map_err(|e| Error::Redis(e.into()))?;
            clock.record(sent, received, secs * 1_000_000 + us);
        }
        if mode == Mode::Reset {
            return Ok(Decision::fresh(quotas[0], Tier::Redis));
        }
        let allowed = match mode {
            Mode::Reset => true,
            // The units are counted already: a request fits if the estimate with them does.
            Mode::Check => windows
                .iter()
                .all(|w| w.estimate() <= f64::from(w.quota.limit())),
            Mode::Peek => windows
                .iter()
                .all(|w| w.estimate() + units as f64 <= f64::from(w.quota.limit())),
            Mode::Refund => {
                // A count taken below zero (the window turned since the units were counted) is
                // put back to zero: a refund never grants more than a fresh window.
                let mut fix = redis::pipe();
                for w in windows.iter_mut().filter(|w| w.cur < 0) {
                    fix.cmd("INCRBY").arg(&w.cur_key).arg(-w.cur).ignore();
                    w.cur = 0;
                }
                if fix.cmd_iter().next().is_some() {
                    let _: () = conn.pipeline(&fix).await?;
                }
                true
            }
        };
        if mode == Mode::Check && !allowed {
            // Takes the units back. Until it lands, others see the count with them: stricter,
            // never looser. Should it fail, the count stays high until its window ends.
            let mut back = redis::pipe();
            for w in &mut windows {
                back.cmd("DECRBY").arg(&w.cur_key).arg(units).ignore();
                w.cur -= units;
            }
            if let Err(e) = conn.pipeline::<()>(&back).await {
                tracing::debug!(error = %e, "tierkit: a refused request's units were not taken back");
            }
        }
        Ok(answer(&windows, allowed, units, now))
    }
}

/// A counter's value: absent is zero.
fn count(value: Option<redis::Value>) -> Result<i64> {
    let value = value.ok_or(Error::Internal("a reply per command in the pipeline"))?;
    let n: Option<i64> = redis::from_redis_value(value).map_err(|e| Error::Redis(e.into()))?;
    Ok(n.unwrap_or(0))
}

/// The decision from the counters, as the script's counter answers it: the quota with the
/// fewest units left binds; when refused, the one whose wait is the longest.
fn answer(windows: &[Window], allowed: bool, units: i64, now: i64) -> Decision {
    let mut binds = 0;
    let mut remaining = i64::MAX;
    let mut reset = 0i64;
    for (i, w) in windows.iter().enumerate() {
        let left = (f64::from(w.quota.limit()) - w.estimate()).floor().max(0.0) as i64;
        if left < remaining {
            (binds, remaining) = (i, left);
        }
        let mut r = w.length - w.elapsed;
        if w.cur > 0 {
            r += w.length;
        }
        reset = reset.max(r);
    }
    let mut retry = 0i64;
    if !allowed {
        for (i, w) in windows.iter().enumerate() {
            let limit = i64::from(w.quota.limit());
            let estimate = w.estimate();
            if estimate + units as f64 <= limit as f64 {
                continue;
            }
            let need = estimate + units as f64 - limit as f64;
            let wait = if w.prev > 0 && need <= w.prev as f64 * w.weight() && w.cur + units <= limit
            {
                // The previous window's weight decays enough within this window.
                (need * w.length as f64 / w.prev as f64).ceil() as i64
            } else if w.cur > 0 && w.cur + units > limit {
                // Only in the next window, once this one's count has decayed enough.
                w.length - w.elapsed
                    + ((w.cur + units - limit) as f64 * w.length as f64 / w.cur as f64).ceil()
                        as i64
            } else {
                w.length - w.elapsed
            };
            if wait > retry {
                retry = wait;
                binds = i;
                remaining = (limit as f64 - estimate).floor().max(0.0) as i64;
            }
        }
    }
    let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    let quota = windows[binds].quota;
    Decision {
        allowed,
        limit: quota.limit(),
        remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
        reset_after: us(reset),
        retry_after: (!allowed).then(|| us(retry.max(1))),
        tier: Tier::Redis,
        decided_at: UNIX_EPOCH.checked_add(us(now)),
        degraded: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_of_a_key_share_a_slot_and_name_their_window() {
        let q = Quota::new(10, Duration::from_secs(60)).unwrap();
        let (a, b) = (
            counter_key("p:rl:api:pc:k}x{", &q, 7),
            counter_key("p:rl:api:pc:k}x{", &q, 6),
        );
        assert_eq!(a, "{p:rl:api:pc:k}x{}:60000:7");
        let tag = |k: &str| {
            let open = k.find('{').unwrap();
            let close = open + k[open..].find('}').unwrap();
            k[open..close].to_owned()
        };
        assert_eq!(tag(&a), tag(&b));
    }

    #[test]
    fn an_expiry_is_known_once_set_and_forgotten_on_a_collision() {
        let e = Expiries::default();
        assert!(!e.is_set("a:1"));
        e.set("a:1");
        assert!(e.is_set("a:1") && !e.is_set("a:2"));
        // One key evicts another that shares its slot.
        let evictor = (0..1_000_000)
            .map(|i| format!("b:{i}"))
            .find(|k| std::ptr::eq(e.slot(k).0, e.slot("a:1").0))
            .expect("a key sharing the slot");
        e.set(&evictor);
        assert!(!e.is_set("a:1"));
    }

    #[test]
    fn a_settled_count_is_kept_per_key_until_forgotten() {
        let s = Settled::default();
        assert_eq!(s.get("k:1"), None);
        s.put("k:1", 7);
        assert_eq!((s.get("k:1"), s.get("k:2")), (Some(7), None));
        s.forget("k:2");
        assert_eq!(s.get("k:1"), Some(7), "forgetting another key leaves it");
        s.forget("k:1");
        assert_eq!(s.get("k:1"), None);
        assert_eq!(settled_after(100_000), 25_000);
        assert_eq!(settled_after(60_000_000), 1_000_000);
    }

    #[test]
    fn the_offset_is_taken_at_the_midpoint_of_the_round_trip() {
        let clock = ServerClock::default();
        assert!(clock.offset().is_none());
        let sent = UNIX_EPOCH + Duration::from_secs(100);
        let received = sent + Duration::from_millis(4);
        clock.record(sent, received, 160_002_000);
        assert_eq!(clock.offset(), Some(60_000_000));
        assert!(clock.claim_resync());
        assert!(!clock.claim_resync(), "one claim per period");
    }

    #[test]
    fn the_previous_window_weighs_what_is_left_of_it() {
        let w = Window {
            quota: Quota::new(10, Duration::from_secs(1)).unwrap(),
            length: 1_000_000,
            elapsed: 250_000,
            cur_key: String::new(),
            prev_key: String::new(),
            cur: 2,
            prev: 8,
            prev_read: true,
        };
        assert!((w.estimate() - 8.0).abs() < 1e-9);
        let d = answer(&[w], false, 3, 5_000_000);
        assert_eq!((d.allowed, d.remaining), (false, 2));
        // 1 unit over: the previous window's 8 lose one unit per 125 ms.
        assert_eq!(d.retry_after, Some(Duration::from_millis(125)));
    }
}
