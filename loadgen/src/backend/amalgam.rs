//! The peer closest to tierkit: amalgam-cache 0.4, a FusionCache port on moka with a Redis L2
//! and a backplane, set up as its Redis example and README describe (JSON values, the Redis
//! distributed cache and backplane), with L2 timeouts of tierkit's 100 ms op timeout and 1 s
//! circuit breakers, as for the outage comparison. Its answers do not say which tier gave
//! them: a hit that ran no factory counts as an L1 read.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amalgam::provider::{
    Backplane, DistributedCache, DistributedSerializer, JsonSerializer, RedisBackplane,
    RedisDistributedCache,
};
use amalgam::{Cache, EntryOptions, Timeout};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tierkit::cache::Source;

use super::{l1_entries, written, Outcome, TTL};
use crate::database::{user, Database, Page, User};
use crate::workload::{Ns, Op};
use crate::Result;

/// tierkit's default op timeout, for the L2 calls.
const L2_TIMEOUT: Duration = Duration::from_millis(100);
/// How long an open circuit keeps calls off Redis.
const BREAKER: Duration = Duration::from_secs(1);

pub struct AmalgamPeer {
    pages: Cache<Page>,
    users: Cache<User>,
}

impl AmalgamPeer {
    pub async fn connect(url: &str, l1_mib: Option<u64>) -> Result<AmalgamPeer> {
        let entries = l1_entries(l1_mib);
        Ok(AmalgamPeer {
            pages: cache(url, "loadgen-amalgam-pages", entries).await?,
            users: cache(url, "loadgen-amalgam-users", entries).await?,
        })
    }

    pub async fn run(&self, op: Op, db: &'static Database) -> Outcome {
        let mut digits = itoa::Buffer::new();
        let (key, id) = (digits.format(op.key), op.key);
        // The factory must own what it uses: the `'static` reference, as tierkit's loader.
        match (op.ns, op.read) {
            (Ns::Pages, true) => read(&self.pages, key, async move { db.page(id).await }).await,
            (Ns::Users, true) => read(&self.users, key, async move { db.user(id).await }).await,
            (Ns::Pages, false) => written(
                self.pages
                    .set(key, db.corpus.page(op.key, op.revision))
                    .await,
            ),
            (Ns::Users, false) => written(self.users.set(key, user(op.key, op.revision)).await),
        }
    }
}

async fn cache<V>(url: &str, name: &str, entries: u64) -> Result<Cache<V>>
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let l2 = RedisDistributedCache::connect(url.to_owned()).await?;
    let backplane = RedisBackplane::connect(url.to_owned()).await?;
    let timeout = Timeout::After(L2_TIMEOUT);
    let options = EntryOptions::default()
        .with_duration(TTL)
        .with_distributed_timeouts(timeout, timeout);
    Ok(Cache::builder()
        .name(name)
        .key_prefix(format!("{name}:"))
        .distributed(Arc::new(l2) as Arc<dyn DistributedCache>)
        .serializer(Arc::new(JsonSerializer) as Arc<dyn DistributedSerializer<V>>)
        .backplane(Arc::new(backplane) as Arc<dyn Backplane>)
        .default_options(options)
        .distributed_circuit_breaker(BREAKER)
        .backplane_circuit_breaker(BREAKER)
        .max_capacity(entries)
        .try_build()?)
}

/// Cache-aside through `get_or_set`; the database's future is only polled when the factory
/// runs.
async fn read<V, Fut>(cache: &Cache<V>, key: &str, load: Fut) -> Outcome
where
    V: Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = V> + Send + 'static,
{
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let got = cache
        .get_or_set(key, move |_| async move {
            flag.store(true, Ordering::Relaxed);
            Ok::<_, Infallible>(load.await)
        })
        .await;
    match got {
        Ok(_) if ran.load(Ordering::Relaxed) => Outcome::Read(Source::Loader),
        Ok(_) => Outcome::Read(Source::L1),
        Err(_) => Outcome::Error,
    }
}
