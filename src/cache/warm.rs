//! Warming: filling the cache ahead of traffic, with bounded concurrency, skipping what the
//! deepest tier already holds.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::namespace::Namespace;
use super::read::L2Read;
use crate::error::{Error, Result};

/// Keys checked for presence in one round trip.
const BATCH: usize = 1000;

/// Progress of [`Namespace::warm`], reported after every key. Serializes in camelCase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct WarmProgress {
    /// Keys handled so far.
    pub done: usize,
    /// Keys to handle.
    pub total: usize,
    /// Keys loaded and written.
    pub loaded: usize,
    /// Keys skipped because Redis already had them.
    pub skipped: usize,
    /// Keys whose loader failed (nothing written for them).
    pub failed: usize,
}

impl<V> Namespace<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Fills the cache ahead of traffic: for every key Redis does not have yet, runs `loader`
    /// (at most `concurrency` at a time) and writes the value through. Keys Redis already holds
    /// (embedded: the L1) are skipped, checked in batches of one round trip each. `progress`
    /// hears about every key.
    ///
    /// A failed loader is counted and the warm-up goes on; so does a Redis that is down (every
    /// key is then loaded into L1 only).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> tierkit::Result<()> {
    /// let kit = tierkit::Tierkit::embedded();
    /// let events = kit.namespace::<String>("events").build()?;
    /// let keys = (1..=100).map(|i| i.to_string());
    /// let done = events
    ///     .warm(keys, 8, |k| async move { Ok::<_, std::io::Error>(format!("event {k}")) }, |p| {
    ///         if p.done == p.total {
    ///             println!("warmed {} of {}", p.loaded, p.total);
    ///         }
    ///     })
    ///     .await?;
    /// assert_eq!(done.loaded, 100);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a zero `concurrency`. Loader and Redis failures are counted in
    /// the result, not returned.
    pub async fn warm<K, F, Fut, E>(
        &self,
        keys: impl IntoIterator<Item = K>,
        concurrency: usize,
        loader: F,
        progress: impl Fn(WarmProgress),
    ) -> Result<WarmProgress>
    where
        K: Into<String>,
        F: Fn(String) -> Fut,
        Fut: Future<Output = std::result::Result<V, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        use futures_util::StreamExt;

        if concurrency == 0 {
            return Err(Error::invalid("concurrency", "is zero; use 1 or more"));
        }
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        let mut state = WarmProgress {
            total: keys.len(),
            ..WarmProgress::default()
        };
        for batch in keys.chunks(BATCH) {
            let present = self.present(batch).await;
            let (skip, todo): (Vec<_>, Vec<_>) =
                batch.iter().zip(present).partition(|(_, present)| *present);
            for _ in skip {
                state.skipped += 1;
                state.done += 1;
                progress(state);
            }
            let mut loads = futures_util::stream::iter(todo.into_iter().map(|(key, _)| {
                let load = loader(key.clone());
                async move { (key, load.await) }
            }))
            .buffer_unordered(concurrency);
            while let Some((key, loaded)) = loads.next().await {
                match loaded {
                    Ok(value) => match self.set(key, value).await {
                        Ok(_) => state.loaded += 1,
                        Err(_) => state.failed += 1,
                    },
                    Err(e) => {
                        let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                        tracing::debug!(namespace = %self.ns.name, error = %e,
                            "tierkit: warm-up loader failed");
                        state.failed += 1;
                    }
                }
                state.done += 1;
                progress(state);
            }
        }
        Ok(state)
    }

    /// Which of `keys` the deepest tier holds a servable value of, in one round trip (two for
    /// tags not seen yet): the L2, or the L1 when no L2 stores values. Entries a clear or tag
    /// invalidation retired count as absent. All `false` when the L2 cannot answer.
    async fn present(&self, keys: &[String]) -> Vec<bool> {
        if !self.stores_values() {
            return keys
                .iter()
                // Only a copy that may be served counts: not one of before a resubscription or
                // covered by an invalidation since.
                .map(|key| self.live_l1(key).is_some())
                .collect();
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.l2_read_many(&keys)
            .await
            .into_iter()
            .map(|read| matches!(read, L2Read::Hit(_)))
            .collect()
    }
}
