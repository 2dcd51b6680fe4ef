//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`): install
//! any recorder (Prometheus, StatsD, ...) and tierkit's figures appear in it. Without the
//! feature every hook compiles to nothing.
//!
//! The cache's counters are published from its statistics once a second (and on
//! [`Tierkit::publish_metrics`](crate::Tierkit::publish_metrics)), so a cache hit pays nothing
//! for metrics; the other figures are recorded as they happen.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `tierkit_cache_requests_total` | counter | `namespace`, `result` = `l1_hit`, `l2_hit`, `miss`, `stale`, `negative_hit` | cache reads by outcome (`stale`: served by fail-safe) |
//! | `tierkit_cache_loader_calls_total` | counter | `namespace` | `get_or_set` loader runs |
//! | `tierkit_cache_loader_errors_total` | counter | `namespace` | loader failures |
//! | `tierkit_cache_loader_duration_seconds` | histogram | `namespace` | loader latency |
//! | `tierkit_cache_loader_timeouts_total` | counter | `namespace` | loads a hard timeout ended |
//! | `tierkit_cache_background_loads_total` | counter | `namespace` | loads past a soft timeout, and eager refreshes |
//! | `tierkit_cache_l2_errors_total` | counter | `namespace` | failed or timed-out L2 calls |
//! | `tierkit_cache_l2_skipped_total` | counter | `namespace` | L2 reads and writes skipped while Redis was down |
//! | `tierkit_cache_decode_failures_total` | counter | `namespace` | stored values that no longer decode |
//! | `tierkit_cache_evictions_total` | counter | `namespace` | L1 evictions for room (with `l1_eviction_counts` on; 0 otherwise) |
//! | `tierkit_cache_bytes_saved_total` | counter | `namespace` | bytes compression saved |
//! | `tierkit_cache_l1_entries`, `tierkit_cache_l1_bytes` | gauge | | L1 size |
//! | `tierkit_redis_call_duration_seconds` | histogram | | every Redis call (command, pipeline, script) |
//! | `tierkit_redis_errors_total` | counter | `kind` = `timeout`, `unavailable`, `connection`, `reply` | failed Redis calls |
//! | `tierkit_health_state` | gauge | | 0 up, 1 degraded, 2 down |
//! | `tierkit_health_transitions_total` | counter | `from`, `to` | health state changes |
//! | `tierkit_ratelimit_decisions_total` | counter | `limiter`, `tier` = `redis`, `local`, `blocked`, `policy`; `outcome` = `allowed`, `refused` | rate-limit decisions |
//! | `tierkit_ratelimit_degraded` | gauge | `limiter` | 1 while a Redis-backed limiter decides without Redis |
//! | `tierkit_ratelimit_takeovers_total` | counter | `limiter` | times the local tier took over from Redis |
//! | `tierkit_ratelimit_redis_errors_total` | counter | `limiter`, `kind` (the Redis error code) | Redis errors that are not outages, decided by the error policy |
//! | `tierkit_session_events_total` | counter | `event` = `created`, `validated`, `validated_locally`, `validated_stateless`, `refreshed`, `revoked`, `expired` | session events |

//!
//! This module takes plain labels and numbers and knows no feature's types: each feature
//! hands it its own figures.

/// One namespace's counters, as plain numbers.
#[cfg(feature = "metrics")]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NamespaceFigures<'a> {
    pub(crate) name: &'a str,
    pub(crate) l1_hits: u64,
    pub(crate) l2_hits: u64,
    pub(crate) misses: u64,
    pub(crate) loader_calls: u64,
    pub(crate) loader_errors: u64,
    pub(crate) l2_errors: u64,
    pub(crate) l2_skipped: u64,
    pub(crate) decode_failures: u64,
    pub(crate) evictions: u64,
    pub(crate) bytes_saved: u64,
    pub(crate) stale_served: u64,
    pub(crate) negative_hits: u64,
    pub(crate) loader_timeouts: u64,
    pub(crate) background_loads: u64,
}

/// Rows of the decision counters of a limiter: who decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decider {
    Redis,
    Local,
    Blocked,
    Policy,
}

#[cfg(feature = "metrics")]
mod imp {
    use std::time::Duration;

    use super::{Decider, NamespaceFigures};
    use crate::error::Error;

    /// Starts timing a Redis call (a no-op type without the feature).
    pub(crate) fn stopwatch() -> std::time::Instant {
        std::time::Instant::now()
    }

    pub(crate) fn redis_call(started: std::time::Instant, error: Option<&Error>) {
        ::metrics::histogram!("tierkit_redis_call_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        if let Some(e) = error {
            let kind = match e {
                Error::Timeout(_) => "timeout",
                Error::Unavailable => "unavailable",
                e if e.is_connectivity() => "connection",
                _ => "reply",
            };
            ::metrics::counter!("tierkit_redis_errors_total", "kind" => kind).increment(1);
        }
    }

    /// A health state change; `level` is the new state's gauge value (0 up, 1 degraded,
    /// 2 down).
    pub(crate) fn health_transition(from: &'static str, to: &'static str, level: f64) {
        ::metrics::gauge!("tierkit_health_state").set(level);
        ::metrics::counter!("tierkit_health_transitions_total", "from" => from, "to" => to)
            .increment(1);
    }

