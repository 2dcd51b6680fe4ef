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
    /// Every namespace's counters added up at the phase boundaries: the end of the warm-up
    /// (when there is one), and just before the server went and came back.
    marks: Vec<CacheStats>,
}

/// Takes the server away at one third of the measured part (which begins at `measured` and
/// lasts `duration`) and brings it back at two thirds, taking a snapshot of the counters just
/// before each, so each phase's Redis errors can be told apart. Times are reported from
/// `start`, the start of the run.
pub fn cause(
    server: &mut RedisServer,
    kind: OutageKind,
    measured: Instant,
    duration: Duration,
    start: Instant,
    backend: &Backend,
) -> Outage {
    let sleep_until =
        |at: Instant| std::thread::sleep(at.saturating_duration_since(Instant::now()));
    let mut marks = Vec::new();
    if measured > start {
        sleep_until(measured);
        marks.push(total(backend));
    }
    sleep_until(measured + duration / 3);
    marks.push(total(backend));
    match kind {
        OutageKind::Kill => server.stop(),
        OutageKind::Hang => server.hang(),
    }
    let down_at_ms = start.elapsed().as_millis() as u64;
    sleep_until(measured + duration * 2 / 3);
    marks.push(total(backend));
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
        marks,
    }
}

impl Outage {
    /// Adds the outage times to `report` and, for tierkit, each phase's failed and skipped
    /// Redis calls: the difference of the counters at the phase's two ends.
    pub fn apply_to(self, report: &mut RunReport, backend: &Backend) {
        report.outage = Some(self.times);
        let marks: Vec<CacheStats> = std::iter::once(CacheStats::default())
            .chain(self.marks)
            .chain([total(backend)])
            .collect();
        if matches!(backend, Backend::Tierkit(_)) {
            for (p, ends) in report.phases.iter_mut().zip(marks.windows(2)) {
                p.l2_errors = Some(ends[1].l2_errors - ends[0].l2_errors);
                p.l2_skipped = Some(ends[1].l2_skipped - ends[0].l2_skipped);
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
