//! OpenSC, an independent client, against the simulated JPKI card through a real pcscd + vpcd:
//! its `jpki` driver lists and reads the certificates, its PKCS#11 module logs in with the
//! authentication PIN and signs, and `openssl` verifies the signature against the certificate
//! read back; wrong PINs count down as OpenSC reports them, and a blocked PIN shows as locked.

#![cfg(feature = "pcsc")]

mod support;

use support::PrivatePcsc;

/// OpenSC's PKCS#11 module, wherever this machine keeps it: `KAGI_OPENSC_PKCS11` if set,
/// else the file the `opensc-pkcs11` package installed (`dpkg -L`), else the known library
/// directories (every multiarch directory under /usr/lib, lib64, /usr/local/lib).
fn module() -> String {
    use std::path::PathBuf;
    if let Ok(m) = std::env::var("KAGI_OPENSC_PKCS11") {
        return m;
    }
    let name = "opensc-pkcs11.so";
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(o) = std::process::Command::new("dpkg")
        .args(["-L", "opensc-pkcs11"])
        .output()
    {
        candidates.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.ends_with(&format!("/{name}")))
                .map(PathBuf::from),
        );
    }
    let mut dirs = vec![
        PathBuf::from("/usr/lib"),
        PathBuf::from("/usr/lib64"),
        PathBuf::from("/usr/local/lib"),
    ];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().contains("-linux-") {
                dirs.push(e.path());
            }
        }
    }
    for d in dirs {
        candidates.push(d.join(name));
        candidates.push(d.join("pkcs11").join(name));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| {
            panic!(
                "OpenSC's PKCS#11 module ({name}) is not installed: run scripts/setup.sh, or set \
                 KAGI_OPENSC_PKCS11 to its path"
            )
        })
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn opensc(pcsc: &PrivatePcsc, tool: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["env", "OPENSC_DRIVER=jpki", tool];
    all.extend_from_slice(args);
    pcsc.run(all[0], &all[1..])
}

#[test]
fn opensc_lists_reads_logs_in_and_signs() {
    let module = module();
    let pcsc = PrivatePcsc::start_with(1, "jpki-demo");
    let work = pcsc.work.clone();
    let path = |f: &str| work.join(f).display().to_string();
    let list = opensc(&pcsc, "pkcs15-tool", &["--list-certificates"]);
    let out = text(&list);
    assert!(list.status.success(), "{out}\n{}", pcsc.logs());
    for label in [
        "User Authentication Certificate",
        "Digital Signature Certificate",
        "User Authentication Certificate CA",
        "Digital Signature Certificate CA",
    ] {
        assert!(
            out.contains(&format!("[{label}]")),
            "{label} missing:\n{out}"
        );
    }
    // The authentication certificate reads without a PIN.
    let cert = opensc(&pcsc, "pkcs15-tool", &["--read-certificate", "01"]);
    assert!(cert.status.success(), "{}", text(&cert));
    std::fs::write(path("cert.pem"), &cert.stdout).unwrap();
    let subject = pcsc.run(
        "openssl",
        &["x509", "-in", &path("cert.pem"), "-noout", "-subject"],
    );
    assert!(
        text(&subject).contains("CN = KAGITEST") && text(&subject).contains("C = JP"),
        "{}",
        text(&subject)
    );
    let pubkey = pcsc.run(
        "openssl",
        &["x509", "-in", &path("cert.pem"), "-noout", "-pubkey"],
    );
    std::fs::write(path("pub.pem"), &pubkey.stdout).unwrap();
    // PKCS#11: log in with the authentication PIN and sign with the authentication key.
    std::fs::write(path("data.txt"), b"kagi eligibility challenge").unwrap();
    let sign = opensc(
        &pcsc,
        "pkcs11-tool",
        &[
            "--module",
            &module,
            "--slot-index",
            "0",
            "--login",
            "--pin",
            "1234",
            "--sign",
            "--id",
            "01",
            "-m",
            "SHA256-RSA-PKCS",
            "-i",
            &path("data.txt"),
            "-o",
            &path("sig.bin"),
        ],
    );
    assert!(sign.status.success(), "{}\n{}", text(&sign), pcsc.logs());
    let verify = pcsc.run(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            &path("pub.pem"),
            "-signature",
            &path("sig.bin"),
            &path("data.txt"),
        ],
    );
    assert!(text(&verify).contains("Verified OK"), "{}", text(&verify));
    // Wrong PINs count down as OpenSC reports them; the third blocks the PIN.
    for left in ["2", "1"] {
        let bad = opensc(
            &pcsc,
            "pkcs11-tool",
            &[
                "--module",
                &module,
                "--slot-index",
                "0",
                "--login",
                "--pin",
                "9999",
                "--sign",
                "--id",
                "01",
                "-m",
                "SHA256-RSA-PKCS",
                "-i",
                &path("data.txt"),
                "-o",
                &path("x.bin"),
            ],
        );
        assert!(text(&bad).contains("CKR_PIN_INCORRECT"), "{}", text(&bad));
        let pins = opensc(&pcsc, "pkcs15-tool", &["--list-pins"]);
        assert!(
            text(&pins).contains(&format!("Tries left     : {left}")),
            "{}",
            text(&pins)
        );
    }
    opensc(
        &pcsc,
        "pkcs11-tool",
        &[
            "--module",
            &module,
            "--slot-index",
            "0",
            "--login",
            "--pin",
            "9999",
            "--sign",
            "--id",
            "01",
            "-m",
            "SHA256-RSA-PKCS",
            "-i",
            &path("data.txt"),
            "-o",
            &path("x.bin"),
        ],
    );
    let tokens = opensc(&pcsc, "pkcs11-tool", &["--module", &module, "-T"]);
    assert!(
        text(&tokens).contains("user PIN locked"),
        "{}",
        text(&tokens)
    );
    // The signature password is untouched.
    let pins = opensc(&pcsc, "pkcs15-tool", &["--list-pins"]);
    assert!(
        text(&pins).contains("Tries left     : 5"),
        "{}",
        text(&pins)
    );
}
