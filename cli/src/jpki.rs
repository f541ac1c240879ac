//! `kagi jpki …`, `kagi eligibility read` and `kagi ca …`.

use super::target::Target;
use super::{Failure, print_json};
use clap::{Args, Subcommand};
use kagi::channel::ApduChannel;
use kagi::eligibility::{self, Trust};
use kagi::jpki::{self, Pin};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use zeroize::Zeroizing;

pub mod apply;

#[derive(Subcommand)]
pub enum JpkiCmd {
    /// Token label, PIN tries and the authentication certificate's subject (no PIN needed).
    Info {
        #[command(flatten)]
        target: Target,
    },
    /// Write a certificate to a file (DER): auth, auth-ca, sign-ca, or sign (needs the
    /// signature password).
    ReadCert {
        #[command(flatten)]
        target: Target,
        /// Which certificate: auth, sign, auth-ca or sign-ca.
        #[arg(long = "cert", alias = "which", default_value = "auth")]
        which: String,
        /// Output file.
        #[arg(long, short = 'o')]
        out: PathBuf,
        #[command(flatten)]
        pin: PinSource,
    },
    /// Read My Number and the four basic facts from the text AP (its own 4-digit PIN).
    Text {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        pin: PinSource,
    },
    /// Tries left for both PINs (asked without spending one).
    PinStatus {
        #[command(flatten)]
        target: Target,
    },
    /// Check a PIN (auth or sign); reports the tries left when wrong.
    Verify {
        #[command(flatten)]
        target: Target,
        /// auth (4-digit PIN) or sign (signature password).
        #[arg(long, default_value = "auth")]
        key: String,
        #[command(flatten)]
        pin: PinSource,
    },
    /// Sign a file (SHA-256 DigestInfo) with the auth or sign key; the signature is checked
    /// against the card's certificate before it is written.
    Sign {
        #[command(flatten)]
        target: Target,
        /// auth or sign.
        #[arg(long, default_value = "auth")]
        key: String,
        /// File to sign.
        #[arg(long, short = 'i')]
        input: PathBuf,
        /// Signature output (raw, 256 bytes).
        #[arg(long, short = 'o')]
        out: PathBuf,
        #[command(flatten)]
        pin: PinSource,
    },
    /// Apply for a phone credential: sign, with the card's signature key, an application
    /// naming the SIM, the provider, the subscriber reference, a fresh nonce and the time,
    /// carrying the signature certificate (the provider checks it, `kagi tsm provider issue
    /// --application`). The signature password comes from --pin-file, --pin-env or a prompt.
    Apply(apply::ApplyArgs),
    /// Change a PIN: the current one from --pin-*, the new one from --new-pin-file,
    /// --new-pin-env or a prompt.
    ChangePin {
        #[command(flatten)]
        target: Target,
        /// auth or sign.
        #[arg(long, default_value = "auth")]
        key: String,
        #[command(flatten)]
        pin: PinSource,
        /// File holding the new PIN.
        #[arg(long)]
        new_pin_file: Option<PathBuf>,
        /// Environment variable holding the new PIN.
        #[arg(long)]
        new_pin_env: Option<String>,
    },
}

/// Where a PIN comes from: a file, an environment variable, or a prompt — never argv.
#[derive(Args, Clone)]
pub struct PinSource {
    /// File holding the PIN (first line).
    #[arg(long)]
    pin_file: Option<PathBuf>,
    /// Name of the environment variable holding the PIN.
    #[arg(long)]
    pin_env: Option<String>,
}

pub(super) fn read_pin(
    file: &Option<PathBuf>,
    env: &Option<String>,
    prompt: &str,
) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let text =
        if let Some(f) = file {
            Zeroizing::new(std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?)
        } else if let Some(v) = env {
            Zeroizing::new(
                std::env::var(v).map_err(|_| format!("environment variable {v} is not set"))?,
            )
        } else {
            Zeroizing::new(rpassword::prompt_password(prompt).map_err(|e| {
                format!("cannot prompt for the PIN: {e}; use --pin-file or --pin-env")
            })?)
        };
    Ok(Zeroizing::new(
        text.lines()
            .next()
            .unwrap_or_default()
            .trim()
            .as_bytes()
            .to_vec(),
    ))
}

