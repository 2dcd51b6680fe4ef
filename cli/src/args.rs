//! The command line: global flags and one subcommand per operator task.

use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

/// Operators' tool for tierkit's Redis data. Reads the environment the library reads
/// (REDIS_URL, REDIS_HOST, REDIS_PORT, REDIS_PASSWORD, REDIS_CLUSTER_NODES, TIERKIT_PREFIX,
/// TIERKIT_ENCRYPTION_KEYS, TIERKIT_SESSION_NAME_KEY, ...).
#[derive(Debug, Parser)]
#[command(name = "tierkit", version, about, long_about = None)]
pub struct Args {
    /// Print one JSON document on stdout instead of text (errors too: {"error": "..."}).
    #[arg(long, global = true)]
    pub json: bool,

    /// How long to wait for Redis to answer before giving up.
    #[arg(long, global = true, default_value = "3s", value_parser = parse_duration)]
    pub wait: Duration,

    /// The bound on each Redis call. Default: TIERKIT_OP_TIMEOUT_MS when set, else 2s (the
    /// library's 100 ms suits a service's hot path, not a walk over a large keyspace).
    #[arg(long, global = true, value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The health report: Redis state and latency, keys and memory, session counts.
    Health,
    /// Keys and memory per cache namespace, session store and limiter (SCAN, sampled MEMORY USAGE).
    Namespaces(NamespacesArgs),
    /// What one Redis key holds: its kind, frame, envelope, sizes, TTL, tags and a preview.
    Inspect(InspectArgs),
    /// Invalidate cache entries everywhere: in Redis and in every instance's L1 (backplane).
    #[command(subcommand)]
    Invalidate(Invalidate),
    /// A user's sessions: list them, revoke one or all.
    #[command(subcommand)]
    Sessions(SessionsCmd),
    /// A rate-limit window: peek at it, reset it.
    #[command(subcommand)]
    Limit(LimitCmd),
}

#[derive(Debug, ClapArgs)]
pub struct NamespacesArgs {
    /// Keys per namespace whose MEMORY USAGE is read; the rest is extrapolated from them.
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// The COUNT hint of each SCAN page.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub count: u64,
}

#[derive(Debug, ClapArgs)]
pub struct InspectArgs {
    /// The full Redis key, e.g. tierkit:c:users:v1:42.
    pub key: String,
    /// Bytes of the value shown in the preview.
    #[arg(long, default_value_t = 64)]
    pub preview: usize,
}

/// Where a namespace lives and how long its tombstones last.
#[derive(Debug, ClapArgs)]
pub struct NamespaceOpts {
    /// The namespace's version (NamespaceBuilder::version).
    #[arg(long = "ns-version", default_value_t = 1)]
    pub version: u32,
    /// How long an invalidated key stays a tombstone; give the namespace's TTL.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Invalidate even when Redis holds no key of the namespace (an L1-only namespace).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum Invalidate {
    /// One key: NAMESPACE KEY, or the full Redis key of an entry (tierkit:c:users:v1:42).
    Key {
        /// NAMESPACE KEY, or one full Redis key.
        #[arg(num_args = 1..=2, required = true, value_names = ["NAMESPACE", "KEY"])]
        target: Vec<String>,
        #[command(flatten)]
        opts: NamespaceOpts,
    },
    /// Every entry written with a tag.
    Tag {
        namespace: String,
        tag: String,
        #[command(flatten)]
        opts: NamespaceOpts,
    },
    /// Every entry whose key matches a glob (`*`, `?`, `\` escapes).
    Pattern {
        namespace: String,
        pattern: String,
        #[command(flatten)]
        opts: NamespaceOpts,
    },
    /// The whole namespace (every version's entries are removed; the epoch of --ns-version is dropped).
    Namespace {
        namespace: String,
        #[command(flatten)]
        opts: NamespaceOpts,
    },
}

/// The store's session lifetimes: a listing prunes what it judges expired, so give the
/// service's own settings when they differ from the defaults.
#[derive(Debug, ClapArgs)]
pub struct SessionOpts {
    /// The store's idle timeout (SessionsBuilder::idle_timeout).
    #[arg(long, default_value = "14d", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// The store's maximum lifetime (SessionsBuilder::max_lifetime).
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    pub max_lifetime: Duration,
}

#[derive(Debug, Subcommand)]
pub enum SessionsCmd {
    /// A user's live sessions, newest first.
    List {
        user: String,
        #[command(flatten)]
        opts: SessionOpts,
    },
    /// Revoke one session of a user (by the handle `list` shows) or all of them.
    Revoke {
        user: String,
        /// The session's handle, from `sessions list`.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        session: Option<String>,
        /// Every session of the user.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        opts: SessionOpts,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Algo {
    /// Sliding log (the default algorithm).
    Log,
    /// Sliding counter.
    Counter,
    /// The sliding counter without a script (`Algorithm::PipelinedCounter`).
    Pipelined,
}

#[derive(Debug, Subcommand)]
pub enum LimitCmd {
    /// A key's window as Redis holds it: used and remaining, and when it resets. Spends nothing.
    Peek {
        limiter: String,
        key: String,
        /// The limiter's limit per window (Quota::new).
        #[arg(long)]
        limit: u32,
        /// The limiter's window (Quota::new), e.g. 60s, 15m.
        #[arg(long, value_parser = parse_duration)]
        window: Duration,
        #[arg(long, value_enum, default_value_t = Algo::Log)]
        algorithm: Algo,
    },
    /// Delete a key's window, so it starts afresh (every algorithm's unless --algorithm; the
    /// pipelined counter's only with --window, which its counters are named by).
    Reset {
        limiter: String,
        key: String,
        #[arg(long, value_enum)]
        algorithm: Option<Algo>,
        /// The limiter's window, e.g. 60s: needed for the pipelined counter.
        #[arg(long, value_parser = parse_duration)]
        window: Option<Duration>,
    },
}

/// `500ms`, `30s`, `15m`, `2h`, `14d`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write e.g. 500ms, 30s, 15m, 2h, 14d"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}; use ms, s, m, h or d"
            ))
        }
    };
    let ms = ms.ok_or_else(|| format!("{text:?} is too long"))?;
    if ms == 0 {
        return Err(format!("{text:?} is zero; give a positive duration"));
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("14d"), Ok(Duration::from_secs(14 * 86_400)));
        for bad in ["", "s", "0s", "1w", "-1s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }
}
