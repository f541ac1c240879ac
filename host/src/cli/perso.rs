//! `kagi perso run | resume`.

use super::{Failure, print_json};
use clap::Args;
use kagi::perso::{self, KeySets, Options, Profile};
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
    #[arg(long, default_value_t = 4)]
    sim: usize,
    /// Journal, reports and card images go here.
    #[arg(long)]
    out: PathBuf,
    /// Development key store: a directory with transport.keys and master.keys. Insecure:
    /// production keys belong in an HSM.
    #[arg(long)]
    insecure_file_keys: PathBuf,
    /// Do not keep card images (benchmarks only: a batch without images cannot resume).
    #[arg(long)]
    no_images: bool,
}

/// Runs or resumes a batch.
pub fn run(args: &BatchArgs, resume: bool, json_out: bool) -> Result<(), Failure> {
    eprintln!(
        "WARNING: insecure file key store {} in use: keys are read from plain files. Use an HSM in production.",
        args.insecure_file_keys.display()
    );
    let text = std::fs::read_to_string(&args.profile)
        .map_err(|e| format!("{}: {e}", args.profile.display()))?;
    let profile = Profile::parse(&text).map_err(|e| format!("{}: {e}", args.profile.display()))?;
    let (records, bad) = perso::records::read(&args.input, &profile.fields())?;
    for b in &bad {
        eprintln!("skipping record at {}: {}", b.at, b.reason);
    }
    let keys = KeySets::from_insecure_dir(&args.insecure_file_keys, &profile)?;
    let opts = Options {
        out: args.out.clone(),
        stations: args.sim,
        progress: !json_out && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        keep_images: !args.no_images,
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
    }
    Ok(())
}
