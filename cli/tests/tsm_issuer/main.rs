//! Seed 004 with its three organisations as three processes, each on its own configuration,
//! keys and database: the JPKI issuer (`kagi jpki-issuer`), the provider's SP-TSM and the
//! operator's MNO-TSM. The user applies with the My Number card; the provider passes the
//! application to the SP-TSM, which asks the issuer (⑯⑰): the issuer checks it against the
//! signature CA and its CRL, makes the key and certificate, links it to the signature serial
//! (⑧) and answers key and PIN sealed to the SIM; the relay runs the download through both
//! TSMs; the credential signs on the SIM with the PIN from the issuer's PIN mailer. Refused:
//! a forged application, a replayed one, one from a revoked card — each with its own code.
//! Revoking the card's signature certificate at the CA revokes the phone certificate at the
//! issuer and, on the next status query, at the SP-TSM. Then the SP-TSM's and MNO-TSM's files
//! and the relay capture are searched for the PIN and the user-authentication CA's key.

#[path = "../support/mod.rs"]
mod support;

#[cfg(feature = "pcsc")]
mod as_card;
mod load;
mod on_card;
mod race;
mod smtp;

use std::path::Path;
use std::process::Command;
use support::cli::{Scenario, audit, contains, field, kagi, ok, pin_named};
use support::services::{self, Databases, Setup, apply_code, check, mailed_code};

/// The signature certificate inside an application file, found by its own framing: the file
/// ends with the 256-byte signature after its length (varint 256 = 80 02), and the DER
/// certificate (30 82 LL LL) ends right before.
fn certificate_of(application: &[u8]) -> Vec<u8> {
    let end = application.len() - 258;
    assert_eq!(&application[end..end + 2], &[0x80, 0x02]);
    (0..end)
        .find(|&p| {
            application[p] == 0x30
                && application[p + 1] == 0x82
                && p + 4 + usize::from(u16::from_be_bytes([application[p + 2], application[p + 3]]))
                    == end
        })
        .map(|p| application[p..end].to_vec())
        .expect("a DER certificate before the signature")
}

/// The certificate's serial as openssl prints it (upper-case hex of whole bytes), without
/// zero bytes in front (kagi prints serials that way).
fn openssl_serial(dir: &Path, der: &[u8]) -> String {
    let p = dir.join("sign-cert.der");
    std::fs::write(&p, der).unwrap();
    let o = Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-serial", "-in"])
        .arg(&p)
        .output()
        .unwrap();
    let serial = String::from_utf8_lossy(&o.stdout)
        .trim()
        .strip_prefix("serial=")
        .unwrap()
        .to_string();
    let mut s = serial.as_str();
    while s.len() > 2 && s.starts_with("00") {
        s = &s[2..];
    }
    s.to_string()
}

/// The three services with the issuer making the keys (the seed's mode, ⑦⑯⑰), the SIM
/// `three`, the databases `db`.
fn start_services(s: &Scenario, db: Databases) -> services::Services {
    services::start_with(
        s,
        Setup {
            db,
            key_generation: Some("issuer"),
            ..Default::default()
        },
    )
}

#[test]
fn three_services_issue_link_and_revoke_on_sqlite() {
    three_processes("three-proc", None);
}

/// The same with the JPKI issuer's state on PostgreSQL (the two TSMs on SQLite).
#[test]
fn three_services_with_the_issuer_on_postgres() {
    let pg = tsm_server::testing::PrivatePostgres::start("three-issuer").unwrap();
    three_processes("three-proc-pg", Some(pg.url.clone()));
}

