//! # test-pki
//!
//! A test certification authority for kagi's JPKI-style cards: it issues **synthetic**
//! certificates shaped like JPKI's (`research/jpki-interface.md` §9), never with real personal
//! data:
//!
//! - user-authentication certificates with an opaque subject (`C=JP, CN=<opaque id>`), the JPKI
//!   auth policy OID `1.2.392.200149.8.5.1.3.30` and a critical digitalSignature key usage;
//! - signature certificates carrying the four basic facts (name, sex, birth date, address) as
//!   subjectAltName otherNames under `1.2.392.200149.8.5.5.{1,3,4,5}` and the sign policy
//!   `1.2.392.200149.8.5.1.1.20`;
//! - CRLs.
//!
//! The CA keys are RSA-2048 with SHA-256 PKCS#1 v1.5 signatures; subject keys are RSA-2048 or
//! anything with a SubjectPublicKeyInfo (P-256 for SIM profiles). Every certificate DER starts
//! with `30 82` as JPKI clients (OpenSC) expect.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use der::asn1::{Any, OctetString, Utf8StringRef};
use der::{Decode, Encode};
use rsa::PrivateKey;
use rsa::pkcs1v15::{Signature, SigningKey};
use sha2::Sha256;
use std::str::FromStr;
use std::time::{Duration, SystemTime};
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder, CrlBuilder};
use x509_cert::crl::{CertificateList, RevokedCert};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::certpolicy::PolicyInformation;
use x509_cert::ext::pkix::name::{GeneralName, OtherName};
use x509_cert::ext::pkix::{
    BasicConstraints, CertificatePolicies, CrlNumber, KeyUsage, KeyUsages, SubjectAltName,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{ObjectIdentifier, SubjectPublicKeyInfo, SubjectPublicKeyInfoRef};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate};

/// JPKI user-authentication policy ("auth-class30").
pub const OID_AUTH_POLICY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.392.200149.8.5.1.3.30");
/// JPKI signature policy ("sign-class20").
pub const OID_SIGN_POLICY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.392.200149.8.5.1.1.20");
/// subjectAltName otherName: name.
pub const OID_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.392.200149.8.5.5.1");
/// subjectAltName otherName: sex.
pub const OID_SEX: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.392.200149.8.5.5.3");
/// subjectAltName otherName: date of birth.
pub const OID_BIRTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.392.200149.8.5.5.4");
/// subjectAltName otherName: address.
pub const OID_ADDRESS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.392.200149.8.5.5.5");

const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const OID_CERT_POLICIES: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.32");
const OID_SAN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");

/// What went wrong while issuing.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Key generation or an RSA operation failed.
    #[error("RSA: {0}")]
    Rsa(String),
    /// Encoding failed (names, times, extensions).
    #[error("encoding: {0}")]
    Der(#[from] der::Error),
    /// The certificate builder failed.
    #[error("certificate builder: {0}")]
    Builder(String),
    /// A key or certificate could not be read.
    #[error("{0}")]
    Parse(String),
}

type Result<T> = std::result::Result<T, PkiError>;

pub mod tls;

/// A new RSA-2048 key from the operating system's generator.
pub fn generate_rsa_key() -> Result<PrivateKey> {
    PrivateKey::new(&mut getrandom::SysRng, 2048).map_err(|e| PkiError::Rsa(e.to_string()))
}

/// The four basic facts of the signature certificate. Test data only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicFacts {
    /// Name.
    pub name: String,
    /// Sex (`1` male, `2` female, `9` not applicable).
    pub sex: String,
    /// Date of birth, `YYYYMMDD`.
    pub birth_date: String,
    /// Address.
    pub address: String,
}

impl BasicFacts {
    /// Obviously synthetic facts.
    pub fn synthetic() -> Self {
        BasicFacts {
            name: "試験 太郎 (TEST ONLY)".into(),
            sex: "9".into(),
            birth_date: "20000101".into(),
            address: "テスト県テスト市1-1 (TEST ONLY)".into(),
        }
    }
}

struct Profile {
    issuer: Name,
    subject: Name,
    extensions: Vec<Extension>,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }
    fn get_subject(&self) -> Name {
        self.subject.clone()
    }
    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        _tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(self.extensions.clone())
    }
}

fn ext(oid: ObjectIdentifier, critical: bool, value: &impl Encode) -> Result<Extension> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

