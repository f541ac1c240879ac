//! The JPKI issuer's configuration (`jpki-issuer.toml`), a development configuration made by
//! [`init_issuer`], and start-up ([`load_issuer`], [`serve_issuer`]). The user-authentication
//! CA's key is opened by the caller ([`OpenUaCa`]), so this crate never holds a CA
//! implementation of its own.

use super::{Issuer, IssuerConfig, SignCa, UaCa};
use crate::setup::{Overrides, SetupError};
use kagi_serve::files::{self, rel};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tsm_protocol::PartyId;
use tsm_protocol::signing::{Policy, Signer, Trust};

/// The party name `init_issuer` gives a development JPKI issuer.
pub const ISSUER_PARTY: &str = "jpki:kagi-issuer";

/// Opens the user-authentication CA from its certificate and key files.
pub type OpenUaCa<'a> = dyn Fn(&Path, &Path) -> Result<Arc<dyn UaCa>, String> + 'a;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerFile {
    name: String,
    signing_key: String,
    database: String,
    listen: String,
    sign_ca: String,
    #[serde(default)]
    sign_crl: Option<String>,
    #[serde(default)]
    sign_revoked: Option<String>,
    ua_ca_cert: String,
    ua_ca_key: String,
    manufacturer_ca: String,
    pin_mailer: String,
    /// The on-card mode's challenge secret (hex, 32 bytes, 0600); made on first start when
    /// the file is missing. Several instances of one issuer share the file.
    #[serde(default = "default_challenge_key")]
    challenge_key: String,
    #[serde(default)]
    crl: Option<String>,
    #[serde(default = "default_days")]
    validity_days: u64,
    #[serde(default = "default_max_age")]
    application_max_age: u64,
    /// Refused application checks an SP-TSM may make per minute (`super::budget`).
    #[serde(default = "default_refused_checks")]
    refused_checks_per_minute: u32,
    #[serde(default)]
    tls_cert: Option<String>,
    #[serde(default)]
    tls_key: Option<String>,
    #[serde(default)]
    sp_tsm: Vec<SpTsmEntry>,
    #[serde(default)]
    limits: Option<kagi_serve::LimitsFile>,
}

fn default_days() -> u64 {
    365
}
fn default_max_age() -> u64 {
    600
}
fn default_refused_checks() -> u32 {
    super::DEFAULT_REFUSED_CHECKS
}
fn default_challenge_key() -> String {
    "challenge.key".into()
}

