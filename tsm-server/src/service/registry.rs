//! The SIM registry across the two TSMs: the MNO-TSM answers an SP-TSM's signed
//! [`ControlRequest::CardRecord`] from its registry; the SP-TSM refreshes its copy of a SIM's
//! record from there before it creates an operation on the SIM or gives a provider the SIM's
//! certificate, so the operator registers a SIM with its MNO-TSM only.

use crate::store::ops::CardRow;
use crate::store::{Store, StoreError};
use tsm_protocol::control::{ControlRequest, ControlResponse};
use tsm_protocol::{Layer, PartyId};

use super::{Result, Tsm, err, now};

impl Tsm {
    /// MNO-TSM: a SIM's record for the SP-TSM of the SIM's provider: the provider whose domain
    /// the SIM is registered for, or — a SIM without one on record — any provider the SP-TSM
    /// serves here. Anyone else is told the SIM is unknown (the same words as for a SIM that
    /// is not registered).
    pub(super) async fn card_record(
        &self,
        sender: &PartyId,
        iccid: &str,
    ) -> Result<ControlResponse> {
        let unknown = || {
            ControlResponse::Rejected(err(
                Layer::Business,
                "business.unknown-card",
                format!("SIM {iccid} is not registered with this MNO-TSM"),
            ))
        };
        let Some(c) = self.store.card(iccid).await? else {
            return Ok(unknown());
        };
        let serves = self
            .config
            .hosted
            .values()
            .any(|h| &h.sp_tsm == sender && (c.sd_aid.is_empty() || h.sd_aid == c.sd_aid));
        if !serves {
            tracing::warn!(sender = %sender, iccid, "a SIM record asked for by an SP-TSM that is not the SIM's provider's");
            return Ok(unknown());
        }
        Ok(ControlResponse::CardRecord {
            iccid: c.iccid,
            cin: c.cin,
            sd_aid: c.sd_aid,
            state: c.state,
            replaced_by: c.replaced_by,
            free_memory: c.free_memory.clamp(0, i64::from(u32::MAX)) as u32,
            operator: PartyId(c.mno),
            card_certificate: self.store.card_certificate(iccid).await?,
        })
    }

    /// SP-TSM with an MNO-TSM: its copy of SIM `iccid`'s record brought up to date. An
    /// unreachable MNO-TSM leaves the copy as it is (logged); a SIM the MNO-TSM does not know
    /// leaves none to act on when there was none.
    pub(super) async fn refresh_card(&self, iccid: &str) -> Result<()> {
        if self.config.mno.is_empty() {
            return Ok(());
        }
        // Asked only of the MNO-TSM serving the SIM (no other learns of it).
        let mno = match self.mno_for(iccid) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(iccid, code = %e.code, "no MNO-TSM serves the SIM: its record is not refreshed");
                return Ok(());
            }
        };
        let req = ControlRequest::CardRecord {
            iccid: iccid.to_string(),
        };
        let answer = match self.send_to_mno(mno, &req, None).await? {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(iccid, code = %e.code, detail = %e.detail, "the SIM's record could not be refreshed from the MNO-TSM");
                return Ok(());
            }
        };
        let ControlResponse::CardRecord {
            iccid: got,
            cin,
            sd_aid,
            state,
            replaced_by,
            free_memory,
            operator,
            card_certificate,
        } = answer
        else {
            return Ok(());
        };
        if got != iccid {
            tracing::warn!(iccid, got = %got, "the MNO-TSM answered for another SIM");
            return Ok(());
        }
        let t = now();
        let row = CardRow {
            iccid: got,
            cin,
            sd_aid,
            free_memory: i64::from(free_memory),
            state,
            replaced_by,
            mno: operator.0,
        };
        let batch = vec![
            Store::register_card(&row, t),
            Store::set_card_certificate(iccid, card_certificate, t),
        ];
        match self.store.commit(batch).await {
            Ok(()) => Ok(()),
            // Registered here by another operator: that copy stays.
            Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
