//! A session as stored, and the rules every store applies to it: expiry, sliding touch,
//! refresh rotation with reuse detection. Both stores call these, so they cannot disagree.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::builder::SessionConfig;
use super::types::{Device, Session};
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
    /// Hash of the current refresh token.
    pub(crate) refresh: String,
    /// The immediately previous refresh token's hash, accepted until its deadline (absorbs a
    /// concurrent refresh). At most one: any older token is retired.
    pub(crate) grace: Option<(String, Millis)>,
    /// Bumped by every write, for compare-and-set.
    pub(crate) version: u64,
}

/// What presenting a refresh token does.
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
    pub(crate) fn ttl(&self, now: Millis, cfg: &SessionConfig) -> Duration {
        Duration::from_millis(self.expires(cfg).saturating_sub(now).max(1))
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
    pub(crate) fn rotate(
        &mut self,
        presented: &str,
        new_hash: String,
        now: Millis,
        cfg: &SessionConfig,
    ) -> Rotation {
        let matches = |h: &str| bool::from(h.as_bytes().ct_eq(presented.as_bytes()));
        let current = matches(&self.refresh);
        let in_grace = self
            .grace
            .as_ref()
            .is_some_and(|(h, until)| matches(h) && now < *until);
        if !current && !in_grace {
            return Rotation::Reused;
        }
        let old = std::mem::replace(&mut self.refresh, new_hash);
        self.grace = Some((old, now.saturating_add(ms(cfg.refresh_grace))));
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
