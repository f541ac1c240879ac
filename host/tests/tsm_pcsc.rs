//! The relay on a real PC/SC stack: the SIM is a simulated card served through vpcd into a
//! private pcscd, the relay reaches it as a reader (logical channels, SCP03 through pcscd),
//! and afterwards the credential works through the same reader.

#![cfg(feature = "pcsc")]

mod support;

use support::cli::{field, kagi, ok, serve, wait_port};
use support::{PrivatePcsc, reader_name};

#[test]
fn a_download_through_a_pcsc_reader() {
    let dir = std::env::temp_dir().join(format!("kagi-tsm-pcsc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = tsm_server::testing::free_port().unwrap();
    ok(kagi()
        .args(["tsm", "init", "--dir"])
        .arg(dir.join("tsm"))
        .args(["--listen", &format!("127.0.0.1:{port}")]));
    ok(kagi().args(["ca", "init", "--dir"]).arg(dir.join("pki")));
    let image = dir.join("sim.img");
    let sim = ok(kagi()
        .args([
            "sim",
            "provision",
            "--json",
            "--serial",
            "pcsc-phone",
            "--image",
        ])
        .arg(&image)
        .arg("--provider-keys")
        .arg(dir.join("tsm/keys/provider.keys")));
    let stack = PrivatePcsc::start_image(&image);
    let mut tsm = serve(&dir);
    wait_port(port);
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
    std::fs::write(dir.join("pin.txt"), "4711\n").unwrap();
    std::fs::write(dir.join("pw.txt"), "pw\n").unwrap();
    ok(kagi()
        .args(["tsm", "provider", "--config"])
        .arg(dir.join("tsm/sp.toml"))
        .args([
            "issue",
            "--rsa",
            "--iccid",
            &field(&sim, "iccid"),
            "--ca-dir",
        ])
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
    let relay = stack.kagi(&[
        "relay",
        "--json",
        "--tsm",
        &format!("http://127.0.0.1:{port}"),
        "--ticket-file",
        dir.join("ticket.txt").to_str().unwrap(),
        "--access-code-file",
        dir.join("code.txt").to_str().unwrap(),
        "--password-file",
        dir.join("pw.txt").to_str().unwrap(),
        "--reader",
        &reader_name(0),
    ]);
    let stdout = String::from_utf8_lossy(&relay.stdout);
    assert!(
        relay.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&relay.stderr),
        stack.logs()
    );
    assert_eq!(field(&stdout, "outcome"), "Completed");
    // The credential through the same reader: a PIN-less eligibility read, then a signature.
    let el = stack.kagi(&[
        "eligibility",
        "read",
        "--json",
        "--reader",
        &reader_name(0),
        "--ca",
        dir.join("pki/auth-ca.crt.pem").to_str().unwrap(),
    ]);
    assert_eq!(
        field(&String::from_utf8_lossy(&el.stdout), "verdict"),
        "eligible"
    );
    std::fs::write(dir.join("m.txt"), "via pcsc").unwrap();
    let sign = stack.kagi(&[
        "jpki",
        "sign",
        "--reader",
        &reader_name(0),
        "--pin-file",
        dir.join("pin.txt").to_str().unwrap(),
        "-i",
        dir.join("m.txt").to_str().unwrap(),
        "-o",
        dir.join("m.sig").to_str().unwrap(),
    ]);
    assert!(
        sign.status.success(),
        "{}",
        String::from_utf8_lossy(&sign.stderr)
    );
    tsm.kill().unwrap();
    tsm.wait().unwrap();
    drop(stack);
    std::fs::remove_dir_all(&dir).ok();
}
