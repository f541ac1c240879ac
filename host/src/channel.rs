//! The APDU pipeline above the transport seam, written once for every transport: extended
//! length when the transport carries it, command chaining when it does not, GET RESPONSE for
//! `61xx`, a resend with the right Le for `6Cxx`, and the redacting trace. Each command and
//! everything it takes (chained parts, GET RESPONSEs) runs in one exclusive use of the card
//! (a PC/SC transaction).

use crate::error::{Error, Result};
use crate::trace::{Layer, TraceSink, render_command, render_response};
use card_wire::apdu::{Class, Command, LengthForm, Response};
use card_wire::transport::{Capabilities, ResetKind, SendApdu, Transport};

/// Anything that exchanges whole commands for whole responses: a plain [`CardChannel`] or a
/// secure channel on top of one.
pub trait ApduChannel {
    /// Sends a command and returns the complete response.
    fn transmit(&mut self, cmd: &Command) -> Result<Response>;
}

/// Upper bound of GET RESPONSE rounds for one command, so a card that answers `61xx` forever
/// cannot hang the host.
pub const MAX_GET_RESPONSE: usize = 1024;

type Trace = Option<Box<dyn TraceSink>>;

/// A card reached through a transport, with ISO 7816 recovery and tracing.
pub struct CardChannel<T: Transport> {
    transport: T,
    trace: Trace,
    caps: Capabilities,
}

impl<T: Transport> CardChannel<T> {
    /// Wraps a transport.
    pub fn new(transport: T) -> Self {
        let caps = transport.capabilities();
        CardChannel {
            transport,
            trace: None,
            caps,
        }
    }

    /// Sends every exchange to `sink`, secrets redacted.
    pub fn with_trace(mut self, sink: Box<dyn TraceSink>) -> Self {
        self.trace = Some(sink);
        self
    }

    /// Sets or removes the trace sink.
    pub fn set_trace(&mut self, sink: Option<Box<dyn TraceSink>>) {
        self.trace = sink;
    }

    /// Limits what the pipeline assumes the transport carries (reader quirks, tests).
    pub fn limit_capabilities(&mut self, caps: Capabilities) {
        self.caps = caps;
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Gives the transport back.
    pub fn into_transport(self) -> T {
        self.transport
    }

    /// The transport, mutably.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Resets the card; returns the ATR.
    pub fn reset(&mut self, kind: ResetKind) -> Result<Vec<u8>> {
        let atr = self.transport.reset(kind)?;
        self.trace_line(&format!("-- reset, ATR {}", hex::encode_upper(&atr)));
        Ok(atr)
    }

    /// Writes a line to the trace, if any.
    pub fn trace_line(&mut self, line: &str) {
        if let Some(t) = self.trace.as_mut() {
            t.line(line);
        }
    }

    /// Emits the rendered lines of a secured exchange (used by secure channels above).
    pub(crate) fn trace_secure(&mut self, cmd: &Command, resp: Option<&Response>) {
        if self.trace.is_none() {
            return;
        }
        let line = match resp {
            None => render_command(Layer::Secure, cmd),
            Some(r) => render_response(Layer::Secure, cmd, r),
        };
        self.trace_line(&line);
    }
}

/// One command's exchanges on the wire, inside one exclusive use of the card.
struct Wire<'w, 's> {
    send: &'w mut SendApdu<'s>,
    trace: &'w mut Trace,
    caps: Capabilities,
}

impl Wire<'_, '_> {
    fn line(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            t.line(&line());
        }
    }

    /// One exchange, traced.
    fn exchange(&mut self, cmd: &Command) -> Result<Response> {
        let bytes = if self.caps.extended_length {
            cmd.to_bytes()
        } else {
            cmd.to_short_bytes()?
        };
        if bytes.len() > self.caps.max_command {
            return Err(Error::CommandTooLong(format!(
                "a {}-byte command exceeds the transport's {} bytes",
                bytes.len(),
                self.caps.max_command
            )));
        }
        self.line(|| render_command(Layer::Wire, cmd));
        let raw = (self.send)(&bytes)?;
        let resp = Response::parse(&raw)
            .map_err(|_| card_wire::TransportError::ShortResponse(raw.len()))?;
        self.line(|| render_response(Layer::Wire, cmd, &resp));
        Ok(resp)
    }

