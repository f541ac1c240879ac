//! The JPKI issuer in process (SQLite): an application from a valid My Number card gets a
//! credential sealed to the SIM (the key opens with the SIM's own key only and certifies under
//! the user-authentication CA, never past the signature certificate); each refusal has its own
//! code — an expired, revoked (CRL), forged or foreign card, an SP-TSM the issuer does not
//! trust, one acting for another provider, a replayed message, a replayed application; a
//! revocation racing issuances for the same signature serial never leaves an active phone
//! certificate linked to it; revocations, suspensions and resumptions of one phone
//! certificate racing each other change it at most once each, and its CRL agrees.
//!
//! The CAs, cards and SIM keys are made here with `test-pki`, `rsa` and `p256` directly.

use der::{Decode, Encode};
use kagi_certs::application::{Application, Body};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};
use test_pki::{BasicFacts, TestCa};
use tsm_protocol::control::open_answer_as;
use tsm_protocol::issuer::{IssuerRequest, IssuerResponse};
use tsm_protocol::signing::{self, Policy, Signer, Trust};
use tsm_protocol::{IdempotencyKey, PartyId};
use tsm_server::issuer::{Issuer, IssuerConfig, SignCa};

const ICCID: &str = "8981100000000000042";
const SP: &str = "sp:kagi-bank";

struct Cas {
    sign: TestCa,
    foreign: TestCa,
    ua: Arc<TestCaUa>,
    maker: TestCa,
    card_key: rsa::PrivateKey,
}

#[path = "issuer_support/mod.rs"]
mod issuer_support;
use issuer_support::TestCaUa;

fn cas() -> &'static Cas {
    static C: OnceLock<Cas> = OnceLock::new();
    C.get_or_init(|| Cas {
        sign: TestCa::new("JPKI for digital signature").unwrap(),
        foreign: TestCa::new("JPKI for digital signature").unwrap(),
        ua: Arc::new(TestCaUa(
            TestCa::new("JPKI for user authentication").unwrap(),
        )),
        maker: TestCa::new("card manufacturer").unwrap(),
        card_key: test_pki::generate_rsa_key().unwrap(),
    })
}

/// A My Number card's signature certificate by `ca`, valid from `from` to `until`.
fn sign_cert(ca: &TestCa, serial: u32, from: SystemTime, until: SystemTime) -> Vec<u8> {
    ca.issue_sign(
        &cas().card_key.to_public_key(),
        &BasicFacts::synthetic(),
        serial,
        from,
        until,
    )
    .unwrap()
    .to_der()
    .unwrap()
}

/// An application for the SIM, signed with the card's key (RSA PKCS#1 v1.5, SHA-256).
fn application(cert: Vec<u8>) -> Vec<u8> {
    use rsa::signature::{SignatureEncoding, Signer as _};
    let body = Body::new(ICCID, SP, "user-1", "holder@example.jp", SystemTime::now()).unwrap();
    let key = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(cas().card_key.clone());
    let signature = key.sign(&body.signed_bytes().unwrap()).to_vec();
    Application {
        body,
        certificate: cert,
        signature,
    }
    .encode()
    .unwrap()
}

fn valid_application(serial: u32) -> Vec<u8> {
    let now = SystemTime::now();
    application(sign_cert(
        &cas().sign,
        serial,
        now - Duration::from_secs(86_400),
        now + Duration::from_secs(30 * 86_400),
    ))
}

