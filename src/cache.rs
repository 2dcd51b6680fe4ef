//! The two-tier cache: typed namespaces over one moka L1 (in-process, bounded in bytes) and a
//! Redis L2 (encoded with [`Codec`](crate::Codec)).
//!
//! Declare a namespace once with [`Tierkit::namespace`](crate::Tierkit::namespace) and keep
//! the typed, cheap-to-clone [`Namespace`] handle.
//!
//! ## Behavior
//!
//! | | Redis up | Redis down or timing out | Redis back |
//! |---|---|---|---|
//! | read | L1, then L2, then the loader | L1, then the loader; no Redis call, no waiting | L2 again |
//! | write | L1 + L2 + backplane publish | L1 only, counted as `l2_skipped` | L2 again |
//! | coherence | other instances evict their L1 copy within milliseconds | none; changes are owed | owed changes replayed as invalidations before L2 is read again; each instance drops its L1 when its backplane resubscribes |
//!
//! - An L1 hit is one moka lookup and an `Arc` clone: no decoding, no Redis call.
//! - Concurrent `get_or_set` calls on one cold key run one load per process (per every
//!   instance with [`single_flight`](NamespaceBuilder::single_flight)); a loader error
//!   reaches every waiting caller and is not cached.
//! - Reads on one instance never go back in a key's history: entries carry a version Redis
//!   assigns, and an L1 copy never gives way to an older one.
//! - A load fills Redis only where the key still holds what its read saw, so it never
//!   replaces a write or invalidation that landed while it ran, on any instance.
//! - Clears and tag invalidations drop an epoch that every entry is checked against, so they
//!   hold whatever Redis evicts. The README's "Coherence" table is the full guarantee.
//! - Nothing on the read path returns a Redis error: a failed or timed-out L2 call counts in
//!   `l2_errors` and the read falls back to the loader.
//! - Stored bytes that no longer decode as the namespace's type (an old schema, another writer,
//!   a key of another type) are a miss, counted in `decode_failures`, and replaced by the next
//!   fill or write.
//!
//! ## Time
//!
//! The cache keeps no clock of its own and reads none of tierkit's
//! [`Clock`](crate::clock::Clock): an entry's L1 lifetime is timed by moka, on moka's own
//! clock, and its L2 lifetime by Redis (`PX`), on the server's, as are entry versions (the
//! server's `TIME`), so instances with skewed clocks still agree on them. A manual clock therefore does
//! not age cache entries; the loader and encoding timings in the counters are wall-clock
//! measurements.
//!
//! ## Redis keys
//!
//! | key | holds |
//! |---|---|
//! | `{prefix}:c:{namespace}:v{version}:{key}` | an entry (framed: version, epochs, tags) or a tombstone |
//! | `{prefix}:c:{namespace}:e{version}` | the namespace's epoch |
//! | `{prefix}:c:{namespace}:g{version}:{tag}` | a tag's epoch |
//! | `{prefix}:c:{namespace}:l{version}:{key}` | a loading lease |
//! | `{prefix}:c:backplane` | the pub/sub channel of the coherence backplane |
//!
//! Every command and script touches one key, so the layout runs unchanged on Redis Cluster.
//!
//! ## Layout
//!
//! | file | job |
//! |---|---|
//! | `builder` | [`NamespaceBuilder`]: settings, defaults, validation |
//! | `namespace` | the [`Namespace`] handle, what its clones share, [`Hit`], [`Source`], [`Reach`], [`SetOptions`] |
//! | `read` | `get`, `get_many`: the L1 hit, the L2 read checked against the epochs, the versioned L1 fill |
//! | `loader` | `get_or_set`: the load and the conditional L2 fill after it |
//! | `flight` | one load per key per process |
//! | `lease` | one load per key across instances |
//! | `frame` | the frame of an entry in Redis: version, epochs, tags |
//! | `epochs` | the epochs this instance knows |
//! | `owed` | changes Redis did not take, and their replay |
//! | `write` | `set`, `set_with`, `set_many`: checks, encoding, jitter |
//! | `invalidate` | by key (tombstone), tag and namespace (epochs), pattern; the L1 side of every change |
//! | `warm` | `warm` and [`WarmProgress`] |
//! | `stamp` | freshness: change counters and the L1 generation |
//! | `l1` | the moka L1 |
//! | `l2` | the L2 trait, the embedded tier, the health-driven picker; `l2/redis` the Redis tier |
//! | `backplane` | coherence messages and their listener |
//! | `tracking` | server-assisted coherence: Redis's client-side-caching pushes |
//! | `options`, `life`, `background` | resilient loading: per-call options, an entry's logical life, loads past their callers |
//! | `pattern` | the glob dialect of `invalidate_pattern` |
//! | `base` | what one instance's namespaces share |
//! | `info`, `stats` | [`CacheInfo`], [`CacheStats`] |
//! | [`admin`] | operators' view: what a Redis key is, an entry's frame, walks over every node's keys |

pub mod admin;
mod background;
mod backplane;
mod base;
mod builder;
mod epochs;
mod flight;
mod frame;
mod info;
mod invalidate;
mod l1;
mod l2;
mod lease;
mod life;
mod loader;
mod namespace;
mod options;
mod owed;
mod pattern;
mod read;
mod stamp;
mod stats;
mod tracking;
mod warm;
mod write;
mod writing;

pub use builder::NamespaceBuilder;
pub use info::CacheInfo;
pub use life::EagerRefresh;
pub use namespace::{Hit, Namespace, NamespaceSlot, Reach, SetOptions, Source};
pub use options::{Loaded, ReadOptions, Tiers};
pub use stats::CacheStats;
pub use warm::WarmProgress;

pub(crate) use base::CacheCore;
