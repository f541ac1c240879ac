//! 24-hour operation of the SP-TSM (issue #17): a TSM on a private pg_auto_failover
//! formation (its multi-host URL) runs a stream of issues and downloads to simulated SIMs
//! while the primary is killed (SIGKILL) in the middle of a download. The download in flight
//! and those after complete through the clients' retries; afterwards every committed
//! operation is there, each SIM holds one operation and one installed applet, each operation
//! completed once (one completion in its audit trail) with a valid receipt; the clients' error
//! rate is printed.

use super::*;
use kagi_db::testing::PrivateFormation;

/// SIMs, one issue and one download each.
const SIMS: usize = 8;
/// Issued before the primary is killed (the rest are issued into the failover).
const ISSUED_BEFORE: usize = 4;
/// The download during which the primary is killed, and after which APDU.
const KILLED_IN: usize = 2;
const KILLED_AFTER_APDU: usize = 8;

/// A SIM that kills the formation's primary once, after its `at`-th APDU: the download it
/// serves is in flight when the database fails over.
struct KillsPrimary<'a> {
    card: &'a mut applet_sim::SimCard,
    commands: usize,
    at: usize,
    formation: Option<&'a PrivateFormation>,
    killed: Option<std::time::Instant>,
}

impl card_wire::Transport for KillsPrimary<'_> {
    fn transmit(&mut self, c: &[u8]) -> Result<Vec<u8>, card_wire::TransportError> {
        self.commands += 1;
        let r = self.card.transmit(c);
        if self.commands == self.at
            && let Some(f) = self.formation.take()
        {
            let pid = f.kill_primary().expect("the primary is killed");
            self.killed = Some(std::time::Instant::now());
            eprintln!(
                "killed the primary (PID {pid}) during a download, after APDU {}",
                self.at
            );
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
        "kills the primary".into()
    }
}

/// Attempts and failed attempts over every request the clients made.
#[derive(Default)]
struct Tries {
    requests: u64,
    failed: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_and_issues_survive_a_killed_primary() {
    assert!(
        PrivateFormation::available(),
        "pg_auto_failover is missing: run scripts/setup.sh"
    );
    let f = PrivateFormation::start("tsm-failover").unwrap();
    let world = World::new("tsm-failover");
    let backend = Backend::Postgres(f.url.clone());
    let server = start(&world, &backend, 0).await;
    let url = server.url.clone();
    let sp = world.client_party(&world.sp, &url);
    let mut sims = Vec::new();
    for i in 0..SIMS {
        let sim = provision(
            format!("phone-failover-{i}").as_bytes(),
            &PROVIDER_SD,
            &provider_keys(master(), 0x31),
        )
        .unwrap();
        register(&world, &url, &sim).await;
        sims.push(sim);
    }
    let mut tries = Tries::default();
    let mut issued: Vec<Issued> = Vec::new();
    for sim in &sims[..ISSUED_BEFORE] {
        issued.push(issue(&world, &sp, &sim.iccid).await);
        tries.requests += 1;
    }
    let mut killed_at = None;
    let mut outcomes = Vec::new();
    for (i, sim) in sims.iter_mut().enumerate() {
        if i >= ISSUED_BEFORE {
            // Issued into the failover: the provider's client retries what fails, with the
            // request's id as idempotency key (one operation whatever the retries).
            let (req, cert, key, rid) = issue_request(&world, &sim.iccid, b"2580");
            let ControlRequest::Issue { credential, .. } = &req else {
                unreachable!("an issue request")
            };
            let sealed = [credential.sealed_key.clone(), credential.sealed_pin.clone()];
            let a = sp.send(&req, Some(rid)).await.unwrap();
            tries.requests += u64::from(a.exchange.attempts);
            tries.failed += u64::from(a.exchange.attempts - 1);
            let ControlResponse::Accepted {
                op,
                device_ticket: Some(ticket),
                access_code: Some(code),
                ..
            } = a.response
            else {
                panic!("SIM {i}: {:?}", a.response)
            };
            issued.push(Issued {
                op,
                ticket,
                code,
                request: a.request,
                cert,
                key,
                sealed,
            });
        }
        let iss = &issued[i];
        let mut card = KillsPrimary {
            card: &mut sim.card,
            commands: 0,
            at: KILLED_AFTER_APDU,
            formation: (i == KILLED_IN).then_some(&f),
            killed: None,
        };
        let client = Client::new(&url, Link::default());
        let code = iss.code.clone();
        let mut ask = move |_left: u8| {
            Some(UserCredentials {
                access_code: code.clone(),
                password: PASSWORD.into(),
            })
        };
        let out = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(relay::run(
                &client,
                &mut card,
                relay::Options {
                    ticket: iss.ticket.clone(),
                    credentials: None,
                    ask: &mut ask,
                    agent: "kagi-failover-relay".into(),
                    capture: None,
                    limits: tsm_protocol::relief::DerivationLimits::production(),
                },
            ))
        })
        .unwrap_or_else(|e| panic!("download {i}: {e}\n{}", f.state()));
        if i == KILLED_IN {
            assert!(card.formation.is_none(), "the primary was never killed");
            killed_at = card.killed;
        }
        assert_eq!(
            out.outcome,
            StopOutcome::Completed,
            "download {i}: {}",
            out.message
        );
        tries.requests += u64::from(out.round_trips + out.retries);
        tries.failed += u64::from(out.retries);
        outcomes.push(out);
    }
    let killed_at = killed_at.expect("the primary was killed");
    let after_kill = killed_at.elapsed();

    // Every committed operation is there, once, completed, with a valid receipt; each SIM
    // has one JPKI applet.
    let store = Store::open(&backend).await.unwrap();
    for (i, (iss, sim)) in issued.iter().zip(&sims).enumerate() {
        let v = operation(&sp, iss.op).await;
        assert_eq!(v.state, OpState::Completed, "operation {i}");
        provider::check_receipt(
            v.receipt.as_ref().unwrap(),
            &sp.trust,
            &iss.op,
            iss.request,
            &iss.cert,
        )
        .unwrap_or_else(|e| panic!("operation {i}: {e}"));
        let trail = store.audit_trail(Some(&iss.op)).await.unwrap();
        assert_eq!(
            trail.iter().filter(|a| a.event == "completed").count(),
            1,
            "operation {i} completed once"
        );
        let apps = sim
            .card
            .runtime()
            .registry()
            .iter()
            .filter(|e| e.aid.as_bytes() == card_wire::jpki::JPKI_AID)
            .count();
        assert_eq!(apps, 1, "SIM {i}: the applet installed once");
        let ops = store
            .query(
                "SELECT COUNT(*) FROM ops WHERE iccid = $1",
                vec![sim.iccid.clone().into()],
            )
            .await
            .unwrap();
        assert_eq!(ops[0][0].int(), 1, "SIM {i}: one operation");
    }
    // The clients felt the failover (and got through it by retrying).
    assert!(tries.failed > 0, "no request failed: the kill was not felt");
    let rate = tries.failed as f64 / tries.requests.max(1) as f64;
    eprintln!(
        "TSM failover: {SIMS} issues and downloads completed; {} of {} HTTP requests failed and were retried ({:.1} %), in {:.1} s from the kill to the last download",
        tries.failed,
        tries.requests,
        100.0 * rate,
        after_kill.as_secs_f64()
    );
    server.stop().await;
    std::fs::remove_dir_all(&world.dir).ok();
}
