//! The Redis key schema and the rules for every name that becomes part of a key: the one place
//! that knows what a tierkit key looks like.
//!
//! | key | holds |
//! |---|---|
//! | `{prefix}:c:{namespace}:v{version}:{key}` | a cache entry |
//! | `{prefix}:c:{namespace}:e{version}` | the namespace's epoch (entries of other epochs are cleared) |
//! | `{prefix}:c:{namespace}:g{version}:{tag}` | a tag's epoch (entries of other epochs are invalidated) |
//! | `{prefix}:c:{namespace}:l{version}:{key}` | the lease of the one instance loading a key |
//! | `{prefix}:c:backplane` | the pub/sub channel of the cache's coherence backplane |
//! | `{prefix}:s:{{tag}}:sess:{hash}` | a session |
//! | `{prefix}:s:{{tag}}:idx:{user}` | a user's sessions; `user` as `session::names` names them |
//! | `{prefix}:s:{{tag}}:rt:{hash}` | the session a refresh token belongs to |
//! | `{prefix}:s:users`, `{prefix}:s:counts` | the sweep's users, the session counts |
//! | `{prefix}:rl:{limiter}:{algorithm}:{key}` | a rate-limit window (`log` or `ctr`) |
//!
//! Neither the prefix nor a namespace or limiter name may contain `:`, so the first `:` of a
//! key ends its prefix and the next ones end its part and name: no key of one prefix (or
//! namespace) can ever start like a key of another, and a `SCAN` glob built here (the prefix
//! and names are also free of glob metacharacters) reaches exactly one keyspace.

use std::sync::Arc;

use crate::error::{Error, Result};

const MAX_PREFIX_LEN: usize = 64;
const MAX_NAME_LEN: usize = 64;

/// Characters a prefix or name may hold: none is `:`, a glob metacharacter or a hash-tag brace.
fn segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// Checks a key prefix: 1 to 64 characters from `A-Z a-z 0-9 _ - .`.
///
/// # Errors
///
/// [`Error::Config`] naming `field`.
pub(crate) fn validate_prefix(field: &str, prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN {
        return Err(Error::config(
            field,
            format!("{prefix:?} must be 1 to {MAX_PREFIX_LEN} characters long"),
        ));
    }
    if let Some(bad) = prefix.chars().find(|c| !segment_char(*c)) {
        let hint = if bad == ':' {
            "; `:` separates the parts of a key, so one prefix could reach into another's keys \
             (use `.` or `-` to structure a prefix)"
        } else {
            ""
        };
        return Err(Error::config(
            field,
            format!("{prefix:?} contains {bad:?}; use only A-Z a-z 0-9 _ - .{hint}"),
        ));
    }
    Ok(())
}

/// Checks the name of a namespace or limiter: 1-64 characters from `A-Z a-z 0-9 _ - .`.
///
/// # Errors
///
/// [`Error::Config`] naming `field`.
pub(crate) fn validate_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(segment_char) {
        return Err(Error::config(
            field,
            format!("{name:?} must be 1-{MAX_NAME_LEN} characters from A-Z a-z 0-9 _ - ."),
        ));
    }
    Ok(())
}

/// The key schema under one validated prefix. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Keys {
    prefix: Arc<str>,
}

impl Default for Keys {
    fn default() -> Keys {
        Keys {
            prefix: "tierkit".into(),
        }
    }
}

