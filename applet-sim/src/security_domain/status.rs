//! What a security domain tells about the card: SELECT's FCI with card recognition data,
//! GET DATA, and GET STATUS over the registry.

use super::setup::*;
use super::state::{SdCtx, SecurityDomain, StatusItem};
use crate::applet::Aid;
use crate::registry::{self, app_state};
use crate::sd_scp02;
use crate::store::Store;
use card_wire::apdu::{Command, Response};
use card_wire::tlv::tlv;

impl SecurityDomain {
    /// Card recognition data (GP Card Specification Annex H): GP 2.3.1, SCP03 (or SCP02)
    /// with `i`.
    pub(super) fn card_recognition_data(store: &Store) -> Vec<u8> {
        let (scp, i) = sd_scp02::announced(store, card_i(store).0);
        const GP: [u8; 6] = [0x2A, 0x86, 0x48, 0x86, 0xFC, 0x6B];
        let oid = |arc: &[u8]| tlv(0x06, &[&GP[..], arc].concat());
        let mut body = oid(&[0x01]);
        body.extend(tlv(0x60, &oid(&[0x02, 0x02, 0x03, 0x01])));
        body.extend(tlv(0x63, &oid(&[0x03])));
        body.extend(tlv(0x64, &oid(&[0x04, scp, i])));
        tlv(0x73, &body)
    }

    pub(super) fn fci(&self, store: &Store) -> Vec<u8> {
        let mut a5 = Self::card_recognition_data(store);
        // Maximum command data: 1024 bytes, in extended APDUs when the reader carries them.
        a5.extend(tlv(0x9F65, &[0x04, 0x00]));
        let mut body = tlv(0x84, self.aid.as_bytes());
        body.extend(tlv(0xA5, &a5));
        tlv(0x6F, &body)
    }

    pub(super) fn get_data(&self, cmd: &Command, store: &Store) -> Result<Response, Sw> {
        let keys = || key_sets(store, &self.aid);
        let data = match (cmd.p1(), cmd.p2()) {
            (0x00, 0x66) => tlv(0x66, &Self::card_recognition_data(store)),
            (0x00, 0xE0) => {
                let mut body = Vec::new();
                for k in &keys() {
                    for kid in 1..=3u8 {
                        let t = sd_scp02::key_type(store);
                        body.extend(tlv(0xC0, &[kid, k.kvn, t, k.key_len() as u8]));
                    }
                }
                // DAP keys (an RSA-2048 modulus in the extended format).
                for (kvn, key) in super::dap::dap_keys(store, &self.aid) {
                    body.extend(tlv(0xC0, &key.template(card_wire::dap::DAP_KEY_ID, kvn)));
                }
                tlv(0xE0, &body)
            }
            (0x00, 0xC1) => {
                let kvn = keys().first().map(|k| k.kvn).unwrap_or(0);
                let c = read_u32(store, &format!("{}/seq/{kvn:02X}", self.prefix())).to_be_bytes();
                tlv(0xC1, &c[1..])
            }
            (0x00, 0xCF) => tlv(0xCF, &card_kdd(store)),
            (0x00, 0x42) => tlv(0x42, store.get("card/iin").unwrap_or_default()),
            (0x00, 0x45) => tlv(0x45, store.get("card/cin").unwrap_or_default()),
            (0x9F, 0x7F) => tlv(0x9F7F, &Self::cplc(&card_kdd(store))),
            _ => return Err(Sw::REFERENCED_DATA_NOT_FOUND),
        };
        Ok(Response::success(data))
    }

    /// The card's CPLC (42 bytes, the layout of [`card_wire::cplc::FIELDS`]): kagi's own
    /// fabricator and personaliser codes (`4B47`, "KG"), BCD `YDDD` dates, the IC serial
    /// number from the KDD.
    pub(super) fn cplc(kdd: &[u8; 10]) -> Vec<u8> {
        let mut c = Vec::with_capacity(42);
        c.extend_from_slice(&[0x4B, 0x47]); // IC fabricator
        c.extend_from_slice(&[0x53, 0x4D]); // IC type
        c.extend_from_slice(&[0x4B, 0x01]); // operating system identifier
        c.extend_from_slice(&[0x50, 0x60]); // OS release date: 2025, day 60
        c.extend_from_slice(&[0x01, 0x00]); // OS release level
        c.extend_from_slice(&[0x51, 0x23]); // IC fabrication date: 2025, day 123
        c.extend_from_slice(&kdd[6..10]); // IC serial number
        c.extend_from_slice(&[0x00, 0x01]); // IC batch identifier
        c.extend_from_slice(&[0x4B, 0x47]); // IC module fabricator
        c.extend_from_slice(&[0x51, 0x50]); // IC module packaging date: 2025, day 150
        c.extend_from_slice(&[0x4B, 0x47]); // ICC manufacturer
        c.extend_from_slice(&[0x51, 0x60]); // IC embedding date: 2025, day 160
        c.extend_from_slice(&[0x4B, 0x47]); // IC pre-personaliser
        c.extend_from_slice(&[0x51, 0x70]); // pre-personalisation date: 2025, day 170
        c.extend_from_slice(&[0x00, 0x00, 0x00, 0x01]); // pre-personalisation equipment
        c.extend_from_slice(&[0x00, 0x00]); // IC personaliser: not personalised yet
        c.extend_from_slice(&[0x00, 0x00]); // personalisation date
        c.extend_from_slice(&[0x00, 0x00, 0x00, 0x00]); // personalisation equipment
        c
    }

