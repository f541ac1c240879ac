//! The application signed with the My Number card (seed 004, 別紙1 ②③⑧), process by
//! process: `kagi jpki apply` on a simulated jpki-demo card, `kagi tsm provider issue
//! --application` checking it. The signature is verified independently with `openssl`, the
//! linked serial compared with what `openssl x509` reads from the card's certificate, and
//! every refusal has its own `--json` error code — before anything reaches the TSM (none runs
//! for the refusals).

mod support;

use std::path::Path;
use std::process::Output;
use support::cli::{Killed, Scenario, field, kagi, ok, serve, wait_port};

const SP: &str = "sp:kagi-bank";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `kagi --json tsm provider issue` with `application` for `iccid`: the error code when it
/// is refused (exit 1), `None` when it succeeds.
fn issue_code(s: &Scenario, iccid: &str, application: &Path) -> Option<String> {
    let o = s
        .issue_command(iccid, application, &s.dir.join("issue.json"))
        .arg("--json")
        .output()
        .unwrap();
    if o.status.success() {
        return None;
    }
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not a JSON error ({e}): {}", text(&o)));
    // Every TSM refusal says in words what to do (the refusal-code catalogue) and whether a
    // retry may help: none of an application's refusals does.
    assert!(
        v["error"]["hint"].as_str().is_some_and(|h| h.len() > 10),
        "{v}"
    );
    assert_eq!(v["error"]["retryable"], false, "{v}");
    Some(v["error"]["code"].as_str().unwrap().to_string())
}

fn varint(b: &[u8], i: &mut usize) -> u64 {
    let (mut n, mut shift) = (0u64, 0);
    loop {
        let x = b[*i];
        *i += 1;
        n |= u64::from(x & 0x7F) << shift;
        if x & 0x80 == 0 {
            return n;
        }
        shift += 7;
    }
}

/// The application file taken apart by its documented layout (postcard: version byte,
/// four length-prefixed strings — ICCID, provider, subscriber reference, contact —, 16-byte
/// nonce, varint time; then the certificate and the
/// signature, length-prefixed): the signed bytes (domain + body), certificate, signature.
fn parts(b: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut i = 1;
    for _ in 0..4 {
        let n = varint(b, &mut i) as usize;
        i += n;
    }
    i += 16;
    varint(b, &mut i);
    let mut signed = b"kagi jpki application v1\0".to_vec();
    signed.extend(&b[..i]);
    let n = varint(b, &mut i) as usize;
    let cert = b[i..i + n].to_vec();
    i += n;
    let n = varint(b, &mut i) as usize;
    let sig = b[i..i + n].to_vec();
    assert_eq!(i + n, b.len(), "nothing after the signature");
    (signed, cert, sig)
}

