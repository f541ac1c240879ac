//! `kagi broker …`: the credential broker (serve it, its key-encryption keys, the
//! administrators' requests) and the holder's login.

use super::common::{
    LimitArgs, create_private_dir, init_logging, local_tls, party_id, random_hex, read_secret,
    read_text, rel, runtime, shutdown_signal, tls_files, write_private,
};
use super::jpki::PinSource;
use super::perso::HsmArgs;
use super::target::Target;
use super::{Failure, print_json};
use broker_protocol::Assurance;
use broker_protocol::api::{
    Act, ActResult, AdminRequest, AdminResponse, Method, PasswordLogin, ServicePolicy,
};
use clap::{Args, Subcommand};
use kagi_online::broker::BrokerClient;
use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tsm_protocol::PartyId;
use tsm_protocol::signing::{Policy, Signer, Trust};
use zeroize::Zeroizing;

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
    Scale(super::broker_scale::ScaleArgs),
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
        /// The card's authentication certificate (`kagi jpki read-cert --which auth`).
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
struct BrokerFile {
    name: String,
    signing_key: String,
    assertion_key: String,
    state_key: String,
    database: Vec<String>,
    listen: String,
    default_kek: String,
    #[serde(default = "default_session_minutes")]
    session_minutes: u64,
    card_cas: Vec<String>,
    #[serde(default)]
    revocation: Vec<String>,
    #[serde(default)]
    tls_cert: Option<String>,
    #[serde(default)]
    tls_key: Option<String>,
    #[serde(default)]
    admin: Vec<AdminEntry>,
    /// Timeouts, connection cap, rate limit (see the README's security section).
    #[serde(default)]
    limits: Option<kagi_serve::LimitsFile>,
}

