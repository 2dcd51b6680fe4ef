//! Operators' view of the cache's Redis keys: what a key is, what an entry's frame says, and
//! walks over every node's keys. What the `tierkit` command-line tool reads; a service does
//! not need any of it.
//!
//! Invalidation needs nothing here: a [`Namespace`](super::Namespace) of any value type,
//! declared with the namespace's name and version, invalidates by key, tag, pattern or whole
//! namespace with the same backplane message every instance listens to.

use std::time::Duration;

use super::frame::{self, Kind};
use crate::conn::Conn;
use crate::error::Result;
use crate::keys::Keys;

/// What a Redis key under a prefix is to the cache, from [`parse_key`].
///
/// # Examples
///
/// ```
/// use tierkit::cache::admin::{parse_key, CacheKey};
///
/// assert_eq!(
///     parse_key("tierkit", "tierkit:c:users:v2:42"),
///     Some(CacheKey::Entry { namespace: "users", version: 2, key: "42" })
/// );
/// assert_eq!(
///     parse_key("tierkit", "tierkit:c:users:g1:team-7"),
///     Some(CacheKey::TagEpoch { namespace: "users", version: 1, tag: "team-7" })
/// );
/// assert_eq!(parse_key("tierkit", "tierkit:rl:login:log:ip"), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheKey<'a> {
    /// `{prefix}:c:{namespace}:v{version}:{key}`: an entry (a value, a tombstone or a cached
    /// "not found").
    Entry {
        /// The namespace's name.
        namespace: &'a str,
        /// The namespace's version.
        version: u32,
        /// The caller's key.
        key: &'a str,
    },
    /// `{prefix}:c:{namespace}:e{version}`: the namespace's epoch.
    Epoch {
        /// The namespace's name.
        namespace: &'a str,
        /// The namespace's version.
        version: u32,
    },
    /// `{prefix}:c:{namespace}:g{version}:{tag}`: a tag's epoch.
    TagEpoch {
        /// The namespace's name.
        namespace: &'a str,
        /// The namespace's version.
        version: u32,
        /// The tag.
        tag: &'a str,
    },
    /// `{prefix}:c:{namespace}:l{version}:{key}`: the lease of the instance loading a key.
    Lease {
        /// The namespace's name.
        namespace: &'a str,
        /// The namespace's version.
        version: u32,
        /// The caller's key.
        key: &'a str,
    },
    /// `{prefix}:c:backplane`: the backplane's pub/sub channel (never a stored key).
    Backplane,
}

impl CacheKey<'_> {
    /// The namespace the key belongs to (`None` for the backplane channel).
    ///
    /// # Examples
    ///
    /// ```
    /// use tierkit::cache::admin::parse_key;
    ///
    /// let key = parse_key("app", "app:c:events:e1").unwrap();
    /// assert_eq!(key.namespace(), Some("events"));
    /// ```
    pub fn namespace(&self) -> Option<&str> {
        match self {
            CacheKey::Entry { namespace, .. }
            | CacheKey::Epoch { namespace, .. }
            | CacheKey::TagEpoch { namespace, .. }
            | CacheKey::Lease { namespace, .. } => Some(namespace),
            CacheKey::Backplane => None,
        }
    }
}

