//! ISO/IEC 7816-4 command and response APDUs: cases 1–4 in short and extended form, and the
//! class byte with logical channels 0–19, secure-messaging and chaining indications.
//!
//! Parsing never panics: every malformed encoding gives an [`ApduError`] that names what is
//! wrong. Encoding picks the short form when it fits and the extended form otherwise (or when
//! asked for it).

use crate::sw::StatusWord;
use core::fmt;

/// Largest command data field (Nc) of an extended APDU.
pub const MAX_NC: usize = 65_535;
/// Largest expected response length (Ne) of an extended APDU.
pub const MAX_NE: usize = 65_536;

/// What is wrong with an APDU encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApduError {
    /// Fewer than the four header bytes.
    #[error("command APDU of {len} bytes is shorter than the 4-byte header")]
    TooShort {
        /// Length received.
        len: usize,
    },
    /// The length fields do not match the number of bytes.
    #[error("APDU body of {body} bytes does not match its length fields ({detail})")]
    LengthMismatch {
        /// Bytes after the header.
        body: usize,
        /// Which reading failed.
        detail: &'static str,
    },
    /// `Lc = 0` is not a valid encoding (short or extended).
    #[error("Lc of zero is not a valid encoding: omit the data field instead")]
    ZeroLc,
    /// CLA `FF` is reserved for PPS and never starts a command.
    #[error("CLA {0:02X} is invalid (reserved for PPS)")]
    InvalidClass(u8),
    /// INS `6x` and `9x` are invalid per ISO 7816-3/-4.
    #[error("INS {0:02X} is invalid (6x and 9x are reserved for status words)")]
    InvalidIns(u8),
    /// Command data longer than the extended form allows.
    #[error("command data of {0} bytes exceeds the extended-length maximum of 65535")]
    DataTooLong(usize),
    /// Ne outside 1..=65536.
    #[error("expected response length {0} is outside 1..=65536")]
    LeOutOfRange(usize),
    /// A logical channel number outside 0..=19.
    #[error("logical channel {0} is outside 0..=19")]
    ChannelOutOfRange(u8),
    /// A class byte whose coding has no channel (reserved codings).
    #[error("CLA {0:02X} uses a reserved coding with no logical channel")]
    ReservedClass(u8),
    /// A response shorter than its status word.
    #[error("response of {0} bytes is shorter than the 2-byte status word")]
    ResponseTooShort(usize),
    /// A command that needs the extended form was asked to be encoded short.
    #[error("command needs extended length (Nc {nc}, Ne {ne}) but short form was required")]
    NeedsExtended {
        /// Command data length.
        nc: usize,
        /// Expected response length.
        ne: usize,
    },
}

/// Secure-messaging indication of a class byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureMessaging {
    /// No secure messaging.
    None,
    /// Proprietary secure messaging (GlobalPlatform SCP: CLA bit `04`).
    Proprietary,
    /// ISO secure messaging, command header not processed.
    HeaderNotProcessed,
    /// ISO secure messaging, command header authenticated.
    HeaderAuthenticated,
}

/// The structure of a class byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassCoding {
    /// `x00x xxxx`: channels 0–3, two SM bits.
    First,
    /// `x1xx xxxx`: channels 4–19, one SM bit.
    Further,
    /// `x01x xxxx`: reserved for future use.
    Reserved,
    /// `FF`: invalid.
    Invalid,
}

/// A class byte (CLA), decoded per ISO 7816-4 §5.4.1 and GlobalPlatform 11.1.4 (the
/// proprietary bit `80` uses the same channel/SM/chaining layout).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Class(pub u8);

impl Class {
    /// The raw byte.
    pub const fn byte(self) -> u8 {
        self.0
    }

    /// Which coding the byte uses.
    pub const fn coding(self) -> ClassCoding {
        if self.0 == 0xFF {
            ClassCoding::Invalid
        } else if self.0 & 0x40 != 0 {
            ClassCoding::Further
        } else if self.0 & 0x20 != 0 {
            ClassCoding::Reserved
        } else {
            ClassCoding::First
        }
    }

    /// Bit `80`: proprietary class (GlobalPlatform commands use `80`/`84`).
    pub const fn is_proprietary(self) -> bool {
        self.0 & 0x80 != 0
    }

