//! What a limiter saw of Redis, made visible: each takeover by the local tier and each return
//! of Redis logged at warn with counts, Redis errors that are not outages counted and logged
//! at warn (at most once per 10 s), the `metrics` gauge and counters, and the figures of the
//! health report ([`LimiterReport`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Error;
use crate::metrics;

/// The least time between two warn lines about errors of one limiter.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// One limiter in the health report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct LimiterReport {
    /// The limiter's name.
    pub name: String,
    /// Whether the limiter decides without Redis now (always false when embedded, unless
    /// fault injection puts a stand-in for Redis there).
    pub degraded: bool,
    /// Times the local tier took over from Redis.
    pub takeovers: u64,
    /// Decisions made without Redis since the last takeover began.
    pub degraded_decisions: u64,
    /// Redis errors that were not outages (decided by the error policy).
    pub redis_errors: u64,
    /// The kind of the last such error (the Redis error code: `NOPERM`, `OOM`, ...).
    pub last_error_kind: Option<String>,
    /// The text of the last such error; left out of the
    /// [public report](crate::report::HealthReport::public).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

pub(super) struct Watch {
    name: String,
    born: Instant,
    degraded: AtomicBool,
    takeovers: AtomicU64,
    /// When the current (or last) takeover began, in ms since `born`.
    took_over_ms: AtomicU64,
    degraded_allowed: AtomicU64,
    degraded_refused: AtomicU64,
    errors: AtomicU64,
    /// Errors since the last warn line.
    unlogged: AtomicU64,
    /// When the last warn line about errors went out, in ms since `born`; `u64::MAX` never.
    warned_ms: AtomicU64,
    last_error: Mutex<Option<(String, String)>>,
}

