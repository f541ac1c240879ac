//! The secure-messaging core of an open SCP03 session, shared by host and card.
//!
//! Both ends hold the same state: session keys, the 16-byte MAC chaining value and the
//! encryption counter. The host calls [`SecureSession::wrap_command`] and
//! [`SecureSession::unwrap_response`]; the card calls [`SecureSession::unwrap_command`] and
//! [`SecureSession::wrap_response`]. Any verification failure closes the session for good:
//! sessions are re-opened, never resumed.

use super::Scp03Error;
use super::crypto::{Aes, CmacKey, pad80, unpad80};
use super::keys::SessionKeys;
use crate::apdu::{Command, LengthForm, Response};
use crate::channel::ChannelFault;
use crate::sw::StatusWord;
use core::fmt;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// S8 (8-byte challenges, cryptograms and MACs) or S16 (16-byte, Amendment D v1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// 8-byte challenges, cryptograms and MACs.
    #[default]
    S8,
    /// 16-byte challenges, cryptograms and MACs.
    S16,
}

impl Mode {
    /// S, the length of challenges, cryptograms and MACs.
    pub const fn len(self) -> usize {
        match self {
            Mode::S8 => 8,
            Mode::S16 => 16,
        }
    }

    /// Never: S is 8 or 16.
    pub const fn is_empty(self) -> bool {
        false
    }
}

/// A security level (EXTERNAL AUTHENTICATE P1). Only the combinations GP defines can exist:
/// `00`, `01` C-MAC, `03` C-MAC + C-DEC, `11` C-MAC + R-MAC, `13` C-MAC + C-DEC + R-MAC,
/// `33` everything.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecurityLevel(u8);

impl SecurityLevel {
    /// No secure messaging after authentication.
    pub const NONE: SecurityLevel = SecurityLevel(0x00);
    /// C-MAC.
    pub const CMAC: SecurityLevel = SecurityLevel(0x01);
    /// C-MAC and C-DECRYPTION.
    pub const CMAC_CDEC: SecurityLevel = SecurityLevel(0x03);
    /// C-MAC and R-MAC.
    pub const CMAC_RMAC: SecurityLevel = SecurityLevel(0x11);
    /// C-MAC, C-DECRYPTION and R-MAC.
    pub const CMAC_CDEC_RMAC: SecurityLevel = SecurityLevel(0x13);
    /// C-MAC, C-DECRYPTION, R-MAC and R-ENCRYPTION.
    pub const FULL: SecurityLevel = SecurityLevel(0x33);
    /// Every defined level.
    pub const ALL: [SecurityLevel; 6] = [
        Self::NONE,
        Self::CMAC,
        Self::CMAC_CDEC,
        Self::CMAC_RMAC,
        Self::CMAC_CDEC_RMAC,
        Self::FULL,
    ];

    /// A level from its byte, or an error naming the defined ones.
    pub fn new(p1: u8) -> Result<Self, Scp03Error> {
        Self::ALL
            .into_iter()
            .find(|l| l.0 == p1)
            .ok_or(Scp03Error::InvalidSecurityLevel(p1))
    }
    /// The byte.
    pub const fn byte(self) -> u8 {
        self.0
    }
    /// C-MAC.
    pub const fn c_mac(self) -> bool {
        self.0 & 0x01 != 0
    }
    /// C-DECRYPTION.
    pub const fn c_dec(self) -> bool {
        self.0 & 0x02 != 0
    }
    /// R-MAC.
    pub const fn r_mac(self) -> bool {
        self.0 & 0x10 != 0
    }
    /// R-ENCRYPTION.
    pub const fn r_enc(self) -> bool {
        self.0 & 0x20 != 0
    }
}

impl core::str::FromStr for SecurityLevel {
    type Err = Scp03Error;
    fn from_str(s: &str) -> Result<Self, Scp03Error> {
        let lower = s.to_ascii_lowercase();
        let named = match lower.as_str() {
            "none" | "clr" => Some(Self::NONE),
            "mac" => Some(Self::CMAC),
            "enc" => Some(Self::CMAC_CDEC),
            "rmac" => Some(Self::CMAC_RMAC),
            "enc+rmac" => Some(Self::CMAC_CDEC_RMAC),
            "renc" | "full" => Some(Self::FULL),
            _ => None,
        };
        match named {
            Some(l) => Ok(l),
            None => u8::from_str_radix(&lower, 16)
                .map_err(|_| Scp03Error::UnknownSecurityLevel(s.to_string()))
                .and_then(Self::new),
        }
    }
}

