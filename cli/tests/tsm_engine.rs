//! The TSM's card-script engine against simulated SIMs, through the relay's agent: a JPKI
//! credential downloaded into the provider's security domain with a key proof; a relay that
//! loses answers, forges an error status or alters a byte; the wrong card; the wrong keys
//! (never retried); wallet updates applied once; deletion; and no secret in what the relay
//! carries.

mod support;

use applet_sim::SimCard;
use card_wire::Transport;
use card_wire::jpki;
use card_wire::scp03::{AesKey, CardKeys, StaticKeys};
use card_wire::transport::{Capabilities, ResetKind, TransportError};
use kagi::channel::CardChannel;
use kagi_fixtures::sim::{PROVIDER_SD, ProvisionedSim, provider_keys, provision};
use std::sync::Arc;
use tsm_protocol::ids::{OpId, SessionId};
use tsm_protocol::relay::{Agent, AgentMsg};
use tsm_protocol::script::{Engine, Evidence, Goal, Next, Plan};

const PIN: &[u8] = b"4321";
/// The request id the credentials are sealed under.
const RID: tsm_protocol::IdempotencyKey = tsm_protocol::IdempotencyKey([0x5C; 16]);

fn master() -> StaticKeys {
    kagi::keys::read_key_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/keys/provider.keys"),
        0x31,
    )
    .unwrap()
}

fn sim(serial: &str) -> ProvisionedSim {
    provision(
        serial.as_bytes(),
        &PROVIDER_SD,
        &provider_keys(master(), 0x31),
    )
    .unwrap()
}

fn keys() -> Arc<dyn CardKeys> {
    Arc::new(provider_keys(master(), 0x31))
}

struct Credential {
    bundle: tsm_protocol::control::CredentialBundle,
    cert: Vec<u8>,
    ca: &'static test_pki::TestCa,
    key: Vec<u8>,
}

/// A P-256 credential for SIM `s`, sealed to its key agreement key (its certificate checked
/// against the fixtures' manufacturer CA) as the JPKI side sends it.
fn credential(ca: &'static test_pki::TestCa, s: &ProvisionedSim) -> Credential {
    use der::Encode;
    use p256::elliptic_curve::Generate;
    let key = p256::ecdsa::SigningKey::try_generate().unwrap();
    let now = std::time::SystemTime::now();
    let cert = ca
        .issue_auth(
            key.verifying_key(),
            "KAGITSM0001",
            77,
            now,
            now + std::time::Duration::from_secs(86400 * 365),
        )
        .unwrap()
        .to_der()
        .unwrap();
    let scalar = key.to_bytes().to_vec();
    let target = kagi_online::tsm::provider::SealTarget::verify(
        kagi_fixtures::sim::manufacturer_ca().unwrap().certificate(),
        &s.card_certificate,
        &s.iccid,
        now,
    )
    .unwrap();
    let bundle = kagi_online::tsm::provider::bundle(
        &target,
        &jpki::JPKI_AID,
        &RID,
        &kagi_online::tsm::provider::CardKey::P256(key),
        cert.clone(),
        ca.certificate_der().unwrap(),
        PIN,
        "00",
    )
    .unwrap();
    Credential {
        bundle,
        cert,
        ca,
        key: scalar,
    }
}

fn jpki_goals(c: &Credential) -> Vec<Goal> {
    tsm_protocol::recipes::jpki_credential(&jpki::JPKI_AID, &RID.0, &c.bundle)
}

fn plan(cin: &str, goals: Vec<Goal>) -> Plan {
    Plan {
        op: OpId([7; 16]),
        sd_aid: PROVIDER_SD.to_vec(),
        kvn: 0x31,
        expected_cin: cin.into(),
        goals,
        new_keys: None,
        fallback: None,
    }
}

/// Everything the relay saw, both directions.
#[derive(Default)]
struct Wire(Vec<u8>);

