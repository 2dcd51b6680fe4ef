//! Health of the Redis tier: a background probe (`TIME` on a single server, which also reads
//! its clock; `PING` on a cluster) plus a passive feed from every operation, folded into one
//! state with hysteresis and published on a [`tokio::sync::watch`] channel.
//!
//! ## Behavior
//!
//! - The state starts `Down` (calls are not sent; the service serves from its in-process
//!   tier) and the first probe that answers moves it to `Up`, so starting never waits on Redis
//!   and never waits on hysteresis either.
//! - `fail_threshold` consecutive failures (probes, or operations that met a connection error
//!   or timeout) move the state to `Down`, so an outage is noticed before the next probe.
//!   Operations corroborate each other: `fail_threshold` calls failing within one
//!   `op_timeout` with no call succeeding meanwhile are enough at once, so a hang under load is
//!   noticed about one `op_timeout` after it began, and every call after that stops waiting on
//!   Redis. A lone failure among successes counts once per `op_timeout` window.
//! - From `Down`, `recover_threshold` consecutive successful probes bring it back. While
//!   `Down`, the probe runs every `op_timeout` (not every `probe_interval`), so a server that
//!   is back, or a stall taken for an outage, is used again within a few round trips. A probe
//!   slower than `degraded_latency` gives `Degraded` (Redis answers, but slowly); from
//!   `Degraded`, `recover_threshold` fast probes give `Up`.
//! - While `Down`, calls through [`Conn`](crate::conn::Conn) fail at once with
//!   [`Error::Unavailable`] instead of waiting for a timeout; only the
//!   probe keeps talking to Redis.
//! - One log line per transition (warn going down or slow, info coming back), never one per
//!   failed call.
//! - The probe task ends when the last handle to the connection drops.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::codec::json_time;
use crate::config::HealthConfig;
use crate::error::Error;

/// The state of the Redis tier as the health monitor sees it.
///
/// # Examples
///
/// ```
/// use tierkit::health::HealthState;
///
/// assert_eq!(HealthState::Down.to_string(), "down");
/// assert!(HealthState::Degraded.is_available());
/// assert!(!HealthState::Down.is_available());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum HealthState {
    /// Redis answers within the latency threshold.
    Up,
    /// Redis answers, but slower than the latency threshold.
    Degraded,
    /// Redis does not answer; calls are not sent.
    Down,
}

impl HealthState {
    /// Whether calls are sent to Redis in this state (`Up` or `Degraded`).
    pub fn is_available(self) -> bool {
        !matches!(self, HealthState::Down)
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => HealthState::Up,
            1 => HealthState::Degraded,
            _ => HealthState::Down,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            HealthState::Up => 0,
            HealthState::Degraded => 1,
            HealthState::Down => 2,
        }
    }

    /// The lowercase name: `up`, `degraded` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Up => "up",
            HealthState::Degraded => "degraded",
            HealthState::Down => "down",
        }
    }

    /// The value of the `tierkit_health_state` gauge: 0 up, 1 degraded, 2 down.
    fn level(self) -> f64 {
        f64::from(self.as_u8())
    }
}

impl std::fmt::Display for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of the health monitor, as published on its watch channel.
///
/// # Examples
///
/// ```
/// # async fn demo(kit: tierkit::Tierkit) {
/// if let Some(health) = kit.health() {
///     let status = health.status();
///     println!("redis is {} (last ping {:?})", status.state, status.latency);
/// }
/// # }
/// ```
///
/// It serializes (camelCase, like the health report) with times as milliseconds:
/// `latencyMs`, and `lastProbeAgoMs` and `sinceAgoMs`, how long before serializing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct HealthStatus {
    /// The state in force: the forced one if any, else the observed one.
    pub state: HealthState,
    /// The state the monitor observed, whatever is forced.
    pub observed: HealthState,
    /// Whether `state` was set by [`Health::force`].
    pub forced: bool,
    /// Round-trip time of the last successful probe.
    #[serde(rename = "latencyMs", serialize_with = "json_time::opt_millis")]
    pub latency: Option<Duration>,
    /// When the last probe finished, successful or not.
    #[serde(rename = "lastProbeAgoMs", serialize_with = "json_time::opt_ago")]
    pub last_probe: Option<Instant>,
    /// When the observed state last changed (or the monitor started).
    #[serde(rename = "sinceAgoMs", serialize_with = "json_time::ago")]
    pub since: Instant,
    /// Failures in a row (probes and operations) since the last success.
    pub consecutive_failures: u32,
    /// The last failure seen, if the state is not `Up`.
    pub last_error: Option<String>,
    /// On a Redis Cluster, the primaries the last probe could not reach and the slots they
    /// serve (keys there fail until a replica takes over); empty when all answered, and
    /// always empty on a single server.
    pub unreachable: Vec<UnreachableShard>,
    /// A setting Redis refused (credentials, database index, ACL permissions): not an outage
    /// but something to fix in the configuration. `None` while nothing was refused.
    pub misconfigured: Option<Misconfiguration>,
}

