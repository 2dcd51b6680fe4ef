//! `loadgen`: a workload harness for tierkit's two-tier cache.
//!
//! Drives cache-aside reads (`get_or_set`, with a simulated database as the loader) and
//! write-through writes (`set`) over zipf-distributed keys from many tasks and any number of
//! tierkit instances in one process (each instance with its own L1, all sharing one Redis), and
//! reports throughput, latency percentiles (HdrHistogram), where reads were answered (L1, L2,
//! loader), what compression saved and what encoding cost per namespace, and the memory Redis
//! used. It can take Redis away for the middle third of the run and report the three phases
//! apart, and it can run the same workload through the `cached` crate's Redis store.
//!
//! By default it starts its own `redis-server` on a free loopback port through the test harness
//! (`tests/support`), so it needs `redis-server` on `PATH` (or `REDIS_SERVER_BIN`) and never
//! touches another Redis unless told to with `--redis-url`.
//!
//! ```sh
//! cargo run --release -p tierkit-loadgen -- --duration 20s
//! cargo run --release -p tierkit-loadgen -- --duration 30s --outage        # kill, then restart
//! cargo run --release -p tierkit-loadgen -- --duration 30s --outage hang   # SIGSTOP, then SIGCONT
//! cargo run --release -p tierkit-loadgen -- --duration 20s --peer cached   # tierkit, then cached
//! cargo run --release -p tierkit-loadgen -- --duration 20s --instances 2
//! cargo run --release -p tierkit-loadgen -- --duration 20s --embedded      # no Redis at all
//! cargo run --release -p tierkit-loadgen -- --duration 20s --json > run.json
//! ```
//!
//! Flags (defaults in brackets; `--help` lists them too):
//!
//! - `--duration` [30s]: how long the workload runs (`500ms`, `20s`, `2m`, or plain seconds).
//! - `--keys` [100000]: distinct keys per namespace.
//! - `--skew` [1.0]: zipf exponent of key popularity; 0 is uniform, higher is a hotter head.
//! - `--value-size` [1024]: bytes of text in each `pages` value.
//! - `--compressible` [0.7]: share of that text that is repetitive (the rest is random), 0..1.
//! - `--read-ratio` [0.9]: share of operations that are reads, 0..1.
//! - `--instances` [1]: tierkit instances in the process, each with its own L1.
//! - `--concurrency` [64]: tasks issuing operations, spread round-robin over the instances.
//! - `--rate` [none]: operations per second offered in total, paced evenly over the tasks.
//!   Without it every task goes as fast as it can, which measures capacity; with it two
//!   backends compare at the same load. Latency counts from when an operation starts.
//! - `--load-latency-us` [1000]: the simulated database's answer time on a miss (tokio's timer
//!   has millisecond granularity, so anything from 1 to 1000 µs sleeps about 1 ms; 0 = none).
//! - `--l1-mib` [tierkit's default, 64]: L1 capacity of each instance.
//! - `--outage [kill|hang]`: stop (SIGKILL) or freeze (SIGSTOP) the harness's redis-server for
//!   the middle third of the run, then restart or resume it. Not with `--redis-url`.
//! - `--peer cached`: after the tierkit run, run the same workload through
//!   `cached::AsyncRedisCache` (JSON values, a `ConnectionManager`) on the same Redis.
//! - `--embedded`: tierkit with no Redis (L1 and loader only).
//! - `--redis-url URL`: use this Redis instead of starting one. Its memory figure then includes
//!   whatever else it holds, and nothing is flushed.
//! - `--json`: print one JSON document instead of the text report (and no progress bar).
//! - `--seed` [1]: seed of the key and operation choices.
//!
//! Two namespaces share the keys: `pages` (three reads or writes in four), holding
//! `--value-size` bytes of text that compresses as `--compressible` says, and `users` (one in
//! four), small records under the codec's 1 KiB compression threshold, so the per-namespace
//! figures show what compression saves and costs where it applies and where it does not.

mod args;
mod backend;
mod database;
mod phases;
mod report;
#[path = "../../tests/support/mod.rs"]
mod support;
mod tally;
mod workload;

use std::error::Error;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tierkit::cache::CacheStats;

use args::{Args, OutageKind, PeerKind};
use backend::Backend;
use database::{Corpus, Database};
use phases::Phases;
use report::{HealthChange, NamespaceReport, OutageTimes, PhaseReport, Report, RunReport, Text};
use support::RedisServer;
use tally::Tally;
use workload::Mix;

type BoxError = Box<dyn Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

