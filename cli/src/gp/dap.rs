//! `--dap-key` for `kagi gp load|install FILE.cap`: the DAP block a security domain with DAP
//! Verification requires, signed with a key file (RSA or P-256 PEM) or a PKCS#11 key; and
//! `--token-key` / `--receipt-key-file` for a load, install or delete by a domain under delegated
//! management.

use super::Failure;
use clap::Args;
use kagi::dap::{DapKey, DapSigner, RsaDigest};
use std::path::{Path, PathBuf};

/// How the load file is signed for DAP verification.
#[derive(Args, Clone, Default)]
pub struct DapOpts {
    /// Sign a DAP block with this key: a PEM file (RSA or P-256 private key), or a PKCS#11
    /// key pair: `pkcs11:token=T;object=LABEL?module-path=LIB&pin-source=file:PINFILE`.
    #[arg(long)]
    dap_key: Option<String>,
    /// The security domain whose DAP key verifies the block (default: the one the load file
    /// goes to, --to, else the selected one).
    #[arg(long, requires = "dap_key")]
    dap_sd: Option<String>,
    /// RSA DAP signatures: PKCS#1 v1.5 with sha1 or sha256 (default: the load file hash's
    /// algorithm, as cards check it; P-256 always uses SHA-256).
    #[arg(long, requires = "dap_key")]
    dap_digest: Option<String>,
    #[command(flatten)]
    token: TokenOpts,
}

/// Delegated management (GP 2.3 Annex C.4): the token a domain with Delegated Management
/// needs for LOAD, INSTALL and DELETE, and the receipt check.
#[derive(Args, Clone, Default)]
pub struct TokenOpts {
    /// Delegated management: sign a token for INSTALL [for load], INSTALL [for install] and
    /// DELETE with the card issuer's token key (a PEM file or a PKCS#11 URI as for --dap-key),
    /// for an SSD with Delegated Management (open the session to it with --sd).
    #[arg(long)]
    token_key: Option<String>,
    /// RSA tokens: PKCS#1 v1.5 with sha1 or sha256.
    #[arg(long, default_value = "sha256", requires = "token_key")]
    token_digest: String,
    /// Verify the card's receipt with this receipt key (a key file, KEY=hex; AES).
    #[arg(long, requires = "token_key")]
    receipt_key_file: Option<PathBuf>,
}

/// A signer from a PEM file or a PKCS#11 URI.
fn signer_from(source: &str, digest: RsaDigest) -> Result<Box<dyn DapSigner>, Failure> {
    Ok(match source.strip_prefix("pkcs11:") {
        Some(uri) => Box::new(pkcs11(uri, digest)?),
        None => Box::new(DapKey::from_file(Path::new(source), digest)?),
    })
}

/// The delegated-management part of a load: the token signer and the receipt key.
pub struct Delegated {
    /// Signs the token.
    pub token: Box<dyn DapSigner>,
    /// Verifies the receipt, when given.
    pub receipt_key: Option<card_wire::scp03::AesKey>,
}

impl DapOpts {
    /// The token signer and receipt key (see [`TokenOpts::delegated`]).
    pub fn delegated(&self) -> Result<Option<Delegated>, Failure> {
        self.token.delegated()
    }
}

impl Delegated {
    /// Checks the card's confirmation `answer` of `what` with the receipt key, when given
    /// (`done`: what the card did, for the error text); without one, says so on stderr.
    pub fn check(
        &self,
        answer: &[u8],
        what: &card_wire::dm::Confirmed<'_>,
        done: &str,
    ) -> Result<Option<card_wire::dm::Confirmation>, Failure> {
        let Some(key) = &self.receipt_key else {
            eprintln!("note: the card's receipt was not verified (give --receipt-key-file)");
            return Ok(None);
        };
        card_wire::dm::verify_receipt(answer, key, what)
            .map(Some)
            .map_err(|e| format!("{done}, but {e}").into())
    }
}

/// A verified receipt as JSON (`counter`, `card_unique_data`).
pub fn receipt_json(c: &card_wire::dm::Confirmation) -> serde_json::Value {
    serde_json::json!({
        "counter": c.counter,
        "card_unique_data": hex::encode_upper(&c.card_unique_data),
    })
}

