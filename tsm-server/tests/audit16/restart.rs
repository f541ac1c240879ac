//! An SP-TSM in the on-card mode stopped and started again (a new `Tsm` over the same
//! database file) between the issuer's challenge and Certify: the SIM made the key, the
//! relay holds the card's answer, and the SP-TSM that asked for the challenge is gone. The
//! relay's report reaches the new instance, which has no secure session for it: a new probe,
//! the key made again against the challenge kept with the operation, certified once; the
//! download completes. The issuer issued one certificate (one link, one PIN letter), the
//! SIM holds that certificate and the key it certifies, and the SP-TSM keeps no challenge,
//! no sealed content and no second credential.
//!
//! And the clean failure: a Certify the issuer turns away for now (the SP-TSM's budget of
//! refused checks spent, `issuer.check-budget`, retryable) interrupts the download — nothing
//! certified, spent or kept half-made — and the relay's next session completes it.

use super::oncard;
use super::support::{self, Tweak, party};
use std::sync::Arc;
use tsm_protocol::control::{AppletRef, CardTarget, ControlRequest, ControlResponse};
use tsm_protocol::relay::{Agent, AgentMsg, ServerMsg, StopOutcome, UserCredentials};
use tsm_protocol::signing::{Signer, Trust};
use tsm_server::service::{Config, IssuerLink, Provider, Tsm};