fn default_session_minutes() -> u64 {
    30
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminEntry {
    party: String,
    public_key: String,
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

fn init(dir: &Path, listen: &str, ca_dir: &Path, tls: bool, hsm_keks: bool) -> Result<(), Failure> {
    create_private_dir(&dir.join("keys"))?;
    if dir.join("broker.toml").exists() {
        return Err(format!("{} already holds a broker configuration", dir.display()).into());
    }
    let ca_dir = std::path::absolute(ca_dir)?;
    if !ca_dir.join("auth-ca.crt.pem").exists() {
        return Err(format!(
            "{} has no auth-ca.crt.pem: create the test CAs with `kagi ca init --dir {}`",
            ca_dir.display(),
            ca_dir.display()
        )
        .into());
    }
    let broker = Signer::generate(party_id("broker:kagi")?)?;
    let admin = Signer::generate(party_id("admin:ops")?)?;
    let assertion = Signer::generate(party_id("broker:kagi")?)?;
    for (name, s) in [("broker", &broker), ("admin", &admin)] {
        write_private(
            &dir.join(format!("{name}.key.pem")),
            s.to_pkcs8_pem()?.as_bytes(),
        )?;
        std::fs::write(dir.join(format!("{name}.pub.pem")), s.public_pem()?)?;
    }
    write_private(
        &dir.join("assertion.key.pem"),
        assertion.to_pkcs8_pem()?.as_bytes(),
    )?;
    write_private(&dir.join("state.key"), random_hex(32)?.as_bytes())?;
    if !hsm_keks {
        broker_server::FileEnvelope::new_kek(&dir.join("keys"), "k1")?;
    }
    let (scheme, tls_lines, ca_line) = local_tls(dir, "kagi broker", "broker_ca", tls)?;
    let ca = ca_dir.display();
    std::fs::write(
        dir.join("broker.toml"),
        format!(
            "# kagi credential broker (generated by `kagi broker init`)\n\
name = \"broker:kagi\"\n\
signing_key = \"broker.key.pem\"\n\
assertion_key = \"assertion.key.pem\"\n\
state_key = \"state.key\"\n\
# One database per shard (SQLite files or postgres://…); cards are spread by hash.\n\
database = [\"broker.db\"]\n\
listen = \"{listen}\"\n\
default_kek = \"k1\"          # the KEK of new records until an administrator rotates it\n\
session_minutes = 30\n\
card_cas = [\"{ca}/auth-ca.crt.pem\"]\n\
# CRLs (.crl/.der/PEM) or serial lists; re-read when they change.\n\
revocation = [\"{ca}/auth-ca.crl.der\", \"{ca}/auth-ca.revoked\"]\n\
{tls_lines}\n\
[[admin]]\n\
party = \"admin:ops\"\n\
public_key = \"admin.pub.pem\"\n"
        ),
    )?;
    std::fs::write(
        dir.join("admin.toml"),
        format!(
            "party = \"admin:ops\"\nsigning_key = \"admin.key.pem\"\nbroker = [\"{scheme}://{listen}\"]\nbroker_party = \"broker:kagi\"\nbroker_public_key = \"broker.pub.pem\"\n{ca_line}"
        ),
    )?;
    println!(
        "broker configuration in {d}: broker.toml (serve it with `kagi broker serve --config {d}/broker.toml --insecure-file-keys {d}/keys`), admin.toml",
        d = dir.display()
    );
    Ok(())
}

fn key_store(
    insecure: &Option<PathBuf>,
    hsm: &HsmArgs,
) -> Result<Arc<dyn broker_server::Envelope>, Failure> {
    match (insecure, &hsm.hsm_module) {
        (Some(dir), _) => {
            eprintln!(
                "WARNING: insecure file key store {} in use: KEKs are plain files. Use an HSM in production.",
                dir.display()
            );
            Ok(Arc::new(broker_server::FileEnvelope::open_dir(dir)?))
        }
        (None, Some(_)) => Ok(Arc::new(kagi_hsm::HsmEnvelope::open(
            &hsm.config()?,
            &hsm.pin()?,
        )?)),
        (None, None) => Err(
            "give the key store: --hsm-module … (production) or --insecure-file-keys DIR (development)".into(),
        ),
    }
}

fn p256_key(path: &Path) -> Result<p256::ecdsa::SigningKey, Failure> {
    use p256::pkcs8::DecodePrivateKey;
    let pem = read_secret(path)?;
    Ok(p256::ecdsa::SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| format!("{}: {e}", path.display()))?)
}

/// The broker's configuration file, read: its config, databases, address and TLS files.
struct Loaded {
    config: broker_server::Config,
    databases: Vec<String>,
    listen: String,
    tls: Option<kagi_serve::TlsFiles>,
    limits: Option<kagi_serve::LimitsFile>,
}

fn load_broker(base: &Path, database: &[String], keys: &KeyStoreArgs) -> Result<Loaded, Failure> {
    let text = read_text(base)?;
    let f: BrokerFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", base.display()))?;
    let me = party_id(&f.name)?;
    let mut admin_trust = Trust::new();
    for a in &f.admin {
        admin_trust.add_pem(party_id(&a.party)?, &read_text(&rel(base, &a.public_key))?)?;
    }
    let state = read_secret(&rel(base, &f.state_key))?;
    let state_bytes = Zeroizing::new(super::parse_hex("state_key", &state)?);
    let state_key: [u8; 32] = state_bytes
        .as_slice()
        .try_into()
        .map_err(|_| "state_key: 32 bytes (64 hex digits) expected")?;
    let envelope = key_store(&keys.insecure_file_keys, &keys.hsm)?;
    if !envelope.keks().contains(&f.default_kek) {
        return Err(format!(
            "the key store ({}) holds no KEK '{}' (default_kek): make it with `kagi broker new-kek --id {}`",
            envelope.describe(),
            f.default_kek,
            f.default_kek
        )
        .into());
    }
    let config = broker_server::Config {
        name: f.name.clone(),
        signer: Signer::from_pkcs8_pem(me.clone(), &read_secret(&rel(base, &f.signing_key))?)?,
        assertion_key: p256_key(&rel(base, &f.assertion_key))?,
        admin_trust,
        policy: Policy::new(me),
        card_trust: broker_server::service::CardTrust::new(
            f.card_cas.iter().map(|c| rel(base, c)).collect(),
            f.revocation.iter().map(|c| rel(base, c)).collect(),
        ),
        envelope,
        default_kek: f.default_kek.clone(),
        state_key: Zeroizing::new(state_key),
        session_secs: f.session_minutes * 60,
    };
    // Fail at start, not at the first login, when a CA file is missing or malformed.
    config.card_trust.current()?;
    let databases = if database.is_empty() {
        f.database
            .iter()
            .map(|d| {
                if d.starts_with("postgres") {
                    d.clone()
                } else {
                    rel(base, d).display().to_string()
                }
            })
            .collect()
    } else {
        database.to_vec()
    };
    let listen = f.listen.clone();
    let tls = tls_files(base, &f.tls_cert, &f.tls_key)?;
    Ok(Loaded {
        config,
        databases,
        listen,
        tls,
        limits: f.limits.clone(),
    })
}

async fn open_broker(
    loaded_config: broker_server::Config,
    databases: &[String],
) -> Result<Arc<broker_server::Broker>, Failure> {
    let backends: Vec<kagi_db::Backend> = databases
        .iter()
        .map(|d| kagi_db::Backend::parse(d))
        .collect();
    let shards = broker_server::Shards::open(&backends).await?;
    Ok(Arc::new(broker_server::Broker::new(loaded_config, shards)))
}

fn serve(args: &ServeArgs) -> Result<(), Failure> {
    init_logging(args.log_json);
    let Loaded {
        config,
        databases,
        listen,
        tls,
        limits,
    } = load_broker(&args.config, &args.database, &args.keys)?;
    let limits = args.limits.limits(limits.as_ref())?;
    let listen = args.listen.clone().unwrap_or(listen);
    let sweep = std::time::Duration::from_secs(args.sweep_seconds.max(1));
    runtime()?.block_on(async move {
        let broker = open_broker(config, &databases).await?;
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        tracing::info!(
            listen = %listener.local_addr()?,
            https = tls.is_some(),
            shards = databases.len(),
            database = broker.shards().first().0.describe(),
            keys = %broker.envelope().describe(),
            name = %broker.name(),
            "broker serving"
        );
        tracing::info!(?limits, "limits");
        broker_server::http::serve_limited(
            broker,
            listener,
            shutdown_signal(),
            tls,
            sweep,
            &limits,
        )
        .await?;
        Ok::<(), Failure>(())
    })
}

/// An administrator: its signer, the broker's party and key, and the client.
struct Admin {
    signer: Signer,
    broker: PartyId,
    trust: Trust,
    client: BrokerClient,
}

fn load_admin(config: &Path) -> Result<Admin, Failure> {
    let text = read_text(config)?;
    let f: AdminFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    let broker = party_id(&f.broker_party)?;
    let mut trust = Trust::new();
    trust.add_pem(
        broker.clone(),
        &read_text(&rel(config, &f.broker_public_key))?,
    )?;
    let ca = f
        .broker_ca
        .as_ref()
        .map(|c| std::fs::read(rel(config, c)))
        .transpose()?;
    Ok(Admin {
        signer: Signer::from_pkcs8_pem(
            party_id(&f.party)?,
            &read_secret(&rel(config, &f.signing_key))?,
        )?,
        broker,
        trust,
        client: BrokerClient::new(&f.broker, ca.as_deref())?,
    })
}

fn parse_hours(s: &str) -> Result<(u8, u8), Failure> {
    let bad = || format!("--hours {s}: use FROM-TO in whole UTC hours, e.g. 8-20");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u8, u8) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a > 23 || b > 24 || a == b {
        return Err(bad().into());
    }
    Ok((a, b % 24))
}