impl PinSource {
    pub(super) fn read(&self, pin: Pin) -> Result<Zeroizing<Vec<u8>>, Failure> {
        let prompt = match pin {
            Pin::Auth => "User authentication PIN (4 digits): ",
            Pin::Sign => "Signature password: ",
        };
        read_pin(&self.pin_file, &self.pin_env, prompt)
    }
}

fn which_pin(key: &str) -> Result<Pin, Failure> {
    match key {
        "auth" => Ok(Pin::Auth),
        "sign" => Ok(Pin::Sign),
        other => Err(format!("--key {other}: use auth or sign").into()),
    }
}

fn verify(ch: &mut impl ApduChannel, pin: Pin, source: &PinSource) -> Result<(), Failure> {
    let value = source.read(pin)?;
    // A wrong PIN stays a typed error: `--json` reports its `tries_left`.
    Ok(jpki::verify(ch, pin, &value)?)
}

use tsm_protocol::receipt::CertKey;

/// Runs `kagi jpki …`.
pub fn run(cmd: &JpkiCmd, trace: bool, json_out: bool) -> Result<(), Failure> {
    match cmd {
        JpkiCmd::Apply(a) => apply::run(a, trace, json_out),
        JpkiCmd::Info { target } => {
            let mut ch = target.open(trace)?;
            jpki::select(&mut ch)?;
            let token = jpki::read_ef(&mut ch, jpki::EF_TOKEN_INFO)?;
            let label = String::from_utf8_lossy(token.get(..32).unwrap_or_default())
                .trim()
                .to_string();
            let auth = jpki::pin_tries(&mut ch, Pin::Auth)?;
            let sign = jpki::pin_tries(&mut ch, Pin::Sign)?;
            let cert = jpki::read_der(&mut ch, jpki::EF_AUTH_CERT)?;
            let report = eligibility::judge(&cert, &Trust::default(), SystemTime::now());
            target.finish(&ch)?;
            if json_out {
                print_json(
                    json!({"token_label": label, "auth_pin_tries": auth, "sign_pin_tries": sign,
                    "auth_certificate": {"serial": report.serial, "subject": report.subject, "issuer": report.issuer,
                    "not_before": report.not_before.map(crate::common::rfc3339),
                    "not_after": report.not_after.map(crate::common::rfc3339)}}),
                );
            } else {
                println!("Token               {label}");
                println!("Auth PIN tries      {auth}");
                println!("Sign password tries {sign}");
                println!(
                    "Auth certificate    serial {} subject {}",
                    report.serial.unwrap_or_default(),
                    report.subject.unwrap_or_default()
                );
                println!("Issuer              {}", report.issuer.unwrap_or_default());
            }
            Ok(())
        }
        JpkiCmd::ReadCert {
            target,
            which,
            out,
            pin,
        } => {
            let fid = match which.as_str() {
                "auth" => jpki::EF_AUTH_CERT,
                "auth-ca" => jpki::EF_AUTH_CA,
                "sign" => jpki::EF_SIGN_CERT,
                "sign-ca" => jpki::EF_SIGN_CA,
                other => {
                    return Err(format!("--cert {other}: use auth, auth-ca, sign, sign-ca").into());
                }
            };
            let mut ch = target.open(trace)?;
            jpki::select(&mut ch)?;
            if fid == jpki::EF_SIGN_CERT {
                verify(&mut ch, Pin::Sign, pin)?;
            }
            let der = jpki::read_der(&mut ch, fid)?;
            target.finish(&ch)?;
            std::fs::write(out, &der).map_err(|e| format!("{}: {e}", out.display()))?;
            if json_out {
                print_json(json!({
                    "which": which,
                    "file": out.display().to_string(),
                    "bytes": der.len(),
                }));
            } else {
                println!("{} bytes written to {}", der.len(), out.display());
            }
            Ok(())
        }
        JpkiCmd::Text { target, pin } => {
            let value = read_pin(&pin.pin_file, &pin.pin_env, "Text AP PIN (4 digits): ")?;
            let mut ch = target.open(trace)?;
            let facts = jpki::read_text(&mut ch, &value);
            target.finish(&ch)?;
            let facts = facts?;
            if json_out {
                print_json(serde_json::to_value(&facts)?);
            } else {
                println!("My Number   {}", facts.my_number);
                println!("Name        {}", facts.name);
                println!("Address     {}", facts.address);
                println!("Birth date  {}", facts.birth_date);
                println!("Sex         {}", facts.sex);
            }
            Ok(())
        }
        JpkiCmd::PinStatus { target } => {
            let mut ch = target.open(trace)?;
            jpki::select(&mut ch)?;
            let (a, s) = (
                jpki::pin_tries(&mut ch, Pin::Auth)?,
                jpki::pin_tries(&mut ch, Pin::Sign)?,
            );
            target.finish(&ch)?;
            if json_out {
                print_json(json!({"auth_pin_tries": a, "sign_pin_tries": s}));
            } else {
                println!(
                    "auth PIN: {a} tries left{}",
                    if a == 0 { " (blocked)" } else { "" }
                );
                println!(
                    "signature password: {s} tries left{}",
                    if s == 0 { " (blocked)" } else { "" }
                );
            }
            Ok(())
        }
        JpkiCmd::Verify { target, key, pin } => {
            let p = which_pin(key)?;
            let mut ch = target.open(trace)?;
            jpki::select(&mut ch)?;
            let r = verify(&mut ch, p, pin);
            target.finish(&ch)?;
            r?;
            if json_out {
                print_json(json!({ "pin": key, "correct": true }));
            } else {
                println!("PIN correct");
            }
            Ok(())
        }
        JpkiCmd::Sign {
            target,
            key,
            input,
            out,
            pin,
        } => {
            let p = which_pin(key)?;
            let message = std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))?;
            let mut ch = target.open(trace)?;
            jpki::select(&mut ch)?;
            verify(&mut ch, p, pin)?;
            let cert_fid = if p == Pin::Auth {
                jpki::EF_AUTH_CERT
            } else {
                jpki::EF_SIGN_CERT
            };
            let cert = jpki::read_der(&mut ch, cert_fid)?;
            // RSA keys sign a SHA-256 DigestInfo; P-256 keys (SIM profiles) the bare hash.
            let verifier = CertKey::from_certificate(&cert)?;
            let sig = jpki::sign(&mut ch, p, &verifier.to_be_signed(&message))?;
            target.finish(&ch)?;
            verifier.verify(&message, &sig)?;
            std::fs::write(out, &sig).map_err(|e| format!("{}: {e}", out.display()))?;
            if json_out {
                print_json(json!({
                    "key": key,
                    "file": out.display().to_string(),
                    "signature_bytes": sig.len(),
                    "verified": true,
                }));
            } else {
                println!(
                    "signature verified against the card's certificate; written to {}",
                    out.display()
                );
            }
            Ok(())
        }
        JpkiCmd::ChangePin {
            target,
            key,
            pin,
            new_pin_file,
            new_pin_env,
        } => {
            let p = which_pin(key)?;
            let new = read_pin(new_pin_file, new_pin_env, "New PIN: ")?;
            if !p.format_ok(&new) {
                return Err("the new PIN has the wrong format (auth: 4 digits; sign: 6-16 upper-case letters and digits)".into());
            }
            let mut ch = target.open(trace)?;
            jpki::select(&mut ch)?;
            verify(&mut ch, p, pin)?;
            jpki::select_ef(&mut ch, p.fid())?;
            let cmd = card_wire::apdu::Command::new(0x00, 0x24, 0x01, 0x80)
                .with_data(new.to_vec())?
                .sensitive();
            kagi::error::expect_success("CHANGE REFERENCE DATA", ch.transmit(&cmd)?)?;
            target.finish(&ch)?;
            if json_out {
                print_json(json!({ "pin": key, "changed": true }));
            } else {
                println!("PIN changed");
            }
            Ok(())
        }
    }
}

