//! Data Authentication Pattern (DAP) verification (GP Card Specification §9.2.1 and §11.6.2):
//! a security domain with the DAP Verification privilege accepts a load file only with a DAP
//! block `E2 { 4F SD AID, C3 signature }` in front of the load file data block (`C4`), the
//! signature computed over the load file data block hash of INSTALL [for load] with the
//! domain's DAP key.
//!
//! Schemes (what GlobalPlatformPro's `DAPSigner` produces): RSA PKCS#1 v1.5 with SHA-1 or
//! SHA-256 over the hash; ECDSA P-256 with SHA-256 over the hash, the signature as `r ‖ s`
//! (64 bytes, GP Card Specification 2.3.1 §B.4.3).
//!
//! The DAP key reaches the security domain in PUT KEY (key identifier 01, P2 `01`) as a
//! public key in the clear: RSA as `A1` modulus and `A0` exponent, P-256 as `B0` public point
//! (uncompressed) and `F0 01 00` (key parameter reference 00: P-256); each component is
//! `type ‖ length ‖ value ‖ 00` (no key check value).

use crate::apdu::Command;
use crate::gp::GpError;
use crate::tlv::{self, Tag};

/// Key identifier of a DAP verification key.
pub const DAP_KEY_ID: u8 = 0x01;

/// Key type `A1`: RSA public key, modulus.
pub const KEY_RSA_N: u8 = 0xA1;
/// Key type `A0`: RSA public key, public exponent.
pub const KEY_RSA_E: u8 = 0xA0;
/// Key type `B0`: ECC public key.
pub const KEY_ECC_PUBLIC: u8 = 0xB0;
/// Key type `F0`: ECC key parameter reference.
pub const KEY_ECC_PARAMS: u8 = 0xF0;

/// A DAP verification public key as PUT KEY carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DapPublicKey {
    /// RSA: big-endian modulus and public exponent.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
    /// ECC P-256: the uncompressed public point `04 ‖ X ‖ Y` (65 bytes).
    P256(Vec<u8>),
}

impl DapPublicKey {
    /// The key information entry (the value of a `C0` in GET DATA `E0`) of this key as key
    /// `kid` of version `kvn` (GP Card Specification 2.2.1 §11.3.3.1): the basic format —
    /// key type and one length byte per component (RSA: `A1` modulus, `A0` exponent; P-256:
    /// `B0` point) — when every length fits a byte; else the extended format, each component
    /// as `FF ‖ type ‖ length(2)`, then empty key usage and key access (`00 00`), as an
    /// RSA-2048 key needs (a 256-byte modulus).
    pub fn template(&self, kid: u8, kvn: u8) -> Vec<u8> {
        let components: Vec<(u8, usize)> = match self {
            DapPublicKey::Rsa { n, e } => vec![(KEY_RSA_N, n.len()), (KEY_RSA_E, e.len())],
            DapPublicKey::P256(q) => vec![(KEY_ECC_PUBLIC, q.len())],
        };
        let mut out = vec![kid, kvn];
        if components.iter().all(|(_, len)| *len <= 0xFF) {
            for (t, len) in components {
                out.extend_from_slice(&[t, len as u8]);
            }
        } else {
            for (t, len) in components {
                let len = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
                out.extend_from_slice(&[0xFF, t, len[0], len[1]]);
            }
            out.extend_from_slice(&[0x00, 0x00]);
        }
        out
    }
}

/// Who signs DAP blocks: a key file, an HSM. The signature is over `dtbs`, the load file
/// data block hash.
pub trait DapSigner {
    /// The DAP signature over `dtbs`.
    fn sign(&self, dtbs: &[u8]) -> Result<Vec<u8>, String>;
    /// The public key to put into the verifying security domain.
    fn public_key(&self) -> Result<DapPublicKey, String>;
}

/// A DAP block: `E2 { 4F sd, C3 signature }`.
pub fn dap_block(sd: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut body = tlv::tlv(0x4F, sd);
    body.extend(tlv::tlv(0xC3, signature));
    tlv::tlv(0xE2, &body)
}

/// A load file as LOAD sends it: the DAP blocks, then `C4 ‖ length ‖ data block`.
pub fn with_dap_blocks(load_file: &[u8], blocks: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = blocks.concat();
    out.extend_from_slice(load_file);
    out
}

