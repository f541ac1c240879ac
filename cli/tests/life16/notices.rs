//! A lost or changed SIM, from the operator through its MNO-TSM to the SP-TSM and the JPKI
//! issuer: the notice is queued with the SIM's new state, pushed signed to the SP-TSM and
//! retried until acknowledged; the SP-TSM revokes the credential and asks the issuer, whose
//! CRL then lists the phone certificate with the reason (as openssl reads it); audited on all
//! three sides. A notice signed by another key, and one replayed, are refused.

use crate::support::cli::{Scenario, kagi, ok};
use crate::support::services::{self, Databases, Services};
use crate::{eligibility, openssl_crl, openssl_serial};
use std::path::Path;
use std::process::Command;
use tsm_protocol::PartyId;
use tsm_protocol::control::{ControlRequest, ControlResponse};
use tsm_protocol::signing::{Signer, Trust};

/// `req` signed by `signer` for the SP-TSM, as the MNO-TSM sends it.
fn sign(signer: &Signer, req: &ControlRequest) -> tsm_protocol::control::Outgoing {
    let sp = PartyId::new("tsm:kagi").unwrap();
    let now = tsm_protocol::signing::now_ms();
    tsm_protocol::control::sign_request(signer, &sp, req, None, now, 120_000).unwrap()
}

