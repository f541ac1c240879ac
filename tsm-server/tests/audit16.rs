//! Issue #16's three organisations keep a trail of the signed messages they refuse, each in
//! its own database (`tsm_server::refusals`): a forged signature, a replay, an unknown
//! signer, an expired message, one from the future, bytes that are no message — at the
//! MNO-TSM (requests of an SP-TSM), at the JPKI issuer (requests of the SP-TSM) and at the
//! SP-TSM (answers forged back to it). One audit event per claimed sender, code and minute,
//! counting: a flood of 1000 forged messages leaves a couple of rows with the right counts,
//! the names strangers claim collapsed into `unknown-sender`. The expected details are
//! written out here from the messages the test made (their ids read from the headers it
//! signed), never read back from the code under test.
//!
//! And the issuer's budget of refused application checks per SP-TSM: eight clients racing
//! with bad applications get at most the budget verified (the rest `issuer.check-budget`,
//! retryable), accepted checks do not count, and the window passing opens it again.

#[path = "oncard/mod.rs"]
#[allow(unused_imports)]
mod oncard;
#[path = "support/mod.rs"]
mod support;

#[path = "audit16/postgres.rs"]
mod postgres;
#[path = "audit16/restart.rs"]
mod restart;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::{BANK, MNO, TempDir, Tweak, party};
use tsm_protocol::PartyId;
use tsm_protocol::control::{ControlRequest, ControlResponse};
use tsm_protocol::issuer::{IssuerRequest, IssuerResponse};
use tsm_protocol::signing::{self, Header, Kind, Sealed, Signer};
use tsm_server::service::{Config, IssuerLink};

/// The refusal events of an audit table, oldest first: (actor, event, detail).
async fn refusals(db: &kagi_db::Db) -> Vec<(String, String, String)> {
    db.query(
        "SELECT actor, event, detail FROM audit
         WHERE event IN ('request-refused', 'answer-refused') ORDER BY id",
        vec![],
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r[0].text(), r[1].text(), r[2].text()))
    .collect()
}

/// The detail the issue's words prescribe: the code, the count, the first and last message
/// ids (hex of the headers' raw bytes) and the sender claimed.
fn detail(code: &str, n: u64, first: &Header, last: &Header, claimed: &str) -> String {
    format!(
        "{code} x{n} first msg {} last msg {} claimed {claimed}",
        hex::encode(first.msg_id.0),
        hex::encode(last.msg_id.0)
    )
}

fn row(actor: &str, event: &str, detail: String) -> (String, String, String) {
    (actor.into(), event.into(), detail)
}

/// A request of `signer` to `to`, issued at `at` (Unix ms) and valid `validity` ms.
fn request<T: serde::Serialize>(
    signer: &Signer,
    to: &PartyId,
    body: &T,
    at: u64,
    validity: u64,
) -> (Header, Vec<u8>) {
    let h = signer
        .header(Kind::ControlRequest, to, at, validity)
        .unwrap();
    let bytes = signer.seal(h.clone(), body).unwrap().to_bytes().unwrap();
    (h, bytes)
}

/// The same message with one bit of its signature flipped.
fn forged(bytes: &[u8]) -> Vec<u8> {
    let mut s = Sealed::from_bytes(bytes).unwrap();
    s.signature[7] ^= 0x10;
    s.to_bytes().unwrap()
}

fn now() -> u64 {
    signing::now_ms()
}

/// Waits, if less than `need` ms are left of the current `window` (ms), for the next one:
/// what a test counts per window then happens in one.
async fn align(window: u64, need: u64) {
    let into = now() % window;
    if window - into < need {
        tokio::time::sleep(std::time::Duration::from_millis(window - into + 50)).await;
    }
}

fn ca() -> Arc<test_pki::TestCa> {
    Arc::new(test_pki::TestCa::new("JPKI for user authentication").unwrap())
}

/// An MNO-TSM (the support TSM holds operators' keys) trusting the SP-TSM `tsm:sp-one`.
async fn mno_tsm(dir: &TempDir, sp_tsm: &Signer) -> support::World {
    let key = *sp_tsm.verifying_key();
    let tweak: Tweak = Arc::new(move |c: &mut Config| {
        c.trust.add(party("tsm:sp-one"), key);
    });
    support::World::tweaked(&dir.sqlite(), ca(), Some(tweak)).await
}

/// The refusal code of a control answer.
fn control_code(r: ControlResponse) -> String {
    match r {
        ControlResponse::Rejected(e) => e.code,
        other => format!("not refused: {other:?}"),
    }
}

