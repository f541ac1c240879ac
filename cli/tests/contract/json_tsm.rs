//! The JSON contract of the TSM's commands: `kagi tsm init`, `sim provision`, the operator's
//! and provider's requests, `relay` and `tsm audit` print one document each that matches its
//! published schema in `schemas/`, with times in RFC 3339 and no secret on stdout.

use crate::support::cli::{Scenario, kagi, serve, wait_port};
use crate::support::schema;
use crate::{Running, show};
use std::process::Command;

fn doc(name: &str, c: &mut Command) -> serde_json::Value {
    let o = c.arg("--json").output().unwrap();
    assert!(o.status.success(), "{c:?}: {}", show(&o));
    schema::document(name, &o.stdout)
}

#[test]
fn tsm_commands_print_documents_that_match_their_schemas() {
    let s = Scenario::new("json-tsm", false);
    let dir = &s.dir;
    // `tsm init --json` (a second directory: the scenario's own was made by the text form).
    let init = doc(
        "tsm.init",
        kagi()
            .args(["tsm", "init", "--listen", "127.0.0.1:9", "--dir"])
            .arg(dir.join("tsm2")),
    );
    assert_eq!(init["https"], false);
    assert!(dir.join("tsm2/tsm.toml").exists());
    let _tsm = Running(serve(dir));
    wait_port(s.port);
    let mno = |args: &[&str]| {
        let mut c = kagi();
        c.args(["tsm", "mno", "--config"])
            .arg(dir.join("tsm/mno.toml"))
            .args(args);
        c
    };
    let sp = |args: &[&str]| {
        let mut c = kagi();
        c.args(["tsm", "provider", "--config"])
            .arg(dir.join("tsm/sp.toml"))
            .args(args);
        c
    };
    let sim = doc(
        "sim.provision",
        kagi()
            .args(["sim", "provision", "--serial", "json-phone", "--image"])
            .arg(dir.join("sim.img"))
            .arg("--provider-keys")
            .arg(dir.join("tsm/keys/provider.keys")),
    );
    let iccid = sim["iccid"].as_str().unwrap().to_string();
    let cin = sim["cin"].as_str().unwrap().to_string();
    let card_cert = sim["card_certificate"].as_str().unwrap().to_string();
    let maker_ca = sim["manufacturer_ca"].as_str().unwrap().to_string();
    let ok = doc(
        "tsm.answer",
        &mut mno(&[
            "register-card",
            "--iccid",
            &iccid,
            "--cin",
            &cin,
            "--card-certificate",
            &card_cert,
        ]),
    );
    assert_eq!(ok["answer"], "ok");
    let el = doc("tsm.answer", &mut mno(&["eligibility", "--iccid", &iccid]));
    assert_eq!(el["eligible"], true);
    // The user's application, signed on a simulated My Number card.
    let applied = doc(
        "jpki.apply",
        kagi()
            .args(["jpki", "apply", "--sim", "--sim-preset", "jpki-demo"])
            .arg("--sim-image")
            .arg(dir.join("mynumber.img"))
            .arg("--sim-pki-dir")
            .arg(dir.join("pki"))
            .args(["--iccid", &iccid, "--provider", "sp:kagi-bank"])
            .args(["--contact", "holder@example.jp"])
            .arg("--pin-file")
            .arg(dir.join("sign-password.txt"))
            .arg("--out")
            .arg(dir.join("application.bin")),
    );
    assert_eq!(applied["iccid"], iccid.as_str());
    let issued = doc(
        "tsm.provider.issue",
        sp(&["issue", "--iccid", &iccid, "--ca-dir"])
            .arg(dir.join("pki"))
            .arg("--application")
            .arg(dir.join("application.bin"))
            .args(["--manufacturer-ca", &maker_ca])
            .arg("--pin-file")
            .arg(dir.join("pin.txt"))
            .arg("--password-file")
            .arg(dir.join("pw.txt"))
            .arg("--out")
            .arg(dir.join("issue.json")),
    );
    // The ticket and the access code are in the 0600 file only, never on stdout.
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("issue.json")).unwrap()).unwrap();
    let stdout = issued.to_string();
    for secret in ["ticket", "access_code"] {
        let v = file[secret].as_str().unwrap();
        assert!(!v.is_empty() && !stdout.contains(v), "{secret} on stdout");
    }
    let op = issued["op"].as_str().unwrap().to_string();
    assert_eq!(file["op"].as_str(), Some(op.as_str()));
    std::fs::write(dir.join("ticket.txt"), file["ticket"].as_str().unwrap()).unwrap();
    std::fs::write(dir.join("code.txt"), file["access_code"].as_str().unwrap()).unwrap();
    // A wrong access code in the file: the relay says so (with the tries left) and stops, instead
    // of prompting without a terminal and then blaming a missing code.
    std::fs::write(dir.join("code.txt"), "WRONG-CODE-0000").unwrap();
    let wrong = s
        .relay()
        .args(["--sim", "--sim-image"])
        .arg(dir.join("sim.img"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1), "{}", show(&wrong));
    let e = schema::document("error", &wrong.stdout);
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("not accepted (4 tries left)"), "{msg}");
    std::fs::write(dir.join("code.txt"), file["access_code"].as_str().unwrap()).unwrap();
    let relay = {
        let mut c = s.relay();
        c.args(["--sim", "--sim-image"]).arg(dir.join("sim.img"));
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", show(&o));
        schema::document("relay", &o.stdout)
    };
    assert_eq!(relay["outcome"], "completed");
    let st = doc("tsm.provider.status", &mut sp(&["status", "--op", &op]));
    assert_eq!(st["state"], "completed");
    let rc = doc(
        "tsm.provider.receipt",
        sp(&["receipt", "--issued"]).arg(dir.join("issue.json")),
    );
    assert_eq!(rc["iccid"].as_str(), Some(iccid.as_str()));
    let ck = doc(
        "tsm.provider.check",
        &mut sp(&["check", "--credential", &op]),
    );
    assert_eq!(ck["state"], "active");
    let rv = doc(
        "tsm.answer",
        &mut sp(&["revoke", "--credential", &op, "--reason", "user-request"]),
    );
    assert_eq!(
        (rv["answer"].as_str(), rv["revoked"].as_str()),
        (Some("credential"), Some("user-request"))
    );
    let lost = doc("tsm.answer", &mut mno(&["card-lost", "--iccid", &iccid]));
    assert_eq!(lost["answer"], "ok");
    let trail = doc(
        "tsm.audit",
        kagi()
            .args(["tsm", "audit", "--op", &op, "--database"])
            .arg(dir.join("tsm/tsm.db")),
    );
    let events: Vec<&str> = trail["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["event"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"completed"), "{events:?}");
    // The load generator's report: 3 sessions, one at a time (within the default rate limit).
    let load = doc(
        "tsm.load",
        kagi()
            .args([
                "tsm",
                "load",
                "--sessions",
                "3",
                "--concurrency",
                "1",
                "--sp",
            ])
            .arg(dir.join("tsm/sp.toml"))
            .arg("--mno")
            .arg(dir.join("tsm/mno.toml"))
            .arg("--provider-keys")
            .arg(dir.join("tsm/keys/provider.keys"))
            .arg("--ca-dir")
            .arg(dir.join("pki")),
    );
    assert_eq!(
        (load["sessions"].as_u64(), load["failed"].as_u64()),
        (Some(3), Some(0)),
        "{load}"
    );
}