fn validity(not_before: SystemTime, not_after: SystemTime) -> Result<Validity> {
    Ok(Validity::new(
        Time::try_from(not_before)?,
        Time::try_from(not_after)?,
    ))
}

fn spki(
    key: &impl spki::EncodePublicKey,
) -> Result<SubjectPublicKeyInfo<Any, der::asn1::BitString>> {
    SubjectPublicKeyInfo::from_key(key).map_err(|e| PkiError::Parse(e.to_string()))
}

/// A test certification authority.
pub struct TestCa {
    key: PrivateKey,
    cert: Certificate,
}

impl TestCa {
    /// A new self-signed CA (`C=JP, O=JPKI-TEST (kagi), OU=<unit>`), valid ten years.
    pub fn new(unit: &str) -> Result<TestCa> {
        Self::with_key(generate_rsa_key()?, unit)
    }

    /// A CA with a given key.
    pub fn with_key(key: PrivateKey, unit: &str) -> Result<TestCa> {
        let name = Name::from_str(&format!("OU={unit},O=JPKI-TEST (kagi),C=JP"))?;
        let now = SystemTime::now();
        let profile = Profile {
            issuer: name.clone(),
            subject: name,
            extensions: vec![
                ext(
                    OID_BASIC_CONSTRAINTS,
                    true,
                    &BasicConstraints {
                        ca: true,
                        path_len_constraint: None,
                    },
                )?,
                ext(
                    OID_KEY_USAGE,
                    true,
                    &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign),
                )?,
            ],
        };
        let cert = Self::sign(
            &key,
            profile,
            SerialNumber::from(1u32),
            validity(now, now + Duration::from_secs(3650 * 86400))?,
            &key.to_public_key(),
        )?;
        Ok(TestCa { key, cert })
    }

    fn sign(
        key: &PrivateKey,
        profile: Profile,
        serial: SerialNumber,
        validity: Validity,
        subject_key: &impl spki::EncodePublicKey,
    ) -> Result<Certificate> {
        let signer = SigningKey::<Sha256>::new(key.clone());
        let builder = CertificateBuilder::new(profile, serial, validity, spki(subject_key)?)
            .map_err(|e| PkiError::Builder(e.to_string()))?;
        builder
            .build::<_, Signature>(&signer)
            .map_err(|e| PkiError::Builder(e.to_string()))
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// The CA certificate, DER.
    pub fn certificate_der(&self) -> Result<Vec<u8>> {
        Ok(self.cert.to_der()?)
    }

    /// Issues a user-authentication certificate: subject `C=JP, CN=<opaque id>`.
    pub fn issue_auth(
        &self,
        key: &impl spki::EncodePublicKey,
        opaque_id: &str,
        serial: u32,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Certificate> {
        let profile = Profile {
            issuer: self.cert.tbs_certificate().subject().clone(),
            subject: Name::from_str(&format!("CN={opaque_id},C=JP"))?,
            extensions: vec![
                ext(
                    OID_KEY_USAGE,
                    true,
                    &KeyUsage(KeyUsages::DigitalSignature.into()),
                )?,
                ext(
                    OID_CERT_POLICIES,
                    false,
                    &CertificatePolicies(vec![PolicyInformation {
                        policy_identifier: OID_AUTH_POLICY,
                        policy_qualifiers: None,
                    }]),
                )?,
            ],
        };
        Self::sign(
            &self.key,
            profile,
            SerialNumber::from(serial),
            validity(not_before, not_after)?,
            key,
        )
    }

    /// As a card manufacturer's CA: certifies a card's key agreement key (P-256, generated on
    /// the card at provisioning; GlobalPlatform's `CERT.SD.ECKA`): subject `C=JP, OU=card key
    /// agreement, CN=<ICCID>`, a critical keyAgreement key usage.
    pub fn issue_card_key(
        &self,
        key: &impl spki::EncodePublicKey,
        iccid: &str,
        serial: u32,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Certificate> {
        let profile = Profile {
            issuer: self.cert.tbs_certificate().subject().clone(),
            subject: Name::from_str(&format!("CN={iccid},OU=card key agreement,C=JP"))?,
            extensions: vec![ext(
                OID_KEY_USAGE,
                true,
                &KeyUsage(KeyUsages::KeyAgreement.into()),
            )?],
        };
        Self::sign(
            &self.key,
            profile,
            SerialNumber::from(serial),
            validity(not_before, not_after)?,
            key,
        )
    }

    /// Issues a signature certificate carrying the four basic facts in subjectAltName.
    pub fn issue_sign(
        &self,
        key: &impl spki::EncodePublicKey,
        facts: &BasicFacts,
        serial: u32,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Certificate> {
        let other = |oid, v: &str| -> Result<GeneralName> {
            Ok(GeneralName::OtherName(OtherName {
                type_id: oid,
                value: Any::encode_from(&Utf8StringRef::new(v)?)?,
            }))
        };
        let san = SubjectAltName(vec![
            other(OID_NAME, &facts.name)?,
            other(OID_SEX, &facts.sex)?,
            other(OID_BIRTH, &facts.birth_date)?,
            other(OID_ADDRESS, &facts.address)?,
        ]);
        let profile = Profile {
            issuer: self.cert.tbs_certificate().subject().clone(),
            subject: Name::from_str("L=Test-shi,L=Test-ken,C=JP")?,
            extensions: vec![
                ext(
                    OID_KEY_USAGE,
                    true,
                    &KeyUsage(KeyUsages::DigitalSignature | KeyUsages::NonRepudiation),
                )?,
                ext(
                    OID_CERT_POLICIES,
                    false,
                    &CertificatePolicies(vec![PolicyInformation {
                        policy_identifier: OID_SIGN_POLICY,
                        policy_qualifiers: None,
                    }]),
                )?,
                ext(OID_SAN, false, &san)?,
            ],
        };
        Self::sign(
            &self.key,
            profile,
            SerialNumber::from(serial),
            validity(not_before, not_after)?,
            key,
        )
    }

    /// A CRL revoking `serials`.
    pub fn crl(&self, number: u32, serials: &[u32]) -> Result<CertificateList> {
        let now = Time::try_from(SystemTime::now())?;
        let revoked: Vec<RevokedCert> = serials
            .iter()
            .map(|s| RevokedCert {
                serial_number: SerialNumber::from(*s),
                revocation_date: now,
                crl_entry_extensions: None,
            })
            .collect();
        let builder = CrlBuilder::new(
            &self.cert,
            CrlNumber::from(der::asn1::Uint::new(&number.to_be_bytes())?),
        )?
        .with_certificates(revoked.into_iter());
        let signer = SigningKey::<Sha256>::new(self.key.clone());
        builder
            .build::<_, Signature>(&signer)
            .map_err(|e| PkiError::Builder(e.to_string()))
    }
}

/// One entry of a CRL made by [`TestCa::crl_entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlEntry {
    /// The certificate's serial (big-endian, unsigned).
    pub serial: Vec<u8>,
    /// When it was revoked (or put on hold).
    pub revoked_at: SystemTime,
    /// The reasonCode entry extension (RFC 5280 §5.3.1), if any.
    pub reason: Option<x509_cert::ext::pkix::crl::CrlReason>,
}

/// The reasonCode CRL entry extension's OID.
const OID_CRL_REASON: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.21");

impl TestCa {
    /// An X.509 v2 CRL numbered `number`, issued `this_update`, due again by `next_update`,
    /// listing `entries` with their dates and reason codes.
    pub fn crl_entries(
        &self,
        number: u64,
        this_update: SystemTime,
        next_update: SystemTime,
        entries: &[CrlEntry],
    ) -> Result<CertificateList> {
        let mut revoked = Vec::with_capacity(entries.len());
        for e in entries {
            revoked.push(RevokedCert {
                serial_number: SerialNumber::new(&e.serial)?,
                revocation_date: Time::try_from(e.revoked_at)?,
                crl_entry_extensions: match e.reason {
                    Some(r) => Some(vec![ext(OID_CRL_REASON, false, &r)?]),
                    None => None,
                },
            });
        }
        let builder = CrlBuilder::new_with_this_update(
            &self.cert,
            CrlNumber::from(der::asn1::Uint::new(&number.to_be_bytes())?),
            Time::try_from(this_update)?,
        )?
        .with_next_update(Some(Time::try_from(next_update)?))
        .with_certificates(revoked.into_iter());
        let signer = SigningKey::<Sha256>::new(self.key.clone());
        builder
            .build::<_, Signature>(&signer)
            .map_err(|e| PkiError::Builder(e.to_string()))
    }
}

/// A self-signed TLS server certificate (ECDSA P-256, serverAuth, subjectAltName for the given
/// DNS names and IP addresses) and its private key, both PEM: for a local TSM or broker whose
/// clients pin this certificate. Not a CA.
pub fn tls_server_certificate(
    common_name: &str,
    dns: &[&str],
    ips: &[std::net::IpAddr],
    days: u64,
) -> Result<(String, String)> {
    use der::EncodePem;
    use der::pem::LineEnding;
    use p256::ecdsa::{DerSignature, SigningKey as EcKey};
    use p256::elliptic_curve::Generate;
    use p256::pkcs8::EncodePrivateKey;
    use x509_cert::ext::pkix::ExtendedKeyUsage;
    const OID_EKU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
    const OID_SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
    let key = EcKey::try_generate().map_err(|e| PkiError::Rsa(format!("key generation: {e}")))?;
    let name = Name::from_str(&format!("CN={common_name},O=kagi (local TLS)"))?;
    let mut alt = Vec::new();
    for d in dns {
        alt.push(GeneralName::DnsName(der::asn1::Ia5String::new(d)?));
    }
    for ip in ips {
        let bytes = match ip {
            std::net::IpAddr::V4(v) => v.octets().to_vec(),
            std::net::IpAddr::V6(v) => v.octets().to_vec(),
        };
        alt.push(GeneralName::IpAddress(OctetString::new(bytes)?));
    }
    let profile = Profile {
        issuer: name.clone(),
        subject: name,
        extensions: vec![
            ext(
                OID_KEY_USAGE,
                true,
                &KeyUsage(KeyUsages::DigitalSignature.into()),
            )?,
            ext(OID_EKU, false, &ExtendedKeyUsage(vec![OID_SERVER_AUTH]))?,
            ext(OID_SAN, false, &SubjectAltName(alt))?,
        ],
    };
    let mut serial = [0u8; 8];
    getrandom::fill(&mut serial).map_err(|e| PkiError::Rsa(e.to_string()))?;
    serial[0] &= 0x7F;
    let now = SystemTime::now();
    let builder = CertificateBuilder::new(
        profile,
        SerialNumber::new(&serial)?,
        validity(
            now - Duration::from_secs(60),
            now + Duration::from_secs(days * 86400),
        )?,
        SubjectPublicKeyInfo::from_key(key.verifying_key())
            .map_err(|e| PkiError::Parse(e.to_string()))?,
    )
    .map_err(|e| PkiError::Builder(e.to_string()))?;
    let cert = builder
        .build::<_, DerSignature>(&key)
        .map_err(|e| PkiError::Builder(e.to_string()))?;
    let key_pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok((cert.to_pem(LineEnding::LF)?, key_pem.to_string()))
}

/// The serial number of a certificate as an unsigned integer, when it fits in 64 bits.
pub fn serial_u64(cert: &Certificate) -> Option<u64> {
    let bytes = cert.tbs_certificate().serial_number().as_bytes();
    (bytes.len() <= 8).then(|| bytes.iter().fold(0u64, |a, b| (a << 8) | *b as u64))
}

/// Parses a DER certificate.
pub fn parse_certificate(der: &[u8]) -> Result<Certificate> {
    Certificate::from_der(der)
        .map_err(|e| PkiError::Parse(format!("not a DER X.509 certificate: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1v15::VerifyingKey;
    use rsa::signature::Verifier;

    #[test]
    fn issues_jpki_shaped_certificates_that_verify() {
        let ca = TestCa::new("JPKI for user authentication").unwrap();
        let user = generate_rsa_key().unwrap();
        let now = SystemTime::now();
        let cert = ca
            .issue_auth(
                &user.to_public_key(),
                "KAGITEST0000000001",
                0x1234_5678,
                now,
                now + Duration::from_secs(86400),
            )
            .unwrap();
        let der = cert.to_der().unwrap();
        assert_eq!(&der[..2], &[0x30, 0x82]);
        assert_eq!(serial_u64(&cert), Some(0x1234_5678));
        // The CA's signature over the TBS verifies with the CA key.
        let tbs = cert.tbs_certificate().to_der().unwrap();
        let sig = Signature::try_from(cert.signature().raw_bytes()).unwrap();
        VerifyingKey::<Sha256>::new(ca.key.to_public_key())
            .verify(&tbs, &sig)
            .unwrap();
        // The auth policy OID and the subject are there.
        let has = |der: &[u8], oid: &ObjectIdentifier| {
            der.windows(oid.as_bytes().len())
                .any(|w| w == oid.as_bytes())
        };
        assert!(has(&der, &OID_AUTH_POLICY));
        assert_eq!(
            cert.tbs_certificate().subject().to_string(),
            "CN=KAGITEST0000000001,C=JP"
        );
        let sign = ca
            .issue_sign(
                &user.to_public_key(),
                &BasicFacts::synthetic(),
                2,
                now,
                now + Duration::from_secs(86400),
            )
            .unwrap();
        assert!(has(&sign.to_der().unwrap(), &OID_NAME));
        let crl = ca.crl(1, &[0x1234_5678]).unwrap();
        assert_eq!(
            crl.tbs_cert_list
                .revoked_certificates
                .as_ref()
                .map(|r| r.len()),
            Some(1)
        );
    }
}

/// Files of a CA kept in a directory: `<name>.key.der` (PKCS#8, mode 0600), `<name>.crt.der`
/// and `<name>.crt.pem`, `<name>.revoked` (one decimal serial per line) and `<name>.crl.der`.
pub mod store {
    use super::*;
    use der::EncodePem;
    use der::pem::LineEnding;
    use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
    use std::path::{Path, PathBuf};

    fn file(dir: &Path, name: &str, ext: &str) -> PathBuf {
        dir.join(format!("{name}.{ext}"))
    }

    fn io(path: &Path, e: std::io::Error) -> PkiError {
        PkiError::Parse(format!("{}: {e}", path.display()))
    }

    fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        use std::io::Write;
        opts.open(path)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|e| io(path, e))
    }

    /// Saves a CA under `name` in `dir`.
    pub fn save(ca: &TestCa, dir: &Path, name: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let key = ca
            .key
            .to_pkcs8_der()
            .map_err(|e| PkiError::Parse(e.to_string()))?;
        write_private(&file(dir, name, "key.der"), key.as_bytes())?;
        let p = file(dir, name, "crt.der");
        std::fs::write(&p, ca.cert.to_der()?).map_err(|e| io(&p, e))?;
        let p = file(dir, name, "crt.pem");
        std::fs::write(&p, ca.cert.to_pem(LineEnding::LF)?).map_err(|e| io(&p, e))?;
        Ok(())
    }

    /// Loads the CA `name` from `dir`, or creates and saves it (with organisational unit
    /// `unit`) when absent.
    pub fn load_or_create(dir: &Path, name: &str, unit: &str) -> Result<TestCa> {
        let key_path = file(dir, name, "key.der");
        if !key_path.exists() {
            let ca = TestCa::new(unit)?;
            save(&ca, dir, name)?;
            return Ok(ca);
        }
        let key_der = std::fs::read(&key_path).map_err(|e| io(&key_path, e))?;
        let key = PrivateKey::from_pkcs8_der(&key_der)
            .map_err(|e| PkiError::Parse(format!("{}: {e}", key_path.display())))?;
        let cert_path = file(dir, name, "crt.der");
        let cert = parse_certificate(&std::fs::read(&cert_path).map_err(|e| io(&cert_path, e))?)?;
        Ok(TestCa { key, cert })
    }

    /// The serials revoked by CA `name`.
    pub fn revoked(dir: &Path, name: &str) -> Result<Vec<u32>> {
        let p = file(dir, name, "revoked");
        if !p.exists() {
            return Ok(Vec::new());
        }
        let text = std::fs::read_to_string(&p).map_err(|e| io(&p, e))?;
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                l.parse::<u32>()
                    .map_err(|_| PkiError::Parse(format!("{}: '{l}' is not a serial", p.display())))
            })
            .collect()
    }

    /// Revokes `serial` and writes a fresh CRL; returns the CRL's path.
    pub fn revoke(ca: &TestCa, dir: &Path, name: &str, serial: u32) -> Result<PathBuf> {
        let mut list = revoked(dir, name)?;
        if !list.contains(&serial) {
            list.push(serial);
        }
        let p = file(dir, name, "revoked");
        let text: String = list.iter().map(|s| format!("{s}\n")).collect();
        std::fs::write(&p, text).map_err(|e| io(&p, e))?;
        write_crl(ca, dir, name)
    }

    /// Writes the CA's CRL from its revocation list; returns the CRL's path.
    pub fn write_crl(ca: &TestCa, dir: &Path, name: &str) -> Result<PathBuf> {
        let list = revoked(dir, name)?;
        let crl = ca.crl(list.len() as u32 + 1, &list)?;
        let p = file(dir, name, "crl.der");
        std::fs::write(&p, crl.to_der()?).map_err(|e| io(&p, e))?;
        Ok(p)
    }
}
