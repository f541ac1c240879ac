//! `kagi tsm load --outbox`: the load generator drives the three organisations end to end.

use super::support::cli::{Scenario, kagi, ok};

/// Three sessions, two at a time, each from a fresh blank SIM and an application signed on
/// the simulated My Number card to the credential on the SIM: the report (its schema) counts
/// three done and none failed, and the issuer's own table (read with sqlite3) links three
/// more active phone certificates to the card's signature certificate; every mailed code was
/// read (the outbox's `new/` is empty). Then the open load (`--rate`) paces its starts.
#[test]
fn the_load_generator_runs_whole_sessions_through_three_services() {
    let s = Scenario::new("three-load", false);
    let dir = &s.dir;
    let services = super::start_services(&s, Default::default());
    let out = ok(kagi()
        .args(["--json", "tsm", "load", "--sp"])
        .arg(dir.join("tsm/sp.toml"))
        .arg("--mno")
        .arg(dir.join("mno/operator.toml"))
        .arg("--ca-dir")
        .arg(dir.join("pki"))
        .arg("--outbox")
        .arg(dir.join("tsm/outbox"))
        .arg("--manufacturer-ca")
        .arg(dir.join("maker"))
        .args([
            "--sessions",
            "3",
            "--concurrency",
            "2",
            "--max-seconds",
            "120",
        ]));
    super::support::schema::document("tsm.load", out.as_bytes());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["sessions"], 3, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["mode"], "three-services", "{v}");
    assert_eq!(
        services.issuer_row(
            dir,
            "SELECT count(DISTINCT sign_serial) || '|' || count(*) FROM links WHERE state = 'active'"
        ),
        "1|3"
    );
    let left = std::fs::read_dir(dir.join("tsm/outbox/new"))
        .unwrap()
        .count();
    assert_eq!(left, 0);

    // The open load: three sessions started two per second — the third is due a second after
    // the first, so the run takes at least that long whatever the machine.
    let load = |extra: &[&str]| {
        let mut c = kagi();
        c.args(["--json", "tsm", "load", "--sp"])
            .arg(dir.join("tsm/sp.toml"))
            .arg("--mno")
            .arg(dir.join("mno/operator.toml"))
            .arg("--ca-dir")
            .arg(dir.join("pki"))
            .arg("--outbox")
            .arg(dir.join("tsm/outbox"))
            .arg("--manufacturer-ca")
            .arg(dir.join("maker"))
            .args(["--sessions", "3", "--max-seconds", "120"])
            .args(extra);
        c
    };
    let out = ok(&mut load(&["--rate", "2"]));
    super::support::schema::document("tsm.load", out.as_bytes());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&v["sessions"], &v["failed"]),
        (&3.into(), &0.into()),
        "{v}"
    );
    assert_eq!(v["rate"], 2.0, "{v}");
    assert!(v["seconds"].as_f64().unwrap() >= 1.0, "{v}");
    assert_eq!(
        services.issuer_row(dir, "SELECT count(*) FROM links WHERE state = 'active'"),
        "6"
    );
    // Applications first: three applications timed on their own (each access code read from
    // the outbox), then three downloads; three more linked certificates.
    let out = ok(&mut load(&["--applications-first", "--concurrency", "2"]));
    super::support::schema::document("tsm.load", out.as_bytes());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&v["sessions"], &v["failed"], &v["applications"]["count"]),
        (&3.into(), &0.into(), &3.into()),
        "{v}"
    );
    assert!(
        v["generator_cpu_ms_per_session"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    // The relay's round trips of a download with the issuer's key (research note
    // `tsm-anchors.md` §5: every secure session is INITIALIZE UPDATE, then EXTERNAL
    // AUTHENTICATE with the probe, then the actions): at the SP-TSM the hello (answered by
    // the hand-over) and, after the MNO-TSM, the return hello (INITIALIZE UPDATE), two reports
    // answered by orders and the last one by the stop — 5; at the MNO-TSM two sessions (the
    // new domain on the issuer domain, then the applet and keys on it) — the hello and 6
    // reports — 7.
    assert_eq!(v["round_trips_per_session"], 12.0, "{v}");
    assert_eq!(
        services.issuer_row(dir, "SELECT count(*) FROM links WHERE state = 'active'"),
        "9"
    );
    assert_eq!(
        std::fs::read_dir(dir.join("tsm/outbox/new"))
            .unwrap()
            .count(),
        0
    );
    // --applications-first needs the three services (--outbox).
    let o = kagi()
        .args(["tsm", "load", "--sp"])
        .arg(dir.join("tsm/sp.toml"))
        .arg("--mno")
        .arg(dir.join("mno/operator.toml"))
        .arg("--ca-dir")
        .arg(dir.join("pki"))
        .arg("--provider-keys")
        .arg(dir.join("tsm/keys/provider.keys"))
        .arg("--applications-first")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    // A rate that is no rate is a usage error.
    let o = load(&["--rate", "0"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}