/// Drives the engine through an agent on `card`; `meddle` may change each report on its
/// way back (a bad relay). An interrupted operation gets up to `reconnects` new relay
/// sessions, as a user retrying would give it. Returns the last `Next` that is not an order.
fn drive_with(
    engine: &mut Engine,
    card: &mut dyn Transport,
    wire: &mut Wire,
    reconnects: usize,
    mut meddle: impl FnMut(u32, &mut AgentMsg),
) -> Next {
    let mut seq = 0;
    for attempt in 0..=reconnects {
        let mut agent = Agent::new();
        let session = SessionId([attempt as u8 + 1; 16]);
        if attempt > 0 {
            engine.resume();
        }
        let mut next = engine.open();
        let mut local = 0;
        loop {
            let Next::Order(cmds) = next else {
                agent.close(card);
                break;
            };
            seq += 1;
            local += 1;
            assert!(seq < 60, "the engine does not converge");
            wire.0.extend(tsm_protocol::codec::encode(&cmds).unwrap());
            let mut report = agent.on_order(card, session, local, &cmds);
            meddle(seq, &mut report);
            wire.0.extend(tsm_protocol::codec::encode(&report).unwrap());
            let AgentMsg::Report {
                status, results, ..
            } = report
            else {
                panic!("not a report")
            };
            next = engine.on_report(status, &results);
        }
        if !matches!(next, Next::Interrupted(_)) || attempt == reconnects {
            return next;
        }
    }
    unreachable!()
}

fn drive(
    engine: &mut Engine,
    card: &mut dyn Transport,
    wire: &mut Wire,
    meddle: impl FnMut(u32, &mut AgentMsg),
) -> Next {
    drive_with(engine, card, wire, 1, meddle)
}

fn done(next: Next) -> Evidence {
    match next {
        Next::Done(e) => *e,
        other => panic!("not done: {other:?}"),
    }
}

/// The holder's view afterwards: the PIN verifies and the key signs, checked against the
/// certificate the provider issued; the PIN-less eligibility read says eligible.
fn holder_checks(mut card: SimCard, c: &Credential) {
    let mut ch = CardChannel::new(&mut card);
    kagi::jpki::select(&mut ch).unwrap();
    let pin = zeroize::Zeroizing::new(PIN.to_vec());
    kagi::jpki::verify(&mut ch, kagi::jpki::Pin::Auth, &pin).unwrap();
    let key = tsm_protocol::receipt::CertKey::from_certificate(&c.cert).unwrap();
    let sig =
        kagi::jpki::sign(&mut ch, kagi::jpki::Pin::Auth, &key.to_be_signed(b"hello")).unwrap();
    key.verify(b"hello", &sig).unwrap();
    drop(ch);
    support::assert_verdict(
        &mut card,
        c.ca.certificate(),
        None,
        kagi::eligibility::Verdict::Eligible,
    );
}

fn ca() -> &'static test_pki::TestCa {
    static CA: std::sync::OnceLock<test_pki::TestCa> = std::sync::OnceLock::new();
    CA.get_or_init(|| test_pki::TestCa::new("JPKI for user authentication").unwrap())
}

#[test]
fn a_credential_downloads_with_a_key_proof_and_nothing_secret_crosses_the_relay() {
    let mut s = sim("tsm-1");
    let c = credential(ca(), &s);
    let mut engine = Engine::new(plan(&s.cin, jpki_goals(&c)), keys(), [9; 32]);
    let mut wire = Wire::default();
    let ev = done(drive(&mut engine, &mut s.card, &mut wire, |_, _| {}));
    assert_eq!(ev.cin, s.cin);
    assert_eq!(ev.sessions, 1);
    let (sig, nonce) = ev.key_proof.clone().unwrap();
    tsm_protocol::receipt::CertKey::from_certificate(&c.cert)
        .unwrap()
        .verify(
            &tsm_protocol::receipt::key_proof_message(&OpId([7; 16]), &nonce),
            &sig,
        )
        .unwrap();
    assert!(ev.steps.iter().any(|s| s.name.starts_with("load:")));
    // The private key and the PIN are nowhere in the relay's traffic, not even sealed:
    // SCP03 encrypts the commands.
    for (what, needle) in [
        ("private key", &c.key[..]),
        ("sealed key", &c.bundle.sealed_key[..16]),
        ("sealed key's ciphertext", &c.bundle.sealed_key[78..94]),
    ] {
        assert!(
            !wire.0.windows(needle.len()).any(|w| w == needle),
            "the {what} crossed the relay"
        );
    }
    assert!(
        !wire
            .0
            .windows(PIN.len() + 2)
            .any(|w| w[2..] == *PIN && w[..2] == [0x00, 0x18])
    );
    // Run again on the completed card: a probe, then the idempotent script again, once.
    let mut again = Engine::new(plan(&s.cin, jpki_goals(&c)), keys(), [10; 32]);
    let ev2 = done(drive(
        &mut again,
        &mut s.card,
        &mut Wire::default(),
        |_, _| {},
    ));
    assert!(
        !ev2.steps
            .iter()
            .any(|s| s.name.starts_with("load:") || s.name.starts_with("install:"))
    );
    holder_checks(s.card, &c);
}

