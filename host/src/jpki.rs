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

/// A synthetic identity and what the card needs for it.
pub struct DemoIdentity {
    /// The test CA (authentication).
    pub auth_ca: test_pki::TestCa,
    /// The test CA (signature).
    pub sign_ca: test_pki::TestCa,
    /// User-authentication certificate (DER).
    pub auth_cert: Vec<u8>,
    /// Signature certificate (DER).
    pub sign_cert: Vec<u8>,
    /// Serial of the authentication certificate.
    pub auth_serial: u32,
    auth_key: rsa::PrivateKey,
    sign_key: rsa::PrivateKey,
}

/// The documented demo PINs of the `jpki-demo` preset.
pub const DEMO_AUTH_PIN: &str = "1234";
/// The documented demo PIN of the text AP of the `jpki-demo` preset.
pub const DEMO_TEXT_PIN: &str = "5678";
/// The documented demo signature password of the `jpki-demo` preset.
pub const DEMO_SIGN_PIN: &str = "ABC123";

impl DemoIdentity {
    /// A fresh synthetic identity: two test CAs, two RSA-2048 keys, certificates valid a year.
    pub fn generate() -> Result<DemoIdentity> {
        let pki = |e: test_pki::PkiError| Error::Protocol(format!("test CA: {e}"));
        let auth_ca = test_pki::TestCa::new("JPKI for user authentication").map_err(pki)?;
        let sign_ca = test_pki::TestCa::new("JPKI for digital signature").map_err(pki)?;
        let now = std::time::SystemTime::now();
        Self::generate_with(
            auth_ca,
            sign_ca,
            now,
            now + std::time::Duration::from_secs(365 * 86400),
        )
    }

    /// A synthetic identity issued by given CAs with the given validity.
    pub fn generate_with(
        auth_ca: test_pki::TestCa,
        sign_ca: test_pki::TestCa,
        not_before: std::time::SystemTime,
        not_after: std::time::SystemTime,
    ) -> Result<DemoIdentity> {
        let pki = |e: test_pki::PkiError| Error::Protocol(format!("test CA: {e}"));
        let auth_key = test_pki::generate_rsa_key().map_err(pki)?;
        let sign_key = test_pki::generate_rsa_key().map_err(pki)?;
        let mut serial = [0u8; 4];
        getrandom::fill(&mut serial).map_err(|e| Error::Protocol(e.to_string()))?;
        let auth_serial = u32::from_be_bytes(serial) & 0x7FFF_FFFF | 0x0100_0000;
        let opaque = format!("KAGITEST{auth_serial:010}");
        use der::Encode;
        let auth_cert = auth_ca
            .issue_auth(
                &auth_key.to_public_key(),
                &opaque,
                auth_serial,
                not_before,
                not_after,
            )
            .map_err(pki)?
            .to_der()
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let sign_cert = sign_ca
            .issue_sign(
                &sign_key.to_public_key(),
                &test_pki::BasicFacts::synthetic(),
                auth_serial + 1,
                not_before,
                not_after,
            )
            .map_err(pki)?
            .to_der()
            .map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(DemoIdentity {
            auth_ca,
            sign_ca,
            auth_cert,
            sign_cert,
            auth_serial,
            auth_key,
            sign_key,
        })
    }

    /// The personalisation script for the simulator's JPKI applet: `C1` EFs, `C2` keys,
    /// `C3` PINs (see `applet_sim::jpki`).
    pub fn script(&self, auth_pin: &str, sign_pin: &str) -> Result<Zeroizing<Vec<u8>>> {
        use card_wire::tlv::tlv;
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let item =
            |tag: u32, fid: u16, body: &[u8]| tlv(tag, &[&fid.to_be_bytes()[..], body].concat());
        let der = |e: der::Error| Error::Protocol(e.to_string());
        let mut s = Zeroizing::new(Vec::new());
        s.extend(item(0xC1, EF_AUTH_CERT, &self.auth_cert));
        s.extend(item(
            0xC1,
            EF_AUTH_CA,
            &self
                .auth_ca
                .certificate_der()
                .map_err(|e| Error::Protocol(e.to_string()))?,
        ));
        s.extend(item(0xC1, EF_SIGN_CERT, &self.sign_cert));
        s.extend(item(
            0xC1,
            EF_SIGN_CA,
            &self
                .sign_ca
                .certificate_der()
                .map_err(|e| Error::Protocol(e.to_string()))?,
        ));
        s.extend(item(0xC1, EF_TOKEN_INFO, &token_info()));
        s.extend(item(0xC1, 0x0008, &[0x8F, 0x8F, 0x00]));
        for (fid, key) in [
            (Pin::Auth.key_fid(), &self.auth_key),
            (Pin::Sign.key_fid(), &self.sign_key),
        ] {
            let k = key
                .to_pkcs1_der()
                .map_err(|e| Error::Protocol(e.to_string()))?;
            s.extend(item(0xC2, fid, k.as_bytes()));
        }
        let _ = der;
        s.extend(item(0xC3, Pin::Auth.fid(), auth_pin.as_bytes()));
        s.extend(item(0xC3, Pin::Sign.fid(), sign_pin.as_bytes()));
        Ok(s)
    }
}

