//! IsoApplet — a real Java Card applet, its CAP file as OpenSC's CI builds it — loaded and
//! installed by `kagi sim serve --install` into a simulated card through the card manager,
//! served through a private pcscd + vpcd, and driven by the installed OpenSC tools along the
//! flow OpenSC's own CI runs (`/work/shared/javacard/README.md`): SELECT, `pkcs15-init
//! --create-pkcs15`, PIN change and unblock, on-card RSA-2048 and EC P-256 key generation,
//! `pkcs15-tool -D`, ECDSA and RSA signatures verified by `pkcs11-tool` and `openssl`.
//! Everything runs in the test's own namespaces and stops with it.

#![cfg(feature = "pcsc")]

mod support;

use support::PrivatePcsc;

const ISO: &str = "/../cap/tests/data/isoapplet-v0/isoapplet.cap";

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn module() -> String {
    for d in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
        "/usr/lib64",
    ] {
        let p = format!("{d}/opensc-pkcs11.so");
        if std::path::Path::new(&p).is_file() {
            return p;
        }
    }
    std::env::var("KAGI_OPENSC_PKCS11").expect("OpenSC's PKCS#11 module (scripts/setup.sh)")
}

/// Runs an OpenSC tool against the card and asserts it succeeded.
fn ok(pcsc: &PrivatePcsc, tool: &str, args: &[&str]) -> String {
    let o = pcsc.run(tool, args);
    let t = text(&o);
    assert!(
        o.status.success(),
        "{tool} {args:?} failed:\n{t}\n{}",
        pcsc.logs()
    );
    t
}

/// `pkcs11-tool` signs `data` by `mech` with key `id` after the user PIN (123456), into `sig`.
fn sign(pcsc: &PrivatePcsc, m: &str, mech: &str, id: &str, data: &str, sig: &str) {
    ok(
        pcsc,
        "pkcs11-tool",
        &[
            "--module", m, "-l", "-p", "123456", "-s", "-m", mech, "-d", id, "-i", data, "-o", sig,
        ],
    );
}

/// `pkcs11-tool --verify` accepts `sig` over `data` by `mech` with key `id`.
fn verify(pcsc: &PrivatePcsc, m: &str, mech: &str, id: &str, data: &str, sig: &str) {
    let v = ok(
        pcsc,
        "pkcs11-tool",
        &[
            "--module",
            m,
            "--verify",
            "-m",
            mech,
            "-d",
            id,
            "-i",
            data,
            "--signature-file",
            sig,
        ],
    );
    assert!(v.contains("Signature is valid"), "{v}");
}

