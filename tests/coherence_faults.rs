//! A randomized coherence test under real faults, with a checker over the recorded history.
//!
//! Three instances (one behind a TCP proxy) run random `get`, `get_or_set`, `set`,
//! `invalidate`, `invalidate_tag` and `clear` on a few keys while one fault, chosen by the
//! seed, strikes: the server hangs (SIGSTOP, keeping its data), one instance is cut off
//! (proxy blackhole, then its connections dropped), the server is killed and restarted, or
//! memory is tight (`maxmemory` with `allkeys-lru`, padded values, eviction checked). The
//! checker then asserts, over every recorded operation:
//!
//! 1. reads on one instance never go back: a read that began after another read of the key
//!    on that instance returned version n returns n or newer (or nothing);
//! 2. nothing replaced is served after the bound: a read that began more than `BOUND` after a
//!    change of its key completed (or `RECOVERY` after a fault window the change overlapped)
//!    returns nothing, or a version at least the change's floor;
//! 3. nothing is served that was never written: every version returned was drawn for that key
//!    by a `set` or a loader.
//!
//! Versions come from one counter. Every change of a key holds that key's lock (shared by all
//! instances: the test is one process) and draws under it, and loaders draw under it too, so
//! a key's versions grow in the order Redis sees its changes. Except for a change that did not
//! reach Redis (`L1Only`): Redis sees it only when it is replayed, after changes drawn later,
//! so the version it drew (and a loader read from the database) has no place in that order,
//! and rule 1 does not measure other instances' later reads against it (the instance that made
//! the change still must not go back). Rule 2 still holds such versions to the bound after the
//! fault.
//!
//! `TIERKIT_SEEDS` sets how many seeds run (default 4, one per fault), `TIERKIT_SEED` runs one;
//! each prints its seed, and a failure prints the seed and the operations involved.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use support::{RedisServer, TcpProxy};
use tierkit::cache::{Namespace, Reach, SetOptions};

const KEYS: usize = 12;
const TAGS: usize = 3;
/// The backplane's delivery bound: generous for a loaded 2-core machine, where a message can
/// wait behind a busy runtime; a healthy network delivers in milliseconds.
const BOUND: Duration = Duration::from_millis(700);
/// How long after a fault ends an instance may still serve what changed during it: failure
/// detection, reconnection, resubscription and the replay of owed changes.
const RECOVERY: Duration = Duration::from_secs(4);
const RUN: Duration = Duration::from_secs(4);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Value {
    version: u64,
    pad: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Hang,
    CutOff,
    Restart,
    Evict,
}

// `reach` and `what` are read only by failure reports, through `Debug`.
#[allow(dead_code)]
#[derive(Clone, Debug)]
enum Kind {
    Read(Option<u64>),
    /// A change and its floor: versions below it are what it replaced. `tagged_only`: a tag
    /// invalidation, which covers only versions written by tagged sets.
    Change {
        floor: u64,
        tagged_only: bool,
        reach: Reach,
        what: &'static str,
    },
}

#[derive(Clone, Debug)]
struct Op {
    instance: usize,
    key: usize,
    invoked: Instant,
    done: Instant,
    kind: Kind,
}

/// What every worker shares: the version counter, the key locks, what was drawn, the history.
struct World {
    next: AtomicU64,
    locks: Vec<tokio::sync::Mutex<()>>,
    /// Per key: every version drawn, and whether a tagged set drew it.
    drawn: Mutex<Vec<HashMap<u64, bool>>>,
    /// The "database" a loader reads: per loaded key, its current version.
    db: Mutex<Vec<u64>>,
    history: Mutex<Vec<Op>>,
    pad: usize,
}

impl World {
    fn draw(&self, key: usize, tagged: bool) -> u64 {
        let v = self.next.fetch_add(1, Ordering::SeqCst);
        self.drawn.lock().unwrap()[key].insert(v, tagged);
        v
    }

