//! Credentials used only inside the token: each is wrapped directly under a KEK that may wrap
//! and unwrap (`CKM_AES_KEY_WRAP_PAD`, RFC 5649: the AES key, or the private key's PKCS#8
//! encoding), and bound to its row by a GCM tag under the same KEK (additional data: the
//! row, the kind and the wrapped bytes — key wrapping itself takes no additional data). For
//! each use the credential is unwrapped into the token as a session object
//! (`CKA_TOKEN=false`, `CKA_PRIVATE`, `CKA_SENSITIVE`, not extractable), used there
//! (`CKM_AES_CMAC`, `CKM_ECDSA` over the SHA-256 hash, `CKM_SHA256_RSA_PKCS`) and destroyed,
//! also when the use fails. The process never holds the credential's plaintext (except an
//! AES key meant for its service, read once at generation: SoftHSM2 2.6 does not give
//! the value of an unwrapped key back even when it is not sensitive, so it is not read again).
//!
//! Generation happens in the token too (`C_GenerateKey`, `C_GenerateKeyPair`) as session
//! objects that are sensitive but extractable — a key has to be extractable to be wrapped;
//! `CKA_WRAP_WITH_TRUSTED` would need a KEK marked `CKA_TRUSTED`, which only the security
//! officer may set, so it is not used — then wrapped under the KEK and destroyed. KEK
//! rotation unwraps into the token (extractable, sensitive) and wraps under the new KEK.

use crate::{Error, Result, hsm};
use broker_protocol::envelope::{FORM_IN_STORE, KeyKind, KeyUse, SealedRecord};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The DER OID of prime256v1 (CKA_EC_PARAMS).
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
/// A P-256 SubjectPublicKeyInfo up to the uncompressed point (RFC 5480).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01, 0x06, 0x08, 0x2A,
    0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Destroys a session object when dropped (a use that fails leaves nothing behind).
struct Temp<'a> {
    session: &'a Session,
    handle: ObjectHandle,
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.session.destroy_object(self.handle) {
            tracing::error!("C_DestroyObject of a session key failed: {e}");
        }
    }
}

fn key_type(kind: KeyKind) -> (ObjectClass, KeyType) {
    match kind {
        KeyKind::Aes128 => (ObjectClass::SECRET_KEY, KeyType::AES),
        KeyKind::P256 => (ObjectClass::PRIVATE_KEY, KeyType::EC),
        KeyKind::Rsa2048 => (ObjectClass::PRIVATE_KEY, KeyType::RSA),
    }
}

/// The additional data of a record's binding tag.
fn binding_aad(kind: KeyKind, aad: &[u8], wrapped: &[u8]) -> Vec<u8> {
    let mut m = b"kagi-in-hsm-binding\0".to_vec();
    m.push(kind.byte());
    m.extend_from_slice(&(aad.len() as u32).to_be_bytes());
    m.extend_from_slice(aad);
    m.extend_from_slice(wrapped);
    m
}

fn bind(
    session: &Session,
    kek: ObjectHandle,
    kind: KeyKind,
    aad: &[u8],
    wrapped: &[u8],
) -> Result<Vec<u8>> {
    let mut iv = [0u8; 12];
    getrandom::fill(&mut iv).map_err(|e| hsm("random", e))?;
    let mut ivp = iv;
    let data = binding_aad(kind, aad, wrapped);
    let params =
        GcmParams::new(&mut ivp, &data, 128.into()).map_err(|e| hsm("GCM parameters", e))?;
    let tag = session
        .encrypt(&Mechanism::AesGcm(params), kek, &[])
        .map_err(|e| hsm("C_Encrypt (AES-GCM binding)", e))?;
    Ok([&[FORM_IN_STORE, kind.byte()][..], &iv, &tag].concat())
}

/// Checks a record's binding under `kek` and returns its kind.
fn verify(
    session: &Session,
    kek: ObjectHandle,
    aad: &[u8],
    record: &SealedRecord,
) -> Result<KeyKind> {
    let kind = record
        .in_store_kind()
        .ok_or_else(|| Error::Hsm("not a record of the in-HSM form".into()))?;
    let b = &record.wrapped_dek;
    if b.len() != 2 + 12 + 16 {
        return Err(Error::Hsm("malformed in-HSM record".into()));
    }
    let mut iv = <[u8; 12]>::try_from(&b[2..14])
        .map_err(|_| Error::Hsm("malformed in-HSM record".into()))?;
    let data = binding_aad(kind, aad, &record.ciphertext);
    let params =
        GcmParams::new(&mut iv, &data, 128.into()).map_err(|e| hsm("GCM parameters", e))?;
    session
        .decrypt(&Mechanism::AesGcm(params), kek, &b[14..])
        .map_err(|_| {
            Error::Hsm(
                "the record is not bound to this row under this KEK (moved, altered, or another KEK)"
                    .into(),
            )
        })?;
    Ok(kind)
}

