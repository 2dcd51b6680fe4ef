//! A bounded map whose entries count for a span of the session clock: the local copies
//! (`staleness`) and the revocations remembered here (`max_lifetime`). Whether an entry still
//! counts is decided by the clock, so a test moves it with a manual clock; moka's own expiry
//! only frees the memory, and only on the system clock, where the two agree.

use std::sync::Arc;
use std::time::Duration;

use crate::config::SharedClock;

/// Entries at most; past it moka evicts the least used.
const CAPACITY: u64 = 100_000;

/// Values by session hash, each counting for `span` after its insertion.
pub(crate) struct Window<V> {
    entries: moka::sync::Cache<String, (V, Duration)>,
    span: Duration,
    clock: SharedClock,
}

impl<V: Clone + Send + Sync + 'static> Window<V> {
    /// An empty window of `span` on `clock`.
    pub(crate) fn new(span: Duration, clock: SharedClock) -> Self {
        let mut entries = moka::sync::Cache::builder().max_capacity(CAPACITY);
        // moka's timer runs on real time: under a manual clock it would end entries the clock
        // says still count.
        if clock.is_system() {
            entries = entries.time_to_live(span);
        }
        Window {
            entries: entries.build(),
            span,
            clock,
        }
    }

    pub(crate) fn insert(&self, key: String, value: V) {
        self.entries.insert(key, (value, self.clock.elapsed()));
    }

    /// The value of `key`, while it counts.
    pub(crate) fn get(&self, key: &str) -> Option<V> {
        let (value, at) = self.entries.get(key)?;
        if self.counts(at) {
            Some(value)
        } else {
            self.entries.invalidate(key);
            None
        }
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(crate) fn remove(&self, key: &str) {
        self.entries.invalidate(key);
    }

    /// The entries that count.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Arc<String>, V)> + '_ {
        self.entries
            .iter()
            .filter(|(_, (_, at))| self.counts(*at))
            .map(|(key, (value, _))| (key, value))
    }

    fn counts(&self, at: Duration) -> bool {
        self.clock.elapsed().saturating_sub(at) < self.span
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn an_entry_counts_for_its_span_of_the_clock() {
        let clock = ManualClock::new();
        let window = Window::new(Duration::from_secs(30), SharedClock::new(clock.clone()));
        window.insert("a".into(), 1);
        clock.advance(Duration::from_secs(20));
        window.insert("b".into(), 2);
        assert_eq!(window.get("a"), Some(1));
        assert_eq!(window.iter().count(), 2);
        clock.advance(Duration::from_secs(10));
        assert_eq!(window.get("a"), None);
        assert!(window.contains("b"));
        assert_eq!(
            window.iter().map(|(k, _)| (*k).clone()).collect::<Vec<_>>(),
            ["b"]
        );
        window.remove("b");
        assert!(!window.contains("b"));
    }
}
