//! The `kagi` binary as a user runs it: simulated cards kept in image files across
//! invocations, JSON output with a schema version, keys only from files or the environment,
//! and clear errors for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kagi(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kagi"))
        .args(args)
        .env_remove("KAGI_KEY")
        .env_remove("KAGI_KEY_ENC")
        .env_remove("KAGI_KEY_MAC")
        .env_remove("KAGI_KEY_DEK")
        .output()
        .expect("run kagi")
}

fn ok(args: &[&str]) -> String {
    let o = kagi(args);
    assert!(
        o.status.success(),
        "kagi {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command that exits with `code` (the CLI's exit-code table), its stdout.
fn exits(code: i32, args: &[&str]) -> String {
    let o = kagi(args);
    assert_eq!(
        o.status.code(),
        Some(code),
        "kagi {args:?}:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let v: serde_json::Value = serde_json::from_str(&ok(&a)).expect("json output");
    assert_eq!(v["schema_version"], 1);
    v
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("kagi-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn path(&self, f: &str) -> String {
        self.0.join(f).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn aids(v: &serde_json::Value) -> Vec<String> {
    v["registry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["aid"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_simulated_card_kept_in_an_image_across_runs() {
    let d = Dir::new("image");
    let img = d.path("card.img");
    let sim = ["--sim", "--sim-image", img.as_str()];
    let with = |extra: &[&str]| -> Vec<String> {
        extra
            .iter()
            .chain(sim.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |extra: &[&str]| ok(&with(extra).iter().map(|s| s.as_str()).collect::<Vec<_>>());
    run(&[
        "gp",
        "load",
        "--package",
        "F001020304",
        "--module",
        "F00102030401=kagi.echo",
    ]);
    run(&[
        "gp",
        "install",
        "--package",
        "F001020304",
        "--module",
        "F00102030401",
    ]);
    run(&[
        "gp",
        "store-data",
        "--app",
        "F00102030401",
        "--data",
        "6B616769",
    ]);
    // The image is private: it holds the card's keys.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&img).unwrap().permissions().mode() & 0o077,
            0
        );
    }
    let r = run(&["apdu", "00A4040006F00102030401", "8014000000"]);
    assert!(
        r.lines().nth(1).unwrap().starts_with("6B616769 9000"),
        "{r}"
    );
    let list = json(
        &with(&["gp", "list"])
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    );
    assert!(aids(&list).contains(&"F00102030401".to_string()));
    run(&["gp", "delete", "--related", "F001020304"]);
    let list = json(
        &with(&["gp", "list"])
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    );
    assert!(!aids(&list).iter().any(|a| a.starts_with("F001020304")));
}

#[test]
fn put_key_from_a_key_file_then_only_the_new_keys_work() {
    let d = Dir::new("putkey");
    let img = d.path("card.img");
    let new_keys = d.path("new.keys");
    std::fs::write(&new_keys, "KVN=30\nENC=00112233445566778899AABBCCDDEEFF\nMAC=102132435465768798A9BACBDCEDFE0F\nDEK=2030405060708090A0B0C0D0E0F00010\n").unwrap();
    let out = ok(&[
        "gp",
        "put-key",
        "--sim",
        "--sim-image",
        &img,
        "--new-key-file",
        &new_keys,
        "--replace",
        "30",
    ]);
    assert!(out.contains("key set 30 written"), "{out}");
    // The simulator's test keys no longer open it …
    let o = kagi(&["gp", "list", "--sim", "--sim-image", &img]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("do not retry") || err.contains("Do NOT retry"),
        "{err}"
    );
    // … the new key file does.
    let v = json(&[
        "gp",
        "list",
        "--sim",
        "--sim-image",
        &img,
        "--key-file",
        &new_keys,
    ]);
    assert_eq!(v["session"]["kvn"], "30");
    assert!(v["session"]["keys"].as_str().unwrap().contains("new.keys"));
}

#[test]
fn keys_never_come_from_argv_and_real_readers_need_them() {
    // There is no option that takes a key value.
    let o = kagi(&[
        "gp",
        "list",
        "--sim",
        "--key",
        "404142434445464748494A4B4C4D4E4F",
    ]);
    assert!(!o.status.success());
    // Without --sim or --reader, the user is told what to choose.
    let o = kagi(&["gp", "info"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--sim"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A bad AID is a clear error, not a panic.
    let o = kagi(&["gp", "delete", "--sim", "F0"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("5 to 16 bytes"));
    let o = kagi(&["apdu", "--sim", "00A4"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("shorter than the 4-byte header"));
}

#[test]
fn life_cycle_from_the_cli_and_s16_cards() {
    let d = Dir::new("lc");
    let img = d.path("card.img");
    ok(&[
        "gp",
        "set-status",
        "--sim",
        "--sim-image",
        &img,
        "--app",
        "F04B41474901",
        "--state",
        "lock",
    ]);
    let v = json(&["gp", "list", "--sim", "--sim-image", &img]);
    let echo = v["registry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["aid"] == "F04B41474901")
        .unwrap()
        .clone();
    assert_eq!(echo["life_cycle"], "LOCKED");
    let v = json(&["gp", "list", "--sim", "--sim-s16", "--level", "mac"]);
    assert_eq!(v["session"]["mode"], "S16");
    assert_eq!(v["session"]["level"], "01");
    assert!(Path::new(&img).exists());
}

#[test]
fn jpki_demo_card_ca_and_eligibility_from_the_cli() {
    let d = Dir::new("jpki");
    let img = d.path("jcard.img");
    let pki = d.path("pki");
    ok(&["ca", "init", "--dir", &pki]);
    let sim = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(
            [
                "--sim",
                "--sim-preset",
                "jpki-demo",
                "--sim-image",
                &img,
                "--sim-pki-dir",
                &pki,
            ]
            .map(String::from),
        );
        v
    };
    let run = |extra: &[&str]| ok(&sim(extra).iter().map(|s| s.as_str()).collect::<Vec<_>>());
    // A verdict other than eligible exits 4 (not eligible), its report on stdout.
    let not_eligible = |extra: &[&str]| {
        exits(
            4,
            &sim(extra).iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        )
    };
    let info = run(&["jpki", "info", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["token_label"], "JPKIAPICCTOKEN2");
    assert_eq!(v["auth_pin_tries"], 3);
    // The serial exactly as `jpki info` prints it (hex) is what `ca revoke` takes.
    let serial = v["auth_certificate"]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(u64::from_str_radix(&serial, 16).is_ok(), "{serial}");
    let ca = format!("{pki}/auth-ca.crt.pem");
    let crl = format!("{pki}/auth-ca.crl.der");
    let verdict = |out: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        v["verdict"].as_str().unwrap().to_string()
    };
    assert_eq!(
        verdict(&run(&["eligibility", "read", "--ca", &ca, "--json"])),
        "eligible"
    );
    // A PIN from a file signs; the signature is checked against the card's certificate.
    let pin = d.path("pin");
    std::fs::write(&pin, "1234\n").unwrap();
    let msg = d.path("msg");
    std::fs::write(&msg, "hello").unwrap();
    let sig = d.path("sig");
    let out = run(&["jpki", "sign", "--pin-file", &pin, "-i", &msg, "-o", &sig]);
    assert!(out.contains("verified"), "{out}");
    assert_eq!(std::fs::metadata(&sig).unwrap().len(), 256);
    // Revocation at the CA takes effect on the next read.
    let revoked: serde_json::Value =
        serde_json::from_str(&ok(&["ca", "revoke", "--dir", &pki, &serial, "--json"])).unwrap();
    assert_eq!(
        u64::from_str_radix(revoked["revoked"].as_str().unwrap(), 16).unwrap(),
        u64::from_str_radix(&serial, 16).unwrap()
    );
    assert_eq!(
        verdict(&not_eligible(&[
            "eligibility",
            "read",
            "--ca",
            &ca,
            "--crl",
            &crl,
            "--json"
        ])),
        "revoked"
    );
    // A wrong PIN reports the tries left and is counted.
    let bad = d.path("bad");
    std::fs::write(&bad, "0000").unwrap();
    let o = kagi(
        &sim(&["jpki", "verify", "--pin-file", &bad])
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("2 tries left"));
    let v: serde_json::Value =
        serde_json::from_str(&run(&["jpki", "pin-status", "--json"])).unwrap();
    assert_eq!(v["auth_pin_tries"], 2);
    // A PIN of the wrong format never reaches the card.
    std::fs::write(&bad, "12345").unwrap();
    let o = kagi(
        &sim(&["jpki", "verify", "--pin-file", &bad])
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("4 digits"));
    let v: serde_json::Value =
        serde_json::from_str(&run(&["jpki", "pin-status", "--json"])).unwrap();
    assert_eq!(v["auth_pin_tries"], 2);
    // An unknown CA: unknown-issuer.
    let other = d.path("other");
    ok(&["ca", "init", "--dir", &other]);
    let out = not_eligible(&[
        "eligibility",
        "read",
        "--ca",
        &format!("{other}/auth-ca.crt.pem"),
        "--json",
    ]);
    assert_eq!(verdict(&out), "unknown-issuer");
}

#[test]
fn ca_issues_for_a_public_key_and_eligibility_at_a_given_time() {
    let d = Dir::new("caissue");
    let pki = d.path("pki");
    let img = d.path("j.img");
    ok(&["ca", "init", "--dir", &pki]);
    // Use the demo card's own key: read its certificate, take the public key with openssl-free
    // means (the library), issue a new certificate for it and check it parses.
    ok(&[
        "jpki",
        "read-cert",
        "--sim",
        "--sim-preset",
        "jpki-demo",
        "--sim-image",
        &img,
        "--sim-pki-dir",
        &pki,
        "-o",
        &d.path("auth.der"),
    ]);
    let cert = test_pki::parse_certificate(&std::fs::read(d.path("auth.der")).unwrap()).unwrap();
    let spki = der::Encode::to_der(cert.tbs_certificate().subject_public_key_info()).unwrap();
    std::fs::write(d.path("pub.der"), spki).unwrap();
    ok(&[
        "ca",
        "issue",
        "--dir",
        &pki,
        "--public-key",
        &d.path("pub.der"),
        "--serial",
        "2A",
        "-o",
        &d.path("new.der"),
    ]);
    let new = test_pki::parse_certificate(&std::fs::read(d.path("new.der")).unwrap()).unwrap();
    assert_eq!(test_pki::serial_u64(&new), Some(42));
    assert_eq!(
        new.tbs_certificate().subject_public_key_info(),
        cert.tbs_certificate().subject_public_key_info()
    );
    // Ten years on, the card's certificate has expired.
    let ca = format!("{pki}/auth-ca.crt.pem");
    let later = (std::time::SystemTime::now() + std::time::Duration::from_secs(10 * 365 * 86400))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let out = exits(
        4,
        &[
            "eligibility",
            "read",
            "--sim",
            "--sim-image",
            &img,
            "--ca",
            &ca,
            "--at-unix",
            &later,
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["verdict"], "expired");
}

#[test]
fn sim_serve_saves_its_image_on_sigterm() {
    let d = Dir::new("serve");
    let img = d.path("served.img");
    // Nothing listens on port 1: the card keeps trying to reach vpcd until stopped.
    let mut child = Command::new(env!("CARGO_BIN_EXE_kagi"))
        .args(["sim", "serve", "--vpcd", "127.0.0.1:1", "--image", &img])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first line comes after the signal handler is in place.
    let mut first = String::new();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
    assert!(first.contains("serving simulated card 0"), "{first}");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(rest.contains("saved card image"), "{rest}");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let card = applet_sim::SimCard::from_image(Path::new(&img), None).unwrap();
    assert!(card.store().get("card/i").is_some());
}
