//! The soak run (`scripts/soak.sh`; ignored in the suite): two broker instances on a
//! pg_auto_failover formation under a steady mixed load for a given time — acts from several
//! clients, and password logins (each followed by an act with the new session) from another —,
//! the primary killed (SIGKILL) every few minutes and a KEK rotation started after each
//! failover. Every interval it prints the acts and logins answered and the tries that failed,
//! latency percentiles of the answered acts and logins, and the memory (RSS) of this process
//! (the brokers) and of each PostgreSQL postmaster of the formation. At the end every record
//! opens under the last KEK and each card's key still gives the answer it gave at the start.
//!
//! `KAGI_SOAK_SECONDS` (default 120), `KAGI_SOAK_FAILOVER_SECONDS` (default 60),
//! `KAGI_SOAK_INTERVAL_SECONDS` (default 10), `KAGI_SOAK_CLIENTS` (default 4),
//! `KAGI_SOAK_LOGIN_CLIENTS` (default 1).

/// The holders that log in with a password during the soak (each with a card and a
/// credential of the soak's service).
const LOGIN_HOLDERS: usize = 8;

use super::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of a process in MiB, from /proc.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// The postmasters of the formation in `dir` (their command line names a data directory
/// under it), with their RSS.
fn postmasters(dir: &std::path::Path) -> Vec<(u32, f64)> {
    let dir = dir.to_string_lossy().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("postgres")
            && cmd.contains("-D")
            && cmd.contains(&dir)
            && let Some(r) = rss_mib(pid)
        {
            out.push((pid, r));
        }
    }
    out.sort_by_key(|p| p.0);
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub(crate) async fn soak(w: &World) {
    let f = w.ha.as_ref().expect("a world on a formation");
    let total = Duration::from_secs(env_secs("KAGI_SOAK_SECONDS", 120));
    let every = Duration::from_secs(env_secs("KAGI_SOAK_FAILOVER_SECONDS", 60));
    let interval = Duration::from_secs(env_secs("KAGI_SOAK_INTERVAL_SECONDS", 10));
    let clients = env_secs("KAGI_SOAK_CLIENTS", 4) as usize;
    let login_clients = env_secs("KAGI_SOAK_LOGIN_CLIENTS", 1) as usize;
    let a = w.broker(no_backoff()).await;
    let b = w.broker(no_backoff()).await;
    assert_eq!(w.admin(&a, mac_service("soak")).await, AdminResponse::Ok);
    let sessions = w.cards_with_sessions(&a, "soak", "SOAK", 50).await;
    let mut before = Vec::new();
    for s in &sessions {
        before.push(a.act(&act(s, "soak")).await.unwrap().mac);
    }
    // The password holders, and each one's answer through a first login.
    let verifier = password::new_verifier("soak password", &Policy::cheap_for_tests().new).unwrap();
    let mut login_before = Vec::new();
    for j in 0..LOGIN_HOLDERS {
        let card = format!("SOAK-LOGIN-{j}");
        for req in [
            AdminRequest::EnrolCard {
                card: card.clone(),
                holder: card.clone(),
                password: Some(verifier.clone()),
            },
            AdminRequest::EnrolCredential {
                card: card.clone(),
                service: "soak".into(),
            },
        ] {
            w.admin(&a, req).await;
        }
        let s = a
            .login_password(&pw(&card, "soak password"), None)
            .await
            .unwrap();
        login_before.push(a.act(&act(&s.session, "soak")).await.unwrap().mac);
    }
    let sessions = Arc::new(sessions);
    let before = Arc::new(before);
    let login_before = Arc::new(login_before);
    let login_latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for k in 0..clients {
        let (a, b) = (a.clone(), b.clone());
        let (sessions, before) = (sessions.clone(), before.clone());
        let (stop, latencies, failed, wrong) = (
            stop.clone(),
            latencies.clone(),
            failed.clone(),
            wrong.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = k;
            while !stop.load(Ordering::Relaxed) {
                let inst = if i.is_multiple_of(2) { &a } else { &b };
                let t = Instant::now();
                match inst.act(&act(&sessions[i % sessions.len()], "soak")).await {
                    Ok(r) => {
                        if r.mac != before[i % sessions.len()] {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        latencies
                            .lock()
                            .unwrap()
                            .push(t.elapsed().as_secs_f64() * 1000.0);
                        i += clients;
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    for k in 0..login_clients {
        let (a, b, login_before) = (a.clone(), b.clone(), login_before.clone());
        let (stop, login_latencies, failed, wrong) = (
            stop.clone(),
            login_latencies.clone(),
            failed.clone(),
            wrong.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = k;
            while !stop.load(Ordering::Relaxed) {
                let inst = if i.is_multiple_of(2) { &b } else { &a };
                let j = i % LOGIN_HOLDERS;
                let t = Instant::now();
                let holder = format!("SOAK-LOGIN-{j}");
                let done = match inst
                    .login_password(&pw(&holder, "soak password"), None)
                    .await
                {
                    Ok(s) => inst.act(&act(&s.session, "soak")).await,
                    Err(e) => Err(e),
                };
                match done {
                    Ok(r) => {
                        if r.mac != login_before[j] {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        login_latencies
                            .lock()
                            .unwrap()
                            .push(t.elapsed().as_secs_f64() * 1000.0);
                        i += login_clients;
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    let start = Instant::now();
    let mut next_failover = start + every;
    let mut kek = 1;
    let mut rotation: Option<tokio::task::JoinHandle<usize>> = None;
    let (mut all_acts, mut all_logins, mut all_failed, mut failovers) = (0usize, 0, 0, 0usize);
    eprintln!(
        "soak: {} s, a failover every {} s, {clients} act clients and {login_clients} login \
         clients, 2 brokers, 50 cards and {LOGIN_HOLDERS} password holders",
        total.as_secs(),
        every.as_secs()
    );
    eprintln!(
        "   t(s)   acts  logins  failed  p50(ms)  p99(ms)  max(ms)  login p50/p99(ms)  brokers(MiB)  postmasters(MiB)"
    );
    while start.elapsed() < total {
        tokio::time::sleep(interval).await;
        if Instant::now() >= next_failover {
            if let Some(r) = rotation.take() {
                // The previous rotation must have finished before the next one starts.
                tokio::time::timeout(Duration::from_secs(120), r)
                    .await
                    .expect("a KEK rotation finishes")
                    .unwrap();
            }
            let pid = f.kill_primary().unwrap();
            failovers += 1;
            kek += 1;
            let id = format!("k{kek}");
            FileEnvelope::new_kek(&w.dir.join("keys"), &id).unwrap();
            eprintln!("   -- primary {pid} killed; rotating to {id}");
            let b = b.clone();
            rotation = Some(tokio::spawn(async move {
                let mut errors = 0;
                loop {
                    match b.rewrap_some(&id, 20).await {
                        Ok((_, 0)) => break errors,
                        Ok(_) => {}
                        Err(_) => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }));
            next_failover += every;
        }
        let mut l = std::mem::take(&mut *latencies.lock().unwrap());
        l.sort_by(f64::total_cmp);
        let mut g = std::mem::take(&mut *login_latencies.lock().unwrap());
        g.sort_by(f64::total_cmp);
        let fails = failed.swap(0, Ordering::Relaxed);
        all_acts += l.len();
        all_logins += g.len();
        all_failed += fails;
        let pm: Vec<String> = postmasters(f.dir())
            .iter()
            .map(|(pid, r)| format!("{pid}:{r:.0}"))
            .collect();
        eprintln!(
            "{:7.0} {:6} {:7} {:7} {:8.2} {:8.2} {:8.2} {:8.1}/{:<8.1} {:13.0}  {}",
            start.elapsed().as_secs_f64(),
            l.len(),
            g.len(),
            fails,
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            l.last().copied().unwrap_or(0.0),
            percentile(&g, 0.5),
            percentile(&g, 0.99),
            rss_mib(std::process::id()).unwrap_or(0.0),
            pm.join(" ")
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in workers {
        t.await.unwrap();
    }
    if let Some(r) = rotation.take() {
        tokio::time::timeout(Duration::from_secs(120), r)
            .await
            .expect("the last KEK rotation finishes")
            .unwrap();
    }
    let check = b.verify_records().await.unwrap();
    assert!(check.failed.is_empty(), "{:?}", check.failed);
    let records = 50 + LOGIN_HOLDERS as u64;
    assert_eq!(check.opened, records);
    assert_eq!(
        check.by_kek.get(&format!("k{kek}")),
        Some(&records),
        "{:?}",
        check.by_kek
    );
    for (s, mac) in sessions.iter().zip(before.iter()) {
        assert_eq!(&a.act(&act(s, "soak")).await.unwrap().mac, mac);
    }
    let wrong = wrong.load(Ordering::Relaxed);
    eprintln!(
        "soak done: {all_acts} acts and {all_logins} logins (each with an act) answered, {all_failed} tries failed ({:.3} %), {failovers} failovers, {wrong} wrong answers",
        100.0 * all_failed as f64 / (all_acts + all_logins + all_failed).max(1) as f64
    );
    assert_eq!(wrong, 0, "an act answered with another card's key");
}
