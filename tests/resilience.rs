//! Resilient loading against a loader that fails, hangs or is slow: fail-safe, soft and hard
//! timeouts, eager refresh, what a loader may decide about its result, and the tier of a
//! namespace. Each body runs against the embedded cache and a real redis-server (the randomized
//! history also against the cluster).
//!
//! The fail-safe invariant is checked on randomized histories against a model: a stale copy
//! is only ever the key's last value (nothing written or invalidated since), and is never
//! served more than `fail_safe_max` past its expiry; a failing loader's error reaches the
//! caller only when no such copy could have been at hand. `TIERKIT_SEEDS=n` runs `n` seeds
//! (default 3).

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{eventually, Backend};
use tierkit::cache::{EagerRefresh, Loaded, ReadOptions, Source, Tiers};
use tierkit::{Error, Tierkit};

fn io_err() -> std::io::Error {
    std::io::Error::other("the database is down")
}

/// Counts loader calls, and answers `value` after `delay` (or fails, or hangs).
#[derive(Clone, Default)]
struct Db {
    calls: Arc<AtomicUsize>,
}

impl Db {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn ok(
        &self,
        value: u64,
        delay: Duration,
    ) -> impl FnOnce() -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<u64, std::io::Error>> + Send>,
    > + Send
           + 'static {
        let calls = self.calls.clone();
        move || {
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok(value)
            })
        }
    }

    fn failing(
        &self,
    ) -> impl FnOnce() -> std::future::Ready<Result<u64, std::io::Error>> + Send + 'static {
        let calls = self.calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err(io_err()))
        }
    }
}

/// Sets a flag when dropped: tells whether a hung load was let go.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// ---- Every backend ----------------------------------------------------------------------

mod every_backend {
    use super::*;

    crate::support::per_backend!([embedded, redis] [
        fail_safe_serves_a_stale_copy_after_a_failure_and_rests_the_loader,
        a_hard_timeout_drops_the_load_and_answers_stale_or_an_error,
        a_soft_timeout_answers_stale_while_the_load_fills_the_cache,
        eager_refresh_keeps_a_hot_key_from_ever_missing,
        xfetch_refreshes_before_expiry,
        the_loader_sets_ttl_and_tags_or_keeps_its_answer_uncached,
        negative_results_are_cached_for_their_own_ttl,
        background_loads_end_with_the_instance,
        bad_settings_are_named,
        each_tier_keeps_values_where_it_says,
        extreme_durations_never_panic,
    ]);
}

mod histories {
    use super::*;

    crate::support::per_backend!([embedded, redis, cluster][fail_safe_history]);
}

async fn fail_safe_serves_a_stale_copy_after_a_failure_and_rests_the_loader(b: Backend) {
    let kit = b.kit().await;
    let ns = kit
        .namespace::<u64>("fs")
        .ttl(Duration::from_millis(200))
        .fail_safe(Duration::from_millis(800))
        .fail_safe_throttle(Duration::from_millis(300))
        .build()
        .unwrap();
    let db = Db::default();
    assert_eq!(
        *ns.get_or_set("k", db.ok(1, Duration::ZERO)).await.unwrap(),
        1
    );
    // Fresh: the failing loader is not even asked.
    let hit = ns.get_or_set("k", db.failing()).await.unwrap();
    assert_eq!((*hit, hit.source()), (1, Source::L1));
    assert_eq!(db.calls(), 1);
    // Expired: the loader fails, the expired copy is served, marked.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let hit = ns.get_or_set("k", db.failing()).await.unwrap();
    assert_eq!((*hit, hit.source()), (1, Source::Stale));
    assert_eq!(db.calls(), 2);
    // A plain read does not serve it: no loader failed, and Redis (or L1) answered "expired".
    assert!(ns.get("k").await.is_none());
    // Within the throttle the loader rests.
    for _ in 0..5 {
        let hit = ns.get_or_set("k", db.failing()).await.unwrap();
        assert_eq!(hit.source(), Source::Stale);
    }
    assert_eq!(db.calls(), 2, "the loader rests for the throttle");
    tokio::time::sleep(Duration::from_millis(320)).await;
    assert_eq!(
        ns.get_or_set("k", db.failing()).await.unwrap().source(),
        Source::Stale
    );
    assert_eq!(db.calls(), 3, "tried again once the throttle passed");
    // A call can turn fail-safe off.
    let off = ReadOptions::new().fail_safe(None);
    let failed = ns
        .get_or_load("k", &off, || async { Err::<Loaded<u64>, _>(io_err()) })
        .await;
    assert!(matches!(failed, Err(Error::Loader(_))), "{failed:?}");
    // Past the bound (200 ms of life + 800 ms), the error.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let failed = ns.get_or_set("k", db.failing()).await;
    assert!(matches!(failed, Err(Error::Loader(_))), "{failed:?}");
    // A good load ends it.
    let hit = ns.get_or_set("k", db.ok(2, Duration::ZERO)).await.unwrap();
    assert_eq!((*hit, hit.source()), (2, Source::Loader));
    let stats = ns.stats();
    assert!(stats.stale_served >= 7, "{stats:?}");
    // A write or an invalidation leaves nothing stale behind.
    ns.set("k", 3).await.unwrap();
    ns.invalidate("k").await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(ns.get_or_set("k", db.failing()).await.is_err());
}

