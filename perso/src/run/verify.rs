//! Verification of a finished card: its keys, its JPKI credential and the refusal of the transport keys.

use super::*;
use crate::error::{Error, Result};
use crate::profile::Profile;
use card_wire::transport::Transport;
use kagi::channel::CardChannel;
use kagi::gp::{self, StatusScope};

/// The JPKI part of verification: the certificate reads back as issued, and a signature with
/// the new key verifies against it.
pub(super) fn verify_jpki<T: Transport>(ch: &mut CardChannel<T>, issued: &Issued) -> Result<()> {
    use der::{Decode, Encode};
    use rsa::pkcs8::DecodePublicKey;
    use rsa::signature::Verifier;
    let e = |m: String| Error::Verification(m);
    kagi::jpki::select(ch)?;
    let cert = kagi::jpki::read_der(ch, kagi::jpki::EF_AUTH_CERT)?;
    if cert != issued.auth_cert {
        return Err(e(
            "the authentication certificate reads back different".into()
        ));
    }
    let Some(auth_pin) = &issued.auth_pin else {
        // The PIN went to the mailer in an earlier run: the card's key was shown to match the
        // certificate by the request it signed.
        return Ok(kagi::jpki::select(ch)?);
    };
    let pin = zeroize::Zeroizing::new(auth_pin.as_bytes().to_vec());
    kagi::jpki::verify(ch, kagi::jpki::Pin::Auth, &pin)?;
    let challenge = b"kagi personalisation check";
    let sig = kagi::jpki::sign(
        ch,
        kagi::jpki::Pin::Auth,
        &kagi::jpki::sha256_digest_info(challenge),
    )?;
    let c = x509_cert::Certificate::from_der(&cert).map_err(|x| e(x.to_string()))?;
    let spki = c
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|x| e(x.to_string()))?;
    let key = rsa::PublicKey::from_public_key_der(&spki).map_err(|x| e(x.to_string()))?;
    let sig = rsa::pkcs1v15::Signature::try_from(sig.as_slice()).map_err(|x| e(x.to_string()))?;
    rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key)
        .verify(challenge, &sig)
        .map_err(|_| e("the new key's signature does not verify".into()))?;
    // Leave the PIN state cleared.
    Ok(kagi::jpki::select(ch)?)
}

/// The verification pass: production keys open a session, the card is in the profile's final
/// life-cycle state, the registry holds every domain and instance of the profile, each
/// supplementary domain opens with its provider's keys, and the transport keys no longer open
/// a channel on any of them.
pub fn verify<T: Transport>(
    ch: &mut CardChannel<T>,
    profile: &Profile,
    keys: &KeySets,
) -> Result<()> {
    let sd = gp::select_domain(ch, None)?;
    {
        let mut sc = production_session(ch, profile, keys)?;
        let isd = gp::get_status(&mut sc, StatusScope::IssuerDomain)?;
        if let Some(e) = isd.first()
            && e.life_cycle != profile.final_state
        {
            return Err(Error::Verification(format!(
                "the card is in life-cycle state {:02X}, not {:02X}",
                e.life_cycle, profile.final_state
            )));
        }
        let apps = gp::get_status(&mut sc, StatusScope::Applications)?;
        for d in &profile.domains {
            if !apps.iter().any(|e| e.aid == d.instance) {
                return Err(Error::Verification(format!(
                    "security domain {} is not on the card",
                    hex::encode_upper(&d.instance)
                )));
            }
        }
        for i in &profile.install {
            if !apps.iter().any(|e| e.aid == i.instance) {
                return Err(Error::Verification(format!(
                    "{} is not on the card",
                    hex::encode_upper(&i.instance)
                )));
            }
        }
    }
    for d in &profile.domains {
        domain_session(ch, profile, keys, d)?;
        transport_refused(ch, keys, profile, &d.instance)?;
    }
    transport_refused(ch, keys, profile, &sd.aid)
}

/// Checks that the transport keys no longer open a session on the domain `aid`.
pub(super) fn transport_refused<T: Transport>(
    ch: &mut CardChannel<T>,
    keys: &KeySets,
    profile: &Profile,
    aid: &[u8],
) -> Result<()> {
    match transport_session(ch, keys, profile, Some(aid)) {
        Err(e) if transport_keys_replaced(&e) => Ok(()),
        Ok(_) => Err(Error::Verification(
            "the transport keys still open a channel".into(),
        )),
        Err(e) => Err(e),
    }
}
