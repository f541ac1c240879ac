//! The JSON contract of the CLI: every `--json` output of the card, JPKI and CA commands is one
//! document that matches its published schema in `schemas/`, and errors are JSON too. The
//! README's command table names a schema and the exit codes for every command `kagi help` lists.

use crate::support::schema;
use crate::{scratch, show};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn kagi() -> Command {
    let mut c = Command::new(crate::support::kagi_bin());
    c.arg("--json");
    c
}

/// Runs `kagi --json ARGS` in `dir`, requires exit `code` and returns the document checked
/// against schema `name`.
fn run(dir: &Path, name: &str, code: i32, args: &[&str]) -> serde_json::Value {
    let o = kagi().args(args).current_dir(dir).output().unwrap();
    assert_eq!(o.status.code(), Some(code), "kagi {args:?}: {}", show(&o));
    schema::document(name, &o.stdout)
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

const CAP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/javacard/isoapplet-v0/isoapplet.cap"
);

#[test]
fn gp_commands_print_documents_that_match_their_schemas() {
    let d = scratch("gp");
    let img = ["--sim", "--sim-image", "card.img"];
    let with = |rest: &[&'static str]| -> Vec<&'static str> {
        let mut v = rest.to_vec();
        v.extend_from_slice(&img);
        v
    };
    let info = run(&d, "gp.info", 0, &with(&["gp", "info"]));
    assert_eq!(info["security_domain"]["aid"], "A000000151000000");
    // Card data: the simulator's IIN and CIN, and its CPLC with the IC serial number (the
    // default KDD's last 4 bytes) decoded next to the raw 42 bytes.
    assert_eq!(
        (info["iin"].as_str(), info["cin"].as_str()),
        (Some("4B47"), Some("4B4147490001"))
    );
    let serial = &info["cplc_decoded"][6];
    assert_eq!(
        (serial["name"].as_str(), serial["hex"].as_str()),
        (Some("ic_serial_number"), Some("00000001"))
    );
    assert_eq!(info["cplc"].as_str().map(str::len), Some(84));
    write_private(&d.join("k.txt"), "KEY=404142434445464748494A4B4C4D4E4F\n");
    let checked = run(
        &d,
        "gp.info",
        0,
        &with(&["gp", "info", "--key-file", "k.txt"]),
    );
    assert_eq!(checked["key_check"]["matched"], "none");
    let list = run(&d, "gp.list", 0, &with(&["gp", "list"]));
    assert_eq!(list["session"]["level"], "33");
    let cap = CAP;
    let info = run(&d, "gp.cap-info", 0, &["gp", "cap-info", cap]);
    assert_eq!(info["package"], "F276A288BCFBA69D34F310");
    let loaded = run(&d, "gp.load", 0, &with(&["gp", "load", cap]));
    assert_eq!(loaded["stats"]["load_file_bytes"], 14114);
    run(&d, "gp.uninstall", 0, &with(&["gp", "uninstall", cap]));
    run(
        &d,
        "gp.load",
        0,
        &with(&[
            "gp",
            "load",
            "--package",
            "F001020304",
            "--module",
            "F00102030401=kagi.echo",
        ]),
    );
    let inst = run(
        &d,
        "gp.install",
        0,
        &with(&[
            "gp",
            "install",
            "--package",
            "F001020304",
            "--module",
            "F00102030401",
        ]),
    );
    assert_eq!(inst["installed"], "F00102030401");
    run(
        &d,
        "gp.store-data",
        0,
        &with(&[
            "gp",
            "store-data",
            "--app",
            "F00102030401",
            "--data",
            "6B616769",
        ]),
    );
    run(
        &d,
        "gp.set-status",
        0,
        &with(&[
            "gp",
            "set-status",
            "--app",
            "F00102030401",
            "--state",
            "lock",
        ]),
    );
    run(
        &d,
        "gp.delete",
        0,
        &with(&["gp", "delete", "--related", "F001020304"]),
    );
    // PUT KEY: one key check value per key, not run together. The KCV of an AES key is the
    // first 3 bytes of AES(key, 16 × 01) (GP 2.3 Amendment D §7.2), computed here.
    let key = [
        0x50u8, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x5B, 0x5C, 0x5D, 0x5E,
        0x5F,
    ];
    let kcv = {
        use aes::cipher::{BlockCipherEncrypt, KeyInit};
        let c = aes::Aes128::new(&key.into());
        let mut b = [1u8; 16].into();
        c.encrypt_block(&mut b);
        hex::encode_upper(&b[..3])
    };
    write_private(
        &d.join("new.keys"),
        "KVN=31\nKEY=505152535455565758595A5B5C5D5E5F\n",
    );
    let put = run(
        &d,
        "gp.put-key",
        0,
        &with(&[
            "gp",
            "put-key",
            "--new-key-file",
            "new.keys",
            "--replace",
            "30",
        ]),
    );
    assert_eq!(put["kvn"], "31");
    assert_eq!(put["kcv"], serde_json::json!([kcv, kcv, kcv]));
    // A key file without KVN= is refused instead of becoming some default key set.
    write_private(
        &d.join("nokvn.keys"),
        "KEY=505152535455565758595A5B5C5D5E5F\n",
    );
    let e = run(
        &d,
        "error",
        1,
        &with(&["gp", "put-key", "--new-key-file", "nokvn.keys"]),
    );
    assert!(
        e["error"]["message"].as_str().unwrap().contains("KVN="),
        "{e}"
    );
    // DELETE KEY: a second set goes; the set of the session (31, now the last) is refused.
    write_private(
        &d.join("k32.keys"),
        "KVN=32\nKEY=606162636465666768696A6B6C6D6E6F\n",
    );
    let auth = ["--key-file", "new.keys"];
    let mut args = with(&["gp", "put-key", "--new-key-file", "k32.keys"]);
    args.extend_from_slice(&auth);
    run(&d, "gp.put-key", 0, &args);
    let mut args = with(&["gp", "delete-key", "32"]);
    args.extend_from_slice(&auth);
    let del = run(&d, "gp.delete-key", 0, &args);
    assert_eq!(
        (
            del["deleted_key"]["kvn"].as_str(),
            del["deleted_key"]["id"].as_str()
        ),
        (Some("32"), None)
    );
    let mut args = with(&["gp", "delete-key", "31"]);
    args.extend_from_slice(&auth);
    let e = run(&d, "error", 1, &args);
    assert_eq!(e["error"]["sw"], "6985", "{e}");
}

#[test]
fn apdu_bench_and_errors_print_documents_that_match_their_schemas() {
    let d = scratch("misc");
    let a = run(&d, "apdu", 0, &["apdu", "--sim", "00A4040000"]);
    assert_eq!(a["responses"][0]["sw"], "9000");
    run(&d, "bench", 0, &["bench", "--seconds", "0.02"]);
    // A card refusal: the status word as the card sent it.
    let e = run(&d, "error", 1, &["gp", "delete", "--sim", "F0F0F0F0F0"]);
    assert_eq!(e["error"]["sw"], "6A88", "{e}");
    // An unknown simulator class is named, with the classes there are (not a raw 6A80).
    let e = run(
        &d,
        "error",
        1,
        &[
            "gp",
            "load",
            "--sim",
            "--package",
            "F001020304",
            "--module",
            "F00102030401=no.such.Class",
        ],
    );
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("no.such.Class") && msg.contains("kagi.echo"),
        "{msg}"
    );
    // A security level that is no level is quoted as given, not as "FF".
    let e = run(&d, "error", 2, &["gp", "list", "--sim", "--level", "foo"]);
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("'foo' is not a security level"), "{msg}");
    // A usage error names what is missing, as clap's text does.
    let u = run(&d, "error", 2, &["gp", "info", "--sim-image", "x.img"]);
    assert_eq!(u["error"]["code"], "usage");
    assert!(
        u["error"]["message"].as_str().unwrap().contains("--sim"),
        "the message must name the missing argument: {u}"
    );
}

