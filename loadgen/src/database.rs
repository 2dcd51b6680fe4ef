//! The simulated database behind the cache: the two kinds of value it answers with, the text
//! they are cut from, and how long it takes to answer.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// A `pages` value: mostly text of the requested size and compressibility.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Page {
    id: u64,
    revision: u64,
    title: String,
    body: String,
}

/// A `users` value: a small record, below the codec's compression threshold.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct User {
    id: u64,
    revision: u64,
    name: String,
    email: String,
}

/// Text that values are cut from, made once so a load costs a copy, not text generation.
pub struct Corpus {
    /// `value_size` bytes of repetitive, JSON-like text.
    repetitive: String,
    /// `2 * value_size` random alphanumeric bytes; each key starts at its own offset.
    random: String,
    size: usize,
    repetitive_len: usize,
}

impl Corpus {
    pub fn new(size: usize, compressible: f64, seed: u64) -> Corpus {
        let mut repetitive = String::with_capacity(size + 64);
        let mut i = 0u64;
        while repetitive.len() < size {
            repetitive.push_str(&format!(
                "{{\"section\":{},\"kind\":\"paragraph\",\"lang\":\"en\"}},",
                i % 13
            ));
            i += 1;
        }
        repetitive.truncate(size);
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
        let random = (0..2 * size.max(1))
            .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
            .collect();
        Corpus {
            repetitive,
            random,
            size,
            repetitive_len: (size as f64 * compressible).round() as usize,
        }
    }

    pub fn page(&self, id: u64, revision: u64) -> Page {
        let random_len = self.size - self.repetitive_len;
        // Both strings are ASCII, so every byte offset is a char boundary.
        let offset = (id as usize * 7919) % (self.size.max(1));
        let mut body = String::with_capacity(self.size);
        body.push_str(&self.repetitive[..self.repetitive_len]);
        body.push_str(&self.random[offset..offset + random_len]);
        Page {
            id,
            revision,
            title: format!("page {id}"),
            body,
        }
    }
}

pub fn user(id: u64, revision: u64) -> User {
    User {
        id,
        revision,
        name: format!("user-{id}"),
        email: format!("user-{id}@example.com"),
    }
}

/// The simulated database: answers after `latency`.
#[derive(Clone)]
pub struct Database {
    pub corpus: Arc<Corpus>,
    pub latency: Duration,
}

impl Database {
    async fn wait(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }

    pub async fn page(&self, id: u64) -> Page {
        self.wait().await;
        self.corpus.page(id, 0)
    }

    pub async fn user(&self, id: u64) -> User {
        self.wait().await;
        user(id, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_body_has_the_size_and_repetitive_share_asked_for() {
        for (size, compressible) in [(1024, 0.7), (1024, 0.0), (1024, 1.0), (1, 0.5), (0, 0.7)] {
            let corpus = Corpus::new(size, compressible, 1);
            for id in [0, 1, 99_999, u32::MAX as u64] {
                let page = corpus.page(id, 0);
                assert_eq!(page.body.len(), size, "size {size}, id {id}");
                assert!(page
                    .body
                    .starts_with(&corpus.repetitive[..corpus.repetitive_len]));
            }
        }
    }
}
