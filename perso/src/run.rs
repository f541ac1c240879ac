//! Running a batch: stations take records from a queue, personalise a card each, verify it,
//! and journal every step. Simulated stations keep each card as an image file under
//! `OUT/cards/`, saved after every step, so a crash leaves cards that `resume` can inspect;
//! reader stations (`readers`) work on the cards in PC/SC readers.

use super::journal::{Event, Journal, Status};
use super::profile::{CardType, CertificateAuthority, Profile};
use super::records::{BadRecord, Record};
use applet_sim::{SimCard, SimConfig};
use card_wire::gp::blocks;
use card_wire::scp03::{
    CardKeys, Diversification, HostOptions, Scp03Error, SecurityLevel, StaticKeys,
};
use card_wire::sw::StatusWord;
use card_wire::transport::Transport;
use kagi::channel::CardChannel;
use kagi::error::{Error, Result};
use kagi::gp::{self, StatusScope, manage};
use kagi::secure::SecureChannel;
use kagi::uicc::CardKind;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

/// The keys of a batch: the cards' transport keys, and where each card's production keys
/// (and its supplementary domains' keys) come from once its KDD is known.
pub struct KeySets {
    /// Transport key set (as the cards leave the factory), with the profile's transport KVN.
    pub transport: StaticKeys,
    /// The issuer domain's production keys per card: diversified from the master key set.
    pub production: Arc<dyn CardKeys>,
    /// The supplementary domains' keys per card, by the key set name the profile gives them.
    pub domains: BTreeMap<String, Arc<dyn CardKeys>>,
}

fn read_transport(path: &Path, profile: &Profile) -> Result<StaticKeys> {
    let mut transport = kagi::keys::read_key_file(path, profile.transport_kvn)?;
    transport.kvn = profile.transport_kvn;
    Ok(transport)
}

impl KeySets {
    /// Master keys in an HSM (`kdf3` diversification runs in the HSM; each `HsmMaster` was
    /// opened with the production KVN) and transport keys from `transport` (a key file).
    pub fn with_hsm(
        transport: &Path,
        master: kagi_hsm::HsmMaster,
        domains: BTreeMap<String, kagi_hsm::HsmMaster>,
        profile: &Profile,
    ) -> Result<KeySets> {
        if profile.diversification != Diversification::Kdf3 {
            return Err(Error::Profile(
                "master keys in an HSM need diversification = \"kdf3\" (each card gets its own keys; the master never leaves the HSM)".into(),
            ));
        }
        let source = |m: kagi_hsm::HsmMaster| -> Arc<dyn CardKeys> { Arc::new(m) };
        Ok(KeySets {
            transport: read_transport(transport, profile)?,
            production: source(master),
            domains: domains.into_iter().map(|(k, v)| (k, source(v))).collect(),
        })
    }

    /// The development file key store: `DIR/transport.keys`, `DIR/master.keys` and, per
    /// supplementary domain, `DIR/NAME.keys` (key files as `kagi::keys` reads them). Never for
    /// production: say so.
    pub fn from_insecure_dir(dir: &Path, profile: &Profile) -> Result<KeySets> {
        let source = |name: &str| -> Result<Arc<dyn CardKeys>> {
            Ok(Arc::new(card_wire::scp03::DiversifiedMaster {
                master: kagi::keys::read_key_file(&dir.join(name), profile.production_kvn)?,
                scheme: profile.diversification,
                kvn: profile.production_kvn,
            }))
        };
        let mut domains = BTreeMap::new();
        for d in &profile.domains {
            domains.insert(d.keys.clone(), source(&format!("{}.keys", d.keys))?);
        }
        Ok(KeySets {
            transport: read_transport(&dir.join("transport.keys"), profile)?,
            production: source("master.keys")?,
            domains,
        })
    }

    /// The keys of the supplementary domain whose key set is `name`.
    fn domain(&self, name: &str) -> Result<Arc<dyn CardKeys>> {
        self.domains.get(name).cloned().ok_or_else(|| {
            Error::Profile(format!(
                "no master key set '{name}' for a security domain: add {name}.keys (file store) or an HSM key labelled '{name}'"
            ))
        })
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Journal, reports and card images go here.
    pub out: PathBuf,
    /// Parallel stations (simulated cards at a time).
    pub stations: usize,
    /// Show progress bars.
    pub progress: bool,
    /// Keep simulated cards as image files (needed to resume; off only for benchmarks).
    pub keep_images: bool,
    /// Write a redacted APDU log per card into this directory.
    pub card_logs: Option<PathBuf>,
    /// PC/SC readers to run stations on (exact names); empty for simulated cards.
    pub readers: Vec<String>,
    /// Reader stations: a shell command run after each card (an automatic encoder's eject
    /// and feed), with `KAGI_READER`, `KAGI_OUTCOME` and `KAGI_RECORD` set.
    pub feeder_cmd: Option<String>,
    /// Digests of the profile and input files: written into the journal when the batch
    /// starts, and checked on resume (a resume with another batch's files is refused).
    pub digests: Option<super::journal::BatchDigests>,
    /// Set (by a signal handler) to stop at a safe point: stations finish the cards in flight,
    /// take no new record, and the batch ends with [`Summary::interrupted`].
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Options {
    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// What a batch did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Records personalised and verified (in total, over all runs).
    pub done: usize,
    /// Cards caught mid-way that need rework.
    pub rework: usize,
    /// Cards that refused something.
    pub failed: usize,
    /// Cards claimed and not finished (waiting for an external CA, or caught by a stop):
    /// `kagi perso resume` continues them.
    pub in_progress: usize,
    /// Unusable input records.
    pub bad_records: usize,
    /// Records handled in this run.
    pub handled: usize,
    /// Seconds this run took.
    pub seconds: f64,
    /// Average milliseconds per step kind in this run (where the time goes).
    pub step_ms: std::collections::BTreeMap<String, f64>,
    /// This process's CPU time (user + system) per card handled in this run, in milliseconds.
    pub cpu_ms_per_card: f64,
    /// The run was stopped (see [`Options::stop`]) before every record was handled: `kagi
    /// perso resume` continues it.
    pub interrupted: bool,
}

/// CPU time (user + system) this process has used so far (zero where unavailable).
fn cpu_time() -> std::time::Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| {
                std::time::Duration::from_secs(t.tv_sec().max(0) as u64)
                    + std::time::Duration::from_micros(t.tv_usec().max(0) as u64)
            };
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => std::time::Duration::ZERO,
    }
}

fn journal_path(out: &Path) -> PathBuf {
    out.join("journal.jsonl")
}

fn card_path(out: &Path, id: &str) -> PathBuf {
    out.join("cards").join(format!("{id}.img"))
}

struct Shared<'a> {
    profile: &'a Profile,
    keys: &'a KeySets,
    opts: &'a Options,
    journal: Journal,
    issuer: Option<Issuer>,
    times: Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
}

/// Who issues the certificates of a batch (one value per batch: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Authority {
    /// The project's test CAs, issuing in process.
    Test {
        auth_ca: test_pki::TestCa,
        sign_ca: test_pki::TestCa,
    },
    /// An external CA through a file exchange: requests out, certificates in.
    External {
        auth_ca: x509_cert::Certificate,
        sign_ca: x509_cert::Certificate,
        requests: PathBuf,
        issued: PathBuf,
        timeout: std::time::Duration,
    },
}

