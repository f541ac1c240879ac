//! Measurements behind `kagi bench` and `scripts/bench.sh`: throughputs and ratios on this
//! machine, never asserted in tests.

use card_wire::apdu::{Command, Response};
use card_wire::scp03::handshake::{CardHandshake, CardKeyContext, HostHandshake, HostOptions};
use card_wire::scp03::{IParam, Mode, SecureSession, SecurityLevel, SessionKeys, StaticKeys};
use kagi::channel::{ApduChannel, CardChannel};
use kagi::secure::SecureChannel;
use serde::Serialize;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// Operations per second.
    pub per_second: f64,
    /// Microseconds per operation.
    pub micros: f64,
    /// The goal, as text.
    pub goal: String,
    /// Whether the goal is met.
    pub meets_goal: bool,
}

/// Runs `op` repeatedly for about `budget` and returns operations per second.
pub fn rate(budget: Duration, mut op: impl FnMut()) -> f64 {
    // Warm up, then time batches until the budget is spent.
    for _ in 0..64 {
        op();
    }
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < budget {
        for _ in 0..256 {
            op();
        }
        n += 256;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn figure(name: &str, per_second: f64, goal: &str, meets: bool) -> Figure {
    Figure {
        name: name.into(),
        per_second,
        micros: 1e6 / per_second,
        goal: goal.into(),
        meets_goal: meets,
    }
}

fn keys() -> StaticKeys {
    StaticKeys::default_test_keys(0x30)
}

fn session_pair(level: SecurityLevel) -> (SecureSession, SecureSession) {
    let sk = SessionKeys::derive(&keys(), &[7u8; 16]);
    (
        SecureSession::from_keys(&sk, level, Mode::S8, [0; 16], 0),
        SecureSession::from_keys(&sk, level, Mode::S8, [0; 16], 0),
    )
}

/// Host-side SCP03 wrap of a command with `plain_len` data bytes plus unwrap of a response of
/// the same length, at `level`, one core. Card-side responses are computed beforehand.
pub fn scp03_host_wrap_unwrap(budget: Duration, level: SecurityLevel, plain_len: usize) -> f64 {
    let cmd = Command::new(0x80, 0xE2, 0x00, 0x00)
        .with_data(vec![0x5A; plain_len])
        .and_then(|c| c.with_le(256))
        .unwrap_or_else(|_| Command::new(0x80, 0xE2, 0, 0));
    let resp = Response::success(vec![0xA5; plain_len]);
    // Estimate how many iterations the budget needs from a short pilot, then precompute the
    // card's wrapped responses in order.
    let pilot = {
        let (mut h, _) = session_pair(level);
        rate(Duration::from_millis(50), || {
            black_box(h.wrap_command(&cmd).ok());
        })
    };
    let n = ((pilot * budget.as_secs_f64()) as usize).clamp(1_000, 2_000_000);
    let (mut pre_host, mut card) = session_pair(level);
    let mut responses = Vec::with_capacity(n);
    for _ in 0..n {
        let w = pre_host.wrap_command(&cmd).ok();
        let r = w
            .and_then(|w| card.unwrap_command(&w).ok())
            .and_then(|_| card.wrap_response(&resp).ok())
            .unwrap_or_else(|| resp.clone());
        responses.push(r);
    }
    let (mut host, _) = session_pair(level);
    let start = Instant::now();
    let mut ok = 0usize;
    for r in &responses {
        let w = host.wrap_command(&cmd);
        let u = host.unwrap_response(r);
        ok += usize::from(w.is_ok() && u.is_ok());
    }
    let elapsed = start.elapsed().as_secs_f64();
    if ok != n {
        eprintln!("bench: {} of {n} unwraps failed", n - ok);
    }
    n as f64 / elapsed
}

/// Host-side session opens per second (INITIALIZE UPDATE + card cryptogram check + host
/// cryptogram + EXTERNAL AUTHENTICATE MAC), crypto only; card answers computed beforehand.
pub fn scp03_host_session_open(budget: Duration, mode: Mode) -> f64 {
    let k = keys();
    let i = IParam(0x70 | u8::from(mode == Mode::S16));
    let aid = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];
    let opts = HostOptions {
        level: SecurityLevel::FULL,
        mode,
        ..HostOptions::default()
    };
    let n = ((20_000.0 * budget.as_secs_f64()) as usize).clamp(500, 200_000);
    let mut prepared = Vec::with_capacity(n);
    for j in 0..n {
        let mut hc = vec![0u8; mode.len()];
        hc[..8].copy_from_slice(&(j as u64).to_be_bytes());
        let Ok(hs) = HostHandshake::new(k.clone(), opts.clone(), hc.clone()) else {
            continue;
        };
        let Ok(iu) = hs.initialize_update() else {
            continue;
        };
        let ctx = CardKeyContext {
            keys: &k,
            kdd: [0; 10],
            i,
            sequence_counter: j as u32 % 0xFF_FFFF + 1,
            sd_aid: Some(&aid),
        };
        if let Ok((resp, _)) = CardHandshake::initialize_update(&iu, &ctx, |len| vec![0; len]) {
            prepared.push((hc, resp));
        }
    }
    let start = Instant::now();
    let mut ok = 0usize;
    for (hc, resp) in &prepared {
        let done = HostHandshake::new(k.clone(), opts.clone(), hc.clone())
            .and_then(|hs| hs.complete(resp, Some(&aid)));
        ok += usize::from(done.is_ok());
    }
    let elapsed = start.elapsed().as_secs_f64();
    if ok != prepared.len() {
        eprintln!(
            "bench: {} of {} session opens failed",
            prepared.len() - ok,
            prepared.len()
        );
    }
    prepared.len() as f64 / elapsed
}

/// Plain and SCP03 GET DATA round trips per second through the in-process simulator (at
/// level 01 and level 33), and plain APDUs per second straight into the simulated card.
pub fn simulator_round_trips(budget: Duration) -> kagi::Result<(f64, f64, f64, f64)> {
    use applet_sim::{SimCard, SimConfig};
    use card_wire::Transport;
    let get_data = Command::new(0x80, 0xCA, 0x00, 0x66).with_le(256)?;
    let mut raw_card = SimCard::powered(SimConfig::default().seeded(1));
    let raw_cmd = get_data.to_bytes();
    let raw = rate(budget, || {
        black_box(raw_card.transmit(&raw_cmd).ok());
    });
    let mut plain_ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(1)));
    kagi::gp::select_domain(&mut plain_ch, None)?;
    let plain = rate(budget, || {
        black_box(plain_ch.transmit(&get_data).ok());
    });
    let mut secure = [0.0; 2];
    for (slot, level) in [SecurityLevel::CMAC, SecurityLevel::FULL]
        .into_iter()
        .enumerate()
    {
        let mut sec_card = CardChannel::new(SimCard::powered(SimConfig::default().seeded(2)));
        let sd = kagi::gp::select_domain(&mut sec_card, None)?;
        let opts = HostOptions {
            level,
            ..HostOptions::default()
        };
        let mut sc = SecureChannel::open(&mut sec_card, keys(), opts, Some(&sd.aid))?;
        secure[slot] = rate(budget, || {
            black_box(sc.transmit(&get_data).ok());
        });
    }
    Ok((raw, plain, secure[0], secure[1]))
}

