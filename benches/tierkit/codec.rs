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
    let frame = zstd::bulk::compress(&body, 1).unwrap();
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
