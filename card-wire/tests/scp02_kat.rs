//! SCP02 and EMV/VISA2 known-answer tests from public sources. Provenance of every byte:
//! `tests/scp02/SOURCES.md`.

use card_wire::apdu::{Command, Response};
use card_wire::channel::ChannelFault;
use card_wire::scp02::handshake::{CardHandshake02, CardKeyContext02};
use card_wire::scp02::putkey::key_block;
use card_wire::scp02::{
    Des3Key, HostHandshake02, HostOptions02, IParam02, Scp02Error, SessionKeys02, StaticKeys02,
};
use card_wire::scp03::{Diversification, SecurityLevel};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}
fn key(s: &str) -> Des3Key {
    Des3Key::from_hex(s).unwrap()
}

// pySim tests/unittests/test_globalplatform.py (SCP02_Auth_Test, SCP02_Test).
const PYSIM_ENC: &str = "100102030405060708090a0b0c0d0e0f";
const PYSIM_MAC: &str = "101102030405060708090a0b0c0d0e0f";
const PYSIM_DEK: &str = "102102030405060708090a0b0c0d0e0f";
const PYSIM_HOST_CHALLENGE: &str = "40A62C37FA6304F8";
const PYSIM_IU_CMD: &str = "805020000840A62C37FA6304F800";
const PYSIM_IU_RSP: &str = "00000000000000000000700200016B4524ABEE7CF32EA3838BC148F3";
const PYSIM_EA: &str = "8482010010BA6961667737C5BCEBECE14C7D6A4376";
const PYSIM_WRAPPED: [(&str, &str); 4] = [
    ("80F22002", "84F220020814DB34FA4341DCA8"),
    ("80ca006600", "84CA00660855ED7C5FF069512B00"),
    (
        "80F220020a4f0212345c054f9f70c5",
        "84F22002124F0212345C054F9F70C58FC1B380C4228AF8",
    ),
    ("80f28002024f0000", "84F280020A4F003B95F09317DE6A4E00"),
];

// GlobalPlatformPro TestPlaintextKeys.java.
const GPPRO_KEY: &str = "404142434445464748494A4B4C4D4E4F";
const GPPRO_KDD: [u8; 10] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];

fn pysim_keys(kvn: u8) -> StaticKeys02 {
    StaticKeys02::new(kvn, key(PYSIM_ENC), key(PYSIM_MAC), key(PYSIM_DEK))
}

fn pysim_host(kvn: u8) -> HostHandshake02 {
    let opts = HostOptions02 {
        kvn,
        level: SecurityLevel::CMAC,
        i: IParam02::I15,
        ..HostOptions02::default()
    };
    let hc: [u8; 8] = h(PYSIM_HOST_CHALLENGE).try_into().unwrap();
    HostHandshake02::new(pysim_keys(kvn), opts, hc).unwrap()
}

#[test]
fn pysim_initialize_update_command() {
    let iu = pysim_host(0x20).initialize_update().unwrap();
    assert_eq!(iu.to_bytes(), h(PYSIM_IU_CMD));
}

#[test]
fn pysim_session_host_side() {
    // The card answered KVN 70 to a request for 20; pySim does not check the KVN, so the
    // handshake asks for "any" (00) here.
    let host = pysim_host(0);
    let resp = Response::success(h(PYSIM_IU_RSP));
    let (ea, mut session, info) = host.complete(&resp, None).unwrap();
    assert_eq!(ea.to_bytes(), h(PYSIM_EA));
    assert_eq!(info.init_update.kvn, 0x70);
    assert_eq!(info.init_update.sequence_counter, [0, 1]);
    for (plain, wrapped) in PYSIM_WRAPPED {
        let cmd = Command::parse(&h(plain)).unwrap();
        assert_eq!(
            session.wrap_command(&cmd).unwrap().to_bytes(),
            h(wrapped),
            "{plain}"
        );
    }
}

