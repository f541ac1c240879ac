//! `kagi mno-tsm init|serve`: the mobile operator's own TSM (seed 004's MNO-TSM) — the SIMs'
//! issuer-domain keys, the SIM registry, its own database, signing key and audit trail. It
//! prepares SIMs for providers at the signed request of their SP-TSM (`kagi tsm`).

use super::ServeArgs;
use crate::Failure;
use clap::Subcommand;
use std::path::{Path, PathBuf};

/// `kagi mno-tsm …`.
#[derive(Subcommand)]
pub enum MnoTsmCmd {
    /// Create an MNO-TSM's keys and configuration in DIR: mno-tsm.toml, its P-256 key, the
    /// operator's key and client configuration (operator.toml), the simulated SIMs'
    /// issuer-domain keys (keys/isd.keys, development only), and sp-tsm-link.toml — the
    /// [mno_tsm] section to append to the SP-TSM's tsm.toml.
    Init {
        /// Where to write (created).
        #[arg(long)]
        dir: PathBuf,
        /// The MNO-TSM's address in the configuration files.
        #[arg(long, default_value = "127.0.0.1:8760")]
        listen: String,
        /// Serve HTTPS with a self-signed certificate made here.
        #[arg(long)]
        tls: bool,
        /// The SP-TSM's public key (tsm.pub.pem from `kagi tsm init`): the only party that
        /// may ask this MNO-TSM to prepare SIMs for the demo provider.
        #[arg(long)]
        sp_tsm_key: PathBuf,
        /// The SP-TSM's party.
        #[arg(long, default_value = "tsm:kagi")]
        sp_tsm: String,
        /// The SP-TSM's address (http(s)://host:port): where this MNO-TSM sends its notices
        /// of lost and changed SIMs (`kagi tsm mno card-lost|sim-changed`), retried until
        /// acknowledged. Without it the notices wait (url of [[sp_tsm]] in mno-tsm.toml).
        #[arg(long)]
        sp_tsm_url: Option<String>,
    },
    /// Run the MNO-TSM until SIGINT or SIGTERM (its configuration is mno-tsm.toml;
    /// --insecure-file-keys DIR reads the issuer-domain keys from DIR/NAME.keys).
    Serve(Box<ServeArgs>),
}

fn init(
    dir: &Path,
    listen: &str,
    tls: bool,
    sp_tsm_key: &Path,
    sp_tsm: &str,
    sp_tsm_url: Option<&str>,
    json_out: bool,
) -> Result<(), Failure> {
    let https = tls;
    let tls = tls
        .then(|| crate::common::dev_tls_certificate("kagi MNO-TSM"))
        .transpose()?;
    let sp_tsm = tsm_protocol::PartyId::new(sp_tsm)?;
    tsm_server::setup::init_mno(dir, listen, tls, &sp_tsm, sp_tsm_key, sp_tsm_url)?;
    let file = |f: &str| dir.join(f).display().to_string();
    if json_out {
        crate::print_json(serde_json::json!({
            "dir": dir.display().to_string(), "listen": listen, "https": https,
            "mno_tsm": file("mno-tsm.toml"), "operator": file("operator.toml"),
            "sp_tsm_link": file("sp-tsm-link.toml"), "keys": file("keys"),
        }));
        return Ok(());
    }
    println!(
        "MNO-TSM configuration in {0}: mno-tsm.toml (serve it with `kagi mno-tsm serve --config {0}/mno-tsm.toml --insecure-file-keys {0}/keys`), operator.toml; append {0}/sp-tsm-link.toml to the SP-TSM's tsm.toml",
        dir.display()
    );
    Ok(())
}

fn serve(args: &ServeArgs) -> Result<(), Failure> {
    super::serve::serve_loaded(args, tsm_server::setup::load_mno)
}

/// Runs `kagi mno-tsm …`.
pub fn run(cmd: &MnoTsmCmd, json_out: bool) -> Result<(), Failure> {
    match cmd {
        MnoTsmCmd::Init {
            dir,
            listen,
            tls,
            sp_tsm_key,
            sp_tsm,
            sp_tsm_url,
        } => init(
            dir,
            listen,
            *tls,
            sp_tsm_key,
            sp_tsm,
            sp_tsm_url.as_deref(),
            json_out,
        ),
        MnoTsmCmd::Serve(a) => serve(a),
    }
}
