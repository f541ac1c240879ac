//! No bytecode makes the VM panic: the conformance applet's Method, ConstantPool, Class and
//! StaticField components with bytes overwritten either fail to link (a typed error) or run
//! to an answer (a status word at worst), and the card keeps answering afterwards.

mod common;
use common::*;
use kagi_cap::{CapFile, Component};
use kagi_jcvm::{Limits, Package, Vm};
use proptest::prelude::*;
use std::sync::Arc;

fn block() -> Vec<u8> {
    cap("tests/jc/conf.cap").load_file_data_block(true)
}

/// Byte range of component `c`'s info inside the block.
fn info_range(block: &[u8], c: Component) -> std::ops::Range<usize> {
    let mut at = 0;
    while at + 3 <= block.len() {
        let n = usize::from(u16::from_be_bytes([block[at + 1], block[at + 2]]));
        if block[at] == c.tag() {
            return at + 3..at + 3 + n;
        }
        at += 3 + n;
    }
    panic!("component {c} present")
}

const AID: [u8; 7] = [0xF0, 0x6B, 0x61, 0x67, 0x69, 0x01, 0x01];

/// Runs install, select and `cmds`; whether the damaged package linked.
fn run(b: &[u8], cmds: &[(u8, u8, Vec<u8>)]) -> bool {
    let Ok(cap) = CapFile::from_ijc(b) else {
        return false;
    };
    let Ok(pkg) = Package::link(&cap) else {
        return false;
    };
    let Some(applet) = cap.applets().first().cloned() else {
        return false;
    };
    let limits = Limits {
        budget: 20_000,
        ..Limits::default()
    };
    let mut vm = Vm::new(Arc::new(pkg), &AID, limits);
    let mut mem = Mem::default();
    let _ = vm.install(&mut mem, applet.install_method_offset, &params(&AID, &[]));
    let _ = vm.select(&mut mem, &select_cmd(&AID));
    for (ins, p1, data) in cmds {
        let _ = vm.process(&mut mem, &cmd([0x80, *ins, *p1, 0], data, 256));
    }
    vm.deselect(&mut mem);
    vm.reset();
    true
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn corrupted_code_never_panics(
        which in 0usize..4,
        edits in prop::collection::vec((any::<u16>(), any::<u8>()), 1..12),
        cmds in prop::collection::vec((0u8..0x14, any::<u8>(), prop::collection::vec(any::<u8>(), 0..12)), 1..6),
    ) {
        let mut b = block();
        let c = [Component::Method, Component::ConstantPool, Component::Class, Component::StaticField][which];
        let r = info_range(&b, c);
        for (at, v) in edits {
            let i = r.start + usize::from(at) % r.len();
            b[i] = v;
        }
        let _ = run(&b, &cmds);
    }

    #[test]
    fn random_commands_to_the_real_applet_never_panic(
        cmds in prop::collection::vec((any::<u8>(), any::<u8>(), prop::collection::vec(any::<u8>(), 0..20)), 1..10),
    ) {
        prop_assert!(run(&block(), &cmds));
    }
}

/// Most single-byte damage to the Method component still links, so the proptest above really
/// runs damaged code (and does not only exercise the linker's refusals).
#[test]
fn damaged_method_bytes_mostly_link_and_run() {
    let b0 = block();
    let r = info_range(&b0, Component::Method);
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut linked = 0;
    for _ in 0..200 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let mut b = b0.clone();
        let i = r.start + (s as usize) % r.len();
        b[i] = (s >> 32) as u8;
        if run(
            &b,
            &[
                (0x01, 0, vec![0, 1, 0, 2]),
                (0x05, 0, vec![]),
                (0x06, 3, vec![]),
            ],
        ) {
            linked += 1;
        }
    }
    assert!(linked > 150, "only {linked} of 200 linked");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Damaged object records in the card's memory (a corrupted image) never panic the VM.
    #[test]
    fn damaged_object_records_never_panic(
        edits in prop::collection::vec((any::<u16>(), any::<u16>(), any::<u8>()), 1..10),
        cmds in prop::collection::vec((0u8..0x14, any::<u8>(), prop::collection::vec(any::<u8>(), 0..8)), 1..5),
    ) {
        let (_, mut mem, pkg) = installed("tests/jc/conf.cap", Limits { budget: 20_000, ..Limits::default() });
        let keys: Vec<String> = mem.data.keys().cloned().collect();
        for (k, at, v) in edits {
            let key = &keys[usize::from(k) % keys.len()];
            let rec = mem.data.get_mut(key).unwrap();
            if rec.is_empty() {
                continue;
            }
            let i = usize::from(at) % rec.len();
            rec[i] = v;
        }
        let mut vm = Vm::new(pkg, &AID, Limits { budget: 20_000, ..Limits::default() });
        let _ = vm.select(&mut mem, &select_cmd(&AID));
        for (ins, p1, data) in cmds {
            let _ = vm.process(&mut mem, &cmd([0x80, ins, p1, 0], &data, 256));
        }
    }
}
