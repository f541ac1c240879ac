//! IsoApplet (a real applet, GPL-3.0, `data/isoapplet.cap`) links against the native API,
//! installs (its constructor builds its crypto engines: `Cipher.ALG_RSA_PKCS1`,
//! `Signature.ALG_ECDSA_SHA`, `RandomData`) and answers SELECT.

mod common;
use common::*;
use kagi_jcvm::{Answer, Limits, Vm};

#[test]
fn isoapplet_installs_and_selects() {
    let c = cap("data/isoapplet.cap");
    let t = std::time::Instant::now();
    let pkg = link("data/isoapplet.cap");
    let linked = t.elapsed();
    let aid = c.applets()[0].aid.clone();
    let mut vm = Vm::new(pkg, &aid, Limits::default());
    let mut mem = Mem::default();
    let a = vm.install(
        &mut mem,
        c.applets()[0].install_method_offset,
        &params(&aid, &[]),
    );
    eprintln!(
        "MEASURE IsoApplet link {linked:?}, install {:?}: {a:?} {:?}, {} bytecodes",
        t.elapsed() - linked,
        vm.last_error(),
        vm.executed()
    );
    assert_eq!(a, Answer::Ok(vec![]), "{:?}", vm.last_error());
    let s = vm.select(&mut mem, &select_cmd(&aid));
    eprintln!("SELECT {s:?} {:?}", vm.last_error());
    assert!(matches!(s, Answer::Ok(_)), "{s:?} {:?}", vm.last_error());
}
