//! A card's JPKI credential: keys generated on the card, certificates requested and installed, the text AP, PINs to the mailer.

use super::*;
use crate::error::{Error, Result};
use crate::records::Record;
use card_wire::gp::blocks;
use card_wire::transport::Transport;
use kagi::channel::CardChannel;
use kagi::gp::manage;
use kagi::secure::SecureChannel;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a JPKI issuance checks afterwards: the certificate written and, while this process
/// still holds it, the PIN to sign with.
pub(super) struct Issued {
    pub(super) auth_cert: Vec<u8>,
    pub(super) auth_pin: Option<zeroize::Zeroizing<String>>,
}

/// An item of a JPKI personalisation script: `TAG { FID ‖ body }`.
pub(super) fn jpki_item(tag: u32, fid: u16, body: &[u8]) -> Vec<u8> {
    card_wire::tlv::tlv(tag, &[&fid.to_be_bytes()[..], body].concat())
}

/// The public keys the card answered an on-card key generation with (authentication, then
/// signature).
pub(super) fn card_public_keys(out: &[u8]) -> Result<[rsa::PublicKey; 2]> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    let publics: Vec<rsa::PublicKey> = card_wire::tlv::parse_all(out)?
        .iter()
        .map(|t| {
            rsa::PublicKey::from_pkcs1_der(t.value)
                .map_err(|e| Error::Certificate(format!("card public key: {e}")))
        })
        .collect::<Result<_>>()?;
    <[rsa::PublicKey; 2]>::try_from(publics)
        .map_err(|_| Error::Certificate("the card did not return two public keys".into()))
}

/// The certificates, their CAs' certificates, token info and certificate availability.
pub(super) fn certificate_script(
    auth: &[u8],
    auth_ca: &[u8],
    sign: &[u8],
    sign_ca: &[u8],
) -> Vec<u8> {
    let mut script = jpki_item(0xC1, 0x000A, auth);
    script.extend(jpki_item(0xC1, 0x000B, auth_ca));
    script.extend(jpki_item(0xC1, 0x0001, sign));
    script.extend(jpki_item(0xC1, 0x0002, sign_ca));
    script.extend(jpki_item(0xC1, 0x0006, &kagi::jpki::token_info()));
    script.extend(jpki_item(0xC1, 0x0008, &[0x8F, 0x8F, 0x00]));
    script
}

/// The record's four basic facts, or synthetic ones when the record lacks them.
pub(super) fn basic_facts(record: &Record) -> BasicFacts {
    let f = |k: &str| record.fields.get(k).cloned();
    match (f("name"), f("address"), f("birth_date"), f("sex")) {
        (Some(name), Some(address), Some(birth_date), Some(sex)) => BasicFacts {
            name,
            address,
            birth_date,
            sex,
        },
        _ => BasicFacts {
            name: "試験 太郎 (TEST ONLY)".into(),
            sex: "9".into(),
            birth_date: "20000101".into(),
            address: "テスト県テスト市1-1 (TEST ONLY)".into(),
        },
    }
}

/// The four basic facts (基本4情報) of a record: name, address, date of birth, sex.
pub(super) struct BasicFacts {
    pub(super) name: String,
    pub(super) address: String,
    pub(super) birth_date: String,
    pub(super) sex: String,
}

#[cfg(feature = "dev-ca")]
impl From<BasicFacts> for test_pki::BasicFacts {
    fn from(f: BasicFacts) -> Self {
        test_pki::BasicFacts {
            name: f.name,
            address: f.address,
            birth_date: f.birth_date,
            sex: f.sex,
        }
    }
}

/// The PINs a JPKI card gets: the authentication PIN, the signature password and (with a
/// text AP) the text AP's PIN, generated here and written only to the card and the mailer.
pub(super) struct Pins {
    pub(super) auth: zeroize::Zeroizing<String>,
    pub(super) sign: zeroize::Zeroizing<String>,
    pub(super) text: zeroize::Zeroizing<String>,
}

