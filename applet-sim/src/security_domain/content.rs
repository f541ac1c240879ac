//! Card content management: INSTALL [for load / install / make selectable /
//! personalization], LOAD, DELETE, SET STATUS and STORE DATA. Every multi-object change runs in
//! a transaction.

use super::setup::*;
use super::state::LoadContext;
use super::state::{SdCtx, SecurityDomain};
use crate::applet::Aid;
use crate::registry::{self, LoadFile, RegistryEntry, app_state, card_state, privilege};
use crate::store::{Store, StoreError};
use card_wire::apdu::{Command, Response};

impl SecurityDomain {
    pub(super) fn install(&mut self, cmd: &Command, ctx: &mut SdCtx<'_>) -> Result<Response, Sw> {
        if cmd.p2() != 0x00 {
            return Err(Sw::INCORRECT_P1P2);
        }
        if matches!(cmd.p1(), 0x02 | 0x04 | 0x0C | 0x08)
            && !self.may_manage_content(ctx)
            && !self.needs_token(ctx)
        {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        match cmd.p1() {
            0x02 => self.install_for_load(cmd, ctx),
            0x04 | 0x0C | 0x08 => self.install_for_install(cmd, ctx),
            0x20 => self.install_for_personalization(cmd, ctx),
            _ => Err(Sw::INCORRECT_P1P2),
        }
    }

    pub(super) fn install_for_load(
        &mut self,
        cmd: &Command,
        ctx: &mut SdCtx<'_>,
    ) -> Result<Response, Sw> {
        let f = lv_fields(cmd.data(), 5)?;
        let elf = aid_of(f[0])?;
        let sd = if f[1].is_empty() {
            self.aid.clone()
        } else {
            aid_of(f[1])?
        };
        if self.needs_token(ctx) {
            let signed = super::delegated::signed_part(cmd.data(), f[4])?;
            super::delegated::check_token(ctx, cmd.p1(), cmd.p2(), signed, f[4])?;
        } else if !f[4].is_empty() {
            // Only a domain under delegated management takes a token.
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
            delegated: self.needs_token(ctx),
        });
        Ok(Response::success(vec![0x00]))
    }

    pub(super) fn load(&mut self, cmd: &Command, ctx: &mut SdCtx<'_>) -> Result<Response, Sw> {
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
        // The load file: DAP blocks (E2), then C4 ‖ length ‖ load file data block.
        let split = card_wire::dap::split_load_file(&load.data).map_err(|_| Sw::INCORRECT_DATA)?;
        let block = split.data_block;
        crate::load_file::check_hash(block, load.hash.as_deref())?;
        super::dap::check_daps(ctx, &load.sd, load.hash.as_deref(), &split.daps)?;
        let (elf, sd) = (load.elf.clone(), load.sd.clone());
        let isd = load
            .delegated
            .then(|| super::delegated::isd_aid(ctx))
            .flatten();
        // A delegated load's receipt counter moves in the transaction that records the file.
        let confirm = |s: &mut Store| -> Result<Vec<u8>, Sw> {
            if !load.delegated {
                return Ok(vec![0x00]);
            }
            let what = card_wire::dm::Confirmed::Load {
                elf: elf.as_bytes(),
                sd: sd.as_bytes(),
            };
            super::delegated::receipt(s, isd.as_ref(), &what)
        };
        if crate::load_file::is_cap(block) {
            let (lf, version) = crate::load_file::accept(ctx.store, block, &load.elf, &load.sd)?;
            let answer = ctx.store.atomically(|s| {
                crate::load_file::record(s, &lf, version, block)?;
                confirm(s)
            })?;
            return Ok(Response::success(answer));
        }
        let (package, modules) = LoadFile::parse_data_block(block).ok_or(Sw::INCORRECT_DATA)?;
        if package != load.elf || modules.is_empty() {
            return Err(Sw::INCORRECT_DATA);
        }
        // LOAD accepts what the card's class table knows.
        if modules.iter().any(|(_, class)| !ctx.classes.knows(class)) {
            return Err(Sw::INCORRECT_DATA);
        }
        let lf = LoadFile {
            aid: load.elf.clone(),
            sd: load.sd.clone(),
            modules,
        };
        let answer = ctx.store.atomically(|s| {
            registry::put_load_file(s, &lf)?;
            confirm(s)
        })?;
        Ok(Response::success(answer))
    }

