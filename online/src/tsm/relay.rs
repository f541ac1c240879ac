//! The relay ("common app"): connects a card — a PC/SC reader, a vpcd-served or in-process
//! simulator — to the TSM, and carries orders and reports. It holds no secrets: the card
//! commands are SCP03-wrapped end to end; the access code the user types goes to the TSM,
//! which checks it, with the password — derived here with Argon2id when the TSM's grant is a
//! server-relief one (the password then never leaves the phone), else as typed. A lost connection is retried with the same message (the TSM
//! answers repeats exactly once); the link delay option models the phone's network.

use super::client::{Client, ClientError};
use card_wire::Transport;
use std::time::{Duration, Instant};
use tsm_protocol::SessionId;
use tsm_protocol::relay::{
    Agent, AgentMsg, PasswordEntry, ServerMsg, StopOutcome, UserCredentials,
};
use tsm_protocol::relief::DerivationLimits;

/// How a relay session went.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// How it ended.
    pub outcome: StopOutcome,
    /// The TSM's last word.
    pub message: String,
    /// Orders applied to the card.
    pub orders: u32,
    /// HTTP round trips.
    pub round_trips: u32,
    /// Wall time of the whole session.
    pub elapsed: Duration,
    /// Time the TSM itself spent, summed over the round trips.
    pub tsm_time: Duration,
    /// The session.
    pub session: Option<SessionId>,
    /// HTTP attempts that failed and were retried (a TSM restarting, or its database failing
    /// over), over all the round trips.
    pub retries: u32,
}

/// What the relay needs.
pub struct Options<'a> {
    /// The device ticket.
    pub ticket: String,
    /// The user's entries, when already known; else `ask` is called.
    pub credentials: Option<UserCredentials>,
    /// Asks the user for the access code and password (`attempts_left` shown); `None` gives
    /// up.
    pub ask: &'a mut (dyn FnMut(u8) -> Option<UserCredentials> + Send),
    /// What the app calls itself (logged by the TSM).
    pub agent: String,
    /// Every body sent and received is appended here (a capture, for inspection).
    pub capture: Option<&'a mut Vec<u8>>,
    /// The Argon2id parameters this app derives a password with when the TSM asks for it
    /// (server relief; [`DerivationLimits::production`] outside tests).
    pub limits: DerivationLimits,
}

/// Why the relay stopped without an outcome from the TSM.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The TSM could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The TSM sent something that is not a message.
    #[error("the TSM's answer is not a message: {0}")]
    Protocol(String),
    /// The user gave up at the credentials prompt.
    #[error("no access code and password given")]
    NoCredentials,
    /// The TSM asked to derive the password with parameters this app does not use.
    #[error("the TSM asked to derive the password in a way this app refuses: {0}")]
    Derivation(#[from] tsm_protocol::password::PasswordError),
}

