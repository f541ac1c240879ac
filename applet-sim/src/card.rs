//! A simulated card: persistent memory, power state, answer to reset and the runtime, behind
//! the transport seam.

use crate::applet::Aid;
use crate::class_table::{ClassError, ClassTable};
use crate::echo::{ECHO_AID, ECHO_PACKAGE};
use crate::registry::{self, LoadFile, RegistryEntry, app_state};
use crate::rng::CardRng;
use crate::runtime::Runtime;
use crate::security_domain::{
    CardSetup, DEFAULT_AUTH_LIMIT, DEFAULT_ISD_AID, ISD_PRIVILEGES, put_keys,
};
use crate::store::{DEFAULT_BUDGET, ImageError, Store, StoreError};
use crate::timing::{Pace, TimingProfile};
use card_wire::atr::Atr;
use card_wire::scp03::{IParam, StaticKeys};
use card_wire::transport::{Capabilities, ResetKind, Transport, TransportError};
use card_wire::uicc::Iccid;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How the issuer security domain of a new card is set up.
#[derive(Debug, Clone)]
pub struct SdConfig {
    /// The ISD's AID.
    pub aid: Aid,
    /// SCP03 key sets.
    pub keys: Vec<StaticKeys>,
    /// The SCP03 `i` parameter the card announces.
    pub i: IParam,
    /// Key diversification data reported in INITIALIZE UPDATE.
    pub kdd: [u8; 10],
    /// Card image number (GET DATA `45`).
    pub cin: Vec<u8>,
    /// Issuer identification number (GET DATA `42`).
    pub iin: Vec<u8>,
    /// Consecutive failed authentications before the ISD locks its keys.
    pub auth_limit: u32,
    /// `Some(i)`: the card speaks SCP02 with this `i` instead of SCP03 (its key sets must
    /// then hold 16-byte keys, used as 3DES keys).
    pub scp02: Option<card_wire::scp02::IParam02>,
}

/// How a simulated card is built.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The issuer security domain.
    pub isd: SdConfig,
    /// Seed for deterministic randomness; `None` uses the operating system's generator.
    pub seed: Option<u64>,
    /// Whether the card accepts extended-length APDUs.
    pub extended_length: bool,
    /// Whether to install the echo test applet (its load file is always present).
    pub echo_applet: bool,
    /// Persistent memory in bytes.
    pub memory: usize,
    /// The answer to reset.
    pub atr: Vec<u8>,
    /// A UICC's ICCID (`EF.ICCID` under the MF); `None` for a smart card without a SIM file
    /// system.
    pub iccid: Option<Iccid>,
}

/// KVN of the simulator's default SCP03 key set.
pub const DEFAULT_KVN: u8 = 0x30;

/// KVN of the `gp-scp02` preset's 3DES key set.
pub const SCP02_KVN: u8 = 0x20;

/// The GP supplementary security domain package and module AIDs.
pub const SSD_PACKAGE: [u8; 7] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50];
/// The SSD module (class `gp.sd`).
pub const SSD_MODULE: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50, 0x41];

impl Default for SimConfig {
    /// A GP card with the default test keys (`40..4F`, KVN 30, AES-128), SCP03 `i = 70`
    /// (S8, pseudo-random challenge, R-MAC and R-ENC), extended length, 256 KiB of persistent
    /// memory and the echo applet.
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
                scp02: None,
            },
            seed: None,
            extended_length: true,
            echo_applet: true,
            memory: DEFAULT_BUDGET,
            atr: default_atr(),
            iccid: None,
        }
    }
}

/// Named card set-ups for `kagi sim serve --preset` and `--sim-preset`.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "gp-test",
        "GP card, test keys 40..4F (KVN 30), SCP03 i=70, echo applet installed",
    ),
    (
        "gp-blank",
        "GP card, test keys 40..4F (KVN 30), SCP03 i=70, no applet installed",
    ),
    (
        "gp-s16",
        "GP card, test keys 40..4F (KVN 30), SCP03 S16 (i=71), echo applet installed",
    ),
    (
        "gp-scp02",
        "GP card speaking SCP02 i=55, 3DES test keys 40..4F (KVN 20), echo applet installed",
    ),
    (
        "uicc",
        "UICC (SIM): T=15 class indicator in the ATR, EF.ICCID under the MF, test keys 40..4F (KVN 30), SCP03 i=70",
    ),
];

