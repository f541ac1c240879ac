//! Running a batch: stations take records from a queue, personalise a card each, verify it,
//! and journal every step. Simulated stations keep each card as an image file under
//! `OUT/cards/`, saved after every step, so a crash leaves cards that `resume` can inspect.

use super::journal::{Event, Journal, Status};
use super::profile::Profile;
use super::records::{BadRecord, Record};
use crate::channel::CardChannel;
use crate::error::{Error, Result};
use crate::gp::{self, StatusScope, manage};
use crate::secure::SecureChannel;
use applet_sim::{SimCard, SimConfig};
use card_wire::scp03::{HostOptions, Scp03Error, SecurityLevel, StaticKeys};
use card_wire::sw::StatusWord;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// The keys of a batch: the cards' transport keys and the production master keys the new
/// card keys are diversified from.
pub struct KeySets {
    /// Transport key set (as the cards leave the factory).
    pub transport: StaticKeys,
    /// Production master key set.
    pub master: StaticKeys,
}

impl KeySets {
    /// The development file key store: `DIR/transport.keys` and `DIR/master.keys` (key files
    /// as `kagi::keys` reads them). Never for production: say so.
    pub fn from_insecure_dir(dir: &Path, profile: &Profile) -> Result<KeySets> {
        let read = |name: &str, kvn: u8| crate::keys::read_key_file(&dir.join(name), kvn);
        let mut transport = read("transport.keys", profile.transport_kvn)?;
        transport.kvn = profile.transport_kvn;
        let mut master = read("master.keys", profile.production_kvn)?;
        master.kvn = profile.production_kvn;
        Ok(KeySets { transport, master })
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Journal, reports and card images go here.
    pub out: PathBuf,
    /// Parallel stations (simulated cards at a time).
    pub stations: usize,
    /// Show progress bars.
    pub progress: bool,
    /// Keep simulated cards as image files (needed to resume; off only for benchmarks).
    pub keep_images: bool,
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
    /// Unusable input records.
    pub bad_records: usize,
    /// Records handled in this run.
    pub handled: usize,
    /// Seconds this run took.
    pub seconds: f64,
}

fn journal_path(out: &Path) -> PathBuf {
    out.join("journal.jsonl")
}

fn card_path(out: &Path, id: &str) -> PathBuf {
    out.join("cards").join(format!("{id}.img"))
}

struct Shared<'a> {
    profile: &'a Profile,
    keys: &'a KeySets,
    opts: &'a Options,
    journal: Mutex<Journal>,
}

impl Shared<'_> {
    fn log(&self, e: Event) -> Result<()> {
        self.journal
            .lock()
            .map_err(|_| Error::Protocol("journal lock poisoned".into()))?
            .append(&e)
    }
}

fn options() -> HostOptions {
    HostOptions {
        level: SecurityLevel::FULL,
        ..HostOptions::default()
    }
}

fn save(ch: &CardChannel<SimCard>, path: &Path, keep: bool) -> Result<()> {
    if keep {
        ch.transport()
            .save_image(path)
            .map_err(|e| Error::Protocol(e.to_string()))?;
    }
    Ok(())
}

