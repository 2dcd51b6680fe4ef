//! The read path: an L1 hit (the hot path), then L2, whose frames are trusted only under the
//! current epochs, and keeping what L2 answered in L1 unless it is older than what L1 holds or
//! a change raced the read.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::frame::{self, Kind};
use super::l1::{weight, KeyRef, L1Key, L1Value};
use super::l2::{count_failure, EpochOf, Expect, Stored};
use super::namespace::{Hit, Namespace, Source};
use super::stamp::Stamp;
use super::stats::bump;
use crate::codec::Codec;

/// The version of an L1 entry this instance wrote or loaded itself: newer than any copy read
/// from L2 until a change evicts it.
pub(super) const LOCAL: u64 = u64::MAX;

/// What an L2 read found.
pub(super) enum L2Read<V> {
    /// A value to serve.
    Hit(Found<V>),
    /// Nothing to serve. A fill after a load must still find `expect` to land, and is framed
    /// under `epoch`, the namespace's epoch when the read was made (`None`: absent).
    Miss { expect: Expect, epoch: Option<u64> },
    /// Redis failed, timed out or is down.
    Unreachable,
}

/// A value read from L2, with its L1 weight, how long an L1 copy may live (the namespace's L1
/// TTL cut to what the L2 entry has left), its version and tags.
pub(super) struct Found<V> {
    value: V,
    weight: u32,
    ttl: Duration,
    version: u64,
    tags: Option<Arc<[Box<str>]>>,
}

