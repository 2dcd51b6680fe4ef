//! Latency and outcome counts of one phase: recorded by each task without sharing, merged
//! once the tasks are done.

use std::time::Duration;

use hdrhistogram::Histogram;
use tierkit::cache::Source;

use crate::backend::Outcome;

/// Largest latency the histograms hold (60 s); slower operations are clamped to it.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Largest L1-answered read the nanosecond histogram holds (10 ms), clamped like the above.
const MAX_L1_READ_NS: u64 = 10_000_000;

/// Counts and latencies of one phase, kept per task and merged at the end.
#[derive(Clone)]
pub struct Tally {
    pub latency_us: Histogram<u64>,
    /// Reads answered by L1 alone, from call to answer (an open loop's wait for a late
    /// operation left out), in nanoseconds with two significant digits (so 64 tasks' phases
    /// stay small): the service time of a hit, which whole microseconds cannot tell apart
    /// from a peer's.
    pub l1_read_ns: Histogram<u64>,
    pub l1: u64,
    pub l2: u64,
    pub loader: u64,
    pub writes: u64,
    pub writes_l1_only: u64,
    pub errors: u64,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant, valid histogram bounds"),
            l1_read_ns: Histogram::new_with_bounds(1, MAX_L1_READ_NS, 2)
                .expect("constant, valid histogram bounds"),
            l1: 0,
            l2: 0,
            loader: 0,
            writes: 0,
            writes_l1_only: 0,
            errors: 0,
        }
    }

    /// Records an operation that took `took` from when it was due (open loop) or began, and
    /// `served` from its call to its answer.
    pub fn record(&mut self, took: Duration, served: Duration, outcome: Outcome) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency_us
            .saturating_record(us.clamp(1, MAX_LATENCY_US));
        match outcome {
            Outcome::Read(Source::L1) => {
                self.l1 += 1;
                let ns = u64::try_from(served.as_nanos()).unwrap_or(u64::MAX);
                self.l1_read_ns
                    .saturating_record(ns.clamp(1, MAX_L1_READ_NS));
            }
            Outcome::Read(Source::L2) => self.l2 += 1,
            // The loader, and any source a later tierkit adds: neither cache tier answered.
            Outcome::Read(_) => self.loader += 1,
            Outcome::Write { reached_redis } => {
                self.writes += 1;
                if !reached_redis {
                    self.writes_l1_only += 1;
                }
            }
            Outcome::Error => self.errors += 1,
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with the same bounds always add");
        self.l1_read_ns
            .add(&other.l1_read_ns)
            .expect("histograms with the same bounds always add");
        self.l1 += other.l1;
        self.l2 += other.l2;
        self.loader += other.loader;
        self.writes += other.writes;
        self.writes_l1_only += other.writes_l1_only;
        self.errors += other.errors;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_l1_answered_reads_give_a_service_time_from_their_call() {
        let mut t = Tally::new();
        // Due 2 ms before its call (an open loop's late operation), served in 800 ns.
        let (took, served) = (Duration::from_micros(2_000), Duration::from_nanos(800));
        t.record(took, served, Outcome::Read(Source::L1));
        t.record(took, Duration::from_micros(900), Outcome::Read(Source::L2));
        t.record(
            took,
            Duration::from_micros(900),
            Outcome::Write {
                reached_redis: true,
            },
        );
        assert_eq!(t.latency_us.len(), 3);
        assert_eq!(t.l1_read_ns.len(), 1);
        let p50 = t.l1_read_ns.value_at_quantile(0.5);
        assert!((790..=810).contains(&p50), "{p50}");

        let mut merged = Tally::new();
        merged.merge(&t);
        merged.merge(&t);
        assert_eq!((merged.l1_read_ns.len(), merged.l1), (2, 2));
    }
}
