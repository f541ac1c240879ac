//! Batch personalisation: the example profile end to end, and a batch killed (SIGKILL) at
//! many points and resumed each time: no record personalised twice, none skipped, the
//! journal and the report agree with the cards, and no secret appears in any output.

mod support;

use kagi::channel::CardChannel;
use kagi::perso::journal::{self, Status};
use kagi::perso::{KeySets, Profile};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::examples;

fn batch(verb: &str, input: &Path, out: &Path) -> Command {
    let mut c = support::perso_batch(verb, input, out);
    c.args(["--sim", "4"]);
    c
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
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
    // Kill at growing journal lengths (every kill lands somewhere mid-batch, or the batch was
    // already over), resuming each time.
    let mut verb = "run";
    let mut kills = 0;
    for target in [6usize, 19, 33, 52, 70, 95, 121, 150] {
        let mut child = batch(verb, &input, &out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Some(_status) = child.try_wait().unwrap() {
                break;
            }
            if lines(&journal_file) >= target || start.elapsed() > Duration::from_secs(60) {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        verb = "resume";
    }
    let last = batch("resume", &input, &out).output().unwrap();
    assert!(
        last.status.success(),
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
                kagi::perso::run::verify(&mut read_card(&card), &profile, &keys).unwrap();
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
    // Each kill strands at most one card per station (4), and only if it lands in a STORE DATA
    // step: those go to rework, the rest are done.
    eprintln!("{done} of 40 done after {kills} kills");
    assert!(
        40 - done <= 4 * kills,
        "{done} of 40 done after {kills} kills"
    );
    assert!(done > 0);
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
    for line in master.lines().filter(|l| l.contains('=')) {
        let key = line.split('=').nth(1).unwrap();
        assert!(!journal_text.contains(key) && !report.contains(key));
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
    assert!(
        first.status.success(),
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
        assert!(o.status.success(), "{text}");
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
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
