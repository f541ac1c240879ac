//! Password checks with **server relief**: the user's device computes Argon2id of the
//! password (the slow, memory-hard part, at the OWASP minimum or above) with a salt and
//! parameters the server tells it, and sends only the 32-byte result; the server keeps a
//! SHA-256 digest of that result and compares in constant time — microseconds instead of an
//! Argon2id computation per check (the idea of PHC's "server relief"; Bitwarden's clients
//! derive their master key the same way before the server hashes it again).
//!
//! What it keeps and what it gains, against the server computing Argon2id itself:
//! - At rest the server holds `SHA-256(domain ‖ Argon2id(password, salt))`: testing a guess
//!   still costs one Argon2id at the stored parameters, as with a PHC verifier.
//! - The password itself never reaches the server (nor any relay on the way): only a value
//!   that is useless anywhere else (it is bound to this salt).
//! - The derived key is password-equivalent *for this grant*: it is sent over the same
//!   protected channel as the one-time access code, counted like a wrong password when wrong,
//!   and zeroized after use.
//! - A device refuses to derive with parameters below [`DerivationLimits`] (an impostor
//!   server asking for `t=1, m=8` would otherwise get a value cheap to attack offline) or
//!   above them (memory a phone does not have).

use crate::password::{Params, PasswordError, Policy, argon2id};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Domain separation of the stored digest.
const DOMAIN: &[u8] = b"kagi password relief v1\0";

/// What a device needs to derive the key: Argon2id parameters and the salt (public).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Derivation {
    /// Argon2id parameters.
    pub params: Params,
    /// The salt (16 bytes when kagi makes it).
    pub salt: Vec<u8>,
}

/// The bounds a device derives within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DerivationLimits {
    /// Below this the device refuses (the server's floor should be the same).
    pub floor: Params,
    /// The shortest salt.
    pub min_salt: usize,
    /// Above this the device refuses (memory and time a phone can give).
    pub ceiling: Params,
}

impl DerivationLimits {
    /// What a real device accepts: at least OWASP's minimum (m=19456 KiB, t=2, p=1, 16-byte
    /// salt), at most 256 MiB, 16 passes, 8 lanes.
    pub const fn production() -> DerivationLimits {
        DerivationLimits {
            floor: Params::OWASP_MIN,
            min_salt: 16,
            ceiling: Params {
                m_kib: 256 * 1024,
                t: 16,
                p: 8,
            },
        }
    }

    /// The device side of a password `policy` (its floor and salt length; the production
    /// ceiling): what tests running on [`Policy::cheap_for_tests`] give their relays.
    pub const fn for_policy(policy: &Policy) -> DerivationLimits {
        DerivationLimits {
            floor: policy.floor,
            min_salt: policy.min_salt,
            ceiling: DerivationLimits::production().ceiling,
        }
    }
}

/// The key a device derived (32 bytes, zeroized when dropped).
#[derive(Clone, PartialEq, Eq)]
pub struct DerivedKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DerivedKey(<redacted>)")
    }
}

impl DerivedKey {
    /// The key's bytes (to send).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A key received (exactly 32 bytes), or `None`.
    pub fn from_slice(b: &[u8]) -> Option<DerivedKey> {
        let a: [u8; 32] = b.try_into().ok()?;
        Some(DerivedKey(Zeroizing::new(a)))
    }
}

impl Derivation {
    /// Fresh parameters for a new verifier: `params` and a random 16-byte salt.
    pub fn fresh(params: &Params) -> Result<Derivation, PasswordError> {
        let mut salt = vec![0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| PasswordError::Random(e.to_string()))?;
        Ok(Derivation {
            params: *params,
            salt,
        })
    }

    /// Refuses a derivation outside `limits` (what a device checks before it works).
    pub fn check(&self, limits: &DerivationLimits) -> Result<(), PasswordError> {
        let p = &self.params;
        if !p.at_least(&limits.floor) || self.salt.len() < limits.min_salt {
            return Err(PasswordError::Weak {
                got: *p,
                salt: self.salt.len(),
                floor: limits.floor,
                min_salt: limits.min_salt,
            });
        }
        let c = &limits.ceiling;
        if p.m_kib > c.m_kib || p.t > c.t || p.p > c.p || self.salt.len() > 64 {
            return Err(PasswordError::Argon2(format!(
                "the server asks for m={}, t={}, p={} with a {}-byte salt: above what this device derives with (m≤{}, t≤{}, p≤{}, salt ≤ 64 bytes)",
                p.m_kib,
                p.t,
                p.p,
                self.salt.len(),
                c.m_kib,
                c.t,
                c.p
            )));
        }
        Ok(())
    }

    /// The device's work: Argon2id(`password`, salt) with these parameters, once they are
    /// within `limits`. Slow by design.
    pub fn derive(
        &self,
        password: &str,
        limits: &DerivationLimits,
    ) -> Result<DerivedKey, PasswordError> {
        self.check(limits)?;
        let out = argon2id(password, &self.salt, &self.params, 32)?;
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&out);
        Ok(DerivedKey(k))
    }
}

/// What the server stores: the derivation and `SHA-256(domain ‖ key)`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReliefVerifier {
    /// What the device derives with.
    pub derivation: Derivation,
    /// The digest of the derived key.
    pub digest: [u8; 32],
}

