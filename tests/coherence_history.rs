//! Cache coherence under real faults (issue 13): never serve what an acknowledged write or
//! invalidation replaced. Random histories of reads, loads, writes and invalidations run on
//! three instances while the server hangs, is killed and restarted with its data, one instance
//! is cut off, or Redis evicts under memory pressure. Every operation is recorded with its
//! start, end and result, and the whole history is checked afterwards, as Jepsen's checkers do.
//!
//! The model. The cache fronts a "database" of one row per key, holding a version drawn from
//! one global counter. Every change of a key holds the row's lock for its whole call and puts
//! a fresh version in the row before calling the cache (write-through: database, then cache):
//! `set` stores that version; `invalidate` and `clear` drop what the cache holds (the row
//! changed). A `get_or_set` loader reads the row under the same lock. So a key's versions grow
//! in the order its changes reach Redis, and "older" means a smaller version. (Loaders read the
//! row rather than draw versions of their own: two loads with no change in between return the
//! same database value, as they would in a real service, so the checker never blames the cache
//! for two loaders that raced without a change.) `invalidate_tag` holds the rows of its tag's
//! keys but changes none: it promises to remove the entries written with the tag, and those
//! are exactly the values `set` wrote before it began; a `get_or_set` fill carries no tag, so
//! a tag invalidation may rightly leave one in place.
//!
//! What the checker holds the cache to:
//! 1. Monotonic reads per instance: a read that starts after another read of the same key on
//!    the same instance ended never returns an older version, except while a fault lasts and
//!    for [`RECOVERY_BOUND`] after it.
//! 2. No stale value after the bound: a read never returns a version older than what a change
//!    of its key put in the row, once the change has had [`DELIVERY_BOUND`] to reach every
//!    instance; when a fault overlaps the change (or the change reached only this instance's
//!    L1, `Reach::L1Only`), once [`RECOVERY_BOUND`] has passed after the fault ended. A tag
//!    invalidation, under the same bounds, forbids the tagged values `set` wrote before it.
//! 3. No value that was never written: every version returned for a key was put in that key's
//!    row (a tagged one by a `set`), and not after the read ended.
//!
//! A fault is a time the test made one (its start to its end), or a time an instance itself
//! saw it was not coherent (health not Up, or the backplane not subscribed): the library says
//! its L1 copies may go stale then, and a loaded machine can cause one without any fault made
//! by the test. The workload (see [`pick`]) alternates storms of changes, which make changes
//! race reads, loads and each other, with drizzles and calms, in which what a race or a fault
//! left behind stays long enough to be read past the bounds.
//!
//! `TIERKIT_SEEDS=n` runs seeds `0..n` of each history (default [`DEFAULT_SEEDS`]);
//! `TIERKIT_SEED=s` replays the one a failure names (the choices replay; Redis's and the
//! machine's timing do not). `TIERKIT_HISTORY_DIR=dir` writes every history there, one
//! readable line per operation.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use support::{fast_builder, ready, RedisServer, TcpProxy};
use tierkit::cache::{Namespace, Reach, SetOptions, Source};
use tierkit::Tierkit;
use tokio::sync::Mutex;

/// Keys of a history: few, so that instances and workers collide on them.
const KEYS: usize = 12;
/// Key `i` is always written with tag `t{i % TAGS}`.
const TAGS: usize = 3;
/// A and B reach the server directly, C through a proxy that can cut it off alone.
const INSTANCES: [&str; 3] = ["A", "B", "C"];
const PROXIED: usize = 2;
const WORKERS_PER_INSTANCE: usize = 3;
/// How long a change has to reach every instance's L1 when nothing fails. A backplane message
/// arrives in well under a millisecond; the bound is that large so that a 2-core CI machine
/// stalling a test thread cannot make a correct cache look stale. What the bugs looked for
/// leave behind stays until the next change of the key or the one-hour TTL, and the drizzles
/// and calms leave keys unchanged for seconds, so a long bound costs little.
const DELIVERY_BOUND: Duration = Duration::from_secs(1);
/// How long after a fault ends (or after a change that reached only one L1) the cache has to
/// be coherent again: health comes back Up within a probe or two (100 ms each), the backplane
/// resubscribes (connect timeout 500 ms) and forgets the L1, and changes Redis missed are
/// replayed. Three seconds leave room for all of it on a loaded machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(3);
/// An operation that has not returned after this long is a hang of its own, reported as such.
const OP_GUARD: Duration = Duration::from_secs(10);
/// Seeds run by default: a history runs about 31 s (faults) or 16 s (eviction), and the two
/// tests run side by side, so the file takes about 65 s on 2 cores.
const DEFAULT_SEEDS: u64 = 2;

fn seeds() -> Vec<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    match (var("TIERKIT_SEED"), var("TIERKIT_SEEDS")) {
        (Some(seed), _) => vec![seed],
        (None, n) => (0..n.unwrap_or(DEFAULT_SEEDS)).collect(),
    }
}

/// A cached value: a version of its key's row, whether a `set` wrote it (with the key's tag)
/// or a loader did (no tag), and padding that makes entries weigh in the eviction history.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Val {
    version: u64,
    tagged: bool,
    pad: Vec<u8>,
}

fn key_name(k: usize) -> String {
    format!("k{k}")
}

fn tag_name(t: usize) -> String {
    format!("t{t}")
}

// ---- The history and its checker ---------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Get,
    GetOrSet,
    Set,
    Invalidate,
    InvalidateTag(usize),
    Clear,
}

/// What a read returned.
#[derive(Clone, Copy, Debug)]
struct Got {
    version: u64,
    tagged: bool,
    source: Source,
}

/// One operation of a history. Times are from the start of the history.
#[derive(Clone, Debug)]
struct Rec {
    inst: usize,
    worker: usize,
    kind: Kind,
    /// The key of a one-key operation.
    key: Option<usize>,
    invoked: Duration,
    completed: Duration,
    /// What a read returned (`None`: a miss, or an error).
    got: Option<Got>,
    /// How far a change reached (`None`: it returned an error).
    reach: Option<Reach>,
    /// The versions a change put in the rows, by key.
    wrote: Vec<(usize, u64)>,
    /// The floors a change sets, by key: what it put in the row; for a tag invalidation, the
    /// first version drawn after it began (binding tagged values only).
    floors: Vec<(usize, u64)>,
    error: Option<String>,
}

