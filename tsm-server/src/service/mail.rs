//! Seed 004 ⑪: the access code of a download made from the user's application goes to the
//! user — to the mail address the user signed into the application with the My Number card —
//! through the SP-TSM's outbox (`kagi_notify`: a maildir by default, or SMTP), and never to
//! the provider: its answer carries the device ticket only.
//!
//! A failed send leaves no half state: the mail is queued in the transaction that creates the
//! operation (`store::mail`), so the operation is kept and its mail stays due; the first
//! attempt happens at once, and a failure (recorded in the audit trail as `code-not-sent`
//! with the reason, the operation untouched) is retried by the sweeper with a growing pause
//! (5 s, 10 s, … at most 5 minutes) and on a replay of the same request, until it is
//! handed over (`code-sent`, with its `Message-ID`) or the operation ends. A permanent refusal
//! (the relay rejects the address) is not retried; the provider cancels the operation. The
//! code is never logged, audited or put in an answer; it is read from the operation's sealed
//! secrets only to build the message.

use crate::store::ops::OpRow;
use crate::store::{Store, StoreError};
use tsm_protocol::control::{ControlRequest, ControlResponse};
use tsm_protocol::{ErrorReport, Layer, OpId};

use super::{Result, Secrets, Tsm, err, now};

/// How long a claimed attempt holds the mail before another instance may try (a sender that
/// died mid-send is retried after this).
const LEASE_MS: i64 = 120_000;

/// The longest pause between two attempts.
const MAX_PAUSE_MS: i64 = 300_000;

/// The pause after the `tries`-th failed attempt: 5 s, doubling, at most [`MAX_PAUSE_MS`].
pub(super) fn pause_after(tries: i64) -> i64 {
    let doublings = u32::try_from(tries.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    5_000i64.saturating_mul(1 << doublings).min(MAX_PAUSE_MS)
}

/// What became of one delivery attempt (the details are in the audit trail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Handed over now.
    Sent,
    /// Sent before, or not due, or another instance holds it: nothing done.
    Nothing,
    /// Failed (retried later unless the failure was permanent).
    Failed,
}

impl Tsm {
    /// The user's mail address of an `Apply` (signed into its application), checked; `None`
    /// for any other request. A refusal when there is no outbox or the address is no address.
    pub(super) fn apply_contact(
        &self,
        req: &ControlRequest,
    ) -> Option<std::result::Result<String, ErrorReport>> {
        let (ControlRequest::Apply { application, .. }
        | ControlRequest::ApplyPinReset { application, .. }
        | ControlRequest::ApplyTransfer { application, .. }) = req
        else {
            return None;
        };
        if self.config.outbox.is_none() {
            return Some(Err(err(
                Layer::Business,
                "business.no-outbox",
                "this SP-TSM has no outbox to send the access code to the user ([notify] in tsm.toml)",
            )));
        }
        // The issuer checks the application's signature; the contact is read here only to
        // know where the code goes, and refused early when it cannot be one.
        let contact = kagi_certs::application::Application::decode(application)
            .and_then(|a| kagi_certs::application::check_contact(&a.body.contact).map(|_| a))
            .map(|a| a.body.contact);
        Some(contact.map_err(|e| {
            err(
                Layer::Business,
                &format!("application.{}", e.code()),
                e.to_string(),
            )
        }))
    }

