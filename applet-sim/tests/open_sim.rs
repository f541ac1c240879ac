//! The open simulator: applets from outside the stock list, the class table that card images
//! are checked against, and persistent memory scoped to each applet's own AID.

use applet_sim::registry::{self, LoadFile, RegistryEntry};
use applet_sim::security_domain::SecurityDomain;
use applet_sim::store::Store;
use applet_sim::{Aid, Applet, AppletContext, ClassTable, SimCard, SimConfig};
use card_wire::{Command, Response, StatusWord, Transport};
use std::sync::Arc;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).unwrap()
}

fn tx(card: &mut SimCard, apdu: &str) -> String {
    hex::encode_upper(card.transmit(&h(apdu)).unwrap())
}

fn aid(s: &str) -> Aid {
    Aid::new(&h(s)).unwrap()
}

/// Puts an installed, selectable instance of `class` into a manufactured store.
fn install(store: &mut Store, isd: &Aid, instance: &Aid, class: &str) {
    install_with(store, isd, instance, class, vec![]);
}

fn install_with(store: &mut Store, isd: &Aid, instance: &Aid, class: &str, params: Vec<u8>) {
    registry::put_entry(
        store,
        &RegistryEntry {
            aid: instance.clone(),
            class: class.into(),
            life_cycle: 0x07,
            privileges: [0; 3],
            sd: Some(isd.clone()),
            elf: None,
            params,
        },
    )
    .unwrap();
}

fn temp_image(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kagi-open-sim-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("card.img")
}

#[test]
fn an_image_naming_an_unregistered_class_is_refused() {
    let cfg = SimConfig::default();
    let mut store = cfg.manufacture().unwrap();
    install(
        &mut store,
        &cfg.isd.aid,
        &aid("F0ACAC000101"),
        "acme.missing",
    );
    let path = temp_image("unregistered");
    store.save(&path).unwrap();
    let msg = match SimCard::from_image(&path, None) {
        Ok(_) => panic!("the image loaded, its acme.missing instance silently dropped"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains("'acme.missing'"), "{msg}");
    assert!(msg.contains("F0ACAC000101"), "{msg}");
    assert!(msg.contains("register it in the ClassTable"), "{msg}");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn a_load_file_naming_an_unregistered_class_is_refused() {
    let cfg = SimConfig::default();
    let mut store = cfg.manufacture().unwrap();
    registry::put_load_file(
        &mut store,
        &LoadFile {
            aid: aid("F0ACAC0001"),
            sd: cfg.isd.aid.clone(),
            modules: vec![(aid("F0ACAC000101"), "acme.missing".into())],
        },
    )
    .unwrap();
    let err = SimCard::from_store_with(store, None, true, applet_sim::stock::shared())
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("'acme.missing'") && msg.contains("load file module F0ACAC000101"),
        "{msg}"
    );
}

#[test]
fn an_image_of_stock_classes_keeps_its_applet_data() {
    // The echo applet's records as applet-sim has always stored them: `app/<AID>/rec/NN` and
    // `app/<AID>/count` (so images written before the store was scoped read the same).
    let cfg = SimConfig::default();
    let mut store = cfg.manufacture().unwrap();
    store.put("app/F04B41474901/rec/00", b"hello").unwrap();
    store.put("app/F04B41474901/count", &[1]).unwrap();
    let path = temp_image("stock");
    store.save(&path).unwrap();
    let mut c = SimCard::from_image(&path, None).unwrap();
    c.power_on();
    assert_eq!(tx(&mut c, "00A4040006 F04B41474901"), "9000");
    assert_eq!(tx(&mut c, "8014000000"), "68656C6C6F9000");
    assert_eq!(tx(&mut c, "8014000100"), "6A83");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// A test applet that reads and writes any name it is given: `80 01 00 00 name` reads,
/// `80 02 00 00 name 00 value` writes, `80 03` lists its names (joined by `;`).
struct Peek;

impl Applet for Peek {
    fn select(&mut self, _: &mut AppletContext<'_>) -> Result<Vec<u8>, StatusWord> {
        Ok(Vec::new())
    }
    fn process(
        &mut self,
        cmd: &Command,
        ctx: &mut AppletContext<'_>,
    ) -> Result<Response, StatusWord> {
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| StatusWord::INCORRECT_DATA);
        match cmd.ins() {
            0x01 => {
                let name = text(cmd.data())?;
                ctx.store
                    .get(&name)
                    .map(Response::success)
                    .ok_or(StatusWord::RECORD_NOT_FOUND)
            }
            0x02 => {
                let at = cmd
                    .data()
                    .iter()
                    .position(|b| *b == 0)
                    .ok_or(StatusWord::INCORRECT_DATA)?;
                let name = text(&cmd.data()[..at])?;
                ctx.store.put(&name, &cmd.data()[at + 1..])?;
                Ok(Response::status(StatusWord::SUCCESS))
            }
            0x03 => Ok(Response::success(
                ctx.store.names("").join(";").into_bytes(),
            )),
            0x05 => {
                // What the registry shows it: AIDs and install parameters.
                let mut out = Vec::new();
                for e in ctx.registry {
                    out.extend_from_slice(e.aid.as_bytes());
                    out.extend_from_slice(&e.params);
                }
                Ok(Response::success(out))
            }
            0x04 => {
                // Asks for the whole card's memory, as a security domain gets it.
                match ctx.store.whole_card() {
                    Some(_) => Ok(Response::status(StatusWord::SUCCESS)),
                    None => Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED),
                }
            }
            _ => Err(StatusWord::INS_NOT_SUPPORTED),
        }
    }
}

