//! Batch personalisation: the example profile end to end, and a batch killed (SIGKILL) at
//! many points and resumed each time: no record personalised twice, none skipped, the
//! journal and the report agree with the cards, and no secret appears in any output.

mod support;

use kagi::channel::CardChannel;
use kagi_perso::journal::{self, Status};
use kagi_perso::{KeySets, Profile};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{examples, kdd_of, kdf3_by_hand};

fn batch(verb: &str, input: &Path, out: &Path) -> Command {
    batch_on(verb, input, out, 4)
}

fn batch_on(verb: &str, input: &Path, out: &Path, stations: usize) -> Command {
    let mut c = support::perso_batch(verb, input, out);
    c.args(["--sim", &stations.to_string()]);
    c
}

/// A finished batch's exit code follows its summary line (the CLI's exit-code table): 0 when
/// nothing failed, needs rework or was a bad record, else 3 (done with failures).
fn assert_batch_exit(o: &std::process::Output) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let clean = text.contains(" 0 rework, 0 failed, 0 bad records");
    assert_eq!(o.status.code(), Some(if clean { 0 } else { 3 }), "{text}");
}

fn profile_and_keys() -> (Profile, KeySets) {
    let p = Profile::parse(&std::fs::read_to_string(examples().join("perso-member.toml")).unwrap())
        .unwrap();
    let k = KeySets::from_insecure_dir(&examples().join("keys"), &p).unwrap();
    (p, k)
}

fn read_card(path: &Path) -> CardChannel<applet_sim::SimCard> {
    let mut card = applet_sim::SimCard::from_image(path, None).unwrap();
    card.power_on();
    CardChannel::new(card)
}

/// The member applet's record count on a card (how many STORE DATA blocks it took).
fn stored_records(path: &Path) -> u8 {
    let card = read_card(path);
    card.transport()
        .store()
        .get("app/F04B4147490101/count")
        .map(|v| v[0])
        .unwrap_or(0)
}

