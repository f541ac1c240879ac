//! Broker credentials used only inside SoftHSM2 (issue #17): generated there, wrapped under
//! the KEK, unwrapped for each use as sensitive, non-extractable session objects and
//! destroyed. The results verify with independent code (the `cmac`, `p256` and `rsa`
//! crates, against the key the service was given or the public key it got); the token's
//! persistent objects stay the KEKs only; the session objects seen during acts are
//! sensitive and not extractable; a process that acts holds no credential value in memory.
//!
//! PKCS#11 reads `SOFTHSM2_CONF` once per process, so the test runs itself again as
//! children with a private token's configuration in their environment.

use broker_protocol::envelope::{Envelope, KeyKind, KeyUse, SealedRecord};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use kagi_hsm::{HsmConfig, HsmEnvelope, create_kek};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const MODE: &str = "KAGI_HSM_INSIDE_MODE";
const PIN: &str = "KAGI_HSM_INSIDE_PIN";
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn config() -> HsmConfig {
    HsmConfig {
        module: PathBuf::from(MODULE),
        token: "kagi".into(),
        key: String::new(),
    }
}

/// The test's own logged-in session (the same process's PKCS#11 context as the store's:
/// session objects are visible to every session of the application).
fn own_session(pin: &str) -> Session {
    let ctx = Pkcs11::new(MODULE).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(e) => panic!("{e}"),
    }
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let s = ctx.open_rw_session(slot).unwrap();
    match s.login(UserType::User, Some(&AuthPin::new(pin.into()))) {
        Ok(()) => {}
        Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("{e}"),
    }
    s
}

fn count(s: &Session, token: bool) -> usize {
    s.find_objects(&[Attribute::Token(token)]).unwrap().len()
}

fn aad(card: usize, kind: KeyKind) -> Vec<u8> {
    format!("kagi-broker credential\0card-{card}\0{kind:?}\01").into_bytes()
}

fn cmac(key: &[u8], m: &[u8]) -> Vec<u8> {
    use cmac::Mac;
    let mut mac = <cmac::Cmac<aes::Aes128> as cmac::KeyInit>::new_from_slice(key).unwrap();
    mac.update(m);
    mac.finalize().into_bytes().to_vec()
}

/// What the service was given at enrolment, and how it checks an act.
enum Side {
    Mac(Vec<u8>),
    P256(p256::ecdsa::VerifyingKey),
    Rsa(rsa::PublicKey),
}

fn side(kind: KeyKind, g: &broker_protocol::envelope::Generated) -> Side {
    use p256::pkcs8::DecodePublicKey;
    match kind {
        KeyKind::Aes128 => Side::Mac(g.shared.as_ref().unwrap().to_vec()),
        KeyKind::P256 => Side::P256(
            p256::ecdsa::VerifyingKey::from_public_key_der(g.public_key.as_ref().unwrap()).unwrap(),
        ),
        KeyKind::Rsa2048 => {
            use rsa::pkcs8::DecodePublicKey as _;
            Side::Rsa(rsa::PublicKey::from_public_key_der(g.public_key.as_ref().unwrap()).unwrap())
        }
    }
}

fn key_use<'a>(side: &Side, c: &'a [u8]) -> KeyUse<'a> {
    match side {
        Side::Mac(_) => KeyUse::Cmac(c),
        Side::P256(_) => KeyUse::EcdsaSha256(c),
        Side::Rsa(_) => KeyUse::RsaSha256(c),
    }
}

fn act(env: &HsmEnvelope, aad: &[u8], r: &SealedRecord, side: &Side, c: &[u8]) -> bool {
    try_act(env, aad, r, side, c).unwrap()
}

