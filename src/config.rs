//! Configuration: a validating builder and `from_env()`.

use std::fmt;
use std::time::Duration;

use redis::ConnectionInfo;

use crate::codec::{Codec, Keyring};
use crate::error::Result;
use crate::keys::Keys;

mod builder;
pub mod clock;
mod env;
mod tls;

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
    pub(crate) client_tracking: bool,
    /// The keys of encrypted namespaces; `None`: no namespace may be encrypted.
    pub(crate) keyring: Option<Keyring>,
    /// The secret user ids are named by in session keys; `None`: plain names.
    pub(crate) session_name_key: Option<NameKey>,
    /// Embedded only: the in-process tiers stand in for Redis behind injectable faults.
    #[cfg(feature = "testing")]
    pub(crate) fault_injection: bool,
    #[cfg(feature = "tls")]
    pub(crate) tls: tls::Tls,
}

/// The session name key: bytes that never show in `Debug` and are wiped when the last copy
/// drops.
#[derive(Clone)]
pub(crate) struct NameKey(pub(crate) std::sync::Arc<zeroize::Zeroizing<Vec<u8>>>);

impl NameKey {
    /// The shortest key accepted: 256 bits, the strength of the HMAC-SHA256 it keys.
    pub(crate) const MIN_LEN: usize = 32;
}