#[test]
fn opensc_drives_isoapplet_installed_by_sim_serve() {
    let cap = format!("{}{ISO}", env!("CARGO_MANIFEST_DIR"));
    let keep = std::env::temp_dir().join(format!("kagi-isoapplet-{}", std::process::id()));
    std::fs::create_dir_all(&keep).unwrap();
    let image = keep.join("card.img");
    let pcsc = PrivatePcsc::start_install_image(std::path::Path::new(&cap), &image);
    let work = pcsc.work.clone();
    let path = |f: &str| work.join(f).display().to_string();
    // SELECT of the applet: IsoApplet answers its version, 9000.
    let t = ok(
        &pcsc,
        "opensc-tool",
        &["-r", "0", "-s", "00A404000CF276A288BCFBA69D34F3100100"],
    );
    assert!(
        t.contains("SW1=0x90, SW2=0x00") && t.contains("00 06 06"),
        "{t}"
    );
    // The PKCS#15 structure, with the SO PIN and PUK.
    ok(
        &pcsc,
        "pkcs15-init",
        &[
            "--create-pkcs15",
            "--so-pin",
            "123456",
            "--so-puk",
            "0123456789abcdef",
        ],
    );
    ok(
        &pcsc,
        "pkcs15-tool",
        &["--change-pin", "--pin", "123456", "--new-pin", "654321"],
    );
    ok(
        &pcsc,
        "pkcs15-tool",
        &[
            "--unblock-pin",
            "--puk",
            "0123456789abcdef",
            "--new-pin",
            "123456",
        ],
    );
    // On-card key generation: RSA-2048 and EC P-256.
    ok(
        &pcsc,
        "pkcs15-init",
        &[
            "--generate-key",
            "rsa/2048",
            "--id",
            "1",
            "--key-usage",
            "decrypt,sign",
            "--auth-id",
            "FF",
            "--pin",
            "123456",
        ],
    );
    ok(
        &pcsc,
        "pkcs15-init",
        &[
            "--generate-key",
            "ec/secp256r1",
            "--id",
            "3",
            "--key-usage",
            "sign",
            "--auth-id",
            "FF",
            "--pin",
            "123456",
        ],
    );
    let dump = ok(&pcsc, "pkcs15-tool", &["-D"]);
    assert!(
        dump.contains("Private RSA Key") && dump.contains("Private EC Key"),
        "{dump}"
    );
    let m = module();
    // The PKCS#11 self test: digests, RSA signatures with every mechanism, verification and
    // decryption with the on-card key. (OpenSC's isoApplet driver offers no random numbers:
    // its C_GenerateRandom line is OpenSC's, not the card's.)
    let t = ok(
        &pcsc,
        "pkcs11-tool",
        &["--module", &m, "-l", "-t", "-p", "123456"],
    );
    assert!(t.contains("SHA256-RSA-PKCS: OK"), "{t}");
    assert!(t.contains("Decryption (currently only for RSA)"), "{t}");
    assert!(
        !t.contains("FAILED") && !t.contains("ERR: signature"),
        "{t}"
    );
    // ECDSA-SHA1 with key 3, verified by pkcs11-tool.
    std::fs::write(path("data"), b"kagi isoapplet data").unwrap();
    sign(&pcsc, &m, "ECDSA-SHA1", "3", &path("data"), &path("ec.sig"));
    verify(&pcsc, &m, "ECDSA-SHA1", "3", &path("data"), &path("ec.sig"));
    // RSA PKCS#1 SHA-256 with key 1, verified by openssl against the public key read back.
    sign(
        &pcsc,
        &m,
        "SHA256-RSA-PKCS",
        "1",
        &path("data"),
        &path("rsa.sig"),
    );
    ok(
        &pcsc,
        "pkcs15-tool",
        &["--read-public-key", "1", "-o", &path("rsa.pub")],
    );
    let v = pcsc.run(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            &path("rsa.pub"),
            "-signature",
            &path("rsa.sig"),
            &path("data"),
        ],
    );
    assert!(text(&v).contains("Verified OK"), "{}", text(&v));
    std::fs::copy(path("data"), keep.join("data")).unwrap();
    std::fs::copy(path("rsa.pub"), keep.join("rsa.pub")).unwrap();
    // The card stopped (its image saved) and served again from the image: the keys it
    // generated still sign, and the old public key verifies.
    drop(pcsc);
    let pcsc = PrivatePcsc::start_image(&image);
    let k = |f: &str| keep.join(f).display().to_string();
    sign(
        &pcsc,
        &m,
        "SHA256-RSA-PKCS",
        "1",
        &k("data"),
        &k("rsa2.sig"),
    );
    let v = pcsc.run(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            &k("rsa.pub"),
            "-signature",
            &k("rsa2.sig"),
            &k("data"),
        ],
    );
    assert!(text(&v).contains("Verified OK"), "{}", text(&v));
    drop(pcsc);
    let _ = std::fs::remove_dir_all(&keep);
}

