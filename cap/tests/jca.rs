//! The full CAP model checked against an independent source: the Java Card converter's own
//! text listing (`.jca`) of IsoApplet's key-import build. Its constant pool entries (kinds and
//! external tokens), every method's bytecode (mnemonics and operands), stack and locals sizes,
//! exception table sizes and the class table (tokens, superclasses) must equal what kagi reads
//! from the binary CAP.

use kagi_cap::bytecode::{Operands, disassemble, info};
use kagi_cap::{CapFile, ClassRef, CpEntry, Model, StaticRef};
use std::path::Path;

fn data(rel: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(rel),
    )
    .unwrap()
}

fn model() -> Model {
    CapFile::from_bytes(&data("isoapplet-v0/isoapplet-keyimport.cap"))
        .unwrap()
        .model()
        .unwrap()
}

fn jca() -> String {
    String::from_utf8(data("isoapplet-v0/isoapplet-keyimport.jca")).unwrap()
}

/// The lines of the `.constantPool { … }` block, comments and blanks dropped.
fn jca_constant_pool(text: &str) -> Vec<String> {
    let start = text.find(".constantPool {").unwrap();
    let body = &text[start..];
    let end = body.find("\n\t}").unwrap();
    body[..end]
        .lines()
        .skip(1)
        .map(|l| l.split("//").next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with(".descriptor"))
        .collect()
}

/// `p.c` → (p, c); `p.c.t` → (p, c, t).
fn tokens(s: &str) -> Option<Vec<u8>> {
    let head = s.split('(').next().unwrap();
    let v: Result<Vec<u8>, _> = head.split('.').map(str::parse::<u8>).collect();
    v.ok()
}

#[test]
fn constant_pool_equals_the_converter_listing() {
    let m = model();
    let listed = jca_constant_pool(&jca());
    assert_eq!(m.constant_pool.len(), listed.len());
    let mut external = 0;
    for (i, (entry, line)) in m.constant_pool.iter().zip(&listed).enumerate() {
        let mut words = line.trim_end_matches(';').split_whitespace();
        let kind = words.next().unwrap();
        let last = line
            .trim_end_matches(';')
            .split_whitespace()
            .last()
            .unwrap();
        match (kind, entry) {
            (".classRef", CpEntry::Class(c)) => {
                if let Some(t) = tokens(last) {
                    assert_eq!(
                        *c,
                        ClassRef::External {
                            package: t[0],
                            class: t[1]
                        },
                        "entry {i}: {line}"
                    );
                    external += 1;
                } else {
                    assert!(matches!(c, ClassRef::Internal(_)), "entry {i}: {line}");
                }
            }
            ("instanceFieldRef", CpEntry::InstanceField(..))
            | ("virtualMethodRef", CpEntry::VirtualMethod(..))
            | ("superMethodRef", CpEntry::SuperMethod(..)) => {}
            ("staticFieldRef", CpEntry::StaticField(s))
            | ("staticMethodRef", CpEntry::StaticMethod(s)) => {
                if let Some(t) = tokens(last) {
                    assert_eq!(
                        *s,
                        StaticRef::External {
                            package: t[0],
                            class: t[1],
                            token: t[2]
                        },
                        "entry {i}: {line}"
                    );
                    external += 1;
                } else {
                    assert!(matches!(s, StaticRef::Internal(_)), "entry {i}: {line}");
                }
            }
            _ => panic!("entry {i}: the listing says {line:?}, the CAP holds {entry:?}"),
        }
    }
    // Spot checks written from the listing: entry 29 is Util.arrayCompare (1.16.0).
    assert_eq!(
        m.constant_pool[29],
        CpEntry::StaticMethod(StaticRef::External {
            package: 1,
            class: 16,
            token: 0
        })
    );
    assert!(external > 30, "only {external} external entries compared");
}

/// One method of the listing: stack, locals, instructions (mnemonic and operand words),
/// number of exception table rows.
#[derive(Debug)]
struct JcaMethod {
    name: String,
    is_abstract: bool,
    stack: u8,
    locals: u8,
    code: Vec<(String, Vec<String>)>,
    handlers: usize,
}

fn jca_methods(text: &str) -> Vec<JcaMethod> {
    let mut out: Vec<JcaMethod> = Vec::new();
    let mut in_handlers = false;
    for raw in text.lines() {
        let line = raw.split("//").next().unwrap().trim();
        if line.starts_with(".method") {
            out.push(JcaMethod {
                name: line.to_string(),
                is_abstract: line.contains(" abstract "),
                stack: 0,
                locals: 0,
                code: Vec::new(),
                handlers: 0,
            });
            in_handlers = false;
            continue;
        }
        let Some(m) = out.last_mut() else { continue };
        if let Some(v) = line.strip_prefix(".stack ") {
            m.stack = v.trim_end_matches(';').parse().unwrap();
        } else if let Some(v) = line.strip_prefix(".locals ") {
            m.locals = v.trim_end_matches(';').parse().unwrap();
        } else if line.starts_with(".exceptionTable") {
            in_handlers = true;
        } else if line == "}" {
            in_handlers = false;
        } else if in_handlers {
            if !line.is_empty() {
                m.handlers += 1;
            }
        } else if line.ends_with(';') && !line.starts_with('.') && !line.contains('(') {
            let line = match line.split_once(':') {
                Some((label, rest)) if label.starts_with('L') => rest.trim(),
                _ => line,
            };
            let mut w = line.trim_end_matches(';').split_whitespace();
            let Some(op) = w.next() else { continue };
            if info_by_name(op).is_none() {
                continue;
            }
            m.code
                .push((op.to_string(), w.map(str::to_string).collect()));
        }
    }
    out
}

