//! Helpers of the `kagi gp` CAP tests (`gp_cap_cli.rs`, `gp_dm_cli.rs`): the CAP files, a
//! simulated card in an image file, its `--json` answers.

#![allow(dead_code)]

use super::cli::kagi;
use std::path::{Path, PathBuf};
use std::process::Output;

pub fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cap/tests/data")
        .join(rel)
}

pub const EMPTY: &str = "gppro-empty/Empty_0102030405_8d5ac9e2_2.2.1.cap";
pub const ISO: &str = "isoapplet-v0/isoapplet.cap";

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kagi-gpcap-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn sim(img: &Path, args: &[&str]) -> Output {
    kagi()
        .arg("--json")
        .args(["gp"])
        .args(args)
        .arg("--sim")
        .arg("--sim-image")
        .arg(img)
        .output()
        .unwrap()
}

pub fn packages(list: &serde_json::Value) -> Vec<(String, serde_json::Value, serde_json::Value)> {
    list["registry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["scope"] == "LoadFilesAndModules")
        .map(|e| {
            (
                e["aid"].as_str().unwrap().to_string(),
                e["version"].clone(),
                e["modules"].clone(),
            )
        })
        .collect()
}

/// Asserts the command succeeded.
pub fn ok(o: &Output) {
    assert!(o.status.success(), "{}", text(o));
}

/// The `--json` document `o` printed, checked against its published schema `name`.
pub fn valid(name: &str, o: &Output) -> serde_json::Value {
    ok(o);
    let v = json(o);
    let errors = super::schema::errors(name, &v);
    assert!(errors.is_empty(), "{name}: {errors:?} in {v}");
    v
}
