//! The back channel in one-time-code mode, over SQLite and over a private PostgreSQL: each
//! kind of service gets only a code through the holder's client and redeems it at the broker
//! with a request signed by its own key, receiving the proof for its own challenge. Every
//! misuse is refused with its own code: a forged redemption (another key, or a signature
//! claiming another service), a replayed code (also N redemptions racing: exactly one wins),
//! an expired code, a misdirected one (redeemed by another registered service), one used for
//! another challenge, and one whose card was revoked since.

use super::*;
use broker_protocol::api::{ActResult, BackChannel, Redeem};
use kagi_db::testing::PrivatePostgres;

/// A service's signing key for its redemptions.
fn service_signer(service: &str) -> Signer {
    Signer::generate(PartyId::new(&api::service_party(service)).unwrap()).unwrap()
}

fn spki(s: &Signer) -> Vec<u8> {
    use p256::pkcs8::EncodePublicKey;
    s.verifying_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec()
}

/// The service's signed redemption of `code` for `input` (a challenge, or the nonce of an
/// assertion service).
fn redemption(
    signer: &Signer,
    service: &str,
    code: &str,
    input: &[u8],
    assertion: bool,
) -> Vec<u8> {
    let r = Redeem {
        service: service.into(),
        code: code.into(),
        challenge: (!assertion).then(|| api::b64(input)),
        nonce: assertion.then(|| String::from_utf8(input.to_vec()).unwrap()),
    };
    kagi_signed::request::sign_request(
        signer,
        &PartyId::new(NAME).unwrap(),
        &r,
        None,
        signing::now_ms(),
        60_000,
    )
    .unwrap()
    .bytes
}

/// The holder's act for a service in code mode: a code, and no proof.
async fn code_for(b: &Broker, s: &Session, service: &str, challenge: &[u8]) -> String {
    let r: ActResult = b.act(&act(s, service, challenge)).await.unwrap();
    assert!(
        r.mac.is_none() && r.signature.is_none() && r.assertion.is_none(),
        "the holder's client must not see the proof: {r:?}"
    );
    let code = r.code.expect("a code");
    // 256 random bits after the shard's index.
    assert!(api::unb64(code.split_once('.').unwrap().1).unwrap().len() == 32);
    code
}

