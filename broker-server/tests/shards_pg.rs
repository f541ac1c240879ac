//! The shard router against two private PostgreSQL instances (each started for this test on
//! its own port and data directory, and stopped afterwards): cards spread over both, each
//! card's rows only on the shard its id hashes to, the shared tables on both, logins and
//! acts routed by the session token, the administrator's audit merged across shards, and a
//! KEK rotation over both.

use broker_protocol::Assurance;
use broker_protocol::api::{Method, ServicePolicy};
use broker_server::envelope::FileEnvelope;
use broker_server::service::CardTrust;
use broker_server::store::{Shard, jump_hash};
use broker_server::{Broker, Config, Shards};
use kagi_db::Backend;
use kagi_db::testing::PrivatePostgres;
use kagi_signed::PartyId;
use kagi_signed::signing::{Policy, Signer, Trust};
use sha2::Digest;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Jump consistent hash (Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash
/// Algorithm", arXiv:1406.2294) against published reference values: the table in
/// `jump_test.go` of github.com/dgryski/go-jump, "generated from the reference C++ code" of
/// the paper. Row `k` lists the bucket of key `k` for 1, 2, 3, … buckets.
#[test]
fn jump_hash_matches_the_published_reference_values() {
    let table: [(u64, &[u32]); 4] = [
        (0, &[0; 20]),
        (
            1,
            &[0, 0, 0, 0, 0, 0, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 17, 17],
        ),
        (
            0xdead_beef,
            &[0, 1, 2, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 16, 16, 16],
        ),
        (
            0x0ddc_0ffe_ebad_f00d,
            &[0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 15, 15, 15, 15],
        ),
    ];
    for (key, buckets) in table {
        for (i, want) in buckets.iter().enumerate() {
            let n = i as u32 + 1;
            assert_eq!(jump_hash(key, n), *want, "jump_hash({key:#x}, {n})");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgresql_shards() {
    assert!(
        PrivatePostgres::available(),
        "PostgreSQL's server programs are missing: run scripts/setup.sh"
    );
    let a = PrivatePostgres::start("broker-a").unwrap();
    let b = PrivatePostgres::start("broker-b").unwrap();
    let dir = std::env::temp_dir().join(format!("kagi-broker-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    FileEnvelope::new_kek(&dir.join("keys"), "k1").unwrap();
    let ca = test_pki::TestCa::new("pg CA").unwrap();
    std::fs::write(dir.join("ca.der"), ca.certificate_der().unwrap()).unwrap();
    let me = PartyId::new("broker:pg").unwrap();
    let backends = [
        Backend::Postgres(a.url.clone()),
        Backend::Postgres(b.url.clone()),
    ];
    let broker = Broker::new(
        Config {
            name: me.0.clone(),
            signer: Signer::generate(me.clone()).unwrap(),
            assertion_key: p256::ecdsa::SigningKey::from_slice(&[4u8; 32]).unwrap(),
            admin_trust: Trust::new(),
            policy: Policy::new(me),
            card_trust: CardTrust::new(vec![dir.join("ca.der")], vec![]),
            envelope: Arc::new(FileEnvelope::open_dir(&dir.join("keys")).unwrap()),
            default_kek: "k1".into(),
            state_key: Zeroizing::new([2u8; 32]),
            session_secs: 600,
        },
        Shards::open(&backends).await.unwrap(),
    );
    let shards = broker.shards();
    for (id, m) in [("svc-a", Method::Mac), ("svc-b", Method::SignP256)] {
        let p = ServicePolicy {
            id: id.into(),
            method: m,
            min_assurance: Assurance::Card,
            allowed_hours: None,
        };
        shards
            .everywhere(vec![Shard::put_service(&p, 1)])
            .await
            .unwrap();
    }
    let cards: Vec<String> = (0..300).map(|i| format!("PG-CARD-{i}")).collect();
    let services = vec!["svc-a".to_string(), "svc-b".to_string()];
    assert_eq!(broker.enrol_many(&cards, &services).await.unwrap(), 600);

    // Where each card lives, computed independently of the router: jump hash (checked against
    // the published reference values above) of the first eight bytes of SHA-256(card id),
    // over two shards.
    let mut per_shard = [0usize; 2];
    for c in &cards {
        let h = sha2::Sha256::digest(c.as_bytes());
        let key = u64::from_be_bytes(h[..8].try_into().unwrap());
        let home = jump_hash(key, 2) as usize;
        assert_eq!(shards.index_of(c), home, "{c}");
        per_shard[home] += 1;
        for (i, s) in shards.all().iter().enumerate() {
            let has_card = s.card(c).await.unwrap().is_some();
            let has_cred = s.active_credential(c, "svc-a").await.unwrap().is_some();
            assert_eq!(
                (has_card, has_cred),
                (i == home, i == home),
                "{c} on shard {i}"
            );
        }
    }
    assert!(per_shard.iter().all(|n| *n > 100), "{per_shard:?}");
    for s in shards.all() {
        assert!(
            s.service("svc-b").await.unwrap().is_some(),
            "a shared table is missing"
        );
    }

    // Sessions route by their token's shard; an act reaches the card's shard.
    for c in cards.iter().take(20) {
        let i = shards.index_of(c);
        let token = format!("{i}.{}", broker_protocol::api::b64(c.as_bytes()));
        let hash: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        shards.all()[i]
            .commit(vec![Shard::put_session(
                &hash,
                c,
                Assurance::Card,
                i64::MAX / 2,
            )])
            .await
            .unwrap();
        for svc in &services {
            let r = broker
                .act(&broker_protocol::api::Act {
                    session: token.clone(),
                    service: svc.clone(),
                    consent: true,
                    challenge: Some(broker_protocol::api::b64(b"challenge")),
                    nonce: None,
                })
                .await
                .unwrap();
            assert!(r.mac.is_some() || r.signature.is_some());
        }
        // The same token pointed at the other shard finds nothing.
        let wrong = format!("{}.{}", 1 - i, broker_protocol::api::b64(c.as_bytes()));
        assert!(
            broker
                .act(&broker_protocol::api::Act {
                    session: wrong,
                    service: "svc-a".into(),
                    consent: true,
                    challenge: Some("YQ".into()),
                    nonce: None,
                })
                .await
                .is_err()
        );
    }

    // A KEK rotation covers both shards; every record still opens.
    FileEnvelope::new_kek(&dir.join("keys"), "k2").unwrap();
    shards
        .everywhere(vec![Shard::put_setting("current_kek", "k2")])
        .await
        .unwrap();
    let (moved, left) = broker.rewrap_some("k2", u64::MAX).await.unwrap();
    assert_eq!((moved, left), (600, 0));
    let check = broker.verify_records().await.unwrap();
    assert_eq!((check.records, check.opened), (600, 600));
    assert_eq!(check.by_kek.get("k2"), Some(&600));
    std::fs::remove_dir_all(&dir).unwrap();
}
