//! Input records for a batch: CSV with a header row, or JSON lines. Every record has an `id`;
//! records that are malformed, have a duplicate id or miss a field the profile uses are
//! reported and skipped without stopping the batch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One card's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record id (unique in the batch).
    pub id: String,
    /// Field values.
    pub fields: BTreeMap<String, String>,
}

/// A record that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// Where it is (line number, or the id when known).
    pub at: String,
    /// What is wrong.
    pub reason: String,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A parsed row (fields) or why it could not be parsed.
type Parsed = Result<BTreeMap<String, String>, String>;

/// Reads records from `path` (`.csv`, or JSON lines otherwise); `needed` are the fields the
/// profile uses.
pub fn read(path: &Path, needed: &[String]) -> crate::Result<(Vec<Record>, Vec<BadRecord>)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::Error::Profile(format!("records {}: {e}", path.display())))?;
    let csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let missing = missing_columns(&text, csv, needed);
    if !missing.is_empty() {
        return Err(crate::Error::Profile(format!(
            "records {}: no column for {} that the profile uses; the records have {}. Fix the column names or the profile's placeholders",
            path.display(),
            missing
                .iter()
                .map(|m| format!("{{{m}}}"))
                .collect::<Vec<_>>()
                .join(", "),
            present_columns(&text, csv).join(", ")
        )));
    }
    Ok(parse(&text, csv, needed))
}

/// The column names the records have: the CSV header, or every key of any JSON line.
fn present_columns(text: &str, csv: bool) -> Vec<String> {
    if csv {
        let mut r = ::csv::ReaderBuilder::new().from_reader(text.as_bytes());
        return r
            .headers()
            .map(|h| h.iter().map(str::to_string).collect())
            .unwrap_or_default();
    }
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        if let Ok(m) = serde_json::from_str::<BTreeMap<String, serde_json::Value>>(line) {
            keys.extend(m.into_keys());
        }
    }
    keys.into_iter().collect()
}

/// The fields (and `id`) the profile needs that no column of the records provides: a batch
/// with any is refused as a whole before its journal exists, instead of skipping every record.
pub fn missing_columns(text: &str, csv: bool, needed: &[String]) -> Vec<String> {
    let present = present_columns(text, csv);
    std::iter::once("id")
        .chain(needed.iter().map(String::as_str))
        .filter(|n| !present.iter().any(|p| p == n))
        .map(str::to_string)
        .collect()
}

/// Parses records from text.
pub fn parse(text: &str, csv: bool, needed: &[String]) -> (Vec<Record>, Vec<BadRecord>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut raw: Vec<(String, Parsed)> = Vec::new();
    if csv {
        let mut r = ::csv::ReaderBuilder::new()
            .flexible(false)
            .from_reader(text.as_bytes());
        let headers = match r.headers() {
            Ok(h) => h.clone(),
            Err(e) => {
                bad.push(BadRecord {
                    at: "line 1".into(),
                    reason: format!("no CSV header: {e}"),
                });
                return (good, bad);
            }
        };
        for (i, row) in r.records().enumerate() {
            let at = format!("line {}", i + 2);
            raw.push((
                at,
                row.map_err(|e| e.to_string()).map(|row| {
                    headers
                        .iter()
                        .zip(row.iter())
                        .map(|(h, v)| (h.to_string(), v.to_string()))
                        .collect()
                }),
            ));
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = format!("line {}", i + 1);
            let parsed = serde_json::from_str::<BTreeMap<String, serde_json::Value>>(line)
                .map_err(|e| e.to_string())
                .and_then(|m| {
                    m.into_iter()
                        .map(|(k, v)| match v {
                            serde_json::Value::String(s) => Ok((k, s)),
                            serde_json::Value::Number(n) => Ok((k, n.to_string())),
                            other => Err(format!("field '{k}' is {other}, not a string or number")),
                        })
                        .collect()
                });
            raw.push((at, parsed));
        }
    }
    let mut seen = BTreeSet::new();
    for (at, fields) in raw {
        let mut fields = match fields {
            Ok(f) => f,
            Err(reason) => {
                bad.push(BadRecord { at, reason });
                continue;
            }
        };
        let Some(id) = fields.remove("id") else {
            bad.push(BadRecord {
                at,
                reason: "no id".into(),
            });
            continue;
        };
        if !valid_id(&id) {
            bad.push(BadRecord {
                at,
                reason: format!("id '{id}' must be 1-64 letters, digits, '-', '_' or '.'"),
            });
            continue;
        }
        if !seen.insert(id.clone()) {
            bad.push(BadRecord {
                at: id,
                reason: "duplicate id".into(),
            });
            continue;
        }
        if let Some(missing) = needed
            .iter()
            .find(|n| fields.get(*n).is_none_or(|v| v.is_empty()))
        {
            bad.push(BadRecord {
                at: id,
                reason: format!("missing field '{missing}'"),
            });
            continue;
        }
        good.push(Record { id, fields });
    }
    (good, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn csv_and_jsonl() {
        let need = vec!["name".to_string()];
        let (g, b) = parse("id,name\nA1,x\nA1,y\n,z\nA2\nA3,w\n", true, &need);
        assert_eq!(
            g.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["A1", "A3"]
        );
        assert_eq!(b.len(), 3, "{b:?}");
        let (g, b) = parse(
            "{\"id\":\"B1\",\"name\":\"x\"}\n{\"id\":7,\"name\":\"y\"}\n{bad\n{\"id\":\"B3\"}\n",
            false,
            &need,
        );
        assert_eq!(
            g.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["B1", "7"]
        );
        assert_eq!(b.len(), 2);
        assert!(b[1].reason.contains("missing field 'name'"));
    }

    proptest! {
        #[test]
        fn never_panics(text in ".{0,300}", csv in any::<bool>()) {
            let _ = parse(&text, csv, &["x".to_string()]);
        }
    }
}