    fn value(&self, version: u64, rng: &mut fastrand::Rng) -> Value {
        Value {
            version,
            pad: (0..self.pad).map(|_| rng.u8(..)).collect(),
        }
    }

    /// The service changed `key`'s data (before invalidating it): a loaded key's database
    /// moves to a fresh version. Returns the floor: every version drawn before is replaced.
    fn changed(&self, key: usize) -> u64 {
        if key < TAGGED {
            return self.next.load(Ordering::SeqCst);
        }
        let v = self.draw(key, false);
        self.db.lock().unwrap()[key] = v;
        v
    }

    fn record(&self, op: Op) {
        self.history.lock().unwrap().push(op);
    }
}

/// Keys below `TAGGED` are written with a tag and only read (`get`): their values come from
/// tagged sets alone, which is what a tag invalidation retires. The others are loaded
/// (`get_or_set`, whose entries carry no tags) from the "database", written untagged, and
/// invalidated by key or clear; every such change also changes the database, as a service
/// changes its data and then the cache.
const TAGGED: usize = KEYS / 2;

fn tag_of(key: usize) -> String {
    format!("t{}", key % TAGS)
}

/// One worker: random operations on `ns` (instance `instance`) until `stop`.
async fn work(
    world: Arc<World>,
    ns: Namespace<Value>,
    instance: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while !stop.load(Ordering::Relaxed) {
        let key = rng.usize(..KEYS);
        let tagged = key < TAGGED;
        let name = key.to_string();
        let invoked = Instant::now();
        let op = |kind, done| Op {
            instance,
            key,
            invoked,
            done,
            kind,
        };
        match rng.u8(..100) {
            0..=29 => {
                let got = ns.get(&name).await.map(|h| h.version);
                world.record(op(Kind::Read(got), Instant::now()));
            }
            30..=59 if !tagged => {
                let (w, seed) = (world.clone(), rng.u64(..));
                let got = ns
                    .get_or_set(&name, move || async move {
                        let _held = w.locks[key].lock().await;
                        let v = w.db.lock().unwrap()[key];
                        Ok::<_, std::io::Error>(w.value(v, &mut fastrand::Rng::with_seed(seed)))
                    })
                    .await
                    .map(|h| h.version)
                    .ok();
                world.record(op(Kind::Read(got), Instant::now()));
            }
            30..=84 => {
                let _held = world.locks[key].lock().await;
                let v = world.draw(key, tagged);
                world.db.lock().unwrap()[key] = v;
                let value = world.value(v, &mut rng);
                let opts = if tagged {
                    SetOptions::new().tag(tag_of(key))
                } else {
                    SetOptions::new()
                };
                let reach = ns.set_with(&name, value, opts).await.unwrap();
                let kind = Kind::Change {
                    floor: v,
                    tagged_only: false,
                    reach,
                    what: "set",
                };
                world.record(op(kind, Instant::now()));
            }
            85..=92 => {
                let _held = world.locks[key].lock().await;
                let floor = world.changed(key);
                let reach = ns.invalidate(&name).await.unwrap();
                let kind = Kind::Change {
                    floor,
                    tagged_only: false,
                    reach,
                    what: "invalidate",
                };
                world.record(op(kind, Instant::now()));
            }
            93..=97 => {
                let tag = key % TAGS;
                let covered: Vec<usize> = (0..TAGGED).filter(|k| k % TAGS == tag).collect();
                many(&world, &covered, instance, true, || async {
                    ns.invalidate_tag(&format!("t{tag}")).await.unwrap()
                })
                .await;
            }
            _ => {
                let all: Vec<usize> = (0..KEYS).collect();
                many(&world, &all, instance, false, || async {
                    ns.clear().await.unwrap().0
                })
                .await;
            }
        }
        if rng.bool() {
            tokio::task::yield_now().await;
        }
    }
}