/// The ICCID of the `uicc` preset: `89` telecom, `81` Japan, then a test number.
pub const TEST_ICCID_BODY: &str = "898100000000000001";

impl SimConfig {
    /// A named set-up (see [`PRESETS`]).
    pub fn preset(name: &str) -> Result<SimConfig, String> {
        let base = SimConfig::default();
        match name {
            "gp-test" => Ok(base),
            "gp-blank" => Ok(SimConfig {
                echo_applet: false,
                ..base
            }),
            "gp-s16" => Ok(base.s16()),
            "gp-scp02" => Ok(base.scp02(card_wire::scp02::IParam02::I55)),
            "uicc" => {
                Ok(base.uicc(Iccid::with_check_digit(TEST_ICCID_BODY).map_err(|e| e.to_string())?))
            }
            other => Err(format!(
                "unknown preset '{other}'; presets: {}",
                PRESETS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// The same card running SCP03 in S16 mode (`i = 71`).
    pub fn s16(mut self) -> Self {
        self.isd.i = IParam(self.isd.i.0 | 0x01);
        self
    }

    /// The same card speaking SCP02 with `i` and the GP test keys as a 3DES key set (KVN 20,
    /// SCP02's customary range).
    pub fn scp02(mut self, i: card_wire::scp02::IParam02) -> Self {
        self.isd.scp02 = Some(i);
        self.isd.keys = vec![StaticKeys::default_test_keys(SCP02_KVN)];
        self
    }

    /// The same card as a UICC: its ATR announces voltage classes A, B and C for T=15 (as
    /// TS 102 221 requires of a UICC) and the MF holds `EF.ICCID` with `iccid`.
    pub fn uicc(mut self, iccid: Iccid) -> Self {
        self.atr = Atr::build(false, Some(0x07), b"KAGI-UICC");
        self.iccid = Some(iccid);
        self
    }

    /// Replaces the ISD key sets.
    pub fn with_keys(mut self, keys: Vec<StaticKeys>) -> Self {
        self.isd.keys = keys;
        self
    }

    /// Gives the card its own identity derived from `serial`: key diversification data (the
    /// last 8 bytes of the KDD) and card image number (CIN), as a factory gives every chip.
    pub fn with_serial(mut self, serial: &[u8]) -> Self {
        use sha2::Digest;
        let h = sha2::Sha256::digest(serial);
        let n = self.isd.kdd.len();
        self.isd.kdd[n - 8..].copy_from_slice(&h[..8]);
        self.isd.cin = h[8..14].to_vec();
        if self.iccid.is_some() {
            // 89 81 00 and twelve digits from the serial's hash, then the check digit.
            let n = u64::from_be_bytes([0, 0, h[14], h[15], h[16], h[17], h[18], h[19]]);
            let body = format!("898100{:012}", n % 1_000_000_000_000);
            self.iccid = Iccid::with_check_digit(&body).ok();
        }
        self
    }

    /// The same UICC with the first digits of its ICCID replaced by `prefix` — an issuer
    /// identification number (ITU-T E.118: `89`, the country code, the issuer) — and the
    /// check digit computed again: a SIM of another operator. Apply after
    /// [`SimConfig::with_serial`] (which makes the ICCID).
    pub fn with_iccid_prefix(mut self, prefix: &str) -> Result<Self, String> {
        let Some(iccid) = &self.iccid else {
            return Err("not a UICC: the card has no ICCID to prefix".into());
        };
        let digits = iccid.as_str();
        let body = &digits[..digits.len() - 1];
        if !(3..=12).contains(&prefix.len())
            || !prefix.starts_with("89")
            || !prefix.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(format!(
                "ICCID prefix '{prefix}': give 3 to 12 digits starting with 89 (ITU-T E.118: 89, the country code, the issuer)"
            ));
        }
        let new = format!("{prefix}{}", &body[prefix.len()..]);
        self.iccid = Some(Iccid::with_check_digit(&new).map_err(|e| e.to_string())?);
        Ok(self)
    }

    /// Deterministic randomness from `seed`.
    pub fn seeded(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The persistent memory of a card made with this configuration ("manufacturing").
    pub fn manufacture(&self) -> Result<Store, StoreError> {
        let mut s = Store::new(self.memory);
        CardSetup {
            i: self.isd.i,
            kdd: self.isd.kdd,
            cin: self.isd.cin.clone(),
            iin: self.isd.iin.clone(),
            auth_limit: self.isd.auth_limit,
        }
        .write(&mut s)?;
        if let Some(i) = self.isd.scp02 {
            crate::sd_scp02::write_setup(&mut s, i)?;
        }
        s.put("card/atr", &self.atr)?;
        if let Some(iccid) = &self.iccid {
            s.put(crate::uicc::ICCID_KEY, &iccid.to_ef())?;
        }
        registry::put_entry(
            &mut s,
            &RegistryEntry {
                aid: self.isd.aid.clone(),
                class: crate::registry::ISD_CLASS.into(),
                life_cycle: app_state::PERSONALIZED,
                privileges: ISD_PRIVILEGES,
                sd: None,
                elf: None,
                params: Vec::new(),
            },
        )?;
        for k in &self.isd.keys {
            put_keys(&mut s, &self.isd.aid, k)?;
        }
        let aid = |b: &[u8]| Aid::new(b).unwrap_or_else(|_| unreachable!());
        registry::put_load_file(
            &mut s,
            &LoadFile {
                aid: aid(&SSD_PACKAGE),
                sd: self.isd.aid.clone(),
                modules: vec![(aid(&SSD_MODULE), crate::registry::SD_CLASS.into())],
            },
        )?;
        registry::put_load_file(
            &mut s,
            &LoadFile {
                aid: aid(&ECHO_PACKAGE),
                sd: self.isd.aid.clone(),
                modules: vec![(aid(&ECHO_AID), crate::echo::ECHO_CLASS.into())],
            },
        )?;
        if self.echo_applet {
            registry::put_entry(
                &mut s,
                &RegistryEntry {
                    aid: aid(&ECHO_AID),
                    class: crate::echo::ECHO_CLASS.into(),
                    life_cycle: app_state::SELECTABLE,
                    privileges: [0, 0, 0],
                    sd: Some(self.isd.aid.clone()),
                    elf: Some(aid(&ECHO_PACKAGE)),
                    params: Vec::new(),
                },
            )?;
        }
        Ok(s)
    }
}

/// The simulator's answer to reset: T=0 and T=1, historical bytes "KAGI-SIM", with its check
/// byte (`3B 88 80 01 …`).
pub fn default_atr() -> Vec<u8> {
    Atr::build(true, None, b"KAGI-SIM")
}

/// A simulated card in a simulated reader.
pub struct SimCard {
    runtime: Runtime,
    powered: bool,
    atr: Vec<u8>,
    extended_length: bool,
    pace: Pace,
}

impl SimCard {
    /// Builds a card from a configuration; it starts powered off.
    pub fn new(config: SimConfig) -> Self {
        Self::with_classes(config, crate::stock::shared())
    }

    /// A card whose persistent memory is `store` (made by [`SimConfig::manufacture`], or a
    /// test), with the stock applet classes. The store is not checked: an instance of a class
    /// the stock table lacks answers SELECT with `6A82`; use [`SimCard::from_store_with`] to
    /// have it reported.
    pub fn from_store(store: Store, seed: Option<u64>, extended_length: bool) -> Self {
        Self::from_store_unchecked(store, seed, extended_length, crate::stock::shared())
    }

    fn from_store_unchecked(
        store: Store,
        seed: Option<u64>,
        extended_length: bool,
        classes: Arc<ClassTable>,
    ) -> Self {
        let rng = match seed {
            Some(s) => CardRng::seeded(s),
            None => CardRng::Os,
        };
        let atr = store
            .get("card/atr")
            .map(|a| a.to_vec())
            .unwrap_or_else(default_atr);
        SimCard {
            runtime: Runtime::with_classes(store, rng, extended_length, classes),
            powered: false,
            atr,
            extended_length,
            pace: Pace::Account,
        }
    }

    /// Builds a card (powered off) whose runtime instantiates applets from `classes`: the
    /// stock classes plus your own (see [`crate::ClassTable`]).
    pub fn with_classes(config: SimConfig, classes: Arc<ClassTable>) -> Self {
        // The default memory budget always holds the manufacturing data.
        let store = config
            .manufacture()
            .unwrap_or_else(|e| panic!("card memory too small for its own setup: {e}"));
        Self::from_store_unchecked(store, config.seed, config.extended_length, classes)
    }

    /// A card over `store` with the applet classes `classes`; refused with
    /// [`ClassError::Unregistered`] when the store names a class the table lacks.
    pub fn from_store_with(
        store: Store,
        seed: Option<u64>,
        extended_length: bool,
        classes: Arc<ClassTable>,
    ) -> Result<Self, ClassError> {
        crate::runtime::check_classes(&store, &classes)?;
        Ok(Self::from_store_unchecked(
            store,
            seed,
            extended_length,
            classes,
        ))
    }

    /// Loads a card from an image file, with the stock applet classes, powered on (ready for
    /// its first command, as [`SimCard::powered`] is). An image that names another class is
    /// refused ([`ImageError::Classes`]): load it with [`SimCard::from_image_with`] and a table
    /// that registers the class.
    pub fn from_image(path: &Path, seed: Option<u64>) -> Result<Self, ImageError> {
        Self::from_image_with(path, seed, crate::stock::shared())
    }

    /// Loads a card from an image file, instantiating applets from `classes`, powered on.
    pub fn from_image_with(
        path: &Path,
        seed: Option<u64>,
        classes: Arc<ClassTable>,
    ) -> Result<Self, ImageError> {
        let store = Store::load(path)?;
        let mut card = Self::from_store_with(store, seed, true, classes).map_err(|source| {
            ImageError::Classes {
                path: path.display().to_string(),
                source,
            }
        })?;
        card.power_on();
        Ok(card)
    }

    /// Saves the card's persistent memory to an image file, atomically.
    pub fn save_image(&self, path: &Path) -> Result<(), ImageError> {
        self.runtime.store().save(path)
    }

    /// Builds and powers on a card.
    pub fn powered(config: SimConfig) -> Self {
        let mut card = Self::new(config);
        card.power_on();
        card
    }

    /// Cold reset: power on; an interrupted transaction rolls back, transient state is
    /// cleared, the default applet is selected.
    pub fn power_on(&mut self) -> Vec<u8> {
        self.runtime.reset();
        self.powered = true;
        self.atr.clone()
    }

    /// Cuts power; transient state is lost.
    pub fn power_off(&mut self) {
        self.powered = false;
    }

    /// The card's answer to reset (what it sends at the next power-on).
    pub fn answer_to_reset(&self) -> &[u8] {
        &self.atr
    }

    /// Whether the card is powered.
    pub fn is_powered(&self) -> bool {
        self.powered
    }

    /// The runtime, for tests that inspect it.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Persistent memory.
    pub fn store(&self) -> &Store {
        self.runtime.store()
    }

    /// Provisioning: the card generates its key agreement key pair ([`crate::card_key`]) and
    /// answers the public key (uncompressed SEC1) for the manufacturer CA to certify.
    pub fn generate_card_key(&mut self) -> Result<Vec<u8>, StoreError> {
        crate::card_key::generate(self.runtime.store_mut())
    }

    /// Provisioning: the manufacturer's certificate for the card's key, with its serial
    /// number (big-endian bytes).
    pub fn set_card_certificate(&mut self, der: &[u8], serial: &[u8]) -> Result<(), StoreError> {
        crate::card_key::set_certificate(self.runtime.store_mut(), der, serial)
    }

    /// The manufacturer's certificate for the card's key agreement key, if provisioned.
    pub fn card_certificate(&self) -> Option<Vec<u8>> {
        crate::card_key::certificate(self.runtime.store()).map(<[u8]>::to_vec)
    }

    /// Turns the card timing model on: each command is charged what it would take on the
    /// chip `profile` describes, and with [`Pace::Sleep`] the answer comes after that time.
    pub fn set_timing(&mut self, profile: TimingProfile, pace: Pace) {
        self.runtime.set_timing(Some(profile));
        self.pace = pace;
    }

    /// The modelled card time of every command since the timing model was turned on.
    pub fn card_time(&self) -> Duration {
        self.runtime.card_time()
    }

    /// Cuts power at the `n`th persistent write from now (tearing injection).
    pub fn tear_at(&mut self, n: u64) {
        self.runtime.store_mut().tear_at(n);
    }
}

impl Transport for SimCard {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        if !self.powered {
            return Err(TransportError::Unpowered);
        }
        match self.runtime.process(command) {
            Some(r) => {
                if self.pace == Pace::Sleep {
                    std::thread::sleep(self.runtime.last_card_time());
                }
                Ok(r)
            }
            None => {
                self.powered = false;
                Err(TransportError::Mute)
            }
        }
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
