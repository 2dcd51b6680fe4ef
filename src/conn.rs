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
//!
//! ## Redis Cluster
//!
//! With seed nodes configured ([`ConfigBuilder::redis_cluster`](crate::ConfigBuilder::redis_cluster)
//! or `REDIS_CLUSTER_NODES`) the same calls go to a cluster: commands and scripts are routed by
//! the slot of their key and follow `MOVED` after a failover; pipelines spanning several slots
//! are split per slot and their replies put back in order, so no call fails with `CROSSSLOT`.
//! The probe reads the topology and PINGs every primary: when some answer and some do not,
//! the state is `Degraded` and [`HealthStatus::unreachable`](crate::health::HealthStatus::unreachable)
//! names the nodes and their slots; calls keep going to the primaries that answer, and those
//! for keys on a lost primary fail after `op_timeout` until its replica takes over. Only the
//! probe moves a cluster to `Down` (no primary answers): one failed call speaks for one shard.
//!
//! ## TLS
//!
//! With a `rediss://` target (feature `tls`) every connection tierkit opens speaks TLS with
//! the same settings: the shared connection, the cluster client and each node it discovers,
//! the probe's and `SCAN`/`DBSIZE`/`INFO`'s per-node connections, and the backplane's
//! subscription. A server whose certificate does not verify is never reached: health stays
//! `Down` and [`HealthStatus::last_error`](crate::health::HealthStatus::last_error) says why.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, ScriptInvocation, Value};
use tokio::sync::oneshot;

use crate::config::{Config, Target};
use crate::error::{Error, Result};
use crate::health::{Health, HealthState, HealthStatus};

mod clock;
mod cluster;
#[cfg(feature = "testing")]
mod faults;
mod kept;
mod pubsub;
#[cfg(feature = "testing")]
mod standin;
#[cfg(feature = "tls")]
mod tls;
mod tracking;