fn peek_card() -> SimCard {
    let mut table = applet_sim::stock::classes();
    table.register("test.peek", |_| Ok(Box::new(Peek))).unwrap();
    // A wrapped security domain registered as a plain application.
    table
        .register("test.fake-sd", |i| {
            Ok(Box::new(SecurityDomain::new(i.aid.clone(), false)))
        })
        .unwrap();
    let cfg = SimConfig::default().seeded(4);
    let mut store = cfg.manufacture().unwrap();
    // X's AID is a prefix of Y's: their namespaces must still be apart.
    install(&mut store, &cfg.isd.aid, &aid("F001020304"), "test.peek");
    // Y's install parameters hold a secret other applets must not read (a test key): C9 { CE key }.
    install_with(
        &mut store,
        &cfg.isd.aid,
        &aid("F00102030401"),
        "test.peek",
        h("C912 CE10 000102030405060708090A0B0C0D0E0F"),
    );
    install(&mut store, &cfg.isd.aid, &aid("F0FA4E5D01"), "test.fake-sd");
    let mut c = SimCard::from_store_with(store, Some(4), true, Arc::new(table)).unwrap();
    c.power_on();
    c
}

fn ascii(s: &str) -> String {
    hex::encode_upper(s)
}

fn read(c: &mut SimCard, name: &str) -> String {
    tx(c, &format!("80010000{:02X}{}00", name.len(), ascii(name)))
}

#[test]
fn an_applet_cannot_reach_another_applets_records() {
    let mut c = peek_card();
    // Y keeps a secret.
    assert_eq!(tx(&mut c, "00A4040006 F00102030401"), "9000");
    let put = format!("{}00{}", ascii("secret"), ascii("Y-only"));
    assert_eq!(
        tx(&mut c, &format!("80020000{:02X}{put}", put.len() / 2)),
        "9000"
    );
    assert_eq!(read(&mut c, "secret"), format!("{}9000", ascii("Y-only")));
    // X builds every name it can think of for Y's record, the registry and the ISD's keys.
    assert_eq!(tx(&mut c, "00A4040005 F001020304"), "9000");
    for name in [
        "secret",
        "app/F00102030401/secret",
        "../F00102030401/secret",
        "/../F00102030401/secret",
        "01/secret",
        "reg/F00102030401",
        "sd/A000000151000000/key/30",
        "card/kdd",
    ] {
        assert_eq!(read(&mut c, name), "6A83", "X read {name}");
    }
    // X sees its own registry entry only: not Y's install parameters.
    assert_eq!(tx(&mut c, "8005000000"), "F0010203049000");
    // X sees only its own names, and cannot get the whole card.
    assert_eq!(tx(&mut c, "8003000000"), "9000", "X has no names yet");
    assert_eq!(tx(&mut c, "80040000"), "6982");
    // X writing under Y's full key name only writes into X's own namespace.
    let put = format!("{}00{}", ascii("app/F00102030401/secret"), ascii("X"));
    assert_eq!(
        tx(&mut c, &format!("80020000{:02X}{put}", put.len() / 2)),
        "9000"
    );
    assert_eq!(
        c.store().get("app/F001020304/app/F00102030401/secret"),
        Some(&b"X"[..])
    );
    assert_eq!(
        c.store().get("app/F00102030401/secret"),
        Some(&b"Y-only"[..])
    );
}

#[test]
fn a_security_domain_registered_as_an_application_gets_no_card_memory() {
    let mut c = peek_card();
    // Its SELECT needs the whole card (the FCI reads card-wide data): refused, 6985.
    assert_eq!(tx(&mut c, "00A4040005 F0FA4E5D01"), "6985");
}

#[test]
fn install_runs_the_constructor_with_the_stored_parameters() {
    let mut table = ClassTable::new();
    applet_sim::security_domain::register(&mut table).unwrap();
    table
        .register("test.picky", |i| {
            if i.params == [0xC9, 0x01, 0x2A] {
                Ok(Box::new(Peek))
            } else {
                Err(StatusWord::INCORRECT_DATA)
            }
        })
        .unwrap();
    let table = Arc::new(table);
    let cfg = SimConfig::default();
    let mut store = cfg.manufacture().unwrap();
    // The echo applet is in the manufactured store but not in this table.
    store.remove("reg/F04B41474901").unwrap();
    store.remove("elf/F04B414749").unwrap();
    let mut e = RegistryEntry {
        aid: aid("F0AB000001"),
        class: "test.picky".into(),
        life_cycle: 0x07,
        privileges: [0; 3],
        sd: Some(cfg.isd.aid.clone()),
        elf: None,
        params: vec![0xC9, 0x01, 0x2B],
    };
    registry::put_entry(&mut store, &e).unwrap();
    let err = SimCard::from_store_with(store.clone(), None, true, table.clone())
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("refuses the install parameters"),
        "{err}"
    );
    e.params = vec![0xC9, 0x01, 0x2A];
    registry::put_entry(&mut store, &e).unwrap();
    let mut c = SimCard::from_store_with(store, None, true, table).unwrap();
    c.power_on();
    assert_eq!(tx(&mut c, "00A4040005 F0AB000001"), "9000");
}
