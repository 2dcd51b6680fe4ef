//! Encryption of stored envelopes: XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`) under
//! a keyring that seals with its current key and opens with any key it lists.
//!
//! A sealed envelope is a codec envelope of its own, flagged as sealed, that carries the plain
//! envelope encrypted:
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 2 | magic `b"TK"` |
//! | 2 | 1 | format version, `1` |
//! | 3 | 1 | flags: [`SEALED`] |
//! | 4 | 1 | id of the key that sealed it |
//! | 5 | 24 | nonce, random per seal |
//! | 29 | rest | the plain envelope, encrypted, then the 16-byte tag |
//!
//! The associated data is the 5-byte header followed by the caller's context (the cache uses
//! the entry's full Redis key), so bytes copied to another key, or given another key id, do
//! not open. 45 bytes over the plain envelope; a random 24-byte nonce never repeats in
//! practice, however many values one key seals.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use super::{MAGIC, VERSION};
use crate::error::{DecodeError, Error, Result};

/// The flags byte of a sealed envelope.
pub(crate) const SEALED: u8 = 0b10;
const HEADER_LEN: usize = 5;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes of key material per key.
pub const KEY_LEN: usize = 32;

/// The keys that encrypt stored values: the current one seals, every listed one opens, so
/// keys rotate without a flag day (add the new key as current, keep the old one listed until
/// what it sealed has expired, then drop it).
///
/// Key material is held only inside the cipher, which wipes it when dropped; `Debug` shows the
/// key ids and nothing else.
///
/// # Examples
///
/// ```
/// use tierkit::codec::Keyring;
///
/// // "id:base64 key" pairs, the current key first (what TIERKIT_ENCRYPTION_KEYS holds).
/// let keys = Keyring::parse(
///     "2:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=,1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
/// )?;
/// assert_eq!(keys.current_id(), 2);
/// assert_eq!(format!("{keys:?}"), "Keyring { current: 2, ids: [2, 1] }");
/// # Ok::<(), tierkit::Error>(())
/// ```
#[derive(Clone)]
pub struct Keyring {
    keys: Arc<[(u8, XChaCha20Poly1305)]>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<u8> = self.keys.iter().map(|(id, _)| *id).collect();
        f.debug_struct("Keyring")
            .field("current", &self.current_id())
            .field("ids", &ids)
            .finish()
    }
}

