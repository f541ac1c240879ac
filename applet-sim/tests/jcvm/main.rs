//! Java Card applets from CAP files in the simulator: LOAD links them against the native API,
//! INSTALL runs their `install`, SELECT and commands go through the VM, objects persist in the
//! card's store (images, transactions, tearing). The CAP files are real: GlobalPlatformPro's
//! empty applet, IsoApplet, and kagi's own conformance applets (sources in `tests/jc/`).

use applet_sim::applet::Aid;
use applet_sim::load_file;
use applet_sim::registry::{self, RegistryEntry, app_state};
use applet_sim::rng::CardRng;
use applet_sim::{Runtime, Store};
use kagi_cap::CapFile;
use std::path::Path;

mod contexts;

const ISD: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];

fn cap(rel: &str) -> CapFile {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    CapFile::from_path(&p).unwrap()
}

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).unwrap()
}

/// Loads `cap` into `store` as INSTALL [for load] + LOAD would; returns the package AID.
fn load(store: &mut Store, cap: &CapFile) -> Result<Aid, card_wire::sw::StatusWord> {
    load_block(store, cap, false)
}

/// [`load`], with the Descriptor component in the load file when `descriptor` (as `kagi gp
/// install` loads by default).
fn load_block(
    store: &mut Store,
    cap: &CapFile,
    descriptor: bool,
) -> Result<Aid, card_wire::sw::StatusWord> {
    let block = cap.load_file_data_block(descriptor);
    let elf = Aid::new(cap.package_aid()).unwrap();
    let isd = Aid::new(&ISD).unwrap();
    let (lf, v) = load_file::accept(store, &block, &elf, &isd)?;
    load_file::record(store, &lf, v, &block).unwrap();
    Ok(elf)
}

/// INSTALL [for install and make selectable] of module `m` of `cap` as `app`.
fn install(
    store: &mut Store,
    cap: &CapFile,
    m: usize,
    app: &[u8],
    params: &[u8],
) -> Result<(), card_wire::sw::StatusWord> {
    let elf = Aid::new(cap.package_aid()).unwrap();
    let module = Aid::new(&cap.applets()[m].aid).unwrap();
    let app = Aid::new(app).unwrap();
    load_file::install_cap(store, &elf, &module, &app, &[0], params)?;
    // The card manager writes the registry entry in a transaction after `install` ran.
    let entry = RegistryEntry {
        aid: app,
        class: registry::CAP_CLASS.into(),
        life_cycle: app_state::SELECTABLE,
        privileges: [0; 3],
        sd: Some(Aid::new(&ISD).unwrap()),
        elf: Some(elf),
        params: params.to_vec(),
    };
    store.atomically(|s| registry::put_entry(s, &entry))?;
    Ok(())
}

fn runtime(store: Store) -> Runtime {
    let mut rt = Runtime::new(store, CardRng::seeded(5), true);
    rt.reset();
    rt
}

fn tx(rt: &mut Runtime, apdu: &str) -> String {
    hex::encode_upper(rt.process(&h(apdu)).expect("the card answers"))
}

const EMPTY: &str = "../cap/tests/data/gppro-empty/Empty_0102030405_8d5ac9e2_2.2.1.cap";
const CONF: &str = "../jcvm/tests/jc/conf.cap";
const ISO: &str = "../cap/tests/data/isoapplet-v0/isoapplet.cap";

#[test]
fn gppro_empty_applet_installs_and_runs_its_process() {
    let c = cap(EMPTY);
    let mut store = Store::new(1 << 20);
    let t = std::time::Instant::now();
    load(&mut store, &c).unwrap();
    let app = h("0102030405060708");
    install(&mut store, &c, 0, &app, &h("C900")).unwrap();
    eprintln!(
        "MEASURE gppro-empty LOAD+INSTALL (direct, no SCP03): {:?}",
        t.elapsed()
    );
    // The instance's objects are in its package's context.
    let context = format!("jcctx/{}/jc/o/", hex::encode_upper(c.package_aid()));
    assert!(!store.keys(&context).is_empty());
    let mut rt = runtime(store);
    // Its process() throws CryptoException 0x6666 for every command, SELECT included (the
    // applet's source, GlobalPlatformPro testapplets/empty/Empty.java): 6F00 as on a card.
    assert_eq!(tx(&mut rt, "00A4040008 0102030405060708 00"), "6F00");
}

