//! BER-TLV (ISO/IEC 7816-4 §6.3, as used by GlobalPlatform): a borrowed reader and a minimal
//! encoder.
//!
//! This replaces `iso7816-tlv` rather than wrapping it, because its quirks bite exactly where card
//! software needs it (see `research/rust-ecosystem.md` §2): it cannot find constructed tags,
//! silently reads indefinite length `80` as zero, stops at `00`/`FF` padding, masks truncation as
//! "invalid tag" and its error type is not a `std::error::Error`. The tests check this module
//! against `iso7816-tlv` on valid input so the two agree where both are right.

use core::fmt;

/// What is wrong with a BER-TLV encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlvError {
    /// Input ended inside a tag.
    #[error("BER-TLV truncated inside a tag at offset {0}")]
    TruncatedTag(usize),
    /// A tag longer than three bytes.
    #[error("BER-TLV tag at offset {0} is longer than 3 bytes")]
    TagTooLong(usize),
    /// Input ended inside a length field.
    #[error("BER-TLV truncated inside the length of tag {tag} at offset {offset}")]
    TruncatedLength {
        /// The tag whose length is cut.
        tag: Tag,
        /// Offset of the length field.
        offset: usize,
    },
    /// Indefinite length (`80`) is not allowed in ISO 7816 BER-TLV.
    #[error("tag {0} uses indefinite length (80), which ISO 7816 does not allow")]
    IndefiniteLength(Tag),
    /// A length encoded with more than four bytes, or `85`..`FF`.
    #[error("tag {0} has an unsupported length encoding")]
    BadLength(Tag),
    /// The value runs past the end of the input.
    #[error("value of tag {tag} needs {need} bytes but only {have} remain")]
    TruncatedValue {
        /// The tag whose value is cut.
        tag: Tag,
        /// Bytes the length announces.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// Children were asked of a primitive object.
    #[error("tag {0} is primitive and has no children")]
    NotConstructed(Tag),
    /// A required tag is missing.
    #[error("required tag {0} is missing")]
    Missing(Tag),
}

/// A BER-TLV tag of one to three bytes, stored big-endian in a `u32`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub u32);

impl Tag {
    /// The encoded bytes of the tag.
    pub fn to_bytes(self) -> Vec<u8> {
        let b = self.0.to_be_bytes();
        let skip = b.iter().take(3).take_while(|x| **x == 0).count();
        b[skip..].to_vec()
    }

    fn first_byte(self) -> u8 {
        self.to_bytes()[0]
    }

    /// Bit 6 of the first byte: the value is itself a sequence of TLV objects.
    pub fn is_constructed(self) -> bool {
        self.first_byte() & 0x20 != 0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode_upper(self.to_bytes()))
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({self})")
    }
}

/// One BER-TLV object borrowed from its input.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The tag.
    pub tag: Tag,
    /// The value bytes.
    pub value: &'a [u8],
}

impl fmt::Debug for Tlv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.tag, hex::encode_upper(self.value))
    }
}

fn read_one(input: &[u8], base: usize) -> Result<(Tlv<'_>, usize), TlvError> {
    let first = *input.first().ok_or(TlvError::TruncatedTag(base))?;
    let mut tag = first as u32;
    let mut i = 1;
    if first & 0x1F == 0x1F {
        loop {
            let b = *input.get(i).ok_or(TlvError::TruncatedTag(base + i))?;
            if i == 3 {
                return Err(TlvError::TagTooLong(base));
            }
            tag = (tag << 8) | b as u32;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    let tag = Tag(tag);
    let l0 = *input.get(i).ok_or(TlvError::TruncatedLength {
        tag,
        offset: base + i,
    })?;
    i += 1;
    let len = match l0 {
        0x00..=0x7F => l0 as usize,
        0x80 => return Err(TlvError::IndefiniteLength(tag)),
        0x81..=0x84 => {
            let n = (l0 & 0x7F) as usize;
            let bytes = input.get(i..i + n).ok_or(TlvError::TruncatedLength {
                tag,
                offset: base + i,
            })?;
            i += n;
            bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize)
        }
        _ => return Err(TlvError::BadLength(tag)),
    };
    let have = input.len() - i;
    if len > have {
        return Err(TlvError::TruncatedValue {
            tag,
            need: len,
            have,
        });
    }
    Ok((
        Tlv {
            tag,
            value: &input[i..i + len],
        },
        i + len,
    ))
}

/// Iterates over consecutive TLV objects, skipping `00` and `FF` padding between them.
/// After the first error it yields nothing more.
#[derive(Clone)]
pub struct TlvIter<'a> {
    input: &'a [u8],
    offset: usize,
    failed: bool,
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Result<Tlv<'a>, TlvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        while let Some(b) = self.input.get(self.offset) {
            if *b == 0x00 || *b == 0xFF {
                self.offset += 1;
            } else {
                break;
            }
        }
        if self.offset >= self.input.len() {
            return None;
        }
        match read_one(&self.input[self.offset..], self.offset) {
            Ok((tlv, used)) => {
                self.offset += used;
                Some(Ok(tlv))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Reads the TLV objects in `input` one by one.
pub fn iter(input: &[u8]) -> TlvIter<'_> {
    TlvIter {
        input,
        offset: 0,
        failed: false,
    }
}

/// Parses every object in `input` (padding skipped), failing on the first malformed one.
pub fn parse_all(input: &[u8]) -> Result<Vec<Tlv<'_>>, TlvError> {
    iter(input).collect()
}