    /// The logical channel, 0–19, or `None` for reserved/invalid codings.
    pub const fn channel(self) -> Option<u8> {
        match self.coding() {
            ClassCoding::First => Some(self.0 & 0x03),
            ClassCoding::Further => Some(4 + (self.0 & 0x0F)),
            _ => None,
        }
    }

    /// Bit `10`: command chaining, more commands of the chain follow.
    pub const fn is_chained(self) -> bool {
        matches!(self.coding(), ClassCoding::First | ClassCoding::Further) && self.0 & 0x10 != 0
    }

    /// The secure-messaging indication.
    pub const fn secure_messaging(self) -> SecureMessaging {
        match self.coding() {
            ClassCoding::First => match (self.0 >> 2) & 0x03 {
                0 => SecureMessaging::None,
                1 => SecureMessaging::Proprietary,
                2 => SecureMessaging::HeaderNotProcessed,
                _ => SecureMessaging::HeaderAuthenticated,
            },
            ClassCoding::Further => {
                if self.0 & 0x20 != 0 {
                    SecureMessaging::HeaderNotProcessed
                } else {
                    SecureMessaging::None
                }
            }
            _ => SecureMessaging::None,
        }
    }

    /// Whether any secure messaging is indicated.
    pub const fn has_secure_messaging(self) -> bool {
        !matches!(self.secure_messaging(), SecureMessaging::None)
    }

    /// The same class on another logical channel, moving between the first and further
    /// interindustry codings as needed; proprietary, chaining and secure-messaging
    /// indications are kept.
    pub fn with_channel(self, channel: u8) -> Result<Class, ApduError> {
        if channel > 19 {
            return Err(ApduError::ChannelOutOfRange(channel));
        }
        let sm = self.has_secure_messaging();
        let first_sm = self.0 & 0x0C;
        let base = (self.0 & 0x80) | (self.0 & 0x10);
        let coding = self.coding();
        if matches!(coding, ClassCoding::Reserved | ClassCoding::Invalid) {
            return Err(ApduError::ReservedClass(self.0));
        }
        let byte = if channel < 4 {
            let smbits = match coding {
                ClassCoding::First => first_sm,
                _ if sm => 0x04,
                _ => 0,
            };
            base | smbits | channel
        } else {
            base | 0x40 | if sm { 0x20 } else { 0 } | (channel - 4)
        };
        // Proprietary + SM + chaining on channel 19 would be FF, which ISO reserves.
        if byte == 0xFF {
            return Err(ApduError::InvalidClass(byte));
        }
        Ok(Class(byte))
    }

    /// The same class with the chaining bit set or cleared.
    pub const fn with_chaining(self, more: bool) -> Class {
        if more {
            Class(self.0 | 0x10)
        } else {
            Class(self.0 & !0x10)
        }
    }

    /// The same class with the secure-messaging indication GlobalPlatform uses (`04` in the first
    /// coding, `20` in the further coding) set or cleared.
    pub const fn with_secure_messaging(self, on: bool) -> Class {
        match (self.coding(), on) {
            (ClassCoding::Further, true) => Class(self.0 | 0x20),
            (ClassCoding::Further, false) => Class(self.0 & !0x20),
            (_, true) => Class((self.0 & !0x0C) | 0x04),
            (_, false) => Class(self.0 & !0x0C),
        }
    }

    /// The class byte as GlobalPlatform secure messaging MACs it: channel bits zeroed, SM
    /// indication set, everything else kept (SCP03 §6.2.4).
    pub const fn for_mac(self) -> Class {
        let c = self.with_secure_messaging(true).0;
        match self.coding() {
            ClassCoding::Further => Class(c & 0xF0),
            _ => Class(c & !0x03),
        }
    }
}

impl fmt::Debug for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Class({:02X})", self.0)
    }
}

/// Whether a command may be encoded in short form, must be extended, or either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LengthForm {
    /// Short when it fits, extended otherwise.
    #[default]
    Auto,
    /// Always extended (as parsed from an extended APDU, or forced by the caller).
    Extended,
}

