//! The relay on a real PC/SC stack: the SIM is a simulated card served through vpcd into a
//! private pcscd, the relay reaches it as a reader (logical channels, SCP03 through pcscd),
//! and afterwards the credential works through the same reader.

#![cfg(feature = "pcsc")]

mod support;

use support::cli::{Scenario, field, serve, wait_port};
use support::{PrivatePcsc, reader_name};

#[test]
fn a_download_through_a_pcsc_reader() {
    let s = Scenario::new("tsm-pcsc", false);
    let dir = &s.dir;
    let image = dir.join("sim.img");
    let mut tsm = serve(dir);
    wait_port(s.port);
    let iccid = s.sim("pcsc-phone", &image);
    let stack = PrivatePcsc::start_image(&image);
    s.issue(&iccid, true);
    let relay = s
        .relay()
        .args(["--reader", &reader_name(0)])
        .env("PCSCLITE_CSOCK_NAME", &stack.socket)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&relay.stdout);
    assert!(
        relay.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&relay.stderr),
        stack.logs()
    );
    assert_eq!(field(&stdout, "outcome"), "completed");
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
}
