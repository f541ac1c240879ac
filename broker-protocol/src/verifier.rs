//! The service side: everything a provider needs to accept a holder the broker vouches for —
//! the broker's published keys, its name, this service's name and the nonce it gave — and no
//! card logic at all.

use crate::assertion::{AssertionError, Assurance, Claims, Jwks, verify_signature};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Checks broker assertions for one service.
pub struct Verifier {
    /// The broker's keys (`GET /v1/keys`).
    pub keys: Jwks,
    /// The broker's name (the `iss` it signs with).
    pub issuer: String,
    /// This service (the `aud` it must carry).
    pub audience: String,
    /// The weakest holder authentication accepted.
    pub min_assurance: Assurance,
    /// Allowed clock skew, seconds.
    pub skew: u64,
    /// Assertion ids seen with their expiry (a replay is refused), and when expired ids were
    /// last forgotten.
    seen: Mutex<(BTreeMap<String, u64>, u64)>,
}

impl Verifier {
    /// A verifier for `audience` trusting `issuer`'s `keys`.
    pub fn new(keys: Jwks, issuer: &str, audience: &str, min_assurance: Assurance) -> Verifier {
        Verifier {
            keys,
            issuer: issuer.into(),
            audience: audience.into(),
            min_assurance,
            skew: 30,
            seen: Mutex::new((BTreeMap::new(), 0)),
        }
    }

    /// Accepts an assertion for the login whose nonce is `nonce`, at `now` (Unix seconds):
    /// signature, issuer, audience, validity, nonce, assurance, and first use.
    pub fn verify(&self, token: &str, nonce: &str, now: u64) -> Result<Claims, AssertionError> {
        let c = verify_signature(token, &self.keys)?;
        if c.iss != self.issuer {
            return Err(AssertionError::Issuer(c.iss));
        }
        if c.aud != self.audience {
            return Err(AssertionError::Audience(c.aud));
        }
        if now + self.skew < c.iat || now > c.exp + self.skew || c.exp < c.iat {
            return Err(AssertionError::Time {
                iat: c.iat,
                exp: c.exp,
                now,
            });
        }
        if c.nonce != nonce {
            return Err(AssertionError::Nonce);
        }
        match Assurance::from_acr(&c.acr) {
            Some(a) if a >= self.min_assurance => {}
            _ => return Err(AssertionError::Assurance(c.acr.clone())),
        }
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| AssertionError::Malformed("replay cache poisoned".into()))?;
        let (ids, purged) = &mut *seen;
        // Forgetting expired ids is a walk over all of them: once a second at most, not per
        // assertion. An expired assertion is refused above anyway.
        if now > *purged {
            ids.retain(|_, exp| *exp + self.skew >= now);
            *purged = now;
        }
        if ids.insert(c.jti.clone(), c.exp).is_some() {
            return Err(AssertionError::Replayed);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assertion::sign;
    use p256::ecdsa::SigningKey;
    use p256::elliptic_curve::Generate;

    #[test]
    fn every_check() {
        let k = SigningKey::try_generate().unwrap();
        let v = Verifier::new(
            Jwks::of(&[*k.verifying_key()]),
            "broker",
            "shop",
            Assurance::Card,
        );
        let c = |aud: &str, acr: Assurance, jti: &str| Claims {
            iss: "broker".into(),
            sub: "s".into(),
            aud: aud.into(),
            iat: 1000,
            exp: 1120,
            nonce: "n".into(),
            acr: acr.acr().into(),
            jti: jti.into(),
        };
        let ok = sign(&k, &c("shop", Assurance::Card, "1")).unwrap();
        assert!(v.verify(&ok, "n", 1010).is_ok());
        assert_eq!(v.verify(&ok, "n", 1011), Err(AssertionError::Replayed));
        let t = sign(&k, &c("shop", Assurance::Card, "2")).unwrap();
        assert_eq!(v.verify(&t, "other", 1010), Err(AssertionError::Nonce));
        assert!(matches!(
            v.verify(&t, "n", 5000),
            Err(AssertionError::Time { .. })
        ));
        let t = sign(&k, &c("bank", Assurance::Card, "3")).unwrap();
        assert!(matches!(
            v.verify(&t, "n", 1010),
            Err(AssertionError::Audience(_))
        ));
        let t = sign(&k, &c("shop", Assurance::Password, "4")).unwrap();
        assert!(matches!(
            v.verify(&t, "n", 1010),
            Err(AssertionError::Assurance(_))
        ));
    }
}
