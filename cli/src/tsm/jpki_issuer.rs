//! `kagi jpki-issuer init|serve`: the JPKI system as its own organisation (seed 004's
//! 公的個人認証サービス) — it verifies the users' applications against the My Number cards'
//! signature CA and its CRL, issues the phones' user-authentication certificates, keeps the
//! link to the signature-certificate serial, revokes linked phone certificates, and answers
//! credentials sealed to the SIM. Its own configuration, signing key, database and audit trail;
//! the user-authentication CA's key in a file key store (development).

use crate::Failure;
use crate::common::{LimitArgs, init_logging, runtime, shutdown_signal};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// `kagi jpki-issuer …`.
#[derive(Subcommand)]
pub enum JpkiIssuerCmd {
    /// Create a JPKI issuer's configuration in DIR: jpki-issuer.toml, its P-256 signing key,
    /// and sp-tsm-link.toml — the [jpki_issuer] section to append to the SP-TSM's tsm.toml.
    /// The CAs are those of --ca-dir (`kagi ca init`): the signature CA it trusts (and its
    /// CRL) and the user-authentication CA it issues with (its key stays a file there).
    Init {
        /// Where to write (created).
        #[arg(long)]
        dir: PathBuf,
        /// The issuer's address in the configuration files.
        #[arg(long, default_value = "127.0.0.1:8770")]
        listen: String,
        /// The SP-TSM's public key (tsm.pub.pem from `kagi tsm init`).
        #[arg(long)]
        sp_tsm_key: PathBuf,
        /// The SP-TSM's party.
        #[arg(long, default_value = "tsm:kagi")]
        sp_tsm: String,
        /// The JPKI CA directory (`kagi ca init`).
        #[arg(long)]
        ca_dir: PathBuf,
        /// The card manufacturer's CA certificate (the SIMs' key agreement certificates).
        #[arg(long)]
        manufacturer_ca: PathBuf,
    },
    /// Run the JPKI issuer until SIGINT or SIGTERM.
    Serve(Box<IssuerServeArgs>),
}

/// `kagi jpki-issuer serve`.
#[derive(Args)]
pub struct IssuerServeArgs {
    /// The issuer's configuration (jpki-issuer.toml).
    #[arg(long)]
    config: PathBuf,
    /// The database: a SQLite file (default: the configuration's) or postgres://user@host/db.
    #[arg(long)]
    database: Option<String>,
    /// Listen here instead of the configuration's address.
    #[arg(long)]
    listen: Option<String>,
    /// Logs as JSON lines.
    #[arg(long)]
    log_json: bool,
    #[command(flatten)]
    limits: LimitArgs,
}

/// The user-authentication CA from its file key store.
struct FileUaCa {
    ca: test_pki::TestCa,
    der: Vec<u8>,
}

impl tsm_server::issuer::UaCa for FileUaCa {
    fn certify(
        &self,
        key: &p256::PublicKey,
        opaque_id: &str,
        serial: u32,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Vec<u8>, String> {
        use der::Encode;
        self.ca
            .issue_auth(key, opaque_id, serial, not_before, not_after)
            .map_err(|e| e.to_string())?
            .to_der()
            .map_err(|e| e.to_string())
    }

    fn certificate_der(&self) -> Vec<u8> {
        self.der.clone()
    }
}

/// Opens the CA whose key is `key` (`DIR/NAME.key.der`, certificate `DIR/NAME.crt.der`).
fn open_ua_ca(cert: &Path, key: &Path) -> Result<Arc<dyn tsm_server::issuer::UaCa>, String> {
    let name = key
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".key.der"))
        .ok_or_else(|| format!("{}: the CA key file is NAME.key.der", key.display()))?;
    let dir = key.parent().unwrap_or(Path::new("."));
    if !key.exists() {
        return Err(format!("{}: no such CA key", key.display()));
    }
    if dir.join(format!("{name}.crt.der")) != cert {
        return Err(format!(
            "{}: the CA certificate lies beside its key as {name}.crt.der",
            cert.display()
        ));
    }
    let ca = test_pki::store::load_or_create(dir, name, "unused").map_err(|e| e.to_string())?;
    let der = ca.certificate_der().map_err(|e| e.to_string())?;
    Ok(Arc::new(FileUaCa { ca, der }))
}

fn init(
    dir: &Path,
    listen: &str,
    sp_tsm_key: &Path,
    sp_tsm: &str,
    ca_dir: &Path,
    maker: &Path,
    json_out: bool,
) -> Result<(), Failure> {
    let sp_tsm = tsm_protocol::PartyId::new(sp_tsm)?;
    tsm_server::issuer::setup::init_issuer(dir, listen, &sp_tsm, sp_tsm_key, ca_dir, maker)?;
    let file = |f: &str| dir.join(f).display().to_string();
    if json_out {
        crate::print_json(serde_json::json!({
            "dir": dir.display().to_string(), "listen": listen,
            "jpki_issuer": file("jpki-issuer.toml"), "sp_tsm_link": file("sp-tsm-link.toml"),
            "pin_mailer": file("pin-mailer"),
        }));
        return Ok(());
    }
    println!(
        "JPKI issuer configuration in {0}: jpki-issuer.toml (serve it with `kagi jpki-issuer serve --config {0}/jpki-issuer.toml`); append {0}/sp-tsm-link.toml to the SP-TSM's tsm.toml",
        dir.display()
    );
    Ok(())
}

fn serve(args: &IssuerServeArgs) -> Result<(), Failure> {
    init_logging(args.log_json);
    let overrides = tsm_server::setup::Overrides {
        database: args.database.clone(),
        listen: args.listen.clone(),
    };
    eprintln!(
        "WARNING: the user-authentication CA's key is read from a plain file (file key store). Use an HSM in production."
    );
    let loaded = tsm_server::issuer::setup::load_issuer(&args.config, &overrides, &open_ua_ca)?;
    let limits = args.limits.limits(loaded.limits.as_ref())?;
    let rt = runtime()?;
    let stop = {
        let _in = rt.enter();
        shutdown_signal()?
    };
    rt.block_on(tsm_server::issuer::setup::serve_issuer(
        loaded, &limits, stop,
    ))?;
    Ok(())
}

/// Runs `kagi jpki-issuer …`.
pub fn run(cmd: &JpkiIssuerCmd, json_out: bool) -> Result<(), Failure> {
    match cmd {
        JpkiIssuerCmd::Init {
            dir,
            listen,
            sp_tsm_key,
            sp_tsm,
            ca_dir,
            manufacturer_ca,
        } => init(
            dir,
            listen,
            sp_tsm_key,
            sp_tsm,
            ca_dir,
            manufacturer_ca,
            json_out,
        ),
        JpkiIssuerCmd::Serve(a) => serve(a),
    }
}
