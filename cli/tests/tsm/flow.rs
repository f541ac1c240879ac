//! The whole over-the-air flow on SQLite and on PostgreSQL.

use super::*;

async fn full_flow(backend: Backend, name: &str) {
    let log = tsm_log();
    let world = World::new(name);
    let server = start(&world, &backend, 0).await;
    let url = server.url.clone();
    let sp = world.client_party(&world.sp, &url);
    let mut sim = provision(b"phone-1", &PROVIDER_SD, &provider_keys(master(), 0x31)).unwrap();
    register(&world, &url, &sim).await;

    // Issue, download, receipt.
    let iss = issue(&world, &sp, &sim.iccid).await;
    let mut capture = Vec::new();
    let out = download(
        &url,
        &mut sim.card,
        &iss.ticket,
        &iss.code,
        Some(&mut capture),
    )
    .await;
    assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);
    assert!(out.round_trips <= 6, "{} round trips", out.round_trips);
    let v = operation(&sp, iss.op).await;
    assert_eq!(v.state, OpState::Completed);
    let receipt = provider::check_receipt(
        v.receipt.as_ref().unwrap(),
        &sp.trust,
        &iss.op,
        iss.request,
        &iss.cert,
    )
    .unwrap();
    assert_eq!(receipt.cin, sim.cin);
    assert_eq!(receipt.my_number_sign_serial, "0ABCDEF1");
    // The content keys the two values were sealed under (worked out from the card's key).
    let key_ck = derived_key(&sim.card, &sim.iccid, [0x01, 0x00, 0x17], &iss.sealed[0]);
    let pin_ck = derived_key(&sim.card, &sim.iccid, [0x02, 0x00, 0x18], &iss.sealed[1]);
    assert_ne!(key_ck, pin_ck, "each sealed value has its own key");
    // What must be nowhere but on the card: the private key, the PIN in any form a command
    // would carry it, the content keys. Not in what the relay carried, not in the TSM's
    // database (the SQLite file and its journal, every table) — and the sealed values
    // themselves are no longer in any table once the download is done.
    let secrets = [
        ("private key", &iss.key[..]),
        ("PIN record", &[0x00, 0x18, b'2', b'5', b'8', b'0'][..]),
        ("key's content key", &key_ck[..]),
        ("PIN's content key", &pin_ck[..]),
    ];
    let mut places: Vec<(String, Vec<u8>)> = vec![("relay capture".into(), capture.clone())];
    if let Backend::Sqlite(db) = &backend {
        for f in [db.clone(), db.with_extension("db-wal")] {
            if let Ok(bytes) = std::fs::read(&f) {
                places.push((f.display().to_string(), bytes));
            }
        }
    }
    places.push(("database rows".into(), table_bytes(&backend).await));
    let logged = log.lock().unwrap().clone();
    assert!(
        String::from_utf8_lossy(&logged).contains("operation completed"),
        "the TSM's log is captured"
    );
    // In the log, as bytes and as hex either way.
    places.push(("TSM log".into(), logged));
    let hex_forms: Vec<(String, Vec<u8>)> = secrets
        .iter()
        .flat_map(|(what, s)| {
            [
                (format!("{what} (hex)"), hex::encode(s).into_bytes()),
                (format!("{what} (HEX)"), hex::encode_upper(s).into_bytes()),
            ]
        })
        .collect();
    let mut needles: Vec<(String, Vec<u8>)> = secrets
        .iter()
        .map(|(w, s)| (w.to_string(), s.to_vec()))
        .collect();
    needles.extend(hex_forms);
    for (place, hay) in &places {
        for (what, needle) in &needles {
            assert!(
                !hay.windows(needle.len()).any(|w| w == needle.as_slice()),
                "the {what} is in the {place}"
            );
        }
    }
    let rows = table_bytes(&backend).await;
    for (what, sealed) in [
        ("sealed key", &iss.sealed[0]),
        ("sealed PIN", &iss.sealed[1]),
    ] {
        assert!(
            !rows.windows(32).any(|w| w == &sealed[sealed.len() - 32..]),
            "the {what} is still kept after the download"
        );
    }
    // The ticket is spent: a second download with it is refused.
    let again = download(&url, &mut sim.card, &iss.ticket, &iss.code, None).await;
    assert_eq!(again.outcome, StopOutcome::Refused);

    // The holder uses it; the eligibility read says eligible.
    support::assert_verdict(
        &mut sim.card,
        world.ca.certificate(),
        None,
        kagi::eligibility::Verdict::Eligible,
    );

    // Protocol checks: a replay, an altered request, the wrong recipient.
    let (req, _, _, rid) = issue_request(&world, &sim.iccid, b"1111");
    let out = tsm_protocol::control::sign_request(
        &sp.signer,
        &sp.tsm,
        &req,
        Some(rid),
        tsm_protocol::signing::now_ms(),
        60_000,
    )
    .unwrap();
    let first = sp.client.post("/v1/control", &out.bytes).await.unwrap().0;
    let first = tsm_protocol::control::open_answer(
        &first,
        &out.header,
        &sp.trust,
        tsm_protocol::signing::now_ms(),
    )
    .unwrap();
    assert!(
        matches!(first, ControlResponse::Accepted { .. }),
        "{first:?}"
    );
    let replay = sp.client.post("/v1/control", &out.bytes).await.unwrap().0;
    let replay = tsm_protocol::control::open_answer(
        &replay,
        &out.header,
        &sp.trust,
        tsm_protocol::signing::now_ms(),
    )
    .unwrap();
    assert!(
        matches!(replay, ControlResponse::Rejected(ref e) if e.code == "protocol.replayed"),
        "{replay:?}"
    );
    let mut altered = out.bytes.clone();
    let n = altered.len();
    altered[n / 2] ^= 0x40;
    let r = sp.client.post("/v1/control", &altered).await;
    match r {
        Ok((b, _)) => {
            let a = tsm_protocol::control::open_answer(
                &b,
                &out.header,
                &sp.trust,
                tsm_protocol::signing::now_ms(),
            );
            assert!(matches!(a, Ok(ControlResponse::Rejected(_))), "{a:?}");
        }
        Err(e) => assert!(e.to_string().contains("refused"), "{e}"),
    }
    let elsewhere = tsm_protocol::control::sign_request(
        &sp.signer,
        &party("tsm:other"),
        &ControlRequest::CheckStatus { credential: iss.op },
        None,
        tsm_protocol::signing::now_ms(),
        60_000,
    )
    .unwrap();
    let b = sp
        .client
        .post("/v1/control", &elsewhere.bytes)
        .await
        .unwrap()
        .0;
    let mut t2 = Trust::new();
    t2.add(world.tsm.party().clone(), *world.tsm.verifying_key());
    let env = tsm_protocol::signing::verify_document::<ControlResponse>(
        &tsm_protocol::Sealed::from_bytes(&b).unwrap(),
        tsm_protocol::Kind::ControlResponse,
        &t2,
    )
    .unwrap();
    assert!(
        matches!(env.body, ControlResponse::Rejected(ref e) if e.code == "protocol.misdirected"),
        "{:?}",
        env.body
    );
    // Idempotency: the same key with another request conflicts.
    let ControlResponse::Accepted { op: pending, .. } = first else {
        unreachable!()
    };
    let (other_req, _, _, _) = issue_request(&world, &sim.iccid, b"2222");
    let conflict = sp
        .send(&other_req, out.header.idempotency_key)
        .await
        .unwrap()
        .response;
    assert!(
        matches!(conflict, ControlResponse::Rejected(ref e) if e.code == "protocol.idempotency-conflict"),
        "{conflict:?}"
    );
    // The pending issue is cancelled.
    let c = sp
        .send(&ControlRequest::Cancel { op: pending }, None)
        .await
        .unwrap()
        .response;
    assert!(
        matches!(c, ControlResponse::Operation(ref v) if v.state == OpState::Cancelled),
        "{c:?}"
    );

    // Revocation: at once at the TSM and in its list; the applet goes from the card the next
    // time the provider's session reaches it (here a wallet update).
    let r = ask(
        &sp,
        &ControlRequest::Revoke {
            credential: iss.op,
            reason: RevokeReason::CardLost,
        },
    )
    .await;
    let ControlResponse::Credential(status) = r else {
        panic!("{r:?}")
    };
    assert_eq!(status.state, "revoked");
    assert!(status.card_deletion_pending);
    let list = sp.client.get_text("/v1/revoked").await.unwrap();
    assert!(list.contains("0x12345678"), "{list}");
    support::assert_verdict(
        &mut sim.card,
        world.ca.certificate(),
        Some(&std::fs::read_to_string(world.dir.join("revoked.txt")).unwrap()),
        kagi::eligibility::Verdict::Revoked,
    );
    let wallet = [0xF0, 0x4B, 0x41, 0x47, 0x49, 0x57, 0x4C, 0x01, 0x01];
    let w = sp
        .send(
            &ControlRequest::WalletUpdate {
                card: CardTarget {
                    iccid: sim.iccid.clone(),
                },
                instance: wallet.to_vec(),
                updates: vec![tsm_protocol::control::WalletUpdate {
                    id: [1; 8],
                    change: tsm_protocol::control::WalletChange::Points(120),
                }],
                access: provider::access_grant(PASSWORD, 3, 600_000).unwrap(),
            },
            None,
        )
        .await
        .unwrap()
        .response;
    let ControlResponse::Accepted {
        op: wop,
        device_ticket: Some(wt),
        access_code: Some(wc),
        ..
    } = w
    else {
        panic!("{w:?}")
    };
    // A wrong code first: counted, then the right one.
    let client = Client::new(&url, Link::default());
    let mut tries = vec![
        UserCredentials {
            access_code: wc.clone(),
            password: PASSWORD.into(),
        },
        UserCredentials {
            access_code: "0000-0000-0000".into(),
            password: PASSWORD.into(),
        },
    ];
    let mut seen_left = Vec::new();
    let mut ask = |left: u8| {
        seen_left.push(left);
        tries.pop()
    };
    let out = relay::run(
        &client,
        &mut sim.card,
        relay::Options {
            ticket: wt,
            credentials: None,
            ask: &mut ask,
            agent: "kagi-test-relay".into(),
            capture: None,
            limits: tsm_protocol::relief::DerivationLimits::production(),
        },
    )
    .await
    .unwrap();
    assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);
    assert_eq!(seen_left, vec![3, 2]);
    let v = operation(&sp, wop).await;
    assert!(
        v.steps
            .iter()
            .any(|s| s.starts_with("delete:D392F000260100000001")),
        "{:?}",
        v.steps
    );
    let r = sp
        .send(&ControlRequest::CheckStatus { credential: iss.op }, None)
        .await
        .unwrap()
        .response;
    assert!(
        matches!(r, ControlResponse::Credential(ref s) if !s.card_deletion_pending),
        "{r:?}"
    );
    // The audit trail has every step.
    let trail = Store::open(&backend)
        .await
        .unwrap()
        .audit_trail(Some(&iss.op))
        .await
        .unwrap();
    let events: Vec<&str> = trail.iter().map(|a| a.event.as_str()).collect();
    for e in [
        "accepted",
        "session-opened",
        "authorised",
        "completed",
        "revoked",
        "deleted-from-card",
    ] {
        assert!(events.contains(&e), "{e} missing from {events:?}");
    }
    server.stop().await;
    std::fs::remove_dir_all(&world.dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_full_flow() {
    let dir = std::env::temp_dir().join(format!("kagi-tsm-db-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    full_flow(Backend::Sqlite(dir.join("tsm.db")), "sqlite").await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_full_flow() {
    let pg = tsm_server::testing::PrivatePostgres::start("flow").unwrap();
    full_flow(Backend::Postgres(pg.url.clone()), "postgres").await;
}

/// Whoever registers or serves a SIM's certificate cannot make the provider seal to a key of
/// their own: a certificate from another CA, or the manufacturer's certificate of another
/// SIM, is refused before anything is sealed; the SIM's own certificate is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_seals_only_to_a_key_the_manufacturer_certified_for_that_sim() {
    use der::Encode;
    let world = World::new("substitute");
    let (server, _backend, sp, mno) = world.serve().await;
    let url = server.url.clone();
    let keys = provider_keys(master(), 0x31);
    let a = provision(b"phone-sub-a", &PROVIDER_SD, &keys).unwrap();
    let b = provision(b"phone-sub-b", &PROVIDER_SD, &keys).unwrap();
    register(&world, &url, &b).await;
    let maker = kagi_fixtures::sim::manufacturer_ca().unwrap().certificate();
    let register_a = |cert: Vec<u8>| ControlRequest::RegisterCard {
        iccid: a.iccid.clone(),
        cin: a.cin.clone(),
        sd_aid: PROVIDER_SD.to_vec(),
        free_memory: 65536,
        card_certificate: Some(cert),
    };
    // A key the TSM (or anyone in the middle) made, certified by a CA of its own, with the
    // SIM's ICCID as subject.
    let rogue = test_pki::TestCa::new("card manufacturer").unwrap();
    let own = p256::SecretKey::from_slice(&[0x42; 32]).unwrap();
    let now = std::time::SystemTime::now();
    let forged = rogue
        .issue_card_key(
            &own.public_key(),
            &a.iccid,
            7,
            now - std::time::Duration::from_secs(60),
            now + std::time::Duration::from_secs(3600),
        )
        .unwrap()
        .to_der()
        .unwrap();
    assert_eq!(ask(&mno, &register_a(forged)).await, ControlResponse::Ok);
    let e = sp
        .seal_target(&a.iccid, maker)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not signed by the manufacturer CA"), "{e}");
    // The manufacturer's genuine certificate, but SIM B's.
    assert_eq!(
        ask(&mno, &register_a(b.card_certificate.clone())).await,
        ControlResponse::Ok
    );
    let e = sp
        .seal_target(&a.iccid, maker)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("not for SIM {}", a.iccid)), "{e}");
    // SIM A's own certificate: sealed to.
    assert_eq!(
        ask(&mno, &register_a(a.card_certificate.clone())).await,
        ControlResponse::Ok
    );
    let target = sp.seal_target(&a.iccid, maker).await.unwrap();
    assert_eq!(target.iccid(), a.iccid);
    server.stop().await;
    std::fs::remove_dir_all(&world.dir).ok();
}
