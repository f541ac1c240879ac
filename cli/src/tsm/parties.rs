//! The provider's and the operator's tools: their configuration files, signed requests to the TSM and what the TSM answers, as text or JSON.

use super::*;

use crate::common::{party_id, read_secret, read_text, rel, write_private};
use crate::{Failure, parse_hex, print_json};
use kagi_online::tsm::client::{Client, Link};
use kagi_online::tsm::provider::{self, CardKey, Party};
use serde_json::json;
use std::path::Path;
use tsm_protocol::OpId;
use tsm_protocol::control::{
    AppletRef, CardTarget, ControlRequest, ControlResponse, RevokeReason, WalletChange,
    WalletUpdate,
};
use tsm_protocol::signing::{Signer, Trust};

/// A provider's or operator's identity and its TSM, from its configuration file.
pub fn load_party(config: &Path) -> Result<Party, Failure> {
    let text = read_text(config)?;
    let f: PartyFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    if let Some(old) = &f.content_key {
        return Err(format!(
            "{}: `content_key = \"{old}\"` is no longer used — credentials are sealed to each SIM's own key agreement key (give `--manufacturer-ca` to issue and reset-pin): remove the line and delete the key file",
            config.display()
        )
        .into());
    }
    let me = party_id(&f.party)?;
    let tsm = party_id(&f.tsm_party)?;
    let mut trust = Trust::new();
    trust.add_pem(tsm.clone(), &read_text(&rel(config, &f.tsm_public_key))?)?;
    let mut client = match &f.tsm_ca {
        Some(ca) => Client::with_ca(&f.tsm, Link::default(), &std::fs::read(rel(config, ca))?)?,
        None => Client::new(&f.tsm, Link::default()),
    };
    // A provider's or operator's request is retried briefly (a TSM restarting), not for the
    // five minutes a phone waits.
    client.retry_for = std::time::Duration::from_secs(15);
    client.tell_waiting = true;
    Ok(Party {
        signer: Signer::from_pkcs8_pem(me, &read_secret(&rel(config, &f.signing_key))?)?,
        tsm,
        trust,
        client,
    })
}

/// The card manufacturer's CA certificate from a PEM or DER file.
fn manufacturer_ca(path: &Path) -> Result<x509_cert::Certificate, Failure> {
    use der::Decode;
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let der = kagi_certs::pem_or_der(&bytes, "CERTIFICATE")
        .map_err(|e| format!("{}: {e}", path.display()))?;
    x509_cert::Certificate::from_der(&der)
        .map_err(|e| format!("{}: not a certificate ({e})", path.display()).into())
}

pub(super) fn op_id(s: &str) -> Result<OpId, Failure> {
    OpId::from_hex(s).ok_or_else(|| format!("'{s}' is not an operation id (32 hex digits)").into())
}

use crate::common::rfc3339;

fn revoke_reason(r: &RevokeReason) -> &'static str {
    match r {
        RevokeReason::CardLost => "card-lost",
        RevokeReason::Superseded => "superseded",
        RevokeReason::UserRequest => "user-request",
        RevokeReason::Expired => "expired",
        RevokeReason::SignatureRevoked => "sign-revoked",
    }
}