/// [`act`], with the token's refusal as an error.
fn try_act(
    env: &HsmEnvelope,
    aad: &[u8],
    r: &SealedRecord,
    side: &Side,
    c: &[u8],
) -> Result<bool, String> {
    let out = env
        .use_key(aad, r, key_use(side, c))
        .map_err(|e| e.to_string())?
        .expect("a record of the in-HSM form");
    Ok(match side {
        Side::Mac(k) => out == cmac(k, c),
        Side::P256(vk) => {
            use p256::ecdsa::signature::Verifier as _;
            let sig = p256::ecdsa::Signature::from_slice(&out).unwrap();
            vk.verify(c, &sig).is_ok()
        }
        Side::Rsa(pk) => {
            use rsa::signature::Verifier as _;
            let sig = rsa::pkcs1v15::Signature::try_from(out.as_slice()).unwrap();
            rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(pk.clone())
                .verify(c, &sig)
                .is_ok()
        }
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Generation, acts, binding, rotation, token objects, session-object attributes, figures.
fn main_body(pin: &str) {
    // The store's crate initialises the library first; the test's session shares it.
    create_kek(&config(), pin, "k1").unwrap();
    let s = own_session(pin);
    // A KEK of the older kind (encrypt/decrypt only): its records keep the data-key form.
    s.generate_key(
        &cryptoki::mechanism::Mechanism::AesKeyGen,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Label(b"broker-kek-k0".to_vec()),
        ],
    )
    .unwrap();
    let env = HsmEnvelope::open(&config(), pin).unwrap();
    let token_before = count(&s, true);
    assert_eq!(token_before, 2, "the two KEKs");

    // Cards × services: every result verifies with the service's own key material.
    let kinds = [KeyKind::Aes128, KeyKind::P256, KeyKind::Rsa2048];
    let mut creds = Vec::new();
    for card in 0..6 {
        for kind in kinds {
            if kind == KeyKind::Rsa2048 && card >= 2 {
                continue; // RSA-2048 generation is slow in SoftHSM2
            }
            let a = aad(card, kind);
            let g = env.generate("k1", &a, kind).unwrap().expect("k1 wraps");
            assert!(g.record.in_store_kind() == Some(kind) && g.record.nonce.is_empty());
            assert_eq!(g.shared.is_some(), kind == KeyKind::Aes128);
            let sd = side(kind, &g);
            assert!(act(&env, &a, &g.record, &sd, b"challenge"), "{kind:?}");
            creds.push((a, g.record, sd));
        }
    }
    assert_eq!(
        count(&s, true),
        token_before,
        "no persistent object per credential"
    );
    assert_eq!(count(&s, false), 0, "every session key destroyed");

    // A record moved to another row, or relabelled with another KEK, does not unwrap.
    let (a0, r0, _) = &creds[0];
    assert!(
        env.use_key(&aad(99, KeyKind::Aes128), r0, KeyUse::Cmac(b"x"))
            .is_err()
    );
    let mut lie = r0.clone();
    lie.kek = "k0".into();
    assert!(env.use_key(a0, &lie, KeyUse::Cmac(b"x")).is_err());
    // The wrong use for the key: refused, and the unwrapped key is destroyed all the same.
    let e = env.use_key(a0, r0, KeyUse::EcdsaSha256(b"x")).unwrap_err();
    assert!(e.to_string().contains("Aes128"), "{e}");
    assert_eq!(count(&s, false), 0, "destroyed on error too");
    // Not opened in memory, and the service's AES key is not read out again.
    let e = env.open(a0, r0).unwrap_err();
    assert!(e.to_string().contains("inside the HSM"), "{e}");
    let e = env.shared_secret(a0, r0).unwrap_err();
    assert!(e.to_string().contains("rotate the service key"), "{e}");
    for (a, r, _) in &creds {
        env.check(a, r).unwrap();
    }

    // During acts, no session key's value is ever readable. (SoftHSM2 makes an unwrapped
    // object visible while it applies the template attribute by attribute, the value last,
    // and reuses handles: a watcher sees CKA_SENSITIVE still false on objects being built,
    // so sensitivity is checked by the store after each C_UnwrapKey instead.)
    let mut last = std::collections::BTreeMap::new();
    let mut readable = 0usize;
    let refused = std::thread::scope(|sc| {
        // Watched until the acting thread ends — done, or failed (its panic then fails the
        // test when the scope ends, instead of the watcher waiting for ever). Every result
        // the token gives must verify; the token may refuse an act while the watcher reads
        // the attributes of the key being unwrapped (SoftHSM2 once answered
        // CKR_MECHANISM_INVALID to C_SignInit here, under CI load): counted, not failed.
        let acting = sc.spawn(|| {
            let mut refused = Vec::new();
            for i in 0..600 {
                let (a, r, sd) = &creds[i % creds.len()];
                match try_act(&env, a, r, sd, &(i as u32).to_be_bytes()) {
                    Ok(verified) => assert!(verified, "act {i}: the result does not verify"),
                    Err(e) => refused.push(e),
                }
            }
            refused
        });
        while !acting.is_finished() {
            for h in s.find_objects(&[Attribute::Token(false)]).unwrap() {
                let Ok(attrs) = s.get_attributes(
                    h,
                    &[
                        AttributeType::KeyType,
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                        AttributeType::Value,
                    ],
                ) else {
                    continue; // destroyed meanwhile
                };
                let (mut sens, mut ext, mut kt) = (None, None, None);
                for x in attrs {
                    match x {
                        Attribute::KeyType(v) => kt = Some(v),
                        Attribute::Sensitive(v) => sens = Some(v),
                        Attribute::Extractable(v) => ext = Some(v),
                        Attribute::Value(v) if !v.is_empty() => readable += 1,
                        _ => {}
                    }
                }
                let e = last.entry(h.handle()).or_insert((0usize, None, None, None));
                *e = (e.0 + 1, kt, sens, ext);
            }
        }
        match acting.join() {
            Ok(refused) => refused,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
    let seen: usize = last.values().map(|v| v.0).sum();
    if !refused.is_empty() {
        println!(
            "{} of 600 acts refused by the token while watched, e.g. {}",
            refused.len(),
            refused[0]
        );
    }
    assert!(
        refused.len() <= 60,
        "most acts must go through while watched: {} refused, e.g. {}",
        refused.len(),
        refused[0]
    );
    println!(
        "session keys seen during acts: {seen} observations of {} handles",
        last.len()
    );
    assert!(seen > 0, "the watcher saw no session key");
    // No value was ever readable (PKCS#11 hides CKA_VALUE of a sensitive or non-extractable
    // key); that every key came out of C_UnwrapKey sensitive and not extractable is checked
    // by the store itself after each unwrap (the acts above would have failed otherwise).
    assert_eq!(readable, 0, "a session key's value was readable");

    // KEK rotation inside the token: every record moves to k2 and still acts; the old
    // KEK's label on a moved record does not unwrap it.
    create_kek(&config(), pin, "k2").unwrap();
    let mut moved = Vec::new();
    for (a, r, sd) in &creds {
        let n = env.rewrap_row(a, r, "k2").unwrap();
        assert_eq!(n.kek, "k2");
        assert_ne!(n.ciphertext, r.ciphertext);
        assert!(act(&env, a, &n, sd, b"after rotation"));
        let mut lie = n.clone();
        lie.kek = "k1".into();
        assert!(env.use_key(a, &lie, KeyUse::Cmac(b"x")).is_err());
        moved.push((a.clone(), n, ()));
    }
    assert_eq!(
        count(&s, true),
        token_before + 1,
        "the KEKs only (k0, k1, k2)"
    );
    assert_eq!(count(&s, false), 0);

    // A KEK that may not wrap: generation falls back (None), records keep the data-key
    // form, are used the old way, and rotate to a wrapping KEK keeping their form.
    assert!(
        env.generate("k0", b"row", KeyKind::Aes128)
            .unwrap()
            .is_none()
    );
    let old = env.seal("k0", b"row", b"old secret").unwrap();
    assert!(
        env.use_key(b"row", &old, KeyUse::Cmac(b"x"))
            .unwrap()
            .is_none()
    );
    let old2 = env.rewrap_row(b"row", &old, "k2").unwrap();
    assert_eq!(env.open(b"row", &old2).unwrap().as_slice(), b"old secret");
    assert!(old2.in_store_kind().is_none());
    // An in-HSM record cannot move under a KEK that may not wrap.
    assert!(env.rewrap_row(&moved[0].0, &moved[0].1, "k0").is_err());

    // Figures: one thread, acts of each kind (lookup not included: the store only).
    for kind in kinds {
        let (a, r, sd) = creds.iter().find(|c| c.2.kind() == kind).unwrap();
        let n = if kind == KeyKind::Rsa2048 { 300 } else { 1000 };
        let mut ms = Vec::with_capacity(n);
        let t0 = std::time::Instant::now();
        for i in 0..n {
            let c = (i as u64).to_be_bytes();
            let t = std::time::Instant::now();
            env.use_key(a, r, key_use(sd, &c)).unwrap().unwrap();
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let total = t0.elapsed().as_secs_f64();
        ms.sort_by(|x, y| x.total_cmp(y));
        println!(
            "in-HSM {kind:?}: {n} acts, {:.0}/s, p50 {:.3} ms, p99 {:.3} ms",
            n as f64 / total,
            percentile(&ms, 0.5),
            percentile(&ms, 0.99)
        );
    }
    old_form_figures(&env);
}

/// The same figures for records of the data-key form (the data key unwrapped in the token,
/// the credential opened and used in this process), for comparison.
fn old_form_figures(env: &HsmEnvelope) {
    use p256::ecdsa::signature::Signer as _;
    let aes = [5u8; 16];
    let d = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
    let recs = [
        env.seal("k0", b"old-aes", &aes).unwrap(),
        env.seal("k0", b"old-p256", &d.to_bytes()).unwrap(),
    ];
    for (i, name) in ["Aes128", "P256"].iter().enumerate() {
        let aad: &[u8] = if i == 0 { b"old-aes" } else { b"old-p256" };
        let mut ms = Vec::with_capacity(1000);
        let t0 = std::time::Instant::now();
        for n in 0..1000u32 {
            let c = n.to_be_bytes();
            let t = std::time::Instant::now();
            let secret = env.open(aad, &recs[i]).unwrap();
            if i == 0 {
                std::hint::black_box(cmac(&secret, &c));
            } else {
                let k = p256::ecdsa::SigningKey::from_slice(&secret).unwrap();
                let sig: p256::ecdsa::Signature = k.sign(&c);
                std::hint::black_box(sig);
            }
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let total = t0.elapsed().as_secs_f64();
        ms.sort_by(|x, y| x.total_cmp(y));
        println!(
            "data-key form {name}: 1000 acts, {:.0}/s, p50 {:.3} ms, p99 {:.3} ms",
            1000.0 / total,
            percentile(&ms, 0.5),
            percentile(&ms, 0.99)
        );
    }
}

impl Side {
    fn kind(&self) -> KeyKind {
        match self {
            Side::Mac(_) => KeyKind::Aes128,
            Side::P256(_) => KeyKind::P256,
            Side::Rsa(_) => KeyKind::Rsa2048,
        }
    }
}

/// Imports the known credentials (AES key, P-256 scalar, hex on stdin) into records of the
/// in-HSM form, written to stdout as hex lines.
fn import_body(pin: &str) {
    create_kek(&config(), pin, "m1").unwrap();
    let env = HsmEnvelope::open(&config(), pin).unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let mut vals = line.split_whitespace().map(|h| hex::decode(h).unwrap());
    let (aes, d) = (vals.next().unwrap(), vals.next().unwrap());
    for (kind, v, row) in [
        (KeyKind::Aes128, aes, b"mem-aes"),
        (KeyKind::P256, d, b"mem-p25"),
    ] {
        let r = env.import_credential("m1", row, kind, &v).unwrap();
        println!(
            "RECORD {} {}",
            hex::encode(&r.wrapped_dek),
            hex::encode(&r.ciphertext)
        );
    }
}

/// Acts with the imported records (read from stdin), prints the results and READY, then
/// waits for its parent to search its memory.
fn act_body(pin: &str) {
    let env = HsmEnvelope::open(&config(), pin).unwrap();
    let stdin = std::io::stdin();
    let mut recs = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        stdin.read_line(&mut line).unwrap();
        let mut p = line
            .split_whitespace()
            .skip(1)
            .map(|h| hex::decode(h).unwrap());
        recs.push(SealedRecord {
            kek: "m1".into(),
            wrapped_dek: p.next().unwrap(),
            nonce: Vec::new(),
            ciphertext: p.next().unwrap(),
        });
    }
    let mut out = std::io::stdout();
    for i in 0..200u32 {
        let c = i.to_be_bytes();
        let mac = env
            .use_key(b"mem-aes", &recs[0], KeyUse::Cmac(&c))
            .unwrap()
            .unwrap();
        let sig = env
            .use_key(b"mem-p25", &recs[1], KeyUse::EcdsaSha256(&c))
            .unwrap()
            .unwrap();
        if i == 199 {
            writeln!(out, "RESULT {} {}", hex::encode(mac), hex::encode(sig)).unwrap();
        }
    }
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    let mut wait = String::new();
    let _ = stdin.read_line(&mut wait);
}

/// Every readable region of a process's memory.
fn memory_of(pid: u32) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut all = Vec::new();
    for l in maps.lines() {
        let mut f = l.split_whitespace();
        let (range, perms) = (f.next().unwrap(), f.next().unwrap());
        if !perms.starts_with('r') || l.ends_with("[vvar]") || l.ends_with("[vsyscall]") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_ok() && mem.read_exact(&mut buf).is_ok() {
            all.extend_from_slice(&buf);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn child(dir: &Path, pin: &str, mode: &str, name: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
        .env(MODE, mode)
        .env(PIN, pin);
    c
}

fn token(name: &str) -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("kagi-hsm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let init = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/softhsm-init.sh"))
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let pin = std::fs::read_to_string(dir.join("user.pin")).unwrap();
    (dir, pin.trim().to_string())
}

#[test]
fn broker_keys_are_used_only_inside_softhsm() {
    if let (Ok(pin), Ok(mode)) = (std::env::var(PIN), std::env::var(MODE)) {
        if mode == "main" {
            main_body(&pin);
        }
        return;
    }
    let (dir, pin) = token("inside");
    let out = child(
        &dir,
        &pin,
        "main",
        "broker_keys_are_used_only_inside_softhsm",
    )
    .output()
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_process_acting_in_the_hsm_holds_no_credential_value() {
    const NAME: &str = "a_process_acting_in_the_hsm_holds_no_credential_value";
    if let (Ok(pin), Ok(mode)) = (std::env::var(PIN), std::env::var(MODE)) {
        match mode.as_str() {
            "import" => import_body(&pin),
            "act" => act_body(&pin),
            _ => {}
        }
        return;
    }
    let (dir, pin) = token("memory");
    // Known values, made here: the importing child gets them, the acting child never does.
    let mut aes = [0u8; 16];
    let mut d = [0u8; 32];
    getrandom::fill(&mut aes).unwrap();
    getrandom::fill(&mut d).unwrap();
    d[0] &= 0x7F; // below the P-256 order
    let mut imp = child(&dir, &pin, "import", NAME)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(
        imp.stdin.take().unwrap(),
        "{} {}",
        hex::encode(aes),
        hex::encode(d)
    )
    .unwrap();
    let out = imp.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.find("RECORD ").map(|i| l[i..].to_string()))
        .collect();
    assert_eq!(records.len(), 2, "{}", String::from_utf8_lossy(&out.stdout));

    let mut actor = child(&dir, &pin, "act", NAME)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to = actor.stdin.take().unwrap();
    for r in &records {
        writeln!(to, "{r}").unwrap();
    }
    let mut from = BufReader::new(actor.stdout.take().unwrap());
    let mut result = None;
    let mut line = String::new();
    while from.read_line(&mut line).unwrap() > 0 {
        if let Some(i) = line.find("RESULT ") {
            result = Some(line[i + 7..].trim().to_string());
        }
        if line.starts_with("READY") {
            break;
        }
        line.clear();
    }
    let result = result.expect("the acting child printed its results");
    let mem = memory_of(actor.id());
    drop(to);
    let _ = actor.wait();

    // The acts were right (checked with the values only this process and the importer had).
    let mut r = result.split_whitespace().map(|h| hex::decode(h).unwrap());
    let (mac, sig) = (r.next().unwrap(), r.next().unwrap());
    assert_eq!(mac, cmac(&aes, &199u32.to_be_bytes()));
    {
        use p256::ecdsa::signature::Verifier as _;
        let vk = *p256::ecdsa::SigningKey::from_slice(&d)
            .unwrap()
            .verifying_key();
        let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        vk.verify(&199u32.to_be_bytes(), &sig).unwrap();
    }
    // The search works: the wrapped records the child read are in its memory.
    let wrapped = hex::decode(records[0].split_whitespace().nth(2).unwrap()).unwrap();
    assert!(
        mem.len() > 1 << 20,
        "read {} bytes of the child's memory",
        mem.len()
    );
    assert!(
        contains(&mem, &wrapped),
        "the control value is not found: the search is broken"
    );
    // The credentials are not.
    assert!(
        !contains(&mem, &aes),
        "the AES credential is in the acting process's memory"
    );
    assert!(
        !contains(&mem, &d),
        "the P-256 scalar is in the acting process's memory"
    );
    println!("searched {} bytes of the acting process", mem.len());
    let _ = std::fs::remove_dir_all(&dir);
}
