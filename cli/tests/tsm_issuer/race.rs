//! Racing `Apply`s with one idempotency key through the SP-TSM and the issuer.

use super::support::cli::Scenario;
use std::process::Command;

/// Sixteen racing `Apply`s with one idempotency key through the SP-TSM (a provider resending
/// while its first request is still on its way): the issuer issues once and the SP-TSM makes
/// one operation and sends one mail; all sixteen answers are the same, with no access code.
#[test]
fn racing_applys_with_one_key_issue_once() {
    use kagi_online::tsm::{client, provider};
    use tsm_protocol::control::{AppletRef, CardTarget, ControlRequest};
    let s = Scenario::new("three-race", false);
    let dir = &s.dir;
    let services = super::start_services(&s, Default::default());
    let iccid = services.iccid.clone();
    let application = std::fs::read(s.apply(&iccid)).unwrap();
    let tsm = tsm_protocol::PartyId::new("tsm:kagi").unwrap();
    let mut trust = tsm_protocol::signing::Trust::new();
    trust
        .add_pem(
            tsm.clone(),
            &std::fs::read_to_string(dir.join("tsm/tsm.pub.pem")).unwrap(),
        )
        .unwrap();
    let sp = std::sync::Arc::new(provider::Party {
        signer: tsm_protocol::signing::Signer::from_pkcs8_pem(
            tsm_protocol::PartyId::new("sp:kagi-bank").unwrap(),
            &std::fs::read_to_string(dir.join("tsm/sp.key.pem")).unwrap(),
        )
        .unwrap(),
        tsm,
        trust,
        client: client::Client::new(&s.url(), client::Link::default()),
    });
    let req = std::sync::Arc::new(ControlRequest::Apply {
        subscriber_ref: iccid.clone(),
        card: CardTarget {
            iccid: iccid.clone(),
        },
        applet: AppletRef::jpki(),
        application,
        access: provider::access_grant("a password", 5, 30 * 60_000).unwrap(),
    });
    let key = tsm_protocol::IdempotencyKey::random().unwrap();
    let answers = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (sp, req) = (sp.clone(), req.clone());
                tokio::spawn(async move { sp.send(&req, Some(key)).await.unwrap().response })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        answers
    });
    let tsm_protocol::control::ControlResponse::Accepted { access_code, .. } = &answers[0] else {
        panic!("not accepted: {:?}", answers[0]);
    };
    assert_eq!(access_code, &None);
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    let count = |db: &str, sql: &str| {
        let o = Command::new("sqlite3")
            .arg(dir.join(db))
            .arg(sql)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(
        count("issuer/jpki-issuer.db", "SELECT count(*) FROM links"),
        "1"
    );
    assert_eq!(
        count(
            "issuer/jpki-issuer.db",
            "SELECT count(*) FROM links WHERE state = 'active'"
        ),
        "1"
    );
    assert_eq!(count("tsm/tsm.db", "SELECT count(*) FROM ops"), "1");
    assert_eq!(
        std::fs::read_dir(dir.join("tsm/outbox/new"))
            .unwrap()
            .count(),
        1,
        "one mail"
    );
    // An application whose access grant the SP-TSM refuses is refused before the issuer
    // makes anything (no certificate to withdraw).
    let fresh = std::fs::read(s.apply(&iccid)).unwrap();
    let weak = ControlRequest::Apply {
        subscriber_ref: iccid.clone(),
        card: CardTarget {
            iccid: iccid.clone(),
        },
        applet: AppletRef::jpki(),
        application: fresh,
        access: provider::access_grant("a password", 0, 30 * 60_000).unwrap(),
    };
    let refused = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sp.send(&weak, None))
        .unwrap()
        .response;
    match refused {
        tsm_protocol::control::ControlResponse::Rejected(e) => {
            assert_eq!(e.code, "business.weak-access")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        count("issuer/jpki-issuer.db", "SELECT count(*) FROM links"),
        "1"
    );
    drop(services);
}
