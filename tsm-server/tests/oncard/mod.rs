//! The JPKI issuer in process for its on-card mode's tests (`csr16`, `check16`): the
//! signature and user-authentication CAs, signed applications, simulated SIMs with the
//! provider's domain and the JPKI applet (their keys certified by the fixtures' manufacturer
//! CA), the applet's key generation under the provider's secure channel, and signed requests
//! to an [`Issuer`] on SQLite. The signature CA's revocation list is `revoked.txt` in the
//! world's directory (none until a test writes it).
#![allow(dead_code)]

pub use der::{Decode, Encode};
pub use kagi::channel::CardChannel;
pub use kagi::gp::{self, manage};
pub use kagi::secure::SecureChannel;
pub use kagi_certs::application::{Application, Body};
pub use kagi_fixtures::sim::PROVIDER_SD;
pub use std::sync::{Arc, OnceLock};
pub use std::time::{Duration, SystemTime};
pub use test_pki::{BasicFacts, TestCa};
pub use tsm_protocol::control::{CredentialBundle, open_answer_as};
pub use tsm_protocol::issuer::{IssuerRequest, IssuerResponse};
pub use tsm_protocol::signing::{self, Policy, Signer, Trust};
pub use tsm_protocol::{IdempotencyKey, PartyId};
pub use tsm_server::issuer::{Issuer, IssuerConfig, SignCa};
pub use zeroize::Zeroizing;

/// The provider every application here names.
pub const SP: &str = "sp:kagi-bank";
/// The JPKI applet instance.
pub const AID: [u8; 10] = card_wire::jpki::JPKI_AID;

#[path = "../issuer_support/mod.rs"]
mod issuer_support;
pub use issuer_support::TestCaUa;

pub struct Cas {
    pub sign: TestCa,
    pub ua: Arc<TestCaUa>,
    pub card_key: rsa::PrivateKey,
}

pub fn cas() -> &'static Cas {
    static C: OnceLock<Cas> = OnceLock::new();
    C.get_or_init(|| Cas {
        sign: TestCa::new("JPKI for digital signature").unwrap(),
        ua: Arc::new(TestCaUa(
            TestCa::new("JPKI for user authentication").unwrap(),
        )),
        card_key: test_pki::generate_rsa_key().unwrap(),
    })
}