pub(crate) use clock::{time_reply, ServerClock};
#[cfg(feature = "testing")]
pub use faults::Faults;
pub(crate) use kept::Report;
pub(crate) use pubsub::Subscription;
#[cfg(feature = "testing")]
pub(crate) use standin::StandIn;
pub(crate) use tracking::{Invalidated, Tracking};

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
    link: Link,
    op_timeout: Duration,
    connect_timeout: Duration,
    health: Health,
    /// The server's clock, measured by the probe (not on a cluster, whose nodes each have
    /// their own).
    clock: ServerClock,
    #[cfg(feature = "testing")]
    faults: Faults,
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
    pub(crate) fn start(config: &Config, target: &Target) -> Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        #[cfg(feature = "tls")]
        if target.is_tls() {
            tls::prepare(config);
        }
        let link = match target {
            Target::Single(info) => {
                let client = redis::Client::open((**info).clone())?;
                // One attempt per reconnect: the probe drives retries at its own interval, so
                // redis-rs's own backoff (up to seconds) must not delay noticing that Redis is
                // back. The response timeout is ours (op_timeout around every call), so
                // redis-rs's is switched off: its timer machinery costs throughput and would
                // duplicate ours.
                let manager_config = redis::aio::ConnectionManagerConfig::new()
                    .set_number_of_retries(0)
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(None);
                let manager =
                    ConnectionManager::new_lazy_with_config(client.clone(), manager_config)?;
                Link::Single { client, manager }
            }
            Target::Cluster(seeds) => Link::Cluster(cluster::Cluster::start(config, seeds)?),
        };
        let health = Health::new(config.health.clone(), config.op_timeout);
        let (stop_tx, stop_rx) = oneshot::channel();
        let conn = Conn(Arc::new(Inner {
            link,
            op_timeout: config.op_timeout,
            connect_timeout: config.connect_timeout,
            health,
            clock: ServerClock::default(),
            #[cfg(feature = "testing")]
            faults: Faults::default(),
            _stop_probe: stop_tx,
        }));
        tokio::spawn(probe_loop(Arc::downgrade(&conn.0), stop_rx));
        Ok(conn)
    }

    /// The health monitor of this connection.
    pub fn health(&self) -> &Health {
        &self.0.health
    }

    /// The faults injected into this connection's calls and probes (feature `testing`).
    #[cfg(feature = "testing")]
    pub fn faults(&self) -> &Faults {
        &self.0.faults
    }

    /// The server's time at `at` in ms, as the probe measured it, never earlier than the
    /// truth; `None` on a cluster, before the first probe answered, and when the last answer
    /// is a few seconds old ([`ServerClock`]).
    pub(crate) fn server_ms_at(&self, at: Instant) -> Option<u64> {
        self.0.clock.at(at)
    }

    /// Folds a `TIME` reply some call carried (µs since the epoch; sent at `sent`, answered at
    /// `received`) into the reading of the server's clock.
    pub(crate) fn record_server_time(&self, sent: Instant, received: Instant, server_us: u64) {
        if !self.is_cluster() {
            self.0.clock.record(sent, received, server_us);
        }
    }

    /// Whether this is a Redis Cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self.0.link, Link::Cluster(_))
    }

    /// Clients for pub/sub connections, to be tried in turn: the server, or the cluster's seed
    /// nodes (a cluster delivers every `PUBLISH` to subscribers on all nodes).
    fn pubsub_clients(&self) -> Vec<redis::Client> {
        match &self.0.link {
            Link::Single { client, .. } => vec![client.clone()],
            Link::Cluster(cluster) => cluster.pubsub_clients(),
        }
    }

    /// The nodes that hold keys: the server, or every primary of a cluster. `SCAN`, `DBSIZE`
    /// and `INFO` answer for one node's keyspace, so they go to each of these with
    /// [`query_node`](Self::query_node).
    pub(crate) async fn nodes(&self) -> Result<Vec<Node>> {
        match &self.0.link {
            Link::Single { .. } => Ok(vec![Node(None)]),
            Link::Cluster(cluster) => {
                if self.0.health.is_down() {
                    return Err(Error::Unavailable);
                }
                let shards = tokio::time::timeout(self.0.op_timeout, cluster.primaries())
                    .await
                    .map_err(|_| Error::Timeout(self.0.op_timeout))??;
                Ok(shards.iter().map(|s| Node(Some(s.addr()))).collect())
            }
        }
    }

    /// The node holding `key`: the server, or the primary serving its slot as the health
    /// probe last saw the cluster. For the few keys every call of a feature depends on (a cache
    /// namespace's epoch), sent this way they follow a failover as soon as the probe sees it,
    /// without waiting for redis-rs to repair its own slot map.
    pub(crate) async fn node_of(&self, key: &str) -> Result<Node> {
        match &self.0.link {
            Link::Single { .. } => Ok(Node(None)),
            Link::Cluster(cluster) => {
                let slot = slot_of(key.as_bytes());
                let shards = tokio::time::timeout(self.0.op_timeout, cluster.primaries())
                    .await
                    .map_err(|_| Error::Timeout(self.0.op_timeout))??;
                shards
                    .iter()
                    .find(|s| s.slots.iter().any(|r| r.contains(&slot)))
                    .map(|s| Node(Some(s.addr())))
                    .ok_or(Error::Unavailable)
            }
        }
    }

    /// Sends one command to one node from [`nodes`](Self::nodes).
    pub(crate) async fn query_node<T: FromRedisValue>(&self, node: &Node, cmd: &Cmd) -> Result<T> {
        match (&self.0.link, &node.0) {
            (Link::Cluster(cluster), Some(addr)) => {
                let value = self.run(cluster.query_node(addr, cmd)).await?;
                redis::from_redis_value(value).map_err(|e| Error::Redis(e.into()))
            }
            _ => self.query(cmd).await,
        }
    }

    /// Waits until `replicas` replicas acknowledged the writes this connection made to the
    /// node holding `key` (Redis `WAIT`), or `wait` passes; returns how many did. `wait` must
    /// be shorter than `op_timeout`: on a cluster, redis-rs bounds each attempt by it.
    pub(crate) async fn wait_replicas(
        &self,
        key: &str,
        replicas: u32,
        wait: Duration,
    ) -> Result<u32> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas)
            .arg(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
        // WAIT itself may take up to `wait`; the op timeout bounds the rest.
        let bound = self.0.op_timeout + wait;
        let reply = match &self.0.link {
            Link::Single { manager, .. } => {
                let mut manager = manager.clone();
                let call = async move { cmd.query_async::<Value>(&mut manager).await };
                self.run_for(bound, call).await?
            }
            Link::Cluster(cluster) => {
                let mut conn = cluster.connection();
                let call = async move { conn.query_at(key.as_bytes(), cmd).await };
                self.run_for(bound, call).await?
            }
        };
        redis::from_redis_value(reply).map_err(|e| Error::Redis(e.into()))
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
        let mut link = self.0.link.connection();
        self.run(async move { cmd.query_async(&mut link).await })
            .await
    }

    /// Sends a pipeline in one round trip (atomic if built with `Pipeline::atomic`). On a
    /// cluster, a pipeline whose keys live on several slots is sent as one sub-pipeline per
    /// slot, concurrently, and the replies come back in order; an atomic pipeline must keep
    /// its keys on one slot, as with any cluster client.
    ///
    /// # Errors
    ///
    /// As [`query`](Self::query).
    pub async fn pipeline<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T> {
        let mut link = self.0.link.connection();
        self.run(async move { pipe.query_async(&mut link).await })
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
        let mut link = self.0.link.connection();
        self.run(async move {
            match script.invoke_async(&mut link).await {
                // Flushed again between redis-rs's load and its retry (a `SCRIPT FLUSH`, a
                // failover to a node that never saw the script): one more load and call.
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    script.invoke_async(&mut link).await
                }
                other => other,
            }
        })
        .await
    }

    async fn run<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        self.run_for(self.0.op_timeout, call).await
    }

    async fn run_for<T>(
        &self,
        bound: Duration,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        let health = &self.0.health;
        if health.is_down() {
            crate::metrics::redis_call(crate::metrics::stopwatch(), Some(&Error::Unavailable));
            return Err(Error::Unavailable);
        }
        let started = crate::metrics::stopwatch();
        let span = tracing::debug_span!("tierkit.redis");
        let result = tracing::Instrument::instrument(self.send(bound, call), span).await;
        crate::metrics::redis_call(started, result.as_ref().err());
        result
    }

    async fn send<T>(
        &self,
        bound: Duration,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        #[cfg(feature = "testing")]
        let call = self.0.faults.plan().run(call);
        // On a cluster a failed call speaks for one shard, so only the probe (which asks every
        // primary) moves the state.
        bounded(&self.0.health, !self.is_cluster(), bound, async {
            call.await.map_err(Error::Redis)
        })
        .await
    }
}

