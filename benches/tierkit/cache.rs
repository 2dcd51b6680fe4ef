//! Cache hit paths: tierkit's L1 hit next to raw moka `get`, and tierkit's L2 hit (L1 miss)
//! next to a raw redis-rs `GET` plus the decoding tierkit does (bincode, and zstd where the
//! value compresses). The raw L1 is moka's synchronous cache, the kind tierkit's L1 is. Each raw
//! L1 holds a value of its own per key, as tierkit does (one `Arc` shared by every key would
//! keep its count in one hot cache line, which no real cache has).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use tierkit::cache::EagerRefresh;
use tierkit::health::HealthState;
use tierkit::{Config, Tierkit};

use crate::runtimes;
use crate::support::RedisServer;

const L1_KEYS: usize = 100_000;
const L2_KEYS: usize = 1_000;
pub const TASKS: usize = 64;
/// The L1 of the L2 benches: full, and far smaller than the values they read in turn.
const L1_FULL: u64 = 64 * 1024;
/// `get_many` reads batches of 100 keys in turn out of this many.
const MANY_KEYS: usize = 2_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    id: u64,
    tags: Vec<String>,
    body: String,
}

/// A value whose bincode body is about `size` bytes of JSON-like text, which compresses the
/// way cached query results do.
pub fn payload(id: u64, size: usize) -> Payload {
    let mut body = String::with_capacity(size);
    let mut i = id;
    while body.len() < size {
        body.push_str(&format!(
            "{{\"user\":{i},\"name\":\"user-{i}\",\"score\":{}}},",
            i % 97
        ));
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            % 100_000;
    }
    body.truncate(size);
    Payload {
        id,
        tags: vec!["event".into(), format!("owner:{}", id % 10)],
        body,
    }
}

/// Next key index, shared by the iterations of one benchmark.
fn cycle(counter: &AtomicUsize, len: usize) -> usize {
    counter.fetch_add(1, Ordering::Relaxed) % len
}

pub fn l1_hit(c: &mut Criterion) {
    let keys: Vec<String> = (0..L1_KEYS).map(|i| format!("event:{i}")).collect();
    let value = Arc::new(payload(1, 200));
    for (flavor, rt) in runtimes() {
        let mut group = c.benchmark_group(format!("l1_hit/{flavor}"));
        group.throughput(Throughput::Elements(1));

        let moka: moka::sync::Cache<String, Arc<Payload>> = moka::sync::Cache::new(1 << 20);
        let kit = Tierkit::new(Config::builder().l1_capacity(1 << 30).build().unwrap()).unwrap();
        let ns = kit.namespace::<Payload>("events").build().unwrap();
        rt.block_on(async {
            for k in &keys {
                moka.insert(k.clone(), Arc::new((*value).clone()));
                ns.set(k, (*value).clone()).await.unwrap();
            }
        });

        let next = AtomicUsize::new(0);
        group.bench_function("raw_moka_get", |b| {
            b.to_async(&rt).iter(|| async {
                let k = &keys[cycle(&next, L1_KEYS)];
                moka.get(k).expect("present")
            })
        });
        group.bench_function("tierkit_get", |b| {
            b.to_async(&rt).iter(|| async {
                let k = &keys[cycle(&next, L1_KEYS)];
                ns.get(k).await.expect("present")
            })
        });
        group.finish();
        let s = ns.stats();
        assert_eq!(
            s.l2_hits + s.misses,
            0,
            "every tierkit read must be an L1 hit: {s:?}"
        );
    }
}