/// What JPKI issuance needs for the whole batch: the CAs and the PIN mailer.
struct Issuer {
    authority: Authority,
    mailer_key: rsa::PublicKey,
    mailer: Mutex<std::fs::File>,
}

/// Reads a CA certificate file (PEM or DER).
fn ca_certificate(path: &Path) -> Result<x509_cert::Certificate> {
    use der::Decode;
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Profile(format!("CA certificate {}: {e}", path.display())))?;
    let der = crate::pki::pem_or_der(&bytes, "CERTIFICATE")?;
    x509_cert::Certificate::from_der(&der)
        .map_err(|e| Error::Profile(format!("CA certificate {}: {e}", path.display())))
}

impl Issuer {
    fn open(j: &super::profile::Jpki, out: &Path) -> Result<Issuer> {
        let pki = |e: test_pki::PkiError| Error::Profile(format!("CA {}: {e}", j.ca_dir.display()));
        let authority = match &j.ca {
            CertificateAuthority::Test => Authority::Test {
                auth_ca: test_pki::store::load_or_create(
                    &j.ca_dir,
                    "auth-ca",
                    "JPKI for user authentication",
                )
                .map_err(pki)?,
                sign_ca: test_pki::store::load_or_create(
                    &j.ca_dir,
                    "sign-ca",
                    "JPKI for digital signature",
                )
                .map_err(pki)?,
            },
            CertificateAuthority::External {
                exchange_dir,
                timeout,
            } => {
                let (requests, issued) =
                    (exchange_dir.join("requests"), exchange_dir.join("issued"));
                for d in [&requests, &issued] {
                    std::fs::create_dir_all(d)
                        .map_err(|e| Error::Profile(format!("CA exchange {}: {e}", d.display())))?;
                }
                Authority::External {
                    auth_ca: ca_certificate(&j.ca_dir.join("auth-ca.crt.pem"))?,
                    sign_ca: ca_certificate(&j.ca_dir.join("sign-ca.crt.pem"))?,
                    requests,
                    issued,
                    timeout: *timeout,
                }
            }
        };
        let bytes = std::fs::read(&j.pin_mailer_key).map_err(|e| {
            Error::Profile(format!(
                "PIN mailer key {}: {e}",
                j.pin_mailer_key.display()
            ))
        })?;
        let der = if bytes.starts_with(b"-----BEGIN") {
            der::pem::decode_vec(&bytes)
                .map_err(|e| Error::Profile(format!("PIN mailer key: {e}")))?
                .1
        } else {
            bytes
        };
        use rsa::pkcs8::DecodePublicKey;
        let mailer_key = rsa::PublicKey::from_public_key_der(&der).map_err(|e| {
            Error::Profile(format!(
                "PIN mailer key {}: {e}",
                j.pin_mailer_key.display()
            ))
        })?;
        let mailer = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out.join("pin-mailer.enc"))
            .map_err(|e| Error::Protocol(format!("PIN mailer file: {e}")))?;
        Ok(Issuer {
            authority,
            mailer_key,
            mailer: Mutex::new(mailer),
        })
    }

    /// Appends `record,HEX(RSA-OAEP-SHA256(JSON of the PINs))` and syncs it.
    fn mail(&self, record: &str, pins: &[(&str, &zeroize::Zeroizing<String>)]) -> Result<()> {
        use std::io::Write;
        let mut doc = serde_json::Map::new();
        for (k, v) in pins {
            doc.insert((*k).into(), serde_json::Value::String(v.as_str().into()));
        }
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(&doc).unwrap_or_default());
        for (_, v) in doc.iter_mut() {
            if let serde_json::Value::String(s) = v {
                zeroize::Zeroize::zeroize(s);
            }
        }
        let ct = self
            .mailer_key
            .encrypt(
                &mut getrandom::SysRng,
                rsa::Oaep::<sha2::Sha256>::new(),
                &plain,
            )
            .map_err(|e| Error::Protocol(format!("PIN mailer encryption: {e}")))?;
        let mut f = self
            .mailer
            .lock()
            .map_err(|_| Error::Protocol("PIN mailer lock poisoned".into()))?;
        f.write_all(format!("{record},{}\n", hex::encode_upper(ct)).as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| Error::Protocol(format!("PIN mailer write: {e}")))
    }
}

/// A random PIN: 4 digits, or (password) 8 upper-case letters and digits with both.
fn random_pin(password: bool) -> Result<zeroize::Zeroizing<String>> {
    const ALNUM: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    loop {
        let mut b = zeroize::Zeroizing::new([0u8; 8]);
        getrandom::fill(b.as_mut()).map_err(|e| Error::Protocol(e.to_string()))?;
        let pin: zeroize::Zeroizing<String> = zeroize::Zeroizing::new(if password {
            b.iter()
                .map(|x| ALNUM[(*x as usize) % ALNUM.len()] as char)
                .collect()
        } else {
            b[..4].iter().map(|x| (b'0' + x % 10) as char).collect()
        });
        let which = if password {
            kagi::jpki::Pin::Sign
        } else {
            kagi::jpki::Pin::Auth
        };
        if which.format_ok(pin.as_bytes()) {
            return Ok(pin);
        }
    }
}

impl Shared<'_> {
    /// Adds a step's duration to the batch's "where the time goes" figures.
    fn time(&self, step: &str, micros: u64) {
        let kind = step.split(':').next().unwrap_or(step).to_string();
        if let Ok(mut t) = self.times.lock() {
            let e = t.entry(kind).or_insert((0, 0));
            e.0 += 1;
            e.1 += micros;
        }
    }
    fn log(&self, e: Event) -> Result<()> {
        self.journal.append(&e)
    }
}

fn options() -> HostOptions {
    HostOptions {
        level: SecurityLevel::FULL,
        ..HostOptions::default()
    }
}

#[cfg(feature = "pcsc")]
mod readers;

/// Where a station keeps a card's state between steps: a simulated card is saved as an image
/// file (so a crash leaves a card that `resume` can inspect); a real card keeps its own.
pub trait Checkpoint: Transport {
    /// Saves the card's state to `path`.
    fn checkpoint(&self, path: &Path) -> Result<()>;
}

impl Checkpoint for SimCard {
    fn checkpoint(&self, path: &Path) -> Result<()> {
        self.save_image(path)
            .map_err(|e| Error::Protocol(e.to_string()))
    }
}

#[cfg(feature = "pcsc")]
impl Checkpoint for kagi::pcsc_transport::PcscTransport {
    fn checkpoint(&self, _path: &Path) -> Result<()> {
        Ok(())
    }
}

fn save<T: Checkpoint>(ch: &CardChannel<T>, path: Option<&Path>) -> Result<()> {
    match path {
        Some(p) => ch.transport().checkpoint(p),
        None => Ok(()),
    }
}

/// What the journal says about a card caught mid-way (empty for a fresh card).
#[derive(Default)]
struct Progress {
    /// Steps finished and journaled.
    done: Vec<String>,
    /// Steps begun and never finished.
    begun: Vec<String>,
}

