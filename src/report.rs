//! The health report a service serves at `/health`.
//!
//! ```json
//! {"status":"healthy","redis":{"status":"healthy","latency":2},"cache":{"totalKeys":1234,"memoryUsage":"45.2MB", ...}, ...}
//! ```
//!
//! ## Status rules
//!
//! | overall `status` | when |
//! |---|---|
//! | `healthy` | Redis is up, or not configured (embedded: everything is in-process by design) |
//! | `degraded` | Redis is slow (`Degraded`), or down for less than `unhealthy_after` (default 5 min): the service still serves, from its in-process tier |
//! | `unhealthy` | Redis has been down for `unhealthy_after` or more: a load balancer may rotate the instance out |
//!
//! `redis.status` is `healthy`, `degraded` (slow, or on a cluster some primaries unreachable:
//! `redis.unreachable` then lists them with their slots; or answering but refusing a command
//! the ACL user may not run), `unhealthy` (down) or `disabled` (embedded; with fault
//! injection, the state of what stands in for Redis). When Redis refuses tierkit's
//! configuration (credentials, database index, ACL permissions) `redis.misconfigured`
//! says what (`kind`) and what to change (`fix`): that is not an outage to wait out.
//! A report never waits longer than the op timeout: Redis state and latency come from the
//! health monitor's last probe, and the key count and memory from one pipelined call that is
//! skipped while Redis is down.
//!
//! ## Public and detailed forms
//!
//! [`Tierkit::health_report`](crate::Tierkit::health_report) gives the *detailed* form: it
//! carries `redis.lastError` (an error text that may name hosts, ports and certificate
//! problems) and, on a cluster, `redis.unreachable` (each silent primary's address and slots).
//! That is for operators and internal endpoints. [`HealthReport::public`] gives the *public*
//! form for an endpoint anyone can reach (a load balancer's check, a status page): the same
//! JSON with those two fields left out, and nothing else changed (statuses, latency, state,
//! key counts, memory, hit ratios, per-namespace counters, the limiter's tier, session
//! counts).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::cache::{CacheCore, CacheStats};
use crate::health::{Health, HealthState, Misconfiguration, UnreachableShard};
use crate::ratelimit::{LimiterReport, Registry, Tier};
use crate::session::{SessionStats, Sessions};

/// Overall and per-part status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Status {
    /// All good.
    Healthy,
    /// Serving, with reduced guarantees.
    Degraded,
    /// Not serving as it should.
    Unhealthy,
    /// Not configured (Redis in embedded mode).
    Disabled,
}

/// The whole report; serialize it as the `/health` body: [`public`](Self::public) for an
/// endpoint reachable from outside, as it is for one only operators reach (see the
/// [module docs](self) for what the public form leaves out).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> tierkit::Result<()> {
/// let kit = tierkit::Tierkit::embedded();
/// let report = kit.health_report().await;
/// let json = serde_json::to_value(&report.public()).unwrap();
/// assert_eq!(json["status"], "healthy");
/// assert_eq!(json["redis"]["status"], "disabled");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct HealthReport {
    /// Overall status, by the rules in the module docs.
    pub status: Status,
    /// Redis.
    pub redis: RedisReport,
    /// The cache.
    pub cache: CacheReport,
    /// The rate limiter.
    pub rate_limiter: RateLimiterReport,
    /// Sessions, when the report was asked with a store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionStats>,
}

/// The Redis part.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RedisReport {
    /// `healthy`, `degraded` (slow), `unhealthy` (down) or `disabled` (embedded, without
    /// fault injection).
    pub status: Status,
    /// Round trip of the last probe in milliseconds.
    pub latency: Option<u64>,
    /// The health monitor's state, `None` when embedded.
    pub state: Option<HealthState>,
    /// Whether the state is forced (a test of degraded mode).
    pub forced: bool,
    /// Seconds in the current state.
    pub for_secs: Option<u64>,
    /// The last failure, while not healthy. Left out of the [public](HealthReport::public)
    /// form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// On a Redis Cluster, the primaries the probe cannot reach and the slots they serve;
    /// left out when empty, and from the [public](HealthReport::public) form.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<UnreachableShard>,
    /// A setting Redis refused (credentials, database index, ACL permissions): what to fix.
    /// Left out when there is none; the [public](HealthReport::public) form keeps the kind and
    /// the fix but not Redis's own words (`error`), which may name the ACL user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub misconfigured: Option<Misconfiguration>,
}

