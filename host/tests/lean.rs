//! The lean library (issue #12): `kagi`'s normal dependencies stay within the budget the
//! README states — at most 60 distinct crates with default features, 45 without — so that
//! a feature that needs heavy crates goes behind its own flag (as `dap-keys` does for RSA and
//! P-256). Counted with `cargo tree` from the lock file (offline).

use std::collections::BTreeSet;
use std::process::Command;

fn distinct_crates(extra: &[&str]) -> BTreeSet<String> {
    crates_of("kagi", extra)
}

fn crates_of(package: &str, extra: &[&str]) -> BTreeSet<String> {
    let o = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            package,
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

/// Test fixtures (the test CA, the demo cards) are never a library's normal dependency with
/// its default features: only the CLI (which has demo modes) and the fixture crate itself
/// may name them. kagi-perso's development CA is the opt-in feature `dev-ca`.
#[test]
fn no_library_depends_on_a_test_fixture() {
    for lib in [
        "kagi",
        "kagi-perso",
        "kagi-hsm",
        "kagi-online",
        "kagi-certs",
        "kagi-signed",
        "kagi-cap",
        "kagi-jcvm",
        "card-wire",
        "applet-sim",
        "tsm-protocol",
        "broker-protocol",
    ] {
        let crates = crates_of(lib, &[]);
        for fixture in ["test-pki ", "kagi-fixtures "] {
            assert!(
                !crates.iter().any(|c| c.starts_with(fixture)),
                "{lib} has {fixture}among its normal dependencies"
            );
        }
    }
    // The opt-in feature does bring the development CA (so the check above can fail).
    let with_ca = crates_of("kagi-perso", &["--features", "dev-ca"]);
    assert!(with_ca.iter().any(|c| c.starts_with("test-pki ")));
}
