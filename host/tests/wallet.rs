//! The ID wallet applet: provider data (member id, tickets, points) written through the
//! security domain under SCP03; a script delivered twice applies once; a balance never goes
//! below zero; power cut at any persistent write of a points update leaves the old or the new
//! wallet.

use applet_sim::tearing::{RecordingCard, old_or_new};
use applet_sim::{SimCard, SimConfig};
use card_wire::Transport;
use card_wire::apdu::Command;
use card_wire::scp03::{HostOptions, SecurityLevel, StaticKeys};
use card_wire::transport::{ResetKind, TransportError};
use card_wire::wallet::{self, Summary, kind, update_item};
use kagi::channel::{ApduChannel, CardChannel};
use kagi::gp::{self, manage};
use kagi::secure::SecureChannel;

const ISD: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];
const WALLET: [u8; 9] = [0xF0, 0x4B, 0x41, 0x47, 0x49, 0x57, 0x4C, 0x01, 0x01];

fn open<T: Transport>(ch: &mut CardChannel<T>) -> kagi::Result<SecureChannel<'_, T>> {
    gp::select(ch, &ISD)?;
    let opts = HostOptions {
        level: SecurityLevel::FULL,
        ..HostOptions::default()
    };
    SecureChannel::open(ch, StaticKeys::default_test_keys(0x30), opts, Some(&ISD))
}

fn install<T: Transport>(ch: &mut CardChannel<T>) -> kagi::Result<()> {
    let mut sc = open(ch)?;
    let file = manage::sim_load_file(
        &wallet::WALLET_PACKAGE,
        &[(wallet::WALLET_MODULE.to_vec(), wallet::WALLET_CLASS.into())],
    );
    manage::load(&mut sc, &wallet::WALLET_PACKAGE, None, &file, true)?;
    manage::install(
        &mut sc,
        &manage::InstallSpec {
            package: wallet::WALLET_PACKAGE.to_vec(),
            module: wallet::WALLET_MODULE.to_vec(),
            instance: WALLET.to_vec(),
            selectable: true,
            ..Default::default()
        },
    )
}

fn update<T: Transport>(ch: &mut CardChannel<T>, items: &[Vec<u8>]) -> kagi::Result<Summary> {
    let mut sc = open(ch)?;
    let script: Vec<u8> = items.concat();
    let out = manage::personalize(&mut sc, &WALLET, &card_wire::gp::blocks(&script), false)?;
    Summary::parse(&out).ok_or_else(|| kagi::Error::Protocol("no summary".into()))
}

/// What a shop terminal reads: SELECT, then `80 CA 00 D0` (no secure channel).
fn read<T: Transport>(ch: &mut CardChannel<T>) -> Summary {
    gp::select(ch, &WALLET).unwrap();
    let r = ch
        .transmit(&Command::new(0x80, 0xCA, 0x00, 0xD0).with_le(256).unwrap())
        .unwrap();
    Summary::parse(&r.data).unwrap()
}

fn points(d: i32) -> Vec<u8> {
    d.to_be_bytes().to_vec()
}

#[test]
fn updates_apply_once_and_balances_stay_positive() {
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(3)));
    install(&mut ch).unwrap();
    let script = [
        update_item(&[1; 8], kind::SET_MEMBER, b"M-000123"),
        update_item(&[2; 8], kind::ADD_TICKET, b"CONCERT 2027-01-10 A12"),
        update_item(&[3; 8], kind::POINTS, &points(500)),
    ];
    let s = update(&mut ch, &script).unwrap();
    assert_eq!((s.points, s.member.as_str()), (500, "M-000123"));
    assert_eq!(s.applied, vec![true, true, true]);
    // The same script again (a lost answer, a resumed session): nothing changes.
    let again = update(&mut ch, &script).unwrap();
    assert_eq!(again.points, 500);
    assert_eq!(again.tickets.len(), 1);
    assert_eq!(again.applied, vec![false, false, false]);
    // Spending more than the balance is refused, and changes nothing.
    let err = update(
        &mut ch,
        &[update_item(&[4; 8], kind::POINTS, &points(-501))],
    )
    .unwrap_err();
    assert_eq!(err.status().map(|sw| sw.0), Some(0x6985), "{err}");
    let s = update(
        &mut ch,
        &[
            update_item(&[5; 8], kind::POINTS, &points(-200)),
            update_item(&[6; 8], kind::REMOVE_TICKET, b"CONCERT 2027-01-10 A12"),
        ],
    )
    .unwrap();
    assert_eq!((s.points, s.tickets.len()), (300, 0));
    assert_eq!(
        read(&mut ch),
        Summary {
            applied: vec![],
            ..s
        }
    );
    // Malformed items are refused.
    assert!(update(&mut ch, &[vec![0xD0, 0x02, 0x00, 0x00]]).is_err());
    assert!(update(&mut ch, &[update_item(&[7; 8], 0x7F, b"")]).is_err());
}

#[test]
fn tearing_at_every_write_of_a_points_update_leaves_old_or_new_wallet() {
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(5)));
    install(&mut ch).unwrap();
    update(
        &mut ch,
        &[update_item(&[1; 8], kind::POINTS, &points(1000))],
    )
    .unwrap();
    let base = ch.transport().store().clone();
    let card = || {
        let mut c = SimCard::from_store(base.clone(), Some(5), true);
        c.power_on();
        c
    };
    let script = [
        update_item(&[2; 8], kind::POINTS, &points(-250)),
        update_item(&[3; 8], kind::ADD_TICKET, b"TICKET"),
    ];
    let mut reference = CardChannel::new(RecordingCard::new(card()));
    let before = reference.transport().card.store().writes();
    update(&mut reference, &script).unwrap();
    let total = reference.transport().card.store().writes() - before;
    let snapshots = std::mem::take(&mut reference.transport_mut().snapshots);
    assert!(total >= 4, "{total} writes");
    const FAIL: &str = "sd/A000000151000000/fail";
    for n in 1..=total {
        let mut torn = card();
        torn.tear_at(n);
        let mut ch = CardChannel::new(RecordingCard::new(torn));
        let err = update(&mut ch, &script).expect_err("power was cut");
        assert!(
            matches!(err, kagi::Error::Transport(TransportError::Mute)),
            "n={n}: {err}"
        );
        let answered = ch.transport().answered();
        ch.reset(ResetKind::Cold).unwrap();
        let after = ch.transport().card.store().clone();
        assert!(
            old_or_new(&after, &snapshots, answered, &[FAIL]),
            "tear at write {n} left a mixed wallet"
        );
        let s = read(&mut ch);
        assert!(
            (s.points, s.tickets.len()) == (1000, 0) || (s.points, s.tickets.len()) == (750, 1),
            "n={n}: {s:?}"
        );
    }
}
