//! `kagi tsm init` and `kagi tsm serve`: the CLI's side of the TSM's own set-up (`tsm_server::setup`), with the master key source chosen on the command line.

use super::*;

use crate::Failure;
use crate::common::{init_logging, shutdown_signal};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(super) fn init(dir: &Path, listen: &str, tls: bool, json_out: bool) -> Result<(), Failure> {
    let https = tls;
    let tls = tls
        .then(|| crate::common::dev_tls_certificate("kagi TSM"))
        .transpose()?;
    tsm_server::setup::init(dir, listen, tls)?;
    if json_out {
        let file = |f: &str| dir.join(f).display().to_string();
        crate::print_json(serde_json::json!({
            "dir": dir.display().to_string(), "listen": listen, "https": https,
            "tsm": file("tsm.toml"), "provider": file("sp.toml"), "operator": file("mno.toml"),
            "keys": file("keys"),
        }));
        return Ok(());
    }
    println!(
        "TSM configuration in {}: tsm.toml (serve it with `kagi tsm serve --config {}/tsm.toml --insecure-file-keys {}/keys`), sp.toml, mno.toml",
        dir.display(),
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// The master key sets a server configuration names: from an HSM (`--hsm-module`, production)
/// or from the development file store (`--insecure-file-keys DIR`, DIR/NAME.keys).
pub(super) fn master_keys(
    insecure_file_keys: &Option<PathBuf>,
    hsm: &crate::perso::HsmArgs,
) -> Result<Box<tsm_server::setup::MasterKeys<'static>>, Failure> {
    if let Some(dir) = insecure_file_keys {
        eprintln!(
            "WARNING: insecure file key store {} in use: keys are read from plain files. Use an HSM in production.",
            dir.display()
        );
        let dir = dir.clone();
        return Ok(Box::new(move |name: &str, kvn: u8, scheme| {
            let master = kagi::keys::read_key_file(&dir.join(format!("{name}.keys")), kvn)
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(card_wire::scp03::DiversifiedMaster {
                master,
                scheme,
                kvn,
            }) as Arc<dyn card_wire::scp03::CardKeys>)
        }));
    }
    if hsm.hsm_module.is_none() {
        return Err(
            "give the providers' master keys: --hsm-module … (production) or --insecure-file-keys DIR (development)".into(),
        );
    }
    let (config, pin) = (hsm.config()?, hsm.pin()?);
    // The HSM derives card keys with kdf3 inside the token (the only scheme it offers).
    Ok(Box::new(move |name: &str, kvn: u8, _scheme| {
        let config = kagi_hsm::HsmConfig {
            key: name.to_string(),
            ..config.clone()
        };
        Ok(
            Arc::new(kagi_hsm::HsmMaster::open(&config, &pin, kvn).map_err(|e| e.to_string())?)
                as Arc<dyn card_wire::scp03::CardKeys>,
        )
    }))
}

pub(super) fn serve(args: &ServeArgs) -> Result<(), Failure> {
    serve_loaded(args, tsm_server::setup::load)
}

/// Loads a TSM's configuration with `load` (the SP-TSM's or the MNO-TSM's) and serves it until
/// SIGINT or SIGTERM.
pub(super) fn serve_loaded(
    args: &ServeArgs,
    load: fn(
        &std::path::Path,
        &tsm_server::setup::Overrides,
        &tsm_server::setup::MasterKeys<'_>,
    ) -> Result<tsm_server::setup::Loaded, tsm_server::setup::SetupError>,
) -> Result<(), Failure> {
    init_logging(args.log_json);
    let keys = master_keys(&args.insecure_file_keys, &args.hsm)?;
    let overrides = tsm_server::setup::Overrides {
        database: args.database.clone(),
        listen: args.listen.clone(),
    };
    let loaded = load(&args.config, &overrides, &*keys)?;
    let limits = args.limits.limits(loaded.limits.as_ref())?;
    let rt = args.runtime.runtime()?;
    let stop = {
        let _in = rt.enter();
        shutdown_signal()?
    };
    rt.block_on(tsm_server::setup::serve(loaded, &limits, stop))?;
    Ok(())
}
