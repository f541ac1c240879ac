//! The custom applet end to end: a card made with a class table that registers
//! `acme.counter` takes its load file under SCP03, installs it, and the applet answers as its
//! documentation says (src/lib.rs); power cut at its writes leaves what Java Card transaction
//! semantics promise.

use applet_sim::store::ImageError;
use applet_sim::{SimCard, SimConfig};
use card_wire::scp03::SecurityLevel;
use card_wire::{Transport, TransportError};
use kagi_example_custom_applet::{self as counter, host};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).unwrap()
}

fn tx(card: &mut SimCard, apdu: &str) -> String {
    hex::encode_upper(card.transmit(&h(apdu)).unwrap())
}

const SELECT: &str = "00A4040009 F041434D4500010101 00";
const INCREMENT: &str = "80020000";
const READ: &str = "8004000008";

/// "ACME-CTR" in ASCII, version 01, then the step.
fn fci(step: u8) -> String {
    format!("41434D452D43545201{step:02X}9000")
}

fn card_with_counter(step: u8) -> SimCard {
    let config = SimConfig::default().seeded(7);
    let isd = config.isd.aid.as_bytes().to_vec();
    let keys = config.isd.keys[0].clone();
    let mut card = SimCard::with_classes(config, counter::classes().unwrap().shared());
    card.power_on();
    host::load_and_install(&mut card, &isd, keys, step).unwrap();
    card
}

#[test]
fn loads_installs_selects_and_counts() {
    let mut c = card_with_counter(5);
    assert_eq!(tx(&mut c, SELECT), fci(5));
    assert_eq!(tx(&mut c, READ), "00000000 00000000 9000".replace(' ', ""));
    assert_eq!(tx(&mut c, INCREMENT), "9000");
    assert_eq!(tx(&mut c, INCREMENT), "9000");
    // Two steps of 5: value 10, two operations.
    assert_eq!(tx(&mut c, READ), "0000000A 00000002 9000".replace(' ', ""));
    assert_eq!(tx(&mut c, "8008000000"), "6A88", "no label yet");
    // "kitchen"
    assert_eq!(tx(&mut c, "8006000007 6B69746368656E"), "9000");
    assert_eq!(tx(&mut c, "8008000000"), "6B69746368656E9000");
    // Interindustry class and unknown INS, as the table says.
    assert_eq!(tx(&mut c, "00040000 08"), "6E00");
    assert_eq!(tx(&mut c, "80FE0000"), "6D00");
    // State is persistent: a power cycle keeps it.
    c.power_on();
    assert_eq!(tx(&mut c, SELECT), fci(5));
    assert_eq!(tx(&mut c, READ), "0000000A 00000002 9000".replace(' ', ""));
}

#[test]
fn tearing_an_increment_rolls_it_back_until_the_commit() {
    // INCREMENT is two journaled writes and the commit record: power cut at write 1, 2 or 3
    // leaves the old value and count; armed at write 4 the command completes first.
    for n in 1..=4u64 {
        let mut c = card_with_counter(5);
        tx(&mut c, SELECT);
        assert_eq!(tx(&mut c, INCREMENT), "9000");
        c.tear_at(n);
        let r = c.transmit(&h(INCREMENT));
        c.power_on();
        assert_eq!(tx(&mut c, SELECT), fci(5));
        let after = tx(&mut c, READ);
        if n <= 3 {
            assert_eq!(r, Err(TransportError::Mute), "n={n}");
            assert_eq!(after, "00000005000000019000", "n={n}: rolled back");
        } else {
            assert_eq!(r, Ok(vec![0x90, 0x00]), "n={n}");
            assert_eq!(after, "0000000A000000029000", "n={n}: kept");
        }
    }
}

#[test]
fn tearing_a_single_write_keeps_the_old_or_the_new_label() {
    for n in 1..=2u64 {
        let mut c = card_with_counter(1);
        tx(&mut c, SELECT);
        assert_eq!(tx(&mut c, "8006000003 6F6C64"), "9000"); // "old"
        c.tear_at(n);
        let r = c.transmit(&h("8006000003 6E6577")); // "new"
        c.power_on();
        tx(&mut c, SELECT);
        let label = tx(&mut c, "8008000000");
        if n == 1 {
            assert_eq!(r, Err(TransportError::Mute));
            assert_eq!(label, "6F6C649000", "the torn write did not happen");
        } else {
            assert_eq!(r, Ok(vec![0x90, 0x00]));
            assert_eq!(label, "6E65779000");
        }
    }
}

#[test]
fn the_constructor_refuses_bad_install_parameters() {
    let config = SimConfig::default().seeded(8);
    let isd = config.isd.aid.as_bytes().to_vec();
    let keys = config.isd.keys[0].clone();
    let mut c = SimCard::with_classes(config, counter::classes().unwrap().shared());
    c.power_on();
    let mut s = host::Session::open(&mut c, &isd, keys, SecurityLevel::FULL).unwrap();
    s.load(&mut c, &counter::PACKAGE, &counter::MODULE, counter::CLASS)
        .unwrap();
    // Step 0 is not a step: the constructor answers 6A80 and nothing is installed.
    let r = s
        .install(
            &mut c,
            &counter::PACKAGE,
            &counter::MODULE,
            &counter::INSTANCE,
            &counter::install_params(0),
        )
        .unwrap();
    assert_eq!(r.sw, card_wire::StatusWord(0x6A80));
    assert_eq!(tx(&mut c, SELECT), "6A82");
}

#[test]
fn load_accepts_only_what_the_table_knows() {
    // A stock card does not know acme.counter: LOAD is refused with 6A80.
    let config = SimConfig::default().seeded(9);
    let isd = config.isd.aid.as_bytes().to_vec();
    let keys = config.isd.keys[0].clone();
    let mut stock = SimCard::powered(config);
    let mut s = host::Session::open(&mut stock, &isd, keys, SecurityLevel::FULL).unwrap();
    let err = s
        .load(
            &mut stock,
            &counter::PACKAGE,
            &counter::MODULE,
            counter::CLASS,
        )
        .unwrap_err();
    assert!(
        matches!(err, host::HostError::Refused { step: "LOAD", sw } if sw.0 == 0x6A80),
        "{err}"
    );
}

#[test]
fn an_image_with_the_class_loads_only_with_the_table() {
    let mut c = card_with_counter(3);
    tx(&mut c, SELECT);
    assert_eq!(tx(&mut c, INCREMENT), "9000");
    let dir = std::env::temp_dir().join(format!("kagi-custom-applet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("card.img");
    c.save_image(&path).unwrap();
    // The stock table lacks the class: a clear error naming it and what to do.
    let err = match SimCard::from_image(&path, None) {
        Ok(_) => panic!("an image naming acme.counter loaded without its class"),
        Err(e) => e,
    };
    assert!(matches!(err, ImageError::Classes { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("'acme.counter'") && msg.contains("register it in the ClassTable"),
        "{msg}"
    );
    // With the table, the card comes back with its count.
    let table = counter::classes().unwrap().shared();
    let mut back = SimCard::from_image_with(&path, Some(1), table).unwrap();
    back.power_on();
    assert_eq!(tx(&mut back, SELECT), fci(3));
    assert_eq!(tx(&mut back, READ), "00000003000000019000");
    std::fs::remove_dir_all(&dir).unwrap();
}
