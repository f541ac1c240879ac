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
