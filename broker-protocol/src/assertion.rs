//! Signed assertions: compact JWS (RFC 7515) with ES256 (ECDSA P-256, SHA-256, `r ‖ s`), a
//! JWT (RFC 7519) claims set, and the broker's published keys as a JWKS (RFC 7517). A service
//! verifies an assertion with [`crate::verifier::Verifier`] and the broker's keys only: it
//! needs no card logic.

use base64ct::{Base64UrlUnpadded, Encoding};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How sure the broker is of the holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Assurance {
    /// An id and a password.
    Password,
    /// The JPKI card and its PIN (a signature with the user-authentication key).
    Card,
}

impl Assurance {
    /// The `acr` claim value.
    pub fn acr(self) -> &'static str {
        match self {
            Assurance::Password => "urn:kagi:acr:password",
            Assurance::Card => "urn:kagi:acr:jpki-card",
        }
    }

    /// Reads an `acr` value.
    pub fn from_acr(acr: &str) -> Option<Assurance> {
        match acr {
            "urn:kagi:acr:password" => Some(Assurance::Password),
            "urn:kagi:acr:jpki-card" => Some(Assurance::Card),
            _ => None,
        }
    }

    /// `password` or `card`.
    pub fn name(self) -> &'static str {
        match self {
            Assurance::Password => "password",
            Assurance::Card => "card",
        }
    }

    /// Reads `password` or `card`.
    pub fn parse(s: &str) -> Option<Assurance> {
        match s {
            "password" => Some(Assurance::Password),
            "card" => Some(Assurance::Card),
            _ => None,
        }
    }
}

/// The claims of a broker assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The broker.
    pub iss: String,
    /// The holder as this service knows them (a pairwise id: different for every service).
    pub sub: String,
    /// The service.
    pub aud: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// The service's nonce for this login.
    pub nonce: String,
    /// The assurance of the holder's authentication.
    pub acr: String,
    /// Unique per assertion (a service refuses it the second time).
    pub jti: String,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// Why an assertion is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AssertionError {
    /// Not three base64url parts of JSON.
    #[error("the assertion is malformed: {0}")]
    Malformed(String),
    /// Another algorithm than ES256.
    #[error("algorithm {0} is not accepted (ES256 only)")]
    Algorithm(String),
    /// The key id is not among the broker's keys.
    #[error("the assertion is signed with key {0}, which the broker does not publish")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("the assertion's signature does not verify")]
    BadSignature,
    /// For another service.
    #[error("the assertion is for {0}, not for this service")]
    Audience(String),
    /// From another issuer.
    #[error("the assertion comes from {0}, not from the broker this service trusts")]
    Issuer(String),
    /// Expired or issued in the future.
    #[error("the assertion is not valid now (issued {iat}, expires {exp}, now {now})")]
    Time {
        /// Issued at.
        iat: u64,
        /// Expires at.
        exp: u64,
        /// Now.
        now: u64,
    },
    /// Not for this login.
    #[error("the assertion's nonce is not this login's")]
    Nonce,
    /// Weaker than the service requires.
    #[error("the holder authenticated with {0}, weaker than this service requires")]
    Assurance(String),
    /// Seen before.
    #[error("the assertion was already used (replay)")]
    Replayed,
}

fn b64(bytes: &[u8]) -> String {
    Base64UrlUnpadded::encode_string(bytes)
}

fn unb64(s: &str) -> Result<Vec<u8>, AssertionError> {
    Base64UrlUnpadded::decode_vec(s).map_err(|_| AssertionError::Malformed("base64url".into()))
}

/// The id of a broker signing key (hex of the first 8 bytes of SHA-256 of its SPKI).
pub fn key_id(key: &VerifyingKey) -> String {
    kagi_signed::KeyId::of(key).to_string()
}

/// Signs claims as a compact JWS.
pub fn sign(key: &SigningKey, claims: &Claims) -> Result<String, AssertionError> {
    let header = Header {
        alg: "ES256".into(),
        typ: "JWT".into(),
        kid: key_id(key.verifying_key()),
    };
    let h = serde_json::to_vec(&header).map_err(|e| AssertionError::Malformed(e.to_string()))?;
    let c = serde_json::to_vec(claims).map_err(|e| AssertionError::Malformed(e.to_string()))?;
    let input = format!("{}.{}", b64(&h), b64(&c));
    let sig: Signature = key.sign(input.as_bytes());
    Ok(format!("{input}.{}", b64(&sig.to_bytes())))
}

