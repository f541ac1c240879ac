//! Issue #16's end-to-end test: the download of the JPKI user-authentication credential to a
//! SIM as seed 004 draws it (別紙1, steps ①–⑱), across its three organisations, each a
//! process of its own with its own keys, configuration and database — the JPKI issuer
//! (`kagi jpki-issuer serve`), the provider's SP-TSM (`kagi sp-tsm serve`) and the operator's
//! MNO-TSM (`kagi mno-tsm serve`) —, on SQLite and on PostgreSQL (`steps`). Each step is a
//! named marker (printed with the time since the test began) and names every assertion of
//! its checks; each check reads an observable fact — a row or audit entry in the database of
//! the service that must hold it (and its absence from the others'), the SIM's contents, a
//! mail, a certificate or signature checked with openssl — rather than the code's own
//! report.
//!
//! The negative paths (`negatives`): an application signed by a revoked card, by an expired
//! card, a forged signature, one used before (refused at `Apply`), the issuer unreachable at
//! `Apply`, wrong access codes and passwords (counted down, the last locks),
//! a request to the MNO-TSM for a provider that does not own the SIM, and a captured
//! inter-service message sent again.
//!
//! The default key generation is on the card (`key_generation = "on-card"`): the issuer
//! checks the application (②③) at the SP-TSM's `Apply`, before ④ (nothing stored, mailed
//! or asked of the MNO-TSM for a refused one), and certifies the key once the SIM has made
//! it, within the download (⑯, checking the application again and spending its nonce). The
//! seed's mode (the issuer makes the key, ⑦) is walked by `tests/tsm_issuer`.

#[path = "../support/mod.rs"]
mod support;

mod negatives;
mod steps;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use support::cli::{Scenario, contains, kagi, ok};
use support::services::Services;

/// The steps of one walk: each [`Walk::step`] prints its name with the time since the walk
/// began and gives the name back for the messages of its assertions.
pub struct Walk {
    start: Instant,
}

impl Walk {
    /// A walk beginning now.
    pub fn begin() -> Walk {
        Walk {
            start: Instant::now(),
        }
    }

    /// Marks the step `name`.
    pub fn step(&self, name: &'static str) -> &'static str {
        eprintln!("[{:>8.3} s] {name}", self.start.elapsed().as_secs_f64());
        name
    }
}

/// openssl with `args`; its stdout, stderr and whether it succeeded.
pub fn openssl(args: &[&str]) -> (String, String, bool) {
    let o = Command::new("openssl").args(args).output().unwrap();
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        o.status.success(),
    )
}

/// `path` as a string for openssl's arguments.
pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The serial of the DER certificate `der` as openssl prints it, without zero bytes in front
/// (as kagi prints serials).
pub fn openssl_serial(der: &Path) -> String {
    let (out, err, ok) = openssl(&["x509", "-inform", "DER", "-noout", "-serial", "-in", p(der)]);
    assert!(ok, "{err}");
    let mut s = out.trim().strip_prefix("serial=").unwrap().to_string();
    while s.len() > 2 && s.starts_with("00") {
        s.drain(..2);
    }
    s
}

/// Whether openssl verifies the DER certificate `der` under the CA certificate `ca_pem`.
pub fn verifies_under(der: &Path, ca_pem: &Path) -> bool {
    let pem = der.with_extension("pem");
    let (_, err, ok) = openssl(&["x509", "-inform", "DER", "-in", p(der), "-out", p(&pem)]);
    assert!(ok, "{err}");
    let (out, _, ok) = openssl(&["verify", "-CAfile", p(ca_pem), p(&pem)]);
    ok && out.trim_end().ends_with(": OK")
}

/// The public key of the DER certificate `der` as a PEM file beside it.
pub fn public_key_of(der: &Path) -> PathBuf {
    let (out, err, ok) = openssl(&["x509", "-inform", "DER", "-noout", "-pubkey", "-in", p(der)]);
    assert!(ok, "{err}");
    let pem = der.with_extension("pub.pem");
    std::fs::write(&pem, out).unwrap();
    pem
}

/// Whether openssl verifies `sig` (DER or PKCS#1 as the key's type wants) over `data` with
/// the public key `pub_pem` and SHA-256.
pub fn signature_verifies(pub_pem: &Path, sig: &Path, data: &Path) -> bool {
    let (out, _, ok) = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        p(pub_pem),
        "-signature",
        p(sig),
        p(data),
    ]);
    ok && out.contains("Verified OK")
}

/// What each service keeps, to be searched for secrets: its database (the SQLite file and
/// its WAL, or a `pg_dump` of its PostgreSQL database) and its log; named `service: what`.
/// Call with the services stopped (their files are complete), PostgreSQL still running.
pub fn kept(s: &Scenario, services: &Services) -> Vec<(String, Vec<u8>)> {
    let dir = &s.dir;
    let mut out = Vec::new();
    for (who, sqlite, pg, log) in [
        (
            "issuer",
            "issuer/jpki-issuer.db",
            &services.db.issuer,
            "issuer.log",
        ),
        ("sp-tsm", "tsm/tsm.db", &services.db.sp, "sp.log"),
        ("mno-tsm", "mno/mno-tsm.db", &services.db.mno, "mno.log"),
    ] {
        match pg {
            None => {
                for f in [sqlite.to_string(), format!("{sqlite}-wal")] {
                    if let Ok(bytes) = std::fs::read(dir.join(&f)) {
                        out.push((format!("{who}: {f}"), bytes));
                    }
                }
            }
            Some(url) => {
                let o = Command::new("pg_dump")
                    .args(["--data-only", url.as_str()])
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                out.push((format!("{who}: pg_dump"), o.stdout));
            }
        }
        out.push((
            format!("{who}: {log}"),
            std::fs::read(dir.join(log)).unwrap(),
        ));
    }
    out
}

/// Where `secret` (raw, or as lower- or upper-case hex, as a dump shows bytes) is found in
/// `kept`: the names of those places.
pub fn found_in(kept: &[(String, Vec<u8>)], secret: &[u8]) -> Vec<String> {
    let forms = [
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
    ];
    kept.iter()
        .filter(|(_, bytes)| forms.iter().any(|f| contains(bytes, f)))
        .map(|(name, _)| name.clone())
        .collect()
}

/// `kagi jpki read-cert` of the SIM's user-authentication certificate into `out`.
pub fn sim_certificate(s: &Scenario, out: &Path) {
    ok(kagi()
        .args(["jpki", "read-cert", "--sim", "--sim-image"])
        .arg(s.dir.join("sim.img"))
        .args(["--cert", "auth", "-o"])
        .arg(out));
}

#[test]
fn seed_004_steps_1_to_18_on_sqlite() {
    steps::walk("e2e16-sqlite", None);
}

/// The same with all three services on PostgreSQL (a private instance, a database each).
#[test]
fn seed_004_steps_1_to_18_on_postgres() {
    let pg = tsm_server::testing::PrivatePostgres::start("e2e16").unwrap();
    steps::walk("e2e16-pg", Some(&pg));
}
