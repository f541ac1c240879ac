//! Command-line interface: argument parsing and output. Keys and PINs never come from argv.

mod bench;
mod broker;
mod common;
mod exit;
mod gp;
mod jpki;
mod perso;
mod sim_cap;
mod target;
mod tsm;

use applet_sim::{SimCard, SimConfig};
use card_wire::apdu::Command;
use clap::{Parser, Subcommand};
use kagi::channel::ApduChannel;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
pub use target::Target;

/// Version of the `--json` output format. Additions keep it; changes bump it.
pub const SCHEMA_VERSION: u32 = 1;

/// Any error, shown as `error: …`.
pub type Failure = Box<dyn std::error::Error>;

#[derive(Parser)]
#[command(
    name = "kagi",
    version,
    about = "kagi (鍵): smart-card and SIM toolchain — APDUs, GlobalPlatform SCP03, simulator",
    long_about = "kagi talks to smart cards and SIMs through PC/SC readers or its in-process \
simulator: ISO 7816-4 APDUs with chaining and GET RESPONSE, GlobalPlatform card management over \
SCP03 secure channels, and a card simulator that real PC/SC programs reach through vpcd.\n\n\
Keys are never taken from the command line: use --key-file or the KAGI_KEY* environment \
variables. --trace prints the APDU dialogue on stderr with PINs and keys redacted. --json prints \
machine-readable output carrying a schema_version.",
    after_long_help = exit::TABLE,
    after_help = "Examples:\n  kagi gp list --sim --trace                      SCP03 session to a simulated card, list its content\n  kagi gp install --sim --sim-image card.img ...   change a simulated card kept in an image file\n  kagi sim serve --cards 2                        serve simulated cards to pcscd through vpcd\n  kagi readers                                    list PC/SC readers\n  kagi gp list --reader 0 --key-file keys.txt     a real card\n  kagi bench                                      measure SCP03 and simulator throughput"
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
    Gp(gp::GpCmd),
    /// The JPKI-style applet: certificates, PINs, signatures.
    #[command(subcommand)]
    Jpki(jpki::JpkiCmd),
    /// PIN-less eligibility check: reads the authentication certificate and judges it.
    #[command(subcommand)]
    Eligibility(EligibilityCmd),
    /// Batch personalisation (profiles, records, journal, parallel stations).
    #[command(subcommand)]
    Perso(PersoCmd),
    /// The test certification authority (synthetic certificates only).
    #[command(subcommand)]
    Ca(jpki::CaCmd),
    /// The card simulator.
    #[command(subcommand)]
    Sim(SimCmd),
    /// The trusted service manager (the provider's SP-TSM; alias `sp-tsm`): serve it, and the
    /// provider's and operator's requests.
    #[command(subcommand, visible_alias = "sp-tsm")]
    Tsm(tsm::TsmCmd),
    /// The mobile operator's own TSM (MNO-TSM): the SIMs' issuer-domain keys and registry; it
    /// prepares SIMs for providers at their SP-TSM's signed request.
    #[command(subcommand, name = "mno-tsm")]
    MnoTsm(tsm::mno_tsm::MnoTsmCmd),
    /// The JPKI issuer (the JPKI system as its own service): verifies applications signed with
    /// the My Number card, issues the phones' certificates, links and revokes them, and seals
    /// credentials to the SIM for the SP-TSM to relay.
    #[command(subcommand, name = "jpki-issuer")]
    JpkiIssuer(tsm::jpki_issuer::JpkiIssuerCmd),
    /// The phone app's part: connect a card to the TSM and relay its orders (holds no
    /// secrets).
    Relay(tsm::RelayArgs),
    /// The credential broker: one card login, many services (serve it, administer it, and
    /// the holder's login).
    #[command(subcommand)]
    Broker(broker::BrokerCmd),
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
enum PersoCmd {
    /// Personalise a batch: every record on its own card, journalled step by step.
    Run(perso::BatchArgs),
    /// Continue a batch after a crash or kill: nothing done twice, nothing skipped; cards
    /// caught mid-way are completed or reported for rework.
    Resume(perso::BatchArgs),
    /// Decrypt a batch's PIN mailer file with the mailer's private key (mailer house only).
    OpenMailer(perso::MailerArgs),
    /// Put a production master key set into a PKCS#11 HSM (non-extractable AES keys).
    HsmImport(perso::HsmImportArgs),
}

