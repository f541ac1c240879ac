//! What a UICC (SIM) adds that host and card must agree on: the ICCID and the file that holds
//! it (`EF.ICCID`, `2FE2` under the MF, ETSI TS 102 221 §13.2), and the issuer security
//! domain's AID in GlobalPlatform's UICC configuration.

use thiserror::Error;

/// The MF.
pub const FID_MF: u16 = 0x3F00;
/// `EF.ICCID` (transparent, 10 bytes).
pub const FID_ICCID: u16 = 0x2FE2;
/// The ISD AID of GlobalPlatform's UICC configuration.
pub const UICC_ISD_AID: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];

/// Why a string or file content is not an ICCID.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IccidError {
    /// Not 18 to 20 decimal digits.
    #[error("an ICCID is 18 to 20 decimal digits, not '{0}'")]
    Format(String),
    /// The last digit is not the Luhn check digit of the others.
    #[error("ICCID {0}: the last digit is not its Luhn check digit")]
    Check(String),
    /// `EF.ICCID` does not hold swapped-nibble BCD.
    #[error("EF.ICCID does not hold BCD digits")]
    Encoding,
}

/// An ICCID (ITU-T E.118): `89` (telecom), country code, issuer, account, Luhn check digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Iccid(String);

/// The Luhn check digit for `digits`.
pub fn luhn_digit(digits: &str) -> u8 {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

impl Iccid {
    /// Validates an ICCID: 18 to 20 digits, the last one its Luhn check digit.
    pub fn new(digits: &str) -> Result<Iccid, IccidError> {
        if !(18..=20).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IccidError::Format(digits.into()));
        }
        let (body, check) = digits.split_at(digits.len() - 1);
        if luhn_digit(body) != check.as_bytes()[0] - b'0' {
            return Err(IccidError::Check(digits.into()));
        }
        Ok(Iccid(digits.into()))
    }

    /// An ICCID from its digits without the check digit (17 to 19), which is appended.
    pub fn with_check_digit(body: &str) -> Result<Iccid, IccidError> {
        if !(17..=19).contains(&body.len()) || !body.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IccidError::Format(body.into()));
        }
        Iccid::new(&format!("{body}{}", luhn_digit(body)))
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `EF.ICCID`'s content: swapped-nibble BCD, padded with `F`, 10 bytes.
    pub fn to_ef(&self) -> [u8; 10] {
        let mut out = [0xFFu8; 10];
        for (i, d) in self.0.bytes().enumerate() {
            let d = d - b'0';
            let b = &mut out[i / 2];
            *b = if i % 2 == 0 {
                (*b & 0xF0) | d
            } else {
                (*b & 0x0F) | (d << 4)
            };
        }
        out
    }

    /// Reads `EF.ICCID`'s content back.
    pub fn from_ef(ef: &[u8]) -> Result<Iccid, IccidError> {
        let mut s = String::new();
        for b in ef {
            for nibble in [b & 0x0F, b >> 4] {
                match nibble {
                    0..=9 => s.push(char::from(b'0' + nibble)),
                    0xF => {}
                    _ => return Err(IccidError::Encoding),
                }
            }
        }
        Iccid::new(&s)
    }
}

impl std::fmt::Display for Iccid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_iccids() {
        // The ICCID pySim's SCP80 example names ("KIC1 + KID1 of 8988211000000467285"):
        // a valid Luhn check digit, 19 digits.
        let i = Iccid::new("8988211000000467285").unwrap();
        assert_eq!(hex::encode_upper(i.to_ef()), "988812010000407682F5");
        assert_eq!(Iccid::from_ef(&i.to_ef()).unwrap(), i);
        assert!(matches!(
            Iccid::new("8988211000000467284"),
            Err(IccidError::Check(_))
        ));
        assert!(matches!(Iccid::new("89882"), Err(IccidError::Format(_))));
        assert_eq!(Iccid::from_ef(&[0xA9; 10]), Err(IccidError::Encoding));
    }

    proptest! {
        #[test]
        fn ef_round_trip(body in "[0-9]{17,19}") {
            let i = Iccid::with_check_digit(&body).unwrap();
            prop_assert_eq!(Iccid::from_ef(&i.to_ef()).unwrap(), i);
        }

        #[test]
        fn any_ef_bytes_never_panic(ef in proptest::collection::vec(any::<u8>(), 0..12)) {
            let _ = Iccid::from_ef(&ef);
        }

        #[test]
        fn one_changed_digit_is_caught(body in "[0-9]{17,19}", pos in 0usize..18, by in 1u8..10) {
            let i = Iccid::with_check_digit(&body).unwrap();
            let mut d = i.as_str().as_bytes().to_vec();
            let pos = pos % d.len();
            d[pos] = b'0' + (d[pos] - b'0' + by) % 10;
            let s = String::from_utf8(d).unwrap();
            prop_assert!(Iccid::new(&s).is_err());
        }
    }
}
