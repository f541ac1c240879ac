//! Seed 004 ⑭⑮⑱ with two organisations: the operator's MNO-TSM (the SIMs' issuer-domain keys,
//! its own database and signing key) and the provider's SP-TSM (the provider's domain keys
//! only), each with its own runtime, port and database, talking by signed requests; the relay
//! runs the MNO-TSM's session when the SP-TSM sends it there and comes back.

use super::*;
use card_wire::scp03::{Diversification, DiversifiedMaster, HostOptions, StaticKeys};
use tsm_server::service::{Hosted, MnoLink, Operator};

pub(super) const MNO_TSM: &str = "tsm:kagi-mobile";
/// The GP test key: the simulated SIMs' issuer-domain keys (the MNO-TSM's only).
const ISD_KEY: [u8; 16] = [
    0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x4B, 0x4C, 0x4D, 0x4E, 0x4F,
];

pub(super) fn mno_config(world: &World, me: &Signer, other_sp_tsm: &Signer) -> Config {
    let mut trust = Trust::new();
    trust.add(world.mno.party().clone(), *world.mno.verifying_key());
    trust.add(world.tsm.party().clone(), *world.tsm.verifying_key());
    trust.add(other_sp_tsm.party().clone(), *other_sp_tsm.verifying_key());
    let mut operators = BTreeMap::new();
    operators.insert(
        world.mno.party().clone(),
        Operator {
            isd_aid: card_wire::uicc::UICC_ISD_AID.to_vec(),
            kvn: 0x30,
            keys: Arc::new(DiversifiedMaster {
                master: StaticKeys::default_test_keys(0x30),
                scheme: Diversification::None,
                kvn: 0x30,
            }),
        },
    );
    let mut hosted = BTreeMap::new();
    hosted.insert(
        world.sp.party().clone(),
        Hosted {
            sd_aid: PROVIDER_SD.to_vec(),
            sp_tsm: world.tsm.party().clone(),
        },
    );
    Config {
        signer: Signer::from_pkcs8_pem(me.party().clone(), &me.to_pkcs8_pem().unwrap()).unwrap(),
        trust,
        policy: Policy::new(me.party().clone()),
        providers: BTreeMap::new(),
        operators,
        hosted,
        mno: Vec::new(),
        issuer: None,
        state_key: AesKey::new(&[0x22; 16]).unwrap(),
        revocation_list: None,
        outbox: None,
    }
}

/// A client of the MNO-TSM signing as `who`.
pub(super) fn at_mno(who: &Signer, me: &Signer, url: &str) -> Party {
    let mut trust = Trust::new();
    trust.add(me.party().clone(), *me.verifying_key());
    Party {
        signer: Signer::from_pkcs8_pem(who.party().clone(), &who.to_pkcs8_pem().unwrap()).unwrap(),
        tsm: me.party().clone(),
        trust,
        client: Client::new(url, Link::default()),
    }
}

fn prepare(world: &World, provider: &str, iccid: &str) -> ControlRequest {
    prepare_for(world, provider, iccid, &[0; 16])
}

/// The SP-TSM's reply key for its operation `op` (its state key is `[0x11; 16]` here).
fn reply_secret(op: &[u8; 16]) -> p256::SecretKey {
    tsm_protocol::keyseal::reply_secret(&[0x11; 16], op).unwrap()
}

/// The `PrepareSim` the SP-TSM sends for its operation `op` (with its reply key).
fn prepare_for(world: &World, provider: &str, iccid: &str, op: &[u8; 16]) -> ControlRequest {
    let _ = world;
    ControlRequest::PrepareSim {
        iccid: iccid.into(),
        provider: party(provider),
        sd_aid: PROVIDER_SD.to_vec(),
        privileges: vec![0x80, 0x40, 0x00],
        instance: card_wire::jpki::JPKI_AID.to_vec(),
        reply_key: tsm_protocol::keyseal::reply_public(&reply_secret(op)),
    }
}

fn refused(r: &ControlResponse) -> &str {
    match r {
        ControlResponse::Rejected(e) => &e.code,
        other => panic!("not refused: {other:?}"),
    }
}

