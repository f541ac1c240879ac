//! The JSON contract: a command's `--json` output is exactly one JSON document with
//! `schema_version` 1 that matches its published schema in `schemas/NAME.schema.json`.

#![allow(dead_code)]

use std::path::PathBuf;

/// The repository's `schemas/` folder.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

/// The published schema `name` (e.g. `gp.list`), compiled as JSON Schema 2020-12 (the schema
/// itself is checked against the 2020-12 meta-schema on the way).
pub fn validator(name: &str) -> (boon::Schemas, boon::SchemaIndex) {
    let path = dir().join(format!("{name}.schema.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("schema {name}: {}: {e}", path.display()));
    let schema: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("schema {name} is not JSON: {e}"));
    let url = format!("file:///kagi/schemas/{name}.schema.json");
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler.set_default_draft(boon::Draft::V2020_12);
    compiler
        .add_resource(&url, schema)
        .unwrap_or_else(|e| panic!("schema {name}: {e}"));
    let index = compiler
        .compile(&url, &mut schemas)
        .unwrap_or_else(|e| panic!("schema {name} is not a valid JSON Schema: {e:#}"));
    (schemas, index)
}

/// The errors `value` has against the schema `name` (empty: valid), one line per failing
/// keyword with the instance location.
pub fn errors(name: &str, value: &serde_json::Value) -> Vec<String> {
    let (schemas, index) = validator(name);
    match schemas.validate(value, index) {
        Ok(()) => Vec::new(),
        Err(e) => format!("{e:#}").lines().map(str::to_string).collect(),
    }
}

/// `stdout` as the one JSON document of schema `name`: parsed strictly (one document, nothing
/// after it), `schema_version` 1, valid against the schema; panics naming what is wrong.
pub fn document(name: &str, stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let value: serde_json::Value = serde_json::from_slice(stdout)
        .unwrap_or_else(|e| panic!("{name}: stdout is not one JSON document ({e}):\n{text}"));
    assert_eq!(
        value.get("schema_version"),
        Some(&serde_json::json!(1)),
        "{name}: schema_version missing or not 1:\n{text}"
    );
    let errs = errors(name, &value);
    assert!(
        errs.is_empty(),
        "{name}: the output does not match schemas/{name}.schema.json:\n  {}\n{text}",
        errs.join("\n  ")
    );
    value
}
