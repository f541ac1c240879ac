//! A simulated station: one image file per card, new cards and resumed ones, the result of each card in the journal.

use super::*;
use crate::error::{Error, Result};
use crate::journal::{Event, Status};
use crate::profile::CardType;
use crate::records::Record;
use applet_sim::{SimCard, SimConfig};
use kagi::channel::CardChannel;
use std::path::Path;

/// A factory-fresh simulated card with the transport keys and its own key diversification
/// data and card number (from the record id, so every card differs).
pub(super) fn new_card(sh: &Shared<'_>, record: &Record) -> SimCard {
    let mut transport = sh.keys.transport.clone();
    transport.kvn = sh.profile.transport_kvn;
    let mut config = SimConfig::default();
    if scp02(sh.profile) {
        // 3DES schemes: the card speaks SCP02 (i=55), as the `gp-scp02` preset.
        config = config.scp02(card_wire::scp02::IParam02::I55);
    }
    let mut config = config.with_keys(vec![transport]);
    if sh.profile.card == CardType::Uicc {
        // A placeholder ICCID, replaced by one derived from the serial below.
        if let Ok(iccid) =
            card_wire::uicc::Iccid::with_check_digit(applet_sim::card::TEST_ICCID_BODY)
        {
            config = config.uicc(iccid);
        }
    }
    let config = config.with_serial(record.id.as_bytes());
    SimCard::powered(config)
}

/// Handles one record: a fresh card, or the inspection of a card caught mid-way.
pub(super) fn handle(sh: &Shared<'_>, record: &Record, previous: Option<&Status>) -> Result<()> {
    let path = card_path(&sh.opts.out, &record.id);
    let image = sh.opts.keep_images.then_some(path.as_path());
    let (mut ch, progress) = match previous {
        Some(Status::InProgress { steps, begun, .. }) if path.exists() => {
            let mut card = SimCard::from_image(&path, None)?;
            card.power_on();
            (
                CardChannel::new(card),
                Progress {
                    done: steps.clone(),
                    begun: begun.clone(),
                },
            )
        }
        _ => {
            let ch = CardChannel::new(new_card(sh, record));
            if sh.opts.keep_images {
                let dir = path.parent().unwrap_or(Path::new("."));
                std::fs::create_dir_all(dir).map_err(|source| Error::File {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            save(&ch, image)?;
            sh.log(Event::Claim {
                record: record.id.clone(),
                card: path.display().to_string(),
            })?;
            (ch, Progress::default())
        }
    };
    let result = run_card(sh, &mut ch, record, image, &progress)?;
    save(&ch, image)?;
    conclude(sh, record, result)
}

/// A simulated card's checkpoint is its image file.
impl Checkpoint for SimCard {
    fn checkpoint(&self, path: &Path) -> Result<()> {
        Ok(self.save_image(path)?)
    }
}

/// Where a simulated station keeps a record's card image.
fn card_path(out: &Path, id: &str) -> std::path::PathBuf {
    out.join("cards").join(format!("{id}.img"))
}
