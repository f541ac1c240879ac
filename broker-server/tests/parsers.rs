//! Every way into the broker takes any bytes: the HTTP endpoints (JSON bodies, the signed
//! administrator's requests, services' signed redemptions, bearer tokens), card logins with forged or altered parts,
//! assertions with a bit flipped, and sealed records with a bit flipped. Each ends in a
//! clear refusal (a 4xx with a code), never a panic, a 5xx or a success.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use broker_protocol::api::{self, AdminRequest, AdminResponse, ApiError, CardLogin};
use broker_protocol::assertion::{self, Claims, Jwks};
use broker_server::envelope::FileEnvelope;
use broker_server::service::CardTrust;
use broker_server::{Broker, BrokerError, Config, Envelope, Shards};
use http_body_util::BodyExt;
use kagi_signed::PartyId;
use kagi_signed::signing::{Policy, Sealed, Signer, Trust};
use proptest::prelude::*;
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;
use zeroize::Zeroizing;

struct Fixture {
    rt: tokio::runtime::Runtime,
    broker: Arc<Broker>,
    envelope: FileEnvelope,
    /// The broker's answer-signing key.
    broker_key: p256::ecdsa::VerifyingKey,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kagi-broker-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        FileEnvelope::new_kek(&dir.join("keys"), "k1").unwrap();
        let ca = test_pki::TestCa::new("fuzz CA").unwrap();
        std::fs::write(dir.join("ca.der"), ca.certificate_der().unwrap()).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let me = PartyId::new("broker:fuzz").unwrap();
        let signer = Signer::generate(me.clone()).unwrap();
        let broker_key = *signer.verifying_key();
        // One administrator is trusted (requests from anyone else are refused, signed).
        let mut admins = Trust::new();
        admins.add(
            PartyId::new("admin:ops").unwrap(),
            *admin_signer().verifying_key(),
        );
        let config = Config {
            name: me.0.clone(),
            signer,
            assertion_key: p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).unwrap(),
            admin_trust: admins,
            policy: Policy::new(me),
            card_trust: CardTrust::new(vec![dir.join("ca.der")], vec![]),
            envelope: Arc::new(FileEnvelope::open_dir(&dir.join("keys")).unwrap()),
            default_kek: "k1".into(),
            state_key: Zeroizing::new([9u8; 32]),
            session_secs: 60,
        };
        let shards = rt
            .block_on(Shards::open(&[kagi_db::Backend::Sqlite(
                dir.join("fuzz.db"),
            )]))
            .unwrap();
        // A service taking one-time codes, whose key signs the fuzzed redemptions.
        let policy = api::ServicePolicy {
            id: "svc-fuzz".into(),
            method: api::Method::Mac,
            min_assurance: broker_protocol::Assurance::Card,
            allowed_hours: None,
        };
        let spki = {
            use p256::pkcs8::EncodePublicKey;
            service_signer()
                .verifying_key()
                .to_public_key_der()
                .unwrap()
                .as_bytes()
                .to_vec()
        };
        rt.block_on(shards.everywhere(vec![
            broker_server::store::Shard::put_service(&policy, 1),
            broker_server::store::Shard::put_back_channel(
                "svc-fuzz",
                &api::BackChannel::Code {
                    service_key: spki,
                    code_secs: 60,
                },
                1,
            ),
        ]))
        .unwrap();
        Fixture {
            broker: Arc::new(Broker::new(config, shards)),
            envelope: FileEnvelope::open_dir(&dir.join("keys")).unwrap(),
            broker_key,
            rt,
        }
    })
}

/// The code-mode service's key (the same for the whole run).
fn service_signer() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| Signer::generate(PartyId::new("sp:svc-fuzz").unwrap()).unwrap())
}

/// The trusted administrator's key (the same for the whole run).
fn admin_signer() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| Signer::generate(PartyId::new("admin:ops").unwrap()).unwrap())
}

