//! One run of the workload against one backend: `--concurrency` tasks, closed-loop or paced at
//! `--rate`, until the deadline; then their tallies merged into a `RunReport`. A progress bar
//! and tierkit's health timeline are kept alongside.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::args::Args;
use crate::backend::{Backend, Outcome};
use crate::database::{Corpus, Database};
use crate::phases::Phases;
use crate::report::{HealthChange, NamespaceReport, PhaseReport, RunReport};
use crate::tally::Tally;
use crate::timeline::{self, Recorder, Timeline};
use crate::workload::Mix;
use crate::Result;

/// Operations a task counts on its own before adding them to the shared progress count.
const COUNT_EVERY: u64 = 64;

/// Runs `--concurrency` tasks until the deadline and merges their tallies.
pub async fn drive(
    args: &Args,
    backend: Arc<Backend>,
    corpus: &Arc<Corpus>,
    start: Instant,
) -> Result<RunReport> {
    let phases = Phases {
        warmup: args.warmup,
        outage: args.outage.is_some(),
        duration: args.duration,
    };
    let total = args.warmup + args.duration;
    let timeline = Timeline::new(start, timeline::width_for(total));
    let mix = Mix::new(args)?;
    // Leaked, one small struct per run: a loader that must be `'static` then captures a
    // plain reference, where an `Arc` clone per call would make every operation of every
    // task bump one shared count (a cache line both cores fight over) that the peers with a
    // borrowed loader never touch.
    let db: &'static Database = Box::leak(Box::new(Database {
        corpus: corpus.clone(),
        latency: Duration::from_micros(args.load_latency_us),
    }));
    let end = start + total;
    let ops = Arc::new(AtomicU64::new(0));

    let progress = progress_bar(args);
    let health = health_timeline(&backend, start, end);
    let ticker = async {
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let elapsed = start.elapsed().min(total);
            progress.set_position(elapsed.as_millis() as u64);
            let rate = ops.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64().max(1e-3);
            progress.set_message(format!("{} {rate:.0} ops/s", backend.label()));
        }
    };
    // Spawned, as a service spawns a task per request stream, so the runtime's workers share
    // the load.
    let tasks: Vec<_> = (0..args.concurrency as usize)
        .map(|t| {
            let (backend, ops) = (backend.clone(), ops.clone());
            let mut timeline = Recorder::new(timeline.clone());
            let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(t as u64);
            let yield_every = args.yield_every;
            let mut pace = args
                .rate
                .map(|rate| Pace::new(rate, args.concurrency, t, start));
            tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(seed);
                let mut tallies = vec![Tally::new(); phases.count()];
                let mut since_yield = 0;
                // Added to the shared count in batches: one line both cores write on every
                // operation would be a cost (and a false-sharing hazard next to a backend's
                // own data) that only the harness has.
                let mut uncounted = 0;
                loop {
                    // Open loop at a rate: a late operation's time runs from when it was due.
                    let began = match &mut pace {
                        Some(pace) => pace.wait().await,
                        None => Instant::now(),
                    };
                    if began >= end {
                        break;
                    }
                    let op = mix.draw(&mut rng);
                    let called = Instant::now();
                    let outcome = backend.run(t, op, db).await;
                    let done = Instant::now();
                    let took = done - began;
                    timeline.record(began, took, matches!(outcome, Outcome::Error));
                    tallies[phases.of(began - start)].record(took, done - called, outcome);
                    uncounted += 1;
                    if uncounted == COUNT_EVERY {
                        ops.fetch_add(uncounted, Ordering::Relaxed);
                        uncounted = 0;
                    }
                    since_yield += 1;
                    if since_yield == yield_every {
                        since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                }
                ops.fetch_add(uncounted, Ordering::Relaxed);
                tallies
            })
        })
        .collect();
    let (per_task, _, health) = tokio::join!(futures_util::future::join_all(tasks), ticker, health);
    progress.finish_and_clear();
    let finished = start.elapsed();

    let mut merged = vec![Tally::new(); phases.count()];
    for tallies in per_task {
        for (m, t) in merged.iter_mut().zip(&tallies?) {
            m.merge(t);
        }
    }
    let phases = merged
        .iter()
        .enumerate()
        .map(|(i, t)| PhaseReport::new(phases.name(i), phases.seconds(i, finished), t))
        .collect();
    let namespaces = backend
        .namespace_stats()
        .into_iter()
        .map(|(name, stats)| NamespaceReport::new(name, stats))
        .collect();
    Ok(RunReport {
        backend: backend.label(),
        phases,
        timeline: timeline.points(),
        namespaces,
        redis_used_memory: None,
        redis_keys: None,
        redis_cpu_us_per_op: None,
        redis_cpu_share: None,
        health,
        outage: None,
    })
}

/// One task's share of `--rate`: an operation every `every`, the next one due at `due`.
struct Pace {
    every: Duration,
    due: Instant,
    /// When the task last woke from waiting for an operation to be due.
    woke: Instant,
}

impl Pace {
    /// Task `t` of `tasks`. The tasks start staggered over one interval, so the load is even,
    /// not bursty.
    fn new(rate: u64, tasks: u64, t: usize, start: Instant) -> Pace {
        let every = Duration::from_secs_f64(tasks as f64 / rate as f64);
        Pace {
            every,
            due: start + every.mul_f64(t as f64 / tasks as f64),
            woke: start,
        }
    }

    /// Sleeps until the next operation is due, and returns when its time starts. The schedule
    /// does not slip when an operation runs late: the ones behind it are due at once, so the
    /// offered rate holds, and their wait behind it counts in their latency (no coordinated
    /// omission). What does not count is the timer's own lateness (tokio wakes a sleeping task
    /// up to a millisecond late, so with operations due closer together than that, several
    /// fall due during one sleep): an operation that fell due while the task slept starts
    /// when it woke.
    async fn wait(&mut self) -> Instant {
        let due = self.due;
        self.due += self.every;
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
            self.woke = Instant::now();
        }
        due.max(self.woke)
    }
}

fn progress_bar(args: &Args) -> ProgressBar {
    // Only for a person watching: not in JSON mode, not into a pipe, not for short runs.
    if args.json || !std::io::stderr().is_terminal() || args.duration < Duration::from_secs(3) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(args.duration.as_millis() as u64);
    if let Ok(style) = ProgressStyle::with_template("[{elapsed_precise}] {wide_bar} {msg}") {
        bar.set_style(style);
    }
    bar
}

/// Health transitions of the first tierkit instance until `end`, in ms since `start`.
async fn health_timeline(backend: &Backend, start: Instant, end: Instant) -> Vec<HealthChange> {
    let Backend::Tierkit(instances) = backend else {
        return Vec::new();
    };
    let Some(health) = instances.first().and_then(|i| i.kit.health()) else {
        return Vec::new();
    };
    let mut rx = health.subscribe();
    let mut changes = vec![HealthChange {
        at_ms: 0,
        state: rx.borrow_and_update().state,
    }];
    let deadline = tokio::time::Instant::from_std(end);
    while let Ok(Ok(())) = tokio::time::timeout_at(deadline, rx.changed()).await {
        let state = rx.borrow_and_update().state;
        if changes.last().is_some_and(|c| c.state != state) {
            changes.push(HealthChange {
                at_ms: start.elapsed().as_millis() as u64,
                state,
            });
        }
    }
    changes
}