#[derive(Subcommand)]
enum EligibilityCmd {
    /// Read and judge a card: eligible, expired, revoked, unknown-issuer or
    /// not-a-jpki-card. Never sends a PIN.
    Read(jpki::EligibilityArgs),
}

#[derive(Subcommand)]
enum SimCmd {
    /// Serve simulated cards to pcscd through vsmartcard's vpcd driver until stopped (SIGINT
    /// or SIGTERM): card i connects to PORT+i (vpcd's slots) and reconnects when pcscd
    /// restarts.
    Serve(ServeArgs),
    /// Run a CAP applet on a fresh simulated card: load and install it through the card
    /// manager, SELECT it and send each APDU; with --trace, a failing command shows the
    /// applet's uncaught exception (class, method, bytecode offset) or the unsupported API
    /// method behind its status word.
    RunCap(sim_cap::RunCapArgs),
    /// Make a simulated SIM as a bureau leaves it for a TSM: a UICC whose provider domain has
    /// keys diversified from the provider's master key set, and whose key agreement key
    /// (generated on the card) is certified by the card manufacturer's CA; prints its ICCID
    /// and card image number and writes its certificate (to register it with the TSM).
    Provision {
        /// The card image to write.
        #[arg(long = "sim-image", alias = "image")]
        image: PathBuf,
        /// Makes the card's identity (ICCID, KDD, CIN).
        #[arg(long)]
        serial: String,
        /// The provider's master keys (key file).
        #[arg(long, required_unless_present = "no_domain")]
        provider_keys: Option<PathBuf>,
        /// The provider domain's AID.
        #[arg(long, default_value = "A00000015153505001")]
        sd: String,
        /// No provider domain: the operator creates it over the air (`kagi tsm mno
        /// create-sd`).
        #[arg(long, conflicts_with = "provider_keys")]
        no_domain: bool,
        /// Begin the ICCID with this issuer prefix (89, country code, issuer: ITU-T E.118),
        /// e.g. 898120 for another operator's SIM; default 898100.
        #[arg(long, requires = "no_domain")]
        iccid_prefix: Option<String>,
        /// The card manufacturer's test CA directory (`manufacturer-ca.*`, made on first
        /// use); the default is the image's directory.
        #[arg(long)]
        manufacturer_ca: Option<PathBuf>,
    },
}

/// `kagi sim serve` options.
#[derive(clap::Args)]
struct ServeArgs {
    /// Where vpcd listens (its first slot).
    #[arg(long, default_value = "127.0.0.1:35963")]
    vpcd: String,
    /// Number of cards (one per vpcd slot).
    #[arg(long, default_value_t = 1)]
    cards: u16,
    /// Card images: loaded when present, saved on exit. With several cards, card i uses
    /// FILE-i.
    #[arg(long = "sim-image", alias = "image")]
    image: Option<PathBuf>,
    /// Card set-up for new cards: gp-test (default), gp-blank, gp-s16, uicc (a SIM with
    /// EF.ICCID and a UICC ATR), jpki-demo (a JPKI
    /// applet personalised through GP with a fresh synthetic identity; auth PIN 1234,
    /// signature password ABC123).
    #[arg(long = "sim-preset", alias = "preset", default_value = "gp-test")]
    preset: String,
    /// jpki-demo: issue the cards' certificates with the test CAs in this directory.
    #[arg(long = "sim-ca-dir", aliases = ["pki-dir", "sim-pki-dir"])]
    pki_dir: Option<PathBuf>,
    /// Run SCP03 in S16 mode (i = 71; new cards only).
    #[arg(long = "sim-s16", alias = "s16")]
    s16: bool,
    /// Deterministic randomness from this seed (card i uses seed + i).
    #[arg(long = "sim-seed", alias = "seed")]
    seed: Option<u64>,
    /// Read commands from standard input: `remove I` and `insert I` take card I out of
    /// its reader and put it back, `next I` swaps in the next card (see --hopper); `quit`
    /// stops.
    #[arg(long)]
    control: bool,
    /// Feed every slot from a hopper of factory-fresh cards of the preset, each with its own
    /// serial (KDD and CIN): `next I` replaces card I, as at a personalisation station.
    #[arg(long)]
    hopper: bool,
    /// Load and install this CAP file's applet into each new card at start-up, through the
    /// card manager as `kagi gp install FILE.cap --sim` does (repeatable; cards read from an
    /// existing image are served as they are).
    #[arg(long = "install", value_name = "FILE.cap")]
    install: Vec<PathBuf>,
    /// Tearing tests: cut each card's power at its Nth persistent write after start-up (the
    /// card answers nothing but 6F00 until pcscd powers it up again; the image saved on exit
    /// holds what was committed). The number of writes is logged on exit.
    #[arg(long = "sim-tear-at", value_name = "N")]
    tear_at: Option<u64>,
    /// Answer each command after the time the chip would take (`modern`, `sim`; see
    /// `--sim-timing` of the card commands).
    #[arg(long = "sim-timing", value_name = "PROFILE", value_parser = target::timing_profile)]
    timing: Option<&'static applet_sim::timing::TimingProfile>,
}

