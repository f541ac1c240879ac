//! `kagi jpki apply`: the application for a phone credential, signed on the My Number card
//! with its signature key (seed 004, 別紙1 ②), and the signature-certificate trust the
//! provider checks it against.

use super::{PinSource, verify};
use crate::target::Target;
use crate::{Failure, print_json};
use clap::Args;
use kagi::jpki::{self, Pin};
use kagi_certs::application::{Application, Body};
use serde_json::json;
use std::path::{Path, PathBuf};
use tsm_protocol::receipt::CertKey;

/// `kagi jpki apply`.
#[derive(Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    target: Target,
    /// The SIM the credential is for (its ICCID).
    #[arg(long)]
    iccid: String,
    /// The service provider applied to (its party name, as in its sp.toml).
    #[arg(long)]
    provider: String,
    /// The user's reference at the provider.
    #[arg(long, default_value = "")]
    subscriber_ref: String,
    /// The user's own mail address (name@domain): signed into the application, it is where
    /// the SP-TSM sends the download's access code (the provider never sees the code).
    #[arg(long)]
    contact: String,
    /// Where to write the signed application (binary, canonical encoding).
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Date the application at this time (seconds since the Unix epoch) instead of now; the
    /// provider refuses one outside its time window.
    #[arg(long)]
    at_unix: Option<u64>,
    /// What is applied for: `issue` (a phone credential), `pin-reset` (a new PIN for the
    /// phone credential linked to this card) or `transfer` (move the phone credential of SIM
    /// --from-iccid to SIM --iccid); each signed under its own domain.
    #[arg(long, default_value = "issue", value_parser = ["issue", "pin-reset", "transfer"])]
    kind: String,
    /// With `--kind transfer`: the SIM whose phone credential moves (its ICCID; signed into
    /// the application, so it moves that credential only).
    #[arg(long, required_if_eq("kind", "transfer"))]
    from_iccid: Option<String>,
    /// The signature password (6–16 upper-case letters and digits), from a file, an
    /// environment variable or a prompt.
    #[command(flatten)]
    pin: PinSource,
}

/// Signs an application on the card and writes it.
pub fn run(a: &ApplyArgs, trace: bool, json_out: bool) -> Result<(), Failure> {
    let body = Body::new(
        &a.iccid,
        &a.provider,
        &a.subscriber_ref,
        &a.contact,
        match a.at_unix {
            Some(t) => std::time::UNIX_EPOCH + std::time::Duration::from_secs(t),
            None => std::time::SystemTime::now(),
        },
    )?;
    let message = match (a.kind.as_str(), &a.from_iccid) {
        ("transfer", Some(from)) => body.signed_bytes_transfer(from)?,
        ("transfer", None) => return Err("--kind transfer needs --from-iccid OLD".into()),
        (_, Some(_)) => return Err("--from-iccid is for --kind transfer only".into()),
        ("pin-reset", None) => body.signed_bytes_for(kagi_certs::application::Kind::PinReset)?,
        _ => body.signed_bytes_for(kagi_certs::application::Kind::Issue)?,
    };
    let mut ch = a.target.open(trace)?;
    jpki::select(&mut ch)?;
    verify(&mut ch, Pin::Sign, &a.pin)?;
    let certificate = jpki::read_der(&mut ch, jpki::EF_SIGN_CERT)?;
    let key = CertKey::from_certificate(&certificate)?;
    let signature = jpki::sign(&mut ch, Pin::Sign, &key.to_be_signed(&message))?;
    a.target.finish(&ch)?;
    // Checked here so a card that signs wrong is caught before anything is sent.
    key.verify(&message, &signature)?;
    let serial = kagi_certs::serial_hex(
        &<x509_cert::Certificate as der::Decode>::from_der(&certificate)
            .map_err(|e| format!("the card's signature certificate: {e}"))?,
    );
    let app = Application {
        body,
        certificate,
        signature,
    };
    std::fs::write(&a.out, app.encode()?).map_err(|e| format!("{}: {e}", a.out.display()))?;
    if json_out {
        print_json(json!({
            "file": a.out.display().to_string(),
            "iccid": a.iccid,
            "provider": a.provider,
            "contact": a.contact,
            "sign_serial": serial,
            "created_at": app.body.created_at,
            "kind": a.kind,
            "from_iccid": a.from_iccid,
            "nonce": hex::encode(app.body.nonce),
        }));
    } else {
        println!(
            "application for SIM {} at {} signed with signature certificate {serial}; written to {}",
            a.iccid,
            a.provider,
            a.out.display()
        );
    }
    Ok(())
}

/// The signature-certificate trust of the test CA directory `dir` (`kagi ca init`): its
/// sign-ca certificate, its CRL (sign-ca.crl.der) when there is one, and the serials in
/// `revoked` (one per line, decimal or 0x hex), if given.
pub fn sign_trust(dir: &Path, revoked: Option<&Path>) -> Result<kagi_certs::Trust, Failure> {
    let mut t = kagi_certs::Trust::default();
    let ca = dir.join("sign-ca.crt.der");
    t.add_ca_file(&std::fs::read(&ca).map_err(|e| format!("{}: {e}", ca.display()))?)?;
    let crl = dir.join("sign-ca.crl.der");
    if crl.exists() {
        t.add_crl_file(&std::fs::read(&crl).map_err(|e| format!("{}: {e}", crl.display()))?)?;
    }
    if let Some(r) = revoked {
        t.add_revoked_list(
            &std::fs::read_to_string(r).map_err(|e| format!("{}: {e}", r.display()))?,
        )?;
    }
    Ok(t)
}