/// L1 hits from every core at once, the shape of a multi-threaded service: one thread per
/// core, each with a current-thread runtime, reading its own walk of the keys. Beside tierkit
/// (with and without eviction counts), raw moka `get` with `String` keys and with the
/// hand-rolled peer's `u64` keys, and moka `get` plus one counter every thread adds to (what a
/// hit counter shared by the cores costs: the line they all write bounces).
pub fn l1_hit_parallel(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let keys: Vec<String> = (0..L1_KEYS).map(|i| format!("event:{i}")).collect();
    let value = Arc::new(payload(1, 200));
    let moka: moka::sync::Cache<String, Arc<Payload>> = moka::sync::Cache::new(1 << 20);
    let kit = Tierkit::new(Config::builder().l1_capacity(1 << 30).build().unwrap()).unwrap();
    let ns = kit.namespace::<Payload>("events").build().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The same with eviction counts, whose moka eviction listener slows every hit.
    let counted = Config::builder()
        .l1_capacity(1 << 30)
        .l1_eviction_counts(true)
        .build()
        .unwrap();
    let kit_c = Tierkit::new(counted).unwrap();
    let ns_c = kit_c.namespace::<Payload>("events").build().unwrap();
    // Each cache filled on its own: entries interleaved in memory with another cache's cost
    // every hit a cache line more.
    for k in &keys {
        moka.insert(k.clone(), Arc::new((*value).clone()));
    }
    rt.block_on(async {
        for ns in [&ns, &ns_c] {
            for k in &keys {
                ns.set(k, (*value).clone()).await.unwrap();
            }
        }
    });
    // `iters` hits spread over the threads; the time from the start line to the last one done.
    let parallel = |iters: u64, hits: &(dyn Fn(usize, u64) + Sync)| -> Duration {
        let per = iters.div_ceil(threads as u64);
        let start = std::sync::Barrier::new(threads + 1);
        let began = std::thread::scope(|scope| {
            for t in 0..threads {
                let start = &start;
                scope.spawn(move || {
                    start.wait();
                    hits(t, per);
                });
            }
            start.wait();
            Instant::now()
        });
        began.elapsed()
    };
    // Thread `t`'s `i`-th key: each thread walks the keys from its own start.
    let walk = |t: usize, i: u64| (i as usize).wrapping_mul(7).wrapping_add(t * 50_021) % L1_KEYS;
    let key = |t: usize, i: u64| &keys[walk(t, i)];
    let mut group = c.benchmark_group(format!("l1_hit_parallel/{threads}_threads"));
    group.throughput(Throughput::Elements(1));
    group.bench_function("raw_moka_get", |b| {
        b.iter_custom(|iters| {
            parallel(iters, &|t, n| {
                for i in 0..n {
                    std::hint::black_box(moka.get(key(t, i)));
                }
            })
        })
    });
    // The hand-rolled peer's L1 (loadgen): integer ids as keys, one TTL for all. Its key needs
    // no memory of the caller's: the `String` keys above are read from a 100,000-key table.
    let by_id: moka::sync::Cache<u64, Arc<Payload>> = moka::sync::Cache::builder()
        .max_capacity(1 << 20)
        .time_to_live(Duration::from_secs(3600))
        .build();
    for i in 0..L1_KEYS as u64 {
        by_id.insert(i, Arc::new((*value).clone()));
    }
    let id = |t: usize, i: u64| walk(t, i) as u64;
    group.bench_function("raw_moka_get_u64_key", |b| {
        b.iter_custom(|iters| {
            parallel(iters, &|t, n| {
                for i in 0..n {
                    std::hint::black_box(by_id.get(&id(t, i)));
                }
            })
        })
    });
    let shared = std::sync::atomic::AtomicU64::new(0);
    group.bench_function("raw_moka_get_shared_counter", |b| {
        b.iter_custom(|iters| {
            parallel(iters, &|t, n| {
                for i in 0..n {
                    std::hint::black_box(moka.get(key(t, i)));
                    shared.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
    });
    for (name, ns) in [("tierkit_get", &ns), ("tierkit_get_eviction_counts", &ns_c)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                parallel(iters, &|t, n| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .expect("runtime");
                    rt.block_on(async {
                        for i in 0..n {
                            std::hint::black_box(ns.get(key(t, i)).await);
                        }
                    });
                })
            })
        });
    }
    group.finish();
    for ns in [&ns, &ns_c] {
        let s = ns.stats();
        assert_eq!(
            s.l2_hits + s.misses,
            0,
            "every tierkit read must be an L1 hit: {s:?}"
        );
    }
}