/// Full GET STATUS listings per second of a simulated card holding 100 applications (paged
/// with `6310`, level 33), and how many entries each listing returned.
pub fn get_status_100(budget: Duration) -> kagi::Result<(f64, usize)> {
    use applet_sim::echo::{ECHO_AID, ECHO_PACKAGE};
    use applet_sim::{SimCard, SimConfig};
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(3)));
    let sd = kagi::gp::select_domain(&mut ch, None)?;
    let opts = HostOptions {
        level: SecurityLevel::FULL,
        ..HostOptions::default()
    };
    let mut sc = SecureChannel::open(&mut ch, keys(), opts, Some(&sd.aid))?;
    for i in 0..99u8 {
        let mut instance = ECHO_AID.to_vec();
        instance.push(i);
        let spec = kagi::gp::manage::InstallSpec {
            package: ECHO_PACKAGE.to_vec(),
            module: ECHO_AID.to_vec(),
            instance,
            selectable: true,
            ..Default::default()
        };
        kagi::gp::manage::install(&mut sc, &spec)?;
    }
    let mut entries = 0;
    let per_second = rate(budget / 4, || {
        entries = kagi::gp::get_status(&mut sc, kagi::gp::StatusScope::Applications)
            .map(|e| e.len())
            .unwrap_or(0);
    });
    Ok((per_second, entries))
}

