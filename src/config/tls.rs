//! TLS to Redis: which certificates verify the server, the client's own certificate and key
//! (mutual TLS), and the development-only switch that skips verification.
//!
//! The settings are read and checked when they are given (files readable, PEM that parses, a
//! key that belongs to its certificate) and weighed against the Redis target when the
//! configuration is built (TLS settings need a `rediss://` target). The built target then
//! carries them, so every connection tierkit opens (the shared connection, the cluster
//! client, each per-node connection, the backplane's subscription) uses the same ones.
//!
//! Without the `tls` feature every TLS setting and every `rediss://` URL is refused with an
//! error that says to enable it.

use std::path::Path;

use super::ConfigBuilder;
use crate::error::Error;

/// Why a TLS setting is refused in a build without the feature.
#[cfg(not(feature = "tls"))]
pub(super) const NEEDS_FEATURE: &str = "needs tierkit's `tls` feature, which this build lacks; \
     enable it in Cargo.toml: tierkit = { version = \"0.1\", features = [\"tls\"] }";

impl ConfigBuilder {
    /// The CA certificates (a PEM file, one or more `BEGIN CERTIFICATE` blocks) that the Redis
    /// server's certificate must chain to, instead of the system's trust store. The file is
    /// read and checked here. Needs a `rediss://` target (a URL or cluster seed nodes) by the
    /// time [`build`](Self::build) runs, and the `tls` feature. Default: the system's trust
    /// store.
    ///
    /// ```no_run
    /// let config = tierkit::Config::builder()
    ///     .redis_url("rediss://redis.internal:6380")
    ///     .tls_ca_file("/etc/redis-tls/ca.pem")
    ///     .build()?;
    /// assert!(config.is_tls());
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    ///
    /// ```
    /// // A file that cannot be read is refused when given (as is any TLS setting in a build
    /// // without the `tls` feature), naming the setting.
    /// let err = tierkit::Config::builder()
    ///     .tls_ca_file("/nonexistent/ca.pem")
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("tls_ca_file"));
    /// ```
    pub fn tls_ca_file(self, path: impl AsRef<Path>) -> Self {
        self.set_tls_ca("tls_ca_file", path.as_ref())
    }

    /// The client certificate (PEM, the leaf first, then any intermediates) and its private
    /// key (PEM: PKCS#8, PKCS#1 or SEC1) that tierkit presents to a server requiring mutual
    /// TLS (`tls-auth-clients yes`). Both files are read and checked here, the key against
    /// the certificate; tierkit keeps the key in memory that is wiped when the configuration
    /// drops, and never prints it. Needs a `rediss://` target and the `tls` feature. Default:
    /// no client certificate.
    ///
    /// ```no_run
    /// let config = tierkit::Config::builder()
    ///     .redis_url("rediss://redis.internal:6380")
    ///     .tls_ca_file("/etc/redis-tls/ca.pem")
    ///     .tls_client_auth("/etc/redis-tls/client.pem", "/etc/redis-tls/client.key")
    ///     .build()?;
    /// assert!(!format!("{config:?}").contains("PRIVATE KEY"));
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn tls_client_auth(self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.set_tls_client(
            "tls_client_auth",
            "tls_client_auth",
            cert.as_ref(),
            key.as_ref(),
        )
    }

    /// **For development only: skips verifying the server's certificate.** The connection is
    /// still encrypted, but anyone on the network path can pose as Redis and read every
    /// command, the AUTH password and session records included. Meant for a local server with
    /// a throw-away certificate; never for production, where [`tls_ca_file`](Self::tls_ca_file)
    /// names the CA instead. tierkit logs a warning when it starts with it. Refused together
    /// with a CA file (which it would ignore). Needs a `rediss://` target and the `tls`
    /// feature. Default: off (certificates are verified).
    ///
    /// ```no_run
    /// let config = tierkit::Config::builder()
    ///     .redis_url("rediss://127.0.0.1:6380")
    ///     .tls_insecure_skip_verify(true)
    ///     .build()?;
    /// # let _ = config;
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn tls_insecure_skip_verify(self, skip: bool) -> Self {
        self.set_tls_insecure("tls_insecure_skip_verify", skip)
    }

    pub(super) fn set_tls_ca(mut self, field: &'static str, path: &Path) -> Self {
        #[cfg(feature = "tls")]
        match Ca::read(field, path) {
            Ok(ca) => self.config.tls.ca = Some(ca),
            Err(e) => self.fail(e),
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = path;
            self.fail(Error::config(field, NEEDS_FEATURE));
        }
        self
    }

    pub(super) fn set_tls_client(
        mut self,
        cert_field: &'static str,
        key_field: &'static str,
        cert: &Path,
        key: &Path,
    ) -> Self {
        #[cfg(feature = "tls")]
        match ClientAuth::read(cert_field, key_field, cert, key) {
            Ok(client) => self.config.tls.client = Some(client),
            Err(e) => self.fail(e),
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = (key_field, cert, key);
            self.fail(Error::config(cert_field, NEEDS_FEATURE));
        }
        self
    }

    /// `false` is the default and asks for nothing, so it is accepted in any build.
    pub(super) fn set_tls_insecure(mut self, field: &'static str, skip: bool) -> Self {
        #[cfg(feature = "tls")]
        {
            self.config.tls.insecure = skip.then_some(field);
        }
        #[cfg(not(feature = "tls"))]
        if skip {
            self.fail(Error::config(field, NEEDS_FEATURE));
        }
        self
    }
}

