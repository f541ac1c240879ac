//! The JPKI issuer's on-card mode against simulated SIMs (`applet-sim`, SQLite): the SIM's
//! JPKI applet generates the phone's key under the provider's secure channel and proves it
//! (`card_wire::keygen`); the issuer certifies that key and seals only the PIN. The applet
//! then signs with the key and the signature verifies under the certificate's public key
//! (read from the certificate here with `x509-cert` and checked with `p256`). Refused, each
//! with its own code: a substituted public key, a proof another SIM made, a replayed nonce.
//! Neither the issuer's database nor its answer holds the private key (read out of the
//! simulated SIM's store for the comparison).

#[path = "oncard/mod.rs"]
mod oncard;

use oncard::*;

#[tokio::test]
async fn the_key_made_on_the_sim_is_certified_and_signs() {
    let w = world("happy").await;
    let (mut ch, s) = sim(&[0x16, 0x01]);
    let rid = IdempotencyKey::random().unwrap();
    let challenge = w.challenge(&s, rid).await;
    let proof = generate_on_card(&mut ch, &challenge);
    let IssuerResponse::Issued {
        credential, serial, ..
    } = w.certify(&s, 1601, rid, &challenge, proof.clone()).await
    else {
        panic!("not issued");
    };
    assert!(credential.sealed_key.is_empty(), "nothing private sealed");
    // The certificate's key is the point the card answered and the key on the card.
    let cert = x509_cert::Certificate::from_der(&credential.certificate).unwrap();
    let spki = cert.tbs_certificate().subject_public_key_info();
    let cert_point = spki.subject_public_key.raw_bytes().to_vec();
    assert_eq!(cert_point, proof[..65]);
    let scalar = key_on_card(ch.transport());
    let on_card = p256::SecretKey::from_slice(&scalar).unwrap();
    use p256::elliptic_curve::sec1::ToSec1Point;
    assert_eq!(
        on_card.public_key().to_sec1_point(false).as_bytes(),
        &cert_point[..]
    );
    // Written as the SP-TSM writes it; the PIN is the mailed one; the applet signs with the
    // key and the signature verifies under the certificate's public key.
    write_credential(&mut ch, &rid, &credential);
    let pin = std::fs::read_to_string(w.dir.join(format!("pin-mailer/{serial}.pin"))).unwrap();
    kagi::jpki::select(&mut ch).unwrap();
    assert_eq!(
        kagi::jpki::read_der(&mut ch, card_wire::jpki::EF_AUTH_CERT).unwrap(),
        credential.certificate
    );
    kagi::jpki::verify(
        &mut ch,
        kagi::jpki::Pin::Auth,
        &Zeroizing::new(pin.trim().as_bytes().to_vec()),
    )
    .unwrap();
    let message = b"a broker login challenge";
    let digest: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(message).into()
    };
    let sig = kagi::jpki::sign(&mut ch, kagi::jpki::Pin::Auth, &digest).unwrap();
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&cert_point).unwrap();
    let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
    use p256::ecdsa::signature::Verifier;
    vk.verify(message, &sig).unwrap();
    // The issuer's database and its answer hold no private key.
    let db = std::fs::read(w.dir.join("issuer.db")).unwrap();
    let enc = tsm_protocol::codec::encode(&credential).unwrap();
    for hay in [&db, &enc] {
        assert!(!hay.windows(32).any(|x| x == &scalar[..]));
    }
    // The applet is personalised now: the key is not generated again this way.
    let rid2 = IdempotencyKey::random().unwrap();
    let challenge2 = w.challenge(&s, rid2).await;
    let script = tsm_protocol::recipes::jpki_generate_script(&challenge2);
    let refused = with_sd(&mut ch, |sc| {
        manage::personalize(sc, &AID, &card_wire::gp::blocks(&script), false)
    });
    assert!(refused.is_err());
    assert_eq!(key_on_card(ch.transport()), scalar);
}

