//! The password path (lower assurance, backoff) and service hours on both sides of each
//! boundary.

use broker_protocol::Assurance;
use broker_protocol::api::{AdminRequest, AdminResponse, Method, PasswordLogin};
use broker_server::BrokerError;
use broker_server::clock::ManualClock;
use kagi_signed::password::{self, Policy as PwPolicy};

use super::*;

/// 2026-01-01 10:30:00 UTC, in milliseconds.
const T0: i64 = 1_767_263_400_000;

fn refusal(r: Result<impl std::fmt::Debug, BrokerError>) -> (String, String) {
    match r {
        Err(BrokerError::Refused(e)) => (e.code, e.detail),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_path_is_lower_assurance_and_backs_off() {
    let w = World::new("password", 1);
    // The production policy refuses a verifier below the floor (m=19456 KiB, t=2, p=1),
    // and anything that is not an Argon2id PHC string.
    let prod = w.broker().await;
    let cheap = password::new_verifier("correct horse", &PwPolicy::cheap_for_tests().new).unwrap();
    for bad in [cheap.clone(), "pbkdf2:1000:abcd".to_string()] {
        let r = w
            .admin(
                &prod,
                AdminRequest::EnrolCard {
                    card: "CARD-W".into(),
                    holder: "weak".into(),
                    password: Some(bad),
                },
            )
            .await;
        assert!(
            matches!(r, AdminResponse::Rejected { ref code, .. } if code == "admin.weak-password-verifier"),
            "{r:?}"
        );
    }
    drop(prod);

    let clock = ManualClock::at(T0);
    let b = w.broker_with(&clock, PwPolicy::cheap_for_tests()).await;
    w.admin(
        &b,
        AdminRequest::EnrolCard {
            card: "CARD-0003".into(),
            holder: "alice".into(),
            password: Some(cheap),
        },
    )
    .await;
    for (id, min) in [("low", Assurance::Password), ("high", Assurance::Card)] {
        w.admin(
            &b,
            AdminRequest::RegisterService(policy(id, Method::Mac, min)),
        )
        .await;
        w.admin(
            &b,
            AdminRequest::EnrolCredential {
                card: "CARD-0003".into(),
                service: id.into(),
            },
        )
        .await;
    }
    let pw = |h: &str, p: &str| PasswordLogin {
        holder: h.into(),
        password: p.into(),
    };
    let s = b
        .login_password(&pw("alice", "correct horse"), None)
        .await
        .unwrap();
    assert_eq!(s.assurance, Assurance::Password);
    b.act(&act(&s, "low", b"c")).await.unwrap();
    assert_eq!(code(b.act(&act(&s, "high", b"c")).await), "act.assurance");
    // An unknown service and one the card has no credential for: the same answer.
    w.admin(
        &b,
        AdminRequest::RegisterService(policy("other", Method::Mac, Assurance::Password)),
    )
    .await;
    let mine = refusal(b.act(&act(&s, "other", b"c")).await);
    let unknown = refusal(b.act(&act(&s, "no-such-service", b"c")).await);
    assert_eq!(mine.0, "act.not-enrolled");
    assert_eq!(
        (mine.0, mine.1.replace("other", "S")),
        (unknown.0, unknown.1.replace("no-such-service", "S"))
    );

    // Wrong passwords: the same answer as an unknown holder.
    let wrong = refusal(b.login_password(&pw("alice", "wrong"), None).await);
    assert_eq!(wrong.0, "login.wrong-password");
    assert_eq!(
        refusal(b.login_password(&pw("bob", "x"), None).await),
        wrong
    );
    for _ in 0..4 {
        assert_eq!(
            refusal(b.login_password(&pw("alice", "wrong"), None).await),
            wrong
        );
    }
    // Five failures: alice waits (1 s), and until then the right password gets the same
    // answer as a wrong one; nothing is locked for good.
    assert_eq!(
        refusal(b.login_password(&pw("alice", "correct horse"), None).await),
        wrong
    );
    clock.advance(999);
    assert_eq!(
        refusal(b.login_password(&pw("alice", "correct horse"), None).await),
        wrong
    );
    clock.advance(1);
    b.login_password(&pw("alice", "correct horse"), None)
        .await
        .unwrap();
    // The right password cleared the failures: five tries again before a wait.
    for _ in 0..5 {
        assert_eq!(
            refusal(b.login_password(&pw("alice", "wrong"), None).await),
            wrong
        );
    }
    clock.advance(1_000);
    b.login_password(&pw("alice", "correct horse"), None)
        .await
        .unwrap();

    // Per client: one address trying many holders waits after 20 failures, whoever it names.
    for i in 0..20 {
        let h = format!("guess-{i}");
        assert_eq!(
            refusal(b.login_password(&pw(&h, "x"), Some("192.0.2.7")).await),
            wrong
        );
    }
    assert_eq!(
        refusal(
            b.login_password(&pw("alice", "correct horse"), Some("192.0.2.7"))
                .await
        ),
        wrong
    );
    // Another address is not held up by it.
    b.login_password(&pw("alice", "correct horse"), Some("192.0.2.8"))
        .await
        .unwrap();

    // A PBKDF2 verifier from before (written as the old broker wrote it): it still logs in,
    // and the right password replaces it with an Argon2id verifier.
    let salt = [7u8; 16];
    let old = kagi_signed::access::password_verifier("legacy pw", &salt, 4096);
    b.shards()
        .of("CARD-L")
        .commit(vec![kagi_db::Stmt::any(
            "INSERT INTO cards (card, holder, state, pw_salt, pw_iterations, pw_verifier, pw_failures, updated_at)
             VALUES ($1, 'legacy', 'active', $2, 4096, $3, 0, 0)",
            vec!["CARD-L".into(), salt.to_vec().into(), old.to_vec().into()],
        )])
        .await
        .unwrap();
    assert_eq!(
        refusal(b.login_password(&pw("legacy", "legacy px"), None).await),
        wrong
    );
    b.login_password(&pw("legacy", "legacy pw"), None)
        .await
        .unwrap();
    let row = b
        .shards()
        .of("CARD-L")
        .card("CARD-L")
        .await
        .unwrap()
        .unwrap();
    match &row.password {
        Some(password::Verifier::Argon2id(p)) => {
            assert_eq!(p.params, PwPolicy::cheap_for_tests().new);
            assert!(p.matches("legacy pw").unwrap());
        }
        other => panic!("not upgraded: {other:?}"),
    }
    b.login_password(&pw("legacy", "legacy pw"), None)
        .await
        .unwrap();

    // A revoked holder: the same answer as a wrong password until the password is right.
    w.admin(
        &b,
        AdminRequest::RevokeCard {
            card: "CARD-L".into(),
        },
    )
    .await;
    assert_eq!(
        refusal(b.login_password(&pw("legacy", "nope"), None).await),
        wrong
    );
    assert_eq!(
        code(b.login_password(&pw("legacy", "legacy pw"), None).await),
        "login.revoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_hours_on_both_sides_of_each_boundary() {
    let w = World::new("hours", 1);
    let clock = ManualClock::at(T0);
    let b = w.broker_with(&clock, PwPolicy::cheap_for_tests()).await;
    let cheap = password::new_verifier("pw of hours", &PwPolicy::cheap_for_tests().new).unwrap();
    w.admin(
        &b,
        AdminRequest::EnrolCard {
            card: "CARD-H".into(),
            holder: "hours".into(),
            password: Some(cheap),
        },
    )
    .await;
    // Open from 11:00 to 12:00 UTC, and one across midnight (22:00 to 02:00).
    let mut day = policy("day", Method::Mac, Assurance::Password);
    day.allowed_hours = Some((11, 12));
    let mut night = policy("night", Method::Mac, Assurance::Password);
    night.allowed_hours = Some((22, 2));
    for p in [day, night] {
        let id = p.id.clone();
        w.admin(&b, AdminRequest::RegisterService(p)).await;
        w.admin(
            &b,
            AdminRequest::EnrolCredential {
                card: "CARD-H".into(),
                service: id,
            },
        )
        .await;
    }
    let h = |hh: i64, mm: i64, ss: i64, ms: i64| {
        // 2026-01-01 00:00:00 UTC plus the time of day.
        1_767_225_600_000 + ((hh * 60 + mm) * 60 + ss) * 1000 + ms
    };
    let cases = [
        ("day", h(10, 59, 59, 999), false),
        ("day", h(11, 0, 0, 0), true),
        ("day", h(11, 59, 59, 999), true),
        ("day", h(12, 0, 0, 0), false),
        ("night", h(21, 59, 59, 999), false),
        ("night", h(22, 0, 0, 0), true),
        ("night", h(23, 59, 59, 999), true),
        ("night", h(24, 0, 0, 0), true),
        ("night", h(25, 59, 59, 999), true),
        ("night", h(26, 0, 0, 0), false),
    ];
    for (svc, at, open) in cases {
        clock.set(at);
        // A fresh session at that time (sessions expire by the same clock).
        let s = b
            .login_password(
                &PasswordLogin {
                    holder: "hours".into(),
                    password: "pw of hours".into(),
                },
                None,
            )
            .await
            .unwrap();
        let r = b.act(&act(&s, svc, b"c")).await;
        if open {
            assert!(r.is_ok(), "{svc} at {at}: {r:?}");
        } else {
            assert_eq!(code(r), "act.outside-hours", "{svc} at {at}");
        }
    }
}

/// Password logins of many holders racing from one address (one NAT, one proxy): every one
/// with the right password gets in. The per-address counter takes each try by compare-and-swap;
/// a try that loses the swap to another one tries again rather than being refused as if the
/// address were backing off (it was refused `login.wrong-password` with the right password).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_logins_from_one_address_all_get_in() {
    let w = World::new("password-race", 1);
    let clock = ManualClock::at(T0);
    let b = w.broker_with(&clock, PwPolicy::cheap_for_tests()).await;
    let verifier =
        password::new_verifier("correct horse", &PwPolicy::cheap_for_tests().new).unwrap();
    const N: usize = 12;
    for i in 0..N {
        w.admin(
            &b,
            AdminRequest::EnrolCard {
                card: format!("CARD-R{i:02}"),
                holder: format!("racer{i}"),
                password: Some(verifier.clone()),
            },
        )
        .await;
    }
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move {
                b.login_password(
                    &PasswordLogin {
                        holder: format!("racer{i}"),
                        password: "correct horse".into(),
                    },
                    Some("198.51.100.7"),
                )
                .await
                .map(|_| ())
            })
        })
        .collect();
    let mut refused = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            refused.push(format!("{e:?}"));
        }
    }
    assert!(
        refused.is_empty(),
        "{} of {N} refused: {refused:?}",
        refused.len()
    );
}