/// Runs `call` within `bound` and tells `health` how it went: a success, a connection error or
/// timeout (counted against the state only when `passive`), or a refusal that names a
/// misconfiguration.
async fn bounded<T>(
    health: &Health,
    passive: bool,
    bound: Duration,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    let result = match tokio::time::timeout(bound, call).await {
        Ok(Ok(value)) => {
            health.record_success();
            return Ok(value);
        }
        Ok(Err(e)) => e,
        Err(_) => Error::Timeout(bound),
    };
    if passive && result.is_connectivity() {
        health.record_failure(&result, false);
    } else if !result.is_connectivity() {
        health.record_refusal(&result);
    }
    Err(result)
}

/// Figures of the server (all primaries of a cluster, summed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ServerFigures {
    /// Keys (`DBSIZE`).
    pub(crate) keys: Option<u64>,
    /// Memory in bytes (`INFO memory`, `used_memory`).
    pub(crate) used_memory: Option<u64>,
}

impl Conn {
    /// Keys and memory summed over every node that holds keys (every primary of a cluster);
    /// `None` unless all answered. Each node's two questions share one round trip.
    pub(crate) async fn server_figures(&self) -> ServerFigures {
        let Ok(nodes) = self.nodes().await else {
            return ServerFigures::default();
        };
        let per_node = nodes.iter().map(|node| async move {
            let (keys, info) = futures_util::future::join(
                self.query_node::<u64>(node, &redis::cmd("DBSIZE")),
                self.query_node::<String>(node, redis::cmd("INFO").arg("memory")),
            )
            .await;
            let (keys, info) = (keys.ok()?, info.ok()?);
            let used: u64 = info
                .lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse().ok())?;
            Some((keys, used))
        });
        let figures: Option<Vec<(u64, u64)>> = futures_util::future::join_all(per_node)
            .await
            .into_iter()
            .collect();
        match figures {
            Some(f) => ServerFigures {
                keys: Some(f.iter().map(|(k, _)| k).sum()),
                used_memory: Some(f.iter().map(|(_, m)| m).sum()),
            },
            None => ServerFigures::default(),
        }
    }

    /// The run id of each node that holds keys and answers, by address (`""` for the single
    /// server): a new id at an address, or a new address, means a server restarted or a replica
    /// took over, and may hold older data than was written. Nodes that do not answer are left
    /// out (their keys cannot be read either); an error only when none answers.
    pub(crate) async fn server_runs(&self) -> Result<Vec<(String, String)>> {
        let nodes = self.nodes().await?;
        let per_node = nodes.iter().map(|node| async move {
            let info: String = self
                .query_node(node, redis::cmd("INFO").arg("server"))
                .await?;
            let id = info
                .lines()
                .find_map(|l| l.strip_prefix("run_id:"))
                .map(|id| id.trim().to_owned())
                .ok_or(Error::Internal("INFO server without a run_id"))?;
            Ok::<_, Error>((node.0.clone().unwrap_or_default(), id))
        });
        let answers = futures_util::future::join_all(per_node).await;
        let mut last_error = None;
        let mut runs = Vec::with_capacity(answers.len());
        for answer in answers {
            match answer {
                Ok(run) => runs.push(run),
                Err(e) => last_error = Some(e),
            }
        }
        match (runs.is_empty(), last_error) {
            (true, Some(e)) => Err(e),
            _ => Ok(runs),
        }
    }
}

