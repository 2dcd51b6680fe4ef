//! The server's clock as this process reads it between probes: the probe asks `TIME`, and
//! [`ServerClock::at`] adds the monotonic time since. A reading is never earlier than the
//! server's true time (up to a forward step of the server's clock smaller than a probe's round
//! trip, which the next probes see):
//!
//! - the server answered at some instant between sending and receiving, so a sample counts
//!   from the *send* instant: it runs ahead by at most its round trip;
//! - each sample bounds the offset between the clocks from both sides (its upper bound less
//!   its round trip), and the bounds of successive samples are intersected: a probe slowed by
//!   a busy machine or a paused server leaves the reading as it was, a quick one tightens it,
//!   and one whose bounds miss the kept ones (the server's clock stepped) starts afresh;
//! - a reading is only used while its bounds are within [`MAX_SPREAD`] of each other: on a
//!   machine too busy for a quick probe a read asks `TIME` itself, so its error is its own
//!   round trip, not a probe's;
//! - clocks run at slightly different rates (NTP slews by up to 500 ppm), so the reading adds
//!   1 ms per second since it was taken;
//! - the local side is [`Instant`], so steps of this machine's wall clock do not move it;
//! - a reading not confirmed by a sample for [`MAX_AGE`] is not used.
//!
//! The cache compares it with the expiry the write script stamps into each entry, instead of
//! asking Redis for the `PTTL` of every key it reads: an L1 copy may then end a little early,
//! never late.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a measurement is used: a few probe intervals (1 s by default), so a probe or two
/// that fail do not stop it, but a clock measured before an outage is measured again first.
const MAX_AGE: Duration = Duration::from_secs(5);

/// Margin for the rates of the two clocks: 1 ms per second since the measurement.
const DRIFT_PER: u64 = 1000;

/// How far apart a reading's bounds may be for it to be used, in µs: an L1 copy ends at most
/// this much early.
const MAX_SPREAD: u64 = 2_000;

/// A reading of the server's clock (see the module docs).
#[derive(Debug)]
pub(crate) struct ServerClock {
    origin: Instant,
    /// Server µs minus µs since `origin` at the send instant, the upper bound; `i64::MIN`
    /// until measured.
    offset_us: AtomicI64,
    /// How far below it the lower bound is, µs.
    spread_us: AtomicU64,
    /// µs since `origin` of that send instant, +1 (0: never).
    at_us: AtomicU64,
}

impl Default for ServerClock {
    fn default() -> Self {
        ServerClock {
            origin: Instant::now(),
            offset_us: AtomicI64::new(i64::MIN),
            spread_us: AtomicU64::new(u64::MAX),
            at_us: AtomicU64::new(0),
        }
    }
}

impl ServerClock {
    fn since_origin_us(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_micros()).unwrap_or(u64::MAX)
    }

    /// Folds in a `TIME` reply (`server_us`, µs since the epoch) to a request sent at `sent`
    /// and answered at `received`.
    pub(crate) fn record(&self, sent: Instant, received: Instant, server_us: u64) {
        let at = self.since_origin_us(sent);
        let rtt = self.since_origin_us(received).saturating_sub(at);
        let (Ok(server), Ok(local), Ok(rtt)) = (
            i64::try_from(server_us),
            i64::try_from(at),
            i64::try_from(rtt),
        ) else {
            return;
        };
        // The true offset at `sent` lies in [upper - rtt, upper].
        let upper = server - local;
        let lower = upper - rtt;
        let kept = self
            .at_us
            .load(Ordering::Acquire)
            .checked_sub(1)
            .and_then(|was| {
                let offset = self.offset_us.load(Ordering::Relaxed);
                let spread = i64::try_from(self.spread_us.load(Ordering::Relaxed)).ok()?;
                let age = i64::try_from(at.checked_sub(was)? / DRIFT_PER).ok()?;
                (offset != i64::MIN).then(|| {
                    (
                        offset.saturating_add(age),
                        offset.saturating_sub(spread).saturating_sub(age),
                    )
                })
            });
        let (upper, lower) = match kept {
            // The bounds overlap: both hold, so their intersection does.
            Some((kept_upper, kept_lower)) if lower <= kept_upper && upper >= kept_lower => {
                (kept_upper.min(upper), kept_lower.max(lower))
            }
            // None yet, a sample older than the reading, or the server's clock stepped.
            _ => (upper, lower),
        };
        // The bounds before the instant: a reader that sees this instant sees them.
        self.offset_us.store(upper, Ordering::Relaxed);
        self.spread_us
            .store(u64::try_from(upper - lower).unwrap_or(0), Ordering::Relaxed);
        self.at_us.store(at.saturating_add(1), Ordering::Release);
    }

    /// The server's time at `now` in ms since the epoch, never earlier than the truth;
    /// `None` before the first measurement, when the last one is older than [`MAX_AGE`], or
    /// while the reading's bounds are more than [`MAX_SPREAD`] apart.
    pub(crate) fn at(&self, now: Instant) -> Option<u64> {
        let at = self.at_us.load(Ordering::Acquire).checked_sub(1)?;
        // Read after the instant: as new as it, or newer (then the age below is overstated,
        // which only widens the margin).
        let offset = self.offset_us.load(Ordering::Relaxed);
        let spread = self.spread_us.load(Ordering::Relaxed);
        let local = self.since_origin_us(now);
        let age = local.saturating_sub(at);
        let margin = age / DRIFT_PER;
        if offset == i64::MIN
            || age > MAX_AGE.as_micros() as u64
            || spread.saturating_add(2 * margin) > MAX_SPREAD
        {
            return None;
        }
        let server_us = i64::try_from(local)
            .ok()?
            .checked_add(offset)?
            .checked_add(i64::try_from(margin).ok()?)?;
        // Rounded up: a whole ms not yet over counts as over.
        u64::try_from(server_us).ok().map(|us| us.div_ceil(1000))
    }
}

