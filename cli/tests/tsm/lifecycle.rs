//! A download killed half-way completes exactly once; PIN reset, transfer and the operator's notices.

use super::*;

/// The TSM dies while the relay is between two orders, and comes back on the same database
/// and port: the relay's retried report reaches the new process, which has no secure session
/// for it, opens a new one, probes, and completes the operation once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_download_the_operation_completes_exactly_once() {
    let world = World::new("kill");
    let backend = Backend::Sqlite(world.dir.join("tsm.db"));
    let server = start(&world, &backend, 0).await;
    let url = server.url.clone();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let sp = world.client_party(&world.sp, &url);
    let sim = provision(b"phone-kill", &PROVIDER_SD, &provider_keys(master(), 0x31)).unwrap();
    register(&world, &url, &sim).await;
    let iss = issue(&world, &sp, &sim.iccid).await;
    // A card wrapper that kills the TSM right after the card answered its second order.
    struct Killer {
        card: applet_sim::SimCard,
        commands: usize,
        initialize_updates: usize,
        kill: Option<Running>,
        restart: tokio::sync::mpsc::UnboundedSender<()>,
    }
    impl card_wire::Transport for Killer {
        fn transmit(&mut self, c: &[u8]) -> Result<Vec<u8>, card_wire::TransportError> {
            self.commands += 1;
            if c.get(1) == Some(&0x50) {
                self.initialize_updates += 1;
            }
            let r = self.card.transmit(c);
            if self.commands == 8
                && let Some(k) = self.kill.take()
            {
                // Killed here, between two orders: nothing of it survives.
                k.kill();
                let _ = self.restart.send(());
            }
            r
        }
        fn reset(&mut self, k: card_wire::ResetKind) -> Result<Vec<u8>, card_wire::TransportError> {
            self.card.reset(k)
        }
        fn atr(&self) -> Option<Vec<u8>> {
            self.card.atr()
        }
        fn capabilities(&self) -> card_wire::Capabilities {
            self.card.capabilities()
        }
        fn describe(&self) -> String {
            "killer".into()
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut card = Killer {
        card: sim.card,
        commands: 0,
        initialize_updates: 0,
        kill: Some(server),
        restart: tx,
    };
    let restarter = {
        let config = world.config();
        let backend = backend.clone();
        tokio::spawn(async move {
            rx.recv().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            start_with(config, &backend, port).await
        })
    };
    let ticket = iss.ticket.clone();
    let code = iss.code.clone();
    let out = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(download(&url, &mut card, &ticket, &code, None))
    });
    assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);
    assert!(card.kill.is_none(), "the TSM was never killed");
    assert_eq!(
        card.initialize_updates, 2,
        "the restarted TSM continued with a new secure session"
    );
    let v = operation(&sp, iss.op).await;
    assert_eq!(v.state, OpState::Completed);
    provider::check_receipt(
        v.receipt.as_ref().unwrap(),
        &sp.trust,
        &iss.op,
        iss.request,
        &iss.cert,
    )
    .unwrap();
    // Exactly once: one completion in the audit trail, and the applet installed once.
    let trail = Store::open(&backend)
        .await
        .unwrap()
        .audit_trail(Some(&iss.op))
        .await
        .unwrap();
    assert_eq!(trail.iter().filter(|a| a.event == "completed").count(), 1);
    let apps = card
        .card
        .runtime()
        .registry()
        .iter()
        .filter(|e| e.aid.as_bytes() == card_wire::jpki::JPKI_AID)
        .count();
    assert_eq!(apps, 1);
    restarter.await.unwrap().stop().await;
    std::fs::remove_dir_all(&world.dir).ok();
}

