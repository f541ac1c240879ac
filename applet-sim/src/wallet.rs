//! The ID wallet applet (`kagi.wallet`): a provider's member id, tickets and point balance,
//! written through the provider's security domain (STORE DATA under SCP03, see
//! `card_wire::wallet`), read by any terminal with `80 CA 00 D0`.
//!
//! A script of updates applies in one transaction: power cut anywhere leaves the wallet as
//! before the script or as after it, never half. Each update carries an id; ids already
//! applied are skipped (the card remembers the last 64), so a script delivered twice — a lost
//! answer, a resumed session — changes points once.

use crate::applet::{Applet, AppletContext};
use crate::class_table::{ClassError, ClassTable};
use card_wire::apdu::{Command, Response};
use card_wire::sw::StatusWord;
use card_wire::tlv;
use card_wire::wallet::{MAX_TEXT, MAX_TICKETS, REMEMBERED, Summary, kind};

type Sw = StatusWord;

/// Largest update script (all STORE DATA blocks of one INSTALL [for personalization]).
const MAX_SCRIPT: usize = 4096;

/// Registers the wallet applet class ([`card_wire::wallet::WALLET_CLASS`]).
pub fn register(table: &mut ClassTable) -> Result<(), ClassError> {
    table.register(card_wire::wallet::WALLET_CLASS, |_| {
        Ok(Box::new(WalletApplet::default()))
    })
}

/// The wallet applet; the script being received is its only transient state.
#[derive(Debug, Default)]
pub struct WalletApplet {
    script: Vec<u8>,
}

fn text(v: &[u8]) -> Result<String, Sw> {
    if v.len() > MAX_TEXT {
        return Err(Sw::WRONG_LENGTH);
    }
    String::from_utf8(v.to_vec()).map_err(|_| Sw::INCORRECT_DATA)
}

impl WalletApplet {
    fn summary(ctx: &AppletContext<'_>) -> Summary {
        let points = ctx
            .store
            .get("points")
            .and_then(|v| <[u8; 4]>::try_from(v).ok())
            .map(u32::from_be_bytes)
            .unwrap_or(0);
        let member = ctx
            .store
            .get("member")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let mut tickets = Vec::new();
        let mut rest = ctx.store.get("tickets").unwrap_or_default();
        while let [n, tail @ ..] = rest {
            let n = usize::from(*n).min(tail.len());
            tickets.push(String::from_utf8_lossy(&tail[..n]).into_owned());
            rest = &tail[n..];
        }
        Summary {
            points,
            member,
            tickets,
            applied: Vec::new(),
        }
    }

    fn applied_ids(ctx: &AppletContext<'_>) -> Vec<[u8; 8]> {
        ctx.store
            .get("applied")
            .unwrap_or_default()
            .chunks_exact(8)
            .filter_map(|c| <[u8; 8]>::try_from(c).ok())
            .collect()
    }

    /// Applies a whole script to `s` (in memory); the caller writes it in one transaction.
    fn apply(
        items: &[tlv::Tlv<'_>],
        s: &mut Summary,
        applied: &mut Vec<[u8; 8]>,
    ) -> Result<(), Sw> {
        for item in items {
            if item.tag.0 != card_wire::wallet::ITEM_UPDATE || item.value.len() < 9 {
                return Err(Sw::INCORRECT_DATA);
            }
            let (id, rest) = item.value.split_at(8);
            let id = <[u8; 8]>::try_from(id).map_err(|_| Sw::INCORRECT_DATA)?;
            let (k, value) = (rest[0], &rest[1..]);
            if applied.contains(&id) {
                s.applied.push(false);
                continue;
            }
            match k {
                kind::SET_MEMBER => s.member = text(value)?,
                kind::ADD_TICKET => {
                    if s.tickets.len() >= MAX_TICKETS {
                        return Err(Sw::NOT_ENOUGH_MEMORY);
                    }
                    s.tickets.push(text(value)?);
                }
                kind::REMOVE_TICKET => {
                    let t = text(value)?;
                    let at = s
                        .tickets
                        .iter()
                        .position(|x| *x == t)
                        .ok_or(Sw::REFERENCED_DATA_NOT_FOUND)?;
                    s.tickets.remove(at);
                }
                kind::POINTS => {
                    let d = i32::from_be_bytes(value.try_into().map_err(|_| Sw::WRONG_LENGTH)?);
                    let new = i64::from(s.points) + i64::from(d);
                    s.points = u32::try_from(new).map_err(|_| Sw::CONDITIONS_NOT_SATISFIED)?;
                }
                _ => return Err(Sw::INCORRECT_DATA),
            }
            applied.push(id);
            if applied.len() > REMEMBERED {
                applied.remove(0);
            }
            s.applied.push(true);
        }
        Ok(())
    }

    fn write(ctx: &mut AppletContext<'_>, s: &Summary, applied: &[[u8; 8]]) -> Result<(), Sw> {
        let mut tickets = Vec::new();
        for t in &s.tickets {
            tickets.push(t.len() as u8);
            tickets.extend_from_slice(t.as_bytes());
        }
        let ids: Vec<u8> = applied.iter().flatten().copied().collect();
        for (what, value) in [
            ("points", s.points.to_be_bytes().to_vec()),
            ("member", s.member.as_bytes().to_vec()),
            ("tickets", tickets),
            ("applied", ids),
        ] {
            ctx.store.put(what, &value)?;
        }
        Ok(())
    }
}

impl Applet for WalletApplet {
    fn select(&mut self, _ctx: &mut AppletContext<'_>) -> Result<Vec<u8>, Sw> {
        Ok(Vec::new())
    }

    fn process(&mut self, cmd: &Command, ctx: &mut AppletContext<'_>) -> Result<Response, Sw> {
        match (cmd.class().is_proprietary(), cmd.ins(), cmd.p1(), cmd.p2()) {
            (true, 0xCA, 0x00, 0xD0) => Ok(Response::success(Self::summary(ctx).encode())),
            (true, 0xCA, _, _) => Err(Sw::REFERENCED_DATA_NOT_FOUND),
            (false, _, _, _) => Err(Sw::CLA_NOT_SUPPORTED),
            _ => Err(Sw::INS_NOT_SUPPORTED),
        }
    }

    /// Blocks are collected until the last one (P1 bit `80`); then the script applies in
    /// one transaction, or not at all, and the answer is the summary.
    fn personalize(&mut self, cmd: &Command, ctx: &mut AppletContext<'_>) -> Result<Response, Sw> {
        if self.script.len() + cmd.data().len() > MAX_SCRIPT {
            self.script.clear();
            return Err(Sw::NOT_ENOUGH_MEMORY);
        }
        self.script.extend_from_slice(cmd.data());
        if cmd.p1() & 0x80 == 0 {
            return Ok(Response::status(Sw::SUCCESS));
        }
        let script = std::mem::take(&mut self.script);
        let items = tlv::parse_all(&script).map_err(|_| Sw::INCORRECT_DATA)?;
        if items.is_empty() {
            return Err(Sw::WRONG_LENGTH);
        }
        let mut s = Self::summary(ctx);
        let mut applied = Self::applied_ids(ctx);
        Self::apply(&items, &mut s, &mut applied)?;
        ctx.store.begin();
        if let Err(sw) = Self::write(ctx, &s, &applied) {
            ctx.store.abort();
            return Err(sw);
        }
        ctx.store.commit()?;
        Ok(Response::success(s.encode()))
    }

    fn reset(&mut self) {
        self.script.clear();
    }
}