impl std::fmt::Debug for ReliefVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ReliefVerifier({:?}, <salt and digest>)",
            self.derivation.params
        )
    }
}

fn digest(key: &DerivedKey) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(key.as_bytes());
    h.finalize().into()
}

impl ReliefVerifier {
    /// A new verifier of `password` with `params` and a fresh salt (what the provider tools
    /// make when the user registers the password).
    pub fn new(password: &str, params: &Params) -> Result<ReliefVerifier, PasswordError> {
        let derivation = Derivation::fresh(params)?;
        let key = argon2id(password, &derivation.salt, params, 32)?;
        let key = DerivedKey::from_slice(&key)
            .ok_or_else(|| PasswordError::Argon2("the derived key is not 32 bytes".into()))?;
        Ok(ReliefVerifier {
            digest: digest(&key),
            derivation,
        })
    }

    /// Whether a device's derived key matches (constant time; fast).
    pub fn matches_key(&self, key: &DerivedKey) -> bool {
        bool::from(digest(key).ct_eq(&self.digest))
    }

    /// Whether a typed `password` matches, the server doing the device's work (slow): for a
    /// client that sends the password itself.
    pub fn matches_password(&self, password: &str) -> bool {
        match argon2id(password, &self.derivation.salt, &self.derivation.params, 32)
            .ok()
            .and_then(|k| DerivedKey::from_slice(&k))
        {
            Some(k) => self.matches_key(&k),
            None => false,
        }
    }

    /// Refuses a verifier below `policy` (what a server does when one is registered).
    pub fn check_strength(&self, policy: &Policy) -> Result<(), PasswordError> {
        let d = &self.derivation;
        if d.params.at_least(&policy.floor) && d.salt.len() >= policy.min_salt && d.salt.len() <= 64
        {
            Ok(())
        } else {
            Err(PasswordError::Weak {
                got: d.params,
                salt: d.salt.len(),
                floor: policy.floor,
                min_salt: policy.min_salt,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Argon2id known answer from the reference implementation's tests (phc-winner-argon2,
    // src/test.c): password "password", salt "somesalt", m=256, t=2, p=1.
    const REF_256K_HASH_B64: &str = "nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4";

    fn cheap() -> DerivationLimits {
        DerivationLimits::for_policy(&Policy::cheap_for_tests())
    }

    #[test]
    fn a_device_derives_the_reference_argon2id_and_the_server_digests_it_independently() {
        use base64ct::{Base64Unpadded, Encoding};
        let d = Derivation {
            params: Params {
                m_kib: 256,
                t: 2,
                p: 1,
            },
            salt: b"somesalt".to_vec(),
        };
        let k = d.derive("password", &cheap()).unwrap();
        let want = Base64Unpadded::decode_vec(REF_256K_HASH_B64).unwrap();
        assert_eq!(k.as_bytes().as_slice(), want.as_slice());
        // The stored digest, computed here with sha2 directly.
        let mut h = Sha256::new();
        h.update(b"kagi password relief v1\0");
        h.update(&want);
        let v = ReliefVerifier {
            derivation: d,
            digest: h.finalize().into(),
        };
        assert!(v.matches_key(&k));
        assert!(v.matches_password("password"));
        assert!(!v.matches_password("passwore"));
        let mut other = *k.as_bytes();
        other[31] ^= 1;
        assert!(!v.matches_key(&DerivedKey::from_slice(&other).unwrap()));
    }

    #[test]
    fn a_device_refuses_weak_or_huge_parameters() {
        let prod = DerivationLimits::production();
        let weak = Derivation {
            params: Params {
                m_kib: 8,
                t: 1,
                p: 1,
            },
            salt: vec![0; 16],
        };
        assert!(matches!(
            weak.derive("x", &prod),
            Err(PasswordError::Weak { .. })
        ));
        let short_salt = Derivation {
            params: Params::OWASP_MIN,
            salt: vec![0; 8],
        };
        assert!(matches!(
            short_salt.check(&prod),
            Err(PasswordError::Weak { .. })
        ));
        let huge = Derivation {
            params: Params {
                m_kib: 4 * 1024 * 1024,
                t: 2,
                p: 1,
            },
            salt: vec![0; 16],
        };
        assert!(matches!(huge.check(&prod), Err(PasswordError::Argon2(_))));
        assert!(
            Derivation::fresh(&Params::OWASP_MIN)
                .unwrap()
                .check(&prod)
                .is_ok()
        );
    }

    #[test]
    fn equal_passwords_make_different_verifiers_and_weak_ones_are_refused() {
        let p = Params {
            m_kib: 64,
            t: 1,
            p: 1,
        };
        let a = ReliefVerifier::new("same", &p).unwrap();
        let b = ReliefVerifier::new("same", &p).unwrap();
        assert_ne!(a.derivation.salt, b.derivation.salt);
        assert_ne!(a.digest, b.digest);
        assert!(a.check_strength(&Policy::cheap_for_tests()).is_ok());
        assert!(matches!(
            a.check_strength(&Policy::production()),
            Err(PasswordError::Weak { .. })
        ));
        let k = a.derivation.derive("same", &cheap()).unwrap();
        assert!(a.matches_key(&k) && !b.matches_key(&k));
    }
}