async fn scenario(w: &World) {
    let clock = ManualClock::at(signing::now_ms() as i64);
    let b = w.broker_with(&clock, PwPolicy::cheap_for_tests()).await;
    let card = w.card("BC-CARD-1", 41);
    assert_eq!(
        w.admin(
            &b,
            AdminRequest::EnrolCard {
                card: card.id.clone(),
                holder: "bc-holder".into(),
                password: None,
            },
        )
        .await,
        AdminResponse::Ok
    );
    let sides = setup_services(w, &b, &card).await;
    let signers: Vec<Signer> = SERVICES.iter().map(|(id, _)| service_signer(id)).collect();
    for ((id, _), s) in SERVICES.iter().zip(&signers) {
        let r = w
            .admin(
                &b,
                AdminRequest::SetBackChannel {
                    service: (*id).into(),
                    back_channel: BackChannel::Code {
                        service_key: spki(s),
                        code_secs: 30,
                    },
                },
            )
            .await;
        assert_eq!(r, AdminResponse::Ok, "{id}");
    }
    // A key that is not a P-256 public key, a lifetime out of range: refused.
    let r = w
        .admin(
            &b,
            AdminRequest::SetBackChannel {
                service: "svc-mac".into(),
                back_channel: BackChannel::Code {
                    service_key: vec![1, 2, 3],
                    code_secs: 30,
                },
            },
        )
        .await;
    assert!(
        matches!(r, AdminResponse::Rejected { ref code, .. } if code == "admin.bad-back-channel"),
        "{r:?}"
    );
    let session = login(&b, &card).await.unwrap();

    // Every kind of service: the code redeemed by its service gives the proof it accepts.
    for (i, (id, m)) in SERVICES.iter().enumerate() {
        let assertion = *m == Method::Assertion;
        let challenge: Vec<u8> = format!("challenge of {id}").into_bytes();
        let code = code_for(&b, &session, id, &challenge).await;
        let input: &[u8] = if assertion {
            b"svc-nonce-1"
        } else {
            &challenge
        };
        let r = b
            .redeem(&redemption(&signers[i], id, &code, input, assertion))
            .await
            .unwrap();
        assert!(r.code.is_none());
        assert!(service_accepts(&sides[i], &r, &challenge), "{id}: {r:?}");
        // The same code again: refused, as replayed.
        assert_eq!(
            code_of(
                b.redeem(&redemption(&signers[i], id, &code, input, assertion))
                    .await
            ),
            "redeem.replayed",
            "{id}"
        );
    }

    let mac = &signers[0];
    let ch = b"mac login 2";
    // Forged: signed by a key that is not svc-mac's, claiming to be svc-mac.
    let code = code_for(&b, &session, "svc-mac", ch).await;
    let impostor = service_signer("svc-mac");
    assert_eq!(
        code_of(
            b.redeem(&redemption(&impostor, "svc-mac", &code, ch, false))
                .await
        ),
        "redeem.forged"
    );
    // Signed by svc-p256 (its own valid key) but naming svc-mac in the body: refused.
    assert_eq!(
        code_of(
            b.redeem(&redemption(&signers[1], "svc-mac", &code, ch, false))
                .await
        ),
        "redeem.forged"
    );
    // Misdirected: svc-p256 redeems, as itself, a code made for svc-mac.
    assert_eq!(
        code_of(
            b.redeem(&redemption(&signers[1], "svc-p256", &code, ch, false))
                .await
        ),
        "redeem.misdirected"
    );
    // For another challenge: refused.
    assert_eq!(
        code_of(
            b.redeem(&redemption(
                mac,
                "svc-mac",
                &code,
                b"another challenge",
                false
            ))
            .await
        ),
        "redeem.wrong-challenge"
    );
    // None of these used the code up: its own service still redeems it, once.
    let r = b
        .redeem(&redemption(mac, "svc-mac", &code, ch, false))
        .await
        .unwrap();
    assert!(service_accepts(&sides[0], &r, ch));
    // Not a code at all; garbage bytes; a code of another length.
    assert_eq!(
        code_of(
            b.redeem(&redemption(mac, "svc-mac", "0.AAAA", ch, false))
                .await
        ),
        "redeem.unknown-code"
    );
    assert_eq!(
        code_of(b.redeem(b"not a message").await),
        "redeem.malformed"
    );

    // Expired: 30 s after it was made, the code no longer redeems.
    let code = code_for(&b, &session, "svc-mac", ch).await;
    clock.advance(30_000);
    assert_eq!(
        code_of(
            b.redeem(&redemption(mac, "svc-mac", &code, ch, false))
                .await
        ),
        "redeem.expired"
    );
    clock.advance(-30_000);

    // Racing redemptions of one code: exactly one wins, the others are replays.
    const N: usize = 12;
    let code = code_for(&b, &session, "svc-p256", ch).await;
    let mut tasks = Vec::new();
    for _ in 0..N {
        let (b, msg) = (
            b.clone(),
            redemption(&signers[1], "svc-p256", &code, ch, false),
        );
        tasks.push(tokio::spawn(async move { b.redeem(&msg).await }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                assert!(service_accepts(&sides[1], &r, ch));
                won += 1;
            }
            other => assert_eq!(code_of(other), "redeem.replayed"),
        }
    }
    assert_eq!(won, 1, "exactly one redemption wins");

    // A service set back to relayed gets the proof through the holder again, and its
    // redemptions are refused.
    assert_eq!(
        w.admin(
            &b,
            AdminRequest::SetBackChannel {
                service: "svc-rsa".into(),
                back_channel: BackChannel::Relayed,
            },
        )
        .await,
        AdminResponse::Ok
    );
    let r = b.act(&act(&session, "svc-rsa", ch)).await.unwrap();
    assert!(r.code.is_none() && service_accepts(&sides[2], &r, ch));
    // Before the signature is checked, an unauthenticated caller learns nothing about a
    // service's mode: a redemption for a relayed service, for an unknown one, and one with
    // the wrong key for a code-mode service get the same answer.
    let answer = |r: Result<ActResult, BrokerError>| match r {
        Err(BrokerError::Refused(e)) => (e.code, e.detail),
        other => panic!("{other:?}"),
    };
    let code_mode = answer(
        b.redeem(&redemption(
            &service_signer("svc-mac"),
            "svc-mac",
            &code,
            ch,
            false,
        ))
        .await,
    );
    assert_eq!(code_mode.0, "redeem.forged");
    for (signer, id) in [
        (&signers[2], "svc-rsa"),
        (&service_signer("svc-nowhere"), "svc-nowhere"),
    ] {
        let mut got = answer(b.redeem(&redemption(signer, id, &code, ch, false)).await);
        got.1 = got.1.replace(id, "svc-mac");
        assert_eq!(got, code_mode, "{id}");
    }

    // Push mode is stored (on every shard) and read back as registered; this broker has no
    // client certificate, so an act for the service is refused with its own code and the
    // holder's client gets no proof. Set back to relayed, the proof travels again.
    let push = BackChannel::Push {
        url: "https://127.0.0.1:9/back-channel/push".into(),
        service_ca: test_pki::tls::TlsCa::new("svc-rsa CA")
            .unwrap()
            .cert_pem()
            .as_bytes()
            .to_vec(),
    };
    let set = |bc: BackChannel| AdminRequest::SetBackChannel {
        service: "svc-rsa".into(),
        back_channel: bc,
    };
    assert_eq!(w.admin(&b, set(push.clone())).await, AdminResponse::Ok);
    for shard in b.shards().all() {
        assert_eq!(shard.back_channel("svc-rsa").await.unwrap(), push);
    }
    assert_eq!(
        code_of(b.act(&act(&session, "svc-rsa", ch)).await),
        "push.no-client-certificate"
    );
    assert_eq!(
        w.admin(&b, set(BackChannel::Relayed)).await,
        AdminResponse::Ok
    );
    assert_eq!(
        b.shards().first().back_channel("svc-rsa").await.unwrap(),
        BackChannel::Relayed
    );
    let r = b.act(&act(&session, "svc-rsa", ch)).await.unwrap();
    assert!(service_accepts(&sides[2], &r, ch));

    // The card revoked after the code was made: the code gives nothing.
    let code = code_for(&b, &session, "svc-mac", ch).await;
    assert_eq!(
        w.admin(
            &b,
            AdminRequest::RevokeCard {
                card: card.id.clone()
            }
        )
        .await,
        AdminResponse::Ok
    );
    assert_eq!(
        code_of(
            b.redeem(&redemption(mac, "svc-mac", &code, ch, false))
                .await
        ),
        "redeem.revoked"
    );
    // The audit trail has the redemptions and the refusals.
    let AdminResponse::Audit(trail) = w
        .admin(
            &b,
            AdminRequest::Audit {
                card: Some(card.id.clone()),
            },
        )
        .await
    else {
        panic!()
    };
    let outcomes: Vec<&str> = trail
        .iter()
        .filter(|e| e.event == "redeem")
        .map(|e| e.outcome.as_str())
        .collect();
    for want in [
        "ok",
        "redeem.replayed",
        "redeem.misdirected",
        "redeem.expired",
        "redeem.wrong-challenge",
    ] {
        assert!(outcomes.contains(&want), "{want} not in {outcomes:?}");
    }
}

fn code_of(r: Result<ActResult, BrokerError>) -> String {
    code(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_channel_codes_sqlite() {
    let w = World::new("backchannel", 1);
    scenario(&w).await;
    std::fs::remove_dir_all(&w.dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_channel_codes_postgres() {
    assert!(
        PrivatePostgres::available(),
        "PostgreSQL's server programs are missing: run scripts/setup.sh"
    );
    let pg = PrivatePostgres::start("broker-backchannel").unwrap();
    let d = dir("backchannel-pg");
    FileEnvelope::new_kek(&d.join("keys"), "k1").unwrap();
    let w = World::with_backends(d, vec![Backend::Postgres(pg.url.clone())]);
    scenario(&w).await;
    std::fs::remove_dir_all(&w.dir).unwrap();
}
