//! A private Redis Cluster for integration tests: 3 primaries and 3 replicas, each a
//! [`RedisServer`] on free loopback ports (client and cluster-bus port both chosen free),
//! joined with `redis-cli --cluster create`. Faults are made on single nodes: kill a primary
//! and its replica is promoted after `cluster-node-timeout` (1 s here).
//!
//! [`RedisCluster::shared`] hands every test of a binary the same cluster while any holds it,
//! so the suites do not start 6 processes per test; tests keep apart by key prefix.
//!
//! [`RedisCluster::start_tls`] starts a smaller one (3 primaries, no replicas) whose nodes
//! speak only TLS, to clients and to each other (`--tls-cluster yes`); its seeds are
//! `rediss://` URLs.

use std::process::Command;
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use super::server::{free_port, RedisServer, ServerTls};

/// How long `cluster-node-timeout` is for clusters that tests break: a primary silent this
/// long is failed over.
pub const NODE_TIMEOUT_MS: u64 = 1000;
/// The shared cluster never sees a fault; a long timeout keeps a node starved of CPU by a
/// busy test machine from being failed over under the other tests.
const SHARED_NODE_TIMEOUT_MS: u64 = 15_000;
const STABLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Six `redis-server`s in cluster mode; killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts 3 primaries + 3 replicas and waits until every node agrees the cluster is up.
    ///
    /// # Panics
    /// If `redis-cli` is missing or the cluster does not come up within 30 s.
    pub fn start() -> RedisCluster {
        Self::start_with(&[])
    }

    /// Like [`start_with`](Self::start_with) with the node timeout in milliseconds.
    fn start_with_timeout(node_timeout_ms: u64, extra: &[&str]) -> RedisCluster {
        let timeout = node_timeout_ms.to_string();
        let mut args = vec!["--cluster-node-timeout", timeout.as_str()];
        args.extend_from_slice(extra);
        Self::launch(&args)
    }

    /// Like [`start`](Self::start) with extra arguments for every node, e.g.
    /// `&["--requirepass", "pw", "--masterauth", "pw"]` (the harness then authenticates too).
    pub fn start_with(extra: &[&str]) -> RedisCluster {
        Self::start_with_timeout(NODE_TIMEOUT_MS, extra)
    }

    /// 3 primaries (no replicas) speaking only TLS with `tls`'s certificates, to clients and
    /// on the cluster bus; joined with `redis-cli --tls --cluster create`.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_tls(tls: &ServerTls) -> RedisCluster {
        let timeout = NODE_TIMEOUT_MS.to_string();
        let extra = [
            "--cluster-node-timeout",
            timeout.as_str(),
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
        ];
        Self::launch_with(&extra, Some(tls), 0)
    }

    fn launch(extra: &[&str]) -> RedisCluster {
        Self::launch_with(extra, None, 1)
    }

    /// Three primaries with `replicas` replicas each.
    fn launch_with(extra: &[&str], tls: Option<&ServerTls>, replicas: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                let bus = free_port().to_string();
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus,
                    // A lost primary takes only its own slots down, not the whole keyspace.
                    // Replicas sync at once instead of after the default 5 s batching delay.
                    "--repl-diskless-sync-delay",
                    "0",
                    "--cluster-require-full-coverage",
                    "no",
                ];
                args.extend_from_slice(extra);
                match tls {
                    Some(tls) => RedisServer::start_tls(tls, &args),
                    None => RedisServer::start_with(&args),
                }
            })
            .collect();
        let mut create = Command::new("redis-cli");
        if let Some(tls) = tls {
            create.args(tls.cli_args());
        }
        if let Some(pw) = extra
            .windows(2)
            .find(|w| w[0] == "--requirepass")
            .map(|w| w[1])
        {
            create.env("REDISCLI_AUTH", pw);
        }
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(node.addr());
        }
        create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let out = create
            .output()
            .unwrap_or_else(|e| panic!("run redis-cli --cluster create: {e}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_stable();
        cluster
    }

    /// The cluster every caller in this process shares while any of them holds it.
    pub fn shared() -> Arc<RedisCluster> {
        static SHARED: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cluster) = slot.upgrade() {
            return cluster;
        }
        let cluster = Arc::new(RedisCluster::start_with_timeout(
            SHARED_NODE_TIMEOUT_MS,
            &[],
        ));
        *slot = Arc::downgrade(&cluster);
        cluster
    }

    /// `host:port` of every node, primaries and replicas: the seeds a client may use
    /// (`rediss://host:port` for a cluster started with [`start_tls`](Self::start_tls)).
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| match node.tls() {
                Some(_) => node.url(),
                None => node.addr(),
            })
            .collect()
    }

    /// Every node, in start order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// One node, to kill, hang or restart.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// Indices of the nodes that are primaries now (`ROLE`), among those running.
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.role(i).as_deref() == Some("master"))
            .collect()
    }

    /// The index of the primary serving `key`'s slot, asked of any running node.
    pub fn primary_of(&self, key: &str) -> Option<usize> {
        let slot = self.query::<u16>(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))?;
        let slots: redis::Value = self.query(redis::cmd("CLUSTER").arg("SLOTS"))?;
        let redis::Value::Array(ranges) = slots else {
            return None;
        };
        for range in ranges {
            let redis::Value::Array(parts) = range else {
                continue;
            };
            let start: u16 = redis::from_redis_value(parts.first()?.clone()).ok()?;
            let end: u16 = redis::from_redis_value(parts.get(1)?.clone()).ok()?;
            if (start..=end).contains(&slot) {
                let redis::Value::Array(primary) = parts.get(2)?.clone() else {
                    return None;
                };
                let port: u16 = redis::from_redis_value(primary.get(1)?.clone()).ok()?;
                return self.nodes.iter().position(|n| n.port() == port);
            }
        }
        None
    }

    /// Runs `cmd` on every running primary (e.g. `SCRIPT FLUSH`).
    pub fn on_primaries(&self, cmd: &redis::Cmd) {
        for i in self.primaries() {
            if let Some(mut con) = self.connect(i) {
                let _: redis::RedisResult<redis::Value> = cmd.query(&mut con);
            }
        }
    }

    /// Waits until every running node says `cluster_state:ok`, knows every node, sees all
    /// slots served, and every running replica's link to its primary is up.
    ///
    /// # Panics
    /// After 30 s, with the nodes' views.
    pub fn wait_stable(&self) {
        let deadline = Instant::now() + STABLE_TIMEOUT;
        loop {
            let views: Vec<(String, String)> = (0..self.nodes.len())
                .filter_map(|i| {
                    let mut con = self.connect(i)?;
                    let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut con).ok()?;
                    let repl: String =
                        redis::cmd("INFO").arg("replication").query(&mut con).ok()?;
                    Some((info, repl))
                })
                .collect();
            let stable = !views.is_empty()
                && views.iter().all(|(info, repl)| {
                    info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_ok:16384")
                        && (repl.contains("role:master") || repl.contains("master_link_status:up"))
                });
            if stable {
                return;
            }
            if Instant::now() > deadline {
                panic!("the cluster never became stable: {views:#?}");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn role(&self, i: usize) -> Option<String> {
        let mut con = self.connect(i)?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut con).ok()?;
        redis::from_redis_value(role.first()?.clone()).ok()
    }

    fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        (0..self.nodes.len()).find_map(|i| cmd.query(&mut self.connect(i)?).ok())
    }

    fn connect(&self, i: usize) -> Option<redis::Connection> {
        let node = &self.nodes[i];
        if node.is_hung() {
            return None;
        }
        node.client()
            .get_connection_with_timeout(Duration::from_millis(300))
            .ok()
    }
}
