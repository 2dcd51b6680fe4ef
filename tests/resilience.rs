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
use std::sync::Arc;
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
        an_answer_kept_nowhere_retires_the_copies_it_replaces,
        a_tagged_entry_stays_trusted_through_its_grace,
        an_l2_only_refresh_keeps_readers_off_its_load,
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
            .hard_timeout(Duration::from_secs(10))
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
        .hard_timeout(Duration::from_secs(5))
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
        .hard_timeout(Duration::from_secs(5))
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
        .hard_timeout(Duration::from_secs(3600))
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
    // Background work must end: a soft timeout or an eager refresh needs a hard timeout, in
    // the namespace and in a call's options alike.
    named(
        kit.namespace::<u64>("b8")
            .fail_safe(Duration::from_secs(1))
            .soft_timeout(Duration::from_millis(5))
            .build(),
        "soft_timeout",
    );
    named(
        kit.namespace::<u64>("b9")
            .eager_refresh(EagerRefresh::after(0.5))
            .build(),
        "eager_refresh",
    );
    let soft = kit
        .namespace::<u64>("b10")
        .fail_safe(Duration::from_secs(1))
        .soft_timeout(Duration::from_millis(5))
        .hard_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let unbounded = ReadOptions::new().hard_timeout(None);
    let bad = soft
        .get_or_load("k", &unbounded, || async {
            Ok::<_, std::io::Error>(Loaded::value(1))
        })
        .await;
    match bad {
        Err(Error::InvalidInput { what, .. }) => assert_eq!(what, "soft_timeout"),
        other => panic!("expected an input error on soft_timeout, got {other:?}"),
    }
    assert!(soft.get("k").await.is_none());
}

/// A loader's answer kept nowhere (`uncached`, or a "not found" with no negative TTL) is newer
/// than the copies it replaces: neither this instance nor another serves them stale after it.
async fn an_answer_kept_nowhere_retires_the_copies_it_replaces(b: Backend) {
    let here = b.kit().await;
    // Embedded, there is no other instance to hold a copy.
    let there = if b.is_embedded() {
        here.clone()
    } else {
        b.kit().await
    };
    let declare = |kit: &Tierkit| {
        kit.namespace::<u64>("kept-nowhere")
            .ttl(Duration::from_millis(100))
            .fail_safe(Duration::from_secs(30))
            .build()
            .unwrap()
    };
    let (ns, other) = (declare(&here), declare(&there));
    let answers: [fn() -> Loaded<u64>; 2] =
        [|| Loaded::value(2).uncached(), Loaded::<u64>::not_found];
    for (i, answer) in answers.into_iter().enumerate() {
        let key = format!("k{i}");
        let db = Db::default();
        ns.get_or_set(&key, db.ok(1, Duration::ZERO)).await.unwrap();
        // The other instance holds a copy too.
        assert_eq!(other.get(&key).await.map(|h| *h), Some(1));
        tokio::time::sleep(Duration::from_millis(150)).await;
        let opts = ReadOptions::new();
        let fresh = ns
            .get_or_load(&key, &opts, move || async move {
                Ok::<_, std::io::Error>(answer())
            })
            .await
            .unwrap();
        assert_eq!(
            fresh.map(|h| (*h, h.source())),
            (i == 0).then_some((2, Source::Loader))
        );
        for (who, ns) in [("here", &ns), ("there", &other)] {
            let failed = ns.get_or_set(&key, db.failing()).await;
            assert!(
                matches!(failed, Err(Error::Loader(_))),
                "{who}: {failed:?} after {:?}",
                if i == 0 { "uncached" } else { "not found" }
            );
        }
    }
}

/// A tag's epoch lives as long as Redis keeps the entries framed under it, fail-safe's grace
/// included: an expired tagged entry is still served stale from Redis.
async fn a_tagged_entry_stays_trusted_through_its_grace(b: Backend) {
    let kit = b.kit().await;
    let ns = kit
        .namespace::<u64>("tagged-grace")
        .ttl(Duration::from_millis(100))
        .fail_safe(Duration::from_secs(30))
        .tiers(Tiers::L2Only)
        .build()
        .unwrap();
    let tagged = tierkit::cache::SetOptions::new().tag("t");
    ns.set_with("k", 1, tagged).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hit = ns.get_or_set("k", Db::default().failing()).await.unwrap();
    assert_eq!((*hit, hit.source()), (1, Source::Stale));
}

