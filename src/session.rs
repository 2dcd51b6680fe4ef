//! User sessions: created at login, validated on every request, listed per user ("where you
//! are logged in"), revoked one by one or all at once, with refresh-token rotation.
//!
//! Build a [`Sessions`] store with [`Tierkit::sessions`](crate::Tierkit::sessions). With Redis
//! configured the sessions live in Redis; embedded, in process memory, with the same API and
//! the same rules.
//!
//! ## Behavior
//!
//! - Session ids and refresh tokens are 256 bits from the OS random source, shaped
//!   `{tag}.{64 hex}` where `tag` is 32 bits of a hash of the user id (it routes every key of
//!   one user to one Redis Cluster slot). Stores keep only their SHA-256; comparisons of
//!   secrets are constant-time. A copy of Redis holds nothing that logs anyone in.
//! - A session ends `idle_timeout` after its last use (sliding) and `max_lifetime` after its
//!   creation at the latest. Uses move `last_seen` at most once per `touch_interval`, so a
//!   validation is one read.
//! - [`Sessions::refresh`] retires the presented refresh token and returns a new one. A
//!   retired token stays good for `refresh_grace`: two tabs refreshing with one token at once
//!   both get a working token (two branches, up to four), and neither later counts as reuse.
//!   A token presented after its grace revokes the whole session ([`Refresh::Reused`]).
//! - A revoked session never validates again on the instance that revoked it, whatever Redis
//!   does. A revocation Redis could not take is replayed the moment health says Redis is back
//!   (and by every sweep until it lands); other instances see a revocation at once while Redis
//!   is up, and within `staleness` while it is down.
//! - A user holds at most [`max_sessions_per_user`](SessionsBuilder::max_sessions_per_user)
//!   sessions (default 100: a login beyond it evicts the session that expires first, or is
//!   refused). A user's index is scored by expiry: dead entries leave by score, at most 1,000
//!   per call, a listing reads only the live range, and the key expires a day after the last
//!   session. The sweep skips a user it cannot prune and always moves on.
//! - [`Sessions::events`] streams creations, refreshes, revocations (with their reason),
//!   expiries and detected token reuse, for audit logs.
//! - Services keep data with a session by key ([`Sessions::insert`], [`Sessions::get`]), up
//!   to [`MAX_SESSION_DATA`] bytes, sealed with the record under encryption.
//! - While Redis is down, [`Sessions::validate`] answers from a local copy of sessions it
//!   validated within `staleness` (default 30 s), else [`Validation::Unavailable`], so the
//!   service can fall back to stateless checks. `create`, `refresh` and the revocations
//!   return [`Error::Unavailable`](crate::Error::Unavailable) (or the Redis error) rather
//!   than pretend. (A `create` that fails part way may leave records behind; their id never
//!   reached anyone, so they can never validate, and they expire.)
//! - Validation waits for one read: the sliding-expiry touch and the removal of an expired
//!   record happen in the background.
//! - The routing tag is a hash of the user id: unkeyed by default, so whoever guesses a user
//!   id can tell whether a session id belongs to that user (not use it); keyed with
//!   [`session_name_key`](crate::ConfigBuilder::session_name_key), which also hides user ids
//!   in key names.
//! - Every time decision (timestamps, expiry, touch, refresh grace, the local copy's
//!   staleness, how long a revocation is remembered) reads the configured
//!   [`clock`](crate::ConfigBuilder::clock), so a test moves time with a
//!   [`ManualClock`](crate::clock::ManualClock). Redis keeps its own time for the key TTLs
//!   set from these decisions: under a manual clock, give sessions lifetimes longer than the
//!   test runs in real time.
//!
//! With [`encryption_keys`](crate::ConfigBuilder::encryption_keys) configured, each record is
//! sealed in Redis (XChaCha20-Poly1305, bound to its session's key); a record that does not
//! open, including one stored plain before the keys were configured, is no session.
//!
//! ## Redis keys
//!
//! | key | holds |
//! |---|---|
//! | `{prefix}:s:{tag}:sess:{sha256(session id)}` | the session (hash: version, record) |
//! | `{prefix}:s:{tag}:idx:{user id}` | the user's sessions, scored by expiry (sorted set) |
//! | `{prefix}:s:{tag}:rt:{sha256(refresh token)}` | the session a refresh token belongs to |
//! | `{prefix}:s:users` | users with sessions, walked by the bounded sweep |
//! | `{prefix}:s:counts` | active sessions in total and per device kind |
//!
//! The `{tag}` braces are a Redis Cluster hash tag: every script and multi-key step of one user
//! stays in one slot; nothing crosses users.

mod builder;
mod data;
mod events;
mod names;
mod record;
mod refresh;
mod revoke;
mod sessions;
mod store;
mod sweep;
mod types;
mod validate;
mod window;

pub use builder::{AtLimit, SessionsBuilder};
pub use data::MAX_SESSION_DATA;
pub use events::{RevokeReason, SessionEvent};
pub use sessions::Sessions;
pub use types::{
    Created, Device, DeviceKind, NewSession, Refresh, Secret, Session, SessionStats,
    StatelessVerifier, Validation,
};