/// The cache part.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CacheReport {
    /// Keys in the Redis database, when Redis answered.
    pub total_keys: Option<u64>,
    /// Memory Redis uses, e.g. `"45.2MB"`, when Redis answered.
    pub memory_usage: Option<String>,
    /// Entries in this instance's L1.
    pub l1_entries: u64,
    /// Bytes in this instance's L1.
    pub l1_bytes: u64,
    /// Whether the coherence backplane is subscribed.
    pub coherent: bool,
    /// Hit ratio of all namespaces together.
    pub hit_ratio: f64,
    /// Per namespace: hit ratio and counters.
    pub namespaces: BTreeMap<String, NamespaceReport>,
}

/// One namespace in the report.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct NamespaceReport {
    /// `(l1_hits + l2_hits) / reads`.
    pub hit_ratio: f64,
    /// All counters.
    pub stats: CacheStats,
}

/// The rate-limiter part.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RateLimiterReport {
    /// The tier deciding now: `redis`, or `local` (governor) while Redis is down or embedded.
    pub tier: Tier,
    /// Each live limiter: whether it decides without Redis now, its takeovers, and Redis
    /// errors that were not outages.
    pub limiters: Vec<LimiterReport>,
}

/// How long Redis may be down before the report says `unhealthy`.
pub(crate) const UNHEALTHY_AFTER: Duration = Duration::from_secs(300);

fn megabytes(bytes: u64) -> String {
    format!("{:.1}MB", bytes as f64 / 1_000_000.0)
}

impl HealthReport {
    /// The public form of this report, for an endpoint anyone can reach: the same report
    /// without `redis.lastError` and `redis.unreachable`, which name hosts, ports, slots and
    /// the text of errors. Every other field, and the JSON shape, stays as it is.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(kit: tierkit::Tierkit) {
    /// // Internal port: everything. Public port: status, latency and counts only.
    /// let detailed = kit.health_report().await;
    /// let public = detailed.clone().public();
    /// assert!(public.redis.last_error.is_none() && public.redis.unreachable.is_empty());
    /// assert_eq!(public.status, detailed.status);
    /// # }
    /// ```
    #[must_use]
    pub fn public(mut self) -> HealthReport {
        self.redis.last_error = None;
        self.redis.unreachable = Vec::new();
        if let Some(problem) = &mut self.redis.misconfigured {
            problem.error = None;
        }
        for limiter in &mut self.rate_limiter.limiters {
            limiter.last_error = None;
        }
        self
    }