/// A change of many keys: holds their locks (in key order), records one change per key.
async fn many<F, Fut>(world: &World, keys: &[usize], instance: usize, tagged_only: bool, change: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Reach>,
{
    let mut held = Vec::new();
    for &k in keys {
        held.push(world.locks[k].lock().await);
    }
    let invoked = Instant::now();
    let floors: Vec<u64> = keys.iter().map(|&k| world.changed(k)).collect();
    let reach = change().await;
    let done = Instant::now();
    for (&key, floor) in keys.iter().zip(floors) {
        world.record(Op {
            instance,
            key,
            invoked,
            done,
            kind: Kind::Change {
                floor,
                tagged_only,
                reach,
                what: if tagged_only {
                    "invalidate_tag"
                } else {
                    "clear"
                },
            },
        });
    }
}

/// The checker: the first violation found, described, or `None`.
fn check(
    ops: &[Op],
    drawn: &[HashMap<u64, bool>],
    faults: &[(Instant, Instant)],
) -> Option<(usize, Instant, String)> {
    let reads: Vec<&Op> = ops
        .iter()
        .filter(|o| matches!(o.kind, Kind::Read(Some(_))))
        .collect();
    let version = |o: &Op| match o.kind {
        Kind::Read(Some(v)) => v,
        _ => 0,
    };
    // 3. Nothing that was never written.
    for r in &reads {
        if !drawn[r.key].contains_key(&version(r)) {
            return Some((r.key, r.invoked, format!("never written: {r:?}")));
        }
    }
    // 1. Per-instance monotonic reads: per instance and key, in order of invocation, each
    // read against the highest version returned by a read that completed before it began.
    // Versions drawn by changes Redis did not take: (key, version) -> the changing instance.
    let unordered: HashMap<(usize, u64), usize> = ops
        .iter()
        .filter_map(|o| match o.kind {
            Kind::Change {
                floor,
                reach: Reach::L1Only,
                ..
            } => Some(((o.key, floor), o.instance)),
            _ => None,
        })
        .collect();
    let mut by_stream: HashMap<(usize, usize), Vec<&Op>> = HashMap::new();
    for r in &reads {
        by_stream.entry((r.instance, r.key)).or_default().push(r);
    }
    for stream in by_stream.values_mut() {
        stream.sort_by_key(|o| o.invoked);
        let mut by_done: Vec<&Op> = stream.clone();
        by_done.sort_by_key(|o| o.done);
        let (mut seen, mut highest): (usize, Option<&Op>) = (0, None);
        for b in stream.iter() {
            while seen < by_done.len() && by_done[seen].done < b.invoked {
                let a = by_done[seen];
                let ordered = unordered
                    .get(&(a.key, version(a)))
                    .is_none_or(|&by| by == a.instance);
                if ordered && highest.is_none_or(|h| version(a) > version(h)) {
                    highest = Some(a);
                }
                seen += 1;
            }
            if let Some(a) = highest.filter(|a| version(b) < version(a)) {
                return Some((
                    b.key,
                    b.invoked,
                    format!("went back:\n  {a:?}\n  then {b:?}"),
                ));
            }
        }
    }
    // 2. Nothing replaced after the bound.
    for c in ops {
        let Kind::Change {
            floor, tagged_only, ..
        } = c.kind
        else {
            continue;
        };
        let overlaps =
            |(start, end): &(Instant, Instant)| *start <= c.done + BOUND && c.invoked <= *end;
        let from = match faults.iter().filter(|f| overlaps(f)).map(|f| f.1).max() {
            Some(end) => end.max(c.done) + RECOVERY,
            None => c.done + BOUND,
        };
        for r in reads.iter().filter(|r| r.key == c.key && r.invoked > from) {
            let v = version(r);
            let replaced = v < floor && (!tagged_only || drawn[r.key].get(&v) == Some(&true));
            if replaced {
                return Some((
                    r.key,
                    r.invoked,
                    format!("served what a change replaced:\n  {c:?}\n  {r:?}"),
                ));
            }
        }
    }
    None
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("TIERKIT_SEED") {
        return vec![seed.parse().expect("TIERKIT_SEED is a number")];
    }
    let n: u64 = std::env::var("TIERKIT_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4);
    let base = fastrand::u64(..1 << 32) & !3;
    (0..n).map(|i| base + i).collect()
}

fn fault_of(seed: u64) -> Fault {
    [Fault::Hang, Fault::CutOff, Fault::Restart, Fault::Evict][(seed % 4) as usize]
}

async fn run(seed: u64) {
    let fault = fault_of(seed);
    eprintln!("coherence_faults: seed {seed} ({fault:?}); TIERKIT_SEED={seed} reruns it");
    let mut server = match fault {
        Fault::Evict => {
            RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"])
        }
        _ => RedisServer::start(),
    };
    let proxy = TcpProxy::start(&server.addr());
    let mut kits = Vec::new();
    for url in [server.url(), server.url(), proxy.url()] {
        kits.push(support::connected(&url).await);
    }
    let world = Arc::new(World {
        next: AtomicU64::new(1),
        locks: (0..KEYS).map(|_| tokio::sync::Mutex::new(())).collect(),
        drawn: Mutex::new(vec![HashMap::new(); KEYS]),
        db: Mutex::new(vec![0; KEYS]),
        history: Mutex::new(Vec::new()),
        pad: if fault == Fault::Evict { 2048 } else { 0 },
    });
    for key in TAGGED..KEYS {
        world.changed(key);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let mut rng = fastrand::Rng::with_seed(seed);
    for (i, kit) in kits.iter().enumerate() {
        let ns = kit.namespace::<Value>("c").build().unwrap();
        for _ in 0..2 {
            workers.push(tokio::spawn(work(
                world.clone(),
                ns.clone(),
                i,
                rng.u64(..),
                stop.clone(),
            )));
        }
    }
    // Eviction needs memory pressure: a bystander fills Redis with its own padded entries.
    let filler = (fault == Fault::Evict).then(|| {
        let ns = kits[0].namespace::<Vec<u8>>("filler").build().unwrap();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut i, mut rng) = (0u64, fastrand::Rng::with_seed(seed));
            while !stop.load(Ordering::Relaxed) {
                // Random, so compression cannot shrink it.
                let value: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
                let _ = ns.set(&i.to_string(), value).await;
                i += 1;
            }
        })
    });

    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(rng.u64(500..1200))).await;
    let fault_start = Instant::now();
    let outage = Duration::from_millis(rng.u64(500..1500));
    match fault {
        Fault::Hang => {
            server.hang();
            tokio::time::sleep(outage).await;
            server.resume();
        }
        Fault::CutOff => {
            proxy.blackhole(true);
            tokio::time::sleep(outage).await;
            proxy.drop_connections();
            proxy.blackhole(false);
        }
        Fault::Restart => {
            server.stop();
            tokio::time::sleep(outage).await;
            server.restart();
        }
        Fault::Evict => tokio::time::sleep(outage).await,
    }
    let faults = match fault {
        Fault::Evict => Vec::new(),
        _ => vec![(fault_start, Instant::now())],
    };
    tokio::time::sleep(RUN.saturating_sub(started.elapsed()).max(RECOVERY + BOUND)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    if let Some(filler) = filler {
        filler.await.unwrap();
        let evicted = server.evicted_keys().await;
        assert!(evicted > 0, "seed {seed}: nothing was evicted");
    }
    let ops = world.history.lock().unwrap().clone();
    let drawn = world.drawn.lock().unwrap().clone();
    let reads = ops
        .iter()
        .filter(|o| matches!(o.kind, Kind::Read(Some(_))))
        .count();
    let distinct: HashSet<usize> = ops.iter().map(|o| o.instance).collect();
    eprintln!(
        "coherence_faults: seed {seed}: {} operations, {reads} reads with a value, {} instances",
        ops.len(),
        distinct.len()
    );
    assert!(reads > 100, "seed {seed}: too few reads to judge ({reads})");
    if let Some((key, around, violation)) = check(&ops, &drawn, &faults) {
        // The key's operations on every instance around the violation, oldest first.
        let mut context: Vec<&Op> = ops
            .iter()
            .filter(|o| {
                o.key == key
                    && o.done + Duration::from_millis(30) >= around
                    && o.invoked <= around + Duration::from_millis(10)
            })
            .collect();
        context.sort_by_key(|o| o.invoked);
        let lines: Vec<String> = context
            .iter()
            .map(|o| {
                format!(
                    "  +{:>7.3} ms .. +{:>7.3} ms  instance {}  {:?}",
                    o.invoked.saturating_duration_since(started).as_secs_f64() * 1e3,
                    o.done.saturating_duration_since(started).as_secs_f64() * 1e3,
                    o.instance,
                    o.kind
                )
            })
            .collect();
        panic!(
            "seed {seed} ({fault:?}): {violation}\nkey {key} around it:\n{}",
            lines.join("\n")
        );
    }
    drop(kits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coherence_holds_under_faults() {
    support::init_tracing();
    for seed in seeds() {
        run(seed).await;
    }
}

/// The checker has teeth: each rule catches a hand-made history that breaks it.
#[test]
fn the_checker_catches_each_kind_of_violation() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let read = |instance, ms: u64, v| Op {
        instance,
        key: 0,
        invoked: at(ms),
        done: at(ms + 1),
        kind: Kind::Read(Some(v)),
    };
    let set = |ms: u64, v| Op {
        instance: 0,
        key: 0,
        invoked: at(ms),
        done: at(ms + 1),
        kind: Kind::Change {
            floor: v,
            tagged_only: false,
            reach: Reach::AllTiers,
            what: "set",
        },
    };
    let drawn = vec![HashMap::from([(1, true), (2, true)])];
    let found = |ops: &[Op], faults: &[(Instant, Instant)]| check(ops, &drawn, faults).map(|v| v.2);
    let history = [set(0, 1), read(1, 10, 1), set(20, 2), read(1, 5000, 2)];
    assert!(found(&history, &[]).is_none());
    let never = found(&[read(1, 10, 3)], &[]).unwrap();
    assert!(never.contains("never written"));
    let back = found(&[read(1, 10, 2), read(1, 20, 1)], &[]).unwrap();
    assert!(back.contains("went back"));
    // A version drawn by a change Redis did not take is outside Redis's order.
    let mut owed = set(0, 2);
    if let Kind::Change { reach, .. } = &mut owed.kind {
        *reach = Reach::L1Only;
    }
    assert!(found(&[owed.clone(), read(1, 10, 2), read(1, 20, 1)], &[]).is_none());
    let own = found(&[owed, read(0, 10, 2), read(0, 20, 1)], &[]).unwrap();
    assert!(
        own.contains("went back"),
        "not on the instance that made it"
    );
    // Reads that overlap may return either order.
    assert!(found(&[read(1, 10, 2), read(1, 11, 1)], &[]).is_none());
    // Another instance may lag behind within the bound, not after it.
    assert!(found(&[set(0, 2), read(1, 100, 1)], &[]).is_none());
    let stale = found(&[set(0, 2), read(1, 5000, 1)], &[]).unwrap();
    assert!(stale.contains("replaced"));
    // A fault the change overlapped extends the bound to its end plus the recovery.
    let fault = [(at(0), at(3000))];
    assert!(found(&[set(0, 2), read(1, 5000, 1)], &fault).is_none());
    assert!(found(&[set(0, 2), read(1, 8000, 1)], &fault).is_some());
}