/// A setting of tierkit's that Redis refused: retrying will not help, the configuration must
/// change. Carried by [`HealthStatus::misconfigured`] and the health report, and logged once at
/// error level when it first shows.
///
/// Credentials or a database index that Redis refuses keep health `Down` (nothing can be sent)
/// until a probe gets through. A command the ACL user may not run fails only the calls that
/// use it; the problem is shown until a minute passes without another refusal.
///
/// # Examples
///
/// ```
/// # fn demo(health: &tierkit::health::Health) {
/// if let Some(problem) = &health.status().misconfigured {
///     eprintln!("redis configuration error ({}): {}", problem.kind, problem.fix);
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Misconfiguration {
    /// What was refused.
    pub kind: MisconfigurationKind,
    /// What to change.
    pub fix: String,
    /// What Redis answered. It may name the ACL user; left out of the public health report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What Redis refused.
///
/// # Examples
///
/// ```
/// use tierkit::health::MisconfigurationKind;
///
/// assert_eq!(MisconfigurationKind::Authentication.to_string(), "authentication");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum MisconfigurationKind {
    /// No credentials where the server requires them (`NOAUTH`), or wrong ones (`WRONGPASS`).
    Authentication,
    /// A database index the server does not have.
    Database,
    /// The ACL user may not run a command tierkit sends (`NOPERM`).
    Permission,
}

impl MisconfigurationKind {
    /// The lowercase name: `authentication`, `database` or `permission`.
    pub fn as_str(self) -> &'static str {
        match self {
            MisconfigurationKind::Authentication => "authentication",
            MisconfigurationKind::Database => "database",
            MisconfigurationKind::Permission => "permission",
        }
    }
}

impl std::fmt::Display for MisconfigurationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long a refused command stays in the status after the last refusal: nothing else tells
/// when an operator granted it.
const PERMISSION_MEMORY: Duration = Duration::from_secs(60);

impl Misconfiguration {
    /// The configuration problem `error` shows, if it is one.
    pub(crate) fn of(error: &Error) -> Option<Self> {
        use redis::{ErrorKind, ServerErrorKind};
        let Error::Redis(e) = error else {
            return None;
        };
        // Only an error that may be one of these is rendered.
        let said = match (e.kind(), e.code()) {
            (ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm), _)
            | (_, Some("NOAUTH" | "WRONGPASS" | "NOPERM" | "ERR")) => e.to_string(),
            _ => return None,
        };
        let (kind, fix) = match (e.kind(), e.code()) {
            (ErrorKind::AuthenticationFailed, _) | (_, Some("NOAUTH" | "WRONGPASS")) => (
                MisconfigurationKind::Authentication,
                "Redis refused the credentials: set the password (and the ACL user, if any) in \
                 REDIS_URL (redis://user:password@host:port) or REDIS_PASSWORD and \
                 REDIS_USERNAME"
                    .to_owned(),
            ),
            (ErrorKind::Server(ServerErrorKind::NoPerm), _) | (_, Some("NOPERM")) => {
                let command = said
                    .split('\'')
                    .nth(1)
                    .filter(|c| !c.is_empty() && c.len() < 64)
                    .map_or_else(String::new, |c| format!(" ({c})"));
                (
                    MisconfigurationKind::Permission,
                    format!(
                        "the Redis ACL user may not run a command tierkit sends{command}: grant \
                         it (ACL SETUSER <user> +<command>); a rate limiter without scripting \
                         can use Algorithm::PipelinedCounter instead"
                    ),
                )
            }
            _ if said.contains("refused to switch database") || said.contains("DB index") => (
                MisconfigurationKind::Database,
                "Redis has no such database: use an index below the server's `databases` \
                 setting (16 by default) in REDIS_URL's path or REDIS_DB"
                    .to_owned(),
            ),
            _ => return None,
        };
        Some(Misconfiguration {
            kind,
            fix,
            error: Some(said),
        })
    }
}