    /// The report from the parts' own figures: `health` is `None` when embedded.
    pub(crate) async fn collect(
        health: Option<&Health>,
        cache: &CacheCore,
        limiters: &Registry,
        sessions: Option<&Sessions>,
    ) -> HealthReport {
        let status = health.map(Health::status);
        let (redis_status, overall) = match &status {
            None => (Status::Disabled, Status::Healthy),
            Some(s) => match s.state {
                // Redis answers, but refuses some of what tierkit sends.
                HealthState::Up if s.misconfigured.is_some() => {
                    (Status::Degraded, Status::Degraded)
                }
                HealthState::Up => (Status::Healthy, Status::Healthy),
                HealthState::Degraded => (Status::Degraded, Status::Degraded),
                _ if s.since.elapsed() >= UNHEALTHY_AFTER => (Status::Unhealthy, Status::Unhealthy),
                _ => (Status::Unhealthy, Status::Degraded),
            },
        };
        let redis = RedisReport {
            status: redis_status,
            latency: status
                .as_ref()
                .and_then(|s| s.latency)
                .map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
            state: status.as_ref().map(|s| s.state),
            forced: status.as_ref().is_some_and(|s| s.forced),
            for_secs: status.as_ref().map(|s| s.since.elapsed().as_secs()),
            last_error: status.as_ref().and_then(|s| s.last_error.clone()),
            unreachable: status
                .as_ref()
                .map(|s| s.unreachable.clone())
                .unwrap_or_default(),
            misconfigured: status.as_ref().and_then(|s| s.misconfigured.clone()),
        };
        // Both Redis reads at once, each skipped while Down and bounded by the op timeout
        // otherwise, so the report as a whole is too.
        let session_stats = async {
            match sessions {
                Some(s) => s.stats().await.ok(),
                None => None,
            }
        };
        let (info, sessions) = tokio::join!(cache.info(true), session_stats);
        let cache = CacheReport {
            total_keys: info.redis_keys,
            memory_usage: info.redis_used_memory.map(megabytes),
            l1_entries: info.l1_entries,
            l1_bytes: info.l1_bytes,
            coherent: info.coherent,
            hit_ratio: info.total.hit_ratio(),
            namespaces: info
                .namespaces
                .into_iter()
                .map(|(name, stats)| {
                    let hit_ratio = stats.hit_ratio();
                    (name, NamespaceReport { hit_ratio, stats })
                })
                .collect(),
        };
        let tier = match &status {
            Some(s) if s.state.is_available() => Tier::Redis,
            _ => Tier::Local,
        };
        HealthReport {
            status: overall,
            redis,
            cache,
            rate_limiter: RateLimiterReport {
                tier,
                limiters: limiters.reports(),
            },
            sessions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_form_leaves_out_error_text_and_nodes_only() {
        let detailed = HealthReport {
            status: Status::Degraded,
            redis: RedisReport {
                status: Status::Degraded,
                latency: Some(3),
                state: Some(HealthState::Degraded),
                forced: false,
                for_secs: Some(7),
                last_error: Some("10.0.0.7:7002: connection refused".to_owned()),
                unreachable: vec![UnreachableShard {
                    node: "10.0.0.7:7002".to_owned(),
                    slots: vec![0..=5460],
                    error: "connection refused".to_owned(),
                }],
                misconfigured: Some(Misconfiguration {
                    kind: crate::health::MisconfigurationKind::Permission,
                    fix: "grant it".to_owned(),
                    error: Some("NOPERM User alice has no permissions".to_owned()),
                }),
            },
            cache: CacheReport {
                total_keys: Some(12),
                memory_usage: Some(megabytes(1_500_000)),
                l1_entries: 4,
                l1_bytes: 400,
                coherent: true,
                hit_ratio: 0.5,
                namespaces: BTreeMap::new(),
            },
            rate_limiter: RateLimiterReport {
                tier: Tier::Redis,
                limiters: Vec::new(),
            },
            sessions: Some(SessionStats::default()),
        };
        let full = serde_json::to_value(&detailed).unwrap();
        let public = serde_json::to_value(detailed.public()).unwrap();
        assert!(full.to_string().contains("10.0.0.7"));
        assert!(!public.to_string().contains("10.0.0.7"), "{public}");
        assert!(!public.to_string().contains("refused"), "{public}");
        let mut expected = full.clone();
        let redis = expected["redis"].as_object_mut().unwrap();
        redis.remove("lastError");
        redis.remove("unreachable");
        redis["misconfigured"]
            .as_object_mut()
            .unwrap()
            .remove("error");
        assert!(!public.to_string().contains("alice"), "{public}");
        assert_eq!(public["redis"]["misconfigured"]["kind"], "permission");
        assert_eq!(public, expected);
    }

    #[test]
    fn memory_is_shown_in_megabytes() {
        assert_eq!(megabytes(45_200_000), "45.2MB");
        assert_eq!(megabytes(800_000), "0.8MB");
    }
}