impl Pins {
    pub(super) fn generate() -> Result<Pins> {
        Ok(Pins {
            auth: random_pin(false)?,
            sign: random_pin(true)?,
            text: random_pin(false)?,
        })
    }

    /// The JPKI AP's PIN items.
    pub(super) fn script(&self) -> Vec<u8> {
        let mut script = jpki_item(0xC3, 0x0018, self.auth.as_bytes());
        script.extend(jpki_item(0xC3, 0x001B, self.sign.as_bytes()));
        script
    }
}

/// The text AP (when the profile has one) gets the record's My Number and facts and its PIN;
/// then every PIN goes to the mailer.
pub(super) fn text_ap_and_mail<T: Transport>(
    sc: &mut SecureChannel<'_, T>,
    j: &crate::profile::Jpki,
    issuer: &Issuer,
    record: &Record,
    pins: &Pins,
) -> Result<()> {
    let mut mailed = vec![("auth_pin", &pins.auth), ("sign_pin", &pins.sign)];
    if let Some(text) = &j.text_instance {
        let my_number = record.fields.get("my_number").cloned().unwrap_or_default();
        let facts = basic_facts(record);
        let (number, facts_ef) = kagi::jpki::text_efs(&kagi::jpki::TextFacts {
            my_number,
            name: facts.name,
            address: facts.address,
            birth_date: facts.birth_date,
            sex: facts.sex,
        });
        let mut t = zeroize::Zeroizing::new(jpki_item(0xC1, 0x0001, &number));
        t.extend(jpki_item(0xC1, 0x0002, &facts_ef));
        t.extend(jpki_item(0xC3, 0x0011, pins.text.as_bytes()));
        manage::personalize(sc, text, &blocks(&t), true)?;
        mailed.push(("text_pin", &pins.text));
    }
    issuer.mail(&record.id, &mailed)
}

/// The opaque id in a user-authentication certificate's subject.
pub(super) fn opaque_id(record: &Record) -> String {
    format!("KAGI{}", record.id.to_ascii_uppercase())
}

/// With the test CA: keys generated on the card, certificates issued in process, PINs
/// generated and mailed, all in one step.
#[cfg(feature = "dev-ca")]
pub(super) fn issue_jpki<T: Transport>(
    sc: &mut SecureChannel<'_, T>,
    j: &crate::profile::Jpki,
    issuer: &Issuer,
    record: &Record,
) -> Result<Issued> {
    use der::Encode;
    let Authority::Test { auth_ca, sign_ca } = &issuer.authority else {
        return Err(Error::Certificate(
            "in-process issuance needs the test CA".into(),
        ));
    };
    // 1. Keys generated on the card: only the public keys come out.
    let mut gen_script = jpki_item(0xC4, 0x0017, &[]);
    gen_script.extend(jpki_item(0xC4, 0x001A, &[]));
    let out = manage::personalize(sc, &j.instance, &blocks(&gen_script), false)?;
    let [auth_pub, sign_pub] = card_public_keys(&out)?;
    // 2. Certificates from the CA.
    let pki = |e: test_pki::PkiError| Error::Certificate(format!("CA: {e}"));
    let der_err = |e: der::Error| Error::Certificate(e.to_string());
    let mut serial = [0u8; 4];
    getrandom::fill(&mut serial)?;
    let serial = u32::from_be_bytes(serial) & 0x7FFF_FFFF | 0x0100_0000;
    let now = std::time::SystemTime::now();
    let until = now + std::time::Duration::from_secs(5 * 365 * 86400);
    let auth_cert = auth_ca
        .issue_auth(&auth_pub, &opaque_id(record), serial, now, until)
        .map_err(pki)?
        .to_der()
        .map_err(der_err)?;
    let sign_cert = sign_ca
        .issue_sign(
            &sign_pub,
            &basic_facts(record).into(),
            serial + 1,
            now,
            until,
        )
        .map_err(pki)?
        .to_der()
        .map_err(der_err)?;
    // 3. Certificates and PINs onto the card; the PINs go nowhere else but the mailer.
    let pins = Pins::generate()?;
    let mut script = zeroize::Zeroizing::new(certificate_script(
        &auth_cert,
        &auth_ca.certificate_der().map_err(pki)?,
        &sign_cert,
        &sign_ca.certificate_der().map_err(pki)?,
    ));
    script.extend(pins.script());
    manage::personalize(sc, &j.instance, &blocks(&script), true)?;
    text_ap_and_mail(sc, j, issuer, record, &pins)?;
    Ok(Issued {
        auth_cert,
        auth_pin: Some(pins.auth.clone()),
    })
}

