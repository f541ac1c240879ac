//! Security domains: the issuer security domain (ISD) and supplementary ones (SSDs), the
//! GlobalPlatform card manager of the simulator.
//!
//! - SELECT returns card recognition data; GET DATA reports `66`, `E0`, `C1`, `CF`, `42`, `45`,
//!   `9F7F`.
//! - The card half of SCP03 runs per logical channel: INITIALIZE UPDATE / EXTERNAL
//!   AUTHENTICATE with persistent sequence counters and a persistent failed-authentication
//!   count that locks the keys, then secure messaging on every command.
//! - Card content management under an authenticated session: GET STATUS, PUT KEY, INSTALL [for
//!   load / install / make selectable / personalization], LOAD, DELETE, SET STATUS, STORE DATA
//!   (forwarded to the applet being personalised). The ISD manages everything; an SSD with
//!   Authorized Management manages its own content.
//!
//! Every multi-object change runs in a transaction, so power loss leaves the old or the new
//! state. Keys, counters and life cycles live in persistent memory (`sd/<AID>/…`, `card/…`).

use crate::applet::{Aid, Applet, AppletContext};
use crate::registry::{self, LoadFile, RegistryEntry, app_state, card_state, privilege};
use crate::runtime::CHANNELS;
use crate::sd_scp02::{self, Channel, Handshake};
use crate::store::{Store, StoreError};
use card_wire::apdu::{Command, Response};
use card_wire::scp03::crypto::AesKey;
use card_wire::scp03::handshake::{CardHandshake, CardKeyContext};
use card_wire::scp03::putkey::dek_decrypt;
use card_wire::scp03::{IParam, StaticKeys};
use card_wire::sw::StatusWord;
use card_wire::tlv::tlv;
use zeroize::Zeroize;

/// GlobalPlatform's default ISD AID.
pub const DEFAULT_ISD_AID: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];

/// Privileges of the ISD: Security Domain, Card Lock, Card Terminate, Card Reset, CVM
/// Management; Trusted Path, Authorized Management, Token Verification, Global Delete, Global
/// Lock, Global Registry, Final Application; Receipt Generation.
pub const ISD_PRIVILEGES: [u8; 3] = [0x9E, 0xFE, 0x80];

/// Failed EXTERNAL AUTHENTICATEs after which a security domain refuses INITIALIZE UPDATE
/// (`6983`), as real cards do to stop key guessing.
pub const DEFAULT_AUTH_LIMIT: u32 = 10;

/// Largest load file the simulator accepts.
pub const MAX_LOAD_FILE: usize = 64 * 1024;

type Sw = StatusWord;

/// Card-wide configuration written once at manufacturing (persistent, `card/…`).
#[derive(Debug, Clone)]
pub struct CardSetup {
    /// The SCP03 `i` parameter every security domain announces.
    pub i: IParam,
    /// Key diversification data reported in INITIALIZE UPDATE.
    pub kdd: [u8; 10],
    /// Card image number (GET DATA `45`).
    pub cin: Vec<u8>,
    /// Issuer identification number (GET DATA `42`).
    pub iin: Vec<u8>,
    /// Consecutive failed authentications before a security domain locks its keys.
    pub auth_limit: u32,
}

impl CardSetup {
    /// Writes the card-wide configuration.
    pub fn write(&self, store: &mut Store) -> Result<(), StoreError> {
        store.put("card/i", &[self.i.0])?;
        store.put("card/kdd", &self.kdd)?;
        store.put("card/cin", &self.cin)?;
        store.put("card/iin", &self.iin)?;
        store.put("card/auth_limit", &self.auth_limit.to_be_bytes())?;
        store.put("card/lc", &[card_state::SECURED])
    }
}

fn card_i(store: &Store) -> IParam {
    IParam(
        store
            .get("card/i")
            .and_then(|v| v.first().copied())
            .unwrap_or(0x70),
    )
}

fn card_kdd(store: &Store) -> [u8; 10] {
    let mut k = [0u8; 10];
    if let Some(v) = store.get("card/kdd")
        && v.len() == 10
    {
        k.copy_from_slice(v);
    }
    k
}

fn read_u32(store: &Store, key: &str) -> u32 {
    store
        .get(key)
        .and_then(|v| <[u8; 4]>::try_from(v).ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0)
}

/// Writes a key set of security domain `sd` (and resets its sequence counter).
pub fn put_keys(store: &mut Store, sd: &Aid, keys: &StaticKeys) -> Result<(), StoreError> {
    let mut v = vec![keys.kvn, keys.key_len() as u8];
    v.extend_from_slice(keys.enc().as_bytes());
    v.extend_from_slice(keys.mac().as_bytes());
    v.extend_from_slice(keys.dek().as_bytes());
    let prefix = registry::sd_prefix(sd);
    let r = store
        .put(&format!("{prefix}/key/{:02X}", keys.kvn), &v)
        .and_then(|_| {
            store.put(
                &format!("{prefix}/seq/{:02X}", keys.kvn),
                &0u32.to_be_bytes(),
            )
        });
    v.zeroize();
    r
}