#[test]
fn pysim_session_card_side() {
    // The simulator's half answers the same INITIALIZE UPDATE with the same bytes (given the
    // card's random challenge) and accepts the host's EXTERNAL AUTHENTICATE and commands.
    let keys = pysim_keys(0x70);
    let ctx = CardKeyContext02 {
        keys: &keys,
        kdd: [0; 10],
        i: IParam02::I15,
        sequence_counter: 1,
        sd_aid: &[0xA0, 0, 0, 0, 0x03, 0, 0, 0],
    };
    let iu = Command::parse(&h(PYSIM_IU_CMD)).unwrap();
    let challenge: [u8; 6] = h("6B4524ABEE7C").try_into().unwrap();
    let (resp, card) = CardHandshake02::initialize_update(&iu, &ctx, || challenge).unwrap();
    assert_eq!(resp.data, h(PYSIM_IU_RSP));
    let mut session = card
        .external_authenticate(&Command::parse(&h(PYSIM_EA)).unwrap())
        .unwrap();
    for (plain, wrapped) in PYSIM_WRAPPED {
        let got = session
            .unwrap_command(&Command::parse(&h(wrapped)).unwrap())
            .unwrap();
        assert_eq!(got.to_bytes(), h(plain), "{wrapped}");
    }
}

#[test]
fn pysim_wrong_card_cryptogram_is_refused_before_external_authenticate() {
    let mut bad = h(PYSIM_IU_RSP);
    *bad.last_mut().unwrap() = 0xFF;
    let err = pysim_host(0)
        .complete(&Response::success(bad), None)
        .unwrap_err();
    assert_eq!(
        err,
        Scp02Error::Channel(ChannelFault::CardCryptogramMismatch)
    );
}

#[test]
fn gppro_session_key_kcvs() {
    let keys = StaticKeys02::single(0x20, key(GPPRO_KEY));
    let sk = SessionKeys02::derive(&keys, [0, 0]);
    assert_eq!(sk.s_enc.kcv(), [0xF2, 0xDC, 0xDD]);
    assert_eq!(sk.c_mac.kcv(), [0x5F, 0xCC, 0x69]);
    assert_eq!(sk.dek.kcv(), [0x85, 0x27, 0x2E]);
    assert_eq!(sk.r_mac.kcv(), [0x9F, 0x74, 0x9A]);
}

#[test]
fn gppro_static_3des_kcv() {
    assert_eq!(key(GPPRO_KEY).kcv(), [0x8B, 0xAF, 0x47]);
}

#[test]
fn gppro_put_key_encryption_under_session_dek() {
    let keys = StaticKeys02::single(0x20, key(GPPRO_KEY));
    let sk = SessionKeys02::derive(&keys, [0, 0]);
    let block = key_block(&sk.dek, &key(GPPRO_KEY));
    assert_eq!(&block[..2], &[0x80, 0x10]);
    assert_eq!(&block[2..18], &h("EFBEE6C6D99D7B70BDE9D7E927F020AF")[..]);
    assert_eq!(&block[18..], &[0x03, 0x8B, 0xAF, 0x47]);
}

#[test]
fn gppro_emv_diversification() {
    let master = StaticKeys02::single(0x20, key(GPPRO_KEY));
    let k = master.diversify(Diversification::Emv, &GPPRO_KDD).unwrap();
    assert_eq!(k.enc().kcv(), [0xC3, 0x30, 0x13]);
    assert_eq!(k.mac().kcv(), [0x6F, 0x4C, 0xA6]);
    assert_eq!(k.dek().kcv(), [0xBB, 0x81, 0x79]);
}

#[test]
fn gppro_visa2_diversification() {
    let master = StaticKeys02::single(0x20, key(GPPRO_KEY));
    let k = master
        .diversify(Diversification::Visa2, &GPPRO_KDD)
        .unwrap();
    assert_eq!(k.enc().kcv(), [0x2B, 0xE5, 0x98]);
    assert_eq!(k.mac().kcv(), [0x58, 0xDA, 0x38]);
    assert_eq!(k.dek().kcv(), [0x3C, 0x32, 0x8E]);
}

#[test]
fn kdf3_is_refused_for_3des_keys() {
    let master = StaticKeys02::single(0x20, key(GPPRO_KEY));
    assert_eq!(
        master.diversify(Diversification::Kdf3, &GPPRO_KDD),
        Err(Scp02Error::UnsupportedDiversification(
            Diversification::Kdf3
        ))
    );
}
