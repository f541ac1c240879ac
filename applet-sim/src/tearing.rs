//! Helpers for tearing tests: a card that records its persistent memory after every command,
//! and the check that a torn command left the state of just before or just after it.

use crate::card::SimCard;
use crate::store::Store;
use card_wire::transport::{Capabilities, ResetKind, Transport, TransportError};

/// A simulated card that keeps a snapshot of its persistent memory after every answered
/// command (the snapshot before the first command is taken at construction).
pub struct RecordingCard {
    /// The card.
    pub card: SimCard,
    /// Persistent memory before the first command and after each answered one.
    pub snapshots: Vec<Store>,
}

impl RecordingCard {
    /// Wraps a (powered) card.
    pub fn new(card: SimCard) -> Self {
        let first = card.store().clone();
        RecordingCard {
            card,
            snapshots: vec![first],
        }
    }

    /// Commands answered so far.
    pub fn answered(&self) -> usize {
        self.snapshots.len() - 1
    }
}

impl Transport for RecordingCard {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let r = self.card.transmit(command);
        if r.is_ok() {
            self.snapshots.push(self.card.store().clone());
        }
        r
    }
    fn reset(&mut self, kind: ResetKind) -> Result<Vec<u8>, TransportError> {
        self.card.reset(kind)
    }
    fn atr(&self) -> Option<Vec<u8>> {
        self.card.atr()
    }
    fn capabilities(&self) -> Capabilities {
        self.card.capabilities()
    }
    fn describe(&self) -> String {
        "sim:recording".into()
    }
}

/// Whether `after` (the memory after power-up) equals the reference state before the torn
/// command (`reference[answered]`) or after it (`reference[answered + 1]`), leaving out the
/// objects named in `ignore` (e.g. a failure counter raised before a check by design).
pub fn old_or_new(after: &Store, reference: &[Store], answered: usize, ignore: &[&str]) -> bool {
    let norm = |s: &Store| {
        let mut s = s.clone();
        for k in ignore {
            let _ = s.remove(k);
        }
        s
    };
    let after = norm(after);
    let matches = |i: usize| {
        reference
            .get(i)
            .is_some_and(|s| after.same_content(&norm(s)))
    };
    matches(answered) || matches(answered + 1)
}
