//! Which diversification scheme a card's keys follow, from one INITIALIZE UPDATE and no
//! EXTERNAL AUTHENTICATE: the card cryptogram of the single answer is checked on the host
//! against each candidate scheme in turn. Nothing counts as a failed authentication on the
//! card, so guessing here cannot lock it (GlobalPlatformPro's most frequent support question:
//! "card cryptogram invalid: which keys, which diversification").

use crate::channel::{ApduChannel, CardChannel};
use crate::error::Result;
use card_wire::channel::ChannelFault;
use card_wire::scp02::{HostHandshake02, HostOptions02, IParam02, Scp02Error, StaticKeys02};
use card_wire::scp03::{
    Diversification, HostHandshake, HostOptions, Mode, Scp03Error, SecurityLevel, StaticKeys,
};
use card_wire::transport::Transport;
use serde::Serialize;

/// What a probe learnt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// The protocol the card answered with (2 or 3; "02"/"03" in JSON).
    #[serde(serialize_with = "byte_ser")]
    pub scp: u8,
    /// The key version the card chose (hex in JSON).
    #[serde(serialize_with = "byte_ser")]
    pub kvn: u8,
    /// The key diversification data.
    #[serde(serialize_with = "hex_ser")]
    pub kdd: [u8; 10],
    /// The scheme whose card cryptogram matched, if any.
    #[serde(serialize_with = "scheme_ser")]
    pub matched: Option<Diversification>,
    /// The schemes tried, in order.
    #[serde(serialize_with = "schemes_ser")]
    pub tried: Vec<Diversification>,
}

fn byte_ser<S: serde::Serializer>(v: &u8, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:02X}"))
}
fn hex_ser<S: serde::Serializer>(v: &[u8; 10], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode_upper(v))
}
fn scheme_ser<S: serde::Serializer>(v: &Option<Diversification>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => s.serialize_some(d.name()),
        None => s.serialize_none(),
    }
}
fn schemes_ser<S: serde::Serializer>(v: &[Diversification], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|d| d.name()))
}

/// The schemes worth trying for a protocol: none, kdf3 for SCP03; none, emv, visa2 for SCP02.
pub fn candidates(scp: u8) -> Vec<Diversification> {
    if scp == 0x02 {
        vec![
            Diversification::None,
            Diversification::Emv,
            Diversification::Visa2,
        ]
    } else {
        vec![Diversification::None, Diversification::Kdf3]
    }
}

/// Sends one INITIALIZE UPDATE for `kvn` (00: the card's choice) and checks the card
/// cryptogram against `keys` diversified with each scheme of `schemes` (`None`: every
/// candidate of the protocol the card answers with). `s16`: the card runs SCP03 S16.
pub fn probe_keys<T: Transport>(
    card: &mut CardChannel<T>,
    keys: &StaticKeys,
    kvn: u8,
    schemes: Option<&[Diversification]>,
    s16: bool,
) -> Result<Probe> {
    let mode = if s16 { Mode::S16 } else { Mode::S8 };
    let base = HostOptions {
        kvn,
        level: SecurityLevel::CMAC,
        mode,
        ..HostOptions::default()
    };
    let first = HostHandshake::random(keys.clone(), base.clone())?;
    let hc = first.host_challenge().to_vec();
    let resp = card.transmit(&first.initialize_update()?)?;
    if !resp.sw.is_success() {
        return Err(Scp03Error::InitializeUpdateRefused(resp.sw).into());
    }
    let scp = resp.data.get(11).copied().unwrap_or(0);
    let tried = schemes
        .map(<[_]>::to_vec)
        .unwrap_or_else(|| candidates(scp));
    let mut kdd = [0u8; 10];
    kdd.copy_from_slice(resp.data.get(..10).unwrap_or(&[0; 10]));
    let kvn_answered = resp.data.get(10).copied().unwrap_or(0);
    let mut matched = None;
    for &scheme in &tried {
        let ok = if scp == 0x02 {
            let hc8: [u8; 8] = hc.as_slice().try_into().unwrap_or([0; 8]);
            let opts = HostOptions02 {
                kvn,
                level: SecurityLevel::CMAC,
                i: IParam02::I15,
                diversification: scheme,
                channel: 0,
            };
            let keys02 = StaticKeys02::from_scp03(keys).map_err(Scp02Error::from)?;
            match HostHandshake02::new(keys02, opts, hc8)?.complete(&resp, None) {
                Ok(_) => true,
                Err(
                    Scp02Error::Channel(ChannelFault::CardCryptogramMismatch)
                    | Scp02Error::UnsupportedDiversification(_),
                ) => false,
                Err(e) => return Err(e.into()),
            }
        } else {
            let opts = HostOptions {
                diversification: scheme,
                ..base.clone()
            };
            match HostHandshake::new(keys.clone(), opts, hc.clone())?.complete(&resp, None) {
                Ok(_) => true,
                Err(
                    Scp03Error::Channel(ChannelFault::CardCryptogramMismatch)
                    | Scp03Error::UnsupportedDiversification(_),
                ) => false,
                Err(e) => return Err(e.into()),
            }
        };
        if ok {
            matched = Some(scheme);
            break;
        }
    }
    Ok(Probe {
        scp,
        kvn: kvn_answered,
        kdd,
        matched,
        tried,
    })
}
