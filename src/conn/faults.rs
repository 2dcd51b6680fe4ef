//! Faults injected into tierkit's own Redis calls (feature `testing`), so a service can test its
//! degraded mode from its own tests without signalling a real server: calls made slow, failing
//! at a rate, hung, or refused, switched at run time and reproducible under a seed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{Error, Result};

/// The faults in force on one Redis connection: every command, pipeline and script tierkit
/// sends, and the health probe, go through them. Cheap to clone; all clones act on the same
/// connection. Get it from [`Tierkit::faults`](crate::Tierkit::faults) (feature `testing`);
/// an embedded instance built with
/// [`fault_injection`](crate::ConfigBuilder::fault_injection) has them too, on the
/// in-process tiers that stand in for Redis.
///
/// Faults are made where a real one would be felt: a delay counts against `op_timeout` (a
/// delay longer than it is a timeout), a failure is a connection error, a hang answers
/// nothing until `op_timeout`. So health reacts as it would to the real thing (failing calls
/// take it `Down`, probes through a healed connection bring it back), and every feature takes
/// the degraded path it would take: the cache answers from L1 and its fail-safe, the limiter
/// decides locally, sessions validate from their local copy. Random draws (the error rate, a
/// latency range) come from one generator seeded by [`seed`](Self::seed) (0 until set), so a
/// test that makes its calls in the same order sees the same faults on every run.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use tierkit::{Config, Tierkit};
///
/// # async fn demo() -> tierkit::Result<()> {
/// let kit = Tierkit::new(Config::builder().redis_url("redis://127.0.0.1:6380").build()?)?;
/// let faults = kit.faults().expect("Redis is configured");
/// faults.seed(7);
/// faults.latency(Duration::from_millis(30)); // slow
/// faults.error_rate(0.2)?;                   // and flaky
/// // ... exercise the service ...
/// faults.hang();                             // now hung: calls time out
/// faults.heal();                             // back to normal
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Faults(Arc<Shared>);

#[derive(Default)]
struct Shared {
    /// Whether any fault is in force: a call with none costs one load, not the lock.
    active: AtomicBool,
    state: Mutex<State>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Faults")
            .field("mode", &s.mode)
            .field("latency", &s.latency)
            .field("error_rate", &s.error_rate)
            .field("injected", &s.injected)
            .finish()
    }
}

#[derive(Debug, Default)]
struct State {
    mode: Mode,
    latency: Latency,
    error_rate: f64,
    /// Draws for calls, and apart from them for the probe, whose timing the test does not
    /// choose: calls made in the same order meet the same faults however the probe interleaves.
    rng: Option<fastrand::Rng>,
    probe_rng: Option<fastrand::Rng>,
    seed: u64,
    injected: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Mode {
    #[default]
    Pass,
    Hang,
    Unreachable,
}

#[derive(Clone, Copy, Debug, Default)]
enum Latency {
    #[default]
    None,
    Fixed(Duration),
    Between(Duration, Duration),
}

/// What one call meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Plan {
    /// Waited before the call is sent (or fails, or hangs).
    pub(super) delay: Duration,
    pub(super) outcome: Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Send,
    Fail,
    Hang,
}

impl Faults {
    /// Restarts the random draws from `seed`: the same calls in the same order meet the same
    /// faults.
    pub fn seed(&self, seed: u64) {
        let mut s = self.lock();
        s.seed = seed;
        s.rng = None;
        s.probe_rng = None;
    }

    /// Delays every call by `delay` before it is sent.
    pub fn latency(&self, delay: Duration) {
        self.lock().latency = Latency::Fixed(delay);
    }

    /// Delays every call by a duration drawn uniformly from `low..=high`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `low > high`; the faults in force stay as they were.
    pub fn latency_between(&self, low: Duration, high: Duration) -> Result<()> {
        if low > high {
            return Err(Error::InvalidInput {
                what: "fault latency range".to_owned(),
                problem: format!("{low:?} is above {high:?}"),
            });
        }
        self.lock().latency = Latency::Between(low, high);
        Ok(())
    }