/// What the Redis key `key` is to the cache under `prefix`; `None` for any key that is not
/// one of the cache's (another prefix, a session, a rate limit, a foreign key).
///
/// # Examples
///
/// ```
/// use tierkit::cache::admin::{parse_key, CacheKey};
///
/// let key = parse_key("app", "app:c:events:l3:42").unwrap();
/// assert_eq!(key, CacheKey::Lease { namespace: "events", version: 3, key: "42" });
/// assert_eq!(parse_key("app", "app:c:backplane"), Some(CacheKey::Backplane));
/// assert_eq!(parse_key("app", "other:c:events:v1:42"), None);
/// ```
pub fn parse_key<'a>(prefix: &str, key: &'a str) -> Option<CacheKey<'a>> {
    let rest = key.strip_prefix(prefix)?.strip_prefix(":c:")?;
    if rest == "backplane" {
        return Some(CacheKey::Backplane);
    }
    // Namespace names hold no `:`, so the first one ends the name.
    let (namespace, rest) = rest.split_once(':')?;
    Keys::new(prefix).ok()?;
    crate::keys::validate_name("namespace", namespace).ok()?;
    let mut chars = rest.chars();
    let part = chars.next()?;
    let rest = chars.as_str();
    let (version, tail) = match rest.split_once(':') {
        Some((v, tail)) => (v, Some(tail)),
        None => (rest, None),
    };
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let version: u32 = version.parse().ok()?;
    match (part, tail) {
        ('v', Some(key)) => Some(CacheKey::Entry {
            namespace,
            version,
            key,
        }),
        ('e', None) => Some(CacheKey::Epoch { namespace, version }),
        ('g', Some(tag)) => Some(CacheKey::TagEpoch {
            namespace,
            version,
            tag,
        }),
        ('l', Some(key)) => Some(CacheKey::Lease {
            namespace,
            version,
            key,
        }),
        _ => None,
    }
}

/// The Redis keys of the epochs an entry of `namespace` (version `version`) under `prefix`
/// is checked against: the namespace's, then each tag's, in the order of `tags`. Each holds
/// the epoch as decimal text; an entry is served only while every one holds the epoch its
/// frame names ([`StoredEntry::namespace_epoch`], [`StoredEntry::tags`]). Empty for a prefix
/// that no configuration accepts.
///
/// # Examples
///
/// ```
/// use tierkit::cache::admin::epoch_keys;
///
/// assert_eq!(
///     epoch_keys("tierkit", "users", 1, &["team-7"]),
///     ["tierkit:c:users:e1", "tierkit:c:users:g1:team-7"]
/// );
/// ```
pub fn epoch_keys(prefix: &str, namespace: &str, version: u32, tags: &[&str]) -> Vec<String> {
    let Ok(keys) = Keys::new(prefix) else {
        return Vec::new();
    };
    let tag_epochs = keys.cache_tag_epochs(namespace, version);
    std::iter::once(keys.cache_epoch(namespace, version))
        .chain(tags.iter().map(|tag| format!("{tag_epochs}{tag}")))
        .collect()
}

/// The pub/sub channel of the coherence backplane under `prefix`: every instance subscribes to
/// it, and the instances that may hold an L1 copy of an entry are among its subscribers
/// (`PUBSUB NUMSUB`).
///
/// # Examples
///
/// ```
/// assert_eq!(tierkit::cache::admin::backplane_channel("app"), "app:c:backplane");
/// ```
pub fn backplane_channel(prefix: &str) -> String {
    match Keys::new(prefix) {
        Ok(keys) => keys.backplane_channel(),
        // No configuration accepts such a prefix, so no instance listens on it; the
        // layout is the same all the same.
        Err(_) => format!("{prefix}:c:backplane"),
    }
}

/// What an entry is, from its frame.
///
/// # Examples
///
/// ```
/// use tierkit::cache::admin::{parse_entry, EntryKind};
///
/// let mut absent = b"TE\x01\x02".to_vec(); // kind 2: a cached "not found"
/// absent.extend_from_slice(&[b'0'; 16]);
/// absent.extend_from_slice(&[0; 10]);
/// assert_eq!(parse_entry(&absent).map(|e| e.kind), Some(EntryKind::Absent));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryKind {
    /// A value.
    Value,
    /// An invalidated key: a miss, kept for the namespace's TTL so no load that read the key
    /// before can fill it after.
    Tombstone,
    /// A cached "not found" (negative caching).
    Absent,
}

