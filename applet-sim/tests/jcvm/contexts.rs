//! Java Card applets and the card manager around them: `GPSystem`'s life-cycle states, and the
//! applet firewall between packages with shareable interface objects.

use super::*;

const GP: &str = "../jcvm/tests/jc/gp.cap";

/// `org.globalplatform.GPSystem` (its source: `jcvm/tests/jc/gp/`): the applet reads the card's
/// and its own life-cycle state and sets application-specific states, which the card manager's
/// registry then holds. Expected values from the GlobalPlatform Card Specification 2.3 §5.3
/// and the GPSystem API: INSTALLED (03) while `install` runs, SELECTABLE (07) after; card
/// SECURED (0F); application-specific states are 07..7F with the three low bits set, so
/// 0F and 7F are taken and LOCKED (83), INSTALLED (03) and 05 refused; without the Card Lock /
/// Card Terminate privileges lockCard and terminateCard answer false and change nothing.
#[test]
fn gpsystem_life_cycle_states_reach_the_registry() {
    let c = cap(GP);
    let mut store = Store::new(1 << 20);
    load(&mut store, &c).unwrap();
    let app = h("F06B6167690201");
    install(&mut store, &c, 0, &app, &h("C900")).unwrap();
    let aid = Aid::new(&app).unwrap();
    let mut rt = runtime(store);
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690201 00"), "9000");
    assert_eq!(tx(&mut rt, "8001000003"), "0F07039000");
    for (state, answer, registry) in [
        ("0F", "010F", 0x0F),
        ("83", "000F", 0x0F),
        ("03", "000F", 0x0F),
        ("05", "000F", 0x0F),
        ("7F", "017F", 0x7F),
        ("07", "0107", 0x07),
        ("1F", "011F", 0x1F),
    ] {
        assert_eq!(
            tx(&mut rt, &format!("8002{state}0002")),
            format!("{answer}9000"),
            "setCardContentState({state})"
        );
        let e = registry::entry(rt.store(), &aid).expect("the applet's registry entry");
        assert_eq!(
            e.life_cycle, registry,
            "registry after setCardContentState({state})"
        );
    }
    assert_eq!(tx(&mut rt, "8003000003"), "00000F9000");
    assert_eq!(registry::card_life_cycle(rt.store()), 0x0F);
    // The state is the card manager's: it survives a card image, and the applet in its own
    // state 1F is still selectable.
    let mut rt = runtime(Store::from_image(&rt.store().to_image()).unwrap());
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690201 00"), "9000");
    assert_eq!(tx(&mut rt, "8001000003"), "0F1F039000");
}

const SHARE: &str = "../jcvm/tests/jc/share.cap";
const CLIENT: &str = "../jcvm/tests/jc/client.cap";

/// A card with the server package (`kagi.share`) and the client package (`kagi.client`, which
/// imports it) loaded and one instance of each installed.
fn server_and_client(descriptor: bool) -> Runtime {
    let (s, c) = (cap(SHARE), cap(CLIENT));
    let mut store = Store::new(1 << 20);
    load_block(&mut store, &s, descriptor).unwrap();
    install(&mut store, &s, 0, &h("F06B6167690301"), &h("C900")).unwrap();
    load(&mut store, &c).unwrap();
    install(&mut store, &c, 0, &h("F06B6167690401"), &h("C900")).unwrap();
    runtime(store)
}

/// Shareable interface objects across packages and the firewall (Java Card 3.0.5 runtime
/// environment specification §6.2): the client gets the server's object only when the server
/// agrees (parameter 1 and this client's AID), calls its interface methods in the server's
/// context (the server's persistent total changes; `getPreviousContextAID` there names the
/// client), passes the APDU buffer (a global array) but not an array of its own (the server
/// writing to it gets `SecurityException`), and keeps the object across a card image.
#[test]
fn shareable_interface_objects_cross_the_firewall_and_nothing_else_does() {
    let mut rt = server_and_client(true);
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690401 00"), "9000");
    // Without the object yet: 6A83 (the client's own check).
    assert_eq!(tx(&mut rt, "8002000500"), "6A83");
    // Parameter 2: the server refuses (null).
    assert_eq!(tx(&mut rt, "8001020001"), "009000");
    assert_eq!(tx(&mut rt, "8002000500"), "6A83");
    // Parameter 1: granted; asking again gives the same reference (no new object).
    assert_eq!(tx(&mut rt, "8001010001"), "019000");
    let client_objects = rt.store().keys("app/F06B6167690401/jc/o/").len();
    assert_eq!(tx(&mut rt, "8001010001"), "019000");
    assert_eq!(
        rt.store().keys("app/F06B6167690401/jc/o/").len(),
        client_objects
    );
    // add(5), add(0x0102): the server's total 5, then 0x0107.
    assert_eq!(tx(&mut rt, "8002000500"), "00059000");
    assert_eq!(tx(&mut rt, "8002010200"), "01079000");
    // fill(APDU buffer): the server writes "KAGI" into the global buffer.
    assert_eq!(tx(&mut rt, "8003000000"), "4B4147499000");
    // fill(an array of the client's): SecurityException in the server, caught by the
    // client and answered 6982; the client's array is unchanged (zeros would be "KAGI").
    assert_eq!(tx(&mut rt, "8004000000"), "6982");
    // The caller's objects a call passes are the call's alone: the server's memory (its
    // object records and its handle counter) is the same after many more such calls.
    let server_memory = |rt: &Runtime| {
        let keys = rt.store().keys("app/F06B6167690301/jc/");
        let meta = rt
            .store()
            .get("app/F06B6167690301/jc/m")
            .map(<[u8]>::to_vec);
        (keys, meta)
    };
    let seen = server_memory(&rt);
    for _ in 0..50 {
        assert_eq!(tx(&mut rt, "8004000000"), "6982");
    }
    assert_eq!(server_memory(&rt), seen);
    // The server saw the client calling.
    assert_eq!(tx(&mut rt, "8005000000"), "F06B61676904019000");
    // The server's own view of its total (its own command): 0x0107.
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690301 00"), "9000");
    assert_eq!(tx(&mut rt, "8001000002"), "01079000");
    // The client kept the object in a persistent field: after a card image it still calls.
    let mut rt = runtime(Store::from_image(&rt.store().to_image()).unwrap());
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690401 00"), "9000");
    assert_eq!(tx(&mut rt, "8002000100"), "01089000");
}

/// A client whose server package is not on the card is refused at LOAD with `6438` (a
/// missing import); a server loaded without its Descriptor component cannot serve calls (the
/// parameter types that tell references from values are unknown): `6F00` and the reason.
#[test]
fn a_client_without_its_server_package_is_refused_at_load() {
    let c = cap(CLIENT);
    let mut store = Store::new(1 << 20);
    assert_eq!(
        load(&mut store, &c).unwrap_err(),
        applet_sim::load_file::SW_IMPORT_NOT_FOUND
    );
    let mut rt = server_and_client(false);
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690401 00"), "9000");
    assert_eq!(tx(&mut rt, "8001010001"), "019000");
    assert_eq!(tx(&mut rt, "8002000500"), "6F00");
    let why = rt
        .diagnostic(&Aid::new(&h("F06B6167690401")).unwrap())
        .unwrap_or_default();
    assert!(why.contains("Descriptor"), "{why}");
}
