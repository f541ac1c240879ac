//! IsoApplet (a real applet, GPL-3.0, `data/isoapplet.cap`) links against the native API, and
//! its `install` runs until the first API method kagi does not implement yet; the error names
//! that method and where the applet called it.

mod common;
use common::*;
use kagi_jcvm::{Answer, Limits, Vm};

#[test]
fn isoapplet_links_and_install_names_the_missing_api() {
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
    assert_eq!(a, Answer::Sw(0x6F00));
    let e = vm.last_error().unwrap();
    assert!(e.contains("unsupported API method javacard"), "{e}");
    assert!(e.contains("called from class token"), "{e}");
}
