//! Every control request names something — a credential, an operation, a SIM — and the TSM
//! acts only for the party that owns it. A table of every request × (its sender's own object,
//! another party's, an unknown one): the own one succeeds; another party's and an unknown one
//! get the same refusal (same code, same words but for the id named) and change nothing in
//! the tables. On SQLite and on a private PostgreSQL.

mod support;

use std::sync::Arc;
use support::*;
use tsm_protocol::OpId;
use tsm_protocol::control::{
    CardTarget, ControlRequest, ControlResponse, OpState, RevokeReason, WalletChange, WalletUpdate,
};
use tsm_server::store::Backend;

/// The code and words of a refusal (panics on anything else).
fn refusal(r: &ControlResponse) -> (String, String) {
    match r {
        ControlResponse::Rejected(e) => (e.code.clone(), e.detail.clone()),
        other => panic!("not refused: {other:?}"),
    }
}

/// What an answer must be.
type Check = fn(&ControlResponse) -> bool;

/// One row of the table.
struct Row {
    /// What is asked.
    name: &'static str,
    /// Who asks.
    who: &'static str,
    /// Naming another party's objects (and the id named, hidden when comparing words).
    others: Vec<(ControlRequest, String)>,
    /// Naming an unknown object.
    unknown: (ControlRequest, String),
    /// The refusal's code, for others' and unknown objects alike.
    code: &'static str,
    /// Naming the sender's own object, and what the answer must be.
    own: Option<(ControlRequest, Check)>,
}

fn wallet(iccid: &str) -> ControlRequest {
    ControlRequest::WalletUpdate {
        card: CardTarget {
            iccid: iccid.into(),
        },
        instance: vec![0xF0, 0x4B, 0x41, 0x47, 0x49, 0x57, 0x4C, 0x01, 0x01],
        updates: vec![WalletUpdate {
            id: [1; 8],
            change: WalletChange::Points(5),
        }],
        access: grant(3),
    }
}

fn create_sd(iccid: &str) -> ControlRequest {
    ControlRequest::CreateSecurityDomain {
        iccid: iccid.into(),
        sd_aid: vec![0xA0, 0, 0, 1, 0x51, 0x53, 0x50, 0x50, 1],
        privileges: vec![0x80, 0, 0],
        provider: party(BANK),
        access: grant(3),
    }
}

fn is_state(r: &ControlResponse, state: &str) -> bool {
    matches!(r, ControlResponse::Credential(s) if s.state == state)
}

