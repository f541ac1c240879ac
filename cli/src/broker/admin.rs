//! `kagi broker admin …`: the operator's tools (services, holders, audit trail).

use super::*;

use crate::common::{party_id, read_secret, read_text, rel, runtime, write_private};
use crate::{Failure, print_json};
use broker_protocol::Assurance;
use broker_protocol::api::{AdminRequest, AdminResponse, BackChannel, Method, ServicePolicy};
use kagi_online::broker::BrokerClient;
use serde_json::json;
use std::path::Path;
use tsm_protocol::PartyId;
use tsm_protocol::signing::{Signer, Trust};
use zeroize::Zeroizing;

/// An administrator: its signer, the broker's party and key, and the client.
pub(super) struct Admin {
    signer: Signer,
    broker: PartyId,
    trust: Trust,
    client: BrokerClient,
}

pub(super) fn load_admin(config: &Path) -> Result<Admin, Failure> {
    let text = read_text(config)?;
    let f: AdminFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    let broker = party_id(&f.broker_party)?;
    let mut trust = Trust::new();
    trust.add_pem(
        broker.clone(),
        &read_text(&rel(config, &f.broker_public_key))?,
    )?;
    let ca = f
        .broker_ca
        .as_ref()
        .map(|c| std::fs::read(rel(config, c)))
        .transpose()?;
    Ok(Admin {
        signer: Signer::from_pkcs8_pem(
            party_id(&f.party)?,
            &read_secret(&rel(config, &f.signing_key))?,
        )?,
        broker,
        trust,
        client: BrokerClient::new(&f.broker, ca.as_deref())?,
    })
}

pub(super) fn parse_hours(s: &str) -> Result<(u8, u8), Failure> {
    let bad = || format!("--hours {s}: use FROM-TO in whole UTC hours, e.g. 8-20");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u8, u8) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a > 23 || b > 24 || a == b {
        return Err(bad().into());
    }
    Ok((a, b % 24))
}

/// Writes the service's half of a credential: a public key as PEM, a MAC key as hex (0600).
pub(super) fn write_service_half(
    out: &Path,
    public_key: &Option<Vec<u8>>,
    shared: &Option<Vec<u8>>,
) -> Result<String, Failure> {
    match (public_key, shared) {
        (Some(pk), _) => {
            std::fs::write(out, kagi_perso::pki::to_pem(pk, "PUBLIC KEY")?)?;
            Ok(format!("public key written to {}", out.display()))
        }
        (None, Some(k)) => {
            let hex = Zeroizing::new(hex::encode_upper(k));
            write_private(out, hex.as_bytes())?;
            Ok(format!(
                "MAC key written to {} (give it to the service only)",
                out.display()
            ))
        }
        (None, None) => {
            Ok("nothing to write: an assertion service needs only the broker's keys".into())
        }
    }
}

/// The idempotency key a text names: the first 16 bytes of SHA-256 over a tag, the
/// administrator's party and the text (the same text from the same administrator, the same
/// key; 1 to 200 characters).
pub(super) fn idempotency_key(
    party: &PartyId,
    text: &str,
) -> Result<tsm_protocol::IdempotencyKey, Failure> {
    use sha2::{Digest, Sha256};
    if text.is_empty() || text.chars().count() > 200 {
        return Err("--idempotency-key: 1 to 200 characters".into());
    }
    let mut h = Sha256::new();
    h.update(b"kagi broker admin idempotency key\0");
    h.update(party.0.as_bytes());
    h.update([0]);
    h.update(text.as_bytes());
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    Ok(tsm_protocol::IdempotencyKey(k))
}

