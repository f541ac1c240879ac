//! The example service in push mode against a real broker (in process, SQLite), over
//! mutually authenticated TLS on loopback: the broker POSTs the signed proof to the
//! service's push listener, presenting its client certificate from the broker CA and
//! accepting only a service certificate under the CA registered for the service; the
//! holder's client gets only "delivered" and finishes the service's own nonce login.
//!
//! Each failure has its own error: a forged push (`push.forged`), a replayed push
//! (`push.replayed`), a misdirected push (`push.misdirected`, the act answering
//! `push.refused`), a client without the broker's client certificate (TLS refused in the
//! handshake), a service certificate not under the registered CA (`push.service-untrusted`),
//! a service that cannot be reached (`push.unreachable`, `502` over HTTP); and a service
//! refusing the broker's client certificate (`push.tls`, or `push.unreachable` when TLS 1.3
//! shows the broker only the closed connection).

mod common;

use common::call;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use broker_protocol::Assurance;
use broker_protocol::api::{
    self, Act, ActResult, AdminRequest, AdminResponse, ApiError, BackChannel, Method, Push,
    ServicePolicy,
};
use broker_server::BrokerError;
use broker_server::envelope::FileEnvelope;
use broker_server::service::push::PushIdentity;
use http_body_util::BodyExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;
use test_pki::tls::{TlsCa, Usage};
use tower::ServiceExt;
use tsm_protocol::PartyId;
use tsm_protocol::signing::{Signer, Trust};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// An HTTPS client trusting `ca_pem`, presenting `identity` (certificate, key PEM) if given.
fn tls_client(ca_pem: &str, identity: Option<&(String, String)>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .build()
        .unwrap()
}