#[test]
fn a_cap_applet_selects_processes_and_survives_a_card_image() {
    let c = cap(CONF);
    let mut store = Store::new(1 << 20);
    load(&mut store, &c).unwrap();
    let app = h("F06B616769010101");
    install(&mut store, &c, 0, &app, &h("C900")).unwrap();
    let mut rt = runtime(store);
    assert_eq!(tx(&mut rt, "00A4040008 F06B616769010101 00"), "9000");
    assert_eq!(tx(&mut rt, "8011000003 414243 00"), "4142439000");
    // The persistent counter: 1, then 2 (INS 0D answers counter, int counter, static).
    assert_eq!(tx(&mut rt, "800D000000"), "0001000186A000089000");
    assert_eq!(tx(&mut rt, "800D000000"), "000200030D4000099000");
    // An ISOException's reason is the status word.
    assert_eq!(tx(&mut rt, "800C6A8200"), "6A82");
    // Unbounded recursion: 6F00, and the runtime tells why and where.
    assert_eq!(tx(&mut rt, "800B000000"), "6F00");
    let why = rt.diagnostic(&Aid::new(&app).unwrap()).unwrap();
    // (The load file here has no Descriptor component, so the method is named by offset.)
    assert!(
        why.contains("stack overflow") && why.contains("offset"),
        "{why}"
    );
    // The card image keeps the applet and its objects.
    let image = rt.store().to_image();
    let mut rt = runtime(Store::from_image(&image).unwrap());
    assert_eq!(tx(&mut rt, "00A4040008 F06B616769010101 00"), "9000");
    assert_eq!(tx(&mut rt, "800D000000"), "0003000493E0000A9000");
}

#[test]
fn power_loss_at_every_write_of_a_transaction_keeps_it_atomic() {
    // INS 07 writes persistent[0] = 1 outside, then a transaction that is aborted and one
    // that commits persistent[1] = 3. Cut power at each write in turn: after power-up the
    // committed state is either before or after each transaction, never half of it.
    let c = cap(CONF);
    let mut base = Store::new(1 << 20);
    load(&mut base, &c).unwrap();
    install(&mut base, &c, 0, &h("F06B616769010101"), &h("C900")).unwrap();
    let mut torn = 0;
    for n in 1..40 {
        let mut rt = runtime(base.clone());
        assert_eq!(tx(&mut rt, "00A4040008 F06B616769010101 00"), "9000");
        rt.store_mut().tear_at(n);
        let answered = rt.process(&h("8007000000")).is_some();
        if answered {
            break;
        }
        torn += 1;
        let mut rt = runtime(Store::from_image(&rt.store().to_image()).unwrap());
        assert_eq!(tx(&mut rt, "00A4040008 F06B616769010101 00"), "9000");
        // A second run always completes with the same answer as on a fresh card.
        assert_eq!(
            tx(&mut rt, "8007000000"),
            "0101030000000200 9000".replace(' ', "")
        );
    }
    assert!(torn > 2, "only {torn} write points");
}

#[test]
fn isoapplet_loads_installs_and_selects() {
    let c = cap(ISO);
    let mut store = Store::new(1 << 20);
    let t = std::time::Instant::now();
    load(&mut store, &c).unwrap();
    let app = c.applets()[0].aid.clone();
    let r = install(&mut store, &c, 0, &app, &h("C900"));
    eprintln!(
        "MEASURE IsoApplet LOAD+INSTALL (direct): {:?} -> {r:?}",
        t.elapsed()
    );
    // Its constructor builds its crypto engines (Cipher RSA PKCS#1, Signature ECDSA,
    // RandomData): the install completes.
    assert_eq!(r, Ok(()));
    let mut rt = runtime(store);
    // SELECT answers IsoApplet's API version and features (00 06 06 for v0.6), 9000.
    assert_eq!(
        tx(
            &mut rt,
            &format!("00A40400{:02X}{}00", app.len(), hex::encode(&app))
        ),
        "0006069000"
    );
}

/// A Java Card applet that sends part of a long answer and throws `61xx` gets the GET
/// RESPONSE itself when the runtime holds nothing (IsoApplet's key generation answers this
/// way); GET RESPONSE of data the runtime split keeps working for every applet.
#[test]
fn get_response_goes_to_a_java_card_applet_that_kept_the_rest() {
    let c = cap(CONF);
    let mut store = Store::new(1 << 20);
    load(&mut store, &c).unwrap();
    install(&mut store, &c, 0, &h("F06B616769010101"), &h("C900")).unwrap();
    let mut rt = runtime(store);
    assert_eq!(tx(&mut rt, "00A4040008 F06B616769010101 00"), "9000");
    let first: String = (0..=255u8).map(|b| format!("{b:02X}")).collect();
    assert_eq!(tx(&mut rt, "801F000000"), format!("{first}612C"));
    assert_eq!(
        tx(&mut rt, "00C000002C"),
        format!("{}9000", "C0".repeat(44))
    );
    // The applet has nothing left: its own answer, 6985.
    assert_eq!(tx(&mut rt, "00C000002C"), "6985");
    // Runtime-split data (Le smaller than the echo's answer) still comes by GET RESPONSE.
    assert_eq!(tx(&mut rt, "8011000004 31323334 02"), "31326102");
    assert_eq!(tx(&mut rt, "00C0000002"), "33349000");
}