/// A command APDU.
///
/// Fields are private so that the length limits always hold; build with [`Command::new`] and
/// the `with_` methods, or parse with [`Command::parse`].
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    class: Class,
    ins: u8,
    p1: u8,
    p2: u8,
    data: Vec<u8>,
    ne: Option<usize>,
    form: LengthForm,
    sensitive: bool,
}

impl Command {
    /// A case-1 command (header only).
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8) -> Self {
        Command {
            class: Class(cla),
            ins,
            p1,
            p2,
            data: Vec::new(),
            ne: None,
            form: LengthForm::Auto,
            sensitive: false,
        }
    }

    /// Sets the command data (Nc ≤ 65535; empty means no data field).
    pub fn with_data(mut self, data: impl Into<Vec<u8>>) -> Result<Self, ApduError> {
        let data = data.into();
        if data.len() > MAX_NC {
            return Err(ApduError::DataTooLong(data.len()));
        }
        self.data = data;
        Ok(self)
    }

    /// Sets the expected response length Ne (1..=65536; 256 is `Le = 00` in short form).
    pub fn with_le(mut self, ne: usize) -> Result<Self, ApduError> {
        if ne == 0 || ne > MAX_NE {
            return Err(ApduError::LeOutOfRange(ne));
        }
        self.ne = Some(ne);
        Ok(self)
    }

    /// Sets or clears Ne.
    pub fn with_ne(self, ne: Option<usize>) -> Result<Self, ApduError> {
        match ne {
            Some(n) => self.with_le(n),
            None => Ok(Command { ne: None, ..self }),
        }
    }

    /// Replaces the class byte.
    pub fn with_class(mut self, class: Class) -> Self {
        self.class = class;
        self
    }

    /// Replaces P1.
    pub fn with_p1(mut self, p1: u8) -> Self {
        self.p1 = p1;
        self
    }

    /// Replaces P2.
    pub fn with_p2(mut self, p2: u8) -> Self {
        self.p2 = p2;
        self
    }

    /// Forces the extended length form.
    pub fn with_form(mut self, form: LengthForm) -> Self {
        self.form = form;
        self
    }

    /// Marks the data field as secret (PIN, key material): traces show its length only. This
    /// flag is not part of the encoding.
    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }

    /// Whether the data field was marked secret.
    pub fn is_sensitive(&self) -> bool {
        self.sensitive
    }

    /// CLA.
    pub fn class(&self) -> Class {
        self.class
    }
    /// INS.
    pub fn ins(&self) -> u8 {
        self.ins
    }
    /// P1.
    pub fn p1(&self) -> u8 {
        self.p1
    }
    /// P2.
    pub fn p2(&self) -> u8 {
        self.p2
    }
    /// The command data field (empty when absent).
    pub fn data(&self) -> &[u8] {
        &self.data
    }
    /// Takes the data out, leaving the command without data.
    pub fn take_data(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.data)
    }
    /// Ne, the maximum number of response bytes expected, if any.
    pub fn ne(&self) -> Option<usize> {
        self.ne
    }
    /// The length form requested or parsed.
    pub fn form(&self) -> LengthForm {
        self.form
    }

    /// The header bytes CLA INS P1 P2.
    pub fn header(&self) -> [u8; 4] {
        [self.class.0, self.ins, self.p1, self.p2]
    }

    /// Whether this command is encoded in extended form.
    pub fn is_extended(&self) -> bool {
        self.case() != 1 && self.form == LengthForm::Extended
            || self.data.len() > 255
            || self.ne.is_some_and(|n| n > 256)
    }

    /// The ISO case, 1 to 4.
    pub fn case(&self) -> u8 {
        match (self.data.is_empty(), self.ne.is_some()) {
            (true, false) => 1,
            (true, true) => 2,
            (false, false) => 3,
            (false, true) => 4,
        }
    }

    /// The Lc field as it is encoded (empty, 1 byte, or `00 hi lo`).
    pub fn lc_field(&self) -> Vec<u8> {
        let nc = self.data.len();
        if nc == 0 {
            Vec::new()
        } else if self.is_extended() {
            vec![0, (nc >> 8) as u8, nc as u8]
        } else {
            vec![nc as u8]
        }
    }

    /// Encodes the command (short if it fits unless extended form was requested).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 3 + self.data.len() + 3);
        out.extend_from_slice(&self.header());
        let ext = self.is_extended();
        out.extend_from_slice(&self.lc_field());
        out.extend_from_slice(&self.data);
        if let Some(ne) = self.ne {
            if ext {
                if self.data.is_empty() {
                    out.push(0);
                }
                let le = if ne == MAX_NE { 0 } else { ne };
                out.extend_from_slice(&[(le >> 8) as u8, le as u8]);
            } else {
                out.push(if ne == 256 { 0 } else { ne as u8 });
            }
        }
        out
    }

    /// Encodes in short form or fails when the command does not fit.
    pub fn to_short_bytes(&self) -> Result<Vec<u8>, ApduError> {
        if self.is_extended() {
            return Err(ApduError::NeedsExtended {
                nc: self.data.len(),
                ne: self.ne.unwrap_or(0),
            });
        }
        Ok(self.to_bytes())
    }

    /// Parses a command APDU, rejecting every malformed length encoding.
    pub fn parse(bytes: &[u8]) -> Result<Command, ApduError> {
        if bytes.len() < 4 {
            return Err(ApduError::TooShort { len: bytes.len() });
        }
        let (cla, ins, p1, p2) = (bytes[0], bytes[1], bytes[2], bytes[3]);
        if cla == 0xFF {
            return Err(ApduError::InvalidClass(cla));
        }
        if ins & 0xF0 == 0x60 || ins & 0xF0 == 0x90 {
            return Err(ApduError::InvalidIns(ins));
        }
        let body = &bytes[4..];
        let mismatch = |detail| ApduError::LengthMismatch {
            body: body.len(),
            detail,
        };
        let mut cmd = Command::new(cla, ins, p1, p2);
        match body {
            [] => {}
            [le] => cmd.ne = Some(if *le == 0 { 256 } else { *le as usize }),
            [0, rest @ ..] => {
                // Extended form: 2E, 3E or 4E.
                cmd.form = LengthForm::Extended;
                let ext_le = |hi: u8, lo: u8| {
                    let v = u16::from_be_bytes([hi, lo]) as usize;
                    if v == 0 { MAX_NE } else { v }
                };
                match rest {
                    [hi, lo] => cmd.ne = Some(ext_le(*hi, *lo)),
                    [hi, lo, tail @ ..] if !tail.is_empty() => {
                        let nc = u16::from_be_bytes([*hi, *lo]) as usize;
                        if nc == 0 {
                            return Err(ApduError::ZeroLc);
                        }
                        if tail.len() == nc {
                            cmd.data = tail.to_vec();
                        } else if tail.len() == nc + 2 {
                            cmd.data = tail[..nc].to_vec();
                            cmd.ne = Some(ext_le(tail[nc], tail[nc + 1]));
                        } else {
                            return Err(mismatch("extended Lc"));
                        }
                    }
                    _ => return Err(mismatch("extended form needs at least 3 length bytes")),
                }
            }
            [lc, tail @ ..] => {
                let nc = *lc as usize;
                if tail.len() == nc {
                    cmd.data = tail.to_vec();
                } else if tail.len() == nc + 1 {
                    cmd.data = tail[..nc].to_vec();
                    let le = tail[nc];
                    cmd.ne = Some(if le == 0 { 256 } else { le as usize });
                } else {
                    return Err(mismatch("short Lc"));
                }
            }
        }
        Ok(cmd)
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = if self.sensitive {
            format!("<{} secret bytes>", self.data.len())
        } else {
            hex::encode_upper(&self.data)
        };
        f.debug_struct("Command")
            .field("header", &hex::encode_upper(self.header()))
            .field("data", &data)
            .field("ne", &self.ne)
            .finish()
    }
}

