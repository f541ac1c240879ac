//! `kagi gp …`: GlobalPlatform card management.

mod cap;
mod card;
mod dap;

use super::target::{AnyTransport, Target};
use super::{Failure, parse_hex, print_json};
use card_wire::scp03::{Diversification, HostOptions, Mode, SecurityLevel};
use clap::{Args, Subcommand};
use kagi::channel::CardChannel;
use kagi::gp::manage::{self, InstallSpec};
use kagi::gp::{self, StatusScope};
use kagi::keys::{self, KeySource};
use kagi::secure::{ScpChoice, ScpOptions, SecureChannel};
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum GpCmd {
    /// What the security domain reports without authentication (FCI, card data, key
    /// information, sequence counter, CPLC).
    Info {
        #[command(flatten)]
        target: Target,
        /// AID of the security domain (hex); default: the card's default or a well-known ISD.
        #[arg(long)]
        sd: Option<String>,
        /// Check these keys against the card with one INITIALIZE UPDATE (no authentication,
        /// nothing the card counts as a failure) and name the diversification that matches.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// With --key-file: auto (try none, emv, visa2 for SCP02; none, kdf3 for SCP03) or
        /// one scheme.
        #[arg(long, default_value = "auto", requires = "key_file")]
        kdf: String,
        /// With --key-file: the key version to ask for (hex; 00 = the card's choice).
        #[arg(long, value_parser = parse_hex_byte, default_value = "00", requires = "key_file")]
        kvn: u8,
    },
    /// Open a secure channel (SCP03 or SCP02) and list the registry (ISD, applications, load files).
    List {
        #[command(flatten)]
        session: Session,
    },
    /// Load an executable load file (INSTALL [for load] + LOAD): a CAP file (or .ijc), or —
    /// for the simulator's built-in classes — --package and --module AID=CLASS.
    Load {
        #[command(flatten)]
        session: Session,
        /// CAP file (zip) or .ijc to load.
        #[arg(required_unless_present = "package", conflicts_with_all = ["package", "modules"])]
        cap: Option<PathBuf>,
        #[command(flatten)]
        cap_opts: cap::CapOpts,
        /// Package (load file) AID.
        #[arg(long, requires = "modules")]
        package: Option<String>,
        /// A module: AID=CLASS (simulator classes: gp.sd, kagi.echo). Repeat for more.
        #[arg(long = "module")]
        modules: Vec<String>,
        /// Associate the load file with this security domain (default: the selected one).
        #[arg(long)]
        to: Option<String>,
        /// Leave out the SHA-256 load file hash.
        #[arg(long)]
        no_hash: bool,
    },
    /// Install an application or security domain (INSTALL [for install and make selectable]).
    /// With a CAP file: load it first unless its package is on the card, then install its
    /// applet (--applet when it has several).
    Install {
        #[command(flatten)]
        session: Session,
        /// CAP file whose applet to install (loaded first when the card lacks the package).
        #[arg(required_unless_present = "package", conflicts_with_all = ["package", "module"])]
        cap: Option<PathBuf>,
        #[command(flatten)]
        cap_opts: cap::CapOpts,
        /// With a CAP: the applet (module) AID to install.
        #[arg(long, requires = "cap")]
        applet: Option<String>,
        /// Package (load file) AID.
        #[arg(long, requires = "module")]
        package: Option<String>,
        /// Module (class) AID.
        #[arg(long)]
        module: Option<String>,
        /// Instance AID (default: the module AID).
        #[arg(long, visible_alias = "create")]
        instance: Option<String>,
        /// Privileges: names (security-domain,dap-verification,authorized-management,…) or 1
        /// or 3 bytes hex (80 = security domain, 804000 = SD with Authorized Management).
        #[arg(long, visible_alias = "privs", default_value = "00")]
        privileges: String,
        /// Install parameters (hex; wrapped in C9 unless they start with C9).
        #[arg(long, default_value = "")]
        params: String,
        /// Install only; make selectable later.
        #[arg(long)]
        not_selectable: bool,
    },
    /// Delete a CAP file's package and all its instances (DELETE with P2 80).
    Uninstall {
        #[command(flatten)]
        session: Session,
        /// The CAP file (or .ijc) whose package to delete.
        cap: PathBuf,
        #[command(flatten)]
        token: dap::TokenOpts,
    },
    /// What a CAP file holds (package, applets, imports, component sizes); no card needed.
    CapInfo {
        /// The CAP file (or .ijc).
        cap: PathBuf,
    },
    /// Delete an application, security domain or load file.
    Delete {
        #[command(flatten)]
        session: Session,
        /// The application or load file to delete (AID); the same as `--app AID`.
        #[arg(required_unless_present = "app", conflicts_with = "app")]
        aid: Option<String>,
        /// The application or load file to delete (AID), as `--app` elsewhere.
        #[arg(long)]
        app: Option<String>,
        /// Also delete the load file's instances.
        #[arg(long)]
        related: bool,
        #[command(flatten)]
        token: dap::TokenOpts,
    },
    /// Delete a key version, or one key of it (DELETE with D2 key version / D0 key id). Cards
    /// refuse the key set of the open session and their last one.
    DeleteKey {
        #[command(flatten)]
        session: Session,
        /// Key version number to delete (hex; `--kvn` names the version the session opens
        /// with).
        #[arg(value_parser = parse_hex_byte)]
        version: u8,
        /// Only this key identifier of the version (hex).
        #[arg(long, value_parser = parse_hex_byte)]
        id: Option<u8>,
    },
    /// Add or replace a key set (PUT KEY). The new keys come from a key file, never argv.
    PutKey {
        #[command(flatten)]
        session: Session,
        /// Key file of the new key set (KEY= or ENC=/MAC=/DEK=, and KVN=).
        #[arg(
            long,
            required_unless_present = "dap_public_key",
            conflicts_with = "dap_public_key"
        )]
        new_key_file: Option<PathBuf>,
        /// Instead: a DAP verification public key (PEM: public key, or a private key's public
        /// half; RSA or P-256; or a PKCS#11 URI as for --dap-key) for a domain with DAP
        /// Verification, as key 01 of --new-kvn.
        #[arg(long, requires = "new_kvn")]
        dap_public_key: Option<String>,
        /// With --dap-public-key: the key version (hex, 01..7F).
        #[arg(long, value_parser = parse_hex_byte)]
        new_kvn: Option<u8>,
        /// Replace this key version (hex) instead of adding one.
        #[arg(long, value_parser = parse_hex_byte)]
        replace: Option<u8>,
    },
    /// Change a life cycle (SET STATUS).
    SetStatus {
        #[command(flatten)]
        session: Session,
        /// Card state: initialized, secured, locked, terminated.
        #[arg(long, conflicts_with = "app")]
        card: Option<String>,
        /// Application or security domain AID.
        #[arg(long, requires = "state")]
        app: Option<String>,
        /// For --app: lock, unlock, or a hex state.
        #[arg(long)]
        state: Option<String>,
    },
    /// Send STORE DATA blocks, to the security domain or (with --app) to an application being
    /// personalised.
    StoreData {
        #[command(flatten)]
        session: Session,
        /// Personalise this application (INSTALL [for personalization] first).
        #[arg(long)]
        app: Option<String>,
        /// Data blocks (hex), one STORE DATA each.
        #[arg(long = "data", conflicts_with = "data_file")]
        data: Vec<String>,
        /// Read the blocks from a file (one hex block per line), kept out of traces.
        #[arg(long)]
        data_file: Option<PathBuf>,
    },
}

