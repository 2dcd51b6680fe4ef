//! Turning values into the bytes stored in Redis, and back.
//!
//! Every stored value is wrapped in a small envelope, so that bytes written by another program,
//! by a newer tierkit, or damaged on the way are recognised instead of misread:
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 2 | magic `b"TK"` |
//! | 2 | 1 | format version, currently `1` |
//! | 3 | 1 | flags: bit 0 set = body is zstd-compressed; `0b10` alone = sealed (encrypted, see [`Keyring`]); other bits reserved, must be 0 |
//! | 4 | 4 | only when compressed: length of the uncompressed body, `u32` little-endian |
//! | 4 or 8 | rest | body: the value in bincode 2 (serde, standard config), zstd-compressed if flagged |
//!
//! An uncompressed envelope therefore costs 4 bytes over the bincode body, a compressed one 8 bytes
//! over the zstd frame. A body is compressed only when it is at least
//! [`compress_threshold`](CodecBuilder::compress_threshold) bytes long *and* the compressed
//! envelope comes out smaller than the raw one; small values rarely pay for compression.
//!
//! Decoding never panics on bad input: each way stored bytes can be wrong maps to a
//! [`DecodeError`].

use std::cell::RefCell;
use std::io::{self, Cursor};

use bincode::enc::write::Writer;
use serde::de::DeserializeOwned;
use serde::Serialize;
use zstd::bulk::{Compressor, Decompressor};

use crate::error::{DecodeError, Error, Result};

pub(crate) mod json_time;
mod keyring;

pub use keyring::{Keyring, KEY_LEN};

const MAGIC: [u8; 2] = *b"TK";
const VERSION: u8 = 1;
const RAW_HEADER_LEN: usize = 4;
const ZSTD_HEADER_LEN: usize = RAW_HEADER_LEN + 4;

const DEFAULT_COMPRESS_THRESHOLD: usize = 1024;
/// zstd's first fast level: literals are stored rather than Huffman-coded, which halves the
/// cost of compressing a kilobyte and cuts decompressing it sevenfold for about an eighth more
/// bytes than level 1 (BENCHMARKS.md, "Compression level").
const DEFAULT_LEVEL: i32 = -1;
const DEFAULT_MAX_VALUE_SIZE: usize = 16 * 1024 * 1024;

/// How the body is stored, as written in the flags byte. New formats get a new tag, so bytes
/// written by older and newer builds can be told apart rather than misread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Compression {
    None = 0,
    Zstd = 1,
}

impl TryFrom<u8> for Compression {
    type Error = DecodeError;

    fn try_from(flags: u8) -> std::result::Result<Self, DecodeError> {
        match flags {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Zstd),
            other => Err(DecodeError::UnknownFlags(other)),
        }
    }
}

thread_local! {
    // A fresh zstd context per call costs 1.7-3.8x a reused one (8-10 µs more a call, BENCHMARKS.md),
    // so each thread keeps one.
    static COMPRESSOR: RefCell<Option<(i32, Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Encodes values into tierkit's stored envelope and decodes them back.
///
/// Cheap to clone and safe to share between threads; compression contexts are kept per thread,
/// not per codec.
///
/// # Examples
///
/// ```
/// use tierkit::Codec;
///
/// let codec = Codec::new();
/// let bytes = codec.encode(&("alice", 42u32))?;
/// let back: (String, u32) = codec.decode(&bytes)?;
/// assert_eq!(back, ("alice".to_string(), 42));
/// # Ok::<(), tierkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Codec {
    compress_threshold: usize,
    level: i32,
    max_value_size: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            compress_threshold: DEFAULT_COMPRESS_THRESHOLD,
            level: DEFAULT_LEVEL,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
        }
    }
}

/// What [`Codec::encode_with_info`] did with a value, for counting bytes saved by compression.
///
/// # Examples
///
/// ```
/// use tierkit::Codec;
///
/// let (bytes, info) = Codec::new().encode_with_info(&"short")?;
/// assert!(!info.compressed);
/// assert_eq!(info.stored_len, bytes.len());
/// assert!(info.body_len < info.stored_len);
/// # Ok::<(), tierkit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncodeInfo {
    /// Length of the uncompressed bincode body in bytes.
    pub body_len: usize,
    /// Length of the whole stored envelope in bytes (header included).
    pub stored_len: usize,
    /// Whether the body was zstd-compressed.
    pub compressed: bool,
}