/// Checks the signature of a compact JWS with one of `keys` and returns its claims (nothing
/// else is checked: see [`crate::verifier::Verifier`]).
pub fn verify_signature(token: &str, keys: &Jwks) -> Result<Claims, AssertionError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AssertionError::Malformed("three parts expected".into()));
    };
    let header: Header = serde_json::from_slice(&unb64(h)?)
        .map_err(|e| AssertionError::Malformed(format!("header: {e}")))?;
    if header.alg != "ES256" {
        return Err(AssertionError::Algorithm(header.alg));
    }
    let key = keys
        .find(&header.kid)
        .ok_or_else(|| AssertionError::UnknownKey(header.kid.clone()))?;
    let sig = Signature::from_slice(&unb64(s)?).map_err(|_| AssertionError::BadSignature)?;
    key.verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| AssertionError::BadSignature)?;
    serde_json::from_slice(&unb64(c)?)
        .map_err(|e| AssertionError::Malformed(format!("claims: {e}")))
}

/// One public key in a JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `EC`.
    pub kty: String,
    /// `P-256`.
    pub crv: String,
    /// The x coordinate, base64url.
    pub x: String,
    /// The y coordinate, base64url.
    pub y: String,
    /// The key id.
    pub kid: String,
    /// `sig`.
    #[serde(rename = "use")]
    pub use_: String,
    /// `ES256`.
    pub alg: String,
}

/// The broker's published signing keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys (the current one, and retired ones still valid for assertions in flight).
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// The JWKS of `keys`.
    pub fn of(keys: &[VerifyingKey]) -> Jwks {
        Jwks {
            keys: keys
                .iter()
                .map(|k| {
                    let p = k.to_sec1_point(false);
                    let b = p.as_bytes();
                    Jwk {
                        kty: "EC".into(),
                        crv: "P-256".into(),
                        x: b64(&b[1..33]),
                        y: b64(&b[33..65]),
                        kid: key_id(k),
                        use_: "sig".into(),
                        alg: "ES256".into(),
                    }
                })
                .collect(),
        }
    }

    /// The key with id `kid`.
    pub fn find(&self, kid: &str) -> Option<VerifyingKey> {
        let j = self
            .keys
            .iter()
            .find(|k| k.kid == kid && k.kty == "EC" && k.crv == "P-256")?;
        let mut point = vec![0x04];
        point.extend(unb64(&j.x).ok()?);
        point.extend(unb64(&j.y).ok()?);
        let key = VerifyingKey::from_sec1_bytes(&point).ok()?;
        // The id must be the key's own: a JWKS cannot rename a key.
        (key_id(&key) == kid).then_some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::elliptic_curve::Generate;
    use proptest::prelude::*;

    fn claims() -> Claims {
        Claims {
            iss: "kagi-broker".into(),
            sub: "pairwise-1".into(),
            aud: "shop".into(),
            iat: 100,
            exp: 200,
            nonce: "n1".into(),
            acr: Assurance::Card.acr().into(),
            jti: "j1".into(),
        }
    }

    #[test]
    fn sign_verify_and_tampering() {
        let k = SigningKey::try_generate().unwrap();
        let jwks = Jwks::of(&[*k.verifying_key()]);
        let t = sign(&k, &claims()).unwrap();
        assert_eq!(verify_signature(&t, &jwks).unwrap(), claims());
        // Another key, an altered payload, a renamed key, alg none: refused.
        let other = Jwks::of(&[*SigningKey::try_generate().unwrap().verifying_key()]);
        assert!(matches!(
            verify_signature(&t, &other),
            Err(AssertionError::UnknownKey(_))
        ));
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        let mut c = claims();
        c.aud = "bank".into();
        parts[1] = b64(&serde_json::to_vec(&c).unwrap());
        assert_eq!(
            verify_signature(&parts.join("."), &jwks),
            Err(AssertionError::BadSignature)
        );
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT","kid":"x"}"#),
            parts[1]
        );
        assert!(matches!(
            verify_signature(&none, &jwks),
            Err(AssertionError::Algorithm(_))
        ));
        let mut renamed = jwks.clone();
        renamed.keys[0].kid = "other".into();
        assert!(renamed.find("other").is_none());
        // JSON of the JWKS round-trips.
        let text = serde_json::to_string(&jwks).unwrap();
        assert!(text.contains("\"use\":\"sig\""));
        assert_eq!(serde_json::from_str::<Jwks>(&text).unwrap(), jwks);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in ".{0,200}") {
            let _ = verify_signature(&s, &Jwks::default());
        }
    }
}
