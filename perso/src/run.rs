//! Running a batch: stations take records from a queue, personalise a card each, verify it,
//! and journal every step. Simulated stations keep each card as an image file under
//! `OUT/cards/`, saved after every step, so a crash leaves cards that `resume` can inspect;
//! reader stations (`readers`) work on the cards in PC/SC readers.
// Without a station feature (`sim`, `pcsc`) the batch machinery compiles but runs no card.
#![cfg_attr(
    not(any(feature = "sim", feature = "pcsc")),
    allow(dead_code, unused_imports)
)]

use super::journal::{Event, Journal, Status};
use super::profile::Profile;
use super::records::{BadRecord, Record};
use crate::error::{Error, Result};
use card_wire::scp03::{CardKeys, Diversification, HostOptions, SecurityLevel, StaticKeys};
use card_wire::transport::Transport;
use kagi::channel::CardChannel;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

mod card;
mod issuer;
mod jpki;
mod report;
#[cfg(feature = "sim")]
mod station;
mod steps;
mod verify;

use card::*;
use issuer::*;
use jpki::*;
use report::*;
#[cfg(feature = "sim")]
use station::*;
use steps::*;
pub use verify::verify;
use verify::*;

/// What a running batch tells its user (the CLI draws its progress bar from these).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchEvent {
    /// The batch starts with this many records to handle (new and resumed).
    Started {
        /// Records to handle.
        cards: usize,
    },
    /// A record was handled (done, failed or left for later; the journal says which).
    CardHandled,
    /// Something the operator should read (a reader station's card, a card not seen again).
    Message(String),
    /// The batch's stations have stopped.
    Finished,
}

/// Where a batch's [`BatchEvent`]s go.
#[derive(Clone)]
pub struct EventSink(pub Arc<dyn Fn(&BatchEvent) + Send + Sync>);

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

/// The keys of a batch: the cards' transport keys, and where each card's production keys
/// (and its supplementary domains' keys) come from once its KDD is known.
pub struct KeySets {
    /// Transport key set (as the cards leave the factory), with the profile's transport KVN.
    pub transport: StaticKeys,
    /// The issuer domain's production keys per card: diversified from the master key set.
    pub production: Arc<dyn CardKeys>,
    /// The supplementary domains' keys per card, by the key set name the profile gives them.
    pub domains: BTreeMap<String, Arc<dyn CardKeys>>,
}

fn read_transport(path: &Path, profile: &Profile) -> Result<StaticKeys> {
    let mut transport = kagi::keys::read_key_file(path, profile.transport_kvn)?;
    transport.kvn = profile.transport_kvn;
    Ok(transport)
}

impl KeySets {
    /// Master keys in an HSM (`kdf3` diversification runs in the HSM; each `HsmMaster` was
    /// opened with the production KVN) and transport keys from `transport` (a key file).
    pub fn with_hsm(
        transport: &Path,
        master: kagi_hsm::HsmMaster,
        domains: BTreeMap<String, kagi_hsm::HsmMaster>,
        profile: &Profile,
    ) -> Result<KeySets> {
        if profile.diversification != Diversification::Kdf3 {
            return Err(Error::Profile(
                "master keys in an HSM need diversification = \"kdf3\" (each card gets its own keys; the master never leaves the HSM)".into(),
            ));
        }
        let source = |m: kagi_hsm::HsmMaster| -> Arc<dyn CardKeys> { Arc::new(m) };
        Ok(KeySets {
            transport: read_transport(transport, profile)?,
            production: source(master),
            domains: domains.into_iter().map(|(k, v)| (k, source(v))).collect(),
        })
    }

    /// SCP02 master keys in an HSM: each card's 3DES keys are derived inside the HSM with the
    /// profile's `diversification` (`emv` or `visa2`; each `HsmMaster02` was opened with the
    /// production KVN); transport keys from `transport` (a key file).
    pub fn with_hsm02(
        transport: &Path,
        master: kagi_hsm::scp02::HsmMaster02,
        domains: BTreeMap<String, kagi_hsm::scp02::HsmMaster02>,
        profile: &Profile,
    ) -> Result<KeySets> {
        if !scp02(profile) {
            return Err(Error::Profile(
                "SCP02 master keys (3DES) in an HSM need diversification = \"emv\" or \"visa2\""
                    .into(),
            ));
        }
        let scheme = profile.diversification;
        let source = |master| -> Arc<dyn CardKeys> {
            Arc::new(kagi_hsm::scp02::HsmSource02 { master, scheme })
        };
        Ok(KeySets {
            transport: read_transport(transport, profile)?,
            production: source(master),
            domains: domains.into_iter().map(|(k, v)| (k, source(v))).collect(),
        })
    }

