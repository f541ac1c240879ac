//! # test-vectors
//!
//! Public known-answer vectors for SCP03 and its primitives (`vectors/`, provenance in
//! `vectors/SOURCES.md`, format in `vectors/FORMAT.md`) and the checker that runs each of them
//! through **both** halves of kagi's SCP03: the host (initiator) and the card (responder).
//!
//! The loader reads every `*.json` in a directory, supports every documented kind (also those
//! with no file yet) and rejects an unknown kind or an unknown field, a file without vectors and
//! a vector that asserts no expected value (the error names the file and the vector index). Each vector counts once:
//! it passes only when every host-side and card-side check passes, and when flipping one bit of
//! a MAC, cryptogram or ciphertext makes the check fail.

#![deny(missing_docs)]

mod checks;
// Field names and meanings are those of `vectors/FORMAT.md`; repeating them here adds nothing.
#[allow(missing_docs)]
pub mod schema;

pub use schema::{Hex, VectorFile};

use std::path::{Path, PathBuf};

/// Why a file could not be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The JSON is malformed, has an unknown kind or an unknown/missing field, holds no vector,
    /// or a vector asserts nothing (`vector N: …`).
    #[error("{path}: {message}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the JSON position.
        message: String,
    },
}

/// The result of one file.
#[derive(Debug)]
pub struct FileReport {
    /// File name.
    pub name: String,
    /// The kind, when it was readable.
    pub kind: Option<String>,
    /// Vectors that passed.
    pub passed: usize,
    /// Failed vectors with the reason (index, message).
    pub failures: Vec<(usize, String)>,
    /// A file-level error (unreadable, unknown kind, bad field).
    pub error: Option<String>,
}

impl FileReport {
    /// One line: `name: kind passed/total` or the error.
    pub fn line(&self) -> String {
        match &self.error {
            Some(e) => format!("{}: ERROR {e}", self.name),
            None => {
                let total = self.passed + self.failures.len();
                let status = if self.failures.is_empty() {
                    "ok"
                } else {
                    "FAILED"
                };
                format!(
                    "{}: {} {}/{} passed {status}",
                    self.name,
                    self.kind.as_deref().unwrap_or("?"),
                    self.passed,
                    total
                )
            }
        }
    }
}

/// The result of a directory.
#[derive(Debug, Default)]
pub struct Report {
    /// One report per file, in name order.
    pub files: Vec<FileReport>,
}

impl Report {
    /// Vectors that passed.
    pub fn passed(&self) -> usize {
        self.files.iter().map(|f| f.passed).sum()
    }
    /// Vectors that failed, plus one per file that could not be checked.
    pub fn failed(&self) -> usize {
        self.files
            .iter()
            .map(|f| f.failures.len() + usize::from(f.error.is_some()))
            .sum()
    }
    /// Whether everything passed (and there was something to check).
    pub fn ok(&self) -> bool {
        self.failed() == 0 && !self.files.is_empty()
    }
}

/// Loads one vector file.
pub fn load(path: &Path) -> Result<VectorFile, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    schema::parse(&text).map_err(|message| LoadError::Schema {
        path: path.to_owned(),
        message,
    })
}

/// Checks one parsed file; returns (passed, failures).
pub fn check_file(file: &VectorFile) -> (usize, Vec<(usize, String)>) {
    let results = checks::run(file);
    let mut passed = 0;
    let mut failures = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(()) => passed += 1,
            Err(e) => failures.push((i, e)),
        }
    }
    (passed, failures)
}

/// Checks every `*.json` file in `dir`.
pub fn check_dir(dir: &Path) -> Result<Report, std::io::Error> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut report = Report::default();
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match load(&path) {
            Ok(file) => {
                let (passed, failures) = check_file(&file);
                report.files.push(FileReport {
                    name,
                    kind: Some(file.kind().to_string()),
                    passed,
                    failures,
                    error: None,
                });
            }
            Err(e) => report.files.push(FileReport {
                name,
                kind: None,
                passed: 0,
                failures: Vec::new(),
                error: Some(e.to_string()),
            }),
        }
    }
    Ok(report)
}

/// The repository's own copy of the public vectors.
pub fn bundled_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}