impl Progress {
    /// Whether `name` still has to run. A step whose effect cannot be read back from the card
    /// (`opaque`: personalisation data, JPKI issuance) and that was begun but never finished
    /// makes the card a rework case: running it again could duplicate or mix data.
    fn todo(&self, name: &str, opaque: bool) -> Result<bool> {
        if self.done.iter().any(|d| d == name) {
            return Ok(false);
        }
        if opaque && self.begun.iter().any(|b| b == name) {
            return Err(Error::NeedsRework(format!(
                "interrupted during {name}: the card may hold part of it"
            )));
        }
        Ok(true)
    }
}

/// Personalises one card, journalling and saving after every step. With `progress` from the
/// journal, steps already done are skipped and steps that can be read back from the card
/// (load files, instances) are checked there.
fn personalise<T: Checkpoint>(
    sh: &Shared<'_>,
    ch: &mut CardChannel<T>,
    record: &Record,
    path: Option<&Path>,
    progress: &Progress,
) -> Result<Option<Issued>> {
    let p = sh.profile;
    let mark = std::cell::Cell::new(Instant::now());
    let step = |name: String| {
        let micros = mark.get().elapsed().as_micros() as u64;
        mark.set(Instant::now());
        sh.time(&name, micros);
        sh.log(Event::Step {
            record: record.id.clone(),
            step: name,
            micros,
        })
    };
    let begin = |name: &str| {
        sh.log(Event::Begin {
            record: record.id.clone(),
            step: name.to_string(),
        })
    };
    let mut jpki_check = None;
    check_card_kind(p, ch).map_err(Error::Profile)?;
    let mut sc = transport_session(ch, sh.keys, sh.profile, None)?;
    save(sc.card(), path)?;
    if progress.todo("open", false)? {
        step("open".into())?;
    }
    if !p.load.is_empty() {
        let loaded = gp::get_status(&mut sc, StatusScope::LoadFiles)?;
        for l in &p.load {
            if loaded.iter().any(|e| e.aid == l.package) {
                continue;
            }
            if let Some(cap) = &l.cap_file {
                // Short LOAD blocks under the session's overhead: every reader carries them.
                let overhead = sc.load_overhead();
                let opts = kagi::gp_cap::LoadOptions {
                    hash: kagi::gp_cap::HashAlg::Sha256,
                    descriptor: true,
                    sd: None,
                    block: card_wire::gp_load::block_size(None, false, overhead),
                };
                kagi::gp_cap::load(&mut sc, cap, &opts)?;
            } else if l.cap.is_some() {
                return Err(Error::Profile(
                    "a [[load]] cap file is read by Profile::read (its path is relative to the profile)".into(),
                ));
            } else {
                let file = manage::sim_load_file(&l.package, &l.modules);
                manage::load(&mut sc, &l.package, None, &file, true)?;
            }
            save(sc.card(), path)?;
            step(format!("load:{}", hex::encode_upper(&l.package)))?;
        }
    }
    let present = if progress.done.is_empty() {
        Vec::new()
    } else {
        gp::get_status(&mut sc, StatusScope::Applications)?
    };
    for d in &p.domains {
        let name = format!("domain:{}", hex::encode_upper(&d.instance));
        if !progress.todo(&name, false)? {
            continue;
        }
        if !present.iter().any(|e| e.aid == d.instance) {
            let spec = manage::InstallSpec {
                package: d.package.clone(),
                module: d.module.clone(),
                instance: d.instance.clone(),
                privileges: d.privileges.clone(),
                params: Vec::new(),
                selectable: true,
            };
            manage::install(&mut sc, &spec)?;
            save(sc.card(), path)?;
        }
        step(name)?;
    }
    for i in &p.install {
        let name = format!("install:{}", hex::encode_upper(&i.instance));
        if !progress.todo(&name, false)? {
            continue;
        }
        if present.iter().any(|e| e.aid == i.instance) {
            // Installed before the interruption, journaled only now.
            step(name)?;
            continue;
        }
        let spec = manage::InstallSpec {
            package: i.package.clone(),
            module: i.module.clone(),
            instance: i.instance.clone(),
            privileges: i.privileges.clone(),
            params: i.params.clone(),
            selectable: true,
        };
        manage::install(&mut sc, &spec)?;
        save(sc.card(), path)?;
        step(name)?;
    }
    for s in &p.store {
        let name = format!("store:{}", hex::encode_upper(&s.instance));
        if !progress.todo(&name, true)? {
            continue;
        }
        let blocks = Profile::render(s, &record.fields)?;
        begin(&name)?;
        manage::personalize(&mut sc, &s.instance, &blocks, true)?;
        save(sc.card(), path)?;
        step(name)?;
    }
    // A JPKI issuance done before an interruption is not repeated; its PINs went to the
    // mailer and are not kept, so the signature check after issuance is not repeated either.
    if let (Some(j), Some(issuer)) = (&p.jpki, &sh.issuer) {
        if matches!(issuer.authority, Authority::Test { .. }) {
            if progress.todo("jpki", true)? {
                begin("jpki")?;
                let issued = issue_jpki(&mut sc, j, issuer, record)?;
                save(sc.card(), path)?;
                step("jpki".into())?;
                jpki_check = Some(issued);
            }
        } else {
            // An external CA: requests out (one step that cannot be read back: keys and
            // PINs), then certificates in when the CA has answered (can be repeated).
            let mut pin = None;
            if progress.todo("jpki-keys", true)? {
                begin("jpki-keys")?;
                drop(sc);
                pin = Some(request_certificates(sh, ch, j, issuer, record)?);
                save(ch, path)?;
                step("jpki-keys".into())?;
                sc = transport_session(ch, sh.keys, sh.profile, None)?;
            }
            if progress.todo("jpki-certs", false)? {
                let auth_cert = install_certificates(&mut sc, j, issuer, record)?;
                save(sc.card(), path)?;
                step("jpki-certs".into())?;
                jpki_check = Some(Issued {
                    auth_cert,
                    auth_pin: pin,
                });
            }
        }
    }
    if !p.domains.is_empty() {
        // Each supplementary domain gets its provider's keys in its own session, before the
        // issuer domain's keys change.
        drop(sc);
        domain_keys(sh, ch, path, progress, &step)?;
        sc = transport_session(ch, sh.keys, sh.profile, None)?;
    }
    finish(sh, sc, path, &step)?;
    Ok(jpki_check)
}

/// Whether the card is of the profile's type, from its answer to reset: a UICC profile on a
/// smart card (or the other way round) is wrong card stock in the feeder, refused before any
/// command changes the card. `Err` says what is wrong, for the operator.
pub(super) fn check_card_kind<T: Transport>(
    profile: &Profile,
    ch: &CardChannel<T>,
) -> std::result::Result<(), String> {
    let want = match profile.card {
        CardType::Uicc => CardKind::Uicc,
        CardType::SmartCard => CardKind::SmartCard,
    };
    let Some(atr) = ch.transport().atr() else {
        return Err("the card gave no answer to reset: kagi cannot tell its type".into());
    };
    let got = CardKind::from_atr(&atr).map_err(|e| e.to_string())?;
    if got != want {
        return Err(format!(
            "the profile is for card = \"{}\", but this card's ATR {} announces a {}: wrong card stock? remove it",
            want.name(),
            hex::encode_upper(&atr),
            got.name()
        ));
    }
    Ok(())
}

