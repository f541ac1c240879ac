//! Transfer to a new SIM on the holder's fresh signature, across operators and within one:
//! the new SIM prepared by the MNO-TSM serving it and written; then the old certificate on the
//! issuer's CRL as `superseded` (openssl's reading), `kagi eligibility read` refusing the old
//! SIM and accepting the new one, both certificates linked to the same My Number serial, and
//! each operator's MNO-TSM without a trace of the other's SIM. Refused: a transfer application
//! signed by another card, the same application again (a replay), a transfer to a SIM no link
//! serves.

use crate::support::cli::{Scenario, kagi, ok};
use crate::two_mnos::{self, Two};
use std::path::Path;
use std::process::{Command, Output};

/// What openssl makes of a DER CRL: whether it verifies with `ca` (PEM), and its entries as
/// (serial, reason) in openssl's words — computed without kagi.
fn openssl_crl(crl: &Path, ca: &Path) -> (bool, Vec<(String, String)>) {
    let o = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(crl)
        .arg("-CAfile")
        .arg(ca)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let verified = String::from_utf8_lossy(&o.stderr).contains("verify OK");
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(l) = lines.next() {
        if let Some(serial) = l.strip_prefix("Serial Number: ") {
            entries.push((serial.to_string(), String::new()));
        } else if l.starts_with("X509v3 CRL Reason Code")
            && let Some(last) = entries.last_mut()
        {
            last.1 = lines.next().unwrap_or_default().to_string();
        }
    }
    (verified, entries)
}

/// openssl's serial of the phone certificate on the SIM in `image` (no zero bytes in front).
fn phone_serial(s: &Scenario, image: &Path) -> String {
    let der = s.dir.join("phone.der");
    ok(kagi()
        .args(["jpki", "read-cert", "--which", "auth", "-o"])
        .arg(&der)
        .args(["--sim", "--sim-image"])
        .arg(image));
    let o = Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-serial", "-in"])
        .arg(&der)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let mut serial = text.trim().strip_prefix("serial=").unwrap().to_string();
    while serial.len() > 2 && serial.starts_with("00") {
        serial.drain(..2);
    }
    serial
}

/// The issuer's CRL (GET /v1/crl), checked against the UA CA by openssl.
fn issuer_crl(s: &Scenario, two: &Two) -> Vec<(String, String)> {
    let f = s.dir.join("got.der");
    let got = Command::new("curl")
        .args(["-sf", "-o"])
        .arg(&f)
        .arg(format!("http://127.0.0.1:{}/v1/crl", two.issuer_port))
        .status()
        .unwrap();
    assert!(got.success());
    let (verified, entries) = openssl_crl(&f, &s.dir.join("pki/auth-ca.crt.pem"));
    assert!(verified, "the issuer's CRL verifies with the UA CA");
    entries
}

/// `kagi --json eligibility read` of the SIM in `image` against the UA CA and the CRL just
/// fetched: (exit code, verdict).
fn eligibility(s: &Scenario, image: &Path) -> (Option<i32>, String) {
    let o: Output = kagi()
        .args(["--json", "eligibility", "read", "--sim", "--sim-image"])
        .arg(image)
        .arg("--ca")
        .arg(s.dir.join("pki/auth-ca.crt.der"))
        .arg("--crl")
        .arg(s.dir.join("got.der"))
        .output()
        .unwrap();
    let v = crate::support::schema::document("eligibility.read", &o.stdout);
    (o.status.code(), v["verdict"].as_str().unwrap().to_string())
}

