//! `loadgen`: a workload harness for tierkit's two-tier cache.
//!
//! Drives cache-aside reads (`get_or_set`, with a simulated database as the loader) and
//! write-through writes (`set`) over zipf-distributed keys from many tasks and any number of
//! tierkit instances in one process (each instance with its own L1, all sharing one Redis), and
//! reports throughput, latency percentiles (HdrHistogram), the service time of reads L1 answered
//! (from call to answer, in nanoseconds), where reads were answered (L1, L2,
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
//! cargo run --release -p tierkit-loadgen -- --warmup 10s --duration 30s --rate 50000 \
//!     --outage hang --svg hang.svg                                          # a picture
//! ```
//!
//! Flags (defaults in brackets; `--help` lists them too):
//!
//! - `--duration` [30s]: how long the workload is measured (`500ms`, `20s`, `2m`, or plain
//!   seconds), after the warm-up.
//! - `--warmup` [0s]: the same workload first, for this long, reported as a `warmup` phase of
//!   its own; the measured part is then the `steady` phase (or the outage's three). Give one
//!   for steady-state figures: a cold start is dominated by the loader.
//! - `--keys` [100000]: distinct keys per namespace.
//! - `--skew` [1.0]: zipf exponent of key popularity; 0 is uniform, higher is a hotter head.
//! - `--value-size` [1024]: bytes of text in each `pages` value.
//! - `--compressible` [0.7]: share of that text that is repetitive (the rest is random), 0..1.
//! - `--read-ratio` [0.9]: share of operations that are reads, 0..1.
//! - `--instances` [1]: tierkit instances in the process, each with its own L1.
//! - `--concurrency` [64]: tasks issuing operations, spread round-robin over the instances.
//! - `--rate` [none]: operations per second offered in total, paced evenly over the tasks,
//!   open loop. Without it every task goes as fast as it can, which measures capacity; with it
//!   two backends compare at the same load. An operation held back by a slow one before it
//!   counts from when it was due, so a stall counts for every operation it held back (no
//!   coordinated omission); the timer's own lateness (tokio wakes a task up to a millisecond
//!   late) is the harness's and does not count.
//! - `--yield-every` [64]: each task yields to the runtime after this many operations (0:
//!   never), as a service's request loop does at its awaits. A peer whose hits never yield
//!   would otherwise keep its worker from every other task while it hits (its timers and I/O
//!   wait), and its throughput would count that starvation.
//! - `--load-latency-us` [1000]: the simulated database's answer time on a miss (tokio's timer
//!   has millisecond granularity, so anything from 1 to 1000 µs sleeps about 1 ms; 0 = none).
//! - `--l1-mib` [tierkit's default, 64]: L1 capacity of each instance.
//! - `--outage [kill|hang]`: stop (SIGKILL) or freeze (SIGSTOP) the harness's redis-server for
//!   the middle third of the run, then restart or resume it. Not with `--redis-url`.
//! - `--peer amalgam|cached|hand-rolled|all`: after the tierkit run, run the same workload
//!   through amalgam-cache 0.4 (moka L1, Redis L2 and backplane, JSON values, 100 ms L2
//!   timeouts, 1 s circuit breakers; its hits are not split by tier, so they count as L1),
//!   through `cached::AsyncRedisCache` (JSON values, a `ConnectionManager`), through a hand-rolled
//!   cache-aside (a moka cache per namespace, of as many entries as `--l1-mib` holds 1 KiB
//!   pages, in front of redis-rs's
//!   `ConnectionManager`, bincode values: what a team writes itself), or both, on the same
//!   Redis, flushed between runs.
//! - `--embedded`: tierkit with no Redis (L1 and loader only).
//! - `--redis-url URL`: use this Redis instead of starting one. Its memory figure then includes
//!   whatever else it holds, and nothing is flushed.
//! - `--json`: print one JSON document instead of the text report (and no progress bar); each
//!   run carries its `timeline`: throughput, errors, p50 and p99 per ~1/120 of the run.
//! - `--svg PATH`: draw that timeline (throughput above, p50/p99 on a log scale below) into an
//!   SVG file, the warm-up and an outage shaded and tierkit's health transitions marked; a
//!   peer's picture goes to `PATH` with the peer's name before `.svg`.
//! - `--seed` [1]: seed of the key and operation choices.
//!
//! Two namespaces share the keys: `pages` (three reads or writes in four), holding
//! `--value-size` bytes of text that compresses as `--compressible` says, and `users` (one in
//! four), small records under the codec's 1 KiB compression threshold, so the per-namespace
//! figures show what compression saves and costs where it applies and where it does not.