/// Writes the service's half of a credential: a public key as PEM, a MAC key as hex (0600).
fn write_service_half(
    out: &Path,
    public_key: &Option<Vec<u8>>,
    shared: &Option<Vec<u8>>,
) -> Result<String, Failure> {
    match (public_key, shared) {
        (Some(pk), _) => {
            std::fs::write(out, kagi_perso::pki::to_pem(pk, "PUBLIC KEY")?)?;
            Ok(format!("public key written to {}", out.display()))
        }
        (None, Some(k)) => {
            let hex = Zeroizing::new(hex::encode_upper(k));
            write_private(out, hex.as_bytes())?;
            Ok(format!(
                "MAC key written to {} (give it to the service only)",
                out.display()
            ))
        }
        (None, None) => {
            Ok("nothing to write: an assertion service needs only the broker's keys".into())
        }
    }
}

fn admin_cmd(config: &Path, cmd: &AdminCmd, json_out: bool) -> Result<(), Failure> {
    let admin = load_admin(config)?;
    let mut enrolled = None;
    let req = match cmd {
        AdminCmd::RegisterService {
            id,
            method,
            min_assurance,
            hours,
        } => AdminRequest::RegisterService(ServicePolicy {
            id: id.clone(),
            method: Method::parse(method).ok_or_else(|| {
                format!("--method {method}: use mac, sign-p256, sign-rsa or assertion")
            })?,
            min_assurance: Assurance::parse(min_assurance)
                .ok_or_else(|| format!("--min-assurance {min_assurance}: use card or password"))?,
            allowed_hours: hours.as_deref().map(parse_hours).transpose()?,
        }),
        AdminCmd::EnrolCard {
            cert,
            card,
            holder,
            password_file,
        } => {
            let card = match (cert, card) {
                (Some(p), _) => kagi_online::broker::card_id(&kagi_perso::pki::pem_or_der(
                    &std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?,
                    "CERTIFICATE",
                )?)
                .map_err(|e| format!("{}: {e}", p.display()))?,
                (None, Some(c)) => c.clone(),
                (None, None) => return Err("give --cert FILE or --card ID".into()),
            };
            let password = match password_file {
                Some(p) => {
                    let pw = read_secret(p)?;
                    if pw.len() < 8 {
                        return Err("the password must have at least 8 characters".into());
                    }
                    // Argon2id at the broker's floor (m=19456 KiB, t=2, p=1).
                    Some(
                        tsm_protocol::password::new_verifier(
                            &pw,
                            &tsm_protocol::password::Params::OWASP_MIN,
                        )
                        .map_err(|e| e.to_string())?,
                    )
                }
                None => None,
            };
            enrolled = Some(card.clone());
            AdminRequest::EnrolCard {
                card,
                holder: holder.clone(),
                password,
            }
        }
        AdminCmd::Enrol(c) => AdminRequest::EnrolCredential {
            card: c.card.clone(),
            service: c.service.clone(),
        },
        AdminCmd::RotateKey(c) => AdminRequest::RotateServiceKey {
            card: c.card.clone(),
            service: c.service.clone(),
        },
        AdminCmd::RotateKek { to } => AdminRequest::RotateKek { to: to.clone() },
        AdminCmd::Revoke { card } => AdminRequest::RevokeCard { card: card.clone() },
        AdminCmd::Audit { card } => AdminRequest::Audit { card: card.clone() },
    };
    let answer = runtime()?.block_on(admin.client.admin(
        &admin.signer,
        &admin.broker,
        &admin.trust,
        &req,
    ))?;
    match answer {
        AdminResponse::Rejected { code, detail } => {
            Err(format!("the broker refused: {detail} ({code})").into())
        }
        AdminResponse::Ok => {
            if json_out {
                print_json(json!({"ok": true, "card": enrolled}));
            } else if let Some(card) = enrolled {
                println!("enrolled card {card}");
            } else {
                println!("ok");
            }
            Ok(())
        }
        AdminResponse::Credential {
            version,
            public_key,
            shared_key,
        } => {
            let out = match cmd {
                AdminCmd::Enrol(c) | AdminCmd::RotateKey(c) => c.out.clone(),
                _ => None,
            };
            let written = match &out {
                Some(o) => write_service_half(o, &public_key, &shared_key)?,
                None if shared_key.is_some() => {
                    "the MAC key was not written (give --out FILE): ask again with --out".into()
                }
                None => String::new(),
            };
            if json_out {
                print_json(json!({"version": version, "written": written}));
            } else {
                println!("credential version {version}. {written}");
            }
            Ok(())
        }
        AdminResponse::Rotation {
            kek,
            rewrapped,
            remaining,
        } => {
            if json_out {
                print_json(json!({"kek": kek, "rewrapped": rewrapped, "remaining": remaining}));
            } else {
                println!(
                    "new records under {kek}; {rewrapped} re-wrapped now, {remaining} left (the broker continues in the background)"
                );
            }
            Ok(())
        }
        AdminResponse::Audit(entries) => {
            if json_out {
                print_json(json!({"audit": entries}));
            } else {
                print_audit(&entries);
            }
            Ok(())
        }
    }
}

