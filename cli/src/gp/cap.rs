//! `kagi gp load FILE.cap`, `kagi gp install FILE.cap`, `kagi gp uninstall FILE.cap`,
//! `kagi gp cap-info FILE.cap`, and the package lines of `kagi gp list`.

use super::{Failure, parse_hex, print_json};
use super::{Secure, Session, aid, done};
use card_wire::gp_load;
use clap::Args;
use kagi::gp::manage::{self, InstallSpec};
use kagi::gp::{self, RegistryEntry, StatusScope};
use kagi::gp_cap::{self, CapFile, HashAlg, LoadOptions, LoadStats};
use serde_json::json;
use std::path::Path;

/// How a CAP file is sent.
#[derive(Args, Clone)]
pub struct CapOpts {
    /// Load file data block hash in INSTALL [for load]: sha1, sha256 or none.
    #[arg(long, default_value = "sha256")]
    hash: HashAlg,
    /// Leave the Descriptor component out of the load file.
    #[arg(long)]
    no_descriptor: bool,
    /// LOAD data bytes per command (default: the most the card's 9F65, the reader and the
    /// secure channel allow).
    #[arg(long)]
    block_size: Option<usize>,
    #[command(flatten)]
    dap: super::dap::DapOpts,
}

/// What `kagi gp install FILE.cap` installs.
pub struct InstallArgs {
    /// `--applet`.
    pub applet: Option<String>,
    /// `--create` / `--instance`.
    pub instance: Option<String>,
    /// `--privs` / `--privileges`, 3 bytes.
    pub privileges: Vec<u8>,
    /// `--params` hex.
    pub params: String,
    /// Make selectable.
    pub selectable: bool,
}

