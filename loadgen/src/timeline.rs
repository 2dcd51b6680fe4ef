//! Throughput and latency over time: operations counted into fixed-width buckets of the run,
//! for the picture (`--svg`) and the JSON report. Each task records into a bucket of its own and
//! hands it to the shared timeline when it moves on, so the shared one is locked about once per
//! bucket per task, not per operation.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency a bucket holds (60 s), as the phase histograms.
const MAX_LATENCY_US: u64 = 60_000_000;

/// How wide a bucket is for a run of `total`: about 120 points, at least 100 ms.
pub fn width_for(total: Duration) -> Duration {
    (total / 120).max(Duration::from_millis(100))
}

#[derive(Clone)]
struct Bucket {
    ops: u64,
    errors: u64,
    latency_us: Histogram<u64>,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            ops: 0,
            errors: 0,
            // Two significant digits: a picture needs no more, and a bucket stays small.
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 2)
                .expect("constant, valid histogram bounds"),
        }
    }

    fn merge(&mut self, other: &Bucket) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with the same bounds always add");
    }
}

/// The run's buckets, shared by the tasks.
pub struct Timeline {
    start: Instant,
    width: Duration,
    buckets: Mutex<Vec<Bucket>>,
}

impl Timeline {
    pub fn new(start: Instant, width: Duration) -> Arc<Timeline> {
        Arc::new(Timeline {
            start,
            width,
            buckets: Mutex::new(Vec::new()),
        })
    }

    fn index(&self, at: Instant) -> usize {
        (at.saturating_duration_since(self.start).as_nanos() / self.width.as_nanos().max(1))
            as usize
    }

    fn add(&self, index: usize, bucket: &Bucket) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() <= index {
            buckets.resize_with(index + 1, Bucket::new);
        }
        buckets[index].merge(bucket);
    }

    /// One point per bucket: when it started, operations per second, p50 and p99.
    pub fn points(&self) -> Vec<Point> {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let secs = self.width.as_secs_f64();
        buckets
            .iter()
            .enumerate()
            .map(|(i, b)| Point {
                at_s: i as f64 * secs,
                ops_per_sec: b.ops as f64 / secs,
                errors: b.errors,
                p50_us: b.latency_us.value_at_quantile(0.5),
                p99_us: b.latency_us.value_at_quantile(0.99),
            })
            .collect()
    }
}

/// One bucket of the timeline.
#[derive(Serialize, Clone, Copy, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// When the bucket starts, in seconds from the start of the run (warm-up included).
    pub at_s: f64,
    pub ops_per_sec: f64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// One task's current bucket.
pub struct Recorder {
    timeline: Arc<Timeline>,
    index: usize,
    bucket: Bucket,
}

impl Recorder {
    pub fn new(timeline: Arc<Timeline>) -> Recorder {
        Recorder {
            timeline,
            index: 0,
            bucket: Bucket::new(),
        }
    }

    /// An operation that began at `began` and took `took`.
    pub fn record(&mut self, began: Instant, took: Duration, error: bool) {
        let index = self.timeline.index(began);
        if index != self.index {
            self.flush();
            self.index = index;
        }
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.bucket
            .latency_us
            .saturating_record(us.clamp(1, MAX_LATENCY_US));
        self.bucket.ops += 1;
        self.bucket.errors += u64::from(error);
    }

    /// Hands the current bucket to the timeline.
    pub fn flush(&mut self) {
        if self.bucket.ops > 0 {
            self.timeline.add(self.index, &self.bucket);
            self.bucket = Bucket::new();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_land_in_the_bucket_of_their_start() {
        let start = Instant::now();
        let timeline = Timeline::new(start, Duration::from_secs(1));
        let mut a = Recorder::new(timeline.clone());
        let mut b = Recorder::new(timeline.clone());
        a.record(start, Duration::from_micros(100), false);
        b.record(
            start + Duration::from_millis(500),
            Duration::from_micros(300),
            true,
        );
        a.record(
            start + Duration::from_millis(2500),
            Duration::from_millis(9),
            false,
        );
        drop((a, b));
        let points = timeline.points();
        assert_eq!(points.len(), 3);
        assert_eq!((points[0].ops_per_sec, points[0].errors), (2.0, 1));
        assert_eq!(points[1].ops_per_sec, 0.0);
        assert_eq!(points[2].at_s, 2.0);
        assert!(points[2].p99_us >= 8_900, "{:?}", points[2]);
    }

    #[test]
    fn buckets_are_about_a_120th_of_the_run() {
        assert_eq!(
            width_for(Duration::from_secs(60)),
            Duration::from_millis(500)
        );
        assert_eq!(
            width_for(Duration::from_secs(1)),
            Duration::from_millis(100)
        );
    }
}
