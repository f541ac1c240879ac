//! The card's key agreement key, as GlobalPlatform's Controlling Authority Security Domain
//! keeps one (Card Specification Amendment A, confidential card content management; SCP11's
//! `SK.SD.ECKA` / `CERT.SD.ECKA`): a P-256 key pair generated **on the card** at
//! provisioning — the private half never leaves it — and the certificate the card
//! manufacturer's CA issued for the public half.
//!
//! Applets never see the private key. The runtime opens a value sealed to this card
//! ([`card_wire::content`]) for the calling applet only, binding it to the card's ICCID and
//! certificate serial and to the caller's **own** instance AID, which comes from the
//! applet's memory namespace ([`AppletStore`]) — an applet cannot name another instance.

use crate::applet_store::AppletStore;
use crate::store::{Store, StoreError};
use card_wire::content::{self, Binding, ContentError, Role};
use card_wire::keygen;
use zeroize::{Zeroize, Zeroizing};

/// Where the card keeps its private key agreement key (the 32-byte scalar).
pub const KEY: &str = "card/ecka/key";
/// Where the card keeps the public half (uncompressed SEC1), so that opening a sealed value
/// does not compute it again (cards provisioned before it was kept compute it).
pub const PUBLIC: &str = "card/ecka/public";
/// Where the card keeps its certificate (DER).
pub const CERT: &str = "card/ecka/cert";
/// Where the card keeps its certificate's serial number (big-endian bytes).
pub const SERIAL: &str = "card/ecka/serial";

/// Why the card could not open a sealed value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The card was provisioned without a key agreement key or certificate.
    #[error(
        "this card has no key agreement key and certificate: provision it with a manufacturer CA"
    )]
    NoCardKey,
    /// The card has no ICCID (not a UICC).
    #[error("this card has no ICCID to bind sealed content to")]
    NoIccid,
    /// The value does not open.
    #[error(transparent)]
    Content(#[from] ContentError),
}

/// Generates the card's key agreement key pair on the card (replacing any earlier one, and
/// forgetting its certificate); returns the public key, uncompressed SEC1 (65 bytes).
pub fn generate(store: &mut Store) -> Result<Vec<u8>, StoreError> {
    use p256::elliptic_curve::Generate;
    use p256::elliptic_curve::sec1::ToSec1Point;
    let key = p256::SecretKey::generate();
    let mut scalar = key.to_bytes().to_vec();
    let public = key.public_key().to_sec1_point(false).as_bytes().to_vec();
    store.begin();
    let r = store
        .put(KEY, &scalar)
        .and_then(|_| store.put(PUBLIC, &public))
        .and_then(|_| store.remove(CERT))
        .and_then(|_| store.remove(SERIAL));
    scalar.zeroize();
    match r {
        Ok(()) => store.commit()?,
        Err(e) => {
            store.abort();
            return Err(e);
        }
    }
    Ok(public)
}

/// Stores the manufacturer's certificate for the card's key and its serial number.
pub fn set_certificate(store: &mut Store, der: &[u8], serial: &[u8]) -> Result<(), StoreError> {
    store.begin();
    let r = store.put(CERT, der).and_then(|_| store.put(SERIAL, serial));
    match r {
        Ok(()) => store.commit(),
        Err(e) => {
            store.abort();
            Err(e)
        }
    }
}

/// The card's certificate, if it has one.
pub fn certificate(store: &Store) -> Option<&[u8]> {
    store.get(CERT)
}

/// Opens `sealed` for the instance whose namespace is `applet`, with `role` and
/// `request_id` as the item names them.
pub(crate) fn open_for(
    applet: &AppletStore<'_>,
    role: Role,
    request_id: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let store = applet.card();
    let (Some(scalar), Some(serial)) = (store.get(KEY), store.get(SERIAL)) else {
        return Err(OpenError::NoCardKey);
    };
    let key = p256::SecretKey::from_slice(scalar).map_err(|_| OpenError::NoCardKey)?;
    let public = match store.get(PUBLIC).map(p256::PublicKey::from_sec1_bytes) {
        Some(Ok(p)) => p,
        _ => key.public_key(),
    };
    let iccid = store
        .get(crate::uicc::ICCID_KEY)
        .and_then(|ef| card_wire::uicc::Iccid::from_ef(ef).ok())
        .ok_or(OpenError::NoIccid)?;
    let instance = applet.instance();
    let binding = Binding {
        iccid: iccid.as_str(),
        card_serial: serial,
        instance: &instance,
        role,
        request_id,
    };
    Ok(content::open_as(
        &key,
        &public,
        &binding.info(),
        &binding.aad(),
        sealed,
    )?)
}

