//! Stations on real PC/SC readers: each reader waits for a card, personalises it, reports,
//! and waits for the next one. Cards are known by their ICCID (a UICC profile) or their card
//! image number (GET DATA `0045`), so a card taken out mid-way (or caught by a crash) continues
//! when it comes back, on any station; a card that is not factory-fresh, or not of the
//! profile's card type, is never given a record.

use super::{Progress, Shared, conclude, journal_path, run_card};
use crate::error::{Error, Result};
use crate::journal::{self, Event, Status};
use crate::profile::CardType;
use crate::records::Record;
use card_wire::transport::TransportError;
use kagi::channel::CardChannel;
use kagi::gp;
use kagi::pcsc_transport::{PcscTransport, Share};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// How often an idle station looks at the batch's state while it waits for a card.
const POLL: Duration = Duration::from_millis(300);

/// Records waiting for a card: the fresh ones in order, and those caught mid-way by the card
/// they were claimed on.
pub(super) struct Work<'r> {
    pub(super) fresh: Mutex<VecDeque<&'r Record>>,
    pub(super) waiting: Mutex<HashMap<String, (&'r Record, Progress)>>,
    /// When a station last had a card to handle: with no fresh record left, stations wait
    /// for the cards caught mid-way until [`WAITING_GRACE`] has passed without a card.
    pub(super) last_card: Mutex<std::time::Instant>,
}

/// How long stations with only cards caught mid-way left wait for one of them to be put in a
/// reader (since the last card any station handled).
pub(super) const WAITING_GRACE: Duration = Duration::from_secs(120);

/// The card identity a Claim records for a reader station: `cin:HEX@READER` or
/// `iccid:DIGITS@READER`.
fn claim_name(card: &str, reader: &str) -> String {
    format!("{card}@{reader}")
}

/// The card a reader Claim names, `cin:HEX` or `iccid:DIGITS` (`None` for a simulated card's
/// image path).
pub(super) fn claimed_card(card: &str) -> Option<&str> {
    (card.starts_with("cin:") || card.starts_with("iccid:"))
        .then(|| card.split('@').next().unwrap_or(card))
}

/// No fresh record is left, and no card caught mid-way waits (or none came for
/// [`WAITING_GRACE`]): a resumed batch whose only work is such cards waits for them instead of
/// ending at once.
fn out_of_work(work: &Work<'_>) -> bool {
    if !work.fresh.lock().map(|q| q.is_empty()).unwrap_or(true) {
        return false;
    }
    let waiting = work.waiting.lock().map(|w| !w.is_empty()).unwrap_or(false);
    !waiting
        || work
            .last_card
            .lock()
            .map(|t| t.elapsed() > WAITING_GRACE)
            .unwrap_or(true)
}

/// Whether `e` means the conversation with the card was lost — the card or the reader went
/// away, pcscd restarted, the card went mute — rather than the card refusing something: the
/// card's state is unknown, so its record waits for the card to come back (and is checked on
/// the card then), and is never marked failed for it.
fn gone(e: &Error) -> bool {
    match e {
        Error::Card(kagi::Error::Transport(t)) => !matches!(
            t,
            TransportError::CommandTooLong { .. } | TransportError::ShortResponse(_)
        ),
        _ => false,
    }
}

