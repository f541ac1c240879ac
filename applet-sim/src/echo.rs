//! A minimal test applet: echoes data and produces responses of any length, so that hosts can
//! exercise chaining, extended length and GET RESPONSE against the simulator.

use crate::applet::{Applet, AppletContext};
use card_wire::apdu::{Command, Response};
use card_wire::sw::StatusWord;

/// AID of the echo applet (`F0` proprietary RID, "KAGI", 01).
pub const ECHO_AID: [u8; 6] = [0xF0, 0x4B, 0x41, 0x47, 0x49, 0x01];

/// `80 10`: return the command data.
pub const INS_ECHO: u8 = 0x10;
/// `80 12 P1 P2`: return P1‖P2 bytes of a counting pattern.
pub const INS_PATTERN: u8 = 0x12;

/// The echo applet.
#[derive(Debug, Default)]
pub struct EchoApplet;

impl Applet for EchoApplet {
    fn select(&mut self, _ctx: &mut AppletContext<'_>) -> Result<Vec<u8>, StatusWord> {
        Ok(Vec::new())
    }

    fn process(
        &mut self,
        cmd: &Command,
        _ctx: &mut AppletContext<'_>,
    ) -> Result<Response, StatusWord> {
        match (cmd.class().is_proprietary(), cmd.ins()) {
            (true, INS_ECHO) => Ok(Response::success(cmd.data())),
            (true, INS_PATTERN) => {
                let n = u16::from_be_bytes([cmd.p1(), cmd.p2()]) as usize;
                Ok(Response::success(
                    (0..n).map(|i| i as u8).collect::<Vec<_>>(),
                ))
            }
            (false, _) => Err(StatusWord::CLA_NOT_SUPPORTED),
            _ => Err(StatusWord::INS_NOT_SUPPORTED),
        }
    }

    fn extended_length(&self) -> bool {
        true
    }
}
