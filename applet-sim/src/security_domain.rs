//! The issuer security domain (ISD): SELECT with card recognition data, GET DATA, the card half
//! of SCP03 (INITIALIZE UPDATE / EXTERNAL AUTHENTICATE, then secure messaging per logical
//! channel) and GET STATUS.
//!
//! Card content management (INSTALL, LOAD, DELETE, PUT KEY, STORE DATA, SET STATUS) and the
//! card life cycle come with the full card manager; until then they answer `6D00`.

use crate::applet::{Aid, Applet, AppletContext, RegistryEntry};
use crate::runtime::CHANNELS;
use card_wire::apdu::{Command, Response};
use card_wire::scp03::handshake::{CardHandshake, CardKeyContext};
use card_wire::scp03::{IParam, SecureSession, StaticKeys};
use card_wire::sw::StatusWord;
use card_wire::tlv::tlv;
use std::collections::BTreeMap;

/// GlobalPlatform's default ISD AID.
pub const DEFAULT_ISD_AID: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];

/// Privileges of the ISD: Security Domain, Card Lock, Card Terminate, Card Reset, CVM
/// Management; Trusted Path, Authorized Management, Token Verification, Global Delete, Global
/// Lock, Global Registry, Final Application; Receipt Generation.
pub const ISD_PRIVILEGES: [u8; 3] = [0x9E, 0xFE, 0x80];

/// Card life-cycle state SECURED.
pub const CARD_SECURED: u8 = 0x0F;

/// Failed EXTERNAL AUTHENTICATEs after which the ISD refuses INITIALIZE UPDATE (`6983`), as
/// real cards do to stop key guessing.
pub const DEFAULT_AUTH_LIMIT: u32 = 10;

/// How an ISD is set up.
#[derive(Debug, Clone)]
pub struct SdConfig {
    /// The ISD's AID.
    pub aid: Aid,
    /// SCP03 key sets, by KVN.
    pub keys: Vec<StaticKeys>,
    /// The SCP03 `i` parameter the card announces.
    pub i: IParam,
    /// Key diversification data reported in INITIALIZE UPDATE.
    pub kdd: [u8; 10],
    /// Card image number (GET DATA `45`).
    pub cin: Vec<u8>,
    /// Issuer identification number (GET DATA `42`).
    pub iin: Vec<u8>,
    /// Consecutive failed authentications before the ISD locks its keys.
    pub auth_limit: u32,
}

/// The issuer security domain applet.
pub struct SecurityDomain {
    config: SdConfig,
    counters: BTreeMap<u8, u32>,
    failed_auth: u32,
    pending: Vec<Option<CardHandshake>>,
    sessions: Vec<Option<SecureSession>>,
    status_cursor: Vec<usize>,
}

impl SecurityDomain {
    /// A security domain from its configuration.
    pub fn new(config: SdConfig) -> Self {
        SecurityDomain {
            counters: config.keys.iter().map(|k| (k.kvn, 0)).collect(),
            config,
            failed_auth: 0,
            pending: (0..CHANNELS).map(|_| None).collect(),
            sessions: (0..CHANNELS).map(|_| None).collect(),
            status_cursor: vec![0; CHANNELS],
        }
    }

    /// The registry entry of this ISD.
    pub fn registry_entry(&self) -> RegistryEntry {
        RegistryEntry {
            aid: self.config.aid.clone(),
            life_cycle: CARD_SECURED,
            privileges: ISD_PRIVILEGES,
            is_isd: true,
        }
    }

    /// Card recognition data (GP Card Specification Annex H): GP 2.3.1, SCP03 with this `i`.
    fn card_recognition_data(&self) -> Vec<u8> {
        const GP: [u8; 6] = [0x2A, 0x86, 0x48, 0x86, 0xFC, 0x6B];
        let oid = |arc: &[u8]| tlv(0x06, &[&GP[..], arc].concat());
        let mut body = oid(&[0x01]);
        body.extend(tlv(0x60, &oid(&[0x02, 0x02, 0x03, 0x01])));
        body.extend(tlv(0x63, &oid(&[0x03])));
        body.extend(tlv(0x64, &oid(&[0x04, 0x03, self.config.i.0])));
        tlv(0x73, &body)
    }

    fn fci(&self) -> Vec<u8> {
        let mut a5 = self.card_recognition_data();
        a5.extend(tlv(0x9F65, &[0xFF]));
        let mut body = tlv(0x84, self.config.aid.as_bytes());
        body.extend(tlv(0xA5, &a5));
        tlv(0x6F, &body)
    }

