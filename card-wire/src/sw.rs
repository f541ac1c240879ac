//! Status words: an open type over every `u16`, with names and meanings for the ISO 7816-4 and
//! GlobalPlatform values a card or a host meets in practice.
//!
//! A status word is data, not an error of the transport: every `u16` is representable, and helpers
//! classify it (`61xx` more data, `6Cxx` wrong Le, `63Cx` retries left, warnings, errors).

use core::fmt;

/// A status word (SW1 SW2). Every `u16` is a valid value; unknown ones simply have no name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusWord(pub u16);

macro_rules! status_words {
    ($($name:ident = $value:literal, $meaning:literal;)*) => {
        impl StatusWord {
            $(
                #[doc = $meaning]
                pub const $name: StatusWord = StatusWord($value);
            )*
        }
        const KNOWN: &[(u16, &str, &str)] = &[$(($value, stringify!($name), $meaning)),*];
    };
}

status_words! {
    SUCCESS = 0x9000, "normal processing, no further qualification";
    WARNING_NV_UNCHANGED = 0x6200, "warning: state of non-volatile memory unchanged";
    PART_CORRUPTED = 0x6281, "warning: part of returned data may be corrupted";
    END_OF_FILE = 0x6282, "warning: end of file or record reached before reading Ne bytes";
    SELECTED_FILE_INVALIDATED = 0x6283, "warning: selected file deactivated (card locked)";
    FCI_FORMAT_WRONG = 0x6284, "warning: file control information not formatted per ISO 7816-4";
    SELECTED_FILE_TERMINATED = 0x6285, "warning: selected file in termination state";
    WARNING_NV_CHANGED = 0x6300, "warning: state of non-volatile memory changed (authentication failed)";
    MORE_DATA_AVAILABLE = 0x6310, "warning: more data available (GlobalPlatform GET STATUS paging)";
    EXECUTION_ERROR = 0x6400, "execution error: state of non-volatile memory unchanged";
    MEMORY_FAILURE = 0x6581, "execution error: memory failure";
    WRONG_LENGTH = 0x6700, "wrong length (Lc or Le)";
    LOGICAL_CHANNEL_NOT_SUPPORTED = 0x6881, "logical channel not supported or not open";
    SECURE_MESSAGING_NOT_SUPPORTED = 0x6882, "secure messaging not supported";
    LAST_COMMAND_EXPECTED = 0x6883, "last command of the chain expected";
    CHAINING_NOT_SUPPORTED = 0x6884, "command chaining not supported";
    COMMAND_NOT_ALLOWED = 0x6900, "command not allowed";
    INCOMPATIBLE_FILE_STRUCTURE = 0x6981, "command incompatible with file structure";
    SECURITY_STATUS_NOT_SATISFIED = 0x6982, "security status not satisfied";
    AUTH_METHOD_BLOCKED = 0x6983, "authentication method blocked";
    REFERENCE_DATA_NOT_USABLE = 0x6984, "reference data not usable";
    CONDITIONS_NOT_SATISFIED = 0x6985, "conditions of use not satisfied";
    NO_CURRENT_EF = 0x6986, "command not allowed (no current EF)";
    SM_DATA_MISSING = 0x6987, "expected secure messaging data objects missing";
    SM_DATA_INCORRECT = 0x6988, "incorrect secure messaging data objects";
    INCORRECT_DATA = 0x6A80, "incorrect parameters in the command data field";
    FUNCTION_NOT_SUPPORTED = 0x6A81, "function not supported";
    NOT_FOUND = 0x6A82, "file or application not found";
    RECORD_NOT_FOUND = 0x6A83, "record not found";
    NOT_ENOUGH_MEMORY = 0x6A84, "not enough memory space in the file";
    INCORRECT_P1P2 = 0x6A86, "incorrect parameters P1-P2";
    LC_INCONSISTENT_WITH_P1P2 = 0x6A87, "Nc inconsistent with parameters P1-P2";
    REFERENCED_DATA_NOT_FOUND = 0x6A88, "referenced data or reference data not found";
    WRONG_P1P2 = 0x6B00, "wrong parameters P1-P2";
    INS_NOT_SUPPORTED = 0x6D00, "instruction code not supported or invalid";
    CLA_NOT_SUPPORTED = 0x6E00, "class not supported";
    NO_PRECISE_DIAGNOSIS = 0x6F00, "no precise diagnosis";
}

impl StatusWord {
    /// Builds a status word from its two bytes.
    pub const fn from_bytes(sw1: u8, sw2: u8) -> Self {
        StatusWord(((sw1 as u16) << 8) | sw2 as u16)
    }

