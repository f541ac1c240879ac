//! The `kagi-example-service` binary in push mode, started with its command-line flags
//! (`--push-listen`, `--push-cert`, `--push-key`, `--broker-client-ca`,
//! `--broker-public-key`) against a broker served over HTTP in this process: the broker
//! pushes the proof to the binary over mutual TLS and the holder's login at the binary goes
//! through. An incomplete set of push flags, or a broker key that is not one, ends the binary
//! at once with a non-zero exit and a message naming what is wrong.

mod common;

use broker_protocol::Assurance;
use broker_protocol::api::{Act, AdminRequest, AdminResponse, BackChannel, Method, ServicePolicy};
use broker_server::envelope::FileEnvelope;
use broker_server::service::push::PushIdentity;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use test_pki::tls::{TlsCa, Usage};
use tsm_protocol::PartyId;
use tsm_protocol::signing::{Signer, Trust};

const BIN: &str = env!("CARGO_BIN_EXE_kagi-example-service");

/// The binary, killed (by its PID, through its handle) when the test ends, passing or not.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the binary's stderr until it has said where it listens for logins and for pushes.
fn addresses(child: &mut Child) -> (String, String) {
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    let (mut login, mut push) = (None, None);
    let mut seen = String::new();
    while login.is_none() || push.is_none() {
        let Some(Ok(line)) = lines.next() else {
            panic!("the service ended before listening:\n{seen}");
        };
        seen.push_str(&line);
        seen.push('\n');
        if let Some(rest) = line.split(" takes pushes on https://").nth(1) {
            push = rest.split('/').next().map(str::to_string);
        } else if let Some(rest) = line.split(" listening on ").nth(1) {
            login = rest.split(' ').next().map(str::to_string);
        }
    }
    // The rest of its log is drained so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (login.unwrap(), push.unwrap())
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_pushes_with_its_flags() {
    use p256::pkcs8::EncodePublicKey;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("kagi-example-flags-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    FileEnvelope::new_kek(&dir.join("keys"), "k1").unwrap();
    let ca = test_pki::TestCa::new("example CA").unwrap();
    std::fs::write(dir.join("ca.der"), ca.certificate_der().unwrap()).unwrap();
    let service_ca = TlsCa::new("services").unwrap();
    let broker_ca = TlsCa::new("broker clients").unwrap();
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (service_cert, service_key) = service_ca
        .issue("svc-example", &["localhost"], &[loopback], Usage::Server, 1)
        .unwrap();
    let broker_client = broker_ca
        .issue("broker:test", &[], &[], Usage::Client, 1)
        .unwrap();

    // The broker, over HTTP (the binary reads its published keys there).
    let me = PartyId::new("broker:test").unwrap();
    let admin = Signer::generate(PartyId::new("admin:t").unwrap()).unwrap();
    let mut admins = Trust::new();
    admins.add(admin.party().clone(), *admin.verifying_key());
    let broker_signer = Signer::generate(me.clone()).unwrap();
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker_url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(broker_server::http::serve(
        broker.clone(),
        listener,
        async {
            let _ = stopped.await;
        },
        None,
        Duration::from_secs(3600),
    ));

    // The binary's files, and the binary in push mode on ports of its choosing.
    let cert = write(&dir, "push.crt", &service_cert);
    let key = write(&dir, "push.key", &service_key);
    let client_ca = write(&dir, "broker-clients.crt", broker_ca.cert_pem());
    let public = write(
        &dir,
        "broker.pub",
        &broker_key
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap(),
    );
    let push_flags = |c: &mut Command, public: &Path| {
        c.args(["--push-listen", "127.0.0.1:0", "--push-cert"])
            .arg(&cert)
            .arg("--push-key")
            .arg(&key)
            .arg("--broker-client-ca")
            .arg(&client_ca)
            .arg("--broker-public-key")
            .arg(public);
    };
    let mut cmd = Command::new(BIN);
    cmd.args(["--broker", &broker_url, "--broker-name", "broker:test"])
        .args(["--service", "svc-example", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    push_flags(&mut cmd, &public);
    let mut service = Service(cmd.spawn().unwrap());
    let (login_addr, push_addr) = addresses(&mut service.0);

    // The service registered in push mode at the binary's push listener.
    let admin_req = |req: AdminRequest| common::admin(&broker, &admin, &me, &broker_trust, req);
    let policy = ServicePolicy {
        id: "svc-example".into(),
        method: Method::Assertion,
        min_assurance: Assurance::Card,
        allowed_hours: None,
    };
    assert_eq!(
        admin_req(AdminRequest::RegisterService(policy)).await,
        AdminResponse::Ok
    );
    assert_eq!(
        admin_req(AdminRequest::SetBackChannel {
            service: "svc-example".into(),
            back_channel: BackChannel::Push {
                url: format!("https://{push_addr}/back-channel/push"),
                service_ca: service_ca.cert_pem().as_bytes().to_vec(),
            },
        })
        .await,
        AdminResponse::Ok
    );

    // The holder: a card login at the broker, the service's nonce, the act (delivered by
    // push), and the login finished at the binary.
    let card =
        common::enrolled_card(&broker, &ca, "FLAGS-CARD", 81, &["svc-example".to_string()]).await;
    let session = common::card_login(&broker, card).await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let req = http
            .post(format!("http://{login_addr}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string());
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let bytes = r.bytes().await.unwrap();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let start = || async {
        let (s, started) = post("/login/start", json!({})).await;
        assert_eq!(s, 200, "{started}");
        started["nonce"].as_str().unwrap().to_string()
    };
    // A login the broker delivered nothing for is refused.
    let n = start().await;
    let (s, why) = post("/login/finish", json!({"nonce": n, "delivered": true})).await;
    assert_eq!(s, 401, "{why}");
    let n = start().await;
    let r = broker
        .act(&Act {
            session: session.session.clone(),
            service: "svc-example".into(),
            consent: true,
            challenge: None,
            nonce: Some(n.clone()),
        })
        .await
        .unwrap();
    assert!(r.delivered, "{r:?}");
    assert_eq!(r.assertion, None, "the holder's client gets no assertion");
    let (s, ok) = post("/login/finish", json!({"nonce": n, "delivered": true})).await;
    assert_eq!(s, 200, "{ok}");
    assert_eq!(ok["assurance"], Assurance::Card.acr());
    drop(service);

    // Bad flags: the binary ends at once, non-zero, saying what is wrong.
    let mut incomplete = Command::new(BIN);
    incomplete
        .args(["--broker", &broker_url, "--listen", "127.0.0.1:0"])
        .args(["--push-listen", "127.0.0.1:0", "--push-cert"])
        .arg(&cert);
    let out = incomplete.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "push mode needs all of --push-listen, --push-cert, --push-key, --broker-client-ca, --broker-public-key"
        ),
        "{err}"
    );
    let not_a_key = write(&dir, "not-a-key.pem", "hello\n");
    let mut wrong_key = Command::new(BIN);
    wrong_key.args(["--broker", &broker_url, "--listen", "127.0.0.1:0"]);
    push_flags(&mut wrong_key, &not_a_key);
    let out = wrong_key.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("not-a-key.pem: not a P-256 public key"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
