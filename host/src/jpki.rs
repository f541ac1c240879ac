//! A JPKI client: reads certificates from the JPKI AP (the user-authentication certificate
//! without any PIN), reports PIN tries without spending one, verifies PINs, signs DigestInfos
//! with the authentication or signature key, changes PINs — the same APDUs OpenSC's `jpki`
//! driver sends (`research/jpki-interface.md` §3). Plus the simulator's JPKI personalisation
//! through GlobalPlatform, used by the `jpki-demo` preset.

use crate::channel::ApduChannel;
use crate::error::{Error, Result, expect_success};
use card_wire::apdu::Command;
use card_wire::sw::StatusWord;
use zeroize::Zeroizing;

pub use card_wire::jpki::{
    EF_AUTH_CA, EF_AUTH_CERT, EF_SIGN_CA, EF_SIGN_CERT, EF_TOKEN_INFO, JPKI_AID, PinFormat,
    TEXT_AID,
};

/// The two PINs of the JPKI AP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// User-authentication PIN (EF 0018, 4 digits, 3 tries), for key 0017.
    Auth,
    /// Signature password (EF 001B, 6–16 upper-case letters and digits, 5 tries), for key 001A.
    Sign,
}

impl Pin {
    /// The PIN's EF.
    pub fn fid(self) -> u16 {
        match self {
            Pin::Auth => 0x0018,
            Pin::Sign => 0x001B,
        }
    }
    /// The key EF the PIN opens.
    pub fn key_fid(self) -> u16 {
        match self {
            Pin::Auth => 0x0017,
            Pin::Sign => 0x001A,
        }
    }
    /// Whether `value` has this PIN's format (checked before anything reaches the card, so a
    /// typo never costs a try).
    pub fn format_ok(self, value: &[u8]) -> bool {
        match self {
            Pin::Auth => PinFormat::FourDigits.accepts(value),
            Pin::Sign => PinFormat::Password.accepts(value),
        }
    }
}

/// `00 A4 04 0C` SELECT of the JPKI AP.
pub fn select(ch: &mut impl ApduChannel) -> Result<()> {
    let cmd = Command::new(0x00, 0xA4, 0x04, 0x0C).with_data(JPKI_AID.to_vec())?;
    expect_success("SELECT JPKI AP", ch.transmit(&cmd)?)?;
    Ok(())
}

/// `00 A4 02 0C` SELECT of an EF.
pub fn select_ef(ch: &mut impl ApduChannel, fid: u16) -> Result<()> {
    let cmd = Command::new(0x00, 0xA4, 0x02, 0x0C).with_data(fid.to_be_bytes().to_vec())?;
    expect_success("SELECT EF", ch.transmit(&cmd)?)?;
    Ok(())
}

fn read_binary(
    ch: &mut impl ApduChannel,
    offset: usize,
    len: usize,
) -> Result<card_wire::Response> {
    let [p1, p2] = (offset as u16).to_be_bytes();
    ch.transmit(&Command::new(0x00, 0xB0, p1, p2).with_le(len)?)
}

/// Reads a DER object (a certificate) from an EF with the fewest APDUs: 256 bytes first
/// (which carry the `30 82 HH LL` header), then the rest in 256-byte reads.
pub fn read_der(ch: &mut impl ApduChannel, fid: u16) -> Result<Vec<u8>> {
    select_ef(ch, fid)?;
    let head = expect_success("READ BINARY", read_binary(ch, 0, 256)?)?;
    let total = match head.as_slice() {
        [0x30, 0x82, hi, lo, ..] => 4 + u16::from_be_bytes([*hi, *lo]) as usize,
        [0x30, 0x81, l, ..] => 3 + *l as usize,
        [0x30, l, ..] if *l < 0x80 => 2 + *l as usize,
        _ => {
            return Err(Error::Protocol(format!(
                "EF {fid:04X} does not hold a DER object"
            )));
        }
    };
    let mut data = head;
    while data.len() < total {
        let want = (total - data.len()).min(256);
        let chunk = expect_success("READ BINARY", read_binary(ch, data.len(), want)?)?;
        if chunk.is_empty() {
            return Err(Error::Protocol(format!(
                "EF {fid:04X} ends before its DER object does"
            )));
        }
        data.extend(chunk);
    }
    data.truncate(total);
    Ok(data)
}