/// The challenge secret at `path` (hex, 32 bytes), written (0600) when the file is missing.
fn challenge_key(path: &Path) -> Result<zeroize::Zeroizing<[u8; 32]>, SetupError> {
    if !path.exists() {
        let fresh = files::random_hex(32).map_err(|e| SetupError::Keys {
            name: path.display().to_string(),
            message: e.to_string(),
        })?;
        files::write_private(path, format!("{}\n", fresh.as_str()).as_bytes())?;
        tracing::info!(path = %path.display(), "a new challenge secret for the on-card mode");
    }
    let bytes = files::read_hex_secret(path)?;
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return Err(SetupError::Keys {
            name: path.display().to_string(),
            message: "the challenge secret is 32 bytes (64 hex digits): write a fresh one or remove the file to have one made".into(),
        });
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpTsmEntry {
    party: String,
    public_key: String,
    providers: Vec<String>,
}

/// A loaded issuer configuration, ready to [`serve_issuer`].
pub struct LoadedIssuer {
    /// The issuer's configuration.
    pub config: IssuerConfig,
    /// The database (SQLite path or PostgreSQL URL).
    pub database: String,
    /// The listening address.
    pub listen: String,
    /// HTTPS certificate and key; `None`: plain HTTP.
    pub tls: Option<kagi_serve::TlsFiles>,
    /// The file's `[limits]`.
    pub limits: Option<kagi_serve::LimitsFile>,
    /// Where the issuer publishes its CRL (`crl`), if anywhere.
    pub crl_file: Option<PathBuf>,
    /// The budget of refused application checks per SP-TSM (`refused_checks_per_minute`).
    pub check_budget: super::CheckBudget,
}

/// The database of the issuer configured in `jpki-issuer.toml` at `path` (the `--database`
/// override first), without opening its keys: for reading its state (`kagi jpki-issuer
/// audit`).
pub fn issuer_database(path: &Path, overrides: &Overrides) -> Result<String, SetupError> {
    let text = files::read_text(path)?;
    let f: IssuerFile =
        toml::from_str(&text).map_err(|e| files::FileError::invalid(path, e.to_string()))?;
    Ok(crate::setup::database_location(
        path,
        &f.database,
        overrides,
    ))
}

/// Reads `jpki-issuer.toml` at `path` (files it names are relative to it), opening the
/// user-authentication CA through `ua_ca`.
pub fn load_issuer(
    path: &Path,
    overrides: &Overrides,
    ua_ca: &OpenUaCa<'_>,
) -> Result<LoadedIssuer, SetupError> {
    let text = files::read_text(path)?;
    let f: IssuerFile =
        toml::from_str(&text).map_err(|e| files::FileError::invalid(path, e.to_string()))?;
    let me = PartyId::new(&f.name)?;
    if me.role() != "jpki" {
        return Err(SetupError::Config {
            config: path.to_path_buf(),
            message: format!("name {}: a JPKI issuer's party is jpki:NAME", f.name),
        });
    }
    let signer =
        Signer::from_pkcs8_pem(me.clone(), &files::read_secret(&rel(path, &f.signing_key))?)?;
    let mut trust = Trust::new();
    let mut sp_tsms = BTreeMap::new();
    for s in &f.sp_tsm {
        let party = crate::setup::trusted_sp_tsm(path, &s.party, &s.public_key, &mut trust)?;
        let providers = s
            .providers
            .iter()
            .map(|p| PartyId::new(p))
            .collect::<Result<Vec<_>, _>>()?;
        sp_tsms.insert(party, providers);
    }
    let maker_path = rel(path, &f.manufacturer_ca);
    let maker = {
        use der::Decode;
        let bytes = std::fs::read(&maker_path)
            .map_err(|e| files::FileError::invalid(&maker_path, e.to_string()))?;
        let der = kagi_certs::pem_or_der(&bytes, "CERTIFICATE")
            .map_err(|e| files::FileError::invalid(&maker_path, e.to_string()))?;
        x509_cert::Certificate::from_der(&der)
            .map_err(|e| files::FileError::invalid(&maker_path, e.to_string()))?
    };
    let sign_ca = SignCa {
        certificate: rel(path, &f.sign_ca),
        crl: f.sign_crl.as_ref().map(|c| rel(path, c)),
        revoked: f.sign_revoked.as_ref().map(|r| rel(path, r)),
    };
    // Refuse a configuration whose signature CA does not read now, not at the first request.
    sign_ca.load().map_err(|message| SetupError::Config {
        config: path.to_path_buf(),
        message: format!("sign_ca: {message}"),
    })?;
    let ua = ua_ca(&rel(path, &f.ua_ca_cert), &rel(path, &f.ua_ca_key)).map_err(|message| {
        SetupError::Keys {
            name: f.ua_ca_key.clone(),
            message,
        }
    })?;
    let database = crate::setup::database_location(path, &f.database, overrides);
    Ok(LoadedIssuer {
        config: IssuerConfig {
            signer,
            trust,
            policy: Policy::new(me),
            sp_tsms,
            sign_ca,
            ua_ca: ua,
            manufacturer_ca: maker,
            pin_mailer: rel(path, &f.pin_mailer),
            validity: Duration::from_secs(f.validity_days.clamp(1, 3650) * 86_400),
            max_age: Duration::from_secs(f.application_max_age.clamp(10, 86_400)),
            challenge_key: challenge_key(&rel(path, &f.challenge_key))?,
        },
        database,
        listen: overrides.listen.clone().unwrap_or(f.listen),
        tls: files::tls_files(path, &f.tls_cert, &f.tls_key)?,
        limits: f.limits,
        crl_file: f.crl.as_ref().map(|c| rel(path, c)),
        check_budget: super::CheckBudget {
            refusals: f.refused_checks_per_minute.clamp(1, 1_000_000),
            window: Duration::from_secs(60),
        },
    })
}

/// Opens the database and serves the issuer until `shutdown` resolves, within `limits`.
pub async fn serve_issuer(
    loaded: LoadedIssuer,
    limits: &kagi_serve::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), SetupError> {
    let backend = kagi_db::Backend::parse(&loaded.database);
    let mut issuer = Issuer::open(loaded.config, &backend)
        .await?
        .with_check_budget(loaded.check_budget);
    if let Some(file) = loaded.crl_file {
        issuer = issuer.with_crl_file(file);
        // A CRL from the start: relying parties read the file before the first revocation.
        issuer
            .publish_crl(true)
            .await
            .map_err(|e| SetupError::Serve(e.to_string()))?;
    }
    let issuer = Arc::new(issuer);
    let listener = tokio::net::TcpListener::bind(&loaded.listen)
        .await
        .map_err(|source| SetupError::Listen {
            listen: loaded.listen.clone(),
            source,
        })?;
    tracing::info!(listen = %loaded.listen, database = %backend.location(), party = %issuer.party(), "JPKI issuer serving");
    super::http::serve(issuer, listener, shutdown, loaded.tls, limits)
        .await
        .map_err(|e| SetupError::Serve(e.to_string()))
}

fn absolute(p: &Path) -> Result<PathBuf, SetupError> {
    std::fs::canonicalize(p).map_err(|e| SetupError::Config {
        config: p.to_path_buf(),
        message: format!("cannot resolve the path: {e}"),
    })
}

/// Writes a development JPKI issuer in `dir`: its signing key (`issuer.key.pem`, public
/// `issuer.pub.pem`), `jpki-issuer.toml` serving at `listen`, trusting the signature CA of the
/// CA directory `pki` (`kagi ca init`: `sign-ca.crt.der`, its CRL `sign-ca.crl.der`) and
/// issuing with its user-authentication CA (`auth-ca.crt.der`, key `auth-ca.key.der` — a file
/// key store), checking SIM certificates against `manufacturer_ca`, answering the SP-TSM
/// `sp_tsm` (public key copied from `sp_tsm_key`) for the provider `sp:kagi-bank`; and
/// `sp-tsm-link.toml`, the `[jpki_issuer]` section to add to that SP-TSM's `tsm.toml` (in the
/// on-card mode, `key_generation = "on-card"`: the SIM makes the phone's key). With
/// `tls` (a development certificate and key) it serves HTTPS (`tls.crt.pem`, `tls.key.pem`
/// 0600) and the link trusts that certificate (`tls_ca`). Refuses a directory that already
/// holds an issuer.
pub fn init_issuer(
    dir: &Path,
    listen: &str,
    tls: Option<kagi_serve::files::DevTls>,
    sp_tsm: &PartyId,
    sp_tsm_key: &Path,
    pki: &Path,
    manufacturer_ca: &Path,
) -> Result<(), SetupError> {
    files::create_private_dir(dir)?;
    if dir.join("jpki-issuer.toml").exists() {
        return Err(SetupError::Config {
            config: dir.join("jpki-issuer.toml"),
            message: "this directory already holds a JPKI issuer configuration: choose another"
                .into(),
        });
    }
    let abs = absolute(dir)?;
    let pki = absolute(pki)?;
    let maker = absolute(manufacturer_ca)?;
    for f in ["sign-ca.crt.der", "auth-ca.crt.der", "auth-ca.key.der"] {
        if !pki.join(f).exists() {
            return Err(SetupError::Config {
                config: pki.join(f),
                message: "missing: give the JPKI CA directory made by `kagi ca init`".into(),
            });
        }
    }
    files::write_public(
        &dir.join("sp-tsm.pub.pem"),
        files::read_text(sp_tsm_key)?.as_bytes(),
    )?;
    let me = Signer::generate(PartyId::new(ISSUER_PARTY)?)?;
    files::write_key_pair(dir, "issuer", &me.to_pkcs8_pem()?, &me.public_pem()?)?;
    let (scheme, tls_lines, ca_line) = files::write_dev_tls(dir, tls, || {
        format!("tls_ca = \"{}\"\n", abs.join("tls.crt.pem").display())
    })?;
    let p = |f: &str| pki.join(f).display().to_string();
    let refused_checks = super::DEFAULT_REFUSED_CHECKS;
    files::write_private(
        &dir.join("jpki-issuer.toml"),
        format!(
            "# kagi JPKI issuer (generated by `kagi jpki-issuer init`): verifies applications, issues the phones' user-authentication certificates\nname = \"{ISSUER_PARTY}\"\nsigning_key = \"issuer.key.pem\"\ndatabase = \"jpki-issuer.db\"\nlisten = \"{listen}\"\n{tls_lines}# The My Number cards' signature CA and its CRL (read again for every check and every few seconds).\nsign_ca = \"{}\"\nsign_crl = \"{}\"\n# The user-authentication CA. ua_ca_key is a FILE KEY STORE (PKCS#8 DER, 0600): development only.\nua_ca_cert = \"{}\"\nua_ca_key = \"{}\"\nmanufacturer_ca = \"{}\"\npin_mailer = \"pin-mailer\"\n# The on-card mode's challenge secret (hex, 0600; made on first start if missing).\nchallenge_key = \"challenge.key\"\n# The CRL of the phone certificates (signed by the user-authentication CA; also GET /v1/crl).\ncrl = \"ua-crl.der\"\nvalidity_days = 365\napplication_max_age = 600\n# Refused application checks (bad applications) an SP-TSM may make per minute; then retryable refusals until the minute passes.\nrefused_checks_per_minute = {refused_checks}\n\n[[sp_tsm]]\nparty = \"{sp_tsm}\"\npublic_key = \"sp-tsm.pub.pem\"\nproviders = [\"sp:kagi-bank\"]\n",
            p("sign-ca.crt.der"),
            p("sign-ca.crl.der"),
            p("auth-ca.crt.der"),
            p("auth-ca.key.der"),
            maker.display()
        )
        .as_bytes(),
    )?;
    files::write_public(
        &dir.join("sp-tsm-link.toml"),
        format!(
            "\n[jpki_issuer]\nparty = \"{ISSUER_PARTY}\"\nurl = \"{scheme}://{listen}\"\npublic_key = \"{}\"\n{ca_line}# How the phone's key is made: \"on-card\" (preferred: the SIM's JPKI applet generates it, the issuer certifies it) or \"issuer\" (the issuer makes it and seals it to the SIM, seed 004's 7, 16, 17).\nkey_generation = \"on-card\"\n",
            abs.join("issuer.pub.pem").display()
        )
        .as_bytes(),
    )?;
    Ok(())
}
