//! The validating builder of [`Config`]: one setter per setting, each documenting its default.

use std::fmt;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use super::clock::{Clock, SharedClock};
use super::{Config, NameKey, Target};
use crate::codec::{Codec, Keyring};
use crate::error::{Error, Result};
use crate::keys::Keys;

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
    pub(super) config: Config,
    // Setters stay infallible and chainable; the first invalid value is reported by build().
    pub(super) error: Option<Error>,
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
    pub(super) fn fail(&mut self, err: Error) {
        self.error.get_or_insert(err);
    }

    /// Use the Redis server at `url`: `redis://[user][:password@]host[:port][/db]`, or
    /// `rediss://...` for TLS (the `tls` feature; see [`tls_ca_file`](Self::tls_ca_file) and
    /// the other TLS settings). A URL ending in `#insecure` is refused: skipping certificate
    /// verification is set by name, with
    /// [`tls_insecure_skip_verify`](Self::tls_insecure_skip_verify). Default: none (embedded
    /// mode).
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

    /// Use Redis at `host:port` over TCP. The host is a name or IP only: one carrying
    /// credentials (`user:pw@host`) or a URL is refused without being repeated in the error
    /// (give the password with [`redis_password`](Self::redis_password), or use
    /// [`redis_url`](Self::redis_url), `rediss://` for TLS). Default: none (embedded mode).
    ///
    /// ```
    /// let err = tierkit::Config::builder().redis_host(":hunter2@cache.internal", 6379).build();
    /// let msg = err.unwrap_err().to_string();
    /// assert!(msg.contains("redis_host") && !msg.contains("hunter2"));
    /// ```
    pub fn redis_host(mut self, host: impl Into<String>, port: u16) -> Self {
        let host = host.into();
        if let Err(e) = check_host("redis_host", &host) {
            self.fail(e);
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

    /// The prefix of every Redis key: 1 to 64 characters from `A-Z a-z 0-9 _ - .`, so it
    /// can never carry glob metacharacters, hash tags or the `:` that ends it. Two instances
    /// with different prefixes never touch each other's keys, whatever the prefixes (`app`
    /// and `app.c` included). Default: `tierkit`.
    ///
    /// ```
    /// assert!(tierkit::Config::builder().prefix("shop.cache").build().is_ok());
    /// let err = tierkit::Config::builder().prefix("shop:cache").build().unwrap_err();
    /// assert!(err.to_string().contains("':'"));
    /// ```
    pub fn prefix(mut self, prefix: impl AsRef<str>) -> Self {
        match Keys::new(prefix.as_ref()) {
            Ok(keys) => self.config.keys = keys,
            Err(e) => self.fail(e),
        }
        self
    }

    /// The clock tierkit's own time decisions read (session expiry, the local rate limiter,
    /// block windows). Tests pass a [`ManualClock`](super::clock::ManualClock) and move time
    /// with `advance` instead of sleeping. Default: the system clock.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierkit::clock::ManualClock;
    ///
    /// let clock = ManualClock::new();
    /// let config = tierkit::Config::builder().clock(clock.clone()).build()?;
    /// clock.advance(Duration::from_secs(60));
    /// # let _ = config;
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.config.clock = SharedClock::new(clock);
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

    /// The keys that namespaces built with
    /// [`encrypted`](crate::cache::NamespaceBuilder::encrypted) seal their values with (the
    /// current key) and open them with (any listed key); with keys, session records in Redis
    /// are sealed too (records stored plain before are then not read), and a Redis session
    /// store also needs a [`session_name_key`](Self::session_name_key). Default: none, and no
    /// namespace may be encrypted.
    ///
    /// ```
    /// use tierkit::codec::Keyring;
    ///
    /// let keys = Keyring::new([(1, [7u8; 32].as_slice())])?;
    /// let config = tierkit::Config::builder().encryption_keys(keys).build()?;
    /// assert_eq!(config.encryption_keys().map(Keyring::current_id), Some(1));
    /// // Key material never shows.
    /// assert!(!format!("{config:?}").contains("7, 7"));
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn encryption_keys(mut self, keys: Keyring) -> Self {
        self.config.keyring = Some(keys);
        self
    }

    /// The secret that names users in session keys: with it, a user's routing tag (the first
    /// part of their session ids and refresh tokens) and the user id in their index key and in
    /// the sweep's user list are HMAC-SHA256 of the user id under this key, so neither a token
    /// nor a reader of Redis can tell or test whose sessions they are. Keep it stable: it is
    /// not rotated like [`encryption_keys`](Self::encryption_keys), since changing it renames
    /// every user and so ends every session. At least 32 bytes, best 32 random bytes. Needed
    /// for a Redis session store with encryption keys. Default: none (plain names).
    ///
    /// ```
    /// let config = tierkit::Config::builder().session_name_key([7u8; 32]).build()?;
    /// assert!(config.has_session_name_key());
    /// // Key material never shows.
    /// assert!(!format!("{config:?}").contains("7, 7"));
    /// assert!(tierkit::Config::builder().session_name_key(b"short").build().is_err());
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn session_name_key(mut self, key: impl AsRef<[u8]>) -> Self {
        let key = key.as_ref();
        if key.len() < NameKey::MIN_LEN {
            self.fail(Error::config(
                "session_name_key",
                format!(
                    "is {} bytes; give at least {} (32 random bytes)",
                    key.len(),
                    NameKey::MIN_LEN
                ),
            ));
        } else {
            self.config.session_name_key = Some(NameKey(std::sync::Arc::new(
                zeroize::Zeroizing::new(key.to_vec()),
            )));
        }
        self
    }

    /// The bound on the in-process L1 cache shared by all namespaces, in bytes: each entry
    /// weighs its encoded size plus its key. Default: 64 MiB.
    ///
    /// Once L1 is full, a value read from Redis goes in only if its key was read from Redis
    /// before, within about as many L1 fills as L1 holds entries: a key that comes back less
    /// often would be evicted before its next read, so it would only cost an insert and push
    /// out an entry that is read (a scan over many keys, or keys read once, keep the hot set
    /// out otherwise). Writes and loads always go in.
    pub fn l1_capacity(mut self, bytes: u64) -> Self {
        self.config.l1_capacity = bytes;
        self
    }

    /// Count L1 evictions per namespace (`CacheStats::evictions`). Default: off, and
    /// `evictions` stays 0, as statistics are opt-in in Caffeine for the same reason: they
    /// cost on the hot path. Counting needs a moka eviction listener, and with one moka takes a
    /// per-key lock on every insert and invalidation (each L1 fill, an L2 hit, a load or a
    /// write, costs about half as much again), and an L1 hit with both cores reading takes
    /// 13-20% longer (BENCHMARKS.md). Turn it on while sizing `l1_capacity`.
    ///
    /// ```
    /// let config = tierkit::Config::builder().l1_eviction_counts(true).build()?;
    /// assert!(config.l1_eviction_counts());
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn l1_eviction_counts(mut self, on: bool) -> Self {
        self.config.l1_eviction_counts = on;
        self
    }

    /// Server-assisted coherence: a connection of its own asks Redis (6 or later) to push the
    /// name of every cache entry anyone modifies (`CLIENT TRACKING ... BCAST`, RESP3), so a
    /// write by a program that does not use tierkit (`redis-cli`, a service in another
    /// language) also evicts every instance's L1 copy within a round trip. It runs beside the
    /// backplane, which still carries tag, pattern and namespace invalidations. Costs: this
    /// instance's own writes and fills evict its own L1 copy too (the next read is an L2 hit),
    /// and Redis pushes every cache write to every instance. A single server only. Default:
    /// off.
    ///
    /// ```
    /// let config = tierkit::Config::builder()
    ///     .redis_url("redis://127.0.0.1:6379")
    ///     .client_tracking(true)
    ///     .build()?;
    /// assert!(config.client_tracking());
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn client_tracking(mut self, on: bool) -> Self {
        self.config.client_tracking = on;
        self
    }

    /// Makes an embedded instance testable in its degraded mode (feature `testing`): the
    /// in-process tiers that take Redis's place (the session store, the limiter's shared
    /// window) are reached through [`Faults`](crate::conn::Faults), as Redis calls are, and a
    /// health monitor of their own follows them, so
    /// [`Tierkit::faults`](crate::Tierkit::faults) and [`Tierkit::health`](crate::Tierkit::health)
    /// answer and the report shows the state. Sessions then keep a local copy of what they
    /// validate and the limiter a local share, as with Redis, and decisions made through the
    /// stand-in read [`Tier::Redis`](crate::ratelimit::Tier::Redis). The cache keeps
    /// everything in its L1 when embedded, so faults leave its answers alone; its writes and
    /// invalidations meet them and reach [`Reach::L1Only`](crate::cache::Reach::L1Only)
    /// (counted) while the stand-in is down or failing. With Redis configured, faults are
    /// always on its connection and this setting changes nothing.
    /// Default: off.
    ///
    /// ```
    /// let config = tierkit::Config::builder().fault_injection(true).build()?;
    /// assert!(config.fault_injection());
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    #[cfg(feature = "testing")]
    pub fn fault_injection(mut self, on: bool) -> Self {
        self.config.fault_injection = on;
        self
    }

    /// Validates every setting.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for the first invalid value, naming the setting, and for
    /// [`client_tracking`](Self::client_tracking) on a cluster.
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
        if c.client_tracking && c.is_cluster() {
            return Err(Error::config(
                "client_tracking",
                "tracks one server's keys; on a Redis Cluster rely on the backplane (turn it off)",
            ));
        }
        // TLS settings meet the target last: setters may come in any order.
        #[cfg(feature = "tls")]
        let c = {
            let mut c = c;
            c.tls.apply(c.redis.as_mut())?;
            c
        };
        Ok(c)
    }
}

