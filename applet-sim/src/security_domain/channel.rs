//! The secure channel: INITIALIZE UPDATE and EXTERNAL AUTHENTICATE (SCP03, or SCP02 on a
//! card made so) with persistent counters, and PUT KEY under the session's DEK.

use super::setup::*;
use super::state::Session;
use super::state::{SdCtx, SecurityDomain};
use crate::sd_scp02::{self, Handshake};
use card_wire::apdu::{Command, Response};
use card_wire::scp03::StaticKeys;
use card_wire::scp03::crypto::AesKey;
use card_wire::scp03::handshake::{CardHandshake, CardKeyContext};
use card_wire::scp03::putkey::dek_decrypt;
use zeroize::Zeroize;

impl SecurityDomain {
    pub(super) fn initialize_update(
        &mut self,
        cmd: &Command,
        ctx: &mut SdCtx<'_>,
    ) -> Result<Response, Sw> {
        let ch = ctx.channel as usize;
        // Three session keys by the CMAC KDF and the card cryptogram: about 8 AES blocks.
        ctx.store.charge(crate::timing::CardOp::Aes { blocks: 8 });
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

    pub(super) fn external_authenticate(
        &mut self,
        cmd: &Command,
        ctx: &mut SdCtx<'_>,
    ) -> Result<Response, Sw> {
        let ch = ctx.channel as usize;
        // The host cryptogram and the command's C-MAC: about 4 AES blocks.
        ctx.store.charge(crate::timing::CardOp::Aes { blocks: 4 });
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

    pub(super) fn put_key(&mut self, cmd: &Command, ctx: &mut SdCtx<'_>) -> Result<Response, Sw> {
        let ch = ctx.channel as usize;
        if cmd.p2() == card_wire::dap::DAP_KEY_ID {
            if self.sessions[ch].is_none() {
                return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
            }
            return self.put_dap_key(cmd, ctx);
        }
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

    /// DELETE of a key version (`D2`, optionally with a key identifier `D0`). A DAP key
    /// (identifier 01) goes alone. Key sets are
    /// kept and used whole (ENC, MAC, DEK as identifiers 1–3), so only a whole version goes:
    /// one key of a set, or one identifier across all versions, is refused with `6985`
    /// (conditions of use not satisfied), as are the set of the open session and the
    /// domain's last set (either would leave no way to authenticate); an unknown version or
    /// identifier is `6A88`.
    pub(super) fn delete_key(
        &mut self,
        cmd: &Command,
        ctx: &mut SdCtx<'_>,
    ) -> Result<Response, Sw> {
        if cmd.p1() != 0x00 || cmd.p2() != 0x00 {
            return Err(Sw::INCORRECT_P1P2);
        }
        let items = card_wire::tlv::parse_all(cmd.data()).map_err(|_| Sw::INCORRECT_DATA)?;
        let (mut id, mut kvn) = (None, None);
        for t in &items {
            match (t.tag.0, t.value) {
                (0xD0, [v]) if id.is_none() => id = Some(*v),
                (0xD2, [v]) if kvn.is_none() => kvn = Some(*v),
                _ => return Err(Sw::INCORRECT_DATA),
            }
        }
        let kvn = kvn.ok_or(Sw::CONDITIONS_NOT_SATISFIED)?;
        // A DAP key (identifier 01) is one key: it goes by version, or by version and id.
        let dap = format!("{}/dap/{kvn:02X}", self.prefix());
        if ctx.store.get(&dap).is_some() {
            if !matches!(id, None | Some(card_wire::dap::DAP_KEY_ID)) {
                return Err(Sw::REFERENCED_DATA_NOT_FOUND);
            }
            ctx.store.atomically(|s| s.remove(&dap))?;
            return Ok(Response::success(vec![0x00]));
        }
        let sets = key_sets(ctx.store, &self.aid);
        if !sets.iter().any(|k| k.kvn == kvn) {
            return Err(Sw::REFERENCED_DATA_NOT_FOUND);
        }
        match id {
            Some(1..=3) => return Err(Sw::CONDITIONS_NOT_SATISFIED),
            Some(_) => return Err(Sw::REFERENCED_DATA_NOT_FOUND),
            None => {}
        }
        let in_use = self.sessions[ctx.channel as usize]
            .as_ref()
            .is_some_and(|s| s.kvn == kvn);
        if in_use || sets.len() < 2 {
            return Err(Sw::CONDITIONS_NOT_SATISFIED);
        }
        let prefix = self.prefix();
        ctx.store.atomically(|s| {
            s.remove(&format!("{prefix}/key/{kvn:02X}"))?;
            s.remove(&format!("{prefix}/seq/{kvn:02X}"))
        })?;
        Ok(Response::success(vec![0x00]))
    }

    /// Decrypts the AES key blocks of an SCP03 PUT KEY.
    pub(super) fn put_key_aes(
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
}
