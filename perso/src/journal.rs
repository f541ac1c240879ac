//! The batch journal: append-only JSON lines, each fsynced before the batch goes on. It
//! records each record's claim, every step done on its card and the outcome, so that after a
//! crash `kagi perso resume` knows what is done, what is not started and which cards were
//! caught mid-way. A torn last line (crash while writing) is ignored.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Condvar, Mutex};

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The batch started or resumed.
    Start {
        /// Profile name.
        profile: String,
        /// Records in the input.
        records: usize,
        /// SHA-256 (hex) of the profile file the batch started with; a resume with another
        /// profile is refused. Absent in journals written before it existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        profile_sha256: Option<String>,
        /// SHA-256 (hex) of the input records file the batch started with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input_sha256: Option<String>,
    },
    /// A record was taken by a station for a card.
    Claim {
        /// Record id.
        record: String,
        /// The card (reader/slot or simulated card image).
        card: String,
    },
    /// A step whose effect cannot be read back from the card is about to start.
    Begin {
        /// Record id.
        record: String,
        /// Step name.
        step: String,
    },
    /// A step finished on the record's card.
    Step {
        /// Record id.
        record: String,
        /// Step name.
        step: String,
        /// How long the step took, microseconds.
        #[serde(default)]
        micros: u64,
    },
    /// The card is personalised and verified.
    Done {
        /// Record id.
        record: String,
    },
    /// The card was caught mid-way and needs manual rework.
    Rework {
        /// Record id.
        record: String,
        /// Why.
        reason: String,
    },
    /// Personalisation failed (the card refused something).
    Failed {
        /// Record id.
        record: String,
        /// Why.
        reason: String,
    },
    /// The input record was unusable.
    BadRecord {
        /// Where.
        at: String,
        /// Why.
        reason: String,
    },
}

/// Where each record stands, replayed from the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Claimed; steps done so far.
    InProgress {
        /// The card.
        card: String,
        /// Steps done.
        steps: Vec<String>,
        /// Steps begun and not finished (their effect on the card is unknown).
        begun: Vec<String>,
    },
    /// Done.
    Done,
    /// Needs rework.
    Rework(String),
    /// Failed.
    Failed(String),
}

/// An open journal.
pub struct Journal {
    /// The appending handle and how many events were written through it.
    writer: Mutex<(File, u64)>,
    /// Which written events are on disk, and whether a sync is running.
    synced: Mutex<SyncState>,
    wake: Condvar,
    /// A second handle to the same file, for syncing without blocking writers.
    sync_handle: File,
    /// The test hook `KAGI_TEST_FREEZE_JOURNAL` (see [`Journal::open`]): freeze after the
    /// n-th event whose label starts with the prefix; events matched so far.
    freeze: Option<(u64, String, std::sync::atomic::AtomicU64)>,
}

/// The environment variable of the journal's test hook (see [`Journal::open`]).
pub const FREEZE_ENV: &str = "KAGI_TEST_FREEZE_JOURNAL";

/// With the freeze hook: the file whose creation releases the frozen journal (without it,
/// the freeze is for good).
pub const RELEASE_ENV: &str = "KAGI_TEST_RELEASE_JOURNAL";

/// The label the freeze hook matches an event by: `claim`, `step:NAME`, `begin:NAME`,
/// `done`, `rework`, `failed`, `start`, `bad-record`.
pub fn label(event: &Event) -> String {
    match event {
        Event::Start { .. } => "start".into(),
        Event::Claim { .. } => "claim".into(),
        Event::Begin { step, .. } => format!("begin:{step}"),
        Event::Step { step, .. } => format!("step:{step}"),
        Event::Done { .. } => "done".into(),
        Event::Rework { .. } => "rework".into(),
        Event::Failed { .. } => "failed".into(),
        Event::BadRecord { .. } => "bad-record".into(),
    }
}

#[derive(Default)]
struct SyncState {
    done: u64,
    running: bool,
}

fn write_error(e: impl std::fmt::Display) -> Error {
    Error::Profile(format!("journal write: {e}"))
}