impl fmt::Debug for SecurityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecurityLevel({:02X})", self.0)
    }
}

impl fmt::Display for SecurityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.c_mac() {
            parts.push("C-MAC");
        }
        if self.c_dec() {
            parts.push("C-DEC");
        }
        if self.r_mac() {
            parts.push("R-MAC");
        }
        if self.r_enc() {
            parts.push("R-ENC");
        }
        if parts.is_empty() {
            parts.push("none");
        }
        write!(f, "{:02X} ({})", self.0, parts.join(" + "))
    }
}

/// The SCP03 `i` parameter (Amendment D Table 5-1 and v1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IParam(pub u8);

impl IParam {
    /// Bit `01`: S16 mode.
    pub const fn s16(self) -> bool {
        self.0 & 0x01 != 0
    }
    /// The mode the card runs.
    pub const fn mode(self) -> Mode {
        if self.s16() { Mode::S16 } else { Mode::S8 }
    }
    /// Bit `10`: pseudo-random card challenge (the sequence counter is sent).
    pub const fn pseudo_random(self) -> bool {
        self.0 & 0x10 != 0
    }
    /// Bit `20`: R-MAC supported.
    pub const fn r_mac(self) -> bool {
        self.0 & 0x20 != 0
    }
    /// Bit `40`: R-ENC supported.
    pub const fn r_enc(self) -> bool {
        self.0 & 0x40 != 0
    }
    /// Whether a session with this `i` may run at `level`.
    pub const fn allows(self, level: SecurityLevel) -> bool {
        (!level.r_mac() || self.r_mac()) && (!level.r_enc() || self.r_enc())
    }
}

/// What checking the answer to one batched command needs: the C-MAC chaining value and the
/// encryption counter right after that command was wrapped.
#[derive(Clone)]
pub struct Pending {
    chaining: [u8; 16],
    counter: u128,
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pending(counter {})", self.counter)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.chaining.zeroize();
    }
}

/// The state of an open SCP03 session (after EXTERNAL AUTHENTICATE).
#[derive(Clone)]
pub struct SecureSession {
    s_enc: Aes,
    s_mac: CmacKey,
    s_rmac: CmacKey,
    chaining: [u8; 16],
    counter: u128,
    level: SecurityLevel,
    mode: Mode,
    closed: bool,
}

impl fmt::Debug for SecureSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureSession")
            .field("level", &self.level)
            .field("mode", &self.mode)
            .field("counter", &self.counter)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Drop for SecureSession {
    fn drop(&mut self) {
        self.chaining.zeroize();
    }
}

impl SecureSession {
    /// A session keyed directly with session keys, with the given chaining value and
    /// encryption counter (as after EXTERNAL AUTHENTICATE, or mid-session for known-answer
    /// tests).
    pub fn from_keys(
        keys: &SessionKeys,
        level: SecurityLevel,
        mode: Mode,
        chaining: [u8; 16],
        counter: u128,
    ) -> Self {
        SecureSession {
            s_enc: Aes::new(&keys.s_enc),
            s_mac: CmacKey::new(&keys.s_mac),
            s_rmac: CmacKey::new(&keys.s_rmac),
            chaining,
            counter,
            level,
            mode,
            closed: false,
        }
    }

    /// The security level.
    pub fn level(&self) -> SecurityLevel {
        self.level
    }
    /// S8 or S16.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// The encryption counter of the last command.
    pub fn counter(&self) -> u128 {
        self.counter
    }
    /// Whether a failure closed the session.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
    /// Closes the session (reset, new INITIALIZE UPDATE, deselect, security error).
    pub fn close(&mut self) {
        self.closed = true;
    }

    pub(super) fn set_chaining(&mut self, mac: [u8; 16]) {
        self.chaining = mac;
    }

    pub(super) fn s_mac(&mut self) -> &mut CmacKey {
        &mut self.s_mac
    }

    fn check_open(&self) -> Result<(), Scp03Error> {
        if self.closed {
            Err(Scp03Error::Channel(ChannelFault::SessionClosed))
        } else {
            Ok(())
        }
    }

    fn fail<T>(&mut self, e: Scp03Error) -> Result<T, Scp03Error> {
        self.closed = true;
        Err(e)
    }