impl Keyring {
    /// A keyring of `keys`, `(id, 32 bytes)`, the current key first.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for no key, a key that is not 32 bytes long, or an id listed twice.
    ///
    /// # Examples
    ///
    /// ```
    /// use tierkit::codec::Keyring;
    ///
    /// let keys = Keyring::new([(1, [7u8; 32].as_slice())])?;
    /// assert_eq!(keys.current_id(), 1);
    /// assert!(Keyring::new([(1, [7u8; 16].as_slice())]).is_err());
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn new<'a>(keys: impl IntoIterator<Item = (u8, &'a [u8])>) -> Result<Keyring> {
        let mut ring: Vec<(u8, XChaCha20Poly1305)> = Vec::new();
        for (id, material) in keys {
            if material.len() != KEY_LEN {
                return Err(Error::config(
                    "encryption_keys",
                    format!(
                        "key {id} is {} bytes long; keys are {KEY_LEN} random bytes",
                        material.len()
                    ),
                ));
            }
            if ring.iter().any(|(listed, _)| *listed == id) {
                return Err(Error::config(
                    "encryption_keys",
                    format!("key id {id} is listed twice; give each key its own id"),
                ));
            }
            let cipher = XChaCha20Poly1305::new_from_slice(material).map_err(|_| {
                Error::config("encryption_keys", format!("key {id} is not a valid key"))
            })?;
            ring.push((id, cipher));
        }
        if ring.is_empty() {
            return Err(Error::config(
                "encryption_keys",
                "lists no key; give at least one",
            ));
        }
        Ok(Keyring { keys: ring.into() })
    }

    /// Parses `id:key,id:key,...`: ids 0-255, keys 32 bytes in standard base64, the current
    /// key first. The format of `TIERKIT_ENCRYPTION_KEYS`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming what is wrong, without repeating any key material.
    pub fn parse(spec: &str) -> Result<Keyring> {
        let mut keys: Vec<(u8, Zeroizing<Vec<u8>>)> = Vec::new();
        for (n, item) in spec.split(',').map(str::trim).enumerate() {
            let bad = |what: &str| {
                Error::config(
                    "encryption_keys",
                    format!("entry {} {what}; write id:base64key,id:base64key", n + 1),
                )
            };
            let (id, key) = item.split_once(':').ok_or_else(|| bad("has no ':'"))?;
            let id: u8 = id
                .trim()
                .parse()
                .map_err(|_| bad("has an id that is not 0-255"))?;
            let material = base64::engine::general_purpose::STANDARD
                .decode(key.trim())
                .map_err(|_| bad("has a key that is not standard base64"))?;
            keys.push((id, Zeroizing::new(material)));
        }
        Keyring::new(keys.iter().map(|(id, k)| (*id, k.as_slice())))
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> u8 {
        self.keys[0].0
    }

    /// `envelope` (a [`Codec`](crate::Codec) envelope) sealed under the current key, bound to
    /// `context`: it opens only with the same context. Encrypted namespaces use the entry's
    /// full Redis key.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] when the OS gives no randomness for the nonce (nothing is sealed
    /// under a guessable one), or for a message over the cipher's limit (256 GiB).
    ///
    /// # Examples
    ///
    /// ```
    /// use tierkit::codec::Keyring;
    /// use tierkit::{Codec, DecodeError};
    ///
    /// let keys = Keyring::new([(1, [7u8; 32].as_slice())])?;
    /// let codec = Codec::new();
    /// let sealed = keys.seal(&codec.encode(&"secret")?, b"app:c:users:v1:alice")?;
    /// let opened = keys.open(&sealed, b"app:c:users:v1:alice")?;
    /// assert_eq!(codec.decode::<String>(&opened)?, "secret");
    /// assert_eq!(keys.open(&sealed, b"app:c:users:v1:bob"), Err(DecodeError::Undecryptable));
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn seal(&self, envelope: &[u8], context: &[u8]) -> Result<Vec<u8>> {
        let (id, cipher) = &self.keys[0];
        let header = [MAGIC[0], MAGIC[1], VERSION, SEALED, *id];
        let mut nonce = XNonce::default();
        getrandom::fill(&mut nonce)
            .map_err(|e| Error::Encode(format!("no randomness for a nonce: {e}")))?;
        let aad = [header.as_slice(), context].concat();
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + envelope.len() + TAG_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: envelope,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Encode("the value is too large to encrypt".into()))?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plain envelope `bytes` sealed, if they open under a listed key and `context` (see
    /// [`seal`](Self::seal)).
    ///
    /// # Errors
    ///
    /// [`DecodeError::Undecryptable`] for bytes tampered with, sealed under another context,
    /// or under a key not listed; [`DecodeError::NotSealed`] for a plain envelope;
    /// [`DecodeError::Truncated`] or [`DecodeError::Foreign`] for bytes that are no envelope.
    pub fn open(&self, bytes: &[u8], context: &[u8]) -> std::result::Result<Vec<u8>, DecodeError> {
        let (header, rest) = bytes
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(DecodeError::Truncated(bytes.len()))?;
        if header[..2] != MAGIC {
            return Err(DecodeError::Foreign);
        }
        if header[3] != SEALED {
            return Err(DecodeError::NotSealed);
        }
        let (id, nonce) = (header[4], rest.get(..NONCE_LEN));
        let (Some(nonce), Some(sealed)) = (nonce, rest.get(NONCE_LEN..)) else {
            return Err(DecodeError::Truncated(bytes.len()));
        };
        let cipher = self
            .keys
            .iter()
            .find(|(listed, _)| *listed == id)
            .map(|(_, cipher)| cipher)
            .ok_or(DecodeError::Undecryptable)?;
        let aad = [header.as_slice(), context].concat();
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| DecodeError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: &[(u8, u8)]) -> Keyring {
        let material: Vec<(u8, [u8; 32])> = keys.iter().map(|&(id, b)| (id, [b; 32])).collect();
        Keyring::new(material.iter().map(|(id, k)| (*id, k.as_slice()))).unwrap()
    }

    #[test]
    fn a_sealed_envelope_opens_under_its_context_only() {
        let keys = ring(&[(1, 1)]);
        let sealed = keys.seal(b"TK\x01\x00plain", b"key:a").unwrap();
        assert_eq!(sealed.len(), 9 + HEADER_LEN + NONCE_LEN + TAG_LEN);
        assert!(!sealed.windows(5).any(|w| w == b"plain"));
        assert_eq!(keys.open(&sealed, b"key:a").unwrap(), b"TK\x01\x00plain");
        assert_eq!(
            keys.open(&sealed, b"key:b"),
            Err(DecodeError::Undecryptable)
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            keys.open(&tampered, b"key:a"),
            Err(DecodeError::Undecryptable)
        );
        // Another key id in the header: that key (or, here, none) and a different header.
        let mut relabelled = sealed;
        relabelled[4] = 2;
        assert_eq!(
            keys.open(&relabelled, b"key:a"),
            Err(DecodeError::Undecryptable)
        );
    }

    #[test]
    fn rotation_opens_with_any_listed_key_and_seals_with_the_current() {
        let old = ring(&[(1, 1)]);
        let sealed_old = old.seal(b"v", b"k").unwrap();
        let rotated = ring(&[(2, 2), (1, 1)]);
        assert_eq!(rotated.open(&sealed_old, b"k").unwrap(), b"v");
        let sealed_new = rotated.seal(b"v", b"k").unwrap();
        assert_eq!(sealed_new[4], 2);
        assert_eq!(old.open(&sealed_new, b"k"), Err(DecodeError::Undecryptable));
        let dropped = ring(&[(2, 2)]);
        assert_eq!(
            dropped.open(&sealed_old, b"k"),
            Err(DecodeError::Undecryptable)
        );
    }

    #[test]
    fn plain_and_short_bytes_are_refused() {
        let keys = ring(&[(1, 1)]);
        assert_eq!(
            keys.open(b"TK\x01\x00plain", b"k"),
            Err(DecodeError::NotSealed)
        );
        assert_eq!(
            keys.open(b"TK\x01\x02\x01", b"k"),
            Err(DecodeError::Truncated(5))
        );
        assert_eq!(
            keys.open(b"xx\x01\x02\x01", b"k"),
            Err(DecodeError::Foreign)
        );
    }

    #[test]
    fn the_spec_is_checked_without_echoing_keys() {
        let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let keys = Keyring::parse(&format!("3:{key}, 4:{key}")).unwrap();
        assert_eq!(keys.current_id(), 3);
        for bad in [
            String::new(),
            key.clone(),
            format!("300:{key}"),
            "1:not base64!".to_owned(),
            "1:AAAA".to_owned(),
            format!("1:{key},1:{key}"),
        ] {
            let err = Keyring::parse(&bad).unwrap_err().to_string();
            assert!(!err.contains(&key), "{err}");
        }
    }
}
