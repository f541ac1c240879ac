//! Sealing a credential to one SIM and one applet instance (`card_wire::content`): the SIM's
//! key agreement certificate is checked against the card manufacturer's CA first
//! ([`SealTarget::verify`]), so whoever hands the certificate over (an SP-TSM, a relay) cannot
//! substitute a key of its own. The JPKI side — the JPKI issuer (`kagi jpki-issuer`) or a
//! provider playing it — seals; only the card opens.

use crate::control::CredentialBundle;
use crate::ids::IdempotencyKey;
use card_wire::content::{Binding, Role};
use card_wire::jpki;

/// A SIM content can be sealed to: its ICCID and the key agreement key and serial of a
/// certificate that checked against the card manufacturer's CA.
#[derive(Debug, Clone)]
pub struct SealTarget {
    iccid: String,
    public_key: p256::PublicKey,
    serial: Vec<u8>,
}

impl SealTarget {
    /// Checks `card_certificate` (DER) against the manufacturer CA `manufacturer_ca` for SIM
    /// `iccid`: anything else — a key the TSM or relay made up, another SIM's certificate —
    /// is refused, and nothing is sealed.
    pub fn verify(
        manufacturer_ca: &x509_cert::Certificate,
        card_certificate: &[u8],
        iccid: &str,
        now: std::time::SystemTime,
    ) -> Result<SealTarget, String> {
        let c = kagi_certs::card_key::check_card_certificate(
            manufacturer_ca,
            card_certificate,
            iccid,
            now,
        )
        .map_err(|e| e.to_string())?;
        let public_key =
            card_wire::content::card_public_key(&c.public_key).map_err(|e| e.to_string())?;
        Ok(SealTarget {
            iccid: iccid.to_string(),
            public_key,
            serial: c.serial,
        })
    }

    /// The ICCID.
    pub fn iccid(&self) -> &str {
        &self.iccid
    }

    /// The SIM's key agreement key, as its manufacturer certified it.
    pub fn public_key(&self) -> &p256::PublicKey {
        &self.public_key
    }

    /// The serial number of the SIM's certificate (big-endian bytes, as in the DER).
    pub fn serial(&self) -> &[u8] {
        &self.serial
    }

    /// Seals `value` for applet `instance` on this SIM, as `role`, under `request_id` (the
    /// request's idempotency key).
    pub fn seal(
        &self,
        instance: &[u8],
        role: Role,
        request_id: &IdempotencyKey,
        value: &[u8],
    ) -> Result<Vec<u8>, String> {
        let binding = Binding {
            iccid: &self.iccid,
            card_serial: &self.serial,
            instance,
            role,
            request_id: &request_id.0,
        };
        card_wire::content::seal(&self.public_key, &binding, value).map_err(|e| e.to_string())
    }
}

/// A PIN sealed to the SIM `to` for the applet `instance`'s PIN file (4 digits, as the JPKI
/// authentication PIN).
pub fn seal_pin(
    to: &SealTarget,
    instance: &[u8],
    request_id: &IdempotencyKey,
    pin: &[u8],
) -> Result<Vec<u8>, String> {
    if !jpki::PinFormat::FourDigits.accepts(pin) {
        return Err("the authentication PIN is four digits".into());
    }
    to.seal(instance, Role::PinEf(jpki::EF_AUTH_PIN), request_id, pin)
}

/// A credential as the JPKI side hands it over: `key` (the bytes the applet stores: PKCS#1
/// DER for RSA, the 32-byte scalar for P-256) and `pin` sealed to the SIM `to` and the applet
/// `instance` under `request_id` (roles: the key and PIN files), certificates in clear.
/// `my_number_sign_serial` is the serial of the signature certificate of the user's verified
/// application (`kagi_certs::application::Verified::sign_serial`), never a value typed in.
#[allow(clippy::too_many_arguments)]
pub fn bundle(
    to: &SealTarget,
    instance: &[u8],
    request_id: &IdempotencyKey,
    key: &[u8],
    certificate: Vec<u8>,
    ca_certificate: Vec<u8>,
    pin: &[u8],
    my_number_sign_serial: &str,
) -> Result<CredentialBundle, String> {
    Ok(CredentialBundle {
        sealed_key: to.seal(instance, Role::KeyEf(jpki::EF_AUTH_KEY), request_id, key)?,
        sealed_pin: seal_pin(to, instance, request_id, pin)?,
        certificate,
        ca_certificate,
        my_number_sign_serial: my_number_sign_serial.into(),
    })
}
