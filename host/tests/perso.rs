//! Batch personalisation: the example profile end to end, and a batch killed (SIGKILL) at
//! many points and resumed each time: no record personalised twice, none skipped, the
//! journal and the report agree with the cards, and no secret appears in any output.

use kagi::channel::CardChannel;
use kagi::perso::journal::{self, Status};
use kagi::perso::{KeySets, Profile};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn batch(verb: &str, input: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kagi"));
    c.args(["perso", verb, "--sim", "4"])
        .arg("--profile")
        .arg(examples().join("perso-member.toml"))
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .arg("--insecure-file-keys")
        .arg(examples().join("keys"));
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
            }
            Some(Status::Rework(_)) => {
                // Reported, not redone: the card holds at most one round of data.
                assert!(stored_records(&card) <= 3, "{id}");
            }
            other => panic!("{id} was skipped or left unfinished: {other:?}"),
        }
    }
    // Each kill strands at most one card per station (4): those go to rework, the rest are done.
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
    let master = std::fs::read_to_string(examples().join("keys/master.keys")).unwrap();
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