async fn a_hard_timeout_drops_the_load_and_answers_stale_or_an_error(b: Backend) {
    let kit = b.kit().await;
    let ns = kit
        .namespace::<u64>("hard")
        .ttl(Duration::from_millis(150))
        .fail_safe(Duration::from_secs(30))
        .hard_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let hung = |flag: Arc<AtomicBool>| {
        move || async move {
            let _flag = DropFlag(flag);
            std::future::pending::<()>().await;
            Ok::<u64, std::io::Error>(0)
        }
    };
    // No copy at hand: the error, and the hung load is dropped.
    let dropped = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let failed = ns.get_or_set("cold", hung(dropped.clone())).await;
    assert!(
        matches!(failed, Err(Error::LoaderTimeout(t)) if t == Duration::from_millis(100)),
        "{failed:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        dropped.load(Ordering::SeqCst),
        "the timed-out load was dropped"
    );
    assert_eq!(ns.stats().loader_timeouts, 1);
    // With an expired copy: the copy.
    ns.set("k", 7).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dropped = Arc::new(AtomicBool::new(false));
    let hit = ns.get_or_set("k", hung(dropped.clone())).await.unwrap();
    assert_eq!((*hit, hit.source()), (7, Source::Stale));
    assert!(dropped.load(Ordering::SeqCst));
    // Waiters share the outcome: ten callers of a hung cold key all time out, one load ran.
    let db = Db::default();
    let calls = db.calls.clone();
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let ns = ns.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                ns.get_or_set("cold2", move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                    Ok::<u64, std::io::Error>(0)
                })
                .await
            })
        })
        .collect();
    for w in waiters {
        assert!(matches!(w.await.unwrap(), Err(Error::LoaderTimeout(_))));
    }
    assert_eq!(db.calls(), 1);
}

async fn a_soft_timeout_answers_stale_while_the_load_fills_the_cache(b: Backend) {
    let kit = b.kit().await;
    let declare = |kit: &Tierkit| {
        kit.namespace::<u64>("soft")
            .ttl(Duration::from_millis(200))
            .fail_safe(Duration::from_secs(30))
            .soft_timeout(Duration::from_millis(30))
            .build()
            .unwrap()
    };
    let ns = declare(&kit);
    let db = Db::default();
    ns.get_or_set("k", db.ok(1, Duration::ZERO)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    // The database now takes 600 ms; ten callers at once each get the stale copy at the soft
    // timeout, long before the load ends, and the load runs once.
    let started = Instant::now();
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let (ns, load) = (ns.clone(), db.ok(2, Duration::from_millis(600)));
            tokio::spawn(async move { (ns.get_or_set("k", load).await, Instant::now()) })
        })
        .collect();
    for c in callers {
        let (hit, at) = c.await.unwrap();
        let hit = hit.unwrap();
        assert_eq!((*hit, hit.source()), (1, Source::Stale));
        assert!(
            at - started < Duration::from_millis(500),
            "answered before the load ended: {:?}",
            at - started
        );
    }
    assert_eq!(db.calls(), 2, "one load before, one for the ten callers");
    // The background load fills L1 (and Redis, where another instance finds it).
    let filled = eventually(Duration::from_secs(5), || async {
        ns.get("k").await.is_some_and(|h| *h == 2)
    })
    .await;
    assert!(filled.is_some(), "the background load filled the cache");
    assert_eq!(db.calls(), 2);
    if !b.is_embedded() {
        let other = b.kit().await;
        let hit = declare(&other)
            .get("k")
            .await
            .expect("Redis holds the background fill");
        assert_eq!((*hit, hit.source()), (2, Source::L2));
    }
    assert!(ns.stats().background_loads >= 1);
}

