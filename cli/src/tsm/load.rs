//! `kagi tsm load`: a load generator for a running TSM — a separate process on the same
//! machine, loopback only, bounded in sessions and time. Before the clock starts it prepares
//! the simulated SIMs (each with the provider's domain), registers them with the TSM as the
//! operator, and makes the credentials (P-256 keys certified by the test CA); then it runs
//! `--sessions` complete downloads (issue request, relay session, card scripts, receipt),
//! `--concurrency` at a time, and reports sessions per second and the TSM's own time per
//! session (the sum of its `x-tsm-micros` over the session's requests): p50, p99, max.
//!
//! With `--rate N` the load is open: a session starts every 1/N s whether or not earlier ones
//! finished (at most `--concurrency` in flight; one that waits for a place counts its wait in
//! its whole-session time, so an overloaded TSM shows as long sessions rather than as a lower
//! offered rate) — the way to find the rate at which the TSM still meets a latency goal.
//!
//! With `--outbox` it loads the three organisations of seed 004 instead (an SP-TSM with its
//! MNO-TSM and JPKI issuer, [`super::load_three`]): each session is the whole path from the
//! user's signed application to the credential on the SIM.

use super::load_job::{Job, PASSWORD, Prepared, phone_entry};
use super::load_three;
use crate::Failure;
use crate::print_json;
use clap::Args;
use kagi_fixtures::sim::{PROVIDER_SD, provider_keys, provision};
use kagi_online::tsm::client::Client;
use kagi_online::tsm::provider::{self, CardKey, Party};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tsm_protocol::control::{AppletRef, CardTarget, ControlRequest, ControlResponse};
use tsm_protocol::relay::{StopOutcome, UserCredentials};

/// `kagi tsm load` options.
#[derive(Args)]
pub struct LoadArgs {
    /// The provider's configuration (sp.toml; its `tsm` is the target).
    #[arg(long)]
    sp: PathBuf,
    /// The operator's configuration (mno.toml), to register the simulated SIMs.
    #[arg(long)]
    mno: PathBuf,
    /// The provider's security-domain master keys (the TSM's DIR/provider.keys), to make
    /// SIMs the TSM can open (one TSM; not with `--outbox`).
    #[arg(long, required_unless_present = "outbox")]
    provider_keys: Option<PathBuf>,
    /// The test CA directory: the credentials' certificates (one TSM), or the signature CA
    /// of the simulated My Number card that signs the applications (`--outbox`).
    #[arg(long)]
    ca_dir: PathBuf,
    /// Three organisations: the SP-TSM's maildir outbox, where each session's access code is
    /// read from (`--sp` is the provider at the SP-TSM, `--mno` the operator at the
    /// MNO-TSM; the SIMs are blank, the MNO-TSM makes the provider's domain).
    #[arg(long, value_name = "MAILDIR", requires = "manufacturer_ca")]
    outbox: Option<PathBuf>,
    /// With `--outbox`: the directory of the card manufacturer CA the JPKI issuer trusts
    /// (`kagi sim provision --manufacturer-ca`), which certifies the load's SIMs.
    #[arg(long, value_name = "DIR")]
    manufacturer_ca: Option<PathBuf>,
    /// Download sessions to run.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Sessions in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Stop starting sessions after this many seconds.
    #[arg(long, default_value_t = 60)]
    max_seconds: u64,
    /// Three organisations: make every application first (their rate reported on its own:
    /// the SP-TSM and the JPKI issuer; each access code read from the outbox), then time the
    /// download sessions alone (the SP-TSM with the MNO-TSM, and the issuer too in the
    /// on-card mode) — the user applies and downloads at different times.
    #[arg(long, requires = "outbox")]
    applications_first: bool,
    /// Start this many sessions per second (open load) instead of keeping `--concurrency`
    /// sessions in flight.
    #[arg(long, value_name = "PER_SECOND", value_parser = positive_rate)]
    rate: Option<f64>,
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 100_000.0 => Ok(r),
        _ => Err(format!(
            "{s}: give sessions per second as a number above 0 (at most 100000)"
        )),
    }
}

