//! Data an applet sent before it threw `ISOException` goes out with that status word (JC
//! 3.0.5: what `sendBytes` sent is part of the response), as IsoApplet relies on for long
//! answers: 256 bytes and `61xx`, the rest by its own GET RESPONSE. Conformance applet INS 1F
//! and C0 (`tests/jc/src/kagi/conf/Conf.java`).

mod common;
use common::*;
use kagi_jcvm::{Answer, Limits};

const AID: [u8; 7] = [0xF0, 0x6B, 0x61, 0x67, 0x69, 0x01, 0x01];

#[test]
fn data_sent_before_an_iso_exception_goes_out_with_its_status_word() {
    let (mut vm, mut mem, _) = installed("tests/jc/conf.cap", Limits::default());
    assert_eq!(vm.select(&mut mem, &select_cmd(&AID)), Answer::Ok(vec![]));
    let want: Vec<u8> = (0..=255u8).collect();
    assert_eq!(
        vm.process(&mut mem, &cmd([0x80, 0x1F, 0, 0], &[], 256)),
        Answer::Data(want, 0x612C)
    );
    // The applet's own GET RESPONSE: the 44 bytes it kept.
    assert_eq!(
        vm.process(&mut mem, &cmd([0x00, 0xC0, 0, 0], &[], 0x2C)),
        Answer::Ok(vec![0xC0; 44])
    );
    // Nothing kept now: the applet answers 6985.
    assert_eq!(
        vm.process(&mut mem, &cmd([0x00, 0xC0, 0, 0], &[], 0x2C)),
        Answer::Sw(0x6985)
    );
}