/// What an envelope's header says, from [`Codec::envelope`]: read without decoding the value.
///
/// # Examples
///
/// ```
/// use tierkit::Codec;
///
/// let header = Codec::envelope(&Codec::new().encode(&42u64)?)?;
/// assert_eq!((header.version, header.flags, header.compressed), (1, 0, false));
/// assert_eq!(header.body_len, Some(1)); // bincode's varint of 42
/// # Ok::<(), tierkit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope {
    /// The format version (`1` today).
    pub version: u8,
    /// The flags byte as stored: bit 0 zstd, `0b10` sealed.
    pub flags: u8,
    /// Whether the body is zstd-compressed.
    pub compressed: bool,
    /// The id of the key that sealed it, when encrypted ([`Keyring`]).
    pub key_id: Option<u8>,
    /// The whole envelope's length in bytes, header included.
    pub stored_len: usize,
    /// The body's length once decompressed (what the header declares for a compressed one);
    /// `None` when sealed (open it first) or not representable on this platform.
    pub body_len: Option<usize>,
}

impl Codec {
    /// A codec with the default settings (see [`CodecBuilder`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use tierkit::Codec;
    ///
    /// let codec = Codec::new();
    /// assert_eq!(codec.compress_threshold(), 1024);
    /// assert_eq!(codec.level(), -1);
    /// assert_eq!(codec.max_value_size(), 16 * 1024 * 1024);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a [`CodecBuilder`] with the default settings.
    ///
    /// # Examples
    ///
    /// ```
    /// use tierkit::Codec;
    ///
    /// let codec = Codec::builder().compress_threshold(4096).level(3).build()?;
    /// assert_eq!(codec.level(), 3);
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn builder() -> CodecBuilder {
        CodecBuilder::default()
    }

    /// Bodies of at least this many bytes are tried with zstd.
    pub fn compress_threshold(&self) -> usize {
        self.compress_threshold
    }

    /// The zstd compression level.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// The largest body, in bytes, that is encoded or decoded.
    pub fn max_value_size(&self) -> usize {
        self.max_value_size
    }