/// Serves the issuer of `w` at `/v1/issuer` on a local port; its base URL.
async fn serve_issuer(w: Arc<oncard::World>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v1/issuer",
        axum::routing::post(move |body: axum::body::Bytes| {
            let w = w.clone();
            async move {
                match w.issuer.handle(&body).await {
                    Ok(a) => (axum::http::StatusCode::OK, a),
                    Err(e) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        e.to_string().into_bytes(),
                    ),
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// Whether the SIM's JPKI applet holds a key (`0017`) now.
fn has_key(card: &applet_sim::SimCard) -> bool {
    card.store()
        .keys("app/")
        .iter()
        .any(|k| k.ends_with("key/0017"))
}

/// Runs the relay against `tsm` from `msg` until the TSM stops the session, or — `pause` —
/// until an order made the SIM's applet hold a key: then the report not yet sent.
async fn relay(
    tsm: &Tsm,
    card: &mut applet_sim::SimCard,
    agent: &mut Agent,
    mut msg: AgentMsg,
    pause: bool,
) -> Result<(StopOutcome, String), AgentMsg> {
    loop {
        let body = tsm_protocol::codec::encode(&msg).unwrap();
        let answer = tsm.relay(&body).await.unwrap();
        let reply: ServerMsg = tsm_protocol::codec::decode(&answer).unwrap();
        msg = match reply {
            ServerMsg::Order {
                session, seq, cmds, ..
            } => {
                let had = has_key(card);
                let report = agent.on_order(card, session, seq, &cmds);
                if pause && !had && has_key(card) {
                    return Err(report);
                }
                report
            }
            ServerMsg::Stop {
                outcome, message, ..
            } => {
                agent.close(card);
                return Ok((outcome, message));
            }
            other => panic!("unexpected: {other:?}"),
        };
    }
}

/// An SP-TSM in the on-card mode with the issuer of `w` (served over HTTP), a SIM with the
/// provider's domain registered there, and the holder's Apply accepted.
struct Download {
    sp: support::World,
    card: applet_sim::SimCard,
    ticket: String,
    code: String,
    _dir: support::TempDir,
}

async fn download(w: &Arc<oncard::World>, name: &str, sim_serial: &[u8], sign: u32) -> Download {
    let url = serve_issuer(w.clone()).await;
    // The SP-TSM: the issuer's SP-TSM key, the issuer trusted, in the on-card mode, acting
    // for the provider of the applications with the SIM's provider domain keys.
    let sp_pem = w.sp_tsm.to_pkcs8_pem().unwrap().to_string();
    let bank = Signer::generate(party(oncard::SP)).unwrap();
    let bank_key = *bank.verifying_key();
    let issuer_party = w.issuer.party().clone();
    let issuer_key = w.issuer_key;
    // The access code goes to the holder's mail address (seed 004 ⑪): a maildir here.
    let dir = support::TempDir::new(name);
    let maildir = dir.0.join("outbox");
    let outbox = Arc::new(
        kagi_notify::Outbox::open(
            &kagi_notify::OutboxConfig::Maildir {
                path: maildir.clone(),
            },
            "SP-TSM <tsm@sp.example.jp>",
        )
        .unwrap(),
    );
    let tweak: Tweak = Arc::new(move |c: &mut Config| {
        c.outbox = Some(outbox.clone());
        c.signer = Signer::from_pkcs8_pem(party("tsm:kagi"), &sp_pem).unwrap();
        let mut link = IssuerLink::new(issuer_party.clone(), &url);
        link.key_on_card = true;
        c.issuer = Some(link);
        c.trust.add(issuer_party.clone(), issuer_key);
        c.trust.add(party(oncard::SP), bank_key);
        c.providers.insert(
            party(oncard::SP),
            Provider {
                sd_aid: oncard::PROVIDER_SD.to_vec(),
                kvn: 0x31,
                keys: Arc::new(oncard::provider_keys()),
            },
        );
    });
    let mut sp = support::World::tweaked(&dir.sqlite(), super::ca(), Some(tweak)).await;
    sp.answers = Trust::new();
    sp.answers.add(party("tsm:kagi"), *w.sp_tsm.verifying_key());
    sp.signers.insert(oncard::SP, bank);

    let sim =
        kagi_fixtures::sim::provision(sim_serial, &oncard::PROVIDER_SD, &oncard::provider_keys())
            .unwrap();
    let iccid = sim.iccid.clone();
    let card = sim.card;
    let mut register = support::register_card(&iccid);
    if let ControlRequest::RegisterCard {
        card_certificate,
        cin,
        ..
    } = &mut register
    {
        *card_certificate = Some(sim.card_certificate.clone());
        cin.clone_from(&sim.cin);
    }
    assert_eq!(sp.send(support::MNO, &register).await, ControlResponse::Ok);
    let apply = ControlRequest::Apply {
        subscriber_ref: "subscriber-1".into(),
        card: CardTarget {
            iccid: iccid.clone(),
        },
        applet: AppletRef::jpki(),
        application: oncard::application(&iccid, sign),
        access: support::grant(3),
    };
    let ticket = match sp.send(oncard::SP, &apply).await {
        ControlResponse::Accepted {
            device_ticket: Some(t),
            access_code: None,
            ..
        } => t,
        other => panic!("not accepted: {other:?}"),
    };
    let mails: Vec<_> = std::fs::read_dir(maildir.join("new"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(mails.len(), 1);
    let code = std::fs::read_to_string(&mails[0])
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Access code: ")
                .map(|c| c.trim().to_string())
        })
        .unwrap();
    Download {
        sp,
        card,
        ticket,
        code,
        _dir: dir,
    }
}

/// The relay's first message of a new session, with the holder's entries.
fn hello(d: &Download) -> AgentMsg {
    AgentMsg::Hello {
        ticket: d.ticket.clone(),
        agent: "kagi-test".into(),
        resume: None,
        credentials: Some(UserCredentials {
            access_code: d.code.clone(),
            password: support::PASSWORD.into(),
        }),
        prepared: None,
    }
}

/// The states of the issuer's challenges, sorted.
async fn challenges(db: &kagi_db::Db) -> Vec<String> {
    let mut v: Vec<String> = db
        .query("SELECT state FROM challenges", vec![])
        .await
        .unwrap()
        .into_iter()
        .map(|r| r[0].text())
        .collect();
    v.sort();
    v
}

/// Rows of the SP-TSM's `sql`, each as `a|b|…`.
async fn rows(store: &tsm_server::store::Store, sql: &'static str) -> Vec<String> {
    store
        .query(sql, vec![])
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.iter().map(|v| v.text()).collect::<Vec<_>>().join("|"))
        .collect()
}

/// The issuer issued one certificate, active, with one PIN letter; the SP-TSM completed the
/// operation with one credential of that serial and keeps no challenge or sealed content;
/// the SIM holds that certificate and the key it certifies.
async fn issued_once(w: &oncard::World, d: Download) {
    let links = w
        .issuer
        .db()
        .query("SELECT serial, state FROM links", vec![])
        .await
        .unwrap();
    assert_eq!(links.len(), 1, "{links:?}");
    let serial = links[0][0].text();
    assert_eq!(links[0][1].text(), "active");
    let letters: Vec<_> = std::fs::read_dir(w.dir.join("pin-mailer"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(letters, [format!("{serial}.pin")]);
    let store = d.sp.tsm.store();
    assert_eq!(rows(store, "SELECT state FROM ops").await, ["completed"]);
    assert_eq!(
        rows(store, "SELECT serial, state FROM credentials").await,
        [format!("{serial}|active")]
    );
    assert!(
        rows(store, "SELECT op_id FROM keygen_challenges")
            .await
            .is_empty()
    );
    assert!(rows(store, "SELECT op_id FROM sealed").await.is_empty());
    let mut ch = kagi::channel::CardChannel::new(d.card);
    kagi::jpki::select(&mut ch).unwrap();
    let cert_der = kagi::jpki::read_der(&mut ch, card_wire::jpki::EF_AUTH_CERT).unwrap();
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(&cert_der).unwrap();
    let got_serial = hex::encode_upper(cert.tbs_certificate().serial_number().as_bytes());
    assert_eq!(
        got_serial.trim_start_matches("00"),
        serial.trim_start_matches("00")
    );
    let point = cert
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes()
        .to_vec();
    let scalar = oncard::key_on_card(ch.transport());
    let on_card = p256::SecretKey::from_slice(&scalar).unwrap();
    use p256::elliptic_curve::sec1::ToSec1Point;
    assert_eq!(
        on_card.public_key().to_sec1_point(false).as_bytes(),
        &point[..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sp_tsm_restarted_between_challenge_and_certify_completes_once() {
    let w = Arc::new(oncard::world("audit16-restart").await);
    let mut d = download(&w, "audit16-restart", &[0x16, 0x70], 1670).await;
    // The first session: up to the key made on the SIM, its report held by the relay.
    let mut agent = Agent::new();
    let first = hello(&d);
    let held = match relay(&d.sp.tsm, &mut d.card, &mut agent, first, true).await {
        Err(report) => report,
        Ok(stop) => panic!("the session ended before the key was made: {stop:?}"),
    };
    assert_eq!(
        challenges(w.issuer.db()).await,
        ["open"],
        "one challenge, not spent"
    );
    // The SP-TSM stops; a new one on the same database takes the relay's report.
    let fresh = d.sp.instance().await;
    let old = std::mem::replace(&mut d.sp.tsm, fresh);
    drop(old);
    let (outcome, message) = relay(&d.sp.tsm, &mut d.card, &mut agent, held, false)
        .await
        .unwrap();
    assert_eq!(outcome, StopOutcome::Completed, "{message}");
    // The challenge kept with the operation was generated against again and spent once.
    assert_eq!(challenges(w.issuer.db()).await, ["used"]);
    issued_once(&w, d).await;
}

/// The SP-TSM's budget of refused checks spent when it asks Certify: the issuer turns it
/// away (`issuer.check-budget`, retryable) before anything is verified or spent; the download
/// is interrupted, not failed — nothing certified, no credential —, and the relay's next
/// session, the window over, makes the key again against a new challenge and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certify_turned_away_by_the_budget_interrupts_and_the_next_session_completes() {
    const WINDOW: u64 = 5_000;
    let budget = tsm_server::issuer::CheckBudget {
        refusals: 1,
        window: std::time::Duration::from_millis(WINDOW),
    };
    let dir = std::env::temp_dir().join(format!(
        "kagi-oncard-audit16-certify-budget-{}",
        std::process::id()
    ));
    let w = Arc::new(
        oncard::world_with(
            "audit16-certify-budget",
            kagi_db::Backend::Sqlite(dir.join("issuer.db")),
            budget,
        )
        .await,
    );
    let mut d = download(&w, "audit16-certify-budget", &[0x16, 0x71], 1671).await;
    super::align(WINDOW, WINDOW - 300).await;
    // One bad check of the SP-TSM spends its budget for this window.
    let other = "8981000000000016719";
    let bad = super::check(oncard::application(other, 1672), "8981000000000016727");
    assert_eq!(oncard::code(w.send(&bad).await), "application.wrong-sim");
    let mut agent = Agent::new();
    let first = hello(&d);
    let (outcome, message) = relay(&d.sp.tsm, &mut d.card, &mut agent, first, false)
        .await
        .unwrap();
    assert_eq!(outcome, StopOutcome::Interrupted, "{message}");
    let store = d.sp.tsm.store().clone();
    assert_eq!(rows(&store, "SELECT state FROM ops").await, ["interrupted"]);
    assert_eq!(
        rows(
            &store,
            "SELECT detail FROM audit WHERE event = 'interrupted'"
        )
        .await,
        ["issuer.check-budget"]
    );
    assert!(
        rows(&store, "SELECT op_id FROM credentials")
            .await
            .is_empty()
    );
    assert!(
        rows(&store, "SELECT op_id FROM keygen_challenges")
            .await
            .is_empty()
    );
    let n = w
        .issuer
        .db()
        .query("SELECT count(*) FROM links", vec![])
        .await
        .unwrap();
    assert_eq!(n[0][0].int(), 0, "nothing certified");
    assert_eq!(challenges(w.issuer.db()).await, ["open"], "nothing spent");
    // The next window: a new session completes.
    super::align(WINDOW, WINDOW).await;
    let mut agent = Agent::new();
    let first = hello(&d);
    let (outcome, message) = relay(&d.sp.tsm, &mut d.card, &mut agent, first, false)
        .await
        .unwrap();
    assert_eq!(outcome, StopOutcome::Completed, "{message}");
    // The first challenge is left to expire; the second was spent by the one Certify.
    assert_eq!(challenges(w.issuer.db()).await, ["open", "used"]);
    issued_once(&w, d).await;
}
