//! `--dap-key` for `kagi gp load|install FILE.cap`: the DAP block a security domain with DAP
//! Verification requires, signed with a key file (RSA or P-256 PEM) or a PKCS#11 key.

use super::Failure;
use clap::Args;
use kagi::dap::{DapKey, DapSigner, RsaDigest};
use std::path::PathBuf;

/// How the load file is signed for DAP verification.
#[derive(Args, Clone, Default)]
pub struct DapOpts {
    /// Sign a DAP block with this key: a PEM file (RSA or P-256 private key).
    #[arg(long)]
    dap_key: Option<PathBuf>,
    /// The security domain whose DAP key verifies the block (default: the one the load file
    /// goes to, --to, else the selected one).
    #[arg(long, requires = "dap_key")]
    dap_sd: Option<String>,
    /// RSA DAP signatures: PKCS#1 v1.5 with sha1 or sha256 (P-256 always uses SHA-256).
    #[arg(long, default_value = "sha256", requires = "dap_key")]
    dap_digest: String,
}

/// A DAP signer and the domain it signs for (`None`: the load's target domain).
pub struct Dap {
    signer: Box<dyn DapSigner>,
    sd: Option<Vec<u8>>,
}

impl DapOpts {
    /// The signer, read before any card is opened; `None` without `--dap-key`.
    pub fn signer(&self) -> Result<Option<Dap>, Failure> {
        let Some(path) = &self.dap_key else {
            return Ok(None);
        };
        let digest: RsaDigest = self.dap_digest.parse()?;
        let signer: Box<dyn DapSigner> = Box::new(DapKey::from_file(path, digest)?);
        let sd = self
            .dap_sd
            .as_deref()
            .map(|s| super::gp::aid("DAP security domain AID", s))
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