/// The card's tag over a key the instance `applet` generated ([`card_wire::keygen`]).
fn tag_for(
    applet: &AppletStore<'_>,
    key_fid: u16,
    challenge: &[u8],
    point: &[u8],
    pop: &[u8],
) -> Result<[u8; keygen::TAG_LEN], OpenError> {
    let store = applet.card();
    let (Some(scalar), Some(serial)) = (store.get(KEY), store.get(SERIAL)) else {
        return Err(OpenError::NoCardKey);
    };
    let key = p256::SecretKey::from_slice(scalar).map_err(|_| OpenError::NoCardKey)?;
    let iccid = store
        .get(crate::uicc::ICCID_KEY)
        .and_then(|ef| card_wire::uicc::Iccid::from_ef(ef).ok())
        .ok_or(OpenError::NoIccid)?;
    let instance = applet.instance();
    let id = keygen::Identity {
        iccid: iccid.as_str(),
        card_serial: serial,
        instance: &instance,
        key_fid,
    };
    keygen::card_tag(&key, &id, challenge, point, pop)
        .map_err(|_| OpenError::Content(ContentError::DoesNotOpen))
}

impl AppletStore<'_> {
    /// The card's word that this applet instance made the key `point` in `key_fid` for the
    /// issuer's `challenge` ([`card_wire::keygen`]): the runtime's service, under the card's
    /// certified key agreement key, for the caller's own instance.
    pub fn key_generation_tag(
        &self,
        key_fid: u16,
        challenge: &[u8],
        point: &[u8],
        pop: &[u8],
    ) -> Result<[u8; keygen::TAG_LEN], OpenError> {
        tag_for(self, key_fid, challenge, point, pop)
    }

    /// Opens a value sealed to this card for this applet instance (the runtime's service:
    /// the card key stays out of the applet's reach, and the instance is the caller's own).
    pub fn open_sealed(
        &self,
        role: Role,
        request_id: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        open_for(self, role, request_id, sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iccid() -> card_wire::uicc::Iccid {
        card_wire::uicc::Iccid::with_check_digit("898110000000000001").unwrap()
    }

    fn sealed_to(store: &Store, instance: &[u8]) -> Vec<u8> {
        let public = p256::PublicKey::from_sec1_bytes(store.get(PUBLIC).unwrap()).unwrap();
        let iccid = iccid();
        let binding = Binding {
            iccid: iccid.as_str(),
            card_serial: &[0x42],
            instance,
            role: Role::PinEf(0x18),
            request_id: &[7; 16],
        };
        content::seal(&public, &binding, b"2468").unwrap()
    }

    fn card() -> Store {
        let mut store = Store::new(1 << 20);
        generate(&mut store).unwrap();
        set_certificate(&mut store, &[0x30, 0x00], &[0x42]).unwrap();
        store.put(crate::uicc::ICCID_KEY, &iccid().to_ef()).unwrap();
        store
    }

    #[test]
    fn the_card_opens_with_its_kept_public_key_or_without_it() {
        let instance_hex = "D392F000260100000001";
        let instance = [0xD3, 0x92, 0xF0, 0x00, 0x26, 0x01, 0x00, 0x00, 0x00, 0x01];
        let mut store = card();
        // The public half kept beside the key is the key's own.
        let scalar = p256::SecretKey::from_slice(store.get(KEY).unwrap()).unwrap();
        assert_eq!(
            p256::PublicKey::from_sec1_bytes(store.get(PUBLIC).unwrap()).unwrap(),
            scalar.public_key()
        );
        let sealed = sealed_to(&store, &instance);
        let open = |store: &mut Store| {
            open_for(
                &AppletStore::new(store, instance_hex, false),
                Role::PinEf(0x18),
                &[7; 16],
                &sealed,
            )
            .map(|v| v.to_vec())
        };
        assert_eq!(open(&mut store).unwrap(), b"2468");
        // A card provisioned before the public half was kept computes it.
        store.remove(PUBLIC).unwrap();
        assert_eq!(open(&mut store).unwrap(), b"2468");
        // A kept public half that is not the card's opens nothing (never another value).
        let other = p256::SecretKey::from_slice(&[9; 32]).unwrap().public_key();
        use p256::elliptic_curve::sec1::ToSec1Point;
        store
            .put(PUBLIC, other.to_sec1_point(false).as_bytes())
            .unwrap();
        assert!(matches!(
            open(&mut store),
            Err(OpenError::Content(ContentError::DoesNotOpen))
        ));
    }
}