    /// SW1.
    pub const fn sw1(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// SW2.
    pub const fn sw2(self) -> u8 {
        self.0 as u8
    }

    /// The two bytes as sent on the wire.
    pub const fn to_bytes(self) -> [u8; 2] {
        [self.sw1(), self.sw2()]
    }

    /// `9000`.
    pub const fn is_success(self) -> bool {
        self.0 == 0x9000
    }

    /// `62xx` or `63xx`: processing completed with a warning.
    pub const fn is_warning(self) -> bool {
        matches!(self.sw1(), 0x62 | 0x63)
    }

    /// `9000`, `62xx` or `63xx`: the statuses after which GlobalPlatform secure messaging still
    /// protects the response (R-MAC); anything else is an error status.
    pub const fn is_normal_or_warning(self) -> bool {
        self.is_success() || self.is_warning()
    }

    /// SW2 as a byte count when SW1 is `sw1` (`00` counts as 256).
    const fn count_after(self, sw1: u8) -> Option<usize> {
        if self.sw1() != sw1 {
            None
        } else if self.sw2() == 0 {
            Some(256)
        } else {
            Some(self.sw2() as usize)
        }
    }

    /// `61xx`: the number of further response bytes available with GET RESPONSE (`00` means 256
    /// or more).
    pub const fn bytes_available(self) -> Option<usize> {
        self.count_after(0x61)
    }

    /// `6Cxx`: the exact Le the card asks for (`00` means 256).
    pub const fn correct_le(self) -> Option<usize> {
        self.count_after(0x6C)
    }

    /// `63Cx`: the number of tries left for a PIN or key.
    pub const fn retries_left(self) -> Option<u8> {
        if self.0 & 0xFFF0 == 0x63C0 {
            Some((self.0 & 0x000F) as u8)
        } else {
            None
        }
    }

    /// The symbolic name of a known status word (`"SECURITY_STATUS_NOT_SATISFIED"`).
    pub fn name(self) -> Option<&'static str> {
        KNOWN
            .iter()
            .find(|(v, _, _)| *v == self.0)
            .map(|(_, n, _)| *n)
    }

    /// A human meaning for this status word, covering the parametrised families too.
    pub fn meaning(self) -> String {
        if let Some((_, _, m)) = KNOWN.iter().find(|(v, _, _)| *v == self.0) {
            return (*m).to_string();
        }
        if let Some(n) = self.bytes_available() {
            return format!("{n} more response bytes available (GET RESPONSE)");
        }
        if let Some(n) = self.correct_le() {
            return format!("wrong Le: resend with Le = {n}");
        }
        if let Some(n) = self.retries_left() {
            return format!("verification failed, {n} tries left");
        }
        match self.sw1() {
            0x62 => "warning: state of non-volatile memory unchanged".into(),
            0x63 => "warning: state of non-volatile memory changed".into(),
            0x64 => "execution error: state of non-volatile memory unchanged".into(),
            0x65 => "execution error: state of non-volatile memory changed".into(),
            0x66 => "security-related issue".into(),
            0x67 => "wrong length".into(),
            0x68 => "functions in CLA not supported".into(),
            0x69 => "command not allowed".into(),
            0x6A => "wrong parameters P1-P2".into(),
            _ => "unknown status word".into(),
        }
    }
}

impl From<u16> for StatusWord {
    fn from(v: u16) -> Self {
        StatusWord(v)
    }
}

impl From<StatusWord> for u16 {
    fn from(v: StatusWord) -> Self {
        v.0
    }
}

impl fmt::Debug for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "StatusWord({:04X} {n})", self.0),
            None => write!(f, "StatusWord({:04X})", self.0),
        }
    }
}

impl fmt::Display for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04X} ({})", self.0, self.meaning())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        assert_eq!(StatusWord(0x63C2).retries_left(), Some(2));
        assert_eq!(StatusWord(0x63C0).retries_left(), Some(0));
        assert_eq!(StatusWord(0x6310).retries_left(), None);
        assert_eq!(StatusWord(0x6100).bytes_available(), Some(256));
        assert_eq!(StatusWord(0x6110).bytes_available(), Some(16));
        assert_eq!(StatusWord(0x6C08).correct_le(), Some(8));
        assert!(StatusWord(0x6283).is_normal_or_warning());
        assert!(!StatusWord(0x6982).is_normal_or_warning());
        assert_eq!(
            StatusWord::from_bytes(0x69, 0x82),
            StatusWord::SECURITY_STATUS_NOT_SATISFIED
        );
    }

    #[test]
    fn display_names_meaning() {
        assert_eq!(
            StatusWord(0x6982).to_string(),
            "6982 (security status not satisfied)"
        );
        assert_eq!(
            StatusWord(0x63C1).to_string(),
            "63C1 (verification failed, 1 tries left)"
        );
        assert_eq!(StatusWord(0x1234).name(), None);
        assert_eq!(StatusWord(0x1234).meaning(), "unknown status word");
    }
}