impl Rec {
    fn is_change(&self) -> bool {
        !self.floors.is_empty()
    }
}

/// A time when faults were on: injected, or seen by an instance (not Up, or not subscribed).
#[derive(Clone, Debug)]
struct Window {
    start: Duration,
    end: Duration,
    what: String,
    /// Made by the test, rather than seen by an instance.
    injected: bool,
}

struct History {
    /// The first version of each key's row.
    initial: Vec<u64>,
    ops: Vec<Rec>,
    windows: Vec<Window>,
}

#[derive(Clone, Copy, Debug)]
struct Bounds {
    delivery: Duration,
    recovery: Duration,
}

const BOUNDS: Bounds = Bounds {
    delivery: DELIVERY_BOUND,
    recovery: RECOVERY_BOUND,
};

#[derive(Clone, Debug)]
struct Violation {
    rule: u8,
    /// The operations involved, the offending read first.
    ops: Vec<usize>,
    what: String,
    /// What was going on, to count violations by cause.
    cause: String,
}

/// From when a change binds reads: the delivery bound after it returned if it reached every
/// tier, the recovery bound otherwise; moved to the recovery bound after the end of every
/// fault that overlaps it (until no fault overlaps the stretch from its start to that time).
fn counts_from(op: &Rec, windows: &[Window], b: Bounds) -> Duration {
    let mut from = op.completed
        + if op.reach == Some(Reach::AllTiers) {
            b.delivery
        } else {
            b.recovery
        };
    loop {
        let mut moved = false;
        for w in windows {
            if w.start <= from && w.end >= op.invoked && w.end + b.recovery > from {
                from = w.end + b.recovery;
                moved = true;
            }
        }
        if !moved {
            return from;
        }
    }
}

/// What went on during `[from, to]`, to count violations by cause: the injected faults that
/// overlap it, else those it follows within the recovery bound, else what the instances saw
/// (not Up, or not subscribed), else "no fault".
fn faults_in(windows: &[Window], from: Duration, to: Duration) -> String {
    let names = |pick: &dyn Fn(&Window) -> bool| {
        let mut names: Vec<&str> = Vec::new();
        for w in windows.iter().filter(|w| pick(w)) {
            if !names.contains(&w.what.as_str()) {
                names.push(&w.what);
            }
        }
        names.join(" + ")
    };
    let overlaps = |w: &Window| w.start <= to && w.end >= from;
    let during = names(&|w| w.injected && overlaps(w));
    if !during.is_empty() {
        return format!("during {during}");
    }
    let after = names(&|w| w.injected && w.end < from && w.end + RECOVERY_BOUND >= from);
    if !after.is_empty() {
        return format!("just after {after}");
    }
    let seen = names(&|w| !w.injected && overlaps(w));
    if !seen.is_empty() {
        return format!("no injected fault, but {seen}");
    }
    "no fault".to_owned()
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Get => "get",
        Kind::GetOrSet => "get_or_set",
        Kind::Set => "set",
        Kind::Invalidate => "invalidate",
        Kind::InvalidateTag(_) => "invalidate_tag",
        Kind::Clear => "clear",
    }
}

fn reach_name(reach: Option<Reach>) -> &'static str {
    match reach {
        Some(Reach::AllTiers) => "AllTiers",
        Some(Reach::L1Only) => "L1Only",
        Some(_) => "other reach",
        None => "error",
    }
}

