//! What an L1 copy may be: never older than its Redis entry's life, weighed by what it takes
//! in memory, and never kept from being healed by a foreign value at its key.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{eventually, Backend};
use tierkit::cache::{SetOptions, Source};

/// An entry written with a short TTL override in a long-lived namespace is not served from
/// another instance's L1 once Redis has dropped it: the L1 copy lives no longer than what the
/// Redis entry had left when it was read (PTTL in the same round trip).
#[tokio::test]
async fn an_l1_copy_never_outlives_its_redis_entry() {
    let backend = Backend::redis();
    let (a, b) = (backend.kit().await, backend.kit().await);
    let hour = Duration::from_secs(3600);
    let on_a = a.namespace::<String>("n").ttl(hour).build().unwrap();
    let on_b = b.namespace::<String>("n").ttl(hour).build().unwrap();
    on_a.set_with(
        "short",
        "v".into(),
        SetOptions::new().ttl(Duration::from_millis(1500)),
    )
    .await
    .unwrap();
    on_a.set("long", "w".into()).await.unwrap();
    // B reads both from Redis and keeps L1 copies. A's backplane messages about these writes
    // may reach B during its first read and keep that read out of L1 (it raced a change), so
    // B reads until a copy sits in L1.
    for key in ["short", "long"] {
        let cached = eventually(Duration::from_secs(1), || async {
            on_b.get(key).await.map(|h| h.source()) == Some(Source::L1)
        })
        .await;
        assert!(cached.is_some(), "{key} never reached B's L1");
    }
    // Redis's own time (the entry's TTL) is what is tested: a real wait.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(
        on_b.get("short").await.is_none(),
        "served past its Redis TTL"
    );
    assert_eq!(on_b.get("long").await.unwrap().source(), Source::L1);

    // A TTL set on the Redis entry by someone else bounds the copies read after it.
    let mut con = backend.server().unwrap().async_connection().await;
    let _: () = redis::cmd("PEXPIRE")
        .arg(on_a.redis_key("long"))
        .arg(500)
        .query_async(&mut con)
        .await
        .unwrap();
    let c = backend.kit().await;
    let on_c = c.namespace::<String>("n").ttl(hour).build().unwrap();
    assert_eq!(on_c.get("long").await.unwrap().source(), Source::L2);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(on_c.get("long").await.is_none());
}

/// The L1 bound is a memory bound: a value weighs its decoded size, however well it
/// compresses in Redis, so a reader's L1 holds no more decoded bytes than its capacity.
#[tokio::test]
async fn the_l1_bound_counts_decoded_bytes() {
    const MIB: usize = 1 << 20;
    let backend = Backend::redis();
    let writer = backend.kit().await;
    let reader = backend
        .kit_with(backend.builder().l1_capacity(8 * MIB as u64))
        .await;
    let on_w = writer.namespace::<String>("big").build().unwrap();
    let on_r = reader.namespace::<String>("big").build().unwrap();
    for i in 0..40 {
        // 1 MiB that zstd stores in about a kilobyte.
        on_w.set(&i.to_string(), "x".repeat(MIB)).await.unwrap();
    }
    for i in 0..40 {
        assert_eq!(on_r.get(&i.to_string()).await.unwrap().len(), MIB);
    }
    let info = reader.cache_info().await;
    assert!(
        info.l1_bytes <= 8 * MIB as u64,
        "L1 weighs {} bytes",
        info.l1_bytes
    );
    assert!(info.l1_entries <= 8, "{} entries of 1 MiB", info.l1_entries);
    // One entry weighs at least its decoded size.
    let one = backend.kit().await;
    let on_one = one.namespace::<String>("big").build().unwrap();
    on_one.get("0").await.unwrap();
    assert!(one.cache_info().await.l1_bytes >= MIB as u64);
}

/// A key of another type at an entry's place (a hash another writer left there) is a miss
/// once, and the load that follows replaces it: the loader does not run on every read.
#[tokio::test]
async fn a_foreign_value_is_replaced_by_the_next_fill() {
    let backend = Backend::redis();
    let kit = backend.kit().await;
    let ns = kit.namespace::<String>("n").build().unwrap();
    let mut con = backend.server().unwrap().async_connection().await;
    for (key, cmd) in [
        (
            "hash",
            redis::cmd("HSET")
                .arg(ns.redis_key("hash"))
                .arg("f")
                .arg("v")
                .clone(),
        ),
        (
            "set",
            redis::cmd("SADD").arg(ns.redis_key("set")).arg("m").clone(),
        ),
        (
            "junk",
            redis::cmd("SET")
                .arg(ns.redis_key("junk"))
                .arg("not an envelope")
                .clone(),
        ),
    ] {
        let _: () = cmd.query_async(&mut con).await.unwrap();
        let loads = Arc::new(AtomicUsize::new(0));
        for round in 0..3 {
            let fresh = backend.kit().await;
            let on_fresh = fresh.namespace::<String>("n").build().unwrap();
            let loads = loads.clone();
            let hit = on_fresh
                .get_or_set(key, || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(format!("loaded {key}"))
                })
                .await
                .unwrap();
            assert_eq!(*hit, format!("loaded {key}"));
            // Counted as a decode failure once, by the instance that found it.
            let failures = on_fresh.stats().decode_failures;
            assert_eq!(failures, u64::from(round == 0), "{key} round {round}");
        }
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "{key}: loaded more than once"
        );
        let kind: String = redis::cmd("TYPE")
            .arg(ns.redis_key(key))
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(kind, "string", "{key}");
    }
}