/// What `/v1/admin` may answer to `sent` that is not from a trusted administrator: a 4xx
/// refusal, or a 200 whose body is the broker's signed answer to exactly that request, and
/// that answer a rejection.
fn admin_refused(sent: &[u8], status: StatusCode, body: &[u8]) -> Result<(), String> {
    if is_refusal(status, body) {
        return Ok(());
    }
    if status != StatusCode::OK {
        return Err(format!("status {status}"));
    }
    let header = Sealed::from_bytes(sent)
        .and_then(|s| s.peek_header())
        .map_err(|e| format!("200 to bytes that are no request: {e}"))?;
    let mut trust = Trust::new();
    trust.add(PartyId::new("broker:fuzz").unwrap(), fixture().broker_key);
    match kagi_signed::request::open_answer_as::<AdminResponse>(
        body,
        &header,
        &trust,
        kagi_signed::signing::now_ms(),
    ) {
        Ok(AdminResponse::Rejected { .. }) => Ok(()),
        Ok(other) => Err(format!("accepted: {other:?}")),
        Err(e) => Err(format!("not the broker's signed answer: {e}")),
    }
}

fn call(method: &str, path: &str, body: Vec<u8>, bearer: Option<&str>) -> (StatusCode, Vec<u8>) {
    let f = fixture();
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = bearer {
        req = req.header("authorization", t);
    }
    let req = req.body(Body::from(body)).unwrap();
    f.rt.block_on(async {
        let resp = broker_server::http::router(f.broker.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        (
            status,
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
    })
}

fn is_refusal(status: StatusCode, body: &[u8]) -> bool {
    status.is_client_error() && serde_json::from_slice::<ApiError>(body).is_ok()
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[A-Za-z0-9_-]{0,80}", any::<String>(), Just(String::new()),]
}

/// Well-formed, signed administrator's requests that must be refused: from an unknown
/// administrator, from the trusted one but altered in transit, or expired. Each gets a 200 whose body is the broker's signed rejection of that request.
#[test]
fn signed_admin_requests_from_the_wrong_party_get_a_signed_rejection() {
    let stranger = Signer::generate(PartyId::new("admin:stranger").unwrap()).unwrap();
    let me = PartyId::new("broker:fuzz").unwrap();
    let sign_at = |who: &Signer, at: u64| {
        kagi_signed::request::sign_request(
            who,
            &me,
            &AdminRequest::Audit { card: None },
            None,
            at,
            60_000,
        )
        .unwrap()
        .bytes
    };
    let now = kagi_signed::signing::now_ms();
    let sign = |who: &Signer, _to: &PartyId| sign_at(who, now);
    let mut altered = sign(admin_signer(), &me);
    let n = altered.len();
    altered[n - 1] ^= 1;
    for (what, sent) in [
        ("unknown administrator", sign(&stranger, &me)),
        ("altered signature", altered),
        (
            "expired ten minutes ago",
            sign_at(admin_signer(), now - 660_000),
        ),
    ] {
        let (s, body) = call("POST", "/v1/admin", sent.clone(), None);
        assert_eq!(s, StatusCode::OK, "{what}");
        admin_refused(&sent, s, &body).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    // And the trusted administrator's request is accepted (so the refusals above are about
    // the party, not a broken fixture).
    let sent = sign(admin_signer(), &me);
    let (s, body) = call("POST", "/v1/admin", sent.clone(), None);
    assert_eq!(s, StatusCode::OK);
    assert!(
        admin_refused(&sent, s, &body)
            .unwrap_err()
            .starts_with("accepted: Audit")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn endpoints_refuse_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        for path in ["/v1/holder/login", "/v1/holder/login-password", "/v1/holder/act", "/v1/service/redeem"] {
            let (s, body) = call("POST", path, b.clone(), None);
            prop_assert!(is_refusal(s, &body), "{path}: {s} {}", String::from_utf8_lossy(&body));
        }
        let (s, body) = call("POST", "/v1/admin", b.clone(), None);
        prop_assert!(admin_refused(&b, s, &body).is_ok(), "admin: {:?}", admin_refused(&b, s, &body));
        let token = String::from_utf8_lossy(&b).chars().filter(|c| c.is_ascii_graphic()).collect::<String>();
        let (s, body) = call("GET", "/v1/holder/audit", vec![], Some(&format!("Bearer {token}")));
        prop_assert!(is_refusal(s, &body), "audit: {s}");
    }

    /// Redemptions signed by the service's own key, with any code and any challenge or
    /// nonce: refused with a code (no such code exists), never a panic or a success.
    #[test]
    fn signed_redemptions_of_any_code_are_refused(code in prop_oneof![text(), "[0-9]{1,4}\\.[A-Za-z0-9_-]{0,50}"],
                                                 challenge in text(),
                                                 nonce in proptest::option::of(text())) {
        let r = api::Redeem {
            service: "svc-fuzz".into(),
            code,
            challenge: nonce.is_none().then_some(challenge),
            nonce,
        };
        let out = kagi_signed::request::sign_request(
            service_signer(),
            &PartyId::new("broker:fuzz").unwrap(),
            &r,
            None,
            kagi_signed::signing::now_ms(),
            60_000,
        )
        .unwrap();
        let (s, body) = call("POST", "/v1/service/redeem", out.bytes, None);
        prop_assert!(is_refusal(s, &body), "redeem: {s} {}", String::from_utf8_lossy(&body));
    }

    #[test]
    fn json_shaped_garbage_is_refused(nonce in text(), cert in text(), sig in text(),
                                      session in text(), service in text(), consent in any::<bool>()) {
        let login = serde_json::json!({"nonce": nonce, "certificate": cert, "signature": sig});
        let (s, body) = call("POST", "/v1/holder/login", login.to_string().into_bytes(), None);
        prop_assert!(is_refusal(s, &body), "login: {s}");
        let act = serde_json::json!({"session": session, "service": service, "consent": consent,
                                     "challenge": nonce, "nonce": sig});
        let (s, body) = call("POST", "/v1/holder/act", act.to_string().into_bytes(), None);
        prop_assert!(is_refusal(s, &body), "act: {s}");
        let pw = serde_json::json!({"holder": session, "password": service});
        let (s, body) = call("POST", "/v1/holder/login-password", pw.to_string().into_bytes(), None);
        prop_assert!(is_refusal(s, &body), "password: {s}");
    }

    #[test]
    fn a_challenge_with_any_bit_flipped_is_refused(bit in 0usize..(40 * 8)) {
        let f = fixture();
        let c = f.broker.challenge().unwrap();
        let mut n = api::unb64(&c.nonce).unwrap();
        n[bit / 8] ^= 1 << (bit % 8);
        let r = f.rt.block_on(f.broker.login_card(&CardLogin {
            nonce: api::b64(&n),
            certificate: api::b64(b"not a certificate"),
            signature: api::b64(&[0; 256]),
        }));
        match r {
            Err(BrokerError::Refused(e)) => prop_assert!(e.code.starts_with("login."), "{}", e.code),
            other => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn an_assertion_with_any_byte_changed_is_refused(pos in any::<usize>(), x in 1u8..=255) {
        let key = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
        let keys = Jwks::of(&[*key.verifying_key()]);
        let claims = Claims {
            iss: "broker:fuzz".into(), sub: "s".into(), aud: "svc".into(), iat: 1, exp: 2,
            nonce: "n".into(), acr: "urn:kagi:acr:jpki-card".into(), jti: "j".into(),
        };
        let token = assertion::sign(&key, &claims).unwrap();
        prop_assert!(assertion::verify_signature(&token, &keys).is_ok());
        let mut bytes = token.into_bytes();
        let i = pos % bytes.len();
        bytes[i] ^= x;
        let altered = String::from_utf8_lossy(&bytes).into_owned();
        // Base64url may decode two spellings to the same bytes only in its final padding
        // bits; anything accepted must then carry exactly the signed claims.
        if let Ok(c) = assertion::verify_signature(&altered, &keys) {
            prop_assert_eq!(c, claims);
        }
    }

    #[test]
    fn random_strings_are_not_assertions(s in any::<String>()) {
        let keys = Jwks::of(&[*p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap().verifying_key()]);
        prop_assert!(assertion::verify_signature(&s, &keys).is_err());
    }

    #[test]
    fn sealed_records_with_any_bit_flipped_do_not_open(part in 0usize..3, pos in any::<usize>(), bit in 0u8..8) {
        let env = &fixture().envelope;
        let r = env.seal("k1", b"card|svc|1", b"a service key").unwrap();
        let mut bad = r.clone();
        let field = match part {
            0 => &mut bad.wrapped_dek,
            1 => &mut bad.nonce,
            _ => &mut bad.ciphertext,
        };
        let i = pos % field.len();
        field[i] ^= 1 << bit;
        prop_assert!(env.open(b"card|svc|1", &bad).is_err());
        // A rotation re-wraps only the data key: an altered key is refused there; an altered
        // record passes through unchanged and still does not open.
        match env.rewrap(&bad, "k1") {
            Ok(moved) => {
                prop_assert!(part != 0);
                prop_assert!(env.open(b"card|svc|1", &moved).is_err());
            }
            Err(_) => prop_assert_eq!(part, 0),
        }
    }

    #[test]
    fn arbitrary_records_do_not_open(w in proptest::collection::vec(any::<u8>(), 0..80),
                                     n in proptest::collection::vec(any::<u8>(), 0..20),
                                     c in proptest::collection::vec(any::<u8>(), 0..80)) {
        let env = &fixture().envelope;
        let r = broker_server::envelope::SealedRecord { kek: "k1".into(), wrapped_dek: w, nonce: n, ciphertext: c };
        prop_assert!(env.open(b"x", &r).is_err());
    }

    /// Push-mode registrations with any URL and any CA bytes (a PEM armour around random
    /// bytes too): registered, or refused with `admin.bad-back-channel`; never a panic.
    #[test]
    fn push_registrations_with_any_url_and_ca_are_checked(
        url in prop_oneof!["https://[a-z0-9.]{0,20}(:[0-9]{1,6})?/[a-z/]{0,10}", text()],
        ca in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec(any::<u8>(), 0..200).prop_map(|b| {
                // Standard base64 (padding left off) inside the armour.
                let body = api::b64(&b).replace('-', "+").replace('_', "/");
                format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n")
                    .into_bytes()
            }),
        ]) {
        let f = fixture();
        let me = PartyId::new("broker:fuzz").unwrap();
        let mut trust = Trust::new();
        trust.add(me.clone(), f.broker_key);
        let send = |req: &AdminRequest| {
            let out = kagi_signed::request::sign_request(
                admin_signer(), &me, req, None, kagi_signed::signing::now_ms(), 60_000,
            ).unwrap();
            let answer = f.rt.block_on(f.broker.admin(&out.bytes)).unwrap();
            kagi_signed::request::open_answer_as::<AdminResponse>(
                &answer, &out.header, &trust, kagi_signed::signing::now_ms(),
            ).unwrap()
        };
        let policy = api::ServicePolicy {
            id: "svc-fuzz-push".into(),
            method: api::Method::Assertion,
            min_assurance: broker_protocol::Assurance::Card,
            allowed_hours: None,
        };
        prop_assert_eq!(send(&AdminRequest::RegisterService(policy)), AdminResponse::Ok);
        let r = send(&AdminRequest::SetBackChannel {
            service: "svc-fuzz-push".into(),
            back_channel: api::BackChannel::Push { url, service_ca: ca },
        });
        match r {
            AdminResponse::Ok => {}
            AdminResponse::Rejected { code, .. } => prop_assert_eq!(code, "admin.bad-back-channel"),
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
