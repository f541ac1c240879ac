//! Command-line interface: argument parsing and output. Keys and PINs never come from argv.

use applet_sim::{SimCard, SimConfig};
use card_wire::Transport;
use card_wire::apdu::Command;
use card_wire::scp03::{Diversification, HostOptions, Mode, SecurityLevel};
use clap::{Args, Parser, Subcommand};
use kagi::channel::{ApduChannel, CardChannel};
use kagi::gp::{self, StatusScope};
use kagi::keys::{self, KeySource};
use kagi::secure::SecureChannel;
use kagi::trace::StderrTrace;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Version of the `--json` output format. Additions keep it; changes bump it.
const SCHEMA_VERSION: u32 = 1;

#[derive(Parser)]
#[command(
    name = "kagi",
    version,
    about = "kagi (鍵): smart-card and SIM toolchain — APDUs, GlobalPlatform SCP03, simulator",
    long_about = "kagi talks to smart cards and SIMs through PC/SC readers or its in-process \
simulator: ISO 7816-4 APDUs with chaining and GET RESPONSE, GlobalPlatform card management over \
SCP03 secure channels.\n\nKeys are never taken from the command line: use --key-file or the \
KAGI_KEY* environment variables. --trace prints the APDU dialogue on stderr with PINs and keys \
redacted.",
    after_help = "Examples:\n  kagi gp list --sim --trace          SCP03 session to a simulated card, list its content\n  kagi readers                        list PC/SC readers\n  kagi gp info --reader 0             what the card's security domain reports\n  kagi bench                          measure SCP03 and simulator throughput"
)]
struct Cli {
    /// Print the APDU dialogue on stderr (secrets redacted).
    #[arg(long, global = true)]
    trace: bool,
    /// Machine-readable output (JSON with a schema_version).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List PC/SC readers and whether each holds a card.
    Readers {
        /// Wait until this reader (index or name substring) holds a card, then list.
        #[arg(long)]
        wait: Option<String>,
        /// How long --wait may take, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// The card simulator.
    #[command(subcommand)]
    Sim(SimCmd),
    /// Send raw APDUs (hex) and print the responses (61xx/6Cxx handled).
    Apdu {
        #[command(flatten)]
        target: Target,
        /// Command APDUs in hex, sent in order.
        #[arg(required = true)]
        apdus: Vec<String>,
    },
    /// GlobalPlatform card management.
    #[command(subcommand)]
    Gp(GpCmd),
    /// Measure SCP03 crypto and simulator throughput on this machine.
    Bench {
        /// Seconds per figure.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Measure APDU round trips through this PC/SC reader instead (index or name).
        #[arg(long, short = 'r')]
        reader: Option<String>,
        /// Round trips to time with --reader.
        #[arg(long, default_value_t = 2000)]
        count: usize,
    },
}

#[derive(Subcommand)]
enum SimCmd {
    /// Serve simulated cards to pcscd through vsmartcard's vpcd driver until stopped: card i
    /// connects to PORT+i (vpcd's slots), reconnecting when pcscd restarts.
    Serve {
        /// Where vpcd listens (its first slot).
        #[arg(long, default_value = "127.0.0.1:35963")]
        vpcd: String,
        /// Number of cards (one per vpcd slot).
        #[arg(long, default_value_t = 1)]
        cards: u16,
        /// Run SCP03 in S16 mode (i = 71).
        #[arg(long)]
        s16: bool,
        /// Deterministic randomness from this seed (card i uses seed + i).
        #[arg(long)]
        seed: Option<u64>,
    },
}

#[derive(Subcommand)]
enum GpCmd {
    /// What the security domain reports without authentication (FCI, card data, key
    /// information, sequence counter, CPLC).
    Info {
        #[command(flatten)]
        target: Target,
        /// AID of the security domain (hex); default: the card's default or a well-known ISD.
        #[arg(long)]
        sd: Option<String>,
    },
    /// Open an SCP03 session and list the registry (ISD, applications, load files).
    List {
        #[command(flatten)]
        target: Target,
        /// AID of the security domain (hex).
        #[arg(long)]
        sd: Option<String>,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

#[derive(Args, Clone)]
struct Target {
    /// Use the in-process simulator.
    #[arg(long, conflicts_with = "reader")]
    sim: bool,
    /// Use a PC/SC reader, by index or name substring (see `kagi readers`).
    #[arg(long, short = 'r')]
    reader: Option<String>,
    /// Connect exclusively (no other application may use the card meanwhile).
    #[arg(long)]
    exclusive: bool,
    /// The reader and card carry extended-length APDUs (otherwise long commands are chained).
    #[arg(long)]
    extended: bool,
    /// Simulator: run SCP03 in S16 mode (i = 71).
    #[arg(long, requires = "sim")]
    sim_s16: bool,
    /// Simulator: deterministic randomness from this seed.
    #[arg(long, requires = "sim")]
    sim_seed: Option<u64>,
}

#[derive(Args, Clone)]
struct KeyArgs {
    /// Key file (KEY=hex, or ENC/MAC/DEK=hex, optional KVN=hex). Also: KAGI_KEY* variables.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Key version number to ask for (hex; 00 = the card's choice).
    #[arg(long, value_parser = parse_hex_byte, default_value = "00")]
    kvn: u8,
    /// Key diversification: none or kdf3.
    #[arg(long, default_value = "none")]
    kdf: Diversification,
    /// Security level: mac, enc, rmac, enc+rmac, full, or hex 01/03/11/13/33.
    #[arg(long, default_value = "full")]
    level: SecurityLevel,
    /// Use SCP03 S16 mode (16-byte challenges and MACs).
    #[arg(long)]
    s16: bool,
    /// Allow the published GP test keys 40..4F (development cards only).
    #[arg(long)]
    test_keys: bool,
}

fn parse_hex_byte(s: &str) -> Result<u8, String> {
    u8::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| format!("'{s}' is not a hex byte"))
}

fn parse_hex(what: &str, s: &str) -> Result<Vec<u8>, String> {
    let clean: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    hex::decode(&clean).map_err(|e| format!("{what} '{s}' is not hex: {e}"))
}

type Failure = Box<dyn std::error::Error>;

fn open(target: &Target, trace: bool) -> Result<CardChannel<Box<dyn Transport>>, Failure> {
    let transport: Box<dyn Transport> = if target.sim {
        let mut config = SimConfig::default();
        if target.sim_s16 {
            config = config.s16();
        }
        if let Some(seed) = target.sim_seed {
            config = config.seeded(seed);
        }
        Box::new(SimCard::powered(config))
    } else if let Some(r) = &target.reader {
        open_reader(r, target)?
    } else {
        return Err(
            "choose a card: --sim for the simulator, or --reader NAME|INDEX (see `kagi readers`)"
                .into(),
        );
    };
    let mut ch = CardChannel::new(transport);
    if trace {
        ch.set_trace(Some(Box::new(StderrTrace)));
        let atr = ch
            .transport()
            .atr()
            .map(hex::encode_upper)
            .unwrap_or_default();
        let desc = ch.transport().describe();
        ch.trace_line(&format!("-- {desc}, ATR {atr}"));
    }
    Ok(ch)
}

#[cfg(feature = "pcsc")]
fn open_reader(r: &str, target: &Target) -> Result<Box<dyn Transport>, Failure> {
    use kagi::pcsc_transport::{PcscTransport, Share};
    let share = if target.exclusive {
        Share::Exclusive
    } else {
        Share::Shared
    };
    Ok(Box::new(
        PcscTransport::connect(r, share)?.with_extended_length(target.extended),
    ))
}

#[cfg(not(feature = "pcsc"))]
fn open_reader(_r: &str, _target: &Target) -> Result<Box<dyn Transport>, Failure> {
    Err("this kagi was built without PC/SC support (feature `pcsc`)".into())
}

fn print_json(value: serde_json::Value) {
    let mut v = value;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("schema_version".into(), json!(SCHEMA_VERSION));
    }
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

fn cmd_readers(json_out: bool, wait: &Option<String>, timeout_ms: u64) -> Result<(), Failure> {
    #[cfg(feature = "pcsc")]
    {
        if let Some(sel) = wait {
            kagi::pcsc_transport::PcscTransport::wait_for_card(
                sel,
                kagi::pcsc_transport::Share::Shared,
                Duration::from_millis(timeout_ms),
            )?;
        }
        let readers = kagi::pcsc_transport::list_readers()?;
        if json_out {
            print_json(json!({ "readers": readers }));
        } else if readers.is_empty() {
            println!("no PC/SC readers (is pcscd running and a reader attached?)");
        } else {
            for r in readers {
                let card = r
                    .atr
                    .map(|a| format!("card, ATR {a}"))
                    .unwrap_or_else(|| "no card".into());
                println!("{}: {}  ({card})", r.index, r.name);
            }
        }
        Ok(())
    }
    #[cfg(not(feature = "pcsc"))]
    {
        let _ = (json_out, wait, timeout_ms);
        Err("this kagi was built without PC/SC support (feature `pcsc`)".into())
    }
}

fn cmd_sim_serve(vpcd: &str, cards: u16, s16: bool, seed: Option<u64>) -> Result<(), Failure> {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let (host, port) = vpcd.rsplit_once(':').ok_or("--vpcd takes HOST:PORT")?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("bad port in --vpcd {vpcd}"))?;
    if cards == 0 {
        return Err("--cards must be at least 1".into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 0..cards {
        let mut config = SimConfig::default();
        if s16 {
            config = config.s16();
        }
        if let Some(s) = seed {
            config = config.seeded(s + u64::from(i));
        }
        let addr = format!(
            "{host}:{}",
            port.checked_add(i).ok_or("port range overflows")?
        );
        let stop = stop.clone();
        eprintln!("serving simulated card {i} to vpcd at {addr}");
        threads.push(std::thread::spawn(move || {
            let mut card = SimCard::new(config);
            applet_sim::vpcd::serve(&mut card, &addr, stop, Duration::from_secs(2))
        }));
    }
    for t in threads {
        match t.join() {
            Ok(r) => r?,
            Err(_) => return Err("a card thread panicked".into()),
        }
    }
    Ok(())
}

fn cmd_apdu(cli: &Cli, target: &Target, apdus: &[String]) -> Result<(), Failure> {
    let mut ch = open(target, cli.trace)?;
    let mut out = Vec::new();
    for a in apdus {
        let cmd = Command::parse(&parse_hex("APDU", a)?)?;
        let r = ch.transmit(&cmd)?;
        if cli.json {
            out.push(json!({"command": a, "data": hex::encode_upper(&r.data), "sw": format!("{:04X}", r.sw.0)}));
        } else {
            println!("{} {}", hex::encode_upper(&r.data), r.sw);
        }
    }
    if cli.json {
        print_json(json!({ "responses": out }));
    }
    Ok(())
}

fn sd_aid(sd: &Option<String>) -> Result<Option<Vec<u8>>, Failure> {
    Ok(match sd {
        Some(s) => Some(parse_hex("security domain AID", s)?),
        None => None,
    })
}

fn cmd_gp_info(cli: &Cli, target: &Target, sd: &Option<String>) -> Result<(), Failure> {
    let mut ch = open(target, cli.trace)?;
    let aid = sd_aid(sd)?;
    let domain = gp::select_domain(&mut ch, aid.as_deref())?;
    let card_data = gp::get_data(&mut ch, 0x0066)?;
    let recognition = match &card_data {
        Some(d) => Some(gp::parse_recognition(d)?),
        None => domain.recognition.clone(),
    };
    let key_info = match gp::get_data(&mut ch, 0x00E0)? {
        Some(d) => gp::parse_key_info(&d)?,
        None => Vec::new(),
    };
    let seq =
        gp::get_data(&mut ch, 0x00C1)?.map(|d| hex::encode_upper(d.get(2..).unwrap_or_default()));
    let cplc =
        gp::get_data(&mut ch, 0x9F7F)?.map(|d| hex::encode_upper(d.get(3..).unwrap_or_default()));
    let atr = ch.transport().atr().map(hex::encode_upper);
    if cli.json {
        print_json(json!({
            "atr": atr, "security_domain": domain, "card_recognition": recognition,
            "keys": key_info, "sequence_counter": seq, "cplc": cplc,
        }));
        return Ok(());
    }
    println!("ATR                 {}", atr.unwrap_or_default());
    println!("Security domain     {}", hex::encode_upper(&domain.aid));
    if let Some(r) = &recognition {
        println!(
            "GlobalPlatform      {}",
            r.gp_version.as_deref().unwrap_or("?")
        );
        if let Some((scp, i)) = r.scp {
            println!("Secure channel      SCP{scp:02X} i={i:02X}");
        }
    }
    if let Some(m) = domain.max_command_data {
        println!("Max command data    {m}");
    }
    for k in key_info {
        println!(
            "Key                 KVN {:02X} ID {:02X} type {:02X} length {}",
            k.version, k.id, k.key_type, k.length
        );
    }
    if let Some(s) = seq {
        println!("Sequence counter    {s}");
    }
    if let Some(c) = cplc {
        println!("CPLC                {c}");
    }
    Ok(())
}

fn cmd_gp_list(
    cli: &Cli,
    target: &Target,
    sd: &Option<String>,
    k: &KeyArgs,
) -> Result<(), Failure> {
    let allow_test = k.test_keys || target.sim;
    let (static_keys, source) = keys::resolve(k.key_file.as_deref(), k.kvn, allow_test)?;
    if source == KeySource::TestKeys {
        if target.sim {
            eprintln!("note: using the GP test keys 40..4F of the simulator");
        } else {
            eprintln!(
                "WARNING: using the PUBLISHED GP test keys 40..4F. Only development cards use them;"
            );
            eprintln!(
                "WARNING: a production card will refuse them and may lock after a few failures."
            );
        }
    }
    let mut ch = open(target, cli.trace)?;
    let aid = sd_aid(sd)?;
    let domain = gp::select_domain(&mut ch, aid.as_deref())?;
    let options = HostOptions {
        kvn: k.kvn,
        level: k.level,
        mode: if k.s16 || target.sim_s16 {
            Mode::S16
        } else {
            Mode::S8
        },
        diversification: k.kdf,
        channel: 0,
    };
    let mut sc = SecureChannel::open(&mut ch, static_keys, options, Some(&domain.aid))?;
    let info = sc.info().clone();
    let mut entries = Vec::new();
    for scope in [
        StatusScope::IssuerDomain,
        StatusScope::Applications,
        StatusScope::LoadFiles,
    ] {
        entries.extend(gp::get_status(&mut sc, scope)?);
    }
    let iu = &info.init_update;
    if cli.json {
        print_json(json!({
            "security_domain": hex::encode_upper(&domain.aid),
            "session": {
                "kvn": format!("{:02X}", iu.kvn), "i": format!("{:02X}", iu.i.0),
                "mode": format!("{:?}", iu.i.mode()), "level": format!("{:02X}", info.level.byte()),
                "kdd": hex::encode_upper(iu.kdd),
                "sequence_counter": iu.sequence_counter.map(hex::encode_upper),
                "challenge_verified": info.challenge_verified, "keys": source.to_string(),
            },
            "registry": entries.iter().map(|e| json!({
                "scope": e.scope, "aid": hex::encode_upper(&e.aid),
                "life_cycle": e.life_cycle_name(), "privileges": hex::encode_upper(&e.privileges),
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    println!(
        "SCP03 session to {}: KVN {:02X}, i={:02X} ({:?}), level {}, keys from {}",
        hex::encode_upper(&domain.aid),
        iu.kvn,
        iu.i.0,
        iu.i.mode(),
        info.level,
        source
    );
    println!(
        "KDD {}{}",
        hex::encode_upper(iu.kdd),
        iu.sequence_counter
            .map(|s| format!(", sequence counter {}", hex::encode_upper(s)))
            .unwrap_or_default()
    );
    for e in entries {
        let tag = match e.scope {
            StatusScope::IssuerDomain => "ISD",
            StatusScope::Applications => "APP",
            _ => "PKG",
        };
        println!(
            "{tag}: {:<34} {:<13} privileges {}",
            hex::encode_upper(&e.aid),
            e.life_cycle_name(),
            hex::encode_upper(&e.privileges)
        );
    }
    Ok(())
}

fn cmd_bench(
    json_out: bool,
    seconds: f64,
    reader: &Option<String>,
    count: usize,
) -> Result<(), Failure> {
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err("--seconds must be a positive number".into());
    }
    let figures = match reader {
        Some(r) => {
            let target = Target {
                sim: false,
                reader: Some(r.clone()),
                exclusive: false,
                extended: false,
                sim_s16: false,
                sim_seed: None,
            };
            kagi::bench::transport_round_trips(open_reader(r, &target)?, count)?
        }
        None => kagi::bench::run_all(Duration::from_secs_f64(seconds))?,
    };
    if json_out {
        print_json(json!({ "figures": figures }));
        return Ok(());
    }
    for f in figures {
        println!(
            "{:>12.0}/s {:>9.2} us  [{} {}]  {}",
            f.per_second,
            f.micros,
            f.goal,
            if f.meets_goal { "ok" } else { "MISSED" },
            f.name
        );
    }
    Ok(())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Cmd::Readers { wait, timeout_ms } => cmd_readers(cli.json, wait, *timeout_ms),
        Cmd::Sim(SimCmd::Serve {
            vpcd,
            cards,
            s16,
            seed,
        }) => cmd_sim_serve(vpcd, *cards, *s16, *seed),
        Cmd::Apdu { target, apdus } => cmd_apdu(&cli, target, apdus),
        Cmd::Gp(GpCmd::Info { target, sd }) => cmd_gp_info(&cli, target, sd),
        Cmd::Gp(GpCmd::List { target, sd, keys }) => cmd_gp_list(&cli, target, sd, keys),
        Cmd::Bench {
            seconds,
            reader,
            count,
        } => cmd_bench(cli.json, *seconds, reader, *count),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if cli.json {
                print_json(json!({ "error": e.to_string() }));
            }
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