/// A card that loses its link after a number of commands, once.
struct Flaky {
    card: SimCard,
    left: Option<usize>,
}

impl Transport for Flaky {
    fn transmit(&mut self, c: &[u8]) -> Result<Vec<u8>, TransportError> {
        if let Some(n) = self.left.as_mut() {
            if *n == 0 {
                self.left = None;
                return Err(TransportError::Other("link lost".into()));
            }
            *n -= 1;
        }
        self.card.transmit(c)
    }
    fn reset(&mut self, k: ResetKind) -> Result<Vec<u8>, TransportError> {
        self.card.reset(k)
    }
    fn atr(&self) -> Option<Vec<u8>> {
        self.card.atr()
    }
    fn capabilities(&self) -> Capabilities {
        self.card.capabilities()
    }
    fn describe(&self) -> String {
        "flaky".into()
    }
}

#[test]
fn a_lost_link_at_any_command_reopens_and_completes_once() {
    // How many commands a clean run sends.
    let first = sim("tsm-2");
    let c = credential(ca(), &first);
    let cin = first.cin.clone();
    let mut probe = Flaky {
        card: first.card,
        left: Some(usize::MAX),
    };
    done(drive(
        &mut Engine::new(plan(&cin, jpki_goals(&c)), keys(), [1; 32]),
        &mut probe,
        &mut Wire::default(),
        |_, _| {},
    ));
    let total = usize::MAX - probe.left.unwrap();
    assert!(total > 10, "{total}");
    for cut in (0..total).step_by(3) {
        // A fresh SIM (the same identity, a new key agreement key) and its own credential.
        let s = sim("tsm-2");
        let c = credential(ca(), &s);
        let mut card = Flaky {
            card: s.card,
            left: Some(cut),
        };
        let ev = done(drive(
            &mut Engine::new(plan(&cin, jpki_goals(&c)), keys(), [2; 32]),
            &mut card,
            &mut Wire::default(),
            |_, _| {},
        ));
        assert!(
            ev.sessions >= 2 || cut == 0,
            "cut at {cut}: {} sessions",
            ev.sessions
        );
        assert!(ev.key_proof.is_some());
        holder_checks(card.card, &c);
    }
}