#[test]
fn killed_many_times_and_resumed() {
    let dir = std::env::temp_dir().join(format!("kagi-perso-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("records.csv");
    let mut csv = String::from("id,member_no,name,points\n");
    for i in 0..40 {
        csv.push_str(&format!(
            "K{i:03},{},TEST MEMBER {i},{}\n",
            200000 + i,
            i * 10
        ));
    }
    csv.push_str("K999,,no number,5\n");
    std::fs::write(&input, csv).unwrap();
    let out = dir.join("out");
    let journal_file = out.join("journal.jsonl");
    // Each run is frozen by the journal's test hook right after a chosen event of a record in
    // progress (one station, so the frozen event is the journal's last line), then SIGKILLed
    // and resumed. Kills right after `begin:store` strand their card (the STORE DATA may or
    // may not have reached it): exactly those go to rework; every other kill is continued.
    let kill_points = [
        (1, "step:open"),
        (2, "begin:store"),
        (3, "step:domain:"),
        (1, "claim"),
        (4, "step:domain-keys:"),
        (2, "step:put-key"),
        (5, "begin:store"),
        (2, "step:final-state"),
        (3, "step:install"),
    ];
    let mut verb = "run";
    let mut kills = 0;
    let mut stranded = std::collections::BTreeSet::new();
    for (n, prefix) in kill_points {
        let before = journal::events(&journal_file).unwrap().len();
        let mut child = batch_on(verb, &input, &out, 1)
            .env(journal::FREEZE_ENV, format!("{n}:{prefix}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the n-th matching event of this run.
        let start = Instant::now();
        let frozen = loop {
            let ev = journal::events(&journal_file).unwrap();
            let this_run = &ev[before.min(ev.len())..];
            let matching: Vec<_> = this_run
                .iter()
                .filter(|e| journal::label(e).starts_with(prefix))
                .collect();
            if matching.len() >= n {
                break matching[n - 1].clone();
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "{verb} ended before its {n}th {prefix} event: nothing left to interrupt"
            );
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "no {n}th {prefix} event"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        // The kill landed exactly there: the frozen event is the last in the journal, and
        // its record is in progress.
        let ev = journal::events(&journal_file).unwrap();
        assert_eq!(ev.last(), Some(&frozen), "events after the freeze point");
        let record = match &frozen {
            journal::Event::Claim { record, .. }
            | journal::Event::Begin { record, .. }
            | journal::Event::Step { record, .. } => record.clone(),
            other => panic!("not an event of a record in progress: {other:?}"),
        };
        let status = journal::replay(&journal_file).unwrap()[&record].clone();
        assert!(
            matches!(status, Status::InProgress { .. }),
            "{record} not in progress at the kill: {status:?}"
        );
        if prefix == "begin:store" {
            stranded.insert(record);
        }
        verb = "resume";
    }
    assert_eq!(kills, kill_points.len());
    let last = batch("resume", &input, &out).output().unwrap();
    // A bad record (K999) and the stranded cards: done with failures.
    assert_batch_exit(&last);
    assert_eq!(
        last.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );

    let state = journal::replay(&journal_file).unwrap();
    let (profile, keys) = profile_and_keys();
    let mut done = 0;
    for i in 0..40 {
        let id = format!("K{i:03}");
        let card = out.join("cards").join(format!("{id}.img"));
        match state.get(&id) {
            Some(Status::Done) => {
                done += 1;
                // The card agrees: production keys work, transport keys do not, and the
                // member data went on exactly once.
                kagi_perso::run::verify(&mut read_card(&card), &profile, &keys).unwrap();
                assert_eq!(stored_records(&card), 3, "{id} personalised more than once");
                if done == 1 {
                    // The operator's security domain answers to the operator's keys through
                    // the CLI, as the operator would open it.
                    let list = Command::new(env!("CARGO_BIN_EXE_kagi"))
                        .args(["gp", "list", "--sim", "--sim-image"])
                        .arg(&card)
                        .args(["--sd", "A00000015153505001", "--kvn", "31", "--kdf", "kdf3"])
                        .arg("--key-file")
                        .arg(examples().join("keys/provider.keys"))
                        .output()
                        .unwrap();
                    assert!(
                        list.status.success(),
                        "{}",
                        String::from_utf8_lossy(&list.stderr)
                    );
                }
            }
            Some(Status::Rework(why)) => {
                // Only a step whose effect cannot be read back (the member data) strands a
                // card; loads, installs and key changes are checked on the card and continued.
                assert!(why.contains("interrupted during store:"), "{id}: {why}");
                // Reported, not redone: the card holds at most one round of data.
                assert!(stored_records(&card) <= 3, "{id}");
            }
            other => panic!("{id} was skipped or left unfinished: {other:?}"),
        }
    }
    // Exactly the cards killed right after their STORE DATA began are stranded (one per such
    // kill, never more than the kills), every other record is done.
    let rework: std::collections::BTreeSet<String> = (0..40)
        .map(|i| format!("K{i:03}"))
        .filter(|id| matches!(state.get(id), Some(Status::Rework(_))))
        .collect();
    eprintln!("{done} of 40 done after {kills} kills, rework {rework:?}");
    assert_eq!(rework, stranded);
    assert!(rework.len() <= kills);
    assert_eq!(done, 40 - stranded.len());
    // The report says the same as the journal.
    let report = std::fs::read_to_string(out.join("report.csv")).unwrap();
    assert_eq!(
        report.lines().filter(|l| l.contains(",done,")).count(),
        done
    );
    assert!(report.contains("K999,") || report.contains("bad-record"));
    // No key material in any output: journal, report, card list.
    let master = std::fs::read_to_string(examples().join("keys/master.keys")).unwrap()
        + &std::fs::read_to_string(examples().join("keys/provider.keys")).unwrap();
    let journal_text = std::fs::read_to_string(&journal_file).unwrap();
    let mut secrets = Vec::new();
    for line in master.lines().filter(|l| l.contains('=')) {
        secrets.push(line.split('=').nth(1).unwrap().trim().to_uppercase());
    }
    // And the per-card keys diversified from them, on every done card: the ISD's production
    // keys (master.keys) and the provider's security domain keys (provider.keys, KVN 31).
    let keys_of = |file: &str| -> Vec<String> {
        std::fs::read_to_string(examples().join(file))
            .unwrap()
            .lines()
            .filter(|l| l.contains('='))
            .map(|l| l.split('=').nth(1).unwrap().to_string())
            .collect()
    };
    let (isd_masters, sd_masters) = (keys_of("keys/master.keys"), keys_of("keys/provider.keys"));
    let provider_sd = hex::decode("A00000015153505001").unwrap();
    let mut per_card = 0;
    for i in 0..40 {
        let id = format!("K{i:03}");
        if state.get(&id) != Some(&Status::Done) {
            continue;
        }
        let card = out.join("cards").join(format!("{id}.img"));
        let isd_kdd = kdd_of(&card, None, 0);
        let sd_kdd = kdd_of(&card, Some(&provider_sd), 0x31);
        for (masters, kdd) in [(&isd_masters, &isd_kdd), (&sd_masters, &sd_kdd)] {
            for (k, master) in masters.iter().enumerate() {
                let derived = kdf3_by_hand(master, kdd);
                secrets.push(derived[k].clone());
                per_card += 1;
            }
        }
        // The hand-derived keys are the card's keys (so the grep looks for the right bytes):
        // both domains open a secure channel with them, no diversification on the host.
        if per_card == 6 {
            for (masters, kdd, sd, kvn) in [
                (&isd_masters, &isd_kdd, None, 0),
                (&sd_masters, &sd_kdd, Some(provider_sd.as_slice()), 0x31),
            ] {
                let k: Vec<_> = (0..3)
                    .map(|i| {
                        card_wire::scp03::AesKey::from_hex(&kdf3_by_hand(&masters[i], kdd)[i])
                            .unwrap()
                    })
                    .collect();
                let keys = card_wire::scp03::StaticKeys::new(
                    kvn,
                    k[0].clone(),
                    k[1].clone(),
                    k[2].clone(),
                )
                .unwrap();
                let mut ch = read_card(&card);
                let sd_aid = kagi::gp::select_domain(&mut ch, sd).unwrap().aid;
                let opts = card_wire::scp03::HostOptions {
                    kvn,
                    ..card_wire::scp03::HostOptions::default()
                };
                kagi::secure::SecureChannel::open(&mut ch, keys, opts, Some(&sd_aid))
                    .unwrap_or_else(|e| panic!("hand-derived keys of {id}: {e}"));
            }
        }
    }
    assert!(per_card >= 6 * (40 - stranded.len()));
    let outputs = [&journal_text, &report];
    for key in &secrets {
        for text in outputs {
            assert!(
                !text.to_uppercase().contains(&key[..16]),
                "key material in an output"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_finished_batch_is_not_run_again_by_mistake() {
    let dir = std::env::temp_dir().join(format!("kagi-perso-twice-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("out");
    let input = examples().join("member-records.csv");
    let first = batch("run", &input, &out).output().unwrap();
    // The example records hold two bad ones on purpose: done with failures (exit 3).
    assert_eq!(
        first.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let text = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(
        text.contains("10 done") && text.contains("2 bad records"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&first.stderr).contains("insecure file key store"));
    // `run` again on the same directory refuses; `resume` has nothing left to do.
    let again = batch("run", &input, &out).output().unwrap();
    assert!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("kagi perso resume")
    );
    let resumed = batch("resume", &input, &out).output().unwrap();
    assert!(
        String::from_utf8_lossy(&resumed.stdout).contains("0 cards this run"),
        "{}",
        String::from_utf8_lossy(&resumed.stdout)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The JPKI example profile end to end: keys generated on the cards, certificates from the
/// test CA, PINs only in the encrypted PIN mailer; the cards pass `kagi gp list`, `kagi jpki`
/// and `kagi eligibility read`; no PIN appears in the journal, report, logs or output.
#[test]
fn jpki_profile_end_to_end_without_secrets_in_any_output() {
    let dir = std::env::temp_dir().join(format!("kagi-perso-jpki-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    for f in [
        "perso-jpki.toml",
        "jpki-records.csv",
        "keys/transport.keys",
        "keys/master.keys",
        "keys/pin-mailer.pub.pem",
        "keys/pin-mailer.key.pem",
    ] {
        std::fs::copy(examples().join(f), dir.join(f)).unwrap();
    }
    let out = dir.join("out");
    let kagi = env!("CARGO_BIN_EXE_kagi");
    let run = Command::new(kagi)
        .args(["perso", "run", "--sim", "2", "--card-logs"])
        .arg("--profile")
        .arg(dir.join("perso-jpki.toml"))
        .arg("--input")
        .arg(dir.join("jpki-records.csv"))
        .arg("--out")
        .arg(&out)
        .arg("--insecure-file-keys")
        .arg(dir.join("keys"))
        .output()
        .unwrap();
    let run_out = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        run.status.success() && run_out.contains("4 done"),
        "{run_out}"
    );
    // The mailer house opens the PIN mailer.
    let mailer = Command::new(kagi)
        .args(["perso", "open-mailer"])
        .arg("--key")
        .arg(dir.join("keys/pin-mailer.key.pem"))
        .arg("--mailer")
        .arg(out.join("pin-mailer.enc"))
        .output()
        .unwrap();
    let mailer = String::from_utf8_lossy(&mailer.stdout).to_string();
    assert_eq!(mailer.lines().count(), 4, "{mailer}");
    // The same letters as one JSON document (schemas/perso.open-mailer.schema.json).
    let as_json = Command::new(kagi)
        .args(["--json", "perso", "open-mailer"])
        .arg("--key")
        .arg(dir.join("keys/pin-mailer.key.pem"))
        .arg("--mailer")
        .arg(out.join("pin-mailer.enc"))
        .output()
        .unwrap();
    let doc = support::schema::document("perso.open-mailer", &as_json.stdout);
    let letters = doc["letters"].as_array().unwrap();
    assert_eq!(letters.len(), 4, "{doc}");
    for (l, line) in letters.iter().zip(mailer.lines()) {
        let (id, text) = line.split_once(',').unwrap();
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!((l["record"].as_str(), &l["letter"]), (Some(id), &v));
    }
    let mut outputs = run_out.clone();
    for f in ["journal.jsonl", "report.csv", "report.json"] {
        outputs.push_str(&std::fs::read_to_string(out.join(f)).unwrap());
    }
    let mut logs = String::new();
    for e in std::fs::read_dir(out.join("logs")).unwrap() {
        logs.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    assert!(
        logs.contains("<redacted"),
        "PIN-carrying commands are redacted in the card logs"
    );
    let mut iccids = std::collections::BTreeSet::new();
    for line in mailer.lines() {
        let (id, json) = line.split_once(',').unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let sign_pin = v["sign_pin"].as_str().unwrap();
        let auth_pin = v["auth_pin"].as_str().unwrap();
        // The signature password is distinctive: in clear and as APDU hex, it is nowhere.
        for needle in [sign_pin.to_string(), hex::encode_upper(sign_pin)] {
            assert!(
                !outputs.contains(&needle) && !logs.contains(&needle),
                "{id}: signature password found in an output"
            );
        }
        assert!(
            !logs.contains(&format!("04 {}", hex::encode_upper(auth_pin))),
            "{id}: a VERIFY with the PIN in a log"
        );
        // The card works with what the mailer says, through the CLI as a holder would.
        let card = out.join("cards").join(format!("{id}.img"));
        let pin_file = dir.join(format!("{id}.pin"));
        std::fs::write(&pin_file, auth_pin).unwrap();
        let sim = ["--sim", "--sim-image", card.to_str().unwrap()];
        let jpki_info = Command::new(kagi)
            .args(["jpki", "info", "--json"])
            .args(sim)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&jpki_info.stdout).unwrap();
        assert_eq!(info["auth_pin_tries"], 3);
        let msg = dir.join("m.txt");
        std::fs::write(&msg, b"hello").unwrap();
        let sign = Command::new(kagi)
            .args([
                "jpki",
                "sign",
                "--pin-file",
                pin_file.to_str().unwrap(),
                "-i",
                msg.to_str().unwrap(),
                "-o",
                dir.join("s").to_str().unwrap(),
            ])
            .args(sim)
            .output()
            .unwrap();
        assert!(
            sign.status.success(),
            "{}",
            String::from_utf8_lossy(&sign.stderr)
        );
        let ca = dir.join("pki/auth-ca.crt.pem");
        let el = Command::new(kagi)
            .args([
                "eligibility",
                "read",
                "--json",
                "--ca",
                ca.to_str().unwrap(),
            ])
            .args(sim)
            .output()
            .unwrap();
        let el: serde_json::Value = serde_json::from_slice(&el.stdout).unwrap();
        assert_eq!(el["verdict"], "eligible");
        let list = Command::new(kagi)
            .args([
                "gp",
                "list",
                "--json",
                "--kvn",
                "31",
                "--kdf",
                "kdf3",
                "--key-file",
                dir.join("keys/master.keys").to_str().unwrap(),
            ])
            .args(sim)
            .output()
            .unwrap();
        let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        let aids: Vec<&str> = list["registry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["aid"].as_str().unwrap())
            .collect();
        assert!(
            aids.contains(&"D392F000260100000001") && aids.contains(&"D3921000310001010408"),
            "{aids:?}"
        );
        // The profile says card = "uicc": each card is a SIM with its own valid ICCID.
        let info = Command::new(kagi)
            .args(["gp", "info", "--json"])
            .args(sim)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["card_kind"], "uicc");
        let iccid = info["iccid"].as_str().unwrap().to_string();
        assert!(card_wire::uicc::Iccid::new(&iccid).is_ok(), "{iccid}");
        assert!(iccids.insert(iccid), "two cards with one ICCID");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The JPKI profile with an external CA reached through the file exchange: the batch writes
/// one request per key, signed on the card (openssl checks them), and leaves the cards in
/// progress while the CA is silent; the CA (`kagi ca exchange`) answers; `resume` installs
/// the certificates. A certificate for another key is refused, not written to the card.
#[test]
fn jpki_with_an_external_ca_through_the_file_exchange() {
    let dir = std::env::temp_dir().join(format!("kagi-perso-extca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    for f in [
        "jpki-records.csv",
        "keys/transport.keys",
        "keys/master.keys",
        "keys/pin-mailer.pub.pem",
        "keys/pin-mailer.key.pem",
    ] {
        std::fs::copy(examples().join(f), dir.join(f)).unwrap();
    }
    let profile = std::fs::read_to_string(examples().join("perso-jpki.toml"))
        .unwrap()
        .replace(
            "ca_dir = \"pki\"",
            "ca = \"external\"\nca_dir = \"ca-certs\"\nexchange_dir = \"exchange\"\nca_timeout_seconds = 1",
        );
    assert!(profile.contains("external"));
    std::fs::write(dir.join("perso-ext.toml"), profile).unwrap();
    let kagi = env!("CARGO_BIN_EXE_kagi");
    // The external CA: its keys stay in ext-ca; the bureau only has its certificates.
    let init = Command::new(kagi)
        .args(["ca", "init", "--dir"])
        .arg(dir.join("ext-ca"))
        .output()
        .unwrap();
    assert!(init.status.success());
    std::fs::create_dir_all(dir.join("ca-certs")).unwrap();
    for c in ["auth-ca.crt.pem", "sign-ca.crt.pem"] {
        std::fs::copy(dir.join("ext-ca").join(c), dir.join("ca-certs").join(c)).unwrap();
    }
    let out = dir.join("out");
    let batch = |verb: &str| {
        let o = Command::new(kagi)
            .args(["perso", verb, "--sim", "2", "--profile"])
            .arg(dir.join("perso-ext.toml"))
            .arg("--input")
            .arg(dir.join("jpki-records.csv"))
            .arg("--out")
            .arg(&out)
            .arg("--insecure-file-keys")
            .arg(dir.join("keys"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_batch_exit(&o);
        text
    };
    // 1. No CA answers: every card waits, with its two requests written.
    let first = batch("run");
    assert!(
        first.contains("0 done") && first.contains("4 card(s) still in progress"),
        "{first}"
    );
    let requests = dir.join("exchange/requests");
    for id in ["J0001", "J0002", "J0003", "J0004"] {
        for key in ["auth", "sign"] {
            let csr = requests.join(format!("{id}.{key}.csr.pem"));
            // openssl, independently: the request's signature verifies with its key.
            let v = Command::new("openssl")
                .args(["req", "-verify", "-noout", "-in"])
                .arg(&csr)
                .output()
                .unwrap();
            assert!(
                v.status.success(),
                "{}: {}",
                csr.display(),
                String::from_utf8_lossy(&v.stderr)
            );
        }
    }
    let report = std::fs::read_to_string(out.join("report.csv")).unwrap();
    assert_eq!(report.matches(",in-progress,").count(), 4, "{report}");
    // 2. The CA answers every request.
    let ex = Command::new(kagi)
        .args(["ca", "exchange", "--dir"])
        .arg(dir.join("ext-ca"))
        .arg("--exchange")
        .arg(dir.join("exchange"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ex.stdout).contains("issued 8"),
        "{}",
        String::from_utf8_lossy(&ex.stderr)
    );
    // ... but J0004's authentication certificate is swapped for one certifying another key.
    let other = test_pki::generate_rsa_key().unwrap();
    let other_pub = dir.join("other.pub.der");
    {
        use rsa::pkcs8::EncodePublicKey;
        let spki = other.to_public_key().to_public_key_der().unwrap();
        std::fs::write(&other_pub, spki.as_bytes()).unwrap();
    }
    let swapped = dir.join("exchange/issued/J0004.auth.crt.pem");
    let issue = Command::new(kagi)
        .args(["ca", "issue", "--kind", "auth", "--dir"])
        .arg(dir.join("ext-ca"))
        .arg("--public-key")
        .arg(&other_pub)
        .arg("-o")
        .arg(&swapped)
        .output()
        .unwrap();
    assert!(issue.status.success());
    // 3. Resume: the certificates go onto the cards, the swapped one is refused.
    let second = batch("resume");
    assert!(
        second.contains("3 done") && second.contains("1 failed"),
        "{second}"
    );
    let report = std::fs::read_to_string(out.join("report.csv")).unwrap();
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("J0004,failed,") && l.contains("another public key")),
        "{report}"
    );
    let mailer = Command::new(kagi)
        .args(["perso", "open-mailer", "--key"])
        .arg(dir.join("keys/pin-mailer.key.pem"))
        .arg("--mailer")
        .arg(out.join("pin-mailer.enc"))
        .output()
        .unwrap();
    let mailer = String::from_utf8_lossy(&mailer.stdout).to_string();
    for id in ["J0001", "J0002", "J0003"] {
        let card = out.join("cards").join(format!("{id}.img"));
        let sim = ["--sim", "--sim-image", card.to_str().unwrap()];
        let el = Command::new(kagi)
            .args(["eligibility", "read", "--json", "--ca"])
            .arg(dir.join("ca-certs/auth-ca.crt.pem"))
            .args(sim)
            .output()
            .unwrap();
        let el: serde_json::Value = serde_json::from_slice(&el.stdout).unwrap();
        assert_eq!(el["verdict"], "eligible", "{id}: {el}");
        assert_eq!(el["subject"], format!("CN=KAGI{id},C=JP"));
        // The mailed PIN signs with the card's key; the signature checks against the
        // certificate the external CA issued.
        let line = mailer.lines().find(|l| l.starts_with(id)).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.split_once(',').unwrap().1).unwrap();
        let pin_file = dir.join(format!("{id}.pin"));
        std::fs::write(&pin_file, v["auth_pin"].as_str().unwrap()).unwrap();
        let msg = dir.join("m.txt");
        std::fs::write(&msg, b"external CA").unwrap();
        let sign = Command::new(kagi)
            .args(["jpki", "sign", "--pin-file"])
            .arg(&pin_file)
            .arg("-i")
            .arg(&msg)
            .arg("-o")
            .arg(dir.join("s"))
            .args(sim)
            .output()
            .unwrap();
        assert!(
            sign.status.success(),
            "{}",
            String::from_utf8_lossy(&sign.stderr)
        );
        // Checked by openssl, not kagi: the card's certificate chains to the external CA,
        // and the signature verifies under its public key.
        let cert_der = dir.join(format!("{id}.crt.der"));
        let read = Command::new(kagi)
            .args(["jpki", "read-cert", "--which", "auth", "-o"])
            .arg(&cert_der)
            .args(sim)
            .output()
            .unwrap();
        assert!(
            read.status.success(),
            "{}",
            String::from_utf8_lossy(&read.stderr)
        );
        let openssl = |args: &[&str]| {
            let o = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl is missing: run scripts/setup.sh");
            assert!(
                o.status.success(),
                "openssl {args:?}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).to_string()
        };
        let p = |f: &str| dir.join(f).display().to_string();
        let cert_pem = p(&format!("{id}.crt.pem"));
        let cert_der = cert_der.display().to_string();
        openssl(&[
            "x509", "-inform", "DER", "-in", &cert_der, "-out", &cert_pem,
        ]);
        let verified = openssl(&[
            "verify",
            "-CAfile",
            &p("ca-certs/auth-ca.crt.pem"),
            &cert_pem,
        ]);
        assert!(verified.contains(": OK"), "{verified}");
        let pubkey = openssl(&["x509", "-in", &cert_pem, "-pubkey", "-noout"]);
        std::fs::write(dir.join("pub.pem"), pubkey).unwrap();
        let checked = openssl(&[
            "dgst",
            "-sha256",
            "-verify",
            &p("pub.pem"),
            "-signature",
            &p("s"),
            &p("m.txt"),
        ]);
        assert!(checked.contains("Verified OK"), "{checked}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
