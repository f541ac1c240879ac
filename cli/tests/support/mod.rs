//! A private PC/SC stack for one test: its own pcscd (own config directory with a vpcd reader
//! file, own socket), isolated in new mount and network namespaces so that it never touches a
//! pcscd already running on the machine, with `kagi sim serve` inserting simulated cards into
//! vpcd's slots. Dropping it stops exactly the processes it started.
//!
//! Clients reach the daemon through `PCSCLITE_CSOCK_NAME`, which libpcsclite honours.

#![allow(dead_code)]

pub mod cli;
pub mod gate;
pub mod gp_cap;
pub mod schema;
pub mod services;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The script that runs inside the namespaces (shared with scripts/pcsc-sandbox.sh).
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/private-pcscd.sh");

/// A running private pcscd with simulated cards.
pub struct PrivatePcsc {
    pub work: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    stdin: std::cell::RefCell<Option<ChildStdin>>,
}

/// The reader that holds card `i` (see scripts/private-pcscd.sh).
pub fn reader_name(i: usize) -> String {
    match i / 2 {
        0 => format!("Virtual PCD 00 {:02}", i % 2),
        e => format!("Virtual PCD {} 00 {:02}", (b'A' + e as u8) as char, i % 2),
    }
}

pub fn kagi_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kagi")
}

/// A private SoftHSM2 token (label "kagi") in `dir` made by scripts/softhsm-init.sh; returns
/// its configuration file (for `SOFTHSM2_CONF`) and its user-PIN file.
pub fn softhsm(dir: &Path) -> (PathBuf, PathBuf) {
    let init = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/softhsm-init.sh"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}{}",
        String::from_utf8_lossy(&init.stdout),
        String::from_utf8_lossy(&init.stderr)
    );
    (dir.join("softhsm2.conf"), dir.join("user.pin"))
}

/// `kdf3` per-card keys, computed here with the RustCrypto CMAC directly (not through kagi):
/// CMAC(master, 01 ‖ 00 00 00 ‖ purpose ‖ 00 ‖ KDD) for 16-byte masters, purposes 1/2/3 for
/// ENC/MAC/DEK (GlobalPlatformPro's `kdf3` template, see card-wire's test vectors).
pub fn kdf3_by_hand(master_hex: &str, kdd: &[u8]) -> [String; 3] {
    use cmac::{Cmac, Mac};
    let master = hex::decode(master_hex.trim()).unwrap();
    assert_eq!(master.len(), 16, "the example masters are AES-128");
    [1u8, 2, 3].map(|purpose| {
        let mut m = <Cmac<aes::Aes128> as cmac::digest::KeyInit>::new_from_slice(&master).unwrap();
        m.update(&[1, 0, 0, 0, purpose, 0]);
        m.update(kdd);
        hex::encode_upper(m.finalize().into_bytes())
    })
}

/// The KDD a card's security domain announces in its INITIALIZE UPDATE response (first 10
/// bytes), read with raw APDUs.
pub fn kdd_of(path: &Path, sd: Option<&[u8]>, kvn: u8) -> Vec<u8> {
    use card_wire::apdu::Command as Apdu;
    use kagi::channel::ApduChannel;
    let mut card = applet_sim::SimCard::from_image(path, None).unwrap();
    card.power_on();
    let mut ch = kagi::channel::CardChannel::new(card);
    let select = Apdu::new(0x00, 0xA4, 0x04, 0x00)
        .with_data(sd.map(<[u8]>::to_vec).unwrap_or_default())
        .unwrap()
        .with_le(256)
        .unwrap();
    assert!(ch.transmit(&select).unwrap().sw.is_success());
    let iu = Apdu::new(0x80, 0x50, kvn, 0x00)
        .with_data(vec![0x11; 8])
        .unwrap()
        .with_le(256)
        .unwrap();
    let r = ch.transmit(&iu).unwrap();
    assert!(r.sw.is_success(), "INITIALIZE UPDATE: {:?}", r.sw);
    r.data[..10].to_vec()
}

