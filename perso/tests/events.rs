//! The library tells its user what a batch does through events, and prints nothing itself:
//! a batch of the example member records (12 records, 2 of them invalid on purpose) on two
//! simulated stations reports that it starts with the 10 valid records, one event per
//! handled record, and its end; a resumed batch with nothing left reports zero records.

use kagi_perso::{BatchEvent, EventSink, KeySets, Options, Profile};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn batch(out: &Path, resume: bool) -> Vec<BatchEvent> {
    let profile = Profile::read(&examples().join("perso-member.toml")).unwrap();
    let (records, bad) =
        kagi_perso::records::read(&examples().join("member-records.csv"), &profile.fields())
            .unwrap();
    // Counted independently of the library: the example file's data lines minus the two bad.
    let lines = std::fs::read_to_string(examples().join("member-records.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count();
    assert_eq!((records.len(), bad.len()), (lines - 2, 2));
    let keys = KeySets::from_insecure_dir(&examples().join("keys"), &profile).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let opts = Options {
        out: out.to_path_buf(),
        stations: 2,
        events: Some(EventSink(Arc::new(move |e: &BatchEvent| {
            sink.lock().unwrap().push(e.clone())
        }))),
        keep_images: true,
        card_logs: None,
        readers: Vec::new(),
        feeder_cmd: None,
        digests: None,
        stop: None,
    };
    let summary = kagi_perso::run::run(&profile, &records, &bad, &keys, &opts, resume).unwrap();
    if !resume {
        assert_eq!(summary.done, records.len());
    }
    seen.lock().unwrap().clone()
}

#[test]
fn a_batch_reports_its_start_each_card_and_its_end() {
    let out = std::env::temp_dir().join(format!("kagi-perso-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let events = batch(&out, false);
    let valid = 10;
    assert_eq!(events.first(), Some(&BatchEvent::Started { cards: valid }));
    assert_eq!(events.last(), Some(&BatchEvent::Finished));
    let handled = events
        .iter()
        .filter(|e| **e == BatchEvent::CardHandled)
        .count();
    assert_eq!(handled, valid);
    assert_eq!(events.len(), valid + 2, "{events:?}");
    // Resumed: every record is done, nothing to handle.
    let again = batch(&out, true);
    assert_eq!(
        again,
        vec![BatchEvent::Started { cards: 0 }, BatchEvent::Finished]
    );
    std::fs::remove_dir_all(&out).unwrap();
}