impl Journal {
    /// Opens (creating) the journal for appending. A torn last line (a write cut short by a
    /// crash, never acknowledged) is cut off first, so that new events start on a line of
    /// their own.
    ///
    /// Test hook: with `KAGI_TEST_FREEZE_JOURNAL=N:PREFIX` set, once the N-th event whose
    /// [`label`] starts with PREFIX is on disk, the process stops journaling for good (every
    /// station halts at its next event), so that a test can kill it at exactly that point;
    /// with `KAGI_TEST_RELEASE_JOURNAL=FILE` also set, it goes on once FILE exists (a test
    /// acts on the cards meanwhile). Unset (always, in production), nothing changes.
    pub fn open(path: &Path) -> Result<Journal> {
        let err = |e: std::io::Error| Error::Profile(format!("journal {}: {e}", path.display()));
        match std::fs::read(path) {
            Ok(bytes) if !bytes.is_empty() && !bytes.ends_with(b"\n") => {
                let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                let f = OpenOptions::new().write(true).open(path).map_err(err)?;
                f.set_len(keep as u64).map_err(err)?;
                f.sync_all().map_err(err)?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        let sync_handle = file
            .try_clone()
            .map_err(|e| Error::Profile(format!("journal {}: {e}", path.display())))?;
        let freeze = std::env::var(FREEZE_ENV).ok().and_then(|v| {
            let (n, prefix) = v.split_once(':')?;
            Some((
                n.parse().ok()?,
                prefix.to_string(),
                std::sync::atomic::AtomicU64::new(0),
            ))
        });
        Ok(Journal {
            writer: Mutex::new((file, 0)),
            synced: Mutex::new(SyncState::default()),
            wake: Condvar::new(),
            sync_handle,
            freeze,
        })
    }

    /// The test hook: halts here for good (holding the writer, so no event follows) when
    /// `event` is the one `KAGI_TEST_FREEZE_JOURNAL` names.
    fn maybe_freeze(&self, event: &Event) {
        let Some((n, prefix, seen)) = &self.freeze else {
            return;
        };
        if !label(event).starts_with(prefix.as_str())
            || seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 != *n
        {
            return;
        }
        let _hold = self.writer.lock();
        eprintln!("{FREEZE_ENV}: journal frozen after event {n} matching {prefix:?}");
        let release = std::env::var_os(RELEASE_ENV).map(std::path::PathBuf::from);
        loop {
            match &release {
                Some(file) if file.exists() => return,
                Some(_) => std::thread::park_timeout(std::time::Duration::from_millis(10)),
                None => std::thread::park(),
            }
        }
    }

    /// Appends an event and returns once it is on disk. Stations appending at the same time
    /// share one `fdatasync` (group commit): each waits for a sync that began after its write.
    pub fn append(&self, event: &Event) -> Result<()> {
        self.append_synced(event)?;
        self.maybe_freeze(event);
        Ok(())
    }

    fn append_synced(&self, event: &Event) -> Result<()> {
        let mut line = serde_json::to_vec(event).map_err(|e| Error::Profile(e.to_string()))?;
        line.push(b'\n');
        let seq = {
            let mut w = self
                .writer
                .lock()
                .map_err(|_| write_error("lock poisoned"))?;
            w.0.write_all(&line).map_err(write_error)?;
            w.1 += 1;
            w.1
        };
        let mut state = self
            .synced
            .lock()
            .map_err(|_| write_error("lock poisoned"))?;
        loop {
            if state.done >= seq {
                return Ok(());
            }
            if state.running {
                state = self
                    .wake
                    .wait(state)
                    .map_err(|_| write_error("lock poisoned"))?;
                continue;
            }
            state.running = true;
            let target = self
                .writer
                .lock()
                .map_err(|_| write_error("lock poisoned"))?
                .1;
            drop(state);
            let synced = self.sync_handle.sync_data();
            state = self
                .synced
                .lock()
                .map_err(|_| write_error("lock poisoned"))?;
            state.running = false;
            if synced.is_ok() {
                state.done = state.done.max(target);
            }
            self.wake.notify_all();
            synced.map_err(write_error)?;
        }
    }
}

/// The journal's complete events, in order (a torn last line is left out).
pub fn events(path: &Path) -> Result<Vec<Event>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Profile(format!("journal {}: {e}", path.display()))),
    };
    let complete = if text.ends_with('\n') {
        text.as_str()
    } else {
        text.rsplit_once('\n').map(|(a, _)| a).unwrap_or("")
    };
    complete
        .lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map_err(|e| Error::Profile(format!("journal line {}: {e}", i + 1)))
        })
        .collect()
}

/// The profile and input digests of the batch's first start, when the journal has them.
pub fn batch_digests(path: &Path) -> Result<Option<BatchDigests>> {
    Ok(events(path)?.into_iter().find_map(|e| match e {
        Event::Start {
            profile_sha256: Some(profile),
            input_sha256: Some(input),
            ..
        } => Some(BatchDigests { profile, input }),
        _ => None,
    }))
}

/// What identifies a batch's inputs: SHA-256 (hex) of the profile file and of the records file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchDigests {
    /// SHA-256 of the profile file.
    pub profile: String,
    /// SHA-256 of the input records file.
    pub input: String,
}

impl BatchDigests {
    /// The digests of two files.
    pub fn of_files(profile: &Path, input: &Path) -> Result<BatchDigests> {
        use sha2::{Digest, Sha256};
        let digest = |p: &Path| -> Result<String> {
            let bytes =
                std::fs::read(p).map_err(|e| Error::Profile(format!("{}: {e}", p.display())))?;
            Ok(hex::encode(Sha256::digest(&bytes)))
        };
        Ok(BatchDigests {
            profile: digest(profile)?,
            input: digest(input)?,
        })
    }
}

/// The card each record was (last) claimed on: an image path, or `cin:CIN@READER`.
pub fn claims(path: &Path) -> Result<BTreeMap<String, String>> {
    Ok(events(path)?
        .into_iter()
        .filter_map(|e| match e {
            Event::Claim { record, card } => Some((record, card)),
            _ => None,
        })
        .collect())
}

