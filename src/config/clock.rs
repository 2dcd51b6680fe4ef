//! Time as tierkit's own decisions read it: session expiry, the local rate limiter, block
//! windows. A seam, as governor's `Clock`: services run on [`SystemClock`], tests on a
//! [`ManualClock`] they move with [`advance`](ManualClock::advance) instead of sleeping.
//!
//! Redis keeps its own time (TTLs, the sliding window): a manual clock moves only what tierkit
//! decides in process.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};

/// A source of time.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tierkit::clock::{Clock, ManualClock, SystemClock};
///
/// let manual = ManualClock::new();
/// let before = manual.now();
/// manual.advance(Duration::from_secs(5));
/// assert_eq!(manual.now().duration_since(before).unwrap(), Duration::from_secs(5));
/// assert_eq!(manual.elapsed(), Duration::from_secs(5));
///
/// assert!(SystemClock.elapsed() <= SystemClock.elapsed());
/// ```
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Wall-clock time, for timestamps (a session's creation and expiry).
    fn now(&self) -> SystemTime;

    /// Time since a fixed origin; never goes back. Intervals are measured with it.
    fn elapsed(&self) -> Duration;
}

/// The operating system's clocks: `SystemTime::now` and a monotonic `Instant`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn elapsed(&self) -> Duration {
        ORIGIN.elapsed()
    }
}

/// A clock that moves only when told to. Clones share one time.
///
/// It starts at the wall-clock time of its creation and an elapsed time of zero.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tierkit::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let shared = clock.clone();
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(shared.elapsed(), Duration::from_millis(1500));
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Manual>);

#[derive(Debug)]
struct Manual {
    start: SystemTime,
    nanos: AtomicU64,
}

impl ManualClock {
    /// A clock at the current wall-clock time.
    pub fn new() -> Self {
        ManualClock::starting_at(SystemTime::now())
    }

    /// A clock whose [`now`](Clock::now) starts at `start`.
    pub fn starting_at(start: SystemTime) -> Self {
        ManualClock(Arc::new(Manual {
            start,
            nanos: AtomicU64::new(0),
        }))
    }

    /// Moves time forward by `by` (saturating at about 584 years).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .0
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(by))
            });
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.0.start + self.elapsed()
    }

    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.0.nanos.load(Ordering::Acquire))
    }
}

/// The clock a `Config` carries, cheap to clone. The system clock is called directly, with no
/// dynamic dispatch on the paths that read it on every call.
#[derive(Clone, Debug, Default)]
#[allow(dead_code)] // read by the features as each moves onto the seam
pub(crate) struct SharedClock(Option<Arc<dyn Clock>>);

#[allow(dead_code)]
impl SharedClock {
    pub(crate) fn new(clock: impl Clock) -> Self {
        SharedClock(Some(Arc::new(clock)))
    }

    /// Wall-clock time.
    pub(crate) fn now(&self) -> SystemTime {
        match &self.0 {
            None => SystemTime::now(),
            Some(c) => c.now(),
        }
    }

    /// Milliseconds since the Unix epoch (0 before it).
    pub(crate) fn now_ms(&self) -> u64 {
        self.now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// Monotonic time since the clock's origin.
    pub(crate) fn elapsed(&self) -> Duration {
        match &self.0 {
            None => SystemClock.elapsed(),
            Some(c) => c.elapsed(),
        }
    }

    /// Whether this is the operating system's clock.
    pub(crate) fn is_system(&self) -> bool {
        self.0.is_none()
    }
}