    pub(super) fn install_for_install(
        &mut self,
        cmd: &Command,
        ctx: &mut SdCtx<'_>,
    ) -> Result<Response, Sw> {
        let f = lv_fields(cmd.data(), 6)?;
        let install = cmd.p1() & 0x04 != 0;
        let selectable = cmd.p1() & 0x08 != 0;
        if self.needs_token(ctx) {
            let signed = super::delegated::signed_part(cmd.data(), f[5])?;
            super::delegated::check_token(ctx, cmd.p1(), cmd.p2(), signed, f[5])?;
        } else if !f[5].is_empty() {
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
        let is_sd_class = class == registry::SD_CLASS;
        if is_sd_class {
            privileges[0] |= privilege::SECURITY_DOMAIN;
        } else if privileges[0] & privilege::SECURITY_DOMAIN != 0 || class == registry::ISD_CLASS {
            return Err(Sw::INCORRECT_DATA);
        }
        // Card-wide privileges stay with the ISD.
        if privileges[0] & (privilege::CARD_LOCK | privilege::CARD_TERMINATE) != 0 && !self.is_isd {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        // The class's constructor sees the install parameters now, as a Java Card applet's
        // install method does, and may refuse them.
        if class == registry::CAP_CLASS {
            // A Java Card applet: its install method runs in the VM.
            crate::load_file::install_cap(ctx.store, &elf, &module, &app, &privileges, f[4])?;
        } else if let Some(sw) = ctx.classes.check_install(&class, &app, f[4]) {
            return Err(sw);
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
        let isd = self
            .needs_token(ctx)
            .then(|| super::delegated::isd_aid(ctx))
            .flatten();
        let delegated = self.needs_token(ctx);
        let answer = ctx.store.atomically(|s| {
            registry::put_entry(s, &entry)?;
            if let Some(k) = &initial {
                put_keys(s, &app, k)?;
            }
            if !delegated {
                return Ok::<_, Sw>(vec![0x00]);
            }
            let what = card_wire::dm::Confirmed::Install {
                elf: f[0],
                app: app.as_bytes(),
            };
            super::delegated::receipt(s, isd.as_ref(), &what)
        })?;
        Ok(Response::success(answer))
    }

    pub(super) fn install_for_personalization(
        &mut self,
        cmd: &Command,
        ctx: &mut SdCtx<'_>,
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

    pub(super) fn delete(&mut self, cmd: &Command, ctx: &mut SdCtx<'_>) -> Result<Response, Sw> {
        // Key deletion (D0 key identifier / D2 key version): every domain manages its keys.
        if matches!(cmd.data().first(), Some(0xD0 | 0xD2)) {
            return self.delete_key(cmd, ctx);
        }
        let needs_token = self.needs_token(ctx);
        if !self.may_manage_content(ctx) && !needs_token {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let related = match cmd.p2() {
            0x00 => false,
            0x80 => true,
            _ => return Err(Sw::INCORRECT_P1P2),
        };
        // 4F AID, then (delegated management) 9E token.
        let items = card_wire::tlv::parse_all(cmd.data()).map_err(|_| Sw::INCORRECT_DATA)?;
        let (t, token) = match items.as_slice() {
            [t] if t.tag.0 == 0x4F => (t, None),
            [t, k] if t.tag.0 == 0x4F && k.tag.0 == 0x9E => (t, Some(k.value)),
            _ => return Err(Sw::INCORRECT_DATA),
        };
        match (needs_token, token) {
            (true, token) => {
                let signed = &cmd.data()[..t.value.len() + 2];
                let token = token.unwrap_or_default();
                super::delegated::check_token(ctx, cmd.p1(), cmd.p2(), signed, token)?;
            }
            (false, Some(_)) => return Err(Sw::INCORRECT_DATA),
            (false, None) => {}
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
            let isd = needs_token
                .then(|| super::delegated::isd_aid(ctx))
                .flatten();
            let answer = ctx.store.atomically(|s| {
                registry::remove_entry(s, &aid)?;
                delete_answer(s, needs_token, isd.as_ref(), &aid)
            })?;
            return Ok(Response::success(answer));
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
        let isd = needs_token
            .then(|| super::delegated::isd_aid(ctx))
            .flatten();
        let answer = ctx.store.atomically(|s| {
            for i in &instances {
                registry::remove_entry(s, i)?;
            }
            registry::remove_load_file(s, &aid)?;
            delete_answer(s, needs_token, isd.as_ref(), &aid)
        })?;
        Ok(Response::success(answer))
    }

    pub(super) fn set_status(
        &mut self,
        cmd: &Command,
        ctx: &mut SdCtx<'_>,
    ) -> Result<Response, Sw> {
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

    pub(super) fn store_data(
        &mut self,
        cmd: &Command,
        ctx: &mut SdCtx<'_>,
    ) -> Result<Response, Sw> {
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
}

/// What a DELETE answers, inside its transaction: `00`, or under delegated management the
/// receipt (its counter moves with the deletion).
fn delete_answer(
    s: &mut Store,
    needs_token: bool,
    isd: Option<&Aid>,
    aid: &Aid,
) -> Result<Vec<u8>, Sw> {
    if !needs_token {
        return Ok(vec![0x00]);
    }
    let what = card_wire::dm::Confirmed::Delete {
        aid: aid.as_bytes(),
    };
    super::delegated::receipt(s, isd, &what)
}
