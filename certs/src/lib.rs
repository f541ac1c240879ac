//! # kagi-certs
//!
//! Judging a JPKI certificate with no card involved: who issued it (a trusted CA whose
//! sha256WithRSAEncryption signature verifies), whether it is revoked (the issuer's signed
//! CRLs, or a plain list of serials), and whether it is valid now — a verdict with its
//! reasons. The PIN-less eligibility read (`kagi::eligibility`) judges the certificate it
//! read from a card; the credential broker judges the certificate a card logs in with; the
//! provider checks the application signed with a My Number card's signature key
//! ([`application`]).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod application;
pub mod card_key;

use der::{Decode, Encode};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use serde::Serialize;
use std::time::SystemTime;
use x509_cert::Certificate;
use x509_cert::crl::CertificateList;

/// A file or certificate that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CertError(pub String);

type Result<T> = std::result::Result<T, CertError>;

/// sha256WithRSAEncryption.
pub const SHA256_RSA: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");

/// DER from a file that holds DER, or PEM with `label`.
pub fn pem_or_der(bytes: &[u8], label: &str) -> Result<Vec<u8>> {
    if bytes.starts_with(b"-----BEGIN") {
        let (l, der) = der::pem::decode_vec(bytes).map_err(|e| CertError(format!("PEM: {e}")))?;
        if l != label {
            return Err(CertError(format!("PEM holds {l}, expected {label}")));
        }
        Ok(der)
    } else {
        Ok(bytes.to_vec())
    }
}

/// Whether `sig` (sha256WithRSAEncryption, the only algorithm JPKI uses) over `tbs` verifies
/// with the RSA key in `spki` (DER SubjectPublicKeyInfo).
pub fn rsa_signed(spki: &[u8], tbs: &[u8], alg: &der::oid::ObjectIdentifier, sig: &[u8]) -> bool {
    if *alg != SHA256_RSA {
        return false;
    }
    let Ok(key) = rsa::PublicKey::from_public_key_der(spki) else {
        return false;
    };
    let Ok(sig) = Signature::try_from(sig) else {
        return false;
    };
    VerifyingKey::<sha2::Sha256>::new(key)
        .verify(tbs, &sig)
        .is_ok()
}

/// Whether `issuer` signed `tbs` (a certificate's or CRL's to-be-signed part).
pub fn issued_by(
    issuer: &Certificate,
    tbs: &[u8],
    alg: &der::oid::ObjectIdentifier,
    sig: &[u8],
) -> bool {
    issuer
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .is_ok_and(|spki| rsa_signed(&spki, tbs, alg, sig))
}

/// Whether `ca` issued `cert`: `cert` names `ca`'s subject as its issuer, is in its one
/// canonical form (see [`canonical`]) and `ca`'s key verifies its signature.
pub fn certificate_issued_by(ca: &Certificate, cert: &Certificate) -> bool {
    let tbs = cert.tbs_certificate();
    tbs.issuer() == ca.tbs_certificate().subject()
        && canonical(cert).is_ok()
        && tbs.to_der().is_ok_and(|tbs_der| {
            issued_by(
                ca,
                &tbs_der,
                &cert.signature_algorithm().oid,
                cert.signature().raw_bytes(),
            )
        })
}

/// Whether `ca` issued the CRL `crl`: same rules as [`certificate_issued_by`] (issuer name,
/// outer algorithm equal to the signed one, no unused signature bits, signature verifies).
pub fn crl_issued_by(ca: &Certificate, crl: &CertificateList) -> bool {
    let list = &crl.tbs_cert_list;
    list.issuer == *ca.tbs_certificate().subject()
        && one_form(&crl.signature_algorithm, &list.signature, &crl.signature).is_ok()
        && list.to_der().is_ok_and(|crl_tbs| {
            issued_by(
                ca,
                &crl_tbs,
                &crl.signature_algorithm.oid,
                crl.signature.raw_bytes(),
            )
        })
}

/// The verdict on a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Valid, issued by a trusted CA, not revoked.
    Eligible,
    /// Past its validity (or not yet valid).
    Expired,
    /// On the CRL or the revocation list.
    Revoked,
    /// Not issued by any trusted CA (or its signature does not verify).
    UnknownIssuer,
    /// Not a certificate (or, read from a card, the card has no JPKI AP or no
    /// authentication certificate).
    NotAJpkiCard,
}

/// The verdict and what it rests on.
#[derive(Debug, Clone, Serialize)]
pub struct Judgement {
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in words.
    pub reasons: Vec<String>,
    /// Certificate serial (hex, no sign padding), when a certificate was read.
    pub serial: Option<String>,
    /// Subject DN.
    pub subject: Option<String>,
    /// Issuer DN.
    pub issuer: Option<String>,
    /// notBefore (seconds since the Unix epoch).
    pub not_before: Option<u64>,
    /// notAfter (seconds since the Unix epoch).
    pub not_after: Option<u64>,
}

