//! The broker end to end in one process, over SQLite files: card logins, every kind of
//! service, revocation, replays, policy, KEK rotation (interrupted and continued by another
//! instance), a stolen database, and what the logs and answers never contain.
//!
//! This file holds the shared world and helpers; the tests are in `services`,
//! `password_login` and `keys` (one test binary).

#[path = "../common/admin.rs"]
mod admin_common;

use broker_protocol::api::{
    self, Act, AdminRequest, AdminResponse, CardLogin, Method, ServicePolicy, Session,
};
use broker_protocol::{Assurance, Verifier};
use broker_server::clock::ManualClock;
use broker_server::envelope::FileEnvelope;
use broker_server::service::CardTrust;
use broker_server::{Broker, BrokerError, Config, Shards};
use kagi_db::Backend;
use kagi_signed::ids::PartyId;
use kagi_signed::password::Policy as PwPolicy;
use kagi_signed::signing::{self, Policy, Signer, Trust};
use rsa::signature::{SignatureEncoding, Signer as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use test_pki::TestCa;
use zeroize::Zeroizing;

mod admin_idem;
mod back_channel;
mod hsm;
mod hsm_migrate;
mod http_backoff;
mod keys;
mod password_login;
mod push_config;
mod services;

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
    /// The key store instead of the directory's KEK files (an HSM).
    envelope: Option<Arc<dyn broker_server::envelope::Envelope>>,
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
            envelope: None,
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
            envelope: match &self.envelope {
                Some(e) => e.clone(),
                None => Arc::new(FileEnvelope::open_dir(&self.dir.join("keys")).unwrap()),
            },
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

    /// A signed administrator's request (with a fresh idempotency key), its answer checked.
    async fn admin(&self, b: &Broker, req: AdminRequest) -> AdminResponse {
        let key = kagi_signed::IdempotencyKey::random().unwrap();
        self.admin_with(b, &req, Some(key)).await
    }

    /// A signed administrator's request with the idempotency key `key`.
    async fn admin_with(
        &self,
        b: &Broker,
        req: &AdminRequest,
        key: Option<kagi_signed::IdempotencyKey>,
    ) -> AdminResponse {
        crate::admin_common::signed_admin(&self.admin, NAME, &self.broker_signer, b, req, key).await
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