    /// Encodes `value` into a stored envelope.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] if the bincode body exceeds [`max_value_size`](Self::max_value_size);
    /// [`Error::Encode`] if serde or bincode refuse the value (for example a sequence of unknown
    /// length).
    ///
    /// # Examples
    ///
    /// ```
    /// use tierkit::Codec;
    ///
    /// let bytes = Codec::new().encode(&vec![1u8, 2, 3])?;
    /// assert_eq!(&bytes[..2], b"TK");
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        self.encode_with_info(value).map(|(bytes, _)| bytes)
    }

    /// Encodes `value` like [`encode`](Self::encode) and also tells how it was stored.
    ///
    /// # Errors
    ///
    /// As for [`encode`](Self::encode).
    ///
    /// # Examples
    ///
    /// ```
    /// use tierkit::Codec;
    ///
    /// let value = "abc".repeat(10_000);
    /// let (bytes, info) = Codec::new().encode_with_info(&value)?;
    /// assert!(info.compressed);
    /// assert_eq!(info.stored_len, bytes.len());
    /// assert!(info.stored_len < info.body_len);
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn encode_with_info<T: Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<(Vec<u8>, EncodeInfo)> {
        let mut writer = BodyWriter {
            out: Vec::with_capacity(128),
            body_len: 0,
            max: self.max_value_size,
        };
        writer.out.extend_from_slice(&MAGIC);
        writer.out.push(VERSION);
        writer.out.push(Compression::None as u8);
        bincode::serde::encode_into_writer(value, &mut writer, bincode::config::standard())
            .map_err(|e| Error::Encode(e.to_string()))?;

        let BodyWriter { out, body_len, .. } = writer;
        if body_len > self.max_value_size {
            return Err(Error::TooLarge {
                size: body_len,
                max: self.max_value_size,
            });
        }
        let body = out.get(RAW_HEADER_LEN..).unwrap_or_default();
        let zstd = if body_len >= self.compress_threshold {
            self.compress(body)
        } else {
            None
        };
        let (out, compressed) = match zstd {
            Some(zstd) => (zstd, true),
            None => (out, false),
        };
        let info = EncodeInfo {
            body_len,
            stored_len: out.len(),
            compressed,
        };
        Ok((out, info))
    }

    /// The length of `value`'s uncompressed envelope, found by serializing into a counter:
    /// nothing is allocated and nothing compressed. For an entry that is only kept in process
    /// (embedded mode), where the bytes themselves are never needed.
    ///
    /// # Errors
    ///
    /// As for [`encode`](Self::encode).
    pub(crate) fn measure<T: Serialize + ?Sized>(&self, value: &T) -> Result<usize> {
        let mut counter = Counter { len: 0 };
        bincode::serde::encode_into_writer(value, &mut counter, bincode::config::standard())
            .map_err(|e| Error::Encode(e.to_string()))?;
        if counter.len > self.max_value_size {
            return Err(Error::TooLarge {
                size: counter.len,
                max: self.max_value_size,
            });
        }
        Ok(RAW_HEADER_LEN + counter.len)
    }

    /// The compressed envelope of `body`, or `None` when compression does not make the envelope
    /// smaller (or fails, which leaves the raw envelope as a correct answer).
    fn compress(&self, body: &[u8]) -> Option<Vec<u8>> {
        // The compressed envelope carries 4 more header bytes, so the frame must undercut the
        // body by more than that. Giving zstd only that much room makes it give up early on
        // incompressible data instead of finishing a frame we would throw away.
        let room = body
            .len()
            .checked_sub(ZSTD_HEADER_LEN - RAW_HEADER_LEN + 1)?;
        let declared = u32::try_from(body.len()).ok()?;
        let mut out = Vec::with_capacity(ZSTD_HEADER_LEN + room);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(Compression::Zstd as u8);
        out.extend_from_slice(&declared.to_le_bytes());
        let mut cursor = Cursor::new(out);
        cursor.set_position(ZSTD_HEADER_LEN as u64);
        let written = compress_into(self.level, body, &mut cursor).ok()?;
        let out = cursor.into_inner();
        (written <= room && out.len() == ZSTD_HEADER_LEN + written).then_some(out)
    }

    /// The length of the uncompressed body `bytes` carry, read from the envelope header
    /// without decoding: what the value weighs once decoded, whether or not it was compressed.
    /// `None` for bytes that are not an envelope of this format.
    pub(crate) fn body_len(bytes: &[u8]) -> Option<usize> {
        Codec::envelope(bytes).ok()?.body_len
    }

    /// Decodes a stored envelope back into a value.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] with the [`DecodeError`] that says what is wrong with the bytes;
    /// [`Error::TooLarge`] if the body (or the uncompressed length a compressed envelope declares)
    /// exceeds [`max_value_size`](Self::max_value_size).
    ///
    /// # Examples
    ///
    /// ```
    /// use tierkit::{Codec, DecodeError, Error};
    ///
    /// let codec = Codec::new();
    /// let n: u64 = codec.decode(&codec.encode(&7u64)?)?;
    /// assert_eq!(n, 7);
    ///
    /// let err = codec.decode::<u64>(b"not ours").unwrap_err();
    /// assert!(matches!(err, Error::Decode(DecodeError::Foreign)));
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        decode_body(&self.body_bytes(bytes)?)
    }

    /// What the header of the envelope `bytes` says (format version, flags, sizes, the id of
    /// the key that sealed it), read without decoding the value, so without knowing its type:
    /// for operators' tools, such as the `tierkit` command-line tool's `inspect`.
    ///
    /// # Errors
    ///
    /// The [`DecodeError`] that says why `bytes` are no envelope this build reads: too short,
    /// foreign, a newer format version, unknown flags.
    ///
    /// # Examples
    ///
    /// ```
    /// use tierkit::{Codec, DecodeError};
    ///
    /// let codec = Codec::new();
    /// let big = codec.encode(&"abc".repeat(1000))?;
    /// let header = Codec::envelope(&big)?;
    /// assert_eq!((header.version, header.compressed, header.key_id), (1, true, None));
    /// assert_eq!(header.stored_len, big.len());
    /// assert_eq!(header.body_len, Some(codec.body(&big)?.len()));
    /// assert_eq!(Codec::envelope(b"{\"json\":1}"), Err(DecodeError::Foreign));
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn envelope(bytes: &[u8]) -> std::result::Result<Envelope, DecodeError> {
        let (&[m0, m1, version, flags], rest) = bytes
            .split_first_chunk::<RAW_HEADER_LEN>()
            .ok_or(DecodeError::Truncated(bytes.len()))?;
        if [m0, m1] != MAGIC {
            return Err(DecodeError::Foreign);
        }
        if version > VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        if version == 0 {
            return Err(DecodeError::Corrupt(
                "format version 0 was never written".into(),
            ));
        }
        let mut header = Envelope {
            version,
            flags,
            compressed: false,
            key_id: None,
            stored_len: bytes.len(),
            body_len: None,
        };
        if flags == keyring::SEALED {
            let id = rest.first().ok_or(DecodeError::Truncated(bytes.len()))?;
            header.key_id = Some(*id);
            return Ok(header);
        }
        match Compression::try_from(flags)? {
            Compression::None => header.body_len = Some(rest.len()),
            Compression::Zstd => {
                let (declared, _) = rest
                    .split_first_chunk::<4>()
                    .ok_or(DecodeError::Truncated(bytes.len()))?;
                header.compressed = true;
                header.body_len = usize::try_from(u32::from_le_bytes(*declared)).ok();
            }
        }
        Ok(header)
    }

    /// The body of the envelope `bytes`, decompressed but not deserialized: the value's bincode
    /// encoding, which is not self-describing, so only a reader that knows the type can make
    /// sense of it. For operators' tools (a hex preview); services read with
    /// [`decode`](Self::decode).
    ///
    /// # Errors
    ///
    /// As [`decode`](Self::decode), except that nothing is deserialized: a sealed envelope is
    /// [`DecodeError::Sealed`] (open it with [`Keyring::open`] first).
    ///
    /// # Examples
    ///
    /// ```
    /// use tierkit::Codec;
    ///
    /// let codec = Codec::new();
    /// // bincode writes a string as its length, then its bytes.
    /// assert_eq!(codec.body(&codec.encode("hi")?)?, b"\x02hi");
    /// # Ok::<(), tierkit::Error>(())
    /// ```
    pub fn body(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        self.body_bytes(bytes).map(std::borrow::Cow::into_owned)
    }

    /// The body of an envelope, borrowed when it is stored uncompressed.
    fn body_bytes<'a>(&self, bytes: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>> {
        let (&[m0, m1, version, flags], rest) = bytes
            .split_first_chunk::<RAW_HEADER_LEN>()
            .ok_or(DecodeError::Truncated(bytes.len()))?;
        if [m0, m1] != MAGIC {
            return Err(DecodeError::Foreign.into());
        }
        if version > VERSION {
            return Err(DecodeError::UnsupportedVersion(version).into());
        }
        if version == 0 {
            return Err(DecodeError::Corrupt("format version 0 was never written".into()).into());
        }
        if flags == keyring::SEALED {
            return Err(DecodeError::Sealed.into());
        }
        match Compression::try_from(flags)? {
            Compression::None => {
                self.check_size(rest.len())?;
                Ok(std::borrow::Cow::Borrowed(rest))
            }
            Compression::Zstd => {
                let (declared, frame) = rest
                    .split_first_chunk::<4>()
                    .ok_or(DecodeError::Truncated(bytes.len()))?;
                let declared = usize::try_from(u32::from_le_bytes(*declared)).unwrap_or(usize::MAX);
                // The declared length bounds the output buffer, so a small frame that inflates
                // to gigabytes is refused before any of it is produced.
                self.check_size(declared)?;
                decompress(frame, declared).map(std::borrow::Cow::Owned)
            }
        }
    }

    fn check_size(&self, size: usize) -> Result<()> {
        if size > self.max_value_size {
            Err(Error::TooLarge {
                size,
                max: self.max_value_size,
            })
        } else {
            Ok(())
        }
    }
}