/// Whether `card`'s provider domain opens a secure channel with `keys` (key version `kvn`,
/// diversified with `scheme`).
fn opens(
    card: &mut dyn card_wire::Transport,
    keys: StaticKeys,
    kvn: u8,
    scheme: Diversification,
) -> kagi::Result<()> {
    let mut ch = kagi::channel::CardChannel::new(card);
    kagi::gp::select(&mut ch, &PROVIDER_SD).unwrap();
    let opts = HostOptions {
        kvn,
        diversification: scheme,
        ..Default::default()
    };
    kagi::secure::SecureChannel::open(&mut ch, keys, opts, Some(&PROVIDER_SD)).map(|_| ())
}

/// The card no longer knows the key version: INITIALIZE UPDATE refused with 6A88.
fn unknown_key_version(r: kagi::Result<()>) -> bool {
    matches!(
        r,
        Err(kagi::Error::Scp03(
            card_wire::scp03::Scp03Error::InitializeUpdateRefused(card_wire::StatusWord(0x6A88))
        ))
    )
}

/// The MNO-TSM (its own signing key `me`, trusting the world's operator, SP-TSM and
/// another SP-TSM `other`) and the SP-TSM linked to it (the world's combined configuration
/// without the operator's keys), each on its own runtime and database.
pub(super) async fn start_two(
    world: &World,
    me: &Signer,
    other: &Signer,
    mno_backend: &Backend,
    sp_backend: &Backend,
) -> (Running, Running) {
    let mno_server = start_with(mno_config(world, me, other), mno_backend, 0).await;
    let mut sp_config = world.config();
    assert_eq!(
        sp_config.operators.len(),
        1,
        "the shared world's combined config"
    );
    sp_config.operators.clear();
    sp_config.trust.add(me.party().clone(), *me.verifying_key());
    sp_config.mno = vec![MnoLink::new(me.party().clone(), &mno_server.url)];
    let sp_server = start_with(sp_config, sp_backend, 0).await;
    (mno_server, sp_server)
}

/// A SIM with no provider domain (made from `seed`), registered by the operator with its
/// MNO-TSM only (and its certificate noted for the world's provider).
pub(super) async fn registered_blank_sim(
    world: &World,
    operator: &Party,
    seed: &str,
) -> ProvisionedSim {
    let sim = kagi_fixtures::sim::blank(seed.as_bytes()).unwrap();
    let reg = ControlRequest::RegisterCard {
        iccid: sim.iccid.clone(),
        cin: sim.cin.clone(),
        sd_aid: PROVIDER_SD.to_vec(),
        free_memory: 64 * 1024,
        card_certificate: Some(sim.card_certificate.clone()),
    };
    assert_eq!(ask(operator, &reg).await, ControlResponse::Ok);
    world
        .card_certs
        .lock()
        .unwrap()
        .insert(sim.iccid.clone(), sim.card_certificate.clone());
    sim
}

