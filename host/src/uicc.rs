//! UICC (SIM) specifics on the host: telling a UICC from another smart card by its answer to
//! reset, and reading its ICCID from `EF.ICCID`, the identity a SIM is known by in a
//! personalisation line and to the operator.

use crate::channel::ApduChannel;
use crate::error::{Error, Result};
use card_wire::apdu::Command;
use card_wire::atr::Atr;
use card_wire::uicc::{FID_ICCID, Iccid};

/// What kind of card an answer to reset announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CardKind {
    /// A UICC: the ATR carries a T=15 class indicator.
    Uicc,
    /// Any other smart card.
    SmartCard,
}

impl CardKind {
    /// Reads the kind from an ATR; an ATR that does not parse is an error that names it.
    pub fn from_atr(atr: &[u8]) -> Result<CardKind> {
        let a = Atr::parse(atr)
            .map_err(|e| Error::Identity(format!("ATR {}: {e}", hex::encode_upper(atr))))?;
        Ok(if a.is_uicc() {
            CardKind::Uicc
        } else {
            CardKind::SmartCard
        })
    }

    /// The word reports and messages use.
    pub fn name(self) -> &'static str {
        match self {
            CardKind::Uicc => "uicc",
            CardKind::SmartCard => "smartcard",
        }
    }
}

/// Reads the ICCID (`SELECT` by path `2FE2` from the MF, `READ BINARY`). `Ok(None)` when the
/// card refuses the SELECT (no such file: not a UICC); an unreadable or invalid ICCID is an error.
pub fn read_iccid(ch: &mut impl ApduChannel) -> Result<Option<Iccid>> {
    let select = Command::new(0x00, 0xA4, 0x08, 0x04)
        .with_data(FID_ICCID.to_be_bytes().to_vec())?
        .with_le(256)?;
    // Any refusal means the card has no EF.ICCID reachable this way (not a UICC): smart
    // cards answer 6A82, 6A86, 6D00 or 6E00 depending on who sees the command.
    if !ch.transmit(&select)?.sw.is_success() {
        return Ok(None);
    }
    let read = Command::new(0x00, 0xB0, 0x00, 0x00).with_le(10)?;
    let r = ch.transmit(&read)?;
    if !r.sw.is_success() {
        return Err(Error::Status {
            command: "READ BINARY EF.ICCID",
            sw: r.sw,
        });
    }
    Iccid::from_ef(&r.data)
        .map(Some)
        .map_err(|e| Error::Identity(format!("EF ICCID: {e}")))
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::channel::CardChannel;
    use applet_sim::{SimCard, SimConfig};
    use card_wire::Transport;

    #[test]
    fn uicc_and_smart_card() {
        let mut ch = CardChannel::new(SimCard::powered(SimConfig::preset("uicc").unwrap()));
        let atr = ch.transport().atr().unwrap();
        assert_eq!(CardKind::from_atr(&atr).unwrap(), CardKind::Uicc);
        let iccid = read_iccid(&mut ch).unwrap().unwrap();
        assert!(iccid.as_str().starts_with("898100"));
        // Selecting a file did not break the GlobalPlatform side.
        crate::gp::select_domain(&mut ch, None).unwrap();

        let mut ch = CardChannel::new(SimCard::powered(SimConfig::default()));
        let atr = ch.transport().atr().unwrap();
        assert_eq!(CardKind::from_atr(&atr).unwrap(), CardKind::SmartCard);
        assert_eq!(read_iccid(&mut ch).unwrap(), None);
        assert!(CardKind::from_atr(&[0x3B]).is_err());
    }
}