impl fmt::Debug for NameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NameKey(<redacted>)")
    }
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

    /// Whether Redis is reached over TLS (`rediss://`). Cluster seeds never mix TLS and plain
    /// addresses (the builder refuses that), so the first node speaks for all.
    pub(crate) fn is_tls(&self) -> bool {
        self.first()
            .is_some_and(|info| matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }))
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
            l1_eviction_counts: false,
            client_tracking: false,
            keyring: None,
            session_name_key: None,
            #[cfg(feature = "testing")]
            fault_injection: false,
            #[cfg(feature = "tls")]
            tls: tls::Tls::default(),
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

    /// Whether Redis is reached over TLS: a `rediss://` URL or `rediss://` cluster seed nodes
    /// (which need the `tls` feature). TLS settings ([`ConfigBuilder::tls_ca_file`] and the
    /// others) apply then, to every connection tierkit opens.
    ///
    /// ```
    /// let plain = tierkit::Config::builder().redis_url("redis://127.0.0.1:6379").build()?;
    /// assert!(!plain.is_tls());
    /// assert!(!tierkit::Config::default().is_tls());
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn is_tls(&self) -> bool {
        self.redis.as_ref().is_some_and(Target::is_tls)
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

    /// Whether L1 evictions are counted per namespace. Default: no.
    pub fn l1_eviction_counts(&self) -> bool {
        self.l1_eviction_counts
    }

    /// Whether Redis's client-side-caching pushes also evict L1 copies
    /// ([`ConfigBuilder::client_tracking`]).
    pub fn client_tracking(&self) -> bool {
        self.client_tracking
    }

    /// The keys encrypted namespaces seal and open values with, if any were given.
    pub fn encryption_keys(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    /// Whether a [`session_name_key`](ConfigBuilder::session_name_key) was given (the key
    /// itself never leaves the configuration).
    pub fn has_session_name_key(&self) -> bool {
        self.session_name_key.is_some()
    }

    /// Whether an embedded instance injects faults
    /// ([`ConfigBuilder::fault_injection`], feature `testing`).
    #[cfg(feature = "testing")]
    pub fn fault_injection(&self) -> bool {
        self.fault_injection
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
        d.field("tls", &self.is_tls());
        #[cfg(feature = "tls")]
        if self.is_tls() {
            d.field("tls_settings", &self.tls);
        }
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
            .field("client_tracking", &self.client_tracking)
            .field("encryption_keys", &self.keyring)
            .field("session_name_key", &self.session_name_key);
        #[cfg(feature = "testing")]
        d.field("fault_injection", &self.fault_injection);
        d.finish()
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
    fn credentials_without_a_scheme_are_refused_unquoted() {
        for (vars, field) in [
            (
                vec![("REDIS_HOST", ":hunter2@cache.internal")],
                "REDIS_HOST",
            ),
            (
                vec![("REDIS_HOST", "svc:hunter2@cache.internal")],
                "REDIS_HOST",
            ),
            (vec![("REDIS_HOST", "redis://:hunter2@cache")], "REDIS_HOST"),
            (
                vec![("REDIS_URL", "svc:hunter2@cache.internal:6379")],
                "REDIS_URL",
            ),
            (
                vec![("REDIS_CLUSTER_NODES", "h:1,:hunter2@h:2")],
                "REDIS_CLUSTER_NODES",
            ),
            (
                vec![("REDIS_CLUSTER_NODES", "svc:hunter2@h")],
                "REDIS_CLUSTER_NODES",
            ),
            (
                vec![("REDIS_CLUSTER_NODES", "redis://:hunter2@h:1/2")],
                "REDIS_CLUSTER_NODES",
            ),
        ] {
            let err = from(&vars).unwrap_err();
            let msg = err.to_string();
            assert!(!msg.contains("hunter2"), "{msg}");
            assert_eq!(field_of(err), field, "{msg}");
        }
        for builder in [
            Config::builder().redis_host(":hunter2@h", 6379),
            Config::builder().redis_cluster(["svc:hunter2@h:1"]),
            Config::builder().redis_url("hunter2@h"),
        ] {
            let msg = builder.build().unwrap_err().to_string();
            assert!(
                !msg.contains("hunter2") && msg.contains("credentials"),
                "{msg}"
            );
        }
    }

    #[test]
    fn tls_variables_are_checked_in_every_build() {
        let err = from(&[
            ("REDIS_URL", "redis://h"),
            ("REDIS_TLS_CERT", "/etc/client.pem"),
        ])
        .unwrap_err();
        assert_eq!(field_of(err), "REDIS_TLS_CERT");
        let err = from(&[("REDIS_URL", "redis://h"), ("REDIS_TLS_INSECURE", "maybe")]).unwrap_err();
        assert_eq!(field_of(err), "REDIS_TLS_INSECURE");
        // Off is the default: accepted whatever the build and the target.
        assert!(from(&[("REDIS_URL", "redis://h"), ("REDIS_TLS_INSECURE", "false")]).is_ok());
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_without_the_feature_says_to_enable_it() {
        let refusals = [
            from(&[("REDIS_URL", "rediss://h:6380")]),
            from(&[("REDIS_CLUSTER_NODES", "rediss://h:7000")]),
            from(&[("REDIS_URL", "redis://h"), ("REDIS_TLS_CA", "/etc/ca.pem")]),
            from(&[("REDIS_URL", "redis://h"), ("REDIS_TLS_INSECURE", "true")]),
            Config::builder().redis_url("REDISS://h:6380").build(),
            Config::builder().tls_ca_file("/etc/ca.pem").build(),
            Config::builder()
                .tls_client_auth("/etc/c.pem", "/etc/c.key")
                .build(),
            Config::builder().tls_insecure_skip_verify(true).build(),
        ];
        for result in refusals {
            let msg = result.unwrap_err().to_string();
            assert!(msg.contains("`tls` feature"), "{msg}");
        }
        assert!(Config::builder()
            .redis_url("redis://h")
            .tls_insecure_skip_verify(false)
            .build()
            .is_ok());
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

    #[test]
    fn encryption_keys_come_from_the_environment_and_never_show() {
        let key = "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=";
        let c = from(&[("TIERKIT_ENCRYPTION_KEYS", &format!("4:{key},3:{key}"))]).unwrap();
        assert_eq!(c.encryption_keys().map(|k| k.current_id()), Some(4));
        assert!(!format!("{c:?}").contains(key));
        let err = from(&[("TIERKIT_ENCRYPTION_KEYS", "4:short")]).unwrap_err();
        assert_eq!(field_of(err), "TIERKIT_ENCRYPTION_KEYS");
    }

    #[test]
    fn the_session_name_key_comes_from_the_environment_and_never_shows() {
        // 32 bytes of 9.
        let key = "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=";
        let c = from(&[("TIERKIT_SESSION_NAME_KEY", key)]).unwrap();
        assert!(c.has_session_name_key());
        let shown = format!("{c:?}");
        assert!(!shown.contains(key) && !shown.contains("9, 9"));
        for bad in ["not base64!", "CQkJCQ=="] {
            let err = from(&[("TIERKIT_SESSION_NAME_KEY", bad)]).unwrap_err();
            assert_eq!(field_of(err), "TIERKIT_SESSION_NAME_KEY");
        }
        assert!(!from(&[]).unwrap().has_session_name_key());
    }
}
