//! SCP02 mutual authentication: INITIALIZE UPDATE and EXTERNAL AUTHENTICATE, host and card
//! halves (GP Card Specification 2.2.1 Appendix E).

use super::Scp02Error;
use super::crypto::{full_mac, retail_mac};
pub use super::iparam::{IParam02, SCP02};
use super::keys::{SessionKeys02, StaticKeys02};
use super::session::Scp02Session;
use crate::apdu::{Class, Command, Response};
use crate::channel::ChannelFault;
use crate::scp03::{Diversification, SecurityLevel};
use crate::sw::StatusWord;
use subtle::ConstantTimeEq;

/// The data of an SCP02 INITIALIZE UPDATE response: KDD(10) ‖ KVN ‖ 02 ‖ sequence counter(2)
/// ‖ card challenge(6) ‖ card cryptogram(8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitUpdateResponse02 {
    /// Key diversification data.
    pub kdd: [u8; 10],
    /// Key version number of the key set the card chose.
    pub kvn: u8,
    /// Sequence counter.
    pub sequence_counter: [u8; 2],
    /// Card challenge.
    pub card_challenge: [u8; 6],
    /// Card cryptogram.
    pub card_cryptogram: [u8; 8],
}

impl InitUpdateResponse02 {
    /// Parses the 28 bytes of response data.
    pub fn parse(data: &[u8]) -> Result<Self, Scp02Error> {
        if data.len() >= 12 && data[11] != SCP02 {
            return Err(Scp02Error::NotScp02(data[11]));
        }
        if data.len() != 28 {
            return Err(Scp02Error::MalformedInitUpdate(data.len()));
        }
        let mut r = InitUpdateResponse02 {
            kdd: [0; 10],
            kvn: data[10],
            sequence_counter: [data[12], data[13]],
            card_challenge: [0; 6],
            card_cryptogram: [0; 8],
        };
        r.kdd.copy_from_slice(&data[..10]);
        r.card_challenge.copy_from_slice(&data[14..20]);
        r.card_cryptogram.copy_from_slice(&data[20..28]);
        Ok(r)
    }

    /// Encodes the response data.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(28);
        v.extend_from_slice(&self.kdd);
        v.extend_from_slice(&[self.kvn, SCP02]);
        v.extend_from_slice(&self.sequence_counter);
        v.extend_from_slice(&self.card_challenge);
        v.extend_from_slice(&self.card_cryptogram);
        v
    }

    /// `sequence counter ‖ card challenge`, the 8 bytes SCP02 calls the card challenge in
    /// its cryptograms.
    pub fn card_part(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..2].copy_from_slice(&self.sequence_counter);
        c[2..].copy_from_slice(&self.card_challenge);
        c
    }
}

/// The card cryptogram: full 3DES MAC under S-ENC of host challenge ‖ seq ‖ card challenge.
pub fn card_cryptogram(keys: &SessionKeys02, host_challenge: &[u8; 8], card: &[u8; 8]) -> [u8; 8] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(host_challenge);
    d[8..].copy_from_slice(card);
    full_mac(&keys.s_enc, &d)
}

/// The host cryptogram: full 3DES MAC under S-ENC of seq ‖ card challenge ‖ host challenge.
pub fn host_cryptogram(keys: &SessionKeys02, host_challenge: &[u8; 8], card: &[u8; 8]) -> [u8; 8] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(card);
    d[8..].copy_from_slice(host_challenge);
    full_mac(&keys.s_enc, &d)
}

/// The pseudo-random card challenge (`i` bit `40`): the first 6 bytes of the C-MAC (zero ICV)
/// over the security domain's AID under the session's C-MAC key.
pub fn pseudo_random_challenge(keys: &SessionKeys02, sd_aid: &[u8]) -> [u8; 6] {
    let m = retail_mac(&keys.c_mac, &[0; 8], sd_aid);
    let mut c = [0u8; 6];
    c.copy_from_slice(&m[..6]);
    c
}

/// What the host asks for when it opens an SCP02 session.
#[derive(Debug, Clone)]
pub struct HostOptions02 {
    /// Key version to ask for; `0` lets the card choose.
    pub kvn: u8,
    /// Security level after authentication (00, 01, 03, 11 or 13).
    pub level: SecurityLevel,
    /// The card's `i` (from its card recognition data; `55` when unknown).
    pub i: IParam02,
    /// How the static keys are derived for this card (none, emv or visa2).
    pub diversification: Diversification,
    /// Logical channel (0–19).
    pub channel: u8,
}