/// Parses a `TIME` reply (seconds and microseconds, as two strings) into µs since the epoch.
pub(crate) fn time_reply(reply: &redis::Value) -> Option<u64> {
    let redis::Value::Array(parts) = reply else {
        return None;
    };
    let [secs, micros] = parts.as_slice() else {
        return None;
    };
    let secs: u64 = redis::from_redis_value_ref(secs).ok()?;
    let micros: u64 = redis::from_redis_value_ref(micros).ok()?;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_until_measured_and_once_too_old() {
        let clock = ServerClock::default();
        assert_eq!(clock.at(Instant::now()), None);
        let sent = Instant::now();
        clock.record(sent, sent, 1_764_800_000_000_000);
        assert!(clock.at(sent).is_some());
        assert_eq!(clock.at(sent + MAX_AGE + Duration::from_millis(1)), None);
    }

    #[test]
    fn reads_count_from_the_send_instant_plus_the_drift_margin() {
        let clock = ServerClock::default();
        let sent = clock.origin + Duration::from_secs(3);
        // The server read 1_000_000.000_5 s when the request, sent at `sent`, reached it.
        clock.record(sent, sent + Duration::from_micros(300), 1_000_000_000_500);
        // At the send instant itself: the server's reading, rounded up to the ms.
        assert_eq!(clock.at(sent), Some(1_000_000_001));
        // Half a second on: that much more, and 0.5 ms of margin.
        assert_eq!(
            clock.at(sent + Duration::from_millis(500)),
            Some(1_000_000_501)
        );
        // Once the margin on both sides puts the bounds over 2 ms apart, it is not used.
        assert_eq!(clock.at(sent + Duration::from_millis(900)), None);
    }

    /// Samples of a server whose clock is `offset` µs ahead of `origin`: sent at `sent` ms,
    /// read by the server at `read` ms, answered at `answered` ms (all since `origin`).
    fn sample(clock: &ServerClock, offset: u64, sent: u64, read: u64, answered: u64) {
        let ms = Duration::from_millis;
        clock.record(
            clock.origin + ms(sent),
            clock.origin + ms(answered),
            offset + read * 1000,
        );
    }

    #[test]
    fn the_bounds_of_samples_are_intersected_and_a_step_starts_afresh() {
        let clock = ServerClock::default();
        let ms = |n| clock.origin + Duration::from_millis(n);
        let truth = 4_989_500;
        // Answered within 1 ms, read by the server 0.5 ms in: 0.5 ms ahead at most.
        clock.record(ms(10), ms(11), truth + 10_500);
        assert_eq!(clock.at(ms(10)), Some(5_000));
        // A probe stuck 50 ms (a busy machine, a paused server) is looser: the reading stays
        // (100 ms on, plus 0.1 ms of drift margin, rounded up).
        sample(&clock, truth, 110, 150, 160);
        assert_eq!(clock.at(ms(110)), Some(5_101));
        // A quick one pins it.
        sample(&clock, truth, 210, 210, 210);
        assert_eq!(clock.at(ms(210)), Some(5_200));
        assert_eq!(clock.at(ms(211)), Some(5_201));
        // The server's clock stepped back a second: its bounds miss the kept ones.
        sample(&clock, truth - 1_000_000, 310, 310, 310);
        assert_eq!(clock.at(ms(310)), Some(4_300));
        // And forward two seconds, seen by a loose probe: a fresh start, too loose to use...
        sample(&clock, truth + 1_000_000, 410, 430, 460);
        assert_eq!(clock.at(ms(410)), None);
        // ...until a quick one.
        sample(&clock, truth + 1_000_000, 500, 500, 500);
        assert_eq!(clock.at(ms(500)), Some(6_490));
    }

    #[test]
    fn time_replies_parse_and_anything_else_does_not() {
        let reply = redis::Value::Array(vec![
            redis::Value::BulkString(b"1764800000".to_vec()),
            redis::Value::BulkString(b"123456".to_vec()),
        ]);
        assert_eq!(time_reply(&reply), Some(1_764_800_000_123_456));
        assert_eq!(time_reply(&redis::Value::Nil), None);
        assert_eq!(time_reply(&redis::Value::Array(vec![])), None);
        let bad = redis::Value::Array(vec![
            redis::Value::BulkString(b"x".to_vec()),
            redis::Value::BulkString(b"1".to_vec()),
        ]);
        assert_eq!(time_reply(&bad), None);
    }
}
