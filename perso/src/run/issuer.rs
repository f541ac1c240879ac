//! Who issues a batch's JPKI certificates: the development CA kept with the batch, or an external CA reached through request and certificate files (the CA exchange), and the PINs sent only to the mailer.

use crate::error::{Error, Result};
use crate::profile::CertificateAuthority;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Who issues the certificates of a batch (one value per batch: its size does not matter).
#[allow(clippy::large_enum_variant)]
pub(super) enum Authority {
    /// The project's test CAs, issuing in process (the `dev-ca` feature).
    #[cfg(feature = "dev-ca")]
    Test {
        auth_ca: test_pki::TestCa,
        sign_ca: test_pki::TestCa,
    },
    /// An external CA through a file exchange: requests out, certificates in.
    External {
        auth_ca: x509_cert::Certificate,
        sign_ca: x509_cert::Certificate,
        requests: PathBuf,
        issued: PathBuf,
        timeout: std::time::Duration,
    },
}

/// What JPKI issuance needs for the whole batch: the CAs and the PIN mailer.
pub(super) struct Issuer {
    pub(super) authority: Authority,
    pub(super) mailer_key: rsa::PublicKey,
    pub(super) mailer: Mutex<std::fs::File>,
}

/// Reads a CA certificate file (PEM or DER).
pub(super) fn ca_certificate(path: &Path) -> Result<x509_cert::Certificate> {
    use der::Decode;
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Profile(format!("CA certificate {}: {e}", path.display())))?;
    let der = crate::pki::pem_or_der(&bytes, "CERTIFICATE")?;
    x509_cert::Certificate::from_der(&der)
        .map_err(|e| Error::Profile(format!("CA certificate {}: {e}", path.display())))
}

#[cfg(feature = "dev-ca")]
fn dev_ca_error(dir: &Path, e: test_pki::PkiError) -> Error {
    Error::Profile(format!("CA {}: {e}", dir.display()))
}

impl Authority {
    /// Whether certificates are issued in process (the development CA) rather than through
    /// the CA exchange.
    pub(super) fn in_process(&self) -> bool {
        #[cfg(feature = "dev-ca")]
        if let Authority::Test { .. } = self {
            return true;
        }
        false
    }
}

impl Issuer {
    pub(super) fn open(j: &crate::profile::Jpki, out: &Path) -> Result<Issuer> {
        let authority = match &j.ca {
            #[cfg(not(feature = "dev-ca"))]
            CertificateAuthority::Test => {
                return Err(Error::Profile(
                    "ca = \"test\" (the development CA) is not in this build: use ca = \"external\" (your CA through a file exchange), or build kagi-perso with the `dev-ca` feature (the kagi CLI has it)".into(),
                ));
            }
            #[cfg(feature = "dev-ca")]
            CertificateAuthority::Test => Authority::Test {
                auth_ca: test_pki::store::load_or_create(
                    &j.ca_dir,
                    "auth-ca",
                    "JPKI for user authentication",
                )
                .map_err(|e| dev_ca_error(&j.ca_dir, e))?,
                sign_ca: test_pki::store::load_or_create(
                    &j.ca_dir,
                    "sign-ca",
                    "JPKI for digital signature",
                )
                .map_err(|e| dev_ca_error(&j.ca_dir, e))?,
            },
            CertificateAuthority::External {
                exchange_dir,
                timeout,
            } => {
                let (requests, issued) =
                    (exchange_dir.join("requests"), exchange_dir.join("issued"));
                for d in [&requests, &issued] {
                    std::fs::create_dir_all(d)
                        .map_err(|e| Error::Profile(format!("CA exchange {}: {e}", d.display())))?;
                }
                Authority::External {
                    auth_ca: ca_certificate(&j.ca_dir.join("auth-ca.crt.pem"))?,
                    sign_ca: ca_certificate(&j.ca_dir.join("sign-ca.crt.pem"))?,
                    requests,
                    issued,
                    timeout: *timeout,
                }
            }
        };
        let bytes = std::fs::read(&j.pin_mailer_key).map_err(|e| {
            Error::Profile(format!(
                "PIN mailer key {}: {e}",
                j.pin_mailer_key.display()
            ))
        })?;
        let der = if bytes.starts_with(b"-----BEGIN") {
            der::pem::decode_vec(&bytes)
                .map_err(|e| Error::Profile(format!("PIN mailer key: {e}")))?
                .1
        } else {
            bytes
        };
        use rsa::pkcs8::DecodePublicKey;
        let mailer_key = rsa::PublicKey::from_public_key_der(&der).map_err(|e| {
            Error::Profile(format!(
                "PIN mailer key {}: {e}",
                j.pin_mailer_key.display()
            ))
        })?;
        let mailer = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out.join("pin-mailer.enc"))
            .map_err(|e| Error::Mailer(format!("its public key: {e}")))?;
        Ok(Issuer {
            authority,
            mailer_key,
            mailer: Mutex::new(mailer),
        })
    }

    /// Appends `record,HEX(RSA-OAEP-SHA256(JSON of the PINs))` and syncs it.
    pub(super) fn mail(
        &self,
        record: &str,
        pins: &[(&str, &zeroize::Zeroizing<String>)],
    ) -> Result<()> {
        use std::io::Write;
        let mut doc = serde_json::Map::new();
        for (k, v) in pins {
            doc.insert((*k).into(), serde_json::Value::String(v.as_str().into()));
        }
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(&doc).unwrap_or_default());
        for (_, v) in doc.iter_mut() {
            if let serde_json::Value::String(s) = v {
                zeroize::Zeroize::zeroize(s);
            }
        }
        let ct = self
            .mailer_key
            .encrypt(
                &mut getrandom::SysRng,
                rsa::Oaep::<sha2::Sha256>::new(),
                &plain,
            )
            .map_err(|e| Error::Mailer(format!("encryption: {e}")))?;
        let mut f = self.mailer.lock().map_err(|_| Error::Poisoned)?;
        f.write_all(format!("{record},{}\n", hex::encode_upper(ct)).as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| Error::Mailer(format!("write: {e}")))
    }
}

/// A random PIN: 4 digits, or (password) 8 upper-case letters and digits with both.
pub(super) fn random_pin(password: bool) -> Result<zeroize::Zeroizing<String>> {
    const ALNUM: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    loop {
        let mut b = zeroize::Zeroizing::new([0u8; 8]);
        getrandom::fill(b.as_mut())?;
        let pin: zeroize::Zeroizing<String> = zeroize::Zeroizing::new(if password {
            b.iter()
                .map(|x| ALNUM[(*x as usize) % ALNUM.len()] as char)
                .collect()
        } else {
            b[..4].iter().map(|x| (b'0' + x % 10) as char).collect()
        });
        let which = if password {
            kagi::jpki::Pin::Sign
        } else {
            kagi::jpki::Pin::Auth
        };
        if which.format_ok(pin.as_bytes()) {
            return Ok(pin);
        }
    }
}
