//! TLS to Redis against real servers that speak only TLS (`--port 0 --tls-port N`), with
//! certificates made at test time ([`support::Pki`], rcgen): a single server (cache, backplane
//! coherence between two instances, sessions, the report's figures), a cluster over TLS
//! (routing, the probe's and SCAN/DBSIZE/INFO's per-node connections, the backplane), a
//! server whose certificate does not chain to the CA given, mutual TLS, and the
//! development-only switch that skips verification. Needs the `tls` feature.

mod support;

use std::time::Duration;

use support::{connected_with, eventually, Pki, RedisCluster, RedisServer};
use tierkit::cache::{Reach, Source};
use tierkit::health::HealthState;
use tierkit::session::NewSession;
use tierkit::{Config, ConfigBuilder, Tierkit};

/// How long an instance that cannot verify (or be verified by) its server is watched: six
/// probes.
const NEVER_UP: Duration = Duration::from_millis(1500);

/// Settings for TLS: a connection costs a handshake (25-40 ms in a debug build on a busy
/// machine, most of it rustls loading the system's trust store), so the probe gets the time
/// to finish one and report what failed, where `support::fast_builder`'s 80 ms (40 ms per
/// node on a cluster) would report only that it ran out of time. A cluster probe handshakes
/// with every primary, and CI runs these tests side by side on two cores: 200 ms was seen to
/// run out there on every probe for ten seconds, so the bounds are generous.
fn tls_builder() -> ConfigBuilder {
    Config::builder()
        .probe_interval(Duration::from_millis(500))
        .probe_timeout(Duration::from_millis(450))
        .op_timeout(Duration::from_millis(500))
        .degraded_latency(Duration::from_millis(150))
        .fail_threshold(2)
        .recover_threshold(1)
}

/// Starts an instance that must never reach its server, and returns it with why it did not,
/// once `NEVER_UP` has passed.
async fn refused(config: Config) -> (Tierkit, String) {
    let kit = Tierkit::new(config).expect("tierkit starts");
    let health = kit.health().expect("Redis is configured").clone();
    assert!(
        !health.wait_for(HealthState::Up, NEVER_UP).await,
        "reached a server it must not: {:?}",
        health.status()
    );
    let why = health.status().last_error.unwrap_or_default();
    eprintln!("refused, as it must be: {why}");
    (kit, why)
}

/// Whether an error text says the certificate is what failed.
fn about_certificates(why: &str) -> bool {
    let why = why.to_lowercase();
    why.contains("certificate") || why.contains("verif")
}

