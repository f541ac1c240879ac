//! A JPKI-style applet (公的個人認証AP), as real clients such as OpenSC's `jpki` driver expect
//! it (`research/jpki-interface.md`):
//!
//! - AID `D3 92 F0 00 26 01 00 00 00 01`; EFs selected with `00 A4 02 0C 02 <FID>`;
//! - certificates: `000A` user authentication and `000B` its CA, `0002` signature CA — readable
//!   without PIN; `0001` signature certificate — only after the signature password;
//!   `0006` token info, `0008` certificate availability;
//! - keys `0017` (authentication) and `001A` (signature), RSA-2048, signing with
//!   `80 2A 00 80|SFI` = PKCS#1 v1.5 type 1 over the data as given (a DigestInfo);
//! - PINs `0018` (4 digits, 3 tries) and `001B` (6–16 upper-case letters and digits, 5 tries):
//!   VERIFY, the empty VERIFY that reports `63Cx` without spending a try, CHANGE REFERENCE
//!   DATA; `6984` once blocked, and blocked stays blocked across resets; a PIN never set (a
//!   phone's AP with the user-authentication credential alone has no signature PIN) selects
//!   and counts as blocked (`63C0`, `6984`), so OpenSC lists such a card;
//! - READ BINARY with `6B00` at or past the end; GET CHALLENGE.
//!
//! Persistent data lives in the store; the try counter is decremented before the comparison
//! and restored after a match, so cutting power during VERIFY never grants a free try.
//! Personalisation arrives as STORE DATA through the security domain (under SCP03): `C1` EF
//! contents, `C2` private keys (PKCS#1 DER), `C6` private keys sealed to this card and this
//! instance (`card_wire::content`, opened by the runtime with the card's key agreement key,
//! [`crate::card_key`]), `C3` PINs, `C8` PINs sealed likewise, `C4` on-card key generation (the response carries only
//! the public key), `C7` a key proof for the TSM's receipt (`card_wire::jpki::ITEM_KEY_PROOF`),
//! `C9` on-card key generation with a proof for the JPKI issuer (`card_wire::keygen`: ISO
//! 7816-8 GENERATE ASYMMETRIC KEY PAIR, offered only as this personalisation item — so only
//! under the provider's security-domain secure channel, never to whoever talks to the applet
//! in clear — and only until the key's certificate is written).

use crate::applet::{Applet, AppletContext};
use crate::class_table::{ClassError, ClassTable};
use crate::timing::CardOp;
use card_wire::apdu::{Command, Response};
use card_wire::content::Role;
use card_wire::sw::StatusWord;
use card_wire::tlv;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::pkcs1v15::Pkcs1v15Sign;
use rsa::traits::PublicKeyParts;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

type Sw = StatusWord;

pub use card_wire::jpki::*;

/// The files, keys and PINs of a PIN-protected file applet.
#[derive(Debug)]
pub struct Profile {
    /// Data EFs and the PIN that must be verified to read each (none: free).
    pub data_efs: &'static [(u16, Option<u16>)],
    /// Private-key EFs and the PIN that opens each.
    pub keys: &'static [(u16, u16)],
    /// PIN EFs: format and try limit.
    pub pins: &'static [(u16, PinFormat, u8)],
}

impl Profile {
    fn pin_for(&self, fid: u16) -> Option<u16> {
        self.data_efs
            .iter()
            .find(|(f, _)| *f == fid)
            .and_then(|(_, p)| *p)
            .or_else(|| self.keys.iter().find(|(f, _)| *f == fid).map(|(_, p)| *p))
    }
    fn pin(&self, fid: u16) -> Option<(PinFormat, u8)> {
        self.pins
            .iter()
            .find(|(f, ..)| *f == fid)
            .map(|(_, fmt, max)| (*fmt, *max))
    }
    fn is_key(&self, fid: u16) -> bool {
        self.keys.iter().any(|(f, _)| *f == fid)
    }
    fn is_data(&self, fid: u16) -> bool {
        self.data_efs.iter().any(|(f, _)| *f == fid)
    }
    /// Whether `value` has the format of PIN `pin`.
    pub fn pin_format_ok(&self, pin: u16, value: &[u8]) -> bool {
        self.pin(pin).is_some_and(|(fmt, _)| fmt.accepts(value))
    }
}

