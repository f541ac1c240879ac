//! No input makes the parser panic: truncated, reordered and corrupted `.ijc` blocks and CAP
//! zips give a typed error (or, where the damage leaves a valid file, the right contents).

use kagi_cap::{CapError, CapFile, Component};
use proptest::prelude::*;
use std::path::Path;

fn data(rel: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(rel),
    )
    .unwrap()
}

fn empty_zip() -> Vec<u8> {
    data("gppro-empty/Empty_0102030405_8d5ac9e2_2.2.1.cap")
}

fn iso_zip() -> Vec<u8> {
    data("isoapplet-v0/isoapplet.cap")
}

/// The components of a block, split by their own headers (test helper, trusting the input).
fn split(mut block: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while block.len() >= 3 {
        let n = 3 + usize::from(u16::from_be_bytes([block[1], block[2]]));
        out.push(block[..n].to_vec());
        block = &block[n..];
    }
    out
}

#[test]
fn specific_damage_gives_specific_errors() {
    let block = CapFile::from_zip(&empty_zip())
        .unwrap()
        .load_file_data_block(true);
    // Header magic DECAFFED → DECAFFEE.
    let mut b = block.clone();
    b[6] = 0xEE;
    assert_eq!(CapFile::from_ijc(&b), Err(CapError::BadMagic(0xDECAFFEE)));
    // CAP format 2.4 (minor at offset 7).
    let mut b = block.clone();
    b[7] = 4;
    assert!(matches!(
        CapFile::from_ijc(&b),
        Err(CapError::UnsupportedVersion { major: 2, minor: 4 })
    ));
    // An unknown tag in place of the Directory.
    let mut b = block.clone();
    b[18] = 0x0D;
    assert_eq!(CapFile::from_ijc(&b), Err(CapError::UnknownTag(0x0D)));
    // The Header twice.
    let mut b = block[..18].to_vec();
    b.extend_from_slice(&block);
    assert_eq!(
        CapFile::from_ijc(&b),
        Err(CapError::Duplicate(Component::Header))
    );
    // Without the Method component.
    let parts: Vec<Vec<u8>> = split(&block).into_iter().filter(|c| c[0] != 7).collect();
    assert_eq!(
        CapFile::from_ijc(&parts.concat()),
        Err(CapError::Missing(Component::Method))
    );
    // A size that runs past the end.
    let mut b = block.clone();
    let last = b.len();
    b.truncate(last - 1);
    assert!(matches!(
        CapFile::from_ijc(&b),
        Err(CapError::SizeMismatch {
            component: Component::Descriptor,
            ..
        })
    ));
    // Not a zip at all, though it starts like one.
    assert!(matches!(
        CapFile::from_bytes(b"PK\x03\x04garbage"),
        Err(CapError::Zip(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn truncated_blocks(cut in 0usize..20_000) {
        let block = CapFile::from_zip(&iso_zip()).unwrap().load_file_data_block(true);
        let cut = cut % block.len();
        // Cut exactly between components and nothing required lost: the rest reads back.
        if let Ok(c) = CapFile::from_ijc(&block[..cut]) {
            prop_assert_eq!(c.load_file_data_block(true), block[..cut].to_vec());
        }
    }

    #[test]
    fn reordered_blocks_read_back_in_load_order(seed in any::<u64>()) {
        let cap = CapFile::from_zip(&iso_zip()).unwrap();
        let block = cap.load_file_data_block(true);
        let mut parts = split(&block);
        // A seeded Fisher-Yates shuffle.
        let mut s = seed | 1;
        for i in (1..parts.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            parts.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let again = CapFile::from_ijc(&parts.concat()).unwrap();
        prop_assert_eq!(again.load_file_data_block(true), block);
    }

    #[test]
    fn corrupted_blocks(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut block = CapFile::from_zip(&empty_zip()).unwrap().load_file_data_block(true);
        let n = block.len();
        for (at, x) in flips {
            block[at % n] ^= x;
        }
        let _ = CapFile::from_ijc(&block);
        let _ = CapFile::from_bytes(&block);
    }

    #[test]
    fn corrupted_zips(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut z = empty_zip();
        let n = z.len();
        for (at, x) in flips {
            z[at % n] ^= x;
        }
        let _ = CapFile::from_bytes(&z);
    }

    #[test]
    fn truncated_zips(cut in 0usize..4096) {
        let z = empty_zip();
        let cut = cut % z.len();
        // The central directory sits at the end: any strict prefix is unreadable.
        prop_assert!(CapFile::from_bytes(&z[..cut]).is_err());
    }

    #[test]
    fn arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = CapFile::from_bytes(&b);
        let mut z = b"PK\x03\x04".to_vec();
        z.extend(&b);
        let _ = CapFile::from_bytes(&z);
    }
}
