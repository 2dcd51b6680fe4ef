//! What an L1 copy may be: never older than its Redis entry's life, weighed by what it takes
//! in memory, and never kept from being healed by a foreign value at its key.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{eventually, Backend, RedisServer};
use tierkit::cache::{Reach, SetOptions, Source};

/// An entry written with a short TTL override in a long-lived namespace is not served from
/// another instance's L1 once Redis has dropped it: the L1 copy lives no longer than what the
/// Redis entry had left when it was read (its own expiry, against the server's clock).
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

    // A TTL set on the Redis entry by another program is a write tierkit does not make: with
    // client tracking, the copy read before Redis drops the entry goes when it does.
    let mut con = backend.server().unwrap().async_connection().await;
    let _: () = redis::cmd("PEXPIRE")
        .arg(on_a.redis_key("long"))
        .arg(500)
        .query_async(&mut con)
        .await
        .unwrap();
    let c = backend
        .kit_with(backend.builder().client_tracking(true))
        .await;
    let on_c = c.namespace::<String>("n").ttl(hour).build().unwrap();
    assert_eq!(on_c.get("long").await.unwrap().source(), Source::L2);
    let dropped = eventually(Duration::from_secs(3), || async {
        on_c.get("long").await.is_none()
    })
    .await;
    assert!(dropped.is_some(), "served past a TTL another program set");
}

/// The L1 bound is a memory bound: a value weighs its decoded size, however well it
/// compresses in Redis, so a reader's L1 holds no more decoded bytes than its capacity, and the
/// process's resident memory grows by about that much, not by every value read.
#[tokio::test]
async fn the_l1_bound_counts_decoded_bytes() {
    const MIB: usize = 1 << 20;
    const VALUES: usize = 100;
    let backend = Backend::redis();
    let small_l1 = || backend.builder().l1_capacity(8 * MIB as u64);
    let writer = backend.kit_with(small_l1()).await;
    let reader = backend.kit_with(small_l1()).await;
    let on_w = writer.namespace::<String>("big").build().unwrap();
    let on_r = reader.namespace::<String>("big").build().unwrap();
    for i in 0..VALUES {
        // 1 MiB that zstd stores in about a kilobyte.
        on_w.set(&i.to_string(), "x".repeat(MIB)).await.unwrap();
    }
    let before = resident_bytes();
    for i in 0..VALUES {
        assert_eq!(on_r.get(&i.to_string()).await.unwrap().len(), MIB);
    }
    let info = reader.cache_info().await;
    assert!(
        info.l1_bytes <= 8 * MIB as u64,
        "L1 weighs {} bytes",
        info.l1_bytes
    );
    assert!(info.l1_entries <= 8, "{} entries of 1 MiB", info.l1_entries);
    // Weighed by stored bytes, the L1 would keep all 100 MiB; other tests in this process
    // allocate too (a CI run on two loaded cores saw 43 MiB), so the margin is wide: what it
    // tells apart is about 8 MiB of L1 from about 100.
    if let (Some(before), Some(after)) = (before, resident_bytes()) {
        let grown = after.saturating_sub(before);
        assert!(
            grown < 64 * MIB as u64,
            "resident memory grew by {} MiB reading {VALUES} values of 1 MiB into an 8 MiB L1",
            grown / MIB as u64
        );
    }
    // One entry weighs at least its decoded size.
    let one = backend.kit().await;
    let on_one = one.namespace::<String>("big").build().unwrap();
    on_one.get("0").await.unwrap();
    assert!(one.cache_info().await.l1_bytes >= MIB as u64);
}