/// Parses exactly one object that must fill `input`.
pub fn parse_single(input: &[u8]) -> Result<Tlv<'_>, TlvError> {
    let (tlv, used) = read_one(input, 0)?;
    if used != input.len() {
        return Err(TlvError::TruncatedValue {
            tag: tlv.tag,
            need: used,
            have: input.len(),
        });
    }
    Ok(tlv)
}

impl<'a> Tlv<'a> {
    /// The child objects of a constructed object.
    pub fn children(&self) -> Result<Vec<Tlv<'a>>, TlvError> {
        if !self.tag.is_constructed() {
            return Err(TlvError::NotConstructed(self.tag));
        }
        parse_all(self.value)
    }

    /// Depth-first search for `tag` below this object (constructed tags included).
    pub fn find(&self, tag: Tag) -> Result<Option<Tlv<'a>>, TlvError> {
        if !self.tag.is_constructed() {
            return Ok(None);
        }
        find(self.value, tag)
    }

    /// Like [`Tlv::find`] but a missing tag is an error.
    pub fn require(&self, tag: Tag) -> Result<Tlv<'a>, TlvError> {
        self.find(tag)?.ok_or(TlvError::Missing(tag))
    }
}

/// Depth-first search for `tag` in a sequence of objects, entering constructed ones; finds
/// constructed tags as well as primitive ones.
pub fn find(input: &[u8], tag: Tag) -> Result<Option<Tlv<'_>>, TlvError> {
    for item in iter(input) {
        let tlv = item?;
        if tlv.tag == tag {
            return Ok(Some(tlv));
        }
        if tlv.tag.is_constructed()
            && let Some(found) = find(tlv.value, tag)?
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Every object with `tag`, at any depth, in document order.
pub fn find_all(input: &[u8], tag: Tag) -> Result<Vec<Tlv<'_>>, TlvError> {
    let mut out = Vec::new();
    fn walk<'a>(input: &'a [u8], tag: Tag, out: &mut Vec<Tlv<'a>>) -> Result<(), TlvError> {
        for item in iter(input) {
            let tlv = item?;
            if tlv.tag == tag {
                out.push(tlv);
            }
            if tlv.tag.is_constructed() {
                walk(tlv.value, tag, out)?;
            }
        }
        Ok(())
    }
    walk(input, tag, &mut out)?;
    Ok(out)
}

