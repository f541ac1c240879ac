//! The repository's copy of the public vectors passes on both sides, and the loader rejects
//! what the format does not allow.

use std::fs;

#[test]
fn bundled_vectors_all_pass() {
    let report = test_vectors::check_dir(&test_vectors::bundled_dir()).expect("vector dir");
    for f in &report.files {
        println!("{}", f.line());
    }
    assert_eq!(
        report.files.len(),
        11,
        "the eleven files listed in FORMAT.md"
    );
    assert_eq!(report.failed(), 0, "{:#?}", report.files);
    // 12 CMAC + 120 KDF + 4 KCV + 4 kdf3 + 9 pySim + 6 OpenSCP + 1 securo + 5 globalplatform
    // sessions + 2 securo wraps + 6 scll channels + 1 scll DEK, as listed in FORMAT.md
    // (scripts/test.sh pins the same number).
    assert_eq!(report.passed(), 170);
}

/// The shared copy beside the repository (`../shared/test-vectors`, 149 vectors): CI always
/// has it (`CI=true` and the folder missing is a failure); a local checkout without it skips
/// with a warning on stderr.
#[test]
fn shared_vectors_all_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/test-vectors");
    if !dir.is_dir() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "{} is missing; CI always has it beside the clone",
            dir.display()
        );
        eprintln!(
            "WARNING: {} is missing: the shared vectors were NOT checked",
            dir.display()
        );
        return;
    }
    let report = test_vectors::check_dir(&dir).expect("shared vector dir");
    for f in &report.files {
        println!("{}", f.line());
    }
    assert_eq!(report.failed(), 0, "{:#?}", report.files);
    // The count is pinned: a dropped file or vector fails the run.
    assert_eq!(report.passed(), 149);
}

fn check_text(text: &str) -> test_vectors::Report {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kagi-tv-{}-{n}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("x.json"), text).unwrap();
    let r = test_vectors::check_dir(&dir).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    r
}

#[test]
fn unknown_kind_and_field_are_errors() {
    let r = check_text(r#"{"kind":"rot13","source":"x","vectors":[]}"#);
    assert!(!r.ok());
    assert!(
        r.files[0]
            .error
            .as_deref()
            .unwrap()
            .contains("unknown kind")
    );
    let r = check_text(
        r#"{"kind":"kcv","source":"x","vectors":[{"key":"404142434445464748494a4b4c4d4e4f","kcv":"504a77","note":"?"}]}"#,
    );
    assert!(
        r.files[0]
            .error
            .as_deref()
            .unwrap()
            .contains("unknown field")
    );
    let r = check_text(r#"{"kind":"kcv","source":"x","vectors":[{"key":"4","kcv":"504a77"}]}"#);
    assert!(r.files[0].error.is_some());
}

#[test]
fn a_wrong_value_fails_the_vector() {
    let r = check_text(
        r#"{"kind":"kcv","source":"x","vectors":[{"key":"404142434445464748494a4b4c4d4e4f","kcv":"504a78"}]}"#,
    );
    assert_eq!((r.passed(), r.failed()), (0, 1));
}

#[test]
fn tampered_session_transcript_fails() {
    let text =
        fs::read_to_string(test_vectors::bundled_dir().join("scp03-session-pysim.json")).unwrap();
    // Change one wrapped byte of a recorded command (a C-MAC byte of case_1 in AES128_11).
    let tampered = text.replacen(
        "84f220020863a63f8959827fb2",
        "84f220020863a63f8959827fb3",
        1,
    );
    assert_ne!(text, tampered);
    let r = check_text(&tampered);
    assert_eq!(r.failed(), 1, "{:#?}", r.files);
    assert_eq!(r.passed(), 8);
}

/// The file-level error of a one-file report, which must exist.
fn load_error(r: &test_vectors::Report) -> String {
    assert!(!r.ok(), "{:#?}", r.files);
    assert_eq!(r.passed(), 0, "{:#?}", r.files);
    r.files[0]
        .error
        .clone()
        .unwrap_or_else(|| panic!("expected a load error, got {:#?}", r.files))
}

#[test]
fn kdf3_vector_without_expected_values_is_a_load_error_naming_file_and_index() {
    // Vector 1 has master and KDD only: it would compare nothing.
    let e = load_error(&check_text(
        r#"{"kind":"kdf3-diversify","source":"x","vectors":[
            {"master":"404142434445464748494a4b4c4d4e4f","kdd":"00010203040506070809","kcv_enc":"e79c05"},
            {"master":"404142434445464748494a4b4c4d4e4f","kdd":"00010203040506070809"}]}"#,
    ));
    assert!(e.contains("x.json"), "{e}");
    assert!(e.contains("vector 1"), "{e}");
    assert!(e.contains("no expected value"), "{e}");
}