/// Unwraps a checked record into the token as a session object with `usage`.
fn unwrap_into<'a>(
    session: &'a Session,
    kek: ObjectHandle,
    aad: &[u8],
    record: &SealedRecord,
    extra: &[Attribute],
    locked: bool,
) -> Result<(Temp<'a>, KeyKind)> {
    let kind = verify(session, kek, aad, record)?;
    let (class, kt) = key_type(kind);
    let mut template = vec![
        Attribute::Class(class),
        Attribute::KeyType(kt),
        Attribute::Token(false),
        Attribute::Private(true),
    ];
    template.extend_from_slice(extra);
    let handle = session
        .unwrap_key(
            &Mechanism::AesKeyWrapPad,
            kek,
            &record.ciphertext,
            &template,
        )
        .map_err(|e| hsm("C_UnwrapKey (AES-KWP)", e))?;
    let key = Temp { session, handle };
    // A key unwrapped for use must come out sensitive and not extractable, whatever the
    // template said: read it back (a module that ignored the template, or a template
    // changed by mistake, would leave the credential readable).
    if locked {
        let got = session
            .get_attributes(
                key.handle,
                &[AttributeType::Sensitive, AttributeType::Extractable],
            )
            .map_err(|e| hsm("C_GetAttributeValue", e))?;
        if !(got.contains(&Attribute::Sensitive(true))
            && got.contains(&Attribute::Extractable(false)))
        {
            return Err(Error::Hsm(format!(
                "an unwrapped key is not sensitive and non-extractable ({got:?}): this module or template cannot keep the broker's keys"
            )));
        }
    }
    Ok((key, kind))
}

/// The template of a credential unwrapped for use: sensitive, not extractable, sign only.
pub(crate) fn use_template() -> Vec<Attribute> {
    vec![
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ]
}

/// Uses a record's credential inside the token.
pub(crate) fn use_key(
    session: &Session,
    kek: ObjectHandle,
    aad: &[u8],
    record: &SealedRecord,
    u: KeyUse<'_>,
) -> Result<Vec<u8>> {
    let (key, kind) = unwrap_into(session, kek, aad, record, &use_template(), true)?;
    match (kind, u) {
        (KeyKind::Aes128, KeyUse::Cmac(m)) => session
            .sign(&Mechanism::AesCMac, key.handle, m)
            .map_err(|e| hsm("C_Sign (AES-CMAC)", e)),
        (KeyKind::P256, KeyUse::EcdsaSha256(m)) => session
            .sign(&Mechanism::Ecdsa, key.handle, &Sha256::digest(m))
            .map_err(|e| hsm("C_Sign (ECDSA)", e)),
        (KeyKind::Rsa2048, KeyUse::RsaSha256(m)) => session
            .sign(&Mechanism::Sha256RsaPkcs, key.handle, m)
            .map_err(|e| hsm("C_Sign (SHA256-RSA-PKCS)", e)),
        (k, u) => Err(Error::Hsm(format!(
            "the record holds a {k:?} key, not one for {u:?}"
        ))),
    }
}

fn value_of(session: &Session, handle: ObjectHandle) -> Result<Zeroizing<Vec<u8>>> {
    for a in session
        .get_attributes(handle, &[AttributeType::Value])
        .map_err(|e| hsm("C_GetAttributeValue", e))?
    {
        if let Attribute::Value(v) = a {
            return Ok(Zeroizing::new(v));
        }
    }
    Err(Error::Hsm("the key's value is not readable".into()))
}

/// Checks that a record unwraps under its KEK.
pub(crate) fn check(
    session: &Session,
    kek: ObjectHandle,
    aad: &[u8],
    record: &SealedRecord,
) -> Result<()> {
    unwrap_into(session, kek, aad, record, &use_template(), true).map(drop)
}