fn print_audit(entries: &[broker_protocol::api::AuditEntry]) {
    for e in entries {
        let at = der::DateTime::from_unix_duration(std::time::Duration::from_millis(e.at))
            .map(|t| t.to_string())
            .unwrap_or_else(|_| e.at.to_string());
        println!(
            "{at}  {:<20}  {:<12}  {:<12}  {:<8}  {}",
            e.card, e.event, e.service, e.assurance, e.outcome
        );
    }
}

/// Asks the holder to consent on the terminal (refused when there is none).
fn ask_consent(service: &str) -> Result<(), Failure> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(format!(
            "the broker acts at {service} only with the holder's consent: give --consent"
        )
        .into());
    }
    eprint!("Let the broker authenticate you at {service}? [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err("not consented: nothing was done".into())
    }
}

/// What a service's login start gives (the example service's `POST /login/start`).
#[derive(Deserialize)]
struct ServiceStart {
    nonce: Option<String>,
    challenge: Option<String>,
}

async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<(u16, serde_json::Value), Failure> {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body)?)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = r.status().as_u16();
    let bytes = r.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({"text": String::from_utf8_lossy(&bytes)}));
    Ok((status, v))
}

fn login(args: &LoginArgs, trace: bool, json_out: bool) -> Result<(), Failure> {
    if !args.consent {
        ask_consent(&args.service)?;
    }
    let ca = args.broker_ca.as_ref().map(std::fs::read).transpose()?;
    let client = BrokerClient::new(&args.broker, ca.as_deref())?;
    let http = kagi_online::tsm::client::http_client(None)?;
    runtime()?.block_on(async {
        // The service's challenge first (a service login), else what was given.
        let (nonce, challenge) = match &args.service_url {
            Some(url) => {
                let (status, v) = post_json(&http, &format!("{url}/login/start"), &json!({})).await?;
                if status != 200 {
                    return Err(format!("the service refused to start a login: {v}").into());
                }
                let s: ServiceStart = serde_json::from_value(v)?;
                (s.nonce, s.challenge)
            }
            None => (args.nonce.clone(), args.challenge.clone()),
        };
        let session = match (&args.holder, &args.password_file) {
            (Some(holder), Some(pw)) => {
                let password = read_secret(pw)?;
                client
                    .login_password(&PasswordLogin {
                        holder: holder.clone(),
                        password: password.to_string(),
                    })
                    .await?
            }
            _ => {
                let pin = args.pin.read(kagi::jpki::Pin::Auth)?;
                let mut ch = args.target.open(trace)?;
                let session = kagi_online::broker::login_with_card(&client, &mut ch, &pin).await;
                args.target.finish(&ch)?;
                session?
            }
        };
        let result: ActResult = client
            .act(&Act {
                session: session.session.clone(),
                service: args.service.clone(),
                consent: true,
                challenge,
                nonce: nonce.clone(),
            })
            .await?;
        let audit = if args.audit {
            Some(client.audit(&session.session).await?)
        } else {
            None
        };
        let service_answer = match &args.service_url {
            Some(url) => {
                let (status, v) = post_json(
                    &http,
                    &format!("{url}/login/finish"),
                    &json!({"nonce": nonce, "assertion": result.assertion, "mac": result.mac, "signature": result.signature}),
                )
                .await?;
                if status != 200 {
                    return Err(format!("the service refused the login: {v}").into());
                }
                Some(v)
            }
            None => None,
        };
        if json_out {
            print_json(json!({
                "assurance": session.assurance,
                "service": result.service,
                "method": result.method,
                "assertion": result.assertion,
                "mac": result.mac,
                "signature": result.signature,
                "service_answer": service_answer,
                "audit": audit,
            }));
        } else {
            println!("logged in at the broker ({} assurance)", session.assurance.name());
            match (&service_answer, &result.assertion, &result.mac, &result.signature) {
                (Some(v), ..) => println!("{} accepted the login: {v}", args.service),
                (None, Some(a), ..) => println!("assertion for {}:\n{a}", args.service),
                (None, None, Some(m), _) => println!("MAC over the challenge: {m}"),
                (None, None, None, Some(s)) => println!("signature over the challenge: {s}"),
                _ => {}
            }
            if let Some(a) = &audit {
                print_audit(a);
            }
        }
        Ok(())
    })
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
        } => init(dir, listen, ca_dir, *tls, *hsm_keks),
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
                    println!(
                        "KEK {id} written to {}/kek-{id}.key (development only)",
                        dir.display()
                    );
                }
                (None, Some(_)) => {
                    let config = hsm.config()?;
                    kagi_hsm::create_kek(&config, &hsm.pin()?, id)?;
                    println!(
                        "KEK {id} generated in token '{}' as {}{id} (non-extractable)",
                        config.token,
                        kagi_hsm::KEK_PREFIX
                    );
                }
                (None, None) => {
                    return Err("give --hsm-module … or --insecure-file-keys DIR".into());
                }
            }
            Ok(())
        }
        BrokerCmd::Serve(args) => serve(args),
        BrokerCmd::Admin { config, cmd } => admin_cmd(config, cmd, json_out),
        BrokerCmd::Login(args) => login(args, trace, json_out),
        BrokerCmd::Scale(args) => super::broker_scale::run(args, json_out),
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
