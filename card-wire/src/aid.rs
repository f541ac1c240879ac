//! Application identifiers (ISO/IEC 7816-4 §8.2.1.2, ISO/IEC 7816-5): 5 to 16 bytes, a
//! 5-byte registered application provider identifier (RID) and up to 11 bytes of proprietary
//! extension (PIX). A value of this type is always a well-formed length, so code holding an
//! [`Aid`] never checks the length again.

use core::fmt;

/// Fewest bytes in an AID (the RID alone).
pub const MIN_LEN: usize = 5;
/// Most bytes in an AID (RID and an 11-byte PIX).
pub const MAX_LEN: usize = 16;

/// An application identifier of 5 to 16 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Aid(Vec<u8>);

/// Bytes or text that are not an AID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AidError {
    /// The length is outside 5..=16.
    #[error(
        "an AID is 5 to 16 bytes (ISO 7816-4), got {0}: give the full AID, e.g. A000000151000000"
    )]
    Length(usize),
    /// Text that is not hexadecimal.
    #[error("an AID is written in hexadecimal (e.g. A000000151000000): '{0}' is not")]
    NotHex(String),
}

impl Aid {
    /// An AID from 5 to 16 bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, AidError> {
        if (MIN_LEN..=MAX_LEN).contains(&bytes.len()) {
            Ok(Aid(bytes.to_vec()))
        } else {
            Err(AidError::Length(bytes.len()))
        }
    }

    /// An AID from hexadecimal text (spaces allowed, either case).
    pub fn from_hex(text: &str) -> Result<Self, AidError> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = hex::decode(&compact).map_err(|_| AidError::NotHex(text.to_string()))?;
        Self::new(&bytes)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The 5-byte registered application provider identifier.
    pub fn rid(&self) -> &[u8] {
        &self.0[..MIN_LEN]
    }

    /// Whether `prefix` selects this AID (full or right-truncated partial match, ISO 7816-4
    /// SELECT by DF name).
    pub fn matches(&self, prefix: &[u8]) -> bool {
        self.0.starts_with(prefix)
    }

    /// Uppercase hexadecimal (the same text as `Display`).
    pub fn to_hex(&self) -> String {
        crate::hex_upper(&self.0)
    }
}

impl TryFrom<&[u8]> for Aid {
    type Error = AidError;
    fn try_from(bytes: &[u8]) -> Result<Self, AidError> {
        Aid::new(bytes)
    }
}

impl TryFrom<Vec<u8>> for Aid {
    type Error = AidError;
    fn try_from(bytes: Vec<u8>) -> Result<Self, AidError> {
        if (MIN_LEN..=MAX_LEN).contains(&bytes.len()) {
            Ok(Aid(bytes))
        } else {
            Err(AidError::Length(bytes.len()))
        }
    }
}

impl<const N: usize> TryFrom<&[u8; N]> for Aid {
    type Error = AidError;
    fn try_from(bytes: &[u8; N]) -> Result<Self, AidError> {
        Aid::new(bytes)
    }
}

impl core::str::FromStr for Aid {
    type Err = AidError;
    fn from_str(s: &str) -> Result<Self, AidError> {
        Aid::from_hex(s)
    }
}

impl AsRef<[u8]> for Aid {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Aid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Aid({})", self.to_hex())
    }
}

impl fmt::Display for Aid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn gp_isd_aid_round_trips() {
        // GlobalPlatform's default ISD AID (GP Card Specification 2.3.1, §H.1).
        let isd = Aid::from_hex("A0 00 00 01 51 00 00 00").unwrap();
        assert_eq!(
            isd.as_bytes(),
            &[0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00]
        );
        assert_eq!(isd.to_string(), "A000000151000000");
        assert_eq!(format!("{isd:?}"), "Aid(A000000151000000)");
        assert_eq!(isd.rid(), &[0xA0, 0x00, 0x00, 0x01, 0x51]);
        assert!(isd.matches(&[0xA0, 0x00, 0x00]));
        assert!(!isd.matches(&[0xA0, 0x01]));
        assert_eq!("a000000151000000".parse::<Aid>().unwrap(), isd);
    }

    #[test]
    fn bounds_and_errors() {
        assert_eq!(Aid::new(&[0; 4]), Err(AidError::Length(4)));
        assert_eq!(Aid::new(&[0; 17]), Err(AidError::Length(17)));
        assert!(Aid::new(&[0; 5]).is_ok());
        assert!(Aid::new(&[0; 16]).is_ok());
        assert!(matches!(
            Aid::from_hex("A0000001G1"),
            Err(AidError::NotHex(_))
        ));
        assert_eq!(Aid::from_hex("A0000001"), Err(AidError::Length(4)));
        let msg = Aid::new(&[]).unwrap_err().to_string();
        assert!(
            msg.contains("5 to 16 bytes") && msg.contains("got 0"),
            "{msg}"
        );
    }

    proptest! {
        #[test]
        fn length_decides(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
            let ok = (5..=16).contains(&bytes.len());
            let aid = Aid::try_from(bytes.as_slice());
            prop_assert_eq!(aid.is_ok(), ok);
            prop_assert_eq!(Aid::try_from(bytes.clone()).is_ok(), ok);
            if let Ok(a) = aid {
                prop_assert_eq!(a.as_bytes(), bytes.as_slice());
                // Display is uppercase hex of the bytes; parsing it back gives the same AID.
                prop_assert_eq!(a.to_string(), hex::encode_upper(&bytes));
                prop_assert_eq!(a.to_string().parse::<Aid>().unwrap(), a);
            } else {
                prop_assert_eq!(aid.unwrap_err(), AidError::Length(bytes.len()));
            }
        }

        #[test]
        fn text_never_panics(text in ".{0,40}") {
            let _ = Aid::from_hex(&text);
        }
    }
}