/// A `true`/`false` environment value (`1`/`0`, `yes`/`no`, `on`/`off` too).
pub(super) fn parse_bool(field: &str, value: &str) -> crate::error::Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(Error::config(
            field,
            format!("{other:?} is not a boolean; use true or false"),
        )),
    }
}

#[cfg(feature = "tls")]
pub(crate) use enabled::Tls;
#[cfg(feature = "tls")]
use enabled::{Ca, ClientAuth};

#[cfg(feature = "tls")]
mod enabled {
    use std::fmt;
    use std::path::{Path, PathBuf};

    use redis::{ConnectionAddr, ConnectionInfo};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use zeroize::Zeroizing;

    use super::super::Target;
    use crate::error::{Error, Result};

    /// The TLS settings given, each with the setting (or variable) it came from, so an error
    /// found when the configuration is built names it.
    #[derive(Clone, Default)]
    pub(crate) struct Tls {
        pub(super) ca: Option<Ca>,
        pub(super) client: Option<ClientAuth>,
        /// The setting that turned verification off, when one did.
        pub(super) insecure: Option<&'static str>,
    }

    #[derive(Clone)]
    pub(super) struct Ca {
        field: &'static str,
        path: PathBuf,
        pem: Vec<u8>,
        count: usize,
    }

    #[derive(Clone)]
    pub(super) struct ClientAuth {
        field: &'static str,
        cert: Vec<u8>,
        /// Wiped when dropped; never printed.
        key: Zeroizing<Vec<u8>>,
    }

    fn read(field: &str, path: &Path) -> Result<Vec<u8>> {
        std::fs::read(path)
            .map_err(|e| Error::config(field, format!("cannot read {}: {e}", path.display())))
    }

