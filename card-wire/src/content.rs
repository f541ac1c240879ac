//! Content protection for key material on its way to an applet: a value (a private key, a
//! PIN) is sealed by its issuer **to one card and one applet instance**, so that no
//! intermediary — the TSM that drives the card, the security domain whose secure channel
//! carries it (SCP03 protects only hop by hop), the relay, the phone — can read or alter it,
//! and no two cards share a key that opens it.
//!
//! The card has a card-level P-256 key agreement key generated on the card at provisioning,
//! certified by its manufacturer's CA (GlobalPlatform's CASD, Card Specification Amendment A
//! "confidential card content management"; SCP11's `CERT.SD.ECKA`). The issuer checks that
//! certificate against the manufacturer CA it trusts, then seals with ECDH-ES:
//!
//! - a fresh ephemeral P-256 key per sealed value; `Z` = the x coordinate of ECDH(eph, card);
//! - `K` = HKDF-SHA256(salt = `eph_pub ‖ card_pub`, IKM = `Z`, info = [`Binding::info`]), 32
//!   bytes; info binds the card identity (ICCID and the card certificate's serial), the
//!   applet **instance** AID and the value's role (the key or PIN EF it is for);
//! - AES-256-GCM under `K` with a random 96-bit nonce; associated data = info ‖ the
//!   operation's request id ([`Binding::aad`]);
//! - the format: `ver (01) ‖ eph_pub (65, uncompressed) ‖ nonce (12) ‖ ct ‖ tag (16)`.
//!
//! Two equal PINs sealed for two cards, or twice for one card, give unrelated bytes (fresh
//! ephemeral key and nonce each time). Opening with another card's key, for another instance,
//! role or request id, or after any change of the bytes fails with
//! [`ContentError::DoesNotOpen`].

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use zeroize::{Zeroize, Zeroizing};

/// The format version this build writes and reads.
pub const VERSION: u8 = 1;
/// An uncompressed SEC1 P-256 point.
pub const POINT_LEN: usize = 65;
/// The GCM nonce.
pub const NONCE_LEN: usize = 12;
/// The GCM tag.
pub const TAG_LEN: usize = 16;
/// The shortest sealed value (an empty plaintext).
pub const MIN_LEN: usize = 1 + POINT_LEN + NONCE_LEN + TAG_LEN;

/// Why a value could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// Too short to hold the version, ephemeral key, nonce and tag.
    #[error(
        "sealed content is malformed: {0} bytes, at least {MIN_LEN} needed (ver ‖ eph_pub ‖ nonce ‖ ct ‖ tag); it was cut or is not sealed content"
    )]
    Truncated(usize),
    /// A format this build does not know.
    #[error("sealed content has format version {0}; this kagi reads version {VERSION}: reseal it")]
    UnknownVersion(u8),
    /// The ephemeral public key is not a P-256 point.
    #[error("sealed content's ephemeral key is not a P-256 point: the value was altered")]
    BadEphemeralKey,
    /// The tag does not verify.
    #[error(
        "sealed content does not open: it was sealed for another card, applet instance, role or request, or altered on the way; ask the issuer to seal it again for this card"
    )]
    DoesNotOpen,
    /// The card key is not a usable P-256 key.
    #[error("the card's content key is not a P-256 key: {0}")]
    BadCardKey(String),
    /// No randomness for the ephemeral key or nonce.
    #[error("no randomness for sealing: {0}")]
    Random(String),
}

/// What a sealed value is for (the item of the personalisation script that carries it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A private key for the key EF with this file id.
    KeyEf(u16),
    /// A PIN for the PIN EF with this file id.
    PinEf(u16),
}

impl Role {
    fn bytes(self) -> [u8; 3] {
        let (kind, fid) = match self {
            Role::KeyEf(f) => (0x01, f),
            Role::PinEf(f) => (0x02, f),
        };
        let [a, b] = fid.to_be_bytes();
        [kind, a, b]
    }
}

/// Everything a sealed value is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<'a> {
    /// The card's ICCID (digits, as its certificate names it).
    pub iccid: &'a str,
    /// The serial number of the card's certificate (big-endian bytes, as in the DER).
    pub card_serial: &'a [u8],
    /// The applet instance AID that may open the value.
    pub instance: &'a [u8],
    /// What the value is.
    pub role: Role,
    /// The operation's request id (the provider's idempotency key).
    pub request_id: &'a [u8],
}