/// Reads every secret key in the SoftHSM2 token of `conf` with OpenSC's `pkcs11-tool` (not
/// kagi): each must be sensitive and not extractable (CKA_SENSITIVE true, CKA_EXTRACTABLE
/// false), and reading its value (CKA_VALUE) must be refused. Returns the labels.
pub fn hsm_keys_unreadable(conf: &Path, module: &str, pin: &str) -> Vec<String> {
    let tool = |args: &[&str]| {
        Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", conf)
            .env("KAGI_TEST_HSM_PIN", pin.trim())
            // The PIN through OpenSC's `env:` form: never on a command line.
            .args([
                "--module",
                module,
                "--login",
                "--pin",
                "env:KAGI_TEST_HSM_PIN",
            ])
            .args(args)
            .output()
            .expect("pkcs11-tool (OpenSC) is missing: run scripts/setup.sh")
    };
    let list = tool(&["--list-objects", "--type", "secrkey"]);
    let text = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        list.status.success(),
        "pkcs11-tool: {text}{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let mut labels = Vec::new();
    for object in text.split("Secret Key Object").skip(1) {
        let field = |name: &str| {
            object
                .lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let label = field("label:");
        let access = field("Access:");
        // pkcs11-tool lists the set flags: "sensitive" (CKA_SENSITIVE), "extractable"
        // (CKA_EXTRACTABLE), "never extractable" (CKA_NEVER_EXTRACTABLE: only for keys made
        // in the token; an imported key was outside once, so it never has it).
        let flags: Vec<&str> = access.split(',').map(str::trim).collect();
        assert!(
            flags.contains(&"sensitive") && !flags.contains(&"extractable"),
            "{label} can leave the HSM: {object}"
        );
        let read = tool(&["--read-object", "--type", "secrkey", "--label", &label]);
        assert!(
            !read.status.success() && read.stdout.is_empty(),
            "the value of {label} was read out of the HSM"
        );
        labels.push(label);
    }
    labels
}

/// A PIN-less eligibility read of the card behind `t`, trusting `ca` (and the revocation
/// list text `revoked`, when given); the verdict, with the reasons when it is not `expect`.
pub fn assert_verdict(
    t: &mut dyn card_wire::Transport,
    ca: &x509_cert::Certificate,
    revoked: Option<&str>,
    expect: kagi::eligibility::Verdict,
) {
    let mut ch = kagi::channel::CardChannel::new(t);
    let mut trust = kagi::eligibility::Trust::default();
    trust.cas.push(ca.clone());
    if let Some(list) = revoked {
        trust.add_revoked_list(list).unwrap();
    }
    let r = kagi::eligibility::read(&mut ch, &trust, std::time::SystemTime::now()).unwrap();
    assert_eq!(r.verdict, expect, "{:?}", r.reasons);
}

/// The repository's `examples/` directory.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// `kagi perso VERB` with the example member profile, `input`, `out` and the development file
/// key store; the caller adds the stations (`--sim N` or `--readers ...`).
pub fn perso_batch(verb: &str, input: &Path, out: &Path) -> Command {
    let mut c = Command::new(kagi_bin());
    c.args(["perso", verb])
        .arg("--profile")
        .arg(examples().join("perso-member.toml"))
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .arg("--insecure-file-keys")
        .arg(examples().join("keys"));
    c
}

/// Whether this machine can run the private stack (pcscd, vpcd driver, namespaces).
pub fn available() -> Result<(), String> {
    for tool in ["pcscd", "unshare", "ip", "opensc-tool"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Err(format!("{tool} is missing: run scripts/setup.sh"));
        }
    }
    // `unshare -m -n` (private mount and network namespaces for pcscd and vpcd) needs root.
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if uid != "0" {
        return Err(format!(
            "they need root (uid 0, this is uid {uid:?}): the private pcscd runs in its own mount \
             and network namespaces (unshare -m -n); run the tests as root, e.g. in the project's \
             container"
        ));
    }
    if !Path::new("/usr/lib/pcsc/drivers/serial/libifdvpcd.so").exists() {
        return Err("vsmartcard-vpcd is missing: run scripts/setup.sh".into());
    }
    Ok(())
}

impl PrivatePcsc {
    /// Starts pcscd and `cards` simulated cards, and waits until reader 0 holds a card.
    pub fn start(cards: usize) -> PrivatePcsc {
        Self::start_with(cards, "gp-test")
    }

    /// Starts pcscd with `cards` cards of a simulator preset.
    pub fn start_with(cards: usize, preset: &str) -> PrivatePcsc {
        Self::start_opts(cards, preset, false)
    }

    /// Starts pcscd with `cards` slots fed from hoppers of factory-fresh `preset` cards, each
    /// with its own serial; `control("next I")` swaps slot I's card for the next.
    pub fn start_hopper(cards: usize, preset: &str) -> PrivatePcsc {
        Self::start_opts(cards, preset, true)
    }

    /// Starts pcscd with one card served from the image file `image` (saved back when the
    /// stack stops).
    pub fn start_image(image: &Path) -> PrivatePcsc {
        Self::start_full(1, "gp-test", false, Some(image))
    }

    /// Starts pcscd with one gp-test card into which `kagi sim serve --install` loaded and
    /// installed the CAP file `cap`.
    pub fn start_install(cap: &Path) -> PrivatePcsc {
        Self::start_all(1, "gp-test", false, None, Some(cap))
    }

    /// Like [`PrivatePcsc::start_install`], the card kept in the image file `image` (saved
    /// when the stack stops; an existing image is served as it is).
    pub fn start_install_image(cap: &Path, image: &Path) -> PrivatePcsc {
        Self::start_all(1, "gp-test", false, Some(image), Some(cap))
    }