/// The cluster slot of `key`: CRC16 of its hash tag (the text between the first `{` and the
/// next `}`, when not empty) or of the whole key, modulo 16384.
fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % 16384
}

/// A node to send node-local commands to: `None` is the single server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node(Option<String>);

/// The connection behind a [`Conn`]: one server, or a cluster.
enum Link {
    Single {
        client: redis::Client,
        manager: ConnectionManager,
    },
    Cluster(cluster::Cluster),
}

impl Link {
    fn connection(&self) -> LinkConn {
        match self {
            Link::Single { manager, .. } => LinkConn::Single(manager.clone()),
            Link::Cluster(cluster) => LinkConn::Cluster(cluster.connection()),
        }
    }
}

/// A per-call handle to either connection, so commands, pipelines and scripts are written once.
enum LinkConn {
    Single(ConnectionManager),
    Cluster(cluster::SplitConn),
}

impl ConnectionLike for LinkConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            LinkConn::Single(c) => c.req_packed_command(cmd),
            LinkConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            LinkConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            LinkConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            LinkConn::Single(c) => c.get_db(),
            LinkConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Probes (`TIME`, see [`time`]) on every interval until the last [`Conn`] drops: every
/// `probe_interval`, and every [`recovery_interval`](Health::recovery_interval) while Redis is
/// seen `Down` (from the moment calls failing together take it there), so it is used again
/// soon after it answers.
/// Holds the connection only for the length of one probe, so it never keeps the handle alive.
async fn probe_loop(conn: Weak<Inner>, stop: oneshot::Receiver<()>) {
    let Some(health) = conn.upgrade().map(|c| c.health.clone()) else {
        return;
    };
    let timeout = health.config().probe_timeout;
    probe_every(health, stop, move || {
        let inner = conn.upgrade()?;
        let started = Instant::now();
        #[cfg(feature = "testing")]
        let plan = inner.faults.plan_probe();
        let probe = async move {
            match &inner.link {
                Link::Single { manager, .. } => {
                    let mut manager = manager.clone();
                    match time(&mut manager).await {
                        Ok((sent, reply)) => {
                            if let Some(us) = time_reply(&reply) {
                                inner.clock.record(sent, Instant::now(), us);
                            }
                            cluster::Probe::Ok(started.elapsed())
                        }
                        Err(e) => cluster::Probe::Failed(Error::Redis(e)),
                    }
                }
                Link::Cluster(cluster) => cluster.probe(timeout).await,
            }
        };
        #[cfg(feature = "testing")]
        let probe = async move {
            match plan.run(async { Ok::<_, redis::RedisError>(()) }).await {
                Ok(()) => probe.await,
                Err(e) => cluster::Probe::Failed(Error::Redis(e)),
            }
        };
        Some(probe)
    })
    .await;
}

