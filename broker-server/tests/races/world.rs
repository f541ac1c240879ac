//! The races' world: a broker's keys and databases, instances over them, the
//! administrator's signed requests, and the requests the races make.

use broker_protocol::Assurance;
use broker_protocol::api::{
    Act, AdminRequest, AdminResponse, Method, PasswordLogin, ServicePolicy,
};
use broker_server::envelope::FileEnvelope;
use broker_server::service::CardTrust;
use broker_server::{Backoff, Broker, Config, Shards};
use kagi_db::Backend;
use kagi_db::testing::PrivatePostgres;
use kagi_signed::ids::PartyId;
use kagi_signed::password::Policy;
use kagi_signed::signing::{self, Signer, Trust};
use std::path::PathBuf;
use std::sync::Arc;
use zeroize::Zeroizing;

pub(crate) const NAME: &str = "broker:races";

pub(crate) struct World {
    pub(crate) dir: PathBuf,
    pub(crate) admin: Signer,
    pub(crate) signer: Signer,
    pub(crate) backends: Vec<Backend>,
    _pg: Option<PrivatePostgres>,
    /// A highly available formation instead (`World::ha`).
    pub(crate) ha: Option<kagi_db::testing::PrivateFormation>,
}

impl World {
    pub(crate) fn new(name: &str, postgres: bool) -> World {
        let dir = std::env::temp_dir().join(format!("kagi-races-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        FileEnvelope::new_kek(&dir.join("keys"), "k1").unwrap();
        let ca = test_pki::TestCa::new("races CA").unwrap();
        std::fs::write(dir.join("ca.der"), ca.certificate_der().unwrap()).unwrap();
        let (backends, pg) = if postgres {
            assert!(
                PrivatePostgres::available(),
                "PostgreSQL's server programs are missing: run scripts/setup.sh"
            );
            let pg = PrivatePostgres::start(&format!("races-{name}")).unwrap();
            (vec![Backend::Postgres(pg.url.clone())], Some(pg))
        } else {
            (vec![Backend::Sqlite(dir.join("shard0.db"))], None)
        };
        World {
            admin: Signer::generate(PartyId::new("admin:ops").unwrap()).unwrap(),
            signer: Signer::generate(PartyId::new(NAME).unwrap()).unwrap(),
            backends,
            _pg: pg,
            ha: None,
            dir,
        }
    }

    /// A world on a private pg_auto_failover formation (its multi-host URL).
    pub(crate) fn ha(name: &str) -> World {
        assert!(
            kagi_db::testing::PrivateFormation::available(),
            "pg_auto_failover is missing: run scripts/setup.sh"
        );
        let f = kagi_db::testing::PrivateFormation::start(&format!("races-{name}")).unwrap();
        let mut w = World::new(name, false);
        w.backends = vec![Backend::Postgres(f.url.clone())];
        w.ha = Some(f);
        w
    }

    /// A broker instance (several may share the database), cheap test verifiers allowed.
    pub(crate) async fn broker(&self, backoff: Backoff) -> Arc<Broker> {
        let envelope = Arc::new(FileEnvelope::open_dir(&self.dir.join("keys")).unwrap());
        self.broker_with(backoff, envelope).await
    }

    /// A broker instance with its own key store.
    pub(crate) async fn broker_with(
        &self,
        backoff: Backoff,
        envelope: Arc<dyn broker_server::Envelope>,
    ) -> Arc<Broker> {
        use p256::pkcs8::DecodePrivateKey;
        let mut trust = Trust::new();
        trust.add(self.admin.party().clone(), *self.admin.verifying_key());
        let key =
            p256::ecdsa::SigningKey::from_pkcs8_pem(&self.signer.to_pkcs8_pem().unwrap()).unwrap();
        let config = Config {
            name: NAME.into(),
            signer: Signer::new(self.signer.party().clone(), key),
            assertion_key: p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap(),
            admin_trust: trust,
            policy: signing::Policy::new(PartyId::new(NAME).unwrap()),
            card_trust: CardTrust::new(vec![self.dir.join("ca.der")], vec![]),
            envelope,
            default_kek: "k1".into(),
            state_key: Zeroizing::new([3u8; 32]),
            session_secs: 600,
        };
        Arc::new(
            Broker::new(config, Shards::open(&self.backends).await.unwrap())
                .with_password_policy(Policy::cheap_for_tests())
                .with_backoff(backoff),
        )
    }

    /// Enrols `n` cards `{prefix}-{i}` with a credential for `service` and gives each a card
    /// session (written straight into its shard); returns the session tokens.
    pub(crate) async fn cards_with_sessions(
        &self,
        b: &Broker,
        service: &str,
        prefix: &str,
        n: usize,
    ) -> Vec<String> {
        let mut sessions = Vec::new();
        for i in 0..n {
            let c = format!("{prefix}-{i}");
            for req in [
                AdminRequest::EnrolCard {
                    card: c.clone(),
                    holder: c.clone(),
                    password: None,
                },
                AdminRequest::EnrolCredential {
                    card: c.clone(),
                    service: service.into(),
                },
            ] {
                self.admin(b, req).await;
            }
            let token = format!("0.{}", broker_protocol::api::b64(c.as_bytes()));
            let hash: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()).into();
            b.shards()
                .of(&c)
                .commit(vec![broker_server::store::Shard::put_session(
                    &hash,
                    &c,
                    Assurance::Card,
                    i64::MAX / 2,
                )])
                .await
                .unwrap();
            sessions.push(token);
        }
        sessions
    }

    /// A signed administrator's request (with a fresh idempotency key), its answer checked.
    pub(crate) async fn admin(&self, b: &Broker, req: AdminRequest) -> AdminResponse {
        let key = kagi_signed::IdempotencyKey::random().unwrap();
        self.admin_with(b, &req, Some(key)).await
    }

    /// A signed administrator's request with the idempotency key `key`.
    pub(crate) async fn admin_with(
        &self,
        b: &Broker,
        req: &AdminRequest,
        key: Option<kagi_signed::IdempotencyKey>,
    ) -> AdminResponse {
        crate::admin_common::signed_admin(&self.admin, NAME, &self.signer, b, req, key).await
    }
}

pub(crate) fn no_backoff() -> Backoff {
    Backoff {
        holder_free: i64::MAX / 2,
        client_free: i64::MAX / 2,
        ..Backoff::default()
    }
}

pub(crate) fn mac_service(id: &str) -> AdminRequest {
    AdminRequest::RegisterService(ServicePolicy {
        id: id.into(),
        method: Method::Mac,
        min_assurance: Assurance::Password,
        allowed_hours: None,
    })
}

pub(crate) fn act(session: &str, service: &str) -> Act {
    Act {
        session: session.into(),
        service: service.into(),
        consent: true,
        challenge: Some(broker_protocol::api::b64(b"race challenge")),
        nonce: None,
    }
}

pub(crate) fn pw(holder: &str, p: &str) -> PasswordLogin {
    PasswordLogin {
        holder: holder.into(),
        password: p.into(),
    }
}