/// Collects the bincode body after the header. Past the maximum it only counts, so an oversized
/// value is refused with its exact size without ever being held in memory.
struct BodyWriter {
    out: Vec<u8>,
    body_len: usize,
    max: usize,
}

impl Writer for BodyWriter {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), bincode::error::EncodeError> {
        self.body_len = self.body_len.saturating_add(bytes.len());
        if self.body_len <= self.max {
            self.out.extend_from_slice(bytes);
        }
        Ok(())
    }
}

/// Counts what bincode writes and keeps nothing.
struct Counter {
    len: usize,
}

impl Writer for Counter {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), bincode::error::EncodeError> {
        self.len = self.len.saturating_add(bytes.len());
        Ok(())
    }
}

fn compress_into(level: i32, src: &[u8], dst: &mut Cursor<Vec<u8>>) -> io::Result<usize> {
    let cached = COMPRESSOR.try_with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        Some(compress_cached(&mut slot, level, src, &mut *dst))
    });
    match cached {
        Ok(Some(result)) => result,
        // Only while the thread is being torn down: no cache to use, so pay for a fresh context.
        _ => Compressor::new(level)?.compress_to_buffer(src, dst),
    }
}

fn compress_cached(
    slot: &mut Option<(i32, Compressor<'static>)>,
    level: i32,
    src: &[u8],
    dst: &mut Cursor<Vec<u8>>,
) -> io::Result<usize> {
    let pair = match slot.take() {
        Some(pair) => pair,
        None => (level, Compressor::new(level)?),
    };
    let (cached_level, compressor) = slot.insert(pair);
    if *cached_level != level {
        if compressor.set_compression_level(level).is_err() {
            // zstd refuses parameter changes on a context left mid-frame; start clean instead.
            *compressor = Compressor::new(level)?;
        }
        *cached_level = level;
    }
    compressor.compress_to_buffer(src, dst)
}

fn decompress(frame: &[u8], declared: usize) -> Result<Vec<u8>> {
    let mut body = Vec::with_capacity(declared);
    let cached = DECOMPRESSOR.try_with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        let decompressor = match slot.take() {
            Some(d) => d,
            None => match Decompressor::new() {
                Ok(d) => d,
                Err(e) => return Some(Err(e)),
            },
        };
        Some(
            slot.insert(decompressor)
                .decompress_to_buffer(frame, &mut body),
        )
    });
    let written = match cached {
        Ok(Some(result)) => result,
        _ => Decompressor::new().and_then(|mut d| d.decompress_to_buffer(frame, &mut body)),
    }
    .map_err(|e| DecodeError::Corrupt(format!("zstd: {e}")))?;
    if written != declared || body.len() != declared {
        return Err(DecodeError::Corrupt(format!(
            "body decompressed to {written} bytes, header declared {declared}"
        ))
        .into());
    }
    Ok(body)
}

