//! The write path: `set`, `set_with`, `set_many`. A write is checked and encoded before
//! anything changes, goes to L1, then to L2 with its tags and the backplane message in one
//! round trip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::backplane::Op;
use super::builder::ttl_problem;
use super::frame::{self, Kind};
use super::l1::{weight, L1Key};
use super::l2::{Entry, EpochOf, EpochUse, Written, L2};
use super::namespace::{Namespace, Reach, SetOptions};
use super::read::{Span, LOCAL};
use super::stats::add;
use super::writing::Value;
use crate::error::{Error, Result};

/// Tags per entry, and bytes per tag: every read of a tagged entry checks each tag's epoch,
/// and every entry carries its tags in its frame.
const MAX_TAGS: usize = 32;
const MAX_TAG_LEN: usize = 256;

/// A checked, encoded write, ready for both tiers.
struct Prepared<V> {
    key: String,
    value: Arc<V>,
    /// `None` when the L2 stores no values: nothing goes to Redis.
    bytes: Option<Vec<u8>>,
    weight: u32,
    ttl: Duration,
    tags: Option<Arc<[Box<str>]>>,
}

/// The tags of one entry, checked: 1 to 32 of them, each 1 to 256 bytes.
pub(super) fn check_tags(tags: &[String]) -> Result<()> {
    if tags.iter().any(String::is_empty) {
        return Err(Error::invalid(
            "tag",
            "is empty; tags need at least one character",
        ));
    }
    if tags.len() > MAX_TAGS {
        return Err(Error::invalid(
            "tags",
            format!("{} tags on one entry; at most {MAX_TAGS}", tags.len()),
        ));
    }
    if let Some(long) = tags.iter().find(|t| t.len() > MAX_TAG_LEN) {
        return Err(Error::invalid(
            "tag",
            format!("is {} bytes long; at most {MAX_TAG_LEN}", long.len()),
        ));
    }
    Ok(())
}

