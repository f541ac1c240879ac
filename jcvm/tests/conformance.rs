//! kagi's conformance applet (`tests/jc/src/kagi/conf/*.java`, built into `tests/jc/conf.cap`
//! by `tests/jc/build.sh`) run by the VM. Every expected answer is worked out here from the
//! Java source with plain Rust arithmetic (Java's short and int arithmetic wraps like Rust's
//! `wrapping_*` on `i16`/`i32`), never taken from the VM.

mod common;
use common::*;
use kagi_jcvm::{Answer, ApduIn, Limits, Vm};

const CAP: &str = "tests/jc/conf.cap";
const AID: [u8; 7] = [0xF0, 0x6B, 0x61, 0x67, 0x69, 0x01, 0x01];

fn card() -> (Vm, Mem) {
    card_with(Limits::default())
}

fn card_with(limits: Limits) -> (Vm, Mem) {
    let (mut vm, mut mem, _) = installed(CAP, limits);
    assert_eq!(
        vm.select(&mut mem, &select_cmd(&AID)),
        Answer::Ok(vec![]),
        "{:?}",
        vm.last_error()
    );
    (vm, mem)
}

fn send(vm: &mut Vm, mem: &mut Mem, ins: u8, p1: u8, p2: u8, data: &[u8]) -> Answer {
    let a = vm.process(mem, &cmd([0x80, ins, p1, p2], data, 256));
    if let Answer::Sw(0x6F00) = a {
        eprintln!("6F00: {:?}", vm.last_error());
    }
    a
}

fn ok(a: Answer) -> Vec<u8> {
    match a {
        Answer::Ok(v) => v,
        other => panic!("expected data and 9000, got {other:?}"),
    }
}