/// A JPKI demo card (personalised through the GP path); prints the demo PINs. With
/// `pki_dir`, the test CAs kept there issue its certificates (see `kagi ca init`).
pub fn jpki_demo_card(seed: Option<u64>, pki_dir: Option<&Path>) -> Result<SimCard, Failure> {
    let identity = match pki_dir {
        Some(dir) => {
            let (auth, sign) = jpki::cas(dir)?;
            let now = std::time::SystemTime::now();
            kagi_fixtures::jpki::DemoIdentity::generate_with(
                auth,
                sign,
                now,
                now + Duration::from_secs(365 * 86400),
            )?
        }
        None => kagi_fixtures::jpki::DemoIdentity::generate()?,
    };
    let mut card = kagi_fixtures::jpki::demo_card_for(seed, &identity)?;
    eprintln!(
        "jpki-demo card: auth certificate serial {:08X}; demo PINs: auth PIN {}, signature password {} (test card only)",
        identity.auth_serial,
        kagi_fixtures::jpki::DEMO_AUTH_PIN,
        kagi_fixtures::jpki::DEMO_SIGN_PIN
    );
    card.power_off();
    card.power_on();
    Ok(card)
}

/// Prints a JSON document with the schema version.
pub fn print_json(value: serde_json::Value) {
    let mut v = value;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("schema_version".into(), json!(SCHEMA_VERSION));
    }
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

