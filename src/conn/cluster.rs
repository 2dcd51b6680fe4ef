//! Redis Cluster behind the same [`Conn`](super::Conn) face.
//!
//! - Commands and scripts go through redis-rs's `cluster-async` connection, which routes each
//!   by the slot of its key, follows `MOVED`/`ASK` and refreshes the topology after a failover.
//!   `EVALSHA` is routed by its first key; on `NOSCRIPT` redis-rs loads the script on every
//!   node and retries.
//! - Pipelines whose commands live on several slots are split here, one sub-pipeline per slot,
//!   sent concurrently, and the replies put back in order, so callers never see `CROSSSLOT`.
//!   Keyless commands (`PUBLISH`) ride with the first group: any node accepts them.
//! - Commands that act on one node's keyspace (`SCAN`, `DBSIZE`, `INFO`) are sent to each
//!   primary over this module's own per-node connections, which the health probe also uses:
//!   they do not depend on redis-rs having refreshed its slot map.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::{join_all, select_ok};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    Arg, Cmd, ConnectionAddr, ConnectionInfo, Pipeline, RedisFuture, ServerErrorKind, Value,
};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::health::UnreachableShard;

/// Retries redis-rs makes inside one call after `MOVED`, `TRYAGAIN` or a lost node, waiting
/// 5-50 ms between them: enough to follow a failover, never longer than our `op_timeout`,
/// which bounds the whole call anyway.
const RETRIES: u32 = 3;
const MIN_RETRY_WAIT_MS: u64 = 5;
const MAX_RETRY_WAIT_MS: u64 = 50;

/// One primary and the slots it serves, as `CLUSTER SLOTS` reported them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shard {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) slots: Vec<RangeInclusive<u16>>,
}