struct World {
    issuer: Issuer,
    sp_tsm: Signer,
    issuer_trust: Trust,
    sim_key: p256::SecretKey,
    sim_cert: Vec<u8>,
    dir: std::path::PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn world(name: &str) -> World {
    let dir = std::env::temp_dir().join(format!("kagi-issuer-{name}-{}", std::process::id()));
    world_on(name, kagi_db::Backend::Sqlite(dir.join("issuer.db"))).await
}

async fn world_on(name: &str, backend: kagi_db::Backend) -> World {
    let c = cas();
    let dir = std::env::temp_dir().join(format!("kagi-issuer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("sign-ca.der"), c.sign.certificate_der().unwrap()).unwrap();
    let me = Signer::generate(PartyId::new("jpki:test-issuer").unwrap()).unwrap();
    let sp_tsm = Signer::generate(PartyId::new("tsm:kagi").unwrap()).unwrap();
    let mut trust = Trust::new();
    trust.add(sp_tsm.party().clone(), *sp_tsm.verifying_key());
    let mut issuer_trust = Trust::new();
    issuer_trust.add(me.party().clone(), *me.verifying_key());
    let sim_key = {
        use p256::elliptic_curve::Generate;
        p256::SecretKey::try_generate().unwrap()
    };
    let now = SystemTime::now();
    let sim_cert = c
        .maker
        .issue_card_key(
            &sim_key.public_key(),
            ICCID,
            7,
            now - Duration::from_secs(60),
            now + Duration::from_secs(3650 * 86_400),
        )
        .unwrap()
        .to_der()
        .unwrap();
    let config = IssuerConfig {
        policy: Policy::new(me.party().clone()),
        signer: me,
        trust,
        sp_tsms: [(sp_tsm.party().clone(), vec![PartyId::new(SP).unwrap()])]
            .into_iter()
            .collect(),
        sign_ca: SignCa {
            certificate: dir.join("sign-ca.der"),
            crl: Some(dir.join("sign-ca.crl.der")),
            revoked: None,
        },
        ua_ca: c.ua.clone(),
        manufacturer_ca: c.maker.certificate().clone(),
        pin_mailer: dir.join("pin-mailer"),
        validity: Duration::from_secs(365 * 86_400),
        max_age: Duration::from_secs(600),
        challenge_key: zeroize::Zeroizing::new([0x3C; 32]),
    };
    let issuer = Issuer::open(config, &backend).await.unwrap();
    World {
        issuer,
        sp_tsm,
        issuer_trust,
        sim_key,
        sim_cert,
        dir,
    }
}

impl World {
    /// An issue request under a fresh idempotency key.
    fn issue_request(&self, application: Vec<u8>, provider: &str) -> IssuerRequest {
        self.issue_request_keyed(application, provider, IdempotencyKey::random().unwrap())
    }

    fn issue_request_keyed(
        &self,
        application: Vec<u8>,
        provider: &str,
        request_id: IdempotencyKey,
    ) -> IssuerRequest {
        IssuerRequest::Issue {
            application,
            provider: PartyId::new(provider).unwrap(),
            iccid: ICCID.into(),
            card_certificate: self.sim_cert.clone(),
            instance: card_wire::jpki::JPKI_AID.to_vec(),
            request_id,
            moves: None,
        }
    }

    /// Sends `req` signed by `who`; the issuer's verified answer.
    async fn send_as(&self, who: &Signer, req: &IssuerRequest) -> IssuerResponse {
        let out = tsm_protocol::control::sign_request(
            who,
            self.issuer.party(),
            req,
            None,
            signing::now_ms(),
            60_000,
        )
        .unwrap();
        self.answer(&out.bytes, &out.header).await
    }

    async fn answer(&self, bytes: &[u8], sent: &tsm_protocol::Header) -> IssuerResponse {
        let a = self.issuer.handle(bytes).await.unwrap();
        open_answer_as(&a, sent, &self.issuer_trust, signing::now_ms()).unwrap()
    }

    async fn send(&self, req: &IssuerRequest) -> IssuerResponse {
        self.send_as(&self.sp_tsm, req).await
    }

    async fn code(&self, application: Vec<u8>) -> String {
        match self.send(&self.issue_request(application, SP)).await {
            IssuerResponse::Rejected(e) => e.code,
            other => panic!("not refused: {other:?}"),
        }
    }
}

fn not_after(der: &[u8]) -> SystemTime {
    x509_cert::Certificate::from_der(der)
        .unwrap()
        .tbs_certificate()
        .validity()
        .not_after
        .to_system_time()
}

#[tokio::test]
async fn a_valid_application_gets_a_credential_only_the_sim_opens() {
    let w = world("valid").await;
    let app = valid_application(501);
    let sign_end = not_after(&application_cert(&app));
    let IssuerResponse::Issued {
        credential,
        serial,
        not_after: na,
    } = w
        .send(&w.issue_request_keyed(app, SP, IdempotencyKey([9; 16])))
        .await
    else {
        panic!("not issued");
    };
    // The serial answered is the certificate's, as kagi prints serials (the SP-TSM asks by it).
    assert_eq!(
        serial,
        kagi_certs::serial_hex(&x509_cert::Certificate::from_der(&credential.certificate).unwrap())
    );
    // 501 = 0x01F5 (whole bytes, as kagi prints serials), the serial of the card's signature certificate.
    assert_eq!(credential.my_number_sign_serial, "01F5");
    // The certificate: under the UA CA (its signature checks with the CA's key), never past
    // the signature certificate (30 days here, against 365 of the issuer's validity).
    let cert = x509_cert::Certificate::from_der(&credential.certificate).unwrap();
    let ca = cas().ua.0.certificate();
    assert_eq!(
        cert.tbs_certificate().issuer(),
        ca.tbs_certificate().subject()
    );
    assert!(kagi_certs::issued_by(
        ca,
        &cert.tbs_certificate().to_der().unwrap(),
        &cert.signature_algorithm().oid,
        cert.signature().raw_bytes()
    ));
    assert!(not_after(&credential.certificate) <= sign_end);
    assert_eq!(
        na,
        not_after(&credential.certificate)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );
    // The key opens with the SIM's key, for the JPKI instance, and is the certificate's key.
    let binding = |role| card_wire::content::Binding {
        iccid: ICCID,
        card_serial: &[7],
        instance: &card_wire::jpki::JPKI_AID,
        role,
        request_id: &[9; 16],
    };
    let key = card_wire::content::open(
        &w.sim_key,
        &binding(card_wire::content::Role::KeyEf(
            card_wire::jpki::EF_AUTH_KEY,
        )),
        &credential.sealed_key,
    )
    .unwrap();
    let key = p256::SecretKey::from_slice(&key).unwrap();
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .unwrap();
    use p256::pkcs8::EncodePublicKey;
    assert_eq!(
        key.public_key().to_public_key_der().unwrap().as_bytes(),
        &spki[..]
    );
    // The PIN opens likewise and is the one in the PIN mailer.
    let pin = card_wire::content::open(
        &w.sim_key,
        &binding(card_wire::content::Role::PinEf(
            card_wire::jpki::EF_AUTH_PIN,
        )),
        &credential.sealed_pin,
    )
    .unwrap();
    let letter = w.dir.join(format!("pin-mailer/{serial}.pin"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&letter).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the PIN letter is the holder's only");
    }
    let mailed = std::fs::read_to_string(&letter).unwrap();
    assert_eq!(mailed.trim().as_bytes(), &pin[..]);
    // Another SIM key opens nothing.
    let other = {
        use p256::elliptic_curve::Generate;
        p256::SecretKey::try_generate().unwrap()
    };
    assert!(
        card_wire::content::open(
            &other,
            &binding(card_wire::content::Role::KeyEf(
                card_wire::jpki::EF_AUTH_KEY
            )),
            &credential.sealed_key
        )
        .is_err()
    );
}

/// The signature certificate an application carries.
fn application_cert(app: &[u8]) -> Vec<u8> {
    Application::decode(app).unwrap().certificate
}

#[tokio::test]
async fn each_refusal_has_its_own_code() {
    let w = world("refusals").await;
    let c = cas();
    let now = SystemTime::now();
    // Expired card.
    let expired = application(sign_cert(
        &c.sign,
        601,
        now - Duration::from_secs(40 * 86_400),
        now - Duration::from_secs(86_400),
    ));
    assert_eq!(w.code(expired).await, "application.expired");
    // Forged: one bit of the signature flipped.
    let mut forged = valid_application(602);
    *forged.last_mut().unwrap() ^= 1;
    assert_eq!(w.code(forged).await, "application.bad-signature");
    // Another CA's card.
    let foreign = application(sign_cert(
        &c.foreign,
        603,
        now - Duration::from_secs(60),
        now + Duration::from_secs(86_400),
    ));
    assert_eq!(w.code(foreign).await, "application.unknown-issuer");
    // Revoked on the signature CA's CRL (the file is read again for this check).
    std::fs::write(
        w.dir.join("sign-ca.crl.der"),
        c.sign.crl(1, &[604]).unwrap().to_der().unwrap(),
    )
    .unwrap();
    assert_eq!(w.code(valid_application(604)).await, "application.revoked");
    // The same application twice (two requests, two idempotency keys): the second is a
    // replay.
    let app = valid_application(605);
    assert!(matches!(
        w.send(&w.issue_request(app.clone(), SP)).await,
        IssuerResponse::Issued { .. }
    ));
    assert_eq!(w.code(app).await, "application.replayed");
    // A provider the SP-TSM does not act for.
    match w
        .send(&w.issue_request(valid_application(606), "sp:other-bank"))
        .await
    {
        IssuerResponse::Rejected(e) => assert_eq!(e.code, "issuer.not-your-provider"),
        other => panic!("{other:?}"),
    }
    // An SP-TSM the issuer does not trust (a key it does not know under the same name).
    let stranger = Signer::generate(PartyId::new("tsm:kagi").unwrap()).unwrap();
    match w
        .send_as(&stranger, &w.issue_request(valid_application(607), SP))
        .await
    {
        IssuerResponse::Rejected(e) => assert_eq!(e.code, "protocol.unknown-key"),
        other => panic!("{other:?}"),
    }
    // The same signed message twice: the second is refused as a replay.
    let out = tsm_protocol::control::sign_request(
        &w.sp_tsm,
        w.issuer.party(),
        &IssuerRequest::Status { serials: vec![] },
        None,
        signing::now_ms(),
        60_000,
    )
    .unwrap();
    assert!(matches!(
        w.answer(&out.bytes, &out.header).await,
        IssuerResponse::Status { .. }
    ));
    match w.answer(&out.bytes, &out.header).await {
        IssuerResponse::Rejected(e) => assert_eq!(e.code, "protocol.replayed"),
        other => panic!("{other:?}"),
    }
}

/// Linked revocation: the CRL names the card; the status query syncs it and reports the
/// phone certificate revoked, with its signature serial.
#[tokio::test]
async fn revoking_the_card_revokes_its_phone_certificates() {
    let w = world("linked").await;
    let IssuerResponse::Issued { serial, .. } =
        w.send(&w.issue_request(valid_application(701), SP)).await
    else {
        panic!("not issued");
    };
    let status = |serial: String| IssuerRequest::Status {
        serials: vec![serial],
    };
    assert_eq!(
        w.send(&status(serial.clone())).await,
        IssuerResponse::Status { revoked: vec![] }
    );
    std::fs::write(
        w.dir.join("sign-ca.crl.der"),
        cas().sign.crl(1, &[701]).unwrap().to_der().unwrap(),
    )
    .unwrap();
    match w.send(&status(serial.clone())).await {
        IssuerResponse::Status { revoked } => {
            assert_eq!(revoked.len(), 1);
            assert_eq!(revoked[0].serial, serial);
            assert_eq!(revoked[0].sign_serial, "02BD");
            assert_eq!(revoked[0].reason, "sign-revoked");
        }
        other => panic!("{other:?}"),
    }
}

/// A revocation racing issuances for the same signature serial: whatever the order the
/// database gives them, no active phone certificate stays linked to the revoked serial, and
/// every issuance that was answered `Issued` before the revocation is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_racing_issuances_never_leaves_an_active_link() {
    race(Arc::new(world("race").await)).await;
}

/// The same race on PostgreSQL (READ COMMITTED: the row lock on the signature serial orders
/// the two transactions).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_race_on_postgres_too() {
    let pg = tsm_server::testing::PrivatePostgres::start("issuer-race").unwrap();
    let w = Arc::new(world_on("race-pg", kagi_db::Backend::Postgres(pg.url.clone())).await);
    assert_eq!(w.issuer.db().describe(), "postgresql");
    race(w.clone()).await;
    one_key_race(&w, 951, "03B7").await;
    // And a whole issuance with its link on PostgreSQL.
    let IssuerResponse::Issued { serial, .. } =
        w.send(&w.issue_request(valid_application(900), SP)).await
    else {
        panic!("not issued");
    };
    let link = tsm_server::issuer::store::link(w.issuer.db(), &serial)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (link.sign_serial.as_str(), link.state.as_str()),
        ("0384", "active")
    );
}