/// The holder's transfer application from SIM `from` to SIM `to`, signed on the My Number
/// card in `card` (certified by the scenario's CAs): its file.
pub(crate) fn transfer_application(
    s: &Scenario,
    card: &str,
    from: &str,
    to: &str,
    out: &str,
) -> std::path::PathBuf {
    let o = s.apply_with(
        card,
        "pki",
        to,
        "sp:kagi-bank",
        out,
        &["--kind", "transfer", "--from-iccid", from],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = crate::support::schema::document("jpki.apply", &o.stdout);
    assert_eq!(v["kind"], "transfer");
    assert_eq!(v["from_iccid"], from);
    s.dir.join(out)
}

/// `kagi jpki sign` on the SIM in `image` with the PIN letter of phone certificate
/// `serial`; the raw P-256 signature (r ‖ s) checked against the public key of the
/// certificate read from the SIM, with the p256 crate (ECDSA over SHA-256).
pub(crate) fn new_sim_signs(s: &Scenario, image: &Path, serial: &str) {
    use der::{Decode, Encode};
    use p256::ecdsa::signature::Verifier;
    let (msg, sig) = (s.dir.join("m.txt"), s.dir.join("m.sig"));
    std::fs::write(&msg, b"signed on the new SIM").unwrap();
    ok(kagi()
        .args(["jpki", "sign", "--sim", "--sim-image"])
        .arg(image)
        .arg("--pin-file")
        .arg(s.dir.join(format!("issuer/pin-mailer/{serial}.pin")))
        .arg("-i")
        .arg(&msg)
        .arg("-o")
        .arg(&sig));
    let der = s.dir.join("new-phone.der");
    ok(kagi()
        .args(["jpki", "read-cert", "--which", "auth", "-o"])
        .arg(&der)
        .args(["--sim", "--sim-image"])
        .arg(image));
    let cert = x509_cert::Certificate::from_der(&std::fs::read(&der).unwrap()).unwrap();
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .unwrap();
    let key =
        <p256::ecdsa::VerifyingKey as p256::pkcs8::DecodePublicKey>::from_public_key_der(&spki)
            .unwrap();
    let signature = p256::ecdsa::Signature::from_slice(&std::fs::read(&sig).unwrap()).unwrap();
    key.verify(b"signed on the new SIM", &signature).unwrap();
}

/// Moves credential `op` (on `from`) to `to` (its image `image`) on a fresh application and
/// checks everything the issue asks for after a transfer; the new credential's operation.
fn transfer(
    s: &Scenario,
    two: &Two,
    (op, from, from_image): (&str, &str, &Path),
    (to, image): (&str, &Path),
    on_card: bool,
) -> String {
    let before = two_mnos::check(s, op);
    let old_serial = phone_serial(s, from_image);
    let application = transfer_application(s, "mynumber.img", from, to, "transfer.bin");
    let new_op = two_mnos::apply_transfer(s, op, to, &application).unwrap();
    // The same application again: the issuer saw its nonce (in the on-card mode the issuer
    // is asked only once the SIM made the key: the SIM's download under way refuses it).
    assert_eq!(
        two_mnos::apply_transfer(s, op, to, &application).unwrap_err(),
        if on_card {
            "business.in-progress"
        } else {
            "application.replayed"
        }
    );
    // Nothing revoked before the new credential is on the new SIM.
    assert_eq!(two_mnos::check(s, op)["state"], "active");
    assert_eq!(two_mnos::relay(s, image), "completed");

    let old = two_mnos::check(s, op);
    let new = two_mnos::check(s, &new_op);
    assert_eq!(old["state"], "revoked", "{old}");
    assert_eq!(old["revoked"], "superseded", "{old}");
    assert_eq!(new["state"], "active", "{new}");
    assert_eq!(new["iccid"], to);
    assert_eq!(
        new["my_number_sign_serial"], before["my_number_sign_serial"],
        "both certificates link to the same My Number card"
    );
    let new_serial = phone_serial(s, image);
    assert_ne!(new_serial, old_serial);
    // The issuer's CRL: the old certificate superseded (the withdrawal goes through the
    // SP-TSM's outbox: asked again until it is there), the new one not listed.
    let mut entries = issuer_crl(s, two);
    for _ in 0..100 {
        if entries.iter().any(|e| e.0 == old_serial) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        entries = issuer_crl(s, two);
    }
    assert!(
        entries.contains(&(old_serial.clone(), "Superseded".to_string())),
        "{entries:?}"
    );
    assert!(!entries.iter().any(|e| e.0 == new_serial), "{entries:?}");
    // The new SIM signs with its phone key (the PIN from the issuer's letter); the signature
    // checks with the key of the certificate the SIM holds, verified here with p256.
    new_sim_signs(s, image, new["serial"].as_str().unwrap());
    // The relying party: the old SIM refused, the new one accepted.
    assert_eq!(eligibility(s, from_image), (Some(4), "revoked".to_string()));
    assert_eq!(eligibility(s, image), (Some(0), "eligible".to_string()));
    new_op
}

/// SIM `iccid`'s provider domain in the registry of the MNO-TSM in `o` (hex; empty: none).
fn registry_domain(s: &Scenario, o: &two_mnos::Operator, iccid: &str) -> String {
    o.row(
        s,
        &format!("SELECT hex(sd_aid) FROM cards WHERE iccid = '{iccid}'"),
    )
}

/// The SP-TSM's queued deletion of the provider's domain on SIM `iccid`: `mno_tsm|state`.
fn queued_deletion(s: &Scenario, two: &Two, iccid: &str) -> String {
    two.sp_row(
        s,
        &format!("SELECT mno_tsm, state FROM domain_deletions WHERE iccid = '{iccid}'"),
    )
}

#[test]
fn a_credential_moves_to_another_operators_sim_and_then_within_that_operator() {
    moves("issuer");
}

/// The same with the phone's key made on each new SIM (the on-card mode: the issuer
/// certifies it, a `Certify` that `moves` the old certificate).
#[test]
fn a_credential_with_its_key_made_on_the_sim_moves_likewise() {
    moves("on-card");
}

/// The same with the SP-TSM on a private PostgreSQL (its transfer's transaction, the
/// deletion outbox and its retry there).
#[test]
fn a_credential_moves_likewise_with_the_sp_tsm_on_postgres() {
    let pg = tsm_server::testing::PrivatePostgres::start("move16").unwrap();
    moves_on("issuer", Some(pg.url.clone()));
}

fn moves(key_generation: &str) {
    moves_on(key_generation, None)
}

fn moves_on(key_generation: &str, sp_pg: Option<String>) {
    let name = format!("move16-transfer-{key_generation}-{}", sp_pg.is_some());
    let s = Scenario::new(&name, false);
    let dir = &s.dir;
    let mut two = two_mnos::start_on(&s, key_generation, sp_pg);
    let (a_iccid, a_image) = (two.a.iccid.clone(), two.a.image.clone());
    let (b_iccid, b_image) = (two.b.iccid.clone(), two.b.image.clone());

    // The first download, to operator A's SIM: A's MNO-TSM records the provider's domain.
    let application = s.apply(&a_iccid);
    let op = two_mnos::apply(&s, &a_iccid, &application).unwrap();
    assert_eq!(two_mnos::relay(&s, &a_image), "completed");
    assert_eq!(registry_domain(&s, &two.a, &a_iccid), "A00000015153505001");

    let on_card = key_generation == "on-card";
    // Refused at once by the issuer, in both key modes (the on-card mode asks it to check the
    // transfer application before anything is stored): signed by another My Number card (its
    // own certificate from the same CA); nothing is queued, the credential stays where it is.
    let other = transfer_application(&s, "other-card.img", &a_iccid, &b_iccid, "other.bin");
    assert_eq!(
        two_mnos::apply_transfer(&s, &op, &b_iccid, &other).unwrap_err(),
        "application.other-card"
    );
    assert_eq!(two_mnos::check(&s, &op)["state"], "active");
    // Refused: to a SIM of an operator no link serves.
    let c = ok(kagi()
        .args(["sim", "provision", "--json", "--no-domain", "--serial", "c"])
        .args(["--iccid-prefix", "898130", "--image"])
        .arg(dir.join("sim-c.img"))
        .arg("--manufacturer-ca")
        .arg(dir.join("maker")));
    let c_iccid = crate::support::cli::field(&c, "iccid");
    let to_c = transfer_application(&s, "mynumber.img", &a_iccid, &c_iccid, "to-c.bin");
    assert_eq!(
        two_mnos::apply_transfer(&s, &op, &c_iccid, &to_c).unwrap_err(),
        "business.no-mno-for-sim"
    );

    // Across operators, A's SIM to the MVNO's, while A's MNO-TSM is unreachable: the
    // transfer and the revocation happen; the deletion on the old SIM waits in the outbox.
    two_mnos::stop_mno_a(&mut two);
    let moved = transfer(
        &s,
        &two,
        (&op, &a_iccid, &a_image),
        (&b_iccid, &b_image),
        on_card,
    );
    assert_eq!(
        two.b.row(
            &s,
            &format!("SELECT kind, state FROM ops WHERE iccid = '{b_iccid}'")
        ),
        "prepare-sim|completed"
    );
    assert_eq!(queued_deletion(&s, &two, &a_iccid), "tsm:kagi-mobile|due");
    let events = two.sp_row(
        &s,
        &format!("SELECT event FROM audit WHERE op_id = 'sim:{a_iccid}' ORDER BY id"),
    );
    assert!(
        events.starts_with("domain-deletion-queued\ndomain-deletion-failed"),
        "{events}"
    );
    // Back: the sweeper's retry reaches it, and the old SIM's record loses the domain.
    two_mnos::restart_mno_a(&s, &mut two);
    for _ in 0..600 {
        if queued_deletion(&s, &two, &a_iccid).ends_with("|done") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(queued_deletion(&s, &two, &a_iccid), "tsm:kagi-mobile|done");
    assert_eq!(registry_domain(&s, &two.a, &a_iccid), "");
    assert_eq!(
        two.a.row(
            &s,
            &format!(
                "SELECT actor, event FROM audit WHERE op_id = 'sim:{a_iccid}' ORDER BY id DESC LIMIT 2"
            )
        ),
        // Newest first: the deletion on the card queued with the record's change (`retire`).
        "tsm:kagi|domain-deletion-on-card-queued\ntsm:kagi|domain-deleted"
    );
    // Neither operator's MNO-TSM holds or logs anything of the other's SIM.
    assert!(
        !two.a.everything(&s).contains(&b_iccid),
        "MNO-TSM A saw SIM B"
    );
    assert!(
        !two.b.everything(&s).contains(&a_iccid),
        "MNO-TSM B saw SIM A"
    );

    // Within the MVNO: to a second SIM of its own (its MNO-TSM up: deleted at once).
    let (b2, b2_image) = two_mnos::another_sim(&s, &two.b, "b2");
    assert_eq!(registry_domain(&s, &two.b, &b_iccid), "A00000015153505001");
    transfer(
        &s,
        &two,
        (&moved, &b_iccid, &b_image),
        (&b2, &b2_image),
        on_card,
    );
    assert_eq!(queued_deletion(&s, &two, &b_iccid), "tsm:kagi-mvno|done");
    assert_eq!(registry_domain(&s, &two.b, &b_iccid), "");
    assert_eq!(registry_domain(&s, &two.b, &b2), "A00000015153505001");
    assert!(!two.a.everything(&s).contains(&b2), "MNO-TSM A saw SIM B2");
    drop(two);
}
