//! One backend type for every suite, one readiness rule, and `per_backend!`, which runs one
//! test body against each backend (as tower-sessions' `route_tests!` and redis-rs's
//! test macros do).
//!
//! - [`Backend::embedded`]: no Redis; everything in-process.
//! - [`Backend::redis`]: a private `redis-server` of the test's own.
//! - [`Backend::cluster`]: the shared 3+3 Redis Cluster, under a key prefix of the test's own.
//!
//! Ready means one thing everywhere ([`ready`]): Redis `Up` and the cache backplane subscribed
//! (`Tierkit::ready`), so no test races the first subscription.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tierkit::{ConfigBuilder, Tierkit};

use super::{fast_builder, RedisCluster, RedisServer};

/// Where a suite runs.
pub enum Backend {
    Embedded,
    Redis(RedisServer),
    Cluster {
        cluster: Arc<RedisCluster>,
        /// Fixed at creation, so every instance of one test shares one keyspace.
        prefix: String,
    },
}

/// How long a test waits for an instance to be ready before failing.
pub const READY_WITHIN: Duration = Duration::from_secs(10);

/// Waits until `kit` is ready (Redis `Up`, backplane subscribed; at once when embedded), and
/// fails the test with the health status otherwise.
pub async fn ready(kit: &Tierkit) {
    assert!(
        kit.ready(READY_WITHIN).await,
        "tierkit never became ready: {:?}, coherent: {}",
        kit.health().map(|h| h.status()),
        kit.cache_info().await.coherent
    );
}

impl Backend {
    pub fn embedded() -> Backend {
        Backend::Embedded
    }

    pub fn redis() -> Backend {
        Backend::Redis(RedisServer::start())
    }

    pub fn cluster() -> Backend {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "t{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Backend::Cluster {
            cluster: RedisCluster::shared(),
            prefix,
        }
    }

    pub fn is_embedded(&self) -> bool {
        matches!(self, Backend::Embedded)
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster { .. })
    }

    /// The server of [`Backend::redis`], to crash, hang or inspect.
    pub fn server(&self) -> Option<&RedisServer> {
        match self {
            Backend::Redis(server) => Some(server),
            _ => None,
        }
    }

    pub fn server_mut(&mut self) -> Option<&mut RedisServer> {
        match self {
            Backend::Redis(server) => Some(server),
            _ => None,
        }
    }

    /// Fast-failing settings ([`fast_builder`]) aimed at this backend.
    pub fn builder(&self) -> ConfigBuilder {
        match self {
            Backend::Embedded => fast_builder(),
            Backend::Redis(server) => fast_builder().redis_url(server.url()),
            Backend::Cluster { cluster, prefix } => {
                fast_builder().redis_cluster(cluster.seeds()).prefix(prefix)
            }
        }
    }

    /// One more ready instance on this backend.
    pub async fn kit(&self) -> Tierkit {
        self.kit_with(self.builder()).await
    }

    /// One more ready instance with `builder`'s settings (start from [`builder`](Self::builder)).
    pub async fn kit_with(&self, builder: ConfigBuilder) -> Tierkit {
        let kit = Tierkit::new(builder.build().expect("a valid test configuration"))
            .expect("tierkit starts");
        ready(&kit).await;
        kit
    }

    /// Runs `cmd` with `{prefix}:{key}` appended on the node holding that key. Redis-backed
    /// backends only.
    pub fn query<T: redis::FromRedisValue>(
        &self,
        kit: &Tierkit,
        mut cmd: redis::Cmd,
        key: &str,
    ) -> T {
        let key = format!("{}:{key}", kit.config().prefix());
        let node = match self {
            Backend::Embedded => panic!("the embedded backend has no Redis to query"),
            Backend::Redis(server) => server,
            Backend::Cluster { cluster, .. } => {
                &cluster.nodes()[cluster.primary_of(&key).expect("a primary serves the key")]
            }
        };
        let mut con = node
            .client()
            .get_connection()
            .expect("connects to the test server");
        cmd.arg(&key)
            .query(&mut con)
            .expect("the test command runs")
    }
}

/// Runs each listed `async fn name(backend: Backend)` once per listed backend, as
/// `{backend}::{name}` tests:
///
/// ```ignore
/// async fn fills_then_hits(b: Backend) { ... }
///
/// per_backend!([embedded, redis, cluster] [fills_then_hits, invalidates_by_tag]);
/// ```
#[allow(unused_macros)] // each test target uses part of the harness
macro_rules! per_backend {
    ([$($backend:ident),+ $(,)?] $tests:tt) => {
        $( $crate::support::per_backend!(@one $backend $tests); )+
    };
    (@one $backend:ident [$($test:ident),+ $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::support::Backend::$backend()).await;
                }
            )+
        }
    };
}
#[allow(unused_imports)]
pub(crate) use per_backend;