/// The key sets of security domain `sd`, in KVN order.
pub fn key_sets(store: &Store, sd: &Aid) -> Vec<StaticKeys> {
    let prefix = format!("{}/key/", registry::sd_prefix(sd));
    store
        .keys(&prefix)
        .iter()
        .filter_map(|k| {
            let v = store.get(k)?;
            let (kvn, len) = (*v.first()?, *v.get(1)? as usize);
            let key = |i: usize| AesKey::new(v.get(2 + i * len..2 + (i + 1) * len)?).ok();
            StaticKeys::new(kvn, key(0)?, key(1)?, key(2)?).ok()
        })
        .collect()
}

/// Reads length-value fields as INSTALL uses them (one length byte, or `81 xx` / `82 xx xx`).
fn lv_fields(mut data: &[u8], n: usize) -> Result<Vec<&[u8]>, Sw> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, hdr) = match data {
            [0x81, l, ..] => (*l as usize, 2),
            [0x82, a, b, ..] => (u16::from_be_bytes([*a, *b]) as usize, 3),
            [l, ..] if *l < 0x80 => (*l as usize, 1),
            _ => return Err(Sw::INCORRECT_DATA),
        };
        let field = data.get(hdr..hdr + len).ok_or(Sw::INCORRECT_DATA)?;
        out.push(field);
        data = &data[hdr + len..];
    }
    Ok(out)
}

fn aid_of(bytes: &[u8]) -> Result<Aid, Sw> {
    Aid::new(bytes).map_err(|_| Sw::INCORRECT_DATA)
}

/// An INSTALL [for load] waiting for its LOAD blocks.
struct LoadContext {
    elf: Aid,
    sd: Aid,
    hash: Option<Vec<u8>>,
    next_block: u8,
    data: Vec<u8>,
}

/// One GET STATUS entry: AID, life cycle, privileges, module AIDs.
type StatusItem = (Vec<u8>, u8, Vec<u8>, Vec<Vec<u8>>);

/// An open secure channel and the key version it was opened with.
struct Session {
    scp: Channel,
    kvn: u8,
}

/// A security domain applet (ISD or SSD).
pub struct SecurityDomain {
    aid: Aid,
    is_isd: bool,
    pending: Vec<Option<(Handshake, u8)>>,
    sessions: Vec<Option<Session>>,
    status_cursor: Vec<usize>,
    load: Option<LoadContext>,
    perso_target: Vec<Option<Aid>>,
}

impl SecurityDomain {
    /// A security domain instance (transient state only; keys live in persistent memory).
    pub fn new(aid: Aid, is_isd: bool) -> Self {
        SecurityDomain {
            aid,
            is_isd,
            pending: (0..CHANNELS).map(|_| None).collect(),
            sessions: (0..CHANNELS).map(|_| None).collect(),
            status_cursor: vec![0; CHANNELS],
            load: None,
            perso_target: vec![None; CHANNELS],
        }
    }

    fn prefix(&self) -> String {
        registry::sd_prefix(&self.aid)
    }

    fn end_session(&mut self, ch: usize) {
        self.sessions[ch] = None;
        self.pending[ch] = None;
        self.perso_target[ch] = None;
    }

    /// Card recognition data (GP Card Specification Annex H): GP 2.3.1, SCP03 (or SCP02)
    /// with `i`.
    fn card_recognition_data(store: &Store) -> Vec<u8> {
        let (scp, i) = sd_scp02::announced(store, card_i(store).0);
        const GP: [u8; 6] = [0x2A, 0x86, 0x48, 0x86, 0xFC, 0x6B];
        let oid = |arc: &[u8]| tlv(0x06, &[&GP[..], arc].concat());
        let mut body = oid(&[0x01]);
        body.extend(tlv(0x60, &oid(&[0x02, 0x02, 0x03, 0x01])));
        body.extend(tlv(0x63, &oid(&[0x03])));
        body.extend(tlv(0x64, &oid(&[0x04, scp, i])));
        tlv(0x73, &body)
    }

    fn fci(&self, store: &Store) -> Vec<u8> {
        let mut a5 = Self::card_recognition_data(store);
        // Maximum command data: 1024 bytes, in extended APDUs when the reader carries them.
        a5.extend(tlv(0x9F65, &[0x04, 0x00]));
        let mut body = tlv(0x84, self.aid.as_bytes());
        body.extend(tlv(0xA5, &a5));
        tlv(0x6F, &body)
    }

    fn get_data(&self, cmd: &Command, store: &Store) -> Result<Response, Sw> {
        let keys = || key_sets(store, &self.aid);
        let data = match (cmd.p1(), cmd.p2()) {
            (0x00, 0x66) => tlv(0x66, &Self::card_recognition_data(store)),
            (0x00, 0xE0) => {
                let mut body = Vec::new();
                for k in &keys() {
                    for kid in 1..=3u8 {
                        let t = sd_scp02::key_type(store);
                        body.extend(tlv(0xC0, &[kid, k.kvn, t, k.key_len() as u8]));
                    }
                }
                tlv(0xE0, &body)
            }
            (0x00, 0xC1) => {
                let kvn = keys().first().map(|k| k.kvn).unwrap_or(0);
                let c = read_u32(store, &format!("{}/seq/{kvn:02X}", self.prefix())).to_be_bytes();
                tlv(0xC1, &c[1..])
            }
            (0x00, 0xCF) => tlv(0xCF, &card_kdd(store)),
            (0x00, 0x42) => tlv(0x42, store.get("card/iin").unwrap_or_default()),
            (0x00, 0x45) => tlv(0x45, store.get("card/cin").unwrap_or_default()),
            (0x9F, 0x7F) => tlv(0x9F7F, &Self::cplc(&card_kdd(store))),
            _ => return Err(Sw::REFERENCED_DATA_NOT_FOUND),
        };
        Ok(Response::success(data))
    }

