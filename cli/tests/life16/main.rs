//! Issue #16's lifecycle across the three organisations, with every service a process of
//! its own: linked revocation reaching the relying parties — the JPKI issuer's CRL of the
//! phone certificates (signed by the user-authentication CA) read by `kagi eligibility read`
//! on the SIM and by the broker's card logins with the SIM's key (here); a lost or changed
//! SIM pushed from the MNO-TSM to the SP-TSM and on to the issuer (`notices`); suspension
//! and resumption recorded at the issuer (`suspension`); a PIN reset only on a fresh
//! signature with the My Number card (`pin_reset`).

#[path = "../support/mod.rs"]
mod support;

mod notices;
mod pin_reset;
mod suspension;

use std::path::Path;
use std::process::{Command, Output};
use support::cli::{Scenario, kagi, ok};
use support::services;

/// What openssl makes of a DER CRL: whether it verifies with `ca` (PEM), and its entries as
/// (serial, reason) in openssl's words — computed without kagi.
fn openssl_crl(crl: &Path, ca: &Path) -> (bool, Vec<(String, String)>) {
    let o = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(crl)
        .arg("-CAfile")
        .arg(ca)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let verified = String::from_utf8_lossy(&o.stderr).contains("verify OK");
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut lines = text.lines().map(str::trim).peekable();
    while let Some(l) = lines.next() {
        if let Some(serial) = l.strip_prefix("Serial Number: ") {
            entries.push((serial.to_string(), String::new()));
        } else if l.starts_with("X509v3 CRL Reason Code") {
            let reason = lines.next().unwrap_or_default().to_string();
            if let Some(last) = entries.last_mut() {
                last.1 = reason;
            }
        }
    }
    (verified, entries)
}

/// openssl's serial of a DER certificate, without zero bytes in front (as kagi prints it).
fn openssl_serial(der: &Path) -> String {
    let o = Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-serial", "-in"])
        .arg(der)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let mut s = text.trim().strip_prefix("serial=").unwrap().to_string();
    while s.len() > 2 && s.starts_with("00") {
        s.drain(..2);
    }
    s
}

/// `kagi --json eligibility read` on the SIM against the UA CA and `crls`.
fn eligibility(s: &Scenario, crls: &[&Path]) -> Output {
    let mut c = kagi();
    c.args(["--json", "eligibility", "read", "--sim", "--sim-image"])
        .arg(s.dir.join("sim.img"))
        .arg("--ca")
        .arg(s.dir.join("pki/auth-ca.crt.der"));
    for crl in crls {
        c.arg("--crl").arg(crl);
    }
    c.output().unwrap()
}

/// A broker of its own (file KEKs) whose card trust is the UA CA, its `kagi ca` revocation
/// files, the issuer's CRL and `extra.crl.der` (absent unless a test writes it).
struct Broker {
    port: u16,
    _running: support::cli::Killed,
}

fn start_broker(s: &Scenario) -> Broker {
    let dir = &s.dir;
    let port = tsm_server::testing::free_port().unwrap();
    ok(kagi()
        .args(["broker", "init", "--dir"])
        .arg(dir.join("broker"))
        .arg("--ca-dir")
        .arg(dir.join("pki"))
        .args(["--listen", &format!("127.0.0.1:{port}")]));
    let conf = dir.join("broker/broker.toml");
    let text = std::fs::read_to_string(&conf).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("revocation = ["))
        .unwrap()
        .to_string();
    let ours = line.replace(
        "]",
        &format!(
            ", \"{}\", \"{}\"]",
            dir.join("issuer/ua-crl.der").display(),
            dir.join("broker/extra.crl.der").display()
        ),
    );
    std::fs::write(&conf, text.replace(&line, &ours)).unwrap();
    let mut serve = kagi();
    serve
        .args(["broker", "serve", "--config"])
        .arg(&conf)
        .arg("--insecure-file-keys")
        .arg(dir.join("broker/keys"));
    let running = support::cli::spawn_logged(serve, &dir.join("broker.log"));
    support::cli::wait_port(port);
    Broker {
        port,
        _running: running,
    }
}

fn broker_admin(s: &Scenario, args: &[&str]) -> String {
    ok(kagi()
        .args(["broker", "admin", "--config"])
        .arg(s.dir.join("broker/admin.toml"))
        .args(args))
}

