//! Records of the older data-key form (a data key wrapped under an encrypt-only KEK with
//! AES-GCM, the credential encrypted under the data key in software) converted to the in-HSM
//! form by the KEK rotation (issue #17). The old records are written by SQL, every byte of
//! them computed here (the data key wrapped with a raw `C_Encrypt` under the old KEK, the
//! credential sealed with the `aes-gcm` crate), never by the broker. After the rotation each
//! key credential is of the in-HSM form, the rotation says how many it converted, acts give
//! the answers computed here from the known keys, and they come from inside the token: the
//! key store is never asked to open a record or unwrap a data key again. Two instances
//! converting together convert each record once (the conditional update of each row).

use super::*;
use broker_protocol::envelope::{EnvelopeError, KeyKind, KeyUse, SealedRecord};
use broker_server::Envelope as _;
use std::sync::atomic::{AtomicU64, Ordering};

fn hsm_config() -> kagi_hsm::HsmConfig {
    kagi_hsm::HsmConfig {
        module: PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
        token: "kagi".into(),
        key: String::new(),
    }
}

/// The HSM key store, counting what a test must see happen (or not).
struct Counting {
    inner: Arc<kagi_hsm::HsmEnvelope>,
    opens: AtomicU64,
    unwraps: AtomicU64,
    inside: AtomicU64,
}

impl broker_server::Envelope for Counting {
    fn keks(&self) -> Vec<String> {
        self.inner.keks()
    }
    fn wrap_dek(&self, kek: &str, dek: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        self.inner.wrap_dek(kek, dek)
    }
    fn unwrap_dek(&self, kek: &str, w: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap_dek(kek, w)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn refresh(&self) -> Result<(), EnvelopeError> {
        self.inner.refresh()
    }
    fn generate(
        &self,
        kek: &str,
        aad: &[u8],
        kind: KeyKind,
    ) -> Result<Option<broker_protocol::envelope::Generated>, EnvelopeError> {
        self.inner.generate(kek, aad, kind)
    }
    fn use_key(
        &self,
        aad: &[u8],
        r: &SealedRecord,
        u: KeyUse<'_>,
    ) -> Result<Option<Vec<u8>>, EnvelopeError> {
        let out = self.inner.use_key(aad, r, u)?;
        if out.is_some() {
            self.inside.fetch_add(1, Ordering::SeqCst);
        }
        Ok(out)
    }
    fn holds_inside(&self, kek: &str) -> Result<bool, EnvelopeError> {
        self.inner.holds_inside(kek)
    }
    fn converts_to(&self, kek: &str) -> Result<bool, EnvelopeError> {
        self.inner.converts_to(kek)
    }
    fn convert_row(
        &self,
        aad: &[u8],
        r: &SealedRecord,
        to: &str,
        kind: KeyKind,
    ) -> Result<Option<SealedRecord>, EnvelopeError> {
        self.inner.convert_row(aad, r, to, kind)
    }
    fn shared_secret(
        &self,
        aad: &[u8],
        r: &SealedRecord,
    ) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        self.inner.shared_secret(aad, r)
    }
    fn check(&self, aad: &[u8], r: &SealedRecord) -> Result<(), EnvelopeError> {
        self.inner.check(aad, r)
    }
    fn rewrap_row(
        &self,
        aad: &[u8],
        r: &SealedRecord,
        to: &str,
    ) -> Result<SealedRecord, EnvelopeError> {
        self.inner.rewrap_row(aad, r, to)
    }
    fn seal(&self, kek: &str, aad: &[u8], p: &[u8]) -> Result<SealedRecord, EnvelopeError> {
        self.inner.seal(kek, aad, p)
    }
    fn open(&self, aad: &[u8], r: &SealedRecord) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        self.inner.open(aad, r)
    }
    fn rewrap(&self, r: &SealedRecord, to: &str) -> Result<SealedRecord, EnvelopeError> {
        self.inner.rewrap(r, to)
    }
}