#[test]
fn jpki_ca_and_eligibility_print_documents_that_match_their_schemas() {
    let d = scratch("jpki");
    run(&d, "ca.init", 0, &["ca", "init", "--dir", "pki"]);
    let img = [
        "--sim",
        "--sim-preset",
        "jpki-demo",
        "--sim-pki-dir",
        "pki",
        "--sim-image",
        "jpki.img",
    ];
    let with = |rest: &[&'static str]| -> Vec<&'static str> {
        let mut v = rest.to_vec();
        v.extend_from_slice(&img);
        v
    };
    let info = run(&d, "jpki.info", 0, &with(&["jpki", "info"]));
    let serial = info["auth_certificate"]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    // notAfter is one year after notBefore for the demo card (365 days).
    let nb = info["auth_certificate"]["not_before"].as_str().unwrap();
    let na = info["auth_certificate"]["not_after"].as_str().unwrap();
    assert!(nb < na, "{nb} < {na}");
    write_private(&d.join("pin.txt"), "1234\n");
    write_private(&d.join("tpin.txt"), "5678\n");
    write_private(&d.join("new.txt"), "4321\n");
    std::fs::write(d.join("doc.txt"), "hello\n").unwrap();
    run(&d, "jpki.pin-status", 0, &with(&["jpki", "pin-status"]));
    run(
        &d,
        "jpki.verify",
        0,
        &with(&["jpki", "verify", "--pin-file", "pin.txt"]),
    );
    let text = run(
        &d,
        "jpki.text",
        0,
        &with(&["jpki", "text", "--pin-file", "tpin.txt"]),
    );
    assert_eq!(text["birth_date"], "20000101");
    run(
        &d,
        "jpki.read-cert",
        0,
        &with(&["jpki", "read-cert", "--which", "auth", "-o", "auth.der"]),
    );
    let s = run(
        &d,
        "jpki.sign",
        0,
        &with(&[
            "jpki",
            "sign",
            "--pin-file",
            "pin.txt",
            "-i",
            "doc.txt",
            "-o",
            "doc.sig",
        ]),
    );
    assert_eq!(s["signature_bytes"], 256);
    run(
        &d,
        "jpki.change-pin",
        0,
        &with(&[
            "jpki",
            "change-pin",
            "--pin-file",
            "pin.txt",
            "--new-pin-file",
            "new.txt",
        ]),
    );
    // A wrong PIN: the error document carries the tries left.
    let e = run(
        &d,
        "error",
        1,
        &with(&["jpki", "verify", "--pin-file", "pin.txt"]),
    );
    assert_eq!(e["error"]["tries_left"], 2, "{e}");
    let read = [
        "eligibility",
        "read",
        "--sim",
        "--sim-image",
        "jpki.img",
        "--ca",
        "pki/auth-ca.crt.pem",
        "--crl",
        "pki/auth-ca.crl.der",
    ];
    let ok = run(&d, "eligibility.read", 0, &read);
    assert_eq!(ok["verdict"], "eligible");
    assert_eq!(ok["not_after"].as_str(), Some(na));
    // The card's public key, taken from its certificate here, certified again by the CA.
    let der = std::fs::read(d.join("auth.der")).unwrap();
    let cert = <x509_cert::Certificate as der::Decode>::from_der(&der).unwrap();
    let spki = der::Encode::to_der(cert.tbs_certificate().subject_public_key_info()).unwrap();
    std::fs::write(d.join("pub.der"), spki).unwrap();
    let issued = run(
        &d,
        "ca.issue",
        0,
        &[
            "ca",
            "issue",
            "--dir",
            "pki",
            "--public-key",
            "pub.der",
            "--serial",
            "1A2B3C4D",
            "-o",
            "again.der",
        ],
    );
    assert_eq!(issued["serial"], "1A2B3C4D");
    std::fs::create_dir_all(d.join("exchange/requests")).unwrap();
    let ex = run(
        &d,
        "ca.exchange",
        0,
        &["ca", "exchange", "--dir", "pki", "--exchange", "exchange"],
    );
    assert_eq!(ex["issued"], 0);
    // Revoked with the serial as jpki info printed it; the next read is "revoked", exit 4,
    // still one document of the same schema.
    let r = run(
        &d,
        "ca.revoke",
        0,
        &["ca", "revoke", "--dir", "pki", &serial],
    );
    assert_eq!(
        r["revoked"].as_str(),
        Some(format!("{serial:0>8}").as_str())
    );
    let revoked = run(&d, "eligibility.read", 4, &read);
    assert_eq!(revoked["verdict"], "revoked");
}

#[test]
fn a_perso_batch_prints_its_summary_as_documented() {
    let d = scratch("perso");
    let ex = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"));
    let arg = |p: &str| ex.join(p).display().to_string();
    let (profile, input, keys) = (
        arg("perso-member.toml"),
        arg("member-records.csv"),
        arg("keys"),
    );
    let batch = |verb: &'static str| -> Vec<String> {
        [
            "perso",
            verb,
            "--profile",
            &profile,
            "--input",
            &input,
            "--sim",
            "2",
            "--out",
            "batch",
            "--insecure-file-keys",
            &keys,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run_v = batch("run");
    let args: Vec<&str> = run_v.iter().map(String::as_str).collect();
    // The example input has two bad records (exit 3, "done with failures"); the ten others
    // are personalised.
    let s = run(&d, "perso.summary", 3, &args);
    assert_eq!(
        (s["done"].as_u64(), s["bad_records"].as_u64()),
        (Some(10), Some(2)),
        "{s}"
    );
    let resume_v = batch("resume");
    let args: Vec<&str> = resume_v.iter().map(String::as_str).collect();
    let again = run(&d, "perso.summary", 3, &args);
    assert_eq!(again["failed"], 0, "{again}");
}

/// Every schema is a draft 2020-12 schema that refuses an empty object and an unknown field:
/// none of them accepts anything.
#[test]
fn every_schema_refuses_what_it_does_not_describe() {
    let mut names = 0;
    for entry in std::fs::read_dir(schema::dir()).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".schema.json"))
        else {
            continue;
        };
        names += 1;
        assert!(
            !schema::errors(name, &serde_json::json!({})).is_empty(),
            "{name} accepts an empty object"
        );
        assert!(
            !schema::errors(
                name,
                &serde_json::json!({"schema_version": 1, "zz_unknown": 1})
            )
            .is_empty(),
            "{name} accepts an unknown field"
        );
    }
    assert!(names >= 25, "only {names} schemas in schemas/");
    // A document with the key check values run together (the old put-key output) is refused.
    assert!(
        !schema::errors(
            "gp.put-key",
            &serde_json::json!({"schema_version": 1, "kvn": "31", "replaced": null, "kcv": "F2A8DFF2A8DFF2A8DF"})
        )
        .is_empty()
    );
    // Times are RFC 3339 text, not Unix seconds.
    assert!(
        !schema::errors(
            "eligibility.read",
            &serde_json::json!({"schema_version": 1, "verdict": "eligible", "reasons": ["x"],
                "commands": 6, "card_micros": 1, "not_after": 1827877364})
        )
        .is_empty()
    );
}