fn read_cap(path: &Path) -> Result<CapFile, Failure> {
    CapFile::from_path(path).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// The LOAD block size for this session: the card's maximum (`9F65`), extended length when
/// the transport carries it and the protocol is SCP03, less the secure channel's overhead.
fn block_size(sc: &mut Secure<'_>, domain: &gp::SelectedDomain, opts: &CapOpts) -> usize {
    if let Some(b) = opts.block_size {
        return b;
    }
    use card_wire::Transport;
    let overhead = sc.load_overhead();
    // SCP02 wraps short APDUs only, whatever the reader carries.
    let extended = sc.card().transport().capabilities().extended_length && sc.scp() != 0x02;
    gp_load::block_size(domain.max_command_data, extended, overhead)
}

fn load_in_session(
    sc: &mut Secure<'_>,
    domain: &gp::SelectedDomain,
    cap: &CapFile,
    opts: &CapOpts,
    to: Option<Vec<u8>>,
    hash: HashAlg,
    (dap, delegated): (Option<&super::dap::Dap>, Option<&super::dap::Delegated>),
) -> Result<(LoadStats, Option<card_wire::dm::Confirmation>), Failure> {
    let block = block_size(sc, domain, opts);
    let target = to.clone().unwrap_or_else(|| domain.aid.clone());
    let lo = LoadOptions {
        hash,
        descriptor: !opts.no_descriptor,
        sd: to,
        block,
    };
    let daps: Vec<_> = dap.map(|d| d.for_load(&target)).into_iter().collect();
    let token = delegated.map(|d| d.token.as_ref());
    let (stats, answer) = gp_cap::load_signed(sc, cap, &lo, &daps, token)?;
    let receipt = match delegated {
        Some(d) => {
            let what = card_wire::dm::Confirmed::Load {
                elf: cap.package_aid(),
                sd: &target,
            };
            d.check(&answer, &what, "the package was loaded")?
        }
        None => None,
    };
    Ok((stats, receipt))
}

fn stats_line(s: &LoadStats) -> String {
    format!(
        "{} bytes in {} commands ({} APDU bytes before secure messaging, LOAD blocks of {})",
        s.load_file_bytes, s.commands, s.apdu_bytes, s.block
    )
}

/// `kagi gp load FILE.cap`.
pub fn load(
    session: &Session,
    path: &Path,
    opts: &CapOpts,
    to: &Option<String>,
    no_hash: bool,
    trace: bool,
    json_out: bool,
) -> Result<(), Failure> {
    let cap = read_cap(path)?;
    let to = to
        .as_deref()
        .map(|t| aid("security domain AID", t))
        .transpose()?;
    let hash = if no_hash { HashAlg::None } else { opts.hash };
    let dap = opts.dap.signer(hash)?;
    let delegated = opts.dap.delegated()?;
    let (stats, receipt) = session.run(trace, |sc, domain, _| {
        load_in_session(
            sc,
            domain,
            &cap,
            opts,
            to.clone(),
            hash,
            (dap.as_ref(), delegated.as_ref()),
        )
    })?;
    let p = hex::encode_upper(cap.package_aid());
    let receipt_line = receipt
        .as_ref()
        .map(|c| format!("; receipt verified, confirmation counter {}", c.counter))
        .unwrap_or_default();
    let mut doc = json!({"loaded": p, "stats": stats});
    if let Some(c) = &receipt {
        doc["receipt"] = super::dap::receipt_json(c);
    }
    done(
        json_out,
        &format!("loaded {p}: {}{receipt_line}", stats_line(&stats)),
        doc,
    );
    Ok(())
}

/// `kagi gp install FILE.cap`.
pub fn install(
    session: &Session,
    path: &Path,
    opts: &CapOpts,
    args: &InstallArgs,
    trace: bool,
    json_out: bool,
) -> Result<(), Failure> {
    let cap = read_cap(path)?;
    let wanted = args
        .applet
        .as_deref()
        .map(|a| aid("applet AID", a))
        .transpose()?;
    let module = gp_cap::pick_applet(&cap, wanted.as_deref())?;
    let spec = InstallSpec {
        package: cap.package_aid().to_vec(),
        module: module.clone(),
        instance: match &args.instance {
            Some(i) => aid("instance AID", i)?,
            None => module,
        },
        privileges: args.privileges.clone(),
        params: parse_hex("install parameters", &args.params)?,
        selectable: args.selectable,
    };
    let dap = opts.dap.signer(opts.hash)?;
    let delegated = opts.dap.delegated()?;
    let (stats, installed) = session.run(trace, |sc, domain, _| {
        let loaded = gp::get_status(sc, StatusScope::LoadFiles)?
            .iter()
            .any(|e| e.aid == cap.package_aid());
        let loaded_now = if loaded {
            None
        } else {
            Some(load_in_session(
                sc,
                domain,
                &cap,
                opts,
                None,
                opts.hash,
                (dap.as_ref(), delegated.as_ref()),
            )?)
        };
        // A refused INSTALL still leaves the load done: finish the session (a simulated card's
        // image is saved) before reporting it.
        let token = delegated.as_ref().map(|d| d.token.as_ref());
        Ok((loaded_now, gp_cap::install_signed(sc, &spec, token)))
    })?;
    let load_stats = stats.as_ref().map(|(s, _)| s);
    let answer = match installed {
        Ok(a) => a,
        Err(e) => {
            return Err(match load_stats {
                Some(s) => format!("{e} (loaded first: {})", stats_line(s)).into(),
                None => e.into(),
            });
        }
    };
    let receipt = match &delegated {
        Some(d) => {
            let what = card_wire::dm::Confirmed::Install {
                elf: cap.package_aid(),
                app: &spec.instance,
            };
            d.check(&answer, &what, "the applet was installed")?
        }
        None => None,
    };
    let i = hex::encode_upper(&spec.instance);
    let mut line = match load_stats {
        Some(s) => format!("loaded and installed {i}: {}", stats_line(s)),
        None => format!("installed {i}"),
    };
    let mut doc = json!({"installed": i});
    if let Some(s) = load_stats {
        // Only when it loaded first (the schema has no null stats).
        doc["stats"] = json!(s);
    }
    if let Some(c) = &receipt {
        line.push_str(&format!(
            "; receipt verified, confirmation counter {}",
            c.counter
        ));
        doc["receipt"] = super::dap::receipt_json(c);
    }
    if let Some(c) = stats.as_ref().and_then(|(_, r)| r.as_ref()) {
        doc["load_receipt"] = super::dap::receipt_json(c);
    }
    done(json_out, &line, doc);
    Ok(())
}

/// `kagi gp uninstall FILE.cap`: DELETE of the package with its instances.
pub fn uninstall(
    session: &Session,
    path: &Path,
    token: &super::dap::TokenOpts,
    trace: bool,
    json_out: bool,
) -> Result<(), Failure> {
    let cap = read_cap(path)?;
    delete(session, cap.package_aid(), true, token, trace, json_out)
}

/// `kagi gp delete AID` and `uninstall`: DELETE (`related`: with the load file's instances),
/// with a token and a receipt under delegated management.
pub fn delete(
    session: &Session,
    target: &[u8],
    related: bool,
    token: &super::dap::TokenOpts,
    trace: bool,
    json_out: bool,
) -> Result<(), Failure> {
    let delegated = token.delegated()?;
    let answer = session.run(trace, |sc, _, _| match &delegated {
        Some(d) => Ok(manage::delete_delegated(
            sc,
            target,
            related,
            d.token.as_ref(),
        )?),
        None => Ok(manage::delete(sc, target, related).map(|()| Vec::new())?),
    })?;
    let receipt = match &delegated {
        Some(d) => d.check(
            &answer,
            &card_wire::dm::Confirmed::Delete { aid: target },
            "the card deleted it",
        )?,
        None => None,
    };
    let p = hex::encode_upper(target);
    let mut line = if related {
        format!("deleted {p} and its instances")
    } else {
        format!("deleted {p}")
    };
    let mut doc = json!({"deleted": p});
    if let Some(c) = &receipt {
        line.push_str(&format!(
            "; receipt verified, confirmation counter {}",
            c.counter
        ));
        doc["receipt"] = super::dap::receipt_json(c);
    }
    done(json_out, &line, doc);
    Ok(())
}

/// `kagi gp cap-info FILE.cap`.
pub fn info(path: &Path, json_out: bool) -> Result<(), Failure> {
    let cap = read_cap(path)?;
    let (major, minor) = cap.version();
    let (cmaj, cmin) = cap.cap_version();
    let sizes: Vec<_> = cap
        .component_sizes()
        .into_iter()
        .map(|(c, n)| json!({"component": c.to_string(), "bytes": n}))
        .collect();
    if json_out {
        print_json(json!({
            "package": hex::encode_upper(cap.package_aid()),
            "version": format!("{major}.{minor}"),
            "cap_format": format!("{cmaj}.{cmin}"),
            "name": cap.header().package_name,
            "applets": cap.applets(),
            "imports": cap.imports().iter().map(|p| json!({"aid": hex::encode_upper(&p.aid), "version": p.version()})).collect::<Vec<_>>(),
            "components": sizes,
            "load_file_bytes": cap.load_file(true).len(),
        }));
        return Ok(());
    }
    println!(
        "Package  {} v{major}.{minor} (CAP format {cmaj}.{cmin})",
        hex::encode_upper(cap.package_aid())
    );
    for a in cap.applets() {
        println!("Applet   {}", hex::encode_upper(&a.aid));
    }
    for p in cap.imports() {
        println!(
            "Import   {:<32} v{}",
            hex::encode_upper(&p.aid),
            p.version()
        );
    }
    for (c, n) in cap.component_sizes() {
        println!("{:<13}{n:>6} bytes", c.to_string());
    }
    println!("Load file {} bytes", cap.load_file(true).len());
    Ok(())
}

/// Load files with their modules (P1 `10`), or without them (P1 `20`) when the card refuses.
pub fn packages(sc: &mut Secure<'_>) -> Result<Vec<RegistryEntry>, Failure> {
    match gp::get_status(sc, StatusScope::LoadFilesAndModules) {
        Ok(e) => Ok(e),
        Err(e) if e.status() == Some(card_wire::StatusWord::INCORRECT_P1P2) => {
            Ok(gp::get_status(sc, StatusScope::LoadFiles)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// A load file version as text (`CE 0100` → `1.0`).
pub fn version_text(v: &[u8]) -> String {
    v.iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

/// One `kagi gp list` package line, and its modules.
pub fn print_package(e: &RegistryEntry) {
    println!(
        "PKG: {:<34} {:<13} {}",
        hex::encode_upper(&e.aid),
        e.life_cycle_name(),
        e.version
            .as_deref()
            .map(|v| format!("version {}", version_text(v)))
            .unwrap_or_default()
    );
    for m in &e.modules {
        println!("     module {}", hex::encode_upper(m));
    }
}
