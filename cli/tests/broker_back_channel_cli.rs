//! The one-time-code back channel through the CLI, process by process (file KEKs): the
//! administrator registers a MAC service with its signing key (`kagi broker admin
//! back-channel --mode code`), `kagi broker login` with a simulated JPKI card gets only a
//! code (`--json`: `code`, no `mac`), and the service redeems it at the broker itself
//! (`BrokerClient::redeem`, signed with its key) for the MAC over its own challenge — once.

mod support;

use std::process::{Command, Output, Stdio};
use support::cli::wait_port;

fn kagi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kagi"))
}

fn ok(args: &[&str]) -> String {
    let o: Output = kagi().args(args).output().unwrap();
    assert!(
        o.status.success(),
        "kagi {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_service_redeems_the_code_the_holder_got() {
    use broker_protocol::api::{self, Redeem};
    let dir = std::env::temp_dir().join(format!("kagi-broker-bc-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let p = |s: &str| dir.join(s).display().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    ok(&["ca", "init", "--dir", &p("pki")]);
    ok(&[
        "broker",
        "init",
        "--dir",
        &p("broker"),
        "--ca-dir",
        &p("pki"),
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    let mut server = kagi()
        .args(["broker", "serve", "--config", &p("broker/broker.toml")])
        .args(["--insecure-file-keys", &p("broker/keys")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    let admin = |args: &[&str]| {
        let mut all = vec!["broker", "admin", "--config"];
        let c = p("broker/admin.toml");
        all.push(&c);
        all.extend(args);
        ok(&all)
    };

    // The service's own key; its public half registered for the back channel.
    let key = p256::ecdsa::SigningKey::from_slice(&[0x5a; 32]).unwrap();
    let spki = {
        use p256::pkcs8::EncodePublicKey;
        key.verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec()
    };
    std::fs::write(
        dir.join("svc.pub.pem"),
        kagi_perso::pki::to_pem(&spki, "PUBLIC KEY").unwrap(),
    )
    .unwrap();
    admin(&["register-service", "--id", "svc-mac", "--method", "mac"]);
    admin(&[
        "back-channel",
        "--service",
        "svc-mac",
        "--mode",
        "code",
        "--service-key",
        &p("svc.pub.pem"),
        "--code-secs",
        "60",
    ]);
    let card_args = [
        "--sim",
        "--sim-preset",
        "jpki-demo",
        "--sim-ca-dir",
        &p("pki"),
        "--sim-image",
        &p("card.img"),
    ];
    let mut read = vec!["jpki", "read-cert", "--cert", "auth", "-o"];
    let auth = p("auth.der");
    read.push(&auth);
    read.extend(card_args);
    ok(&read);
    let enrolled: serde_json::Value = serde_json::from_str(&admin(&[
        "--json",
        "enrol-card",
        "--cert",
        &auth,
        "--holder",
        "h-1",
    ]))
    .unwrap();
    let card = enrolled["card"].as_str().unwrap().to_string();
    admin(&[
        "enrol",
        "--card",
        &card,
        "--service",
        "svc-mac",
        "--out",
        &p("svc-mac.key"),
    ]);
    let mac_key = hex::decode(
        std::fs::read_to_string(dir.join("svc-mac.key"))
            .unwrap()
            .trim(),
    )
    .unwrap();

    // The holder's login: a code, no MAC.
    std::fs::write(dir.join("pin.txt"), "1234\n").unwrap();
    let challenge = b"the service's challenge 7";
    let url = format!("http://127.0.0.1:{port}");
    let mut login = vec![
        "--json",
        "broker",
        "login",
        "--consent",
        "--service",
        "svc-mac",
        "--broker",
        &url,
    ];
    let c = api::b64(challenge);
    let pin = p("pin.txt");
    login.extend(["--challenge", &c, "--pin-file", &pin]);
    login.extend(card_args);
    let out = support::schema::document("broker.login", ok(&login).as_bytes());
    assert!(out["mac"].is_null(), "{out}");
    let code = out["code"].as_str().expect("a code").to_string();

    // The service redeems it, signing as sp:svc-mac, for the MAC over its challenge.
    let admin_toml: toml::Value =
        toml::from_str(&std::fs::read_to_string(dir.join("broker/admin.toml")).unwrap()).unwrap();
    let broker_party =
        tsm_protocol::PartyId::new(admin_toml["broker_party"].as_str().unwrap()).unwrap();
    let signer = tsm_protocol::signing::Signer::new(
        tsm_protocol::PartyId::new(&api::service_party("svc-mac")).unwrap(),
        key,
    );
    let client = kagi_online::broker::BrokerClient::new(std::slice::from_ref(&url), None).unwrap();
    let redeem = Redeem {
        service: "svc-mac".into(),
        code,
        challenge: Some(c.clone()),
        nonce: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt
        .block_on(client.redeem(&signer, &broker_party, &redeem))
        .unwrap();
    let expect = card_wire::scp03::crypto::cmac(
        &card_wire::scp03::AesKey::new(&mac_key).unwrap(),
        challenge,
    );
    assert_eq!(r.mac.as_deref().and_then(api::unb64), Some(expect.to_vec()));
    // Once only.
    let again = rt.block_on(client.redeem(&signer, &broker_party, &redeem));
    assert_eq!(
        again
            .err()
            .and_then(|e| e.code().map(String::from))
            .as_deref(),
        Some("redeem.replayed")
    );
    // A mode that does not exist, and push mode without its endpoint: refused before
    // anything is sent.
    for (mode, says) in [
        ("bogus", "use relayed, code or push"),
        ("push", "--mode push needs --url"),
    ] {
        let o = kagi()
            .args(["broker", "admin", "--config", &p("broker/admin.toml")])
            .args(["back-channel", "--service", "svc-mac", "--mode", mode])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{mode}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(says), "{mode}");
    }

    // --idempotency-key: a script retrying across runs with the same key gets the same
    // answer and one rotation; a new key rotates again; the same key for another request
    // is refused.
    let rotate = |key: &str, out: &str| -> serde_json::Value {
        serde_json::from_str(&admin(&[
            "--json",
            "rotate-key",
            "--idempotency-key",
            key,
            "--card",
            &card,
            "--service",
            "svc-mac",
            "--out",
            &p(out),
        ]))
        .unwrap()
    };
    let first = rotate("nightly-rotation-1", "rot-a.key");
    let again = rotate("nightly-rotation-1", "rot-b.key");
    assert_eq!(first["version"], again["version"]);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    assert_eq!(
        read("rot-a.key"),
        read("rot-b.key"),
        "the same key both times"
    );
    let next = rotate("nightly-rotation-2", "rot-c.key");
    assert_eq!(
        next["version"].as_u64().unwrap(),
        first["version"].as_u64().unwrap() + 1
    );
    assert_ne!(read("rot-a.key"), read("rot-c.key"));
    let audit: serde_json::Value =
        serde_json::from_str(&admin(&["--json", "audit", "--card", &card])).unwrap();
    let rotations = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "rotate-key")
        .count();
    assert_eq!(rotations, 2, "{audit}");
    let o = kagi()
        .args(["broker", "admin", "--config", &p("broker/admin.toml")])
        .args(["--idempotency-key", "nightly-rotation-1"])
        .args(["enrol", "--card", &card, "--service", "svc-mac"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("admin.idempotency-conflict"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    server.kill().unwrap();
    server.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Push mode through the CLI: `kagi broker serve` with its client certificate in
/// `broker.toml`, the service registered with `back-channel --mode push --url --service-ca`,
/// the example service (in this process) taking pushes over mutually authenticated TLS, and
/// `kagi broker login --service-url` with a simulated JPKI card: the holder's client gets
/// only `delivered` and the service logs the holder in.
#[test]
fn the_broker_pushes_the_proof_to_the_service() {
    use std::net::{IpAddr, Ipv4Addr};
    use test_pki::tls::{TlsCa, Usage};
    let dir = std::env::temp_dir().join(format!("kagi-broker-push-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let p = |s: &str| dir.join(s).display().to_string();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let port = free();
    ok(&["ca", "init", "--dir", &p("pki")]);
    ok(&[
        "broker",
        "init",
        "--dir",
        &p("broker"),
        "--ca-dir",
        &p("pki"),
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    // The broker's client certificate (its key 0600) and the service's TLS certificate.
    let service_ca = TlsCa::new("services").unwrap();
    let broker_ca = TlsCa::new("broker clients").unwrap();
    let (svc_cert, svc_key) = service_ca
        .issue(
            "svc-push",
            &[],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            Usage::Server,
            1,
        )
        .unwrap();
    let (client_cert, client_key) = broker_ca
        .issue("broker:kagi", &[], &[], Usage::Client, 1)
        .unwrap();
    std::fs::write(dir.join("broker/push.crt.pem"), client_cert).unwrap();
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("broker/push.key.pem"))
            .unwrap()
            .write_all(client_key.as_bytes())
            .unwrap();
    }
    std::fs::write(dir.join("svc-ca.pem"), service_ca.cert_pem()).unwrap();
    let toml = dir.join("broker/broker.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let (head, tables) = text.split_once("[[admin]]").unwrap();
    std::fs::write(
        &toml,
        format!("{head}push_client_cert = \"push.crt.pem\"\npush_client_key = \"push.key.pem\"\n\n[[admin]]{tables}"),
    )
    .unwrap();
    let mut server = kagi()
        .args(["broker", "serve", "--config", &p("broker/broker.toml")])
        .args(["--insecure-file-keys", &p("broker/keys")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    let url = format!("http://127.0.0.1:{port}");

    // The example service: its login API over HTTP, its push listener over mutual TLS.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (push_port, login_port) = (free(), free());
    let broker_key = {
        use p256::pkcs8::DecodePublicKey;
        p256::ecdsa::VerifyingKey::from_public_key_pem(
            &std::fs::read_to_string(dir.join("broker/broker.pub.pem")).unwrap(),
        )
        .unwrap()
    };
    let app = rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let keys = kagi_example_service::fetch_keys(&reqwest::Client::new(), &url)
            .await
            .unwrap();
        kagi_example_service::App::with_push(
            &url,
            "broker:kagi",
            "svc-push",
            keys,
            broker_protocol::Assurance::Card,
            broker_key,
            tsm_protocol::PartyId::new("broker:kagi").unwrap(),
        )
        .unwrap()
    });
    let files = kagi_serve::TlsFiles {
        cert_pem: svc_cert.into_bytes(),
        key_pem: zeroize::Zeroizing::new(svc_key.into_bytes()),
    };
    let client_ca = broker_ca.cert_pem().as_bytes().to_vec();
    let push_router = kagi_example_service::push_router(app.clone());
    let login_router = kagi_example_service::router(app);
    rt.spawn(async move {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", push_port))
            .await
            .unwrap();
        kagi_serve::serve_client_auth(
            push_router,
            l,
            std::future::pending(),
            &files,
            &client_ca,
            &kagi_serve::Limits::default(),
            std::time::Duration::from_secs(3600),
            || async {},
        )
        .await
        .unwrap();
    });
    rt.spawn(async move {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", login_port))
            .await
            .unwrap();
        kagi_serve::serve(
            login_router,
            l,
            std::future::pending(),
            None,
            std::time::Duration::from_secs(3600),
            || async {},
        )
        .await
        .unwrap();
    });
    wait_port(push_port);
    wait_port(login_port);

    let admin = |args: &[&str]| {
        let mut all = vec!["broker", "admin", "--config"];
        let c = p("broker/admin.toml");
        all.push(&c);
        all.extend(args);
        ok(&all)
    };
    admin(&[
        "register-service",
        "--id",
        "svc-push",
        "--method",
        "assertion",
    ]);
    let push_url = format!("https://127.0.0.1:{push_port}/back-channel/push");
    admin(&[
        "back-channel",
        "--service",
        "svc-push",
        "--mode",
        "push",
        "--url",
        &push_url,
        "--service-ca",
        &p("svc-ca.pem"),
    ]);
    let card_args = [
        "--sim",
        "--sim-preset",
        "jpki-demo",
        "--sim-ca-dir",
        &p("pki"),
        "--sim-image",
        &p("card.img"),
    ];
    let auth = p("auth.der");
    let mut read = vec!["jpki", "read-cert", "--cert", "auth", "-o", &auth];
    read.extend(card_args);
    ok(&read);
    let enrolled: serde_json::Value = serde_json::from_str(&admin(&[
        "--json",
        "enrol-card",
        "--cert",
        &auth,
        "--holder",
        "h-push",
    ]))
    .unwrap();
    let card = enrolled["card"].as_str().unwrap().to_string();
    admin(&["enrol", "--card", &card, "--service", "svc-push"]);
    // A second push service with nothing listening at its URL.
    admin(&[
        "register-service",
        "--id",
        "svc-down",
        "--method",
        "assertion",
    ]);
    let down_url = format!("https://127.0.0.1:{}/back-channel/push", free());
    admin(&[
        "back-channel",
        "--service",
        "svc-down",
        "--mode",
        "push",
        "--url",
        &down_url,
        "--service-ca",
        &p("svc-ca.pem"),
    ]);
    admin(&["enrol", "--card", &card, "--service", "svc-down"]);

    std::fs::write(dir.join("pin.txt"), "1234\n").unwrap();
    let service_url = format!("http://127.0.0.1:{login_port}");
    let pin = p("pin.txt");
    let mut login = vec![
        "--json",
        "broker",
        "login",
        "--consent",
        "--service",
        "svc-push",
        "--broker",
        &url,
        "--service-url",
        &service_url,
        "--pin-file",
        &pin,
    ];
    login.extend(card_args);
    let out = support::schema::document("broker.login", ok(&login).as_bytes());
    assert_eq!(out["delivered"], true, "{out}");
    assert!(out["assertion"].is_null() && out["code"].is_null(), "{out}");
    assert_eq!(
        out["service_answer"]["assurance"],
        broker_protocol::Assurance::Card.acr(),
        "{out}"
    );
    assert_eq!(
        out["service_answer"]["welcome"].as_str().unwrap().len(),
        32,
        "{out}"
    );

    // The unreachable service: the broker's refusal reaches the holder at once (a 502 with
    // its code is an answer, not an instance to fail over from).
    let mut login = vec![
        "broker",
        "login",
        "--consent",
        "--service",
        "svc-down",
        "--broker",
        &url,
        "--nonce",
        "n-down",
        "--pin-file",
        &pin,
    ];
    login.extend(card_args);
    let o = kagi().args(&login).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("push.unreachable"), "{err}");

    server.kill().unwrap();
    server.wait().unwrap();
    rt.shutdown_background();
    std::fs::remove_dir_all(&dir).unwrap();
}
