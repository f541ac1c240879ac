//! The TSM end to end, in process: a TSM on SQLite and on a private PostgreSQL, the operator
//! registering a simulated SIM, a provider issuing a JPKI credential, the relay carrying the
//! card scripts, the receipt's key proof checked by the provider, the holder using the
//! credential; replayed, altered, expired, misdirected and conflicting requests refused; wrong
//! access codes counted; revocation effective at once and the applet deleted when the card is
//! next reachable; the TSM killed mid-download and restarted without losing the operation;
//! credentials sealed to the SIM's own key (its certificate checked against the manufacturer
//! CA, a substituted one refused); and no key, PIN or content key in the relay's traffic, the
//! TSM's database or its log; and issues and downloads through a killed PostgreSQL primary
//! (a pg_auto_failover formation).

#[path = "../support/mod.rs"]
mod support;

mod domains;
mod failover;
mod flow;
mod lifecycle;
mod pg_processes;
mod race16;
mod relay_version;
mod relayed_receipt;
mod two_services;

use card_wire::scp03::AesKey;
use kagi_fixtures::sim::{PROVIDER_SD, ProvisionedSim, provider_keys, provision};
use kagi_online::tsm::client::{Client, Link};
use kagi_online::tsm::provider::{self, CardKey, Party};
use kagi_online::tsm::relay;
use std::collections::BTreeMap;
use std::sync::Arc;
use tsm_protocol::control::{
    AppletRef, CardTarget, ControlRequest, ControlResponse, OpState, RevokeReason,
};
use tsm_protocol::relay::{StopOutcome, UserCredentials};
use tsm_protocol::signing::{Policy, Signer, Trust};
use tsm_protocol::{IdempotencyKey, OpId, PartyId};
use tsm_server::service::{Config, Provider, Tsm};
use tsm_server::store::{Backend, Store};

const PASSWORD: &str = "correct horse";

fn party(s: &str) -> PartyId {
    PartyId::new(s).unwrap()
}

fn master() -> card_wire::scp03::StaticKeys {
    kagi::keys::read_key_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/keys/provider.keys"),
        0x31,
    )
    .unwrap()
}

/// The parties' keys, made once per test.
/// A party's request, answered (no idempotency key of the caller's).
async fn ask(p: &Party, req: &ControlRequest) -> ControlResponse {
    p.send(req, None).await.unwrap().response
}

struct World {
    tsm: Arc<Signer>,
    sp: Signer,
    mno: Signer,
    ca: test_pki::TestCa,
    dir: std::path::PathBuf,
    /// The SIMs' key agreement certificates, as registered (what the provider seals to).
    card_certs: std::sync::Mutex<BTreeMap<String, Vec<u8>>>,
}