/// An SCP03 session to a security domain: card, domain, keys and level.
#[derive(Args, Clone)]
pub struct Session {
    #[command(flatten)]
    pub(super) target: Target,
    /// AID of the security domain (hex); default: the card's default or a well-known ISD.
    #[arg(long)]
    sd: Option<String>,
    /// Key file (KEY=hex, or ENC/MAC/DEK=hex, optional KVN=hex). Also: KAGI_KEY* variables.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Key version number to ask for (hex; 00 = the card's choice).
    #[arg(long, value_parser = parse_hex_byte, default_value = "00")]
    kvn: u8,
    /// Key diversification: none, kdf3 (SCP03), emv or visa2 (SCP02).
    #[arg(long, default_value = "none")]
    kdf: Diversification,
    /// Security level: mac, enc, rmac, enc+rmac, full, or hex 01/03/11/13/33 (default: full
    /// for SCP03, enc for SCP02).
    #[arg(long)]
    level: Option<SecurityLevel>,
    /// Secure channel protocol: 02, 03 or auto (the card's recognition data and its answer
    /// to INITIALIZE UPDATE decide).
    #[arg(long, default_value = "auto")]
    scp: ScpChoice,
    /// Use SCP03 S16 mode (16-byte challenges and MACs); chosen automatically when the card
    /// announces it.
    #[arg(long)]
    s16: bool,
    /// Allow the published GP test keys 40..4F (development cards only).
    #[arg(long)]
    test_keys: bool,
}

