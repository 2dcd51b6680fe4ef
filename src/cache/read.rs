//! The read path: an L1 hit (the hot path), then L2, whose frames are trusted only under the
//! current epochs, and keeping what L2 answered in L1 unless it is older than what L1 holds or
//! a change raced the read.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::frame::{self, Kind};
use super::l1::{weight, AnyValue, KeyRef, L1Key, L1Value};
use super::l2::{count_failure, EpochOf, Expect, Stored};
use super::life::Life;
use super::namespace::{Hit, Namespace, Source};
use super::options::{Policy, ReadOptions};
use super::stamp::Stamp;
use super::stats::bump;
use crate::codec::Codec;

/// The version of an L1 entry this instance wrote or loaded itself: newer than any copy read
/// from L2 until a change evicts it.
pub(super) const LOCAL: u64 = u64::MAX;

/// What an L2 read found.
pub(super) enum L2Read<V> {
    /// A fresh entry to serve: a value, or a cached "not found".
    Hit(Found<V>),
    /// An entry past its logical expiry, kept for fail-safe ([`frame`](super::frame)'s grace):
    /// served only when the loader fails, otherwise a miss whose fill must find `expect`.
    Stale {
        found: Found<V>,
        expect: Expect,
        epoch: Option<u64>,
    },
    /// Nothing to serve. A fill after a load must still find `expect` to land, and is framed
    /// under `epoch`, the namespace's epoch when the read was made (`None`: absent).
    /// `replaced`: the key's place holds a tombstone or bytes that are not a value of this
    /// namespace, so whatever copy of it an instance holds was replaced. (An absent key, or
    /// an entry under an epoch that is gone, tells nothing of the sort: Redis may have let it
    /// expire or evicted it, and a clear or tag invalidation reaches every instance's copies
    /// through the backplane.)
    Miss {
        expect: Expect,
        epoch: Option<u64>,
        replaced: bool,
    },
    /// Redis failed, timed out or is down.
    Unreachable,
}

/// An entry read from L2: its value (`None`: a cached "not found"), L1 weight, how long it is
/// fresh (or has been expired), its version and tags, and the namespace epoch it was read
/// under, for a fill that replaces it.
pub(super) struct Found<V> {
    value: Option<V>,
    weight: u32,
    pub(super) span: Span,
    pub(super) version: u64,
    tags: Option<Arc<[Box<str>]>>,
    pub(super) epoch: Option<u64>,
}

impl<V> Found<V> {
    /// Whether it is a value, not a cached "not found".
    pub(super) fn value_is_some(&self) -> bool {
        self.value.is_some()
    }
}

/// Where a copy is in its logical life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Span {
    /// Fresh for this long yet.
    Fresh(Duration),
    /// Expired this long ago, and kept (for fail-safe) this long yet.
    Expired { ago: Duration, kept: Duration },
}

/// Which L1 copy a put may replace, besides an older or expired one.
#[derive(Clone, Default)]
pub(super) enum Replace {
    /// No other.
    #[default]
    Older,
    /// The copy with this life, whatever its version: the one an eager refresh renews.
    Life(Arc<Life>),
    /// Any: a read that skips L1 takes what Redis holds (unless a change raced it).
    Any,
}

/// The value an L1 entry holds for a cached "not found".
pub(super) struct NotFound;

/// What the L1 holds for a key, as a read sees it.
pub(super) enum Look<V> {
    /// A fresh copy; with its life when an eager refresh is due.
    Fresh(Hit<V>, Option<Arc<Life>>),
    /// A cached "not found".
    Negative,
    /// A copy past its logical expiry, kept for fail-safe.
    Stale(StaleCopy<V>),
    Missing,
}

/// An expired copy at hand for fail-safe, and its life (when it expired; the throttle). It is
/// served only if nothing retired it since it was found ([`serve_stale`](Namespace::serve_stale)).
pub(super) struct StaleCopy<V> {
    value: Arc<V>,
    pub(super) life: Arc<Life>,
    /// Taken when the copy was found: a change of the key since retires it.
    stamp: Stamp,
    /// Whether L1 holds it: it is then served only while L1 still does, as every change of
    /// the key on this instance (a write, an invalidation, one another instance announced)
    /// replaces or retires L1's entry.
    held: bool,
}

