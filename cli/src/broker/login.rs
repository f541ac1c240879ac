//! `kagi broker login`: a holder logs in with the JPKI card and starts a service session.

use super::*;

use crate::common::{read_secret, runtime};
use crate::{Failure, print_json};
use broker_protocol::api::{Act, ActResult, PasswordLogin};
use kagi_online::broker::BrokerClient;
use serde::Deserialize;
use serde_json::json;

/// Asks the holder to consent on the terminal (refused when there is none).
pub(super) fn ask_consent(service: &str) -> Result<(), Failure> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(format!(
            "the broker acts at {service} only with the holder's consent: give --consent"
        )
        .into());
    }
    eprint!("Let the broker authenticate you at {service}? [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err("not consented: nothing was done".into())
    }
}

/// What a service's login start gives (the example service's `POST /login/start`).
#[derive(Deserialize)]
pub(super) struct ServiceStart {
    nonce: Option<String>,
    challenge: Option<String>,
}

pub(super) async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<(u16, serde_json::Value), Failure> {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body)?)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = r.status().as_u16();
    let bytes = r.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({"text": String::from_utf8_lossy(&bytes)}));
    Ok((status, v))
}

pub(super) fn login(args: &LoginArgs, trace: bool, json_out: bool) -> Result<(), Failure> {
    if !args.consent {
        ask_consent(&args.service)?;
    }
    let ca = args.broker_ca.as_ref().map(std::fs::read).transpose()?;
    let client = BrokerClient::new(&args.broker, ca.as_deref())?;
    let http = kagi_online::tsm::client::http_client(None)?;
    runtime()?.block_on(async {
        // The service's challenge first (a service login), else what was given.
        let (nonce, challenge) = match &args.service_url {
            Some(url) => {
                let (status, v) = post_json(&http, &format!("{url}/login/start"), &json!({})).await?;
                if status != 200 {
                    return Err(format!("the service refused to start a login: {v}").into());
                }
                let s: ServiceStart = serde_json::from_value(v)?;
                (s.nonce, s.challenge)
            }
            None => (args.nonce.clone(), args.challenge.clone()),
        };
        let session = match (&args.holder, &args.password_file) {
            (Some(holder), Some(pw)) => {
                let password = read_secret(pw)?;
                client
                    .login_password(&PasswordLogin {
                        holder: holder.clone(),
                        password: password.to_string(),
                    })
                    .await?
            }
            _ => {
                let pin = args.pin.read(kagi::jpki::Pin::Auth)?;
                let mut ch = args.target.open(trace)?;
                let session = kagi_online::broker::login_with_card(&client, &mut ch, &pin).await;
                args.target.finish(&ch)?;
                session?
            }
        };
        let result: ActResult = client
            .act(&Act {
                session: session.session.clone(),
                service: args.service.clone(),
                consent: true,
                challenge,
                nonce: nonce.clone(),
            })
            .await?;
        let audit = if args.audit {
            Some(client.audit(&session.session).await?)
        } else {
            None
        };
        let service_answer = match &args.service_url {
            Some(url) => {
                let (status, v) = post_json(
                    &http,
                    &format!("{url}/login/finish"),
                    &json!({"nonce": nonce, "assertion": result.assertion, "mac": result.mac, "signature": result.signature, "code": result.code, "delivered": result.delivered}),
                )
                .await?;
                if status != 200 {
                    return Err(format!("the service refused the login: {v}").into());
                }
                Some(v)
            }
            None => None,
        };
        if json_out {
            print_json(json!({
                "assurance": session.assurance,
                "service": result.service,
                "method": result.method,
                "assertion": result.assertion,
                "mac": result.mac,
                "signature": result.signature,
                "code": result.code,
                "delivered": result.delivered,
                "service_answer": service_answer,
                "audit": audit.as_deref().map(super::admin::audit_json),
            }));
        } else {
            println!("logged in at the broker ({} assurance)", session.assurance.name());
            match (&service_answer, &result.assertion, &result.mac, &result.signature) {
                (Some(v), ..) => println!("{} accepted the login: {v}", args.service),
                (None, Some(a), ..) => println!("assertion for {}:\n{a}", args.service),
                (None, None, Some(m), _) => println!("MAC over the challenge: {m}"),
                (None, None, None, Some(s)) => println!("signature over the challenge: {s}"),
                _ if result.delivered => println!(
                    "the broker delivered the proof to {} itself (push mode)",
                    args.service
                ),
                _ => {
                    if let Some(c) = &result.code {
                        println!(
                            "one-time code for {} (the service redeems it at the broker): {c}",
                            args.service
                        );
                    }
                }
            }
            if let Some(a) = &audit {
                print_audit(a);
            }
        }
        Ok(())
    })
}