/// A cluster primary that did not answer the probe, and the part of the keyspace it serves.
///
/// # Examples
///
/// ```
/// # fn demo(health: &tierkit::health::Health) {
/// for shard in &health.status().unreachable {
///     println!("{} unreachable ({}): slots {:?}", shard.node, shard.error, shard.slots);
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct UnreachableShard {
    /// The primary's `host:port`.
    pub node: String,
    /// The hash slots it serves (of 0-16383).
    pub slots: Vec<std::ops::RangeInclusive<u16>>,
    /// Why the probe failed.
    pub error: String,
}

/// Handle to the health monitor of one Redis connection. Cheap to clone.
///
/// # Examples
///
/// ```no_run
/// use tierkit::{Config, Tierkit, health::HealthState};
///
/// # async fn demo() -> tierkit::Result<()> {
/// let kit = Tierkit::new(Config::builder().redis_url("redis://127.0.0.1:6380").build()?)?;
/// let health = kit.health().expect("Redis is configured");
/// let mut changes = health.subscribe();
/// changes.changed().await.ok();
/// println!("now {}", changes.borrow().state);
///
/// // Test the service's own degraded mode:
/// health.force(HealthState::Down);
/// assert_eq!(health.state(), HealthState::Down);
/// health.unforce();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Health(Arc<Shared>);

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Health").field(&self.status()).finish()
    }
}

pub(crate) struct Shared {
    cfg: HealthConfig,
    /// Operation failures closer together than this count once, unless `fail_threshold` of
    /// them corroborate each other; also how often a `Down` Redis is probed.
    failure_window: Duration,
    /// Operation failures in the current window, with no success since.
    burst: AtomicU32,
    started: Instant,
    /// When the last operation failure was counted, in nanoseconds since `started` (+1, so 0
    /// means never).
    last_counted: AtomicU64,
    // Mirrors the state in force so the hot path reads one atomic, not the lock.
    effective: AtomicU8,
    // Kept outside the lock so a successful operation costs one relaxed load.
    fails: AtomicU32,
    machine: Mutex<Machine>,
    tx: watch::Sender<HealthStatus>,
}

#[derive(Debug)]
struct Machine {
    observed: HealthState,
    /// Whether Redis ever answered: recovery hysteresis guards against flapping, not start-up.
    answered: bool,
    oks: u32,
    forced: Option<HealthState>,
    latency: Option<Duration>,
    last_probe: Option<Instant>,
    since: Instant,
    last_error: Option<String>,
    unreachable: Vec<UnreachableShard>,
    /// What Redis refused, and when it last did.
    misconfigured: Option<(Misconfiguration, Instant)>,
}

impl Machine {
    /// Folds one failure in; returns the new observed state if it changed.
    fn on_failure(&mut self, fails: u32, cfg: &HealthConfig) -> Option<HealthState> {
        self.oks = 0;
        (fails >= cfg.fail_threshold && self.observed != HealthState::Down)
            .then(|| self.set(HealthState::Down))
    }

    /// Folds one successful probe in; returns the new observed state if it changed. `partial`
    /// (some cluster primaries did not answer) counts as slow: Redis answers, but not all of it.
    fn on_probe_ok(
        &mut self,
        latency: Duration,
        partial: bool,
        cfg: &HealthConfig,
    ) -> Option<HealthState> {
        self.latency = Some(latency);
        let slow = partial || latency > cfg.degraded_latency;
        let target = if slow {
            HealthState::Degraded
        } else {
            HealthState::Up
        };
        match (self.observed, slow) {
            (HealthState::Up, false) | (HealthState::Degraded, true) => {
                self.oks = 0;
                None
            }
            // Slowness shows at once; recovery must hold for recover_threshold probes.
            (HealthState::Up, true) => {
                self.oks = 0;
                Some(self.set(target))
            }
            _ => {
                self.oks += 1;
                let needed = if self.answered {
                    cfg.recover_threshold
                } else {
                    1
                };
                self.answered = true;
                (self.oks >= needed).then(|| self.set(target))
            }
        }
    }

