//! The memory store reached through what stands in for Redis (feature `testing`): an embedded
//! instance with fault injection keeps its sessions in process memory, and each call meets the
//! faults in force as a Redis call would, so the degraded paths above (the local copy,
//! revocations replayed on recovery) run as they would with Redis.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use super::{Admit, Life, MemoryStore, SessionStore};
use crate::conn::StandIn;
use crate::error::Result;
use crate::session::record::{Millis, Record};

/// [`MemoryStore`] behind a [`StandIn`].
pub(crate) struct StandInStore {
    store: MemoryStore,
    standin: StandIn,
}

impl StandInStore {
    pub(crate) fn new(store: MemoryStore, standin: StandIn) -> Self {
        StandInStore { store, standin }
    }
}

#[async_trait]
impl SessionStore for StandInStore {
    fn name(&self) -> &'static str {
        "memory (stand-in for Redis)"
    }

    async fn create(
        &self,
        tag: &str,
        name: &str,
        hash: &str,
        rec: &Record,
        life: Life,
        admit: Admit,
    ) -> Result<Vec<String>> {
        let call = self.store.create(tag, name, hash, rec, life, admit);
        self.standin.gate(call).await
    }

    async fn load(&self, tag: &str, hash: &str) -> Result<Option<Record>> {
        self.standin.gate(self.store.load(tag, hash)).await
    }

    async fn load_many(&self, tag: &str, hashes: &[&str]) -> Result<Vec<Option<Record>>> {
        self.standin.gate(self.store.load_many(tag, hashes)).await
    }

    async fn cas(
        &self,
        tag: &str,
        hash: &str,
        name: &str,
        expected: u64,
        rec: &Record,
        life: Life,
    ) -> Result<bool> {
        let call = self.store.cas(tag, hash, name, expected, rec, life);
        self.standin.gate(call).await
    }

    async fn remove(&self, tag: &str, hash: &str, name: &str, kind: &str) -> Result<bool> {
        self.standin
            .gate(self.store.remove(tag, hash, name, kind))
            .await
    }

    async fn index(
        &self,
        tag: &str,
        name: &str,
        now: Millis,
        limit: usize,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let call = self.store.index(tag, name, now, limit);
        self.standin.gate(call).await
    }

    async fn prune(&self, tag: &str, name: &str, members: &[String]) -> Result<Vec<String>> {
        self.standin
            .gate(self.store.prune(tag, name, members))
            .await
    }

    async fn refresh_lookup(&self, tag: &str, rt_hash: &str) -> Result<Option<String>> {
        self.standin
            .gate(self.store.refresh_lookup(tag, rt_hash))
            .await
    }

    async fn rekey(
        &self,
        tag: &str,
        name: &str,
        ids: (&str, &str),
        rec: &Record,
        life: Life,
        rt_ttl: Duration,
    ) -> Result<bool> {
        let call = self.store.rekey(tag, name, ids, rec, life, rt_ttl);
        self.standin.gate(call).await
    }

    async fn refresh_link(
        &self,
        tag: &str,
        rt_hash: &str,
        hash: &str,
        ttl: Duration,
    ) -> Result<()> {
        let call = self.store.refresh_link(tag, rt_hash, hash, ttl);
        self.standin.gate(call).await
    }

    async fn counts(&self) -> Result<BTreeMap<String, i64>> {
        self.standin.gate(self.store.counts()).await
    }

    async fn users_page(&self, cursor: u64, count: usize) -> Result<(u64, Vec<String>)> {
        self.standin
            .gate(self.store.users_page(cursor, count))
            .await
    }

    async fn forget_user(&self, tag: &str, name: &str) -> Result<()> {
        self.standin.gate(self.store.forget_user(tag, name)).await
    }

    fn purge(&self) {
        self.store.purge();
    }
}
