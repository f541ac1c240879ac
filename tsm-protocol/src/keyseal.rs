//! A provider domain's initial keys, from the MNO-TSM to the SP-TSM that asked for the SIM's
//! preparation (seed 004 ⑭), **sealed to that SP-TSM**: whoever sees the signed `Prepared`
//! answer (a proxy, a log, the relay, another SP-TSM) reads nothing of them.
//!
//! The SP-TSM puts a reply key in its signed [`crate::control::ControlRequest::PrepareSim`]:
//! a P-256 public key it derives from its own state key and the operation
//! ([`reply_secret`]: the same for every retry of one operation, so the request — and its
//! idempotency — stay the same; no other party can derive it). The MNO-TSM seals with
//! ECDH-ES, a fresh ephemeral key per answer:
//!
//! - `Z` = the x coordinate of ECDH(ephemeral, reply key);
//! - `K` = HKDF-SHA256(salt = `eph_pub ‖ reply_pub`, IKM = `Z`, info = [`Context::info`]),
//!   32 bytes; the info binds both parties, the provider, the SIM, the domain and the
//!   MNO-TSM's operation;
//! - AES-256-GCM under `K`, a random 96-bit nonce, associated data = the info;
//! - `ver (01) ‖ eph_pub (65) ‖ nonce (12) ‖ ct (49: KVN ‖ ENC ‖ MAC ‖ DEK) ‖ tag (16)`.

use crate::control::InitialKeys;
use card_wire::content::ContentError;
use p256::elliptic_curve::sec1::ToSec1Point;
use zeroize::Zeroizing;

/// The format version.
pub const VERSION: u8 = 1;
const POINT: usize = 65;
const NONCE: usize = 12;
const PLAIN: usize = 1 + 3 * 16;
/// A sealed key set's length.
pub const SEALED_LEN: usize = 1 + POINT + NONCE + PLAIN + 16;

/// Why initial keys could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySealError {
    /// Not a sealed key set of this format.
    #[error(
        "the sealed initial keys are malformed ({0}): the MNO-TSM must answer version {VERSION}, {SEALED_LEN} bytes"
    )]
    Malformed(&'static str),
    /// The reply key is not a P-256 point.
    #[error("the reply key is not a P-256 public key: the SP-TSM must send its reply key")]
    BadReplyKey,
    /// The tag does not verify.
    #[error(
        "the sealed initial keys do not open: they were sealed for another SP-TSM, SIM, domain or operation, or altered on the way; ask the MNO-TSM again"
    )]
    DoesNotOpen,
    /// No randomness.
    #[error("no randomness for sealing: {0}")]
    Random(String),
}

/// What the sealed keys are bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context<'a> {
    /// The MNO-TSM (sealer).
    pub mno: &'a str,
    /// The SP-TSM (the only one that opens).
    pub sp_tsm: &'a str,
    /// The provider the domain is for.
    pub provider: &'a str,
    /// The SIM.
    pub iccid: &'a str,
    /// The domain's AID.
    pub sd_aid: &'a [u8],
    /// The MNO-TSM's operation.
    pub op: &'a [u8; 16],
}

fn put(out: &mut Vec<u8>, field: &[u8]) {
    let n = u16::try_from(field.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&field[..usize::from(n)]);
}

impl Context<'_> {
    /// HKDF's info and GCM's associated data: a label and every field, length-prefixed.
    pub fn info(&self) -> Vec<u8> {
        let mut v = b"kagi initial keys v1".to_vec();
        for f in [
            self.mno.as_bytes(),
            self.sp_tsm.as_bytes(),
            self.provider.as_bytes(),
            self.iccid.as_bytes(),
            self.sd_aid,
            &self.op[..],
        ] {
            put(&mut v, f);
        }
        v
    }
}

