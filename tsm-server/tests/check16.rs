//! The JPKI issuer's check of an application at the SP-TSM's `Apply`
//! ([`IssuerRequest::CheckApplication`], seed 004's ②③ before ④ in the on-card mode):
//! accepted with the signature certificate's serial and notAfter (read here from the
//! certificate with `x509-cert`), refused with the code an issue would get — a revoked card
//! (on the CA's revocation list, or recorded revoked at the issuer), an expired card, a forged
//! signature, another CA, a stale application, another SIM, another provider, a provider the
//! SP-TSM does not act for, an application used before —, audited either way, and spending
//! nothing: the same application then certifies the key the SIM made, once.

#[path = "oncard/mod.rs"]
mod oncard;

use oncard::*;

/// An application for `iccid` and `provider` made at `made`, signed with the card key under
/// a certificate `ca` issued with `serial`, valid from `from` to `until`.
#[allow(clippy::too_many_arguments)]
fn signed(
    ca: &TestCa,
    serial: u32,
    from: SystemTime,
    until: SystemTime,
    iccid: &str,
    provider: &str,
    made: SystemTime,
) -> Vec<u8> {
    use rsa::signature::{SignatureEncoding, Signer as _};
    let cert = ca
        .issue_sign(
            &cas().card_key.to_public_key(),
            &BasicFacts::synthetic(),
            serial,
            from,
            until,
        )
        .unwrap()
        .to_der()
        .unwrap();
    let body = Body::new(iccid, provider, "user-1", "holder@example.jp", made).unwrap();
    let key = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(cas().card_key.clone());
    let signature = key.sign(&body.signed_bytes().unwrap()).to_vec();
    Application {
        body,
        certificate: cert,
        signature,
    }
    .encode()
    .unwrap()
}

/// A valid application of the scenario's card under the signature CA.
fn valid(serial: u32, iccid: &str) -> Vec<u8> {
    let now = SystemTime::now();
    signed(
        &cas().sign,
        serial,
        now - Duration::from_secs(86_400),
        now + Duration::from_secs(30 * 86_400),
        iccid,
        SP,
        now,
    )
}

fn check(application: &[u8], provider: &str, iccid: &str) -> IssuerRequest {
    IssuerRequest::CheckApplication {
        application: application.to_vec(),
        provider: PartyId::new(provider).unwrap(),
        iccid: iccid.into(),
        moves: None,
    }
}

/// A transfer application (card of signature serial `serial`) of the credential on SIM
/// `from` to SIM `to`, made now.
fn transfer_application(serial: u32, from: &str, to: &str) -> Vec<u8> {
    use rsa::signature::{SignatureEncoding, Signer as _};
    let now = SystemTime::now();
    let cert = cas()
        .sign
        .issue_sign(
            &cas().card_key.to_public_key(),
            &BasicFacts::synthetic(),
            serial,
            now - Duration::from_secs(86_400),
            now + Duration::from_secs(30 * 86_400),
        )
        .unwrap()
        .to_der()
        .unwrap();
    let body = Body::new(to, SP, "user-1", "holder@example.jp", now).unwrap();
    let key = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(cas().card_key.clone());
    let signature = key
        .sign(&body.signed_bytes_transfer(from).unwrap())
        .to_vec();
    Application {
        body,
        certificate: cert,
        signature,
    }
    .encode()
    .unwrap()
}

/// The signature certificate's serial (upper-case hex of its DER integer's bytes, no zero
/// byte in front) and notAfter (Unix seconds), read with `x509-cert`.
fn sign_facts(application: &[u8]) -> (String, u64) {
    let app = Application::decode(application).unwrap();
    let cert = x509_cert::Certificate::from_der(&app.certificate).unwrap();
    let tbs = cert.tbs_certificate();
    let bytes = tbs.serial_number().as_bytes();
    let skip = bytes
        .iter()
        .take(bytes.len() - 1)
        .take_while(|b| **b == 0)
        .count();
    let not_after = tbs
        .validity()
        .not_after
        .to_system_time()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (hex::encode_upper(&bytes[skip..]), not_after)
}

