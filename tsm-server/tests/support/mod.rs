//! A TSM in process for the server's own tests: two providers (`sp:bank`, `sp:shop`), two
//! operators (`mno:kagi-mobile`, `mno:other`), signed requests sent straight to
//! [`Tsm::control`] and [`Tsm::relay`], and a dump of the tables to compare before and after.
#![allow(dead_code)]

use card_wire::scp03::{AesKey, Diversification, DiversifiedMaster, StaticKeys};
use std::collections::BTreeMap;
use std::sync::Arc;
use tsm_protocol::control::{
    AccessGrant, AppletRef, CardTarget, ControlRequest, ControlResponse, CredentialBundle,
    GrantVerifier,
};
use tsm_protocol::relay::{AgentMsg, ServerMsg, UserCredentials};
use tsm_protocol::signing::{Policy, Signer, Trust};
use tsm_protocol::{IdempotencyKey, OpId, PartyId};
use tsm_server::service::{Config, Operator, Provider, ServiceError, Tsm};
use tsm_server::store::{Backend, Stmt, Store};

/// The password every access grant here registers.
pub const PASSWORD: &str = "correct horse";

/// The parties, by name.
pub const BANK: &str = "sp:bank";
/// The second provider.
pub const SHOP: &str = "sp:shop";
/// The operator that registers the SIMs.
pub const MNO: &str = "mno:kagi-mobile";
/// A second configured operator.
pub const OTHER_MNO: &str = "mno:other";

/// A party id.
pub fn party(s: &str) -> PartyId {
    PartyId::new(s).unwrap()
}