#[test]
fn load_refuses_a_cap_whose_api_token_the_card_lacks() {
    // The conformance CAP with its constant pool's first static method reference pointing at
    // token 200 (no API class has that many static methods): LOAD answers 6438.
    let c = cap(CONF);
    let mut b = c.load_file_data_block(false);
    let mut at = 0;
    while b[at] != 5 {
        at += 3 + usize::from(u16::from_be_bytes([b[at + 1], b[at + 2]]));
    }
    let count = usize::from(u16::from_be_bytes([b[at + 3], b[at + 4]]));
    let i = (0..count)
        .find(|i| b[at + 5 + 4 * i] == 6 && b[at + 6 + 4 * i] & 0x80 != 0)
        .expect("an external static method reference");
    b[at + 5 + 4 * i + 3] = 200;
    let bad = CapFile::from_ijc(&b).unwrap();
    let mut store = Store::new(1 << 20);
    assert_eq!(load(&mut store, &bad), Err(load_file::SW_IMPORT_NOT_FOUND));
    // The undamaged file loads; removing the load file removes its data block too.
    let elf = load(&mut store, &c).unwrap();
    assert!(store.get(&load_file::block_key(&elf)).is_some());
    registry::remove_load_file(&mut store, &elf).unwrap();
    assert!(store.get(&load_file::block_key(&elf)).is_none());
}

#[test]
fn after_power_loss_the_applet_sees_the_cards_memory_not_its_lost_ram() {
    // INS 0D increments a persistent counter and answers it. Power is cut at its first
    // persistent write; after power-up (same runtime, same applet instance) the counter the
    // applet reads is the one in the card's memory.
    let c = cap(CONF);
    let mut store = Store::new(1 << 20);
    load(&mut store, &c).unwrap();
    install(&mut store, &c, 0, &h("F06B616769010101"), &h("C900")).unwrap();
    let mut rt = runtime(store);
    assert_eq!(tx(&mut rt, "00A4040008 F06B616769010101 00"), "9000");
    assert_eq!(tx(&mut rt, "800D000000"), "0001000186A000089000");
    rt.store_mut().tear_at(1);
    assert_eq!(rt.process(&h("800D000000")), None, "mute: power lost");
    rt.reset();
    assert_eq!(tx(&mut rt, "00A4040008 F06B616769010101 00"), "9000");
    assert_eq!(tx(&mut rt, "800D000000"), "000200030D4000099000");
}

#[test]
#[ignore]
fn measure_echo_apdus_java_card_vs_native() {
    // Run with --release --ignored: the same runtime holds kagi's native echo applet and the
    // conformance applet (its INS 11 echoes through setIncomingAndReceive/arrayCopyNonAtomic/
    // setOutgoingAndSend).
    let c = cap(CONF);
    let mut store = Store::new(1 << 20);
    load(&mut store, &c).unwrap();
    install(&mut store, &c, 0, &h("F06B616769010101"), &h("C900")).unwrap();
    let echo = Aid::new(&applet_sim::echo::ECHO_AID).unwrap();
    registry::put_entry(
        &mut store,
        &RegistryEntry {
            aid: echo.clone(),
            class: applet_sim::echo::ECHO_CLASS.into(),
            life_cycle: app_state::SELECTABLE,
            privileges: [0; 3],
            sd: Some(Aid::new(&ISD).unwrap()),
            elf: None,
            params: vec![],
        },
    )
    .unwrap();
    let mut rt = runtime(store);
    let n = 20_000;
    let data = "30313233343536373839";
    assert_eq!(tx(&mut rt, "00A4040006 F04B41474901 00"), "9000");
    let t = std::time::Instant::now();
    for _ in 0..n {
        tx(&mut rt, &format!("801000000A{data}00"));
    }
    let native = t.elapsed();
    assert_eq!(tx(&mut rt, "00A4040008 F06B616769010101 00"), "9000");
    let t = std::time::Instant::now();
    for _ in 0..n {
        tx(&mut rt, &format!("801100000A{data}00"));
    }
    let jc = t.elapsed();
    eprintln!(
        "MEASURE echo APDU: native {:?}, Java Card {:?} each; ratio {:.2}",
        native / n,
        jc / n,
        jc.as_secs_f64() / native.as_secs_f64()
    );
}