/// Reads a whole EF (until `6B00` or a short read).
pub fn read_ef(ch: &mut impl ApduChannel, fid: u16) -> Result<Vec<u8>> {
    select_ef(ch, fid)?;
    let mut data = Vec::new();
    loop {
        let r = read_binary(ch, data.len(), 256)?;
        match r.sw {
            StatusWord::SUCCESS => {
                let n = r.data.len();
                data.extend(r.data);
                if n < 256 {
                    return Ok(data);
                }
            }
            StatusWord(0x6B00) if !data.is_empty() => return Ok(data),
            sw => {
                return Err(Error::Status {
                    command: "READ BINARY",
                    sw,
                });
            }
        }
    }
}

/// Tries left for `pin`, asked with the empty VERIFY that spends none.
pub fn pin_tries(ch: &mut impl ApduChannel, pin: Pin) -> Result<u8> {
    select_ef(ch, pin.fid())?;
    let r = ch.transmit(&Command::new(0x00, 0x20, 0x00, 0x80))?;
    r.sw.retries_left().ok_or(Error::Status {
        command: "VERIFY (retry query)",
        sw: r.sw,
    })
}

/// VERIFY `pin`. A value of the wrong format is refused before it reaches the card.
pub fn verify(ch: &mut impl ApduChannel, pin: Pin, value: &Zeroizing<Vec<u8>>) -> Result<()> {
    if !pin.format_ok(value) {
        return Err(Error::Keys(match pin {
            Pin::Auth => "the authentication PIN is 4 digits".into(),
            Pin::Sign => {
                "the signature password is 6-16 upper-case letters and digits, with both".into()
            }
        }));
    }
    select_ef(ch, pin.fid())?;
    let cmd = Command::new(0x00, 0x20, 0x00, 0x80)
        .with_data(value.to_vec())?
        .sensitive();
    let r = ch.transmit(&cmd)?;
    match r.sw {
        StatusWord::SUCCESS => Ok(()),
        StatusWord::REFERENCE_DATA_NOT_USABLE
        | StatusWord::AUTH_METHOD_BLOCKED
        | StatusWord(0x63C0) => Err(Error::PinBlocked),
        sw => match sw.retries_left() {
            Some(n) => Err(Error::WrongPin { tries_left: n }),
            None => Err(Error::Status {
                command: "VERIFY",
                sw,
            }),
        },
    }
}

/// Signs `data` (normally a DigestInfo) with the key behind `pin` (`80 2A 00 80`); the PIN
/// must have been verified in this session.
pub fn sign(ch: &mut impl ApduChannel, pin: Pin, data: &[u8]) -> Result<Vec<u8>> {
    select_ef(ch, pin.key_fid())?;
    let cmd = Command::new(0x80, 0x2A, 0x00, 0x80)
        .with_data(data.to_vec())?
        .with_le(256)?;
    expect_success("COMPUTE DIGITAL SIGNATURE", ch.transmit(&cmd)?)
}

pub use card_wire::jpki::sha256_digest_info;

/// Card-face facts read from the text AP.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TextFacts {
    /// The 12-digit individual number.
    pub my_number: String,
    /// Name.
    pub name: String,
    /// Address.
    pub address: String,
    /// Birth date (`YYYYMMDD`).
    pub birth_date: String,
    /// Sex (`1`, `2`, `9`).
    pub sex: String,
}