    fn certificates(field: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| {
                Error::config(field, format!("{} is not valid PEM: {e}", path.display()))
            })?;
        if certs.is_empty() {
            return Err(Error::config(
                field,
                format!(
                    "{} holds no certificate; expected PEM (-----BEGIN CERTIFICATE-----)",
                    path.display()
                ),
            ));
        }
        Ok(certs)
    }

    impl Ca {
        pub(super) fn read(field: &'static str, path: &Path) -> Result<Ca> {
            let pem = read(field, path)?;
            let certs = certificates(field, path, &pem)?;
            let mut store = rustls::RootCertStore::empty();
            for (i, cert) in certs.iter().enumerate() {
                store.add(cert.clone()).map_err(|e| {
                    Error::config(
                        field,
                        format!(
                            "certificate {} of {} is not a usable CA certificate: {e}",
                            i + 1,
                            path.display()
                        ),
                    )
                })?;
            }
            Ok(Ca {
                field,
                path: path.to_path_buf(),
                pem,
                count: certs.len(),
            })
        }
    }

    impl ClientAuth {
        pub(super) fn read(
            cert_field: &'static str,
            key_field: &'static str,
            cert_path: &Path,
            key_path: &Path,
        ) -> Result<ClientAuth> {
            let cert = read(cert_field, cert_path)?;
            let chain = certificates(cert_field, cert_path, &cert)?;
            let key = Zeroizing::new(read(key_field, key_path)?);
            // The parser's own message is left out: it could quote a line of the key file.
            let der = PrivateKeyDer::from_pem_slice(&key).map_err(|_| {
                Error::config(
                    key_field,
                    format!(
                        "{} holds no PEM private key (-----BEGIN PRIVATE KEY-----, \
                         RSA PRIVATE KEY or EC PRIVATE KEY)",
                        key_path.display()
                    ),
                )
            })?;
            let provider = rustls::crypto::ring::default_provider();
            rustls::sign::CertifiedKey::from_der(chain, der, &provider).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => Error::config(
                    cert_field,
                    format!(
                        "the certificate in {} does not belong to the key in {}; give the key \
                         the certificate was issued for",
                        cert_path.display(),
                        key_path.display()
                    ),
                ),
                other => Error::config(
                    key_field,
                    format!("the key in {} cannot be used: {other}", key_path.display()),
                ),
            })?;
            Ok(ClientAuth {
                field: cert_field,
                cert,
                key,
            })
        }
    }

    impl Tls {
        /// The first setting given, to name when the target cannot take them.
        fn first_field(&self) -> Option<&'static str> {
            self.ca
                .as_ref()
                .map(|c| c.field)
                .or(self.client.as_ref().map(|c| c.field))
                .or(self.insecure)
        }

        /// Whether certificate verification is off.
        pub(crate) fn insecure(&self) -> bool {
            self.insecure.is_some()
        }

        /// The CA and client certificate in the form redis-rs takes them; `None` when neither
        /// is given (the system's trust store, no client certificate).
        pub(crate) fn certificates(&self) -> Option<redis::TlsCertificates> {
            if self.ca.is_none() && self.client.is_none() {
                return None;
            }
            Some(redis::TlsCertificates {
                client_tls: self.client.as_ref().map(|c| redis::ClientTlsConfig {
                    client_cert: c.cert.clone(),
                    client_key: c.key.to_vec(),
                }),
                root_cert: self.ca.as_ref().map(|c| c.pem.clone()),
            })
        }

        /// Checks the settings against the target and writes them into every node of it, so
        /// whatever connects to any of them uses them.
        pub(in crate::config) fn apply(&self, target: Option<&mut Target>) -> Result<()> {
            let Some(field) = self.first_field() else {
                return Ok(());
            };
            let Some(target) = target else {
                return Err(Error::config(
                    field,
                    "is set without a Redis target; give a rediss:// URL (redis_url, \
                     REDIS_URL) or rediss:// cluster nodes",
                ));
            };
            if !target.is_tls() {
                return Err(Error::config(
                    field,
                    "is a TLS setting, but Redis is reached without TLS; use a rediss:// URL \
                     (or rediss:// cluster nodes) to connect over TLS",
                ));
            }
            if let (Some(insecure), Some(ca)) = (self.insecure, &self.ca) {
                return Err(Error::config(
                    insecure,
                    format!(
                        "is set together with {}, which it would ignore; with a CA the \
                         server's certificate can be verified, so turn {insecure} off",
                        ca.field
                    ),
                ));
            }
            let certs = self.certificates();
            for info in target.infos_mut() {
                let mut with = info.clone();
                if self.insecure() {
                    if let ConnectionAddr::TcpTls {
                        host,
                        port,
                        tls_params,
                        ..
                    } = info.addr()
                    {
                        with = with.set_addr(ConnectionAddr::TcpTls {
                            host: host.clone(),
                            port: *port,
                            insecure: true,
                            tls_params: tls_params.clone(),
                        });
                    }
                }
                if let Some(certs) = &certs {
                    with = embed(with, certs.clone()).map_err(|e| Error::config(field, e))?;
                }
                *info = with;
            }
            Ok(())
        }
    }

    /// `info` carrying the parsed certificates, as redis-rs's `Client::build_with_tls` makes it.
    fn embed(
        info: ConnectionInfo,
        certs: redis::TlsCertificates,
    ) -> Result<ConnectionInfo, String> {
        redis::Client::build_with_tls(info, certs)
            .map(|client| client.get_connection_info().clone())
            .map_err(|e| format!("redis-rs refused the TLS settings: {e}"))
    }

    impl fmt::Debug for Tls {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut d = f.debug_struct("Tls");
            match &self.ca {
                Some(ca) => d.field(
                    "ca",
                    &format!("{} ({} certificates)", ca.path.display(), ca.count),
                ),
                None => d.field("ca", &"system trust store"),
            };
            d.field(
                "client_auth",
                &if self.client.is_some() {
                    "set (key <redacted>)"
                } else {
                    "not set"
                },
            )
            .field("insecure_skip_verify", &self.insecure())
            .finish()
        }
    }
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use redis::ConnectionAddr;

    use super::super::{Config, Target};
    use crate::error::{Error, Result};

    /// A CA, a client certificate it signed and that certificate's key, a key of nothing, and
    /// files that are not what they should be.
    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            let dir = tempfile::tempdir().unwrap();
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = ca_params.self_signed(&ca_key).unwrap();
            let issuer = rcgen::Issuer::new(ca_params, &ca_key);
            let client_key = rcgen::KeyPair::generate().unwrap();
            let client = rcgen::CertificateParams::new(vec!["client".to_owned()])
                .unwrap()
                .signed_by(&client_key, &issuer)
                .unwrap();
            let other_key = rcgen::KeyPair::generate().unwrap();
            for (name, text) in [
                ("ca.pem", ca.pem()),
                ("client.pem", client.pem()),
                ("client.key", client_key.serialize_pem()),
                ("other.key", other_key.serialize_pem()),
                ("garbage.pem", "not a certificate\n".to_owned()),
            ] {
                std::fs::write(dir.path().join(name), text).unwrap();
            }
            Files { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn secret_key_line(&self) -> String {
            let pem = std::fs::read_to_string(self.path("client.key")).unwrap();
            pem.lines().nth(1).unwrap().to_owned()
        }
    }

    fn field_and_problem(result: Result<Config>) -> (String, String) {
        match result {
            Err(Error::Config { field, problem }) => (field, problem),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    fn from_env(vars: &[(&str, String)]) -> Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Config::builder().env_from(|k| map.get(k).cloned())?.build()
    }

    fn path_str(p: PathBuf) -> String {
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn settings_land_on_every_node_in_any_order() {
        let f = Files::new();
        let config = Config::builder()
            .tls_ca_file(f.path("ca.pem"))
            .tls_client_auth(f.path("client.pem"), f.path("client.key"))
            .redis_cluster(["rediss://127.0.0.1:7000", "rediss://127.0.0.1:7001"])
            .build()
            .unwrap();
        assert!(config.is_tls() && config.is_cluster());
        let Some(Target::Cluster(nodes)) = &config.redis else {
            panic!("not a cluster");
        };
        for node in nodes {
            assert!(matches!(
                node.addr(),
                ConnectionAddr::TcpTls {
                    insecure: false,
                    tls_params: Some(_),
                    ..
                }
            ));
        }
        let certs = config.tls.certificates().unwrap();
        assert!(certs.root_cert.is_some() && certs.client_tls.is_some());
        let debug = format!("{config:?}");
        assert!(debug.contains("ca.pem (1 certificates)"), "{debug}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        assert!(!debug.contains(&f.secret_key_line()), "{debug}");

        let insecure = Config::builder()
            .redis_url("rediss://127.0.0.1:6380")
            .tls_insecure_skip_verify(true)
            .build()
            .unwrap();
        assert!(insecure.tls.insecure() && insecure.tls.certificates().is_none());
        let Some(Target::Single(info)) = &insecure.redis else {
            panic!("not a single server");
        };
        assert!(matches!(
            info.addr(),
            ConnectionAddr::TcpTls { insecure: true, .. }
        ));
    }

    #[test]
    fn the_environment_names_its_variables() {
        let f = Files::new();
        let url = ("REDIS_URL", "rediss://127.0.0.1:6380".to_owned());
        let ok = from_env(&[
            url.clone(),
            ("REDIS_TLS_CA", path_str(f.path("ca.pem"))),
            ("REDIS_TLS_CERT", path_str(f.path("client.pem"))),
            ("REDIS_TLS_KEY", path_str(f.path("client.key"))),
            ("REDIS_TLS_INSECURE", "false".to_owned()),
        ])
        .unwrap();
        assert!(
            ok.is_tls()
                && ok
                    .tls
                    .certificates()
                    .is_some_and(|c| c.client_tls.is_some())
        );

        // The variables, the one named in the error, and what the error says.
        type Case<'a> = (Vec<(&'a str, String)>, &'a str, &'a str);
        let cases: Vec<Case> = vec![
            (
                vec![url.clone(), ("REDIS_TLS_CA", "/nonexistent/ca.pem".into())],
                "REDIS_TLS_CA",
                "cannot read /nonexistent/ca.pem",
            ),
            (
                vec![
                    url.clone(),
                    ("REDIS_TLS_CA", path_str(f.path("garbage.pem"))),
                ],
                "REDIS_TLS_CA",
                "holds no certificate",
            ),
            (
                vec![
                    url.clone(),
                    ("REDIS_TLS_CA", path_str(f.path("client.key"))),
                ],
                "REDIS_TLS_CA",
                "holds no certificate",
            ),
            (
                vec![
                    url.clone(),
                    ("REDIS_TLS_CERT", path_str(f.path("client.pem"))),
                    ("REDIS_TLS_KEY", path_str(f.path("client.pem"))),
                ],
                "REDIS_TLS_KEY",
                "holds no PEM private key",
            ),
            (
                vec![
                    url.clone(),
                    ("REDIS_TLS_CERT", path_str(f.path("client.pem"))),
                    ("REDIS_TLS_KEY", path_str(f.path("other.key"))),
                ],
                "REDIS_TLS_CERT",
                "does not belong to the key",
            ),
            (
                vec![
                    url.clone(),
                    ("REDIS_TLS_CERT", path_str(f.path("client.pem"))),
                ],
                "REDIS_TLS_CERT",
                "without REDIS_TLS_KEY",
            ),
            (
                vec![
                    url.clone(),
                    ("REDIS_TLS_KEY", path_str(f.path("client.key"))),
                ],
                "REDIS_TLS_KEY",
                "without REDIS_TLS_CERT",
            ),
            (
                vec![
                    url.clone(),
                    ("REDIS_TLS_CA", path_str(f.path("ca.pem"))),
                    ("REDIS_TLS_INSECURE", "true".into()),
                ],
                "REDIS_TLS_INSECURE",
                "together with REDIS_TLS_CA",
            ),
            (
                vec![url.clone(), ("REDIS_TLS_INSECURE", "maybe".into())],
                "REDIS_TLS_INSECURE",
                "not a boolean",
            ),
            (
                vec![
                    ("REDIS_HOST", "cache.internal".into()),
                    ("REDIS_TLS_CA", path_str(f.path("ca.pem"))),
                ],
                "REDIS_TLS_CA",
                "reached without TLS",
            ),
            (
                vec![("REDIS_TLS_INSECURE", "1".into())],
                "REDIS_TLS_INSECURE",
                "without a Redis target",
            ),
            (
                vec![(
                    "REDIS_CLUSTER_NODES",
                    "rediss://127.0.0.1:7000,127.0.0.1:7001".into(),
                )],
                "REDIS_CLUSTER_NODES",
                "mixes rediss:// and plain nodes",
            ),
            (
                vec![("REDIS_URL", "rediss://127.0.0.1:6380/#insecure".into())],
                "REDIS_URL",
                "REDIS_TLS_INSECURE=true",
            ),
        ];
        for (vars, field, problem) in cases {
            let (got_field, got_problem) = field_and_problem(from_env(&vars));
            assert_eq!(got_field, field, "{vars:?}: {got_problem}");
            assert!(got_problem.contains(problem), "{vars:?}: {got_problem}");
            assert!(!got_problem.contains(&f.secret_key_line()), "{got_problem}");
        }
    }

    #[test]
    fn the_builder_names_its_settings() {
        let f = Files::new();
        let tls = || Config::builder().redis_url("rediss://127.0.0.1:6380");
        let cases = vec![
            (
                tls().tls_ca_file(f.path("missing.pem")),
                "tls_ca_file",
                "cannot read",
            ),
            (
                tls().tls_client_auth(f.path("client.pem"), f.path("other.key")),
                "tls_client_auth",
                "does not belong",
            ),
            (
                tls().tls_client_auth(f.path("client.pem"), f.path("missing.key")),
                "tls_client_auth",
                "cannot read",
            ),
            (
                tls()
                    .tls_insecure_skip_verify(true)
                    .tls_ca_file(f.path("ca.pem")),
                "tls_insecure_skip_verify",
                "together with tls_ca_file",
            ),
            (
                Config::builder()
                    .redis_url("redis://127.0.0.1:6379")
                    .tls_client_auth(f.path("client.pem"), f.path("client.key")),
                "tls_client_auth",
                "reached without TLS",
            ),
            (
                Config::builder()
                    .redis_host("127.0.0.1", 6380)
                    .tls_insecure_skip_verify(true),
                "tls_insecure_skip_verify",
                "reached without TLS",
            ),
            (
                Config::builder().tls_ca_file(f.path("ca.pem")),
                "tls_ca_file",
                "without a Redis target",
            ),
            (
                Config::builder().redis_url("rediss://127.0.0.1:6380#insecure"),
                "redis_url",
                "tls_insecure_skip_verify(true)",
            ),
        ];
        for (builder, field, problem) in cases {
            let (got_field, got_problem) = field_and_problem(builder.build());
            assert_eq!(got_field, field, "{got_problem}");
            assert!(got_problem.contains(problem), "{field}: {got_problem}");
        }
        // Off is the default and asks for nothing.
        assert!(Config::builder()
            .redis_url("redis://127.0.0.1:6379")
            .tls_insecure_skip_verify(false)
            .build()
            .is_ok());
    }
}
