//! The CLI's contract with scripts, in one test binary: every `--json` document matches its
//! published schema in `schemas/` (card, JPKI, CA and batch commands; the TSM's; the broker's),
//! the README's table names a schema and exit codes for every command, and the servers stop
//! cleanly (exit 0) on SIGTERM and SIGINT.

#[path = "../support/mod.rs"]
mod support;

mod json_broker;
mod json_card;
mod json_tsm;
mod servers_exit;
