//! Suspension and resumption of a phone credential at the holder's request, through the
//! provider's SP-TSM and recorded at the JPKI issuer: the issuer's CRL lists the suspended
//! certificate as certificateHold (openssl's reading), the eligibility read refuses it, and
//! resumed it is eligible again. Racing suspensions and resumptions each act at most once
//! (the issuer's audit strictly alternates), and the CRL agrees with the final state; a
//! suspended certificate whose card is revoked is revoked for good.

use crate::support::cli::{Scenario, kagi, ok};
use crate::support::services::{self, Databases};
use crate::{eligibility, openssl_crl};
use std::process::Command;

/// `kagi --json tsm provider suspend|resume --credential OP`: its answer (JSON).
fn hold(s: &Scenario, what: &str, op: &str) -> std::process::Output {
    kagi()
        .args(["--json", "tsm", "provider", "--config"])
        .arg(s.dir.join("tsm/sp.toml"))
        .args([what, "--credential", op])
        .output()
        .unwrap()
}

fn crl(s: &Scenario, port: u16) -> Vec<(String, String)> {
    let f = s.dir.join("got.der");
    assert!(
        Command::new("curl")
            .args(["-sf", "-o"])
            .arg(&f)
            .arg(format!("http://127.0.0.1:{port}/v1/crl"))
            .status()
            .unwrap()
            .success()
    );
    let (verified, entries) = openssl_crl(&f, &s.dir.join("pki/auth-ca.crt.pem"));
    assert!(verified);
    entries
}

#[test]
fn suspension_and_resumption_are_recorded_at_the_issuer_and_race_safely() {
    suspension("life16-hold", Databases::default());
}

/// The same with the issuer's state on PostgreSQL.
#[test]
fn suspension_and_resumption_on_postgres() {
    let pg = tsm_server::testing::PrivatePostgres::start("life16-hold").unwrap();
    suspension("life16-hold-pg", Databases::issuer_and_mno_on(&pg));
}

fn suspension(name: &str, db: Databases) {
    let s = Scenario::new(name, false);
    let dir = &s.dir;
    let services = services::start_with(
        &s,
        services::Setup {
            serial: "life",
            db,
            ..Default::default()
        },
    );
    let iccid = services.iccid.clone();
    let port = services.issuer_port;
    let (op, _) = services::download(&s, &iccid);
    let status = services::check(&s, &op);
    let phone = status["serial"].as_str().unwrap().to_string();
    let sign_serial = status["my_number_sign_serial"]
        .as_str()
        .unwrap()
        .to_string();
    let link = || {
        services.issuer_row(
            dir,
            &format!("SELECT state FROM links WHERE serial = '{phone}'"),
        )
    };

    // Suspended: held at the issuer, on its CRL as certificateHold, refused by the
    // eligibility read, `suspended` at the SP-TSM.
    let o = hold(&s, "suspend", &op);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let answer = crate::support::schema::document("tsm.answer", &o.stdout);
    assert_eq!(answer["answer"], "credential");
    assert_eq!(answer["state"], "suspended", "{answer}");
    assert_eq!(link(), "held");
    assert_eq!(
        crl(&s, port),
        [(phone.clone(), "Certificate Hold".to_string())]
    );
    assert_eq!(
        eligibility(&s, &[&dir.join("got.der")]).status.code(),
        Some(4)
    );
    assert_eq!(services::check(&s, &op)["state"], "suspended");
    // Resumed: active again, off the CRL, eligible.
    let o = hold(&s, "resume", &op);
    assert!(o.status.success());
    assert_eq!(services::check(&s, &op)["state"], "active");
    assert_eq!(link(), "active");
    assert!(crl(&s, port).is_empty());
    let o = eligibility(&s, &[&dir.join("got.der")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));

    // Eight racing requests, suspensions and resumptions mixed: each transition happens at
    // most once per request, so the issuer's trail alternates held, released, held, …
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let what = if i % 2 == 0 { "suspend" } else { "resume" };
            let mut c = kagi();
            c.args(["--json", "tsm", "provider", "--config"])
                .arg(dir.join("tsm/sp.toml"))
                .args([what, "--credential", &op]);
            c.spawn().unwrap()
        })
        .collect();
    for mut r in racers {
        assert!(r.wait().unwrap().success());
    }
    let events = services.issuer_row(
        dir,
        &format!(
            "SELECT event FROM audit WHERE event IN ('held', 'released') AND detail LIKE 'phone {phone} %' ORDER BY id"
        ),
    );
    let events: Vec<&str> = events.lines().collect();
    assert!(events.len() >= 3, "{events:?}");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            *e,
            if i % 2 == 0 { "held" } else { "released" },
            "{events:?}"
        );
    }
    let state = link();
    assert_eq!(
        state,
        if events.len() % 2 == 1 {
            "held"
        } else {
            "active"
        }
    );
    assert_eq!(crl(&s, port).is_empty(), state == "active");

    // Suspended when its card's signature certificate is revoked: revoked for good.
    if state == "active" {
        assert!(hold(&s, "suspend", &op).status.success());
    }
    ok(kagi()
        .args(["ca", "revoke", "--kind", "sign", "--dir"])
        .arg(dir.join("pki"))
        .arg(&sign_serial));
    assert_eq!(
        crl(&s, port),
        [(phone.clone(), "Privilege Withdrawn".to_string())]
    );
    assert_eq!(link(), "revoked");
    assert_eq!(services::check(&s, &op)["state"], "revoked");
    let o = hold(&s, "resume", &op);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("business.not-active"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(link(), "revoked");
}
