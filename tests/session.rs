//! The session store. Each rule is written once and run against the embedded store, a
//! redis-server and a cluster (`per_backend!`); the Redis-only behaviour (hashed storage, one
//! slot per user, degraded mode, concurrency) follows, and a randomized history checks that a
//! revocation holds on its instance whatever Redis does.
//!
//! Time that is tierkit's own (expiry, idle timeout, touch, refresh grace, staleness) is moved
//! with a `ManualClock`; the durations stay long enough that Redis's own key TTLs, which run in
//! real time, never end anything first.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use support::{eventually, Backend};
use tierkit::clock::ManualClock;
use tierkit::health::HealthState;
use tierkit::session::{
    AtLimit, DeviceKind, NewSession, Refresh, RevokeReason, SessionEvent, Sessions, Validation,
};
use tierkit::{Error, Tierkit};

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

/// An instance on `b` whose time moves only with the returned clock.
async fn with_clock(b: &Backend) -> (Tierkit, ManualClock) {
    let clock = ManualClock::new();
    let kit = b.kit_with(b.builder().clock(clock.clone())).await;
    (kit, clock)
}

/// Waits until the store holds the touch that `validated` (a validation's answer) sent off in
/// the background, so the next step reads it.
async fn touch_landed(s: &Sessions, validated: &Validation) {
    let Validation::Valid(session) = validated else {
        panic!("expected a valid session, got {validated:?}")
    };
    let landed = eventually(Duration::from_secs(5), || async move {
        s.list(&session.user_id).await.is_ok_and(|list| {
            list.iter()
                .any(|x| x.handle == session.handle && x.last_seen >= session.last_seen)
        })
    })
    .await;
    assert!(
        landed.is_some(),
        "the touch of {session:?} never reached the store"
    );
}

// ---- Every backend ------------------------------------------------------------------------

support::per_backend!(
    [embedded, redis, cluster]
    [
        create_then_validate_with_metadata,
        list_newest_first_and_revocations,
        sliding_expiry_and_absolute_lifetime,
        refresh_rotation_grace_and_reuse_detection,
        analytics_count_by_device_and_catch_up_with_expiry,
        a_thousand_concurrent_calls_never_validate_a_revoked_session,
        a_user_never_holds_more_sessions_than_the_limit,
        events_tell_an_audit_log_what_happened,
        rotate_id_moves_the_session_and_kills_the_old_id,
        two_tabs_refreshing_at_once_both_keep_working,
    ]
);

/// Two tabs present one refresh token at the same moment: both get a working token (one by
/// the compare-and-set retry that finds the token in grace), and each tab refreshing once
/// afterwards, long after the grace, succeeds: neither counts as reuse.
async fn two_tabs_refreshing_at_once_both_keep_working(b: Backend) {
    let (kit, clock) = with_clock(&b).await;
    let s = kit
        .sessions()
        .refresh_grace(Duration::from_secs(5))
        .build()
        .unwrap();
    for round in 0..10 {
        let c = s.create(login("tabs", DeviceKind::Desktop)).await.unwrap();
        let t0 = c.refresh_token.expose().to_owned();
        let (a, b2) = tokio::join!(s.refresh(&t0), s.refresh(&t0));
        let (
            Refresh::Rotated {
                refresh_token: ta, ..
            },
            Refresh::Rotated {
                refresh_token: tb, ..
            },
        ) = (a.unwrap(), b2.unwrap())
        else {
            panic!("round {round}: both concurrent refreshes succeed")
        };
        assert_ne!(ta, tb);
        clock.advance(Duration::from_secs(60));
        for t in [&ta, &tb] {
            let r = s.refresh(t.expose()).await.unwrap();
            assert!(matches!(r, Refresh::Rotated { .. }), "round {round}: {r:?}");
        }
        assert!(
            valid(&s.validate(c.session_id.expose()).await),
            "round {round}"
        );
    }
}

