//! The frame around every cache entry in Redis: what a reader needs to trust the bytes before
//! it decodes them.
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 2 | magic `b"TE"` |
//! | 2 | 1 | frame format: `1`, or `2` for an entry kept past its logical expiry |
//! | 3 | 1 | kind: `0` a value, `1` a tombstone (an invalidated key), `2` "not found" (a negative entry) |
//! | 4 | 16 | the entry's version: ASCII decimal, zero-padded, written by Redis itself |
//! | 20 | 8 | the namespace epoch the entry was written under, `u64` little-endian |
//! | 28 | 2 | how many tags follow, `u16` little-endian |
//! | 30 | 8 | format 2 only: the grace, in ms, Redis keeps the entry past its logical expiry (`u64` LE) |
//! | … | … | per tag: its epoch (`u64` LE), its length (`u16` LE), its UTF-8 bytes |
//! | … | rest | a value's [`Codec`](crate::Codec) envelope; nothing for a tombstone |
//!
//! **Versions** order the writes of one key: the write script sets them from the server's
//! `TIME` in microseconds, and always above the version it replaces, so every instance orders
//! two copies of a key the same way, whatever its own clock says. Decimal digits, because the
//! script writes them with `string.format` and compares them as strings.
//!
//! **Grace** is how a fail-safe namespace keeps an expired copy at hand: Redis keeps the entry
//! its TTL plus the grace, and a reader takes the last `grace` ms of the `PTTL` it reads with
//! the entry as past the logical expiry. Both are the server's time, so skewed clocks agree.
//! Entries without grace stay format 1, byte for byte.
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
/// Format 1 and the grace field.
const FORMAT_GRACE: u8 = 2;
const FIXED_LEN: usize = HEAD_LEN + 8 + 2;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Value,
    /// The key was invalidated: a miss, whose version a fill must still match.
    Tombstone,
    /// The loader found nothing, and that answer is cached (negative caching).
    Absent,
}

/// A parsed frame, borrowing the stored bytes.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Frame<'a> {
    pub(super) kind: Kind,
    pub(super) version: u64,
    pub(super) ns_epoch: u64,
    pub(super) tags: Vec<(&'a str, u64)>,
    /// How long past its logical expiry Redis keeps the entry.
    pub(super) grace: std::time::Duration,
    /// The codec envelope of a value.
    pub(super) body: &'a [u8],
}

/// The frame of a value (or a tombstone or negative entry, with an empty `body`), kept `grace`
/// past its logical expiry (whole milliseconds), its version left as zeros for the write script
/// to fill in.
pub(super) fn encode(
    kind: Kind,
    ns_epoch: u64,
    tags: &[(&str, u64)],
    grace: std::time::Duration,
    body: &[u8],
) -> Vec<u8> {
    let tags_len: usize = tags.iter().map(|(t, _)| 10 + t.len()).sum();
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    let mut out = Vec::with_capacity(FIXED_LEN + 8 + tags_len + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(if grace_ms == 0 { FORMAT } else { FORMAT_GRACE });
    out.push(match kind {
        Kind::Value => 0,
        Kind::Tombstone => 1,
        Kind::Absent => 2,
    });
    out.extend_from_slice(&[b'0'; VERSION_DIGITS]);
    out.extend_from_slice(&ns_epoch.to_le_bytes());
    // Tags are checked non-empty and few by the write path; a frame cannot hold more than
    // u16::MAX of them, nor one longer than u16::MAX bytes.
    out.extend_from_slice(&(tags.len().min(u16::MAX as usize) as u16).to_le_bytes());
    if grace_ms != 0 {
        out.extend_from_slice(&grace_ms.to_le_bytes());
    }
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
    encode(Kind::Tombstone, 0, &[], std::time::Duration::ZERO, &[])
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
    if bytes.len() < FIXED_LEN || !matches!(bytes[2], FORMAT | FORMAT_GRACE) {
        return None;
    }
    let version = version_of(bytes)?;
    let kind = match bytes[3] {
        0 => Kind::Value,
        1 => Kind::Tombstone,
        2 => Kind::Absent,
        _ => return None,
    };
    let ns_epoch = u64::from_le_bytes(bytes[HEAD_LEN..HEAD_LEN + 8].try_into().ok()?);
    let count = u16::from_le_bytes(bytes[HEAD_LEN + 8..FIXED_LEN].try_into().ok()?);
    let mut rest = &bytes[FIXED_LEN..];
    let mut grace = std::time::Duration::ZERO;
    if bytes[2] == FORMAT_GRACE {
        let (ms, after) = rest.split_first_chunk::<8>()?;
        grace = std::time::Duration::from_millis(u64::from_le_bytes(*ms));
        rest = after;
    }
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
        grace,
        body: rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// What the write script does to a frame's version.
    fn stamped(mut bytes: Vec<u8>, version: u64) -> Vec<u8> {
        bytes[VERSION_AT..HEAD_LEN].copy_from_slice(version_digits(version).as_bytes());
        bytes
    }

    #[test]
    fn a_frame_reads_back_as_written() {
        let tags = [("user:1", 7u64), ("feed", u64::MAX)];
        let bytes = stamped(
            encode(Kind::Value, 42, &tags, Duration::ZERO, b"body"),
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
                grace: Duration::ZERO,
                body: b"body",
            }
        );
        let kept = stamped(
            encode(Kind::Value, 42, &tags, Duration::from_secs(90), b"body"),
            7,
        );
        let parsed = parse(&kept).unwrap();
        assert_eq!(parsed.grace, Duration::from_secs(90));
        assert_eq!((parsed.tags, parsed.body), (tags.to_vec(), &b"body"[..]));
        let absent = stamped(encode(Kind::Absent, 1, &[], Duration::ZERO, &[]), 8);
        assert_eq!(parse(&absent).unwrap().kind, Kind::Absent);
        // Format 1 when there is no grace: what earlier releases wrote and read.
        assert_eq!(kept[2], FORMAT_GRACE);
        assert_eq!(absent[2], FORMAT);
        let tomb = stamped(encode(Kind::Tombstone, 0, &[], Duration::ZERO, &[]), 5);
        assert_eq!(parse(&tomb).unwrap().kind, Kind::Tombstone);
        assert_eq!(version_of(&tomb), Some(5));
    }

    #[test]
    fn anything_else_is_not_a_frame() {
        let good = stamped(encode(Kind::Value, 1, &[("t", 2)], Duration::ZERO, b"x"), 9);
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
