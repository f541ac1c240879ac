//! The outbox against real mail parts: a maildir read back as files, and a private aiosmtpd
//! (Debian's python3-aiosmtpd, started by the test on a free port, stopped by PID) taking mail
//! over STARTTLS with a certificate made for the test, delivering into its own maildir.

use kagi_notify::{NotifyError, Outbox, OutboxConfig, SmtpTls};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CODE: &str = "ACCESS-CODE-7Q4M-2XKD";

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kagi-notify-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|r| r.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Two messages into a fresh maildir: each a whole file in `new/` (none left in `tmp/`),
/// readable by the owner only, with the headers and the body as given.
#[test]
fn the_maildir_gets_each_message_whole_and_private() {
    let dir = temp("maildir").join("outbox");
    let config = OutboxConfig::Maildir { path: dir.clone() };
    let outbox = Outbox::open(&config, "SP-TSM <tsm@sp.example.jp>").unwrap();
    let a = outbox
        .send(
            "user@example.jp",
            "Your access code",
            &format!("Code: {CODE}\n"),
        )
        .unwrap();
    let b = outbox
        .send("other@example.jp", "Your access code", "Code: another\n")
        .unwrap();
    assert_ne!(a.message_id, b.message_id);
    assert!(files(&dir.join("tmp")).is_empty());
    let new = files(&dir.join("new"));
    assert_eq!(new.len(), 2);
    let text: Vec<String> = new
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let first = text
        .iter()
        .find(|t| t.contains("user@example.jp"))
        .expect("the first message");
    assert!(
        first.contains("From: \"SP-TSM\" <tsm@sp.example.jp>")
            || first.contains("From: SP-TSM <tsm@sp.example.jp>"),
        "{first}"
    );
    assert!(first.contains("To: user@example.jp"), "{first}");
    assert!(first.contains("Subject: Your access code"), "{first}");
    assert!(
        first.contains(&format!("Message-ID: {}", a.message_id)),
        "{first}"
    );
    assert!(first.contains(CODE));
    #[cfg(unix)]
    {
        for p in &new {
            assert_eq!(mode(p), 0o600, "{}", p.display());
        }
        assert_eq!(mode(&dir.join("new")), 0o700);
    }
}

/// Bad input is refused before anything is written: an address that does not parse, a subject
/// with a line break (header injection), plain SMTP to a relay off this machine, a password
/// file others may read, a user without a password.
#[test]
fn bad_input_is_refused_with_what_to_change() {
    let dir = temp("refusals");
    let outbox = Outbox::open(
        &OutboxConfig::Maildir { path: dir.clone() },
        "tsm@sp.example.jp",
    )
    .unwrap();
    assert!(matches!(
        outbox.send("not an address", "s", "b"),
        Err(NotifyError::Address(_))
    ));
    assert!(matches!(
        outbox.send("user@example.jp", "hi\r\nBcc: thief@evil.example", "b"),
        Err(NotifyError::Subject)
    ));
    assert!(files(&dir.join("new")).is_empty());
    assert!(matches!(
        Outbox::open(&OutboxConfig::Maildir { path: dir.clone() }, "nobody"),
        Err(NotifyError::Address(_))
    ));
    let smtp = |host: &str, tls: SmtpTls, user: Option<&str>, password_file: Option<PathBuf>| {
        OutboxConfig::Smtp {
            host: host.into(),
            port: 25,
            tls,
            ca_file: None,
            user: user.map(str::to_string),
            password_file,
            timeout_secs: None,
        }
    };
    let e = Outbox::open(
        &smtp("mail.example.jp", SmtpTls::None, None, None),
        "tsm@sp.example.jp",
    )
    .unwrap_err();
    assert!(e.to_string().contains("starttls"), "{e}");
    assert!(
        Outbox::open(
            &smtp("127.0.0.1", SmtpTls::None, None, None),
            "tsm@sp.example.jp"
        )
        .is_ok()
    );
    assert!(
        Outbox::open(
            &smtp("localhost", SmtpTls::None, None, None),
            "tsm@sp.example.jp"
        )
        .is_ok()
    );
    let pw = dir.join("password");
    std::fs::write(&pw, "secret\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Outbox::open(
            &smtp("127.0.0.1", SmtpTls::None, Some("tsm"), Some(pw.clone())),
            "tsm@sp.example.jp",
        )
        .unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert!(
        Outbox::open(
            &smtp("127.0.0.1", SmtpTls::None, Some("tsm"), Some(pw)),
            "tsm@sp.example.jp"
        )
        .is_ok()
    );
    assert!(matches!(
        Outbox::open(
            &smtp("127.0.0.1", SmtpTls::None, Some("tsm"), None),
            "tsm@sp.example.jp"
        ),
        Err(NotifyError::Config(_))
    ));
}

