//! The root handle that owns the configuration, the codec and (when configured) the Redis
//! connection with its health monitor.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cache::{CacheCore, CacheInfo, Namespace, NamespaceBuilder, NamespaceSlot};
use crate::codec::Codec;
use crate::config::Config;
use crate::conn::Conn;
#[cfg(feature = "testing")]
use crate::conn::StandIn;
use crate::error::Result;
use crate::health::Health;
use crate::ratelimit::{LimiterBuilder, Quota};
use crate::report::HealthReport;
use crate::session::{Sessions, SessionsBuilder};

/// The root handle of tierkit. Cheap to clone: clones share everything.
///
/// With no Redis configured it is *embedded*: nothing connects and every part runs in-process.
/// With Redis configured it starts at once, degraded, and connects in the background.
///
/// # Examples
///
/// ```
/// use tierkit::{Config, Tierkit};
///
/// let kit = Tierkit::new(Config::default())?;
/// assert!(kit.is_embedded());
/// assert!(kit.conn().is_none());
/// # Ok::<(), tierkit::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Tierkit(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    config: Config,
    conn: Option<Conn>,
    /// What stands in for Redis in an embedded instance with fault injection.
    #[cfg(feature = "testing")]
    standin: Option<StandIn>,
    cache: Arc<CacheCore>,
    limiters: Arc<crate::ratelimit::Registry>,
    // Dropping the last handle ends the metrics publisher.
    #[cfg(feature = "metrics")]
    _stop_metrics: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Inner {
    // Loads past their callers' soft timeouts and eager refreshes never outlive the instance
    // (namespace handles kept beyond it still read and write, without them).
    fn drop(&mut self) {
        self.cache.close();
    }
}

impl Tierkit {
    /// Starts tierkit. Never blocks and never fails because Redis is unreachable: with Redis
    /// configured the health state starts `Down` and turns `Up` once the background probe
    /// connects (wait for that with [`Health::wait_for`] if a service prefers to).
    ///
    /// # Errors
    ///
    /// [`Error::NoRuntime`](crate::Error::NoRuntime) when Redis is configured (or, embedded,
    /// `ConfigBuilder::fault_injection` (feature `testing`) is on) and this is called
    /// outside a tokio runtime. Embedded mode otherwise needs no runtime.
    pub fn new(config: Config) -> Result<Self> {
        let conn = match &config.redis {
            Some(target) => Some(Conn::start(&config, target)?),
            None => None,
        };
        #[cfg(feature = "testing")]
        let standin = match conn {
            None if config.fault_injection => Some(StandIn::start(&config)?),
            _ => None,
        };
        let cache = CacheCore::new(
            &config,
            conn.clone(),
            #[cfg(feature = "testing")]
            standin.clone(),
        );
        Ok(Tierkit::assemble(
            config,
            conn,
            #[cfg(feature = "testing")]
            standin,
            cache,
        ))
    }

    /// An embedded instance with default settings: no Redis, nothing connects.
    pub fn embedded() -> Self {
        let config = Config::embedded();
        let cache = CacheCore::new(
            &config,
            None,
            #[cfg(feature = "testing")]
            None,
        );
        Tierkit::assemble(
            config,
            None,
            #[cfg(feature = "testing")]
            None,
            cache,
        )
    }

    #[cfg(not(feature = "metrics"))]
    fn assemble(
        config: Config,
        conn: Option<Conn>,
        #[cfg(feature = "testing")] standin: Option<StandIn>,
        cache: Arc<CacheCore>,
    ) -> Self {
        Tierkit(Arc::new(Inner {
            config,
            conn,
            #[cfg(feature = "testing")]
            standin,
            cache,
            limiters: Arc::default(),
        }))
    }