/// `kagi eligibility read`.
#[derive(Args)]
pub struct EligibilityArgs {
    #[command(flatten)]
    target: Target,
    /// Trusted CA certificate (DER or PEM); repeat for several.
    #[arg(long = "ca", required = true)]
    cas: Vec<PathBuf>,
    /// CRL of a trusted CA (DER or PEM; e.g. the JPKI issuer's CRL of phone certificates,
    /// `kagi jpki-issuer crl`); repeat for several. One no --ca signed is refused (exit 1).
    #[arg(long = "crl")]
    crls: Vec<PathBuf>,
    /// Revocation list file (one serial per line, decimal or 0x-hex).
    #[arg(long)]
    revoked: Option<PathBuf>,
    /// Judge at this time (seconds since the Unix epoch) instead of now.
    #[arg(long)]
    at_unix: Option<u64>,
}

fn read_file(p: &Path) -> Result<Vec<u8>, Failure> {
    Ok(std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?)
}

/// Runs `kagi eligibility read`.
pub fn eligibility_read(
    args: &EligibilityArgs,
    trace: bool,
    json_out: bool,
) -> Result<(), Failure> {
    let mut trust = Trust::default();
    for c in &args.cas {
        trust.add_ca_file(&read_file(c)?)?;
    }
    for c in &args.crls {
        trust.add_crl_file(&read_file(c)?)?;
        trust
            .check_crls()
            .map_err(|e| format!("{}: {e}", c.display()))?;
    }
    if let Some(r) = &args.revoked {
        trust.add_revoked_list(&String::from_utf8_lossy(&read_file(r)?))?;
    }
    let mut ch = args.target.open(trace)?;
    let when = match args.at_unix {
        Some(t) => SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t),
        None => SystemTime::now(),
    };
    let report = eligibility::read(&mut ch, &trust, when)?;
    args.target.finish(&ch)?;
    if json_out {
        let mut doc = serde_json::to_value(&report)?;
        crate::common::times_rfc3339(&mut doc, &["not_before", "not_after"]);
        print_json(doc);
    } else {
        let verdict = serde_json::to_value(report.verdict)?;
        println!("{}", verdict.as_str().unwrap_or_default());
        for r in &report.reasons {
            println!("  - {r}");
        }
        if let Some(s) = &report.serial {
            println!(
                "  serial {s}, subject {}",
                report.subject.as_deref().unwrap_or_default()
            );
        }
        println!(
            "  {} commands, {:.1} ms at the card",
            report.commands,
            report.card_micros as f64 / 1000.0
        );
    }
    if report.verdict == eligibility::Verdict::Eligible {
        return Ok(());
    }
    let verdict = serde_json::to_value(report.verdict)?;
    Err(Box::new(super::exit::Finished::new(
        super::exit::Exit::NotEligible,
        format!("not eligible: {}", verdict.as_str().unwrap_or_default()),
    )))
}