/// Hex text to bytes, with a message naming what was wrong.
pub fn parse_hex(what: &str, s: &str) -> Result<Vec<u8>, String> {
    let clean: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    hex::decode(&clean).map_err(|e| format!("{what} '{s}' is not hex: {e}"))
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

fn image_path(base: &Path, i: u16, cards: u16) -> PathBuf {
    if cards == 1 {
        return base.to_path_buf();
    }
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match base.extension() {
        Some(ext) => format!("{stem}-{i}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{i}"),
    };
    base.with_file_name(name)
}

fn cmd_sim_serve(args: &ServeArgs) -> Result<(), Failure> {
    let ServeArgs {
        vpcd,
        cards,
        image,
        preset,
        pki_dir,
        s16,
        seed,
        control,
        hopper,
        install,
        tear_at,
        timing,
    } = args;
    let (cards, s16, seed, control, hopper) = (*cards, *s16, *seed, *control, *hopper);
    use applet_sim::vpcd::SlotControl;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (host, port) = vpcd.rsplit_once(':').ok_or("--vpcd takes HOST:PORT")?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("bad port in --vpcd {vpcd}"))?;
    if cards == 0 {
        return Err("--cards must be at least 1".into());
    }
    if hopper && preset == "jpki-demo" {
        return Err("--hopper feeds factory-fresh cards: use a GP preset".into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))?;
    }
    let controls: Vec<SlotControl> = (0..cards)
        .map(|_| SlotControl::with_stop(stop.clone()))
        .collect();
    if control {
        let controls = controls.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                let words: Vec<&str> = line.split_whitespace().collect();
                let slot = |w: Option<&&str>| {
                    w.and_then(|n| n.parse::<usize>().ok())
                        .and_then(|n| controls.get(n))
                };
                match (words.first().copied(), slot(words.get(1))) {
                    (Some("remove"), Some(c)) => c.remove(),
                    (Some("insert"), Some(c)) => c.insert(),
                    (Some("next"), Some(c)) => c.next_card(),
                    (Some("quit"), _) => break,
                    _ => eprintln!(
                        "control: '{line}' not understood (remove I, insert I, next I, quit)"
                    ),
                }
            }
            if let Some(c) = controls.first() {
                c.stop();
            }
        });
    }
    let mut threads = Vec::new();
    for i in 0..cards {
        let path = image.as_ref().map(|b| image_path(b, i, cards));
        let card_seed = seed.map(|s| s + u64::from(i));
        let preset_name = preset.clone();
        let factory = move |serial: Option<String>| -> Result<SimCard, Failure> {
            let mut config = SimConfig::preset(&preset_name)?;
            if s16 {
                config = config.s16();
            }
            if let Some(s) = card_seed {
                config = config.seeded(s);
            }
            if let Some(serial) = serial {
                config = config.with_serial(serial.as_bytes());
            }
            Ok(SimCard::new(config))
        };
        let mut card = match &path {
            Some(p) if p.exists() => SimCard::from_image(p, card_seed)?,
            _ if preset == "jpki-demo" => jpki_demo_card(card_seed, pki_dir.as_deref())?,
            _ if hopper => factory(Some(format!("{}/{i}/0", seed.unwrap_or(0))))?,
            _ => sim_cap::install_caps(factory(None)?, install, card_seed)?,
        };
        if let Some(n) = tear_at {
            card.tear_at(*n);
        }
        if let Some(profile) = *timing {
            card.set_timing(profile.clone(), applet_sim::timing::Pace::Sleep);
        }
        let mut fed = 0u64;
        let timed = *timing;
        let mut next_card = move || {
            fed += 1;
            let mut card = hopper
                .then(|| factory(Some(format!("{}/{i}/{fed}", seed.unwrap_or(0)))).ok())
                .flatten()?;
            if let Some(profile) = timed {
                card.set_timing(profile.clone(), applet_sim::timing::Pace::Sleep);
            }
            Some(card)
        };
        let addr = format!(
            "{host}:{}",
            port.checked_add(i).ok_or("port range overflows")?
        );
        let slot = controls[i as usize].clone();
        eprintln!("serving simulated card {i} to vpcd at {addr}");
        threads.push(std::thread::spawn(move || {
            let r = applet_sim::vpcd::serve_hopper(
                &mut card,
                &addr,
                &slot,
                Duration::from_secs(2),
                &mut next_card,
            );
            (card, path, r)
        }));
    }
    let mut first_error: Option<Failure> = None;
    for t in threads {
        let (card, path, r) = t.join().map_err(|_| "a card thread panicked")?;
        if let Err(e) = r {
            first_error.get_or_insert(Box::new(e));
        }
        if let Some(p) = path {
            card.save_image(&p)?;
            eprintln!(
                "saved card image {} ({} persistent writes since start-up{})",
                p.display(),
                card.store().writes(),
                if card.store().is_torn() {
                    ", power lost"
                } else {
                    ""
                }
            );
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn cmd_apdu(cli: &Cli, target: &Target, apdus: &[String]) -> Result<(), Failure> {
    let mut ch = target.open(cli.trace)?;
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
    target.finish(&ch)?;
    if cli.json {
        print_json(json!({ "responses": out }));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn cmd_sim_provision(
    json_out: bool,
    image: &Path,
    serial: &str,
    provider_keys: Option<&Path>,
    (sd, iccid_prefix): (&str, Option<&str>),
    no_domain: bool,
    manufacturer_ca: Option<&Path>,
) -> Result<(), Failure> {
    let sd = parse_hex("--sd", sd)?;
    let image_dir = image
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(image_dir)?;
    let maker_dir = manufacturer_ca.unwrap_or(image_dir);
    let maker = test_pki::store::load_or_create(maker_dir, "manufacturer-ca", "card manufacturer")?;
    let sim = match provider_keys {
        Some(file) if !no_domain => {
            let master = kagi::keys::read_key_file(file, 0x31)?;
            kagi_fixtures::sim::provision_with(
                serial.as_bytes(),
                &sd,
                &kagi_fixtures::sim::provider_keys(master, 0x31),
                &maker,
            )?
        }
        _ => kagi_fixtures::sim::blank_with_prefix(serial.as_bytes(), iccid_prefix, &maker)?,
    };
    sim.card.save_image(image)?;
    let cert_path = image.with_extension("card.crt.der");
    std::fs::write(&cert_path, &sim.card_certificate)?;
    let maker_cert = maker_dir.join("manufacturer-ca.crt.pem");
    if json_out {
        print_json(
            json!({ "image": image.display().to_string(), "iccid": sim.iccid, "cin": sim.cin, "security_domain": hex::encode_upper(&sd),
                "card_certificate": cert_path.display().to_string(), "manufacturer_ca": maker_cert.display().to_string() }),
        );
    } else {
        let domain = if no_domain {
            "no provider domain yet".to_string()
        } else {
            format!("provider domain {}", hex::encode_upper(&sd))
        };
        println!(
            "SIM {} (card image number {}) with {domain} written to {}; its key agreement certificate is {} (issued by {})",
            sim.iccid,
            sim.cin,
            image.display(),
            cert_path.display(),
            maker_cert.display()
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
            let ch = Target::reader(r).open(false)?;
            crate::bench::transport_round_trips(ch.into_transport(), count)?
        }
        None => crate::bench::run_all(Duration::from_secs_f64(seconds))?,
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

/// clap's own explanation without its "error: " prefix, usage lines and help hint, on one
/// line: what is wrong, naming the argument.
fn usage_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut parts = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.strip_prefix("error: ").unwrap_or(line).to_string());
        }
    }
    if parts.is_empty() {
        e.kind().to_string()
    } else {
        parts.join(" ")
    }
}

/// `--trace` or `--json` given to a command where it would do nothing (the flags are global):
/// a usage error that says so, instead of silently ignoring what the script asked for.
fn flag_without_effect(cli: &Cli) -> Option<String> {
    let (name, traces, documents) = match &cli.command {
        Cmd::Apdu { .. } => ("apdu", true, true),
        Cmd::Gp(_) => ("gp", true, true),
        Cmd::Jpki(_) => ("jpki", true, true),
        Cmd::Eligibility(_) => ("eligibility", true, true),
        Cmd::Broker(broker::BrokerCmd::Login(_)) => ("broker login", true, true),
        Cmd::Broker(broker::BrokerCmd::Serve(_)) => ("broker serve", false, false),
        Cmd::Tsm(tsm::TsmCmd::Serve(_)) => ("tsm serve", false, false),
        Cmd::MnoTsm(tsm::mno_tsm::MnoTsmCmd::Serve(_)) => ("mno-tsm serve", false, false),
        Cmd::MnoTsm(_) => ("mno-tsm", false, true),
        Cmd::JpkiIssuer(tsm::jpki_issuer::JpkiIssuerCmd::Serve(_)) => {
            ("jpki-issuer serve", false, false)
        }
        Cmd::JpkiIssuer(_) => ("jpki-issuer", false, true),
        Cmd::Sim(SimCmd::Serve(_)) => ("sim serve", false, false),
        Cmd::Sim(SimCmd::RunCap(_)) => ("sim run-cap", true, true),
        Cmd::Readers { .. } => ("readers", false, true),
        Cmd::Perso(_) => ("perso", false, true),
        Cmd::Ca(_) => ("ca", false, true),
        Cmd::Sim(_) => ("sim provision", false, true),
        Cmd::Tsm(_) => ("tsm", false, true),
        Cmd::Relay(_) => ("relay", true, true),
        Cmd::Broker(_) => ("broker", false, true),
        Cmd::Bench { .. } => ("bench", false, true),
    };
    if cli.trace && !traces {
        let why = if name == "perso" {
            "a batch keeps each card's APDU log (secrets redacted) in OUT/logs/"
        } else {
            "it prints no APDU dialogue"
        };
        return Some(format!("--trace does nothing for kagi {name}: {why}"));
    }
    if cli.json && !documents {
        return Some(format!(
            "--json does nothing for kagi {name}: a server writes logs (KAGI_LOG), not a document"
        ));
    }
    None
}

/// Runs the CLI.
fn main() -> ExitCode {
    // Writing into a closed pipe (`kagi ... | head -1`) ends the process quietly, as for any
    // Unix tool, instead of a panic in println!.
    sigpipe::reset();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) && e.exit_code() == 0
            {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if std::env::args().any(|a| a == "--json") {
                print_json(json!({ "error": {
                    "code": "usage",
                    "message": usage_message(&e),
                    "kind": e.kind().to_string(),
                } }));
            }
            let _ = e.print();
            return exit::Exit::Usage.into();
        }
    };
    if let Some(message) = flag_without_effect(&cli) {
        if cli.json {
            print_json(json!({ "error": {
                "code": "usage",
                "message": message,
                "kind": "ArgumentConflict",
            } }));
        }
        eprintln!("error: {message}");
        return exit::Exit::Usage.into();
    }
    let result = match &cli.command {
        Cmd::Readers { wait, timeout_ms } => cmd_readers(cli.json, wait, *timeout_ms),
        Cmd::Apdu { target, apdus } => cmd_apdu(&cli, target, apdus),
        Cmd::Gp(g) => gp::run(g, cli.trace, cli.json),
        Cmd::Jpki(j) => jpki::run(j, cli.trace, cli.json),
        Cmd::Eligibility(EligibilityCmd::Read(a)) => jpki::eligibility_read(a, cli.trace, cli.json),
        Cmd::Ca(c) => jpki::ca(c, cli.json),
        Cmd::Perso(PersoCmd::Run(a)) => perso::run(a, false, cli.json),
        Cmd::Perso(PersoCmd::Resume(a)) => perso::run(a, true, cli.json),
        Cmd::Perso(PersoCmd::OpenMailer(a)) => perso::open_mailer(a, cli.json),
        Cmd::Perso(PersoCmd::HsmImport(a)) => perso::hsm_import(a, cli.json),
        Cmd::Sim(SimCmd::Serve(args)) => cmd_sim_serve(args),
        Cmd::Sim(SimCmd::RunCap(args)) => sim_cap::run_cap(args, cli.trace, cli.json),
        Cmd::Sim(SimCmd::Provision {
            image,
            serial,
            provider_keys,
            sd,
            no_domain,
            iccid_prefix,
            manufacturer_ca,
        }) => cmd_sim_provision(
            cli.json,
            image,
            serial,
            provider_keys.as_deref(),
            (sd, iccid_prefix.as_deref()),
            *no_domain,
            manufacturer_ca.as_deref(),
        ),
        Cmd::Tsm(t) => tsm::run(t, cli.json),
        Cmd::MnoTsm(t) => tsm::mno_tsm::run(t, cli.json),
        Cmd::JpkiIssuer(t) => tsm::jpki_issuer::run(t, cli.json),
        Cmd::Relay(r) => tsm::relay(r, cli.trace, cli.json),
        Cmd::Broker(b) => broker::run(b, cli.trace, cli.json),
        Cmd::Bench {
            seconds,
            reader,
            count,
        } => cmd_bench(cli.json, *seconds, reader, *count),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(f) = e.downcast_ref::<exit::Finished>() {
                if let Some(note) = &f.note {
                    eprintln!("{note}");
                }
                return f.exit.into();
            }
            if cli.json {
                print_json(exit::error_json(e.as_ref()));
            }
            eprintln!("error: {e}");
            exit::Exit::Failure.into()
        }
    }
}