    /// A synthetic CPLC (42 bytes): fabricator, type, OS and serial fields from the KDD.
    fn cplc(kdd: &[u8; 10]) -> Vec<u8> {
        let mut c = vec![0u8; 42];
        c[0..2].copy_from_slice(&[0x4B, 0x47]); // IC fabricator "KG"
        c[2..4].copy_from_slice(&[0x53, 0x4D]); // IC type "SM"
        c[4..6].copy_from_slice(&[0x00, 0x01]); // OS identifier
        c[6..8].copy_from_slice(&[0x62, 0x30]); // OS release date (YDDD)
        c[8..10].copy_from_slice(&[0x01, 0x00]); // OS release level
        c[12..16].copy_from_slice(&kdd[6..10]); // IC serial number
        c
    }

    fn initialize_update(
        &mut self,
        cmd: &Command,
        ctx: &mut AppletContext<'_>,
    ) -> Result<Response, Sw> {
        let ch = ctx.channel as usize;
        // A new INITIALIZE UPDATE ends any session on this channel.
        self.end_session(ch);
        if cmd.class().has_secure_messaging() {
            return Err(Sw::CLA_NOT_SUPPORTED);
        }
        let prefix = self.prefix();
        let limit = match read_u32(ctx.store, "card/auth_limit") {
            0 => DEFAULT_AUTH_LIMIT,
            n => n,
        };
        if read_u32(ctx.store, &format!("{prefix}/fail")) >= limit {
            return Err(Sw::AUTH_METHOD_BLOCKED);
        }
        let sets = key_sets(ctx.store, &self.aid);
        let keys = match cmd.p1() {
            0 => sets.first(),
            kvn => sets.iter().find(|k| k.kvn == kvn),
        }
        .ok_or(Sw::REFERENCED_DATA_NOT_FOUND)?;
        let i = card_i(ctx.store);
        let seq_key = format!("{prefix}/seq/{:02X}", keys.kvn);
        let mut counter = read_u32(ctx.store, &seq_key);
        if let Some(i02) = sd_scp02::card_i02(ctx.store) {
            // SCP02: a 2-byte counter, incremented (persistently) before every session.
            if counter >= 0xFFFF {
                return Err(Sw::CONDITIONS_NOT_SATISFIED);
            }
            counter += 1;
            ctx.store.put(&seq_key, &counter.to_be_bytes())?;
            let kdd = card_kdd(ctx.store);
            let rng = &mut *ctx.rng;
            let (resp, hs) = sd_scp02::initialize_update(
                cmd,
                keys,
                kdd,
                i02,
                counter as u16,
                self.aid.as_bytes(),
                |n| rng.bytes(n),
            )?;
            self.pending[ch] = Some((hs, keys.kvn));
            return Ok(resp);
        }
        if i.pseudo_random() {
            if counter >= 0xFF_FFFF {
                return Err(Sw::CONDITIONS_NOT_SATISFIED);
            }
            // Incremented before use, and persistently: a challenge is never reused.
            counter += 1;
            ctx.store.put(&seq_key, &counter.to_be_bytes())?;
        }
        let key_ctx = CardKeyContext {
            keys,
            kdd: card_kdd(ctx.store),
            i,
            sequence_counter: counter,
            sd_aid: Some(self.aid.as_bytes()),
        };
        let rng = &mut *ctx.rng;
        let (resp, hs) = CardHandshake::initialize_update(cmd, &key_ctx, |n| rng.bytes(n))?;
        self.pending[ch] = Some((Handshake::Scp03(hs), keys.kvn));
        Ok(resp)
    }

    fn external_authenticate(
        &mut self,
        cmd: &Command,
        ctx: &mut AppletContext<'_>,
    ) -> Result<Response, Sw> {
        let ch = ctx.channel as usize;
        let (hs, kvn) = self.pending[ch]
            .take()
            .ok_or(Sw::CONDITIONS_NOT_SATISFIED)?;
        let fail_key = format!("{}/fail", self.prefix());
        // Count the attempt as failed before checking it, persistently: cutting power during
        // the check cannot then buy a free try (the PIN try-counter rule).
        let failed = read_u32(ctx.store, &fail_key);
        ctx.store.put(&fail_key, &(failed + 1).to_be_bytes())?;
        match hs.external_authenticate(cmd) {
            Ok(scp) => {
                ctx.store.put(&fail_key, &0u32.to_be_bytes())?;
                self.sessions[ch] = Some(Session { scp, kvn });
                Ok(Response::status(Sw::SUCCESS))
            }
            Err(sw) => {
                if sw == Sw::INCORRECT_P1P2 || sw == Sw::WRONG_LENGTH {
                    // A malformed command is not an authentication attempt.
                    ctx.store.put(&fail_key, &failed.to_be_bytes())?;
                }
                Err(sw)
            }
        }
    }

