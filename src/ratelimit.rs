//! Distributed rate limiting: a sliding window evaluated inside Redis, with a local governor
//! limiter that takes over whenever Redis is down or fails.
//!
//! Build a [`Limiter`] with [`Tierkit::limiter`](crate::Tierkit::limiter) from a name (which
//! namespaces its keys) and a [`Quota`], then decide per key (a user id, or a client IP) with
//! [`Limiter::check`].
//!
//! ## Behavior
//!
//! | Redis | who decides | with what |
//! |---|---|---|
//! | up | Redis, one Lua script, one key, one round trip | the whole quota, shared by every instance, timed by the server clock |
//! | down, or a call meets an outage (refused, reset, timed out, loading, failing over) | this instance's governor | `limit / instances` (at least 1), never allow-all unless [`LimiterBuilder::fail_open`] |
//! | up, but the call gets an error reply (`NOPERM`, `OOM`, `WRONGTYPE`, a script error) | the [`ErrorPolicy`] | refuse (default) or the local share; never `fail_open`, and health stays up |
//! | back up | Redis again | |
//! | embedded (no Redis) | the governor | the whole quota (GCRA: burst of `limit`, refilled over the window) |
//!
//! While Redis is down the governor never lets more than the local share through in any
//! window: it allows a burst of half the share and refills the other half over two windows,
//! so a client hammering one instance gets half its share per window until Redis is back.
//!
//! - Every decision made without Redis by a Redis-backed limiter says so
//!   ([`Decision::degraded`]); each takeover and each return of Redis is logged at warn with
//!   counts, and [`Limiter::report`] (and the health report) shows takeovers and errors.
//! - No error reaches the caller because of Redis, and no decision waits longer than the op
//!   timeout (while health is `Down`, not at all).
//! - [`Algorithm::SlidingLog`] is exact: it never allows more than `limit` in any window and
//!   never refuses a request that fits. It records admitted requests only, so a key holds at
//!   most `limit` entries.
//! - [`Algorithm::SlidingCounter`] keeps two counters per key (O(1) memory). It never allows
//!   more than `limit` in any fixed window aligned to the window length, nor more than
//!   `2 × limit` in any sliding window; it may refuse a little early.
//! - [`Algorithm::PipelinedCounter`] is the same counter with no Lua script: plain counters
//!   per fixed window, one pipeline per decision (`INCRBY` of the current window, `GET` of the
//!   previous one; a `PEXPIRE` the first time this process counts in a window), and a `DECRBY`
//!   giving a refused request's units back. Redis runs no script, so it costs Redis about what
//!   two `GET`s do, and an ACL user without scripting may use it. The window is placed on the
//!   Redis clock as the limiter reads it: its own clock plus the offset a `TIME` measured
//!   (alone before the first decision, then riding in a decision's pipeline every 10 s), off
//!   by at most half that round trip plus the application clock's drift since. On that
//!   reading it keeps the counter's bound exactly (never more than `limit` in a fixed window,
//!   nor `2 × limit` in a sliding one: a request is counted before it is judged, so
//!   concurrent requests see each other); on the Redis clock itself a window's edges may be
//!   off by that error, so a request within it of an edge may count in the neighbouring
//!   window. A refused request's units are visible to others until its `DECRBY` lands:
//!   stricter, never looser.
//! - With [`LimiterBuilder::block_for`], a refused key is refused from process memory, with no
//!   Redis call, until the block ends.
//! - The local tier keeps an exact state per active key up to
//!   [`LimiterBuilder::local_max_keys`]; past that, new keys share buckets picked by a hash under
//!   a random per-process key, so a flood of distinct keys neither grows memory without bound
//!   nor spends the budget of a key that was already active, and no one can aim a key at
//!   another's state.
//!
//! ## Time
//!
//! The local tier and the block windows read the configured clock
//! ([`ConfigBuilder::clock`](crate::ConfigBuilder::clock)), so a test moves them with a
//! [`ManualClock`](crate::clock::ManualClock) instead of sleeping. The Redis window runs on the
//! server's clock.
//!
//! ## Redis keys
//!
//! `{prefix}:rl:{limiter}:log:{key}` (a sorted set) or `{prefix}:rl:{limiter}:ctr:{key}` (a
//! hash), expiring on its own once idle for a window (two for the counter). The pipelined
//! counter keeps one plain counter per quota and window,
//! `{{prefix}:rl:{limiter}:pc:{key}}:{window ms}:{window index}`, each expiring two windows
//! after its first count; the braces are a hash tag, so a key's counters share a cluster slot.
//! The algorithm is in the name, so a limiter switched from one to another starts afresh
//! instead of meeting the other's data.

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod layer;

// What is enforced and what is answered.
mod decision;
mod quota;
// The handle and how it is declared.
mod builder;
mod limiter;
// The tier choice: the trait and its picker, then the two tiers.
mod decider;
mod local;
mod pipelined;
mod scripts;
mod shared;
// In-process time and memory: governor's clock, block windows.
mod block;
mod clock;
// What the limiter saw of Redis, for logs, metrics and the health report.
mod watch;

pub use builder::LimiterBuilder;
pub(crate) use watch::Registry;

pub use decision::{Decision, ErrorPolicy, Tier};
pub use limiter::Limiter;
pub use quota::{Algorithm, Quota};
pub use watch::LimiterReport;
