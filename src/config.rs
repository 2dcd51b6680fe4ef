//! Configuration: a validating builder and `from_env()`.

use std::fmt;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use crate::codec::Codec;
use crate::error::{Error, Result};

const DEFAULT_PREFIX: &str = "tierkit";
const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(100);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(250);
const DEFAULT_DEGRADED_LATENCY: Duration = Duration::from_millis(50);
const DEFAULT_FAIL_THRESHOLD: u32 = 3;
const DEFAULT_RECOVER_THRESHOLD: u32 = 2;
const DEFAULT_L1_CAPACITY: u64 = 64 * 1024 * 1024;
const MAX_PREFIX_LEN: usize = 64;

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
    pub(crate) prefix: String,
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
            prefix: DEFAULT_PREFIX.to_owned(),
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
    /// [`Error::Config`] naming the variable whose value is invalid.
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
        &self.prefix
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
        d.field("prefix", &self.prefix)
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

/// Builds a [`Config`]; every setter documents its default, and [`build`](Self::build)
/// validates them all.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tierkit::Config;
///
/// let config = Config::builder()
///     .redis_url("redis://127.0.0.1:6380")
///     .probe_interval(Duration::from_millis(500))
///     .fail_threshold(2)
///     .build()?;
/// assert_eq!(config.prefix(), "tierkit");
/// # Ok::<(), tierkit::Error>(())
/// ```
#[derive(Default)]
#[must_use = "a builder does nothing until build() is called"]
pub struct ConfigBuilder {
    config: Config,
    // Setters stay infallible and chainable; the first invalid value is reported by build().
    error: Option<Error>,
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("config", &self.config)
            .field("error", &self.error)
            .finish()
    }
}

impl ConfigBuilder {
    fn fail(&mut self, err: Error) {
        self.error.get_or_insert(err);
    }

    /// Use the Redis server at `url` (`redis://[user][:password@]host[:port][/db]`, or `rediss://`
    /// for TLS when redis-rs is built with TLS). Default: none (embedded mode).
    pub fn redis_url(mut self, url: impl AsRef<str>) -> Self {
        match parse_url(url.as_ref(), "redis_url") {
            Ok(info) => self.config.redis = Some(Target::Single(Box::new(info))),
            Err(e) => self.fail(e),
        }
        self
    }

    /// Use the Redis Cluster reached through these seed nodes, each `host:port` or a URL as
    /// in [`redis_url`](Self::redis_url). The whole topology (every primary and replica) is
    /// discovered from whichever seed answers, so two or three seeds are enough. Credentials
    /// and TLS are those of the first node (or set with [`redis_username`](Self::redis_username)
    /// and [`redis_password`](Self::redis_password)) and apply to every node; a cluster has
    /// only database 0. Default: none (embedded mode).
    ///
    /// ```
    /// let config = tierkit::Config::builder()
    ///     .redis_cluster(["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"])
    ///     .build()?;
    /// assert!(config.is_cluster());
    ///
    /// let err = tierkit::Config::builder().redis_cluster(["127.0.0.1"]).build().unwrap_err();
    /// assert!(err.to_string().contains("host:port"));
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn redis_cluster<I>(mut self, nodes: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        match parse_nodes(nodes, "redis_cluster") {
            Ok(nodes) => self.config.redis = Some(Target::Cluster(nodes)),
            Err(e) => self.fail(e),
        }
        self
    }

    /// Use Redis at `host:port` over TCP. Default: none (embedded mode).
    pub fn redis_host(mut self, host: impl Into<String>, port: u16) -> Self {
        let host = host.into();
        if host.trim().is_empty() {
            self.fail(Error::config(
                "redis_host",
                "is empty; give a host name or IP",
            ));
            return self;
        }
        let settings = self
            .config
            .redis
            .as_ref()
            .and_then(Target::first)
            .map(|i| i.redis_settings().clone())
            .unwrap_or_default();
        match tcp_info("redis_host", host, port, settings) {
            Ok(info) => self.config.redis = Some(Target::Single(Box::new(info))),
            Err(e) => self.fail(e),
        }
        self
    }

    /// The Redis password (overrides one in the URL), for every node of a cluster. Needs a
    /// Redis target set first. Default: none.
    pub fn redis_password(self, password: impl AsRef<str>) -> Self {
        let password = password.as_ref();
        self.with_settings("redis_password", |s| s.set_password(password))
    }

