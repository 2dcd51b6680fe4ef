//! Compression context reuse: tierkit's codec (bincode + zstd with one compression and one
//! decompression context kept per thread) next to the same envelope made with a fresh zstd
//! context per call (`zstd::bulk::compress` / `zstd::bulk::decompress`), on 1 KiB and 16 KiB
//! values that compress.

use criterion::{BenchmarkId, Criterion, Throughput};
use tierkit::Codec;

use crate::cache::{payload, Payload};
use crate::runtimes;

/// The envelope tierkit writes for a compressed value (see `src/codec.rs`): magic, version,
/// flags = zstd, the body's length, then the zstd frame of the bincode body; made here with a
/// fresh compression context.
fn encode_fresh(value: &Payload) -> Vec<u8> {
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap();
    let frame = zstd::bulk::compress(&body, Codec::new().level()).unwrap();
    let mut out = Vec::with_capacity(8 + frame.len());
    out.extend_from_slice(b"TK\x01\x01");
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&frame);
    out
}

/// Decodes that envelope with a fresh decompression context.
fn decode_fresh(bytes: &[u8]) -> Payload {
    let len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    let body = zstd::bulk::decompress(&bytes[8..], len).unwrap();
    bincode::serde::decode_from_slice(&body, bincode::config::standard())
        .unwrap()
        .0
}

pub fn context_reuse(c: &mut Criterion) {
    let codec = Codec::new();
    for (flavor, rt) in runtimes() {
        for size in [1024usize, 16 * 1024] {
            let mut group = c.benchmark_group(format!("codec_{}KiB/{flavor}", size / 1024));
            group.throughput(Throughput::Elements(1));
            let value = payload(7, size);
            let (stored, info) = codec.encode_with_info(&value).unwrap();
            assert!(info.compressed, "the bench value must take the zstd path");
            // Both sides write the same format, so each can read the other's bytes.
            assert_eq!(decode_fresh(&stored), value);
            let fresh = encode_fresh(&value);
            assert_eq!(codec.decode::<Payload>(&fresh).unwrap(), value);

            group.bench_function(BenchmarkId::new("fresh_context", "encode"), |b| {
                b.to_async(&rt).iter(|| async { encode_fresh(&value) })
            });
            group.bench_function(BenchmarkId::new("tierkit", "encode"), |b| {
                b.to_async(&rt)
                    .iter(|| async { codec.encode(&value).unwrap() })
            });
            group.bench_function(BenchmarkId::new("fresh_context", "decode"), |b| {
                b.to_async(&rt).iter(|| async { decode_fresh(&stored) })
            });
            group.bench_function(BenchmarkId::new("tierkit", "decode"), |b| {
                b.to_async(&rt)
                    .iter(|| async { codec.decode::<Payload>(&stored).unwrap() })
            });
            group.finish();
        }
    }
}

/// Encryption's cost on a 1 KiB value: tierkit's codec with and without sealing, next to the
/// raw AEAD (XChaCha20-Poly1305 in place on a reused buffer, fixed nonce: the fastest use of
/// the cipher) on the very bytes tierkit seals. Encryption's own overhead is
/// `tierkit_encrypted - tierkit_plain - raw_aead`.
pub fn encryption(c: &mut Criterion) {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};
    use tierkit::codec::Keyring;

    let value = payload(7, 1024);
    let context = b"tierkit:c:profiles:v1:user:1234";
    let keys = Keyring::new([(1, [7u8; 32].as_slice())]).unwrap();
    let cipher = XChaCha20Poly1305::new_from_slice(&[7u8; 32]).unwrap();
    let nonce = XNonce::default();
    // The value compressed (the default codec) and stored raw (compression off), so the cipher
    // also runs over the whole kilobyte.
    let raw = Codec::builder()
        .compress_threshold(usize::MAX)
        .build()
        .unwrap();
    for (stored, codec) in [("zstd", Codec::new()), ("raw", raw)] {
        let envelope = codec.encode(&value).unwrap();
        let mut group = c.benchmark_group(format!("codec_encrypted_1KiB/{stored}"));
        group.throughput(Throughput::Bytes(envelope.len() as u64));
        let mut buf = Vec::with_capacity(envelope.len() + 16);
        group.bench_function("raw_aead_seal_open", |b| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(&envelope);
                let tag = cipher
                    .encrypt_in_place_detached(&nonce, context, &mut buf)
                    .unwrap();
                cipher
                    .decrypt_in_place_detached(&nonce, context, &mut buf, &tag)
                    .unwrap();
            })
        });
        group.bench_function("tierkit_plain_encode_decode", |b| {
            b.iter(|| {
                let bytes = codec.encode(&value).unwrap();
                codec.decode::<Payload>(&bytes).unwrap()
            })
        });
        group.bench_function("tierkit_encrypted_encode_decode", |b| {
            b.iter(|| {
                let sealed = keys.seal(&codec.encode(&value).unwrap(), context).unwrap();
                let opened = keys.open(&sealed, context).unwrap();
                codec.decode::<Payload>(&opened).unwrap()
            })
        });
        group.finish();
    }
}