#[tokio::test]
async fn a_substituted_key_another_sims_proof_and_a_replayed_nonce_are_refused() {
    use p256::ecdsa::signature::Signer as _;
    let w = world("refused").await;
    let (mut ch, a) = sim(&[0x16, 0x02]);
    let (mut other, _b) = sim(&[0x16, 0x03]);
    // A public key swapped on the way (the SP-TSM's or a relay's own).
    let rid = IdempotencyKey::random().unwrap();
    let challenge = w.challenge(&a, rid).await;
    let proof = generate_on_card(&mut ch, &challenge);
    let mine = p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
    let mine_point = mine
        .verifying_key()
        .to_sec1_point(false)
        .as_bytes()
        .to_vec();
    let mut swapped = proof.clone();
    swapped[..65].copy_from_slice(&mine_point);
    assert_eq!(
        code(w.certify(&a, 1602, rid, &challenge, swapped).await),
        "keygen.possession"
    );
    // A refused proof spent its challenge: the same nonce again is a replay.
    assert_eq!(
        code(w.certify(&a, 1603, rid, &challenge, proof.clone()).await),
        "keygen.replayed"
    );
    // The key swapped with a proof of possession of its own: not this SIM's word.
    let rid = IdempotencyKey::random().unwrap();
    let challenge = w.challenge(&a, rid).await;
    let proof = generate_on_card(&mut ch, &challenge);
    let pop: p256::ecdsa::Signature = mine.sign(&card_wire::keygen::pop_message(
        &mine_point,
        &challenge[65..],
    ));
    let forged = [&mine_point[..], &pop.to_bytes()[..], &proof[129..]].concat();
    assert_eq!(
        code(w.certify(&a, 1604, rid, &challenge, forged).await),
        "keygen.not-this-sim"
    );
    // Another SIM's applet answering this SIM's challenge.
    let rid = IdempotencyKey::random().unwrap();
    let challenge = w.challenge(&a, rid).await;
    let from_other = generate_on_card(&mut other, &challenge);
    assert_eq!(
        code(w.certify(&a, 1605, rid, &challenge, from_other).await),
        "keygen.not-this-sim"
    );
    // A good proof is certified once; its nonce under another request is a replay.
    let rid = IdempotencyKey::random().unwrap();
    let challenge = w.challenge(&a, rid).await;
    let proof = generate_on_card(&mut ch, &challenge);
    assert!(matches!(
        w.certify(&a, 1606, rid, &challenge, proof.clone()).await,
        IssuerResponse::Issued { .. }
    ));
    let rid2 = IdempotencyKey::random().unwrap();
    assert_eq!(
        code(w.certify(&a, 1607, rid2, &challenge, proof.clone()).await),
        "keygen.replayed"
    );
    // A nonce the issuer never handed out.
    let mut made_up = challenge.clone();
    made_up[70] ^= 1;
    assert_eq!(
        code(w.certify(&a, 1608, rid2, &made_up, proof).await),
        "keygen.unknown-challenge"
    );
}

/// Eight Certify requests racing with one challenge and request id (an SP-TSM resending):
/// one certificate, one spent nonce, the same answer to all; a Certify racing under another
/// request id with the same nonce is refused.
#[tokio::test]
async fn racing_certifies_with_one_challenge_issue_once() {
    let w = world("race").await;
    let (mut ch, a) = sim(&[0x16, 0x04]);
    let rid = IdempotencyKey::random().unwrap();
    let challenge = w.challenge(&a, rid).await;
    let proof = generate_on_card(&mut ch, &challenge);
    let req = IssuerRequest::Certify {
        application: application(&a.iccid, 1609),
        provider: PartyId::new(SP).unwrap(),
        iccid: a.iccid.clone(),
        card_certificate: a.card_certificate.clone(),
        instance: AID.to_vec(),
        request_id: rid,
        nonce: challenge[65..].to_vec(),
        proof: proof.clone(),
        moves: None,
    };
    let mut other = req.clone();
    if let IssuerRequest::Certify { request_id, .. } = &mut other {
        *request_id = IdempotencyKey::random().unwrap();
    }
    let same = (0..8).map(|_| w.send(&req));
    let (answers, stray) = tokio::join!(futures_join_all(same.collect()), w.send(&other));
    let serials: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|a| match a {
            IssuerResponse::Issued { serial, .. } => serial.clone(),
            other => panic!("not issued: {other:?}"),
        })
        .collect();
    assert_eq!(serials.len(), 1, "one certificate for all eight");
    assert!(matches!(
        code(stray).as_str(),
        "keygen.replayed" | "keygen.unknown-challenge"
    ));
    let links = w
        .issuer
        .db()
        .query("SELECT count(*) FROM links", vec![])
        .await
        .unwrap();
    assert_eq!(links[0][0].int(), 1);
}

/// The point a certificate certifies (uncompressed SEC1).
fn certified_point(der: &[u8]) -> Vec<u8> {
    let cert = x509_cert::Certificate::from_der(der).unwrap();
    cert.tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes()
        .to_vec()
}

