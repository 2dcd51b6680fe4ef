//! `Config::from_env`: the environment variables tierkit reads, on top of a builder.

use std::path::Path;

use base64::Engine;
use std::time::Duration;

use redis::RedisConnectionInfo;

use super::builder::{check_host, parse_nodes, parse_url, tcp_info};
use super::tls::parse_bool;
use super::{ConfigBuilder, Target};
use crate::codec::Keyring;
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
    /// | `REDIS_TLS_CA` | path of the PEM CA file the server's certificate must chain to ([`tls_ca_file`](Self::tls_ca_file)); default: the system's trust store |
    /// | `REDIS_TLS_CERT`, `REDIS_TLS_KEY` | paths of the PEM client certificate and key for mutual TLS, both or neither ([`tls_client_auth`](Self::tls_client_auth)) |
    /// | `REDIS_TLS_INSECURE` | `true` skips verifying the server's certificate: **development only** ([`tls_insecure_skip_verify`](Self::tls_insecure_skip_verify)) |
    /// | `TIERKIT_PREFIX` | key prefix |
    /// | `TIERKIT_SESSION_NAME_KEY` | standard base64 of at least 32 bytes: the secret users are named by in session keys ([`session_name_key`](Self::session_name_key)) |
    /// | `TIERKIT_OP_TIMEOUT_MS` | per-operation timeout in milliseconds |
    /// | `TIERKIT_ENCRYPTION_KEYS` | `id:base64key,...`, the current key first: the keys of encrypted namespaces ([`Keyring::parse`](crate::codec::Keyring::parse), [`encryption_keys`](Self::encryption_keys)) |
    ///
    /// Empty values count as unset. With none of `REDIS_CLUSTER_NODES`, `REDIS_URL` and
    /// `REDIS_HOST` the builder stays
    /// as it was (embedded unless a Redis target was set in code). The `REDIS_TLS_*` variables
    /// need a `rediss://` target (`REDIS_URL`, or `REDIS_CLUSTER_NODES` written as `rediss://`
    /// URLs) and the `tls` feature. `REDIS_HOST` is a host name only: one carrying credentials
    /// (`:pw@host`) or a URL is refused, without repeating it.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable, e.g. a `REDIS_PORT` that is not a port number, or
    /// `REDIS_PASSWORD` set without a Redis target, or `REDIS_CLUSTER_NODES` set together with
    /// `REDIS_URL`, or a `REDIS_TLS_CA` file that cannot be read or holds no certificate.
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
            check_host("REDIS_HOST", &host)?;
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
        if let Some(ca) = var("REDIS_TLS_CA") {
            self = self.set_tls_ca("REDIS_TLS_CA", Path::new(ca.trim()));
        }
        match (var("REDIS_TLS_CERT"), var("REDIS_TLS_KEY")) {
            (Some(cert), Some(key)) => {
                self = self.set_tls_client(
                    "REDIS_TLS_CERT",
                    "REDIS_TLS_KEY",
                    Path::new(cert.trim()),
                    Path::new(key.trim()),
                );
            }
            (Some(_), None) => {
                return Err(Error::config(
                    "REDIS_TLS_CERT",
                    "is set without REDIS_TLS_KEY; mutual TLS needs the certificate and its key",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::config(
                    "REDIS_TLS_KEY",
                    "is set without REDIS_TLS_CERT; mutual TLS needs the certificate and its key",
                ))
            }
            (None, None) => {}
        }
        if let Some(insecure) = var("REDIS_TLS_INSECURE") {
            let skip = parse_bool("REDIS_TLS_INSECURE", &insecure)?;
            self = self.set_tls_insecure("REDIS_TLS_INSECURE", skip);
        }
        if let Some(err) = self.error.take() {
            return Err(err);
        }
        if let Some(prefix) = var("TIERKIT_PREFIX") {
            crate::keys::validate_prefix("TIERKIT_PREFIX", &prefix)?;
            self = self.prefix(prefix);
        }
        if let Some(spec) = var("TIERKIT_ENCRYPTION_KEYS") {
            let keys = Keyring::parse(&spec).map_err(|e| match e {
                Error::Config { problem, .. } => Error::config("TIERKIT_ENCRYPTION_KEYS", problem),
                other => other,
            })?;
            self = self.encryption_keys(keys);
        }
        if let Some(b64) = var("TIERKIT_SESSION_NAME_KEY") {
            let key = zeroize::Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|_| {
                        Error::config("TIERKIT_SESSION_NAME_KEY", "is not standard base64")
                    })?,
            );
            self = self.session_name_key(&*key);
            if let Some(err) = self.error.take() {
                return Err(match err {
                    Error::Config { problem, .. } => {
                        Error::config("TIERKIT_SESSION_NAME_KEY", problem)
                    }
                    other => other,
                });
            }
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
