//! Delegated management from the command line (GP Annex C.4/C.5): an SSD with the Delegated
//! Management privilege loads, installs and deletes CAP content only with the issuer's token,
//! and kagi verifies the card's receipts.

mod support;

use std::path::{Path, PathBuf};
use support::gp_cap::*;

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
