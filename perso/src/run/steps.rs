//! The steps of one card: transport keys to production keys, supplementary domains, applets and the final life-cycle state, each journalled and checkpointed.

use super::*;
use crate::error::{Error, Result};
use crate::journal::Event;
use crate::profile::{CardType, Profile};
use crate::records::Record;
use card_wire::scp03::{CardKeys, HostOptions, Scp03Error};
use card_wire::sw::StatusWord;
use card_wire::transport::Transport;
use kagi::channel::CardChannel;
use kagi::gp::{self, StatusScope, manage};
use kagi::secure::SecureChannel;
use kagi::uicc::CardKind;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Personalises one card, journalling and saving after every step. With `progress` from the
/// journal, steps already done are skipped and steps that can be read back from the card
/// (load files, instances) are checked there.
pub(super) fn personalise<T: Checkpoint>(
    sh: &Shared<'_>,
    ch: &mut CardChannel<T>,
    record: &Record,
    path: Option<&Path>,
    progress: &Progress,
) -> Result<Option<Issued>> {
    let p = sh.profile;
    let mark = std::cell::Cell::new(Instant::now());
    let step = |name: String| {
        let micros = mark.get().elapsed().as_micros() as u64;
        mark.set(Instant::now());
        sh.time(&name, micros);
        sh.log(Event::Step {
            record: record.id.clone(),
            step: name,
            micros,
        })
    };
    let begin = |name: &str| {
        sh.log(Event::Begin {
            record: record.id.clone(),
            step: name.to_string(),
        })
    };
    let mut jpki_check = None;
    check_card_kind(p, ch).map_err(Error::Profile)?;
    let mut sc = transport_session(ch, sh.keys, sh.profile, None)?;
    save(sc.card(), path)?;
    if progress.todo("open", false)? {
        step("open".into())?;
    }
    if !p.load.is_empty() {
        let loaded = gp::get_status(&mut sc, StatusScope::LoadFiles)?;
        for l in &p.load {
            if loaded.iter().any(|e| e.aid == l.package) {
                continue;
            }
            if let Some(cap) = &l.cap_file {
                // Short LOAD blocks under the session's overhead: every reader carries them.
                let overhead = sc.load_overhead();
                let opts = kagi::gp_cap::LoadOptions {
                    hash: kagi::gp_cap::HashAlg::Sha256,
                    descriptor: true,
                    sd: None,
                    block: card_wire::gp_load::block_size(None, false, overhead),
                };
                kagi::gp_cap::load(&mut sc, cap, &opts)?;
            } else if l.cap.is_some() {
                return Err(Error::Profile(
                    "a [[load]] cap file is read by Profile::read (its path is relative to the profile)".into(),
                ));
            } else {
                let file = manage::sim_load_file(&l.package, &l.modules);
                manage::load(&mut sc, &l.package, None, &file, true)?;
            }
            save(sc.card(), path)?;
            step(format!("load:{}", hex::encode_upper(&l.package)))?;
        }
    }
    let present = if progress.done.is_empty() {
        Vec::new()
    } else {
        gp::get_status(&mut sc, StatusScope::Applications)?
    };
    for d in &p.domains {
        let name = format!("domain:{}", hex::encode_upper(&d.instance));
        if !progress.todo(&name, false)? {
            continue;
        }
        if !present.iter().any(|e| e.aid == d.instance) {
            let spec = manage::InstallSpec {
                package: d.package.clone(),
                module: d.module.clone(),
                instance: d.instance.clone(),
                privileges: d.privileges.clone(),
                params: Vec::new(),
                selectable: true,
            };
            manage::install(&mut sc, &spec)?;
            save(sc.card(), path)?;
        }
        step(name)?;
    }
    for i in &p.install {
        let name = format!("install:{}", hex::encode_upper(&i.instance));
        if !progress.todo(&name, false)? {
            continue;
        }
        if present.iter().any(|e| e.aid == i.instance) {
            // Installed before the interruption, journaled only now.
            step(name)?;
            continue;
        }
        let spec = manage::InstallSpec {
            package: i.package.clone(),
            module: i.module.clone(),
            instance: i.instance.clone(),
            privileges: i.privileges.clone(),
            params: i.params.clone(),
            selectable: true,
        };
        manage::install(&mut sc, &spec)?;
        save(sc.card(), path)?;
        step(name)?;
    }
    for s in &p.store {
        let name = format!("store:{}", hex::encode_upper(&s.instance));
        if !progress.todo(&name, true)? {
            continue;
        }
        let blocks = Profile::render(s, &record.fields)?;
        begin(&name)?;
        manage::personalize(&mut sc, &s.instance, &blocks, true)?;
        save(sc.card(), path)?;
        step(name)?;
    }
    // A JPKI issuance done before an interruption is not repeated; its PINs went to the
    // mailer and are not kept, so the signature check after issuance is not repeated either.
    if let (Some(j), Some(issuer)) = (&p.jpki, &sh.issuer) {
        if issuer.authority.in_process() {
            #[cfg(feature = "dev-ca")]
            if progress.todo("jpki", true)? {
                begin("jpki")?;
                let issued = issue_jpki(&mut sc, j, issuer, record)?;
                save(sc.card(), path)?;
                step("jpki".into())?;
                jpki_check = Some(issued);
            }
        } else {
            // An external CA: requests out (one step that cannot be read back: keys and
            // PINs), then certificates in when the CA has answered (can be repeated).
            let mut pin = None;
            if progress.todo("jpki-keys", true)? {
                begin("jpki-keys")?;
                drop(sc);
                pin = Some(request_certificates(sh, ch, j, issuer, record)?);
                save(ch, path)?;
                step("jpki-keys".into())?;
                sc = transport_session(ch, sh.keys, sh.profile, None)?;
            }
            if progress.todo("jpki-certs", false)? {
                let auth_cert = install_certificates(&mut sc, j, issuer, record)?;
                save(sc.card(), path)?;
                step("jpki-certs".into())?;
                jpki_check = Some(Issued {
                    auth_cert,
                    auth_pin: pin,
                });
            }
        }
    }
    if !p.domains.is_empty() {
        // Each supplementary domain gets its provider's keys in its own session, before the
        // issuer domain's keys change.
        drop(sc);
        domain_keys(sh, ch, path, progress, &step)?;
        sc = transport_session(ch, sh.keys, sh.profile, None)?;
    }
    finish(sh, sc, path, &step)?;
    Ok(jpki_check)
}

