//! The checks of each kind, host side and card side, with one-bit tamper checks.

mod channel;

use crate::schema::*;
use card_wire::apdu::{Command, Response};
use card_wire::scp03::crypto::{AesKey, CmacKey, cmac, kdf_counter_cmac};
use card_wire::scp03::handshake::{CardHandshake, CardKeyContext, HostHandshake, HostOptions};
use card_wire::scp03::keys::{Diversification, KeyPurpose, SessionKeys, StaticKeys, kdf3};
use card_wire::scp03::putkey::{dek_decrypt, dek_encrypt};
use card_wire::scp03::{IParam, Mode, SecureSession, SecurityLevel};
use card_wire::sw::StatusWord;

pub(crate) type Check = Result<(), String>;

pub(crate) fn eq(what: &str, got: &[u8], want: &[u8]) -> Check {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{what}: got {} want {}",
            hex::encode(got),
            hex::encode(want)
        ))
    }
}

pub(crate) fn key(what: &str, h: &Hex) -> Result<AesKey, String> {
    AesKey::new(&h.0).map_err(|e| format!("{what}: {e}"))
}

pub(crate) fn flip(v: &[u8], index: usize) -> Vec<u8> {
    let mut v = v.to_vec();
    if let Some(b) = v.get_mut(index) {
        *b ^= 0x01;
    }
    v
}

pub(crate) fn run(file: &VectorFile) -> Vec<Check> {
    match file {
        VectorFile::Cmac(v) => v.iter().map(check_cmac).collect(),
        VectorFile::KdfCtrCmac(v) => v.iter().map(check_kdf).collect(),
        VectorFile::Kcv(v) => v.iter().map(check_kcv).collect(),
        VectorFile::Kdf3(v) => v.iter().map(check_kdf3).collect(),
        VectorFile::SessionKeys(v) => v.iter().map(check_session_keys).collect(),
        VectorFile::DekEncrypt(v) => v.iter().map(check_dek).collect(),
        VectorFile::Wrap(v) => v.iter().map(check_wrap).collect(),
        VectorFile::Session(v) => v.iter().map(check_session).collect(),
        VectorFile::Channel(v) => v.iter().map(channel::check).collect(),
    }
}

fn check_cmac(v: &Cmac) -> Check {
    let k = key("key", &v.key)?;
    let mac = cmac(&k, &v.message.0);
    eq("cmac", &mac, &v.mac.0)?;
    // Tamper: flip a message bit, or a key bit when the message is empty.
    let tampered = if v.message.0.is_empty() {
        cmac(&key("key", &Hex(flip(&v.key.0, 0)))?, &v.message.0)
    } else {
        cmac(&k, &flip(&v.message.0, 0))
    };
    if tampered == mac {
        return Err("cmac unchanged by a flipped message or key bit".into());
    }
    Ok(())
}

fn check_kdf(v: &KdfCtrCmac) -> Check {
    if !v.output_bits.is_multiple_of(8) {
        return Err(format!("output_bits {} is not whole bytes", v.output_bits));
    }
    let mut k = CmacKey::new(&key("key", &v.key)?);
    let out = kdf_counter_cmac(
        &mut k,
        &v.before_counter.0,
        &v.after_counter.0,
        v.output_bits / 8,
    );
    eq("kdf output", &out, &v.output.0)
}

fn check_kcv(v: &Kcv) -> Check {
    eq("kcv", &key("key", &v.key)?.kcv(), &v.kcv.0)
}

fn check_kdf3(v: &Kdf3) -> Check {
    let master = key("master", &v.master)?;
    let kdd: [u8; 10] = v
        .kdd
        .0
        .as_slice()
        .try_into()
        .map_err(|_| "kdd must be 10 bytes".to_string())?;
    for (purpose, want, kcv) in [
        (KeyPurpose::Enc, &v.enc, &v.kcv_enc),
        (KeyPurpose::Mac, &v.mac, &v.kcv_mac),
        (KeyPurpose::Dek, &v.dek, &v.kcv_dek),
    ] {
        let derived = kdf3(&master, purpose, &kdd);
        if let Some(w) = want {
            eq(&format!("{purpose:?} key"), derived.as_bytes(), &w.0)?;
        }
        if let Some(k) = kcv {
            eq(&format!("{purpose:?} kcv"), &derived.kcv(), &k.0)?;
        }
    }
    Ok(())
}