/// IsoApplet's on-card P-256 generation as OpenSC sends it (the curve's parameters in the
/// data) and an ECDSA signature of 20 bytes (PSO COMPUTE DIGITAL SIGNATURE).
const GEN: &str = "00460000CF8120FFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF8220FFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFC83205AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B8441046B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C2964FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F58520FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC6325518702000100";
const SIGN: &str = "002A9E9A146B6167692069736F6170706C657420646174610A00";

/// IsoApplet installed, selected, its file system created and its PINs set (as OpenSC's
/// `pkcs15-init --create-pkcs15` leaves it): the runtime and the SELECT command.
fn isoapplet_with_pins() -> (Runtime, &'static str) {
    const SELECT: &str = "00A404000CF276A288BCFBA69D34F3100100";
    let c = cap(ISO);
    let mut store = Store::new(1 << 20);
    load(&mut store, &c).unwrap();
    let app = c.applets()[0].aid.clone();
    install(&mut store, &c, 0, &app, &h("C900")).unwrap();
    let mut rt = runtime(store);
    for apdu in [
        SELECT,
        "00E00000176F1581021388820138830250158608FF00000000000090",
        "002401021030313233343536373839616263646566",
        "0024010106313233343536",
    ] {
        assert!(tx(&mut rt, apdu).ends_with("9000"), "{apdu}");
    }
    (rt, SELECT)
}

/// IsoApplet's signatures per second (the APDUs OpenSC sends, captured from a pcscd log:
/// PIN set-up, VERIFY, on-card RSA-2048 and P-256 generation, MSE + PSO COMPUTE DIGITAL
/// SIGNATURE) against the signing primitive as kagi's native JPKI applet calls it (RSA
/// PKCS#1 v1.5 over a DigestInfo, P-256 over a hash). Run with --release --ignored.
#[test]
#[ignore]
fn measure_isoapplet_signatures_vs_native() {
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    let (mut rt, _) = isoapplet_with_pins();
    let ok = |r: String| assert!(r.ends_with("9000"), "{r}");
    ok(tx(&mut rt, "002000011031323334353600000000000000000000"));
    ok(tx(&mut rt, "00224100068001F3840100"));
    let t = std::time::Instant::now();
    assert!(tx(&mut rt, "0046420000").ends_with("610E"));
    let rsa_gen = t.elapsed();
    ok(tx(&mut rt, "00C000000E"));
    ok(tx(&mut rt, "00224100068001EC840101"));
    assert!(tx(&mut rt, GEN).ends_with("6117"));
    ok(tx(&mut rt, "00C0000017"));
    let digest_info = "3031300D06096086480165030402010500042047829C1EAC2D9402F058B9099821AC7E2B147EE708FF70970BB3E382BD97ACE0";
    let n = 50u32;
    ok(tx(&mut rt, "002241B60A80011181025015840100"));
    let t = std::time::Instant::now();
    for _ in 0..n {
        ok(tx(&mut rt, &format!("002A9E9A33{digest_info}00")));
    }
    let iso_rsa = t.elapsed() / n;
    ok(tx(&mut rt, "002241B60A80012181025015840101"));
    // ECDSA takes tens of microseconds: many signatures per round, native and Java Card
    // rounds interleaved, the best round of each (a busy machine only slows rounds down).
    let ec_n = 500u32;
    let ec_apdu = h(SIGN);
    let ek: p256::ecdsa::SigningKey = p256::elliptic_curve::Generate::generate_from_rng(
        &mut rand_core::UnwrapErr(getrandom::SysRng),
    );
    let hash = [7u8; 32];
    let (mut iso_ec, mut nat_ec) = (std::time::Duration::MAX, std::time::Duration::MAX);
    for _ in 0..5 {
        let t = std::time::Instant::now();
        for _ in 0..ec_n {
            let r = rt.process(&ec_apdu).unwrap();
            assert!(r.ends_with(&[0x90, 0x00]), "{}", hex::encode_upper(&r));
        }
        iso_ec = iso_ec.min(t.elapsed() / ec_n);
        let t = std::time::Instant::now();
        for _ in 0..ec_n {
            let _: p256::ecdsa::Signature = ek.sign_prehash(&hash).unwrap();
        }
        nat_ec = nat_ec.min(t.elapsed() / ec_n);
    }
    // The native JPKI applet's primitives (applet-sim/src/jpki.rs CardKey::sign).
    let key = rsa::PrivateKey::new(&mut rand_core::UnwrapErr(getrandom::SysRng), 2048).unwrap();
    let di = h(digest_info);
    let t = std::time::Instant::now();
    for _ in 0..n {
        key.sign(rsa::pkcs1v15::Pkcs1v15Sign::new_unprefixed(), &di)
            .unwrap();
    }
    let nat_rsa = t.elapsed() / n;
    eprintln!(
        "MEASURE IsoApplet RSA-2048 sign {:.0}/s vs native {:.0}/s (ratio {:.2}); ECDSA P-256 sign {:.0}/s vs native {:.0}/s (ratio {:.2}); on-card RSA-2048 generation {rsa_gen:?}",
        1.0 / iso_rsa.as_secs_f64(),
        1.0 / nat_rsa.as_secs_f64(),
        iso_rsa.as_secs_f64() / nat_rsa.as_secs_f64(),
        1.0 / iso_ec.as_secs_f64(),
        1.0 / nat_ec.as_secs_f64(),
        iso_ec.as_secs_f64() / nat_ec.as_secs_f64(),
    );
}

