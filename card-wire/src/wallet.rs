//! The ID wallet applet's interface, shared by the card (`applet-sim`) and the TSM that
//! writes provider data into it (member ids, tickets, point balances).
//!
//! Updates arrive as STORE DATA through the provider's security domain (so under SCP03), one
//! item per update: `D0 { id(8) ‖ kind(1) ‖ value }`. The card applies the whole script in
//! one transaction, or nothing, and skips an update whose id it has already applied, so a
//! script delivered twice changes the wallet once. It answers with a [`Summary`]. A terminal
//! reads the same summary with `80 CA 00 D0` (no PIN: it is what a shop counter shows).

use crate::tlv::{self, Tag};

/// The wallet load file (package) AID.
pub const WALLET_PACKAGE: [u8; 7] = [0xF0, 0x4B, 0x41, 0x47, 0x49, 0x57, 0x4C];
/// The wallet module AID.
pub const WALLET_MODULE: [u8; 8] = [0xF0, 0x4B, 0x41, 0x47, 0x49, 0x57, 0x4C, 0x01];
/// The simulator class of the module.
pub const WALLET_CLASS: &str = "kagi.wallet";

/// Tag of one update item.
pub const ITEM_UPDATE: u32 = 0xD0;
/// Tag of the summary.
pub const TAG_SUMMARY: u32 = 0xE1;
/// Longest member id or ticket, bytes.
pub const MAX_TEXT: usize = 32;
/// Most tickets held.
pub const MAX_TICKETS: usize = 16;
/// How many applied update ids the card remembers.
pub const REMEMBERED: usize = 64;

/// Update kinds.
pub mod kind {
    /// Set the member id (UTF-8).
    pub const SET_MEMBER: u8 = 0x01;
    /// Add a ticket (UTF-8).
    pub const ADD_TICKET: u8 = 0x02;
    /// Remove a ticket (UTF-8).
    pub const REMOVE_TICKET: u8 = 0x03;
    /// Add points (signed 32-bit big-endian; the balance never goes below zero).
    pub const POINTS: u8 = 0x04;
}

/// One update item.
pub fn update_item(id: &[u8; 8], kind: u8, value: &[u8]) -> Vec<u8> {
    let mut v = id.to_vec();
    v.push(kind);
    v.extend_from_slice(value);
    tlv::tlv(ITEM_UPDATE, &v)
}

/// What the wallet holds, and what became of each update of the last script.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Point balance.
    pub points: u32,
    /// Member id.
    pub member: String,
    /// Tickets held.
    pub tickets: Vec<String>,
    /// Per update of the script answered: `true` applied now, `false` already applied
    /// before (empty when read by a terminal).
    pub applied: Vec<bool>,
}

impl Summary {
    /// `E1 { 80 points, 81 member, 82 tickets (each length-prefixed), 86 outcomes }`.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = tlv::tlv(0x80, &self.points.to_be_bytes());
        body.extend(tlv::tlv(0x81, self.member.as_bytes()));
        let mut t = Vec::new();
        for x in &self.tickets {
            t.push(x.len() as u8);
            t.extend_from_slice(x.as_bytes());
        }
        body.extend(tlv::tlv(0x82, &t));
        let outcomes: Vec<u8> = self
            .applied
            .iter()
            .map(|a| if *a { 1 } else { 2 })
            .collect();
        body.extend(tlv::tlv(0x86, &outcomes));
        tlv::tlv(TAG_SUMMARY, &body)
    }

    /// Parses a summary; `None` when it is not one.
    pub fn parse(data: &[u8]) -> Option<Summary> {
        let e1 = tlv::find(data, Tag(TAG_SUMMARY)).ok()??;
        let get = |t: u32| e1.find(Tag(t)).ok().flatten().map(|x| x.value);
        let points = u32::from_be_bytes(get(0x80)?.try_into().ok()?);
        let member = String::from_utf8(get(0x81)?.to_vec()).ok()?;
        let mut tickets = Vec::new();
        let mut rest = get(0x82)?;
        while let [n, tail @ ..] = rest {
            let n = usize::from(*n);
            if tail.len() < n {
                return None;
            }
            tickets.push(String::from_utf8(tail[..n].to_vec()).ok()?);
            rest = &tail[n..];
        }
        let applied = get(0x86)?
            .iter()
            .map(|b| match b {
                1 => Some(true),
                2 => Some(false),
                _ => None,
            })
            .collect::<Option<Vec<bool>>>()?;
        Some(Summary {
            points,
            member,
            tickets,
            applied,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn summary_round_trip() {
        let s = Summary {
            points: 1200,
            member: "M-0001".into(),
            tickets: vec!["SEAT 12A".into(), "".into()],
            applied: vec![true, false],
        };
        assert_eq!(Summary::parse(&s.encode()), Some(s));
        assert_eq!(Summary::parse(&[0xE1, 0x00]), None);
    }

    proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..60)) {
            let _ = Summary::parse(&b);
        }
    }
}