    /// The Redis ACL user name (overrides one in the URL), for every node of a cluster. Needs
    /// a Redis target set first. Default: none (the `default` user).
    pub fn redis_username(mut self, username: impl AsRef<str>) -> Self {
        let username = username.as_ref();
        if username.trim().is_empty() {
            self.fail(Error::config(
                "redis_username",
                "is empty; give an ACL user name",
            ));
            return self;
        }
        self.with_settings("redis_username", |s| s.set_username(username))
    }

    /// The Redis logical database. Needs a single-server target set first (a cluster has only
    /// database 0). Default: 0.
    pub fn redis_db(mut self, db: i64) -> Self {
        if db < 0 {
            self.fail(Error::config(
                "redis_db",
                format!("{db} is negative; use 0 or more"),
            ));
            return self;
        }
        if db != 0 && self.config.is_cluster() {
            self.fail(Error::config(
                "redis_db",
                format!("{db} given for a Redis Cluster, which has only database 0"),
            ));
            return self;
        }
        self.with_settings("redis_db", |s| s.set_db(db))
    }

    /// Applies `f` to the settings of every node, or records that there is no target yet.
    fn with_settings(
        mut self,
        field: &str,
        f: impl Fn(RedisConnectionInfo) -> RedisConnectionInfo,
    ) -> Self {
        match self.config.redis.as_mut() {
            Some(target) => {
                for info in target.infos_mut() {
                    let settings = f(info.redis_settings().clone());
                    *info = info.clone().set_redis_settings(settings);
                }
            }
            None => self.fail(Error::config(
                field,
                "set without a Redis target; call redis_url, redis_host or redis_cluster first",
            )),
        }
        self
    }

    /// Drop any Redis target and run embedded.
    pub fn embedded(mut self) -> Self {
        self.config.redis = None;
        self
    }

