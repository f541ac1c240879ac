//! The PIN-less eligibility read (資格確認) a medical or service counter performs: it reads
//! only what needs no PIN — the user-authentication certificate — checks who issued it,
//! whether it is revoked and whether it is valid now, and gives a verdict with reasons. It
//! never sends a VERIFY (the [`Counting`] channel refuses to), and it uses one card session
//! with the fewest commands.

use crate::channel::ApduChannel;
use crate::error::{Error, Result};
use crate::jpki;
use card_wire::apdu::{Command, Response};
use card_wire::sw::StatusWord;
use serde::Serialize;
use std::time::{Instant, SystemTime};

pub use kagi_certs::{Judgement, Trust, Verdict, judge};

/// An eligibility read's outcome: the certificate's [`Judgement`] (its fields are reached
/// through this report) and what the read cost.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The verdict on the certificate read.
    #[serde(flatten)]
    pub judgement: Judgement,
    /// Commands sent to the card.
    pub commands: usize,
    /// Time spent talking to the card, microseconds.
    pub card_micros: u64,
}

impl std::ops::Deref for Report {
    type Target = Judgement;
    fn deref(&self) -> &Judgement {
        &self.judgement
    }
}

impl std::ops::DerefMut for Report {
    fn deref_mut(&mut self) -> &mut Judgement {
        &mut self.judgement
    }
}

/// An [`ApduChannel`] that counts commands and refuses VERIFY, so a PIN can never be asked
/// for or spent by an eligibility read.
pub struct Counting<'c, C: ApduChannel> {
    inner: &'c mut C,
    /// Commands sent.
    pub commands: usize,
}

impl<C: ApduChannel> ApduChannel for Counting<'_, C> {
    fn transmit(&mut self, cmd: &Command) -> Result<Response> {
        if matches!(cmd.ins(), 0x20 | 0x21 | 0x24 | 0x2C) {
            return Err(Error::PinCommandRefused(cmd.ins()));
        }
        self.commands += 1;
        self.inner.transmit(cmd)
    }
}

/// Reads the card and judges it: SELECT the JPKI AP, SELECT EF 000A, READ BINARY (256
/// bytes, then the rest) — five commands for a typical certificate, no PIN.
pub fn read(ch: &mut impl ApduChannel, trust: &Trust, now: SystemTime) -> Result<Report> {
    let mut counting = Counting {
        inner: ch,
        commands: 0,
    };
    let start = Instant::now();
    let cert = match jpki::select(&mut counting) {
        Ok(()) => jpki::read_der(&mut counting, jpki::EF_AUTH_CERT),
        Err(e) => Err(e),
    };
    let micros = start.elapsed().as_micros() as u64;
    let judgement = match cert {
        Ok(der) => judge(&der, trust, now),
        Err(Error::Status {
            sw: StatusWord::NOT_FOUND,
            ..
        }) => {
            let mut r = judge(&[], trust, now);
            r.reasons =
                vec!["the card has no JPKI AP or no authentication certificate (6A82)".into()];
            r
        }
        Err(e) => return Err(e),
    };
    Ok(Report {
        judgement,
        commands: counting.commands,
        card_micros: micros,
    })
}
