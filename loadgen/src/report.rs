//! What a run found: the records that `--json` prints as they are and the text report
//! renders, and how they are computed from the tallies and tierkit's counters.

mod text;

use serde::Serialize;
use tierkit::cache::CacheStats;
use tierkit::health::HealthState;

use crate::args::Args;
use crate::tally::Tally;
use crate::timeline::Point;

pub use self::text::Text;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// The service time of reads L1 answered alone, in nanoseconds.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L1Read {
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub mean_ns: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseReport {
    pub name: &'static str,
    pub seconds: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub latency: Latency,
    /// `None` for a phase without L1-answered reads (`cached` has no L1; amalgam counts
    /// every hit as one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l1_read: Option<L1Read>,
    pub reads: u64,
    /// Shares of reads answered by L1, Redis and the loader.
    pub l1_ratio: f64,
    pub l2_ratio: f64,
    pub loader_ratio: f64,
    pub writes: u64,
    pub writes_l1_only: u64,
    pub errors: u64,
    /// tierkit only: Redis calls that failed or timed out, and calls that skipped Redis
    /// because health was Down, in this phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l2_errors: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l2_skipped: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceReport {
    pub name: String,
    /// tierkit's counters added up over the instances.
    pub stats: CacheStats,
    pub hit_ratio: f64,
    pub bytes_saved: u64,
    /// `stored_bytes / encoded_bytes`.
    pub stored_ratio: f64,
    pub encode_cpu_ms: f64,
    pub encode_ns_per_kib: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthChange {
    pub at_ms: u64,
    pub state: HealthState,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    pub backend: &'static str,
    pub phases: Vec<PhaseReport>,
    /// Throughput and latency over time, from the start of the run (warm-up included).
    pub timeline: Vec<Point>,
    pub namespaces: Vec<NamespaceReport>,
    /// `used_memory` from `INFO memory` after the run, when Redis answered.
    pub redis_used_memory: Option<u64>,
    /// Keys in Redis after the run (`DBSIZE`), when Redis answered.
    pub redis_keys: Option<u64>,
    /// The Redis server's CPU time (user and system, every client's) in the measured part, per
    /// operation of that part, in µs; not measured through an outage (a restart resets the
    /// clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_cpu_us_per_op: Option<f64>,
    /// The same as a share of one core over the measured part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_cpu_share: Option<f64>,
    /// tierkit, first instance: health transitions during the run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<HealthChange>,
    /// With `--outage`: when the server went away and when it answered again, in ms from start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outage: Option<OutageTimes>,
}

impl RunReport {
    /// Records `spent` seconds of Redis CPU over the measured part (the phases after a
    /// `warmup`); a failed reading (`None`) records nothing.
    pub fn set_redis_cpu(&mut self, spent: Option<f64>, warmup: std::time::Duration) {
        let measured = self.phases.iter().skip(usize::from(!warmup.is_zero()));
        let (ops, seconds) = measured.fold((0, 0.0), |(o, s), p| (o + p.ops, s + p.seconds));
        let Some(spent) = spent.filter(|s| *s >= 0.0 && ops > 0 && seconds > 0.0) else {
            return;
        };
        self.redis_cpu_us_per_op = Some(spent * 1e6 / ops as f64);
        self.redis_cpu_share = Some(spent / seconds);
    }
}

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub struct OutageTimes {
    pub down_at_ms: u64,
    pub back_at_ms: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub settings: Args,
    pub redis: String,
    pub runs: Vec<RunReport>,
}

impl PhaseReport {
    /// The figures of one phase, from its merged tally; the Redis counts come later, from the
    /// outage driver's snapshots.
    pub fn new(name: &'static str, seconds: f64, t: &Tally) -> PhaseReport {
        let h = &t.latency_us;
        let reads = t.l1 + t.l2 + t.loader;
        // Failed operations are counted apart (errors), so the ratios are over answered reads.
        let ops = h.len();
        PhaseReport {
            name,
            seconds,
            ops,
            ops_per_sec: ops as f64 / seconds.max(1e-9),
            latency: Latency {
                p50_us: h.value_at_quantile(0.5),
                p99_us: h.value_at_quantile(0.99),
                p999_us: h.value_at_quantile(0.999),
                max_us: h.max(),
                mean_us: h.mean(),
            },
            l1_read: (!t.l1_read_ns.is_empty()).then(|| L1Read {
                p50_ns: t.l1_read_ns.value_at_quantile(0.5),
                p99_ns: t.l1_read_ns.value_at_quantile(0.99),
                mean_ns: t.l1_read_ns.mean(),
            }),
            reads,
            l1_ratio: ratio(t.l1, reads),
            l2_ratio: ratio(t.l2, reads),
            loader_ratio: ratio(t.loader, reads),
            writes: t.writes,
            writes_l1_only: t.writes_l1_only,
            errors: t.errors,
            l2_errors: None,
            l2_skipped: None,
        }
    }
}

impl NamespaceReport {
    pub fn new(name: String, stats: CacheStats) -> NamespaceReport {
        NamespaceReport {
            hit_ratio: stats.hit_ratio(),
            bytes_saved: stats.bytes_saved(),
            stored_ratio: ratio(stats.stored_bytes, stats.encoded_bytes),
            encode_cpu_ms: stats.encode_nanos as f64 / 1e6,
            encode_ns_per_kib: ratio(stats.encode_nanos, stats.encoded_bytes) * 1024.0,
            name,
            stats,
        }
    }
}

impl Report {
    pub fn new(args: &Args, runs: Vec<RunReport>) -> Report {
        Report {
            redis: match (&args.redis_url, args.embedded) {
                (_, true) => "none (embedded)".into(),
                (Some(_), _) => "given with --redis-url".into(),
                (None, false) => "private redis-server started by the harness".into(),
            },
            settings: args.clone(),
            runs,
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn phase(name: &'static str, ops: u64, seconds: f64) -> PhaseReport {
        PhaseReport {
            name,
            seconds,
            ops,
            ops_per_sec: ops as f64 / seconds,
            latency: Latency {
                p50_us: 1,
                p99_us: 1,
                p999_us: 1,
                max_us: 1,
                mean_us: 1.0,
            },
            l1_read: None,
            reads: ops,
            l1_ratio: 1.0,
            l2_ratio: 0.0,
            loader_ratio: 0.0,
            writes: 0,
            writes_l1_only: 0,
            errors: 0,
            l2_errors: None,
            l2_skipped: None,
        }
    }

    fn run(phases: Vec<PhaseReport>) -> RunReport {
        RunReport {
            backend: "tierkit",
            phases,
            timeline: Vec::new(),
            namespaces: Vec::new(),
            redis_used_memory: None,
            redis_keys: None,
            redis_cpu_us_per_op: None,
            redis_cpu_share: None,
            health: Vec::new(),
            outage: None,
        }
    }

    #[test]
    fn redis_cpu_counts_the_measured_part_only() {
        let mut warm = run(vec![
            phase("warmup", 9_000_000, 9.0),
            phase("steady", 2_000_000, 4.0),
        ]);
        warm.set_redis_cpu(Some(1.0), Duration::from_secs(9));
        assert_eq!(warm.redis_cpu_us_per_op, Some(0.5));
        assert_eq!(warm.redis_cpu_share, Some(0.25));

        let mut cold = run(vec![phase("run", 1_000_000, 2.0)]);
        cold.set_redis_cpu(Some(1.0), Duration::ZERO);
        assert_eq!(cold.redis_cpu_us_per_op, Some(1.0));

        // No reading, or a clock that went back (a restarted server): nothing recorded.
        for spent in [None, Some(-1.0)] {
            let mut r = run(vec![phase("run", 10, 1.0)]);
            r.set_redis_cpu(spent, Duration::ZERO);
            assert_eq!((r.redis_cpu_us_per_op, r.redis_cpu_share), (None, None));
        }
    }
}