#[derive(Subcommand)]
pub enum CaCmd {
    /// Create the test CAs (auth-ca, sign-ca) in DIR, or show the existing ones.
    Init {
        /// Directory of the CA files.
        #[arg(long = "ca-dir", alias = "dir")]
        dir: PathBuf,
    },
    /// Issue a synthetic certificate for a public key (PKCS#1 or SubjectPublicKeyInfo, DER or
    /// PEM — e.g. the key a card generated) or for a PKCS#10 request (its signature checked):
    /// auth (opaque subject) or sign (synthetic facts).
    Issue {
        /// Directory of the CA files.
        #[arg(long = "ca-dir", alias = "dir")]
        dir: PathBuf,
        /// auth or sign.
        #[arg(long, default_value = "auth")]
        kind: String,
        /// The subject's public key file.
        #[arg(long, required_unless_present = "csr", conflicts_with = "csr")]
        public_key: Option<PathBuf>,
        /// A certification request (PEM or DER) instead of a bare public key.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Opaque identifier for the auth certificate's CN.
        #[arg(long, default_value = "KAGITEST0000000001")]
        id: String,
        /// Serial number in hex, as kagi prints it (default: random).
        #[arg(long)]
        serial: Option<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Output certificate (DER).
        #[arg(long, short = 'o')]
        out: PathBuf,
    },
    /// Play the external CA of a personalisation batch (`ca = "external"`): issue, with the
    /// test CAs in DIR, a certificate for every request in EXCHANGE/requests
    /// (ID.auth.csr.pem, ID.sign.csr.pem) that has none in EXCHANGE/issued yet. Each request's
    /// signature is checked first (proof that the card holds the key); certificates are
    /// written atomically.
    Exchange {
        /// Directory of the CA files.
        #[arg(long = "ca-dir", alias = "dir")]
        dir: PathBuf,
        /// The batch's exchange directory (the profile's exchange_dir).
        #[arg(long)]
        exchange: PathBuf,
        /// Keep answering new requests until interrupted (checks every 100 ms).
        #[arg(long)]
        watch: bool,
        /// Validity in days.
        #[arg(long, default_value_t = 365 * 5)]
        days: u64,
    },
    /// Revoke a certificate serial and write the CA's CRL (auth-ca.crl.der or
    /// sign-ca.crl.der).
    Revoke {
        /// Directory of the CA files.
        #[arg(long = "ca-dir", alias = "dir")]
        dir: PathBuf,
        /// auth (an authentication certificate) or sign (a signature certificate).
        #[arg(long, default_value = "auth")]
        kind: String,
        /// Serial number in hex, as `kagi jpki info` and `kagi ca issue` print it (`0x` and
        /// colons allowed).
        serial: String,
    },
}