impl Shard {
    pub(crate) fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// What one probe of every primary found.
pub(crate) enum Probe {
    /// Every primary answered; the slowest took this long.
    Ok(Duration),
    /// Some primaries answered (the slowest took `latency`), these did not.
    Partial {
        latency: Duration,
        unreachable: Vec<UnreachableShard>,
    },
    /// No node answered.
    Failed(Error),
}

pub(crate) struct Cluster {
    /// Replaced by a fresh one when the probe sees the topology change (see `refresh`).
    conn: Mutex<ClusterConnection>,
    /// What makes a fresh `conn` (boxed: rarely used), and the topology `conn` was made
    /// under.
    remake: Box<Config>,
    conn_view: Mutex<Arc<Vec<Shard>>>,
    seeds: Vec<ConnectionInfo>,
    connect_timeout: Duration,
    /// The latest topology, primaries only; empty until first fetched.
    shards: Mutex<Arc<Vec<Shard>>>,
    /// Our own connection to each node by `host:port`; a broken one is dropped and made again.
    nodes: tokio::sync::Mutex<HashMap<String, MultiplexedConnection>>,
}

impl Cluster {
    /// Builds the connection without connecting: redis-rs connects in the background.
    pub(crate) fn start(config: &Config, seeds: &[ConnectionInfo]) -> Result<Self> {
        Ok(Cluster {
            conn: Mutex::new(Self::connect(config, seeds)?),
            remake: Box::new(config.clone()),
            conn_view: Mutex::new(Arc::new(Vec::new())),
            seeds: seeds.to_vec(),
            connect_timeout: config.connect_timeout,
            shards: Mutex::new(Arc::new(Vec::new())),
            nodes: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// A redis-rs cluster connection starting from `nodes`, made in the background.
    fn connect(config: &Config, nodes: &[ConnectionInfo]) -> Result<ClusterConnection> {
        let builder = ClusterClientBuilder::new(nodes.to_vec());
        #[cfg(feature = "tls")]
        let builder = if nodes.first().is_some_and(tcp_tls) {
            super::tls::cluster(builder, config)
        } else {
            builder
        };
        let client = builder
            .connection_timeout(config.connect_timeout)
            // Our op_timeout bounds every call (retries included); redis-rs's own per-attempt
            // bound only needs to keep a hung node from holding an attempt forever.
            .response_timeout(config.op_timeout)
            .overall_response_timeout(None)
            .retries(RETRIES)
            .min_retry_wait(MIN_RETRY_WAIT_MS)
            .max_retry_wait(MAX_RETRY_WAIT_MS)
            .build()?;
        Ok(client.get_pending_async_connection_with_config(
            redis::cluster::ClusterConfig::new()
                .set_connection_timeout(config.connect_timeout)
                .set_response_timeout(config.op_timeout),
        ))
    }

    /// A handle for one call. Cheap: the cluster connection is a channel to its driver task.
    pub(crate) fn connection(&self) -> SplitConn {
        SplitConn(self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Clients for the pub/sub backplane, one per seed: in a cluster a `PUBLISH` reaches
    /// subscribers on every node, so subscribing on any one node that answers is enough.
    pub(crate) fn pubsub_clients(&self) -> Vec<redis::Client> {
        self.seeds
            .iter()
            .filter_map(|info| redis::Client::open(info.clone()).ok())
            .collect()
    }

    /// The primaries as last seen by the probe, fetched now if the probe has not run yet.
    pub(crate) async fn primaries(&self) -> Result<Arc<Vec<Shard>>> {
        let known = self.shards_lock().clone();
        if !known.is_empty() {
            return Ok(known);
        }
        self.refresh(self.connect_timeout).await
    }

    /// Sends `cmd` to the node at `addr` over this module's own connection to it.
    pub(crate) async fn query_node(&self, addr: &str, cmd: &Cmd) -> redis::RedisResult<Value> {
        let mut conn = self.node(addr).await?;
        // Error replies (NOAUTH, LOADING, ...) come back as values here; they are errors.
        let result = conn
            .req_packed_command(cmd)
            .await
            .and_then(Value::extract_error);
        if matches!(&result, Err(e) if e.is_io_error() || e.is_connection_dropped()) {
            self.nodes.lock().await.remove(addr);
        }
        result
    }

    /// Fetches the topology from the first node that answers, asking the known primaries and
    /// the seeds at once so one hung node costs nothing. Each is given `wait`.
    async fn refresh(&self, wait: Duration) -> Result<Arc<Vec<Shard>>> {
        let known = self.shards_lock().clone();
        let mut candidates: Vec<String> = known.iter().map(Shard::addr).collect();
        for seed in &self.seeds {
            if let Some(addr) = tcp_addr(seed) {
                if !candidates.contains(&addr) {
                    candidates.push(addr);
                }
            }
        }
        let asks = candidates.into_iter().map(|addr| {
            Box::pin(async move {
                let cmd = redis::cmd("CLUSTER").arg("SLOTS").to_owned();
                let reply = tokio::time::timeout(wait, self.query_node(&addr, &cmd))
                    .await
                    .map_err(|_| Error::Timeout(wait))??;
                parse_slots(reply)
                    .filter(|shards| !shards.is_empty())
                    .ok_or_else(|| Error::Redis(invalid("CLUSTER SLOTS listed no primary")))
            })
        });
        let (shards, _) = select_ok(asks).await?;
        let shards = Arc::new(shards);
        let before = std::mem::replace(&mut *self.shards_lock(), shards.clone());
        self.follow(&before, &shards);
        Ok(shards)
    }

    /// Moves new calls to a fresh redis-rs connection once a new topology has been seen twice
    /// in a row (one probe's answer could be a node's view in flux).
    ///
    /// redis-rs repairs its slot map only after a `MOVED` or a node it cannot reach at all;
    /// calls to a failed primary's slots that time out first (our op_timeout cuts them) never
    /// tell it, and it can keep sending them to the dead node. The fresh connection starts from
    /// the primaries just seen, then the seeds; calls in flight finish on the old one.
    fn follow(&self, before: &Arc<Vec<Shard>>, now: &Arc<Vec<Shard>>) {
        let mut view = self.conn_view.lock().unwrap_or_else(|p| p.into_inner());
        if view.is_empty() {
            *view = now.clone();
            return;
        }
        if before != now || *view == *now {
            return;
        }
        let mut nodes: Vec<ConnectionInfo> = now
            .iter()
            .filter_map(|s| self.node_info(&s.addr()).ok())
            .collect();
        nodes.extend(self.seeds.iter().cloned());
        match Self::connect(&self.remake, &nodes) {
            Ok(fresh) => {
                tracing::debug!(
                    "tierkit: cluster topology changed; new calls use a fresh cluster connection"
                );
                *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
                *view = now.clone();
            }
            Err(e) => tracing::debug!(error = %e,
                "tierkit: cluster topology changed; no fresh connection, keeping the old one"),
        }
    }

    /// Reads the topology, then PINGs every primary at once; takes at most `budget`, however
    /// many nodes hang.
    pub(crate) async fn probe(&self, budget: Duration) -> Probe {
        let step = budget / 2;
        let shards = match self.refresh(step).await {
            Ok(shards) => shards,
            Err(e) => return Probe::Failed(e),
        };
        let pings = shards.iter().map(|shard| async move {
            let started = Instant::now();
            let (addr, cmd) = (shard.addr(), redis::cmd("PING"));
            let result = match tokio::time::timeout(step, self.query_node(&addr, &cmd)).await {
                Ok(Ok(_)) => Ok(started.elapsed()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {step:?}")),
            };
            (shard, result)
        });
        let mut latency = Duration::ZERO;
        let mut unreachable = Vec::new();
        for (shard, result) in join_all(pings).await {
            match result {
                Ok(took) => latency = latency.max(took),
                Err(error) => unreachable.push(UnreachableShard {
                    node: shard.addr(),
                    slots: shard.slots.clone(),
                    error,
                }),
            }
        }
        if unreachable.is_empty() {
            Probe::Ok(latency)
        } else if unreachable.len() == shards.len() {
            let errors: Vec<String> = unreachable.into_iter().map(|u| u.error).collect();
            Probe::Failed(Error::Redis(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no cluster primary answered",
                errors.join("; "),
            ))))
        } else {
            Probe::Partial {
                latency,
                unreachable,
            }
        }
    }

    async fn node(&self, addr: &str) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.nodes.lock().await.get(addr) {
            return Ok(conn.clone());
        }
        // Connected without the lock held: a node that hangs must not stall the others.
        let info = self.node_info(addr)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None);
        let conn = redis::Client::open(info)?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut nodes = self.nodes.lock().await;
        Ok(nodes.entry(addr.to_owned()).or_insert(conn).clone())
    }

    /// How to reach the node at `addr`: the first seed's settings (credentials, TLS) there.
    fn node_info(&self, addr: &str) -> redis::RedisResult<ConnectionInfo> {
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| invalid("a node address without a port"))?;
        let template = self.seeds.first().ok_or_else(|| invalid("no seed node"))?;
        let info = template.clone().set_addr(match template.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        });
        Ok(info)
    }

