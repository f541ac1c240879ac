//! `kagi gp load|install|uninstall|list|cap-info` with real CAP files: on a simulated card
//! kept in an image file, through a perso profile with `[[load]] cap = …`, and once through a
//! private pcscd + vpcd. Prints commands, bytes and time per load.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use support::cli::kagi;

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cap/tests/data")
        .join(rel)
}

const EMPTY: &str = "gppro-empty/Empty_0102030405_8d5ac9e2_2.2.1.cap";
const ISO: &str = "isoapplet-v0/isoapplet.cap";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kagi-gpcap-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sim(img: &Path, args: &[&str]) -> Output {
    kagi()
        .arg("--json")
        .args(["gp"])
        .args(args)
        .arg("--sim")
        .arg("--sim-image")
        .arg(img)
        .output()
        .unwrap()
}

fn packages(list: &serde_json::Value) -> Vec<(String, serde_json::Value, serde_json::Value)> {
    list["registry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["scope"] == "LoadFilesAndModules")
        .map(|e| {
            (
                e["aid"].as_str().unwrap().to_string(),
                e["version"].clone(),
                e["modules"].clone(),
            )
        })
        .collect()
}

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
            .args([
                "--module",
                module,
                "--token-label",
                "kagi",
                "--login",
                "--pin",
                pin_text.trim(),
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

/// Key files and a card image for delegated management: the ISD has the issuer's token key
/// (`token.pem`'s public key, version 70) and a receipt key (key set 71, `receipt.keys`);
/// `wrong.keys` and `other.pem` are keys the card does not have. `ssd_privs`: the privileges
/// of the SSD `A00000015153504403` it installs.
struct DmCard {
    dir: PathBuf,
    img: PathBuf,
    token: PathBuf,
    other: PathBuf,
    receipt: PathBuf,
    wrong: PathBuf,
}

const DM_SSD: &str = "A00000015153504403";

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", text(o));
}

fn dm_card(name: &str, ssd_privs: &str) -> DmCard {
    let dir = tmp(name);
    let img = dir.join("card.img");
    let (token, other) = (dir.join("token.pem"), dir.join("other.pem"));
    for k in [&token, &other] {
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
            .expect("openssl must be installed for the delegated-management test");
        assert!(o.status.success(), "{}", text(&o));
    }
    let write = |name: &str, body: &str| {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    let receipt = write(
        "receipt.keys",
        "KVN=71\nKEY=71717171717171717171717171717171\n",
    );
    let wrong = write("wrong.keys", "KEY=72727272727272727272727272727272\n");
    ok(&sim(
        &img,
        &[
            "put-key",
            "--dap-public-key",
            token.to_str().unwrap(),
            "--new-kvn",
            "70",
        ],
    ));
    ok(&sim(
        &img,
        &["put-key", "--new-key-file", receipt.to_str().unwrap()],
    ));
    ok(&sim(
        &img,
        &[
            "install",
            "--package",
            "A0000001515350",
            "--module",
            "A000000151535041",
            "--create",
            DM_SSD,
            "--privs",
            ssd_privs,
        ],
    ));
    DmCard {
        dir,
        img,
        token,
        other,
        receipt,
        wrong,
    }
}

#[test]
fn delegated_load_with_a_token_and_a_verified_receipt() {
    // The ISD gets the issuer's token key (public key, version 70) and a receipt key (key set
    // 71); an SSD with Delegated Management loads a CAP into itself only with a token, and
    // the receipt verifies with the receipt key (and not with another one).
    let DmCard {
        dir,
        img,
        token,
        other,
        receipt,
        wrong,
    } = dm_card("dm", "security-domain,delegated-management");
    let ssd = DM_SSD;
    let empty = data(EMPTY);
    let empty = empty.to_str().unwrap();
    for refused in [vec![], vec!["--token-key", other.to_str().unwrap()]] {
        let mut args = vec!["load", empty, "--sd", ssd];
        args.extend(refused);
        let o = sim(&img, &args);
        assert_eq!(json(&o)["error"]["sw"], "6982", "{}", text(&o));
    }
    let o = sim(
        &img,
        &[
            "load",
            empty,
            "--sd",
            ssd,
            "--token-key",
            token.to_str().unwrap(),
            "--receipt-key-file",
            receipt.to_str().unwrap(),
        ],
    );
    ok(&o);
    let v = json(&o);
    assert_eq!(v["receipt"]["counter"], 1, "{v}");
    assert_eq!(v["receipt"]["card_unique_data"], "00004B41474900000001");
    // Again after uninstalling (from the ISD): the counter moves on; a wrong receipt key
    // does not verify the receipt.
    ok(&sim(&img, &["uninstall", empty]));
    let o = sim(
        &img,
        &[
            "load",
            empty,
            "--sd",
            ssd,
            "--token-key",
            token.to_str().unwrap(),
            "--receipt-key-file",
            wrong.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("receipt"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The package of [`EMPTY`] (GlobalPlatformPro's empty applet).
const EMPTY_PKG: &str = "0102030405";

fn has_empty_pkg(img: &Path) -> bool {
    packages(&json(&sim(img, &["list"])))
        .iter()
        .any(|p| p.0 == EMPTY_PKG)
}

/// The `--json` document `o` printed, checked against its published schema `name`.
fn valid(name: &str, o: &Output) -> serde_json::Value {
    ok(o);
    let v = json(o);
    let errors = support::schema::errors(name, &v);
    assert!(errors.is_empty(), "{name}: {errors:?} in {v}");
    v
}

#[test]
fn delegated_install_and_delete_of_a_cap_applet_with_receipts() {
    // An SSD with Delegated Management loads AND installs a CAP applet into itself, then
    // deletes the instance and the package, each command with the issuer's token; every
    // receipt verifies, counters 1..4 (load, install, delete, uninstall). Without a token or
    // with another key's token the card refuses with 6982 and nothing changes.
    let c = dm_card("dm-install", "security-domain,delegated-management");
    let empty = data(EMPTY);
    let empty = empty.to_str().unwrap();
    let (token, other, receipt) = (
        c.token.to_str().unwrap(),
        c.other.to_str().unwrap(),
        c.receipt.to_str().unwrap(),
    );
    for refused in [vec![], vec!["--token-key", other]] {
        let mut args = vec!["install", empty, "--sd", DM_SSD];
        args.extend(refused);
        let o = sim(&c.img, &args);
        assert_eq!(json(&o)["error"]["sw"], "6982", "{}", text(&o));
    }
    assert!(!has_empty_pkg(&c.img));
    let base = [
        "--sd",
        DM_SSD,
        "--token-key",
        token,
        "--receipt-key-file",
        receipt,
    ];
    let mut args = vec!["install", empty];
    args.extend(base);
    let v = valid("gp.install", &sim(&c.img, &args));
    assert_eq!(v["load_receipt"]["counter"], 1, "{v}");
    assert_eq!(v["receipt"]["counter"], 2, "{v}");
    assert_eq!(v["receipt"]["card_unique_data"], "00004B41474900000001");
    let app = v["installed"].as_str().unwrap().to_string();
    // GET STATUS through the ISD: the package (in the SSD) with its module, and the instance.
    let list = json(&sim(&c.img, &["list"]));
    let pkgs = packages(&list);
    let empty_pkg = pkgs
        .iter()
        .find(|p| p.0 == EMPTY_PKG)
        .expect("the package is listed");
    assert_eq!(empty_pkg.2, serde_json::json!([app]), "{list}");
    let apps = list["registry"].as_array().unwrap();
    assert!(
        apps.iter()
            .any(|e| e["aid"] == app.as_str() && e["scope"] == "Applications"),
        "{list}"
    );
    // DELETE of the instance: refused without a token and with another key's (a token for
    // other data: host/tests/gp_delegated.rs); accepted with the issuer's.
    for refused in [vec![], vec!["--token-key", other]] {
        let mut args = vec!["delete", &app, "--sd", DM_SSD];
        args.extend(refused);
        let o = sim(&c.img, &args);
        assert_eq!(json(&o)["error"]["sw"], "6982", "{}", text(&o));
    }
    let mut args = vec!["delete", app.as_str()];
    args.extend(base);
    let v = valid("gp.delete", &sim(&c.img, &args));
    assert_eq!(v["receipt"]["counter"], 3, "{v}");
    // uninstall (DELETE of the package with P2 80) with a wrong receipt key: the card
    // deletes, kagi says the receipt does not verify (exit 1).
    let mut args = vec!["uninstall", empty];
    args.extend(base);
    args[7] = c.wrong.to_str().unwrap();
    let o = sim(&c.img, &args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("receipt"), "{}", text(&o));
    assert!(!has_empty_pkg(&c.img));
    // Reload and uninstall with the right receipt key: counters 5 (load), 6 (delete).
    let mut args = vec!["load", empty];
    args.extend(base);
    assert_eq!(
        valid("gp.load", &sim(&c.img, &args))["receipt"]["counter"],
        5
    );
    let mut args = vec!["uninstall", empty];
    args.extend(base);
    let v = valid("gp.uninstall", &sim(&c.img, &args));
    assert_eq!(v["receipt"]["counter"], 6, "{v}");
    let _ = std::fs::remove_dir_all(&c.dir);
}

#[test]
fn a_domain_without_delegated_management_gets_nowhere_with_a_token() {
    // The same SSD with Security Domain only: the issuer's token does not make it load or
    // install (6982), and the card stays empty.
    let c = dm_card("dm-none", "security-domain");
    let empty = data(EMPTY);
    let token = c.token.to_str().unwrap();
    for cmd in ["load", "install"] {
        let o = sim(
            &c.img,
            &[
                cmd,
                empty.to_str().unwrap(),
                "--sd",
                DM_SSD,
                "--token-key",
                token,
            ],
        );
        assert_eq!(json(&o)["error"]["sw"], "6982", "{cmd}: {}", text(&o));
    }
    assert!(!has_empty_pkg(&c.img));
    let _ = std::fs::remove_dir_all(&c.dir);
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
