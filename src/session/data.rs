//! Session data: values a service keeps with a session (a cart, a CSRF token, a flash message),
//! read and written by key, as tower-sessions users expect of `insert` and `get`. Stored in the
//! session's record (sealed with it under encryption), so they end with the session.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::record::{digest, tag_of, Record};
use super::sessions::Sessions;
use super::store::Read;
use crate::error::{Error, Result};

/// The most bytes of data one session holds (keys and encoded values together): a record is
/// read on every validation.
pub const MAX_SESSION_DATA: usize = 16 * 1024;

const CAS_ATTEMPTS: usize = 8;

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 128 {
        return Err(Error::invalid("key", "must be 1 to 128 bytes"));
    }
    Ok(())
}

fn not_live() -> Error {
    Error::invalid("session_id", "is not a live session")
}

impl Sessions {
    /// Stores `value` under `key` in the session's data, replacing what was there.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> tierkit::Result<()> {
    /// use tierkit::session::NewSession;
    ///
    /// let kit = tierkit::Tierkit::embedded();
    /// let sessions = kit.sessions().build()?;
    /// let login = sessions.create(NewSession::new("user-7")).await?;
    /// let sid = login.session_id.expose();
    /// sessions.insert(sid, "cart", &vec![3_u32, 5]).await?;
    /// assert_eq!(sessions.get::<Vec<u32>>(sid, "cart").await?, Some(vec![3, 5]));
    /// assert_eq!(sessions.remove_value(sid, "cart").await?, true);
    /// assert_eq!(sessions.get::<Vec<u32>>(sid, "cart").await?, None);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a key outside 1-128 bytes or a session that is not live;
    /// [`Error::TooLarge`] when the session's data would pass [`MAX_SESSION_DATA`];
    /// [`Error::Encode`] for a value serde cannot encode; the Redis error when Redis cannot
    /// take it.
    pub async fn insert<T: Serialize + ?Sized>(
        &self,
        session_id: &str,
        key: &str,
        value: &T,
    ) -> Result<()> {
        check_key(key)?;
        let bytes = bincode::serde::encode_to_vec(value, bincode::config::standard())
            .map_err(|e| Error::Encode(e.to_string()))?;
        self.update_data(session_id, |rec| {
            let size: usize = rec
                .data
                .iter()
                .filter(|(k, _)| k.as_str() != key)
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
                + key.len()
                + bytes.len();
            if size > MAX_SESSION_DATA {
                return Err(Error::TooLarge {
                    size,
                    max: MAX_SESSION_DATA,
                });
            }
            rec.data.insert(key.to_owned(), bytes.clone());
            Ok(true)
        })
        .await
        .map(drop)
    }

    /// The value under `key` in the session's data; `None` when there is none. While Redis is
    /// down it reads the local copy (as [`validate`](Self::validate) does).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad key or a session that is not live;
    /// [`Error::Decode`] when the stored value is not a `T`; the Redis error when neither
    /// Redis nor a local copy answers.
    pub async fn get<T: DeserializeOwned>(&self, session_id: &str, key: &str) -> Result<Option<T>> {
        check_key(key)?;
        let rec = self.live_record(session_id).await?;
        let Some(bytes) = rec.data.get(key) else {
            return Ok(None);
        };
        bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map(|(value, _)| Some(value))
            .map_err(|e| Error::Decode(crate::error::DecodeError::Corrupt(e.to_string())))
    }

    /// Removes the value under `key`; returns whether there was one.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub async fn remove_value(&self, session_id: &str, key: &str) -> Result<bool> {
        check_key(key)?;
        self.update_data(session_id, |rec| Ok(rec.data.remove(key).is_some()))
            .await
    }

    /// The record of a live session this instance honours.
    async fn live_record(&self, session_id: &str) -> Result<Record> {
        let inner = &self.0;
        let tag = tag_of(session_id).ok_or_else(not_live)?;
        let hash = digest(session_id);
        if inner.revoked.contains(&hash) {
            return Err(not_live());
        }
        let rec = match inner.store.read(tag, &hash).await? {
            Read::Stored(Some(rec)) | Read::Copy(rec) => rec,
            Read::Stored(None) => return Err(not_live()),
        };
        if !rec.is_live(inner.clock.now_ms(), &inner.cfg) || !inner.names.honours(tag, &rec.user_id)
        {
            return Err(not_live());
        }
        Ok(rec)
    }

    /// Applies `change` to the live session's record and writes it back if it says it changed,
    /// retrying when another write came first.
    async fn update_data(
        &self,
        session_id: &str,
        change: impl Fn(&mut Record) -> Result<bool>,
    ) -> Result<bool> {
        let inner = &self.0;
        let tag = tag_of(session_id).ok_or_else(not_live)?;
        let hash = digest(session_id);
        for _ in 0..CAS_ATTEMPTS {
            let Some((mut rec, now)) = self.honoured(tag, &hash).await? else {
                return Err(not_live());
            };
            let expected = rec.version;
            if !change(&mut rec)? {
                return Ok(false);
            }
            rec.version += 1;
            let life = rec.life(now, &inner.cfg);
            let name = inner.names.index_name(tag, &rec.user_id);
            if inner
                .store
                .cas(tag, &hash, &name, expected, &rec, life)
                .await?
            {
                inner.store.drop_copy(&hash);
                return Ok(true);
            }
        }
        Err(Error::Conflict(format!(
            "the session changed under {CAS_ATTEMPTS} writes of its data in a row"
        )))
    }
}
