//! Block windows ([`LimiterBuilder::block_for`](super::LimiterBuilder::block_for)): a key refused
//! once is refused from process memory, without asking any tier, until its block ends.

use std::time::{Duration, Instant};

pub(super) struct Blocks {
    /// When each blocked key was refused; moka drops ended blocks.
    since: moka::sync::Cache<String, Instant>,
    block_for: Duration,
}

impl Blocks {
    /// Blocks of `block_for`, for at most `max_keys` keys at once.
    pub(super) fn new(block_for: Duration, max_keys: u64) -> Self {
        Blocks {
            since: moka::sync::Cache::builder()
                .max_capacity(max_keys)
                .time_to_live(block_for)
                .build(),
            block_for,
        }
    }

    /// Time left of `key`'s block; `None` when it is not blocked.
    pub(super) fn left(&self, key: &str) -> Option<Duration> {
        let since = self.since.get(key)?;
        let left = self.block_for.saturating_sub(since.elapsed());
        (!left.is_zero()).then_some(left)
    }

    /// Blocks `key` from now.
    pub(super) fn block(&self, key: &str) {
        self.since.insert(key.to_owned(), Instant::now());
    }
}
