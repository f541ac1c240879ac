//! ⑪ by SMTP against a private aiosmtpd, the issuer over HTTPS, and an undelivered
//! certificate withdrawn after a cancel.

use super::support::cli::{Scenario, audit, contains, field, kagi, ok};
use super::support::services::{self, Setup, apply_code, mailed_code};
use std::path::Path;
use std::process::Command;

/// A private aiosmtpd (Debian's python3-aiosmtpd) on `port`, plain SMTP on loopback,
/// delivering into the maildir `maildir`; killed (by its PID) when dropped.
fn smtp_relay(port: u16, maildir: &Path) -> super::support::cli::Killed {
    super::support::cli::Killed(
        Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("aiosmtpd (scripts/setup.sh installs python3-aiosmtpd)"),
    )
}

/// ⑪ by SMTP (and the JPKI issuer over HTTPS), with the relay down at first: the application is still accepted (the operation
/// is kept, its mail queued), the failed send is in the SP-TSM's audit trail and no code is in
/// the answer; once a relay listens on that port the SP-TSM's sweeper sends the mail, to the
/// user's address, and the code in it starts the download.
#[test]
fn the_access_code_goes_by_smtp_and_a_failed_send_is_retried() {
    let s = Scenario::new("three-smtp", false);
    let dir = &s.dir;
    let smtp_port = tsm_server::testing::free_port().unwrap();
    let notify = format!(
        "notify_from = \"downloads@sp-tsm.example.jp\"\n[notify]\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\ntimeout_secs = 5\n"
    );
    let services = services::start_with(
        &s,
        Setup {
            notify: Some(&notify),
            issuer_tls: true,
            key_generation: Some("issuer"),
            ..Default::default()
        },
    );
    let iccid = services.iccid.clone();
    let application = s.apply(&iccid);
    assert_eq!(apply_code(&s, &iccid, &application, "issue.json"), None);
    let issued = std::fs::read_to_string(dir.join("issue.json")).unwrap();
    let op = field(&issued, "op");
    std::fs::write(dir.join("ticket.txt"), field(&issued, "ticket")).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&issued).unwrap()["access_code"],
        serde_json::Value::Null
    );
    let trail = audit(dir, &op);
    assert!(trail.contains("code-not-sent"), "{trail}");
    assert!(!trail.contains("code-sent"), "{trail}");
    assert!(
        !dir.join("tsm/outbox").exists(),
        "SMTP configured: no maildir"
    );
    // The operation is kept, waiting for the device.
    let status = ok(kagi()
        .args(["--json", "tsm", "provider", "--config"])
        .arg(dir.join("tsm/sp.toml"))
        .args(["status", "--op", &op]));
    assert_eq!(field(&status, "state"), "awaiting-device", "{status}");

    // The relay comes up; the sweeper's retry delivers.
    let received = dir.join("received");
    let _relay = smtp_relay(smtp_port, &received);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::fs::read_dir(received.join("new"))
        .map(|d| d.count())
        .unwrap_or(0)
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no mail arrived: {}",
            audit(dir, &op)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (mail, code) = mailed_code(&received);
    let text = std::fs::read_to_string(&mail).unwrap();
    assert!(
        text.lines()
            .any(|l| l.trim_end() == "From: downloads@sp-tsm.example.jp"),
        "{text}"
    );
    let trail = audit(dir, &op);
    assert!(trail.contains("code-sent"), "{trail}");
    std::fs::write(dir.join("code.txt"), &code).unwrap();
    let out = ok(s
        .relay()
        .arg("--sim")
        .arg("--sim-image")
        .arg(dir.join("sim.img")));
    assert_eq!(field(&out, "outcome"), "completed", "{out}");

    // Another application, and the provider cancels its operation before the download: the
    // SP-TSM's sweeper withdraws the certificate the issuer made for it (the delivered one
    // stays active), with an audit entry on both sides.
    let again = s.apply_with(
        "mynumber.img",
        "pki",
        &iccid,
        "sp:kagi-bank",
        "again.bin",
        &[],
    );
    assert!(again.status.success());
    assert_eq!(
        apply_code(&s, &iccid, &dir.join("again.bin"), "again.json"),
        None
    );
    let op2 = field(
        &std::fs::read_to_string(dir.join("again.json")).unwrap(),
        "op",
    );
    ok(kagi()
        .args(["tsm", "provider", "--config"])
        .arg(dir.join("tsm/sp.toml"))
        .args(["cancel", "--op", &op2]));
    let count = |state: &str| {
        services.issuer_row(
            dir,
            &format!("SELECT count(*) FROM links WHERE state = '{state}'"),
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while count("revoked") != "1" {
        assert!(
            std::time::Instant::now() < deadline,
            "not withdrawn: {}",
            audit(dir, &op2)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(count("active"), "1");
    assert_eq!(
        services.issuer_row(dir, "SELECT reason FROM links WHERE state = 'revoked'"),
        "withdrawn"
    );
    assert!(
        services
            .issuer_row(dir, "SELECT detail FROM audit WHERE event = 'withdrawn'")
            .ends_with(": not-delivered")
    );
    let trail = audit(dir, &op2);
    assert!(trail.contains("withdrawn"), "{trail}");
    drop(services);
    let log = std::fs::read(dir.join("sp.log")).unwrap();
    assert!(
        !contains(&log, code.as_bytes()),
        "the access code is in the log"
    );
}