    /// The development file key store: `DIR/transport.keys`, `DIR/master.keys` and, per
    /// supplementary domain, `DIR/NAME.keys` (key files as `kagi::keys` reads them). Never for
    /// production: say so.
    pub fn from_insecure_dir(dir: &Path, profile: &Profile) -> Result<KeySets> {
        let source = |name: &str| -> Result<Arc<dyn CardKeys>> {
            Ok(Arc::new(card_wire::scp03::DiversifiedMaster {
                master: kagi::keys::read_key_file(&dir.join(name), profile.production_kvn)?,
                scheme: profile.diversification,
                kvn: profile.production_kvn,
            }))
        };
        let mut domains = BTreeMap::new();
        for d in &profile.domains {
            domains.insert(d.keys.clone(), source(&format!("{}.keys", d.keys))?);
        }
        Ok(KeySets {
            transport: read_transport(&dir.join("transport.keys"), profile)?,
            production: source("master.keys")?,
            domains,
        })
    }

    /// The keys of the supplementary domain whose key set is `name`.
    fn domain(&self, name: &str) -> Result<Arc<dyn CardKeys>> {
        self.domains.get(name).cloned().ok_or_else(|| {
            Error::Profile(format!(
                "no master key set '{name}' for a security domain: add {name}.keys (file store) or an HSM key labelled '{name}'"
            ))
        })
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Journal, reports and card images go here.
    pub out: PathBuf,
    /// Parallel stations (simulated cards at a time).
    pub stations: usize,
    /// Told what the batch is doing ([`BatchEvent`]): a progress display, a log. Without
    /// one, nothing is shown; the library never prints.
    pub events: Option<EventSink>,
    /// Keep simulated cards as image files (needed to resume; off only for benchmarks).
    pub keep_images: bool,
    /// Write a redacted APDU log per card into this directory.
    pub card_logs: Option<PathBuf>,
    /// PC/SC readers to run stations on (exact names); empty for simulated cards.
    pub readers: Vec<String>,
    /// Reader stations: a shell command run after each card (an automatic encoder's eject
    /// and feed), with `KAGI_READER`, `KAGI_OUTCOME` and `KAGI_RECORD` set.
    pub feeder_cmd: Option<String>,
    /// Digests of the profile and input files: written into the journal when the batch
    /// starts, and checked on resume (a resume with another batch's files is refused).
    pub digests: Option<super::journal::BatchDigests>,
    /// Set (by a signal handler) to stop at a safe point: stations finish the cards in flight,
    /// take no new record, and the batch ends with [`Summary::interrupted`].
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Options {
    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// What a batch did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Records personalised and verified (in total, over all runs).
    pub done: usize,
    /// Cards caught mid-way that need rework.
    pub rework: usize,
    /// Cards that refused something.
    pub failed: usize,
    /// Cards claimed and not finished (waiting for an external CA, or caught by a stop):
    /// `kagi perso resume` continues them.
    pub in_progress: usize,
    /// Unusable input records.
    pub bad_records: usize,
    /// Records handled in this run.
    pub handled: usize,
    /// Seconds this run took.
    pub seconds: f64,
    /// Average milliseconds per step kind in this run (where the time goes).
    pub step_ms: std::collections::BTreeMap<String, f64>,
    /// This process's CPU time (user + system) per card handled in this run, in milliseconds.
    pub cpu_ms_per_card: f64,
    /// The run was stopped (see [`Options::stop`]) before every record was handled: `kagi
    /// perso resume` continues it.
    pub interrupted: bool,
}

/// CPU time (user + system) this process has used so far (zero where unavailable).
fn cpu_time() -> std::time::Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| {
                std::time::Duration::from_secs(t.tv_sec().max(0) as u64)
                    + std::time::Duration::from_micros(t.tv_usec().max(0) as u64)
            };
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => std::time::Duration::ZERO,
    }
}

fn journal_path(out: &Path) -> PathBuf {
    out.join("journal.jsonl")
}

struct Shared<'a> {
    profile: &'a Profile,
    keys: &'a KeySets,
    opts: &'a Options,
    journal: Journal,
    issuer: Option<Issuer>,
    times: Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
}

impl Shared<'_> {
    /// Adds a step's duration to the batch's "where the time goes" figures.
    fn time(&self, step: &str, micros: u64) {
        let kind = step.split(':').next().unwrap_or(step).to_string();
        if let Ok(mut t) = self.times.lock() {
            let e = t.entry(kind).or_insert((0, 0));
            e.0 += 1;
            e.1 += micros;
        }
    }
    fn log(&self, e: Event) -> Result<()> {
        self.journal.append(&e)
    }
}

/// Whether the profile's cards speak SCP02: their keys are 3DES, diversified with EMV CPS 1.1
/// or VISA2.
fn scp02(profile: &Profile) -> bool {
    matches!(
        profile.diversification,
        Diversification::Emv | Diversification::Visa2
    )
}

