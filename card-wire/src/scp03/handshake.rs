//! Mutual authentication: INITIALIZE UPDATE and EXTERNAL AUTHENTICATE, host and card halves.

use super::Scp03Error;
use super::crypto::{CmacKey, DerivationConstant, scp03_kdf};
use super::keys::{CardKeys, Diversification, SessionKeys, StaticKeys};
use super::session::{IParam, Mode, SecureSession, SecurityLevel};
use crate::apdu::{Class, Command, Response};
use crate::channel::ChannelFault;
use crate::sw::StatusWord;
use subtle::ConstantTimeEq;

/// SCP identifier of SCP03 in the INITIALIZE UPDATE response.
pub const SCP03: u8 = 0x03;
/// INS of INITIALIZE UPDATE.
pub const INS_INITIALIZE_UPDATE: u8 = 0x50;
/// INS of EXTERNAL AUTHENTICATE.
pub const INS_EXTERNAL_AUTHENTICATE: u8 = 0x82;

/// The data of an INITIALIZE UPDATE response (Amendment D Table 7-2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitUpdateResponse {
    /// Key diversification data (bytes 0–9).
    pub kdd: [u8; 10],
    /// Key version number of the key set the card chose.
    pub kvn: u8,
    /// SCP identifier (`03`).
    pub scp: u8,
    /// The `i` parameter.
    pub i: IParam,
    /// Card challenge (S bytes).
    pub card_challenge: Vec<u8>,
    /// Card cryptogram (S bytes).
    pub card_cryptogram: Vec<u8>,
    /// Sequence counter, present when `i` has bit `10`.
    pub sequence_counter: Option<[u8; 3]>,
}

impl InitUpdateResponse {
    /// Parses the response data, checking its length against `i` before slicing.
    pub fn parse(data: &[u8]) -> Result<Self, Scp03Error> {
        if data.len() < 13 {
            return Err(Scp03Error::MalformedInitUpdate {
                len: data.len(),
                expected: 29,
            });
        }
        let scp = data[11];
        if scp != SCP03 {
            return Err(Scp03Error::NotScp03(scp));
        }
        let i = IParam(data[12]);
        let s = i.mode().len();
        let expected = 13 + 2 * s + if i.pseudo_random() { 3 } else { 0 };
        if data.len() != expected {
            return Err(Scp03Error::MalformedInitUpdate {
                len: data.len(),
                expected,
            });
        }
        let mut kdd = [0u8; 10];
        kdd.copy_from_slice(&data[..10]);
        Ok(InitUpdateResponse {
            kdd,
            kvn: data[10],
            scp,
            i,
            card_challenge: data[13..13 + s].to_vec(),
            card_cryptogram: data[13 + s..13 + 2 * s].to_vec(),
            sequence_counter: i
                .pseudo_random()
                .then(|| [data[13 + 2 * s], data[14 + 2 * s], data[15 + 2 * s]]),
        })
    }

    /// Encodes the response data.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(48);
        v.extend_from_slice(&self.kdd);
        v.extend_from_slice(&[self.kvn, self.scp, self.i.0]);
        v.extend_from_slice(&self.card_challenge);
        v.extend_from_slice(&self.card_cryptogram);
        if let Some(seq) = self.sequence_counter {
            v.extend_from_slice(&seq);
        }
        v
    }
}

/// The pseudo-random card challenge: `KDF(K-ENC, 02, sequence counter ‖ SD AID, 8S)`.
pub fn pseudo_random_challenge(
    keys: &StaticKeys,
    seq: &[u8; 3],
    sd_aid: &[u8],
    mode: Mode,
) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(3 + sd_aid.len());
    ctx.extend_from_slice(seq);
    ctx.extend_from_slice(sd_aid);
    scp03_kdf(
        &mut CmacKey::new(keys.enc()),
        DerivationConstant::CardChallenge,
        &ctx,
        mode.len(),
    )
}

fn cryptogram(s_mac: &mut CmacKey, c: DerivationConstant, ctx: &[u8], mode: Mode) -> Vec<u8> {
    scp03_kdf(s_mac, c, ctx, mode.len())
}

/// What the host asks for when it opens a session.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Key version to ask for; `0` lets the card choose.
    pub kvn: u8,
    /// Security level after authentication.
    pub level: SecurityLevel,
    /// S8 or S16 (the host challenge length).
    pub mode: Mode,
    /// How the static keys are derived for this card.
    pub diversification: Diversification,
    /// Logical channel to run on (0–19).
    pub channel: u8,
}

