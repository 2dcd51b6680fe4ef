//! A session as stored, and the rules every store applies to it: expiry, sliding touch,
//! refresh rotation with reuse detection. Both stores call these, so they cannot disagree.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::builder::SessionConfig;
use super::store::Life;
use super::types::{Device, Session};
use crate::codec::Codec;
use crate::error::{Error, Result};

/// Milliseconds since the Unix epoch, on the session clock (`SharedClock::now_ms`).
pub(crate) type Millis = u64;

pub(crate) fn to_time(ms: Millis) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn ms(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// SHA-256 of a secret, hex: what the stores keep instead of the secret.
pub(crate) fn digest(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// 256 bits from the OS random source, hex.
pub(crate) fn random_hex() -> Result<String> {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf)
        .map_err(|e| Error::Encode(format!("OS random source failed: {e}")))?;
    Ok(hex(&buf))
}

/// A secret of the form `{tag}.{random}`, `tag` being the user's routing tag
/// ([`UserNames`](super::names::UserNames)).
pub(crate) fn new_secret(tag: &str) -> Result<String> {
    Ok(format!("{tag}.{}", random_hex()?))
}

/// The tag of a presented secret, if it has our shape.
pub(crate) fn tag_of(secret: &str) -> Option<&str> {
    let (tag, rest) = secret.split_once('.')?;
    (tag.len() == 8
        && rest.len() == 64
        && tag.bytes().all(|b| b.is_ascii_hexdigit())
        && rest.bytes().all(|b| b.is_ascii_hexdigit()))
    .then_some(tag)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) user_id: String,
    pub(crate) device: Device,
    pub(crate) user_agent: String,
    pub(crate) ip: String,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) access_hash: Option<String>,
    pub(crate) created: Millis,
    pub(crate) seen: Millis,
    /// The absolute end of the session, whatever its use.
    pub(crate) deadline: Millis,
    /// The refresh tokens that rotate (hashes), oldest first: one, or a few when concurrent
    /// refreshes of one token branched (two tabs at once), at most [`MAX_LIVE_TOKENS`].
    pub(crate) refresh: Vec<String>,
    /// Tokens retired within `refresh_grace` (hash, until): still rotate, never count as
    /// reuse. At most [`MAX_LIVE_TOKENS`].
    pub(crate) grace: Vec<(String, Millis)>,
    /// Data the service keeps with the session ([`Sessions::insert`]), bincode each.
    pub(crate) data: BTreeMap<String, Vec<u8>>,
    /// Bumped by every write, for compare-and-set.
    pub(crate) version: u64,
}

/// What presenting a refresh token does.
/// The most refresh tokens one session keeps live, and the most it keeps in grace: more
/// concurrent branches than this and the oldest is dropped (presenting it then counts as
/// reuse), so a record stays small whatever a client does.
pub(crate) const MAX_LIVE_TOKENS: usize = 4;

/// Appends `item`, dropping the oldest entries past [`MAX_LIVE_TOKENS`].
fn push_bounded<T>(list: &mut Vec<T>, item: T) {
    list.push(item);
    if list.len() > MAX_LIVE_TOKENS {
        list.drain(..list.len() - MAX_LIVE_TOKENS);
    }
}

/// The layout of a stored record: the first byte of its encoding. Layout 1 (no mark) began
/// with the user id's length, a bincode varint, whose first byte is never 0xFF; layout 2 adds
/// several live refresh tokens, a grace list and session data.
pub(crate) const LAYOUT_2: u8 = 0xFF;

/// Encodes a record in the current layout.
pub(crate) fn encode(codec: &Codec, rec: &Record) -> Result<Vec<u8>> {
    codec.encode(&(LAYOUT_2, rec))
}

/// Decodes a record of any layout. Layout 2 carries its mark; anything else is read as layout 1
/// (the mark never begins a layout-1 record, so one never passes for layout 2).
pub(crate) fn decode(codec: &Codec, bytes: &[u8]) -> Result<Record> {
    match codec.decode::<(u8, Record)>(bytes) {
        Ok((LAYOUT_2, rec)) => Ok(rec),
        _ => codec.decode::<RecordV1>(bytes).map(Record::from),
    }
}

/// A record as layout 1 stored it, read so sessions survive the upgrade.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct RecordV1 {
    user_id: String,
    device: Device,
    user_agent: String,
    ip: String,
    metadata: BTreeMap<String, String>,
    access_hash: Option<String>,
    created: Millis,
    seen: Millis,
    deadline: Millis,
    refresh: String,
    grace: Option<(String, Millis)>,
    version: u64,
}