#[test]
fn a_file_without_vectors_is_a_load_error() {
    for kind in ["kcv", "cmac", "scp03-session", "scp03-wrap"] {
        let e = load_error(&check_text(&format!(
            r#"{{"kind":"{kind}","source":"x","vectors":[]}}"#
        )));
        assert!(
            e.contains("x.json") && e.contains("at least one vector"),
            "{kind}: {e}"
        );
    }
}

#[test]
fn a_wrap_vector_without_steps_is_a_load_error() {
    let e = load_error(&check_text(
        r#"{"kind":"scp03-wrap","source":"x","vectors":[{"s_enc":"000102030405060708090a0b0c0d0e0f",
        "s_mac":"000102030405060708090a0b0c0d0e0f","level":"01",
        "chaining_value":"00000000000000000000000000000000","counter_start":0,"steps":[]}]}"#,
    ));
    assert!(e.contains("vector 0") && e.contains("no steps"), "{e}");
}

#[test]
fn a_kdf_vector_with_a_short_output_is_a_load_error() {
    let e = load_error(&check_text(
        r#"{"kind":"kdf-ctr-cmac","source":"x","vectors":[{"key":"000102030405060708090a0b0c0d0e0f",
        "before_counter":"00","after_counter":"00","output_bits":0,"output":""}]}"#,
    ));
    assert!(e.contains("vector 0") && e.contains("output_bits"), "{e}");
}

/// The first pySim session, edited by `edit`, as a one-vector file.
fn pysim_session(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let text =
        fs::read_to_string(test_vectors::bundled_dir().join("scp03-session-pysim.json")).unwrap();
    let mut file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut first = file["vectors"][0].clone();
    edit(&mut first);
    file["vectors"] = serde_json::Value::Array(vec![first]);
    file.to_string()
}

#[test]
fn the_unedited_pysim_session_passes_alone() {
    let r = check_text(&pysim_session(|_| {}));
    assert_eq!((r.passed(), r.failed()), (1, 0), "{:#?}", r.files);
}

#[test]
fn a_derived_external_authenticate_without_commands_is_a_load_error() {
    let e = load_error(&check_text(&pysim_session(|v| {
        v["external_authenticate"]["derived"] = true.into();
        v["commands"] = serde_json::Value::Array(vec![]);
    })));
    assert!(e.contains("x.json") && e.contains("vector 0"), "{e}");
    assert!(e.contains("derived"), "{e}");
    // The same vector with its EXTERNAL AUTHENTICATE seen on the wire loads and passes, and so
    // does a derived one that recorded commands anchor.
    let r = check_text(&pysim_session(|v| {
        v["commands"] = serde_json::Value::Array(vec![]);
    }));
    assert_eq!((r.passed(), r.failed()), (1, 0), "{:#?}", r.files);
    let r = check_text(&pysim_session(|v| {
        v["external_authenticate"]["derived"] = true.into();
    }));
    assert_eq!((r.passed(), r.failed()), (1, 0), "{:#?}", r.files);
}

