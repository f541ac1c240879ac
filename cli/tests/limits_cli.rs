//! Safety at the edges, as users run kagi: secrets at rest are the owner's only (file modes),
//! `/v1/health` reports a database that cannot be written and the CLI says so, and a
//! simulated card in an image keeps a wrong PIN counted across runs.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::cli::{Scenario, field, kagi, ok, serve, wait_port};

/// One GET over a new connection: the status code and the body.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: kagi\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A process started in a process group of its own; dropping it kills the whole group (a
/// shell's background children too), so nothing outlives the test or holds its output pipes.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `c` in a new process group (see [`Killed`]), its stdout not inherited.
fn grouped(c: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    c.process_group(0).stdout(Stdio::null())
}

#[test]
fn tsm_secrets_at_rest_are_the_owners_only() {
    let s = Scenario::new("modes-tsm", false);
    let dir = &s.dir;
    let _tsm = Killed(serve(dir));
    wait_port(s.port);
    let iccid = s.sim("modes-phone", &dir.join("sim.img"));
    s.issue(&iccid, false);
    let (status, body) = get(s.port, "/v1/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("db=writable"), "{body}");
    let t = dir.join("tsm");
    for f in [
        "tsm.db",
        "tsm.db-wal",
        "tsm.db-shm",
        "tsm.key.pem",
        "sp.key.pem",
        "mno.key.pem",
        "state.key",
        "keys/provider.keys",
    ] {
        assert_eq!(mode(&t.join(f)), 0o600, "{f}");
    }
    for d in ["", "keys"] {
        assert_eq!(mode(&t.join(d)), 0o700, "directory tsm/{d}");
    }
    // No content key any more.
    assert!(!t.join("content.key").exists());
    // The card image holds the card's keys; the manufacturer CA's key is its own.
    assert_eq!(mode(&dir.join("sim.img")), 0o600, "sim.img");
    assert_eq!(
        mode(&dir.join("maker/manufacturer-ca.key.der")),
        0o600,
        "the manufacturer CA's key"
    );
}

#[test]
fn broker_secrets_at_rest_are_the_owners_only() {
    let dir = std::env::temp_dir().join(format!("kagi-modes-broker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = tsm_server::testing::free_port().unwrap();
    ok(kagi().args(["ca", "init", "--dir"]).arg(dir.join("pki")));
    ok(kagi()
        .args(["broker", "init", "--dir"])
        .arg(dir.join("broker"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--ca-dir"])
        .arg(dir.join("pki")));
    let b = dir.join("broker");
    let _broker = Killed(
        grouped(&mut kagi())
            .args(["broker", "serve", "--config"])
            .arg(b.join("broker.toml"))
            .arg("--insecure-file-keys")
            .arg(b.join("keys"))
            .env("KAGI_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    let (status, body) = get(port, "/v1/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("db=writable"), "{body}");
    get(port, "/v1/keys");
    for f in [
        "broker.db",
        "broker.db-wal",
        "broker.db-shm",
        "broker.key.pem",
        "admin.key.pem",
        "assertion.key.pem",
        "state.key",
        "keys/kek-k1.key",
    ] {
        assert_eq!(mode(&b.join(f)), 0o600, "{f}");
    }
    for d in ["", "keys"] {
        assert_eq!(mode(&b.join(d)), 0o700, "directory broker/{d}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether this machine lets a test mount a tmpfs in a mount namespace of its own.
fn can_unshare() -> bool {
    Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn health_reports_a_database_that_cannot_be_written_and_the_cli_says_so() {
    assert!(
        can_unshare(),
        "this test needs `unshare -m` and tmpfs mounts (root, CAP_SYS_ADMIN)"
    );
    let s = Scenario::new("health-full", false);
    let dir = &s.dir;
    let db_dir = dir.join("db");
    std::fs::create_dir_all(&db_dir).unwrap();
    let fill = dir.join("fill-now");
    let filled = dir.join("filled");
    // In a private mount namespace: a 1 MiB tmpfs holds the database; when told, it is
    // filled up (the TSM keeps running).
    let script = format!(
        "set -e\nmount -t tmpfs -o size=1m tmpfs '{db}'\n'{kagi}' tsm serve --config '{cfg}' --insecure-file-keys '{keys}' --database '{db}/tsm.db' &\npid=$!\nwhile [ ! -e '{fill}' ]; do sleep 0.05; done\ndd if=/dev/zero of='{db}/filler' bs=4k 2>/dev/null || true\ntouch '{filled}'\nwait $pid\n",
        db = db_dir.display(),
        kagi = env!("CARGO_BIN_EXE_kagi"),
        cfg = dir.join("tsm/tsm.toml").display(),
        keys = dir.join("tsm/keys").display(),
        fill = fill.display(),
        filled = filled.display(),
    );
    let _tsm = Killed(
        grouped(&mut Command::new("unshare"))
            .args(["-m", "--kill-child", "sh", "-c", &script])
            .env("KAGI_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(s.port);
    let (status, body) = get(s.port, "/v1/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("db=writable"), "{body}");

    std::fs::write(&fill, "").unwrap();
    let start = Instant::now();
    while !filled.exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "not filled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = get(s.port, "/v1/health");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("unwritable ") && body.contains("the TSM cannot write its database"),
        "{body}"
    );

    // An operator's request that must write: the CLI waits (saying so) and then says why.
    let sim = ok(kagi()
        .args([
            "sim",
            "provision",
            "--json",
            "--serial",
            "full-phone",
            "--image",
        ])
        .arg(dir.join("sim.img"))
        .arg("--provider-keys")
        .arg(dir.join("tsm/keys/provider.keys")));
    let o = kagi()
        .args(["tsm", "mno", "--config"])
        .arg(dir.join("tsm/mno.toml"))
        .args([
            "register-card",
            "--iccid",
            &field(&sim, "iccid"),
            "--cin",
            &field(&sim, "cin"),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("the TSM cannot write its database"), "{err}");
    assert!(!err.contains("is it running?"), "{err}");
    assert!(err.contains("waiting for the TSM at"), "{err}");
}

#[test]
fn wrong_pins_across_runs_block_the_pin_on_a_simulated_card() {
    let dir = std::env::temp_dir().join(format!("kagi-sim-pin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pki = dir.join("pki");
    ok(kagi().args(["ca", "init", "--dir"]).arg(&pki));
    let img = dir.join("card.img");
    let sim = |c: &mut Command| {
        c.args(["--sim", "--sim-preset", "jpki-demo", "--sim-image"])
            .arg(&img)
            .arg("--sim-pki-dir")
            .arg(&pki);
    };
    let tries = || -> u64 {
        let mut c = kagi();
        c.args(["jpki", "pin-status", "--json"]);
        sim(&mut c);
        let v: serde_json::Value = serde_json::from_str(&ok(&mut c)).unwrap();
        v["auth_pin_tries"].as_u64().unwrap()
    };
    assert_eq!(tries(), 3, "a new demo card");
    std::fs::write(dir.join("msg"), "hello").unwrap();
    std::fs::write(dir.join("bad"), "0000").unwrap();
    std::fs::write(dir.join("good"), "1234").unwrap();
    let sign = |pin: &str| {
        let mut c = kagi();
        c.args(["jpki", "sign", "--pin-file"])
            .arg(dir.join(pin))
            .arg("-i")
            .arg(dir.join("msg"))
            .arg("-o")
            .arg(dir.join("sig"));
        sim(&mut c);
        c.output().unwrap()
    };
    for left in [2u64, 1, 0] {
        let o = sign("bad");
        assert!(!o.status.success());
        assert_eq!(tries(), left, "{}", String::from_utf8_lossy(&o.stderr));
    }
    // The right PIN no longer opens the blocked key.
    let o = sign("good");
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(!o.status.success(), "a blocked PIN signed");
    assert!(err.contains("blocked"), "{err}");
    assert!(!dir.join("sig").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kagi tsm provider issue --out FILE` for SIM `iccid` of scenario `s`, on a fresh
/// application signed on the scenario's simulated My Number card.
fn issue_to(s: &Scenario, iccid: &str, out: &Path) -> std::process::Output {
    let application = s.apply(iccid);
    s.issue_command(iccid, &application, out).output().unwrap()
}

#[test]
fn the_access_code_file_is_the_owners_only() {
    let s = Scenario::new("modes-issue", false);
    let dir = &s.dir;
    let _tsm = Killed(serve(dir));
    wait_port(s.port);
    // A new file.
    let iccid = s.sim("out-new", &dir.join("a.img"));
    let fresh = dir.join("fresh.json");
    let o = issue_to(&s, &iccid, &fresh);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&fresh), 0o600, "a new access-code file");
    assert!(
        std::fs::read_to_string(&fresh)
            .unwrap()
            .contains("access_code")
    );
    // A file already there, readable by everyone: replaced by an owner-only one.
    let iccid = s.sim("out-wide", &dir.join("b.img"));
    let wide = dir.join("wide.json");
    std::fs::write(&wide, "{}").unwrap();
    std::fs::set_permissions(&wide, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = issue_to(&s, &iccid, &wide);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        mode(&wide),
        0o600,
        "an access-code file written over a 0644 one"
    );
    assert!(
        std::fs::read_to_string(&wide)
            .unwrap()
            .contains("access_code")
    );
    // A link: replaced, never followed (its target keeps its bytes and mode).
    let iccid = s.sim("out-link", &dir.join("c.img"));
    let target = dir.join("public.txt");
    std::fs::write(&target, "public\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = dir.join("link.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let o = issue_to(&s, &iccid, &link);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "public\n");
    assert_eq!(mode(&target), 0o644);
    assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(
        mode(&link),
        0o600,
        "an access-code file written over a link"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn at_a_128_descriptor_limit_200_slow_clients_do_not_take_the_tsm_down() {
    let s = Scenario::new("nofile", false);
    let dir = &s.dir;
    // Slow clients are closed after 5 s instead of 10 (the test stays short).
    let toml = dir.join("tsm/tsm.toml");
    let mut cfg = std::fs::read_to_string(&toml).unwrap();
    cfg.push_str("\n[limits]\nheader_timeout_secs = 5.0\n");
    std::fs::write(&toml, cfg).unwrap();
    let log = dir.join("tsm.log");
    let _tsm = Killed(
        grouped(&mut Command::new("prlimit"))
            .arg("--nofile=128:128")
            .arg(env!("CARGO_BIN_EXE_kagi"))
            .args(["tsm", "serve", "--config"])
            .arg(&toml)
            .arg("--insecure-file-keys")
            .arg(dir.join("tsm/keys"))
            .env("KAGI_LOG", "warn")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_port(s.port);
    // 200 connections sending half a header, held open.
    let mut slow = Vec::new();
    for _ in 0..200 {
        if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", s.port)) {
            let _ = c.write_all(b"GET /v1/health HTTP/1.1\r\nHost: ka");
            slow.push(c);
        }
    }
    // The cap is fitted to the descriptors (80 + 16 for health): those past it are closed
    // at once, long before the header timeout, instead of waiting unaccepted while the
    // listener fails with `Too many open files`.
    let start = Instant::now();
    let closed = loop {
        let closed = slow
            .iter()
            .filter(|c| {
                c.set_nonblocking(true).unwrap();
                let mut b = [0u8; 64];
                let mut r: &std::net::TcpStream = c;
                // Open: nothing to read yet. Closed: end of file, or reset.
                !matches!(r.read(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count();
        if closed >= 200 - 96 || start.elapsed() > Duration::from_secs(3) {
            break closed;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(closed >= 200 - 96, "{closed} of 200 closed at once");
    // Health answers again once the slow clients are closed by the header timeout; the
    // slow clients are still held by this test meanwhile.
    let start = Instant::now();
    let healthy = loop {
        let answered = std::net::TcpStream::connect(("127.0.0.1", s.port))
            .ok()
            .and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
                write!(
                    c,
                    "GET /v1/health HTTP/1.1\r\nHost: kagi\r\nConnection: close\r\n\r\n"
                )
                .ok()?;
                let mut raw = String::new();
                c.read_to_string(&mut raw).ok()?;
                Some(raw)
            });
        match answered {
            Some(raw) if raw.starts_with("HTTP/1.1 200") => break Some(raw),
            _ if start.elapsed() > Duration::from_secs(20) => break None,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        healthy.is_some(),
        "/v1/health never answered; the log:\n{}",
        &text[..text.len().min(4000)]
    );
    drop(slow);
    let emfile = text.matches("Too many open files").count();
    assert_eq!(emfile, 0, "the log:\n{}", &text[..text.len().min(4000)]);
    assert!(
        text.contains("the connection cap is lowered to 80 (+16"),
        "{}",
        &text[..text.len().min(4000)]
    );
    let _ = std::fs::remove_dir_all(dir);
}
