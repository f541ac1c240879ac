//! `kagi gp load|install|uninstall|list|cap-info` with real CAP files: on a simulated card
//! kept in an image file, through a perso profile with `[[load]] cap = …`, and once through a
//! private pcscd + vpcd. Prints commands, bytes and time per load.

mod support;

use std::process::Output;
use support::cli::kagi;
use support::gp_cap::*;

#[test]
fn load_install_list_uninstall_on_the_simulator() {
    let dir = tmp("sim");
    let img = dir.join("card.img");
    let iso = data(ISO);
    let iso = iso.to_str().unwrap();
    let t = std::time::Instant::now();
    let o = sim(&img, &["load", iso, "--hash", "sha1"]);
    assert!(o.status.success(), "{}", text(&o));
    let v = json(&o);
    eprintln!(
        "MEASURE cli sim {ISO}: {} commands, {} APDU bytes, block {}, {:?} (process included)",
        v["stats"]["commands"],
        v["stats"]["apdu_bytes"],
        v["stats"]["block"],
        t.elapsed()
    );
    assert_eq!(v["loaded"], "F276A288BCFBA69D34F310");
    // install of a CAP applet: loaded, then installed by running its install method in
    // kagi's Java Card VM (GlobalPlatformPro's empty applet registers itself).
    let empty = data(EMPTY);
    let t = std::time::Instant::now();
    let o = sim(
        &img,
        &[
            "install",
            empty.to_str().unwrap(),
            "--privs",
            "card-reset",
            "--create",
            "0102030405060709",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    eprintln!(
        "MEASURE cli sim install of gppro-empty (load+install, process included): {:?}",
        t.elapsed()
    );
    let o = sim(&img, &["list"]);
    let apps: Vec<String> = json(&o)["registry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["scope"] == "Applications")
        .filter_map(|e| e["aid"].as_str().map(str::to_string))
        .collect();
    assert!(apps.contains(&"0102030405060709".to_string()), "{apps:?}");
    // Both packages are on the card, with versions and modules (from the CAPs' Header and
    // Applet components as cap/tests/data/README.md lists them).
    let o = sim(&img, &["list"]);
    assert!(o.status.success(), "{}", text(&o));
    let p = packages(&json(&o));
    assert!(
        p.contains(&(
            "F276A288BCFBA69D34F310".into(),
            "1.0".into(),
            serde_json::json!(["F276A288BCFBA69D34F31001"])
        )),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|(a, _, m)| a == "0102030405" && m == &serde_json::json!(["0102030405060708"])),
        "{p:?}"
    );
    // The text listing shows the version and the module.
    let o = kagi()
        .args(["gp", "list", "--sim", "--sim-image"])
        .arg(&img)
        .output()
        .unwrap();
    let out = text(&o);
    assert!(
        out.contains("F276A288BCFBA69D34F310") && out.contains("version 1.0"),
        "{out}"
    );
    assert!(out.contains("module F276A288BCFBA69D34F31001"), "{out}");
    // uninstall removes the package.
    let o = sim(&img, &["uninstall", iso]);
    assert!(o.status.success(), "{}", text(&o));
    let p = packages(&json(&sim(&img, &["list"])));
    assert!(
        !p.iter().any(|(a, ..)| a == "F276A288BCFBA69D34F310"),
        "{p:?}"
    );
    // cap-info needs no card.
    let o = kagi()
        .args(["--json", "gp", "cap-info", iso])
        .output()
        .unwrap();
    let v = json(&o);
    assert_eq!(v["package"], "F276A288BCFBA69D34F310");
    assert_eq!(v["imports"][1]["version"], "1.6");
    // Bad input: a file that is not a CAP says so.
    let bogus = dir.join("bogus.cap");
    std::fs::write(&bogus, b"PK\x03\x04 not really").unwrap();
    let o = sim(&img, &["load", bogus.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("not a readable CAP file"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn perso_profile_loads_a_cap() {
    let dir = tmp("perso");
    let ex = support::examples();
    let profile = std::fs::read_to_string(ex.join("perso-member.toml")).unwrap();
    std::fs::copy(data(ISO), dir.join("isoapplet.cap")).unwrap();
    std::fs::write(
        dir.join("profile.toml"),
        format!("{profile}\n[[load]]\ncap = \"isoapplet.cap\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("in.csv"),
        "id,member_no,name,points\nM0001,100001,TEST MEMBER ONE,10\n",
    )
    .unwrap();
    let out = dir.join("out");
    let o = kagi()
        .args(["--json", "perso", "run", "--sim", "1", "--profile"])
        .arg(dir.join("profile.toml"))
        .arg("--input")
        .arg(dir.join("in.csv"))
        .arg("--out")
        .arg(&out)
        .arg("--insecure-file-keys")
        .arg(ex.join("keys"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(json(&o)["done"], 1, "{}", text(&o));
    // The card image holds the package.
    let img = std::fs::read_dir(out.join("cards"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "img"))
        })
        .ok()
        .flatten()
        .or_else(|| {
            std::fs::read_dir(&out)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "img"))
        })
        .unwrap_or_else(|| panic!("no card image under {}", out.display()));
    let card = applet_sim::SimCard::from_image(&img, None).unwrap();
    assert!(
        card.store().get("elf/F276A288BCFBA69D34F310").is_some(),
        "the CAP's package is not on the card"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "pcsc")]
#[test]
fn load_through_pcscd_and_vpcd() {
    let pcsc = support::PrivatePcsc::start(1);
    let reader = support::reader_name(0);
    for (rel, extra) in [(EMPTY, None), (ISO, None), (ISO, Some("--extended"))] {
        let cap = data(rel);
        if extra.is_some() {
            let o = pcsc.kagi(&[
                "gp",
                "uninstall",
                cap.to_str().unwrap(),
                "--reader",
                &reader,
                "--test-keys",
            ]);
            assert!(o.status.success(), "{}\n{}", text(&o), pcsc.logs());
        }
        let t = std::time::Instant::now();
        let mut args = vec![
            "--json",
            "gp",
            "load",
            cap.to_str().unwrap(),
            "--reader",
            &reader,
            "--test-keys",
        ];
        args.extend(extra);
        let o = pcsc.kagi(&args);
        let took = t.elapsed();
        assert!(o.status.success(), "{}\n{}", text(&o), pcsc.logs());
        let v = json(&o);
        eprintln!(
            "MEASURE pcscd+vpcd {rel} {}: {} commands, {} APDU bytes, block {}, {:?} (process and session included)",
            extra.unwrap_or("short APDUs"),
            v["stats"]["commands"],
            v["stats"]["apdu_bytes"],
            v["stats"]["block"],
            took
        );
        // Short APDUs: 255 - 8 (MAC) → 240 after padding → 239; extended: the card's 1024.
        let want_block = if extra.is_some() { 1007 } else { 239 };
        assert_eq!(v["stats"]["block"], want_block);
    }
    let o = pcsc.kagi(&["--json", "gp", "list", "--reader", &reader, "--test-keys"]);
    assert!(o.status.success(), "{}", text(&o));
    let p = packages(&json(&o));
    for aid in ["0102030405", "F276A288BCFBA69D34F310"] {
        assert!(p.iter().any(|(a, ..)| a == aid), "{aid} missing: {p:?}");
    }
}

#[test]
fn load_through_pcscd_and_vpcd_with_scp02() {
    // The `gp-scp02` simulator behind a private pcscd + vpcd: IsoApplet loads and the empty
    // applet loads and installs through SCP02 (short APDUs, 239-byte LOAD blocks).
    let pcsc = support::PrivatePcsc::start_with(1, "gp-scp02");
    let reader = support::reader_name(0);
    for (verb, rel) in [("load", ISO), ("install", EMPTY)] {
        let cap = data(rel);
        let t = std::time::Instant::now();
        let o = pcsc.kagi(&[
            "--json",
            "gp",
            verb,
            cap.to_str().unwrap(),
            "--reader",
            &reader,
            "--test-keys",
        ]);
        let took = t.elapsed();
        assert!(o.status.success(), "{}\n{}", text(&o), pcsc.logs());
        let v = json(&o);
        eprintln!(
            "MEASURE pcscd+vpcd SCP02 {verb} {rel}: {} commands, {} APDU bytes, block {}, {:?} (process and session included)",
            v["stats"]["commands"], v["stats"]["apdu_bytes"], v["stats"]["block"], took
        );
        assert_eq!(v["stats"]["block"], 239);
    }
    let o = pcsc.kagi(&["--json", "gp", "list", "--reader", &reader, "--test-keys"]);
    assert!(o.status.success(), "{}", text(&o));
    let p = packages(&json(&o));
    for aid in ["0102030405", "F276A288BCFBA69D34F310"] {
        assert!(p.iter().any(|(a, ..)| a == aid), "{aid} missing: {p:?}");
    }
}

#[test]
fn dap_signed_load_into_an_ssd_with_dap_verification() {
    // An SSD with DAP Verification takes an openssl-made P-256 key (public half from its
    // PEM); a CAP loaded into it needs --dap-key: refused (6982) without, with another key.
    let dir = tmp("dap");
    let img = dir.join("card.img");
    let (key, other) = (dir.join("dap.pem"), dir.join("other.pem"));
    for k in [&key, &other] {
        let o = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(k)
            .output()
            .expect("openssl must be installed for the DAP test");
        assert!(o.status.success(), "{}", text(&o));
    }
    let ssd = "A00000015153504401";
    let o = sim(
        &img,
        &[
            "install",
            "--package",
            "A0000001515350",
            "--module",
            "A000000151535041",
            "--create",
            ssd,
            "--privs",
            "security-domain,dap-verification",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = sim(
        &img,
        &[
            "put-key",
            "--sd",
            ssd,
            "--dap-public-key",
            key.to_str().unwrap(),
            "--new-kvn",
            "73",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(json(&o)["kcv"], serde_json::json!([]));
    let empty = data(EMPTY);
    let empty = empty.to_str().unwrap();
    for refused in [vec![], vec!["--dap-key", other.to_str().unwrap()]] {
        let mut args = vec!["load", empty, "--to", ssd];
        args.extend(refused);
        let o = sim(&img, &args);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert_eq!(json(&o)["error"]["sw"], "6982", "{}", text(&o));
    }
    let o = sim(
        &img,
        &[
            "load",
            empty,
            "--to",
            ssd,
            "--dap-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(json(&o)["loaded"], "0102030405");
    // The DAP key is listed by gp info of the SSD (id 01, KVN 73, type B0, 65 bytes) and can
    // be deleted by version and id.
    let o = sim(&img, &["info", "--sd", ssd]);
    let keys = json(&o)["keys"].clone();
    assert!(
        keys.as_array().unwrap().iter().any(|k| k["id"] == "01"
            && k["version"] == "73"
            && k["key_type"] == "B0"
            && k["length"] == 65),
        "{keys}"
    );
    let o = sim(&img, &["delete-key", "--sd", ssd, "73", "--id", "01"]);
    assert!(o.status.success(), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dap_signed_with_a_pkcs11_key_in_softhsm() {
    // P-256 and RSA-2048 key pairs made inside a private SoftHSM2 token by pkcs11-tool; the
    // SSD takes the public key from the token, kagi signs in the HSM, the simulator verifies
    // with RustCrypto. A key pair of another label signs a block the SSD refuses (6982).
    let dir = tmp("dap-hsm");
    let (conf, pin) = support::softhsm(&dir.join("hsm"));
    let module = "/usr/lib/softhsm/libsofthsm2.so";
    let pin_text = std::fs::read_to_string(&pin).unwrap();
    for (label, kind) in [
        ("dap-ec", "EC:prime256v1"),
        ("dap-rsa", "rsa:2048"),
        ("other", "EC:prime256v1"),
    ] {
        let o = std::process::Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &conf)
            .env("KAGI_TEST_HSM_PIN", pin_text.trim())
            .args([
                "--module",
                module,
                "--token-label",
                "kagi",
                "--login",
                "--pin",
                "env:KAGI_TEST_HSM_PIN",
            ])
            .args(["--keypairgen", "--key-type", kind, "--label", label])
            .output()
            .expect("pkcs11-tool (opensc) must be installed for the HSM DAP test");
        assert!(o.status.success(), "{}", text(&o));
    }
    let uri = |label: &str| {
        format!(
            "pkcs11:token=kagi;object={label}?module-path={module}&pin-source=file:{}",
            pin.display()
        )
    };
    let img = dir.join("card.img");
    let run = |args: &[&str]| -> Output {
        kagi()
            .env("SOFTHSM2_CONF", &conf)
            .arg("--json")
            .arg("gp")
            .args(args)
            .arg("--sim")
            .arg("--sim-image")
            .arg(&img)
            .output()
            .unwrap()
    };
    let empty = data(EMPTY);
    let empty = empty.to_str().unwrap();
    let ssd = "A00000015153504401";
    let o = run(&[
        "install",
        "--package",
        "A0000001515350",
        "--module",
        "A000000151535041",
        "--create",
        ssd,
        "--privs",
        "security-domain,dap-verification",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // RSA with SHA-1: over a SHA-1 load file hash (the simulator wants the hash's digest).
    for (label, kvn, digest) in [("dap-ec", "73", "sha256"), ("dap-rsa", "74", "sha1")] {
        let o = run(&[
            "put-key",
            "--sd",
            ssd,
            "--dap-public-key",
            &uri(label),
            "--new-kvn",
            kvn,
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let o = run(&["load", empty, "--to", ssd, "--dap-key", &uri("other")]);
        assert_eq!(json(&o)["error"]["sw"], "6982", "{}", text(&o));
        let o = run(&[
            "load",
            empty,
            "--to",
            ssd,
            "--dap-key",
            &uri(label),
            "--dap-digest",
            digest,
            "--hash",
            digest,
        ]);
        assert!(o.status.success(), "{label}: {}", text(&o));
        let o = run(&["uninstall", empty]);
        assert!(o.status.success(), "{}", text(&o));
        // Only this key verifies next time: delete it.
        let o = run(&["delete-key", "--sd", ssd, kvn]);
        assert!(o.status.success(), "{}", text(&o));
    }
    // A URI without its PIN source is refused before any card is opened.
    let o = run(&[
        "load",
        empty,
        "--to",
        ssd,
        "--dap-key",
        "pkcs11:token=kagi;object=dap-ec",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("pin-source"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn caps_load_and_install_through_scp02_on_the_command_line() {
    // `--sim-preset gp-scp02`: SCP02 wraps short APDUs only, so LOAD blocks stay at 239
    // bytes (255 - MAC - padding) although the simulated reader carries extended length.
    let dir = tmp("scp02");
    let img = dir.join("card.img");
    let run = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--sim-preset", "gp-scp02"]);
        sim(&img, &a)
    };
    let (empty, iso) = (data(EMPTY), data(ISO));
    let v = valid("gp.install", &run(&["install", empty.to_str().unwrap()]));
    assert_eq!(v["stats"]["block"], 239, "{v}");
    let v = valid("gp.load", &run(&["load", iso.to_str().unwrap()]));
    assert_eq!(v["stats"]["block"], 239, "{v}");
    assert_eq!(v["stats"]["commands"], 1 + 14114_usize.div_ceil(239), "{v}");
    let list = json(&run(&["list"]));
    let p = packages(&list);
    for (pkg, module) in [
        ("0102030405", "0102030405060708"),
        ("F276A288BCFBA69D34F310", "F276A288BCFBA69D34F31001"),
    ] {
        assert!(
            p.iter()
                .any(|(a, _, m)| a == pkg && m == &serde_json::json!([module])),
            "{p:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
