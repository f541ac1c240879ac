//! A key made **on the card**, and the proof that this card's applet made it (the JPKI
//! issuer's on-card mode: the private key never leaves the chip).
//!
//! The issuer hands out a challenge: a fresh 32-byte nonce and an ephemeral P-256 public key
//! of its own (`E`, 65 bytes uncompressed). The applet, asked through its provider's security
//! domain ([`crate::jpki::ITEM_GENERATE_PROVEN`]), generates a P-256 key pair (public point
//! `P`) and answers `P (65) ‖ pop (64) ‖ tag (32)`:
//!
//! - **proof of possession**: `pop` = ECDSA-P256-SHA256 by the new key over
//!   [`pop_message`] = label ‖ `P` ‖ nonce (r ‖ s); a public key swapped on the way does not
//!   verify with it;
//! - **the card's word**: `tag` = HMAC-SHA256 under `K` over label ‖ `P` ‖ nonce ‖ `pop`,
//!   where `K` = HKDF-SHA256(salt = `E ‖ card_pub`, IKM = the x coordinate of
//!   ECDH(card key, `E`), info = label ‖ ICCID ‖ card certificate serial ‖ instance AID ‖ key
//!   FID). The card's key agreement key (`card_pub`) is the one its manufacturer's CA certified
//!   (`tsm_protocol::seal::SealTarget::verify`); only that card (which holds the private half)
//!   and the issuer (which holds `E`'s) can compute `K`. A relay or an SP-TSM that puts in a
//!   key of its own, with a proof of possession of its own, has no `K`; a proof another SIM
//!   made does not check under this SIM's key and identity.
//!
//! The issuer refuses a nonce it did not hand out, or one already used, before any of this.
//! [`verify`] tells the two checks apart: [`KeygenError::Possession`] (the key and its
//! proof of possession do not match: substituted key) and [`KeygenError::NotThisCard`] (the
//! card's tag does not check: another card, or a proof made up without the card).

use hmac::{KeyInit as _, Mac};
use p256::elliptic_curve::sec1::ToSec1Point;
use zeroize::Zeroizing;

/// An uncompressed P-256 point.
pub const POINT_LEN: usize = 65;
/// The issuer's nonce.
pub const NONCE_LEN: usize = 32;
/// A challenge: the issuer's ephemeral public key, then the nonce.
pub const CHALLENGE_LEN: usize = POINT_LEN + NONCE_LEN;
/// The proof of possession (ECDSA r ‖ s).
pub const POP_LEN: usize = 64;
/// The card's tag.
pub const TAG_LEN: usize = 32;
/// The card's answer: the new public key, the proof of possession, the card's tag.
pub const ANSWER_LEN: usize = POINT_LEN + POP_LEN + TAG_LEN;

const POP_LABEL: &[u8] = b"kagi on-card key v1 pop\0";
const CARD_LABEL: &[u8] = b"kagi on-card key v1 card\0";

/// Why a proof does not check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeygenError {
    /// Not `P ‖ pop ‖ tag` of the right lengths, or `P` is not an uncompressed P-256 point.
    #[error(
        "the card's key-generation answer is malformed: {0}; it must be the new key's point (65), its proof of possession (64) and the card's tag (32)"
    )]
    Malformed(&'static str),
    /// The proof of possession does not verify under the answered key.
    #[error(
        "the public key does not match its proof of possession: it was substituted on the way; generate the key on the SIM again"
    )]
    Possession,
    /// The card's tag does not check under this SIM's certified key and identity.
    #[error(
        "the key-generation proof was not made by this SIM's applet (another SIM, or a key put in on the way): generate the key on this SIM again"
    )]
    NotThisCard,
    /// A challenge that is not `E ‖ nonce`.
    #[error(
        "the challenge is malformed: it must be the issuer's ephemeral point (65) and a nonce (32)"
    )]
    BadChallenge,
    /// No randomness.
    #[error("no randomness for the challenge: {0}")]
    Random(String),
}

/// Who the key is made for: the card (its ICCID and the serial of its manufacturer
/// certificate), the applet instance and the key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity<'a> {
    /// The card's ICCID (digits).
    pub iccid: &'a str,
    /// The card certificate's serial number (big-endian bytes, as in the DER).
    pub card_serial: &'a [u8],
    /// The applet instance AID.
    pub instance: &'a [u8],
    /// The key EF the key is made in.
    pub key_fid: u16,
}

fn put(out: &mut Vec<u8>, field: &[u8]) {
    let n = u16::try_from(field.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&field[..usize::from(n)]);
}

impl Identity<'_> {
    /// HKDF's info for the card's MAC key: a label and every field, length-prefixed.
    pub fn info(&self) -> Vec<u8> {
        let mut v = CARD_LABEL.to_vec();
        put(&mut v, self.iccid.as_bytes());
        put(&mut v, self.card_serial);
        put(&mut v, self.instance);
        v.extend_from_slice(&self.key_fid.to_be_bytes());
        v
    }
}