/// The TSM's answer as one JSON object (hex ids, RFC 3339 times, kebab-case words); the text
/// output shows the same fields.
fn response_json(r: &ControlResponse) -> serde_json::Value {
    match r {
        ControlResponse::Accepted {
            op,
            state,
            device_ticket,
            access_code,
            expires_at,
        } => json!({
            "answer": "accepted", "op": op.to_hex(), "state": state.name(),
            "device_ticket": device_ticket, "access_code": access_code,
            "expires_at": rfc3339(expires_at / 1000),
        }),
        // Only an SP-TSM asks for a SIM preparation; never shown with its initial keys.
        ControlResponse::Prepared {
            op,
            state,
            device_ticket,
            expires_at,
            ..
        } => json!({
            "answer": "accepted", "op": op.to_hex(), "state": state.name(),
            "device_ticket": device_ticket, "access_code": null,
            "expires_at": rfc3339(expires_at / 1000),
        }),
        // Only an SP-TSM reads the MNO-TSM's registry; shown as a certificate answer.
        ControlResponse::CardRecord {
            iccid,
            card_certificate,
            ..
        } => json!({
            "answer": "card-certificate", "iccid": iccid,
            "certificate": hex::encode_upper(card_certificate.as_deref().unwrap_or_default()),
        }),
        ControlResponse::Operation(v) => json!({
            "answer": "operation", "op": v.op.to_hex(), "operation": v.kind,
            "state": v.state.name(), "steps": v.steps, "receipt": v.receipt.is_some(),
            "error": v.error.as_ref().map(|e| json!({"code": e.code, "detail": e.detail, "retryable": e.retryable})),
            "children": v.children.iter().map(|c| c.to_hex()).collect::<Vec<_>>(),
        }),
        ControlResponse::Credential(c) => json!({
            "answer": "credential", "credential": c.credential.to_hex(), "iccid": c.iccid,
            "state": c.state, "revoked": c.revoked.as_ref().map(revoke_reason),
            "serial": c.serial, "not_after": rfc3339(c.not_after), "expired": c.expired,
            "my_number_sign_serial": c.my_number_sign_serial,
            "card_deletion_pending": c.card_deletion_pending,
        }),
        ControlResponse::Eligibility {
            eligible,
            reason,
            free_memory,
        } => json!({
            "answer": "eligibility", "eligible": eligible, "reason": reason,
            "free_memory": free_memory,
        }),
        ControlResponse::Ok => json!({ "answer": "ok" }),
        ControlResponse::CardCertificate { iccid, certificate } => json!({
            "answer": "card-certificate", "iccid": iccid, "certificate": hex::encode_upper(certificate),
        }),
        ControlResponse::Rejected(e) => json!({
            "answer": "rejected", "code": e.code, "detail": e.detail,
        }),
    }
}

fn show(json_out: bool, r: &ControlResponse) -> Result<(), Failure> {
    if let ControlResponse::Rejected(e) = r {
        return Err(Box::new(crate::exit::Refused(e.clone())));
    }
    let v = response_json(r);
    if json_out {
        print_json(v);
        return Ok(());
    }
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            let shown = match val {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(a) if a.is_empty() => continue,
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                other => other.to_string(),
            };
            println!("{:<22}{shown}", k.replace('_', " "));
        }
    }
    Ok(())
}

