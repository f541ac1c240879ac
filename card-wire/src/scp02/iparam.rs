//! The SCP02 `i` parameter (GP Card Specification 2.2.1 Table E-1): which variant of the
//! protocol a card runs.

use super::Scp02Error;
use crate::scp03::SecurityLevel;

/// SCP identifier of SCP02 in the INITIALIZE UPDATE response (byte 11).
pub const SCP02: u8 = 0x02;

/// The SCP02 `i` parameter (GP 2.2.1 Table E-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IParam02(pub u8);

impl IParam02 {
    /// `15`: three keys, explicit initiation, C-MAC on the modified APDU, ICV encryption.
    pub const I15: IParam02 = IParam02(0x15);
    /// `55`: as `15` with a pseudo-random card challenge.
    pub const I55: IParam02 = IParam02(0x55);
    /// `05`: as `15` without ICV encryption.
    pub const I05: IParam02 = IParam02(0x05);
    /// `45`: as `05` with a pseudo-random card challenge.
    pub const I45: IParam02 = IParam02(0x45);

    /// Bit `01`: three static keys (else one).
    pub const fn three_keys(self) -> bool {
        self.0 & 0x01 != 0
    }
    /// Bit `02`: C-MAC on the unmodified APDU (else on the modified one).
    pub const fn mac_unmodified(self) -> bool {
        self.0 & 0x02 != 0
    }
    /// Bit `08`: ICV set to a MAC over the AID (else zero).
    pub const fn icv_over_aid(self) -> bool {
        self.0 & 0x08 != 0
    }
    /// Bit `10`: the chaining value is DES-encrypted under K1 of the C-MAC key before use.
    pub const fn icv_encryption(self) -> bool {
        self.0 & 0x10 != 0
    }
    /// Bit `20`: R-MAC supported.
    pub const fn r_mac(self) -> bool {
        self.0 & 0x20 != 0
    }
    /// Bit `40`: pseudo-random card challenge.
    pub const fn pseudo_random(self) -> bool {
        self.0 & 0x40 != 0
    }

    /// Whether kagi implements this variant: three keys and a zero ICV.
    pub fn check_supported(self) -> Result<(), Scp02Error> {
        if !self.three_keys() || self.icv_over_aid() {
            return Err(Scp02Error::UnsupportedI(self.0));
        }
        Ok(())
    }

    /// Whether a session with this `i` may run at `level` (no R-ENC in SCP02; R-MAC only
    /// when announced).
    pub const fn allows(self, level: SecurityLevel) -> bool {
        !level.r_enc() && (!level.r_mac() || self.r_mac())
    }
}
