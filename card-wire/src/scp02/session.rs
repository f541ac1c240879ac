//! The secure-messaging core of an open SCP02 session, shared by host and card.
//!
//! C-MAC: retail MAC under the C-MAC session key over the (modified) header, Lc and the
//! plaintext data, chained on the previous C-MAC (DES-encrypted under K1 first when `i` asks
//! for ICV encryption). C-DEC: 3DES-CBC under S-ENC with a zero IV over the padded data, after
//! the MAC was computed. R-MAC: retail MAC under the R-MAC session key over the unprotected
//! command and the response, chained on the previous R-MAC (the first on EXTERNAL
//! AUTHENTICATE's C-MAC). A verification failure closes the session for good.

use super::Scp02Error;
use super::crypto::{Des3Key, Tdes, des_encrypt_k1, pad80, retail_mac, unpad80};
use super::iparam::IParam02;
use super::keys::SessionKeys02;
use crate::apdu::{Command, Response};
use crate::channel::ChannelFault;
use crate::scp03::SecurityLevel;
use crate::sw::StatusWord;
use core::fmt;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// The state of an open SCP02 session (after EXTERNAL AUTHENTICATE).
#[derive(Clone)]
pub struct Scp02Session {
    s_enc: Tdes,
    c_mac: Des3Key,
    r_mac: Des3Key,
    dek: Des3Key,
    last_mac: [u8; 8],
    ricv: [u8; 8],
    rmac_input: Vec<u8>,
    level: SecurityLevel,
    i: IParam02,
    closed: bool,
}

impl fmt::Debug for Scp02Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scp02Session")
            .field("level", &self.level)
            .field("i", &self.i)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Drop for Scp02Session {
    fn drop(&mut self) {
        self.last_mac.zeroize();
        self.ricv.zeroize();
    }
}

impl Scp02Session {
    /// A session keyed with session keys, whose C-MAC chain starts from `ea_mac` (the C-MAC of
    /// EXTERNAL AUTHENTICATE).
    pub fn new(keys: &SessionKeys02, level: SecurityLevel, i: IParam02, ea_mac: [u8; 8]) -> Self {
        Scp02Session {
            s_enc: Tdes::new(&keys.s_enc),
            c_mac: keys.c_mac.clone(),
            r_mac: keys.r_mac.clone(),
            dek: keys.dek.clone(),
            last_mac: ea_mac,
            ricv: ea_mac,
            rmac_input: Vec::new(),
            level,
            i,
            closed: false,
        }
    }

    /// The security level.
    pub fn level(&self) -> SecurityLevel {
        self.level
    }
    /// The `i` parameter.
    pub fn i(&self) -> IParam02 {
        self.i
    }
    /// The session DEK (encrypts keys in PUT KEY).
    pub fn dek(&self) -> &Des3Key {
        &self.dek
    }
    /// Whether a failure closed the session.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
    /// Closes the session.
    pub fn close(&mut self) {
        self.closed = true;
    }

    fn check_open(&self) -> Result<(), Scp02Error> {
        if self.closed {
            Err(Scp02Error::Channel(ChannelFault::SessionClosed))
        } else {
            Ok(())
        }
    }

    fn fail<T>(&mut self, e: Scp02Error) -> Result<T, Scp02Error> {
        self.closed = true;
        Err(e)
    }

    fn icv(&self) -> [u8; 8] {
        let mut icv = self.last_mac;
        if self.i.icv_encryption() {
            des_encrypt_k1(&self.c_mac, &mut icv);
        }
        icv
    }

    /// The C-MAC of `cmd` (class, header) over `plain` data.
    fn c_mac_of(&self, cmd: &Command, plain: &[u8]) -> [u8; 8] {
        let mut header = cmd.header();
        let lc = if self.i.mac_unmodified() {
            header[0] = cmd.class().for_mac().with_secure_messaging(false).byte();
            plain.len()
        } else {
            header[0] = cmd.class().for_mac().byte();
            plain.len() + 8
        };
        let mut input = Vec::with_capacity(5 + plain.len());
        input.extend_from_slice(&header);
        input.push(lc as u8);
        input.extend_from_slice(plain);
        retail_mac(&self.c_mac, &self.icv(), &input)
    }

    fn note_rmac_command(&mut self, cmd: &Command, plain: &[u8]) {
        if !self.level.r_mac() {
            return;
        }
        self.rmac_input.clear();
        let mut header = cmd.header();
        header[0] &= !0x07;
        self.rmac_input.extend_from_slice(&header);
        self.rmac_input.push(plain.len() as u8);
        self.rmac_input.extend_from_slice(plain);
    }