/// Whether the card is of the profile's type, from its answer to reset: a UICC profile on a
/// smart card (or the other way round) is wrong card stock in the feeder, refused before any
/// command changes the card. `Err` says what is wrong, for the operator.
pub(super) fn check_card_kind<T: Transport>(
    profile: &Profile,
    ch: &CardChannel<T>,
) -> std::result::Result<(), String> {
    let want = match profile.card {
        CardType::Uicc => CardKind::Uicc,
        CardType::SmartCard => CardKind::SmartCard,
    };
    let Some(atr) = ch.transport().atr() else {
        return Err("the card gave no answer to reset: kagi cannot tell its type".into());
    };
    let got = CardKind::from_atr(&atr).map_err(|e| e.to_string())?;
    if got != want {
        return Err(format!(
            "the profile is for card = \"{}\", but this card's ATR {} announces a {}: wrong card stock? remove it",
            want.name(),
            hex::encode_upper(&atr),
            got.name()
        ));
    }
    Ok(())
}

/// A session on a security domain (`aid`, or the issuer's) under the transport keys.
pub(super) fn transport_session<'c, T: Transport>(
    ch: &'c mut CardChannel<T>,
    keys: &KeySets,
    profile: &Profile,
    aid: Option<&[u8]>,
) -> Result<SecureChannel<'c, T>> {
    let sd = gp::select_domain(ch, aid)?;
    let opts = HostOptions {
        kvn: profile.transport_kvn,
        ..options(profile)
    };
    Ok(SecureChannel::open(
        ch,
        keys.transport.clone(),
        opts,
        Some(&sd.aid),
    )?)
}