/// The JPKI AP: certificates, two keys, two PINs.
pub static JPKI: Profile = Profile {
    data_efs: &[
        (EF_SIGN_CERT, Some(EF_SIGN_PIN)),
        (EF_SIGN_CA, None),
        (EF_TOKEN_INFO, None),
        (EF_CERT_AVAILABILITY, None),
        (EF_AUTH_CERT, None),
        (EF_AUTH_CA, None),
    ],
    keys: &[(EF_AUTH_KEY, EF_AUTH_PIN), (EF_SIGN_KEY, EF_SIGN_PIN)],
    pins: &[
        (EF_AUTH_PIN, PinFormat::FourDigits, 3),
        (EF_SIGN_PIN, PinFormat::Password, 5),
    ],
};

/// The text AP: My Number and the four basic facts behind their own 4-digit PIN.
pub static TEXT: Profile = Profile {
    data_efs: &[
        (EF_MY_NUMBER, Some(EF_TEXT_PIN)),
        (EF_BASIC_FACTS, Some(EF_TEXT_PIN)),
    ],
    keys: &[],
    pins: &[(EF_TEXT_PIN, PinFormat::FourDigits, 3)],
};

/// The JPKI AP's class name.
pub const JPKI_CLASS: &str = "jpki.ap";
/// The text AP's class name.
pub const TEXT_CLASS: &str = "jpki.text";

/// Registers the JPKI AP and the text AP classes.
pub fn register(table: &mut ClassTable) -> Result<(), ClassError> {
    table.register(JPKI_CLASS, |_| Ok(Box::new(FileApplet::new(&JPKI))))?;
    table.register(TEXT_CLASS, |_| Ok(Box::new(FileApplet::new(&TEXT))))
}

/// Whether `value` has the format of JPKI PIN `pin`.
pub fn pin_format_ok(pin: u16, value: &[u8]) -> bool {
    JPKI.pin_format_ok(pin, value)
}

/// A PIN-protected file applet (the JPKI AP or the text AP, by [`Profile`]). Transient
/// state: the current EF and which PINs are verified (cleared by reset and by selecting the
/// AP again, as OpenSC's logout expects), and a personalisation script being received.
#[derive(Debug)]
pub struct FileApplet {
    profile: &'static Profile,
    current: Option<u16>,
    verified: Vec<u16>,
    perso: Vec<u8>,
    keys: KeyCache,
}

/// Signing keys as parsed from their records (RAM only, cleared on reset), each with the
/// SHA-256 of the record it came from: a key rewritten in the store is parsed again. Parsing
/// a PKCS#1 RSA key (checks and CRT precomputation) costs about as much as a signature.
#[derive(Default)]
struct KeyCache(Vec<(u16, [u8; 32], CardKey)>);

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyCache({} keys)", self.0.len())
    }
}

impl KeyCache {
    fn get(&mut self, fid: u16, stored: &[u8]) -> Option<&CardKey> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(stored).into();
        let at = match self
            .0
            .iter()
            .position(|(f, d, _)| *f == fid && *d == digest)
        {
            Some(i) => i,
            None => {
                let key = CardKey::parse(stored)?;
                self.0.retain(|(f, _, _)| *f != fid);
                self.0.push((fid, digest, key));
                self.0.len() - 1
            }
        };
        self.0.get(at).map(|(_, _, k)| k)
    }
}

/// The JPKI AP.
pub type JpkiApplet = FileApplet;

impl FileApplet {
    /// An applet with `profile`.
    pub fn new(profile: &'static Profile) -> Self {
        FileApplet {
            profile,
            current: None,
            verified: Vec::new(),
            perso: Vec::new(),
            keys: KeyCache::default(),
        }
    }
}