async fn race(w: Arc<World>) {
    let mut tasks = Vec::new();
    for i in 0..12 {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = w.issue_request(valid_application(800), SP);
            if let IssuerRequest::Issue { request_id, .. } = &mut req {
                *request_id = IdempotencyKey([i as u8; 16]);
            }
            w.send(&req).await
        }));
    }
    // The revocation lands while the issuances run: once the first link is in.
    let revoker = {
        let w = w.clone();
        tokio::spawn(async move {
            for _ in 0..2000 {
                let n = tsm_server::issuer::store::links_of(w.issuer.db(), "0320")
                    .await
                    .unwrap()
                    .len();
                if n > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            w.issuer.revoke_sign_serial("0320", "test").await.unwrap()
        })
    };
    let mut issued = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            IssuerResponse::Issued { .. } => issued += 1,
            IssuerResponse::Rejected(e) => {
                assert_eq!(e.code, "application.revoked");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    revoker.await.unwrap();
    eprintln!("race: {issued} issued before the revocation, {refused} refused after it");
    let links = tsm_server::issuer::store::links_of(w.issuer.db(), "0320")
        .await
        .unwrap();
    assert_eq!(links.len(), issued, "every Issued answer has its link");
    assert!(
        links.iter().all(|l| l.state == "revoked"),
        "an active phone certificate is linked to the revoked card: {links:?}"
    );
    assert_eq!(issued + refused, 12);
}

/// Sixteen racing issue requests with one idempotency key (an SP-TSM sending the same `Apply`
/// sixteen times at once; each its own signed message): one certificate, one link, one PIN
/// letter, and the same answer for all; then the key with another application is a conflict,
/// and the application under a fresh key a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_issue_requests_with_one_key_issue_once() {
    let w = Arc::new(world("one-key").await);
    // 950 = 0x03B6, as kagi prints serials.
    one_key_race(&w, 950, "03B6").await;
}