pub(super) fn parse_url(url: &str, field: &str) -> Result<ConnectionInfo> {
    let url = url.trim();
    refuse_credentials_without_scheme(field, url)?;
    #[cfg(not(feature = "tls"))]
    if is_tls_url(url) {
        return Err(Error::config(
            field,
            format!(
                "is a TLS URL (rediss://), which {}",
                super::tls::NEEDS_FEATURE
            ),
        ));
    }
    let info = url.into_connection_info().map_err(|e| {
        Error::config(
            field,
            format!("is not a valid Redis URL ({e}); expected redis://[user][:password@]host[:port][/db] or rediss:// for TLS"),
        )
    })?;
    if matches!(info.addr(), ConnectionAddr::TcpTls { insecure: true, .. }) {
        return Err(Error::config(
            field,
            "ends in #insecure; skipping certificate verification is set only by name, for \
             development only: tls_insecure_skip_verify(true) or REDIS_TLS_INSECURE=true",
        ));
    }
    Ok(info)
}

/// Whether `url`'s scheme asks for TLS.
#[cfg(not(feature = "tls"))]
fn is_tls_url(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
    })
}

/// A host or address without a scheme cannot carry credentials: a `user:password@` in front
/// would be taken for part of the host name and end up in error messages and logs. Refused
/// without quoting the value.
pub(super) fn refuse_credentials_without_scheme(field: &str, value: &str) -> Result<()> {
    if !value.contains("://") && value.contains('@') {
        return Err(Error::config(
            field,
            "holds credentials (user:password@ before the host) but no URL scheme; give the \
             password with redis_password or REDIS_PASSWORD, or write a whole URL \
             (redis://user:password@host:port); the value is not repeated here",
        ));
    }
    Ok(())
}