/// One DAP block of a load file: the security domain it is for and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DapBlock<'a> {
    /// AID of the security domain.
    pub sd: &'a [u8],
    /// The signature (`C3`).
    pub signature: &'a [u8],
}

/// A load file taken apart: its DAP blocks and the load file data block (the value of `C4`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitLoadFile<'a> {
    /// The DAP blocks, in order.
    pub daps: Vec<DapBlock<'a>>,
    /// The load file data block.
    pub data_block: &'a [u8],
}

/// Splits a load file into its DAP blocks (`E2`, any number) and the load file data block
/// (`C4`, exactly one, last).
pub fn split_load_file(data: &[u8]) -> Result<SplitLoadFile<'_>, GpError> {
    let items = tlv::parse_all(data)?;
    let Some((last, daps)) = items.split_last() else {
        return Err(GpError::Malformed("an empty load file".into()));
    };
    if last.tag != Tag(0xC4) {
        return Err(GpError::Malformed(
            "the load file does not end with its data block (tag C4)".into(),
        ));
    }
    let daps = daps
        .iter()
        .map(|e2| {
            if e2.tag != Tag(0xE2) {
                return Err(GpError::Malformed(format!(
                    "tag {:X} before the load file data block: only DAP blocks (E2) go there",
                    e2.tag.0
                )));
            }
            Ok(DapBlock {
                sd: e2.require(Tag(0x4F))?.value,
                signature: e2.require(Tag(0xC3))?.value,
            })
        })
        .collect::<Result<Vec<_>, GpError>>()?;
    Ok(SplitLoadFile {
        daps,
        data_block: last.value,
    })
}

fn component(out: &mut Vec<u8>, key_type: u8, value: &[u8]) -> Result<(), GpError> {
    out.push(key_type);
    match value.len() {
        0..=0x7F => out.push(value.len() as u8),
        0x80..=0xFF => out.extend_from_slice(&[0x81, value.len() as u8]),
        n @ 0x100..=0xFFFF => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
        n => return Err(GpError::FieldTooLong(n)),
    }
    out.extend_from_slice(value);
    out.push(0x00); // no key check value
    Ok(())
}

/// PUT KEY of a DAP verification public key as key 01 of version `kvn` (`replace`: the
/// version replaced, or `None` to add). Keys of 2048-bit RSA need an extended APDU.
pub fn put_dap_key(kvn: u8, replace: Option<u8>, key: &DapPublicKey) -> Result<Command, GpError> {
    let mut data = vec![kvn];
    match key {
        DapPublicKey::Rsa { n, e } => {
            component(&mut data, KEY_RSA_N, n)?;
            component(&mut data, KEY_RSA_E, e)?;
        }
        DapPublicKey::P256(q) => {
            component(&mut data, KEY_ECC_PUBLIC, q)?;
            component(&mut data, KEY_ECC_PARAMS, &[0x00])?;
        }
    }
    Ok(Command::new(0x80, 0xD8, replace.unwrap_or(0), DAP_KEY_ID)
        .with_data(data)?
        .with_le(256)?)
}

