//! The peer a team writes itself: a moka cache in front of redis-rs, cache-aside, values in
//! bincode, about fifty lines. No coherence between instances, no health, no compression: what
//! it does not do, it does not pay for.

use std::sync::Arc;

use moka::sync::Cache;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tierkit::cache::Source;

use super::{l1_entries, written, Outcome, TTL};
use crate::database::{user, Database, Page, User};
use crate::workload::{Ns, Op};
use crate::Result;

/// One namespace: the L1 and its Redis key prefix.
struct Tier<V> {
    l1: Cache<u64, Arc<V>>,
    prefix: &'static str,
}

impl<V: Send + Sync + 'static> Tier<V> {
    fn new(prefix: &'static str, entries: u64) -> Tier<V> {
        Tier {
            l1: Cache::builder()
                .max_capacity(entries)
                .time_to_live(TTL)
                .build(),
            prefix,
        }
    }
}

pub struct HandRolled {
    redis: ConnectionManager,
    pages: Tier<Page>,
    users: Tier<User>,
}

impl HandRolled {
    /// Each namespace's L1 holds as many entries as `l1_mib` holds 1 KiB pages (tierkit's
    /// 64 MiB by default): a team sizes a moka cache by count.
    pub async fn connect(url: &str, l1_mib: Option<u64>) -> Result<HandRolled> {
        let redis = ConnectionManager::new(redis::Client::open(url)?).await?;
        let entries = l1_entries(l1_mib);
        Ok(HandRolled {
            redis,
            pages: Tier::new("loadgen-hand:pages:", entries),
            users: Tier::new("loadgen-hand:users:", entries),
        })
    }

    pub async fn run(&self, op: Op, db: &Database) -> Outcome {
        match (op.ns, op.read) {
            (Ns::Pages, true) => self.read(&self.pages, op.key, || db.page(op.key)).await,
            (Ns::Users, true) => self.read(&self.users, op.key, || db.user(op.key)).await,
            (Ns::Pages, false) => {
                let page = db.corpus.page(op.key, op.revision);
                self.write(&self.pages, op.key, page).await
            }
            (Ns::Users, false) => {
                let user = user(op.key, op.revision);
                self.write(&self.users, op.key, user).await
            }
        }
    }

    /// L1, then Redis, then the database (whose value goes to both).
    async fn read<V, F, Fut>(&self, tier: &Tier<V>, key: u64, load: F) -> Outcome
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = V>,
    {
        if tier.l1.get(&key).is_some() {
            return Outcome::Read(Source::L1);
        }
        let mut redis = self.redis.clone();
        let name = format!("{}{key}", tier.prefix);
        let found: redis::RedisResult<Option<Vec<u8>>> = redis.get(&name).await;
        if let Ok(Some(bytes)) = &found {
            let config = bincode::config::standard();
            if let Ok((value, _)) = bincode::serde::decode_from_slice::<V, _>(bytes, config) {
                tier.l1.insert(key, Arc::new(value));
                return Outcome::Read(Source::L2);
            }
        }
        let value = load().await;
        let stored = self.store(&mut redis, &name, &value).await;
        tier.l1.insert(key, Arc::new(value));
        match (found, stored) {
            (Ok(_), Ok(())) => Outcome::Read(Source::Loader),
            _ => Outcome::Error,
        }
    }

    /// Write-through: Redis, then L1.
    async fn write<V>(&self, tier: &Tier<V>, key: u64, value: V) -> Outcome
    where
        V: Serialize + Send + Sync + 'static,
    {
        let mut redis = self.redis.clone();
        let stored = self
            .store(&mut redis, &format!("{}{key}", tier.prefix), &value)
            .await;
        tier.l1.insert(key, Arc::new(value));
        written(stored)
    }

    async fn store<V: Serialize>(
        &self,
        redis: &mut ConnectionManager,
        name: &str,
        value: &V,
    ) -> redis::RedisResult<()> {
        let bytes =
            bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::Client, "encode", e.to_string()))
            })?;
        redis.set_ex(name, bytes, TTL.as_secs()).await
    }
}
