//! Certificates made at test time (rcgen) for servers that speak only TLS.
//!
//! [`Pki::generate`] makes, in a temp dir of its own: a CA, a server certificate it signed
//! (for `127.0.0.1` and `localhost`, usable as a client certificate too, as a cluster node
//! presents it to its peers), a client certificate it signed with its key, and a second CA
//! that signed nothing here (the "wrong CA"). [`Pki::server`] gives the settings that
//! [`RedisServer::start_tls`](super::RedisServer::start_tls) and
//! [`RedisCluster::start_tls`](super::RedisCluster::start_tls) start a server with.
//!
//! Compiled with the `tls` feature only: rcgen is a dev-dependency of tierkit, and loadgen,
//! which includes this harness too, has neither.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::server::ServerTls;

/// A CA with a server and a client certificate, and another CA; files in a temp dir that
/// lives as long as any clone.
#[derive(Clone)]
pub struct Pki {
    dir: Arc<tempfile::TempDir>,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().expect("generate a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key).expect("self-sign the CA").pem();
    (params, key, pem)
}

fn leaf(
    issuer: &Issuer<'_, &KeyPair>,
    name: &str,
    sans: &[&str],
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> (String, String) {
    let key = KeyPair::generate().expect("generate a key");
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("certificate parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = usages;
    let cert = params.signed_by(&key, issuer).expect("sign a certificate");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// Makes every certificate and key (ECDSA P-256; a few milliseconds).
    pub fn generate() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("tierkit-pki-")
            .tempdir()
            .expect("create a temp dir for certificates");
        let (ca_params, ca_key, ca_pem) = ca("tierkit test CA");
        let issuer = Issuer::new(ca_params, &ca_key);
        let (server_pem, server_key) = leaf(
            &issuer,
            "tierkit test redis-server",
            &["127.0.0.1", "localhost"],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client_pem, client_key) = leaf(
            &issuer,
            "tierkit test client",
            &["tierkit-client"],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        let (_, _, other_pem) = ca("tierkit other CA");
        for (name, text) in [
            ("ca.pem", ca_pem),
            ("server.pem", server_pem),
            ("server.key", server_key),
            ("client.pem", client_pem),
            ("client.key", client_key),
            ("other-ca.pem", other_pem),
        ] {
            std::fs::write(dir.path().join(name), text)
                .unwrap_or_else(|e| panic!("write {name}: {e}"));
        }
        Pki { dir: Arc::new(dir) }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA that signed the server and client certificates.
    pub fn ca(&self) -> PathBuf {
        self.file("ca.pem")
    }

    /// A CA that signed nothing here: a server's certificate does not chain to it.
    pub fn other_ca(&self) -> PathBuf {
        self.file("other-ca.pem")
    }

    /// The client certificate the CA signed.
    pub fn client_cert(&self) -> PathBuf {
        self.file("client.pem")
    }

    /// The client certificate's key.
    pub fn client_key(&self) -> PathBuf {
        self.file("client.key")
    }

    /// Settings for a server with this PKI's certificate; `auth_clients` makes it require a
    /// client certificate signed by the CA. They keep the PKI's files alive.
    pub fn server(&self, auth_clients: bool) -> ServerTls {
        ServerTls {
            cert: self.file("server.pem"),
            key: self.file("server.key"),
            ca: self.ca(),
            client_cert: self.client_cert(),
            client_key: self.client_key(),
            auth_clients,
            keep: Some(self.dir.clone()),
        }
    }
}
