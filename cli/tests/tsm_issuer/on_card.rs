//! The JPKI issuer's on-card mode across the three services (`[jpki_issuer] key_generation =
//! "on-card"` at the SP-TSM): the provider's application is accepted without a key, the
//! relay's download has the SIM's JPKI applet generate the key against the issuer's
//! challenge, the issuer checks the proof and certifies that key, and the next session writes
//! the certificate and the sealed PIN. The phone's key signs on the SIM; openssl verifies the
//! signature with the public key of the certificate read from the SIM. The holder then sets a
//! PIN of their own with `kagi jpki change-pin` and the mailed one. The private key — read
//! out of the SIM image — is in no database, log or relay capture of any service.

use super::support::cli::{Scenario, contains, field, kagi, ok};
use super::support::services::{self, apply_code, mailed_code};
use std::process::Command;

#[test]
fn the_key_made_on_the_sim_through_three_services() {
    let s = Scenario::new("three-on-card", false);
    let dir = &s.dir;
    let services = services::start(&s);
    let iccid = services.iccid.clone();
    let application = s.apply(&iccid);
    assert_eq!(apply_code(&s, &iccid, &application, "issue.json"), None);
    let issued = std::fs::read_to_string(dir.join("issue.json")).unwrap();
    std::fs::write(dir.join("ticket.txt"), field(&issued, "ticket")).unwrap();
    let (_, code) = mailed_code(&dir.join("tsm/outbox"));
    std::fs::write(dir.join("code.txt"), &code).unwrap();
    // Nothing was issued yet: the key is not made.
    assert_eq!(
        std::fs::read_dir(dir.join("issuer/pin-mailer"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );

    let out = ok(s
        .relay()
        .arg("--sim")
        .arg("--sim-image")
        .arg(dir.join("sim.img"))
        .arg("--capture")
        .arg(dir.join("relay.bin")));
    assert_eq!(field(&out, "outcome"), "completed", "{out}");
    let letters: Vec<_> = std::fs::read_dir(dir.join("issuer/pin-mailer"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(letters.len(), 1, "one certificate, one PIN letter");

    // The certificate on the SIM; its key signs there; openssl verifies.
    ok(kagi()
        .args(["jpki", "read-cert", "--sim", "--sim-image"])
        .arg(dir.join("sim.img"))
        .args(["--cert", "auth", "-o"])
        .arg(dir.join("auth.der")));
    std::fs::write(dir.join("msg.txt"), "made on the SIM").unwrap();
    ok(kagi()
        .args(["jpki", "sign", "--sim", "--sim-image"])
        .arg(dir.join("sim.img"))
        .arg("--pin-file")
        .arg(&letters[0])
        .arg("-i")
        .arg(dir.join("msg.txt"))
        .arg("-o")
        .arg(dir.join("msg.sig")));
    let raw = std::fs::read(dir.join("msg.sig")).unwrap();
    let der_sig = p256::ecdsa::Signature::from_slice(&raw).unwrap().to_der();
    std::fs::write(dir.join("msg.sig.der"), der_sig.as_bytes()).unwrap();
    let pubkey = Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-pubkey", "-in"])
        .arg(dir.join("auth.der"))
        .output()
        .unwrap();
    assert!(pubkey.status.success());
    std::fs::write(dir.join("auth.pub.pem"), &pubkey.stdout).unwrap();
    let v = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(dir.join("auth.pub.pem"))
        .arg("-signature")
        .arg(dir.join("msg.sig.der"))
        .arg(dir.join("msg.txt"))
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    // The holder sets a PIN of their own on the SIM's applet (the phone talks to it as to a
    // card), with the mailed one: the new PIN signs, the mailed one no longer does.
    let mailed = std::fs::read_to_string(&letters[0])
        .unwrap()
        .trim()
        .to_string();
    let own = if mailed == "8642" { "8643" } else { "8642" };
    std::fs::write(dir.join("own.pin"), format!("{own}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("own.pin"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    ok(kagi()
        .args(["jpki", "change-pin", "--sim", "--sim-image"])
        .arg(dir.join("sim.img"))
        .arg("--pin-file")
        .arg(&letters[0])
        .arg("--new-pin-file")
        .arg(dir.join("own.pin")));
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
    assert!(sign_with(&dir.join("own.pin")).status.success());
    assert!(!sign_with(&letters[0]).status.success());
    let op = field(&issued, "op");
    let status: serde_json::Value = serde_json::from_str(&ok(kagi()
        .args(["--json", "tsm", "provider", "--config"])
        .arg(dir.join("tsm/sp.toml"))
        .args(["check", "--credential", &op])))
    .unwrap();
    assert_eq!(status["state"], "active", "{status}");

    // The private key is on the SIM only.
    let key = services::phone_key_in_image(&dir.join("sim.img"));
    drop(services);
    let mut searched = 0;
    for f in [
        "tsm/tsm.db",
        "tsm/tsm.db-wal",
        "sp.log",
        "mno/mno-tsm.db",
        "mno/mno-tsm.db-wal",
        "mno.log",
        "issuer/jpki-issuer.db",
        "issuer/jpki-issuer.db-wal",
        "issuer.log",
        "relay.bin",
    ] {
        let Ok(bytes) = std::fs::read(dir.join(f)) else {
            continue;
        };
        searched += 1;
        assert!(!contains(&bytes, &key), "the phone's private key is in {f}");
        assert!(
            !contains(&bytes, hex::encode(&key).as_bytes()),
            "the phone's private key (hex) is in {f}"
        );
    }
    assert!(searched >= 7, "the databases, logs and capture were there");
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
