//! `kagi tsm …` (the TSM server, the provider's and operator's tools, the audit trail) and
//! `kagi relay` (the phone app's part).

use super::common::{
    LimitArgs, aes_key_file, create_private_dir, init_logging, local_tls, party_id, random_hex,
    read_secret, read_text, rel, runtime, shutdown_signal, tls_files, write_private,
};
use super::{Failure, parse_hex, print_json};
use card_wire::scp03::AesKey;
use clap::{Args, Subcommand};
use kagi_online::tsm::client::{Client, Link};
use kagi_online::tsm::provider::{self, CardKey, Party};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tsm_protocol::OpId;
use tsm_protocol::control::{
    AppletRef, CardTarget, ControlRequest, ControlResponse, RevokeReason, WalletChange,
    WalletUpdate,
};
use tsm_protocol::relay::UserCredentials;
use tsm_protocol::signing::{Policy, Signer, Trust};

#[derive(Subcommand)]
pub enum TsmCmd {
    /// Create a TSM's keys and configuration, with a demo provider and operator, in DIR:
    /// tsm.toml, sp.toml, mno.toml, their P-256 keys, the provider's content key and its
    /// security-domain master keys (keys/provider.keys, development only).
    Init {
        /// Where to write (created).
        #[arg(long)]
        dir: PathBuf,
        /// The TSM's address in the configuration files.
        #[arg(long, default_value = "127.0.0.1:8750")]
        listen: String,
        /// Serve HTTPS with a self-signed certificate made here (tls.crt.pem, tls.key.pem;
        /// for 127.0.0.1 and localhost) that the provider's, operator's and relay's
        /// configurations pin.
        #[arg(long)]
        tls: bool,
    },
    /// Run the TSM until SIGINT or SIGTERM (requests in flight finish).
    Serve(ServeArgs),
    /// A service provider's requests to the TSM.
    Provider {
        /// The provider's configuration (sp.toml from `kagi tsm init`).
        #[arg(long)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: ProviderCmd,
    },
    /// The mobile operator's notices to the TSM.
    Mno {
        /// The operator's configuration (mno.toml from `kagi tsm init`).
        #[arg(long)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: MnoCmd,
    },
    /// Print the audit trail from the TSM's database.
    Audit {
        /// The database (a SQLite file or postgres://…).
        #[arg(long)]
        database: String,
        /// Only this operation.
        #[arg(long)]
        op: Option<String>,
    },
    /// Drive many download sessions against a TSM (loopback only) and report sessions per
    /// second and the TSM's time per session.
    Load(super::tsm_load::LoadArgs),
}

/// `kagi tsm serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The TSM's configuration (tsm.toml).
    #[arg(long)]
    config: PathBuf,
    /// The database: a SQLite file (default: the configuration's) or postgres://user@host/db
    /// for several instances sharing state.
    #[arg(long)]
    database: Option<String>,
    /// Listen here instead of the configuration's address.
    #[arg(long)]
    listen: Option<String>,
    /// Logs as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Development key store for the providers' security-domain master keys (DIR/NAME.keys).
    #[arg(long, conflicts_with = "hsm_module")]
    insecure_file_keys: Option<PathBuf>,
    #[command(flatten)]
    hsm: super::perso::HsmArgs,
    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(Subcommand)]
