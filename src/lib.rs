//! tierkit: a Redis-backed two-tier cache, session store and rate limiter that a Rust service
//! links in, fast on the hot path and still serving when Redis is slow or gone.
//!
//! The [README](https://docs.rs/crate/tierkit/latest) is the user's guide (set-up, usage,
//! configuration, degradation, cluster, key schema); this page is a map of the API.
//!
//! # Start here
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> tierkit::Result<()> {
//! use std::time::Duration;
//! use tierkit::{ratelimit::Quota, Config, Tierkit};
//!
//! // Embedded (no Redis) unless REDIS_URL, REDIS_HOST or REDIS_CLUSTER_NODES is set.
//! let kit = Tierkit::new(Config::from_env()?)?;
//!
//! let profiles = kit.namespace::<String>("profiles").ttl(Duration::from_secs(600)).build()?;
//! let name = profiles.get_or_set("42", || async { Ok::<_, std::io::Error>("Ada".into()) }).await?;
//! assert_eq!(*name, "Ada");
//!
//! let login = kit.limiter("login", Quota::new(5, Duration::from_secs(60))?).build()?;
//! assert!(login.check("ip:203.0.113.7").await.allowed);
//!
//! let sessions = kit.sessions().build()?;
//! let created = sessions.create(tierkit::session::NewSession::new("user-42")).await?;
//! assert!(sessions.validate(created.session_id.expose()).await.session().is_some());
//! # Ok(()) }
//! ```
//!
//! # A map of the types
//!
//! | module | what | main types |
//! |---|---|---|
//! | (root) | the handle that builds every part from one [`Config`] | [`Tierkit`], [`Config`], [`ConfigBuilder`], [`Error`], [`Result`] |
//! | [`cache`] | typed namespaces over a moka L1 and a Redis L2 | [`Namespace`](cache::Namespace), [`NamespaceBuilder`](cache::NamespaceBuilder), [`Hit`](cache::Hit), [`Source`](cache::Source), [`Reach`](cache::Reach), [`SetOptions`](cache::SetOptions), [`CacheStats`](cache::CacheStats); [`cache::admin`] reads what Redis holds without the value's type (the `tierkit` CLI's view) |
//! | [`session`] | sessions with device metadata, token hashes, listing, revocation, refresh rotation | [`Sessions`](session::Sessions), [`NewSession`](session::NewSession), [`Session`](session::Session), [`Validation`](session::Validation), [`Refresh`](session::Refresh) |
//! | [`ratelimit`] | a sliding window in Redis with a local governor fallback; a tower layer (feature `tower`) | [`Limiter`](ratelimit::Limiter), [`Quota`](ratelimit::Quota), [`Algorithm`](ratelimit::Algorithm), [`Decision`](ratelimit::Decision), [`Tier`](ratelimit::Tier) |
//! | [`health`] | probe + passive feed folded into `Up` / `Degraded` / `Down` | [`Health`](health::Health), [`HealthState`](health::HealthState), [`HealthStatus`](health::HealthStatus), [`Misconfiguration`](health::Misconfiguration) |
//! | [`report`] | the `/health` body | [`HealthReport`](report::HealthReport), [`Status`](report::Status) |
//! | [`conn`] | every Redis call: per-op timeout, health gate, pipelines, scripts, cluster routing | [`Conn`](conn::Conn); `Faults` (feature `testing`) |
//! | [`codec`] | the stored envelope: magic, version, flags, bincode body, zstd | [`Codec`], [`CodecBuilder`], [`EncodeInfo`], [`Envelope`](codec::Envelope) |
//! | [`clock`] | the time tierkit's own decisions read; a manual clock for tests | [`Clock`](clock::Clock), [`SystemClock`](clock::SystemClock), [`ManualClock`](clock::ManualClock) |
//! | [`metrics`] | counters and histograms through the `metrics` facade (feature `metrics`) | |
//!
//! Inside, modules are layered and only import downward: `error` → `metrics`, `codec`, `keys`
//! (the Redis key schema) → `config` → `health` → `conn` → `cache` | `session` | `ratelimit`
//! (which never import each other) → `report` → `Tierkit`. Each feature picks its tier (Redis
//! or in-process) behind one trait, and each handle owns what it uses.
//!
//! # Degradation guarantees
//!
//! | part | Redis up | Redis down or timing out | Redis back |
//! |---|---|---|---|
//! | cache read | L1, then L2, then the loader | L1, then the loader; no waiting on Redis | L2 again |
//! | cache write | L1 + L2 + backplane publish | L1 only ([`Reach::L1Only`](cache::Reach::L1Only)) | each instance drops its L1 when its backplane resubscribes |
//! | rate limit | the sliding window in Redis, server clock | the local governor with `limit / instances`, never allow-all unless `fail_open` | Redis again |
//! | sessions | Redis | validation from a local copy within `staleness`, else [`Validation::Unavailable`](session::Validation::Unavailable); writes return an error | Redis again |
//!
//! No read returns a Redis error, no call waits longer than the op timeout, and while health is
//! `Down` no call waits at all. [`Tierkit::ready`] waits until Redis is up and the backplane
//! subscribed, for services (and tests) that want every guarantee before serving.
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `tower` | [`ratelimit::layer`]: a tower `Layer` answering 429 with `Retry-After` and `RateLimit` headers |
//! | `metrics` | metrics through the `metrics` facade |
//! | `tls` | `rediss://` to Redis over rustls (no OpenSSL): CA file, mutual TLS, a development-only switch to skip verification |
//! | `macros` | [`cached`]: an attribute macro that caches an `async fn`'s `Ok` results through a namespace |

#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod cache;
pub mod codec;
mod config;
pub mod conn;
mod error;
pub mod health;
mod keys;
pub mod metrics;
pub mod ratelimit;
pub mod report;
pub mod session;
mod tierkit;

pub use codec::{Codec, CodecBuilder, EncodeInfo};
pub use config::{clock, Config, ConfigBuilder};
pub use error::{DecodeError, Error, Result};
pub use tierkit::Tierkit;

#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use tierkit_macros::cached;

/// The README's examples, compiled and run by `cargo test --doc` so they never rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