/// Largest personalisation script (all STORE DATA blocks of one INSTALL [for
/// personalization]).
pub const MAX_PERSO: usize = 32 * 1024;

/// The name of an EF, key or PIN object in the applet's own store.
fn key_of(kind: &str, fid: u16) -> String {
    format!("{kind}/{fid:04X}")
}

impl FileApplet {
    fn exists(&self, ctx: &AppletContext<'_>, fid: u16) -> bool {
        let kind = if self.profile.is_key(fid) {
            "key"
        } else if self.profile.pin(fid).is_some() {
            "pin"
        } else {
            "ef"
        };
        ctx.store.get(&key_of(kind, fid)).is_some()
    }

    /// Whether `fid` is a PIN of the profile that was never set while another one was.
    fn unset_pin(&self, ctx: &AppletContext<'_>, fid: u16) -> bool {
        self.profile.pin(fid).is_some()
            && self
                .profile
                .pins
                .iter()
                .any(|(f, ..)| *f != fid && ctx.store.get(&key_of("pin", *f)).is_some())
    }

    fn select_ef(&mut self, cmd: &Command, ctx: &AppletContext<'_>) -> Result<Response, Sw> {
        if cmd.p2() & 0xF3 != 0x00 && cmd.p2() != 0x0C {
            return Err(Sw::INCORRECT_P1P2);
        }
        let [a, b] = cmd.data() else {
            return Err(Sw::WRONG_LENGTH);
        };
        let fid = u16::from_be_bytes([*a, *b]);
        // A PIN of the profile selects even when it was never set, once the AP holds another
        // one: a JPKI AP with the user-authentication credential alone (a phone's) has no
        // signature PIN, which then answers as blocked (see `verify`).
        if !self.exists(ctx, fid) && !self.unset_pin(ctx, fid) {
            return Err(Sw::NOT_FOUND);
        }
        self.current = Some(fid);
        Ok(Response::status(Sw::SUCCESS))
    }