    fn key_information(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for k in &self.config.keys {
            for kid in 1..=3u8 {
                body.extend(tlv(0xC0, &[kid, k.kvn, 0x88, k.key_len() as u8]));
            }
        }
        tlv(0xE0, &body)
    }

    fn get_data(&self, cmd: &Command) -> Result<Response, StatusWord> {
        let first_kvn = self.config.keys.first().map(|k| k.kvn).unwrap_or(0);
        let data = match (cmd.p1(), cmd.p2()) {
            (0x00, 0x66) => tlv(0x66, &self.card_recognition_data()),
            (0x00, 0xE0) => self.key_information(),
            (0x00, 0xC1) => {
                let c = self
                    .counters
                    .get(&first_kvn)
                    .copied()
                    .unwrap_or(0)
                    .to_be_bytes();
                tlv(0xC1, &c[1..])
            }
            (0x00, 0xCF) => tlv(0xCF, &self.config.kdd),
            (0x00, 0x42) => tlv(0x42, &self.config.iin),
            (0x00, 0x45) => tlv(0x45, &self.config.cin),
            (0x9F, 0x7F) => tlv(0x9F7F, &self.cplc()),
            _ => return Err(StatusWord::REFERENCED_DATA_NOT_FOUND),
        };
        Ok(Response::success(data))
    }

    /// A synthetic CPLC (42 bytes): fabricator, type, OS and serial fields from the KDD.
    fn cplc(&self) -> Vec<u8> {
        let mut c = vec![0u8; 42];
        c[0..2].copy_from_slice(&[0x4B, 0x47]); // IC fabricator "KG"
        c[2..4].copy_from_slice(&[0x53, 0x4D]); // IC type "SM"
        c[4..6].copy_from_slice(&[0x00, 0x01]); // OS identifier
        c[6..8].copy_from_slice(&[0x62, 0x30]); // OS release date (YDDD)
        c[8..10].copy_from_slice(&[0x01, 0x00]); // OS release level
        c[12..16].copy_from_slice(&self.config.kdd[6..10]); // IC serial number
        c
    }

