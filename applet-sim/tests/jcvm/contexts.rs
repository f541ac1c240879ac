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
    let client_objects = rt.store().keys("jcctx/F06B61676904/jc/o/").len();
    assert_eq!(tx(&mut rt, "8001010001"), "019000");
    assert_eq!(
        rt.store().keys("jcctx/F06B61676904/jc/o/").len(),
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
        let keys = rt.store().keys("jcctx/F06B61676903/jc/");
        let meta = rt
            .store()
            .get("jcctx/F06B61676903/jc/m")
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

const PKGCTX: &str = "../jcvm/tests/jc/pkgctx.cap";

/// A card with `kagi.pkgctx` loaded and two instances of `Member` (0501, 0502) installed.
fn two_members() -> Store {
    let c = cap(PKGCTX);
    let mut store = Store::new(1 << 20);
    load(&mut store, &c).unwrap();
    install(&mut store, &c, 0, &h("F06B6167690501"), &h("C900")).unwrap();
    install(&mut store, &c, 0, &h("F06B6167690502"), &h("C900")).unwrap();
    store
}

/// The persistent objects of the `kagi.pkgctx` package's context.
fn context_objects(rt: &Runtime) -> usize {
    rt.store().keys("jcctx/F06B61676905/jc/o/").len()
}

/// One context per package (Java Card 3.0.5 runtime environment specification §6.1.2): two
/// instances of `kagi.pkgctx.Member` (source: `jcvm/tests/jc/pkgctx/`) share the static field
/// `hits` but each has its own `own`; an array one instance made and put in a static is
/// written by the other; one instance reads the other's field directly (across packages that
/// is a SecurityException, see the test above); `JCSystem.getAID` names each instance. All of
/// it survives a card image. Expected values follow from the Java source.
#[test]
fn instances_of_one_package_share_its_context() {
    let store = two_members();
    let mut rt = runtime(store);
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690501 00"), "9000");
    assert_eq!(tx(&mut rt, "8001000004"), "000100019000");
    assert_eq!(tx(&mut rt, "8001000004"), "000200029000");
    assert_eq!(tx(&mut rt, "8005000007"), "F06B61676905019000");
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690502 00"), "9000");
    // hits is the package's (3), own the instance's (1).
    assert_eq!(tx(&mut rt, "8001000004"), "000300019000");
    assert_eq!(tx(&mut rt, "8005000007"), "F06B61676905029000");
    // 0502 makes the board (a static) and writes 5A at 1.
    assert_eq!(tx(&mut rt, "80025A01"), "9000");
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690501 00"), "9000");
    assert_eq!(tx(&mut rt, "8003000101"), "5A9000");
    // 0501 writes 3C at 2 into the board 0502 made.
    assert_eq!(tx(&mut rt, "80023C02"), "9000");
    // 0501 reads 0502's field through the object the JCRE gives it: 1 (no firewall).
    assert_eq!(tx(&mut rt, "8004000007 F06B6167690502 02"), "00019000");
    // An AID that is not on the card: lookupAID answers null, the applet 6A82.
    assert_eq!(tx(&mut rt, "8004000007 F06B6167690599 02"), "6A82");
    let mut rt = runtime(Store::from_image(&rt.store().to_image()).unwrap());
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690502 00"), "9000");
    assert_eq!(tx(&mut rt, "8003000201"), "3C9000");
    assert_eq!(tx(&mut rt, "8001000004"), "000400029000");
    assert_eq!(tx(&mut rt, "8004000007 F06B6167690501 02"), "00029000");
}

/// Deleting an instance takes its registration out of the package's context: the objects only
/// it reached (its applet object and the transient array in its field) are collected at the next command, what the package's
/// statics reach (the board) stays for the other instance; deleting the package takes its
/// context's records.
#[test]
fn deleting_an_instance_collects_what_only_it_reached() {
    let store = two_members();
    let mut rt = runtime(store);
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690502 00"), "9000");
    assert_eq!(tx(&mut rt, "80025A01"), "9000");
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690501 00"), "9000");
    let before = context_objects(&rt);
    let gone = Aid::new(&h("F06B6167690502")).unwrap();
    rt.store_mut()
        .atomically(|s| registry::remove_entry(s, &gone))
        .unwrap();
    assert_eq!(tx(&mut rt, "8001000004"), "000100019000");
    assert_eq!(
        context_objects(&rt),
        before - 2,
        "0502's applet object and its scratch array collected"
    );
    assert!(
        rt.store()
            .keys("jcctx/F06B61676905/jc/i/")
            .iter()
            .all(|k| !k.ends_with("F06B6167690502"))
    );
    assert_eq!(tx(&mut rt, "8003000101"), "5A9000");
    let elf = Aid::new(&h("F06B61676905")).unwrap();
    let only = Aid::new(&h("F06B6167690501")).unwrap();
    rt.store_mut()
        .atomically(|s| {
            registry::remove_entry(s, &only)?;
            registry::remove_load_file(s, &elf)
        })
        .unwrap();
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690501 00"), "6A82");
    assert!(rt.store().keys("jcctx/").is_empty());
}

/// A card image made before package contexts (`tests/data/legacy-contexts-*.img`, written by
/// kagi at commit ad7630b: `kagi.pkgctx` with its instances' records in their own namespaces,
/// 0501 having counted twice and written 5A at board[1]; in `-two` 0502 counted once, on a
/// board of its own). With one such instance the package's records move into its context at
/// power-up and a new instance shares them; with two, each keeps its context as it was.
#[test]
fn card_images_from_before_package_contexts_keep_their_state() {
    let image = |name: &str| {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/{name}"));
        Store::from_image(&std::fs::read(p).unwrap()).unwrap()
    };
    let mut rt = runtime(image("legacy-contexts-one.img"));
    assert!(rt.store().keys("app/F06B6167690501/jc/").is_empty());
    assert_eq!(
        rt.store()
            .get("jcctx/F06B61676905/jc/i/F06B6167690501")
            .map(<[u8]>::len),
        Some(2)
    );
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690501 00"), "9000");
    assert_eq!(tx(&mut rt, "8001000004"), "000300039000");
    assert_eq!(tx(&mut rt, "8003000101"), "5A9000");
    let c = cap(PKGCTX);
    install(rt.store_mut(), &c, 0, &h("F06B6167690502"), &h("C900")).unwrap();
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690502 00"), "9000");
    assert_eq!(tx(&mut rt, "8001000004"), "000400019000");
    assert_eq!(tx(&mut rt, "8003000101"), "5A9000");

    let mut rt = runtime(image("legacy-contexts-two.img"));
    assert_eq!(rt.store().keys("app/F06B6167690501/jc/m").len(), 1);
    assert!(rt.store().keys("jcctx/F06B61676905/jc/i/").is_empty());
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690501 00"), "9000");
    assert_eq!(tx(&mut rt, "8001000004"), "000300039000");
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690502 00"), "9000");
    assert_eq!(tx(&mut rt, "8001000004"), "000200029000");
    assert_eq!(tx(&mut rt, "8003000101"), "009000");
}

/// Power lost at any write of the migration at power-up leaves the old form (tried again at
/// the next power-up) or the new one, and the applet's state either way.
#[test]
fn power_loss_during_the_migration_loses_nothing() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/legacy-contexts-one.img");
    let base = Store::from_image(&std::fs::read(p).unwrap()).unwrap();
    let mut cuts = 0;
    for n in 1..200 {
        let mut store = base.clone();
        store.tear_at(n);
        let mut rt = Runtime::new(store, CardRng::seeded(5), true);
        rt.reset();
        if !rt.store().is_torn() {
            break;
        }
        cuts += 1;
        let mut rt = runtime(Store::from_image(&rt.store().to_image()).unwrap());
        assert_eq!(
            tx(&mut rt, "00A4040007 F06B6167690501 00"),
            "9000",
            "cut {n}"
        );
        assert_eq!(tx(&mut rt, "8001000004"), "000300039000", "cut {n}");
        assert_eq!(tx(&mut rt, "8003000101"), "5A9000", "cut {n}");
    }
    assert!(cuts > 3, "only {cuts} write points");
}