fn main() {
    let args = args::parse();
    if let Err(e) = run(args) {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let mut server = match (&args.redis_url, args.embedded) {
        (None, false) => Some(RedisServer::start()),
        _ => None,
    };
    let url = match (&args.redis_url, &server) {
        (Some(url), _) => Some(url.clone()),
        (None, Some(s)) => Some(s.url()),
        (None, None) => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let corpus = Arc::new(Corpus::new(args.value_size, args.compressible, args.seed));

    let mut runs = Vec::new();
    let backends: &[&str] = match args.peer {
        Some(PeerKind::Cached) => &["tierkit", "cached"],
        None => &["tierkit"],
    };
    for (n, name) in backends.iter().enumerate() {
        if n > 0 {
            // Each run starts from an empty Redis, so memory and hit ratios compare; only
            // done on the harness's own server.
            if let Some(s) = &server {
                s.flushall();
            }
        }
        let backend = Arc::new(rt.block_on(Backend::connect(name, &args, url.as_deref()))?);
        let start = Instant::now();
        let (report, outage) = std::thread::scope(|scope| {
            let outage = match (args.outage, server.as_mut()) {
                (Some(kind), Some(s)) => {
                    let backend = &*backend;
                    Some(scope.spawn(move || outage_driver(s, kind, start, args.duration, backend)))
                }
                _ => None,
            };
            let report = rt.block_on(workload(&args, backend.clone(), &corpus, start));
            let outage = outage.map(|h| h.join().expect("the outage driver does not panic"));
            (report, outage)
        });
        let mut report = report?;
        if let Some((times, snapshots)) = outage {
            report.outage = Some(times);
            let stats = |s: &[(String, CacheStats)]| {
                s.iter().fold(CacheStats::default(), |acc, (_, x)| acc + *x)
            };
            let end = stats(&backend.namespace_stats());
            let marks = [
                CacheStats::default(),
                stats(&snapshots[0]),
                stats(&snapshots[1]),
                end,
            ];
            if matches!(*backend, Backend::Tierkit(_)) {
                for (i, p) in report.phases.iter_mut().enumerate() {
                    p.l2_errors = Some(marks[i + 1].l2_errors - marks[i].l2_errors);
                    p.l2_skipped = Some(marks[i + 1].l2_skipped - marks[i].l2_skipped);
                }
            }
        }
        if let Some(url) = &url {
            let (memory, keys) = rt.block_on(redis_figures(url));
            report.redis_used_memory = memory;
            report.redis_keys = keys;
        }
        runs.push(report);
        drop(backend);
    }

    let report = Report::new(&args, runs);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", Text(&report));
    }
    Ok(())
}

/// Runs `--concurrency` tasks until the deadline and merges their tallies.
async fn workload(
    args: &Args,
    backend: Arc<Backend>,
    corpus: &Arc<Corpus>,
    start: Instant,
) -> Result<RunReport> {
    let phases = Phases {
        outage: args.outage.is_some(),
        duration: args.duration,
    };
    let mix = Mix::new(args)?;
    let db = Database {
        corpus: corpus.clone(),
        latency: Duration::from_micros(args.load_latency_us),
    };
    let end = start + args.duration;
    let ops = Arc::new(AtomicU64::new(0));

    let progress = progress_bar(args);
    let health = health_timeline(&backend, start, end);
    let ticker = async {
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let elapsed = start.elapsed().min(args.duration);
            progress.set_position(elapsed.as_millis() as u64);
            let rate = ops.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64().max(1e-3);
            progress.set_message(format!("{} {rate:.0} ops/s", backend.label()));
        }
    };
    // Spawned, as a service spawns a task per request stream, so the runtime's workers share
    // the load.
    let tasks: Vec<_> = (0..args.concurrency as usize)
        .map(|t| {
            let (backend, db, ops) = (backend.clone(), db.clone(), ops.clone());
            let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(t as u64);
            // Paced tasks start staggered over one interval, so the load is even, not bursty.
            let pace = args.rate.map(|rate| {
                let every = Duration::from_secs_f64(args.concurrency as f64 / rate as f64);
                (
                    every,
                    start + every.mul_f64(t as f64 / args.concurrency as f64),
                )
            });
            tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(seed);
                let mut tallies = vec![Tally::new(); phases.count()];
                let mut pace = pace;
                loop {
                    if let Some((every, due)) = &mut pace {
                        tokio::time::sleep_until((*due).into()).await;
                        *due += *every;
                    }
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    let op = mix.draw(&mut rng);
                    let outcome = backend.run(t, op, &db).await;
                    tallies[phases.of(began - start)].record(began.elapsed(), outcome);
                    ops.fetch_add(1, Ordering::Relaxed);
                }
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
        namespaces,
        redis_used_memory: None,
        redis_keys: None,
        health,
        outage: None,
    })
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

/// Takes the server away at one third of the run and brings it back at two thirds, taking a
/// snapshot of the counters just before each, so each phase's Redis errors can be told apart.
fn outage_driver(
    server: &mut RedisServer,
    kind: OutageKind,
    start: Instant,
    duration: Duration,
    backend: &Backend,
) -> (OutageTimes, [Vec<(String, CacheStats)>; 2]) {
    let sleep_until =
        |at: Instant| std::thread::sleep(at.saturating_duration_since(Instant::now()));
    sleep_until(start + duration / 3);
    let before = backend.namespace_stats();
    match kind {
        OutageKind::Kill => server.stop(),
        OutageKind::Hang => server.hang(),
    }
    let down_at_ms = start.elapsed().as_millis() as u64;
    sleep_until(start + duration * 2 / 3);
    let during = backend.namespace_stats();
    match kind {
        // Restart waits until the server answers PING again.
        OutageKind::Kill => server.restart(),
        OutageKind::Hang => server.resume(),
    }
    let back_at_ms = start.elapsed().as_millis() as u64;
    (
        OutageTimes {
            down_at_ms,
            back_at_ms,
        },
        [before, during],
    )
}

/// `used_memory` and `DBSIZE`, or `None` where Redis does not answer within a second.
async fn redis_figures(url: &str) -> (Option<u64>, Option<u64>) {
    let query = async {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await?;
        let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
        let memory = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok());
        Ok::<_, redis::RedisError>((memory, Some(keys)))
    };
    match tokio::time::timeout(Duration::from_secs(1), query).await {
        Ok(Ok(figures)) => figures,
        _ => (None, None),
    }
}
