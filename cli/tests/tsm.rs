//! The TSM end to end, in process: a TSM on SQLite and on a private PostgreSQL, the operator
//! registering a simulated SIM, a provider issuing a JPKI credential, the relay carrying the
//! card scripts, the receipt's key proof checked by the provider, the holder using the
//! credential; replayed, altered, expired, misdirected and conflicting requests refused; wrong
//! access codes counted; revocation effective at once and the applet deleted when the card is
//! next reachable; the TSM killed mid-download and restarted without losing the operation;
//! and no key, PIN or content key in the relay's traffic.

mod support;

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

async fn full_flow(backend: Backend, name: &str) {
    let world = World::new(name);
    let server = start(&world, &backend, 0).await;
    let url = server.url.clone();
    let sp = world.client_party(&world.sp, &url);
    let mut sim = provision(b"phone-1", &PROVIDER_SD, &provider_keys(master(), 0x31)).unwrap();
    register(&world, &url, &sim).await;

    // Issue, download, receipt.
    let iss = issue(&world, &sp, &sim.iccid).await;
    let mut capture = Vec::new();
    let out = download(
        &url,
        &mut sim.card,
        &iss.ticket,
        &iss.code,
        Some(&mut capture),
    )
    .await;
    assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);
    assert!(out.round_trips <= 6, "{} round trips", out.round_trips);
    let v = operation(&sp, iss.op).await;
    assert_eq!(v.state, OpState::Completed);
    let receipt = provider::check_receipt(
        v.receipt.as_ref().unwrap(),
        &sp.trust,
        &iss.op,
        iss.request,
        &iss.cert,
    )
    .unwrap();
    assert_eq!(receipt.cin, sim.cin);
    assert_eq!(receipt.my_number_sign_serial, "0ABCDEF1");
    // Nothing secret crossed the relay: not the private key, the content key, or the PIN in
    // any form a command would carry it.
    for (what, needle) in [
        ("private key", &iss.key[..]),
        ("content key", &CONTENT_KEY[..]),
        ("PIN record", &[0x00, 0x18, b'2', b'5', b'8', b'0'][..]),
    ] {
        assert!(
            !capture.windows(needle.len()).any(|w| w == needle),
            "the {what} crossed the relay"
        );
    }
    // The ticket is spent: a second download with it is refused.
    let again = download(&url, &mut sim.card, &iss.ticket, &iss.code, None).await;
    assert_eq!(again.outcome, StopOutcome::Refused);

    // The holder uses it; the eligibility read says eligible.
    support::assert_verdict(
        &mut sim.card,
        world.ca.certificate(),
        None,
        kagi::eligibility::Verdict::Eligible,
    );

    // Protocol checks: a replay, an altered request, the wrong recipient.
    let (req, _, _) = issue_request(&world, &sim.iccid, b"1111");
    let out = tsm_protocol::control::sign_request(
        &sp.signer,
        &sp.tsm,
        &req,
        Some(tsm_protocol::IdempotencyKey::random().unwrap()),
        tsm_protocol::signing::now_ms(),
        60_000,
    )
    .unwrap();
    let first = sp.client.post("/v1/control", &out.bytes).await.unwrap().0;
    let first = tsm_protocol::control::open_answer(
        &first,
        &out.header,
        &sp.trust,
        tsm_protocol::signing::now_ms(),
    )
    .unwrap();
    assert!(
        matches!(first, ControlResponse::Accepted { .. }),
        "{first:?}"
    );
    let replay = sp.client.post("/v1/control", &out.bytes).await.unwrap().0;
    let replay = tsm_protocol::control::open_answer(
        &replay,
        &out.header,
        &sp.trust,
        tsm_protocol::signing::now_ms(),
    )
    .unwrap();
    assert!(
        matches!(replay, ControlResponse::Rejected(ref e) if e.code == "protocol.replayed"),
        "{replay:?}"
    );
    let mut altered = out.bytes.clone();
    let n = altered.len();
    altered[n / 2] ^= 0x40;
    let r = sp.client.post("/v1/control", &altered).await;
    match r {
        Ok((b, _)) => {
            let a = tsm_protocol::control::open_answer(
                &b,
                &out.header,
                &sp.trust,
                tsm_protocol::signing::now_ms(),
            );
            assert!(matches!(a, Ok(ControlResponse::Rejected(_))), "{a:?}");
        }
        Err(e) => assert!(e.to_string().contains("refused"), "{e}"),
    }
    let elsewhere = tsm_protocol::control::sign_request(
        &sp.signer,
        &party("tsm:other"),
        &ControlRequest::CheckStatus { credential: iss.op },
        None,
        tsm_protocol::signing::now_ms(),
        60_000,
    )
    .unwrap();
    let b = sp
        .client
        .post("/v1/control", &elsewhere.bytes)
        .await
        .unwrap()
        .0;
    let mut t2 = Trust::new();
    t2.add(world.tsm.party().clone(), *world.tsm.verifying_key());
    let env = tsm_protocol::signing::verify_document::<ControlResponse>(
        &tsm_protocol::Sealed::from_bytes(&b).unwrap(),
        tsm_protocol::Kind::ControlResponse,
        &t2,
    )
    .unwrap();
    assert!(
        matches!(env.body, ControlResponse::Rejected(ref e) if e.code == "protocol.misdirected"),
        "{:?}",
        env.body
    );
    // Idempotency: the same key with another request conflicts.
    let ControlResponse::Accepted { op: pending, .. } = first else {
        unreachable!()
    };
    let (other_req, _, _) = issue_request(&world, &sim.iccid, b"2222");
    let conflict = sp
        .send(&other_req, out.header.idempotency_key)
        .await
        .unwrap()
        .response;
    assert!(
        matches!(conflict, ControlResponse::Rejected(ref e) if e.code == "protocol.idempotency-conflict"),
        "{conflict:?}"
    );
    // The pending issue is cancelled.
    let c = sp
        .send(&ControlRequest::Cancel { op: pending }, None)
        .await
        .unwrap()
        .response;
    assert!(
        matches!(c, ControlResponse::Operation(ref v) if v.state == OpState::Cancelled),
        "{c:?}"
    );

    // Revocation: at once at the TSM and in its list; the applet goes from the card the next
    // time the provider's session reaches it (here a wallet update).
    let r = ask(
        &sp,
        &ControlRequest::Revoke {
            credential: iss.op,
            reason: RevokeReason::CardLost,
        },
    )
    .await;
    let ControlResponse::Credential(status) = r else {
        panic!("{r:?}")
    };
    assert_eq!(status.state, "revoked");
    assert!(status.card_deletion_pending);
    let list = sp.client.get_text("/v1/revoked").await.unwrap();
    assert!(list.contains("0x12345678"), "{list}");
    support::assert_verdict(
        &mut sim.card,
        world.ca.certificate(),
        Some(&std::fs::read_to_string(world.dir.join("revoked.txt")).unwrap()),
        kagi::eligibility::Verdict::Revoked,
    );
    let wallet = [0xF0, 0x4B, 0x41, 0x47, 0x49, 0x57, 0x4C, 0x01, 0x01];
    let w = sp
        .send(
            &ControlRequest::WalletUpdate {
                card: CardTarget {
                    iccid: sim.iccid.clone(),
                },
                instance: wallet.to_vec(),
                updates: vec![tsm_protocol::control::WalletUpdate {
                    id: [1; 8],
                    change: tsm_protocol::control::WalletChange::Points(120),
                }],
                access: provider::access_grant(PASSWORD, 3, 600_000).unwrap(),
            },
            None,
        )
        .await
        .unwrap()
        .response;
    let ControlResponse::Accepted {
        op: wop,
        device_ticket: Some(wt),
        access_code: Some(wc),
        ..
    } = w
    else {
        panic!("{w:?}")
    };
    // A wrong code first: counted, then the right one.
    let client = Client::new(&url, Link::default());
    let mut tries = vec![
        UserCredentials {
            access_code: wc.clone(),
            password: PASSWORD.into(),
        },
        UserCredentials {
            access_code: "0000-0000-0000".into(),
            password: PASSWORD.into(),
        },
    ];
    let mut seen_left = Vec::new();
    let mut ask = |left: u8| {
        seen_left.push(left);
        tries.pop()
    };
    let out = relay::run(
        &client,
        &mut sim.card,
        relay::Options {
            ticket: wt,
            credentials: None,
            ask: &mut ask,
            agent: "kagi-test-relay".into(),
            capture: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);
    assert_eq!(seen_left, vec![3, 2]);
    let v = operation(&sp, wop).await;
    assert!(
        v.steps
            .iter()
            .any(|s| s.starts_with("delete:D392F000260100000001")),
        "{:?}",
        v.steps
    );
    let r = sp
        .send(&ControlRequest::CheckStatus { credential: iss.op }, None)
        .await
        .unwrap()
        .response;
    assert!(
        matches!(r, ControlResponse::Credential(ref s) if !s.card_deletion_pending),
        "{r:?}"
    );
    // The audit trail has every step.
    let trail = Store::open(&backend)
        .await
        .unwrap()
        .audit_trail(Some(&iss.op))
        .await
        .unwrap();
    let events: Vec<&str> = trail.iter().map(|a| a.event.as_str()).collect();
    for e in [
        "accepted",
        "session-opened",
        "authorised",
        "completed",
        "revoked",
        "deleted-from-card",
    ] {
        assert!(events.contains(&e), "{e} missing from {events:?}");
    }
    server.stop().await;
    std::fs::remove_dir_all(&world.dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_full_flow() {
    let dir = std::env::temp_dir().join(format!("kagi-tsm-db-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    full_flow(Backend::Sqlite(dir.join("tsm.db")), "sqlite").await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_full_flow() {
    let pg = tsm_server::testing::PrivatePostgres::start("flow").unwrap();
    full_flow(Backend::Postgres(pg.url.clone()), "postgres").await;
}

/// The TSM dies while the relay is between two orders, and comes back on the same database
/// and port: the relay's retried report reaches the new process, which has no secure session
/// for it, opens a new one, probes, and completes the operation once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_download_the_operation_completes_exactly_once() {
    let world = World::new("kill");
    let backend = Backend::Sqlite(world.dir.join("tsm.db"));
    let server = start(&world, &backend, 0).await;
    let url = server.url.clone();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let sp = world.client_party(&world.sp, &url);
    let sim = provision(b"phone-kill", &PROVIDER_SD, &provider_keys(master(), 0x31)).unwrap();
    register(&world, &url, &sim).await;
    let iss = issue(&world, &sp, &sim.iccid).await;
    // A card wrapper that kills the TSM right after the card answered its second order.
    struct Killer {
        card: applet_sim::SimCard,
        commands: usize,
        initialize_updates: usize,
        kill: Option<Running>,
        restart: tokio::sync::mpsc::UnboundedSender<()>,
    }
    impl card_wire::Transport for Killer {
        fn transmit(&mut self, c: &[u8]) -> Result<Vec<u8>, card_wire::TransportError> {
            self.commands += 1;
            if c.get(1) == Some(&0x50) {
                self.initialize_updates += 1;
            }
            let r = self.card.transmit(c);
            if self.commands == 8
                && let Some(k) = self.kill.take()
            {
                // Killed here, between two orders: nothing of it survives.
                k.kill();
                let _ = self.restart.send(());
            }
            r
        }
        fn reset(&mut self, k: card_wire::ResetKind) -> Result<Vec<u8>, card_wire::TransportError> {
            self.card.reset(k)
        }
        fn atr(&self) -> Option<Vec<u8>> {
            self.card.atr()
        }
        fn capabilities(&self) -> card_wire::Capabilities {
            self.card.capabilities()
        }
        fn describe(&self) -> String {
            "killer".into()
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut card = Killer {
        card: sim.card,
        commands: 0,
        initialize_updates: 0,
        kill: Some(server),
        restart: tx,
    };
    let restarter = {
        let config = world.config();
        let backend = backend.clone();
        tokio::spawn(async move {
            rx.recv().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            start_with(config, &backend, port).await
        })
    };
    let ticket = iss.ticket.clone();
    let code = iss.code.clone();
    let out = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(download(&url, &mut card, &ticket, &code, None))
    });
    assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);
    assert!(card.kill.is_none(), "the TSM was never killed");
    assert_eq!(
        card.initialize_updates, 2,
        "the restarted TSM continued with a new secure session"
    );
    let v = operation(&sp, iss.op).await;
    assert_eq!(v.state, OpState::Completed);
    provider::check_receipt(
        v.receipt.as_ref().unwrap(),
        &sp.trust,
        &iss.op,
        iss.request,
        &iss.cert,
    )
    .unwrap();
    // Exactly once: one completion in the audit trail, and the applet installed once.
    let trail = Store::open(&backend)
        .await
        .unwrap()
        .audit_trail(Some(&iss.op))
        .await
        .unwrap();
    assert_eq!(trail.iter().filter(|a| a.event == "completed").count(), 1);
    let apps = card
        .card
        .runtime()
        .registry()
        .iter()
        .filter(|e| e.aid.as_bytes() == card_wire::jpki::JPKI_AID)
        .count();
    assert_eq!(apps, 1);
    restarter.await.unwrap().stop().await;
    std::fs::remove_dir_all(&world.dir).ok();
}

/// The rest of the lifecycle: a PIN reset through the relay (the old PIN stops working), a
/// transfer to a new SIM (the new credential active, the old one superseded and deleted from
/// the old SIM when it is next reached), the operator's SIM-changed and card-lost notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_reset_transfer_and_operator_notices() {
    let world = World::new("lifecycle");
    let (server, _backend, sp, mno) = world.serve().await;
    let url = server.url.clone();
    let keys = provider_keys(master(), 0x31);
    let mut a = provision(b"phone-a", &PROVIDER_SD, &keys).unwrap();
    let mut b = provision(b"phone-b", &PROVIDER_SD, &keys).unwrap();
    register(&world, &url, &a).await;
    register(&world, &url, &b).await;
    let iss = issue(&world, &sp, &a.iccid).await;
    let out = download(&url, &mut a.card, &iss.ticket, &iss.code, None).await;
    assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);

    // PIN reset: a new PIN sealed for the applet, through the relay; the key proof again.
    let content = AesKey::new(&CONTENT_KEY).unwrap();
    let r = ask(
        &sp,
        &ControlRequest::ResetPin {
            credential: iss.op,
            sealed_pin: provider::seal_pin(&content, b"9753").unwrap(),
            access: provider::access_grant(PASSWORD, 3, 600_000).unwrap(),
        },
    )
    .await;
    let ControlResponse::Accepted {
        device_ticket: Some(t),
        access_code: Some(c),
        ..
    } = r
    else {
        panic!("{r:?}")
    };
    let out = download(&url, &mut a.card, &t, &c, None).await;
    assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);
    {
        let mut ch = kagi::channel::CardChannel::new(&mut a.card);
        kagi::jpki::select(&mut ch).unwrap();
        let old = zeroize::Zeroizing::new(b"2580".to_vec());
        assert!(matches!(
            kagi::jpki::verify(&mut ch, kagi::jpki::Pin::Auth, &old),
            Err(kagi::Error::WrongPin { .. })
        ));
        let new = zeroize::Zeroizing::new(b"9753".to_vec());
        kagi::jpki::verify(&mut ch, kagi::jpki::Pin::Auth, &new).unwrap();
    }

    // Transfer to SIM B.
    let (req, cert_b, _) = issue_request(&world, &b.iccid, b"1470");
    let ControlRequest::Issue {
        credential: new_credential,
        ..
    } = req
    else {
        unreachable!()
    };
    let r = sp
        .send(
            &ControlRequest::Transfer {
                credential: iss.op,
                card: CardTarget {
                    iccid: b.iccid.clone(),
                },
                new_credential,
                access: provider::access_grant(PASSWORD, 3, 600_000).unwrap(),
            },
            None,
        )
        .await
        .unwrap();
    let ControlResponse::Accepted {
        op: transfer,
        device_ticket: Some(t),
        access_code: Some(c),
        ..
    } = r.response
    else {
        panic!("{:?}", r.response)
    };
    let out = download(&url, &mut b.card, &t, &c, None).await;
    assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);
    let v = operation(&sp, transfer).await;
    provider::check_receipt(
        v.receipt.as_ref().unwrap(),
        &sp.trust,
        &transfer,
        r.request,
        &cert_b,
    )
    .unwrap();
    let status = |cred: OpId| {
        let sp = &sp;
        async move {
            match sp
                .send(&ControlRequest::CheckStatus { credential: cred }, None)
                .await
                .unwrap()
                .response
            {
                ControlResponse::Credential(s) => s,
                other => panic!("{other:?}"),
            }
        }
    };
    let old = status(iss.op).await;
    assert_eq!(
        (old.state.as_str(), old.revoked),
        ("revoked", Some(RevokeReason::Superseded))
    );
    assert!(old.card_deletion_pending);
    let new = status(transfer).await;
    assert_eq!(
        (new.state.as_str(), new.iccid.as_str()),
        ("active", b.iccid.as_str())
    );

    // The operator: SIM A replaced — no more issuing to it; SIM B lost — its credential is
    // revoked at once.
    let r = ask(
        &mno,
        &ControlRequest::SimChanged {
            old_iccid: a.iccid.clone(),
            new_iccid: b.iccid.clone(),
        },
    )
    .await;
    assert_eq!(r, ControlResponse::Ok);
    let (req, _, _) = issue_request(&world, &a.iccid, b"1111");
    let r = sp.send(&req, None).await.unwrap().response;
    assert!(
        matches!(r, ControlResponse::Rejected(ref e) if e.code == "business.card-not-active"),
        "{r:?}"
    );
    // A provider may not send operator notices.
    let r = ask(
        &sp,
        &ControlRequest::CardLost {
            iccid: b.iccid.clone(),
        },
    )
    .await;
    assert!(
        matches!(r, ControlResponse::Rejected(ref e) if e.code == "business.not-an-operator"),
        "{r:?}"
    );
    let r = ask(
        &mno,
        &ControlRequest::CheckEligibility {
            iccid: b.iccid.clone(),
            memory_needed: 1024,
        },
    )
    .await;
    assert!(
        matches!(r, ControlResponse::Eligibility { eligible: true, .. }),
        "{r:?}"
    );
    let r = ask(
        &mno,
        &ControlRequest::CardLost {
            iccid: b.iccid.clone(),
        },
    )
    .await;
    assert_eq!(r, ControlResponse::Ok);
    let new = status(transfer).await;
    assert_eq!(
        (new.state.as_str(), new.revoked),
        ("revoked", Some(RevokeReason::CardLost))
    );
    let r = ask(
        &mno,
        &ControlRequest::CheckEligibility {
            iccid: b.iccid.clone(),
            memory_needed: 1024,
        },
    )
    .await;
    assert!(
        matches!(
            r,
            ControlResponse::Eligibility {
                eligible: false,
                ..
            }
        ),
        "{r:?}"
    );
    server.stop().await;
    std::fs::remove_dir_all(&world.dir).ok();
}