/// The SP-TSM's reply key for its operation `op`, derived from its state key (HMAC-SHA256,
/// a counter byte until the bytes are a scalar).
pub fn reply_secret(state_key: &[u8], op: &[u8; 16]) -> Result<p256::SecretKey, KeySealError> {
    use hmac::Mac;
    for counter in 0u8..=255 {
        let mut h = <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(state_key)
            .map_err(|_| KeySealError::BadReplyKey)?;
        h.update(b"kagi mno reply key v1\0");
        h.update(op);
        h.update(&[counter]);
        let b = Zeroizing::new(h.finalize().into_bytes());
        if let Ok(k) = p256::SecretKey::from_slice(&b) {
            return Ok(k);
        }
    }
    Err(KeySealError::BadReplyKey)
}

/// The reply key's public half as the request carries it (uncompressed SEC1).
pub fn reply_public(secret: &p256::SecretKey) -> Vec<u8> {
    secret.public_key().to_sec1_point(false).as_bytes().to_vec()
}

/// Seals `keys` to the reply key `reply` (SEC1 bytes from the request) for `ctx` (MNO-TSM):
/// [`card_wire::content::seal_to`] with the context as both HKDF info and associated data.
pub fn seal(reply: &[u8], ctx: &Context<'_>, keys: &InitialKeys) -> Result<Vec<u8>, KeySealError> {
    let to = p256::PublicKey::from_sec1_bytes(reply).map_err(|_| KeySealError::BadReplyKey)?;
    let mut plain = Zeroizing::new(Vec::with_capacity(PLAIN));
    plain.push(keys.kvn);
    plain.extend_from_slice(&keys.enc);
    plain.extend_from_slice(&keys.mac);
    plain.extend_from_slice(&keys.dek);
    let info = ctx.info();
    card_wire::content::seal_to(&to, &info, &info, &plain).map_err(|e| match e {
        ContentError::Random(s) => KeySealError::Random(s),
        other => KeySealError::Random(other.to_string()),
    })
}