impl Default for HostOptions02 {
    fn default() -> Self {
        HostOptions02 {
            kvn: 0,
            level: SecurityLevel::CMAC,
            i: IParam02::I55,
            diversification: Diversification::None,
            channel: 0,
        }
    }
}

/// Facts learnt during authentication, safe to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeInfo02 {
    /// The parsed INITIALIZE UPDATE response.
    pub init_update: InitUpdateResponse02,
    /// The `i` the session runs with.
    pub i: IParam02,
    /// Whether the pseudo-random card challenge was checked against the SD AID.
    pub challenge_verified: bool,
    /// The level negotiated.
    pub level: SecurityLevel,
}

/// The host half of SCP02 mutual authentication.
pub struct HostHandshake02 {
    keys: StaticKeys02,
    options: HostOptions02,
    host_challenge: [u8; 8],
}

impl HostHandshake02 {
    /// Starts a handshake with a given host challenge (random in production).
    pub fn new(
        keys: StaticKeys02,
        options: HostOptions02,
        host_challenge: [u8; 8],
    ) -> Result<Self, Scp02Error> {
        options.i.check_supported()?;
        if options.level.r_enc() {
            return Err(Scp02Error::LevelNotSupported {
                level: options.level,
                i: options.i.0,
            });
        }
        Ok(HostHandshake02 {
            keys,
            options,
            host_challenge,
        })
    }

    /// Starts a handshake with a fresh random host challenge.
    pub fn random(keys: StaticKeys02, options: HostOptions02) -> Result<Self, Scp02Error> {
        let mut c = [0u8; 8];
        getrandom::fill(&mut c).map_err(|e| Scp02Error::Random(e.to_string()))?;
        Self::new(keys, options, c)
    }

    /// The host challenge.
    pub fn host_challenge(&self) -> &[u8; 8] {
        &self.host_challenge
    }

    /// `80 50 KVN 00 08 host-challenge 00`.
    pub fn initialize_update(&self) -> Result<Command, Scp02Error> {
        Ok(Command::new(0x80, 0x50, self.options.kvn, 0x00)
            .with_class(Class(0x80).with_channel(self.options.channel)?)
            .with_data(self.host_challenge.to_vec())?
            .with_le(256)?)
    }

    /// The card's static keys for this INITIALIZE UPDATE answer (after diversification).
    pub fn card_keys(&self, iu: &InitUpdateResponse02) -> Result<StaticKeys02, Scp02Error> {
        self.keys.diversify(self.options.diversification, &iu.kdd)
    }

    /// Checks the card's answer and computes EXTERNAL AUTHENTICATE. Nothing is to be sent
    /// when the card cryptogram is wrong: repeated failed authentications lock real cards.
    pub fn complete(
        self,
        response: &Response,
        sd_aid: Option<&[u8]>,
    ) -> Result<(Command, Scp02Session, HandshakeInfo02), Scp02Error> {
        if !response.sw.is_success() {
            return Err(Scp02Error::InitializeUpdateRefused(response.sw));
        }
        let iu = InitUpdateResponse02::parse(&response.data)?;
        if self.options.kvn != 0 && iu.kvn != self.options.kvn {
            return Err(Scp02Error::KvnMismatch {
                requested: self.options.kvn,
                returned: iu.kvn,
            });
        }
        let i = self.options.i;
        if !i.allows(self.options.level) {
            return Err(Scp02Error::LevelNotSupported {
                level: self.options.level,
                i: i.0,
            });
        }
        let keys = self.card_keys(&iu)?;
        let sk = SessionKeys02::derive(&keys, iu.sequence_counter);
        let mut challenge_verified = false;
        if let (true, Some(aid)) = (i.pseudo_random(), sd_aid) {
            let expected = pseudo_random_challenge(&sk, aid);
            if !bool::from(expected.ct_eq(&iu.card_challenge)) {
                return Err(Scp02Error::Channel(ChannelFault::CardChallengeMismatch));
            }
            challenge_verified = true;
        }
        let card = iu.card_part();
        let cc = card_cryptogram(&sk, &self.host_challenge, &card);
        if !bool::from(cc.ct_eq(&iu.card_cryptogram)) {
            return Err(Scp02Error::Channel(ChannelFault::CardCryptogramMismatch));
        }
        let hc = host_cryptogram(&sk, &self.host_challenge, &card);
        let level = self.options.level;
        let class = Class(0x84).with_channel(self.options.channel)?;
        let mac_header = ea_mac_header(class, level, i);
        let mac = retail_mac(&sk.c_mac, &[0; 8], &[&mac_header[..], &hc].concat());
        let mut data = hc.to_vec();
        data.extend_from_slice(&mac);
        let ea = Command::new(0x84, 0x82, level.byte(), 0x00)
            .with_class(class)
            .with_data(data)?;
        let session = Scp02Session::new(&sk, level, i, mac);
        Ok((
            ea,
            session,
            HandshakeInfo02 {
                init_update: iu,
                i,
                challenge_verified,
                level,
            },
        ))
    }
}

