//! The three organisations as processes (the JPKI issuer, the provider's SP-TSM, the
//! operator's MNO-TSM), a SIM registered by its operator, and a download to it — the set-up
//! of `tests/tsm_issuer` (kept here so this binary's lifecycle tests stand alone).

use crate::support;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::cli::{Scenario, field, kagi, ok, spawn_logged as spawn, wait_port};

/// The three services running, each killed when dropped, and the SIM they serve.
pub struct Services {
    pub iccid: String,
    pub issuer_port: u16,
    /// The issuer's and the MNO-TSM's PostgreSQL databases (SQLite files when `None`).
    pub pg: Option<(String, String)>,
    pub _running: Vec<support::cli::Killed>,
}

impl Services {
    /// One row of the issuer's database as `a|b` (sqlite3's and psql's unaligned form).
    pub fn issuer_row(&self, dir: &Path, sql: &str) -> String {
        let pg = self.pg.as_ref().map(|p| p.0.as_str());
        row(&dir.join("issuer/jpki-issuer.db"), pg, sql)
    }

    /// The same in the MNO-TSM's database.
    pub fn mno_row(&self, dir: &Path, sql: &str) -> String {
        let pg = self.pg.as_ref().map(|p| p.1.as_str());
        row(&dir.join("mno/mno-tsm.db"), pg, sql)
    }
}