    /// The prefix of every Redis key: 1 to 64 characters from `A-Z a-z 0-9 _ - . :`, so it
    /// can never carry glob metacharacters or hash tags. Default: `tierkit`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        match validate_prefix(&prefix) {
            Ok(()) => self.config.prefix = prefix,
            Err(problem) => self.fail(Error::config("prefix", problem)),
        }
        self
    }

    /// The bound on every Redis command, pipeline and script call, waiting for a reconnect
    /// included. Default: 100 ms.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.config.op_timeout = timeout;
        self
    }

    /// The bound on one connection attempt. Default: 500 ms.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// How often the health monitor PINGs Redis. Default: 1 s.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.config.health.probe_interval = interval;
        self
    }

    /// How long one health PING may take before it counts as a failure. Default: 250 ms.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.config.health.probe_timeout = timeout;
        self
    }

    /// A PING slower than this marks Redis `Degraded`. Default: 50 ms.
    pub fn degraded_latency(mut self, latency: Duration) -> Self {
        self.config.health.degraded_latency = latency;
        self
    }

    /// Consecutive failures (probes or operations) that mark Redis `Down`. Default: 3.
    pub fn fail_threshold(mut self, n: u32) -> Self {
        self.config.health.fail_threshold = n;
        self
    }

    /// Consecutive successful probes that bring Redis back from `Down` (or from `Degraded`
    /// to `Up`). Default: 2.
    pub fn recover_threshold(mut self, n: u32) -> Self {
        self.config.health.recover_threshold = n;
        self
    }

    /// The codec values are stored with. Default: `Codec::default()`.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.config.codec = codec;
        self
    }

    /// The bound on the in-process L1 cache shared by all namespaces, in bytes: each entry
    /// weighs its encoded size plus its key. Default: 64 MiB.
    pub fn l1_capacity(mut self, bytes: u64) -> Self {
        self.config.l1_capacity = bytes;
        self
    }

    /// Count L1 evictions per namespace (`CacheStats::evictions`). Counting needs a moka
    /// eviction listener, and with one moka takes a per-key lock on every insert and
    /// invalidation: each L1 fill (an L2 hit, a load, a write) costs about half as much again
    /// (BENCHMARKS.md). Services that fill L1 at a high rate and do not watch evictions can
    /// turn it off; `evictions` then stays 0. Default: on.
    ///
    /// ```
    /// let config = tierkit::Config::builder().l1_eviction_counts(false).build()?;
    /// assert!(!config.l1_eviction_counts());
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn l1_eviction_counts(mut self, on: bool) -> Self {
        self.config.l1_eviction_counts = on;
        self
    }

    /// Applies the process environment on top of this builder.
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `REDIS_CLUSTER_NODES` | `host:port,host:port,...`: seed nodes of a Redis Cluster; selects cluster mode |
    /// | `REDIS_URL` | Redis URL; wins over the `REDIS_HOST` group |
    /// | `REDIS_HOST`, `REDIS_PORT` (6379), `REDIS_DB` (0) | Redis by parts |
    /// | `REDIS_USERNAME`, `REDIS_PASSWORD` | ACL user and password, for every node (override the URL's) |
    /// | `TIERKIT_PREFIX` | key prefix |
    /// | `TIERKIT_OP_TIMEOUT_MS` | per-operation timeout in milliseconds |
    ///
    /// Empty values count as unset. With none of `REDIS_CLUSTER_NODES`, `REDIS_URL` and
    /// `REDIS_HOST` the builder stays
    /// as it was (embedded unless a Redis target was set in code).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable, e.g. a `REDIS_PORT` that is not a port number, or
    /// `REDIS_PASSWORD` set without a Redis target, or `REDIS_CLUSTER_NODES` set together with
    /// `REDIS_URL`.
    pub fn env(self) -> Result<Self> {
        self.env_from(|name| std::env::var(name).ok())
    }

    pub(crate) fn env_from(mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        if let Some(nodes) = var("REDIS_CLUSTER_NODES") {
            for other in ["REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_DB"] {
                if var(other).is_some() {
                    return Err(Error::config(
                        other,
                        "is set together with REDIS_CLUSTER_NODES; a cluster is reached \
                         through its seed nodes alone (and has only database 0)",
                    ));
                }
            }
            self.config.redis = Some(Target::Cluster(parse_nodes(
                nodes.split(',').filter(|n| !n.trim().is_empty()),
                "REDIS_CLUSTER_NODES",
            )?));
        } else if let Some(url) = var("REDIS_URL") {
            self.config.redis = Some(Target::Single(Box::new(parse_url(&url, "REDIS_URL")?)));
        } else if let Some(host) = var("REDIS_HOST") {
            let port = match var("REDIS_PORT") {
                None => 6379,
                Some(p) => p
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        Error::config(
                            "REDIS_PORT",
                            format!("{p:?} is not a port number (1-65535)"),
                        )
                    })?,
            };
            let mut settings = RedisConnectionInfo::default();
            if let Some(db) = var("REDIS_DB") {
                let db = db
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|d| *d >= 0)
                    .ok_or_else(|| {
                        Error::config(
                            "REDIS_DB",
                            format!("{db:?} is not a database number (0 or more)"),
                        )
                    })?;
                settings = settings.set_db(db);
            }
            self.config.redis = Some(Target::Single(Box::new(tcp_info(
                "REDIS_HOST",
                host.trim().to_owned(),
                port,
                settings,
            )?)));
        } else {
            for orphan in ["REDIS_PORT", "REDIS_PASSWORD", "REDIS_USERNAME", "REDIS_DB"] {
                if var(orphan).is_some() {
                    return Err(Error::config(
                        orphan,
                        "is set but none of REDIS_URL, REDIS_HOST and REDIS_CLUSTER_NODES is; \
                         set one of them",
                    ));
                }
            }
        }
        if let Some(user) = var("REDIS_USERNAME") {
            self = self.redis_username(user);
        }
        if let Some(pw) = var("REDIS_PASSWORD") {
            self = self.redis_password(pw);
        }
        if let Some(err) = self.error.take() {
            return Err(err);
        }
        if let Some(prefix) = var("TIERKIT_PREFIX") {
            validate_prefix(&prefix).map_err(|p| Error::config("TIERKIT_PREFIX", p))?;
            self.config.prefix = prefix;
        }
        if let Some(ms) = var("TIERKIT_OP_TIMEOUT_MS") {
            let ms = ms
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms > 0)
                .ok_or_else(|| {
                    Error::config(
                        "TIERKIT_OP_TIMEOUT_MS",
                        format!("{ms:?} is not a positive number of milliseconds"),
                    )
                })?;
            self.config.op_timeout = Duration::from_millis(ms);
        }
        Ok(self)
    }

    /// Validates every setting.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for the first invalid value, naming the setting.
    pub fn build(self) -> Result<Config> {
        if let Some(err) = self.error {
            return Err(err);
        }
        let c = self.config;
        let h = &c.health;
        for (field, d) in [
            ("op_timeout", c.op_timeout),
            ("connect_timeout", c.connect_timeout),
            ("probe_interval", h.probe_interval),
            ("probe_timeout", h.probe_timeout),
            ("degraded_latency", h.degraded_latency),
        ] {
            if d.is_zero() {
                return Err(Error::config(field, "is zero; give a positive duration"));
            }
        }
        if c.l1_capacity == 0 {
            return Err(Error::config(
                "l1_capacity",
                "is zero; give the L1 a size in bytes (default 64 MiB)",
            ));
        }
        if h.probe_timeout > h.probe_interval {
            return Err(Error::config(
                "probe_timeout",
                format!(
                    "{:?} is longer than probe_interval {:?}; probes would overlap",
                    h.probe_timeout, h.probe_interval
                ),
            ));
        }
        for (field, n) in [
            ("fail_threshold", h.fail_threshold),
            ("recover_threshold", h.recover_threshold),
        ] {
            if n == 0 {
                return Err(Error::config(field, "is zero; use 1 or more"));
            }
        }
        Ok(c)
    }
}

