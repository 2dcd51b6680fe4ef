//! Sessions in process memory, for the embedded mode: the same primitives as Redis, with the
//! same expiry, under one lock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{member, px, split_member, Admit, Life, SessionStore, PRUNE_PER_CALL};
use crate::config::SharedClock;
use crate::error::{Error, Result};
use crate::session::record::{Millis, Record};

/// Sessions in process memory, with the same expiry as Redis keys.
pub(crate) struct MemoryStore {
    state: Mutex<Mem>,
    /// Expiry is decided by the session clock, as every other time decision.
    clock: SharedClock,
}

#[derive(Default)]
struct Mem {
    sessions: HashMap<String, (Record, Millis)>,
    refresh: HashMap<String, (String, Millis)>,
    index: HashMap<String, Vec<(Millis, String)>>,
    users: Vec<String>,
    counts: BTreeMap<String, i64>,
}

impl Mem {
    fn count(&mut self, kind: &str, by: i64) {
        *self.counts.entry("active".into()).or_default() += by;
        *self.counts.entry(format!("device:{kind}")).or_default() += by;
    }

    /// As the Redis store's prune: entries scored before `now` whose session is gone leave
    /// the index (at most [`PRUNE_PER_CALL`]) and are counted off; the others are re-scored.
    fn prune_index(&mut self, name: &str, now: Millis) -> Vec<String> {
        let Some(mut idx) = self.index.remove(name) else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        for (score, mem) in idx.iter_mut().filter(|(score, _)| *score <= now) {
            if gone.len() >= PRUNE_PER_CALL {
                break;
            }
            match self.sessions.get(split_member(mem).0) {
                Some((_, until)) if now < *until => *score = *until,
                _ => gone.push(mem.clone()),
            }
        }
        let dropped: HashSet<&String> = gone.iter().collect();
        idx.retain(|(_, mem)| !dropped.contains(mem));
        for mem in &gone {
            self.count(split_member(mem).1, -1);
        }
        if !idx.is_empty() {
            self.index.insert(name.to_owned(), idx);
        }
        gone
    }
}

impl MemoryStore {
    pub(crate) fn new(clock: SharedClock) -> Self {
        MemoryStore {
            state: Mutex::default(),
            clock,
        }
    }

    fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mem> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live session; an expired one is dropped on the way, as Redis would have.
    fn get(&self, hash: &str) -> Option<Record> {
        let now = self.now();
        let mut m = self.lock();
        match m.sessions.get(hash) {
            Some((rec, until)) if now < *until => Some(rec.clone()),
            Some(_) => {
                m.sessions.remove(hash);
                None
            }
            None => None,
        }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn create(
        &self,
        _tag: &str,
        name: &str,
        hash: &str,
        rec: &Record,
        life: Life,
        admit: Admit,
    ) -> Result<Vec<String>> {
        let kind = rec.device.kind.as_str();
        let now = self.now();
        let mut m = self.lock();
        m.prune_index(name, admit.now);
        let mut evicted = Vec::new();
        let held = m.index.get(name).map_or(0, Vec::len);
        let max = usize::try_from(admit.max).unwrap_or(usize::MAX);
        if admit.max > 0 && held >= max {
            if admit.refuse {
                return Err(Error::SessionLimit { max: admit.max });
            }
            let idx = m.index.entry(name.to_owned()).or_default();
            idx.sort_by_key(|(score, _)| *score);
            evicted = idx.drain(..=held - max).map(|(_, mem)| mem).collect();
            for mem in &evicted {
                m.sessions.remove(split_member(mem).0);
                m.count(split_member(mem).1, -1);
            }
        }
        m.sessions.insert(
            hash.to_owned(),
            (rec.clone(), now.saturating_add(px(life.ttl))),
        );
        m.refresh.insert(
            rec.newest_refresh().to_owned(),
            (hash.to_owned(), now.saturating_add(px(admit.refresh_ttl))),
        );
        m.index
            .entry(name.to_owned())
            .or_default()
            .push((life.expires, member(hash, kind)));
        if !m.users.iter().any(|u| u == name) {
            m.users.push(name.to_owned());
        }
        m.count(kind, 1);
        Ok(evicted)
    }

    async fn load(&self, _tag: &str, hash: &str) -> Result<Option<Record>> {
        Ok(self.get(hash))
    }

    async fn load_many(&self, _tag: &str, hashes: &[&str]) -> Result<Vec<Option<Record>>> {
        Ok(hashes.iter().map(|h| self.get(h)).collect())
    }

    async fn cas(
        &self,
        _tag: &str,
        hash: &str,
        name: &str,
        expected: u64,
        rec: &Record,
        life: Life,
    ) -> Result<bool> {
        let now = self.now();
        let mut m = self.lock();
        match m.sessions.get_mut(hash) {
            Some((stored, until)) if now < *until && stored.version == expected => {
                *stored = rec.clone();
                *until = now.saturating_add(px(life.ttl));
            }
            _ => return Ok(false),
        }
        let entry = member(hash, rec.device.kind.as_str());
        if let Some(idx) = m.index.get_mut(name) {
            for (score, _) in idx.iter_mut().filter(|(_, mem)| *mem == entry) {
                *score = life.expires;
            }
        }
        Ok(true)
    }

    async fn remove(&self, _tag: &str, hash: &str, name: &str, kind: &str) -> Result<bool> {
        let mut m = self.lock();
        m.sessions.remove(hash);
        let member = member(hash, kind);
        let mut indexed = false;
        if let Some(idx) = m.index.get_mut(name) {
            let before = idx.len();
            idx.retain(|(_, mem)| *mem != member);
            indexed = idx.len() < before;
        }
        if indexed {
            *m.counts.entry("active".into()).or_default() -= 1;
            *m.counts.entry(format!("device:{kind}")).or_default() -= 1;
        }
        Ok(indexed)
    }

    async fn index(
        &self,
        _tag: &str,
        name: &str,
        now: Millis,
        limit: usize,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let mut m = self.lock();
        let gone = m.prune_index(name, now);
        let mut idx: Vec<(Millis, String)> = m
            .index
            .get(name)
            .map(|idx| {
                idx.iter()
                    .filter(|(score, _)| *score >= now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        idx.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        idx.truncate(limit);
        Ok((idx.into_iter().map(|(_, mem)| mem).collect(), gone))
    }

    async fn prune(&self, _tag: &str, name: &str, members: &[String]) -> Result<Vec<String>> {
        let mut m = self.lock();
        let gone: HashSet<&String> = members.iter().collect();
        let mut removed = Vec::new();
        if let Some(idx) = m.index.get_mut(name) {
            idx.retain(|(_, mem)| {
                let keep = !gone.contains(mem);
                if !keep {
                    removed.push(mem.clone());
                }
                keep
            });
        }
        for mem in &removed {
            let kind = split_member(mem).1.to_owned();
            *m.counts.entry("active".into()).or_default() -= 1;
            *m.counts.entry(format!("device:{kind}")).or_default() -= 1;
        }
        Ok(removed)
    }

    async fn rekey(
        &self,
        _tag: &str,
        name: &str,
        (old, new): (&str, &str),
        rec: &Record,
        life: Life,
        rt_ttl: Duration,
    ) -> Result<bool> {
        let now = self.now();
        let mut m = self.lock();
        match m.sessions.get(old) {
            Some((stored, until)) if now < *until && stored.version == rec.version => {}
            _ => return Ok(false),
        }
        m.sessions.remove(old);
        m.sessions.insert(
            new.to_owned(),
            (rec.clone(), now.saturating_add(px(life.ttl))),
        );
        let kind = rec.device.kind.as_str();
        let (old_member, new_member) = (member(old, kind), member(new, kind));
        if let Some(idx) = m.index.get_mut(name) {
            for (score, mem) in idx.iter_mut().filter(|(_, mem)| *mem == old_member) {
                *score = life.expires;
                mem.clone_from(&new_member);
            }
        }
        let until = now.saturating_add(px(rt_ttl));
        for token in rec.refresh_tokens() {
            m.refresh.insert(token.clone(), (new.to_owned(), until));
        }
        Ok(true)
    }

    async fn refresh_lookup(&self, _tag: &str, rt_hash: &str) -> Result<Option<String>> {
        let now = self.now();
        let m = self.lock();
        Ok(m.refresh
            .get(rt_hash)
            .filter(|(_, until)| now < *until)
            .map(|(h, _)| h.clone()))
    }

    async fn refresh_link(
        &self,
        _tag: &str,
        rt_hash: &str,
        hash: &str,
        ttl: Duration,
    ) -> Result<()> {
        let until = self.now().saturating_add(px(ttl));
        self.lock()
            .refresh
            .insert(rt_hash.to_owned(), (hash.to_owned(), until));
        Ok(())
    }

    async fn counts(&self) -> Result<BTreeMap<String, i64>> {
        Ok(self.lock().counts.clone())
    }

    async fn users_page(&self, cursor: u64, count: usize) -> Result<(u64, Vec<String>)> {
        let m = self.lock();
        let start = usize::try_from(cursor)
            .unwrap_or(usize::MAX)
            .min(m.users.len());
        let end = start.saturating_add(count).min(m.users.len());
        let page = m.users[start..end].to_vec();
        let next = if end >= m.users.len() { 0 } else { end as u64 };
        Ok((next, page))
    }

    async fn forget_user(&self, _tag: &str, name: &str) -> Result<()> {
        let mut m = self.lock();
        if m.index.get(name).is_none_or(|i| i.is_empty()) {
            m.index.remove(name);
            m.users.retain(|u| u != name);
        }
        Ok(())
    }

    /// Drops expired sessions and refresh links, as Redis expiry would.
    fn purge(&self) {
        let now = self.now();
        let mut m = self.lock();
        m.sessions.retain(|_, (_, until)| now < *until);
        m.refresh.retain(|_, (_, until)| now < *until);
    }
}