/// The frame of a cache entry as stored in Redis, from [`parse_entry`]: its kind, version,
/// epochs and tags, and the codec envelope of its value (read it with
/// [`Codec::envelope`](crate::Codec::envelope)).
///
/// # Examples
///
/// ```
/// use tierkit::cache::admin::{parse_entry, EntryKind};
///
/// // What a GET of an invalidated key returns, written out by hand: magic `TE`, frame
/// // format 1, kind 1 (a tombstone), the version as 16 digits, the epoch, the tag count.
/// let mut tombstone = b"TE\x01\x01".to_vec();
/// tombstone.extend_from_slice(b"0000000000000042"); // the version Redis gave the write
/// tombstone.extend_from_slice(&7u64.to_le_bytes()); // the namespace epoch
/// tombstone.extend_from_slice(&0u16.to_le_bytes()); // no tags
/// let entry = parse_entry(&tombstone).unwrap();
/// assert_eq!(entry.kind, EntryKind::Tombstone);
/// assert_eq!((entry.version, entry.namespace_epoch), (42, 7));
/// assert!(entry.tags.is_empty() && entry.envelope.is_empty());
///
/// // Bytes that are no frame (here a bare codec envelope) give `None`.
/// assert!(parse_entry(b"TK\x01\x00not a frame").is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredEntry<'a> {
    /// A value, a tombstone or a cached "not found".
    pub kind: EntryKind,
    /// The version Redis gave the write (its clock in microseconds).
    pub version: u64,
    /// The namespace epoch it was written under.
    pub namespace_epoch: u64,
    /// Its tags, each with the epoch it was written under.
    pub tags: Vec<(&'a str, u64)>,
    /// How long Redis keeps it past its logical expiry (fail-safe namespaces); zero otherwise.
    pub grace: Duration,
    /// The value's codec envelope; empty for a tombstone or "not found".
    pub envelope: &'a [u8],
}

/// The frame of the bytes a cache entry's key holds; `None` for bytes that are not one
/// (another program's, or a format this build does not know).
///
/// # Examples
///
/// ```
/// use tierkit::cache::admin::{parse_entry, EntryKind};
///
/// // What a GET of an invalidated key returns, written out by hand: magic `TE`, frame
/// // format 1, kind 1 (a tombstone), the version as 16 digits, the epoch, the tag count.
/// let mut tombstone = b"TE\x01\x01".to_vec();
/// tombstone.extend_from_slice(b"0000000000000042"); // the version Redis gave the write
/// tombstone.extend_from_slice(&7u64.to_le_bytes()); // the namespace epoch
/// tombstone.extend_from_slice(&0u16.to_le_bytes()); // no tags
/// let entry = parse_entry(&tombstone).unwrap();
/// assert_eq!(entry.kind, EntryKind::Tombstone);
/// assert_eq!((entry.version, entry.namespace_epoch), (42, 7));
/// assert!(entry.tags.is_empty() && entry.envelope.is_empty());
///
/// // Bytes that are no frame (here a bare codec envelope) give `None`.
/// assert!(parse_entry(b"TK\x01\x00not a frame").is_none());
/// ```
pub fn parse_entry(bytes: &[u8]) -> Option<StoredEntry<'_>> {
    let frame = frame::parse(bytes)?;
    Some(StoredEntry {
        kind: match frame.kind {
            Kind::Value => EntryKind::Value,
            Kind::Tombstone => EntryKind::Tombstone,
            Kind::Absent => EntryKind::Absent,
        },
        version: frame.version,
        namespace_epoch: frame.ns_epoch,
        tags: frame.tags,
        grace: frame.grace,
        envelope: frame.body,
    })
}

