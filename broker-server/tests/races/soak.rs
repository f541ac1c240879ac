//! The soak run (`scripts/soak.sh`; ignored in the suite): two broker instances on a
//! pg_auto_failover formation under a steady load of acts from several clients for a given
//! time, the primary killed (SIGKILL) every few minutes and a KEK rotation started after each
//! failover. Every interval it prints the acts answered and the tries that failed, latency
//! percentiles of the answered ones, and the memory (RSS) of this process (the brokers) and of
//! each PostgreSQL postmaster of the formation. At the end every record opens under the last
//! KEK and each card's key still gives the answer it gave at the start.
//!
//! `KAGI_SOAK_SECONDS` (default 120), `KAGI_SOAK_FAILOVER_SECONDS` (default 60),
//! `KAGI_SOAK_INTERVAL_SECONDS` (default 10), `KAGI_SOAK_CLIENTS` (default 4).

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
    let a = w.broker(no_backoff()).await;
    let b = w.broker(no_backoff()).await;
    assert_eq!(w.admin(&a, mac_service("soak")).await, AdminResponse::Ok);
    let sessions = w.cards_with_sessions(&a, "soak", "SOAK", 50).await;
    let mut before = Vec::new();
    for s in &sessions {
        before.push(a.act(&act(s, "soak")).await.unwrap().mac);
    }
    let sessions = Arc::new(sessions);
    let before = Arc::new(before);
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
    let start = Instant::now();
    let mut next_failover = start + every;
    let mut kek = 1;
    let mut rotation: Option<tokio::task::JoinHandle<usize>> = None;
    let (mut all_acts, mut all_failed, mut failovers) = (0usize, 0usize, 0usize);
    eprintln!(
        "soak: {} s, a failover every {} s, {clients} clients, 2 brokers, 50 cards",
        total.as_secs(),
        every.as_secs()
    );
    eprintln!("   t(s)   acts  failed  p50(ms)  p99(ms)  max(ms)  brokers(MiB)  postmasters(MiB)");
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
        let fails = failed.swap(0, Ordering::Relaxed);
        all_acts += l.len();
        all_failed += fails;
        let pm: Vec<String> = postmasters(f.dir())
            .iter()
            .map(|(pid, r)| format!("{pid}:{r:.0}"))
            .collect();
        eprintln!(
            "{:7.0} {:6} {:7} {:8.2} {:8.2} {:8.2} {:13.0}  {}",
            start.elapsed().as_secs_f64(),
            l.len(),
            fails,
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            l.last().copied().unwrap_or(0.0),
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
    assert_eq!(check.opened, 50);
    assert_eq!(
        check.by_kek.get(&format!("k{kek}")),
        Some(&50),
        "{:?}",
        check.by_kek
    );
    for (s, mac) in sessions.iter().zip(before.iter()) {
        assert_eq!(&a.act(&act(s, "soak")).await.unwrap().mac, mac);
    }
    let wrong = wrong.load(Ordering::Relaxed);
    eprintln!(
        "soak done: {all_acts} acts answered, {all_failed} tries failed ({:.3} %), {failovers} failovers, {wrong} wrong answers",
        100.0 * all_failed as f64 / (all_acts + all_failed).max(1) as f64
    );
    assert_eq!(wrong, 0, "an act answered with another card's key");
}