/// The text AP's EFs for `facts`: EF 0001 `FF 10 0C` + the 12-digit number + `FF FF`, EF 0002
/// `FF 20 { DF21 offsets, DF22 name, DF23 address, DF24 birth date, DF25 sex }`.
pub fn text_efs(my_number: &str, facts: &test_pki::BasicFacts) -> (Vec<u8>, Vec<u8>) {
    use card_wire::tlv::tlv;
    let mut number = vec![0xFF, 0x10, 0x0C];
    number.extend_from_slice(my_number.as_bytes());
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

/// Loads and installs the simulator's JPKI class through GlobalPlatform and personalises it
/// with `identity` under the open secure channel `sc` (keys and PINs marked secret in traces).
pub fn personalise_sim(
    sc: &mut impl ApduChannel,
    identity: &DemoIdentity,
    auth_pin: &str,
    sign_pin: &str,
) -> Result<()> {
    use crate::gp::manage;
    const PACKAGE: [u8; 7] = [0xD3, 0x92, 0xF0, 0x00, 0x26, 0x01, 0x00];
    let file = manage::sim_load_file(
        &PACKAGE,
        &[
            (JPKI_AID.to_vec(), "jpki.ap".into()),
            (TEXT_AID.to_vec(), "jpki.text".into()),
        ],
    );
    manage::load(sc, &PACKAGE, None, &file, true)?;
    for aid in [JPKI_AID, TEXT_AID] {
        manage::install(
            sc,
            &manage::InstallSpec {
                package: PACKAGE.to_vec(),
                module: aid.to_vec(),
                instance: aid.to_vec(),
                selectable: true,
                ..Default::default()
            },
        )?;
    }
    let script = identity.script(auth_pin, sign_pin)?;
    let blocks = card_wire::gp::blocks(&script);
    manage::personalize(sc, &JPKI_AID, &blocks, true)?;
    // The text AP: a synthetic number (never a real one), the same synthetic facts, its PIN.
    let (number, facts) = text_efs(
        &format!("{:012}", identity.auth_serial),
        &test_pki::BasicFacts::synthetic(),
    );
    let item = |tag: u32, fid: u16, body: &[u8]| {
        card_wire::tlv::tlv(tag, &[&fid.to_be_bytes()[..], body].concat())
    };
    let mut text = Zeroizing::new(item(0xC1, 0x0001, &number));
    text.extend(item(0xC1, 0x0002, &facts));
    text.extend(item(0xC3, 0x0011, DEMO_TEXT_PIN.as_bytes()));
    let blocks = card_wire::gp::blocks(&text);
    manage::personalize(sc, &TEXT_AID, &blocks, true)?;
    Ok(())
}

/// A simulated card personalised end to end through the GP path (SCP03 level 33) with a
/// fresh synthetic identity and the demo PINs, answering to reset like a My Number card.
#[cfg(feature = "sim")]
pub fn demo_card(seed: Option<u64>) -> Result<(applet_sim::SimCard, DemoIdentity)> {
    let identity = DemoIdentity::generate()?;
    let card = demo_card_for(seed, &identity)?;
    Ok((card, identity))
}

/// A simulated JPKI card personalised through the GP path for `identity`.
#[cfg(feature = "sim")]
pub fn demo_card_for(seed: Option<u64>, identity: &DemoIdentity) -> Result<applet_sim::SimCard> {
    use crate::channel::CardChannel;
    use crate::secure::SecureChannel;
    use card_wire::scp03::{HostOptions, SecurityLevel, StaticKeys};
    let config = applet_sim::SimConfig {
        atr: applet_sim::jpki::JPKI_ATR.to_vec(),
        seed,
        ..applet_sim::SimConfig::default()
    };
    let mut ch = CardChannel::new(applet_sim::SimCard::powered(config));
    let sd = crate::gp::select_domain(&mut ch, None)?;
    {
        let opts = HostOptions {
            level: SecurityLevel::FULL,
            ..HostOptions::default()
        };
        let mut sc = SecureChannel::open(
            &mut ch,
            StaticKeys::default_test_keys(0x30),
            opts,
            Some(&sd.aid),
        )?;
        personalise_sim(&mut sc, identity, DEMO_AUTH_PIN, DEMO_SIGN_PIN)?;
    }
    Ok(ch.into_transport())
}
