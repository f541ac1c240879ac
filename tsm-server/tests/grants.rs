//! The password verifier in an access grant: new grants carry Argon2id at or above the OWASP
//! floor (anything weaker, PBKDF2 of any kind included, is refused with
//! `business.weak-verifier` and stores nothing), and operations stored by the TSM before
//! (their grant a PBKDF2 verifier, in the old record format) still decode and still check
//! their user's password.

mod support;

use serde::{Deserialize, Serialize};
use support::*;
use tsm_protocol::control::{
    AccessGrant, AppletRef, CardTarget, ControlRequest, ControlResponse, CredentialBundle,
    GrantVerifier, RevokeReason, WalletUpdate,
};
use tsm_protocol::relay::ServerMsg;
use tsm_protocol::{ErrorReport, MsgId, Nonce, OpId, PartyId, Sealed, SessionId};
use tsm_server::store::{Stmt, Val};

// The records as the TSM stored them before (a copy of the old types, in their field order).

#[derive(Serialize, Deserialize)]
struct OldGrant {
    password_salt: [u8; 16],
    password_iterations: u32,
    password_verifier: [u8; 32],
    max_attempts: u8,
    valid_for_ms: u64,
}

#[allow(dead_code)]
#[derive(Serialize, Deserialize)]
enum OldRequest {
    Issue {
        subscriber_ref: String,
        card: CardTarget,
        applet: AppletRef,
        credential: CredentialBundle,
        access: OldGrant,
    },
    Revoke {
        credential: OpId,
        reason: RevokeReason,
    },
    Transfer {
        credential: OpId,
        card: CardTarget,
        new_credential: CredentialBundle,
        access: OldGrant,
    },
    CheckStatus {
        credential: OpId,
    },
    ResetPin {
        credential: OpId,
        sealed_pin: Vec<u8>,
        access: OldGrant,
    },
    WalletUpdate {
        card: CardTarget,
        instance: Vec<u8>,
        updates: Vec<WalletUpdate>,
        access: OldGrant,
    },
    GetOperation {
        op: OpId,
    },
    Cancel {
        op: OpId,
    },
    RegisterCard {
        iccid: String,
        cin: String,
        sd_aid: Vec<u8>,
        free_memory: u32,
    },
    CreateSecurityDomain {
        iccid: String,
        sd_aid: Vec<u8>,
        privileges: Vec<u8>,
        provider: PartyId,
        access: OldGrant,
    },
    SimChanged {
        old_iccid: String,
        new_iccid: String,
    },
    CardLost {
        iccid: String,
    },
    CheckEligibility {
        iccid: String,
        memory_needed: u32,
    },
}

#[derive(Serialize, Deserialize)]
struct OldOpData {
    request: OldRequest,
    request_id: (MsgId, Nonce),
    code_hash: [u8; 32],
    attempts_left: u8,
    steps: Vec<String>,
    receipt: Option<Sealed>,
    error: Option<ErrorReport>,
    proof_nonce: [u8; 32],
    children: Vec<OpId>,
    sealed_secrets: Vec<u8>,
    cin: String,
    session: Option<SessionId>,
    phase: u8,
}

fn ca() -> std::sync::Arc<test_pki::TestCa> {
    std::sync::Arc::new(test_pki::TestCa::new("JPKI for user authentication").unwrap())
}

/// PBKDF2-HMAC-SHA256("password", 16 zero bytes, 4096), from Python's hashlib:
/// `hashlib.pbkdf2_hmac('sha256', b'password', bytes(16), 4096).hex()`.
const PBKDF2_PASSWORD: &str = "1ca7c6f38c097488abe116ddd7d23ab22a2fba513eb79e5b864e9b13861508b7";