async fn eager_refresh_keeps_a_hot_key_from_ever_missing(b: Backend) {
    let kit = b.kit().await;
    let ns = kit
        .namespace::<u64>("eager")
        .ttl(Duration::from_millis(300))
        .eager_refresh(EagerRefresh::after(0.5))
        .build()
        .unwrap();
    let db = Db::default();
    let version = Arc::new(AtomicUsize::new(0));
    let mut sources = Vec::new();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let (calls, version) = (db.calls.clone(), version.clone());
        let hit = ns
            .get_or_set("hot", move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                Ok::<_, std::io::Error>(version.fetch_add(1, Ordering::SeqCst) as u64)
            })
            .await
            .unwrap();
        sources.push(hit.source());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let loaded = sources.iter().filter(|s| **s == Source::Loader).count();
    assert_eq!(loaded, 1, "only the first read waited for the loader");
    assert_eq!(ns.stats().misses, 1, "{:?}", ns.stats());
    // About one refresh per 150 ms of the 2 s, never one per read.
    let calls = db.calls();
    assert!(
        (5..=20).contains(&calls),
        "{calls} loader calls for {} reads",
        sources.len()
    );
    assert!(ns.stats().background_loads as usize >= calls - 1);
}

async fn xfetch_refreshes_before_expiry(b: Backend) {
    let kit = b.kit().await;
    // A loader of ~40 ms and beta 5: refreshes come well before the 300 ms TTL ends, so most
    // expiries never show.
    let ns = kit
        .namespace::<u64>("xfetch")
        .ttl(Duration::from_millis(300))
        .eager_refresh(EagerRefresh::xfetch(5.0))
        .build()
        .unwrap();
    let db = Db::default();
    let until = Instant::now() + Duration::from_secs(2);
    let mut reads = 0;
    while Instant::now() < until {
        ns.get_or_set("hot", db.ok(1, Duration::from_millis(40)))
            .await
            .unwrap();
        reads += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let stats = ns.stats();
    assert!(stats.background_loads >= 3, "{stats:?}");
    // Seven expiries in 2 s without refresh; with it, most reads past expiry never happen.
    assert!(stats.misses < 5, "{stats:?} over {reads} reads");
}

async fn the_loader_sets_ttl_and_tags_or_keeps_its_answer_uncached(b: Backend) {
    let kit = b.kit().await;
    let ns = kit.namespace::<String>("adaptive").build().unwrap();
    let opts = ReadOptions::new();
    // A TTL of its own.
    let hit = ns
        .get_or_load("short", &opts, || async {
            Ok::<_, std::io::Error>(Loaded::value("s".to_string()).ttl(Duration::from_millis(150)))
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hit.source(), Source::Loader);
    if !b.is_embedded() {
        let pttl: i64 = b.query(&kit, redis::cmd("PTTL"), "c:adaptive:v1:short");
        assert!(
            (1..=150).contains(&pttl),
            "the loader's TTL reached Redis: {pttl}"
        );
    }
    assert!(ns.get("short").await.is_some());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        ns.get("short").await.is_none(),
        "expired at the loader's TTL"
    );

    // Tags: the first load under a tag this instance never saw stays in L1 (see
    // `Epochs::known_at`); the next goes to Redis too. Both are invalidated by the tag.
    for key in ["a", "b"] {
        ns.get_or_load(key, &opts, move || async move {
            Ok::<_, std::io::Error>(Loaded::value(format!("v{key}")).tag("team:7"))
        })
        .await
        .unwrap();
    }
    if !b.is_embedded() {
        let other = b.kit().await;
        let on_other = other.namespace::<String>("adaptive").build().unwrap();
        assert_eq!(on_other.get("b").await.unwrap().source(), Source::L2);
        on_other.invalidate_tag("team:7").await.unwrap();
        let gone = eventually(Duration::from_secs(5), || async {
            ns.get("a").await.is_none() && ns.get("b").await.is_none()
        })
        .await;
        assert!(
            gone.is_some(),
            "the tag reached the loader's entries on every instance"
        );
        assert!(on_other.get("b").await.is_none());
    } else {
        ns.invalidate_tag("team:7").await.unwrap();
        assert!(ns.get("a").await.is_none() && ns.get("b").await.is_none());
    }

    // Uncached: served, kept nowhere.
    let db = Db::default();
    for _ in 0..3 {
        let calls = db.calls.clone();
        let hit = ns
            .get_or_load("partial", &opts, move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(Loaded::value("p".to_string()).uncached())
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(hit.source(), Source::Loader);
    }
    assert_eq!(db.calls(), 3);
    assert!(ns.get("partial").await.is_none());

    // A TTL or tags a write would refuse: an error, nothing cached.
    let bad = ns
        .get_or_load("bad", &opts, || async {
            Ok::<_, std::io::Error>(Loaded::value("x".to_string()).tag(""))
        })
        .await;
    assert!(matches!(bad, Err(Error::InvalidInput { .. })), "{bad:?}");
    assert!(ns.get("bad").await.is_none());
}

async fn negative_results_are_cached_for_their_own_ttl(b: Backend) {
    let kit = b.kit().await;
    let declare = |kit: &Tierkit| {
        kit.namespace::<String>("neg")
            .negative_ttl(Duration::from_millis(300))
            .build()
            .unwrap()
    };
    let ns = declare(&kit);
    let db = Db::default();
    let not_found = |db: &Db| {
        let calls = db.calls.clone();
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Loaded::<String>::not_found())
        }
    };
    let opts = ReadOptions::new();
    assert!(ns
        .get_or_load("ghost", &opts, not_found(&db))
        .await
        .unwrap()
        .is_none());
    assert!(ns
        .get_or_load("ghost", &opts, not_found(&db))
        .await
        .unwrap()
        .is_none());
    assert_eq!(db.calls(), 1, "the second lookup was answered by the cache");
    assert!(ns.get("ghost").await.is_none());
    assert!(ns.stats().negative_hits >= 1);
    if !b.is_embedded() {
        let other = b.kit().await;
        let on_other = declare(&other);
        assert!(on_other
            .get_or_load("ghost", &opts, not_found(&db))
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            db.calls(),
            1,
            "the other instance read the negative entry from Redis"
        );
    }
    // `get_or_set` wants a value: a cached "not found" does not stop it.
    let hit = ns
        .get_or_set("ghost", || async {
            Ok::<_, std::io::Error>("born".to_string())
        })
        .await
        .unwrap();
    assert_eq!(*hit, "born");
    // Past the negative TTL the loader is asked again.
    assert!(ns
        .get_or_load("ghost2", &opts, not_found(&db))
        .await
        .unwrap()
        .is_none());
    let before = db.calls();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(ns
        .get_or_load("ghost2", &opts, not_found(&db))
        .await
        .unwrap()
        .is_none());
    assert_eq!(db.calls(), before + 1);
    // Without a negative TTL nothing is cached.
    let plain = kit.namespace::<String>("neg-plain").build().unwrap();
    let db = Db::default();
    for _ in 0..2 {
        assert!(plain
            .get_or_load("ghost", &opts, not_found(&db))
            .await
            .unwrap()
            .is_none());
    }
    assert_eq!(db.calls(), 2);
}