impl From<RecordV1> for Record {
    fn from(v1: RecordV1) -> Record {
        Record {
            user_id: v1.user_id,
            device: v1.device,
            user_agent: v1.user_agent,
            ip: v1.ip,
            metadata: v1.metadata,
            access_hash: v1.access_hash,
            created: v1.created,
            seen: v1.seen,
            deadline: v1.deadline,
            refresh: vec![v1.refresh],
            grace: v1.grace.into_iter().collect(),
            data: BTreeMap::new(),
            version: v1.version,
        }
    }
}

pub(crate) enum Rotation {
    /// Accepted: the record now holds this new token hash.
    Rotated,
    /// A retired token: the whole session must be revoked.
    Reused,
}

impl Record {
    /// When the session ends if unused from `now`: the idle window or the deadline.
    pub(crate) fn expires(&self, cfg: &SessionConfig) -> Millis {
        self.seen.saturating_add(ms(cfg.idle)).min(self.deadline)
    }

    pub(crate) fn is_live(&self, now: Millis, cfg: &SessionConfig) -> bool {
        now < self.expires(cfg)
    }

    /// Time to live in the store from `now`.
    /// How long the record lives from `now`.
    pub(crate) fn life(&self, now: Millis, cfg: &SessionConfig) -> Life {
        let expires = self.expires(cfg);
        Life {
            ttl: Duration::from_millis(expires.saturating_sub(now).max(1)),
            expires,
        }
    }

    /// Whether a use at `now` should move `seen` forward. Touches are throttled to one per
    /// `touch_interval`, so validating is one read, not a read and a write, on the hot path.
    pub(crate) fn wants_touch(&self, now: Millis, cfg: &SessionConfig) -> bool {
        now.saturating_sub(self.seen) >= ms(cfg.touch_interval)
    }

    pub(crate) fn touch(&mut self, now: Millis) {
        self.seen = now;
        self.version += 1;
    }

    /// Applies a presented refresh token (by hash). Constant-time comparisons: the hashes are
    /// of secrets.
    /// Every refresh token (hash) that still leads to this session: the live ones and those in
    /// grace.
    pub(crate) fn refresh_tokens(&self) -> impl Iterator<Item = &String> {
        self.refresh.iter().chain(self.grace.iter().map(|(h, _)| h))
    }

    /// The newest refresh token's hash: the one a new session's token link names.
    pub(crate) fn newest_refresh(&self) -> &str {
        self.refresh.last().map_or("", String::as_str)
    }

    /// Rotates the presented token (its hash) into `new_hash`. A live token is retired into
    /// the grace list; a token still in grace rotates too, so every one of several concurrent
    /// refreshes of one token yields a working token, and none of them later counts as reuse.
    /// Any other token of this session is a retired one presented again: reuse.
    pub(crate) fn rotate(
        &mut self,
        presented: &str,
        new_hash: String,
        now: Millis,
        cfg: &SessionConfig,
    ) -> Rotation {
        let matches = |h: &str| bool::from(h.as_bytes().ct_eq(presented.as_bytes()));
        self.grace.retain(|(_, until)| now < *until);
        // Every entry is compared, so the time taken does not tell which list matched.
        let live = self.refresh.iter().fold(
            None,
            |found, h| {
                if matches(h) {
                    Some(h.clone())
                } else {
                    found
                }
            },
        );
        let in_grace = self
            .grace
            .iter()
            .fold(false, |found, (h, _)| found | matches(h));
        match live {
            Some(old) => {
                self.refresh.retain(|h| *h != old);
                push_bounded(
                    &mut self.grace,
                    (old, now.saturating_add(ms(cfg.refresh_grace))),
                );
            }
            None if in_grace => {}
            None => return Rotation::Reused,
        }
        push_bounded(&mut self.refresh, new_hash);
        self.seen = now;
        self.version += 1;
        Rotation::Rotated
    }

    pub(crate) fn to_session(&self, handle: &str, cfg: &SessionConfig) -> Session {
        Session {
            handle: handle.to_owned(),
            user_id: self.user_id.clone(),
            device: self.device.clone(),
            user_agent: self.user_agent.clone(),
            ip: self.ip.clone(),
            metadata: self.metadata.clone(),
            created_at: to_time(self.created),
            last_seen: to_time(self.seen),
            expires_at: to_time(self.expires(cfg)),
        }
    }

