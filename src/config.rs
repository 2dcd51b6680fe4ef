//! Configuration: a validating builder and `from_env()`.

use std::fmt;
use std::time::Duration;

use redis::ConnectionInfo;

use crate::codec::Codec;
use crate::error::Result;
use crate::keys::Keys;

mod builder;
pub mod clock;
mod env;

pub use builder::ConfigBuilder;
pub(crate) use clock::SharedClock;

const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(100);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(250);
const DEFAULT_DEGRADED_LATENCY: Duration = Duration::from_millis(50);
const DEFAULT_FAIL_THRESHOLD: u32 = 3;
const DEFAULT_RECOVER_THRESHOLD: u32 = 2;
const DEFAULT_L1_CAPACITY: u64 = 64 * 1024 * 1024;

/// Everything tierkit needs to know, validated.
///
/// With no Redis configured (the default) tierkit runs *embedded*: every part works
/// in-process and nothing ever tries to connect.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tierkit::Config;
///
/// let config = Config::builder()
///     .redis_url("redis://:secret@127.0.0.1:6380/2")
///     .prefix("myapp")
///     .op_timeout(Duration::from_millis(50))
///     .build()?;
/// assert!(!config.is_embedded());
/// // The password never shows in Debug output.
/// assert!(!format!("{config:?}").contains("secret"));
///
/// assert!(Config::default().is_embedded());
/// # Ok::<(), tierkit::Error>(())
/// ```
#[derive(Clone)]
pub struct Config {
    pub(crate) redis: Option<Target>,
    pub(crate) keys: Keys,
    pub(crate) clock: SharedClock,
    pub(crate) op_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) health: HealthConfig,
    pub(crate) codec: Codec,
    pub(crate) l1_capacity: u64,
    pub(crate) l1_eviction_counts: bool,
}

/// Where Redis is: one server, or the seed nodes of a Redis Cluster (from which the whole
/// topology is discovered).
#[derive(Clone)]
pub(crate) enum Target {
    // Boxed: a connection info is large (TLS parameters), a seed list is one pointer.
    Single(Box<ConnectionInfo>),
    Cluster(Vec<ConnectionInfo>),
}

impl Target {
    /// Every connection target, so credentials apply to all nodes alike.
    fn infos_mut(&mut self) -> &mut [ConnectionInfo] {
        match self {
            Target::Single(info) => std::slice::from_mut(&mut **info),
            Target::Cluster(nodes) => nodes,
        }
    }

    fn first(&self) -> Option<&ConnectionInfo> {
        match self {
            Target::Single(info) => Some(info),
            Target::Cluster(nodes) => nodes.first(),
        }
    }
}

/// Settings of the health monitor, kept inside [`Config`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HealthConfig {
    pub(crate) probe_interval: Duration,
    pub(crate) probe_timeout: Duration,
    pub(crate) degraded_latency: Duration,
    pub(crate) fail_threshold: u32,
    pub(crate) recover_threshold: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            redis: None,
            keys: Keys::default(),
            clock: SharedClock::default(),
            op_timeout: DEFAULT_OP_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            health: HealthConfig {
                probe_interval: DEFAULT_PROBE_INTERVAL,
                probe_timeout: DEFAULT_PROBE_TIMEOUT,
                degraded_latency: DEFAULT_DEGRADED_LATENCY,
                fail_threshold: DEFAULT_FAIL_THRESHOLD,
                recover_threshold: DEFAULT_RECOVER_THRESHOLD,
            },
            codec: Codec::default(),
            l1_capacity: DEFAULT_L1_CAPACITY,
            l1_eviction_counts: true,
        }
    }
}

impl Config {
    /// A builder starting from the defaults (embedded mode).
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The embedded configuration: no Redis, everything in-process. Same as `Config::default()`.
    pub fn embedded() -> Self {
        Config::default()
    }

    /// Reads the configuration from the process environment.
    ///
    /// See [`ConfigBuilder::env`] for the variables read.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) naming the variable whose value is invalid.
    pub fn from_env() -> Result<Self> {
        Config::builder().env()?.build()
    }

    /// Whether no Redis is configured, so everything runs in-process.
    pub fn is_embedded(&self) -> bool {
        self.redis.is_none()
    }

