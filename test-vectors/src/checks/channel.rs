//! `scp03-channel`: static keys, both challenges, the EXTERNAL AUTHENTICATE as sent and the
//! commands after it, for sources that do not give the INITIALIZE UPDATE bytes (KDD, KVN, `i`).

use super::{Check, Step, eq, key, run_steps};
use crate::schema::Channel;
use card_wire::scp03::crypto::{CmacKey, DerivationConstant, cmac, scp03_kdf};
use card_wire::scp03::keys::{SessionKeys, StaticKeys};
use card_wire::scp03::{Mode, SecureSession, SecurityLevel};

/// Derives the session keys (and checks `card_cryptogram` when given), rebuilds EXTERNAL
/// AUTHENTICATE (`84 82 level 00 2S ‖ host cryptogram ‖ C-MAC`) and compares it with the one
/// sent, then runs the steps from the chaining value it leaves (counter 0) on both ends.
pub(crate) fn check(v: &Channel) -> Check {
    check_inner(v).map_err(|e| format!("{}: {e}", v.name))
}

fn check_inner(v: &Channel) -> Check {
    let mode = if v.s16 { Mode::S16 } else { Mode::S8 };
    let s = mode.len();
    let level = SecurityLevel::new(v.level.0).map_err(|e| e.to_string())?;
    if v.host_challenge.0.len() != s || v.card_challenge.0.len() != s {
        return Err(format!("host and card challenges must be {s} bytes"));
    }
    // The DEK plays no part in a session; the MAC key stands in for it.
    let keys = StaticKeys::new(
        0,
        key("enc", &v.enc)?,
        key("mac", &v.mac)?,
        key("mac", &v.mac)?,
    )
    .map_err(|e| e.to_string())?;
    let mut ctx = v.host_challenge.0.clone();
    ctx.extend_from_slice(&v.card_challenge.0);
    let sk = SessionKeys::derive(&keys, &ctx);
    let mut k = CmacKey::new(&sk.s_mac);
    if let Some(cg) = &v.card_cryptogram {
        let card = scp03_kdf(&mut k, DerivationConstant::CardCryptogram, &ctx, s);
        eq("card cryptogram", &card, &cg.0)?;
    }
    let host_cg = scp03_kdf(&mut k, DerivationConstant::HostCryptogram, &ctx, s);
    let mut ea = vec![0x84, 0x82, level.byte(), 0x00, (2 * s) as u8];
    ea.extend_from_slice(&host_cg);
    let mut mac_input = vec![0u8; 16];
    mac_input.extend_from_slice(&ea);
    let chaining = cmac(&sk.s_mac, &mac_input);
    ea.extend_from_slice(&chaining[..s]);
    eq("EXTERNAL AUTHENTICATE", &ea, &v.external_authenticate.0)?;
    let mut host = SecureSession::from_keys(&sk, level, mode, chaining, 0);
    let mut card = SecureSession::from_keys(&sk, level, mode, chaining, 0);
    let steps = v.steps.iter().map(|c| Step {
        plain: &c.plain,
        wrapped: &c.wrapped,
        response: match (&c.response_plain, &c.response_wrapped, &c.sw) {
            (Some(p), Some(w), Some(sw)) => Some((p, w, sw)),
            _ => None,
        },
    });
    run_steps(&mut host, &mut card, steps)
}
