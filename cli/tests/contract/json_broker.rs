//! The JSON contract of the broker's commands: `kagi broker init`, `new-kek`, the
//! administrator's requests, a holder's `login`, `verify-records` and `import` print one
//! document each that matches its published schema in `schemas/` (development file KEKs here;
//! the HSM path prints the same documents, see broker_cli.rs).

use crate::support::schema;
use crate::{Running, show};
use std::path::Path;
use std::process::{Command, Stdio};

fn kagi(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(crate::support::kagi_bin());
    c.arg("--json").args(args).current_dir(dir);
    c
}

fn doc(dir: &Path, name: &str, args: &[&str]) -> serde_json::Value {
    let o = kagi(dir, args).output().unwrap();
    assert!(o.status.success(), "kagi {args:?}: {}", show(&o));
    schema::document(name, &o.stdout)
}

#[test]
fn broker_commands_print_documents_that_match_their_schemas() {
    let dir = crate::scratch("json-broker");
    let d = dir.as_path();
    let port = kagi_db::testing::free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    doc(d, "ca.init", &["ca", "init", "--dir", "pki"]);
    let init = doc(
        d,
        "broker.init",
        &[
            "broker",
            "init",
            "--dir",
            "broker",
            "--ca-dir",
            "pki",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
    );
    assert_eq!(init["keks"], "files");
    let hsm_init = doc(
        d,
        "broker.init",
        &[
            "broker",
            "init",
            "--dir",
            "broker-hsm",
            "--ca-dir",
            "pki",
            "--hsm-keks",
        ],
    );
    // With KEKs in an HSM, the next step names the HSM, not an empty key folder.
    let next = hsm_init["next"].as_str().unwrap();
    assert!(
        next.contains("--hsm-module") && !next.contains("--insecure-file-keys"),
        "{next}"
    );
    let kek = doc(
        d,
        "broker.new-kek",
        &[
            "broker",
            "new-kek",
            "--id",
            "k2",
            "--insecure-file-keys",
            "broker/keys",
        ],
    );
    assert_eq!(kek["store"], "files");
    let server = Command::new(crate::support::kagi_bin())
        .args([
            "broker",
            "serve",
            "--config",
            "broker/broker.toml",
            "--insecure-file-keys",
            "broker/keys",
        ])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Running(server);
    crate::support::cli::wait_port(port);
    let admin = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["broker", "admin", "--config", "broker/admin.toml"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(args.iter().map(|s| s.to_string()));
        v
    };
    let run_admin = |name: &str, args: &[&str]| {
        let a = admin(args);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        doc(d, name, &refs)
    };
    run_admin(
        "broker.admin",
        &["register-service", "--id", "svc-mac", "--method", "mac"],
    );
    // A card: the JPKI demo card issued by this CA.
    doc(
        d,
        "jpki.read-cert",
        &[
            "jpki",
            "read-cert",
            "--sim",
            "--sim-preset",
            "jpki-demo",
            "--sim-pki-dir",
            "pki",
            "--sim-image",
            "jpki.img",
            "--which",
            "auth",
            "-o",
            "auth.der",
        ],
    );
    let card = run_admin(
        "broker.admin",
        &["enrol-card", "--cert", "auth.der", "--holder", "holder-1"],
    );
    let card = card["card"].as_str().unwrap().to_string();
    let cred = run_admin(
        "broker.admin.credential",
        &[
            "enrol",
            "--card",
            &card,
            "--service",
            "svc-mac",
            "--out",
            "svc-mac.key",
        ],
    );
    assert_eq!(cred["version"], 1);
    std::fs::write(d.join("pin.txt"), "1234\n").unwrap();
    let login = doc(
        d,
        "broker.login",
        &[
            "broker",
            "login",
            "--broker",
            &url,
            "--service",
            "svc-mac",
            "--challenge",
            "AAECAwQFBgcICQoLDA0ODw",
            "--consent",
            "--audit",
            "--sim",
            "--sim-image",
            "jpki.img",
            "--pin-file",
            "pin.txt",
        ],
    );
    assert!(login["mac"].is_string(), "{login}");
    assert!(!login["audit"].as_array().unwrap().is_empty(), "{login}");
    let rot = run_admin("broker.admin.rotation", &["rotate-kek", "--to", "k2"]);
    assert_eq!(rot["kek"], "k2");
    let trail = run_admin("broker.audit", &["audit", "--card", &card]);
    assert!(!trail["audit"].as_array().unwrap().is_empty());
    run_admin("broker.admin", &["revoke", "--card", &card]);
    drop(server);
    let verified = doc(
        d,
        "broker.verify-records",
        &[
            "broker",
            "verify-records",
            "--config",
            "broker/broker.toml",
            "--insecure-file-keys",
            "broker/keys",
        ],
    );
    assert_eq!(verified["failed"], serde_json::json!([]));
    // The operator's backup drill: an online backup, a restore into a fresh database, every
    // record opens there.
    let backup = doc(
        d,
        "broker.backup",
        &[
            "broker",
            "backup",
            "--config",
            "broker/broker.toml",
            "--out",
            "bk",
        ],
    );
    assert_eq!(backup["shards"].as_array().unwrap().len(), 1);
    let file = d
        .join("bk")
        .join(backup["shards"][0]["file"].as_str().unwrap());
    assert_eq!(
        backup["shards"][0]["sha256"].as_str().unwrap(),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            std::fs::read(&file).unwrap()
        ))
    );
    let restored = doc(
        d,
        "broker.restore",
        &[
            "broker",
            "restore",
            "--from",
            "bk",
            "--database",
            "restored.db",
        ],
    );
    assert_eq!(restored["restored"][0]["shard"], 0);
    let again = doc(
        d,
        "broker.verify-records",
        &[
            "broker",
            "verify-records",
            "--config",
            "broker/broker.toml",
            "--insecure-file-keys",
            "broker/keys",
            "--database",
            "restored.db",
        ],
    );
    assert_eq!(again["failed"], serde_json::json!([]));
    assert_eq!(again["records"], verified["records"]);
    // A restore never overwrites: the same target again fails, and says so.
    let o = kagi(
        d,
        &[
            "broker",
            "restore",
            "--from",
            "bk",
            "--database",
            "restored.db",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(show(&o).contains("never overwrites"), "{}", show(&o));
    // A damaged backup file is refused before anything is written.
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let o = kagi(
        d,
        &[
            "broker",
            "restore",
            "--from",
            "bk",
            "--database",
            "other.db",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(show(&o).contains("damaged"), "{}", show(&o));
    assert!(!d.join("other.db").exists());
    std::fs::write(d.join("cards.txt"), "IMPORTED-1\nIMPORTED-2\n").unwrap();
    let imported = doc(
        d,
        "broker.import",
        &[
            "broker",
            "import",
            "--config",
            "broker/broker.toml",
            "--insecure-file-keys",
            "broker/keys",
            "--cards-file",
            "cards.txt",
            "--service",
            "svc-mac",
        ],
    );
    assert_eq!(imported["cards"], 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn broker_scale_prints_its_report_as_documented() {
    let dir = crate::scratch("json-broker-scale");
    let r = doc(
        &dir,
        "broker.scale",
        &[
            "broker",
            "scale",
            "--dir",
            "run",
            "--cards",
            "20",
            "--services",
            "3",
            "--acts",
            "30",
            "--logins",
            "4",
            "--concurrency",
            "2",
            "--insecure-file-keys",
        ],
    );
    // 20 cards × 3 services; every credential re-wrapped by the rotation, none left.
    assert_eq!(
        (
            r["credentials"].as_u64(),
            r["rotation_rewrapped"].as_u64(),
            r["rotation_remaining"].as_u64(),
            r["logins"].as_u64()
        ),
        (Some(60), Some(60), Some(0), Some(4)),
        "{r}"
    );
    assert!(!dir.join("run").exists(), "the work directory is removed");
    let _ = std::fs::remove_dir_all(&dir);
}