/// Trust anchors and revocation data.
#[derive(Debug, Default, Clone)]
pub struct Trust {
    /// CA certificates that may issue authentication certificates.
    pub cas: Vec<Certificate>,
    /// CRLs (each must be signed by one of the CAs).
    pub crls: Vec<CertificateList>,
    /// Revoked serial numbers (big-endian bytes, no sign padding) from a plain list.
    pub revoked: Vec<Vec<u8>>,
}

impl Trust {
    /// Reads a certificate file (DER or PEM).
    pub fn add_ca_file(&mut self, bytes: &[u8]) -> Result<()> {
        let der = pem_or_der(bytes, "CERTIFICATE")?;
        self.cas.push(
            Certificate::from_der(&der).map_err(|e| CertError(format!("CA certificate: {e}")))?,
        );
        Ok(())
    }

    /// Reads a CRL file (DER or PEM).
    pub fn add_crl_file(&mut self, bytes: &[u8]) -> Result<()> {
        let der = pem_or_der(bytes, "X509 CRL")?;
        self.crls
            .push(CertificateList::from_der(&der).map_err(|e| CertError(format!("CRL: {e}")))?);
        Ok(())
    }

    /// Reads a revocation list: one serial per line, decimal or `0x` hex.
    pub fn add_revoked_list(&mut self, text: &str) -> Result<()> {
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let n = match line.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => line.parse::<u64>(),
            }
            .map_err(|_| CertError(format!("revocation list: '{line}' is not a serial number")))?;
            let bytes = n.to_be_bytes();
            let skip = bytes.iter().take(7).take_while(|b| **b == 0).count();
            self.revoked.push(bytes[skip..].to_vec());
        }
        Ok(())
    }
}

impl Trust {
    /// Whether one of the CAs signed `crl` (its issuer named and its signature verifying).
    pub fn signed_by_a_ca(&self, crl: &CertificateList) -> bool {
        self.cas.iter().any(|ca| crl_issued_by(ca, crl))
    }

    /// Refuses revocation data no trusted CA signed: an error naming the first CRL whose
    /// signature does not verify with any of the CAs (a relying party given such a CRL
    /// cannot know what is revoked, so it must not go on as if nothing were).
    pub fn check_crls(&self) -> Result<()> {
        match self.crls.iter().find(|c| !self.signed_by_a_ca(c)) {
            None => Ok(()),
            Some(c) => Err(CertError(format!(
                "the CRL of {} is not signed by any trusted CA: refused (get the CRL its CA published, or add that CA)",
                c.tbs_cert_list.issuer
            ))),
        }
    }
}

impl Trust {
    /// Every revoked serial (upper-case hex, no sign padding) this trust knows of: the plain
    /// list's, and those of each CRL signed by one of the CAs (a CRL no trusted CA signed is
    /// ignored, as [`judge`] ignores it). Sorted, without duplicates.
    pub fn revoked_serials(&self) -> Vec<String> {
        let mut out: Vec<String> = self.revoked.iter().map(hex::encode_upper).collect();
        for crl in &self.crls {
            if !self.signed_by_a_ca(crl) {
                continue;
            }
            out.extend(
                crl.tbs_cert_list
                    .revoked_certificates
                    .iter()
                    .flatten()
                    .map(|r| hex::encode_upper(strip(r.serial_number.as_bytes()))),
            );
        }
        out.sort();
        out.dedup();
        out
    }
}

/// A certificate's serial as upper-case hex, without the sign byte's leading zeros.
pub fn serial_hex(cert: &Certificate) -> String {
    hex::encode_upper(strip(cert.tbs_certificate().serial_number().as_bytes()))
}

/// The common name of a certificate's subject (a JPKI authentication certificate's opaque
/// card id).
pub fn subject_cn(cert: &Certificate) -> Option<String> {
    let cn = cert.tbs_certificate().subject().common_name().ok()??;
    Some(cn.value().into_owned())
}

fn strip(serial: &[u8]) -> &[u8] {
    let skip = serial
        .iter()
        .take(serial.len().saturating_sub(1))
        .take_while(|b| **b == 0)
        .count();
    &serial[skip..]
}

/// The two parts of a certificate its issuer's signature does not cover, held to their one
/// allowed form: the outer `signatureAlgorithm` must be the TBS `signature` byte for byte
/// (RFC 5280 4.1.1.2), and the `signatureValue` BIT STRING must have no unused bits (an RSA
/// signature is whole octets). Otherwise two different encodings would pass as one
/// certificate.
fn canonical(cert: &Certificate) -> std::result::Result<(), String> {
    one_form(
        cert.signature_algorithm(),
        cert.tbs_certificate().signature(),
        cert.signature(),
    )
}

