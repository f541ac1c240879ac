//! DELETE KEY and the card data a security domain reports (key information template, IIN,
//! CIN, CPLC) against the simulator through the host library, with their refused twins.

use applet_sim::{SimCard, SimConfig};
use card_wire::cplc::DayOfYear;
use card_wire::scp03::crypto::AesKey;
use card_wire::scp03::{HostOptions, SecurityLevel, StaticKeys};
use card_wire::sw::StatusWord;
use kagi::channel::CardChannel;
use kagi::gp::{self, manage};
use kagi::secure::SecureChannel;
use proptest::prelude::*;

const ISD: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];

fn opts(kvn: u8) -> HostOptions {
    HostOptions {
        kvn,
        level: SecurityLevel::FULL,
        ..HostOptions::default()
    }
}

fn set31() -> StaticKeys {
    let k = |b: u8| AesKey::new(&[b; 16]).unwrap();
    StaticKeys::new(0x31, k(1), k(2), k(3)).unwrap()
}

fn versions(ch: &mut impl kagi::channel::ApduChannel) -> Vec<u8> {
    let info = gp::get_data(ch, 0x00E0).unwrap().unwrap();
    gp::parse_key_info(&info)
        .unwrap()
        .iter()
        .map(|k| k.version)
        .collect()
}

fn refused(r: kagi::Result<()>) -> Option<StatusWord> {
    r.unwrap_err().status()
}

#[test]
fn delete_key_removes_a_version_and_refuses_the_one_in_use() {
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(7)));
    let test = StaticKeys::default_test_keys(0x30);
    {
        gp::select(&mut ch, &ISD).unwrap();
        let mut sc = SecureChannel::open(&mut ch, test.clone(), opts(0x30), Some(&ISD)).unwrap();
        // The set of the open session (and the only one) cannot go: 6985.
        assert_eq!(
            refused(manage::delete_key(&mut sc, 0x30, None)),
            Some(StatusWord::CONDITIONS_NOT_SATISFIED)
        );
        let dek = sc.dek().unwrap().clone();
        manage::put_key(&mut sc, &dek, &set31(), None).unwrap();
        assert_eq!(versions(&mut sc), [0x30, 0x30, 0x30, 0x31, 0x31, 0x31]);
        // An unknown version: 6A88. One key of a set: 6985 (sets are used whole).
        assert_eq!(
            refused(manage::delete_key(&mut sc, 0x77, None)),
            Some(StatusWord::REFERENCED_DATA_NOT_FOUND)
        );
        assert_eq!(
            refused(manage::delete_key(&mut sc, 0x31, Some(0x01))),
            Some(StatusWord::CONDITIONS_NOT_SATISFIED)
        );
        // Another version goes.
        manage::delete_key(&mut sc, 0x31, None).unwrap();
        assert_eq!(versions(&mut sc), [0x30, 0x30, 0x30]);
        manage::put_key(&mut sc, &dek, &set31(), None).unwrap();
    }
    // Deleted, then written again: KVN 31 opens a session, and from it KVN 30 can be deleted.
    gp::select(&mut ch, &ISD).unwrap();
    let mut sc = SecureChannel::open(&mut ch, set31(), opts(0x31), Some(&ISD)).unwrap();
    manage::delete_key(&mut sc, 0x30, None).unwrap();
    assert_eq!(versions(&mut sc), [0x31, 0x31, 0x31]);
    // Now 31 is both in use and the last set.
    assert_eq!(
        refused(manage::delete_key(&mut sc, 0x31, None)),
        Some(StatusWord::CONDITIONS_NOT_SATISFIED)
    );
    drop(sc);
    // The deleted test keys no longer open a session: INITIALIZE UPDATE answers 6A88.
    gp::select(&mut ch, &ISD).unwrap();
    let err = SecureChannel::open(&mut ch, test, opts(0x30), Some(&ISD))
        .err()
        .unwrap();
    assert!(err.to_string().contains("6A88"), "{err}");
}

