//! `kagi tsm load --outbox`: the load generator for the three organisations of seed 004 (an
//! SP-TSM with its MNO-TSM and JPKI issuer). Before the clock starts it makes blank SIMs (no
//! provider domain: the MNO-TSM creates it), registers them with the MNO-TSM as the operator,
//! and has one simulated My Number card sign an application per SIM (each with its own mail
//! address, so each session finds its own access code). A session is then the whole
//! application-to-credential path: the provider hands the application to the SP-TSM (which
//! asks the issuer for the credential and mails the access code), the user reads the code
//! from the SP-TSM's maildir outbox, and the relay runs the download (SP-TSM, MNO-TSM,
//! SP-TSM).

use super::load_job::{Job, PASSWORD, Prepared, phone_entry};
use crate::Failure;
use kagi::jpki::{self, Pin};
use kagi_certs::application::{Application, Body};
use kagi_online::tsm::provider;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tsm_protocol::control::{AppletRef, CardTarget, ControlRequest};
use tsm_protocol::receipt::CertKey;
use zeroize::Zeroizing;

/// `sessions` SIMs (their keys certified by the manufacturer CA kept in `maker_dir`) and
/// applications to `provider`, signed on a My Number card of the CAs in `ca_dir`.
pub fn prepare(
    sessions: usize,
    ca_dir: &Path,
    run: &str,
    maker_dir: &Path,
    provider: &str,
) -> Result<Vec<Prepared>, Failure> {
    let maker = test_pki::store::load_or_create(maker_dir, "manufacturer-ca", "card manufacturer")?;
    let (auth, sign) = crate::jpki::cas(ca_dir)?;
    let now = SystemTime::now();
    let identity = kagi_fixtures::jpki::DemoIdentity::generate_with(
        auth,
        sign,
        now,
        now + Duration::from_secs(365 * 86400),
    )?;
    let mut my_number =
        kagi::channel::CardChannel::new(kagi_fixtures::jpki::demo_card_for(None, &identity)?);
    jpki::select(&mut my_number)?;
    let sign_pin = Zeroizing::new(kagi_fixtures::jpki::DEMO_SIGN_PIN.as_bytes().to_vec());
    jpki::verify(&mut my_number, Pin::Sign, &sign_pin)?;
    let certificate = jpki::read_der(&mut my_number, jpki::EF_SIGN_CERT)?;
    let key = CertKey::from_certificate(&certificate)?;
    let grant = provider::access_grant(PASSWORD, 5, 600_000)?;
    let entry = phone_entry(&grant)?;
    let mut out = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let sim = kagi_fixtures::sim::blank_with(format!("load3-{run}-{i}").as_bytes(), &maker)?;
        let contact = format!("load-{run}-{i}@example.jp");
        let body = Body::new(&sim.iccid, provider, "", &contact, SystemTime::now())?;
        let message = body.signed_bytes()?;
        // The signature password is asked for each signature, as the card requires.
        jpki::verify(&mut my_number, Pin::Sign, &sign_pin)?;
        let signature = jpki::sign(&mut my_number, Pin::Sign, &key.to_be_signed(&message))?;
        let application = Application {
            body,
            certificate: certificate.clone(),
            signature,
        }
        .encode()?;
        let request = ControlRequest::Apply {
            subscriber_ref: sim.iccid.clone(),
            card: CardTarget {
                iccid: sim.iccid.clone(),
            },
            applet: AppletRef::jpki(),
            application,
            access: grant.clone(),
        };
        out.push(Prepared::new(
            sim,
            Job::Apply { request, contact },
            entry.clone(),
        ));
    }
    Ok(out)
}

/// The access codes the SP-TSM mailed, by recipient, read from its maildir outbox by a
/// thread of its own (each mail is taken out of `new/` once read).
pub struct Mailbox {
    codes: Arc<Mutex<HashMap<String, Zeroizing<String>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mailbox {
    /// Starts reading `outbox/new`.
    pub fn watch(outbox: &Path) -> Mailbox {
        let codes = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let new = outbox.join("new");
        let thread = {
            let (codes, stop) = (codes.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for (to, code) in scan(&new) {
                        if let Ok(mut c) = codes.lock() {
                            c.insert(to, code);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Mailbox {
            codes,
            stop,
            thread: Some(thread),
        }
    }

    /// The code mailed to `contact`, waiting up to `wait` for it.
    pub async fn code_for(&self, contact: &str, wait: Duration) -> Option<Zeroizing<String>> {
        let until = Instant::now() + wait;
        loop {
            if let Some(c) = self.codes.lock().ok().and_then(|mut m| m.remove(contact)) {
                return Some(c);
            }
            if Instant::now() > until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The (recipient, access code) of each mail in `new`, removing the files read.
fn scan(new: &Path) -> Vec<(String, Zeroizing<String>)> {
    let Ok(dir) = std::fs::read_dir(new) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for path in dir.flatten().map(|e| e.path()).collect::<Vec<PathBuf>>() {
        let Ok(text) = std::fs::read_to_string(&path).map(Zeroizing::new) else {
            continue;
        };
        let to = text
            .lines()
            .find_map(|l| l.strip_prefix("To: "))
            .map(|t| t.trim().to_string());
        let code = text
            .lines()
            .find_map(|l| l.strip_prefix("Access code: "))
            .map(|c| Zeroizing::new(c.trim().to_string()));
        if let (Some(to), Some(code)) = (to, code) {
            out.push((to, code));
            let _ = std::fs::remove_file(&path);
        }
    }
    out
}
