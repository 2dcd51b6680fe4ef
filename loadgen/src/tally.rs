//! Latency and outcome counts of one phase: recorded by each task without sharing, merged
//! once the tasks are done.

use std::time::Duration;

use hdrhistogram::Histogram;
use tierkit::cache::Source;

use crate::backend::Outcome;

/// Largest latency the histograms hold (60 s); slower operations are clamped to it.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Counts and latencies of one phase, kept per task and merged at the end.
#[derive(Clone)]
pub struct Tally {
    pub latency_us: Histogram<u64>,
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
            l1: 0,
            l2: 0,
            loader: 0,
            writes: 0,
            writes_l1_only: 0,
            errors: 0,
        }
    }

    pub fn record(&mut self, took: Duration, outcome: Outcome) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency_us
            .saturating_record(us.clamp(1, MAX_LATENCY_US));
        match outcome {
            Outcome::Read(Source::L1) => self.l1 += 1,
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
        self.l1 += other.l1;
        self.l2 += other.l2;
        self.loader += other.loader;
        self.writes += other.writes;
        self.writes_l1_only += other.writes_l1_only;
        self.errors += other.errors;
    }
}
