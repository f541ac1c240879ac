//! DAP verification in the simulator's security domains: the DAP public key a domain takes
//! in PUT KEY (key identifier 01, kept as its PUT KEY data under `sd/<AID>/dap/<KVN>`), and
//! the check of a load file's DAP blocks at the end of LOAD.
//!
//! Which domains must sign a load file: the one it is associated with, when that domain has
//! the DAP Verification privilege, and every domain with Mandated DAP Verification. A missing
//! block, a missing key or hash, or a signature that does not verify — an RSA signature must
//! use the load file hash's own digest ([`verifies_dap`]) — is refused with `6982` (security
//! status not satisfied) and nothing is stored.

use super::setup::*;
use super::state::{SdCtx, SecurityDomain};
use crate::applet::Aid;
use crate::registry::{self, privilege};
use crate::store::Store;
use card_wire::apdu::{Command, Response};
use card_wire::dap::{DapBlock, DapPublicKey, parse_put_dap_key};

/// Mandated DAP Verification: bit b1 of the first privilege byte.
const MANDATED_DAP: u8 = 0x01;

fn dap_prefix(sd: &Aid) -> String {
    format!("{}/dap/", registry::sd_prefix(sd))
}

/// The DAP keys of security domain `sd`, in KVN order.
pub(super) fn dap_keys(store: &Store, sd: &Aid) -> Vec<(u8, DapPublicKey)> {
    store
        .keys(&dap_prefix(sd))
        .iter()
        .filter_map(|k| parse_put_dap_key(store.get(k)?).ok())
        .collect()
}

/// Whether `signature` over `dtbs` verifies under `key` (RSA PKCS#1 v1.5 with SHA-1 or
/// SHA-256; ECDSA P-256 with SHA-256, `r ‖ s`).
pub(super) fn verifies(key: &DapPublicKey, dtbs: &[u8], signature: &[u8]) -> bool {
    match key {
        DapPublicKey::Rsa { .. } => rsa_verifies(key, dtbs, signature, None),
        DapPublicKey::P256(q) => {
            let Ok(vk) = p256::ecdsa::VerifyingKey::from_sec1_bytes(q) else {
                return false;
            };
            let Ok(sig) = p256::ecdsa::Signature::from_slice(signature) else {
                return false;
            };
            p256::ecdsa::signature::Verifier::verify(&vk, dtbs, &sig).is_ok()
        }
    }
}

/// Whether a DAP `signature` over the load file data block `hash` verifies under `key`, with
/// the digest the hash asks for: an RSA signature's PKCS#1 digest is the hash's own algorithm
/// (a 20-byte SHA-1 hash is signed with SHA-1, a 32-byte SHA-256 hash with SHA-256, as
/// GlobalPlatformPro's `DAPSigner` signs `SHA1withRSA` or `SHA256withRSA` by the load file
/// hash); ECDSA P-256 always uses SHA-256 (GP 2.3.1 B.4.3).
pub(super) fn verifies_dap(key: &DapPublicKey, hash: &[u8], signature: &[u8]) -> bool {
    match key {
        DapPublicKey::Rsa { .. } => rsa_verifies(key, hash, signature, Some(hash.len())),
        DapPublicKey::P256(_) => verifies(key, hash, signature),
    }
}

/// RSA PKCS#1 v1.5: with `digest_len` `Some(20)` SHA-1 only, `Some(32)` SHA-256 only, `None`
/// either (tokens: the issuer picks).
fn rsa_verifies(
    key: &DapPublicKey,
    dtbs: &[u8],
    signature: &[u8],
    digest_len: Option<usize>,
) -> bool {
    use rsa::signature::Verifier;
    let DapPublicKey::Rsa { n, e } = key else {
        return false;
    };
    let bits = (n.len() * 8) as u32;
    let (Ok(n), Ok(e)) = (
        rsa::BoxedUint::from_be_slice(n, bits),
        rsa::BoxedUint::from_be_slice(e, bits),
    ) else {
        return false;
    };
    let Ok(pk) = rsa::PublicKey::new(n, e) else {
        return false;
    };
    let Ok(sig) = rsa::pkcs1v15::Signature::try_from(signature) else {
        return false;
    };
    let sha256 = || {
        rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(pk.clone())
            .verify(dtbs, &sig)
            .is_ok()
    };
    let sha1 = || {
        rsa::pkcs1v15::VerifyingKey::<sha1::Sha1>::new(pk.clone())
            .verify(dtbs, &sig)
            .is_ok()
    };
    match digest_len {
        Some(20) => sha1(),
        Some(32) => sha256(),
        Some(_) => false,
        None => sha256() || sha1(),
    }
}

impl SecurityDomain {
    /// PUT KEY of a DAP public key (P2 `01`): added (P1 `00`) or replacing version P1.
    pub(super) fn put_dap_key(
        &mut self,
        cmd: &Command,
        ctx: &mut SdCtx<'_>,
    ) -> Result<Response, Sw> {
        let (kvn, _key) = parse_put_dap_key(cmd.data()).map_err(|_| Sw::INCORRECT_DATA)?;
        if kvn == 0 || kvn == 0xFF {
            return Err(Sw::INCORRECT_DATA);
        }
        let prefix = dap_prefix(&self.aid);
        let replace = cmd.p1();
        let exists = |s: &Store, v: u8| {
            s.get(&format!("{prefix}{v:02X}")).is_some()
                || key_sets(s, &self.aid).iter().any(|k| k.kvn == v)
        };
        if replace != 0 && ctx.store.get(&format!("{prefix}{replace:02X}")).is_none() {
            return Err(Sw::REFERENCED_DATA_NOT_FOUND);
        }
        if replace != kvn && exists(ctx.store, kvn) {
            return Err(Sw::INCORRECT_DATA);
        }
        let data = cmd.data().to_vec();
        ctx.store.atomically(|s| {
            if replace != 0 {
                s.remove(&format!("{prefix}{replace:02X}"))?;
            }
            s.put(&format!("{prefix}{kvn:02X}"), &data)
        })?;
        // The answer: the key version, no key check value for a public key.
        Ok(Response::success(vec![kvn]))
    }
}

/// Checks the DAP blocks of a load file associated with `sd`, whose INSTALL [for load]
/// carried `hash`.
pub(super) fn check_daps(
    ctx: &SdCtx<'_>,
    sd: &Aid,
    hash: Option<&[u8]>,
    daps: &[DapBlock<'_>],
) -> Result<(), Sw> {
    let required: Vec<&Aid> = ctx
        .registry
        .iter()
        .filter(|e| {
            e.has_privilege(0, privilege::SECURITY_DOMAIN)
                && ((e.aid == *sd && e.has_privilege(0, privilege::DAP_VERIFICATION))
                    || e.has_privilege(0, MANDATED_DAP))
        })
        .map(|e| &e.aid)
        .collect();
    for verifier in required {
        let hash = hash.ok_or(Sw::SECURITY_STATUS_NOT_SATISFIED)?;
        let block = daps
            .iter()
            .find(|d| d.sd == verifier.as_bytes())
            .ok_or(Sw::SECURITY_STATUS_NOT_SATISFIED)?;
        let ok = dap_keys(ctx.store, verifier)
            .iter()
            .any(|(_, key)| verifies_dap(key, hash, block.signature));
        if !ok {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
    }
    Ok(())
}