fn shorts(v: &[i16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

#[test]
fn echo() {
    let (mut vm, mut mem) = card();
    assert_eq!(ok(send(&mut vm, &mut mem, 0x11, 0, 0, b"hello")), b"hello");
}

#[test]
fn short_arithmetic_wraps_like_java() {
    let (mut vm, mut mem) = card();
    for (a, b) in [
        (30000i16, 12345i16),
        (-32768, -1),
        (-7, 2),
        (1234, -5),
        (100, 100),
    ] {
        let mut data = a.to_be_bytes().to_vec();
        data.extend_from_slice(&b.to_be_bytes());
        let got = ok(send(&mut vm, &mut mem, 0x01, 0, 0, &data));
        let ai = i32::from(a);
        let c1 = a.wrapping_add(100);
        let want = shorts(&[
            a.wrapping_add(b),
            a.wrapping_sub(b),
            a.wrapping_mul(b),
            a.wrapping_div(b),
            a.wrapping_rem(b),
            (ai << 3) as i16,
            (ai >> 3) as i16,
            ((ai as u32) >> 3) as i16,
            a.wrapping_neg(),
            a & b,
            a | b,
            a ^ b,
            i16::from(a as i8),
            c1,
            c1.wrapping_add(1000),
            if a < b {
                1
            } else if a == b {
                2
            } else {
                3
            },
        ]);
        assert_eq!(got, want, "a={a} b={b}");
    }
}

#[test]
fn int_arithmetic_wraps_like_java() {
    let (mut vm, mut mem) = card();
    for (a, b) in [
        (2_000_000_000i32, 1_500_000_000i32),
        (i32::MIN, -1),
        (-77, 5),
        (123_456, -789),
    ] {
        let mut data = a.to_be_bytes().to_vec();
        data.extend_from_slice(&b.to_be_bytes());
        let got = ok(send(&mut vm, &mut mem, 0x02, 0, 0, &data));
        let mut want = Vec::new();
        for v in [
            a.wrapping_add(b),
            a.wrapping_sub(b),
            a.wrapping_mul(b),
            a.wrapping_div(b),
            a.wrapping_rem(b),
            a.wrapping_shl(5),
            a >> 5,
            ((a as u32) >> 5) as i32,
            a.wrapping_neg(),
            a & b,
            a | b,
            a ^ b,
            a.wrapping_add(70000),
        ] {
            want.extend_from_slice(&v.to_be_bytes());
        }
        want.extend_from_slice(&(a as i16).to_be_bytes());
        want.push(if a < b {
            1
        } else if a == b {
            2
        } else {
            3
        });
        assert_eq!(got, want, "a={a} b={b}");
    }
}

#[test]
fn arrays_of_every_kind_and_their_exceptions() {
    let (mut vm, mut mem) = card();
    for i in 0u8..4 {
        let got = ok(send(&mut vm, &mut mem, 0x03, i, 0, &[]));
        let k = i16::from(i);
        let mut want = shorts(&[i16::from((k * 100) as i8), (i32::from(k) * 10000) as i16]);
        want.extend_from_slice(&(i32::from(k) * 1_000_000).to_be_bytes());
        want.push(u8::from(k & 1 == 1));
        want.extend_from_slice(&[1, 1]);
        // 4 + 4 + 4 + 2 + TABLE.length 5 + TABLE[4] 5
        want.extend_from_slice(&shorts(&[24]));
        // `buf[o++] = none[0]`: Java evaluates o++ before none[0] throws, so one byte of the
        // buffer (byte 13, zero) is skipped before the NPE marker.
        want.push(0);
        want.extend_from_slice(&shorts(&[0x0E0E]));
        // new short[i - 10] is negative for i < 10.
        want.extend_from_slice(&shorts(&[0x0D0D]));
        assert_eq!(got, want, "i={i}");
    }
    // Index 4: ArrayIndexOutOfBoundsException at the first access, caught; the skipped byte
    // (see above) is buffer byte 2, still P1.
    let got = ok(send(&mut vm, &mut mem, 0x03, 4, 0, &[]));
    assert_eq!(
        got,
        [&shorts(&[0x0A0B])[..], &[4], &shorts(&[0x0E0E, 0x0D0D])].concat()
    );
    // Index 12: a non-negative size, new short[2].
    let got = ok(send(&mut vm, &mut mem, 0x03, 12, 0, &[]));
    assert_eq!(
        got,
        [&shorts(&[0x0A0B])[..], &[12], &shorts(&[0x0E0E, 2])].concat()
    );
}

#[test]
fn table_and_lookup_switches_short_and_int() {
    let (mut vm, mut mem) = card();
    let expect = |p1: i16| -> Vec<u8> {
        let r1 = match p1 {
            0..=3 => 10 + p1,
            _ => -1,
        };
        let r2 = match p1 {
            -100 => 1,
            7 => 2,
            1000 => 3,
            31 => 4,
            _ => 0,
        };
        let key = i32::from(p1) * 100_000;
        let r3 = match key {
            0 => 20,
            100_000 => 21,
            200_000 => 22,
            300_000 => 23,
            _ => -2,
        };
        let r4 = match key {
            -700_000 => 5,
            3_100_000 => 6,
            _ => -3,
        };
        shorts(&[r1, r2, r3, r4])
    };
    for p1 in [0u8, 1, 2, 3, 4, 7, 31, 0x9C, 0xF9, 0xFF] {
        let got = ok(send(&mut vm, &mut mem, 0x04, p1, 0, &[]));
        assert_eq!(got, expect(i16::from(p1 as i8)), "p1={p1:#x}");
    }
}

#[test]
fn virtual_super_and_interface_dispatch() {
    let (mut vm, mut mem) = card();
    let got = ok(send(&mut vm, &mut mem, 0x05, 0, 0, &[]));
    // Square(5): 25, id 1; Rect(3,7): 21, id 2; Cube(2): 6 * 4 = 24 (super.area()), id 3;
    // twice() is Shape's, calling the overriding area().
    assert_eq!(got, shorts(&[25, 1, 50, 21, 2, 42, 24, 3, 48]));
}

#[test]
fn exceptions_unwind_frames_to_their_handler() {
    let (mut vm, mut mem) = card();
    for at in [0u8, 1, 5, 20] {
        let got = ok(send(&mut vm, &mut mem, 0x06, at, 0, &[]));
        assert_eq!(
            got,
            shorts(&[0x100 + i16::from(at), 1, 0x6A88, 0xAE]),
            "thrown at depth {at}"
        );
    }
    // ISOException out of process: its reason is the status word.
    assert_eq!(
        send(&mut vm, &mut mem, 0x0C, 0x6A, 0x82, &[]),
        Answer::Sw(0x6A82)
    );
}

#[test]
fn transactions_abort_restores_and_commit_keeps() {
    let (mut vm, mut mem) = card();
    let got = ok(send(&mut vm, &mut mem, 0x07, 0, 0, &[]));
    // depth 1 inside; persistent[0] back to 1 after abort; persistent[1] 3 after commit;
    // depth 0; counter (set to 500 inside the aborted transaction) back to 0; onDeselect is
    // CLEAR_ON_DESELECT (2), persistent is not transient (0).
    assert_eq!(got, vec![1, 1, 3, 0, 0, 0, 2, 0]);
}

#[test]
fn transient_arrays_clear_on_deselect_and_reset() {
    let (mut vm, mut mem) = card();
    ok(send(&mut vm, &mut mem, 0x08, 0x11, 0x22, &[]));
    assert_eq!(
        ok(send(&mut vm, &mut mem, 0x09, 0, 0, &[])),
        vec![0x11, 0x22]
    );
    vm.deselect(&mut mem);
    vm.select(&mut mem, &select_cmd(&AID));
    assert_eq!(
        ok(send(&mut vm, &mut mem, 0x09, 0, 0, &[])),
        vec![0x00, 0x22]
    );
    ok(send(&mut vm, &mut mem, 0x08, 0x33, 0x44, &[]));
    vm.reset();
    vm.select(&mut mem, &select_cmd(&AID));
    assert_eq!(
        ok(send(&mut vm, &mut mem, 0x09, 0, 0, &[])),
        vec![0x00, 0x00]
    );
}

#[test]
fn an_endless_loop_ends_with_6f00_and_the_card_stays_up() {
    let (mut vm, mut mem) = card_with(Limits {
        budget: 200_000,
        ..Limits::default()
    });
    assert_eq!(send(&mut vm, &mut mem, 0x0A, 0, 0, &[]), Answer::Sw(0x6F00));
    assert!(
        vm.last_error().unwrap().contains("budget"),
        "{:?}",
        vm.last_error()
    );
    assert_eq!(ok(send(&mut vm, &mut mem, 0x11, 0, 0, b"ok")), b"ok");
}

#[test]
fn unbounded_recursion_is_an_exception_not_a_crash() {
    let (mut vm, mut mem) = card();
    assert_eq!(send(&mut vm, &mut mem, 0x0B, 0, 0, &[]), Answer::Sw(0x6F00));
    assert!(
        vm.last_error().unwrap().contains("stack overflow"),
        "{:?}",
        vm.last_error()
    );
    assert_eq!(ok(send(&mut vm, &mut mem, 0x11, 0, 0, b"ok")), b"ok");
}

#[test]
fn fields_statics_and_int_fields_persist_across_a_fresh_vm() {
    let (mut vm, mut mem) = card();
    let pkg = link(CAP);
    for k in 1..=3i32 {
        let got = ok(send(&mut vm, &mut mem, 0x0D, 0, 0, &[]));
        let mut want = (k as i16).to_be_bytes().to_vec();
        want.extend_from_slice(&(k * 100_000).to_be_bytes());
        want.extend_from_slice(&(7 + k as i16).to_be_bytes());
        assert_eq!(got, want);
    }
    // A new machine over the same memory (a card image restored) continues the counters.
    let mut vm2 = Vm::new(pkg, &AID, Limits::default());
    vm2.select(&mut mem, &select_cmd(&AID));
    let got = ok(send(&mut vm2, &mut mem, 0x0D, 0, 0, &[]));
    let mut want = 4i16.to_be_bytes().to_vec();
    want.extend_from_slice(&400_000i32.to_be_bytes());
    want.extend_from_slice(&11i16.to_be_bytes());
    assert_eq!(got, want);
}

#[test]
fn loops_casts_util_and_pins() {
    let (mut vm, mut mem) = card();
    let n: i16 = 1000;
    let sum = (0..n).fold(0i16, |s, i| s.wrapping_add(i ^ 0x55));
    assert_eq!(
        ok(send(&mut vm, &mut mem, 0x0E, 0, 0, &n.to_be_bytes())),
        shorts(&[sum])
    );
    // instanceof: Shape 1, Square 2, (Rect no), Cube is a Square 8, Named 0x10, byte[] 0x20,
    // (short[] no), Shape[] is an Object[] 0x80; (Rect) square throws; Cube(2).area() 24.
    assert_eq!(
        ok(send(&mut vm, &mut mem, 0x0F, 0, 0, &[])),
        shorts(&[0x01 | 0x02 | 0x08 | 0x10 | 0x20 | 0x80, 0xCC, 24])
    );
    assert_eq!(
        ok(send(&mut vm, &mut mem, 0x10, 0, 0, &[])),
        vec![
            0xFF, 0x01, 0x00, 0x12, 0xF0, 0x5A, 0x5A, 0x5A, 1, 2, 3, 0xAA
        ]
    );
    // OwnerPIN(3 tries) with "1234": wrong, wrong, right (tries back to 3), validated.
    assert_eq!(
        ok(send(&mut vm, &mut mem, 0x12, 0, 0, b"0000")),
        vec![0, 2, 0]
    );
    assert_eq!(
        ok(send(&mut vm, &mut mem, 0x12, 0, 0, b"123")),
        vec![0, 1, 0]
    );
    assert_eq!(
        ok(send(&mut vm, &mut mem, 0x12, 0, 0, b"1234")),
        vec![1, 3, 1]
    );
}

#[test]
fn static_byte_int_ref_fields_dups_pop2_areturn_and_short_lookupswitch() {
    let (mut vm, mut mem) = card();
    // INS 13 (`more`): sb += 3 (static byte, from 5), si += 7 (static int, from 100000),
    // fb = (byte) (sb * 2) read back through self() (areturn), sa == persistent, null test,
    // ss[1] += 9 and is[1] += 70000 (dup2), m = (ss[0] = 3) (dup_x), twice(5) dropped (pop2),
    // then a sparse switch on P2 (slookupswitch).
    for (call, p2, r) in [
        (1i16, 7u8, 2i16),
        (2, 0x9C, 1),
        (3, 100, 3),
        (4, 31, 4),
        (5, 8, 0),
    ] {
        let sb = 5 + 3 * call;
        let si = 100_000 + 7 * i32::from(call);
        let mut want = vec![sb as u8];
        want.extend_from_slice(&si.to_be_bytes());
        want.extend_from_slice(&[(sb * 2) as u8, 1, 1]);
        want.extend_from_slice(&9i16.to_be_bytes());
        want.extend_from_slice(&70_000i32.to_be_bytes());
        want.extend_from_slice(&shorts(&[6, r]));
        assert_eq!(
            ok(send(&mut vm, &mut mem, 0x13, 0, p2, &[])),
            want,
            "call {call}"
        );
    }
}

#[test]
fn the_applets_own_aid() {
    let (mut vm, mut mem) = card();
    // getAID().equals(data), partialEquals(first 5 bytes of data), lookupAID(own) == getAID(),
    // then getBytes: length and the AID itself.
    let mut want = vec![1, 1, 1, AID.len() as u8];
    want.extend_from_slice(&AID);
    assert_eq!(ok(send(&mut vm, &mut mem, 0x14, 0, 0, &AID)), want);
    let other = [0xF0, 0x6B, 0x61, 0x67, 0x69, 0x09, 0x09];
    let mut want = vec![0, 1, 1, AID.len() as u8];
    want.extend_from_slice(&AID);
    assert_eq!(ok(send(&mut vm, &mut mem, 0x14, 0, 0, &other)), want);
}

/// A `static final` constant of the API, from the kit's export files (the generated table).
fn api_constant(class: &str, field: &str) -> i16 {
    let c = kagi_jcvm::api::class_by_name(class).unwrap();
    kagi_jcvm::api::CLASSES[c]
        .fields
        .iter()
        .find(|f| f.name == field)
        .and_then(|f| f.value)
        .unwrap() as i16
}

#[test]
fn api_exceptions_are_throwable_objects_with_reasons() {
    let (mut vm, mut mem) = card();
    // commitTransaction without a transaction, a transient array for an unknown event,
    // ISOException caught as its superclass CardRuntimeException, and a virtual call on null.
    let mut want = shorts(&[
        api_constant("javacard.framework.TransactionException", "NOT_IN_PROGRESS"),
        api_constant("javacard.framework.SystemException", "ILLEGAL_VALUE"),
        0x6A80,
    ]);
    want.push(0x4E);
    assert_eq!(ok(send(&mut vm, &mut mem, 0x15, 0, 0, &[])), want);
}

#[test]
fn unknown_instruction_and_select_of_the_wrong_kind() {
    let (mut vm, mut mem) = card();
    assert_eq!(send(&mut vm, &mut mem, 0x55, 0, 0, &[]), Answer::Sw(0x6D00));
    let _ = ApduIn::default();
}

#[test]
#[ignore]
fn measure_bytecodes_per_second() {
    let (mut vm, mut mem) = card_with(Limits {
        budget: u64::MAX,
        ..Limits::default()
    });
    let n: i16 = 30000;
    let before = vm.executed();
    let t = std::time::Instant::now();
    for _ in 0..20 {
        ok(send(&mut vm, &mut mem, 0x0E, 0, 0, &n.to_be_bytes()));
    }
    let dt = t.elapsed();
    let count = vm.executed() - before;
    eprintln!(
        "MEASURE tight loop: {count} bytecodes in {dt:?} = {:.1} M bytecodes/s",
        count as f64 / dt.as_secs_f64() / 1e6
    );
    let t = std::time::Instant::now();
    for _ in 0..2000 {
        ok(send(&mut vm, &mut mem, 0x11, 0, 0, b"0123456789"));
    }
    eprintln!(
        "MEASURE echo APDU through the VM: {:?} each",
        t.elapsed() / 2000
    );
}

/// The conformance CAP with constant pool entry `index`'s token (its last byte) replaced.
fn with_cp_token(index: usize, token: u8) -> kagi_cap::CapFile {
    let mut b = cap(CAP).load_file_data_block(true);
    let mut at = 0;
    while b[at] != kagi_cap::Component::ConstantPool.tag() {
        at += 3 + usize::from(u16::from_be_bytes([b[at + 1], b[at + 2]]));
    }
    // tag, size, count, then 4-byte entries.
    b[at + 5 + 4 * index + 3] = token;
    kagi_cap::CapFile::from_ijc(&b).unwrap()
}

#[test]
fn an_api_token_the_card_lacks_is_refused_at_link_naming_it() {
    let pkg = link(CAP);
    // The first external static method reference (an API static method or constructor).
    let (i, class) = pkg
        .model
        .constant_pool
        .iter()
        .enumerate()
        .find_map(|(i, e)| match e {
            kagi_cap::CpEntry::StaticMethod(kagi_cap::StaticRef::External {
                package,
                class,
                ..
            }) => Some((i, (pkg.imports[usize::from(*package)], *class))),
            _ => None,
        })
        .expect("an external static method");
    let class_name =
        kagi_jcvm::api::CLASSES[kagi_jcvm::api::class_by_token(class.0, class.1).unwrap()].name;
    let e = kagi_jcvm::Package::link(&with_cp_token(i, 200)).unwrap_err();
    assert!(
        matches!(&e, kagi_jcvm::LinkError::Token(m) if m.contains("static method token 200") && m.contains(class_name)),
        "{e}"
    );
}

#[test]
fn an_unsupported_bytecode_is_named_with_its_class_and_method() {
    // The conformance CAP with the first bytecode of its install method replaced by impdep1
    // (0xFE, reserved for implementations: kagi has none).
    let c = cap(CAP);
    let mut b = c.load_file_data_block(true);
    let mut at = 0;
    while b[at] != kagi_cap::Component::Method.tag() {
        at += 3 + usize::from(u16::from_be_bytes([b[at + 1], b[at + 2]]));
    }
    let install = c.applets()[0].install_method_offset;
    let pkg = link(CAP);
    let code = pkg.model.methods.header(install).unwrap().code;
    b[at + 3 + usize::from(code)] = 0xFE;
    let bad = kagi_cap::CapFile::from_ijc(&b).unwrap();
    let pkg = std::sync::Arc::new(kagi_jcvm::Package::link(&bad).unwrap());
    let mut vm = Vm::new(pkg, &AID, Limits::default());
    let mut mem = Mem::default();
    assert_eq!(
        vm.install(&mut mem, install, &params(&AID, &[])),
        Answer::Sw(0x6F00)
    );
    let e = vm.last_error().unwrap();
    assert!(
        // Conf is public class token 1 (the converter's listing conf.jca: `.class public
        // Conf 1`; Ext is 0).
        e.contains("unsupported bytecode impdep1 (0xfe)")
            && e.contains("class token 1, static method"),
        "{e}"
    );
}

/// jsr and ret (JCVM §7.5.55, §7.5.83), which today's converters no longer emit: the
/// conformance applet's `jsrSlot(x)` (INS 27; as compiled, x * 3 + 7 — its bytecode from the
/// converter's listing conf.jca) is replaced by a subroutine that adds 5 to local 0, called
/// twice by jsr and left by ret through the return address it stored in local 1: x + 10.
#[test]
fn jsr_and_ret_run_a_subroutine_twice() {
    let (mut vm, mut mem) = card();
    assert_eq!(
        ok(send(&mut vm, &mut mem, 0x27, 0, 0, &shorts(&[0x1234]))),
        shorts(&[0x1234i16.wrapping_mul(3).wrapping_add(7)])
    );
    // sload_0 sconst_3 smul sstore_1 sload_1 bspush 7 sadd sstore_2 sload_2 sconst_1 ssub
    // sstore_3 sload_3 sconst_1 sadd sstore 4 sload 4 sreturn
    let compiled = [
        0x1C, 0x06, 0x45, 0x30, 0x1D, 0x10, 0x07, 0x41, 0x31, 0x1E, 0x04, 0x43, 0x32, 0x1F, 0x04,
        0x41, 0x29, 0x04, 0x16, 0x04, 0x78,
    ];
    // 0: jsr +9; 3: jsr +6; 6: sload_0; 7: sreturn; 8: nop;
    // 9: astore_1; 10: sload_0; 11: bspush 5; 13: sadd; 14: sstore_0; 15: ret 1; nops.
    let patched = [
        0x71, 0x00, 0x09, 0x71, 0x00, 0x06, 0x1C, 0x78, 0x00, 0x2C, 0x1C, 0x10, 0x05, 0x41, 0x2F,
        0x72, 0x01, 0x00, 0x00, 0x00, 0x00,
    ];
    let c = cap(CAP);
    let mut b = c.load_file_data_block(true);
    let at: Vec<usize> = b
        .windows(compiled.len())
        .enumerate()
        .filter(|(_, w)| *w == compiled)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "jsrSlot's code occurs once");
    b[at[0]..at[0] + patched.len()].copy_from_slice(&patched);
    let bad = kagi_cap::CapFile::from_ijc(&b).unwrap();
    let pkg = std::sync::Arc::new(kagi_jcvm::Package::link(&bad).unwrap());
    let mut vm = Vm::new(pkg, &AID, Limits::default());
    let mut mem = Mem::default();
    let install = c.applets()[0].install_method_offset;
    assert_eq!(
        vm.install(&mut mem, install, &params(&AID, &[])),
        Answer::Ok(vec![])
    );
    assert_eq!(vm.select(&mut mem, &select_cmd(&AID)), Answer::Ok(vec![]));
    assert_eq!(
        ok(send(&mut vm, &mut mem, 0x27, 0, 0, &shorts(&[0x1234]))),
        shorts(&[0x1234 + 10])
    );
}