/// An eager refresh of an L2-only namespace keeps no caller waiting: they read Redis, whose
/// entry is still fresh, while the refresh loads.
async fn an_l2_only_refresh_keeps_readers_off_its_load(b: Backend) {
    let kit = b.kit().await;
    let ns = kit
        .namespace::<u64>("l2-refresh")
        .ttl(Duration::from_millis(400))
        .eager_refresh(EagerRefresh::after(0.25))
        .hard_timeout(Duration::from_secs(5))
        .tiers(Tiers::L2Only)
        .build()
        .unwrap();
    let db = Db::default();
    ns.get_or_set("k", db.ok(1, Duration::ZERO)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Due: this read starts the refresh, a load of 2 s.
    let hit = ns
        .get_or_set("k", db.ok(2, Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(*hit, 1);
    eventually(Duration::from_secs(2), || async { db.calls() == 2 })
        .await
        .expect("the refresh started");
    // Readers meanwhile get the current value, not a seat behind the refresh.
    for _ in 0..3 {
        let hit = ns.get_or_set("k", db.failing()).await.unwrap();
        assert_eq!(*hit, 1);
    }
    assert_eq!(db.calls(), 2);
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

/// Which instance a change is made on: the one that loads, or another one sharing its Redis
/// (whose change reaches the first through Redis and the backplane).
#[derive(Clone, Copy, Debug)]
enum On {
    Here,
    There,
}

#[derive(Clone, Copy, Debug)]
enum Change {
    /// A write; tagged `all` when `true`.
    Set(bool, On),
    Invalidate(On),
    /// Invalidates the tag every tagged value carries.
    InvalidateTag(On),
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// A load that answers a value (tagged `all` when `true`).
    LoadOk(bool),
    LoadFail,
    LoadHang,
    /// A load whose loader fails only once `Change` has landed (on every instance).
    FailDuring(Change),
    Change(Change),
    Sleep(u64),
}

/// What the model knows of a key: its last value, whether it is tagged, and when the call that
/// made it began and ended (the entry's life started in between).
#[derive(Clone, Copy, Debug)]
struct Last {
    value: u64,
    tagged: bool,
    began: Instant,
    ended: Instant,
}

async fn fail_safe_history(b: Backend) {
    let var = |name| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    // `TIERKIT_SEED=n` replays the one seed a failure names.
    let seeds = match var("TIERKIT_SEED") {
        Some(seed) => seed..seed + 1,
        None => 0..var("TIERKIT_SEEDS").unwrap_or(3),
    };
    for seed in seeds {
        let here = b.kit().await;
        // Embedded, there is no other instance: "there" is here.
        let there = if b.is_embedded() {
            here.clone()
        } else {
            b.kit().await
        };
        History::new(&here, &there, seed, !b.is_embedded())
            .run()
            .await;
    }
}

/// One randomized history of loads (good, failing, hung, failing while a change lands) and
/// changes on two instances, checked against a model of each key's last value.
struct History {
    seed: u64,
    rng: fastrand::Rng,
    ttl: Duration,
    max: Duration,
    /// The loading instance's namespace, and the other instance's.
    here: tierkit::cache::Namespace<u64>,
    there: tierkit::cache::Namespace<u64>,
    /// Namespaces whose invalidation of [`PROBE`] tells that the other instance's changes
    /// have landed here: the backplane delivers them in order.
    probes: [tierkit::cache::Namespace<u64>; 2],
    two: bool,
    l2_only: bool,
    model: [Option<Last>; 3],
    next: u64,
    /// Redis calls that failed or were skipped before the op at hand began: one that meets
    /// any has no Redis copy at hand in an L2-only namespace, so its error is fair.
    trouble: u64,
    log: Vec<String>,
}

/// One hash tag: in a cluster, every key (and the probe, and the tag's epoch) is on one node,
/// whose messages reach the other instance in the order they were sent.
const KEYS: [&str; 3] = ["{s}k0", "{s}k1", "{s}k2"];
const PROBE: &str = "{s}probe";
const TAG: &str = "{s}all";
/// Milliseconds of slack for Redis's TTL granularity and two clocks (moka's and ours).
const SLACK: Duration = Duration::from_millis(5);

impl History {
    fn new(here: &Tierkit, there: &Tierkit, seed: u64, two: bool) -> History {
        let mut rng = fastrand::Rng::with_seed(seed);
        let ttl = Duration::from_millis(rng.u64(40..120));
        let max = Duration::from_millis(rng.u64(40..200));
        let throttle = Duration::from_millis(rng.u64(5..60));
        let tiers = if rng.bool() {
            Tiers::Both
        } else {
            Tiers::L2Only
        };
        // Some seeds answer stale at a soft timeout, and load on in the background.
        let soft = rng.bool().then(|| Duration::from_millis(rng.u64(2..20)));
        let declare = |kit: &Tierkit| {
            let ns = kit
                .namespace::<u64>(format!("hist{seed}"))
                .ttl(ttl)
                .fail_safe(max)
                .fail_safe_throttle(throttle)
                .hard_timeout(Duration::from_millis(30));
            let ns = match soft {
                Some(soft) => ns.soft_timeout(soft),
                None => ns,
            };
            ns.tiers(tiers).build().unwrap()
        };
        let probe = |kit: &Tierkit| {
            kit.namespace::<u64>(format!("probe{seed}"))
                .build()
                .unwrap()
        };
        let mut log = Vec::new();
        log.push(format!(
            "seed {seed} ttl {ttl:?} max {max:?} throttle {throttle:?} soft {soft:?} {tiers:?}"
        ));
        History {
            seed,
            rng,
            ttl,
            max,
            here: declare(here),
            there: declare(there),
            probes: [probe(here), probe(there)],
            two,
            l2_only: tiers == Tiers::L2Only,
            model: [None; 3],
            next: 1,
            trouble: 0,
            log,
        }
    }

    fn why(&self) -> String {
        format!("{:#?}", self.log)
    }

    fn change(&mut self) -> Change {
        let on = if self.rng.bool() { On::Here } else { On::There };
        match self.rng.u8(..10) {
            0..=5 => Change::Set(self.rng.bool(), on),
            6..=8 => Change::Invalidate(on),
            _ => Change::InvalidateTag(on),
        }
    }

    async fn run(mut self) {
        for step in 0..150 {
            let k = self.rng.usize(..KEYS.len());
            let op = match self.rng.u8(..100) {
                0..=19 => Op::LoadOk(self.rng.bool()),
                20..=44 => Op::LoadFail,
                45..=49 => Op::LoadHang,
                50..=64 => Op::FailDuring(self.change()),
                65..=79 => Op::Change(self.change()),
                _ => Op::Sleep(self.rng.u64(1..80)),
            };
            self.log.push(format!("{step}: {op:?} {}", KEYS[k]));
            let began = Instant::now();
            self.trouble = self.redis_trouble();
            match op {
                Op::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Op::Change(change) => self.apply(k, change).await,
                Op::LoadOk(tagged) => {
                    // An L2-only namespace caches no load under a tag it has not seen yet
                    // (see the README): the model would count it cached.
                    let tagged = tagged && !self.l2_only;
                    self.next += 1;
                    let value = self.next;
                    let got = self
                        .here
                        .get_or_load(KEYS[k], &ReadOptions::new(), move || async move {
                            let loaded = Loaded::value(value);
                            Ok::<_, std::io::Error>(if tagged { loaded.tag(TAG) } else { loaded })
                        })
                        .await;
                    let ended = Instant::now();
                    if let Ok(Some(hit)) = &got {
                        if hit.source() == Source::Loader {
                            assert_eq!(**hit, value, "{}", self.why());
                            self.model[k] = Some(Last {
                                value,
                                tagged,
                                began,
                                ended,
                            });
                        }
                    }
                    self.check(k, op, began, ended, got, true);
                }
                Op::LoadFail | Op::LoadHang => {
                    let hang = matches!(op, Op::LoadHang);
                    let got = self
                        .here
                        .get_or_load(KEYS[k], &ReadOptions::new(), move || async move {
                            if hang {
                                std::future::pending::<()>().await;
                            }
                            Err::<Loaded<u64>, _>(io_err())
                        })
                        .await;
                    self.check(k, op, began, Instant::now(), got, true);
                }
                Op::FailDuring(change) => self.fail_during(k, change, began).await,
            }
            let trouble = self.redis_trouble() - self.trouble;
            if trouble > 0 {
                self.log
                    .push(format!("   {trouble} Redis call(s) failed or skipped"));
            }
        }
    }

    /// A load whose loader waits for `change` to land everywhere, then fails.
    async fn fail_during(&mut self, k: usize, change: Change, began: Instant) {
        let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let ns = self.here.clone();
        // Long enough for the change to land: the namespace's 30 ms would end the load first.
        let opts = ReadOptions::new().hard_timeout(Some(Duration::from_secs(10)));
        let call = tokio::spawn(async move {
            let got = ns
                .get_or_load(KEYS[k], &opts, move || async move {
                    let _ = entered_tx.send(());
                    let _ = released.await;
                    Err::<Loaded<u64>, _>(io_err())
                })
                .await;
            (got, Instant::now())
        });
        // Answered without the loader (a fresh copy, or a resting loader's stale one), the
        // call ends and drops the loader unrun.
        if entered.await.is_err() {
            let (got, ended) = call.await.unwrap();
            self.check(k, Op::LoadFail, began, ended, got, true);
            return;
        }
        let before = self.model[k];
        self.apply(k, change).await;
        let changed = Instant::now();
        let _ = release.send(());
        let (got, ended) = call.await.unwrap();
        let op = Op::FailDuring(change);
        self.log.push(format!(
            "   {:?}",
            got.as_ref().map(|h| h.as_ref().map(|h| (**h, h.source())))
        ));
        // The copy at hand was replaced: an error is a fair answer now, a stale copy of what
        // the change replaced is not, unless the call was answered (at its soft timeout)
        // while the change was still being made.
        let after = self.verdict(self.model[k], op, began, ended, &got, false);
        if let Err(why) = after {
            let concurrent = ended < changed;
            if !concurrent || self.verdict(before, op, began, ended, &got, false).is_err() {
                panic!("seed {}: {why}: {got:?} {}", self.seed, self.why());
            }
        }
    }

    /// Makes `change` of key `k`, and waits until it has landed on this instance too.
    async fn apply(&mut self, k: usize, change: Change) {
        let began = Instant::now();
        let on = match change {
            Change::Set(_, on) | Change::Invalidate(on) | Change::InvalidateTag(on) => on,
        };
        let ns = match on {
            On::Here => &self.here,
            On::There => &self.there,
        };
        match change {
            Change::Set(tagged, _) => {
                self.next += 1;
                let opts = if tagged {
                    tierkit::cache::SetOptions::new().tag(TAG)
                } else {
                    tierkit::cache::SetOptions::new()
                };
                ns.set_with(KEYS[k], self.next, opts).await.unwrap();
                self.model[k] = Some(Last {
                    value: self.next,
                    tagged,
                    began,
                    ended: Instant::now(),
                });
            }
            Change::Invalidate(_) => {
                ns.invalidate(KEYS[k]).await.unwrap();
                self.model[k] = None;
            }
            Change::InvalidateTag(_) => {
                ns.invalidate_tag(TAG).await.unwrap();
                for last in &mut self.model {
                    if last.is_some_and(|l| l.tagged) {
                        *last = None;
                    }
                }
            }
        }
        if matches!(on, On::There) && self.two {
            // A message sent after the change arrives after it.
            self.next += 1;
            self.probes[0].set(PROBE, self.next).await.unwrap();
            self.probes[1].invalidate(PROBE).await.unwrap();
            let landed = eventually(Duration::from_secs(10), || async {
                self.probes[0].get(PROBE).await.is_none()
            })
            .await;
            assert!(landed.is_some(), "the backplane delivers: {}", self.why());
        }
    }

    /// This instance's Redis calls that failed or were skipped so far.
    fn redis_trouble(&self) -> u64 {
        let s = self.here.stats();
        s.l2_errors + s.l2_skipped
    }

    /// Checks a load's answer against the model's last value of the key.
    fn check(
        &mut self,
        k: usize,
        op: Op,
        began: Instant,
        ended: Instant,
        got: tierkit::Result<Option<tierkit::cache::Hit<u64>>>,
        strict: bool,
    ) {
        let strict = strict && self.redis_trouble() == self.trouble;
        self.log.push(format!(
            "   {:?}",
            got.as_ref().map(|h| h.as_ref().map(|h| (**h, h.source())))
        ));
        if let Err(why) = self.verdict(self.model[k], op, began, ended, &got, strict) {
            panic!("seed {}: {why}: {got:?} {}", self.seed, self.why());
        }
    }

    /// Whether a load's answer is right when `last` is the key's last value. `strict`: an
    /// error only when no copy within the bound could have been at hand.
    fn verdict(
        &self,
        last: Option<Last>,
        op: Op,
        began: Instant,
        ended: Instant,
        got: &tierkit::Result<Option<tierkit::cache::Hit<u64>>>,
        strict: bool,
    ) -> Result<(), String> {
        let (ttl, max) = (self.ttl, self.max);
        match got {
            Ok(None) => Err("no \"not found\" was loaded".into()),
            Ok(Some(hit)) if hit.source() == Source::Loader => match op {
                Op::LoadOk(_) => Ok(()),
                _ => Err("a failing loader's answer".into()),
            },
            Ok(Some(hit)) => {
                let Some(last) = last else {
                    return Err("a copy of an invalidated key".into());
                };
                if **hit != last.value {
                    return Err(format!("not the last value {}", last.value));
                }
                if hit.source() == Source::Stale {
                    // Its life ended at the latest `ttl` after the call that made it did.
                    let past = began.saturating_duration_since(last.ended + ttl);
                    if past > max + SLACK {
                        return Err(format!("served {past:?} past expiry"));
                    }
                } else if began > last.ended + ttl + SLACK {
                    return Err("a fresh answer past its life".into());
                }
                Ok(())
            }
            Err(e) => {
                if !matches!(e, Error::Loader(_) | Error::LoaderTimeout(_)) {
                    return Err(format!("an unexpected error {e:?}"));
                }
                // A good loader can meet an error too: a call that joins a load in flight
                // (one a soft timeout sent to the background) shares its outcome.
                // The last value's life had ended more than `max` before the call ended.
                if let (Some(last), true) = (last, strict) {
                    let past = ended.saturating_duration_since(last.began + ttl);
                    if past + SLACK < max {
                        return Err(format!("an error with a copy {past:?} past expiry at hand"));
                    }
                }
                Ok(())
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
        .soft_timeout(Some(Duration::MAX - Duration::from_nanos(1)))
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
            .hard_timeout(Duration::from_secs(10))
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

/// With `single_flight`, a `get_or_set` that waits on another instance's lease and finds that
/// load answered "not found" loads a value itself: it asked for one.
#[tokio::test]
async fn a_lease_wait_that_meets_a_not_found_loads_a_value() {
    let b = Backend::redis();
    let declare = |kit: &Tierkit| {
        kit.namespace::<u64>("leased-negative")
            .negative_ttl(Duration::from_secs(30))
            .single_flight(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let (kit_a, kit_b) = (b.kit().await, b.kit().await);
    let (a, on_b) = (declare(&kit_a), declare(&kit_b));
    let slow_not_found = a.clone();
    let first = tokio::spawn(async move {
        slow_not_found
            .get_or_load("k", &ReadOptions::new(), || async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, std::io::Error>(Loaded::<u64>::not_found())
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let db = Db::default();
    let hit = on_b
        .get_or_set("k", db.ok(7, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!((*hit, hit.source()), (7, Source::Loader));
    assert!(first.await.unwrap().unwrap().is_none());
}
