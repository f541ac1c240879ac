//! Personalisation profiles: a versioned TOML file that says what goes on each card. Errors
//! point at the line.
//!
//! ```toml
//! version = 1
//! name = "member card"
//! card = "smartcard"               # or "uicc"
//! final_state = "secured"           # or "locked"
//!
//! [keys]
//! transport_kvn = "30"             # the key set cards leave the factory with
//! production_kvn = "31"            # replaces it, diversified per card
//! diversification = "kdf3"
//!
//! [[domain]]                     # a supplementary security domain for a service provider
//! instance = "A00000015153505001"
//! privileges = "804000"            # SD + Authorized Management; default 80 (SD only)
//! keys = "provider"                # its master key set: provider.keys, or HSM label "provider"
//!
//! [[install]]
//! package = "F04B414749"
//! module = "F04B41474901"
//! instance = "F04B4147490101"
//! privileges = "00"
//!
//! [[store]]
//! instance = "F04B4147490101"
//! blocks = ["4D454D424552{member_no}", "{name}"]   # hex; {field} = the record's field (UTF-8)
//!
//! [jpki]                           # a JPKI credential: keys generated on the card
//! instance = "D392F000260100000001"
//! text_instance = "D3921000310001010408"   # optional: the text AP gets the record's facts
//! pin_mailer_key = "keys/pin-mailer.pub.pem"  # PINs are generated and mailed, never stored
//! ca = "test"                      # the test CA in ca_dir, or "external":
//! ca_dir = "pki"                   # external: holds auth-ca.crt.pem and sign-ca.crt.pem
//! # exchange_dir = "exchange"      # external: requests/ID.{auth,sign}.csr.pem out,
//! #                                #   issued/ID.{auth,sign}.crt.pem in
//! # ca_timeout_seconds = 600       # external: then the card waits for `kagi perso resume`
//! ```

use crate::error::{Error, Result};
use card_wire::scp03::Diversification;
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// The profile format version this build reads.
pub const PROFILE_VERSION: u32 = 1;

fn hex_bytes(what: &str, s: &str) -> std::result::Result<Vec<u8>, String> {
    hex::decode(s).map_err(|e| format!("{what} '{s}' is not hex: {e}"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    transport_kvn: String,
    production_kvn: String,
    #[serde(default = "default_kdf")]
    diversification: String,
}

fn default_kdf() -> String {
    "kdf3".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstall {
    package: String,
    module: String,
    instance: String,
    #[serde(default)]
    privileges: Option<String>,
    #[serde(default)]
    params: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    instance: String,
    keys: String,
    #[serde(default)]
    privileges: Option<String>,
    #[serde(default)]
    package: Option<String>,
    #[serde(default)]
    module: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    instance: String,
    blocks: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    #[serde(default)]
    package: Option<String>,
    #[serde(default)]
    modules: Vec<String>,
    /// A CAP file, relative to the profile.
    #[serde(default)]
    cap: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJpki {
    instance: String,
    ca_dir: String,
    pin_mailer_key: String,
    #[serde(default)]
    text_instance: Option<String>,
    #[serde(default)]
    ca: Option<String>,
    #[serde(default)]
    exchange_dir: Option<String>,
    #[serde(default)]
    ca_timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    version: Spanned<u32>,
    name: String,
    #[serde(default = "default_card")]
    card: Spanned<String>,
    keys: Spanned<RawKeys>,
    #[serde(default)]
    load: Vec<Spanned<RawLoad>>,
    #[serde(default)]
    domain: Vec<Spanned<RawDomain>>,
    #[serde(default)]
    install: Vec<Spanned<RawInstall>>,
    #[serde(default)]
    jpki: Option<Spanned<RawJpki>>,
    #[serde(default)]
    store: Vec<Spanned<RawStore>>,
    #[serde(default = "default_state")]
    final_state: Spanned<String>,
}

fn default_card() -> Spanned<String> {
    Spanned::new(0..0, "smartcard".into())
}

fn default_state() -> Spanned<String> {
    Spanned::new(0..0, "secured".into())
}

/// A supplementary security domain: created by the issuer security domain, then its initial
/// keys (a copy of the installer's, on GlobalPlatform cards that do so) are replaced by keys
/// diversified from the provider's own master key set, with the production KVN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// The security domain's package AID (GlobalPlatform's `A0000001515350` by default).
    pub package: Vec<u8>,
    /// Its module AID (`A000000151535041` by default).
    pub module: Vec<u8>,
    /// The new domain's AID.
    pub instance: Vec<u8>,
    /// Privileges (Security Domain at least).
    pub privileges: Vec<u8>,
    /// The name of its master key set (file `NAME.keys`, or HSM key label `NAME`).
    pub keys: String,
}

/// An applet to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    /// Package AID.
    pub package: Vec<u8>,
    /// Module AID.
    pub module: Vec<u8>,
    /// Instance AID.
    pub instance: Vec<u8>,
    /// Privileges.
    pub privileges: Vec<u8>,
    /// Install parameters.
    pub params: Vec<u8>,
}

/// A load file: a CAP file (`cap = "file.cap"`), or for the simulator's own classes a package
/// with modules (module AID → simulator class).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// Package AID (of the CAP once [`Profile::read`] has read it).
    pub package: Vec<u8>,
    /// (module AID, class); empty for a CAP.
    pub modules: Vec<(Vec<u8>, String)>,
    /// The CAP file's path as the profile gives it (relative to the profile).
    pub cap: Option<std::path::PathBuf>,
    /// The CAP file, read by [`Profile::read`].
    pub cap_file: Option<kagi_cap::CapFile>,
}

/// Who issues a JPKI card's certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateAuthority {
    /// The project's test CA, whose keys are in `ca_dir` (`kagi ca init`).
    Test,
    /// An external CA reached through a file exchange: kagi writes one PKCS#10 request per
    /// key (signed on the card) to `EXCHANGE/requests/ID.auth.csr.pem` and
    /// `ID.sign.csr.pem`, and waits for the CA to put `ID.auth.crt.pem` and `ID.sign.crt.pem`
    /// (PEM or DER) into `EXCHANGE/issued/`. `ca_dir` holds the CA certificates
    /// (`auth-ca.crt.pem`, `sign-ca.crt.pem`) the issued certificates must chain to.
    External {
        /// The exchange directory, relative to the profile.
        exchange_dir: std::path::PathBuf,
        /// How long a station waits for the certificates before it leaves the card in
        /// progress (to be continued by `kagi perso resume`).
        timeout: std::time::Duration,
    },
}