fn openssl(args: &[&str]) -> Output {
    std::process::Command::new("openssl")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn an_application_signed_on_the_my_number_card_is_checked_before_issuing() {
    let s = Scenario::new("tsm-apply", false);
    let dir = &s.dir;
    let p = |n: &str| dir.join(n).display().to_string();
    let mut tsm = Killed(serve(dir));
    wait_port(s.port);
    let iccid = s.sim("apply-phone", &dir.join("sim.img"));

    // A valid application: its signature verifies with openssl over the documented bytes,
    // with the key of the certificate it carries, which is the card's signature certificate.
    let app = s.apply(&iccid);
    let bytes = std::fs::read(&app).unwrap();
    let (signed, cert, sig) = parts(&bytes);
    std::fs::write(p("signed.bin"), &signed).unwrap();
    std::fs::write(p("app.sig"), &sig).unwrap();
    std::fs::write(p("app-cert.der"), &cert).unwrap();
    let pk = openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        &p("app-cert.der"),
        "-pubkey",
        "-noout",
    ]);
    std::fs::write(p("pub.pem"), &pk.stdout).unwrap();
    let v = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        &p("pub.pem"),
        "-signature",
        &p("app.sig"),
        &p("signed.bin"),
    ]);
    assert!(v.status.success(), "openssl: {}", text(&v));
    let o = openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        &p("app-cert.der"),
        "-noout",
        "-serial",
        "-issuer",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("digital signature"),
        "the signature CA issued it: {out}"
    );
    let serial = out
        .lines()
        .find_map(|l| l.strip_prefix("serial="))
        .unwrap()
        .trim_start_matches('0')
        .to_string();
    ok(kagi()
        .args([
            "jpki",
            "read-cert",
            "--cert",
            "sign",
            "--sim",
            "--sim-image",
        ])
        .arg(dir.join("mynumber.img"))
        .arg("--pin-file")
        .arg(dir.join("sign-password.txt"))
        .arg("-o")
        .arg(dir.join("card-sign.der")));
    assert_eq!(std::fs::read(dir.join("card-sign.der")).unwrap(), cert);

    // The old flag is refused, naming the new flow, before anything is checked or sent.
    let o = s
        .issue_command(&iccid, &app, &s.dir.join("issue.json"))
        .args(["--my-number-serial", "0ABC"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("kagi jpki apply"), "{}", text(&o));

    // Accepted; the credential is linked to the certificate's serial (the issue output and
    // the TSM's receipt say so).
    let issued = {
        let mut c = s.issue_command(&iccid, &app, &s.dir.join("issue.json"));
        ok(c.arg("--json"));
        std::fs::read_to_string(dir.join("issue.json")).unwrap()
    };
    let hex = |h: &str| u64::from_str_radix(h, 16).unwrap();
    assert_eq!(hex(&field(&issued, "my_number_sign_serial")), hex(&serial));
    // Downloaded through the relay, the TSM's stored credential carries that serial.
    std::fs::write(dir.join("ticket.txt"), field(&issued, "ticket")).unwrap();
    std::fs::write(dir.join("code.txt"), field(&issued, "access_code")).unwrap();
    let relay = s
        .relay()
        .args(["--sim", "--sim-image"])
        .arg(dir.join("sim.img"))
        .output()
        .unwrap();
    assert!(relay.status.success(), "{}", text(&relay));
    let check = ok(kagi()
        .args(["--json", "tsm", "provider", "--config"])
        .arg(dir.join("tsm/sp.toml"))
        .args(["check", "--credential", &field(&issued, "op")]));
    assert_eq!(hex(&field(&check, "my_number_sign_serial")), hex(&serial));
    // The same application again: a replay.
    assert_eq!(
        issue_code(&s, &iccid, &app).as_deref(),
        Some("application.replayed")
    );

    // Forged: one bit of the signature flipped.
    let mut forged = bytes.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    std::fs::write(p("forged.bin"), &forged).unwrap();
    assert_eq!(
        issue_code(&s, &iccid, &dir.join("forged.bin")).as_deref(),
        Some("application.bad-signature")
    );
    // Another SIM, another provider.
    let other_sim = s.apply_with(
        "mynumber.img",
        "pki",
        "8981000000000000999",
        SP,
        "o1.bin",
        &[],
    );
    assert!(other_sim.status.success(), "{}", text(&other_sim));
    assert_eq!(
        issue_code(&s, &iccid, &dir.join("o1.bin")).as_deref(),
        Some("application.wrong-sim")
    );
    let other_sp = s.apply_with(
        "mynumber.img",
        "pki",
        &iccid,
        "sp:other-bank",
        "o2.bin",
        &[],
    );
    assert!(other_sp.status.success(), "{}", text(&other_sp));
    assert_eq!(
        issue_code(&s, &iccid, &dir.join("o2.bin")).as_deref(),
        Some("application.wrong-provider")
    );
    // Stale: dated an hour ago (the window is ten minutes).
    let hour_ago = (std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let stale = s.apply_with(
        "mynumber.img",
        "pki",
        &iccid,
        SP,
        "o3.bin",
        &["--at-unix", &hour_ago],
    );
    assert!(stale.status.success(), "{}", text(&stale));
    assert_eq!(
        issue_code(&s, &iccid, &dir.join("o3.bin")).as_deref(),
        Some("application.stale")
    );
    // A card certified by another CA.
    ok(kagi()
        .args(["ca", "init", "--dir"])
        .arg(dir.join("other-pki")));
    let foreign = s.apply_with("foreign.img", "other-pki", &iccid, SP, "o4.bin", &[]);
    assert!(foreign.status.success(), "{}", text(&foreign));
    assert_eq!(
        issue_code(&s, &iccid, &dir.join("o4.bin")).as_deref(),
        Some("application.unknown-issuer")
    );
    // The card's signature certificate revoked at the CA (its CRL in the CA directory): a
    // fresh application from it is refused; so is one on a plain revocation list.
    let fresh = s.apply_with("mynumber.img", "pki", &iccid, SP, "o5.bin", &[]);
    assert!(fresh.status.success(), "{}", text(&fresh));
    let list = dir.join("revoked.txt");
    std::fs::write(&list, format!("0x{serial}\n")).unwrap();
    let o = s
        .issue_command(&iccid, &dir.join("o5.bin"), &dir.join("issue.json"))
        .arg("--json")
        .arg("--sign-revoked")
        .arg(&list)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("\"application.revoked\""), "{}", text(&o));
    ok(kagi()
        .args(["ca", "revoke", "--kind", "sign", "--dir"])
        .arg(dir.join("pki"))
        .arg(&serial));
    assert!(dir.join("pki/sign-ca.crl.der").exists());
    assert_eq!(
        issue_code(&s, &iccid, &dir.join("o5.bin")).as_deref(),
        Some("application.revoked")
    );
    tsm.0.kill().unwrap();
    tsm.0.wait().unwrap();
}
