//! Issue #16's lifecycle at the issuer: racing revocations and suspensions of one phone
//! certificate, and the PIN reset that needs a fresh signature of the same card.

use super::*;

/// Revocations (a lost SIM, reported several times at once; the card's signature
/// certificate), suspensions and resumptions of one phone certificate, all racing: the link
/// ends revoked; exactly one revocation took it (one audit entry naming the phone says so,
/// and the link's reason is that one's); suspensions and resumptions alternate and none comes
/// after it; the CRL (parsed with x509-cert) lists the certificate once, with that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_revocations_and_suspensions_act_once() {
    use tsm_server::issuer::store;
    let w = Arc::new(world("life16-race").await);
    let IssuerResponse::Issued { serial, .. } =
        w.send(&w.issue_request(valid_application(702), SP)).await
    else {
        panic!("not issued");
    };
    let mut tasks = Vec::new();
    for i in 0..12 {
        let w = w.clone();
        let serial = serial.clone();
        tasks.push(tokio::spawn(async move {
            let req = match i % 3 {
                0 => IssuerRequest::Withdraw {
                    serial,
                    reason: "sim-lost: card-lost (tsm:kagi-mobile)".into(),
                },
                1 => IssuerRequest::Suspension {
                    serial,
                    hold: Some(true),
                },
                _ => IssuerRequest::Suspension {
                    serial,
                    hold: Some(false),
                },
            };
            w.send(&req).await
        }));
    }
    let revoker = {
        let w = w.clone();
        tokio::spawn(async move { w.issuer.revoke_sign_serial("02BE", "sign-ca").await })
    };
    for t in tasks {
        assert!(!matches!(t.await.unwrap(), IssuerResponse::Rejected(_)));
    }
    revoker.await.unwrap().unwrap();

    let link = store::link(w.issuer.db(), &serial).await.unwrap().unwrap();
    assert_eq!(link.state, "revoked");
    let trail = store::audit_trail(w.issuer.db()).await.unwrap();
    let about_phone: Vec<&str> = trail
        .iter()
        .filter(|(_, _, _, d)| d.starts_with(&format!("phone {serial} ")))
        .map(|(_, _, e, _)| e.as_str())
        .filter(|e| *e != "issued")
        .collect();
    let revoked_by_loss = about_phone.iter().filter(|e| **e == "revoked").count();
    assert!(revoked_by_loss <= 1, "{about_phone:?}");
    let reason = link.reason.clone().unwrap();
    assert_eq!(
        reason,
        if revoked_by_loss == 1 {
            "sim-lost"
        } else {
            "sign-revoked"
        }
    );
    let holds: Vec<&str> = about_phone
        .iter()
        .take_while(|e| **e != "revoked")
        .copied()
        .collect();
    assert!(
        about_phone[holds.len()..].iter().all(|e| *e == "revoked"),
        "{about_phone:?}"
    );
    for (i, e) in holds.iter().enumerate() {
        assert_eq!(
            *e,
            if i % 2 == 0 { "held" } else { "released" },
            "{holds:?}"
        );
    }

    let (_, der) = w.issuer.crl().await.unwrap();
    let crl: x509_cert::crl::CertificateList =
        x509_cert::crl::CertificateList::from_der(&der).unwrap();
    let entries = crl.tbs_cert_list.revoked_certificates.unwrap_or_default();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        hex::encode_upper(entries[0].serial_number.as_bytes()),
        serial
    );
    // reasonCode: keyCompromise (1) for the loss, privilegeWithdrawn (9) for the card.
    let ext = entries[0].crl_entry_extensions.as_ref().unwrap();
    let code = ext[0].extn_value.as_bytes();
    assert_eq!(code, [0x0A, 0x01, if reason == "sim-lost" { 1 } else { 9 }]);
}

/// A pin-reset application (its own signature domain) for the SIM, signed with the card's
/// key, carrying `cert`, made at `made`.
fn pin_reset_application(cert: Vec<u8>, made: SystemTime) -> Vec<u8> {
    use kagi_certs::application::Kind;
    use rsa::signature::{SignatureEncoding, Signer as _};
    let body = Body::new(ICCID, SP, "user-1", "holder@example.jp", made).unwrap();
    let key = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(cas().card_key.clone());
    let signature = key
        .sign(&body.signed_bytes_for(Kind::PinReset).unwrap())
        .to_vec();
    Application {
        body,
        certificate: cert,
        signature,
    }
    .encode()
    .unwrap()
}