/// A session on a security domain (`aid`, or the issuer's) under the transport keys.
fn transport_session<'c, T: Transport>(
    ch: &'c mut CardChannel<T>,
    keys: &KeySets,
    profile: &Profile,
    aid: Option<&[u8]>,
) -> Result<SecureChannel<'c, T>> {
    let sd = gp::select_domain(ch, aid)?;
    let opts = HostOptions {
        kvn: profile.transport_kvn,
        ..options()
    };
    SecureChannel::open(ch, keys.transport.clone(), opts, Some(&sd.aid))
}

/// Whether `e` is a security domain refusing the transport key version (it was replaced).
fn transport_keys_replaced(e: &Error) -> bool {
    matches!(
        e,
        Error::Scp03(Scp03Error::InitializeUpdateRefused(
            StatusWord::REFERENCED_DATA_NOT_FOUND
        ))
    )
}

/// A session on a supplementary domain under its provider's production keys.
fn domain_session<'c, T: Transport>(
    ch: &'c mut CardChannel<T>,
    profile: &Profile,
    keys: &KeySets,
    domain: &super::profile::Domain,
) -> Result<SecureChannel<'c, T>> {
    keyed_session(
        ch,
        profile,
        keys.domain(&domain.keys)?,
        Some(&domain.instance),
    )
}

/// Replaces each supplementary domain's initial (transport) keys with keys diversified from
/// its provider's master key set. A domain whose transport keys are already refused must
/// answer to the provider's keys (replaced before an interruption).
fn domain_keys<T: Checkpoint>(
    sh: &Shared<'_>,
    ch: &mut CardChannel<T>,
    path: Option<&Path>,
    progress: &Progress,
    step: &dyn Fn(String) -> Result<()>,
) -> Result<()> {
    for d in &sh.profile.domains {
        let name = format!("domain-keys:{}", hex::encode_upper(&d.instance));
        if !progress.todo(&name, false)? {
            continue;
        }
        match transport_session(ch, sh.keys, sh.profile, Some(&d.instance)) {
            Ok(mut sc) => {
                let kdd = sc.info().init_update.kdd;
                let keys = sh
                    .keys
                    .domain(&d.keys)?
                    .for_card(&kdd)
                    .map_err(Error::Scp03)?;
                let dek = sc.dek()?.clone();
                manage::put_key(&mut sc, &dek, &keys, Some(sh.profile.transport_kvn))?;
                save(sc.card(), path)?;
            }
            Err(e) if transport_keys_replaced(&e) => {
                domain_session(ch, sh.profile, sh.keys, d)?;
            }
            Err(e) => return Err(e),
        }
        step(name)?;
    }
    Ok(())
}

/// The last steps: production keys, diversified for this card, replace the transport keys,
/// then the card moves to the profile's final life-cycle state.
fn finish<T: Checkpoint>(
    sh: &Shared<'_>,
    mut sc: SecureChannel<'_, T>,
    path: Option<&Path>,
    step: &dyn Fn(String) -> Result<()>,
) -> Result<()> {
    let p = sh.profile;
    let kdd = sc.info().init_update.kdd;
    let production = sh.keys.production.for_card(&kdd).map_err(Error::Scp03)?;
    let dek = sc.dek()?.clone();
    manage::put_key(&mut sc, &dek, &production, Some(p.transport_kvn))?;
    save(sc.card(), path)?;
    step("put-key".into())?;
    final_state(sh, &mut sc, path)?;
    step("final-state".into())
}

/// Moves the card to the profile's final life-cycle state (nothing to do for SECURED).
fn final_state<T: Checkpoint>(
    sh: &Shared<'_>,
    sc: &mut SecureChannel<'_, T>,
    path: Option<&Path>,
) -> Result<()> {
    if sh.profile.final_state != 0x0F {
        manage::set_card_status(sc, sh.profile.final_state)?;
        save(sc.card(), path)?;
    }
    Ok(())
}

/// A session on the card's security domain under the production keys.
fn production_session<'c, T: Transport>(
    ch: &'c mut CardChannel<T>,
    profile: &Profile,
    keys: &KeySets,
) -> Result<SecureChannel<'c, T>> {
    keyed_session(ch, profile, keys.production.clone(), None)
}

/// A session on the domain `aid` (the issuer's by default) with the production KVN and the
/// card's keys from `source`.
fn keyed_session<'c, T: Transport>(
    ch: &'c mut CardChannel<T>,
    profile: &Profile,
    source: Arc<dyn CardKeys>,
    aid: Option<&[u8]>,
) -> Result<SecureChannel<'c, T>> {
    let sd = gp::select_domain(ch, aid)?;
    let opts = HostOptions {
        kvn: profile.production_kvn,
        ..options()
    };
    SecureChannel::open_source(ch, source, opts, Some(&sd.aid))
}

/// What a JPKI issuance checks afterwards: the certificate written and, while this process
/// still holds it, the PIN to sign with.
struct Issued {
    auth_cert: Vec<u8>,
    auth_pin: Option<zeroize::Zeroizing<String>>,
}

/// An item of a JPKI personalisation script: `TAG { FID ‖ body }`.
fn jpki_item(tag: u32, fid: u16, body: &[u8]) -> Vec<u8> {
    card_wire::tlv::tlv(tag, &[&fid.to_be_bytes()[..], body].concat())
}

/// The public keys the card answered an on-card key generation with (authentication, then
/// signature).
fn card_public_keys(out: &[u8]) -> Result<[rsa::PublicKey; 2]> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    let publics: Vec<rsa::PublicKey> = card_wire::tlv::parse_all(out)?
        .iter()
        .map(|t| {
            rsa::PublicKey::from_pkcs1_der(t.value)
                .map_err(|e| Error::Protocol(format!("card public key: {e}")))
        })
        .collect::<Result<_>>()?;
    <[rsa::PublicKey; 2]>::try_from(publics)
        .map_err(|_| Error::Protocol("the card did not return two public keys".into()))
}

/// The certificates, their CAs' certificates, token info and certificate availability.
fn certificate_script(auth: &[u8], auth_ca: &[u8], sign: &[u8], sign_ca: &[u8]) -> Vec<u8> {
    let mut script = jpki_item(0xC1, 0x000A, auth);
    script.extend(jpki_item(0xC1, 0x000B, auth_ca));
    script.extend(jpki_item(0xC1, 0x0001, sign));
    script.extend(jpki_item(0xC1, 0x0002, sign_ca));
    script.extend(jpki_item(0xC1, 0x0006, &kagi::jpki::token_info()));
    script.extend(jpki_item(0xC1, 0x0008, &[0x8F, 0x8F, 0x00]));
    script
}

/// The record's four basic facts, or synthetic ones when the record lacks them.
fn basic_facts(record: &Record) -> test_pki::BasicFacts {
    let f = |k: &str| record.fields.get(k).cloned();
    match (f("name"), f("address"), f("birth_date"), f("sex")) {
        (Some(name), Some(address), Some(birth_date), Some(sex)) => test_pki::BasicFacts {
            name,
            address,
            birth_date,
            sex,
        },
        _ => test_pki::BasicFacts::synthetic(),
    }
}