/// This process's resident memory, where the OS tells it (`/proc/self/statm`, in pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
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
                .get_or_set(key, move || async move {
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

/// Tags and clears hold under eviction: with a small `maxmemory`, Redis evicts entries and
/// epoch keys alike, and still no entry written with an invalidated tag, nor any entry after a
/// clear, is served by any instance. Under each kind of policy: by recency, at random, and
/// among keys with a TTL only (tag epochs have one, the namespace's epoch has none).
#[tokio::test]
async fn tags_and_clears_hold_when_redis_evicts_lru() {
    tags_and_clears_hold_under("allkeys-lru").await;
}

#[tokio::test]
async fn tags_and_clears_hold_when_redis_evicts_at_random() {
    tags_and_clears_hold_under("allkeys-random").await;
}

#[tokio::test]
async fn tags_and_clears_hold_when_redis_evicts_volatile_ttl() {
    tags_and_clears_hold_under("volatile-ttl").await;
}

async fn tags_and_clears_hold_under(policy: &str) {
    let server = RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", policy]);
    let writer = support::connected(&server.url()).await;
    let on_w = writer.namespace::<Vec<u8>>("n").build().unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    const KEYS: usize = 5000;
    for i in 0..KEYS {
        // Incompressible, so 5,000 of them overflow 2 MB many times.
        let value: Vec<u8> = (0..400).map(|_| rng.u8(..)).collect();
        let opts = SetOptions::new().tag(format!("t{}", i % 3));
        on_w.set_with(&i.to_string(), value, opts).await.unwrap();
    }
    let evicted = server.evicted_keys().await;
    assert!(evicted > 0, "nothing was evicted; the test shows nothing");

    let reader = support::connected(&server.url()).await;
    let on_r = reader.namespace::<Vec<u8>>("n").build().unwrap();
    let survivors = |ns: tierkit::cache::Namespace<Vec<u8>>, tag: usize| async move {
        let mut served = 0;
        for i in (tag..KEYS).step_by(3) {
            served += usize::from(ns.get(&i.to_string()).await.is_some());
        }
        served
    };
    // Some t0 entries are servable before the invalidation, or it proves nothing. Eviction may
    // have taken the t0 epoch (LRU time has a one-second grain, so under this churn an epoch
    // looks as old as any entry): that retires every t0 entry, and the next t0 write makes a
    // new epoch. Eviction may also have taken the namespace's epoch (any `allkeys-` policy):
    // writes are misses until the writer's once-a-second epoch watch sees it gone, so the
    // rounds are a second apart.
    let mut refreshed = 0;
    while survivors(on_r.clone(), 0).await == 0 {
        assert!(refreshed < 5, "no t0 entry stays servable");
        if refreshed > 0 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        for i in (0..90).step_by(3) {
            let opts = SetOptions::new().tag("t0");
            on_w.set_with(&i.to_string(), vec![1; 400], opts)
                .await
                .unwrap();
        }
        refreshed += 1;
    }
    assert_eq!(on_w.invalidate_tag("t0").await.unwrap(), Reach::AllTiers);
    // At once on the writer; within the backplane's delivery bound on the reader, whose L1
    // copies (read from Redis, where their frames named their tags) go by tag.
    assert_eq!(survivors(on_w.clone(), 0).await, 0, "a t0 entry was served");
    let gone = eventually(Duration::from_secs(2), || async {
        survivors(on_r.clone(), 0).await == 0
    })
    .await;
    assert!(gone.is_some(), "a t0 entry was still served by the reader");
    let fresh = support::connected(&server.url()).await;
    let on_f = fresh.namespace::<Vec<u8>>("n").build().unwrap();
    assert_eq!(survivors(on_f.clone(), 0).await, 0);
    // Other tags' entries stay (in Redis too, unless eviction took their epoch: then a miss).
    if survivors(on_w.clone(), 1).await == 0 {
        let mut con = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let epochs: Vec<String> = redis::cmd("KEYS")
            .arg("*:c:n:g*:t1")
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(epochs.is_empty(), "t1 entries went too, under {epochs:?}");
    }

    assert_eq!(on_w.clear().await.unwrap().0, Reach::AllTiers);
    for ns in [&on_w, &on_r, &on_f] {
        let gone = eventually(Duration::from_secs(2), || async {
            survivors(ns.clone(), 1).await + survivors(ns.clone(), 2).await == 0
        })
        .await;
        assert!(gone.is_some(), "served after a clear");
    }
}

/// Changes made while Redis hangs (it keeps its data) are replayed when it is back: neither
/// the writer nor any other instance serves what they replaced, and the writer never reads
/// back past its own write.
#[tokio::test]
async fn changes_made_during_an_outage_are_replayed() {
    let mut server = RedisServer::start();
    let a = support::connected(&server.url()).await;
    let b = support::connected(&server.url()).await;
    let on_a = a.namespace::<u64>("n").build().unwrap();
    let on_b = b.namespace::<u64>("n").build().unwrap();
    for key in ["k", "gone", "tagged"] {
        let opts = SetOptions::new().tag("t");
        assert_eq!(on_a.set_with(key, 1, opts).await.unwrap(), Reach::AllTiers);
        // B keeps copies in L1.
        let cached = eventually(Duration::from_secs(1), || async {
            on_b.get(key).await.map(|h| h.source()) == Some(Source::L1)
        })
        .await;
        assert!(cached.is_some());
    }

    server.hang();
    let health = a.health().unwrap().clone();
    let down = eventually(Duration::from_secs(3), || async {
        health.state() == tierkit::health::HealthState::Down
    })
    .await;
    assert!(down.is_some(), "A never saw the hang");
    assert_eq!(on_a.set("k", 2).await.unwrap(), Reach::L1Only);
    assert_eq!(on_a.invalidate("gone").await.unwrap(), Reach::L1Only);
    assert_eq!(on_a.invalidate_tag("t").await.unwrap(), Reach::L1Only);
    assert_eq!(*on_a.get("k").await.unwrap(), 2);
    server.resume();

    // Within the backplane's bound after recovery, no instance serves a replaced value, and A
    // never reads "k" below its own write on the way.
    let c = support::connected(&server.url()).await;
    let on_c = c.namespace::<u64>("n").build().unwrap();
    let healed = eventually(Duration::from_secs(5), || async {
        if let Some(k) = on_a.get("k").await {
            assert_eq!(*k, 2, "A read back past its own write");
        }
        let mut stale = false;
        for ns in [&on_b, &on_c] {
            stale |= ns.get("k").await.is_some_and(|v| *v == 1);
            stale |= ns.get("gone").await.is_some();
            stale |= ns.get("tagged").await.is_some();
        }
        !stale
    })
    .await;
    assert!(
        healed.is_some(),
        "a replaced value was still served 5 s after recovery"
    );
    // And it stays healed: the replay left tombstones and dropped the tag's epoch in Redis.
    for ns in [&on_b, &on_c] {
        assert_ne!(ns.get("k").await.map(|v| *v), Some(1));
        assert!(ns.get("gone").await.is_none() && ns.get("tagged").await.is_none());
    }
}

/// Reads on one instance never go back: while A writes versions 1..N of a key, each of B's
/// reads returns at least the highest version any of B's reads had returned before it began.
#[tokio::test]
async fn reads_on_one_instance_never_go_back() {
    let backend = Backend::redis();
    let a = backend.kit().await;
    let b = backend.kit().await;
    let on_a = a.namespace::<u64>("n").build().unwrap();
    let on_b = b.namespace::<u64>("n").build().unwrap();
    on_a.set("k", 0).await.unwrap();
    let returned = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (on_b, returned, done) = (on_b.clone(), returned.clone(), done.clone());
            tokio::spawn(async move {
                let mut reads = 0;
                while !done.load(Ordering::SeqCst) {
                    let floor = returned.load(Ordering::SeqCst);
                    if let Some(v) = on_b.get("k").await {
                        assert!(*v >= floor, "read {} after {floor} had been returned", *v);
                        returned.fetch_max(*v, Ordering::SeqCst);
                        reads += 1;
                    }
                    tokio::task::yield_now().await;
                }
                reads
            })
        })
        .collect();
    for v in 1..=1500u64 {
        on_a.set("k", v).await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    assert!(reads > 100, "{reads} reads");
}

/// With `single_flight`, a cold key read by three instances at once is loaded once, and all
/// three serve that one value.
#[tokio::test]
async fn a_cold_key_is_loaded_once_across_instances() {
    let backend = Backend::redis();
    let loads = Arc::new(AtomicUsize::new(0));
    let mut calls = Vec::new();
    for _ in 0..3 {
        let kit = backend.kit().await;
        let ns = kit
            .namespace::<u64>("n")
            .single_flight(Duration::from_secs(5))
            .build()
            .unwrap();
        let loads = loads.clone();
        calls.push(tokio::spawn(async move {
            let hit = ns
                .get_or_set("cold", || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    // Not deterministic: each load would give another value.
                    Ok::<_, std::io::Error>(fastrand::u64(..))
                })
                .await
                .unwrap();
            drop(kit);
            *hit
        }));
    }
    let mut values = Vec::new();
    for call in calls {
        values.push(call.await.unwrap());
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "loaded more than once");
    assert!(values.windows(2).all(|w| w[0] == w[1]), "{values:?}");
}