/// The key-import build (as OpenSC's CI builds it): keys made by `openssl` are written to the
/// card with `pkcs11-tool -w`, then sign on the card; `pkcs11-tool --verify` (ECDSA, against
/// the public key openssl derived) and `openssl` (RSA) verify.
#[test]
fn opensc_imports_openssl_keys_into_isoapplet_and_signs() {
    let cap = format!(
        "{}/../cap/tests/data/isoapplet-v0/isoapplet-keyimport.cap",
        env!("CARGO_MANIFEST_DIR")
    );
    let pcsc = PrivatePcsc::start_install(std::path::Path::new(&cap));
    let work = pcsc.work.clone();
    let path = |f: &str| work.join(f).display().to_string();
    std::fs::write(path("data"), b"kagi key import").unwrap();
    let ossl = |args: &[&str]| {
        let o = pcsc.run("openssl", args);
        assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
    };
    ossl(&[
        "ecparam",
        "-name",
        "secp256r1",
        "-genkey",
        "-noout",
        "-out",
        &path("ec.pem"),
    ]);
    ossl(&[
        "ec",
        "-in",
        &path("ec.pem"),
        "-pubout",
        "-out",
        &path("ecpub.pem"),
    ]);
    ossl(&["genrsa", "-out", &path("rsa.pem"), "2048"]);
    ossl(&[
        "rsa",
        "-in",
        &path("rsa.pem"),
        "-pubout",
        "-out",
        &path("rsapub.pem"),
    ]);
    ok(
        &pcsc,
        "pkcs15-init",
        &[
            "--create-pkcs15",
            "--so-pin",
            "123456",
            "--so-puk",
            "0123456789abcdef",
        ],
    );
    let m = module();
    for (file, ty, id) in [
        ("ec.pem", "privkey", "4"),
        ("ecpub.pem", "pubkey", "4"),
        ("rsa.pem", "privkey", "5"),
    ] {
        ok(
            &pcsc,
            "pkcs11-tool",
            &[
                "--module",
                &m,
                "-l",
                "-p",
                "123456",
                "-w",
                &path(file),
                "-y",
                ty,
                "-d",
                id,
            ],
        );
    }
    sign(&pcsc, &m, "ECDSA-SHA1", "4", &path("data"), &path("ec.sig"));
    verify(&pcsc, &m, "ECDSA-SHA1", "4", &path("data"), &path("ec.sig"));
    sign(
        &pcsc,
        &m,
        "SHA256-RSA-PKCS",
        "5",
        &path("data"),
        &path("rsa.sig"),
    );
    let v = pcsc.run(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            &path("rsapub.pem"),
            "-signature",
            &path("rsa.sig"),
            &path("data"),
        ],
    );
    assert!(text(&v).contains("Verified OK"), "{}", text(&v));
}