impl TokenOpts {
    /// The token signer and receipt key, read before any card is opened; `None` without
    /// `--token-key`.
    pub fn delegated(&self) -> Result<Option<Delegated>, Failure> {
        let Some(source) = &self.token_key else {
            return Ok(None);
        };
        let token = signer_from(source, self.token_digest.parse()?)?;
        let receipt_key = match &self.receipt_key_file {
            Some(f) => Some(kagi::keys::read_key_file(f, 0)?.enc().clone()),
            None => None,
        };
        Ok(Some(Delegated { token, receipt_key }))
    }
}

/// A DAP signer and the domain it signs for (`None`: the load's target domain).
pub struct Dap {
    signer: Box<dyn DapSigner>,
    sd: Option<Vec<u8>>,
}

impl DapOpts {
    /// The signer for a load with load file hash `hash`, read before any card is opened;
    /// `None` without `--dap-key`.
    pub fn signer(&self, hash: kagi::gp_cap::HashAlg) -> Result<Option<Dap>, Failure> {
        let Some(path) = &self.dap_key else {
            return Ok(None);
        };
        let digest: RsaDigest = match &self.dap_digest {
            Some(d) => d.parse()?,
            None if hash == kagi::gp_cap::HashAlg::Sha1 => RsaDigest::Sha1,
            None => RsaDigest::Sha256,
        };
        let signer = signer_from(path, digest)?;
        let sd = self
            .dap_sd
            .as_deref()
            .map(|s| super::aid("DAP security domain AID", s))
            .transpose()?;
        Ok(Some(Dap { signer, sd }))
    }
}

impl Dap {
    /// The `(domain, signer)` pair for a load into `target` (the `--to` domain, else the
    /// selected one).
    pub fn for_load<'a>(&'a self, target: &[u8]) -> (Vec<u8>, &'a dyn DapSigner) {
        (
            self.sd.clone().unwrap_or_else(|| target.to_vec()),
            self.signer.as_ref(),
        )
    }
}

fn percent_decode(s: &str) -> Result<String, Failure> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("PKCS#11 URI: bad escape at '{}'", &s[i..]))?;
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "PKCS#11 URI: not UTF-8 after unescaping".into())
}

/// A PKCS#11 URI (RFC 7512) naming the DAP key pair: path attributes `token` and `object`,
/// query attributes `module-path` and `pin-source` (`file:PATH`; the PIN never on argv).
pub fn pkcs11(uri: &str, digest: RsaDigest) -> Result<kagi_hsm::dap::HsmDapKey, Failure> {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let (mut token, mut object, mut module, mut pin_file) = (None, None, None, None);
    for (sep, part) in [(';', path), ('&', query)] {
        for attr in part.split(sep).filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| format!("PKCS#11 URI: '{attr}' is not name=value"))?;
            let v = percent_decode(v)?;
            match k {
                "token" => token = Some(v),
                "object" => object = Some(v),
                "module-path" => module = Some(PathBuf::from(v)),
                "pin-source" => {
                    pin_file = Some(PathBuf::from(v.strip_prefix("file:").unwrap_or(&v)))
                }
                _ => {}
            }
        }
    }
    let need = |what: &str| -> Failure {
        format!(
            "--dap-key pkcs11:…: add {what} (pkcs11:token=T;object=LABEL?module-path=LIB&pin-source=file:PINFILE)"
        )
        .into()
    };
    let token = token.ok_or_else(|| need("token=…"))?;
    let object = object.ok_or_else(|| need("object=…"))?;
    let module = module.ok_or_else(|| need("module-path=…"))?;
    let pin_file = pin_file.ok_or_else(|| need("pin-source=file:…"))?;
    let pin = zeroize::Zeroizing::new(
        std::fs::read_to_string(&pin_file)
            .map_err(|e| format!("PIN file {}: {e}", pin_file.display()))?,
    );
    kagi_hsm::dap::HsmDapKey::open(
        &module,
        &token,
        pin.trim(),
        &object,
        digest == RsaDigest::Sha1,
    )
    .map_err(|e| e.to_string().into())
}
