//! KEK rotation, interrupted and continued by another instance; a stolen database that
//! opens nothing without the key store.

use broker_protocol::Assurance;
use broker_protocol::api::{AdminRequest, AdminResponse, Method};
use broker_server::envelope::FileEnvelope;
use broker_server::{Envelope, Shards};
use kagi_db::Backend;

use super::*;

/// Counts the records under each KEK by opening the database directly.
async fn keks_in_use(w: &World) -> Vec<(String, i64)> {
    let shards = Shards::open(&w.backends).await.unwrap();
    let mut out = Vec::new();
    for k in ["k1", "k2"] {
        let mut n = 0;
        for s in shards.all() {
            n += s
                .credentials_not_under(k, 1_000_000, 0)
                .await
                .unwrap()
                .len() as i64;
        }
        out.push((k.to_string(), n));
    }
    out
}

/// Enrols `card` (no password) and a credential of it for `service`.
async fn enrol(w: &World, b: &Broker, card: &str, holder: &str, service: &str) {
    w.admin(
        b,
        AdminRequest::EnrolCard {
            card: card.into(),
            holder: holder.into(),
            password: None,
        },
    )
    .await;
    w.admin(
        b,
        AdminRequest::EnrolCredential {
            card: card.into(),
            service: service.into(),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kek_rotation_interrupted_and_continued_by_another_instance() {
    let w = World::new("rotation", 2);
    let a = w.broker().await;
    w.admin(
        &a,
        AdminRequest::RegisterService(policy("svc", Method::Mac, Assurance::Card)),
    )
    .await;
    let cards: Vec<Card> = (0..3)
        .map(|i| w.card(&format!("CARD-R{i}"), 0x3000 + i))
        .collect();
    let mut shared = Vec::new();
    for c in &cards {
        w.admin(
            &a,
            AdminRequest::EnrolCard {
                card: c.id.clone(),
                holder: c.id.clone(),
                password: None,
            },
        )
        .await;
        let AdminResponse::Credential { shared_key, .. } = w
            .admin(
                &a,
                AdminRequest::EnrolCredential {
                    card: c.id.clone(),
                    service: "svc".into(),
                },
            )
            .await
        else {
            panic!()
        };
        shared.push(shared_key.unwrap());
    }
    // Many more records, straight into the shards (the same path enrolment takes).
    for i in 0..200 {
        enrol(&w, &a, &format!("BULK-{i}"), &format!("bulk-{i}"), "svc").await;
    }
    // Both shards are used.
    for s in a.shards().all() {
        assert!(
            !s.credentials_not_under("none", 1, 0)
                .await
                .unwrap()
                .is_empty()
        );
    }

    // The new KEK appears in the key store; instance A starts the rotation and "dies" after
    // 50 records (its budget).
    FileEnvelope::new_kek(&w.dir.join("keys"), "k2").unwrap();
    let a = w.broker().await;
    let b = w.broker().await;
    a.shards()
        .everywhere(vec![broker_server::store::Shard::put_setting(
            "current_kek",
            "k2",
        )])
        .await
        .unwrap();
    let (done, remaining) = a.rewrap_some("k2", 50).await.unwrap();
    assert_eq!((done, remaining), (50, 153));
    drop(a);
    // Every record is whole, under one KEK or the other: the holders keep working meanwhile.
    let s = login(&b, &cards[0]).await.unwrap();
    let r = b.act(&act(&s, "svc", b"mid-rotation")).await.unwrap();
    assert!(service_accepts(
        &ServiceSide::Mac(shared[0].clone()),
        &r,
        b"mid-rotation"
    ));
    // New enrolments go under the new KEK.
    w.admin(
        &b,
        AdminRequest::EnrolCard {
            card: "LATE".into(),
            holder: "late".into(),
            password: None,
        },
    )
    .await;
    w.admin(
        &b,
        AdminRequest::EnrolCredential {
            card: "LATE".into(),
            service: "svc".into(),
        },
    )
    .await;
    // Instance B's background work finishes it.
    while b.sweep().await.unwrap() > 0 {}
    assert_eq!(
        keks_in_use(&w).await,
        vec![("k1".into(), 204), ("k2".into(), 0)]
    );

    // The old KEK gone from the key store: everything still opens.
    std::fs::remove_file(w.dir.join("keys/kek-k1.key")).unwrap();
    let c = w.broker().await;
    for (card, key) in cards.iter().zip(&shared) {
        let s = login(&c, card).await.unwrap();
        let r = c.act(&act(&s, "svc", b"after")).await.unwrap();
        assert!(service_accepts(
            &ServiceSide::Mac(key.clone()),
            &r,
            b"after"
        ));
    }
    // Rotating to a KEK the store does not hold is refused and changes nothing.
    let r = w
        .admin(&c, AdminRequest::RotateKek { to: "k9".into() })
        .await;
    assert!(
        matches!(r, AdminResponse::Rejected { ref code, .. } if code == "admin.unknown-kek"),
        "{r:?}"
    );
    assert_eq!(c.current_kek().await.unwrap(), "k2");

    // A service key rotation: the old key stops, the new one works, one active version.
    let AdminResponse::Credential {
        version,
        shared_key,
        ..
    } = w
        .admin(
            &c,
            AdminRequest::RotateServiceKey {
                card: cards[1].id.clone(),
                service: "svc".into(),
            },
        )
        .await
    else {
        panic!()
    };
    assert_eq!(version, 2);
    let s = login(&c, &cards[1]).await.unwrap();
    let r = c.act(&act(&s, "svc", b"v2")).await.unwrap();
    assert!(service_accepts(
        &ServiceSide::Mac(shared_key.unwrap()),
        &r,
        b"v2"
    ));
    assert!(!service_accepts(
        &ServiceSide::Mac(shared[1].clone()),
        &r,
        b"v2"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_database_opens_nothing_without_the_key_store() {
    let w = World::new("stolen", 1);
    let b = w.broker().await;
    w.admin(
        &b,
        AdminRequest::RegisterService(policy("svc", Method::SignP256, Assurance::Card)),
    )
    .await;
    w.admin(
        &b,
        AdminRequest::EnrolCard {
            card: "CARD-S".into(),
            holder: "s".into(),
            password: None,
        },
    )
    .await;
    w.admin(
        &b,
        AdminRequest::EnrolCredential {
            card: "CARD-S".into(),
            service: "svc".into(),
        },
    )
    .await;
    drop(b);
    // The thief copies the database file and has a key store of their own.
    let stolen = w.dir.join("stolen.db");
    std::fs::copy(w.dir.join("shard0.db"), &stolen).unwrap();
    let shards = Shards::open(&[Backend::Sqlite(stolen)]).await.unwrap();
    let cred = shards.all()[0]
        .active_credential("CARD-S", "svc")
        .await
        .unwrap()
        .unwrap();
    let own = w.dir.join("thief");
    std::fs::create_dir_all(&own).unwrap();
    FileEnvelope::new_kek(&own, "k1").unwrap();
    let thief = FileEnvelope::open_dir(&own).unwrap();
    let aad = broker_server::store::CredentialRow::aad("CARD-S", "svc", 1);
    assert!(thief.open(&aad, &cred.sealed).is_err());
    // With the real key store it opens (so the refusal above is about the key, not the
    // record), and only for its own row.
    let real = FileEnvelope::open_dir(&w.dir.join("keys")).unwrap();
    let secret = real.open(&aad, &cred.sealed).unwrap();
    assert_eq!(secret.len(), 32);
    assert!(
        real.open(
            &broker_server::store::CredentialRow::aad("CARD-T", "svc", 1),
            &cred.sealed
        )
        .is_err()
    );
    // The stored bytes are not the key.
    let db = std::fs::read(w.dir.join("shard0.db")).unwrap();
    assert!(!leaks(&db, &secret));
}

/// A record that does not open (its wrapped data key damaged) while the key store works is
/// set aside with an audit entry: the rotation moves every other record and is not stopped
/// by it, now or at the next sweep; `verify-records` still names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_does_not_open_is_quarantined_and_the_rotation_goes_on() {
    let w = World::new("quarantine", 1);
    let a = w.broker().await;
    w.admin(
        &a,
        AdminRequest::RegisterService(policy("svc", Method::Mac, Assurance::Card)),
    )
    .await;
    for i in 0..6 {
        let card = format!("Q-{i}");
        enrol(&w, &a, &card, &card, "svc").await;
    }
    let shard = &a.shards().all()[0];
    shard
        .commit(vec![kagi_db::Stmt::one(
            "UPDATE credentials SET wrapped_dek = $1 WHERE card = $2",
            vec![vec![0u8; 40].into(), "Q-3".into()],
        )])
        .await
        .unwrap();
    FileEnvelope::new_kek(&w.dir.join("keys"), "k2").unwrap();
    let a = w.broker().await;
    a.shards()
        .everywhere(vec![broker_server::store::Shard::put_setting(
            "current_kek",
            "k2",
        )])
        .await
        .unwrap();
    let (done, remaining) = a.rewrap_some("k2", 1_000).await.unwrap();
    assert_eq!((done, remaining), (5, 0));
    // The next sweep does not trip over it either.
    assert_eq!(a.sweep().await.unwrap(), 0);
    assert_eq!(a.shards().all()[0].count_quarantined().await.unwrap(), 1);
    let trail = a.shards().all()[0].audit_trail(Some("Q-3")).await.unwrap();
    assert!(
        trail
            .iter()
            .any(|e| e.event == "kek-rotation" && e.outcome.starts_with("quarantined")),
        "{trail:?}"
    );
    let check = a.verify_records().await.unwrap();
    assert_eq!((check.records, check.opened), (6, 5));
    assert!(
        check.failed[0].starts_with("Q-3 / svc"),
        "{:?}",
        check.failed
    );
}