#[tokio::test]
async fn operations_stored_before_keep_their_pbkdf2_password() {
    let dir = TempDir::new("grants-old");
    let w = World::new(&dir.sqlite(), ca()).await;
    let sim = iccid("898110000000000001");
    w.register(MNO, &sim).await;
    let a = w.issue(BANK, &sim, 3).await;
    let now = w.tsm.store().op(&a.op).await.unwrap().unwrap();
    let ControlRequest::Issue {
        subscriber_ref,
        card,
        applet,
        credential,
        ..
    } = now.data.request.clone()
    else {
        panic!("not an issue");
    };
    let d = &now.data;
    let old = OldOpData {
        request: OldRequest::Issue {
            subscriber_ref,
            card,
            applet,
            credential,
            access: OldGrant {
                password_salt: [0; 16],
                password_iterations: 4096,
                password_verifier: hex::decode(PBKDF2_PASSWORD).unwrap().try_into().unwrap(),
                max_attempts: 3,
                valid_for_ms: 600_000,
            },
        },
        request_id: d.request_id,
        code_hash: d.code_hash,
        attempts_left: d.attempts_left,
        steps: d.steps.clone(),
        receipt: d.receipt.clone(),
        error: d.error.clone(),
        proof_nonce: d.proof_nonce,
        children: d.children.clone(),
        sealed_secrets: d.sealed_secrets.clone(),
        cin: d.cin.clone(),
        session: d.session,
        phase: d.phase,
    };
    let bytes = postcard::to_stdvec(&old).unwrap();
    w.tsm
        .store()
        .commit(vec![Stmt::one(
            "UPDATE ops SET data = $1 WHERE id = $2",
            vec![Val::Blob(bytes), Val::Text(a.op.to_hex())],
        )])
        .await
        .unwrap();
    // It decodes, its grant a PBKDF2 verifier.
    let read = w.tsm.store().op(&a.op).await.unwrap().unwrap();
    let ControlRequest::Issue { access, .. } = &read.data.request else {
        panic!("not an issue");
    };
    assert_eq!(
        access.password,
        GrantVerifier::Pbkdf2 {
            salt: [0; 16],
            iterations: 4096,
            hash: hex::decode(PBKDF2_PASSWORD).unwrap().try_into().unwrap(),
        }
    );
    assert_eq!((access.max_attempts, read.data.attempts_left), (3, 3));
    // A wrong password spends an attempt; the right one (the PBKDF2 verifier's) is taken.
    match hello(&w.tsm, &a.ticket, &a.code, "passwore").await.unwrap() {
        ServerMsg::AskCredentials { attempts_left, .. } => assert_eq!(attempts_left, 2),
        other => panic!("a wrong password got {other:?}"),
    }
    let r = hello(&w.tsm, &a.ticket, &a.code, "password").await.unwrap();
    assert!(
        !matches!(r, ServerMsg::AskCredentials { .. } | ServerMsg::Stop { .. }),
        "the right password got {r:?}"
    );
    // Written back in the new format, it reads the same.
    let again = w.tsm.store().op(&a.op).await.unwrap().unwrap();
    assert_eq!(again.data.request, read.data.request);
}

fn argon2id(m_kib: u32, t: u32) -> GrantVerifier {
    let p = tsm_protocol::password::Params { m_kib, t, p: 1 };
    GrantVerifier::argon2id(PASSWORD, &p).unwrap()
}

#[tokio::test]
async fn weak_verifiers_are_refused_and_store_nothing() {
    let dir = TempDir::new("grants-weak");
    let w = World::new(&dir.sqlite(), ca()).await;
    let sim = iccid("898110000000000002");
    w.register(MNO, &sim).await;
    let before = w.dump().await;
    let pbkdf2 = |iterations| GrantVerifier::Pbkdf2 {
        salt: [1; 16],
        iterations,
        hash: [2; 32],
    };
    for (what, verifier) in [
        ("PBKDF2, 1,000 iterations", pbkdf2(1000)),
        ("PBKDF2, 600,000 iterations", pbkdf2(600_000)),
        ("Argon2id, 64 KiB", argon2id(64, 2)),
        ("Argon2id, one pass", argon2id(19 * 1024, 1)),
        ("Argon2id, 19455 KiB", argon2id(19 * 1024 - 1, 2)),
        (
            "not a verifier",
            GrantVerifier::Argon2id("$argon2id$v=19$x".into()),
        ),
    ] {
        let mut req = w.issue_request(&sim, 3);
        if let ControlRequest::Issue { access, .. } = &mut req {
            *access = AccessGrant {
                password: verifier,
                ..access.clone()
            };
        }
        match w.send(BANK, &req).await {
            ControlResponse::Rejected(e) => {
                assert_eq!(e.code, "business.weak-verifier", "{what}: {e}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    assert_eq!(w.dump().await, before);
    // At the floor it is taken.
    let mut req = w.issue_request(&sim, 3);
    if let ControlRequest::Issue { access, .. } = &mut req {
        access.password = argon2id(19 * 1024, 2);
    }
    accepted(w.send(BANK, &req).await);
}