/// What the new key signs: a label, its own point, the issuer's nonce.
pub fn pop_message(point: &[u8], nonce: &[u8]) -> Vec<u8> {
    [POP_LABEL, point, nonce].concat()
}

/// What the card's tag covers: a label, the point, the nonce, the proof of possession.
pub fn tag_message(point: &[u8], nonce: &[u8], pop: &[u8]) -> Vec<u8> {
    [CARD_LABEL, point, nonce, pop].concat()
}

fn mac_key(
    shared: &p256::ecdh::SharedSecret,
    issuer_eph: &[u8],
    card_pub: &[u8],
    id: &Identity<'_>,
) -> Zeroizing<[u8; 32]> {
    crate::content::agreed_key(shared, issuer_eph, card_pub, &id.info())
}

fn hmac(key: &[u8; 32], message: &[u8]) -> [u8; TAG_LEN] {
    let mut h = <hmac::Hmac<sha2::Sha256>>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    h.update(message);
    h.finalize().into_bytes().into()
}

/// Splits a challenge into the issuer's ephemeral key and the nonce.
pub fn split_challenge(challenge: &[u8]) -> Result<(p256::PublicKey, &[u8]), KeygenError> {
    if challenge.len() != CHALLENGE_LEN {
        return Err(KeygenError::BadChallenge);
    }
    let (e, nonce) = challenge.split_at(POINT_LEN);
    let key = p256::PublicKey::from_sec1_bytes(e).map_err(|_| KeygenError::BadChallenge)?;
    if key.to_sec1_point(false).as_bytes() != e {
        return Err(KeygenError::BadChallenge);
    }
    Ok((key, nonce))
}

/// The card's tag (card side: the runtime computes it with the card's key agreement key for
/// the calling applet's own instance).
pub fn card_tag(
    card: &p256::SecretKey,
    id: &Identity<'_>,
    challenge: &[u8],
    point: &[u8],
    pop: &[u8],
) -> Result<[u8; TAG_LEN], KeygenError> {
    let (e, nonce) = split_challenge(challenge)?;
    let shared = p256::ecdh::diffie_hellman(card.to_nonzero_scalar(), e.as_affine());
    let card_pub = card.public_key().to_sec1_point(false);
    let k = mac_key(&shared, &challenge[..POINT_LEN], card_pub.as_bytes(), id);
    Ok(hmac(&k, &tag_message(point, nonce, pop)))
}

/// Checks a card's answer (issuer side) with the ephemeral secret `issuer_eph` of the
/// challenge whose nonce is `nonce`, against the card key `card_pub` its manufacturer
/// certified, for `id`; the new public key.
pub fn verify(
    card_pub: &p256::PublicKey,
    id: &Identity<'_>,
    issuer_eph: &p256::SecretKey,
    nonce: &[u8],
    answer: &[u8],
) -> Result<p256::PublicKey, KeygenError> {
    use p256::ecdsa::signature::Verifier;
    if answer.len() != ANSWER_LEN {
        return Err(KeygenError::Malformed("wrong length"));
    }
    let (point, rest) = answer.split_at(POINT_LEN);
    let (pop, tag) = rest.split_at(POP_LEN);
    let key = p256::PublicKey::from_sec1_bytes(point)
        .map_err(|_| KeygenError::Malformed("not a P-256 point"))?;
    if key.to_sec1_point(false).as_bytes() != point {
        return Err(KeygenError::Malformed("not an uncompressed point"));
    }
    let sig = p256::ecdsa::Signature::from_slice(pop).map_err(|_| KeygenError::Possession)?;
    p256::ecdsa::VerifyingKey::from(&key)
        .verify(&pop_message(point, nonce), &sig)
        .map_err(|_| KeygenError::Possession)?;
    let e = issuer_eph.public_key().to_sec1_point(false);
    let card = card_pub.to_sec1_point(false);
    let shared = p256::ecdh::diffie_hellman(issuer_eph.to_nonzero_scalar(), card_pub.as_affine());
    let k = mac_key(&shared, e.as_bytes(), card.as_bytes(), id);
    let mut h = <hmac::Hmac<sha2::Sha256>>::new_from_slice(&k[..])
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    h.update(&tag_message(point, nonce, pop));
    // Constant-time comparison of the tag.
    h.verify_slice(tag).map_err(|_| KeygenError::NotThisCard)?;
    Ok(key)
}

