//! A simulated card: power state, answer to reset and the runtime, behind the transport seam.

use crate::applet::{Aid, AppLifeCycle, RegistryEntry};
use crate::echo::{ECHO_AID, EchoApplet};
use crate::rng::CardRng;
use crate::runtime::Runtime;
use crate::security_domain::{DEFAULT_AUTH_LIMIT, DEFAULT_ISD_AID, SdConfig, SecurityDomain};
use card_wire::scp03::{IParam, StaticKeys};
use card_wire::transport::{Capabilities, ResetKind, Transport, TransportError};

/// How a simulated card is built.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The issuer security domain.
    pub isd: SdConfig,
    /// Seed for deterministic randomness; `None` uses the operating system's generator.
    pub seed: Option<u64>,
    /// Whether the card accepts extended-length APDUs.
    pub extended_length: bool,
    /// Whether to install the echo test applet.
    pub echo_applet: bool,
}

/// KVN of the simulator's default SCP03 key set.
pub const DEFAULT_KVN: u8 = 0x30;

impl Default for SimConfig {
    /// A GP card with the default test keys (`40..4F`, KVN 30, AES-128), SCP03 `i = 70`
    /// (S8, pseudo-random challenge, R-MAC and R-ENC), extended length and the echo applet.
    fn default() -> Self {
        SimConfig {
            isd: SdConfig {
                aid: Aid::new(&DEFAULT_ISD_AID).unwrap_or_else(|_| unreachable!()),
                keys: vec![StaticKeys::default_test_keys(DEFAULT_KVN)],
                i: IParam(0x70),
                kdd: [0x00, 0x00, 0x4B, 0x41, 0x47, 0x49, 0x00, 0x00, 0x00, 0x01],
                cin: vec![0x4B, 0x41, 0x47, 0x49, 0x00, 0x01],
                iin: vec![0x4B, 0x47],
                auth_limit: DEFAULT_AUTH_LIMIT,
            },
            seed: None,
            extended_length: true,
            echo_applet: true,
        }
    }
}

impl SimConfig {
    /// The same card running SCP03 in S16 mode (`i = 71`).
    pub fn s16(mut self) -> Self {
        self.isd.i = IParam(self.isd.i.0 | 0x01);
        self
    }

    /// Replaces the ISD key sets.
    pub fn with_keys(mut self, keys: Vec<StaticKeys>) -> Self {
        self.isd.keys = keys;
        self
    }

    /// Deterministic randomness from `seed`.
    pub fn seeded(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

/// The simulator's answer to reset: T=1, historical bytes "KAGI-SIM", with its check byte.
pub fn default_atr() -> Vec<u8> {
    let mut atr = vec![0x3B, 0x88, 0x80, 0x01];
    atr.extend_from_slice(b"KAGI-SIM");
    let tck = atr[1..].iter().fold(0u8, |a, b| a ^ b);
    atr.push(tck);
    atr
}

/// A simulated card in a simulated reader.
pub struct SimCard {
    runtime: Runtime,
    powered: bool,
    atr: Vec<u8>,
    extended_length: bool,
}

impl SimCard {
    /// Builds a card from a configuration; it starts powered off.
    pub fn new(config: SimConfig) -> Self {
        let rng = match config.seed {
            Some(s) => CardRng::seeded(s),
            None => CardRng::Os,
        };
        let mut runtime = Runtime::new(rng, config.extended_length);
        let isd = SecurityDomain::new(config.isd);
        runtime.install(isd.registry_entry(), Box::new(isd), true);
        if config.echo_applet {
            runtime.install(
                RegistryEntry {
                    aid: Aid::new(&ECHO_AID).unwrap_or_else(|_| unreachable!()),
                    life_cycle: AppLifeCycle::Selectable as u8,
                    privileges: [0, 0, 0],
                    is_isd: false,
                },
                Box::new(EchoApplet),
                false,
            );
        }
        SimCard {
            runtime,
            powered: false,
            atr: default_atr(),
            extended_length: config.extended_length,
        }
    }

    /// Builds and powers on a card.
    pub fn powered(config: SimConfig) -> Self {
        let mut card = Self::new(config);
        card.power_on();
        card
    }

    /// Cold reset: power on, clear transient state, select the default applet.
    pub fn power_on(&mut self) -> Vec<u8> {
        self.runtime.reset();
        self.powered = true;
        self.atr.clone()
    }

    /// Cuts power; transient state is lost.
    pub fn power_off(&mut self) {
        self.powered = false;
        self.runtime.reset();
    }

    /// Whether the card is powered.
    pub fn is_powered(&self) -> bool {
        self.powered
    }

    /// The runtime, for tests that inspect it.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}

impl Transport for SimCard {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        if !self.powered {
            return Err(TransportError::Unpowered);
        }
        Ok(self.runtime.process(command))
    }

    fn reset(&mut self, _kind: ResetKind) -> Result<Vec<u8>, TransportError> {
        Ok(self.power_on())
    }

    fn atr(&self) -> Option<Vec<u8>> {
        self.powered.then(|| self.atr.clone())
    }

    fn capabilities(&self) -> Capabilities {
        if self.extended_length {
            Capabilities::EXTENDED
        } else {
            Capabilities::SHORT
        }
    }

    fn describe(&self) -> String {
        "sim:in-process".into()
    }
}
