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