/// Wraps a session object under `kek` and binds it: the record of the in-HSM form.
fn seal(
    session: &Session,
    kek_id: &str,
    kek: ObjectHandle,
    aad: &[u8],
    kind: KeyKind,
    key: ObjectHandle,
) -> Result<SealedRecord> {
    let wrapped = session
        .wrap_key(&Mechanism::AesKeyWrapPad, kek, key)
        .map_err(|e| hsm("C_WrapKey (AES-KWP)", e))?;
    Ok(SealedRecord {
        kek: kek_id.into(),
        wrapped_dek: bind(session, kek, kind, aad, &wrapped)?,
        nonce: Vec::new(),
        ciphertext: wrapped,
    })
}

/// Re-wraps a record under another KEK inside the token.
pub(crate) fn rewrap(
    session: &Session,
    from: ObjectHandle,
    to_id: &str,
    to: ObjectHandle,
    aad: &[u8],
    record: &SealedRecord,
) -> Result<SealedRecord> {
    let extra = [Attribute::Sensitive(true), Attribute::Extractable(true)];
    let (key, kind) = unwrap_into(session, from, aad, record, &extra, false)?;
    seal(session, to_id, to, aad, kind, key.handle)
}

/// A credential generated in the token: (record, SPKI, shared AES key).
pub(crate) type Made = (SealedRecord, Option<Vec<u8>>, Option<Zeroizing<Vec<u8>>>);

/// Generates a credential of `kind` in the token, wraps it under `kek` and destroys it.
pub(crate) fn generate(
    session: &Session,
    kek_id: &str,
    kek: ObjectHandle,
    aad: &[u8],
    kind: KeyKind,
) -> Result<Made> {
    let common = [
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Extractable(true),
        Attribute::Sign(true),
    ];
    match kind {
        KeyKind::Aes128 => {
            // Shared with the service by design: not sensitive, read once here.
            let mut t = vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(16.into()),
                Attribute::Sensitive(false),
            ];
            t.extend_from_slice(&common);
            let h = session
                .generate_key(&Mechanism::AesKeyGen, &t)
                .map_err(|e| hsm("C_GenerateKey (AES-128)", e))?;
            let key = Temp { session, handle: h };
            let shared = value_of(session, key.handle)?;
            Ok((
                seal(session, kek_id, kek, aad, kind, key.handle)?,
                None,
                Some(shared),
            ))
        }
        KeyKind::P256 | KeyKind::Rsa2048 => {
            let (mech, public) = if kind == KeyKind::P256 {
                (
                    Mechanism::EccKeyPairGen,
                    vec![
                        Attribute::Token(false),
                        Attribute::Verify(true),
                        Attribute::EcParams(P256_PARAMS.to_vec()),
                    ],
                )
            } else {
                (
                    Mechanism::RsaPkcsKeyPairGen,
                    vec![
                        Attribute::Token(false),
                        Attribute::Verify(true),
                        Attribute::ModulusBits(2048.into()),
                        Attribute::PublicExponent(vec![1, 0, 1]),
                    ],
                )
            };
            let mut private = vec![Attribute::Sensitive(true)];
            private.extend_from_slice(&common);
            let (p, s) = session
                .generate_key_pair(&mech, &public, &private)
                .map_err(|e| hsm("C_GenerateKeyPair", e))?;
            let public = Temp { session, handle: p };
            let secret = Temp { session, handle: s };
            let spki = spki(session, kind, public.handle)?;
            Ok((
                seal(session, kek_id, kek, aad, kind, secret.handle)?,
                Some(spki),
                None,
            ))
        }
    }
}