/// Power cut at every persistent write of IsoApplet's on-card EC P-256 key generation (the
/// APDUs OpenSC's `pkcs15-init --generate-key ec/secp256r1` sends): after power-up the card
/// either has a usable key or has none, and a new generation then works and signs with a key
/// p256 verifies.
#[test]
fn isoapplet_power_loss_at_every_write_of_key_generation() {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use sha1::Digest;
    let (rt, select) = isoapplet_with_pins();
    let base = rt.store().clone();
    let login = |rt: &mut Runtime| {
        assert!(tx(rt, select).ends_with("9000"));
        assert_eq!(tx(rt, "002000011031323334353600000000000000000000"), "9000");
    };
    let (mut torn, mut with_key) = (0, 0);
    for n in 1..400 {
        let mut rt = runtime(base.clone());
        login(&mut rt);
        assert_eq!(tx(&mut rt, "00224100068001EC840101"), "9000");
        rt.store_mut().tear_at(n);
        if rt.process(&h(GEN)).is_some() {
            break;
        }
        torn += 1;
        let mut rt = runtime(Store::from_image(&rt.store().to_image()).unwrap());
        login(&mut rt);
        // The key is there and signs (a DER signature), or it is not: IsoApplet's MSE then
        // dereferences its empty key slot (6F00, as on a real card).
        let had_key = tx(&mut rt, "002241B60A80012181025015840101") == "9000";
        if had_key {
            let r = tx(&mut rt, SIGN);
            assert!(
                r.starts_with("30") && r.ends_with("9000"),
                "cut at write {n}: {r}"
            );
            with_key += 1;
        }
        // A new generation works and its key signs.
        assert_eq!(tx(&mut rt, "00224100068001EC840101"), "9000");
        let first = tx(&mut rt, GEN);
        assert!(first.ends_with("6117"), "{first}");
        let rest = tx(&mut rt, "00C0000017");
        let public = format!("{}{}", &first[..first.len() - 4], &rest[..rest.len() - 4]);
        let bytes = h(&public);
        let at = bytes
            .windows(3)
            .position(|x| x == [0x86, 0x41, 0x04])
            .expect("the public point (tag 86)")
            + 2;
        let w = bytes[at..at + 65].to_vec();
        assert_eq!(tx(&mut rt, "002241B60A80012181025015840101"), "9000");
        let r = tx(&mut rt, SIGN);
        assert!(r.ends_with("9000"), "{r}");
        let sig = p256::ecdsa::Signature::from_der(&h(&r[..r.len() - 4]))
            .unwrap_or_else(|e| panic!("{e}: {r}"));
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&w)
            .unwrap_or_else(|e| panic!("{e}: {public}"));
        let msg = h("6B6167692069736F6170706C657420646174610A");
        key.verify_prehash(&sha1::Sha1::digest(&msg), &sig)
            .expect("the new key signs");
    }
    assert!(torn > 5, "only {torn} write points");
    eprintln!(
        "MEASURE IsoApplet EC key generation: {torn} persistent write points, key usable after {with_key} of the cuts"
    );
}

