//! Serving a simulated card to a real pcscd through vsmartcard's vpcd driver.
//!
//! vpcd listens on TCP (port 35963 for its first slot, 35964 for the second, …); the card side
//! connects and then only answers. Every message is a 2-byte big-endian length and a payload. A
//! 1-byte payload is a control byte: `00` power off, `01` power on, `02` warm reset (no reply to
//! these), `04` get ATR (reply: the ATR). Anything longer is a command APDU, answered with one
//! response APDU. Card removal is closing the connection; insertion is connecting again.
//!
//! Two traps handled here (`research/simulator-anchors.md` §c): a zero-length reply stalls
//! pcscd, so an unpowered card answers `6F00`; and without `TCP_QUICKACK` re-armed before each
//! read every round trip costs ~40 ms of delayed ACK.

use crate::card::SimCard;
use card_wire::transport::Transport;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// vpcd's first slot port (`0x8C7B`).
pub const DEFAULT_PORT: u16 = 0x8C7B;

/// What ended a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// pcscd closed the connection (stopped, restarted, reader removed).
    Closed,
    /// The stop flag was raised.
    Stopped,
    /// The card was taken out of the reader.
    Removed,
}

/// Controls one served card from another thread: stop serving, or take the card out of the
/// reader and put it back (pcscd sees a removal and an insertion).
#[derive(Debug, Clone)]
pub struct SlotControl {
    stop: Arc<AtomicBool>,
    present: Arc<AtomicBool>,
    swap: Arc<AtomicBool>,
}