/// Decodes a whole bincode body, refusing trailing bytes.
fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    // bincode allocates a string or byte buffer at the length its prefix claims before reading
    // it, and without a limit a forged prefix aborts the process on allocation failure. Every
    // such buffer lies inside the body, so a limit of at least the body length never refuses
    // valid data; a few fixed buckets (the limit is a const generic) keep the worst case within
    // 64 KiB for small bodies and near the body size for large ones.
    const SMALL: usize = 64 * 1024;
    const MEDIUM: usize = DEFAULT_MAX_VALUE_SIZE;
    const LARGE: usize = u32::MAX as usize;
    let config = bincode::config::standard();
    let decoded = if body.len() <= SMALL {
        bincode::serde::decode_from_slice(body, config.with_limit::<SMALL>())
    } else if body.len() <= MEDIUM {
        bincode::serde::decode_from_slice(body, config.with_limit::<MEDIUM>())
    } else {
        bincode::serde::decode_from_slice(body, config.with_limit::<LARGE>())
    };
    let (value, read) = decoded.map_err(|e| DecodeError::Corrupt(format!("bincode: {e}")))?;
    if read != body.len() {
        return Err(DecodeError::Corrupt(format!(
            "{} trailing bytes after the value",
            body.len().saturating_sub(read)
        ))
        .into());
    }
    Ok(value)
}

/// Settings for a [`Codec`]; start with [`Codec::builder`].
///
/// # Examples
///
/// ```
/// use tierkit::codec::CodecBuilder;
///
/// let codec = CodecBuilder::default()
///     .compress_threshold(512)
///     .level(3)
///     .max_value_size(1024 * 1024)
///     .build()?;
/// assert_eq!(codec.max_value_size(), 1024 * 1024);
///
/// let err = CodecBuilder::default().level(0).build().unwrap_err();
/// assert!(err.to_string().contains("compression_level"));
/// # Ok::<(), tierkit::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct CodecBuilder {
    compress_threshold: usize,
    level: i32,
    max_value_size: usize,
}

impl Default for CodecBuilder {
    fn default() -> Self {
        let Codec {
            compress_threshold,
            level,
            max_value_size,
        } = Codec::default();
        CodecBuilder {
            compress_threshold,
            level,
            max_value_size,
        }
    }
}

impl CodecBuilder {
    /// Bodies of at least this many bytes are tried with zstd; the result is kept only if it is
    /// smaller. `usize::MAX` turns compression off.
    ///
    /// Default: 1024 bytes.
    pub fn compress_threshold(mut self, bytes: usize) -> Self {
        self.compress_threshold = bytes;
        self
    }

