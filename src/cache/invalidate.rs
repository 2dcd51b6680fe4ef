//! The invalidator: removing entries by key, tag, pattern or namespace. This instance's L1
//! goes first, then L2 together with the backplane message that makes every other instance
//! evict its L1 copies the same way ([`CacheCore::apply`], run here and on receipt).

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::backplane::Op;
use super::base::CacheCore;
use super::l1::{self, KeyRef};
use super::l2::{count_failure, EpochOf};
use super::namespace::{Namespace, NsShared, Reach};
use super::pattern::Pattern;
use super::stamp::Change;
use crate::error::{Error, Result};

impl CacheCore {
    /// Evicts the L1 entries an operation touched, here or (from the backplane) elsewhere.
    pub(super) async fn apply(&self, ns: &NsShared, op: &Op) {
        let id = ns.id;
        // Bump before evicting: a read racing this sees either the bump or the eviction.
        match op {
            Op::Keys { keys, .. } => {
                for key in keys {
                    ns.fresh.bump_key(key);
                    self.l1.invalidate(&KeyRef { ns: id, key });
                }
            }
            Op::Tag { tag, keys, .. } => {
                ns.fresh.bump_all(Change::Tag(tag.as_str().into()));
                ns.epochs.forget(EpochOf::Tag(tag));
                for key in keys {
                    self.l1.invalidate(&KeyRef { ns: id, key });
                }
                let tag = tag.clone();
                self.evict_if(move |k, v| k.ns == id && v.has_tag(&tag));
            }
            Op::Pattern { pattern, .. } => match Pattern::parse(pattern) {
                Ok(p) => {
                    ns.fresh.bump_all(Change::Pattern(p.clone()));
                    self.evict_if(move |k, _| k.ns == id && p.matches(&k.key));
                }
                // A pattern no instance could have sent; drop the namespace to be safe.
                Err(_) => ns.fresh.forget_l1(),
            },
            Op::Clear { .. } => {
                // Every entry made before is no longer served; moka frees them in the
                // background.
                ns.fresh.forget_l1();
                ns.epochs.forget(EpochOf::Namespace);
                self.evict_if(move |k, _| k.ns == id);
            }
        }
    }

    /// Frees the memory of every L1 entry matching `pred`, in the background. What is served
    /// does not wait on it: hits check the change log
    /// ([`Freshness::retired`](super::stamp::Freshness::retired)).
    fn evict_if(&self, pred: impl Fn(&l1::L1Key, &l1::L1Value) -> bool + Send + Sync + 'static) {
        if let Err(e) = self.l1.invalidate_entries_if(pred) {
            // Cannot happen: the L1 is built with support_invalidation_closures. Dropping all of
            // L1 keeps the promise that invalidated entries are never served.
            tracing::error!(error = %e, "tierkit: L1 predicate invalidation failed; dropping L1");
            self.l1.invalidate_all();
        }
    }
}

/// After an invalidation of this instance reached Redis (or is owed), the writes in flight it
/// covers are no longer served ([`writing`](super::writing)): Redis holds nothing older that a
/// read could go back to.
fn forget_written(ns: &NsShared, op: &Op) {
    let writing = &ns.writing;
    match op {
        Op::Keys { keys, .. } => writing.forget(|key, _| keys.iter().any(|k| k == key)),
        Op::Tag { tag, .. } => {
            writing.forget(|_, tags| tags.is_some_and(|t| t.iter().any(|t| **t == **tag)))
        }
        Op::Pattern { pattern, .. } => match Pattern::parse(pattern) {
            Ok(p) => writing.forget(|key, _| p.matches(key)),
            Err(_) => writing.forget(|_, _| true),
        },
        Op::Clear { .. } => writing.forget(|_, _| true),
    }
}