/// Session options: full security for SCP03; C-MAC and C-DEC for SCP02 (it has no response
/// encryption).
fn options(profile: &Profile) -> HostOptions {
    HostOptions {
        level: if scp02(profile) {
            SecurityLevel::CMAC_CDEC
        } else {
            SecurityLevel::FULL
        },
        ..HostOptions::default()
    }
}

#[cfg(feature = "pcsc")]
mod readers;

/// Where a station keeps a card's state between steps: a simulated card is saved as an image
/// file (so a crash leaves a card that `resume` can inspect); a real card keeps its own.
pub trait Checkpoint: Transport {
    /// Saves the card's state to `path`.
    fn checkpoint(&self, path: &Path) -> Result<()>;
}

fn save<T: Checkpoint>(ch: &CardChannel<T>, path: Option<&Path>) -> Result<()> {
    match path {
        Some(p) => ch.transport().checkpoint(p),
        None => Ok(()),
    }
}

/// What the journal says about a card caught mid-way (empty for a fresh card).
#[derive(Default)]
struct Progress {
    /// Steps finished and journaled.
    done: Vec<String>,
    /// Steps begun and never finished.
    begun: Vec<String>,
}

impl Progress {
    /// Whether `name` still has to run. A step whose effect cannot be read back from the card
    /// (`opaque`: personalisation data, JPKI issuance) and that was begun but never finished
    /// makes the card a rework case: running it again could duplicate or mix data.
    fn todo(&self, name: &str, opaque: bool) -> Result<bool> {
        if self.done.iter().any(|d| d == name) {
            return Ok(false);
        }
        if opaque && self.begun.iter().any(|b| b == name) {
            return Err(Error::NeedsRework(format!(
                "interrupted during {name}: the card may hold part of it"
            )));
        }
        Ok(true)
    }
}