/// Opens keys sealed by [`seal`] with the reply key's secret `reply`, for `ctx` (SP-TSM).
pub fn open(
    reply: &p256::SecretKey,
    ctx: &Context<'_>,
    sealed: &[u8],
) -> Result<InitialKeys, KeySealError> {
    if sealed.len() != SEALED_LEN {
        return Err(KeySealError::Malformed("length"));
    }
    let info = ctx.info();
    let plain =
        card_wire::content::open_with(reply, &info, &info, sealed).map_err(|e| match e {
            ContentError::Truncated(_) => KeySealError::Malformed("length"),
            ContentError::UnknownVersion(_) => KeySealError::Malformed("version"),
            ContentError::BadEphemeralKey => KeySealError::Malformed("point"),
            _ => KeySealError::DoesNotOpen,
        })?;
    if plain.len() != PLAIN {
        return Err(KeySealError::Malformed("length"));
    }
    let part = |i: usize| {
        let mut b = [0u8; 16];
        b.copy_from_slice(&plain[1 + 16 * i..17 + 16 * i]);
        b
    };
    Ok(InitialKeys {
        kvn: plain[0],
        enc: part(0),
        mac: part(1),
        dek: part(2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OP: [u8; 16] = [0x33; 16];
    const CTX: Context<'static> = Context {
        mno: "mno:kagi-mobile",
        sp_tsm: "tsm:kagi",
        provider: "sp:kagi-bank",
        iccid: "8981100000000000019",
        sd_aid: &[0xA0, 0, 0, 1, 0x51, 0x53, 0x50, 0x50, 1],
        op: &OP,
    };

    fn keys() -> InitialKeys {
        InitialKeys {
            kvn: 0x20,
            enc: [0x11; 16],
            mac: [0x22; 16],
            dek: [0x44; 16],
        }
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn only_the_asking_sp_tsm_opens_and_nothing_shows() {
        let mine = reply_secret(&[7; 32], &[1; 16]).unwrap();
        let other = reply_secret(&[8; 32], &[1; 16]).unwrap();
        // Derived again for a retry of the same operation: the same reply key.
        assert_eq!(reply_secret(&[7; 32], &[1; 16]).unwrap(), mine);
        assert_ne!(reply_secret(&[7; 32], &[2; 16]).unwrap(), mine);
        let a = seal(&reply_public(&mine), &CTX, &keys()).unwrap();
        let b = seal(&reply_public(&mine), &CTX, &keys()).unwrap();
        assert_ne!(a, b, "a fresh ephemeral key and nonce per answer");
        assert_eq!(a.len(), SEALED_LEN);
        for s in [&a, &b] {
            for k in [[0x11; 16], [0x22; 16], [0x44; 16]] {
                assert!(!contains(s, &k));
            }
        }
        assert_eq!(open(&mine, &CTX, &a).unwrap(), keys());
        assert_eq!(open(&other, &CTX, &a), Err(KeySealError::DoesNotOpen));
        for ctx in [
            Context {
                sp_tsm: "tsm:other",
                ..CTX
            },
            Context {
                mno: "mno:other",
                ..CTX
            },
            Context {
                iccid: "8981100000000000027",
                ..CTX
            },
            Context {
                op: &[0x34; 16],
                ..CTX
            },
            Context {
                sd_aid: &[0xA0, 0, 0, 1],
                ..CTX
            },
            Context {
                provider: "sp:other",
                ..CTX
            },
        ] {
            assert_eq!(open(&mine, &ctx, &a), Err(KeySealError::DoesNotOpen));
        }
        for i in 66..a.len() {
            let mut t = a.clone();
            t[i] ^= 0x01;
            assert_eq!(open(&mine, &CTX, &t), Err(KeySealError::DoesNotOpen), "{i}");
        }
        assert!(matches!(
            open(&mine, &CTX, &a[..50]),
            Err(KeySealError::Malformed(_))
        ));
        assert_eq!(
            seal(&[4; 65], &CTX, &keys()),
            Err(KeySealError::BadReplyKey)
        );
    }

    /// The documented recipe, worked with HMAC-SHA256 and `aes-gcm` directly.
    #[test]
    fn the_documented_recipe_opens_what_seal_made() {
        use aes_gcm::aead::{Aead, Payload};
        use aes_gcm::{Aes256Gcm, Nonce};
        use hmac::{KeyInit as _, Mac};
        let mine = reply_secret(&[7; 32], &[1; 16]).unwrap();
        let s = seal(&reply_public(&mine), &CTX, &keys()).unwrap();
        let (eph, nonce, ct) = (&s[1..66], &s[66..78], &s[78..]);
        let z = p256::ecdh::diffie_hellman(
            mine.to_nonzero_scalar(),
            p256::PublicKey::from_sec1_bytes(eph).unwrap().as_affine(),
        );
        let hm = |k: &[u8], parts: &[&[u8]]| {
            let mut h = <hmac::Hmac<sha2::Sha256>>::new_from_slice(k).unwrap();
            for p in parts {
                h.update(p);
            }
            h.finalize().into_bytes().to_vec()
        };
        let salt = [eph, &reply_public(&mine)].concat();
        let prk = hm(&salt, &[z.raw_secret_bytes()]);
        let mut info = b"kagi initial keys v1".to_vec();
        for f in [
            &b"mno:kagi-mobile"[..],
            b"tsm:kagi",
            b"sp:kagi-bank",
            b"8981100000000000019",
            &[0xA0, 0, 0, 1, 0x51, 0x53, 0x50, 0x50, 1],
            &[0x33; 16],
        ] {
            info.extend((f.len() as u16).to_be_bytes());
            info.extend(f);
        }
        let k = hm(&prk, &[&info, &[1]]);
        let plain = Aes256Gcm::new_from_slice(&k)
            .unwrap()
            .decrypt(
                &Nonce::try_from(nonce).unwrap(),
                Payload {
                    msg: ct,
                    aad: &info,
                },
            )
            .unwrap();
        let mut expect = vec![0x20];
        expect.extend([0x11; 16]);
        expect.extend([0x22; 16]);
        expect.extend([0x44; 16]);
        assert_eq!(plain, expect);
    }
}