async fn rows(w: &World, sql: &'static str) -> Vec<String> {
    w.issuer
        .db()
        .query(sql, vec![])
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            r.iter()
                .map(|v| match v {
                    kagi_db::Val::Int(i) => i.to_string(),
                    other => other.text(),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

#[tokio::test]
async fn a_checked_application_spends_nothing_and_then_certifies_once() {
    let w = world("check16-ok").await;
    let (mut ch, s) = sim(&[0x16, 0x21]);
    let app = valid(1621, &s.iccid);
    let (serial, not_after) = sign_facts(&app);
    // 1621 = 0x0655.
    assert_eq!(serial, "0655");
    let (crl_number, _) = w.issuer.crl().await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            w.send(&check(&app, SP, &s.iccid)).await,
            IssuerResponse::ApplicationChecked {
                sign_serial: serial.clone(),
                not_after,
            }
        );
    }
    assert_eq!(
        rows(&w, "SELECT count(*) FROM applications").await,
        ["0"],
        "nothing spent"
    );
    // Audited, but the CRL did not change: its number neither.
    assert_eq!(w.issuer.crl().await.unwrap().0, crl_number);
    let entry = format!(
        "application-checked|sign 0655 sim {} provider {SP}",
        s.iccid
    );
    assert_eq!(
        rows(&w, "SELECT event, detail FROM audit ORDER BY id").await,
        [entry.clone(), entry],
        "both checks audited"
    );
    // The same application certifies the key the SIM makes.
    let rid = IdempotencyKey::random().unwrap();
    let challenge = w.challenge(&s, rid).await;
    let proof = generate_on_card(&mut ch, &challenge);
    let answer = w
        .send(&IssuerRequest::Certify {
            application: app.clone(),
            provider: PartyId::new(SP).unwrap(),
            iccid: s.iccid.clone(),
            card_certificate: s.card_certificate.clone(),
            instance: AID.to_vec(),
            request_id: rid,
            nonce: challenge[65..].to_vec(),
            proof,
            moves: None,
        })
        .await;
    let IssuerResponse::Issued { credential, .. } = answer else {
        panic!("not certified: {answer:?}");
    };
    assert_eq!(credential.my_number_sign_serial, "0655");
    // Spent now: checked again, it is a replay.
    assert_eq!(
        code(w.send(&check(&app, SP, &s.iccid)).await),
        "application.replayed"
    );
    let audit = rows(&w, "SELECT event, detail FROM audit ORDER BY id").await;
    assert_eq!(
        audit.last().unwrap(),
        &format!(
            "application-refused|application.replayed sim {} provider {SP}",
            s.iccid
        )
    );
}

#[tokio::test]
async fn each_refusal_has_its_code_and_is_audited() {
    let w = world("check16-refused").await;
    let iccid = "8981100000000001621";
    let other_sim = "8981100000000001639";
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let another_ca = TestCa::new("Not the JPKI signature CA").unwrap();
    // On the signature CA's revocation list (decimal serials, one a line).
    std::fs::write(w.dir.join("revoked.txt"), "1631\n").unwrap();
    // Recorded revoked at the issuer (1632 = 0x0660), not on the list.
    w.issuer.revoke_sign_serial("0660", "test").await.unwrap();
    let mut forged = valid(1633, iccid);
    *forged.last_mut().unwrap() ^= 1;
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("application.revoked", valid(1631, iccid), SP, iccid),
        ("application.revoked", valid(1632, iccid), SP, iccid),
        (
            "application.expired",
            signed(
                &cas().sign,
                1634,
                now - 400 * day,
                now - day,
                iccid,
                SP,
                now,
            ),
            SP,
            iccid,
        ),
        ("application.bad-signature", forged, SP, iccid),
        (
            "application.unknown-issuer",
            signed(&another_ca, 1635, now - day, now + day, iccid, SP, now),
            SP,
            iccid,
        ),
        (
            "application.stale",
            signed(
                &cas().sign,
                1636,
                now - day,
                now + day,
                iccid,
                SP,
                now - Duration::from_secs(1200),
            ),
            SP,
            iccid,
        ),
        ("application.wrong-sim", valid(1637, iccid), SP, other_sim),
        (
            "application.wrong-provider",
            signed(
                &cas().sign,
                1638,
                now - day,
                now + day,
                iccid,
                "sp:other",
                now,
            ),
            SP,
            iccid,
        ),
        (
            "issuer.not-your-provider",
            signed(
                &cas().sign,
                1639,
                now - day,
                now + day,
                iccid,
                "sp:other",
                now,
            ),
            "sp:other",
            iccid,
        ),
    ];
    for (want, app, provider, sim) in &cases {
        assert_eq!(
            code(w.send(&check(app, provider, sim)).await),
            *want,
            "{want}"
        );
    }
    // The control: the same CA, card and SIM, a fresh serial — accepted.
    assert!(matches!(
        w.send(&check(&valid(1640, iccid), SP, iccid)).await,
        IssuerResponse::ApplicationChecked { .. }
    ));
    let refused = rows(
        &w,
        "SELECT actor, detail FROM audit WHERE event = 'application-refused' ORDER BY id",
    )
    .await;
    let expected: Vec<String> = cases
        .iter()
        .map(|(code, _, provider, sim)| format!("tsm:kagi|{code} sim {sim} provider {provider}"))
        .collect();
    assert_eq!(refused, expected);
    assert_eq!(
        rows(
            &w,
            "SELECT count(*) FROM audit WHERE event = 'application-checked'"
        )
        .await,
        ["1"]
    );
    for sql in [
        "SELECT count(*) FROM applications",
        "SELECT count(*) FROM challenges",
        "SELECT count(*) FROM links",
    ] {
        assert_eq!(rows(&w, sql).await, ["0"], "{sql}");
    }
}

