//! Java Card transaction semantics (JC 3.0.5 runtime environment spec §7, API of `OwnerPIN`
//! and `Util`) and power loss, over the conformance applet's `txSemantics` (INS 16) and
//! `tearing` (INS 17) methods (`tests/jc/src/kagi/conf/Conf.java`). The expected values are
//! worked out from the Java source and the specification, never taken from the VM.

mod common;
use common::*;
use kagi_jcvm::{Answer, Limits, Vm};

const CAP: &str = "tests/jc/conf.cap";
const AID: [u8; 7] = [0xF0, 0x6B, 0x61, 0x67, 0x69, 0x01, 0x01];

fn card() -> (Vm, Mem) {
    let (mut vm, mut mem, _) = installed(CAP, Limits::default());
    assert_eq!(
        vm.select(&mut mem, &select_cmd(&AID)),
        Answer::Ok(vec![]),
        "{:?}",
        vm.last_error()
    );
    (vm, mem)
}

fn send(vm: &mut Vm, mem: &mut Mem, ins: u8, p1: u8, data: &[u8]) -> Answer {
    vm.process(mem, &cmd([0x80, ins, p1, 0], data, 256))
}

fn run(vm: &mut Vm, mem: &mut Mem, ins: u8, p1: u8, data: &[u8]) -> Vec<u8> {
    match send(vm, mem, ins, p1, data) {
        Answer::Ok(v) => v,
        other => panic!(
            "expected data and 9000, got {other:?} ({:?})",
            vm.last_error()
        ),
    }
}

/// Power is cut and comes back: the store loses its open journal, the machine its RAM.
fn power_cycle(vm: &mut Vm, mem: &mut Mem) {
    mem.power_up();
    vm.reset();
}

/// The PIN of the applet is "1234" with a try limit of 3 (its constructor). A wrong PIN
/// presented inside a transaction that the applet then aborts still costs a try: the OwnerPIN
/// specification says the try counter, validated flag and blocking state never take part in
/// a transaction during PIN presentation. If they did, an applet (or an attacker driving one
/// that aborts on failure) could guess without limit.
#[test]
fn a_pin_try_is_not_given_back_by_abort_transaction() {
    let (mut vm, mut mem) = card();
    // check=false, tries 3-1=2, not validated.
    let r = run(&mut vm, &mut mem, 0x16, 0, b"0000");
    assert_eq!(r, [0, 2, 0]);
    let r = run(&mut vm, &mut mem, 0x16, 0, b"9999");
    assert_eq!(r, [0, 1, 0]);
    // The counter is persistent: after power loss it is still 1.
    power_cycle(&mut vm, &mut mem);
    let r = run(&mut vm, &mut mem, 0x16, 0, b"1111");
    assert_eq!(r, [0, 0, 0], "the third wrong PIN blocks");
    // Blocked: even the right PIN fails and the counter stays 0.
    let r = run(&mut vm, &mut mem, 0x16, 0, b"1234");
    assert_eq!(r, [0, 0, 0]);
}

/// A right PIN inside an aborted transaction: the validated flag stays set and the counter
/// is back at the try limit (both are PIN-presentation state, outside the transaction).
#[test]
fn a_successful_check_inside_an_aborted_transaction_stays_validated_and_reset() {
    let (mut vm, mut mem) = card();
    // One wrong PIN outside a transaction (INS 12: check, tries, validated): 2 left.
    assert_eq!(run(&mut vm, &mut mem, 0x12, 0, b"0000"), [0, 2, 0]);
    let r = run(&mut vm, &mut mem, 0x16, 0, b"1234");
    assert_eq!(r, [1, 3, 1]);
    power_cycle(&mut vm, &mut mem);
    // After a reset the flag is gone (it is transient) and the counter stays 3.
    assert_eq!(run(&mut vm, &mut mem, 0x12, 0, b"0000"), [0, 2, 0]);
}

