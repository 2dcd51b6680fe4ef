//! An entry's logical life, apart from how long a tier keeps it: when it stops being fresh,
//! when an eager refresh is due, and, once expired, when the loader may be tried again.
//!
//! Only namespaces with fail-safe or eager refresh give their L1 entries a [`Life`]; the others
//! expire in moka at their TTL, as before, and pay nothing. The hot path never reads a clock
//! for it: moka reads its own on every hit and hands the time to its expiry policy
//! ([`l1`](super::l1)), which calls [`Life::observe`]; the hit then reads one atomic.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Past `fresh_until`: a stale copy, served only by fail-safe.
const STALE: u8 = 1;
/// Past `refresh_at`: an eager refresh is due.
const DUE: u8 = 2;
/// A refresh was started for this copy.
const CLAIMED: u8 = 4;

/// The logical life of one L1 copy, shared by the copy moka holds and every clone of it.
#[derive(Debug)]
pub(crate) struct Life {
    fresh_until: Instant,
    refresh_at: Option<Instant>,
    state: AtomicU8,
    /// After a fail-safe answer: no loader call for this key until then.
    quiet_until: Mutex<Option<Instant>>,
}

impl Life {
    /// A copy fresh until `fresh_until`, due for a refresh at `refresh_at`; both may be past
    /// already (a stale copy from Redis).
    pub(crate) fn new(fresh_until: Instant, refresh_at: Option<Instant>) -> Life {
        let life = Life {
            fresh_until,
            refresh_at,
            state: AtomicU8::new(0),
            quiet_until: Mutex::new(None),
        };
        life.observe(Instant::now());
        life
    }

    /// Brings the state up to `now` (moka's clock, on every read of the copy). Writes only
    /// when a mark changes, so readers of a hot key share the cache line.
    #[inline]
    pub(crate) fn observe(&self, now: Instant) {
        let state = self.state.load(Ordering::Relaxed);
        if state & STALE != 0 {
            return;
        }
        let marks = if now >= self.fresh_until {
            STALE | DUE
        } else if self.refresh_at.is_some_and(|at| now >= at) {
            DUE
        } else {
            return;
        };
        if state & marks != marks {
            self.state.fetch_or(marks, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn is_stale(&self) -> bool {
        self.state.load(Ordering::Relaxed) & STALE != 0
    }

    /// Whether a refresh is due and nobody started one.
    #[inline]
    pub(crate) fn wants_refresh(&self) -> bool {
        self.state.load(Ordering::Relaxed) & (DUE | CLAIMED) == DUE
    }

    /// Takes the one refresh of this copy: `true` for the caller that gets it.
    pub(crate) fn claim(&self) -> bool {
        self.state.fetch_or(CLAIMED, Ordering::AcqRel) & CLAIMED == 0
    }

    /// Lets a later hit try the refresh again (it could not be started).
    pub(crate) fn unclaim(&self) {
        self.state.fetch_and(!CLAIMED, Ordering::AcqRel);
    }

    /// How long the copy has been expired at `now` (zero while fresh).
    pub(crate) fn expired_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.fresh_until)
    }

    /// Whether the loader is not to be tried at `now`: a failure was answered from this copy
    /// less than the throttle ago.
    pub(crate) fn is_quiet(&self, now: Instant) -> bool {
        self.quiet_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| now < until)
    }

    /// No loader call for this key for `throttle` from now (for ever, as far as a process
    /// lives, when `throttle` is past what `Instant` can hold).
    pub(crate) fn hush_for(&self, throttle: Duration) {
        let now = Instant::now();
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        let until = now
            .checked_add(throttle)
            .or_else(|| now.checked_add(CENTURY));
        *self.quiet_until.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }
}

/// When an entry read in the last part of its life is refreshed in the background, so a hot
/// key never expires under its readers. Set with
/// [`NamespaceBuilder::eager_refresh`](super::NamespaceBuilder::eager_refresh).
///
/// # Examples
///
/// ```
/// use tierkit::cache::EagerRefresh;
///
/// // Refresh an entry read after 80% of its life...
/// let at = EagerRefresh::after(0.8);
/// // ...or by probabilistic early expiration (XFetch), scaled by the loader's own time.
/// let xfetch = EagerRefresh::xfetch(1.0);
/// # let _ = (at, xfetch);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EagerRefresh(Rule);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    After(f64),
    XFetch(f64),
}

