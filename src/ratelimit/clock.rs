//! The local tier's time: governor's [`Clock`] over the configured clock, so a test's manual
//! clock moves the local limiter while services keep governor's own cheap clock.

use governor::clock::{Clock, QuantaClock, QuantaInstant, Reference};
use governor::nanos::Nanos;

use crate::config::SharedClock;

/// What the local governor reads its time from.
#[derive(Clone, Debug)]
pub(super) enum LocalClock {
    /// The operating system's time through quanta, as governor reads it by default: a local
    /// decision takes tens of nanoseconds, and a trip through the shared clock's `Instant`
    /// would be a sizeable part of it.
    System {
        clock: QuantaClock,
        origin: QuantaInstant,
    },
    /// Any other clock (a test's manual one): its monotonic time since its origin.
    Shared(SharedClock),
}

impl LocalClock {
    pub(super) fn new(clock: &SharedClock) -> Self {
        if clock.is_system() {
            let quanta = QuantaClock::default();
            let origin = quanta.now();
            LocalClock::System {
                clock: quanta,
                origin,
            }
        } else {
            LocalClock::Shared(clock.clone())
        }
    }
}

impl Clock for LocalClock {
    type Instant = Nanos;

    #[inline]
    fn now(&self) -> Nanos {
        match self {
            LocalClock::System { clock, origin } => clock.now().duration_since(*origin),
            // Saturates rather than panicking as `Nanos::from` would: 584 years is out of reach
            // of a real clock, but a manual one may be pushed there.
            LocalClock::Shared(clock) => {
                Nanos::new(u64::try_from(clock.elapsed().as_nanos()).unwrap_or(u64::MAX))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let manual = ManualClock::new();
        let clock = LocalClock::new(&SharedClock::new(manual.clone()));
        let before = clock.now();
        assert_eq!(clock.now(), before);
        manual.advance(Duration::from_millis(1500));
        assert_eq!(
            Duration::from(clock.now().duration_since(before)),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn the_system_clock_runs_on_its_own() {
        let clock = LocalClock::new(&SharedClock::default());
        assert!(matches!(clock, LocalClock::System { .. }));
        let before = clock.now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(Duration::from(clock.now().duration_since(before)) >= Duration::from_millis(1));
    }
}
