//! Auto-recovery: the changes this instance made that Redis did not take (it was down, the
//! call failed or timed out, this instance was cut off), remembered and replayed once Redis
//! answers, before this instance reads from it again.
//!
//! Changes are owed per namespace and coalesced per key: a write and an invalidation of one
//! key are both owed as "this key changed", and replayed as an invalidation (a tombstone and
//! the backplane message). Replaying the value instead could undo a newer write another
//! instance made meanwhile, since an owed write has no place in the order Redis saw; an
//! invalidation cannot make anything stale, and the next read loads the current value. Tags
//! are owed by name and replayed by dropping their epochs. Past [`MAX_OWED`] keys and tags, or
//! for a clear or a pattern, the namespace owes everything, replayed by dropping its epoch:
//! one key, however long the outage.
//!
//! While a namespace owes anything, its reads skip Redis (what Redis holds may be what the
//! owed changes replaced) and its loads fill nothing there.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;

use super::backplane::Op;
use super::base::CacheCore;
use super::l2::EpochOf;
use super::namespace::NsShared;
use crate::error::Result;

/// Keys and tags one namespace may owe one by one before it owes everything.
pub(super) const MAX_OWED: usize = 10_000;

/// How often an instance that owes changes tries to replay them while nothing else wakes it.
const RETRY: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
struct Debts {
    keys: HashSet<Box<str>>,
    tags: HashSet<Box<str>>,
    /// A clear, a pattern, or more than [`MAX_OWED`] keys and tags: the namespace's epoch.
    everything: bool,
}

impl Debts {
    fn is_empty(&self) -> bool {
        !self.everything && self.keys.is_empty() && self.tags.is_empty()
    }

    /// The changes these debts stand for, as the backplane messages that announce them: a
    /// clear for everything, else one per tag and one for all keys.
    fn ops(&self, ns: &str) -> Vec<Op> {
        if self.everything {
            return vec![Op::Clear { ns: ns.into() }];
        }
        let tags = self.tags.iter().map(|tag| Op::Tag {
            ns: ns.into(),
            tag: tag.to_string(),
            keys: Vec::new(),
        });
        let keys = (!self.keys.is_empty()).then(|| Op::Keys {
            ns: ns.into(),
            keys: self.keys.iter().map(|k| k.to_string()).collect(),
        });
        tags.chain(keys).collect()
    }

    fn merge(&mut self, other: Debts) {
        self.everything |= other.everything;
        self.keys.extend(other.keys);
        self.tags.extend(other.tags);
        self.bound();
    }

    fn bound(&mut self) {
        if self.everything || self.keys.len() + self.tags.len() > MAX_OWED {
            *self = Debts {
                everything: true,
                ..Debts::default()
            };
        }
    }
}

/// What one namespace owes Redis.
#[derive(Debug, Default)]
pub(super) struct Owed {
    debts: Mutex<Debts>,
    /// Whether `debts` is non-empty or being replayed: read on every L2 read, so an atomic.
    owing: AtomicBool,
}

impl Owed {
    fn debts(&self) -> std::sync::MutexGuard<'_, Debts> {
        self.debts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether changes are owed, so Redis may hold what they replaced.
    #[inline]
    pub(super) fn is_owing(&self) -> bool {
        self.owing.load(Ordering::Acquire)
    }

    fn owe(&self, add: impl FnOnce(&mut Debts)) {
        let mut debts = self.debts();
        add(&mut debts);
        debts.bound();
        self.owing.store(true, Ordering::Release);
    }

    /// `keys` changed here but not in Redis.
    pub(super) fn owe_keys<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        self.owe(|d| d.keys.extend(keys.into_iter().map(Box::from)));
    }

    /// `tag` was invalidated here but not in Redis.
    pub(super) fn owe_tag(&self, tag: &str) {
        self.owe(|d| {
            d.tags.insert(tag.into());
        });
    }

    /// Every entry of the namespace may have changed here but not in Redis.
    pub(super) fn owe_everything(&self) {
        self.owe(|d| d.everything = true);
    }

    /// `op` happened here but not in Redis: its keys, its tag, or (a pattern, a clear)
    /// everything.
    pub(super) fn owe_op(&self, op: &Op) {
        match op {
            Op::Keys { keys, .. } => self.owe_keys(keys.iter().map(String::as_str)),
            Op::Tag { tag, .. } => self.owe_tag(tag),
            Op::Pattern { .. } | Op::Clear { .. } => self.owe_everything(),
        }
    }

    /// Owes `op` unless [`Owing::settle`] finds it taken: a change whose future is dropped while
    /// Redis has not answered (a caller's timeout, a cancelled request) is owed, not lost.
    pub(super) fn until_paid<'a>(&'a self, op: &'a Op) -> Owing<'a> {
        Owing {
            owed: self,
            op: Some(op),
        }
    }

    fn take(&self) -> Debts {
        std::mem::take(&mut *self.debts())
    }

    /// After a replay: paid when it went through and nothing new is owed, else the unpaid part
    /// is owed again.
    fn settle(&self, unpaid: Option<Debts>) {
        let mut debts = self.debts();
        if let Some(unpaid) = unpaid {
            debts.merge(unpaid);
        }
        if debts.is_empty() {
            self.owing.store(false, Ordering::Release);
        }
    }
}

/// A change Redis has not taken yet: owed when dropped unpaid ([`Owed::until_paid`]).
pub(super) struct Owing<'a> {
    owed: &'a Owed,
    op: Option<&'a Op>,
}

impl Owing<'_> {
    /// Settles the debt as soon as Redis answered: paid when it took the change, owed at once
    /// when not (before anything else runs, so no read in between trusts Redis).
    pub(super) fn settle<T>(mut self, sent: &Result<T>) {
        if sent.is_ok() {
            self.op = None;
        }
    }
}