    fn shards_lock(&self) -> MutexGuard<'_, Arc<Vec<Shard>>> {
        // Only ever replaced whole; a poisoned value is still a valid topology.
        self.shards.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(feature = "tls")]
fn tcp_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr(), ConnectionAddr::TcpTls { .. })
}

fn tcp_addr(info: &ConnectionInfo) -> Option<String> {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            Some(format!("{host}:{port}"))
        }
        _ => None,
    }
}

fn invalid(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, what))
}

/// `CLUSTER SLOTS`: `[[start, end, [host, port, id, ...], replicas...], ...]`, merged per
/// primary. `None` when the reply has another shape.
fn parse_slots(reply: Value) -> Option<Vec<Shard>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut shards: Vec<Shard> = Vec::new();
    for range in ranges {
        let Value::Array(parts) = range else {
            return None;
        };
        let mut parts = parts.into_iter();
        let start = redis::from_redis_value::<u16>(parts.next()?).ok()?;
        let end = redis::from_redis_value::<u16>(parts.next()?).ok()?;
        let Value::Array(primary) = parts.next()? else {
            return None;
        };
        let mut primary = primary.into_iter();
        let host = redis::from_redis_value::<String>(primary.next()?).ok()?;
        let port = redis::from_redis_value::<u16>(primary.next()?).ok()?;
        if host.is_empty() || host == "?" {
            // A node that does not know its own address; nothing to reach.
            continue;
        }
        match shards.iter_mut().find(|s| s.host == host && s.port == port) {
            Some(shard) => shard.slots.push(start..=end),
            None => shards.push(Shard {
                host,
                port,
                slots: vec![start..=end],
            }),
        }
    }
    for shard in &mut shards {
        shard.slots.sort_by_key(|r| *r.start());
    }
    shards.sort_by(|a, b| {
        a.slots
            .first()
            .map(|r| *r.start())
            .cmp(&b.slots.first().map(|r| *r.start()))
    });
    Some(shards)
}

