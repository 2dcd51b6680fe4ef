//! The server's clock as this process reads it between probes: the probe asks `TIME`, and
//! [`ServerClock::at`] adds the monotonic time since. A reading is never earlier than the
//! server's true time (up to a step of the server's clock, seen at the next probe):
//!
//! - the server answered at some instant between sending and receiving, so the reading counts
//!   from the *send* instant: it runs ahead by at most one round trip of the probe;
//! - clocks run at slightly different rates (NTP slews by up to 500 ppm), so the reading adds
//!   1 ms per second since the measurement;
//! - the local side is [`Instant`], so steps of this machine's wall clock do not move it;
//! - a measurement older than [`MAX_AGE`] is not used.
//!
//! The cache compares it with the expiry the write script stamps into each entry, instead of
//! asking Redis for the `PTTL` of every key it reads: an L1 copy may then end up to a round
//! trip early, never late.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a measurement is used: a few probe intervals (1 s by default), so a probe or two
/// that fail do not stop it, but a clock measured before an outage is measured again first.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(5);

/// Margin for the rates of the two clocks: 1 ms per second since the measurement.
const DRIFT_PER: u64 = 1000;

/// A reading of the server's clock (see the module docs).
#[derive(Debug)]
pub(crate) struct ServerClock {
    origin: Instant,
    /// Server µs minus µs since `origin` at the send instant; `i64::MIN` until measured.
    offset_us: AtomicI64,
    /// µs since `origin` of that send instant, +1 (0: never).
    at_us: AtomicU64,
}

impl Default for ServerClock {
    fn default() -> Self {
        ServerClock {
            origin: Instant::now(),
            offset_us: AtomicI64::new(i64::MIN),
            at_us: AtomicU64::new(0),
        }
    }
}

impl ServerClock {
    fn since_origin_us(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_micros()).unwrap_or(u64::MAX)
    }

    /// Folds in a `TIME` reply (`server_us`, µs since the epoch) to a request sent at `sent`.
    pub(crate) fn record(&self, sent: Instant, server_us: u64) {
        let at = self.since_origin_us(sent);
        let (Ok(server), Ok(local)) = (i64::try_from(server_us), i64::try_from(at)) else {
            return;
        };
        // The offset before the instant: a reader that sees this instant sees this offset.
        self.offset_us.store(server - local, Ordering::Relaxed);
        self.at_us.store(at.saturating_add(1), Ordering::Release);
    }

    /// The server's time at `now` in ms since the epoch, never earlier than the truth;
    /// `None` before the first measurement or when the last one is older than [`MAX_AGE`].
    pub(crate) fn at(&self, now: Instant) -> Option<u64> {
        let at = self.at_us.load(Ordering::Acquire).checked_sub(1)?;
        // Read after the instant: as new as it, or newer (then the age below is overstated,
        // which only widens the margin).
        let offset = self.offset_us.load(Ordering::Relaxed);
        let local = self.since_origin_us(now);
        let age = local.saturating_sub(at);
        if offset == i64::MIN || age > MAX_AGE.as_micros() as u64 {
            return None;
        }
        let server_us = i64::try_from(local)
            .ok()?
            .checked_add(offset)?
            .checked_add(i64::try_from(age / DRIFT_PER).ok()?)?;
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
        clock.record(sent, 1_764_800_000_000_000);
        assert!(clock.at(sent).is_some());
        assert_eq!(clock.at(sent + MAX_AGE + Duration::from_millis(1)), None);
    }

    #[test]
    fn reads_count_from_the_send_instant_plus_the_drift_margin() {
        let clock = ServerClock::default();
        let sent = clock.origin + Duration::from_secs(3);
        // The server read 1_000_000.000_5 s when the request, sent at `sent`, reached it.
        clock.record(sent, 1_000_000_000_500);
        // At the send instant itself: the server's reading, rounded up to the ms.
        assert_eq!(clock.at(sent), Some(1_000_000_001));
        // Two seconds on: two seconds more, and 2 ms of margin.
        assert_eq!(clock.at(sent + Duration::from_secs(2)), Some(1_000_002_003));
    }

    #[test]
    fn a_later_measurement_replaces_an_earlier_one() {
        let clock = ServerClock::default();
        let first = clock.origin + Duration::from_millis(10);
        clock.record(first, 5_000_000);
        // The server's clock stepped back a second.
        let second = first + Duration::from_secs(1);
        clock.record(second, 5_000_000);
        assert_eq!(clock.at(second), Some(5_000));
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