#[tokio::test]
async fn the_mno_tsm_audits_each_refused_request_of_an_sp_tsm_once_per_minute() {
    align(60_000, 15_000).await;
    let dir = TempDir::new("audit16-mno");
    let sp = Signer::generate(party("tsm:sp-one")).unwrap();
    let stranger = Signer::generate(party("tsm:stranger")).unwrap();
    let w = mno_tsm(&dir, &sp).await;
    let me = party("tsm:kagi");
    let iccid = support::iccid("898100000000001601");
    let req = ControlRequest::CardRecord {
        iccid: iccid.clone(),
    };
    let send = |h: Header, bytes: Vec<u8>| {
        let tsm = w.tsm.clone();
        let answers = w.answers.clone();
        async move {
            let a = tsm.control(&bytes).await.unwrap();
            control_code(tsm_protocol::control::open_answer(&a, &h, &answers, now()).unwrap())
        }
    };
    let t = now();
    let (h1, b1) = request(&sp, &me, &req, t, 60_000);
    assert_eq!(
        send(h1.clone(), forged(&b1)).await,
        "protocol.bad-signature"
    );
    let (h2, b2) = request(&sp, &me, &req, t, 60_000);
    assert_ne!(send(h2.clone(), b2.clone()).await, "protocol.replayed");
    assert_eq!(send(h2.clone(), b2).await, "protocol.replayed");
    let (h3, b3) = request(&stranger, &me, &req, t, 60_000);
    assert_eq!(send(h3.clone(), b3).await, "protocol.unknown-key");
    let (h4, b4) = request(&sp, &me, &req, t - 120_000, 60_000);
    assert_eq!(send(h4.clone(), b4).await, "protocol.expired");
    let (h5, b5) = request(&sp, &me, &req, t + 120_000, 60_000);
    assert_eq!(send(h5.clone(), b5).await, "protocol.clock-skew");
    // A second forgery in the same minute: the same event, counted.
    let (h6, b6) = request(&sp, &me, &req, t, 60_000);
    assert_eq!(
        send(h6.clone(), forged(&b6)).await,
        "protocol.bad-signature"
    );

    let ev = "request-refused";
    let got = refusals(w.tsm.store()).await;
    assert_eq!(
        got,
        [
            row(
                "tsm:sp-one",
                ev,
                detail("protocol.bad-signature", 2, &h1, &h6, "tsm:sp-one")
            ),
            row(
                "tsm:sp-one",
                ev,
                detail("protocol.replayed", 1, &h2, &h2, "tsm:sp-one")
            ),
            row(
                "unknown-sender",
                ev,
                detail("protocol.unknown-key", 1, &h3, &h3, "tsm:stranger")
            ),
            row(
                "tsm:sp-one",
                ev,
                detail("protocol.expired", 1, &h4, &h4, "tsm:sp-one")
            ),
            row(
                "tsm:sp-one",
                ev,
                detail("protocol.clock-skew", 1, &h5, &h5, "tsm:sp-one")
            ),
        ]
    );
    // Never the body (the SIM asked for).
    assert!(got.iter().all(|(_, _, d)| !d.contains(&iccid)));
    // The events' time is the minute they count.
    let at = w
        .tsm
        .store()
        .query(
            "SELECT DISTINCT at FROM audit WHERE event = 'request-refused'",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(at.len(), 1);
    assert_eq!(at[0][0].int(), (t as i64) / 60_000 * 60_000);
}

#[tokio::test]
async fn the_issuer_audits_refused_requests_of_the_sp_tsm() {
    align(60_000, 15_000).await;
    let w = oncard::world("audit16-issuer").await;
    let stranger = Signer::generate(party("tsm:stranger")).unwrap();
    let me = w.issuer.party().clone();
    let req = IssuerRequest::Status {
        serials: vec!["0A1B2C3D".into()],
    };
    let code =
        |h: Header, a: Vec<u8>| match tsm_protocol::control::open_answer_as::<IssuerResponse>(
            &a,
            &h,
            &w.issuer_trust,
            now(),
        )
        .unwrap()
        {
            IssuerResponse::Rejected(e) => e.code,
            other => format!("not refused: {other:?}"),
        };
    let t = now();
    let (h1, b1) = request(&w.sp_tsm, &me, &req, t, 60_000);
    let a = w.issuer.handle(&forged(&b1)).await.unwrap();
    assert_eq!(code(h1.clone(), a), "protocol.bad-signature");
    let (h2, b2) = request(&w.sp_tsm, &me, &req, t, 60_000);
    let a = w.issuer.handle(&b2).await.unwrap();
    assert_ne!(code(h2.clone(), a), "protocol.replayed");
    let a = w.issuer.handle(&b2).await.unwrap();
    assert_eq!(code(h2.clone(), a), "protocol.replayed");
    let (h3, b3) = request(&stranger, &me, &req, t, 60_000);
    let a = w.issuer.handle(&b3).await.unwrap();
    assert_eq!(code(h3.clone(), a), "protocol.unknown-key");
    let (h4, b4) = request(&w.sp_tsm, &me, &req, t - 120_000, 60_000);
    let a = w.issuer.handle(&b4).await.unwrap();
    assert_eq!(code(h4.clone(), a), "protocol.expired");
    // Bytes that are no message at all: refused (HTTP 400), audited without a sender.
    assert!(w.issuer.handle(b"not a signed message").await.is_err());

    let ev = "request-refused";
    assert_eq!(
        refusals(w.issuer.db()).await,
        [
            row(
                "tsm:kagi",
                ev,
                detail("protocol.bad-signature", 1, &h1, &h1, "tsm:kagi")
            ),
            row(
                "tsm:kagi",
                ev,
                detail("protocol.replayed", 1, &h2, &h2, "tsm:kagi")
            ),
            row(
                "unknown-sender",
                ev,
                detail("protocol.unknown-key", 1, &h3, &h3, "tsm:stranger")
            ),
            row(
                "tsm:kagi",
                ev,
                detail("protocol.expired", 1, &h4, &h4, "tsm:kagi")
            ),
            row(
                "unknown-sender",
                ev,
                "protocol.malformed x1 first msg - last msg - claimed -".into()
            ),
        ]
    );
}

/// A JPKI issuer that answers wrongly on purpose, in the way `mode` says.
struct FakeIssuer {
    signer: Signer,
    mallory: Signer,
    mode: AtomicUsize,
    /// The last genuine answer (replayed in mode [`REPLAY`]).
    good: std::sync::Mutex<Option<Vec<u8>>>,
    /// The headers of the answers sent, in order.
    sent: std::sync::Mutex<Vec<Header>>,
}

const GOOD: usize = 0;
const BAD_SIGNATURE: usize = 1;
const UNKNOWN_KEY: usize = 2;
const REPLAY: usize = 3;
const EXPIRED: usize = 4;

impl FakeIssuer {
    fn answer(&self, body: &[u8]) -> Vec<u8> {
        let req = Sealed::from_bytes(body).unwrap().peek_header().unwrap();
        let mode = self.mode.load(Ordering::SeqCst);
        if mode == REPLAY {
            return self.good.lock().unwrap().clone().unwrap();
        }
        let signer = if mode == UNKNOWN_KEY {
            &self.mallory
        } else {
            &self.signer
        };
        let at = if mode == EXPIRED {
            now() - 400_000
        } else {
            now()
        };
        let mut h = signer
            .header(Kind::ControlResponse, &req.sender, at, 300_000)
            .unwrap();
        h.in_reply_to = Some((req.msg_id, req.nonce));
        let body = IssuerResponse::Status {
            revoked: Vec::new(),
        };
        let sealed = signer.seal(h.clone(), &body).unwrap();
        self.sent.lock().unwrap().push(h);
        let bytes = sealed.to_bytes().unwrap();
        match mode {
            GOOD => {
                *self.good.lock().unwrap() = Some(bytes.clone());
                bytes
            }
            BAD_SIGNATURE => forged(&bytes),
            _ => bytes,
        }
    }
}

/// Serves `fake` at `/v1/issuer` on a local port; its base URL.
async fn serve_fake(fake: Arc<FakeIssuer>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v1/issuer",
        axum::routing::post(move |body: axum::body::Bytes| {
            let fake = fake.clone();
            async move { fake.answer(&body) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn the_sp_tsm_audits_answers_forged_back_to_it() {
    align(60_000, 15_000).await;
    let fake = Arc::new(FakeIssuer {
        signer: Signer::generate(party("jpki:fake")).unwrap(),
        mallory: Signer::generate(party("jpki:fake")).unwrap(),
        mode: AtomicUsize::new(GOOD),
        good: Default::default(),
        sent: Default::default(),
    });
    let key = *fake.signer.verifying_key();
    let url = serve_fake(fake.clone()).await;
    let tweak: Tweak = Arc::new(move |c: &mut Config| {
        c.issuer = Some(IssuerLink::new(party("jpki:fake"), &url));
        c.trust.add(party("jpki:fake"), key);
    });
    let dir = TempDir::new("audit16-answers");
    let w = support::World::tweaked(&dir.sqlite(), ca(), Some(tweak)).await;
    let iccid = support::iccid("898100000000001602");
    w.register(MNO, &iccid).await;
    let op = w.issue(BANK, &iccid, 3).await.op;
    // Each status check asks the issuer once (the credential is not active yet).
    let status = || async {
        match w
            .send(BANK, &ControlRequest::CheckStatus { credential: op })
            .await
        {
            ControlResponse::Credential(c) => c.state,
            other => panic!("no status: {other:?}"),
        }
    };
    for mode in [GOOD, BAD_SIGNATURE, UNKNOWN_KEY, REPLAY, EXPIRED] {
        fake.mode.store(mode, Ordering::SeqCst);
        // A refused answer changes nothing here: the credential stays as it was.
        assert_eq!(status().await, "pending");
    }
    let sent = fake.sent.lock().unwrap().clone();
    // Sent: the genuine answer, the forged one, mallory's, (the genuine one again), the
    // expired one.
    assert_eq!(sent.len(), 4);
    let ev = "answer-refused";
    assert_eq!(
        refusals(w.tsm.store()).await,
        [
            row(
                "jpki:fake",
                ev,
                detail("protocol.bad-signature", 1, &sent[1], &sent[1], "jpki:fake")
            ),
            row(
                "jpki:fake",
                ev,
                detail("protocol.unknown-key", 1, &sent[2], &sent[2], "jpki:fake")
            ),
            row(
                "jpki:fake",
                ev,
                detail("protocol.not-an-answer", 1, &sent[0], &sent[0], "jpki:fake")
            ),
            row(
                "jpki:fake",
                ev,
                detail("protocol.expired", 1, &sent[3], &sent[3], "jpki:fake")
            ),
        ]
    );
}

/// The count an event's detail carries (`CODE xN …`).
fn count_of(detail: &str) -> u64 {
    detail
        .split(' ')
        .nth(1)
        .and_then(|x| x.strip_prefix('x'))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_flood_of_forged_requests_leaves_a_few_rows_with_the_right_counts() {
    let dir = TempDir::new("audit16-flood");
    let sp = Signer::generate(party("tsm:sp-one")).unwrap();
    let w = mno_tsm(&dir, &sp).await;
    let me = party("tsm:kagi");
    let req = ControlRequest::CardRecord {
        iccid: support::iccid("898100000000001603"),
    };
    let stranger = Signer::generate(party("tsm:stranger")).unwrap();
    let mut last_claimed = String::new();
    for i in 0..1000 {
        let bytes = if i % 2 == 0 {
            forged(&request(&sp, &me, &req, now(), 60_000).1)
        } else {
            // A name of the attacker's choosing, new every time, long and with control
            // characters in it (the wire does not check names).
            let mut h = stranger
                .header(Kind::ControlRequest, &me, now(), 60_000)
                .unwrap();
            last_claimed = format!("sp:{i}\n<b>{}</b>", "x".repeat(300));
            h.sender = PartyId(last_claimed.clone());
            stranger.seal(h, &req).unwrap().to_bytes().unwrap()
        };
        w.tsm.control(&bytes).await.unwrap();
    }
    let total = |got: &[(String, String, String)], actor: &str, code: &str| -> u64 {
        got.iter()
            .filter(|(a, _, d)| a == actor && d.starts_with(&format!("{code} x")))
            .map(|(_, _, d)| count_of(d))
            .sum()
    };
    // The writes are bounded too: each key was written at its 1st, 2nd, 4th … refusal of the
    // minute, the rest held back in memory (500 is no sum of at most two powers of two).
    let early = refusals(w.tsm.store()).await;
    assert!(
        total(&early, "tsm:sp-one", "protocol.bad-signature") < 500,
        "{early:?}"
    );
    assert!(
        total(&early, "unknown-sender", "protocol.unknown-key") < 500,
        "{early:?}"
    );
    // The sweep writes what was held back.
    w.tsm.sweep().await.unwrap();
    let got = refusals(w.tsm.store()).await;
    // One event per (sender, code) and minute: two, or four when the flood crossed a minute.
    assert!(got.len() == 2 || got.len() == 4, "{got:?}");
    assert_eq!(total(&got, "tsm:sp-one", "protocol.bad-signature"), 500);
    assert_eq!(total(&got, "unknown-sender", "protocol.unknown-key"), 500);
    // The stranger's last name, as kept: only letters, digits and ':._-', at most 72.
    let kept: String = last_claimed
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || ":._-".contains(*c))
        .take(72)
        .collect();
    assert_eq!(kept, format!("sp:999b{}", "x".repeat(72 - 7)));
    let (_, _, last) = got
        .iter()
        .rev()
        .find(|(a, _, _)| a == "unknown-sender")
        .unwrap();
    assert!(last.ends_with(&format!(" claimed {kept}")), "{last}");
    // Nothing else grew: no replay entries (nothing forged got that far), no other rows.
    let n = |sql: &'static str| {
        let store = w.tsm.store().clone();
        async move { store.query(sql, vec![]).await.unwrap()[0][0].int() }
    };
    assert_eq!(n("SELECT count(*) FROM replay").await, 0);
    assert_eq!(n("SELECT count(*) FROM audit").await, got.len() as i64);
    assert!(n("SELECT count(*) FROM refusals").await <= 4);
}

/// An application of the card with signature serial `serial` for SIM `iccid`.
fn valid(serial: u32, iccid: &str) -> Vec<u8> {
    oncard::application(iccid, serial)
}

fn check(application: Vec<u8>, iccid: &str) -> IssuerRequest {
    IssuerRequest::CheckApplication {
        application,
        provider: PartyId::new(oncard::SP).unwrap(),
        iccid: iccid.into(),
        moves: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_bad_checks_get_at_most_the_budget_verified_and_good_ones_do_not_count() {
    const WINDOW: u64 = 20_000;
    let budget = tsm_server::issuer::CheckBudget {
        refusals: 3,
        window: std::time::Duration::from_millis(WINDOW),
    };
    // The world's own directory (made afresh by `world_with`, removed with the world).
    let dir =
        std::env::temp_dir().join(format!("kagi-oncard-audit16-budget-{}", std::process::id()));
    let w = Arc::new(
        oncard::world_with(
            "audit16-budget",
            kagi_db::Backend::Sqlite(dir.join("issuer.db")),
            budget,
        )
        .await,
    );
    let sim = "8981000000000016040";
    align(WINDOW, 15_000).await;
    // Accepted checks do not count: more of them than the budget, all accepted.
    for serial in 0..5 {
        assert!(
            matches!(
                w.send(&check(valid(1640 + serial, sim), sim)).await,
                IssuerResponse::ApplicationChecked { .. }
            ),
            "good check {serial}"
        );
    }
    // Eight clients racing with applications for another SIM.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            w.send(&check(valid(1650 + i, "8981000000000016057"), sim))
                .await
        }));
    }
    let mut verified = 0;
    let mut turned_away = 0;
    for t in tasks {
        match t.await.unwrap() {
            IssuerResponse::Rejected(e) if e.code == "application.wrong-sim" => verified += 1,
            IssuerResponse::Rejected(e) if e.code == "issuer.check-budget" => {
                assert!(e.retryable);
                let after = e.retry_after_ms.unwrap();
                assert!((1..=WINDOW as u32).contains(&after), "{after}");
                turned_away += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((verified, turned_away), (3, 5));
    // Verified checks are audited by the issuer: exactly the budget's three refusals.
    let audited = w
        .issuer
        .db()
        .query(
            "SELECT count(*) FROM audit WHERE event = 'application-refused'",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(audited[0][0].int(), 3);
    // Spent: a good check, and an issue, are turned away too until the window passes.
    let code = |r: IssuerResponse| match r {
        IssuerResponse::Rejected(e) => e.code,
        other => format!("{other:?}"),
    };
    assert_eq!(
        code(w.send(&check(valid(1660, sim), sim)).await),
        "issuer.check-budget"
    );
    let issue = IssuerRequest::Issue {
        application: valid(1661, sim),
        provider: PartyId::new(oncard::SP).unwrap(),
        iccid: sim.into(),
        card_certificate: Vec::new(),
        instance: oncard::AID.to_vec(),
        request_id: tsm_protocol::IdempotencyKey::random().unwrap(),
        moves: None,
    };
    assert_eq!(code(w.send(&issue).await), "issuer.check-budget");
    // The next window: checked again.
    align(WINDOW, WINDOW).await;
    assert!(matches!(
        w.send(&check(valid(1662, sim), sim)).await,
        IssuerResponse::ApplicationChecked { .. }
    ));
    assert_eq!(
        code(
            w.send(&check(valid(1663, "8981000000000016057"), sim))
                .await
        ),
        "application.wrong-sim"
    );
}