/// `kagi broker login` at service `svc` with the SIM's key (PIN from the issuer's letter).
fn broker_login(s: &Scenario, b: &Broker, pin_letter: &Path) -> Output {
    kagi()
        .args(["--json", "broker", "login", "--consent", "--service", "svc"])
        .args(["--broker", &format!("http://127.0.0.1:{}", b.port)])
        .args(["--challenge", "Y2hhbGxlbmdl", "--sim", "--sim-image"])
        .arg(s.dir.join("sim.img"))
        .arg("--pin-file")
        .arg(pin_letter)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn linked_revocation_reaches_eligibility_reads_and_the_broker() {
    let s = Scenario::new("life16-crl", false);
    let dir = &s.dir;
    let services = services::start_with(
        &s,
        services::Setup {
            serial: "life",
            ..Default::default()
        },
    );
    let iccid = services.iccid.clone();
    let (op, pin_letter) = services::download(&s, &iccid);
    let sign_serial = services::check(&s, &op)["my_number_sign_serial"]
        .as_str()
        .unwrap()
        .to_string();

    // The phone certificate as the SIM holds it; its serial as openssl reads it.
    ok(kagi()
        .args(["jpki", "read-cert", "--which", "auth", "-o"])
        .arg(dir.join("phone.der"))
        .args(["--sim", "--sim-image"])
        .arg(dir.join("sim.img")));
    let phone = openssl_serial(&dir.join("phone.der"));
    let ua_pem = dir.join("pki/auth-ca.crt.pem");
    let served = dir.join("issuer/ua-crl.der");

    // The issuer published its CRL when it started: signed by the UA CA, nothing on it.
    let (verified, entries) = openssl_crl(&served, &ua_pem);
    assert!(verified, "the issuer's CRL verifies with the UA CA");
    assert!(entries.is_empty(), "{entries:?}");
    let o = eligibility(&s, &[&served]);
    assert!(o.status.success(), "{}", text(&o));
    let v = support::schema::document("eligibility.read", &o.stdout);
    assert_eq!(v["verdict"], "eligible");
    assert_eq!(v["serial"], phone.as_str());

    // The broker: the SIM enrolled by its certificate, a login with the SIM's key.
    let b = start_broker(&s);
    broker_admin(&s, &["register-service", "--id", "svc", "--method", "mac"]);
    let enrolled: serde_json::Value = serde_json::from_str(&broker_admin(
        &s,
        &[
            "--json",
            "enrol-card",
            "--cert",
            &dir.join("phone.der").display().to_string(),
            "--holder",
            "holder-1",
        ],
    ))
    .unwrap();
    let card = enrolled["card"].as_str().unwrap().to_string();
    assert_eq!(card, format!("KAGIPHONE{iccid}"));
    broker_admin(
        &s,
        &[
            "enrol",
            "--card",
            &card,
            "--service",
            "svc",
            "--out",
            &dir.join("svc.key").display().to_string(),
        ],
    );
    let o = broker_login(&s, &b, &pin_letter);
    assert!(o.status.success(), "{}", text(&o));

    // The My Number card's signature certificate revoked at its CA: the issuer revokes the
    // linked phone certificate and its CRL says so (GET /v1/crl syncs and republishes).
    ok(kagi()
        .args(["ca", "revoke", "--kind", "sign", "--dir"])
        .arg(dir.join("pki"))
        .arg(&sign_serial));
    let got = Command::new("curl")
        .args(["-sf", "-o"])
        .arg(dir.join("got.der"))
        .arg(format!("http://127.0.0.1:{}/v1/crl", services.issuer_port))
        .status()
        .unwrap();
    assert!(got.success());
    assert_eq!(
        services.issuer_row(
            dir,
            &format!("SELECT state, reason FROM links WHERE serial = '{phone}'")
        ),
        "revoked|sign-revoked"
    );
    let want = vec![(phone.clone(), "Privilege Withdrawn".to_string())];
    for f in [dir.join("got.der"), served.clone()] {
        let (verified, entries) = openssl_crl(&f, &ua_pem);
        assert!(verified, "{} verifies with the UA CA", f.display());
        assert_eq!(entries, want, "{}", f.display());
    }
    // The same made offline by the issuer's operator.
    let out = ok(kagi()
        .args(["--json", "jpki-issuer", "crl", "--config"])
        .arg(dir.join("issuer/jpki-issuer.toml"))
        .arg("--out")
        .arg(dir.join("offline.der")));
    let doc = support::schema::document("jpki-issuer.crl", out.as_bytes());
    assert_eq!(doc["entries"], 1);
    assert_eq!(openssl_crl(&dir.join("offline.der"), &ua_pem), (true, want));

    // The relying parties refuse the phone.
    let o = eligibility(&s, &[&served]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let v = support::schema::document("eligibility.read", &o.stdout);
    assert_eq!(v["verdict"], "revoked");
    let o = broker_login(&s, &b, &pin_letter);
    assert!(!o.status.success());
    assert!(text(&o).contains("login.revoked"), "{}", text(&o));

    // A CRL the UA CA did not sign is refused: a forged one (the signature's last bit), and
    // the signature CA's own.
    let mut forged = std::fs::read(&served).unwrap();
    *forged.last_mut().unwrap() ^= 1;
    std::fs::write(dir.join("forged.der"), &forged).unwrap();
    assert!(!openssl_crl(&dir.join("forged.der"), &ua_pem).0);
    for bad in [dir.join("forged.der"), dir.join("pki/sign-ca.crl.der")] {
        let o = eligibility(&s, &[&bad]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            text(&o).contains("not signed by any trusted CA"),
            "{}",
            text(&o)
        );
    }
    // The broker stops card logins while such a CRL is in its trust, and goes on when it is
    // gone (the files are re-read when they change).
    std::fs::write(dir.join("broker/extra.crl.der"), &forged).unwrap();
    let o = broker_login(&s, &b, &pin_letter);
    assert!(!o.status.success());
    assert!(!text(&o).contains("login.revoked"), "{}", text(&o));
    let log = std::fs::read_to_string(dir.join("broker.log")).unwrap();
    assert!(log.contains("not signed by any trusted CA"), "{log}");
    std::fs::remove_file(dir.join("broker/extra.crl.der")).unwrap();
    let o = broker_login(&s, &b, &pin_letter);
    assert!(text(&o).contains("login.revoked"), "{}", text(&o));
    drop(services);
}