fn check_session_keys(v: &SessionKeysVector) -> Check {
    let keys = StaticKeys::new(
        0,
        key("enc", &v.enc)?,
        key("mac", &v.mac)?,
        key("mac", &v.mac)?,
    )
    .map_err(|e| e.to_string())?;
    let mut ctx = v.host_challenge.0.clone();
    ctx.extend_from_slice(&v.card_challenge.0);
    let s = SessionKeys::derive(&keys, &ctx);
    eq("s_enc", s.s_enc.as_bytes(), &v.s_enc.0)?;
    eq("s_mac", s.s_mac.as_bytes(), &v.s_mac.0)?;
    eq("s_rmac", s.s_rmac.as_bytes(), &v.s_rmac.0)
}

fn check_dek(v: &DekEncrypt) -> Check {
    let dek = key("dek", &v.dek)?;
    let host = dek_encrypt(&dek, &v.plaintext.0).map_err(|e| e.to_string())?;
    eq("host ciphertext", &host, &v.ciphertext_with_length_prefix.0)?;
    let ct = v
        .ciphertext_with_length_prefix
        .0
        .get(1..)
        .unwrap_or_default();
    let card = dek_decrypt(&dek, ct).map_err(|e| e.to_string())?;
    eq("card plaintext", &card, &v.plaintext.0)?;
    if dek_decrypt(&dek, &flip(ct, 0)).map_err(|e| e.to_string())? == v.plaintext.0 {
        return Err("decryption unchanged by a flipped ciphertext bit".into());
    }
    Ok(())
}

fn parse_cmd(what: &str, bytes: &[u8]) -> Result<Command, String> {
    Command::parse(bytes).map_err(|e| format!("{what}: {e}"))
}

pub(crate) fn sw_of(h: &Hex) -> Result<StatusWord, String> {
    match h.0.as_slice() {
        [a, b] => Ok(StatusWord::from_bytes(*a, *b)),
        _ => Err("sw must be 2 bytes".into()),
    }
}

fn check_wrap(v: &Wrap) -> Check {
    let level = SecurityLevel::new(v.level.0).map_err(|e| e.to_string())?;
    let mode = if v.s16 { Mode::S16 } else { Mode::S8 };
    let chaining: [u8; 16] = v
        .chaining_value
        .0
        .as_slice()
        .try_into()
        .map_err(|_| "chaining_value must be 16 bytes".to_string())?;
    let keys = SessionKeys {
        s_enc: key("s_enc", &v.s_enc)?,
        s_mac: key("s_mac", &v.s_mac)?,
        // Not used below R-MAC levels; scp03-wrap vectors carry no S-RMAC.
        s_rmac: key("s_mac", &v.s_mac)?,
    };
    let counter = v.counter_start as u128;
    let mut host = SecureSession::from_keys(&keys, level, mode, chaining, counter);
    let mut card = SecureSession::from_keys(&keys, level, mode, chaining, counter);
    let steps = v.steps.iter().map(|s| Step {
        plain: &s.plain,
        wrapped: &s.wrapped,
        response: None,
    });
    run_steps(&mut host, &mut card, steps)
}

/// One command of a channel already past EXTERNAL AUTHENTICATE, with its optional response
/// (`response_plain`, `response_wrapped`, `sw`).
pub(crate) struct Step<'a> {
    pub(crate) plain: &'a Hex,
    pub(crate) wrapped: &'a Hex,
    pub(crate) response: Option<(&'a Hex, &'a Hex, &'a Hex)>,
}

