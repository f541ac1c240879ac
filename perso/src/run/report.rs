//! The batch's reports: the per-card CSV and the JSON summary.

use crate::error::{Error, Result};
use crate::journal::Status;
use crate::records::{BadRecord, Record};
use std::collections::BTreeMap;
use std::path::Path;

/// `OUT/report.csv` and `OUT/report.json`: one row per input record.
pub(super) fn write_reports(
    out: &Path,
    records: &[Record],
    bad: &[BadRecord],
    state: &std::collections::BTreeMap<String, Status>,
    cards: &BTreeMap<String, String>,
) -> Result<()> {
    let mut rows = Vec::new();
    for r in records {
        let (status, detail) = match state.get(&r.id) {
            Some(Status::Done) => ("done", String::new()),
            Some(Status::Rework(why)) => ("rework", why.clone()),
            Some(Status::Failed(why)) => ("failed", why.clone()),
            Some(Status::InProgress { steps, .. }) => ("in-progress", steps.join(" ")),
            None => ("pending", String::new()),
        };
        let card = cards.get(&r.id).cloned().unwrap_or_default();
        rows.push(
            serde_json::json!({"record": r.id, "status": status, "card": card, "detail": detail}),
        );
    }
    for b in bad {
        rows.push(
            serde_json::json!({"record": b.at, "status": "bad-record", "card": "", "detail": b.reason}),
        );
    }
    let io = |e: std::io::Error| Error::Report(e.to_string());
    let mut csv = ::csv::Writer::from_path(out.join("report.csv"))
        .map_err(|e| Error::Report(e.to_string()))?;
    csv.write_record(["record", "status", "card", "detail"])
        .map_err(|e| Error::Report(e.to_string()))?;
    for row in &rows {
        let f = |k: &str| row[k].as_str().unwrap_or_default().to_string();
        csv.write_record([f("record"), f("status"), f("card"), f("detail")])
            .map_err(|e| Error::Report(e.to_string()))?;
    }
    csv.flush().map_err(io)?;
    let json = serde_json::json!({"schema_version": 1, "cards": rows});
    std::fs::write(
        out.join("report.json"),
        serde_json::to_vec_pretty(&json).unwrap_or_default(),
    )
    .map_err(io)
}
