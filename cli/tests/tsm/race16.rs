//! Issue #16: three transfers of one credential to three new SIMs, accepted together and
//! downloaded at once by three relays through two TSM instances on one database, on SQLite
//! and on a private PostgreSQL, while a first download to one of those SIMs is refused —
//! exactly one completes; the others fail (`business.superseded-meanwhile`, the old
//! credential having been superseded in the winner's transaction), so one credential of the
//! three is active.

use super::*;

/// A transfer of `credential` to SIM `iccid`, accepted: its operation, ticket and code.
async fn transfer(
    world: &World,
    sp: &Party,
    credential: OpId,
    iccid: &str,
) -> (OpId, String, String) {
    let (req, _, _, rid) = issue_request(world, iccid, b"1470");
    let ControlRequest::Issue {
        credential: new_credential,
        ..
    } = req
    else {
        unreachable!("an issue request")
    };
    let r = sp
        .send(
            &ControlRequest::Transfer {
                credential,
                card: CardTarget {
                    iccid: iccid.into(),
                },
                new_credential,
                access: provider::access_grant(PASSWORD, 3, 600_000).unwrap(),
            },
            Some(rid),
        )
        .await
        .unwrap();
    let ControlResponse::Accepted {
        op,
        device_ticket: Some(t),
        access_code: Some(c),
        ..
    } = r.response
    else {
        panic!("{:?}", r.response)
    };
    (op, t, c)
}

async fn state(sp: &Party, credential: OpId) -> (String, Option<RevokeReason>) {
    match sp
        .send(&ControlRequest::CheckStatus { credential }, None)
        .await
        .unwrap()
        .response
    {
        ControlResponse::Credential(s) => (s.state, s.revoked),
        other => panic!("{other:?}"),
    }
}

async fn racing_transfers(backend: Backend, name: &str) {
    let world = World::new(name);
    // Two TSM instances on the one database: the relays race through both.
    let (server, twin) = (
        start(&world, &backend, 0).await,
        start(&world, &backend, 0).await,
    );
    let url = server.url.clone();
    let sp = world.client_party(&world.sp, &url);
    let keys = provider_keys(master(), 0x31);
    for round in 0..3 {
        let serial = |s: &str| format!("{name}-{round}-{s}");
        let sim = |s: &str| provision(serial(s).as_bytes(), &PROVIDER_SD, &keys).unwrap();
        let (mut a, mut b, mut c, mut d) = (sim("a"), sim("b"), sim("c"), sim("d"));
        for sim in [&a, &b, &c, &d] {
            register(&world, &url, sim).await;
        }
        let iss = issue(&world, &sp, &a.iccid).await;
        let out = download(&url, &mut a.card, &iss.ticket, &iss.code, None).await;
        assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);
        // Three transfers of it, all accepted (the old credential is active for each).
        let (op_b, t_b, c_b) = transfer(&world, &sp, iss.op, &b.iccid).await;
        let (op_c, t_c, c_c) = transfer(&world, &sp, iss.op, &c.iccid).await;
        let (op_d, t_d, c_d) = transfer(&world, &sp, iss.op, &d.iccid).await;
        // A first download for the same holder to one of those SIMs meanwhile: refused (one
        // operation per SIM at a time), so it adds no certificate.
        let (req, _, _, rid) = issue_request(&world, &b.iccid, b"2580");
        match sp.send(&req, Some(rid)).await.unwrap().response {
            ControlResponse::Rejected(e) => assert_eq!(e.code, "business.in-progress"),
            other => panic!("{other:?}"),
        }
        let (ob, oc, od) = tokio::join!(
            download(&url, &mut b.card, &t_b, &c_b, None),
            download(&twin.url, &mut c.card, &t_c, &c_c, None),
            download(&url, &mut d.card, &t_d, &c_d, None)
        );
        let outcomes = [
            (ob.outcome, &ob.message),
            (oc.outcome, &oc.message),
            (od.outcome, &od.message),
        ];
        let won = outcomes
            .iter()
            .filter(|o| o.0 == StopOutcome::Completed)
            .count();
        assert_eq!(won, 1, "round {round}: {outcomes:?}");
        for lost in outcomes.iter().filter(|o| o.0 != StopOutcome::Completed) {
            assert_eq!(lost.0, StopOutcome::Failed, "round {round}: {outcomes:?}");
            assert!(lost.1.contains("superseded-meanwhile"), "{}", lost.1);
        }
        // Exactly one valid credential: the old one superseded, one new one active.
        assert_eq!(
            state(&sp, iss.op).await,
            ("revoked".to_string(), Some(RevokeReason::Superseded))
        );
        let mut news = Vec::new();
        for op in [op_b, op_c, op_d] {
            news.push(state(&sp, op).await.0);
        }
        news.sort();
        assert_eq!(news, ["active", "failed", "failed"], "round {round}");
    }
    twin.stop().await;
    server.stop().await;
    std::fs::remove_dir_all(&world.dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_transfers_leave_one_valid_credential_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("kagi-race16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    racing_transfers(Backend::Sqlite(dir.join("tsm.db")), "race16-sqlite").await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_transfers_leave_one_valid_credential_on_postgres() {
    let pg = tsm_server::testing::PrivatePostgres::start("race16").unwrap();
    racing_transfers(Backend::Postgres(pg.url.clone()), "race16-pg").await;
}
