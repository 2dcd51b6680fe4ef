//! Block windows ([`LimiterBuilder::block_for`](super::LimiterBuilder::block_for)): a key refused
//! once is refused from process memory, without asking any tier, until its block ends on the
//! configured clock.

use std::time::Duration;

use crate::config::SharedClock;

pub(super) struct Blocks {
    /// When each blocked key was refused, as the clock's elapsed time.
    since: moka::sync::Cache<String, Duration>,
    block_for: Duration,
    clock: SharedClock,
}

impl Blocks {
    /// Blocks of `block_for`, for at most `max_keys` keys at once.
    pub(super) fn new(block_for: Duration, max_keys: u64, clock: SharedClock) -> Self {
        let since = moka::sync::Cache::builder().max_capacity(max_keys);
        // Ended blocks go from memory on moka's own (real) time. A manual clock may run ahead
        // of it or behind it, so under one only the capacity bounds the map: an entry moka
        // dropped early would end a block the manual clock says is still running.
        let since = if clock.is_system() {
            since.time_to_live(block_for).build()
        } else {
            since.build()
        };
        Blocks {
            since,
            block_for,
            clock,
        }
    }

    /// Time left of `key`'s block; `None` when it is not blocked.
    pub(super) fn left(&self, key: &str) -> Option<Duration> {
        let since = self.since.get(key)?;
        let left = self
            .block_for
            .saturating_sub(self.clock.elapsed().saturating_sub(since));
        (!left.is_zero()).then_some(left)
    }

    /// Ends `key`'s block.
    pub(super) fn unblock(&self, key: &str) {
        self.since.invalidate(key);
    }

    /// Blocks `key` from now.
    pub(super) fn block(&self, key: &str) {
        self.since.insert(key.to_owned(), self.clock.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn a_block_ends_on_the_clock() {
        let clock = ManualClock::new();
        let blocks = Blocks::new(
            Duration::from_millis(500),
            10,
            SharedClock::new(clock.clone()),
        );
        assert_eq!(blocks.left("k"), None);
        blocks.block("k");
        assert_eq!(blocks.left("k"), Some(Duration::from_millis(500)));
        assert_eq!(blocks.left("other"), None);
        clock.advance(Duration::from_millis(499));
        assert_eq!(blocks.left("k"), Some(Duration::from_millis(1)));
        clock.advance(Duration::from_millis(1));
        assert_eq!(blocks.left("k"), None);
        // A new refusal blocks again, from then.
        blocks.block("k");
        assert_eq!(blocks.left("k"), Some(Duration::from_millis(500)));
    }
}