async fn table(backend: Backend) {
    let ca = Arc::new(test_pki::TestCa::new("JPKI for user authentication").unwrap());
    let w = World::new(&backend, ca).await;
    // SIMs: A, C, E, F of the operator, B of the other operator, U and U2 never registered.
    let [a, b, c, e, f, u, u2] =
        [1, 2, 3, 5, 6, 8, 9].map(|i| iccid(&format!("8981000000000000{i:02}")));
    for s in [&a, &c, &e, &f] {
        w.register(MNO, s).await;
    }
    w.register(OTHER_MNO, &b).await;
    // Credentials: the bank's and the shop's on A (active), the shop's on B (revoked).
    let bank_cred = w.issue(BANK, &a, 3).await.op;
    w.complete_by_hand(&bank_cred).await;
    let shop_cred = w.issue(SHOP, &a, 3).await.op;
    w.complete_by_hand(&shop_cred).await;
    let shop_revoked = w.issue(SHOP, &b, 3).await.op;
    w.complete_by_hand(&shop_revoked).await;
    let r = w
        .send(
            SHOP,
            &ControlRequest::Revoke {
                credential: shop_revoked,
                reason: RevokeReason::UserRequest,
            },
        )
        .await;
    assert!(is_state(&r, "revoked"), "{r:?}");
    // Live operations: the bank's on B, the shop's on C.
    let bank_op = accepted(w.send(BANK, &wallet(&b)).await).op;
    let shop_op = accepted(w.send(SHOP, &wallet(&c)).await).op;
    let nobody = OpId(rand16());
    let hex = |o: &OpId| o.to_hex();

    let cred_rows = |name, req: fn(OpId) -> ControlRequest, own, ok| Row {
        name,
        who: BANK,
        others: vec![
            (req(shop_cred), hex(&shop_cred)),
            (req(shop_revoked), hex(&shop_revoked)),
        ],
        unknown: (req(nobody), hex(&nobody)),
        code: "business.unknown-credential",
        own: Some((req(own), ok)),
    };
    let c2 = c.clone();
    let transfer = move |cred: OpId, card: &str, w: &World| ControlRequest::Transfer {
        credential: cred,
        card: CardTarget { iccid: card.into() },
        new_credential: w.bundle(),
        access: grant(3),
    };
    let mut rows = vec![
        cred_rows(
            "check-status",
            |credential| ControlRequest::CheckStatus { credential },
            bank_cred,
            |r| is_state(r, "active"),
        ),
        Row {
            name: "get-operation",
            who: BANK,
            others: vec![(ControlRequest::GetOperation { op: shop_op }, hex(&shop_op))],
            unknown: (ControlRequest::GetOperation { op: nobody }, hex(&nobody)),
            code: "business.unknown-operation",
            own: Some((
                ControlRequest::GetOperation { op: bank_op },
                |r| matches!(r, ControlResponse::Operation(v) if v.state == OpState::AwaitingDevice),
            )),
        },
        Row {
            name: "reset-pin",
            who: BANK,
            others: [shop_cred, shop_revoked]
                .map(|cr| {
                    (
                        ControlRequest::ResetPin {
                            credential: cr,
                            sealed_pin: vec![3; 32],
                            access: grant(3),
                        },
                        hex(&cr),
                    )
                })
                .into(),
            unknown: (
                ControlRequest::ResetPin {
                    credential: nobody,
                    sealed_pin: vec![3; 32],
                    access: grant(3),
                },
                hex(&nobody),
            ),
            code: "business.unknown-credential",
            own: Some((
                ControlRequest::ResetPin {
                    credential: bank_cred,
                    sealed_pin: vec![3; 32],
                    access: grant(3),
                },
                |r| matches!(r, ControlResponse::Accepted { .. }),
            )),
        },
        Row {
            name: "transfer",
            who: BANK,
            others: vec![
                (transfer(shop_cred, &c2, &w), hex(&shop_cred)),
                (transfer(shop_revoked, &c2, &w), hex(&shop_revoked)),
            ],
            unknown: (transfer(nobody, &c2, &w), hex(&nobody)),
            code: "business.unknown-credential",
            own: Some((transfer(bank_cred, &c2, &w), |r| {
                matches!(r, ControlResponse::Accepted { .. })
            })),
        },
        Row {
            name: "cancel",
            who: BANK,
            others: vec![(ControlRequest::Cancel { op: shop_op }, hex(&shop_op))],
            unknown: (ControlRequest::Cancel { op: nobody }, hex(&nobody)),
            code: "business.unknown-operation",
            own: Some((
                ControlRequest::Cancel { op: bank_op },
                |r| matches!(r, ControlResponse::Operation(v) if v.state == OpState::Cancelled),
            )),
        },
        cred_rows(
            "revoke",
            |credential| ControlRequest::Revoke {
                credential,
                reason: RevokeReason::UserRequest,
            },
            bank_cred,
            |r| is_state(r, "revoked"),
        ),
        // A provider may act on any registered SIM (the holder's, whatever the operator):
        // "another party's" SIM is one the other operator registered, and it is accepted.
        Row {
            name: "issue",
            who: BANK,
            others: vec![],
            unknown: (w.issue_request(&u, 3), u.clone()),
            code: "business.unknown-card",
            own: Some((w.issue_request(&e, 3), |r| {
                matches!(r, ControlResponse::Accepted { .. })
            })),
        },
        Row {
            name: "wallet-update",
            who: BANK,
            others: vec![],
            unknown: (wallet(&u), u.clone()),
            code: "business.unknown-card",
            own: Some((wallet(&b), |r| {
                matches!(r, ControlResponse::Accepted { .. })
            })),
        },
        // The operator's requests.
        Row {
            name: "create-security-domain",
            who: MNO,
            others: vec![(create_sd(&b), b.clone())],
            unknown: (create_sd(&u), u.clone()),
            code: "business.unknown-card",
            own: Some((create_sd(&e), |r| {
                matches!(r, ControlResponse::Accepted { .. })
            })),
        },
        Row {
            name: "sim-changed",
            who: MNO,
            others: vec![(
                ControlRequest::SimChanged {
                    old_iccid: b.clone(),
                    new_iccid: u2.clone(),
                },
                b.clone(),
            )],
            unknown: (
                ControlRequest::SimChanged {
                    old_iccid: u.clone(),
                    new_iccid: u2.clone(),
                },
                u.clone(),
            ),
            code: "business.unknown-card",
            own: Some((
                ControlRequest::SimChanged {
                    old_iccid: f.clone(),
                    new_iccid: u2.clone(),
                },
                |r| *r == ControlResponse::Ok,
            )),
        },
        Row {
            name: "card-lost",
            who: MNO,
            others: vec![(ControlRequest::CardLost { iccid: b.clone() }, b.clone())],
            unknown: (ControlRequest::CardLost { iccid: u.clone() }, u.clone()),
            code: "business.unknown-card",
            own: Some((ControlRequest::CardLost { iccid: a.clone() }, |r| {
                *r == ControlResponse::Ok
            })),
        },
    ];

    for row in rows.drain(..) {
        let before = w.dump().await;
        let (unknown_code, unknown_words) = refusal(&w.send(row.who, &row.unknown.0).await);
        assert_eq!(unknown_code, row.code, "{}: unknown object", row.name);
        for (req, id) in &row.others {
            let (code, words) = refusal(&w.send(row.who, req).await);
            assert_eq!(
                (code, words.replace(id, "<id>")),
                (
                    unknown_code.clone(),
                    unknown_words.replace(&row.unknown.1, "<id>")
                ),
                "{}: another party's object answers unlike an unknown one",
                row.name
            );
        }
        assert_eq!(
            w.dump().await,
            before,
            "{}: a refusal changed the tables",
            row.name
        );
        if let Some((req, ok)) = &row.own {
            let r = w.send(row.who, req).await;
            assert!(ok(&r), "{}: own object: {r:?}", row.name);
        }
    }

    // Eligibility: another operator's SIM is as unregistered as an unknown one.
    let eligibility = |iccid: &str| ControlRequest::CheckEligibility {
        iccid: iccid.into(),
        memory_needed: 1024,
    };
    let unknown = w.send(MNO, &eligibility(&u)).await;
    assert_eq!(
        unknown,
        ControlResponse::Eligibility {
            eligible: false,
            reason: "not registered".into(),
            free_memory: 0
        }
    );
    assert_eq!(w.send(MNO, &eligibility(&b)).await, unknown);
    assert_eq!(
        w.send(MNO, &eligibility(&e)).await,
        ControlResponse::Eligibility {
            eligible: true,
            reason: String::new(),
            free_memory: 64 * 1024
        }
    );

    // Registering another operator's SIM is refused and moves nothing; an unknown one and
    // the operator's own are registered.
    let before = w.dump().await;
    let (code, _) = refusal(&w.send(MNO, &register_card(&b)).await);
    assert_eq!(code, "business.card-taken");
    assert_eq!(w.dump().await, before, "register-card moved another's SIM");
    assert_eq!(
        w.tsm.store().card(&b).await.unwrap().unwrap().mno,
        OTHER_MNO
    );
    assert_eq!(w.send(MNO, &register_card(&u)).await, ControlResponse::Ok);
    assert_eq!(w.send(MNO, &register_card(&e)).await, ControlResponse::Ok);

    // A bad Luhn digit is refused by every operator notice alike.
    for req in [
        register_card(&bad_luhn(&u2)),
        ControlRequest::SimChanged {
            old_iccid: e.clone(),
            new_iccid: bad_luhn(&u2),
        },
        ControlRequest::SimChanged {
            old_iccid: bad_luhn(&e),
            new_iccid: u2.clone(),
        },
        ControlRequest::CardLost {
            iccid: bad_luhn(&e),
        },
    ] {
        let before = w.dump().await;
        let (code, _) = refusal(&w.send(MNO, &req).await);
        assert_eq!(code, "business.bad-card", "{req:?}");
        assert_eq!(w.dump().await, before);
    }

    // The card-lost of A revoked both providers' credentials on it; the other operator's
    // SIM B and the shop's credential there are as they were.
    for cr in [bank_cred, shop_cred] {
        let c = w.tsm.store().credential(&cr).await.unwrap().unwrap();
        assert_eq!(c.state, "revoked");
    }
    assert_eq!(
        w.tsm.store().card(&b).await.unwrap().unwrap().state,
        "active"
    );

    // Roles: a provider sends no operator notice, an operator no provider request.
    for req in [
        register_card(&u2),
        ControlRequest::CardLost { iccid: e.clone() },
        ControlRequest::SimChanged {
            old_iccid: e.clone(),
            new_iccid: u2.clone(),
        },
        eligibility(&e),
        create_sd(&e),
    ] {
        let (code, _) = refusal(&w.send(BANK, &req).await);
        assert_eq!(code, "business.not-an-operator", "{req:?}");
    }
    for req in [
        ControlRequest::CheckStatus {
            credential: bank_cred,
        },
        ControlRequest::Cancel { op: shop_op },
        wallet(&e),
    ] {
        let (code, _) = refusal(&w.send(MNO, &req).await);
        assert_eq!(code, "business.not-a-provider", "{req:?}");
    }
}

#[tokio::test]
async fn sqlite_every_request_acts_only_on_what_its_sender_owns() {
    let dir = TempDir::new("authz");
    table(dir.sqlite()).await;
}

#[tokio::test]
async fn postgres_every_request_acts_only_on_what_its_sender_owns() {
    let pg = tsm_server::testing::PrivatePostgres::start("tsm-authz").unwrap();
    table(Backend::Postgres(pg.url.clone())).await;
}