    fn set(&mut self, state: HealthState) -> HealthState {
        self.observed = state;
        self.since = Instant::now();
        self.oks = 0;
        state
    }

    fn effective(&self) -> HealthState {
        self.forced.unwrap_or(self.observed)
    }
}

impl Health {
    pub(crate) fn new(cfg: HealthConfig, failure_window: Duration) -> Self {
        let machine = Machine {
            observed: HealthState::Down,
            answered: false,
            oks: 0,
            forced: None,
            latency: None,
            last_probe: None,
            since: Instant::now(),
            last_error: Some("not connected yet".to_owned()),
            unreachable: Vec::new(),
            misconfigured: None,
        };
        let (tx, _) = watch::channel(HealthStatus {
            state: HealthState::Down,
            observed: HealthState::Down,
            forced: false,
            latency: None,
            last_probe: None,
            since: machine.since,
            consecutive_failures: 0,
            last_error: machine.last_error.clone(),
            unreachable: Vec::new(),
            misconfigured: None,
        });
        Health(Arc::new(Shared {
            cfg,
            failure_window,
            started: Instant::now(),
            last_counted: AtomicU64::new(0),
            burst: AtomicU32::new(0),
            effective: AtomicU8::new(HealthState::Down.as_u8()),
            fails: AtomicU32::new(0),
            machine: Mutex::new(machine),
            tx,
        }))
    }

    /// The state in force now. One atomic load.
    pub fn state(&self) -> HealthState {
        HealthState::from_u8(self.0.effective.load(Ordering::Acquire))
    }

    /// A full snapshot: state, last probe latency, failures in a row, last error.
    pub fn status(&self) -> HealthStatus {
        self.0.tx.borrow().clone()
    }

    /// The round-trip time of the last successful probe.
    pub fn latency(&self) -> Option<Duration> {
        self.0.tx.borrow().latency
    }

    /// A receiver that sees every change of [`HealthStatus`] (state changes and new probe
    /// results).
    pub fn subscribe(&self) -> watch::Receiver<HealthStatus> {
        self.0.tx.subscribe()
    }

