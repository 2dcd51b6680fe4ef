//! Two instances whose key prefixes share a start (`app` and `app.c`, `a` and `a-1`, ...), and
//! namespaces whose names share a start (`x` and `x.y`), never touch each other's keys: a
//! `clear`, a pattern or tag invalidation, a revocation or a rate-limit decision of one leaves
//! every key of the other exactly as it was. Prefixes that could nest (`a` and `a:c:x`, whose
//! keys `a:c:x:...` the first one's namespace `x` would match) cannot be configured.
//!
//! The pairs are drawn at random; `TIERKIT_SEEDS` runs more of them (default 4).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::Backend;
use tierkit::cache::SetOptions;
use tierkit::ratelimit::{Algorithm, Quota};
use tierkit::session::NewSession;
use tierkit::{Config, Error, Tierkit};

#[test]
fn a_prefix_that_could_nest_is_refused() {
    for bad in ["a:c:x", "a:", ":a", "app:cache"] {
        match Config::builder().prefix(bad).build() {
            Err(Error::Config { field, .. }) => assert_eq!(field, "prefix", "{bad}"),
            other => panic!("{bad:?} gave {other:?}"),
        }
    }
}

fn seeds() -> u64 {
    std::env::var("TIERKIT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
}

/// A prefix and a longer one that starts with it.
fn prefix_pair(rng: &mut fastrand::Rng) -> (String, String) {
    const CHARS: &[u8] = b"abc019_-.";
    let mut word = || -> String {
        let len = 1 + rng.usize(..3);
        (0..len)
            .map(|_| CHARS[rng.usize(..CHARS.len())] as char)
            .collect()
    };
    let short = word();
    let long = format!("{short}{}", word());
    (short, long)
}

/// Every key under `prefix:` with a dump of its value, via SCAN on the test's own server.
async fn snapshot(backend: &Backend, prefix: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let server = backend.server().expect("a server backend");
    let mut con = server.async_connection().await;
    let mut out = BTreeMap::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await
            .unwrap();
        for key in keys {
            if key.starts_with(format!("{prefix}:").as_bytes()) {
                let dump: Option<Vec<u8>> = redis::cmd("DUMP")
                    .arg(&key)
                    .query_async(&mut con)
                    .await
                    .unwrap();
                out.insert(key, dump.unwrap_or_default());
            }
        }
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

/// Writes something of every kind under `kit`'s prefix.
async fn populate(kit: &Tierkit) {
    for name in ["x", "x.y", "x-1"] {
        let ns = kit
            .namespace::<String>(name)
            .ttl(Duration::from_secs(600))
            .build()
            .unwrap();
        for i in 0..20 {
            let opts = SetOptions::new().tag("t").tag(format!("t{}", i % 3));
            ns.set_with(&format!("k{i}"), format!("{name} {i}"), opts)
                .await
                .unwrap();
        }
    }
    for algorithm in [Algorithm::SlidingLog, Algorithm::SlidingCounter] {
        let name = format!("x{algorithm:?}");
        let limiter = kit
            .limiter(&name, Quota::new(5, Duration::from_secs(60)).unwrap())
            .algorithm(algorithm)
            .build()
            .unwrap();
        for i in 0..5 {
            limiter.check(&format!("user:{i}")).await;
        }
    }
    let sessions = kit.sessions().build().unwrap();
    for u in ["u1", "u2"] {
        sessions.create(NewSession::new(u)).await.unwrap();
    }
}

/// Does everything that deletes keys, under `kit`'s prefix and namespace `x`.
async fn wipe(kit: &Tierkit) {
    let ns = kit
        .namespace::<String>("x")
        .ttl(Duration::from_secs(600))
        .build()
        .unwrap();
    ns.invalidate_tag("t").await.unwrap();
    ns.invalidate_pattern("*").await.unwrap();
    ns.invalidate("k1").await.unwrap();
    ns.clear().await.unwrap();
    let sessions = kit.sessions().build().unwrap();
    for u in ["u1", "u2"] {
        sessions.revoke_all(u).await.unwrap();
    }
    sessions.sweep().await.unwrap();
}

#[tokio::test]
async fn prefixes_that_share_a_start_never_touch_each_others_keys() {
    let backend = Backend::redis();
    let mut rng = fastrand::Rng::with_seed(0x7e57);
    for seed in 0..seeds() {
        let (short, long) = prefix_pair(&mut rng);
        let a = backend.kit_with(backend.builder().prefix(&short)).await;
        let b = backend.kit_with(backend.builder().prefix(&long)).await;
        populate(&a).await;
        populate(&b).await;
        for (actor, actor_prefix, other_prefix) in [(&a, &short, &long), (&b, &long, &short)] {
            let before = snapshot(&backend, other_prefix).await;
            assert!(
                !before.is_empty(),
                "seed {seed}: {other_prefix} wrote nothing"
            );
            let own_before = snapshot(&backend, actor_prefix).await.len();
            wipe(actor).await;
            let after = snapshot(&backend, other_prefix).await;
            assert_eq!(
                before.keys().collect::<Vec<_>>(),
                after.keys().collect::<Vec<_>>(),
                "seed {seed}: {actor_prefix} touched keys of {other_prefix}"
            );
            assert!(
                before == after,
                "seed {seed}: {actor_prefix} changed a value of {other_prefix}"
            );
            // The wipe did act on its own keys: namespace `x` is gone, `x.y` and `x-1` stay.
            let own_after = snapshot(&backend, actor_prefix).await;
            assert!(own_after.len() < own_before, "seed {seed}: nothing wiped");
            let entries = |ns: &str| {
                let start = format!("{actor_prefix}:c:{ns}:");
                own_after
                    .keys()
                    .filter(|k| k.starts_with(start.as_bytes()))
                    .count()
            };
            assert_eq!(entries("x"), 0, "seed {seed}");
            assert!(entries("x.y") >= 20 && entries("x-1") >= 20, "seed {seed}");
            // Put back what was wiped for the other direction.
            populate(actor).await;
        }
        backend.server().unwrap().flushall();
    }
}
