//! `tierkit`: the operators' command-line tool over a tierkit deployment's Redis data.
//!
//! It reads the environment the library reads (`Config::from_env`), so pointed at the same
//! variables as a service it sees the same Redis, prefix and keys. Every command prints text,
//! or with `--json` one JSON document on stdout; errors go to stderr with exit code 1 (2 for
//! a command line clap refuses).

mod args;
mod health;
mod inspect;
mod invalidate;
mod limit;
mod namespaces;
mod output;
mod sessions;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tierkit::{Config, Tierkit};

use args::{Args, Command};
use output::{Failure, Report};

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            // With --json, a refused command line is a JSON document too.
            let wants_json = std::env::args().any(|a| a == "--json");
            if wants_json && e.use_stderr() {
                // The rendered error up to its usage lines, on one line.
                let rendered = e.render().to_string();
                let message = rendered
                    .lines()
                    .take_while(|l| !l.trim().is_empty())
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" ");
                let message = message.trim_start_matches("error: ");
                println!("{}", serde_json::json!({ "error": message }));
            }
            e.exit()
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return output::fail(args.json, &Failure::new(format!("no runtime: {e}"))),
    };
    let json = args.json;
    match runtime.block_on(run(args)) {
        Ok(report) => report.print(json),
        Err(failure) => output::fail(json, &failure),
    }
}

/// An operator's call may take longer than a service's hot path allows.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

async fn run(args: Args) -> Result<Report, Failure> {
    let kit = connect(args.timeout)?;
    let progress = !args.json;
    if !matches!(args.command, Command::Health) {
        ready(&kit, args.wait).await?;
    }
    match args.command {
        Command::Health => health::run(&kit, args.wait).await,
        Command::Namespaces(a) => namespaces::run(&kit, &a, progress).await,
        Command::Inspect(a) => inspect::run(&kit, &a).await,
        Command::Invalidate(a) => invalidate::run(&kit, a, progress).await,
        Command::Sessions(a) => sessions::run(&kit, a).await,
        Command::Limit(a) => limit::run(&kit, a).await,
    }
}

/// tierkit from the environment (with `timeout`, else `TIERKIT_OP_TIMEOUT_MS`, else
/// [`DEFAULT_TIMEOUT`] as the op timeout); refused when it names no Redis (there is nothing to
/// look at).
fn connect(timeout: Option<Duration>) -> Result<Tierkit, Failure> {
    let mut builder = Config::builder().env().map_err(Failure::from)?;
    let from_env = std::env::var("TIERKIT_OP_TIMEOUT_MS").is_ok_and(|v| !v.trim().is_empty());
    match timeout {
        Some(t) => builder = builder.op_timeout(t),
        None if !from_env => builder = builder.op_timeout(DEFAULT_TIMEOUT),
        None => {}
    }
    let config = builder.build().map_err(Failure::from)?;
    if config.is_embedded() {
        return Err(Failure::new(
            "no Redis configured: set REDIS_URL (or REDIS_HOST, or REDIS_CLUSTER_NODES) as the \
             service has it",
        ));
    }
    Tierkit::new(config).map_err(Failure::from)
}

/// Waits for Redis to answer and the backplane to subscribe; a clear error when it does not.
async fn ready(kit: &Tierkit, wait: Duration) -> Result<(), Failure> {
    if kit.ready(wait).await {
        return Ok(());
    }
    let status = kit.health().map(|h| h.status());
    // Slow (above the latency threshold) but answering: calls go through.
    if status
        .as_ref()
        .is_some_and(|s| s.state == tierkit::health::HealthState::Degraded)
    {
        return Ok(());
    }
    let why = status
        .and_then(|s| s.last_error)
        .unwrap_or_else(|| "no answer".into());
    Err(Failure::new(format!(
        "Redis unreachable within {wait:?} ({why}); check REDIS_URL and that the server is up"
    )))
}