/// The challenge for `issuer_eph` and `nonce`: `E ‖ nonce`.
pub fn challenge(issuer_eph: &p256::SecretKey, nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let e = issuer_eph.public_key().to_sec1_point(false);
    [e.as_bytes(), &nonce[..]].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> p256::SecretKey {
        let mut b = [seed; 32];
        b[0] = 0x01;
        p256::SecretKey::from_slice(&b).unwrap()
    }

    const ID: Identity<'static> = Identity {
        iccid: "8981100000000000019",
        card_serial: &[0x07],
        instance: &[0xD3, 0x92, 0xF0, 0x00, 0x26, 0x01, 0x00, 0x00, 0x00, 0x01],
        key_fid: 0x17,
    };

    /// The card's side as the module documents it, written out with `p256`, `hmac` and
    /// `sha2` directly (not with this module's helpers).
    fn card_answer(card: &p256::SecretKey, new: &p256::ecdsa::SigningKey, ch: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer;
        let point = new.verifying_key().to_sec1_point(false).as_bytes().to_vec();
        let nonce = &ch[65..];
        let mut m = b"kagi on-card key v1 pop\0".to_vec();
        m.extend(&point);
        m.extend(nonce);
        let sig: p256::ecdsa::Signature = new.sign(&m);
        let pop = sig.to_bytes().to_vec();
        let e = p256::PublicKey::from_sec1_bytes(&ch[..65]).unwrap();
        let z = p256::ecdh::diffie_hellman(card.to_nonzero_scalar(), e.as_affine());
        let hm = |k: &[u8], parts: &[&[u8]]| {
            let mut h = <hmac::Hmac<sha2::Sha256>>::new_from_slice(k).unwrap();
            for p in parts {
                h.update(p);
            }
            h.finalize().into_bytes().to_vec()
        };
        let salt = [&ch[..65], card.public_key().to_sec1_point(false).as_bytes()].concat();
        let prk = hm(&salt, &[z.raw_secret_bytes()]);
        let mut info = b"kagi on-card key v1 card\0".to_vec();
        for f in [ID.iccid.as_bytes(), ID.card_serial, ID.instance] {
            info.extend((f.len() as u16).to_be_bytes());
            info.extend(f);
        }
        info.extend([0x00, 0x17]);
        let k = hm(&prk, &[&info, &[1]]);
        let tag = hm(&k, &[b"kagi on-card key v1 card\0", &point, nonce, &pop]);
        [point, pop, tag].concat()
    }

    #[test]
    fn the_documented_answer_verifies_and_card_tag_agrees() {
        let card = key(3);
        let eph = key(4);
        let ch = challenge(&eph, &[0x5A; 32]);
        let new = p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
        let a = card_answer(&card, &new, &ch);
        let got = verify(&card.public_key(), &ID, &eph, &[0x5A; 32], &a).unwrap();
        assert_eq!(got, p256::PublicKey::from(new.verifying_key()));
        // The module's card side computes the same tag.
        assert_eq!(
            card_tag(&card, &ID, &ch, &a[..65], &a[65..129]).unwrap()[..],
            a[129..]
        );
    }

    #[test]
    fn a_substituted_key_another_card_or_identity_are_refused_apart() {
        use p256::ecdsa::signature::Signer;
        let card = key(3);
        let other_card = key(5);
        let eph = key(4);
        let nonce = [0x5A; 32];
        let ch = challenge(&eph, &nonce);
        let new = p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
        let mine = p256::ecdsa::SigningKey::from_slice(&[0x43; 32]).unwrap();
        let a = card_answer(&card, &new, &ch);
        // The key swapped, the rest as the card answered.
        let mut swapped = a.clone();
        swapped[..65].copy_from_slice(mine.verifying_key().to_sec1_point(false).as_bytes());
        assert_eq!(
            verify(&card.public_key(), &ID, &eph, &nonce, &swapped),
            Err(KeygenError::Possession)
        );
        // The key swapped with a proof of possession of its own: the card's tag fails.
        let mine_point = mine
            .verifying_key()
            .to_sec1_point(false)
            .as_bytes()
            .to_vec();
        let sig: p256::ecdsa::Signature = mine.sign(&pop_message(&mine_point, &nonce));
        let mut forged = [mine_point, sig.to_bytes().to_vec()].concat();
        forged.extend(&a[129..]);
        assert_eq!(
            verify(&card.public_key(), &ID, &eph, &nonce, &forged),
            Err(KeygenError::NotThisCard)
        );
        // Another SIM's answer to the same challenge.
        let b = card_answer(&other_card, &new, &ch);
        assert_eq!(
            verify(&card.public_key(), &ID, &eph, &nonce, &b),
            Err(KeygenError::NotThisCard)
        );
        // Another instance or key file of this card.
        for id in [
            Identity {
                instance: &[0xA0, 0, 0, 1],
                ..ID
            },
            Identity {
                key_fid: 0x1A,
                ..ID
            },
            Identity {
                iccid: "8981100000000000027",
                ..ID
            },
        ] {
            assert_eq!(
                verify(&card.public_key(), &id, &eph, &nonce, &a),
                Err(KeygenError::NotThisCard)
            );
        }
        // Another nonce (another challenge): the proof of possession no longer verifies.
        assert_eq!(
            verify(&card.public_key(), &ID, &eph, &[0x5B; 32], &a),
            Err(KeygenError::Possession)
        );
        assert!(matches!(
            verify(&card.public_key(), &ID, &eph, &nonce, &a[..100]),
            Err(KeygenError::Malformed(_))
        ));
    }
}