/// The safe default: the card's choice of key version, S8, no diversification, channel 0 and
/// security level 33 (command and response MAC and encryption), the level kagi's CLI uses.
/// Ask for less only for a card that cannot do R-MAC/R-ENC (its `i` parameter says so).
impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            kvn: 0,
            level: SecurityLevel::FULL,
            mode: Mode::S8,
            diversification: Diversification::None,
            channel: 0,
        }
    }
}

/// Facts learnt during authentication, safe to print (no key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeInfo {
    /// The parsed INITIALIZE UPDATE response.
    pub init_update: InitUpdateResponse,
    /// Whether the pseudo-random card challenge was checked against the SD AID.
    pub challenge_verified: bool,
    /// The level negotiated.
    pub level: SecurityLevel,
}

fn random_challenge(options: &HostOptions) -> Result<Vec<u8>, Scp03Error> {
    let mut c = vec![0u8; options.mode.len()];
    getrandom::fill(&mut c).map_err(|e| Scp03Error::Random(e.to_string()))?;
    Ok(c)
}

/// Master keys to diversify, or a source that gives each card's keys.
enum KeySource {
    Master(StaticKeys),
    Card(std::sync::Arc<dyn CardKeys>),
}

/// The host half of mutual authentication.
pub struct HostHandshake {
    keys: KeySource,
    options: HostOptions,
    host_challenge: Vec<u8>,
}

impl HostHandshake {
    /// Starts a handshake with a host challenge of S bytes (random in production, fixed in
    /// known-answer tests).
    pub fn new(
        keys: StaticKeys,
        options: HostOptions,
        host_challenge: Vec<u8>,
    ) -> Result<Self, Scp03Error> {
        Self::start(KeySource::Master(keys), options, host_challenge)
    }

    fn start(
        keys: KeySource,
        options: HostOptions,
        host_challenge: Vec<u8>,
    ) -> Result<Self, Scp03Error> {
        if host_challenge.len() != options.mode.len() {
            return Err(Scp03Error::ChallengeLength {
                len: host_challenge.len(),
                mode: options.mode,
            });
        }
        Ok(HostHandshake {
            keys,
            options,
            host_challenge,
        })
    }

    /// Starts a handshake whose keys come from `source` once the card has said its KDD
    /// (`options.diversification` does not apply: the source diversifies).
    pub fn with_source(
        source: std::sync::Arc<dyn CardKeys>,
        options: HostOptions,
    ) -> Result<Self, Scp03Error> {
        let c = random_challenge(&options)?;
        Self::start(KeySource::Card(source), options, c)
    }

    /// Starts a handshake with a fresh random host challenge.
    pub fn random(keys: StaticKeys, options: HostOptions) -> Result<Self, Scp03Error> {
        let c = random_challenge(&options)?;
        Self::new(keys, options, c)
    }

    /// The logical channel the session runs on, when it is known only after INITIALIZE
    /// UPDATE was sent (a relay opened the channel): EXTERNAL AUTHENTICATE is built for it.
    /// INITIALIZE UPDATE carries no MAC, so its class byte may have been set by the relay.
    pub fn on_channel(mut self, channel: u8) -> Self {
        self.options.channel = channel;
        self
    }

    /// The host challenge.
    pub fn host_challenge(&self) -> &[u8] {
        &self.host_challenge
    }

    fn class(&self, cla: u8) -> Result<Class, Scp03Error> {
        Ok(Class(cla).with_channel(self.options.channel)?)
    }

    /// `80 50 KVN 00 Lc host-challenge 00`.
    pub fn initialize_update(&self) -> Result<Command, Scp03Error> {
        Ok(
            Command::new(0x80, INS_INITIALIZE_UPDATE, self.options.kvn, 0x00)
                .with_class(self.class(0x80)?)
                .with_data(self.host_challenge.clone())?
                .with_le(256)?,
        )
    }