/// The header EXTERNAL AUTHENTICATE's C-MAC covers: `84 82 P1 00 10` on the modified APDU,
/// `80 82 P1 00 08` when `i` MACs the unmodified one.
fn ea_mac_header(class: Class, level: SecurityLevel, i: IParam02) -> [u8; 5] {
    if i.mac_unmodified() {
        [
            class.for_mac().with_secure_messaging(false).byte(),
            0x82,
            level.byte(),
            0,
            0x08,
        ]
    } else {
        [class.for_mac().byte(), 0x82, level.byte(), 0, 0x10]
    }
}

/// What a card needs to answer INITIALIZE UPDATE for one SCP02 key set.
#[derive(Debug, Clone)]
pub struct CardKeyContext02<'a> {
    /// The card's own (diversified) keys.
    pub keys: &'a StaticKeys02,
    /// Key diversification data the card reports.
    pub kdd: [u8; 10],
    /// The card's `i`.
    pub i: IParam02,
    /// The sequence counter for this session.
    pub sequence_counter: u16,
    /// The AID of the security domain (for the pseudo-random challenge).
    pub sd_aid: &'a [u8],
}

/// The card's state between INITIALIZE UPDATE and EXTERNAL AUTHENTICATE.
pub struct CardHandshake02 {
    sk: SessionKeys02,
    host_challenge: [u8; 8],
    card: [u8; 8],
    i: IParam02,
}

impl core::fmt::Debug for CardHandshake02 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CardHandshake02")
            .field("i", &self.i)
            .finish_non_exhaustive()
    }
}

impl CardHandshake02 {
    /// Answers INITIALIZE UPDATE. `random_challenge` supplies the 6-byte card challenge when
    /// `i` does not ask for a pseudo-random one. Errors are status words for the card to send.
    pub fn initialize_update(
        cmd: &Command,
        key: &CardKeyContext02<'_>,
        random_challenge: impl FnOnce() -> [u8; 6],
    ) -> Result<(Response, CardHandshake02), StatusWord> {
        if cmd.p2() != 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let host_challenge: [u8; 8] = cmd
            .data()
            .try_into()
            .map_err(|_| StatusWord::WRONG_LENGTH)?;
        let seq = key.sequence_counter.to_be_bytes();
        let sk = SessionKeys02::derive(key.keys, seq);
        let card_challenge = if key.i.pseudo_random() {
            pseudo_random_challenge(&sk, key.sd_aid)
        } else {
            random_challenge()
        };
        let mut iu = InitUpdateResponse02 {
            kdd: key.kdd,
            kvn: key.keys.kvn,
            sequence_counter: seq,
            card_challenge,
            card_cryptogram: [0; 8],
        };
        let card = iu.card_part();
        iu.card_cryptogram = card_cryptogram(&sk, &host_challenge, &card);
        Ok((
            Response::success(iu.to_bytes()),
            CardHandshake02 {
                sk,
                host_challenge,
                card,
                i: key.i,
            },
        ))
    }

    /// Checks EXTERNAL AUTHENTICATE: `6982` for a bad C-MAC, `6300` for a bad host
    /// cryptogram, `6A86` for a level the card does not allow.
    pub fn external_authenticate(self, cmd: &Command) -> Result<Scp02Session, StatusWord> {
        let level = SecurityLevel::new(cmd.p1()).map_err(|_| StatusWord::INCORRECT_P1P2)?;
        if cmd.p2() != 0 || !self.i.allows(level) {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        if !cmd.class().has_secure_messaging() {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        if cmd.data().len() != 16 || cmd.is_extended() {
            return Err(StatusWord::WRONG_LENGTH);
        }
        let (hc, mac) = cmd.data().split_at(8);
        let header = ea_mac_header(cmd.class(), level, self.i);
        let expected = retail_mac(&self.sk.c_mac, &[0; 8], &[&header[..], hc].concat());
        if !bool::from(expected.ct_eq(mac)) {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        let want = host_cryptogram(&self.sk, &self.host_challenge, &self.card);
        if !bool::from(want.ct_eq(hc)) {
            return Err(StatusWord::WARNING_NV_CHANGED);
        }
        Ok(Scp02Session::new(&self.sk, level, self.i, expected))
    }

    /// The session keys (for known-answer checks).
    pub fn session_keys(&self) -> &SessionKeys02 {
        &self.sk
    }
}
