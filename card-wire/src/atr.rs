//! The answer to reset (ISO/IEC 7816-3 §8.2): its interface bytes, the protocols it offers,
//! its historical bytes, and the T=15 class indicator that tells a UICC (ETSI TS 102 221
//! §6.3.3: a UICC shall announce its supported voltage classes there) from other cards.
//!
//! ```
//! use card_wire::atr::Atr;
//! let atr = Atr::parse(&[0x3B, 0x02, 0x14, 0x50]).unwrap();
//! assert_eq!(atr.historical(), &[0x14, 0x50]);
//! assert!(!atr.is_uicc());
//! ```

use thiserror::Error;

/// Why bytes are not an answer to reset.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AtrError {
    /// Fewer bytes than the format bytes announce.
    #[error("the ATR is cut short: {0} bytes, its format bytes announce more")]
    Truncated(usize),
    /// TS is neither `3B` (direct) nor `3F` (inverse convention).
    #[error("ATR initial character {0:02X} is neither 3B nor 3F")]
    BadInitial(u8),
    /// Bytes after the last announced one.
    #[error("the ATR has {0} bytes after its end")]
    Trailing(usize),
    /// TCK does not make the exclusive-or of T0..TCK zero.
    #[error("the ATR check byte TCK is wrong")]
    BadCheck,
}

/// A parsed answer to reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Atr {
    raw: Vec<u8>,
    protocols: Vec<u8>,
    historical_at: usize,
    historical_len: usize,
    class_indicator: Option<u8>,
}

/// The supply-voltage classes a T=15 class indicator announces (TS 102 221 §6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoltageClasses(pub u8);

impl VoltageClasses {
    /// Class A (5 V).
    pub fn a(self) -> bool {
        self.0 & 0x01 != 0
    }
    /// Class B (3 V).
    pub fn b(self) -> bool {
        self.0 & 0x02 != 0
    }
    /// Class C (1.8 V).
    pub fn c(self) -> bool {
        self.0 & 0x04 != 0
    }
}

impl Atr {
    /// Parses an ATR; every byte is accounted for and TCK, when present, is checked.
    pub fn parse(bytes: &[u8]) -> Result<Atr, AtrError> {
        let at = |i: usize| {
            bytes
                .get(i)
                .copied()
                .ok_or(AtrError::Truncated(bytes.len()))
        };
        let ts = at(0)?;
        if ts != 0x3B && ts != 0x3F {
            return Err(AtrError::BadInitial(ts));
        }
        let t0 = at(1)?;
        let historical_len = usize::from(t0 & 0x0F);
        let mut y = t0 >> 4;
        let mut i = 2;
        let mut protocols = Vec::new();
        // The protocol the interface bytes being read belong to (T of the TD before them).
        let mut current: Option<u8> = None;
        let mut class_indicator = None;
        loop {
            if y & 0x1 != 0 {
                let ta = at(i)?;
                if current == Some(15) && class_indicator.is_none() {
                    class_indicator = Some(ta);
                }
                i += 1;
            }
            if y & 0x2 != 0 {
                at(i)?;
                i += 1;
            }
            if y & 0x4 != 0 {
                at(i)?;
                i += 1;
            }
            if y & 0x8 == 0 {
                break;
            }
            let td = at(i)?;
            i += 1;
            let t = td & 0x0F;
            if !protocols.contains(&t) {
                protocols.push(t);
            }
            current = Some(t);
            y = td >> 4;
        }
        if protocols.is_empty() {
            protocols.push(0);
        }
        let historical_at = i;
        let end = historical_at + historical_len;
        // TCK is present unless T=0 is the only protocol indicated.
        let has_tck = protocols.iter().any(|t| *t != 0);
        let total = end + usize::from(has_tck);
        if bytes.len() < total {
            return Err(AtrError::Truncated(bytes.len()));
        }
        if bytes.len() > total {
            return Err(AtrError::Trailing(bytes.len() - total));
        }
        if has_tck && bytes[1..total].iter().fold(0u8, |a, b| a ^ b) != 0 {
            return Err(AtrError::BadCheck);
        }
        Ok(Atr {
            raw: bytes.to_vec(),
            protocols,
            historical_at,
            historical_len,
            class_indicator,
        })
    }