/// An L1 hit in a namespace with fail-safe, a soft timeout and eager refresh on, beside the
/// same hit with them off: the logical life they need is one atomic load on the hit path
/// (moka hands its own clock to the expiry policy), so the two should cost the same.
pub fn l1_hit_resilience(c: &mut Criterion) {
    let keys: Vec<String> = (0..L1_KEYS).map(|i| format!("event:{i}")).collect();
    let value = payload(1, 200);
    for (flavor, rt) in runtimes() {
        let mut group = c.benchmark_group(format!("l1_hit_resilience/{flavor}"));
        group.throughput(Throughput::Elements(1));
        let moka: moka::sync::Cache<String, Arc<Payload>> = moka::sync::Cache::new(1 << 20);
        let kit = Tierkit::new(Config::builder().l1_capacity(1 << 30).build().unwrap()).unwrap();
        let plain = kit.namespace::<Payload>("plain").build().unwrap();
        let resilient = kit
            .namespace::<Payload>("resilient")
            .fail_safe(Duration::from_secs(3600))
            .soft_timeout(Duration::from_millis(100))
            .hard_timeout(Duration::from_secs(2))
            .eager_refresh(EagerRefresh::after(0.9))
            .build()
            .unwrap();
        rt.block_on(async {
            for k in &keys {
                moka.insert(k.clone(), Arc::new(value.clone()));
                plain.set(k, value.clone()).await.unwrap();
                resilient.set(k, value.clone()).await.unwrap();
            }
        });
        let next = AtomicUsize::new(0);
        group.bench_function("raw_moka_get", |b| {
            b.to_async(&rt).iter(|| async {
                let k = &keys[cycle(&next, L1_KEYS)];
                moka.get(k).expect("present")
            })
        });
        for (name, ns) in [("off", &plain), ("on", &resilient)] {
            group.bench_function(format!("tierkit_get/{name}"), |b| {
                b.to_async(&rt).iter(|| async {
                    let k = &keys[cycle(&next, L1_KEYS)];
                    ns.get(k).await.expect("present")
                })
            });
            group.bench_function(format!("tierkit_get_or_set/{name}"), |b| {
                b.to_async(&rt).iter(|| async {
                    let k = &keys[cycle(&next, L1_KEYS)];
                    ns.get_or_set(k, || async {
                        Err::<Payload, std::io::Error>(std::io::Error::other("never"))
                    })
                    .await
                    .expect("present")
                })
            });
        }
        group.finish();
        for ns in [&plain, &resilient] {
            let s = ns.stats();
            assert_eq!(
                s.l2_hits + s.misses + s.loader_calls,
                0,
                "every read must be an L1 hit: {s:?}"
            );
        }
    }
}

/// A raw client doing by hand what a tierkit L2 hit does: GET, then zstd (reused context)
/// where the stored value is compressed, then bincode. On redis-rs's multiplexed connection
/// (the fastest), or on the `ConnectionManager` around one that tierkit uses to reconnect.
struct Raw<C = redis::aio::MultiplexedConnection> {
    conn: C,
}

impl<C: redis::aio::ConnectionLike + Send> Raw<C> {
    async fn get(&mut self, key: &str) -> Payload {
        let bytes: Vec<u8> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn)
            .await
            .unwrap();
        decode_raw(&bytes)
    }
}

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<zstd::bulk::Decompressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().unwrap());
}

/// Stored by the raw baseline as: 1 flag byte (1 = zstd), 4-byte LE length, then the body.
fn encode_raw(value: &Payload, compress: bool) -> Vec<u8> {
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap();
    let mut out = vec![compress as u8];
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    if compress {
        out.extend_from_slice(&zstd::bulk::compress(&body, 1).unwrap());
    } else {
        out.extend_from_slice(&body);
    }
    out
}

fn decode_raw(bytes: &[u8]) -> Payload {
    let len = u32::from_le_bytes(bytes[1..5].try_into().unwrap()) as usize;
    let decode = |body: &[u8]| {
        bincode::serde::decode_from_slice(body, bincode::config::standard())
            .unwrap()
            .0
    };
    if bytes[0] == 1 {
        DECOMPRESSOR.with(|d| decode(&d.borrow_mut().decompress(&bytes[5..], len).unwrap()))
    } else {
        decode(&bytes[5..])
    }
}

