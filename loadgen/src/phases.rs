//! How a run is cut into phases: one, or before, during and after an outage.

use std::time::Duration;

/// Phase boundaries: one phase, or before / during / after an outage in thirds of the run.
#[derive(Clone, Copy)]
pub struct Phases {
    pub outage: bool,
    pub duration: Duration,
}

impl Phases {
    const NAMES: [&'static str; 3] = ["before", "during", "after"];

    pub fn count(self) -> usize {
        if self.outage {
            3
        } else {
            1
        }
    }

    /// The phase of an operation that began `since_start` into the run.
    pub fn of(self, since_start: Duration) -> usize {
        if !self.outage {
            return 0;
        }
        let third = self.duration / 3;
        ((since_start.as_nanos() / third.as_nanos().max(1)) as usize).min(2)
    }

    pub fn name(self, i: usize) -> &'static str {
        if self.outage {
            Self::NAMES[i]
        } else {
            "run"
        }
    }

    /// How long phase `i` lasted, the run having taken `finished`.
    pub fn seconds(self, i: usize, finished: Duration) -> f64 {
        if self.outage {
            let third = self.duration.as_secs_f64() / 3.0;
            // The last phase also holds the operations in flight at the deadline.
            if i == 2 {
                finished.as_secs_f64() - 2.0 * third
            } else {
                third
            }
        } else {
            finished.as_secs_f64()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_cuts_the_run_in_thirds() {
        let phases = Phases {
            outage: true,
            duration: Duration::from_secs(3),
        };
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
        let phases = Phases {
            outage: false,
            duration: Duration::from_secs(3),
        };
        assert_eq!(phases.count(), 1);
        assert_eq!(phases.of(Duration::from_secs(2)), 0);
        assert_eq!(phases.name(0), "run");
        assert_eq!(phases.seconds(0, Duration::from_millis(3100)), 3.1);
    }
}
