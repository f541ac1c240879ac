//! The Java Card 3.0.5 bytecodes (JCVM specification chapter 7): mnemonics and operand
//! layouts, and a disassembler for traces and tests.

/// How an instruction's operands are laid out after the opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operands {
    /// None.
    None,
    /// One signed byte (`bspush`, branch offsets).
    S1,
    /// One unsigned byte (local index, field token, array type).
    U1,
    /// Two bytes (constant pool index, wide branch, `sspush`).
    U2,
    /// Four bytes (`iipush`).
    U4,
    /// `sinc`, `iinc`: index and signed byte.
    Inc,
    /// `sinc_w`, `iinc_w`: index and signed short.
    IncW,
    /// `invokeinterface`: nargs, u2 index, method token.
    Interface,
    /// `checkcast`, `instanceof`: atype and u2 index.
    Cast,
    /// `dup_x`, `swap_x`: one packed byte.
    MN,
    /// `stableswitch`.
    STable,
    /// `itableswitch`.
    ITable,
    /// `slookupswitch`.
    SLookup,
    /// `ilookupswitch`.
    ILookup,
}

/// The mnemonic and operand layout of `op`, `None` for an undefined opcode.
pub fn info(op: u8) -> Option<(&'static str, Operands)> {
    use Operands::*;
    const T: [(&str, Operands); 185] = [
        ("nop", None),
        ("aconst_null", None),
        ("sconst_m1", None),
        ("sconst_0", None),
        ("sconst_1", None),
        ("sconst_2", None),
        ("sconst_3", None),
        ("sconst_4", None),
        ("sconst_5", None),
        ("iconst_m1", None),
        ("iconst_0", None),
        ("iconst_1", None),
        ("iconst_2", None),
        ("iconst_3", None),
        ("iconst_4", None),
        ("iconst_5", None),
        ("bspush", S1),
        ("sspush", U2),
        ("bipush", S1),
        ("sipush", U2),
        ("iipush", U4),
        ("aload", U1),
        ("sload", U1),
        ("iload", U1),
        ("aload_0", None),
        ("aload_1", None),
        ("aload_2", None),
        ("aload_3", None),
        ("sload_0", None),
        ("sload_1", None),
        ("sload_2", None),
        ("sload_3", None),
        ("iload_0", None),
        ("iload_1", None),
        ("iload_2", None),
        ("iload_3", None),
        ("aaload", None),
        ("baload", None),
        ("saload", None),
        ("iaload", None),
        ("astore", U1),
        ("sstore", U1),
        ("istore", U1),
        ("astore_0", None),
        ("astore_1", None),
        ("astore_2", None),
        ("astore_3", None),
        ("sstore_0", None),
        ("sstore_1", None),
        ("sstore_2", None),
        ("sstore_3", None),
        ("istore_0", None),
        ("istore_1", None),
        ("istore_2", None),
        ("istore_3", None),
        ("aastore", None),
        ("bastore", None),
        ("sastore", None),
        ("iastore", None),
        ("pop", None),
        ("pop2", None),
        ("dup", None),
        ("dup2", None),
        ("dup_x", MN),
        ("swap_x", MN),
        ("sadd", None),
        ("iadd", None),
        ("ssub", None),
        ("isub", None),
        ("smul", None),
        ("imul", None),
        ("sdiv", None),
        ("idiv", None),
        ("srem", None),
        ("irem", None),
        ("sneg", None),
        ("ineg", None),
        ("sshl", None),
        ("ishl", None),
        ("sshr", None),
        ("ishr", None),
        ("sushr", None),
        ("iushr", None),
        ("sand", None),
        ("iand", None),
        ("sor", None),
        ("ior", None),
        ("sxor", None),
        ("ixor", None),
        ("sinc", Inc),
        ("iinc", Inc),
        ("s2b", None),
        ("s2i", None),
        ("i2b", None),
        ("i2s", None),
        ("icmp", None),
        ("ifeq", S1),
        ("ifne", S1),
        ("iflt", S1),
        ("ifge", S1),
        ("ifgt", S1),
        ("ifle", S1),
        ("ifnull", S1),
        ("ifnonnull", S1),
        ("if_acmpeq", S1),
        ("if_acmpne", S1),
        ("if_scmpeq", S1),
        ("if_scmpne", S1),
        ("if_scmplt", S1),
        ("if_scmpge", S1),
        ("if_scmpgt", S1),
        ("if_scmple", S1),
        ("goto", S1),
        ("jsr", U2),
        ("ret", U1),
        ("stableswitch", STable),
        ("itableswitch", ITable),
        ("slookupswitch", SLookup),
        ("ilookupswitch", ILookup),
        ("areturn", None),
        ("sreturn", None),
        ("ireturn", None),
        ("return", None),
        ("getstatic_a", U2),
        ("getstatic_b", U2),
        ("getstatic_s", U2),
        ("getstatic_i", U2),
        ("putstatic_a", U2),
        ("putstatic_b", U2),
        ("putstatic_s", U2),
        ("putstatic_i", U2),
        ("getfield_a", U1),
        ("getfield_b", U1),
        ("getfield_s", U1),
        ("getfield_i", U1),
        ("putfield_a", U1),
        ("putfield_b", U1),
        ("putfield_s", U1),
        ("putfield_i", U1),
        ("invokevirtual", U2),
        ("invokespecial", U2),
        ("invokestatic", U2),
        ("invokeinterface", Interface),
        ("new", U2),
        ("newarray", U1),
        ("anewarray", U2),
        ("arraylength", None),
        ("athrow", None),
        ("checkcast", Cast),
        ("instanceof", Cast),
        ("sinc_w", IncW),
        ("iinc_w", IncW),
        ("ifeq_w", U2),
        ("ifne_w", U2),
        ("iflt_w", U2),
        ("ifge_w", U2),
        ("ifgt_w", U2),
        ("ifle_w", U2),
        ("ifnull_w", U2),
        ("ifnonnull_w", U2),
        ("if_acmpeq_w", U2),
        ("if_acmpne_w", U2),
        ("if_scmpeq_w", U2),
        ("if_scmpne_w", U2),
        ("if_scmplt_w", U2),
        ("if_scmpge_w", U2),
        ("if_scmpgt_w", U2),
        ("if_scmple_w", U2),
        ("goto_w", U2),
        ("getfield_a_w", U2),
        ("getfield_b_w", U2),
        ("getfield_s_w", U2),
        ("getfield_i_w", U2),
        ("getfield_a_this", U1),
        ("getfield_b_this", U1),
        ("getfield_s_this", U1),
        ("getfield_i_this", U1),
        ("putfield_a_w", U2),
        ("putfield_b_w", U2),
        ("putfield_s_w", U2),
        ("putfield_i_w", U2),
        ("putfield_a_this", U1),
        ("putfield_b_this", U1),
        ("putfield_s_this", U1),
        ("putfield_i_this", U1),
    ];
    match op {
        254 => Some(("impdep1", None)),
        255 => Some(("impdep2", None)),
        _ => T.get(usize::from(op)).copied(),
    }
}

