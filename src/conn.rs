//! The one Redis connection layer: a cheap-to-clone handle over one multiplexed,
//! auto-reconnecting connection, with every call bounded by the per-operation timeout and
//! gated by [`health`](crate::health).
//!
//! ## Behavior
//!
//! - Construction never connects: the connection is made lazily and in the background by the
//!   health probe, so a service starts even when Redis is down.
//! - Every command, pipeline and script call is bounded by `op_timeout`, time spent waiting
//!   for a reconnect included, and fails with [`Error::Timeout`].
//! - While health is `Down` calls fail at once with [`Error::Unavailable`], so no caller waits
//!   for a timeout during an outage.
//! - Connection errors and timeouts feed the health monitor; server replies such as
//!   `WRONGTYPE` do not.
//! - Scripts run by `EVALSHA` and are loaded again when the server answers `NOSCRIPT`
//!   (after a restart or `SCRIPT FLUSH`).

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{Cmd, FromRedisValue, Pipeline, ScriptInvocation};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::health::Health;

/// A handle to the Redis connection. Cheap to clone; all clones share one multiplexed
/// connection and one health monitor.
///
/// Get one from [`Tierkit::conn`](crate::Tierkit::conn).
///
/// # Examples
///
/// ```no_run
/// use tierkit::{Config, Tierkit};
///
/// # async fn demo() -> tierkit::Result<()> {
/// let kit = Tierkit::new(Config::builder().redis_url("redis://127.0.0.1:6380").build()?)?;
/// let conn = kit.conn().expect("Redis is configured");
/// let _: () = conn.query(redis::cmd("SET").arg("k").arg("v")).await?;
/// let v: Option<String> = conn.query(redis::cmd("GET").arg("k")).await?;
/// assert_eq!(v.as_deref(), Some("v"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Conn(Arc<Inner>);

struct Inner {
    client: redis::Client,
    manager: ConnectionManager,
    op_timeout: Duration,
    health: Health,
    // Dropping the last handle drops this sender, which ends the probe task.
    _stop_probe: oneshot::Sender<()>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("op_timeout", &self.0.op_timeout)
            .field("health", &self.0.health.state())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Builds the handle and starts the health probe. Never connects in the foreground.
    pub(crate) fn start(config: &Config, info: redis::ConnectionInfo) -> Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        let client = redis::Client::open(info)?;
        // One attempt per reconnect: the probe drives retries at its own interval, so redis-rs's
        // own backoff (up to seconds) must not delay noticing that Redis is back. The response
        // timeout is ours (op_timeout around every call), so redis-rs's is switched off: its
        // timer machinery costs throughput and would duplicate ours.
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(None);
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)?;
        let health = Health::new(config.health.clone(), config.op_timeout);
        let (stop_tx, stop_rx) = oneshot::channel();
        let conn = Conn(Arc::new(Inner {
            client,
            manager,
            op_timeout: config.op_timeout,
            health,
            _stop_probe: stop_tx,
        }));
        tokio::spawn(probe_loop(Arc::downgrade(&conn.0), stop_rx));
        Ok(conn)
    }

    /// The health monitor of this connection.
    pub fn health(&self) -> &Health {
        &self.0.health
    }

    /// The client the connection was made from, for connections of another kind (pub/sub).
    pub(crate) fn client(&self) -> &redis::Client {
        &self.0.client
    }

    /// The bound on every call.
    pub fn op_timeout(&self) -> Duration {
        self.0.op_timeout
    }

    /// Sends one command.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] at once while health is `Down`; [`Error::Timeout`] after
    /// `op_timeout`; [`Error::Redis`] for a connection error or an error reply.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        let mut manager = self.0.manager.clone();
        self.run(async move { cmd.query_async(&mut manager).await })
            .await
    }

    /// Sends a pipeline in one round trip (atomic if built with `Pipeline::atomic`).
    ///
    /// # Errors
    ///
    /// As [`query`](Self::query).
    pub async fn pipeline<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T> {
        let mut manager = self.0.manager.clone();
        self.run(async move { pipe.query_async(&mut manager).await })
            .await
    }

    /// Runs a Lua script by `EVALSHA`, loading it when the server answers `NOSCRIPT`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(conn: tierkit::conn::Conn) -> tierkit::Result<()> {
    /// let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    /// let n: i64 = conn.invoke(script.key("counter").arg(5)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`query`](Self::query). The whole exchange, a reload included, is bounded by
    /// `op_timeout`.
    pub async fn invoke<T: FromRedisValue>(&self, script: &ScriptInvocation<'_>) -> Result<T> {
        let mut manager = self.0.manager.clone();
        self.run(async move { script.invoke_async(&mut manager).await })
            .await
    }

    async fn run<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        let health = &self.0.health;
        if health.is_down() {
            crate::metrics::redis_call(crate::metrics::stopwatch(), Some(&Error::Unavailable));
            return Err(Error::Unavailable);
        }
        let started = crate::metrics::stopwatch();
        let span = tracing::debug_span!("tierkit.redis");
        let result = tracing::Instrument::instrument(self.send(call), span).await;
        crate::metrics::redis_call(started, result.as_ref().err());
        result
    }

    async fn send<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        let health = &self.0.health;
        match tokio::time::timeout(self.0.op_timeout, call).await {
            Ok(Ok(value)) => {
                health.record_success();
                Ok(value)
            }
            Ok(Err(e)) => {
                let err = Error::Redis(e);
                if err.is_connectivity() {
                    health.record_failure(&err, false);
                }
                Err(err)
            }
            Err(_) => {
                let err = Error::Timeout(self.0.op_timeout);
                health.record_failure(&err, false);
                Err(err)
            }
        }
    }
}

/// PINGs on every interval until the last [`Conn`] drops. Holds the connection only for the
/// length of one probe, so it never keeps the handle alive.
async fn probe_loop(conn: Weak<Inner>, mut stop: oneshot::Receiver<()>) {
    let Some(interval) = conn.upgrade().map(|c| c.health.config().probe_interval) else {
        return;
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => {}
        }
        let Some(inner) = conn.upgrade() else { return };
        let mut manager = inner.manager.clone();
        let health = inner.health.clone();
        let timeout = health.config().probe_timeout;
        drop(inner);
        let started = Instant::now();
        let result = tokio::select! {
            _ = &mut stop => return,
            r = tokio::time::timeout(timeout, ping(&mut manager)) => r,
        };
        match result {
            Ok(Ok(())) => health.record_probe_ok(started.elapsed()),
            Ok(Err(e)) => health.record_failure(&Error::Redis(e), true),
            Err(_) => health.record_failure(&Error::Timeout(timeout), true),
        }
    }
}

/// One PING. A PING that finds the connection dead makes redis-rs start a reconnect; one retry
/// on the new connection saves a whole probe interval when Redis has just come back.
async fn ping(manager: &mut ConnectionManager) -> redis::RedisResult<()> {
    let cmd = redis::cmd("PING");
    match cmd.query_async(manager).await {
        Err(e) if e.is_io_error() || e.is_connection_dropped() => cmd.query_async(manager).await,
        result => result,
    }
}