/// Signing with a key the card holds wears no persistent memory: IsoApplet initialises its
/// `Signature` object with the same key and mode before every signature, and a card keeps
/// an engine's key and mode as they are when nothing changes (the signatures still verify).
#[test]
fn isoapplet_signatures_write_no_persistent_memory() {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use sha1::Digest;
    let (mut rt, _) = isoapplet_with_pins();
    for apdu in [
        "002000011031323334353600000000000000000000",
        "00224100068001EC840101",
    ] {
        assert!(tx(&mut rt, apdu).ends_with("9000"), "{apdu}");
    }
    let first = tx(&mut rt, GEN);
    assert!(first.ends_with("6117"), "{first}");
    let rest = tx(&mut rt, "00C0000017");
    let public = h(&format!(
        "{}{}",
        &first[..first.len() - 4],
        &rest[..rest.len() - 4]
    ));
    let at = public
        .windows(3)
        .position(|x| x == [0x86, 0x41, 0x04])
        .expect("the public point (tag 86)")
        + 2;
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&public[at..at + 65]).unwrap();
    let digest = sha1::Sha1::digest(h("6B6167692069736F6170706C657420646174610A"));
    assert_eq!(tx(&mut rt, "002241B60A80012181025015840101"), "9000");
    let mut writes = None;
    for i in 0..4 {
        let r = tx(&mut rt, SIGN);
        assert!(r.ends_with("9000"), "{r}");
        let sig = p256::ecdsa::Signature::from_der(&h(&r[..r.len() - 4])).unwrap();
        key.verify_prehash(&digest, &sig).expect("the key signs");
        // The first signature after the MSE may set the engine up; the next ones write nothing.
        if i == 0 {
            writes = Some(rt.store().writes());
        }
    }
    assert_eq!(
        Some(rt.store().writes()),
        writes,
        "persistent writes while signing"
    );
}

/// Power cut at every persistent write of an INSTALL of a CAP applet (the objects its
/// `install` method makes, then the registry entry, in the card manager's order): after
/// power-up the applet is installed and works, or it is absent and no object of it is left in
/// the card's memory; a new INSTALL of the same AID then works.
#[test]
fn power_loss_at_every_write_of_a_cap_install_leaves_it_installed_or_absent() {
    let c = cap(CONF);
    let mut base = Store::new(1 << 20);
    load(&mut base, &c).unwrap();
    let app = h("F06B616769010101");
    let aid = Aid::new(&app).unwrap();
    let works = |rt: &mut Runtime| {
        assert_eq!(tx(rt, "00A4040008 F06B616769010101 00"), "9000");
        // INS 0D on a fresh instance: counter 1, int counter 100000, static 8.
        assert_eq!(tx(rt, "800D000000"), "0001000186A000089000");
    };
    let (mut absent, mut present) = (0, 0);
    for n in 1..2000 {
        let mut store = base.clone();
        store.tear_at(n);
        let r = install(&mut store, &c, 0, &app, &h("C900"));
        if !store.is_torn() {
            assert_eq!(r, Ok(()));
            assert!(absent > 3, "only {absent} write points");
            break;
        }
        let mut rt = runtime(Store::from_image(&store.to_image()).unwrap());
        if registry::entry(rt.store(), &aid).is_some() {
            present += 1;
            works(&mut rt);
        } else {
            absent += 1;
            // Nothing of the instance is left: no registration, and the package's context
            // holds what it held after LOAD (its static fields), the handle counter aside.
            let context = |s: &Store| {
                s.keys("jcctx/F06B61676901/")
                    .into_iter()
                    .filter(|k| !k.ends_with("/jc/m"))
                    .map(|k| (s.get(&k).map(<[u8]>::to_vec), k))
                    .collect::<Vec<_>>()
            };
            assert_eq!(context(rt.store()), context(&base), "cut at write {n}");
            assert!(rt.store().keys("app/F06B616769010101/").is_empty());
            let mut store = rt.store().clone();
            install(&mut store, &c, 0, &app, &h("C900")).unwrap();
            works(&mut runtime(store));
        }
    }
    eprintln!("MEASURE CAP install: {absent} cuts left it absent, {present} installed");
}

/// A loaded conformance package with its applet `Conf` installed as `F06B616769010101` and
/// (module 1, `Ext`) as `F06B616769010201`, in a powered runtime.
fn conf_card() -> Runtime {
    let c = cap(CONF);
    let mut store = Store::new(1 << 20);
    load(&mut store, &c).unwrap();
    install(&mut store, &c, 0, &h("F06B616769010101"), &h("C900")).unwrap();
    install(&mut store, &c, 1, &h("F06B616769010201"), &h("C900")).unwrap();
    runtime(store)
}