impl Watch {
    pub(super) fn new(name: &str) -> Self {
        Watch {
            name: name.to_owned(),
            born: Instant::now(),
            degraded: AtomicBool::new(false),
            takeovers: AtomicU64::new(0),
            took_over_ms: AtomicU64::new(0),
            degraded_allowed: AtomicU64::new(0),
            degraded_refused: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
            warned_ms: AtomicU64::new(u64::MAX),
            last_error: Mutex::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Redis decided: ends a takeover, if one was running, with a line saying what the local
    /// tier did meanwhile.
    #[inline]
    pub(super) fn redis_decided(&self) {
        // A plain load first: the common case costs no write to a shared line.
        if self.degraded.load(Ordering::Relaxed) && self.degraded.swap(false, Ordering::Relaxed) {
            let lasted = self
                .now_ms()
                .saturating_sub(self.took_over_ms.load(Ordering::Relaxed));
            tracing::warn!(
                limiter = %self.name,
                lasted_ms = lasted,
                allowed = self.degraded_allowed.load(Ordering::Relaxed),
                refused = self.degraded_refused.load(Ordering::Relaxed),
                "tierkit: Redis decides again; the local tier's decisions meanwhile held this \
                 instance's share only"
            );
            metrics::ratelimit_degraded(&self.name, false);
        }
    }

    /// A decision made without Redis by a Redis-backed limiter: starts a takeover (one warn
    /// line) unless one is running, and counts the decision.
    pub(super) fn decided_without_redis(&self, allowed: bool, why: &str, share: u32) {
        if !self.degraded.load(Ordering::Relaxed) && !self.degraded.swap(true, Ordering::Relaxed) {
            self.takeovers.fetch_add(1, Ordering::Relaxed);
            self.took_over_ms.store(self.now_ms(), Ordering::Relaxed);
            self.degraded_allowed.store(0, Ordering::Relaxed);
            self.degraded_refused.store(0, Ordering::Relaxed);
            tracing::warn!(
                limiter = %self.name,
                why,
                local_share = share,
                takeovers = self.takeovers.load(Ordering::Relaxed),
                "tierkit: deciding without Redis; each instance now enforces its own share, not \
                 the shared quota"
            );
            metrics::ratelimit_degraded(&self.name, true);
        }
        let counter = if allowed {
            &self.degraded_allowed
        } else {
            &self.degraded_refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A Redis error that is not an outage: counted, kept for the report, and logged at warn
    /// at most once per [`WARN_EVERY`] with the count since the last line.
    pub(super) fn error(&self, e: &Error) {
        let kind = e.kind_name();
        self.errors.fetch_add(1, Ordering::Relaxed);
        let unlogged = self.unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::ratelimit_error(&self.name, &kind);
        let now = self.now_ms();
        let warned = self.warned_ms.load(Ordering::Relaxed);
        let due = warned == u64::MAX || now.saturating_sub(warned) >= WARN_EVERY.as_millis() as u64;
        if due
            && self
                .warned_ms
                .compare_exchange(warned, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.unlogged.fetch_sub(unlogged, Ordering::Relaxed);
            tracing::warn!(
                limiter = %self.name,
                kind = %kind,
                error = %e,
                errors = unlogged,
                "tierkit: Redis answered the rate-limit call with an error that is not an \
                 outage; the limiter's error policy decides (check the Redis user's ACL, \
                 memory and the key)"
            );
        }
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((kind, e.to_string()));
    }

    pub(super) fn report(&self) -> LimiterReport {
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (last_error_kind, last_error) = match last {
            Some((kind, text)) => (Some(kind), Some(text)),
            None => (None, None),
        };
        LimiterReport {
            name: self.name.clone(),
            degraded: self.degraded.load(Ordering::Relaxed),
            takeovers: self.takeovers.load(Ordering::Relaxed),
            degraded_decisions: self.degraded_allowed.load(Ordering::Relaxed)
                + self.degraded_refused.load(Ordering::Relaxed),
            redis_errors: self.errors.load(Ordering::Relaxed),
            last_error_kind,
            last_error,
        }
    }
}

/// The limiters of one [`Tierkit`](crate::Tierkit), for its health report; a dropped limiter
/// leaves it.
#[derive(Debug, Default)]
pub(crate) struct Registry(Mutex<Vec<Weak<Watch>>>);

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub(super) fn register(&self, watch: &Arc<Watch>) {
        let mut list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(watch));
    }

    /// The live limiters' reports, by name.
    pub(crate) fn reports(&self) -> Vec<LimiterReport> {
        let list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut reports: Vec<_> = list
            .iter()
            .filter_map(Weak::upgrade)
            .map(|w| w.report())
            .collect();
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_takeover_counts_until_redis_decides_again() {
        let w = Watch::new("t");
        w.redis_decided();
        assert_eq!(w.report().takeovers, 0);
        w.decided_without_redis(true, "down", 5);
        w.decided_without_redis(false, "down", 5);
        let r = w.report();
        assert_eq!(
            (r.degraded, r.takeovers, r.degraded_decisions),
            (true, 1, 2)
        );
        w.redis_decided();
        let r = w.report();
        assert_eq!(
            (r.degraded, r.takeovers, r.degraded_decisions),
            (false, 1, 2)
        );
        w.decided_without_redis(true, "down", 5);
        let r = w.report();
        assert_eq!(
            (r.degraded, r.takeovers, r.degraded_decisions),
            (true, 2, 1)
        );
    }

    #[test]
    fn errors_are_counted_with_their_kind() {
        let w = Watch::new("t");
        let e = Error::Redis(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm),
            "no permission",
        )));
        assert!(!e.is_outage());
        w.error(&e);
        w.error(&e);
        let r = w.report();
        assert_eq!(r.redis_errors, 2);
        assert_eq!(r.last_error_kind.as_deref(), Some("NOPERM"));
        assert!(r.last_error.is_some());
        let registry = Registry::default();
        let w = Arc::new(w);
        registry.register(&w);
        assert_eq!(registry.reports().len(), 1);
        drop(w);
        assert!(registry.reports().is_empty());
    }
}
