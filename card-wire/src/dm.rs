//! Delegated management tokens (GP Card Specification Annex C.4): a security domain with the
//! Delegated Management privilege (and no Authorized Management) may load, install and delete
//! only with a token from the card issuer — a signature by the issuer's token key over
//! `P1 ‖ P2 ‖ Lc ‖ data`, where data is the command's data without the token (GP 2.3.1 table
//! 11-23; GlobalPlatformPro's `DMTokenGenerator` computes the same). INSTALL carries the
//! token as its last length-value field; DELETE as `9E ‖ length ‖ token` after the AID.
//!
//! The issuer security domain (Token Verification privilege) verifies it with its token key:
//! kagi's simulator keeps it as the public key of version [`TOKEN_KVN`].

use crate::apdu::Command;
use crate::gp::GpError;

/// Key version of the token verification key (GP UICC Configuration reserves `70`).
pub const TOKEN_KVN: u8 = 0x70;

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
}