/// Checks rules 1-3 (module docs) over a history; returns every violation found.
fn check(h: &History, b: Bounds) -> Vec<Violation> {
    let mut found = Vec::new();
    let keys = h.initial.len();
    // Reads that returned a value: (op, key, what came back).
    let reads: Vec<(usize, usize, Got)> = h
        .ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| Some((i, op.key?, op.got?)))
        .collect();

    // Rule 3: who put each version in each row (None: the row's first version).
    let mut drawn: HashMap<(usize, u64), Option<usize>> = HashMap::new();
    for (k, &v) in h.initial.iter().enumerate() {
        drawn.insert((k, v), None);
    }
    for (i, op) in h.ops.iter().enumerate() {
        for &(k, v) in &op.wrote {
            drawn.insert((k, v), Some(i));
        }
    }
    let writer = |k: usize, v: u64| drawn.get(&(k, v)).copied().flatten();
    for &(i, k, g) in &reads {
        let read = &h.ops[i];
        let Some(&by) = drawn.get(&(k, g.version)) else {
            let elsewhere: Vec<String> = (0..keys)
                .filter(|&o| drawn.contains_key(&(o, g.version)))
                .map(key_name)
                .collect();
            found.push(Violation {
                rule: 3,
                ops: vec![i],
                what: format!(
                    "k{k} returned v{}, a version never put in k{k}'s row{}",
                    g.version,
                    if elsewhere.is_empty() {
                        String::new()
                    } else {
                        format!(" (it is a version of {})", elsewhere.join(", "))
                    }
                ),
                cause: "a value never written".to_owned(),
            });
            continue;
        };
        let by_set = by.is_some_and(|w| h.ops[w].kind == Kind::Set);
        if g.tagged && !by_set {
            found.push(Violation {
                rule: 3,
                ops: [i].into_iter().chain(by).collect(),
                what: format!(
                    "k{k} returned v{} as written by a set, but no set wrote it",
                    g.version
                ),
                cause: "a value never written".to_owned(),
            });
        }
        if let Some(w) = by.filter(|&w| h.ops[w].invoked > read.completed) {
            found.push(Violation {
                rule: 3,
                ops: vec![i, w],
                what: format!("k{k} returned v{} before it was written", g.version),
                cause: "a value from the future".to_owned(),
            });
        }
    }

    // Rule 2: per key, the floors of the changes by the time they bind, with a running
    // maximum; tag invalidations apart, as they bind only tagged values.
    #[derive(Clone, Copy)]
    struct Floor {
        from: Duration,
        version: u64,
        op: usize,
    }
    let mut any: Vec<Vec<Floor>> = vec![Vec::new(); keys];
    let mut tagged: Vec<Vec<Floor>> = vec![Vec::new(); keys];
    for (i, op) in h.ops.iter().enumerate().filter(|(_, op)| op.is_change()) {
        let from = counts_from(op, &h.windows, b);
        for &(k, version) in &op.floors {
            let list = match op.kind {
                Kind::InvalidateTag(_) => &mut tagged[k],
                _ => &mut any[k],
            };
            list.push(Floor {
                from,
                version,
                op: i,
            });
        }
    }
    for list in any.iter_mut().chain(tagged.iter_mut()) {
        list.sort_by_key(|f| f.from);
        for j in 1..list.len() {
            if list[j - 1].version > list[j].version {
                list[j].version = list[j - 1].version;
                list[j].op = list[j - 1].op;
            }
        }
    }
    for &(i, k, g) in &reads {
        let read = &h.ops[i];
        let lists = [Some(&any[k]), g.tagged.then_some(&tagged[k])];
        let floor = lists
            .into_iter()
            .flatten()
            .filter_map(|list| {
                let n = list.partition_point(|f| f.from < read.invoked);
                n.checked_sub(1).map(|j| list[j])
            })
            .max_by_key(|f| f.version);
        let Some(floor) = floor.filter(|f| g.version < f.version) else {
            continue;
        };
        let c = &h.ops[floor.op];
        found.push(Violation {
            rule: 2,
            ops: [i, floor.op]
                .into_iter()
                .chain(writer(k, g.version))
                .collect(),
            what: format!(
                "k{k} on {} returned v{} at {}, but #{} put v{} in the row and binds reads from {}",
                INSTANCES[read.inst],
                g.version,
                ms(read.invoked),
                floor.op,
                floor.version,
                ms(counts_from(c, &h.windows, b)),
            ),
            cause: format!(
                "after {} {}, {}",
                kind_name(c.kind),
                reach_name(c.reach),
                faults_in(&h.windows, c.invoked, c.completed + b.delivery)
            ),
        });
    }

    // Rule 1: per instance and key, reads by end time; a read is compared with the newest
    // version read before it started, leaving out reads from before a fault it recovers from.
    let mut groups: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    for &(i, k, _) in &reads {
        groups.entry((h.ops[i].inst, k)).or_default().push(i);
    }
    let version = |i: usize| h.ops[i].got.map_or(0, |g| g.version);
    for ((_, k), mut by_end) in groups {
        by_end.sort_by_key(|&i| h.ops[i].completed);
        // newest[j]: the read with the highest version among by_end[..=j].
        let mut newest = Vec::with_capacity(by_end.len());
        for (j, &i) in by_end.iter().enumerate() {
            let best = match j {
                0 => i,
                _ => {
                    let prev = newest[j - 1];
                    if version(prev) >= version(i) {
                        prev
                    } else {
                        i
                    }
                }
            };
            newest.push(best);
        }
        for &bi in &by_end {
            let read = &h.ops[bi];
            let n = by_end.partition_point(|&a| h.ops[a].completed < read.invoked);
            // The last fault this read is still recovering from: reads that began before it
            // ended are not compared.
            let recovering = h
                .windows
                .iter()
                .filter(|w| w.start <= read.invoked && read.invoked <= w.end + b.recovery)
                .map(|w| w.end)
                .max();
            let before = match recovering {
                None => n.checked_sub(1).map(|j| newest[j]),
                Some(end) => by_end[..n]
                    .iter()
                    .rev()
                    .take_while(|&&a| h.ops[a].completed > end)
                    .filter(|&&a| h.ops[a].invoked > end)
                    .copied()
                    .max_by_key(|&a| version(a)),
            };
            let Some(ai) = before.filter(|&a| version(a) > version(bi)) else {
                continue;
            };
            let a = &h.ops[ai];
            found.push(Violation {
                rule: 1,
                ops: [bi, ai]
                    .into_iter()
                    .chain(writer(k, version(bi)))
                    .chain(writer(k, version(ai)))
                    .collect(),
                what: format!(
                    "k{k} on {} returned v{} at {}, after #{ai} there returned v{} (ended {})",
                    INSTANCES[read.inst],
                    version(bi),
                    ms(read.invoked),
                    version(ai),
                    ms(a.completed)
                ),
                cause: faults_in(&h.windows, a.invoked, read.completed),
            });
        }
    }
    found
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// One operation, readable.
fn describe(h: &History, i: usize) -> String {
    let op = &h.ops[i];
    let key = op.key.map(key_name).unwrap_or_default();
    let rows = |of: &[(usize, u64)]| {
        of.iter()
            .map(|(k, v)| format!("k{k}=v{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let what = match op.kind {
        Kind::Get | Kind::GetOrSet => format!("{} {key}", kind_name(op.kind)),
        Kind::Set => format!("set {key} = v{}", op.wrote[0].1),
        Kind::Invalidate => format!("invalidate {key} (row -> v{})", op.wrote[0].1),
        Kind::InvalidateTag(t) => format!("invalidate_tag t{t} (floors {})", rows(&op.floors)),
        Kind::Clear => format!("clear (rows {})", rows(&op.wrote)),
    };
    let result = match (op.is_change(), op.got) {
        (true, _) => reach_name(op.reach).to_owned(),
        (false, Some(g)) => format!(
            "v{}{} from {:?}",
            g.version,
            if g.tagged { " (set)" } else { " (loaded)" },
            g.source
        ),
        (false, None) => "miss".to_owned(),
    };
    let error = op
        .error
        .as_ref()
        .map(|e| format!(" error: {e}"))
        .unwrap_or_default();
    format!(
        "#{i} {}/w{} {what} -> {result}{error} [{} .. {}]",
        INSTANCES[op.inst],
        op.worker,
        ms(op.invoked),
        ms(op.completed)
    )
}

/// The failure report: counts by rule and cause, the faults, and the first violations of each
/// rule with the operations involved.
fn report(h: &History, found: &[Violation], label: &str) -> String {
    let mut out = format!("{label}: {} violations\n", found.len());
    for rule in 1..=3u8 {
        let of_rule: Vec<&Violation> = found.iter().filter(|v| v.rule == rule).collect();
        if of_rule.is_empty() {
            continue;
        }
        // Reads, and distinct changes (rule 2) or earlier reads (rule 1) they went behind.
        let mut by_cause: BTreeMap<&str, (usize, std::collections::BTreeSet<usize>)> =
            BTreeMap::new();
        for v in &of_rule {
            let entry = by_cause.entry(v.cause.as_str()).or_default();
            entry.0 += 1;
            entry.1.extend(v.ops.get(1));
        }
        let name = match rule {
            1 => "monotonic reads per instance",
            2 => "no stale value after the bound",
            _ => "no value that was never written",
        };
        let _ = writeln!(
            out,
            "rule {rule} ({name}): {} reads (distinct operations they went behind)",
            of_rule.len()
        );
        for (cause, (n, distinct)) in by_cause {
            let _ = writeln!(out, "    {n:5} ({:4}) {cause}", distinct.len());
        }
    }
    let _ = writeln!(out, "faults:");
    for w in &h.windows {
        let _ = writeln!(out, "    {} .. {}: {}", ms(w.start), ms(w.end), w.what);
    }
    // The first violation of each rule and cause.
    let mut shown: Vec<(u8, &str)> = Vec::new();
    for v in found {
        if shown.contains(&(v.rule, v.cause.as_str())) {
            continue;
        }
        shown.push((v.rule, &v.cause));
        let _ = writeln!(out, "rule {}: {} [{}]", v.rule, v.what, v.cause);
        for &i in &v.ops {
            let _ = writeln!(out, "    {}", describe(h, i));
        }
    }
    out
}

// ---- Running a history ---------------------------------------------------------------------

/// What the workers do now (see [`pick`]).
const STORM: u8 = 0;
const DRIZZLE: u8 = 1;
const CALM: u8 = 2;
const STOP: u8 = 3;

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The server stops answering (SIGSTOP) and resumes, queued commands and all.
    Hang,
    /// C's network goes silent; the partition ends with its connections reset (a blackhole
    /// discards bytes mid-stream, which TCP never does, so its connections cannot go on).
    Partition,
    /// C's connections are reset and new ones refused.
    Refuse,
    /// The server is killed and restarted on its data (append-only file).
    Restart,
}

/// One step of a history's plan, run by the scheduler thread.
#[derive(Clone, Debug)]
enum Step {
    Phase(u8),
    Sleep(Duration),
    Fault(Fault, Duration),
    /// An operation for a worker of an instance to run next.
    Inject(usize, Kind),
}

/// Everything the workers of one history share.
struct Shared {
    start: Instant,
    phase: AtomicU8,
    counter: AtomicU64,
    /// The database: each key's row, behind the lock every change of the key holds.
    rows: Vec<Mutex<u64>>,
    injected: StdMutex<Vec<(usize, Kind)>>,
    pad: Arc<Vec<u8>>,
}

impl Shared {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn draw(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::SeqCst) + 1
    }
}