async fn one_key_race(w: &Arc<World>, sign_serial: u32, sign_hex: &str) {
    let app = valid_application(sign_serial);
    let key = IdempotencyKey::random().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (w, app) = (w.clone(), app.clone());
        tasks.push(tokio::spawn(async move {
            w.send(&w.issue_request_keyed(app, SP, key)).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let IssuerResponse::Issued { serial, .. } = &answers[0] else {
        panic!("not issued: {:?}", answers[0]);
    };
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "the answers differ: {answers:?}"
    );
    let links = tsm_server::issuer::store::links_of(w.issuer.db(), sign_hex)
        .await
        .unwrap();
    assert_eq!(links.len(), 1, "one certificate: {links:?}");
    assert_eq!(&links[0].serial, serial);
    let letters = std::fs::read_dir(w.dir.join("pin-mailer"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy() == format!("{serial}.pin"))
        .count();
    assert_eq!(letters, 1, "its PIN letter");
    let issued = tsm_server::issuer::store::audit_trail(w.issuer.db())
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, _, event, detail)| {
            event == "issued" && detail.contains(&format!("sign {sign_hex} "))
        })
        .count();
    assert_eq!(issued, 1, "one issuance in the audit trail");
    // The key again with another application: refused, nothing issued.
    match w
        .send(&w.issue_request_keyed(valid_application(sign_serial), SP, key))
        .await
    {
        IssuerResponse::Rejected(e) => assert_eq!(e.code, "protocol.idempotency-conflict"),
        other => panic!("{other:?}"),
    }
    // The application under a fresh key: a replay.
    assert_eq!(w.code(app).await, "application.replayed");
}

#[path = "issuer/lifecycle.rs"]
mod lifecycle;

#[path = "issuer/crl_expiry.rs"]
mod crl_expiry;