impl EagerRefresh {
    /// Due once `fraction` (0 to 1, exclusive) of the copy's fresh life has passed.
    pub fn after(fraction: f64) -> Self {
        EagerRefresh(Rule::After(fraction))
    }

    /// Probabilistic early expiration (Vattani et al., "Optimal Probabilistic Cache Stampede
    /// Prevention", VLDB 2015): due `beta · δ · -ln(U)` before expiry, where `δ` is how long
    /// the namespace's loader takes (a moving average) and `U` uniform in (0, 1]. The draw is
    /// made once per copy, when it is made, so hits pay nothing for it, and instances draw
    /// apart. `beta` above 1 refreshes earlier; 1 is the paper's choice.
    pub fn xfetch(beta: f64) -> Self {
        EagerRefresh(Rule::XFetch(beta))
    }

    /// The problem with the setting, if any.
    pub(super) fn problem(&self) -> Option<String> {
        match self.0 {
            Rule::After(f) if !(f > 0.0 && f < 1.0) => Some(format!(
                "after({f}) is outside (0, 1); e.g. 0.8 refreshes in the last 20% of a life"
            )),
            Rule::XFetch(beta) if !(beta.is_finite() && beta > 0.0) => Some(format!(
                "xfetch({beta}) needs a positive, finite beta; 1.0 is the usual choice"
            )),
            _ => None,
        }
    }

    /// How long before the end of a fresh life of `span` the refresh is due, given the
    /// loader's usual time `delta`.
    pub(super) fn window(&self, span: Duration, delta: Duration) -> Duration {
        let window = match self.0 {
            Rule::After(f) => span.mul_f64(1.0 - f),
            Rule::XFetch(beta) => {
                // 1 - f64() is in (0, 1]: ln is finite and at most 0.
                let draw = -(1.0 - fastrand::f64()).ln();
                Duration::try_from_secs_f64(delta.as_secs_f64() * beta * draw).unwrap_or(span)
            }
        };
        window.min(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_life_turns_due_then_stale_and_is_claimed_once() {
        let now = Instant::now();
        let life = Life::new(
            now + Duration::from_secs(10),
            Some(now + Duration::from_secs(8)),
        );
        life.observe(now + Duration::from_secs(1));
        assert!(!life.wants_refresh() && !life.is_stale());
        life.observe(now + Duration::from_secs(9));
        assert!(life.wants_refresh() && !life.is_stale());
        assert!(life.claim());
        assert!(!life.claim() && !life.wants_refresh());
        life.unclaim();
        assert!(life.wants_refresh());
        life.observe(now + Duration::from_secs(11));
        assert!(life.is_stale());
        assert_eq!(
            life.expired_for(now + Duration::from_secs(13)),
            Duration::from_secs(3)
        );
        // Time read out of order (two threads' clocks) never makes a stale copy fresh.
        life.observe(now);
        assert!(life.is_stale());
        let past = Life::new(now - Duration::from_millis(1), None);
        assert!(past.is_stale());
        assert!(!past.is_quiet(now));
        past.hush_for(Duration::from_secs(1));
        assert!(past.is_quiet(Instant::now()));
        assert!(!past.is_quiet(Instant::now() + Duration::from_secs(2)));
        // A throttle no clock can reach rests the loader, and does not panic.
        past.hush_for(Duration::MAX);
        assert!(past.is_quiet(Instant::now() + Duration::from_secs(3600)));
    }

    #[test]
    fn windows_stay_within_the_life() {
        let span = Duration::from_secs(100);
        assert_eq!(
            EagerRefresh::after(0.8).window(span, Duration::ZERO),
            Duration::from_secs(20)
        );
        for _ in 0..1000 {
            let w = EagerRefresh::xfetch(1.0).window(span, Duration::from_millis(10));
            assert!(w <= span);
        }
        let huge = EagerRefresh::xfetch(1e300).window(span, Duration::from_secs(1));
        assert_eq!(huge, span);
        assert!(EagerRefresh::after(1.0).problem().is_some());
        assert!(EagerRefresh::after(f64::NAN).problem().is_some());
        assert!(EagerRefresh::xfetch(0.0).problem().is_some());
        assert!(EagerRefresh::xfetch(1.0).problem().is_none());
    }
}
