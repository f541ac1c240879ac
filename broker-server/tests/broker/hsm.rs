//! The broker with its keys in SoftHSM2 (issue #17): credentials generated in the token,
//! every act done there and checked the way each service checks it (the MAC key the
//! service was given, the public keys it got); a repeated enrolment does not read an AES
//! key out again; a KEK rotation re-wraps inside the token and every record still opens.
//!
//! PKCS#11 reads `SOFTHSM2_CONF` once per process, so the test runs itself again as a
//! child with a private token's configuration in its environment.

use super::*;

fn hsm_config() -> kagi_hsm::HsmConfig {
    kagi_hsm::HsmConfig {
        module: PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
        token: "kagi".into(),
        key: String::new(),
    }
}

async fn body(pin: &str) {
    kagi_hsm::create_kek(&hsm_config(), pin, "k1").unwrap();
    let envelope = Arc::new(kagi_hsm::HsmEnvelope::open(&hsm_config(), pin).unwrap());
    let mut w = World::new("hsm", 1);
    w.envelope = Some(envelope.clone());
    let b = w.broker().await;
    let card = w.card("CARD-H", 0x4801);
    assert_eq!(
        w.admin(
            &b,
            AdminRequest::EnrolCard {
                card: card.id.clone(),
                holder: "h".into(),
                password: None
            }
        )
        .await,
        AdminResponse::Ok
    );
    let sides = setup_services(&w, &b, &card).await;
    // The records are of the in-HSM form (nothing opens them in memory).
    let shard = Shards::open(&w.backends).await.unwrap();
    for (id, m) in &SERVICES[..3] {
        let c = shard.all()[0]
            .active_credential(&card.id, id)
            .await
            .unwrap()
            .unwrap();
        assert!(c.sealed.in_store_kind().is_some(), "{id} ({m:?})");
        assert!(c.sealed.nonce.is_empty());
    }
    let session = login(&b, &card).await.unwrap();
    for round in 0..2 {
        for ((id, _), side) in SERVICES.iter().zip(&sides) {
            let challenge = format!("challenge {round} for {id}");
            let r = b
                .act(&act(&session, id, challenge.as_bytes()))
                .await
                .unwrap();
            assert!(service_accepts(side, &r, challenge.as_bytes()), "{id}");
            assert!(!service_accepts(side, &r, b"another challenge") || *id == "svc-assert");
        }
        if round == 0 {
            // KEK rotation inside the token, then the same acts again.
            kagi_hsm::create_kek(&hsm_config(), pin, "k2").unwrap();
            let r = w
                .admin(&b, AdminRequest::RotateKek { to: "k2".into() })
                .await;
            assert!(
                matches!(r, AdminResponse::Rotation { ref kek, remaining: 0, .. } if kek == "k2"),
                "{r:?}"
            );
        }
    }
    let check = b.verify_records().await.unwrap();
    assert_eq!((check.records, check.opened), (4, 4), "{check:?}");
    assert_eq!(check.by_kek.get("k2"), Some(&4));
    // Enrolled again at the MAC service: the key is not read out of the HSM again.
    let r = w
        .admin(
            &b,
            AdminRequest::EnrolCredential {
                card: card.id.clone(),
                service: "svc-mac".into(),
            },
        )
        .await;
    assert!(
        matches!(r, AdminResponse::Rejected { ref code, .. } if code == "admin.key-in-hsm"),
        "{r:?}"
    );
    // A service key rotation gives the MAC service a new key, and acts use it.
    let AdminResponse::Credential {
        version: 2,
        shared_key: Some(k2),
        ..
    } = w
        .admin(
            &b,
            AdminRequest::RotateServiceKey {
                card: card.id.clone(),
                service: "svc-mac".into(),
            },
        )
        .await
    else {
        panic!("no new MAC key");
    };
    let r = b.act(&act(&session, "svc-mac", b"fresh")).await.unwrap();
    assert!(service_accepts(&ServiceSide::Mac(k2), &r, b"fresh"));

    // A rotation with an idempotency key: the answer kept for retries holds no copy of the
    // new MAC key (it would open outside the HSM); a retry learns the rotation was done, and
    // it is done once.
    let key = kagi_signed::IdempotencyKey::random().unwrap();
    let rotate = AdminRequest::RotateServiceKey {
        card: card.id.clone(),
        service: "svc-mac".into(),
    };
    let AdminResponse::Credential {
        version: 3,
        shared_key: Some(k3),
        ..
    } = w.admin_with(&b, &rotate, Some(key)).await
    else {
        panic!("no new MAC key");
    };
    let kept = shard.all()[0]
        .idem(&w.admin.party().0, &key.to_hex())
        .await
        .unwrap()
        .expect("the answer is kept for retries");
    let aad = format!(
        "kagi-broker idempotent answer\0{}\0{}",
        w.admin.party().0,
        key.to_hex()
    );
    let plain =
        broker_server::Envelope::open(envelope.as_ref(), aad.as_bytes(), &kept.sealed).unwrap();
    assert!(
        !plain.windows(k3.len()).any(|w| w == k3.as_slice()),
        "the kept answer holds the MAC key"
    );
    let again = w.admin_with(&b, &rotate, Some(key)).await;
    assert!(
        matches!(again, AdminResponse::Rejected { ref code, .. } if code == "admin.key-given-once"),
        "{again:?}"
    );
    let now = shard.all()[0]
        .active_credential(&card.id, "svc-mac")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.version, 3, "rotated once");

    // A KEK that may not wrap keys: the rotation to it is refused at its start, nothing
    // changes, and every record still opens under the KEK it was under.
    kagi_hsm::testing::create_encrypt_only_kek(&hsm_config(), pin, "k-old").unwrap();
    let r = w
        .admin(&b, AdminRequest::RotateKek { to: "k-old".into() })
        .await;
    assert!(
        matches!(r, AdminResponse::Rejected { ref code, .. } if code == "admin.kek-cannot-wrap"),
        "{r:?}"
    );
    assert_eq!(b.current_kek().await.unwrap(), "k2");
    let check = b.verify_records().await.unwrap();
    assert_eq!(check.opened, check.records, "{check:?}");
    assert!(check.failed.is_empty(), "{check:?}");
    assert_eq!(check.by_kek.get("k-old"), None);
    let _ = std::fs::remove_dir_all(&w.dir);
}

#[test]
fn the_broker_acts_with_keys_only_inside_softhsm() {
    if let Some(pin) =
        kagi_hsm::testing::in_private_softhsm("hsm::the_broker_acts_with_keys_only_inside_softhsm")
    {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(body(&pin));
    }
}