/// A shareable call that calls on into a third context (Java Card 3.0.5 runtime environment
/// specification §6.2.5: each call switches context, nested): a `kagi.pkgctx` member asks
/// `kagi.relay`'s Relay (installed as F06B6167690401, the instance the `kagi.share` server
/// grants) for its count; Relay adds 1 to the server's total and answers it. A call back into
/// the package whose call is under way (the member's sibling, whose own count is 1) runs there,
/// nested in the call that is waiting. A sibling in the same package answers directly.
#[test]
fn a_shareable_call_reaches_a_third_context_and_back() {
    let mut rt = relay_card(false);
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690501 00"), "9000");
    assert_eq!(tx(&mut rt, "8007000007 F06B6167690401 02"), "00019000");
    assert_eq!(tx(&mut rt, "8007000007 F06B6167690401 02"), "00029000");
    // The sibling, directly: its own count (0), then one hit (own 1).
    assert_eq!(tx(&mut rt, "8007000007 F06B6167690502 02"), "00009000");
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690502 00"), "9000");
    assert_eq!(tx(&mut rt, "8001000004"), "000100019000");
    // The server's own view: the two adds Relay made.
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690301 00"), "9000");
    assert_eq!(tx(&mut rt, "8001000002"), "00029000");
    // Relay in mode 1: back into kagi.pkgctx, whose call (0501's) is under way: 0502's own
    // count, read in the package's context.
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690401 00"), "9000");
    assert_eq!(tx(&mut rt, "80010100"), "9000");
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690501 00"), "9000");
    assert_eq!(tx(&mut rt, "8007000007 F06B6167690401 02"), "00019000");
    // 0501's own state is what it was (the nested call ran as 0502, then 0501 went on).
    assert_eq!(tx(&mut rt, "8001000004"), "000200019000");
}

