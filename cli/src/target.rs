//! Opening the card a command works on: the in-process simulator (optionally kept in a card
//! image between runs) or a PC/SC reader.

use super::Failure;
use applet_sim::{SimCard, SimConfig};
use card_wire::transport::{Capabilities, ResetKind, SendApdu, Transport, TransportError};
use clap::Args;
use kagi::channel::CardChannel;
use kagi::trace::StderrTrace;
use std::path::PathBuf;

/// Which card a command talks to.
#[derive(Args, Clone, Debug)]
pub struct Target {
    /// Use the in-process simulator.
    #[arg(long, conflicts_with = "reader")]
    pub sim: bool,
    /// Use a PC/SC reader, by index or name substring (see `kagi readers`).
    #[arg(long, short = 'r')]
    pub reader: Option<String>,
    /// Connect exclusively (no other application may use the card meanwhile).
    #[arg(long)]
    pub exclusive: bool,
    /// The reader and card carry extended-length APDUs (otherwise long commands are chained).
    #[arg(long)]
    pub extended: bool,
    /// Simulator: keep the card in this image file (created when missing, saved after every
    /// command that changed the card's persistent memory, whatever its status word: a wrong
    /// PIN stays counted), so a card personalised in one run is there in the next.
    #[arg(long, requires = "sim")]
    pub sim_image: Option<PathBuf>,
    /// Simulator: card set-up for a new card (gp-test, gp-blank, gp-s16, uicc, jpki-demo).
    #[arg(long, requires = "sim", default_value = "gp-test")]
    pub sim_preset: String,
    /// Simulator (jpki-demo): issue the card's certificates with the test CAs in this
    /// directory (see `kagi ca init`).
    #[arg(long = "sim-ca-dir", alias = "sim-pki-dir", requires = "sim")]
    pub sim_pki_dir: Option<PathBuf>,
    /// Simulator: run SCP03 in S16 mode (i = 71; new cards only).
    #[arg(long, requires = "sim")]
    pub sim_s16: bool,
    /// Simulator: deterministic randomness from this seed.
    #[arg(long, requires = "sim")]
    pub sim_seed: Option<u64>,
    /// Simulator: answer each command after the time the chip would take (`modern`: a
    /// JCOP4-class secure element; `sim`: a SIM-class chip) — per-command turnaround, wire
    /// bytes, persistent writes and crypto, from published measurements (README).
    #[arg(long, requires = "sim", value_name = "PROFILE", value_parser = timing_profile)]
    pub sim_timing: Option<&'static applet_sim::timing::TimingProfile>,
}

/// Parses `--sim-timing`.
pub fn timing_profile(s: &str) -> Result<&'static applet_sim::timing::TimingProfile, String> {
    applet_sim::timing::TimingProfile::named(s).map_err(|e| e.to_string())
}

/// The simulator or a reader, behind one transport.
pub enum AnyTransport {
    /// The in-process simulator.
    Sim(Box<SimTarget>),
    /// A PC/SC reader.
    #[cfg(feature = "pcsc")]
    Pcsc(kagi::pcsc_transport::PcscTransport),
}

macro_rules! each {
    ($self:expr, $t:ident => $body:expr) => {
        match $self {
            AnyTransport::Sim($t) => $body,
            #[cfg(feature = "pcsc")]
            AnyTransport::Pcsc($t) => $body,
        }
    };
}

impl Transport for AnyTransport {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        each!(self, t => t.transmit(command))
    }
    fn reset(&mut self, kind: ResetKind) -> Result<Vec<u8>, TransportError> {
        each!(self, t => t.reset(kind))
    }
    fn atr(&self) -> Option<Vec<u8>> {
        each!(self, t => t.atr())
    }
    fn capabilities(&self) -> Capabilities {
        each!(self, t => t.capabilities())
    }
    fn take_reset_notice(&mut self) -> bool {
        each!(self, t => t.take_reset_notice())
    }
    fn describe(&self) -> String {
        each!(self, t => t.describe())
    }
    fn exclusive(
        &mut self,
        f: &mut dyn FnMut(&mut SendApdu<'_>) -> Result<(), TransportError>,
    ) -> Result<(), TransportError> {
        each!(self, t => t.exclusive(f))
    }
}

/// The simulated card, saved to its image (when it has one) after every command that changed
/// its persistent memory — as a real card's EEPROM keeps what a command wrote, whatever the
/// status word (a wrong PIN's try counter). Only tearing rolls back an open transaction, and
/// the simulator's store never shows that to the image (it holds committed writes only).
pub struct SimTarget {
    card: SimCard,
    image: Option<PathBuf>,
    saved: u64,
    failed: Option<String>,
}

impl SimTarget {
    fn new(card: SimCard, image: Option<PathBuf>) -> SimTarget {
        let saved = card.store().generation();
        SimTarget {
            card,
            image,
            saved,
            failed: None,
        }
    }