async fn two_services(mno_backend: Backend, sp_backend: Backend, name: &str) {
    let log = tsm_log();
    let world = World::new(name);
    let me = Signer::generate(party(MNO_TSM)).unwrap();
    let other = Signer::generate(party("tsm:other-sp")).unwrap();
    let (mno_server, sp_server) = start_two(&world, &me, &other, &mno_backend, &sp_backend).await;
    let (mno_url, sp_url) = (mno_server.url.clone(), sp_server.url.clone());
    let sp = world.client_party(&world.sp, &sp_url);
    let operator = at_mno(&world.mno, &me, &mno_url);

    let mut sim = registered_blank_sim(&world, &operator, &format!("{name}-phone")).await;

    // The download: ⑬ at the SP-TSM, ⑭⑮ at the MNO-TSM, ⑱ at the SP-TSM.
    let iss = issue(&world, &sp, &sim.iccid).await;
    let mut capture = Vec::new();
    let out = download(
        &sp_url,
        &mut sim.card,
        &iss.ticket,
        &iss.code,
        Some(&mut capture),
    )
    .await;
    assert_eq!(out.outcome, StopOutcome::Completed, "{}", out.message);
    let v = operation(&sp, iss.op).await;
    assert_eq!(v.state, OpState::Completed);
    assert!(
        v.steps.iter().any(|s| s == "put-key:31"),
        "the SP-TSM replaced the initial keys: {:?}",
        v.steps
    );
    provider::check_receipt(
        v.receipt.as_ref().unwrap(),
        &sp.trust,
        &iss.op,
        iss.request,
        &iss.cert,
    )
    .unwrap();
    // The MNO-TSM's operation: its audit trail, in its own database.
    let mno_store = Store::open(&mno_backend).await.unwrap();
    let trail = mno_store.audit_trail(None).await.unwrap();
    let events: Vec<&str> = trail.iter().map(|a| a.event.as_str()).collect();
    for e in [
        "accepted",
        "session-opened",
        "domain-installed",
        "completed",
    ] {
        assert!(
            events.contains(&e),
            "{e} missing from the MNO-TSM's {events:?}"
        );
    }
    // The SP-TSM's copy of the SIM's record came from the MNO-TSM's registry.
    let copy = Store::open(&sp_backend)
        .await
        .unwrap()
        .card(&sim.iccid)
        .await
        .unwrap()
        .expect("the SP-TSM's copy of the SIM's record");
    assert_eq!(
        (copy.cin.as_str(), copy.mno.as_str(), copy.state.as_str()),
        (sim.cin.as_str(), world.mno.party().0.as_str(), "active")
    );
    let sp_trail = Store::open(&sp_backend)
        .await
        .unwrap()
        .audit_trail(Some(&iss.op))
        .await
        .unwrap();
    assert!(
        sp_trail.iter().any(|a| a.event == "sent-to-mno"),
        "{sp_trail:?}"
    );

    // The domain's keys: the operator's initial ones (as the MNO-TSM tells its SP-TSM) and
    // the issuer keys open nothing any more; the provider's do.
    let sp_tsm_at_mno = at_mno(&world.tsm, &me, &mno_url);
    let again = sp_tsm_at_mno
        .send(
            &prepare_for(&world, "sp:bank", &sim.iccid, &iss.op.0),
            Some(IdempotencyKey(iss.op.0)),
        )
        .await
        .unwrap()
        .response;
    let answer_bytes = tsm_protocol::codec::encode(&again).unwrap();
    let ControlResponse::Prepared {
        op: mno_op,
        state: OpState::Completed,
        device_ticket: None,
        sealed_initial_keys,
        ..
    } = again
    else {
        panic!("{again:?}")
    };
    // Sealed to the asking SP-TSM: it opens them; another SP-TSM's reply key does not, nor
    // does a seal with one bit changed; the answer's bytes hold none of the keys.
    let ctx = tsm_protocol::keyseal::Context {
        mno: &me.party().0,
        sp_tsm: &world.tsm.party().0,
        provider: "sp:bank",
        iccid: &sim.iccid,
        sd_aid: &PROVIDER_SD,
        op: &mno_op.0,
    };
    let initial_keys =
        tsm_protocol::keyseal::open(&reply_secret(&iss.op.0), &ctx, &sealed_initial_keys).unwrap();
    let other_sp_tsm = tsm_protocol::keyseal::reply_secret(&[0x12; 16], &iss.op.0).unwrap();
    assert_eq!(
        tsm_protocol::keyseal::open(&other_sp_tsm, &ctx, &sealed_initial_keys),
        Err(tsm_protocol::keyseal::KeySealError::DoesNotOpen)
    );
    let mut tampered = sealed_initial_keys.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert_eq!(
        tsm_protocol::keyseal::open(&reply_secret(&iss.op.0), &ctx, &tampered),
        Err(tsm_protocol::keyseal::KeySealError::DoesNotOpen)
    );
    for k in [&initial_keys.enc, &initial_keys.mac, &initial_keys.dek] {
        assert!(!answer_bytes.windows(16).any(|w| w == &k[..]));
    }
    assert_eq!(initial_keys.kvn, 0x20);
    let initial = StaticKeys::new(
        0x20,
        AesKey::new(&initial_keys.enc).unwrap(),
        AesKey::new(&initial_keys.mac).unwrap(),
        AesKey::new(&initial_keys.dek).unwrap(),
    )
    .unwrap();
    let r = opens(&mut sim.card, initial, 0x20, Diversification::None);
    assert!(
        unknown_key_version(r),
        "the initial keys still open the domain"
    );
    let r = opens(
        &mut sim.card,
        StaticKeys::default_test_keys(0x30),
        0x30,
        Diversification::None,
    );
    assert!(
        unknown_key_version(r),
        "the issuer keys still open the domain"
    );
    opens(&mut sim.card, master(), 0x31, Diversification::Kdf3).expect("the provider's keys");

    // What each side must not hold: the issuer keys nowhere at the SP-TSM (its database and
    // the log), the credential's secrets nowhere at the MNO-TSM (its database) nor in what
    // the relay carried.
    let mut sp_places = vec![("SP-TSM rows".to_string(), table_bytes(&sp_backend).await)];
    let mut mno_places = vec![
        ("MNO-TSM rows".to_string(), table_bytes(&mno_backend).await),
        ("relay capture".to_string(), capture.clone()),
    ];
    for (backend, places) in [
        (&sp_backend, &mut sp_places),
        (&mno_backend, &mut mno_places),
    ] {
        if let Backend::Sqlite(db) = backend {
            for f in [db.clone(), db.with_extension("db-wal")] {
                if let Ok(bytes) = std::fs::read(&f) {
                    places.push((f.display().to_string(), bytes));
                }
            }
        }
    }
    let logged = log.lock().unwrap().clone();
    assert!(String::from_utf8_lossy(&logged).contains("SIM preparation accepted"));
    // One log for both in-process services: what is absent from it is absent from each.
    sp_places.push(("the TSMs' log".into(), logged.clone()));
    mno_places.push(("the TSMs' log".into(), logged));
    let forms = |s: &[u8]| {
        vec![
            s.to_vec(),
            hex::encode(s).into_bytes(),
            hex::encode_upper(s).into_bytes(),
        ]
    };
    for (place, bytes) in &sp_places {
        for needle in forms(&ISD_KEY) {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "the issuer-domain key is in {place}"
            );
        }
    }
    let key_ck = derived_key(&sim.card, &sim.iccid, [0x01, 0x00, 0x17], &iss.sealed[0]);
    let pin_ck = derived_key(&sim.card, &sim.iccid, [0x02, 0x00, 0x18], &iss.sealed[1]);
    for (place, bytes) in &mno_places {
        for (what, s) in [
            ("private key", &iss.key[..]),
            ("PIN record", &[0x00, 0x18, b'2', b'5', b'8', b'0'][..]),
            ("key's content key", &key_ck[..]),
            ("PIN's content key", &pin_ck[..]),
            ("sealed key", &iss.sealed[0][..]),
            ("initial K-ENC", &initial_keys.enc[..]),
            ("initial K-MAC", &initial_keys.mac[..]),
            ("initial K-DEK", &initial_keys.dek[..]),
        ] {
            if place == "relay capture" && what == "sealed key" {
                continue; // the relay carries it sealed, by design
            }
            for needle in forms(s) {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "the {what} is in {place}"
                );
            }
        }
    }

    // Refusals at the MNO-TSM, each with its own code.
    let sim2 = kagi_fixtures::sim::blank(format!("{name}-other").as_bytes()).unwrap();
    let reg2 = ControlRequest::RegisterCard {
        iccid: sim2.iccid.clone(),
        cin: sim2.cin.clone(),
        sd_aid: vec![0xA0, 0, 0, 1, 0x51, 0x53, 0x50, 0x50, 9],
        free_memory: 64 * 1024,
        card_certificate: None,
    };
    assert_eq!(ask(&operator, &reg2).await, ControlResponse::Ok);
    let other_at_mno = at_mno(&other, &me, &mno_url);
    let r = ask(&other_at_mno, &prepare(&world, "sp:bank", &sim.iccid)).await;
    assert_eq!(refused(&r), "business.not-your-provider");
    // Nor does it read the SIM's record: that SIM is another SP-TSM's provider's.
    let r = ask(
        &other_at_mno,
        &ControlRequest::CardRecord {
            iccid: sim.iccid.clone(),
        },
    )
    .await;
    assert_eq!(refused(&r), "business.unknown-card");
    let r = ask(
        &sp_tsm_at_mno,
        &ControlRequest::CardRecord {
            iccid: sim.iccid.clone(),
        },
    )
    .await;
    assert!(matches!(r, ControlResponse::CardRecord { .. }), "{r:?}");
    let r = ask(&sp_tsm_at_mno, &prepare(&world, "sp:shop", &sim.iccid)).await;
    assert_eq!(refused(&r), "business.unknown-provider");
    let r = ask(&sp_tsm_at_mno, &prepare(&world, "sp:bank", &sim2.iccid)).await;
    assert_eq!(refused(&r), "business.not-the-sims-provider");
    let r = ask(&operator, &prepare(&world, "sp:bank", &sim.iccid)).await;
    assert_eq!(refused(&r), "business.not-an-mno-tsm");
    // The same signed message twice: the second is a replay.
    let out = tsm_protocol::control::sign_request(
        &world.tsm,
        me.party(),
        &prepare(&world, "sp:bank", &sim2.iccid),
        Some(IdempotencyKey::random().unwrap()),
        tsm_protocol::signing::now_ms(),
        60_000,
    )
    .unwrap();
    let client = Client::new(&mno_url, Link::default());
    let mut codes = Vec::new();
    for _ in 0..2 {
        let (bytes, _) = client.post("/v1/control", &out.bytes).await.unwrap();
        let a = tsm_protocol::control::open_answer(
            &bytes,
            &out.header,
            &sp_tsm_at_mno.trust,
            tsm_protocol::signing::now_ms(),
        )
        .unwrap();
        codes.push(refused(&a).to_string());
    }
    assert_eq!(
        codes,
        ["business.not-the-sims-provider", "protocol.replayed"]
    );
    // A message signed with a key the MNO-TSM does not hold for the SP-TSM: forged.
    let forger = Signer::generate(world.tsm.party().clone()).unwrap();
    let out = tsm_protocol::control::sign_request(
        &forger,
        me.party(),
        &prepare(&world, "sp:bank", &sim.iccid),
        Some(IdempotencyKey::random().unwrap()),
        tsm_protocol::signing::now_ms(),
        60_000,
    )
    .unwrap();
    let (bytes, _) = client.post("/v1/control", &out.bytes).await.unwrap();
    let a = tsm_protocol::control::open_answer(
        &bytes,
        &out.header,
        &sp_tsm_at_mno.trust,
        tsm_protocol::signing::now_ms(),
    )
    .unwrap();
    let code = refused(&a).to_string();
    assert!(
        code == "protocol.unknown-key" || code == "protocol.bad-signature",
        "{code}"
    );
    // Nothing of the refused requests became an operation at the MNO-TSM: one preparation.
    let ops = mno_store
        .query("SELECT kind FROM ops", vec![])
        .await
        .unwrap();
    assert_eq!(ops.len(), 1, "the MNO-TSM's operations");

    sp_server.stop().await;
    mno_server.stop().await;
    std::fs::remove_dir_all(&world.dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("kagi-tsm-two-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    two_services(
        Backend::Sqlite(dir.join("mno-tsm.db")),
        Backend::Sqlite(dir.join("sp-tsm.db")),
        "two-sqlite",
    )
    .await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_postgres() {
    let mno = tsm_server::testing::PrivatePostgres::start("two-mno").unwrap();
    let sp = tsm_server::testing::PrivatePostgres::start("two-sp").unwrap();
    two_services(
        Backend::Postgres(mno.url.clone()),
        Backend::Postgres(sp.url.clone()),
        "two-postgres",
    )
    .await;
}
