//! The session store. `suite!` runs every rule against the in-memory store and against a real
//! redis-server; the Redis-only behaviour (hashed storage, one slot per user, degraded mode,
//! concurrency) follows.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{connected, connected_with, fast_cluster_config, RedisCluster, RedisServer};
use tierkit::health::HealthState;
use tierkit::session::{DeviceKind, NewSession, Refresh, Sessions, Validation};
use tierkit::{Error, Tierkit};

struct Fixture {
    kit: Tierkit,
    server: Option<RedisServer>,
    /// Held so the shared cluster outlives the test.
    _cluster: Option<std::sync::Arc<RedisCluster>>,
}

impl Fixture {
    async fn memory() -> Fixture {
        Fixture {
            kit: Tierkit::embedded(),
            server: None,
            _cluster: None,
        }
    }

    async fn redis() -> Fixture {
        let server = RedisServer::start();
        let kit = connected(&server.url()).await;
        Fixture {
            kit,
            server: Some(server),
            _cluster: None,
        }
    }

    /// On the shared 3+3 cluster, under a prefix of its own.
    async fn cluster() -> Fixture {
        let cluster = RedisCluster::shared();
        let kit = connected_with(fast_cluster_config(&cluster)).await;
        Fixture {
            kit,
            server: None,
            _cluster: Some(cluster),
        }
    }

    fn sessions(&self) -> Sessions {
        self.kit.sessions().build().unwrap()
    }
}

fn login(user: &str, kind: DeviceKind) -> NewSession {
    NewSession::new(user)
        .user_agent("Mozilla/5.0")
        .ip("203.0.113.7")
        .device(kind, format!("{kind:?} device"))
        .access_token(format!("jwt-for-{user}"))
        .meta("tenant", "acme")
}

fn valid(v: &Validation) -> bool {
    matches!(v, Validation::Valid(_))
}