/// A host name given on its own: not empty, not a URL, no credentials. The value is never
/// quoted, since a mistaken one may hold a password.
pub(super) fn check_host(field: &str, host: &str) -> Result<()> {
    if host.trim().is_empty() {
        return Err(Error::config(field, "is empty; give a host name or IP"));
    }
    if host.contains("://") {
        return Err(Error::config(
            field,
            "is a URL, not a host name; give it as redis_url or REDIS_URL (the value is not \
             repeated here)",
        ));
    }
    refuse_credentials_without_scheme(field, host)
}

/// Seed nodes of a cluster: each `host:port` or a URL; at least one; one set of credentials
/// and database 0, since the cluster client uses the same for every node.
pub(super) fn parse_nodes<I>(nodes: I, field: &str) -> Result<Vec<ConnectionInfo>>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let mut parsed = Vec::new();
    for node in nodes {
        let node = node.as_ref().trim();
        refuse_credentials_without_scheme(field, node)?;
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
        // Named by address only: a URL may carry a password.
        if info.redis_settings().db() != 0 {
            return Err(Error::config(
                field,
                format!(
                    "the node at {} names a database; a Redis Cluster has only database 0",
                    info.addr()
                ),
            ));
        }
        let tls = |i: &ConnectionInfo| matches!(i.addr(), ConnectionAddr::TcpTls { .. });
        if parsed.first().is_some_and(|first| tls(first) != tls(&info)) {
            return Err(Error::config(
                field,
                "mixes rediss:// and plain nodes; a cluster is reached over TLS or not at all, \
                 so write every node as rediss://host:port for TLS",
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

pub(super) fn tcp_info(
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