/// JPKI issuance: keys generated on the card, certificates from a CA, PINs generated per card
/// and written only to the PIN mailer file, encrypted to the mailer's public key.
#[derive(Debug, Clone)]
pub struct Jpki {
    /// The JPKI AP instance.
    pub instance: Vec<u8>,
    /// Who issues the certificates.
    pub ca: CertificateAuthority,
    /// The CA directory, relative to the profile: the test CA's files, or an external CA's
    /// certificates.
    pub ca_dir: std::path::PathBuf,
    /// The PIN mailer's RSA public key (PEM or DER SubjectPublicKeyInfo), relative to the
    /// profile.
    pub pin_mailer_key: std::path::PathBuf,
    /// The text AP instance, when it is to carry the record's facts.
    pub text_instance: Option<Vec<u8>>,
}

/// A template block: literal bytes and record fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal bytes.
    Bytes(Vec<u8>),
    /// A record field, as UTF-8.
    Field(String),
}

/// Data to STORE into an instance, from templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    /// The instance personalised.
    pub instance: Vec<u8>,
    /// One STORE DATA block per template.
    pub blocks: Vec<Vec<Piece>>,
}

/// The card type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardType {
    /// A smart card.
    SmartCard,
    /// A SIM / UICC.
    Uicc,
}

/// A validated profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Name (reports).
    pub name: String,
    /// Card type.
    pub card: CardType,
    /// KVN of the transport key set.
    pub transport_kvn: u8,
    /// KVN of the production key set.
    pub production_kvn: u8,
    /// Diversification of the production keys.
    pub diversification: Diversification,
    /// Load files (simulator classes).
    pub load: Vec<Load>,
    /// Supplementary security domains to create, with their keys.
    pub domains: Vec<Domain>,
    /// Applets to install.
    pub install: Vec<Install>,
    /// JPKI issuance, if the profile issues a JPKI credential.
    pub jpki: Option<Jpki>,
    /// Data to store.
    pub store: Vec<Store>,
    /// Card life cycle at the end (`0F` secured, `7F` locked).
    pub final_state: u8,
}

fn parse_template(t: &str) -> std::result::Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = t;
    while !rest.is_empty() {
        match rest.find('{') {
            Some(0) => {
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("template '{t}': '{{' without '}}'"))?;
                let name = &rest[1..end];
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("template '{t}': bad field name '{name}'"));
                }
                out.push(Piece::Field(name.to_string()));
                rest = &rest[end + 1..];
            }
            Some(i) => {
                out.push(Piece::Bytes(hex_bytes("template", &rest[..i])?));
                rest = &rest[i..];
            }
            None => {
                out.push(Piece::Bytes(hex_bytes("template", rest)?));
                rest = "";
            }
        }
    }
    Ok(out)
}