/// Host wraps each `plain` → exactly `wrapped`; the card (own state) unwraps `wrapped` → exactly
/// `plain` and refuses it with a flipped MAC bit; with a response the card wraps
/// `response_plain` → exactly `response_wrapped` and the host unwraps it back, refusing it with
/// a flipped bit under R-MAC.
pub(crate) fn run_steps<'a>(
    host: &mut SecureSession,
    card: &mut SecureSession,
    steps: impl Iterator<Item = Step<'a>>,
) -> Check {
    for (n, step) in steps.enumerate() {
        let plain = parse_cmd("plain", &step.plain.0)?;
        let wrapped = host
            .wrap_command(&plain)
            .map_err(|e| format!("step {n} host: {e}"))?;
        eq(
            &format!("step {n} host wrap"),
            &wrapped.to_bytes(),
            &step.wrapped.0,
        )?;
        let received = parse_cmd("wrapped", &step.wrapped.0)?;
        let mut tampered_card = card.clone();
        let unwrapped = card
            .unwrap_command(&received)
            .map_err(|e| format!("step {n} card: {e}"))?;
        eq(
            &format!("step {n} card unwrap"),
            &unwrapped.to_bytes(),
            &step.plain.0,
        )?;
        tamper_command(&mut tampered_card, &step.wrapped.0, n)?;
        if let Some((rp, rw, sw)) = step.response {
            let sw = sw_of(sw)?;
            let sent = card
                .wrap_response(&Response::new(rp.0.clone(), sw))
                .map_err(|e| format!("step {n} card response: {e}"))?;
            eq(&format!("step {n} card response wrap"), &sent.data, &rw.0)?;
            let resp = Response::new(rw.0.clone(), sw);
            let mut tampered_host = host.clone();
            let got = host
                .unwrap_response(&resp)
                .map_err(|e| format!("step {n} host response: {e}"))?;
            eq(&format!("step {n} host response unwrap"), &got.data, &rp.0)?;
            if host.level().r_mac() {
                let bad = Response::new(flip(&rw.0, 0), sw);
                if tampered_host.unwrap_response(&bad).is_ok() {
                    return Err(format!("step {n}: host accepted a flipped response bit"));
                }
            }
        }
    }
    Ok(())
}

/// A wrapped command with its last byte before Le (a MAC byte) flipped must be rejected.
fn tamper_command(card: &mut SecureSession, wrapped: &[u8], n: usize) -> Check {
    let cmd = Command::parse(wrapped)
        .map_err(|e| format!("step {n}: cannot tamper with an unparsable wrapped command: {e}"))?;
    if cmd.data().is_empty() {
        return Err(format!(
            "step {n}: wrapped command has no data, so no C-MAC to tamper with"
        ));
    }
    let mut data = cmd.data().to_vec();
    let last = data.len() - 1;
    data[last] ^= 0x01;
    let bad = cmd.with_data(data).map_err(|e| e.to_string())?;
    if card.unwrap_command(&bad).is_ok() {
        return Err(format!(
            "step {n}: card accepted a command with a flipped MAC bit"
        ));
    }
    Ok(())
}

fn check_session(v: &Session) -> Check {
    check_session_host(v).map_err(|e| format!("{} host: {e}", v.name))?;
    check_session_card(v).map_err(|e| format!("{} card: {e}", v.name))
}

fn vector_keys(v: &Session) -> Result<StaticKeys, String> {
    StaticKeys::new(
        v.keys.kvn.0,
        key("enc", &v.keys.enc)?,
        key("mac", &v.keys.mac)?,
        key("dek", &v.keys.dek)?,
    )
    .map_err(|e| e.to_string())
}

fn options(v: &Session, diversification: Diversification) -> Result<HostOptions, String> {
    Ok(HostOptions {
        kvn: *v
            .initialize_update
            .command
            .0
            .get(2)
            .ok_or("short IU command")?,
        level: SecurityLevel::new(v.security_level.0).map_err(|e| e.to_string())?,
        mode: if v.s16 { Mode::S16 } else { Mode::S8 },
        diversification,
        channel: 0,
    })
}

