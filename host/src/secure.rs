//! An SCP03 secure channel over a [`CardChannel`]: mutual authentication once, then every
//! command wrapped and every response unwrapped. GET RESPONSE and chaining happen below the
//! wrapping, on the wire. A failed authentication is never retried: real cards lock their keys
//! after a few failures.

use crate::channel::{ApduChannel, CardChannel};
use crate::error::{Error, Result};
use card_wire::apdu::{Command, Response};
use card_wire::scp03::{
    AesKey, HandshakeInfo, HostHandshake, HostOptions, Mode, Scp03Error, SecureSession, StaticKeys,
};
use card_wire::sw::StatusWord;
use card_wire::transport::Transport;

/// An open SCP03 session on a card channel.
pub struct SecureChannel<'c, T: Transport> {
    card: &'c mut CardChannel<T>,
    session: SecureSession,
    info: HandshakeInfo,
    dek: Option<AesKey>,
}

impl<'c, T: Transport> SecureChannel<'c, T> {
    /// Runs INITIALIZE UPDATE and EXTERNAL AUTHENTICATE with a random host challenge.
    /// `sd_aid` is the selected security domain's AID (to check a pseudo-random challenge).
    pub fn open(
        card: &'c mut CardChannel<T>,
        keys: StaticKeys,
        options: HostOptions,
        sd_aid: Option<&[u8]>,
    ) -> Result<Self> {
        let hs = HostHandshake::random(keys.clone(), options.clone())?;
        let mut sc = Self::open_with(card, hs, sd_aid, options.mode)?;
        sc.dek = Some(
            keys.diversify(options.diversification, &sc.info.init_update.kdd)
                .dek()
                .clone(),
        );
        Ok(sc)
    }

    /// Like [`SecureChannel::open`], with the card's keys from `source` (an HSM that
    /// diversifies master keys it never releases). The session carries no DEK: PUT KEY in
    /// such a session needs the DEK from the source's owner.
    pub fn open_source(
        card: &'c mut CardChannel<T>,
        source: std::sync::Arc<dyn card_wire::scp03::CardKeys>,
        options: HostOptions,
        sd_aid: Option<&[u8]>,
    ) -> Result<Self> {
        let mode = options.mode;
        let hs = HostHandshake::with_source(source, options)?;
        Self::open_with(card, hs, sd_aid, mode)
    }

    /// Like [`SecureChannel::open`] with a given handshake (fixed host challenge).
    pub fn open_with(
        card: &'c mut CardChannel<T>,
        hs: HostHandshake,
        sd_aid: Option<&[u8]>,
        mode: Mode,
    ) -> Result<Self> {
        let iu = hs.initialize_update()?;
        let resp = card.transmit(&iu)?;
        if resp.sw == StatusWord::WRONG_LENGTH && mode == Mode::S8 {
            return Err(Error::Scp03(Scp03Error::ModeMismatch {
                host: Mode::S8,
                card: Mode::S16,
            }));
        }
        let (ea, session, info) = hs.complete(&resp, sd_aid)?;
        let r = card.transmit(&ea)?;
        if !r.sw.is_success() {
            return Err(Error::Scp03(Scp03Error::ExternalAuthenticateRefused(r.sw)));
        }
        card.trace_line(&format!(
            "-- SCP03 session open: KVN {:02X}, i {:02X}, level {}",
            info.init_update.kvn, info.init_update.i.0, info.level
        ));
        Ok(SecureChannel {
            card,
            session,
            info,
            // Set by `open`; a handshake given from outside brings no DEK.
            dek: None,
        })
    }

    /// What the handshake learnt (KDD, KVN, `i`, sequence counter, level).
    pub fn info(&self) -> &HandshakeInfo {
        &self.info
    }

    /// The session (level, mode, counter).
    pub fn session(&self) -> &SecureSession {
        &self.session
    }

    /// The static DEK of the key set the session was opened with (for PUT KEY and
    /// encrypted STORE DATA).
    pub fn dek(&self) -> Result<&AesKey> {
        self.dek.as_ref().ok_or_else(|| {
            Error::Keys("this session was opened from a bare handshake; its DEK is unknown".into())
        })
    }

    /// The card channel underneath.
    pub fn card(&mut self) -> &mut CardChannel<T> {
        self.card
    }
}

impl<T: Transport> ApduChannel for SecureChannel<'_, T> {
    fn transmit(&mut self, cmd: &Command) -> Result<Response> {
        self.card.trace_secure(cmd, None);
        let wrapped = self.session.wrap_command(cmd)?;
        let resp = self.card.transmit(&wrapped)?;
        let plain = self.session.unwrap_response(&resp)?;
        self.card.trace_secure(cmd, Some(&plain));
        Ok(plain)
    }
}
