//! PC/SC readers through the `pcsc` crate (feature `pcsc`).
//!
//! Readers are picked by index or by a case-insensitive name substring, never "the first one"
//! silently when several match. A card reset by another application is detected: the transport
//! reconnects and reports it once through [`Transport::take_reset_notice`] and a
//! [`TransportError::CardReset`], so the caller re-selects and re-opens secure channels instead
//! of sending a command into the wrong context.

use card_wire::transport::{Capabilities, ResetKind, SendApdu, Transport, TransportError};
use std::ffi::CString;
use std::time::{Duration, Instant};

/// Shared or exclusive access to a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Share {
    /// Other applications may use the card between our transactions.
    #[default]
    Shared,
    /// Nobody else may use the card while we are connected.
    Exclusive,
}

impl Share {
    fn mode(self) -> pcsc::ShareMode {
        match self {
            Share::Shared => pcsc::ShareMode::Shared,
            Share::Exclusive => pcsc::ShareMode::Exclusive,
        }
    }
}

/// A reader as PC/SC lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReaderInfo {
    /// Position in the list (what `--reader INDEX` means).
    pub index: usize,
    /// The reader's name.
    pub name: String,
    /// Whether a card is present.
    pub card_present: bool,
    /// The card's ATR, when present.
    pub atr: Option<String>,
}

fn other(e: pcsc::Error) -> TransportError {
    match e {
        pcsc::Error::NoService | pcsc::Error::ServiceStopped | pcsc::Error::CommError => {
            TransportError::ServiceUnavailable(e.to_string())
        }
        pcsc::Error::NoReadersAvailable => TransportError::Other("no PC/SC readers".into()),
        _ => TransportError::Other(e.to_string()),
    }
}

fn context() -> Result<pcsc::Context, TransportError> {
    pcsc::Context::establish(pcsc::Scope::User).map_err(other)
}

fn reader_names(ctx: &pcsc::Context) -> Result<Vec<CString>, TransportError> {
    match ctx.list_readers_owned() {
        Ok(v) => Ok(v),
        Err(pcsc::Error::NoReadersAvailable) => Ok(Vec::new()),
        Err(e) => Err(other(e)),
    }
}

