//! SCP02 master keys in SoftHSM2: EMV and VISA2 per-card keys derived inside the token equal
//! GlobalPlatformPro's published key check values (card-wire/tests/scp02/SOURCES.md: master
//! 40..4F, KDD 00 01 … 09); refused twins: an AES scheme, keys that are not there.
//!
//! PKCS#11 reads `SOFTHSM2_CONF` once per process, so the test runs itself again as a child
//! with a private token's configuration in its environment.

use card_wire::scp02::{Des3Key, StaticKeys02};
use card_wire::scp03::Diversification;
use kagi_hsm::HsmConfig;
use kagi_hsm::scp02::{HsmMaster02, import_master_des};
use std::path::PathBuf;

const KDD: [u8; 10] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];

fn config(key: &str) -> HsmConfig {
    HsmConfig {
        module: PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
        token: "kagi".into(),
        key: key.into(),
    }
}

fn body(pin: &str) {
    let master = StaticKeys02::single(
        0x20,
        Des3Key::new(&hex::decode("404142434445464748494A4B4C4D4E4F").unwrap()).unwrap(),
    );
    import_master_des(&config("scp02"), pin, &master).unwrap();
    // The same labels again: refused.
    assert!(import_master_des(&config("scp02"), pin, &master).is_err());
    let hsm = HsmMaster02::open(&config("scp02"), pin, 0x20).unwrap();
    let kcvs = |k: &StaticKeys02| [k.enc().kcv(), k.mac().kcv(), k.dek().kcv()];
    // GlobalPlatformPro's EMV and VISA2 key check values for this master and KDD.
    let emv = hsm.diversify(Diversification::Emv, &KDD).unwrap();
    assert_eq!(
        kcvs(&emv),
        [[0xC3, 0x30, 0x13], [0x6F, 0x4C, 0xA6], [0xBB, 0x81, 0x79]]
    );
    let visa2 = hsm.diversify(Diversification::Visa2, &KDD).unwrap();
    assert_eq!(
        kcvs(&visa2),
        [[0x2B, 0xE5, 0x98], [0x58, 0xDA, 0x38], [0x3C, 0x32, 0x8E]]
    );
    assert_eq!(emv.kvn, 0x20);
    // kdf3 is an AES scheme; a label with no keys: refused with words.
    assert!(hsm.diversify(Diversification::Kdf3, &KDD).is_err());
    let e = HsmMaster02::open(&config("absent"), pin, 0x20)
        .err()
        .unwrap();
    assert!(e.to_string().contains("absent-enc"), "{e}");
}

#[test]
fn emv_and_visa2_diversification_inside_softhsm() {
    if let Some(pin) =
        kagi_hsm::testing::in_private_softhsm("emv_and_visa2_diversification_inside_softhsm")
    {
        body(&pin);
    }
}