#[tokio::test]
async fn a_single_server_over_tls_serves_and_keeps_instances_coherent() {
    let pki = Pki::generate();
    let server = RedisServer::start_tls(&pki.server(false), &[]);
    let config = || {
        tls_builder()
            .redis_url(server.url())
            .tls_ca_file(pki.ca())
            .build()
            .expect("a valid TLS configuration")
    };
    assert!(config().is_tls());
    // Ready: Up (the probe's PING over TLS) and the backplane subscribed (over TLS).
    let a = connected_with(config()).await;
    let b = connected_with(config()).await;
    let pa = a.namespace::<String>("profiles").build().unwrap();
    let pb = b.namespace::<String>("profiles").build().unwrap();

    assert_eq!(pa.set("42", "Ada".into()).await.unwrap(), Reach::AllTiers);
    let hit = pb.get("42").await.expect("B reads A's write from Redis");
    assert_eq!((hit.as_str(), hit.source()), ("Ada", Source::L2));
    // B keeps a copy in L1 (once A's own write message, which may arrive after B's read and
    // drop the copy, has passed).
    let in_l1 = eventually(Duration::from_secs(2), || async {
        pb.get("42").await.is_some_and(|h| h.source() == Source::L1)
    })
    .await;
    assert!(in_l1.is_some(), "B never kept an L1 copy");
    // A's write reaches B's L1 through the backplane, itself a TLS connection.
    pa.set("42", "Grace".into()).await.unwrap();
    let seen = eventually(Duration::from_secs(2), || async {
        pb.get("42").await.is_some_and(|h| *h == "Grace")
    })
    .await;
    assert!(seen.is_some(), "B kept its stale L1 copy");
    pa.invalidate_pattern("4*").await.unwrap();
    let gone = eventually(Duration::from_secs(2), || async {
        pb.get("42").await.is_none()
    })
    .await;
    assert!(gone.is_some(), "B kept a copy invalidated on A");

    // Scripts over TLS: a session made on A validates on B.
    let sa = a.sessions().build().unwrap();
    let sb = b.sessions().build().unwrap();
    let created = sa.create(NewSession::new("user-1")).await.unwrap();
    let valid = sb.validate(created.session_id.expose()).await;
    assert_eq!(valid.session().map(|s| s.user_id.as_str()), Some("user-1"));
    // DBSIZE and INFO answer over TLS too.
    let report = a.health_report().await;
    assert!(
        report.cache.total_keys.is_some_and(|n| n >= 1),
        "{report:?}"
    );
    assert!(report.cache.memory_usage.is_some(), "{report:?}");

    // The server speaks only TLS: a plain client on its port gets no answer.
    let plain = redis::Client::open(format!("redis://127.0.0.1:{}", server.port())).unwrap();
    let answered = plain
        .get_connection_with_timeout(Duration::from_millis(500))
        .and_then(|mut c| {
            c.set_read_timeout(Some(Duration::from_millis(500)))?;
            redis::cmd("PING").query::<String>(&mut c)
        });
    assert!(
        answered.is_err(),
        "a plain client was answered: {answered:?}"
    );
}

#[tokio::test]
async fn a_cluster_over_tls_routes_probes_scans_and_subscribes() {
    let pki = Pki::generate();
    let cluster = RedisCluster::start_tls(&pki.server(false));
    assert!(cluster.seeds().iter().all(|s| s.starts_with("rediss://")));
    let config = |ca| {
        tls_builder()
            .redis_cluster(cluster.seeds())
            .tls_ca_file(ca)
            .build()
            .expect("a valid TLS cluster configuration")
    };
    // Up: the probe read CLUSTER SLOTS and PINGed every primary over its own TLS connections.
    // Ready: the backplane subscribed on a seed over TLS.
    let a = connected_with(config(pki.ca())).await;
    let b = connected_with(config(pki.ca())).await;
    let na = a.namespace::<u64>("n").build().unwrap();
    let nb = b.namespace::<u64>("n").build().unwrap();

    let keys: Vec<String> = (0..24).map(|i| format!("k{i}")).collect();
    let reach = na
        .set_many(keys.iter().enumerate().map(|(i, k)| (k.as_str(), i as u64)))
        .await
        .unwrap();
    assert_eq!(reach, Reach::AllTiers);
    let hits = nb.get_many(&keys).await;
    assert!(
        hits.iter()
            .enumerate()
            .all(|(i, h)| h.as_ref().is_some_and(|h| **h == i as u64)),
        "B reads every key, from every primary"
    );
    let in_l1 = eventually(Duration::from_secs(2), || async {
        nb.get("k3").await.is_some_and(|h| h.source() == Source::L1)
    })
    .await;
    assert!(in_l1.is_some(), "B never kept an L1 copy");
    na.set("k3", 300).await.unwrap();
    let seen = eventually(Duration::from_secs(3), || async {
        nb.get("k3").await.is_some_and(|h| *h == 300)
    })
    .await;
    assert!(seen.is_some(), "B kept its stale L1 copy");

    let sessions = a.sessions().build().unwrap();
    let created = sessions.create(NewSession::new("user-1")).await.unwrap();
    assert!(sessions
        .validate(created.session_id.expose())
        .await
        .session()
        .is_some());
    // DBSIZE and INFO go to each primary over its own TLS connection, SCAN too.
    let report = a.health_report().await;
    assert!(
        report.cache.total_keys.is_some_and(|n| n >= 24),
        "{report:?}"
    );
    let (reach, removed) = na.clear().await.unwrap();
    assert_eq!(reach, Reach::AllTiers);
    assert!(removed >= 24, "SCAN found {removed} of 24 keys");

    // The same cluster, verified against a CA that did not sign its certificates.
    let (_wrong, why) = refused(config(pki.other_ca())).await;
    assert!(about_certificates(&why), "{why}");
}