#[test]
fn a_lying_relay_is_caught_and_the_download_still_completes() {
    // An error status substituted for the card's success on the first action round: the
    // engine does not believe it, re-opens, probes, and finishes.
    let mut s = sim("tsm-3");
    let c = credential(ca(), &s);
    let mut lied = false;
    let ev = done(drive(
        &mut Engine::new(plan(&s.cin, jpki_goals(&c)), keys(), [3; 32]),
        &mut s.card,
        &mut Wire::default(),
        |seq, r| {
            if let AgentMsg::Report { results, .. } = r
                && seq == 3
                && !lied
            {
                lied = true;
                let last = results[0].rapdus.len() - 1;
                results[0].rapdus[last] = vec![0x6A, 0x80];
            }
        },
    ));
    assert!(lied && ev.sessions == 2, "{ev:?}");
    // A byte of an answer altered, every time: the R-MAC catches it; the engine gives up as
    // interrupted after its sessions, never mistaking it for the card's word.
    let mut s = sim("tsm-4");
    let c = credential(ca(), &s);
    let next = drive_with(
        &mut Engine::new(plan(&s.cin, jpki_goals(&c)), keys(), [4; 32]),
        &mut s.card,
        &mut Wire::default(),
        0,
        |seq, r| {
            if let AgentMsg::Report { results, .. } = r
                && seq % 2 == 0
                && let Some(b) = results.first_mut()
                && let Some(first_rapdu) = b.rapdus.get_mut(1)
            {
                first_rapdu[0] ^= 0x01;
            }
        },
    );
    assert!(
        matches!(next, Next::Interrupted(ref e) if e.code == "relay.too-many-sessions"),
        "{next:?}"
    );
}

#[test]
fn the_wrong_card_and_the_wrong_keys_fail_at_once_and_authentication_is_not_retried() {
    let mut s = sim("tsm-5");
    let c = credential(ca(), &s);
    let next = drive(
        &mut Engine::new(plan("0011223344AA", jpki_goals(&c)), keys(), [5; 32]),
        &mut s.card,
        &mut Wire::default(),
        |_, _| {},
    );
    assert!(
        matches!(next, Next::Failed(ref e) if e.code == "card.identity"),
        "{next:?}"
    );
    // Keys of another provider: the card cryptogram does not verify; nothing more is sent.
    let other = StaticKeys::single(0x31, AesKey::new(&[0x11; 16]).unwrap());
    let mut engine = Engine::new(
        plan(&s.cin, jpki_goals(&c)),
        Arc::new(provider_keys(other, 0x31)),
        [6; 32],
    );
    let mut orders = 0;
    let next = drive(&mut engine, &mut s.card, &mut Wire::default(), |_, _| {
        orders += 1
    });
    assert!(
        matches!(next, Next::Failed(ref e) if e.code == "card.authentication"),
        "{next:?}"
    );
    assert_eq!(orders, 1, "only the INITIALIZE UPDATE round went out");
}

#[test]
fn wallet_updates_apply_once_and_deletion_is_a_goal_too() {
    use tsm_protocol::control::{WalletChange, WalletUpdate};
    let mut s = sim("tsm-6");
    let instance = [0xF0, 0x4B, 0x41, 0x47, 0x49, 0x57, 0x4C, 0x01, 0x01];
    let goals = tsm_protocol::recipes::wallet(
        &instance,
        &[
            WalletUpdate {
                id: [1; 8],
                change: WalletChange::SetMemberId("M-42".into()),
            },
            WalletUpdate {
                id: [2; 8],
                change: WalletChange::Points(300),
            },
        ],
    );
    let ev = done(drive(
        &mut Engine::new(plan(&s.cin, goals.clone()), keys(), [0; 32]),
        &mut s.card,
        &mut Wire::default(),
        |_, _| {},
    ));
    let w = ev.wallet.unwrap();
    assert_eq!(
        (w.points, w.member.as_str(), w.applied.clone()),
        (300, "M-42", vec![true, true])
    );
    // Delivered again (a resumed session): nothing changes on the card.
    let ev = done(drive(
        &mut Engine::new(plan(&s.cin, goals), keys(), [0; 32]),
        &mut s.card,
        &mut Wire::default(),
        |_, _| {},
    ));
    assert_eq!(ev.wallet.unwrap().applied, vec![false, false]);
    // Deleted, then deleting again finds nothing to do.
    let absent = vec![Goal::Absent {
        aid: instance.to_vec(),
        related: false,
    }];
    let ev = done(drive(
        &mut Engine::new(plan(&s.cin, absent.clone()), keys(), [0; 32]),
        &mut s.card,
        &mut Wire::default(),
        |_, _| {},
    ));
    assert!(ev.steps.iter().any(|s| s.name.starts_with("delete:")));
    let ev = done(drive(
        &mut Engine::new(plan(&s.cin, absent), keys(), [0; 32]),
        &mut s.card,
        &mut Wire::default(),
        |_, _| {},
    ));
    assert!(ev.steps.is_empty());
}