    /// The zstd compression level: 1 (fast) to 22 (smallest), or a negative one, zstd's fast
    /// levels (`--fast=N` on its command line), which store literals instead of entropy-coding
    /// them: faster both ways, somewhat larger. 0 is refused: zstd reads it as "its default",
    /// which is not a level of its own. The level is not part of the stored format, so
    /// instances with different levels read each other's values.
    ///
    /// Default: -1.
    pub fn level(mut self, level: i32) -> Self {
        self.level = level;
        self
    }

    /// The largest bincode body, in bytes, that is encoded or decoded; larger values give
    /// [`Error::TooLarge`]. At most `u32::MAX`, since the envelope stores lengths in 4 bytes.
    ///
    /// Default: 16 MiB.
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// Checks the settings and builds the [`Codec`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `compression_level` if the level is 0 or outside zstd's range
    /// (about -131072 to 22), or
    /// `max_value_size` if the maximum is 0 or above `u32::MAX`.
    pub fn build(self) -> Result<Codec> {
        let levels = zstd::compression_level_range();
        if self.level == 0 || !levels.contains(&self.level) {
            return Err(Error::config(
                "compression_level",
                format!(
                    "{} is not a zstd level; use 1 to {} (larger is smaller and slower) or a \
                     fast level, -1 to {}",
                    self.level,
                    levels.end(),
                    levels.start()
                ),
            ));
        }
        if self.max_value_size == 0 || u32::try_from(self.max_value_size).is_err() {
            return Err(Error::config(
                "max_value_size",
                format!(
                    "{} bytes is out of range; use 1 to {} bytes",
                    self.max_value_size,
                    u32::MAX
                ),
            ));
        }
        Ok(Codec {
            compress_threshold: self.compress_threshold,
            level: self.level,
            max_value_size: self.max_value_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_length_is_read_from_the_header_on_both_paths() {
        let codec = Codec::new();
        let small = "short".to_string();
        let (bytes, info) = codec.encode_with_info(&small).unwrap();
        assert!(!info.compressed);
        assert_eq!(Codec::body_len(&bytes), Some(info.body_len));
        let big = "a".repeat(1 << 20);
        let (bytes, info) = codec.encode_with_info(&big).unwrap();
        assert!(info.compressed && bytes.len() < info.body_len / 100);
        assert_eq!(Codec::body_len(&bytes), Some(info.body_len));
        assert_eq!(Codec::body_len(b"not ours"), None);
        assert_eq!(Codec::body_len(b"TK"), None);
    }

    #[test]
    fn the_envelope_header_reads_without_the_type() {
        let codec = Codec::new();
        let big = "a".repeat(1 << 20);
        let (bytes, info) = codec.encode_with_info(&big).unwrap();
        let header = Codec::envelope(&bytes).unwrap();
        assert!(header.compressed && header.key_id.is_none());
        assert_eq!(
            (header.body_len, header.stored_len),
            (Some(info.body_len), bytes.len())
        );
        let body = codec.body(&bytes).unwrap();
        assert_eq!(body.len(), info.body_len);
        let keys = Keyring::new([(7, [1u8; KEY_LEN].as_slice())]).unwrap();
        let sealed = keys.seal(&bytes, b"ctx").unwrap();
        let header = Codec::envelope(&sealed).unwrap();
        assert_eq!((header.key_id, header.body_len), (Some(7), None));
        assert!(matches!(
            codec.body(&sealed),
            Err(Error::Decode(DecodeError::Sealed))
        ));
        assert_eq!(Codec::envelope(b"TK"), Err(DecodeError::Truncated(2)));
        assert_eq!(
            Codec::envelope(b"TK\x09\x00"),
            Err(DecodeError::UnsupportedVersion(9))
        );
        assert_eq!(
            Codec::envelope(b"TK\x01\x40"),
            Err(DecodeError::UnknownFlags(0x40))
        );
        assert_eq!(
            Codec::envelope(b"TK\x01\x01\x00"),
            Err(DecodeError::Truncated(5))
        );
    }

    #[test]
    fn measure_is_the_uncompressed_envelope_and_keeps_the_size_limit() {
        let codec = Codec::new();
        for value in [String::new(), "x".repeat(10), "abc".repeat(10_000)] {
            let len = codec.measure(&value).unwrap();
            let raw = Codec::builder()
                .compress_threshold(usize::MAX)
                .build()
                .unwrap()
                .encode(&value)
                .unwrap();
            assert_eq!(len, raw.len());
        }
        let small = Codec::builder().max_value_size(64).build().unwrap();
        let err = small.measure(&"x".repeat(100)).unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { size: 101, max: 64 }),
            "{err:?}"
        );
    }

    /// Deterministic bytes that zstd cannot shrink.
    fn noise(len: usize) -> Vec<u8> {
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect()
    }

    fn decode_err(codec: &Codec, bytes: &[u8]) -> DecodeError {
        match codec.decode::<String>(bytes) {
            Err(Error::Decode(e)) => e,
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    #[test]
    fn small_value_is_stored_raw() {
        let codec = Codec::new();
        let (bytes, info) = codec.encode_with_info("hello").unwrap();
        assert!(!info.compressed);
        assert_eq!(bytes.get(..4), Some(&[b'T', b'K', 1, 0][..]));
        assert_eq!(info.stored_len, bytes.len());
        assert_eq!(info.body_len + RAW_HEADER_LEN, bytes.len());
        assert_eq!(codec.decode::<String>(&bytes).unwrap(), "hello");
    }

    #[test]
    fn repetitive_value_is_compressed_and_smaller() {
        let codec = Codec::new();
        let value = "0123456789abcdef".repeat(4096);
        let (bytes, info) = codec.encode_with_info(&value).unwrap();
        assert!(info.compressed);
        assert!(info.body_len >= 64 * 1024);
        assert!(bytes.len() * 10 < info.body_len, "{} bytes", bytes.len());
        assert_eq!(bytes.get(3), Some(&1));
        let declared = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        assert_eq!(declared as usize, info.body_len);
        assert_eq!(codec.decode::<String>(&bytes).unwrap(), value);
    }

    #[test]
    fn incompressible_value_is_stored_raw() {
        let codec = Codec::new();
        let value = noise(64 * 1024);
        let (bytes, info) = codec.encode_with_info(&value).unwrap();
        assert!(!info.compressed);
        assert_eq!(info.stored_len, info.body_len + RAW_HEADER_LEN);
        assert_eq!(codec.decode::<Vec<u8>>(&bytes).unwrap(), value);
        // The same thread's cached compressor still works after zstd gave up on a frame.
        let (_, info) = codec.encode_with_info(&"x".repeat(4096)).unwrap();
        assert!(info.compressed);
    }

    #[test]
    fn threshold_and_level_are_honoured() {
        let value = "ab".repeat(2000);
        let off = Codec::builder()
            .compress_threshold(usize::MAX)
            .build()
            .unwrap();
        assert!(!off.encode_with_info(&value).unwrap().1.compressed);
        // Alternating levels on one thread reuses one context; both must round-trip.
        for level in [1, 19, -1, 3, -5] {
            let codec = Codec::builder().level(level).build().unwrap();
            let (bytes, info) = codec.encode_with_info(&value).unwrap();
            assert!(info.compressed);
            assert_eq!(codec.decode::<String>(&bytes).unwrap(), value);
            // Any codec reads any level: the level is not part of the format.
            assert_eq!(off.decode::<String>(&bytes).unwrap(), value);
        }
    }

    #[test]
    fn truncated() {
        let codec = Codec::new();
        assert_eq!(decode_err(&codec, b""), DecodeError::Truncated(0));
        assert_eq!(decode_err(&codec, b"TK\x01"), DecodeError::Truncated(3));
        assert_eq!(
            decode_err(&codec, b"TK\x01\x01\x00\x00"),
            DecodeError::Truncated(6)
        );
    }

    #[test]
    fn foreign() {
        let codec = Codec::new();
        assert_eq!(decode_err(&codec, b"{\"json\":1}"), DecodeError::Foreign);
    }

    #[test]
    fn unsupported_version() {
        let codec = Codec::new();
        assert_eq!(
            decode_err(&codec, b"TK\x02\x00\x00"),
            DecodeError::UnsupportedVersion(2)
        );
        assert!(matches!(
            decode_err(&codec, b"TK\x00\x00\x00"),
            DecodeError::Corrupt(_)
        ));
    }

    #[test]
    fn unknown_flags() {
        let codec = Codec::new();
        assert_eq!(
            decode_err(&codec, b"TK\x01\x04\x00"),
            DecodeError::UnknownFlags(4)
        );
        // Flag 0b10 is a sealed envelope: the codec alone cannot open it.
        assert_eq!(decode_err(&codec, b"TK\x01\x02\x00"), DecodeError::Sealed);
        assert_eq!(
            decode_err(&codec, b"TK\x01\x81\x00"),
            DecodeError::UnknownFlags(0x81)
        );
    }

    #[test]
    fn corrupt() {
        let codec = Codec::new();
        let good = codec.encode("hello").unwrap();

        // Trailing bytes after a complete value.
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(
            matches!(decode_err(&codec, &trailing), DecodeError::Corrupt(m) if m.contains("trailing"))
        );

        // A body cut short.
        assert!(matches!(
            decode_err(&codec, &good[..good.len() - 1]),
            DecodeError::Corrupt(_)
        ));

        // Invalid UTF-8 for a String.
        assert!(matches!(
            decode_err(&codec, b"TK\x01\x00\x01\xff"),
            DecodeError::Corrupt(_)
        ));

        // A string length prefix far beyond the body must be refused, not allocated.
        let mut huge = b"TK\x01\x00\xfd".to_vec();
        huge.extend_from_slice(&(1u64 << 46).to_le_bytes());
        assert!(matches!(decode_err(&codec, &huge), DecodeError::Corrupt(_)));

        // A zstd flag over bytes that are no zstd frame.
        let mut bad_frame = b"TK\x01\x01".to_vec();
        bad_frame.extend_from_slice(&10u32.to_le_bytes());
        bad_frame.extend_from_slice(b"not zstd at all");
        assert!(
            matches!(decode_err(&codec, &bad_frame), DecodeError::Corrupt(m) if m.contains("zstd"))
        );

        // A valid frame whose declared length is wrong either way.
        let compressible = codec.encode(&"z".repeat(5000)).unwrap();
        for declared in [4000u32, 6000] {
            let mut lying = compressible.clone();
            lying[4..8].copy_from_slice(&declared.to_le_bytes());
            assert!(matches!(
                decode_err(&codec, &lying),
                DecodeError::Corrupt(_)
            ));
        }
    }

    #[test]
    fn too_large_on_encode() {
        let codec = Codec::builder().max_value_size(100).build().unwrap();
        assert!(codec.encode(&vec![7u8; 98]).is_ok()); // 98 + 1 length byte = 99
        match codec.encode(&vec![7u8; 1000]) {
            Err(Error::TooLarge { size, max }) => {
                assert_eq!(size, 1000 + 3); // varint length prefix of 1000 takes 3 bytes
                assert_eq!(max, 100);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn too_large_on_decode() {
        let small = Codec::builder().max_value_size(100).build().unwrap();
        let big = Codec::new();

        let raw = big.encode(&noise(1000)).unwrap();
        assert!(matches!(
            small.decode::<Vec<u8>>(&raw),
            Err(Error::TooLarge { max: 100, .. })
        ));

        // A forged header declaring 4 GiB of body behind a tiny frame: refused before
        // any buffer is allocated.
        let mut bomb = b"TK\x01\x01".to_vec();
        bomb.extend_from_slice(&u32::MAX.to_le_bytes());
        bomb.extend_from_slice(b"\x28\xb5\x2f\xfd");
        match big.decode::<Vec<u8>>(&bomb) {
            Err(Error::TooLarge { size, max }) => {
                assert_eq!(size, u32::MAX as usize);
                assert_eq!(max, DEFAULT_MAX_VALUE_SIZE);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn builder_validation_names_the_field() {
        for level in [0, 23, i32::MIN, i32::MAX] {
            match Codec::builder().level(level).build() {
                Err(Error::Config { field, .. }) => assert_eq!(field, "compression_level"),
                other => panic!("level {level}: expected a config error, got {other:?}"),
            }
        }
        let too_big = usize::try_from(u64::from(u32::MAX) + 1).ok();
        for max in [Some(0), too_big].into_iter().flatten() {
            match Codec::builder().max_value_size(max).build() {
                Err(Error::Config { field, .. }) => assert_eq!(field, "max_value_size"),
                other => panic!("max {max}: expected a config error, got {other:?}"),
            }
        }
        assert!(Codec::builder()
            .level(22)
            .max_value_size(u32::MAX as usize)
            .build()
            .is_ok());
    }

    #[test]
    fn codec_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Codec>();
    }
}
