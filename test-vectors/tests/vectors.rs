//! The repository's copy of the public vectors passes on both sides, and the loader rejects
//! what the format does not allow.

use std::fs;

#[test]
fn bundled_vectors_all_pass() {
    let report = test_vectors::check_dir(&test_vectors::bundled_dir()).expect("vector dir");
    for f in &report.files {
        println!("{}", f.line());
    }
    assert!(report.files.len() >= 5, "expected the five public files");
    assert_eq!(report.failed(), 0, "{:#?}", report.files);
    // 12 CMAC + 120 KDF + 4 KCV + 4 kdf3 + 9 sessions, as listed in FORMAT.md.
    assert_eq!(report.passed(), 149);
}

fn check_text(text: &str) -> test_vectors::Report {
    let dir = std::env::temp_dir().join(format!("kagi-tv-{}-{}", std::process::id(), text.len()));
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