/// Encodes a length field in minimal (DER) form.
pub fn encode_length(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Encodes one object.
pub fn encode(tag: Tag, value: &[u8]) -> Vec<u8> {
    let mut out = tag.to_bytes();
    encode_length(value.len(), &mut out);
    out.extend_from_slice(value);
    out
}

/// Encodes one object from a tag number (`0x9F7F`) and value.
pub fn tlv(tag: u32, value: &[u8]) -> Vec<u8> {
    encode(Tag(tag), value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn fci_constructed_search() {
        // 6F { 84 <aid>, A5 { 73 {..}, 9F65 01 FF } }
        let fci = h("6F 13 84 08 A000000151000000 A5 07 73 00 9F65 01 FF 00 00");
        let t = parse_all(&fci).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(
            find(&fci, Tag(0x84)).unwrap().unwrap().value,
            h("A000000151000000")
        );
        // Constructed tags are found too (a known gap of iso7816-tlv).
        let a5 = find(&fci, Tag(0xA5)).unwrap().unwrap();
        assert_eq!(a5.children().unwrap().len(), 2);
        assert_eq!(find(&fci, Tag(0x9F65)).unwrap().unwrap().value, [0xFF]);
        assert!(find(&fci, Tag(0x5F)).unwrap().is_none());
    }

    #[test]
    fn padding_skipped_and_errors_typed() {
        let padded = h("00 FF 80 01 AA 00 81 00");
        let v = parse_all(&padded).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(
            parse_all(&h("C1 80")),
            Err(TlvError::IndefiniteLength(Tag(0xC1)))
        );
        assert_eq!(
            parse_all(&h("C1 05 01")),
            Err(TlvError::TruncatedValue {
                tag: Tag(0xC1),
                need: 5,
                have: 1
            })
        );
        assert!(matches!(
            parse_all(&h("9F")),
            Err(TlvError::TruncatedTag(_))
        ));
        assert!(matches!(
            parse_all(&h("C1 82 01")),
            Err(TlvError::TruncatedLength { .. })
        ));
        assert_eq!(
            parse_all(&h("DF 81 82 83 00")),
            Err(TlvError::TagTooLong(0))
        );
        assert_eq!(
            parse_all(&h("C1 85 00")),
            Err(TlvError::BadLength(Tag(0xC1)))
        );
    }

    #[test]
    fn encode_lengths() {
        assert_eq!(tlv(0x80, &[0; 0x7F])[..2], [0x80, 0x7F]);
        assert_eq!(tlv(0x80, &[0; 0x80])[..3], [0x80, 0x81, 0x80]);
        assert_eq!(
            tlv(0x9F7F, &[0; 0x100])[..5],
            [0x9F, 0x7F, 0x82, 0x01, 0x00]
        );
    }

    fn arb_tag() -> impl Strategy<Value = (u32, bool)> {
        prop_oneof![
            (0x01u32..0x1F, any::<bool>(), 0u32..2)
                .prop_map(|(n, c, cls)| { ((cls << 7) | if c { 0x20 } else { 0 } | n, c) }),
            (0x1Fu32..0x7F, any::<bool>())
                .prop_map(|(n, c)| { (((0x9F | if c { 0x20 } else { 0 }) << 8) | n, c) }),
        ]
    }

    fn arb_tlv() -> impl Strategy<Value = Vec<u8>> {
        let leaf = (arb_tag(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|((t, _), v)| encode(Tag(t & !0x2000 & !0x20), &v));
        leaf.prop_recursive(3, 16, 4, |inner| {
            (arb_tag(), proptest::collection::vec(inner, 0..4)).prop_map(|((t, _), kids)| {
                let t = if t > 0xFF { t | 0x2000 } else { t | 0x20 };
                encode(Tag(t), &kids.concat())
            })
        })
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), t in any::<u16>()) {
            let _ = parse_all(&bytes);
            let _ = find(&bytes, Tag(t as u32));
            let _ = find_all(&bytes, Tag(t as u32));
            let _ = parse_single(&bytes);
        }

        /// Our reader and the independent iso7816-tlv crate agree on valid encodings.
        #[test]
        fn agrees_with_iso7816_tlv(enc in arb_tlv()) {
            let ours = parse_single(&enc).unwrap();
            let theirs = iso7816_tlv::ber::Tlv::from_bytes(&enc).unwrap();
            let their_tag = theirs.tag().to_bytes().to_vec();
            prop_assert_eq!(ours.tag.to_bytes(), their_tag);
            // (Not compared: iso7816-tlv re-encodes length 7F as `81 7F`, not minimal DER.)
            if let iso7816_tlv::ber::Value::Primitive(v) = theirs.value() {
                prop_assert_eq!(ours.value, &v[..]);
            } else {
                prop_assert_eq!(ours.children().unwrap().len(),
                    match theirs.value() { iso7816_tlv::ber::Value::Constructed(c) => c.len(), _ => 0 });
            }
        }
    }
}
