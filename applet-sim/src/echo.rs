//! A small test applet: echoes data, produces responses of any length (for chaining, extended
//! length and GET RESPONSE), and keeps personalisation records in persistent memory (for
//! tearing tests of STORE DATA).

use crate::applet::{Applet, AppletContext};
use crate::class_table::{ClassError, ClassTable};
use card_wire::apdu::{Command, Response};
use card_wire::sw::StatusWord;

/// AID of the echo applet instance and module (`F0` proprietary RID, "KAGI", 01).
pub const ECHO_AID: [u8; 6] = [0xF0, 0x4B, 0x41, 0x47, 0x49, 0x01];
/// AID of the echo applet's load file (package).
pub const ECHO_PACKAGE: [u8; 5] = [0xF0, 0x4B, 0x41, 0x47, 0x49];

/// `80 10`: return the command data.
pub const INS_ECHO: u8 = 0x10;
/// `80 12 P1 P2`: return P1‖P2 bytes of a counting pattern.
pub const INS_PATTERN: u8 = 0x12;
/// `80 14 00 N`: read personalisation record N (`6A83` when absent).
pub const INS_READ_RECORD: u8 = 0x14;

/// The echo applet's class name.
pub const ECHO_CLASS: &str = "kagi.echo";

/// Registers the echo applet class.
pub fn register(table: &mut ClassTable) -> Result<(), ClassError> {
    table.register(ECHO_CLASS, |_| Ok(Box::new(EchoApplet)))
}

/// The echo applet. STORE DATA (through its security domain) appends a record: the record
/// and the record count are written in one transaction.
#[derive(Debug, Default)]
pub struct EchoApplet;

impl EchoApplet {
    fn count(ctx: &AppletContext<'_>) -> u8 {
        ctx.store
            .get("count")
            .and_then(|v| v.first().copied())
            .unwrap_or(0)
    }
}

impl Applet for EchoApplet {
    fn select(&mut self, _ctx: &mut AppletContext<'_>) -> Result<Vec<u8>, StatusWord> {
        Ok(Vec::new())
    }

    fn process(
        &mut self,
        cmd: &Command,
        ctx: &mut AppletContext<'_>,
    ) -> Result<Response, StatusWord> {
        match (cmd.class().is_proprietary(), cmd.ins()) {
            (true, INS_ECHO) => Ok(Response::success(cmd.data())),
            (true, INS_PATTERN) => {
                let n = u16::from_be_bytes([cmd.p1(), cmd.p2()]) as usize;
                Ok(Response::success(
                    (0..n).map(|i| i as u8).collect::<Vec<_>>(),
                ))
            }
            (true, INS_READ_RECORD) => match ctx.store.get(&format!("rec/{:02X}", cmd.p2())) {
                Some(v) => Ok(Response::success(v)),
                None => Err(StatusWord::RECORD_NOT_FOUND),
            },
            (false, _) => Err(StatusWord::CLA_NOT_SUPPORTED),
            _ => Err(StatusWord::INS_NOT_SUPPORTED),
        }
    }

    fn personalize(
        &mut self,
        cmd: &Command,
        ctx: &mut AppletContext<'_>,
    ) -> Result<Response, StatusWord> {
        if cmd.data().is_empty() {
            return Err(StatusWord::WRONG_LENGTH);
        }
        let n = Self::count(ctx);
        if n == 0xFF {
            return Err(StatusWord::NOT_ENOUGH_MEMORY);
        }
        let data = cmd.data().to_vec();
        ctx.store.atomically(|s| {
            s.put(&format!("rec/{n:02X}"), &data)?;
            s.put("count", &[n + 1])
        })?;
        Ok(Response::status(StatusWord::SUCCESS))
    }

    fn extended_length(&self) -> bool {
        true
    }
}
