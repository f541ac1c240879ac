//! The broker end to end in one process, over SQLite files: card logins, every kind of
//! service, revocation, replays, policy, KEK rotation (interrupted and continued by another
//! instance), a stolen database, and what the logs and answers never contain.

use broker_protocol::api::{
    self, Act, AdminRequest, AdminResponse, CardLogin, Method, PasswordLogin, ServicePolicy,
    Session,
};
use broker_protocol::{Assurance, Verifier};
use broker_server::clock::ManualClock;
use broker_server::envelope::FileEnvelope;
use broker_server::service::CardTrust;
use broker_server::{Broker, BrokerError, Config, Envelope, Shards};
use kagi_db::Backend;
use kagi_signed::ids::PartyId;
use kagi_signed::password::{self, Policy as PwPolicy};
use kagi_signed::signing::{self, Policy, Signer, Trust};
use rsa::signature::{SignatureEncoding, Signer as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use test_pki::TestCa;
use zeroize::Zeroizing;

const NAME: &str = "broker:test";

/// A card: its RSA key (what the JPKI applet keeps) and its certificate.
struct Card {
    id: String,
    key: rsa::PrivateKey,
    cert: Vec<u8>,
}

/// The CA and admin keys every broker instance of a test shares.
struct World {
    dir: PathBuf,
    ca: TestCa,
    admin: Signer,
    broker_signer: Signer,
    assertion_key: p256::ecdsa::SigningKey,
    state_key: [u8; 32],
    backends: Vec<Backend>,
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kagi-broker-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("keys")).unwrap();
    d
}

impl World {
    fn new(name: &str, shards: usize) -> World {
        let dir = dir(name);
        FileEnvelope::new_kek(&dir.join("keys"), "k1").unwrap();
        let backends = (0..shards)
            .map(|i| Backend::Sqlite(dir.join(format!("shard{i}.db"))))
            .collect();
        World::with_backends(dir, backends)
    }

    fn with_backends(dir: PathBuf, backends: Vec<Backend>) -> World {
        let mut state_key = [0u8; 32];
        getrandom::fill(&mut state_key).unwrap();
        let ca = TestCa::new("Broker test CA").unwrap();
        std::fs::write(dir.join("ca.crt.der"), ca.certificate_der().unwrap()).unwrap();
        World {
            ca,
            admin: Signer::generate(PartyId::new("admin:ops").unwrap()).unwrap(),
            broker_signer: Signer::generate(PartyId::new(NAME).unwrap()).unwrap(),
            assertion_key: p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap(),
            state_key,
            backends,
            dir,
        }
    }

    /// A broker instance (several may share the databases).
    async fn broker(&self) -> Arc<Broker> {
        let mut trust = Trust::new();
        trust.add(self.admin.party().clone(), *self.admin.verifying_key());
        let config = Config {
            name: NAME.into(),
            signer: Signer::new(
                self.broker_signer.party().clone(),
                p256::ecdsa::SigningKey::from_slice(&self.broker_signer_bytes()).unwrap(),
            ),
            assertion_key: self.assertion_key.clone(),
            admin_trust: trust,
            policy: Policy::new(PartyId::new(NAME).unwrap()),
            card_trust: CardTrust::new(
                vec![self.dir.join("ca.crt.der")],
                vec![self.dir.join("revoked.txt"), self.dir.join("ca.crl")],
            ),
            envelope: Arc::new(FileEnvelope::open_dir(&self.dir.join("keys")).unwrap()),
            default_kek: "k1".into(),
            state_key: Zeroizing::new(self.state_key),
            session_secs: 600,
        };
        Arc::new(Broker::new(
            config,
            Shards::open(&self.backends).await.unwrap(),
        ))
    }

    /// A broker instance on `clock`, with the password policy `policy`.
    async fn broker_with(&self, clock: &ManualClock, policy: PwPolicy) -> Arc<Broker> {
        let b = Arc::try_unwrap(self.broker().await)
            .ok()
            .expect("a new broker has one owner");
        Arc::new(
            b.with_clock(Arc::new(clock.clone()))
                .with_password_policy(policy),
        )
    }