fn prepare(args: &LoadArgs, run: &str, key_file: &Path) -> Result<Vec<Prepared>, Failure> {
    use der::Encode;
    use p256::elliptic_curve::Generate;
    let master = kagi::keys::read_key_file(key_file, 0x31)?;
    let keys = provider_keys(master, 0x31);
    let (auth_ca, _) = crate::jpki::cas(&args.ca_dir)?;
    let ca_der = auth_ca.certificate_der()?;
    let maker = kagi_fixtures::sim::manufacturer_ca()?.certificate().clone();
    let now = std::time::SystemTime::now();
    let grant = provider::access_grant(PASSWORD, 3, 600_000)?;
    let entry = phone_entry(&grant)?;
    let mut out = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        let sim = provision(format!("load-{run}-{i}").as_bytes(), &PROVIDER_SD, &keys)?;
        let k = p256::ecdsa::SigningKey::try_generate().map_err(|e| e.to_string())?;
        let cert = auth_ca
            .issue_auth(
                k.verifying_key(),
                &format!("KAGILOAD{i}"),
                (i as u32) | 0x1000_0000,
                now,
                now + Duration::from_secs(86400 * 30),
            )?
            .to_der()?;
        // Sealed to this SIM's own key, as its (fixture) manufacturer certified it.
        let target = provider::SealTarget::verify(&maker, &sim.card_certificate, &sim.iccid, now)?;
        let request_id = tsm_protocol::IdempotencyKey::random().map_err(|e| e.to_string())?;
        let applet = AppletRef::jpki();
        let bundle = provider::bundle(
            &target,
            &applet.instance,
            &request_id,
            &CardKey::P256(k),
            cert,
            ca_der.clone(),
            b"1357",
            "00",
        )?;
        let request = ControlRequest::Issue {
            subscriber_ref: format!("load-{i}"),
            card: CardTarget {
                iccid: sim.iccid.clone(),
            },
            applet,
            credential: bundle,
            access: grant.clone(),
        };
        out.push(Prepared::new(
            sim,
            Job::Issue {
                request,
                request_id,
            },
            entry.clone(),
        ));
    }
    Ok(out)
}

/// A session's first step: the issue request (or the application, then the access code
/// from the SP-TSM's outbox). Returns the device ticket, the access code and the TSM's time.
async fn request(
    sp: &Party,
    mailbox: Option<&load_three::Mailbox>,
    job: &Job,
    iccid: &str,
) -> Result<(String, String, Duration), String> {
    let (request, request_id) = match job {
        Job::Issue {
            request,
            request_id,
        } => (request, Some(*request_id)),
        Job::Apply { request, .. } => (request, None),
        Job::Download { ticket, code } => {
            return Ok((ticket.clone(), code.to_string(), Duration::ZERO));
        }
    };
    let a = sp
        .send(request, request_id)
        .await
        .map_err(|e| e.to_string())?;
    let tsm = Duration::from_micros(a.exchange.tsm_micros);
    match (a.response, job, mailbox) {
        (
            ControlResponse::Accepted {
                device_ticket: Some(ticket),
                access_code: Some(code),
                ..
            },
            Job::Issue { .. },
            _,
        ) => Ok((ticket, code, tsm)),
        (
            ControlResponse::Accepted {
                device_ticket: Some(ticket),
                ..
            },
            Job::Apply { contact, .. },
            Some(mailbox),
        ) => {
            let code = mailbox
                .code_for(contact, Duration::from_secs(30))
                .await
                .ok_or_else(|| format!("{iccid}: no access code mailed to {contact}"))?;
            Ok((ticket, code.to_string(), tsm))
        }
        (other, _, _) => Err(format!("{iccid} refused: {other:?}")),
    }
}

/// The applications alone (`--applications-first`), `concurrency` at a time: each
/// prepared SIM's job becomes its download; the TSM's time and the whole time of each.
async fn applications(
    cards: Vec<Prepared>,
    concurrency: usize,
    sp: Arc<Party>,
    mailbox: Option<Arc<load_three::Mailbox>>,
) -> Result<(Vec<Prepared>, Vec<Duration>), String> {
    let queue = Arc::new(tokio::sync::Mutex::new(cards));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (queue, sp, mailbox) = (queue.clone(), sp.clone(), mailbox.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(mut p) = queue.lock().await.pop() {
                let (ticket, code, tsm) =
                    request(&sp, mailbox.as_deref(), &p.job, &p.iccid).await?;
                p.job = Job::Download {
                    ticket,
                    code: zeroize::Zeroizing::new(code),
                };
                out.push((p, tsm));
            }
            Ok::<_, String>(out)
        }));
    }
    let (mut cards, mut times) = (Vec::new(), Vec::new());
    for t in tasks {
        for (p, tsm) in t
            .await
            .map_err(|e| format!("an application worker stopped: {e}"))??
        {
            cards.push(p);
            times.push(tsm);
        }
    }
    Ok((cards, times))
}