/// A holder that dies mid-load blocks the others no longer than its lease: they load
/// themselves once it runs out.
#[tokio::test]
async fn a_dead_loader_blocks_no_one_past_its_lease() {
    let backend = Backend::redis();
    let lease = Duration::from_millis(600);
    let holder = backend.kit().await;
    let on_h = holder
        .namespace::<u64>("n")
        .single_flight(lease)
        .build()
        .unwrap();
    let started = tokio::spawn(async move {
        on_h.get_or_set("k", || {
            std::future::pending::<Result<u64, std::io::Error>>()
        })
        .await
    });
    // The holder has its lease once the load is pending; then it dies.
    tokio::time::sleep(Duration::from_millis(100)).await;
    started.abort();
    drop(holder);

    let other = backend.kit().await;
    let on_o = other
        .namespace::<u64>("n")
        .single_flight(lease)
        .build()
        .unwrap();
    let began = std::time::Instant::now();
    let hit = tokio::time::timeout(
        lease * 4,
        on_o.get_or_set("k", || async { Ok::<_, std::io::Error>(7) }),
    )
    .await
    .expect("blocked past the lease")
    .unwrap();
    assert_eq!((*hit, hit.source()), (7, Source::Loader));
    // It waited for the lease rather than loading at once: the lease was really held.
    assert!(began.elapsed() >= lease / 2, "{:?}", began.elapsed());
}