    /// Whether `access_token` is the one bound at creation (constant-time).
    pub(crate) fn access_matches(&self, access_token: &str) -> bool {
        self.access_hash
            .as_deref()
            .is_some_and(|h| bool::from(h.as_bytes().ct_eq(digest(access_token).as_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SessionConfig {
        SessionConfig::default()
    }

    fn record() -> Record {
        Record {
            user_id: "u".into(),
            device: Device::default(),
            user_agent: "agent".into(),
            ip: "192.0.2.1".into(),
            metadata: BTreeMap::new(),
            access_hash: None,
            created: 1,
            seen: 1,
            deadline: u64::MAX,
            refresh: vec!["t0".into()],
            grace: Vec::new(),
            data: BTreeMap::new(),
            version: 0,
        }
    }

    #[test]
    fn layout_1_records_still_read_and_layout_2_round_trips() {
        let codec = Codec::default();
        let v1 = RecordV1 {
            user_id: "ab".into(),
            device: Device::default(),
            user_agent: "agent".into(),
            ip: "192.0.2.1".into(),
            metadata: BTreeMap::new(),
            access_hash: Some("h".into()),
            created: 5,
            seen: 6,
            deadline: 7,
            refresh: "t".into(),
            grace: Some(("g".into(), 9)),
            version: 3,
        };
        let read = decode(&codec, &codec.encode(&v1).unwrap()).unwrap();
        assert_eq!(read.user_id, "ab");
        assert_eq!(
            (read.refresh, read.grace),
            (vec!["t".to_owned()], vec![("g".to_owned(), 9)])
        );
        assert_eq!(read.version, 3);
        let mut rec = record();
        rec.data.insert("k".into(), vec![1, 2]);
        assert_eq!(decode(&codec, &encode(&codec, &rec).unwrap()).unwrap(), rec);
    }

    /// Random histories of tabs refreshing, each with the token it last got, on a clock that
    /// jumps past the grace now and then, with races where two tabs present one token at once
    /// (a shared cookie: the loser's retry rotates the token in grace). Every refresh of a held
    /// token succeeds, however long after; a token some tab moved on from is reuse once its
    /// grace is over. Branches stay within [`MAX_LIVE_TOKENS`].
    #[test]
    fn concurrent_refreshes_each_yield_a_working_token_and_none_is_reuse() {
        let cfg = cfg();
        let grace = ms(cfg.refresh_grace);
        for seed in 0..500 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut rec = record();
            let mut held = vec!["t0".to_owned()];
            let mut now = 10;
            let mut next = 0;
            let mut rotate = |rec: &mut Record, token: &str, now: Millis| {
                next += 1;
                let new = format!("t{next}");
                let r = rec.rotate(token, new.clone(), now, &cfg);
                assert!(
                    matches!(r, Rotation::Rotated),
                    "seed {seed}: {token} at {now}: {rec:?}"
                );
                new
            };
            for _ in 0..60 {
                let tab = rng.usize(0..held.len());
                if rng.u8(0..3) == 0 && rec.refresh.len() < MAX_LIVE_TOKENS {
                    // A race: another tab presents the same token in the same instant.
                    let shared = held[tab].clone();
                    held[tab] = rotate(&mut rec, &shared, now);
                    held.push(rotate(&mut rec, &shared, now));
                } else {
                    held[tab] = rotate(&mut rec, &held[tab].clone(), now);
                }
                now += rng.u64(0..grace * 3);
                // The losing branch of a race may be closed (the tab is gone): its token stays
                // live, so the number of live branches only grows through races.
                if held.len() > 1 && rng.u8(0..4) == 0 {
                    held.swap_remove(rng.usize(0..held.len()));
                }
            }
            assert!(rec.refresh.len() <= MAX_LIVE_TOKENS && rec.grace.len() <= MAX_LIVE_TOKENS);
            // Once its grace is over, a token the session moved on from is reuse.
            let late = rec.rotate("t0", "x".into(), now + grace + 1, &cfg);
            assert!(matches!(late, Rotation::Reused), "seed {seed}");
        }
    }

    #[test]
    fn secrets_have_a_tag_and_256_random_bits() {
        let tag = "0123abcd".to_owned();
        let a = new_secret(&tag).unwrap();
        let b = new_secret(&tag).unwrap();
        assert_ne!(a, b);
        assert_eq!(tag_of(&a), Some(tag.as_str()));
        assert_eq!(a.len(), 8 + 1 + 64);
        assert_eq!(tag_of("nope"), None);
        assert_eq!(tag_of("zzzzzzzz.00"), None);
        assert_eq!(digest("x").len(), 64);
        // The well-known SHA-256 of "abc".
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(digest(&a), a);
    }
}