/// The `[notify]` table as a service's configuration file has it.
#[test]
fn the_configuration_reads_from_toml_and_refuses_unknown_keys() {
    let c: OutboxConfig = toml::from_str("kind = \"smtp\"\nhost = \"mail.example.jp\"\nport = 587\ntls = \"starttls\"\nuser = \"tsm\"\npassword_file = \"/etc/kagi/smtp-password\"\n").unwrap();
    assert_eq!(
        c,
        OutboxConfig::Smtp {
            host: "mail.example.jp".into(),
            port: 587,
            tls: SmtpTls::Starttls,
            ca_file: None,
            user: Some("tsm".into()),
            password_file: Some("/etc/kagi/smtp-password".into()),
            timeout_secs: None,
        }
    );
    let m: OutboxConfig =
        toml::from_str("kind = \"maildir\"\npath = \"/var/lib/kagi/outbox\"\n").unwrap();
    assert_eq!(
        m,
        OutboxConfig::Maildir {
            path: "/var/lib/kagi/outbox".into()
        }
    );
    assert!(
        toml::from_str::<OutboxConfig>(
            "kind = \"smtp\"\nhost = \"h\"\nport = 1\ntls = \"none\"\npassword = \"x\"\n"
        )
        .is_err()
    );
}

/// A private aiosmtpd, stopped (by PID) when dropped.
struct Relay {
    child: Child,
    port: u16,
    maildir: PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts aiosmtpd on a free loopback port with STARTTLS under `cert`/`key`, delivering into
/// a maildir of its own.
fn relay(dir: &Path, cert: &Path, key: &Path) -> Relay {
    let port = free_port();
    let maildir = dir.join("received");
    let child = Command::new("/usr/bin/python3")
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--tlscert")
        .arg(cert)
        .arg("--tlskey")
        .arg(key)
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(&maildir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("aiosmtpd (scripts/setup.sh installs python3-aiosmtpd)");
    let relay = Relay {
        child,
        port,
        maildir,
    };
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "aiosmtpd did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    relay
}

fn tls_files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = test_pki::tls_server_certificate(
        "localhost",
        &["localhost"],
        &["127.0.0.1".parse().unwrap()],
        1,
    )
    .unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

/// STARTTLS to the private relay with its certificate pinned: the relay's maildir gets the
/// message with the code. With another certificate as the CA the TLS check fails, the error
/// names the relay, and the relay received nothing more. A closed port is a clear error too.
#[test]
fn smtp_over_starttls_reaches_a_private_relay_and_checks_its_certificate() {
    let dir = temp("smtp");
    let (cert, key) = tls_files(&dir, "relay");
    let (other, _) = tls_files(&dir, "other");
    let r = relay(&dir, &cert, &key);
    let config = |ca: &Path, port: u16| OutboxConfig::Smtp {
        host: "localhost".into(),
        port,
        tls: SmtpTls::Starttls,
        ca_file: Some(ca.to_path_buf()),
        user: None,
        password_file: None,
        timeout_secs: Some(10),
    };
    let outbox = Outbox::open(&config(&cert, r.port), "tsm@sp.example.jp").unwrap();
    let sent = outbox
        .send(
            "user@example.jp",
            "Your access code",
            &format!("Code: {CODE}\n"),
        )
        .unwrap();
    let received = files(&r.maildir.join("new"));
    assert_eq!(received.len(), 1);
    let text = std::fs::read_to_string(&received[0]).unwrap();
    assert!(text.contains(CODE), "{text}");
    assert!(text.contains(&sent.message_id), "{text}");
    assert!(text.contains("To: user@example.jp"), "{text}");

    let wrong = Outbox::open(&config(&other, r.port), "tsm@sp.example.jp").unwrap();
    let e = wrong
        .send("user@example.jp", "Your access code", "Code: x\n")
        .unwrap_err();
    assert!(matches!(e, NotifyError::Smtp { .. }), "{e}");
    assert!(
        e.to_string().contains(&format!("localhost:{}", r.port)),
        "{e}"
    );
    assert_eq!(files(&r.maildir.join("new")).len(), 1);

    let closed = free_port();
    let e = Outbox::open(&config(&cert, closed), "tsm@sp.example.jp")
        .unwrap()
        .send("user@example.jp", "s", "b")
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Any recipient and subject: a message in the maildir or a clear refusal, never a panic,
    /// and never a second header line from the subject.
    #[test]
    fn any_recipient_and_subject_is_sent_or_refused(to in "\\PC{0,40}", subject in "\\PC{0,40}|[a-z]{1,5}\r\n[A-Za-z-]{1,8}: [a-z]{1,8}") {
        let dir = temp("prop");
        let outbox = Outbox::open(&OutboxConfig::Maildir { path: dir.clone() }, "tsm@sp.example.jp").unwrap();
        match outbox.send(&to, &subject, "body") {
            Ok(_) => {
                proptest::prop_assert!(!subject.contains('\n'));
                let new = files(&dir.join("new"));
                let text = std::fs::read_to_string(&new[0]).unwrap();
                let headers = text.split("\r\n\r\n").next().unwrap_or_default().to_string();
                proptest::prop_assert!(!headers.contains("\r\nBcc:"));
            }
            Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