/// The PINs a JPKI card gets: the authentication PIN, the signature password and (with a
/// text AP) the text AP's PIN, generated here and written only to the card and the mailer.
struct Pins {
    auth: zeroize::Zeroizing<String>,
    sign: zeroize::Zeroizing<String>,
    text: zeroize::Zeroizing<String>,
}

impl Pins {
    fn generate() -> Result<Pins> {
        Ok(Pins {
            auth: random_pin(false)?,
            sign: random_pin(true)?,
            text: random_pin(false)?,
        })
    }

    /// The JPKI AP's PIN items.
    fn script(&self) -> Vec<u8> {
        let mut script = jpki_item(0xC3, 0x0018, self.auth.as_bytes());
        script.extend(jpki_item(0xC3, 0x001B, self.sign.as_bytes()));
        script
    }
}

/// The text AP (when the profile has one) gets the record's My Number and facts and its PIN;
/// then every PIN goes to the mailer.
fn text_ap_and_mail<T: Transport>(
    sc: &mut SecureChannel<'_, T>,
    j: &super::profile::Jpki,
    issuer: &Issuer,
    record: &Record,
    pins: &Pins,
) -> Result<()> {
    let mut mailed = vec![("auth_pin", &pins.auth), ("sign_pin", &pins.sign)];
    if let Some(text) = &j.text_instance {
        let my_number = record.fields.get("my_number").cloned().unwrap_or_default();
        let facts = basic_facts(record);
        let (number, facts_ef) = kagi::jpki::text_efs(&kagi::jpki::TextFacts {
            my_number,
            name: facts.name,
            address: facts.address,
            birth_date: facts.birth_date,
            sex: facts.sex,
        });
        let mut t = zeroize::Zeroizing::new(jpki_item(0xC1, 0x0001, &number));
        t.extend(jpki_item(0xC1, 0x0002, &facts_ef));
        t.extend(jpki_item(0xC3, 0x0011, pins.text.as_bytes()));
        manage::personalize(sc, text, &blocks(&t), true)?;
        mailed.push(("text_pin", &pins.text));
    }
    issuer.mail(&record.id, &mailed)
}

/// The opaque id in a user-authentication certificate's subject.
fn opaque_id(record: &Record) -> String {
    format!("KAGI{}", record.id.to_ascii_uppercase())
}

/// With the test CA: keys generated on the card, certificates issued in process, PINs
/// generated and mailed, all in one step.
fn issue_jpki<T: Transport>(
    sc: &mut SecureChannel<'_, T>,
    j: &super::profile::Jpki,
    issuer: &Issuer,
    record: &Record,
) -> Result<Issued> {
    use der::Encode;
    let Authority::Test { auth_ca, sign_ca } = &issuer.authority else {
        return Err(Error::Protocol(
            "in-process issuance needs the test CA".into(),
        ));
    };
    // 1. Keys generated on the card: only the public keys come out.
    let mut gen_script = jpki_item(0xC4, 0x0017, &[]);
    gen_script.extend(jpki_item(0xC4, 0x001A, &[]));
    let out = manage::personalize(sc, &j.instance, &blocks(&gen_script), false)?;
    let [auth_pub, sign_pub] = card_public_keys(&out)?;
    // 2. Certificates from the CA.
    let pki = |e: test_pki::PkiError| Error::Protocol(format!("CA: {e}"));
    let der_err = |e: der::Error| Error::Protocol(e.to_string());
    let mut serial = [0u8; 4];
    getrandom::fill(&mut serial).map_err(|e| Error::Protocol(e.to_string()))?;
    let serial = u32::from_be_bytes(serial) & 0x7FFF_FFFF | 0x0100_0000;
    let now = std::time::SystemTime::now();
    let until = now + std::time::Duration::from_secs(5 * 365 * 86400);
    let auth_cert = auth_ca
        .issue_auth(&auth_pub, &opaque_id(record), serial, now, until)
        .map_err(pki)?
        .to_der()
        .map_err(der_err)?;
    let sign_cert = sign_ca
        .issue_sign(&sign_pub, &basic_facts(record), serial + 1, now, until)
        .map_err(pki)?
        .to_der()
        .map_err(der_err)?;
    // 3. Certificates and PINs onto the card; the PINs go nowhere else but the mailer.
    let pins = Pins::generate()?;
    let mut script = zeroize::Zeroizing::new(certificate_script(
        &auth_cert,
        &auth_ca.certificate_der().map_err(pki)?,
        &sign_cert,
        &sign_ca.certificate_der().map_err(pki)?,
    ));
    script.extend(pins.script());
    manage::personalize(sc, &j.instance, &blocks(&script), true)?;
    text_ap_and_mail(sc, j, issuer, record, &pins)?;
    Ok(Issued {
        auth_cert,
        auth_pin: Some(pins.auth.clone()),
    })
}