/// Reads the data of a PUT KEY of a public key (see [`put_dap_key`]): the key version and
/// the key.
pub fn parse_put_dap_key(data: &[u8]) -> Result<(u8, DapPublicKey), GpError> {
    let bad = |why: &str| GpError::Malformed(format!("PUT KEY of a public key: {why}"));
    let (&kvn, mut rest) = data.split_first().ok_or_else(|| bad("no data"))?;
    let mut parts: Vec<(u8, &[u8])> = Vec::new();
    while let [t, tail @ ..] = rest {
        let (len, hdr) = match tail {
            [0x81, l, ..] => (*l as usize, 2),
            [0x82, a, b, ..] => (u16::from_be_bytes([*a, *b]) as usize, 3),
            [l, ..] if *l < 0x80 => (*l as usize, 1),
            _ => return Err(bad("a component length is malformed")),
        };
        let value = tail
            .get(hdr..hdr + len)
            .ok_or_else(|| bad("a component is truncated"))?;
        match tail.get(hdr + len) {
            Some(0) => {}
            _ => return Err(bad("a public key component carries a key check value")),
        }
        parts.push((*t, value));
        rest = &tail[hdr + len + 1..];
    }
    match parts.as_slice() {
        [(KEY_RSA_N, n), (KEY_RSA_E, e)] if !n.is_empty() && !e.is_empty() => Ok((
            kvn,
            DapPublicKey::Rsa {
                n: n.to_vec(),
                e: e.to_vec(),
            },
        )),
        [(KEY_ECC_PUBLIC, q), (KEY_ECC_PARAMS, [0x00])] if q.len() == 65 && q[0] == 0x04 => {
            Ok((kvn, DapPublicKey::P256(q.to_vec())))
        }
        [(KEY_ECC_PUBLIC, _), (KEY_ECC_PARAMS, _)] => Err(bad(
            "only P-256 (key parameter reference 00, an uncompressed 65-byte point) is supported",
        )),
        _ => Err(bad(
            "expected A1 modulus and A0 exponent, or B0 point and F0 parameter reference",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn blocks_and_split() {
        // E2 { 4F A0000001515350, C3 0102 } in front of C4 03 AABBCC.
        let sd = hex::decode("A0000001515350").unwrap();
        let block = dap_block(&sd, &[1, 2]);
        assert_eq!(hex::encode_upper(&block), "E20D4F07A0000001515350C3020102");
        let lf = with_dap_blocks(&[0xC4, 0x03, 0xAA, 0xBB, 0xCC], &[block]);
        let split = split_load_file(&lf).unwrap();
        assert_eq!(split.data_block, [0xAA, 0xBB, 0xCC]);
        assert_eq!(
            split.daps,
            [DapBlock {
                sd: &sd,
                signature: &[1, 2]
            }]
        );
        // Without DAP blocks; refused: no C4, C4 not last, something else in front.
        assert!(
            split_load_file(&[0xC4, 0x01, 0x00])
                .unwrap()
                .daps
                .is_empty()
        );
        assert!(split_load_file(&[0xE2, 0x00]).is_err());
        assert!(split_load_file(&[0xC4, 0x00, 0xE2, 0x00]).is_err());
        assert!(split_load_file(&[0xC5, 0x00, 0xC4, 0x00]).is_err());
        assert!(split_load_file(&[]).is_err());
    }

    #[test]
    fn put_key_of_public_keys() {
        let q = [&[0x04u8][..], &[0x11; 64]].concat();
        let c = put_dap_key(0x73, None, &DapPublicKey::P256(q.clone())).unwrap();
        // 80 D8 00 01, KVN 73, B0 41 point 00, F0 01 00 00.
        let mut expected = vec![0x73, 0xB0, 0x41];
        expected.extend_from_slice(&q);
        expected.extend_from_slice(&[0x00, 0xF0, 0x01, 0x00, 0x00]);
        assert_eq!((c.p1(), c.p2(), c.data()), (0x00, 0x01, &expected[..]));
        assert_eq!(
            parse_put_dap_key(c.data()).unwrap(),
            (0x73, DapPublicKey::P256(q))
        );
        let rsa = DapPublicKey::Rsa {
            n: vec![0xC5; 256],
            e: vec![0x01, 0x00, 0x01],
        };
        let c = put_dap_key(0x74, Some(0x73), &rsa).unwrap();
        assert_eq!(&c.data()[..5], &[0x74, 0xA1, 0x82, 0x01, 0x00]);
        assert_eq!(c.p1(), 0x73);
        assert_eq!(parse_put_dap_key(c.data()).unwrap(), (0x74, rsa));
        // A KCV on a public key, a brainpool reference, a missing exponent: refused.
        assert!(parse_put_dap_key(&[0x73, 0xA1, 0x01, 0xFF, 0x03, 1, 2, 3]).is_err());
        let mut bp = expected.clone();
        let n = bp.len();
        bp[n - 2] = 0x03;
        assert!(parse_put_dap_key(&bp).is_err());
        assert!(parse_put_dap_key(&[0x73, 0xA1, 0x01, 0xFF, 0x00]).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = split_load_file(&b);
            let _ = parse_put_dap_key(&b);
        }

        #[test]
        fn blocks_round_trip(sd in proptest::collection::vec(any::<u8>(), 5..=16),
                             sig in proptest::collection::vec(any::<u8>(), 1..300),
                             data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let lf = with_dap_blocks(&tlv::tlv(0xC4, &data), &[dap_block(&sd, &sig)]);
            let split = split_load_file(&lf).unwrap();
            prop_assert_eq!(split.data_block, &data[..]);
            prop_assert_eq!(split.daps, vec![DapBlock { sd: &sd, signature: &sig }]);
        }
    }
}
