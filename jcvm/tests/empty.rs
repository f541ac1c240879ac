//! GlobalPlatformPro's empty applet (a real JC 2.2.1 CAP) links, installs and is selected.
//! Its source (GlobalPlatformPro `testapplets/empty/Empty.java`) registers in the
//! constructor and has `process` throw `CryptoException.throwIt((short) 0x6666)` for every
//! command, the SELECT one included; the Java Card runtime turns an uncaught exception other
//! than `ISOException` into `6F00`, so that is what SELECT answers on a card too.

mod common;
use common::*;
use kagi_jcvm::{Answer, Limits};

#[test]
fn empty_applet_installs_and_its_process_throws_crypto_exception() {
    let (mut vm, mut mem, _) = installed("data/empty.cap", Limits::default());
    assert!(vm.registered(), "install() called register()");
    let a = vm.select(&mut mem, &select_cmd(&[1, 2, 3, 4, 5, 6, 7, 8]));
    assert_eq!(a, Answer::Sw(0x6F00));
    let e = vm.last_error().unwrap();
    assert!(
        e.contains("javacard.security.CryptoException") && e.contains(&0x6666.to_string()),
        "{e}"
    );
    // An instance of the applet was persisted (its object and the meta record).
    assert!(mem.data.keys().any(|k| k.starts_with("jc/o/")));
    assert!(mem.data.contains_key("jc/m"));
}
