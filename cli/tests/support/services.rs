//! Issue #16's three organisations as processes — the JPKI issuer (`kagi jpki-issuer serve`),
//! the provider's SP-TSM (`kagi sp-tsm serve`) and the operator's MNO-TSM (`kagi mno-tsm
//! serve`) —, each on its own configuration, keys and database (SQLite, or a PostgreSQL
//! database given in [`Databases`]), a SIM registered by its operator, and the steps tests
//! take through them (apply, the mailed access code, the relay's download). The processes
//! are killed (by their PID) and reaped when [`Services`] is dropped, also when a test fails.

use super::cli::{Killed, Scenario, field, kagi, ok, spawn_logged, wait_port};
use super::gate::Gate;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where each service keeps its state: a PostgreSQL URL, or its SQLite file when `None`.
#[derive(Clone, Debug, Default)]
pub struct Databases {
    /// The JPKI issuer's.
    pub issuer: Option<String>,
    /// The MNO-TSM's.
    pub mno: Option<String>,
    /// The SP-TSM's.
    pub sp: Option<String>,
}

impl Databases {
    /// The issuer and the MNO-TSM on databases of their own in the private PostgreSQL `pg`
    /// (the SP-TSM on SQLite).
    pub fn issuer_and_mno_on(pg: &tsm_server::testing::PrivatePostgres) -> Databases {
        Databases {
            issuer: Some(pg_database(pg, "issuer")),
            mno: Some(pg_database(pg, "mno")),
            sp: None,
        }
    }

    /// All three on databases of their own in the private PostgreSQL `pg`.
    pub fn all_on(pg: &tsm_server::testing::PrivatePostgres) -> Databases {
        Databases {
            sp: Some(pg_database(pg, "sp")),
            ..Databases::issuer_and_mno_on(pg)
        }
    }
}

/// A database `name` made in the private PostgreSQL `pg`; its URL.
pub fn pg_database(pg: &tsm_server::testing::PrivatePostgres, name: &str) -> String {
    let o = Command::new("psql")
        .args([pg.url.as_str(), "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let base = pg.url.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

/// How the three services are set up.
pub struct Setup<'a> {
    /// The SIM's serial (`kagi sim provision --serial`).
    pub serial: &'a str,
    /// Where each service keeps its state.
    pub db: Databases,
    /// Added to the SP-TSM's tsm.toml: its top-level keys before the file's first table, its
    /// tables at the end.
    pub notify: Option<&'a str>,
    /// The issuer over HTTPS (its development certificate the SP-TSM's `tls_ca`).
    pub issuer_tls: bool,
    /// The SP-TSM's `[jpki_issuer] key_generation` (`issuer` or `on-card`); `None` keeps the
    /// line `jpki-issuer init` wrote (`on-card`).
    pub key_generation: Option<&'a str>,
    /// Appended to the MNO-TSM's mno-tsm.toml (e.g. another provider it hosts).
    pub mno_extra: &'a str,
    /// The SP-TSM reaches the MNO-TSM through a [`Gate`] that records the requests
    /// ([`Services::mno_gate`]).
    pub mno_gate: bool,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            serial: "three",
            db: Databases::default(),
            notify: None,
            issuer_tls: false,
            key_generation: None,
            mno_extra: "",
            mno_gate: false,
        }
    }
}

/// The three services running (the SP-TSM first, then the MNO-TSM, then the issuer), each
/// killed when dropped, and the SIM they serve.
pub struct Services {
    /// The SIM's ICCID.
    pub iccid: String,
    /// The SIM's card identification number.
    pub cin: String,
    /// The issuer's port on 127.0.0.1.
    pub issuer_port: u16,
    /// The MNO-TSM's port on 127.0.0.1.
    pub mno_port: u16,
    /// Where each service keeps its state.
    pub db: Databases,
    /// The processes: [SP-TSM, MNO-TSM, issuer].
    pub _running: Vec<Killed>,
    /// The gate between the SP-TSM and the MNO-TSM, when [`Setup::mno_gate`].
    pub mno_gate: Option<Gate>,
}

impl Services {
    /// One row of the issuer's database as `a|b` (sqlite3's and psql's unaligned form).
    pub fn issuer_row(&self, dir: &Path, sql: &str) -> String {
        row(
            &dir.join("issuer/jpki-issuer.db"),
            self.db.issuer.as_deref(),
            sql,
        )
    }

    /// The same in the MNO-TSM's database.
    pub fn mno_row(&self, dir: &Path, sql: &str) -> String {
        row(&dir.join("mno/mno-tsm.db"), self.db.mno.as_deref(), sql)
    }

    /// The same in the SP-TSM's database.
    pub fn sp_row(&self, dir: &Path, sql: &str) -> String {
        row(&dir.join("tsm/tsm.db"), self.db.sp.as_deref(), sql)
    }

