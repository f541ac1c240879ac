//! The refusal-code catalogue ([`tsm_protocol::codes`]) against the sources: every code the
//! TSMs, the JPKI issuer and the signed-message layer can answer is in it, and every entry is
//! still answered somewhere. The codes are found by reading the sources' text (string literals
//! `subject.reason` of the catalogue's subjects, and the application checker's `code()` arms),
//! not through the code under test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const SUBJECTS: &[&str] = &[
    "application",
    "business",
    "card",
    "issuer",
    "keygen",
    "protocol",
    "relay",
    "tsm",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The string literals in `text` (no escapes inside the ones we look for).
fn literals(text: &str) -> Vec<&str> {
    text.split('"').skip(1).step_by(2).collect()
}

fn is_code(s: &str) -> bool {
    let Some((subject, reason)) = s.split_once('.') else {
        return false;
    };
    SUBJECTS.contains(&subject)
        && !reason.is_empty()
        && reason
            .split('-')
            .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        // File names (`tsm.toml`, `mno.toml`) are no codes.
        && !["toml", "pem", "db", "der", "json", "log"].contains(&reason)
}

/// The codes the sources answer.
fn answered() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["tsm-server/src", "tsm-protocol/src", "signed/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut codes = BTreeSet::new();
    for f in files {
        if f.ends_with("codes.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        // Test modules name codes the services never answer.
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        codes.extend(
            literals(text)
                .into_iter()
                .filter(|s| is_code(s))
                .map(String::from),
        );
    }
    // `application.{code()}`: the arms of the application checker's `code()`.
    let app = std::fs::read_to_string(root.join("certs/src/application.rs")).unwrap();
    let body = app
        .split("pub fn code(&self)")
        .nth(1)
        .and_then(|s| s.split("\n    }\n").next())
        .expect("ApplicationError::code in certs/src/application.rs");
    for line in body.lines() {
        if let Some((_, rest)) = line.split_once("=> \"") {
            let reason = rest.split('"').next().unwrap();
            codes.insert(format!("application.{reason}"));
        }
    }
    assert!(codes.len() > 80, "the scan found too few codes: {codes:?}");
    codes
}

#[test]
fn every_answered_code_is_in_the_catalogue_and_every_entry_is_answered() {
    let answered = answered();
    let listed: BTreeSet<String> = tsm_protocol::codes::CODES
        .iter()
        .map(|c| c.code.to_string())
        .collect();
    let missing: Vec<_> = answered.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "codes answered but not in tsm_protocol::codes::CODES: {missing:?}"
    );
    let stale: Vec<_> = listed.difference(&answered).collect();
    assert!(
        stale.is_empty(),
        "catalogue entries nothing answers any more: {stale:?}"
    );
}