/// Whether `e` is a security domain refusing the transport key version (it was replaced).
pub(super) fn transport_keys_replaced(e: &Error) -> bool {
    matches!(
        e,
        Error::Card(kagi::Error::Scp03(Scp03Error::InitializeUpdateRefused(
            StatusWord::REFERENCED_DATA_NOT_FOUND
        )))
    )
}

/// A session on a supplementary domain under its provider's production keys.
pub(super) fn domain_session<'c, T: Transport>(
    ch: &'c mut CardChannel<T>,
    profile: &Profile,
    keys: &KeySets,
    domain: &crate::profile::Domain,
) -> Result<SecureChannel<'c, T>> {
    keyed_session(
        ch,
        profile,
        keys.domain(&domain.keys)?,
        Some(&domain.instance),
    )
}

/// Replaces each supplementary domain's initial (transport) keys with keys diversified from
/// its provider's master key set. A domain whose transport keys are already refused must
/// answer to the provider's keys (replaced before an interruption).
pub(super) fn domain_keys<T: Checkpoint>(
    sh: &Shared<'_>,
    ch: &mut CardChannel<T>,
    path: Option<&Path>,
    progress: &Progress,
    step: &dyn Fn(String) -> Result<()>,
) -> Result<()> {
    for d in &sh.profile.domains {
        let name = format!("domain-keys:{}", hex::encode_upper(&d.instance));
        if !progress.todo(&name, false)? {
            continue;
        }
        match transport_session(ch, sh.keys, sh.profile, Some(&d.instance)) {
            Ok(mut sc) => {
                let kdd = sc.info().init_update.kdd;
                let keys = sh.keys.domain(&d.keys)?.for_card(&kdd)?;
                sc.put_key_set(&keys, Some(sh.profile.transport_kvn))?;
                save(sc.card(), path)?;
            }
            Err(e) if transport_keys_replaced(&e) => {
                domain_session(ch, sh.profile, sh.keys, d)?;
            }
            Err(e) => return Err(e),
        }
        step(name)?;
    }
    Ok(())
}

/// The last steps: production keys, diversified for this card, replace the transport keys,
/// then the card moves to the profile's final life-cycle state.
pub(super) fn finish<T: Checkpoint>(
    sh: &Shared<'_>,
    mut sc: SecureChannel<'_, T>,
    path: Option<&Path>,
    step: &dyn Fn(String) -> Result<()>,
) -> Result<()> {
    let p = sh.profile;
    let kdd = sc.info().init_update.kdd;
    let production = sh.keys.production.for_card(&kdd)?;
    // SCP03: AES under the static DEK; SCP02: 3DES under the session DEK.
    sc.put_key_set(&production, Some(p.transport_kvn))?;
    save(sc.card(), path)?;
    step("put-key".into())?;
    final_state(sh, &mut sc, path)?;
    step("final-state".into())
}

/// Moves the card to the profile's final life-cycle state (nothing to do for SECURED).
pub(super) fn final_state<T: Checkpoint>(
    sh: &Shared<'_>,
    sc: &mut SecureChannel<'_, T>,
    path: Option<&Path>,
) -> Result<()> {
    if sh.profile.final_state != 0x0F {
        manage::set_card_status(sc, sh.profile.final_state)?;
        save(sc.card(), path)?;
    }
    Ok(())
}

/// A session on the card's security domain under the production keys.
pub(super) fn production_session<'c, T: Transport>(
    ch: &'c mut CardChannel<T>,
    profile: &Profile,
    keys: &KeySets,
) -> Result<SecureChannel<'c, T>> {
    keyed_session(ch, profile, keys.production.clone(), None)
}

/// A session on the domain `aid` (the issuer's by default) with the production KVN and the
/// card's keys from `source`.
pub(super) fn keyed_session<'c, T: Transport>(
    ch: &'c mut CardChannel<T>,
    profile: &Profile,
    source: Arc<dyn CardKeys>,
    aid: Option<&[u8]>,
) -> Result<SecureChannel<'c, T>> {
    let sd = gp::select_domain(ch, aid)?;
    let opts = HostOptions {
        kvn: profile.production_kvn,
        ..options(profile)
    };
    Ok(SecureChannel::open_source(ch, source, opts, Some(&sd.aid))?)
}