impl Default for SlotControl {
    fn default() -> Self {
        SlotControl {
            stop: Arc::new(AtomicBool::new(false)),
            present: Arc::new(AtomicBool::new(true)),
            swap: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl SlotControl {
    /// A control sharing `stop` with other slots (one flag stops them all).
    pub fn with_stop(stop: Arc<AtomicBool>) -> Self {
        SlotControl {
            stop,
            ..SlotControl::default()
        }
    }
    /// Stops serving (the connection closes within a poll period).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
    /// Takes the card out of the reader.
    pub fn remove(&self) {
        self.present.store(false, Ordering::Relaxed);
    }
    /// Puts the card back.
    pub fn insert(&self) {
        self.present.store(true, Ordering::Relaxed);
    }
    /// Takes the card out and, once the reader has seen it go, puts the next card of the
    /// slot's hopper in (see [`serve_hopper`]; without a hopper the same card goes back).
    pub fn next_card(&self) {
        self.swap.store(true, Ordering::Relaxed);
        self.present.store(false, Ordering::Relaxed);
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    fn present(&self) -> bool {
        self.present.load(Ordering::Relaxed)
    }
}

fn quickack(stream: &TcpStream) {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::TcpStreamExt;
        let _ = stream.set_quickack(true);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
}

fn send(stream: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    let len = u16::try_from(payload.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "vpcd frames hold at most 65535 bytes",
        )
    })?;
    let mut frame = Vec::with_capacity(payload.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame)
}

/// Waits for the next frame's first byte, checking the control every `poll`.
fn wait_readable(
    stream: &TcpStream,
    control: &SlotControl,
    poll: Duration,
) -> io::Result<Option<Disconnect>> {
    stream.set_read_timeout(Some(poll))?;
    let mut probe = [0u8; 1];
    loop {
        if control.stopped() {
            return Ok(Some(Disconnect::Stopped));
        }
        if !control.present() {
            return Ok(Some(Disconnect::Removed));
        }
        quickack(stream);
        match stream.peek(&mut probe) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {
                stream.set_read_timeout(None)?;
                return Ok(None);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Answers vpcd on one connection until it closes, the card is removed or serving stops.
pub fn run_connection(
    mut stream: TcpStream,
    card: &mut SimCard,
    control: &SlotControl,
) -> io::Result<Disconnect> {
    stream.set_nodelay(true)?;
    loop {
        match wait_readable(&stream, control, Duration::from_millis(50)) {
            Ok(None) => {}
            Ok(Some(d)) => return Ok(d),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Disconnect::Closed),
            Err(e) => return Err(e),
        }
        let mut len = [0u8; 2];
        quickack(&stream);
        match stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Disconnect::Closed),
            Err(e) => return Err(e),
        }
        let mut payload = vec![0u8; u16::from_be_bytes(len) as usize];
        quickack(&stream);
        stream.read_exact(&mut payload)?;
        match payload.as_slice() {
            [0x00] => card.power_off(),
            [0x01] => {
                card.power_on();
            }
            [0x02] => {
                card.power_on();
            }
            [0x04] => {
                // The ATR is offered while the card is inserted, powered or not.
                send(&mut stream, card.answer_to_reset())?;
            }
            [_] | [] => {} // Unknown control bytes get no reply, so the stream stays in step.
            apdu => {
                let resp = card.transmit(apdu).unwrap_or_else(|_| vec![0x6F, 0x00]);
                send(&mut stream, &resp)?;
            }
        }
    }
}

/// Keeps a card inserted in the vpcd slot at `addr`: connects, serves, and reconnects with
/// backoff (up to `max_backoff`) whenever pcscd goes away, until the control stops it. While
/// the control says the card is out, it stays disconnected.
pub fn serve(
    card: &mut SimCard,
    addr: &str,
    control: &SlotControl,
    max_backoff: Duration,
) -> io::Result<()> {
    serve_hopper(card, addr, control, max_backoff, &mut || None)
}

/// How long a swapped card stays out: longer than pcscd's presence polling, so that every
/// client sees a removal before the next card arrives.
const SWAP_ABSENCE: Duration = Duration::from_millis(600);

/// Like [`serve`], for a slot fed from a hopper: on [`SlotControl::next_card`] the card is
/// taken out and `next` supplies the one that goes in (a personalisation line's card feeder).
pub fn serve_hopper(
    card: &mut SimCard,
    addr: &str,
    control: &SlotControl,
    max_backoff: Duration,
    next: &mut dyn FnMut() -> Option<SimCard>,
) -> io::Result<()> {
    let mut backoff = Duration::from_millis(20);
    while !control.stopped() {
        if !control.present() {
            if control.swap.swap(false, Ordering::Relaxed) {
                if let Some(c) = next() {
                    *card = c;
                }
                std::thread::sleep(SWAP_ABSENCE);
                control.insert();
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match TcpStream::connect(addr) {
            Ok(stream) => {
                backoff = Duration::from_millis(20);
                // A new connection is a fresh insertion: the card starts unpowered.
                card.power_off();
                match run_connection(stream, card, control) {
                    Ok(Disconnect::Stopped) => break,
                    Ok(Disconnect::Removed) => card.power_off(),
                    Ok(Disconnect::Closed) | Err(_) => {}
                }
            }
            Err(_) => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::SimConfig;
    use std::net::TcpListener;

    fn frame(s: &mut TcpStream, payload: &[u8]) {
        send(s, payload).unwrap();
    }

    fn reply(s: &mut TcpStream) -> Vec<u8> {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut v = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut v).unwrap();
        v
    }

    /// A fake vpcd drives the byte stream: ATR, power, APDUs, unknown control bytes.
    #[test]
    fn speaks_the_vpcd_protocol() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let control = SlotControl::default();
        let ctl = control.clone();
        let server = std::thread::spawn(move || {
            let mut card = SimCard::new(SimConfig::default());
            serve(&mut card, &addr, &ctl, Duration::from_millis(50)).unwrap();
        });
        let (mut s, _) = listener.accept().unwrap();
        frame(&mut s, &[0x04]);
        assert_eq!(reply(&mut s), crate::card::default_atr());
        // Unpowered: a status, never an empty frame.
        frame(&mut s, &[0x00, 0xA4, 0x04, 0x00, 0x00]);
        assert_eq!(reply(&mut s), vec![0x6F, 0x00]);
        frame(&mut s, &[0x01]);
        frame(&mut s, &[0x03]); // unknown control: ignored, no reply
        frame(&mut s, &[0x00, 0xA4, 0x04, 0x00, 0x00]);
        let r = reply(&mut s);
        assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
        assert_eq!(r[0], 0x6F);
        // Removal and re-insertion: the card reconnects by itself.
        drop(s);
        let (mut s, _) = listener.accept().unwrap();
        frame(&mut s, &[0x04]);
        assert_eq!(reply(&mut s), crate::card::default_atr());
        // Removal closes the connection; insertion connects again.
        control.remove();
        let mut byte = [0u8; 1];
        assert_eq!(
            s.read(&mut byte).unwrap(),
            0,
            "removal closes the connection"
        );
        control.insert();
        let (mut s, _) = listener.accept().unwrap();
        frame(&mut s, &[0x04]);
        assert_eq!(reply(&mut s), crate::card::default_atr());
        control.stop();
        server.join().unwrap();
    }
}
