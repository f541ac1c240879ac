//! Every kind of service end to end, revocation stopping them all; login refusals and
//! replays.

use broker_protocol::api::{self, AdminRequest, AdminResponse, CardLogin};
use broker_protocol::{Assurance, Verifier};
use broker_server::envelope::FileEnvelope;
use broker_server::{Envelope, Shards};
use kagi_signed::ids::PartyId;
use kagi_signed::signing::{self, Trust};
use test_pki::TestCa;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_type_then_revocation_stops_them_all() {
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let w = World::new("services", 1);
    let b = w.broker().await;
    let card = w.card("CARD-0001", 0x1001);
    assert_eq!(
        w.admin(
            &b,
            AdminRequest::EnrolCard {
                card: card.id.clone(),
                holder: "holder-1".into(),
                password: None
            }
        )
        .await,
        AdminResponse::Ok
    );
    let sides = setup_services(&w, &b, &card).await;

    let session = login(&b, &card).await.unwrap();
    assert_eq!(session.assurance, Assurance::Card);
    let challenge = b"service challenge 0123456789";
    let mut answers = Vec::new();
    for ((id, _), side) in SERVICES.iter().zip(&sides) {
        let r = b.act(&act(&session, id, challenge)).await.unwrap();
        assert!(
            service_accepts(side, &r, challenge),
            "{id} refused the broker's answer"
        );
        // A different challenge is not answered by the old answer.
        if !matches!(side, ServiceSide::Assertion(_)) {
            assert!(!service_accepts(side, &r, b"another challenge"), "{id}");
        }
        answers.push(serde_json::to_vec(&r).unwrap());
    }
    // An assertion is accepted once: the service refuses it replayed.
    let r = b
        .act(&act(&session, "svc-assert", challenge))
        .await
        .unwrap();
    let ServiceSide::Assertion(v) = &sides[3] else {
        unreachable!()
    };
    let now = signing::now_ms() / 1000;
    assert!(
        v.verify(r.assertion.as_deref().unwrap(), "svc-nonce-1", now)
            .is_ok()
    );
    assert!(
        v.verify(r.assertion.as_deref().unwrap(), "svc-nonce-1", now)
            .is_err()
    );
    // ... and one for another service or another nonce is refused.
    let r2 = b
        .act(&act(&session, "svc-assert", challenge))
        .await
        .unwrap();
    assert!(
        v.verify(r2.assertion.as_deref().unwrap(), "other-nonce", now)
            .is_err()
    );
    let other = Verifier::new(b.keys(), NAME, "svc-mac", Assurance::Card);
    assert!(
        other
            .verify(r2.assertion.as_deref().unwrap(), "svc-nonce-1", now)
            .is_err()
    );

    // Without the holder's consent, nothing.
    let mut no = act(&session, "svc-mac", challenge);
    no.consent = false;
    assert_eq!(code(b.act(&no).await), "act.no-consent");

    // Revoked: the live session stops at once for every service, and the next login fails.
    assert_eq!(
        w.admin(
            &b,
            AdminRequest::RevokeCard {
                card: card.id.clone()
            }
        )
        .await,
        AdminResponse::Ok
    );
    for (id, _) in SERVICES {
        let c = code(b.act(&act(&session, id, challenge)).await);
        assert!(
            c == "session.unknown" || c == "session.revoked",
            "{id}: {c}"
        );
    }
    assert_eq!(code(login(&b, &card).await), "login.revoked");
    // Enrolling it again does not bring it back.
    let again = w
        .admin(
            &b,
            AdminRequest::EnrolCard {
                card: card.id.clone(),
                holder: "holder-1".into(),
                password: None,
            },
        )
        .await;
    assert!(
        matches!(again, AdminResponse::Rejected { ref code, .. } if code == "admin.revoked"),
        "{again:?}"
    );

    // The holder's audit trail was kept (read by the administrator now the card is revoked).
    let AdminResponse::Audit(trail) = w
        .admin(
            &b,
            AdminRequest::Audit {
                card: Some(card.id.clone()),
            },
        )
        .await
    else {
        panic!()
    };
    let events: Vec<(&str, &str, &str)> = trail
        .iter()
        .map(|e| (e.event.as_str(), e.service.as_str(), e.outcome.as_str()))
        .collect();
    assert!(events.contains(&("login", "", "ok")));
    for (id, _) in SERVICES {
        assert!(events.contains(&("act", id, "ok")), "{id}");
    }
    assert!(events.contains(&("act", "svc-mac", "act.no-consent")));
    assert!(events.contains(&("revoke-card", "", "ok")));
    assert!(events.contains(&("login", "", "login.revoked")));

    // No key material in the logs or in the answers to the holder.
    let logs = logs.0.lock().unwrap().clone();
    assert!(
        !logs.is_empty(),
        "the broker logged nothing: the capture is broken"
    );
    let ServiceSide::Mac(shared) = &sides[0] else {
        unreachable!()
    };
    let kek = std::fs::read_to_string(w.dir.join("keys/kek-k1.key")).unwrap();
    let kek = hex::decode(kek.trim()).unwrap();
    for secret in [
        shared.as_slice(),
        kek.as_slice(),
        session.session.as_bytes(),
        &w.state_key,
    ] {
        assert!(!leaks(&logs, secret), "a secret is in the logs");
        for a in &answers {
            assert!(!leaks(a, secret), "a secret is in an answer");
        }
    }
    // Nor in the database file: the MAC key, the KEK, and the private signing keys (the
    // P-256 scalar and the RSA key's PKCS#1 DER, as the key store opens them).
    let db = std::fs::read(w.dir.join("shard0.db")).unwrap();
    assert!(
        !leaks(&db, shared),
        "the MAC key is in the database in clear"
    );
    assert!(!leaks(&db, &kek), "the KEK is in the database");
    let shards = Shards::open(&w.backends).await.unwrap();
    let keys = FileEnvelope::open_dir(&w.dir.join("keys")).unwrap();
    for svc in ["svc-p256", "svc-rsa"] {
        let cred = shards.all()[0]
            .active_credential(&card.id, svc)
            .await
            .unwrap()
            .unwrap();
        let secret = keys
            .open(
                &broker_server::store::CredentialRow::aad(&card.id, svc, cred.version),
                &cred.sealed,
            )
            .unwrap();
        // What was opened is the key (it signs what the service verified above).
        assert!(
            secret.len() == 32 || secret.starts_with(&[0x30, 0x82]),
            "{svc}"
        );
        assert!(
            !leaks(&db, &secret),
            "the {svc} private key is in the database"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refusals_and_replays() {
    let w = World::new("logins", 1);
    let b = w.broker().await;
    let card = w.card("CARD-0002", 0x2002);
    w.admin(
        &b,
        AdminRequest::EnrolCard {
            card: card.id.clone(),
            holder: "h2".into(),
            password: None,
        },
    )
    .await;

    // The same signed challenge twice: the second is a replay.
    let c = b.challenge().unwrap();
    let nonce = api::unb64(&c.nonce).unwrap();
    let l = CardLogin {
        nonce: c.nonce.clone(),
        certificate: api::b64(&card.cert),
        signature: api::b64(&sign(&card, &api::login_message(NAME, &nonce))),
    };
    b.login_card(&l).await.unwrap();
    assert_eq!(code(b.login_card(&l).await), "login.replayed");

    // A nonce the broker never issued (or altered).
    let mut forged = nonce.clone();
    forged[0] ^= 1;
    let l2 = CardLogin {
        nonce: api::b64(&forged),
        certificate: api::b64(&card.cert),
        signature: api::b64(&sign(&card, &api::login_message(NAME, &forged))),
    };
    assert_eq!(code(b.login_card(&l2).await), "login.bad-challenge");

    // Signed for another broker, or by another key.
    let c = b.challenge().unwrap();
    let nonce = api::unb64(&c.nonce).unwrap();
    let l3 = CardLogin {
        nonce: c.nonce.clone(),
        certificate: api::b64(&card.cert),
        signature: api::b64(&sign(&card, &api::login_message("broker:other", &nonce))),
    };
    assert_eq!(code(b.login_card(&l3).await), "login.bad-signature");
    let thief = w.card("CARD-0002", 0x2003);
    let l4 = CardLogin {
        certificate: api::b64(&card.cert),
        signature: api::b64(&sign(&thief, &api::login_message(NAME, &nonce))),
        ..l3.clone()
    };
    assert_eq!(code(b.login_card(&l4).await), "login.bad-signature");

    // A certificate from another CA.
    let rogue = World::new("logins-rogue", 1).card("CARD-0002", 0x2002);
    let c = b.challenge().unwrap();
    let nonce = api::unb64(&c.nonce).unwrap();
    let l5 = CardLogin {
        nonce: c.nonce.clone(),
        certificate: api::b64(&rogue.cert),
        signature: api::b64(&sign(&rogue, &api::login_message(NAME, &nonce))),
    };
    assert_eq!(code(b.login_card(&l5).await), "login.unknown-issuer");

    // A card the broker does not know.
    let stranger = w.card("CARD-9999", 0x9999);
    assert_eq!(code(login(&b, &stranger).await), "login.not-enrolled");

    // Garbage.
    let bad = CardLogin {
        nonce: "!!".into(),
        certificate: "x".into(),
        signature: "y".into(),
    };
    assert_eq!(code(b.login_card(&bad).await), "login.malformed");

    // Revoked at the CA (its revocation list): refused at once, no restart.
    std::fs::write(w.dir.join("revoked.txt"), "# revoked\n0x2002\n").unwrap();
    assert_eq!(code(login(&b, &card).await), "login.revoked");
    std::fs::write(w.dir.join("revoked.txt"), "").unwrap();
    login(&b, &card).await.unwrap();
    // The same through the CA's signed CRL; a CRL signed by another CA is refused: no card
    // logs in until the CA's own CRL replaces it (it could hide a revocation).
    let rogue_ca = TestCa::new("Rogue").unwrap();
    let crl = |ca: &TestCa| {
        use der::Encode;
        ca.crl(1, &[0x2002]).unwrap().to_der().unwrap()
    };
    std::fs::write(w.dir.join("ca.crl"), crl(&rogue_ca)).unwrap();
    match login(&b, &card).await {
        Err(BrokerError::CardTrust(e)) => {
            assert!(e.0.contains("ca.crl") && e.0.contains("not signed"), "{e}")
        }
        other => panic!("a rogue CRL must stop logins: {other:?}"),
    }
    std::fs::write(w.dir.join("ca.crl"), crl(&w.ca)).unwrap();
    assert_eq!(code(login(&b, &card).await), "login.revoked");
    std::fs::remove_file(w.dir.join("ca.crl")).unwrap();

    // An administrator's request replayed is refused; a non-administrator's too.
    let broker = PartyId::new(NAME).unwrap();
    let out = kagi_signed::request::sign_request(
        &w.admin,
        &broker,
        &AdminRequest::Audit { card: None },
        None,
        signing::now_ms(),
        60_000,
    )
    .unwrap();
    let mut trust = Trust::new();
    trust.add(broker.clone(), *w.broker_signer.verifying_key());
    let first: AdminResponse = kagi_signed::request::open_answer_as(
        &b.admin(&out.bytes).await.unwrap(),
        &out.header,
        &trust,
        signing::now_ms(),
    )
    .unwrap();
    assert!(matches!(first, AdminResponse::Audit(_)));
    let second: AdminResponse = kagi_signed::request::open_answer_as(
        &b.admin(&out.bytes).await.unwrap(),
        &out.header,
        &trust,
        signing::now_ms(),
    )
    .unwrap();
    assert!(
        matches!(second, AdminResponse::Rejected { ref code, .. } if code == "protocol.replayed")
    );
    assert!(b.admin(b"not a message").await.is_err());
}
