//! The frame around every cache entry in Redis: what a reader needs to trust the bytes before
//! it decodes them.
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 2 | magic `b"TE"` |
//! | 2 | 1 | frame format, currently `1` |
//! | 3 | 1 | kind: `0` a value, `1` a tombstone (an invalidated key) |
//! | 4 | 16 | the entry's version: ASCII decimal, zero-padded, written by Redis itself |
//! | 20 | 8 | the namespace epoch the entry was written under, `u64` little-endian |
//! | 28 | 2 | how many tags follow, `u16` little-endian |
//! | 30 | … | per tag: its epoch (`u64` LE), its length (`u16` LE), its UTF-8 bytes |
//! | … | rest | a value's [`Codec`](crate::Codec) envelope; nothing for a tombstone |
//!
//! **Versions** order the writes of one key: the write script sets them from the server's
//! `TIME` in microseconds, and always above the version it replaces, so every instance orders
//! two copies of a key the same way, whatever its own clock says. Decimal digits, because the
//! script writes them with `string.format` and compares them as strings.
//!
//! **Epochs** make namespace clears and tag invalidations survive eviction: an entry is only
//! served while the namespace's and each of its tags' epoch keys still hold the epochs it was
//! written under. Invalidating deletes an epoch key; an evicted epoch key reads the same way,
//! so eviction can cost a miss, never a stale hit.

/// Where the version digits start, and how many there are.
pub(super) const VERSION_AT: usize = 4;
pub(super) const VERSION_DIGITS: usize = 16;
/// Magic, format, kind and version: what the write script reads of the entry it replaces.
pub(super) const HEAD_LEN: usize = VERSION_AT + VERSION_DIGITS;

const MAGIC: [u8; 2] = *b"TE";
const FORMAT: u8 = 1;
const FIXED_LEN: usize = HEAD_LEN + 8 + 2;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Value,
    /// The key was invalidated: a miss, whose version a fill must still match.
    Tombstone,
}

/// A parsed frame, borrowing the stored bytes.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Frame<'a> {
    pub(super) kind: Kind,
    pub(super) version: u64,
    pub(super) ns_epoch: u64,
    pub(super) tags: Vec<(&'a str, u64)>,
    /// The codec envelope of a value.
    pub(super) body: &'a [u8],
}

/// The frame of a value (or a tombstone, with an empty `body`), its version left as zeros for
/// the write script to fill in.
pub(super) fn encode(kind: Kind, ns_epoch: u64, tags: &[(&str, u64)], body: &[u8]) -> Vec<u8> {
    let tags_len: usize = tags.iter().map(|(t, _)| 10 + t.len()).sum();
    let mut out = Vec::with_capacity(FIXED_LEN + tags_len + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT);
    out.push(match kind {
        Kind::Value => 0,
        Kind::Tombstone => 1,
    });
    out.extend_from_slice(&[b'0'; VERSION_DIGITS]);
    out.extend_from_slice(&ns_epoch.to_le_bytes());
    // Tags are checked non-empty and few by the write path; a frame cannot hold more than
    // u16::MAX of them, nor one longer than u16::MAX bytes.
    out.extend_from_slice(&(tags.len().min(u16::MAX as usize) as u16).to_le_bytes());
    for (tag, epoch) in tags.iter().take(u16::MAX as usize) {
        let bytes = &tag.as_bytes()[..tag.len().min(u16::MAX as usize)];
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(body);
    out
}

/// The frame of a tombstone: what an invalidated key holds.
pub(super) fn tombstone() -> Vec<u8> {
    encode(Kind::Tombstone, 0, &[], &[])
}

/// The version as the write script's `expected` argument compares it.
pub(super) fn version_digits(version: u64) -> String {
    format!("{version:0width$}", width = VERSION_DIGITS)
}

/// The version of whatever frame `bytes` start with, if they start with one: enough for a fill
/// to name what it expects to replace, even when the rest does not parse.
pub(super) fn version_of(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < HEAD_LEN || bytes[..2] != MAGIC {
        return None;
    }
    std::str::from_utf8(&bytes[VERSION_AT..HEAD_LEN])
        .ok()?
        .parse()
        .ok()
}

/// Parses a frame; `None` for anything that is not one (another program's bytes, an older
/// tierkit's, a newer format).
pub(super) fn parse(bytes: &[u8]) -> Option<Frame<'_>> {
    if bytes.len() < FIXED_LEN || bytes[2] != FORMAT {
        return None;
    }
    let version = version_of(bytes)?;
    let kind = match bytes[3] {
        0 => Kind::Value,
        1 => Kind::Tombstone,
        _ => return None,
    };
    let ns_epoch = u64::from_le_bytes(bytes[HEAD_LEN..HEAD_LEN + 8].try_into().ok()?);
    let count = u16::from_le_bytes(bytes[HEAD_LEN + 8..FIXED_LEN].try_into().ok()?);
    let mut rest = &bytes[FIXED_LEN..];
    let mut tags = Vec::with_capacity(usize::from(count).min(64));
    for _ in 0..count {
        let (epoch, after) = rest.split_first_chunk::<8>()?;
        let (len, after) = after.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_le_bytes(*len));
        if after.len() < len {
            return None;
        }
        let (tag, after) = after.split_at(len);
        tags.push((std::str::from_utf8(tag).ok()?, u64::from_le_bytes(*epoch)));
        rest = after;
    }
    Some(Frame {
        kind,
        version,
        ns_epoch,
        tags,
        body: rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the write script does to a frame's version.
    fn stamped(mut bytes: Vec<u8>, version: u64) -> Vec<u8> {
        bytes[VERSION_AT..HEAD_LEN].copy_from_slice(version_digits(version).as_bytes());
        bytes
    }

    #[test]
    fn a_frame_reads_back_as_written() {
        let tags = [("user:1", 7u64), ("feed", u64::MAX)];
        let bytes = stamped(
            encode(Kind::Value, 42, &tags, b"body"),
            1_764_800_000_000_001,
        );
        let frame = parse(&bytes).unwrap();
        assert_eq!(
            frame,
            Frame {
                kind: Kind::Value,
                version: 1_764_800_000_000_001,
                ns_epoch: 42,
                tags: tags.to_vec(),
                body: b"body",
            }
        );
        let tomb = stamped(encode(Kind::Tombstone, 0, &[], &[]), 5);
        assert_eq!(parse(&tomb).unwrap().kind, Kind::Tombstone);
        assert_eq!(version_of(&tomb), Some(5));
    }

    #[test]
    fn anything_else_is_not_a_frame() {
        let good = stamped(encode(Kind::Value, 1, &[("t", 2)], b"x"), 9);
        for cut in 0..good.len() - 1 {
            // Every prefix short of the tag's end fails; the body may be cut anywhere.
            let parsed = parse(&good[..cut]);
            assert!(parsed.is_none() || cut >= good.len() - 1, "cut {cut}");
        }
        let mut kind = good.clone();
        kind[3] = 9;
        assert!(parse(&kind).is_none());
        let mut digits = good.clone();
        digits[VERSION_AT] = b'x';
        assert!(parse(&digits).is_none() && version_of(&digits).is_none());
        assert!(parse(b"TK\x01\x00old codec envelope").is_none());
    }
}
