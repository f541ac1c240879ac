//! The full component model never panics: components truncated (with their size fixed up so
//! the container still reads) or with bytes overwritten give a typed error or a model, and the
//! method header reader and the disassembler take any offset and any bytes.

use kagi_cap::{CapFile, bytecode};
use proptest::prelude::*;
use std::path::Path;

fn block() -> Vec<u8> {
    let zip = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/isoapplet-v0/isoapplet-keyimport.cap"),
    )
    .unwrap();
    CapFile::from_zip(&zip).unwrap().load_file_data_block(true)
}

/// The components of a well-formed block (tag, size, info).
fn split(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while b.len() >= 3 {
        let n = 3 + usize::from(u16::from_be_bytes([b[1], b[2]]));
        out.push(b[..n].to_vec());
        b = &b[n..];
    }
    out
}

#[test]
fn the_real_file_models_without_error() {
    let cap = CapFile::from_ijc(&block()).unwrap();
    let m = cap.model().unwrap();
    assert_eq!(m.constant_pool.len(), 194);
    assert_eq!(m.classes.classes.len(), 14);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn truncated_components(which in 0usize..11, keep in 0usize..5000) {
        let mut parts = split(&block());
        let i = which % parts.len();
        let info_len = parts[i].len() - 3;
        let keep = keep % (info_len + 1);
        parts[i].truncate(3 + keep);
        let [hi, lo] = (keep as u16).to_be_bytes();
        parts[i][1] = hi;
        parts[i][2] = lo;
        if let Ok(cap) = CapFile::from_ijc(&parts.concat()) {
            let _ = cap.model();
        }
    }

    #[test]
    fn corrupted_components(which in 0usize..11, edits in prop::collection::vec((any::<u16>(), any::<u8>()), 1..16)) {
        let mut parts = split(&block());
        let i = which % parts.len();
        let n = parts[i].len() - 3;
        if n > 0 {
            for (at, v) in edits {
                parts[i][3 + usize::from(at) % n] = v;
            }
        }
        if let Ok(cap) = CapFile::from_ijc(&parts.concat())
            && let Ok(m) = cap.model()
        {
            for off in 0..64u16 {
                let _ = m.methods.header(off);
            }
            let _ = m.static_fields.image();
        }
    }

    #[test]
    fn disassembler_takes_any_bytes(code in prop::collection::vec(any::<u8>(), 0..300)) {
        let ins = bytecode::disassemble(&code);
        let total: usize = ins.iter().map(|i| 1 + i.operands.len()).sum();
        prop_assert!(total <= code.len());
    }
}
