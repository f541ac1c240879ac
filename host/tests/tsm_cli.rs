//! The TSM as its users run it, process by process: `kagi tsm init`, `kagi tsm serve`, the
//! operator's and provider's commands, `kagi relay` with a simulated SIM over a 3G-like
//! link — and the TSM process killed (SIGKILL) in the middle of the download and started
//! again on the same database: the relay resumes, the operation completes exactly once, the
//! receipt verifies, and the relay's capture holds neither the content key nor the PIN.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};
use support::cli::{audit, field, kagi, ok, serve, wait_port};

#[test]
fn the_tsm_killed_mid_download_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("kagi-tsm-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = tsm_server::testing::free_port().unwrap();
    ok(kagi()
        .args(["tsm", "init", "--dir"])
        .arg(dir.join("tsm"))
        .args(["--listen", &format!("127.0.0.1:{port}")]));
    ok(kagi().args(["ca", "init", "--dir"]).arg(dir.join("pki")));
    let mut tsm = serve(&dir);
    wait_port(port);
    let sim = ok(kagi()
        .args([
            "sim",
            "provision",
            "--json",
            "--serial",
            "cli-phone",
            "--image",
        ])
        .arg(dir.join("sim.img"))
        .arg("--provider-keys")
        .arg(dir.join("tsm/keys/provider.keys")));
    let (iccid, cin) = (field(&sim, "iccid"), field(&sim, "cin"));
    ok(kagi()
        .args(["tsm", "mno", "--config"])
        .arg(dir.join("tsm/mno.toml"))
        .args(["register-card", "--iccid", &iccid, "--cin", &cin]));
    std::fs::write(dir.join("pin.txt"), "2468\n").unwrap();
    std::fs::write(dir.join("pw.txt"), "a password\n").unwrap();
    ok(kagi()
        .args(["tsm", "provider", "--config"])
        .arg(dir.join("tsm/sp.toml"))
        .args(["issue", "--iccid", &iccid, "--ca-dir"])
        .arg(dir.join("pki"))
        .arg("--pin-file")
        .arg(dir.join("pin.txt"))
        .arg("--password-file")
        .arg(dir.join("pw.txt"))
        .arg("--out")
        .arg(dir.join("issue.json")));
    let issued = std::fs::read_to_string(dir.join("issue.json")).unwrap();
    let op = field(&issued, "op");
    std::fs::write(dir.join("ticket.txt"), field(&issued, "ticket")).unwrap();
    std::fs::write(dir.join("code.txt"), field(&issued, "access_code")).unwrap();
    let relay = kagi()
        .args([
            "relay",
            "--json",
            "--link",
            "3g",
            "--tsm",
            &format!("http://127.0.0.1:{port}"),
        ])
        .arg("--ticket-file")
        .arg(dir.join("ticket.txt"))
        .arg("--access-code-file")
        .arg(dir.join("code.txt"))
        .arg("--password-file")
        .arg(dir.join("pw.txt"))
        .arg("--sim")
        .arg("--sim-image")
        .arg(dir.join("sim.img"))
        .arg("--capture")
        .arg(dir.join("relay.bin"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the TSM once the download runs (the user was authorised, orders are flowing).
    let start = Instant::now();
    while !audit(&dir, &op).contains("authorised") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the download did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(150));
    tsm.kill().unwrap();
    tsm.wait().unwrap();
    assert!(
        !audit(&dir, &op).contains("completed"),
        "the kill came too late"
    );
    std::thread::sleep(Duration::from_millis(400));
    let mut tsm = serve(&dir);
    let out = relay.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(field(&stdout, "outcome"), "Completed", "{stdout}");
    // Exactly once, and provably on the card.
    let trail = audit(&dir, &op);
    assert_eq!(trail.matches(" completed ").count(), 1, "{trail}");
    let receipt = ok(kagi()
        .args(["tsm", "provider", "--config"])
        .arg(dir.join("tsm/sp.toml"))
        .arg("receipt")
        .arg("--issued")
        .arg(dir.join("issue.json")));
    assert!(receipt.contains("receipt valid"), "{receipt}");
    // Neither the content key nor the PIN (as a command would carry it) crossed the relay.
    let capture = std::fs::read(dir.join("relay.bin")).unwrap();
    let content = hex::decode(
        std::fs::read_to_string(dir.join("tsm/content.key"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    assert!(
        !capture
            .windows(content.len())
            .any(|w| w == content.as_slice())
    );
    assert!(
        !capture
            .windows(6)
            .any(|w| w == [0x00, 0x18, b'2', b'4', b'6', b'8'])
    );
    assert!(!capture.windows(4).any(|w| w == *b"2468"));
    // The holder's card works.
    std::fs::write(dir.join("m.txt"), "x").unwrap();
    ok(kagi()
        .args(["jpki", "sign", "--sim", "--sim-image"])
        .arg(dir.join("sim.img"))
        .arg("--pin-file")
        .arg(dir.join("pin.txt"))
        .arg("-i")
        .arg(dir.join("m.txt"))
        .arg("-o")
        .arg(dir.join("m.sig")));
    tsm.kill().unwrap();
    tsm.wait().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

/// HTTPS: `kagi tsm init --tls` makes a self-signed certificate that the provider's,
/// operator's and relay's configurations pin; the whole download runs over TLS, and a relay
/// that does not trust the certificate is refused at the handshake.
#[test]
fn the_tsm_over_https() {
    let dir = std::env::temp_dir().join(format!("kagi-tsm-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = tsm_server::testing::free_port().unwrap();
    ok(kagi()
        .args(["tsm", "init", "--tls", "--dir"])
        .arg(dir.join("tsm"))
        .args(["--listen", &format!("127.0.0.1:{port}")]));
    assert!(
        std::fs::read_to_string(dir.join("tsm/sp.toml"))
            .unwrap()
            .contains("https://")
    );
    ok(kagi().args(["ca", "init", "--dir"]).arg(dir.join("pki")));
    let mut tsm = serve(&dir);
    wait_port(port);
    let sim = ok(kagi()
        .args([
            "sim",
            "provision",
            "--json",
            "--serial",
            "tls-phone",
            "--image",
        ])
        .arg(dir.join("sim.img"))
        .arg("--provider-keys")
        .arg(dir.join("tsm/keys/provider.keys")));
    ok(kagi()
        .args(["tsm", "mno", "--config"])
        .arg(dir.join("tsm/mno.toml"))
        .args([
            "register-card",
            "--iccid",
            &field(&sim, "iccid"),
            "--cin",
            &field(&sim, "cin"),
        ]));
    std::fs::write(dir.join("pin.txt"), "1234\n").unwrap();
    std::fs::write(dir.join("pw.txt"), "pw\n").unwrap();
    ok(kagi()
        .args(["tsm", "provider", "--config"])
        .arg(dir.join("tsm/sp.toml"))
        .args(["issue", "--iccid", &field(&sim, "iccid"), "--ca-dir"])
        .arg(dir.join("pki"))
        .arg("--pin-file")
        .arg(dir.join("pin.txt"))
        .arg("--password-file")
        .arg(dir.join("pw.txt"))
        .arg("--out")
        .arg(dir.join("issue.json")));
    let issued = std::fs::read_to_string(dir.join("issue.json")).unwrap();
    std::fs::write(dir.join("ticket.txt"), field(&issued, "ticket")).unwrap();
    std::fs::write(dir.join("code.txt"), field(&issued, "access_code")).unwrap();
    let relay = |ca: bool| {
        let mut c = kagi();
        c.args([
            "relay",
            "--json",
            "--retry-for",
            "2",
            "--tsm",
            &format!("https://127.0.0.1:{port}"),
        ])
        .arg("--ticket-file")
        .arg(dir.join("ticket.txt"))
        .arg("--access-code-file")
        .arg(dir.join("code.txt"))
        .arg("--password-file")
        .arg(dir.join("pw.txt"))
        .arg("--sim")
        .arg("--sim-image")
        .arg(dir.join("sim.img"));
        if ca {
            c.arg("--tsm-ca").arg(dir.join("tsm/tls.crt.pem"));
        }
        c.output().unwrap()
    };
    let refused = relay(false);
    assert!(
        !refused.status.success(),
        "a relay without the TSM's certificate got through"
    );
    let done = relay(true);
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(field(&stdout, "outcome"), "Completed");
    let receipt = ok(kagi()
        .args(["tsm", "provider", "--config"])
        .arg(dir.join("tsm/sp.toml"))
        .arg("receipt")
        .arg("--issued")
        .arg(dir.join("issue.json")));
    assert!(receipt.contains("receipt valid"), "{receipt}");
    tsm.kill().unwrap();
    tsm.wait().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
