//! The operator creates the provider's domain over the air; a credential expires end to end.

use super::*;

/// The MNO-TSM's part: a provider's domain created over the air on a blank SIM (installed by
/// the issuer domain, then given the provider's keys in its own session), after which the
/// provider downloads into it; creating it again finds everything in place (the domain's
/// initial keys are gone, the provider's keys open it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_creates_the_provider_domain_over_the_air() {
    let world = World::new("create-sd");
    let (server, backend, sp, mno) = world.serve().await;
    let url = server.url.clone();
    let mut sim = kagi_fixtures::sim::blank(b"blank-phone").unwrap();
    register(&world, &url, &sim).await;
    for round in 0..2 {
        let r = ask(
            &mno,
            &ControlRequest::CreateSecurityDomain {
                iccid: sim.iccid.clone(),
                sd_aid: PROVIDER_SD.to_vec(),
                privileges: vec![0x80, 0x40, 0x00],
                provider: world.sp.party().clone(),
                access: provider::access_grant(PASSWORD, 3, 600_000).unwrap(),
            },
        )
        .await;
        let ControlResponse::Accepted {
            op,
            device_ticket: Some(t),
            access_code: Some(c),
            ..
        } = r
        else {
            panic!("{r:?}")
        };
        let out = download(&url, &mut sim.card, &t, &c, None).await;
        assert_eq!(
            out.outcome,
            StopOutcome::Completed,
            "round {round}: {}",
            out.message
        );
        let trail = Store::open(&backend)
            .await
            .unwrap()
            .audit_trail(Some(&op))
            .await
            .unwrap();
        assert!(
            trail.iter().any(|a| a.event == "domain-installed"),
            "{trail:?}"
        );
    }
    // A provider may not create domains.
    let r = ask(
        &sp,
        &ControlRequest::CreateSecurityDomain {
            iccid: sim.iccid.clone(),
            sd_aid: PROVIDER_SD.to_vec(),
            privileges: vec![0x80],
            provider: world.sp.party().clone(),
            access: provider::access_grant(PASSWORD, 3, 600_000).unwrap(),
        },
    )
    .await;
    assert!(
        matches!(r, ControlResponse::Rejected(ref e) if e.code == "business.not-an-operator"),
        "{r:?}"
    );
    // The provider's download into the new domain.
    let iss = issue(&world, &sp, &sim.iccid).await;
    let out = download(&url, &mut sim.card, &iss.ticket, &iss.code, None).await;
    assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);
    // The domain's initial (issuer) keys no longer open it.
    {
        let mut ch = kagi::channel::CardChannel::new(&mut sim.card);
        kagi::gp::select(&mut ch, &PROVIDER_SD).unwrap();
        let opts = card_wire::scp03::HostOptions {
            kvn: 0x30,
            ..Default::default()
        };
        let r = kagi::secure::SecureChannel::open(
            &mut ch,
            card_wire::scp03::StaticKeys::default_test_keys(0x30),
            opts,
            Some(&PROVIDER_SD),
        );
        // Key set 30 was replaced by the provider's 31: the card no longer knows it.
        assert!(
            matches!(
                r,
                Err(kagi::Error::Scp03(
                    card_wire::scp03::Scp03Error::InitializeUpdateRefused(card_wire::StatusWord(
                        0x6A88
                    ))
                ))
            ),
            "{:?}",
            r.err()
        );
    }
    server.stop().await;
    std::fs::remove_dir_all(&world.dir).ok();
}

/// A credential expires end to end: a certificate already past its notAfter is refused at
/// issue; one that runs out after its download is reported expired by the TSM's status and
/// read as expired from the card, while it is neither revoked nor touched on the card.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_expires_end_to_end() {
    let world = World::new("expiry");
    let (server, _backend, sp, _mno) = world.serve().await;
    let url = server.url.clone();
    let mut sim = provision(b"phone-exp", &PROVIDER_SD, &provider_keys(master(), 0x31)).unwrap();
    register(&world, &url, &sim).await;
    let now = std::time::SystemTime::now();
    let day = std::time::Duration::from_secs(86400);
    // Already expired: refused, nothing created.
    let (req, _, _, rid) =
        issue_request_until(&world, &sim.iccid, b"2580", now - 2 * day, now - day);
    let r = sp.send(&req, Some(rid)).await.unwrap().response;
    assert!(
        matches!(r, ControlResponse::Rejected(ref e) if e.code == "business.expired-certificate"),
        "{r:?}"
    );
    // Valid for a few more seconds (X.509 times have whole seconds).
    let not_after = now + std::time::Duration::from_secs(4);
    let (req, _, _, rid) = issue_request_until(&world, &sim.iccid, b"2580", now - day, not_after);
    let a = sp.send(&req, Some(rid)).await.unwrap();
    let ControlResponse::Accepted {
        op,
        device_ticket: Some(ticket),
        access_code: Some(code),
        ..
    } = a.response
    else {
        panic!("{:?}", a.response)
    };
    let out = download(&url, &mut sim.card, &ticket, &code, None).await;
    assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);
    let status = |r: ControlResponse| match r {
        ControlResponse::Credential(s) => s,
        other => panic!("{other:?}"),
    };
    let not_after_secs = not_after
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let s = status(ask(&sp, &ControlRequest::CheckStatus { credential: op }).await);
    assert_eq!(s.not_after, not_after_secs);
    assert_eq!(s.state, "active");
    // Wait (without asserting any time) until the certificate is past its notAfter.
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        <= not_after_secs + 1
    {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let s = status(ask(&sp, &ControlRequest::CheckStatus { credential: op }).await);
    assert!(s.expired, "{s:?}");
    assert_eq!((s.state.as_str(), s.revoked), ("active", None));
    assert!(!s.card_deletion_pending);
    support::assert_verdict(
        &mut sim.card,
        world.ca.certificate(),
        None,
        kagi::eligibility::Verdict::Expired,
    );
    server.stop().await;
    std::fs::remove_dir_all(&world.dir).ok();
}