/// The persistent writes the simulator logged when it stopped (`kagi sim serve` prints
/// "saved card image … (N persistent writes since start-up…").
fn writes_logged(log: &str) -> u64 {
    let at = log
        .find("saved card image")
        .unwrap_or_else(|| panic!("no image saved:\n{log}"));
    let tail = &log[at..];
    let open = tail.find('(').expect("a write count") + 1;
    tail[open..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no write count in {tail}"))
}

/// The issue's acceptance under power loss: power is cut at persistent writes spread over
/// OpenSC's `pkcs15-init --generate-key` (EC P-256: the first, the last, and the write count of
/// an uncut run split in seven; RSA-2048: the first and four spread), the card is restarted
/// from its image, and OpenSC still works with it: `pkcs15-tool -D` reads it; the key is
/// either listed and signs (verified by `pkcs11-tool --verify` once OpenSC wrote its public
/// key object, its last step) or absent with no public key object; a new key is then
/// generated, signs and verifies.
#[test]
fn power_loss_during_opensc_key_generation_leaves_a_card_opensc_still_uses() {
    power_loss_sweep(false);
}

/// The same at every persistent write of both generations (~215 cuts, minutes: run with
/// `--ignored`), except that it lists the cuts after which OpenSC can make no new key instead
/// of failing at the first. IsoApplet v0 has such cuts of its own: `DedicatedFile.addChildren`
/// (called by CREATE FILE, outside any transaction) stores `currentNumChildren + 1` before
/// `children[n] = file`, so a cut between the two leaves a directory with a null child, and
/// every later path lookup through it throws NullPointerException (`6F00`), as on a real card
/// (each persistent write atomic on its own, in program order).
#[test]
#[ignore]
fn power_loss_at_every_write_of_opensc_key_generation() {
    power_loss_sweep(true);
}

fn power_loss_sweep(every: bool) {
    let cap = format!("{}{ISO}", env!("CARGO_MANIFEST_DIR"));
    let keep = std::env::temp_dir().join(format!(
        "kagi-isoapplet-tear-{}-{every}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&keep);
    std::fs::create_dir_all(&keep).unwrap();
    let k = |f: &str| keep.join(f).display().to_string();
    let base = keep.join("base.img");
    let pcsc = PrivatePcsc::start_install_image(std::path::Path::new(&cap), &base);
    ok(
        &pcsc,
        "pkcs15-init",
        &[
            "--create-pkcs15",
            "--so-pin",
            "123456",
            "--so-puk",
            "0123456789abcdef",
        ],
    );
    drop(pcsc);
    std::fs::write(k("data"), b"kagi isoapplet torn").unwrap();
    let m = module();
    let img = keep.join("card.img");
    for (alg, kind, mech, sig_len, parts) in [
        ("ec/secp256r1", "EC", "ECDSA-SHA1", 64, 7u64),
        ("rsa/2048", "RSA", "SHA256-RSA-PKCS", 256, 4),
    ] {
        let generate = |id: &'static str| {
            [
                "--generate-key",
                alg,
                "--id",
                id,
                "--key-usage",
                "sign",
                "--auth-id",
                "FF",
                "--pin",
                "123456",
            ]
        };
        // An uncut run: how many persistent writes the whole session makes.
        std::fs::copy(&base, &img).unwrap();
        let pcsc = PrivatePcsc::start_image(&img);
        ok(&pcsc, "pkcs15-init", &generate("3"));
        let total = writes_logged(&pcsc.stop());
        assert!(total > 20, "only {total} writes in a key generation");
        let (mut with_key, mut without) = (0, 0);
        let mut cuts: Vec<u64> = (1..parts).map(|i| total * i / parts).collect();
        cuts.insert(0, 1);
        if kind == "EC" {
            cuts.push(total);
        }
        if every {
            cuts = (1..=total).collect();
        }
        let n_cuts = cuts.len();
        let mut stuck = Vec::new();
        for n in cuts {
            std::fs::copy(&base, &img).unwrap();
            let pcsc = PrivatePcsc::start_image_tear(&img, n);
            let g = pcsc.run("pkcs15-init", &generate("3"));
            let log = pcsc.stop();
            // The card went mute at write n and stayed so (pkcs15-init fails, unless the cut
            // write was one of the last, whose answers it does not need).
            assert!(
                writes_logged(&log) == n && log.contains(", power lost"),
                "{alg}: power was not cut at write {n} (generation: {})\n{log}",
                text(&g)
            );
            let pcsc = PrivatePcsc::start_image(&img);
            let dump = ok(&pcsc, "pkcs15-tool", &["-D"]);
            let sig = k(&format!("{kind}-{n}.sig"));
            if dump.contains(&format!("Private {kind} Key")) {
                // The key is there and signs. OpenSC writes the public key object last:
                // where it made it, pkcs11-tool verifies with it.
                with_key += 1;
                sign(&pcsc, &m, mech, "3", &k("data"), &sig);
                assert_eq!(
                    std::fs::metadata(&sig).unwrap().len(),
                    sig_len,
                    "{alg}: cut at write {n}"
                );
                if dump.contains(&format!("Public {kind} Key")) {
                    verify(&pcsc, &m, mech, "3", &k("data"), &sig);
                }
            } else {
                without += 1;
                assert!(
                    !dump.contains(&format!("Public {kind} Key")),
                    "{alg}: cut at write {n}:\n{dump}"
                );
            }
            // OpenSC goes on working with the card: a new key is made, signs and verifies.
            // (In the sweep of every write, the cuts after which it cannot are collected
            // instead: see `power_loss_at_every_write_of_opensc_key_generation`.)
            let g = pcsc.run("pkcs15-init", &generate("4"));
            if !g.status.success() {
                assert!(
                    every,
                    "{alg}: after the cut at write {n} OpenSC can make no new key (one of \
                     IsoApplet v0's own non-atomic CREATE FILE points? see \
                     power_loss_at_every_write_of_opensc_key_generation):\n{}\n{}",
                    text(&g),
                    pcsc.logs()
                );
                stuck.push(n);
                continue;
            }
            let sig = k(&format!("{kind}4-{n}.sig"));
            sign(&pcsc, &m, mech, "4", &k("data"), &sig);
            verify(&pcsc, &m, mech, "4", &k("data"), &sig);
        }
        eprintln!(
            "MEASURE OpenSC {alg} key generation: {total} persistent writes; cut at {n_cuts} of them: key there and signing after {with_key}, absent after {without}; no new key possible after the cuts at writes {stuck:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&keep);
}