impl<V> Namespace<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Removes `key` from L1, Redis and the other instances' L1. In Redis the entry becomes a
    /// tombstone for the namespace's TTL, so a load that read the key before cannot fill it
    /// after.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for input checks. Redis failures give
    /// [`Reach::L1Only`], and the invalidation is replayed once Redis answers.
    pub async fn invalidate(&self, key: &str) -> Result<Reach> {
        let op = Op::Keys {
            ns: self.ns.name.clone(),
            keys: vec![key.to_owned()],
        };
        self.core.apply(&self.ns, &op).await;
        if !self.stores_values() {
            return Ok(self.announce(&op).await);
        }
        let owing = self.ns.owed.until_paid(&op);
        let sent = async { self.l2()?.tombstone(&self.ns.keyspace, &op).await }.await;
        owing.settle(&sent);
        // Again once Redis has it: a read on this instance that fetched the old entry before
        // it changed may have kept it since the first pass.
        self.core.apply(&self.ns, &op).await;
        forget_written(&self.ns, &op);
        Ok(self.reach(sent))
    }

    /// Removes every entry written with `tag` (see [`SetOptions::tag`](super::SetOptions::tag)),
    /// in every tier and instance: one round trip that drops the tag's epoch, whatever the
    /// number of entries, and holds even for entries whose other keys Redis evicted.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty tag. Redis failures give [`Reach::L1Only`], and
    /// the invalidation is replayed once Redis answers.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<Reach> {
        if tag.is_empty() {
            return Err(Error::invalid(
                "tag",
                "is empty; tags need at least one character",
            ));
        }
        let op = Op::Tag {
            ns: self.ns.name.clone(),
            tag: tag.to_owned(),
            keys: Vec::new(),
        };
        self.core.apply(&self.ns, &op).await;
        if !self.stores_values() {
            return Ok(self.announce(&op).await);
        }
        let owing = self.ns.owed.until_paid(&op);
        let sent = async {
            self.l2()?
                .drop_epochs(&self.ns.keyspace, false, &[tag], Some(&op))
                .await
        }
        .await;
        owing.settle(&sent);
        // Again once Redis has it (see `invalidate`).
        self.core.apply(&self.ns, &op).await;
        forget_written(&self.ns, &op);
        Ok(self.reach(sent))
    }

    /// Removes every entry whose key matches `pattern`, in every tier and instance, and returns
    /// how many Redis entries were removed.
    ///
    /// The pattern is a glob over this namespace's keys only: `*` matches any run of
    /// characters, `?` one character, `\` makes the next character literal, and everything
    /// else (`[`, `]`, ...) is literal. Redis is walked with `SCAN` in batches, never `KEYS`,
    /// and each match becomes a tombstone.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a pattern ending in a lone `\`. When Redis fails part way, the
    /// entries removed so far stay removed and [`Reach::L1Only`] comes back with the count;
    /// the whole namespace is then invalidated once Redis answers.
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<(Reach, u64)> {
        let parsed = Pattern::parse(pattern)?;
        let op = Op::Pattern {
            ns: self.ns.name.clone(),
            pattern: parsed.source().to_owned(),
        };
        self.core.apply(&self.ns, &op).await;
        if !self.stores_values() {
            return Ok((self.announce(&op).await, 0));
        }
        let owing = self.ns.owed.until_paid(&op);
        let (removed, sent) = match self.l2() {
            Ok(l2) => {
                l2.remove_matching(&self.ns.keyspace, Some(&parsed), &op)
                    .await
            }
            Err(e) => (0, Err(e)),
        };
        owing.settle(&sent);
        self.core.apply(&self.ns, &op).await;
        forget_written(&self.ns, &op);
        Ok((self.reach(sent), removed))
    }

    /// Removes every entry of this namespace, of every version, in every tier and instance,
    /// and returns how many Redis keys were removed. The namespace's epoch goes first, in one
    /// round trip: from then on no entry of it is served, even one the removal that follows
    /// does not reach.
    ///
    /// # Errors
    ///
    /// None today; Redis failures give [`Reach::L1Only`] with the count removed so far, and
    /// the clear is replayed once Redis answers.
    pub async fn clear(&self) -> Result<(Reach, u64)> {
        let op = Op::Clear {
            ns: self.ns.name.clone(),
        };
        self.core.apply(&self.ns, &op).await;
        if !self.stores_values() {
            return Ok((self.announce(&op).await, 0));
        }
        let owing = self.ns.owed.until_paid(&op);
        let l2 = match self.l2() {
            Ok(l2) => l2,
            Err(e) => {
                drop(owing);
                forget_written(&self.ns, &op);
                return Ok((self.reach(Err(e)), 0));
            }
        };
        let space = &self.ns.keyspace;
        let dropped = l2.drop_epochs(space, true, &[], Some(&op)).await;
        owing.settle(&dropped);
        // Again once Redis has it (see `invalidate`).
        self.core.apply(&self.ns, &op).await;
        forget_written(&self.ns, &op);
        if let Err(e) = dropped {
            return Ok((self.reach(Err(e)), 0));
        }
        // The clear has taken effect; the rest frees memory, and a failure is only counted.
        let (removed, swept) = l2.remove_matching(space, None, &op).await;
        if let Err(e) = swept {
            count_failure(&self.ns.counters, &e);
        }
        Ok((Reach::AllTiers, removed))
    }
}