    fn icv(&self, response: bool) -> [u8; 16] {
        let mut block = self.counter.to_be_bytes();
        if response {
            block[0] = 0x80;
        }
        self.s_enc.encrypt_block(&mut block);
        block
    }

    /// C-MAC over chaining ‖ class for MAC, INS, P1, P2 ‖ Lc as sent (1 or 3 bytes) ‖ data,
    /// where Lc counts `mac_len` MAC bytes after `data`.
    fn mac_over(&mut self, cmd: &Command, extended: bool, data: &[u8], mac_len: usize) -> [u8; 16] {
        let mut header = cmd.header();
        header[0] = cmd.class().for_mac().byte();
        let nc = data.len() + mac_len;
        let lc: &[u8] = if extended {
            &[0, (nc >> 8) as u8, nc as u8]
        } else {
            &[nc as u8]
        };
        self.s_mac.mac(&[&self.chaining, &header, lc, data])
    }

    /// Encrypts `data` (ISO 9797-1 M2 padded) under S-ENC with the command ICV, or the
    /// response ICV (counter with its first byte set to `80`). Empty data stays empty.
    fn encrypt(&self, data: &[u8], response: bool) -> Vec<u8> {
        if data.is_empty() {
            return Vec::new();
        }
        let mut padded = pad80(data);
        let icv = self.icv(response);
        self.s_enc.cbc_encrypt(&icv, &mut padded);
        padded
    }

    /// The inverse of [`SecureSession::encrypt`]; a bad length or padding closes the session.
    fn decrypt(&mut self, data: &[u8], response: bool) -> Result<Vec<u8>, Scp03Error> {
        if data.is_empty() {
            return Ok(Vec::new());
        }
        if !data.len().is_multiple_of(16) {
            return self.fail(Scp03Error::Channel(ChannelFault::Padding));
        }
        let mut buf = data.to_vec();
        let icv = self.icv(response);
        self.s_enc.cbc_decrypt(&icv, &mut buf);
        match unpad80(&buf) {
            Some(p) => Ok(p.to_vec()),
            None => self.fail(Scp03Error::Channel(ChannelFault::Padding)),
        }
    }

    /// Host: protects a command at the session's level (encrypt, then MAC).
    pub fn wrap_command(&mut self, cmd: &Command) -> Result<Command, Scp03Error> {
        self.check_open()?;
        self.counter = self.counter.wrapping_add(1);
        if !self.level.c_mac() {
            return Ok(cmd.clone());
        }
        let mut data = if self.level.c_dec() {
            self.encrypt(cmd.data(), false)
        } else {
            cmd.data().to_vec()
        };
        let s = self.mode.len();
        if data.len() + s > crate::apdu::MAX_NC {
            return Err(Scp03Error::CommandTooLong(cmd.data().len()));
        }
        let class = cmd.class().with_secure_messaging(true);
        let extended = data.len() + s > 255
            || cmd.ne().is_some_and(|n| n > 256)
            || cmd.form() == LengthForm::Extended;
        let shell = cmd.clone().with_class(class);
        let mac = self.mac_over(&shell, extended, &data, s);
        self.chaining = mac;
        data.extend_from_slice(&mac[..s]);
        let mut wrapped = shell.with_data(data)?;
        if extended {
            wrapped = wrapped.with_form(LengthForm::Extended);
        }
        Ok(if cmd.is_sensitive() {
            wrapped.sensitive()
        } else {
            wrapped
        })
    }