async fn background_loads_end_with_the_instance(b: Backend) {
    let kit = b.kit().await;
    let ns = kit
        .namespace::<u64>("bg")
        .ttl(Duration::from_millis(100))
        .fail_safe(Duration::from_secs(30))
        .soft_timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    ns.set("k", 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let hit = ns
        .get_or_set("k", move || async move {
            let _flag = DropFlag(flag);
            std::future::pending::<()>().await;
            Ok::<u64, std::io::Error>(0)
        })
        .await
        .unwrap();
    assert_eq!(hit.source(), Source::Stale);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !dropped.load(Ordering::SeqCst),
        "the load goes on in the background"
    );
    drop(kit);
    let ended = eventually(Duration::from_secs(5), || async {
        dropped.load(Ordering::SeqCst)
    })
    .await;
    assert!(
        ended.is_some(),
        "the background load ended with the instance"
    );
    // The handle still answers, without background work.
    assert_eq!(
        *ns.get_or_set("k", || async { Ok::<u64, std::io::Error>(5) })
            .await
            .unwrap(),
        5
    );
}

async fn bad_settings_are_named(b: Backend) {
    let kit = b.kit().await;
    let named = |r: tierkit::Result<tierkit::cache::Namespace<u64>>, field: &str| match r {
        Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected a config error on {field}, got {other:?}"),
    };
    named(
        kit.namespace::<u64>("b1")
            .soft_timeout(Duration::from_millis(5))
            .build(),
        "soft_timeout",
    );
    named(
        kit.namespace::<u64>("b2")
            .fail_safe(Duration::from_secs(1))
            .soft_timeout(Duration::from_secs(2))
            .hard_timeout(Duration::from_secs(1))
            .build(),
        "soft_timeout",
    );
    named(
        kit.namespace::<u64>("b3").fail_safe(Duration::ZERO).build(),
        "fail_safe",
    );
    named(
        kit.namespace::<u64>("b4")
            .eager_refresh(EagerRefresh::after(1.5))
            .build(),
        "eager_refresh",
    );
    named(
        kit.namespace::<u64>("b5")
            .hard_timeout(Duration::ZERO)
            .build(),
        "hard_timeout",
    );
    named(
        kit.namespace::<u64>("b6")
            .negative_ttl(Duration::ZERO)
            .build(),
        "negative_ttl",
    );
    let ns = kit.namespace::<u64>("b7").build().unwrap();
    let bad = ns
        .get_or_load(
            "k",
            &ReadOptions::new().hard_timeout(Some(Duration::ZERO)),
            || async { Ok::<_, std::io::Error>(Loaded::value(1)) },
        )
        .await;
    assert!(matches!(bad, Err(Error::InvalidInput { .. })), "{bad:?}");
    assert!(ns.get("k").await.is_none());
}