    fn initialize_update(
        &mut self,
        cmd: &Command,
        ctx: &mut AppletContext<'_>,
    ) -> Result<Response, StatusWord> {
        let ch = ctx.channel as usize;
        // A new INITIALIZE UPDATE ends any session on this channel.
        self.sessions[ch] = None;
        self.pending[ch] = None;
        if cmd.class().has_secure_messaging() {
            return Err(StatusWord::CLA_NOT_SUPPORTED);
        }
        if self.failed_auth >= self.config.auth_limit {
            return Err(StatusWord::AUTH_METHOD_BLOCKED);
        }
        let keys = match cmd.p1() {
            0 => self.config.keys.first(),
            kvn => self.config.keys.iter().find(|k| k.kvn == kvn),
        }
        .ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND)?;
        let counter = self.counters.entry(keys.kvn).or_insert(0);
        if self.config.i.pseudo_random() {
            if *counter >= 0xFF_FFFF {
                return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
            }
            *counter += 1;
        }
        let key_ctx = CardKeyContext {
            keys,
            kdd: self.config.kdd,
            i: self.config.i,
            sequence_counter: *counter,
            sd_aid: Some(self.config.aid.as_bytes()),
        };
        let rng = &mut *ctx.rng;
        let (resp, hs) = CardHandshake::initialize_update(cmd, &key_ctx, |n| rng.bytes(n))?;
        self.pending[ch] = Some(hs);
        Ok(resp)
    }

    fn external_authenticate(&mut self, cmd: &Command, ch: usize) -> Result<Response, StatusWord> {
        let hs = self.pending[ch]
            .take()
            .ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        match hs.external_authenticate(cmd) {
            Ok(session) => {
                self.failed_auth = 0;
                self.sessions[ch] = Some(session);
                Ok(Response::status(StatusWord::SUCCESS))
            }
            Err(sw) => {
                if sw != StatusWord::INCORRECT_P1P2 && sw != StatusWord::WRONG_LENGTH {
                    self.failed_auth += 1;
                }
                Err(sw)
            }
        }
    }

    fn get_status(
        &mut self,
        cmd: &Command,
        ctx: &AppletContext<'_>,
    ) -> Result<Response, StatusWord> {
        let ch = ctx.channel as usize;
        let tags = match cmd.p2() & !0x01 {
            0x02 => true,
            0x00 => false,
            _ => return Err(StatusWord::INCORRECT_P1P2),
        };
        let criteria =
            card_wire::tlv::parse_single(cmd.data()).map_err(|_| StatusWord::INCORRECT_DATA)?;
        if criteria.tag.0 != 0x4F {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let entries: Vec<&RegistryEntry> = match cmd.p1() {
            0x80 => ctx.registry.iter().filter(|e| e.is_isd).collect(),
            0x40 => ctx.registry.iter().filter(|e| !e.is_isd).collect(),
            0x20 | 0x10 => Vec::new(),
            _ => return Err(StatusWord::INCORRECT_P1P2),
        };
        let entries: Vec<&RegistryEntry> = entries
            .into_iter()
            .filter(|e| e.aid.matches(criteria.value))
            .collect();
        let start = if cmd.p2() & 0x01 != 0 {
            self.status_cursor[ch]
        } else {
            0
        };
        if entries.is_empty() || start >= entries.len() {
            return Err(StatusWord::REFERENCED_DATA_NOT_FOUND);
        }
        let mut out = Vec::new();
        let mut next = start;
        for e in &entries[start..] {
            let encoded = if tags {
                let mut body = tlv(0x4F, e.aid.as_bytes());
                body.extend(tlv(0x9F70, &[e.life_cycle]));
                body.extend(tlv(0xC5, &e.privileges));
                tlv(0xE3, &body)
            } else {
                let mut v = vec![e.aid.as_bytes().len() as u8];
                v.extend_from_slice(e.aid.as_bytes());
                v.extend_from_slice(&[e.life_cycle, e.privileges[0]]);
                v
            };
            // Leave room for secure messaging (padding + MAC) within a short response.
            if !out.is_empty() && out.len() + encoded.len() > 200 {
                break;
            }
            out.extend(encoded);
            next += 1;
        }
        self.status_cursor[ch] = next;
        let sw = if next < entries.len() {
            StatusWord::MORE_DATA_AVAILABLE
        } else {
            StatusWord::SUCCESS
        };
        Ok(Response::new(out, sw))
    }

    fn handle(
        &mut self,
        cmd: &Command,
        ctx: &mut AppletContext<'_>,
        authenticated: bool,
    ) -> Result<Response, StatusWord> {
        match cmd.ins() {
            0xCA | 0xCB => self.get_data(cmd),
            0xF2 if !authenticated => Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED),
            0xF2 => self.get_status(cmd, ctx),
            _ => Err(StatusWord::INS_NOT_SUPPORTED),
        }
    }
}

impl Applet for SecurityDomain {
    fn select(&mut self, ctx: &mut AppletContext<'_>) -> Result<Vec<u8>, StatusWord> {
        let ch = ctx.channel as usize;
        self.sessions[ch] = None;
        self.pending[ch] = None;
        Ok(self.fci())
    }

    fn deselect(&mut self, ctx: &mut AppletContext<'_>) {
        let ch = ctx.channel as usize;
        self.sessions[ch] = None;
        self.pending[ch] = None;
    }

    fn process(
        &mut self,
        cmd: &Command,
        ctx: &mut AppletContext<'_>,
    ) -> Result<Response, StatusWord> {
        let ch = ctx.channel as usize;
        if cmd.class().is_proprietary() {
            match cmd.ins() {
                0x50 => return self.initialize_update(cmd, ctx),
                0x82 => return self.external_authenticate(cmd, ch),
                _ => {}
            }
        }
        // Anything but EXTERNAL AUTHENTICATE after INITIALIZE UPDATE abandons the handshake.
        self.pending[ch] = None;
        let Some(session) = self.sessions[ch].as_mut() else {
            if cmd.class().has_secure_messaging() {
                return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
            }
            return self.handle(cmd, ctx, false);
        };
        let plain = match session.unwrap_command(cmd) {
            Ok(p) => p,
            Err(e) => {
                // A security error aborts the session (Amendment D 5.6).
                self.sessions[ch] = None;
                return Err(SecureSession::failure_status(&e));
            }
        };
        let resp = match self.handle(&plain, ctx, true) {
            Ok(r) => r,
            Err(sw) => Response::status(sw),
        };
        let Some(session) = self.sessions[ch].as_mut() else {
            return Ok(resp);
        };
        session
            .wrap_response(&resp)
            .map_err(|e| SecureSession::failure_status(&e))
    }

    fn reset(&mut self) {
        self.sessions.iter_mut().for_each(|s| *s = None);
        self.pending.iter_mut().for_each(|s| *s = None);
    }

    fn extended_length(&self) -> bool {
        true
    }
}