fn parse_hex_byte(s: &str) -> Result<u8, String> {
    u8::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| format!("'{s}' is not a hex byte"))
}

fn sd_aid(sd: &Option<String>) -> Result<Option<Vec<u8>>, Failure> {
    Ok(match sd {
        Some(s) => Some(parse_hex("security domain AID", s)?),
        None => None,
    })
}

pub(super) type Secure<'c> = SecureChannel<'c, AnyTransport>;

/// A SET STATUS to run inside a session.
type StatusAction = dyn Fn(&mut Secure<'_>) -> kagi::Result<()>;

impl Session {
    /// Opens the card and an SCP03 session, runs `f`, saves a simulated card's image.
    pub(super) fn run<R>(
        &self,
        trace: bool,
        f: impl FnOnce(&mut Secure<'_>, &gp::SelectedDomain, KeySource) -> Result<R, Failure>,
    ) -> Result<R, Failure> {
        let target = &self.target;
        let allow_test = self.test_keys || target.sim;
        let (static_keys, source) = keys::resolve(self.key_file.as_deref(), self.kvn, allow_test)?;
        if source == KeySource::TestKeys {
            if target.sim {
                eprintln!("note: using the GP test keys 40..4F of the simulator");
            } else {
                eprintln!(
                    "WARNING: using the PUBLISHED GP test keys 40..4F. Only development cards use them;"
                );
                eprintln!(
                    "WARNING: a production card will refuse them and may lock after a few failures."
                );
            }
        }
        let mut ch: CardChannel<AnyTransport> = target.open(trace)?;
        let aid = sd_aid(&self.sd)?;
        let domain = gp::select_domain(&mut ch, aid.as_deref())?;
        let announced = domain.recognition.as_ref().and_then(|r| r.scp);
        let scp = ScpOptions::from_recognition(self.scp, announced);
        let scp02 =
            self.scp == ScpChoice::Scp02 || (self.scp == ScpChoice::Auto && scp.scp02_i.is_some());
        let options = HostOptions {
            kvn: self.kvn,
            level: self.level.unwrap_or(if scp02 {
                SecurityLevel::CMAC_CDEC
            } else {
                SecurityLevel::FULL
            }),
            // S16 when asked, or when the card's recognition data announces it (SCP03 i bit 01).
            mode: if self.s16 || announced.is_some_and(|(p, i)| p == 0x03 && i & 1 != 0) {
                Mode::S16
            } else {
                Mode::S8
            },
            diversification: self.kdf,
            channel: 0,
        };
        let result = {
            let mut sc =
                SecureChannel::open_scp(&mut ch, static_keys, options, Some(&domain.aid), scp)?;
            f(&mut sc, &domain, source)?
        };
        target.finish(&ch)?;
        Ok(result)
    }
}

pub(super) fn aid(what: &str, s: &str) -> Result<Vec<u8>, Failure> {
    let v = parse_hex(what, s)?;
    card_wire::Aid::new(&v)
        .map(|a| a.as_bytes().to_vec())
        .map_err(|e| format!("{what} {s}: {e}").into())
}

pub(super) fn done(json_out: bool, what: &str, value: serde_json::Value) {
    if json_out {
        print_json(value);
    } else {
        println!("{what}");
    }
}

/// `gp info --key-file`: keys to check with one INITIALIZE UPDATE.
struct KeyCheck {
    keys: card_wire::scp03::StaticKeys,
    schemes: Option<Vec<Diversification>>,
    kvn: u8,
}

fn info(
    target: &Target,
    sd: &Option<String>,
    check: Option<KeyCheck>,
    trace: bool,
    json_out: bool,
) -> Result<(), Failure> {
    let mut ch = target.open(trace)?;
    let aid = sd_aid(sd)?;
    let domain = gp::select_domain(&mut ch, aid.as_deref())?;
    let card_data = gp::get_data(&mut ch, 0x0066)?;
    let recognition = match &card_data {
        Some(d) => Some(gp::parse_recognition(d)?),
        None => domain.recognition.clone(),
    };
    let key_info = match gp::get_data(&mut ch, 0x00E0)? {
        Some(d) => gp::parse_key_info(&d)?,
        None => Vec::new(),
    };
    let seq =
        gp::get_data(&mut ch, 0x00C1)?.map(|d| hex::encode_upper(d.get(2..).unwrap_or_default()));
    let card = card::read(&mut ch)?;
    use card_wire::Transport;
    let raw_atr = ch.transport().atr();
    let kind = raw_atr
        .as_deref()
        .and_then(|a| kagi::uicc::CardKind::from_atr(a).ok());
    let iccid = match kind {
        Some(kagi::uicc::CardKind::Uicc) => kagi::uicc::read_iccid(&mut ch)?,
        _ => None,
    };
    let atr = raw_atr.map(hex::encode_upper);
    let probe = match &check {
        Some(c) => {
            if kind == Some(kagi::uicc::CardKind::Uicc) {
                // Reading EF.ICCID selected the MF: select the security domain again.
                gp::select(&mut ch, &domain.aid)?;
            }
            let s16 = recognition
                .as_ref()
                .and_then(|r| r.scp)
                .is_some_and(|(p, i)| p == 0x03 && i & 1 != 0);
            Some(kagi::probe::probe_keys(
                &mut ch,
                &c.keys,
                c.kvn,
                c.schemes.as_deref(),
                s16,
            )?)
        }
        None => None,
    };
    target.finish(&ch)?;
    let unmatched = probe.as_ref().is_some_and(|p| p.matched.is_none());
    let failure = || -> Failure {
        let p = probe.as_ref().map(|p| {
            p.tried
                .iter()
                .map(|d| d.name())
                .collect::<Vec<_>>()
                .join(", ")
        });
        format!(
            "the keys do not match the card with any scheme tried ({}): ask the card's issuer for \
             the keys and their diversification; no authentication was attempted",
            p.unwrap_or_default()
        )
        .into()
    };
    if json_out {
        let mut doc = json!({
            "atr": atr, "card_kind": kind, "iccid": iccid.as_ref().map(|i| i.to_string()),
            "security_domain": domain, "card_recognition": recognition,
            "keys": key_info, "sequence_counter": seq, "key_check": probe,
        });
        for (k, v) in card.json() {
            doc[k] = v;
        }
        print_json(doc);
        return if unmatched { Err(failure()) } else { Ok(()) };
    }
    println!("ATR                 {}", atr.unwrap_or_default());
    if let Some(k) = kind {
        println!("Card type           {}", k.name());
    }
    if let Some(i) = &iccid {
        println!("ICCID               {i}");
    }
    println!("Security domain     {}", hex::encode_upper(&domain.aid));
    if let Some(r) = &recognition {
        println!(
            "GlobalPlatform      {}",
            r.gp_version.as_deref().unwrap_or("?")
        );
        if let Some((scp, i)) = r.scp {
            println!("Secure channel      SCP{scp:02X} i={i:02X}");
        }
    }
    if let Some(m) = domain.max_command_data {
        println!("Max command data    {m}");
    }
    for k in key_info {
        println!(
            "Key                 KVN {:02X} ID {:02X} type {:02X} ({}) length {}",
            k.version,
            k.id,
            k.key_type,
            k.type_name(),
            k.length
        );
    }
    if let Some(s) = seq {
        println!("Sequence counter    {s}");
    }
    card.print();
    if let Some(p) = &probe {
        match p.matched {
            Some(d) => println!(
                "Key check           SCP{:02X} KVN {:02X} KDD {}: card cryptogram matches with diversification {}",
                p.scp,
                p.kvn,
                hex::encode_upper(p.kdd),
                d.name()
            ),
            None => return Err(failure()),
        }
    }
    Ok(())
}

fn list(session: &Session, trace: bool, json_out: bool) -> Result<(), Failure> {
    session.run(trace, |sc, domain, source| {
        let info = sc.info().clone();
        let mut entries = Vec::new();
        for scope in [StatusScope::IssuerDomain, StatusScope::Applications] {
            match gp::get_status(sc, scope) {
                Ok(mut e) => entries.append(&mut e),
                // A supplementary domain has no ISD entry to report.
                Err(e) if e.status() == Some(card_wire::StatusWord::INCORRECT_P1P2) => {}
                Err(e) => return Err(e.into()),
            }
        }
        entries.append(&mut cap::packages(sc)?);
        let iu = &info.init_update;
        if json_out {
            print_json(json!({
                "security_domain": hex::encode_upper(&domain.aid),
                "session": {
                    "kvn": format!("{:02X}", iu.kvn), "i": format!("{:02X}", iu.i.0),
                    "scp": format!("{:02X}", sc.scp()),
                    "mode": if sc.scp() == 0x03 { format!("{:?}", iu.i.mode()) } else { "S8".into() },
                    "level": format!("{:02X}", info.level.byte()),
                    "kdd": hex::encode_upper(iu.kdd),
                    "sequence_counter": iu.sequence_counter.map(hex::encode_upper),
                    "challenge_verified": info.challenge_verified, "keys": source.to_string(),
                },
                "registry": entries.iter().map(|e| json!({
                    "scope": e.scope, "aid": hex::encode_upper(&e.aid),
                    "life_cycle": e.life_cycle_name(), "privileges": hex::encode_upper(&e.privileges),
                    "version": e.version.as_deref().map(cap::version_text),
                    "modules": e.modules.iter().map(hex::encode_upper).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            }));
            return Ok(());
        }
        let mode = if sc.scp() == 0x03 {
            format!(" ({:?})", iu.i.mode())
        } else {
            String::new()
        };
        println!(
            "SCP{:02X} session to {}: KVN {:02X}, i={:02X}{mode}, level {}, keys from {}",
            sc.scp(),
            hex::encode_upper(&domain.aid),
            iu.kvn,
            iu.i.0,
            info.level,
            source
        );
        println!(
            "KDD {}{}",
            hex::encode_upper(iu.kdd),
            iu.sequence_counter
                .map(|s| format!(", sequence counter {}", hex::encode_upper(s)))
                .unwrap_or_default()
        );
        for e in entries {
            let tag = match e.scope {
                StatusScope::IssuerDomain => "ISD",
                StatusScope::Applications if e.privileges.first().is_some_and(|p| p & 0x80 != 0) => "SSD",
                StatusScope::Applications => "APP",
                _ => "PKG",
            };
            if tag == "PKG" {
                cap::print_package(&e);
                continue;
            }
            println!(
                "{tag}: {:<34} {:<13} privileges {}",
                hex::encode_upper(&e.aid),
                e.life_cycle_name(),
                hex::encode_upper(&e.privileges)
            );
        }
        Ok(())
    })
}

fn card_state(s: &str) -> Result<u8, Failure> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "initialized" => 0x07,
        "secured" => 0x0F,
        "locked" | "card_locked" => 0x7F,
        "terminated" => 0xFF,
        other => {
            return Err(format!(
                "unknown card state '{other}': use initialized, secured, locked, terminated"
            )
            .into());
        }
    })
}

/// Runs a `kagi gp` command.
pub fn run(cmd: &GpCmd, trace: bool, json_out: bool) -> Result<(), Failure> {
    match cmd {
        GpCmd::Info {
            target,
            sd,
            key_file,
            kdf,
            kvn,
        } => {
            let check = match key_file {
                Some(f) => Some(KeyCheck {
                    keys: keys::read_key_file(f, 0)?,
                    schemes: match kdf.as_str() {
                        "auto" => None,
                        one => Some(vec![one.parse::<Diversification>()?]),
                    },
                    kvn: *kvn,
                }),
                None => None,
            };
            info(target, sd, check, trace, json_out)
        }
        GpCmd::List { session } => list(session, trace, json_out),
        GpCmd::Load {
            session,
            cap: Some(cap),
            cap_opts,
            to,
            no_hash,
            ..
        } => cap::load(session, cap, cap_opts, to, *no_hash, trace, json_out),
        GpCmd::Load {
            session,
            package,
            modules,
            to,
            no_hash,
            ..
        } => {
            let package = aid("package AID", package.as_deref().unwrap_or_default())?;
            let modules = modules
                .iter()
                .map(|m| {
                    let (a, class) = m
                        .split_once('=')
                        .ok_or_else(|| format!("--module {m}: use AID=CLASS"))?;
                    // Built-in load files exist only for the simulator's classes: name the
                    // ones it has instead of sending a LOAD it must refuse with a bare 6A80.
                    let table = applet_sim::stock::shared();
                    if !table.names().any(|n| n == class) {
                        let known: Vec<&str> = table.names().collect();
                        return Err(format!(
                            "--module {m}: the simulator has no applet class '{class}' (it has {}); \
                             a real card or a real applet takes a CAP file: `kagi gp load FILE.cap`",
                            known.join(", ")
                        )
                        .into());
                    }
                    Ok((aid("module AID", a)?, class.to_string()))
                })
                .collect::<Result<Vec<_>, Failure>>()?;
            let to = to
                .as_deref()
                .map(|t| aid("security domain AID", t))
                .transpose()?;
            let file = manage::sim_load_file(&package, &modules);
            session.run(trace, |sc, _, _| {
                Ok(manage::load(sc, &package, to.as_deref(), &file, !no_hash)?)
            })?;
            done(
                json_out,
                &format!("loaded {}", hex::encode_upper(&package)),
                json!({"loaded": hex::encode_upper(&package)}),
            );
            Ok(())
        }
        GpCmd::Install {
            session,
            cap: Some(cap),
            cap_opts,
            applet,
            instance,
            privileges,
            params,
            not_selectable,
            ..
        } => cap::install(
            session,
            cap,
            cap_opts,
            &cap::InstallArgs {
                applet: applet.clone(),
                instance: instance.clone(),
                privileges: kagi::gp_cap::parse_privileges(privileges)?,
                params: params.clone(),
                selectable: !not_selectable,
            },
            trace,
            json_out,
        ),
        GpCmd::Uninstall {
            session,
            cap,
            token,
        } => cap::uninstall(session, cap, token, trace, json_out),
        GpCmd::CapInfo { cap } => cap::info(cap, json_out),
        GpCmd::Install {
            session,
            package,
            module,
            instance,
            privileges,
            params,
            not_selectable,
            ..
        } => {
            let module = module.as_deref().unwrap_or_default();
            let spec = InstallSpec {
                package: aid("package AID", package.as_deref().unwrap_or_default())?,
                module: aid("module AID", module)?,
                instance: match instance {
                    Some(i) => aid("instance AID", i)?,
                    None => aid("module AID", module)?,
                },
                privileges: kagi::gp_cap::parse_privileges(privileges)?,
                params: parse_hex("install parameters", params)?,
                selectable: !not_selectable,
            };
            session.run(trace, |sc, _, _| Ok(manage::install(sc, &spec)?))?;
            let i = hex::encode_upper(&spec.instance);
            done(json_out, &format!("installed {i}"), json!({"installed": i}));
            Ok(())
        }
        GpCmd::Delete {
            session,
            aid: target,
            app,
            related,
            token,
        } => {
            let a = aid(
                "AID",
                target.as_ref().or(app.as_ref()).ok_or("give the AID")?,
            )?;
            cap::delete(session, &a, *related, token, trace, json_out)
        }
        GpCmd::DeleteKey {
            session,
            version,
            id,
        } => card::delete_key(session, *version, *id, trace, json_out),
        GpCmd::PutKey {
            session,
            new_key_file,
            dap_public_key,
            new_kvn,
            replace,
        } => match (new_key_file, dap_public_key) {
            (Some(f), None) => card::put_key(session, f, *replace, trace, json_out),
            (None, Some(f)) => card::put_dap_key(
                session,
                f,
                new_kvn.unwrap_or_default(),
                *replace,
                trace,
                json_out,
            ),
            _ => Err("give --new-key-file FILE or --dap-public-key FILE --new-kvn N".into()),
        },
        GpCmd::SetStatus {
            session,
            card,
            app,
            state,
        } => {
            let action: Box<StatusAction> = match (card, app) {
                (Some(c), None) => {
                    let s = card_state(c)?;
                    Box::new(move |sc| manage::set_card_status(sc, s))
                }
                (None, Some(a)) => {
                    let a = aid("application AID", a)?;
                    let s = match state.as_deref().unwrap_or_default() {
                        "lock" => 0x80,
                        "unlock" => 0x00,
                        h => u8::from_str_radix(h, 16)
                            .map_err(|_| format!("state '{h}': use lock, unlock or a hex byte"))?,
                    };
                    Box::new(move |sc| manage::set_app_status(sc, &a, s))
                }
                _ => return Err("give --card STATE or --app AID --state STATE".into()),
            };
            session.run(trace, |sc, _, _| Ok(action(sc)?))?;
            done(json_out, "status set", json!({"status": "set"}));
            Ok(())
        }
        GpCmd::StoreData {
            session,
            app,
            data,
            data_file,
        } => {
            let (blocks, sensitive) = match data_file {
                Some(p) => {
                    let text = zeroize::Zeroizing::new(
                        std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
                    );
                    let blocks = text
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(|l| parse_hex("data block", l))
                        .collect::<Result<Vec<_>, _>>()?;
                    (blocks, true)
                }
                None => (
                    data.iter()
                        .map(|d| parse_hex("data block", d))
                        .collect::<Result<Vec<_>, _>>()?,
                    false,
                ),
            };
            if blocks.is_empty() {
                return Err("no data: give --data HEX (repeatable) or --data-file FILE".into());
            }
            let app = app
                .as_deref()
                .map(|a| aid("application AID", a))
                .transpose()?;
            session.run(trace, |sc, _, _| {
                let _ = match &app {
                    Some(a) => manage::personalize(sc, a, &blocks, sensitive)?,
                    None => manage::store_data(sc, &blocks, sensitive)?,
                };
                Ok(())
            })?;
            done(
                json_out,
                &format!("{} block(s) stored", blocks.len()),
                json!({"blocks": blocks.len()}),
            );
            Ok(())
        }
    }
}