/// Walks every key matching the `SCAN` glob `glob` on every node that holds keys (the server,
/// or every primary of a cluster), `count` keys per page as a hint to Redis, calling `page`
/// with each page's keys (keys that are not UTF-8 are shown lossily). A key may come twice
/// when the keyspace is resized meanwhile, as `SCAN` promises no better. Each page is one call
/// bounded by the op timeout.
///
/// # Errors
///
/// The first failed call's error ([`Error::Unavailable`](crate::Error::Unavailable) while
/// health is `Down`, a timeout, a Redis error); the pages walked so far were given to `page`.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> tierkit::Result<()> {
/// let kit = tierkit::Tierkit::from_env()?;
/// if let Some(conn) = kit.conn() {
///     let mut n = 0;
///     tierkit::cache::admin::scan(conn, "tierkit:c:*", 1000, |keys| n += keys.len()).await?;
///     println!("{n} cache keys");
/// }
/// # Ok(()) }
/// ```
pub async fn scan(
    conn: &Conn,
    glob: &str,
    count: usize,
    mut page: impl FnMut(Vec<String>),
) -> Result<()> {
    for node in conn.nodes().await? {
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(glob)
                .arg("COUNT")
                .arg(count.max(1));
            let (next, keys): (u64, Vec<Vec<u8>>) = conn.query_node(&node, &cmd).await?;
            page(
                keys.into_iter()
                    .map(|k| String::from_utf8_lossy(&k).into_owned())
                    .collect(),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}

/// `MEMORY USAGE key SAMPLES 0` (every element of a collection counted), sent to the node
/// holding `key`: the bytes the key and its value take in Redis; `None` for a key that does
/// not exist.
///
/// # Errors
///
/// As [`scan`].
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> tierkit::Result<()> {
/// let kit = tierkit::Tierkit::from_env()?;
/// if let Some(conn) = kit.conn() {
///     let bytes = tierkit::cache::admin::memory_usage(conn, "tierkit:c:users:v1:42").await?;
///     println!("{bytes:?}");
/// }
/// # Ok(()) }
/// ```
pub async fn memory_usage(conn: &Conn, key: &str) -> Result<Option<u64>> {
    let node = conn.node_of(key).await?;
    let mut cmd = redis::cmd("MEMORY");
    cmd.arg("USAGE").arg(key).arg("SAMPLES").arg(0);
    conn.query_node(&node, &cmd).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cache_key_parses_and_nothing_else_does() {
        let keys = Keys::new("app").unwrap();
        let cases = [
            (
                format!("{}a:b", keys.cache_entries("ns", 3)),
                Some(CacheKey::Entry {
                    namespace: "ns",
                    version: 3,
                    key: "a:b",
                }),
            ),
            (
                keys.cache_epoch("ns", 1),
                Some(CacheKey::Epoch {
                    namespace: "ns",
                    version: 1,
                }),
            ),
            (
                format!("{}t", keys.cache_tag_epochs("ns", 1)),
                Some(CacheKey::TagEpoch {
                    namespace: "ns",
                    version: 1,
                    tag: "t",
                }),
            ),
            (
                format!("{}k", keys.cache_leases("ns", 2)),
                Some(CacheKey::Lease {
                    namespace: "ns",
                    version: 2,
                    key: "k",
                }),
            ),
            (keys.backplane_channel(), Some(CacheKey::Backplane)),
        ];
        for (key, want) in &cases {
            assert_eq!(parse_key("app", key).as_ref(), want.as_ref(), "{key}");
        }
        for other in [
            "app:c:ns:e1:x",
            "app:c:ns:x1:k",
            "app:c:ns:v:k",
            "app:c:ns:v-1:k",
            "app:c:ns",
            "app:c:n*s:v1:k",
            "app.c:c:ns:v1:k",
            "app:s:{t}:sess:h",
            "other:c:ns:v1:k",
        ] {
            assert_eq!(parse_key("app", other), None, "{other}");
        }
    }

    #[test]
    fn an_entry_frame_reads_back() {
        let bytes = frame::encode(Kind::Value, 9, &[("t", 4)], Duration::ZERO, b"TKbody");
        let entry = parse_entry(&bytes).unwrap();
        assert_eq!(entry.kind, EntryKind::Value);
        assert_eq!((entry.namespace_epoch, entry.tags), (9, vec![("t", 4)]));
        assert_eq!(entry.envelope, b"TKbody");
        assert_eq!(
            parse_entry(&frame::tombstone()).unwrap().kind,
            EntryKind::Tombstone
        );
    }
}
