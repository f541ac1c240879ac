//! The example service in back-channel mode against a real broker over HTTP (in process,
//! SQLite): the holder's client hands the service only a one-time code; the service redeems
//! it at the broker with its own signed request and checks the assertion it receives, with
//! its nonce login unchanged. A code is accepted once; a replayed code, a code made for
//! another login's nonce, or one made for another service is refused.

mod common;

use common::call;

use axum::http::StatusCode;
use broker_protocol::Assurance;
use broker_protocol::api::{
    self, Act, AdminRequest, AdminResponse, BackChannel, Method, ServicePolicy,
};
use broker_server::envelope::FileEnvelope;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tsm_protocol::PartyId;
use tsm_protocol::signing::{Signer, Trust};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_redeems_codes_at_the_broker() {
    use p256::pkcs8::EncodePublicKey;
    let dir = std::env::temp_dir().join(format!("kagi-example-bc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    FileEnvelope::new_kek(&dir.join("keys"), "k1").unwrap();
    let ca = test_pki::TestCa::new("example CA").unwrap();
    std::fs::write(dir.join("ca.der"), ca.certificate_der().unwrap()).unwrap();
    let me = PartyId::new("broker:test").unwrap();
    let admin = Signer::generate(PartyId::new("admin:t").unwrap()).unwrap();
    let mut admins = Trust::new();
    admins.add(admin.party().clone(), *admin.verifying_key());
    let broker_signer = Signer::generate(me.clone()).unwrap();
    let mut broker_trust = Trust::new();
    broker_trust.add(me.clone(), *broker_signer.verifying_key());
    let broker = Arc::new(common::broker(&dir, &me, broker_signer, admins).await);
    let admin_req = |req: AdminRequest| common::admin(&broker, &admin, &me, &broker_trust, req);
    // Two services in code mode, each with its own key.
    let keys: Vec<Signer> = ["svc-example", "svc-other"]
        .iter()
        .map(|id| Signer::generate(PartyId::new(&api::service_party(id)).unwrap()).unwrap())
        .collect();
    for (id, k) in ["svc-example", "svc-other"].iter().zip(&keys) {
        let p = ServicePolicy {
            id: (*id).into(),
            method: Method::Assertion,
            min_assurance: Assurance::Card,
            allowed_hours: None,
        };
        assert_eq!(
            admin_req(AdminRequest::RegisterService(p)).await,
            AdminResponse::Ok
        );
        let spki = k
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec();
        assert_eq!(
            admin_req(AdminRequest::SetBackChannel {
                service: (*id).into(),
                back_channel: BackChannel::Code {
                    service_key: spki,
                    code_secs: 60,
                },
            })
            .await,
            AdminResponse::Ok
        );
    }
    let card = common::enrolled_card(
        &broker,
        &ca,
        "BC-EXAMPLE-CARD",
        78,
        &["svc-example".to_string(), "svc-other".to_string()],
    )
    .await;

    // The broker over HTTP, where the service redeems.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(broker_server::http::serve(
        broker.clone(),
        listener,
        async {
            let _ = stopped.await;
        },
        None,
        Duration::from_secs(3600),
    ));

    // The holder logs in at the broker with the card.
    let session = common::card_login(&broker, card).await;
    let code_for = |service: &str, n: &str| {
        let (broker, a) = (
            broker.clone(),
            Act {
                session: session.session.clone(),
                service: service.into(),
                consent: true,
                challenge: None,
                nonce: Some(n.into()),
            },
        );
        async move {
            let r = broker.act(&a).await.unwrap();
            assert!(
                r.assertion.is_none(),
                "the holder's client gets no assertion"
            );
            r.code.unwrap()
        }
    };

    let app = kagi_example_service::App::with_back_channel(
        &url,
        "broker:test",
        "svc-example",
        broker.keys(),
        Assurance::Card,
        Signer::new(keys[0].party().clone(), {
            use p256::pkcs8::DecodePrivateKey;
            p256::ecdsa::SigningKey::from_pkcs8_pem(&keys[0].to_pkcs8_pem().unwrap()).unwrap()
        }),
        me.clone(),
    );
    let start = || async {
        call(&app, "/login/start", json!({})).await.1["nonce"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let n = start().await;
    let code = code_for("svc-example", &n).await;
    let (s, ok) = call(&app, "/login/finish", json!({"nonce": n, "code": code})).await;
    assert_eq!(s, StatusCode::OK, "{ok}");
    assert_eq!(ok["assurance"], Assurance::Card.acr());
    assert_eq!(ok["welcome"].as_str().unwrap().len(), 32, "{ok}");

    // The same code for a new login: the broker refuses it (redeemed already).
    let n2 = start().await;
    let (s, why) = call(&app, "/login/finish", json!({"nonce": n2, "code": code})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        why["error"].as_str().unwrap().contains("redeem.replayed"),
        "{why}"
    );
    // A code made for another login's nonce: refused by the broker.
    let n3 = start().await;
    let n4 = start().await;
    let code = code_for("svc-example", &n3).await;
    let (s, why) = call(&app, "/login/finish", json!({"nonce": n4, "code": code})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        why["error"]
            .as_str()
            .unwrap()
            .contains("redeem.wrong-challenge"),
        "{why}"
    );
    // A code the broker made for another service: refused.
    let n5 = start().await;
    let code = code_for("svc-other", &n5).await;
    let (s, why) = call(&app, "/login/finish", json!({"nonce": n5, "code": code})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        why["error"]
            .as_str()
            .unwrap()
            .contains("redeem.misdirected"),
        "{why}"
    );

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
