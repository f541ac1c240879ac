//! The JPKI issuer's on-card mode across the three services (`[jpki_issuer] key_generation =
//! "on-card"` at the SP-TSM, the default): after the download the holder sets a PIN of their
//! own with `kagi jpki change-pin` and the mailed one; an issuer down at the challenge
//! interrupts the download. The download itself — the key made on the SIM, certified, signing
//! there, in no service's files — is walked step by step by `tests/e2e16`.

use super::support::cli::{Scenario, field, kagi, ok};
use super::support::services::{self, apply_code, mailed_code};

#[test]
fn the_holder_sets_an_own_pin_on_the_key_made_on_the_sim() {
    let s = Scenario::new("three-on-card", false);
    let dir = &s.dir;
    let services = services::start(&s);
    let (op, letter) = services::download(&s, &services.iccid);
    std::fs::write(dir.join("msg.txt"), "made on the SIM").unwrap();
    // The holder sets a PIN of their own on the SIM's applet (the phone talks to it as to a
    // card), with the mailed one: the new PIN signs, the mailed one no longer does.
    let mailed = std::fs::read_to_string(&letter).unwrap().trim().to_string();
    let own = if mailed == "8642" { "8643" } else { "8642" };
    std::fs::write(dir.join("own.pin"), format!("{own}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("own.pin"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    let sign_with = |pin: &std::path::Path| {
        kagi()
            .args(["jpki", "sign", "--sim", "--sim-image"])
            .arg(dir.join("sim.img"))
            .arg("--pin-file")
            .arg(pin)
            .arg("-i")
            .arg(dir.join("msg.txt"))
            .arg("-o")
            .arg(dir.join("msg2.sig"))
            .output()
            .unwrap()
    };
    assert!(sign_with(&letter).status.success(), "the mailed PIN signs");
    ok(kagi()
        .args(["jpki", "change-pin", "--sim", "--sim-image"])
        .arg(dir.join("sim.img"))
        .arg("--pin-file")
        .arg(&letter)
        .arg("--new-pin-file")
        .arg(dir.join("own.pin")));
    assert!(sign_with(&dir.join("own.pin")).status.success());
    assert!(!sign_with(&letter).status.success());
    assert_eq!(services::check(&s, &op)["state"], "active");
}

/// The issuer is down when the download's first session asks for its challenge: the
/// download is interrupted, not failed (no certificate, no PIN letter), and the relay's next
/// session — the issuer back — generates the key and completes.
#[test]
fn an_unreachable_issuer_at_the_challenge_interrupts_the_download() {
    let s = Scenario::new("on-card-down", false);
    let dir = &s.dir;
    let mut services = services::start(&s);
    let iccid = services.iccid.clone();
    let application = s.apply(&iccid);
    assert_eq!(apply_code(&s, &iccid, &application, "issue.json"), None);
    let issued = std::fs::read_to_string(dir.join("issue.json")).unwrap();
    std::fs::write(dir.join("ticket.txt"), field(&issued, "ticket")).unwrap();
    let (_, code) = mailed_code(&dir.join("tsm/outbox"));
    std::fs::write(dir.join("code.txt"), &code).unwrap();
    // The issuer stopped (killed, waited for).
    services.stop_issuer();
    let relay = |capture: &str| {
        let o = s
            .relay()
            .arg("--sim")
            .arg("--sim-image")
            .arg(dir.join("sim.img"))
            .arg("--capture")
            .arg(dir.join(capture))
            .output()
            .unwrap();
        // Its first JSON document says how the session ended (an error document follows
        // when it did not complete).
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let last = serde_json::Deserializer::from_str(&out)
            .into_iter::<serde_json::Value>()
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("no JSON: {out}{}", String::from_utf8_lossy(&o.stderr)));
        (
            last["outcome"].as_str().unwrap_or_default().to_string(),
            out,
        )
    };
    let (outcome, out) = relay("relay1.bin");
    assert_eq!(outcome, "interrupted", "{out}");
    assert_eq!(
        std::fs::read_dir(dir.join("issuer/pin-mailer"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "nothing issued"
    );
    services.restart_issuer(&s, "issuer2.log");
    let (outcome, out) = relay("relay2.bin");
    assert_eq!(outcome, "completed", "{out}");
    let letters = std::fs::read_dir(dir.join("issuer/pin-mailer"))
        .unwrap()
        .count();
    assert_eq!(letters, 1, "one certificate, one PIN letter");
    let status = ok(kagi()
        .args(["--json", "tsm", "provider", "--config"])
        .arg(dir.join("tsm/sp.toml"))
        .args(["check", "--credential", &field(&issued, "op")]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["state"], "active", "{status}");
}
