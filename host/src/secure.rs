//! A GlobalPlatform secure channel (SCP03 or SCP02) over a [`CardChannel`]: mutual
//! authentication once, then every command wrapped and every response unwrapped. GET RESPONSE
//! and chaining happen below the wrapping, on the wire. A failed authentication is never
//! retried: real cards lock their keys after a few failures.
//!
//! The protocol is chosen by the card: INITIALIZE UPDATE is the same command for SCP02 and
//! SCP03 (8-byte host challenge), and byte 12 of its answer names the protocol, so the host
//! completes the handshake the card started, with one EXTERNAL AUTHENTICATE. The same key
//! bytes serve as AES keys (SCP03) or two-key 3DES keys (SCP02). SCP02's `i` is not in the
//! answer: it comes from the card recognition data ([`ScpOptions::scp02_i`]); without it kagi
//! assumes ICV encryption (i = 15/55, what the field runs) and does not check a pseudo-random
//! challenge.

use crate::channel::{ApduChannel, CardChannel};
use crate::error::{Error, Result, expect_success};
use card_wire::apdu::{Command, Response};
use card_wire::channel::ChannelFault;
use card_wire::scp02::{
    HandshakeInfo02, HostHandshake02, HostOptions02, IParam02, Scp02Error, Scp02Session,
    StaticKeys02,
};
use card_wire::scp03::{
    AesKey, HandshakeInfo, HostHandshake, HostOptions, IParam, InitUpdateResponse, Mode,
    Scp03Error, SecureSession, StaticKeys,
};
use card_wire::sw::StatusWord;
use card_wire::transport::Transport;

/// Which secure channel protocol to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScpChoice {
    /// Whatever the card answers INITIALIZE UPDATE with.
    #[default]
    Auto,
    /// SCP02 only (an SCP03 answer is an error).
    Scp02,
    /// SCP03 only (an SCP02 answer is an error).
    Scp03,
}

impl core::str::FromStr for ScpChoice {
    type Err = String;
    fn from_str(s: &str) -> core::result::Result<Self, String> {
        match s.to_ascii_lowercase().trim_start_matches("scp") {
            "auto" => Ok(ScpChoice::Auto),
            "02" | "2" => Ok(ScpChoice::Scp02),
            "03" | "3" => Ok(ScpChoice::Scp03),
            other => Err(format!(
                "unknown secure channel '{other}': use 02, 03 or auto"
            )),
        }
    }
}

/// Protocol choice for [`SecureChannel::open_scp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScpOptions {
    /// SCP02, SCP03 or auto.
    pub choice: ScpChoice,
    /// The card's SCP02 `i` from its recognition data, when known.
    pub scp02_i: Option<IParam02>,
}

impl ScpOptions {
    /// Options from the recognition data of the selected security domain (`(scp, i)`).
    pub fn from_recognition(choice: ScpChoice, scp: Option<(u8, u8)>) -> Self {
        ScpOptions {
            choice,
            scp02_i: scp.filter(|(p, _)| *p == 0x02).map(|(_, i)| IParam02(i)),
        }
    }
}

// One per open session, never moved in bulk: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
enum Proto {
    Scp03(SecureSession),
    Scp02(Scp02Session),
}

/// An open secure channel (SCP03 or SCP02) on a card channel.
pub struct SecureChannel<'c, T: Transport> {
    card: &'c mut CardChannel<T>,
    proto: Proto,
    info: HandshakeInfo,
    info02: Option<HandshakeInfo02>,
    dek: Option<AesKey>,
}

impl<'c, T: Transport> SecureChannel<'c, T> {
    /// Runs INITIALIZE UPDATE and EXTERNAL AUTHENTICATE with a random host challenge, in
    /// the protocol the card answers with. `sd_aid` is the selected security domain's AID
    /// (to check a pseudo-random challenge).
    pub fn open(
        card: &'c mut CardChannel<T>,
        keys: StaticKeys,
        options: HostOptions,
        sd_aid: Option<&[u8]>,
    ) -> Result<Self> {
        Self::open_scp(card, keys, options, sd_aid, ScpOptions::default())
    }

    /// Like [`SecureChannel::open`] with an explicit protocol choice and SCP02 `i`.
    pub fn open_scp(
        card: &'c mut CardChannel<T>,
        keys: StaticKeys,
        options: HostOptions,
        sd_aid: Option<&[u8]>,
        scp: ScpOptions,
    ) -> Result<Self> {
        let hs = HostHandshake::random(keys.clone(), options.clone())?;
        let iu = hs.initialize_update()?;
        let resp = card.transmit(&iu)?;
        let answered = resp
            .sw
            .is_success()
            .then(|| resp.data.get(11).copied())
            .flatten();
        if answered == Some(0x02) && options.mode == Mode::S8 {
            if scp.choice == ScpChoice::Scp03 {
                return Err(Scp03Error::NotScp03(0x02).into());
            }
            let hc: [u8; 8] = hs
                .host_challenge()
                .try_into()
                .map_err(|_| Error::Protocol("host challenge is not 8 bytes".into()))?;
            return Self::complete02(card, &keys, &options, sd_aid, scp, hc, &resp);
        }
        if scp.choice == ScpChoice::Scp02 && resp.sw.is_success() {
            return Err(Scp02Error::NotScp02(answered.unwrap_or(0)).into());
        }
        let mut sc = Self::complete03(card, hs, resp, sd_aid, options.mode)?;
        sc.dek = Some(
            keys.diversify(options.diversification, &sc.info.init_update.kdd)
                .dek()
                .clone(),
        );
        Ok(sc)
    }

