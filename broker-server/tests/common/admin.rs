//! The administrator's signed request, shared by the broker's test worlds (`broker`, `races`).

use broker_protocol::api::{AdminRequest, AdminResponse};
use broker_server::Broker;
use kagi_signed::ids::PartyId;
use kagi_signed::signing::{self, Signer, Trust};

/// Signs `req` as `admin` for the broker named `name` (with the idempotency key `key`), sends
/// it to `b` and opens the answer with the broker's key `broker`.
pub(crate) async fn signed_admin(
    admin: &Signer,
    name: &str,
    broker: &Signer,
    b: &Broker,
    req: &AdminRequest,
    key: Option<kagi_signed::IdempotencyKey>,
) -> AdminResponse {
    let party = PartyId::new(name).unwrap();
    let out =
        kagi_signed::request::sign_request(admin, &party, req, key, signing::now_ms(), 60_000)
            .unwrap();
    let answer = b.admin(&out.bytes).await.unwrap();
    let mut trust = Trust::new();
    trust.add(party, *broker.verifying_key());
    kagi_signed::request::open_answer_as(&answer, &out.header, &trust, signing::now_ms()).unwrap()
}
