//! How a user is named in session keys. Every key of one user's sessions carries the user's
//! routing tag (one Redis Cluster slot per user), and every session id and refresh token starts
//! with it, so the store finds that slot from the token alone; the user's index key and the
//! sweep's user list carry the user's name.
//!
//! | naming | tag | name |
//! |---|---|---|
//! | plain (no session name key) | first 8 hex digits of SHA-256(user id) | the user id |
//! | keyed (`k1`) | first 8 hex digits of HMAC-SHA256(key, user id) | `k1.` and the first 32 hex digits of that HMAC |
//!
//! A plain tag is an unkeyed hash: anyone holding a token can test candidate user ids against
//! it, and a reader of Redis sees user ids in key names. A keyed tag and name tell nothing
//! without the key. The `k1.` marks the naming's version, so a future one can tell its names
//! from these. Turning the key on (or changing it) renames every user: sessions made before
//! are no longer honoured (see [`UserNames::honours`]) and the sweep prunes them off the
//! counts.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::record::{digest, hex};
use crate::config::NameKey;
use crate::error::{Error, Result};

/// The version mark of keyed names.
const KEYED: &str = "k1.";
/// Keeps these HMACs apart from any other use of the same key.
const DOMAIN: &[u8] = b"tierkit/session-user/1\0";

/// The naming of users in session keys, plain or keyed.
#[derive(Clone)]
pub(crate) struct UserNames {
    /// The HMAC keyed once, cloned for each name.
    mac: Option<Hmac<Sha256>>,
}

impl std::fmt::Debug for UserNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_keyed() { "keyed" } else { "plain" })
    }
}

/// One user as named in session keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UserName {
    /// The routing tag: 8 hex digits.
    pub(crate) tag: String,
    /// What the user's index key and the sweep's user list hold.
    pub(crate) name: String,
}

impl UserNames {
    /// Keyed naming with `key`, plain without.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the HMAC refuses the key (it takes keys of any length, so never).
    pub(crate) fn new(key: Option<&NameKey>) -> Result<Self> {
        let mac = key
            .map(|key| {
                <Hmac<Sha256> as Mac>::new_from_slice(&key.0)
                    .map(|mac| mac.chain_update(DOMAIN))
                    .map_err(|e| Error::config("session_name_key", e.to_string()))
            })
            .transpose()?;
        Ok(UserNames { mac })
    }

    /// Whether user ids are hidden behind the key.
    pub(crate) fn is_keyed(&self) -> bool {
        self.mac.is_some()
    }

    /// How `user_id` is named.
    pub(crate) fn of(&self, user_id: &str) -> UserName {
        match &self.mac {
            None => UserName {
                tag: plain_tag(user_id),
                name: user_id.to_owned(),
            },
            Some(mac) => {
                let mac = hex(&mac
                    .clone()
                    .chain_update(user_id.as_bytes())
                    .finalize()
                    .into_bytes());
                UserName {
                    tag: mac[..8].to_owned(),
                    name: format!("{KEYED}{}", &mac[..32]),
                }
            }
        }
    }

    /// The tag of a name from the sweep's user list. A plain name met under keyed naming
    /// (listed before the key was set) keeps its plain tag, so the sweep still finds its index
    /// and prunes it.
    pub(crate) fn tag_of_name(&self, name: &str) -> String {
        match name.strip_prefix(KEYED) {
            Some(mac) if self.is_keyed() && mac.len() == 32 => mac[..8].to_owned(),
            _ => plain_tag(name),
        }
    }

    /// Whether a session of `user_id` found under `tag` is one this naming made. A session
    /// made under another naming (before the key was set or changed) is not honoured: a
    /// revocation of all of a user's sessions reaches only the index of this naming.
    pub(crate) fn honours(&self, tag: &str, user_id: &str) -> bool {
        self.of(user_id).tag == tag
    }

    /// The name of the index that holds a session of `user_id` found under `tag`: this
    /// naming's, or, for a session this naming does not honour, the plain one it was made
    /// under, so that removing it still takes it off its index and the counts.
    pub(crate) fn index_name(&self, tag: &str, user_id: &str) -> String {
        let user = self.of(user_id);
        if user.tag == tag {
            user.name
        } else {
            user_id.to_owned()
        }
    }
}

/// The tag of plain naming: 32 bits of an unkeyed hash.
fn plain_tag(user_id: &str) -> String {
    digest(user_id)[..8].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn keyed(byte: u8) -> UserNames {
        let key = NameKey(Arc::new(zeroize::Zeroizing::new(vec![byte; 32])));
        UserNames::new(Some(&key)).unwrap()
    }

    #[test]
    fn plain_names_are_the_user_id_and_its_hash() {
        let names = UserNames::new(None).unwrap();
        let alice = names.of("alice");
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.tag, digest("alice")[..8]);
        assert_eq!(names.tag_of_name("alice"), alice.tag);
        assert!(names.honours(&alice.tag, "alice"));
    }

    #[test]
    fn keyed_names_hide_the_user_and_depend_on_the_key() {
        let (a, b) = (keyed(1), keyed(2));
        let alice = a.of("alice");
        assert_eq!(alice.tag.len(), 8);
        assert!(alice.name.starts_with("k1.") && alice.name.len() == 35);
        assert!(alice.name[3..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(!alice.name.contains("alice"));
        // Not the unkeyed hash anyone could compute, and another key names otherwise.
        assert_ne!(alice.tag, digest("alice")[..8]);
        assert_ne!(b.of("alice"), alice);
        assert_ne!(a.of("bob"), alice);
        // Stable, and the sweep recovers the tag from the name alone.
        assert_eq!(a.of("alice"), alice);
        assert_eq!(a.tag_of_name(&alice.name), alice.tag);
    }

    #[test]
    fn sessions_of_another_naming_are_not_honoured_but_can_be_removed() {
        let (plain, keyed) = (UserNames::new(None).unwrap(), keyed(1));
        let old = plain.of("alice");
        assert!(!keyed.honours(&old.tag, "alice"));
        // Found under its plain tag: removed from its plain index, which the sweep also
        // still reaches.
        assert_eq!(keyed.index_name(&old.tag, "alice"), "alice");
        assert_eq!(keyed.tag_of_name("alice"), old.tag);
        let new = keyed.of("alice");
        assert!(keyed.honours(&new.tag, "alice"));
        assert_eq!(keyed.index_name(&new.tag, "alice"), new.name);
        // Plain naming never reads a keyed-looking user id as keyed.
        assert_eq!(plain.tag_of_name(&new.name), digest(&new.name)[..8]);
    }
}