pub fn l2_hit(c: &mut Criterion) {
    let server = RedisServer::start();
    for (flavor, rt) in runtimes() {
        for size in [1024usize, 16 * 1024] {
            let mut group = c.benchmark_group(format!("l2_hit_{}KiB/{flavor}", size / 1024));
            group.throughput(Throughput::Elements(1));
            let keys: Vec<String> = (0..L2_KEYS).map(|i| i.to_string()).collect();
            let raw_keys: Vec<String> = keys.iter().map(|k| format!("raw:{k}")).collect();

            // A full L1 (64 KiB) far smaller than the 1,000 values read in turn: every read
            // misses L1, goes to Redis, and fills L1 by evicting an older entry, as an L2 hit in
            // a service with a full L1 does.
            let config = Config::builder()
                .redis_url(server.url())
                .l1_capacity(L1_FULL)
                .build()
                .unwrap();
            // The same, with per-namespace eviction counts (a moka eviction listener).
            let counted = Config::builder()
                .redis_url(server.url())
                .l1_capacity(L1_FULL)
                .l1_eviction_counts(true)
                .build()
                .unwrap();
            let (kit, ns, raw) = rt.block_on(async {
                let kit = crate::support::connected_with(config).await;
                let ns = kit
                    .namespace::<Payload>(format!("bench{size}"))
                    .build()
                    .unwrap();
                let mut conn = server.fastest_connection().await;
                let mut compressed = false;
                for (i, (k, rk)) in keys.iter().zip(&raw_keys).enumerate() {
                    let v = payload(i as u64, size);
                    compressed = kit.codec().encode_with_info(&v).unwrap().1.compressed;
                    ns.set(k, v.clone()).await.unwrap();
                    let _: () = redis::cmd("SET")
                        .arg(rk)
                        .arg(encode_raw(&v, compressed))
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                }
                eprintln!(
                    "l2_hit_{}KiB: tierkit stores it compressed: {compressed}",
                    size / 1024
                );
                (kit, ns, Raw { conn })
            });
            let (kit_c, ns_c) = rt.block_on(async {
                let kit = crate::support::connected_with(counted).await;
                let ns = kit
                    .namespace::<Payload>(format!("bench{size}"))
                    .build()
                    .unwrap();
                (kit, ns)
            });

            let next = AtomicUsize::new(0);
            let raw_conn = raw.conn;
            group.bench_function(
                BenchmarkId::new("raw_redis_get_decode", "sequential"),
                |b| {
                    b.to_async(&rt).iter(|| async {
                        let k = &raw_keys[cycle(&next, L2_KEYS)];
                        // A clone per call, as tierkit clones its connection handle per call.
                        Raw {
                            conn: raw_conn.clone(),
                        }
                        .get(k)
                        .await
                    })
                },
            );
            // The raw read plus each value put into a full, evicting moka cache (default
            // configuration): what an L1 fill costs on its own.
            let raw_l1: moka::sync::Cache<String, Arc<Payload>> = moka::sync::Cache::new(64);
            group.bench_function(
                BenchmarkId::new("raw_redis_get_decode_moka_insert", "sequential"),
                |b| {
                    b.to_async(&rt).iter(|| async {
                        let k = &raw_keys[cycle(&next, L2_KEYS)];
                        let value = Raw {
                            conn: raw_conn.clone(),
                        }
                        .get(k)
                        .await;
                        raw_l1.insert(k.clone(), Arc::new(value));
                    })
                },
            );
            group.bench_function(BenchmarkId::new("tierkit_get", "sequential"), |b| {
                b.to_async(&rt).iter(|| async {
                    let k = &keys[cycle(&next, L2_KEYS)];
                    ns.get(k).await.expect("present")
                })
            });
            group.bench_function(
                BenchmarkId::new("tierkit_get_eviction_counts", "sequential"),
                |b| {
                    b.to_async(&rt).iter(|| async {
                        let k = &keys[cycle(&next, L2_KEYS)];
                        ns_c.get(k).await.expect("present")
                    })
                },
            );

            // 64 tasks sharing one multiplexed connection: throughput, not latency.
            let raw_keys = Arc::new(raw_keys);
            let keys = Arc::new(keys);
            group.throughput(Throughput::Elements(TASKS as u64));
            let (conn, rk) = (raw_conn.clone(), raw_keys.clone());
            bench_64(&mut group, &rt, "raw_redis_get_decode", move |i| {
                let (mut raw, rk) = (Raw { conn: conn.clone() }, rk.clone());
                async move {
                    raw.get(&rk[i % L2_KEYS]).await;
                }
            });
            // The same read bounded by a tokio timeout, as tierkit bounds every call by its
            // `op_timeout`: what a timer per call costs.
            let (conn, rk) = (raw_conn.clone(), raw_keys.clone());
            bench_64(&mut group, &rt, "raw_redis_get_decode_timeout", move |i| {
                let (mut raw, rk) = (Raw { conn: conn.clone() }, rk.clone());
                async move {
                    tokio::time::timeout(Duration::from_millis(500), raw.get(&rk[i % L2_KEYS]))
                        .await
                        .expect("in time");
                }
            });
            // The same read through a `ConnectionManager` configured as tierkit's (no response
            // timer, no retries): the reconnecting handle's own cost per call.
            let manager = rt.block_on(async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_number_of_retries(0)
                    .set_response_timeout(None);
                redis::aio::ConnectionManager::new_with_config(server.client(), config)
                    .await
                    .expect("connection manager")
            });
            let rk = raw_keys.clone();
            bench_64(
                &mut group,
                &rt,
                "raw_redis_get_decode_connection_manager",
                move |i| {
                    let (mut raw, rk) = (
                        Raw {
                            conn: manager.clone(),
                        },
                        rk.clone(),
                    );
                    async move {
                        raw.get(&rk[i % L2_KEYS]).await;
                    }
                },
            );
            let (conn, rk, l1) = (raw_conn.clone(), raw_keys.clone(), raw_l1.clone());
            bench_64(
                &mut group,
                &rt,
                "raw_redis_get_decode_moka_insert",
                move |i| {
                    let (mut raw, rk, l1) = (Raw { conn: conn.clone() }, rk.clone(), l1.clone());
                    async move {
                        let k = &rk[i % L2_KEYS];
                        let value = raw.get(k).await;
                        l1.insert(k.clone(), Arc::new(value));
                    }
                },
            );
            for (name, ns) in [("tierkit_get", &ns), ("tierkit_get_eviction_counts", &ns_c)] {
                // Shared as a service shares it between tasks: one handle clone per call, as the
                // raw reads clone their connection (a `Namespace` clone is several `Arc`s).
                let (ns, keys) = (Arc::new(ns.clone()), keys.clone());
                bench_64(&mut group, &rt, name, move |i| {
                    let (ns, keys) = (ns.clone(), keys.clone());
                    async move {
                        ns.get(&keys[i % L2_KEYS]).await.expect("present");
                    }
                });
            }
            group.finish();
            drop(kit_c);
            let s = ns.stats();
            eprintln!(
                "l2_hit_{}KiB/{flavor}: {} L2 hits, {} L1 hits (should be ~0)",
                size / 1024,
                s.l2_hits,
                s.l1_hits
            );
            drop(kit);
        }
    }
}

