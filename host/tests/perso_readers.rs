//! Batch personalisation on PC/SC reader stations: a private pcscd with two vpcd readers fed
//! from hoppers of factory-fresh simulated cards. The test plays the operator: whenever a
//! station reports a card finished, it swaps in the next card. Every record ends done, each on
//! its own card, the cards answer to their production keys through `kagi gp list`, and a card
//! that is already personalised is refused a record.

#![cfg(feature = "pcsc")]

mod support;

use kagi::perso::journal::{self, Event, Status};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{PrivatePcsc, reader_name};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn start_batch(stack: &PrivatePcsc, input: &Path, out: &Path) -> Child {
    Command::new(support::kagi_bin())
        .args(["perso", "run", "--readers", "all"])
        .arg("--profile")
        .arg(examples().join("perso-member.toml"))
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .arg("--insecure-file-keys")
        .arg(examples().join("keys"))
        .env("PCSCLITE_CSOCK_NAME", &stack.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The journal's events so far (complete lines only).
fn events(path: &Path) -> Vec<Event> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Plays the operator until the batch exits: when a station concludes a card, the operator
/// swaps in the next card from the hopper, unless the cards already waiting in the readers
/// cover the records not yet claimed (so each reader keeps the last card it did).
/// `fresh[i]` says whether reader i starts with a card that is waiting for a record.
fn operate(
    stack: &PrivatePcsc,
    mut child: Child,
    journal: &Path,
    records: usize,
    mut fresh: [bool; 2],
) -> std::process::Output {
    let mut seen = 0;
    let mut claims = 0;
    let start = Instant::now();
    let slot_of = |card: &str| {
        (0..2)
            .find(|&i| card.ends_with(&format!("@{}", reader_name(i))))
            .unwrap_or_else(|| panic!("claim {card} names no test reader"))
    };
    let mut claimed_on: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the batch did not finish:\n{}",
            stack.logs()
        );
        let ev = events(journal);
        for e in ev.iter().skip(seen) {
            match e {
                Event::Claim { record, card } => {
                    let slot = slot_of(card);
                    claimed_on.insert(record.clone(), slot);
                    fresh[slot] = false;
                    claims += 1;
                }
                Event::Done { record }
                | Event::Rework { record, .. }
                | Event::Failed { record, .. } => {
                    let slot = claimed_on[record];
                    let waiting = fresh.iter().filter(|f| **f).count();
                    if records - claims > waiting {
                        stack.control(&format!("next {slot}"));
                        fresh[slot] = true;
                    }
                }
                _ => {}
            }
        }
        seen = ev.len();
        std::thread::sleep(Duration::from_millis(20));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|_| panic!("batch output"))
}

#[test]
fn reader_stations_take_fresh_cards_one_after_another() {
    let stack = PrivatePcsc::start_hopper(2, "gp-test");
    let dir = stack.work.join("perso");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("records.csv");
    let mut csv = String::from("id,member_no,name,points\n");
    for i in 0..5 {
        csv.push_str(&format!("R{i},{},READER MEMBER {i},{}\n", 300000 + i, i));
    }
    std::fs::write(&input, csv).unwrap();
    let out = dir.join("out");
    let journal_file = out.join("journal.jsonl");

    let child = start_batch(&stack, &input, &out);
    let output = operate(&stack, child, &journal_file, 5, [true, true]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{stderr}\n{}",
        String::from_utf8_lossy(&output.stdout)
    );

    // Every record done, each on a card of its own, spread over both readers.
    let state = journal::replay(&journal_file).unwrap();
    let mut cards = HashSet::new();
    let mut readers = HashSet::new();
    for e in events(&journal_file) {
        if let Event::Claim { card, .. } = e {
            assert!(cards.insert(card.clone()), "{card} claimed twice");
            readers.insert(card.split('@').nth(1).unwrap().to_string());
        }
    }
    for i in 0..5 {
        assert_eq!(state.get(&format!("R{i}")), Some(&Status::Done), "{stderr}");
    }
    assert_eq!(cards.len(), 5);
    assert_eq!(readers.len(), 2, "both stations worked: {readers:?}");

    // The last card in reader 0 answers to its diversified production keys, through a
    // separate kagi process, and carries the member applet.
    let list = stack.kagi(&[
        "gp",
        "list",
        "--reader",
        &reader_name(0),
        "--key-file",
        examples().join("keys/master.keys").to_str().unwrap(),
        "--kvn",
        "31",
        "--kdf",
        "kdf3",
        "--json",
    ]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(String::from_utf8_lossy(&list.stdout).contains("F04B4147490101"));

    // A second batch: the personalised cards still in the readers are refused; a fresh card
    // swapped into reader 0 takes the record.
    std::fs::write(
        &input,
        "id,member_no,name,points\nS0,400000,SECOND BATCH,1\n",
    )
    .unwrap();
    let out2 = dir.join("out2");
    let journal2 = out2.join("journal.jsonl");
    let child = start_batch(&stack, &input, &out2);
    let start = Instant::now();
    while events(&journal2).is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Give both stations time to look at their cards; neither may claim one.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !events(&journal2)
            .iter()
            .any(|e| matches!(e, Event::Claim { .. })),
        "a personalised card was given a record"
    );
    stack.control("next 0");
    let output = operate(&stack, child, &journal2, 1, [true, false]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("not factory-fresh"), "{stderr}");
    assert_eq!(
        journal::replay(&journal2).unwrap().get("S0"),
        Some(&Status::Done)
    );
}
