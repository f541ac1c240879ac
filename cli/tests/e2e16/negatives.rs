//! The negative paths of issue #16, each named: applications the issuer must refuse (a
//! revoked card, an expired card, a forged signature, an application used before), wrong
//! access codes and passwords (counted, the last locks), an MNO-TSM request for a provider
//! that does not own the SIM, and a captured inter-service message sent again.
//!
//! The issuer checks an application (②③) at the SP-TSM's `Apply`, before ④, also in the
//! on-card mode: a refused one gets no operation, no mail, no request to the MNO-TSM and no
//! challenge. (`tests/tsm_issuer` refuses the same applications in the seed's mode.)

use crate::steps::{JPKI_AID, PROVIDER_SD};
use crate::support::cli::{CONTACT, Scenario, field, kagi, ok};
use crate::support::services::{self, Services, Setup, apply_code, mailed_code};
use crate::{Walk, openssl_serial};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};
use tsm_protocol::PartyId;
use tsm_protocol::control::{ControlRequest, ControlResponse};
use tsm_protocol::signing::{Sealed, Signer, Trust};

/// The relay's run for the ticket and code files: its exit code and its JSON documents.
fn relay_run(s: &Scenario, password: &Path) -> (Option<i32>, Vec<serde_json::Value>) {
    let o = kagi()
        .args(["relay", "--json", "--tsm", &s.url()])
        .arg("--ticket-file")
        .arg(s.dir.join("ticket.txt"))
        .arg("--access-code-file")
        .arg(s.dir.join("code.txt"))
        .arg("--password-file")
        .arg(password)
        .args(["--sim", "--sim-image"])
        .arg(s.dir.join("sim.img"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let docs = serde_json::Deserializer::from_slice(&o.stdout)
        .into_iter::<serde_json::Value>()
        .map(|d| {
            d.unwrap_or_else(|e| {
                panic!(
                    "not JSON ({e}): {}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
        })
        .collect();
    (o.status.code(), docs)
}

/// `kagi --json tsm provider apply` of `application` for `iccid`: its exit code and the
/// `error` of its JSON answer.
fn apply_answer(s: &Scenario, iccid: &str, application: &Path) -> (Option<i32>, serde_json::Value) {
    let o = kagi()
        .args(["--json", "tsm", "provider", "--config"])
        .arg(s.dir.join("tsm/sp.toml"))
        .args(["apply", "--iccid", iccid, "--application"])
        .arg(application)
        .arg("--password-file")
        .arg(s.dir.join("pw.txt"))
        .arg("--out")
        .arg(s.dir.join("refused.json"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v["error"].clone())
}

/// What an `Apply` leaves behind in each service, counted.
#[derive(Debug, PartialEq, Eq)]
struct Traces {
    /// Mails in the SP-TSM's outbox.
    mails: usize,
    /// The SP-TSM's operations, queued mails and audit entries.
    sp: String,
    /// Requests the MNO-TSM got (through the gate) and its operations.
    mno: (usize, String),
    /// The issuer's challenges, links and PIN letters.
    issuer: (String, usize),
}

fn traces(s: &Scenario, sv: &Services) -> Traces {
    let dir = &s.dir;
    let count = |d: &Path| std::fs::read_dir(d).map(|d| d.count()).unwrap_or(0);
    Traces {
        mails: count(&dir.join("tsm/outbox/new")) + count(&dir.join("tsm/outbox/cur")),
        sp: sv.sp_row(
            dir,
            "SELECT (SELECT count(*) FROM ops), (SELECT count(*) FROM code_mail), (SELECT count(*) FROM audit)",
        ),
        mno: (
            sv.mno_gate.as_ref().expect("the MNO-TSM's gate").seen(""),
            sv.mno_row(dir, "SELECT count(*) FROM ops"),
        ),
        issuer: (
            sv.issuer_row(
                dir,
                "SELECT (SELECT count(*) FROM challenges), (SELECT count(*) FROM links)",
            ),
            count(&dir.join("issuer/pin-mailer")),
        ),
    }
}

/// The three services with the MNO-TSM behind a gate that counts its requests.
fn start(s: &Scenario) -> Services {
    services::start_with(
        s,
        Setup {
            mno_gate: true,
            ..Default::default()
        },
    )
}

/// `application` through the provider, refused at `Apply` with the issuer's `code` (exit 1):
/// nothing of ④ and after happened — no mail, no operation at the SP-TSM, no request to the
/// MNO-TSM, no challenge, certificate or PIN letter at the issuer —, and the issuer's audit
/// and log hold the refusal.
fn refused_at_apply(s: &Scenario, sv: &Services, application: &Path, code: &str, what: &str) {
    let dir = &s.dir;
    let before = traces(s, sv);
    let (status, error) = apply_answer(s, &sv.iccid, application);
    assert_eq!(status, Some(1), "{what}: {error}");
    assert_eq!(error["code"], code, "{what}: {error}");
    assert_eq!(error["retryable"], false, "{what}: {error}");
    assert_eq!(traces(s, sv), before, "{what}: nothing done");
    let short = code.trim_start_matches("application.");
    let checks = sv.issuer_row(
        dir,
        "SELECT actor, event, detail FROM audit WHERE event LIKE 'application-%' ORDER BY id",
    );
    assert_eq!(
        checks.lines().last(),
        Some(
            format!(
                "tsm:kagi|application-refused|{code} sim {} provider sp:kagi-bank",
                sv.iccid
            )
            .as_str()
        ),
        "{what}: the issuer's audit"
    );
    // (The issuer's log, also of a restart.)
    let log: String = ["issuer.log", "issuer2.log"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .collect();
    assert!(
        log.lines().any(|l| l.contains("application refused")
            && l.contains("sender=tsm:kagi")
            && l.contains(&format!("code=\"{short}\""))),
        "{what}: the issuer's log"
    );
}

/// [`refused_at_apply`] on services with nothing done yet: every count stays zero.
fn refused_first(s: &Scenario, sv: &Services, application: &Path, code: &str, what: &str) {
    let zero = Traces {
        mails: 0,
        sp: "0|0|0".into(),
        mno: (0, "0".into()),
        issuer: ("0|0".into(), 0),
    };
    assert_eq!(traces(s, sv), zero, "{what}: a fresh start");
    refused_at_apply(s, sv, application, code, what);
    assert_eq!(
        sv.issuer_row(
            &s.dir,
            "SELECT count(*) FROM audit WHERE event IN ('challenge', 'issued', 'application-checked')"
        ),
        "0",
        "{what}: the issuer did nothing else"
    );
}

#[test]
fn an_application_from_a_revoked_card_is_refused() {
    let w = Walk::begin();
    let s = Scenario::new("e2e16-revoked", false);
    let sv = start(&s);
    let step = w.step("②③ refused at Apply: the card's signature certificate is on its CA's CRL");
    let application = s.apply(&sv.iccid);
    let app = kagi_certs::application::Application::decode(&std::fs::read(&application).unwrap())
        .unwrap();
    std::fs::write(s.dir.join("sign.der"), &app.certificate).unwrap();
    let serial = openssl_serial(&s.dir.join("sign.der"));
    ok(kagi()
        .args(["ca", "revoke", "--kind", "sign", "--dir"])
        .arg(s.dir.join("pki"))
        .arg(&serial));
    refused_first(&s, &sv, &application, "application.revoked", step);
}

#[test]
fn an_application_from_an_expired_card_is_refused() {
    use rsa::signature::{SignatureEncoding, Signer as _};
    let w = Walk::begin();
    let s = Scenario::new("e2e16-expired", false);
    let sv = start(&s);
    let step = w.step("②③ refused at Apply: the card's signature certificate has expired");
    // A card whose certificate the scenario's signature CA issued for a time now past.
    let ca = test_pki::store::load_or_create(&s.dir.join("pki"), "sign-ca", "unused").unwrap();
    let card = test_pki::generate_rsa_key().unwrap();
    let now = SystemTime::now();
    let cert = ca
        .issue_sign(
            &card.to_public_key(),
            &test_pki::BasicFacts::synthetic(),
            0x5EED_0016,
            now - Duration::from_secs(400 * 86_400),
            now - Duration::from_secs(86_400),
        )
        .unwrap();
    let body =
        kagi_certs::application::Body::new(&sv.iccid, "sp:kagi-bank", "", CONTACT, now).unwrap();
    let signature = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(card)
        .sign(&body.signed_bytes().unwrap())
        .to_vec();
    let application = s.dir.join("expired.bin");
    std::fs::write(
        &application,
        kagi_certs::application::Application {
            body,
            certificate: der::Encode::to_der(&cert).unwrap(),
            signature,
        }
        .encode()
        .unwrap(),
    )
    .unwrap();
    // openssl agrees it has expired.
    std::fs::write(s.dir.join("sign.der"), der::Encode::to_der(&cert).unwrap()).unwrap();
    let (_, _, valid) = crate::openssl(&[
        "x509",
        "-inform",
        "DER",
        "-noout",
        "-checkend",
        "0",
        "-in",
        crate::p(&s.dir.join("sign.der")),
    ]);
    assert!(!valid, "{step}: openssl finds it still valid");
    refused_first(&s, &sv, &application, "application.expired", step);
}

#[test]
fn a_forged_application_is_refused() {
    let w = Walk::begin();
    let s = Scenario::new("e2e16-forged", false);
    let sv = start(&s);
    let step =
        w.step("②③ refused at Apply: the application's signature is forged (one bit flipped)");
    let mut forged = std::fs::read(s.apply(&sv.iccid)).unwrap();
    *forged.last_mut().unwrap() ^= 1;
    std::fs::write(s.dir.join("forged.bin"), &forged).unwrap();
    refused_first(
        &s,
        &sv,
        &s.dir.join("forged.bin"),
        "application.bad-signature",
        step,
    );
}

#[test]
fn an_application_is_held_while_the_issuer_is_down_and_refused_when_used_again() {
    let w = Walk::begin();
    let s = Scenario::new("e2e16-replayed", false);
    let dir = &s.dir;
    let mut sv = start(&s);
    let application = s.apply(&sv.iccid);

    let step = w.step("②③ the issuer unreachable at Apply: a retryable refusal, nothing kept");
    sv.stop_issuer();
    let before = traces(&s, &sv);
    let (status, error) = apply_answer(&s, &sv.iccid, &application);
    assert_eq!(status, Some(1), "{step}: {error}");
    assert_eq!(error["code"], "tsm.issuer-unreachable", "{step}: {error}");
    assert_eq!(error["retryable"], true, "{step}: {error}");
    assert_eq!(traces(&s, &sv), before, "{step}: nothing done");
    sv.restart_issuer(&s, "issuer2.log");

    let step = w.step("②③④⑪ the same application once the issuer is back: accepted, downloaded");
    assert_eq!(
        apply_code(&s, &sv.iccid, &application, "issue.json"),
        None,
        "{step}"
    );
    let issued = std::fs::read_to_string(dir.join("issue.json")).unwrap();
    std::fs::write(dir.join("ticket.txt"), field(&issued, "ticket")).unwrap();
    let (_, code) = mailed_code(&dir.join("tsm/outbox"));
    std::fs::write(dir.join("code.txt"), code).unwrap();
    let (status, docs) = relay_run(&s, &dir.join("pw.txt"));
    assert_eq!(status, Some(0), "{step}: {docs:?}");
    assert_eq!(
        sv.issuer_row(dir, "SELECT count(*) FROM applications"),
        "1",
        "{step}: the application spent once, by the Certify"
    );

    let step = w.step("②③ refused at Apply: the same application sent again (replay)");
    // The counts see what a download leaves.
    let done = traces(&s, &sv);
    assert_eq!(done.mails, 1, "{step}: {done:?}");
    assert!(done.sp.starts_with("1|1|"), "{step}: {done:?}");
    assert!(done.mno.0 > 0 && done.mno.1 == "1", "{step}: {done:?}");
    assert_eq!(done.issuer, ("1|1".to_string(), 1), "{step}: {done:?}");
    refused_at_apply(&s, &sv, &application, "application.replayed", step);
    let checks = sv.issuer_row(
        dir,
        "SELECT event FROM audit WHERE event LIKE 'application-%' ORDER BY id",
    );
    assert_eq!(
        checks.lines().collect::<Vec<_>>(),
        ["application-checked", "application-refused"],
        "{step}: the issuer's audit of the two checks"
    );
}

#[test]
fn wrong_access_codes_and_passwords_are_counted_and_the_last_locks() {
    let w = Walk::begin();
    let s = Scenario::new("e2e16-tries", false);
    let dir = &s.dir;
    let sv = services::start(&s);
    let application = s.apply(&sv.iccid);
    assert_eq!(apply_code(&s, &sv.iccid, &application, "issue.json"), None);
    let issued = std::fs::read_to_string(dir.join("issue.json")).unwrap();
    let op = field(&issued, "op");
    std::fs::write(dir.join("ticket.txt"), field(&issued, "ticket")).unwrap();
    let (_, code) = mailed_code(&dir.join("tsm/outbox"));
    // Another code of the same form, and another password.
    let wrong_code = format!("{}{}", &code[..13], if code.ends_with('0') { 1 } else { 0 });
    std::fs::write(dir.join("wrong-pw.txt"), "not the password\n").unwrap();
    let step = w.step("⑬ refused: wrong access codes and passwords, counted down");
    let tries = [
        (wrong_code.as_str(), "pw.txt"),
        (code.as_str(), "wrong-pw.txt"),
        (wrong_code.as_str(), "wrong-pw.txt"),
        (wrong_code.as_str(), "pw.txt"),
    ];
    for (i, (c, pw)) in tries.iter().enumerate() {
        std::fs::write(dir.join("code.txt"), c).unwrap();
        let (status, docs) = relay_run(&s, &dir.join(pw));
        let left = 4 - i;
        assert_eq!(status, Some(1), "{step}: try {i}: {docs:?}");
        let text = serde_json::to_string(&docs).unwrap();
        assert!(
            text.contains(&format!("not accepted ({left} tries left)")),
            "{step}: try {i}: {text}"
        );
    }
    let trail = sv.sp_row(
        dir,
        &format!(
            "SELECT detail FROM audit WHERE op_id = '{op}' AND event = 'wrong-entries' ORDER BY id"
        ),
    );
    assert_eq!(
        trail.lines().collect::<Vec<_>>(),
        ["4 left", "3 left", "2 left", "1 left"],
        "{step}: the SP-TSM's audit"
    );
    let step = w.step("⑬ the last wrong try locks the download; the right entries come too late");
    std::fs::write(dir.join("code.txt"), &wrong_code).unwrap();
    let (status, docs) = relay_run(&s, &dir.join("pw.txt"));
    assert_ne!(status, Some(0), "{step}: {docs:?}");
    let text = serde_json::to_string(&docs).unwrap();
    assert!(text.contains("locked"), "{step}: {text}");
    assert_eq!(
        sv.sp_row(dir, &format!("SELECT state FROM ops WHERE id = '{op}'")),
        "failed",
        "{step}"
    );
    std::fs::write(dir.join("code.txt"), &code).unwrap();
    let (status, docs) = relay_run(&s, &dir.join("pw.txt"));
    assert_ne!(
        status,
        Some(0),
        "{step}: the right code after the lock: {docs:?}"
    );
    assert_eq!(
        sv.mno_row(dir, "SELECT count(*) FROM ops"),
        "0",
        "{step}: the MNO-TSM was never asked"
    );
}

/// `req` signed by the SP-TSM's key for the MNO-TSM.
fn as_sp_tsm(s: &Scenario, req: &ControlRequest) -> tsm_protocol::control::Outgoing {
    let key = Signer::from_pkcs8_pem(
        PartyId::new("tsm:kagi").unwrap(),
        &std::fs::read_to_string(s.dir.join("tsm/tsm.key.pem")).unwrap(),
    )
    .unwrap();
    let now = tsm_protocol::signing::now_ms();
    let mno = PartyId::new("tsm:kagi-mobile").unwrap();
    let idem = tsm_protocol::IdempotencyKey::random().unwrap();
    tsm_protocol::control::sign_request(&key, &mno, req, Some(idem), now, 120_000).unwrap()
}

/// `bytes` POSTed to the MNO-TSM's control API; its answer to the request whose header
/// `bytes` carry, checked against the MNO-TSM's key.
fn to_mno(s: &Scenario, sv: &Services, bytes: &[u8]) -> ControlResponse {
    let body = s.dir.join("to-mno.bin");
    std::fs::write(&body, bytes).unwrap();
    let o = Command::new("curl")
        .args(["-sf", "-H", "content-type: application/octet-stream"])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(format!("http://127.0.0.1:{}/v1/control", sv.mno_port))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let header = Sealed::from_bytes(bytes).unwrap().peek_header().unwrap();
    let mut trust = Trust::new();
    trust
        .add_pem(
            PartyId::new("tsm:kagi-mobile").unwrap(),
            &std::fs::read_to_string(s.dir.join("mno/mno-tsm.pub.pem")).unwrap(),
        )
        .unwrap();
    tsm_protocol::control::open_answer_as::<ControlResponse>(
        &o.stdout,
        &header,
        &trust,
        tsm_protocol::signing::now_ms(),
    )
    .unwrap()
}

fn refusal(r: &ControlResponse) -> String {
    match r {
        ControlResponse::Rejected(e) => e.code.clone(),
        other => format!("not refused: {other:?}"),
    }
}

#[test]
fn the_mno_tsm_refuses_another_provider_and_a_replayed_request() {
    let w = Walk::begin();
    let s = Scenario::new("e2e16-mno", false);
    let dir = &s.dir;
    // The MNO-TSM hosts a second provider of the same SP-TSM; the SP-TSM reaches it through
    // a gate that records its requests.
    let other_sd = "A00000015153505002";
    let sv = services::start_with(
        &s,
        Setup {
            mno_gate: true,
            mno_extra: &format!(
                "[[provider]]\nparty = \"sp:other-bank\"\nsecurity_domain = \"{other_sd}\"\nsp_tsm = \"tsm:kagi\"\n"
            ),
            ..Default::default()
        },
    );
    let iccid = sv.iccid.clone();
    services::download(&s, &iccid);
    let ops = || sv.mno_row(dir, "SELECT count(*) FROM ops");
    assert_eq!(ops(), "1");

    let step = w.step("⑭ refused: the MNO-TSM asked for a provider that does not own the SIM");
    let reply = p256::SecretKey::from_slice(&[0x22; 32]).unwrap();
    let foreign = ControlRequest::PrepareSim {
        iccid: iccid.clone(),
        provider: PartyId::new("sp:other-bank").unwrap(),
        sd_aid: hex::decode(other_sd).unwrap(),
        privileges: vec![0x80, 0x40, 0x00],
        instance: hex::decode(JPKI_AID).unwrap(),
        reply_key: tsm_protocol::keyseal::reply_public(&reply),
    };
    let answer = to_mno(&s, &sv, &as_sp_tsm(&s, &foreign).bytes);
    assert_eq!(
        refusal(&answer),
        "business.not-the-sims-provider",
        "{step}: {answer:?}"
    );
    assert_eq!(ops(), "1", "{step}: no operation made");
    assert_eq!(
        sv.mno_row(
            dir,
            &format!("SELECT hex(sd_aid) FROM cards WHERE iccid = '{iccid}'")
        ),
        PROVIDER_SD,
        "{step}: the SIM stays the provider's"
    );

    let step = w.step("⑭ refused: a captured SP-TSM request to the MNO-TSM sent again");
    let gate = sv.mno_gate.as_ref().unwrap();
    let captured = gate.bodies("POST /v1/control");
    assert!(
        !captured.is_empty(),
        "{step}: the gate saw the SP-TSM's requests"
    );
    let first = &captured[0];
    let header = Sealed::from_bytes(first).unwrap().peek_header().unwrap();
    assert_eq!(header.sender.0, "tsm:kagi", "{step}");
    let answer = to_mno(&s, &sv, first);
    assert_eq!(refusal(&answer), "protocol.replayed", "{step}: {answer:?}");
    assert_eq!(ops(), "1", "{step}: no operation made");
    let log = std::fs::read_to_string(dir.join("mno.log")).unwrap();
    assert!(
        log.contains("replayed control request"),
        "{step}: the MNO-TSM's log records the replay"
    );
    assert_eq!(
        sv.mno_row(
            dir,
            &format!(
                "SELECT count(*) FROM replay WHERE sender = 'tsm:kagi' AND msg_id = '{}'",
                header.msg_id
            )
        ),
        "1",
        "{step}: the message id the replay was found by"
    );
}
