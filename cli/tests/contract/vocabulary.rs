//! One spelling per idea (README "One spelling per idea"): the new flags are in `--help`, the
//! old ones are hidden there and still accepted.

use std::process::Command;

fn kagi(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kagi"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn new_spellings_are_documented_and_old_ones_still_work() {
    let dir = super::scratch("vocabulary");
    let help = |args: &[&str]| String::from_utf8_lossy(&kagi(&dir, args).stdout).into_owned();
    for (cmd, new, old) in [
        (&["ca", "init", "--help"][..], "--ca-dir", "--dir"),
        (&["sim", "serve", "--help"][..], "--sim-image", "--image"),
        (&["sim", "serve", "--help"][..], "--sim-ca-dir", "--pki-dir"),
        (
            &["sim", "provision", "--help"][..],
            "--sim-image",
            "--image",
        ),
        (&["jpki", "read-cert", "--help"][..], "--cert", "--which"),
        (
            &["jpki", "info", "--help"][..],
            "--sim-ca-dir",
            "--sim-pki-dir",
        ),
    ] {
        let h = help(cmd);
        assert!(h.contains(new), "{cmd:?} lacks {new}:\n{h}");
        assert!(
            !h.split_whitespace().any(|w| w.trim_end_matches(',') == old),
            "{cmd:?} still shows {old}:\n{h}"
        );
    }
    // The old spellings are accepted: a CA made with --dir, a card made with --sim-pki-dir,
    // its certificate read with --which, the new spellings read the same files.
    let ok = |args: &[&str]| {
        let o = kagi(&dir, args);
        assert!(o.status.success(), "{args:?}: {}", super::show(&o));
        o
    };
    ok(&["ca", "init", "--dir", "old"]);
    let again = ok(&["ca", "init", "--ca-dir", "old", "--json"]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("old/auth-ca.crt.pem"),
        "{}",
        super::show(&again)
    );
    let card = ["--sim", "--sim-preset", "jpki-demo", "--sim-image", "c.img"];
    let mut a = vec!["jpki", "read-cert"];
    a.extend(card);
    a.extend(["--sim-pki-dir", "old", "--which", "auth", "-o", "a1.der"]);
    ok(&a);
    let mut b = vec!["jpki", "read-cert"];
    b.extend(card);
    b.extend(["--cert", "auth", "-o", "a2.der"]);
    ok(&b);
    assert_eq!(
        std::fs::read(dir.join("a1.der")).unwrap(),
        std::fs::read(dir.join("a2.der")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn trace_and_json_where_they_would_do_nothing_are_usage_errors() {
    let dir = super::scratch("flags-without-effect");
    for (args, says) in [
        (
            &["ca", "init", "--ca-dir", "pki", "--trace"][..],
            "--trace does nothing for kagi ca",
        ),
        (
            &[
                "perso",
                "open-mailer",
                "--key",
                "k",
                "--mailer",
                "m",
                "--trace",
            ][..],
            "OUT/logs/",
        ),
        (
            &["tsm", "serve", "--config", "none.toml", "--json"][..],
            "--json does nothing for kagi tsm serve",
        ),
    ] {
        let o = kagi(&dir, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", super::show(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(says),
            "{args:?}: {}",
            super::show(&o)
        );
        assert!(!dir.join("pki").exists(), "{args:?} did something");
    }
    // Under --json the refusal is a JSON error document too.
    let o = kagi(
        &dir,
        &["--json", "ca", "init", "--ca-dir", "pki", "--trace"],
    );
    let e = crate::support::schema::document("error", &o.stdout);
    assert_eq!(e["error"]["code"], "usage");
    // Where the flags work, they are taken.
    let o = kagi(&dir, &["apdu", "--sim", "--trace", "00A4040000"]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stderr).contains(">> 00A40400"),
        "{}",
        super::show(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
