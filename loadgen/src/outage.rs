//! `--outage`: take the harness's redis-server away for the middle third of a run, and split
//! tierkit's Redis error counts by phase from counter snapshots taken at the boundaries.

use std::time::{Duration, Instant};

use tierkit::cache::CacheStats;

use crate::args::OutageKind;
use crate::backend::Backend;
use crate::report::{OutageTimes, RunReport};
use crate::support::RedisServer;

/// What an outage left to report: when it happened, and the counters at its two boundaries.
pub struct Outage {
    times: OutageTimes,
    /// Every namespace's counters added up, just before the server went and came back.
    marks: [CacheStats; 2],
}

/// Takes the server away at one third of the run and brings it back at two thirds, taking a
/// snapshot of the counters just before each, so each phase's Redis errors can be told apart.
pub fn cause(
    server: &mut RedisServer,
    kind: OutageKind,
    start: Instant,
    duration: Duration,
    backend: &Backend,
) -> Outage {
    let sleep_until =
        |at: Instant| std::thread::sleep(at.saturating_duration_since(Instant::now()));
    sleep_until(start + duration / 3);
    let before = total(backend);
    match kind {
        OutageKind::Kill => server.stop(),
        OutageKind::Hang => server.hang(),
    }
    let down_at_ms = start.elapsed().as_millis() as u64;
    sleep_until(start + duration * 2 / 3);
    let during = total(backend);
    match kind {
        // Restart waits until the server answers PING again.
        OutageKind::Kill => server.restart(),
        OutageKind::Hang => server.resume(),
    }
    let back_at_ms = start.elapsed().as_millis() as u64;
    Outage {
        times: OutageTimes {
            down_at_ms,
            back_at_ms,
        },
        marks: [before, during],
    }
}

impl Outage {
    /// Adds the outage times to `report` and, for tierkit, each phase's failed and skipped
    /// Redis calls: the difference of the counters at the phase's two ends.
    pub fn apply_to(self, report: &mut RunReport, backend: &Backend) {
        report.outage = Some(self.times);
        let marks = [
            CacheStats::default(),
            self.marks[0],
            self.marks[1],
            total(backend),
        ];
        if matches!(backend, Backend::Tierkit(_)) {
            for (i, p) in report.phases.iter_mut().enumerate() {
                p.l2_errors = Some(marks[i + 1].l2_errors - marks[i].l2_errors);
                p.l2_skipped = Some(marks[i + 1].l2_skipped - marks[i].l2_skipped);
            }
        }
    }
}

/// Every namespace's counters of every instance, added up.
fn total(backend: &Backend) -> CacheStats {
    backend
        .namespace_stats()
        .iter()
        .fold(CacheStats::default(), |acc, (_, x)| acc + *x)
}
