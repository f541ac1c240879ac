//! The MNO-TSM's own configuration (`mno-tsm.toml`): its name and signing key, its state key,
//! database and listening address, the operators whose SIMs it manages with their issuer
//! domain keys, the SP-TSMs it trusts and the providers it prepares SIMs for. The same
//! service ([`Tsm`](crate::service::Tsm)) as the SP-TSM, holding the other half of the keys:
//! issuer-domain keys here, never a provider's.

use super::{Loaded, MasterKeys, Overrides, SetupError, aes_key_file, hex_aid, hex_byte};
use crate::service::{Config, Hosted, Operator};
use card_wire::scp03::Diversification;
use kagi_serve::files::{self, DevTls, rel};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use tsm_protocol::PartyId;
use tsm_protocol::signing::{Policy, Signer, Trust};

/// The party name `init_mno` gives a development MNO-TSM.
pub const MNO_TSM_PARTY: &str = "tsm:kagi-mobile";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MnoFile {
    name: String,
    signing_key: String,
    state_key: String,
    database: String,
    listen: String,
    #[serde(default)]
    tls_cert: Option<String>,
    #[serde(default)]
    tls_key: Option<String>,
    #[serde(default)]
    operator: Vec<OperatorEntry>,
    #[serde(default)]
    sp_tsm: Vec<SpTsmEntry>,
    #[serde(default)]
    provider: Vec<HostedEntry>,
    #[serde(default)]
    limits: Option<kagi_serve::LimitsFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorEntry {
    party: String,
    public_key: String,
    /// The issuer-domain master keys (a key set name: DIR/NAME.keys or an HSM label).
    isd_keys: String,
    #[serde(default = "default_isd_kvn")]
    isd_kvn: String,
    #[serde(default = "default_isd")]
    isd: String,
    #[serde(default = "default_none")]
    isd_diversification: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpTsmEntry {
    party: String,
    public_key: String,
    /// Where it takes SIM notices (its control API's base URL).
    #[serde(default)]
    url: Option<String>,
    /// Its TLS certificate (PEM) when `url` is HTTPS with a certificate of its own.
    #[serde(default)]
    tls_ca: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostedEntry {
    party: String,
    security_domain: String,
    sp_tsm: String,
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

/// Reads `mno-tsm.toml` at `path` (files it names are relative to it), opening each operator's
/// issuer-domain key set through `keys`.
pub fn load_mno(
    path: &Path,
    overrides: &Overrides,
    keys: &MasterKeys<'_>,
) -> Result<Loaded, SetupError> {
    let text = files::read_text(path)?;
    let f: MnoFile =
        toml::from_str(&text).map_err(|e| files::FileError::invalid(path, e.to_string()))?;
    let me = PartyId::new(&f.name)?;
    let signer =
        Signer::from_pkcs8_pem(me.clone(), &files::read_secret(&rel(path, &f.signing_key))?)?;
    let mut trust = Trust::new();
    let mut operators = BTreeMap::new();
    for o in &f.operator {
        let party = PartyId::new(&o.party)?;
        trust.add_pem(party.clone(), &files::read_text(&rel(path, &o.public_key))?)?;
        let kvn = hex_byte(path, &format!("operator {}: isd_kvn", o.party), &o.isd_kvn)?;
        let scheme: Diversification =
            o.isd_diversification
                .parse()
                .map_err(|e: String| SetupError::Config {
                    config: path.to_path_buf(),
                    message: format!("operator {}: {e}", o.party),
                })?;
        let source = keys(&o.isd_keys, kvn, scheme).map_err(|message| SetupError::Keys {
            name: o.isd_keys.clone(),
            message,
        })?;
        operators.insert(
            party,
            Operator {
                isd_aid: hex_aid(path, "isd", &o.isd)?,
                kvn,
                keys: source,
            },
        );
    }
    if operators.is_empty() {
        return Err(SetupError::Config {
            config: path.to_path_buf(),
            message: "an MNO-TSM needs at least one [[operator]] with its isd_keys".into(),
        });
    }
    let mut sp_tsms = Vec::new();
    let mut sp_tsm_links = crate::service::SpTsmLinks::new();
    for s in &f.sp_tsm {
        let party = crate::setup::trusted_sp_tsm(path, &s.party, &s.public_key, &mut trust)?;
        if let Some(url) = &s.url {
            let http = crate::setup::https_client(path, "sp_tsm", s.tls_ca.as_deref())?;
            sp_tsm_links.insert(
                party.clone(),
                crate::service::SpTsmLink {
                    url: url.trim_end_matches('/').to_string(),
                    http,
                },
            );
        }
        sp_tsms.push(party);
    }
    let mut hosted = BTreeMap::new();
    for p in &f.provider {
        let sp_tsm = PartyId::new(&p.sp_tsm)?;
        if !sp_tsms.contains(&sp_tsm) {
            return Err(SetupError::Config {
                config: path.to_path_buf(),
                message: format!(
                    "provider {}: its sp_tsm {} has no [[sp_tsm]] entry (with its public key)",
                    p.party, p.sp_tsm
                ),
            });
        }
        hosted.insert(
            PartyId::new(&p.party)?,
            Hosted {
                sd_aid: hex_aid(path, "security_domain", &p.security_domain)?,
                sp_tsm,
            },
        );
    }
    let database = super::database_location(path, &f.database, overrides);
    Ok(Loaded {
        config: Config {
            signer,
            trust,
            policy: Policy::new(me),
            providers: BTreeMap::new(),
            operators,
            hosted,
            mno: Vec::new(),
            issuer: None,
            state_key: aes_key_file(&rel(path, &f.state_key))?,
            revocation_list: None,
            outbox: None,
        },
        database,
        listen: overrides.listen.clone().unwrap_or(f.listen),
        tls: files::tls_files(path, &f.tls_cert, &f.tls_key)?,
        limits: f.limits,
        sp_tsm_links,
    })
}

/// Writes a development MNO-TSM in `dir`: its signing key (`mno-tsm.key.pem`, public
/// `mno-tsm.pub.pem`), the operator `mno:kagi-mobile`'s key and client configuration
/// (`operator.toml`), the state key, the simulated SIMs' issuer-domain keys in `dir/keys`
/// (the GP test key; 0700, files 0600), `mno-tsm.toml` serving at `listen` (HTTPS with
/// `tls`) trusting the SP-TSM `sp_tsm` (public key copied from `sp_tsm_key`; SIM notices to
/// `sp_tsm_url` when given) for the provider
/// `sp:kagi-bank`, and `sp-tsm-link.toml`: the `[[mno_tsm]]` section to add to that SP-TSM's
/// `tsm.toml`. Refuses a directory that already holds an MNO-TSM.
pub fn init_mno(
    dir: &Path,
    listen: &str,
    tls: Option<DevTls>,
    sp_tsm: &PartyId,
    sp_tsm_key: &Path,
    sp_tsm_url: Option<&str>,
) -> Result<(), SetupError> {
    init_mno_as(
        dir,
        listen,
        tls,
        sp_tsm,
        sp_tsm_key,
        sp_tsm_url,
        &MnoIdentity::default(),
    )
}

/// Who a development MNO-TSM is and which SIMs it serves ([`init_mno_as`]).
#[derive(Debug, Clone)]
pub struct MnoIdentity {
    /// The MNO-TSM's party (`tsm:NAME`; [`MNO_TSM_PARTY`] by default).
    pub name: PartyId,
    /// Its operator's party (`mno:NAME`; `mno:kagi-mobile` by default).
    pub operator: PartyId,
    /// The ICCID issuer prefixes of the operator's SIMs, written into the SP-TSM's
    /// `[[mno_tsm]]` (`crate::service::mno_links`); empty by default: the link then serves
    /// every SIM, as an SP-TSM's only link may.
    pub iccid_prefixes: Vec<String>,
}

impl Default for MnoIdentity {
    fn default() -> Self {
        MnoIdentity {
            name: PartyId(MNO_TSM_PARTY.into()),
            operator: PartyId("mno:kagi-mobile".into()),
            iccid_prefixes: Vec::new(),
        }
    }
}

/// [`init_mno`] for the MNO-TSM `id.name` of operator `id.operator`, its SP-TSM link
/// (`sp-tsm-link.toml`, a `[[mno_tsm]]` section) naming the SIMs it serves by
/// `id.iccid_prefixes` — one of several operators an SP-TSM links to.
pub fn init_mno_as(
    dir: &Path,
    listen: &str,
    tls: Option<DevTls>,
    sp_tsm: &PartyId,
    sp_tsm_key: &Path,
    sp_tsm_url: Option<&str>,
    id: &MnoIdentity,
) -> Result<(), SetupError> {
    if id.name.role() != "tsm" || id.operator.role() != "mno" {
        return Err(SetupError::Config {
            config: dir.join("mno-tsm.toml"),
            message: format!(
                "an MNO-TSM is tsm:NAME and its operator mno:NAME (got {} and {})",
                id.name, id.operator
            ),
        });
    }
    let (me_party, op_party) = (&id.name.0, &id.operator.0);
    let prefixes_line = if id.iccid_prefixes.is_empty() {
        "# iccid_prefixes = [\"898100\"]   # the SIMs it serves (ICCID issuer prefixes): needed with several [[mno_tsm]]\n".to_string()
    } else {
        let quoted: Vec<String> = id
            .iccid_prefixes
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect();
        format!(
            "iccid_prefixes = [{}]   # the SIMs it serves (ICCID issuer prefixes, ITU-T E.118)\n",
            quoted.join(", ")
        )
    };
    files::create_private_dir(&dir.join("keys"))?;
    let url_line = sp_tsm_url
        .map(|u| {
            format!(
                "url = \"{}\"            # where it takes SIM loss/change notices\n",
                u.trim_end_matches('/')
            )
        })
        .unwrap_or_default();
    if dir.join("mno-tsm.toml").exists() {
        return Err(SetupError::Config {
            config: dir.join("mno-tsm.toml"),
            message: "this directory already holds an MNO-TSM configuration: choose another".into(),
        });
    }
    // The link file names this directory's files for another configuration: absolute paths.
    let abs = std::fs::canonicalize(dir).map_err(|e| SetupError::Config {
        config: dir.to_path_buf(),
        message: format!("cannot resolve the directory: {e}"),
    })?;
    let sp_pub = files::read_text(sp_tsm_key)?;
    files::write_public(&dir.join("sp-tsm.pub.pem"), sp_pub.as_bytes())?;
    let me = Signer::generate(id.name.clone())?;
    let op = Signer::generate(id.operator.clone())?;
    for (name, s) in [("mno-tsm", &me), ("mno", &op)] {
        files::write_key_pair(dir, name, &s.to_pkcs8_pem()?, &s.public_pem()?)?;
    }
    files::write_private(&dir.join("state.key"), files::random_hex(16)?.as_bytes())?;
    files::write_private(
        &dir.join("keys/isd.keys"),
        b"# DEVELOPMENT ONLY: the operator's issuer-domain keys of the simulated SIMs (the GP test key).\nKEY=404142434445464748494A4B4C4D4E4F\n",
    )?;
    let (scheme, tls_lines, ca_line) = files::write_dev_tls(dir, tls, || {
        format!("tls_ca = \"{}\"\n", abs.join("tls.crt.pem").display())
    })?;
    files::write_private(
        &dir.join("mno-tsm.toml"),
        format!(
            "# kagi MNO-TSM (generated by `kagi mno-tsm init`): the operator's issuer-domain keys and SIM registry\nname = \"{me_party}\"\nsigning_key = \"mno-tsm.key.pem\"\nstate_key = \"state.key\"\ndatabase = \"mno-tsm.db\"\nlisten = \"{listen}\"\n{tls_lines}\n[[operator]]\nparty = \"{op_party}\"\npublic_key = \"mno.pub.pem\"\nisd_keys = \"isd\"              # DIR/isd.keys with --insecure-file-keys DIR, or HSM label\nisd_kvn = \"30\"\n\n[[sp_tsm]]\nparty = \"{sp_tsm}\"\npublic_key = \"sp-tsm.pub.pem\"\n{url_line}\n[[provider]]\nparty = \"sp:kagi-bank\"\nsecurity_domain = \"A00000015153505001\"\nsp_tsm = \"{sp_tsm}\"\n"
        )
        .as_bytes(),
    )?;
    files::write_private(
        &dir.join("operator.toml"),
        format!(
            "party = \"{op_party}\"\nsigning_key = \"mno.key.pem\"\ntsm = \"{scheme}://{listen}\"\ntsm_party = \"{me_party}\"\ntsm_public_key = \"mno-tsm.pub.pem\"\n{}",
            ca_line.replace("tls_ca", "tsm_ca")
        )
        .as_bytes(),
    )?;
    files::write_public(
        &dir.join("sp-tsm-link.toml"),
        format!(
            "\n[[mno_tsm]]\nparty = \"{me_party}\"\nurl = \"{scheme}://{listen}\"\npublic_key = \"{}\"\n{prefixes_line}{ca_line}",
            abs.join("mno-tsm.pub.pem").display()
        )
        .as_bytes(),
    )?;
    Ok(())
}
