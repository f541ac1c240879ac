//! `kagi broker …`: the credential broker (serve it, its key-encryption keys, the
//! administrators' requests) and the holder's login.

use super::common::{LimitArgs, read_text, runtime};
use super::jpki::PinSource;
use super::perso::HsmArgs;
use super::target::Target;
use super::{Failure, print_json};

mod admin;
mod backup;
mod login;
mod scale;
mod serve;

use admin::*;
use clap::{Args, Subcommand};
use login::*;
use serde::Deserialize;
use serde_json::json;
use serve::*;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum BrokerCmd {
    /// Create a broker's keys and configuration in DIR: broker.toml, its signing and
    /// assertion keys, its state key, an administrator (admin.toml, admin.key.pem) and a
    /// first KEK in DIR/keys (development file store; use `new-kek --hsm-module` for an HSM).
    Init {
        /// Where to write (created).
        #[arg(long)]
        dir: PathBuf,
        /// The broker's address in the configuration files.
        #[arg(long, default_value = "127.0.0.1:8760")]
        listen: String,
        /// The test CA directory whose auth CA issues the cards (`kagi ca init`); its
        /// certificate and revocation list are what logins are checked against.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Serve HTTPS with a self-signed certificate made here (tls.crt.pem, tls.key.pem),
        /// which admin.toml pins.
        #[arg(long)]
        tls: bool,
        /// The KEKs will be in an HSM (`kagi broker new-kek --hsm-module …`): write no
        /// development KEK file.
        #[arg(long)]
        hsm_keks: bool,
    },
    /// Make a key-encryption key: in the HSM (generated inside, non-extractable), or with
    /// --insecure-file-keys as a file (development only).
    NewKek {
        /// The KEK's id (the HSM object is labelled broker-kek-ID; the file DIR/kek-ID.key).
        #[arg(long)]
        id: String,
        #[command(flatten)]
        keys: KeyStoreArgs,
    },
    /// Run the broker until SIGINT or SIGTERM (requests in flight finish).
    Serve(ServeArgs),
    /// An administrator's signed requests.
    Admin {
        /// The administrator's configuration (admin.toml from `kagi broker init`).
        #[arg(long)]
        config: PathBuf,
        /// A key naming this request for retries across runs (any text): run the same
        /// command with the same key again after a lost answer and the broker answers as the
        /// first time, doing it once (key enrolments and rotations; kept a day).
        #[arg(long, global = true)]
        idempotency_key: Option<String>,
        #[command(subcommand)]
        cmd: AdminCmd,
    },
    /// The holder: log in with the card (or a password) and act at a service — print the
    /// assertion, answer the service's challenge, or complete a login at the service itself.
    Login(LoginArgs),
    /// Enrol many cards at once, straight into the databases (a migration): one card id per
    /// line of FILE, each with a credential for every --service (registered already).
    Import {
        #[command(flatten)]
        offline: OfflineArgs,
        /// The card ids, one per line.
        #[arg(long)]
        cards_file: PathBuf,
        /// The services (repeat).
        #[arg(long, required = true)]
        service: Vec<String>,
    },
    /// Open every stored credential with the key store and report how many are under each
    /// KEK; non-zero exit if any does not open (an integrity check after a rotation or a
    /// restore).
    VerifyRecords(OfflineArgs),
    /// Measure the broker at scale: load cards × services synthetic credentials, then time
    /// lookup+unwrap+use, logins per second, database size and a KEK rotation.
    Scale(scale::ScaleArgs),
    /// Back up the broker's databases while it runs (SQLite's online backup API; pg_dump for
    /// PostgreSQL): one file per shard in --out (created, 0700; files 0600) and a manifest.
    /// The keys are not in it: back up the key store (the HSM) by its own procedure.
    Backup(backup::BackupArgs),
    /// Restore a backup of `kagi broker backup` into fresh databases (SQLite files that do
    /// not exist yet, or empty PostgreSQL databases), one per shard in order; then check it
    /// with `kagi broker verify-records`.
    Restore(backup::RestoreArgs),
}

/// `kagi broker serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The broker's configuration (broker.toml).
    #[arg(long)]
    config: PathBuf,
    /// The databases, one per shard (SQLite files or postgres://…; every instance must be
    /// given the same list in the same order). Default: the configuration's.
    #[arg(long)]
    database: Vec<String>,
    /// Listen here instead of the configuration's address.
    #[arg(long)]
    listen: Option<String>,
    /// Logs as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Seconds between background sweeps (continuing a KEK rotation, forgetting expired
    /// sessions).
    #[arg(long, default_value_t = 10)]
    sweep_seconds: u64,
    #[command(flatten)]
    keys: KeyStoreArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    runtime: super::common::RuntimeArgs,
}

