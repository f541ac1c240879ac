//! Delegated management tokens (GP Card Specification Annex C.4): a security domain with the
//! Delegated Management privilege (and no Authorized Management) may load, install and delete
//! only with a token from the card issuer — a signature by the issuer's token key over
//! `P1 ‖ P2 ‖ Lc ‖ data`, where data is the command's data without the token (GP 2.3.1 table
//! 11-23; GlobalPlatformPro's `DMTokenGenerator` computes the same). INSTALL carries the
//! token as its last length-value field; DELETE as `9E ‖ length ‖ token` after the AID.
//!
//! The issuer security domain (Token Verification privilege) verifies it with its token key:
//! kagi's simulator keeps it as the public key of version [`TOKEN_KVN`].
//!
//! Receipts (Annex C.5): after a delegated LOAD, INSTALL or DELETE the card answers a
//! confirmation `L receipt ‖ 02 counter(2) ‖ L card-unique-data` instead of `00`; the receipt
//! is AES-CMAC (16 bytes) with the receipt key over `02 ‖ counter ‖ L ‖ card unique data ‖`
//! then the AIDs as length-value: load file and security domain (load), load file and
//! application (install), the deleted AID (delete) — the validation data of the
//! `globalplatform` library's `validate_*_receipt`. kagi's simulator keeps the receipt key as
//! key 01 of version [`RECEIPT_KVN`] and uses its KDD as card unique data.

use crate::apdu::Command;
use crate::gp::GpError;

/// Key version of the token verification key (GP UICC Configuration reserves `70`).
pub const TOKEN_KVN: u8 = 0x70;

/// Key version of the receipt key (GP UICC Configuration reserves `71`, key 01).
pub const RECEIPT_KVN: u8 = 0x71;

/// What a receipt confirms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmed<'a> {
    /// A load file loaded into a security domain.
    Load {
        /// Load file AID.
        elf: &'a [u8],
        /// Security domain AID.
        sd: &'a [u8],
    },
    /// An application installed from a load file.
    Install {
        /// Load file AID.
        elf: &'a [u8],
        /// Application AID.
        app: &'a [u8],
    },
    /// An application or load file deleted.
    Delete {
        /// The AID.
        aid: &'a [u8],
    },
}

/// A verified receipt's confirmation counter and card unique data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    /// The card's confirmation counter.
    pub counter: u16,
    /// Card unique data.
    pub card_unique_data: Vec<u8>,
}

/// The data a receipt MACs.
pub fn receipt_data(counter: u16, card_unique_data: &[u8], what: &Confirmed<'_>) -> Vec<u8> {
    let mut d = vec![0x02];
    d.extend_from_slice(&counter.to_be_bytes());
    let mut lv = |v: &[u8]| {
        d.push(v.len() as u8);
        d.extend_from_slice(v);
    };
    lv(card_unique_data);
    match what {
        Confirmed::Load { elf, sd } => {
            lv(elf);
            lv(sd);
        }
        Confirmed::Install { elf, app } => {
            lv(elf);
            lv(app);
        }
        Confirmed::Delete { aid } => lv(aid),
    }
    d
}

/// The confirmation a card answers: `L receipt ‖ 02 counter ‖ L card unique data`.
pub fn confirmation(
    key: &crate::scp03::AesKey,
    counter: u16,
    card_unique_data: &[u8],
    what: &Confirmed<'_>,
) -> Vec<u8> {
    let receipt = crate::scp03::crypto::cmac(key, &receipt_data(counter, card_unique_data, what));
    let mut out = vec![16];
    out.extend_from_slice(&receipt);
    out.push(2);
    out.extend_from_slice(&counter.to_be_bytes());
    out.push(card_unique_data.len() as u8);
    out.extend_from_slice(card_unique_data);
    out
}

/// Checks a card's confirmation with the receipt key (constant-time comparison).
pub fn verify_receipt(
    answer: &[u8],
    key: &crate::scp03::AesKey,
    what: &Confirmed<'_>,
) -> Result<Confirmation, GpError> {
    let bad = |why: &str| GpError::Malformed(format!("receipt: {why}"));
    let [16, rest @ ..] = answer else {
        return Err(bad(
            "the card sent no 16-byte receipt (is the command delegated?)",
        ));
    };
    let (receipt, rest) = rest.split_at_checked(16).ok_or_else(|| bad("truncated"))?;
    let [2, hi, lo, n, cud @ ..] = rest else {
        return Err(bad("no 2-byte confirmation counter"));
    };
    if cud.len() != usize::from(*n) {
        return Err(bad("card unique data of the wrong length"));
    }
    let counter = u16::from_be_bytes([*hi, *lo]);
    let expected = crate::scp03::crypto::cmac(key, &receipt_data(counter, cud, what));
    use subtle::ConstantTimeEq;
    if !bool::from(expected.ct_eq(receipt)) {
        return Err(bad(
            "the MAC does not verify with this receipt key: the card did not do what was asked, \
             or the key is not the card's receipt key",
        ));
    }
    Ok(Confirmation {
        counter,
        card_unique_data: cud.to_vec(),
    })
}

