//! Server relief (`tsm_protocol::relief`): for a grant whose verifier is
//! `GrantVerifier::Argon2idRelief`, the TSM tells the relay how to derive the password
//! (Argon2id parameters and salt) when it asks for the entries, and takes the phone's 32-byte
//! key: a wrong key is counted like a wrong password, the right one opens the download, and
//! the password itself never has to reach the TSM. A typed password still works (the TSM
//! then does the phone's work); a derived key sent for a grant that takes passwords is
//! refused; a relief verifier below the OWASP floor is refused like any weak verifier.
//!
//! The phone's key is computed here with the `argon2` crate directly (RFC 9106 Argon2id,
//! version 0x13), not with kagi's code.

mod support;

use support::*;
use tsm_protocol::SessionId;
use tsm_protocol::control::{AccessGrant, ControlRequest, ControlResponse, GrantVerifier};
use tsm_protocol::password::Params;
use tsm_protocol::relay::{AgentMsg, PasswordEntry, ServerMsg, UserCredentials};
use tsm_protocol::relief::Derivation;
use tsm_server::service::Tsm;

fn ca() -> std::sync::Arc<test_pki::TestCa> {
    std::sync::Arc::new(test_pki::TestCa::new("JPKI for user authentication").unwrap())
}

/// What a phone derives: Argon2id(password, salt) at the given parameters, 32 bytes.
fn phone_key(password: &str, d: &Derivation) -> Vec<u8> {
    let params = argon2::Params::new(d.params.m_kib, d.params.t, d.params.p, Some(32)).unwrap();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = vec![0u8; 32];
    a.hash_password_into(password.as_bytes(), &d.salt, &mut out)
        .unwrap();
    out
}

async fn relay(tsm: &Tsm, msg: AgentMsg) -> ServerMsg {
    let body = tsm_protocol::codec::encode(&msg).unwrap();
    tsm_protocol::codec::decode(&tsm.relay(&body).await.unwrap()).unwrap()
}

async fn open(tsm: &Tsm, ticket: &str) -> (SessionId, u8, Option<Derivation>) {
    let hello = AgentMsg::Hello {
        ticket: ticket.into(),
        agent: "kagi-test".into(),
        resume: None,
        credentials: None,
        prepared: None,
    };
    match relay(tsm, hello).await {
        ServerMsg::AskCredentials {
            session,
            attempts_left,
            derive,
        } => (session, attempts_left, derive),
        other => panic!("a hello without entries got {other:?}"),
    }
}

async fn enter(tsm: &Tsm, session: SessionId, code: &str, password: PasswordEntry) -> ServerMsg {
    relay(
        tsm,
        AgentMsg::Credentials {
            session,
            credentials: UserCredentials {
                access_code: code.into(),
                password,
            },
        },
    )
    .await
}

fn with_grant(mut req: ControlRequest, password: GrantVerifier) -> ControlRequest {
    if let ControlRequest::Issue { access, .. } = &mut req {
        *access = AccessGrant {
            password,
            ..access.clone()
        };
    }
    req
}

fn relief() -> GrantVerifier {
    GrantVerifier::relief(PASSWORD, &Params::OWASP_MIN).unwrap()
}

fn is_order(m: &ServerMsg) -> bool {
    matches!(m, ServerMsg::Order { .. })
}

