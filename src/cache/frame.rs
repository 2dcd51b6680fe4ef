//! The frame around every cache entry in Redis: what a reader needs to trust the bytes before
//! it decodes them.
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 2 | magic `b"TE"` |
//! | 2 | 1 | frame format: `3` (formats `1` and `2`, below, are still read) |
//! | 3 | 1 | kind: `0` a value, `1` a tombstone (an invalidated key), `2` "not found" (a negative entry) |
//! | 4 | 16 | the entry's version: ASCII decimal, zero-padded, written by Redis itself |
//! | 20 | 16 | when Redis drops the entry: server time in ms, ASCII decimal, written by Redis itself |
//! | 36 | 8 | the namespace epoch the entry was written under, `u64` little-endian |
//! | 44 | 2 | how many tags follow, `u16` little-endian |
//! | 46 | 8 | the grace, in ms, Redis keeps the entry past its logical expiry (`u64` LE) |
//! | … | … | per tag: its epoch (`u64` LE), its length (`u16` LE), its UTF-8 bytes |
//! | … | rest | a value's [`Codec`](crate::Codec) envelope; nothing for a tombstone |
//!
//! Formats 1 and 2, written by earlier releases, have no expiry field (the epoch follows the
//! version at 20), and only format 2 has the grace field; a reader asks Redis for their `PTTL`.
//!
//! **Expiry** lets a reader know how long an entry lives without asking Redis for its `PTTL`
//! (a second command per key): the write script stamps it from the same `TIME` as the version,
//! and a reader compares it with its reading of the server's clock
//! ([`ServerClock`](crate::conn::ServerClock)), never earlier than the truth, so an L1 copy
//! never outlives its Redis entry.
//!
//! **Versions** order the writes of one key: the write script sets them from the server's
//! `TIME` in microseconds, and always above the version it replaces, so every instance orders
//! two copies of a key the same way, whatever its own clock says. Decimal digits, because the
//! script writes them with `string.format` and compares them as strings.
//!
//! **Grace** is how a fail-safe namespace keeps an expired copy at hand: Redis keeps the entry
//! its TTL plus the grace, and a reader takes the last `grace` ms of the time left before the
//! expiry as past the logical expiry. Both are the server's time, so skewed clocks agree.
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
/// Where the expiry digits end (format 3).
const EXPIRY_END: usize = HEAD_LEN + VERSION_DIGITS;

const MAGIC: [u8; 2] = *b"TE";
/// Earlier releases' formats: no expiry; `2` with the grace field.
const FORMAT_1: u8 = 1;
const FORMAT_2: u8 = 2;
/// The format written: expiry and grace.
pub(super) const FORMAT: u8 = 3;

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
    let mut out = Vec::with_capacity(EXPIRY_END + 18 + tags_len + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT);
    out.push(match kind {
        Kind::Value => 0,
        Kind::Tombstone => 1,
        Kind::Absent => 2,
    });
    // Version and expiry: the write script fills them in.
    out.extend_from_slice(&[b'0'; 2 * VERSION_DIGITS]);
    out.extend_from_slice(&ns_epoch.to_le_bytes());
    // Tags are checked non-empty and few by the write path; a frame cannot hold more than
    // u16::MAX of them, nor one longer than u16::MAX bytes.
    out.extend_from_slice(&(tags.len().min(u16::MAX as usize) as u16).to_le_bytes());
    out.extend_from_slice(&grace_ms.to_le_bytes());
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

/// When Redis drops the entry `bytes` hold, in server ms, if it is a frame that says so
/// (format 3); `None` for earlier formats, whose expiry only Redis knows, and anything else.
pub(super) fn expiry_of(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < EXPIRY_END || bytes[..2] != MAGIC || bytes[2] != FORMAT {
        return None;
    }
    std::str::from_utf8(&bytes[HEAD_LEN..EXPIRY_END])
        .ok()?
        .parse()
        .ok()
}

/// Parses a frame; `None` for anything that is not one (another program's bytes, an older
/// tierkit's, a newer format).
pub(super) fn parse(bytes: &[u8]) -> Option<Frame<'_>> {
    // Where the epoch starts, and whether a grace field follows the tag count.
    let (epoch_at, has_grace) = match bytes.get(2) {
        Some(&FORMAT_1) => (HEAD_LEN, false),
        Some(&FORMAT_2) => (HEAD_LEN, true),
        Some(&FORMAT) => (EXPIRY_END, true),
        _ => return None,
    };
    let fixed_len = epoch_at + 8 + 2;
    if bytes.len() < fixed_len {
        return None;
    }
    let version = version_of(bytes)?;
    let kind = match bytes[3] {
        0 => Kind::Value,
        1 => Kind::Tombstone,
        2 => Kind::Absent,
        _ => return None,
    };
    let ns_epoch = u64::from_le_bytes(bytes[epoch_at..epoch_at + 8].try_into().ok()?);
    let count = u16::from_le_bytes(bytes[epoch_at + 8..fixed_len].try_into().ok()?);
    let mut rest = &bytes[fixed_len..];
    let mut grace = std::time::Duration::ZERO;
    if has_grace {
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
        assert!([&bytes, &kept, &absent].iter().all(|f| f[2] == FORMAT));
        let tomb = stamped(encode(Kind::Tombstone, 0, &[], Duration::ZERO, &[]), 5);
        assert_eq!(parse(&tomb).unwrap().kind, Kind::Tombstone);
        assert_eq!(version_of(&tomb), Some(5));
    }

    #[test]
    fn the_expiry_is_read_where_the_write_script_stamps_it() {
        let mut bytes = stamped(encode(Kind::Value, 1, &[], Duration::ZERO, b"x"), 9);
        // Unstamped: zeros, which every reader takes as long past.
        assert_eq!(expiry_of(&bytes), Some(0));
        // What `string.format('%016d%016d', version, expiry)` writes at the version's offset.
        bytes[VERSION_AT..EXPIRY_END]
            .copy_from_slice(format!("{:016}{:016}", 9, 1_764_800_000_123u64).as_bytes());
        assert_eq!(expiry_of(&bytes), Some(1_764_800_000_123));
        assert_eq!(parse(&bytes).unwrap().version, 9);
        assert_eq!(expiry_of(&bytes[..EXPIRY_END - 1]), None);
    }

    /// A frame as releases before the expiry field wrote it: format 1, or 2 with a grace.
    fn earlier_format(version: u64, epoch: u64, tag: (&str, u64), grace_ms: u64) -> Vec<u8> {
        let mut out = b"TE".to_vec();
        out.push(if grace_ms == 0 { FORMAT_1 } else { FORMAT_2 });
        out.push(0);
        out.extend_from_slice(version_digits(version).as_bytes());
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        if grace_ms != 0 {
            out.extend_from_slice(&grace_ms.to_le_bytes());
        }
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(&(tag.0.len() as u16).to_le_bytes());
        out.extend_from_slice(tag.0.as_bytes());
        out.extend_from_slice(b"body");
        out
    }

    #[test]
    fn earlier_formats_still_parse_and_have_no_expiry() {
        for grace_ms in [0, 90_000] {
            let bytes = earlier_format(77, 42, ("feed", 5), grace_ms);
            assert_eq!(
                parse(&bytes).unwrap(),
                Frame {
                    kind: Kind::Value,
                    version: 77,
                    ns_epoch: 42,
                    tags: vec![("feed", 5)],
                    grace: Duration::from_millis(grace_ms),
                    body: b"body",
                }
            );
            assert_eq!(expiry_of(&bytes), None);
        }
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
