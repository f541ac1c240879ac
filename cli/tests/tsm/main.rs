//! The TSM end to end, in process: a TSM on SQLite and on a private PostgreSQL, the operator
//! registering a simulated SIM, a provider issuing a JPKI credential, the relay carrying the
//! card scripts, the receipt's key proof checked by the provider, the holder using the
//! credential; replayed, altered, expired, misdirected and conflicting requests refused; wrong
//! access codes counted; revocation effective at once and the applet deleted when the card is
//! next reachable; the TSM killed mid-download and restarted without losing the operation;
//! and no key, PIN or content key in the relay's traffic.

#[path = "../support/mod.rs"]
mod support;

mod domains;
mod flow;
mod lifecycle;
mod pg_processes;

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
use tsm_protocol::{OpId, PartyId};
use tsm_server::service::{Config, Provider, Tsm};
use tsm_server::store::{Backend, Store};

const CONTENT_KEY: [u8; 16] = [0x3C; 16];
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
                content_key: AesKey::new(&CONTENT_KEY).unwrap(),
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
            state_key: AesKey::new(&[0x11; 16]).unwrap(),
            revocation_list: Some(self.dir.join("revoked.txt")),
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
}

fn issue_request(world: &World, iccid: &str, pin: &[u8]) -> (ControlRequest, Vec<u8>, Vec<u8>) {
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
) -> (ControlRequest, Vec<u8>, Vec<u8>) {
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
    let bundle = provider::bundle(
        &AesKey::new(&CONTENT_KEY).unwrap(),
        &CardKey::P256(key),
        cert.clone(),
        world.ca.certificate_der().unwrap(),
        pin,
        "0ABCDEF1",
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
    )
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
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.response, ControlResponse::Ok);
}

async fn issue(world: &World, sp: &Party, iccid: &str) -> Issued {
    let (req, cert, key) = issue_request(world, iccid, b"2580");
    let a = sp.send(&req, None).await.unwrap();
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
    }
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