fn rand<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).unwrap();
    b
}

/// A record of the data-key form for `(card, service, 1)` holding `secret`, under `kek`,
/// written by SQL; every byte computed here.
async fn write_old_record(
    shard: &broker_server::store::Shard,
    pin: &str,
    kek: &str,
    card: &str,
    service: &str,
    secret: &[u8],
) {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let dek = rand::<32>();
    let nonce = rand::<12>();
    let row = format!("kagi-broker credential\0{card}\0{service}\01");
    let ciphertext = aes_gcm::Aes256Gcm::new(&dek.into())
        .encrypt(
            &nonce.into(),
            Payload {
                msg: secret,
                aad: row.as_bytes(),
            },
        )
        .unwrap();
    let iv = rand::<12>();
    let wrapped =
        kagi_hsm::testing::encrypt_under_kek(&hsm_config(), pin, kek, iv, kek.as_bytes(), &dek)
            .unwrap();
    shard
        .commit(vec![kagi_db::Stmt::one(
            "INSERT INTO credentials (card, service, version, state, kek, wrapped_dek, nonce, ciphertext, public_key, pairwise, created_at)
             VALUES ($1, $2, 1, 'active', $3, $4, $5, $6, NULL, $7, 0)",
            vec![
                card.into(),
                service.into(),
                kek.into(),
                [&iv[..], &wrapped].concat().into(),
                nonce.to_vec().into(),
                ciphertext.into(),
                format!("pairwise-{card}-{service}").into(),
            ],
        )])
        .await
        .unwrap();
}

fn cmac(key: &[u8], m: &[u8]) -> Vec<u8> {
    use cmac::Mac;
    let mut mac = <cmac::Cmac<aes::Aes128> as cmac::KeyInit>::new_from_slice(key).unwrap();
    mac.update(m);
    mac.finalize().into_bytes().to_vec()
}

async fn enrol(w: &World, b: &Broker, card: &Card) {
    let r = w
        .admin(
            b,
            AdminRequest::EnrolCard {
                card: card.id.clone(),
                holder: card.id.clone(),
                password: None,
            },
        )
        .await;
    assert_eq!(r, AdminResponse::Ok);
}