    fn rmac_of(&self, data: &[u8], sw: StatusWord) -> [u8; 8] {
        let mut input = self.rmac_input.clone();
        input.push(data.len() as u8);
        input.extend_from_slice(data);
        input.extend_from_slice(&sw.to_bytes());
        retail_mac(&self.r_mac, &self.ricv, &input)
    }

    /// Host: protects a command (C-MAC over the plaintext, then C-DEC).
    pub fn wrap_command(&mut self, cmd: &Command) -> Result<Command, Scp02Error> {
        self.check_open()?;
        if !self.level.c_mac() {
            return Ok(cmd.clone());
        }
        let plain = cmd.data();
        if plain.len() > 255 - 16 || cmd.is_extended() || cmd.ne().is_some_and(|n| n > 256) {
            return Err(Scp02Error::CommandTooLong(plain.len()));
        }
        self.note_rmac_command(cmd, plain);
        let mac = self.c_mac_of(cmd, plain);
        self.last_mac = mac;
        let mut data = if self.level.c_dec() && !plain.is_empty() {
            let mut p = pad80(plain);
            self.s_enc.cbc_encrypt(&[0; 8], &mut p);
            p
        } else {
            plain.to_vec()
        };
        data.extend_from_slice(&mac);
        let class = cmd.class().with_secure_messaging(true);
        let wrapped = cmd.clone().with_class(class).with_data(data)?;
        Ok(if cmd.is_sensitive() {
            wrapped.sensitive()
        } else {
            wrapped
        })
    }

    /// Card: checks and removes the protection of a command. On failure the session is
    /// closed and the card answers `6982`.
    pub fn unwrap_command(&mut self, cmd: &Command) -> Result<Command, Scp02Error> {
        self.check_open()?;
        if !self.level.c_mac() {
            if cmd.class().has_secure_messaging() {
                return self.fail(Scp02Error::Channel(ChannelFault::UnexpectedSecureMessaging));
            }
            return Ok(cmd.clone());
        }
        if cmd.class()
            != cmd
                .class()
                .with_secure_messaging(false)
                .with_secure_messaging(true)
        {
            return self.fail(Scp02Error::Channel(ChannelFault::MissingSecureMessaging));
        }
        let body = cmd.data();
        if body.len() < 8 || cmd.is_extended() {
            return self.fail(Scp02Error::Channel(ChannelFault::MissingMac));
        }
        let (data, mac) = body.split_at(body.len() - 8);
        let plain = if self.level.c_dec() && !data.is_empty() {
            if !data.len().is_multiple_of(8) {
                return self.fail(Scp02Error::Channel(ChannelFault::Padding));
            }
            let mut buf = data.to_vec();
            self.s_enc.cbc_decrypt(&[0; 8], &mut buf);
            match unpad80(&buf) {
                Some(p) => p.to_vec(),
                None => return self.fail(Scp02Error::Channel(ChannelFault::Padding)),
            }
        } else {
            data.to_vec()
        };
        let expected = self.c_mac_of(cmd, &plain);
        if !bool::from(expected.ct_eq(mac)) {
            return self.fail(Scp02Error::Channel(ChannelFault::CommandMacMismatch));
        }
        self.last_mac = expected;
        let class = cmd.class().with_secure_messaging(false);
        let out = cmd.clone().with_class(class).with_data(plain)?;
        self.note_rmac_command(&out, out.data());
        Ok(out)
    }

    /// Card: adds the R-MAC to a response when the level asks for it.
    pub fn wrap_response(&mut self, resp: &Response) -> Result<Response, Scp02Error> {
        self.check_open()?;
        if !self.level.r_mac() {
            return Ok(resp.clone());
        }
        let mac = self.rmac_of(&resp.data, resp.sw);
        self.ricv = mac;
        let mut data = resp.data.clone();
        data.extend_from_slice(&mac);
        Ok(Response::new(data, resp.sw))
    }

    /// Host: checks and removes the R-MAC of a response when the level asks for it.
    pub fn unwrap_response(&mut self, resp: &Response) -> Result<Response, Scp02Error> {
        self.check_open()?;
        if !self.level.r_mac() {
            return Ok(resp.clone());
        }
        if resp.data.len() < 8 {
            return self.fail(Scp02Error::Channel(ChannelFault::MissingResponseMac(
                resp.sw,
            )));
        }
        let (data, mac) = resp.data.split_at(resp.data.len() - 8);
        let expected = self.rmac_of(data, resp.sw);
        if !bool::from(expected.ct_eq(mac)) {
            return self.fail(Scp02Error::Channel(ChannelFault::ResponseMacMismatch));
        }
        self.ricv = expected;
        Ok(Response::new(data.to_vec(), resp.sw))
    }
}