fn three_processes(name: &str, issuer_db: Option<String>) {
    let s = Scenario::new(name, false);
    let dir = &s.dir;
    let services = start_services(
        &s,
        Databases {
            issuer: issuer_db.clone(),
            ..Default::default()
        },
    );
    let iccid = services.iccid.clone();

    // ②⑤⑯⑰: the application through the SP-TSM to the issuer.
    let application = s.apply(&iccid);
    let app_bytes = std::fs::read(&application).unwrap();
    let sign_serial = openssl_serial(dir, &certificate_of(&app_bytes));
    // A forged one first (one bit of the signature flipped): refused by the issuer.
    let mut forged = app_bytes.clone();
    *forged.last_mut().unwrap() ^= 1;
    std::fs::write(dir.join("forged.bin"), &forged).unwrap();
    assert_eq!(
        apply_code(&s, &iccid, &dir.join("forged.bin"), "f.json").as_deref(),
        Some("application.bad-signature")
    );
    assert_eq!(apply_code(&s, &iccid, &application, "issue.json"), None);
    let issued = std::fs::read_to_string(dir.join("issue.json")).unwrap();
    let op = field(&issued, "op");
    std::fs::write(dir.join("ticket.txt"), field(&issued, "ticket")).unwrap();
    // ⑪ the access code went to the user's mail address (the SP-TSM's maildir outbox), not
    // to the provider.
    let (mail, code) = mailed_code(&dir.join("tsm/outbox"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&issued).unwrap()["access_code"],
        serde_json::Value::Null
    );
    assert!(
        !issued.contains(&code),
        "the provider's answer has the code"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&mail).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", mail.display());
    }
    std::fs::write(dir.join("code.txt"), &code).unwrap();
    assert!(audit(dir, &op).contains("code-sent"), "{}", audit(dir, &op));
    // The same application again (a new request): the issuer's nonce record refuses it.
    assert_eq!(
        apply_code(&s, &iccid, &application, "again.json").as_deref(),
        Some("application.replayed")
    );
    // A fresh application while the first download still waits: the issuer issues, the
    // SP-TSM refuses (one operation per SIM at a time) and withdraws that certificate at the
    // issuer at once — the one the user will download stays active.
    let second = s.apply_with(
        "mynumber.img",
        "pki",
        &iccid,
        "sp:kagi-bank",
        "second.bin",
        &[],
    );
    assert!(second.status.success());
    assert_eq!(
        apply_code(&s, &iccid, &dir.join("second.bin"), "second.json").as_deref(),
        Some("business.in-progress")
    );
    let links = |state: &str| {
        services.issuer_row(
            dir,
            &format!(
                "SELECT count(*) FROM links WHERE sign_serial = '{sign_serial}' AND state = '{state}'"
            ),
        )
    };
    assert_eq!(links("active"), "1");
    assert_eq!(links("revoked"), "1");
    assert_eq!(
        services.issuer_row(
            dir,
            &format!(
                "SELECT reason FROM links WHERE sign_serial = '{sign_serial}' AND state = 'revoked'"
            )
        ),
        "withdrawn"
    );
    let withdrawn = services.issuer_row(
        dir,
        "SELECT actor, detail FROM audit WHERE event = 'withdrawn'",
    );
    assert!(
        withdrawn.starts_with("tsm:kagi|phone ")
            && withdrawn.contains(&format!(
                " sign {sign_serial}: refused: business.in-progress"
            )),
        "{withdrawn}"
    );

    // ⑬⑭⑮⑱ through both TSMs.
    let out = ok(s
        .relay()
        .arg("--sim")
        .arg("--sim-image")
        .arg(dir.join("sim.img"))
        .arg("--capture")
        .arg(dir.join("relay.bin")));
    assert_eq!(field(&out, "outcome"), "completed", "{out}");
    // The PIN came to the holder by the issuer's mailer; the credential signs with it.
    // (Two letters: the withdrawn certificate had one too.)
    let letters = std::fs::read_dir(dir.join("issuer/pin-mailer"))
        .unwrap()
        .count();
    assert_eq!(letters, 2, "a PIN letter per certificate");
    let active = services.issuer_row(
        dir,
        &format!(
            "SELECT serial FROM links WHERE sign_serial = '{sign_serial}' AND state = 'active'"
        ),
    );
    let mailer = [dir.join(format!("issuer/pin-mailer/{active}.pin"))];
    let pin = std::fs::read_to_string(&mailer[0])
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(pin.len(), 4);
    std::fs::write(dir.join("msg.txt"), "three services").unwrap();
    ok(kagi()
        .args(["jpki", "sign", "--sim", "--sim-image"])
        .arg(dir.join("sim.img"))
        .arg("--pin-file")
        .arg(&mailer[0])
        .arg("-i")
        .arg(dir.join("msg.txt"))
        .arg("-o")
        .arg(dir.join("msg.sig")));

    // ⑧ the link, at the SP-TSM and in the issuer's own table.
    let status = check(&s, &op);
    assert_eq!(status["state"], "active", "{status}");
    assert_eq!(status["my_number_sign_serial"], sign_serial.as_str());
    let phone_serial = status["serial"].as_str().unwrap().to_string();
    assert_eq!(
        services.issuer_row(
            dir,
            &format!("SELECT sign_serial, state FROM links WHERE serial = '{phone_serial}'")
        ),
        format!("{sign_serial}|active")
    );
    assert!(mailer[0].ends_with(format!("{phone_serial}.pin")));

    // The card's signature certificate revoked at the CA (its CRL): the issuer revokes the
    // linked phone certificate, the SP-TSM learns it at the next status query.
    ok(kagi()
        .args(["ca", "revoke", "--kind", "sign", "--dir"])
        .arg(dir.join("pki"))
        .arg(&sign_serial));
    let status = check(&s, &op);
    assert_eq!(status["state"], "revoked", "{status}");
    assert_eq!(status["revoked"], "sign-revoked", "{status}");
    assert_eq!(
        services.issuer_row(
            dir,
            &format!("SELECT state, reason FROM links WHERE serial = '{phone_serial}'")
        ),
        "revoked|sign-revoked"
    );
    // The issuer's audit trail about this card: both issuances, the withdrawal and the
    // revocation — nothing else's; and nothing from a time still to come.
    let issuer_audit = |extra: &[&str]| {
        let mut c = kagi();
        c.args(["--json", "jpki-issuer", "audit", "--config"])
            .arg(dir.join("issuer/jpki-issuer.toml"))
            .args(extra);
        if let Some(url) = &issuer_db {
            c.args(["--database", url]);
        }
        let out = ok(&mut c);
        support::schema::document("jpki-issuer.audit", out.as_bytes());
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["audit"]
            .as_array()
            .unwrap()
            .clone()
    };
    let trail = issuer_audit(&["--sign-serial", &sign_serial]);
    let events: Vec<&str> = trail.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        ["issued", "issued", "withdrawn", "sign-revoked"],
        "{trail:?}"
    );
    assert!(
        trail
            .iter()
            .all(|e| e["sign_serial"] == sign_serial.as_str())
    );
    assert!(
        trail
            .iter()
            .any(|e| e["event"] == "issued" && e["phone_serial"] == phone_serial.as_str())
    );
    assert_eq!(trail[3]["actor"], "sign-ca");
    assert!(issuer_audit(&["--sign-serial", "7FFFFFFF"]).is_empty());
    let later = (std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    assert!(issuer_audit(&["--since", &later]).is_empty());
    assert_eq!(issuer_audit(&["--since", "0"]).len(), 4);

    // A fresh application from the revoked card: refused.
    let fresh = s.apply_with(
        "mynumber.img",
        "pki",
        &iccid,
        "sp:kagi-bank",
        "fresh.bin",
        &[],
    );
    assert!(fresh.status.success());
    assert_eq!(
        apply_code(&s, &iccid, &dir.join("fresh.bin"), "f2.json").as_deref(),
        Some("application.revoked")
    );

    // What the SP-TSM, the MNO-TSM and the relay must not hold.
    drop(services);
    // The access code is in no log or database (it rests sealed in the SP-TSM's record).
    for f in [
        "sp.log",
        "tsm/tsm.db",
        "tsm/tsm.db-wal",
        "mno.log",
        "issuer.log",
    ] {
        let Ok(bytes) = std::fs::read(dir.join(f)) else {
            continue;
        };
        assert!(
            !contains(&bytes, code.as_bytes()),
            "the access code is in {f}"
        );
    }
    let ca_key = std::fs::read(dir.join("pki/auth-ca.key.der")).unwrap();
    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("UA CA key", ca_key[ca_key.len() - 64..].to_vec()),
        (
            "UA CA key (hex)",
            hex::encode(&ca_key[ca_key.len() - 64..]).into_bytes(),
        ),
    ];
    let mut searched = 0;
    for f in [
        "tsm/tsm.db",
        "tsm/tsm.db-wal",
        "sp.log",
        "mno/mno-tsm.db",
        "mno/mno-tsm.db-wal",
        "mno.log",
        "relay.bin",
    ] {
        let Ok(bytes) = std::fs::read(dir.join(f)) else {
            continue;
        };
        searched += 1;
        for (what, needle) in &needles {
            assert!(!contains(&bytes, needle), "the {what} is in {f}");
        }
        assert!(!pin_named(&bytes, &pin), "the PIN is named in {f}");
    }
    assert!(searched >= 5, "the databases, logs and capture were there");
    // The PIN (four digits: a bare search would find timestamps) travels sealed to the
    // applet; in clear it would be named as a PIN — as the search finds it here.
    assert!(pin_named(format!("pin = \"{pin}\"").as_bytes(), &pin));
    // Nor does the issuer keep the PIN anywhere but the mailer.
    for f in ["issuer/jpki-issuer.db", "issuer.log"] {
        let Ok(bytes) = std::fs::read(dir.join(f)) else {
            assert!(issuer_db.is_some(), "{f} is missing");
            continue;
        };
        assert!(!pin_named(&bytes, &pin), "the PIN is named in {f}");
    }
}