impl Drop for Owing<'_> {
    fn drop(&mut self) {
        if let Some(op) = self.op {
            self.owed.owe_op(op);
        }
    }
}

impl CacheCore {
    /// Replays what `ns` owes. On failure what was not paid stays owed.
    async fn replay(&self, ns: &NsShared) {
        let debts = ns.owed.take();
        if debts.is_empty() {
            ns.owed.settle(None);
            return;
        }
        let unpaid = match self.pay(ns, &debts).await {
            Ok(()) => None,
            Err(e) => {
                tracing::debug!(namespace = %ns.name, error = %e,
                    "tierkit: replaying owed changes failed; will retry");
                Some(debts)
            }
        };
        if unpaid.is_none() {
            tracing::info!(namespace = %ns.name, "tierkit: changes made during the outage replayed");
        }
        ns.owed.settle(unpaid);
    }

    async fn pay(&self, ns: &NsShared, debts: &Debts) -> Result<()> {
        let l2 = self.l2.pick()?;
        let space = &ns.keyspace;
        for op in debts.ops(&ns.name) {
            if ns.tiers == super::options::Tiers::L1Only {
                // Nothing of it is in Redis: the other instances are only told again.
                l2.publish(&op).await?;
                continue;
            }
            match &op {
                Op::Clear { .. } => {
                    l2.drop_epochs(space, true, &[], Some(&op)).await?;
                    ns.epochs.forget_all();
                }
                Op::Tag { tag, .. } => {
                    l2.drop_epochs(space, false, &[tag], Some(&op)).await?;
                    ns.epochs.forget(EpochOf::Tag(tag));
                }
                Op::Keys { .. } => l2.tombstone(space, &op).await?,
                // Patterns are owed as everything.
                Op::Pattern { .. } => {}
            }
        }
        Ok(())
    }

    /// After a (re)subscription: when the servers holding the data are not those seen last
    /// time (a restart, a failover), they may hold older data than was written and invalidated
    /// before, so every namespace owes a clear. The first look only learns. Until a look
    /// succeeds, reads skip Redis (see `runs_unchecked`).
    pub(super) async fn check_runs(&self) {
        let Ok(now) = self.l2.runs().await else {
            // The replayer looks again.
            return;
        };
        let mut seen = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let changed = seen.as_ref().is_some_and(|before| {
            now.iter()
                .any(|(addr, id)| before.get(addr).is_none_or(|was| was != id))
        });
        if changed {
            tracing::warn!(
                "tierkit: a Redis server restarted or failed over; its data may be older than \
                 what was written, so every cache namespace is cleared"
            );
            // L1-only namespaces keep nothing in Redis that the restart could have aged.
            for ns in self
                .namespaces()
                .iter()
                .filter(|ns| ns.tiers != super::options::Tiers::L1Only)
            {
                ns.owed.owe_everything();
            }
        }
        seen.get_or_insert_with(HashMap::new).extend(now);
        self.runs_unchecked.store(false, Ordering::Release);
    }

    /// Replays every namespace's debts.
    pub(super) async fn replay_all(&self) {
        if self.runs_unchecked.load(Ordering::Acquire) {
            self.check_runs().await;
        }
        for ns in self.namespaces() {
            if ns.owed.is_owing() {
                self.replay(&ns).await;
            }
        }
    }
}

/// Replays owed changes every [`RETRY`], until `stop` fires. (A resubscription replays at
/// once, before the instance counts as coherent again; this catches the changes owed while the
/// subscription stayed up.)
pub(super) async fn settle_debts(core: Weak<CacheCore>, mut stop: oneshot::Receiver<()>) {
    let mut ticks: u32 = 0;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
        let Some(core) = core.upgrade() else { return };
        core.replay_all().await;
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(EPOCH_WATCH_TICKS) {
            core.watch_epochs().await;
        }
    }
}

/// Replay ticks between two looks at the namespaces' epochs (about one second).
const EPOCH_WATCH_TICKS: u32 = 5;

impl CacheCore {
    /// Reads every namespace's epoch: learns of a clear or an eviction this instance did not
    /// hear of (writes framed under a gone epoch are misses until it learns), and keeps the
    /// epoch keys recently used, so an LRU or LFU eviction policy keeps them while the cache
    /// is in use. Off the request path: a shard that does not answer delays no call.
    pub(super) async fn watch_epochs(&self) {
        let Ok(l2) = self.l2.pick() else { return };
        for ns in self.namespaces() {
            let asked = ns.epochs.asking();
            if let Ok(found) = l2.epochs(&ns.keyspace, &[EpochOf::Namespace]).await {
                ns.epochs
                    .learn(asked, EpochOf::Namespace, found.first().copied().flatten());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debts_coalesce_and_overflow_into_everything() {
        let owed = Owed::default();
        assert!(!owed.is_owing());
        owed.owe_keys(["a", "a", "b"]);
        owed.owe_tag("t");
        assert!(owed.is_owing());
        let taken = owed.take();
        assert_eq!((taken.keys.len(), taken.tags.len()), (2, 1));
        // Owed meanwhile: still owing after the replay is paid.
        owed.owe_keys(["c"]);
        owed.settle(None);
        assert!(owed.is_owing());
        let taken = owed.take();
        owed.settle(Some(taken));
        assert!(owed.is_owing());
        let _ = owed.take();
        owed.settle(None);
        assert!(!owed.is_owing());

        let many: Vec<String> = (0..=MAX_OWED).map(|i| i.to_string()).collect();
        owed.owe_keys(many.iter().map(String::as_str));
        let taken = owed.take();
        assert!(taken.everything && taken.keys.is_empty());
    }
}
