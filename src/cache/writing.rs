//! This instance's writes in flight: a value it wrote is served from here, whatever happens
//! to its L1 copy, until Redis has answered the write.
//!
//! A write goes to L1, then to Redis. Until Redis takes it, Redis holds only what the write
//! replaces, so a read that misses L1 in that window (the copy evicted by another instance's
//! message that crossed the write, or by a resubscription that forgot the L1) would go to Redis
//! and serve an older value than one this instance already served: reads would go back.
//! Reads that miss L1 look here first. Once Redis has answered, whatever it holds is this
//! write or newer; when it failed, the keys are owed and Redis is not read until they are
//! replayed ([`owed`](super::owed)).

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::owed::Owed;

/// A value as the L1 holds it.
pub(super) type Value = Arc<dyn Any + Send + Sync>;

/// An entry's tags, as the L1 keeps them.
pub(super) type Tags = Option<Arc<[Box<str>]>>;

/// The writes in flight in one namespace of this process: the latest value per key (with its
/// tags, for invalidations that cover it), with the ticket of the write that holds it.
#[derive(Debug, Default)]
pub(super) struct Writing {
    /// Keys in flight, so that the usual read (nothing in flight) costs one load.
    len: AtomicUsize,
    tickets: AtomicU64,
    values: Mutex<HashMap<Box<str>, (u64, Value, Tags)>>,
}

/// A batch's place in [`Writing`]. Dropped before [`answered`](Self::answered) (the write's
/// future dropped mid-way), its keys are owed: what went to L1 may or may not be in Redis.
pub(super) struct InFlight<'a> {
    writing: &'a Writing,
    owed: &'a Owed,
    ticket: u64,
    keys: Vec<Box<str>>,
    answered: bool,
}

impl Writing {
    fn values(&self) -> MutexGuard<'_, HashMap<Box<str>, (u64, Value, Tags)>> {
        self.values.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A batch about to be written; its entries join with [`InFlight::add`].
    pub(super) fn begin<'a>(&'a self, owed: &'a Owed) -> InFlight<'a> {
        InFlight {
            writing: self,
            owed,
            ticket: self.tickets.fetch_add(1, Ordering::Relaxed),
            keys: Vec::new(),
            answered: false,
        }
    }

    /// The value of `key`'s write in flight, if any.
    #[inline]
    pub(super) fn get(&self, key: &str) -> Option<Value> {
        if self.len.load(Ordering::SeqCst) == 0 {
            return None;
        }
        self.values().get(key).map(|(_, v, _)| v.clone())
    }

    /// Stops serving the writes in flight that `covers` (key, tags): an invalidation of this
    /// instance has reached Redis, which from then on holds nothing older that it would serve.
    pub(super) fn forget(&self, covers: impl Fn(&str, Option<&[Box<str>]>) -> bool) {
        if self.len.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut values = self.values();
        values.retain(|key, (_, _, tags)| !covers(key, tags.as_deref()));
        self.len.store(values.len(), Ordering::SeqCst);
    }
}

impl InFlight<'_> {
    /// Adds `key`'s value to the batch. Called under the key's L1 put lock, with the L1 put: a
    /// later write of the key is later here as in L1.
    pub(super) fn add(&mut self, key: &str, value: Value, tags: Tags) {
        let mut values = self.writing.values();
        values.insert(key.into(), (self.ticket, value, tags));
        self.writing.len.store(values.len(), Ordering::SeqCst);
        self.keys.push(key.into());
    }

    /// Redis took the write: nothing is owed when the batch drops.
    pub(super) fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.owed.owe_keys(self.keys.iter().map(|k| &**k));
        }
        let mut values = self.writing.values();
        for key in &self.keys {
            // A later write of the key holds it now.
            if values.get(key).is_some_and(|(t, _, _)| *t == self.ticket) {
                values.remove(key);
            }
        }
        self.writing.len.store(values.len(), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(n: u32) -> Value {
        Arc::new(n)
    }

    fn read(w: &Writing, key: &str) -> Option<u32> {
        w.get(key).and_then(|v| v.downcast_ref::<u32>().copied())
    }

    fn begin<'a>(w: &'a Writing, owed: &'a Owed, entries: &[(&str, u32)]) -> InFlight<'a> {
        let mut batch = w.begin(owed);
        for (key, n) in entries {
            batch.add(key, value(*n), None);
        }
        batch
    }

    #[test]
    fn a_key_is_served_while_its_latest_write_is_in_flight() {
        let (w, owed) = (Writing::default(), Owed::default());
        let first = begin(&w, &owed, &[("k", 1)]);
        let second = begin(&w, &owed, &[("k", 2)]);
        assert_eq!(read(&w, "k"), Some(2));
        first.answered();
        assert_eq!(
            read(&w, "k"),
            Some(2),
            "the later write still holds the key"
        );
        second.answered();
        assert_eq!(read(&w, "k"), None);
        assert!(!owed.is_owing());
    }

    #[test]
    fn a_write_dropped_before_redis_answered_owes_its_keys() {
        let (w, owed) = (Writing::default(), Owed::default());
        drop(begin(&w, &owed, &[("a", 1), ("b", 2)]));
        assert_eq!(read(&w, "a"), None);
        assert!(owed.is_owing());
    }

    #[test]
    fn an_invalidation_that_reached_redis_forgets_what_it_covers() {
        let (w, owed) = (Writing::default(), Owed::default());
        let tagged: Tags = Some(Arc::from(vec![Box::<str>::from("t")]));
        let mut batch = w.begin(&owed);
        batch.add("a", value(1), tagged);
        batch.add("b", value(2), None);
        w.forget(|_, tags| tags.is_some_and(|t| t.iter().any(|t| &**t == "t")));
        assert_eq!((read(&w, "a"), read(&w, "b")), (None, Some(2)));
        batch.answered();
    }
}
