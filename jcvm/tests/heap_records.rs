//! Store records of heap objects, including the crypto objects (keys, engines, key pairs):
//! any bytes decode to an object or `None`, never a panic, and a decoded object encodes to a
//! record that decodes to the same object.

use kagi_jcvm::heap::{decode, encode};
use proptest::prelude::*;

/// An instance record header (class `Api(0)`, no cells, reason 0) followed by native state
/// tag `tag` and `rest`.
fn instance(tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![1, 1, 0, 0, 0, 0, 0, 0, tag];
    v.extend_from_slice(rest);
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn crypto_records_decode_or_refuse_and_round_trip(
        tag in 3u8..=5,
        rest in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let b = instance(tag, &rest);
        if let Some(o) = decode(&b) {
            prop_assert_eq!(decode(&encode(&o)), Some(o));
        }
    }

    #[test]
    fn any_bytes_decode_without_panic(b in proptest::collection::vec(any::<u8>(), 0..120)) {
        if let Some(o) = decode(&b) {
            prop_assert_eq!(decode(&encode(&o)), Some(o));
        }
    }
}

/// A key record written by hand (RSA public, 1024 bits, modulus 3 bytes, exponent 010001)
/// decodes, and its encoding is the same bytes.
#[test]
fn a_key_record_round_trips_byte_for_byte() {
    let b = instance(
        3,
        &[
            4, 4, 0x04, 0x00, 2, 1, 0, 3, 0xAA, 0xBB, 0xCC, 2, 0, 3, 1, 0, 1,
        ],
    );
    let o = decode(&b).expect("a key record");
    assert_eq!(encode(&o), b);
    // Cut short anywhere, it is refused.
    for n in 0..b.len() {
        assert_eq!(decode(&b[..n]), None, "cut at {n}");
    }
}
