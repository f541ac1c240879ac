//! Idempotency keys on the administrators' requests that change credentials, over SQLite
//! and a private PostgreSQL: a key rotation retried with the same key (the same bytes again,
//! as a client retries after a lost answer, or a newly signed message) rotates once and
//! answers the first answer each time, also when the retries race; the same key for another
//! request is refused; a rotation without a key is refused.

use super::*;
use kagi_db::testing::PrivatePostgres;
use kagi_signed::IdempotencyKey;

fn rotate(card: &str, service: &str) -> AdminRequest {
    AdminRequest::RotateServiceKey {
        card: card.into(),
        service: service.into(),
    }
}

/// The signed bytes of a request, and the header to open its answer with.
fn signed(w: &World, req: &AdminRequest, key: IdempotencyKey) -> kagi_signed::request::Outgoing {
    kagi_signed::request::sign_request(
        &w.admin,
        &PartyId::new(NAME).unwrap(),
        req,
        Some(key),
        signing::now_ms(),
        60_000,
    )
    .unwrap()
}

fn open(w: &World, answer: &[u8], out: &kagi_signed::request::Outgoing) -> AdminResponse {
    let mut trust = Trust::new();
    trust.add(
        PartyId::new(NAME).unwrap(),
        *w.broker_signer.verifying_key(),
    );
    kagi_signed::request::open_answer_as(answer, &out.header, &trust, signing::now_ms()).unwrap()
}

fn version(r: &AdminResponse) -> u32 {
    match r {
        AdminResponse::Credential { version, .. } => *version,
        other => panic!("not a credential: {other:?}"),
    }
}

/// How many key rotations the audit trail of `card` records.
async fn rotations(w: &World, b: &Broker, card: &str) -> usize {
    let AdminResponse::Audit(trail) = w
        .admin(
            b,
            AdminRequest::Audit {
                card: Some(card.into()),
            },
        )
        .await
    else {
        panic!()
    };
    trail.iter().filter(|e| e.event == "rotate-key").count()
}

async fn scenario(w: &World) {
    let b = w.broker().await;
    let card = w.card("IDEM-CARD", 51);
    w.admin(
        &b,
        AdminRequest::EnrolCard {
            card: card.id.clone(),
            holder: "idem".into(),
            password: None,
        },
    )
    .await;
    setup_services(w, &b, &card).await;

    // The same signed bytes twice (the first answer lost): one rotation, the same answer.
    let k1 = IdempotencyKey::random().unwrap();
    let out = signed(w, &rotate(&card.id, "svc-mac"), k1);
    let first = open(w, &b.admin(&out.bytes).await.unwrap(), &out);
    let again = open(w, &b.admin(&out.bytes).await.unwrap(), &out);
    assert_eq!(version(&first), 2);
    assert_eq!(
        again, first,
        "the retry gets the first answer, MAC key included"
    );
    // A newly signed message with the same key: the same again.
    let third = w
        .admin_with(&b, &rotate(&card.id, "svc-mac"), Some(k1))
        .await;
    assert_eq!(third, first);
    assert_eq!(rotations(w, &b, &card.id).await, 1);
    // The MAC key of that answer is the one the broker uses.
    let s = login(&b, &card).await.unwrap();
    let AdminResponse::Credential { shared_key, .. } = &first else {
        panic!()
    };
    let r = b.act(&act(&s, "svc-mac", b"idem")).await.unwrap();
    assert!(service_accepts(
        &ServiceSide::Mac(shared_key.clone().unwrap()),
        &r,
        b"idem"
    ));

    // The same key for another request: refused, nothing rotated.
    let r = w
        .admin_with(&b, &rotate(&card.id, "svc-p256"), Some(k1))
        .await;
    assert!(
        matches!(&r, AdminResponse::Rejected { code, .. } if code == "admin.idempotency-conflict"),
        "{r:?}"
    );
    // No key: refused.
    let r = w.admin_with(&b, &rotate(&card.id, "svc-mac"), None).await;
    assert!(
        matches!(&r, AdminResponse::Rejected { code, .. } if code == "admin.idempotency-key-missing"),
        "{r:?}"
    );
    assert_eq!(rotations(w, &b, &card.id).await, 1);

    // Racing retries of one rotation (N messages, one key, two broker instances): one
    // rotation, and every answer is its answer.
    const N: usize = 8;
    let k2 = IdempotencyKey::random().unwrap();
    let other = w.broker().await;
    let mut tasks = Vec::new();
    for i in 0..N {
        let inst = if i % 2 == 0 { b.clone() } else { other.clone() };
        let out = signed(w, &rotate(&card.id, "svc-mac"), k2);
        tasks.push(tokio::spawn(async move {
            (inst.admin(&out.bytes).await.unwrap(), out)
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        let (bytes, out) = t.await.unwrap();
        answers.push(open(w, &bytes, &out));
    }
    assert_eq!(version(&answers[0]), 3, "{:?}", answers[0]);
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert_eq!(rotations(w, &b, &card.id).await, 2);
    // A new key rotates again.
    let r = w.admin(&b, rotate(&card.id, "svc-mac")).await;
    assert_eq!(version(&r), 4);
}

/// Two shards: the key of one card's rotation, used again for a card on the other shard, is
/// refused as a conflict there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_one_request_across_shards() {
    let w = World::new("idem-shards", 2);
    let b = w.broker().await;
    // Two cards on different shards.
    let ids: Vec<String> = (0..64).map(|i| format!("IDEM-SHARD-{i}")).collect();
    let first = ids[0].clone();
    let second = ids
        .iter()
        .find(|c| b.shards().index_of(c) != b.shards().index_of(&first))
        .unwrap()
        .clone();
    for (n, id) in [&first, &second].into_iter().enumerate() {
        let card = w.card(id, 60 + n as u32);
        w.admin(
            &b,
            AdminRequest::EnrolCard {
                card: card.id.clone(),
                holder: format!("h-{n}"),
                password: None,
            },
        )
        .await;
        setup_services(&w, &b, &card).await;
    }
    let k = IdempotencyKey::random().unwrap();
    let r = w.admin_with(&b, &rotate(&first, "svc-mac"), Some(k)).await;
    assert_eq!(version(&r), 2);
    let r = w.admin_with(&b, &rotate(&second, "svc-mac"), Some(k)).await;
    assert!(
        matches!(&r, AdminResponse::Rejected { code, .. } if code == "admin.idempotency-conflict"),
        "{r:?}"
    );
    assert_eq!(rotations(&w, &b, &second).await, 0);
    std::fs::remove_dir_all(&w.dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_rotation_sqlite() {
    let w = World::new("idem", 1);
    scenario(&w).await;
    std::fs::remove_dir_all(&w.dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_rotation_postgres() {
    assert!(
        PrivatePostgres::available(),
        "PostgreSQL's server programs are missing: run scripts/setup.sh"
    );
    let pg = PrivatePostgres::start("broker-idem").unwrap();
    let d = dir("idem-pg");
    FileEnvelope::new_kek(&d.join("keys"), "k1").unwrap();
    let w = World::with_backends(d, vec![Backend::Postgres(pg.url.clone())]);
    scenario(&w).await;
    std::fs::remove_dir_all(&w.dir).unwrap();
}
