//! What the example service's tests share: the broker they log in through.

use broker_protocol::api::{AdminRequest, AdminResponse};
use broker_server::envelope::FileEnvelope;
use broker_server::service::CardTrust;
use broker_server::{Broker, Config, Shards};
use std::path::Path;
use std::sync::Arc;
use tsm_protocol::PartyId;
use tsm_protocol::signing::{Policy, Signer, Trust};

/// A broker named `me` signing with `signer`, trusting `admins`, on SQLite in `dir` with the
/// file keys in `dir/keys` and the card CA `dir/ca.der`.
pub async fn broker(dir: &Path, me: &PartyId, signer: Signer, admins: Trust) -> Broker {
    Broker::new(
        Config {
            name: me.0.clone(),
            signer,
            assertion_key: p256::ecdsa::SigningKey::from_slice(&[6u8; 32]).unwrap(),
            admin_trust: admins,
            policy: Policy::new(me.clone()),
            card_trust: CardTrust::new(vec![dir.join("ca.der")], vec![]),
            envelope: Arc::new(FileEnvelope::open_dir(&dir.join("keys")).unwrap()),
            default_kek: "k1".into(),
            state_key: zeroize::Zeroizing::new([8u8; 32]),
            session_secs: 600,
        },
        Shards::open(&[kagi_db::Backend::Sqlite(dir.join("b.db"))])
            .await
            .unwrap(),
    )
}

/// A JSON POST to the example service's router, and its status and JSON answer (`null` when
/// the body is not JSON).
#[allow(dead_code)] // not every test binary calls the service
pub async fn call(
    app: &Arc<kagi_example_service::App>,
    path: &str,
    body: serde_json::Value,
) -> (axum::http::StatusCode, serde_json::Value) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let req = axum::http::Request::post(path)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let resp = kagi_example_service::router(app.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// An administrator's signed request to the broker (a fresh idempotency key), and its
/// answer, opened with the broker's key in `trust`.
#[allow(dead_code)] // a test binary that only revokes signs its one request itself
pub async fn admin(
    broker: &Broker,
    admin: &Signer,
    me: &PartyId,
    trust: &Trust,
    req: AdminRequest,
) -> AdminResponse {
    let out = tsm_protocol::control::sign_request(
        admin,
        me,
        &req,
        Some(tsm_protocol::IdempotencyKey::random().unwrap()),
        tsm_protocol::signing::now_ms(),
        60_000,
    )
    .unwrap();
    let answer = broker.admin(&out.bytes).await.unwrap();
    tsm_protocol::control::open_answer_as::<AdminResponse>(
        &answer,
        &out.header,
        trust,
        tsm_protocol::signing::now_ms(),
    )
    .unwrap()
}

/// A holder's card: its RSA key and an authentication certificate (`card`, `serial`) from
/// `ca`, valid from a minute ago for an hour, enrolled at `broker` for `services`.
#[allow(dead_code)] // not every test binary logs a card in
pub async fn enrolled_card(
    broker: &Broker,
    ca: &test_pki::TestCa,
    card: &str,
    serial: u32,
    services: &[String],
) -> (rsa::PrivateKey, Vec<u8>) {
    use der::Encode;
    let key = test_pki::generate_rsa_key().unwrap();
    let now = std::time::SystemTime::now();
    let cert = ca
        .issue_auth(
            &key.to_public_key(),
            card,
            serial,
            now - std::time::Duration::from_secs(60),
            now + std::time::Duration::from_secs(3600),
        )
        .unwrap()
        .to_der()
        .unwrap();
    broker
        .enrol_many(&[card.to_string()], services)
        .await
        .unwrap();
    (key, cert)
}

/// The card `(key, cert)` logs in at `broker` (the broker's challenge signed with the key).
#[allow(dead_code)] // not every test binary logs a card in
pub async fn card_login(
    broker: &Broker,
    (key, cert): (rsa::PrivateKey, Vec<u8>),
) -> broker_protocol::api::Session {
    use broker_protocol::api;
    use rsa::signature::{SignatureEncoding, Signer as _};
    let c = broker.challenge().unwrap();
    let nonce = api::unb64(&c.nonce).unwrap();
    let sig = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key)
        .sign(&api::login_message(&c.broker, &nonce))
        .to_vec();
    broker
        .login_card(&api::CardLogin {
            nonce: c.nonce,
            certificate: api::b64(&cert),
            signature: api::b64(&sig),
        })
        .await
        .unwrap()
}
