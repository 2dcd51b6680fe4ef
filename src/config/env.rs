//! `Config::from_env`: the environment variables tierkit reads, on top of a builder.

use std::time::Duration;

use redis::RedisConnectionInfo;

use super::builder::{parse_nodes, parse_url, tcp_info};
use super::{ConfigBuilder, Target};
use crate::error::{Error, Result};

impl ConfigBuilder {
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
            crate::keys::validate_prefix("TIERKIT_PREFIX", &prefix)?;
            self = self.prefix(prefix);
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
}