/// Channels 4 to 19 use the further interindustry class coding, whose SM bit and so MAC input
/// differ: the relay says which channel it opened and the TSM MACs for it (the Samsung OMAPI
/// trap of CLA 81 turned into C1).
#[test]
fn a_session_on_a_further_interindustry_channel_works() {
    let mut s = sim("tsm-7");
    for _ in 0..5 {
        let r = s.card.transmit(&[0x00, 0x70, 0x00, 0x00, 0x01]).unwrap();
        assert_eq!(&r[1..], &[0x90, 0x00]);
    }
    let c = credential(ca(), &s);
    let mut wire = Wire::default();
    let mut channel = None;
    let ev = done(drive(
        &mut Engine::new(plan(&s.cin, jpki_goals(&c)), keys(), [8; 32]),
        &mut s.card,
        &mut wire,
        |_, r| {
            if let AgentMsg::Report { results, .. } = r
                && let Some(ch) = results.iter().find_map(|b| b.channel)
            {
                channel = Some(ch);
            }
        },
    ));
    assert_eq!(channel, Some(6));
    assert!(ev.key_proof.is_some());
}

/// One key set whatever the card: the GP test keys of the fixtures' issuer domains.
struct FixedKeys(StaticKeys);

impl CardKeys for FixedKeys {
    fn for_card(&self, _: &[u8; 10]) -> Result<StaticKeys, card_wire::scp03::Scp03Error> {
        Ok(self.0.clone())
    }
}

/// A relay that passes the first `pass` DELETE commands on, then answers every other one
/// "referenced data not found" itself (an unauthenticated status word: no R-MAC to check).
struct SwallowsDeletes<'a> {
    card: &'a mut SimCard,
    pass: usize,
}

impl Transport for SwallowsDeletes<'_> {
    fn transmit(&mut self, c: &[u8]) -> Result<Vec<u8>, TransportError> {
        if c.get(1) == Some(&0xE4) {
            if self.pass == 0 {
                return Ok(vec![0x6A, 0x88]);
            }
            self.pass -= 1;
        }
        self.card.transmit(c)
    }
    fn reset(&mut self, k: ResetKind) -> Result<Vec<u8>, TransportError> {
        self.card.reset(k)
    }
    fn atr(&self) -> Option<Vec<u8>> {
        self.card.atr()
    }
    fn capabilities(&self) -> Capabilities {
        self.card.capabilities()
    }
    fn describe(&self) -> String {
        "swallows deletes".into()
    }
}

/// AIDs of the card's registry entries and load files, read with applet-sim.
fn on_card(card: &SimCard) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let apps = applet_sim::registry::entries(card.store())
        .iter()
        .map(|e| e.aid.as_bytes().to_vec())
        .collect();
    let files = applet_sim::registry::load_files(card.store())
        .iter()
        .map(|l| l.aid.as_bytes().to_vec())
        .collect();
    (apps, files)
}