/// A certificate serial as kagi prints it: hex (`455524E9`), with an optional `0x` and colons.
pub fn parse_serial(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t)
        .replace(':', "");
    if t.is_empty() || t.len() > 8 {
        return Err(format!(
            "'{s}' is not a serial number: give the hex kagi prints (up to 8 digits, e.g. 455524E9)"
        ));
    }
    u32::from_str_radix(&t, 16).map_err(|_| {
        format!("'{s}' is not a serial number: give the hex kagi prints (e.g. 455524E9)")
    })
}

/// Runs `kagi ca …`.
pub fn ca(cmd: &CaCmd, json_out: bool) -> Result<(), Failure> {
    match cmd {
        CaCmd::Init { dir } => {
            let (auth, sign) = cas(dir)?;
            test_pki::store::write_crl(&auth, dir, "auth-ca")?;
            let mut list = Vec::new();
            for (n, ca) in [("auth-ca", &auth), ("sign-ca", &sign)] {
                let subject = ca.certificate().tbs_certificate().subject().to_string();
                let file = format!("{}/{n}.crt.pem", dir.display());
                if !json_out {
                    println!("{n}: {subject} ({file})");
                }
                list.push(json!({ "name": n, "subject": subject, "certificate": file }));
            }
            if json_out {
                print_json(json!({ "cas": list }));
            }
            Ok(())
        }
        CaCmd::Issue {
            dir,
            kind,
            public_key,
            csr,
            id,
            serial,
            days,
            out,
        } => {
            use der::Encode;
            use rsa::pkcs1::DecodeRsaPublicKey;
            use rsa::pkcs8::DecodePublicKey;
            let (path, der) = match (csr, public_key) {
                (Some(p), _) => {
                    let req = kagi_perso::pki::verify_csr(&kagi_perso::pki::pem_or_der(
                        &read_file(p)?,
                        kagi_perso::pki::CSR_LABEL,
                    )?)
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                    (p, req.info.public_key.to_der()?)
                }
                (None, Some(p)) => {
                    let bytes = read_file(p)?;
                    let der = if bytes.starts_with(b"-----BEGIN") {
                        der::pem::decode_vec(&bytes)
                            .map_err(|e| format!("{}: {e}", p.display()))?
                            .1
                    } else {
                        bytes
                    };
                    (p, der)
                }
                (None, None) => return Err("give --public-key or --csr".into()),
            };
            let key = rsa::PublicKey::from_pkcs1_der(&der)
                .or_else(|_| rsa::PublicKey::from_public_key_der(&der))
                .map_err(|_| {
                    format!(
                        "{}: not an RSA public key (PKCS#1 or SubjectPublicKeyInfo)",
                        path.display()
                    )
                })?;
            let serial = match serial {
                Some(s) => parse_serial(s)?,
                None => random_serial()?,
            };
            let now = SystemTime::now();
            let until = now + std::time::Duration::from_secs(days * 86400);
            let (auth, sign) = cas(dir)?;
            let cert = match kind.as_str() {
                "auth" => auth.issue_auth(&key, id, serial, now, until)?,
                "sign" => {
                    sign.issue_sign(&key, &test_pki::BasicFacts::synthetic(), serial, now, until)?
                }
                other => return Err(format!("--kind {other}: use auth or sign").into()),
            };
            std::fs::write(out, cert.to_der()?).map_err(|e| format!("{}: {e}", out.display()))?;
            if json_out {
                print_json(json!({
                    "kind": kind,
                    "serial": format!("{serial:08X}"),
                    "certificate": out.display().to_string(),
                }));
            } else {
                println!(
                    "issued {kind} certificate serial {serial:08X} to {}",
                    out.display()
                );
            }
            Ok(())
        }
        CaCmd::Exchange {
            dir,
            exchange,
            watch,
            days,
        } => {
            let (auth, sign) = cas(dir)?;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            if *watch {
                let s = stop.clone();
                ctrlc::set_handler(move || s.store(true, std::sync::atomic::Ordering::SeqCst))
                    .map_err(|e| e.to_string())?;
            }
            let mut total = 0;
            loop {
                let n = answer_requests(&auth, &sign, exchange, *days)?;
                total += n;
                if !*watch || stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            if json_out {
                print_json(json!({
                    "issued": total,
                    "dir": exchange.join("issued").display().to_string(),
                }));
            } else {
                println!(
                    "issued {total} certificate(s) into {}",
                    exchange.join("issued").display()
                );
            }
            Ok(())
        }
        CaCmd::Revoke { dir, kind, serial } => {
            let n = parse_serial(serial)?;
            let (auth, sign) = cas(dir)?;
            let (ca, name) = match kind.as_str() {
                "auth" => (&auth, "auth-ca"),
                "sign" => (&sign, "sign-ca"),
                other => return Err(format!("--kind {other}: use auth or sign").into()),
            };
            let crl = test_pki::store::revoke(ca, dir, name, n)?;
            if json_out {
                print_json(json!({
                    "revoked": format!("{n:08X}"),
                    "crl": crl.display().to_string(),
                }));
            } else {
                println!("revoked {n:08X}; CRL written to {}", crl.display());
            }
            Ok(())
        }
    }
}

/// A random positive serial number.
fn random_serial() -> Result<u32, Failure> {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| e.to_string())?;
    Ok(u32::from_be_bytes(b) & 0x7FFF_FFFF | 1)
}