fn parse_url(url: &str, field: &str) -> Result<ConnectionInfo> {
    url.trim().into_connection_info().map_err(|e| {
        Error::config(
            field,
            format!("is not a valid Redis URL ({e}); expected redis://[user][:password@]host[:port][/db]"),
        )
    })
}

/// Seed nodes of a cluster: each `host:port` or a URL; at least one; one set of credentials
/// and database 0, since the cluster client uses the same for every node.
fn parse_nodes<I>(nodes: I, field: &str) -> Result<Vec<ConnectionInfo>>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let mut parsed = Vec::new();
    for node in nodes {
        let node = node.as_ref().trim();
        let info = if node.contains("://") {
            parse_url(node, field)?
        } else {
            let (host, port) = node
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok().filter(|p| *p != 0)?)))
                .filter(|(h, _)| !h.is_empty())
                .ok_or_else(|| {
                    Error::config(
                        field,
                        format!("{node:?} is not a node address; expected host:port or a URL"),
                    )
                })?;
            tcp_info(field, host.to_owned(), port, RedisConnectionInfo::default())?
        };
        if info.redis_settings().db() != 0 {
            return Err(Error::config(
                field,
                format!("{node:?} names a database; a Redis Cluster has only database 0"),
            ));
        }
        if let Some(first) = parsed.first().map(ConnectionInfo::redis_settings) {
            let settings = info.redis_settings();
            if first.username() != settings.username() || first.password() != settings.password() {
                return Err(Error::config(
                    field,
                    "nodes carry different credentials; give them once for all nodes",
                ));
            }
        }
        parsed.push(info);
    }
    if parsed.is_empty() {
        return Err(Error::config(
            field,
            "lists no nodes; give at least one host:port",
        ));
    }
    Ok(parsed)
}

fn tcp_info(
    field: &str,
    host: String,
    port: u16,
    settings: RedisConnectionInfo,
) -> Result<ConnectionInfo> {
    let info = ConnectionAddr::Tcp(host, port)
        .into_connection_info()
        .map_err(|e| Error::config(field, e.to_string()))?;
    Ok(info.set_redis_settings(settings))
}

/// Names of namespaces and limiters become part of Redis keys: 1-64 characters that can never
/// be glob metacharacters, hash-tag braces or the `:` separator.
pub(crate) fn validate_name(field: &str, name: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        return Err(Error::config(
            field,
            format!("{name:?} must be 1-64 characters from A-Z a-z 0-9 _ - ."),
        ));
    }
    Ok(())
}

fn validate_prefix(prefix: &str) -> std::result::Result<(), String> {
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN {
        return Err(format!(
            "{prefix:?} must be 1 to {MAX_PREFIX_LEN} characters long"
        ));
    }
    if let Some(bad) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(format!(
            "{prefix:?} contains {bad:?}; use only A-Z a-z 0-9 _ - . :"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
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