/// The length in bytes of the instruction at `pc` of `code`, `None` when the opcode is
/// undefined or the instruction runs past the end.
pub fn length(code: &[u8], pc: usize) -> Option<usize> {
    let (_, ops) = info(*code.get(pc)?)?;
    let at = |i: usize| -> Option<i32> {
        Some(i32::from(i16::from_be_bytes([
            *code.get(pc + i)?,
            *code.get(pc + i + 1)?,
        ])))
    };
    let n = match ops {
        Operands::None => 1,
        Operands::S1 | Operands::U1 | Operands::MN => 2,
        Operands::U2 | Operands::Inc => 3,
        Operands::U4 | Operands::IncW | Operands::Interface | Operands::Cast => {
            if ops == Operands::Cast || ops == Operands::IncW {
                4
            } else {
                5
            }
        }
        Operands::STable => {
            let low = at(3)?;
            let high = at(5)?;
            7 + 2 * usize::try_from(high - low + 1).ok()?
        }
        Operands::ITable => {
            let low = (at(3)? << 16) | (at(5)? & 0xFFFF);
            let high = (at(7)? << 16) | (at(9)? & 0xFFFF);
            11 + 2 * usize::try_from(i64::from(high) - i64::from(low) + 1).ok()?
        }
        Operands::SLookup => 5 + 4 * usize::from(at(3)? as u16),
        Operands::ILookup => 5 + 6 * usize::from(at(3)? as u16),
    };
    (pc + n <= code.len()).then_some(n)
}

/// One disassembled instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Its offset in the code.
    pub pc: usize,
    /// The mnemonic.
    pub mnemonic: &'static str,
    /// The operand bytes.
    pub operands: Vec<u8>,
}

/// Disassembles `code` up to its end or the first undefined or truncated instruction.
pub fn disassemble(code: &[u8]) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pc = 0;
    while pc < code.len() {
        let Some(n) = length(code, pc) else { break };
        let Some((mnemonic, _)) = info(code[pc]) else {
            break;
        };
        out.push(Instruction {
            pc,
            mnemonic,
            operands: code[pc + 1..pc + n].to_vec(),
        });
        pc += n;
    }
    out
}
