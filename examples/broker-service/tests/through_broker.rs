//! The example service against a real broker (in process, SQLite): a holder's card login at
//! the broker, the broker's assertion for the service's nonce, and the service's verdict —
//! accepted once; refused when replayed, when made for another service, or for another
//! login; and no assertion at all once the card is revoked.

mod common;

use common::call;

use axum::http::StatusCode;
use broker_protocol::Assurance;
use broker_protocol::api::{Act, AdminRequest, Method, ServicePolicy};
use broker_server::envelope::FileEnvelope;
use broker_server::store::Shard;
use serde_json::json;
use tsm_protocol::PartyId;
use tsm_protocol::signing::{Signer, Trust};

#[tokio::test]
async fn the_service_accepts_holders_only_through_the_broker() {
    let dir = std::env::temp_dir().join(format!("kagi-example-svc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    FileEnvelope::new_kek(&dir.join("keys"), "k1").unwrap();
    let ca = test_pki::TestCa::new("example CA").unwrap();
    std::fs::write(dir.join("ca.der"), ca.certificate_der().unwrap()).unwrap();
    let me = PartyId::new("broker:test").unwrap();
    let admin = Signer::generate(PartyId::new("admin:t").unwrap()).unwrap();
    let mut admins = Trust::new();
    admins.add(admin.party().clone(), *admin.verifying_key());
    let broker = common::broker(&dir, &me, Signer::generate(me.clone()).unwrap(), admins).await;
    for id in ["svc-example", "svc-other"] {
        let p = ServicePolicy {
            id: id.into(),
            method: Method::Assertion,
            min_assurance: Assurance::Card,
            allowed_hours: None,
        };
        broker
            .shards()
            .everywhere(vec![Shard::put_service(&p, 1)])
            .await
            .unwrap();
    }
    let services = vec!["svc-example".to_string(), "svc-other".to_string()];
    let card = common::enrolled_card(&broker, &ca, "EXAMPLE-CARD", 77, &services).await;

    // The holder's card logs in at the broker.
    let session = common::card_login(&broker, card).await;

    let app = kagi_example_service::App::new(
        "http://127.0.0.1:9",
        "broker:test",
        "svc-example",
        broker.keys(),
        Assurance::Card,
    );
    let assertion_for = |service: &str, n: &str| Act {
        session: session.session.clone(),
        service: service.into(),
        consent: true,
        challenge: None,
        nonce: Some(n.into()),
    };
    let (s, start) = call(&app, "/login/start", json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let n = start["nonce"].as_str().unwrap().to_string();
    let a = broker
        .act(&assertion_for("svc-example", &n))
        .await
        .unwrap()
        .assertion
        .unwrap();
    let (s, ok) = call(&app, "/login/finish", json!({"nonce": n, "assertion": a})).await;
    assert_eq!(s, StatusCode::OK, "{ok}");
    assert_eq!(ok["assurance"], Assurance::Card.acr());
    assert_eq!(ok["welcome"].as_str().unwrap().len(), 32, "{ok}");

    // The same login again: the nonce is used up.
    let (s, _) = call(&app, "/login/finish", json!({"nonce": n, "assertion": a})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The old assertion for a new login: refused (another nonce).
    let (_, start) = call(&app, "/login/start", json!({})).await;
    let n2 = start["nonce"].as_str().unwrap().to_string();
    let (s, why) = call(&app, "/login/finish", json!({"nonce": n2, "assertion": a})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{why}");
    // An assertion the broker made for another service: refused.
    let (_, start) = call(&app, "/login/start", json!({})).await;
    let n3 = start["nonce"].as_str().unwrap().to_string();
    let other = broker
        .act(&assertion_for("svc-other", &n3))
        .await
        .unwrap()
        .assertion
        .unwrap();
    let (s, why) = call(
        &app,
        "/login/finish",
        json!({"nonce": n3, "assertion": other}),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        why["error"].as_str().unwrap().contains("svc-other"),
        "{why}"
    );
    // A forged one (signed by another key): refused.
    let (_, start) = call(&app, "/login/start", json!({})).await;
    let n4 = start["nonce"].as_str().unwrap().to_string();
    let (s, _) = call(
        &app,
        "/login/finish",
        json!({"nonce": n4, "assertion": "e30.e30.AAAA"}),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // The card revoked at the broker: no assertion for the next login.
    let out = tsm_protocol::control::sign_request(
        &admin,
        &me,
        &AdminRequest::RevokeCard {
            card: "EXAMPLE-CARD".into(),
        },
        None,
        tsm_protocol::signing::now_ms(),
        60_000,
    )
    .unwrap();
    broker.admin(&out.bytes).await.unwrap();
    let (_, start) = call(&app, "/login/start", json!({})).await;
    let n5 = start["nonce"].as_str().unwrap().to_string();
    assert!(
        broker
            .act(&assertion_for("svc-example", &n5))
            .await
            .is_err()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