    pub(super) fn get_status(&mut self, cmd: &Command, ctx: &SdCtx<'_>) -> Result<Response, Sw> {
        let ch = ctx.channel as usize;
        let tags = match cmd.p2() & !0x01 {
            0x02 => true,
            0x00 => false,
            _ => return Err(Sw::INCORRECT_P1P2),
        };
        let criteria = card_wire::tlv::parse_single(cmd.data()).map_err(|_| Sw::INCORRECT_DATA)?;
        if criteria.tag.0 != 0x4F {
            return Err(Sw::INCORRECT_DATA);
        }
        let card_lc = registry::card_life_cycle(ctx.store);
        let mut items: Vec<StatusItem> = match cmd.p1() {
            0x80 if self.is_isd => vec![(
                self.aid.as_bytes().to_vec(),
                card_lc,
                ISD_PRIVILEGES.to_vec(),
                vec![],
                None,
            )],
            0x40 => ctx
                .registry
                .iter()
                .filter(|e| !e.is_isd() && self.manages(e.sd.as_ref()))
                .map(|e| {
                    (
                        e.aid.as_bytes().to_vec(),
                        e.life_cycle,
                        e.privileges.to_vec(),
                        vec![],
                        e.sd.as_ref().map(|a| a.as_bytes().to_vec()),
                    )
                })
                .collect(),
            0x20 | 0x10 => registry::load_files(ctx.store)
                .into_iter()
                .filter(|lf| self.manages(Some(&lf.sd)))
                .map(|lf| {
                    let modules = if cmd.p1() == 0x10 {
                        lf.modules
                            .iter()
                            .map(|(m, _)| m.as_bytes().to_vec())
                            .collect()
                    } else {
                        vec![]
                    };
                    (
                        lf.aid.as_bytes().to_vec(),
                        app_state::LOADED,
                        vec![0x00],
                        modules,
                        Some(lf.sd.as_bytes().to_vec()),
                    )
                })
                .collect(),
            _ => return Err(Sw::INCORRECT_P1P2),
        };
        items.retain(|(aid, ..)| aid.starts_with(criteria.value));
        let start = if cmd.p2() & 0x01 != 0 {
            self.status_cursor[ch]
        } else {
            0
        };
        if items.is_empty() || start >= items.len() {
            return Err(Sw::REFERENCED_DATA_NOT_FOUND);
        }
        let mut out = Vec::new();
        let mut next = start;
        for (aid, lc, privs, modules, sd) in &items[start..] {
            let encoded = if tags {
                let mut body = tlv(0x4F, aid);
                body.extend(tlv(0x9F70, &[*lc]));
                if cmd.p1() != 0x20 && cmd.p1() != 0x10 {
                    body.extend(tlv(0xC5, privs));
                }
                if let Some(v) = Aid::new(aid)
                    .ok()
                    .and_then(|a| crate::load_file::version(ctx.store, &a))
                {
                    body.extend(tlv(0xCE, &v));
                }
                for m in modules {
                    body.extend(tlv(0x84, m));
                }
                // The associated security domain (GP Card Specification Table 11-36).
                if let Some(sd) = sd {
                    body.extend(tlv(0xCC, sd));
                }
                tlv(0xE3, &body)
            } else {
                let mut v = vec![aid.len() as u8];
                v.extend_from_slice(aid);
                v.extend_from_slice(&[*lc, privs.first().copied().unwrap_or(0)]);
                if cmd.p1() == 0x10 {
                    v.push(modules.len() as u8);
                    for m in modules {
                        v.push(m.len() as u8);
                        v.extend_from_slice(m);
                    }
                }
                v
            };
            // Leave room for secure messaging (padding + MAC) within a short response.
            if !out.is_empty() && out.len() + encoded.len() > 200 {
                break;
            }
            out.extend(encoded);
            next += 1;
        }
        self.status_cursor[ch] = next;
        let sw = if next < items.len() {
            Sw::MORE_DATA_AVAILABLE
        } else {
            Sw::SUCCESS
        };
        Ok(Response::new(out, sw))
    }
}
