//! Several TSM processes on one PostgreSQL, as a deployment runs them: three `kagi tsm
//! serve` processes (ports of their own) on one private PostgreSQL, and racing `kagi relay`
//! processes — simulated SIMs downloading their credentials through relays pointed at the
//! instances in turn, all at once, and for some operations two relays at two different
//! instances for the same download (the same SIM, as a phone app restarted on another
//! network path would). Every credential is installed exactly once and its receipt proves
//! the key on the card; each race has one winner, and the loser gets a clear answer (a newer
//! session took over, or the download is already complete, with nothing sent to its card);
//! the operation and audit tables hold exactly the expected rows; nothing is left pending.

use crate::support::cli::{Scenario, field, kagi, ok, wait_port};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use tsm_server::store::{Backend, Store};

/// The TSM processes; dropping stops exactly these.
struct Instances(Vec<Child>);

impl Drop for Instances {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Round-robin downloads (one SIM each).
const CARDS: usize = 6;
/// Downloads raced by two relays at two instances.
const RACES: usize = 3;

struct Download {
    iccid: String,
    op: String,
    issued: PathBuf,
    ticket: PathBuf,
    code: PathBuf,
}

fn issue(s: &Scenario, name: &str, iccid: &str) -> Download {
    let issued = s.dir.join(format!("{name}.json"));
    // The user's application, signed on the simulated My Number card, then the issue.
    let application = s.apply(iccid);
    ok(&mut s.issue_command(iccid, &application, &issued));
    let text = std::fs::read_to_string(&issued).unwrap();
    let ticket = s.dir.join(format!("{name}.ticket"));
    let code = s.dir.join(format!("{name}.code"));
    std::fs::write(&ticket, field(&text, "ticket")).unwrap();
    std::fs::write(&code, field(&text, "access_code")).unwrap();
    Download {
        iccid: iccid.to_string(),
        op: field(&text, "op"),
        issued,
        ticket,
        code,
    }
}

/// `kagi relay --json` for `d` at the instance on `port` with the SIM in `image`, over an
/// LTE-like link (so that racing downloads overlap).
fn relay(s: &Scenario, d: &Download, port: u16, image: &Path) -> Command {
    let mut c = kagi();
    c.args(["relay", "--json", "--link", "lte", "--tsm"])
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("--ticket-file")
        .arg(&d.ticket)
        .arg("--access-code-file")
        .arg(&d.code)
        .arg("--password-file")
        .arg(s.dir.join("pw.txt"))
        .args(["--sim", "--sim-image"])
        .arg(image)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The relay's JSON report (printed whether or not the download completed).
fn report(o: &Output) -> serde_json::Value {
    serde_json::Deserializer::from_slice(&o.stdout)
        .into_iter::<serde_json::Value>()
        .next()
        .unwrap_or_else(|| panic!("no report: {}", text(o)))
        .unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

/// The authentication certificate on the SIM in `image`, if it has one.
fn card_cert(dir: &Path, image: &Path) -> Option<Vec<u8>> {
    let out = dir.join("read.der");
    let _ = std::fs::remove_file(&out);
    let o = kagi()
        .args(["jpki", "read-cert", "--which", "auth", "-o"])
        .arg(&out)
        .args(["--sim", "--sim-image"])
        .arg(image)
        .output()
        .unwrap();
    o.status.success().then(|| std::fs::read(&out).unwrap())
}

/// The receipt of `d` verifies (the TSM's signature, the key on the card matching the
/// certificate).
fn receipt_valid(s: &Scenario, d: &Download) -> bool {
    ok(kagi()
        .args(["tsm", "provider", "--config"])
        .arg(s.dir.join("tsm/sp.toml"))
        .arg("receipt")
        .arg("--issued")
        .arg(&d.issued))
    .contains("receipt valid")
}

#[test]
fn tsm_processes_on_one_postgres_race_downloads() {
    let pg = tsm_server::testing::PrivatePostgres::start("tsm-procs").unwrap();
    let s = Scenario::new("tsm-pg-procs", false);
    let dir = s.dir.clone();
    // The providers' and operator's configurations name instance 0.
    let ports = [
        s.port,
        tsm_server::testing::free_port().unwrap(),
        tsm_server::testing::free_port().unwrap(),
    ];
    let mut tsms = Instances(Vec::new());
    for (i, port) in ports.iter().enumerate() {
        let child = kagi()
            .args(["tsm", "serve", "--config"])
            .arg(dir.join("tsm/tsm.toml"))
            .arg("--insecure-file-keys")
            .arg(dir.join("tsm/keys"))
            .args(["--database", &pg.url, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env("KAGI_LOG", "info")
            .stderr(std::fs::File::create(dir.join(format!("tsm-{i}.log"))).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        tsms.0.push(child);
        wait_port(*port);
    }

    // The SIMs, registered by the operator; a credential issued to each.
    let mut downloads = Vec::new();
    for i in 0..CARDS {
        let image = dir.join(format!("sim-{i}.img"));
        let iccid = s.sim(&format!("pg-phone-{i}"), &image);
        downloads.push((issue(&s, &format!("card-{i}"), &iccid), image));
    }
    let mut races = Vec::new();
    for k in 0..RACES {
        let a = dir.join(format!("race-{k}-a.img"));
        let iccid = s.sim(&format!("pg-race-{k}"), &a);
        // The same SIM as the second relay sees it (a copy of its image: each relay
        // process writes its own image back).
        let b = dir.join(format!("race-{k}-b.img"));
        std::fs::copy(&a, &b).unwrap();
        races.push((issue(&s, &format!("race-{k}"), &iccid), a, b));
    }

    // All relays at once: the round-robin downloads at instance i mod 3, each race's two
    // relays at two different instances.
    let mut running: Vec<Child> = Vec::new();
    for (i, (d, image)) in downloads.iter().enumerate() {
        running.push(relay(&s, d, ports[i % 3], image).spawn().unwrap());
    }
    for (k, (d, a, b)) in races.iter().enumerate() {
        running.push(relay(&s, d, ports[k % 3], a).spawn().unwrap());
        running.push(relay(&s, d, ports[(k + 1) % 3], b).spawn().unwrap());
    }
    let mut outs: Vec<Output> = running
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let race_outs = outs.split_off(CARDS);

    // Every round-robin download completed, on its card.
    for ((d, image), o) in downloads.iter().zip(&outs) {
        assert!(o.status.success(), "{}: {}", d.iccid, text(o));
        assert_eq!(report(o)["outcome"], "completed", "{}", text(o));
        let cert = std::fs::read(d.issued.with_extension("crt.der")).unwrap();
        assert_eq!(card_cert(&dir, image), Some(cert), "{}", d.iccid);
        assert!(receipt_valid(&s, d), "{}", d.iccid);
    }
    // Each race: one relay carried the credential to its card; the other was told clearly
    // that a newer session took over (refused, exit code not 0), or found the download
    // complete and sent nothing to its card.
    let mut superseded = 0;
    let mut overlapped = [false; RACES];
    for (k, (d, a, b)) in races.iter().enumerate() {
        let pair = [(&race_outs[2 * k], a), (&race_outs[2 * k + 1], b)];
        let carried: Vec<_> = pair
            .iter()
            .filter(|(o, _)| o.status.success() && report(o)["orders"].as_u64() > Some(0))
            .collect();
        assert_eq!(
            carried.len(),
            1,
            "race {k}: {} | {}",
            text(pair[0].0),
            text(pair[1].0)
        );
        let (_, winner_image) = carried[0];
        let cert = std::fs::read(d.issued.with_extension("crt.der")).unwrap();
        assert_eq!(card_cert(&dir, winner_image), Some(cert), "race {k}");
        assert!(receipt_valid(&s, d), "race {k}");
        let (loser, _) = pair
            .iter()
            .find(|(o, _)| !(o.status.success() && report(o)["orders"].as_u64() > Some(0)))
            .unwrap();
        let r = report(loser);
        if loser.status.success() {
            assert_eq!(
                (r["outcome"].as_str(), r["orders"].as_u64()),
                (Some("completed"), Some(0)),
                "race {k}: {}",
                text(loser)
            );
            assert!(r["message"].as_str().unwrap().contains("complete"), "{r}");
        } else {
            assert_eq!(r["outcome"], "refused", "race {k}: {}", text(loser));
            assert!(
                r["message"]
                    .as_str()
                    .unwrap()
                    .contains("a newer session took over"),
                "race {k}: {}",
                text(loser)
            );
            superseded += 1;
            overlapped[k] = true;
        }
    }

    // The tables: every operation completed, once; each credential once; nothing pending.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut sessions_opened = 0;
    rt.block_on(async {
        let store = Store::open(&Backend::Postgres(pg.url.clone()))
            .await
            .unwrap();
        let states = store.count_by_state().await.unwrap();
        assert_eq!(
            states,
            vec![("completed".to_string(), (CARDS + RACES) as i64)],
            "operations by state"
        );
        let all = downloads
            .iter()
            .map(|(d, _)| (d, 1))
            .chain(races.iter().map(|(d, _, _)| (d, 2)));
        for (i, (d, relays)) in all.enumerate() {
            assert!(store.live_ops_on(&d.iccid).await.unwrap().is_empty());
            let creds = store.credentials_on(&d.iccid).await.unwrap();
            assert_eq!(creds.len(), 1, "{}: {creds:?}", d.iccid);
            let op = tsm_protocol::OpId::from_hex(&d.op).unwrap();
            let trail = store.audit_trail(Some(&op)).await.unwrap();
            let count = |e: &str| trail.iter().filter(|a| a.event == e).count();
            let events: Vec<&str> = trail.iter().map(|a| a.event.as_str()).collect();
            if relays == 1 {
                assert_eq!(
                    events,
                    ["accepted", "session-opened", "authorised", "completed"],
                    "{}",
                    d.iccid
                );
                continue;
            }
            // Raced: accepted once, completed once and last; in between only sessions
            // opened and users authorised (a relay whose session was taken over may open
            // another when it retries, so there can be more sessions than relays).
            assert_eq!(events.first(), Some(&"accepted"), "{events:?}");
            assert_eq!(events.last(), Some(&"completed"), "{events:?}");
            assert_eq!(count("accepted"), 1, "{events:?}");
            assert_eq!(count("completed"), 1, "{events:?}");
            let sessions = count("session-opened");
            let authorised = count("authorised");
            // A loser told a newer session took over had a session of its own.
            let min = if overlapped[i - CARDS] { 2 } else { 1 };
            assert!(sessions >= min, "{events:?}");
            assert!((1..=sessions).contains(&authorised), "{events:?}");
            assert_eq!(sessions + authorised + 2, events.len(), "{events:?}");
            sessions_opened += sessions;
        }
    });
    eprintln!(
        "{superseded} of {RACES} races ended with a newer session taking over; \
         {sessions_opened} sessions opened for the {RACES} raced downloads"
    );
    drop(tsms);
}
