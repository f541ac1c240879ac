//! `kagi sim run-cap FILE.cap --apdu …`: a CAP applet run on a fresh simulated card (loaded
//! and installed through the card manager), each command answered; `--trace` names the
//! applet's uncaught exception and where it was thrown behind a `6F00`. The conformance
//! applet (`jcvm/tests/jc/`) is the applet.

use std::process::Command;

fn kagi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kagi"))
}

const CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../jcvm/tests/jc/conf.cap");

#[test]
fn run_cap_answers_each_apdu_and_traces_an_uncaught_exception() {
    // INS 11 echoes its data; INS 1E uses an RSA key pair INS 19 never made: the applet
    // dereferences null (Crypto.rsaCipher), an uncaught NullPointerException, 6F00.
    let o = kagi()
        .args([
            "--trace",
            "sim",
            "run-cap",
            CONF,
            "--apdu",
            "801100000341424300",
        ])
        .args(["--apdu", "801E00000341424300"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("> 00A4040007F06B616769010100\n< 9000"),
        "{out}"
    );
    assert!(out.contains("> 801100000341424300\n< 4142439000"), "{out}");
    assert!(out.contains("> 801E00000341424300\n< 6F00"), "{out}");
    let trace = out
        .lines()
        .find(|l| l.starts_with("  applet: "))
        .unwrap_or_else(|| panic!("no diagnostic line:\n{out}"));
    assert!(
        trace.contains("uncaught java.lang.NullPointerException")
            && trace.contains("thrown in")
            && trace.contains("at bytecode offset"),
        "{trace}"
    );
    // --json: the same exchanges, the diagnostic as a field.
    let o = kagi()
        .args([
            "--json",
            "sim",
            "run-cap",
            CONF,
            "--apdu",
            "801E00000341424300",
        ])
        .output()
        .unwrap();
    let v = crate::support::schema::document("sim.run-cap", &o.stdout);
    assert_eq!(v["exchanges"][1]["response"], "6F00", "{v}");
    assert!(
        v["exchanges"][1]["diagnostic"]
            .as_str()
            .is_some_and(|d| d.contains("NullPointerException")),
        "{v}"
    );
}
