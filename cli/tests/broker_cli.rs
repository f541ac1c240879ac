//! The credential broker as its operators and holders run it, process by process, with its
//! KEKs in a private SoftHSM2 token: `kagi broker init`, `new-kek`, two `kagi broker serve`
//! instances sharing one database, the administrator's requests, and `kagi broker login`
//! with a simulated JPKI card for a service of every kind (each answer checked the way that
//! service would check it). Then the availability and security claims: an instance killed
//! (SIGKILL) while holders log in loses no login and no enrolment; an instance killed in the
//! middle of a KEK rotation leaves every record whole and the other instance finishes it; a
//! copy of the database opens nothing with another key store; and neither the broker's logs
//! nor its answers carry key material.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::cli::{contains, wait_port};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

struct Broker {
    dir: PathBuf,
    conf: PathBuf,
    pin_file: PathBuf,
    ports: [u16; 2],
    children: Vec<(Child, PathBuf)>,
}

fn free_port() -> u16 {
    kagi_db::testing::free_port().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl Broker {
    fn new(name: &str) -> Broker {
        let dir =
            std::env::temp_dir().join(format!("kagi-broker-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (conf, pin_file) = support::softhsm(&dir.join("hsm"));
        let b = Broker {
            conf,
            pin_file,
            ports: [free_port(), free_port()],
            children: Vec::new(),
            dir,
        };
        b.ok(&["ca", "init", "--dir", b.path("pki").as_str()]);
        b.ok(&[
            "broker",
            "init",
            "--hsm-keks",
            "--dir",
            b.path("broker").as_str(),
            "--ca-dir",
            b.path("pki").as_str(),
            "--listen",
            &format!("127.0.0.1:{}", b.ports[0]),
        ]);
        // The administrator knows both instances.
        let admin = b.dir.join("broker/admin.toml");
        let text = std::fs::read_to_string(&admin).unwrap().replace(
            &format!("broker = [\"http://127.0.0.1:{}\"]", b.ports[0]),
            &format!(
                "broker = [\"http://127.0.0.1:{}\", \"http://127.0.0.1:{}\"]",
                b.ports[0], b.ports[1]
            ),
        );
        std::fs::write(&admin, text).unwrap();
        b.hsm_ok(&["broker", "new-kek", "--id", "k1"]);
        b
    }

    fn path(&self, p: &str) -> String {
        self.dir.join(p).display().to_string()
    }

    fn kagi(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kagi"));
        c.env("SOFTHSM2_CONF", &self.conf);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.kagi().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "kagi {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn hsm_args(&self) -> Vec<String> {
        vec![
            "--hsm-module".into(),
            MODULE.into(),
            "--hsm-pin-file".into(),
            self.pin_file.display().to_string(),
        ]
    }

    fn hsm_ok(&self, args: &[&str]) -> String {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(self.hsm_args());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.ok(&refs)
    }

    fn admin(&self, args: &[&str]) -> String {
        let mut all = vec!["broker", "admin", "--config"];
        let config = self.path("broker/admin.toml");
        all.push(&config);
        all.extend(args);
        self.ok(&all)
    }

    /// Starts instance `i` (logs to DIR/broker-i.log at debug level).
    fn start(&mut self, i: usize) {
        let log = self.dir.join(format!("broker-{i}.log"));
        let child = self
            .kagi()
            .args(["broker", "serve", "--sweep-seconds", "1", "--config"])
            .arg(self.dir.join("broker/broker.toml"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.ports[i]))
            .args(self.hsm_args())
            .env("KAGI_LOG", "debug")
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push((child, log));
        wait_port(self.ports[i]);
    }

    fn kill(&mut self, i: usize) {
        let (mut c, _) = self.children.remove(i);
        c.kill().unwrap();
        c.wait().unwrap();
    }

    fn urls(&self) -> Vec<String> {
        let mut v = Vec::new();
        for p in self.ports {
            v.push("--broker".to_string());
            v.push(format!("http://127.0.0.1:{p}"));
        }
        v
    }

    fn card(&self) -> Vec<String> {
        [
            "--sim",
            "--sim-preset",
            "jpki-demo",
            "--sim-pki-dir",
            &self.path("pki"),
            "--sim-image",
            &self.path("card.img"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `kagi broker login` at `service` with the card, its PIN from `pin`, failing over
    /// between both instances.
    fn login_command(&self, service: &str, pin: &Path) -> Command {
        self.login_command_at(service, pin, &self.urls())
    }

    /// `kagi broker login` at `service` through the instances in `urls` (`--broker URL`…).
    fn login_command_at(&self, service: &str, pin: &Path, urls: &[String]) -> Command {
        let mut c = self.kagi();
        c.args(["broker", "login", "--consent", "--service", service])
            .args(urls)
            .args(self.card())
            .arg("--pin-file")
            .arg(pin);
        c
    }

    /// `kagi broker login` with `--json` and the right PIN (1234).
    fn login(&self, service: &str, extra: &[&str]) -> Output {
        let pin = self.dir.join("pin.txt");
        std::fs::write(&pin, "1234\n").unwrap();
        self.login_command(service, &pin)
            .arg("--json")
            .args(extra)
            .output()
            .unwrap()
    }

    fn logs(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let n = entry.file_name().to_string_lossy().into_owned();
            if n.starts_with("broker-") && n.ends_with(".log") {
                all.extend(std::fs::read(entry.path()).unwrap());
            }
        }
        all
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        for (c, _) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn b64(bytes: &[u8]) -> String {
    broker_protocol::api::b64(bytes)
}

fn unb64(v: &serde_json::Value) -> Vec<u8> {
    broker_protocol::api::unb64(v.as_str().unwrap()).unwrap()
}

fn leaks(hay: &[u8], secret: &[u8]) -> bool {
    contains(hay, secret)
        || contains(hay, hex::encode(secret).as_bytes())
        || contains(hay, hex::encode_upper(secret).as_bytes())
        || contains(hay, b64(secret).as_bytes())
}

fn pem_der(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    der::pem::decode_vec(text.as_bytes()).unwrap().1
}

#[test]
fn broker_processes_every_service_kind_failover_rotation_and_no_leaks() {
    let mut b = Broker::new("main");
    b.start(0);
    b.start(1);

    // Services of every kind; the card enrolled by its certificate; a credential each.
    for (id, method) in [
        ("svc-mac", "mac"),
        ("svc-p256", "sign-p256"),
        ("svc-rsa", "sign-rsa"),
        ("svc-assert", "assertion"),
    ] {
        b.admin(&["register-service", "--id", id, "--method", method]);
    }
    let mut read = vec!["jpki", "read-cert", "--which", "auth", "-o"];
    let auth = b.path("auth.der");
    read.push(&auth);
    let card_args = b.card();
    read.extend(card_args.iter().map(String::as_str));
    b.ok(&read);
    let enrolled: serde_json::Value = serde_json::from_str(&b.admin(&[
        "--json",
        "enrol-card",
        "--cert",
        &auth,
        "--holder",
        "holder-1",
    ]))
    .unwrap();
    let card = enrolled["card"].as_str().unwrap().to_string();
    for s in ["svc-mac", "svc-p256", "svc-rsa", "svc-assert"] {
        b.admin(&[
            "enrol",
            "--card",
            &card,
            "--service",
            s,
            "--out",
            &b.path(&format!("{s}.key")),
        ]);
    }

    // Each service checks the broker's answer with what enrolment gave it.
    let challenge = b"service challenge 42";
    let c = b64(challenge);
    let mac = json(&b.login("svc-mac", &["--challenge", &c]));
    let key_hex = std::fs::read_to_string(b.dir.join("svc-mac.key")).unwrap();
    let mac_key = hex::decode(key_hex.trim()).unwrap();
    let expect = card_wire::scp03::crypto::cmac(
        &card_wire::scp03::AesKey::new(&mac_key).unwrap(),
        challenge,
    );
    assert_eq!(unb64(&mac["mac"]), expect.to_vec());
    assert_eq!(mac["assurance"], "card");

    let p256 = json(&b.login("svc-p256", &["--challenge", &c]));
    {
        use p256::ecdsa::signature::Verifier;
        use p256::pkcs8::DecodePublicKey;
        let vk =
            p256::ecdsa::VerifyingKey::from_public_key_der(&pem_der(&b.dir.join("svc-p256.key")))
                .unwrap();
        let sig = p256::ecdsa::Signature::from_slice(&unb64(&p256["signature"])).unwrap();
        assert!(vk.verify(challenge, &sig).is_ok());
        assert!(vk.verify(b"another", &sig).is_err());
    }
    let rsa_out = json(&b.login("svc-rsa", &["--challenge", &c]));
    {
        use rsa::pkcs8::DecodePublicKey;
        use rsa::signature::Verifier;
        let pk = rsa::PublicKey::from_public_key_der(&pem_der(&b.dir.join("svc-rsa.key"))).unwrap();
        let sig =
            rsa::pkcs1v15::Signature::try_from(unb64(&rsa_out["signature"]).as_slice()).unwrap();
        assert!(
            rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(pk)
                .verify(challenge, &sig)
                .is_ok()
        );
    }
    let asserted = json(&b.login("svc-assert", &["--nonce", "n-123"]));
    let keys = reqwest_keys(b.ports[1]);
    let token = asserted["assertion"].as_str().unwrap();
    es256_by_hand(token, &keys, "n-123");
    let verifier = broker_protocol::Verifier::new(
        keys,
        "broker:kagi",
        "svc-assert",
        broker_protocol::Assurance::Card,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = verifier.verify(token, "n-123", now).unwrap();
    assert_eq!(claims.acr, broker_protocol::Assurance::Card.acr());
    assert!(
        verifier.verify(token, "n-123", now).is_err(),
        "a replayed assertion was accepted"
    );

    // A wrong PIN never reaches the broker as a login.
    let wrong = b.dir.join("wrong.txt");
    std::fs::write(&wrong, "9999\n").unwrap();
    let o = b
        .login_command("svc-mac", &wrong)
        .args(["--challenge", &c])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("wrong PIN") || text(&o).contains("tries"),
        "{}",
        text(&o)
    );

    // Instance 0 killed while holders log in: every login completes (on instance 1, with
    // challenges instance 0 issued), nothing enrolled is lost. No sleep decides where the
    // kill lands: a gate in front of instance 0 holds each card's answer until all N logins
    // have their challenge from instance 0 and their answer on its way there; then
    // instance 0 dies and the answers arrive at a dead instance.
    let logins_before = b
        .admin(&["audit", "--card", &card])
        .matches(" login ")
        .count();
    let instance1_before = login_lines(&b.dir.join("broker-1.log"));
    let gate = support::gate::Gate::start(b.ports[0], "POST /v1/holder/login ");
    let n = 4;
    let logins: Vec<_> = (0..n)
        .map(|_| {
            // Instance 0 (through the gate) first, instance 1 second.
            let urls = [
                "--broker".to_string(),
                gate.url(),
                "--broker".into(),
                format!("http://127.0.0.1:{}", b.ports[1]),
            ];
            let mut c = b.login_command_at("svc-mac", &b.dir.join("pin.txt"), &urls);
            c.args(["--challenge", "AAEC"]);
            std::thread::spawn(move || c.output().unwrap())
        })
        .collect();
    gate.wait_held(n, Duration::from_secs(60));
    assert_eq!(
        gate.seen("POST /v1/holder/challenge "),
        n,
        "every challenge came from instance 0"
    );
    b.kill(0);
    gate.release();
    for l in logins {
        let o = l.join().unwrap();
        assert!(
            o.status.success(),
            "a login failed when an instance died: {}",
            text(&o)
        );
    }
    assert_eq!(
        b.admin(&["audit", "--card", &card])
            .matches(" login ")
            .count(),
        logins_before + n,
        "every login once"
    );
    assert_eq!(
        login_lines(&b.dir.join("broker-1.log")),
        instance1_before + n,
        "instance 1 completed the logins instance 0 started"
    );

    // The failover itself, step by step: instance 0 issues a challenge and dies (SIGKILL)
    // before the card's answer arrives; instance 1 redeems that challenge.
    b.start(0); // children: [instance 1, instance 0]
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = |port: u16| {
        kagi_online::broker::BrokerClient::new(&[format!("http://127.0.0.1:{port}")], None).unwrap()
    };
    let issued = rt.block_on(client(b.ports[0]).challenge()).unwrap();
    b.kill(1); // instance 0
    let mut sim = applet_sim::SimCard::from_image(&b.dir.join("card.img"), None).unwrap();
    sim.power_on();
    let mut ch = kagi::channel::CardChannel::new(sim);
    let answer = kagi_online::broker::card_answer(
        &mut ch,
        &zeroize::Zeroizing::new(b"1234".to_vec()),
        &issued,
    )
    .unwrap();
    let redeemed = rt.block_on(client(b.ports[1]).login_card(&answer));
    assert!(
        redeemed.is_ok(),
        "instance 1 refused instance 0's challenge: {:?}",
        redeemed.err()
    );
    // Once only: the same answer again is a replay, on either instance.
    assert!(rt.block_on(client(b.ports[1]).login_card(&answer)).is_err());

    // Many records, then a KEK rotation on instance 0 killed half-way: every record stays
    // whole, instance 1 finishes it, nothing is lost.
    let n_bulk = 30_000;
    let cards: String = (0..n_bulk).map(|i| format!("BULK-{i:05}\n")).collect();
    std::fs::write(b.dir.join("cards.txt"), cards).unwrap();
    let bulk = b.hsm_ok(&[
        "broker",
        "import",
        "--config",
        &b.path("broker/broker.toml"),
        "--cards-file",
        &b.path("cards.txt"),
        "--service",
        "svc-mac",
    ]);
    assert!(bulk.contains(&format!("{n_bulk} credentials")), "{bulk}");
    let before = verify(&b);
    assert_eq!(before["failed"].as_array().unwrap().len(), 0);
    let total = before["records"].as_u64().unwrap();
    assert_eq!(before["by_kek"]["k1"].as_u64(), Some(total));
    // Instance 1 stopped, instance 0 up: the rotation runs on instance 0 alone.
    b.kill(0);
    b.start(0);
    b.hsm_ok(&["broker", "new-kek", "--id", "k2"]);
    let db = b.dir.join("broker/broker.db");
    let moved = || -> i64 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let shards = broker_server::Shards::open(&[kagi_db::Backend::Sqlite(db.clone())])
                .await
                .unwrap();
            shards.all()[0].count_not_under("k1").await.unwrap()
        })
    };
    let mut rotate = b
        .kagi()
        .args([
            "broker",
            "admin",
            "--config",
            &b.path("broker/admin.toml"),
            "rotate-kek",
            "--to",
            "k2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill instance 0 once some records moved to k2 and before all did.
    let start = Instant::now();
    loop {
        let m = moved();
        if m > 0 {
            assert!(m < total as i64, "the rotation finished before the kill");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the rotation did not start"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    b.kill(0);
    let _ = rotate.kill();
    let _ = rotate.wait();
    let mid = verify(&b);
    assert_eq!(
        mid["failed"].as_array().unwrap().len(),
        0,
        "a half-rotated record: {mid}"
    );
    assert_eq!(mid["records"].as_u64(), Some(total), "records lost: {mid}");
    // The kill left work to do: records still under the old KEK (otherwise "instance 1
    // finishes the rotation" below would prove nothing).
    let left = mid["by_kek"]["k1"].as_u64().unwrap_or(0);
    assert!(
        left > 0 && left < total,
        "the kill did not land mid-rotation: {mid}"
    );
    // Instance 1 (restarted) finishes the rotation in the background. Waited for with a
    // count of the rows still under k1 (one query), then every record opened once.
    b.start(1);
    let start = Instant::now();
    while moved() != total as i64 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the rotation was not continued"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let done = verify(&b);
    assert_eq!(done["failed"].as_array().unwrap().len(), 0, "{done}");
    assert_eq!(done["by_kek"]["k2"].as_u64(), Some(total), "{done}");
    let after = json(&b.login("svc-mac", &["--challenge", &c]));
    assert_eq!(
        unb64(&after["mac"]),
        expect.to_vec(),
        "the key changed in the rotation"
    );

    // A copy of the database with another key store (its own k1 and k2) opens nothing.
    b.kill(0);
    let thief = b.dir.join("thief");
    std::fs::create_dir_all(&thief).unwrap();
    std::fs::copy(b.dir.join("broker/broker.db"), thief.join("stolen.db")).unwrap();
    for k in ["k1", "k2"] {
        b.ok(&[
            "broker",
            "new-kek",
            "--id",
            k,
            "--insecure-file-keys",
            thief.to_str().unwrap(),
        ]);
    }
    let o = b.run(&[
        "--json",
        "broker",
        "verify-records",
        "--config",
        &b.path("broker/broker.toml"),
        "--database",
        thief.join("stolen.db").to_str().unwrap(),
        "--insecure-file-keys",
        thief.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "the stolen database opened");
    // The report, then the error (both JSON documents).
    let v: serde_json::Value = serde_json::Deserializer::from_slice(&o.stdout)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(v["opened"].as_u64(), Some(0), "{v}");
    assert_eq!(v["failed"].as_array().unwrap().len() as u64, total);

    // Every KEK the broker created (k1 and k2) is sensitive and was never extractable in the
    // token, and its value (CKA_VALUE) cannot be read, as OpenSC's pkcs11-tool (not kagi)
    // sees them.
    let pin = std::fs::read_to_string(&b.pin_file).unwrap();
    let mut unreadable: Vec<String> = support::hsm_keys_unreadable(&b.conf, MODULE, &pin)
        .into_iter()
        .filter(|l| l.starts_with("broker-kek-"))
        .collect();
    unreadable.sort();
    assert_eq!(unreadable, ["broker-kek-k1", "broker-kek-k2"]);
    let objects = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &b.conf)
        .env(
            "KAGI_TEST_HSM_PIN",
            std::fs::read_to_string(&b.pin_file).unwrap().trim(),
        )
        .args([
            "--module",
            MODULE,
            "--login",
            "--pin",
            "env:KAGI_TEST_HSM_PIN",
        ])
        .args(["--list-objects", "--type", "secrkey"])
        .output()
        .expect("pkcs11-tool (OpenSC) is missing: run scripts/setup.sh");
    let t = text(&objects);
    assert!(objects.status.success(), "pkcs11-tool: {t}");
    let mut keks = Vec::new();
    for object in t.split("Secret Key Object").skip(1) {
        let label = object
            .lines()
            .find_map(|l| l.trim().strip_prefix("label:"))
            .map(str::trim)
            .unwrap_or_default();
        if label.starts_with("broker-kek-") {
            let access = object
                .lines()
                .find_map(|l| l.trim().strip_prefix("Access:"))
                .unwrap_or_default();
            assert!(
                access.contains("never extractable") && access.contains("sensitive"),
                "{label}: {object}"
            );
            keks.push(label.to_string());
        }
    }
    keks.sort();
    assert_eq!(keks, ["broker-kek-k1", "broker-kek-k2"], "{t}");

    // Nothing secret in the logs or the answers.
    let logs = b.logs();
    assert!(
        logs.len() > 1000,
        "the logs are nearly empty: the check would prove nothing"
    );
    let state = hex::decode(
        std::fs::read_to_string(b.dir.join("broker/state.key"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let admin_key = pem_der(&b.dir.join("broker/admin.key.pem"));
    let assertion_key = pem_der(&b.dir.join("broker/assertion.key.pem"));
    let answers = [
        mac.to_string(),
        p256.to_string(),
        rsa_out.to_string(),
        asserted.to_string(),
    ]
    .concat();
    for (name, secret) in [
        ("MAC key", mac_key.as_slice()),
        ("state key", state.as_slice()),
        ("admin key", admin_key.as_slice()),
        ("assertion key", assertion_key.as_slice()),
    ] {
        assert!(!leaks(&logs, secret), "the {name} is in the broker's log");
        assert!(
            !leaks(answers.as_bytes(), secret),
            "the {name} is in an answer"
        );
    }
}

/// The broker's published keys.
/// Verifies a broker assertion as a JOSE implementation other than kagi's would: the
/// compact JWS split by hand, the header's `alg` ES256 and `kid` looked up in the published
/// JWKS, and a raw P-256 ECDSA (SHA-256) check with the p256 crate over the ASCII bytes of
/// `header.payload` (RFC 7515 §5.2, RFC 7518 §3.4: the signature is R ‖ S, 64 bytes).
fn es256_by_hand(token: &str, keys: &broker_protocol::Jwks, nonce: &str) {
    use p256::ecdsa::signature::Verifier;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token}");
    let b64 = |s: &str| broker_protocol::api::unb64(s).unwrap();
    let header: serde_json::Value = serde_json::from_slice(&b64(parts[0])).unwrap();
    assert_eq!(header["alg"], "ES256", "{header}");
    let jwk = keys
        .keys
        .iter()
        .find(|k| Some(k.kid.as_str()) == header["kid"].as_str())
        .unwrap_or_else(|| panic!("kid {} not in the JWKS", header["kid"]));
    assert_eq!((jwk.kty.as_str(), jwk.crv.as_str()), ("EC", "P-256"));
    let mut point = vec![4u8];
    point.extend(b64(&jwk.x));
    point.extend(b64(&jwk.y));
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
    let sig_bytes = b64(parts[2]);
    assert_eq!(sig_bytes.len(), 64, "ES256 signatures are R ‖ S");
    let sig = p256::ecdsa::Signature::from_slice(&sig_bytes).unwrap();
    let signed = format!("{}.{}", parts[0], parts[1]);
    assert!(
        vk.verify(signed.as_bytes(), &sig).is_ok(),
        "the assertion's signature does not verify"
    );
    // The same signature over another payload does not.
    assert!(
        vk.verify(format!("{}.e30", parts[0]).as_bytes(), &sig)
            .is_err()
    );
    let claims: serde_json::Value = serde_json::from_slice(&b64(parts[1])).unwrap();
    assert_eq!(claims["nonce"], nonce, "{claims}");
    assert_eq!(claims["aud"], "svc-assert", "{claims}");
}

fn reqwest_keys(port: u16) -> broker_protocol::Jwks {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        kagi_online::broker::BrokerClient::new(&[format!("http://127.0.0.1:{port}")], None)
            .unwrap()
            .keys()
            .await
            .unwrap()
    })
}

/// Card logins an instance completed, by its log (`… broker_server::service::login: login
/// card=…`, colours removed).
fn login_lines(log: &Path) -> usize {
    let raw = std::fs::read_to_string(log).unwrap_or_default();
    let mut plain = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … m
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .lines()
        .filter(|l| l.contains("broker_server::service::login: login card="))
        .count()
}

fn verify(b: &Broker) -> serde_json::Value {
    let mut args = vec![
        "--json".to_string(),
        "broker".into(),
        "verify-records".into(),
        "--config".into(),
        b.path("broker/broker.toml"),
    ];
    args.extend(b.hsm_args());
    let o = b.kagi().args(&args).output().unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}