    /// Checks the card's answer and computes EXTERNAL AUTHENTICATE. Nothing is sent when the
    /// card cryptogram is wrong: repeated failed authentications lock real cards.
    ///
    /// `sd_aid` is the AID of the selected security domain, used to check a pseudo-random card
    /// challenge.
    pub fn complete(
        self,
        response: &Response,
        sd_aid: Option<&[u8]>,
    ) -> Result<(Command, SecureSession, HandshakeInfo), Scp03Error> {
        if !response.sw.is_success() {
            return Err(Scp03Error::InitializeUpdateRefused(response.sw));
        }
        let iu = InitUpdateResponse::parse(&response.data)?;
        if self.options.kvn != 0 && iu.kvn != self.options.kvn {
            return Err(Scp03Error::KvnMismatch {
                requested: self.options.kvn,
                returned: iu.kvn,
            });
        }
        if iu.i.mode() != self.options.mode {
            return Err(Scp03Error::ModeMismatch {
                host: self.options.mode,
                card: iu.i.mode(),
            });
        }
        if !iu.i.allows(self.options.level) {
            return Err(Scp03Error::LevelNotSupported {
                level: self.options.level,
                i: iu.i.0,
            });
        }
        if matches!(
            (&self.keys, self.options.diversification),
            (
                KeySource::Master(_),
                Diversification::Emv | Diversification::Visa2
            )
        ) {
            return Err(Scp03Error::UnsupportedDiversification(
                self.options.diversification,
            ));
        }
        let keys = match &self.keys {
            KeySource::Master(k) => k.diversify(self.options.diversification, &iu.kdd),
            KeySource::Card(source) => source.for_card(&iu.kdd)?,
        };
        let mode = self.options.mode;
        let mut challenge_verified = false;
        if let (Some(seq), Some(aid)) = (iu.sequence_counter, sd_aid) {
            let expected = pseudo_random_challenge(&keys, &seq, aid, mode);
            if !bool::from(expected.ct_eq(&iu.card_challenge)) {
                return Err(Scp03Error::Channel(ChannelFault::CardChallengeMismatch));
            }
            challenge_verified = true;
        }
        let mut ctx = self.host_challenge.clone();
        ctx.extend_from_slice(&iu.card_challenge);
        let session_keys = SessionKeys::derive(&keys, &ctx);
        let mut s_mac = CmacKey::new(&session_keys.s_mac);
        let card_crypto = cryptogram(&mut s_mac, DerivationConstant::CardCryptogram, &ctx, mode);
        if !bool::from(card_crypto.ct_eq(&iu.card_cryptogram)) {
            return Err(Scp03Error::Channel(ChannelFault::CardCryptogramMismatch));
        }
        let host_crypto = cryptogram(&mut s_mac, DerivationConstant::HostCryptogram, &ctx, mode);
        let level = self.options.level;
        let mut session = SecureSession::from_keys(&session_keys, level, mode, [0; 16], 0);
        let class = self.class(0x84)?;
        let ea = external_authenticate_command(&mut session, class, level, &host_crypto)?;
        Ok((
            ea,
            session,
            HandshakeInfo {
                init_update: iu,
                challenge_verified,
                level,
            },
        ))
    }
}

/// `84 82 level 00 Lc host-cryptogram C-MAC`, MAC'd from a zero chaining value; the full MAC
/// becomes the session's chaining value.
fn external_authenticate_command(
    session: &mut SecureSession,
    class: Class,
    level: SecurityLevel,
    host_cryptogram: &[u8],
) -> Result<Command, Scp03Error> {
    let s = session.mode().len();
    let lc = (host_cryptogram.len() + s) as u8;
    let header = [
        class.for_mac().byte(),
        INS_EXTERNAL_AUTHENTICATE,
        level.byte(),
        0x00,
        lc,
    ];
    let mac = session.s_mac().mac(&[&[0u8; 16], &header, host_cryptogram]);
    session.set_chaining(mac);
    let mut data = host_cryptogram.to_vec();
    data.extend_from_slice(&mac[..s]);
    Ok(
        Command::new(0, INS_EXTERNAL_AUTHENTICATE, level.byte(), 0x00)
            .with_class(class)
            .with_data(data)?,
    )
}

/// What a card needs to answer INITIALIZE UPDATE for one key set.
#[derive(Debug, Clone)]
pub struct CardKeyContext<'a> {
    /// The key set addressed (after diversification: the card's own keys).
    pub keys: &'a StaticKeys,
    /// Key diversification data the card reports.
    pub kdd: [u8; 10],
    /// The card's `i` parameter.
    pub i: IParam,
    /// The sequence counter value for this session (already incremented), for pseudo-random
    /// challenges.
    pub sequence_counter: u32,
    /// The AID of the security domain being authenticated to. With `i` bit `10` set and an
    /// AID given, the card challenge is the pseudo-random value; without an AID it comes from
    /// the `random_challenge` function (as in vectors that do not record the AID).
    pub sd_aid: Option<&'a [u8]>,
}

/// The card's state between INITIALIZE UPDATE and EXTERNAL AUTHENTICATE.
pub struct CardHandshake {
    session_keys: SessionKeys,
    ctx: Vec<u8>,
    i: IParam,
}