/// Replays a journal: the status of every record mentioned.
pub fn replay(path: &Path) -> Result<BTreeMap<String, Status>> {
    let mut state = BTreeMap::new();
    for event in events(path)? {
        match event {
            Event::Claim { record, card } => {
                state.insert(
                    record,
                    Status::InProgress {
                        card,
                        steps: Vec::new(),
                        begun: Vec::new(),
                    },
                );
            }
            Event::Begin { record, step } => {
                if let Some(Status::InProgress { begun, .. }) = state.get_mut(&record) {
                    begun.push(step);
                }
            }
            Event::Step { record, step, .. } => {
                if let Some(Status::InProgress { steps, begun, .. }) = state.get_mut(&record) {
                    begun.retain(|b| *b != step);
                    steps.push(step);
                }
            }
            Event::Done { record } => {
                state.insert(record, Status::Done);
            }
            Event::Rework { record, reason } => {
                state.insert(record, Status::Rework(reason));
            }
            Event::Failed { record, reason } => {
                state.insert(record, Status::Failed(reason));
            }
            Event::Start { .. } | Event::BadRecord { .. } => {}
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_ignores_a_torn_last_line() {
        let dir = std::env::temp_dir().join(format!("kagi-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("j");
        let j = Journal::open(&path).unwrap();
        j.append(&Event::Claim {
            record: "A".into(),
            card: "c".into(),
        })
        .unwrap();
        j.append(&Event::Step {
            record: "A".into(),
            step: "open".into(),
            micros: 5,
        })
        .unwrap();
        j.append(&Event::Claim {
            record: "B".into(),
            card: "d".into(),
        })
        .unwrap();
        j.append(&Event::Done { record: "B".into() }).unwrap();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"event\":\"done\",\"rec").unwrap();
        let s = replay(&path).unwrap();
        assert_eq!(
            s["A"],
            Status::InProgress {
                card: "c".into(),
                steps: vec!["open".into()],
                begun: vec![],
            }
        );
        assert_eq!(s["B"], Status::Done);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_cut_before_appending() {
        let dir = std::env::temp_dir().join(format!("kagi-journal-torn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("j.jsonl");
        let whole = serde_json::to_string(&Event::Claim {
            record: "A".into(),
            card: "c".into(),
        })
        .unwrap();
        std::fs::write(&path, format!("{whole}\n{{\"Done\":{{\"reco")).unwrap();
        let j = Journal::open(&path).unwrap();
        j.append(&Event::Done { record: "A".into() }).unwrap();
        assert_eq!(replay(&path).unwrap()["A"], Status::Done);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn concurrent_appends_all_reach_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("kagi-journal-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("j.jsonl");
        let _ = std::fs::remove_file(&path);
        let j = Journal::open(&path).unwrap();
        std::thread::scope(|s| {
            for t in 0..8 {
                let j = &j;
                s.spawn(move || {
                    for n in 0..50 {
                        let record = format!("T{t}-{n}");
                        j.append(&Event::Claim {
                            record: record.clone(),
                            card: "c".into(),
                        })
                        .unwrap();
                        j.append(&Event::Done { record }).unwrap();
                    }
                });
            }
        });
        let state = replay(&path).unwrap();
        assert_eq!(state.len(), 400);
        assert!(state.values().all(|s| *s == Status::Done));
        let _ = std::fs::remove_dir_all(&dir);
    }

    proptest::proptest! {
        /// Any bytes in a journal file: a clear error or a state, never a panic.
        #[test]
        fn replay_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let dir = std::env::temp_dir().join(format!("kagi-journal-prop-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{}.jsonl", bytes.len()));
            std::fs::write(&path, &bytes).unwrap();
            let _ = replay(&path);
            let _ = std::fs::remove_dir_all(&dir);
        }

        /// A journal cut anywhere replays like its complete lines.
        #[test]
        fn a_cut_journal_replays_its_whole_lines(n in 1usize..20, cut in 0usize..2000) {
            let mut text = String::new();
            for k in 0..n {
                let record = format!("R{k}");
                for e in [
                    Event::Claim { record: record.clone(), card: "c".into() },
                    Event::Step { record: record.clone(), step: "open".into(), micros: 1 },
                    Event::Done { record },
                ] {
                    text.push_str(&serde_json::to_string(&e).unwrap());
                    text.push('\n');
                }
            }
            let cut = cut.min(text.len());
            let whole = match text[..cut].rfind('\n') {
                Some(i) => &text[..=i],
                None => "",
            };
            let dir = std::env::temp_dir().join(format!("kagi-journal-cut-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let (a, b) = (dir.join("cut.jsonl"), dir.join("whole.jsonl"));
            std::fs::write(&a, &text.as_bytes()[..cut]).unwrap();
            std::fs::write(&b, whole).unwrap();
            let (cut_state, whole_state) = (replay(&a).unwrap(), replay(&b).unwrap());
            let _ = std::fs::remove_dir_all(&dir);
            proptest::prop_assert_eq!(cut_state, whole_state);
        }
    }
}