/// Java Card runtime §4 (applet selection): SELECT of the applet already selected on the
/// channel deselects it first — its `deselect()` runs and its CLEAR_ON_DESELECT arrays clear —
/// then selects it again. CLEAR_ON_RESET arrays keep their contents.
#[test]
fn selecting_the_selected_applet_again_deselects_it_first() {
    let mut rt = conf_card();
    assert_eq!(tx(&mut rt, "00A4040008 F06B616769010101 00"), "9000");
    // INS 08: onDeselect[0] = P1, onReset[0] = P2. INS 23: deselect() calls, onDeselect[0].
    assert_eq!(tx(&mut rt, "8008112200"), "9000");
    assert_eq!(tx(&mut rt, "8023000000"), "0000119000");
    assert_eq!(tx(&mut rt, "00A4040008 F06B616769010101 00"), "9000");
    assert_eq!(tx(&mut rt, "8023000000"), "0001009000");
    // INS 09: onDeselect[0], onReset[0].
    assert_eq!(tx(&mut rt, "8009000000"), "00229000");
}

/// `JCSystem.requestObjectDeletion`: the objects the applet dropped are deleted at the end of
/// the command, their store records with them; what its fields and statics reach (the EC key
/// pair kept in a static field, its keys reached through the `KeyPair` only) stays and works.
/// The counts come from the applet's source (`Conf.garbage`, `Crypto.ecdsa`).
#[test]
fn request_object_deletion_deletes_what_the_applet_dropped_and_its_records() {
    use p256::ecdsa::signature::Verifier;
    let mut rt = conf_card();
    let records = |rt: &Runtime| rt.store().keys("jcctx/F06B61676901/jc/o/").len();
    assert_eq!(tx(&mut rt, "00A4040008 F06B616769010101 00"), "9000");
    // INS 18 P1 0: a new P-256 key pair in a static field, then W and an ECDSA-SHA-256
    // signature over the data.
    let first = tx(&mut rt, "8018000003 616263 00");
    let w = first[..130].to_string();
    // A first collection: what is left is what the applet reaches (and `kept`).
    // Deletion is supported; `kept` was null.
    assert_eq!(tx(&mut rt, "8024000100"), "01009000");
    let base = records(&rt);
    // INS 18 P1 1 (the kept pair): a Signature and a byte[80] made and dropped.
    let again = tx(&mut rt, "8018010003 616263 00");
    assert_eq!(&again[..130], w);
    assert_eq!(records(&rt), base + 2);
    // INS 24 P1 5, no deletion: five byte[8] dropped, `kept` replaced (the old one dropped).
    assert_eq!(tx(&mut rt, "8024050000"), "01029000");
    assert_eq!(records(&rt), base + 8);
    // With deletion: a new `kept`; the nine dropped objects go (2 + 5 + two old `kept`).
    assert_eq!(tx(&mut rt, "8024000100"), "01029000");
    assert_eq!(records(&rt), base);
    // The key pair, reached only through a static field and the KeyPair, still signs, and
    // p256 verifies the signature with the W the applet answered at first.
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&h(&w)).unwrap();
    let mut restored = runtime(Store::from_image(&rt.store().to_image()).unwrap());
    for rt in [&mut rt, &mut restored] {
        assert_eq!(tx(rt, "00A4040008 F06B616769010101 00"), "9000");
        let r = tx(rt, "8018010003 616263 00");
        assert!(r.starts_with(&w) && r.ends_with("9000"), "{r}");
        let sig = p256::ecdsa::Signature::from_der(&h(&r[130..r.len() - 4])).unwrap();
        key.verify(b"abc", &sig).expect("the kept key signs");
        // The objects reached through instance fields: the shapes (INS 05: Square(5) area 25
        // id 1 twice 50, Rect(3,7) 21 2 42, Cube(2) 24 3 48) and the PIN "1234" (INS 12:
        // validated, 3 tries, validated).
        assert_eq!(
            tx(rt, "8005000000"),
            "0019000100320015000200\
2A0018000300309000"
        );
        assert_eq!(tx(rt, "8012000004 31323334 00"), "0103019000");
    }
}