/// `txSemantics` P1=1 (see Conf.java): inside a transaction it writes `a[0]=0x11`, non-atomic
/// fill `a[1..3]=0x22`, non-atomic copy `a[3..5]=TABLE[0..2]={1,2}`, atomic copy
/// `a[5..7]=TABLE[2..4]`, `a[7]=0x77`, `counter=77`, transient `onReset[0]=5`, then aborts.
/// The API spec: arrayFillNonAtomic/arrayCopyNonAtomic do not participate in the
/// transaction; arrayCopy and field/array stores do; transient arrays never do.
#[test]
fn non_atomic_writes_and_transient_arrays_survive_an_abort_the_rest_rolls_back() {
    let (mut vm, mut mem) = card();
    let r = run(&mut vm, &mut mem, 0x16, 1, &[]);
    let want_array = [0x00, 0x22, 0x22, 0x01, 0x02, 0x00, 0x00, 0x00];
    assert_eq!(&r[..8], want_array, "array after abort");
    assert_eq!(&r[8..10], 10i16.to_be_bytes(), "counter rolled back to 10");
    assert_eq!(r[10], 5, "transient array keeps its write");
    // The persistent image agrees after power loss (read back with `tearing` P1=2:
    // a[0..3] and counter).
    power_cycle(&mut vm, &mut mem);
    let r = run(&mut vm, &mut mem, 0x17, 2, &[]);
    assert_eq!(r, [0x00, 0x22, 0x22, 0x00, 10]);
}

const OLD: [u8; 5] = [1, 2, 0x00, 0x03, 4];
const NEW: [u8; 5] = [0xA1, 0xA2, 0x12, 0x34, 0xA5];

/// What `tearing` P1=2 reads back (a[0], a[1], a[2], counter) after `tearing` wrote `v`
/// (a[0]=v[0], a[1]=v[1], counter=v[2..4], a[2]=v[4]).
fn readback(v: &[u8; 5]) -> Vec<u8> {
    vec![v[0], v[1], v[4], v[2], v[3]]
}

/// Outside a transaction every persistent store is its own atomic write, in program order:
/// power lost at the k-th write of the four keeps exactly the first k-1 (a real card's
/// EEPROM behaviour), never a half-written value and never a later write without an earlier.
#[test]
fn power_loss_between_two_writes_of_one_command_keeps_the_first() {
    for k in 1..=5u64 {
        let (mut vm, mut mem) = card();
        assert_eq!(run(&mut vm, &mut mem, 0x17, 0, &OLD), b"");
        mem.tear_at = Some(mem.writes + k);
        let a = send(&mut vm, &mut mem, 0x17, 0, &NEW);
        power_cycle(&mut vm, &mut mem);
        let got = run(&mut vm, &mut mem, 0x17, 2, &[]);
        // The writes in program order: a[0], a[1], counter, a[2].
        let (o, n) = (OLD, NEW);
        let states = [
            readback(&o),
            vec![n[0], o[1], o[4], o[2], o[3]],
            vec![n[0], n[1], o[4], o[2], o[3]],
            vec![n[0], n[1], o[4], n[2], n[3]],
            readback(&n),
        ];
        if k <= 4 {
            assert_eq!(a, Answer::Torn, "power cut at write {k}");
        } else {
            assert_eq!(a, Answer::Ok(vec![]), "four writes only");
        }
        assert_eq!(got, states[(k - 1) as usize], "power cut at write {k}");
    }
}

/// Inside a transaction the same four writes are all-or-nothing whichever write power is
/// lost at (the journal and the commit record).
#[test]
fn power_loss_inside_a_transaction_is_all_or_nothing() {
    let mut seen_old = false;
    for k in 1..=8u64 {
        let (mut vm, mut mem) = card();
        assert_eq!(run(&mut vm, &mut mem, 0x17, 0, &OLD), b"");
        mem.tear_at = Some(mem.writes + k);
        let a = send(&mut vm, &mut mem, 0x17, 1, &NEW);
        power_cycle(&mut vm, &mut mem);
        let got = run(&mut vm, &mut mem, 0x17, 2, &[]);
        if a == Answer::Torn {
            assert_eq!(
                got,
                readback(&OLD),
                "power cut at write {k} before the commit"
            );
            seen_old = true;
        } else {
            assert_eq!(a, Answer::Ok(vec![]));
            assert_eq!(got, readback(&NEW), "committed");
        }
    }
    assert!(seen_old, "some cut fell inside the transaction");
}