/// The MNO-TSM's part: a provider's domain created over the air on a blank SIM (installed by
/// the issuer domain, then given the provider's keys in its own session), after which the
/// provider downloads into it; creating it again finds everything in place (the domain's
/// initial keys are gone, the provider's keys open it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_creates_the_provider_domain_over_the_air() {
    let world = World::new("create-sd");
    let (server, backend, sp, mno) = world.serve().await;
    let url = server.url.clone();
    let mut sim = kagi_fixtures::sim::blank(b"blank-phone").unwrap();
    register(&world, &url, &sim).await;
    for round in 0..2 {
        let r = ask(
            &mno,
            &ControlRequest::CreateSecurityDomain {
                iccid: sim.iccid.clone(),
                sd_aid: PROVIDER_SD.to_vec(),
                privileges: vec![0x80, 0x40, 0x00],
                provider: world.sp.party().clone(),
                access: provider::access_grant(PASSWORD, 3, 600_000).unwrap(),
            },
        )
        .await;
        let ControlResponse::Accepted {
            op,
            device_ticket: Some(t),
            access_code: Some(c),
            ..
        } = r
        else {
            panic!("{r:?}")
        };
        let out = download(&url, &mut sim.card, &t, &c, None).await;
        assert_eq!(
            out.outcome,
            StopOutcome::Completed,
            "round {round}: {}",
            out.message
        );
        let trail = Store::open(&backend)
            .await
            .unwrap()
            .audit_trail(Some(&op))
            .await
            .unwrap();
        assert!(
            trail.iter().any(|a| a.event == "domain-installed"),
            "{trail:?}"
        );
    }
    // A provider may not create domains.
    let r = ask(
        &sp,
        &ControlRequest::CreateSecurityDomain {
            iccid: sim.iccid.clone(),
            sd_aid: PROVIDER_SD.to_vec(),
            privileges: vec![0x80],
            provider: world.sp.party().clone(),
            access: provider::access_grant(PASSWORD, 3, 600_000).unwrap(),
        },
    )
    .await;
    assert!(
        matches!(r, ControlResponse::Rejected(ref e) if e.code == "business.not-an-operator"),
        "{r:?}"
    );
    // The provider's download into the new domain.
    let iss = issue(&world, &sp, &sim.iccid).await;
    let out = download(&url, &mut sim.card, &iss.ticket, &iss.code, None).await;
    assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);
    // The domain's initial (issuer) keys no longer open it.
    {
        let mut ch = kagi::channel::CardChannel::new(&mut sim.card);
        kagi::gp::select(&mut ch, &PROVIDER_SD).unwrap();
        let opts = card_wire::scp03::HostOptions {
            kvn: 0x30,
            ..Default::default()
        };
        let r = kagi::secure::SecureChannel::open(
            &mut ch,
            card_wire::scp03::StaticKeys::default_test_keys(0x30),
            opts,
            Some(&PROVIDER_SD),
        );
        // Key set 30 was replaced by the provider's 31: the card no longer knows it.
        assert!(
            matches!(
                r,
                Err(kagi::Error::Scp03(
                    card_wire::scp03::Scp03Error::InitializeUpdateRefused(card_wire::StatusWord(
                        0x6A88
                    ))
                ))
            ),
            "{:?}",
            r.err()
        );
    }
    server.stop().await;
    std::fs::remove_dir_all(&world.dir).ok();
}