/// `javacardx.apdu.ExtendedLength`: the package's applet `Ext` implements it and gets a
/// 300-byte extended command, answering 602 bytes (data, length, data); `Conf`, of the same
/// package, does not implement it and gets `6700` for an extended command.
#[test]
fn extended_apdus_reach_only_an_applet_that_implements_extended_length() {
    let mut rt = conf_card();
    let data: String = (0..300u16).map(|i| format!("{:02X}", i as u8)).collect();
    assert_eq!(tx(&mut rt, "00A4040008 F06B616769010201 00"), "9000");
    let r = tx(&mut rt, &format!("80100000 00012C {data} 0000"));
    assert_eq!(r, format!("{data}012C{data}9000"));
    assert_eq!(tx(&mut rt, "00A4040008 F06B616769010101 00"), "9000");
    assert_eq!(tx(&mut rt, "80110000 000003 414243 0000"), "6700");
    // The same command in short form is Conf's echo.
    assert_eq!(tx(&mut rt, "8011000003 414243 00"), "4142439000");
}

/// `KeyBuilder.TYPE_AES_TRANSIENT_DESELECT` (14) and `_RESET` (13) keys keep their material in
/// RAM only: no store record holds the key bytes, and it is gone after a deselect (14) or a
/// power cycle (13, which a re-SELECT leaves). A persistent `TYPE_AES` (15) key is in its
/// record and survives both (the contrast that shows the record check can fail).
#[test]
fn transient_keys_stay_out_of_the_store_and_clear_on_their_event() {
    let key = hex::encode_upper(b"kagi transient!!");
    let in_store = |rt: &Runtime| {
        rt.store().keys("jcctx/F06B61676901/jc/o/").iter().any(|k| {
            rt.store()
                .get(k)
                .unwrap()
                .windows(16)
                .any(|w| w == b"kagi transient!!")
        })
    };
    for (ty, in_record, after_reselect, after_power) in [
        (0x0E, false, "00", "00"),
        (0x0D, false, "01", "00"),
        (0x0F, true, "01", "01"),
    ] {
        let mut rt = conf_card();
        let select = "00A4040008 F06B616769010101 00";
        assert_eq!(tx(&mut rt, select), "9000");
        assert_eq!(
            tx(&mut rt, &format!("802600{ty:02X}10{key}00")),
            "019000",
            "type {ty}"
        );
        assert_eq!(in_store(&rt), in_record, "type {ty}: key bytes in a record");
        assert_eq!(tx(&mut rt, select), "9000");
        assert_eq!(
            tx(&mut rt, "8026010000"),
            format!("{after_reselect}9000"),
            "type {ty} after re-SELECT"
        );
        rt.reset();
        assert_eq!(tx(&mut rt, select), "9000");
        assert_eq!(
            tx(&mut rt, "8026010000"),
            format!("{after_power}9000"),
            "type {ty} after power-up"
        );
    }
}

/// Power cut at every persistent write of a command that requests object deletion (its own
/// writes, then one record removal per dropped object): after power-up the objects the applet
/// reaches are all there (its `kept` array, its EC key pair that still signs as the same key),
/// and the next request deletes what was left.
#[test]
fn power_loss_during_object_deletion_loses_nothing_the_applet_reaches() {
    let mut rt = conf_card();
    let records = |rt: &Runtime| rt.store().keys("jcctx/F06B61676901/jc/o/").len();
    let select = "00A4040008 F06B616769010101 00";
    assert_eq!(tx(&mut rt, select), "9000");
    let w = tx(&mut rt, "8018000003 616263 00")[..130].to_string();
    assert_eq!(tx(&mut rt, "8024000100"), "01009000");
    let base = records(&rt);
    assert!(tx(&mut rt, "8018010003 616263 00").starts_with(&w));
    assert_eq!(tx(&mut rt, "8024050000"), "01029000");
    assert_eq!(records(&rt), base + 8);
    let before = rt.store().clone();
    let mut torn = 0;
    for n in 1..100 {
        let mut rt = runtime(before.clone());
        assert_eq!(tx(&mut rt, select), "9000");
        rt.store_mut().tear_at(n);
        if rt.process(&h("8024000100")).is_some() {
            assert_eq!(records(&rt), base);
            break;
        }
        torn += 1;
        let mut rt = runtime(Store::from_image(&rt.store().to_image()).unwrap());
        assert_eq!(tx(&mut rt, select), "9000");
        let r = tx(&mut rt, "8018010003 616263 00");
        assert!(
            r.starts_with(&w) && r.ends_with("9000"),
            "cut at write {n}: {r}"
        );
        // `kept` (the one before the cut command, or the one it made) is there: a short[2].
        assert_eq!(tx(&mut rt, "8024000100"), "01029000", "cut at write {n}");
        // Two more dropped by INS 18 (its Signature and byte[80]): all gone.
        assert_eq!(records(&rt), base, "cut at write {n}");
    }
    assert!(torn > 9, "only {torn} write points");
}
