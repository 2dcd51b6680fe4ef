//! The command line: the flags with their defaults and ranges, and the one conflict that needs
//! its own explanation. `Args` is also serialized as the `settings` of the JSON report.

use std::time::Duration;

use clap::{CommandFactory, Parser, ValueEnum};
use serde::Serialize;

#[derive(Parser, Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[command(
    name = "loadgen",
    about = "Workload harness for tierkit's two-tier cache",
    long_about = "Zipf-distributed cache-aside reads and write-through writes against tierkit (and \
                  optionally the `cached` crate's Redis store), with latency percentiles, hit \
                  ratios per tier, compression savings, and an optional Redis outage. See the \
                  top of loadgen/src/main.rs."
)]
pub struct Args {
    /// How long the workload is measured: 500ms, 20s, 2m, or plain seconds (after the warm-up).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// A warm-up of the same workload before the measured part, reported as a phase of its
    /// own, so the steady state is not mixed with the cold start.
    #[arg(long, default_value = "0s", value_parser = parse_duration_or_zero)]
    #[serde(serialize_with = "as_secs")]
    pub warmup: Duration,
    /// Distinct keys per namespace.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Zipf exponent of key popularity: 0 = uniform, 1 = classic zipf, higher = hotter head.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative)]
    pub skew: f64,
    /// Bytes of text in each `pages` value.
    #[arg(long, default_value_t = 1024)]
    pub value_size: usize,
    /// Share of each `pages` value that is repetitive text (compresses), 0..1.
    #[arg(long, default_value_t = 0.7, value_parser = unit_interval)]
    pub compressible: f64,
    /// Share of operations that are reads (the rest are writes), 0..1.
    #[arg(long, default_value_t = 0.9, value_parser = unit_interval)]
    pub read_ratio: f64,
    /// tierkit instances in the process, each with its own L1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub instances: u64,
    /// Tasks issuing operations, spread round-robin over the instances.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: u64,
    /// Operations per second offered in total, spread evenly over the tasks, open loop: an
    /// operation held back by a slow one before it counts from when it was due, so a stall
    /// counts for every operation it held back (the timer's own lateness does not). Default: each task goes as fast as it can (closed loop), which measures
    /// capacity, not latency at a load.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Each task yields to the runtime after this many operations (0: never), as a service's
    /// request loop does at its awaits. Without it a backend whose hits never yield (the
    /// hand-rolled and `cached` peers') keeps its worker from every other task while its reads
    /// hit, and its throughput then counts that starvation; tierkit yields by itself (tokio's
    /// cooperative budget, every 128 hits).
    #[arg(long, default_value_t = 64)]
    pub yield_every: u64,
    /// The simulated database's answer time on a miss, in µs (tokio sleeps in whole ms).
    #[arg(long, default_value_t = 1000)]
    pub load_latency_us: u64,
    /// L1 capacity of each instance in MiB (default: tierkit's, 64 MiB).
    #[arg(long)]
    pub l1_mib: Option<u64>,
    /// Take Redis away for the middle third of the run: `kill` (SIGKILL, then restart on the
    /// same port, empty) or `hang` (SIGSTOP, then SIGCONT).
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "kill")]
    pub outage: Option<OutageKind>,
    /// After the tierkit run, run the same workload through this peer on the same Redis.
    #[arg(long, value_enum)]
    pub peer: Option<PeerKind>,
    /// tierkit with no Redis: L1 and loader only.
    #[arg(long, conflicts_with_all = ["redis_url", "peer", "outage"])]
    pub embedded: bool,
    /// Use this Redis instead of starting a private redis-server.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Print one JSON document instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// Draw throughput and p50/p99 over time into this SVG file (one per backend: the peer's
    /// gets its name appended), with the warm-up and an outage shaded and health transitions
    /// marked.
    #[arg(long)]
    pub svg: Option<std::path::PathBuf>,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutageKind {
    /// SIGKILL the server, then start it again on the same port (its data is gone).
    Kill,
    /// SIGSTOP the server, then SIGCONT it (connections stay open, nothing is answered).
    Hang,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerKind {
    /// `cached::AsyncRedisCache` (cached 2.x, feature `redis_connection_manager`).
    Cached,
    /// A moka cache in front of redis-rs, cache-aside, bincode values: what a team writes
    /// itself in fifty lines.
    #[value(name = "hand-rolled")]
    #[serde(rename = "hand-rolled")]
    HandRolled,
    /// amalgam-cache 0.4 (a FusionCache port: moka L1, Redis L2 and backplane), as its Redis
    /// example sets it up, with 100 ms L2 timeouts and 1 s circuit breakers.
    Amalgam,
    /// Every peer, one after the other.
    All,
}

/// The arguments of this process, or the usage error and exit, as clap does for its own checks.
pub fn parse() -> Args {
    let args = Args::parse();
    if args.outage.is_some() && args.redis_url.is_some() {
        Args::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--outage kills or freezes the redis-server this harness starts; it cannot do \
                 that to a Redis given with --redis-url. Drop --redis-url to use a private \
                 server.",
            )
            .exit();
    }
    args
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// A duration that may be zero (`0s`: none).
fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .parse::<f64>()
        == Ok(0.0)
    {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 500ms, 20s or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit `{unit}` in `{s}`: use ms, s or m")),
    };
    if secs > 0.0 && secs.is_finite() {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!("the duration must be positive, got `{s}`"))
    }
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x >= 0.0 && x.is_finite() => Ok(x),
        _ => Err(format!("`{s}` is not a number >= 0")),
    }
}

fn unit_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("`{s}` is not a number between 0 and 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn a_warmup_may_be_none() {
        assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration_or_zero("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration_or_zero("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_duration_or_zero("-1s").is_err());
    }

    #[test]
    fn durations_take_ms_s_m_or_plain_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["0", "0s", "5x", "s", "", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn ratios_stay_in_range() {
        assert_eq!(unit_interval("0"), Ok(0.0));
        assert_eq!(unit_interval("1"), Ok(1.0));
        assert!(unit_interval("1.01").is_err());
        assert!(unit_interval("NaN").is_err());
        assert_eq!(non_negative("2.5"), Ok(2.5));
        assert!(non_negative("-0.1").is_err());
        assert!(non_negative("inf").is_err());
    }
}