/// Personalises one card, journalling and saving after every step.
fn personalise(
    sh: &Shared<'_>,
    ch: &mut CardChannel<SimCard>,
    record: &Record,
    path: &Path,
) -> Result<()> {
    let p = sh.profile;
    let keep = sh.opts.keep_images;
    let step = |name: String| {
        sh.log(Event::Step {
            record: record.id.clone(),
            step: name,
        })
    };
    let sd = gp::select_domain(ch, None)?;
    let mut transport = sh.keys.transport.clone();
    transport.kvn = p.transport_kvn;
    let opts = HostOptions {
        kvn: p.transport_kvn,
        ..options()
    };
    let mut sc = SecureChannel::open(ch, transport, opts, Some(&sd.aid))?;
    save(sc.card(), path, keep)?;
    step("open".into())?;
    for i in &p.install {
        let spec = manage::InstallSpec {
            package: i.package.clone(),
            module: i.module.clone(),
            instance: i.instance.clone(),
            privileges: i.privileges.clone(),
            params: i.params.clone(),
            selectable: true,
        };
        manage::install(&mut sc, &spec)?;
        save(sc.card(), path, keep)?;
        step(format!("install:{}", hex::encode_upper(&i.instance)))?;
    }
    for s in &p.store {
        let blocks = Profile::render(s, &record.fields)?;
        manage::personalize(&mut sc, &s.instance, &blocks, true)?;
        save(sc.card(), path, keep)?;
        step(format!("store:{}", hex::encode_upper(&s.instance)))?;
    }
    // Production keys, diversified for this card, replace the transport keys.
    let kdd = sc.info().init_update.kdd;
    let mut production = sh.keys.master.diversify(p.diversification, &kdd);
    production.kvn = p.production_kvn;
    let dek = sc.dek()?.clone();
    manage::put_key(&mut sc, &dek, &production, Some(p.transport_kvn))?;
    save(sc.card(), path, keep)?;
    step("put-key".into())?;
    if p.final_state != 0x0F {
        manage::set_card_status(&mut sc, p.final_state)?;
        save(sc.card(), path, keep)?;
        step("final-state".into())?;
    }
    Ok(())
}

/// The verification pass: production keys open a session and the registry holds every
/// instance of the profile; the transport keys no longer open a channel.
pub fn verify(ch: &mut CardChannel<SimCard>, profile: &Profile, keys: &KeySets) -> Result<()> {
    let sd = gp::select_domain(ch, None)?;
    let opts = HostOptions {
        kvn: profile.production_kvn,
        diversification: profile.diversification,
        ..options()
    };
    {
        let mut master = keys.master.clone();
        master.kvn = profile.production_kvn;
        let mut sc = SecureChannel::open(ch, master, opts, Some(&sd.aid))?;
        let apps = gp::get_status(&mut sc, StatusScope::Applications)?;
        for i in &profile.install {
            if !apps.iter().any(|e| e.aid == i.instance) {
                return Err(Error::Protocol(format!(
                    "{} is not on the card",
                    hex::encode_upper(&i.instance)
                )));
            }
        }
    }
    let transport = HostOptions {
        kvn: profile.transport_kvn,
        ..options()
    };
    match SecureChannel::open(ch, keys.transport.clone(), transport, Some(&sd.aid)) {
        Err(Error::Scp03(Scp03Error::InitializeUpdateRefused(
            StatusWord::REFERENCED_DATA_NOT_FOUND,
        ))) => Ok(()),
        Ok(_) => Err(Error::Protocol(
            "the transport keys still open a channel".into(),
        )),
        Err(e) => Err(e),
    }
}

/// A factory-fresh simulated card with the transport keys and its own key diversification
/// data and card number (from the record id, so every card differs).
fn new_card(sh: &Shared<'_>, record: &Record) -> SimCard {
    use sha2::Digest;
    let mut transport = sh.keys.transport.clone();
    transport.kvn = sh.profile.transport_kvn;
    let mut config = SimConfig::default().with_keys(vec![transport]);
    let h = sha2::Sha256::digest(record.id.as_bytes());
    config.isd.kdd[2..].copy_from_slice(&h[..8]);
    config.isd.cin = h[8..14].to_vec();
    SimCard::powered(config)
}

