//! Seed 004 with the operator's MNO-TSM and the provider's SP-TSM as two processes, each on its
//! own configuration, keys and database (SQLite, then two private PostgreSQL clusters): a SIM
//! without the provider's domain is registered with the MNO-TSM; the user applies, the
//! provider issues at the SP-TSM, the relay runs the download — the SP-TSM sends it to the
//! MNO-TSM for the domain and applet (⑭⑮) and takes it back for the credential (⑱) —, the
//! credential signs on the SIM. Then each side's files are searched for what it must not hold.

mod support;

use support::cli::{Scenario, contains, field, kagi, ok, spawn_logged as spawn, wait_port};

/// The GP test key: the simulated SIMs' issuer-domain key (the MNO-TSM's keys/isd.keys).
const ISD_KEY: &str = "404142434445464748494A4B4C4D4E4F";

/// Every file in `paths` that exists, read.
fn files(paths: &[std::path::PathBuf]) -> Vec<(String, Vec<u8>)> {
    paths
        .iter()
        .filter_map(|p| std::fs::read(p).ok().map(|b| (p.display().to_string(), b)))
        .collect()
}

fn two_processes(name: &str, databases: Option<(String, String)>) {
    let s = Scenario::new(name, false);
    let dir = &s.dir;
    let mno_port = tsm_server::testing::free_port().unwrap();
    let init = ok(kagi()
        .args(["--json", "mno-tsm", "init", "--dir"])
        .arg(dir.join("mno"))
        .args(["--listen", &format!("127.0.0.1:{mno_port}")])
        .arg("--sp-tsm-key")
        .arg(dir.join("tsm/tsm.pub.pem")));
    let init = support::schema::document("mno-tsm.init", init.as_bytes());
    assert_eq!(init["https"], false);
    // The SP-TSM learns where the MNO-TSM is (and its public key).
    let link = std::fs::read_to_string(dir.join("mno/sp-tsm-link.toml")).unwrap();
    let mut sp_toml = std::fs::read_to_string(dir.join("tsm/tsm.toml")).unwrap();
    assert!(
        !sp_toml.contains("isd_keys"),
        "the SP-TSM holds no issuer keys"
    );
    sp_toml.push_str(&link);
    std::fs::write(dir.join("tsm/tsm.toml"), sp_toml).unwrap();

    let mut mno = kagi();
    mno.args(["mno-tsm", "serve", "--config"])
        .arg(dir.join("mno/mno-tsm.toml"))
        .arg("--insecure-file-keys")
        .arg(dir.join("mno/keys"));
    let mut sp = kagi();
    sp.args(["sp-tsm", "serve", "--config"])
        .arg(dir.join("tsm/tsm.toml"))
        .arg("--insecure-file-keys")
        .arg(dir.join("tsm/keys"));
    if let Some((m, p)) = &databases {
        mno.args(["--database", m]);
        sp.args(["--database", p]);
    }
    let _mno = spawn(mno, &dir.join("mno.log"));
    let _sp = spawn(sp, &dir.join("sp.log"));
    wait_port(mno_port);
    wait_port(s.port);

    // A SIM as the operator sells it: no provider domain; registered with the MNO-TSM only
    // (the SP-TSM reads the record from there).
    let sim = ok(kagi()
        .args([
            "sim",
            "provision",
            "--json",
            "--no-domain",
            "--serial",
            name,
        ])
        .arg("--image")
        .arg(dir.join("sim.img"))
        .arg("--manufacturer-ca")
        .arg(dir.join("maker")));
    let iccid = field(&sim, "iccid");
    ok(kagi()
        .args(["tsm", "mno", "--config"])
        .arg(dir.join("mno/operator.toml"))
        .args([
            "register-card",
            "--iccid",
            &iccid,
            "--cin",
            &field(&sim, "cin"),
            "--card-certificate",
            &field(&sim, "card_certificate"),
        ]));

    let issued = s.issue(&iccid, false);
    let op = field(&issued, "op");
    let out = ok(s
        .relay()
        .arg("--sim")
        .arg("--sim-image")
        .arg(dir.join("sim.img"))
        .arg("--capture")
        .arg(dir.join("relay.bin")));
    assert_eq!(field(&out, "outcome"), "completed", "{out}");
    assert!(s.receipt_valid());
    // The credential works on the SIM.
    std::fs::write(dir.join("msg.txt"), "two services").unwrap();
    ok(kagi()
        .args(["jpki", "sign", "--sim", "--sim-image"])
        .arg(dir.join("sim.img"))
        .arg("--pin-file")
        .arg(dir.join("pin.txt"))
        .arg("-i")
        .arg(dir.join("msg.txt"))
        .arg("-o")
        .arg(dir.join("msg.sig")));

    // Each organisation's audit trail in its own database.
    let (mno_db, sp_db) = match &databases {
        Some((m, p)) => (m.clone(), p.clone()),
        None => (
            dir.join("mno/mno-tsm.db").display().to_string(),
            dir.join("tsm/tsm.db").display().to_string(),
        ),
    };
    let sp_trail = ok(kagi().args(["tsm", "audit", "--op", &op, "--database", &sp_db]));
    assert!(sp_trail.contains("sent-to-mno"), "{sp_trail}");
    let mno_trail = ok(kagi().args(["tsm", "audit", "--database", &mno_db]));
    for e in ["domain-installed", "completed"] {
        assert!(mno_trail.contains(e), "{e} missing: {mno_trail}");
    }
    assert!(
        !mno_trail.contains(&op),
        "the MNO-TSM's operation is its own"
    );

    // What each side must not hold. Stop both first so every write is on disk.
    drop(_sp);
    drop(_mno);
    let sp_files = files(&[
        dir.join("tsm/tsm.db"),
        dir.join("tsm/tsm.db-wal"),
        dir.join("sp.log"),
    ]);
    assert!(sp_files.iter().any(|(f, _)| f.ends_with("sp.log")));
    let isd = hex::decode(ISD_KEY).unwrap();
    for (f, bytes) in &sp_files {
        for needle in [
            isd.clone(),
            ISD_KEY.as_bytes().to_vec(),
            ISD_KEY.to_ascii_lowercase().into_bytes(),
        ] {
            assert!(!contains(bytes, &needle), "the issuer key is in {f}");
        }
    }
    let mno_files = files(&[
        dir.join("mno/mno-tsm.db"),
        dir.join("mno/mno-tsm.db-wal"),
        dir.join("mno.log"),
        dir.join("relay.bin"),
    ]);
    assert!(mno_files.iter().any(|(f, _)| f.ends_with("mno.log")));
    let code = std::fs::read_to_string(dir.join("code.txt")).unwrap();
    let secrets: [(&str, Vec<u8>); 3] = [
        ("PIN record", vec![0x00, 0x18, b'2', b'4', b'6', b'8']),
        ("password", b"a password".to_vec()),
        ("access code", code.trim().as_bytes().to_vec()),
    ];
    for (f, bytes) in &mno_files {
        for (what, needle) in &secrets {
            if f.ends_with("relay.bin") && *what == "access code" {
                continue; // the user types it into the relay, by design
            }
            // The password too, but the relay derives it (server relief): it never travels.
            assert!(!contains(bytes, needle), "the {what} is in {f}");
        }
    }
}

#[test]
fn two_services_as_processes_on_sqlite() {
    two_processes("two-proc-sqlite", None);
}

#[test]
fn two_services_as_processes_on_postgres() {
    let mno = tsm_server::testing::PrivatePostgres::start("two-proc-mno").unwrap();
    let sp = tsm_server::testing::PrivatePostgres::start("two-proc-sp").unwrap();
    two_processes("two-proc-pg", Some((mno.url.clone(), sp.url.clone())));
}
