//! Batch personalisation on PC/SC reader stations: a private pcscd with two vpcd readers fed
//! from hoppers of factory-fresh simulated cards. The test plays the operator: whenever a
//! station reports a card finished, it swaps in the next card. Every record ends done, each on
//! its own card, the cards answer to their production keys through `kagi gp list`, and a card
//! that is already personalised is refused a record.

#![cfg(feature = "pcsc")]

mod support;

use kagi_perso::journal::{self, Event, Status};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use support::{PrivatePcsc, examples, reader_name};

fn start_batch(stack: &PrivatePcsc, input: &Path, out: &Path) -> Child {
    start(stack, "run", input, out)
}

fn start(stack: &PrivatePcsc, verb: &str, input: &Path, out: &Path) -> Child {
    command(stack, verb, input, out).spawn().unwrap()
}

/// The batch command, with a feeder command that logs each station's outcome to
/// [`feeder_log`] (as an automatic encoder would be told to eject the card).
fn command(stack: &PrivatePcsc, verb: &str, input: &Path, out: &Path) -> std::process::Command {
    let mut c = support::perso_batch(verb, input, out);
    c.args(["--readers", "all", "--feeder-cmd"])
        .arg(feeder_cmd(&feeder_log(out)))
        .env("PCSCLITE_CSOCK_NAME", &stack.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Whether the batch whose stderr goes to `log` says the journal's test hook holds it.
fn is_frozen(log: &Path) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(&format!(
            "{}: journal frozen after event 1",
            journal::FREEZE_ENV
        ))
}

/// Where the feeder command of a batch writing to `out` logs.
fn feeder_log(out: &Path) -> std::path::PathBuf {
    out.with_extension("feeder.log")
}

fn feeder_cmd(log: &Path) -> String {
    format!(
        "printf '%s|%s|%s\\n' \"$KAGI_READER\" \"$KAGI_OUTCOME\" \"$KAGI_RECORD\" >> '{}'",
        log.display()
    )
}

/// The feeder command's calls so far: (reader, outcome, record).
fn feeder_calls(log: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f.len(), 3, "feeder log line {l:?}");
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

/// Waits until the feeder command was called with `outcome` for both readers, while the
/// batch runs (a station reports every card it refuses).
fn wait_for_both_readers(child: &mut Child, log: &Path, outcome: &str) {
    let start = Instant::now();
    loop {
        let calls = feeder_calls(log);
        if (0..2).all(|i| {
            calls
                .iter()
                .any(|(r, o, _)| *r == reader_name(i) && o == outcome)
        }) {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the batch ended before both readers reported {outcome}: {calls:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no {outcome} from both readers: {calls:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The journal's events so far (complete lines only).
fn events(path: &Path) -> Vec<Event> {
    journal::events(path).unwrap()
}

/// The operator at the two readers: when a station concludes a card, the operator swaps in
/// the next card from the hopper, unless the cards already waiting in the readers cover the
/// records not yet claimed (so each reader keeps the last card it did).
struct Operator {
    /// Records the batch has in all.
    records: usize,
    /// Whether reader i holds a card waiting for a record.
    fresh: [bool; 2],
    /// Journal events already acted on.
    seen: usize,
    claims: usize,
    claimed_on: BTreeMap<String, usize>,
    /// Restart pcscd (every reader goes away and comes back) at this claim, while its card
    /// is being personalised.
    restart_after: Option<usize>,
}

impl Operator {
    fn new(records: usize, fresh: [bool; 2]) -> Operator {
        Operator {
            records,
            fresh,
            seen: 0,
            claims: 0,
            claimed_on: BTreeMap::new(),
            restart_after: None,
        }
    }

    /// Acts on new journal events; returns how many events the journal holds.
    fn step(&mut self, stack: &PrivatePcsc, journal: &Path) -> usize {
        let ev = events(journal);
        for e in ev.iter().skip(self.seen) {
            match e {
                Event::Claim { record, card } => {
                    let slot = (0..2)
                        .find(|&i| card.ends_with(&format!("@{}", reader_name(i))))
                        .unwrap_or_else(|| panic!("claim {card} names no test reader"));
                    self.claimed_on.insert(record.clone(), slot);
                    self.fresh[slot] = false;
                    self.claims += 1;
                    if self.restart_after == Some(self.claims) {
                        stack.restart_pcscd();
                    }
                }
                Event::Done { record }
                | Event::Rework { record, .. }
                | Event::Failed { record, .. } => {
                    let slot = self.claimed_on[record];
                    let waiting = self.fresh.iter().filter(|f| **f).count();
                    if self.records - self.claims > waiting {
                        stack.control(&format!("next {slot}"));
                        self.fresh[slot] = true;
                    }
                }
                _ => {}
            }
        }
        self.seen = ev.len();
        ev.len()
    }

    /// Operates until the batch exits, or kills it once the journal holds an event that
    /// `kill_at` picks.
    fn run(
        &mut self,
        stack: &PrivatePcsc,
        mut child: Child,
        journal: &Path,
        kill_at: Option<&dyn Fn(&Event) -> bool>,
    ) -> std::process::Output {
        let start = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the batch did not finish:\n{}",
                stack.logs()
            );
            self.step(stack, journal);
            if kill_at.is_some_and(|k| events(journal).iter().any(k)) {
                child.kill().unwrap();
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        child
            .wait_with_output()
            .unwrap_or_else(|_| panic!("batch output"))
    }
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
    let output = Operator::new(5, [true, true]).run(&stack, child, &journal_file, None);
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
    // `--feeder-cmd` ran after every card, on the station that did it, with its outcome and
    // record: five times "done", once per record, each on the reader that claimed it.
    let mut claimed_at = BTreeMap::new();
    for e in events(&journal_file) {
        if let Event::Claim { record, card } = e {
            claimed_at.insert(record, card.split('@').nth(1).unwrap().to_string());
        }
    }
    let mut fed: Vec<(String, String, String)> = feeder_calls(&feeder_log(&out))
        .into_iter()
        .filter(|(_, outcome, _)| outcome != "refused")
        .collect();
    fed.sort_by(|a, b| a.2.cmp(&b.2));
    let expected: Vec<(String, String, String)> = claimed_at
        .iter()
        .map(|(record, reader)| (reader.clone(), "done".to_string(), record.clone()))
        .collect();
    assert_eq!(fed, expected);
    // The report names each record's card and reader, as the journal claimed them.
    let report = std::fs::read_to_string(out.join("report.csv")).unwrap();
    for card in &cards {
        assert!(
            report.contains(&format!(",done,{card},")),
            "{card}\n{report}"
        );
    }

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
    let mut child = start_batch(&stack, &input, &out2);
    // Both stations have looked at their cards and refused them (the feeder command was told
    // so); neither claimed one.
    wait_for_both_readers(&mut child, &feeder_log(&out2), "refused");
    assert!(
        !events(&journal2)
            .iter()
            .any(|e| matches!(e, Event::Claim { .. })),
        "a personalised card was given a record"
    );
    stack.control("next 0");
    let output = Operator::new(1, [true, false]).run(&stack, child, &journal2, None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("not factory-fresh"), "{stderr}");
    assert_eq!(
        journal::replay(&journal2).unwrap().get("S0"),
        Some(&Status::Done)
    );
}

/// Runs a batch of `records` records (in `input`) on the two readers, frozen by the journal's
/// test hook right after the first card's first step (mid-way, before its STORE DATA) and
/// killed once the hook says it holds the batch (its line on stderr), not on a guess. Returns
/// the operator (to go on) and the batch's output folder.
fn killed_after_first_step(
    stack: &PrivatePcsc,
    dir: &Path,
    input: &Path,
    records: usize,
) -> (Operator, std::path::PathBuf) {
    let out = dir.join("out");
    let mut operator = Operator::new(records, [true, true]);
    let frozen_log = dir.join("frozen.stderr");
    let child = command(stack, "run", input, &out)
        .env(journal::FREEZE_ENV, "1:step:open")
        .stderr(std::fs::File::create(&frozen_log).unwrap())
        .spawn()
        .unwrap();
    let frozen = |_: &Event| is_frozen(&frozen_log);
    let killed = operator.run(stack, child, &out.join("journal.jsonl"), Some(&frozen));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed.status),
        Some(9),
        "the batch was not held by the freeze hook (it ended by itself): {}",
        std::fs::read_to_string(&frozen_log).unwrap_or_default()
    );
    (operator, out)
}

#[test]
fn a_reader_batch_killed_mid_card_continues_on_the_same_card() {
    let stack = PrivatePcsc::start_hopper(2, "gp-test");
    let dir = stack.work.join("perso");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("records.csv");
    let mut csv = String::from("id,member_no,name,points\n");
    for i in 0..4 {
        csv.push_str(&format!("K{i},{},KILLED MEMBER {i},{i}\n", 310000 + i));
    }
    std::fs::write(&input, csv).unwrap();
    let (mut operator, out) = killed_after_first_step(&stack, &dir, &input, 4);
    let journal_file = out.join("journal.jsonl");
    let first_open = events(&journal_file)
        .into_iter()
        .find_map(|e| match e {
            Event::Step { record, step, .. } if step == "open" => Some(record),
            _ => None,
        })
        .unwrap();
    let before = journal::replay(&journal_file).unwrap();
    let caught: Vec<String> = before
        .iter()
        .filter(|(_, s)| matches!(s, Status::InProgress { .. }))
        .map(|(r, _)| r.clone())
        .collect();
    assert!(!caught.is_empty(), "the kill caught no card mid-way");
    // Those caught before their STORE DATA began must be completed, on the same card.
    let before_store: Vec<String> = caught
        .iter()
        .filter(|r| {
            matches!(&before[*r], Status::InProgress { steps, begun, .. }
                if begun.is_empty() && !steps.iter().any(|s| s.starts_with("store:")))
        })
        .cloned()
        .collect();
    assert!(
        before_store.contains(&first_open),
        "{first_open} was frozen after its first step, yet not caught before its data: {before:?}"
    );
    let output = operator.run(
        &stack,
        start(&stack, "resume", &input, &out),
        &journal_file,
        None,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");

    let state = journal::replay(&journal_file).unwrap();
    let mut claims: BTreeMap<String, usize> = BTreeMap::new();
    for e in events(&journal_file) {
        if let Event::Claim { record, .. } = e {
            *claims.entry(record).or_default() += 1;
        }
    }
    for i in 0..4 {
        let id = format!("K{i}");
        // Claimed once: the card caught mid-way was recognised by its CIN and continued.
        assert_eq!(claims.get(&id), Some(&1), "{id} claimed again: {stderr}");
        match &state[&id] {
            Status::Done => {}
            // Only an interrupted STORE DATA cannot be continued.
            Status::Rework(why) => assert!(why.contains("store:"), "{id}: {why}"),
            other => panic!("{id}: {other:?}\n{stderr}"),
        }
    }
    for r in &before_store {
        assert_eq!(
            state[r],
            Status::Done,
            "{r} was caught before its data and not completed"
        );
    }
}

/// A batch whose only record is caught mid-way on a reader: the resume has no fresh record
/// left, yet its stations wait for that card (still in its reader) and finish it, instead of
/// ending at once with the card in progress.
#[test]
fn a_resume_whose_only_work_is_a_card_caught_mid_way_finishes_it() {
    let stack = PrivatePcsc::start_hopper(2, "gp-test");
    let dir = stack.work.join("perso-only");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("records.csv");
    std::fs::write(
        &input,
        "id,member_no,name,points\nW0,320000,WAITING MEMBER,5\n",
    )
    .unwrap();
    let (mut operator, out) = killed_after_first_step(&stack, &dir, &input, 1);
    let journal_file = out.join("journal.jsonl");
    assert!(
        matches!(
            journal::replay(&journal_file).unwrap()["W0"],
            Status::InProgress { .. }
        ),
        "the kill did not catch W0 mid-way"
    );
    let output = operator.run(
        &stack,
        start(&stack, "resume", &input, &out),
        &journal_file,
        None,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        journal::replay(&journal_file).unwrap()["W0"],
        Status::Done,
        "{stderr}"
    );
}

/// A UICC profile on a line fed with SIMs: cards are tracked by their ICCID, and the same
/// SIMs are refused by a smart-card profile as the wrong card stock, before any claim.
#[test]
fn a_uicc_profile_tracks_sims_by_iccid_and_other_stock_is_refused() {
    let stack = PrivatePcsc::start_hopper(2, "uicc");
    let dir = stack.work.join("perso");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("records.csv");
    let mut csv = String::from("id,member_no,name,points\n");
    for i in 0..3 {
        csv.push_str(&format!("U{i},{},SIM MEMBER {i},{i}\n", 320000 + i));
    }
    std::fs::write(&input, csv).unwrap();

    // The smart-card member profile refuses the SIMs in both readers.
    let wrong = dir.join("wrong");
    let mut child = start_batch(&stack, &input, &wrong);
    // Both stations have looked at their SIM and refused it.
    wait_for_both_readers(&mut child, &feeder_log(&wrong), "refused");
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("wrong card stock"), "{stderr}");
    assert!(
        !events(&wrong.join("journal.jsonl"))
            .iter()
            .any(|e| matches!(e, Event::Claim { .. })),
        "a SIM was claimed by a smart-card profile"
    );

    // The same profile as card = "uicc" takes them.
    let member = std::fs::read_to_string(examples().join("perso-member.toml")).unwrap();
    let sim_profile = dir.join("perso-sim.toml");
    std::fs::write(
        &sim_profile,
        member.replace("card = \"smartcard\"", "card = \"uicc\""),
    )
    .unwrap();
    let out = dir.join("out");
    let child = std::process::Command::new(support::kagi_bin())
        .args(["perso", "run", "--readers", "all", "--profile"])
        .arg(&sim_profile)
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .arg("--insecure-file-keys")
        .arg(examples().join("keys"))
        .env("PCSCLITE_CSOCK_NAME", &stack.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let journal_file = out.join("journal.jsonl");
    let output = Operator::new(3, [true, true]).run(&stack, child, &journal_file, None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let state = journal::replay(&journal_file).unwrap();
    let mut last_on_0 = None;
    for e in events(&journal_file) {
        if let Event::Claim { card, .. } = e {
            let iccid = card
                .strip_prefix("iccid:")
                .and_then(|c| c.split('@').next())
                .unwrap_or_else(|| panic!("claim {card} is not by ICCID"));
            assert!(card_wire::uicc::Iccid::new(iccid).is_ok(), "{card}");
            if card.ends_with(&format!("@{}", reader_name(0))) {
                last_on_0 = Some(iccid.to_string());
            }
        }
    }
    for i in 0..3 {
        assert_eq!(state.get(&format!("U{i}")), Some(&Status::Done), "{stderr}");
    }
    // The SIM still in reader 0 is the one the journal last claimed there.
    let info = stack.kagi(&["gp", "info", "--reader", &reader_name(0), "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["card_kind"], "uicc");
    assert_eq!(info["iccid"].as_str(), last_on_0.as_deref());
}

/// The readers go away in the middle of a batch and come back (pcscd stopped and started
/// again, as when readers are unplugged and replugged or pcscd restarts): the stations wait
/// for them, a card caught mid-way continues on the same card, and every record is done
/// once.
#[test]
fn stations_survive_the_readers_going_away_and_coming_back() {
    let stack = PrivatePcsc::start_hopper(2, "gp-test");
    let dir = stack.work.join("perso");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("records.csv");
    let mut csv = String::from("id,member_no,name,points\n");
    for i in 0..6 {
        csv.push_str(&format!("P{i},{},REPLUG MEMBER {i},{i}\n", 330000 + i));
    }
    std::fs::write(&input, csv).unwrap();
    let out = dir.join("out");
    let journal_file = out.join("journal.jsonl");
    let pids = || std::fs::read_to_string(stack.work.join("pids")).unwrap();
    let before = pids();
    let mut operator = Operator::new(6, [true, true]);
    operator.restart_after = Some(3);
    let output = operator.run(
        &stack,
        start_batch(&stack, &input, &out),
        &journal_file,
        None,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}\n{}", stack.logs());
    assert_ne!(pids(), before, "pcscd was not restarted");
    let state = journal::replay(&journal_file).unwrap();
    let mut claims: BTreeMap<String, usize> = BTreeMap::new();
    for e in events(&journal_file) {
        if let Event::Claim { record, .. } = e {
            *claims.entry(record).or_default() += 1;
        }
    }
    for i in 0..6 {
        let id = format!("P{i}");
        assert_eq!(claims.get(&id), Some(&1), "{id}: {stderr}");
        match &state[&id] {
            Status::Done => {}
            // A card caught in its STORE DATA cannot be continued: reported, not redone.
            Status::Rework(why) => assert!(why.contains("store:"), "{id}: {why}"),
            other => panic!("{id}: {other:?}\n{stderr}"),
        }
    }
}

/// Whether reader `slot` holds a card, as PC/SC reports it; waits until it is `want`.
fn wait_present(stack: &PrivatePcsc, slot: usize, want: bool) {
    let began = Instant::now();
    loop {
        let o = stack.kagi(&["readers", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let now = v["readers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == reader_name(slot))
            .map(|r| r["card_present"] == true);
        if now == Some(want) {
            return;
        }
        assert!(began.elapsed() < Duration::from_secs(20), "{v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A card taken out of the reader mid-way and put back (README: "a card taken out mid-way
/// continues when it comes back"), on one station (reader 1 stays empty): the journal's test
/// hook holds the batch right after T0's first step; the card is taken out and put back (pcscd
/// sees both, so the station's connection is dead); the batch goes on, loses the card, finds
/// it again by its CIN and completes T0 on it, claimed once; then T1 on the next card.
#[test]
fn a_card_taken_out_mid_way_and_put_back_continues() {
    let stack = PrivatePcsc::start_hopper(2, "gp-test");
    stack.control("remove 1");
    wait_present(&stack, 1, false);
    let dir = stack.work.join("perso");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("records.csv");
    std::fs::write(
        &input,
        "id,member_no,name,points\nT0,340000,TAKEN OUT,1\nT1,340001,NEXT ONE,2\n",
    )
    .unwrap();
    let out = dir.join("out");
    let journal_file = out.join("journal.jsonl");
    let release = dir.join("release");
    let stderr_log = dir.join("batch.stderr");
    let mut child = command(&stack, "run", &input, &out)
        .env(journal::FREEZE_ENV, "1:step:open")
        .env(journal::RELEASE_ENV, &release)
        .stderr(std::fs::File::create(&stderr_log).unwrap())
        .spawn()
        .unwrap();
    let began = Instant::now();
    // The hook holds the batch right after T0's first step (its line on stderr).
    while !(is_frozen(&stderr_log)
        && events(&journal_file).iter().any(
            |e| matches!(e, Event::Step { record, step, .. } if record == "T0" && step == "open"),
        ))
    {
        assert!(child.try_wait().unwrap().is_none(), "the batch ended");
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "the freeze hook did not hold the batch after T0's first step"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    stack.control("remove 0");
    wait_present(&stack, 0, false);
    stack.control("insert 0");
    wait_present(&stack, 0, true);
    std::fs::write(&release, b"").unwrap();
    let output = Operator::new(2, [true, false]).run(&stack, child, &journal_file, None);
    let stderr = std::fs::read_to_string(&stderr_log).unwrap();
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("lost the card"),
        "the removal was not seen: {stderr}"
    );
    let mut claimed = BTreeMap::new();
    for e in events(&journal_file) {
        if let Event::Claim { record, card } = e {
            assert!(
                claimed.insert(record.clone(), card).is_none(),
                "{record} claimed twice"
            );
        }
    }
    assert_eq!(claimed.len(), 2, "{stderr}");
    assert_ne!(claimed["T0"], claimed["T1"]);
    let state = journal::replay(&journal_file).unwrap();
    for id in ["T0", "T1"] {
        assert_eq!(state.get(id), Some(&Status::Done), "{id}: {stderr}");
    }
}