/// Handles one record: a fresh card, or the inspection of a card caught mid-way.
fn handle(sh: &Shared<'_>, record: &Record, previous: Option<&Status>) -> Result<()> {
    let path = card_path(&sh.opts.out, &record.id);
    let card_name = path.display().to_string();
    let mut ch = match previous {
        Some(Status::InProgress { .. }) if path.exists() => {
            let mut card =
                SimCard::from_image(&path, None).map_err(|e| Error::Protocol(e.to_string()))?;
            card.power_on();
            let mut ch = CardChannel::new(card);
            if verify(&mut ch, sh.profile, sh.keys).is_ok() {
                return sh.log(Event::Done {
                    record: record.id.clone(),
                });
            }
            // Untouched (transport keys work, none of the profile's applets): start over.
            let untouched = {
                let sd = gp::select_domain(&mut ch, None)?;
                let opts = HostOptions {
                    kvn: sh.profile.transport_kvn,
                    ..options()
                };
                match SecureChannel::open(&mut ch, sh.keys.transport.clone(), opts, Some(&sd.aid)) {
                    Ok(mut sc) => {
                        let apps = gp::get_status(&mut sc, StatusScope::Applications)?;
                        !sh.profile
                            .install
                            .iter()
                            .any(|i| apps.iter().any(|e| e.aid == i.instance))
                    }
                    Err(_) => false,
                }
            };
            if !untouched {
                return sh.log(Event::Rework {
                    record: record.id.clone(),
                    reason: "caught mid-way: partly personalised; not redone automatically".into(),
                });
            }
            ch
        }
        _ => {
            let ch = CardChannel::new(new_card(sh, record));
            if sh.opts.keep_images {
                std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
                    .map_err(|e| Error::Protocol(e.to_string()))?;
            }
            save(&ch, &path, sh.opts.keep_images)?;
            ch
        }
    };
    sh.log(Event::Claim {
        record: record.id.clone(),
        card: card_name,
    })?;
    let result =
        personalise(sh, &mut ch, record, &path).and_then(|_| verify(&mut ch, sh.profile, sh.keys));
    save(&ch, &path, sh.opts.keep_images)?;
    match result {
        Ok(()) => sh.log(Event::Done {
            record: record.id.clone(),
        }),
        Err(e) => sh.log(Event::Failed {
            record: record.id.clone(),
            reason: e.to_string(),
        }),
    }
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
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| Error::Protocol(format!("{}: {e}", opts.out.display())))?;
    let jpath = journal_path(&opts.out);
    if !resume && jpath.exists() {
        return Err(Error::Profile(format!(
            "{} already holds a batch journal: continue it with `kagi perso resume`, or choose another --out",
            opts.out.display()
        )));
    }
    let state = super::journal::replay(&jpath)?;
    let mut journal = Journal::open(&jpath)?;
    journal.append(&Event::Start {
        profile: profile.name.clone(),
        records: records.len(),
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
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(handled as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} cards {per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let sh = Shared {
        profile,
        keys,
        opts,
        journal: Mutex::new(journal),
    };
    let queue = Mutex::new(todo);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..opts.stations.max(1) {
            s.spawn(|| {
                loop {
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
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
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
        bad_records: bad.len(),
        handled,
        seconds: start.elapsed().as_secs_f64(),
    };
    write_reports(&opts.out, records, bad, &final_state)?;
    Ok(summary)
}

/// `OUT/report.csv` and `OUT/report.json`: one row per input record.
fn write_reports(
    out: &Path,
    records: &[Record],
    bad: &[BadRecord],
    state: &std::collections::BTreeMap<String, Status>,
) -> Result<()> {
    let mut rows = Vec::new();
    for r in records {
        let (status, detail) = match state.get(&r.id) {
            Some(Status::Done) => ("done", String::new()),
            Some(Status::Rework(why)) => ("rework", why.clone()),
            Some(Status::Failed(why)) => ("failed", why.clone()),
            Some(Status::InProgress { steps, .. }) => ("in-progress", steps.join(" ")),
            None => ("pending", String::new()),
        };
        rows.push(serde_json::json!({"record": r.id, "status": status, "detail": detail}));
    }
    for b in bad {
        rows.push(serde_json::json!({"record": b.at, "status": "bad-record", "detail": b.reason}));
    }
    let io = |e: std::io::Error| Error::Protocol(format!("report: {e}"));
    let mut csv = ::csv::Writer::from_path(out.join("report.csv"))
        .map_err(|e| Error::Protocol(e.to_string()))?;
    csv.write_record(["record", "status", "detail"])
        .map_err(|e| Error::Protocol(e.to_string()))?;
    for row in &rows {
        let f = |k: &str| row[k].as_str().unwrap_or_default().to_string();
        csv.write_record([f("record"), f("status"), f("detail")])
            .map_err(|e| Error::Protocol(e.to_string()))?;
    }
    csv.flush().map_err(io)?;
    let json = serde_json::json!({"schema_version": 1, "cards": rows});
    std::fs::write(
        out.join("report.json"),
        serde_json::to_vec_pretty(&json).unwrap_or_default(),
    )
    .map_err(io)
}