/// SELECTs the text AP, verifies its PIN and reads My Number and the four facts.
pub fn read_text(ch: &mut impl ApduChannel, pin: &Zeroizing<Vec<u8>>) -> Result<TextFacts> {
    use card_wire::tlv::{self, Tag};
    let cmd = Command::new(0x00, 0xA4, 0x04, 0x0C).with_data(TEXT_AID.to_vec())?;
    expect_success("SELECT text AP", ch.transmit(&cmd)?)?;
    if !Pin::Auth.format_ok(pin) {
        return Err(Error::Keys("the text AP PIN is 4 digits".into()));
    }
    select_ef(ch, 0x0011)?;
    let r = ch.transmit(
        &Command::new(0x00, 0x20, 0x00, 0x80)
            .with_data(pin.to_vec())?
            .sensitive(),
    )?;
    match r.sw {
        StatusWord::SUCCESS => {}
        StatusWord::REFERENCE_DATA_NOT_USABLE | StatusWord(0x63C0) => {
            return Err(Error::PinBlocked);
        }
        sw => {
            return Err(match sw.retries_left() {
                Some(n) => Error::WrongPin { tries_left: n },
                None => Error::Status {
                    command: "VERIFY",
                    sw,
                },
            });
        }
    }
    let number = read_ef(ch, 0x0001)?;
    let my_number = String::from_utf8_lossy(number.get(3..15).unwrap_or_default()).into_owned();
    let facts = read_ef(ch, 0x0002)?;
    let field = |t: u32| -> Result<String> {
        Ok(tlv::find(&facts, Tag(t))?
            .map(|f| String::from_utf8_lossy(f.value).into_owned())
            .unwrap_or_default())
    };
    Ok(TextFacts {
        my_number,
        name: field(0xDF22)?,
        address: field(0xDF23)?,
        birth_date: field(0xDF24)?,
        sex: field(0xDF25)?,
    })
}

/// The text AP's EFs holding `facts` (what [`read_text`] reads back): EF 0001 `FF 10 0C` + the 12-digit number + `FF FF`, EF 0002
/// `FF 20 { DF21 offsets, DF22 name, DF23 address, DF24 birth date, DF25 sex }`.
pub fn text_efs(facts: &TextFacts) -> (Vec<u8>, Vec<u8>) {
    use card_wire::tlv::tlv;
    let mut number = vec![0xFF, 0x10, 0x0C];
    number.extend_from_slice(facts.my_number.as_bytes());
    number.extend_from_slice(&[0xFF, 0xFF]);
    let fields = [
        tlv(0xDF22, facts.name.as_bytes()),
        tlv(0xDF23, facts.address.as_bytes()),
        tlv(0xDF24, facts.birth_date.as_bytes()),
        tlv(0xDF25, facts.sex.as_bytes()),
    ];
    let mut offsets = Vec::new();
    let mut at = 3 + 11; // after FF20 header (3) and the DF21 item (3 + 8)
    for f in &fields {
        offsets.extend_from_slice(&(at as u16).to_be_bytes());
        at += f.len();
    }
    let mut body = tlv(0xDF21, &offsets);
    body.extend(fields.concat());
    (number, tlv(0xFF20, &body))
}

/// EF 0006: a 160-byte CK_TOKEN_INFO labelled `JPKIAPICCTOKEN2`.
pub fn token_info() -> Vec<u8> {
    let pad = |s: &str, n: usize| {
        let mut v = s.as_bytes().to_vec();
        v.resize(n, b' ');
        v
    };
    let mut t = pad("JPKIAPICCTOKEN2", 32);
    t.extend(pad("kagi simulator (TEST ONLY)", 32));
    t.extend(pad("KAGI-JPKI-SIM", 16));
    t.extend(pad("0000000000000001", 16));
    t.extend_from_slice(&0x0000_040Du32.to_be_bytes());
    for v in [1u32, 0, 1, 0, 16, 4, u32::MAX, u32::MAX, u32::MAX, u32::MAX] {
        t.extend_from_slice(&v.to_be_bytes());
    }
    t.extend_from_slice(b"0301");
    t.extend(pad("", 16));
    t
}
