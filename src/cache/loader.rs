//! The value initializer: `get_or_set` and `get_or_load`, where an L1 miss becomes one load per
//! key per process ([`flight`](super::flight)), or per key across instances with
//! [`single_flight`](super::NamespaceBuilder::single_flight). A load asks L2, then the loader;
//! a loaded value enters L1 at once and Redis after the waiters are released, and only if the
//! key still holds what the load's read saw there: a load never replaces a write or an
//! invalidation that landed while it ran, on any instance.
//!
//! Around the loader: a hard timeout drops a load that runs too long; a soft timeout answers
//! with a stale copy and lets the load finish in the [`background`](super::background); a
//! failed or timed-out load is answered from a stale copy when fail-safe keeps one, and the
//! key's loader then rests for the throttle; an entry read late in its life is refreshed in
//! the background ([`EagerRefresh`](super::EagerRefresh)).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

use super::epochs::Mark;
use super::flight::{self, Lead, Seat};
use super::frame::{self, Kind};
use super::l1::{AnyValue, KeyRef};
use super::l2::{count_failure, Entry, EpochOf, EpochUse, Expect};
use super::lease::Waited;
use super::life::Life;
use super::namespace::{Hit, Namespace, Source};
use super::options::{Loaded, Policy, ReadOptions};
use super::read::{L2Read, Look, NotFound, Replace, Span, StaleCopy};
use super::stamp::Stamp;
use super::stats::bump;
use super::write::check_tags;
use crate::error::{Error, Result};

/// What a loader returns once its error is boxed.
type LoadResult<V> = std::result::Result<Loaded<V>, Box<dyn std::error::Error + Send + Sync>>;

/// A load in progress, owned so that a soft timeout can move it to the background.
type LoadFuture<V> = Pin<Box<dyn Future<Output = LoadResult<V>> + Send>>;

/// A caller's loader, once past the L1 hit: one type for every loader, so the load path is
/// compiled once per value type rather than once per closure.
type Loader<V> = Box<dyn FnOnce() -> LoadFuture<V> + Send>;

/// `loader` as a [`Loader`], its error boxed.
fn erase<V, F, Fut, E>(loader: F) -> Loader<V>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    Box::new(move || Box::pin(async move { loader().await.map_err(Into::into) }) as LoadFuture<V>)
}

/// A Redis fill.
struct Fill {
    kind: Kind,
    /// The namespace epoch it is framed under.
    epoch: u64,
    grace: Duration,
    /// The codec envelope of a value; empty for a "not found".
    body: Vec<u8>,
    /// How long Redis keeps it: its TTL and the grace.
    ttl: Duration,
    /// What the key must still hold for the fill to land: what the load's read saw.
    expect: Expect,
    /// The tag epochs it is framed under, kept alive as long as it.
    tags: Vec<(Box<str>, u64)>,
}

/// What a read before a load leaves to the load: what a fill must find, and the namespace
/// epoch to frame it under. `None` when Redis is not to be filled.
pub(super) type FillBasis = Option<(Expect, u64)>;

/// One load: the key, what its read saw, and what its result may replace.
struct Job {
    key: Box<str>,
    /// Taken before the read: a change after it keeps the result out of both tiers.
    stamp: Stamp,
    /// The tag epochs known before the read: the only ones a loader's tags are framed under.
    mark: Mark,
    basis: FillBasis,
    /// The cross-instance lease, given back after the fill.
    lease: Option<u64>,
    /// The L1 copy it may replace besides an older one.
    replace: Replace,
    /// The copy fail-safe answers with while this load fails; rested on failure.
    stale: Option<Arc<Life>>,
}

/// How a wait on a load ended.
enum Raced<T> {
    Done(T),
    Soft,
    Hard,
}

