//! What TLS to Redis needs besides the settings the configuration already wrote into every
//! node's address (the CA, the client certificate, whether to verify): a rustls crypto
//! provider for the process, the same settings for the cluster client (which takes them
//! apart from its seeds' addresses), and one warning when verification is off.

use redis::cluster::ClusterClientBuilder;
use redis::TlsMode;

use crate::config::Config;

/// Run once per start, before anything connects over TLS.
///
/// redis-rs's rustls connections take the process's default crypto provider. When the
/// service installed none, tierkit installs rustls's ring provider (the one it is built
/// with); a service that wants another installs its own before starting tierkit.
pub(super) fn prepare(config: &Config) {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may install one first: then that one is the default, as wanted.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    if config.tls.insecure() {
        tracing::warn!(
            "tierkit: TLS certificate verification is OFF (tls_insecure_skip_verify or \
             REDIS_TLS_INSECURE): anyone on the network path can pose as Redis and read \
             everything sent to it, the password and session records included. For \
             development only; give the CA with tls_ca_file or REDIS_TLS_CA instead"
        );
    }
}

/// The cluster client with the configuration's TLS settings: it applies them to every node it
/// discovers, and reads neither certificates nor the verification mode from its seeds.
pub(super) fn cluster(builder: ClusterClientBuilder, config: &Config) -> ClusterClientBuilder {
    let mode = if config.tls.insecure() {
        TlsMode::Insecure
    } else {
        TlsMode::Secure
    };
    let builder = builder.tls(mode);
    match config.tls.certificates() {
        Some(certs) => builder.certs(certs),
        None => builder,
    }
}
