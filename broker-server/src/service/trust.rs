//! The card CAs and their revocation data a card login is checked against, re-read from
//! their files whenever they change.

use std::sync::Arc;

/// The card CAs and their revocation data, from files: CA certificates (PEM or DER), and
/// revocation files — CRLs (`.crl`, `.der`, or PEM `X509 CRL`; each must be signed by its CA)
/// or plain lists of serials (one per line, decimal or `0x` hex, as `kagi ca` writes them).
/// A CRL no configured CA signed is refused: the trust is an error (every card login fails
/// with `card trust: FILE: …`) until a CRL its CA signed replaces it — a forged or wrong CRL
/// never passes for "nothing revoked".
/// Re-read when any file's modification time changes; a missing revocation file counts as
/// empty (a CRL not yet published), a missing CA as an error.
pub struct CardTrust {
    cas: Vec<std::path::PathBuf>,
    revocations: Vec<std::path::PathBuf>,
    cache: std::sync::Mutex<Option<TrustCache>>,
}

type TrustCache = (Vec<Option<std::time::SystemTime>>, Arc<kagi_certs::Trust>);

impl CardTrust {
    /// Trust from these files (read at the first login and whenever they change).
    pub fn new(cas: Vec<std::path::PathBuf>, revocations: Vec<std::path::PathBuf>) -> CardTrust {
        CardTrust {
            cas,
            revocations,
            cache: std::sync::Mutex::new(None),
        }
    }

    fn stamps(&self) -> Vec<Option<std::time::SystemTime>> {
        self.cas
            .iter()
            .chain(&self.revocations)
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// The trust as the files say now.
    pub fn current(&self) -> std::result::Result<Arc<kagi_certs::Trust>, kagi_certs::CertError> {
        let stamps = self.stamps();
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| kagi_certs::CertError("trust cache poisoned".into()))?;
        if let Some((s, t)) = cache.as_ref()
            && *s == stamps
        {
            return Ok(t.clone());
        }
        let named = |p: &std::path::Path, e: kagi_certs::CertError| {
            kagi_certs::CertError(format!("{}: {e}", p.display()))
        };
        let mut trust = kagi_certs::Trust::default();
        for p in &self.cas {
            let bytes = std::fs::read(p)
                .map_err(|e| kagi_certs::CertError(format!("{}: {e}", p.display())))?;
            trust.add_ca_file(&bytes).map_err(|e| named(p, e))?;
        }
        for p in &self.revocations {
            let Ok(bytes) = std::fs::read(p) else {
                continue;
            };
            let crl = bytes.starts_with(b"-----BEGIN X509 CRL")
                || p.extension().is_some_and(|e| e == "crl" || e == "der");
            if crl {
                trust.add_crl_file(&bytes).and_then(|()| trust.check_crls())
            } else {
                trust.add_revoked_list(&String::from_utf8_lossy(&bytes))
            }
            .map_err(|e| named(p, e))?;
        }
        let trust = Arc::new(trust);
        *cache = Some((stamps, trust.clone()));
        Ok(trust)
    }
}
