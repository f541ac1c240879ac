//! `kagi sim serve --install FILE.cap`: CAP applets loaded and installed into a simulated card
//! before it is served, through its card manager under SCP03 exactly as `kagi gp install
//! FILE.cap --sim` does (the GP test keys of the simulator).

use crate::Failure;
use applet_sim::SimCard;
use clap::Parser;
use std::path::{Path, PathBuf};

/// The options `kagi gp install` takes, for a simulated card kept in a card image.
#[derive(Parser)]
struct Install {
    #[command(flatten)]
    session: crate::gp::Session,
    #[command(flatten)]
    opts: crate::gp_cap::CapOpts,
}

/// Loads and installs every CAP of `caps` (its first applet, instance AID = module AID,
/// selectable, no privileges) into `card`; returns the card as the installs left it,
/// powered.
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
    let w = Install::try_parse_from([
        "kagi-sim-serve-install".as_ref(),
        "--sim".as_ref(),
        "--sim-image".as_ref(),
        image.as_os_str(),
    ])
    .map_err(|e| format!("--install: {e}"))?;
    for cap in caps {
        crate::gp_cap::install(
            &w.session,
            cap,
            &w.opts,
            &crate::gp_cap::InstallArgs {
                applet: None,
                instance: None,
                privileges: kagi::gp_cap::parse_privileges("00")?,
                params: String::new(),
                selectable: true,
            },
            false,
            false,
        )
        .map_err(|e| format!("--install {}: {e}", cap.display()))?;
    }
    Ok(())
}