fn put(out: &mut Vec<u8>, field: &[u8]) {
    // Every field is length-prefixed, so no two bindings give the same bytes.
    let n = u16::try_from(field.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&field[..usize::from(n)]);
}

impl Binding<'_> {
    /// HKDF's info: a label, the card identity, the instance and the role.
    pub fn info(&self) -> Vec<u8> {
        let mut v = b"kagi content v1".to_vec();
        put(&mut v, self.iccid.as_bytes());
        put(&mut v, self.card_serial);
        put(&mut v, self.instance);
        v.extend_from_slice(&self.role.bytes());
        v
    }

    /// GCM's associated data: the info and the request id.
    pub fn aad(&self) -> Vec<u8> {
        let mut v = self.info();
        put(&mut v, self.request_id);
        v
    }
}

/// A 32-byte key from an ECDH secret between an ephemeral key `eph` and the card's key
/// `card` (both SEC1 points, the salt of HKDF-SHA256), for the purpose `info`.
pub fn agreed_key(
    shared: &p256::ecdh::SharedSecret,
    eph: &[u8],
    card: &[u8],
    info: &[u8],
) -> Zeroizing<[u8; 32]> {
    let salt = [eph, card].concat();
    let hk = shared.extract::<sha2::Sha256>(Some(&salt));
    let mut k = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit of 255 · 32.
    if hk.expand(info, &mut k[..]).is_err() {
        unreachable!("HKDF-SHA256 expands to 32 bytes")
    }
    k
}

fn cipher(k: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(&Key::<Aes256Gcm>::from(*k))
}

