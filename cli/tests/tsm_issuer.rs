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

mod support;

use std::path::Path;
use std::process::Command;
use support::cli::{Scenario, contains, field, kagi, ok, spawn_logged as spawn, wait_port};

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

/// `kagi --json tsm provider apply`: the refusal code, or `None` when accepted.
fn apply_code(s: &Scenario, iccid: &str, application: &Path, out: &str) -> Option<String> {
    let o = kagi()
        .args(["--json", "tsm", "provider", "--config"])
        .arg(s.dir.join("tsm/sp.toml"))
        .args(["apply", "--iccid", iccid, "--application"])
        .arg(application)
        .arg("--password-file")
        .arg(s.dir.join("pw.txt"))
        .arg("--out")
        .arg(s.dir.join(out))
        .output()
        .unwrap();
    if o.status.success() {
        support::schema::document("tsm.provider.issue", &o.stdout);
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON error ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    Some(v["error"]["code"].as_str().unwrap().to_string())
}

fn check(s: &Scenario, op: &str) -> serde_json::Value {
    let out = ok(kagi()
        .args(["--json", "tsm", "provider", "--config"])
        .arg(s.dir.join("tsm/sp.toml"))
        .args(["check", "--credential", op]));
    serde_json::from_str(&out).unwrap()
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

/// One row of the issuer's database as `a|b` (sqlite3's and psql's unaligned form).
fn issuer_row(dir: &Path, pg: &Option<String>, sql: &str) -> String {
    let o = match pg {
        None => Command::new("sqlite3")
            .arg(dir.join("issuer/jpki-issuer.db"))
            .arg(sql)
            .output(),
        Some(url) => Command::new("psql")
            .args([url.as_str(), "-At", "-F", "|", "-c", sql])
            .output(),
    }
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn three_processes(name: &str, issuer_db: Option<String>) {
    let s = Scenario::new(name, false);
    let dir = &s.dir;
    let (mno_port, issuer_port) = (
        tsm_server::testing::free_port().unwrap(),
        tsm_server::testing::free_port().unwrap(),
    );
    // A SIM as the operator sells it (no provider domain), its key certified by the maker.
    let sim = ok(kagi()
        .args([
            "sim",
            "provision",
            "--json",
            "--no-domain",
            "--serial",
            "three",
        ])
        .arg("--image")
        .arg(dir.join("sim.img"))
        .arg("--manufacturer-ca")
        .arg(dir.join("maker")));
    let iccid = field(&sim, "iccid");

    ok(kagi()
        .args(["mno-tsm", "init", "--dir"])
        .arg(dir.join("mno"))
        .args(["--listen", &format!("127.0.0.1:{mno_port}")])
        .arg("--sp-tsm-key")
        .arg(dir.join("tsm/tsm.pub.pem")));
    let init = ok(kagi()
        .args(["--json", "jpki-issuer", "init", "--dir"])
        .arg(dir.join("issuer"))
        .args(["--listen", &format!("127.0.0.1:{issuer_port}")])
        .arg("--sp-tsm-key")
        .arg(dir.join("tsm/tsm.pub.pem"))
        .arg("--ca-dir")
        .arg(dir.join("pki"))
        .arg("--manufacturer-ca")
        .arg(s.maker_ca()));
    support::schema::document("jpki-issuer.init", init.as_bytes());
    let mut sp_toml = std::fs::read_to_string(dir.join("tsm/tsm.toml")).unwrap();
    sp_toml.push_str(&std::fs::read_to_string(dir.join("mno/sp-tsm-link.toml")).unwrap());
    sp_toml.push_str(&std::fs::read_to_string(dir.join("issuer/sp-tsm-link.toml")).unwrap());
    std::fs::write(dir.join("tsm/tsm.toml"), sp_toml).unwrap();

    let mut issuer = kagi();
    issuer
        .args(["jpki-issuer", "serve", "--config"])
        .arg(dir.join("issuer/jpki-issuer.toml"));
    if let Some(url) = &issuer_db {
        issuer.args(["--database", url]);
    }
    let mut mno = kagi();
    mno.args(["mno-tsm", "serve", "--config"])
        .arg(dir.join("mno/mno-tsm.toml"))
        .arg("--insecure-file-keys")
        .arg(dir.join("mno/keys"));
    let mut sp = kagi();
    sp.args(["sp-tsm", "serve", "--config"])
        .arg(dir.join("tsm/tsm.toml"))
        .arg("--insecure-file-keys")
        .arg(dir.join("tsm/keys"));
    let _issuer = spawn(issuer, &dir.join("issuer.log"));
    let _mno = spawn(mno, &dir.join("mno.log"));
    let _sp = spawn(sp, &dir.join("sp.log"));
    for p in [issuer_port, mno_port, s.port] {
        wait_port(p);
    }
    ok(kagi()
        .args(["tsm", "mno", "--config"])
        .arg(dir.join("mno/operator.toml"))
        .args([
            "register-card",
            "--iccid",
            &iccid,
            "--cin",
            &field(&sim, "cin"),
            "--card-certificate",
            &field(&sim, "card_certificate"),
        ]));

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
    std::fs::write(dir.join("code.txt"), field(&issued, "access_code")).unwrap();
    // The same application again (a new request): the issuer's nonce record refuses it.
    assert_eq!(
        apply_code(&s, &iccid, &application, "again.json").as_deref(),
        Some("application.replayed")
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
    let mailer: Vec<_> = std::fs::read_dir(dir.join("issuer/pin-mailer"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(mailer.len(), 1, "one PIN letter: {mailer:?}");
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
        issuer_row(
            dir,
            &issuer_db,
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
        issuer_row(
            dir,
            &issuer_db,
            &format!("SELECT state, reason FROM links WHERE serial = '{phone_serial}'")
        ),
        "revoked|sign-revoked"
    );
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
    drop(_sp);
    drop(_mno);
    drop(_issuer);
    let ca_key = std::fs::read(dir.join("pki/auth-ca.key.der")).unwrap();
    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("PIN record", [&[0x00, 0x18][..], pin.as_bytes()].concat()),
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
    }
    assert!(searched >= 5, "the databases, logs and capture were there");
    // Nor does the issuer keep the PIN anywhere but the mailer.
    for f in ["issuer/jpki-issuer.db", "issuer.log"] {
        let Ok(bytes) = std::fs::read(dir.join(f)) else {
            assert!(issuer_db.is_some(), "{f} is missing");
            continue;
        };
        assert!(!contains(&bytes, &needles[0].1), "the PIN record is in {f}");
    }
}
