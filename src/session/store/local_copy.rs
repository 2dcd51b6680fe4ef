//! The local copy: a wrapper around any store that keeps the sessions this instance validated
//! recently and answers a validation from them while the store cannot be reached, within
//! `staleness`. tower-sessions' `CachingSessionStore` puts a cache in front of a store the
//! same way; this one reads through only when the store fails, so whenever the store answers,
//! it is the authority.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use super::{split_member, Admit, Life, Read, SessionStore};
use crate::error::Result;
use crate::session::record::{Millis, Record};
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

    fn drop_copies_of(&self, user_id: &str, keep: Option<&str>) -> Vec<String> {
        let dropped: Vec<String> = self
            .copies
            .iter()
            .filter(|(hash, rec)| rec.user_id == user_id && keep != Some(hash.as_str()))
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
        name: &str,
        hash: &str,
        rec: &Record,
        life: Life,
        admit: Admit,
    ) -> Result<Vec<String>> {
        let evicted = self.store.create(tag, name, hash, rec, life, admit).await?;
        for mem in &evicted {
            self.copies.remove(split_member(mem).0);
        }
        // A login counts as a validation: the session it made validates here during an outage.
        self.keep_copy(hash, rec);
        Ok(evicted)
    }

    async fn remove(&self, tag: &str, hash: &str, name: &str, kind: &str) -> Result<bool> {
        // Before the store is asked: a removal it cannot take still ends the copy.
        self.copies.remove(hash);
        self.store.remove(tag, hash, name, kind).await
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
        name: &str,
        expected: u64,
        rec: &Record,
        life: Life,
    ) -> Result<bool> {
        self.store.cas(tag, hash, name, expected, rec, life).await
    }

    async fn index(
        &self,
        tag: &str,
        name: &str,
        now: Millis,
        limit: usize,
    ) -> Result<(Vec<String>, Vec<String>)> {
        self.store.index(tag, name, now, limit).await
    }

    async fn rekey(
        &self,
        tag: &str,
        name: &str,
        (old, new): (&str, &str),
        rec: &Record,
        life: Life,
        rt_ttl: Duration,
    ) -> Result<bool> {
        // The old id's copy goes first: whatever the store does, it no longer validates here.
        self.copies.remove(old);
        let moved = self
            .store
            .rekey(tag, name, (old, new), rec, life, rt_ttl)
            .await?;
        if moved {
            self.keep_copy(new, rec);
        }
        Ok(moved)
    }

    async fn prune(&self, tag: &str, name: &str, members: &[String]) -> Result<Vec<String>> {
        self.store.prune(tag, name, members).await
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

    async fn forget_user(&self, tag: &str, name: &str) -> Result<()> {
        self.store.forget_user(tag, name).await
    }

    fn purge(&self) {
        self.store.purge();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::clock::ManualClock;
    use crate::config::SharedClock;
    use crate::error::Error;
    use crate::session::store::MemoryStore;

    /// The memory store, refusing every call while `down`, as a `Conn` does while health is
    /// Down.
    struct Flaky {
        store: MemoryStore,
        down: AtomicBool,
    }

    impl Flaky {
        fn up(&self) -> Result<()> {
            if self.down.load(Ordering::Relaxed) {
                Err(Error::Unavailable)
            } else {
                Ok(())
            }
        }
    }

    #[async_trait]
    impl SessionStore for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        async fn create(
            &self,
            t: &str,
            n: &str,
            h: &str,
            r: &Record,
            a: Life,
            c: Admit,
        ) -> Result<Vec<String>> {
            self.up()?;
            self.store.create(t, n, h, r, a, c).await
        }
        async fn load(&self, t: &str, h: &str) -> Result<Option<Record>> {
            self.up()?;
            self.store.load(t, h).await
        }
        async fn load_many(&self, t: &str, h: &[&str]) -> Result<Vec<Option<Record>>> {
            self.up()?;
            self.store.load_many(t, h).await
        }
        async fn cas(
            &self,
            t: &str,
            h: &str,
            n: &str,
            e: u64,
            r: &Record,
            d: Life,
        ) -> Result<bool> {
            self.up()?;
            self.store.cas(t, h, n, e, r, d).await
        }
        async fn remove(&self, t: &str, h: &str, u: &str, k: &str) -> Result<bool> {
            self.up()?;
            self.store.remove(t, h, u, k).await
        }
        async fn index(
            &self,
            t: &str,
            u: &str,
            w: Millis,
            l: usize,
        ) -> Result<(Vec<String>, Vec<String>)> {
            self.up()?;
            self.store.index(t, u, w, l).await
        }
        async fn rekey(
            &self,
            t: &str,
            n: &str,
            o: (&str, &str),
            r: &Record,
            l: Life,
            d: Duration,
        ) -> Result<bool> {
            self.up()?;
            self.store.rekey(t, n, o, r, l, d).await
        }
        async fn prune(&self, t: &str, u: &str, m: &[String]) -> Result<Vec<String>> {
            self.up()?;
            self.store.prune(t, u, m).await
        }
        async fn refresh_lookup(&self, t: &str, r: &str) -> Result<Option<String>> {
            self.up()?;
            self.store.refresh_lookup(t, r).await
        }
        async fn refresh_link(&self, t: &str, r: &str, h: &str, d: Duration) -> Result<()> {
            self.up()?;
            self.store.refresh_link(t, r, h, d).await
        }
        async fn counts(&self) -> Result<BTreeMap<String, i64>> {
            self.up()?;
            self.store.counts().await
        }
        async fn users_page(&self, c: u64, n: usize) -> Result<(u64, Vec<String>)> {
            self.up()?;
            self.store.users_page(c, n).await
        }
        async fn forget_user(&self, t: &str, u: &str) -> Result<()> {
            self.up()?;
            self.store.forget_user(t, u).await
        }
    }

    fn record(user: &str) -> Record {
        Record {
            user_id: user.to_owned(),
            device: Default::default(),
            user_agent: String::new(),
            ip: String::new(),
            metadata: BTreeMap::new(),
            access_hash: None,
            created: 0,
            seen: 0,
            deadline: u64::MAX,
            refresh: vec![format!("rt-{user}")],
            grace: Vec::new(),
            data: BTreeMap::new(),
            version: 0,
        }
    }

    fn copy_of(read: Result<Read>) -> Option<String> {
        match read {
            Ok(Read::Copy(rec)) => Some(rec.user_id),
            _ => None,
        }
    }

    #[tokio::test]
    async fn answers_from_its_copy_only_while_the_store_is_unreachable_and_within_staleness() {
        let clock = ManualClock::new();
        let shared = SharedClock::new(clock.clone());
        let local = LocalCopy::new(
            Flaky {
                store: MemoryStore::new(shared.clone()),
                down: AtomicBool::new(false),
            },
            Window::new(Duration::from_secs(30), shared),
        );
        let hour = Duration::from_secs(3600);
        for (hash, user) in [("a", "ann"), ("b", "ann"), ("c", "cy"), ("d", "ann")] {
            local
                .create(
                    "t",
                    user,
                    hash,
                    &record(user),
                    Life {
                        ttl: hour,
                        expires: 3_600_000,
                    },
                    Admit {
                        now: 0,
                        max: 0,
                        refuse: false,
                        refresh_ttl: hour,
                    },
                )
                .await
                .unwrap();
        }
        // Up: the store answers, never the copy.
        assert!(matches!(
            local.read("t", "a").await,
            Ok(Read::Stored(Some(_)))
        ));
        // A removal the store cannot take still ends the copy.
        local.store.down.store(true, Ordering::Relaxed);
        assert!(local.remove("t", "b", "ann", "other").await.is_err());
        assert_eq!(copy_of(local.read("t", "b").await), None);
        assert_eq!(copy_of(local.read("t", "a").await).as_deref(), Some("ann"));
        // A user's copies go, but the one kept.
        let mut dropped = local.drop_copies_of("ann", Some("a"));
        dropped.sort();
        assert_eq!(dropped, ["d"]);
        assert!(copy_of(local.read("t", "a").await).is_some());
        assert!(matches!(
            local.read("t", "d").await,
            Err(Error::Unavailable)
        ));
        // Staleness is the clock's.
        clock.advance(Duration::from_secs(31));
        assert!(matches!(
            local.read("t", "c").await,
            Err(Error::Unavailable)
        ));
        // Back up, an absent record ends the copy.
        local.keep_copy("e", &record("eve"));
        local.store.down.store(false, Ordering::Relaxed);
        assert!(matches!(local.read("t", "e").await, Ok(Read::Stored(None))));
        local.store.down.store(true, Ordering::Relaxed);
        assert!(local.read("t", "e").await.is_err());
    }
}