impl Keys {
    /// The schema under `prefix`, checked as [`validate_prefix`] does.
    pub(crate) fn new(prefix: &str) -> Result<Keys> {
        validate_prefix("prefix", prefix)?;
        Ok(Keys {
            prefix: prefix.into(),
        })
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}:c:{namespace}:v{version}:`, followed by the caller's key.
    pub(crate) fn cache_entries(&self, namespace: &str, version: u32) -> String {
        format!("{}:c:{namespace}:v{version}:", self.prefix)
    }

    /// `{prefix}:c:`: every key of the cache.
    pub(crate) fn cache_all(&self) -> String {
        format!("{}:c:", self.prefix)
    }

    /// The namespace, version and caller's key of a cache entry's Redis key; `None` for any
    /// other key. Namespace names hold no `:`, so the split is exact.
    pub(crate) fn parse_cache_entry<'a>(&self, key: &'a str) -> Option<(&'a str, u32, &'a str)> {
        let rest = key.strip_prefix(&*self.prefix)?.strip_prefix(":c:")?;
        let (namespace, rest) = rest.split_once(':')?;
        let (version, key) = rest.strip_prefix('v')?.split_once(':')?;
        Some((namespace, version.parse().ok()?, key))
    }

    /// `{prefix}:c:{namespace}:e{version}`: the namespace's epoch.
    pub(crate) fn cache_epoch(&self, namespace: &str, version: u32) -> String {
        format!("{}:c:{namespace}:e{version}", self.prefix)
    }

    /// `{prefix}:c:{namespace}:g{version}:`, followed by a tag: that tag's epoch.
    pub(crate) fn cache_tag_epochs(&self, namespace: &str, version: u32) -> String {
        format!("{}:c:{namespace}:g{version}:", self.prefix)
    }

    /// `{prefix}:c:{namespace}:l{version}:`, followed by a key: the lease of its loader.
    pub(crate) fn cache_leases(&self, namespace: &str, version: u32) -> String {
        format!("{}:c:{namespace}:l{version}:", self.prefix)
    }

    /// A `SCAN` glob over every key of a namespace, all versions, epochs and leases included.
    pub(crate) fn cache_namespace_glob(&self, namespace: &str) -> String {
        format!("{}:c:{namespace}:*", self.prefix)
    }

    /// The pub/sub channel of the cache's coherence backplane.
    pub(crate) fn backplane_channel(&self) -> String {
        format!("{}:c:backplane", self.prefix)
    }

    /// `{prefix}:rl:{limiter}:{algorithm}:`, followed by the caller's key. The algorithm is
    /// part of the name, so switching a limiter's algorithm never meets the other's data.
    pub(crate) fn limiter(&self, name: &str, algorithm: &str) -> String {
        format!("{}:rl:{name}:{algorithm}:", self.prefix)
    }

    /// A session record; `tag` routes every key of one user to one cluster slot.
    pub(crate) fn session(&self, tag: &str, hash: &str) -> String {
        format!("{}:s:{{{tag}}}:sess:{hash}", self.prefix)
    }

    /// A user's session index.
    pub(crate) fn session_index(&self, tag: &str, user: &str) -> String {
        format!("{}:s:{{{tag}}}:idx:{user}", self.prefix)
    }

    /// The session a refresh token belongs to.
    pub(crate) fn refresh_token(&self, tag: &str, hash: &str) -> String {
        format!("{}:s:{{{tag}}}:rt:{hash}", self.prefix)
    }

    /// Users with sessions, walked by the sweep.
    pub(crate) fn session_users(&self) -> String {
        format!("{}:s:users", self.prefix)
    }

    /// Active session counts.
    pub(crate) fn session_counts(&self) -> String {
        format!("{}:s:counts", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn a_cache_entry_key_parses_back() {
        let keys = Keys::new("app").unwrap();
        let entry = format!("{}user:42:x", keys.cache_entries("profiles", 3));
        assert_eq!(
            keys.parse_cache_entry(&entry),
            Some(("profiles", 3, "user:42:x"))
        );
        for other in [
            keys.cache_epoch("profiles", 3),
            format!("{}t", keys.cache_tag_epochs("profiles", 3)),
            format!("{}k", keys.cache_leases("profiles", 3)),
            "other:c:profiles:v3:k".to_owned(),
            "app:s:abc".to_owned(),
        ] {
            assert_eq!(keys.parse_cache_entry(&other), None, "{other}");
        }
    }

    use super::*;

    #[test]
    fn a_prefix_cannot_hold_the_separator_or_glob_characters() {
        for bad in [
            "", "a:c:x", "a:", "a*", "a?", "a[b]", "a{b}", "a\\b", "a b", "é",
        ] {
            assert!(Keys::new(bad).is_err(), "{bad:?} accepted");
        }
        let long = "a".repeat(65);
        assert!(Keys::new(&long).is_err());
        for good in ["tierkit", "svc-1", "app.cache", "A_b-9.z", &"a".repeat(64)] {
            assert!(Keys::new(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn the_separator_message_says_why() {
        let err = Keys::new("a:c:x").unwrap_err().to_string();
        assert!(err.contains("prefix") && err.contains("':'"), "{err}");
    }

    #[test]
    fn names_follow_the_same_rule() {
        assert!(validate_name("namespace", "events.v2").is_ok());
        for bad in ["", "a:b", "a*", "{a}", &"n".repeat(65)] {
            assert!(validate_name("namespace", bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Every key of one prefix starts with `{prefix}:`, and no valid prefix contains `:`: so
    /// a key's prefix is the text before its first `:`, and two prefixes never share a key.
    #[test]
    fn keys_of_two_prefixes_never_overlap() {
        let a = Keys::new("a").unwrap();
        let ac = Keys::new("a.c").unwrap();
        for (k, p) in [(&a, "a"), (&ac, "a.c")] {
            for key in [
                k.cache_entries("x", 1),
                k.cache_epoch("x", 1),
                k.cache_tag_epochs("x", 1),
                k.cache_leases("x", 1),
                k.cache_namespace_glob("x"),
                k.backplane_channel(),
                k.limiter("x", "log"),
                k.session("t", "h"),
                k.session_index("t", "u:1"),
                k.refresh_token("t", "h"),
                k.session_users(),
                k.session_counts(),
            ] {
                assert_eq!(key.split(':').next(), Some(p), "{key}");
            }
        }
    }
}
