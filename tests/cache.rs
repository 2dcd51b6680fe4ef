//! The two-tier cache. The behaviour every backend shares is written once, as plain
//! `async fn x(b: Backend)` bodies that `per_backend!` runs against the embedded (L1-only)
//! cache, a real redis-server and the shared cluster. The Redis-only behaviour (L2, versioning,
//! coherence, degradation) follows as plain tests on [`Backend::redis`]. Every instance is
//! made ready by the one rule of `support::ready` (Redis `Up`, backplane subscribed).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use support::{eventually, ready, Backend, RedisServer, TcpProxy};
use tierkit::cache::{Reach, SetOptions, Source};
use tierkit::health::HealthState;
use tierkit::{Config, Error, Tierkit};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Event {
    id: u64,
    title: String,
}

fn event(id: u64) -> Event {
    Event {
        id,
        title: format!("event {id}"),
    }
}

fn loader_ok(v: Event) -> impl FnOnce() -> std::future::Ready<Result<Event, std::io::Error>> {
    move || std::future::ready(Ok(v))
}

/// The server of a [`Backend::redis`], to stop, hang or restart.
fn redis_of(backend: &mut Backend) -> &mut RedisServer {
    backend.server_mut().expect("a Redis backend")
}

// ---- Every backend ----------------------------------------------------------------------

/// The generated `embedded`, `redis` and `cluster` modules live here, clear of the `redis`
/// crate.
mod every_backend {
    use super::*;

    crate::support::per_backend!([embedded, redis, cluster] [
        get_or_set_fills_then_hits_l1,
        set_get_invalidate,
        many_at_once,
        tags_patterns_and_clear,
        thousand_concurrent_callers_one_loader_call,
        loader_error_reaches_every_waiter_and_is_not_cached,
        warming_loads_with_bounded_concurrency_and_skips_what_is_there,
        l1_is_bounded_in_bytes,
        bad_input_is_a_clear_error_and_touches_nothing,
        unrelated_writes_do_not_discard_a_load,
    ]);
}

async fn get_or_set_fills_then_hits_l1(b: Backend) {
    let kit = b.kit().await;
    let events = kit.namespace::<Event>("events").build().unwrap();
    let hit = events.get_or_set("1", loader_ok(event(1))).await.unwrap();
    assert_eq!(hit.source(), Source::Loader);
    assert_eq!(*hit, event(1));
    let again = events
        .get_or_set("1", || async {
            Err::<Event, _>(std::io::Error::other("not called"))
        })
        .await
        .unwrap();
    assert_eq!(again.source(), Source::L1);
    let s = events.stats();
    assert_eq!((s.l1_hits, s.misses, s.loader_calls), (1, 1, 1));
    assert!((s.hit_ratio() - 0.5).abs() < 1e-9);
}

async fn set_get_invalidate(b: Backend) {
    let kit = b.kit().await;
    let events = kit.namespace::<Event>("events").build().unwrap();
    assert!(events.get("1").await.is_none());
    assert_eq!(events.set("1", event(1)).await.unwrap(), Reach::AllTiers);
    let hit = events.get("1").await.unwrap();
    assert_eq!((hit.source(), &*hit), (Source::L1, &event(1)));
    events.set("1", event(11)).await.unwrap();
    assert_eq!(*events.get("1").await.unwrap(), event(11));
    events.invalidate("1").await.unwrap();
    assert!(events.get("1").await.is_none());
    assert_eq!(events.stats().misses, 2);
}

async fn many_at_once(b: Backend) {
    let kit = b.kit().await;
    let events = kit.namespace::<Event>("events").build().unwrap();
    events
        .set_many((0..10).map(|i| (i.to_string(), event(i))))
        .await
        .unwrap();
    let keys: Vec<String> = (0..12).map(|i| i.to_string()).collect();
    let got = events.get_many(&keys).await;
    assert_eq!(got.len(), 12);
    for (i, hit) in got.iter().enumerate() {
        match hit {
            Some(hit) => assert_eq!(**hit, event(i as u64)),
            None => assert!(i >= 10, "key {i} missing"),
        }
    }
}

async fn tags_patterns_and_clear(b: Backend) {
    let kit = b.kit().await;
    let events = kit.namespace::<Event>("events").build().unwrap();
    let other = kit.namespace::<Event>("other").build().unwrap();
    for i in 0..6u64 {
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        events
            .set_with(&format!("user:{i}"), event(i), SetOptions::new().tag(tag))
            .await
            .unwrap();
        other.set(&format!("user:{i}"), event(i)).await.unwrap();
    }
    events.set("user:*", event(100)).await.unwrap();
    events.set("team:1", event(200)).await.unwrap();

    events.invalidate_tag("even").await.unwrap();
    for i in 0..6u64 {
        let present = events.get(&format!("user:{i}")).await.is_some();
        assert_eq!(present, i % 2 == 1, "user:{i}");
    }

    // An escaped star matches only the literal key "user:*".
    events.invalidate_pattern(r"user:\*").await.unwrap();
    assert!(events.get("user:*").await.is_none());
    assert!(events.get("user:1").await.is_some());

    // Brackets are literal: no character class reaches user:1.
    events.invalidate_pattern("user:[1]").await.unwrap();
    assert!(events.get("user:1").await.is_some());

    events.invalidate_pattern("user:?").await.unwrap();
    assert!(events.get("user:1").await.is_none());
    assert!(events.get("team:1").await.is_some());
    // The other namespace is untouched.
    assert!(other.get("user:1").await.is_some());

    events.clear().await.unwrap();
    assert!(events.get("team:1").await.is_none());
    assert!(other.get("user:3").await.is_some());
}