/// Where the broker's KEKs are.
#[derive(Args)]
pub struct KeyStoreArgs {
    /// Development key store (DIR/kek-ID.key files).
    #[arg(long, conflicts_with = "hsm_module")]
    insecure_file_keys: Option<PathBuf>,
    #[command(flatten)]
    hsm: HsmArgs,
}

/// `kagi broker import` and `kagi broker verify-records`.
#[derive(Args)]
pub struct OfflineArgs {
    /// The broker's configuration (broker.toml).
    #[arg(long)]
    config: PathBuf,
    /// The databases (default: the configuration's).
    #[arg(long)]
    database: Vec<String>,
    #[command(flatten)]
    keys: KeyStoreArgs,
}

#[derive(Subcommand)]
pub enum AdminCmd {
    /// Register (or update) a service and its policy.
    RegisterService {
        /// The service's id (its assertions' audience).
        #[arg(long)]
        id: String,
        /// mac (AES-CMAC over its challenge), sign-p256, sign-rsa, or assertion.
        #[arg(long)]
        method: String,
        /// The weakest login it accepts: card or password.
        #[arg(long, default_value = "card")]
        min_assurance: String,
        /// Hours (UTC) it may be used, FROM-TO (e.g. 8-20; may wrap midnight).
        #[arg(long)]
        hours: Option<String>,
    },
    /// Enrol a card's holder (no card write).
    EnrolCard {
        /// The card's authentication certificate (`kagi jpki read-cert --cert auth`).
        #[arg(long, conflicts_with = "card")]
        cert: Option<PathBuf>,
        /// Or the card's id (the certificate's subject common name).
        #[arg(long)]
        card: Option<String>,
        /// The holder's id (the password login's name).
        #[arg(long)]
        holder: String,
        /// A password for the lower-assurance login (file, first line).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Make a card's credential for a service; writes what the service needs (a public key
    /// PEM, or a MAC key file 0600) to --out.
    Enrol(CredentialArgs),
    /// Replace a card's key for a service (the old one stops at once).
    RotateKey(CredentialArgs),
    /// Make KEK TO the key of new records and re-wrap every record under it (continued in
    /// the background by every instance until done).
    RotateKek {
        /// The new KEK's id (it must be in the key store).
        #[arg(long)]
        to: String,
    },
    /// Revoke a card: every service stops at once.
    Revoke {
        /// The card's id.
        #[arg(long)]
        card: String,
    },
    /// The audit trail (of one card, or all).
    Audit {
        /// The card's id.
        #[arg(long)]
        card: Option<String>,
    },
    /// How a registered service receives the broker's proofs: `relayed` (through the
    /// holder's client), `code` (the holder's client gets a one-time code the service
    /// redeems at the broker, signing with the key given here) or `push` (the broker POSTs
    /// the signed proof to the service's URL over mutually authenticated TLS).
    BackChannel {
        /// The service.
        #[arg(long)]
        service: String,
        /// relayed, code or push.
        #[arg(long)]
        mode: String,
        /// push: the service's endpoint (https://…) the broker POSTs proofs to.
        #[arg(long)]
        url: Option<String>,
        /// push: the CA certificate (PEM) the service's TLS certificate must chain to.
        #[arg(long)]
        service_ca: Option<PathBuf>,
        /// code: the service's P-256 public key (PEM), which signs its redemptions as
        /// party sp:<service>.
        #[arg(long)]
        service_key: Option<PathBuf>,
        /// code: how long a code can be redeemed, seconds (1 to 600).
        #[arg(long, default_value_t = 60)]
        code_secs: u32,
    },
}

/// A card's credential for a service.
#[derive(Args)]
pub struct CredentialArgs {
    /// The card's id.
    #[arg(long)]
    card: String,
    /// The service.
    #[arg(long)]
    service: String,
    /// Where to write the service's half.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `kagi broker login`.
#[derive(Args)]
pub struct LoginArgs {
    /// The broker (http://host:port); repeat for instances to fail over between.
    #[arg(long, required = true)]
    broker: Vec<String>,
    /// An HTTPS broker's certificate (or CA) to trust instead of the system's roots.
    #[arg(long)]
    broker_ca: Option<PathBuf>,
    /// The service to act at.
    #[arg(long)]
    service: String,
    /// The service's own login (http://host:port of a service like `kagi-example-service`):
    /// its challenge is fetched, answered through the broker and handed back, and the
    /// service's answer printed.
    #[arg(long)]
    service_url: Option<String>,
    /// The service's challenge (base64url) for MAC and signature services.
    #[arg(long)]
    challenge: Option<String>,
    /// The service's nonce for assertion services.
    #[arg(long)]
    nonce: Option<String>,
    /// Consent to the broker authenticating at the service (otherwise asked).
    #[arg(long)]
    consent: bool,
    /// Log in with a password instead of the card: the holder id.
    #[arg(long, requires = "password_file")]
    holder: Option<String>,
    /// The password file (first line).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Also print the holder's audit trail.
    #[arg(long)]
    audit: bool,
    /// The card (for a card login).
    #[command(flatten)]
    target: Target,
    /// The card's authentication PIN.
    #[command(flatten)]
    pin: PinSource,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminFile {
    party: String,
    signing_key: String,
    broker: Vec<String>,
    broker_party: String,
    broker_public_key: String,
    #[serde(default)]
    broker_ca: Option<String>,
}

/// Runs `kagi broker …`.
pub fn run(cmd: &BrokerCmd, trace: bool, json_out: bool) -> Result<(), Failure> {
    match cmd {
        BrokerCmd::Init {
            dir,
            listen,
            ca_dir,
            tls,
            hsm_keks,
        } => init(dir, listen, ca_dir, *tls, *hsm_keks, json_out),
        BrokerCmd::NewKek {
            id,
            keys:
                KeyStoreArgs {
                    insecure_file_keys,
                    hsm,
                },
        } => {
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!("--id {id}: letters, digits, - and _ only").into());
            }
            match (insecure_file_keys, &hsm.hsm_module) {
                (Some(dir), _) => {
                    broker_server::FileEnvelope::new_kek(dir, id)?;
                    if json_out {
                        print_json(json!({"kek": id, "store": "files",
                            "file": dir.join(format!("kek-{id}.key")).display().to_string()}));
                    } else {
                        println!(
                            "KEK {id} written to {}/kek-{id}.key (development only)",
                            dir.display()
                        );
                    }
                }
                (None, Some(_)) => {
                    let config = hsm.config()?;
                    kagi_hsm::create_kek(&config, &hsm.pin()?, id)?;
                    if json_out {
                        print_json(json!({"kek": id, "store": "hsm", "token": config.token,
                            "label": format!("{}{id}", kagi_hsm::KEK_PREFIX)}));
                    } else {
                        println!(
                            "KEK {id} generated in token '{}' as {}{id} (non-extractable)",
                            config.token,
                            kagi_hsm::KEK_PREFIX
                        );
                    }
                }
                (None, None) => {
                    return Err("give --hsm-module … or --insecure-file-keys DIR".into());
                }
            }
            Ok(())
        }
        BrokerCmd::Serve(args) => serve(args),
        BrokerCmd::Admin {
            config,
            idempotency_key,
            cmd,
        } => admin_cmd(config, idempotency_key.as_deref(), cmd, json_out),
        BrokerCmd::Login(args) => login(args, trace, json_out),
        BrokerCmd::Scale(args) => scale::run(args, json_out),
        BrokerCmd::Import {
            offline,
            cards_file,
            service,
        } => {
            let loaded = load_broker(&offline.config, &offline.database, &offline.keys)?;
            let text = read_text(cards_file)?;
            let cards: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect();
            let made = runtime()?.block_on(async {
                let broker = open_broker(loaded.config, &loaded.databases).await?;
                Ok::<_, Failure>(broker.enrol_many(&cards, service).await?)
            })?;
            if json_out {
                print_json(json!({"cards": cards.len(), "credentials": made}));
            } else {
                println!("{} cards, {made} credentials made", cards.len());
            }
            Ok(())
        }
        BrokerCmd::Backup(args) => backup::backup(args, json_out),
        BrokerCmd::Restore(args) => backup::restore(args, json_out),
        BrokerCmd::VerifyRecords(offline) => {
            let loaded = load_broker(&offline.config, &offline.database, &offline.keys)?;
            let report = runtime()?.block_on(async {
                let broker = open_broker(loaded.config, &loaded.databases).await?;
                Ok::<_, Failure>(broker.verify_records().await?)
            })?;
            if json_out {
                print_json(json!({"records": report.records, "opened": report.opened,
                    "failed": report.failed, "by_kek": report.by_kek}));
            } else {
                println!(
                    "{} records: {} open, {} do not",
                    report.records,
                    report.opened,
                    report.failed.len()
                );
                for (k, n) in &report.by_kek {
                    println!("  under {k}: {n}");
                }
                for f in report.failed.iter().take(20) {
                    println!("  does not open: {f}");
                }
            }
            if report.failed.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} records do not open with this key store",
                    report.failed.len()
                )
                .into())
            }
        }
    }
}