#[tokio::test]
async fn a_server_whose_certificate_does_not_chain_to_the_ca_is_refused() {
    let pki = Pki::generate();
    let server = RedisServer::start_tls(&pki.server(false), &[]);
    let config = tls_builder()
        .redis_url(server.url())
        .tls_ca_file(pki.other_ca())
        .build()
        .unwrap();
    let (kit, why) = refused(config).await;
    assert!(about_certificates(&why), "{why}");

    let report = kit.health_report().await;
    let said = report.redis.last_error.clone().unwrap_or_default();
    assert!(about_certificates(&said), "{report:?}");
    assert!(report.clone().public().redis.last_error.is_none());
    // Reads degrade to the loader, as with any unreachable Redis.
    let ns = kit.namespace::<String>("n").build().unwrap();
    let hit = ns
        .get_or_set("k", || async {
            Ok::<_, std::io::Error>("loaded".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(hit.source(), Source::Loader);
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::generate();
    let server = RedisServer::start_tls(&pki.server(true), &[]);
    let builder = || tls_builder().redis_url(server.url()).tls_ca_file(pki.ca());

    let without = builder().build().unwrap();
    let with = builder()
        .tls_client_auth(pki.client_cert(), pki.client_key())
        .build()
        .unwrap();
    let (refused, with) = tokio::join!(refused(without), connected_with(with));
    let (_kit, why) = refused;
    assert!(about_certificates(&why), "{why}");

    let ns = with.namespace::<String>("n").build().unwrap();
    ns.set("k", "v".into()).await.unwrap();
    let mut admin = server.async_connection().await;
    let stored: Option<Vec<u8>> = redis::cmd("GET")
        .arg("tierkit:c:n:v1:k")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(stored.is_some(), "the write reached the server");
    let sessions = with.sessions().build().unwrap();
    let created = sessions.create(NewSession::new("user-1")).await.unwrap();
    assert!(sessions
        .validate(created.session_id.expose())
        .await
        .session()
        .is_some());
}

#[tokio::test]
async fn skipping_verification_reaches_a_server_whose_ca_is_not_given() {
    // Shows the warning tierkit logs when it starts without verification.
    support::init_tracing();
    let pki = Pki::generate();
    let server = RedisServer::start_tls(&pki.server(false), &[]);
    // No CA given: the system's trust store does not know the test CA.
    let strict = tls_builder().redis_url(server.url()).build().unwrap();
    let insecure = tls_builder()
        .redis_url(server.url())
        .tls_insecure_skip_verify(true)
        .build()
        .unwrap();
    let (strict, insecure) = tokio::join!(refused(strict), connected_with(insecure));
    let (_kit, why) = strict;
    assert!(about_certificates(&why), "{why}");

    let ns = insecure.namespace::<String>("n").build().unwrap();
    assert_eq!(ns.set("k", "v".into()).await.unwrap(), Reach::AllTiers);
    let other = connected_with(
        tls_builder()
            .redis_url(server.url())
            .tls_insecure_skip_verify(true)
            .build()
            .unwrap(),
    )
    .await;
    let hit = other
        .namespace::<String>("n")
        .build()
        .unwrap()
        .get("k")
        .await;
    assert_eq!(hit.map(|h| (*h).clone()).as_deref(), Some("v"));
}
