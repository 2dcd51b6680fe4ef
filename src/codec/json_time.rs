//! How times go into the JSON of serializable results (camelCase, like the health report):
//! durations as milliseconds (fractional, so a sub-millisecond latency is not 0), instants as
//! how long ago they were when serialized, wall-clock times as milliseconds since the Unix
//! epoch. The one encoding of times every feature's results share.

use std::time::{Duration, Instant, SystemTime};

use serde::{Serialize, Serializer};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(ms(*d))
}

pub(crate) fn opt_millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    d.map(ms).serialize(s)
}

pub(crate) fn ago<S: Serializer>(at: &Instant, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(ms(at.elapsed()))
}

pub(crate) fn opt_ago<S: Serializer>(at: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
    at.map(|at| ms(at.elapsed())).serialize(s)
}

pub(crate) fn opt_epoch_millis<S: Serializer>(
    at: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    // A clock before the epoch is no time to report.
    at.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(ms)
        .serialize(s)
}
