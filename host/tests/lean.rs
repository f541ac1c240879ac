//! The lean library (issue #12): `kagi`'s normal dependencies stay within the budget the
//! README states — at most 60 distinct crates with default features, 45 without — so that
//! a feature that needs heavy crates goes behind its own flag (as `dap-keys` does for RSA and
//! P-256). Counted with `cargo tree` from the lock file (offline).

use std::collections::BTreeSet;
use std::process::Command;

fn distinct_crates(extra: &[&str]) -> BTreeSet<String> {
    let o = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            "kagi",
            "-e",
            "normal",
        ])
        .args(["--prefix", "none", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .args(extra)
        .output()
        .expect("cargo");
    assert!(
        o.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        // "name vX.Y.Z (path) (*)" → "name vX.Y.Z"
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn the_library_stays_within_its_dependency_budget() {
    let default = distinct_crates(&[]);
    let bare = distinct_crates(&["--no-default-features"]);
    for heavy in [
        "tokio", "hyper", "axum", "reqwest", "rusqlite", "clap", "cryptoki", "rsa",
    ] {
        assert!(
            !default.iter().any(|c| c.starts_with(&format!("{heavy} "))),
            "{heavy} is a normal dependency of kagi with default features"
        );
    }
    assert!(
        default.len() <= 60,
        "{} crates: {default:#?}",
        default.len()
    );
    assert!(bare.len() <= 45, "{} crates: {bare:#?}", bare.len());
    assert!(bare.is_subset(&default));
}