    /// Waits until the state in force is `state`, or `timeout` passes; returns whether it was
    /// reached.
    pub async fn wait_for(&self, state: HealthState, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| s.state == state))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Forces the state in force to `state` whatever Redis does, so a service can test its own
    /// degraded mode. The monitor keeps observing underneath; [`unforce`](Self::unforce) returns
    /// to the observed state.
    pub fn force(&self, state: HealthState) {
        let mut m = self.0.lock();
        m.forced = Some(state);
        tracing::info!(%state, "tierkit: Redis health forced");
        self.0.publish(&m);
    }

    /// Ends a [`force`](Self::force); the observed state is in force again.
    pub fn unforce(&self) {
        let mut m = self.0.lock();
        if m.forced.take().is_some() {
            tracing::info!(state = %m.observed, "tierkit: Redis health no longer forced");
        }
        self.0.publish(&m);
    }

    pub(crate) fn is_down(&self) -> bool {
        self.state() == HealthState::Down
    }

    pub(crate) fn config(&self) -> &HealthConfig {
        &self.0.cfg
    }

    /// Passive feed: an operation succeeded.
    pub(crate) fn record_success(&self) {
        if self.0.fails.load(Ordering::Relaxed) != 0 {
            self.0.fails.store(0, Ordering::Relaxed);
        }
        if self.0.burst.load(Ordering::Relaxed) != 0 {
            self.0.burst.store(0, Ordering::Relaxed);
        }
    }

    /// How often the probe runs while the observed state is `Down`: every operation timeout,
    /// so recovery takes a few round trips, not a few probe intervals.
    pub(crate) fn recovery_interval(&self) -> Duration {
        self.0
            .failure_window
            .clamp(Duration::from_millis(10), self.0.cfg.probe_interval)
    }

    /// Passive feed: Redis answered a call with a refusal that only configuration can change
    /// (a `NOPERM`). Not a failure: Redis is there, and other calls go on.
    pub(crate) fn record_refusal(&self, error: &Error) {
        if let Some(problem) = Misconfiguration::of(error) {
            let mut m = self.0.lock();
            note_misconfiguration(&mut m, problem);
            self.0.publish(&m);
        }
    }

    /// Passive feed and probe: a call met a connection error or timeout. Credentials or a
    /// database Redis refuses are a failure too, and a certain one: health is `Down` at once.
    pub(crate) fn record_failure(&self, error: &Error, probe: bool) {
        let threshold = self.0.cfg.fail_threshold;
        let problem = Misconfiguration::of(error);
        let fails = if problem.is_some() {
            self.0
                .fails
                .fetch_max(threshold, Ordering::Relaxed)
                .max(threshold)
        } else if probe {
            self.0
                .fails
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1)
        } else if self.0.claim_failure_window() {
            self.0.burst.store(1, Ordering::Relaxed);
            self.0
                .fails
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1)
        } else {
            // Within the window: only a corroborated burst moves the count, straight to the
            // threshold.
            let burst = self
                .0
                .burst
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if burst < threshold {
                return;
            }
            self.0
                .fails
                .fetch_max(threshold, Ordering::Relaxed)
                .max(threshold)
        };
        let mut m = self.0.lock();
        if probe {
            m.last_probe = Some(Instant::now());
            // No primary answered: a partial list from an earlier probe says nothing now.
            m.unreachable.clear();
        }
        m.last_error = Some(error.to_string());
        if let Some(problem) = problem {
            note_misconfiguration(&mut m, problem);
        }
        let from = m.observed;
        if let Some(to) = m.on_failure(fails, &self.0.cfg) {
            crate::metrics::health_transition(from.as_str(), to.as_str(), to.level());
            tracing::warn!(
                %from,
                to = %to,
                failures = fails,
                error = %error,
                "tierkit: Redis is down; serving from the in-process tier"
            );
        }
        self.0.publish(&m);
    }

    /// Probe: answered after `latency` (on a cluster: every primary answered).
    pub(crate) fn record_probe_ok(&self, latency: Duration) {
        self.record_probe(latency, Vec::new());
    }

    /// Probe of a cluster: some primaries answered (the slowest after `latency`), these did
    /// not. The state is `Degraded` until all answer again.
    pub(crate) fn record_probe_partial(
        &self,
        latency: Duration,
        unreachable: Vec<UnreachableShard>,
    ) {
        self.record_probe(latency, unreachable);
    }

    fn record_probe(&self, latency: Duration, unreachable: Vec<UnreachableShard>) {
        self.0.fails.store(0, Ordering::Relaxed);
        let mut m = self.0.lock();
        m.last_probe = Some(Instant::now());
        // A probe got through: the credentials and database are right now. A refused command
        // is forgotten only when a while passes without another refusal.
        let fixed = m.misconfigured.as_ref().is_some_and(|(p, seen)| {
            p.kind != MisconfigurationKind::Permission || seen.elapsed() >= PERMISSION_MEMORY
        });
        if fixed {
            m.misconfigured = None;
            tracing::info!("tierkit: Redis no longer refuses tierkit's configuration");
        }
        let partial = !unreachable.is_empty();
        if partial {
            let nodes: Vec<&str> = unreachable.iter().map(|u| u.node.as_str()).collect();
            m.last_error = Some(format!(
                "cluster primaries not answering: {}; their slots fail until a replica takes over",
                nodes.join(", ")
            ));
        }
        let newly_partial = partial && m.unreachable != unreachable;
        m.unreachable = unreachable;
        if newly_partial {
            tracing::warn!(
                error = m.last_error.as_deref().unwrap_or_default(),
                "tierkit: part of the Redis Cluster is unreachable"
            );
        }
        let from = m.observed;
        if let Some(to) = m.on_probe_ok(latency, partial, &self.0.cfg) {
            crate::metrics::health_transition(from.as_str(), to.as_str(), to.level());
            if to == HealthState::Up {
                m.last_error = None;
                tracing::info!(%from, %to, ?latency, "tierkit: Redis is up");
            } else if !partial {
                m.last_error = Some(format!(
                    "PING took {latency:?}, above degraded_latency {:?}",
                    self.0.cfg.degraded_latency
                ));
                tracing::warn!(%from, %to, ?latency, "tierkit: Redis is slow");
            }
        }
        self.0.publish(&m);
    }
}

