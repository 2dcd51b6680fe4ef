//! How a run is cut into phases: a warm-up (with `--warmup`), then the measured part: one
//! phase, or before, during and after an outage in thirds of it.

use std::time::Duration;

/// Phase boundaries.
#[derive(Clone, Copy)]
pub struct Phases {
    pub warmup: Duration,
    pub outage: bool,
    /// The measured part, after the warm-up.
    pub duration: Duration,
}

impl Phases {
    const OUTAGE: [&'static str; 3] = ["before", "during", "after"];

    fn warm(self) -> usize {
        usize::from(!self.warmup.is_zero())
    }

    pub fn count(self) -> usize {
        self.warm() + if self.outage { 3 } else { 1 }
    }

    /// The phase of an operation that began `since_start` into the run.
    pub fn of(self, since_start: Duration) -> usize {
        let Some(measured) = since_start.checked_sub(self.warmup) else {
            return 0;
        };
        if !self.outage {
            return self.warm();
        }
        let third = self.duration / 3;
        self.warm() + ((measured.as_nanos() / third.as_nanos().max(1)) as usize).min(2)
    }

    pub fn name(self, i: usize) -> &'static str {
        match (i.checked_sub(self.warm()), self.outage) {
            (None, _) => "warmup",
            (Some(i), true) => Self::OUTAGE[i],
            // After a warm-up the one measured phase is the steady state.
            (Some(_), false) if self.warm() == 1 => "steady",
            (Some(_), false) => "run",
        }
    }

    /// How long phase `i` lasted, the run having taken `finished` (warm-up included).
    pub fn seconds(self, i: usize, finished: Duration) -> f64 {
        let Some(i) = i.checked_sub(self.warm()) else {
            return self.warmup.as_secs_f64();
        };
        let measured = finished.saturating_sub(self.warmup).as_secs_f64();
        if !self.outage {
            return measured;
        }
        let third = self.duration.as_secs_f64() / 3.0;
        // The last phase also holds the operations in flight at the deadline.
        if i == 2 {
            measured - 2.0 * third
        } else {
            third
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phases(warmup: u64, outage: bool) -> Phases {
        Phases {
            warmup: Duration::from_secs(warmup),
            outage,
            duration: Duration::from_secs(3),
        }
    }

    #[test]
    fn an_outage_cuts_the_run_in_thirds() {
        let phases = phases(0, true);
        assert_eq!(phases.count(), 3);
        assert_eq!(phases.of(Duration::from_millis(999)), 0);
        assert_eq!(phases.of(Duration::from_secs(1)), 1);
        assert_eq!(phases.of(Duration::from_secs(2)), 2);
        // Operations still in flight at the deadline land in the last phase.
        assert_eq!(phases.of(Duration::from_secs(5)), 2);
        assert_eq!(phases.name(1), "during");
        assert_eq!(phases.seconds(0, Duration::from_secs(4)), 1.0);
        assert_eq!(phases.seconds(2, Duration::from_secs(4)), 2.0);
    }

    #[test]
    fn without_an_outage_there_is_one_phase() {
        let phases = phases(0, false);
        assert_eq!(phases.count(), 1);
        assert_eq!(phases.of(Duration::from_secs(2)), 0);
        assert_eq!(phases.name(0), "run");
        assert_eq!(phases.seconds(0, Duration::from_millis(3100)), 3.1);
    }

    #[test]
    fn a_warmup_comes_first_and_is_reported_apart() {
        let steady = phases(2, false);
        assert_eq!(steady.count(), 2);
        assert_eq!(steady.of(Duration::from_millis(1999)), 0);
        assert_eq!(steady.of(Duration::from_secs(2)), 1);
        assert_eq!((steady.name(0), steady.name(1)), ("warmup", "steady"));
        assert_eq!(steady.seconds(0, Duration::from_secs(5)), 2.0);
        assert_eq!(steady.seconds(1, Duration::from_secs(5)), 3.0);
        let outage = phases(2, true);
        assert_eq!(outage.count(), 4);
        assert_eq!(outage.of(Duration::from_secs(3)), 2);
        assert_eq!(outage.name(3), "after");
        assert_eq!(outage.seconds(3, Duration::from_millis(5500)), 1.5);
    }
}