    /// Sends one (unchained) command, resending on `6Cxx` and collecting `61xx` data.
    fn exchange_recovering(&mut self, cmd: &Command) -> Result<Response> {
        let mut resp = self.exchange(cmd)?;
        if let Some(le) = resp.sw.correct_le()
            && cmd.ne().is_some()
        {
            let again = cmd.clone().with_le(le)?;
            resp = self.exchange(&again)?;
        }
        let mut data = std::mem::take(&mut resp.data);
        let mut sw = resp.sw;
        let mut rounds = 0;
        while let Some(n) = sw.bytes_available() {
            rounds += 1;
            if rounds > MAX_GET_RESPONSE {
                return Err(Error::EndlessResponse(MAX_GET_RESPONSE));
            }
            let channel = cmd.class().channel().unwrap_or(0);
            let class = Class(0x00).with_channel(channel)?;
            let gr = Command::new(0x00, 0xC0, 0x00, 0x00)
                .with_class(class)
                .with_le(n)?;
            let gr = if cmd.is_sensitive() {
                gr.sensitive()
            } else {
                gr
            };
            let mut r = self.exchange(&gr)?;
            if let Some(le) = r.sw.correct_le() {
                r = self.exchange(&gr.with_le(le)?)?;
            }
            data.extend_from_slice(&r.data);
            sw = r.sw;
        }
        Ok(Response::new(data, sw))
    }

    /// Splits a command whose data does not fit one short APDU into a chain (CLA bit `10` on
    /// all but the last), keeping every other CLA bit (channel, secure messaging).
    fn chained(&mut self, cmd: &Command) -> Result<Response> {
        let blocks: Vec<&[u8]> = cmd.data().chunks(255).collect();
        let last = blocks.len().saturating_sub(1);
        for (i, block) in blocks.iter().enumerate() {
            let more = i < last;
            let mut part = Command::new(0, cmd.ins(), cmd.p1(), cmd.p2())
                .with_class(cmd.class().with_chaining(more))
                .with_data(block.to_vec())?;
            if cmd.is_sensitive() {
                part = part.sensitive();
            }
            if more {
                let r = self.exchange(&part)?;
                if !r.sw.is_success() {
                    return Ok(r);
                }
            } else {
                let ne = cmd.ne().map(|n| n.min(256));
                return self.exchange_recovering(&part.with_ne(ne)?);
            }
        }
        Err(Error::Protocol("empty command chain".into()))
    }

    fn transmit(&mut self, cmd: &Command) -> Result<Response> {
        if !cmd.is_extended() || self.caps.extended_length {
            return self.exchange_recovering(cmd);
        }
        if cmd.data().len() > 255 {
            return self.chained(cmd);
        }
        // Short data but Ne > 256: ask for 256 and collect the rest with GET RESPONSE.
        let short = cmd
            .clone()
            .with_form(LengthForm::Auto)
            .with_ne(cmd.ne().map(|n| n.min(256)))?;
        self.exchange_recovering(&short)
    }
}

impl<T: Transport> ApduChannel for CardChannel<T> {
    fn transmit(&mut self, cmd: &Command) -> Result<Response> {
        let caps = self.caps;
        let trace = &mut self.trace;
        let mut out: Option<Result<Response>> = None;
        self.transport.exclusive(&mut |send| {
            let mut wire = Wire { send, trace, caps };
            out = Some(wire.transmit(cmd));
            Ok(())
        })?;
        out.unwrap_or_else(|| Err(Error::Protocol("the transport ran no exchange".into())))
    }
}

impl<C: ApduChannel + ?Sized> ApduChannel for &mut C {
    fn transmit(&mut self, cmd: &Command) -> Result<Response> {
        (**self).transmit(cmd)
    }
}