/// Seals `plaintext` to the card whose key agreement key is `card` (checked by the caller
/// against the card's certificate and the manufacturer CA), for `binding`.
pub fn seal(
    card: &p256::PublicKey,
    binding: &Binding<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, ContentError> {
    seal_to(card, &binding.info(), &binding.aad(), plaintext)
}

/// Opens a sealed value with the card's private key agreement key, for `binding` (the card
/// builds it from its own identity, the calling applet's instance AID and the item).
pub fn open(
    card: &p256::SecretKey,
    binding: &Binding<'_>,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ContentError> {
    open_with(card, &binding.info(), &binding.aad(), sealed)
}

/// Seals `plaintext` to the P-256 key `to` — the one sealing kagi uses for values meant for
/// one key holder (content for a card, an MNO-TSM's keys for an SP-TSM): a fresh ephemeral
/// key, ECDH with `to`, the key [`agreed_key`] derives for `info`, AES-256-GCM under a fresh
/// random nonce with associated data `aad`; `VERSION ‖ eph_pub (65) ‖ nonce (12) ‖ ct ‖ tag`.
pub fn seal_to(
    to: &p256::PublicKey,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, ContentError> {
    use p256::elliptic_curve::Generate;
    use p256::elliptic_curve::sec1::ToSec1Point;
    let eph = p256::ecdh::EphemeralSecret::try_generate()
        .map_err(|e| ContentError::Random(e.to_string()))?;
    let eph_pub = eph.public_key().to_sec1_point(false);
    let to_pub = to.to_sec1_point(false);
    let shared = eph.diffie_hellman(to);
    let k = agreed_key(&shared, eph_pub.as_bytes(), to_pub.as_bytes(), info);
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| ContentError::Random(e.to_string()))?;
    let ct = cipher(&k)
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| ContentError::Random("AES-GCM refused the plaintext".into()))?;
    let mut out = Vec::with_capacity(MIN_LEN + plaintext.len());
    out.push(VERSION);
    out.extend_from_slice(eph_pub.as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens what [`seal_to`] sealed to `me`'s public key for `info` and `aad`.
pub fn open_with(
    me: &p256::SecretKey,
    info: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ContentError> {
    open_as(me, &me.public_key(), info, aad, sealed)
}

/// [`open_with`] for a holder that keeps its public key `me_pub` (computing it from `me` is a
/// scalar multiplication, a third of the opening). A `me_pub` that is not `me`'s half opens
/// nothing ([`ContentError::DoesNotOpen`]): the key derivation binds the sealer's view of it.
pub fn open_as(
    me: &p256::SecretKey,
    me_pub: &p256::PublicKey,
    info: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ContentError> {
    use p256::elliptic_curve::sec1::ToSec1Point;
    if sealed.len() < MIN_LEN {
        return Err(ContentError::Truncated(sealed.len()));
    }
    if sealed[0] != VERSION {
        return Err(ContentError::UnknownVersion(sealed[0]));
    }
    let (eph, rest) = sealed[1..].split_at(POINT_LEN);
    let (nonce, ct) = rest.split_at(NONCE_LEN);
    let eph_key =
        p256::PublicKey::from_sec1_bytes(eph).map_err(|_| ContentError::BadEphemeralKey)?;
    // Only the uncompressed form is written; another encoding of the same point is refused
    // so that the salt is the bytes the sealer used.
    if eph_key.to_sec1_point(false).as_bytes() != eph {
        return Err(ContentError::BadEphemeralKey);
    }
    let me_pub = me_pub.to_sec1_point(false);
    let shared = p256::ecdh::diffie_hellman(me.to_nonzero_scalar(), eph_key.as_affine());
    let k = agreed_key(&shared, eph, me_pub.as_bytes(), info);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| ContentError::DoesNotOpen)?;
    let mut plain = cipher(&k)
        .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad })
        .map_err(|_| ContentError::DoesNotOpen)?;
    let out = Zeroizing::new(plain.clone());
    plain.zeroize();
    Ok(out)
}

/// The card's key agreement public key from its SEC1 encoding (a certificate's subject key).
pub fn card_public_key(sec1: &[u8]) -> Result<p256::PublicKey, ContentError> {
    p256::PublicKey::from_sec1_bytes(sec1).map_err(|e| ContentError::BadCardKey(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> p256::SecretKey {
        // Any scalar below the group order is a key: a fixed pattern per seed.
        let mut b = [seed; 32];
        b[0] = 0x01;
        p256::SecretKey::from_slice(&b).unwrap()
    }

    const RID: [u8; 16] = [0x5A; 16];

    fn binding(role: Role) -> Binding<'static> {
        Binding {
            iccid: "8981100000000000019",
            card_serial: &[0x01, 0x23],
            instance: &[0xD3, 0x92, 0xF0, 0x00, 0x26, 0x01, 0x00, 0x00, 0x00, 0x01],
            role,
            request_id: &RID,
        }
    }

    #[test]
    fn equal_values_seal_to_different_bytes() {
        let a = key(7);
        let b = key(8);
        let bind = binding(Role::PinEf(0x18));
        let s1 = seal(&a.public_key(), &bind, b"2468").unwrap();
        let s2 = seal(&a.public_key(), &bind, b"2468").unwrap();
        let s3 = seal(&b.public_key(), &bind, b"2468").unwrap();
        assert_ne!(s1, s2);
        assert_ne!(s1, s3);
        // Not one byte of the ciphertext part repeats position by position beyond chance.
        assert_ne!(s1[1 + POINT_LEN..], s2[1 + POINT_LEN..]);
        assert_eq!(open(&a, &bind, &s1).unwrap().as_slice(), b"2468");
        assert_eq!(open(&a, &bind, &s2).unwrap().as_slice(), b"2468");
        assert_eq!(open(&b, &bind, &s3).unwrap().as_slice(), b"2468");
        assert_eq!(open(&b, &bind, &s1), Err(ContentError::DoesNotOpen));
    }

    #[test]
    fn a_holder_naming_its_public_key_opens_only_with_its_own() {
        let (a, b) = (key(5), key(6));
        let bind = binding(Role::KeyEf(0x17));
        let s = seal(&a.public_key(), &bind, b"value").unwrap();
        let open_a = |public: &p256::PublicKey| {
            open_as(&a, public, &bind.info(), &bind.aad(), &s).map(|v| v.to_vec())
        };
        assert_eq!(open_a(&a.public_key()).unwrap(), b"value");
        // Another key's public half named as its own: the derivation differs, nothing opens.
        assert_eq!(open_a(&b.public_key()), Err(ContentError::DoesNotOpen));
    }

    #[test]
    fn the_layout_is_version_point_nonce_ct_tag() {
        let a = key(3);
        let s = seal(&a.public_key(), &binding(Role::KeyEf(0x17)), &[0xAB; 40]).unwrap();
        assert_eq!(s.len(), 1 + 65 + 12 + 40 + 16);
        assert_eq!(s[0], 0x01);
        // The ephemeral key is an uncompressed point (SEC1: 04 ‖ x ‖ y).
        assert_eq!(s[1], 0x04);
        assert!(p256::PublicKey::from_sec1_bytes(&s[1..66]).is_ok());
    }

    /// The format as documented, worked by hand (HMAC-SHA256 for HKDF, AES-256-GCM from the
    /// `aes-gcm` crate directly): a value [`seal`] made opens this way, so the layout, salt,
    /// info and associated data are what the module says.
    #[test]
    fn the_documented_recipe_opens_what_seal_made() {
        use hmac::{KeyInit as _, Mac};
        use p256::elliptic_curve::sec1::ToSec1Point;
        let card = key(5);
        let bind = binding(Role::KeyEf(0x17));
        let s = seal(&card.public_key(), &bind, b"the private key").unwrap();
        let (eph, nonce, ct) = (&s[1..66], &s[66..78], &s[78..]);
        let eph_key = p256::PublicKey::from_sec1_bytes(eph).unwrap();
        let z = p256::ecdh::diffie_hellman(card.to_nonzero_scalar(), eph_key.as_affine());
        let hmac = |k: &[u8], m: &[&[u8]]| {
            let mut h = hmac::Hmac::<sha2::Sha256>::new_from_slice(k).unwrap();
            for p in m {
                h.update(p);
            }
            h.finalize().into_bytes()
        };
        let salt = [eph, card.public_key().to_sec1_point(false).as_bytes()].concat();
        let prk = hmac(&salt, &[z.raw_secret_bytes()]);
        let mut info = b"kagi content v1".to_vec();
        for f in [bind.iccid.as_bytes(), bind.card_serial, bind.instance] {
            info.extend((f.len() as u16).to_be_bytes());
            info.extend(f);
        }
        info.extend([0x01, 0x00, 0x17]);
        let k = hmac(&prk, &[&info, &[0x01]]);
        let mut aad = info.clone();
        aad.extend(16u16.to_be_bytes());
        aad.extend(RID);
        let plain = Aes256Gcm::new_from_slice(&k)
            .unwrap()
            .decrypt(
                &Nonce::try_from(nonce).unwrap(),
                Payload { msg: ct, aad: &aad },
            )
            .unwrap();
        assert_eq!(plain, b"the private key");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn open_refuses_every_change(
            m in prop::collection::vec(any::<u8>(), 0..300),
            i in any::<prop::sample::Index>(),
            bit in 0u8..8,
            other_aid in prop::collection::vec(any::<u8>(), 5..16),
        ) {
            let k = key(9);
            let bind = binding(Role::KeyEf(0x17));
            let s = seal(&k.public_key(), &bind, &m).unwrap();
            let opened = open(&k, &bind, &s).unwrap();
            prop_assert_eq!(opened.as_slice(), m.as_slice());
            // Any bit flipped anywhere.
            let mut t = s.clone();
            let n = i.index(t.len());
            t[n] ^= 1 << bit;
            let e = open(&k, &bind, &t).unwrap_err();
            let expected_kinds = if n == 0 {
                matches!(e, ContentError::UnknownVersion(_))
            } else if n <= POINT_LEN {
                matches!(e, ContentError::BadEphemeralKey | ContentError::DoesNotOpen)
            } else {
                e == ContentError::DoesNotOpen
            };
            prop_assert!(expected_kinds, "flip at {} gave {:?}", n, e);
            // Any truncation.
            let cut = &s[..n];
            let e = open(&k, &bind, cut).unwrap_err();
            if cut.len() < MIN_LEN {
                prop_assert_eq!(e, ContentError::Truncated(cut.len()));
            } else {
                prop_assert_eq!(e, ContentError::DoesNotOpen);
            }
            // Another instance, role, card identity, request, or card key.
            let wrong = [
                Binding { instance: &other_aid, ..bind },
                Binding { role: Role::PinEf(0x17), ..bind },
                Binding { role: Role::KeyEf(0x1A), ..bind },
                Binding { iccid: "8981100000000000027", ..bind },
                Binding { card_serial: &[0x01, 0x24], ..bind },
                Binding { request_id: &[0x5B; 16], ..bind },
            ];
            for w in wrong {
                if w != bind {
                    prop_assert_eq!(open(&k, &w, &s).unwrap_err(), ContentError::DoesNotOpen);
                }
            }
            prop_assert_eq!(open(&key(10), &bind, &s).unwrap_err(), ContentError::DoesNotOpen);
        }

        #[test]
        fn open_never_panics(junk in prop::collection::vec(any::<u8>(), 0..200)) {
            let k = key(4);
            prop_assert!(open(&k, &binding(Role::PinEf(0x18)), &junk).is_err());
        }
    }
}