/// Where the exchange keeps a record's request or certificate for `key` (`auth`, `sign`).
pub(super) fn exchange_file(dir: &Path, record: &Record, key: &str, ext: &str) -> PathBuf {
    dir.join(format!("{}.{key}.{ext}", record.id))
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one: a temporary
/// file, synced, renamed over, and the directory synced.
pub(super) fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |source: std::io::Error| Error::File {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

/// With an external CA, the first half: keys generated on the card and PINs set (one
/// transaction), the PINs mailed, then one PKCS#10 request per key, signed on the card after
/// its PIN (proof of possession), written to the exchange. Returns the authentication PIN for
/// the check after issuance in this run.
pub(super) fn request_certificates<T: Transport>(
    sh: &Shared<'_>,
    ch: &mut CardChannel<T>,
    j: &crate::profile::Jpki,
    issuer: &Issuer,
    record: &Record,
) -> Result<zeroize::Zeroizing<String>> {
    use rsa::pkcs8::EncodePublicKey;
    use std::str::FromStr;
    // One variant without the `dev-ca` feature.
    #[allow(irrefutable_let_patterns)]
    let Authority::External { requests, .. } = &issuer.authority else {
        return Err(Error::Certificate(
            "certification requests are for an external CA".into(),
        ));
    };
    let pins = Pins::generate()?;
    let keys = {
        let mut sc = transport_session(ch, sh.keys, sh.profile, None)?;
        let mut script = zeroize::Zeroizing::new(jpki_item(0xC4, 0x0017, &[]));
        script.extend(jpki_item(0xC4, 0x001A, &[]));
        script.extend(pins.script());
        let out = manage::personalize(&mut sc, &j.instance, &blocks(&script), true)?;
        let keys = card_public_keys(&out)?;
        text_ap_and_mail(&mut sc, j, issuer, record, &pins)?;
        keys
    };
    let subject = x509_cert::name::Name::from_str(&format!("CN={},C=JP", opaque_id(record)))
        .map_err(|e| Error::Certificate(format!("request subject: {e}")))?;
    kagi::jpki::select(ch)?;
    for (key, which, pin) in [
        (&keys[0], kagi::jpki::Pin::Auth, &pins.auth),
        (&keys[1], kagi::jpki::Pin::Sign, &pins.sign),
    ] {
        let spki = key
            .to_public_key_der()
            .map_err(|e| Error::Certificate(format!("card public key: {e}")))?;
        kagi::jpki::verify(ch, which, &zeroize::Zeroizing::new(pin.as_bytes().to_vec()))?;
        let csr = crate::pki::build_csr(&subject, spki.as_bytes(), |tbs| {
            kagi::jpki::sign(ch, which, &kagi::jpki::sha256_digest_info(tbs)).map_err(Error::from)
        })?;
        let name = if which == kagi::jpki::Pin::Auth {
            "auth"
        } else {
            "sign"
        };
        let pem = crate::pki::to_pem(&csr, crate::pki::CSR_LABEL)?;
        write_durable(
            &exchange_file(requests, record, name, "csr.pem"),
            pem.as_bytes(),
        )?;
    }
    // Leave the PIN state cleared.
    kagi::jpki::select(ch)?;
    Ok(pins.auth.clone())
}

/// Reads a certificate file (PEM or DER).
pub(super) fn read_certificate(path: &Path) -> Result<(Vec<u8>, x509_cert::Certificate)> {
    use der::Decode;
    let bad = |m: String| Error::Certificate(format!("{}: {m}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let der = crate::pki::pem_or_der(&bytes, "CERTIFICATE")?;
    let cert = x509_cert::Certificate::from_der(&der).map_err(|e| bad(e.to_string()))?;
    Ok((der, cert))
}

/// Checks an issued certificate against the request: the same public key (the card's),
/// issued by the profile's CA, valid now.
pub(super) fn check_issued(
    cert_path: &Path,
    cert: &x509_cert::Certificate,
    csr_path: &Path,
    ca: &x509_cert::Certificate,
) -> Result<()> {
    let bad = |m: String| Error::Certificate(format!("{}: {m}", cert_path.display()));
    let csr_bytes =
        std::fs::read(csr_path).map_err(|e| bad(format!("{}: {e}", csr_path.display())))?;
    let csr = crate::pki::verify_csr(&crate::pki::pem_or_der(&csr_bytes, crate::pki::CSR_LABEL)?)?;
    let tbs = cert.tbs_certificate();
    if tbs.subject_public_key_info() != &csr.info.public_key {
        return Err(bad(
            "the CA certified another public key than the card's request".into(),
        ));
    }
    if !crate::pki::certificate_issued_by(ca, cert) {
        return Err(bad(format!(
            "not issued by the profile's CA {}",
            ca.tbs_certificate().subject()
        )));
    }
    let now = std::time::SystemTime::now();
    let v = tbs.validity();
    if now < v.not_before.to_system_time() || now > v.not_after.to_system_time() {
        return Err(bad("not valid now".into()));
    }
    Ok(())
}

/// With an external CA, the second half: waits for both certificates in the exchange, checks
/// them, and writes them with the CA certificates to the card. On timeout the card stays in
/// progress ([`Error::AwaitingCa`]).
pub(super) fn install_certificates<T: Transport>(
    sc: &mut SecureChannel<'_, T>,
    j: &crate::profile::Jpki,
    issuer: &Issuer,
    record: &Record,
) -> Result<Vec<u8>> {
    use der::Encode;
    // One variant without the `dev-ca` feature.
    #[allow(irrefutable_let_patterns)]
    let Authority::External {
        auth_ca,
        sign_ca,
        requests,
        issued,
        timeout,
    } = &issuer.authority
    else {
        return Err(Error::Certificate(
            "certificates from the exchange are for an external CA".into(),
        ));
    };
    let files = ["auth", "sign"].map(|k| exchange_file(issued, record, k, "crt.pem"));
    let start = Instant::now();
    // A file that does not parse yet may be half written by a CA that does not rename into
    // place: it gets until the timeout.
    let [auth, sign] = loop {
        let read: Result<Vec<_>> = files.iter().map(|f| read_certificate(f)).collect();
        match read {
            Ok(certs) => match <[_; 2]>::try_from(certs) {
                Ok(pair) => break pair,
                Err(_) => return Err(Error::Certificate("two certificates expected".into())),
            },
            Err(e) if start.elapsed() >= *timeout => {
                if files.iter().all(|f| f.exists()) {
                    return Err(e);
                }
                return Err(Error::AwaitingCa(format!(
                    "no certificates for {} in {} after {} s (requests in {}); `kagi perso resume` continues the card",
                    record.id,
                    issued.display(),
                    timeout.as_secs(),
                    requests.display()
                )));
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    };
    for ((path, (_, cert)), (key, ca)) in files
        .iter()
        .zip([&auth, &sign])
        .zip([("auth", auth_ca), ("sign", sign_ca)])
    {
        check_issued(
            path,
            cert,
            &exchange_file(requests, record, key, "csr.pem"),
            ca,
        )?;
    }
    let (auth, sign) = (auth.0, sign.0);
    let der_err = |e: der::Error| Error::Certificate(e.to_string());
    let script = certificate_script(
        &auth,
        &auth_ca.to_der().map_err(der_err)?,
        &sign,
        &sign_ca.to_der().map_err(der_err)?,
    );
    manage::personalize(sc, &j.instance, &blocks(&script), false)?;
    Ok(auth)
}