impl<V> Namespace<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// An L1 hit, counted. The hot path: one lookup, one `Arc` clone, one relaxed add. An L1
    /// miss is answered by this instance's write of the key in flight, if any
    /// ([`writing`](super::writing)).
    #[inline]
    pub(super) fn l1_hit(&self, key: &str) -> Option<Hit<V>> {
        match self.look_l1(key) {
            Look::Fresh(hit, _) => Some(hit),
            _ => None,
        }
    }

    /// What L1 holds for `key`; a fresh copy is counted as a hit.
    #[inline]
    pub(super) fn look_l1(&self, key: &str) -> Look<V> {
        if !self.l1_on {
            return Look::Missing;
        }
        let (held, life) = match self.live_l1(key) {
            Some(found) => (found.value, found.life),
            None => match self.ns.writing.get(key) {
                Some(value) => (value, None),
                None => return Look::Missing,
            },
        };
        let due = match life {
            None => None,
            Some(life) if life.is_stale() => return self.look_stale(key),
            Some(life) => life.wants_refresh().then_some(life),
        };
        match Arc::downcast::<V>(held) {
            Ok(value) => {
                bump(&self.ns.counters.here().l1_hits);
                Look::Fresh(
                    Hit {
                        value,
                        source: Source::L1,
                    },
                    due,
                )
            }
            Err(other) if other.is::<NotFound>() => Look::Negative,
            // Namespace ids are bound to one type at declaration, so this cannot happen; if
            // it did, a miss is the safe answer.
            Err(_) => Look::Missing,
        }
    }

    /// L1's expired copy of `key`, looked at again under a stamp taken first: a change that
    /// lands from here on retires it, and one that landed before has replaced or retired the
    /// entry already.
    #[cold]
    fn look_stale(&self, key: &str) -> Look<V> {
        let stamp = self.ns.fresh.stamp(key);
        let Some(entry) = self.live_l1(key) else {
            return Look::Missing;
        };
        match (&entry.life, Arc::downcast::<V>(entry.value.clone())) {
            (Some(life), Ok(value)) if life.is_stale() => Look::Stale(StaleCopy {
                value,
                life: life.clone(),
                stamp,
                held: true,
            }),
            // Replaced meanwhile by a fresh copy or a "not found": taken as a miss, which
            // loads (and finds that copy first).
            _ => Look::Missing,
        }
    }

    /// Serves `copy` for fail-safe, if it may still be served: within the call's bound past
    /// its expiry, the key unchanged since the copy was found, and (for a copy L1 held) still
    /// L1's entry. Every stale answer goes through here, at the moment it is given.
    pub(super) fn serve_stale(
        &self,
        key: &str,
        copy: Option<&StaleCopy<V>>,
        policy: &Policy,
    ) -> Option<Hit<V>> {
        let copy = copy?;
        if !policy.serves(&copy.life) || self.ns.fresh.changed_since(key, copy.stamp) {
            return None;
        }
        if copy.held {
            let entry = self.live_l1(key)?;
            if !entry
                .life
                .is_some_and(|life| Arc::ptr_eq(&life, &copy.life))
            {
                return None;
            }
        }
        bump(&self.ns.counters.here().stale_served);
        Some(Hit {
            value: copy.value.clone(),
            source: Source::Stale,
        })
    }

    /// An expired copy Redis answered, for fail-safe: kept in L1 (where the throttle rests on
    /// it) unless L1 holds a newer copy or a change raced the read, and then not at hand.
    /// `None` too for a "not found", or an expiry further back than this process's clock.
    pub(super) fn stale_from_l2(
        &self,
        key: &str,
        found: Found<V>,
        stamp: Stamp,
    ) -> Option<StaleCopy<V>> {
        let Span::Expired { ago, .. } = found.span else {
            return None;
        };
        Instant::now().checked_sub(ago)?;
        let value = Arc::new(found.value?);
        let entry = self.l1_value(
            value.clone(),
            found.weight,
            found.span,
            found.tags,
            found.version,
        );
        let life = entry.life.clone()?;
        let held = self.l1_on;
        if held {
            let (_, source) = self.keep_l1(key, entry, stamp, Source::Stale, &Replace::Older);
            if source != Source::Stale || self.ns.fresh.changed_since(key, stamp) {
                return None;
            }
        }
        Some(StaleCopy {
            value,
            life,
            stamp,
            held,
        })
    }

    /// `key`'s L1 entry, if it may be served. One that may not (made before the L1 was
    /// dropped, or covered by a tag or pattern invalidated since) is a miss, and is taken out
    /// of the way of the next fill.
    #[inline]
    pub(super) fn live_l1(&self, key: &str) -> Option<L1Value> {
        let key_ref = KeyRef {
            ns: self.ns.id,
            key,
        };
        let found = self.l1.get(&key_ref)?;
        if self.is_live(key, &found) {
            return Some(found);
        }
        self.l1.invalidate(&key_ref);
        None
    }

    /// Whether an L1 entry of `key` may be served: made in the current L1 generation, and not
    /// covered by a tag or pattern invalidated since. One load and compare when nothing was.
    #[inline]
    fn is_live(&self, key: &str, entry: &L1Value) -> bool {
        let fresh = &self.ns.fresh;
        entry.generation == fresh.generation()
            && (entry.epoch == fresh.epoch()
                || !fresh.retired(key, entry.tags.as_deref(), entry.epoch))
    }

    /// Reads `key`: L1, then Redis. `None` when neither has it (or holds a cached "not
    /// found"). Never returns a Redis error: when Redis is down or fails, the read is answered
    /// from L1 alone.
    pub async fn get(&self, key: &str) -> Option<Hit<V>> {
        // An L1 hit never waits on anything: without this, a task reading in a loop would
        // keep its worker thread from every other task (tokio's cooperative budget).
        tokio::task::consume_budget().await;
        if let Some(hit) = self.l1_hit(key) {
            return Some(hit);
        }
        // Boxed, as a load is (`fetch`): an L1 hit's future stays small.
        Box::pin(self.get_with(key, &ReadOptions::new())).await
    }

    /// [`get`](Self::get) with per-call options: [`ReadOptions::skip_l1`] reads Redis even
    /// when L1 holds a copy. An expired copy is served (as [`Source::Stale`]) only with
    /// fail-safe on and Redis unable to answer: a read has no loader to fail.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> tierkit::Result<()> {
    /// use tierkit::cache::ReadOptions;
    ///
    /// let kit = tierkit::Tierkit::embedded();
    /// let names = kit.namespace::<String>("names").build()?;
    /// names.set("1", "ada".to_string()).await?;
    /// let fresh = names.get_with("1", &ReadOptions::new().skip_l1()).await;
    /// # let _ = fresh;
    /// # Ok(()) }
    /// ```
    pub async fn get_with(&self, key: &str, opts: &ReadOptions) -> Option<Hit<V>> {
        tokio::task::consume_budget().await;
        let mut stale = None;
        if !opts.skips_l1() {
            match self.look_l1(key) {
                Look::Fresh(hit, _) => return Some(hit),
                Look::Negative => {
                    bump(&self.ns.counters.here().negative_hits);
                    return None;
                }
                Look::Stale(copy) => stale = Some(copy),
                Look::Missing => {}
            }
        }
        let stamp = self.ns.fresh.stamp(key);
        let read = self.l2_read(key).await;
        if matches!(read, L2Read::Unreachable) {
            let policy = self.ns.resilience.for_call(opts);
            if let Some(hit) = self.serve_stale(key, stale.as_ref(), &policy) {
                return Some(hit);
            }
        }
        let replace = if opts.skips_l1() {
            Replace::Any
        } else {
            Replace::Older
        };
        self.serve(key, read, stamp, &replace)
    }

    /// A read's answer: a hit kept in L1 (or the newer copy L1 already holds), or a counted miss.
    fn serve(&self, key: &str, read: L2Read<V>, stamp: Stamp, replace: &Replace) -> Option<Hit<V>> {
        match read {
            L2Read::Hit(found) => {
                let (value, source) = self.keep_found(key, found, stamp, replace);
                self.to_hit(value, source)
            }
            _ => {
                bump(&self.ns.counters.here().misses);
                None
            }
        }
    }

    /// What an L1 value is to a caller: the namespace's value, or `None` for a cached "not
    /// found".
    pub(super) fn to_hit(&self, value: AnyValue, source: Source) -> Option<Hit<V>> {
        let value = Arc::downcast::<V>(value).ok()?;
        Some(Hit { value, source })
    }

    /// Reads `key` from L2, counting hits, errors and decode failures. A miss is counted by
    /// the caller.
    pub(super) async fn l2_read(&self, key: &str) -> L2Read<V> {
        self.l2_read_many(&[key])
            .await
            .pop()
            .unwrap_or(L2Read::Unreachable)
    }

    /// Reads `keys` from L2 in one round trip, trusting an entry only under the epochs its
    /// frame names: checked against those this instance knows (kept fresh by the backplane),
    /// and asked of Redis in a second round trip when it knows none or another.
    pub(super) async fn l2_read_many(&self, keys: &[&str]) -> Vec<L2Read<V>> {
        let unreachable = |e| {
            count_failure(&self.ns.counters, &e);
            keys.iter().map(|_| L2Read::Unreachable).collect()
        };
        if !self.stores_values() {
            // Nothing of this namespace is in Redis.
            return keys
                .iter()
                .map(|_| L2Read::Miss {
                    expect: Expect::Absent,
                    epoch: None,
                    replaced: false,
                })
                .collect();
        }
        if self.ns.owed.is_owing() || self.core.runs_unchecked.load(Ordering::Acquire) {
            // Changes this instance made are not in Redis yet, or Redis came back from a
            // restart not yet checked: what it holds may be what those changes replaced.
            return unreachable(crate::error::Error::Unavailable);
        }
        let l2 = match self.l2() {
            Ok(l2) => l2,
            Err(e) => return unreachable(e),
        };
        let (space, epochs) = (&self.ns.keyspace, &self.ns.epochs);
        let asked = epochs.asking();
        let stored = match l2.read(space, keys).await {
            Ok(stored) => stored,
            Err(e) => return unreachable(e),
        };
        let frames: Vec<_> = stored
            .iter()
            .map(|stored| match stored {
                Stored::Value { bytes, .. } => frame::parse(bytes),
                _ => None,
            })
            .collect();
        // Epochs to ask Redis for: those a value's frame names that this instance does not
        // know, or knows otherwise (a clear or an eviction it has not heard of).
        let mut ask: Vec<EpochOf<'_>> = Vec::new();
        for f in frames
            .iter()
            .flatten()
            .filter(|f| f.kind != Kind::Tombstone)
        {
            let named = std::iter::once((EpochOf::Namespace, f.ns_epoch))
                .chain(f.tags.iter().map(|(tag, e)| (EpochOf::Tag(tag), *e)));
            for (of, epoch) in named {
                if epochs.get(of) != Some(epoch) && !ask.contains(&of) {
                    ask.push(of);
                }
            }
        }
        let mut fetched: HashMap<EpochOf<'_>, Option<u64>> = HashMap::new();
        if !ask.is_empty() {
            match l2.epochs(space, &ask).await {
                Ok(found) => {
                    for (of, epoch) in ask.into_iter().zip(found) {
                        epochs.learn(asked, of, epoch);
                        fetched.insert(of, epoch);
                    }
                }
                Err(e) => return unreachable(e),
            }
        }
        let current = |of: EpochOf<'_>| match fetched.get(&of) {
            Some(epoch) => *epoch,
            None => epochs.get(of),
        };
        let ns_epoch = current(EpochOf::Namespace);
        let mut out = Vec::with_capacity(keys.len());
        for ((stored, parsed), key) in stored.iter().zip(&frames).zip(keys) {
            let read = match (stored, parsed) {
                (Stored::Absent, _) => L2Read::Miss {
                    expect: Expect::Absent,
                    epoch: ns_epoch,
                    replaced: false,
                },
                (Stored::Foreign, _) => self.undecodable(Expect::Foreign, ns_epoch),
                (Stored::Value { bytes, .. }, None) => {
                    let expect = frame::version_of(bytes).map_or(Expect::Foreign, Expect::Version);
                    self.undecodable(expect, ns_epoch)
                }
                (Stored::Value { until, .. }, Some(f)) => {
                    let trusted = f.kind != Kind::Tombstone
                        && Some(f.ns_epoch) == ns_epoch
                        && f.tags
                            .iter()
                            .all(|(tag, e)| current(EpochOf::Tag(tag)) == Some(*e));
                    let expect = Expect::Version(f.version);
                    if !trusted {
                        L2Read::Miss {
                            expect,
                            epoch: ns_epoch,
                            replaced: f.kind == Kind::Tombstone,
                        }
                    } else {
                        let value = match f.kind {
                            Kind::Value => {
                                self.decode_body(key, f.body).map(|(v, len)| (Some(v), len))
                            }
                            _ => Ok((None, 0)),
                        };
                        match value {
                            Ok((value, body_len)) => {
                                let tags = (!f.tags.is_empty())
                                    .then(|| f.tags.iter().map(|(t, _)| (*t).into()).collect());
                                let left =
                                    until.map(|u| u.saturating_duration_since(Instant::now()));
                                let span = match left {
                                    None => Span::Fresh(self.ns.l1_ttl),
                                    Some(left) if left > f.grace => Span::Fresh(left - f.grace),
                                    Some(left) => Span::Expired {
                                        ago: f.grace - left,
                                        kept: left,
                                    },
                                };
                                let found = Found {
                                    value,
                                    weight: weight(body_len),
                                    span,
                                    version: f.version,
                                    tags,
                                    epoch: ns_epoch,
                                };
                                if let Span::Fresh(_) = span {
                                    bump(&self.ns.counters.here().l2_hits);
                                    L2Read::Hit(found)
                                } else {
                                    L2Read::Stale {
                                        found,
                                        expect,
                                        epoch: ns_epoch,
                                    }
                                }
                            }
                            Err(e) => {
                                tracing::debug!(namespace = %self.ns.name, error = %e,
                                    "tierkit: stored value does not decode; treating as a miss");
                                self.undecodable(expect, ns_epoch)
                            }
                        }
                    }
                }
            };
            out.push(read);
        }
        out
    }

    /// The value an entry's body holds at `key`, and its decoded length (its L1 weight): opened
    /// first in an encrypted namespace, where only sealed bodies are accepted.
    pub(super) fn decode_body(&self, key: &str, body: &[u8]) -> crate::error::Result<(V, usize)> {
        let opened;
        let plain = match &self.ns.keyring {
            None => body,
            Some(keys) => {
                opened = keys.open(body, self.ns.keyspace.entry(key).as_bytes())?;
                &opened[..]
            }
        };
        let value = self.core.codec.decode::<V>(plain)?;
        Ok((value, Codec::body_len(plain).unwrap_or(plain.len())))
    }

    /// Bytes that are not a value of this namespace: a counted miss that the next fill replaces.
    fn undecodable(&self, expect: Expect, epoch: Option<u64>) -> L2Read<V> {
        bump(&self.ns.counters.here().decode_failures);
        tracing::debug!(namespace = %self.ns.name,
            "tierkit: an entry's place holds something that is not a value of this namespace");
        L2Read::Miss {
            expect,
            epoch,
            replaced: true,
        }
    }

    /// Keeps what L2 answered in L1 ([`keep_l1`](Self::keep_l1)); an expired copy is kept as
    /// such, and served as [`Source::Stale`].
    pub(super) fn keep_found(
        &self,
        key: &str,
        found: Found<V>,
        stamp: Stamp,
        replace: &Replace,
    ) -> (AnyValue, Source) {
        let value: AnyValue = match found.value {
            Some(value) => Arc::new(value),
            None => Arc::new(NotFound),
        };
        let source = match found.span {
            Span::Fresh(_) => Source::L2,
            Span::Expired { .. } => Source::Stale,
        };
        let entry = self.l1_value(value, found.weight, found.span, found.tags, found.version);
        self.keep_l1(key, entry, stamp, source, replace)
    }

    /// Keeps `entry` in L1 unless L1 holds a copy at least as new, or `key` changed since
    /// `stamp` (taken before the read or load): an older value never replaces a newer one,
    /// so reads on this instance never go back in a key's history. Returns what to serve: the
    /// newer copy L1 holds, or `entry`'s value (with `source`). A held copy that is expired,
    /// or one `replace` names, is no newer copy; a cached "not found" gives way to a value of
    /// the same version (a load that wanted a value).
    ///
    /// Runs under the key's put lock, so no other put lands between the look at the held copy
    /// and the insert.
    pub(super) fn keep_l1(
        &self,
        key: &str,
        entry: L1Value,
        stamp: Stamp,
        source: Source,
        replace: &Replace,
    ) -> (AnyValue, Source) {
        if !self.l1_on {
            return (entry.value, source);
        }
        let fresh = &self.ns.fresh;
        let key_ref = KeyRef {
            ns: self.ns.id,
            key,
        };
        let _put = fresh.put_lock(key);
        let held = self.l1.get(&key_ref).filter(|held| {
            let renewed = match (replace, &held.life) {
                (Replace::Older, _) => false,
                (Replace::Life(r), Some(life)) => Arc::ptr_eq(r, life),
                (Replace::Life(_), None) => false,
                // ...but this instance's own write, which Redis may not hold yet.
                (Replace::Any, _) => held.version != LOCAL || self.ns.writing.get(key).is_none(),
            };
            self.is_live(key, held) && !renewed && !held.life.as_ref().is_some_and(|l| l.is_stale())
        });
        let raced = fresh.changed_since(key, stamp);
        let newer = |held: &L1Value| {
            // A value is news to a "not found" of its version.
            let value_over_negative = held.value.is::<NotFound>() && !entry.value.is::<NotFound>();
            held.version > entry.version || (held.version == entry.version && !value_over_negative)
        };
        match held {
            // L1 holds a newer copy, or one put there after a change that raced this read.
            Some(held) if raced || newer(&held) => {
                return (held.value, Source::L1);
            }
            _ if raced => {}
            // A value read from Redis that a full L1 would evict before its key came back.
            None if source == Source::L2
                && !self.core.admission.admit(self.ns.id, key, &self.l1) =>
            {
                return (entry.value, source);
            }
            _ => {
                let value = entry.value.clone();
                self.l1.insert(L1Key::new(self.ns.id, key), entry);
                // A change that landed between the check and the insert evicted nothing yet.
                if fresh.changed_since(key, stamp) {
                    self.l1.invalidate(&key_ref);
                }
                return (value, source);
            }
        }
        (entry.value, source)
    }

    /// An L1 entry for `value`, fresh for what `span` says but never longer than the
    /// namespace's L1 TTL. In a namespace with fail-safe or eager refresh it carries its
    /// [`Life`], and L1 keeps it for the fail-safe grace past its expiry.
    pub(super) fn l1_value(
        &self,
        value: AnyValue,
        weight: u32,
        span: Span,
        tags: Option<Arc<[Box<str>]>>,
        version: u64,
    ) -> L1Value {
        let resilience = &self.ns.resilience;
        let (ttl, life) = if !resilience.tracks_life() {
            let fresh = match span {
                Span::Fresh(fresh) => fresh,
                // No grace here: an expired copy is not kept.
                Span::Expired { .. } => Duration::ZERO,
            };
            (fresh.min(self.ns.l1_ttl), None)
        } else {
            let now = Instant::now();
            let grace = resilience.grace();
            let (fresh_until, kept, refresh_at) = match span {
                Span::Fresh(fresh) => {
                    let fresh = fresh.min(self.ns.l1_ttl);
                    let until = now + fresh;
                    let refresh_at = resilience
                        .eager
                        .map(|e| until - e.window(fresh, self.ns.load_time()));
                    (until, fresh + grace, refresh_at)
                }
                // An expiry further back than this process's clock (which `stale_from_l2`
                // refuses to serve): the TTL below still ends the copy when Redis's would.
                Span::Expired { ago, kept } => {
                    (now.checked_sub(ago).unwrap_or(now), kept.min(grace), None)
                }
            };
            (kept, Some(Arc::new(Life::new(fresh_until, refresh_at))))
        };
        L1Value {
            value,
            generation: self.ns.fresh.generation(),
            epoch: self.ns.fresh.epoch(),
            weight,
            ttl: ttl.max(Duration::from_millis(1)),
            tags,
            version,
            life,
        }
    }

    /// Reads many keys: L1 first, then every L1 miss from Redis in one round trip. The result
    /// lines up with `keys`.
    pub async fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Vec<Option<Hit<V>>> {
        tokio::task::consume_budget().await;
        let mut out = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let hit = self.l1_hit(key.as_ref());
            if hit.is_none() {
                missing.push(i);
            }
            out.push(hit);
        }
        if missing.is_empty() {
            return out;
        }
        let wanted: Vec<&str> = missing.iter().map(|&i| keys[i].as_ref()).collect();
        let stamps: Vec<Stamp> = wanted.iter().map(|k| self.ns.fresh.stamp(k)).collect();
        let reads = self.l2_read_many(&wanted).await;
        for (((i, key), stamp), read) in missing.into_iter().zip(wanted).zip(stamps).zip(reads) {
            out[i] = self.serve(key, read, stamp, &Replace::Older);
        }
        out
    }
}
