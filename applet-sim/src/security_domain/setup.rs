//! What a security domain keeps in persistent memory outside its sessions: card-wide
//! configuration, key sets and counters, and the field readers INSTALL uses.

use crate::applet::Aid;
use crate::registry::{self, card_state};
use crate::store::{Store, StoreError};
use card_wire::scp03::crypto::AesKey;
use card_wire::scp03::{IParam, StaticKeys};
use card_wire::sw::StatusWord;
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

pub(super) type Sw = StatusWord;

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

pub(super) fn card_i(store: &Store) -> IParam {
    IParam(
        store
            .get("card/i")
            .and_then(|v| v.first().copied())
            .unwrap_or(0x70),
    )
}

pub(super) fn card_kdd(store: &Store) -> [u8; 10] {
    let mut k = [0u8; 10];
    if let Some(v) = store.get("card/kdd")
        && v.len() == 10
    {
        k.copy_from_slice(v);
    }
    k
}

pub(super) fn read_u32(store: &Store, key: &str) -> u32 {
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
pub(super) fn lv_fields(mut data: &[u8], n: usize) -> Result<Vec<&[u8]>, Sw> {
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

pub(super) fn aid_of(bytes: &[u8]) -> Result<Aid, Sw> {
    Aid::new(bytes).map_err(|_| Sw::INCORRECT_DATA)
}