impl<V> Namespace<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// An L1 hit, counted. The hot path: one lookup, one `Arc` clone, one relaxed add. An L1
    /// miss is answered by this instance's write of the key in flight, if any
    /// ([`writing`](super::writing)).
    pub(super) fn l1_hit(&self, key: &str) -> Option<Hit<V>> {
        let held = match self.live_l1(key) {
            Some(found) => found.value,
            None => self.ns.writing.get(key)?,
        };
        // Namespace ids are bound to one type at declaration, so this cannot fail; if it did,
        // a miss is the safe answer.
        let value = Arc::downcast::<V>(held).ok()?;
        bump(&self.ns.counters.l1_hits);
        Some(Hit {
            value,
            source: Source::L1,
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

    /// Reads `key`: L1, then Redis. `None` when neither has it. Never returns a Redis error:
    /// when Redis is down or fails, the read is answered from L1 alone.
    pub async fn get(&self, key: &str) -> Option<Hit<V>> {
        if let Some(hit) = self.l1_hit(key) {
            return Some(hit);
        }
        let stamp = self.ns.fresh.stamp(key);
        let read = self.l2_read(key).await;
        self.serve(key, read, stamp)
    }

    /// A read's answer: a hit kept in L1 (or the newer copy L1 already holds), or a counted miss.
    fn serve(&self, key: &str, read: L2Read<V>, stamp: Stamp) -> Option<Hit<V>> {
        match read {
            L2Read::Hit(found) => Some(self.keep_found(key, found, stamp)),
            _ => {
                bump(&self.ns.counters.misses);
                None
            }
        }
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
        for f in frames.iter().flatten().filter(|f| f.kind == Kind::Value) {
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
                },
                (Stored::Foreign, _) => self.undecodable(Expect::Foreign, ns_epoch),
                (Stored::Value { bytes, .. }, None) => {
                    let expect = frame::version_of(bytes).map_or(Expect::Foreign, Expect::Version);
                    self.undecodable(expect, ns_epoch)
                }
                (Stored::Value { ttl, .. }, Some(f)) => {
                    let trusted = f.kind == Kind::Value
                        && Some(f.ns_epoch) == ns_epoch
                        && f.tags
                            .iter()
                            .all(|(tag, e)| current(EpochOf::Tag(tag)) == Some(*e));
                    if !trusted {
                        L2Read::Miss {
                            expect: Expect::Version(f.version),
                            epoch: ns_epoch,
                        }
                    } else {
                        match self.decode_body(key, f.body) {
                            Ok((value, body_len)) => {
                                bump(&self.ns.counters.l2_hits);
                                let tags = (!f.tags.is_empty())
                                    .then(|| f.tags.iter().map(|(t, _)| (*t).into()).collect());
                                L2Read::Hit(Found {
                                    value,
                                    weight: weight(body_len),
                                    ttl: ttl
                                        .map_or(self.ns.l1_ttl, |left| left.min(self.ns.l1_ttl)),
                                    version: f.version,
                                    tags,
                                })
                            }
                            Err(e) => {
                                tracing::debug!(namespace = %self.ns.name, error = %e,
                                    "tierkit: stored value does not decode; treating as a miss");
                                self.undecodable(Expect::Version(f.version), ns_epoch)
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
        bump(&self.ns.counters.decode_failures);
        tracing::debug!(namespace = %self.ns.name,
            "tierkit: an entry's place holds something that is not a value of this namespace");
        L2Read::Miss { expect, epoch }
    }

    /// Keeps what L2 answered in L1 ([`keep_l1`](Self::keep_l1)).
    pub(super) fn keep_found(&self, key: &str, found: Found<V>, stamp: Stamp) -> Hit<V> {
        let value = Arc::new(found.value);
        let entry = self.l1_value(
            value.clone(),
            found.weight,
            found.ttl,
            found.tags,
            found.version,
        );
        self.keep_l1(key, value, entry, stamp, Source::L2)
    }

    /// Keeps `entry` in L1 unless L1 holds a copy at least as new, or `key` changed since
    /// `stamp` (taken before the read or load): an older value never replaces a newer one,
    /// so reads on this instance never go back in a key's history. Returns what to serve: the
    /// newer copy L1 holds, or `entry`'s value (with `source`).
    ///
    /// Runs under the key's put lock, so no other put lands between the look at the held copy
    /// and the insert.
    pub(super) fn keep_l1(
        &self,
        key: &str,
        value: Arc<V>,
        entry: L1Value,
        stamp: Stamp,
        source: Source,
    ) -> Hit<V> {
        let fresh = &self.ns.fresh;
        let key_ref = KeyRef {
            ns: self.ns.id,
            key,
        };
        let _put = fresh.put_lock(key);
        let held = self.l1.get(&key_ref).filter(|held| self.is_live(key, held));
        let raced = fresh.changed_since(key, stamp);
        match held {
            // L1 holds a newer copy, or one put there after a change that raced this read.
            Some(held) if raced || held.version >= entry.version => {
                if let Ok(held) = Arc::downcast::<V>(held.value) {
                    return Hit {
                        value: held,
                        source: Source::L1,
                    };
                }
            }
            _ if raced => {}
            _ => {
                self.l1.insert(L1Key::new(self.ns.id, key), entry);
                // A change that landed between the check and the insert evicted nothing yet.
                if fresh.changed_since(key, stamp) {
                    self.l1.invalidate(&key_ref);
                }
            }
        }
        Hit { value, source }
    }

    /// An L1 entry for `value`, living `ttl` but never longer than the namespace's L1 TTL.
    pub(super) fn l1_value(
        &self,
        value: Arc<V>,
        weight: u32,
        ttl: Duration,
        tags: Option<Arc<[Box<str>]>>,
        version: u64,
    ) -> L1Value {
        L1Value {
            value: value as Arc<dyn Any + Send + Sync>,
            generation: self.ns.fresh.generation(),
            epoch: self.ns.fresh.epoch(),
            weight,
            ttl: ttl.min(self.ns.l1_ttl),
            tags,
            version,
        }
    }

    /// Reads many keys: L1 first, then every L1 miss from Redis in one round trip. The result
    /// lines up with `keys`.
    pub async fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Vec<Option<Hit<V>>> {
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
            out[i] = self.serve(key, read, stamp);
        }
        out
    }
}
