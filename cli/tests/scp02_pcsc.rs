//! SCP02 over the real PC/SC stack: a private pcscd with vpcd serving the `gp-scp02` preset.
//! OpenSC reads its SCP02 recognition data; `kagi` opens SCP02 (chosen from the card),
//! lists the registry, writes a new 3DES key set with PUT KEY and authenticates with it, and
//! `gp info --key-file` names the matching diversification without authenticating.

#![cfg(feature = "pcsc")]

mod support;

use support::PrivatePcsc;

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &std::process::Output, pcsc: &PrivatePcsc) -> serde_json::Value {
    assert!(o.status.success(), "{}\n{}", text(o), pcsc.logs());
    serde_json::from_slice(&o.stdout).expect("json")
}

#[test]
fn kagi_runs_scp02_over_pcsc_and_changes_keys() {
    let pcsc = PrivatePcsc::start_with(1, "gp-scp02");
    // An independent PC/SC client sees SCP02 i=55 in the card recognition data
    // (OID 1.2.840.114283.4.2.85 = 2A864886FC6B 04 02 55).
    let o = pcsc.run(
        "opensc-tool",
        &["-r", "0", "-s", "00A4040000", "-s", "80CA006600"],
    );
    let out = text(&o).replace(' ', "").to_uppercase();
    assert!(out.contains("2A864886FC6B040255"), "{}", text(&o));

    let v = json(
        &pcsc.kagi(&["gp", "list", "--reader", "0", "--test-keys", "--json"]),
        &pcsc,
    );
    assert_eq!(v["session"]["scp"], "02");
    assert_eq!(v["session"]["i"], "55");
    assert_eq!(v["session"]["kvn"], "20");
    // Default level for SCP02: C-MAC + C-DEC.
    assert_eq!(v["session"]["level"], "03");
    assert_eq!(v["session"]["challenge_verified"], true);
    let aids: Vec<&str> = v["registry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["aid"].as_str().unwrap())
        .collect();
    assert!(
        aids.contains(&"A000000151000000") && aids.contains(&"F04B41474901"),
        "{aids:?}"
    );

    let dir = std::env::temp_dir().join(format!("kagi-scp02-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keyfile = dir.join("new.keys");
    std::fs::write(
        &keyfile,
        "KVN=21\nENC=0123456789ABCDEF0123456789ABCDEF\nMAC=1111111111111111AAAAAAAAAAAAAAAA\nDEK=2222222222222222BBBBBBBBBBBBBBBB\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&keyfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let k = keyfile.to_str().unwrap();
    let v = json(
        &pcsc.kagi(&[
            "gp",
            "put-key",
            "--reader",
            "0",
            "--test-keys",
            "--new-key-file",
            k,
            "--json",
        ]),
        &pcsc,
    );
    assert_eq!(v["kvn"], "21");
    // One 3-byte key check value per key (ENC, MAC, DEK), published as schemas/gp.put-key.
    let kcv = v["kcv"].as_array().unwrap();
    assert_eq!(kcv.len(), 3, "{v}");
    assert!(kcv.iter().all(|k| k.as_str().unwrap().len() == 6), "{v}");
    assert!(support::schema::errors("gp.put-key", &v).is_empty(), "{v}");

    let v = json(
        &pcsc.kagi(&[
            "gp",
            "list",
            "--reader",
            "0",
            "--key-file",
            k,
            "--kvn",
            "21",
            "--json",
        ]),
        &pcsc,
    );
    assert_eq!(v["session"]["kvn"], "21");
    assert_eq!(v["session"]["scp"], "02");

    // The key check names the scheme (none) from one INITIALIZE UPDATE ...
    let v = json(
        &pcsc.kagi(&[
            "gp",
            "info",
            "--reader",
            "0",
            "--key-file",
            k,
            "--kvn",
            "21",
            "--json",
        ]),
        &pcsc,
    );
    assert_eq!(v["key_check"]["scp"], "02");
    assert_eq!(v["key_check"]["kvn"], "21");
    assert_eq!(v["key_check"]["matched"], "none");
    // ... and fails, without authenticating, when nothing matches.
    let o = pcsc.kagi(&[
        "gp",
        "info",
        "--reader",
        "0",
        "--key-file",
        k,
        "--kvn",
        "20",
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("none, emv, visa2"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&dir);
}