/// Runs one relay session to its end.
pub async fn run(
    client: &Client,
    card: &mut dyn Transport,
    mut opts: Options<'_>,
) -> Result<Outcome, RelayError> {
    let start = Instant::now();
    let mut agent = Agent::new();
    let mut out = Outcome {
        outcome: StopOutcome::Interrupted,
        message: String::new(),
        orders: 0,
        round_trips: 0,
        elapsed: Duration::ZERO,
        tsm_time: Duration::ZERO,
        session: None,
        retries: 0,
    };
    // Entries known beforehand go with the hello only once derived; a typed password waits
    // for the TSM's ask, which says whether (and how) to derive it: it then stays here.
    let mut held = opts.credentials.take();
    let early = match &held {
        Some(c) if matches!(c.password, PasswordEntry::Derived(_)) => held.take(),
        _ => None,
    };
    let mut msg = AgentMsg::Hello {
        ticket: opts.ticket.clone(),
        agent: opts.agent.clone(),
        resume: None,
        credentials: early,
        prepared: None,
    };
    // While the operator's TSM prepares the SIM (a `Continue`): its client, and the provider's
    // session to resume afterwards.
    let mut detour: Option<(Client, SessionId)> = None;
    let version_text = tsm_protocol::relay::VERSION.to_string();
    let version = [(tsm_protocol::relay::VERSION_HEADER, version_text.as_str())];
    loop {
        let body =
            tsm_protocol::codec::encode(&msg).map_err(|e| RelayError::Protocol(e.to_string()))?;
        let at = detour.as_ref().map(|(c, _)| c).unwrap_or(client);
        let (answer, ex) = at.post_with("/v1/relay", &version, &body).await?;
        out.round_trips += 1;
        out.retries += ex.attempts.saturating_sub(1);
        out.tsm_time += Duration::from_micros(ex.tsm_micros);
        if let Some(c) = opts.capture.as_deref_mut() {
            c.extend_from_slice(&body);
            c.extend_from_slice(&answer);
        }
        let reply: ServerMsg = tsm_protocol::codec::decode(&answer)
            .map_err(|e| RelayError::Protocol(e.to_string()))?;
        msg = match reply {
            ServerMsg::AskCredentials { .. } if detour.is_some() => {
                return Err(RelayError::Protocol(
                    "the operator's TSM asked for the access code and password: it never needs them"
                        .into(),
                ));
            }
            ServerMsg::Continue { .. } if detour.is_some() => {
                return Err(RelayError::Protocol(
                    "the operator's TSM sent the relay on to yet another server".into(),
                ));
            }
            ServerMsg::Continue {
                session,
                url,
                ticket,
            } => {
                // The provider's TSM hands the card to the operator's TSM for a while: a new
                // session there, from a clean card state.
                agent.close(card);
                agent = Agent::new();
                detour = Some((client.with_base(&url), session));
                AgentMsg::Hello {
                    ticket,
                    agent: opts.agent.clone(),
                    resume: None,
                    credentials: None,
                    prepared: None,
                }
            }
            ServerMsg::Stop {
                outcome,
                message,
                receipt,
                ..
            } if detour.is_some() => {
                agent.close(card);
                agent = Agent::new();
                let home = detour.take().map(|(_, h)| h);
                if outcome != StopOutcome::Completed {
                    out.outcome = outcome;
                    out.message = format!("the operator's TSM: {message}");
                    out.elapsed = start.elapsed();
                    return Ok(out);
                }
                // The operator's TSM's receipt goes back with the relay (opaque here).
                AgentMsg::Hello {
                    ticket: opts.ticket.clone(),
                    agent: opts.agent.clone(),
                    resume: home,
                    credentials: None,
                    prepared: receipt,
                }
            }
            ServerMsg::AskCredentials {
                session,
                attempts_left,
                derive,
            } => {
                out.session = Some(session);
                let mut c = match held.take() {
                    Some(c) => c,
                    None => (opts.ask)(attempts_left).ok_or(RelayError::NoCredentials)?,
                };
                if let (Some(d), PasswordEntry::Typed(_)) = (&derive, &c.password) {
                    // Argon2id (tens of milliseconds): off the async runtime.
                    let (d, limits) = (d.clone(), opts.limits);
                    let typed =
                        std::mem::replace(&mut c.password, PasswordEntry::Derived(Vec::new()));
                    c.password = tokio::task::spawn_blocking(move || {
                        typed.for_derivation(Some(&d), &limits)
                    })
                    .await
                    .map_err(|e| {
                        RelayError::Protocol(format!("the password derivation stopped: {e}"))
                    })??;
                }
                AgentMsg::Credentials {
                    session,
                    credentials: c,
                }
            }
            ServerMsg::Order {
                session,
                seq,
                delay_ms,
                cmds,
            } => {
                out.session = Some(session);
                if delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(u64::from(delay_ms))).await;
                }
                out.orders += 1;
                agent.on_order(card, session, seq, &cmds)
            }
            ServerMsg::Stop {
                outcome, message, ..
            } => {
                agent.close(card);
                out.outcome = outcome;
                out.message = message;
                out.elapsed = start.elapsed();
                return Ok(out);
            }
        };
    }
}