struct Setup {
    label: &'static str,
    server_args: &'static [&'static str],
    /// Bytes of padding per value.
    pad: usize,
    /// Redis keys of 1 KiB written per second from outside tierkit, to keep Redis evicting.
    filler_per_sec: u64,
    /// Think time between operations in a storm, and otherwise.
    think_ms: [(u64, u64); 2],
    plan: Vec<Step>,
}

/// Runs one history and checks it.
async fn history(setup: Setup, seed: u64) -> Result<String, String> {
    let label = format!(
        "{} seed {seed} (replay with TIERKIT_SEED={seed})",
        setup.label
    );
    eprintln!("coherence_history: {label}");
    let mut server = RedisServer::start_with(setup.server_args);
    let proxy = Arc::new(TcpProxy::start(&server.addr()));
    // A key of the test's own, to tell whether a restart kept the data.
    let sentinel = "checker:sentinel";
    {
        let mut con = server.async_connection().await;
        let _: () = redis::cmd("SET")
            .arg(sentinel)
            .arg(1)
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let mut kits = Vec::new();
    for inst in 0..INSTANCES.len() {
        let url = if inst == PROXIED {
            proxy.url()
        } else {
            server.url()
        };
        // Latency never marks these instances Degraded, so "not ready" below means Down or
        // unsubscribed, which is what excuses staleness.
        let config = fast_builder()
            .redis_url(url)
            .degraded_latency(Duration::from_secs(1))
            .build()
            .unwrap();
        let kit = Tierkit::new(config).unwrap();
        ready(&kit).await;
        kits.push(kit);
    }
    let namespaces: Vec<Namespace<Val>> = kits
        .iter()
        .map(|kit| {
            kit.namespace::<Val>("coherence")
                .ttl(Duration::from_secs(3600))
                .build()
                .unwrap()
        })
        .collect();

    let mut rng = fastrand::Rng::with_seed(seed);
    let pad: Vec<u8> = (0..setup.pad).map(|_| rng.u8(..)).collect();
    let initial: Vec<u64> = (1..=KEYS as u64).collect();
    let start = Instant::now();
    let shared = Arc::new(Shared {
        start,
        phase: AtomicU8::new(STORM),
        counter: AtomicU64::new(KEYS as u64),
        rows: initial.iter().map(|&v| Mutex::new(v)).collect(),
        injected: StdMutex::new(Vec::new()),
        pad: Arc::new(pad),
    });

    // Each instance's own view: a window for every time it was not Up and subscribed.
    let observed: Arc<StdMutex<Vec<Window>>> = Arc::default();
    let monitors: Vec<_> = kits
        .iter()
        .enumerate()
        .map(|(inst, kit)| {
            let (kit, shared, observed) = (kit.clone(), shared.clone(), observed.clone());
            tokio::spawn(async move {
                let mut down_since: Option<Duration> = None;
                loop {
                    let stopping = shared.phase.load(Ordering::SeqCst) == STOP;
                    let ok = kit.ready(Duration::ZERO).await;
                    let now = shared.now();
                    match (ok || stopping, down_since) {
                        (false, None) => down_since = Some(now),
                        (true, Some(since)) => {
                            observed.lock().unwrap().push(Window {
                                start: since,
                                end: now,
                                what: format!("{} not ready", INSTANCES[inst]),
                                injected: false,
                            });
                            down_since = None;
                        }
                        _ => {}
                    }
                    if stopping {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();

    let filler = (setup.filler_per_sec > 0).then(|| {
        let (shared, per_sec) = (shared.clone(), setup.filler_per_sec);
        let client = server.client();
        let mut filler_rng = fastrand::Rng::with_seed(seed ^ 0xf111);
        tokio::spawn(async move {
            let mut con = client.get_multiplexed_async_connection().await.unwrap();
            let batch = per_sec / 20;
            let mut n = 0u64;
            while shared.phase.load(Ordering::SeqCst) != STOP {
                let mut pipe = redis::pipe();
                for _ in 0..batch {
                    let bytes: Vec<u8> = (0..1024).map(|_| filler_rng.u8(..)).collect();
                    pipe.cmd("SET").arg(format!("fill:{n}")).arg(bytes).ignore();
                    n += 1;
                }
                // Out of memory errors and the like do not matter: eviction is the point.
                let _ = pipe.query_async::<()>(&mut con).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    });

    let mut workers = Vec::new();
    for (inst, ns) in namespaces.iter().enumerate() {
        for w in 0..WORKERS_PER_INSTANCE {
            let worker = inst * WORKERS_PER_INSTANCE + w;
            let rng = fastrand::Rng::with_seed(seed.wrapping_mul(1_000_003) + worker as u64);
            let (ns, shared) = (ns.clone(), shared.clone());
            let think = setup.think_ms;
            workers.push(tokio::spawn(async move {
                work(shared, ns, inst, worker, rng, think).await
            }));
        }
    }

    // The plan runs on a thread of its own: faults are blocking calls (a restart waits for the
    // server to answer), and their times should not wait for the runtime's threads.
    let plan = setup.plan.clone();
    let scheduler = {
        let (shared, proxy) = (shared.clone(), proxy.clone());
        thread::spawn(move || {
            let mut windows = Vec::new();
            let mut lost_data = Vec::new();
            for step in plan {
                match step {
                    Step::Phase(p) => shared.phase.store(p, Ordering::SeqCst),
                    Step::Sleep(d) => thread::sleep(d),
                    Step::Inject(inst, kind) => shared.injected.lock().unwrap().push((inst, kind)),
                    Step::Fault(fault, d) => {
                        let start = shared.now();
                        let what = match fault {
                            Fault::Hang => {
                                server.hang();
                                thread::sleep(d);
                                server.resume();
                                "hang"
                            }
                            Fault::Partition => {
                                proxy.blackhole(true);
                                thread::sleep(d);
                                // No connection opened from here on survives: refused at
                                // once, then every open one reset before traffic flows again.
                                proxy.refuse(true);
                                thread::sleep(Duration::from_millis(50));
                                proxy.drop_connections();
                                proxy.blackhole(false);
                                proxy.refuse(false);
                                "C partitioned"
                            }
                            Fault::Refuse => {
                                proxy.refuse(true);
                                proxy.drop_connections();
                                thread::sleep(d);
                                proxy.refuse(false);
                                "C reset and refused"
                            }
                            Fault::Restart => {
                                server.stop();
                                thread::sleep(d);
                                server.restart();
                                let kept: Option<String> = server
                                    .client()
                                    .get_connection_with_timeout(Duration::from_secs(2))
                                    .and_then(|mut con| {
                                        redis::cmd("GET").arg(sentinel).query(&mut con)
                                    })
                                    .unwrap_or(None);
                                if kept.is_none() {
                                    lost_data.push(shared.now());
                                }
                                "restart (data kept)"
                            }
                        };
                        windows.push(Window {
                            start,
                            end: shared.now(),
                            what: what.to_owned(),
                            injected: true,
                        });
                    }
                }
            }
            shared.phase.store(STOP, Ordering::SeqCst);
            (server, windows, lost_data)
        })
    };

    let mut ops = Vec::new();
    let mut hung = Vec::new();
    for w in workers {
        match w.await {
            Ok((recs, None)) => ops.extend(recs),
            Ok((recs, Some(hang))) => {
                ops.extend(recs);
                hung.push(hang);
            }
            Err(e) => hung.push(format!("a worker panicked: {e}")),
        }
    }
    for m in monitors {
        m.await.unwrap();
    }
    if let Some(f) = filler {
        f.await.unwrap();
    }
    let (server, mut windows, lost_data) = tokio::task::spawn_blocking(move || {
        scheduler.join().expect("the fault scheduler panicked")
    })
    .await
    .unwrap();
    let took = start.elapsed();

    // The history is only worth checking if it did what it was meant to.
    if !hung.is_empty() {
        return Err(format!("{label}: {}", hung.join("; ")));
    }
    if !lost_data.is_empty() {
        return Err(format!(
            "{label}: a restart lost the data (at {lost_data:?}); the test needs an outage \
             that keeps it"
        ));
    }
    let evicted = if setup.filler_per_sec > 0 {
        let evicted = server.evicted_keys().await;
        if evicted == 0 {
            return Err(format!(
                "{label}: Redis evicted nothing under memory pressure"
            ));
        }
        Some(evicted)
    } else {
        None
    };
    drop(namespaces);
    drop(kits);
    drop(proxy);
    drop(server);

    windows.extend(observed.lock().unwrap().drain(..));
    windows.sort_by_key(|w| w.start);
    ops.sort_by_key(|op| op.invoked);
    let h = History {
        initial,
        ops,
        windows,
    };
    let changes = h.ops.iter().filter(|op| op.is_change()).count();
    let l1_only = h
        .ops
        .iter()
        .filter(|op| op.is_change() && op.reach != Some(Reach::AllTiers))
        .count();
    let hits = h.ops.iter().filter(|op| op.got.is_some()).count();
    let summary = format!(
        "{label}: {} ops in {took:.1?} ({changes} changes, {l1_only} of them L1Only or failed; \
         {hits} reads returned a value), {} fault windows{}",
        h.ops.len(),
        h.windows.len(),
        evicted.map_or(String::new(), |n| format!(", {n} keys evicted by Redis")),
    );
    eprintln!("coherence_history: {summary}");
    if h.ops.len() < 1000 || changes < 100 || hits < 500 {
        return Err(format!("{summary}: too little happened to check"));
    }
    if let Some(dir) = std::env::var_os("TIERKIT_HISTORY_DIR") {
        let path = std::path::Path::new(&dir).join(format!("{}-{seed}.txt", setup.label));
        let mut text = String::new();
        for w in &h.windows {
            let _ = writeln!(text, "fault {} .. {}: {}", ms(w.start), ms(w.end), w.what);
        }
        for i in 0..h.ops.len() {
            let _ = writeln!(text, "{}", describe(&h, i));
        }
        std::fs::write(&path, text).unwrap();
    }
    let found = check(&h, BOUNDS);
    if found.is_empty() {
        Ok(summary)
    } else {
        Err(format!("{summary}\n{}", report(&h, &found, &label)))
    }
}

/// One worker: random operations (or injected ones) until the plan stops. Returns its records
/// and, if an operation hung, what hung.
async fn work(
    shared: Arc<Shared>,
    ns: Namespace<Val>,
    inst: usize,
    worker: usize,
    mut rng: fastrand::Rng,
    think_ms: [(u64, u64); 2],
) -> (Vec<Rec>, Option<String>) {
    let mut recs = Vec::new();
    // A burst in a drizzle: the key, and how many more changes of it to make.
    let mut burst: Option<(usize, u32)> = None;
    loop {
        let phase = shared.phase.load(Ordering::SeqCst);
        if phase == STOP {
            return (recs, None);
        }
        let injected = {
            let mut q = shared.injected.lock().unwrap();
            q.iter()
                .position(|(i, _)| *i == inst)
                .map(|pos| q.remove(pos).1)
        };
        let mut key = rng.usize(..KEYS);
        let kind = match (injected, burst) {
            (Some(kind), _) => kind,
            (None, Some((k, left))) => {
                key = k;
                burst = (left > 1 && phase == DRIZZLE).then_some((k, left - 1));
                if rng.bool() {
                    Kind::Set
                } else {
                    Kind::Invalidate
                }
            }
            (None, None) => {
                let kind = pick(&mut rng, phase);
                if phase == DRIZZLE && kind != Kind::Get && kind != Kind::GetOrSet && rng.bool() {
                    burst = Some((key, rng.u32(1..=4)));
                }
                kind
            }
        };
        let rec = tokio::time::timeout(
            OP_GUARD,
            run(&shared, &ns, (inst, worker), kind, key, &mut rng),
        )
        .await;
        match rec {
            Ok(rec) => recs.push(rec),
            Err(_) => {
                let what = format!(
                    "{} on {} (key k{key}) did not return within {OP_GUARD:?}",
                    kind_name(kind),
                    INSTANCES[inst]
                );
                return (recs, Some(what));
            }
        }
        let (lo, hi) = match burst {
            Some(_) => (0, 2),
            None => think_ms[usize::from(phase != STORM)],
        };
        tokio::time::sleep(Duration::from_millis(rng.u64(lo..=hi))).await;
    }
}

/// A random operation. A storm changes keys as often as it reads them, so changes race reads,
/// loads and each other; but the next change of a key (some 20 ms later) hides any wrong value
/// a race left. A drizzle reads, and changes each key about once a second, half the time in a
/// burst of a few sets and invalidations of one key a millisecond or two apart (which the
/// loads that follow an invalidation on the other instances race): what a race leaves then
/// stays long enough to be read past the delivery bound. A calm only reads, so that what a
/// fault left behind is still there to be read once the recovery bound has passed.
fn pick(rng: &mut fastrand::Rng, phase: u8) -> Kind {
    let changes = match phase {
        STORM => true,
        DRIZZLE => rng.u16(0..1000) < 6,
        _ => false,
    };
    if !changes {
        return if rng.u8(0..100) < 60 {
            Kind::Get
        } else {
            Kind::GetOrSet
        };
    }
    let range = if phase == STORM { 0..1000 } else { 500..1000 };
    match rng.u16(range) {
        0..300 => Kind::Get,
        300..500 => Kind::GetOrSet,
        500..750 => Kind::Set,
        750..910 => Kind::Invalidate,
        910..995 => Kind::InvalidateTag(rng.usize(..TAGS)),
        _ => Kind::Clear,
    }
}

/// Runs one operation and records it. A change holds the rows it changes for its whole call.
async fn run(
    shared: &Arc<Shared>,
    ns: &Namespace<Val>,
    (inst, worker): (usize, usize),
    kind: Kind,
    key: usize,
    rng: &mut fastrand::Rng,
) -> Rec {
    let mut rec = Rec {
        inst,
        worker,
        kind,
        key: None,
        invoked: Duration::ZERO,
        completed: Duration::ZERO,
        got: None,
        reach: None,
        wrote: Vec::new(),
        floors: Vec::new(),
        error: None,
    };
    let got = |hit: &tierkit::cache::Hit<Val>| Got {
        version: hit.version,
        tagged: hit.tagged,
        source: hit.source(),
    };
    match kind {
        Kind::Get => {
            rec.key = Some(key);
            rec.invoked = shared.now();
            let hit = ns.get(&key_name(key)).await;
            rec.completed = shared.now();
            rec.got = hit.as_ref().map(got);
        }
        Kind::GetOrSet => {
            rec.key = Some(key);
            let db = shared.clone();
            let pad = shared.pad.clone();
            // A query takes its snapshot, then its time to come back: a change can land in
            // between, as it can in a service's database.
            let query_time = Duration::from_micros(rng.u64(0..=2000));
            rec.invoked = shared.now();
            let hit = ns
                .get_or_set(&key_name(key), move || async move {
                    let version = *db.rows[key].lock().await;
                    tokio::time::sleep(query_time).await;
                    Ok::<_, std::io::Error>(Val {
                        version,
                        tagged: false,
                        pad: pad.to_vec(),
                    })
                })
                .await;
            rec.completed = shared.now();
            match hit {
                Ok(hit) => rec.got = Some(got(&hit)),
                Err(e) => rec.error = Some(e.to_string()),
            }
        }
        Kind::Set | Kind::Invalidate => {
            rec.key = Some(key);
            let mut row = shared.rows[key].lock().await;
            rec.invoked = shared.now();
            let version = shared.draw();
            *row = version;
            rec.wrote.push((key, version));
            rec.floors.push((key, version));
            let name = key_name(key);
            let reach = if kind == Kind::Set {
                let value = Val {
                    version,
                    tagged: true,
                    pad: shared.pad.to_vec(),
                };
                let opts = SetOptions::new().tag(tag_name(key % TAGS));
                ns.set_with(&name, value, opts).await
            } else {
                ns.invalidate(&name).await
            };
            rec.completed = shared.now();
            drop(row);
            match reach {
                Ok(reach) => rec.reach = Some(reach),
                Err(e) => rec.error = Some(e.to_string()),
            }
        }
        Kind::InvalidateTag(_) | Kind::Clear => {
            let covered: Vec<usize> = match kind {
                Kind::InvalidateTag(t) => (0..KEYS).filter(|k| k % TAGS == t).collect(),
                _ => (0..KEYS).collect(),
            };
            // In key order, as every change that holds several rows does: no deadlock.
            let mut rows = Vec::with_capacity(covered.len());
            for &k in &covered {
                rows.push(shared.rows[k].lock().await);
            }
            rec.invoked = shared.now();
            if kind == Kind::Clear {
                for (row, &k) in rows.iter_mut().zip(&covered) {
                    let version = shared.draw();
                    **row = version;
                    rec.wrote.push((k, version));
                    rec.floors.push((k, version));
                }
            } else {
                // The rows are held, so no set of these keys is under way: every tagged value
                // written so far is below this, every later one above.
                let floor = shared.counter.load(Ordering::SeqCst) + 1;
                rec.floors.extend(covered.iter().map(|&k| (k, floor)));
            }
            let reach = match kind {
                Kind::InvalidateTag(t) => ns.invalidate_tag(&tag_name(t)).await,
                _ => ns.clear().await.map(|(reach, _)| reach),
            };
            rec.completed = shared.now();
            drop(rows);
            match reach {
                Ok(reach) => rec.reach = Some(reach),
                Err(e) => rec.error = Some(e.to_string()),
            }
        }
    }
    rec
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Faults: each kind once per history, in a seeded order. Each fault comes in a storm, so
/// changes land while it lasts; a calm follows, long enough to read past the recovery bound;
/// then a drizzle.
fn fault_plan(seed: u64) -> Vec<Step> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut faults = [Fault::Hang, Fault::Partition, Fault::Refuse, Fault::Restart];
    rng.shuffle(&mut faults);
    let mut plan = Vec::new();
    for fault in faults {
        plan.push(Step::Phase(STORM));
        plan.push(Step::Sleep(secs(0.8 + rng.f64() * 0.7)));
        plan.push(Step::Fault(fault, secs(0.5 + rng.f64())));
        plan.push(Step::Phase(CALM));
        plan.push(Step::Sleep(RECOVERY_BOUND + secs(0.7)));
        plan.push(Step::Phase(DRIZZLE));
        plan.push(Step::Sleep(secs(2.0)));
    }
    plan
}

/// Eviction: a storm writes and reads every key; a calm leaves the tag sets alone long enough
/// for Redis to evict them (its LRU clock counts whole seconds); then each tag is invalidated,
/// the calm goes on past the delivery bound, and a drizzle follows.
fn eviction_plan(seed: u64) -> Vec<Step> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut plan = Vec::new();
    for _ in 0..2 {
        plan.push(Step::Phase(STORM));
        plan.push(Step::Sleep(secs(1.0 + rng.f64() * 0.5)));
        plan.push(Step::Phase(CALM));
        plan.push(Step::Sleep(secs(2.5 + rng.f64())));
        for t in 0..TAGS {
            plan.push(Step::Inject(
                rng.usize(..INSTANCES.len()),
                Kind::InvalidateTag(t),
            ));
        }
        plan.push(Step::Sleep(DELIVERY_BOUND + secs(0.5)));
        plan.push(Step::Phase(DRIZZLE));
        plan.push(Step::Sleep(secs(2.0)));
    }
    plan
}

fn run_seeds(make: impl Fn(u64) -> Setup) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut failures = Vec::new();
    for seed in seeds() {
        if let Err(failure) = rt.block_on(history(make(seed), seed)) {
            eprintln!("coherence_history: FAILED {failure}");
            failures.push(failure);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Hangs, a partition and a reset of one instance, and a kill and restart that keeps the data,
/// each in the middle of a storm of changes.
#[test]
fn coherent_through_hangs_partitions_and_restarts() {
    support::init_tracing();
    run_seeds(|seed| Setup {
        label: "faults",
        // The restart is an outage that keeps the data: every write Redis answered is in the
        // append-only file (written before the reply; a SIGKILL loses nothing the kernel has).
        server_args: &["--appendonly", "yes", "--appendfsync", "no"],
        pad: 0,
        filler_per_sec: 0,
        think_ms: [(1, 6), (2, 10)],
        plan: fault_plan(seed),
    });
}

/// Redis evicting (allkeys-lru, 2 MB) under a steady stream of 1 KiB keys, tag sets included.
#[test]
fn coherent_while_redis_evicts() {
    support::init_tracing();
    run_seeds(|seed| Setup {
        label: "eviction",
        server_args: &["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"],
        pad: 1024,
        filler_per_sec: 2000,
        think_ms: [(1, 6), (2, 10)],
        plan: eviction_plan(seed),
    });
}

// ---- The checker checked -----------------------------------------------------------------

mod checker {
    use super::*;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn read(inst: usize, key: usize, from: u64, to: u64, version: u64, tagged: bool) -> Rec {
        Rec {
            inst,
            worker: inst,
            kind: Kind::Get,
            key: Some(key),
            invoked: at(from),
            completed: at(to),
            got: Some(Got {
                version,
                tagged,
                source: Source::L1,
            }),
            reach: None,
            wrote: Vec::new(),
            floors: Vec::new(),
            error: None,
        }
    }

    /// A change; `floors` are also what it put in the rows, but for a tag invalidation.
    fn change(kind: Kind, from: u64, to: u64, reach: Reach, floors: &[(usize, u64)]) -> Rec {
        Rec {
            inst: 0,
            worker: 0,
            kind,
            key: floors.first().map(|w| w.0),
            invoked: at(from),
            completed: at(to),
            got: None,
            reach: Some(reach),
            wrote: match kind {
                Kind::InvalidateTag(_) => Vec::new(),
                _ => floors.to_vec(),
            },
            floors: floors.to_vec(),
            error: None,
        }
    }

    fn history(ops: Vec<Rec>, windows: &[(u64, u64)]) -> History {
        History {
            initial: vec![1, 2],
            ops,
            windows: windows
                .iter()
                .map(|&(s, e)| Window {
                    start: at(s),
                    end: at(e),
                    what: "hang".into(),
                    injected: true,
                })
                .collect(),
        }
    }

    fn rules(h: &History) -> Vec<u8> {
        check(h, BOUNDS).iter().map(|v| v.rule).collect()
    }

    #[test]
    fn a_stale_read_after_the_bound_is_caught_and_one_within_it_is_not() {
        let set = change(Kind::Set, 100, 110, Reach::AllTiers, &[(0, 5)]);
        let stale = |at: u64| read(1, 0, at, at + 1, 1, false);
        assert_eq!(rules(&history(vec![set.clone(), stale(900)], &[])), []);
        let h = history(vec![set.clone(), stale(1200)], &[]);
        let found = check(&h, BOUNDS);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].rule, &found[0].ops[..]), (2, &[1, 0][..]));
        assert!(report(&h, &found, "test").contains("#0 A/w0 set k0 = v5 -> AllTiers"));
        // The new value and newer ones are fine.
        let fresh = read(1, 0, 1200, 1201, 5, true);
        assert_eq!(rules(&history(vec![set, fresh], &[])), []);
    }

    #[test]
    fn a_fault_or_an_l1_only_change_moves_the_bound_to_after_recovery() {
        let set = change(Kind::Set, 100, 110, Reach::AllTiers, &[(0, 5)]);
        let stale = |at: u64| read(1, 0, at, at + 1, 1, false);
        // A hang from 50 to 600 ms: the set binds from 3.6 s.
        assert_eq!(
            rules(&history(vec![set.clone(), stale(3500)], &[(50, 600)])),
            []
        );
        assert_eq!(rules(&history(vec![set, stale(3700)], &[(50, 600)])), [2]);
        // A fault that chains into another: the bound follows the last one.
        let set = change(Kind::Invalidate, 100, 110, Reach::AllTiers, &[(0, 5)]);
        let windows = [(50, 600), (3000, 4000)];
        assert_eq!(
            rules(&history(vec![set.clone(), stale(6900)], &windows)),
            []
        );
        assert_eq!(rules(&history(vec![set, stale(7100)], &windows)), [2]);
        // Reaching only L1 binds from the recovery bound after the change.
        let l1 = change(Kind::Set, 100, 110, Reach::L1Only, &[(0, 5)]);
        assert_eq!(rules(&history(vec![l1.clone(), stale(3000)], &[])), []);
        assert_eq!(rules(&history(vec![l1, stale(3200)], &[])), [2]);
    }

    #[test]
    fn a_tag_invalidation_binds_tagged_values_only() {
        let tag = change(Kind::InvalidateTag(0), 100, 110, Reach::AllTiers, &[(0, 7)]);
        // v1 is the row's first version, which a loader put in the cache: no tag, not bound.
        assert_eq!(
            rules(&history(
                vec![tag.clone(), read(1, 0, 2000, 2001, 1, false)],
                &[]
            )),
            []
        );
        let set = change(Kind::Set, 10, 20, Reach::AllTiers, &[(0, 5)]);
        let h = history(vec![set, tag.clone(), read(1, 0, 2000, 2001, 5, true)], &[]);
        assert_eq!(rules(&h), [2]);
        // A value set after it began is fine.
        let later = change(Kind::Set, 120, 130, Reach::AllTiers, &[(0, 8)]);
        let h = history(vec![tag, later, read(1, 0, 2000, 2001, 8, true)], &[]);
        assert_eq!(rules(&h), []);
    }

    #[test]
    fn going_back_on_one_instance_is_caught_outside_recovery() {
        let set = change(Kind::Set, 10, 20, Reach::AllTiers, &[(0, 5)]);
        let newer = read(1, 0, 30, 31, 5, true);
        let older = read(1, 0, 40, 41, 1, false);
        // Within the delivery bound rule 2 lets it pass; rule 1 does not.
        let h = history(vec![set.clone(), newer.clone(), older.clone()], &[]);
        assert_eq!(rules(&h), [1]);
        // Another instance may still be behind.
        let mut elsewhere = older.clone();
        elsewhere.inst = 2;
        assert_eq!(
            rules(&history(vec![set.clone(), newer.clone(), elsewhere], &[])),
            []
        );
        // Overlapping reads are not ordered.
        let overlapping = read(1, 0, 30, 45, 1, false);
        assert_eq!(
            rules(&history(vec![set.clone(), newer.clone(), overlapping], &[])),
            []
        );
        // Recovering from a fault that began after the newer read: not compared.
        let h = history(vec![set, newer, older], &[(35, 38)]);
        assert_eq!(rules(&h), []);
    }

    #[test]
    fn a_value_never_written_is_caught() {
        let set = change(Kind::Set, 10, 20, Reach::AllTiers, &[(1, 5)]);
        // v5 is k1's, not k0's.
        let h = history(vec![set.clone(), read(0, 0, 30, 31, 5, true)], &[]);
        let found = check(&h, BOUNDS);
        assert_eq!(found.iter().map(|v| v.rule).collect::<Vec<_>>(), [3]);
        assert!(
            found[0].what.contains("it is a version of k1"),
            "{}",
            found[0].what
        );
        // Tagged, but no set wrote it (the first version, or an invalidation's).
        assert_eq!(rules(&history(vec![read(0, 0, 30, 31, 1, true)], &[])), [3]);
        // Read before the set began.
        assert_eq!(
            rules(&history(vec![set, read(0, 1, 1, 2, 5, true)], &[])),
            [3]
        );
    }
}