/// Issues a certificate for each request in `exchange/requests` without one in
/// `exchange/issued`; returns how many.
fn answer_requests(
    auth: &test_pki::TestCa,
    sign: &test_pki::TestCa,
    exchange: &Path,
    days: u64,
) -> Result<usize, Failure> {
    use der::Encode;
    use rsa::pkcs8::DecodePublicKey;
    let (requests, issued) = (exchange.join("requests"), exchange.join("issued"));
    // Both folders are made here: the CA may start watching before the first station writes.
    for d in [&requests, &issued] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let entries =
        std::fs::read_dir(&requests).map_err(|e| format!("{}: {e}", requests.display()))?;
    let mut n = 0;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(stem) = name.strip_suffix(".csr.pem") else {
            continue;
        };
        let Some((id, kind)) = stem.rsplit_once('.') else {
            continue;
        };
        let out = issued.join(format!("{id}.{kind}.crt.pem"));
        if out.exists() || name.starts_with('.') {
            continue;
        }
        let csr = match kagi_perso::pki::pem_or_der(&read_file(&path)?, kagi_perso::pki::CSR_LABEL)
            .and_then(|der| kagi_perso::pki::verify_csr(&der))
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{}: refused: {e}", path.display());
                continue;
            }
        };
        let spki = csr.info.public_key.to_der()?;
        let key = rsa::PublicKey::from_public_key_der(&spki)
            .map_err(|e| format!("{}: not an RSA key: {e}", path.display()))?;
        // The opaque id the batch put in the request's subject.
        let cn = match csr.info.subject.common_name() {
            Ok(Some(cn)) => cn.value().into_owned(),
            _ => id.to_ascii_uppercase(),
        };
        let now = SystemTime::now();
        let until = now + std::time::Duration::from_secs(days * 86400);
        let cert = match kind {
            "auth" => auth.issue_auth(&key, &cn, random_serial()?, now, until)?,
            "sign" => sign.issue_sign(
                &key,
                &test_pki::BasicFacts::synthetic(),
                random_serial()?,
                now,
                until,
            )?,
            other => {
                eprintln!("{}: refused: unknown key kind '{other}'", path.display());
                continue;
            }
        };
        let pem = kagi_perso::pki::to_pem(&cert.to_der()?, "CERTIFICATE")?;
        let tmp = issued.join(format!(".{id}.{kind}.tmp"));
        std::fs::write(&tmp, pem).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &out).map_err(|e| format!("{}: {e}", out.display()))?;
        eprintln!("issued {} for {id} ({kind})", out.display());
        n += 1;
    }
    Ok(n)
}

/// The two test CAs kept in `dir` (created when missing).
pub fn cas(dir: &Path) -> Result<(test_pki::TestCa, test_pki::TestCa), Failure> {
    Ok((
        test_pki::store::load_or_create(dir, "auth-ca", "JPKI for user authentication")?,
        test_pki::store::load_or_create(dir, "sign-ca", "JPKI for digital signature")?,
    ))
}