/// Share, pkgctx (members 0501, 0502), Relay (F06B6167690401) and, with `pong`, Pong
/// (F06B6167690701) on one card.
fn relay_card(pong: bool) -> Runtime {
    let (s, m, r) = (cap(SHARE), cap(PKGCTX), cap("../jcvm/tests/jc/relay.cap"));
    let mut store = Store::new(1 << 20);
    load_block(&mut store, &s, true).unwrap();
    install(&mut store, &s, 0, &h("F06B6167690301"), &h("C900")).unwrap();
    load_block(&mut store, &m, true).unwrap();
    install(&mut store, &m, 0, &h("F06B6167690501"), &h("C900")).unwrap();
    install(&mut store, &m, 0, &h("F06B6167690502"), &h("C900")).unwrap();
    load_block(&mut store, &r, true).unwrap();
    install(&mut store, &r, 0, &h("F06B6167690401"), &h("C900")).unwrap();
    if pong {
        let p = cap("../jcvm/tests/jc/pong.cap");
        load_block(&mut store, &p, true).unwrap();
        install(&mut store, &p, 0, &h("F06B6167690701"), &h("C900")).unwrap();
    }
    runtime(store)
}

/// Two applets that call each other back without end (Pong asks Relay in mode 2, which asks
/// Pong again, each a call back into a context whose call is under way) end in an exception
/// at the nesting bound, never in a host stack overflow. With at most
/// `applet_sim::callers::MAX_NESTING` (8) contexts' calls under way, the command's context
/// (the member 0501) is followed by Pong, Relay, Pong, Relay, Pong, Relay, Pong: four Pong
/// calls, the innermost refused Relay's object and answers 1, each outer one adds 1 → 4, and
/// Pong's persistent count of calls, written in every nested call, is 4.
#[test]
fn applets_calling_each_other_back_stop_at_the_nesting_bound() {
    assert_eq!(applet_sim::callers::MAX_NESTING, 8);
    let mut rt = relay_card(true);
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690401 00"), "9000");
    assert_eq!(tx(&mut rt, "80010200"), "9000");
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690501 00"), "9000");
    assert_eq!(tx(&mut rt, "8007000007 F06B6167690701 02"), "00049000");
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690701 00"), "9000");
    assert_eq!(tx(&mut rt, "8001000002"), "00049000");
    // Again, from Pong's count reset: the same answer (nothing left busy).
    assert_eq!(tx(&mut rt, "80020000"), "9000");
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690501 00"), "9000");
    assert_eq!(tx(&mut rt, "8007000007 F06B6167690701 02"), "00049000");
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690701 00"), "9000");
    assert_eq!(tx(&mut rt, "8001000002"), "00049000");
}

