//! Delegated management in the simulator (GP Card Specification Annex C.4): a supplementary
//! security domain with Delegated Management and without Authorized Management loads,
//! installs and deletes its own content only with a token — the card issuer's signature over
//! `P1 ‖ P2 ‖ Lc ‖ data` (the data without the token, [`card_wire::dm::token_data`]) — which
//! the issuer security domain verifies with its token key, the public key of version
//! [`card_wire::dm::TOKEN_KVN`] (RSA PKCS#1 v1.5 with SHA-1 or SHA-256, or ECDSA P-256). A
//! missing or wrong token is refused with `6982`.
//!
//! A delegated command that succeeds answers a receipt ([`card_wire::dm::confirmation`])
//! made with the ISD's receipt key — key 01 (the first key) of its key set of version
//! [`card_wire::dm::RECEIPT_KVN`] — the card's KDD as card unique data, and the persistent
//! confirmation counter (`card/confirmation_counter`), incremented for every receipt in the
//! same transaction as the content change it confirms. Without
//! a receipt key the answer is the plain `00`.

use super::dap::{dap_keys, verifies};
use super::setup::{Sw, card_kdd, key_sets, read_u32};
use super::state::{SdCtx, SecurityDomain};
use crate::registry::privilege;
use crate::store::Store;

impl SecurityDomain {
    /// Whether this domain manages its content only with tokens.
    pub(super) fn needs_token(&self, ctx: &SdCtx<'_>) -> bool {
        !self.is_isd
            && ctx.me().is_some_and(|e| {
                e.has_privilege(0, privilege::DELEGATED_MANAGEMENT)
                    && !e.has_privilege(1, privilege::AUTHORIZED_MANAGEMENT)
            })
    }
}

/// The part of an INSTALL's data a token signs: everything before the token field `token`
/// (its last length-value field).
pub(super) fn signed_part<'a>(data: &'a [u8], token: &[u8]) -> Result<&'a [u8], Sw> {
    let hdr = match token.len() {
        0..=0x7F => 1,
        0x80..=0xFF => 2,
        _ => 3,
    };
    data.len()
        .checked_sub(token.len() + hdr)
        .and_then(|n| data.get(..n))
        .ok_or(Sw::INCORRECT_DATA)
}

/// Checks `token` over `P1 ‖ P2 ‖ Lc ‖ signed` with the issuer security domain's token key.
pub(super) fn check_token(
    ctx: &SdCtx<'_>,
    p1: u8,
    p2: u8,
    signed: &[u8],
    token: &[u8],
) -> Result<(), Sw> {
    let refused = Sw::SECURITY_STATUS_NOT_SATISFIED;
    if token.is_empty() {
        return Err(refused);
    }
    let isd = ctx.registry.iter().find(|e| e.is_isd()).ok_or(refused)?;
    let key = dap_keys(ctx.store, &isd.aid)
        .into_iter()
        .find(|(kvn, _)| *kvn == card_wire::dm::TOKEN_KVN)
        .ok_or(refused)?
        .1;
    let lc = u8::try_from(signed.len()).map_err(|_| Sw::WRONG_LENGTH)?;
    let mut message = vec![p1, p2, lc];
    message.extend_from_slice(signed);
    if verifies(&key, &message, token) {
        Ok(())
    } else {
        Err(refused)
    }
}

const COUNTER: &str = "card/confirmation_counter";

/// The issuer security domain's AID, to find the receipt key inside a transaction.
pub(super) fn isd_aid(ctx: &SdCtx<'_>) -> Option<crate::applet::Aid> {
    ctx.registry
        .iter()
        .find(|e| e.is_isd())
        .map(|e| e.aid.clone())
}

/// The confirmation of a delegated command (see the module notes). Call it inside the
/// transaction that makes the content change: the counter moves with the change or not at
/// all (a power cut between the two must not leave a change without its counter step).
pub(super) fn receipt(
    store: &mut Store,
    isd: Option<&crate::applet::Aid>,
    what: &card_wire::dm::Confirmed<'_>,
) -> Result<Vec<u8>, Sw> {
    let Some(isd) = isd else {
        return Ok(vec![0x00]);
    };
    let Some(keys) = key_sets(store, isd)
        .into_iter()
        .find(|k| k.kvn == card_wire::dm::RECEIPT_KVN)
    else {
        return Ok(vec![0x00]);
    };
    let counter = read_u32(store, COUNTER) + 1;
    let counter16 = u16::try_from(counter).map_err(|_| Sw::CONDITIONS_NOT_SATISFIED)?;
    store.put(COUNTER, &counter.to_be_bytes())?;
    Ok(card_wire::dm::confirmation(
        keys.enc(),
        counter16,
        &card_kdd(store),
        what,
    ))
}