fn info_by_name(name: &str) -> Option<(u8, Operands)> {
    (0..=255u8).find_map(|op| info(op).filter(|(n, _)| *n == name).map(|(_, o)| (op, o)))
}

fn is_branch(name: &str) -> bool {
    name.starts_with("if") || name.starts_with("goto") || name == "jsr"
}

#[test]
fn every_method_equals_the_converter_listing() {
    let m = model();
    let listed: Vec<JcaMethod> = jca_methods(&jca())
        .into_iter()
        .filter(|x| !x.is_abstract)
        .collect();
    let desc = m.descriptor.as_ref().expect("the CAP has a Descriptor");
    let mut binary: Vec<_> = desc
        .classes
        .iter()
        .flat_map(|c| c.methods.iter())
        .filter(|d| d.access & 0x40 == 0)
        .collect();
    binary.sort_by_key(|d| d.offset);
    assert_eq!(binary.len(), listed.len(), "method count");
    let mut instructions = 0;
    for (d, j) in binary.iter().zip(&listed) {
        let h = m.methods.header(d.offset).unwrap();
        assert_eq!(
            (h.max_stack, h.max_locals),
            (j.stack, j.locals),
            "{}",
            j.name
        );
        assert_eq!(usize::from(d.handler_count), j.handlers, "{}", j.name);
        let start = usize::from(h.code);
        let code = &m.methods.info[start..start + usize::from(d.bytecode_count)];
        let dis = disassemble(code);
        let names: Vec<&str> = dis.iter().map(|i| i.mnemonic).collect();
        let want: Vec<&str> = j.code.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, want, "{}", j.name);
        for (ins, (name, args)) in dis.iter().zip(&j.code) {
            if is_branch(name) || name.contains("switch") {
                continue;
            }
            let (_, layout) = info_by_name(name).unwrap();
            let nums: Vec<i64> = args.iter().map(|a| a.parse().unwrap()).collect();
            let o = &ins.operands;
            let got: Vec<i64> = match layout {
                Operands::None => vec![],
                Operands::S1 => vec![i64::from(o[0] as i8)],
                Operands::U1 => vec![i64::from(o[0])],
                Operands::U2 if name == "sspush" || name == "sipush" => {
                    vec![i64::from(i16::from_be_bytes([o[0], o[1]]))]
                }
                Operands::U2 => vec![i64::from(u16::from_be_bytes([o[0], o[1]]))],
                Operands::U4 => vec![i64::from(i32::from_be_bytes([o[0], o[1], o[2], o[3]]))],
                Operands::Inc => vec![i64::from(o[0]), i64::from(o[1] as i8)],
                Operands::IncW => {
                    vec![i64::from(o[0]), i64::from(i16::from_be_bytes([o[1], o[2]]))]
                }
                Operands::Interface => vec![
                    i64::from(o[0]),
                    i64::from(u16::from_be_bytes([o[1], o[2]])),
                    i64::from(o[3]),
                ],
                Operands::Cast => {
                    vec![i64::from(o[0]), i64::from(u16::from_be_bytes([o[1], o[2]]))]
                }
                Operands::MN => vec![i64::from(o[0])],
                _ => continue,
            };
            assert_eq!(got, nums, "{}: {name} at {}", j.name, ins.pc);
            instructions += 1;
        }
    }
    assert!(
        instructions > 3000,
        "only {instructions} instructions compared"
    );
}

#[test]
fn classes_equal_the_converter_listing() {
    let m = model();
    // From the listing: 14 classes (File 0 … UtilTLV 13); IsoApplet (8) extends 1.3
    // (javacard.framework.Applet) and implements 2.0 (javacardx.apdu.ExtendedLength);
    // InvalidArgumentsException extends 0.2 (java.lang.Exception).
    assert_eq!(m.classes.classes.len(), 14);
    assert!(m.classes.interfaces.is_empty());
    let desc = m.descriptor.as_ref().unwrap();
    let by_token = |t: u8| {
        let d = desc.classes.iter().find(|c| c.token == t).unwrap();
        let ClassRef::Internal(off) = d.this_class else {
            panic!("internal class")
        };
        m.classes.class_at(off).unwrap()
    };
    let iso = by_token(8);
    assert_eq!(
        iso.super_class,
        Some(ClassRef::External {
            package: 1,
            class: 3
        })
    );
    assert_eq!(iso.interfaces.len(), 1);
    assert_eq!(
        iso.interfaces[0].interface,
        ClassRef::External {
            package: 2,
            class: 0
        }
    );
    assert_eq!(
        by_token(7).super_class,
        Some(ClassRef::External {
            package: 0,
            class: 2
        })
    );
    // ElementaryFile (1) extends File (0).
    let file = by_token(0);
    assert_eq!(
        by_token(1).super_class,
        Some(ClassRef::Internal(file.offset))
    );
    // File's package method table holds clearContents (token 128 in the listing): base 0,
    // one entry, abstract (FFFF or an abstract method's offset).
    assert_eq!(file.package_method_table_base, 0);
    assert_eq!(file.package_vtable.len(), 1);
    // The applet's install method is the static method the Applet component names.
    assert_eq!(m.applets.len(), 1);
    let install = desc
        .classes
        .iter()
        .flat_map(|c| &c.methods)
        .find(|d| d.offset == m.applets[0].install_method_offset)
        .expect("install is a described method");
    assert_ne!(install.access & 0x08, 0, "install is static");
}