/// A response APDU: data and status word.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// Response data (may be empty).
    pub data: Vec<u8>,
    /// Status word.
    pub sw: StatusWord,
}

impl Response {
    /// A response with data and status.
    pub fn new(data: impl Into<Vec<u8>>, sw: StatusWord) -> Self {
        Response {
            data: data.into(),
            sw,
        }
    }

    /// `data ‖ 9000`.
    pub fn success(data: impl Into<Vec<u8>>) -> Self {
        Self::new(data, StatusWord::SUCCESS)
    }

    /// A status word alone.
    pub fn status(sw: StatusWord) -> Self {
        Self::new(Vec::new(), sw)
    }

    /// Parses raw response bytes (data ‖ SW1 SW2).
    pub fn parse(bytes: &[u8]) -> Result<Response, ApduError> {
        if bytes.len() < 2 {
            return Err(ApduError::ResponseTooShort(bytes.len()));
        }
        let (data, sw) = bytes.split_at(bytes.len() - 2);
        Ok(Response::new(data, StatusWord::from_bytes(sw[0], sw[1])))
    }

    /// Encodes as data ‖ SW1 SW2.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.data.len() + 2);
        v.extend_from_slice(&self.data);
        v.extend_from_slice(&self.sw.to_bytes());
        v
    }

    /// The data if the status is `9000`, else the status word as the error.
    pub fn into_success(self) -> Result<Vec<u8>, StatusWord> {
        if self.sw.is_success() {
            Ok(self.data)
        } else {
            Err(self.sw)
        }
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Response({} {:04X})",
            hex::encode_upper(&self.data),
            self.sw.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn cases_short() {
        let c1 = Command::parse(&h("00A40400")).unwrap();
        assert_eq!((c1.case(), c1.ne()), (1, None));
        let c2 = Command::parse(&h("00B0000000")).unwrap();
        assert_eq!((c2.case(), c2.ne()), (2, Some(256)));
        let c3 = Command::parse(&h("00A4040002 3F00")).unwrap();
        assert_eq!((c3.case(), c3.data()), (3, &h("3F00")[..]));
        let c4 = Command::parse(&h("00A4040002 3F00 10")).unwrap();
        assert_eq!((c4.case(), c4.ne()), (4, Some(16)));
        for c in [c1, c2, c3, c4] {
            assert!(!c.is_extended());
        }
    }

    #[test]
    fn cases_extended() {
        let c2 = Command::parse(&h("00B00000 000000")).unwrap();
        assert_eq!(
            (c2.case(), c2.ne(), c2.is_extended()),
            (2, Some(65536), true)
        );
        let c3 = Command::parse(&h("00DA0000 000002 AABB")).unwrap();
        assert_eq!((c3.case(), c3.data(), c3.ne()), (3, &h("AABB")[..], None));
        let c4 = Command::parse(&h("00DA0000 000002 AABB 0100")).unwrap();
        assert_eq!((c4.case(), c4.ne()), (4, Some(256)));
        // Re-encoding keeps the extended form of a parsed extended command.
        assert_eq!(c4.to_bytes(), h("00DA0000 000002 AABB 0100"));
    }

    #[test]
    fn malformed() {
        assert_eq!(
            Command::parse(&h("00A404")),
            Err(ApduError::TooShort { len: 3 })
        );
        assert_eq!(
            Command::parse(&h("FFA40400")),
            Err(ApduError::InvalidClass(0xFF))
        );
        assert_eq!(
            Command::parse(&h("00610400")),
            Err(ApduError::InvalidIns(0x61))
        );
        assert_eq!(
            Command::parse(&h("00A40400 000000 01")),
            Err(ApduError::ZeroLc)
        );
        // `00 00 01` after the header is a valid case 2E with Ne = 1.
        assert_eq!(Command::parse(&h("00A40400 000001")).unwrap().ne(), Some(1));
        assert!(matches!(
            Command::parse(&h("00A4040003 3F00")),
            Err(ApduError::LengthMismatch { .. })
        ));
        assert!(matches!(
            Command::parse(&h("00A40400 00 01")),
            Err(ApduError::LengthMismatch { .. })
        ));
        assert!(Command::new(0, 0xB0, 0, 0).with_le(0).is_err());
        assert!(Command::new(0, 0xB0, 0, 0).with_le(65537).is_err());
        assert!(
            Command::new(0, 0xD6, 0, 0)
                .with_data(vec![0; 65536])
                .is_err()
        );
        assert!(Response::parse(&[0x90]).is_err());
    }

    #[test]
    fn encode_switches_to_extended() {
        let c = Command::new(0, 0xD6, 0, 0)
            .with_data(vec![1; 300])
            .unwrap()
            .with_le(2)
            .unwrap();
        let b = c.to_bytes();
        assert_eq!(&b[4..7], &[0, 0x01, 0x2C]);
        assert_eq!(&b[b.len() - 2..], &[0, 2]);
        let le_only = Command::new(0, 0xB0, 0, 0)
            .with_le(65536)
            .unwrap()
            .to_bytes();
        assert_eq!(le_only, h("00B00000 000000"));
        assert!(
            Command::new(0, 0xB0, 0, 0)
                .with_le(257)
                .unwrap()
                .to_short_bytes()
                .is_err()
        );
    }

    #[test]
    fn class_channels() {
        // First interindustry: channels 0–3.
        assert_eq!(Class(0x00).channel(), Some(0));
        assert_eq!(Class(0x03).channel(), Some(3));
        assert_eq!(Class(0x87).channel(), Some(3));
        // Further interindustry: 0x40 is channel 4, 0x44 channel 8 (a known bug elsewhere
        // returns 0 for it), 0x4F channel 19.
        assert_eq!(Class(0x40).channel(), Some(4));
        assert_eq!(Class(0x44).channel(), Some(8));
        assert_eq!(Class(0x4F).channel(), Some(19));
        assert_eq!(Class(0xCF).channel(), Some(19));
        // Further-interindustry classes are not secure messaging unless bit 0x20 is set.
        for cla in 0x40..=0x4F {
            assert_eq!(Class(cla).secure_messaging(), SecureMessaging::None);
        }
        assert!(Class(0x60).has_secure_messaging());
        assert_eq!(Class(0x84).secure_messaging(), SecureMessaging::Proprietary);
        assert_eq!(
            Class(0x0C).secure_messaging(),
            SecureMessaging::HeaderAuthenticated
        );
        assert_eq!(Class(0x20).channel(), None);
        assert_eq!(Class(0xFF).coding(), ClassCoding::Invalid);
        assert!(Class(0x10).is_chained() && Class(0x50).is_chained() && !Class(0x00).is_chained());
    }

    #[test]
    fn class_conversions() {
        assert_eq!(Class(0x84).with_channel(5).unwrap(), Class(0xE1));
        assert_eq!(Class(0xE1).with_channel(2).unwrap(), Class(0x86));
        assert_eq!(Class(0x80).with_channel(19).unwrap(), Class(0xCF));
        assert!(Class(0x80).with_channel(20).is_err());
        assert_eq!(Class(0x86).for_mac(), Class(0x84));
        assert_eq!(Class(0xC5).for_mac(), Class(0xE0));
        assert_eq!(Class(0x00).with_chaining(true), Class(0x10));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Command::parse(&bytes);
            let _ = Response::parse(&bytes);
        }

        #[test]
        fn encode_parse_round_trip(
            cla in 0u8..0xFF, ins in any::<u8>().prop_filter("valid INS", |i| i >> 4 != 6 && i >> 4 != 9),
            p1 in any::<u8>(), p2 in any::<u8>(),
            data in proptest::collection::vec(any::<u8>(), 0..400),
            ne in proptest::option::of(1usize..=65536),
            force_ext in any::<bool>(),
        ) {
            let mut c = Command::new(cla, ins, p1, p2).with_data(data).unwrap().with_ne(ne).unwrap();
            if force_ext { c = c.with_form(LengthForm::Extended); }
            let bytes = c.to_bytes();
            let back = Command::parse(&bytes).unwrap();
            prop_assert_eq!(back.data(), c.data());
            prop_assert_eq!(back.ne(), c.ne());
            prop_assert_eq!(back.header(), c.header());
            prop_assert_eq!(back.is_extended(), c.is_extended());
            prop_assert_eq!(back.to_bytes(), bytes);
        }

        #[test]
        fn class_channel_round_trip(cla in 0u8..0xFF, ch in 0u8..20) {
            if let Ok(moved) = Class(cla).with_channel(ch) {
                prop_assert_eq!(moved.channel(), Some(ch));
                prop_assert_eq!(moved.is_proprietary(), Class(cla).is_proprietary());
                prop_assert_eq!(moved.is_chained(), Class(cla).is_chained());
                prop_assert_eq!(moved.has_secure_messaging(), Class(cla).has_secure_messaging());
            }
        }
    }
}