impl core::fmt::Debug for CardHandshake {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CardHandshake")
            .field("i", &self.i)
            .finish_non_exhaustive()
    }
}

impl CardHandshake {
    /// Answers INITIALIZE UPDATE. `random_challenge` supplies the card challenge when `i`
    /// does not ask for a pseudo-random one. Errors are status words for the card to send.
    pub fn initialize_update(
        cmd: &Command,
        key: &CardKeyContext<'_>,
        random_challenge: impl FnOnce(usize) -> Vec<u8>,
    ) -> Result<(Response, CardHandshake), StatusWord> {
        let mode = key.i.mode();
        if cmd.p2() != 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        if cmd.data().len() != mode.len() {
            return Err(StatusWord::WRONG_LENGTH);
        }
        if key.i.pseudo_random() && key.sequence_counter > 0xFF_FFFF {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let seq_bytes = {
            let b = key.sequence_counter.to_be_bytes();
            [b[1], b[2], b[3]]
        };
        let card_challenge = match key.sd_aid {
            Some(aid) if key.i.pseudo_random() => {
                pseudo_random_challenge(key.keys, &seq_bytes, aid, mode)
            }
            _ => random_challenge(mode.len()),
        };
        if card_challenge.len() != mode.len() {
            return Err(StatusWord::NO_PRECISE_DIAGNOSIS);
        }
        let mut ctx = cmd.data().to_vec();
        ctx.extend_from_slice(&card_challenge);
        let session_keys = SessionKeys::derive(key.keys, &ctx);
        let mut s_mac = CmacKey::new(&session_keys.s_mac);
        let card_cryptogram =
            cryptogram(&mut s_mac, DerivationConstant::CardCryptogram, &ctx, mode);
        let iu = InitUpdateResponse {
            kdd: key.kdd,
            kvn: key.keys.kvn,
            scp: SCP03,
            i: key.i,
            card_challenge,
            card_cryptogram,
            sequence_counter: key.i.pseudo_random().then_some(seq_bytes),
        };
        Ok((
            Response::success(iu.to_bytes()),
            CardHandshake {
                session_keys,
                ctx,
                i: key.i,
            },
        ))
    }

    /// Checks EXTERNAL AUTHENTICATE: `6982` for a bad C-MAC, `6300` for a bad host
    /// cryptogram, `6A86` for a level the card does not allow. On success the session is open.
    pub fn external_authenticate(self, cmd: &Command) -> Result<SecureSession, StatusWord> {
        let mode = self.i.mode();
        let s = mode.len();
        let level = SecurityLevel::new(cmd.p1()).map_err(|_| StatusWord::INCORRECT_P1P2)?;
        if cmd.p2() != 0 || !self.i.allows(level) {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        if !cmd.class().has_secure_messaging() {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        if cmd.data().len() != 2 * s || cmd.is_extended() {
            return Err(StatusWord::WRONG_LENGTH);
        }
        let (host_crypto, mac) = cmd.data().split_at(s);
        let mut session = SecureSession::from_keys(&self.session_keys, level, mode, [0; 16], 0);
        let header = [
            cmd.class().for_mac().byte(),
            cmd.ins(),
            cmd.p1(),
            cmd.p2(),
            (2 * s) as u8,
        ];
        let full = session.s_mac().mac(&[&[0u8; 16], &header, host_crypto]);
        if !bool::from(full[..s].ct_eq(mac)) {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        let mut s_mac = CmacKey::new(&self.session_keys.s_mac);
        let expected = cryptogram(
            &mut s_mac,
            DerivationConstant::HostCryptogram,
            &self.ctx,
            mode,
        );
        if !bool::from(expected.ct_eq(host_crypto)) {
            return Err(StatusWord::WARNING_NV_CHANGED);
        }
        session.set_chaining(full);
        Ok(session)
    }

    /// The session keys (for known-answer checks).
    pub fn session_keys(&self) -> &SessionKeys {
        &self.session_keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program that takes the defaults gets the level the CLI uses: 33 (C-MAC, C-DEC, R-MAC,
    /// R-ENC; GP 2.3 Amendment D §5.1: P1 of EXTERNAL AUTHENTICATE = 0x33), on channel 0.
    #[test]
    fn the_default_session_is_level_33() {
        let d = HostOptions::default();
        assert_eq!(d.level.byte(), 0x33);
        assert_eq!((d.kvn, d.channel), (0, 0));
    }
}