/// After `rotate_id` the old id is worth nothing, here and on another instance; the new one
/// carries everything (data, refresh token, listing, revoke_all).
async fn rotate_id_moves_the_session_and_kills_the_old_id(b: Backend) {
    let kit = b.kit().await;
    let s = kit.sessions().build().unwrap();
    let c = s
        .create(login("step-up", DeviceKind::Desktop))
        .await
        .unwrap();
    let old = c.session_id.expose().to_owned();
    s.insert(&old, "cart", &vec![1_u32, 2]).await.unwrap();
    let new = s.rotate_id(&old).await.unwrap();
    let new = new.expose();
    assert_ne!(new, old);
    assert_eq!(s.validate(&old).await, Validation::Invalid);
    let Validation::Valid(session) = s.validate(new).await else {
        panic!("the new id validates")
    };
    assert_ne!(session.handle, c.session.handle);
    assert_eq!(session.user_id, "step-up");
    if !b.is_embedded() {
        let other = b.kit().await.sessions().build().unwrap();
        assert_eq!(other.validate(&old).await, Validation::Invalid);
        assert!(valid(&other.validate(new).await));
    }
    assert_eq!(
        s.get::<Vec<u32>>(new, "cart").await.unwrap(),
        Some(vec![1, 2])
    );
    assert!(matches!(
        s.rotate_id(&old).await,
        Err(Error::InvalidInput { .. })
    ));
    let listed = s.list("step-up").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].handle, session.handle);
    let Refresh::Rotated { session: after, .. } =
        s.refresh(c.refresh_token.expose()).await.unwrap()
    else {
        panic!("the refresh token follows the session")
    };
    assert_eq!(after.handle, session.handle);
    assert_eq!(s.revoke_all("step-up").await.unwrap(), 1);
    assert_eq!(s.validate(new).await, Validation::Invalid);
}

/// The event stream carries each creation, refresh, revocation (with its reason), detected
/// reuse and expiry, in order.
async fn events_tell_an_audit_log_what_happened(b: Backend) {
    let (kit, clock) = with_clock(&b).await;
    let s = kit
        .sessions()
        .max_sessions_per_user(1, AtLimit::EvictOldest)
        .refresh_grace(Duration::from_secs(1))
        .idle_timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut events = s.events();
    let first = s.create(login("audit", DeviceKind::Desktop)).await.unwrap();
    let second = s.create(login("audit", DeviceKind::Mobile)).await.unwrap();
    let t0 = second.refresh_token.expose().to_owned();
    let Refresh::Rotated { .. } = s.refresh(&t0).await.unwrap() else {
        panic!()
    };
    clock.advance(Duration::from_secs(2));
    assert!(matches!(s.refresh(&t0).await.unwrap(), Refresh::Reused));
    let third = s.create(login("audit", DeviceKind::Tablet)).await.unwrap();
    s.revoke(third.session_id.expose()).await.unwrap();
    let fourth = s.create(login("audit", DeviceKind::Tablet)).await.unwrap();
    clock.advance(Duration::from_secs(7200));
    assert!(s.list("audit").await.unwrap().is_empty());

    let (h1, h2, h3, h4) = (
        first.session.handle,
        second.session.handle,
        third.session.handle,
        fourth.session.handle,
    );
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    let user = || "audit".to_owned();
    let revoked = |handle: &str, reason| SessionEvent::Revoked {
        user_id: user(),
        handle: handle.to_owned(),
        reason,
    };
    let created = |handle: &str, device| SessionEvent::Created {
        user_id: user(),
        handle: handle.to_owned(),
        device,
    };
    assert_eq!(
        seen,
        vec![
            created(&h1, DeviceKind::Desktop),
            revoked(&h1, RevokeReason::Evicted),
            created(&h2, DeviceKind::Mobile),
            SessionEvent::Refreshed {
                user_id: user(),
                handle: h2.clone()
            },
            SessionEvent::ReuseDetected {
                user_id: user(),
                handle: h2.clone()
            },
            revoked(&h2, RevokeReason::Reuse),
            created(&h3, DeviceKind::Tablet),
            revoked(&h3, RevokeReason::Revoked),
            created(&h4, DeviceKind::Tablet),
            SessionEvent::Expired { handle: h4.clone() },
        ]
    );
}