impl World {
    fn new(name: &str) -> World {
        let dir = std::env::temp_dir().join(format!("kagi-tsm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        World {
            tsm: Arc::new(Signer::generate(party("tsm:kagi")).unwrap()),
            sp: Signer::generate(party("sp:bank")).unwrap(),
            mno: Signer::generate(party("mno:kagi-mobile")).unwrap(),
            ca: test_pki::TestCa::new("JPKI for user authentication").unwrap(),
            dir,
            card_certs: Default::default(),
        }
    }

    fn config(&self) -> Config {
        let mut trust = Trust::new();
        trust.add(self.sp.party().clone(), *self.sp.verifying_key());
        trust.add(self.mno.party().clone(), *self.mno.verifying_key());
        let mut providers = BTreeMap::new();
        providers.insert(
            self.sp.party().clone(),
            Provider {
                sd_aid: PROVIDER_SD.to_vec(),
                kvn: 0x31,
                keys: Arc::new(provider_keys(master(), 0x31)),
            },
        );
        let mut operators = BTreeMap::new();
        operators.insert(
            self.mno.party().clone(),
            tsm_server::service::Operator {
                isd_aid: card_wire::uicc::UICC_ISD_AID.to_vec(),
                kvn: 0x30,
                keys: Arc::new(card_wire::scp03::DiversifiedMaster {
                    master: card_wire::scp03::StaticKeys::default_test_keys(0x30),
                    scheme: card_wire::scp03::Diversification::None,
                    kvn: 0x30,
                }),
            },
        );
        Config {
            signer: Signer::from_pkcs8_pem(
                self.tsm.party().clone(),
                &self.tsm.to_pkcs8_pem().unwrap(),
            )
            .unwrap(),
            trust,
            policy: Policy::new(self.tsm.party().clone()),
            providers,
            operators,
            hosted: BTreeMap::new(),
            mno: Vec::new(),
            issuer: None,
            state_key: AesKey::new(&[0x11; 16]).unwrap(),
            revocation_list: Some(self.dir.join("revoked.txt")),
            outbox: None,
        }
    }

    /// A TSM on SQLite in the world's directory, with the provider's and operator's clients.
    async fn serve(&self) -> (Running, Backend, Party, Party) {
        let backend = Backend::Sqlite(self.dir.join("tsm.db"));
        let server = start(self, &backend, 0).await;
        let sp = self.client_party(&self.sp, &server.url);
        let mno = self.client_party(&self.mno, &server.url);
        (server, backend, sp, mno)
    }

    fn client_party(&self, who: &Signer, url: &str) -> Party {
        let mut trust = Trust::new();
        trust.add(self.tsm.party().clone(), *self.tsm.verifying_key());
        Party {
            signer: Signer::from_pkcs8_pem(who.party().clone(), &who.to_pkcs8_pem().unwrap())
                .unwrap(),
            tsm: self.tsm.party().clone(),
            trust,
            client: Client::new(url, Link::default()),
        }
    }
}

/// A TSM serving on a port of its own until stopped.
/// A TSM "process": its own runtime, so that a kill drops everything it holds — the service,
/// its in-memory sessions and every connection task — as a real kill would.
struct Running {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
    rt: Option<tokio::runtime::Runtime>,
}

async fn start(world: &World, backend: &Backend, port: u16) -> Running {
    start_with(world.config(), backend, port).await
}

async fn start_with(config: Config, backend: &Backend, port: u16) -> Running {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let backend = backend.clone();
    let (url_tx, url_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    rt.spawn(async move {
        let store = Store::open(&backend).await.unwrap();
        let tsm = Arc::new(Tsm::new(config, store));
        // The port of a killed TSM may take a moment to be free again.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => break l,
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("bind: {e}"),
            }
        };
        let _ = url_tx.send(format!("http://{}", listener.local_addr().unwrap()));
        tsm_server::http::serve(tsm, listener, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
        let _ = done_tx.send(());
    });
    Running {
        url: url_rx.await.unwrap(),
        stop: Some(stop_tx),
        done: Some(done_rx),
        rt: Some(rt),
    }
}

impl Running {
    /// Stops at once, dropping everything in memory (as a kill would).
    fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = d.await;
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

struct Issued {
    op: OpId,
    ticket: String,
    code: String,
    request: (tsm_protocol::MsgId, tsm_protocol::Nonce),
    cert: Vec<u8>,
    key: Vec<u8>,
    /// The sealed key and PIN as the provider sent them.
    sealed: [Vec<u8>; 2],
}

/// An issue request as the provider makes it: the credential sealed to SIM `iccid`'s
/// registered key agreement key (checked against the fixtures' manufacturer CA) under a fresh
/// request id — send it with that id as idempotency key. The request, the certificate, the
/// private key and the request id.
fn issue_request(world: &World, iccid: &str, pin: &[u8]) -> IssueRequest {
    let now = std::time::SystemTime::now();
    issue_request_until(
        world,
        iccid,
        pin,
        now,
        now + std::time::Duration::from_secs(86400 * 365),
    )
}

/// An issue request whose certificate is valid from `not_before` until `not_after`.
fn issue_request_until(
    world: &World,
    iccid: &str,
    pin: &[u8],
    not_before: std::time::SystemTime,
    not_after: std::time::SystemTime,
) -> IssueRequest {
    use der::Encode;
    use p256::elliptic_curve::Generate;
    let key = p256::ecdsa::SigningKey::try_generate().unwrap();
    let cert = world
        .ca
        .issue_auth(
            key.verifying_key(),
            "KAGIPHONE01",
            0x1234_5678,
            not_before,
            not_after,
        )
        .unwrap()
        .to_der()
        .unwrap();
    let raw = key.to_bytes().to_vec();
    let rid = IdempotencyKey::random().unwrap();
    let bundle = provider::bundle(
        &seal_target(world, iccid),
        &card_wire::jpki::JPKI_AID,
        &rid,
        &CardKey::P256(key),
        cert.clone(),
        world.ca.certificate_der().unwrap(),
        pin,
        &my_number_application(world, iccid).sign_serial,
    )
    .unwrap();
    (
        ControlRequest::Issue {
            subscriber_ref: "subscriber-1".into(),
            card: CardTarget {
                iccid: iccid.into(),
            },
            applet: AppletRef::jpki(),
            credential: bundle,
            access: provider::access_grant(PASSWORD, 3, 600_000).unwrap(),
        },
        cert,
        raw,
        rid,
    )
}

/// The user's application for `iccid` to the world's provider, signed with a My Number
/// card's signature key (an RSA key certified, serial 0ABCDEF1, by a test signature CA) and
/// checked as the provider checks it: the serial the credential is linked to comes from the
/// verified certificate.
fn my_number_application(world: &World, iccid: &str) -> kagi_certs::application::Verified {
    use der::Encode;
    use kagi_certs::application::{Application, Body, Expect, check};
    use rsa::signature::{SignatureEncoding, Signer as _};
    static CARD: std::sync::OnceLock<(test_pki::TestCa, rsa::PrivateKey, Vec<u8>)> =
        std::sync::OnceLock::new();
    let (ca, key, cert) = CARD.get_or_init(|| {
        let ca = test_pki::TestCa::new("JPKI for digital signature").unwrap();
        let key = test_pki::generate_rsa_key().unwrap();
        let now = std::time::SystemTime::now();
        let cert = ca
            .issue_sign(
                &key.to_public_key(),
                &test_pki::BasicFacts::synthetic(),
                0x0ABC_DEF1,
                now - std::time::Duration::from_secs(60),
                now + std::time::Duration::from_secs(365 * 86400),
            )
            .unwrap()
            .to_der()
            .unwrap();
        (ca, key, cert)
    });
    let now = std::time::SystemTime::now();
    let provider = world.sp.party().to_string();
    let body = Body::new(iccid, &provider, "subscriber-1", "holder@example.jp", now).unwrap();
    let signature = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone())
        .sign(&body.signed_bytes().unwrap())
        .to_vec();
    let bytes = Application {
        body,
        certificate: cert.clone(),
        signature,
    }
    .encode()
    .unwrap();
    let trust = kagi_certs::Trust {
        cas: vec![ca.certificate().clone()],
        ..Default::default()
    };
    check(
        &bytes,
        &trust,
        &Expect {
            iccid,
            provider: &provider,
            now,
            max_age: std::time::Duration::from_secs(600),
        },
    )
    .unwrap()
}

/// What [`issue_request`] makes: the request, certificate, private key and request id.
type IssueRequest = (ControlRequest, Vec<u8>, Vec<u8>, IdempotencyKey);

/// SIM `iccid` as the provider seals to it: its registered certificate, checked against the
/// fixtures' manufacturer CA.
fn seal_target(world: &World, iccid: &str) -> provider::SealTarget {
    let cert = world.card_certs.lock().unwrap()[iccid].clone();
    provider::SealTarget::verify(
        kagi_fixtures::sim::manufacturer_ca().unwrap().certificate(),
        &cert,
        iccid,
        std::time::SystemTime::now(),
    )
    .unwrap()
}

async fn register(world: &World, url: &str, sim: &ProvisionedSim) {
    let mno = world.client_party(&world.mno, url);
    let r = mno
        .send(
            &ControlRequest::RegisterCard {
                iccid: sim.iccid.clone(),
                cin: sim.cin.clone(),
                sd_aid: PROVIDER_SD.to_vec(),
                free_memory: 64 * 1024,
                card_certificate: Some(sim.card_certificate.clone()),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.response, ControlResponse::Ok);
    world
        .card_certs
        .lock()
        .unwrap()
        .insert(sim.iccid.clone(), sim.card_certificate.clone());
}

async fn issue(world: &World, sp: &Party, iccid: &str) -> Issued {
    let (req, cert, key, rid) = issue_request(world, iccid, b"2580");
    let ControlRequest::Issue { credential, .. } = &req else {
        unreachable!("an issue request")
    };
    let sealed = [credential.sealed_key.clone(), credential.sealed_pin.clone()];
    let a = sp.send(&req, Some(rid)).await.unwrap();
    let ControlResponse::Accepted {
        op,
        device_ticket: Some(ticket),
        access_code: Some(code),
        ..
    } = a.response
    else {
        panic!("{:?}", a.response)
    };
    Issued {
        op,
        ticket,
        code,
        request: a.request,
        cert,
        key,
        sealed,
    }
}

/// The AES-256 key a value sealed for the JPKI instance on `card` was sealed under, worked
/// out here from the card's private key by the content layer's published recipe (ECDH on
/// P-256; HKDF-SHA256 with salt `eph ‖ card`, info = "kagi content v1" and the
/// length-prefixed ICCID, certificate serial and instance, then the role), independently of
/// `card_wire::content` — to look for it where it must not be.
fn derived_key(card: &applet_sim::SimCard, iccid: &str, role: [u8; 3], sealed: &[u8]) -> [u8; 32] {
    use der::Decode;
    use hmac::{KeyInit, Mac};
    use p256::elliptic_curve::sec1::ToSec1Point;
    let store = card.store();
    let secret = p256::SecretKey::from_slice(store.get("card/ecka/key").unwrap()).unwrap();
    let cert = x509_cert::Certificate::from_der(store.get("card/ecka/cert").unwrap()).unwrap();
    let serial = cert.tbs_certificate().serial_number().as_bytes().to_vec();
    let eph = p256::PublicKey::from_sec1_bytes(&sealed[1..66]).unwrap();
    let z = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), eph.as_affine());
    let card_pub = secret.public_key().to_sec1_point(false);
    let hmac = |key: &[u8], parts: &[&[u8]]| {
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().to_vec()
    };
    let prk = hmac(
        &[&sealed[1..66], card_pub.as_bytes()].concat(),
        &[z.raw_secret_bytes()],
    );
    let mut info = b"kagi content v1".to_vec();
    for field in [iccid.as_bytes(), &serial, &card_wire::jpki::JPKI_AID] {
        info.extend((field.len() as u16).to_be_bytes());
        info.extend(field);
    }
    info.extend(role);
    hmac(&prk, &[&info, &[1]]).try_into().unwrap()
}

