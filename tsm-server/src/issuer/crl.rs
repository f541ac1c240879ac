//! The issuer's CRL: the revocation status of the phone certificates it issued, as an X.509
//! v2 CRL signed by the user-authentication CA — what relying parties (`kagi eligibility
//! read --crl`, the broker's `revocation` files) check a phone certificate against without
//! trusting any SP-TSM. It lists every phone certificate the issuer revoked or holds, each
//! with its date and reason code (RFC 5280 §5.3.1):
//!
//! | link state / reason | reasonCode |
//! |---|---|
//! | revoked, `sign-revoked` (the My Number card's signature certificate revoked) | privilegeWithdrawn |
//! | revoked, `withdrawn` (the SP-TSM could not deliver it) | cessationOfOperation |
//! | revoked, `sim-lost` (the operator's loss notice) | keyCompromise |
//! | revoked, `sim-changed` (the SIM was replaced) | superseded |
//! | revoked, `superseded` (a newer certificate was issued for the same SIM and provider) | superseded |
//! | held (suspended at the holder's request) | certificateHold |
//! | anything else revoked | unspecified |
//!
//! A certificate stays listed until one CRL validity period after its notAfter (so at least
//! one CRL issued after it expired lists it, RFC 5280 §5), then is left off; the periodic
//! sweep audits each such drop (`crl-dropped`), which raises the number.
//!
//! Its CRL number is the id of the newest entry of the issuer's audit trail (append-only,
//! and every state change writes one) that can change the list — issuances, PIN resets and
//! application checks do not raise it —, read in the same statement as the entries, so a later
//! CRL never has a smaller number than an earlier one and a change always raises it.
//! Published as a file (`crl` in `jpki-issuer.toml`, written atomically when the number
//! changes and at least hourly) and over HTTP (`GET /v1/crl`), and made on demand by
//! `kagi jpki-issuer crl`.

use super::{Issuer, IssuerError, store};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};
pub use x509_cert::ext::pkix::crl::CrlReason;

/// How long a CRL is valid (its nextUpdate after thisUpdate).
pub const NEXT_UPDATE: Duration = Duration::from_secs(24 * 3600);

/// How often the published file is rewritten even when nothing changed (well before its
/// nextUpdate).
pub const REPUBLISH: Duration = Duration::from_secs(3600);

/// One revoked (or held) phone certificate as the CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlEntry {
    /// The phone certificate's serial (big-endian, unsigned).
    pub serial: Vec<u8>,
    /// When it was revoked or put on hold.
    pub revoked_at: SystemTime,
    /// The reason code.
    pub reason: CrlReason,
}

/// The reason code of a link in `state` revoked for `reason` (the module's table).
pub fn reason_code(state: &str, reason: &str) -> CrlReason {
    match (state, reason) {
        ("held", _) => CrlReason::CertificateHold,
        (_, "sign-revoked") => CrlReason::PrivilegeWithdrawn,
        (_, "withdrawn") => CrlReason::CessationOfOperation,
        (_, "sim-lost") => CrlReason::KeyCompromise,
        (_, "sim-changed" | "superseded") => CrlReason::Superseded,
        _ => CrlReason::Unspecified,
    }
}

/// The CRL's number and entries at `now`, as the database says (one statement); a
/// certificate expired longer than [`store::CRL_KEEP_EXPIRED_S`] is left off.
pub async fn entries(
    db: &kagi_db::Db,
    now: SystemTime,
) -> Result<(u64, Vec<CrlEntry>), kagi_db::StoreError> {
    let now_s = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let rows = store::crl_rows(db, now_s).await?;
    let mut number = 0u64;
    let mut out = Vec::new();
    for r in rows {
        number = number.max(r.number.max(0) as u64);
        let Some((serial, state, reason, at)) = r.entry else {
            continue;
        };
        let Ok(serial) = hex::decode(&serial) else {
            tracing::warn!(serial, "a phone serial that is not hex left off the CRL");
            continue;
        };
        out.push(CrlEntry {
            serial,
            revoked_at: SystemTime::UNIX_EPOCH + Duration::from_millis(at.max(0) as u64),
            reason: reason_code(&state, &reason),
        });
    }
    Ok((number, out))
}

/// The state of the published file: the number last written and when.
#[derive(Debug, Default)]
pub(super) struct Published {
    last: Option<(u64, Instant)>,
}

/// Writes `bytes` to `path` atomically (a temporary file beside it, renamed over it),
/// readable by all (a CRL is public); the caller holds the published state's lock.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "crl".into());
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(std::io::Error::other)?;
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", hex::encode(nonce)));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl Issuer {
    /// The issuer's CRL now (DER) and its number, signed by the user-authentication CA.
    pub async fn crl(&self) -> Result<(u64, Vec<u8>), IssuerError> {
        let now = SystemTime::now();
        let (number, list) = entries(&self.db, now).await?;
        let der = self
            .config
            .ua_ca
            .crl(number, now, now + NEXT_UPDATE, &list)
            .map_err(|e| IssuerError::Internal(format!("the CRL could not be signed: {e}")))?;
        Ok((number, der))
    }

    /// Writes the CRL to the file set with [`Issuer::with_crl_file`] when its number changed
    /// since the last write, or the last write is older than [`REPUBLISH`] (or `force`).
    pub async fn publish_crl(&self, force: bool) -> Result<(), IssuerError> {
        if self.crl_file.is_none() {
            return Ok(());
        }
        let (number, _) = entries(&self.db, SystemTime::now()).await?;
        let due = {
            let p = self
                .published
                .lock()
                .map_err(|_| IssuerError::Internal("the CRL state lock was poisoned".into()))?;
            force
                || p.last
                    .is_none_or(|(n, at)| n != number || at.elapsed() >= REPUBLISH)
        };
        if due {
            self.current_crl().await?;
        }
        Ok(())
    }

    /// The CRL now ([`Issuer::crl`]), also written to the published file when there is one
    /// (atomically, and never over a CRL of a higher number).
    pub async fn current_crl(&self) -> Result<(u64, Vec<u8>), IssuerError> {
        let (number, der) = self.crl().await?;
        let Some(path) = &self.crl_file else {
            return Ok((number, der));
        };
        let mut p = self
            .published
            .lock()
            .map_err(|_| IssuerError::Internal("the CRL state lock was poisoned".into()))?;
        if p.last.is_none_or(|(n, _)| n <= number) {
            write_atomically(path, &der).map_err(|e| {
                IssuerError::Internal(format!("the CRL file {}: {e}", path.display()))
            })?;
            p.last = Some((number, Instant::now()));
            tracing::info!(number, file = %path.display(), "CRL published");
        }
        Ok((number, der))
    }

    /// [`Issuer::publish_crl`], a failure logged (the state change that called it stands;
    /// the next sweep writes the file again).
    pub(super) async fn refresh_crl(&self) {
        if let Err(e) = self.publish_crl(false).await {
            tracing::error!(error = %e, "the CRL could not be published; retried at the next sweep");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_follow_the_table() {
        assert_eq!(
            reason_code("revoked", "sign-revoked"),
            CrlReason::PrivilegeWithdrawn
        );
        assert_eq!(reason_code("held", "hold"), CrlReason::CertificateHold);
        assert_eq!(reason_code("revoked", "sim-lost"), CrlReason::KeyCompromise);
        assert_eq!(reason_code("revoked", "other"), CrlReason::Unspecified);
    }
}