    fn read_binary(&self, cmd: &Command, ctx: &AppletContext<'_>) -> Result<Response, Sw> {
        if cmd.p1() & 0x80 != 0 {
            // Short-EF addressing is not offered.
            return Err(Sw::INCORRECT_P1P2);
        }
        let fid = self.current.ok_or(Sw::NO_CURRENT_EF)?;
        if self.profile.is_key(fid) || self.profile.pin(fid).is_some() {
            return Err(Sw::INCOMPATIBLE_FILE_STRUCTURE);
        }
        if let Some(pin) = self.profile.pin_for(fid)
            && !self.verified.contains(&pin)
        {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let data = ctx.store.get(&key_of("ef", fid)).ok_or(Sw::NOT_FOUND)?;
        let offset = u16::from_be_bytes([cmd.p1(), cmd.p2()]) as usize;
        if offset >= data.len() {
            return Err(StatusWord(0x6B00));
        }
        let n = cmd.ne().unwrap_or(256).min(data.len() - offset);
        Ok(Response::success(&data[offset..offset + n]))
    }

    fn current_pin(&self, cmd: &Command) -> Result<u16, Sw> {
        if cmd.p1() != 0x00 && cmd.ins() == 0x20 {
            return Err(Sw::INCORRECT_P1P2);
        }
        match cmd.p2() {
            0x80 => match self.current {
                Some(f) if self.profile.pin(f).is_some() => Ok(f),
                Some(_) => Err(Sw::REFERENCED_DATA_NOT_FOUND),
                None => Err(Sw::NO_CURRENT_EF),
            },
            // P2 = 80 | n names PIN EF 00n directly.
            p2 if p2 & 0xE0 == 0x80 && self.profile.pin(u16::from(p2 & 0x1F)).is_some() => {
                Ok(u16::from(p2 & 0x1F))
            }
            _ => Err(Sw::INCORRECT_P1P2),
        }
    }

    fn verify(&mut self, cmd: &Command, ctx: &mut AppletContext<'_>) -> Result<Response, Sw> {
        let pin = self.current_pin(cmd)?;
        let key = key_of("pin", pin);
        let Some(record) = ctx.store.get(&key).map(<[u8]>::to_vec) else {
            // A PIN never set beside one that is (no credential behind it): no tries to give.
            // OpenSC 0.23's jpki driver reads both PINs' counters before it lists a card, so a
            // phone's JPKI AP with the user-authentication credential alone lists, its
            // signature PIN blocked.
            if !self.unset_pin(ctx, pin) {
                return Err(Sw::REFERENCED_DATA_NOT_FOUND);
            }
            return Err(if cmd.data().is_empty() {
                StatusWord(0x63C0)
            } else {
                Sw::REFERENCE_DATA_NOT_USABLE
            });
        };
        let (tries, max, reference) = match record.as_slice() {
            [t, m, rest @ ..] => (*t, *m, rest),
            _ => return Err(Sw::REFERENCED_DATA_NOT_FOUND),
        };
        let data = cmd.data();
        if data.is_empty() {
            // The retry query: never spends a try, always 63Cx.
            return Err(StatusWord(0x63C0 | u16::from(tries.min(15))));
        }
        if data.len() > 16 {
            return Err(Sw::WRONG_LENGTH);
        }
        if tries == 0 {
            return Err(Sw::REFERENCE_DATA_NOT_USABLE);
        }
        // Spend the try first (persistently), compare, then give it back on a match.
        let mut spent = record.clone();
        spent[0] = tries - 1;
        ctx.store.put(&key, &spent)?;
        spent.zeroize();
        let ok = data.len() == reference.len() && bool::from(data.ct_eq(reference));
        if ok {
            let mut restored = record.clone();
            restored[0] = max;
            ctx.store.put(&key, &restored)?;
            restored.zeroize();
            if !self.verified.contains(&pin) {
                self.verified.push(pin);
            }
            Ok(Response::status(Sw::SUCCESS))
        } else {
            self.verified.retain(|p| *p != pin);
            Err(StatusWord(0x63C0 | u16::from(tries - 1)))
        }
    }

    fn change_reference_data(
        &mut self,
        cmd: &Command,
        ctx: &mut AppletContext<'_>,
    ) -> Result<Response, Sw> {
        if cmd.p1() != 0x01 {
            return Err(Sw::INCORRECT_P1P2);
        }
        let pin = self.current_pin(cmd)?;
        if !self.verified.contains(&pin) {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let Some((format, max)) = self.profile.pin(pin) else {
            return Err(Sw::REFERENCED_DATA_NOT_FOUND);
        };
        if !format.accepts(cmd.data()) {
            return Err(Sw::INCORRECT_DATA);
        }
        let mut record = vec![max, max];
        record.extend_from_slice(cmd.data());
        let key = key_of("pin", pin);
        let r = ctx.store.put(&key, &record);
        record.zeroize();
        r?;
        Ok(Response::status(Sw::SUCCESS))
    }

    fn sign(&mut self, cmd: &Command, ctx: &mut AppletContext<'_>) -> Result<Response, Sw> {
        if cmd.p1() != 0x00 {
            return Err(Sw::INCORRECT_P1P2);
        }
        let fid = match cmd.p2() {
            0x80 => match self.current {
                Some(f) if self.profile.is_key(f) => f,
                _ => return Err(Sw::CONDITIONS_NOT_SATISFIED),
            },
            // P2 = 80 | n names key EF 00n directly (97 auth, 9A sign).
            p2 if p2 & 0xE0 == 0x80 && self.profile.is_key(u16::from(p2 & 0x1F)) => {
                u16::from(p2 & 0x1F)
            }
            _ => return Err(Sw::INCORRECT_P1P2),
        };
        let data = cmd.data();
        if data.is_empty() || data.len() > 245 {
            return Err(Sw::WRONG_LENGTH);
        }
        let Some(pin) = self.profile.pin_for(fid) else {
            return Err(Sw::CONDITIONS_NOT_SATISFIED);
        };
        if !self.verified.contains(&pin) {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let stored = ctx
            .store
            .get(&key_of("key", fid))
            .ok_or(Sw::REFERENCED_DATA_NOT_FOUND)?;
        let key = self
            .keys
            .get(fid, stored)
            .ok_or(Sw::REFERENCE_DATA_NOT_USABLE)?;
        let signature = key.sign(data)?;
        ctx.store.charge(key.cost());
        Ok(Response::success(signature))
    }

    /// Writes a PIN record (tries left, limit, value) after checking the PIN's format.
    fn set_pin(&self, ctx: &mut AppletContext<'_>, fid: u16, value: &[u8]) -> Result<(), Sw> {
        if !self.profile.pin_format_ok(fid, value) {
            return Err(Sw::INCORRECT_DATA);
        }
        let max = self.profile.pin(fid).map(|(_, m)| m).unwrap_or(3);
        let mut record = vec![max, max];
        record.extend_from_slice(value);
        let r = ctx.store.put(&key_of("pin", fid), &record);
        record.zeroize();
        Ok(r?)
    }

    fn personalize_item(
        &self,
        item: &tlv::Tlv<'_>,
        ctx: &mut AppletContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Sw> {
        let (fid, rest) = match item.value {
            [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
            _ => return Err(Sw::INCORRECT_DATA),
        };
        let p = self.profile;
        match (item.tag.0, fid) {
            (0xC1, f) if p.is_data(f) => {
                ctx.store.put(&key_of("ef", fid), rest)?;
            }
            (0xC2, f) if p.is_key(f) => {
                CardKey::parse(rest).ok_or(Sw::INCORRECT_DATA)?;
                ctx.store.put(&key_of("key", fid), rest)?;
            }
            (0xC6, f) if p.is_key(f) => {
                // A private key sealed to this card and this instance (`card_wire::content`):
                // neither the TSM, the relay nor the security domain can read it.
                let mut der = open_sealed(ctx, Role::KeyEf(fid), rest)?;
                if CardKey::parse(&der).is_none() {
                    der.zeroize();
                    return Err(Sw::INCORRECT_DATA);
                }
                let r = ctx.store.put(&key_of("key", fid), &der);
                der.zeroize();
                r?;
            }
            (0xC3, f) if p.pin(f).is_some() => {
                self.set_pin(ctx, fid, rest)?;
            }
            (0xC8, f) if p.pin(f).is_some() => {
                // A PIN sealed to this card and instance: the TSM never sees it.
                let pin = open_sealed(ctx, Role::PinEf(fid), rest)?;
                self.set_pin(ctx, fid, &pin)?;
            }
            (0xC7, f) if p.is_key(f) && rest.len() == 48 => {
                // A key proof for the TSM's receipt: the key signs a message the card builds
                // from the operation and nonce, so nothing else can be signed without the PIN.
                let (op, nonce) = rest.split_at(16);
                let (Ok(op), Ok(nonce)) = (<[u8; 16]>::try_from(op), <[u8; 32]>::try_from(nonce))
                else {
                    return Err(Sw::INCORRECT_DATA);
                };
                let message = card_wire::jpki::key_proof_message(&op, &nonce);
                let stored = ctx
                    .store
                    .get(&key_of("key", fid))
                    .ok_or(Sw::REFERENCED_DATA_NOT_FOUND)?;
                let key = CardKey::parse(stored).ok_or(Sw::REFERENCE_DATA_NOT_USABLE)?;
                out.extend(tlv::tlv(0xC7, &key.sign(&key.to_be_signed(&message))?));
            }
            (0xC4, f) if p.is_key(f) && rest.is_empty() => {
                // On-card key generation (RSA-2048): only the public key leaves the card.
                let key = rsa::PrivateKey::new(&mut CardRngCore(ctx.rng), 2048)
                    .map_err(|_| Sw::EXECUTION_ERROR)?;
                ctx.store.charge(CardOp::RsaKeyGen { bits: 2048 });
                let der = key.to_pkcs1_der().map_err(|_| Sw::EXECUTION_ERROR)?;
                ctx.store.put(&key_of("key", fid), der.as_bytes())?;
                let public = key
                    .to_public_key()
                    .to_pkcs1_der()
                    .map_err(|_| Sw::EXECUTION_ERROR)?;
                out.extend(tlv::tlv(0xC4, public.as_bytes()));
            }
            (0xC4, f) if p.is_key(f) && rest == [0x02] => {
                // On-card P-256 key generation (SIM profiles): the uncompressed point leaves.
                let key: p256::ecdsa::SigningKey =
                    p256::elliptic_curve::Generate::generate_from_rng(&mut CardRngCore(ctx.rng));
                ctx.store.charge(CardOp::EcKeyGen { bits: 256 });
                let mut scalar = key.to_bytes().to_vec();
                let r = ctx.store.put(&key_of("key", fid), &scalar);
                scalar.zeroize();
                r?;
                let point = key.verifying_key().to_sec1_point(false);
                out.extend(tlv::tlv(0xC4, point.as_bytes()));
            }
            (0xC9, f) if p.is_key(f) && rest.len() == card_wire::keygen::CHALLENGE_LEN => {
                self.generate_proven(ctx, fid, rest, out)?;
            }
            _ => return Err(Sw::INCORRECT_DATA),
        }
        Ok(())
    }

    /// GENERATE ASYMMETRIC KEY PAIR with a proof ([`card_wire::keygen`]): a P-256 key made
    /// here for key EF `fid`, answered as its point, a proof of possession over the issuer's
    /// nonce and the card's tag (the runtime's, under the card's certified key agreement key,
    /// for this instance). Only in the personalisation state: `6985` once the key's
    /// certificate EF is written (a personalised applet's key is never replaced this way).
    fn generate_proven(
        &self,
        ctx: &mut AppletContext<'_>,
        fid: u16,
        challenge: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Sw> {
        use p256::ecdsa::signature::Signer;
        let cert_ef = if fid == EF_SIGN_KEY {
            EF_SIGN_CERT
        } else {
            EF_AUTH_CERT
        };
        if ctx.store.get(&key_of("ef", cert_ef)).is_some() {
            return Err(Sw::CONDITIONS_NOT_SATISFIED);
        }
        let (_, nonce) =
            card_wire::keygen::split_challenge(challenge).map_err(|_| Sw::INCORRECT_DATA)?;
        let key: p256::ecdsa::SigningKey =
            p256::elliptic_curve::Generate::generate_from_rng(&mut CardRngCore(ctx.rng));
        ctx.store.charge(CardOp::EcKeyGen { bits: 256 });
        let point = key.verifying_key().to_sec1_point(false);
        let pop: p256::ecdsa::Signature =
            key.sign(&card_wire::keygen::pop_message(point.as_bytes(), nonce));
        ctx.store.charge(CardOp::EcSign { bits: 256 });
        let pop = pop.to_bytes();
        ctx.store.charge(CardOp::Ecdh { bits: 256 });
        let tag = ctx
            .store
            .key_generation_tag(fid, challenge, point.as_bytes(), &pop)
            .map_err(|e| match e {
                crate::card_key::OpenError::Content(_) => Sw::INCORRECT_DATA,
                _ => Sw::CONDITIONS_NOT_SATISFIED,
            })?;
        let mut scalar = key.to_bytes().to_vec();
        let r = ctx.store.put(&key_of("key", fid), &scalar);
        scalar.zeroize();
        r?;
        out.extend(tlv::tlv(
            card_wire::jpki::ITEM_GENERATE_PROVEN,
            &[point.as_bytes(), &pop[..], &tag[..]].concat(),
        ));
        Ok(())
    }
}

/// Opens a sealed item's value (`request id ‖ sealed`, after the FID) through the runtime,
/// for this instance and `role`: `6985` on a card provisioned without a key agreement key,
/// `6A80` for a value that does not open here.
fn open_sealed(
    ctx: &mut AppletContext<'_>,
    role: Role,
    body: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, Sw> {
    let (request_id, sealed) =
        card_wire::jpki::split_sealed_item(body).ok_or(Sw::INCORRECT_DATA)?;
    // ECDH with the card key, then AES-GCM over the value (and its tag and length block).
    ctx.store.charge(CardOp::Ecdh { bits: 256 });
    ctx.store.charge(CardOp::Aes {
        blocks: u32::try_from(sealed.len() / 16 + 2).unwrap_or(u32::MAX),
    });
    ctx.store
        .open_sealed(role, request_id, sealed)
        .map_err(|e| match e {
            crate::card_key::OpenError::NoCardKey | crate::card_key::OpenError::NoIccid => {
                Sw::CONDITIONS_NOT_SATISFIED
            }
            crate::card_key::OpenError::Content(_) => Sw::INCORRECT_DATA,
        })
}

/// A private key in a key EF: RSA-2048 (PKCS#1 DER) or P-256 (the 32-byte scalar).
enum CardKey {
    Rsa(Box<rsa::PrivateKey>),
    P256(p256::ecdsa::SigningKey),
}

impl CardKey {
    /// What a signature with this key costs the chip.
    fn cost(&self) -> CardOp {
        match self {
            CardKey::Rsa(k) => CardOp::RsaPrivate {
                bits: u16::try_from(rsa::traits::PublicKeyParts::size(k.as_ref()) * 8)
                    .unwrap_or(u16::MAX),
            },
            CardKey::P256(_) => CardOp::EcSign { bits: 256 },
        }
    }

    fn parse(stored: &[u8]) -> Option<CardKey> {
        if stored.len() == 32 {
            return p256::ecdsa::SigningKey::from_slice(stored)
                .ok()
                .map(CardKey::P256);
        }
        let key = rsa::PrivateKey::from_pkcs1_der(stored).ok()?;
        (key.size() == 256).then(|| CardKey::Rsa(Box::new(key)))
    }

    /// What the key signs for `message`: the SHA-256 DigestInfo (RSA) or hash (P-256).
    fn to_be_signed(&self, message: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            CardKey::Rsa(_) => card_wire::jpki::sha256_digest_info(message),
            CardKey::P256(_) => sha2::Sha256::digest(message).to_vec(),
        }
    }

    /// RSA: PKCS#1 v1.5 type 1 over the data as given (a DigestInfo). P-256: ECDSA over a
    /// 32-byte hash, answered as r ‖ s.
    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, Sw> {
        match self {
            CardKey::Rsa(k) => k
                .sign(Pkcs1v15Sign::new_unprefixed(), data)
                .map_err(|_| Sw::WRONG_LENGTH),
            CardKey::P256(k) => {
                if data.len() != 32 {
                    return Err(Sw::WRONG_LENGTH);
                }
                use p256::ecdsa::signature::hazmat::PrehashSigner;
                let sig: p256::ecdsa::Signature =
                    k.sign_prehash(data).map_err(|_| Sw::EXECUTION_ERROR)?;
                Ok(sig.to_bytes().to_vec())
            }
        }
    }
}

/// The card's random source as a `rand_core` generator (for on-card key generation): the
/// operating system's generator, or the seeded one in deterministic mode.
struct CardRngCore<'a>(&'a mut crate::rng::CardRng);

impl rand_core::TryRng for CardRngCore<'_> {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.0.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill(dst);
        Ok(())
    }
}

impl rand_core::TryCryptoRng for CardRngCore<'_> {}

impl Applet for FileApplet {
    fn select(&mut self, _ctx: &mut AppletContext<'_>) -> Result<Vec<u8>, Sw> {
        self.current = None;
        self.verified.clear();
        Ok(Vec::new())
    }

    fn deselect(&mut self, _: &mut AppletContext<'_>) {
        self.current = None;
        self.verified.clear();
    }

    fn process(&mut self, cmd: &Command, ctx: &mut AppletContext<'_>) -> Result<Response, Sw> {
        let cla = cmd.class();
        if cla.has_secure_messaging() {
            return Err(Sw::SECURE_MESSAGING_NOT_SUPPORTED);
        }
        match (cla.is_proprietary(), cmd.ins()) {
            (false, 0xA4) if cmd.p1() == 0x02 => self.select_ef(cmd, ctx),
            (false, 0xA4) => Err(Sw::INCORRECT_P1P2),
            (false, 0xB0) => self.read_binary(cmd, ctx),
            (false, 0x20) => self.verify(cmd, ctx),
            (false, 0x24) => self.change_reference_data(cmd, ctx),
            (true, 0x2A) => self.sign(cmd, ctx),
            (false, 0x84) => {
                let n = cmd.ne().ok_or(Sw::WRONG_LENGTH)?;
                Ok(Response::success(ctx.rng.bytes(n.min(256))))
            }
            (true, _) if cmd.class().byte() & 0xF0 != 0x80 => Err(Sw::CLA_NOT_SUPPORTED),
            _ => Err(Sw::INS_NOT_SUPPORTED),
        }
    }

    /// STORE DATA blocks are collected until the last one (P1 bit `80`); then the whole
    /// script applies in one transaction, or not at all.
    fn personalize(&mut self, cmd: &Command, ctx: &mut AppletContext<'_>) -> Result<Response, Sw> {
        if self.perso.len() + cmd.data().len() > MAX_PERSO {
            self.perso.clear();
            return Err(Sw::NOT_ENOUGH_MEMORY);
        }
        self.perso.extend_from_slice(cmd.data());
        if cmd.p1() & 0x80 == 0 {
            return Ok(Response::status(Sw::SUCCESS));
        }
        let script = std::mem::take(&mut self.perso);
        let items = tlv::parse_all(&script).map_err(|_| Sw::INCORRECT_DATA)?;
        if items.is_empty() {
            return Err(Sw::WRONG_LENGTH);
        }
        let mut out = Vec::new();
        ctx.store.begin();
        for item in &items {
            if let Err(sw) = self.personalize_item(item, ctx, &mut out) {
                ctx.store.abort();
                return Err(sw);
            }
        }
        ctx.store.commit()?;
        Ok(Response::success(out))
    }

    fn reset(&mut self) {
        self.current = None;
        self.verified.clear();
        self.perso.zeroize();
        self.perso.clear();
        self.keys = KeyCache::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_formats() {
        assert!(pin_format_ok(EF_AUTH_PIN, b"1234"));
        assert!(!pin_format_ok(EF_AUTH_PIN, b"123"));
        assert!(!pin_format_ok(EF_AUTH_PIN, b"12a4"));
        assert!(pin_format_ok(EF_SIGN_PIN, b"ABC123"));
        assert!(!pin_format_ok(EF_SIGN_PIN, b"abc123"));
        assert!(!pin_format_ok(EF_SIGN_PIN, b"ABCDEF"));
        assert!(!pin_format_ok(EF_SIGN_PIN, b"A1"));
        assert!(!pin_format_ok(EF_SIGN_PIN, b"ABCDEFGH123456789"));
    }

    /// A key record rewritten in the store is parsed again: the cache never signs with the
    /// key a record held before.
    #[test]
    fn the_key_cache_follows_the_record() {
        let public = |k: &CardKey| match k {
            CardKey::P256(k) => k.verifying_key().to_sec1_point(false).as_bytes().to_vec(),
            CardKey::Rsa(_) => Vec::new(),
        };
        let (a, b) = ([7u8; 32], [9u8; 32]);
        let expect = |s: &[u8; 32]| {
            p256::ecdsa::SigningKey::from_slice(s)
                .unwrap()
                .verifying_key()
                .to_sec1_point(false)
                .as_bytes()
                .to_vec()
        };
        let mut cache = KeyCache::default();
        assert_eq!(public(cache.get(0x17, &a).unwrap()), expect(&a));
        assert_eq!(public(cache.get(0x17, &a).unwrap()), expect(&a));
        assert_eq!(public(cache.get(0x17, &b).unwrap()), expect(&b));
        assert_eq!(public(cache.get(0x1A, &a).unwrap()), expect(&a));
        assert_eq!(cache.0.len(), 2);
        assert!(cache.get(0x17, b"not a key").is_none());
    }
}