fn aid(what: &str, s: &str) -> std::result::Result<Vec<u8>, String> {
    let v = hex_bytes(what, s)?;
    card_wire::Aid::new(&v)
        .map(|a| a.as_bytes().to_vec())
        .map_err(|e| format!("{what} {s}: {e}"))
}

fn kvn(what: &str, s: &str) -> std::result::Result<u8, String> {
    match hex_bytes(what, s)?.as_slice() {
        [k] if *k != 0 && *k != 0xFF => Ok(*k),
        _ => Err(format!("{what} '{s}' must be one hex byte, 01..FE")),
    }
}

impl Profile {
    /// Reads a profile file; relative paths in it are taken from the file's directory.
    pub fn read(path: &std::path::Path) -> Result<Profile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Profile(format!("{}: {e}", path.display())))?;
        let mut p =
            Self::parse(&text).map_err(|e| Error::Profile(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        for l in &mut p.load {
            if let Some(cap) = &l.cap {
                let full = base.join(cap);
                let file = kagi_cap::CapFile::from_path(&full).map_err(|e| {
                    Error::Profile(format!(
                        "{}: [[load]] {}: {e}",
                        path.display(),
                        full.display()
                    ))
                })?;
                l.package = file.package_aid().to_vec();
                l.cap = Some(full);
                l.cap_file = Some(file);
            }
        }
        if let Some(j) = p.jpki.as_mut() {
            j.ca_dir = base.join(&j.ca_dir);
            j.pin_mailer_key = base.join(&j.pin_mailer_key);
            if let CertificateAuthority::External { exchange_dir, .. } = &mut j.ca {
                *exchange_dir = base.join(&*exchange_dir);
            }
        }
        Ok(p)
    }

    /// Parses and validates a profile; errors name the line (TOML) or the field (meaning).
    pub fn parse(text: &str) -> Result<Profile> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| Error::Profile(e.to_string()))?;
        // Meaning errors name the entry and the line it starts on, as TOML's own errors do.
        let at = |span: std::ops::Range<usize>, what: &str, m: String| {
            let end = span.start.min(text.len());
            let line = text.as_bytes()[..end]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            Error::Profile(format!("line {line}, {what}: {m}"))
        };
        if *raw.version.get_ref() != PROFILE_VERSION {
            return Err(at(
                raw.version.span(),
                "version",
                format!(
                    "profile version {} is not supported (this kagi reads version {PROFILE_VERSION})",
                    raw.version.get_ref()
                ),
            ));
        }
        let card = match raw.card.get_ref().as_str() {
            "smartcard" => CardType::SmartCard,
            "uicc" | "sim" => CardType::Uicc,
            other => {
                return Err(at(
                    raw.card.span(),
                    "card",
                    format!("'{other}': use smartcard or uicc"),
                ));
            }
        };
        let keys_at = |m: String| at(raw.keys.span(), "[keys]", m);
        let k = raw.keys.get_ref();
        let diversification: Diversification = k.diversification.parse().map_err(keys_at)?;
        let transport_kvn = kvn("transport_kvn", &k.transport_kvn).map_err(keys_at)?;
        let production_kvn = kvn("production_kvn", &k.production_kvn).map_err(keys_at)?;
        if transport_kvn == production_kvn {
            return Err(keys_at(
                "production_kvn must differ from transport_kvn".into(),
            ));
        }
        let mut load = Vec::new();
        for (i, l) in raw.load.iter().enumerate() {
            let ctx = |m: String| at(l.span(), &format!("load[{i}]"), m);
            let l = l.get_ref();
            if let Some(cap) = &l.cap {
                if l.package.is_some() || !l.modules.is_empty() {
                    return Err(ctx(
                        "give either cap = \"file.cap\" or package and modules, not both".into(),
                    ));
                }
                load.push(Load {
                    package: Vec::new(),
                    modules: Vec::new(),
                    cap: Some(cap.into()),
                    cap_file: None,
                });
                continue;
            }
            let package = l
                .package
                .as_deref()
                .ok_or_else(|| ctx("give cap = \"file.cap\", or package and modules".into()))?;
            let mut modules = Vec::new();
            for m in &l.modules {
                let (a, class) = m
                    .split_once('=')
                    .ok_or_else(|| ctx(format!("module '{m}': use AID=CLASS")))?;
                modules.push((aid("module", a).map_err(ctx)?, class.to_string()));
            }
            load.push(Load {
                package: aid("package", package).map_err(ctx)?,
                modules,
                cap: None,
                cap_file: None,
            });
        }
        let jpki = match &raw.jpki {
            None => None,
            Some(j) => {
                let ctx = |m: String| at(j.span(), "[jpki]", m);
                let j = j.get_ref();
                let ca = match (j.ca.as_deref().unwrap_or("test"), &j.exchange_dir) {
                    ("test", None) if j.ca_timeout_seconds.is_none() => CertificateAuthority::Test,
                    ("test", _) => {
                        return Err(ctx(
                            "exchange_dir and ca_timeout_seconds are for ca = \"external\"".into(),
                        ));
                    }
                    ("external", Some(dir)) => CertificateAuthority::External {
                        exchange_dir: dir.into(),
                        timeout: std::time::Duration::from_secs(
                            j.ca_timeout_seconds.unwrap_or(600),
                        ),
                    },
                    ("external", None) => {
                        return Err(ctx(
                            "ca = \"external\" needs exchange_dir (where requests and certificates are exchanged)".into(),
                        ));
                    }
                    (other, _) => {
                        return Err(ctx(format!("ca = '{other}': use test or external")));
                    }
                };
                Some(Jpki {
                    instance: aid("instance", &j.instance).map_err(ctx)?,
                    ca,
                    ca_dir: j.ca_dir.clone().into(),
                    pin_mailer_key: j.pin_mailer_key.clone().into(),
                    text_instance: j
                        .text_instance
                        .as_deref()
                        .map(|t| aid("text_instance", t))
                        .transpose()
                        .map_err(ctx)?,
                })
            }
        };
        let mut install = Vec::new();
        for (i, r) in raw.install.iter().enumerate() {
            let ctx = |m: String| at(r.span(), &format!("install[{i}]"), m);
            let r = r.get_ref();
            install.push(Install {
                package: aid("package", &r.package).map_err(ctx)?,
                module: aid("module", &r.module).map_err(ctx)?,
                instance: aid("instance", &r.instance).map_err(ctx)?,
                privileges: hex_bytes("privileges", r.privileges.as_deref().unwrap_or("00"))
                    .map_err(ctx)?,
                params: hex_bytes("params", r.params.as_deref().unwrap_or("")).map_err(ctx)?,
            });
        }
        let mut domains = Vec::new();
        for (i, d) in raw.domain.iter().enumerate() {
            let ctx = |m: String| at(d.span(), &format!("domain[{i}]"), m);
            let d = d.get_ref();
            let privileges =
                hex_bytes("privileges", d.privileges.as_deref().unwrap_or("80")).map_err(ctx)?;
            if privileges.first().is_none_or(|p| p & 0x80 == 0) {
                return Err(ctx(
                    "privileges must include Security Domain (first byte 80)".into(),
                ));
            }
            if d.keys.is_empty()
                || !d
                    .keys
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ctx(format!(
                    "keys = '{}': a key set name (letters, digits, '-', '_')",
                    d.keys
                )));
            }
            domains.push(Domain {
                package: aid("package", d.package.as_deref().unwrap_or("A0000001515350"))
                    .map_err(ctx)?,
                module: aid("module", d.module.as_deref().unwrap_or("A000000151535041"))
                    .map_err(ctx)?,
                instance: aid("instance", &d.instance).map_err(ctx)?,
                privileges,
                keys: d.keys.clone(),
            });
        }
        let mut store = Vec::new();
        for (i, s) in raw.store.iter().enumerate() {
            let ctx = |m: String| at(s.span(), &format!("store[{i}]"), m);
            let s = s.get_ref();
            if s.blocks.is_empty() {
                return Err(ctx("blocks is empty".into()));
            }
            store.push(Store {
                instance: aid("instance", &s.instance).map_err(ctx)?,
                blocks: s
                    .blocks
                    .iter()
                    .map(|b| parse_template(b))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(ctx)?,
            });
        }
        let final_state = match raw.final_state.get_ref().as_str() {
            "secured" => 0x0F,
            "locked" => 0x7F,
            other => {
                return Err(at(
                    raw.final_state.span(),
                    "final_state",
                    format!("'{other}': use secured or locked"),
                ));
            }
        };
        Ok(Profile {
            name: raw.name,
            card,
            transport_kvn,
            production_kvn,
            diversification,
            load,
            domains,
            install,
            jpki,
            store,
            final_state,
        })
    }

    /// The record fields the templates use.
    pub fn fields(&self) -> Vec<String> {
        let mut f: Vec<String> = self
            .store
            .iter()
            .flat_map(|s| s.blocks.iter().flatten())
            .filter_map(|p| match p {
                Piece::Field(n) => Some(n.clone()),
                Piece::Bytes(_) => None,
            })
            .collect();
        if self
            .jpki
            .as_ref()
            .is_some_and(|j| j.text_instance.is_some())
        {
            f.extend(["name", "address", "birth_date", "sex", "my_number"].map(String::from));
        }
        f.sort();
        f.dedup();
        f
    }

    /// The STORE DATA blocks of `store` for a record.
    pub fn render(store: &Store, fields: &BTreeMap<String, String>) -> Result<Vec<Vec<u8>>> {
        store
            .blocks
            .iter()
            .map(|pieces| {
                let mut out = Vec::new();
                for p in pieces {
                    match p {
                        Piece::Bytes(b) => out.extend_from_slice(b),
                        Piece::Field(n) => out.extend_from_slice(
                            fields
                                .get(n)
                                .ok_or_else(|| {
                                    Error::Profile(format!("record has no field '{n}'"))
                                })?
                                .as_bytes(),
                        ),
                    }
                }
                if out.is_empty() || out.len() > kagi::gp::manage::BLOCK {
                    return Err(Error::Profile(format!(
                        "a STORE DATA block of {} bytes is outside 1..={}",
                        out.len(),
                        kagi::gp::manage::BLOCK
                    )));
                }
                Ok(out)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = r#"
version = 1
name = "t"
[keys]
transport_kvn = "30"
production_kvn = "31"
[[install]]
package = "F04B414749"
module = "F04B41474901"
instance = "F04B4147490101"
[[store]]
instance = "F04B4147490101"
blocks = ["4142{member_no}", "{name}"]
"#;

    #[test]
    fn parses_and_renders() {
        let p = Profile::parse(GOOD).unwrap();
        assert_eq!(
            (p.transport_kvn, p.production_kvn, p.final_state),
            (0x30, 0x31, 0x0F)
        );
        assert_eq!(p.fields(), vec!["member_no", "name"]);
        let mut f = BTreeMap::new();
        f.insert("member_no".to_string(), "007".to_string());
        f.insert("name".to_string(), "x".to_string());
        let blocks = Profile::render(&p.store[0], &f).unwrap();
        assert_eq!(blocks, vec![b"AB007".to_vec(), b"x".to_vec()]);
        f.remove("name");
        assert!(Profile::render(&p.store[0], &f).is_err());
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = Profile::parse(&GOOD.replace("version = 1", "version = 9"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 9"), "{e}");
        let e = Profile::parse(&GOOD.replace("name = \"t\"", "name = \"t\"\ncolour = 1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line") && e.contains("colour"), "{e}");
        let e = Profile::parse(&GOOD.replace("F04B4147490101\"\n[[store]]", "F0\"\n[[store]]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("install[0]") && e.contains("5 to 16"), "{e}");
        assert!(e.contains("line 7,"), "{e}");
        let e = Profile::parse(&GOOD.replace("4142{member_no}", "41{member_no"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("store[0]") && e.contains("line 11,"), "{e}");
        let e = Profile::parse(&GOOD.replace("\"31\"", "\"30\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("differ") && e.contains("[keys]"), "{e}");
    }

    #[test]
    fn jpki_certificate_authority() {
        let jpki = |extra: &str| {
            format!(
                "{GOOD}[jpki]\ninstance = \"D392F000260100000001\"\nca_dir = \"pki\"\npin_mailer_key = \"k.pem\"\n{extra}"
            )
        };
        let p = Profile::parse(&jpki("")).unwrap();
        assert_eq!(p.jpki.unwrap().ca, CertificateAuthority::Test);
        let p = Profile::parse(&jpki(
            "ca = \"external\"\nexchange_dir = \"x\"\nca_timeout_seconds = 5",
        ))
        .unwrap();
        assert_eq!(
            p.jpki.unwrap().ca,
            CertificateAuthority::External {
                exchange_dir: "x".into(),
                timeout: std::time::Duration::from_secs(5)
            }
        );
        for (extra, says) in [
            ("ca = \"external\"", "needs exchange_dir"),
            ("exchange_dir = \"x\"", "are for ca"),
            ("ca = \"vendor\"", "use test or external"),
        ] {
            let e = Profile::parse(&jpki(extra)).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("jpki"), "{extra}: {e}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(text in ".{0,400}") {
            let _ = Profile::parse(&text);
        }
    }
}
