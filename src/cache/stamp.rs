//! Freshness of one namespace's keys: change counters that let a read, fill or load tell
//! whether a write or invalidation landed while it ran, and the L1 generation that drops every
//! L1 entry at once.
//!
//! A reader takes a [`Stamp`] before going to L2 or the loader and checks it after putting the
//! result into L1: a change in between means the result may already be stale, so it is not
//! kept. Changes bump before they evict, so a racing reader sees either the bump or the
//! eviction.
//!
//! Changes of many keys at once (a tag, a pattern) are also logged: an L1 hit on an entry made
//! before the latest of them checks the log, so such a change holds at once for every entry it
//! covers, whatever moka's predicate eviction (a clean-up that works through the L1 in batches)
//! has reached.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::pattern::Pattern;

/// Namespace-wide changes remembered for L1 hits; an entry older than all of them is dropped.
const LOG_LEN: usize = 64;

/// A change of many keys at once.
#[derive(Debug)]
pub(super) enum Change {
    Tag(Box<str>),
    Pattern(Pattern),
    /// Every key (a clear, a forgotten L1).
    All,
}

/// Change counters per key hash: enough to keep false sharing of a stripe rare, few enough
/// that a namespace costs 8 KiB.
const STRIPES: usize = 1024;

/// What a namespace's keys were like at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stamp(u64, u64);

/// Change counters: `epoch` for whole-namespace changes (tags, patterns, clears), a stripe per
/// key hash for single keys.
#[derive(Debug)]
pub(super) struct Freshness {
    epoch: AtomicU64,
    stripes: Box<[AtomicU64]>,
    /// L1 entries made under an older generation are not served: dropping the whole L1 is
    /// one increment here, instead of moka's `invalidate_all`, whose clean-up of every entry
    /// (100-300 ms for 100k entries) would land inline on one unlucky request.
    l1_generation: AtomicU64,
    /// The last [`LOG_LEN`] namespace-wide changes, with the epoch each moved to.
    log: Mutex<VecDeque<(u64, Change)>>,
    /// One lock per stripe, held by each L1 put of a key of it: a put looks at the copy it
    /// would replace and inserts, with no other put of the key in between.
    puts: Box<[Mutex<()>]>,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            epoch: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            l1_generation: AtomicU64::new(0),
            log: Mutex::new(VecDeque::with_capacity(LOG_LEN)),
            puts: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl Freshness {
    /// Marks every key of the namespace as changed, and logs which ones `change` covers.
    pub(super) fn bump_all(&self, change: Change) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        if log.len() == LOG_LEN {
            log.pop_front();
        }
        log.push_back((epoch, change));
    }

    /// The count of namespace-wide changes so far, which an L1 entry records when made.
    #[inline]
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether a namespace-wide change after `made` (an entry's [`epoch`](Self::epoch))
    /// covers the entry of `key` with `tags`. An entry older than the log is taken as covered.
    pub(super) fn retired(&self, key: &str, tags: Option<&[Box<str>]>, made: u64) -> bool {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.front().is_none_or(|(first, _)| *first > made + 1) {
            return true;
        }
        log.iter()
            .filter(|(epoch, _)| *epoch > made)
            .any(|(_, change)| match change {
                Change::Tag(tag) => tags.is_some_and(|t| t.iter().any(|t| t == tag)),
                Change::Pattern(p) => p.matches(key),
                Change::All => true,
            })
    }

    /// Marks `key` (and the few keys sharing its stripe) as changed.
    pub(super) fn bump_key(&self, key: &str) {
        self.stripe(key).fetch_add(1, Ordering::AcqRel);
    }

    /// Stops serving every L1 entry made so far (and marks every key changed, so no load in
    /// flight keeps its result). The entries leave L1 when next read, replaced or evicted.
    pub(super) fn forget_l1(&self) {
        self.bump_all(Change::All);
        self.l1_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The L1 generation new entries are made under, and hits must match.
    #[inline]
    pub(super) fn generation(&self) -> u64 {
        self.l1_generation.load(Ordering::Acquire)
    }

    pub(super) fn stamp(&self, key: &str) -> Stamp {
        Stamp(
            self.epoch.load(Ordering::Acquire),
            self.stripe(key).load(Ordering::Acquire),
        )
    }

    /// Whether `key` may have changed since `stamp` was taken.
    pub(super) fn changed_since(&self, key: &str, stamp: Stamp) -> bool {
        self.stamp(key) != stamp
    }

    /// Serializes the L1 puts of `key` (and of the few keys sharing its stripe).
    pub(super) fn put_lock(&self, key: &str) -> MutexGuard<'_, ()> {
        // Nothing is left half-done under it: a poisoned lock is still a lock.
        self.puts[Self::index(key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn stripe(&self, key: &str) -> &AtomicU64 {
        &self.stripes[Self::index(key)]
    }

    fn index(key: &str) -> usize {
        // Fx: a few cycles per word; a crafted collision only costs a spurious re-read.
        let h = std::hash::BuildHasher::hash_one(&rustc_hash::FxBuildHasher, key);
        (h as usize) % STRIPES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_change_shows_in_its_stamp_only() {
        let f = Freshness::default();
        let (a, b) = ("a", "b");
        assert!(
            !std::ptr::eq(f.stripe(a), f.stripe(b)),
            "pick keys on two stripes"
        );
        let (sa, sb) = (f.stamp(a), f.stamp(b));
        f.bump_key(a);
        assert!(f.changed_since(a, sa));
        assert!(!f.changed_since(b, sb));
    }

    #[test]
    fn a_namespace_change_shows_in_every_stamp() {
        let f = Freshness::default();
        let (sa, sb) = (f.stamp("a"), f.stamp("b"));
        f.bump_all(Change::All);
        assert!(f.changed_since("a", sa) && f.changed_since("b", sb));
    }

    #[test]
    fn an_entry_is_retired_by_the_changes_after_it_that_cover_it() {
        let f = Freshness::default();
        f.bump_all(Change::Tag("other".into()));
        let made = f.epoch();
        let tags: Box<[Box<str>]> = Box::new(["t".into()]);
        assert!(!f.retired("k", Some(&tags), made));
        f.bump_all(Change::Tag("u".into()));
        f.bump_all(Change::Pattern(Pattern::parse("x*").unwrap()));
        assert!(!f.retired("k", Some(&tags), made));
        assert!(f.retired("xk", Some(&tags), made));
        f.bump_all(Change::Tag("t".into()));
        assert!(f.retired("k", Some(&tags), made));
        assert!(!f.retired("k", None, made + 3));
        // While the log holds every change since, it knows; once it lost one, retired.
        for _ in 0..LOG_LEN {
            f.bump_all(Change::Tag("u".into()));
        }
        assert!(!f.retired("k", None, made + 3));
        f.bump_all(Change::Tag("u".into()));
        assert!(f.retired("k", None, made + 3));
    }

    #[test]
    fn forgetting_l1_moves_the_generation_and_every_stamp() {
        let f = Freshness::default();
        let (g, s) = (f.generation(), f.stamp("a"));
        f.forget_l1();
        assert_ne!(f.generation(), g);
        assert!(f.changed_since("a", s));
    }
}