/// One download: the issue request (or the application), then the relay session. Returns
/// the TSM's time and the session's own.
async fn session(
    sp: &Party,
    relay_client: &Client,
    mailbox: Option<&load_three::Mailbox>,
    mut p: Prepared,
) -> Outcome {
    let start = Instant::now();
    let (ticket, code, mut tsm) = request(sp, mailbox, &p.job, &p.iccid).await?;
    let creds = UserCredentials {
        access_code: code,
        password: p.password.clone(),
    };
    let mut never = |_| None;
    let out = kagi_online::tsm::relay::run(
        relay_client,
        &mut p.card,
        kagi_online::tsm::relay::Options {
            ticket,
            credentials: Some(creds),
            ask: &mut never,
            agent: "kagi tsm load".into(),
            capture: None,
            limits: tsm_protocol::relief::DerivationLimits::production(),
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    tsm += out.tsm_time;
    if out.outcome != StopOutcome::Completed {
        return Err(format!("{}: {:?} {}", p.iccid, out.outcome, out.message));
    }
    Ok((tsm, start.elapsed(), out.round_trips))
}

/// This process's CPU time so far (user and system).
fn own_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |v: nix::sys::time::TimeVal| {
                Duration::new(v.tv_sec().max(0) as u64, (v.tv_usec().max(0) as u32) * 1000)
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One session's result: the TSM's time, the whole session's, and the relay's HTTP round
/// trips (at every TSM it went to).
type Outcome = Result<(Duration, Duration, u32), String>;

/// The closed load: `concurrency` workers, each starting its next session when its last one
/// ended.
async fn closed(
    cards: Vec<Prepared>,
    concurrency: usize,
    deadline: Instant,
    sp: Arc<Party>,
    relay_client: Client,
    mailbox: Option<Arc<load_three::Mailbox>>,
) -> Vec<Outcome> {
    let queue = Arc::new(tokio::sync::Mutex::new(cards));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (queue, sp, relay_client) = (queue.clone(), sp.clone(), relay_client.clone());
        let mailbox = mailbox.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                if Instant::now() > deadline {
                    break;
                }
                let Some(p) = queue.lock().await.pop() else {
                    break;
                };
                out.push(session(&sp, &relay_client, mailbox.as_deref(), p).await);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        match t.await {
            Ok(out) => all.extend(out),
            Err(e) => all.push(Err(format!("a load worker stopped: {e}"))),
        }
    }
    all
}

/// The open load: a session started every 1/`rate` s, at most `concurrency` in flight; a
/// session's whole time counts from when it was due.
async fn open(
    cards: Vec<Prepared>,
    rate: f64,
    concurrency: usize,
    deadline: Instant,
    sp: Arc<Party>,
    relay_client: Client,
    mailbox: Option<Arc<load_three::Mailbox>>,
) -> Vec<Outcome> {
    let places = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for p in cards {
        let due = ticks.tick().await;
        if Instant::now() > deadline {
            break;
        }
        let (sp, relay_client, mailbox) = (sp.clone(), relay_client.clone(), mailbox.clone());
        let places = places.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(_place) = places.acquire_owned().await else {
                return Err("the load's places closed".to_string());
            };
            let waited = due.elapsed();
            session(&sp, &relay_client, mailbox.as_deref(), p)
                .await
                .map(|(tsm, whole, trips)| (tsm, whole + waited, trips))
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        match t.await {
            Ok(r) => all.push(r),
            Err(e) => all.push(Err(format!("a load session stopped: {e}"))),
        }
    }
    all
}

/// Runs the load.
pub fn run(args: &LoadArgs, json_out: bool) -> Result<(), Failure> {
    let sp = super::load_party(&args.sp)?;
    let mno = super::load_party(&args.mno)?;
    let url = sp.client.base().to_string();
    if !(url.contains("127.0.0.1") || url.contains("localhost") || url.contains("[::1]")) {
        return Err(format!(
            "the load generator only targets a TSM on this machine (loopback), not {url}"
        )
        .into());
    }
    let run_id = format!("{:x}", tsm_protocol::signing::now_ms());
    let t0 = Instant::now();
    let prepared = match (&args.outbox, &args.manufacturer_ca, &args.provider_keys) {
        (Some(_), Some(maker), _) => load_three::prepare(
            args.sessions,
            &args.ca_dir,
            &run_id,
            maker,
            &sp.signer.party().0,
        )?,
        (None, _, Some(keys)) => prepare(args, &run_id, keys)?,
        _ => return Err("give --provider-keys (one TSM) or --outbox and --manufacturer-ca".into()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Register every SIM, as the operator would have.
    let cards = prepared;
    rt.block_on(async {
        for p in &cards {
            let r = mno
                .send(
                    &ControlRequest::RegisterCard {
                        iccid: p.iccid.clone(),
                        cin: p.cin.clone(),
                        sd_aid: p.sd_aid.clone(),
                        free_memory: 65536,
                        card_certificate: Some(p.card_certificate.clone()),
                    },
                    None,
                )
                .await?;
            if r.response != ControlResponse::Ok {
                return Err(format!("registering {}: {:?}", p.iccid, r.response).into());
            }
        }
        Ok::<(), Failure>(())
    })?;
    let prep = t0.elapsed();
    eprintln!(
        "prepared {} SIMs and credentials in {:.1} s; running {} sessions, {} at a time",
        cards.len(),
        prep.as_secs_f64(),
        cards.len(),
        args.concurrency
    );
    let sp = Arc::new(sp);
    let relay_client = sp.client.clone();
    let mailbox = args
        .outbox
        .as_deref()
        .map(|o| Arc::new(load_three::Mailbox::watch(o)));
    let (cards, applied) = if args.applications_first {
        let start = Instant::now();
        let (cards, mut times) = rt.block_on(applications(
            cards,
            args.concurrency,
            sp.clone(),
            mailbox.clone(),
        ))?;
        let wall = start.elapsed();
        times.sort();
        (cards, Some((times, wall)))
    } else {
        (cards, None)
    };
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let cpu_before = own_cpu();
    let start = Instant::now();
    let results = match args.rate {
        None => rt.block_on(closed(
            cards,
            args.concurrency,
            deadline,
            sp,
            relay_client,
            mailbox,
        )),
        Some(rate) => rt.block_on(open(
            cards,
            rate,
            args.concurrency,
            deadline,
            sp,
            relay_client,
            mailbox,
        )),
    };
    let wall = start.elapsed();
    // The generator's own CPU while the clock ran (its simulated SIMs, TLS-less HTTP, the
    // phones' work): on the same cores as the services, so it is part of what they share.
    let generator_cpu = own_cpu().saturating_sub(cpu_before);
    let mut ok: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|t| t.0))
        .collect();
    let mut whole: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|t| t.1))
        .collect();
    let round_trips: u64 = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|t| u64::from(t.2)))
        .sum();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    ok.sort();
    whole.sort();
    let mode = if args.outbox.is_some() {
        "three-services"
    } else {
        "one-tsm"
    };
    let per_s = ok.len() as f64 / wall.as_secs_f64().max(1e-9);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let generator_ms = ms(generator_cpu) / results.len().max(1) as f64;
    let round_trips = round_trips as f64 / ok.len().max(1) as f64;
    let applications = applied.as_ref().map(|(times, wall)| {
        (
            times.len(),
            wall.as_secs_f64(),
            times.len() as f64 / wall.as_secs_f64().max(1e-9),
            ms(percentile(times, 0.5)),
            ms(percentile(times, 0.99)),
        )
    });
    if json_out {
        print_json(json!({
            "sessions": ok.len(), "failed": failed.len(), "seconds": wall.as_secs_f64(),
            "sessions_per_second": per_s, "tsm_ms_p50": ms(percentile(&ok, 0.5)),
            "tsm_ms_p99": ms(percentile(&ok, 0.99)), "tsm_ms_max": ms(percentile(&ok, 1.0)),
            "session_ms_p50": ms(percentile(&whole, 0.5)),
            "session_ms_p99": ms(percentile(&whole, 0.99)), "mode": mode,
            "concurrency": args.concurrency, "prepare_seconds": prep.as_secs_f64(),
            "rate": args.rate, "generator_cpu_ms_per_session": generator_ms,
            "round_trips_per_session": round_trips,
            "applications": applications.map(|(n, secs, per_s, p50, p99)| json!({
                "count": n, "seconds": secs, "per_second": per_s,
                "tsm_ms_p50": p50, "tsm_ms_p99": p99,
            })),
        }));
    } else {
        if let Some((n, secs, per_s, p50, p99)) = applications {
            println!(
                "{n} applications first in {secs:.2} s: {per_s:.0} applications/s; SP-TSM time per application p50 {p50:.1} ms, p99 {p99:.1} ms (the downloads below are timed alone)"
            );
        }
        println!(
            "{} download sessions ({mode}{}) in {:.2} s: {:.0} sessions/s; TSM time per session p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; whole session p50 {:.1} ms, p99 {:.1} ms; {:.1} relay round trips per session; {} failed; load generator CPU {:.2} ms per session",
            ok.len(),
            args.rate
                .map(|r| format!(", {r} started per second"))
                .unwrap_or_default(),
            wall.as_secs_f64(),
            per_s,
            ms(percentile(&ok, 0.5)),
            ms(percentile(&ok, 0.99)),
            ms(percentile(&ok, 1.0)),
            ms(percentile(&whole, 0.5)),
            ms(percentile(&whole, 0.99)),
            round_trips,
            failed.len(),
            generator_ms
        );
    }
    if let Some(f) = failed.first() {
        return Err(format!("{} sessions failed, e.g. {f}", failed.len()).into());
    }
    Ok(())
}