fn refusal(r: Result<ActResult, BrokerError>) -> ApiError {
    match r {
        Err(BrokerError::Refused(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_pushes_proofs_over_mutual_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("kagi-example-push-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    FileEnvelope::new_kek(&dir.join("keys"), "k1").unwrap();
    let ca = test_pki::TestCa::new("example CA").unwrap();
    std::fs::write(dir.join("ca.der"), ca.certificate_der().unwrap()).unwrap();

    // The TLS side: the services' CA, the broker's client CA, and a stranger's CA.
    let service_ca = TlsCa::new("services").unwrap();
    let broker_ca = TlsCa::new("broker clients").unwrap();
    let stranger_ca = TlsCa::new("someone else").unwrap();
    let service_tls = service_ca
        .issue("svc-example", &["localhost"], &[LOOPBACK], Usage::Server, 1)
        .unwrap();
    let broker_client = broker_ca
        .issue("broker:test", &[], &[], Usage::Client, 1)
        .unwrap();
    let stranger_client = stranger_ca
        .issue("broker:test", &[], &[], Usage::Client, 1)
        .unwrap();

    let me = PartyId::new("broker:test").unwrap();
    let admin = Signer::generate(PartyId::new("admin:t").unwrap()).unwrap();
    let mut admins = Trust::new();
    admins.add(admin.party().clone(), *admin.verifying_key());
    let broker_signer = Signer::generate(me.clone()).unwrap();
    let broker_pem = broker_signer.to_pkcs8_pem().unwrap();
    let broker_copy = Signer::from_pkcs8_pem(me.clone(), &broker_pem).unwrap();
    let broker_key = *broker_signer.verifying_key();
    let mut broker_trust = Trust::new();
    broker_trust.add(me.clone(), broker_key);
    let broker = Arc::new(
        common::broker(&dir, &me, broker_signer, admins)
            .await
            .with_push_identity(
                PushIdentity::from_pem(broker_client.0.as_bytes(), broker_client.1.as_bytes())
                    .unwrap(),
            ),
    );
    let admin_req = |req: AdminRequest| common::admin(&broker, &admin, &me, &broker_trust, req);

    // The service: its login API in process, its push listener over mutual TLS.
    let app = kagi_example_service::App::with_push(
        "http://127.0.0.1:9",
        "broker:test",
        "svc-example",
        broker.keys(),
        Assurance::Card,
        broker_key,
        me.clone(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let push_url = format!(
        "https://127.0.0.1:{}/back-channel/push",
        listener.local_addr().unwrap().port()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let files = kagi_serve::TlsFiles {
        cert_pem: service_tls.0.clone().into_bytes(),
        key_pem: zeroize::Zeroizing::new(service_tls.1.clone().into_bytes()),
    };
    let broker_ca_pem = broker_ca.cert_pem().as_bytes().to_vec();
    let push_server = tokio::spawn({
        let router = kagi_example_service::push_router(app.clone());
        async move {
            kagi_serve::serve_client_auth(
                router,
                listener,
                async {
                    let _ = stopped.await;
                },
                &files,
                &broker_ca_pem,
                &kagi_serve::Limits::default(),
                Duration::from_secs(3600),
                || async {},
            )
            .await
        }
    });
    // A second listener of the service that takes clients of the stranger's CA only.
    let strict = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let strict_url = format!(
        "https://127.0.0.1:{}/back-channel/push",
        strict.local_addr().unwrap().port()
    );
    let (stop_strict, strict_stopped) = tokio::sync::oneshot::channel::<()>();
    let strict_server = tokio::spawn({
        let router = kagi_example_service::push_router(app.clone());
        let files = kagi_serve::TlsFiles {
            cert_pem: service_tls.0.clone().into_bytes(),
            key_pem: zeroize::Zeroizing::new(service_tls.1.clone().into_bytes()),
        };
        let ca = stranger_ca.cert_pem().as_bytes().to_vec();
        async move {
            kagi_serve::serve_client_auth(
                router,
                strict,
                async {
                    let _ = strict_stopped.await;
                },
                &files,
                &ca,
                &kagi_serve::Limits::default(),
                Duration::from_secs(3600),
                || async {},
            )
            .await
        }
    });
    // A port with nothing behind it.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };

    // Four services in push mode: svc-example (its own endpoint, its CA), svc-other (a
    // proof for it delivered to svc-example's endpoint), svc-untrusted (svc-example's
    // endpoint, but registered with a stranger's CA), svc-down (nothing listening).
    let services = [
        ("svc-example", push_url.clone(), service_ca.cert_pem()),
        ("svc-other", push_url.clone(), service_ca.cert_pem()),
        ("svc-untrusted", push_url.clone(), stranger_ca.cert_pem()),
        ("svc-strict", strict_url.clone(), service_ca.cert_pem()),
        (
            "svc-down",
            format!("https://127.0.0.1:{closed}/back-channel/push"),
            service_ca.cert_pem(),
        ),
    ];
    for (id, url, ca_pem) in &services {
        let p = ServicePolicy {
            id: (*id).into(),
            method: Method::Assertion,
            min_assurance: Assurance::Card,
            allowed_hours: None,
        };
        assert_eq!(
            admin_req(AdminRequest::RegisterService(p)).await,
            AdminResponse::Ok
        );
        assert_eq!(
            admin_req(AdminRequest::SetBackChannel {
                service: (*id).into(),
                back_channel: BackChannel::Push {
                    url: url.clone(),
                    service_ca: ca_pem.as_bytes().to_vec(),
                },
            })
            .await,
            AdminResponse::Ok,
            "{id}"
        );
    }
    // Push mode runs over TLS only, with a CA.
    for (url, ca_pem) in [
        (push_url.replace("https:", "http:"), service_ca.cert_pem()),
        (push_url.clone(), "not a certificate"),
    ] {
        match admin_req(AdminRequest::SetBackChannel {
            service: "svc-example".into(),
            back_channel: BackChannel::Push {
                url,
                service_ca: ca_pem.as_bytes().to_vec(),
            },
        })
        .await
        {
            AdminResponse::Rejected { code, .. } => assert_eq!(code, "admin.bad-back-channel"),
            other => panic!("{other:?}"),
        }
    }

    // The holder logs in at the broker with the card.
    let ids: Vec<String> = services.iter().map(|s| s.0.to_string()).collect();
    let card = common::enrolled_card(&broker, &ca, "PUSH-EXAMPLE-CARD", 79, &ids).await;
    let session = common::card_login(&broker, card).await;
    let act = |service: &str, n: &str| Act {
        session: session.session.clone(),
        service: service.into(),
        consent: true,
        challenge: None,
        nonce: Some(n.into()),
    };
    let start = || async {
        call(&app, "/login/start", json!({})).await.1["nonce"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // 1. The push login end to end: the holder's client gets only "delivered".
    let n = start().await;
    let r = broker.act(&act("svc-example", &n)).await.unwrap();
    assert!(r.delivered, "{r:?}");
    assert_eq!(
        (&r.assertion, &r.mac, &r.signature, &r.code),
        (&None, &None, &None, &None)
    );
    let (s, ok) = call(
        &app,
        "/login/finish",
        json!({"nonce": n, "delivered": true}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{ok}");
    assert_eq!(ok["assurance"], Assurance::Card.acr());
    assert_eq!(ok["welcome"].as_str().unwrap().len(), 32, "{ok}");
    // The login is used up: finishing it again is refused.
    let (s, _) = call(
        &app,
        "/login/finish",
        json!({"nonce": n, "delivered": true}),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A login the broker delivered nothing for is refused.
    let n = start().await;
    let (s, why) = call(
        &app,
        "/login/finish",
        json!({"nonce": n, "delivered": true}),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(why["error"].as_str().unwrap().contains("no proof"), "{why}");

    // 2. Retry-safe: the same act twice (an answer lost after the service accepted) pushes
    // twice with two message ids; the login completes once.
    let n = start().await;
    for _ in 0..2 {
        assert!(broker.act(&act("svc-example", &n)).await.unwrap().delivered);
    }
    let (s, ok) = call(
        &app,
        "/login/finish",
        json!({"nonce": n, "delivered": true}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{ok}");
    let (s, _) = call(
        &app,
        "/login/finish",
        json!({"nonce": n, "delivered": true}),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Pushes made by hand, sent with the broker's client certificate.
    let broker_http = tls_client(service_ca.cert_pem(), Some(&broker_client));
    let push_for = |signer: &Signer, service: &str, n: &str| {
        let push = Push {
            service: service.into(),
            card: "0123456789abcdef0123456789abcdef".into(),
            challenge: None,
            nonce: Some(n.into()),
            method: Method::Assertion,
            mac: None,
            signature: None,
            assertion: Some("a.b.c".into()),
        };
        tsm_protocol::control::sign_request(
            signer,
            &PartyId::new(&api::service_party(service)).unwrap(),
            &push,
            None,
            tsm_protocol::signing::now_ms(),
            60_000,
        )
        .unwrap()
        .bytes
    };
    let post = |bytes: Vec<u8>| {
        let (http, url) = (broker_http.clone(), push_url.clone());
        async move {
            let r = http.post(&url).body(bytes).send().await.unwrap();
            let status = r.status();
            let bytes = r.bytes().await.unwrap();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };

    // 3. A forged push: right party, wrong key.
    let n = start().await;
    let forger = Signer::generate(me.clone()).unwrap();
    let (s, why) = post(push_for(&forger, "svc-example", &n)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(why["code"], "push.forged", "{why}");

    // 4. A replayed push: accepted once, refused the second time.
    let bytes = push_for(&broker_copy, "svc-example", &n);
    let (s, ok) = post(bytes.clone()).await;
    assert_eq!(s, StatusCode::OK, "{ok}");
    let (s, why) = post(bytes).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(why["code"], "push.replayed", "{why}");

    // 5. A misdirected push: the broker's proof for svc-other delivered to svc-example.
    let n = start().await;
    let e = refusal(broker.act(&act("svc-other", &n)).await);
    assert_eq!(e.code, "push.refused", "{e:?}");
    assert!(e.detail.contains("push.misdirected"), "{e:?}");
    // ... and one signed for svc-other by hand.
    let (s, why) = post(push_for(&broker_copy, "svc-other", &n)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(why["code"], "push.misdirected", "{why}");

    // 6. Clients without the broker's client certificate do not get through TLS.
    let bytes = push_for(&broker_copy, "svc-example", &n);
    for client in [
        tls_client(service_ca.cert_pem(), None),
        tls_client(service_ca.cert_pem(), Some(&stranger_client)),
    ] {
        let r = client.post(&push_url).body(bytes.clone()).send().await;
        // No HTTP answer at all: the handshake ends the connection (TLS 1.3 lets the client
        // finish first, so it sees an alert or a closed connection, whichever comes first).
        let e = r.expect_err("TLS must refuse a client without the broker's certificate");
        assert!(e.status().is_none(), "{e:?}");
    }
    // The same bytes with the broker's certificate are accepted: nothing else was wrong, and
    // neither attempt above reached the service (else this would be a replay).
    let (s, ok) = post(bytes).await;
    assert_eq!(s, StatusCode::OK, "{ok}");

    // 7. The broker refuses a service certificate not under the registered CA.
    let e = refusal(broker.act(&act("svc-untrusted", &start().await)).await);
    assert_eq!(e.code, "push.service-untrusted", "{e:?}");

    // 7b. A service that refuses the broker's client certificate: the act is refused, as
    // push.tls (the service's alert read) or push.unreachable (TLS 1.3 lets the client finish
    // its handshake first, so it may see only the closed connection) — never delivered.
    let e = refusal(broker.act(&act("svc-strict", &start().await)).await);
    assert!(
        ["push.tls", "push.unreachable"].contains(&e.code.as_str()),
        "{e:?}"
    );
    let _ = stop_strict.send(());
    strict_server.await.unwrap().unwrap();

    // 8. A service that cannot be reached: a refusal, 502 over HTTP.
    let e = refusal(broker.act(&act("svc-down", &start().await)).await);
    assert_eq!(e.code, "push.unreachable", "{e:?}");
    let req = Request::post("/v1/holder/act")
        .header("content-type", "application/json")
        .body(Body::from(
            serde_json::to_vec(&act("svc-down", &start().await)).unwrap(),
        ))
        .unwrap();
    let resp = broker_server::http::router(broker.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body: ApiError =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body.code, "push.unreachable");

    // Each act is in the holder's audit trail with its outcome.
    let trail = broker.holder_audit(&session.session).await.unwrap();
    for (service, outcome) in [
        ("svc-example", "ok"),
        ("svc-other", "push.refused"),
        ("svc-untrusted", "push.service-untrusted"),
        ("svc-down", "push.unreachable"),
    ] {
        assert!(
            trail
                .iter()
                .any(|e| e.service == service && e.event == "act" && e.outcome == outcome),
            "{service} {outcome}: {trail:?}"
        );
    }

    // Figures (printed, never asserted): acts answered by a push over loopback mutual TLS
    // (the connection kept by the broker's client), against relayed acts of the same kind.
    assert_eq!(
        admin_req(AdminRequest::RegisterService(ServicePolicy {
            id: "svc-relayed".into(),
            method: Method::Assertion,
            min_assurance: Assurance::Card,
            allowed_hours: None,
        }))
        .await,
        AdminResponse::Ok
    );
    broker
        .enrol_many(
            &["PUSH-EXAMPLE-CARD".to_string()],
            &["svc-relayed".to_string()],
        )
        .await
        .unwrap();
    let mut figures = Vec::new();
    for service in ["svc-example", "svc-relayed"] {
        let mut ms = Vec::new();
        for _ in 0..100 {
            let n = start().await;
            let t = std::time::Instant::now();
            broker.act(&act(service, &n)).await.unwrap();
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        figures.push(format!(
            "{service}: p50 {:.2} ms, p99 {:.2} ms",
            ms[50], ms[98]
        ));
    }
    eprintln!("acts, 100 each: {}", figures.join("; "));

    let _ = stop.send(());
    push_server.await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
    /// Any bytes POSTed to the push endpoint: a 401 refusal with `push.malformed` or
    /// `push.forged`, never a panic, never accepted.
    #[test]
    fn any_bytes_pushed_are_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
        static RT: std::sync::OnceLock<(tokio::runtime::Runtime, Arc<kagi_example_service::App>)> =
            std::sync::OnceLock::new();
        let (rt, app) = RT.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let broker = Signer::generate(PartyId::new("broker:test").unwrap()).unwrap();
            let app = kagi_example_service::App::with_push(
                "http://127.0.0.1:9",
                "broker:test",
                "svc-example",
                broker_protocol::Jwks { keys: vec![] },
                Assurance::Card,
                *broker.verifying_key(),
                broker.party().clone(),
            )
            .unwrap();
            (rt, app)
        });
        let (status, body) = rt.block_on(async {
            let req = Request::post("/back-channel/push").body(Body::from(bytes)).unwrap();
            let resp = kagi_example_service::push_router(app.clone()).oneshot(req).await.unwrap();
            let status = resp.status();
            let b = resp.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null))
        });
        proptest::prop_assert_eq!(status, StatusCode::UNAUTHORIZED);
        let code = body["code"].as_str().unwrap_or("").to_string();
        proptest::prop_assert!(code == "push.malformed" || code == "push.forged", "{}", body);
    }
}