    fn complete02(
        card: &'c mut CardChannel<T>,
        keys: &StaticKeys,
        options: &HostOptions,
        sd_aid: Option<&[u8]>,
        scp: ScpOptions,
        host_challenge: [u8; 8],
        resp: &Response,
    ) -> Result<Self> {
        let keys02 = StaticKeys02::from_scp03(keys).map_err(Scp02Error::from)?;
        let opts = HostOptions02 {
            kvn: options.kvn,
            level: options.level,
            i: scp.scp02_i.unwrap_or(IParam02::I15),
            diversification: options.diversification,
            channel: options.channel,
        };
        let hs = HostHandshake02::new(keys02, opts, host_challenge)?;
        // Without the card's `i` the challenge cannot be known to be pseudo-random.
        let aid = scp.scp02_i.and(sd_aid);
        let (ea, session, info02) = hs.complete(resp, aid)?;
        let r = card.transmit(&ea)?;
        if !r.sw.is_success() {
            return Err(
                Scp02Error::Channel(ChannelFault::ExternalAuthenticateRefused(r.sw)).into(),
            );
        }
        let iu = &info02.init_update;
        let seq = iu.sequence_counter;
        let info = HandshakeInfo {
            init_update: InitUpdateResponse {
                kdd: iu.kdd,
                kvn: iu.kvn,
                scp: 0x02,
                i: IParam(info02.i.0),
                card_challenge: iu.card_part().to_vec(),
                card_cryptogram: iu.card_cryptogram.to_vec(),
                sequence_counter: Some([0, seq[0], seq[1]]),
            },
            challenge_verified: info02.challenge_verified,
            level: info02.level,
        };
        card.trace_line(&format!(
            "-- SCP02 session open: KVN {:02X}, i {:02X}, level {}",
            iu.kvn, info02.i.0, info02.level
        ));
        Ok(SecureChannel {
            card,
            proto: Proto::Scp02(session),
            info,
            info02: Some(info02),
            dek: None,
        })
    }

    fn complete03(
        card: &'c mut CardChannel<T>,
        hs: HostHandshake,
        resp: Response,
        sd_aid: Option<&[u8]>,
        mode: Mode,
    ) -> Result<Self> {
        if resp.sw == StatusWord::WRONG_LENGTH && mode == Mode::S8 {
            return Err(Error::Scp03(Scp03Error::ModeMismatch {
                host: Mode::S8,
                card: Mode::S16,
            }));
        }
        let (ea, session, info) = hs.complete(&resp, sd_aid)?;
        let r = card.transmit(&ea)?;
        if !r.sw.is_success() {
            return Err(Error::Scp03(Scp03Error::Channel(
                ChannelFault::ExternalAuthenticateRefused(r.sw),
            )));
        }
        card.trace_line(&format!(
            "-- SCP03 session open: KVN {:02X}, i {:02X}, level {}",
            info.init_update.kvn, info.init_update.i.0, info.level
        ));
        Ok(SecureChannel {
            card,
            proto: Proto::Scp03(session),
            info,
            info02: None,
            // Set by `open`; a handshake given from outside brings no DEK.
            dek: None,
        })
    }

    /// Like [`SecureChannel::open`], with the card's keys from `source` (an HSM that
    /// diversifies master keys it never releases) for the KDD the card answers. An SCP03
    /// session carries no DEK (PUT KEY in it needs the DEK from the source's owner); a card
    /// that answers SCP02 gets an SCP02 session with the source's keys for its KDD (the
    /// source diversifies: `options.diversification` is not applied again), where
    /// [`SecureChannel::put_key_set`] works under the session DEK.
    pub fn open_source(
        card: &'c mut CardChannel<T>,
        source: std::sync::Arc<dyn card_wire::scp03::CardKeys>,
        options: HostOptions,
        sd_aid: Option<&[u8]>,
    ) -> Result<Self> {
        let mode = options.mode;
        let hs = HostHandshake::with_source(source.clone(), options.clone())?;
        let iu = hs.initialize_update()?;
        let resp = card.transmit(&iu)?;
        let scp02 = resp.sw.is_success() && resp.data.get(11) == Some(&0x02);
        if scp02 && mode == Mode::S8 {
            let kdd: [u8; 10] = resp.data[..10]
                .try_into()
                .map_err(|_| Error::Protocol("INITIALIZE UPDATE answer too short".into()))?;
            let keys = source.for_card(&kdd)?;
            let hc: [u8; 8] = hs
                .host_challenge()
                .try_into()
                .map_err(|_| Error::Protocol("host challenge is not 8 bytes".into()))?;
            let options = HostOptions {
                diversification: card_wire::scp03::Diversification::None,
                ..options
            };
            let scp = ScpOptions::default();
            return Self::complete02(card, &keys, &options, sd_aid, scp, hc, &resp);
        }
        Self::complete03(card, hs, resp, sd_aid, mode)
    }