/// Writes what the user needs for a download (operation, ticket, access code) as JSON into
/// `out` (0600). Under `--json` stdout gets the operation, its deadline and the file, never
/// the ticket or the access code.
fn write_grant(
    out: &Path,
    r: &provider::Answered,
    extra: serde_json::Value,
    json_out: bool,
) -> Result<OpId, Failure> {
    let ControlResponse::Accepted {
        op,
        device_ticket,
        access_code,
        expires_at,
        ..
    } = &r.response
    else {
        // A refusal keeps the TSM's code (and the catalogue's hint) under `--json`.
        if let ControlResponse::Rejected(e) = &r.response {
            return Err(Box::new(crate::exit::Refused(e.clone())));
        }
        return Err(format!("the TSM did not accept: {:?}", r.response).into());
    };
    let mut doc = json!({
        "op": op.to_hex(),
        "ticket": device_ticket,
        "access_code": access_code,
        "expires_at": expires_at,
        "request_msg_id": r.request.0.to_hex(),
        "request_nonce": r.request.1.to_hex(),
    });
    if let (Some(o), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    write_private(out, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    if json_out {
        let mut shown = json!({
            "op": op.to_hex(),
            "expires_at": rfc3339(expires_at / 1000),
            "file": out.display().to_string(),
        });
        if let (Some(o), Some(e)) = (shown.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        print_json(shown);
        return Ok(*op);
    }
    if access_code.is_none() {
        println!(
            "operation {op} accepted; the device ticket for the user is in {}; the TSM sends the one-time access code to the user's own mail address",
            out.display()
        );
    } else {
        println!(
            "operation {op} accepted; the device ticket and one-time access code for the user are in {} (deliver them separately)",
            out.display()
        );
    }
    Ok(*op)
}

pub(super) async fn provider_cmd(
    config: &Path,
    cmd: &ProviderCmd,
    json_out: bool,
) -> Result<(), Failure> {
    let sp = load_party(config)?;
    match cmd {
        ProviderCmd::Issue {
            iccid,
            ca_dir,
            manufacturer_ca: maker,
            pin_file,
            password_file,
            rsa,
            application,
            sign_revoked,
            application_max_age,
            my_number_serial,
            out,
            valid_minutes,
        } => {
            use der::Encode;
            use kagi_certs::application as app;
            if my_number_serial.is_some() {
                return Err(Box::new(crate::exit::Finished::new(
                    crate::exit::Exit::Usage,
                    "error: --my-number-serial is gone: the user signs an application with their My Number card (`kagi jpki apply --iccid … --provider … --out application.bin`) and the provider passes it with `--application application.bin`; the serial is taken from its verified signature certificate",
                )));
            }
            // The application first: nothing is made or sent for one that does not check.
            let bytes = std::fs::read(application)
                .map_err(|e| format!("{}: {e}", application.display()))?;
            let now = std::time::SystemTime::now();
            let me = sp.signer.party().to_string();
            let verified = app::check(
                &bytes,
                &crate::jpki::apply::sign_trust(ca_dir, sign_revoked.as_deref())?,
                &app::Expect {
                    iccid,
                    provider: &me,
                    now,
                    max_age: std::time::Duration::from_secs(*application_max_age),
                },
            )?;
            let seen = config
                .parent()
                .unwrap_or(Path::new("."))
                .join("applications.seen");
            let log = app::NonceLog::open(&seen)?;
            log.prune(now, std::time::Duration::from_secs(*application_max_age));
            log.claim(&verified)?;
            let pin = read_secret(pin_file)?;
            let password = read_secret(password_file)?;
            let (auth_ca, _) = crate::jpki::cas(ca_dir)?;
            let mut serial = [0u8; 4];
            getrandom::fill(&mut serial).map_err(|e| e.to_string())?;
            let serial = u32::from_be_bytes(serial) & 0x7FFF_FFFF | 1;
            let until = now + std::time::Duration::from_secs(365 * 86400);
            let opaque = format!("KAGIPHONE{iccid}");
            let (key, cert) = if *rsa {
                let k = test_pki::generate_rsa_key()?;
                let c = auth_ca.issue_auth(&k.to_public_key(), &opaque, serial, now, until)?;
                (CardKey::Rsa(Box::new(k)), c)
            } else {
                use p256::elliptic_curve::Generate;
                let k = p256::ecdsa::SigningKey::try_generate().map_err(|e| e.to_string())?;
                let c = auth_ca.issue_auth(k.verifying_key(), &opaque, serial, now, until)?;
                (CardKey::P256(k), c)
            };
            let cert = cert.to_der()?;
            // The SIM's own key, as its manufacturer certified it: the TSM cannot substitute
            // one of its own.
            let target = sp.seal_target(iccid, &manufacturer_ca(maker)?).await?;
            let applet = AppletRef::jpki();
            let request_id = tsm_protocol::IdempotencyKey::random().map_err(|e| e.to_string())?;
            let bundle = provider::bundle(
                &target,
                &applet.instance,
                &request_id,
                &key,
                cert.clone(),
                auth_ca.certificate_der()?,
                pin.as_bytes(),
                &verified.sign_serial,
            )?;
            drop(key);
            let req = ControlRequest::Issue {
                subscriber_ref: iccid.clone(),
                card: CardTarget {
                    iccid: iccid.clone(),
                },
                applet,
                credential: bundle,
                access: provider::access_grant(&password, 5, valid_minutes * 60_000)?,
            };
            let r = sp.send(&req, Some(request_id)).await?;
            let cert_path = out.with_extension("crt.der");
            std::fs::write(&cert_path, &cert)?;
            write_grant(
                out,
                &r,
                json!({ "certificate": cert_path.display().to_string(), "serial": format!("{serial:08X}"),
                        "my_number_sign_serial": verified.sign_serial }),
                json_out,
            )?;
            Ok(())
        }
        ProviderCmd::Apply {
            iccid,
            application,
            password_file,
            out,
            valid_minutes,
        } => {
            let bytes = std::fs::read(application)
                .map_err(|e| format!("{}: {e}", application.display()))?;
            let password = read_secret(password_file)?;
            let req = ControlRequest::Apply {
                subscriber_ref: iccid.clone(),
                card: CardTarget {
                    iccid: iccid.clone(),
                },
                applet: AppletRef::jpki(),
                application: bytes,
                access: provider::access_grant(&password, 5, valid_minutes * 60_000)?,
            };
            let r = sp.send(&req, None).await?;
            write_grant(out, &r, json!({}), json_out)?;
            Ok(())
        }
        ProviderCmd::Status { op } => {
            let r = sp
                .send(&ControlRequest::GetOperation { op: op_id(op)? }, None)
                .await?;
            if let ControlResponse::Operation(v) = &r.response {
                if json_out {
                    print_json(json!({
                        "op": v.op.to_hex(), "kind": v.kind, "state": v.state.name(), "steps": v.steps,
                        "receipt": v.receipt.is_some(), "error": v.error.as_ref().map(|e| e.to_string()),
                    }));
                } else {
                    println!(
                        "{} {}: {} ({} steps){}",
                        v.kind,
                        v.op,
                        v.state.name(),
                        v.steps.len(),
                        v.error
                            .as_ref()
                            .map(|e| format!("; {e}"))
                            .unwrap_or_default()
                    );
                }
                return Ok(());
            }
            show(json_out, &r.response)
        }
        ProviderCmd::Receipt { issued } => {
            let doc: serde_json::Value = serde_json::from_str(&read_text(issued)?)?;
            let s = |k: &str| doc[k].as_str().unwrap_or_default().to_string();
            let op = op_id(&s("op"))?;
            let request = (
                tsm_protocol::MsgId::from_hex(&s("request_msg_id")).ok_or("no request_msg_id")?,
                tsm_protocol::Nonce::from_hex(&s("request_nonce")).ok_or("no request_nonce")?,
            );
            let cert = std::fs::read(s("certificate"))
                .map_err(|e| format!("{}: {e}", s("certificate")))?;
            let r = sp.send(&ControlRequest::GetOperation { op }, None).await?;
            let ControlResponse::Operation(v) = r.response else {
                return show(json_out, &r.response);
            };
            let Some(receipt) = v.receipt else {
                return Err(format!("operation {op} is {}: no receipt yet", v.state.name()).into());
            };
            let rc = provider::check_receipt(&receipt, &sp.trust, &op, request, &cert)?;
            if json_out {
                print_json(
                    json!({ "op": op.to_hex(), "valid": true, "cin": rc.cin, "iccid": rc.iccid, "steps": rc.steps.len(), "completed_at": crate::common::rfc3339_ms(i64::try_from(rc.completed_at).unwrap_or(i64::MAX)) }),
                );
            } else {
                println!(
                    "receipt valid: signed by the TSM, the key on card {} (ICCID {}) signed the TSM's nonce and matches the certificate; {} card commands",
                    rc.cin,
                    rc.iccid,
                    rc.steps.len()
                );
            }
            Ok(())
        }
        ProviderCmd::Revoke { credential, reason } => {
            let reason = match reason.as_str() {
                "card-lost" => RevokeReason::CardLost,
                "superseded" => RevokeReason::Superseded,
                "user-request" => RevokeReason::UserRequest,
                "expired" => RevokeReason::Expired,
                other => {
                    return Err(format!(
                        "--reason {other}: card-lost, superseded, user-request or expired"
                    )
                    .into());
                }
            };
            let r = sp
                .send(
                    &ControlRequest::Revoke {
                        credential: op_id(credential)?,
                        reason,
                    },
                    None,
                )
                .await?;
            show(json_out, &r.response)
        }
        ProviderCmd::Suspend { credential } | ProviderCmd::Resume { credential } => {
            let hold = matches!(cmd, ProviderCmd::Suspend { .. });
            let req = ControlRequest::Suspend {
                credential: op_id(credential)?,
                hold,
            };
            let r = sp.send(&req, None).await?;
            show(json_out, &r.response)
        }
        ProviderCmd::Check { credential } => {
            let r = sp
                .send(
                    &ControlRequest::CheckStatus {
                        credential: op_id(credential)?,
                    },
                    None,
                )
                .await?;
            if let ControlResponse::Credential(c) = &r.response {
                if json_out {
                    print_json(
                        json!({ "credential": c.credential.to_hex(), "state": c.state, "serial": c.serial,
                        "expired": c.expired, "card_deletion_pending": c.card_deletion_pending, "iccid": c.iccid,
                        "my_number_sign_serial": c.my_number_sign_serial,
                        "revoked": c.revoked.as_ref().map(revoke_reason) }),
                    );
                } else {
                    println!(
                        "credential {}: {}{} (serial {}, ICCID {}{}{})",
                        c.credential,
                        c.state,
                        c.revoked
                            .as_ref()
                            .map(|r| format!(" ({})", revoke_reason(r)))
                            .unwrap_or_default(),
                        c.serial,
                        c.iccid,
                        if c.expired { ", expired" } else { "" },
                        if c.card_deletion_pending {
                            ", to be deleted from the card"
                        } else {
                            ""
                        }
                    );
                }
                return Ok(());
            }
            show(json_out, &r.response)
        }
        ProviderCmd::ResetPin {
            credential,
            manufacturer_ca: maker,
            pin_file,
            password_file,
            out,
        } => {
            let pin = read_secret(pin_file)?;
            let password = read_secret(password_file)?;
            let credential = op_id(credential)?;
            // The SIM the credential is on, and its own key (checked against the maker's CA).
            let status = sp
                .send(&ControlRequest::CheckStatus { credential }, None)
                .await?;
            let ControlResponse::Credential(c) = &status.response else {
                return show(json_out, &status.response);
            };
            let target = sp.seal_target(&c.iccid, &manufacturer_ca(maker)?).await?;
            let request_id = tsm_protocol::IdempotencyKey::random().map_err(|e| e.to_string())?;
            let req = ControlRequest::ResetPin {
                credential,
                sealed_pin: provider::seal_pin(
                    &target,
                    &AppletRef::jpki().instance,
                    &request_id,
                    pin.as_bytes(),
                )?,
                access: provider::access_grant(&password, 5, 30 * 60_000)?,
            };
            let r = sp.send(&req, Some(request_id)).await?;
            write_grant(out, &r, json!({}), json_out)?;
            Ok(())
        }
        ProviderCmd::ApplyPinReset {
            credential,
            application,
            password_file,
            out,
        } => {
            let bytes = std::fs::read(application)
                .map_err(|e| format!("{}: {e}", application.display()))?;
            let password = read_secret(password_file)?;
            let req = ControlRequest::ApplyPinReset {
                credential: op_id(credential)?,
                application: bytes,
                access: provider::access_grant(&password, 5, 30 * 60_000)?,
            };
            let r = sp.send(&req, None).await?;
            write_grant(out, &r, json!({}), json_out)?;
            Ok(())
        }
        ProviderCmd::ApplyTransfer {
            credential,
            iccid,
            application,
            password_file,
            out,
        } => {
            let bytes = std::fs::read(application)
                .map_err(|e| format!("{}: {e}", application.display()))?;
            let password = read_secret(password_file)?;
            let req = ControlRequest::ApplyTransfer {
                credential: op_id(credential)?,
                card: CardTarget {
                    iccid: iccid.clone(),
                },
                applet: AppletRef::jpki(),
                application: bytes,
                access: provider::access_grant(&password, 5, 30 * 60_000)?,
            };
            let r = sp.send(&req, None).await?;
            write_grant(out, &r, json!({}), json_out)?;
            Ok(())
        }
        ProviderCmd::Wallet {
            iccid,
            member,
            ticket,
            points,
            password_file,
            out,
        } => {
            let password = read_secret(password_file)?;
            let mut updates = Vec::new();
            let mut add = |change: WalletChange| -> Result<(), Failure> {
                let mut id = [0u8; 8];
                getrandom::fill(&mut id).map_err(|e| e.to_string())?;
                updates.push(WalletUpdate { id, change });
                Ok(())
            };
            if let Some(m) = member {
                add(WalletChange::SetMemberId(m.clone()))?;
            }
            for t in ticket {
                add(WalletChange::AddTicket(t.clone()))?;
            }
            if let Some(p) = points {
                add(WalletChange::Points(*p))?;
            }
            let req = ControlRequest::WalletUpdate {
                card: CardTarget {
                    iccid: iccid.clone(),
                },
                instance: vec![0xF0, 0x4B, 0x41, 0x47, 0x49, 0x57, 0x4C, 0x01, 0x01],
                updates,
                access: provider::access_grant(&password, 5, 30 * 60_000)?,
            };
            let r = sp.send(&req, None).await?;
            write_grant(out, &r, json!({}), json_out)?;
            Ok(())
        }
        ProviderCmd::Cancel { op } => {
            let r = sp
                .send(&ControlRequest::Cancel { op: op_id(op)? }, None)
                .await?;
            show(json_out, &r.response)
        }
    }
}

pub(super) async fn mno_cmd(config: &Path, cmd: &MnoCmd, json_out: bool) -> Result<(), Failure> {
    let mno = load_party(config)?;
    let req = match cmd {
        MnoCmd::CreateSd {
            iccid,
            sd,
            provider,
            password_file,
            out,
        } => {
            let password = read_secret(password_file)?;
            let req = ControlRequest::CreateSecurityDomain {
                iccid: iccid.clone(),
                sd_aid: parse_hex("--sd", sd)?,
                privileges: vec![0x80, 0x40, 0x00],
                provider: party_id(provider)?,
                access: provider::access_grant(&password, 5, 30 * 60_000)?,
            };
            let r = mno.send(&req, None).await?;
            write_grant(out, &r, json!({}), json_out)?;
            return Ok(());
        }
        MnoCmd::RetireTicket { iccid, out } => {
            let req = ControlRequest::RetireTicket {
                iccid: iccid.clone(),
            };
            let r = mno.send(&req, None).await?;
            write_grant(out, &r, json!({}), json_out)?;
            return Ok(());
        }
        MnoCmd::RegisterCard {
            iccid,
            cin,
            sd,
            free_memory,
            card_certificate,
        } => ControlRequest::RegisterCard {
            iccid: iccid.clone(),
            cin: cin.clone(),
            sd_aid: parse_hex("--sd", sd)?,
            free_memory: *free_memory,
            card_certificate: card_certificate
                .as_deref()
                .map(|p| -> Result<Vec<u8>, Failure> {
                    let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
                    kagi_certs::pem_or_der(&bytes, "CERTIFICATE")
                        .map_err(|e| format!("{}: {e}", p.display()).into())
                })
                .transpose()?,
        },
        MnoCmd::CardLost { iccid } => ControlRequest::CardLost {
            iccid: iccid.clone(),
        },
        MnoCmd::SimChanged { old, new } => ControlRequest::SimChanged {
            old_iccid: old.clone(),
            new_iccid: new.clone(),
        },
        MnoCmd::Eligibility { iccid, memory } => ControlRequest::CheckEligibility {
            iccid: iccid.clone(),
            memory_needed: *memory,
        },
    };
    let r = mno.send(&req, None).await?;
    show(json_out, &r.response)
}