/// A transfer application checked at Apply with the certificate it moves: accepted for the
/// card the certificate is linked to and the SIM it is on, spending nothing; refused for
/// another card (`application.other-card`), another old SIM than the one signed for
/// (`application.bad-signature`: the signature binds it), a first application passed off as
/// a transfer (`application.bad-signature`: another signature domain) and a certificate the
/// issuer never made for this SP-TSM (`issuer.unknown-certificate`).
#[tokio::test]
async fn a_transfer_application_is_checked_with_the_certificate_it_moves() {
    let w = world("check16-transfer").await;
    let (mut old_ch, old) = sim(&[0x16, 0x31]);
    let (_, new) = sim(&[0x16, 0x32]);
    let rid = IdempotencyKey::random().unwrap();
    let challenge = w.challenge(&old, rid).await;
    let proof = generate_on_card(&mut old_ch, &challenge);
    let IssuerResponse::Issued { serial, .. } = w.certify(&old, 1630, rid, &challenge, proof).await
    else {
        panic!("not issued");
    };
    let ask = |application: Vec<u8>, from_serial: &str, from_iccid: &str| {
        IssuerRequest::CheckApplication {
            application,
            provider: PartyId::new(SP).unwrap(),
            iccid: new.iccid.clone(),
            moves: Some(tsm_protocol::issuer::Moves {
                from_serial: from_serial.into(),
                from_iccid: from_iccid.into(),
            }),
        }
    };
    let app = transfer_application(1630, &old.iccid, &new.iccid);
    let (sign_serial, not_after) = sign_facts(&app);
    assert_eq!(
        w.send(&ask(app.clone(), &serial, &old.iccid)).await,
        IssuerResponse::ApplicationChecked {
            sign_serial,
            not_after
        }
    );
    assert_eq!(
        rows(&w, "SELECT count(*) FROM applications").await,
        ["1"],
        "only the first download's application is spent"
    );
    assert_eq!(
        code(
            w.send(&ask(
                transfer_application(1631, &old.iccid, &new.iccid),
                &serial,
                &old.iccid
            ))
            .await
        ),
        "application.other-card"
    );
    assert_eq!(
        code(w.send(&ask(app.clone(), &serial, &new.iccid)).await),
        "application.bad-signature"
    );
    assert_eq!(
        code(
            w.send(&ask(valid(1630, &new.iccid), &serial, &old.iccid))
                .await
        ),
        "application.bad-signature"
    );
    assert_eq!(
        code(w.send(&ask(app, "7FFFFFFF", &old.iccid)).await),
        "issuer.unknown-certificate"
    );
}