async fn each_tier_keeps_values_where_it_says(b: Backend) {
    let kit = b.kit().await;
    let both = kit.namespace::<u64>("both").build().unwrap();
    let l2 = kit
        .namespace::<u64>("l2only")
        .tiers(Tiers::L2Only)
        .build()
        .unwrap();
    let l1 = kit
        .namespace::<u64>("l1only")
        .tiers(Tiers::L1Only)
        .build()
        .unwrap();
    for ns in [&both, &l2, &l1] {
        ns.set("k", 1).await.unwrap();
        assert_eq!(*ns.get("k").await.unwrap(), 1);
        let hit = ns
            .get_or_set("loaded", || async { Ok::<u64, std::io::Error>(2) })
            .await
            .unwrap();
        assert_eq!(hit.source(), Source::Loader);
        let again = ns
            .get_or_set("loaded", || async { Ok::<u64, std::io::Error>(3) })
            .await
            .unwrap();
        assert_eq!(*again, 2, "cached in some tier");
    }
    if b.is_embedded() {
        // Without Redis the L1 is the one tier, also for an L2-only namespace.
        assert_eq!(l2.get("k").await.unwrap().source(), Source::L1);
        return;
    }
    let exists = |key: &str| -> i64 { b.query(&kit, redis::cmd("EXISTS"), key) };
    assert_eq!(exists("c:both:v1:k"), 1);
    assert_eq!(exists("c:l2only:v1:k"), 1);
    assert_eq!(
        exists("c:l1only:v1:k"),
        0,
        "an L1-only value never reaches Redis"
    );
    // Every L2-only read is Redis's answer: delete behind tierkit's back, and it is gone.
    assert_eq!(l2.get("k").await.unwrap().source(), Source::L2);
    let _: i64 = b.query(&kit, redis::cmd("DEL"), "c:l2only:v1:k");
    assert!(l2.get("k").await.is_none(), "no in-process copy answered");
    // Both tiers: L1 answers until the read skips it.
    let _: i64 = b.query(&kit, redis::cmd("DEL"), "c:both:v1:k");
    assert_eq!(both.get("k").await.unwrap().source(), Source::L1);
    assert!(both
        .get_with("k", &ReadOptions::new().skip_l1())
        .await
        .is_none());
    // A skip_l1 load reads Redis, and its answer replaces the L1 copy.
    let _: i64 = b.query(&kit, redis::cmd("DEL"), "c:both:v1:loaded");
    let hit = both
        .get_or_load("loaded", &ReadOptions::new().skip_l1(), || async {
            Ok::<_, std::io::Error>(Loaded::value(9))
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!((*hit, hit.source()), (9, Source::Loader));
    assert_eq!(*both.get("loaded").await.unwrap(), 9);
}

// ---- The fail-safe invariant on random histories ---------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Op {
    LoadOk,
    LoadFail,
    LoadHang,
    Set,
    Invalidate,
    Sleep(u64),
}

/// What the model knows of a key: its last value, and when the call that made it began and
/// ended (the entry's life started in between).
#[derive(Clone, Copy, Debug)]
struct Last {
    value: u64,
    began: Instant,
    ended: Instant,
}

async fn fail_safe_history(b: Backend) {
    let seeds: u64 = std::env::var("TIERKIT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    for seed in 0..seeds {
        let kit = b.kit().await;
        one_history(&kit, seed).await;
    }
}

async fn one_history(kit: &Tierkit, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let ttl = Duration::from_millis(rng.u64(40..120));
    let max = Duration::from_millis(rng.u64(40..200));
    let throttle = Duration::from_millis(rng.u64(5..60));
    let hard = Duration::from_millis(30);
    let ns = kit
        .namespace::<u64>(&format!("hist{seed}"))
        .ttl(ttl)
        .fail_safe(max)
        .fail_safe_throttle(throttle)
        .hard_timeout(hard)
        .build()
        .unwrap();
    // Milliseconds of slack for Redis's TTL granularity and two clocks (moka's and ours).
    let slack = Duration::from_millis(5);
    let keys = ["k0", "k1", "k2"];
    let mut model: [Option<Last>; 3] = [None; 3];
    let mut next = 1u64;
    let log = Arc::new(Mutex::new(Vec::new()));
    for step in 0..150 {
        let k = rng.usize(..keys.len());
        let op = match rng.u8(..100) {
            0..=24 => Op::LoadOk,
            25..=54 => Op::LoadFail,
            55..=59 => Op::LoadHang,
            60..=69 => Op::Set,
            70..=74 => Op::Invalidate,
            _ => Op::Sleep(rng.u64(1..80)),
        };
        log.lock()
            .unwrap()
            .push(format!("{step}: {op:?} {}", keys[k]));
        let began = Instant::now();
        let why = || {
            format!(
                "seed {seed} ttl {ttl:?} max {max:?} throttle {throttle:?}: {:?}",
                log.lock().unwrap()
            )
        };
        match op {
            Op::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Op::Set => {
                next += 1;
                ns.set(keys[k], next).await.unwrap();
                model[k] = Some(Last {
                    value: next,
                    began,
                    ended: Instant::now(),
                });
            }
            Op::Invalidate => {
                ns.invalidate(keys[k]).await.unwrap();
                model[k] = None;
            }
            Op::LoadOk | Op::LoadFail | Op::LoadHang => {
                next += 1;
                let value = next;
                let got = match op {
                    Op::LoadOk => {
                        ns.get_or_set(
                            keys[k],
                            move || async move { Ok::<_, std::io::Error>(value) },
                        )
                        .await
                    }
                    Op::LoadFail => {
                        ns.get_or_set(keys[k], || async { Err::<u64, _>(io_err()) })
                            .await
                    }
                    _ => {
                        ns.get_or_set(keys[k], || async {
                            std::future::pending::<()>().await;
                            Ok::<u64, std::io::Error>(0)
                        })
                        .await
                    }
                };
                let ended = Instant::now();
                match got {
                    Ok(hit) if hit.source() == Source::Loader => {
                        assert_eq!(*hit, value, "{}", why());
                        model[k] = Some(Last {
                            value,
                            began,
                            ended,
                        });
                    }
                    Ok(hit) if hit.source() == Source::Stale => {
                        let last = model[k].unwrap_or_else(|| {
                            panic!("a stale copy of an invalidated key: {}", why())
                        });
                        assert_eq!(
                            *hit,
                            last.value,
                            "a stale copy is the last value: {}",
                            why()
                        );
                        // Its life ended at the latest `ttl` after the call that made it did.
                        let past = began.saturating_duration_since(last.ended + ttl);
                        assert!(
                            past <= max + slack,
                            "served {past:?} past expiry: {}",
                            why()
                        );
                    }
                    Ok(hit) => {
                        let last = model[k]
                            .unwrap_or_else(|| panic!("a hit on an invalidated key: {}", why()));
                        assert_eq!(*hit, last.value, "{}", why());
                        // Fresh: within its life, which ended at the latest `ttl` after the call
                        // that made it did.
                        assert!(
                            began <= last.ended + ttl + slack,
                            "served past its life: {}",
                            why()
                        );
                    }
                    Err(e) => {
                        assert!(
                            matches!(e, Error::Loader(_) | Error::LoaderTimeout(_)),
                            "{e:?}"
                        );
                        assert!(!matches!(op, Op::LoadOk), "{}", why());
                        // An error only when no copy within the bound could be at hand: the
                        // last value's life had ended more than `max` before the call ended.
                        if let Some(last) = model[k] {
                            let past = ended.saturating_duration_since(last.began + ttl);
                            assert!(
                                past + slack >= max,
                                "an error with a copy {past:?} past expiry at hand: {}",
                                why()
                            );
                        }
                    }
                }
            }
        }
    }
}

async fn extreme_durations_never_panic(b: Backend) {
    let kit = b.kit().await;
    let ns = kit
        .namespace::<u64>("extreme")
        .ttl(Duration::from_millis(100))
        .fail_safe(Duration::from_secs(3600))
        .fail_safe_throttle(Duration::MAX)
        .hard_timeout(Duration::MAX)
        .build()
        .unwrap();
    ns.set("k", 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let opts = ReadOptions::new()
        .hard_timeout(Some(Duration::MAX))
        .soft_timeout(Some(Duration::MAX))
        .fail_safe(Some(Duration::MAX));
    let hit = ns
        .get_or_load("k", &opts, || async { Err::<Loaded<u64>, _>(io_err()) })
        .await
        .unwrap()
        .unwrap();
    assert_eq!((*hit, hit.source()), (1, Source::Stale));
    // Rested "for ever": the loader is not asked again.
    let db = Db::default();
    assert_eq!(
        ns.get_or_set("k", db.ok(2, Duration::ZERO))
            .await
            .unwrap()
            .source(),
        Source::Stale
    );
    assert_eq!(db.calls(), 0);
    let huge = ns
        .get_or_load("other", &opts, || async {
            Ok::<_, std::io::Error>(Loaded::value(3).ttl(Duration::MAX))
        })
        .await;
    assert!(matches!(huge, Err(Error::InvalidInput { .. })), "{huge:?}");
}

/// Redis hung and the database failing at once: the L1's expired copy still answers, both to
/// a load and to a plain read (which serves stale only while Redis cannot answer).
#[tokio::test]
async fn fail_safe_answers_while_redis_and_the_database_are_both_down() {
    let mut b = Backend::redis();
    let kit = b.kit().await;
    let ns = kit
        .namespace::<u64>("both-down")
        .ttl(Duration::from_millis(200))
        .fail_safe(Duration::from_secs(30))
        .hard_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    ns.get_or_set("k", || async { Ok::<u64, std::io::Error>(1) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    b.server_mut().unwrap().hang();
    let hit = ns
        .get_or_set("k", || async { Err::<u64, _>(io_err()) })
        .await
        .unwrap();
    assert_eq!((*hit, hit.source()), (1, Source::Stale));
    let read = ns
        .get("k")
        .await
        .expect("a plain read serves stale while Redis is down");
    assert_eq!(read.source(), Source::Stale);
    // Within the throttle even a hung loader is not asked: the copy answers at once.
    let hit = ns
        .get_or_load("k", &ReadOptions::new(), || async {
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(Loaded::value(2))
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hit.source(), Source::Stale);
    b.server_mut().unwrap().resume();
    let fresh = eventually(Duration::from_secs(10), || async {
        ns.get_or_set("k", || async { Ok::<u64, std::io::Error>(3) })
            .await
            .is_ok_and(|h| *h == 3)
    })
    .await;
    assert!(
        fresh.is_some(),
        "a good load after the outage ends the stale answers"
    );
}

/// With `single_flight`, a caller holding a stale copy does not wait past its soft timeout for
/// the instance that holds the lease: that instance's value reaches Redis, and it is read from
/// there next.
#[tokio::test]
async fn a_load_on_another_instance_is_waited_for_within_the_soft_timeout() {
    let b = Backend::redis();
    let declare = |kit: &Tierkit| {
        kit.namespace::<u64>("leased")
            .ttl(Duration::from_millis(200))
            .fail_safe(Duration::from_secs(30))
            .soft_timeout(Duration::from_millis(50))
            .single_flight(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let (kit_a, kit_b) = (b.kit().await, b.kit().await);
    let (a, on_b) = (declare(&kit_a), declare(&kit_b));
    a.set("k", 1).await.unwrap();
    assert_eq!(*on_b.get("k").await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // A takes the lease and loads for 800 ms (answering its caller stale at 50 ms).
    let db_a = Db::default();
    let hit = a
        .get_or_set("k", db_a.ok(2, Duration::from_millis(800)))
        .await
        .unwrap();
    assert_eq!(hit.source(), Source::Stale);
    // B finds the lease taken and answers from its stale copy at its own soft timeout.
    let db_b = Db::default();
    let started = Instant::now();
    let hit = on_b
        .get_or_set("k", db_b.ok(9, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!((*hit, hit.source()), (1, Source::Stale));
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(db_b.calls(), 0, "B left the load to the lease holder");
    let seen = eventually(Duration::from_secs(5), || async {
        on_b.get_or_set("k", db_b.ok(9, Duration::ZERO))
            .await
            .is_ok_and(|h| *h == 2)
    })
    .await;
    assert!(seen.is_some(), "A's value reached B through Redis");
    assert_eq!((db_a.calls(), db_b.calls()), (1, 0));
}

// ---- Server-assisted coherence ------------------------------------------------------------

/// Runs `redis-cli` against `server`, as an operator or another program would.
fn redis_cli(server: &support::RedisServer, args: &[&str]) {
    let status = std::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string()])
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("redis-cli runs");
    assert!(status.success());
}

/// With client tracking, a write made with plain `redis-cli` evicts every instance's L1 copy;
/// without it, only tierkit's own writes do (through the backplane), and the copy stays.
#[tokio::test]
async fn client_tracking_evicts_l1_copies_on_a_write_by_redis_cli() {
    let b = Backend::redis();
    let server = b.server().unwrap();
    let tracked = b.kit_with(b.builder().client_tracking(true)).await;
    let plain = b.kit().await;
    let on_tracked = tracked.namespace::<u64>("ext").build().unwrap();
    let on_plain = plain.namespace::<u64>("ext").build().unwrap();
    on_plain.set("k", 1).await.unwrap();
    // Both instances hold an L1 copy.
    assert_eq!(on_tracked.get("k").await.unwrap().source(), Source::L2);
    assert_eq!(on_tracked.get("k").await.unwrap().source(), Source::L1);
    assert_eq!(on_plain.get("k").await.unwrap().source(), Source::L1);
    let redis_key = on_plain.redis_key("k");
    let started = Instant::now();
    redis_cli(server, &["SET", &redis_key, "written by another program"]);
    let took = eventually(Duration::from_secs(5), || async {
        on_tracked.get("k").await.is_none()
    })
    .await
    .expect("the tracked instance dropped its copy");
    eprintln!("client tracking: L1 copy dropped {:?} after redis-cli SET (polled every 10 ms; {:?} in all)", took, started.elapsed());
    assert_eq!(
        on_plain.get("k").await.map(|h| *h),
        Some(1),
        "the backplane alone hears nothing"
    );
    // A tierkit write still reaches both, as before.
    on_plain.set("k", 2).await.unwrap();
    let seen = eventually(Duration::from_secs(5), || async {
        on_tracked.get("k").await.is_some_and(|h| *h == 2)
    })
    .await;
    assert!(seen.is_some());
    // FLUSHALL drops every copy.
    assert_eq!(on_tracked.get("k").await.unwrap().source(), Source::L1);
    redis_cli(server, &["FLUSHALL"]);
    let gone = eventually(Duration::from_secs(5), || async {
        on_tracked.get("k").await.is_none()
    })
    .await;
    assert!(gone.is_some(), "a flush drops every tracked copy");
    // A cluster cannot be tracked by one connection: refused by name.
    let refused = tierkit::Config::builder()
        .redis_cluster(["127.0.0.1:7000", "127.0.0.1:7001"])
        .client_tracking(true)
        .build();
    assert!(matches!(refused, Err(Error::Config { field, .. }) if field == "client_tracking"));
}

/// Embedded mode needs no tokio runtime, timeouts and eager refresh included: without one
/// there is no timer and no background, so a load simply runs to its end.
#[test]
fn an_embedded_namespace_with_timeouts_runs_without_a_runtime() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let kit = Tierkit::embedded();
    let ns = kit
        .namespace::<u64>("no-runtime")
        .fail_safe(Duration::from_secs(60))
        .soft_timeout(Duration::from_millis(10))
        .hard_timeout(Duration::from_millis(100))
        .eager_refresh(EagerRefresh::after(0.01))
        .build()
        .unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    for expected in [Source::Loader, Source::L1] {
        let call = std::pin::pin!(ns.get_or_set("k", || async { Ok::<u64, std::io::Error>(1) }));
        match call.poll(&mut cx) {
            Poll::Ready(hit) => assert_eq!(hit.unwrap().source(), expected),
            Poll::Pending => panic!("an embedded load of a ready loader completes at once"),
        }
    }
}
