//! Method invocation: virtual, super, static and interface dispatch, and the API's natives.

use super::{Flow, Res, Target, s2, u1};
use crate::api::{self, CLASSES};
use crate::heap::Obj;
use crate::link::{ClassId, Cp};
use crate::{Persist, Vm, native};

impl Vm {
    /// Resolves a virtual method token on class `c`, walking up the superclasses.
    pub(crate) fn resolve_virtual(&self, mut c: ClassId, token: u8) -> Option<Target> {
        for _ in 0..256 {
            match c {
                ClassId::Pkg(o) => {
                    let lc = self.pkg.classes.get(&o)?;
                    let info = &self.pkg.model.classes.classes[lc.index];
                    let (base, table, t) = if token & 0x80 != 0 {
                        (
                            info.package_method_table_base,
                            &info.package_vtable,
                            token & 0x7F,
                        )
                    } else {
                        (info.public_method_table_base, &info.public_vtable, token)
                    };
                    if t >= base
                        && let Some(&off) = table.get(usize::from(t - base))
                        && off != 0xFFFF
                    {
                        return Some(Target::Code(off));
                    }
                    c = lc.super_class?;
                }
                ClassId::Api(i) => {
                    return api::method(usize::from(i), false, token).map(|m| Target::Native(i, m));
                }
                ClassId::Ext(..) => return None,
            }
        }
        None
    }

    pub(super) fn invoke(
        &mut self,
        p: &mut dyn Persist,
        op: u8,
        pc: usize,
        code: &[u8],
    ) -> Res<Option<usize>> {
        let cp = if op == 0x8E {
            s2(code, pc + 2)?
        } else {
            s2(code, pc + 1)?
        } as u16;
        let len = if op == 0x8E { 5 } else { 3 };
        let entry = self.pkg.cp(cp);
        let target = match (op, entry) {
            (0x8D | 0x8C, Some(Cp::Code(o))) => Target::Code(o),
            (0x8D | 0x8C, Some(Cp::Native(c, t))) => {
                let m = api::method(usize::from(c), true, t)
                    .ok_or_else(|| Flow::Fatal("unknown API method".into()))?;
                Target::Native(c, m)
            }
            (0x8C, Some(Cp::Super(c, t))) => {
                let sup = self
                    .pkg
                    .super_of(c)
                    .ok_or_else(|| Flow::Fatal("super call without superclass".into()))?;
                self.resolve_virtual(sup, t)
                    .ok_or_else(|| Flow::Fatal(format!("no super method {t} in {}", self.here())))?
            }
            (0x8B, Some(Cp::Virtual(c, t))) => {
                // The argument count comes from the statically named method (found once
                // per constant pool entry).
                let known = self
                    .virtual_nargs
                    .get(usize::from(cp))
                    .copied()
                    .unwrap_or(0);
                let nargs = if known != 0 {
                    usize::from(known)
                } else {
                    let n = match self.resolve_virtual(c, t) {
                        Some(Target::Code(o)) => usize::from(
                            self.pkg
                                .model
                                .methods
                                .header(o)
                                .map_err(|_| Flow::Fatal("bad method".into()))?
                                .nargs,
                        ),
                        Some(Target::Native(_, m)) => 1 + usize::from(m.words),
                        None => {
                            return Err(Flow::Fatal(format!(
                                "no virtual method {t} in {}",
                                self.here()
                            )));
                        }
                    };
                    if let Ok(b) = u8::try_from(n) {
                        let i = usize::from(cp);
                        if self.virtual_nargs.len() <= i {
                            self.virtual_nargs.resize(i + 1, 0);
                        }
                        self.virtual_nargs[i] = b;
                    }
                    n
                };
                let at = self.args_at(nargs.max(1))?;
                let obj = self.words[at] as u16;
                let dyn_class = self.class_of(obj)?;
                let dyn_class = match self.heap.objects.get(&obj) {
                    Some(Obj::Array { .. }) => c,
                    _ => dyn_class,
                };
                self.resolve_virtual(dyn_class, t).ok_or_else(|| {
                    Flow::Fatal(format!("no virtual method {t} in {}", self.here()))
                })?
            }
            (0x8E, Some(Cp::Class(iface))) => {
                let nargs = usize::from(u1(code, pc + 1)?);
                let token = u1(code, pc + 4)?;
                let at = self.args_at(nargs.max(1))?;
                let obj = self.words[at] as u16;
                if self.is_proxy(obj) {
                    // An object of another context: the card runs the method there.
                    let mut args = self.words.split_off(at);
                    args.remove(0);
                    self.invoke_proxy(p, obj, iface, token, args)?;
                    return Ok(Some(pc + len));
                }
                let class = self.class_of(obj)?;
                self.resolve_interface(class, iface, token)?
            }
            (_, other) => {
                return Err(Flow::Fatal(format!(
                    "invoke of {other:?} in {}",
                    self.here()
                )));
            }
        };
        match target {
            Target::Code(o) => Ok(Some(self.push_frame(o, pc + len)?)),
            Target::Native(c, m) => {
                let n = usize::from(m.words) + usize::from(!m.is_static || m.name == "<init>");
                let at = self.args_at(n)?;
                // The arguments move off the operand stack into a buffer the VM keeps (a
                // native that runs bytecode again takes a fresh one).
                let mut args = std::mem::take(&mut self.native_args);
                args.clear();
                args.extend_from_slice(&self.words[at..]);
                self.words.truncate(at);
                let r = self.native(p, c, m, &args);
                self.native_args = args;
                match r? {
                    native::Ret::Code(o, args) => {
                        self.words.extend(args);
                        Ok(Some(self.push_frame(o, pc + len)?))
                    }
                    r => {
                        r.push_to(&mut self.words);
                        Ok(Some(pc + len))
                    }
                }
            }
        }
    }

    pub(crate) fn resolve_interface(
        &self,
        class: ClassId,
        iface: ClassId,
        token: u8,
    ) -> Res<Target> {
        let mut cur = Some(class);
        let mut depth = 0;
        while let Some(c) = cur {
            match c {
                ClassId::Pkg(o) => {
                    if let Some(lc) = self.pkg.classes.get(&o) {
                        let info = &self.pkg.model.classes.classes[lc.index];
                        for ii in &info.interfaces {
                            if self.pkg.class_ref(ii.interface).ok() == Some(iface)
                                && let Some(&vt) = ii.index.get(usize::from(token))
                            {
                                return self.resolve_virtual(class, vt).ok_or_else(|| {
                                    Flow::Fatal(format!(
                                        "interface method {token} unresolved in {}",
                                        self.here()
                                    ))
                                });
                            }
                        }
                    }
                }
                ClassId::Api(i) => {
                    // An API object implementing an API interface: by name and descriptor.
                    if let ClassId::Api(j) = iface
                        && let Some(im) = api::method(usize::from(j), false, token)
                        && let Some(m) = CLASSES[usize::from(i)].methods.iter().find(|m| {
                            !m.is_static && m.name == im.name && m.descriptor == im.descriptor
                        })
                    {
                        return Ok(Target::Native(i, m));
                    }
                    break;
                }
                ClassId::Ext(..) => break,
            }
            cur = self.pkg.super_of(c);
            depth += 1;
            if depth > 256 {
                break;
            }
        }
        Err(self_fatal(format!(
            "no implementation of interface method {token} of {}",
            self.pkg.class_name(iface)
        )))
    }
}

fn self_fatal(m: String) -> Flow {
    Flow::Fatal(m)
}
