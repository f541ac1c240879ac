//! A scripted transport for tests: each expected command is answered with a canned response,
//! and an unexpected command is reported instead of answered.

use card_wire::transport::{Capabilities, ResetKind, Transport, TransportError};
use std::collections::VecDeque;

/// A transport that replays a script of (expected command, response) pairs.
#[derive(Debug, Default)]
pub struct ScriptedTransport {
    script: VecDeque<(Vec<u8>, Vec<u8>)>,
    caps: Option<Capabilities>,
    /// Every command received, in order.
    pub sent: Vec<Vec<u8>>,
}

impl ScriptedTransport {
    /// An empty script (short APDUs only).
    pub fn new() -> Self {
        Self::default()
    }

    /// Expects `command` next and answers `response` (hex strings, spaces allowed).
    pub fn expect(mut self, command: &str, response: &str) -> Self {
        let h = |s: &str| hex::decode(s.replace(' ', "")).unwrap_or_default();
        self.script.push_back((h(command), h(response)));
        self
    }

    /// Announces extended-length support.
    pub fn extended(mut self) -> Self {
        self.caps = Some(Capabilities::EXTENDED);
        self
    }

    /// Whether every scripted exchange happened.
    pub fn finished(&self) -> bool {
        self.script.is_empty()
    }
}

impl Transport for ScriptedTransport {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.sent.push(command.to_vec());
        match self.script.pop_front() {
            Some((want, resp)) if want == command => Ok(resp),
            Some((want, _)) => Err(TransportError::Other(format!(
                "script expected {} but got {}",
                hex::encode_upper(want),
                hex::encode_upper(command)
            ))),
            None => Err(TransportError::Other(format!(
                "script exhausted at {}",
                hex::encode_upper(command)
            ))),
        }
    }

    fn reset(&mut self, _kind: ResetKind) -> Result<Vec<u8>, TransportError> {
        Ok(vec![0x3B, 0x00])
    }

    fn atr(&self) -> Option<Vec<u8>> {
        Some(vec![0x3B, 0x00])
    }

    fn capabilities(&self) -> Capabilities {
        self.caps.unwrap_or(Capabilities::SHORT)
    }

    fn describe(&self) -> String {
        "scripted".into()
    }
}