    /// An SCP03 session from a given handshake (fixed host challenge).
    pub fn open_with(
        card: &'c mut CardChannel<T>,
        hs: HostHandshake,
        sd_aid: Option<&[u8]>,
        mode: Mode,
    ) -> Result<Self> {
        let iu = hs.initialize_update()?;
        let resp = card.transmit(&iu)?;
        Self::complete03(card, hs, resp, sd_aid, mode)
    }

    /// What the handshake learnt (KDD, KVN, `i`, sequence counter, level). For SCP02 the
    /// fields are filled from the SCP02 answer: `scp` = 02, `i` = the SCP02 `i`, the card
    /// challenge is sequence counter ‖ challenge and the counter is `00 ‖ seq`; see
    /// [`SecureChannel::scp02_info`] for the exact values.
    pub fn info(&self) -> &HandshakeInfo {
        &self.info
    }

    /// The SCP02 handshake facts, when the session runs SCP02.
    pub fn scp02_info(&self) -> Option<&HandshakeInfo02> {
        self.info02.as_ref()
    }

    /// The protocol in use: `02` or `03`.
    pub fn scp(&self) -> u8 {
        match self.proto {
            Proto::Scp02(_) => 0x02,
            Proto::Scp03(_) => 0x03,
        }
    }

    /// What the open protocol adds to a command's data (MAC bytes, encryption padding): the
    /// LOAD block size is chosen under it. SCP03: an 8- or 16-byte MAC and 16-byte blocks;
    /// SCP02: an 8-byte MAC and 8-byte (3DES) blocks.
    pub fn load_overhead(&self) -> card_wire::gp_load::Overhead {
        match &self.proto {
            Proto::Scp03(s) => card_wire::gp_load::scp03_overhead(s.level(), s.mode()),
            Proto::Scp02(s) => card_wire::gp_load::Overhead {
                mac: if s.level().c_mac() { 8 } else { 0 },
                pad_to: s.level().c_dec().then_some(8),
            },
        }
    }

    /// The SCP03 session (level, mode, counter); `None` for SCP02.
    pub fn session(&self) -> Option<&SecureSession> {
        match &self.proto {
            Proto::Scp03(s) => Some(s),
            Proto::Scp02(_) => None,
        }
    }

    /// The static DEK of the SCP03 key set the session was opened with (for PUT KEY and
    /// encrypted STORE DATA). SCP02 sessions encrypt under a session DEK instead: use
    /// [`SecureChannel::put_key_set`].
    pub fn dek(&self) -> Result<&AesKey> {
        if self.info02.is_some() {
            return Err(Error::Keys(
                "an SCP02 session encrypts keys under its session DEK: use put_key_set".into(),
            ));
        }
        self.dek.as_ref().ok_or_else(|| {
            Error::Keys("this session was opened from a bare handshake; its DEK is unknown".into())
        })
    }

    /// PUT KEY of a whole key set in the session's protocol (AES under the static DEK for
    /// SCP03, 3DES under the session DEK for SCP02). `replace`: the KVN replaced, or `None`
    /// to add. The card's key check values are verified; returns them.
    pub fn put_key_set(&mut self, new: &StaticKeys, replace: Option<u8>) -> Result<Vec<u8>> {
        let Proto::Scp02(s) = &self.proto else {
            let dek = self.dek()?.clone();
            return crate::gp::manage::put_key(self, &dek, new, replace);
        };
        use card_wire::scp02::putkey::{put_key_answer, put_key_data};
        let new02 = StaticKeys02::from_scp03(new).map_err(Scp02Error::from)?;
        let cmd = Command::new(0x80, 0xD8, replace.unwrap_or(0), 0x81)
            .with_data(put_key_data(s.dek(), &new02))?
            .with_le(256)?
            .sensitive();
        let expected = put_key_answer(&new02);
        let answer = expect_success("PUT KEY", self.transmit(&cmd)?)?;
        if answer != expected {
            return Err(Error::KeyCheck {
                got: answer,
                expected,
            });
        }
        Ok(answer)
    }

    /// The card channel underneath.
    pub fn card(&mut self) -> &mut CardChannel<T> {
        self.card
    }
}

impl<T: Transport> ApduChannel for SecureChannel<'_, T> {
    fn transmit(&mut self, cmd: &Command) -> Result<Response> {
        self.card.trace_secure(cmd, None);
        let plain = match &mut self.proto {
            Proto::Scp03(s) => {
                let wrapped = s.wrap_command(cmd)?;
                let resp = self.card.transmit(&wrapped)?;
                s.unwrap_response(&resp)?
            }
            Proto::Scp02(s) => {
                let wrapped = s.wrap_command(cmd)?;
                let resp = self.card.transmit(&wrapped)?;
                s.unwrap_response(&resp)?
            }
        };
        self.card.trace_secure(cmd, Some(&plain));
        Ok(plain)
    }
}
