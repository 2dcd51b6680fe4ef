//! Test harness shared by every integration test file (`mod support;`) and by the
//! benches (`#[path = "../tests/support/mod.rs"] mod support;`).
//!
//! - [`RedisServer`]: a private `redis-server` child process on a free loopback port
//!   that can be crashed, hung and restarted to make faults.
//! - [`Pki`] (feature `tls`) and [`ServerTls`]: certificates made at test time, and servers
//!   and clusters that speak only TLS ([`RedisServer::start_tls`], [`RedisCluster::start_tls`]).
//! - [`TcpProxy`]: a std-thread TCP forwarder for network faults (latency, partition,
//!   dropped and refused connections) between tierkit and a server.
//! - [`Backend`] and [`per_backend!`]: one suite body run against the embedded tier, a
//!   server and a cluster, with one readiness rule ([`ready`]).
//! - [`init_tracing`] and [`eventually`]: small helpers for tests.

// Each test target compiles this module on its own and uses only part of it. loadgen includes
// it too, and knows no `tls` feature.
#![allow(dead_code, unused_imports, unexpected_cfgs)]

pub mod backend;
pub mod cluster;
pub mod http;
pub mod proxy;
pub mod server;
#[cfg(feature = "tls")]
pub mod tls;

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

pub(crate) use backend::per_backend;
pub use backend::{ready, Backend};
pub use cluster::RedisCluster;
pub use proxy::TcpProxy;
pub use server::{RedisServer, ServerTls};
#[cfg(feature = "tls")]
pub use tls::Pki;

/// Installs a `tracing` subscriber that writes through the test harness's captured
/// output, filtered by `RUST_LOG` (default: `warn`). Safe to call from every test.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Polls `f` every 10 ms until it returns `true` or `timeout` has passed.
///
/// Returns the time it took for the condition to hold, or `None` on timeout. `f` is
/// always polled at least once. Time is tokio's, so this also works under
/// `tokio::time::pause()`.
///
/// ```ignore
/// let took = eventually(Duration::from_secs(2), || async { health.state() == State::Down })
///     .await
///     .expect("health never went Down");
/// assert!(took < Duration::from_millis(500));
/// ```
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Settings that notice faults fast: 100 ms probes, 100 ms operations, Down after two
/// failures, Up after one good probe. No Redis target yet.
pub fn fast_builder() -> tierkit::ConfigBuilder {
    tierkit::Config::builder()
        .probe_interval(Duration::from_millis(100))
        .probe_timeout(Duration::from_millis(80))
        .op_timeout(Duration::from_millis(100))
        .fail_threshold(2)
        .recover_threshold(1)
}

/// A configuration for `url` that notices faults fast ([`fast_builder`]).
pub fn fast_config(url: &str) -> tierkit::Config {
    fast_builder()
        .redis_url(url)
        .build()
        .expect("a valid test configuration")
}

/// A configuration for a cluster that notices faults fast, under its own key prefix so tests
/// sharing one cluster keep apart.
pub fn fast_cluster_config(cluster: &RedisCluster) -> tierkit::Config {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let prefix = format!(
        "t{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    fast_builder()
        .redis_cluster(cluster.seeds())
        .prefix(prefix)
        .build()
        .expect("a valid test configuration")
}

/// A tierkit instance on `url` with [`fast_config`], once ready ([`ready`]).
pub async fn connected(url: &str) -> tierkit::Tierkit {
    connected_with(fast_config(url)).await
}

/// A tierkit instance with `config`, once ready ([`ready`]).
pub async fn connected_with(config: tierkit::Config) -> tierkit::Tierkit {
    let kit = tierkit::Tierkit::new(config).expect("tierkit starts");
    assert!(kit.health().is_some(), "Redis is configured");
    ready(&kit).await;
    kit
}
