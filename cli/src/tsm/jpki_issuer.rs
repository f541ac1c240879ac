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
    /// and sp-tsm-link.toml — the [jpki_issuer] section to append to the SP-TSM's tsm.toml
    /// (key_generation = "on-card": the SIM makes the phone's key; "issuer" is the alternative).
    /// The CAs are those of --ca-dir (`kagi ca init`): the signature CA it trusts (and its
    /// CRL) and the user-authentication CA it issues with (its key stays a file there).
    Init {
        /// Where to write (created).
        #[arg(long)]
        dir: PathBuf,
        /// The issuer's address in the configuration files.
        #[arg(long, default_value = "127.0.0.1:8770")]
        listen: String,
        /// Serve HTTPS with a self-signed development certificate (tls.crt.pem; the SP-TSM's
        /// link trusts it as its tls_ca).
        #[arg(long)]
        tls: bool,
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
    /// Write the issuer's CRL now: every phone certificate it revoked or holds, signed by the
    /// user-authentication CA (the file relying parties give `kagi eligibility read --crl`
    /// and the broker's `revocation`). The signature CA's revocations are synced first. A
    /// serving issuer also keeps the configuration's `crl` file current and serves GET
    /// /v1/crl.
    Crl {
        /// The issuer's configuration (its database and the CA key are opened).
        #[arg(long)]
        config: PathBuf,
        /// The database instead of the configuration's: a SQLite file or postgres://….
        #[arg(long)]
        database: Option<String>,
        /// Where to write the CRL (DER).
        #[arg(long)]
        out: PathBuf,
    },
    /// Read the issuer's audit trail (issued, sign-revoked, withdrawn), oldest first,
    /// optionally only the entries about one signature certificate or from a time on.
    Audit {
        /// The issuer's configuration (its database is read; no key is opened).
        #[arg(long, required_unless_present = "database")]
        config: Option<PathBuf>,
        /// The database instead: a SQLite file or postgres://user@host/db.
        #[arg(long)]
        database: Option<String>,
        /// Only entries about this signature-certificate serial (hex, as `kagi tsm provider
        /// check` prints `my_number_sign_serial`).
        #[arg(long)]
        sign_serial: Option<String>,
        /// Only entries from this time on (seconds since the Unix epoch).
        #[arg(long)]
        since: Option<u64>,
    },
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
    #[command(flatten)]
    runtime: crate::common::RuntimeArgs,
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

    fn crl(
        &self,
        number: u64,
        this_update: SystemTime,
        next_update: SystemTime,
        entries: &[tsm_server::issuer::crl::CrlEntry],
    ) -> Result<Vec<u8>, String> {
        use der::Encode;
        let entries: Vec<test_pki::CrlEntry> = entries
            .iter()
            .map(|e| test_pki::CrlEntry {
                serial: e.serial.clone(),
                revoked_at: e.revoked_at,
                reason: Some(e.reason),
            })
            .collect();
        self.ca
            .crl_entries(number, this_update, next_update, &entries)
            .map_err(|e| e.to_string())?
            .to_der()
            .map_err(|e| e.to_string())
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

#[allow(clippy::too_many_arguments)]
fn init(
    dir: &Path,
    listen: &str,
    tls: bool,
    sp_tsm_key: &Path,
    sp_tsm: &str,
    ca_dir: &Path,
    maker: &Path,
    json_out: bool,
) -> Result<(), Failure> {
    let sp_tsm = tsm_protocol::PartyId::new(sp_tsm)?;
    let https = tls;
    let tls = tls
        .then(|| crate::common::dev_tls_certificate("kagi JPKI issuer"))
        .transpose()?;
    tsm_server::issuer::setup::init_issuer(dir, listen, tls, &sp_tsm, sp_tsm_key, ca_dir, maker)?;
    let file = |f: &str| dir.join(f).display().to_string();
    if json_out {
        crate::print_json(serde_json::json!({
            "dir": dir.display().to_string(), "listen": listen, "https": https,
            "jpki_issuer": file("jpki-issuer.toml"), "sp_tsm_link": file("sp-tsm-link.toml"),
            "pin_mailer": file("pin-mailer"), "crl": file("ua-crl.der"),
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
    let rt = args.runtime.runtime()?;
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
            tls,
            sp_tsm_key,
            sp_tsm,
            ca_dir,
            manufacturer_ca,
        } => init(
            dir,
            listen,
            *tls,
            sp_tsm_key,
            sp_tsm,
            ca_dir,
            manufacturer_ca,
            json_out,
        ),
        JpkiIssuerCmd::Serve(a) => serve(a),
        JpkiIssuerCmd::Crl {
            config,
            database,
            out,
        } => crl(config, database.clone(), out, json_out),
        JpkiIssuerCmd::Audit {
            config,
            database,
            sign_serial,
            since,
        } => audit(
            config.as_deref(),
            database.as_deref(),
            sign_serial.as_deref(),
            *since,
            json_out,
        ),
    }
}

/// `kagi jpki-issuer crl`.
fn crl(config: &Path, database: Option<String>, out: &Path, json_out: bool) -> Result<(), Failure> {
    let overrides = tsm_server::setup::Overrides {
        database,
        listen: None,
    };
    let loaded = tsm_server::issuer::setup::load_issuer(config, &overrides, &open_ua_ca)?;
    let (number, der, entries) = runtime()?.block_on(async {
        let backend = kagi_db::Backend::parse(&loaded.database);
        let issuer = tsm_server::issuer::Issuer::open(loaded.config, &backend).await?;
        issuer.sync_revocations().await?;
        let (number, der) = issuer.crl().await?;
        let (_, entries) =
            tsm_server::issuer::crl::entries(issuer.db(), std::time::SystemTime::now()).await?;
        Ok::<_, Failure>((number, der, entries.len()))
    })?;
    std::fs::write(out, &der).map_err(|e| format!("{}: {e}", out.display()))?;
    if json_out {
        crate::print_json(serde_json::json!({
            "out": out.display().to_string(), "crl_number": number, "entries": entries,
        }));
    } else {
        println!(
            "CRL number {number} with {entries} revoked or held phone certificates written to {}",
            out.display()
        );
    }
    Ok(())
}

/// `kagi jpki-issuer audit`.
fn audit(
    config: Option<&Path>,
    database: Option<&str>,
    sign_serial: Option<&str>,
    since: Option<u64>,
    json_out: bool,
) -> Result<(), Failure> {
    let database = match (database, config) {
        (Some(d), _) => d.to_string(),
        (None, Some(c)) => {
            tsm_server::issuer::setup::issuer_database(c, &tsm_server::setup::Overrides::default())?
        }
        (None, None) => return Err("give --config or --database".into()),
    };
    // Serials as kagi prints them: upper-case hex of whole bytes.
    let wanted = sign_serial.map(|s| {
        let s = s.trim().trim_start_matches("0x").to_ascii_uppercase();
        if s.len() % 2 == 1 { format!("0{s}") } else { s }
    });
    let since_ms = i64::try_from(since.unwrap_or(0).saturating_mul(1000)).unwrap_or(i64::MAX);
    let entries = runtime()?.block_on(async {
        let db = kagi_db::Db::open(
            &kagi_db::Backend::parse(&database),
            &tsm_server::issuer::store::SCHEMA,
        )
        .await?;
        tsm_server::issuer::store::audit_since(&db, since_ms).await
    })?;
    let entries: Vec<_> = entries
        .into_iter()
        .filter(|e| wanted.as_deref().is_none_or(|w| e.sign_serial() == Some(w)))
        .collect();
    if json_out {
        let list: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "at": crate::common::rfc3339_ms(e.at), "at_ms": e.at, "actor": e.actor,
                    "event": e.event, "detail": e.detail, "sign_serial": e.sign_serial(),
                    "phone_serial": e.phone_serial(),
                })
            })
            .collect();
        crate::print_json(serde_json::json!({ "audit": list }));
        return Ok(());
    }
    for e in &entries {
        println!(
            "{} {:<16} {:<13} {}",
            crate::common::rfc3339_ms(e.at),
            e.actor,
            e.event,
            e.detail
        );
    }
    Ok(())
}