/// The cluster connection, with pipelines split by slot.
#[derive(Clone)]
pub(crate) struct SplitConn(ClusterConnection);

impl SplitConn {
    /// Sends `cmd` to the primary serving `key`'s slot (for `WAIT`, which has no key).
    pub(crate) async fn query_at(&mut self, key: &[u8], cmd: Cmd) -> redis::RedisResult<Value> {
        let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master));
        self.0
            .route_command(cmd, redis::cluster_routing::RoutingInfo::SingleNode(route))
            .await
    }

    async fn split(&mut self, pipeline: &Pipeline) -> redis::RedisResult<Vec<Value>> {
        let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
        let (mut groups, keyless) = group_by_slot(&cmds);
        if groups.len() == 1 {
            // One node: keyless commands ride along, after the writes they follow.
            if let Some((_, indices)) = groups.first_mut() {
                indices.extend(&keyless);
                indices.sort_unstable();
            }
        }
        let first_route = groups.first().map(|(route, _)| *route);
        let mut replies: Vec<Option<Value>> = vec![None; cmds.len()];
        let sends = groups.into_iter().map(|(route, indices)| {
            let conn = self.0.clone();
            let cmds = &cmds;
            async move {
                let route = SingleNodeRoutingInfo::SpecificNode(route);
                (
                    indices.clone(),
                    send_group(conn, route, cmds, &indices).await,
                )
            }
        });
        for (indices, result) in join_all(sends).await {
            for (i, value) in indices.into_iter().zip(result?) {
                replies[i] = Some(value);
            }
        }
        // Several nodes: a `PUBLISH` goes only once every write it announces has landed, so an
        // instance acting on the message reads the new state, never the old one.
        if first_route.is_none() || replies.iter().any(Option::is_none) {
            let route = first_route.map_or(SingleNodeRoutingInfo::Random, |r| {
                SingleNodeRoutingInfo::SpecificNode(r)
            });
            let rest: Vec<usize> = (0..cmds.len()).filter(|&i| replies[i].is_none()).collect();
            for (i, value) in rest
                .iter()
                .copied()
                .zip(send_group(self.0.clone(), route, &cmds, &rest).await?)
            {
                replies[i] = Some(value);
            }
        }
        replies
            .into_iter()
            .map(|v| v.ok_or_else(|| invalid("a node sent fewer replies than commands")))
            .collect()
    }
}

/// Sends `cmds[indices]` as one pipeline to `route`. A pipeline's error replies come back as
/// values, so redis-rs neither follows a `MOVED`/`ASK` in them nor refreshes its slot map:
/// such a group is sent again command by command, which does both. A lone command goes that way
/// from the start: after a failover redis-rs repairs its slot map on a failed single command,
/// not on a failed pipeline.
async fn send_group(
    mut conn: ClusterConnection,
    route: SingleNodeRoutingInfo,
    cmds: &[&Cmd],
    indices: &[usize],
) -> redis::RedisResult<Vec<Value>> {
    if let [i] = indices {
        return Ok(vec![reply(conn.req_packed_command(cmds[*i]).await)?]);
    }
    let mut sub = redis::pipe();
    for &i in indices {
        sub.add_command(cmds[i].clone());
    }
    let replies = conn.route_pipeline(sub, 0, indices.len(), route).await?;
    let redirected = replies.iter().any(|v| {
        matches!(v, Value::ServerError(e) if matches!(
            e.kind(),
            Some(ServerErrorKind::Moved | ServerErrorKind::Ask | ServerErrorKind::TryAgain)
        ))
    });
    if !redirected {
        return Ok(replies);
    }
    one_by_one(conn, cmds, indices).await
}