fn check_session_host(v: &Session) -> Check {
    let card_keys = vector_keys(v)?;
    // (3) With a master key the host derives the card's keys itself.
    let (host_keys, diversification) = match (&v.keys.master, v.keys.diversification.as_deref()) {
        (Some(m), Some("kdf3")) => {
            let master = key("master", m)?;
            (
                StaticKeys::single(v.keys.kvn.0, master),
                Diversification::Kdf3,
            )
        }
        (Some(_), Some(other)) => return Err(format!("unknown diversification '{other}'")),
        (None, None) => (card_keys.clone(), Diversification::None),
        _ => return Err("keys.master and keys.diversification go together".into()),
    };
    let iu_resp = Response::new(
        v.initialize_update.response.0.clone(),
        sw_of(&v.initialize_update.sw)?,
    );
    if let Some(kdd) = v.initialize_update.response.0.get(..10) {
        let kdd: [u8; 10] = kdd.try_into().map_err(|_| "kdd")?;
        if host_keys.diversify(diversification, &kdd) != card_keys {
            return Err("diversified keys differ from keys.enc/mac/dek".into());
        }
    }
    let opts = options(v, diversification)?;
    // (1) INITIALIZE UPDATE.
    let hs = HostHandshake::new(host_keys.clone(), opts.clone(), v.host_challenge.0.clone())
        .map_err(|e| e.to_string())?;
    eq(
        "INITIALIZE UPDATE",
        &hs.initialize_update()
            .map_err(|e| e.to_string())?
            .to_bytes(),
        &v.initialize_update.command.0,
    )?;
    // Tamper: a flipped card-cryptogram bit must stop the host before EXTERNAL AUTHENTICATE.
    let s = opts.mode.len();
    let mut bad = iu_resp.clone();
    bad.data = flip(&bad.data, 13 + s);
    let hs_bad = HostHandshake::new(host_keys.clone(), opts.clone(), v.host_challenge.0.clone())
        .map_err(|e| e.to_string())?;
    if hs_bad
        .complete(&bad, v.sd_aid.as_ref().map(|a| a.0.as_slice()))
        .is_ok()
    {
        return Err("accepted a flipped card cryptogram".into());
    }
    // (2), (4), (5): parse, verify challenge and cryptogram, compute EXTERNAL AUTHENTICATE.
    let (ea, mut session, info) = hs
        .complete(&iu_resp, v.sd_aid.as_ref().map(|a| a.0.as_slice()))
        .map_err(|e| e.to_string())?;
    let iu = &info.init_update;
    if iu.kvn != v.keys.kvn.0 || iu.scp != 3 || iu.i.0 != v.i.0 {
        return Err(format!(
            "IU response fields: kvn {:02x} scp {:02x} i {:02x}",
            iu.kvn, iu.scp, iu.i.0
        ));
    }
    eq(
        "sequence counter",
        &iu.sequence_counter.map(|s| s.to_vec()).unwrap_or_default(),
        &v.sequence_counter.0,
    )?;
    eq(
        "card challenge",
        &iu.card_challenge,
        &v.expect.card_challenge.0,
    )?;
    eq(
        "card cryptogram",
        &iu.card_cryptogram,
        &v.expect.card_cryptogram.0,
    )?;
    if v.sd_aid.is_some() && !info.challenge_verified {
        return Err("pseudo-random challenge not verified".into());
    }
    let mut ctx = v.host_challenge.0.clone();
    ctx.extend_from_slice(&iu.card_challenge);
    let sk = SessionKeys::derive(&card_keys, &ctx);
    eq("s_enc", sk.s_enc.as_bytes(), &v.expect.s_enc.0)?;
    eq("s_mac", sk.s_mac.as_bytes(), &v.expect.s_mac.0)?;
    eq("s_rmac", sk.s_rmac.as_bytes(), &v.expect.s_rmac.0)?;
    eq(
        "host cryptogram",
        ea.data().get(..s).unwrap_or_default(),
        &v.expect.host_cryptogram.0,
    )?;
    eq(
        "EXTERNAL AUTHENTICATE",
        &ea.to_bytes(),
        &v.external_authenticate.command.0,
    )?;
    // (6) Commands and responses.
    for (n, c) in v.commands.iter().enumerate() {
        let plain = parse_cmd("plain", &c.plain.0)?;
        let wrapped = session
            .wrap_command(&plain)
            .map_err(|e| format!("command {n}: {e}"))?;
        eq(
            &format!("command {n} wrap"),
            &wrapped.to_bytes(),
            &c.wrapped.0,
        )?;
        if let (Some(rp), Some(rw), Some(sw)) = (&c.response_plain, &c.response_wrapped, &c.sw) {
            let sw = sw_of(sw)?;
            let resp = Response::new(rw.0.clone(), sw);
            let mut tampered = session.clone();
            let got = session
                .unwrap_response(&resp)
                .map_err(|e| format!("response {n}: {e}"))?;
            eq(&format!("response {n} unwrap"), &got.data, &rp.0)?;
            if session.level().r_mac() && !rw.0.is_empty() {
                let bad = Response::new(flip(&rw.0, 0), sw);
                if tampered.unwrap_response(&bad).is_ok() {
                    return Err(format!("response {n}: accepted a flipped response bit"));
                }
            }
        }
    }
    Ok(())
}