/// A Certify whose answer is lost (the issuer issued, the SP-TSM never saved it): its
/// repetition is answered with the same certificate; the SP-TSM's next session makes the key
/// again against a new challenge under the same request, and the issuer certifies the new key
/// and revokes the first certificate in the same transaction (audited `withdrawn`) — one
/// active certificate for the request, none left valid undelivered. A stale copy of the
/// first Certify changes nothing (its nonce is spent); another SIM under the same request id
/// is still an idempotency conflict.
#[tokio::test]
async fn a_key_made_again_after_a_lost_answer_replaces_the_first_certificate() {
    use tsm_server::issuer::store;
    let w = world("lost").await;
    let (mut ch, a) = sim(&[0x16, 0x05]);
    let rid = IdempotencyKey::random().unwrap();
    let app = application(&a.iccid, 1610);
    let certify = |challenge: &[u8], proof: Vec<u8>| IssuerRequest::Certify {
        application: app.clone(),
        provider: PartyId::new(SP).unwrap(),
        iccid: a.iccid.clone(),
        card_certificate: a.card_certificate.clone(),
        instance: AID.to_vec(),
        request_id: rid,
        nonce: challenge[65..].to_vec(),
        proof,
        moves: None,
    };
    let issued = |r: IssuerResponse| match r {
        IssuerResponse::Issued {
            serial, credential, ..
        } => (serial, credential.certificate),
        other => panic!("not issued: {other:?}"),
    };
    let c1 = w.challenge(&a, rid).await;
    let p1 = generate_on_card(&mut ch, &c1);
    let first = certify(&c1, p1.clone());
    let (s1, cert1) = issued(w.send(&first).await);
    assert_eq!(certified_point(&cert1), p1[..65]);
    // The same Certify again (a retry with the same key): the same certificate.
    assert_eq!(issued(w.send(&first).await), (s1.clone(), cert1.clone()));

    // The answer never reached the SP-TSM: the key is made again under the same request.
    let c2 = w.challenge(&a, rid).await;
    let p2 = generate_on_card(&mut ch, &c2);
    assert_ne!(p1[..65], p2[..65], "a new key");
    let second = certify(&c2, p2.clone());
    let (s2, cert2) = issued(w.send(&second).await);
    assert_ne!(s2, s1);
    assert_eq!(certified_point(&cert2), p2[..65]);
    use p256::elliptic_curve::sec1::ToSec1Point;
    let on_card = p256::SecretKey::from_slice(&key_on_card(ch.transport())).unwrap();
    assert_eq!(
        on_card.public_key().to_sec1_point(false).as_bytes(),
        &p2[..65],
        "the certified key is the one on the SIM now"
    );
    let old = store::link(w.issuer.db(), &s1).await.unwrap().unwrap();
    assert_eq!(old.state, "revoked");
    assert_eq!(old.reason.as_deref(), Some("withdrawn"));
    let new = store::link(w.issuer.db(), &s2).await.unwrap().unwrap();
    assert_eq!(new.state, "active");
    let active = w
        .issuer
        .db()
        .query("SELECT count(*) FROM links WHERE state = 'active'", vec![])
        .await
        .unwrap();
    assert_eq!(active[0][0].int(), 1, "one active certificate");
    let trail = store::audit_trail(w.issuer.db()).await.unwrap();
    assert_eq!(
        trail
            .iter()
            .filter(|(_, _, event, detail)| event == "withdrawn" && detail.contains(&s1))
            .count(),
        1,
        "{trail:?}"
    );

    // Its retry: the new certificate again. A stale copy of the first: refused, nothing moves.
    assert_eq!(issued(w.send(&second).await), (s2.clone(), cert2.clone()));
    assert_eq!(code(w.send(&first).await), "keygen.replayed");
    let new = store::link(w.issuer.db(), &s2).await.unwrap().unwrap();
    assert_eq!(new.state, "active");
    assert_eq!(issued(w.send(&second).await), (s2.clone(), cert2));

    // Another SIM under the same request id is another request.
    let (mut ch_b, b) = sim(&[0x16, 0x06]);
    let cb = w.challenge(&b, rid).await;
    let pb = generate_on_card(&mut ch_b, &cb);
    let mut other = certify(&cb, pb);
    if let IssuerRequest::Certify {
        iccid,
        card_certificate,
        ..
    } = &mut other
    {
        iccid.clone_from(&b.iccid);
        card_certificate.clone_from(&b.card_certificate);
    }
    assert_eq!(code(w.send(&other).await), "protocol.idempotency-conflict");
    let links = w
        .issuer
        .db()
        .query("SELECT count(*) FROM links", vec![])
        .await
        .unwrap();
    assert_eq!(links[0][0].int(), 2);
}

/// Awaits every future (in this task: the issuer's work interleaves at its awaits).
async fn futures_join_all<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = fs.into_iter().map(Box::pin).collect();
    let mut out = Vec::new();
    // Polled together, so each request's database steps interleave with the others'.
    let mut done: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, f) in pinned.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(done.into_iter().flatten());
    out
}

#[path = "csr16/supersede.rs"]
mod supersede;