/// A namespace whose entries live `ttl` and are kept `ttl` more for fail-safe, in Redis only.
fn short_lived(kit: &tierkit::Tierkit, ttl: Duration) -> tierkit::cache::Namespace<u64> {
    kit.namespace::<u64>("lapse")
        .ttl(ttl)
        .fail_safe(ttl)
        .tiers(tierkit::cache::Tiers::L2Only)
        .build()
        .unwrap()
}

/// A load that outlives what its read saw (a copy at the end of its grace, a tombstone at the
/// end of its TTL: Redis drops it mid-load) still stores its answer: the key went absent by
/// itself, no change was heard of, and a second instance reads the answer without loading.
#[tokio::test]
async fn a_load_that_outlives_what_its_read_saw_still_fills_redis() {
    let backend = Backend::redis();
    let (here, there) = (backend.kit().await, backend.kit().await);
    let ttl = Duration::from_millis(200);
    let ns = short_lived(&here, ttl);
    let other = short_lived(&there, ttl);
    let load = |key: &'static str| {
        let (ns, other) = (ns.clone(), other.clone());
        async move {
            let hit = ns
                .get_or_set(key, || async {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    Ok::<_, std::io::Error>(2)
                })
                .await
                .unwrap();
            assert_eq!((*hit, hit.source()), (2, Source::Loader), "{key}");
            let seen = other.get(key).await.map(|h| (*h, h.source()));
            assert_eq!(
                seen,
                Some((2, Source::L2)),
                "{key}: the answer reached Redis"
            );
        }
    };
    // The copy has about 100 ms of its grace left in Redis when read.
    ns.set("stale", 1).await.unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    load("stale").await;
    // The tombstone has about 50 ms of its TTL left.
    other.set("tombstone", 1).await.unwrap();
    other.invalidate("tombstone").await.unwrap();
    tokio::time::sleep(ttl - Duration::from_millis(50)).await;
    load("tombstone").await;
}

/// And the other side of it: a load that outlives the tombstone an invalidation made while it
/// ran does not bring back what it loaded before the invalidation, though Redis no longer
/// holds anything at the key: the invalidation's message reached the loading instance.
#[tokio::test]
async fn a_load_that_outlives_a_tombstone_does_not_fill_redis() {
    let backend = Backend::redis();
    let (here, there) = (backend.kit().await, backend.kit().await);
    let ttl = Duration::from_millis(100);
    let ns = short_lived(&here, ttl);
    ns.set("k", 1).await.unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(20)).await;
    let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
    let load = tokio::spawn({
        let ns = ns.clone();
        async move {
            ns.get_or_set("k", || async move {
                let _ = entered_tx.send(());
                // Past the tombstone's 100 ms.
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok::<_, std::io::Error>(2)
            })
            .await
        }
    });
    entered.await.unwrap();
    let other = short_lived(&there, ttl);
    assert_eq!(other.invalidate("k").await.unwrap(), Reach::AllTiers);
    let hit = load.await.unwrap().unwrap();
    assert_eq!(*hit, 2, "the caller gets its answer");
    assert_eq!(
        other.get("k").await.map(|h| *h),
        None,
        "Redis was not filled"
    );
    let mut con = backend.server().unwrap().async_connection().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(ns.redis_key("k"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!exists, "neither tombstone nor value is left");
}
