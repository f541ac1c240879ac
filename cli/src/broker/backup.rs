//! `kagi broker backup` and `kagi broker restore`: the operator's backup of the broker's
//! databases (online; `kagi_db::backup`) and its restore into fresh databases.

use super::super::{Failure, print_json};
use clap::Args;
use kagi_db::Backend;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The manifest a backup directory holds: the shards' files in order.
const MANIFEST: &str = "manifest.json";

/// `kagi broker backup`.
#[derive(Args)]
pub struct BackupArgs {
    /// The broker's configuration (broker.toml): its databases are backed up.
    #[arg(long, required_unless_present = "database")]
    config: Option<PathBuf>,
    /// The databases instead (one per shard, in order).
    #[arg(long)]
    database: Vec<String>,
    /// The backup directory (created; it must not exist).
    #[arg(long)]
    out: PathBuf,
}

/// `kagi broker restore`.
#[derive(Args)]
pub struct RestoreArgs {
    /// The backup directory (`kagi broker backup --out`).
    #[arg(long)]
    from: PathBuf,
    /// The fresh databases, one per shard in the backup's order (SQLite files that do not
    /// exist yet, or URLs of empty PostgreSQL databases).
    #[arg(long, required = true)]
    database: Vec<String>,
}

fn sha256_file(path: &Path) -> Result<String, Failure> {
    use std::io::Read;
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

pub(super) fn backup(args: &BackupArgs, json_out: bool) -> Result<(), Failure> {
    let databases = match (&args.config, args.database.is_empty()) {
        (_, false) => args.database.clone(),
        (Some(c), true) => broker_server::setup::databases(c)?,
        (None, true) => return Err("give --config or --database".into()),
    };
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(&args.out).map_err(|e| {
        format!(
            "{}: {e} (a backup goes into a new directory)",
            args.out.display()
        )
    })?;
    let mut shards = Vec::new();
    for (i, d) in databases.iter().enumerate() {
        let backend = Backend::parse(d);
        let kind = match &backend {
            Backend::Sqlite(_) => kagi_db::backup::BackupKind::Sqlite,
            Backend::Postgres(_) => kagi_db::backup::BackupKind::PgDump,
        };
        let name = format!("shard-{i}.{}", kind.extension());
        let file = args.out.join(&name);
        kagi_db::backup::backup(&backend, &file)?;
        let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        shards.push(json!({
            "shard": i,
            "database": backend.location(),
            "file": name,
            "bytes": bytes,
            "sha256": sha256_file(&file)?,
        }));
    }
    let manifest = json!({"schema_version": crate::SCHEMA_VERSION, "shards": shards});
    std::fs::write(
        args.out.join(MANIFEST),
        serde_json::to_string_pretty(&manifest).unwrap_or_default(),
    )
    .map_err(|e| format!("{}: {e}", args.out.join(MANIFEST).display()))?;
    if json_out {
        print_json(json!({"out": args.out.display().to_string(), "shards": shards}));
    } else {
        println!(
            "{} shard(s) backed up into {} (the key store is not in it)",
            shards.len(),
            args.out.display()
        );
    }
    Ok(())
}

pub(super) fn restore(args: &RestoreArgs, json_out: bool) -> Result<(), Failure> {
    let path = args.from.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (is {} a backup of `kagi broker backup`?)",
            path.display(),
            args.from.display()
        )
    })?;
    let manifest: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let shards = manifest["shards"]
        .as_array()
        .ok_or_else(|| format!("{}: no shard list", path.display()))?;
    if shards.len() != args.database.len() {
        return Err(format!(
            "the backup has {} shard(s): give as many --database, in order",
            shards.len()
        )
        .into());
    }
    // Every file is checked before anything is written.
    let mut files = Vec::new();
    for s in shards {
        let name = s["file"].as_str().unwrap_or_default();
        if name.is_empty() || name.contains('/') {
            return Err(format!("{}: a shard without a file name", path.display()).into());
        }
        let file = args.from.join(name);
        if sha256_file(&file)? != s["sha256"].as_str().unwrap_or_default() {
            return Err(format!(
                "{}: its SHA-256 is not the manifest's: the backup is damaged",
                file.display()
            )
            .into());
        }
        files.push(file);
    }
    let mut restored = Vec::new();
    for (i, (file, d)) in files.iter().zip(&args.database).enumerate() {
        let backend = Backend::parse(d);
        kagi_db::backup::restore(file, &backend)?;
        restored.push(json!({"shard": i, "database": backend.location()}));
    }
    if json_out {
        print_json(json!({"restored": restored}));
    } else {
        println!(
            "{} shard(s) restored; check them: kagi broker verify-records --database … ",
            restored.len()
        );
    }
    Ok(())
}