    /// With metrics, a task publishes the cache's counters once a second (so hits pay nothing
    /// for metrics), given a runtime to run on.
    #[cfg(feature = "metrics")]
    fn assemble(
        config: Config,
        conn: Option<Conn>,
        #[cfg(feature = "testing")] standin: Option<StandIn>,
        cache: Arc<CacheCore>,
    ) -> Self {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let rt = tokio::runtime::Handle::try_current().ok();
        let kit = Tierkit(Arc::new(Inner {
            config,
            conn,
            #[cfg(feature = "testing")]
            standin,
            cache,
            limiters: Arc::default(),
            _stop_metrics: rt.as_ref().map(|_| tx),
        }));
        if let Some(rt) = rt {
            let weak = Arc::downgrade(&kit.0);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = &mut rx => return,
                        _ = tick.tick() => {}
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    inner.cache.publish_metrics().await;
                }
            });
        }
        kit
    }

    /// Starts tierkit from [`Config::from_env`].
    ///
    /// # Errors
    ///
    /// As [`Config::from_env`] and [`Tierkit::new`].
    pub fn from_env() -> Result<Self> {
        Tierkit::new(Config::from_env()?)
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// The codec values are stored with.
    pub fn codec(&self) -> &Codec {
        &self.0.config.codec
    }

    /// Whether this instance runs without Redis.
    pub fn is_embedded(&self) -> bool {
        self.0.conn.is_none()
    }

    /// The Redis connection, or `None` in embedded mode.
    pub fn conn(&self) -> Option<&Conn> {
        self.0.conn.as_ref()
    }

    /// The Redis health monitor, or `None` in embedded mode (unless
    /// `ConfigBuilder::fault_injection` (feature `testing`) is on: then the health of
    /// what stands in for Redis).
    pub fn health(&self) -> Option<&Health> {
        #[cfg(feature = "testing")]
        if let Some(standin) = &self.0.standin {
            return Some(standin.health());
        }
        self.0.conn.as_ref().map(Conn::health)
    }

    /// The faults injected into tierkit's Redis calls, for a service's tests of its degraded
    /// mode (feature `testing`). Embedded, `None` unless
    /// [`fault_injection`](crate::ConfigBuilder::fault_injection) is on: then the faults of
    /// the in-process tiers that stand in for Redis. See [`Faults`](crate::conn::Faults).
    ///
    /// # Examples
    ///
    /// ```
    /// use tierkit::{Config, Tierkit};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> tierkit::Result<()> {
    /// let kit = Tierkit::new(Config::builder().fault_injection(true).build()?)?;
    /// let faults = kit.faults().expect("fault injection is on");
    /// faults.unreachable();
    /// // ... the service answers from its degraded paths ...
    /// faults.heal();
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "testing")]
    pub fn faults(&self) -> Option<&crate::conn::Faults> {
        if let Some(standin) = &self.0.standin {
            return Some(standin.faults());
        }
        self.0.conn.as_ref().map(Conn::faults)
    }

    /// Declares a cache namespace holding values of type `V`; see
    /// [`NamespaceBuilder`] for its settings.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let kit = tierkit::Tierkit::embedded();
    /// let profiles = kit
    ///     .namespace::<String>("profiles")
    ///     .ttl(Duration::from_secs(3600))
    ///     .build()?;
    /// assert_eq!(profiles.name(), "profiles");
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn namespace<V>(&self, name: impl Into<String>) -> NamespaceBuilder<V>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        NamespaceBuilder::new(self.0.cache.clone(), name.into())
    }

    /// The handle `slot` keeps for this instance, or, the first time, the one `declare`
    /// declares on it (then kept): a namespace declared once per instance and reached from a
    /// `static`, as the `#[cached]` attribute macro (feature `macros`) does for each function.
    /// After the first call it costs a shared lock and a short scan, no declaration.
    ///
    /// # Errors
    ///
    /// What `declare` returns, and [`Error::InvalidInput`](crate::Error::InvalidInput) when it
    /// declares the namespace on another instance than the one it is given.
    ///
    /// # Examples
    ///
    /// ```
    /// use tierkit::cache::NamespaceSlot;
    ///
    /// static USERS: NamespaceSlot<String> = NamespaceSlot::new();
    ///
    /// let kit = tierkit::Tierkit::embedded();
    /// let users = kit.namespace_in(&USERS, |kit| kit.namespace::<String>("users").build())?;
    /// assert_eq!(users.name(), "users");
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn namespace_in<V>(
        &self,
        slot: &NamespaceSlot<V>,
        declare: impl FnOnce(&Tierkit) -> Result<Namespace<V>>,
    ) -> Result<Namespace<V>>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        if let Some(ns) = slot.find(&self.0.cache) {
            return Ok(ns);
        }
        let ns = declare(self)?;
        slot.keep(&self.0.cache, &ns)?;
        Ok(ns)
    }

    /// Counters of every namespace, L1 size, backplane state, and (one pipelined round trip,
    /// bounded by the op timeout) Redis key count and memory.
    pub async fn cache_info(&self) -> CacheInfo {
        self.0.cache.info(true).await
    }

    /// Waits until this instance is ready to serve with every guarantee: Redis `Up` and the
    /// cache backplane subscribed (so other instances' writes evict this L1). Returns at once
    /// when embedded (with fault injection: once what stands in for Redis is `Up`); `false`
    /// if `timeout` passed first. Nothing needs this to work (tierkit
    /// serves from its in-process tier meanwhile); services that prefer to start serving
    /// only once coherent, and tests, wait here.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let kit = tierkit::Tierkit::embedded();
    /// assert!(kit.ready(std::time::Duration::from_secs(1)).await);
    /// # }
    /// ```
    pub async fn ready(&self, timeout: std::time::Duration) -> bool {
        let Some(health) = self.health() else {
            return true;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        if !health
            .wait_for(crate::health::HealthState::Up, timeout)
            .await
        {
            return false;
        }
        if self.0.conn.is_none() {
            // What stands in for Redis has no backplane: nothing to be coherent with.
            return true;
        }
        tokio::time::timeout_at(deadline, self.0.cache.wait_coherent())
            .await
            .is_ok()
    }

    /// Declares a rate limiter named `name` (its keys live under `{prefix}:rl:{name}:{algorithm}:`) with
    /// `quota`; see [`LimiterBuilder`] for its settings.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierkit::ratelimit::Quota;
    ///
    /// let kit = tierkit::Tierkit::embedded();
    /// let api = kit.limiter("api", Quota::new(100, Duration::from_secs(900))?).build()?;
    /// assert_eq!(api.local_share(), 100);
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn limiter(&self, name: impl Into<String>, quota: Quota) -> LimiterBuilder {
        let builder = LimiterBuilder::new(
            self.0.conn.clone(),
            self.0.config.keys.clone(),
            self.0.config.clock.clone(),
            name.into(),
            quota,
            Arc::clone(&self.0.limiters),
        );
        #[cfg(feature = "testing")]
        let builder = builder.stand_in(self.0.standin.clone());
        builder
    }

    /// Configures a session store: in Redis when Redis is configured, in process memory when
    /// embedded. See [`SessionsBuilder`] for its settings.
    ///
    /// # Examples
    ///
    /// ```
    /// let kit = tierkit::Tierkit::embedded();
    /// let sessions = kit.sessions().build()?;
    /// # let _ = sessions;
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn sessions(&self) -> SessionsBuilder {
        let builder = SessionsBuilder::new(
            self.0.conn.clone(),
            self.0.config.codec.clone(),
            self.0.config.keyring.clone(),
            self.0.config.session_name_key.clone(),
            self.0.config.keys.clone(),
            self.0.config.clock.clone(),
        );
        #[cfg(feature = "testing")]
        let builder = builder.stand_in(self.0.standin.clone());
        builder
    }

    /// The health report (see [`report`](crate::report) for its shape and status rules), in
    /// its detailed form: with the last error's text and, on a cluster, the unreachable
    /// primaries and their slots. Serve it where only operators reach; on an endpoint anyone
    /// can reach, serve [`HealthReport::public`] of it, which leaves those two fields out.
    /// Never waits longer than the op timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let kit = tierkit::Tierkit::embedded();
    /// let internal = serde_json::to_value(kit.health_report().await).unwrap();
    /// let public = serde_json::to_value(kit.health_report().await.public()).unwrap();
    /// assert_eq!(internal["status"], public["status"]);
    /// # }
    /// ```
    pub async fn health_report(&self) -> HealthReport {
        HealthReport::collect(self.health(), &self.0.cache, &self.0.limiters, None).await
    }

    /// [`health_report`](Self::health_report) with the session counts of `sessions`; detailed
    /// too, with [`HealthReport::public`] for endpoints anyone can reach.
    pub async fn health_report_with(&self, sessions: &Sessions) -> HealthReport {
        HealthReport::collect(
            self.health(),
            &self.0.cache,
            &self.0.limiters,
            Some(sessions),
        )
        .await
    }

    /// Publishes the cache's counters to the `metrics` recorder now (a background task does it
    /// once a second); call it before rendering a scrape for exact figures.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub async fn publish_metrics(&self) {
        self.0.cache.publish_metrics().await;
    }
}