/// Runs every benchmark with `budget` per figure.
pub fn run_all(budget: Duration) -> kagi::Result<Vec<Figure>> {
    let mut out = Vec::new();
    let wrap = scp03_host_wrap_unwrap(budget, SecurityLevel::FULL, 239);
    out.push(figure(
        "SCP03 host wrap+unwrap, level 33, 239-byte data (253-byte wrapped command), 1 core",
        wrap,
        ">= 100000/s",
        wrap >= 100_000.0,
    ));
    let open = scp03_host_session_open(budget, Mode::S8);
    out.push(figure(
        "SCP03 session open, host crypto only (S8, AES-128)",
        open,
        ">= 50000/s",
        open >= 50_000.0,
    ));
    {
        let (raw, plain, mac_only, full) = simulator_round_trips(budget)?;
        out.push(figure(
            "plain APDU into the in-process simulator (GET DATA 66)",
            raw,
            ">= 100000/s",
            raw >= 100_000.0,
        ));
        out.push(figure(
            "plain GET DATA round trip through the host pipeline + simulator",
            plain,
            "-",
            true,
        ));
        let (listings, entries) = get_status_100(budget)?;
        out.push(figure(
            &format!("GET STATUS of {entries} applications (paged, level 33), full listings"),
            listings,
            "-",
            entries == 100,
        ));
        // Both ends run SCP03 in process: the host wraps and unwraps, the simulated card
        // unwraps and wraps.
        for (level, rate) in [("01 (C-MAC)", mac_only), ("33 (full)", full)] {
            let ratio = plain / rate;
            out.push(figure(
                &format!(
                    "SCP03 level {level} GET DATA round trip, host + simulated card crypto ({ratio:.2}x plain)"
                ),
                rate,
                "<= 2x plain",
                ratio <= 2.0,
            ));
        }
    }
    Ok(out)
}

/// Latency percentiles of `n` round trips of `op`, in microseconds: (median, p99).
pub fn latency(n: usize, mut op: impl FnMut()) -> (f64, f64) {
    let mut samples: Vec<f64> = (0..n.max(1))
        .map(|_| {
            let t = Instant::now();
            op();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Round trips of a plain GET DATA through a transport (e.g. pcscd + vpcd): median and p99
/// latency as figures.
pub fn transport_round_trips<T: card_wire::Transport>(
    transport: T,
    n: usize,
) -> kagi::Result<Vec<Figure>> {
    let mut ch = CardChannel::new(transport);
    kagi::gp::select_domain(&mut ch, None)?;
    let get_data = Command::new(0x80, 0xCA, 0x00, 0x66).with_le(256)?;
    let (median, p99) = latency(n, || {
        black_box(ch.transmit(&get_data).ok());
    });
    let desc = ch.transport().describe();
    let mut out = vec![
        figure(
            &format!("APDU round trip via {desc}, median of {n}"),
            1e6 / median,
            "<= 1 ms median",
            median <= 1000.0,
        ),
        figure(
            &format!("APDU round trip via {desc}, p99 of {n}"),
            1e6 / p99,
            "-",
            true,
        ),
    ];
    // A PIN-less eligibility read, when the card has a JPKI AP.
    let trust = kagi::eligibility::Trust::default();
    let now = std::time::SystemTime::now();
    if let Ok(r) = kagi::eligibility::read(&mut ch, &trust, now)
        && r.verdict != kagi::eligibility::Verdict::NotAJpkiCard
    {
        let reads = (n / 10).max(10);
        let (median, _) = latency(reads, || {
            black_box(kagi::eligibility::read(&mut ch, &trust, now).ok());
        });
        out.push(figure(
            &format!(
                "eligibility read via {desc} ({} commands, no PIN), median of {reads}",
                r.commands
            ),
            1e6 / median,
            "-",
            true,
        ));
    }
    Ok(out)
}
