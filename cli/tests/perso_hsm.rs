//! Master keys in a PKCS#11 HSM (SoftHSM2, in a private token directory made by
//! scripts/softhsm-init.sh): imported as non-extractable keys, then a batch diversifies every
//! card's keys inside the HSM. The cards are checked with the software `kdf3` (known-answer
//! tested against GlobalPlatformPro), so the HSM path must derive exactly the same keys.

mod support;

use kagi_perso::journal::{self, Status};
use kagi_perso::{KeySets, Profile};
use std::path::Path;
use std::process::{Command, Output};
use support::examples;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn kagi(conf: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kagi"))
        .args(args)
        .env("SOFTHSM2_CONF", conf)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn master_keys_in_softhsm_diversify_exactly_like_kdf3() {
    let dir = std::env::temp_dir().join(format!("kagi-hsm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (conf, pin_file) = support::softhsm(&dir.join("hsm"));
    let pin = std::fs::read_to_string(&pin_file).unwrap();
    let hsm = [
        "--hsm-module",
        MODULE,
        "--hsm-pin-file",
        pin_file.to_str().unwrap(),
    ];
    let master_file = examples().join("keys/master.keys");

    // Import once; a second import under the same label is refused.
    let mut import = vec!["perso", "hsm-import"];
    import.extend(hsm);
    import.extend(["--key-file", master_file.to_str().unwrap()]);
    let first = kagi(&conf, &import);
    assert!(first.status.success(), "{}", text(&first));
    let again = kagi(&conf, &import);
    assert!(!again.status.success());
    assert!(text(&again).contains("already holds"), "{}", text(&again));
    // The service provider's master keys, for its security domain.
    let provider_file = examples().join("keys/provider.keys");
    let mut provider = vec!["--json", "perso", "hsm-import", "--hsm-key", "provider"];
    provider.extend(hsm);
    provider.extend(["--key-file", provider_file.to_str().unwrap()]);
    let imported = kagi(&conf, &provider);
    assert!(imported.status.success(), "{}", text(&imported));
    let doc = support::schema::document("perso.hsm-import", &imported.stdout);
    assert_eq!(
        doc["objects"],
        serde_json::json!(["provider-enc", "provider-mac", "provider-dek"])
    );
    // Every imported master key (ENC, MAC, DEK of both sets) is sensitive, never extractable
    // and its value cannot be read, as OpenSC's pkcs11-tool sees them.
    let imported_keys = support::hsm_keys_unreadable(&conf, MODULE, &pin);
    assert_eq!(imported_keys.len(), 6, "{imported_keys:?}");

    // A wrong PIN is a clear error, not a panic.
    std::fs::write(dir.join("wrong.pin"), "00000000").unwrap();
    let input = dir.join("records.csv");
    let mut csv = String::from("id,member_no,name,points\n");
    for i in 0..6 {
        csv.push_str(&format!("H{i},{},HSM MEMBER {i},{i}\n", 500000 + i));
    }
    std::fs::write(&input, csv).unwrap();
    let batch = |pin: &Path, out: &Path| {
        kagi(
            &conf,
            &[
                "perso",
                "run",
                "--sim",
                "3",
                "--profile",
                examples().join("perso-member.toml").to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--hsm-module",
                MODULE,
                "--hsm-pin-file",
                pin.to_str().unwrap(),
                "--transport-keys",
                examples().join("keys/transport.keys").to_str().unwrap(),
            ],
        )
    };
    let wrong = batch(&dir.join("wrong.pin"), &dir.join("out-wrong"));
    assert!(!wrong.status.success());
    assert!(text(&wrong).contains("PIN"), "{}", text(&wrong));

    let out = dir.join("out");
    let run = batch(&pin_file, &out);
    assert!(run.status.success(), "{}", text(&run));
    assert!(!text(&run).contains("insecure"), "{}", text(&run));

    // Every card answers to the keys the software kdf3 derives from the same master keys.
    let profile =
        Profile::parse(&std::fs::read_to_string(examples().join("perso-member.toml")).unwrap())
            .unwrap();
    let software = KeySets::from_insecure_dir(&examples().join("keys"), &profile).unwrap();
    let state = journal::replay(&out.join("journal.jsonl")).unwrap();
    for i in 0..6 {
        let id = format!("H{i}");
        assert_eq!(state.get(&id), Some(&Status::Done), "{}", text(&run));
        let mut card =
            applet_sim::SimCard::from_image(&out.join("cards").join(format!("{id}.img")), None)
                .unwrap();
        card.power_on();
        let mut ch = kagi::channel::CardChannel::new(card);
        kagi_perso::run::verify(&mut ch, &profile, &software).unwrap();
    }

    // Neither the master keys nor the HSM PIN appear in any output.
    let mut outputs = text(&run);
    for f in ["journal.jsonl", "report.csv", "report.json"] {
        outputs.push_str(&std::fs::read_to_string(out.join(f)).unwrap_or_default());
    }
    let master = std::fs::read_to_string(&master_file).unwrap()
        + &std::fs::read_to_string(&provider_file).unwrap();
    for line in master.lines().filter(|l| l.contains('=')) {
        let (_, key) = line.split_once('=').unwrap();
        assert!(!outputs.to_uppercase().contains(&key.trim().to_uppercase()));
    }
    // Nor the per-card keys the HSM diversified, computed here independently (RustCrypto
    // CMAC over each card's KDD, read from the card): the ISD's and the provider domain's.
    let keys_of = |file: &Path| -> Vec<String> {
        std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .filter(|l| l.contains('='))
            .map(|l| l.split('=').nth(1).unwrap().trim().to_string())
            .collect()
    };
    let (isd_masters, sd_masters) = (keys_of(&master_file), keys_of(&provider_file));
    let provider_sd = hex::decode("A00000015153505001").unwrap();
    let upper = outputs.to_uppercase();
    let mut checked = 0;
    for i in 0..6 {
        let card = out.join("cards").join(format!("H{i}.img"));
        let isd_kdd = support::kdd_of(&card, None, 0);
        let sd_kdd = support::kdd_of(&card, Some(&provider_sd), 0x31);
        for (masters, kdd) in [(&isd_masters, &isd_kdd), (&sd_masters, &sd_kdd)] {
            for (k, master) in masters.iter().enumerate() {
                let key = &support::kdf3_by_hand(master, kdd)[k];
                assert!(
                    !upper.contains(&key[..16]),
                    "H{i}: a per-card key in an output"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 36);
    assert!(!outputs.contains(pin.trim()));
    // The batch left no other key in the token, and the masters are as unreadable as before.
    let after = support::hsm_keys_unreadable(&conf, MODULE, &pin);
    assert_eq!(after, imported_keys);
    let _ = std::fs::remove_dir_all(&dir);
}