    /// Whether Redis is a Redis Cluster (seed nodes given with
    /// [`ConfigBuilder::redis_cluster`] or `REDIS_CLUSTER_NODES`).
    pub fn is_cluster(&self) -> bool {
        matches!(self.redis, Some(Target::Cluster(_)))
    }

    /// The key prefix every Redis key starts with. Default: `tierkit`.
    pub fn prefix(&self) -> &str {
        self.keys.prefix()
    }

    /// The bound on every Redis call. Default: 100 ms.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// The bound on one connection attempt. Default: 500 ms.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The codec values are stored with.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The bound on the in-process L1 cache, in bytes of stored values plus keys. Default:
    /// 64 MiB.
    pub fn l1_capacity(&self) -> u64 {
        self.l1_capacity
    }

    /// Whether L1 evictions are counted per namespace. Default: yes.
    pub fn l1_eviction_counts(&self) -> bool {
        self.l1_eviction_counts
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Config");
        match &self.redis {
            None => {
                d.field("redis", &"embedded (none)");
            }
            Some(target) => {
                match target {
                    Target::Single(info) => d.field("redis", &info.addr().to_string()),
                    Target::Cluster(nodes) => d.field(
                        "redis_cluster",
                        &nodes
                            .iter()
                            .map(|n| n.addr().to_string())
                            .collect::<Vec<_>>(),
                    ),
                };
                if let Some(info) = target.first() {
                    let settings = info.redis_settings();
                    d.field("db", &settings.db())
                        .field("username", &settings.username())
                        .field(
                            "password",
                            &if settings.password().is_some() {
                                "<redacted>"
                            } else {
                                "not set"
                            },
                        );
                }
            }
        };
        d.field("prefix", &self.keys.prefix())
            .field("op_timeout", &self.op_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("probe_interval", &self.health.probe_interval)
            .field("probe_timeout", &self.health.probe_timeout)
            .field("degraded_latency", &self.health.degraded_latency)
            .field("fail_threshold", &self.health.fail_threshold)
            .field("recover_threshold", &self.health.recover_threshold)
            .field("codec", &self.codec)
            .field("l1_capacity", &self.l1_capacity)
            .field("l1_eviction_counts", &self.l1_eviction_counts)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::builder().env_from(|k| map.get(k).cloned())?.build()
    }

    #[test]
    fn no_redis_variables_means_embedded() {
        let c = from(&[]).unwrap();
        assert!(c.is_embedded());
        assert_eq!(c.op_timeout(), Duration::from_millis(100));
    }

    #[test]
    fn url_wins_and_password_is_redacted() {
        let c = from(&[
            ("REDIS_URL", "redis://:hunter2@10.0.0.1:6390/3"),
            ("REDIS_HOST", "ignored"),
        ])
        .unwrap();
        let info = c.redis.as_ref().and_then(Target::first).unwrap();
        assert_eq!(info.addr().to_string(), "10.0.0.1:6390");
        assert_eq!(info.redis_settings().db(), 3);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn host_parts() {
        let c = from(&[
            ("REDIS_HOST", "cache.internal"),
            ("REDIS_PORT", "6390"),
            ("REDIS_PASSWORD", "pw"),
            ("REDIS_DB", "4"),
            ("TIERKIT_PREFIX", "svc"),
            ("TIERKIT_OP_TIMEOUT_MS", "40"),
        ])
        .unwrap();
        let info = c.redis.as_ref().and_then(Target::first).unwrap();
        assert_eq!(info.addr().to_string(), "cache.internal:6390");
        assert_eq!(info.redis_settings().password(), Some("pw"));
        assert_eq!(info.redis_settings().db(), 4);
        assert_eq!(c.prefix(), "svc");
        assert_eq!(c.op_timeout(), Duration::from_millis(40));
        assert!(!format!("{c:?}").contains("\"pw\""));
    }

    #[test]
    fn cluster_nodes_select_cluster_mode_with_shared_credentials() {
        let c = from(&[
            (
                "REDIS_CLUSTER_NODES",
                "10.0.0.1:7000, 10.0.0.2:7001,,redis://10.0.0.3:7002",
            ),
            ("REDIS_USERNAME", "svc"),
            ("REDIS_PASSWORD", "pw"),
        ])
        .unwrap();
        assert!(c.is_cluster());
        let Some(Target::Cluster(nodes)) = &c.redis else {
            panic!("not a cluster: {c:?}");
        };
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:7000", "10.0.0.2:7001", "10.0.0.3:7002"]);
        assert!(nodes
            .iter()
            .all(|n| n.redis_settings().username() == Some("svc")
                && n.redis_settings().password() == Some("pw")));
        assert!(!format!("{c:?}").contains("\"pw\""));
    }

    #[test]
    fn cluster_settings_that_cannot_hold_are_named() {
        for (vars, field) in [
            (vec![("REDIS_CLUSTER_NODES", "h")], "REDIS_CLUSTER_NODES"),
            (vec![("REDIS_CLUSTER_NODES", "h:0")], "REDIS_CLUSTER_NODES"),
            (vec![("REDIS_CLUSTER_NODES", ",")], "REDIS_CLUSTER_NODES"),
            (
                vec![("REDIS_CLUSTER_NODES", "redis://h:1/2")],
                "REDIS_CLUSTER_NODES",
            ),
            (
                vec![("REDIS_CLUSTER_NODES", "h:1"), ("REDIS_URL", "redis://h")],
                "REDIS_URL",
            ),
            (
                vec![("REDIS_CLUSTER_NODES", "h:1"), ("REDIS_DB", "1")],
                "REDIS_DB",
            ),
            (vec![("REDIS_USERNAME", "u")], "REDIS_USERNAME"),
        ] {
            assert_eq!(field_of(from(&vars).unwrap_err()), field, "{vars:?}");
        }
        let mixed = Config::builder()
            .redis_cluster(["redis://:a@h:1", "redis://:b@h:2"])
            .build();
        assert_eq!(field_of(mixed.unwrap_err()), "redis_cluster");
        let db = Config::builder().redis_cluster(["h:1"]).redis_db(2).build();
        assert_eq!(field_of(db.unwrap_err()), "redis_db");
    }

    #[test]
    fn empty_values_count_as_unset() {
        let c = from(&[("REDIS_URL", ""), ("REDIS_PASSWORD", " ")]).unwrap();
        assert!(c.is_embedded());
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::Config { field, .. } => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn invalid_variables_are_named() {
        for (vars, field) in [
            (
                vec![("REDIS_HOST", "h"), ("REDIS_PORT", "70000")],
                "REDIS_PORT",
            ),
            (vec![("REDIS_HOST", "h"), ("REDIS_PORT", "x")], "REDIS_PORT"),
            (vec![("REDIS_HOST", "h"), ("REDIS_DB", "-1")], "REDIS_DB"),
            (vec![("REDIS_URL", "http://nope")], "REDIS_URL"),
            (vec![("REDIS_PASSWORD", "pw")], "REDIS_PASSWORD"),
            (vec![("TIERKIT_PREFIX", "a*b")], "TIERKIT_PREFIX"),
            (
                vec![("TIERKIT_OP_TIMEOUT_MS", "0")],
                "TIERKIT_OP_TIMEOUT_MS",
            ),
        ] {
            let err = from(&vars).unwrap_err();
            let msg = err.to_string();
            assert_eq!(field_of(err), field, "{msg}");
        }
    }

    #[test]
    fn builder_validates() {
        let cases: Vec<(ConfigBuilder, &str)> = vec![
            (Config::builder().op_timeout(Duration::ZERO), "op_timeout"),
            (Config::builder().prefix(""), "prefix"),
            (Config::builder().prefix("a{b}"), "prefix"),
            (Config::builder().prefix("a:c:x"), "prefix"),
            (Config::builder().fail_threshold(0), "fail_threshold"),
            (Config::builder().l1_capacity(0), "l1_capacity"),
            (Config::builder().recover_threshold(0), "recover_threshold"),
            (
                Config::builder().probe_timeout(Duration::from_secs(5)),
                "probe_timeout",
            ),
            (Config::builder().redis_password("x"), "redis_password"),
            (Config::builder().redis_url("nope://"), "redis_url"),
            (Config::builder().redis_host(" ", 1), "redis_host"),
        ];
        for (b, field) in cases {
            assert_eq!(field_of(b.build().unwrap_err()), field);
        }
    }

    #[test]
    fn first_error_wins() {
        let err = Config::builder()
            .prefix("")
            .redis_url("bad")
            .build()
            .unwrap_err();
        assert_eq!(field_of(err), "prefix");
    }
}