/// Sends `cmds[indices]` one at a time, through redis-rs's routing of single commands.
async fn one_by_one(
    mut conn: ClusterConnection,
    cmds: &[&Cmd],
    indices: &[usize],
) -> redis::RedisResult<Vec<Value>> {
    let mut replies = Vec::with_capacity(indices.len());
    for &i in indices {
        replies.push(reply(conn.req_packed_command(cmds[i]).await)?);
    }
    Ok(replies)
}

/// A lone command's result as a pipeline would have it: a server's error reply (`NOSCRIPT`,
/// `WRONGTYPE`, ...) is that command's reply, which the caller reads as the single-server
/// pipeline gives it; only what is not a reply (the connection failed) fails the group.
fn reply(result: redis::RedisResult<Value>) -> redis::RedisResult<Value> {
    match result {
        Ok(value) => Ok(value),
        Err(e) => redis::ServerError::try_from(e).map(Value::ServerError),
    }
}

/// Command indices by the slot of their first key, in order of first appearance, and the
/// indices of keyless commands.
fn group_by_slot(cmds: &[&Cmd]) -> (Vec<(Route, Vec<usize>)>, Vec<usize>) {
    let mut groups: Vec<(Route, Vec<usize>)> = Vec::new();
    let mut keyless = Vec::new();
    for (i, cmd) in cmds.iter().enumerate() {
        match first_key(cmd) {
            Some(key) => {
                let route = Route::with_key(key, SlotAddr::Master);
                match groups.iter_mut().find(|(r, _)| *r == route) {
                    Some((_, indices)) => indices.push(i),
                    None => groups.push((route, vec![i])),
                }
            }
            None => keyless.push(i),
        }
    }
    (groups, keyless)
}

/// Commands tierkit pipelines that carry no key.
const KEYLESS: &[&[u8]] = &[b"PUBLISH", b"PING", b"ECHO", b"TIME", b"INFO", b"DBSIZE"];

/// The first key of a command: `EVAL`/`EVALSHA` name theirs after the key count, everything
/// else tierkit sends has it as the first argument.
fn first_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()?;
    if name.eq_ignore_ascii_case(b"EVAL") || name.eq_ignore_ascii_case(b"EVALSHA") {
        let _script = args.next()?;
        let keys = args.next()?;
        return (keys != b"0").then(|| args.next()).flatten();
    }
    if KEYLESS.iter().any(|k| name.eq_ignore_ascii_case(k)) {
        return None;
    }
    args.next()
}

impl ConnectionLike for SplitConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        if pipeline.is_transaction() {
            // MULTI/EXEC must stay whole; its commands must share a slot, as in any client.
            return self.0.req_packed_commands(pipeline, offset, count);
        }
        Box::pin(self.split(pipeline))
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_where_commands_keep_them() {
        assert_eq!(first_key(redis::cmd("GET").arg("a")), Some(&b"a"[..]));
        assert_eq!(
            first_key(redis::cmd("EVALSHA").arg("sha").arg(1).arg("k").arg("x")),
            Some(&b"k"[..])
        );
        assert_eq!(first_key(redis::cmd("EVAL").arg("s").arg(0).arg("x")), None);
        assert_eq!(first_key(redis::cmd("PUBLISH").arg("ch").arg("m")), None);
    }

    #[test]
    fn pipelines_group_by_slot_in_order() {
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg("{u1}:a").arg(1);
        pipe.cmd("SET").arg("{u2}:a").arg(1);
        pipe.cmd("PUBLISH").arg("ch").arg("m");
        pipe.cmd("GET").arg("{u1}:b");
        let cmds: Vec<&Cmd> = pipe.cmd_iter().collect();
        let (groups, keyless) = group_by_slot(&cmds);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].1, vec![0, 3]);
        assert_eq!(groups[1].1, vec![1]);
        assert_eq!(keyless, vec![2]);
    }

    #[test]
    fn cluster_slots_reply_merges_ranges_per_primary() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node(7001),
                node(7004),
            ]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node(7000)]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node(7000)]),
        ]);
        let shards = parse_slots(reply).expect("a valid reply");
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].addr(), "127.0.0.1:7000");
        assert_eq!(shards[0].slots, vec![0..=5460, 10923..=16383]);
        assert_eq!(shards[1].slots, vec![5461..=10922]);
        assert!(parse_slots(Value::Int(1)).is_none());
    }
}
