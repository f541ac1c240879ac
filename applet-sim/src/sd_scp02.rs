//! SCP02 in the simulator's security domains: a card set up with an SCP02 `i` (persistent
//! `card/scp02_i`) answers INITIALIZE UPDATE with SCP02 instead of SCP03, runs SCP02 secure
//! messaging and takes 3DES key sets in PUT KEY (encrypted under the session DEK). Key sets
//! live where SCP03's do (`sd/<AID>/key/<KVN>`, 16-byte keys), with a 2-byte sequence counter
//! incremented before every INITIALIZE UPDATE.

use crate::store::{Store, StoreError};
use card_wire::apdu::{Command, Response};
use card_wire::scp02::handshake::{CardHandshake02, CardKeyContext02};
use card_wire::scp02::putkey::parse_put_key_data;
use card_wire::scp02::{Des3Key, IParam02, Scp02Session, StaticKeys02};
use card_wire::scp03::handshake::CardHandshake;
use card_wire::scp03::{AesKey, SecureSession, StaticKeys};
use card_wire::sw::StatusWord;

type Sw = StatusWord;

/// Where the card's SCP02 `i` is kept; absent on SCP03 cards.
pub const SCP02_I_KEY: &str = "card/scp02_i";

/// The card's SCP02 `i`, or `None` when the card runs SCP03.
pub fn card_i02(store: &Store) -> Option<IParam02> {
    store
        .get(SCP02_I_KEY)
        .and_then(|v| v.first().copied())
        .map(IParam02)
}

/// Makes the card speak SCP02 with `i` (manufacturing).
pub fn write_setup(store: &mut Store, i: IParam02) -> Result<(), StoreError> {
    store.put(SCP02_I_KEY, &[i.0])
}

/// The SCP identifier and `i` the card recognition data announces.
pub fn announced(store: &Store, scp03_i: u8) -> (u8, u8) {
    match card_i02(store) {
        Some(i) => (0x02, i.0),
        None => (0x03, scp03_i),
    }
}

/// The key type GET DATA `E0` reports: `80` (DES) on an SCP02 card, `88` (AES) otherwise.
pub fn key_type(store: &Store) -> u8 {
    if card_i02(store).is_some() {
        0x80
    } else {
        0x88
    }
}

/// A handshake between INITIALIZE UPDATE and EXTERNAL AUTHENTICATE.
pub(crate) enum Handshake {
    /// SCP03.
    Scp03(CardHandshake),
    /// SCP02.
    Scp02(CardHandshake02),
}

impl Handshake {
    /// Checks EXTERNAL AUTHENTICATE and opens the session.
    pub(crate) fn external_authenticate(self, cmd: &Command) -> Result<Channel, Sw> {
        match self {
            Handshake::Scp03(h) => h.external_authenticate(cmd).map(Channel::Scp03),
            Handshake::Scp02(h) => h.external_authenticate(cmd).map(Channel::Scp02),
        }
    }
}

/// An open secure channel of either protocol.
// One per open session, never moved in bulk: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Channel {
    /// SCP03.
    Scp03(SecureSession),
    /// SCP02.
    Scp02(Scp02Session),
}

impl Channel {
    /// Checks and removes a command's protection; the status word to answer on failure.
    pub(crate) fn unwrap_command(&mut self, cmd: &Command) -> Result<Command, Sw> {
        match self {
            Channel::Scp03(s) => s
                .unwrap_command(cmd)
                .map_err(|e| SecureSession::failure_status(&e)),
            Channel::Scp02(s) => s
                .unwrap_command(cmd)
                .map_err(|_| Sw::SECURITY_STATUS_NOT_SATISFIED),
        }
    }

    /// Protects a response.
    pub(crate) fn wrap_response(&mut self, resp: &Response) -> Result<Response, Sw> {
        match self {
            Channel::Scp03(s) => s
                .wrap_response(resp)
                .map_err(|e| SecureSession::failure_status(&e)),
            Channel::Scp02(s) => s
                .wrap_response(resp)
                .map_err(|_| Sw::SECURITY_STATUS_NOT_SATISFIED),
        }
    }

    /// The SCP02 session DEK (PUT KEY encrypts under it); `None` in SCP03.
    pub(crate) fn scp02_dek(&self) -> Option<&Des3Key> {
        match self {
            Channel::Scp02(s) => Some(s.dek()),
            Channel::Scp03(_) => None,
        }
    }
}

/// Answers an SCP02 INITIALIZE UPDATE for `keys` (stored as 16-byte keys) with the sequence
/// counter `counter` (already incremented).
pub(crate) fn initialize_update(
    cmd: &Command,
    keys: &StaticKeys,
    kdd: [u8; 10],
    i: IParam02,
    counter: u16,
    sd_aid: &[u8],
    random: impl FnOnce(usize) -> Vec<u8>,
) -> Result<(Response, Handshake), Sw> {
    let keys = StaticKeys02::from_scp03(keys).map_err(|_| Sw::REFERENCED_DATA_NOT_FOUND)?;
    let ctx = CardKeyContext02 {
        keys: &keys,
        kdd,
        i,
        sequence_counter: counter,
        sd_aid,
    };
    let (resp, hs) = CardHandshake02::initialize_update(cmd, &ctx, || {
        let mut c = [0u8; 6];
        let r = random(6);
        c.copy_from_slice(r.get(..6).unwrap_or(&[0; 6]));
        c
    })?;
    Ok((resp, Handshake::Scp02(hs)))
}

/// Decrypts PUT KEY data of a 3DES key set: the new set (as 16-byte keys) and the answer
/// (`KVN ‖ KCVs`).
pub(crate) fn parse_put_key(dek: &Des3Key, data: &[u8]) -> Result<(StaticKeys, Vec<u8>), Sw> {
    let new = parse_put_key_data(dek, data).map_err(|_| Sw::INCORRECT_DATA)?;
    let answer = card_wire::scp02::putkey::put_key_answer(&new);
    let k = |d: &Des3Key| AesKey::new(d.as_bytes()).map_err(|_| Sw::INCORRECT_DATA);
    let keys = StaticKeys::new(new.kvn, k(new.enc())?, k(new.mac())?, k(new.dek())?)
        .map_err(|_| Sw::INCORRECT_DATA)?;
    Ok((keys, answer))
}