    /// Saves the image if the card changed since the last save.
    fn persist(&mut self) -> Result<(), TransportError> {
        let Some(path) = &self.image else {
            return Ok(());
        };
        let g = self.card.store().generation();
        if g == self.saved {
            return Ok(());
        }
        match self.card.save_image(path) {
            Ok(()) => {
                self.saved = g;
                Ok(())
            }
            Err(e) => {
                let m = format!("saving the card image: {e}");
                self.failed = Some(m.clone());
                Err(TransportError::ReaderUnavailable {
                    reader: path.display().to_string(),
                    detail: m,
                })
            }
        }
    }
}

impl Transport for SimTarget {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let r = self.card.transmit(command);
        self.persist()?;
        r
    }
    fn reset(&mut self, kind: ResetKind) -> Result<Vec<u8>, TransportError> {
        let r = self.card.reset(kind);
        self.persist()?;
        r
    }
    fn atr(&self) -> Option<Vec<u8>> {
        self.card.atr()
    }
    fn capabilities(&self) -> Capabilities {
        self.card.capabilities()
    }
    fn take_reset_notice(&mut self) -> bool {
        self.card.take_reset_notice()
    }
    fn describe(&self) -> String {
        self.card.describe()
    }
    fn exclusive(
        &mut self,
        f: &mut dyn FnMut(&mut SendApdu<'_>) -> Result<(), TransportError>,
    ) -> Result<(), TransportError> {
        let r = self.card.exclusive(f);
        self.persist()?;
        r
    }
}

impl Target {
    /// A target on a PC/SC reader.
    pub fn reader(r: &str) -> Target {
        Target {
            sim: false,
            reader: Some(r.into()),
            exclusive: false,
            extended: false,
            sim_image: None,
            sim_preset: "gp-test".into(),
            sim_pki_dir: None,
            sim_s16: false,
            sim_seed: None,
            sim_timing: None,
        }
    }

    fn sim_card(&self) -> Result<SimCard, Failure> {
        let mut card = self.sim_card_untimed()?;
        if let Some(profile) = self.sim_timing {
            card.set_timing(profile.clone(), applet_sim::timing::Pace::Sleep);
        }
        Ok(card)
    }

    fn sim_card_untimed(&self) -> Result<SimCard, Failure> {
        if let Some(path) = &self.sim_image
            && path.exists()
        {
            let mut card = SimCard::from_image(path, self.sim_seed)?;
            card.power_on();
            return Ok(card);
        }
        if self.sim_preset == "jpki-demo" {
            let mut card = super::jpki_demo_card(self.sim_seed, self.sim_pki_dir.as_deref())?;
            card.power_on();
            return Ok(card);
        }
        let mut config = SimConfig::preset(&self.sim_preset)?;
        if self.sim_s16 {
            config = config.s16();
        }
        if let Some(seed) = self.sim_seed {
            config = config.seeded(seed);
        }
        Ok(SimCard::powered(config))
    }

    /// Opens the card, with a trace on stderr when asked.
    pub fn open(&self, trace: bool) -> Result<CardChannel<AnyTransport>, Failure> {
        let transport = if self.sim {
            AnyTransport::Sim(Box::new(SimTarget::new(
                self.sim_card()?,
                self.sim_image.clone(),
            )))
        } else if let Some(r) = &self.reader {
            self.open_reader(r)?
        } else {
            return Err(
                "choose a card: --sim for the simulator, or --reader NAME|INDEX (see `kagi readers`)".into(),
            );
        };
        let mut ch = CardChannel::new(transport);
        if trace {
            ch.set_trace(Some(Box::new(StderrTrace)));
            let atr = ch
                .transport()
                .atr()
                .map(hex::encode_upper)
                .unwrap_or_default();
            let desc = ch.transport().describe();
            ch.trace_line(&format!("-- {desc}, ATR {atr}"));
        }
        Ok(ch)
    }

    #[cfg(feature = "pcsc")]
    fn open_reader(&self, r: &str) -> Result<AnyTransport, Failure> {
        use kagi::pcsc_transport::{PcscTransport, Share};
        let share = if self.exclusive {
            Share::Exclusive
        } else {
            Share::Shared
        };
        Ok(AnyTransport::Pcsc(
            PcscTransport::connect(r, share)?.with_extended_length(self.extended),
        ))
    }

    #[cfg(not(feature = "pcsc"))]
    fn open_reader(&self, _r: &str) -> Result<AnyTransport, Failure> {
        Err("this kagi was built without PC/SC support (feature `pcsc`)".into())
    }

    /// Saves the simulated card to its image, when one was named.
    pub fn finish(&self, ch: &CardChannel<AnyTransport>) -> Result<(), Failure> {
        if let (Some(path), AnyTransport::Sim(sim)) = (&self.sim_image, ch.transport()) {
            if let Some(e) = &sim.failed {
                return Err(e.clone().into());
            }
            sim.card.save_image(path)?;
        }
        Ok(())
    }
}