/// One station: runs until there are no fresh records left.
pub(super) fn station(
    sh: &Shared<'_>,
    reader: &str,
    work: &Work<'_>,
    say: &(dyn Fn(String) + Sync),
    notify: &(dyn Fn(super::BatchEvent) + Sync),
) -> Result<()> {
    loop {
        if out_of_work(work) || sh.opts.stopping() {
            return Ok(());
        }
        let transport = match PcscTransport::wait_for_card(reader, Share::Exclusive, POLL) {
            Ok(t) => t,
            Err(TransportError::Timeout(_)) => continue,
            Err(e) => {
                let e = Error::from(e);
                if !gone(&e) {
                    return Err(e);
                }
                // Unplugged (or the card went at once): wait for the reader to come back.
                std::thread::sleep(POLL);
                continue;
            }
        };
        if let Ok(mut t) = work.last_card.lock() {
            *t = std::time::Instant::now();
        }
        let mut ch = CardChannel::new(transport);
        let (outcome, record) = match one_card(sh, &mut ch, reader, work) {
            Ok(handled) => {
                say(format!("{reader}: {}", handled.message));
                if handled.record.is_some() {
                    notify(super::BatchEvent::CardHandled);
                }
                (handled.outcome, handled.record)
            }
            Err(e) if gone(&e) => {
                say(format!("{reader}: lost the card: {e}"));
                // Before trying the reader again (the card may still be in it).
                std::thread::sleep(POLL);
                continue;
            }
            Err(e) => return Err(e),
        };
        drop(ch);
        if let Some(cmd) = &sh.opts.feeder_cmd {
            feed(cmd, reader, outcome, record.as_deref(), say);
        }
        loop {
            match PcscTransport::wait_for_removal(reader, POLL) {
                Ok(()) => break,
                Err(TransportError::Timeout(_)) if out_of_work(work) || sh.opts.stopping() => {
                    return Ok(());
                }
                Err(TransportError::Timeout(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The card's identity, or why the station refuses it: a UICC profile takes UICCs only and
/// knows them by ICCID, a smart-card profile takes other cards only and knows them by their
/// card image number.
fn card_identity(
    sh: &Shared<'_>,
    ch: &mut CardChannel<PcscTransport>,
) -> Result<std::result::Result<String, String>> {
    if let Err(why) = super::check_card_kind(sh.profile, ch) {
        return Ok(Err(why));
    }
    if sh.profile.card == CardType::Uicc {
        return Ok(match kagi::uicc::read_iccid(ch)? {
            Some(iccid) => Ok(format!("iccid:{iccid}")),
            None => {
                Err("the UICC has no readable EF.ICCID: kagi cannot track it; remove it".into())
            }
        });
    }
    gp::select_domain(ch, None)?;
    Ok(match gp::card_image_number(ch)? {
        Some(cin) => Ok(format!("cin:{cin}")),
        None => Err(
            "the card has no card image number (GET DATA 0045): kagi cannot track it; remove it"
                .into(),
        ),
    })
}

/// Whether the card still answers to the transport keys (factory-fresh).
fn fresh(sh: &Shared<'_>, ch: &mut CardChannel<PcscTransport>) -> Result<bool> {
    match super::transport_session(ch, sh.keys, sh.profile, None) {
        Ok(_) => Ok(true),
        Err(e) if gone(&e) => Err(e),
        Err(_) => Ok(false),
    }
}

/// Runs the feeder command after a card: an automatic encoder ejects the card (to the output
/// or the reject bin, by `KAGI_OUTCOME`) and feeds the next one.
fn feed(
    cmd: &str,
    reader: &str,
    outcome: &str,
    record: Option<&str>,
    say: &(dyn Fn(String) + Sync),
) {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("KAGI_READER", reader)
        .env("KAGI_OUTCOME", outcome)
        .env("KAGI_RECORD", record.unwrap_or(""))
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => say(format!(
            "{reader}: feeder command failed ({s}): take the card out by hand"
        )),
        Err(e) => say(format!(
            "{reader}: feeder command did not start ({e}): take the card out by hand"
        )),
    }
}

/// What a station did with a card.
struct Handled {
    /// `done`, `rework`, `failed`, `waiting` (for the CA) or `refused` (no record given to
    /// the card).
    outcome: &'static str,
    /// The record, when one was given.
    record: Option<String>,
    /// What the operator is told.
    message: String,
}

fn refused(message: String) -> Result<Handled> {
    Ok(Handled {
        outcome: "refused",
        record: None,
        message,
    })
}

/// Handles the card in the reader; says what happened.
fn one_card(
    sh: &Shared<'_>,
    ch: &mut CardChannel<PcscTransport>,
    reader: &str,
    work: &Work<'_>,
) -> Result<Handled> {
    let cin = match card_identity(sh, ch)? {
        Ok(id) => id,
        Err(why) => return refused(why),
    };
    let waiting = work
        .waiting
        .lock()
        .map_err(|_| Error::Poisoned)?
        .remove(&cin);
    let (record, progress) = match waiting {
        Some(w) => w,
        None => {
            if !fresh(sh, ch)? {
                return refused(format!(
                    "card {cin} is not factory-fresh (transport keys refused) and no record waits for it: remove it"
                ));
            }
            let next = work.fresh.lock().map_err(|_| Error::Poisoned)?.pop_front();
            let Some(record) = next else {
                return refused(format!("card {cin}: no records left; remove it"));
            };
            sh.log(Event::Claim {
                record: record.id.clone(),
                card: claim_name(&cin, reader),
            })?;
            (record, Progress::default())
        }
    };
    let result = run_card(sh, ch, record, None, &progress)?;
    match result {
        Err(e) if gone(&e) || matches!(e, Error::AwaitingCa(_)) => {
            // Taken out mid-way, or waiting for the CA: the record waits for this card to
            // come back.
            let progress = match journal::replay(&journal_path(&sh.opts.out))?.remove(&record.id) {
                Some(Status::InProgress { steps, begun, .. }) => Progress { done: steps, begun },
                _ => Progress::default(),
            };
            work.waiting
                .lock()
                .map_err(|_| Error::Poisoned)?
                .insert(cin.clone(), (record, progress));
            match e {
                Error::AwaitingCa(why) => Ok(Handled {
                    outcome: "waiting",
                    record: Some(record.id.clone()),
                    message: format!(
                        "{} on card {cin}: {why}; remove the card and insert it again once the CA has answered",
                        record.id
                    ),
                }),
                e => Err(e),
            }
        }
        result => {
            let (outcome, detail) = match &result {
                Ok(()) => ("done", String::new()),
                Err(Error::NeedsRework(why)) => ("rework", format!(" ({why})")),
                Err(e) => ("failed", format!(" ({e})")),
            };
            conclude(sh, record, result)?;
            Ok(Handled {
                outcome,
                record: Some(record.id.clone()),
                message: format!(
                    "{} on card {cin}: {outcome}{detail}; remove the card",
                    record.id
                ),
            })
        }
    }
}

/// A card in a reader keeps its own state: nothing to save.
impl super::Checkpoint for kagi::pcsc_transport::PcscTransport {
    fn checkpoint(&self, _path: &std::path::Path) -> Result<()> {
        Ok(())
    }
}