/// Where the exchange keeps a record's request or certificate for `key` (`auth`, `sign`).
fn exchange_file(dir: &Path, record: &Record, key: &str, ext: &str) -> PathBuf {
    dir.join(format!("{}.{key}.{ext}", record.id))
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one: a temporary
/// file, synced, renamed over, and the directory synced.
fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |e: std::io::Error| Error::Protocol(format!("{}: {e}", path.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

/// With an external CA, the first half: keys generated on the card and PINs set (one
/// transaction), the PINs mailed, then one PKCS#10 request per key, signed on the card after
/// its PIN (proof of possession), written to the exchange. Returns the authentication PIN for
/// the check after issuance in this run.
fn request_certificates<T: Transport>(
    sh: &Shared<'_>,
    ch: &mut CardChannel<T>,
    j: &super::profile::Jpki,
    issuer: &Issuer,
    record: &Record,
) -> Result<zeroize::Zeroizing<String>> {
    use rsa::pkcs8::EncodePublicKey;
    use std::str::FromStr;
    let Authority::External { requests, .. } = &issuer.authority else {
        return Err(Error::Protocol(
            "certification requests are for an external CA".into(),
        ));
    };
    let pins = Pins::generate()?;
    let keys = {
        let mut sc = transport_session(ch, sh.keys, sh.profile, None)?;
        let mut script = zeroize::Zeroizing::new(jpki_item(0xC4, 0x0017, &[]));
        script.extend(jpki_item(0xC4, 0x001A, &[]));
        script.extend(pins.script());
        let out = manage::personalize(&mut sc, &j.instance, &blocks(&script), true)?;
        let keys = card_public_keys(&out)?;
        text_ap_and_mail(&mut sc, j, issuer, record, &pins)?;
        keys
    };
    let subject = x509_cert::name::Name::from_str(&format!("CN={},C=JP", opaque_id(record)))
        .map_err(|e| Error::Protocol(format!("request subject: {e}")))?;
    kagi::jpki::select(ch)?;
    for (key, which, pin) in [
        (&keys[0], kagi::jpki::Pin::Auth, &pins.auth),
        (&keys[1], kagi::jpki::Pin::Sign, &pins.sign),
    ] {
        let spki = key
            .to_public_key_der()
            .map_err(|e| Error::Protocol(format!("card public key: {e}")))?;
        kagi::jpki::verify(ch, which, &zeroize::Zeroizing::new(pin.as_bytes().to_vec()))?;
        let csr = crate::pki::build_csr(&subject, spki.as_bytes(), |tbs| {
            kagi::jpki::sign(ch, which, &kagi::jpki::sha256_digest_info(tbs))
        })?;
        let name = if which == kagi::jpki::Pin::Auth {
            "auth"
        } else {
            "sign"
        };
        let pem = crate::pki::to_pem(&csr, crate::pki::CSR_LABEL)?;
        write_durable(
            &exchange_file(requests, record, name, "csr.pem"),
            pem.as_bytes(),
        )?;
    }
    // Leave the PIN state cleared.
    kagi::jpki::select(ch)?;
    Ok(pins.auth.clone())
}

/// Reads a certificate file (PEM or DER).
fn read_certificate(path: &Path) -> Result<(Vec<u8>, x509_cert::Certificate)> {
    use der::Decode;
    let bad = |m: String| Error::Protocol(format!("{}: {m}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let der = crate::pki::pem_or_der(&bytes, "CERTIFICATE")?;
    let cert = x509_cert::Certificate::from_der(&der).map_err(|e| bad(e.to_string()))?;
    Ok((der, cert))
}

/// Checks an issued certificate against the request: the same public key (the card's),
/// issued by the profile's CA, valid now.
fn check_issued(
    cert_path: &Path,
    cert: &x509_cert::Certificate,
    csr_path: &Path,
    ca: &x509_cert::Certificate,
) -> Result<()> {
    use der::Encode;
    let bad = |m: String| Error::Protocol(format!("{}: {m}", cert_path.display()));
    let csr_bytes =
        std::fs::read(csr_path).map_err(|e| bad(format!("{}: {e}", csr_path.display())))?;
    let csr = crate::pki::verify_csr(&crate::pki::pem_or_der(&csr_bytes, crate::pki::CSR_LABEL)?)?;
    let tbs = cert.tbs_certificate();
    if tbs.subject_public_key_info() != &csr.info.public_key {
        return Err(bad(
            "the CA certified another public key than the card's request".into(),
        ));
    }
    let tbs_der = tbs.to_der().map_err(|e| bad(e.to_string()))?;
    if tbs.issuer() != ca.tbs_certificate().subject()
        || !crate::pki::issued_by(
            ca,
            &tbs_der,
            &cert.signature_algorithm().oid,
            cert.signature().raw_bytes(),
        )
    {
        return Err(bad(format!(
            "not issued by the profile's CA {}",
            ca.tbs_certificate().subject()
        )));
    }
    let now = std::time::SystemTime::now();
    let v = tbs.validity();
    if now < v.not_before.to_system_time() || now > v.not_after.to_system_time() {
        return Err(bad("not valid now".into()));
    }
    Ok(())
}

/// With an external CA, the second half: waits for both certificates in the exchange, checks
/// them, and writes them with the CA certificates to the card. On timeout the card stays in
/// progress ([`Error::AwaitingCa`]).
fn install_certificates<T: Transport>(
    sc: &mut SecureChannel<'_, T>,
    j: &super::profile::Jpki,
    issuer: &Issuer,
    record: &Record,
) -> Result<Vec<u8>> {
    use der::Encode;
    let Authority::External {
        auth_ca,
        sign_ca,
        requests,
        issued,
        timeout,
    } = &issuer.authority
    else {
        return Err(Error::Protocol(
            "certificates from the exchange are for an external CA".into(),
        ));
    };
    let files = ["auth", "sign"].map(|k| exchange_file(issued, record, k, "crt.pem"));
    let start = Instant::now();
    // A file that does not parse yet may be half written by a CA that does not rename into
    // place: it gets until the timeout.
    let [auth, sign] = loop {
        let read: Result<Vec<_>> = files.iter().map(|f| read_certificate(f)).collect();
        match read {
            Ok(certs) => match <[_; 2]>::try_from(certs) {
                Ok(pair) => break pair,
                Err(_) => return Err(Error::Protocol("two certificates expected".into())),
            },
            Err(e) if start.elapsed() >= *timeout => {
                if files.iter().all(|f| f.exists()) {
                    return Err(e);
                }
                return Err(Error::AwaitingCa(format!(
                    "no certificates for {} in {} after {} s (requests in {}); `kagi perso resume` continues the card",
                    record.id,
                    issued.display(),
                    timeout.as_secs(),
                    requests.display()
                )));
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    };
    for ((path, (_, cert)), (key, ca)) in files
        .iter()
        .zip([&auth, &sign])
        .zip([("auth", auth_ca), ("sign", sign_ca)])
    {
        check_issued(
            path,
            cert,
            &exchange_file(requests, record, key, "csr.pem"),
            ca,
        )?;
    }
    let (auth, sign) = (auth.0, sign.0);
    let der_err = |e: der::Error| Error::Protocol(e.to_string());
    let script = certificate_script(
        &auth,
        &auth_ca.to_der().map_err(der_err)?,
        &sign,
        &sign_ca.to_der().map_err(der_err)?,
    );
    manage::personalize(sc, &j.instance, &blocks(&script), false)?;
    Ok(auth)
}

/// The JPKI part of verification: the certificate reads back as issued, and a signature with
/// the new key verifies against it.
fn verify_jpki<T: Transport>(ch: &mut CardChannel<T>, issued: &Issued) -> Result<()> {
    use der::{Decode, Encode};
    use rsa::pkcs8::DecodePublicKey;
    use rsa::signature::Verifier;
    let e = |m: String| Error::Protocol(m);
    kagi::jpki::select(ch)?;
    let cert = kagi::jpki::read_der(ch, kagi::jpki::EF_AUTH_CERT)?;
    if cert != issued.auth_cert {
        return Err(e(
            "the authentication certificate reads back different".into()
        ));
    }
    let Some(auth_pin) = &issued.auth_pin else {
        // The PIN went to the mailer in an earlier run: the card's key was shown to match the
        // certificate by the request it signed.
        return kagi::jpki::select(ch);
    };
    let pin = zeroize::Zeroizing::new(auth_pin.as_bytes().to_vec());
    kagi::jpki::verify(ch, kagi::jpki::Pin::Auth, &pin)?;
    let challenge = b"kagi personalisation check";
    let sig = kagi::jpki::sign(
        ch,
        kagi::jpki::Pin::Auth,
        &kagi::jpki::sha256_digest_info(challenge),
    )?;
    let c = x509_cert::Certificate::from_der(&cert).map_err(|x| e(x.to_string()))?;
    let spki = c
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|x| e(x.to_string()))?;
    let key = rsa::PublicKey::from_public_key_der(&spki).map_err(|x| e(x.to_string()))?;
    let sig = rsa::pkcs1v15::Signature::try_from(sig.as_slice()).map_err(|x| e(x.to_string()))?;
    rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key)
        .verify(challenge, &sig)
        .map_err(|_| e("the new key's signature does not verify".into()))?;
    // Leave the PIN state cleared.
    kagi::jpki::select(ch)
}

/// The verification pass: production keys open a session, the card is in the profile's final
/// life-cycle state, the registry holds every domain and instance of the profile, each
/// supplementary domain opens with its provider's keys, and the transport keys no longer open
/// a channel on any of them.
pub fn verify<T: Transport>(
    ch: &mut CardChannel<T>,
    profile: &Profile,
    keys: &KeySets,
) -> Result<()> {
    let sd = gp::select_domain(ch, None)?;
    {
        let mut sc = production_session(ch, profile, keys)?;
        let isd = gp::get_status(&mut sc, StatusScope::IssuerDomain)?;
        if let Some(e) = isd.first()
            && e.life_cycle != profile.final_state
        {
            return Err(Error::Protocol(format!(
                "the card is in life-cycle state {:02X}, not {:02X}",
                e.life_cycle, profile.final_state
            )));
        }
        let apps = gp::get_status(&mut sc, StatusScope::Applications)?;
        for d in &profile.domains {
            if !apps.iter().any(|e| e.aid == d.instance) {
                return Err(Error::Protocol(format!(
                    "security domain {} is not on the card",
                    hex::encode_upper(&d.instance)
                )));
            }
        }
        for i in &profile.install {
            if !apps.iter().any(|e| e.aid == i.instance) {
                return Err(Error::Protocol(format!(
                    "{} is not on the card",
                    hex::encode_upper(&i.instance)
                )));
            }
        }
    }
    for d in &profile.domains {
        domain_session(ch, profile, keys, d)?;
        transport_refused(ch, keys, profile, &d.instance)?;
    }
    transport_refused(ch, keys, profile, &sd.aid)
}

/// Checks that the transport keys no longer open a session on the domain `aid`.
fn transport_refused<T: Transport>(
    ch: &mut CardChannel<T>,
    keys: &KeySets,
    profile: &Profile,
    aid: &[u8],
) -> Result<()> {
    match transport_session(ch, keys, profile, Some(aid)) {
        Err(e) if transport_keys_replaced(&e) => Ok(()),
        Ok(_) => Err(Error::Protocol(
            "the transport keys still open a channel".into(),
        )),
        Err(e) => Err(e),
    }
}

/// A factory-fresh simulated card with the transport keys and its own key diversification
/// data and card number (from the record id, so every card differs).
fn new_card(sh: &Shared<'_>, record: &Record) -> SimCard {
    let mut transport = sh.keys.transport.clone();
    transport.kvn = sh.profile.transport_kvn;
    let mut config = SimConfig::default().with_keys(vec![transport]);
    if sh.profile.card == CardType::Uicc {
        // A placeholder ICCID, replaced by one derived from the serial below.
        if let Ok(iccid) =
            card_wire::uicc::Iccid::with_check_digit(applet_sim::card::TEST_ICCID_BODY)
        {
            config = config.uicc(iccid);
        }
    }
    let config = config.with_serial(record.id.as_bytes());
    SimCard::powered(config)
}

/// Handles one record: a fresh card, or the inspection of a card caught mid-way.
fn handle(sh: &Shared<'_>, record: &Record, previous: Option<&Status>) -> Result<()> {
    let path = card_path(&sh.opts.out, &record.id);
    let image = sh.opts.keep_images.then_some(path.as_path());
    let (mut ch, progress) = match previous {
        Some(Status::InProgress { steps, begun, .. }) if path.exists() => {
            let mut card =
                SimCard::from_image(&path, None).map_err(|e| Error::Protocol(e.to_string()))?;
            card.power_on();
            (
                CardChannel::new(card),
                Progress {
                    done: steps.clone(),
                    begun: begun.clone(),
                },
            )
        }
        _ => {
            let ch = CardChannel::new(new_card(sh, record));
            if sh.opts.keep_images {
                std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
                    .map_err(|e| Error::Protocol(e.to_string()))?;
            }
            save(&ch, image)?;
            sh.log(Event::Claim {
                record: record.id.clone(),
                card: path.display().to_string(),
            })?;
            (ch, Progress::default())
        }
    };
    let result = run_card(sh, &mut ch, record, image, &progress)?;
    save(&ch, image)?;
    conclude(sh, record, result)
}

/// Personalises (or continues) and verifies one card, with its APDU log if asked for.
/// `Err` only for a log that cannot be written; the card's own outcome is the inner result.
fn run_card<T: Checkpoint>(
    sh: &Shared<'_>,
    ch: &mut CardChannel<T>,
    record: &Record,
    image: Option<&Path>,
    progress: &Progress,
) -> Result<Result<()>> {
    if let Some(dir) = &sh.opts.card_logs {
        let log = kagi::trace::FileTrace::create(&dir.join(format!("{}.log", record.id)))?;
        ch.set_trace(Some(Box::new(log)));
    }
    let result = if progress.done.is_empty() && progress.begun.is_empty() {
        personalise(sh, ch, record, image, progress).and_then(|issued| {
            if let Some(i) = &issued {
                verify_jpki(ch, i)?;
            }
            verify(ch, sh.profile, sh.keys)
        })
    } else {
        resume_card(sh, ch, record, image, progress)
    };
    ch.set_trace(None);
    Ok(result)
}

/// Journals a card's outcome.
fn conclude(sh: &Shared<'_>, record: &Record, result: Result<()>) -> Result<()> {
    match result {
        Ok(()) => sh.log(Event::Done {
            record: record.id.clone(),
        }),
        // Nothing to journal: the card stays in progress until the CA has answered.
        Err(Error::AwaitingCa(_)) => Ok(()),
        Err(Error::NeedsRework(reason)) => sh.log(Event::Rework {
            record: record.id.clone(),
            reason,
        }),
        Err(e) => sh.log(Event::Failed {
            record: record.id.clone(),
            reason: e.to_string(),
        }),
    }
}

/// Continues a card caught mid-way. A card that already passes verification is done; one
/// whose production keys are in place only lacks its final state; otherwise the steps the
/// journal does not show as done run again, with the card checked first where it can be.
fn resume_card<T: Checkpoint>(
    sh: &Shared<'_>,
    ch: &mut CardChannel<T>,
    record: &Record,
    path: Option<&Path>,
    progress: &Progress,
) -> Result<()> {
    if verify(ch, sh.profile, sh.keys).is_ok() {
        return Ok(());
    }
    // The production keys open a session: every earlier step was journaled before put-key
    // began, so only the final state may be missing.
    if let Ok(mut sc) = production_session(ch, sh.profile, sh.keys) {
        final_state(sh, &mut sc, path)?;
        drop(sc);
        return verify(ch, sh.profile, sh.keys);
    }
    if let Some(issued) = personalise(sh, ch, record, path, progress)? {
        verify_jpki(ch, &issued)?;
    }
    verify(ch, sh.profile, sh.keys)
}

/// Runs the batch's records on PC/SC reader stations, one per reader in `opts.readers`.
#[cfg(feature = "pcsc")]
fn run_readers(
    sh: &Shared<'_>,
    todo: VecDeque<(&Record, Option<Status>)>,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let work = readers::Work {
        fresh: Mutex::new(VecDeque::new()),
        waiting: Mutex::new(Default::default()),
    };
    for (record, previous) in todo {
        match previous {
            Some(Status::InProgress {
                card, steps, begun, ..
            }) => {
                // Claimed on a simulated card (an image path): no reader holds that card.
                if let (Some(cin), Ok(mut w)) = (readers::claimed_card(&card), work.waiting.lock())
                {
                    w.insert(cin.to_string(), (record, Progress { done: steps, begun }));
                }
            }
            _ => {
                if let Ok(mut q) = work.fresh.lock() {
                    q.push_back(record);
                }
            }
        }
    }
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    std::thread::scope(|s| {
        for reader in &sh.opts.readers {
            let (work, say, first_error) = (&work, &say, &first_error);
            s.spawn(move || {
                if let Err(e) = readers::station(sh, reader, work, say, bar)
                    && let Ok(mut slot) = first_error.lock()
                {
                    slot.get_or_insert(e);
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let left = work.waiting.lock().map(|w| w.len()).unwrap_or(0);
    if left > 0 {
        say(format!(
            "{left} card(s) caught mid-way were not seen again: they stay in progress; put them in a reader and resume"
        ));
    }
    Ok(())
}

#[cfg(not(feature = "pcsc"))]
fn run_readers(
    _sh: &Shared<'_>,
    _todo: VecDeque<(&Record, Option<Status>)>,
    _bar: &indicatif::ProgressBar,
) -> Result<()> {
    Err(Error::Protocol(
        "this kagi was built without PC/SC support (feature `pcsc`)".into(),
    ))
}

/// Runs (or, with `resume`, continues) a batch.
pub fn run(
    profile: &Profile,
    records: &[Record],
    bad: &[BadRecord],
    keys: &KeySets,
    opts: &Options,
    resume: bool,
) -> Result<Summary> {
    let start = Instant::now();
    let cpu_start = cpu_time();
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| Error::Protocol(format!("{}: {e}", opts.out.display())))?;
    let jpath = journal_path(&opts.out);
    if !resume && jpath.exists() {
        return Err(Error::Profile(format!(
            "{} already holds a batch journal: continue it with `kagi perso resume`, or choose another --out",
            opts.out.display()
        )));
    }
    if resume
        && let (Some(then), Some(now)) = (super::journal::batch_digests(&jpath)?, &opts.digests)
    {
        for (what, a, b) in [
            ("profile", &then.profile, &now.profile),
            ("input records", &then.input, &now.input),
        ] {
            if a != b {
                return Err(Error::Profile(format!(
                    "this batch was started with another {what} file (SHA-256 {a}, given {b}): resume it with the files it started with, or start a new batch with another --out"
                )));
            }
        }
    }
    let state = super::journal::replay(&jpath)?;
    let journal = Journal::open(&jpath)?;
    journal.append(&Event::Start {
        profile: profile.name.clone(),
        records: records.len(),
        profile_sha256: opts.digests.as_ref().map(|d| d.profile.clone()),
        input_sha256: opts.digests.as_ref().map(|d| d.input.clone()),
    })?;
    if !resume {
        for b in bad {
            journal.append(&Event::BadRecord {
                at: b.at.clone(),
                reason: b.reason.clone(),
            })?;
        }
    }
    let todo: VecDeque<(&Record, Option<Status>)> = records
        .iter()
        .filter_map(|r| match state.get(&r.id) {
            None => Some((r, None)),
            Some(s @ Status::InProgress { .. }) => Some((r, Some(s.clone()))),
            Some(_) => None,
        })
        .collect();
    let handled = todo.len();
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(handled as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} cards {per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let issuer = match &profile.jpki {
        Some(j) => Some(Issuer::open(j, &opts.out)?),
        None => None,
    };
    if let Some(dir) = &opts.card_logs {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Protocol(format!("{}: {e}", dir.display())))?;
    }
    let sh = Shared {
        profile,
        keys,
        opts,
        journal,
        issuer,
        times: Mutex::new(Default::default()),
    };
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let todo = if opts.readers.is_empty() {
        todo
    } else {
        run_readers(&sh, todo, &bar)?;
        VecDeque::new()
    };
    let queue = Mutex::new(todo);
    std::thread::scope(|s| {
        for _ in 0..opts.stations.max(1) {
            s.spawn(|| {
                loop {
                    if opts.stopping() {
                        break;
                    }
                    let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                    let Some((record, previous)) = next else {
                        break;
                    };
                    if let Err(e) = handle(&sh, record, previous.as_ref()) {
                        // A journal or file failure stops the station; the batch can resume.
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                        break;
                    }
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let final_state = super::journal::replay(&jpath)?;
    let summary = Summary {
        done: final_state
            .values()
            .filter(|s| matches!(s, Status::Done))
            .count(),
        rework: final_state
            .values()
            .filter(|s| matches!(s, Status::Rework(_)))
            .count(),
        failed: final_state
            .values()
            .filter(|s| matches!(s, Status::Failed(_)))
            .count(),
        in_progress: final_state
            .values()
            .filter(|s| matches!(s, Status::InProgress { .. }))
            .count(),
        bad_records: bad.len(),
        interrupted: opts.stopping()
            && records.iter().any(|r| {
                !matches!(
                    final_state.get(&r.id),
                    Some(Status::Done | Status::Rework(_) | Status::Failed(_))
                )
            }),
        handled,
        seconds: start.elapsed().as_secs_f64(),
        cpu_ms_per_card: (cpu_time().saturating_sub(cpu_start)).as_secs_f64() * 1000.0
            / handled.max(1) as f64,
        step_ms: sh
            .times
            .lock()
            .map(|t| {
                t.iter()
                    .map(|(k, (n, us))| (k.clone(), *us as f64 / 1000.0 / (*n).max(1) as f64))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let cards = super::journal::claims(&jpath)?;
    write_reports(&opts.out, records, bad, &final_state, &cards)?;
    Ok(summary)
}

/// `OUT/report.csv` and `OUT/report.json`: one row per input record.
fn write_reports(
    out: &Path,
    records: &[Record],
    bad: &[BadRecord],
    state: &std::collections::BTreeMap<String, Status>,
    cards: &BTreeMap<String, String>,
) -> Result<()> {
    let mut rows = Vec::new();
    for r in records {
        let (status, detail) = match state.get(&r.id) {
            Some(Status::Done) => ("done", String::new()),
            Some(Status::Rework(why)) => ("rework", why.clone()),
            Some(Status::Failed(why)) => ("failed", why.clone()),
            Some(Status::InProgress { steps, .. }) => ("in-progress", steps.join(" ")),
            None => ("pending", String::new()),
        };
        let card = cards.get(&r.id).cloned().unwrap_or_default();
        rows.push(
            serde_json::json!({"record": r.id, "status": status, "card": card, "detail": detail}),
        );
    }
    for b in bad {
        rows.push(
            serde_json::json!({"record": b.at, "status": "bad-record", "card": "", "detail": b.reason}),
        );
    }
    let io = |e: std::io::Error| Error::Protocol(format!("report: {e}"));
    let mut csv = ::csv::Writer::from_path(out.join("report.csv"))
        .map_err(|e| Error::Protocol(e.to_string()))?;
    csv.write_record(["record", "status", "card", "detail"])
        .map_err(|e| Error::Protocol(e.to_string()))?;
    for row in &rows {
        let f = |k: &str| row[k].as_str().unwrap_or_default().to_string();
        csv.write_record([f("record"), f("status"), f("card"), f("detail")])
            .map_err(|e| Error::Protocol(e.to_string()))?;
    }
    csv.flush().map_err(io)?;
    let json = serde_json::json!({"schema_version": 1, "cards": rows});
    std::fs::write(
        out.join("report.json"),
        serde_json::to_vec_pretty(&json).unwrap_or_default(),
    )
    .map_err(io)
}