    /// Fails each call with probability `rate` (0 to 1), as a refused connection.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `rate` is not within 0 to 1; the faults in force stay as
    /// they were.
    pub fn error_rate(&self, rate: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&rate) {
            return Err(Error::InvalidInput {
                what: "fault error rate".to_owned(),
                problem: format!("{rate} is not within 0 to 1"),
            });
        }
        self.lock().error_rate = rate;
        Ok(())
    }

    /// Every call hangs: nothing answers, and each call ends at `op_timeout`, as with a server
    /// stopped by `SIGSTOP` or a network that drops packets.
    pub fn hang(&self) {
        self.lock().mode = Mode::Hang;
    }

    /// Every call fails at once as a refused connection, as with a server that is gone.
    pub fn unreachable(&self) {
        self.lock().mode = Mode::Unreachable;
    }

    /// Ends every fault: no delay, no errors, no hang. The seed's draws go on where they were.
    pub fn heal(&self) {
        let mut s = self.lock();
        s.mode = Mode::Pass;
        s.latency = Latency::None;
        s.error_rate = 0.0;
    }

    /// How many calls met a fault (a delay, a failure or a hang) so far.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// What the next call meets.
    pub(super) fn plan(&self) -> Plan {
        self.draw(false)
    }

    /// What the next health probe meets.
    pub(super) fn plan_probe(&self) -> Plan {
        self.draw(true)
    }

    fn draw(&self, probe: bool) -> Plan {
        if !self.0.active.load(Ordering::Acquire) {
            return Plan::CLEAN;
        }
        let mut s = self.lock();
        let State {
            mode,
            latency,
            error_rate,
            rng,
            probe_rng,
            seed,
            injected,
        } = &mut *s;
        let rng = if probe {
            probe_rng.get_or_insert_with(|| fastrand::Rng::with_seed(!*seed))
        } else {
            rng.get_or_insert_with(|| fastrand::Rng::with_seed(*seed))
        };
        let delay = match *latency {
            Latency::None => Duration::ZERO,
            Latency::Fixed(d) => d,
            Latency::Between(low, high) => {
                let span = u64::try_from((high - low).as_nanos()).unwrap_or(u64::MAX);
                low + Duration::from_nanos(rng.u64(0..=span))
            }
        };
        let outcome = match *mode {
            Mode::Hang => Outcome::Hang,
            Mode::Unreachable => Outcome::Fail,
            Mode::Pass if *error_rate > 0.0 && rng.f64() < *error_rate => Outcome::Fail,
            Mode::Pass => Outcome::Send,
        };
        let plan = Plan { delay, outcome };
        if plan != Plan::CLEAN {
            *injected += 1;
        }
        plan
    }

    fn lock(&self) -> Guard<'_> {
        // Every field stays valid whatever a panicking holder did.
        Guard {
            state: self.0.state.lock().unwrap_or_else(|p| p.into_inner()),
            active: &self.0.active,
        }
    }
}

/// The state, locked; on release, `active` says again whether any fault is in force.
struct Guard<'a> {
    state: MutexGuard<'a, State>,
    active: &'a AtomicBool,
}

impl std::ops::Deref for Guard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let s = &*self.state;
        let active =
            s.mode != Mode::Pass || !matches!(s.latency, Latency::None) || s.error_rate > 0.0;
        self.active.store(active, Ordering::Release);
    }
}

impl Plan {
    const CLEAN: Plan = Plan {
        delay: Duration::ZERO,
        outcome: Outcome::Send,
    };

    /// Runs `call` as this plan says; a failure is a refused connection, as `E` carries one.
    pub(super) async fn run<T, E: From<redis::RedisError>>(
        self,
        call: impl std::future::Future<Output = std::result::Result<T, E>>,
    ) -> std::result::Result<T, E> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        match self.outcome {
            Outcome::Send => call.await,
            Outcome::Fail => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused (a fault injected by tierkit::conn::Faults)",
            ))
            .into()),
            Outcome::Hang => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(faults: &Faults, n: usize) -> Vec<Plan> {
        (0..n).map(|_| faults.plan()).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let (a, b) = (Faults::default(), Faults::default());
        for f in [&a, &b] {
            f.seed(42);
            f.error_rate(0.3).unwrap();
            f.latency_between(Duration::from_millis(1), Duration::from_millis(9))
                .unwrap();
        }
        // The probe's draws, however many and wherever they fall, change no call's.
        let da = draws(&a, 200);
        let db: Vec<Plan> = (0..200)
            .map(|i| {
                if i % 7 == 0 {
                    b.plan_probe();
                }
                b.plan()
            })
            .collect();
        assert_eq!(da, db);
        let failed = da.iter().filter(|p| p.outcome == Outcome::Fail).count();
        assert!((30..=90).contains(&failed), "{failed} of 200 at 0.3");
        assert!(da
            .iter()
            .all(|p| (Duration::from_millis(1)..=Duration::from_millis(9)).contains(&p.delay)));
        assert_eq!(a.injected(), 200);
        a.seed(42);
        assert_eq!(draws(&a, 200), da, "seeding again replays the draws");
    }

    #[test]
    fn modes_switch_at_run_time_and_heal_ends_them() {
        let f = Faults::default();
        assert_eq!(f.plan(), Plan::CLEAN);
        f.hang();
        assert_eq!(f.plan().outcome, Outcome::Hang);
        f.unreachable();
        assert_eq!(f.plan().outcome, Outcome::Fail);
        f.latency(Duration::from_millis(5));
        assert_eq!(f.plan().delay, Duration::from_millis(5));
        f.heal();
        assert_eq!(f.plan(), Plan::CLEAN);
        assert_eq!(f.injected(), 3);
    }

    #[test]
    fn bad_settings_are_refused_and_change_nothing() {
        let f = Faults::default();
        f.error_rate(0.5).unwrap();
        assert!(matches!(f.error_rate(1.5), Err(Error::InvalidInput { .. })));
        assert!(matches!(
            f.error_rate(f64::NAN),
            Err(Error::InvalidInput { .. })
        ));
        let high = Duration::from_millis(1);
        assert!(f.latency_between(Duration::from_millis(2), high).is_err());
        assert!((f.lock().error_rate - 0.5).abs() < f64::EPSILON);
        assert!(matches!(f.lock().latency, Latency::None));
    }
}
