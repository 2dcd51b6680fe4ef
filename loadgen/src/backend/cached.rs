//! The peer: the same workload through the `cached` crate's async Redis store.

use cached::{AsyncRedisCache, ConcurrentCachedAsync};
use serde::Serialize;
use tierkit::cache::Source;

use super::{written, Outcome, TTL};
use crate::database::{user, Database, Page, User};
use crate::workload::{Ns, Op};
use crate::Result;

/// The `cached` crate's Redis store, one per namespace.
pub struct CachedPeer {
    pages: AsyncRedisCache<u64, Page>,
    users: AsyncRedisCache<u64, User>,
}

impl CachedPeer {
    pub async fn connect(url: &str) -> Result<CachedPeer> {
        let pages = AsyncRedisCache::new("pages:", TTL)
            .namespace("loadgen-cached:")
            .connection_string(url)
            .build()
            .await?;
        let users = AsyncRedisCache::new("users:", TTL)
            .namespace("loadgen-cached:")
            .connection_string(url)
            .build()
            .await?;
        Ok(CachedPeer { pages, users })
    }

    pub async fn run(&self, op: Op, db: &Database) -> Outcome {
        match (op.ns, op.read) {
            (Ns::Pages, true) => cached_aside(&self.pages, op.key, || db.page(op.key)).await,
            (Ns::Users, true) => cached_aside(&self.users, op.key, || db.user(op.key)).await,
            (Ns::Pages, false) => written(
                self.pages
                    .cache_set(op.key, db.corpus.page(op.key, op.revision))
                    .await,
            ),
            (Ns::Users, false) => written(
                self.users
                    .cache_set(op.key, user(op.key, op.revision))
                    .await,
            ),
        }
    }
}

/// Cache-aside through a `cached` store, the way a service would write it: `cache_get`, and
/// on a miss the database then `cache_set`; a failed Redis call still answers from the
/// database, and counts as an error.
async fn cached_aside<V, F, Fut>(store: &AsyncRedisCache<u64, V>, key: u64, load: F) -> Outcome
where
    V: Serialize + serde::de::DeserializeOwned + Send + Clone,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = V>,
{
    match store.cache_get(&key).await {
        Ok(Some(_)) => Outcome::Read(Source::L2),
        Ok(None) => {
            let value = load().await;
            match store.cache_set(key, value).await {
                Ok(_) => Outcome::Read(Source::Loader),
                Err(_) => Outcome::Error,
            }
        }
        Err(_) => {
            load().await;
            Outcome::Error
        }
    }
}