#[tokio::test]
async fn the_tsm_tells_the_derivation_and_takes_the_phones_key_counting_wrong_ones() {
    let dir = TempDir::new("relief-key");
    let w = World::new(&dir.sqlite(), ca()).await;
    let sim = iccid("898110000000000011");
    w.register(MNO, &sim).await;
    let verifier = relief();
    let GrantVerifier::Argon2idRelief(v) = &verifier else {
        unreachable!()
    };
    let told = v.derivation.clone();
    let a = accepted(
        w.send(BANK, &with_grant(w.issue_request(&sim, 3), verifier))
            .await,
    );
    let (session, left, derive) = open(&w.tsm, &a.ticket).await;
    assert_eq!(left, 3);
    let d = derive.expect("a relief grant's ask says how to derive");
    assert_eq!(d, told, "the grant's own parameters and salt");
    assert_eq!(d.params, Params::OWASP_MIN);
    assert_eq!(d.salt.len(), 16);
    let key = phone_key(PASSWORD, &d);
    // A wrong key (the key of another password) is counted; the ask says the same derivation.
    let wrong = phone_key("correct horsf", &d);
    match enter(&w.tsm, session, &a.code, PasswordEntry::Derived(wrong)).await {
        ServerMsg::AskCredentials {
            attempts_left,
            derive,
            ..
        } => {
            assert_eq!(attempts_left, 2);
            assert_eq!(derive.as_ref(), Some(&told));
        }
        other => panic!("a wrong key got {other:?}"),
    }
    // A key of the wrong length matches nothing.
    match enter(
        &w.tsm,
        session,
        &a.code,
        PasswordEntry::Derived(key[..31].to_vec()),
    )
    .await
    {
        ServerMsg::AskCredentials { attempts_left, .. } => assert_eq!(attempts_left, 1),
        other => panic!("a short key got {other:?}"),
    }
    // The right key with a wrong access code is still wrong: the last attempt locks.
    let r = enter(
        &w.tsm,
        session,
        &wrong_code(&a.code),
        PasswordEntry::Derived(key.clone()),
    )
    .await;
    assert!(matches!(r, ServerMsg::Stop { .. }), "{r:?}");

    // Another download: the right key and code open it at once.
    let b = accepted(
        w.send(BANK, &with_grant(w.issue_request(&sim, 3), relief()))
            .await,
    );
    let (session, _, derive) = open(&w.tsm, &b.ticket).await;
    let key = phone_key(PASSWORD, &derive.unwrap());
    let r = enter(&w.tsm, session, &b.code, PasswordEntry::Derived(key)).await;
    assert!(is_order(&r), "the right key got {r:?}");
}

#[tokio::test]
async fn a_typed_password_still_works_and_a_key_is_refused_where_passwords_are_taken() {
    let dir = TempDir::new("relief-compat");
    let w = World::new(&dir.sqlite(), ca()).await;
    let sim = iccid("898110000000000029");
    w.register(MNO, &sim).await;
    // Relief grant, typed password (an app that does not derive): the TSM derives.
    let a = accepted(
        w.send(BANK, &with_grant(w.issue_request(&sim, 3), relief()))
            .await,
    );
    let (session, _, _) = open(&w.tsm, &a.ticket).await;
    let r = enter(&w.tsm, session, &a.code, "correct horsf".into()).await;
    assert!(
        matches!(
            r,
            ServerMsg::AskCredentials {
                attempts_left: 2,
                ..
            }
        ),
        "{r:?}"
    );
    let r = enter(&w.tsm, session, &a.code, PASSWORD.into()).await;
    assert!(is_order(&r), "the typed password got {r:?}");

    // A PHC grant (the TSM does Argon2id): the ask names no derivation, and a key derived
    // with made-up parameters is refused and counted.
    let sim2 = iccid("898110000000000045");
    w.register(MNO, &sim2).await;
    let b = w.issue(BANK, &sim2, 3).await;
    let (session, _, derive) = open(&w.tsm, &b.ticket).await;
    assert_eq!(derive, None);
    let guess = phone_key(
        PASSWORD,
        &Derivation {
            params: Params::OWASP_MIN,
            salt: vec![0; 16],
        },
    );
    let r = enter(&w.tsm, session, &b.code, PasswordEntry::Derived(guess)).await;
    assert!(
        matches!(
            r,
            ServerMsg::AskCredentials {
                attempts_left: 2,
                ..
            }
        ),
        "{r:?}"
    );
    let r = enter(&w.tsm, session, &b.code, PASSWORD.into()).await;
    assert!(is_order(&r), "{r:?}");
}

#[tokio::test]
async fn a_weak_relief_verifier_is_refused_and_stores_nothing() {
    let dir = TempDir::new("relief-weak");
    let w = World::new(&dir.sqlite(), ca()).await;
    let sim = iccid("898110000000000037");
    w.register(MNO, &sim).await;
    let before = w.dump().await;
    for (what, params) in [
        (
            "64 KiB",
            Params {
                m_kib: 64,
                t: 2,
                p: 1,
            },
        ),
        (
            "one pass",
            Params {
                m_kib: 19 * 1024,
                t: 1,
                p: 1,
            },
        ),
    ] {
        let v = GrantVerifier::relief(PASSWORD, &params).unwrap();
        match w.send(BANK, &with_grant(w.issue_request(&sim, 3), v)).await {
            ControlResponse::Rejected(e) => {
                assert_eq!(e.code, "business.weak-verifier", "{what}: {e}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    assert_eq!(w.dump().await, before);
}
