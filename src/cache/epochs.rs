//! What one instance knows of a namespace's epochs (see [`frame`](super::frame)): the
//! namespace's, learnt from every read, and its tags', learnt when first needed. Writes frame
//! entries under them without asking Redis first, and reads check tagged entries against them.
//!
//! Knowledge goes stale only the way an L1 copy does: another instance drops an epoch and its
//! backplane message has not arrived yet (or was lost, and the resubscription forgets
//! everything here as it forgets the L1). A write framed under a stale epoch is seen as such in
//! its own round trip and redone; a read is then at most as stale as the L1.

use std::collections::HashMap;
use std::sync::Mutex;

use super::l2::EpochOf;

/// More tags than this are forgotten at once: a bound on memory, paid for with one round trip
/// per tag next time.
const MAX_TAGS: usize = 4096;

#[derive(Debug, Default)]
struct Known {
    namespace: Option<u64>,
    /// Each tag's epoch, and the [`Mark`] it was learnt at.
    tags: HashMap<Box<str>, (u64, u64)>,
    /// Moves on every forgetting, so an answer that was on the wire meanwhile is not learnt.
    generation: u64,
    /// Moves on every tag epoch learnt.
    learnt: u64,
}

/// A namespace's epochs as this instance last saw them.
#[derive(Debug, Default)]
pub(super) struct Epochs(Mutex<Known>);

/// A moment in what this instance learnt of tag epochs: see [`Epochs::known_at`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Mark(u64);

/// When a question to Redis was asked: only answers to questions asked after the last
/// forgetting are learnt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Asked(u64);

impl Epochs {
    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The epoch last seen, if any.
    pub(super) fn get(&self, of: EpochOf<'_>) -> Option<u64> {
        let known = self.known();
        match of {
            EpochOf::Namespace => known.namespace,
            EpochOf::Tag(tag) => known.tags.get(tag).map(|(epoch, _)| *epoch),
        }
    }

    /// Now, for [`known_at`](Self::known_at).
    pub(super) fn mark(&self) -> Mark {
        Mark(self.known().learnt)
    }

    /// `tag`'s epoch if this instance knew it at `mark` and still holds it. A load framing its
    /// loader's tags under such an epoch cannot outlive an invalidation of the tag made while
    /// it ran: the invalidation dropped that epoch in Redis (a new one is another random
    /// number), so the entry is unreadable there, whether this instance heard of it or not.
    pub(super) fn known_at(&self, tag: &str, mark: Mark) -> Option<u64> {
        let known = self.known();
        known
            .tags
            .get(tag)
            .filter(|(_, learnt)| *learnt <= mark.0)
            .map(|(epoch, _)| *epoch)
    }

    /// Call before asking Redis; pass to [`learn`](Self::learn) with the answer.
    pub(super) fn asking(&self) -> Asked {
        Asked(self.known().generation)
    }

    /// Keeps what Redis answered (`None`: absent) unless something was forgotten since `asked`.
    pub(super) fn learn(&self, asked: Asked, of: EpochOf<'_>, epoch: Option<u64>) {
        let mut known = self.known();
        if known.generation != asked.0 {
            return;
        }
        match (of, epoch) {
            (EpochOf::Namespace, epoch) => known.namespace = epoch,
            (EpochOf::Tag(tag), Some(epoch)) => {
                if known.tags.len() >= MAX_TAGS && !known.tags.contains_key(tag) {
                    known.tags.clear();
                }
                if known.tags.get(tag).is_none_or(|(held, _)| *held != epoch) {
                    known.learnt += 1;
                    let learnt = known.learnt;
                    known.tags.insert(tag.into(), (epoch, learnt));
                }
            }
            (EpochOf::Tag(tag), None) => {
                known.tags.remove(tag);
            }
        }
    }

    /// Forgets one epoch: it was dropped here or by another instance.
    pub(super) fn forget(&self, of: EpochOf<'_>) {
        let mut known = self.known();
        known.generation += 1;
        match of {
            EpochOf::Namespace => known.namespace = None,
            EpochOf::Tag(tag) => {
                known.tags.remove(tag);
            }
        }
    }

    /// Forgets every tag's epoch: the backplane may have missed their invalidations. The
    /// namespace's is kept, to be checked again at once (see `watch_epochs`): forgetting it
    /// would make every read wait on the one shard that holds it.
    pub(super) fn forget_tags(&self) {
        let mut known = self.known();
        known.generation += 1;
        known.tags.clear();
    }

    /// Forgets every epoch.
    pub(super) fn forget_all(&self) {
        let mut known = self.known();
        known.generation += 1;
        known.namespace = None;
        known.tags.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_asked_before_a_forgetting_is_not_learnt() {
        let epochs = Epochs::default();
        let asked = epochs.asking();
        epochs.learn(asked, EpochOf::Tag("t"), Some(1));
        assert_eq!(epochs.get(EpochOf::Tag("t")), Some(1));
        let stale = epochs.asking();
        epochs.forget(EpochOf::Tag("t"));
        epochs.learn(stale, EpochOf::Tag("t"), Some(1));
        assert_eq!(epochs.get(EpochOf::Tag("t")), None);
        let asked = epochs.asking();
        epochs.learn(asked, EpochOf::Namespace, Some(7));
        epochs.forget_tags();
        assert_eq!(epochs.get(EpochOf::Namespace), Some(7));
        let before = epochs.mark();
        let asked = epochs.asking();
        epochs.learn(asked, EpochOf::Tag("u"), Some(3));
        assert_eq!(epochs.known_at("u", before), None);
        let after = epochs.mark();
        epochs.learn(asked, EpochOf::Tag("u"), Some(3));
        assert_eq!(epochs.known_at("u", after), Some(3));
        epochs.learn(asked, EpochOf::Tag("u"), Some(4));
        assert_eq!(epochs.known_at("u", after), None);
        epochs.forget_all();
        assert_eq!(epochs.get(EpochOf::Namespace), None);
    }
}
