//! The set-up of issue #16 with two operators: the JPKI issuer, the provider's SP-TSM and two
//! MNO-TSMs as processes — `tsm:kagi-mobile` (operator `mno:kagi-mobile`, SIMs `898100…`) and
//! `tsm:kagi-mvno` (operator `mno:kagi-mvno`, SIMs `898120…`) — the SP-TSM linked to both by
//! their `[[mno_tsm]]` sections, and one SIM of each operator registered with its own MNO-TSM.
//! Either key mode (`key_generation`). A variant of
//! `tests/life16/services.rs` (kept beside it, not shared, until the set-ups are
//! merged).

use crate::support;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::cli::{Scenario, field, kagi, ok, spawn_logged as spawn, wait_port};

/// One operator: its MNO-TSM's directory (`mno-a`, `mno-b`), party, port and SIM.
pub struct Operator {
    pub dir: &'static str,
    pub mno_tsm: &'static str,
    pub port: u16,
    /// The ICCID issuer prefix of its SIMs.
    pub prefix: &'static str,
    /// The SIM it sold (sim-a.img, sim-b.img) and its ICCID.
    pub image: PathBuf,
    pub iccid: String,
}

/// The four services running (killed when dropped) and the two operators.
pub struct Two {
    pub a: Operator,
    pub b: Operator,
    pub issuer_port: u16,
    /// The SP-TSM's PostgreSQL database (its SQLite file tsm/tsm.db when `None`).
    pub sp_pg: Option<String>,
    pub _running: Vec<support::cli::Killed>,
}

impl Two {
    /// One row of the SP-TSM's database as `a|b` (sqlite3's and psql's unaligned form).
    pub fn sp_row(&self, s: &Scenario, sql: &str) -> String {
        match &self.sp_pg {
            None => row(&s.dir.join("tsm/tsm.db"), sql),
            Some(url) => {
                let o = Command::new("psql")
                    .args([url, "-At", "-F", "|", "-c", sql])
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                String::from_utf8_lossy(&o.stdout).trim().to_string()
            }
        }
    }
}