mod args;
mod backend;
mod database;
mod driver;
mod outage;
mod phases;
mod picture;
mod redis_figures;
mod report;
#[path = "../../tests/support/mod.rs"]
mod support;
mod tally;
mod timeline;
mod workload;

use std::error::Error;
use std::sync::Arc;
use std::time::Instant;

use args::{Args, PeerKind};
use backend::Backend;
use database::Corpus;
use report::{Report, Text};
use support::RedisServer;

type BoxError = Box<dyn Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

fn main() {
    let args = args::parse();
    if let Err(e) = run(args) {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

/// The workload in a few words, for a picture's title.
fn settings_line(args: &Args) -> String {
    let load = match args.rate {
        Some(rate) => format!("{rate} ops/s offered"),
        None => format!("{} tasks, closed loop", args.concurrency),
    };
    let outage = match args.outage {
        Some(kind) => format!(", Redis {kind:?} for the middle third").to_lowercase(),
        None => String::new(),
    };
    format!(
        "{} keys zipf {}, {:.0}% reads, {load}{outage}",
        args.keys,
        args.skew,
        args.read_ratio * 100.0
    )
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
        Some(PeerKind::HandRolled) => &["tierkit", "hand-rolled"],
        Some(PeerKind::Amalgam) => &["tierkit", "amalgam"],
        Some(PeerKind::All) => &["tierkit", "amalgam", "hand-rolled", "cached"],
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
        // Redis's CPU clock when the measured part begins; an outage's restart resets it.
        let cpu_at_measure = match (&url, args.outage) {
            (Some(url), None) => {
                let (url, at) = (url.clone(), start + args.warmup);
                Some(rt.spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    redis_figures::cpu_seconds(&url).await
                }))
            }
            _ => None,
        };
        // The outage runs on a thread of its own: stopping and restarting the server blocks.
        let (report, outage) = std::thread::scope(|scope| {
            let outage = match (args.outage, server.as_mut()) {
                (Some(kind), Some(s)) => {
                    let backend = &*backend;
                    // The outage is in the measured part, after the warm-up.
                    let measured = start + args.warmup;
                    Some(scope.spawn(move || {
                        outage::cause(s, kind, measured, args.duration, start, backend)
                    }))
                }
                _ => None,
            };
            let report = rt.block_on(driver::drive(&args, backend.clone(), &corpus, start));
            let outage = outage.map(|h| h.join().expect("the outage driver does not panic"));
            (report, outage)
        });
        let mut report = report?;
        if let Some(outage) = outage {
            outage.apply_to(&mut report, &backend);
        }
        if let Some(url) = &url {
            let (memory, keys) = rt.block_on(redis_figures::read(url));
            report.redis_used_memory = memory;
            report.redis_keys = keys;
            if let Some(at_measure) = cpu_at_measure {
                let spent = rt.block_on(async {
                    let before = at_measure.await.ok()??;
                    Some(redis_figures::cpu_seconds(url).await? - before)
                });
                report.set_redis_cpu(spent, args.warmup);
            }
        }
        if let Some(path) = &args.svg {
            let path = match n {
                0 => path.clone(),
                _ => path.with_extension(format!("{name}.svg")),
            };
            let title = format!("{name}: {}", settings_line(&args));
            picture::draw(&report, args.warmup.as_secs_f64(), &title, &path)?;
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