/// An ICCID with a correct Luhn check digit: `body` (17-19 digits) and its digit, computed
/// here by the ISO/IEC 7812 rule (not by the code under test).
pub fn iccid(body: &str) -> String {
    let mut sum = 0;
    for (i, c) in body.chars().rev().enumerate() {
        let mut d = c.to_digit(10).unwrap();
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// The same ICCID with its last (check) digit wrong.
pub fn bad_luhn(iccid: &str) -> String {
    let (body, last) = iccid.split_at(iccid.len() - 1);
    let d = last.parse::<u8>().unwrap();
    format!("{body}{}", (d + 1) % 10)
}

/// A change to the TSM's configuration ([`World::tweaked`]), applied to every instance.
pub type Tweak = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// A TSM and the keys of the parties that talk to it.
pub struct World {
    /// The TSM.
    pub tsm: Arc<Tsm>,
    /// Its database.
    pub backend: Backend,
    tsm_pem: String,
    /// The parties' signers, by name.
    pub signers: BTreeMap<&'static str, Signer>,
    /// Trusts the TSM's answers.
    pub answers: Trust,
    /// The CA that issues the credentials' certificates.
    pub ca: Arc<test_pki::TestCa>,
    tweak: Option<Tweak>,
}

fn keys(kvn: u8, scheme: Diversification) -> Arc<DiversifiedMaster> {
    Arc::new(DiversifiedMaster {
        master: StaticKeys::default_test_keys(kvn),
        scheme,
        kvn,
    })
}

impl World {
    /// A TSM on `backend` trusting the four parties.
    pub async fn new(backend: &Backend, ca: Arc<test_pki::TestCa>) -> World {
        World::tweaked(backend, ca, None).await
    }

    /// [`World::new`] with `tweak` applied to the configuration (of every instance).
    pub async fn tweaked(
        backend: &Backend,
        ca: Arc<test_pki::TestCa>,
        tweak: Option<Tweak>,
    ) -> World {
        let tsm_signer = Signer::generate(party("tsm:kagi")).unwrap();
        let mut signers = BTreeMap::new();
        for name in [BANK, SHOP, MNO, OTHER_MNO] {
            signers.insert(name, Signer::generate(party(name)).unwrap());
        }
        let mut answers = Trust::new();
        answers.add(tsm_signer.party().clone(), *tsm_signer.verifying_key());
        let tsm_pem = tsm_signer.to_pkcs8_pem().unwrap().to_string();
        let mut config = config(&tsm_pem, &signers);
        if let Some(t) = &tweak {
            t(&mut config);
        }
        let store = Store::open(backend).await.unwrap();
        World {
            tsm: Arc::new(Tsm::new(config, store)),
            backend: backend.clone(),
            tsm_pem,
            signers,
            answers,
            ca,
            tweak,
        }
    }

    /// Another TSM instance on the same database, with the same keys and parties.
    pub async fn instance(&self) -> Arc<Tsm> {
        let store = Store::open(&self.backend).await.unwrap();
        let mut config = config(&self.tsm_pem, &self.signers);
        if let Some(t) = &self.tweak {
            t(&mut config);
        }
        Arc::new(Tsm::new(config, store))
    }

    /// `who` sends `req` (signed, with an idempotency key when it creates an operation);
    /// the TSM's answer, opened.
    pub async fn send(&self, who: &str, req: &ControlRequest) -> ControlResponse {
        let idem = req
            .creates_operation()
            .then(|| IdempotencyKey::random().unwrap());
        self.send_with(who, req, idem).await
    }

    /// [`World::send`] with the given idempotency key.
    pub async fn send_with(
        &self,
        who: &str,
        req: &ControlRequest,
        idem: Option<IdempotencyKey>,
    ) -> ControlResponse {
        self.send_via(&self.tsm, who, req, idem).await.unwrap()
    }

    /// `who` sends `req` to instance `tsm`; the answer opened, or why the TSM could not
    /// answer (a conflict to send again, the database).
    pub async fn send_via(
        &self,
        tsm: &Tsm,
        who: &str,
        req: &ControlRequest,
        idem: Option<IdempotencyKey>,
    ) -> Result<ControlResponse, ServiceError> {
        let out = self.sign(who, req, idem);
        let answer = tsm.control(&out.bytes).await?;
        tsm_protocol::control::open_answer(
            &answer,
            &out.header,
            &self.answers,
            tsm_protocol::signing::now_ms(),
        )
        .map_err(ServiceError::BadRequest)
    }

    /// `req` signed by `who` for this TSM.
    pub fn sign(
        &self,
        who: &str,
        req: &ControlRequest,
        idem: Option<IdempotencyKey>,
    ) -> tsm_protocol::control::Outgoing {
        tsm_protocol::control::sign_request(
            &self.signers[who],
            &party("tsm:kagi"),
            req,
            idem,
            tsm_protocol::signing::now_ms(),
            60_000,
        )
        .unwrap()
    }

    /// Operator `mno` registers SIM `iccid`.
    pub async fn register(&self, mno: &str, iccid: &str) {
        let r = self.send(mno, &register_card(iccid)).await;
        assert_eq!(r, ControlResponse::Ok, "registering {iccid}");
    }

    /// Provider `sp` issues a credential to SIM `iccid`: the operation, its access code and
    /// device ticket.
    pub async fn issue(&self, sp: &str, iccid: &str, attempts: u8) -> Accepted {
        let r = self.send(sp, &self.issue_request(iccid, attempts)).await;
        accepted(r)
    }

    /// An issue request for `iccid` with a fresh certificate valid for a year.
    pub fn issue_request(&self, iccid: &str, attempts: u8) -> ControlRequest {
        ControlRequest::Issue {
            subscriber_ref: "subscriber-1".into(),
            card: CardTarget {
                iccid: iccid.into(),
            },
            applet: AppletRef::jpki(),
            credential: self.bundle(),
            access: grant(attempts),
        }
    }

    /// A credential bundle (its certificate from the test CA; the sealed parts are opaque
    /// to the TSM until a download).
    pub fn bundle(&self) -> CredentialBundle {
        use der::Encode;
        let key = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
        let now = std::time::SystemTime::now();
        let serial = u32::from_be_bytes(rand16()[..4].try_into().unwrap()) | 1;
        let cert = self
            .ca
            .issue_auth(
                key.verifying_key(),
                "KAGIPHONE01",
                serial,
                now,
                now + std::time::Duration::from_secs(86400 * 365),
            )
            .unwrap()
            .to_der()
            .unwrap();
        CredentialBundle {
            sealed_key: vec![1; 48],
            sealed_pin: vec![2; 32],
            certificate: cert,
            ca_certificate: self.ca.certificate_der().unwrap(),
            my_number_sign_serial: "0ABCDEF1".into(),
        }
    }

    /// What a finished download leaves for an issuing operation (set here directly, as the
    /// card is not part of these tests): the operation completed, the credential active.
    pub async fn complete_by_hand(&self, op: &OpId) {
        self.tsm
            .store()
            .commit(vec![
                Stmt::one(
                    "UPDATE ops SET state = 'completed', version = version + 1 WHERE id = $1",
                    vec![op.to_hex().into()],
                ),
                Stmt::any(
                    "UPDATE credentials SET state = 'active' WHERE op_id = $1",
                    vec![op.to_hex().into()],
                ),
            ])
            .await
            .unwrap();
    }

    /// Every row of the TSM's tables but the replay log (which records every signed request,
    /// refused or not) and the trail of signed messages refused ([`refused_total`] counts
    /// those), as text, to compare before and after.
    pub async fn dump(&self) -> String {
        dump(self.tsm.store()).await
    }
}

/// The TSM's configuration: its key, the four parties (trusted; providers with domain keys,
/// operators with issuer-domain keys).
fn config(tsm_pem: &str, signers: &BTreeMap<&'static str, Signer>) -> Config {
    let mut trust = Trust::new();
    for s in signers.values() {
        trust.add(s.party().clone(), *s.verifying_key());
    }
    let mut providers = BTreeMap::new();
    for (i, name) in [BANK, SHOP].into_iter().enumerate() {
        providers.insert(
            party(name),
            Provider {
                sd_aid: vec![0xA0, 0, 0, 1, 0x51, 0x53, 0x50, 0x50, 1 + i as u8],
                kvn: 0x31,
                keys: keys(0x31, Diversification::Kdf3),
            },
        );
    }
    let mut operators = BTreeMap::new();
    for name in [MNO, OTHER_MNO] {
        operators.insert(
            party(name),
            Operator {
                isd_aid: card_wire::uicc::UICC_ISD_AID.to_vec(),
                kvn: 0x30,
                keys: keys(0x30, Diversification::None),
            },
        );
    }
    Config {
        signer: Signer::from_pkcs8_pem(party("tsm:kagi"), tsm_pem).unwrap(),
        trust,
        policy: Policy::new(party("tsm:kagi")),
        providers,
        operators,
        hosted: BTreeMap::new(),
        mno: Vec::new(),
        issuer: None,
        state_key: AesKey::new(&[0x11; 16]).unwrap(),
        revocation_list: None,
        outbox: None,
    }
}

/// Every row of the TSM's tables but the replay log and the refused messages' trail, as text.
pub async fn dump(store: &Store) -> String {
    let mut out = String::new();
    for sql in [
        "SELECT * FROM ops ORDER BY id",
        "SELECT * FROM cards ORDER BY iccid",
        "SELECT * FROM credentials ORDER BY op_id",
        "SELECT * FROM tickets ORDER BY op_id",
        "SELECT * FROM sessions ORDER BY id",
        "SELECT * FROM audit WHERE event NOT IN ('request-refused', 'answer-refused') ORDER BY id",
        "SELECT * FROM sealed ORDER BY op_id",
        "SELECT * FROM card_certs ORDER BY iccid",
    ] {
        out.push_str(sql);
        out.push('\n');
        for row in store.query(sql, vec![]).await.unwrap() {
            out.push_str(&format!("{row:?}\n"));
        }
    }
    out
}

/// How many signed messages the TSM refused and counted (`tsm_server::refusals`), in all.
pub async fn refused_total(store: &Store) -> i64 {
    store
        .query("SELECT COALESCE(SUM(n), 0) FROM refusals", vec![])
        .await
        .unwrap()[0][0]
        .int()
}

/// 16 random bytes.
pub fn rand16() -> [u8; 16] {
    let mut b = [0; 16];
    getrandom::fill(&mut b).unwrap();
    b
}

/// An operator's registration of `iccid`.
pub fn register_card(iccid: &str) -> ControlRequest {
    ControlRequest::RegisterCard {
        iccid: iccid.into(),
        cin: "0102030405060708090A".into(),
        sd_aid: vec![],
        free_memory: 64 * 1024,
        card_certificate: None,
    }
}

/// An access grant for [`PASSWORD`] allowing `attempts` wrong entries: an Argon2id verifier
/// at the production floor, as the provider tools make it.
pub fn grant(attempts: u8) -> AccessGrant {
    AccessGrant {
        password: GrantVerifier::argon2id(PASSWORD, &tsm_protocol::password::Params::OWASP_MIN)
            .unwrap(),
        max_attempts: attempts,
        valid_for_ms: 600_000,
    }
}

/// What an accepted operation hands the provider.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The operation (and credential) id.
    pub op: OpId,
    /// The access code.
    pub code: String,
    /// The device ticket.
    pub ticket: String,
}

/// The accepted operation in `r` (panics on anything else).
pub fn accepted(r: ControlResponse) -> Accepted {
    match r {
        ControlResponse::Accepted {
            op,
            device_ticket: Some(ticket),
            access_code: Some(code),
            ..
        } => Accepted { op, code, ticket },
        other => panic!("not accepted: {other:?}"),
    }
}

/// A temporary directory for a SQLite file, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A fresh directory named after `name`.
    pub fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "kagi-tsm-{name}-{}-{}",
            std::process::id(),
            hex::encode(&rand16()[..4])
        ));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    /// A SQLite backend in it.
    pub fn sqlite(&self) -> Backend {
        Backend::Sqlite(self.0.join("tsm.db"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A relay Hello on `tsm` with the user's entries: the TSM's answer, or why it gave none.
pub async fn hello(
    tsm: &Tsm,
    ticket: &str,
    code: &str,
    password: &str,
) -> Result<ServerMsg, ServiceError> {
    let msg = tsm_protocol::codec::encode(&AgentMsg::Hello {
        ticket: ticket.into(),
        agent: "kagi-test".into(),
        resume: None,
        credentials: Some(UserCredentials {
            access_code: code.into(),
            password: password.into(),
        }),
        prepared: None,
    })
    .unwrap();
    let answer = tsm.relay(&msg).await?;
    Ok(tsm_protocol::codec::decode(&answer).unwrap())
}

/// A wrong access code (the right one with its first digit changed).
pub fn wrong_code(code: &str) -> String {
    let mut c: Vec<char> = code.chars().collect();
    c[0] = if c[0] == '1' { '2' } else { '1' };
    c.into_iter().collect()
}
