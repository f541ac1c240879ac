//! Prints a CAP's constant pool, classes and methods (a debugging aid; `--ignored`).

mod common;

#[test]
#[ignore]
fn dump() {
    let path = std::env::var("CAP").unwrap_or_else(|_| "data/empty.cap".into());
    let pkg = common::link(&path);
    let m = &pkg.model;
    println!("imports {:?}", m.imports);
    for (i, (e, r)) in m.constant_pool.iter().zip(&pkg.cp).enumerate() {
        println!("cp {i}: {e:?} -> {r:?}");
    }
    for c in &m.classes.classes {
        println!("class {c:?}");
    }
    println!("handlers {:?}", m.methods.handlers);
    if let Some(d) = &m.descriptor {
        for c in &d.classes {
            for md in &c.methods {
                if md.offset == 0 {
                    continue;
                }
                let h = m.methods.header(md.offset).unwrap();
                let s = usize::from(h.code);
                let code = &m.methods.info[s..s + usize::from(md.bytecode_count)];
                println!(
                    "class {} method {} off {} {:?}",
                    c.token, md.token, md.offset, h
                );
                for i in kagi_cap::bytecode::disassemble(code) {
                    println!("   {:4} {} {:02X?}", s + i.pc, i.mnemonic, i.operands);
                }
            }
        }
    }
}
