//! Property tests of the codec through the public API: every value round-trips, and no input
//! bytes make decoding panic.

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tierkit::Codec;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Inner {
    Off,
    On(bool),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Kind {
    Unit,
    Tuple(u8, i64),
    Struct { label: String, inner: Inner },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    name: String,
    blob: Vec<u8>,
    ttl: Option<u64>,
    pairs: Vec<(i32, String)>,
    kind: Kind,
    score: f64,
}

/// Field-wise equality with `score` compared bit for bit, so NaN and -0.0 must survive too.
fn same(a: &Record, b: &Record) -> bool {
    a.name == b.name
        && a.blob == b.blob
        && a.ttl == b.ttl
        && a.pairs == b.pairs
        && a.kind == b.kind
        && a.score.to_bits() == b.score.to_bits()
}

fn inner() -> impl Strategy<Value = Inner> {
    prop_oneof![Just(Inner::Off), any::<bool>().prop_map(Inner::On)]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Unit),
        (any::<u8>(), any::<i64>()).prop_map(|(a, b)| Kind::Tuple(a, b)),
        (any::<String>(), inner()).prop_map(|(label, inner)| Kind::Struct { label, inner }),
    ]
}

/// Records from a few bytes to a few KiB; `repeat` makes some of them compress well.
fn record() -> impl Strategy<Value = Record> {
    (
        any::<String>(),
        1..64usize,
        prop::collection::vec(any::<u8>(), 0..2048),
        any::<Option<u64>>(),
        prop::collection::vec((any::<i32>(), "[a-z]{0,12}"), 0..64),
        kind(),
        any::<f64>(),
    )
        .prop_map(|(name, repeat, blob, ttl, pairs, kind, score)| Record {
            name: name.repeat(repeat),
            blob,
            ttl,
            pairs,
            kind,
            score,
        })
}

fn small_threshold() -> Codec {
    Codec::builder()
        .compress_threshold(16)
        .build()
        .expect("valid settings")
}

/// Decoding must return, never panic; which answer it gives does not matter here.
fn decode_all_ways(codec: &Codec, bytes: &[u8]) {
    let _ = codec.decode::<Record>(bytes);
    let _ = codec.decode::<String>(bytes);
    let _ = codec.decode::<Vec<u8>>(bytes);
    let _ = codec.decode::<(u64, Option<Kind>)>(bytes);
}

proptest! {
    #[test]
    fn round_trip_default_threshold(value in record()) {
        let codec = Codec::new();
        let (bytes, info) = codec.encode_with_info(&value).expect("encode");
        prop_assert_eq!(info.stored_len, bytes.len());
        let back: Record = codec.decode(&bytes).expect("decode");
        prop_assert!(same(&back, &value), "{:?} != {:?}", back, value);
    }

    #[test]
    fn round_trip_small_threshold(value in record()) {
        let codec = small_threshold();
        let (bytes, info) = codec.encode_with_info(&value).expect("encode");
        if info.compressed {
            prop_assert!(info.stored_len < info.body_len + 4);
        }
        let back: Record = codec.decode(&bytes).expect("decode");
        prop_assert!(same(&back, &value), "{:?} != {:?}", back, value);
        // The threshold is a write-side choice: a codec with other settings reads it all.
        let back: Record = Codec::new().decode(&bytes).expect("decode with defaults");
        prop_assert!(same(&back, &value));
    }

    #[test]
    fn repetitive_values_compress(unit in "[a-z]{1,8}", times in 64..512usize) {
        let value = unit.repeat(times);
        let codec = small_threshold();
        let (bytes, info) = codec.encode_with_info(&value).expect("encode");
        prop_assert!(info.compressed);
        prop_assert!(info.stored_len < info.body_len);
        prop_assert_eq!(codec.decode::<String>(&bytes).expect("decode"), value);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all_ways(&Codec::new(), &bytes);
    }

    #[test]
    fn bytes_behind_a_valid_header_never_panic(
        compressed in any::<bool>(),
        declared in prop_oneof![0..4096u32, any::<u32>()],
        zstd_magic in any::<bool>(),
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = b"TK\x01".to_vec();
        if compressed {
            bytes.push(1);
            bytes.extend_from_slice(&declared.to_le_bytes());
            if zstd_magic {
                bytes.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd]);
            }
        } else {
            bytes.push(0);
        }
        bytes.extend_from_slice(&body);
        decode_all_ways(&Codec::new(), &bytes);
    }

    #[test]
    fn damaged_encodings_never_panic(
        value in record(),
        small in any::<bool>(),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0..8u8), 1..4),
    ) {
        let codec = if small { small_threshold() } else { Codec::new() };
        let good = codec.encode(&value).expect("encode");

        decode_all_ways(&codec, &good[..cut.index(good.len() + 1)]);

        let mut flipped = good.clone();
        for (at, bit) in &flips {
            let at = at.index(flipped.len());
            flipped[at] ^= 1 << bit;
        }
        decode_all_ways(&codec, &flipped);
    }
}