    /// Builds a direct-convention ATR: `T=0` and `T=1` offered when `t1`, the T=15 class
    /// indicator `classes` when given (a UICC), and the historical bytes (at most 15).
    pub fn build(t1: bool, classes: Option<u8>, historical: &[u8]) -> Vec<u8> {
        let k = historical.len().min(15);
        // TD1 (T=0) always, then a TD for T=1 and/or one for T=15 followed by its TA.
        let mut tds: Vec<(u8, Option<u8>)> = vec![(0, None)];
        if t1 {
            tds.push((1, None));
        }
        if let Some(c) = classes {
            tds.push((15, Some(c)));
        }
        let mut atr = vec![0x3B, 0x80 | k as u8];
        for (n, (t, ta)) in tds.iter().enumerate() {
            let more = n + 1 < tds.len();
            atr.push(((more as u8) << 7) | ((ta.is_some() as u8) << 4) | t);
            if let Some(ta) = ta {
                atr.push(*ta);
            }
        }
        atr.extend_from_slice(&historical[..k]);
        if t1 || classes.is_some() {
            let tck = atr[1..].iter().fold(0u8, |a, b| a ^ b);
            atr.push(tck);
        }
        atr
    }

    /// The ATR's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The protocols the ATR offers (`T=0` when it indicates none), in the order announced.
    pub fn protocols(&self) -> &[u8] {
        &self.protocols
    }

    /// The historical bytes.
    pub fn historical(&self) -> &[u8] {
        &self.raw[self.historical_at..self.historical_at + self.historical_len]
    }

    /// The voltage classes of the first TA for T=15, when the ATR carries one.
    pub fn voltage_classes(&self) -> Option<VoltageClasses> {
        self.class_indicator.map(|b| VoltageClasses(b & 0x3F))
    }

    /// Whether the card announces itself as a UICC: a T=15 class indicator naming at least one
    /// voltage class. Other smart cards (the My Number card, bank cards) carry none.
    pub fn is_uicc(&self) -> bool {
        self.voltage_classes().is_some_and(|c| c.0 & 0x07 != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn published_atrs() {
        // A real UICC (sysmoUSIM-SJS1, the ATR pySim's card model matches): T=0, T=15 class indicator C7.
        let uicc = hex::decode("3B9F96801FC78031A073BE21136743200718000001A5").unwrap();
        let a = Atr::parse(&uicc).unwrap();
        assert!(a.is_uicc());
        assert_eq!(a.protocols(), &[0, 15]);
        assert_eq!(a.voltage_classes(), Some(VoltageClasses(0x07)));
        assert_eq!(a.historical().len(), 15);
        // A plain T=0 card without TCK.
        let a = Atr::parse(&[0x3B, 0x02, 0x14, 0x50]).unwrap();
        assert_eq!(a.protocols(), &[0]);
        assert!(!a.is_uicc());
        // kagi's default simulated card: T=0 and T=1, "KAGI-SIM".
        let mut sim = vec![0x3B, 0x88, 0x80, 0x01];
        sim.extend_from_slice(b"KAGI-SIM");
        sim.push(sim[1..].iter().fold(0, |a, b| a ^ b));
        let a = Atr::parse(&sim).unwrap();
        assert_eq!(
            (a.protocols(), a.historical()),
            (&[0u8, 1][..], &b"KAGI-SIM"[..])
        );
        assert!(!a.is_uicc());
    }

    #[test]
    fn errors() {
        assert_eq!(Atr::parse(&[]), Err(AtrError::Truncated(0)));
        assert_eq!(Atr::parse(&[0x3A, 0x00]), Err(AtrError::BadInitial(0x3A)));
        assert_eq!(Atr::parse(&[0x3B, 0x02, 0x14]), Err(AtrError::Truncated(3)));
        assert_eq!(Atr::parse(&[0x3B, 0x00, 0x00]), Err(AtrError::Trailing(1)));
        let mut sim = vec![0x3B, 0x81, 0x80, 0x01, 0x41];
        sim.push(sim[1..].iter().fold(0, |a, b| a ^ b) ^ 1);
        assert_eq!(Atr::parse(&sim), Err(AtrError::BadCheck));
    }

    proptest! {
        #[test]
        fn built_atrs_parse_back(t1: bool, classes in proptest::option::of(1u8..0x40),
                                 hist in proptest::collection::vec(any::<u8>(), 0..15)) {
            let raw = Atr::build(t1, classes, &hist);
            let a = Atr::parse(&raw).unwrap();
            prop_assert_eq!(a.historical(), &hist[..]);
            prop_assert_eq!(a.protocols().contains(&1), t1);
            prop_assert_eq!(a.voltage_classes(), classes.map(VoltageClasses));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Atr::parse(&bytes);
        }
    }
}
