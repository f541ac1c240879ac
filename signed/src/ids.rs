//! Identifiers: random 128-bit ids for messages, operations, sessions and nonces; names for
//! the parties; key ids derived from public keys.

use serde::{Deserialize, Serialize};

/// Fills a 16-byte array from the operating system's generator.
pub fn random16() -> Result<[u8; 16], getrandom::Error> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)?;
    Ok(b)
}

macro_rules! id16 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// A fresh random value.
            pub fn random() -> Result<Self, getrandom::Error> {
                random16().map($name)
            }

            /// Lower-case hex, as URLs, logs and the database show it.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses 32 hex digits.
            pub fn from_hex(s: &str) -> Option<Self> {
                let v = hex::decode(s).ok()?;
                <[u8; 16]>::try_from(v.as_slice()).ok().map($name)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
    };
}

id16!(
    /// A message's id: unique per sender, the key of the replay cache.
    MsgId
);
id16!(
    /// A long-running operation at the TSM (an issuance, a revocation, ...).
    OpId
);
id16!(
    /// A nonce: echoed in answers and receipts so they cannot be taken for another request's.
    Nonce
);
id16!(
    /// A relay session (one phone app connected to the TSM for one operation).
    SessionId
);
id16!(
    /// A client-chosen idempotency key: the same key and the same request give the same
    /// operation; the same key with another request is a conflict.
    IdempotencyKey
);

/// A party name that is not one: which, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("party '{party}': {why}")]
pub struct BadPartyId {
    /// The name given.
    pub party: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl BadPartyId {
    fn new(party: &str, why: &'static str) -> BadPartyId {
        BadPartyId {
            party: party.into(),
            why,
        }
    }
}

/// A party of the protocol: `sp:NAME` (service provider), `tsm:NAME`, `mno:NAME`, and for
/// the credential broker `broker:NAME` and its administrators `admin:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartyId(pub String);

impl PartyId {
    /// A party name: a role prefix (`sp`, `tsm`, `mno`, `jpki` — the JPKI issuer —, `broker`,
    /// `admin`) and up to 64 letters, digits, `-`, `_` or `.`.
    pub fn new(s: &str) -> Result<PartyId, BadPartyId> {
        let (role, name) = s
            .split_once(':')
            .ok_or_else(|| BadPartyId::new(s, "use sp:NAME, tsm:NAME or mno:NAME"))?;
        if !matches!(role, "sp" | "tsm" | "mno" | "jpki" | "broker" | "admin") {
            return Err(BadPartyId::new(
                s,
                "the role must be sp, tsm, mno, jpki, broker or admin",
            ));
        }
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(BadPartyId::new(
                s,
                "the name is 1 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
        Ok(PartyId(s.into()))
    }

    /// The role prefix.
    pub fn role(&self) -> &str {
        self.0.split(':').next().unwrap_or("")
    }
}

impl std::fmt::Display for PartyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A signing key's id: the first 8 bytes of SHA-256 over its SubjectPublicKeyInfo (DER).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of a P-256 public key.
    pub fn of(key: &p256::ecdsa::VerifyingKey) -> KeyId {
        use p256::pkcs8::EncodePublicKey;
        use sha2::Digest;
        let spki = key
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_else(|_| key.to_sec1_point(false).as_bytes().to_vec());
        let h = sha2::Sha256::digest(&spki);
        let mut id = [0u8; 8];
        id.copy_from_slice(&h[..8]);
        KeyId(id)
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({})", hex::encode(self.0))
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parties_and_ids() {
        assert_eq!(PartyId::new("sp:bank-1").unwrap().role(), "sp");
        for bad in [
            "bank",
            "xx:bank",
            "sp:",
            "sp:a b",
            &format!("sp:{}", "a".repeat(65)),
        ] {
            assert!(PartyId::new(bad).is_err(), "{bad}");
        }
        let id = OpId::random().unwrap();
        assert_eq!(OpId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(OpId::from_hex("zz"), None);
        assert_ne!(OpId::random().unwrap(), id);
    }
}
