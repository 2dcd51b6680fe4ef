//! The local copy: a wrapper around any store that keeps the sessions this instance validated
//! recently and answers a validation from them while the store cannot be reached, within
//! `staleness`. tower-sessions' `CachingSessionStore` puts a cache in front of a store the
//! same way; this one reads through only when the store fails, so whenever the store answers,
//! it is the authority.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use super::{Read, SessionStore};
use crate::error::Result;
use crate::session::record::Record;
use crate::session::window::Window;

/// `S` with a local copy of the sessions validated here.
pub(crate) struct LocalCopy<S> {
    store: S,
    /// Records as last validated here, by session hash, for `staleness`.
    copies: Window<Record>,
}

impl<S: SessionStore> LocalCopy<S> {
    /// `store`, with `copies` (a window of `staleness`) in front.
    pub(crate) fn new(store: S, copies: Window<Record>) -> Self {
        LocalCopy { store, copies }
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for LocalCopy<S> {
    fn name(&self) -> &'static str {
        self.store.name()
    }

    async fn read(&self, tag: &str, hash: &str) -> Result<Read> {
        match self.store.load(tag, hash).await {
            Ok(Some(rec)) => Ok(Read::Stored(Some(rec))),
            Ok(None) => {
                self.copies.remove(hash);
                Ok(Read::Stored(None))
            }
            // The connection refuses at once while health is Down, so an outage costs no wait
            // here; a call that failed mid-flight falls back the same way.
            Err(e) if e.is_connectivity() => self.copies.get(hash).map(Read::Copy).ok_or(e),
            Err(e) => Err(e),
        }
    }

    fn keep_copy(&self, hash: &str, rec: &Record) {
        self.copies.insert(hash.to_owned(), rec.clone());
    }

    fn drop_copy(&self, hash: &str) {
        self.copies.remove(hash);
    }

    fn drop_copies_of(&self, user: &str, keep: Option<&str>) -> Vec<String> {
        let dropped: Vec<String> = self
            .copies
            .iter()
            .filter(|(hash, rec)| rec.user_id == user && keep != Some(hash.as_str()))
            .map(|(hash, _)| (*hash).clone())
            .collect();
        for hash in &dropped {
            self.copies.remove(hash);
        }
        dropped
    }

    async fn create(
        &self,
        tag: &str,
        hash: &str,
        rec: &Record,
        ttl: Duration,
        rt_ttl: Duration,
    ) -> Result<()> {
        self.store.create(tag, hash, rec, ttl, rt_ttl).await?;
        // A login counts as a validation: the session it made validates here during an outage.
        self.keep_copy(hash, rec);
        Ok(())
    }

    async fn remove(&self, tag: &str, hash: &str, user: &str, kind: &str) -> Result<bool> {
        // Before the store is asked: a removal it cannot take still ends the copy.
        self.copies.remove(hash);
        self.store.remove(tag, hash, user, kind).await
    }

    // The rest is the store's alone.

    async fn load(&self, tag: &str, hash: &str) -> Result<Option<Record>> {
        self.store.load(tag, hash).await
    }

    async fn load_many(&self, tag: &str, hashes: &[&str]) -> Result<Vec<Option<Record>>> {
        self.store.load_many(tag, hashes).await
    }

    async fn cas(
        &self,
        tag: &str,
        hash: &str,
        expected: u64,
        rec: &Record,
        ttl: Duration,
    ) -> Result<bool> {
        self.store.cas(tag, hash, expected, rec, ttl).await
    }

    async fn index(&self, tag: &str, user: &str) -> Result<Vec<String>> {
        self.store.index(tag, user).await
    }

    async fn prune(&self, tag: &str, user: &str, members: &[String]) -> Result<u64> {
        self.store.prune(tag, user, members).await
    }

    async fn refresh_lookup(&self, tag: &str, rt_hash: &str) -> Result<Option<String>> {
        self.store.refresh_lookup(tag, rt_hash).await
    }

    async fn refresh_link(
        &self,
        tag: &str,
        rt_hash: &str,
        hash: &str,
        ttl: Duration,
    ) -> Result<()> {
        self.store.refresh_link(tag, rt_hash, hash, ttl).await
    }

    async fn counts(&self) -> Result<BTreeMap<String, i64>> {
        self.store.counts().await
    }

    async fn users_page(&self, cursor: u64, count: usize) -> Result<(u64, Vec<String>)> {
        self.store.users_page(cursor, count).await
    }

    async fn forget_user(&self, tag: &str, user: &str) -> Result<()> {
        self.store.forget_user(tag, user).await
    }

    fn purge(&self) {
        self.store.purge();
    }
}