    pub(crate) fn loader(namespace: &str, elapsed: Duration) {
        ::metrics::histogram!("tierkit_cache_loader_duration_seconds", "namespace" => namespace.to_owned())
            .record(elapsed.as_secs_f64());
    }

    pub(crate) fn session_event(event: &'static str) {
        ::metrics::counter!("tierkit_session_events_total", "event" => event).increment(1);
    }

    /// A Redis-backed limiter's local tier took over (`true`) or Redis took back (`false`).
    pub(crate) fn ratelimit_degraded(limiter: &str, degraded: bool) {
        ::metrics::gauge!("tierkit_ratelimit_degraded", "limiter" => limiter.to_owned())
            .set(f64::from(u8::from(degraded)));
        if degraded {
            ::metrics::counter!("tierkit_ratelimit_takeovers_total", "limiter" => limiter.to_owned())
                .increment(1);
        }
    }

    /// A limiter's Redis call failed with an error that is not an outage.
    pub(crate) fn ratelimit_error(limiter: &str, kind: &str) {
        ::metrics::counter!(
            "tierkit_ratelimit_redis_errors_total",
            "limiter" => limiter.to_owned(),
            "kind" => kind.to_owned()
        )
        .increment(1);
    }

    /// Counter handles of one limiter, registered once so a decision costs one increment.
    pub(crate) struct Decisions {
        handles: [::metrics::Counter; 8],
    }

    impl Decisions {
        pub(crate) fn new(limiter: &str) -> Self {
            let c = |tier: &'static str, outcome: &'static str| {
                ::metrics::counter!(
                    "tierkit_ratelimit_decisions_total",
                    "limiter" => limiter.to_owned(),
                    "tier" => tier,
                    "outcome" => outcome
                )
            };
            Decisions {
                handles: [
                    c("redis", "allowed"),
                    c("redis", "refused"),
                    c("local", "allowed"),
                    c("local", "refused"),
                    c("blocked", "allowed"),
                    c("blocked", "refused"),
                    c("policy", "allowed"),
                    c("policy", "refused"),
                ],
            }
        }

        pub(crate) fn record(&self, decider: Decider, allowed: bool) {
            let row = match decider {
                Decider::Redis => 0,
                Decider::Local => 2,
                Decider::Blocked => 4,
                Decider::Policy => 6,
            };
            if let Some(h) = self.handles.get(row + usize::from(!allowed)) {
                h.increment(1);
            }
        }
    }

    pub(crate) fn publish_cache(
        namespaces: &[NamespaceFigures<'_>],
        l1_entries: u64,
        l1_bytes: u64,
    ) {
        for s in namespaces {
            let ns = s.name.to_owned();
            let counter = |name: &'static str, value: u64| {
                ::metrics::counter!(name, "namespace" => ns.clone()).absolute(value);
            };
            for (result, value) in [
                ("l1_hit", s.l1_hits),
                ("l2_hit", s.l2_hits),
                ("miss", s.misses),
                ("stale", s.stale_served),
                ("negative_hit", s.negative_hits),
            ] {
                ::metrics::counter!("tierkit_cache_requests_total", "namespace" => ns.clone(), "result" => result)
                    .absolute(value);
            }
            counter("tierkit_cache_loader_calls_total", s.loader_calls);
            counter("tierkit_cache_loader_errors_total", s.loader_errors);
            counter("tierkit_cache_l2_errors_total", s.l2_errors);
            counter("tierkit_cache_l2_skipped_total", s.l2_skipped);
            counter("tierkit_cache_decode_failures_total", s.decode_failures);
            counter("tierkit_cache_evictions_total", s.evictions);
            counter("tierkit_cache_bytes_saved_total", s.bytes_saved);
            counter("tierkit_cache_loader_timeouts_total", s.loader_timeouts);
            counter("tierkit_cache_background_loads_total", s.background_loads);
        }
        ::metrics::gauge!("tierkit_cache_l1_entries").set(l1_entries as f64);
        ::metrics::gauge!("tierkit_cache_l1_bytes").set(l1_bytes as f64);
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use std::time::Duration;

    use super::Decider;
    use crate::error::Error;

    /// Nothing to time without the feature.
    pub(crate) struct Stopwatch;

    #[inline(always)]
    pub(crate) fn stopwatch() -> Stopwatch {
        Stopwatch
    }
    #[inline(always)]
    pub(crate) fn redis_call(_: Stopwatch, _: Option<&Error>) {}
    #[inline(always)]
    pub(crate) fn health_transition(_: &'static str, _: &'static str, _: f64) {}
    #[inline(always)]
    pub(crate) fn loader(_: &str, _: Duration) {}
    #[inline(always)]
    pub(crate) fn session_event(_: &'static str) {}
    #[inline(always)]
    pub(crate) fn ratelimit_degraded(_: &str, _: bool) {}
    #[inline(always)]
    pub(crate) fn ratelimit_error(_: &str, _: &str) {}

    pub(crate) struct Decisions;

    impl Decisions {
        pub(crate) fn new(_: &str) -> Self {
            Decisions
        }

        #[inline(always)]
        pub(crate) fn record(&self, _: Decider, _: bool) {}
    }
}

pub(crate) use imp::*;