/// What a token signs for `cmd` (built with an empty token field: INSTALL ends with `00`,
/// DELETE has no `9E`): `P1 ‖ P2 ‖ Lc ‖ data` without the token field.
pub fn token_data(cmd: &Command) -> Result<Vec<u8>, GpError> {
    let data = strip_empty_token(cmd)?;
    let lc = u8::try_from(data.len()).map_err(|_| GpError::FieldTooLong(data.len()))?;
    let mut out = vec![cmd.p1(), cmd.p2(), lc];
    out.extend_from_slice(data);
    Ok(out)
}

fn strip_empty_token(cmd: &Command) -> Result<&[u8], GpError> {
    match (cmd.ins(), cmd.data()) {
        (0xE6, [rest @ .., 0x00]) => Ok(rest),
        (0xE4, d) => Ok(d),
        _ => Err(GpError::Malformed(
            "a token goes on INSTALL (with an empty token field) or DELETE".into(),
        )),
    }
}

/// `cmd` with `token` in place: INSTALL's last field, or DELETE's `9E` object.
pub fn with_token(cmd: &Command, token: &[u8]) -> Result<Command, GpError> {
    let mut data = strip_empty_token(cmd)?.to_vec();
    if cmd.ins() == 0xE4 {
        data.push(0x9E);
    }
    match token.len() {
        0..=0x7F => data.push(token.len() as u8),
        0x80..=0xFF => data.extend_from_slice(&[0x81, token.len() as u8]),
        n => return Err(GpError::FieldTooLong(n)),
    }
    data.extend_from_slice(token);
    let mut out = cmd.clone();
    let _ = out.take_data();
    Ok(out.with_data(data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_data_and_placement() {
        // DELETE of AID 0102030405: signs 00 00 07 4F 05 0102030405 (the layout quoted from GP
        // 2.2 figure C-8 on stackguides.com: "RSA_Sign(00 00 LC 4F <AID Len> <AID>)").
        let del = crate::gp::delete(&[1, 2, 3, 4, 5], false).unwrap();
        assert_eq!(
            hex::encode_upper(token_data(&del).unwrap()),
            "0000074F050102030405"
        );
        let t = with_token(&del, &[0xAA, 0xBB]).unwrap();
        assert_eq!(hex::encode_upper(t.data()), "4F0501020304059E02AABB");
        // INSTALL [for load]: the data without its final empty token field.
        let inst = crate::gp::install_for_load(&[1, 2, 3, 4, 5], &[], &[]).unwrap();
        assert_eq!(hex::encode_upper(inst.data()), "05010203040500000000");
        assert_eq!(
            hex::encode_upper(token_data(&inst).unwrap()),
            "020009050102030405 000000".replace(' ', "")
        );
        let t = with_token(&inst, &[0xCC]).unwrap();
        assert_eq!(
            hex::encode_upper(t.data()),
            "0501020304050000 0001CC".replace(' ', "")
        );
        assert_eq!(t.ne(), inst.ne());
        let other = Command::new(0x80, 0xF2, 0x40, 0x00);
        assert!(token_data(&other).is_err());
    }

    proptest::proptest! {
        #[test]
        fn receipts_round_trip_and_the_parser_never_panics(
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            counter: u16,
            cud in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
        ) {
            let key = crate::scp03::AesKey::new(&[7; 16]).unwrap();
            let what = Confirmed::Delete { aid: &[1, 2, 3, 4, 5] };
            let _ = verify_receipt(&b, &key, &what);
            let c = confirmation(&key, counter, &cud, &what);
            let ok = verify_receipt(&c, &key, &what).unwrap();
            proptest::prop_assert_eq!((ok.counter, ok.card_unique_data), (counter, cud));
            let mut flipped = c.clone();
            flipped[1] ^= 1;
            proptest::prop_assert!(verify_receipt(&flipped, &key, &what).is_err());
        }
    }
}
