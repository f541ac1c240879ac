//! `kagi perso run | resume`.

use super::exit::{Exit, Finished};
use super::{Failure, print_json};
use clap::Args;
use kagi_perso::{self as perso, KeySets, Options, Profile};
use std::path::PathBuf;

/// A batch: profile, records, keys, stations, output directory.
#[derive(Args)]
pub struct BatchArgs {
    /// Personalisation profile (TOML).
    #[arg(long)]
    profile: PathBuf,
    /// Input records (CSV with a header, or JSON lines).
    #[arg(long)]
    input: PathBuf,
    /// Simulated cards in parallel (one per station).
    #[arg(long, default_value_t = 4, conflicts_with = "readers")]
    sim: usize,
    /// Run on PC/SC readers instead: `all`, or reader names (or unique parts of them)
    /// separated by commas. Each reader is a station: insert a factory-fresh card, take it out
    /// when the station says so, insert the next.
    #[arg(long)]
    readers: Option<String>,
    /// With --readers: a shell command run after each card, for an automatic encoder's
    /// eject-and-feed (environment: KAGI_READER, KAGI_OUTCOME done|rework|failed|waiting|refused,
    /// KAGI_RECORD).
    #[arg(long, requires = "readers")]
    feeder_cmd: Option<String>,
    /// Journal, reports and card images go here.
    #[arg(long)]
    out: PathBuf,
    /// Development key store: a directory with transport.keys and master.keys. Insecure:
    /// production keys belong in an HSM (--hsm-module).
    #[arg(
        long,
        required_unless_present = "hsm_module",
        conflicts_with = "hsm_module"
    )]
    insecure_file_keys: Option<PathBuf>,
    #[command(flatten)]
    hsm: HsmArgs,
    /// With --hsm-module: the cards' transport key file (as the card vendor delivers it).
    #[arg(long, requires = "hsm_module")]
    transport_keys: Option<PathBuf>,
    /// Do not keep card images (benchmarks only: a batch without images cannot resume).
    #[arg(long)]
    no_images: bool,
    /// Write a redacted APDU log per card under OUT/logs.
    #[arg(long)]
    card_logs: bool,
}

/// Runs or resumes a batch.
pub fn run(args: &BatchArgs, resume: bool, json_out: bool) -> Result<(), Failure> {
    let profile = Profile::read(&args.profile)?;
    let keys = match (&args.insecure_file_keys, &args.transport_keys) {
        (Some(dir), _) => {
            eprintln!(
                "WARNING: insecure file key store {} in use: keys are read from plain files. Use an HSM in production.",
                dir.display()
            );
            KeySets::from_insecure_dir(dir, &profile)?
        }
        (None, Some(transport)) => {
            let config = args.hsm.config()?;
            let pin = args.hsm.pin()?;
            let open = |label: &str| {
                let config = kagi_hsm::HsmConfig {
                    key: label.to_string(),
                    ..config.clone()
                };
                kagi_hsm::HsmMaster::open(&config, &pin, profile.production_kvn)
            };
            if matches!(
                profile.diversification,
                card_wire::scp03::Diversification::Emv | card_wire::scp03::Diversification::Visa2
            ) {
                // 3DES (SCP02) masters, imported with `kagi perso hsm-import --des`.
                let open = |label: &str| {
                    let config = kagi_hsm::HsmConfig {
                        key: label.to_string(),
                        ..config.clone()
                    };
                    kagi_hsm::scp02::HsmMaster02::open(&config, &pin, profile.production_kvn)
                };
                let mut domains = std::collections::BTreeMap::new();
                for d in &profile.domains {
                    domains.insert(d.keys.clone(), open(&d.keys)?);
                }
                KeySets::with_hsm02(transport, open(&config.key)?, domains, &profile)?
            } else {
                let master = open(&config.key)?;
                let mut domains = std::collections::BTreeMap::new();
                for d in &profile.domains {
                    domains.insert(d.keys.clone(), open(&d.keys)?);
                }
                KeySets::with_hsm(transport, master, domains, &profile)?
            }
        }
        (None, None) => return Err("--hsm-module needs --transport-keys FILE".into()),
    };
    let (records, bad) = perso::records::read(&args.input, &profile.fields())?;
    for b in &bad {
        eprintln!("skipping record at {}: {}", b.at, b.reason);
    }
    let opts = Options {
        out: args.out.clone(),
        stations: args.sim,
        events: Some(progress_display(
            !json_out && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )),
        keep_images: !args.no_images,
        card_logs: args.card_logs.then(|| args.out.join("logs")),
        readers: match &args.readers {
            Some(sel) => reader_names(sel)?,
            None => Vec::new(),
        },
        feeder_cmd: args.feeder_cmd.clone(),
        digests: Some(perso::journal::BatchDigests::of_files(
            &args.profile,
            &args.input,
        )?),
        stop: Some(stop_on_signal()?),
    };
    let summary = perso::run::run(&profile, &records, &bad, &keys, &opts, resume)?;
    if json_out {
        print_json(serde_json::to_value(&summary)?);
    } else {
        println!(
            "{}: {} done, {} rework, {} failed, {} bad records; {} cards this run in {:.2} s ({:.0} cards/s). Report: {}",
            profile.name,
            summary.done,
            summary.rework,
            summary.failed,
            summary.bad_records,
            summary.handled,
            summary.seconds,
            summary.handled as f64 / summary.seconds.max(1e-9),
            args.out.join("report.csv").display()
        );
        if summary.in_progress > 0 {
            println!(
                "{} card(s) still in progress (waiting for the CA, or stopped mid-way): continue them with `kagi perso resume`",
                summary.in_progress
            );
        }
        if !summary.step_ms.is_empty() {
            let parts: Vec<String> = summary
                .step_ms
                .iter()
                .map(|(k, ms)| format!("{k} {ms:.2} ms"))
                .collect();
            println!(
                "where the time goes, per card and step: {}; host CPU {:.2} ms per card",
                parts.join(", "),
                summary.cpu_ms_per_card
            );
        }
    }
    if summary.interrupted {
        return Err(Box::new(Finished::new(
            Exit::Interrupted,
            format!(
                "interrupted: the cards in flight were finished or parked; continue with\n  {}",
                resume_command()
            ),
        )));
    }
    if summary.failed > 0 || summary.rework > 0 || summary.bad_records > 0 {
        return Err(Box::new(Finished::new(
            Exit::DoneWithFailures,
            format!(
                "batch finished with failures: {} failed, {} need rework, {} bad records (see {})",
                summary.failed,
                summary.rework,
                summary.bad_records,
                args.out.join("report.csv").display()
            ),
        )));
    }
    Ok(())
}

