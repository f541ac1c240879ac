//! The PIN-less eligibility read (資格確認) a medical or service counter performs: it reads
//! only what needs no PIN — the user-authentication certificate — checks who issued it,
//! whether it is revoked and whether it is valid now, and gives a verdict with reasons. It
//! never sends a VERIFY (the [`Counting`] channel refuses to), and it uses one card session
//! with the fewest commands.

use crate::channel::ApduChannel;
use crate::error::{Error, Result};
use crate::jpki;
use crate::pki::{issued_by as verifies, pem_or_der};
use card_wire::apdu::{Command, Response};
use card_wire::sw::StatusWord;
use der::{Decode, Encode};
use serde::Serialize;
use std::time::{Instant, SystemTime};
use x509_cert::Certificate;
use x509_cert::crl::CertificateList;

/// The outcome of an eligibility read.
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
    /// The card has no JPKI AP or no authentication certificate.
    NotAJpkiCard,
}

/// What the verdict rests on.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in words.
    pub reasons: Vec<String>,
    /// Certificate serial (hex), subject, issuer, validity (when a certificate was read).
    pub serial: Option<String>,
    /// Subject DN.
    pub subject: Option<String>,
    /// Issuer DN.
    pub issuer: Option<String>,
    /// notBefore (seconds since the Unix epoch).
    pub not_before: Option<u64>,
    /// notAfter (seconds since the Unix epoch).
    pub not_after: Option<u64>,
    /// Commands sent to the card.
    pub commands: usize,
    /// Time spent talking to the card, microseconds.
    pub card_micros: u64,
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
            Certificate::from_der(&der)
                .map_err(|e| Error::Protocol(format!("CA certificate: {e}")))?,
        );
        Ok(())
    }

    /// Reads a CRL file (DER or PEM).
    pub fn add_crl_file(&mut self, bytes: &[u8]) -> Result<()> {
        let der = pem_or_der(bytes, "X509 CRL")?;
        self.crls.push(
            CertificateList::from_der(&der).map_err(|e| Error::Protocol(format!("CRL: {e}")))?,
        );
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
            .map_err(|_| {
                Error::Protocol(format!("revocation list: '{line}' is not a serial number"))
            })?;
            let bytes = n.to_be_bytes();
            let skip = bytes.iter().take(7).take_while(|b| **b == 0).count();
            self.revoked.push(bytes[skip..].to_vec());
        }
        Ok(())
    }
}

fn strip(serial: &[u8]) -> &[u8] {
    let skip = serial
        .iter()
        .take(serial.len().saturating_sub(1))
        .take_while(|b| **b == 0)
        .count();
    &serial[skip..]
}

/// Judges a DER authentication certificate against `trust` at time `now`.
pub fn judge(cert_der: &[u8], trust: &Trust, now: SystemTime) -> Report {
    let mut report = Report {
        verdict: Verdict::Eligible,
        reasons: Vec::new(),
        serial: None,
        subject: None,
        issuer: None,
        not_before: None,
        not_after: None,
        commands: 0,
        card_micros: 0,
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
    let tbs_der = tbs.to_der().unwrap_or_default();
    let issuer = trust.cas.iter().find(|ca| {
        ca.tbs_certificate().subject() == tbs.issuer()
            && verifies(
                ca,
                &tbs_der,
                &cert.signature_algorithm().oid,
                cert.signature().raw_bytes(),
            )
    });
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
        let list = &crl.tbs_cert_list;
        let crl_tbs = list.to_der().unwrap_or_default();
        if list.issuer != *issuer.tbs_certificate().subject()
            || !verifies(
                issuer,
                &crl_tbs,
                &crl.signature_algorithm.oid,
                crl.signature.raw_bytes(),
            )
        {
            report
                .reasons
                .push("a CRL not signed by the issuing CA was ignored".into());
            continue;
        }
        if list
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

/// An [`ApduChannel`] that counts commands and refuses VERIFY, so a PIN can never be asked
/// for or spent by an eligibility read.
pub struct Counting<'c, C: ApduChannel> {
    inner: &'c mut C,
    /// Commands sent.
    pub commands: usize,
}

impl<C: ApduChannel> ApduChannel for Counting<'_, C> {
    fn transmit(&mut self, cmd: &Command) -> Result<Response> {
        if matches!(cmd.ins(), 0x20 | 0x21 | 0x24 | 0x2C) {
            return Err(Error::Protocol(
                "an eligibility read never sends a PIN command".into(),
            ));
        }
        self.commands += 1;
        self.inner.transmit(cmd)
    }
}

/// Reads the card and judges it: SELECT the JPKI AP, SELECT EF 000A, READ BINARY (256
/// bytes, then the rest) — five commands for a typical certificate, no PIN.
pub fn read(ch: &mut impl ApduChannel, trust: &Trust, now: SystemTime) -> Result<Report> {
    let mut counting = Counting {
        inner: ch,
        commands: 0,
    };
    let start = Instant::now();
    let cert = match jpki::select(&mut counting) {
        Ok(()) => jpki::read_der(&mut counting, jpki::EF_AUTH_CERT),
        Err(e) => Err(e),
    };
    let micros = start.elapsed().as_micros() as u64;
    let mut report = match cert {
        Ok(der) => judge(&der, trust, now),
        Err(Error::Status {
            sw: StatusWord::NOT_FOUND,
            ..
        }) => {
            let mut r = judge(&[], trust, now);
            r.reasons =
                vec!["the card has no JPKI AP or no authentication certificate (6A82)".into()];
            r
        }
        Err(e) => return Err(e),
    };
    report.commands = counting.commands;
    report.card_micros = micros;
    Ok(report)
}