/// Waits for `load`, at most until `soft` (when given) or `hard`. Outside a tokio runtime
/// (an embedded cache driven by another executor) there is no timer, and it waits for `load`.
async fn race<T>(
    load: &mut (impl Future<Output = T> + Unpin),
    soft: Option<Duration>,
    hard: Option<Instant>,
) -> Raced<T> {
    if (soft.is_some() || hard.is_some()) && tokio::runtime::Handle::try_current().is_err() {
        return Raced::Done(load.await);
    }
    let soft = async {
        match soft {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    let hard = async {
        match hard {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        done = load => Raced::Done(done),
        () = hard => Raced::Hard,
        () = soft => Raced::Soft,
    }
}

impl<V> Namespace<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Reads `key` through both tiers and, when neither has it, runs `loader` and writes its
    /// value to both (cache-aside).
    ///
    /// Concurrent calls for one missing key run one load per process (per every instance with
    /// [`single_flight`](super::NamespaceBuilder::single_flight)): the others wait for it and
    /// share its value, or its error. The namespace's fail-safe, loader timeouts and eager
    /// refresh apply; [`get_or_load`](Self::get_or_load) takes per-call options, and lets the
    /// loader set the TTL and tags, skip caching, or answer "not found".
    ///
    /// The loader is `'static` (it owns what it uses, e.g. a cloned pool) because a load may
    /// outlive the call: past a soft timeout, or as an eager refresh.
    ///
    /// # Errors
    ///
    /// [`Error::Loader`] when the loader fails and [`Error::LoaderTimeout`] when it runs past
    /// the hard timeout (nothing is cached; with fail-safe, a stale copy is served instead
    /// when there is one); [`Error::TooLarge`] or [`Error::Encode`] when its value cannot be
    /// stored. Never a Redis error: Redis failures make the call skip L2.
    pub async fn get_or_set<F, Fut, E>(&self, key: &str, loader: F) -> Result<Hit<V>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let loader = move || async move { loader().await.map(Loaded::value) };
        self.fetch(key, &ReadOptions::new(), loader, true)
            .await?
            .ok_or(Error::Internal("a value load answered \"not found\""))
    }

    /// [`get_or_set`](Self::get_or_set) with per-call options and a loader that decides how
    /// its answer is cached ([`Loaded`]): its TTL and tags, not at all, or "not found"
    /// (`Ok(None)`, cached for the namespace's
    /// [`negative_ttl`](super::NamespaceBuilder::negative_ttl)).
    ///
    /// # Errors
    ///
    /// As [`get_or_set`](Self::get_or_set), and [`Error::InvalidInput`] for a zero timeout in
    /// `opts`, or a TTL or tags the loader set that a write would refuse (nothing is cached
    /// then).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> tierkit::Result<()> {
    /// use std::time::Duration;
    /// use tierkit::cache::{Loaded, ReadOptions};
    ///
    /// let kit = tierkit::Tierkit::embedded();
    /// let users = kit
    ///     .namespace::<String>("users")
    ///     .negative_ttl(Duration::from_secs(30))
    ///     .build()?;
    /// let found = users
    ///     .get_or_load("42", &ReadOptions::new(), || async {
    ///         Ok::<_, std::io::Error>(Loaded::value("ada".to_string()).tag("team:7"))
    ///     })
    ///     .await?;
    /// assert_eq!(found.as_deref().map(String::as_str), Some("ada"));
    /// let missing = users
    ///     .get_or_load("43", &ReadOptions::new(), || async {
    ///         Ok::<_, std::io::Error>(Loaded::not_found())
    ///     })
    ///     .await?;
    /// assert!(missing.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: &str,
        opts: &ReadOptions,
        loader: F,
    ) -> Result<Option<Hit<V>>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        self.fetch(key, opts, loader, false).await
    }

    /// Both loading calls: `want_value` takes a cached "not found" as a miss.
    async fn fetch<F, Fut, E>(
        &self,
        key: &str,
        opts: &ReadOptions,
        loader: F,
        want_value: bool,
    ) -> Result<Option<Hit<V>>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        // See `get`: an L1 hit takes part in tokio's cooperative budget.
        tokio::task::consume_budget().await;
        let mut stale = None;
        if !opts.skips_l1() {
            match self.look_l1(key) {
                Look::Fresh(hit, due) => {
                    if let Some(life) = due {
                        self.refresh_early(key, Some(life), erase(loader));
                    }
                    return Ok(Some(hit));
                }
                Look::Negative if !want_value => {
                    bump(&self.ns.counters.here().negative_hits);
                    return Ok(None);
                }
                Look::Stale(copy) => stale = Some(copy),
                Look::Negative | Look::Missing => {}
            }
        }
        // Boxed: the future of a call that L1 answers (most calls) is then a few words, not
        // the whole load's state (2.7 KiB), which every call would otherwise set up and move.
        Box::pin(self.load(key, opts, loader, want_value, stale)).await
    }

    /// [`fetch`](Self::fetch) past L1: `stale` is L1's expired copy, if any.
    async fn load<F, Fut, E>(
        &self,
        key: &str,
        opts: &ReadOptions,
        loader: F,
        want_value: bool,
        stale: Option<StaleCopy<V>>,
    ) -> Result<Option<Hit<V>>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        opts.check()?;
        let policy = self.ns.resilience.for_call(opts);
        policy.check()?;
        let mut stale = stale.filter(|copy| policy.serves(&copy.life));
        if stale
            .as_ref()
            .is_some_and(|copy| copy.life.is_quiet(Instant::now()))
        {
            // The loader failed less than a throttle ago: it rests.
            if let Some(hit) = self.serve_stale(key, stale.as_ref(), &policy) {
                return Ok(Some(hit));
            }
            stale = None;
        }
        // A deadline past what `Instant` holds is no deadline.
        let hard_at = policy
            .hard_timeout
            .and_then(|t| Instant::now().checked_add(t));
        // The lead of the key's load, or `None` to load without one (after a "not found").
        let lead = loop {
            match self.ns.flights.join(key) {
                Seat::Lead(lead) => break Some(lead),
                Seat::Wait(wait) => {
                    let soft = policy.soft_timeout.filter(|_| stale.is_some());
                    let mut outcome = std::pin::pin!(flight::outcome(wait));
                    match race(&mut outcome, soft, hard_at).await {
                        Raced::Done(None) => continue,
                        Raced::Done(Some(Ok((value, source)))) => {
                            let source = match source {
                                Source::Stale => {
                                    bump(&self.ns.counters.here().stale_served);
                                    Source::Stale
                                }
                                _ => {
                                    bump(&self.ns.counters.here().l1_hits);
                                    Source::L1
                                }
                            };
                            match self.to_hit(value, source) {
                                Some(hit) => return Ok(Some(hit)),
                                None if !want_value => return Ok(None),
                                // A "not found" from a `get_or_load` of the key: this call
                                // wants a value, and loads one itself.
                                None => break None,
                            }
                        }
                        Raced::Done(Some(Err(e))) => {
                            let e = Error::from_shared(e);
                            return self.failed_wait(key, stale, &policy, e).await;
                        }
                        Raced::Soft => {
                            if let Some(hit) = self.serve_stale(key, stale.as_ref(), &policy) {
                                return Ok(Some(hit));
                            }
                            // Retired meanwhile: this call waits for the load after all.
                            stale = None;
                            continue;
                        }
                        Raced::Hard => {
                            let timeout = policy.hard_timeout.unwrap_or_default();
                            let e = Error::LoaderTimeout(timeout);
                            return self.failed_wait(key, stale, &policy, e).await;
                        }
                    }
                }
            }
        };
        // A load that finished while this call queued for the lead left its value in L1.
        if !policy.skip_l1 {
            if let Look::Fresh(hit, _) = self.look_l1(key) {
                if let Some(lead) = lead {
                    lead.finish(Ok((hit.value.clone(), hit.source)));
                }
                return Ok(Some(hit));
            }
        }
        let span = tracing::debug_span!(
            "tierkit.cache.load",
            cache.namespace = %self.ns.name,
            cache.source = tracing::field::Empty,
            cache.outcome = tracing::field::Empty,
            cache.loader_ms = tracing::field::Empty,
        );
        let loader = erase(loader);
        self.lead(key, lead, loader, &policy, stale, hard_at, want_value)
            .instrument(span)
            .await
    }

    /// The lead's load: L2, then (after waiting for another instance's load, with a lease)
    /// the loader, raced against the timeouts.
    #[allow(clippy::too_many_arguments)]
    async fn lead(
        &self,
        key: &str,
        lead: Option<Lead>,
        loader: Loader<V>,
        policy: &Policy,
        mut stale: Option<StaleCopy<V>>,
        hard_at: Option<Instant>,
        want_value: bool,
    ) -> Result<Option<Hit<V>>> {
        let span = tracing::Span::current();
        let replace = if policy.skip_l1 {
            Replace::Any
        } else {
            Replace::Older
        };
        let stamp = self.ns.fresh.stamp(key);
        let mark = self.ns.epochs.mark();
        let mut basis = match self.l2_read(key).await {
            L2Read::Hit(found) if found.value_is_some() || !want_value => {
                let due = !self.l1_on && self.refresh_due(found.span);
                let (value, source) = self.keep_found(key, found, stamp, &replace);
                if let Some(lead) = lead {
                    lead.finish(Ok((value.clone(), source)));
                }
                span.record("cache.source", source_name(source));
                if due {
                    // No L1 copy to carry the refresh: this read starts it.
                    self.refresh_early(key, None, loader);
                }
                return Ok(self.to_hit(value, source));
            }
            // A cached "not found", and this call wants a value: whatever copy it held is
            // older than that answer.
            L2Read::Hit(found) => {
                stale = None;
                let epoch = found.epoch;
                self.fill_basis(Expect::Version(found.version), epoch).await
            }
            L2Read::Stale {
                found,
                expect,
                epoch,
            } => {
                // A copy L1 still holds is as new as Redis's: a newer write would have
                // retired it (the backplane). It also carries the key's throttle.
                if policy.fail_safe.is_some() && stale.is_none() {
                    stale = self.stale_from_l2(key, found, stamp);
                }
                self.fill_basis(expect, epoch).await
            }
            L2Read::Miss {
                expect,
                epoch,
                replaced,
            } => {
                if replaced {
                    stale = None;
                }
                self.fill_basis(expect, epoch).await
            }
            L2Read::Unreachable => None,
        };
        let mut lease = None;
        if let (Some(_), Some(ttl)) = (&basis, self.ns.lease) {
            // Another instance's load is bounded by this call's timeouts as its own would be.
            let mut soft = policy.soft_timeout.filter(|_| stale.is_some());
            let wait = self.await_other_load(key, ttl, stamp, basis, want_value);
            let mut waiting = std::pin::pin!(wait);
            loop {
                match race(&mut waiting, soft, hard_at).await {
                    Raced::Done(Waited::Loaded(value, source)) => {
                        if let Some(lead) = lead {
                            lead.finish(Ok((value.clone(), source)));
                        }
                        return Ok(self.to_hit(value, source));
                    }
                    Raced::Done(Waited::Lead {
                        token,
                        basis: b,
                        replaced,
                    }) => {
                        lease = token;
                        basis = b;
                        if replaced {
                            stale = None;
                        }
                        break;
                    }
                    // The instance holding the lease is loading: its value will reach Redis.
                    Raced::Soft => {
                        if let Some(hit) = self.serve_stale(key, stale.as_ref(), policy) {
                            span.record("cache.outcome", "soft_timeout");
                            return Ok(Some(hit));
                        }
                        stale = None;
                        soft = None;
                    }
                    Raced::Hard => {
                        let e = Error::LoaderTimeout(policy.hard_timeout.unwrap_or_default());
                        return self.fail_safe(key, stale.as_ref(), policy, e);
                    }
                }
            }
        }
        bump(&self.ns.counters.here().misses);
        let job = Job {
            key: key.into(),
            stamp,
            mark,
            basis,
            lease,
            replace,
            stale: stale.as_ref().map(|copy| copy.life.clone()),
        };
        let mut load = self.start(loader);
        // A soft timeout sends the load to the background: room for it is taken first, or the
        // call waits for its load after all.
        let ticket = match (&stale, policy.soft_timeout) {
            (Some(_), Some(soft)) => self.core.background.reserve().map(|t| (t, soft)),
            _ => None,
        };
        let raced = match ticket {
            Some((ticket, soft)) => match race(&mut load, Some(soft), hard_at).await {
                Raced::Soft => match self.serve_stale(key, stale.as_ref(), policy) {
                    Some(hit) => {
                        self.to_background(load, job, lead, hard_at, policy, ticket, &span);
                        span.record("cache.outcome", "soft_timeout");
                        span.record("cache.source", "stale");
                        return Ok(Some(hit));
                    }
                    // Retired meanwhile: this call waits for its load after all.
                    None => race(&mut load, None, hard_at).await,
                },
                raced => raced,
            },
            None => race(&mut load, None, hard_at).await,
        };
        let loaded = match raced {
            Raced::Done(loaded) => self.loaded(loaded),
            _ => Err(self.timed_out(policy.hard_timeout)),
        };
        match self.settle(job, lead, loaded).await {
            Ok((value, source)) => {
                span.record("cache.outcome", "loaded");
                span.record("cache.source", source_name(source));
                Ok(self.to_hit(value, source))
            }
            Err(e) => {
                span.record("cache.outcome", e.kind_name());
                let answer = self.fail_safe(key, stale.as_ref(), policy, e);
                if answer
                    .as_ref()
                    .is_ok_and(|hit| hit.as_ref().is_some_and(|h| h.source == Source::Stale))
                {
                    span.record("cache.source", "stale");
                }
                answer
            }
        }
    }

    /// Lets a load the soft timeout cut short finish in the background (with its lead, so its
    /// waiters keep waiting on it), bounded by the hard timeout, which a soft one requires.
    #[allow(clippy::too_many_arguments)]
    fn to_background(
        &self,
        mut load: LoadFuture<V>,
        job: Job,
        lead: Option<Lead>,
        hard_at: Option<Instant>,
        policy: &Policy,
        ticket: super::background::Ticket,
        span: &tracing::Span,
    ) {
        let ns = self.clone();
        let hard = policy.hard_timeout;
        let background = async move {
            let loaded = match race(&mut load, None, hard_at).await {
                Raced::Done(loaded) => ns.loaded(loaded),
                _ => Err(ns.timed_out(hard)),
            };
            // Nobody waits on this call: its waiters have the outcome from the lead.
            let _ = ns.settle(job, lead, loaded).await;
        }
        .instrument(tracing::debug_span!(
            parent: span,
            "tierkit.cache.background_load",
            cache.namespace = %self.ns.name,
            cache.loader_ms = tracing::field::Empty,
        ));
        ticket.spawn(background);
        bump(&self.ns.counters.here().background_loads);
    }

    /// Starts the loader, timed and counted.
    fn start(&self, loader: Loader<V>) -> LoadFuture<V> {
        bump(&self.ns.counters.here().loader_calls);
        let ns = self.ns.clone();
        let started = Instant::now();
        let load = loader();
        Box::pin(async move {
            let loaded = load.await;
            let took = started.elapsed();
            tracing::Span::current().record("cache.loader_ms", took.as_secs_f64() * 1e3);
            ns.record_load(took);
            crate::metrics::loader(&ns.name, took);
            loaded
        })
    }

    /// A loader's result as a load's: its error counted and shared.
    fn loaded(&self, loaded: LoadResult<V>) -> Result<Loaded<V>> {
        loaded.map_err(|e| {
            bump(&self.ns.counters.here().loader_errors);
            Error::Loader(Arc::from(e))
        })
    }

    /// The error of a load the hard timeout `after` ended.
    fn timed_out(&self, after: Option<Duration>) -> Error {
        bump(&self.ns.counters.here().loader_timeouts);
        Error::LoaderTimeout(after.unwrap_or_default())
    }

    /// The answer of a call whose wait on another call's load failed. Holding no copy of its
    /// own (an L2-only namespace keeps none; L1 may have let it go), it asks Redis, which may
    /// hold a value written meanwhile, or an expired copy for fail-safe.
    async fn failed_wait(
        &self,
        key: &str,
        mut stale: Option<StaleCopy<V>>,
        policy: &Policy,
        error: Error,
    ) -> Result<Option<Hit<V>>> {
        if stale.is_none() && self.stores_values() {
            let stamp = self.ns.fresh.stamp(key);
            match self.l2_read(key).await {
                L2Read::Hit(found) if found.value_is_some() => {
                    let (value, source) = self.keep_found(key, found, stamp, &Replace::Older);
                    if let Some(hit) = self.to_hit(value, source) {
                        return Ok(Some(hit));
                    }
                }
                L2Read::Stale { found, .. } if policy.fail_safe.is_some() => {
                    stale = self.stale_from_l2(key, found, stamp);
                }
                _ => {}
            }
        }
        self.fail_safe(key, stale.as_ref(), policy, error)
    }

    /// A failed load's answer: a fresh copy a write put in L1 while it ran; else the stale
    /// copy, when fail-safe may still serve it (the key's loader then rests for the
    /// throttle); else the error.
    fn fail_safe(
        &self,
        key: &str,
        stale: Option<&StaleCopy<V>>,
        policy: &Policy,
        error: Error,
    ) -> Result<Option<Hit<V>>> {
        if !policy.skip_l1 {
            if let Look::Fresh(hit, _) = self.look_l1(key) {
                return Ok(Some(hit));
            }
        }
        let (Some(copy), Some(fail_safe)) = (stale, policy.fail_safe) else {
            return Err(error);
        };
        let Some(hit) = self.serve_stale(key, Some(copy), policy) else {
            return Err(error);
        };
        copy.life.hush_for(fail_safe.throttle);
        tracing::debug!(cache.namespace = %self.ns.name, cache.outcome = error.kind_name(),
            "tierkit: the load failed; serving a stale copy (fail-safe)");
        Ok(Some(hit))
    }

    /// Ends a load: keeps its value in L1, hands it to the waiters, fills Redis, gives the
    /// lease back. Returns what the leader serves.
    async fn settle(
        &self,
        job: Job,
        lead: Option<Lead>,
        loaded: Result<Loaded<V>>,
    ) -> Result<(AnyValue, Source)> {
        let kept = self.keep_loaded(&job, loaded);
        let (served, fill) = match kept {
            Ok(kept) => kept,
            Err(e) => {
                if let Some(life) = &job.stale {
                    if let Some(fail_safe) = self.ns.resilience.fail_safe {
                        life.hush_for(fail_safe.throttle);
                    }
                }
                let e = Arc::new(e);
                if let Some(lead) = lead {
                    lead.finish(Err(e.clone()));
                }
                self.end_lease(&job.key, job.lease).await;
                return Err(Error::from_shared(e));
            }
        };
        if let Some(lead) = lead {
            if self.ns.fresh.changed_since(&job.key, job.stamp) {
                // A change landed during the load: its value may be older than what a waiter
                // that joined late has already seen, so the waiters read again instead.
                drop(lead);
            } else {
                lead.finish(Ok(served.clone()));
            }
        }
        if let Some(fill) = fill {
            // After the waiters are released: they need not wait for Redis to take it.
            self.fill_l2(&job.key, fill, job.mark, job.stamp).await;
        }
        self.end_lease(&job.key, job.lease).await;
        Ok(served)
    }

    /// A loaded answer checked, encoded and kept in L1; the Redis fill it calls for.
    fn keep_loaded(
        &self,
        job: &Job,
        loaded: Result<Loaded<V>>,
    ) -> Result<((AnyValue, Source), Option<Fill>)> {
        let Loaded {
            value,
            ttl,
            tags,
            cache,
        } = loaded?;
        let key = &*job.key;
        // A "not found" is never served stale: it has no grace.
        let (ttl, grace) = match value {
            Some(_) => (Some(ttl.unwrap_or(self.ns.ttl)), self.ns.resilience.grace()),
            None => (ttl.or(self.ns.resilience.negative_ttl), Duration::ZERO),
        };
        let problem = ttl.and_then(|ttl| {
            super::builder::ttl_problem(ttl)
                .or_else(|| super::builder::ttl_problem(ttl.saturating_add(grace)))
        });
        if let Some(problem) = problem {
            return Err(Error::invalid("ttl", problem));
        }
        check_tags(&tags)?;
        let (value, bytes, weight): (AnyValue, _, _) = match value {
            Some(value) => {
                let (bytes, weight) = self.encode(key, &value)?;
                (Arc::new(value), bytes, weight)
            }
            None => {
                let bytes = self.stores_values().then(Vec::new);
                (Arc::new(NotFound), bytes, 0)
            }
        };
        let (Some(ttl), true) = (ttl, cache) else {
            // Served to this call and its waiters, kept nowhere.
            return Ok(((value, Source::Loader), self.retire_replaced(job)));
        };
        let ttl = self.jittered(ttl);
        // As new as what the read before the load found, and no newer: a copy L1 took from
        // Redis meanwhile reflects a write that landed after that read, and wins.
        let version = match &job.basis {
            Some((Expect::Version(v), _)) => *v,
            _ => 0,
        };
        let tag_list: Option<Arc<[Box<str>]>> =
            (!tags.is_empty()).then(|| tags.iter().map(|t| t.as_str().into()).collect());
        let entry = self.l1_value(
            value.clone(),
            weight,
            Span::Fresh(ttl),
            tag_list.clone(),
            version,
        );
        let served = self.keep_l1(key, entry, job.stamp, Source::Loader, &job.replace);
        let fill = match (bytes, &job.basis) {
            // A change raced the load: what it loaded may be stale already.
            _ if self.ns.fresh.changed_since(key, job.stamp) => None,
            (Some(bytes), Some((expect, epoch))) => {
                let negative = served.0.is::<NotFound>();
                let tags: Vec<(Box<str>, u64)> = tag_list
                    .iter()
                    .flat_map(|t| t.iter())
                    .map(|t| (t.clone(), 0))
                    .collect();
                Some(Fill {
                    kind: if negative { Kind::Absent } else { Kind::Value },
                    epoch: *epoch,
                    grace,
                    body: bytes,
                    ttl: ttl.saturating_add(grace),
                    expect: expect.clone(),
                    tags,
                })
            }
            // The read failed: a write now would most likely wait out another timeout.
            (Some(_), None) => {
                bump(&self.ns.counters.here().l2_skipped);
                None
            }
            // No L2 that stores values: nothing to write.
            (None, _) => None,
        };
        Ok((served, fill))
    }

    /// Retires the copies an answer kept nowhere replaces, so that fail-safe never serves
    /// one older than it: L1's expired copy the load started from, and (through a tombstone,
    /// where Redis still holds what the load's read saw) Redis's, which another instance's
    /// fail-safe would read. Returns that tombstone's fill.
    fn retire_replaced(&self, job: &Job) -> Option<Fill> {
        self.ns.resilience.fail_safe?;
        if let Some(life) = &job.stale {
            let key_ref = KeyRef {
                ns: self.ns.id,
                key: &job.key,
            };
            let _put = self.ns.fresh.put_lock(&job.key);
            let held = self.l1.get(&key_ref).and_then(|held| held.life);
            if held.is_some_and(|held| Arc::ptr_eq(&held, life)) {
                self.l1.invalidate(&key_ref);
            }
        }
        if self.ns.fresh.changed_since(&job.key, job.stamp) {
            // A change raced the load, and replaced those copies itself.
            return None;
        }
        let (expect, epoch) = job.basis.clone()?;
        Some(Fill {
            kind: Kind::Tombstone,
            epoch,
            grace: Duration::ZERO,
            body: Vec::new(),
            ttl: self.ns.ttl,
            expect,
            tags: Vec::new(),
        })
    }

    /// What a fill after a load must find and frame under, from the read before the load. The
    /// namespace's epoch is made now when absent, before the loader runs: a clear during the
    /// load then still invalidates the fill.
    pub(super) async fn fill_basis(&self, expect: Expect, epoch: Option<u64>) -> FillBasis {
        if !self.stores_values() {
            return None;
        }
        if let Some(epoch) = epoch {
            return Some((expect, epoch));
        }
        let made = async {
            let wanted = [EpochUse {
                of: EpochOf::Namespace,
                epoch: 0,
                ttl: Duration::ZERO,
            }];
            let asked = self.ns.epochs.asking();
            let made = self.l2()?.make_epochs(&self.ns.keyspace, &wanted).await?;
            let epoch = made.first().copied();
            self.ns.epochs.learn(asked, EpochOf::Namespace, epoch);
            epoch.ok_or(Error::Internal("no epoch made"))
        }
        .await;
        match made {
            Ok(epoch) => Some((expect, epoch)),
            Err(e) => {
                count_failure(&self.ns.counters, &e);
                None
            }
        }
    }

    /// Writes a load's value to Redis where the key still holds what the load's read saw.
    /// A value the loader tagged is framed under the tag epochs this instance knew before
    /// that read ([`Epochs::known_at`](super::epochs::Epochs::known_at)); with a tag it did not
    /// know yet, only L1 keeps the value this time, and the tag's epoch is made for the next.
    /// Where the key went absent meanwhile, the fill lands too unless this instance heard of a
    /// change to it since `stamp` (or may have missed one): an absent key is what the read saw
    /// expired by itself, since a change leaves a tombstone or a value, and its message.
    async fn fill_l2(&self, key: &str, mut fill: Fill, mark: Mark, stamp: Stamp) {
        for (tag, epoch) in &mut fill.tags {
            *epoch = self.ns.epochs.known_at(tag, mark).unwrap_or(0);
        }
        let unknown: Vec<EpochUse<'_>> = fill
            .tags
            .iter()
            .filter(|(_, epoch)| *epoch == 0)
            .map(|(tag, _)| EpochUse {
                of: EpochOf::Tag(tag),
                epoch: 0,
                ttl: fill.ttl,
            })
            .collect();
        let filled = async {
            let l2 = self.l2()?;
            if !unknown.is_empty() {
                let asked = self.ns.epochs.asking();
                let made = l2.make_epochs(&self.ns.keyspace, &unknown).await?;
                for (used, epoch) in unknown.iter().zip(made) {
                    self.ns.epochs.learn(asked, used.of, Some(epoch));
                }
                return Ok(None);
            }
            let tags: Vec<(&str, u64)> = fill.tags.iter().map(|(t, e)| (&**t, *e)).collect();
            let frame = frame::encode(fill.kind, fill.epoch, &tags, fill.grace, &fill.body);
            let alive: Vec<EpochUse<'_>> = tags
                .iter()
                .map(|(tag, epoch)| EpochUse {
                    of: EpochOf::Tag(tag),
                    epoch: *epoch,
                    ttl: fill.ttl,
                })
                .collect();
            let entry = [Entry {
                key,
                frame: &frame,
                ttl: fill.ttl,
                expect: Some(&fill.expect),
                or_absent: *self.core.coherent.borrow() && !self.ns.fresh.changed_since(key, stamp),
            }];
            l2.write(&self.ns.keyspace, &entry, &alive, None)
                .await
                .map(Some)
        }
        .await;
        match filled {
            Ok(Some(written)) if written.landed.first() == Some(&false) => {
                tracing::debug!(cache.namespace = %self.ns.name,
                    "tierkit: a change landed while loading; the loaded value stays out of Redis");
            }
            Ok(_) => {}
            Err(e) => count_failure(&self.ns.counters, &e),
        }
    }

    /// Whether an entry fresh for `span` yet is in the part of its life where eager refresh
    /// reloads it.
    fn refresh_due(&self, span: Span) -> bool {
        let Some(eager) = self.ns.resilience.eager else {
            return false;
        };
        match span {
            Span::Fresh(left) => left < eager.window(self.ns.ttl, self.ns.load_time()),
            Span::Expired { .. } => true,
        }
    }

    /// Starts the one background refresh of an entry (of the L1 copy with `life`, or of the
    /// Redis entry an L2-only read found due). Left to a later hit when it cannot start.
    ///
    /// With an L1, the refresh leads the key's load, so a caller that finds the copy gone
    /// waits for it. Without one (L2-only), readers go to Redis, whose entry is fresh yet, and
    /// must not wait on the refresh: it leads among refreshes only.
    fn refresh_early(&self, key: &str, life: Option<Arc<Life>>, loader: Loader<V>) {
        if life.as_ref().is_some_and(|life| !life.claim()) {
            return;
        }
        let flights = if self.l1_on {
            &self.ns.flights
        } else {
            &self.ns.refreshes
        };
        // A load or refresh of the key is in flight already: it renews the copy.
        let Seat::Lead(lead) = flights.join(key) else {
            return;
        };
        let ns = self.clone();
        let key: Box<str> = key.into();
        let claimed = life.clone();
        let span = tracing::debug_span!(
            "tierkit.cache.refresh",
            cache.namespace = %self.ns.name,
            cache.loader_ms = tracing::field::Empty,
        );
        let refresh = async move { ns.refresh(key, lead, life, loader).await }.instrument(span);
        if self.core.background.spawn(refresh) {
            bump(&self.ns.counters.here().background_loads);
        } else if let Some(life) = claimed {
            life.unclaim();
        }
    }

    /// An eager refresh: takes a newer entry another instance put in Redis, or loads.
    async fn refresh(&self, key: Box<str>, lead: Lead, life: Option<Arc<Life>>, loader: Loader<V>) {
        let stamp = self.ns.fresh.stamp(&key);
        let mark = self.ns.epochs.mark();
        let replace = life.map_or(Replace::Older, Replace::Life);
        let basis = match self.l2_read(&key).await {
            L2Read::Hit(found) if !self.refresh_due(found.span) => {
                let served = self.keep_found(&key, found, stamp, &replace);
                lead.finish(Ok(served));
                return;
            }
            L2Read::Hit(found) => {
                let epoch = found.epoch;
                self.fill_basis(Expect::Version(found.version), epoch).await
            }
            L2Read::Stale { expect, epoch, .. } | L2Read::Miss { expect, epoch, .. } => {
                self.fill_basis(expect, epoch).await
            }
            L2Read::Unreachable => None,
        };
        let hard = self.ns.resilience.hard_timeout;
        let hard_at = hard.and_then(|t| Instant::now().checked_add(t));
        let mut load = self.start(loader);
        let loaded = match race(&mut load, None, hard_at).await {
            Raced::Done(loaded) => self.loaded(loaded),
            _ => Err(self.timed_out(hard)),
        };
        let job = Job {
            key,
            stamp,
            mark,
            basis,
            lease: None,
            replace,
            stale: None,
        };
        if let Err(e) = self.settle(job, Some(lead), loaded).await {
            tracing::debug!(cache.namespace = %self.ns.name, cache.outcome = e.kind_name(),
                "tierkit: an eager refresh failed; the current copy stays until it expires");
        }
    }
}

/// A source as trace fields name it.
fn source_name(source: Source) -> &'static str {
    match source {
        Source::L1 => "l1",
        Source::L2 => "l2",
        Source::Loader => "loader",
        Source::Stale => "stale",
    }
}