/// Runs `probe` on every interval (see [`probe_loop`]) and feeds `health` what it finds, until
/// `stop` fires or `probe` gives no probe (what it probes is gone). The probe's future owns
/// what it holds, so that is let go as soon as the probe ends.
async fn probe_every<P: Future<Output = cluster::Probe>>(
    health: Health,
    mut stop: oneshot::Receiver<()>,
    mut probe: impl FnMut() -> Option<P>,
) {
    let mut states = health.subscribe();
    let down = |s: &HealthStatus| s.observed == HealthState::Down;
    // The first probe goes out at once: starting never waits on a probe interval.
    let mut pause = Duration::ZERO;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(pause) => {}
            // Taken Down by failing calls: recovery probing starts now, not at the next tick.
            Ok(_) = states.wait_for(down), if !down(&states.borrow()) => {
                pause = health.recovery_interval();
                continue;
            }
        }
        pause = if down(&states.borrow()) {
            health.recovery_interval()
        } else {
            health.config().probe_interval
        };
        let Some(probe) = probe() else { return };
        let timeout = health.config().probe_timeout;
        let result = tokio::select! {
            _ = &mut stop => return,
            r = tokio::time::timeout(timeout, probe) => r,
        };
        match result {
            Ok(cluster::Probe::Ok(latency)) => health.record_probe_ok(latency),
            Ok(cluster::Probe::Partial {
                latency,
                unreachable,
            }) => health.record_probe_partial(latency, unreachable),
            Ok(cluster::Probe::Failed(e)) => health.record_failure(&e, true),
            Err(_) => health.record_failure(&Error::Timeout(timeout), true),
        }
    }
}

/// One `TIME` (a PING that also reads the server's clock), and when it was sent. For a user
/// whose ACL allows `PING` and not `TIME`, a `PING` and no reading (`Nil`).
async fn time(manager: &mut ConnectionManager) -> redis::RedisResult<(Instant, Value)> {
    match ask(manager, "TIME").await {
        (_, Err(e)) if e.code() == Some("NOPERM") => {
            let (sent, reply) = ask(manager, "PING").await;
            reply.map(|_| (sent, Value::Nil))
        }
        (sent, reply) => reply.map(|value| (sent, value)),
    }
}

/// One keyless command, and when it was sent. One that finds the connection dead makes
/// redis-rs start a reconnect; one retry on the new connection saves a whole probe interval
/// when Redis has just come back.
async fn ask(manager: &mut ConnectionManager, name: &str) -> (Instant, redis::RedisResult<Value>) {
    let cmd = redis::cmd(name);
    let sent = Instant::now();
    match cmd.query_async(manager).await {
        Err(e) if e.is_io_error() || e.is_connection_dropped() => {
            let sent = Instant::now();
            (sent, cmd.query_async(manager).await)
        }
        result => (sent, result),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slots_are_those_redis_computes() {
        // `CLUSTER KEYSLOT foo` answers 12182.
        assert_eq!(super::slot_of(b"foo"), 12182);
        assert_eq!(
            super::slot_of(b"{user1000}.following"),
            super::slot_of(b"user1000")
        );
        // An empty tag hashes the whole key.
        let whole = crc16::State::<crc16::XMODEM>::calculate(b"foo{}{bar}") % 16384;
        assert_eq!(super::slot_of(b"foo{}{bar}"), whole);
    }
}