/// `out` POSTed to the SP-TSM's control API; its answer, checked against the SP-TSM's key.
fn post(s: &Scenario, out: &tsm_protocol::control::Outgoing) -> ControlResponse {
    let body = s.dir.join("notice.bin");
    std::fs::write(&body, &out.bytes).unwrap();
    let o = Command::new("curl")
        .args([
            "-sf",
            "-H",
            "content-type: application/octet-stream",
            "--data-binary",
        ])
        .arg(format!("@{}", body.display()))
        .arg(format!("{}/v1/control", s.url()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut trust = Trust::new();
    trust
        .add_pem(
            PartyId::new("tsm:kagi").unwrap(),
            &std::fs::read_to_string(s.dir.join("tsm/tsm.pub.pem")).unwrap(),
        )
        .unwrap();
    tsm_protocol::control::open_answer_as::<ControlResponse>(
        &o.stdout,
        &out.header,
        &trust,
        tsm_protocol::signing::now_ms(),
    )
    .unwrap()
}

fn code(r: &ControlResponse) -> String {
    match r {
        ControlResponse::Rejected(e) => e.code.clone(),
        other => format!("not refused: {other:?}"),
    }
}

/// The MNO-TSM's audit events about SIM `iccid`'s notices, oldest first.
fn mno_audit(services: &Services, dir: &Path, iccid: &str) -> Vec<String> {
    services
        .mno_row(
            dir,
            &format!("SELECT event FROM audit WHERE op_id = 'sim:{iccid}' ORDER BY id"),
        )
        .lines()
        .map(str::to_string)
        .collect()
}

/// The phone certificate's serial (openssl's reading of the SIM's certificate).
fn phone_serial(s: &Scenario) -> String {
    ok(kagi()
        .args(["jpki", "read-cert", "--which", "auth", "-o"])
        .arg(s.dir.join("phone.der"))
        .args(["--sim", "--sim-image"])
        .arg(s.dir.join("sim.img")));
    openssl_serial(&s.dir.join("phone.der"))
}

/// The issuer's CRL (GET /v1/crl) as openssl reads it, checked against the UA CA.
fn issuer_crl(s: &Scenario, services: &Services) -> Vec<(String, String)> {
    let f = s.dir.join("got.der");
    assert!(
        Command::new("curl")
            .args(["-sf", "-o"])
            .arg(&f)
            .arg(format!("http://127.0.0.1:{}/v1/crl", services.issuer_port))
            .status()
            .unwrap()
            .success()
    );
    let (verified, entries) = openssl_crl(&f, &s.dir.join("pki/auth-ca.crt.pem"));
    assert!(verified);
    entries
}

#[test]
fn a_lost_sim_reaches_the_sp_tsm_and_the_issuer_crl_retried_until_acknowledged() {
    let s = Scenario::new("life16-lost", false);
    let dir = &s.dir;
    let mut services = services::start_with(
        &s,
        services::Setup {
            serial: "life",
            ..Default::default()
        },
    );
    let iccid = services.iccid.clone();
    let (op, _) = services::download(&s, &iccid);
    let phone = phone_serial(&s);
    let lost = ControlRequest::CardLost {
        iccid: iccid.clone(),
    };

    // A notice in the MNO-TSM's name signed by another key: refused, nothing revoked.
    let forger = Signer::generate(PartyId::new("tsm:kagi-mobile").unwrap()).unwrap();
    let answer = post(&s, &sign(&forger, &lost));
    assert!(code(&answer).starts_with("protocol."), "{answer:?}");
    assert_eq!(services::check(&s, &op)["state"], "active");

    // The SP-TSM is down when the operator reports the loss: the MNO-TSM keeps the notice
    // (queued with the SIM's new state) and records the failed attempt.
    services.stop_sp_tsm();
    ok(kagi()
        .args(["tsm", "mno", "--config"])
        .arg(dir.join("mno/operator.toml"))
        .args(["card-lost", "--iccid", &iccid]));
    let trail = mno_audit(&services, dir, &iccid);
    assert_eq!(
        trail[..2],
        ["sim-notice-queued", "sim-notice-failed"],
        "{trail:?}"
    );
    // Back up: the MNO-TSM's sweeper sends it again until the SP-TSM acknowledges (waited
    // for by its audit entry, not by time).
    services.restart_sp_tsm(&s, "sp2.log");
    let start = std::time::Instant::now();
    while !mno_audit(&services, dir, &iccid).contains(&"sim-notice-delivered".to_string()) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "never delivered: {:?}",
            mno_audit(&services, dir, &iccid)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // The SP-TSM revoked the credential (the MNO-TSM its actor) and asked the issuer.
    let status = services::check(&s, &op);
    assert_eq!(status["state"], "revoked", "{status}");
    let sp_audit = ok(kagi()
        .args(["tsm", "audit", "--op", &op, "--database"])
        .arg(dir.join("tsm/tsm.db")));
    assert!(
        sp_audit.contains("tsm:kagi-mobile") && sp_audit.contains("card-lost"),
        "{sp_audit}"
    );
    assert!(sp_audit.contains("withdrawn"), "{sp_audit}");
    assert_eq!(
        services.issuer_row(
            dir,
            &format!("SELECT state, reason FROM links WHERE serial = '{phone}'")
        ),
        "revoked|sim-lost"
    );
    let issuer_audit = services.issuer_row(
        dir,
        &format!("SELECT actor, event FROM audit WHERE detail LIKE 'phone {phone} %'"),
    );
    assert!(issuer_audit.contains("tsm:kagi|revoked"), "{issuer_audit}");
    assert_eq!(
        issuer_crl(&s, &services),
        [(phone, "Key Compromise".into())]
    );
    let o = eligibility(&s, &[&dir.join("got.der")]);
    assert_eq!(o.status.code(), Some(4));

    // The MNO-TSM's own notice sent again byte for byte: refused as a replay.
    let mno_key = Signer::from_pkcs8_pem(
        PartyId::new("tsm:kagi-mobile").unwrap(),
        &std::fs::read_to_string(dir.join("mno/mno-tsm.key.pem")).unwrap(),
    )
    .unwrap();
    let sent = sign(&mno_key, &lost);
    assert_eq!(
        post(&s, &sent),
        ControlResponse::Ok,
        "a repeated notice is acknowledged"
    );
    assert_eq!(code(&post(&s, &sent)), "protocol.replayed");
}

#[test]
fn a_changed_sim_supersedes_the_phone_certificate() {
    changed_sim("life16-changed", Databases::default());
}

/// The same with the issuer's and the MNO-TSM's state on PostgreSQL.
#[test]
fn a_changed_sim_supersedes_the_phone_certificate_on_postgres() {
    let pg = tsm_server::testing::PrivatePostgres::start("life16-changed").unwrap();
    changed_sim("life16-changed-pg", Databases::issuer_and_mno_on(&pg));
}

fn changed_sim(name: &str, db: Databases) {
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
    let (op, _) = services::download(&s, &iccid);
    let phone = phone_serial(&s);
    let new_sim = ok(kagi()
        .args([
            "sim",
            "provision",
            "--json",
            "--no-domain",
            "--serial",
            "new",
        ])
        .arg("--image")
        .arg(dir.join("new-sim.img"))
        .arg("--manufacturer-ca")
        .arg(dir.join("maker")));
    let new_iccid = crate::support::cli::field(&new_sim, "iccid");
    ok(kagi()
        .args(["tsm", "mno", "--config"])
        .arg(dir.join("mno/operator.toml"))
        .args(["sim-changed", "--old", &iccid, "--new", &new_iccid]));
    // Delivered at once (the SP-TSM is up): no retry needed.
    assert_eq!(
        mno_audit(&services, dir, &iccid),
        ["sim-notice-queued", "sim-notice-delivered"]
    );
    let status = services::check(&s, &op);
    assert_eq!(status["state"], "revoked", "{status}");
    assert_eq!(
        services.issuer_row(
            dir,
            &format!("SELECT state, reason FROM links WHERE serial = '{phone}'")
        ),
        "revoked|sim-changed"
    );
    assert_eq!(issuer_crl(&s, &services), [(phone, "Superseded".into())]);
}