/// Keeps `problem` as the configuration problem in force; logs it once, when it first shows
/// or changes, never once per refused call.
fn note_misconfiguration(m: &mut Machine, problem: Misconfiguration) {
    let known = m
        .misconfigured
        .as_ref()
        .is_some_and(|(p, _)| p.kind == problem.kind && p.fix == problem.fix);
    if !known {
        tracing::error!(
            kind = %problem.kind,
            error = problem.error.as_deref().unwrap_or_default(),
            "tierkit: Redis refused tierkit's configuration: {}",
            problem.fix
        );
    }
    m.misconfigured = Some((problem, Instant::now()));
}

impl Shared {
    /// Whether this operation failure is the first in its window (and claims it if so).
    fn claim_failure_window(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last_counted.load(Ordering::Relaxed);
        let window = u64::try_from(self.failure_window.as_nanos()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < window {
            return false;
        }
        self.last_counted
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn lock(&self) -> MutexGuard<'_, Machine> {
        // A panic while holding this lock cannot leave the machine half-updated in a way
        // that matters (every field is overwritten by the next event), so poisoning is ignored.
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, m: &Machine) {
        let state = m.effective();
        self.effective.store(state.as_u8(), Ordering::Release);
        let status = HealthStatus {
            state,
            observed: m.observed,
            forced: m.forced.is_some(),
            latency: m.latency,
            last_probe: m.last_probe,
            since: m.since,
            consecutive_failures: self.fails.load(Ordering::Relaxed),
            last_error: m.last_error.clone(),
            unreachable: m.unreachable.clone(),
            misconfigured: m.misconfigured.as_ref().map(|(p, _)| p.clone()),
        };
        self.tx.send_if_modified(|old| {
            let changed = *old != status;
            *old = status;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(100),
            degraded_latency: Duration::from_millis(50),
            fail_threshold: 3,
            recover_threshold: 2,
        }
    }

    const FAST: Duration = Duration::from_millis(1);

    fn health() -> Health {
        Health::new(cfg(), Duration::ZERO)
    }
    const SLOW: Duration = Duration::from_millis(80);

    #[test]
    fn starts_down_and_the_first_answer_brings_it_up() {
        let h = health();
        assert_eq!(h.state(), HealthState::Down);
        h.record_probe_ok(FAST);
        assert_eq!(h.state(), HealthState::Up);
        assert_eq!(h.latency(), Some(FAST));
        assert_eq!(h.status().last_error, None);
    }

    #[test]
    fn coming_back_needs_recover_threshold_probes() {
        let h = health();
        h.record_probe_ok(FAST);
        for _ in 0..3 {
            h.record_failure(&Error::Internal("boom"), true);
        }
        assert_eq!(h.state(), HealthState::Down);
        h.record_probe_ok(FAST);
        assert_eq!(h.state(), HealthState::Down);
        h.record_probe_ok(FAST);
        assert_eq!(h.state(), HealthState::Up);
    }

    #[test]
    fn goes_down_after_fail_threshold_failures_in_a_row() {
        let h = health();
        h.record_probe_ok(FAST);
        h.record_probe_ok(FAST);
        h.record_failure(&Error::Internal("boom"), false);
        h.record_failure(&Error::Internal("boom"), false);
        h.record_success(); // a success in between resets the count
        h.record_failure(&Error::Internal("boom"), false);
        h.record_failure(&Error::Internal("boom"), true);
        assert_eq!(h.state(), HealthState::Up);
        h.record_failure(&Error::Internal("boom"), false);
        assert_eq!(h.state(), HealthState::Down);
        assert_eq!(h.status().consecutive_failures, 3);
        assert_eq!(
            h.status().last_error.as_deref(),
            Some(Error::Internal("boom").to_string().as_str())
        );
    }

    #[test]
    fn a_failure_interrupts_recovery() {
        let h = health();
        h.record_probe_ok(FAST);
        for _ in 0..3 {
            h.record_failure(&Error::Internal("boom"), true);
        }
        h.record_probe_ok(FAST);
        h.record_failure(&Error::Internal("boom"), true);
        h.record_probe_ok(FAST);
        assert_eq!(h.state(), HealthState::Down);
        h.record_probe_ok(FAST);
        assert_eq!(h.state(), HealthState::Up);
    }

    #[test]
    fn slow_probes_degrade_at_once_and_recover_with_hysteresis() {
        let h = health();
        h.record_probe_ok(FAST);
        h.record_probe_ok(FAST);
        h.record_probe_ok(SLOW);
        assert_eq!(h.state(), HealthState::Degraded);
        assert!(h.state().is_available());
        h.record_probe_ok(FAST);
        assert_eq!(h.state(), HealthState::Degraded);
        h.record_probe_ok(SLOW);
        h.record_probe_ok(FAST);
        assert_eq!(h.state(), HealthState::Degraded);
        h.record_probe_ok(FAST);
        assert_eq!(h.state(), HealthState::Up);
    }

    #[test]
    fn recovering_while_slow_lands_on_degraded() {
        let h = health();
        h.record_probe_ok(SLOW);
        h.record_probe_ok(SLOW);
        assert_eq!(h.state(), HealthState::Degraded);
    }

    #[test]
    fn force_overrides_and_unforce_restores() {
        let h = health();
        h.record_probe_ok(FAST);
        h.record_probe_ok(FAST);
        let rx = h.subscribe();
        h.force(HealthState::Down);
        assert_eq!(h.state(), HealthState::Down);
        let s = rx.borrow().clone();
        assert!(s.forced);
        assert_eq!(s.observed, HealthState::Up);
        // The monitor keeps observing underneath a forced state.
        h.record_failure(&Error::Internal("x"), true);
        h.record_failure(&Error::Internal("x"), true);
        h.record_failure(&Error::Internal("x"), true);
        h.force(HealthState::Up);
        assert_eq!(h.state(), HealthState::Up);
        h.unforce();
        assert_eq!(h.state(), HealthState::Down);
        assert!(!h.status().forced);
    }

    #[test]
    fn a_lone_failure_among_successes_counts_once_per_window() {
        let h = Health::new(cfg(), Duration::from_secs(60));
        h.record_probe_ok(FAST);
        h.record_probe_ok(FAST);
        for _ in 0..50 {
            h.record_failure(&Error::Internal("slow call"), false);
            h.record_success();
        }
        assert_eq!(h.state(), HealthState::Up);
        // Probes always count.
        for _ in 0..3 {
            h.record_failure(&Error::Internal("probe"), true);
        }
        assert_eq!(h.state(), HealthState::Down);
    }

    #[test]
    fn calls_failing_together_are_evidence_enough() {
        let h = Health::new(cfg(), Duration::from_secs(60));
        h.record_probe_ok(FAST);
        h.record_probe_ok(FAST);
        // cfg() needs three: two calls failing together are not enough...
        h.record_failure(&Error::Internal("timeout"), false);
        h.record_failure(&Error::Internal("timeout"), false);
        assert_eq!(h.state(), HealthState::Up);
        // ...a third in the same window, with no success between, is.
        h.record_failure(&Error::Internal("timeout"), false);
        assert_eq!(h.state(), HealthState::Down);
        assert_eq!(h.status().consecutive_failures, 3);
        assert_eq!(h.recovery_interval(), cfg().probe_interval);
        let fast = Health::new(cfg(), Duration::from_millis(100));
        assert_eq!(fast.recovery_interval(), Duration::from_millis(100));
    }

    #[test]
    fn watch_channel_sees_transitions() {
        let h = health();
        let mut rx = h.subscribe();
        rx.mark_unchanged();
        h.record_probe_ok(FAST);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        h.record_probe_ok(FAST);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().state, HealthState::Up);
    }
}