#[test]
fn a_partial_response_is_a_load_error() {
    let e = load_error(&check_text(&pysim_session(|v| {
        v["commands"][0]
            .as_object_mut()
            .unwrap()
            .remove("response_wrapped");
    })));
    assert!(
        e.contains("command 0") && e.contains("all three or none"),
        "{e}"
    );
}

#[test]
fn a_step_that_cannot_be_tampered_with_fails_the_vector() {
    // Level 00 (no secure messaging): a case-1 command is sent as is, with no C-MAC. Host and card
    // agree, but a flipped bit could not be detected, so the vector must fail.
    let r = check_text(
        r#"{"kind":"scp03-wrap","source":"x","vectors":[{"s_enc":"000102030405060708090a0b0c0d0e0f",
        "s_mac":"000102030405060708090a0b0c0d0e0f","level":"00",
        "chaining_value":"00000000000000000000000000000000","counter_start":0,
        "steps":[{"plain":"80f22002","wrapped":"80f22002"}]}]}"#,
    );
    assert_eq!((r.passed(), r.failed()), (0, 1), "{:#?}", r.files);
    let why = &r.files[0].failures[0].1;
    assert!(why.contains("no C-MAC to tamper with"), "{why}");
}

fn check_cli(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_test-vectors"))
        .args(args)
        .output()
        .expect("run test-vectors");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn check_expect_pins_the_passed_count() {
    let dir = test_vectors::bundled_dir();
    let dir = dir.to_str().unwrap();
    let total = test_vectors::check_dir(&test_vectors::bundled_dir())
        .unwrap()
        .passed();
    let (code, out) = check_cli(&["check", dir, "--expect", &total.to_string()]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = check_cli(&["check", dir, "--expect", &(total + 1).to_string()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("expected exactly {}", total + 1)),
        "{out}"
    );
    let (code, out) = check_cli(&["check", dir, "--expect", "many"]);
    assert_eq!(code, Some(2), "{out}");
}

/// The first scll channel vector (S8, level 33), edited by `edit`, as a one-vector file.
fn scll_channel(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let text =
        fs::read_to_string(test_vectors::bundled_dir().join("scp03-channel-scll.json")).unwrap();
    let mut file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut first = file["vectors"][0].clone();
    edit(&mut first);
    file["vectors"] = serde_json::Value::Array(vec![first]);
    file.to_string()
}

/// Flips the lowest bit of the byte at `index` of the hex string at `v[field]` (a JSON pointer).
fn flip_hex(v: &mut serde_json::Value, pointer: &str, index: usize) {
    let s = v.pointer(pointer).unwrap().as_str().unwrap();
    let mut b = hex::decode(s).unwrap();
    b[index] ^= 0x01;
    *v.pointer_mut(pointer).unwrap() = hex::encode(b).into();
}

#[test]
fn channel_vectors_fail_on_any_changed_anchor() {
    let r = check_text(&scll_channel(|_| {}));
    assert_eq!((r.passed(), r.failed()), (1, 0), "{:#?}", r.files);
    for (pointer, index, what) in [
        ("/external_authenticate", 20, "EXTERNAL AUTHENTICATE"),
        ("/card_cryptogram", 0, "card cryptogram"),
        ("/steps/0/wrapped", 7, "step 0 host wrap"),
        ("/steps/0/response_wrapped", 3, "step 0 card response wrap"),
    ] {
        let r = check_text(&scll_channel(|v| flip_hex(v, pointer, index)));
        assert_eq!(
            (r.passed(), r.failed()),
            (0, 1),
            "{pointer}: {:#?}",
            r.files
        );
        let why = &r.files[0].failures[0].1;
        assert!(why.contains(what), "{pointer}: {why}");
    }
}

#[test]
fn a_channel_without_steps_is_a_load_error() {
    let e = load_error(&check_text(&scll_channel(|v| {
        v["steps"] = serde_json::Value::Array(vec![]);
    })));
    assert!(e.contains("vector 0") && e.contains("no steps"), "{e}");
}