/// Multiselection within one package (Java Card 3.0.5 runtime environment specification
/// §4.2): while an instance of the package is selected on another channel, a `MultiSelectable`
/// applet gets `select(appInstAlreadyActive)` / `deselect(appInstStillActive)` instead of
/// `Applet.select()` / `deselect()`, and the context's CLEAR_ON_DESELECT arrays clear only
/// when no instance of the package stays selected. `Member` answers (INS 09) its scratch byte
/// and how it was selected (00 Applet.select, 01 select(false), 02 select(true)).
#[test]
fn multiselection_keeps_the_package_active_until_its_last_channel() {
    let mut store = two_members();
    let s = cap(SHARE);
    load(&mut store, &s).unwrap();
    install(&mut store, &s, 0, &h("F06B6167690301"), &h("C900")).unwrap();
    let mut rt = runtime(store);
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690501 00"), "9000");
    assert_eq!(tx(&mut rt, "8009000002"), "00009000");
    assert_eq!(tx(&mut rt, "80081100"), "9000");
    assert_eq!(tx(&mut rt, "0070000001"), "019000");
    assert_eq!(tx(&mut rt, "01A4040007 F06B6167690502 00"), "9000");
    assert_eq!(tx(&mut rt, "8109000002"), "00019000");
    assert_eq!(tx(&mut rt, "81082200"), "9000");
    // 0502 leaves (channel 1 closed); 0501 keeps the package active: nothing cleared.
    assert_eq!(tx(&mut rt, "00708001"), "9000");
    assert_eq!(tx(&mut rt, "8009000002"), "11009000");
    // 0501 on a second channel too: select(true), the same scratch.
    assert_eq!(tx(&mut rt, "0070000001"), "019000");
    assert_eq!(tx(&mut rt, "01A4040007 F06B6167690501 00"), "9000");
    assert_eq!(tx(&mut rt, "8109000002"), "11029000");
    // 0502 on channel 0 (0501 stays on 1): select(false), its scratch kept since the package
    // never went inactive.
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690502 00"), "9000");
    assert_eq!(tx(&mut rt, "8009000002"), "22019000");
    // The last instance leaves: another package's applet on channel 0 after channel 1
    // closed. Then the arrays are cleared and 0501 comes back through Applet.select.
    assert_eq!(tx(&mut rt, "00708001"), "9000");
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690301 00"), "9000");
    assert_eq!(tx(&mut rt, "00A4040007 F06B6167690501 00"), "9000");
    assert_eq!(tx(&mut rt, "8009000002"), "00009000");
}

/// Two applets of one package that are not `MultiSelectable` cannot be selected at once:
/// the second SELECT is refused (6985) while the first stays selected.
#[test]
fn a_package_without_multiselectable_is_selected_on_one_channel_at_a_time() {
    let c = cap("../jcvm/tests/jc/conf.cap");
    let mut store = Store::new(1 << 20);
    load(&mut store, &c).unwrap();
    install(&mut store, &c, 0, &h("F06B616769010101"), &h("C900")).unwrap();
    install(&mut store, &c, 1, &h("F06B616769010201"), &h("C900")).unwrap();
    let mut rt = runtime(store);
    assert_eq!(tx(&mut rt, "00A4040008 F06B616769010101 00"), "9000");
    assert_eq!(tx(&mut rt, "0070000001"), "019000");
    assert_eq!(tx(&mut rt, "01A4040008 F06B616769010201 00"), "6985");
    assert_eq!(tx(&mut rt, "00708001"), "9000");
    assert_eq!(tx(&mut rt, "00A4040008 F06B616769010201 00"), "9000");
}