/// A PIN reset only on a fresh pin-reset application signed with the card the phone
/// certificate is linked to: the new PIN opens with the SIM's key for the PIN file and is the
/// holder's letter, and the same request again gets the same answer; an issue application,
/// another card's, a stale one, a replayed one and one for a revoked phone certificate are
/// refused, each with its own code.
#[tokio::test]
async fn a_pin_reset_needs_a_fresh_signature_of_the_same_card() {
    let w = world("pin-reset").await;
    let now = SystemTime::now();
    let cert = |serial| {
        sign_cert(
            &cas().sign,
            serial,
            now - Duration::from_secs(86_400),
            now + Duration::from_secs(30 * 86_400),
        )
    };
    let IssuerResponse::Issued { serial, .. } =
        w.send(&w.issue_request(application(cert(705)), SP)).await
    else {
        panic!("not issued");
    };
    let reset = |application: Vec<u8>, key: u8| IssuerRequest::ResetPin {
        application,
        serial: serial.clone(),
        card_certificate: w.sim_cert.clone(),
        instance: card_wire::jpki::JPKI_AID.to_vec(),
        request_id: IdempotencyKey([key; 16]),
    };
    let code = |a: IssuerResponse| match a {
        IssuerResponse::Rejected(e) => e.code,
        other => panic!("not refused: {other:?}"),
    };

    let fresh = pin_reset_application(cert(705), now);
    let IssuerResponse::PinReset {
        serial: got,
        sealed_pin,
    } = w.send(&reset(fresh.clone(), 3)).await
    else {
        panic!("no PIN");
    };
    assert_eq!(got, serial);
    let pin = card_wire::content::open(
        &w.sim_key,
        &card_wire::content::Binding {
            iccid: ICCID,
            card_serial: &[7],
            instance: &card_wire::jpki::JPKI_AID,
            role: card_wire::content::Role::PinEf(card_wire::jpki::EF_AUTH_PIN),
            request_id: &[3; 16],
        },
        &sealed_pin,
    )
    .unwrap();
    let letter = std::fs::read_to_string(w.dir.join(format!("pin-mailer/{serial}.pin"))).unwrap();
    assert_eq!(letter.trim().as_bytes(), pin.as_slice());

    // The same request again (the answer was lost): the same sealed PIN, no new letter.
    let IssuerResponse::PinReset {
        sealed_pin: again, ..
    } = w.send(&reset(fresh.clone(), 3)).await
    else {
        panic!("not answered again");
    };
    assert_eq!(again, sealed_pin);
    assert_eq!(
        std::fs::read_to_string(w.dir.join(format!("pin-mailer/{serial}.pin"))).unwrap(),
        letter
    );
    // Its key with another application is a conflict; the application under another key a
    // replay.
    assert_eq!(
        code(
            w.send(&reset(pin_reset_application(cert(705), now), 3))
                .await
        ),
        "protocol.idempotency-conflict"
    );
    assert_eq!(code(w.send(&reset(fresh, 4)).await), "application.replayed");
    // An issue application is no pin-reset one (another signature domain).
    assert_eq!(
        code(w.send(&reset(application(cert(705)), 5)).await),
        "application.bad-signature"
    );
    assert_eq!(
        code(
            w.send(&reset(pin_reset_application(cert(706), now), 6))
                .await
        ),
        "application.other-card"
    );
    let stale = now - Duration::from_secs(3600);
    assert_eq!(
        code(
            w.send(&reset(pin_reset_application(cert(705), stale), 7))
                .await
        ),
        "application.stale"
    );
    w.issuer
        .revoke_sign_serial("02C1", "sign-ca")
        .await
        .unwrap();
    assert_eq!(
        code(
            w.send(&reset(pin_reset_application(cert(705), now), 8))
                .await
        ),
        "issuer.not-active"
    );
    // No letter changed after the one reset that passed.
    assert_eq!(
        std::fs::read_to_string(w.dir.join(format!("pin-mailer/{serial}.pin"))).unwrap(),
        letter
    );
}