/// `max_sessions_per_user`: evicting, the sessions that expire first go (and never validate
/// again); refusing, the login fails and leaves nothing. Concurrent logins never pass it.
async fn a_user_never_holds_more_sessions_than_the_limit(b: Backend) {
    let (kit, clock) = with_clock(&b).await;
    let evict = kit
        .sessions()
        .max_sessions_per_user(3, AtLimit::EvictOldest)
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            evict
                .create(login("max", DeviceKind::Mobile))
                .await
                .unwrap()
                .session_id,
        );
        clock.advance(Duration::from_secs(1));
    }
    assert_eq!(evict.list("max").await.unwrap().len(), 3);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            valid(&evict.validate(id.expose()).await),
            i >= 2,
            "session {i}"
        );
    }
    let st = evict.stats().await.unwrap();
    assert_eq!((st.revoked, st.active), (2, 3), "{st:?}");

    let refuse = kit
        .sessions()
        .max_sessions_per_user(3, AtLimit::Refuse)
        .build()
        .unwrap();
    for _ in 0..3 {
        refuse
            .create(login("cap", DeviceKind::Mobile))
            .await
            .unwrap();
    }
    let active = refuse.stats().await.unwrap().active;
    match refuse.create(login("cap", DeviceKind::Mobile)).await {
        Err(Error::SessionLimit { max: 3 }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(refuse.list("cap").await.unwrap().len(), 3);
    assert_eq!(
        refuse.stats().await.unwrap().active,
        active,
        "a refused login leaves nothing"
    );

    // Twenty logins at once for a fresh user: exactly the limit get in.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let s = refuse.clone();
            tokio::spawn(async move { s.create(login("rush", DeviceKind::Desktop)).await.is_ok() })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += u32::from(t.await.unwrap());
    }
    assert_eq!(admitted, 3);
    assert_eq!(refuse.list("rush").await.unwrap().len(), 3);
}

