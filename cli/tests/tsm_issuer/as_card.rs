//! 別紙4's first usage form: after the three organisations' download the phone is a card. The
//! SIM (its image) is served through vpcd into a private pcscd, and through that reader
//! OpenSC's `jpki` driver (an independent client) lists and reads the user-authentication
//! certificate the JPKI issuer made, and `kagi eligibility read` checks it PIN-less.

use super::support::cli::{Scenario, field};
use super::support::services::download;
use super::support::{PrivatePcsc, reader_name};

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn after_the_download_the_sim_is_a_card_for_opensc_and_eligibility_reads() {
    let s = Scenario::new("three-card", false);
    let dir = &s.dir;
    let services = super::start_services(&s, Default::default());
    let iccid = services.iccid.clone();
    download(&s, &iccid);
    // The issuer's own record of the phone certificate (sqlite3), to compare against.
    let serial = services.issuer_row(dir, "SELECT serial FROM links WHERE state = 'active'");
    assert!(!serial.is_empty());

    let stack = PrivatePcsc::start_image(&dir.join("sim.img"));
    let opensc = |args: &[&str]| {
        let mut all = vec!["OPENSC_DRIVER=jpki", "pkcs15-tool"];
        all.extend_from_slice(args);
        stack.run("env", &all)
    };
    let list = opensc(&["--list-certificates"]);
    assert!(list.status.success(), "{}\n{}", text(&list), stack.logs());
    assert!(
        text(&list).contains("[User Authentication Certificate]"),
        "{}",
        text(&list)
    );
    let cert = opensc(&["--read-certificate", "01"]);
    assert!(cert.status.success(), "{}", text(&cert));
    std::fs::write(dir.join("phone.pem"), &cert.stdout).unwrap();
    // openssl, independently: the certificate OpenSC read is the one the issuer recorded,
    // issued by the user-authentication CA.
    let x = stack.run(
        "openssl",
        &[
            "x509",
            "-in",
            dir.join("phone.pem").to_str().unwrap(),
            "-noout",
            "-serial",
        ],
    );
    let openssl_serial = String::from_utf8_lossy(&x.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_string();
    assert_eq!(
        openssl_serial.trim_start_matches('0').to_ascii_lowercase(),
        serial.trim_start_matches('0').to_ascii_lowercase(),
        "{}",
        text(&x)
    );
    let v = stack.run(
        "openssl",
        &[
            "verify",
            "-CAfile",
            dir.join("pki/auth-ca.crt.pem").to_str().unwrap(),
            dir.join("phone.pem").to_str().unwrap(),
        ],
    );
    assert!(v.status.success(), "{}", text(&v));
    // The PIN-less eligibility read through the same reader.
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
        "eligible",
        "{}",
        text(&el)
    );
}
