//! Two JPKI issuer instances on one PostgreSQL (READ COMMITTED): the refused-check budget of
//! an SP-TSM is one, whichever instance its requests reach, and forged requests racing at
//! both are counted in one audit event of the shared trail.

use super::oncard;
use super::{align, check, forged, refusals, request, valid};
use std::sync::Arc;
use tsm_protocol::issuer::{IssuerRequest, IssuerResponse};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_issuer_instances_on_postgres_share_the_budget_and_the_refusal_counts() {
    let pg = tsm_server::testing::PrivatePostgres::start("audit16-pg").unwrap();
    let budget = tsm_server::issuer::CheckBudget {
        refusals: 3,
        window: std::time::Duration::from_secs(60),
    };
    let on_pg = || kagi_db::Backend::Postgres(pg.url.clone());
    // Two instances of the issuer (each trusting its own key for the SP-TSM `tsm:kagi`).
    let a = Arc::new(oncard::world_with("audit16-pg-a", on_pg(), budget).await);
    let b = Arc::new(oncard::world_with("audit16-pg-b", on_pg(), budget).await);
    assert_eq!(a.issuer.db().describe(), "postgresql");
    align(60_000, 20_000).await;
    let sim = "8981000000000016081";
    // Eight bad checks racing, four at each instance.
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let w = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            w.send(&check(valid(1680 + i, "8981000000000016099"), sim))
                .await
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            IssuerResponse::Rejected(e) => codes.push(e.code),
            other => panic!("{other:?}"),
        }
    }
    codes.sort();
    assert_eq!(
        codes,
        [
            "application.wrong-sim",
            "application.wrong-sim",
            "application.wrong-sim",
            "issuer.check-budget",
            "issuer.check-budget",
            "issuer.check-budget",
            "issuer.check-budget",
            "issuer.check-budget",
        ]
    );
    // Forged requests racing at both instances: one event, all of them counted.
    let me = a.issuer.party().clone();
    let req = IssuerRequest::Status {
        serials: vec!["0A1B".into()],
    };
    let mut tasks = Vec::new();
    for i in 0..40 {
        let w = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (_, bytes) = request(&w.sp_tsm, &me, &req, super::now(), 60_000);
        tasks.push(tokio::spawn(async move {
            w.issuer.handle(&forged(&bytes)).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Each instance writes its 20 at the 1st, 2nd, 4th, 8th and 16th; its flush the rest.
    let early = refusals(a.issuer.db()).await;
    assert!(
        early[0].2.starts_with("protocol.bad-signature x32 "),
        "{early:?}"
    );
    a.issuer.flush_refusals().await;
    b.issuer.flush_refusals().await;
    let got = refusals(a.issuer.db()).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "tsm:kagi");
    assert!(
        got[0]
            .2
            .starts_with("protocol.bad-signature x40 first msg "),
        "{got:?}"
    );
}