fn check_session_card(v: &Session) -> Check {
    let keys = vector_keys(v)?;
    let iu_cmd = parse_cmd("INITIALIZE UPDATE", &v.initialize_update.command.0)?;
    let seq = v
        .sequence_counter
        .0
        .iter()
        .fold(0u32, |a, b| (a << 8) | *b as u32);
    let kdd: [u8; 10] = v
        .initialize_update
        .response
        .0
        .get(..10)
        .and_then(|k| k.try_into().ok())
        .ok_or("IU response shorter than its KDD")?;
    let ctx = CardKeyContext {
        keys: &keys,
        kdd,
        i: IParam(v.i.0),
        sequence_counter: seq,
        sd_aid: v.sd_aid.as_ref().map(|a| a.0.as_slice()),
    };
    let given = v.expect.card_challenge.0.clone();
    let (resp, hs) = CardHandshake::initialize_update(&iu_cmd, &ctx, |_| given)
        .map_err(|sw| format!("INITIALIZE UPDATE refused with {sw}"))?;
    eq("IU response", &resp.data, &v.initialize_update.response.0)?;
    eq("IU sw", &resp.sw.to_bytes(), &v.initialize_update.sw.0)?;
    let ea = parse_cmd("EXTERNAL AUTHENTICATE", &v.external_authenticate.command.0)?;
    // Tamper: a flipped host-cryptogram bit must be refused.
    let (_, hs_bad) =
        CardHandshake::initialize_update(&iu_cmd, &ctx, |_| v.expect.card_challenge.0.clone())
            .map_err(|sw| format!("INITIALIZE UPDATE refused with {sw}"))?;
    let bad_ea = ea
        .clone()
        .with_data(flip(ea.data(), 0))
        .map_err(|e| e.to_string())?;
    if hs_bad.external_authenticate(&bad_ea).is_ok() {
        return Err("accepted a flipped host cryptogram".into());
    }
    let mut session = hs
        .external_authenticate(&ea)
        .map_err(|sw| format!("EXTERNAL AUTHENTICATE refused with {sw}"))?;
    if session.level().byte() != v.security_level.0 {
        return Err("level differs from security_level".into());
    }
    for (n, c) in v.commands.iter().enumerate() {
        let received = parse_cmd("wrapped", &c.wrapped.0)?;
        let mut tampered = session.clone();
        let plain = session
            .unwrap_command(&received)
            .map_err(|e| format!("command {n}: {e}"))?;
        eq(
            &format!("command {n} unwrap"),
            &plain.to_bytes(),
            &c.plain.0,
        )?;
        tamper_command(&mut tampered, &c.wrapped.0, n)?;
        if let (Some(rp), Some(rw), Some(sw)) = (&c.response_plain, &c.response_wrapped, &c.sw) {
            let resp = Response::new(rp.0.clone(), sw_of(sw)?);
            let wrapped = session
                .wrap_response(&resp)
                .map_err(|e| format!("response {n}: {e}"))?;
            eq(&format!("response {n} wrap"), &wrapped.data, &rw.0)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> SecureSession {
        let k = AesKey::new(&[0x40; 16]).unwrap();
        let keys = SessionKeys {
            s_enc: k.clone(),
            s_mac: k.clone(),
            s_rmac: k,
        };
        SecureSession::from_keys(&keys, SecurityLevel::CMAC, Mode::S8, [0; 16], 0)
    }

    #[test]
    fn tamper_of_an_unparsable_command_is_a_failure() {
        // Lc says 5 bytes of data, 1 follows.
        let e =
            tamper_command(&mut session(), &[0x84, 0xf2, 0x20, 0x02, 0x05, 0x00], 3).unwrap_err();
        assert!(e.contains("step 3") && e.contains("unparsable"), "{e}");
    }

    #[test]
    fn tamper_of_a_command_without_data_is_a_failure() {
        let e = tamper_command(&mut session(), &[0x84, 0xf2, 0x20, 0x02], 0).unwrap_err();
        assert!(e.contains("no C-MAC to tamper with"), "{e}");
    }

    #[test]
    fn tamper_of_a_properly_wrapped_command_is_detected() {
        let mut host = session();
        let plain = Command::parse(&[0x80, 0xf2, 0x20, 0x02]).unwrap();
        let wrapped = host.wrap_command(&plain).unwrap().to_bytes();
        assert_eq!(tamper_command(&mut session(), &wrapped, 0), Ok(()));
    }

    #[test]
    fn cmac_with_an_empty_message_is_tampered_through_the_key() {
        // RFC 4493 example 1 (AES-128, empty message).
        let v = Cmac {
            key: Hex(hex::decode("2b7e151628aed2a6abf7158809cf4f3c").unwrap()),
            message: Hex(vec![]),
            mac: Hex(hex::decode("bb1d6929e95937287fa37d129b756746").unwrap()),
        };
        assert_eq!(check_cmac(&v), Ok(()));
    }
}