/// A fresh application for `iccid`, signed with the My Number card's key.
pub fn application(iccid: &str, serial: u32) -> Vec<u8> {
    use rsa::signature::{SignatureEncoding, Signer as _};
    let now = SystemTime::now();
    let cert = cas()
        .sign
        .issue_sign(
            &cas().card_key.to_public_key(),
            &BasicFacts::synthetic(),
            serial,
            now - Duration::from_secs(86_400),
            now + Duration::from_secs(30 * 86_400),
        )
        .unwrap()
        .to_der()
        .unwrap();
    let body = Body::new(iccid, SP, "user-1", "holder@example.jp", now).unwrap();
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

pub fn provider_keys() -> card_wire::scp03::DiversifiedMaster {
    kagi_fixtures::sim::provider_keys(card_wire::scp03::StaticKeys::default_test_keys(0x31), 0x31)
}

/// A SIM with the provider's domain (its keys diversified from the provider's master) and
/// its key agreement key certified by the fixtures' manufacturer CA, the JPKI applet loaded
/// and installed in the provider's domain.
pub fn sim(serial: &[u8]) -> (CardChannel<applet_sim::SimCard>, Ids) {
    let s = kagi_fixtures::sim::provision(serial, &PROVIDER_SD, &provider_keys()).unwrap();
    let mut ch = CardChannel::new(s.card);
    with_sd(&mut ch, |sc| {
        let file = manage::sim_load_file(
            &card_wire::jpki::JPKI_PACKAGE,
            &[(AID.to_vec(), "jpki.ap".into())],
        );
        manage::load(sc, &card_wire::jpki::JPKI_PACKAGE, None, &file, true).unwrap();
        manage::install(
            sc,
            &manage::InstallSpec {
                package: card_wire::jpki::JPKI_PACKAGE.to_vec(),
                module: AID.to_vec(),
                instance: AID.to_vec(),
                selectable: true,
                ..Default::default()
            },
        )
        .unwrap();
    });
    let ids = Ids {
        iccid: s.iccid,
        card_certificate: s.card_certificate,
    };
    (ch, ids)
}

/// A SIM's ICCID and its manufacturer certificate (what its operator registered).
pub struct Ids {
    pub iccid: String,
    pub card_certificate: Vec<u8>,
}

pub type Sd<'a> = SecureChannel<'a, applet_sim::SimCard>;

/// Runs `f` under a full-security SCP03 session with the provider's domain.
pub fn with_sd<T>(
    ch: &mut CardChannel<applet_sim::SimCard>,
    f: impl FnOnce(&mut Sd<'_>) -> T,
) -> T {
    gp::select(ch, &PROVIDER_SD).unwrap();
    let opts = card_wire::scp03::HostOptions {
        kvn: 0x31,
        level: card_wire::scp03::SecurityLevel::FULL,
        ..Default::default()
    };
    let mut sc =
        SecureChannel::open_source(ch, Arc::new(provider_keys()), opts, Some(&PROVIDER_SD))
            .unwrap();
    f(&mut sc)
}

/// The applet's answer to `challenge`: the key made in `0017` under the provider's domain.
pub fn generate_on_card(ch: &mut CardChannel<applet_sim::SimCard>, challenge: &[u8]) -> Vec<u8> {
    let script = tsm_protocol::recipes::jpki_generate_script(challenge);
    let out = with_sd(ch, |sc| {
        manage::personalize(sc, &AID, &card_wire::gp::blocks(&script), false).unwrap()
    });
    let items = card_wire::tlv::parse_all(&out).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].tag.0, card_wire::jpki::ITEM_GENERATE_PROVEN);
    items[0].value.to_vec()
}

/// The credential written as the SP-TSM writes it (`recipes::jpki_credential` with no
/// sealed key: certificate EFs and the sealed PIN), through the provider's domain.
pub fn write_credential(
    ch: &mut CardChannel<applet_sim::SimCard>,
    request_id: &IdempotencyKey,
    credential: &CredentialBundle,
) {
    let goals = tsm_protocol::recipes::jpki_credential(&AID, &request_id.0, credential);
    let Some(tsm_protocol::script::Goal::Personalize { script, .. }) = goals.last() else {
        panic!("no personalisation goal");
    };
    assert!(
        card_wire::tlv::parse_all(script)
            .unwrap()
            .iter()
            .all(|i| i.tag.0 != card_wire::jpki::ITEM_SEALED_KEY),
        "no key travels in the on-card mode"
    );
    with_sd(ch, |sc| {
        manage::personalize(sc, &AID, &card_wire::gp::blocks(script), true).unwrap()
    });
}