/// The rest of the lifecycle: a PIN reset through the relay (the old PIN stops working), a
/// transfer to a new SIM (the new credential active, the old one superseded and deleted from
/// the old SIM when it is next reached), the operator's SIM-changed and card-lost notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_reset_transfer_and_operator_notices() {
    let world = World::new("lifecycle");
    let (server, _backend, sp, mno) = world.serve().await;
    let url = server.url.clone();
    let keys = provider_keys(master(), 0x31);
    let mut a = provision(b"phone-a", &PROVIDER_SD, &keys).unwrap();
    let mut b = provision(b"phone-b", &PROVIDER_SD, &keys).unwrap();
    register(&world, &url, &a).await;
    register(&world, &url, &b).await;
    let iss = issue(&world, &sp, &a.iccid).await;
    let out = download(&url, &mut a.card, &iss.ticket, &iss.code, None).await;
    assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);

    // Equal PINs never seal to equal bytes: not for two SIMs, not twice for one (a table of
    // the 10,000 sealed PINs reverses nothing).
    let seal = |iccid: &str| {
        let rid = tsm_protocol::IdempotencyKey::random().unwrap();
        provider::seal_pin(
            &seal_target(&world, iccid),
            &card_wire::jpki::JPKI_AID,
            &rid,
            b"2468",
        )
        .unwrap()
    };
    let (a1, a2, b1) = (seal(&a.iccid), seal(&a.iccid), seal(&b.iccid));
    assert!(a1 != a2 && a1 != b1 && a2 != b1);

    // PIN reset: a new PIN sealed to SIM A and the applet, through the relay; the key proof
    // again.
    let rid = tsm_protocol::IdempotencyKey::random().unwrap();
    let r = sp
        .send(
            &ControlRequest::ResetPin {
                credential: iss.op,
                sealed_pin: provider::seal_pin(
                    &seal_target(&world, &a.iccid),
                    &card_wire::jpki::JPKI_AID,
                    &rid,
                    b"9753",
                )
                .unwrap(),
                access: provider::access_grant(PASSWORD, 3, 600_000).unwrap(),
            },
            Some(rid),
        )
        .await
        .unwrap()
        .response;
    let ControlResponse::Accepted {
        device_ticket: Some(t),
        access_code: Some(c),
        ..
    } = r
    else {
        panic!("{r:?}")
    };
    let out = download(&url, &mut a.card, &t, &c, None).await;
    assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);
    {
        let mut ch = kagi::channel::CardChannel::new(&mut a.card);
        kagi::jpki::select(&mut ch).unwrap();
        let old = zeroize::Zeroizing::new(b"2580".to_vec());
        assert!(matches!(
            kagi::jpki::verify(&mut ch, kagi::jpki::Pin::Auth, &old),
            Err(kagi::Error::WrongPin { .. })
        ));
        let new = zeroize::Zeroizing::new(b"9753".to_vec());
        kagi::jpki::verify(&mut ch, kagi::jpki::Pin::Auth, &new).unwrap();
    }

    // Transfer to SIM B.
    let (req, cert_b, _, rid) = issue_request(&world, &b.iccid, b"1470");
    let ControlRequest::Issue {
        credential: new_credential,
        ..
    } = req
    else {
        unreachable!()
    };
    let r = sp
        .send(
            &ControlRequest::Transfer {
                credential: iss.op,
                card: CardTarget {
                    iccid: b.iccid.clone(),
                },
                new_credential,
                access: provider::access_grant(PASSWORD, 3, 600_000).unwrap(),
            },
            Some(rid),
        )
        .await
        .unwrap();
    let ControlResponse::Accepted {
        op: transfer,
        device_ticket: Some(t),
        access_code: Some(c),
        ..
    } = r.response
    else {
        panic!("{:?}", r.response)
    };
    let out = download(&url, &mut b.card, &t, &c, None).await;
    assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);
    let v = operation(&sp, transfer).await;
    provider::check_receipt(
        v.receipt.as_ref().unwrap(),
        &sp.trust,
        &transfer,
        r.request,
        &cert_b,
    )
    .unwrap();
    let status = |cred: OpId| {
        let sp = &sp;
        async move {
            match sp
                .send(&ControlRequest::CheckStatus { credential: cred }, None)
                .await
                .unwrap()
                .response
            {
                ControlResponse::Credential(s) => s,
                other => panic!("{other:?}"),
            }
        }
    };
    let old = status(iss.op).await;
    assert_eq!(
        (old.state.as_str(), old.revoked),
        ("revoked", Some(RevokeReason::Superseded))
    );
    assert!(old.card_deletion_pending);
    let new = status(transfer).await;
    assert_eq!(
        (new.state.as_str(), new.iccid.as_str()),
        ("active", b.iccid.as_str())
    );

    // The operator: SIM A replaced — no more issuing to it; SIM B lost — its credential is
    // revoked at once.
    let r = ask(
        &mno,
        &ControlRequest::SimChanged {
            old_iccid: a.iccid.clone(),
            new_iccid: b.iccid.clone(),
        },
    )
    .await;
    assert_eq!(r, ControlResponse::Ok);
    let (req, _, _, rid) = issue_request(&world, &a.iccid, b"1111");
    let r = sp.send(&req, Some(rid)).await.unwrap().response;
    assert!(
        matches!(r, ControlResponse::Rejected(ref e) if e.code == "business.card-not-active"),
        "{r:?}"
    );
    // A provider may not send operator notices.
    let r = ask(
        &sp,
        &ControlRequest::CardLost {
            iccid: b.iccid.clone(),
        },
    )
    .await;
    assert!(
        matches!(r, ControlResponse::Rejected(ref e) if e.code == "business.not-an-operator"),
        "{r:?}"
    );
    let r = ask(
        &mno,
        &ControlRequest::CheckEligibility {
            iccid: b.iccid.clone(),
            memory_needed: 1024,
        },
    )
    .await;
    assert!(
        matches!(r, ControlResponse::Eligibility { eligible: true, .. }),
        "{r:?}"
    );
    let r = ask(
        &mno,
        &ControlRequest::CardLost {
            iccid: b.iccid.clone(),
        },
    )
    .await;
    assert_eq!(r, ControlResponse::Ok);
    let new = status(transfer).await;
    assert_eq!(
        (new.state.as_str(), new.revoked),
        ("revoked", Some(RevokeReason::CardLost))
    );
    let r = ask(
        &mno,
        &ControlRequest::CheckEligibility {
            iccid: b.iccid.clone(),
            memory_needed: 1024,
        },
    )
    .await;
    assert!(
        matches!(
            r,
            ControlResponse::Eligibility {
                eligible: false,
                ..
            }
        ),
        "{r:?}"
    );
    server.stop().await;
    std::fs::remove_dir_all(&world.dir).ok();
}
