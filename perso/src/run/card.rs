//! One card's course, whatever the station: personalise or continue it, verify it, and
//! journal the outcome (simulated stations and reader stations both use these).

use super::*;
use crate::error::Result;
use crate::journal::Event;
use crate::records::Record;
use kagi::channel::CardChannel;

/// Personalises (or continues) and verifies one card, with its APDU log if asked for.
/// `Err` only for a log that cannot be written; the card's own outcome is the inner result.
pub(super) fn run_card<T: Checkpoint>(
    sh: &Shared<'_>,
    ch: &mut CardChannel<T>,
    record: &Record,
    image: Option<&Path>,
    progress: &Progress,
) -> Result<Result<()>> {
    if let Some(dir) = &sh.opts.card_logs {
        let log = kagi::trace::FileTrace::create(&dir.join(format!("{}.log", record.id)))?;
        ch.set_trace(Some(Box::new(log)));
    }
    let result = if progress.done.is_empty() && progress.begun.is_empty() {
        personalise(sh, ch, record, image, progress).and_then(|issued| {
            if let Some(i) = &issued {
                verify_jpki(ch, i)?;
            }
            verify(ch, sh.profile, sh.keys)
        })
    } else {
        resume_card(sh, ch, record, image, progress)
    };
    ch.set_trace(None);
    Ok(result)
}

/// Journals a card's outcome.
pub(super) fn conclude(sh: &Shared<'_>, record: &Record, result: Result<()>) -> Result<()> {
    match result {
        Ok(()) => sh.log(Event::Done {
            record: record.id.clone(),
        }),
        // Nothing to journal: the card stays in progress until the CA has answered.
        Err(Error::AwaitingCa(_)) => Ok(()),
        Err(Error::NeedsRework(reason)) => sh.log(Event::Rework {
            record: record.id.clone(),
            reason,
        }),
        Err(e) => sh.log(Event::Failed {
            record: record.id.clone(),
            reason: e.to_string(),
        }),
    }
}

/// Continues a card caught mid-way. A card that already passes verification is done; one
/// whose production keys are in place only lacks its final state; otherwise the steps the
/// journal does not show as done run again, with the card checked first where it can be.
pub(super) fn resume_card<T: Checkpoint>(
    sh: &Shared<'_>,
    ch: &mut CardChannel<T>,
    record: &Record,
    path: Option<&Path>,
    progress: &Progress,
) -> Result<()> {
    if verify(ch, sh.profile, sh.keys).is_ok() {
        return Ok(());
    }
    // The production keys open a session: every earlier step was journaled before put-key
    // began, so only the final state may be missing.
    if let Ok(mut sc) = production_session(ch, sh.profile, sh.keys) {
        final_state(sh, &mut sc, path)?;
        drop(sc);
        return verify(ch, sh.profile, sh.keys);
    }
    if let Some(issued) = personalise(sh, ch, record, path, progress)? {
        verify_jpki(ch, &issued)?;
    }
    verify(ch, sh.profile, sh.keys)
}