/// The leaf commands of `kagi help`, walked through every level.
fn leaf_commands(path: &[String]) -> Vec<String> {
    let o = Command::new(crate::support::kagi_bin())
        .args(path)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut subs = Vec::new();
    let mut inside = false;
    for line in help.lines() {
        if line.starts_with("Commands:") {
            inside = true;
            continue;
        }
        if inside {
            if line.trim().is_empty() {
                break;
            }
            if let Some(name) = line
                .strip_prefix("  ")
                .and_then(|l| l.split_whitespace().next())
                && !line.starts_with("   ")
                && name != "help"
            {
                subs.push(name.to_string());
            }
        }
    }
    if subs.is_empty() {
        return vec![path.join(" ")];
    }
    subs.iter()
        .flat_map(|s| {
            let mut p = path.to_vec();
            p.push(s.clone());
            leaf_commands(&p)
        })
        .collect()
}

/// The README's table "Commands, JSON schemas and exit codes" lists every command of `kagi
/// help`, names a schema file that exists for every command that prints a document, and
/// every schema file is named there.
#[test]
fn the_readme_table_covers_every_command_and_schema() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme
        .find("### Commands, JSON schemas and exit codes")
        .expect("README section \"### Commands, JSON schemas and exit codes\"");
    let mut listed = BTreeSet::new();
    let mut named = BTreeSet::new();
    for line in readme[start..].lines().skip(1) {
        if line.starts_with('#') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with("`kagi") {
            continue;
        }
        listed.insert(
            cells[1]
                .trim_matches('`')
                .trim_start_matches("kagi ")
                .to_string(),
        );
        for s in cells[2].split(',') {
            let s = s.trim().trim_matches('`');
            if !s.is_empty() && !s.starts_with('—') {
                named.insert(s.to_string());
            }
        }
    }
    let commands: BTreeSet<String> = leaf_commands(&[]).into_iter().collect();
    assert!(commands.len() > 50, "{commands:?}");
    let missing: Vec<_> = commands.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&commands).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "README table: missing {missing:?}, not commands {extra:?}"
    );
    let files: BTreeSet<String> = std::fs::read_dir(schema::dir())
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_suffix(".schema.json").map(str::to_string)
        })
        .collect();
    let unknown: Vec<_> = named.difference(&files).collect();
    let unnamed: Vec<_> = files.difference(&named).filter(|f| *f != "error").collect();
    assert!(
        unknown.is_empty() && unnamed.is_empty(),
        "README names schemas that do not exist: {unknown:?}; schemas it does not name: {unnamed:?}"
    );
}
