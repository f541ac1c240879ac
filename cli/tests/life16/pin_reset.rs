//! A PIN reset only after a fresh signature with the My Number card: the holder signs a
//! pin-reset application (`kagi jpki apply --kind pin-reset`), the provider passes it on, the
//! JPKI issuer checks it against the card the phone certificate is linked to and makes the
//! PIN (the holder's letter), sealed to the SIM; the access code is mailed, the relay writes
//! the PIN and the credential signs with it. Refused: a PIN reset without a signature, an
//! issue application, a stale one, another card's, a replayed one — each with its own code.

use crate::support::cli::{Scenario, field, kagi, ok};
use crate::support::services;
use std::path::Path;

/// `kagi --json tsm provider apply-pin-reset`: the refusal code, or `None` when accepted.
fn reset_code(s: &Scenario, op: &str, application: &Path) -> Option<String> {
    let o = kagi()
        .args(["--json", "tsm", "provider", "--config"])
        .arg(s.dir.join("tsm/sp.toml"))
        .args(["apply-pin-reset", "--credential", op, "--application"])
        .arg(application)
        .arg("--password-file")
        .arg(s.dir.join("pw.txt"))
        .arg("--out")
        .arg(s.dir.join("reset.json"))
        .output()
        .unwrap();
    if o.status.success() {
        return None;
    }
    Some(super::support::services::error_code(&o))
}

/// A pin-reset application for the SIM signed on the simulated card `card`.
fn pin_reset(
    s: &Scenario,
    card: &str,
    iccid: &str,
    out: &str,
    extra: &[&str],
) -> std::path::PathBuf {
    let mut args = vec!["--kind", "pin-reset"];
    args.extend(extra);
    let o = s.apply_with(card, "pki", iccid, "sp:kagi-bank", out, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    s.dir.join(out)
}

#[test]
fn a_pin_reset_needs_a_fresh_signature_with_the_my_number_card() {
    let s = Scenario::new("life16-pin", false);
    let dir = &s.dir;
    let services = services::start_with(
        &s,
        services::Setup {
            serial: "life",
            ..Default::default()
        },
    );
    let iccid = services.iccid.clone();
    let (op, letter) = services::download(&s, &iccid);

    // A PIN reset without the holder's signature is not taken.
    let o = kagi()
        .args(["--json", "tsm", "provider", "--config"])
        .arg(dir.join("tsm/sp.toml"))
        .args(["reset-pin", "--credential", &op, "--manufacturer-ca"])
        .arg(s.maker_ca())
        .arg("--pin-file")
        .arg(dir.join("pin.txt"))
        .arg("--password-file")
        .arg(dir.join("pw.txt"))
        .arg("--out")
        .arg(dir.join("plain.json"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    // The TSM's own code, not a generic one (a refused grant kept only its words before).
    assert_eq!(
        services::error_code(&o),
        "business.pin-reset-needs-signature"
    );
    // The issue application is no pin-reset one; a stale one and another card's are refused.
    assert_eq!(
        reset_code(&s, &op, &dir.join("application.bin")).as_deref(),
        Some("application.bad-signature")
    );
    let hour_ago = (std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let stale = pin_reset(
        &s,
        "mynumber.img",
        &iccid,
        "stale.bin",
        &["--at-unix", &hour_ago],
    );
    assert_eq!(
        reset_code(&s, &op, &stale).as_deref(),
        Some("application.stale")
    );
    let other = pin_reset(&s, "other-card.img", &iccid, "other.bin", &[]);
    assert_eq!(
        reset_code(&s, &op, &other).as_deref(),
        Some("application.other-card")
    );
    let old_pin = std::fs::read_to_string(&letter).unwrap();

    // The fresh one: the issuer's new PIN goes to the SIM through the relay.
    let fresh = pin_reset(&s, "mynumber.img", &iccid, "pin-reset.bin", &[]);
    assert_eq!(reset_code(&s, &op, &fresh), None);
    let reset = std::fs::read_to_string(dir.join("reset.json")).unwrap();
    std::fs::write(dir.join("ticket.txt"), field(&reset, "ticket")).unwrap();
    std::fs::write(
        dir.join("code.txt"),
        services::newest_code(&dir.join("tsm/outbox")),
    )
    .unwrap();
    let out = ok(s
        .relay()
        .arg("--sim")
        .arg("--sim-image")
        .arg(dir.join("sim.img")));
    assert_eq!(field(&out, "outcome"), "completed", "{out}");
    let new_pin = std::fs::read_to_string(&letter).unwrap();
    std::fs::write(dir.join("msg.txt"), "after the reset").unwrap();
    let sign = |pin: &Path| {
        kagi()
            .args(["jpki", "sign", "--sim", "--sim-image"])
            .arg(dir.join("sim.img"))
            .arg("--pin-file")
            .arg(pin)
            .arg("-i")
            .arg(dir.join("msg.txt"))
            .arg("-o")
            .arg(dir.join("msg.sig"))
            .output()
            .unwrap()
    };
    assert!(sign(&letter).status.success(), "the new PIN signs");
    if new_pin != old_pin {
        std::fs::write(dir.join("old.pin"), &old_pin).unwrap();
        assert!(
            !sign(&dir.join("old.pin")).status.success(),
            "the old PIN is gone"
        );
    }
    // The same application again: a replay.
    assert_eq!(
        reset_code(&s, &op, &fresh).as_deref(),
        Some("application.replayed")
    );
    let trail = services.issuer_row(dir, "SELECT event FROM audit WHERE event = 'pin-reset'");
    assert_eq!(trail, "pin-reset");
}