macro_rules! suite {
    ($module:ident, $store:ident) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn create_then_validate_with_metadata() {
                let f = Fixture::$store().await;
                let s = f.sessions();
                let c = s.create(login("alice", DeviceKind::Desktop)).await.unwrap();
                let sid = c.session_id.expose();
                // 256 random bits in hex after an 8-hex routing tag.
                assert_eq!(sid.len(), 73);
                assert!(
                    !format!("{c:?}").contains(sid),
                    "Debug must not show the session id"
                );
                let Validation::Valid(session) = s.validate(sid).await else {
                    panic!()
                };
                assert_eq!(session.user_id, "alice");
                assert_eq!(session.device.kind, DeviceKind::Desktop);
                assert_eq!(
                    (session.ip.as_str(), session.user_agent.as_str()),
                    ("203.0.113.7", "Mozilla/5.0")
                );
                assert_eq!(
                    session.metadata.get("tenant").map(String::as_str),
                    Some("acme")
                );
                assert!(session.expires_at > session.created_at);
                assert!(valid(&s.validate_access(sid, "jwt-for-alice").await));
                assert_eq!(
                    s.validate_access(sid, "jwt-for-mallory").await,
                    Validation::Invalid
                );
                // The same id with its last digit changed.
                let last = if sid.ends_with('0') { '1' } else { '0' };
                let forged = format!("{}{last}", &sid[..72]);
                for bad in ["", "nope", "00000000.00", &forged] {
                    assert_eq!(s.validate(bad).await, Validation::Invalid, "{bad}");
                }
                assert!(matches!(
                    s.create(NewSession::new("")).await,
                    Err(Error::InvalidInput { .. })
                ));
            }

            #[tokio::test]
            async fn list_newest_first_and_revocations() {
                let f = Fixture::$store().await;
                let s = f.sessions();
                let a = s.create(login("bob", DeviceKind::Desktop)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                let b = s.create(login("bob", DeviceKind::Mobile)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                let c = s.create(login("bob", DeviceKind::Tablet)).await.unwrap();
                s.create(login("carol", DeviceKind::Mobile)).await.unwrap();
                let list = s.list("bob").await.unwrap();
                let kinds: Vec<_> = list.iter().map(|x| x.device.kind).collect();
                assert_eq!(
                    kinds,
                    [DeviceKind::Tablet, DeviceKind::Mobile, DeviceKind::Desktop]
                );
                assert_eq!(s.active_for("bob").await.unwrap(), 3);

                // One device, by its public handle from the list.
                assert!(s.revoke_handle("bob", &list[1].handle).await.unwrap());
                assert!(!valid(&s.validate(b.session_id.expose()).await));
                // Everywhere else.
                assert_eq!(s.revoke_others(c.session_id.expose()).await.unwrap(), 1);
                assert!(!valid(&s.validate(a.session_id.expose()).await));
                assert!(valid(&s.validate(c.session_id.expose()).await));
                let left = s.list("bob").await.unwrap();
                assert_eq!(left.len(), 1);
                // Everything.
                assert_eq!(s.revoke_all("bob").await.unwrap(), 1);
                assert!(s.list("bob").await.unwrap().is_empty());
                assert!(!s.revoke(c.session_id.expose()).await.unwrap());
                assert_eq!(s.active_for("carol").await.unwrap(), 1);
            }

            #[tokio::test]
            async fn sliding_expiry_and_absolute_lifetime() {
                let f = Fixture::$store().await;
                let s = f
                    .kit
                    .sessions()
                    .idle_timeout(Duration::from_millis(300))
                    .max_lifetime(Duration::from_millis(900))
                    .touch_interval(Duration::from_millis(50))
                    .build()
                    .unwrap();
                let used = s.create(login("dave", DeviceKind::Mobile)).await.unwrap();
                let idle = s.create(login("dave", DeviceKind::Desktop)).await.unwrap();
                // Used every 150 ms: stays alive past the idle timeout...
                for _ in 0..4 {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    assert!(valid(&s.validate(used.session_id.expose()).await));
                }
                // ...while the idle one has expired and left the list.
                assert!(!valid(&s.validate(idle.session_id.expose()).await));
                assert_eq!(s.list("dave").await.unwrap().len(), 1);
                // The absolute lifetime ends it however much it is used.
                for _ in 0..4 {
                    tokio::time::sleep(Duration::from_millis(120)).await;
                    s.validate(used.session_id.expose()).await;
                }
                assert!(!valid(&s.validate(used.session_id.expose()).await));
                assert!(s.list("dave").await.unwrap().is_empty());
                assert!(s.stats().await.unwrap().expired >= 2);
            }

            #[tokio::test]
            async fn refresh_rotation_grace_and_reuse_detection() {
                let f = Fixture::$store().await;
                let s = f
                    .kit
                    .sessions()
                    .refresh_grace(Duration::from_millis(200))
                    .build()
                    .unwrap();
                let c = s.create(login("erin", DeviceKind::Mobile)).await.unwrap();
                let t0 = c.refresh_token.expose().to_owned();
                let Refresh::Rotated {
                    refresh_token: t1, ..
                } = s.refresh(&t0).await.unwrap()
                else {
                    panic!()
                };
                // A concurrent refresh with the just-replaced token is absorbed by the grace.
                let Refresh::Rotated {
                    refresh_token: t2, ..
                } = s.refresh(&t0).await.unwrap()
                else {
                    panic!()
                };
                assert_ne!(t1, t2);
                let Refresh::Rotated { .. } = s.refresh(t2.expose()).await.unwrap() else {
                    panic!()
                };
                // Grace covers only the immediately previous token: t1 was replaced twice since.
                assert!(matches!(
                    s.refresh(t1.expose()).await.unwrap(),
                    Refresh::Reused
                ));
                let c = s.create(login("erin", DeviceKind::Mobile)).await.unwrap();
                let t0 = c.refresh_token.expose().to_owned();
                let Refresh::Rotated {
                    refresh_token: t1, ..
                } = s.refresh(&t0).await.unwrap()
                else {
                    panic!()
                };
                let Refresh::Rotated {
                    refresh_token: t3, ..
                } = s.refresh(t1.expose()).await.unwrap()
                else {
                    panic!()
                };
                tokio::time::sleep(Duration::from_millis(250)).await;
                // After the grace, the old token is retired: presenting it revokes the session.
                assert!(matches!(s.refresh(&t0).await.unwrap(), Refresh::Reused));
                assert!(!valid(&s.validate(c.session_id.expose()).await));
                assert!(matches!(
                    s.refresh(t3.expose()).await.unwrap(),
                    Refresh::Invalid
                ));
                assert!(matches!(
                    s.refresh("garbage").await.unwrap(),
                    Refresh::Invalid
                ));
                let stats = s.stats().await.unwrap();
                assert_eq!((stats.refreshed, stats.revoked), (5, 2));
            }

            #[tokio::test]
            async fn analytics_count_by_device_and_catch_up_with_expiry() {
                let f = Fixture::$store().await;
                let s = f
                    .kit
                    .sessions()
                    .idle_timeout(Duration::from_millis(200))
                    .max_lifetime(Duration::from_secs(60))
                    .build()
                    .unwrap();
                let a = s.create(login("fay", DeviceKind::Mobile)).await.unwrap();
                s.create(login("fay", DeviceKind::Mobile)).await.unwrap();
                s.create(login("gus", DeviceKind::Desktop)).await.unwrap();
                s.validate(a.session_id.expose()).await;
                let st = s.stats().await.unwrap();
                assert_eq!((st.created, st.validated, st.active), (3, 1, 3));
                assert_eq!(st.by_device.get("mobile"), Some(&2));
                assert_eq!(st.by_device.get("desktop"), Some(&1));
                s.revoke(a.session_id.expose()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                // The sweep finds what simply expired, without scanning the keyspace.
                assert_eq!(s.sweep().await.unwrap(), 2);
                let st = s.stats().await.unwrap();
                assert_eq!((st.active, st.revoked, st.expired), (0, 1, 2));
                assert!(st.by_device.is_empty(), "{:?}", st.by_device);
            }

            #[tokio::test]
            async fn a_thousand_concurrent_calls_never_validate_a_revoked_session() {
                let f = Fixture::$store().await;
                let s = f
                    .kit
                    .sessions()
                    .touch_interval(Duration::from_millis(1))
                    .build()
                    .unwrap();
                let mut ids = Vec::new();
                for i in 0..20 {
                    ids.push(
                        s.create(login(&format!("u{}", i % 4), DeviceKind::Other))
                            .await
                            .unwrap()
                            .session_id,
                    );
                }
                let ids = Arc::new(ids);
                let revoked = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
                let tasks: Vec<_> = (0..1000)
                    .map(|i| {
                        let s = s.clone();
                        let ids = ids.clone();
                        let revoked = revoked.clone();
                        tokio::spawn(async move {
                            let id = ids[i % ids.len()].expose().to_owned();
                            if i % 10 == 0 {
                                // Under this load a Redis call may time out; a revocation
                                // attempted here must hold here all the same.
                                let _ = s.revoke(&id).await;
                                revoked.lock().unwrap().insert(id);
                            } else {
                                // Known revoked before this validation started: must be invalid.
                                let was_revoked = revoked.lock().unwrap().contains(&id);
                                let v = s.validate(&id).await;
                                assert!(!(was_revoked && valid(&v)), "revoked session validated");
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                let revoked: Vec<String> = revoked.lock().unwrap().iter().cloned().collect();
                for id in &revoked {
                    assert_eq!(s.validate(id).await, Validation::Invalid);
                }
                // Counts never go negative under the race (their exactness under concurrency
                // has its own test; here calls may time out under load and be retried).
                if let Ok(stats) = s.stats().await {
                    let counts_ok = stats.active >= 0 && stats.by_device.values().all(|n| *n >= 0);
                    assert!(counts_ok, "{stats:?}");
                }
            }
        }
    };
}

suite!(on_memory, memory);
suite!(on_redis, redis);
suite!(on_cluster, cluster);

// ---- Redis only -------------------------------------------------------------------------

async fn keys(server: &RedisServer) -> Vec<String> {
    let mut c = server.async_connection().await;
    redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn redis_holds_only_hashes_and_one_slot_per_user() {
    let f = Fixture::redis().await;
    let server = f.server.as_ref().unwrap();
    let s = f.sessions();
    let c = s.create(login("hana", DeviceKind::Mobile)).await.unwrap();
    let sid = c.session_id.expose();
    let rt = c.refresh_token.expose();
    let mut c2 = server.async_connection().await;
    let mut everything = String::new();
    for key in keys(server).await {
        everything.push_str(&key);
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut c2)
            .await
            .unwrap();
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(&mut c2)
            .await
            .unwrap();
        everything.push_str(&kind);
        everything.push_str(&String::from_utf8_lossy(&dump));
    }
    for secret in [sid, rt, &sid[9..], &rt[9..], "jwt-for-hana"] {
        assert!(!everything.contains(secret), "a secret is stored in clear");
    }
    // Every per-user key carries the user's hash tag (the only braces in it), so Redis Cluster
    // puts them in one slot and each step stays there.
    let tag = &sid[..8];
    let per_user: Vec<String> = keys(server)
        .await
        .into_iter()
        .filter(|k| k.contains(":s:{"))
        .collect();
    assert_eq!(per_user.len(), 3, "{per_user:?}"); // session, index, refresh token
    for k in &per_user {
        assert!(
            k.contains(&format!("{{{tag}}}")) && k.matches('{').count() == 1,
            "{k}"
        );
    }
}

#[tokio::test]
async fn a_revocation_elsewhere_is_seen_at_once_while_redis_is_up() {
    let f = Fixture::redis().await;
    let a = f.sessions();
    let b = connected(&f.server.as_ref().unwrap().url())
        .await
        .sessions()
        .build()
        .unwrap();
    let c = a.create(login("ivy", DeviceKind::Desktop)).await.unwrap();
    let sid = c.session_id.expose();
    assert!(valid(&b.validate(sid).await));
    a.revoke(sid).await.unwrap();
    assert_eq!(b.validate(sid).await, Validation::Invalid);
}

#[tokio::test]
async fn redis_down_validates_recent_sessions_locally_and_refuses_writes() {
    let mut f = Fixture::redis().await;
    let s = f
        .kit
        .sessions()
        .staleness(Duration::from_millis(800))
        .build()
        .unwrap();
    let seen = s.create(login("jo", DeviceKind::Mobile)).await.unwrap();
    let other = s.create(login("jo", DeviceKind::Desktop)).await.unwrap();
    let to_revoke = s.create(login("jo", DeviceKind::Tablet)).await.unwrap();
    let kai = s.create(login("kai", DeviceKind::Mobile)).await.unwrap();
    assert!(valid(&s.validate(seen.session_id.expose()).await));
    assert!(valid(&s.validate(to_revoke.session_id.expose()).await));
    // A session another instance created is not in this instance's local copy.
    let b = connected(&f.server.as_ref().unwrap().url())
        .await
        .sessions()
        .build()
        .unwrap();
    let elsewhere = b.create(login("jo", DeviceKind::Other)).await.unwrap();
    let _ = other;

    let server = f.server.as_mut().unwrap();
    server.stop();
    assert!(
        f.kit
            .health()
            .unwrap()
            .wait_for(HealthState::Down, Duration::from_secs(2))
            .await
    );
    // Validated recently here: still valid, from the local copy.
    assert!(valid(&s.validate(seen.session_id.expose()).await));
    // Never seen here: a distinct Unavailable, so the service can fall back to stateless checks.
    assert_eq!(
        s.validate(elsewhere.session_id.expose()).await,
        Validation::Unavailable
    );
    // Writes say so rather than pretend.
    assert!(s
        .create(login("jo", DeviceKind::Mobile))
        .await
        .unwrap_err()
        .is_connectivity());
    assert!(s
        .refresh(seen.refresh_token.expose())
        .await
        .unwrap_err()
        .is_connectivity());
    assert!(s
        .revoke(to_revoke.session_id.expose())
        .await
        .unwrap_err()
        .is_connectivity());
    assert!(s.revoke_all("jo").await.unwrap_err().is_connectivity());
    // ...but a revocation attempted here holds here.
    assert_eq!(
        s.validate(to_revoke.session_id.expose()).await,
        Validation::Invalid
    );
    // revoke_all could not reach Redis either: this instance stops honouring jo's sessions.
    assert_eq!(
        s.validate(seen.session_id.expose()).await,
        Validation::Invalid
    );
    // The local copy is bounded in time.
    assert!(valid(&s.validate(kai.session_id.expose()).await));
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        s.validate(kai.session_id.expose()).await,
        Validation::Unavailable
    );
    assert!(s.stats().await.is_err());

    server.restart();
    assert!(
        f.kit
            .health()
            .unwrap()
            .wait_for(HealthState::Up, Duration::from_secs(3))
            .await
    );
    // The restarted server lost everything (no persistence): Redis is authoritative again.
    assert_eq!(
        s.validate(seen.session_id.expose()).await,
        Validation::Invalid
    );
    assert!(s.create(login("jo", DeviceKind::Mobile)).await.is_ok());
}

#[tokio::test]
async fn a_revocation_redis_could_not_take_still_holds_after_it_returns() {
    let mut f = Fixture::redis().await;
    let s = f
        .kit
        .sessions()
        .sweep(Duration::from_millis(100), 100)
        .build()
        .unwrap();
    let c = s.create(login("kim", DeviceKind::Mobile)).await.unwrap();
    let sid = c.session_id.expose().to_owned();
    let server = f.server.as_mut().unwrap();
    server.hang();
    assert!(s.revoke(&sid).await.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.resume();
    assert!(
        f.kit
            .health()
            .unwrap()
            .wait_for(HealthState::Up, Duration::from_secs(3))
            .await
    );
    assert_eq!(s.validate(&sid).await, Validation::Invalid);
    // The sweep retries the deletion, so other instances see it too.
    let b = connected(&f.server.as_ref().unwrap().url())
        .await
        .sessions()
        .build()
        .unwrap();
    let mut seen_invalid = false;
    for _ in 0..50 {
        if b.validate(&sid).await == Validation::Invalid {
            seen_invalid = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_invalid, "the revocation never reached Redis");
}

#[tokio::test]
async fn concurrent_revocations_and_listings_count_each_session_off_once() {
    let f = Fixture::redis().await;
    let a = f.sessions();
    let b = connected(&f.server.as_ref().unwrap().url())
        .await
        .sessions()
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(
            a.create(login("lee", DeviceKind::Desktop))
                .await
                .unwrap()
                .session_id,
        );
    }
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (a, b, id) = (a.clone(), b.clone(), id.expose().to_owned());
            tokio::spawn(async move {
                let (r, l) = tokio::join!(a.revoke(&id), b.list("lee"));
                r.unwrap();
                l.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stats = a.stats().await.unwrap();
    assert_eq!(stats.active, 0, "{stats:?}");
    assert!(stats.by_device.is_empty(), "{stats:?}");
}