/// A credential expires end to end: a certificate already past its notAfter is refused at
/// issue; one that runs out after its download is reported expired by the TSM's status and
/// read as expired from the card, while it is neither revoked nor touched on the card.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_expires_end_to_end() {
    let world = World::new("expiry");
    let (server, _backend, sp, _mno) = world.serve().await;
    let url = server.url.clone();
    let mut sim = provision(b"phone-exp", &PROVIDER_SD, &provider_keys(master(), 0x31)).unwrap();
    register(&world, &url, &sim).await;
    let now = std::time::SystemTime::now();
    let day = std::time::Duration::from_secs(86400);
    // Already expired: refused, nothing created.
    let (req, _, _) = issue_request_until(&world, &sim.iccid, b"2580", now - 2 * day, now - day);
    let r = ask(&sp, &req).await;
    assert!(
        matches!(r, ControlResponse::Rejected(ref e) if e.code == "business.expired-certificate"),
        "{r:?}"
    );
    // Valid for a few more seconds (X.509 times have whole seconds).
    let not_after = now + std::time::Duration::from_secs(4);
    let (req, _, _) = issue_request_until(&world, &sim.iccid, b"2580", now - day, not_after);
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
    let out = download(&url, &mut sim.card, &ticket, &code, None).await;
    assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);
    let status = |r: ControlResponse| match r {
        ControlResponse::Credential(s) => s,
        other => panic!("{other:?}"),
    };
    let not_after_secs = not_after
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let s = status(ask(&sp, &ControlRequest::CheckStatus { credential: op }).await);
    assert_eq!(s.not_after, not_after_secs);
    assert_eq!(s.state, "active");
    // Wait (without asserting any time) until the certificate is past its notAfter.
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        <= not_after_secs + 1
    {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let s = status(ask(&sp, &ControlRequest::CheckStatus { credential: op }).await);
    assert!(s.expired, "{s:?}");
    assert_eq!((s.state.as_str(), s.revoked), ("active", None));
    assert!(!s.card_deletion_pending);
    support::assert_verdict(
        &mut sim.card,
        world.ca.certificate(),
        None,
        kagi::eligibility::Verdict::Expired,
    );
    server.stop().await;
    std::fs::remove_dir_all(&world.dir).ok();
}
