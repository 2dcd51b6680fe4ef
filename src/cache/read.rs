//! The read path: an L1 hit (the hot path), then L2, and keeping what L2 answered in L1
//! unless a change raced the read.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::l1::{weight, KeyRef, L1Key, L1Value};
use super::l2::{count_failure, Stored};
use super::namespace::{Hit, Namespace, Source};
use super::stamp::Stamp;
use super::stats::bump;

/// What an L2 read found.
pub(super) enum L2Read<V> {
    /// The value, its L1 weight, and how long an L1 copy of it may live: the namespace's L1
    /// TTL, cut to what the L2 entry has left, so no copy outlives its entry.
    Hit(V, u32, Duration),
    Absent,
    /// Bytes that do not decode as `V`, or a key of another type: a miss that the next write
    /// must overwrite.
    Undecodable,
    /// Redis failed, timed out or is down.
    Unreachable,
}

impl<V> Namespace<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// An L1 hit, counted. The hot path: one lookup, one `Arc` clone, one relaxed add.
    pub(super) async fn l1_hit(&self, key: &str) -> Option<Hit<V>> {
        let key_ref = KeyRef {
            ns: self.ns.id,
            key,
        };
        let found = self.l1.get(&key_ref).await?;
        if found.generation != self.ns.fresh.generation() {
            // Made before the L1 was dropped: a miss, and out of the way of the next fill.
            self.l1.invalidate(&key_ref).await;
            return None;
        }
        // Namespace ids are bound to one type at declaration, so this cannot fail; if it did,
        // a miss is the safe answer.
        let value = Arc::downcast::<V>(found.value).ok()?;
        bump(&self.ns.counters.l1_hits);
        Some(Hit {
            value,
            source: Source::L1,
        })
    }

    /// Reads `key`: L1, then Redis. `None` when neither has it. Never returns a Redis error:
    /// when Redis is down or fails, the read is answered from L1 alone.
    pub async fn get(&self, key: &str) -> Option<Hit<V>> {
        if let Some(hit) = self.l1_hit(key).await {
            return Some(hit);
        }
        let stamp = self.ns.fresh.stamp(key);
        match self.l2_read(key).await {
            L2Read::Hit(value, weight, ttl) => {
                let value = Arc::new(value);
                self.fill_l1(key, value.clone(), weight, ttl, stamp).await;
                Some(Hit {
                    value,
                    source: Source::L2,
                })
            }
            _ => {
                bump(&self.ns.counters.misses);
                None
            }
        }
    }

    /// Reads `key` from L2, counting hits, errors and decode failures. A miss is counted by
    /// the caller.
    pub(super) async fn l2_read(&self, key: &str) -> L2Read<V> {
        let found = async { self.l2()?.get(&self.ns.keyspace, key).await }.await;
        match found {
            Ok(stored) => self.decode_stored(stored),
            Err(e) => {
                count_failure(&self.ns.counters, &e);
                L2Read::Unreachable
            }
        }
    }

    /// Decodes what L2 holds at a key, counting hits and decode failures.
    fn decode_stored(&self, stored: Stored) -> L2Read<V> {
        let counters = &self.ns.counters;
        let (bytes, ttl) = match stored {
            Stored::Absent => return L2Read::Absent,
            Stored::Foreign => {
                bump(&counters.decode_failures);
                tracing::debug!(namespace = %self.ns.name,
                    "tierkit: a key of another type holds this entry's place; treating as a miss");
                return L2Read::Undecodable;
            }
            Stored::Value { bytes, ttl } => (bytes, ttl),
        };
        match self.core.codec.decode::<V>(&bytes) {
            Ok(value) => {
                bump(&counters.l2_hits);
                let body_len = crate::codec::Codec::body_len(&bytes).unwrap_or(bytes.len());
                let l1_ttl = ttl.map_or(self.ns.l1_ttl, |left| left.min(self.ns.l1_ttl));
                L2Read::Hit(value, weight(body_len), l1_ttl)
            }
            Err(e) => {
                bump(&counters.decode_failures);
                tracing::debug!(namespace = %self.ns.name, error = %e,
                    "tierkit: stored value does not decode; treating as a miss");
                L2Read::Undecodable
            }
        }
    }

    /// Keeps a value read from L2 in L1 for `ttl` (see [`L2Read::Hit`]), unless the key
    /// changed since `stamp` was taken (before the read). Checked after the insert: a change
    /// that lands in between is then either seen here or overwrites this value itself.
    pub(super) async fn fill_l1(
        &self,
        key: &str,
        value: Arc<V>,
        weight: u32,
        ttl: Duration,
        stamp: Stamp,
    ) {
        let value = self.l1_value(value, weight, ttl, None);
        self.l1.insert(L1Key::new(self.ns.id, key), value).await;
        if self.ns.fresh.changed_since(key, stamp) {
            self.drop_l1(key).await;
        }
    }

    /// Takes `key`'s entry, whatever it holds, out of this namespace's L1.
    pub(super) async fn drop_l1(&self, key: &str) {
        self.l1
            .invalidate(&KeyRef {
                ns: self.ns.id,
                key,
            })
            .await;
    }

    /// An L1 entry for `value`, living `ttl` but never longer than the namespace's L1 TTL.
    pub(super) fn l1_value(
        &self,
        value: Arc<V>,
        weight: u32,
        ttl: Duration,
        tags: Option<Arc<[Box<str>]>>,
    ) -> L1Value {
        L1Value {
            value: value as Arc<dyn Any + Send + Sync>,
            generation: self.ns.fresh.generation(),
            weight,
            ttl: ttl.min(self.ns.l1_ttl),
            tags,
        }
    }

    /// Reads many keys: L1 first, then every L1 miss from Redis in one round trip. The result
    /// lines up with `keys`.
    pub async fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Vec<Option<Hit<V>>> {
        let counters = &self.ns.counters;
        let mut out = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let hit = self.l1_hit(key.as_ref()).await;
            if hit.is_none() {
                missing.push(i);
            }
            out.push(hit);
        }
        if missing.is_empty() {
            return out;
        }
        let wanted: Vec<&str> = missing.iter().map(|&i| keys[i].as_ref()).collect();
        let stamps: Vec<Stamp> = wanted.iter().map(|k| self.ns.fresh.stamp(k)).collect();
        let fetched = async { self.l2()?.get_many(&self.ns.keyspace, &wanted).await }.await;
        let fetched = fetched.unwrap_or_else(|e| {
            count_failure(counters, &e);
            Vec::new()
        });
        // A short answer leaves the rest as misses.
        let mut fetched = fetched.into_iter();
        for ((i, key), stamp) in missing.into_iter().zip(wanted).zip(stamps) {
            let read = self.decode_stored(fetched.next().unwrap_or(Stored::Absent));
            match read {
                L2Read::Hit(value, weight, ttl) => {
                    let value = Arc::new(value);
                    self.fill_l1(key, value.clone(), weight, ttl, stamp).await;
                    out[i] = Some(Hit {
                        value,
                        source: Source::L2,
                    });
                }
                _ => bump(&counters.misses),
            }
        }
        out
    }
}