async fn download(
    url: &str,
    card: &mut dyn card_wire::Transport,
    ticket: &str,
    code: &str,
    capture: Option<&mut Vec<u8>>,
) -> relay::Outcome {
    let client = Client::new(url, Link::default());
    let code = code.to_string();
    let mut ask = move |_left: u8| {
        Some(UserCredentials {
            access_code: code.clone(),
            password: PASSWORD.into(),
        })
    };
    relay::run(
        &client,
        card,
        relay::Options {
            ticket: ticket.into(),
            credentials: None,
            ask: &mut ask,
            agent: "kagi-test-relay".into(),
            capture,
            limits: tsm_protocol::relief::DerivationLimits::production(),
        },
    )
    .await
    .unwrap()
}

async fn operation(sp: &Party, op: OpId) -> tsm_protocol::control::OperationView {
    match sp
        .send(&ControlRequest::GetOperation { op }, None)
        .await
        .unwrap()
        .response
    {
        ControlResponse::Operation(v) => v,
        other => panic!("{other:?}"),
    }
}

/// Every byte of every row of every table of the TSM's database (through the database, so
/// PostgreSQL is searched as well as SQLite).
async fn table_bytes(backend: &Backend) -> Vec<u8> {
    let store = Store::open(backend).await.unwrap();
    let mut out = Vec::new();
    for sql in [
        "SELECT * FROM ops",
        "SELECT * FROM cards",
        "SELECT * FROM credentials",
        "SELECT * FROM tickets",
        "SELECT * FROM sessions",
        "SELECT * FROM audit",
        "SELECT * FROM replay",
        "SELECT * FROM sealed",
        "SELECT * FROM card_certs",
    ] {
        for row in store.query(sql, vec![]).await.unwrap() {
            for v in row {
                out.extend(v.blob());
                out.extend(v.text().into_bytes());
            }
        }
    }
    out
}

/// Everything the in-process TSMs of this test binary log, at every level (tracing's TRACE):
/// captured once for the whole binary, to search for what must never be logged.
fn tsm_log() -> &'static std::sync::Mutex<Vec<u8>> {
    static LOG: std::sync::OnceLock<&'static std::sync::Mutex<Vec<u8>>> =
        std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let buf: &'static std::sync::Mutex<Vec<u8>> =
            Box::leak(Box::new(std::sync::Mutex::new(Vec::new())));
        struct W(&'static std::sync::Mutex<Vec<u8>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || W(buf))
            .finish();
        // Another test of this binary may have set it first: then this one logs there too.
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
}
