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
    /// [[mno_tsm]] section to append to the SP-TSM's tsm.toml (one per MNO-TSM it links to).
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
        /// The MNO-TSM's party (tsm:NAME): give each of an SP-TSM's MNO-TSMs its own.
        #[arg(long, default_value = tsm_server::setup::MNO_TSM_PARTY)]
        name: String,
        /// Its operator's party (mno:NAME).
        #[arg(long, default_value = "mno:kagi-mobile")]
        operator: String,
        /// An ICCID issuer prefix of the operator's SIMs (89, country code, issuer: ITU-T
        /// E.118), repeatable: written as iccid_prefixes of the [[mno_tsm]] section in
        /// sp-tsm-link.toml. Needed when the SP-TSM links to several MNO-TSMs; without it
        /// the link serves every SIM.
        #[arg(long = "iccid-prefix")]
        iccid_prefixes: Vec<String>,
    },
    /// Run the MNO-TSM until SIGINT or SIGTERM (its configuration is mno-tsm.toml;
    /// --insecure-file-keys DIR reads the issuer-domain keys from DIR/NAME.keys).
    Serve(Box<ServeArgs>),
}

/// `kagi mno-tsm init`'s arguments.
struct InitArgs<'a> {
    dir: &'a Path,
    listen: &'a str,
    tls: bool,
    sp_tsm_key: &'a Path,
    sp_tsm: &'a str,
    sp_tsm_url: Option<&'a str>,
    id: tsm_server::setup::MnoIdentity,
}

fn init(a: InitArgs<'_>, json_out: bool) -> Result<(), Failure> {
    let InitArgs {
        dir,
        listen,
        tls,
        sp_tsm_key,
        sp_tsm,
        sp_tsm_url,
        id,
    } = a;
    let https = tls;
    let tls = tls
        .then(|| crate::common::dev_tls_certificate("kagi MNO-TSM"))
        .transpose()?;
    let sp_tsm = tsm_protocol::PartyId::new(sp_tsm)?;
    tsm_server::setup::init_mno_as(dir, listen, tls, &sp_tsm, sp_tsm_key, sp_tsm_url, &id)?;
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
            name,
            operator,
            iccid_prefixes,
        } => init(
            InitArgs {
                dir,
                listen,
                tls: *tls,
                sp_tsm_key,
                sp_tsm,
                sp_tsm_url: sp_tsm_url.as_deref(),
                id: tsm_server::setup::MnoIdentity {
                    name: tsm_protocol::PartyId::new(name)?,
                    operator: tsm_protocol::PartyId::new(operator)?,
                    iccid_prefixes: iccid_prefixes.clone(),
                },
            },
            json_out,
        ),
        MnoTsmCmd::Serve(a) => serve(a),
    }
}