async fn create_then_validate_with_metadata(b: Backend) {
    let s = b.kit().await.sessions().build().unwrap();
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

async fn list_newest_first_and_revocations(backend: Backend) {
    let (kit, clock) = with_clock(&backend).await;
    let s = kit.sessions().build().unwrap();
    let a = s.create(login("bob", DeviceKind::Desktop)).await.unwrap();
    clock.advance(Duration::from_millis(5));
    let b = s.create(login("bob", DeviceKind::Mobile)).await.unwrap();
    clock.advance(Duration::from_millis(5));
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
    // Another user's handle revokes nothing.
    assert!(!s.revoke_handle("carol", &list[0].handle).await.unwrap());
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

async fn sliding_expiry_and_absolute_lifetime(b: Backend) {
    let (kit, clock) = with_clock(&b).await;
    let s = kit
        .sessions()
        .idle_timeout(Duration::from_secs(300))
        .max_lifetime(Duration::from_secs(900))
        .touch_interval(Duration::from_secs(50))
        .build()
        .unwrap();
    let used = s.create(login("dave", DeviceKind::Mobile)).await.unwrap();
    let idle = s.create(login("dave", DeviceKind::Desktop)).await.unwrap();
    // Used every 150 s: stays alive past the idle timeout...
    for _ in 0..4 {
        clock.advance(Duration::from_secs(150));
        let v = s.validate(used.session_id.expose()).await;
        assert!(valid(&v));
        touch_landed(&s, &v).await;
    }
    // ...while the idle one has expired and left the list.
    assert!(!valid(&s.validate(idle.session_id.expose()).await));
    assert_eq!(s.list("dave").await.unwrap().len(), 1);
    // The absolute lifetime ends it however much it is used.
    for _ in 0..4 {
        clock.advance(Duration::from_secs(120));
        let v = s.validate(used.session_id.expose()).await;
        if valid(&v) {
            touch_landed(&s, &v).await;
        }
    }
    assert!(!valid(&s.validate(used.session_id.expose()).await));
    assert!(s.list("dave").await.unwrap().is_empty());
    assert!(s.stats().await.unwrap().expired >= 2);
}

async fn refresh_rotation_grace_and_reuse_detection(b: Backend) {
    let (kit, clock) = with_clock(&b).await;
    let s = kit
        .sessions()
        .refresh_grace(Duration::from_secs(10))
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
    // A concurrent refresh with the just-replaced token is absorbed by the grace: a second
    // branch, as two tabs refreshing at once make.
    let Refresh::Rotated {
        refresh_token: t2, ..
    } = s.refresh(&t0).await.unwrap()
    else {
        panic!()
    };
    assert_ne!(t1, t2);
    clock.advance(Duration::from_secs(60));
    // Long after the grace, each tab refreshes with the token it got: both succeed, and
    // neither counts as reuse.
    for t in [&t2, &t1] {
        let r = s.refresh(t.expose()).await.unwrap();
        assert!(matches!(r, Refresh::Rotated { .. }), "{r:?}");
    }
    // The token both branches came from is long retired: reuse.
    assert!(matches!(s.refresh(&t0).await.unwrap(), Refresh::Reused));
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
    clock.advance(Duration::from_secs(11));
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
    assert_eq!((stats.refreshed, stats.revoked), (6, 2));
}

async fn analytics_count_by_device_and_catch_up_with_expiry(b: Backend) {
    let (kit, clock) = with_clock(&b).await;
    let s = kit
        .sessions()
        .idle_timeout(Duration::from_secs(600))
        .max_lifetime(Duration::from_secs(3600))
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
    clock.advance(Duration::from_secs(660));
    // The sweep finds what simply expired, without scanning the keyspace.
    assert_eq!(s.sweep().await.unwrap(), 2);
    let st = s.stats().await.unwrap();
    assert_eq!((st.active, st.revoked, st.expired), (0, 1, 2));
    assert!(st.by_device.is_empty(), "{:?}", st.by_device);
}

async fn a_thousand_concurrent_calls_never_validate_a_revoked_session(b: Backend) {
    let s = b
        .kit()
        .await
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
    let revoked = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let s = s.clone();
            let ids = ids.clone();
            let revoked = revoked.clone();
            tokio::spawn(async move {
                let id = ids[i % ids.len()].expose().to_owned();
                if i % 10 == 0 {
                    // Under this load a Redis call may time out; a revocation attempted here
                    // must hold here all the same.
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
    // Counts never go negative under the race (their exactness under concurrency has its own
    // test; here calls may time out under load and be retried).
    if let Ok(stats) = s.stats().await {
        let counts_ok = stats.active >= 0 && stats.by_device.values().all(|n| *n >= 0);
        assert!(counts_ok, "{stats:?}");
    }
}

// ---- Instances sharing Redis ----------------------------------------------------------------

/// Two instances on one Redis (the embedded store is per instance).
mod shared {
    use super::*;

    support::per_backend!(
        [redis, cluster][a_revocation_elsewhere_is_seen_at_once_while_redis_is_up]
    );

    async fn a_revocation_elsewhere_is_seen_at_once_while_redis_is_up(b: Backend) {
        let a = b.kit().await.sessions().build().unwrap();
        let other = b.kit().await.sessions().build().unwrap();
        let c = a.create(login("ivy", DeviceKind::Desktop)).await.unwrap();
        let sid = c.session_id.expose();
        assert!(valid(&other.validate(sid).await));
        a.revoke(sid).await.unwrap();
        assert_eq!(other.validate(sid).await, Validation::Invalid);
    }
}

// ---- Redis only -----------------------------------------------------------------------------

/// 5,000 logins of one user that expired leave the index small and `list` reading only the
/// live range: dead entries go by score, a bounded number per call (and are counted off), the
/// index key goes with its last entry, and it expires a day after its last session anyway.
#[tokio::test]
async fn five_thousand_expired_logins_leave_the_index_small() {
    let b = Backend::redis();
    // The session clock stands still while the logins are made, however long a loaded machine
    // takes to make them, so none expires early; Redis's own TTLs run in real time.
    let clock = ManualClock::new();
    let kit = b
        .kit_with(
            b.builder()
                .clock(clock.clone())
                .op_timeout(Duration::from_secs(2)),
        )
        .await;
    let idle = Duration::from_secs(3);
    let short = kit
        .sessions()
        .idle_timeout(idle)
        .max_sessions_per_user(0, AtLimit::Refuse)
        .build()
        .unwrap();
    let long = kit
        .sessions()
        .max_sessions_per_user(0, AtLimit::Refuse)
        .build()
        .unwrap();
    let keep = long
        .create(login("many", DeviceKind::Desktop))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = short.clone();
            tokio::spawn(async move {
                for _ in 0..625 {
                    s.create(login("many", DeviceKind::Mobile)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let index = keys(&b)
        .await
        .into_iter()
        .find(|k| k.ends_with(":idx:many"))
        .unwrap();
    let mut c = b.server().unwrap().async_connection().await;
    let zcard = ::redis::cmd("ZCARD").arg(&index).clone();
    assert_eq!(zcard.query_async::<u64>(&mut c).await.unwrap(), 5_001);
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(&index)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        ttl > 86_400_000,
        "a day past its longest-lived session: {ttl} ms"
    );
    // Past the last login's expiry, on both clocks.
    tokio::time::sleep(idle + Duration::from_millis(200)).await;
    clock.advance(Duration::from_secs(3600));
    let listed = long.list("many").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].handle, keep.session.handle);
    assert_eq!(
        zcard.query_async::<u64>(&mut c).await.unwrap(),
        4_001,
        "one call takes off at most 1,000 dead entries"
    );
    for _ in 0..4 {
        long.list("many").await.unwrap();
    }
    assert_eq!(zcard.query_async::<u64>(&mut c).await.unwrap(), 1);
    let st = long.stats().await.unwrap();
    assert_eq!((st.active, st.expired), (1, 5_000), "{st:?}");
    // The last session goes: so does the index key.
    long.revoke(keep.session_id.expose()).await.unwrap();
    assert!(!keys(&b).await.iter().any(|k| k.ends_with(":idx:many")));
}

/// The "JWT-only" fallback: consulted by `validate_access` only while Redis is down, its answer
/// marked `Stateless`; a bad token is invalid, and a session revoked here stays invalid.
#[tokio::test]
async fn a_stateless_verifier_vouches_only_while_redis_is_down() {
    let b = Backend::redis();
    let kit = b.kit().await;
    // Stand-in for a signature check: "signed:{user}" is genuine.
    let s = kit
        .sessions()
        .stateless_verifier(|_sid: &str, token: &str| {
            token.strip_prefix("signed:").map(str::to_owned)
        })
        .build()
        .unwrap();
    let c = s.create(login("jo", DeviceKind::Mobile)).await.unwrap();
    let sid = c.session_id.expose();
    let gone = s.create(login("jo", DeviceKind::Mobile)).await.unwrap();
    // Up: Redis decides; the verifier is never asked.
    assert_eq!(
        s.validate_access(sid, "signed:jo").await,
        Validation::Invalid
    );
    assert!(valid(&s.validate_access(sid, "jwt-for-jo").await));
    s.revoke(gone.session_id.expose()).await.unwrap();
    kit.health().unwrap().force(HealthState::Down);
    assert_eq!(
        s.validate_access(sid, "signed:jo").await,
        Validation::Stateless {
            user_id: "jo".into()
        }
    );
    assert_eq!(s.validate_access(sid, "forged").await, Validation::Invalid);
    assert_eq!(
        s.validate_access(gone.session_id.expose(), "signed:jo")
            .await,
        Validation::Invalid,
        "revoked here"
    );
    kit.health().unwrap().unforce();
}

/// One user whose index cannot be read (another writer put a string there) is skipped: the
/// sweep prunes the others and moves on instead of failing on that page for good.
#[tokio::test]
async fn the_sweep_skips_a_failing_user_and_moves_on() {
    let b = Backend::redis();
    let (kit, clock) = with_clock(&b).await;
    let s = kit.sessions().build().unwrap();
    s.create(login("broken", DeviceKind::Mobile)).await.unwrap();
    s.create(login("fine", DeviceKind::Mobile)).await.unwrap();
    let broken = keys(&b)
        .await
        .into_iter()
        .find(|k| k.ends_with(":idx:broken"))
        .unwrap();
    let mut c = b.server().unwrap().async_connection().await;
    let _: () = ::redis::cmd("SET")
        .arg(&broken)
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(15 * 86_400));
    // "fine"'s session expired on the session clock: pruned, whatever "broken" does.
    assert_eq!(s.sweep().await.unwrap(), 1);
    assert_eq!(
        s.stats().await.unwrap().active,
        1,
        "only broken's stays counted"
    );
}

async fn keys(b: &Backend) -> Vec<String> {
    let server = b.server().expect("a redis-server backend");
    let mut c = server.async_connection().await;
    ::redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn redis_holds_only_hashes_and_one_slot_per_user() {
    let b = Backend::redis();
    let s = b.kit().await.sessions().build().unwrap();
    let c = s.create(login("hana", DeviceKind::Mobile)).await.unwrap();
    let sid = c.session_id.expose();
    let rt = c.refresh_token.expose();
    let mut c2 = b.server().unwrap().async_connection().await;
    let mut everything = String::new();
    for key in keys(&b).await {
        everything.push_str(&key);
        let kind: String = ::redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut c2)
            .await
            .unwrap();
        let dump: Vec<u8> = ::redis::cmd("DUMP")
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
    let per_user: Vec<String> = keys(&b)
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
async fn redis_down_validates_recent_sessions_locally_and_refuses_writes() {
    let mut b = Backend::redis();
    let (kit, clock) = with_clock(&b).await;
    let s = kit
        .sessions()
        .staleness(Duration::from_secs(30))
        .build()
        .unwrap();
    let seen = s.create(login("jo", DeviceKind::Mobile)).await.unwrap();
    let other = s.create(login("jo", DeviceKind::Desktop)).await.unwrap();
    let to_revoke = s.create(login("jo", DeviceKind::Tablet)).await.unwrap();
    let kai = s.create(login("kai", DeviceKind::Mobile)).await.unwrap();
    assert!(valid(&s.validate(seen.session_id.expose()).await));
    assert!(valid(&s.validate(to_revoke.session_id.expose()).await));
    // A session another instance created is not in this instance's local copy.
    let elsewhere = b
        .kit()
        .await
        .sessions()
        .build()
        .unwrap()
        .create(login("jo", DeviceKind::Other))
        .await
        .unwrap();
    let _ = other;

    b.server_mut().unwrap().stop();
    assert!(
        kit.health()
            .unwrap()
            .wait_for(HealthState::Down, Duration::from_secs(2))
            .await
    );
    // Validated recently here: still valid, from the local copy.
    let local = s.validate(seen.session_id.expose()).await;
    assert!(valid(&local));
    assert_eq!(local.session().map(|x| x.user_id.as_str()), Some("jo"));
    // An access token is checked only against Redis, which holds its hash: never locally.
    assert_eq!(
        s.validate_access(seen.session_id.expose(), "jwt-for-jo")
            .await,
        Validation::Unavailable
    );
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
    clock.advance(Duration::from_secs(31));
    assert_eq!(
        s.validate(kai.session_id.expose()).await,
        Validation::Unavailable
    );
    assert!(s.stats().await.is_err());

    b.server_mut().unwrap().restart();
    assert!(
        kit.health()
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
    let st = s.stats().await.unwrap();
    assert_eq!(st.validated_locally, 2, "{st:?}");
}

/// A logout while Redis hangs is replayed the moment Redis is back, not by the next sweep (an
/// hour away here): every other instance, one that validated the session during the hang from
/// its local copy included, sees it revoked within 2 s of Redis's return.
#[tokio::test]
async fn a_revocation_during_a_hang_is_seen_everywhere_within_2s_of_the_return() {
    let mut b = Backend::redis();
    let kit = b.kit().await;
    let hour = Duration::from_secs(3600);
    let s = kit.sessions().sweep(hour, 100).build().unwrap();
    let others = [
        b.kit().await.sessions().sweep(hour, 100).build().unwrap(),
        b.kit().await.sessions().sweep(hour, 100).build().unwrap(),
    ];
    let c = s.create(login("kim", DeviceKind::Mobile)).await.unwrap();
    let sid = c.session_id.expose().to_owned();
    for other in &others {
        assert!(valid(&other.validate(&sid).await));
    }
    b.server_mut().unwrap().hang();
    assert!(s.revoke(&sid).await.is_err());
    assert_eq!(s.validate(&sid).await, Validation::Invalid);
    // The others still honour their recent copy: they cannot know yet.
    for other in &others {
        assert!(valid(&other.validate(&sid).await));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.server_mut().unwrap().resume();
    let returned = std::time::Instant::now();
    for other in &others {
        let left = Duration::from_secs(2).saturating_sub(returned.elapsed());
        let seen = eventually(left, || async {
            other.validate(&sid).await == Validation::Invalid
        })
        .await;
        assert!(
            seen.is_some(),
            "not seen {:?} after Redis returned",
            returned.elapsed()
        );
    }
    assert_eq!(s.validate(&sid).await, Validation::Invalid);
}

#[tokio::test]
async fn concurrent_revocations_and_listings_count_each_session_off_once() {
    let b = Backend::redis();
    // A hundred concurrent calls on 2 shared cores: a call bound that load cannot trip, since
    // what is checked is the counting, not the timeouts.
    let patient = || b.builder().op_timeout(Duration::from_secs(2));
    let a = b.kit_with(patient()).await.sessions().build().unwrap();
    let other = b.kit_with(patient()).await.sessions().build().unwrap();
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
            let (a, other, id) = (a.clone(), other.clone(), id.expose().to_owned());
            tokio::spawn(async move {
                let (r, l) = tokio::join!(a.revoke(&id), other.list("lee"));
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

// ---- A revocation holds here, over random histories ----------------------------------------

/// Seeds run by default; `TIERKIT_SEEDS=n` runs seeds 0..n, `TIERKIT_SEED=s` replays one.
const DEFAULT_SEEDS: u64 = 3;
/// Operations per history.
const OPS: usize = 60;

fn seeds() -> Vec<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    match (var("TIERKIT_SEED"), var("TIERKIT_SEEDS")) {
        (Some(seed), _) => vec![seed],
        (None, n) => (0..n.unwrap_or(DEFAULT_SEEDS)).collect(),
    }
}

/// A session the history created, with every refresh token handed out for it.
struct Login {
    user: String,
    sid: String,
    tokens: Vec<String>,
}

/// A random history of create, validate, revoke, revoke_all, refresh, sweep and clock moves,
/// with the server hung and resumed at random: no session revoked on this instance (a
/// `revoke` whatever its result, a `revoke_all` that returned `Ok`, a refresh that found a
/// reused token) ever validates here again: during the history, once Redis is back (its
/// records of revocations it missed still there), and after the sweep has replayed them. As a
/// Jepsen checker does, it records every operation with its result and prints the history on
/// a failure, with the seed that replays the operations (Redis's timing may differ).
#[tokio::test]
async fn a_revoked_session_never_validates_again_here_whatever_redis_does() {
    for seed in seeds() {
        let history = revocation_history(seed).await;
        if let Err(failure) = history {
            panic!("{failure}");
        }
    }
}

async fn revocation_history(seed: u64) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut b = Backend::redis();
    let (kit, clock) = with_clock(&b).await;
    let s = kit
        .sessions()
        .idle_timeout(Duration::from_secs(600))
        .max_lifetime(Duration::from_secs(3600))
        .touch_interval(Duration::from_secs(60))
        .refresh_grace(Duration::from_secs(10))
        .staleness(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut logins: Vec<Login> = Vec::new();
    let mut revoked: HashSet<String> = HashSet::new();
    let mut history: Vec<String> = Vec::new();
    let fail = |history: &[String], what: String| {
        Err(format!(
            "{what}\nseed {seed} (replay with TIERKIT_SEED={seed}); history:\n{}",
            history.join("\n")
        ))
    };
    let check =
        |v: &Validation, sid: &str, revoked: &HashSet<String>| !(valid(v) && revoked.contains(sid));

    for step in 0..OPS {
        let pick = rng.u32(0..100);
        let some = (!logins.is_empty()).then(|| rng.usize(0..logins.len()));
        let line = match (pick, some) {
            (0..15, _) | (_, None) => {
                let user = format!("u{}", rng.u8(0..3));
                match s.create(login(&user, DeviceKind::Mobile)).await {
                    Ok(c) => {
                        logins.push(Login {
                            user: user.clone(),
                            sid: c.session_id.expose().to_owned(),
                            tokens: vec![c.refresh_token.expose().to_owned()],
                        });
                        format!("create {user} -> s{}", logins.len() - 1)
                    }
                    Err(e) => format!("create {user} -> {e}"),
                }
            }
            (15..50, Some(i)) => {
                let v = s.validate(&logins[i].sid).await;
                let line = format!("validate s{i} -> {}", outcome(&v));
                if !check(&v, &logins[i].sid, &revoked) {
                    history.push(line);
                    return fail(&history, format!("s{i} was revoked here and validated"));
                }
                line
            }
            (50..62, Some(i)) => {
                let r = s.revoke(&logins[i].sid).await;
                revoked.insert(logins[i].sid.clone());
                format!("revoke s{i} -> {r:?}")
            }
            (62..67, Some(i)) => {
                let user = logins[i].user.clone();
                let r = s.revoke_all(&user).await;
                if r.is_ok() {
                    revoked.extend(
                        logins
                            .iter()
                            .filter(|l| l.user == user)
                            .map(|l| l.sid.clone()),
                    );
                }
                format!("revoke_all {user} -> {r:?}")
            }
            (67..80, Some(i)) => {
                let t = rng.usize(0..logins[i].tokens.len());
                match s.refresh(&logins[i].tokens[t]).await {
                    Ok(Refresh::Rotated { refresh_token, .. }) => {
                        logins[i].tokens.push(refresh_token.expose().to_owned());
                        format!("refresh s{i} token {t} -> rotated")
                    }
                    Ok(Refresh::Reused) => {
                        revoked.insert(logins[i].sid.clone());
                        format!("refresh s{i} token {t} -> reused")
                    }
                    Ok(other) => format!("refresh s{i} token {t} -> {other:?}"),
                    Err(e) => format!("refresh s{i} token {t} -> {e}"),
                }
            }
            (80..90, _) => {
                let by = Duration::from_millis(rng.u64(0..120_000));
                clock.advance(by);
                format!("advance {by:?}")
            }
            (90..95, _) => {
                let server = b.server_mut().unwrap();
                if server.is_hung() {
                    server.resume();
                    // Half the time the history goes on at once, while health still says Down.
                    if rng.bool() {
                        let health = kit.health().unwrap();
                        let up = health
                            .wait_for(HealthState::Up, Duration::from_secs(3))
                            .await;
                        format!("resume, Up: {up}")
                    } else {
                        "resume".to_owned()
                    }
                } else {
                    server.hang();
                    "hang".to_owned()
                }
            }
            _ => format!("sweep -> {:?}", s.sweep().await),
        };
        history.push(format!("{step}: {line}"));
    }

    // Redis back, the pending revocations replayed: still none validates.
    if b.server().unwrap().is_hung() {
        b.server_mut().unwrap().resume();
        history.push("resume".to_owned());
    }
    let up = kit
        .health()
        .unwrap()
        .wait_for(HealthState::Up, Duration::from_secs(5))
        .await;
    if !up {
        return fail(&history, "Redis never came back Up".to_owned());
    }
    // Before the sweep replays what Redis missed (its records are still there), and after.
    for pass in ["before the sweep", "after the sweep"] {
        if pass == "after the sweep" {
            let swept =
                eventually(Duration::from_secs(5), || async { s.sweep().await.is_ok() }).await;
            history.push(format!("sweep until it passes -> {swept:?}"));
        }
        for (i, l) in logins.iter().enumerate() {
            let v = s.validate(&l.sid).await;
            history.push(format!("validate s{i} ({pass}) -> {}", outcome(&v)));
            if !check(&v, &l.sid, &revoked) {
                return fail(&history, format!("s{i} was revoked here and validated"));
            }
        }
    }
    Ok(())
}

fn outcome(v: &Validation) -> &'static str {
    match v {
        Validation::Valid(_) => "valid",
        Validation::Invalid => "invalid",
        Validation::Unavailable => "unavailable",
        _ => "other",
    }
}