/// Reads a public key object as a DER SubjectPublicKeyInfo.
fn spki(session: &Session, kind: KeyKind, public: ObjectHandle) -> Result<Vec<u8>> {
    let types: &[AttributeType] = if kind == KeyKind::P256 {
        &[AttributeType::EcPoint]
    } else {
        &[AttributeType::Modulus, AttributeType::PublicExponent]
    };
    let attrs = session
        .get_attributes(public, types)
        .map_err(|e| hsm("C_GetAttributeValue", e))?;
    let (mut point, mut n, mut e) = (None, None, None);
    for a in attrs {
        match a {
            Attribute::EcPoint(p) => point = Some(p),
            Attribute::Modulus(m) => n = Some(m),
            Attribute::PublicExponent(x) => e = Some(x),
            _ => {}
        }
    }
    let bad = || Error::Hsm("the token gave no usable public key".into());
    if kind == KeyKind::P256 {
        // CKA_EC_POINT is the DER OCTET STRING of the uncompressed point (04 41 04 x y).
        let p = point.ok_or_else(bad)?;
        let q = match p.as_slice() {
            [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
            raw if raw.len() == 65 => raw,
            _ => return Err(bad()),
        };
        if q[0] != 0x04 {
            return Err(bad());
        }
        return Ok([&P256_SPKI_PREFIX[..], q].concat());
    }
    let (n, e) = (n.ok_or_else(bad)?, e.ok_or_else(bad)?);
    // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER } (RFC 8017),
    // in a SubjectPublicKeyInfo with rsaEncryption and NULL parameters (RFC 3279).
    let rsa_key = der(0x30, &[der_uint(&n), der_uint(&e)].concat());
    let alg = [
        0x30, 0x0D, 0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let bits = der(0x03, &[&[0u8][..], &rsa_key].concat());
    Ok(der(0x30, &[&alg[..], &bits].concat()))
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let len = (n as u32).to_be_bytes();
        let skip = len.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&len[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn der_uint(big_endian: &[u8]) -> Vec<u8> {
    let skip = big_endian.iter().take_while(|b| **b == 0).count();
    let v = &big_endian[skip.min(big_endian.len().saturating_sub(1))..];
    let mut c = Vec::with_capacity(v.len() + 1);
    if v.first().is_some_and(|b| b & 0x80 != 0) {
        c.push(0);
    }
    c.extend_from_slice(v);
    der(0x02, &c)
}

/// Imports a known credential into a record of the in-HSM form (a migration from another
/// store or from the data-key form, and the tests that must know a credential's value): an
/// AES key, a P-256 private scalar or a PKCS#1 RSA private key, created as a sensitive
/// session object, wrapped under `kek` and destroyed.
pub(crate) fn import(
    session: &Session,
    kek_id: &str,
    kek: ObjectHandle,
    aad: &[u8],
    kind: KeyKind,
    value: &[u8],
) -> Result<SealedRecord> {
    let mut t = vec![
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Sign(true),
        Attribute::Value(value.to_vec()),
    ];
    match kind {
        KeyKind::Aes128 => {
            t.push(Attribute::Class(ObjectClass::SECRET_KEY));
            t.push(Attribute::KeyType(KeyType::AES));
        }
        KeyKind::P256 => {
            t.push(Attribute::Class(ObjectClass::PRIVATE_KEY));
            t.push(Attribute::KeyType(KeyType::EC));
            t.push(Attribute::EcParams(P256_PARAMS.to_vec()));
        }
        KeyKind::Rsa2048 => {
            // The PKCS#1 RSAPrivateKey (RFC 8017 A.1.2) as its components.
            t.retain(|a| !matches!(a, Attribute::Value(_)));
            t.push(Attribute::Class(ObjectClass::PRIVATE_KEY));
            t.push(Attribute::KeyType(KeyType::RSA));
            t.extend(rsa_components(value)?);
        }
    }
    let made = session.create_object(&t);
    for a in &mut t {
        match a {
            Attribute::Value(v)
            | Attribute::PrivateExponent(v)
            | Attribute::Prime1(v)
            | Attribute::Prime2(v)
            | Attribute::Exponent1(v)
            | Attribute::Exponent2(v)
            | Attribute::Coefficient(v) => zeroize::Zeroize::zeroize(v),
            _ => {}
        }
    }
    let key = Temp {
        session,
        handle: made.map_err(|e| hsm("C_CreateObject", e))?,
    };
    seal(session, kek_id, kek, aad, kind, key.handle)
}

/// The attributes of an RSA private key object from its PKCS#1 DER encoding.
fn rsa_components(der: &[u8]) -> Result<Vec<Attribute>> {
    use pkcs1::der::Decode;
    let k = pkcs1::RsaPrivateKeyRef::from_der(der).map_err(|_| {
        Error::Hsm(
            "the record's RSA key is not a PKCS#1 RSAPrivateKey: it cannot be taken into the HSM"
                .into(),
        )
    })?;
    if k.other_prime_infos.is_some() {
        return Err(Error::Hsm(
            "a multi-prime RSA key cannot be taken into the HSM".into(),
        ));
    }
    Ok(vec![
        Attribute::Modulus(k.modulus.as_bytes().to_vec()),
        Attribute::PublicExponent(k.public_exponent.as_bytes().to_vec()),
        Attribute::PrivateExponent(k.private_exponent.as_bytes().to_vec()),
        Attribute::Prime1(k.prime1.as_bytes().to_vec()),
        Attribute::Prime2(k.prime2.as_bytes().to_vec()),
        Attribute::Exponent1(k.exponent1.as_bytes().to_vec()),
        Attribute::Exponent2(k.exponent2.as_bytes().to_vec()),
        Attribute::Coefficient(k.coefficient.as_bytes().to_vec()),
    ])
}