#[test]
fn delete_key_needs_a_session_and_well_formed_data() {
    use card_wire::apdu::Command;
    use kagi::channel::ApduChannel;
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(8)));
    gp::select(&mut ch, &ISD).unwrap();
    // Outside a session: 6982.
    let r = ch
        .transmit(&card_wire::gp::delete_key(0x30, None).unwrap())
        .unwrap();
    assert_eq!(r.sw, StatusWord::SECURITY_STATUS_NOT_SATISFIED);
    let mut sc = SecureChannel::open(
        &mut ch,
        StaticKeys::default_test_keys(0x30),
        opts(0x30),
        Some(&ISD),
    )
    .unwrap();
    // D2 with two bytes, or a truncated TLV: 6A80. D0 alone (one id in every version): 6985.
    for (data, sw) in [
        (&[0xD2, 0x02, 0x30, 0x31][..], StatusWord::INCORRECT_DATA),
        (&[0xD2, 0x05, 0x30][..], StatusWord::INCORRECT_DATA),
        (
            &[0xD0, 0x01, 0x01][..],
            StatusWord::CONDITIONS_NOT_SATISFIED,
        ),
    ] {
        let c = Command::new(0x80, 0xE4, 0x00, 0x00)
            .with_data(data.to_vec())
            .unwrap()
            .with_le(256)
            .unwrap();
        assert_eq!(sc.transmit(&c).unwrap().sw, sw, "{data:02X?}");
    }
}

#[test]
fn card_data_iin_cin_and_cplc() {
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(9)));
    gp::select(&mut ch, &ISD).unwrap();
    // SimConfig::default(): IIN "KG", CIN "KAGI" 00 01.
    assert_eq!(
        gp::issuer_identification_number(&mut ch)
            .unwrap()
            .as_deref(),
        Some("4B47")
    );
    assert_eq!(
        gp::card_image_number(&mut ch).unwrap().as_deref(),
        Some("4B4147490001")
    );
    let today = DayOfYear {
        year: 2026,
        day: 338,
    };
    let (raw, c) = gp::cplc(&mut ch, today).unwrap().unwrap();
    assert_eq!(raw.len(), 84);
    let f = |n: &str| c.field(n).unwrap().clone();
    // The IC serial number is the last 4 bytes of the default KDD (…00 00 00 01).
    assert_eq!(f("ic_serial_number").hex, "00000001");
    // BCD dates; expected ISO dates from Python: date(2025,1,1) + timedelta(DDD - 1).
    assert_eq!(f("os_release_date").date.as_deref(), Some("2025-03-01"));
    assert_eq!(f("ic_fabrication_date").date.as_deref(), Some("2025-05-03"));
    assert_eq!(
        f("ic_pre_perso_equipment_date").date.as_deref(),
        Some("2025-06-19")
    );
    // Not personalised yet: no date.
    assert_eq!(f("ic_personalization_date").date, None);
}

#[test]
fn key_information_template_from_a_real_card() {
    // GET DATA E0 of a GP 2.1.1 card (a trace posted on java-index.com, "GP 2.1.1. delete
    // command", 2007): key ids 1–3 in versions 2 and 1, key type 81, 16 bytes each.
    let e0 =
        hex::decode("E024C00401028110C00402028110C00403028110C00401018110C00402018110C00403018110")
            .unwrap();
    let keys = gp::parse_key_info(&e0).unwrap();
    let got: Vec<(u8, u8, u8, u16)> = keys
        .iter()
        .map(|k| (k.id, k.version, k.key_type, k.length))
        .collect();
    assert_eq!(
        got,
        [
            (1, 2, 0x81, 16),
            (2, 2, 0x81, 16),
            (3, 2, 0x81, 16),
            (1, 1, 0x81, 16),
            (2, 1, 0x81, 16),
            (3, 1, 0x81, 16)
        ]
    );
    assert_eq!(keys[0].type_name(), "3DES (reserved)");
    // An entry too short to hold id, version, type and length is an error.
    assert!(gp::parse_key_info(&hex::decode("E005C003010281").unwrap()).is_err());
    // The extended format (GP 2.2.1 §11.3.3.1; GlobalPlatformPro's GPKeyInfo reads the type
    // after FF and a two-byte length): an RSA-2048 public key, modulus 0x0100 bytes, exponent
    // 3 bytes, empty usage and access.
    let e0 = hex::decode("E00EC00C0174FFA10100FFA000030000").unwrap();
    let k = &gp::parse_key_info(&e0).unwrap()[0];
    assert_eq!(
        (k.id, k.version, k.key_type, k.length),
        (1, 0x74, 0xA1, 256)
    );
    assert!(gp::parse_key_info(&hex::decode("E007C0050174FFA101").unwrap()).is_err());
}

proptest! {
    #[test]
    fn key_information_parser_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(keys) = gp::parse_key_info(&b) {
            prop_assert!(keys.len() <= b.len() / 6);
        }
    }
}