pub struct World {
    pub issuer: Issuer,
    pub sp_tsm: Signer,
    pub issuer_trust: Trust,
    /// The issuer's public key (its answers' signer).
    pub issuer_key: p256::ecdsa::VerifyingKey,
    pub dir: std::path::PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn world(name: &str) -> World {
    let dir = std::env::temp_dir().join(format!("kagi-oncard-{name}-{}", std::process::id()));
    world_on(name, kagi_db::Backend::Sqlite(dir.join("issuer.db"))).await
}

/// [`world`] with the issuer's database on `backend`.
pub async fn world_on(name: &str, backend: kagi_db::Backend) -> World {
    world_with(name, backend, tsm_server::issuer::CheckBudget::default()).await
}

/// [`world_on`] with the issuer's budget of refused checks `budget`.
pub async fn world_with(
    name: &str,
    backend: kagi_db::Backend,
    budget: tsm_server::issuer::CheckBudget,
) -> World {
    let c = cas();
    let dir = std::env::temp_dir().join(format!("kagi-oncard-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("sign-ca.der"), c.sign.certificate_der().unwrap()).unwrap();
    let me = Signer::generate(PartyId::new("jpki:test-issuer").unwrap()).unwrap();
    let sp_tsm = Signer::generate(PartyId::new("tsm:kagi").unwrap()).unwrap();
    let mut trust = Trust::new();
    trust.add(sp_tsm.party().clone(), *sp_tsm.verifying_key());
    let mut issuer_trust = Trust::new();
    issuer_trust.add(me.party().clone(), *me.verifying_key());
    let issuer_key = *me.verifying_key();
    let mut challenge_key = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut challenge_key[..]).unwrap();
    let config = IssuerConfig {
        policy: Policy::new(me.party().clone()),
        signer: me,
        trust,
        sp_tsms: [(sp_tsm.party().clone(), vec![PartyId::new(SP).unwrap()])]
            .into_iter()
            .collect(),
        sign_ca: SignCa {
            certificate: dir.join("sign-ca.der"),
            crl: None,
            revoked: Some(dir.join("revoked.txt")),
        },
        ua_ca: c.ua.clone(),
        manufacturer_ca: kagi_fixtures::sim::manufacturer_ca()
            .unwrap()
            .certificate()
            .clone(),
        pin_mailer: dir.join("pin-mailer"),
        validity: Duration::from_secs(365 * 86_400),
        max_age: Duration::from_secs(600),
        challenge_key,
    };
    World {
        issuer: Issuer::open(config, &backend)
            .await
            .unwrap()
            .with_check_budget(budget),
        sp_tsm,
        issuer_trust,
        issuer_key,
        dir,
    }
}

impl World {
    pub async fn send(&self, req: &IssuerRequest) -> IssuerResponse {
        let out = tsm_protocol::control::sign_request(
            &self.sp_tsm,
            self.issuer.party(),
            req,
            None,
            signing::now_ms(),
            60_000,
        )
        .unwrap();
        let a = self.issuer.handle(&out.bytes).await.unwrap();
        open_answer_as(&a, &out.header, &self.issuer_trust, signing::now_ms()).unwrap()
    }

    pub async fn challenge(&self, s: &Ids, request_id: IdempotencyKey) -> Vec<u8> {
        match self
            .send(&IssuerRequest::Challenge {
                provider: PartyId::new(SP).unwrap(),
                iccid: s.iccid.clone(),
                card_certificate: s.card_certificate.clone(),
                instance: AID.to_vec(),
                request_id,
            })
            .await
        {
            IssuerResponse::Challenge { challenge, .. } => challenge,
            other => panic!("no challenge: {other:?}"),
        }
    }

    pub async fn certify(
        &self,
        s: &Ids,
        sign_serial: u32,
        request_id: IdempotencyKey,
        challenge: &[u8],
        proof: Vec<u8>,
    ) -> IssuerResponse {
        self.send(&IssuerRequest::Certify {
            application: application(&s.iccid, sign_serial),
            provider: PartyId::new(SP).unwrap(),
            iccid: s.iccid.clone(),
            card_certificate: s.card_certificate.clone(),
            instance: AID.to_vec(),
            request_id,
            nonce: challenge[65..].to_vec(),
            proof,
            moves: None,
        })
        .await
    }
}

pub fn code(r: IssuerResponse) -> String {
    match r {
        IssuerResponse::Rejected(e) => e.code,
        other => panic!("not refused: {other:?}"),
    }
}

/// The private key the applet keeps in `0017` (a 32-byte P-256 scalar), read out of the
/// simulated SIM's store.
pub fn key_on_card(card: &applet_sim::SimCard) -> Vec<u8> {
    let store = card.store();
    let names: Vec<String> = store
        .keys("app/")
        .into_iter()
        .filter(|k| k.ends_with("key/0017"))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    store.get(&names[0]).unwrap().to_vec()
}
