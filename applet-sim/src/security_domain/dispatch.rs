//! The security domain as an applet: SELECT, command routing by INS, secure messaging around
//! every command of an open session.

use super::setup::*;
use super::state::{SdCtx, SecurityDomain};
use crate::applet::{Applet, AppletContext, CHANNELS};
use crate::registry::{self, card_state};
use crate::timing::CardOp;
use card_wire::apdu::{Command, Response};

impl SecurityDomain {
    pub(super) fn handle(
        &mut self,
        cmd: &Command,
        ctx: &mut SdCtx<'_>,
        authenticated: bool,
    ) -> Result<Response, Sw> {
        let ins = cmd.ins();
        if matches!(ins, 0xCA | 0xCB) {
            return self.get_data(cmd, ctx.store);
        }
        if registry::card_life_cycle(ctx.store) == card_state::TERMINATED {
            return Err(Sw::CONDITIONS_NOT_SATISFIED);
        }
        if !cmd.class().is_proprietary() {
            return Err(Sw::CLA_NOT_SUPPORTED);
        }
        if !matches!(ins, 0xF2 | 0xD8 | 0xE6 | 0xE8 | 0xE4 | 0xF0 | 0xE2) {
            return Err(Sw::INS_NOT_SUPPORTED);
        }
        if !authenticated {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        match ins {
            0xF2 => self.get_status(cmd, ctx),
            0xD8 => self.put_key(cmd, ctx),
            0xE6 => self.install(cmd, ctx),
            0xE8 => self.load(cmd, ctx),
            0xE4 => self.delete(cmd, ctx),
            0xF0 => self.set_status(cmd, ctx),
            _ => self.store_data(cmd, ctx),
        }
    }

    /// A command on a channel: the handshake, or a command inside or outside a session.
    fn process_sd(&mut self, cmd: &Command, ctx: &mut SdCtx<'_>) -> Result<Response, Sw> {
        let ch = ctx.channel as usize;
        if cmd.class().is_proprietary() {
            match cmd.ins() {
                0x50 => return self.initialize_update(cmd, ctx),
                0x82 => return self.external_authenticate(cmd, ctx),
                _ => {}
            }
        }
        // Anything but EXTERNAL AUTHENTICATE after INITIALIZE UPDATE abandons the handshake.
        self.pending[ch] = None;
        let Some(session) = self.sessions[ch].as_mut() else {
            if cmd.class().has_secure_messaging() {
                return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
            }
            return self.handle(cmd, ctx, false);
        };
        // The chip's AES work: C-MAC (and decryption) of the command, R-MAC (and encryption)
        // of the answer, about two passes over each.
        let blocks = |n: usize| u32::try_from(2 * (n / 16 + 1)).unwrap_or(u32::MAX);
        ctx.store.charge(CardOp::Aes {
            blocks: blocks(cmd.data().len()),
        });
        let plain = match session.scp.unwrap_command(cmd) {
            Ok(p) => p,
            Err(sw) => {
                // A security error aborts the session (Amendment D 5.6).
                self.end_session(ch);
                return Err(sw);
            }
        };
        let resp = match self.handle(&plain, ctx, true) {
            Ok(r) => r,
            Err(sw) => Response::status(sw),
        };
        let Some(session) = self.sessions[ch].as_mut() else {
            return Ok(resp);
        };
        ctx.store.charge(CardOp::Aes {
            blocks: blocks(resp.data.len()),
        });
        session.scp.wrap_response(&resp)
    }
}

/// The security domain's view of the card: the whole memory, which only a privileged class
/// gets (a security domain registered under another name as a plain application is refused).
fn sd_context<'c>(ctx: &'c mut AppletContext<'_>) -> Result<SdCtx<'c>, Sw> {
    let store = ctx.store.whole_card().ok_or(Sw::CONDITIONS_NOT_SATISFIED)?;
    Ok(SdCtx {
        channel: ctx.channel,
        aid: ctx.aid,
        rng: &mut *ctx.rng,
        store,
        registry: ctx.registry,
        others: &mut *ctx.others,
        classes: ctx.classes,
    })
}

impl Applet for SecurityDomain {
    fn select(&mut self, ctx: &mut AppletContext<'_>) -> Result<Vec<u8>, Sw> {
        self.end_session(ctx.channel as usize);
        let sd = sd_context(ctx)?;
        Ok(self.fci(sd.store))
    }

    fn deselect(&mut self, ctx: &mut AppletContext<'_>) {
        self.end_session(usize::from(ctx.channel));
    }

    fn process(&mut self, cmd: &Command, ctx: &mut AppletContext<'_>) -> Result<Response, Sw> {
        let mut sd = sd_context(ctx)?;
        self.process_sd(cmd, &mut sd)
    }

    fn reset(&mut self) {
        for ch in 0..CHANNELS {
            self.end_session(ch);
        }
        self.load = None;
    }

    fn extended_length(&self) -> bool {
        true
    }

    fn multi_selectable(&self) -> bool {
        true
    }
}