    /// Tries to deliver `op`'s access-code mail now, if it is due and nobody else holds it:
    /// claims it (a conditional update), sends it, and records the outcome with an audit
    /// event.
    pub(super) async fn deliver_code(&self, op: &OpId) -> Result<Delivery> {
        let Some(outbox) = self.config.outbox.clone() else {
            return Ok(Delivery::Nothing);
        };
        let Some(mail) = self.store.code_mail(op).await? else {
            return Ok(Delivery::Nothing);
        };
        let t = now();
        if mail.sent_at.is_some() || mail.recipient.is_empty() || mail.next_at > t {
            return Ok(Delivery::Nothing);
        }
        match self
            .store
            .commit(vec![Store::claim_code_mail(op, t, t + LEASE_MS)])
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Ok(Delivery::Nothing),
            Err(e) => return Err(e.into()),
        }
        let tries = mail.tries + 1;
        let Some(row) = self.store.op(op).await? else {
            return Ok(Delivery::Nothing);
        };
        let secrets = card_wire::state_seal::open(
            &self.config.state_key,
            &row.id.0,
            &row.data.sealed_secrets,
        )
        .ok()
        .and_then(|p| {
            let p = zeroize::Zeroizing::new(p);
            tsm_protocol::codec::decode::<Secrets>(&p).ok()
        });
        let Some(secrets) = secrets else {
            let why = "the operation's sealed access code does not open (another state key?)";
            self.store
                .commit(vec![
                    Store::code_mail_failed(op, why, i64::MAX),
                    Store::audit(op, t, "tsm", "code-not-sent", why),
                ])
                .await?;
            tracing::error!(op = %op, "{why}");
            return Ok(Delivery::Failed);
        };
        let subject = "Your access code for the phone credential download";
        let body = zeroize::Zeroizing::new(format!(
            "Your application for the phone credential on SIM {iccid} was accepted.\r\n\r\n\
             Access code: {code}\r\n\r\n\
             Enter it with the password you registered in the phone app to start the\r\n\
             download (operation {op}). It can be used until {until}.\r\n\
             Nobody from your provider will ask you for it.\r\n",
            iccid = row.iccid,
            code = secrets.code,
            op = op,
            until = httpdate::fmt_http_date(
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_millis(u64::try_from(row.expires_at).unwrap_or(0))
            ),
        ));
        drop(secrets);
        let to = mail.recipient.clone();
        let outcome =
            match tokio::task::spawn_blocking(move || outbox.send(&to, subject, &body)).await {
                Ok(Ok(s)) => Ok(s.message_id),
                Ok(Err(e)) => Err((e.to_string(), e.is_transient())),
                Err(e) => Err((format!("the mail sender stopped: {e}"), true)),
            };
        let t = now();
        match outcome {
            Ok(message_id) => {
                self.store
                    .commit(vec![
                        Store::code_mail_sent(op, t, &message_id),
                        Store::audit(op, t, "tsm", "code-sent", &message_id),
                    ])
                    .await?;
                tracing::info!(op = %op, message_id = %message_id, "access code sent to the user");
                Ok(Delivery::Sent)
            }
            Err((e, retry)) => {
                let next = if retry {
                    t + pause_after(tries)
                } else {
                    i64::MAX
                };
                let why = if retry {
                    format!(
                        "{e} (attempt {tries}; tried again in {} s)",
                        pause_after(tries) / 1000
                    )
                } else {
                    format!("{e} (not retried: cancel the operation and apply again)")
                };
                self.store
                    .commit(vec![
                        Store::code_mail_failed(op, &why, next),
                        Store::audit(op, t, "tsm", "code-not-sent", &why),
                    ])
                    .await?;
                tracing::warn!(op = %op, error = %why, "the access code could not be sent");
                Ok(Delivery::Failed)
            }
        }
    }

    /// The answer to a replayed request ([`Tsm::again`]); for an operation whose code goes by
    /// mail, without the code — and a replay is also a retry of a mail that is due.
    pub(super) async fn again_mailed(
        &self,
        existing: OpRow,
        request_hash: &[u8],
    ) -> Result<ControlResponse> {
        let id = existing.id;
        let mut answer = self.again(existing, request_hash)?;
        if let ControlResponse::Accepted { access_code, .. } = &mut answer
            && self.store.code_mail(&id).await?.is_some()
        {
            *access_code = None;
            self.deliver_code(&id).await?;
        }
        Ok(answer)
    }

    /// The sweeper's part: tries every due mail of a live operation again, and blanks the
    /// addresses of mails whose operation ended unsent. How many were handed over.
    pub(super) async fn retry_code_mails(&self) -> Result<usize> {
        if self.config.outbox.is_none() {
            return Ok(0);
        }
        let mut sent = 0;
        for op in self.store.due_code_mails(now()).await? {
            if self.deliver_code(&op).await? == Delivery::Sent {
                sent += 1;
            }
        }
        self.store
            .commit(vec![Store::forget_ended_code_mails()])
            .await?;
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pause_doubles_from_five_seconds_up_to_five_minutes() {
        let pauses: Vec<i64> = (1..=8).map(super::pause_after).collect();
        assert_eq!(
            pauses,
            [
                5_000, 10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000
            ]
        );
        assert_eq!(super::pause_after(i64::MAX), 300_000);
    }
}