fn row(sqlite: &Path, pg: Option<&str>, sql: &str) -> String {
    let o = match pg {
        None => Command::new("sqlite3").arg(sqlite).arg(sql).output(),
        Some(url) => Command::new("psql")
            .args([url, "-At", "-F", "|", "-c", sql])
            .output(),
    }
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Two databases of the private PostgreSQL `pg` for the issuer and the MNO-TSM.
pub fn pg_databases(pg: &tsm_server::testing::PrivatePostgres) -> (String, String) {
    for db in ["issuer", "mno"] {
        let o = Command::new("psql")
            .args([pg.url.as_str(), "-c", &format!("CREATE DATABASE {db}")])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let base = pg.url.rsplit_once('/').unwrap().0;
    (format!("{base}/issuer"), format!("{base}/mno"))
}

/// Sets up and starts the issuer, the MNO-TSM and the SP-TSM (SQLite each) and registers a
/// SIM (sim.img) as its operator sells it.
pub fn start(s: &Scenario) -> Services {
    start_on(s, None)
}

/// [`start`] with the issuer and the MNO-TSM on the PostgreSQL databases `pg`.
pub fn start_on(s: &Scenario, pg: Option<(String, String)>) -> Services {
    let dir = &s.dir;
    let (mno_port, issuer_port) = (
        tsm_server::testing::free_port().unwrap(),
        tsm_server::testing::free_port().unwrap(),
    );
    let sim = ok(kagi()
        .args([
            "sim",
            "provision",
            "--json",
            "--no-domain",
            "--serial",
            "life",
        ])
        .arg("--image")
        .arg(dir.join("sim.img"))
        .arg("--manufacturer-ca")
        .arg(dir.join("maker")));
    let iccid = field(&sim, "iccid");
    ok(kagi()
        .args(["mno-tsm", "init", "--dir"])
        .arg(dir.join("mno"))
        .args(["--listen", &format!("127.0.0.1:{mno_port}")])
        .arg("--sp-tsm-key")
        .arg(dir.join("tsm/tsm.pub.pem"))
        .args(["--sp-tsm-url", &s.url()]));
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
    sp_toml.push_str(&std::fs::read_to_string(dir.join("mno/sp-tsm-link.toml")).unwrap());
    sp_toml.push_str(&std::fs::read_to_string(dir.join("issuer/sp-tsm-link.toml")).unwrap());
    std::fs::write(dir.join("tsm/tsm.toml"), sp_toml).unwrap();

    let mut issuer = kagi();
    issuer
        .args(["jpki-issuer", "serve", "--config"])
        .arg(dir.join("issuer/jpki-issuer.toml"));
    let mut mno = kagi();
    mno.args(["mno-tsm", "serve", "--config"])
        .arg(dir.join("mno/mno-tsm.toml"))
        .arg("--insecure-file-keys")
        .arg(dir.join("mno/keys"));
    if let Some((i, m)) = &pg {
        issuer.args(["--database", i]);
        mno.args(["--database", m]);
    }
    let mut sp = kagi();
    sp.args(["sp-tsm", "serve", "--config"])
        .arg(dir.join("tsm/tsm.toml"))
        .arg("--insecure-file-keys")
        .arg(dir.join("tsm/keys"));
    let running = vec![
        spawn(sp, &dir.join("sp.log")), // first: `restart_sp_tsm` replaces it
        spawn(mno, &dir.join("mno.log")),
        spawn(issuer, &dir.join("issuer.log")),
    ];
    for p in [issuer_port, mno_port, s.port] {
        wait_port(p);
    }
    ok(kagi()
        .args(["tsm", "mno", "--config"])
        .arg(dir.join("mno/operator.toml"))
        .args([
            "register-card",
            "--iccid",
            &iccid,
            "--cin",
            &field(&sim, "cin"),
            "--card-certificate",
            &field(&sim, "card_certificate"),
        ]));
    Services {
        iccid,
        issuer_port,
        pg,
        _running: running,
    }
}

/// The SP-TSM's process stopped (killed, reaped).
pub fn stop_sp_tsm(services: &mut Services) {
    drop(services._running.remove(0));
}

/// The SP-TSM started again on its configuration and database (its log appended to
/// sp2.log), listening when this returns.
pub fn restart_sp_tsm(s: &Scenario, services: &mut Services) {
    let mut sp = kagi();
    sp.args(["sp-tsm", "serve", "--config"])
        .arg(s.dir.join("tsm/tsm.toml"))
        .arg("--insecure-file-keys")
        .arg(s.dir.join("tsm/keys"));
    services
        ._running
        .insert(0, spawn(sp, &s.dir.join("sp2.log")));
    wait_port(s.port);
}

/// The user applies (application.bin, signed on the simulated My Number card), the provider
/// passes it on, the access code comes by mail, the relay downloads through both TSMs to
/// sim.img. The operation id and the PIN letter's path.
pub fn download(s: &Scenario, iccid: &str) -> (String, PathBuf) {
    let dir = &s.dir;
    let application = s.apply(iccid);
    let issued = ok(kagi()
        .args(["--json", "tsm", "provider", "--config"])
        .arg(dir.join("tsm/sp.toml"))
        .args(["apply", "--iccid", iccid, "--application"])
        .arg(&application)
        .arg("--password-file")
        .arg(dir.join("pw.txt"))
        .arg("--out")
        .arg(dir.join("issue.json")));
    let _ = issued;
    let issued = std::fs::read_to_string(dir.join("issue.json")).unwrap();
    std::fs::write(dir.join("ticket.txt"), field(&issued, "ticket")).unwrap();
    std::fs::write(dir.join("code.txt"), newest_code(&dir.join("tsm/outbox"))).unwrap();
    let out = ok(s
        .relay()
        .arg("--sim")
        .arg("--sim-image")
        .arg(dir.join("sim.img")));
    assert_eq!(field(&out, "outcome"), "completed", "{out}");
    let op = field(&issued, "op");
    let status = check(s, &op);
    let serial = status["serial"].as_str().unwrap().to_string();
    (op, dir.join(format!("issuer/pin-mailer/{serial}.pin")))
}

/// The access code in the newest mail of the maildir `maildir`.
pub fn newest_code(maildir: &Path) -> String {
    let mut mails: Vec<_> = std::fs::read_dir(maildir.join("new"))
        .unwrap()
        .flatten()
        .map(|e| (e.metadata().unwrap().modified().unwrap(), e.path()))
        .collect();
    mails.sort();
    let text = std::fs::read_to_string(&mails.last().expect("a mail").1).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Access code: "))
        .unwrap_or_else(|| panic!("no access code line: {text}"))
        .trim()
        .to_string()
}

/// `kagi tsm provider check` of operation `op`.
pub fn check(s: &Scenario, op: &str) -> serde_json::Value {
    let out = ok(kagi()
        .args(["--json", "tsm", "provider", "--config"])
        .arg(s.dir.join("tsm/sp.toml"))
        .args(["check", "--credential", op]));
    serde_json::from_str(&out).unwrap()
}
