//! A simulated UICC: the ATR says so, the MF holds EF.ICCID, applets still work beside it.

use applet_sim::{SimCard, SimConfig};
use card_wire::Transport;
use card_wire::atr::Atr;
use card_wire::uicc::Iccid;

fn send(card: &mut SimCard, hex: &str) -> (Vec<u8>, u16) {
    let r = card.transmit(&hex::decode(hex).unwrap()).unwrap();
    let (data, sw) = r.split_at(r.len() - 2);
    (data.to_vec(), u16::from_be_bytes([sw[0], sw[1]]))
}

#[test]
fn uicc_preset_reads_iccid_from_the_mf() {
    let mut card = SimCard::powered(SimConfig::preset("uicc").unwrap());
    let atr = Atr::parse(&card.atr().unwrap()).unwrap();
    assert!(atr.is_uicc(), "{:02X?}", atr.bytes());
    // SELECT MF, then EF.ICCID with FCP, then READ BINARY.
    assert_eq!(send(&mut card, "00A40004023F0000").1, 0x9000);
    let (fcp, sw) = send(&mut card, "00A40004022FE200");
    assert_eq!(sw, 0x9000);
    assert_eq!(fcp[0], 0x62);
    let (ef, sw) = send(&mut card, "00B000000A");
    assert_eq!(sw, 0x9000);
    let iccid = Iccid::from_ef(&ef).unwrap();
    assert!(iccid.as_str().starts_with("8981"), "{iccid}");
    // The ISD is still there by AID, and after it the MF again.
    assert_eq!(send(&mut card, "00A4040008A00000015100000000").1, 0x9000);
    assert_eq!(send(&mut card, "00A40800022FE2").1, 0x9000);
    assert_eq!(send(&mut card, "00B0000000").0, ef);
    // Past the end, and without a current EF.
    assert_eq!(send(&mut card, "00B0000A00").1, 0x6B00);
    card.power_on();
    assert_eq!(send(&mut card, "00A4000402DDDD").1, 0x6A82);
}

#[test]
fn serials_give_distinct_valid_iccids_and_smart_cards_have_none() {
    let a = SimConfig::preset("uicc").unwrap().with_serial(b"rec-1");
    let b = SimConfig::preset("uicc").unwrap().with_serial(b"rec-2");
    let (ia, ib) = (a.iccid.clone().unwrap(), b.iccid.clone().unwrap());
    assert_ne!(ia, ib);
    assert!(Iccid::new(ia.as_str()).is_ok());
    let mut card = SimCard::powered(SimConfig::default());
    assert!(!Atr::parse(&card.atr().unwrap()).unwrap().is_uicc());
    // A smart card has no MF here: the selected ISD answers.
    assert_ne!(send(&mut card, "00A40004023F0000").1, 0x9000);
    // The image keeps the ICCID.
    let dir = std::env::temp_dir().join(format!("kagi-uicc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.img");
    SimCard::powered(a).save_image(&path).unwrap();
    // Loaded from its image, the card is powered: it answers its first command.
    let mut back = SimCard::from_image(&path, None).unwrap();
    assert!(Atr::parse(&back.atr().unwrap()).unwrap().is_uicc());
    assert_eq!(send(&mut back, "00A40800022FE2").1, 0x9000);
    assert_eq!(
        Iccid::from_ef(&send(&mut back, "00B000000A").0).unwrap(),
        ia
    );
    std::fs::remove_dir_all(dir).ok();
}