    /// The SP-TSM's process stopped (killed, reaped).
    pub fn stop_sp_tsm(&mut self) {
        drop(self._running.remove(0));
    }

    /// The SP-TSM started again on its configuration and database (its log in `log`),
    /// listening when this returns.
    pub fn restart_sp_tsm(&mut self, s: &Scenario, log: &str) {
        let sp = sp_tsm(s, &self.db);
        self._running.insert(0, spawn_logged(sp, &s.dir.join(log)));
        wait_port(s.port);
    }

    /// The issuer's process stopped (killed, reaped).
    pub fn stop_issuer(&mut self) {
        drop(self._running.pop());
    }

    /// The issuer started again on its configuration and database (its log in `log`),
    /// listening when this returns.
    pub fn restart_issuer(&mut self, s: &Scenario, log: &str) {
        let issuer = issuer(s, &self.db);
        self._running.push(spawn_logged(issuer, &s.dir.join(log)));
        wait_port(self.issuer_port);
    }
}

/// One row of a SQLite file or of a PostgreSQL database (`pg`) as `a|b`.
pub fn row(sqlite: &Path, pg: Option<&str>, sql: &str) -> String {
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

fn issuer(s: &Scenario, db: &Databases) -> Command {
    let mut issuer = kagi();
    issuer
        .args(["jpki-issuer", "serve", "--config"])
        .arg(s.dir.join("issuer/jpki-issuer.toml"));
    if let Some(url) = &db.issuer {
        issuer.args(["--database", url]);
    }
    issuer
}

fn sp_tsm(s: &Scenario, db: &Databases) -> Command {
    let mut sp = kagi();
    sp.args(["sp-tsm", "serve", "--config"])
        .arg(s.dir.join("tsm/tsm.toml"))
        .arg("--insecure-file-keys")
        .arg(s.dir.join("tsm/keys"));
    if let Some(url) = &db.sp {
        sp.args(["--database", url]);
    }
    sp
}

/// Sets up and starts the issuer, the MNO-TSM and the SP-TSM (all on SQLite, the issuer's
/// key generation on the card) and registers a SIM (sim.img) as its operator sells it.
pub fn start(s: &Scenario) -> Services {
    start_with(s, Setup::default())
}

/// [`start`] as `setup` says.
pub fn start_with(s: &Scenario, setup: Setup) -> Services {
    let dir = &s.dir;
    let (mno_port, issuer_port) = (
        tsm_server::testing::free_port().unwrap(),
        tsm_server::testing::free_port().unwrap(),
    );
    // A SIM as the operator sells it (no provider domain), its key certified by the maker.
    let sim = ok(kagi()
        .args(["sim", "provision", "--json", "--no-domain", "--serial"])
        .arg(setup.serial)
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
    let mut init = kagi();
    init.args(["--json", "jpki-issuer", "init", "--dir"])
        .arg(dir.join("issuer"))
        .args(["--listen", &format!("127.0.0.1:{issuer_port}")])
        .arg("--sp-tsm-key")
        .arg(dir.join("tsm/tsm.pub.pem"))
        .arg("--ca-dir")
        .arg(dir.join("pki"))
        .arg("--manufacturer-ca")
        .arg(s.maker_ca());
    if setup.issuer_tls {
        init.arg("--tls");
    }
    let init = ok(&mut init);
    super::schema::document("jpki-issuer.init", init.as_bytes());
    let link = std::fs::read_to_string(dir.join("issuer/sp-tsm-link.toml")).unwrap();
    assert_eq!(
        link.contains(&format!("url = \"https://127.0.0.1:{issuer_port}\"")),
        setup.issuer_tls,
        "{link}"
    );
    // `jpki-issuer init` links in the on-card mode (the preferred one); the seed's mode is
    // chosen by changing that line.
    assert!(
        link.lines().any(|l| l == "key_generation = \"on-card\""),
        "{link}"
    );
    let link = match setup.key_generation {
        Some(mode) => link.replace(
            "key_generation = \"on-card\"",
            &format!("key_generation = \"{mode}\""),
        ),
        None => link,
    };
    let sp_toml = std::fs::read_to_string(dir.join("tsm/tsm.toml")).unwrap();
    // The notify keys at the top go before the file's first table, its tables at the end.
    let (top, tables) = setup
        .notify
        .map(|n| n.split_at(n.find("\n[").map_or(n.len(), |i| i + 1)))
        .unwrap_or(("", ""));
    let mut mno_link = std::fs::read_to_string(dir.join("mno/sp-tsm-link.toml")).unwrap();
    let mno_gate = setup.mno_gate.then(|| {
        // A hold prefix no request line starts with: every request passes, recorded.
        let gate = Gate::start(mno_port, "-");
        let direct = format!("url = \"http://127.0.0.1:{mno_port}\"");
        assert!(mno_link.contains(&direct), "{mno_link}");
        mno_link = mno_link.replace(&direct, &format!("url = \"{}\"", gate.url()));
        gate
    });
    if !setup.mno_extra.is_empty() {
        let conf = dir.join("mno/mno-tsm.toml");
        let text = std::fs::read_to_string(&conf).unwrap();
        std::fs::write(&conf, format!("{text}\n{}", setup.mno_extra)).unwrap();
    }
    std::fs::write(
        dir.join("tsm/tsm.toml"),
        format!("{top}{sp_toml}{mno_link}{link}{tables}"),
    )
    .unwrap();

    let mut mno = kagi();
    mno.args(["mno-tsm", "serve", "--config"])
        .arg(dir.join("mno/mno-tsm.toml"))
        .arg("--insecure-file-keys")
        .arg(dir.join("mno/keys"));
    if let Some(url) = &setup.db.mno {
        mno.args(["--database", url]);
    }
    let running = vec![
        spawn_logged(sp_tsm(s, &setup.db), &dir.join("sp.log")),
        spawn_logged(mno, &dir.join("mno.log")),
        spawn_logged(issuer(s, &setup.db), &dir.join("issuer.log")),
    ];
    for p in [issuer_port, mno_port, s.port] {
        wait_port(p);
    }
    let cin = field(&sim, "cin");
    ok(kagi()
        .args(["tsm", "mno", "--config"])
        .arg(dir.join("mno/operator.toml"))
        .args(["register-card", "--iccid", &iccid, "--cin", &cin])
        .args(["--card-certificate", &field(&sim, "card_certificate")]));
    Services {
        iccid,
        cin,
        issuer_port,
        mno_port,
        db: setup.db,
        _running: running,
        mno_gate,
    }
}

/// `kagi --json tsm provider apply` of `application` for `iccid` (password in pw.txt, the
/// answer in `out`): the refusal code, or `None` when accepted.
pub fn apply_code(s: &Scenario, iccid: &str, application: &Path, out: &str) -> Option<String> {
    let o = kagi()
        .args(["--json", "tsm", "provider", "--config"])
        .arg(s.dir.join("tsm/sp.toml"))
        .args(["apply", "--iccid", iccid, "--application"])
        .arg(application)
        .arg("--password-file")
        .arg(s.dir.join("pw.txt"))
        .arg("--out")
        .arg(s.dir.join(out))
        .output()
        .unwrap();
    if o.status.success() {
        super::schema::document("tsm.provider.issue", &o.stdout);
        return None;
    }
    Some(error_code(&o))
}

/// The code of a failed `--json` command's error document.
pub fn error_code(o: &std::process::Output) -> String {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON error ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    v["error"]["code"].as_str().unwrap().to_string()
}

/// The one message in the maildir `maildir` (its `new/`): its file and the access code on
/// its `Access code:` line; checks it is addressed to the contact the application names.
pub fn mailed_code(maildir: &Path) -> (PathBuf, String) {
    let mails: Vec<_> = std::fs::read_dir(maildir.join("new"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(mails.len(), 1, "one mail: {mails:?}");
    let text = std::fs::read_to_string(&mails[0]).unwrap();
    assert!(
        text.lines()
            .any(|l| l.trim_end() == format!("To: {}", super::cli::CONTACT)),
        "addressed to the user: {text}"
    );
    let code = text
        .lines()
        .find_map(|l| l.strip_prefix("Access code: "))
        .unwrap_or_else(|| panic!("no access code line: {text}"))
        .trim()
        .to_string();
    // 12 digits in groups of four (signed/src/access.rs).
    assert!(
        code.len() == 14
            && code.char_indices().all(|(i, c)| if i % 5 == 4 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }),
        "{code}"
    );
    (mails[0].clone(), code)
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

/// The user applies (application.bin, signed on the simulated My Number card), the provider
/// passes it on, the access code comes by mail, the relay downloads through both TSMs to
/// sim.img. The operation id and the PIN letter's path.
pub fn download(s: &Scenario, iccid: &str) -> (String, PathBuf) {
    let dir = &s.dir;
    let application = s.apply(iccid);
    assert_eq!(apply_code(s, iccid, &application, "issue.json"), None);
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

/// The phone key (a 32-byte P-256 scalar) the SIM's JPKI applet keeps in its EF `0017`, read
/// out of the SIM image.
pub fn phone_key_in_image(image: &Path) -> Vec<u8> {
    let card = applet_sim::SimCard::from_image(image, None).unwrap();
    let store = card.store();
    let names: Vec<String> = store
        .keys("app/")
        .into_iter()
        .filter(|k| k.ends_with("key/0017"))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let k = store.get(&names[0]).unwrap().to_vec();
    assert_eq!(k.len(), 32);
    k
}
