//! The canonical binary encoding: postcard (a stable, compact serde format) with one rule on
//! top — a message decodes only if encoding the decoded value gives back exactly the bytes
//! received. So every value has one encoding, signatures are checked over the bytes that
//! travelled (never over a re-serialisation), and trailing or padded bytes are refused.

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// The largest message any party accepts (a JPKI credential with its certificates is a few
/// kilobytes; card scripts of a load file some tens).
pub const MAX_MESSAGE: usize = 1 << 20;

/// Why bytes are not a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// Longer than [`MAX_MESSAGE`].
    #[error("message of {0} bytes is larger than the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    /// Not a valid encoding of the expected message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Decodes, but is not the canonical encoding of what it decodes to (extra bytes,
    /// over-long integers).
    #[error("the message is not in canonical form")]
    NotCanonical,
    /// The value could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// Encodes a value canonically.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = postcard::to_stdvec(value).map_err(|e| CodecError::Encode(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes a value, refusing anything but its canonical encoding.
pub fn decode<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let value: T = postcard::from_bytes(bytes).map_err(|e| CodecError::Malformed(e.to_string()))?;
    match postcard::to_stdvec(&value) {
        Ok(again) if again == bytes => Ok(value),
        Ok(_) => Err(CodecError::NotCanonical),
        Err(e) => Err(CodecError::Encode(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct M {
        n: u64,
        s: String,
        v: Vec<u8>,
        o: Option<u32>,
    }

    #[test]
    fn trailing_and_overlong_encodings_are_refused() {
        let m = M {
            n: 300,
            s: "x".into(),
            v: vec![1, 2],
            o: None,
        };
        let mut b = encode(&m).unwrap();
        assert_eq!(decode::<M>(&b).unwrap(), m);
        b.push(0);
        assert_eq!(decode::<M>(&b), Err(CodecError::NotCanonical));
        // 300 as an over-long varint (AC 82 00 instead of AC 02).
        let good = encode(&m).unwrap();
        let mut long = vec![0xAC, 0x82, 0x00];
        long.extend_from_slice(&good[2..]);
        assert!(decode::<M>(&long).is_err());
        assert!(matches!(
            decode::<M>(&vec![0; MAX_MESSAGE + 1]),
            Err(CodecError::TooLarge(_))
        ));
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode::<M>(&b);
        }

        #[test]
        fn round_trip(n: u64, s in ".{0,20}", v in proptest::collection::vec(any::<u8>(), 0..50), o: Option<u32>) {
            let m = M { n, s, v, o };
            prop_assert_eq!(decode::<M>(&encode(&m).unwrap()).unwrap(), m);
        }
    }
}
