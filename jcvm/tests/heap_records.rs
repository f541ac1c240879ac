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
        tag in 3u8..=6,
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

/// A proxy record (an object of another context): the old form (owner, package, interfaces,
/// handle) decodes with no foreign interfaces and encodes to the same bytes; with a foreign
/// interface (package AID, class token) appended it round-trips too; cut short inside the
/// foreign list it is refused.
#[test]
fn proxy_records_of_both_forms_round_trip() {
    use kagi_jcvm::heap::{NativeState, Obj};
    let old = instance(
        6,
        &[3, 0xF0, 0x01, 0x02, 2, 0xF0, 0x09, 1, 0x00, 0x01, 0x23],
    );
    let o = decode(&old).expect("an old-form proxy");
    match &o {
        Obj::Instance {
            native:
                NativeState::Proxy {
                    handle,
                    foreign,
                    interfaces,
                    ..
                },
            ..
        } => {
            assert_eq!(*handle, 0x0123);
            assert_eq!(interfaces, &vec![0]);
            assert!(foreign.is_empty());
        }
        other => panic!("not a proxy: {other:?}"),
    }
    assert_eq!(encode(&o), old);
    let mut new = old.clone();
    new.extend_from_slice(&[1, 6, 0xF0, 0x6B, 0x61, 0x67, 0x69, 0x05, 0x00]);
    let o = decode(&new).expect("a proxy with a foreign interface");
    match &o {
        Obj::Instance {
            native: NativeState::Proxy { foreign, .. },
            ..
        } => assert_eq!(
            foreign,
            &vec![(vec![0xF0, 0x6B, 0x61, 0x67, 0x69, 0x05], 0)]
        ),
        other => panic!("not a proxy: {other:?}"),
    }
    assert_eq!(encode(&o), new);
    for n in old.len() + 1..new.len() {
        assert_eq!(decode(&new[..n]), None, "cut at {n}");
    }
}
