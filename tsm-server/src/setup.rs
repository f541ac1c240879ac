//! The TSM's own configuration file (`tsm.toml`), a development configuration made by
//! [`init`], and start-up ([`load`], [`serve`]). Where the providers' and operators' master
//! keys live (an HSM or a development file store) is the caller's choice: [`load`] asks a
//! [`MasterKeys`] source for each key set named in the file, so this crate never links a
//! PKCS#11 library.

use crate::service::{Config, Provider, Tsm};
use card_wire::scp03::{AesKey, CardKeys, Diversification};
use kagi_serve::files::{self, FileError, rel};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tsm_protocol::PartyId;
use tsm_protocol::signing::{Policy, Signer, Trust};

/// The TSM could not be configured or started.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A file could not be read, written or understood.
    #[error(transparent)]
    File(#[from] FileError),
    /// The configuration names something invalid.
    #[error("{config}: {message}")]
    Config {
        /// The configuration file.
        config: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A key set could not be opened in the key store.
    #[error("key set {name}: {message}")]
    Keys {
        /// The key set's name in the configuration.
        name: String,
        /// Why.
        message: String,
    },
    /// A signing key, public key or party name could not be used.
    #[error("{0}")]
    Party(String),
    /// A party name in the configuration is not one.
    #[error(transparent)]
    PartyName(#[from] tsm_protocol::BadPartyId),
    /// A signing or public key file could not be read or written.
    #[error(transparent)]
    KeyFile(#[from] tsm_protocol::KeyFileError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The listening address could not be bound.
    #[error("cannot listen on {listen}: {source}")]
    Listen {
        /// The address.
        listen: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP server stopped with an error.
    #[error("the HTTP server failed: {0}")]
    Serve(String),
}

impl From<getrandom::Error> for SetupError {
    fn from(e: getrandom::Error) -> Self {
        SetupError::Keys {
            name: "random".into(),
            message: format!("the system's random source failed: {e}"),
        }
    }
}

impl From<String> for SetupError {
    fn from(message: String) -> Self {
        SetupError::Party(message)
    }
}

/// Where master key sets come from: called once per key set the configuration names, with the
/// set's name (a file stem or an HSM label), its key version and how card keys are derived
/// from it (providers' domains always use `kdf3`; an operator's issuer domains say which).
pub type MasterKeys<'a> =
    dyn Fn(&str, u8, Diversification) -> Result<Arc<dyn CardKeys>, String> + 'a;

/// `tsm.toml`.
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
    /// `[[mno_tsm]]` (one per operator) or, the one-operator form, a single `[mno_tsm]`
    /// table: read by [`mno_entries`].
    #[serde(default)]
    mno_tsm: Option<toml::Value>,
    #[serde(default)]
    jpki_issuer: Option<IssuerEntry>,
    /// The sender address of the access-code mails (⑪); [`DEFAULT_NOTIFY_FROM`] when absent.
    #[serde(default)]
    notify_from: Option<String>,
    /// Where the access-code mails go (`kagi_notify::OutboxConfig`: `kind = "maildir"` or
    /// `"smtp"`; relative paths are relative to this file). With a `[jpki_issuer]` and no
    /// `[notify]`: the maildir `outbox` beside this file.
    #[serde(default)]
    notify: Option<kagi_notify::OutboxConfig>,
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
    /// No longer used (content is sealed to each card's own key): present only to refuse an
    /// old configuration with a clear message.
    #[serde(default)]
    content_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorEntry {
    party: String,
    public_key: String,
    /// No longer accepted here (the issuer-domain keys belong to the MNO-TSM, `kagi mno-tsm`):
    /// present only to refuse an old configuration with a clear message.
    #[serde(default)]
    isd_keys: Option<String>,
    #[serde(default)]
    isd_kvn: Option<String>,
    #[serde(default)]
    isd: Option<String>,
    #[serde(default)]
    isd_diversification: Option<String>,
}

/// `[[mno_tsm]]` of `tsm.toml`: an MNO-TSM that prepares SIMs for this SP-TSM.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MnoTsmEntry {
    party: String,
    url: String,
    public_key: String,
    /// The SIMs it serves: ICCID issuer prefixes (ITU-T E.118: `89`, the country code, the
    /// issuer; `crate::service::mno_links`). Needed with several `[[mno_tsm]]`; a single
    /// link without them serves every SIM.
    #[serde(default)]
    iccid_prefixes: Vec<String>,
    /// Where phones reach it (default: `url`).
    #[serde(default)]
    relay_url: Option<String>,
    /// Its HTTPS certificate (or CA), PEM; default: the system's roots.
    #[serde(default)]
    tls_ca: Option<String>,
}

/// `[jpki_issuer]` of `tsm.toml`: the JPKI issuer that makes credentials for applications.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerEntry {
    party: String,
    url: String,
    public_key: String,
    /// Its HTTPS certificate (or CA), PEM; default: the system's roots.
    #[serde(default)]
    tls_ca: Option<String>,
    /// `"on-card"` (preferred: the SIM's applet generates the key, the issuer certifies it)
    /// or `"issuer"` (the issuer makes the key and seals it to the SIM); default `issuer`.
    #[serde(default)]
    key_generation: Option<String>,
}

/// What the command line may change over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// The database instead of the file's: a SQLite path or `postgres://…`.
    pub database: Option<String>,
    /// The listening address instead of the file's.
    pub listen: Option<String>,
}

/// A loaded configuration, ready to [`serve`].
pub struct Loaded {
    /// The service's configuration.
    pub config: Config,
    /// The database (SQLite path or PostgreSQL URL).
    pub database: String,
    /// The listening address.
    pub listen: String,
    /// HTTPS certificate and key; `None`: plain HTTP.
    pub tls: Option<kagi_serve::TlsFiles>,
    /// The file's `[limits]` (the caller merges its own overrides and the defaults).
    pub limits: Option<kagi_serve::LimitsFile>,
    /// On an MNO-TSM: the SP-TSMs it sends SIM notices to (`url` of each `[[sp_tsm]]`).
    pub sp_tsm_links: crate::service::SpTsmLinks,
}

fn aes_key_file(path: &Path) -> Result<AesKey, SetupError> {
    let bytes = files::read_hex_secret(path)?;
    AesKey::new(&bytes).map_err(|e| FileError::invalid(path, e.to_string()).into())
}

fn hex_byte(config: &Path, what: &str, s: &str) -> Result<u8, SetupError> {
    u8::from_str_radix(s, 16).map_err(|_| SetupError::Config {
        config: config.to_path_buf(),
        message: format!("{what} '{s}' is not a hex byte"),
    })
}

fn hex_aid(config: &Path, what: &str, s: &str) -> Result<Vec<u8>, SetupError> {
    hex::decode(s).map_err(|_| SetupError::Config {
        config: config.to_path_buf(),
        message: format!("{what} '{s}' is not hex"),
    })
}

/// Where a configuration's database is: the `--database` override, a PostgreSQL URL as
/// given, or a SQLite file relative to the configuration file.
pub(crate) fn database_location(path: &Path, configured: &str, overrides: &Overrides) -> String {
    overrides.database.clone().unwrap_or_else(|| {
        if configured.starts_with("postgres") {
            configured.to_string()
        } else {
            rel(path, configured).display().to_string()
        }
    })
}

/// Reads `tsm.toml` at `path` (files it names are relative to it), opening each master key set
/// it names through `keys`.
pub fn load(
    path: &Path,
    overrides: &Overrides,
    keys: &MasterKeys<'_>,
) -> Result<Loaded, SetupError> {
    let text = files::read_text(path)?;
    let f: TsmFile = toml::from_str(&text).map_err(|e| FileError::invalid(path, e.to_string()))?;
    let me = PartyId::new(&f.name)?;
    let signer =
        Signer::from_pkcs8_pem(me.clone(), &files::read_secret(&rel(path, &f.signing_key))?)?;
    let mut trust = Trust::new();
    let open = |name: &str, kvn: u8, d: Diversification| {
        keys(name, kvn, d).map_err(|message| SetupError::Keys {
            name: name.to_string(),
            message,
        })
    };
    let mut providers = BTreeMap::new();
    for p in &f.provider {
        let party = PartyId::new(&p.party)?;
        if let Some(old) = &p.content_key {
            return Err(SetupError::Config {
                config: path.to_path_buf(),
                message: format!(
                    "provider {}: `content_key = \"{old}\"` is no longer used — providers now seal credentials to each SIM's own key agreement key, and no content key may sit at the TSM: remove the line from [[provider]] and delete the key file",
                    p.party
                ),
            });
        }
        trust.add_pem(party.clone(), &files::read_text(&rel(path, &p.public_key))?)?;
        let kvn = hex_byte(path, &format!("provider {}: kvn", p.party), &p.kvn)?;
        providers.insert(
            party,
            Provider {
                sd_aid: hex_aid(path, "security_domain", &p.security_domain)?,
                kvn,
                keys: open(&p.keys, kvn, Diversification::Kdf3)?,
            },
        );
    }
    for o in &f.operator {
        let party = PartyId::new(&o.party)?;
        if o.isd_keys.is_some()
            || o.isd_kvn.is_some()
            || o.isd.is_some()
            || o.isd_diversification.is_some()
        {
            return Err(SetupError::Config {
                config: path.to_path_buf(),
                message: format!(
                    "operator {}: the SP-TSM holds no issuer-domain keys any more — they belong to the operator's own MNO-TSM (`kagi mno-tsm init`): remove isd_keys, isd_kvn, isd and isd_diversification from [[operator]] and name the MNO-TSM in a [mno_tsm] section",
                    o.party
                ),
            });
        }
        trust.add_pem(party.clone(), &files::read_text(&rel(path, &o.public_key))?)?;
    }
    let mut mno = Vec::new();
    for m in mno_entries(path, f.mno_tsm.clone())? {
        let party = PartyId::new(&m.party)?;
        if party.role() != "tsm" {
            return Err(SetupError::Config {
                config: path.to_path_buf(),
                message: format!("[[mno_tsm]] {}: an MNO-TSM's party is tsm:NAME", m.party),
            });
        }
        trust.add_pem(party.clone(), &files::read_text(&rel(path, &m.public_key))?)?;
        let http = https_client(path, "mno_tsm", m.tls_ca.as_deref())?;
        let url = m.url.trim_end_matches('/').to_string();
        mno.push(crate::service::MnoLink {
            party,
            relay_url: m
                .relay_url
                .as_deref()
                .map(|u| u.trim_end_matches('/').to_string())
                .unwrap_or_else(|| url.clone()),
            url,
            http,
            iccid_prefixes: m.iccid_prefixes,
        });
    }
    crate::service::mno_links::check(&mno).map_err(|message| SetupError::Config {
        config: path.to_path_buf(),
        message,
    })?;
    let issuer = match &f.jpki_issuer {
        None => None,
        Some(i) => {
            let party = PartyId::new(&i.party)?;
            trust.add_pem(party.clone(), &files::read_text(&rel(path, &i.public_key))?)?;
            Some(crate::service::IssuerLink {
                party,
                url: i.url.trim_end_matches('/').to_string(),
                http: https_client(path, "jpki_issuer", i.tls_ca.as_deref())?,
                key_on_card: match i.key_generation.as_deref() {
                    None | Some("issuer") => false,
                    Some("on-card") => true,
                    Some(other) => {
                        return Err(SetupError::Config {
                            config: path.to_path_buf(),
                            message: format!(
                                "[jpki_issuer] key_generation = \"{other}\": write \"on-card\" (the SIM makes the key) or \"issuer\""
                            ),
                        });
                    }
                },
            })
        }
    };
    let outbox = open_outbox(path, &f)?;
    let database = database_location(path, &f.database, overrides);
    Ok(Loaded {
        config: Config {
            signer,
            trust,
            policy: Policy::new(me),
            providers,
            operators: BTreeMap::new(),
            hosted: BTreeMap::new(),
            mno,
            issuer,
            state_key: aes_key_file(&rel(path, &f.state_key))?,
            revocation_list: f.revocation_list.as_ref().map(|r| rel(path, r)),
            outbox,
        },
        database,
        listen: overrides.listen.clone().unwrap_or(f.listen),
        tls: files::tls_files(path, &f.tls_cert, &f.tls_key)?,
        limits: f.limits,
        sp_tsm_links: Default::default(),
    })
}

/// The MNO-TSM links of `tsm.toml`: an array of tables (`[[mno_tsm]]`) or one table
/// (`[mno_tsm]`, the one-operator form users' files and the README have).
fn mno_entries(path: &Path, v: Option<toml::Value>) -> Result<Vec<MnoTsmEntry>, SetupError> {
    let bad = |e: toml::de::Error| {
        SetupError::from(FileError::invalid(path, format!("[[mno_tsm]]: {e}")))
    };
    match v {
        None => Ok(Vec::new()),
        Some(t @ toml::Value::Table(_)) => Ok(vec![t.try_into().map_err(bad)?]),
        Some(toml::Value::Array(a)) => a.into_iter().map(|t| t.try_into().map_err(bad)).collect(),
        Some(other) => Err(SetupError::Config {
            config: path.to_path_buf(),
            message: format!(
                "mno_tsm is a {}: write one [[mno_tsm]] section per MNO-TSM (party, url, public_key, iccid_prefixes)",
                other.type_str()
            ),
        }),
    }
}

/// The client for another service of a `[section]` of `tsm.toml`: trusting only the PEM
/// certificates in `tls_ca` (relative to the file) when given, else the system's roots.
pub(crate) fn https_client(
    path: &Path,
    section: &str,
    tls_ca: Option<&str>,
) -> Result<reqwest::Client, SetupError> {
    kagi_serve::tls_provider();
    let Some(ca) = tls_ca else {
        return Ok(reqwest::Client::new());
    };
    let pem = files::read_text(&rel(path, ca))?;
    let bad = |e: reqwest::Error| SetupError::Config {
        config: path.to_path_buf(),
        message: format!("[{section}] tls_ca: {e}"),
    };
    let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(bad)?;
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .build()
        .map_err(bad)
}

/// The sender of access-code mails when `notify_from` is not set.
pub const DEFAULT_NOTIFY_FROM: &str = "kagi-sp-tsm@localhost.localdomain";

/// The SP-TSM's outbox (⑪): the `[notify]` section with its paths made relative to the
/// configuration file, or the maildir `outbox` beside it for an SP-TSM with a JPKI issuer;
/// none for a TSM that takes no applications.
fn open_outbox(path: &Path, f: &TsmFile) -> Result<Option<Arc<kagi_notify::Outbox>>, SetupError> {
    use kagi_notify::OutboxConfig;
    let config = match &f.notify {
        None if f.jpki_issuer.is_none() => return Ok(None),
        None => OutboxConfig::Maildir {
            path: rel(path, "outbox"),
        },
        Some(OutboxConfig::Maildir { path: p }) => OutboxConfig::Maildir {
            path: rel(path, &p.display().to_string()),
        },
        Some(OutboxConfig::Smtp {
            host,
            port,
            tls,
            ca_file,
            user,
            password_file,
            timeout_secs,
        }) => OutboxConfig::Smtp {
            host: host.clone(),
            port: *port,
            tls: *tls,
            ca_file: ca_file
                .as_ref()
                .map(|c| rel(path, &c.display().to_string())),
            user: user.clone(),
            password_file: password_file
                .as_ref()
                .map(|p| rel(path, &p.display().to_string())),
            timeout_secs: *timeout_secs,
        },
    };
    let from = f.notify_from.as_deref().unwrap_or(DEFAULT_NOTIFY_FROM);
    kagi_notify::Outbox::open(&config, from)
        .map(|o| Some(Arc::new(o)))
        .map_err(|e| SetupError::Config {
            config: path.to_path_buf(),
            message: format!("[notify]: {e}"),
        })
}

/// Opens the database and serves the TSM until `shutdown` resolves, within `limits`.
pub async fn serve(
    loaded: Loaded,
    limits: &kagi_serve::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), SetupError> {
    let backend = crate::store::Backend::parse(&loaded.database);
    let store = crate::store::Store::open(&backend).await?;
    let tsm = Arc::new(Tsm::new(loaded.config, store).with_sp_tsm_links(loaded.sp_tsm_links));
    let listener = tokio::net::TcpListener::bind(&loaded.listen)
        .await
        .map_err(|source| SetupError::Listen {
            listen: loaded.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SetupError::Listen {
        listen: loaded.listen.clone(),
        source,
    })?;
    tracing::info!(listen = %addr, https = loaded.tls.is_some(), database = %backend.location(), party = %tsm.party(), "TSM serving");
    tracing::info!(?limits, "limits");
    crate::http::serve_limited(tsm, listener, shutdown, loaded.tls, limits)
        .await
        .map_err(|e| SetupError::Serve(e.to_string()))
}

pub use kagi_serve::files::DevTls;

mod mno;
pub use mno::{MNO_TSM_PARTY, MnoIdentity, init_mno, init_mno_as, load_mno};

/// Writes a development TSM in `dir`: signing keys for the TSM, a provider (`sp:kagi-bank`) and
/// an operator (`mno:kagi-mobile`), the state key, development master key files in
/// `dir/keys` (0700, files 0600), `tsm.toml` serving at `listen` (HTTPS with `tls`) and the
/// two parties' client configurations `sp.toml` and `mno.toml`. Refuses a directory that
/// already holds a TSM.
pub fn init(dir: &Path, listen: &str, tls: Option<DevTls>) -> Result<(), SetupError> {
    files::create_private_dir(&dir.join("keys"))?;
    if dir.join("tsm.toml").exists() {
        return Err(SetupError::Config {
            config: dir.join("tsm.toml"),
            message: "this directory already holds a TSM configuration: choose another".into(),
        });
    }
    let tsm = Signer::generate(PartyId::new("tsm:kagi")?)?;
    let sp = Signer::generate(PartyId::new("sp:kagi-bank")?)?;
    let mno = Signer::generate(PartyId::new("mno:kagi-mobile")?)?;
    for (name, s) in [("tsm", &tsm), ("sp", &sp), ("mno", &mno)] {
        files::write_key_pair(dir, name, &s.to_pkcs8_pem()?, &s.public_pem()?)?;
    }
    files::write_private(&dir.join("state.key"), files::random_hex(16)?.as_bytes())?;
    files::write_private(
        &dir.join("keys/provider.keys"),
        format!(
            "# DEVELOPMENT ONLY: the provider's security-domain master keys (kdf3 per card).\nENC={}\nMAC={}\nDEK={}\n",
            *files::random_hex(16)?,
            *files::random_hex(16)?,
            *files::random_hex(16)?
        )
        .as_bytes(),
    )?;
    let (scheme, tls_lines, ca_line) =
        files::write_dev_tls(dir, tls, || "tsm_ca = \"tls.crt.pem\"\n".to_string())?;
    files::write_private(
        &dir.join("tsm.toml"),
        format!(
            "# kagi TSM (generated by `kagi tsm init`)\nname = \"tsm:kagi\"\nsigning_key = \"tsm.key.pem\"\nstate_key = \"state.key\"\ndatabase = \"tsm.db\"\nlisten = \"{listen}\"\nrevocation_list = \"revoked.txt\"\n{tls_lines}\n[[provider]]\nparty = \"sp:kagi-bank\"\npublic_key = \"sp.pub.pem\"\nsecurity_domain = \"A00000015153505001\"\nkvn = \"31\"\nkeys = \"provider\"          # DIR/provider.keys with --insecure-file-keys DIR, or HSM label\n\n[[operator]]\nparty = \"mno:kagi-mobile\"\npublic_key = \"mno.pub.pem\"\n"
        )
        .as_bytes(),
    )?;
    for (file, who) in [("sp.toml", "sp:kagi-bank"), ("mno.toml", "mno:kagi-mobile")] {
        let key = if who.starts_with("sp") { "sp" } else { "mno" };
        files::write_private(
            &dir.join(file),
            format!(
                "party = \"{who}\"\nsigning_key = \"{key}.key.pem\"\ntsm = \"{scheme}://{listen}\"\ntsm_party = \"tsm:kagi\"\ntsm_public_key = \"tsm.pub.pem\"\n{ca_line}"
            )
            .as_bytes(),
        )?;
    }
    Ok(())
}

/// A `[[sp_tsm]]` entry of a service's configuration `config`: the SP-TSM's party (role
/// `tsm`) with its public key (a file relative to the configuration) added to `trust`.
pub(crate) fn trusted_sp_tsm(
    config: &std::path::Path,
    party: &str,
    public_key: &str,
    trust: &mut tsm_protocol::signing::Trust,
) -> Result<tsm_protocol::PartyId, SetupError> {
    let id = tsm_protocol::PartyId::new(party)?;
    if id.role() != "tsm" {
        return Err(SetupError::Config {
            config: config.to_path_buf(),
            message: format!("[[sp_tsm]] {party}: an SP-TSM's party is tsm:NAME"),
        });
    }
    trust.add_pem(
        id.clone(),
        &kagi_serve::files::read_text(&kagi_serve::files::rel(config, public_key))?,
    )?;
    Ok(id)
}