    /// Like [`PrivatePcsc::start_image`], the card's power cut at its `tear`th persistent
    /// write after start-up (`kagi sim serve --sim-tear-at`).
    pub fn start_image_tear(image: &Path, tear: u64) -> PrivatePcsc {
        Self::start_any(1, "gp-test", false, Some(image), None, Some(tear))
    }

    /// Stops the stack (the simulator saves its image) and answers its logs.
    pub fn stop(mut self) -> String {
        self.halt();
        self.logs()
    }

    fn start_opts(cards: usize, preset: &str, hopper: bool) -> PrivatePcsc {
        Self::start_full(cards, preset, hopper, None)
    }

    fn start_full(cards: usize, preset: &str, hopper: bool, image: Option<&Path>) -> PrivatePcsc {
        Self::start_all(cards, preset, hopper, image, None)
    }

    fn start_all(
        cards: usize,
        preset: &str,
        hopper: bool,
        image: Option<&Path>,
        install: Option<&Path>,
    ) -> PrivatePcsc {
        Self::start_any(cards, preset, hopper, image, install, None)
    }

    fn start_any(
        cards: usize,
        preset: &str,
        hopper: bool,
        image: Option<&Path>,
        install: Option<&Path>,
        tear: Option<u64>,
    ) -> PrivatePcsc {
        if let Err(why) = available() {
            panic!("the PC/SC integration tests need a real PC/SC stack: {why}");
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let work = std::env::temp_dir().join(format!("kagi-pcsc-{}-{n}", std::process::id()));
        let run = work.join("run");
        std::fs::create_dir_all(&run).unwrap();
        let mut child = Command::new("unshare")
            .args(["-m", "-n", "--", "bash", SCRIPT])
            .env("WORK", &work)
            .env("RUN", &run)
            .env("KAGI", kagi_bin())
            .env("CARDS", cards.to_string())
            .env("PRESET", preset)
            .env("HOPPER", if hopper { "1" } else { "" })
            .env(
                "IMAGE",
                image.map(|p| p.display().to_string()).unwrap_or_default(),
            )
            .env(
                "INSTALL",
                install.map(|p| p.display().to_string()).unwrap_or_default(),
            )
            .env("TEAR", tear.map(|n| n.to_string()).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start unshare");
        let stdin = child.stdin.take();
        let stack = PrivatePcsc {
            socket: run.join("pcscd.comm"),
            work,
            child: Some(child),
            stdin: std::cell::RefCell::new(stdin),
        };
        let start = Instant::now();
        while !stack.socket.exists() {
            if start.elapsed() > Duration::from_secs(10) {
                panic!("pcscd did not create its socket:\n{}", stack.logs());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Wait for the card instead of sleeping: `kagi readers --wait` blocks on
        // SCardGetStatusChange until reader 0 reports a present card.
        for slot in 0..cards {
            let out = stack.kagi(&[
                "readers",
                "--wait",
                &reader_name(slot),
                "--timeout-ms",
                "15000",
            ]);
            assert!(
                out.status.success(),
                "no card in slot {slot}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                stack.logs()
            );
        }
        stack
    }

    /// Runs a command with this stack's socket, under a timeout.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("60")
            .arg(program)
            .args(args)
            .env("PCSCLITE_CSOCK_NAME", &self.socket)
            .output()
            .expect("run client")
    }

    /// Runs `kagi` against this stack.
    pub fn kagi(&self, args: &[&str]) -> Output {
        self.run(kagi_bin(), args)
    }

    /// Sends a control line to the simulator (`remove 0`, `insert 0`).
    pub fn control(&self, line: &str) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.work.join("sim-ctl"))
            .expect("sim-ctl");
        writeln!(f, "{line}").expect("write control");
    }

    /// Stops pcscd and starts it again: every reader disappears and comes back (what a
    /// client sees when readers are unplugged and replugged, or pcscd restarts).
    pub fn restart_pcscd(&self) {
        let mut guard = self.stdin.borrow_mut();
        let s = guard.as_mut().expect("stack stdin");
        s.write_all(b"restart-pcscd\n").expect("restart pcscd");
        s.flush().expect("flush");
    }

    /// pcscd's and the simulator's logs, for failure messages.
    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.work.join(f)).unwrap_or_default();
        format!(
            "--- pcscd.log\n{}\n--- sim.log\n{}",
            read("pcscd.log"),
            read("sim.log")
        )
    }
}

impl PrivatePcsc {
    /// Stops pcscd and the simulator (which saves its image), waiting up to 10 s.
    fn halt(&mut self) {
        // Closing stdin makes the script stop pcscd and the simulator it started.
        if let Some(mut s) = self.stdin.get_mut().take() {
            let _ = s.write_all(b"\n");
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }
}

impl Drop for PrivatePcsc {
    fn drop(&mut self) {
        self.halt();
        let _ = std::fs::remove_dir_all(&self.work);
    }
}