    fn broker_signer_bytes(&self) -> Vec<u8> {
        use p256::pkcs8::DecodePrivateKey;
        let pem = self.broker_signer.to_pkcs8_pem().unwrap();
        p256::ecdsa::SigningKey::from_pkcs8_pem(&pem)
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    fn card(&self, id: &str, serial: u32) -> Card {
        use der::Encode;
        let key = test_pki::generate_rsa_key().unwrap();
        let now = SystemTime::now();
        let cert = self
            .ca
            .issue_auth(
                &key.to_public_key(),
                id,
                serial,
                now - Duration::from_secs(60),
                now + Duration::from_secs(86_400),
            )
            .unwrap()
            .to_der()
            .unwrap();
        Card {
            id: id.into(),
            key,
            cert,
        }
    }

    async fn admin(&self, b: &Broker, req: AdminRequest) -> AdminResponse {
        let broker = PartyId::new(NAME).unwrap();
        let out = kagi_signed::request::sign_request(
            &self.admin,
            &broker,
            &req,
            None,
            signing::now_ms(),
            60_000,
        )
        .unwrap();
        let answer = b.admin(&out.bytes).await.unwrap();
        let mut trust = Trust::new();
        trust.add(broker, *self.broker_signer.verifying_key());
        kagi_signed::request::open_answer_as(&answer, &out.header, &trust, signing::now_ms())
            .unwrap()
    }
}

fn sign(card: &Card, message: &[u8]) -> Vec<u8> {
    rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(card.key.clone())
        .sign(message)
        .to_vec()
}

/// The holder's side of a card login: the card signs the broker's challenge.
async fn login(b: &Broker, card: &Card) -> Result<Session, BrokerError> {
    let c = b.challenge()?;
    let nonce = api::unb64(&c.nonce).unwrap();
    b.login_card(&CardLogin {
        nonce: c.nonce.clone(),
        certificate: api::b64(&card.cert),
        signature: api::b64(&sign(card, &api::login_message(&c.broker, &nonce))),
    })
    .await
}

fn code(r: Result<impl std::fmt::Debug, BrokerError>) -> String {
    match r {
        Err(BrokerError::Refused(e)) => e.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn policy(id: &str, method: Method, min: Assurance) -> ServicePolicy {
    ServicePolicy {
        id: id.into(),
        method,
        min_assurance: min,
        allowed_hours: None,
    }
}

fn act(session: &Session, service: &str, challenge: &[u8]) -> Act {
    Act {
        session: session.session.clone(),
        service: service.into(),
        consent: true,
        challenge: Some(api::b64(challenge)),
        nonce: Some("svc-nonce-1".into()),
    }
}

/// What each kind of service gets back from enrolment: its verification material.
enum ServiceSide {
    Mac(Vec<u8>),
    P256(p256::ecdsa::VerifyingKey),
    Rsa(rsa::PublicKey),
    Assertion(Verifier),
}

const SERVICES: [(&str, Method); 4] = [
    ("svc-mac", Method::Mac),
    ("svc-p256", Method::SignP256),
    ("svc-rsa", Method::SignRsa),
    ("svc-assert", Method::Assertion),
];

async fn setup_services(w: &World, b: &Broker, card: &Card) -> Vec<ServiceSide> {
    let mut sides = Vec::new();
    for (id, m) in SERVICES {
        assert_eq!(
            w.admin(
                b,
                AdminRequest::RegisterService(policy(id, m, Assurance::Card))
            )
            .await,
            AdminResponse::Ok
        );
        let AdminResponse::Credential {
            version,
            public_key,
            shared_key,
        } = w
            .admin(
                b,
                AdminRequest::EnrolCredential {
                    card: card.id.clone(),
                    service: id.into(),
                },
            )
            .await
        else {
            panic!("no credential for {id}");
        };
        assert_eq!(version, 1);
        sides.push(match m {
            Method::Mac => ServiceSide::Mac(shared_key.unwrap()),
            Method::SignP256 => {
                use p256::pkcs8::DecodePublicKey;
                ServiceSide::P256(
                    p256::ecdsa::VerifyingKey::from_public_key_der(&public_key.unwrap()).unwrap(),
                )
            }
            Method::SignRsa => {
                use rsa::pkcs8::DecodePublicKey;
                ServiceSide::Rsa(rsa::PublicKey::from_public_key_der(&public_key.unwrap()).unwrap())
            }
            Method::Assertion => {
                ServiceSide::Assertion(Verifier::new(b.keys(), NAME, id, Assurance::Card))
            }
        });
    }
    sides
}

/// Each service checks the broker's answer the way that service would.
fn service_accepts(side: &ServiceSide, r: &api::ActResult, challenge: &[u8]) -> bool {
    let now = signing::now_ms() / 1000;
    match side {
        ServiceSide::Mac(k) => {
            let key = card_wire::scp03::AesKey::new(k).unwrap();
            r.mac.as_deref().and_then(api::unb64)
                == Some(card_wire::scp03::crypto::cmac(&key, challenge).to_vec())
        }
        ServiceSide::P256(vk) => {
            use p256::ecdsa::signature::Verifier as _;
            let sig = r.signature.as_deref().and_then(api::unb64).unwrap();
            let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
            vk.verify(challenge, &sig).is_ok()
        }
        ServiceSide::Rsa(pk) => {
            use rsa::signature::Verifier as _;
            let sig = r.signature.as_deref().and_then(api::unb64).unwrap();
            let sig = rsa::pkcs1v15::Signature::try_from(sig.as_slice()).unwrap();
            rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(pk.clone())
                .verify(challenge, &sig)
                .is_ok()
        }
        ServiceSide::Assertion(v) => v
            .verify(r.assertion.as_deref().unwrap(), "svc-nonce-1", now)
            .is_ok_and(|c| c.acr == Assurance::Card.acr()),
    }
}

/// Logs of the broker, to check what they never contain.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every representation of a secret that could leak: raw, hex, base64url.
fn leaks(hay: &[u8], secret: &[u8]) -> bool {
    contains(hay, secret)
        || contains(hay, hex::encode(secret).as_bytes())
        || contains(hay, hex::encode_upper(secret).as_bytes())
        || contains(hay, api::b64(secret).as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_type_then_revocation_stops_them_all() {
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let w = World::new("services", 1);
    let b = w.broker().await;
    let card = w.card("CARD-0001", 0x1001);
    assert_eq!(
        w.admin(
            &b,
            AdminRequest::EnrolCard {
                card: card.id.clone(),
                holder: "holder-1".into(),
                password: None
            }
        )
        .await,
        AdminResponse::Ok
    );
    let sides = setup_services(&w, &b, &card).await;

    let session = login(&b, &card).await.unwrap();
    assert_eq!(session.assurance, Assurance::Card);
    let challenge = b"service challenge 0123456789";
    let mut answers = Vec::new();
    for ((id, _), side) in SERVICES.iter().zip(&sides) {
        let r = b.act(&act(&session, id, challenge)).await.unwrap();
        assert!(
            service_accepts(side, &r, challenge),
            "{id} refused the broker's answer"
        );
        // A different challenge is not answered by the old answer.
        if !matches!(side, ServiceSide::Assertion(_)) {
            assert!(!service_accepts(side, &r, b"another challenge"), "{id}");
        }
        answers.push(serde_json::to_vec(&r).unwrap());
    }
    // An assertion is accepted once: the service refuses it replayed.
    let r = b
        .act(&act(&session, "svc-assert", challenge))
        .await
        .unwrap();
    let ServiceSide::Assertion(v) = &sides[3] else {
        unreachable!()
    };
    let now = signing::now_ms() / 1000;
    assert!(
        v.verify(r.assertion.as_deref().unwrap(), "svc-nonce-1", now)
            .is_ok()
    );
    assert!(
        v.verify(r.assertion.as_deref().unwrap(), "svc-nonce-1", now)
            .is_err()
    );
    // ... and one for another service or another nonce is refused.
    let r2 = b
        .act(&act(&session, "svc-assert", challenge))
        .await
        .unwrap();
    assert!(
        v.verify(r2.assertion.as_deref().unwrap(), "other-nonce", now)
            .is_err()
    );
    let other = Verifier::new(b.keys(), NAME, "svc-mac", Assurance::Card);
    assert!(
        other
            .verify(r2.assertion.as_deref().unwrap(), "svc-nonce-1", now)
            .is_err()
    );

    // Without the holder's consent, nothing.
    let mut no = act(&session, "svc-mac", challenge);
    no.consent = false;
    assert_eq!(code(b.act(&no).await), "act.no-consent");

    // Revoked: the live session stops at once for every service, and the next login fails.
    assert_eq!(
        w.admin(
            &b,
            AdminRequest::RevokeCard {
                card: card.id.clone()
            }
        )
        .await,
        AdminResponse::Ok
    );
    for (id, _) in SERVICES {
        let c = code(b.act(&act(&session, id, challenge)).await);
        assert!(
            c == "session.unknown" || c == "session.revoked",
            "{id}: {c}"
        );
    }
    assert_eq!(code(login(&b, &card).await), "login.revoked");
    // Enrolling it again does not bring it back.
    let again = w
        .admin(
            &b,
            AdminRequest::EnrolCard {
                card: card.id.clone(),
                holder: "holder-1".into(),
                password: None,
            },
        )
        .await;
    assert!(
        matches!(again, AdminResponse::Rejected { ref code, .. } if code == "admin.revoked"),
        "{again:?}"
    );

    // The holder's audit trail was kept (read by the administrator now the card is revoked).
    let AdminResponse::Audit(trail) = w
        .admin(
            &b,
            AdminRequest::Audit {
                card: Some(card.id.clone()),
            },
        )
        .await
    else {
        panic!()
    };
    let events: Vec<(&str, &str, &str)> = trail
        .iter()
        .map(|e| (e.event.as_str(), e.service.as_str(), e.outcome.as_str()))
        .collect();
    assert!(events.contains(&("login", "", "ok")));
    for (id, _) in SERVICES {
        assert!(events.contains(&("act", id, "ok")), "{id}");
    }
    assert!(events.contains(&("act", "svc-mac", "act.no-consent")));
    assert!(events.contains(&("revoke-card", "", "ok")));
    assert!(events.contains(&("login", "", "login.revoked")));

    // No key material in the logs or in the answers to the holder.
    let logs = logs.0.lock().unwrap().clone();
    assert!(
        !logs.is_empty(),
        "the broker logged nothing: the capture is broken"
    );
    let ServiceSide::Mac(shared) = &sides[0] else {
        unreachable!()
    };
    let kek = std::fs::read_to_string(w.dir.join("keys/kek-k1.key")).unwrap();
    let kek = hex::decode(kek.trim()).unwrap();
    for secret in [
        shared.as_slice(),
        kek.as_slice(),
        session.session.as_bytes(),
        &w.state_key,
    ] {
        assert!(!leaks(&logs, secret), "a secret is in the logs");
        for a in &answers {
            assert!(!leaks(a, secret), "a secret is in an answer");
        }
    }
    // Nor in the database file: the MAC key, the KEK, and the private signing keys (the
    // P-256 scalar and the RSA key's PKCS#1 DER, as the key store opens them).
    let db = std::fs::read(w.dir.join("shard0.db")).unwrap();
    assert!(
        !leaks(&db, shared),
        "the MAC key is in the database in clear"
    );
    assert!(!leaks(&db, &kek), "the KEK is in the database");
    let shards = Shards::open(&w.backends).await.unwrap();
    let keys = FileEnvelope::open_dir(&w.dir.join("keys")).unwrap();
    for svc in ["svc-p256", "svc-rsa"] {
        let cred = shards.all()[0]
            .active_credential(&card.id, svc)
            .await
            .unwrap()
            .unwrap();
        let secret = keys
            .open(
                &broker_server::store::CredentialRow::aad(&card.id, svc, cred.version),
                &cred.sealed,
            )
            .unwrap();
        // What was opened is the key (it signs what the service verified above).
        assert!(
            secret.len() == 32 || secret.starts_with(&[0x30, 0x82]),
            "{svc}"
        );
        assert!(
            !leaks(&db, &secret),
            "the {svc} private key is in the database"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refusals_and_replays() {
    let w = World::new("logins", 1);
    let b = w.broker().await;
    let card = w.card("CARD-0002", 0x2002);
    w.admin(
        &b,
        AdminRequest::EnrolCard {
            card: card.id.clone(),
            holder: "h2".into(),
            password: None,
        },
    )
    .await;

    // The same signed challenge twice: the second is a replay.
    let c = b.challenge().unwrap();
    let nonce = api::unb64(&c.nonce).unwrap();
    let l = CardLogin {
        nonce: c.nonce.clone(),
        certificate: api::b64(&card.cert),
        signature: api::b64(&sign(&card, &api::login_message(NAME, &nonce))),
    };
    b.login_card(&l).await.unwrap();
    assert_eq!(code(b.login_card(&l).await), "login.replayed");

    // A nonce the broker never issued (or altered).
    let mut forged = nonce.clone();
    forged[0] ^= 1;
    let l2 = CardLogin {
        nonce: api::b64(&forged),
        certificate: api::b64(&card.cert),
        signature: api::b64(&sign(&card, &api::login_message(NAME, &forged))),
    };
    assert_eq!(code(b.login_card(&l2).await), "login.bad-challenge");

    // Signed for another broker, or by another key.
    let c = b.challenge().unwrap();
    let nonce = api::unb64(&c.nonce).unwrap();
    let l3 = CardLogin {
        nonce: c.nonce.clone(),
        certificate: api::b64(&card.cert),
        signature: api::b64(&sign(&card, &api::login_message("broker:other", &nonce))),
    };
    assert_eq!(code(b.login_card(&l3).await), "login.bad-signature");
    let thief = w.card("CARD-0002", 0x2003);
    let l4 = CardLogin {
        certificate: api::b64(&card.cert),
        signature: api::b64(&sign(&thief, &api::login_message(NAME, &nonce))),
        ..l3.clone()
    };
    assert_eq!(code(b.login_card(&l4).await), "login.bad-signature");

    // A certificate from another CA.
    let rogue = World::new("logins-rogue", 1).card("CARD-0002", 0x2002);
    let c = b.challenge().unwrap();
    let nonce = api::unb64(&c.nonce).unwrap();
    let l5 = CardLogin {
        nonce: c.nonce.clone(),
        certificate: api::b64(&rogue.cert),
        signature: api::b64(&sign(&rogue, &api::login_message(NAME, &nonce))),
    };
    assert_eq!(code(b.login_card(&l5).await), "login.unknown-issuer");

    // A card the broker does not know.
    let stranger = w.card("CARD-9999", 0x9999);
    assert_eq!(code(login(&b, &stranger).await), "login.not-enrolled");

    // Garbage.
    let bad = CardLogin {
        nonce: "!!".into(),
        certificate: "x".into(),
        signature: "y".into(),
    };
    assert_eq!(code(b.login_card(&bad).await), "login.malformed");

    // Revoked at the CA (its revocation list): refused at once, no restart.
    std::fs::write(w.dir.join("revoked.txt"), "# revoked\n0x2002\n").unwrap();
    assert_eq!(code(login(&b, &card).await), "login.revoked");
    std::fs::write(w.dir.join("revoked.txt"), "").unwrap();
    login(&b, &card).await.unwrap();
    // The same through the CA's signed CRL; a CRL signed by another CA is ignored.
    let rogue_ca = TestCa::new("Rogue").unwrap();
    let crl = |ca: &TestCa| {
        use der::Encode;
        ca.crl(1, &[0x2002]).unwrap().to_der().unwrap()
    };
    std::fs::write(w.dir.join("ca.crl"), crl(&rogue_ca)).unwrap();
    login(&b, &card).await.unwrap();
    std::fs::write(w.dir.join("ca.crl"), crl(&w.ca)).unwrap();
    assert_eq!(code(login(&b, &card).await), "login.revoked");
    std::fs::remove_file(w.dir.join("ca.crl")).unwrap();

    // An administrator's request replayed is refused; a non-administrator's too.
    let broker = PartyId::new(NAME).unwrap();
    let out = kagi_signed::request::sign_request(
        &w.admin,
        &broker,
        &AdminRequest::Audit { card: None },
        None,
        signing::now_ms(),
        60_000,
    )
    .unwrap();
    let mut trust = Trust::new();
    trust.add(broker.clone(), *w.broker_signer.verifying_key());
    let first: AdminResponse = kagi_signed::request::open_answer_as(
        &b.admin(&out.bytes).await.unwrap(),
        &out.header,
        &trust,
        signing::now_ms(),
    )
    .unwrap();
    assert!(matches!(first, AdminResponse::Audit(_)));
    let second: AdminResponse = kagi_signed::request::open_answer_as(
        &b.admin(&out.bytes).await.unwrap(),
        &out.header,
        &trust,
        signing::now_ms(),
    )
    .unwrap();
    assert!(
        matches!(second, AdminResponse::Rejected { ref code, .. } if code == "protocol.replayed")
    );
    assert!(b.admin(b"not a message").await.is_err());
}

/// 2026-01-01 10:30:00 UTC, in milliseconds.
const T0: i64 = 1_767_263_400_000;

fn refusal(r: Result<impl std::fmt::Debug, BrokerError>) -> (String, String) {
    match r {
        Err(BrokerError::Refused(e)) => (e.code, e.detail),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_path_is_lower_assurance_and_backs_off() {
    let w = World::new("password", 1);
    // The production policy refuses a verifier below the floor (m=19456 KiB, t=2, p=1),
    // and anything that is not an Argon2id PHC string.
    let prod = w.broker().await;
    let cheap = password::new_verifier("correct horse", &PwPolicy::cheap_for_tests().new).unwrap();
    for bad in [cheap.clone(), "pbkdf2:1000:abcd".to_string()] {
        let r = w
            .admin(
                &prod,
                AdminRequest::EnrolCard {
                    card: "CARD-W".into(),
                    holder: "weak".into(),
                    password: Some(bad),
                },
            )
            .await;
        assert!(
            matches!(r, AdminResponse::Rejected { ref code, .. } if code == "admin.weak-password-verifier"),
            "{r:?}"
        );
    }
    drop(prod);

    let clock = ManualClock::at(T0);
    let b = w.broker_with(&clock, PwPolicy::cheap_for_tests()).await;
    w.admin(
        &b,
        AdminRequest::EnrolCard {
            card: "CARD-0003".into(),
            holder: "alice".into(),
            password: Some(cheap),
        },
    )
    .await;
    for (id, min) in [("low", Assurance::Password), ("high", Assurance::Card)] {
        w.admin(
            &b,
            AdminRequest::RegisterService(policy(id, Method::Mac, min)),
        )
        .await;
        w.admin(
            &b,
            AdminRequest::EnrolCredential {
                card: "CARD-0003".into(),
                service: id.into(),
            },
        )
        .await;
    }
    let pw = |h: &str, p: &str| PasswordLogin {
        holder: h.into(),
        password: p.into(),
    };
    let s = b
        .login_password(&pw("alice", "correct horse"), None)
        .await
        .unwrap();
    assert_eq!(s.assurance, Assurance::Password);
    b.act(&act(&s, "low", b"c")).await.unwrap();
    assert_eq!(code(b.act(&act(&s, "high", b"c")).await), "act.assurance");
    // An unknown service and one the card has no credential for: the same answer.
    w.admin(
        &b,
        AdminRequest::RegisterService(policy("other", Method::Mac, Assurance::Password)),
    )
    .await;
    let mine = refusal(b.act(&act(&s, "other", b"c")).await);
    let unknown = refusal(b.act(&act(&s, "no-such-service", b"c")).await);
    assert_eq!(mine.0, "act.not-enrolled");
    assert_eq!(
        (mine.0, mine.1.replace("other", "S")),
        (unknown.0, unknown.1.replace("no-such-service", "S"))
    );

    // Wrong passwords: the same answer as an unknown holder.
    let wrong = refusal(b.login_password(&pw("alice", "wrong"), None).await);
    assert_eq!(wrong.0, "login.wrong-password");
    assert_eq!(
        refusal(b.login_password(&pw("bob", "x"), None).await),
        wrong
    );
    for _ in 0..4 {
        assert_eq!(
            refusal(b.login_password(&pw("alice", "wrong"), None).await),
            wrong
        );
    }
    // Five failures: alice waits (1 s), and until then the right password gets the same
    // answer as a wrong one; nothing is locked for good.
    assert_eq!(
        refusal(b.login_password(&pw("alice", "correct horse"), None).await),
        wrong
    );
    clock.advance(999);
    assert_eq!(
        refusal(b.login_password(&pw("alice", "correct horse"), None).await),
        wrong
    );
    clock.advance(1);
    b.login_password(&pw("alice", "correct horse"), None)
        .await
        .unwrap();
    // The right password cleared the failures: five tries again before a wait.
    for _ in 0..5 {
        assert_eq!(
            refusal(b.login_password(&pw("alice", "wrong"), None).await),
            wrong
        );
    }
    clock.advance(1_000);
    b.login_password(&pw("alice", "correct horse"), None)
        .await
        .unwrap();

    // Per client: one address trying many holders waits after 20 failures, whoever it names.
    for i in 0..20 {
        let h = format!("guess-{i}");
        assert_eq!(
            refusal(b.login_password(&pw(&h, "x"), Some("192.0.2.7")).await),
            wrong
        );
    }
    assert_eq!(
        refusal(
            b.login_password(&pw("alice", "correct horse"), Some("192.0.2.7"))
                .await
        ),
        wrong
    );
    // Another address is not held up by it.
    b.login_password(&pw("alice", "correct horse"), Some("192.0.2.8"))
        .await
        .unwrap();

    // A PBKDF2 verifier from before (written as the old broker wrote it): it still logs in,
    // and the right password replaces it with an Argon2id verifier.
    let salt = [7u8; 16];
    let old = kagi_signed::access::password_verifier("legacy pw", &salt, 4096);
    b.shards()
        .of("CARD-L")
        .commit(vec![kagi_db::Stmt::any(
            "INSERT INTO cards (card, holder, state, pw_salt, pw_iterations, pw_verifier, pw_failures, updated_at)
             VALUES ($1, 'legacy', 'active', $2, 4096, $3, 0, 0)",
            vec!["CARD-L".into(), salt.to_vec().into(), old.to_vec().into()],
        )])
        .await
        .unwrap();
    assert_eq!(
        refusal(b.login_password(&pw("legacy", "legacy px"), None).await),
        wrong
    );
    b.login_password(&pw("legacy", "legacy pw"), None)
        .await
        .unwrap();
    let row = b
        .shards()
        .of("CARD-L")
        .card("CARD-L")
        .await
        .unwrap()
        .unwrap();
    match &row.password {
        Some(password::Verifier::Argon2id(p)) => {
            assert_eq!(p.params, PwPolicy::cheap_for_tests().new);
            assert!(p.matches("legacy pw").unwrap());
        }
        other => panic!("not upgraded: {other:?}"),
    }
    b.login_password(&pw("legacy", "legacy pw"), None)
        .await
        .unwrap();

    // A revoked holder: the same answer as a wrong password until the password is right.
    w.admin(
        &b,
        AdminRequest::RevokeCard {
            card: "CARD-L".into(),
        },
    )
    .await;
    assert_eq!(
        refusal(b.login_password(&pw("legacy", "nope"), None).await),
        wrong
    );
    assert_eq!(
        code(b.login_password(&pw("legacy", "legacy pw"), None).await),
        "login.revoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_hours_on_both_sides_of_each_boundary() {
    let w = World::new("hours", 1);
    let clock = ManualClock::at(T0);
    let b = w.broker_with(&clock, PwPolicy::cheap_for_tests()).await;
    let cheap = password::new_verifier("pw of hours", &PwPolicy::cheap_for_tests().new).unwrap();
    w.admin(
        &b,
        AdminRequest::EnrolCard {
            card: "CARD-H".into(),
            holder: "hours".into(),
            password: Some(cheap),
        },
    )
    .await;
    // Open from 11:00 to 12:00 UTC, and one across midnight (22:00 to 02:00).
    let mut day = policy("day", Method::Mac, Assurance::Password);
    day.allowed_hours = Some((11, 12));
    let mut night = policy("night", Method::Mac, Assurance::Password);
    night.allowed_hours = Some((22, 2));
    for p in [day, night] {
        let id = p.id.clone();
        w.admin(&b, AdminRequest::RegisterService(p)).await;
        w.admin(
            &b,
            AdminRequest::EnrolCredential {
                card: "CARD-H".into(),
                service: id,
            },
        )
        .await;
    }
    let h = |hh: i64, mm: i64, ss: i64, ms: i64| {
        // 2026-01-01 00:00:00 UTC plus the time of day.
        1_767_225_600_000 + ((hh * 60 + mm) * 60 + ss) * 1000 + ms
    };
    let cases = [
        ("day", h(10, 59, 59, 999), false),
        ("day", h(11, 0, 0, 0), true),
        ("day", h(11, 59, 59, 999), true),
        ("day", h(12, 0, 0, 0), false),
        ("night", h(21, 59, 59, 999), false),
        ("night", h(22, 0, 0, 0), true),
        ("night", h(23, 59, 59, 999), true),
        ("night", h(24, 0, 0, 0), true),
        ("night", h(25, 59, 59, 999), true),
        ("night", h(26, 0, 0, 0), false),
    ];
    for (svc, at, open) in cases {
        clock.set(at);
        // A fresh session at that time (sessions expire by the same clock).
        let s = b
            .login_password(
                &PasswordLogin {
                    holder: "hours".into(),
                    password: "pw of hours".into(),
                },
                None,
            )
            .await
            .unwrap();
        let r = b.act(&act(&s, svc, b"c")).await;
        if open {
            assert!(r.is_ok(), "{svc} at {at}: {r:?}");
        } else {
            assert_eq!(code(r), "act.outside-hours", "{svc} at {at}");
        }
    }
}

/// Counts the records under each KEK by opening the database directly.
async fn keks_in_use(w: &World) -> Vec<(String, i64)> {
    let shards = Shards::open(&w.backends).await.unwrap();
    let mut out = Vec::new();
    for k in ["k1", "k2"] {
        let mut n = 0;
        for s in shards.all() {
            n += s.credentials_not_under(k, 1_000_000).await.unwrap().len() as i64;
        }
        out.push((k.to_string(), n));
    }
    out
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
        w.admin(
            &a,
            AdminRequest::EnrolCard {
                card: format!("BULK-{i}"),
                holder: format!("bulk-{i}"),
                password: None,
            },
        )
        .await;
        w.admin(
            &a,
            AdminRequest::EnrolCredential {
                card: format!("BULK-{i}"),
                service: "svc".into(),
            },
        )
        .await;
    }
    // Both shards are used.
    for s in a.shards().all() {
        assert!(!s.credentials_not_under("none", 1).await.unwrap().is_empty());
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