async fn thousand_concurrent_callers_one_loader_call(b: Backend) {
    let kit = b.kit().await;
    let events = kit.namespace::<Event>("events").build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let events = events.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                events
                    .get_or_set("cold", || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, std::io::Error>(event(7))
                    })
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(*t.await.unwrap().unwrap(), event(7));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(events.stats().loader_calls, 1);
}

async fn loader_error_reaches_every_waiter_and_is_not_cached(b: Backend) {
    let kit = b.kit().await;
    let events = kit.namespace::<Event>("events").build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let events = events.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                events
                    .get_or_set("bad", || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err::<Event, _>(std::io::Error::other("db down"))
                    })
                    .await
            })
        })
        .collect();
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::Loader(_)), "{err:?}");
        assert!(err.to_string().contains("db down"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let hit = events.get_or_set("bad", loader_ok(event(8))).await.unwrap();
    assert_eq!(hit.source(), Source::Loader);
    assert_eq!(events.stats().loader_errors, 1);
}

async fn warming_loads_with_bounded_concurrency_and_skips_what_is_there(b: Backend) {
    let kit = b.kit().await;
    let events = kit.namespace::<Event>("events").build().unwrap();
    events.set("7", event(7)).await.unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let reports = std::sync::Mutex::new(Vec::new());
    let loader = |k: String| {
        let (running, peak) = (running.clone(), peak.clone());
        async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
            running.fetch_sub(1, Ordering::SeqCst);
            match k.parse::<u64>() {
                Ok(13) => Err(std::io::Error::other("no such event")),
                Ok(id) => Ok(event(id)),
                Err(e) => Err(std::io::Error::other(e)),
            }
        }
    };
    let keys: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    let done = events
        .warm(keys.clone(), 4, loader, |p| reports.lock().unwrap().push(p))
        .await
        .unwrap();
    assert_eq!(
        (done.total, done.loaded, done.skipped, done.failed),
        (100, 98, 1, 1)
    );
    assert!(
        peak.load(Ordering::SeqCst) <= 4,
        "{}",
        peak.load(Ordering::SeqCst)
    );
    let reports = reports.into_inner().unwrap();
    assert_eq!(reports.len(), 100);
    assert_eq!(reports.last().copied(), Some(done));
    assert_eq!(*events.get("42").await.unwrap(), event(42));
    // A second pass finds everything in place but the one that failed.
    let again = events
        .warm(
            keys,
            4,
            |k| async move { Ok::<_, std::io::Error>(event(k.parse().unwrap_or(0))) },
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!((again.skipped, again.loaded), (99, 1));
    assert!(events
        .warm(
            ["x"],
            0,
            |_| async { Ok::<_, std::io::Error>(event(0)) },
            |_| {}
        )
        .await
        .is_err());
}

async fn l1_is_bounded_in_bytes(b: Backend) {
    let kit = b
        .kit_with(b.builder().l1_capacity(256 * 1024).l1_eviction_counts(true))
        .await;
    let blobs = kit.namespace::<Vec<u64>>("blobs").build().unwrap();
    // Random numbers do not compress: each entry weighs about 8 KiB.
    for i in 0..200u64 {
        let v: Vec<u64> = (0..1024).map(|_| fastrand::u64(..)).collect();
        blobs.set(&i.to_string(), v).await.unwrap();
    }
    let info = kit.cache_info().await;
    assert!(info.l1_bytes <= 256 * 1024, "{}", info.l1_bytes);
    assert!(info.l1_entries < 40, "{}", info.l1_entries);
    assert!(info.total.evictions > 100, "{:?}", info.total);

    // Without eviction counts (the default) the bound holds the same; only the count is gone.
    let uncounted = b.kit_with(b.builder().l1_capacity(256 * 1024)).await;
    let blobs = uncounted.namespace::<Vec<u64>>("blobs").build().unwrap();
    for i in 0..200u64 {
        let v: Vec<u64> = (0..1024).map(|_| fastrand::u64(..)).collect();
        blobs.set(&i.to_string(), v).await.unwrap();
    }
    let info = uncounted.cache_info().await;
    assert!(info.l1_bytes <= 256 * 1024, "{}", info.l1_bytes);
    assert_eq!(info.total.evictions, 0);
}

async fn bad_input_is_a_clear_error_and_touches_nothing(b: Backend) {
    let kit = b.kit().await;
    for (name, field) in [("", "namespace"), ("a:b", "namespace"), ("a*", "namespace")] {
        match kit.namespace::<Event>(name).build().unwrap_err() {
            Error::Config { field: got, .. } => assert_eq!(got, field),
            other => panic!("{other:?}"),
        }
    }
    let err = kit
        .namespace::<Event>("e")
        .l1_ttl(Duration::from_secs(7200))
        .build();
    assert!(err.unwrap_err().to_string().contains("l1_ttl"));
    let err = kit.namespace::<Event>("e").jitter(1.5).build();
    assert!(err.unwrap_err().to_string().contains("jitter"));

    let events = kit.namespace::<Event>("events").build().unwrap();
    // Same name, other type: refused rather than reading one type as another.
    assert!(kit.namespace::<String>("events").build().is_err());
    let err = events
        .set_with("k", event(1), SetOptions::new().ttl(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput { what, .. } if what == "ttl"),
        "{err:?}"
    );
    assert!(matches!(
        events.invalidate_pattern("oops\\").await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        events.invalidate_tag("").await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(events.get("k").await.is_none());

    let small = b
        .kit_with(
            b.builder().codec(
                tierkit::Codec::builder()
                    .max_value_size(64)
                    .build()
                    .unwrap(),
            ),
        )
        .await;
    let big = small.namespace::<String>("big").build().unwrap();
    let err = big.set("k", "x".repeat(1000)).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    assert!(big.get("k").await.is_none());
}

async fn unrelated_writes_do_not_discard_a_load(b: Backend) {
    let kit = b.kit().await;
    let events = kit.namespace::<Event>("events").build().unwrap();
    let loading = tokio::spawn({
        let events = events.clone();
        async move {
            events
                .get_or_set("a", || async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, std::io::Error>(event(1))
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    events.set("b", event(2)).await.unwrap();
    loading.await.unwrap().unwrap();
    assert_eq!(events.get("a").await.unwrap().source(), Source::L1);
}

// ---- Redis only -------------------------------------------------------------------------

async fn command_calls(server: &RedisServer, command: &str) -> u64 {
    let mut c = server.async_connection().await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn write_through_reaches_redis_and_l2_answers_a_cold_instance() {
    let backend = Backend::redis();
    let kit = backend.kit().await;
    let server = backend.server().unwrap();
    let events = kit
        .namespace::<Event>("events")
        .ttl(Duration::from_secs(600))
        .build()
        .unwrap();
    events.set("1", event(1)).await.unwrap();

    let mut c = server.async_connection().await;
    let key = events.redis_key("1");
    assert_eq!(key, "tierkit:c:events:v1:1");
    let bytes: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    let stored: Event = events.decode_entry("1", &bytes).unwrap();
    assert_eq!(stored, event(1));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((590_000..=600_000).contains(&pttl), "{pttl}");

    // A second instance has its own L1: its first read comes from L2, the next from L1.
    let b = backend.kit().await;
    let events_b = b
        .namespace::<Event>("events")
        .ttl(Duration::from_secs(600))
        .build()
        .unwrap();
    let hit = events_b
        .get_or_set("1", loader_ok(event(99)))
        .await
        .unwrap();
    assert_eq!((hit.source(), &*hit), (Source::L2, &event(1)));
    assert_eq!(events_b.get("1").await.unwrap().source(), Source::L1);
    assert_eq!(events_b.stats().l2_hits, 1);
}

/// An L2 read asks no `PTTL`: the time an entry has left comes from the expiry its write
/// stamped into it and the server's clock as the health probe reads it (`TIME`). Once that
/// reading is too old to trust (the probe has not answered for a while), a read asks `TIME`
/// in the same pipeline, once however many keys it reads, and renews the reading with it.
/// Either way a copy dies with its Redis entry.
#[tokio::test]
async fn an_l2_read_is_one_get_per_key_and_its_copy_dies_with_the_entry() {
    let backend = Backend::redis();
    let server = backend.server().unwrap();
    // Probes once at start, then not for a minute: the clock reading ages out after 5 s.
    let slow_probe = || backend.builder().probe_interval(Duration::from_secs(60));
    let (a, b) = (
        backend.kit_with(slow_probe()).await,
        backend.kit_with(slow_probe()).await,
    );
    let hour = Duration::from_secs(3600);
    let on_a = a.namespace::<Event>("events").ttl(hour).build().unwrap();
    let on_b = b.namespace::<Event>("events").ttl(hour).build().unwrap();
    let short = || SetOptions::new().ttl(Duration::from_millis(1200));
    let calls = || async {
        (
            command_calls(server, "time").await,
            command_calls(server, "pttl").await,
        )
    };

    for (round, key) in ["fresh clock", "aged clock"].into_iter().enumerate() {
        if round == 1 {
            tokio::time::sleep(Duration::from_millis(5500)).await;
        }
        on_a.set_with(key, event(1), short()).await.unwrap();
        let others = [format!("other {round}"), format!("another {round}")];
        for other in &others {
            on_a.set(other, event(2)).await.unwrap();
        }
        if round == 0 {
            // The probe's one sample may have come back too slowly to pin the reading (a busy
            // machine); then reads carry `TIME`, each of which can pin it. Once pinned, a read
            // carries none.
            let pinned = eventually(Duration::from_secs(5), || async {
                let before = command_calls(server, "time").await;
                assert!(on_b.get("absent").await.is_none());
                command_calls(server, "time").await == before
            })
            .await;
            assert!(pinned.is_some(), "reads never stopped asking TIME");
        }
        let (time0, pttl0) = calls().await;
        assert_eq!(on_b.get(key).await.unwrap().source(), Source::L2, "{key}");
        let many = on_b.get_many(&others).await;
        assert!(
            many.iter()
                .all(|h| h.as_ref().map(|h| h.source()) == Some(Source::L2)),
            "{key}"
        );
        let (time1, pttl1) = calls().await;
        assert_eq!(pttl1, pttl0, "{key}: no PTTL");
        // At most one `TIME` per read. Aged: the first read carries one, which renews the
        // reading for the next (unless its round trip was too slow to pin it).
        let times = time1 - time0;
        assert!(times <= 2, "{key}: {times} TIMEs");
        if round == 1 {
            assert!(times >= 1, "{key}: the aged reading was used");
        }
        // Redis's own time is what is tested: a real wait past the entry's TTL.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(on_b.get(key).await.is_none(), "{key}: served past its TTL");
        assert!(on_b.get(&others[0]).await.is_some());
    }
}

/// A user whose ACL refuses `TIME` (and so writes, whose script reads it) still reads: the
/// probe falls back to `PING`, health is up, and a read's time left comes from Redis
/// (`PTTL`), so its copy still dies with the entry.
#[tokio::test]
async fn a_user_refused_time_is_probed_with_ping_and_still_reads() {
    let backend = Backend::redis();
    let server = backend.server().unwrap();
    let mut admin = server.async_connection().await;
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER", "untimed", "on", ">pw", "~*", "&*", "+@all", "-time",
        ])
        .query_async(&mut admin)
        .await
        .unwrap();
    let writer = backend.kit().await;
    let url = format!("redis://untimed:pw@127.0.0.1:{}", server.port());
    let reader = backend
        .kit_with(support::fast_builder().redis_url(url))
        .await;
    assert_eq!(reader.health().unwrap().state(), HealthState::Up);
    let hour = Duration::from_secs(3600);
    let on_w = writer
        .namespace::<Event>("events")
        .ttl(hour)
        .build()
        .unwrap();
    let on_r = reader
        .namespace::<Event>("events")
        .ttl(hour)
        .build()
        .unwrap();
    let short = SetOptions::new().ttl(Duration::from_millis(1200));
    assert_eq!(
        on_w.set_with("k", event(1), short).await.unwrap(),
        Reach::AllTiers
    );
    let hit = on_r.get("k").await.unwrap();
    assert_eq!((hit.source(), &*hit), (Source::L2, &event(1)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(on_r.get("k").await.is_none(), "served past its TTL");
}

/// Entries an earlier release wrote (frame formats 1 and 2, with no expiry in them) are still
/// served, and Redis says how long they have left (`PTTL`), so their copies die with them.
#[tokio::test]
async fn entries_of_an_earlier_frame_format_are_served_until_redis_drops_them() {
    let backend = Backend::redis();
    let server = backend.server().unwrap();
    let (a, b) = (backend.kit().await, backend.kit().await);
    let hour = Duration::from_secs(3600);
    let on_a = a.namespace::<Event>("events").ttl(hour).build().unwrap();
    let on_b = b.namespace::<Event>("events").ttl(hour).build().unwrap();
    on_a.set("old", event(5)).await.unwrap();
    let mut c = server.async_connection().await;
    let key = on_a.redis_key("old");
    let bytes: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    // Format 3 → 1: the expiry digits (20..36) and the zero grace field (after the epoch and
    // tag count, 46..54) were not there.
    assert_eq!(&bytes[..3], b"TE\x03");
    let mut old = bytes[..20].to_vec();
    old[2] = 1;
    old.extend_from_slice(&bytes[36..46]);
    old.extend_from_slice(&bytes[54..]);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(old)
        .arg("PX")
        .arg(1200)
        .query_async(&mut c)
        .await
        .unwrap();
    let pttl0 = command_calls(server, "pttl").await;
    let hit = on_b.get("old").await.unwrap();
    assert_eq!((hit.source(), &*hit), (Source::L2, &event(5)));
    assert_eq!(command_calls(server, "pttl").await, pttl0 + 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(on_b.get("old").await.is_none(), "served past its TTL");
}

/// Writes name their scripts by hash (`EVALSHA`). A server that lost them (`SCRIPT FLUSH`, as
/// after a restart without persistence) is sent their text again: every kind of write still
/// lands, versioned above the one before, and is announced to the other instance.
#[tokio::test]
async fn writes_land_after_redis_forgets_its_scripts() {
    let backend = Backend::redis();
    let server = backend.server().unwrap();
    let (a, b) = (backend.kit().await, backend.kit().await);
    let build = |kit: &Tierkit| kit.namespace::<Event>("events").build().unwrap();
    let (on_a, on_b) = (build(&a), build(&b));
    let c = server.async_connection().await;
    let forget = || async {
        let mut c = server.async_connection().await;
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut c)
            .await
            .unwrap();
    };
    let stored = |key: &'static str| {
        let ns = &on_a;
        let mut c = c.clone();
        async move {
            let bytes: Option<Vec<u8>> = redis::cmd("GET")
                .arg(ns.redis_key(key))
                .query_async(&mut c)
                .await
                .unwrap();
            bytes.map(|b| ns.decode_entry(key, &b).unwrap())
        }
    };

    assert_eq!(on_a.set("1", event(1)).await.unwrap(), Reach::AllTiers);
    assert_eq!(on_b.get("1").await.unwrap().source(), Source::L2);

    // A plain write: lands, and b's L1 copy of the older value is evicted.
    forget().await;
    assert_eq!(on_a.set("1", event(2)).await.unwrap(), Reach::AllTiers);
    assert_eq!(stored("1").await, Some(event(2)));
    let seen = eventually(Duration::from_secs(2), || async {
        on_b.get("1").await.as_deref() == Some(&event(2))
    })
    .await;
    assert!(seen.is_some(), "b never saw the write made after the flush");

    // A tagged write (its tag epoch is a script too), then the tag's invalidation.
    forget().await;
    let tagged = SetOptions::new().tag("owner:7");
    assert_eq!(
        on_a.set_with("2", event(3), tagged).await.unwrap(),
        Reach::AllTiers
    );
    assert_eq!(stored("2").await, Some(event(3)));
    assert_eq!(on_b.get("2").await.unwrap().source(), Source::L2);
    assert_eq!(
        on_a.invalidate_tag("owner:7").await.unwrap(),
        Reach::AllTiers
    );
    assert!(on_b.get("2").await.is_none());

    // Only what Redis answered `NOSCRIPT` goes again: after a plain write reloaded the write
    // script, a write under a tag this instance knows meets `NOSCRIPT` on the tag's epoch
    // alone, and only that command is sent again (with its text): the write lands once.
    let team = || SetOptions::new().tag("team");
    assert_eq!(
        on_a.set_with("3", event(6), team()).await.unwrap(),
        Reach::AllTiers
    );
    forget().await;
    assert_eq!(on_a.set("plain", event(6)).await.unwrap(), Reach::AllTiers);
    let evals = command_calls(server, "eval").await;
    assert_eq!(
        on_a.set_with("3", event(7), team()).await.unwrap(),
        Reach::AllTiers
    );
    assert_eq!(command_calls(server, "eval").await - evals, 1);
    assert_eq!(stored("3").await, Some(event(7)));

    // A fill after a load.
    forget().await;
    let hit = on_a.get_or_set("4", loader_ok(event(4))).await.unwrap();
    assert_eq!(hit.source(), Source::Loader);
    let filled = eventually(Duration::from_secs(2), || async {
        stored("4").await == Some(event(4))
    })
    .await;
    assert!(filled.is_some(), "the load never reached Redis");
    assert!(command_calls(server, "evalsha").await > 0);
}

#[tokio::test]
async fn an_l1_hit_makes_no_redis_call_and_does_not_decode() {
    let backend = Backend::redis();
    let kit = backend.kit().await;
    let server = backend.server().unwrap();
    let events = kit.namespace::<Event>("events").build().unwrap();
    events.set("1", event(1)).await.unwrap();
    // Corrupt the L2 copy behind tierkit's back: an L1 hit must not notice.
    let mut c = server.async_connection().await;
    let _: () = redis::cmd("SET")
        .arg(events.redis_key("1"))
        .arg("garbage")
        .query_async(&mut c)
        .await
        .unwrap();
    let gets = command_calls(server, "get").await;
    for _ in 0..100 {
        assert_eq!(*events.get("1").await.unwrap(), event(1));
    }
    assert_eq!(command_calls(server, "get").await, gets);
    assert_eq!(events.stats().decode_failures, 0);
}

#[tokio::test]
async fn ttl_override_and_jitter() {
    let backend = Backend::redis();
    let kit = backend.kit().await;
    let server = backend.server().unwrap();
    let events = kit
        .namespace::<Event>("events")
        .ttl(Duration::from_secs(1000))
        .jitter(0.5)
        .build()
        .unwrap();
    let mut c = server.async_connection().await;
    let mut ttls = Vec::new();
    for i in 0..50u64 {
        events.set(&i.to_string(), event(i)).await.unwrap();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(events.redis_key(&i.to_string()))
            .query_async(&mut c)
            .await
            .unwrap();
        assert!((499_000..=1_000_000).contains(&pttl), "{pttl}");
        ttls.push(pttl / 1000);
    }
    ttls.sort();
    ttls.dedup();
    assert!(
        ttls.len() > 10,
        "entries written together should not expire together: {ttls:?}"
    );

    events
        .set_with(
            "short",
            event(1),
            SetOptions::new().ttl(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(events.redis_key("short"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((4_900..=10_000).contains(&pttl), "{pttl}");
}

#[tokio::test]
async fn get_many_is_one_round_trip() {
    let backend = Backend::redis();
    let server = backend.server().unwrap();
    let proxy = TcpProxy::start(&server.addr());
    let a = backend.kit().await;
    let events = a.namespace::<Event>("events").build().unwrap();
    events
        .set_many((0..100u64).map(|i| (i.to_string(), event(i))))
        .await
        .unwrap();

    // A cold instance behind a proxy that delays each direction by 20 ms: one round trip is
    // 40 ms, one hundred would be four seconds.
    let b = Tierkit::new(
        Config::builder()
            .redis_url(proxy.url())
            .op_timeout(Duration::from_millis(500))
            .probe_timeout(Duration::from_millis(300))
            .degraded_latency(Duration::from_millis(200))
            .recover_threshold(1)
            .build()
            .unwrap(),
    )
    .unwrap();
    ready(&b).await;
    proxy.set_delay(Duration::from_millis(20));
    let events_b = b.namespace::<Event>("events").build().unwrap();
    let keys: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    let started = Instant::now();
    let got = events_b.get_many(&keys).await;
    let took = started.elapsed();
    assert!(got
        .iter()
        .all(|h| h.as_ref().is_some_and(|h| h.source() == Source::L2)));
    assert!(took < Duration::from_millis(120), "{took:?}");
}

#[tokio::test]
async fn bumping_the_version_makes_old_entries_unreachable() {
    let backend = Backend::redis();
    let kit = backend.kit().await;
    let v1 = kit.namespace::<Event>("events").version(1).build().unwrap();
    v1.set("1", event(1)).await.unwrap();

    // The next deploy changes the type and bumps the version.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct EventV2 {
        id: u64,
        title: String,
        venue: String,
    }
    let b = backend.kit().await;
    let v2 = b.namespace::<EventV2>("events").version(2).build().unwrap();
    assert!(v2.get("1").await.is_none());
    assert_eq!(v2.stats().decode_failures, 0);
    let hit = v2
        .get_or_set("1", || async {
            Ok::<_, std::io::Error>(EventV2 {
                id: 1,
                title: "t".into(),
                venue: "v".into(),
            })
        })
        .await
        .unwrap();
    assert_eq!(hit.source(), Source::Loader);
    // The old entry is untouched for instances still on version 1.
    assert_eq!(*v1.get("1").await.unwrap(), event(1));
}

#[tokio::test]
async fn bytes_that_no_longer_decode_are_a_counted_miss_and_get_overwritten() {
    let backend = Backend::redis();
    let kit = backend.kit().await;
    let server = backend.server().unwrap();
    let events = kit.namespace::<Event>("events").build().unwrap();
    let mut c = server.async_connection().await;
    // Same version, incompatible bytes: a forgotten version bump, or another writer.
    let foreign = kit.codec().encode(&"not an event").unwrap();
    let _: () = redis::cmd("SET")
        .arg(events.redis_key("1"))
        .arg(foreign)
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(events.redis_key("2"))
        .arg("plain text")
        .query_async(&mut c)
        .await
        .unwrap();

    assert!(events.get("1").await.is_none());
    let hit = events.get_or_set("2", loader_ok(event(2))).await.unwrap();
    assert_eq!(hit.source(), Source::Loader);
    let s = events.stats();
    assert_eq!((s.decode_failures, s.misses), (2, 2));
    let bytes: Vec<u8> = redis::cmd("GET")
        .arg(events.redis_key("2"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(events.decode_entry("2", &bytes).unwrap(), event(2));
}

/// Polls `b` until `key` reads as `want` (None = absent); returns how long that took.
async fn seen(ns: &tierkit::cache::Namespace<Event>, key: &str, want: Option<Event>) -> Duration {
    let started = Instant::now();
    loop {
        let now = ns.get(key).await.map(|h| (*h).clone());
        if now == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{key}: still {now:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn updates_on_one_instance_reach_the_other_within_100ms() {
    let backend = Backend::redis();
    let a = backend.kit().await;
    let b = backend.kit().await;
    let ea = a.namespace::<Event>("events").build().unwrap();
    let eb = b.namespace::<Event>("events").build().unwrap();
    ea.set("1", event(1)).await.unwrap();
    for i in 0..4u64 {
        ea.set_with(&format!("t{i}"), event(i), SetOptions::new().tag("t"))
            .await
            .unwrap();
        ea.set(&format!("p{i}"), event(i)).await.unwrap();
    }
    // B now holds L1 copies of everything.
    assert_eq!(eb.get("1").await.unwrap().source(), Source::L2);
    assert_eq!(eb.get("1").await.unwrap().source(), Source::L1);
    for i in 0..4u64 {
        eb.get(&format!("t{i}")).await.unwrap();
        eb.get(&format!("p{i}")).await.unwrap();
    }

    let mut worst = Duration::ZERO;
    ea.set("1", event(2)).await.unwrap();
    worst = worst.max(seen(&eb, "1", Some(event(2))).await);
    ea.invalidate("1").await.unwrap();
    worst = worst.max(seen(&eb, "1", None).await);
    ea.invalidate_tag("t").await.unwrap();
    worst = worst.max(seen(&eb, "t3", None).await);
    ea.invalidate_pattern("p?").await.unwrap();
    worst = worst.max(seen(&eb, "p2", None).await);
    ea.set("1", event(3)).await.unwrap();
    eb.get("1").await.unwrap();
    ea.clear().await.unwrap();
    worst = worst.max(seen(&eb, "1", None).await);
    eprintln!("slowest propagation A -> B: {worst:?}");
    assert!(worst < Duration::from_millis(100), "{worst:?}");
}

#[tokio::test]
async fn a_dropped_backplane_connection_drops_l1_on_resubscribe() {
    let backend = Backend::redis();
    let server = backend.server().unwrap();
    let b = backend.kit().await;
    let eb = b.namespace::<Event>("events").build().unwrap();
    eb.set("1", event(1)).await.unwrap();
    assert_eq!(eb.get("1").await.unwrap().source(), Source::L1);

    let mut c = server.async_connection().await;
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut c)
        .await
        .unwrap();
    // B resubscribes and, since it may have missed messages, forgets its L1.
    let gone = eventually(Duration::from_secs(3), || async {
        eb.get("1").await.is_some_and(|h| h.source() == Source::L2)
    })
    .await;
    assert!(gone.is_some(), "L1 survived a backplane reconnect");
    assert!(b.cache_info().await.coherent);
}

#[tokio::test]
async fn redis_down_reads_serve_l1_and_loader_fast_and_writes_stay_local() {
    let mut backend = Backend::redis();
    let kit = backend.kit().await;
    let events = kit.namespace::<Event>("events").build().unwrap();
    events.set("warm", event(1)).await.unwrap();

    redis_of(&mut backend).stop();
    assert!(
        kit.health()
            .unwrap()
            .wait_for(HealthState::Down, Duration::from_secs(2))
            .await
    );
    let loads = Arc::new(AtomicUsize::new(0));
    let mut slowest = Duration::ZERO;
    for i in 0..200u64 {
        let started = Instant::now();
        assert_eq!(*events.get("warm").await.unwrap(), event(1));
        let loads2 = loads.clone();
        let hit = events
            .get_or_set(&format!("cold{i}"), move || async move {
                loads2.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(event(i))
            })
            .await
            .unwrap();
        assert_eq!(hit.source(), Source::Loader);
        assert_eq!(
            events.set(&format!("w{i}"), event(i)).await.unwrap(),
            Reach::L1Only
        );
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("slowest read+load+write while Down: {slowest:?}");
    // No call waited on Redis: far below the 100 ms op timeout.
    assert!(slowest < Duration::from_millis(50), "{slowest:?}");
    assert_eq!(loads.load(Ordering::SeqCst), 200);
    let s = events.stats();
    assert!(s.l2_skipped >= 400, "{s:?}");

    redis_of(&mut backend).restart();
    ready(&kit).await;
    events.set("back", event(5)).await.unwrap();
    let b = backend.kit().await;
    let eb = b.namespace::<Event>("events").build().unwrap();
    assert_eq!(eb.get("back").await.unwrap().source(), Source::L2);
}

#[tokio::test]
async fn hanging_and_killing_the_server_mid_load_never_fails_a_read_and_bounds_latency() {
    let mut backend = Backend::redis();
    let kit = backend.kit().await;
    let events = kit.namespace::<Event>("events").build().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health = kit.health().unwrap().clone();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let events = events.clone();
            let stop = stop.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let (mut slowest, mut slowest_down) = (Duration::ZERO, Duration::ZERO);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Every read is a cold key, so every read tries Redis, and every other
                    // one also writes.
                    let key = format!("k{w}-{n}");
                    let down = health.state() == HealthState::Down;
                    let started = Instant::now();
                    let hit = events
                        .get_or_set(
                            &key,
                            move || async move { Ok::<_, std::io::Error>(event(n)) },
                        )
                        .await
                        .expect("a read never fails because of Redis");
                    assert_eq!(*hit, event(n));
                    if n.is_multiple_of(2) {
                        events
                            .set(&key, event(n))
                            .await
                            .expect("a write never fails because of Redis");
                    }
                    let took = started.elapsed();
                    slowest = slowest.max(took);
                    if down {
                        slowest_down = slowest_down.max(took);
                    }
                    n += 1;
                    tokio::task::yield_now().await;
                }
                (slowest, slowest_down, n)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis_of(&mut backend).hang();
    assert!(
        health
            .wait_for(HealthState::Down, Duration::from_secs(2))
            .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis_of(&mut backend).resume();
    ready(&kit).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis_of(&mut backend).stop();
    assert!(
        health
            .wait_for(HealthState::Down, Duration::from_secs(2))
            .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis_of(&mut backend).restart();
    ready(&kit).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let mut reads = 0;
    for w in workers {
        let (slowest, slowest_down, n) = w.await.unwrap();
        reads += n;
        // One op timeout (100 ms) for the read, and one for the write, plus slack.
        assert!(slowest < Duration::from_millis(300), "{slowest:?}");
        // While Down nothing waits on Redis.
        assert!(slowest_down < Duration::from_millis(50), "{slowest_down:?}");
    }
    let s = events.stats();
    assert!(s.l2_errors > 0 && s.l2_skipped > 0, "{s:?}");
    assert!(reads > 100, "{reads}");
    // Back up: the L2 is used again.
    events.set("after", event(1)).await.unwrap();
    let b = backend.kit().await;
    let eb = b.namespace::<Event>("events").build().unwrap();
    assert_eq!(eb.get("after").await.unwrap().source(), Source::L2);
}

#[tokio::test]
async fn a_load_never_overwrites_a_write_or_invalidation_made_while_it_ran() {
    let backend = Backend::redis();
    let kit = backend.kit().await;
    let server = backend.server().unwrap();
    let events = kit.namespace::<Event>("events").build().unwrap();
    let slow = |v: Event| {
        move || async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, std::io::Error>(v)
        }
    };

    // A write during the load wins, in both tiers.
    let loading = tokio::spawn({
        let events = events.clone();
        async move { events.get_or_set("k", slow(event(1))).await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    events.set("k", event(2)).await.unwrap();
    // The load's caller gets the write that replaced its value while it ran: L1 holds it, and
    // a copy never gives way to an older one.
    assert_eq!(*loading.await.unwrap().unwrap(), event(2));
    assert_eq!(*events.get("k").await.unwrap(), event(2));
    let mut c = server.async_connection().await;
    let bytes: Vec<u8> = redis::cmd("GET")
        .arg(events.redis_key("k"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(events.decode_entry("k", &bytes).unwrap(), event(2));

    // An invalidation during the load: the loaded value is kept in neither tier.
    let loading = tokio::spawn({
        let events = events.clone();
        async move { events.get_or_set("gone", slow(event(3))).await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    events.invalidate("gone").await.unwrap();
    assert_eq!(*loading.await.unwrap().unwrap(), event(3));
    assert!(events.get("gone").await.is_none());

    // Another instance's write during the load is not overwritten either (SET NX).
    let b = backend.kit().await;
    let eb = b.namespace::<Event>("events").build().unwrap();
    let loading = tokio::spawn({
        let events = events.clone();
        async move { events.get_or_set("shared", slow(event(4))).await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    eb.set("shared", event(5)).await.unwrap();
    loading.await.unwrap().unwrap();
    let bytes: Vec<u8> = redis::cmd("GET")
        .arg(events.redis_key("shared"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(events.decode_entry("shared", &bytes).unwrap(), event(5));
    assert_eq!(*events.get("shared").await.unwrap(), event(5));
}

#[tokio::test]
async fn an_l2_read_racing_a_write_does_not_leave_the_old_value_in_l1() {
    let backend = Backend::redis();
    let server = backend.server().unwrap();
    let a = backend.kit().await;
    a.namespace::<Event>("events")
        .build()
        .unwrap()
        .set("k", event(1))
        .await
        .unwrap();

    // B reads through a proxy that holds each direction for 40 ms, so its GET is still in
    // flight when its own write lands.
    let proxy = TcpProxy::start(&server.addr());
    let b = Tierkit::new(
        Config::builder()
            .redis_url(proxy.url())
            .op_timeout(Duration::from_millis(500))
            .probe_timeout(Duration::from_millis(300))
            .degraded_latency(Duration::from_millis(200))
            .build()
            .unwrap(),
    )
    .unwrap();
    ready(&b).await;
    proxy.set_delay(Duration::from_millis(40));
    let eb = b.namespace::<Event>("events").build().unwrap();
    let reading = tokio::spawn({
        let eb = eb.clone();
        async move { eb.get("k").await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    eb.set("k", event(2)).await.unwrap();
    // The read that raced the write serves the write (what L1 holds by then), not the older
    // value it read: reads on one instance never go back.
    let raced = reading.await.unwrap().unwrap();
    assert_eq!(*raced, event(2));
    proxy.set_delay(Duration::ZERO);
    assert_eq!(*eb.get("k").await.unwrap(), event(2));
}

#[tokio::test]
async fn patterns_match_characters_not_bytes_in_redis_too() {
    let backend = Backend::redis();
    let kit = backend.kit().await;
    let events = kit.namespace::<Event>("events").build().unwrap();
    events.set("user:é", event(1)).await.unwrap();
    events.set("user:ab", event(2)).await.unwrap();
    let (reach, removed) = events.invalidate_pattern("user:?").await.unwrap();
    assert_eq!((reach, removed), (Reach::AllTiers, 1));
    let b = backend.kit().await;
    let eb = b.namespace::<Event>("events").build().unwrap();
    assert!(eb.get("user:é").await.is_none());
    assert!(eb.get("user:ab").await.is_some());
}

#[tokio::test]
async fn a_slow_redis_is_degraded_but_still_used() {
    let backend = Backend::redis();
    let server = backend.server().unwrap();
    let proxy = TcpProxy::start(&server.addr());
    let kit = Tierkit::new(
        Config::builder()
            .redis_url(proxy.url())
            .probe_interval(Duration::from_millis(100))
            .probe_timeout(Duration::from_millis(90))
            .op_timeout(Duration::from_millis(200))
            .degraded_latency(Duration::from_millis(30))
            .build()
            .unwrap(),
    )
    .unwrap();
    ready(&kit).await;
    proxy.set_delay(Duration::from_millis(20));
    let health = kit.health().unwrap();
    assert!(
        health
            .wait_for(HealthState::Degraded, Duration::from_secs(2))
            .await
    );
    let events = kit.namespace::<Event>("events").build().unwrap();
    assert_eq!(events.set("k", event(1)).await.unwrap(), Reach::AllTiers);
    proxy.set_delay(Duration::ZERO);
    assert!(
        health
            .wait_for(HealthState::Up, Duration::from_secs(2))
            .await
    );
}

#[tokio::test]
async fn after_an_outage_each_instance_forgets_its_l1() {
    let mut backend = Backend::redis();
    let b = backend.kit().await;
    let eb = b.namespace::<Event>("events").build().unwrap();
    eb.set("k", event(1)).await.unwrap();
    redis_of(&mut backend).stop();
    assert!(
        b.health()
            .unwrap()
            .wait_for(HealthState::Down, Duration::from_secs(2))
            .await
    );
    // During the outage L1 keeps serving.
    assert_eq!(eb.get("k").await.unwrap().source(), Source::L1);
    redis_of(&mut backend).restart();
    ready(&b).await;
    // Back up, nothing in L1 is trusted: the restarted server has no such key, so: a miss.
    assert!(eb.get("k").await.is_none());
}

/// An L1 hit takes part in tokio's cooperative scheduling: a task reading cached values in a
/// loop yields now and then, so another task's timer on the same worker still fires on time.
#[tokio::test(flavor = "current_thread")]
async fn a_loop_of_l1_hits_lets_other_tasks_run() {
    let kit = Tierkit::embedded();
    let events = kit.namespace::<Event>("coop").build().unwrap();
    events.set("hot", event(1)).await.unwrap();
    let timer = tokio::spawn(async {
        let due = Instant::now() + Duration::from_millis(1);
        tokio::time::sleep_until(due.into()).await;
        Instant::now().saturating_duration_since(due)
    });
    // Let the timer task start and arm its timer.
    tokio::task::yield_now().await;
    let started = Instant::now();
    for _ in 0..100_000 {
        assert!(events.get("hot").await.is_some());
        let hit = events
            .get_or_set("hot", || async { Ok::<_, std::io::Error>(event(2)) })
            .await
            .unwrap();
        assert_eq!(hit.source(), Source::L1);
    }
    let looped = started.elapsed();
    let late = timer.await.unwrap();
    assert!(
        late < Duration::from_millis(50),
        "the 1 ms timer fired {late:?} late during a {looped:?} loop of L1 hits"
    );
}

/// A full L1 keeps its hot set through a scan: values read from Redis once (a batch job
/// walking every key) do not go in, so they evict nothing, while a key read from Redis twice
/// in quick succession does.
#[tokio::test]
async fn a_scan_through_a_full_l1_leaves_the_hot_set_in_it() {
    let backend = Backend::redis();
    let writer = backend.kit().await;
    // About 40 entries of 200 bytes.
    let reader = backend
        .kit_with(backend.builder().l1_capacity(10 * 1024))
        .await;
    let ns = |kit: &tierkit::Tierkit| {
        kit.namespace::<String>("scan")
            .ttl(Duration::from_secs(600))
            .build()
            .unwrap()
    };
    let (w, r) = (ns(&writer), ns(&reader));
    let value = |i: usize| format!("{i:0>200}");
    for i in 0..600 {
        w.set(&format!("k{i}"), value(i)).await.unwrap();
    }
    // The hot set: 60 keys, a little more than L1 holds, read until L1 is full of them.
    let hot_round = || async {
        let before = r.stats().l1_hits;
        for i in 0..60 {
            assert_eq!(*r.get(&format!("k{i}")).await.unwrap(), value(i));
        }
        r.stats().l1_hits - before
    };
    for _ in 0..3 {
        hot_round().await;
    }
    let hot = hot_round().await;
    assert!(hot >= 30, "L1 holds most of the hot set: {hot} of 60");
    // The scan: 500 other keys, once each; every one is answered, from Redis.
    let before = r.stats();
    for i in 100..600 {
        let hit = r.get(&format!("k{i}")).await.unwrap();
        assert_eq!((hit.source(), &*hit), (Source::L2, &value(i)));
    }
    assert_eq!(r.stats().l2_hits - before.l2_hits, 500);
    // The hot set is still in L1.
    let after = hot_round().await;
    assert!(
        after + 3 >= hot,
        "{after} hot keys in L1 after the scan, {hot} before"
    );
    // A key read from Redis again soon after goes in.
    r.get("k50").await.unwrap();
    r.get("k50").await.unwrap();
    assert_eq!(r.get("k50").await.unwrap().source(), Source::L1);
}
