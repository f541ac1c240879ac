//! The goals of the TSM's operations, built once for the server and its tests: a JPKI
//! credential in a provider's domain, a PIN reset, wallet updates, a provider's domain.

use crate::control::{CredentialBundle, WalletChange, WalletUpdate};
use crate::script::{Check, Goal};
use card_wire::gp::InstallSpec;
use card_wire::jpki;
use card_wire::tlv::tlv;

fn item(tag: u32, fid: u16, body: &[u8]) -> Vec<u8> {
    tlv(tag, &[&fid.to_be_bytes()[..], body].concat())
}

/// The JPKI applet loaded if absent, its instance installed (no install parameters: nothing
/// secret reaches the applet that way), and the credential written — the key and PIN still
/// sealed to the card and instance under `request_id` (`card_wire::content`), the
/// certificates in clear — with a key proof as the postcondition.
pub fn jpki_credential(
    instance: &[u8],
    request_id: &[u8],
    credential: &CredentialBundle,
) -> Vec<Goal> {
    // A key made on the SIM (the issuer's on-card mode) is already in its key file.
    let mut script = if credential.sealed_key.is_empty() {
        Vec::new()
    } else {
        item(
            jpki::ITEM_SEALED_KEY,
            jpki::EF_AUTH_KEY,
            &jpki::sealed_item_body(request_id, &credential.sealed_key),
        )
    };
    script.extend(item(
        jpki::ITEM_EF,
        jpki::EF_AUTH_CERT,
        &credential.certificate,
    ));
    script.extend(item(
        jpki::ITEM_EF,
        jpki::EF_AUTH_CA,
        &credential.ca_certificate,
    ));
    script.extend(item(
        jpki::ITEM_SEALED_PIN,
        jpki::EF_AUTH_PIN,
        &jpki::sealed_item_body(request_id, &credential.sealed_pin),
    ));
    let mut goals = jpki_applet(instance);
    goals.push(Goal::Personalize {
        instance: instance.to_vec(),
        script,
        check: Check::KeyProof {
            key_fid: jpki::EF_AUTH_KEY,
            certificate: credential.certificate.clone(),
        },
    });
    goals
}

/// The script that asks the JPKI applet to generate the phone's key on the SIM against the
/// issuer's `challenge` (`card_wire::keygen`; the answer carries the key and its proofs).
pub fn jpki_generate_script(challenge: &[u8]) -> Vec<u8> {
    item(jpki::ITEM_GENERATE_PROVEN, jpki::EF_AUTH_KEY, challenge)
}

/// The on-card mode's first session: the JPKI applet loaded if absent, its instance
/// installed, and the phone's key generated in it against the issuer's `challenge` (the
/// answer kept for the issuer, [`Check::Generated`]).
pub fn jpki_generate(instance: &[u8], challenge: &[u8]) -> Vec<Goal> {
    let mut goals = jpki_applet(instance);
    goals.push(Goal::Personalize {
        instance: instance.to_vec(),
        script: jpki_generate_script(challenge),
        check: Check::Generated,
    });
    goals
}

/// The JPKI applet loaded if absent and its instance installed (no install parameters), in
/// the domain the session runs on: what the MNO-TSM puts into a provider's new domain.
pub fn jpki_applet(instance: &[u8]) -> Vec<Goal> {
    vec![
        Goal::LoadFile {
            package: jpki::JPKI_PACKAGE.to_vec(),
            modules: vec![(jpki::JPKI_AID.to_vec(), "jpki.ap".into())],
        },
        Goal::Instance(InstallSpec {
            package: jpki::JPKI_PACKAGE.to_vec(),
            module: jpki::JPKI_AID.to_vec(),
            instance: instance.to_vec(),
            privileges: vec![0x00],
            params: Vec::new(),
            selectable: true,
        }),
    ]
}

/// A new PIN (sealed to the card and instance under `request_id`), and the key proof again.
pub fn pin_reset(
    instance: &[u8],
    request_id: &[u8],
    sealed_pin: &[u8],
    certificate: &[u8],
) -> Vec<Goal> {
    vec![Goal::Personalize {
        instance: instance.to_vec(),
        script: item(
            jpki::ITEM_SEALED_PIN,
            jpki::EF_AUTH_PIN,
            &jpki::sealed_item_body(request_id, sealed_pin),
        ),
        check: Check::KeyProof {
            key_fid: jpki::EF_AUTH_KEY,
            certificate: certificate.to_vec(),
        },
    }]
}

/// The wallet applet loaded and installed if absent, and the updates applied (once each).
pub fn wallet(instance: &[u8], updates: &[WalletUpdate]) -> Vec<Goal> {
    use card_wire::wallet::{self as w, kind, update_item};
    let mut script = Vec::new();
    for u in updates {
        script.extend(match &u.change {
            WalletChange::SetMemberId(m) => update_item(&u.id, kind::SET_MEMBER, m.as_bytes()),
            WalletChange::AddTicket(t) => update_item(&u.id, kind::ADD_TICKET, t.as_bytes()),
            WalletChange::RemoveTicket(t) => update_item(&u.id, kind::REMOVE_TICKET, t.as_bytes()),
            WalletChange::Points(d) => update_item(&u.id, kind::POINTS, &d.to_be_bytes()),
        });
    }
    vec![
        Goal::LoadFile {
            package: w::WALLET_PACKAGE.to_vec(),
            modules: vec![(w::WALLET_MODULE.to_vec(), w::WALLET_CLASS.into())],
        },
        Goal::Instance(InstallSpec {
            package: w::WALLET_PACKAGE.to_vec(),
            module: w::WALLET_MODULE.to_vec(),
            instance: instance.to_vec(),
            selectable: true,
            ..Default::default()
        }),
        Goal::Personalize {
            instance: instance.to_vec(),
            script,
            check: Check::Wallet {
                updates: updates.len(),
            },
        },
    ]
}

/// GlobalPlatform's security-domain package and module.
pub const SD_PACKAGE: [u8; 7] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50];
/// The security-domain module.
pub const SD_MODULE: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50, 0x41];

/// A provider's domain installed (through the issuer domain).
pub fn provider_domain(sd_aid: &[u8], privileges: &[u8]) -> Goal {
    Goal::Instance(InstallSpec {
        package: SD_PACKAGE.to_vec(),
        module: SD_MODULE.to_vec(),
        instance: sd_aid.to_vec(),
        privileges: privileges.to_vec(),
        params: Vec::new(),
        selectable: true,
    })
}
