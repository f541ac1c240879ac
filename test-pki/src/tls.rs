//! A small TLS certification authority for tests of mutually authenticated TLS: a P-256 CA
//! that issues server certificates (serverAuth, subjectAltName DNS names and IP addresses)
//! and client certificates (clientAuth), all PEM.

use super::{
    OID_BASIC_CONSTRAINTS, OID_KEY_USAGE, OID_SAN, PkiError, Profile, Result, ext, validity,
};
use der::EncodePem;
use der::asn1::OctetString;
use der::pem::LineEnding;
use p256::ecdsa::{DerSignature, SigningKey as EcKey};
use p256::elliptic_curve::Generate;
use p256::pkcs8::EncodePrivateKey;
use std::str::FromStr;
use std::time::{Duration, SystemTime};
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{ObjectIdentifier, SubjectPublicKeyInfo};

const OID_EKU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const OID_SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
const OID_CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server (serverAuth).
    Server,
    /// A TLS client (clientAuth).
    Client,
}

/// A P-256 TLS CA for tests (valid a year).
pub struct TlsCa {
    key: EcKey,
    name: Name,
    cert_pem: String,
}

fn random_serial() -> Result<SerialNumber> {
    let mut serial = [0u8; 8];
    getrandom::fill(&mut serial).map_err(|e| PkiError::Rsa(e.to_string()))?;
    serial[0] &= 0x7F;
    serial[0] |= 0x01;
    Ok(SerialNumber::new(&serial)?)
}

fn new_key() -> Result<EcKey> {
    EcKey::try_generate().map_err(|e| PkiError::Rsa(format!("key generation: {e}")))
}

impl TlsCa {
    /// A new self-signed CA `CN=<common_name>,O=kagi (test TLS CA)`.
    pub fn new(common_name: &str) -> Result<TlsCa> {
        let key = new_key()?;
        let name = Name::from_str(&format!("CN={common_name},O=kagi (test TLS CA)"))?;
        let profile = Profile {
            issuer: name.clone(),
            subject: name.clone(),
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
        let now = SystemTime::now();
        let cert = CertificateBuilder::new(
            profile,
            random_serial()?,
            validity(
                now - Duration::from_secs(60),
                now + Duration::from_secs(365 * 86400),
            )?,
            SubjectPublicKeyInfo::from_key(key.verifying_key())
                .map_err(|e| PkiError::Parse(e.to_string()))?,
        )
        .map_err(|e| PkiError::Builder(e.to_string()))?
        .build::<_, DerSignature>(&key)
        .map_err(|e| PkiError::Builder(e.to_string()))?;
        Ok(TlsCa {
            key,
            name,
            cert_pem: cert.to_pem(LineEnding::LF)?,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A leaf certificate for `usage` (`CN=<common_name>`, subjectAltName `dns` and `ips`)
    /// valid `days`, and its new key: (certificate PEM, key PEM PKCS#8).
    pub fn issue(
        &self,
        common_name: &str,
        dns: &[&str],
        ips: &[std::net::IpAddr],
        usage: Usage,
        days: u64,
    ) -> Result<(String, String)> {
        let key = new_key()?;
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
        let eku = match usage {
            Usage::Server => OID_SERVER_AUTH,
            Usage::Client => OID_CLIENT_AUTH,
        };
        let mut extensions = vec![
            ext(
                OID_KEY_USAGE,
                true,
                &KeyUsage(KeyUsages::DigitalSignature.into()),
            )?,
            ext(OID_EKU, false, &ExtendedKeyUsage(vec![eku]))?,
        ];
        if !alt.is_empty() {
            extensions.push(ext(OID_SAN, false, &SubjectAltName(alt))?);
        }
        let profile = Profile {
            issuer: self.name.clone(),
            subject: Name::from_str(&format!("CN={common_name},O=kagi (test TLS)"))?,
            extensions,
        };
        let now = SystemTime::now();
        let cert = CertificateBuilder::new(
            profile,
            random_serial()?,
            validity(
                now - Duration::from_secs(60),
                now + Duration::from_secs(days * 86400),
            )?,
            SubjectPublicKeyInfo::from_key(key.verifying_key())
                .map_err(|e| PkiError::Parse(e.to_string()))?,
        )
        .map_err(|e| PkiError::Builder(e.to_string()))?
        .build::<_, DerSignature>(&self.key)
        .map_err(|e| PkiError::Builder(e.to_string()))?;
        let key_pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| PkiError::Parse(e.to_string()))?;
        Ok((cert.to_pem(LineEnding::LF)?, key_pem.to_string()))
    }
}