/// Benches `call` as `TASKS` concurrent tasks: `<name>/64_tasks` in `group`.
fn bench_64<F, Fut>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    call: F,
) where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    group.bench_function(BenchmarkId::new(name, "64_tasks"), |b| {
        b.to_async(rt)
            .iter_custom(|iters| concurrent(iters, call.clone()))
    });
}

/// Runs `iters` rounds of `TASKS` concurrent calls and returns the time they took.
pub async fn concurrent<F, Fut>(iters: u64, call: F) -> Duration
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let call = call.clone();
            tokio::spawn(async move {
                for i in 0..iters as usize {
                    call(t * 7919 + i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

/// Cache-aside on a key nobody asked for yet: tierkit `get_or_set` (L1 miss, L2 miss, loader,
/// L2 fill) next to a raw `GET` miss plus a raw `SET` of the encoded value.
pub fn get_or_set_cold(c: &mut Criterion) {
    let server = RedisServer::start();
    for (flavor, rt) in runtimes() {
        let mut group = c.benchmark_group(format!("get_or_set_cold/{flavor}"));
        group.throughput(Throughput::Elements(1));
        let (kit, ns, conn) = rt.block_on(async {
            let kit = crate::support::connected_with(
                Config::builder().redis_url(server.url()).build().unwrap(),
            )
            .await;
            let ns = kit
                .namespace::<Payload>(format!("cold_{flavor}"))
                .build()
                .unwrap();
            let conn = server.fastest_connection().await;
            (kit, ns, conn)
        });
        let value = payload(1, 200);
        let codec = kit.codec().clone();
        let next = AtomicUsize::new(0);
        group.bench_function("raw_get_miss_then_set", |b| {
            b.to_async(&rt).iter(|| async {
                let key = format!("raw:cold:{flavor}:{}", next.fetch_add(1, Ordering::Relaxed));
                let mut conn = conn.clone();
                let found: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert!(found.is_none());
                let bytes = codec.encode(&value).unwrap();
                let _: () = redis::cmd("SET")
                    .arg(&key)
                    .arg(bytes)
                    .arg("PX")
                    .arg(3_600_000)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            })
        });
        group.bench_function("tierkit_get_or_set", |b| {
            b.to_async(&rt).iter(|| async {
                let key = next.fetch_add(1, Ordering::Relaxed).to_string();
                let v = value.clone();
                ns.get_or_set(&key, || async move { Ok::<_, std::io::Error>(v) })
                    .await
                    .unwrap()
            })
        });
        group.finish();
        drop(kit);
    }
}

/// Write-through: tierkit `set` (L1, then `SET` and the backplane `PUBLISH` in one round trip)
/// next to a raw `SET` of the same encoded bytes.
pub fn set(c: &mut Criterion) {
    let server = RedisServer::start();
    for (flavor, rt) in runtimes() {
        let mut group = c.benchmark_group(format!("set/{flavor}"));
        group.throughput(Throughput::Elements(1));
        let (kit, ns, conn) = rt.block_on(async {
            let kit = crate::support::connected_with(
                Config::builder().redis_url(server.url()).build().unwrap(),
            )
            .await;
            let ns = kit.namespace::<Payload>("set").build().unwrap();
            let conn = server.fastest_connection().await;
            (kit, ns, conn)
        });
        let keys: Vec<String> = (0..L2_KEYS).map(|i| i.to_string()).collect();
        let value = payload(1, 200);
        let codec = kit.codec().clone();
        let next = AtomicUsize::new(0);
        group.bench_function("raw_set", |b| {
            b.to_async(&rt).iter(|| async {
                let key = format!("raw:set:{}", keys[cycle(&next, L2_KEYS)]);
                let bytes = codec.encode(&value).unwrap();
                let mut conn = conn.clone();
                let _: () = redis::cmd("SET")
                    .arg(key)
                    .arg(bytes)
                    .arg("PX")
                    .arg(3_600_000)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            })
        });
        group.bench_function("tierkit_set", |b| {
            b.to_async(&rt).iter(|| async {
                ns.set(&keys[cycle(&next, L2_KEYS)], value.clone())
                    .await
                    .unwrap()
            })
        });
        group.finish();
        drop(kit);
    }
}

/// Coherence by the backplane against server-assisted tracking (`client_tracking`), one
/// current-thread runtime: what a write costs the writer (a write and a read back on the same
/// instance; with tracking the server's push drops the writer's own copy), and how long after
/// a write another instance serves the change (polled with `get`, which pays one L2 read once
/// the copy is gone). The raw baseline is one `SET` and one `GET` round trip: no instance can
/// see a change sooner.
pub fn coherence(c: &mut Criterion) {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("coherence/current_thread");
    let value = payload(1, 200);
    let (plain_a, plain_b, tracked_a, tracked_b, conn) = rt.block_on(async {
        let kit = |tracking: bool| {
            crate::support::connected_with(
                Config::builder()
                    .redis_url(server.url())
                    .client_tracking(tracking)
                    .build()
                    .unwrap(),
            )
        };
        let (pa, pb, ta, tb) = (
            kit(false).await,
            kit(false).await,
            kit(true).await,
            kit(true).await,
        );
        (pa, pb, ta, tb, server.fastest_connection().await)
    });
    let ns = |kit: &Tierkit, name: &str| kit.namespace::<Payload>(name).build().unwrap();
    let next = AtomicUsize::new(0);
    group.bench_function("raw_set_get", |b| {
        b.to_async(&rt).iter(|| async {
            let mut conn = conn.clone();
            let key = format!("raw:coh:{}", cycle(&next, L2_KEYS));
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(b"v")
                .query_async(&mut conn)
                .await
                .unwrap();
            let _: Vec<u8> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
        })
    });
    for (mode, kit) in [("backplane", &plain_a), ("tracking", &tracked_a)] {
        let ns = ns(kit, "coh-write");
        group.bench_function(format!("set_then_get/{mode}"), |b| {
            b.to_async(&rt).iter(|| async {
                let key = (cycle(&next, 1000)).to_string();
                ns.set(&key, value.clone()).await.unwrap();
                ns.get(&key).await.expect("present")
            })
        });
    }
    // Another instance sees a tierkit write: through the backplane, or the tracking push.
    for (mode, (writer, reader)) in [
        ("backplane", (&plain_b, &plain_a)),
        ("tracking", (&tracked_b, &tracked_a)),
    ] {
        let (w, r) = (ns(writer, "coh-seen"), ns(reader, "coh-seen"));
        let round = AtomicUsize::new(0);
        group.bench_function(format!("write_seen_elsewhere/{mode}"), |b| {
            b.to_async(&rt).iter(|| async {
                let n = round.fetch_add(1, Ordering::Relaxed) as u64;
                let mut v = value.clone();
                v.id = n;
                w.set("k", v).await.unwrap();
                while r.get("k").await.map(|h| h.id) != Some(n) {
                    tokio::task::yield_now().await;
                }
            })
        });
    }
    // A write by another program: only tracking sees it.
    let r = ns(&tracked_a, "coh-ext");
    let redis_key = r.redis_key("k");
    group.bench_function("foreign_write_seen/tracking", |b| {
        b.to_async(&rt).iter(|| async {
            r.set("k", value.clone()).await.unwrap();
            while r.get("k").await.is_none() {
                tokio::task::yield_now().await;
            }
            let mut conn = conn.clone();
            let _: () = redis::cmd("SET")
                .arg(&redis_key)
                .arg(b"foreign")
                .query_async(&mut conn)
                .await
                .unwrap();
            while r.get("k").await.is_some() {
                tokio::task::yield_now().await;
            }
        })
    });
    group.finish();
}

/// 100 keys at once from Redis: tierkit `get_many` (every key an L1 miss) next to a raw
/// pipeline of 100 `GET`s with the same decoding.
pub fn get_many(c: &mut Criterion) {
    let server = RedisServer::start();
    for (flavor, rt) in runtimes() {
        let mut group = c.benchmark_group(format!("get_many_100/{flavor}"));
        group.throughput(Throughput::Elements(100));
        let keys: Vec<String> = (0..MANY_KEYS).map(|i| i.to_string()).collect();
        let (kit, ns, conn) = rt.block_on(async {
            // The 2,000 values (about 0.5 MB) never fit the 64 KiB L1: each batch of 100 misses
            // L1 and fills it, as in l2_hit.
            let config = Config::builder()
                .redis_url(server.url())
                .l1_capacity(L1_FULL)
                .build()
                .unwrap();
            let kit = crate::support::connected_with(config).await;
            let ns = kit.namespace::<Payload>("many").build().unwrap();
            ns.set_many(
                keys.iter()
                    .enumerate()
                    .map(|(i, k)| (k.clone(), payload(i as u64, 200))),
            )
            .await
            .unwrap();
            // The raw client's copies, encoded as a hand-written client would (compressed
            // where tierkit's codec compresses too).
            let mut conn = server.fastest_connection().await;
            for (i, k) in keys.iter().enumerate() {
                let v = payload(i as u64, 200);
                let compressed = kit.codec().encode_with_info(&v).unwrap().1.compressed;
                let _: () = redis::cmd("SET")
                    .arg(format!("raw:many:{k}"))
                    .arg(encode_raw(&v, compressed))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
            (kit, ns, conn)
        });
        // The same, with per-namespace eviction counts (a moka eviction listener).
        let (kit_c, ns_c) = rt.block_on(async {
            let config = Config::builder()
                .redis_url(server.url())
                .l1_capacity(L1_FULL)
                .l1_eviction_counts(true)
                .build()
                .unwrap();
            let kit = crate::support::connected_with(config).await;
            let ns = kit.namespace::<Payload>("many").build().unwrap();
            (kit, ns)
        });
        let batches: Vec<&[String]> = keys.chunks(100).collect();
        let redis_batches: Vec<Vec<String>> = batches
            .iter()
            .map(|b| b.iter().map(|k| format!("raw:many:{k}")).collect())
            .collect();
        let next = AtomicUsize::new(0);
        group.bench_function("raw_pipeline_get_decode", |b| {
            b.to_async(&rt).iter(|| async {
                let mut pipe = redis::pipe();
                for k in &redis_batches[cycle(&next, redis_batches.len())] {
                    pipe.cmd("GET").arg(k);
                }
                let mut conn = conn.clone();
                let found: Vec<Vec<u8>> = pipe.query_async(&mut conn).await.unwrap();
                found.iter().map(|b| decode_raw(b)).collect::<Vec<_>>()
            })
        });
        // The raw pipeline plus what tierkit adds that no Redis client does: each value put into
        // a full, evicting moka cache (default configuration), so the L1 fill's share shows.
        let raw_l1: moka::sync::Cache<String, Arc<Payload>> = moka::sync::Cache::new(64);
        group.bench_function("raw_pipeline_get_decode_moka_insert", |b| {
            b.to_async(&rt).iter(|| async {
                let i = cycle(&next, redis_batches.len());
                let mut pipe = redis::pipe();
                for k in &redis_batches[i] {
                    pipe.cmd("GET").arg(k);
                }
                let mut conn = conn.clone();
                let found: Vec<Vec<u8>> = pipe.query_async(&mut conn).await.unwrap();
                for (k, bytes) in batches[i].iter().zip(&found) {
                    let value = Arc::new(decode_raw(bytes));
                    raw_l1.insert(k.clone(), value);
                }
            })
        });
        group.bench_function("tierkit_get_many", |b| {
            b.to_async(&rt).iter(|| async {
                let batch = batches[cycle(&next, batches.len())];
                let found = ns.get_many(batch).await.into_iter().flatten().count();
                assert_eq!(found, 100);
                found
            })
        });
        group.bench_function("tierkit_get_many_eviction_counts", |b| {
            b.to_async(&rt).iter(|| async {
                let batch = batches[cycle(&next, batches.len())];
                let found = ns_c.get_many(batch).await.into_iter().flatten().count();
                assert_eq!(found, 100);
                found
            })
        });
        group.finish();
        let s = ns.stats();
        eprintln!(
            "get_many_100/{flavor}: {} L2 hits, {} L1 hits (should be ~0)",
            s.l2_hits, s.l1_hits
        );
        drop(kit);
        drop(kit_c);
    }
}

/// Reads while Redis is down (health forced `Down`) next to the same reads on an embedded,
/// L1-only instance: nothing may wait on Redis.
pub fn down_read(c: &mut Criterion) {
    for (flavor, rt) in runtimes() {
        let mut group = c.benchmark_group(format!("down_read/{flavor}"));
        group.throughput(Throughput::Elements(1));
        let keys: Vec<String> = (0..L2_KEYS).map(|i| i.to_string()).collect();
        let value = payload(1, 200);
        let (embedded, down) = rt.block_on(async {
            let embedded = Tierkit::embedded();
            // Nothing listens on port 1: the instance never connects, and health is forced Down
            // so not even the first probe's outcome matters.
            let down = Tierkit::new(
                Config::builder()
                    .redis_url("redis://127.0.0.1:1")
                    .build()
                    .unwrap(),
            )
            .unwrap();
            down.health().unwrap().force(HealthState::Down);
            (embedded, down)
        });
        let ns_embedded = embedded.namespace::<Payload>("e").build().unwrap();
        let ns_down = down.namespace::<Payload>("e").build().unwrap();
        let next = AtomicUsize::new(0);
        for (name, ns) in [
            ("l1_only_get_or_set", &ns_embedded),
            ("redis_down_get_or_set", &ns_down),
        ] {
            group.bench_function(name, |b| {
                b.to_async(&rt).iter(|| async {
                    let v = value.clone();
                    ns.get_or_set(&keys[cycle(&next, L2_KEYS)], || async move {
                        Ok::<_, std::io::Error>(v)
                    })
                    .await
                    .unwrap()
                })
            });
        }
        group.finish();
    }
}