/// [`canonical`]'s rule on the parts of a certificate or CRL outside what is signed: the outer
/// algorithm, the signed one, the signature.
fn one_form(
    outer: &x509_cert::spki::AlgorithmIdentifierOwned,
    signed: &x509_cert::spki::AlgorithmIdentifierOwned,
    signature: &der::asn1::BitString,
) -> std::result::Result<(), String> {
    if outer != signed {
        return Err(
            "the signatureAlgorithm differs from the one inside what is signed (RFC 5280 4.1.1.2)"
                .into(),
        );
    }
    if signature.unused_bits() != 0 {
        return Err(format!(
            "the signature BIT STRING has {} unused bits (must be 0)",
            signature.unused_bits()
        ));
    }
    Ok(())
}

/// Judges a DER authentication certificate against `trust` at time `now`.
pub fn judge(cert_der: &[u8], trust: &Trust, now: SystemTime) -> Judgement {
    let mut report = Judgement {
        verdict: Verdict::Eligible,
        reasons: Vec::new(),
        serial: None,
        subject: None,
        issuer: None,
        not_before: None,
        not_after: None,
    };
    let cert = match Certificate::from_der(cert_der) {
        Ok(c) => c,
        Err(e) => {
            report.verdict = Verdict::NotAJpkiCard;
            report.reasons.push(format!(
                "the authentication certificate does not parse: {e}"
            ));
            return report;
        }
    };
    if let Err(why) = canonical(&cert) {
        report.verdict = Verdict::NotAJpkiCard;
        report.reasons.push(why);
        return report;
    }
    let tbs = cert.tbs_certificate();
    let serial = strip(tbs.serial_number().as_bytes()).to_vec();
    report.serial = Some(hex::encode_upper(&serial));
    report.subject = Some(tbs.subject().to_string());
    report.issuer = Some(tbs.issuer().to_string());
    let secs = |t: &x509_cert::time::Time| {
        t.to_system_time()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    report.not_before = Some(secs(&tbs.validity().not_before));
    report.not_after = Some(secs(&tbs.validity().not_after));
    let issuer = trust.cas.iter().find(|ca| certificate_issued_by(ca, &cert));
    let Some(issuer) = issuer else {
        report.verdict = Verdict::UnknownIssuer;
        report.reasons.push(format!(
            "no trusted CA issued this certificate (issuer {})",
            tbs.issuer()
        ));
        return report;
    };
    report.reasons.push(format!(
        "issued by trusted CA {}",
        issuer.tbs_certificate().subject()
    ));
    let mut revoked = trust
        .revoked
        .iter()
        .any(|r| r.as_slice() == serial.as_slice());
    if revoked {
        report
            .reasons
            .push("serial is on the revocation list".into());
    }
    for crl in &trust.crls {
        if !crl_issued_by(issuer, crl) {
            report
                .reasons
                .push("a CRL not signed by the issuing CA was ignored".into());
            continue;
        }
        if crl
            .tbs_cert_list
            .revoked_certificates
            .iter()
            .flatten()
            .any(|r| strip(r.serial_number.as_bytes()) == serial.as_slice())
        {
            revoked = true;
            report.reasons.push("serial is on the issuer's CRL".into());
        }
    }
    if revoked {
        report.verdict = Verdict::Revoked;
        return report;
    }
    let (nb, na) = (
        tbs.validity().not_before.to_system_time(),
        tbs.validity().not_after.to_system_time(),
    );
    if now < nb || now > na {
        report.verdict = Verdict::Expired;
        report.reasons.push(if now < nb {
            "not valid yet".into()
        } else {
            "validity has ended".into()
        });
        return report;
    }
    report.reasons.push("valid now and not revoked".into());
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crl_no_trusted_ca_signed_is_refused() {
        let ca = test_pki::TestCa::new("UA").unwrap();
        let other = test_pki::TestCa::new("Other").unwrap();
        let mut trust = Trust::default();
        trust.add_ca_file(&ca.certificate_der().unwrap()).unwrap();
        trust
            .add_crl_file(&ca.crl(1, &[7]).unwrap().to_der().unwrap())
            .unwrap();
        assert!(trust.check_crls().is_ok());
        // The same CRL with one bit of its signature flipped, and one of another CA.
        let mut forged = ca.crl(2, &[7]).unwrap().to_der().unwrap();
        *forged.last_mut().unwrap() ^= 1;
        for bad in [forged, other.crl(1, &[7]).unwrap().to_der().unwrap()] {
            let mut t = trust.clone();
            t.add_crl_file(&bad).unwrap();
            let e = t.check_crls().unwrap_err();
            assert!(e.0.contains("not signed by any trusted CA"), "{e}");
        }
    }
}