pub enum ProviderCmd {
    /// Issue a JPKI user-authentication credential to a SIM: the key is made here (the JPKI
    /// side), certified by the test CA, sealed with the content key together with the PIN;
    /// prints the operation, the device ticket and the one-time access code to deliver.
    Issue {
        /// The SIM.
        #[arg(long)]
        iccid: String,
        /// The test CA directory (`kagi ca init`).
        #[arg(long)]
        ca_dir: PathBuf,
        /// File with the authentication PIN (4 digits).
        #[arg(long)]
        pin_file: PathBuf,
        /// File with the user's password (as registered with the provider).
        #[arg(long)]
        password_file: PathBuf,
        /// An RSA-2048 key (as the My Number card's) instead of P-256.
        #[arg(long)]
        rsa: bool,
        /// The My Number card signature-certificate serial the application was signed with.
        #[arg(long, default_value = "00")]
        my_number_serial: String,
        /// Write the operation, ticket, access code and certificate here (JSON; the
        /// certificate next to it as .crt.der).
        #[arg(long)]
        out: PathBuf,
        /// Minutes the download may take to happen.
        #[arg(long, default_value_t = 30)]
        valid_minutes: u64,
    },
    /// An operation's state.
    Status {
        /// The operation.
        #[arg(long)]
        op: String,
    },
    /// Check an issuance's receipt: signed by the TSM, for this request and certificate, and
    /// the on-card key proof verifies.
    Receipt {
        /// The JSON `issue` wrote.
        #[arg(long)]
        issued: PathBuf,
    },
    /// Revoke a credential (effective at once).
    Revoke {
        /// The issuing operation.
        #[arg(long)]
        credential: String,
        /// card-lost, superseded, user-request, expired.
        #[arg(long, default_value = "card-lost")]
        reason: String,
    },
    /// A credential's standing.
    Check {
        /// The issuing operation.
        #[arg(long)]
        credential: String,
    },
    /// Set a new PIN on the card, through the relay.
    ResetPin {
        /// The issuing operation.
        #[arg(long)]
        credential: String,
        /// File with the new PIN.
        #[arg(long)]
        pin_file: PathBuf,
        /// File with the user's password.
        #[arg(long)]
        password_file: PathBuf,
        /// Where to write the ticket and access code (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write wallet data (member id, tickets, points) through the relay.
    Wallet {
        /// The SIM.
        #[arg(long)]
        iccid: String,
        /// Set the member id.
        #[arg(long)]
        member: Option<String>,
        /// Add a ticket.
        #[arg(long)]
        ticket: Vec<String>,
        /// Add (or take, negative) points.
        #[arg(long, allow_hyphen_values = true)]
        points: Option<i32>,
        /// File with the user's password.
        #[arg(long)]
        password_file: PathBuf,
        /// Where to write the ticket and access code (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// Cancel an operation that has not completed.
    Cancel {
        /// The operation.
        #[arg(long)]
        op: String,
    },
}

#[derive(Subcommand)]
pub enum MnoCmd {
    /// Register a SIM (its ICCID, card image number and the provider's domain on it).
    RegisterCard {
        /// ICCID.
        #[arg(long)]
        iccid: String,
        /// Card image number (hex).
        #[arg(long)]
        cin: String,
        /// The provider domain's AID.
        #[arg(long, default_value = "A00000015153505001")]
        sd: String,
        /// Free memory on record, bytes.
        #[arg(long, default_value_t = 65536)]
        free_memory: u32,
    },
    /// Create a provider's security domain on a SIM through the relay (the issuer domain's
    /// keys, then the provider's keys in place of the domain's initial ones); writes the
    /// ticket and access code for the user.
    CreateSd {
        /// ICCID.
        #[arg(long)]
        iccid: String,
        /// The new domain's AID.
        #[arg(long, default_value = "A00000015153505001")]
        sd: String,
        /// The provider it is for.
        #[arg(long, default_value = "sp:kagi-bank")]
        provider: String,
        /// File with the user's password.
        #[arg(long)]
        password_file: PathBuf,
        /// Where to write the ticket and access code (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// The SIM was lost: every credential on it is revoked at once.
    CardLost {
        /// ICCID.
        #[arg(long)]
        iccid: String,
    },
    /// The subscriber moved to another SIM.
    SimChanged {
        /// Old ICCID.
        #[arg(long)]
        old: String,
        /// New ICCID.
        #[arg(long)]
        new: String,
    },
    /// Whether a SIM can take a credential.
    Eligibility {
        /// ICCID.
        #[arg(long)]
        iccid: String,
        /// Bytes needed.
        #[arg(long, default_value_t = 8192)]
        memory: u32,
    },
}

/// `kagi relay`: the phone app's part.
#[derive(Args)]
pub struct RelayArgs {
    /// The TSM (http://host:port).
    #[arg(long)]
    tsm: String,
    /// File with the device ticket.
    #[arg(long)]
    ticket_file: PathBuf,
    /// File with the access code (else asked for).
    #[arg(long)]
    access_code_file: Option<PathBuf>,
    /// File with the password (else asked for).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// The card: a reader or the simulator.
    #[command(flatten)]
    target: super::Target,
    /// Model the phone's network: lte (50 ms round trip), 3g (300 ms), none, or milliseconds.
    #[arg(long, default_value = "none")]
    link: String,
    /// Append every message carried (both directions) to this file, to inspect what a relay
    /// sees.
    #[arg(long)]
    capture: Option<PathBuf>,
    /// Give up when the TSM is unreachable this long (seconds).
    #[arg(long, default_value_t = 300)]
    retry_for: u64,
    /// An HTTPS TSM's certificate (or CA) to trust instead of the system's roots.
    #[arg(long)]
    tsm_ca: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TsmFile {
    name: String,
    signing_key: String,
    state_key: String,
    database: String,
    listen: String,
    #[serde(default)]
    revocation_list: Option<String>,
    /// HTTPS: the server certificate (PEM chain) and key (PKCS#8 PEM).
    #[serde(default)]
    tls_cert: Option<String>,
    #[serde(default)]
    tls_key: Option<String>,
    #[serde(default)]
    provider: Vec<ProviderEntry>,
    #[serde(default)]
    operator: Vec<OperatorEntry>,
    /// Timeouts, connection cap, rate limit (see the README's security section).
    #[serde(default)]
    limits: Option<kagi_serve::LimitsFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderEntry {
    party: String,
    public_key: String,
    security_domain: String,
    kvn: String,
    keys: String,
    content_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorEntry {
    party: String,
    public_key: String,
    /// The operator's issuer-domain master keys (key set name, like a provider's `keys`), for
    /// the MNO-TSM role: creating providers' domains.
    #[serde(default)]
    isd_keys: Option<String>,
    #[serde(default = "default_isd_kvn")]
    isd_kvn: String,
    #[serde(default = "default_isd")]
    isd: String,
    #[serde(default = "default_none")]
    isd_diversification: String,
}

fn default_isd_kvn() -> String {
    "30".into()
}
fn default_isd() -> String {
    "A000000151000000".into()
}
fn default_none() -> String {
    "none".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartyFile {
    party: String,
    signing_key: String,
    tsm: String,
    tsm_party: String,
    tsm_public_key: String,
    #[serde(default)]
    content_key: Option<String>,
    /// An HTTPS TSM's certificate (or CA) to trust, instead of the system's roots.
    #[serde(default)]
    tsm_ca: Option<String>,
}

fn init(dir: &Path, listen: &str, tls: bool) -> Result<(), Failure> {
    create_private_dir(&dir.join("keys"))?;
    if dir.join("tsm.toml").exists() {
        return Err(format!("{} already holds a TSM configuration", dir.display()).into());
    }
    let tsm = Signer::generate(party_id("tsm:kagi")?)?;
    let sp = Signer::generate(party_id("sp:kagi-bank")?)?;
    let mno = Signer::generate(party_id("mno:kagi-mobile")?)?;
    for (name, s) in [("tsm", &tsm), ("sp", &sp), ("mno", &mno)] {
        write_private(
            &dir.join(format!("{name}.key.pem")),
            s.to_pkcs8_pem()?.as_bytes(),
        )?;
        std::fs::write(dir.join(format!("{name}.pub.pem")), s.public_pem()?)?;
    }
    write_private(&dir.join("state.key"), random_hex(16)?.as_bytes())?;
    write_private(&dir.join("content.key"), random_hex(16)?.as_bytes())?;
    write_private(
        &dir.join("keys/provider.keys"),
        format!(
            "# DEVELOPMENT ONLY: the provider's security-domain master keys (kdf3 per card).\nENC={}\nMAC={}\nDEK={}\n",
            *random_hex(16)?,
            *random_hex(16)?,
            *random_hex(16)?
        )
        .as_bytes(),
    )?;
    let (scheme, tls_lines, ca_line) = local_tls(dir, "kagi TSM", "tsm_ca", tls)?;
    write_private(
        &dir.join("keys/isd.keys"),
        b"# DEVELOPMENT ONLY: the operator's issuer-domain keys of the simulated SIMs (the GP test key).\nKEY=404142434445464748494A4B4C4D4E4F\n",
    )?;
    std::fs::write(
        dir.join("tsm.toml"),
        format!(
            "# kagi TSM (generated by `kagi tsm init`)\nname = \"tsm:kagi\"\nsigning_key = \"tsm.key.pem\"\nstate_key = \"state.key\"\ndatabase = \"tsm.db\"\nlisten = \"{listen}\"\nrevocation_list = \"revoked.txt\"\n{tls_lines}\n[[provider]]\nparty = \"sp:kagi-bank\"\npublic_key = \"sp.pub.pem\"\nsecurity_domain = \"A00000015153505001\"\nkvn = \"31\"\nkeys = \"provider\"          # DIR/provider.keys with --insecure-file-keys DIR, or HSM label\ncontent_key = \"content.key\"\n\n[[operator]]\nparty = \"mno:kagi-mobile\"\npublic_key = \"mno.pub.pem\"\nisd_keys = \"isd\"              # the MNO-TSM role: the issuer domains' keys (creating providers' domains)\nisd_kvn = \"30\"\n"
        ),
    )?;
    for (file, who) in [("sp.toml", "sp:kagi-bank"), ("mno.toml", "mno:kagi-mobile")] {
        let key = if who.starts_with("sp") { "sp" } else { "mno" };
        let content = if key == "sp" {
            "content_key = \"content.key\"\n"
        } else {
            ""
        };
        std::fs::write(
            dir.join(file),
            format!(
                "party = \"{who}\"\nsigning_key = \"{key}.key.pem\"\ntsm = \"{scheme}://{listen}\"\ntsm_party = \"tsm:kagi\"\ntsm_public_key = \"tsm.pub.pem\"\n{ca_line}{content}"
            ),
        )?;
    }
    println!(
        "TSM configuration in {}: tsm.toml (serve it with `kagi tsm serve --config {}/tsm.toml --insecure-file-keys {}/keys`), sp.toml, mno.toml",
        dir.display(),
        dir.display(),
        dir.display()
    );
    Ok(())
}

type Loaded = (
    tsm_server::service::Config,
    String,
    String,
    Option<tsm_server::http::TlsFiles>,
    kagi_serve::Limits,
);

fn load_config(args: &ServeArgs) -> Result<Loaded, Failure> {
    let text = read_text(&args.config)?;
    let f: TsmFile =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", args.config.display()))?;
    let base = &args.config;
    let me = party_id(&f.name)?;
    let signer = Signer::from_pkcs8_pem(me.clone(), &read_secret(&rel(base, &f.signing_key))?)?;
    let mut trust = Trust::new();
    let mut providers = BTreeMap::new();
    let hsm = match (&args.insecure_file_keys, &args.hsm.hsm_module) {
        (Some(_), _) => None,
        (None, Some(_)) => Some((args.hsm.config()?, args.hsm.pin()?)),
        (None, None) => {
            return Err(
                "give the providers' master keys: --hsm-module … (production) or --insecure-file-keys DIR (development)".into(),
            );
        }
    };
    if let Some(dir) = &args.insecure_file_keys {
        eprintln!(
            "WARNING: insecure file key store {} in use: keys are read from plain files. Use an HSM in production.",
            dir.display()
        );
    }
    for p in &f.provider {
        let party = party_id(&p.party)?;
        trust.add_pem(party.clone(), &read_text(&rel(base, &p.public_key))?)?;
        let kvn = u8::from_str_radix(&p.kvn, 16)
            .map_err(|_| format!("provider {}: kvn '{}' is not a hex byte", p.party, p.kvn))?;
        let keys: Arc<dyn card_wire::scp03::CardKeys> = match (&args.insecure_file_keys, &hsm) {
            (Some(dir), _) => Arc::new(kagi_fixtures::sim::provider_keys(
                kagi::keys::read_key_file(&dir.join(format!("{}.keys", p.keys)), kvn)?,
                kvn,
            )),
            (None, Some((config, pin))) => {
                let config = kagi_hsm::HsmConfig {
                    key: p.keys.clone(),
                    ..config.clone()
                };
                Arc::new(kagi_hsm::HsmMaster::open(&config, pin, kvn)?)
            }
            (None, None) => unreachable!("checked above"),
        };
        providers.insert(
            party,
            tsm_server::service::Provider {
                sd_aid: parse_hex("security_domain", &p.security_domain)?,
                kvn,
                keys,
                content_key: aes_key_file(&rel(base, &p.content_key))?,
            },
        );
    }
    let mut operators = BTreeMap::new();
    for o in &f.operator {
        let party = party_id(&o.party)?;
        trust.add_pem(party.clone(), &read_text(&rel(base, &o.public_key))?)?;
        if let Some(name) = &o.isd_keys {
            let kvn = u8::from_str_radix(&o.isd_kvn, 16).map_err(|_| {
                format!(
                    "operator {}: isd_kvn '{}' is not a hex byte",
                    o.party, o.isd_kvn
                )
            })?;
            let scheme: card_wire::scp03::Diversification = o.isd_diversification.parse()?;
            let keys: Arc<dyn card_wire::scp03::CardKeys> = match (&args.insecure_file_keys, &hsm) {
                (Some(dir), _) => Arc::new(card_wire::scp03::DiversifiedMaster {
                    master: kagi::keys::read_key_file(&dir.join(format!("{name}.keys")), kvn)?,
                    scheme,
                    kvn,
                }),
                (None, Some((config, pin))) => {
                    let config = kagi_hsm::HsmConfig {
                        key: name.clone(),
                        ..config.clone()
                    };
                    Arc::new(kagi_hsm::HsmMaster::open(&config, pin, kvn)?)
                }
                (None, None) => unreachable!("checked above"),
            };
            operators.insert(
                party,
                tsm_server::service::Operator {
                    isd_aid: parse_hex("isd", &o.isd)?,
                    kvn,
                    keys,
                },
            );
        }
    }
    let database = args.database.clone().unwrap_or_else(|| {
        if f.database.starts_with("postgres") {
            f.database.clone()
        } else {
            rel(base, &f.database).display().to_string()
        }
    });
    let listen = args.listen.clone().unwrap_or(f.listen.clone());
    let tls = tls_files(base, &f.tls_cert, &f.tls_key)?;
    let limits = args.limits.limits(f.limits.as_ref())?;
    Ok((
        tsm_server::service::Config {
            signer,
            trust,
            policy: Policy::new(me),
            providers,
            operators,
            state_key: aes_key_file(&rel(base, &f.state_key))?,
            revocation_list: f.revocation_list.as_ref().map(|r| rel(base, r)),
        },
        database,
        listen,
        tls,
        limits,
    ))
}

fn serve(args: &ServeArgs) -> Result<(), Failure> {
    init_logging(args.log_json);
    let (config, database, listen, tls, limits) = load_config(args)?;
    runtime()?.block_on(async move {
        let backend = tsm_server::store::Backend::parse(&database);
        let store = tsm_server::store::Store::open(&backend).await?;
        let tsm = Arc::new(tsm_server::service::Tsm::new(config, store));
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        tracing::info!(listen = %listener.local_addr()?, https = tls.is_some(), database = tsm.store().describe(), party = %tsm.party(), "TSM serving");
        tracing::info!(?limits, "limits");
        tsm_server::http::serve_limited(tsm, listener, shutdown_signal(), tls, &limits).await?;
        Ok::<(), Failure>(())
    })
}

/// A provider's or operator's identity and its TSM, from its configuration file.
pub fn load_party(config: &Path) -> Result<(Party, Option<AesKey>), Failure> {
    let text = read_text(config)?;
    let f: PartyFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    let me = party_id(&f.party)?;
    let tsm = party_id(&f.tsm_party)?;
    let mut trust = Trust::new();
    trust.add_pem(tsm.clone(), &read_text(&rel(config, &f.tsm_public_key))?)?;
    let content = f
        .content_key
        .as_ref()
        .map(|c| aes_key_file(&rel(config, c)))
        .transpose()?;
    let mut client = match &f.tsm_ca {
        Some(ca) => Client::with_ca(&f.tsm, Link::default(), &std::fs::read(rel(config, ca))?)?,
        None => Client::new(&f.tsm, Link::default()),
    };
    // A provider's or operator's request is retried briefly (a TSM restarting), not for the
    // five minutes a phone waits.
    client.retry_for = std::time::Duration::from_secs(15);
    client.tell_waiting = true;
    Ok((
        Party {
            signer: Signer::from_pkcs8_pem(me, &read_secret(&rel(config, &f.signing_key))?)?,
            tsm,
            trust,
            client,
        },
        content,
    ))
}

fn op_id(s: &str) -> Result<OpId, Failure> {
    OpId::from_hex(s).ok_or_else(|| format!("'{s}' is not an operation id (32 hex digits)").into())
}

/// A Unix time (seconds) in RFC 3339, as every kagi output writes times.
fn rfc3339(secs: u64) -> String {
    der::DateTime::from_unix_duration(std::time::Duration::from_secs(secs))
        .map(|d| d.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

fn revoke_reason(r: &RevokeReason) -> &'static str {
    match r {
        RevokeReason::CardLost => "card-lost",
        RevokeReason::Superseded => "superseded",
        RevokeReason::UserRequest => "user-request",
        RevokeReason::Expired => "expired",
    }
}

/// The TSM's answer as one JSON object (hex ids, RFC 3339 times, kebab-case words); the text
/// output shows the same fields.
fn response_json(r: &ControlResponse) -> serde_json::Value {
    match r {
        ControlResponse::Accepted {
            op,
            state,
            device_ticket,
            access_code,
            expires_at,
        } => json!({
            "answer": "accepted", "op": op.to_hex(), "state": state.name(),
            "device_ticket": device_ticket, "access_code": access_code,
            "expires_at": rfc3339(expires_at / 1000),
        }),
        ControlResponse::Operation(v) => json!({
            "answer": "operation", "op": v.op.to_hex(), "operation": v.kind,
            "state": v.state.name(), "steps": v.steps, "receipt": v.receipt.is_some(),
            "error": v.error.as_ref().map(|e| json!({"code": e.code, "detail": e.detail, "retryable": e.retryable})),
            "children": v.children.iter().map(|c| c.to_hex()).collect::<Vec<_>>(),
        }),
        ControlResponse::Credential(c) => json!({
            "answer": "credential", "credential": c.credential.to_hex(), "iccid": c.iccid,
            "state": c.state, "revoked": c.revoked.as_ref().map(revoke_reason),
            "serial": c.serial, "not_after": rfc3339(c.not_after), "expired": c.expired,
            "my_number_sign_serial": c.my_number_sign_serial,
            "card_deletion_pending": c.card_deletion_pending,
        }),
        ControlResponse::Eligibility {
            eligible,
            reason,
            free_memory,
        } => json!({
            "answer": "eligibility", "eligible": eligible, "reason": reason,
            "free_memory": free_memory,
        }),
        ControlResponse::Ok => json!({ "answer": "ok" }),
        ControlResponse::Rejected(e) => json!({
            "answer": "rejected", "code": e.code, "detail": e.detail,
        }),
    }
}

fn show(json_out: bool, r: &ControlResponse) -> Result<(), Failure> {
    if let ControlResponse::Rejected(e) = r {
        return Err(format!("the TSM refused: {e}").into());
    }
    let v = response_json(r);
    if json_out {
        print_json(v);
        return Ok(());
    }
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            let shown = match val {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(a) if a.is_empty() => continue,
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                other => other.to_string(),
            };
            println!("{:<22}{shown}", k.replace('_', " "));
        }
    }
    Ok(())
}

/// Writes what the user needs for a download (operation, ticket, access code) as JSON.
fn write_grant(
    out: &Path,
    r: &provider::Answered,
    extra: serde_json::Value,
) -> Result<OpId, Failure> {
    let ControlResponse::Accepted {
        op,
        device_ticket,
        access_code,
        expires_at,
        ..
    } = &r.response
    else {
        return Err(format!("the TSM did not accept: {:?}", r.response).into());
    };
    let mut doc = json!({
        "op": op.to_hex(),
        "ticket": device_ticket,
        "access_code": access_code,
        "expires_at": expires_at,
        "request_msg_id": r.request.0.to_hex(),
        "request_nonce": r.request.1.to_hex(),
    });
    if let (Some(o), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    write_private(out, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    println!(
        "operation {op} accepted; the device ticket and one-time access code for the user are in {} (deliver them separately)",
        out.display()
    );
    Ok(*op)
}

async fn provider_cmd(config: &Path, cmd: &ProviderCmd, json_out: bool) -> Result<(), Failure> {
    let (sp, content) = load_party(config)?;
    let content = || {
        content
            .clone()
            .ok_or("the provider configuration has no content_key")
    };
    match cmd {
        ProviderCmd::Issue {
            iccid,
            ca_dir,
            pin_file,
            password_file,
            rsa,
            my_number_serial,
            out,
            valid_minutes,
        } => {
            use der::Encode;
            let pin = read_secret(pin_file)?;
            let password = read_secret(password_file)?;
            let (auth_ca, _) = super::jpki::cas(ca_dir)?;
            let mut serial = [0u8; 4];
            getrandom::fill(&mut serial).map_err(|e| e.to_string())?;
            let serial = u32::from_be_bytes(serial) & 0x7FFF_FFFF | 1;
            let now = std::time::SystemTime::now();
            let until = now + std::time::Duration::from_secs(365 * 86400);
            let opaque = format!("KAGIPHONE{iccid}");
            let (key, cert) = if *rsa {
                let k = test_pki::generate_rsa_key()?;
                let c = auth_ca.issue_auth(&k.to_public_key(), &opaque, serial, now, until)?;
                (CardKey::Rsa(Box::new(k)), c)
            } else {
                use p256::elliptic_curve::Generate;
                let k = p256::ecdsa::SigningKey::try_generate().map_err(|e| e.to_string())?;
                let c = auth_ca.issue_auth(k.verifying_key(), &opaque, serial, now, until)?;
                (CardKey::P256(k), c)
            };
            let cert = cert.to_der()?;
            let bundle = provider::bundle(
                &content()?,
                &key,
                cert.clone(),
                auth_ca.certificate_der()?,
                pin.as_bytes(),
                my_number_serial,
            )?;
            drop(key);
            let req = ControlRequest::Issue {
                subscriber_ref: iccid.clone(),
                card: CardTarget {
                    iccid: iccid.clone(),
                },
                applet: AppletRef::jpki(),
                credential: bundle,
                access: provider::access_grant(&password, 5, valid_minutes * 60_000)?,
            };
            let r = sp.send(&req, None).await?;
            let cert_path = out.with_extension("crt.der");
            std::fs::write(&cert_path, &cert)?;
            write_grant(
                out,
                &r,
                json!({ "certificate": cert_path.display().to_string(), "serial": format!("{serial:08X}") }),
            )?;
            Ok(())
        }
        ProviderCmd::Status { op } => {
            let r = sp
                .send(&ControlRequest::GetOperation { op: op_id(op)? }, None)
                .await?;
            if let ControlResponse::Operation(v) = &r.response {
                if json_out {
                    print_json(json!({
                        "op": v.op.to_hex(), "kind": v.kind, "state": v.state.name(), "steps": v.steps,
                        "receipt": v.receipt.is_some(), "error": v.error.as_ref().map(|e| e.to_string()),
                    }));
                } else {
                    println!(
                        "{} {}: {} ({} steps){}",
                        v.kind,
                        v.op,
                        v.state.name(),
                        v.steps.len(),
                        v.error
                            .as_ref()
                            .map(|e| format!("; {e}"))
                            .unwrap_or_default()
                    );
                }
                return Ok(());
            }
            show(json_out, &r.response)
        }
        ProviderCmd::Receipt { issued } => {
            let doc: serde_json::Value = serde_json::from_str(&read_text(issued)?)?;
            let s = |k: &str| doc[k].as_str().unwrap_or_default().to_string();
            let op = op_id(&s("op"))?;
            let request = (
                tsm_protocol::MsgId::from_hex(&s("request_msg_id")).ok_or("no request_msg_id")?,
                tsm_protocol::Nonce::from_hex(&s("request_nonce")).ok_or("no request_nonce")?,
            );
            let cert = std::fs::read(s("certificate"))
                .map_err(|e| format!("{}: {e}", s("certificate")))?;
            let r = sp.send(&ControlRequest::GetOperation { op }, None).await?;
            let ControlResponse::Operation(v) = r.response else {
                return show(json_out, &r.response);
            };
            let Some(receipt) = v.receipt else {
                return Err(format!("operation {op} is {}: no receipt yet", v.state.name()).into());
            };
            let rc = provider::check_receipt(&receipt, &sp.trust, &op, request, &cert)?;
            if json_out {
                print_json(
                    json!({ "op": op.to_hex(), "valid": true, "cin": rc.cin, "iccid": rc.iccid, "steps": rc.steps.len(), "completed_at": rc.completed_at }),
                );
            } else {
                println!(
                    "receipt valid: signed by the TSM, the key on card {} (ICCID {}) signed the TSM's nonce and matches the certificate; {} card commands",
                    rc.cin,
                    rc.iccid,
                    rc.steps.len()
                );
            }
            Ok(())
        }
        ProviderCmd::Revoke { credential, reason } => {
            let reason = match reason.as_str() {
                "card-lost" => RevokeReason::CardLost,
                "superseded" => RevokeReason::Superseded,
                "user-request" => RevokeReason::UserRequest,
                "expired" => RevokeReason::Expired,
                other => {
                    return Err(format!(
                        "--reason {other}: card-lost, superseded, user-request or expired"
                    )
                    .into());
                }
            };
            let r = sp
                .send(
                    &ControlRequest::Revoke {
                        credential: op_id(credential)?,
                        reason,
                    },
                    None,
                )
                .await?;
            show(json_out, &r.response)
        }
        ProviderCmd::Check { credential } => {
            let r = sp
                .send(
                    &ControlRequest::CheckStatus {
                        credential: op_id(credential)?,
                    },
                    None,
                )
                .await?;
            if let ControlResponse::Credential(c) = &r.response {
                if json_out {
                    print_json(
                        json!({ "credential": c.credential.to_hex(), "state": c.state, "serial": c.serial,
                        "expired": c.expired, "card_deletion_pending": c.card_deletion_pending, "iccid": c.iccid,
                        "my_number_sign_serial": c.my_number_sign_serial }),
                    );
                } else {
                    println!(
                        "credential {}: {} (serial {}, ICCID {}{}{})",
                        c.credential,
                        c.state,
                        c.serial,
                        c.iccid,
                        if c.expired { ", expired" } else { "" },
                        if c.card_deletion_pending {
                            ", to be deleted from the card"
                        } else {
                            ""
                        }
                    );
                }
                return Ok(());
            }
            show(json_out, &r.response)
        }
        ProviderCmd::ResetPin {
            credential,
            pin_file,
            password_file,
            out,
        } => {
            let pin = read_secret(pin_file)?;
            let password = read_secret(password_file)?;
            let req = ControlRequest::ResetPin {
                credential: op_id(credential)?,
                sealed_pin: provider::seal_pin(&content()?, pin.as_bytes())?,
                access: provider::access_grant(&password, 5, 30 * 60_000)?,
            };
            let r = sp.send(&req, None).await?;
            write_grant(out, &r, json!({}))?;
            Ok(())
        }
        ProviderCmd::Wallet {
            iccid,
            member,
            ticket,
            points,
            password_file,
            out,
        } => {
            let password = read_secret(password_file)?;
            let mut updates = Vec::new();
            let mut add = |change: WalletChange| -> Result<(), Failure> {
                let mut id = [0u8; 8];
                getrandom::fill(&mut id).map_err(|e| e.to_string())?;
                updates.push(WalletUpdate { id, change });
                Ok(())
            };
            if let Some(m) = member {
                add(WalletChange::SetMemberId(m.clone()))?;
            }
            for t in ticket {
                add(WalletChange::AddTicket(t.clone()))?;
            }
            if let Some(p) = points {
                add(WalletChange::Points(*p))?;
            }
            let req = ControlRequest::WalletUpdate {
                card: CardTarget {
                    iccid: iccid.clone(),
                },
                instance: vec![0xF0, 0x4B, 0x41, 0x47, 0x49, 0x57, 0x4C, 0x01, 0x01],
                updates,
                access: provider::access_grant(&password, 5, 30 * 60_000)?,
            };
            let r = sp.send(&req, None).await?;
            write_grant(out, &r, json!({}))?;
            Ok(())
        }
        ProviderCmd::Cancel { op } => {
            let r = sp
                .send(&ControlRequest::Cancel { op: op_id(op)? }, None)
                .await?;
            show(json_out, &r.response)
        }
    }
}

async fn mno_cmd(config: &Path, cmd: &MnoCmd, json_out: bool) -> Result<(), Failure> {
    let (mno, _) = load_party(config)?;
    let req = match cmd {
        MnoCmd::CreateSd {
            iccid,
            sd,
            provider,
            password_file,
            out,
        } => {
            let password = read_secret(password_file)?;
            let req = ControlRequest::CreateSecurityDomain {
                iccid: iccid.clone(),
                sd_aid: parse_hex("--sd", sd)?,
                privileges: vec![0x80, 0x40, 0x00],
                provider: party_id(provider)?,
                access: provider::access_grant(&password, 5, 30 * 60_000)?,
            };
            let r = mno.send(&req, None).await?;
            write_grant(out, &r, json!({}))?;
            return Ok(());
        }
        MnoCmd::RegisterCard {
            iccid,
            cin,
            sd,
            free_memory,
        } => ControlRequest::RegisterCard {
            iccid: iccid.clone(),
            cin: cin.clone(),
            sd_aid: parse_hex("--sd", sd)?,
            free_memory: *free_memory,
        },
        MnoCmd::CardLost { iccid } => ControlRequest::CardLost {
            iccid: iccid.clone(),
        },
        MnoCmd::SimChanged { old, new } => ControlRequest::SimChanged {
            old_iccid: old.clone(),
            new_iccid: new.clone(),
        },
        MnoCmd::Eligibility { iccid, memory } => ControlRequest::CheckEligibility {
            iccid: iccid.clone(),
            memory_needed: *memory,
        },
    };
    let r = mno.send(&req, None).await?;
    show(json_out, &r.response)
}

/// Runs `kagi tsm …`.
pub fn run(cmd: &TsmCmd, json_out: bool) -> Result<(), Failure> {
    match cmd {
        TsmCmd::Init { dir, listen, tls } => init(dir, listen, *tls),
        TsmCmd::Serve(a) => serve(a),
        TsmCmd::Provider { config, cmd } => {
            runtime()?.block_on(provider_cmd(config, cmd, json_out))
        }
        TsmCmd::Mno { config, cmd } => runtime()?.block_on(mno_cmd(config, cmd, json_out)),
        TsmCmd::Audit { database, op } => runtime()?.block_on(async {
            let store =
                tsm_server::store::Store::open(&tsm_server::store::Backend::parse(database))
                    .await?;
            let op = op.as_deref().map(op_id).transpose()?;
            let trail = store.audit_trail(op.as_ref()).await?;
            if json_out {
                print_json(json!({ "audit": trail }));
            } else {
                for a in trail {
                    println!(
                        "{} {} {:<10} {:<18} {}",
                        a.at, a.op_id, a.actor, a.event, a.detail
                    );
                }
            }
            Ok(())
        }),
        TsmCmd::Load(a) => super::tsm_load::run(a, json_out),
    }
}

/// Runs `kagi relay`.
pub fn relay(args: &RelayArgs, json_out: bool) -> Result<(), Failure> {
    let ticket = read_secret(&args.ticket_file)?;
    let link = Link::parse(&args.link)?;
    let mut client = match &args.tsm_ca {
        Some(ca) => Client::with_ca(
            &args.tsm,
            link,
            &std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?,
        )?,
        None => Client::new(&args.tsm, link),
    };
    client.retry_for = std::time::Duration::from_secs(args.retry_for);
    client.tell_waiting = true;
    let given = match (&args.access_code_file, &args.password_file) {
        (Some(c), Some(p)) => Some(UserCredentials {
            access_code: read_secret(c)?.to_string(),
            password: read_secret(p)?.to_string(),
        }),
        _ => None,
    };
    let mut ch = args.target.open(false)?;
    let mut capture = args.capture.as_ref().map(|_| Vec::new());
    let mut asked = given.is_some();
    let mut ask = |left: u8| -> Option<UserCredentials> {
        if !asked {
            asked = true;
        } else if given.is_some() {
            eprintln!("the access code or password was not accepted ({left} tries left)");
        }
        let code = rpassword::prompt_password(format!("access code ({left} tries left): ")).ok()?;
        let password = rpassword::prompt_password("password: ").ok()?;
        Some(UserCredentials {
            access_code: code,
            password,
        })
    };
    let out = runtime()?.block_on(async {
        kagi_online::tsm::relay::run(
            &client,
            ch.transport_mut(),
            kagi_online::tsm::relay::Options {
                ticket: ticket.to_string(),
                credentials: given.clone(),
                ask: &mut ask,
                agent: format!("kagi relay {}", env!("CARGO_PKG_VERSION")),
                capture: capture.as_mut(),
            },
        )
        .await
    })?;
    args.target.finish(&ch)?;
    if let (Some(path), Some(c)) = (&args.capture, &capture) {
        // The messages carried hold access codes and passwords (sealed) and tickets.
        write_private(path, c)?;
    }
    let ok = out.outcome == tsm_protocol::relay::StopOutcome::Completed;
    if json_out {
        print_json(json!({
            "outcome": format!("{:?}", out.outcome), "message": out.message, "orders": out.orders,
            "round_trips": out.round_trips, "seconds": out.elapsed.as_secs_f64(),
            "tsm_ms": out.tsm_time.as_secs_f64() * 1000.0, "link_rtt_ms": link.rtt.as_millis() as u64,
        }));
    } else {
        println!(
            "{:?}: {} — {} orders in {} round trips, {:.3} s (TSM {:.1} ms, link round trip {} ms)",
            out.outcome,
            out.message,
            out.orders,
            out.round_trips,
            out.elapsed.as_secs_f64(),
            out.tsm_time.as_secs_f64() * 1000.0,
            link.rtt.as_millis()
        );
    }
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the download did not complete: {:?}: {}",
            out.outcome, out.message
        )
        .into())
    }
}