/// One row of a SQLite database as `a|b`.
pub fn row(db: &Path, sql: &str) -> String {
    let o = Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

impl Operator {
    /// One row of this operator's MNO-TSM database.
    pub fn row(&self, s: &Scenario, sql: &str) -> String {
        row(&s.dir.join(self.dir).join("mno-tsm.db"), sql)
    }

    /// Everything this MNO-TSM stored and logged, as text (its database dumped, its log).
    pub fn everything(&self, s: &Scenario) -> String {
        let dump = Command::new("sqlite3")
            .arg(s.dir.join(self.dir).join("mno-tsm.db"))
            .arg(".dump")
            .output()
            .unwrap();
        assert!(dump.status.success());
        let log = std::fs::read_to_string(s.dir.join(format!("{}.log", self.dir))).unwrap();
        // After a restart (`restart_mno`), its second log too.
        let again =
            std::fs::read_to_string(s.dir.join(format!("{}-2.log", self.dir))).unwrap_or_default();
        format!("{}{log}{again}", String::from_utf8_lossy(&dump.stdout))
    }
}

/// A SIM of the operator with ICCID prefix `prefix` in `image` (no provider domain yet).
fn new_sim(s: &Scenario, serial: &str, prefix: &str, image: &Path) -> (String, String, String) {
    let sim = ok(kagi()
        .args([
            "sim",
            "provision",
            "--json",
            "--no-domain",
            "--serial",
            serial,
        ])
        .args(["--iccid-prefix", prefix, "--image"])
        .arg(image)
        .arg("--manufacturer-ca")
        .arg(s.dir.join("maker")));
    (
        field(&sim, "iccid"),
        field(&sim, "cin"),
        field(&sim, "card_certificate"),
    )
}

/// Sets up and starts the issuer, the SP-TSM and the two MNO-TSMs (SQLite each); each
/// operator registers its SIM with its own MNO-TSM. `key_generation`: `on-card` (the SIM
/// makes the phone's key) or `issuer` (the issuer makes it and seals it to the SIM).
pub fn start(s: &Scenario, key_generation: &str) -> Two {
    start_on(s, key_generation, None)
}

/// [`start`] with the SP-TSM on the PostgreSQL database `sp_pg`.
pub fn start_on(s: &Scenario, key_generation: &str, sp_pg: Option<String>) -> Two {
    let dir = &s.dir;
    let port = || tsm_server::testing::free_port().unwrap();
    let issuer_port = port();
    let mut ops = Vec::new();
    for (d, mno_tsm, operator, prefix, serial) in [
        ("mno-a", "tsm:kagi-mobile", "mno:kagi-mobile", "898100", "a"),
        ("mno-b", "tsm:kagi-mvno", "mno:kagi-mvno", "898120", "b"),
    ] {
        let p = port();
        ok(kagi()
            .args(["mno-tsm", "init", "--dir"])
            .arg(dir.join(d))
            .args(["--listen", &format!("127.0.0.1:{p}")])
            .args(["--name", mno_tsm, "--operator", operator])
            .args(["--iccid-prefix", prefix])
            .arg("--sp-tsm-key")
            .arg(dir.join("tsm/tsm.pub.pem"))
            .args(["--sp-tsm-url", &s.url()]));
        let image = dir.join(format!("sim-{serial}.img"));
        let sim = new_sim(s, serial, prefix, &image);
        assert!(sim.0.starts_with(prefix), "{}", sim.0);
        ops.push((
            Operator {
                dir: d,
                mno_tsm,
                port: p,
                prefix,
                image,
                iccid: sim.0.clone(),
            },
            sim,
        ));
    }
    let init = ok(kagi()
        .args(["--json", "jpki-issuer", "init", "--dir"])
        .arg(dir.join("issuer"))
        .args(["--listen", &format!("127.0.0.1:{issuer_port}")])
        .arg("--sp-tsm-key")
        .arg(dir.join("tsm/tsm.pub.pem"))
        .arg("--ca-dir")
        .arg(dir.join("pki"))
        .arg("--manufacturer-ca")
        .arg(s.maker_ca()));
    support::schema::document("jpki-issuer.init", init.as_bytes());
    let mut sp_toml = std::fs::read_to_string(dir.join("tsm/tsm.toml")).unwrap();
    for link in ["mno-a", "mno-b", "issuer"] {
        sp_toml
            .push_str(&std::fs::read_to_string(dir.join(link).join("sp-tsm-link.toml")).unwrap());
    }
    let sp_toml = sp_toml.replace(
        "key_generation = \"on-card\"",
        &format!("key_generation = \"{key_generation}\""),
    );
    assert!(sp_toml.contains(&format!("key_generation = \"{key_generation}\"")));
    std::fs::write(dir.join("tsm/tsm.toml"), sp_toml).unwrap();

    let mut running = Vec::new();
    let mut sp = kagi();
    sp.args(["sp-tsm", "serve", "--config"])
        .arg(dir.join("tsm/tsm.toml"))
        .arg("--insecure-file-keys")
        .arg(dir.join("tsm/keys"));
    if let Some(url) = &sp_pg {
        sp.args(["--database", url]);
    }
    running.push(spawn(sp, &dir.join("sp.log")));
    let mut issuer = kagi();
    issuer
        .args(["jpki-issuer", "serve", "--config"])
        .arg(dir.join("issuer/jpki-issuer.toml"));
    running.push(spawn(issuer, &dir.join("issuer.log")));
    for (o, _) in &ops {
        let mut mno = kagi();
        mno.args(["mno-tsm", "serve", "--config"])
            .arg(dir.join(o.dir).join("mno-tsm.toml"))
            .arg("--insecure-file-keys")
            .arg(dir.join(o.dir).join("keys"));
        running.push(spawn(mno, &dir.join(format!("{}.log", o.dir))));
    }
    for p in [issuer_port, s.port, ops[0].0.port, ops[1].0.port] {
        wait_port(p);
    }
    for (o, (iccid, cin, cert)) in &ops {
        ok(kagi()
            .args(["tsm", "mno", "--config"])
            .arg(dir.join(o.dir).join("operator.toml"))
            .args(["register-card", "--iccid", iccid, "--cin", cin])
            .args(["--card-certificate", cert]));
    }
    let mut ops = ops.into_iter().map(|(o, _)| o);
    let (Some(a), Some(b)) = (ops.next(), ops.next()) else {
        unreachable!("two operators")
    };
    Two {
        a,
        b,
        issuer_port,
        sp_pg,
        _running: running,
    }
}

/// Operator A's MNO-TSM stopped (killed, reaped): the old SIM's operator unreachable.
pub fn stop_mno_a(two: &mut Two) {
    // The order `start` spawned them in: SP-TSM, issuer, MNO-TSM A, MNO-TSM B.
    drop(two._running.remove(2));
}

/// Operator A's MNO-TSM started again on its configuration and database (log mno-a-2.log).
pub fn restart_mno_a(s: &Scenario, two: &mut Two) {
    let d = s.dir.join(two.a.dir);
    let mut mno = kagi();
    mno.args(["mno-tsm", "serve", "--config"])
        .arg(d.join("mno-tsm.toml"))
        .arg("--insecure-file-keys")
        .arg(d.join("keys"));
    two._running
        .push(spawn(mno, &s.dir.join(format!("{}-2.log", two.a.dir))));
    wait_port(two.a.port);
}

/// Another SIM of operator `o` (serial `serial`, image sim-SERIAL.img) registered with its
/// MNO-TSM; its ICCID and image.
pub fn another_sim(s: &Scenario, o: &Operator, serial: &str) -> (String, PathBuf) {
    let image = s.dir.join(format!("sim-{serial}.img"));
    let (iccid, cin, cert) = new_sim(s, serial, o.prefix, &image);
    ok(kagi()
        .args(["tsm", "mno", "--config"])
        .arg(s.dir.join(o.dir).join("operator.toml"))
        .args(["register-card", "--iccid", &iccid, "--cin", &cin])
        .args(["--card-certificate", &cert]));
    (iccid, image)
}

/// `kagi --json tsm provider apply` with `application` for `iccid`: the refusal code, or the
/// operation id when accepted (the ticket to ticket.txt, the mailed access code to code.txt).
pub fn apply(s: &Scenario, iccid: &str, application: &Path) -> Result<String, String> {
    let app = application.display().to_string();
    provider(s, &["apply", "--iccid", iccid, "--application", &app])
}

/// `kagi --json tsm provider apply-transfer` of credential `op` to SIM `iccid` with
/// `application`: as [`apply`].
pub fn apply_transfer(
    s: &Scenario,
    op: &str,
    iccid: &str,
    application: &Path,
) -> Result<String, String> {
    let app = application.display().to_string();
    let args = ["apply-transfer", "--credential", op, "--iccid", iccid];
    provider(s, &[&args[..], &["--application", &app]].concat())
}

/// `kagi --json tsm provider ARGS --password-file pw.txt --out issue.json`: the refusal
/// code, or the operation id (ticket and mailed access code written for the relay).
fn provider(s: &Scenario, args: &[&str]) -> Result<String, String> {
    let o = kagi()
        .args(["--json", "tsm", "provider", "--config"])
        .arg(s.dir.join("tsm/sp.toml"))
        .args(args)
        .arg("--password-file")
        .arg(s.dir.join("pw.txt"))
        .arg("--out")
        .arg(s.dir.join("issue.json"))
        .output()
        .unwrap();
    if !o.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "not a JSON error ({e}): {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        });
        return Err(v["error"]["code"].as_str().unwrap().to_string());
    }
    support::schema::document("tsm.provider.issue", &o.stdout);
    let issued = std::fs::read_to_string(s.dir.join("issue.json")).unwrap();
    std::fs::write(s.dir.join("ticket.txt"), field(&issued, "ticket")).unwrap();
    let code = crate::newest_code(&s.dir.join("tsm/outbox"));
    std::fs::write(s.dir.join("code.txt"), code).unwrap();
    Ok(field(&issued, "op"))
}

/// The relay runs the download of the accepted application to the SIM in `image`; its
/// outcome (`completed` when the credential was written).
pub fn relay(s: &Scenario, image: &Path) -> String {
    let out = ok(s.relay().arg("--sim").arg("--sim-image").arg(image));
    field(&out, "outcome")
}

/// `kagi tsm provider check` of credential `op`.
pub fn check(s: &Scenario, op: &str) -> serde_json::Value {
    let out = ok(kagi()
        .args(["--json", "tsm", "provider", "--config"])
        .arg(s.dir.join("tsm/sp.toml"))
        .args(["check", "--credential", op]));
    serde_json::from_str(&out).unwrap()
}