pub(super) fn admin_cmd(
    config: &Path,
    idem: Option<&str>,
    cmd: &AdminCmd,
    json_out: bool,
) -> Result<(), Failure> {
    let admin = load_admin(config)?;
    let idem = idem
        .map(|t| idempotency_key(admin.signer.party(), t))
        .transpose()?;
    let mut enrolled = None;
    let req = match cmd {
        AdminCmd::RegisterService {
            id,
            method,
            min_assurance,
            hours,
        } => AdminRequest::RegisterService(ServicePolicy {
            id: id.clone(),
            method: Method::parse(method).ok_or_else(|| {
                format!("--method {method}: use mac, sign-p256, sign-rsa or assertion")
            })?,
            min_assurance: Assurance::parse(min_assurance)
                .ok_or_else(|| format!("--min-assurance {min_assurance}: use card or password"))?,
            allowed_hours: hours.as_deref().map(parse_hours).transpose()?,
        }),
        AdminCmd::EnrolCard {
            cert,
            card,
            holder,
            password_file,
        } => {
            let card = match (cert, card) {
                (Some(p), _) => kagi_online::broker::card_id(&kagi_perso::pki::pem_or_der(
                    &std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?,
                    "CERTIFICATE",
                )?)
                .map_err(|e| format!("{}: {e}", p.display()))?,
                (None, Some(c)) => c.clone(),
                (None, None) => return Err("give --cert FILE or --card ID".into()),
            };
            let password = match password_file {
                Some(p) => {
                    let pw = read_secret(p)?;
                    if pw.len() < 8 {
                        return Err("the password must have at least 8 characters".into());
                    }
                    // Argon2id at the broker's floor (m=19456 KiB, t=2, p=1).
                    Some(
                        tsm_protocol::password::new_verifier(
                            &pw,
                            &tsm_protocol::password::Params::OWASP_MIN,
                        )
                        .map_err(|e| e.to_string())?,
                    )
                }
                None => None,
            };
            enrolled = Some(card.clone());
            AdminRequest::EnrolCard {
                card,
                holder: holder.clone(),
                password,
            }
        }
        AdminCmd::Enrol(c) => AdminRequest::EnrolCredential {
            card: c.card.clone(),
            service: c.service.clone(),
        },
        AdminCmd::RotateKey(c) => AdminRequest::RotateServiceKey {
            card: c.card.clone(),
            service: c.service.clone(),
        },
        AdminCmd::RotateKek { to } => AdminRequest::RotateKek { to: to.clone() },
        AdminCmd::Revoke { card } => AdminRequest::RevokeCard { card: card.clone() },
        AdminCmd::Audit { card } => AdminRequest::Audit { card: card.clone() },
        AdminCmd::BackChannel {
            service,
            mode,
            service_key,
            code_secs,
            url,
            service_ca,
        } => AdminRequest::SetBackChannel {
            service: service.clone(),
            back_channel: match (mode.as_str(), service_key) {
                _ if mode != "push" && (url.is_some() || service_ca.is_some()) => {
                    return Err("--url and --service-ca go with --mode push only".into());
                }
                ("push", None) => match (url, service_ca) {
                    (Some(url), Some(ca)) => BackChannel::Push {
                        url: url.clone(),
                        service_ca: std::fs::read(ca)
                            .map_err(|e| format!("--service-ca {}: {e}", ca.display()))?,
                    },
                    _ => {
                        return Err("--mode push needs --url https://… (the service's endpoint) and --service-ca FILE (the CA of its TLS certificate, PEM)".into());
                    }
                },
                ("push", Some(_)) => {
                    return Err("--mode push takes no --service-key (the service checks the broker's signature and client certificate)".into());
                }
                ("relayed", None) => BackChannel::Relayed,
                ("code", Some(p)) => BackChannel::Code {
                    service_key: kagi_perso::pki::pem_or_der(
                        &std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?,
                        "PUBLIC KEY",
                    )?,
                    code_secs: *code_secs,
                },
                ("code", None) => {
                    return Err("--mode code needs --service-key FILE (the service's P-256 public key, PEM)".into());
                }
                ("relayed", Some(_)) => {
                    return Err("--mode relayed takes no --service-key".into());
                }
                _ => return Err(format!("--mode {mode}: use relayed, code or push").into()),
            },
        },
    };
    let answer = runtime()?.block_on(admin.client.admin_with_key(
        &admin.signer,
        &admin.broker,
        &admin.trust,
        &req,
        idem,
    ))?;
    match answer {
        AdminResponse::Rejected { code, detail } => {
            Err(format!("the broker refused: {detail} ({code})").into())
        }
        AdminResponse::Ok => {
            if json_out {
                print_json(json!({"ok": true, "card": enrolled}));
            } else if let Some(card) = enrolled {
                println!("enrolled card {card}");
            } else {
                println!("ok");
            }
            Ok(())
        }
        AdminResponse::Credential {
            version,
            public_key,
            shared_key,
        } => {
            let out = match cmd {
                AdminCmd::Enrol(c) | AdminCmd::RotateKey(c) => c.out.clone(),
                _ => None,
            };
            let written = match &out {
                Some(o) => write_service_half(o, &public_key, &shared_key)?,
                None if shared_key.is_some() => {
                    "the MAC key was not written (give --out FILE): ask again with --out".into()
                }
                None => String::new(),
            };
            if json_out {
                print_json(json!({"version": version, "written": written}));
            } else {
                println!("credential version {version}. {written}");
            }
            Ok(())
        }
        AdminResponse::Rotation {
            kek,
            rewrapped,
            converted,
            remaining,
        } => {
            if json_out {
                print_json(
                    json!({"kek": kek, "rewrapped": rewrapped, "converted": converted, "remaining": remaining}),
                );
            } else {
                println!(
                    "new records under {kek}; {rewrapped} re-wrapped now, {converted} converted to the in-HSM form, {remaining} left (the broker continues in the background)"
                );
            }
            Ok(())
        }
        AdminResponse::Audit(entries) => {
            if json_out {
                print_json(json!({"audit": audit_json(&entries)}));
            } else {
                print_audit(&entries);
            }
            Ok(())
        }
    }
}

/// Audit entries as JSON, times in RFC 3339.
pub(super) fn audit_json(entries: &[broker_protocol::api::AuditEntry]) -> Vec<serde_json::Value> {
    entries
        .iter()
        .map(|e| {
            json!({"at": crate::common::rfc3339_ms(i64::try_from(e.at).unwrap_or(i64::MAX)),
                "card": e.card, "service": e.service, "assurance": e.assurance,
                "event": e.event, "outcome": e.outcome})
        })
        .collect()
}

pub(super) fn print_audit(entries: &[broker_protocol::api::AuditEntry]) {
    for e in entries {
        let at = crate::common::rfc3339_ms(i64::try_from(e.at).unwrap_or(i64::MAX));
        println!(
            "{at}  {:<20}  {:<12}  {:<12}  {:<8}  {}",
            e.card, e.event, e.service, e.assurance, e.outcome
        );
    }
}
