//! The JPKI card interface both ends share (`research/jpki-interface.md`): AIDs, EF
//! identifiers and PIN formats. The simulator's applets (`applet-sim`) and the host client
//! (`kagi::jpki`) take them from here.

/// The JPKI AP's AID.
pub const JPKI_AID: [u8; 10] = [0xD3, 0x92, 0xF0, 0x00, 0x26, 0x01, 0x00, 0x00, 0x00, 0x01];
/// The load file (package) of the JPKI class in the simulator.
pub const JPKI_PACKAGE: [u8; 7] = [0xD3, 0x92, 0xF0, 0x00, 0x26, 0x01, 0x00];
/// The ATR of the My Number card's contact interface that OpenSC's jpki driver matches.
pub const JPKI_ATR: [u8; 9] = [0x3B, 0xE0, 0x00, 0xFF, 0x81, 0x31, 0xFE, 0x45, 0x14];

/// Signature certificate (needs the signature password).
pub const EF_SIGN_CERT: u16 = 0x0001;
/// Signature CA certificate.
pub const EF_SIGN_CA: u16 = 0x0002;
/// Token information (CK_TOKEN_INFO).
pub const EF_TOKEN_INFO: u16 = 0x0006;
/// Certificate availability.
pub const EF_CERT_AVAILABILITY: u16 = 0x0008;
/// User-authentication certificate.
pub const EF_AUTH_CERT: u16 = 0x000A;
/// User-authentication CA certificate.
pub const EF_AUTH_CA: u16 = 0x000B;
/// User-authentication private key.
pub const EF_AUTH_KEY: u16 = 0x0017;
/// User-authentication PIN.
pub const EF_AUTH_PIN: u16 = 0x0018;
/// Signature private key.
pub const EF_SIGN_KEY: u16 = 0x001A;
/// Signature password.
pub const EF_SIGN_PIN: u16 = 0x001B;

/// Personalisation items (STORE DATA through the security domain, `TAG { FID ‖ value }`):
/// an EF's content.
pub const ITEM_EF: u32 = 0xC1;
/// A private key in clear (PKCS#1 DER, or a P-256 scalar).
pub const ITEM_KEY: u32 = 0xC2;
/// A PIN in clear.
pub const ITEM_PIN: u32 = 0xC3;
/// On-card key generation (`02` after the FID: P-256); the answer carries the public key.
pub const ITEM_GENERATE: u32 = 0xC4;
/// A private key sealed to this card and applet instance (`crate::content`, role = the key
/// EF): `C6 { FID ‖ len ‖ request id ‖ sealed }` ([`sealed_item_body`]).
pub const ITEM_SEALED_KEY: u32 = 0xC6;
/// A key proof: the key in FID signs [`key_proof_message`] of the operation and nonce that
/// follow the FID (16 + 32 bytes); the answer carries `C7 { signature }`. The card builds
/// the message itself, so the item cannot be used to sign anything else without the PIN.
pub const ITEM_KEY_PROOF: u32 = 0xC7;
/// A PIN sealed to this card and applet instance (role = the PIN EF), laid out as
/// [`ITEM_SEALED_KEY`].
pub const ITEM_SEALED_PIN: u32 = 0xC8;
/// On-card key generation with a proof (the issuer's on-card mode, [`crate::keygen`]): the
/// applet's GENERATE ASYMMETRIC KEY PAIR (ISO 7816-8 INS 46, P-256), offered only as a
/// personalisation item, so only under the provider's security-domain secure channel.
/// `C9 { FID ‖ challenge (97: the issuer's ephemeral point ‖ nonce) }`; the answer carries
/// `C9 { point (65) ‖ proof of possession (64) ‖ the card's tag (32) }`.
pub const ITEM_GENERATE_PROVEN: u32 = 0xC9;

/// What follows the FID in a sealed item: the request id the value was sealed under (one
/// length byte, then the id), then the sealed value.
pub fn sealed_item_body(request_id: &[u8], sealed: &[u8]) -> Vec<u8> {
    let n = request_id.len().min(255);
    let mut v = Vec::with_capacity(1 + n + sealed.len());
    v.push(n as u8);
    v.extend_from_slice(&request_id[..n]);
    v.extend_from_slice(sealed);
    v
}

/// Splits a sealed item's body (after the FID) into the request id and the sealed value;
/// `None` when the length byte runs past the end.
pub fn split_sealed_item(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&n, rest) = body.split_first()?;
    let n = usize::from(n);
    (rest.len() >= n).then(|| rest.split_at(n))
}

/// What a key proof signs: a fixed tag, then the operation id and the nonce.
pub fn key_proof_message(op: &[u8; 16], nonce: &[u8; 32]) -> Vec<u8> {
    let mut m = b"kagi-tsm key proof\0".to_vec();
    m.extend_from_slice(op);
    m.extend_from_slice(nonce);
    m
}

/// The DER DigestInfo of the SHA-256 hash of `message` (what an RSA key signs for
/// sha256WithRSAEncryption, PKCS#1 v1.5).
pub fn sha256_digest_info(message: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut v = vec![
        0x30, 0x31, 0x30, 0x0D, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    v.extend_from_slice(&Sha256::digest(message));
    v
}

/// The format a PIN must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinFormat {
    /// Exactly four digits.
    FourDigits,
    /// 6–16 upper-case letters and digits, with at least one of each.
    Password,
}

impl PinFormat {
    /// Whether `value` has this format.
    pub fn accepts(self, value: &[u8]) -> bool {
        match self {
            PinFormat::FourDigits => value.len() == 4 && value.iter().all(u8::is_ascii_digit),
            PinFormat::Password => {
                (6..=16).contains(&value.len())
                    && value
                        .iter()
                        .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
                    && value.iter().any(u8::is_ascii_digit)
                    && value.iter().any(u8::is_ascii_uppercase)
            }
        }
    }
}

/// The text AP's AID (券面事項入力補助AP).
pub const TEXT_AID: [u8; 10] = [0xD3, 0x92, 0x10, 0x00, 0x31, 0x00, 0x01, 0x01, 0x04, 0x08];
/// Text AP: My Number (`FF 10 0C` + 12 digits).
pub const EF_MY_NUMBER: u16 = 0x0001;
/// Text AP: the four basic facts (`FF 20 …`).
pub const EF_BASIC_FACTS: u16 = 0x0002;
/// Text AP: its 4-digit PIN.
pub const EF_TEXT_PIN: u16 = 0x0011;