/// Lists the readers and whether each holds a card.
pub fn list_readers() -> Result<Vec<ReaderInfo>, TransportError> {
    let ctx = context()?;
    let names = reader_names(&ctx)?;
    let mut states: Vec<pcsc::ReaderState> = names
        .iter()
        .map(|n| pcsc::ReaderState::new(n.clone(), pcsc::State::UNAWARE))
        .collect();
    if !states.is_empty() {
        ctx.get_status_change(Duration::from_millis(0), &mut states)
            .or_else(|e| {
                if e == pcsc::Error::Timeout {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(other)?;
    }
    Ok(states
        .iter()
        .enumerate()
        .map(|(index, s)| {
            let present = s.event_state().contains(pcsc::State::PRESENT);
            ReaderInfo {
                index,
                name: s.name().to_string_lossy().into_owned(),
                card_present: present,
                atr: present.then(|| hex::encode_upper(s.atr())),
            }
        })
        .collect())
}

/// Resolves a selector (index or name substring) to exactly one reader name.
pub fn resolve_reader(selector: &str) -> Result<CString, TransportError> {
    let ctx = context()?;
    let names = reader_names(&ctx)?;
    let shown = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{i}: {}", n.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(", ");
    let available = if shown.is_empty() {
        "none".to_string()
    } else {
        shown
    };
    if let Ok(i) = selector.parse::<usize>() {
        return names.get(i).cloned().ok_or(TransportError::NoSuchReader {
            selector: selector.into(),
            available,
        });
    }
    let needle = selector.to_lowercase();
    let hits: Vec<&CString> = names
        .iter()
        .filter(|n| n.to_string_lossy().to_lowercase().contains(&needle))
        .collect();
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(TransportError::NoSuchReader {
            selector: selector.into(),
            available,
        }),
        _ => Err(TransportError::AmbiguousReader {
            selector: selector.into(),
            matches: names
                .iter()
                .enumerate()
                .filter(|(_, n)| n.to_string_lossy().to_lowercase().contains(&needle))
                .map(|(i, n)| format!("{i}: {}", n.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// A card in a PC/SC reader.
pub struct PcscTransport {
    // Field order: the card must be dropped before its context.
    card: pcsc::Card,
    _ctx: pcsc::Context,
    reader: CString,
    share: Share,
    atr: Vec<u8>,
    caps: Capabilities,
    reset_notice: bool,
}

impl PcscTransport {
    /// Connects to the card in the reader `selector` (index or name substring).
    pub fn connect(selector: &str, share: Share) -> Result<Self, TransportError> {
        let reader = resolve_reader(selector)?;
        Self::connect_name(reader, share)
    }

    fn connect_name(reader: CString, share: Share) -> Result<Self, TransportError> {
        let ctx = context()?;
        let name = reader.to_string_lossy().into_owned();
        let card = match ctx.connect(&reader, share.mode(), pcsc::Protocols::ANY) {
            Ok(c) => c,
            Err(pcsc::Error::NoSmartcard | pcsc::Error::RemovedCard) => {
                return Err(TransportError::NoCard(name));
            }
            Err(pcsc::Error::UnknownReader | pcsc::Error::ReaderUnavailable) => {
                return Err(TransportError::ReaderUnavailable {
                    reader: name,
                    detail: "unknown or unavailable".into(),
                });
            }
            Err(e) => return Err(other(e)),
        };
        let atr = card
            .status2_owned()
            .map(|s| s.atr().to_vec())
            .unwrap_or_default();
        Ok(PcscTransport {
            card,
            _ctx: ctx,
            reader,
            share,
            atr,
            caps: Capabilities::SHORT,
            reset_notice: false,
        })
    }

    /// Waits up to `timeout` for a card in the reader, then connects.
    pub fn wait_for_card(
        selector: &str,
        share: Share,
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        let reader = resolve_reader(selector)?;
        let ev = wait_state(&reader, timeout, |ev| {
            (ev.contains(pcsc::State::PRESENT) && !ev.contains(pcsc::State::MUTE)) || gone(ev)
        })?;
        if gone(ev) {
            return Err(TransportError::ReaderUnavailable {
                reader: reader.to_string_lossy().into_owned(),
                detail: "the reader disappeared".into(),
            });
        }
        Self::connect_name(reader, share)
    }

    /// Waits up to `timeout` until the reader `selector` holds no card (the card was taken
    /// out, or the reader is gone). `Err(Timeout)` if a card is still there.
    pub fn wait_for_removal(selector: &str, timeout: Duration) -> Result<(), TransportError> {
        // A reader (or the whole reader service) that is gone holds no card either.
        let gone_too = |e: &TransportError| {
            matches!(
                e,
                TransportError::ReaderUnavailable { .. }
                    | TransportError::NoSuchReader { .. }
                    | TransportError::ServiceUnavailable(_)
            )
        };
        let reader = match resolve_reader(selector) {
            Ok(r) => r,
            Err(e) if gone_too(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        match wait_state(&reader, timeout, |ev| {
            ev.contains(pcsc::State::EMPTY) || gone(ev)
        }) {
            Ok(_) => Ok(()),
            Err(e) if gone_too(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Declares that reader and card carry extended-length APDUs end to end.
    pub fn with_extended_length(mut self, on: bool) -> Self {
        self.caps = if on {
            Capabilities::EXTENDED
        } else {
            Capabilities::SHORT
        };
        self
    }

    /// The reader's name.
    pub fn reader_name(&self) -> String {
        self.reader.to_string_lossy().into_owned()
    }

    fn refresh_atr(&mut self) {
        self.atr = self
            .card
            .status2_owned()
            .map(|s| s.atr().to_vec())
            .unwrap_or_default();
    }
}

/// Whether a reader state says the reader is gone.
fn gone(ev: pcsc::State) -> bool {
    ev.intersects(pcsc::State::UNKNOWN | pcsc::State::UNAVAILABLE)
}

/// Waits (SCardGetStatusChange) up to `timeout` until the reader's state satisfies `done`;
/// returns that state.
fn wait_state(
    reader: &std::ffi::CStr,
    timeout: Duration,
    done: impl Fn(pcsc::State) -> bool,
) -> Result<pcsc::State, TransportError> {
    let ctx = context()?;
    let start = Instant::now();
    let mut state = [pcsc::ReaderState::new(
        reader.to_owned(),
        pcsc::State::UNAWARE,
    )];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        match ctx.get_status_change(left, &mut state) {
            Ok(()) => {}
            Err(pcsc::Error::Timeout) => {
                return Err(TransportError::Timeout(timeout.as_millis() as u64));
            }
            Err(e) => return Err(other(e)),
        }
        let ev = state[0].event_state();
        if done(ev) {
            return Ok(ev);
        }
        state[0].sync_current_state();
    }
}

/// One SCardTransmit; PC/SC errors kept raw so the caller can recover from a reset.
fn transmit_on(card: &pcsc::Card, command: &[u8]) -> Result<Vec<u8>, pcsc::Error> {
    let mut buf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
    card.transmit(command, &mut buf).map(|r| r.to_vec())
}

fn checked(r: Vec<u8>) -> Result<Vec<u8>, TransportError> {
    if r.len() >= 2 {
        Ok(r)
    } else {
        Err(TransportError::ShortResponse(r.len()))
    }
}

impl PcscTransport {
    /// Maps a PC/SC failure; after a reset by someone else, reconnects and reports it.
    fn recover(&mut self, e: pcsc::Error) -> TransportError {
        match e {
            pcsc::Error::ResetCard => {
                // Someone reset the card: reconnect, and make the caller start over.
                match self.card.reconnect(
                    self.share.mode(),
                    pcsc::Protocols::ANY,
                    pcsc::Disposition::LeaveCard,
                ) {
                    Ok(()) => {
                        self.refresh_atr();
                        self.reset_notice = true;
                        TransportError::CardReset(self.reader_name())
                    }
                    Err(e) => other(e),
                }
            }
            pcsc::Error::RemovedCard | pcsc::Error::NoSmartcard => {
                TransportError::CardRemoved(self.reader_name())
            }
            e => other(e),
        }
    }
}

impl Transport for PcscTransport {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        match transmit_on(&self.card, command) {
            Ok(r) => checked(r),
            Err(e) => Err(self.recover(e)),
        }
    }

    /// Runs `f` inside an SCardBeginTransaction / SCardEndTransaction pair.
    fn exclusive(
        &mut self,
        f: &mut dyn FnMut(&mut SendApdu<'_>) -> Result<(), TransportError>,
    ) -> Result<(), TransportError> {
        let mut failure: Option<pcsc::Error> = None;
        let result = match self.card.transaction() {
            Ok(tx) => {
                let mut send = |cmd: &[u8]| match transmit_on(&tx, cmd) {
                    Ok(r) => checked(r),
                    Err(e) => {
                        failure = Some(e);
                        Err(TransportError::Other(e.to_string()))
                    }
                };
                f(&mut send)
            }
            Err(e) => {
                failure = Some(e);
                Err(TransportError::Other(e.to_string()))
            }
        };
        match failure {
            Some(e) => Err(self.recover(e)),
            None => result,
        }
    }

    fn reset(&mut self, kind: ResetKind) -> Result<Vec<u8>, TransportError> {
        let disposition = match kind {
            ResetKind::Cold => pcsc::Disposition::UnpowerCard,
            ResetKind::Warm => pcsc::Disposition::ResetCard,
        };
        self.card
            .reconnect(self.share.mode(), pcsc::Protocols::ANY, disposition)
            .map_err(other)?;
        self.refresh_atr();
        Ok(self.atr.clone())
    }

    fn atr(&self) -> Option<Vec<u8>> {
        Some(self.atr.clone())
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn take_reset_notice(&mut self) -> bool {
        std::mem::take(&mut self.reset_notice)
    }

    fn describe(&self) -> String {
        format!("pcsc:{}", self.reader_name())
    }
}
