//! Running `kagi` processes in tests: a command, its output checked, JSON fields, a TSM
//! process on a configuration made by `kagi tsm init`.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user's mail address in the applications tests make (where an SP-TSM sends the access
/// code).
pub const CONTACT: &str = "holder@example.jp";

pub fn kagi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kagi"))
}

pub fn ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{:?}: {}{}",
        c,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn field(json: &str, key: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v[key].as_str().unwrap_or_default().to_string()
}

pub fn serve(dir: &Path) -> Child {
    kagi()
        .args(["tsm", "serve", "--config"])
        .arg(dir.join("tsm/tsm.toml"))
        .arg("--insecure-file-keys")
        .arg(dir.join("tsm/keys"))
        .env("KAGI_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// [`serve`] with every log line at `KAGI_LOG=trace` appended to `log`.
pub fn serve_logged(dir: &Path, log: &Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    kagi()
        .args(["tsm", "serve", "--config"])
        .arg(dir.join("tsm/tsm.toml"))
        .arg("--insecure-file-keys")
        .arg(dir.join("tsm/keys"))
        .env("KAGI_LOG", "trace")
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap()
}

pub fn wait_port(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the TSM did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn audit(dir: &Path, op: &str) -> String {
    ok(kagi()
        .args(["tsm", "audit", "--op", op, "--database"])
        .arg(dir.join("tsm/tsm.db")))
}

/// A TSM set up the way its users do it: `kagi tsm init` (optionally `--tls`) and `kagi ca
/// init` in a directory of its own, on a port of its own.
pub struct Scenario {
    /// The directory.
    pub dir: std::path::PathBuf,
    /// The TSM's port on 127.0.0.1.
    pub port: u16,
    /// `http` or `https`.
    pub scheme: &'static str,
}

impl Scenario {
    /// A fresh scenario (configuration only; start the TSM with [`serve`]).
    pub fn new(name: &str, tls: bool) -> Scenario {
        let dir = std::env::temp_dir().join(format!("kagi-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = tsm_server::testing::free_port().unwrap();
        let mut init = kagi();
        init.args(["tsm", "init", "--dir"])
            .arg(dir.join("tsm"))
            .args(["--listen", &format!("127.0.0.1:{port}")]);
        if tls {
            init.arg("--tls");
        }
        ok(&mut init);
        ok(kagi().args(["ca", "init", "--dir"]).arg(dir.join("pki")));
        std::fs::write(dir.join("pin.txt"), "2468\n").unwrap();
        std::fs::write(dir.join("pw.txt"), "a password\n").unwrap();
        // The jpki-demo card's signature password (its documented test value).
        std::fs::write(dir.join("sign-password.txt"), "ABC123\n").unwrap();
        Scenario {
            dir,
            port,
            scheme: if tls { "https" } else { "http" },
        }
    }

    /// The TSM's URL.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// The card manufacturer's test CA certificate (its directory is `maker`).
    pub fn maker_ca(&self) -> std::path::PathBuf {
        self.dir.join("maker/manufacturer-ca.crt.pem")
    }

    /// A simulated SIM with the provider's domain in `image`, its key agreement key certified
    /// by the manufacturer CA in `maker`, registered with the TSM by the operator (with that
    /// certificate); its ICCID.
    pub fn sim(&self, serial: &str, image: &Path) -> String {
        let sim = ok(kagi()
            .args(["sim", "provision", "--json", "--serial", serial, "--image"])
            .arg(image)
            .arg("--provider-keys")
            .arg(self.dir.join("tsm/keys/provider.keys"))
            .arg("--manufacturer-ca")
            .arg(self.dir.join("maker")));
        let iccid = field(&sim, "iccid");
        ok(kagi()
            .args(["tsm", "mno", "--config"])
            .arg(self.dir.join("tsm/mno.toml"))
            .args([
                "register-card",
                "--iccid",
                &iccid,
                "--cin",
                &field(&sim, "cin"),
                "--card-certificate",
                &field(&sim, "card_certificate"),
            ]));
        iccid
    }

    /// `kagi jpki apply` on the simulated My Number card in `card` (a jpki-demo card whose
    /// certificates the CAs in `pki` issue, made on first use) for SIM `iccid` and provider
    /// `provider`, with `extra` arguments; the command's output.
    pub fn apply_with(
        &self,
        card: &str,
        pki: &str,
        iccid: &str,
        provider: &str,
        out: &str,
        extra: &[&str],
    ) -> std::process::Output {
        kagi()
            .args([
                "--json",
                "jpki",
                "apply",
                "--sim",
                "--sim-preset",
                "jpki-demo",
            ])
            .arg("--sim-image")
            .arg(self.dir.join(card))
            .arg("--sim-pki-dir")
            .arg(self.dir.join(pki))
            .args(["--iccid", iccid, "--provider", provider])
            .args(["--contact", CONTACT])
            .arg("--pin-file")
            .arg(self.dir.join("sign-password.txt"))
            .arg("--out")
            .arg(self.dir.join(out))
            .args(extra)
            .output()
            .unwrap()
    }

    /// The user's application for `iccid` to the demo provider, signed on the simulated My
    /// Number card (mynumber.img, certified by the scenario's CAs): application.bin.
    pub fn apply(&self, iccid: &str) -> std::path::PathBuf {
        let o = self.apply_with(
            "mynumber.img",
            "pki",
            iccid,
            "sp:kagi-bank",
            "application.bin",
            &[],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        self.dir.join("application.bin")
    }

    /// `kagi tsm provider issue` for `iccid` with the application file `application` (PIN in
    /// pin.txt, output `out`), not yet run.
    pub fn issue_command(&self, iccid: &str, application: &Path, out: &Path) -> Command {
        let mut c = kagi();
        c.args(["tsm", "provider", "--config"])
            .arg(self.dir.join("tsm/sp.toml"))
            .args(["issue", "--iccid", iccid, "--ca-dir"])
            .arg(self.dir.join("pki"))
            .arg("--manufacturer-ca")
            .arg(self.maker_ca())
            .arg("--pin-file")
            .arg(self.dir.join("pin.txt"))
            .arg("--password-file")
            .arg(self.dir.join("pw.txt"))
            .arg("--application")
            .arg(application)
            .arg("--out")
            .arg(out);
        c
    }

    /// The user applies (signed on the simulated My Number card) and the provider issues a
    /// credential to `iccid` (PIN in pin.txt); the ticket and access code go to ticket.txt
    /// and code.txt. Returns issue.json.
    pub fn issue(&self, iccid: &str, rsa: bool) -> String {
        let application = self.apply(iccid);
        let mut c = self.issue_command(iccid, &application, &self.dir.join("issue.json"));
        if rsa {
            c.arg("--rsa");
        }
        ok(&mut c);
        let issued = std::fs::read_to_string(self.dir.join("issue.json")).unwrap();
        std::fs::write(self.dir.join("ticket.txt"), field(&issued, "ticket")).unwrap();
        std::fs::write(self.dir.join("code.txt"), field(&issued, "access_code")).unwrap();
        issued
    }

    /// `kagi relay --json` with the ticket, access code and password files; the caller adds
    /// the card.
    pub fn relay(&self) -> Command {
        let mut c = kagi();
        c.args(["relay", "--json", "--tsm", &self.url()])
            .arg("--ticket-file")
            .arg(self.dir.join("ticket.txt"))
            .arg("--access-code-file")
            .arg(self.dir.join("code.txt"))
            .arg("--password-file")
            .arg(self.dir.join("pw.txt"));
        c
    }

    /// `kagi tsm provider receipt` of the last issuance says it is valid.
    pub fn receipt_valid(&self) -> bool {
        ok(kagi()
            .args(["tsm", "provider", "--config"])
            .arg(self.dir.join("tsm/sp.toml"))
            .arg("receipt")
            .arg("--issued")
            .arg(self.dir.join("issue.json")))
        .contains("receipt valid")
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process killed (and reaped) when dropped: a failing test leaves no server behind.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server process with its log (trace level) in `log`, killed when dropped.
pub fn spawn_logged(mut c: Command, log: &Path) -> Killed {
    let file = std::fs::File::create(log).unwrap();
    Killed(
        c.env("KAGI_LOG", "trace")
            .stderr(Stdio::from(file))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Whether `needle` occurs in `hay` (a secret searched for in a database, log or capture).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether `pin` occurs in `bytes` within a few characters after the word "pin" (any case):
/// the PIN written into a log line or a record in clear. (A PIN is four digits: searched
/// bare, it would be found in timestamps; sealed, its bytes are nowhere.)
pub fn pin_named(bytes: &[u8], pin: &str) -> bool {
    let text = String::from_utf8_lossy(bytes).to_lowercase();
    text.match_indices(pin).any(|(i, _)| {
        let from = text[..i].char_indices().rev().nth(11).map_or(0, |(j, _)| j);
        text[from..i].contains("pin")
    })
}