    /// Whether this domain may manage `entry` (the ISD manages everything; an SSD its own).
    fn manages(&self, entry_sd: Option<&Aid>) -> bool {
        self.is_isd || entry_sd == Some(&self.aid)
    }

    fn may_manage_content(&self, ctx: &AppletContext<'_>) -> bool {
        self.is_isd
            || ctx
                .me()
                .is_some_and(|e| e.has_privilege(1, privilege::AUTHORIZED_MANAGEMENT))
    }

    fn get_status(&mut self, cmd: &Command, ctx: &AppletContext<'_>) -> Result<Response, Sw> {
        let ch = ctx.channel as usize;
        let tags = match cmd.p2() & !0x01 {
            0x02 => true,
            0x00 => false,
            _ => return Err(Sw::INCORRECT_P1P2),
        };
        let criteria = card_wire::tlv::parse_single(cmd.data()).map_err(|_| Sw::INCORRECT_DATA)?;
        if criteria.tag.0 != 0x4F {
            return Err(Sw::INCORRECT_DATA);
        }
        let card_lc = registry::card_life_cycle(ctx.store);
        let mut items: Vec<StatusItem> = match cmd.p1() {
            0x80 if self.is_isd => vec![(
                self.aid.as_bytes().to_vec(),
                card_lc,
                ISD_PRIVILEGES.to_vec(),
                vec![],
            )],
            0x40 => ctx
                .registry
                .iter()
                .filter(|e| !e.is_isd() && self.manages(e.sd.as_ref()))
                .map(|e| {
                    (
                        e.aid.as_bytes().to_vec(),
                        e.life_cycle,
                        e.privileges.to_vec(),
                        vec![],
                    )
                })
                .collect(),
            0x20 | 0x10 => registry::load_files(ctx.store)
                .into_iter()
                .filter(|lf| self.manages(Some(&lf.sd)))
                .map(|lf| {
                    let modules = if cmd.p1() == 0x10 {
                        lf.modules
                            .iter()
                            .map(|(m, _)| m.as_bytes().to_vec())
                            .collect()
                    } else {
                        vec![]
                    };
                    (
                        lf.aid.as_bytes().to_vec(),
                        app_state::LOADED,
                        vec![0x00],
                        modules,
                    )
                })
                .collect(),
            _ => return Err(Sw::INCORRECT_P1P2),
        };
        items.retain(|(aid, ..)| aid.starts_with(criteria.value));
        let start = if cmd.p2() & 0x01 != 0 {
            self.status_cursor[ch]
        } else {
            0
        };
        if items.is_empty() || start >= items.len() {
            return Err(Sw::REFERENCED_DATA_NOT_FOUND);
        }
        let mut out = Vec::new();
        let mut next = start;
        for (aid, lc, privs, modules) in &items[start..] {
            let encoded = if tags {
                let mut body = tlv(0x4F, aid);
                body.extend(tlv(0x9F70, &[*lc]));
                if cmd.p1() != 0x20 && cmd.p1() != 0x10 {
                    body.extend(tlv(0xC5, privs));
                }
                if let Some(v) = Aid::new(aid)
                    .ok()
                    .and_then(|a| crate::load_file::version(ctx.store, &a))
                {
                    body.extend(tlv(0xCE, &v));
                }
                for m in modules {
                    body.extend(tlv(0x84, m));
                }
                tlv(0xE3, &body)
            } else {
                let mut v = vec![aid.len() as u8];
                v.extend_from_slice(aid);
                v.extend_from_slice(&[*lc, privs.first().copied().unwrap_or(0)]);
                if cmd.p1() == 0x10 {
                    v.push(modules.len() as u8);
                    for m in modules {
                        v.push(m.len() as u8);
                        v.extend_from_slice(m);
                    }
                }
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
        let sw = if next < items.len() {
            Sw::MORE_DATA_AVAILABLE
        } else {
            Sw::SUCCESS
        };
        Ok(Response::new(out, sw))
    }

    fn put_key(&mut self, cmd: &Command, ctx: &mut AppletContext<'_>) -> Result<Response, Sw> {
        let ch = ctx.channel as usize;
        if cmd.p2() != 0x81 {
            return Err(Sw::INCORRECT_P1P2);
        }
        let session = self.sessions[ch]
            .as_ref()
            .ok_or(Sw::SECURITY_STATUS_NOT_SATISFIED)?;
        let session_kvn = session.kvn;
        let scp02_dek = session.scp.scp02_dek().cloned();
        let sets = key_sets(ctx.store, &self.aid);
        let dek = sets
            .iter()
            .find(|k| k.kvn == session_kvn)
            .map(|k| k.dek().clone())
            .ok_or(Sw::REFERENCED_DATA_NOT_FOUND)?;
        let data = cmd.data();
        let (&new_kvn, rest) = data.split_first().ok_or(Sw::WRONG_LENGTH)?;
        if new_kvn == 0 || new_kvn == 0xFF {
            return Err(Sw::INCORRECT_DATA);
        }
        let replace = cmd.p1();
        if replace != 0 && !sets.iter().any(|k| k.kvn == replace) {
            return Err(Sw::REFERENCED_DATA_NOT_FOUND);
        }
        if replace == 0 && sets.iter().any(|k| k.kvn == new_kvn) {
            return Err(Sw::INCORRECT_DATA);
        }
        let (new, kcvs) = match scp02_dek {
            Some(dek) => sd_scp02::parse_put_key(&dek, data)?,
            None => Self::put_key_aes(&dek, new_kvn, rest)?,
        };
        let prefix = self.prefix();
        let aid = self.aid.clone();
        ctx.store.atomically(|s| {
            if replace != 0 {
                s.remove(&format!("{prefix}/key/{replace:02X}"))?;
                s.remove(&format!("{prefix}/seq/{replace:02X}"))?;
            }
            put_keys(s, &aid, &new)
        })?;
        Ok(Response::success(kcvs))
    }

    /// Decrypts the AES key blocks of an SCP03 PUT KEY.
    fn put_key_aes(
        dek: &AesKey,
        new_kvn: u8,
        mut rest: &[u8],
    ) -> Result<(StaticKeys, Vec<u8>), Sw> {
        let mut keys = Vec::with_capacity(3);
        let mut kcvs = vec![new_kvn];
        for _ in 0..3 {
            // 88 ‖ (1 + len ct) ‖ key length ‖ ct ‖ 03 ‖ KCV
            let [0x88, block_len, key_len, tail @ ..] = rest else {
                return Err(Sw::INCORRECT_DATA);
            };
            let ct_len = (*block_len as usize)
                .checked_sub(1)
                .ok_or(Sw::INCORRECT_DATA)?;
            let key_len = *key_len as usize;
            if tail.len() < ct_len + 4 || tail[ct_len] != 0x03 || ct_len < key_len {
                return Err(Sw::INCORRECT_DATA);
            }
            let mut plain = dek_decrypt(dek, &tail[..ct_len]).map_err(|_| Sw::INCORRECT_DATA)?;
            let key = AesKey::new(&plain[..key_len]).map_err(|_| Sw::INCORRECT_DATA);
            plain.zeroize();
            let key = key?;
            let kcv = &tail[ct_len + 1..ct_len + 4];
            if key.kcv() != kcv {
                return Err(Sw::INCORRECT_DATA);
            }
            kcvs.extend_from_slice(kcv);
            keys.push(key);
            rest = &tail[ct_len + 4..];
        }
        if !rest.is_empty() {
            return Err(Sw::INCORRECT_DATA);
        }
        let mut it = keys.into_iter();
        let (Some(enc), Some(mac), Some(dek_new)) = (it.next(), it.next(), it.next()) else {
            return Err(Sw::INCORRECT_DATA);
        };
        let new = StaticKeys::new(new_kvn, enc, mac, dek_new).map_err(|_| Sw::INCORRECT_DATA)?;
        Ok((new, kcvs))
    }

    fn install(&mut self, cmd: &Command, ctx: &mut AppletContext<'_>) -> Result<Response, Sw> {
        if cmd.p2() != 0x00 {
            return Err(Sw::INCORRECT_P1P2);
        }
        if matches!(cmd.p1(), 0x02 | 0x04 | 0x0C | 0x08) && !self.may_manage_content(ctx) {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        match cmd.p1() {
            0x02 => self.install_for_load(cmd, ctx),
            0x04 | 0x0C | 0x08 => self.install_for_install(cmd, ctx),
            0x20 => self.install_for_personalization(cmd, ctx),
            _ => Err(Sw::INCORRECT_P1P2),
        }
    }

    fn install_for_load(
        &mut self,
        cmd: &Command,
        ctx: &mut AppletContext<'_>,
    ) -> Result<Response, Sw> {
        let f = lv_fields(cmd.data(), 5)?;
        let elf = aid_of(f[0])?;
        let sd = if f[1].is_empty() {
            self.aid.clone()
        } else {
            aid_of(f[1])?
        };
        if !f[4].is_empty() {
            // Delegated-management tokens are not modelled.
            return Err(Sw::INCORRECT_DATA);
        }
        match f[2].len() {
            0 | 20 | 32 => {}
            _ => return Err(Sw::INCORRECT_DATA), // SHA-1 or SHA-256 load file hashes
        }
        if registry::load_file(ctx.store, &elf).is_some()
            || registry::entry(ctx.store, &elf).is_some()
        {
            return Err(Sw::CONDITIONS_NOT_SATISFIED);
        }
        let sd_entry = ctx
            .registry
            .iter()
            .find(|e| e.aid == sd)
            .ok_or(Sw::REFERENCED_DATA_NOT_FOUND)?;
        if !sd_entry.has_privilege(0, privilege::SECURITY_DOMAIN) || !self.manages(Some(&sd)) {
            return Err(Sw::REFERENCED_DATA_NOT_FOUND);
        }
        self.load = Some(LoadContext {
            elf,
            sd,
            hash: (!f[2].is_empty()).then(|| f[2].to_vec()),
            next_block: 0,
            data: Vec::new(),
        });
        Ok(Response::success(vec![0x00]))
    }

    fn load(&mut self, cmd: &Command, ctx: &mut AppletContext<'_>) -> Result<Response, Sw> {
        let last = match cmd.p1() {
            0x00 => false,
            0x80 => true,
            _ => return Err(Sw::INCORRECT_P1P2),
        };
        let load = self.load.as_mut().ok_or(Sw::CONDITIONS_NOT_SATISFIED)?;
        if cmd.p2() != load.next_block {
            self.load = None;
            return Err(Sw::INCORRECT_P1P2);
        }
        if load.data.len() + cmd.data().len() > MAX_LOAD_FILE {
            self.load = None;
            return Err(Sw::NOT_ENOUGH_MEMORY);
        }
        load.data.extend_from_slice(cmd.data());
        load.next_block = load.next_block.wrapping_add(1);
        if !last {
            return Ok(Response::success(vec![0x00]));
        }
        let Some(load) = self.load.take() else {
            return Err(Sw::CONDITIONS_NOT_SATISFIED);
        };
        // The load file is C4 ‖ length ‖ load file data block (no DAP blocks).
        let c4 = card_wire::tlv::parse_single(&load.data).map_err(|_| Sw::INCORRECT_DATA)?;
        if c4.tag.0 != 0xC4 {
            return Err(Sw::INCORRECT_DATA);
        }
        crate::load_file::check_hash(c4.value, load.hash.as_deref())?;
        if crate::load_file::is_cap(c4.value) {
            let (lf, version) = crate::load_file::accept(ctx.store, c4.value, &load.elf, &load.sd)?;
            crate::load_file::record(ctx.store, &lf, version)?;
            return Ok(Response::success(vec![0x00]));
        }
        let (package, modules) = LoadFile::parse_data_block(c4.value).ok_or(Sw::INCORRECT_DATA)?;
        if package != load.elf || modules.is_empty() {
            return Err(Sw::INCORRECT_DATA);
        }
        if modules
            .iter()
            .any(|(_, class)| !crate::classes::known(class))
        {
            return Err(Sw::INCORRECT_DATA);
        }
        let lf = LoadFile {
            aid: load.elf,
            sd: load.sd,
            modules,
        };
        ctx.store.atomically(|s| registry::put_load_file(s, &lf))?;
        Ok(Response::success(vec![0x00]))
    }

    fn install_for_install(
        &mut self,
        cmd: &Command,
        ctx: &mut AppletContext<'_>,
    ) -> Result<Response, Sw> {
        let f = lv_fields(cmd.data(), 6)?;
        let install = cmd.p1() & 0x04 != 0;
        let selectable = cmd.p1() & 0x08 != 0;
        if !f[5].is_empty() {
            return Err(Sw::INCORRECT_DATA);
        }
        let app = aid_of(f[2])?;
        if !install {
            // INSTALL [for make selectable] of an installed application.
            let mut e = registry::entry(ctx.store, &app).ok_or(Sw::REFERENCED_DATA_NOT_FOUND)?;
            if !self.manages(e.sd.as_ref()) {
                return Err(Sw::REFERENCED_DATA_NOT_FOUND);
            }
            if e.life_cycle != app_state::INSTALLED {
                return Err(Sw::CONDITIONS_NOT_SATISFIED);
            }
            e.life_cycle = app_state::SELECTABLE;
            ctx.store.atomically(|s| registry::put_entry(s, &e))?;
            return Ok(Response::success(vec![0x00]));
        }
        let elf = aid_of(f[0])?;
        let module = aid_of(f[1])?;
        let lf = registry::load_file(ctx.store, &elf).ok_or(Sw::REFERENCED_DATA_NOT_FOUND)?;
        if !self.manages(Some(&lf.sd)) {
            return Err(Sw::REFERENCED_DATA_NOT_FOUND);
        }
        let class = lf
            .modules
            .iter()
            .find(|(m, _)| *m == module)
            .map(|(_, c)| c.clone())
            .ok_or(Sw::REFERENCED_DATA_NOT_FOUND)?;
        if class == crate::load_file::CAP_CLASS {
            return Err(crate::load_file::SW_NO_JCVM);
        }
        if registry::entry(ctx.store, &app).is_some()
            || registry::load_file(ctx.store, &app).is_some()
        {
            return Err(Sw::CONDITIONS_NOT_SATISFIED);
        }
        let mut privileges = [0u8; 3];
        match f[3] {
            [a] => privileges[0] = *a,
            [a, b, c] => privileges = [*a, *b, *c],
            [] => {}
            _ => return Err(Sw::INCORRECT_DATA),
        }
        let is_sd_class = class == crate::classes::SD;
        if is_sd_class {
            privileges[0] |= privilege::SECURITY_DOMAIN;
        } else if privileges[0] & privilege::SECURITY_DOMAIN != 0 || class == crate::classes::ISD {
            return Err(Sw::INCORRECT_DATA);
        }
        // Card-wide privileges stay with the ISD.
        if privileges[0] & (privilege::CARD_LOCK | privilege::CARD_TERMINATE) != 0 && !self.is_isd {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let entry = RegistryEntry {
            aid: app.clone(),
            class,
            life_cycle: if selectable {
                app_state::SELECTABLE
            } else {
                app_state::INSTALLED
            },
            privileges,
            sd: Some(lf.sd.clone()),
            elf: Some(elf),
            params: f[4].to_vec(),
        };
        // A new security domain starts with a copy of the installing domain's current keys;
        // its owner replaces them with PUT KEY.
        let ch = ctx.channel as usize;
        let initial = match (is_sd_class, self.sessions[ch].as_ref()) {
            (true, Some(s)) => key_sets(ctx.store, &self.aid)
                .into_iter()
                .find(|k| k.kvn == s.kvn),
            _ => None,
        };
        ctx.store.atomically(|s| {
            registry::put_entry(s, &entry)?;
            if let Some(k) = &initial {
                put_keys(s, &app, k)?;
            }
            Ok::<_, StoreError>(())
        })?;
        Ok(Response::success(vec![0x00]))
    }

    fn install_for_personalization(
        &mut self,
        cmd: &Command,
        ctx: &mut AppletContext<'_>,
    ) -> Result<Response, Sw> {
        let f = lv_fields(cmd.data(), 3)?;
        let app = aid_of(f[2])?;
        let e = registry::entry(ctx.store, &app).ok_or(Sw::REFERENCED_DATA_NOT_FOUND)?;
        if !self.manages(e.sd.as_ref()) || e.is_isd() {
            return Err(Sw::REFERENCED_DATA_NOT_FOUND);
        }
        self.perso_target[ctx.channel as usize] = Some(app);
        Ok(Response::success(vec![0x00]))
    }

    fn delete(&mut self, cmd: &Command, ctx: &mut AppletContext<'_>) -> Result<Response, Sw> {
        if !self.may_manage_content(ctx) {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let related = match cmd.p2() {
            0x00 => false,
            0x80 => true,
            _ => return Err(Sw::INCORRECT_P1P2),
        };
        let t = card_wire::tlv::parse_single(cmd.data()).map_err(|_| Sw::INCORRECT_DATA)?;
        if t.tag.0 != 0x4F {
            // Key deletion (D0/D2) is not modelled.
            return Err(Sw::INCORRECT_DATA);
        }
        let aid = aid_of(t.value)?;
        if let Some(e) = registry::entry(ctx.store, &aid) {
            if e.is_isd() || e.aid == self.aid {
                return Err(Sw::CONDITIONS_NOT_SATISFIED);
            }
            if !self.manages(e.sd.as_ref()) {
                return Err(Sw::REFERENCED_DATA_NOT_FOUND);
            }
            // A security domain with associated content cannot go.
            let has_content = ctx.registry.iter().any(|x| x.sd.as_ref() == Some(&aid))
                || registry::load_files(ctx.store)
                    .iter()
                    .any(|lf| lf.sd == aid);
            if has_content {
                return Err(Sw::CONDITIONS_NOT_SATISFIED);
            }
            ctx.store.atomically(|s| registry::remove_entry(s, &aid))?;
            return Ok(Response::success(vec![0x00]));
        }
        let lf = registry::load_file(ctx.store, &aid).ok_or(Sw::REFERENCED_DATA_NOT_FOUND)?;
        if !self.manages(Some(&lf.sd)) {
            return Err(Sw::REFERENCED_DATA_NOT_FOUND);
        }
        let instances: Vec<Aid> = ctx
            .registry
            .iter()
            .filter(|e| e.elf.as_ref() == Some(&aid))
            .map(|e| e.aid.clone())
            .collect();
        if !instances.is_empty() && !related {
            return Err(Sw::CONDITIONS_NOT_SATISFIED);
        }
        if instances
            .iter()
            .any(|i| ctx.registry.iter().any(|x| x.sd.as_ref() == Some(i)))
        {
            return Err(Sw::CONDITIONS_NOT_SATISFIED);
        }
        ctx.store.atomically(|s| {
            for i in &instances {
                registry::remove_entry(s, i)?;
            }
            registry::remove_load_file(s, &aid)
        })?;
        Ok(Response::success(vec![0x00]))
    }

    fn set_status(&mut self, cmd: &Command, ctx: &mut AppletContext<'_>) -> Result<Response, Sw> {
        match cmd.p1() {
            0x80 => {
                if !self.is_isd {
                    return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
                }
                let from = registry::card_life_cycle(ctx.store);
                let to = cmd.p2();
                use card_state::*;
                let ok = matches!(
                    (from, to),
                    (OP_READY, INITIALIZED)
                        | (OP_READY | INITIALIZED, SECURED)
                        | (SECURED, CARD_LOCKED)
                        | (CARD_LOCKED, SECURED)
                        | (OP_READY | INITIALIZED | SECURED | CARD_LOCKED, TERMINATED)
                );
                if !matches!(
                    to,
                    OP_READY | INITIALIZED | SECURED | CARD_LOCKED | TERMINATED
                ) {
                    return Err(Sw::INCORRECT_P1P2);
                }
                if !ok {
                    return Err(Sw::CONDITIONS_NOT_SATISFIED);
                }
                ctx.store.put("card/lc", &[to])?;
                Ok(Response::status(Sw::SUCCESS))
            }
            0x40 => {
                let aid = aid_of(cmd.data())?;
                let mut e =
                    registry::entry(ctx.store, &aid).ok_or(Sw::REFERENCED_DATA_NOT_FOUND)?;
                if e.is_isd() || !self.manages(e.sd.as_ref()) {
                    return Err(Sw::REFERENCED_DATA_NOT_FOUND);
                }
                let to = cmd.p2();
                e.life_cycle = match to {
                    0x80 => e.life_cycle | app_state::LOCKED_BIT,
                    0x00 if e.life_cycle & app_state::LOCKED_BIT != 0 => {
                        e.life_cycle & !app_state::LOCKED_BIT
                    }
                    // Application-specific states keep the SELECTABLE bits.
                    s if s & 0x87 == 0x07 && e.life_cycle & app_state::LOCKED_BIT == 0 => s,
                    // Security domains: PERSONALIZED after SELECTABLE.
                    app_state::PERSONALIZED if e.kind() == registry::EntryKind::Sd => {
                        app_state::PERSONALIZED
                    }
                    _ => return Err(Sw::CONDITIONS_NOT_SATISFIED),
                };
                ctx.store.atomically(|s| registry::put_entry(s, &e))?;
                Ok(Response::status(Sw::SUCCESS))
            }
            _ => Err(Sw::INCORRECT_P1P2),
        }
    }

    fn store_data(&mut self, cmd: &Command, ctx: &mut AppletContext<'_>) -> Result<Response, Sw> {
        let ch = ctx.channel as usize;
        if let Some(target) = self.perso_target[ch].clone() {
            let last = cmd.p1() & 0x80 != 0;
            let plain = cmd.clone().with_class(card_wire::apdu::Class(0x80));
            let r = ctx.others.personalize(
                &target,
                &plain,
                ctx.channel,
                ctx.rng,
                ctx.store,
                ctx.registry,
            );
            if last {
                self.perso_target[ch] = None;
            }
            return r;
        }
        // The domain's own data: IIN (42) and CIN (45) as BER-TLV.
        let items = card_wire::tlv::parse_all(cmd.data()).map_err(|_| Sw::INCORRECT_DATA)?;
        if items.is_empty() || !self.is_isd {
            return Err(Sw::INCORRECT_DATA);
        }
        let writes: Vec<(&str, Vec<u8>)> = items
            .iter()
            .map(|t| match t.tag.0 {
                0x42 => Ok(("card/iin", t.value.to_vec())),
                0x45 => Ok(("card/cin", t.value.to_vec())),
                _ => Err(Sw::REFERENCED_DATA_NOT_FOUND),
            })
            .collect::<Result<_, _>>()?;
        ctx.store.atomically(|s| {
            for (k, v) in &writes {
                s.put(k, v)?;
            }
            Ok::<_, StoreError>(())
        })?;
        Ok(Response::status(Sw::SUCCESS))
    }

    fn handle(
        &mut self,
        cmd: &Command,
        ctx: &mut AppletContext<'_>,
        authenticated: bool,
    ) -> Result<Response, Sw> {
        let ins = cmd.ins();
        if matches!(ins, 0xCA | 0xCB) {
            return self.get_data(cmd, ctx.store);
        }
        if registry::card_life_cycle(ctx.store) == card_state::TERMINATED {
            return Err(Sw::CONDITIONS_NOT_SATISFIED);
        }
        if !cmd.class().is_proprietary() {
            return Err(Sw::CLA_NOT_SUPPORTED);
        }
        if !matches!(ins, 0xF2 | 0xD8 | 0xE6 | 0xE8 | 0xE4 | 0xF0 | 0xE2) {
            return Err(Sw::INS_NOT_SUPPORTED);
        }
        if !authenticated {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        match ins {
            0xF2 => self.get_status(cmd, ctx),
            0xD8 => self.put_key(cmd, ctx),
            0xE6 => self.install(cmd, ctx),
            0xE8 => self.load(cmd, ctx),
            0xE4 => self.delete(cmd, ctx),
            0xF0 => self.set_status(cmd, ctx),
            _ => self.store_data(cmd, ctx),
        }
    }
}

impl Applet for SecurityDomain {
    fn select(&mut self, ctx: &mut AppletContext<'_>) -> Result<Vec<u8>, Sw> {
        self.end_session(ctx.channel as usize);
        Ok(self.fci(ctx.store))
    }

    fn deselect(&mut self, channel: u8) {
        self.end_session(channel as usize);
    }

    fn process(&mut self, cmd: &Command, ctx: &mut AppletContext<'_>) -> Result<Response, Sw> {
        let ch = ctx.channel as usize;
        if cmd.class().is_proprietary() {
            match cmd.ins() {
                0x50 => return self.initialize_update(cmd, ctx),
                0x82 => return self.external_authenticate(cmd, ctx),
                _ => {}
            }
        }
        // Anything but EXTERNAL AUTHENTICATE after INITIALIZE UPDATE abandons the handshake.
        self.pending[ch] = None;
        let Some(session) = self.sessions[ch].as_mut() else {
            if cmd.class().has_secure_messaging() {
                return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
            }
            return self.handle(cmd, ctx, false);
        };
        let plain = match session.scp.unwrap_command(cmd) {
            Ok(p) => p,
            Err(sw) => {
                // A security error aborts the session (Amendment D 5.6).
                self.end_session(ch);
                return Err(sw);
            }
        };
        let resp = match self.handle(&plain, ctx, true) {
            Ok(r) => r,
            Err(sw) => Response::status(sw),
        };
        let Some(session) = self.sessions[ch].as_mut() else {
            return Ok(resp);
        };
        session.scp.wrap_response(&resp)
    }

    fn reset(&mut self) {
        for ch in 0..CHANNELS {
            self.end_session(ch);
        }
        self.load = None;
    }

    fn extended_length(&self) -> bool {
        true
    }

    fn multi_selectable(&self) -> bool {
        true
    }
}