/// Runs the batch's records on PC/SC reader stations, one per reader in `opts.readers`.
#[cfg(feature = "pcsc")]
fn run_readers(
    sh: &Shared<'_>,
    todo: VecDeque<(&Record, Option<Status>)>,
    notify: &(dyn Fn(BatchEvent) + Sync),
) -> Result<()> {
    let work = readers::Work {
        fresh: Mutex::new(VecDeque::new()),
        waiting: Mutex::new(Default::default()),
        last_card: Mutex::new(std::time::Instant::now()),
    };
    for (record, previous) in todo {
        match previous {
            Some(Status::InProgress {
                card, steps, begun, ..
            }) => {
                // Claimed on a simulated card (an image path): no reader holds that card.
                if let (Some(cin), Ok(mut w)) = (readers::claimed_card(&card), work.waiting.lock())
                {
                    w.insert(cin.to_string(), (record, Progress { done: steps, begun }));
                }
            }
            _ => {
                if let Ok(mut q) = work.fresh.lock() {
                    q.push_back(record);
                }
            }
        }
    }
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let say = |line: String| notify(BatchEvent::Message(line));
    let waiting = work.waiting.lock().map(|w| w.len()).unwrap_or(0);
    if waiting > 0 {
        say(format!(
            "{waiting} card(s) caught mid-way are awaited: put each in a reader (the stations wait \
             up to {} s after the last card; Ctrl-C stops at once)",
            readers::WAITING_GRACE.as_secs()
        ));
    }
    std::thread::scope(|s| {
        for reader in &sh.opts.readers {
            let (work, say, first_error) = (&work, &say, &first_error);
            s.spawn(move || {
                if let Err(e) = readers::station(sh, reader, work, say, notify)
                    && let Ok(mut slot) = first_error.lock()
                {
                    slot.get_or_insert(e);
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let left = work.waiting.lock().map(|w| w.len()).unwrap_or(0);
    if left > 0 {
        say(format!(
            "{left} card(s) caught mid-way were not seen again: they stay in progress; put them in a reader and resume"
        ));
    }
    Ok(())
}

/// Without simulated stations a batch runs only on readers.
#[cfg(not(feature = "sim"))]
fn handle(_: &Shared<'_>, _: &Record, _: Option<&Status>) -> Result<()> {
    Err(Error::Unsupported(
        "this kagi was built without simulated stations (feature `sim`): give the readers to run the batch on".into(),
    ))
}

#[cfg(not(feature = "pcsc"))]
fn run_readers(
    _sh: &Shared<'_>,
    _todo: VecDeque<(&Record, Option<Status>)>,
    _notify: &(dyn Fn(BatchEvent) + Sync),
) -> Result<()> {
    Err(Error::Unsupported(
        "this kagi was built without PC/SC support (feature `pcsc`)".into(),
    ))
}

/// Runs (or, with `resume`, continues) a batch.
pub fn run(
    profile: &Profile,
    records: &[Record],
    bad: &[BadRecord],
    keys: &KeySets,
    opts: &Options,
    resume: bool,
) -> Result<Summary> {
    let start = Instant::now();
    let cpu_start = cpu_time();
    std::fs::create_dir_all(&opts.out).map_err(|source| Error::File {
        path: opts.out.clone(),
        source,
    })?;
    let jpath = journal_path(&opts.out);
    if !resume && jpath.exists() {
        return Err(Error::Profile(format!(
            "{} already holds a batch journal: continue it with `kagi perso resume`, or choose another --out",
            opts.out.display()
        )));
    }
    if resume
        && let (Some(then), Some(now)) = (super::journal::batch_digests(&jpath)?, &opts.digests)
    {
        for (what, a, b) in [
            ("profile", &then.profile, &now.profile),
            ("input records", &then.input, &now.input),
        ] {
            if a != b {
                return Err(Error::Profile(format!(
                    "this batch was started with another {what} file (SHA-256 {a}, given {b}): resume it with the files it started with, or start a new batch with another --out"
                )));
            }
        }
    }
    let state = super::journal::replay(&jpath)?;
    let journal = Journal::open(&jpath)?;
    journal.append(&Event::Start {
        profile: profile.name.clone(),
        records: records.len(),
        profile_sha256: opts.digests.as_ref().map(|d| d.profile.clone()),
        input_sha256: opts.digests.as_ref().map(|d| d.input.clone()),
    })?;
    if !resume {
        for b in bad {
            journal.append(&Event::BadRecord {
                at: b.at.clone(),
                reason: b.reason.clone(),
            })?;
        }
    }
    let todo: VecDeque<(&Record, Option<Status>)> = records
        .iter()
        .filter_map(|r| match state.get(&r.id) {
            None => Some((r, None)),
            Some(s @ Status::InProgress { .. }) => Some((r, Some(s.clone()))),
            Some(_) => None,
        })
        .collect();
    let handled = todo.len();
    let notify = |e: BatchEvent| {
        if let Some(EventSink(f)) = &opts.events {
            f(&e);
        }
    };
    notify(BatchEvent::Started { cards: handled });
    let issuer = match &profile.jpki {
        Some(j) => Some(Issuer::open(j, &opts.out)?),
        None => None,
    };
    if let Some(dir) = &opts.card_logs {
        std::fs::create_dir_all(dir).map_err(|source| Error::File {
            path: dir.clone(),
            source,
        })?;
    }
    let sh = Shared {
        profile,
        keys,
        opts,
        journal,
        issuer,
        times: Mutex::new(Default::default()),
    };
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let todo = if opts.readers.is_empty() {
        todo
    } else {
        run_readers(&sh, todo, &notify)?;
        VecDeque::new()
    };
    let queue = Mutex::new(todo);
    std::thread::scope(|s| {
        for _ in 0..opts.stations.max(1) {
            s.spawn(|| {
                loop {
                    if opts.stopping() {
                        break;
                    }
                    let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                    let Some((record, previous)) = next else {
                        break;
                    };
                    if let Err(e) = handle(&sh, record, previous.as_ref()) {
                        // A journal or file failure stops the station; the batch can resume.
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                        break;
                    }
                    notify(BatchEvent::CardHandled);
                }
            });
        }
    });
    notify(BatchEvent::Finished);
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let final_state = super::journal::replay(&jpath)?;
    let summary = Summary {
        done: final_state
            .values()
            .filter(|s| matches!(s, Status::Done))
            .count(),
        rework: final_state
            .values()
            .filter(|s| matches!(s, Status::Rework(_)))
            .count(),
        failed: final_state
            .values()
            .filter(|s| matches!(s, Status::Failed(_)))
            .count(),
        in_progress: final_state
            .values()
            .filter(|s| matches!(s, Status::InProgress { .. }))
            .count(),
        bad_records: bad.len(),
        interrupted: opts.stopping()
            && records.iter().any(|r| {
                !matches!(
                    final_state.get(&r.id),
                    Some(Status::Done | Status::Rework(_) | Status::Failed(_))
                )
            }),
        handled,
        seconds: start.elapsed().as_secs_f64(),
        cpu_ms_per_card: (cpu_time().saturating_sub(cpu_start)).as_secs_f64() * 1000.0
            / handled.max(1) as f64,
        step_ms: sh
            .times
            .lock()
            .map(|t| {
                t.iter()
                    .map(|(k, (n, us))| (k.clone(), *us as f64 / 1000.0 / (*n).max(1) as f64))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let cards = super::journal::claims(&jpath)?;
    write_reports(&opts.out, records, bad, &final_state, &cards)?;
    Ok(summary)
}
