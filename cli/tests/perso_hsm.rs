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

#[test]
fn scp02_masters_in_softhsm_personalise_emv_and_visa2_cards() {
    // 3DES masters imported with `perso hsm-import --des`; a profile with diversification
    // "emv" (then "visa2") personalises SCP02 cards (simulated, i=55) with keys derived inside
    // the HSM. Each card then opens an SCP02 session with the keys the software derivation
    // (card_wire::scp02, known-answer tested against GlobalPlatformPro's KCVs) computes from
    // the same master and the card's KDD, and refuses the undiversified master.
    use card_wire::scp02::{Des3Key, StaticKeys02};
    use card_wire::scp03::{AesKey, Diversification, HostOptions, SecurityLevel, StaticKeys};
    let dir = std::env::temp_dir().join(format!("kagi-hsm02-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (conf, pin_file) = support::softhsm(&dir.join("hsm"));
    let hsm = [
        "--hsm-module",
        MODULE,
        "--hsm-pin-file",
        pin_file.to_str().unwrap(),
    ];
    let (enc, mac, dek) = (
        "404142434445464748494A4B4C4D4E4F",
        "2B7E151628AED2A6ABF7158809CF4F3C",
        "0123456789ABCDEFFEDCBA9876543210",
    );
    let master_file = dir.join("master02.keys");
    std::fs::write(&master_file, format!("ENC={enc}\nMAC={mac}\nDEK={dek}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&master_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut import = vec!["perso", "hsm-import", "--des"];
    import.extend(hsm);
    import.extend(["--key-file", master_file.to_str().unwrap()]);
    let o = kagi(&conf, &import);
    assert!(o.status.success(), "{}", text(&o));
    let des = |h: &str| Des3Key::new(&hex::decode(h).unwrap()).unwrap();
    let master = StaticKeys02::new(0x31, des(enc), des(mac), des(dek));
    let input = dir.join("records.csv");
    std::fs::write(&input, "id\nS0\nS1\n").unwrap();
    for (scheme, name) in [
        (Diversification::Emv, "emv"),
        (Diversification::Visa2, "visa2"),
    ] {
        let profile = dir.join(format!("{name}.toml"));
        std::fs::write(
            &profile,
            format!(
                "version = 1\nname = \"scp02 {name}\"\ncard = \"smartcard\"\nfinal_state = \"secured\"\n\n\
                 [keys]\ntransport_kvn = \"30\"\nproduction_kvn = \"31\"\ndiversification = \"{name}\"\n"
            ),
        )
        .unwrap();
        // The HSM, then the development file store with the same master: both derive.
        let files = dir.join("files");
        std::fs::create_dir_all(&files).unwrap();
        std::fs::copy(&master_file, files.join("master.keys")).unwrap();
        let transport = examples().join("keys/transport.keys");
        std::fs::copy(&transport, files.join("transport.keys")).unwrap();
        for store in ["hsm", "files"] {
            let out = dir.join(format!("out-{name}-{store}"));
            let mut run = vec!["perso", "run", "--sim", "2", "--profile"];
            run.extend([
                profile.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
            ]);
            run.extend(["--out", out.to_str().unwrap()]);
            if store == "hsm" {
                run.extend(hsm);
                run.extend(["--transport-keys", transport.to_str().unwrap()]);
            } else {
                run.extend(["--insecure-file-keys", files.to_str().unwrap()]);
            }
            let o = kagi(&conf, &run);
            assert!(o.status.success(), "{name} {store}: {}", text(&o));
            for id in ["S0", "S1"] {
                let image = out.join("cards").join(format!("{id}.img"));
                let kdd: [u8; 10] = support::kdd_of(&image, None, 0x31).try_into().unwrap();
                let expected = master.diversify(scheme, &kdd).unwrap();
                let as_keys = |k: &StaticKeys02| {
                    let aes = |d: &Des3Key| AesKey::new(d.as_bytes()).unwrap();
                    StaticKeys::new(0x31, aes(k.enc()), aes(k.mac()), aes(k.dek())).unwrap()
                };
                for (keys, opens) in [(as_keys(&expected), true), (as_keys(&master), false)] {
                    let mut card = applet_sim::SimCard::from_image(&image, None).unwrap();
                    card.power_on();
                    let mut ch = kagi::channel::CardChannel::new(card);
                    let sd = kagi::gp::select_domain(&mut ch, None).unwrap();
                    let opts = HostOptions {
                        kvn: 0x31,
                        level: SecurityLevel::CMAC,
                        ..HostOptions::default()
                    };
                    let r = kagi::secure::SecureChannel::open(&mut ch, keys, opts, Some(&sd.aid));
                    assert_eq!(r.is_ok(), opens, "{name} {store} {id}: {:?}", r.err());
                    if let Ok(sc) = r {
                        assert_eq!(sc.scp(), 0x02);
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
