//! CAP applets on a simulated card: `kagi sim serve --install FILE.cap` loads and installs them
//! into each new card through its card manager under SCP03 (as `kagi gp install FILE.cap --sim`,
//! with the simulator's GP test keys) before serving it; `kagi sim run-cap` runs one applet.

use crate::Failure;
use applet_sim::SimCard;
use clap::Parser;
use std::path::{Path, PathBuf};

/// An SCP03 session to a simulated card kept in a card image (the simulator's GP test keys).
#[derive(Parser)]
struct SimSession {
    #[command(flatten)]
    session: crate::gp::Session,
}

/// Loads and installs every CAP of `caps` (its first applet, instance AID = module AID,
/// selectable, no privileges) into `card` through its card manager under SCP03, as `kagi gp
/// install FILE.cap --sim` does; returns the card as the installs left it, powered. Prints
/// one line per CAP on standard error.
pub fn install_caps(
    card: SimCard,
    caps: &[PathBuf],
    seed: Option<u64>,
) -> Result<SimCard, Failure> {
    if caps.is_empty() {
        return Ok(card);
    }
    let image = std::env::temp_dir().join(format!(
        "kagi-serve-install-{}-{:x}.img",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    card.save_image(&image)?;
    let r = install_all(&image, caps);
    let card = r.and_then(|()| Ok(SimCard::from_image(&image, seed)?));
    let _ = std::fs::remove_file(&image);
    let mut card = card?;
    card.power_off();
    card.power_on();
    Ok(card)
}

fn install_all(image: &Path, caps: &[PathBuf]) -> Result<(), Failure> {
    use kagi::gp::manage::InstallSpec;
    use kagi::gp_cap::{CapFile, HashAlg, LoadOptions};
    let w = SimSession::try_parse_from([
        "kagi-sim-install".as_ref(),
        "--sim".as_ref(),
        "--sim-image".as_ref(),
        image.as_os_str(),
    ])
    .map_err(|e| format!("--install: {e}"))?;
    for path in caps {
        let what = |e: &dyn std::fmt::Display| format!("--install {}: {e}", path.display());
        let cap = CapFile::from_path(path).map_err(|e| what(&e))?;
        // Its first applet, as documented (a package of several applets installs too).
        let module = cap
            .applets()
            .first()
            .map(|a| a.aid.clone())
            .ok_or_else(|| what(&"the CAP file has no applet"))?;
        let spec = InstallSpec {
            package: cap.package_aid().to_vec(),
            module: module.clone(),
            instance: module,
            privileges: kagi::gp_cap::parse_privileges("00").map_err(|e| what(&e))?,
            params: Vec::new(),
            selectable: true,
        };
        let stats = w
            .session
            .run(false, |sc, domain, _| {
                use card_wire::Transport;
                let extended = sc.card().transport().capabilities().extended_length;
                let block = card_wire::gp_load::block_size(
                    domain.max_command_data,
                    extended,
                    sc.load_overhead(),
                );
                let lo = LoadOptions {
                    hash: HashAlg::Sha256,
                    descriptor: true,
                    sd: None,
                    block,
                };
                let stats = kagi::gp_cap::load(sc, &cap, &lo)?;
                kagi::gp_cap::install(sc, &spec)?;
                Ok(stats)
            })
            .map_err(|e| what(&e))?;
        eprintln!(
            "installed {} from {} ({} bytes in {} commands)",
            hex::encode_upper(&spec.instance),
            path.display(),
            stats.load_file_bytes,
            stats.commands
        );
    }
    Ok(())
}

/// `kagi sim run-cap` options.
#[derive(clap::Args)]
pub struct RunCapArgs {
    /// The CAP file (its first applet is installed, instance AID = module AID).
    cap: PathBuf,
    /// A command APDU in hex, sent after SELECT (repeatable, in order).
    #[arg(long = "apdu", value_name = "HEX")]
    apdus: Vec<String>,
}

/// `kagi sim run-cap FILE.cap --apdu HEX…`: answers each command; `trace` adds the applet's
/// diagnostic to a failing one.
pub fn run_cap(args: &RunCapArgs, trace: bool, json_out: bool) -> Result<(), Failure> {
    use card_wire::Transport;
    let cap = kagi::gp_cap::CapFile::from_path(&args.cap)
        .map_err(|e| format!("{}: {e}", args.cap.display()))?;
    let module = cap
        .applets()
        .first()
        .map(|a| a.aid.clone())
        .ok_or_else(|| format!("{}: the CAP file has no applet", args.cap.display()))?;
    let commands = args
        .apdus
        .iter()
        .map(|a| crate::parse_hex("APDU", a))
        .collect::<Result<Vec<_>, _>>()?;
    let card = applet_sim::SimCard::new(applet_sim::SimConfig::preset("gp-test")?);
    let mut card = install_caps(card, std::slice::from_ref(&args.cap), None)?;
    let aid = card_wire::Aid::new(&module).map_err(|e| format!("applet AID: {e}"))?;
    let mut select = vec![0x00, 0xA4, 0x04, 0x00, module.len() as u8];
    select.extend_from_slice(&module);
    select.push(0);
    let mut out = Vec::new();
    for cmd in std::iter::once(select).chain(commands) {
        let r = card.transmit(&cmd)?;
        let sw = r.len().checked_sub(2).map(|n| &r[n..]).unwrap_or(&r[..]);
        let why = (sw != [0x90, 0x00] && sw.first() != Some(&0x61))
            .then(|| card.runtime().diagnostic(&aid))
            .flatten();
        if !json_out {
            println!("> {}", hex::encode_upper(&cmd));
            println!("< {}", hex::encode_upper(&r));
            if let (true, Some(w)) = (trace, &why) {
                println!("  applet: {w}");
            }
        }
        out.push(serde_json::json!({
            "command": hex::encode_upper(&cmd),
            "response": hex::encode_upper(&r),
            "diagnostic": why,
        }));
    }
    if json_out {
        crate::print_json(serde_json::json!({ "exchanges": out }));
    }
    Ok(())
}