    /// Card: checks and removes the protection of a command (verify MAC, then decrypt).
    /// On failure the session is closed and the card should answer `6982`.
    pub fn unwrap_command(&mut self, cmd: &Command) -> Result<Command, Scp03Error> {
        self.check_open()?;
        if !self.level.c_mac() {
            if cmd.class().has_secure_messaging() {
                return self.fail(Scp03Error::Channel(ChannelFault::UnexpectedSecureMessaging));
            }
            self.counter = self.counter.wrapping_add(1);
            return Ok(cmd.clone());
        }
        // Exactly GlobalPlatform's indication: `04` in the first coding, `20` in the further
        // one. (The MAC covers the class with the indication normalised, so any other SM bits
        // would go unnoticed otherwise.)
        if cmd.class()
            != cmd
                .class()
                .with_secure_messaging(false)
                .with_secure_messaging(true)
        {
            return self.fail(Scp03Error::Channel(ChannelFault::MissingSecureMessaging));
        }
        let s = self.mode.len();
        let body = cmd.data();
        if body.len() < s {
            return self.fail(Scp03Error::Channel(ChannelFault::MissingMac));
        }
        let (data, mac) = body.split_at(body.len() - s);
        let full = self.mac_over(cmd, cmd.is_extended(), data, s);
        if !bool::from(full[..s].ct_eq(mac)) {
            return self.fail(Scp03Error::Channel(ChannelFault::CommandMacMismatch));
        }
        self.chaining = full;
        self.counter = self.counter.wrapping_add(1);
        let plain = if self.level.c_dec() {
            self.decrypt(data, false)?
        } else {
            data.to_vec()
        };
        let class = cmd.class().with_secure_messaging(false);
        Ok(cmd
            .clone()
            .with_class(class)
            .with_form(LengthForm::Auto)
            .with_data(plain)?)
    }

    /// Card: protects a response (R-ENC, then R-MAC). Error statuses carry neither data nor
    /// R-MAC.
    pub fn wrap_response(&mut self, resp: &Response) -> Result<Response, Scp03Error> {
        self.check_open()?;
        if !self.level.r_mac() {
            return Ok(resp.clone());
        }
        if !resp.sw.is_normal_or_warning() {
            return Ok(Response::status(resp.sw));
        }
        let mut data = if self.level.r_enc() {
            self.encrypt(&resp.data, true)
        } else {
            resp.data.clone()
        };
        let rmac = self
            .s_rmac
            .mac(&[&self.chaining, &data, &resp.sw.to_bytes()]);
        data.extend_from_slice(&rmac[..self.mode.len()]);
        Ok(Response::new(data, resp.sw))
    }

    /// Host: checks and removes the protection of a response (verify R-MAC, then decrypt).
    pub fn unwrap_response(&mut self, resp: &Response) -> Result<Response, Scp03Error> {
        self.check_open()?;
        if !self.level.r_mac() {
            return Ok(resp.clone());
        }
        if !resp.sw.is_normal_or_warning() {
            if resp.data.is_empty() {
                return Ok(resp.clone());
            }
            return self.fail(Scp03Error::UnexpectedErrorData(resp.sw));
        }
        let s = self.mode.len();
        if resp.data.len() < s {
            return self.fail(Scp03Error::Channel(ChannelFault::MissingResponseMac(
                resp.sw,
            )));
        }
        let (data, mac) = resp.data.split_at(resp.data.len() - s);
        let full = self
            .s_rmac
            .mac(&[&self.chaining, data, &resp.sw.to_bytes()]);
        if !bool::from(full[..s].ct_eq(mac)) {
            return self.fail(Scp03Error::Channel(ChannelFault::ResponseMacMismatch));
        }
        let plain = if self.level.r_enc() {
            self.decrypt(data, true)?
        } else {
            data.to_vec()
        };
        Ok(Response::new(plain, resp.sw))
    }

    /// Host, for scripts sent in batches: wraps a command and returns, with it, what is
    /// needed to check its answer later, after further commands were wrapped (the R-MAC
    /// chains on this command's C-MAC, R-ENC's IV on its counter).
    pub fn wrap_command_pending(
        &mut self,
        cmd: &Command,
    ) -> Result<(Command, Pending), Scp03Error> {
        let wrapped = self.wrap_command(cmd)?;
        Ok((
            wrapped,
            Pending {
                chaining: self.chaining,
                counter: self.counter,
            },
        ))
    }

    /// Host: checks the answer to a command wrapped with
    /// [`SecureSession::wrap_command_pending`]. Answers must be checked in the order the
    /// commands were sent; a failure closes the session.
    pub fn unwrap_response_for(
        &mut self,
        pending: &Pending,
        resp: &Response,
    ) -> Result<Response, Scp03Error> {
        let (chaining, counter) = (self.chaining, self.counter);
        self.chaining = pending.chaining;
        self.counter = pending.counter;
        let r = self.unwrap_response(resp);
        self.chaining = chaining;
        self.counter = counter;
        r
    }

    /// A status word the card answers when [`SecureSession::unwrap_command`] fails.
    pub fn failure_status(_e: &Scp03Error) -> StatusWord {
        StatusWord::SECURITY_STATUS_NOT_SATISFIED
    }
}
