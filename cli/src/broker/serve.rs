//! `kagi broker init` and `kagi broker serve`: the CLI's side of the broker's own set-up
//! (`broker_server::setup`), with the key store chosen on the command line.

use super::*;

use crate::Failure;
use crate::common::{init_logging, shutdown_signal};
use crate::perso::HsmArgs;
use broker_server::setup::Loaded;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(super) fn init(
    dir: &Path,
    listen: &str,
    ca_dir: &Path,
    tls: bool,
    hsm_keks: bool,
    json_out: bool,
) -> Result<(), Failure> {
    let https = tls;
    let tls = tls
        .then(|| crate::common::dev_tls_certificate("kagi broker"))
        .transpose()?;
    broker_server::setup::init(dir, listen, ca_dir, tls, !hsm_keks)?;
    let d = dir.display();
    // With --hsm-keks there is no KEK file: the next step is a KEK in the HSM, not the
    // (empty) development folder.
    let serve = if hsm_keks {
        format!(
            "create a KEK with `kagi broker new-kek --id k1 --hsm-module MODULE --hsm-pin-file PIN`, \
             then `kagi broker serve --config {d}/broker.toml --hsm-module MODULE --hsm-pin-file PIN`"
        )
    } else {
        format!(
            "serve it with `kagi broker serve --config {d}/broker.toml --insecure-file-keys {d}/keys`"
        )
    };
    if json_out {
        let file = |f: &str| dir.join(f).display().to_string();
        crate::print_json(serde_json::json!({
            "dir": d.to_string(), "listen": listen, "https": https,
            "broker": file("broker.toml"), "admin": file("admin.toml"),
            "keks": if hsm_keks { "hsm" } else { "files" },
            "next": serve,
        }));
    } else {
        println!("broker configuration in {d}: broker.toml, admin.toml; {serve}");
    }
    Ok(())
}

/// The key store named on the command line: an HSM (production) or a directory of KEK files
/// (development, with a warning).
pub(super) fn key_store(
    insecure: &Option<PathBuf>,
    hsm: &HsmArgs,
) -> Result<Arc<dyn broker_server::Envelope>, Failure> {
    match (insecure, &hsm.hsm_module) {
        (Some(dir), _) => {
            eprintln!(
                "WARNING: insecure file key store {} in use: KEKs are plain files. Use an HSM in production.",
                dir.display()
            );
            Ok(Arc::new(broker_server::FileEnvelope::open_dir(dir)?))
        }
        (None, Some(_)) => Ok(Arc::new(kagi_hsm::HsmEnvelope::open(
            &hsm.config()?,
            &hsm.pin()?,
        )?)),
        (None, None) => Err(
            "give the key store: --hsm-module … (production) or --insecure-file-keys DIR (development)".into(),
        ),
    }
}

/// Reads the broker's configuration, opening the key store the command line names.
pub(super) fn load_broker(
    config: &Path,
    database: &[String],
    keys: &KeyStoreArgs,
) -> Result<Loaded, Failure> {
    let open = || key_store(&keys.insecure_file_keys, &keys.hsm).map_err(|e| e.to_string());
    Ok(broker_server::setup::load(config, database, &open)?)
}

/// Opens the broker's shards and the broker.
pub(super) async fn open_broker(
    config: broker_server::Config,
    databases: &[String],
) -> Result<Arc<broker_server::Broker>, Failure> {
    Ok(broker_server::setup::open(config, databases).await?)
}

pub(super) fn serve(args: &ServeArgs) -> Result<(), Failure> {
    init_logging(args.log_json);
    let loaded = load_broker(&args.config, &args.database, &args.keys)?;
    let limits = args.limits.limits(loaded.limits.as_ref())?;
    let listen = args.listen.clone().unwrap_or(loaded.listen.clone());
    let sweep = std::time::Duration::from_secs(args.sweep_seconds.max(1));
    let rt = args.runtime.runtime()?;
    let stop = {
        let _in = rt.enter();
        shutdown_signal()?
    };
    rt.block_on(broker_server::setup::serve(
        loaded, &listen, sweep, &limits, stop,
    ))?;
    Ok(())
}
