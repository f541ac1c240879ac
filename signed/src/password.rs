//! Password verifiers: Argon2id (RFC 9106) in the PHC string format
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`, unpadded standard base64), its parameters
//! in the record, shared by the credential broker (holders' passwords) and the TSM (the
//! provider's access grants).
//!
//! A verifier below the floor is refused wherever one is registered. The production floor is
//! OWASP's minimum for Argon2id (Password Storage Cheat Sheet): 19 MiB of memory
//! (`m=19456` KiB), 2 passes, 1 lane; salts of at least 16 bytes and hashes of at least 32
//! bytes for new verifiers. Only [`Policy::cheap_for_tests`] allows less, and nothing in a
//! server's production path builds that policy.
//!
//! Older records hold PBKDF2-HMAC-SHA256 verifiers ([`Verifier::Pbkdf2`]): they stay readable
//! and are replaced by an Argon2id verifier at the next correct password.

use crate::access::password_verifier as pbkdf2_verifier;
use base64ct::{Base64Unpadded, Encoding};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    /// Memory, KiB (`m`).
    pub m_kib: u32,
    /// Passes (`t`).
    pub t: u32,
    /// Lanes (`p`).
    pub p: u32,
}

impl Params {
    /// OWASP's minimum for Argon2id: m = 19 MiB, t = 2, p = 1.
    pub const OWASP_MIN: Params = Params {
        m_kib: 19 * 1024,
        t: 2,
        p: 1,
    };

    /// Whether every parameter is at least the floor's.
    pub fn at_least(&self, floor: &Params) -> bool {
        self.m_kib >= floor.m_kib && self.t >= floor.t && self.p >= floor.p
    }
}

/// What a party accepts and makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Verifiers below this are refused.
    pub floor: Params,
    /// New verifiers (and upgrades) are made with these.
    pub new: Params,
    /// Shortest salt accepted, bytes.
    pub min_salt: usize,
}

impl Policy {
    /// The production policy: the OWASP floor, new verifiers at the floor.
    pub const fn production() -> Policy {
        Policy {
            floor: Params::OWASP_MIN,
            new: Params::OWASP_MIN,
            min_salt: 16,
        }
    }

    /// A policy for tests only: tiny costs (8 KiB, 1 pass) so stress tests stay fast. Never
    /// use it in a server.
    pub const fn cheap_for_tests() -> Policy {
        Policy {
            floor: Params {
                m_kib: 8,
                t: 1,
                p: 1,
            },
            new: Params {
                m_kib: 64,
                t: 1,
                p: 1,
            },
            min_salt: 8,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::production()
    }
}

/// Why a verifier was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    /// Not an Argon2id PHC string.
    #[error(
        "not an Argon2id verifier ({0}): give a PHC string `$argon2id$v=19$m=…,t=…,p=…$salt$hash`"
    )]
    Malformed(String),
    /// Below the floor.
    #[error(
        "the verifier's parameters m={}, t={}, p={} (salt {} bytes) are below the floor m={}, t={}, p={} (salt {} bytes): make it again with `kagi` (Argon2id, m=19456, t=2, p=1)",
        .got.m_kib, .got.t, .got.p, .salt, .floor.m_kib, .floor.t, .floor.p, .min_salt
    )]
    Weak {
        /// What the verifier has.
        got: Params,
        /// Its salt length.
        salt: usize,
        /// The floor.
        floor: Params,
        /// The shortest salt allowed.
        min_salt: usize,
    },
    /// Argon2 refused the parameters.
    #[error("Argon2 refused: {0}")]
    Argon2(String),
    /// No random numbers.
    #[error("no random numbers: {0}")]
    Random(String),
}

/// A parsed Argon2id PHC string.
#[derive(Clone, PartialEq, Eq)]
pub struct Phc {
    /// Its parameters.
    pub params: Params,
    /// Its salt.
    pub salt: Vec<u8>,
    /// Its hash.
    pub hash: Vec<u8>,
}

impl std::fmt::Debug for Phc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Phc({:?}, <salt and hash>)", self.params)
    }
}

fn malformed(why: &str) -> PasswordError {
    PasswordError::Malformed(why.into())
}

impl Phc {
    /// Parses `$argon2id$v=19$m=M,t=T,p=P$SALT$HASH` (only Argon2id version 0x13).
    pub fn parse(s: &str) -> Result<Phc, PasswordError> {
        let mut parts = s.split('$');
        if parts.next() != Some("") {
            return Err(malformed("does not start with $"));
        }
        if parts.next() != Some("argon2id") {
            return Err(malformed("the algorithm is not argon2id"));
        }
        if parts.next() != Some("v=19") {
            return Err(malformed("the version is not v=19"));
        }
        let params = parts.next().ok_or_else(|| malformed("no parameters"))?;
        // Exactly m, t, p in this order, decimal without sign or leading zeros (the PHC
        // format's canonical form, so a string has one reading).
        let mut fields = params.split(',');
        let mut num = |name: &str| -> Result<u32, PasswordError> {
            let v = fields
                .next()
                .and_then(|kv| kv.strip_prefix(name))
                .and_then(|kv| kv.strip_prefix('='))
                .ok_or_else(|| malformed("the parameters are not m=…,t=…,p=…"))?;
            if v.is_empty()
                || !v.bytes().all(|b| b.is_ascii_digit())
                || (v.len() > 1 && v.starts_with('0'))
            {
                return Err(malformed("a parameter is not a decimal number"));
            }
            v.parse().map_err(|_| malformed("a parameter is too large"))
        };
        let params = Params {
            m_kib: num("m")?,
            t: num("t")?,
            p: num("p")?,
        };
        if fields.next().is_some() {
            return Err(malformed("unknown parameters"));
        }
        let salt = parts.next().ok_or_else(|| malformed("no salt"))?;
        let hash = parts.next().ok_or_else(|| malformed("no hash"))?;
        if parts.next().is_some() {
            return Err(malformed("trailing fields"));
        }
        let salt =
            Base64Unpadded::decode_vec(salt).map_err(|_| malformed("the salt is not base64"))?;
        let hash =
            Base64Unpadded::decode_vec(hash).map_err(|_| malformed("the hash is not base64"))?;
        if salt.len() < 8 || salt.len() > 64 {
            return Err(malformed("the salt must have 8 to 64 bytes"));
        }
        if hash.len() < 16 || hash.len() > 64 {
            return Err(malformed("the hash must have 16 to 64 bytes"));
        }
        if params.p == 0 || params.p > 255 || params.t == 0 || params.m_kib < 8 * params.p {
            return Err(malformed("impossible parameters"));
        }
        Ok(Phc { params, salt, hash })
    }

    /// The PHC string.
    pub fn to_phc(&self) -> String {
        format!(
            "$argon2id$v=19$m={},t={},p={}${}${}",
            self.params.m_kib,
            self.params.t,
            self.params.p,
            Base64Unpadded::encode_string(&self.salt),
            Base64Unpadded::encode_string(&self.hash)
        )
    }

    /// Whether `password` matches (constant-time comparison of the hashes).
    pub fn matches(&self, password: &str) -> Result<bool, PasswordError> {
        let out = argon2id(password, &self.salt, &self.params, self.hash.len())?;
        Ok(bool::from(out.as_slice().ct_eq(&self.hash)))
    }

    /// Refuses a verifier below `policy`.
    pub fn check_strength(&self, policy: &Policy) -> Result<(), PasswordError> {
        if self.params.at_least(&policy.floor)
            && self.salt.len() >= policy.min_salt
            && self.hash.len() >= 32
        {
            Ok(())
        } else {
            Err(PasswordError::Weak {
                got: self.params,
                salt: self.salt.len(),
                floor: policy.floor,
                min_salt: policy.min_salt,
            })
        }
    }
}

pub(crate) fn argon2id(
    password: &str,
    salt: &[u8],
    p: &Params,
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, PasswordError> {
    let params = argon2::Params::new(p.m_kib, p.t, p.p, Some(len))
        .map_err(|e| PasswordError::Argon2(e.to_string()))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new(vec![0u8; len]);
    a.hash_password_into(password.as_bytes(), salt, &mut out)
        .map_err(|e| PasswordError::Argon2(e.to_string()))?;
    Ok(out)
}

/// A new Argon2id verifier of `password` with `params` and a fresh 16-byte salt (PHC string).
pub fn new_verifier(password: &str, params: &Params) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| PasswordError::Random(e.to_string()))?;
    let hash = argon2id(password, &salt, params, 32)?;
    Ok(Phc {
        params: *params,
        salt: salt.to_vec(),
        hash: hash.to_vec(),
    }
    .to_phc())
}

/// Parses a PHC string and refuses it below `policy` (what a server does when a verifier is
/// registered).
pub fn accept(phc: &str, policy: &Policy) -> Result<Phc, PasswordError> {
    let v = Phc::parse(phc)?;
    v.check_strength(policy)?;
    Ok(v)
}

/// A stored verifier: Argon2id, or a PBKDF2 one from before (readable, upgraded at the next
/// correct password).
#[derive(Clone, PartialEq, Eq)]
pub enum Verifier {
    /// Argon2id.
    Argon2id(Phc),
    /// PBKDF2-HMAC-SHA256 (salt, iterations, 32-byte hash).
    Pbkdf2 {
        /// Salt.
        salt: [u8; 16],
        /// Iterations.
        iterations: u32,
        /// The hash.
        hash: [u8; 32],
    },
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verifier::Argon2id(p) => write!(f, "Argon2id({:?})", p.params),
            Verifier::Pbkdf2 { iterations, .. } => write!(f, "Pbkdf2({iterations})"),
        }
    }
}

impl Verifier {
    /// Whether `password` matches. A verifier whose parameters Argon2 refuses matches nothing.
    pub fn matches(&self, password: &str) -> bool {
        match self {
            Verifier::Argon2id(p) => p.matches(password).unwrap_or(false),
            Verifier::Pbkdf2 {
                salt,
                iterations,
                hash,
            } => crate::access::same(&pbkdf2_verifier(password, salt, *iterations), hash),
        }
    }

    /// Whether it should be replaced by a new verifier made under `policy` (PBKDF2, or
    /// Argon2id below the policy's parameters for new verifiers).
    pub fn needs_upgrade(&self, policy: &Policy) -> bool {
        match self {
            Verifier::Argon2id(p) => !p.params.at_least(&policy.new),
            Verifier::Pbkdf2 { .. } => true,
        }
    }
}

/// The same work as checking a password against a verifier made under `policy`, for a holder
/// that does not exist or may not try now: timing tells nothing.
pub fn dummy_check(password: &str, policy: &Policy) {
    let _ = argon2id(password, &[0x5a; 16], &policy.new, 32);
}

#[cfg(test)]
mod tests {
    use super::*;

    // From the Argon2 reference implementation's tests (phc-winner-argon2, src/test.c):
    // password "password", salt "somesalt".
    const REF_64M: &str =
        "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc";
    const REF_256K: &str =
        "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4";

    #[test]
    fn reference_verifiers_match() {
        for s in [REF_64M, REF_256K] {
            let v = Phc::parse(s).unwrap();
            assert_eq!(v.salt, b"somesalt");
            assert_eq!(v.to_phc(), s);
            assert!(v.matches("password").unwrap(), "{s}");
            assert!(!v.matches("passwore").unwrap(), "{s}");
        }
        // The raw hash of the 64 MiB vector, as the reference prints it in hex.
        assert_eq!(
            hex::encode(Phc::parse(REF_64M).unwrap().hash),
            "09316115d5cf24ed5a15a31a3ba326e5cf32edc24702987c02b6566f61913cf7"
        );
    }

    #[test]
    fn the_floor_is_enforced() {
        let p = Policy::production();
        // 64 MiB, t=2 is above the floor; but the reference salt has 8 bytes (< 16).
        let weak_salt = accept(REF_64M, &p).unwrap_err();
        assert!(
            matches!(weak_salt, PasswordError::Weak { salt: 8, .. }),
            "{weak_salt}"
        );
        let weak = accept(REF_256K, &p).unwrap_err();
        assert!(
            matches!(
                weak,
                PasswordError::Weak {
                    got: Params { m_kib: 256, .. },
                    ..
                }
            ),
            "{weak}"
        );
        assert!(weak.to_string().contains("m=19456"));
        // The test policy takes it; a new production verifier passes the production floor.
        accept(REF_256K, &Policy::cheap_for_tests()).unwrap();
        let made = new_verifier("correct horse", &Params::OWASP_MIN).unwrap();
        assert!(
            made.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{made}"
        );
        let v = accept(&made, &p).unwrap();
        assert!(v.matches("correct horse").unwrap());
        assert!(!v.matches("correct horsf").unwrap());
        // t=1 at 19 MiB is below the floor.
        let t1 = made.replace("t=2", "t=1");
        assert!(matches!(accept(&t1, &p), Err(PasswordError::Weak { .. })));
    }

    #[test]
    fn pbkdf2_records_stay_readable_and_need_upgrade() {
        let salt = [3u8; 16];
        let v = Verifier::Pbkdf2 {
            salt,
            iterations: 1000,
            hash: pbkdf2_verifier("pw", &salt, 1000),
        };
        assert!(v.matches("pw"));
        assert!(!v.matches("px"));
        assert!(v.needs_upgrade(&Policy::production()));
        let a = Verifier::Argon2id(Phc::parse(REF_256K).unwrap());
        assert!(a.needs_upgrade(&Policy::production()));
        assert!(!a.needs_upgrade(&Policy {
            new: Params {
                m_kib: 256,
                t: 2,
                p: 1
            },
            ..Policy::cheap_for_tests()
        }));
    }

    #[test]
    fn malformed_strings_are_refused() {
        for s in [
            "",
            "$argon2i$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
            "$argon2id$v=16$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
            "$argon2id$v=19$m=256,t=2$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
            "$argon2id$v=19$m=256,t=2,p=1,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
            "$argon2id$v=19$m=0256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
            "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ=$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
            "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4$",
            "$argon2id$v=19$m=256,t=0,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
            "$argon2id$v=19$m=99999999999,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        ] {
            assert!(
                matches!(Phc::parse(s), Err(PasswordError::Malformed(_))),
                "{s}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]
        /// Any text: a clear refusal or a verifier that prints back the same, never a panic.
        #[test]
        fn parse_never_panics(s in "\\PC{0,120}") {
            if let Ok(v) = Phc::parse(&s) {
                proptest::prop_assert_eq!(v.to_phc(), s);
            }
        }

        /// Valid strings with arbitrary parameters and bytes round-trip.
        #[test]
        fn parse_round_trips(m in 8u32..1_000_000, t in 1u32..100, p in 1u32..8,
                             salt in proptest::collection::vec(0u8.., 8..64),
                             hash in proptest::collection::vec(0u8.., 16..64)) {
            let v = Phc { params: Params { m_kib: m.max(8 * p), t, p }, salt, hash };
            proptest::prop_assert_eq!(Phc::parse(&v.to_phc()).unwrap(), v);
        }
    }
}