impl<V> Namespace<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Writes `value` to L1 and Redis (write-through) and evicts other instances' L1 copies.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] or [`Error::Encode`] when the value cannot be stored; nothing is
    /// written then. Redis failures are not errors: see [`Reach`].
    pub async fn set(&self, key: &str, value: V) -> Result<Reach> {
        self.set_with(key, value, SetOptions::default()).await
    }

    /// [`set`](Self::set) with a TTL override and tags.
    ///
    /// # Errors
    ///
    /// As [`set`](Self::set), and [`Error::InvalidInput`] for a TTL under 1 ms, an empty tag, a tag over 256 bytes or more than 32 tags.
    pub async fn set_with(&self, key: &str, value: V, opts: SetOptions) -> Result<Reach> {
        let batch = self.prepare(key, value, &opts)?;
        self.write(vec![batch]).await
    }

    /// Writes many entries in one Redis round trip.
    ///
    /// # Errors
    ///
    /// As [`set`](Self::set); when any value cannot be stored, nothing is written.
    pub async fn set_many<K: AsRef<str>>(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Reach> {
        let opts = SetOptions::default();
        let batch = entries
            .into_iter()
            .map(|(k, v)| self.prepare(k.as_ref(), v, &opts))
            .collect::<Result<Vec<_>>>()?;
        self.write(batch).await
    }

    fn prepare(&self, key: &str, value: V, opts: &SetOptions) -> Result<Prepared<V>> {
        let ttl = opts.ttl.unwrap_or(self.ns.ttl);
        if let Some(problem) = ttl_problem(ttl) {
            return Err(Error::invalid("ttl", problem));
        }
        check_tags(&opts.tags)?;
        let (bytes, weight) = self.encode(key, &value)?;
        let tags: Option<Arc<[Box<str>]>> =
            (!opts.tags.is_empty()).then(|| opts.tags.iter().map(|t| t.as_str().into()).collect());
        Ok(Prepared {
            key: key.to_owned(),
            value: Arc::new(value),
            bytes,
            weight,
            ttl: self.jittered(ttl),
            tags,
        })
    }

    /// The stored bytes of `value` at `key` and its L1 weight: sealed under the namespace's
    /// keys when it is encrypted, bound to the entry's Redis key. With no L2 that stores
    /// values, the value is only measured (no buffer, no compression) for its weight and size
    /// limit.
    pub(super) fn encode(&self, key: &str, value: &V) -> Result<(Option<Vec<u8>>, u32)> {
        if !self.stores_values() {
            let len = self.core.codec.measure(value)?;
            return Ok((None, weight(len)));
        }
        let started = Instant::now();
        let (mut bytes, info) = self.core.codec.encode_with_info(value)?;
        if let Some(keys) = &self.ns.keyring {
            bytes = keys.seal(&bytes, self.ns.keyspace.entry(key).as_bytes())?;
        }
        let tally = self.ns.counters.here();
        add(&tally.encode_nanos, started.elapsed().as_nanos() as u64);
        add(&tally.encoded_bytes, info.body_len as u64);
        add(&tally.stored_bytes, bytes.len() as u64);
        Ok((Some(bytes), weight(info.body_len)))
    }

    /// `ttl` shortened by the namespace's jitter.
    pub(super) fn jittered(&self, ttl: Duration) -> Duration {
        if self.ns.jitter == 0.0 {
            return ttl;
        }
        let cut = ttl.mul_f64(self.ns.jitter * fastrand::f64());
        ttl.saturating_sub(cut).max(Duration::from_millis(1))
    }

    /// L1 first, entry by entry (each key marked changed, so no read or load in flight keeps
    /// an older value), then L2 and the backplane in one round trip. Until Redis answers, the
    /// values are also served from the writes in flight ([`writing`](super::writing)); what
    /// Redis did not take is owed ([`owed`](super::owed)).
    async fn write(&self, mut batch: Vec<Prepared<V>>) -> Result<Reach> {
        let mut in_flight = self
            .stores_values()
            .then(|| self.ns.writing.begin(&self.ns.owed));
        let mut keys = Vec::with_capacity(batch.len());
        for p in &mut batch {
            self.ns.fresh.bump_key(&p.key);
            let value = self.l1_value(
                p.value.clone(),
                p.weight,
                Span::Fresh(p.ttl),
                p.tags.clone(),
                LOCAL,
            );
            // Under the key's put lock, so the writes in flight and L1 agree on which of two
            // writes of the key came later.
            let _put = self.ns.fresh.put_lock(&p.key);
            if let Some(batch) = in_flight.as_mut() {
                batch.add(&p.key, p.value.clone() as Value, p.tags.clone());
            }
            if self.l1_on {
                self.l1.insert(L1Key::new(self.ns.id, &p.key), value);
            }
            drop(_put);
            // Moved, not copied: from here on the op holds the keys.
            keys.push(std::mem::take(&mut p.key));
        }
        let op = Op::Keys {
            ns: self.ns.name.clone(),
            keys,
        };
        let Some(in_flight) = in_flight else {
            return Ok(self.announce(&op).await);
        };
        let sent = self.write_l2(&op, &batch).await;
        if sent.is_ok() {
            in_flight.answered();
        } else {
            // Dropped unanswered, the batch owes its keys.
            drop(in_flight);
        }
        Ok(self.reach(sent))
    }

    /// Writes the batch framed under the epochs this instance knows (made first where it knows
    /// none: the only round trip a write may take to an epoch's shard). An epoch that changed
    /// without this instance hearing yet makes the entries unreadable: a miss, as the change
    /// that moved it allows, and the next read that meets the other epoch learns it.
    async fn write_l2(&self, op: &Op, batch: &[Prepared<V>]) -> Result<()> {
        let l2 = self.l2()?;
        let (space, epochs) = (&self.ns.keyspace, &self.ns.epochs);
        let mut uses = vec![EpochUse {
            of: EpochOf::Namespace,
            epoch: 0,
            ttl: Duration::ZERO,
        }];
        // As long as Redis keeps the entries: past their expiry by the fail-safe grace.
        let grace = self.ns.resilience.grace();
        for p in batch {
            let ttl = p.ttl.saturating_add(grace);
            for tag in p.tags.as_deref().unwrap_or_default() {
                match uses.iter_mut().find(|u| u.of == EpochOf::Tag(tag)) {
                    Some(u) => u.ttl = u.ttl.max(ttl),
                    None => uses.push(EpochUse {
                        of: EpochOf::Tag(tag),
                        epoch: 0,
                        ttl,
                    }),
                }
            }
        }
        let mut unknown = Vec::new();
        for (i, used) in uses.iter_mut().enumerate() {
            match epochs.get(used.of) {
                Some(epoch) => used.epoch = epoch,
                None => unknown.push(i),
            }
        }
        if !unknown.is_empty() {
            // Tags keep their epochs alive as long as their longest-lived entry.
            let wanted: Vec<EpochUse<'_>> = unknown.iter().map(|&i| uses[i]).collect();
            let asked = epochs.asking();
            let made = l2.make_epochs(space, &wanted).await?;
            for (&i, epoch) in unknown.iter().zip(made) {
                uses[i].epoch = epoch;
                epochs.learn(asked, uses[i].of, Some(epoch));
            }
        }
        // Framed twice at most: a tag epoch found gone (evicted, or dropped by an invalidation
        // not heard of yet) is made anew by the write itself, which then frames again under it.
        for _ in 0..2 {
            let written = self.write_framed(l2, op, batch, &uses).await?;
            let asked = epochs.asking();
            let mut current = true;
            let tag_uses = uses.iter_mut().filter(|u| matches!(u.of, EpochOf::Tag(_)));
            for (used, now) in tag_uses.zip(written.epochs) {
                if used.epoch != now {
                    used.epoch = now;
                    epochs.learn(asked, used.of, Some(now));
                    current = false;
                }
            }
            if current {
                break;
            }
        }
        Ok(())
    }

    /// One write of the batch, framed under `uses`.
    async fn write_framed(
        &self,
        l2: &dyn L2,
        op: &Op,
        batch: &[Prepared<V>],
        uses: &[EpochUse<'_>],
    ) -> Result<Written> {
        let epoch_of = |of: EpochOf<'_>| uses.iter().find(|u| u.of == of).map_or(0, |u| u.epoch);
        let grace = self.ns.resilience.grace();
        let frames: Vec<Vec<u8>> = batch
            .iter()
            .map(|p| {
                let tags: Vec<(&str, u64)> = p
                    .tags
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .map(|t| (&**t, epoch_of(EpochOf::Tag(t))))
                    .collect();
                let body = p.bytes.as_deref().unwrap_or_default();
                frame::encode(
                    Kind::Value,
                    epoch_of(EpochOf::Namespace),
                    &tags,
                    grace,
                    body,
                )
            })
            .collect();
        let entries: Vec<Entry<'_>> = op
            .keys()
            .iter()
            .zip(batch)
            .zip(&frames)
            .map(|((key, p), frame)| Entry {
                key,
                frame,
                // Kept the fail-safe grace past its expiry, which the frame records.
                ttl: p.ttl.saturating_add(grace),
                expect: None,
                or_absent: false,
            })
            .collect();
        l2.write(&self.ns.keyspace, &entries, uses, Some(op)).await
    }
}