/// A flag set by the first SIGINT or SIGTERM (the batch stops at a safe point); a second one
/// ends the process at once (the journal makes that safe too).
fn stop_on_signal() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>, Failure> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!(
                "interrupted again: stopping at once; `kagi perso resume` continues the batch"
            );
            std::process::exit(i32::from(Exit::Interrupted.code()));
        }
        eprintln!(
            "stopping: finishing the cards in flight, then writing the reports (interrupt again to stop at once)"
        );
    })?;
    Ok(stop)
}

/// This very command line with `run` turned into `resume`, quoted for a POSIX shell.
fn resume_command() -> String {
    let mut turned = false;
    std::env::args()
        .enumerate()
        .map(|(i, a)| {
            let a = if i == 0 {
                "kagi".to_string()
            } else if !turned && a == "run" {
                turned = true;
                "resume".to_string()
            } else {
                a
            };
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The readers `--readers` names: every reader for `all`, else each comma-separated selector
/// resolved to exactly one reader.
#[cfg(feature = "pcsc")]
fn reader_names(sel: &str) -> Result<Vec<String>, Failure> {
    use kagi::pcsc_transport::{list_readers, resolve_reader};
    let names: Vec<String> = if sel.trim() == "all" {
        list_readers()?.into_iter().map(|r| r.name).collect()
    } else {
        sel.split(',')
            .map(|s| resolve_reader(s.trim()).map(|n| n.to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?
    };
    if names.is_empty() {
        return Err("no PC/SC readers (is pcscd running and a reader attached?)".into());
    }
    Ok(names)
}

#[cfg(not(feature = "pcsc"))]
fn reader_names(_sel: &str) -> Result<Vec<String>, Failure> {
    Err("this kagi was built without PC/SC support (feature `pcsc`)".into())
}

/// Shows a batch's events: a progress bar on a terminal (messages printed above it), else the
/// messages alone on stderr.
fn progress_display(bar: bool) -> perso::EventSink {
    use perso::BatchEvent as E;
    let shown: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);
    perso::EventSink(std::sync::Arc::new(move |e: &E| {
        let Ok(mut shown) = shown.lock() else {
            return;
        };
        match e {
            E::Started { cards } if bar => {
                let b = indicatif::ProgressBar::new(*cards as u64);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {pos}/{len} cards {per_sec} eta {eta} {msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                *shown = Some(b);
            }
            E::CardHandled => {
                if let Some(b) = shown.as_ref() {
                    b.inc(1);
                }
            }
            E::Message(line) => match shown.as_ref() {
                Some(b) => b.println(line),
                None => eprintln!("{line}"),
            },
            E::Finished => {
                if let Some(b) = shown.take() {
                    b.finish_and_clear();
                }
            }
            _ => {}
        }
    }))
}

/// Where the master keys are in a PKCS#11 HSM. The user PIN comes from --hsm-pin-file, the
/// variable named by --hsm-pin-env, or a prompt; never from the command line.
#[derive(Args)]
pub struct HsmArgs {
    /// PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so).
    #[arg(long)]
    pub(super) hsm_module: Option<PathBuf>,
    /// Token label.
    #[arg(long, requires = "hsm_module", default_value = "kagi")]
    hsm_token: String,
    /// Key set label (objects LABEL-enc, LABEL-mac, LABEL-dek).
    #[arg(long, requires = "hsm_module", default_value = "production-master")]
    hsm_key: String,
    /// File holding the token's user PIN.
    #[arg(long, requires = "hsm_module")]
    hsm_pin_file: Option<PathBuf>,
    /// Environment variable holding the token's user PIN.
    #[arg(long, requires = "hsm_module")]
    hsm_pin_env: Option<String>,
}

impl HsmArgs {
    pub(super) fn config(&self) -> Result<kagi_hsm::HsmConfig, Failure> {
        Ok(kagi_hsm::HsmConfig {
            module: self.hsm_module.clone().ok_or("--hsm-module is required")?,
            token: self.hsm_token.clone(),
            key: self.hsm_key.clone(),
        })
    }

    pub(super) fn pin(&self) -> Result<zeroize::Zeroizing<String>, Failure> {
        let pin = super::jpki::read_pin(&self.hsm_pin_file, &self.hsm_pin_env, "HSM user PIN: ")?;
        Ok(zeroize::Zeroizing::new(
            String::from_utf8(pin.to_vec()).map_err(|_| "the HSM PIN is not UTF-8")?,
        ))
    }
}

/// `kagi perso hsm-import`: the master key set from a key file into the HSM.
#[derive(Args)]
pub struct HsmImportArgs {
    #[command(flatten)]
    hsm: HsmArgs,
    /// Key file with the master keys (KEY= or ENC=/MAC=/DEK=); delete it afterwards.
    #[arg(long)]
    key_file: PathBuf,
    /// 3DES (SCP02) master keys, 16 bytes each, for profiles with diversification = "emv"
    /// or "visa2" (default: AES, for kdf3).
    #[arg(long)]
    des: bool,
}

/// Imports the master keys into the HSM as non-extractable keys.
pub fn hsm_import(args: &HsmImportArgs, json_out: bool) -> Result<(), Failure> {
    let keys = kagi::keys::read_key_file(&args.key_file, 0)?;
    let config = args.hsm.config()?;
    if args.des {
        let keys = card_wire::scp02::StaticKeys02::from_scp03(&keys)
            .map_err(|e| format!("{}: not 3DES keys: {e}", args.key_file.display()))?;
        kagi_hsm::scp02::import_master_des(&config, &args.hsm.pin()?, &keys)?;
    } else {
        kagi_hsm::import_master(&config, &args.hsm.pin()?, &keys)?;
    }
    if json_out {
        super::print_json(serde_json::json!({
            "token": config.token,
            "objects": (["enc", "mac", "dek"].map(|k| format!("{}-{k}", config.key))),
            "key_type": if args.des { "3des" } else { "aes" },
            "extractable": false,
            "key_file": args.key_file.display().to_string(),
        }));
        return Ok(());
    }
    println!(
        "imported {}-enc, -mac, -dek into token '{}' (non-extractable); the key file {} is no longer needed",
        config.key,
        config.token,
        args.key_file.display()
    );
    Ok(())
}

/// `kagi perso open-mailer`: what the mailer house does with its private key.
#[derive(Args)]
pub struct MailerArgs {
    /// The mailer's RSA private key (PKCS#8, PEM or DER).
    #[arg(long)]
    key: PathBuf,
    /// The batch's `pin-mailer.enc`.
    #[arg(long)]
    mailer: PathBuf,
}

/// Decrypts the PIN mailer file and prints one line per card (for the mailer house only).
pub fn open_mailer(args: &MailerArgs, json_out: bool) -> Result<(), Failure> {
    use rsa::pkcs8::DecodePrivateKey;
    let bytes = std::fs::read(&args.key).map_err(|e| format!("{}: {e}", args.key.display()))?;
    let key = match std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| t.find("-----BEGIN").map(|i| &t[i..]))
    {
        Some(pem) => rsa::PrivateKey::from_pkcs8_pem(pem)?,
        None => rsa::PrivateKey::from_pkcs8_der(&bytes)?,
    };
    let text = std::fs::read_to_string(&args.mailer)
        .map_err(|e| format!("{}: {e}", args.mailer.display()))?;
    let mut letters = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (record, ct) = line
            .split_once(',')
            .ok_or("PIN mailer line without a comma")?;
        let ct = hex::decode(ct)?;
        let plain = zeroize::Zeroizing::new(
            key.decrypt(rsa::Oaep::<sha2::Sha256>::new(), &ct)
                .map_err(|_| format!("record {record}: cannot decrypt with this key"))?,
        );
        if !json_out {
            println!("{record},{}", String::from_utf8_lossy(&plain));
            continue;
        }
        // Each letter is the JSON object the station sealed (record id, ICCID, PINs).
        let letter: serde_json::Value = serde_json::from_slice(&plain)
            .map_err(|_| format!("record {record}: the letter is not JSON"))?;
        letters.push(serde_json::json!({ "record": record, "letter": letter }));
    }
    if json_out {
        super::print_json(serde_json::json!({ "letters": letters }));
    }
    Ok(())
}