/// Through the issuer domain, a provider's domain goes with its content — the JPKI instance,
/// then its load file, then the domain (GP refuses a domain that still has content) — and the
/// deletion counts only once GET STATUS under R-MAC no longer lists it: a relay answering
/// DELETE with `6A88` itself does not pass for it.
#[test]
fn a_domain_goes_with_its_content_and_a_relay_cannot_fake_the_deletion() {
    let mut s = sim("tsm-retire");
    let c = credential(ca(), &s);
    done(drive(
        &mut Engine::new(plan(&s.cin, jpki_goals(&c)), keys(), [3; 32]),
        &mut s.card,
        &mut Wire::default(),
        |_, _| {},
    ));
    let (apps, files) = on_card(&s.card);
    assert!(apps.contains(&PROVIDER_SD.to_vec()) && apps.contains(&jpki::JPKI_AID.to_vec()));
    assert!(files.contains(&jpki::JPKI_PACKAGE.to_vec()));
    // GP's default issuer domain AID, with the GP test keys (KVN 30) the fixtures put there.
    const ISD: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];
    let retire = || {
        let p = Plan {
            sd_aid: ISD.to_vec(),
            kvn: 0x30,
            ..plan(
                &s.cin,
                vec![Goal::DomainAbsent {
                    aid: PROVIDER_SD.to_vec(),
                }],
            )
        };
        let k: Arc<dyn CardKeys> = Arc::new(FixedKeys(StaticKeys::default_test_keys(0x30)));
        Engine::new(p, k, [4; 32])
    };
    // The lying relay passes the instance's and the load file's DELETE on and fakes the
    // domain's: the check after the round finds the domain still there, and so does every
    // new session, until the sessions run out.
    let mut liar = SwallowsDeletes {
        card: &mut s.card,
        pass: 2,
    };
    let next = drive(&mut retire(), &mut liar, &mut Wire::default(), |_, _| {});
    assert!(matches!(next, Next::Interrupted(_)), "{next:?}");
    let (still, still_files) = on_card(&s.card);
    assert!(still.contains(&PROVIDER_SD.to_vec()));
    assert!(!still.contains(&jpki::JPKI_AID.to_vec()));
    assert!(!still_files.contains(&jpki::JPKI_PACKAGE.to_vec()));
    // An honest relay finishes: the domain, empty now, goes.
    let ev = done(drive(
        &mut retire(),
        &mut s.card,
        &mut Wire::default(),
        |_, _| {},
    ));
    let names: Vec<_> = ev.steps.iter().map(|s| s.name.clone()).collect();
    assert_eq!(
        names,
        [format!("delete:{}", hex::encode_upper(PROVIDER_SD))]
    );
    let (after, after_files) = on_card(&s.card);
    let gone = [PROVIDER_SD.to_vec(), jpki::JPKI_AID.to_vec()];
    assert_eq!(
        after,
        apps.iter()
            .filter(|a| !gone.contains(a))
            .cloned()
            .collect::<Vec<_>>()
    );
    assert!(after.contains(&ISD.to_vec()));
    assert_eq!(
        after_files,
        files
            .iter()
            .filter(|f| **f != jpki::JPKI_PACKAGE.to_vec())
            .cloned()
            .collect::<Vec<_>>()
    );
    // Again on the cleaned card: met at once, nothing sent but the probe.
    let ev = done(drive(
        &mut retire(),
        &mut s.card,
        &mut Wire::default(),
        |_, _| {},
    ));
    assert!(ev.steps.is_empty());
    // On another SIM with an honest relay from the start: the three deletions in GP's order
    // in one session.
    let mut t = sim("tsm-retire-2");
    let c = credential(ca(), &t);
    done(drive(
        &mut Engine::new(plan(&t.cin, jpki_goals(&c)), keys(), [5; 32]),
        &mut t.card,
        &mut Wire::default(),
        |_, _| {},
    ));
    let p = Plan {
        sd_aid: ISD.to_vec(),
        kvn: 0x30,
        ..plan(
            &t.cin,
            vec![Goal::DomainAbsent {
                aid: PROVIDER_SD.to_vec(),
            }],
        )
    };
    let k: Arc<dyn CardKeys> = Arc::new(FixedKeys(StaticKeys::default_test_keys(0x30)));
    let ev = done(drive(
        &mut Engine::new(p, k, [6; 32]),
        &mut t.card,
        &mut Wire::default(),
        |_, _| {},
    ));
    assert_eq!(ev.sessions, 1);
    let names: Vec<_> = ev.steps.iter().map(|s| s.name.clone()).collect();
    assert_eq!(
        names,
        [
            &jpki::JPKI_AID[..],
            &jpki::JPKI_PACKAGE[..],
            &PROVIDER_SD[..]
        ]
        .iter()
        .map(|a| format!("delete:{}", hex::encode_upper(a)))
        .collect::<Vec<_>>()
    );
    assert!(!on_card(&t.card).0.contains(&PROVIDER_SD.to_vec()));
}