/// The acts at the three key services check against the known keys.
async fn acts_check(
    b: &Broker,
    card: &Card,
    mac_key: &[u8],
    p256: &p256::ecdsa::SigningKey,
    rsa_key: &rsa::PrivateKey,
    round: &str,
) {
    use p256::ecdsa::signature::Verifier as _;
    let session = login(b, card).await.unwrap();
    let c = format!("challenge {round}");
    let r = b
        .act(&act(&session, "svc-mac", c.as_bytes()))
        .await
        .unwrap();
    assert_eq!(
        r.mac.as_deref().and_then(api::unb64),
        Some(cmac(mac_key, c.as_bytes())),
        "{round}"
    );
    let r = b
        .act(&act(&session, "svc-p256", c.as_bytes()))
        .await
        .unwrap();
    let sig =
        p256::ecdsa::Signature::from_slice(&api::unb64(r.signature.as_deref().unwrap()).unwrap())
            .unwrap();
    assert!(
        p256.verifying_key().verify(c.as_bytes(), &sig).is_ok(),
        "{round}"
    );
    let r = b
        .act(&act(&session, "svc-rsa", c.as_bytes()))
        .await
        .unwrap();
    let sig = rsa::pkcs1v15::Signature::try_from(
        api::unb64(r.signature.as_deref().unwrap())
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    assert!(
        rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(rsa_key.to_public_key())
            .verify(c.as_bytes(), &sig)
            .is_ok(),
        "{round}"
    );
}

async fn body(pin: &str) {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    kagi_hsm::testing::create_encrypt_only_kek(&hsm_config(), pin, "k-old").unwrap();
    kagi_hsm::create_kek(&hsm_config(), pin, "k2").unwrap();
    let hsm = Arc::new(kagi_hsm::HsmEnvelope::open(&hsm_config(), pin).unwrap());
    let counting = Arc::new(Counting {
        inner: hsm.clone(),
        opens: AtomicU64::new(0),
        unwraps: AtomicU64::new(0),
        inside: AtomicU64::new(0),
    });
    let mut w = World::new("hsm-migrate", 1);
    w.envelope = Some(counting.clone());
    let b = w.broker().await;
    for (id, m) in SERVICES {
        let r = w
            .admin(
                &b,
                AdminRequest::RegisterService(policy(id, m, Assurance::Card)),
            )
            .await;
        assert_eq!(r, AdminResponse::Ok);
    }
    let card = w.card("CARD-OLD", 0x4901);
    let other = w.card("CARD-OLD-2", 0x4902);
    enrol(&w, &b, &card).await;
    enrol(&w, &b, &other).await;

    // The known credentials, in the data-key form as an older broker stored them: an AES
    // key, a P-256 scalar, a PKCS#1 RSA key; an assertion service's empty record; and one
    // AES key already under the new KEK (moved there by a rotation that kept the form).
    let mac_key = rand::<16>();
    let p256 = p256::ecdsa::SigningKey::from_slice(&rand::<32>()).unwrap();
    let rsa_key = test_pki::generate_rsa_key().unwrap();
    let rsa_der = rsa_key.to_pkcs1_der().unwrap().as_bytes().to_vec();
    let mac_key_2 = rand::<16>();
    let shards = Shards::open(&w.backends).await.unwrap();
    let shard = &shards.all()[0];
    write_old_record(shard, pin, "k-old", &card.id, "svc-mac", &mac_key).await;
    write_old_record(shard, pin, "k-old", &card.id, "svc-p256", &p256.to_bytes()).await;
    write_old_record(shard, pin, "k-old", &card.id, "svc-rsa", &rsa_der).await;
    write_old_record(shard, pin, "k-old", &card.id, "svc-assert", b"").await;
    write_old_record(shard, pin, "k2", &other.id, "svc-mac", &mac_key_2).await;

    // Before: the records open in the broker's memory for each act (the counter sees it).
    acts_check(&b, &card, &mac_key, &p256, &rsa_key, "before").await;
    assert_eq!(counting.opens.load(Ordering::SeqCst), 3);
    assert_eq!(counting.inside.load(Ordering::SeqCst), 0);

    let r = w
        .admin(&b, AdminRequest::RotateKek { to: "k2".into() })
        .await;
    let AdminResponse::Rotation {
        kek,
        rewrapped,
        converted,
        remaining,
    } = r
    else {
        panic!("{r:?}");
    };
    // Four key records converted (one of them was already under k2), the assertion
    // service's record re-wrapped in its form.
    assert_eq!(
        (kek.as_str(), converted, rewrapped, remaining),
        ("k2", 4, 1, 0)
    );

    let expect = [
        (&card.id, "svc-mac", Some(KeyKind::Aes128), &mac_key[..]),
        (
            &card.id,
            "svc-p256",
            Some(KeyKind::P256),
            &p256.to_bytes()[..],
        ),
        (&card.id, "svc-rsa", Some(KeyKind::Rsa2048), &rsa_der[..]),
        (&card.id, "svc-assert", None, &[][..]),
        (&other.id, "svc-mac", Some(KeyKind::Aes128), &mac_key_2[..]),
    ];
    for (c, s, kind, secret) in expect {
        let row = shard.active_credential(c, s).await.unwrap().unwrap();
        assert_eq!(row.sealed.kek, "k2", "{c} {s}");
        assert_eq!(row.sealed.in_store_kind(), kind, "{c} {s}");
        assert_eq!(
            row.sealed.nonce.len(),
            if kind.is_some() { 0 } else { 12 },
            "{c} {s}"
        );
        if kind.is_some() {
            let stored = [&row.sealed.wrapped_dek[..], &row.sealed.ciphertext].concat();
            assert!(
                !leaks(&stored, secret),
                "{c} {s}: the stored record holds the key"
            );
            // Nothing opens it in memory any more.
            let aad = format!("kagi-broker credential\0{c}\0{s}\01");
            let err = broker_server::Envelope::open(hsm.as_ref(), aad.as_bytes(), &row.sealed)
                .unwrap_err();
            assert!(err.to_string().contains("inside the HSM"), "{err}");
        }
    }

    // After: the same answers, made inside the token; no record opened, no data key
    // unwrapped.
    let (opens, unwraps) = (
        counting.opens.load(Ordering::SeqCst),
        counting.unwraps.load(Ordering::SeqCst),
    );
    acts_check(&b, &card, &mac_key, &p256, &rsa_key, "after").await;
    let session = login(&b, &other).await.unwrap();
    let r = b.act(&act(&session, "svc-mac", b"other")).await.unwrap();
    assert_eq!(
        r.mac.as_deref().and_then(api::unb64),
        Some(cmac(&mac_key_2, b"other"))
    );
    assert_eq!(
        counting.opens.load(Ordering::SeqCst),
        opens,
        "a record was opened in memory"
    );
    assert_eq!(
        counting.unwraps.load(Ordering::SeqCst),
        unwraps,
        "a data key was unwrapped"
    );
    assert_eq!(counting.inside.load(Ordering::SeqCst), 4);

    // Done once: a second pass finds nothing.
    assert_eq!(
        b.rotate_some("k2", 1_000).await.unwrap(),
        broker_server::service::Rotated::default()
    );

    // Two instances converting together: each record converted once, by one of them.
    let mut keys = Vec::new();
    for i in 0..40 {
        let k = rand::<16>();
        let id = format!("CARD-RACE-{i:02}");
        shard
            .commit(vec![kagi_db::Stmt::one(
                "INSERT INTO cards (card, holder, state, pw_failures, updated_at) VALUES ($1, $1, 'active', 0, 0)",
                vec![id.clone().into()],
            )])
            .await
            .unwrap();
        write_old_record(shard, pin, "k-old", &id, "svc-mac", &k).await;
        keys.push((id, k));
    }
    let (b1, b2) = (w.broker().await, w.broker().await);
    let (r1, r2) = tokio::join!(
        async {
            let mut n = 0;
            loop {
                let r = b1.rotate_some("k2", 7).await.unwrap();
                n += r.converted;
                if r.remaining == 0 {
                    return n;
                }
            }
        },
        async {
            let mut n = 0;
            loop {
                let r = b2.rotate_some("k2", 7).await.unwrap();
                n += r.converted;
                if r.remaining == 0 {
                    return n;
                }
            }
        }
    );
    println!("racing conversion: instance 1 converted {r1}, instance 2 {r2}");
    assert_eq!(r1 + r2, 40, "each record converted once");
    let check = b.verify_records().await.unwrap();
    assert_eq!((check.records, check.opened), (45, 45), "{check:?}");
    assert_eq!(check.by_kek.get("k2"), Some(&45));
    for (id, k) in keys.iter().step_by(13) {
        let row = shard
            .active_credential(id, "svc-mac")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.sealed.in_store_kind(), Some(KeyKind::Aes128));
        let aad = format!("kagi-broker credential\0{id}\0svc-mac\01");
        let mac = hsm
            .use_key(aad.as_bytes(), &row.sealed, KeyUse::Cmac(b"race"))
            .unwrap();
        assert_eq!(mac, Some(cmac(k, b"race")), "{id}");
    }
    let _ = std::fs::remove_dir_all(&w.dir);
}

#[test]
fn old_form_records_are_converted_into_the_hsm_by_rotation() {
    if let Some(pin) = kagi_hsm::testing::in_private_softhsm(
        "hsm_migrate::old_form_records_are_converted_into_the_hsm_by_rotation",
    ) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(body(&pin));
    }
}
