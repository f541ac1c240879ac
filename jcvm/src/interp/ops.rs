//! The bytecodes themselves: one instruction at a time (JCVM specification chapter 7).

use super::{Flow, Res, s2, s4, u1};
use crate::api::CLASSES;
use crate::heap::{Data, Elem, Obj};
use crate::link::{ClassId, Cp};
use crate::{Persist, Vm};

/// Reads array element `i` of `h`.
macro_rules! array {
    ($vm:expr, $h:expr) => {
        match $vm.heap.objects.get_mut(&($h as u16)) {
            Some(Obj::Array { data, elem, .. }) => (data, *elem),
            Some(Obj::Instance {
                native: $crate::heap::NativeState::Proxy { .. },
                ..
            }) => return Err($vm.firewall()),
            Some(_) => return Err(Flow::Fatal("array access on a non-array".into())),
            None => return Err($vm.throw_api("java.lang.NullPointerException", 0)),
        }
    };
}

impl Vm {
    /// Executes one instruction at `pc`; the next pc, or `None` when the host call returned.
    pub(super) fn step(
        &mut self,
        p: &mut dyn Persist,
        pc: usize,
        code: &[u8],
    ) -> Res<Option<usize>> {
        self.executed += 1;
        if self.budget == 0 {
            return Err(Flow::Fatal(format!(
                "the bytecode budget per command is spent (an endless loop?) in {}",
                self.here()
            )));
        }
        self.budget -= 1;
        let op = u1(code, pc)?;
        let next = |n: usize| Ok(Some(pc + n));
        macro_rules! bin_s {
            ($f:expr) => {{
                let b = self.pop()?;
                let a = self.pop()?;
                self.push($f(a, b));
                return next(1);
            }};
        }
        macro_rules! bin_i {
            ($f:expr) => {{
                let b = self.pop_i()?;
                let a = self.pop_i()?;
                self.push_i($f(a, b));
                return next(1);
            }};
        }
        macro_rules! cond {
            ($c:expr, $wide:expr) => {{
                let off = if $wide {
                    i32::from(s2(code, pc + 1)?)
                } else {
                    i32::from(u1(code, pc + 1)? as i8)
                };
                return if $c {
                    Ok(Some(self.branch(pc, off)?))
                } else {
                    next(if $wide { 3 } else { 2 })
                };
            }};
        }
        match op {
            0x00 => next(1),
            0x01 => {
                self.push(0);
                next(1)
            }
            0x02..=0x08 => {
                self.push(i16::from(op) - 3);
                next(1)
            }
            0x09..=0x0F => {
                self.push_i(i32::from(op) - 10);
                next(1)
            }
            0x10 => {
                self.push(i16::from(u1(code, pc + 1)? as i8));
                next(2)
            }
            0x11 => {
                self.push(s2(code, pc + 1)?);
                next(3)
            }
            0x12 => {
                self.push_i(i32::from(u1(code, pc + 1)? as i8));
                next(2)
            }
            0x13 => {
                self.push_i(i32::from(s2(code, pc + 1)?));
                next(3)
            }
            0x14 => {
                self.push_i(s4(code, pc + 1)?);
                next(5)
            }
            0x15 | 0x16 => {
                let v = self.local(usize::from(u1(code, pc + 1)?))?;
                self.push(v);
                next(2)
            }
            0x17 => {
                let i = usize::from(u1(code, pc + 1)?);
                let (a, b) = (self.local(i)?, self.local(i + 1)?);
                self.push(a);
                self.push(b);
                next(2)
            }
            0x18..=0x1F => {
                let v = self.local(usize::from((op - 0x18) & 3))?;
                self.push(v);
                next(1)
            }
            0x20..=0x23 => {
                let i = usize::from(op - 0x20);
                let (a, b) = (self.local(i)?, self.local(i + 1)?);
                self.push(a);
                self.push(b);
                next(1)
            }
            0x24..=0x27 => {
                let i = i32::from(self.pop()?);
                let h = self.pop()?;
                let (data, _) = array!(self, h);
                let len = data.len();
                let v: i32 = match (op, &*data) {
                    (0x24, Data::Refs(v)) if i >= 0 && (i as usize) < len => {
                        i32::from(v[i as usize])
                    }
                    (0x25, Data::Bytes(v)) if i >= 0 && (i as usize) < len => {
                        i32::from(v[i as usize] as i8)
                    }
                    (0x26, Data::Shorts(v)) if i >= 0 && (i as usize) < len => {
                        i32::from(v[i as usize])
                    }
                    (0x27, Data::Ints(v)) if i >= 0 && (i as usize) < len => v[i as usize],
                    _ if i < 0 || i as usize >= len => {
                        return Err(self.throw_api("java.lang.ArrayIndexOutOfBoundsException", 0));
                    }
                    _ => {
                        return Err(Flow::Fatal(format!(
                            "array load of the wrong type in {}",
                            self.here()
                        )));
                    }
                };
                if op == 0x27 {
                    self.push_i(v);
                } else if op == 0x24 {
                    self.push(v as u16 as i16);
                } else {
                    self.push(v as i16);
                }
                next(1)
            }
            0x28 | 0x29 => {
                let v = self.pop()?;
                self.set_local(usize::from(u1(code, pc + 1)?), v)?;
                next(2)
            }
            0x2A => {
                let b = self.pop()?;
                let a = self.pop()?;
                let i = usize::from(u1(code, pc + 1)?);
                self.set_local(i, a)?;
                self.set_local(i + 1, b)?;
                next(2)
            }
            0x2B..=0x32 => {
                let v = self.pop()?;
                self.set_local(usize::from((op - 0x2B) & 3), v)?;
                next(1)
            }
            0x33..=0x36 => {
                let b = self.pop()?;
                let a = self.pop()?;
                let i = usize::from(op - 0x33);
                self.set_local(i, a)?;
                self.set_local(i + 1, b)?;
                next(1)
            }
            0x37..=0x3A => {
                let v: i32 = if op == 0x3A {
                    self.pop_i()?
                } else {
                    i32::from(self.pop()?)
                };
                let i = i32::from(self.pop()?);
                let h = self.pop()? as u16;
                if op == 0x37 && v != 0 {
                    let (_, elem) = array!(self, h);
                    if let Elem::Ref(Some(c)) = elem {
                        let vc = self.class_of(v as u16)?;
                        if !self.pkg.is_instance(vc, c) {
                            return Err(self.throw_api("java.lang.ArrayStoreException", 0));
                        }
                    }
                }
                let (data, _) = array!(self, h);
                let len = data.len();
                if i < 0 || i as usize >= len {
                    return Err(self.throw_api("java.lang.ArrayIndexOutOfBoundsException", 0));
                }
                let i = i as usize;
                match (op, data) {
                    (0x37, Data::Refs(a)) => a[i] = v as u16,
                    (0x38, Data::Bytes(a)) => a[i] = v as u8,
                    (0x39, Data::Shorts(a)) => a[i] = v as i16,
                    (0x3A, Data::Ints(a)) => a[i] = v,
                    _ => {
                        return Err(Flow::Fatal(format!(
                            "array store of the wrong type in {}",
                            self.here()
                        )));
                    }
                }
                self.touch(h);
                next(1)
            }
            0x3B => {
                self.pop()?;
                next(1)
            }
            0x3C => {
                self.pop()?;
                self.pop()?;
                next(1)
            }
            0x3D => {
                let v = self.pop()?;
                self.push(v);
                self.push(v);
                next(1)
            }
            0x3E => {
                let b = self.pop()?;
                let a = self.pop()?;
                self.words.extend_from_slice(&[a, b, a, b]);
                next(1)
            }
            0x3F => {
                // dup_x mn: duplicate the top m words and insert them n words down.
                let mn = u1(code, pc + 1)?;
                let (m, n) = (usize::from(mn >> 4), usize::from(mn & 0xF));
                let len = self.words.len();
                let sb = self.frames.last().map_or(0, |f| f.sb);
                let n = if n == 0 { m } else { n };
                if m == 0 || m > 4 || n < m || n > 8 || len < sb + n {
                    return Err(Flow::Fatal(format!("dup_x {mn:#04x} in {}", self.here())));
                }
                let top: Vec<i16> = self.words[len - m..].to_vec();
                let at = len - n;
                for (k, w) in top.into_iter().enumerate() {
                    self.words.insert(at + k, w);
                }
                next(2)
            }
            0x40 => {
                let mn = u1(code, pc + 1)?;
                let (m, n) = (usize::from(mn >> 4), usize::from(mn & 0xF));
                let len = self.words.len();
                let sb = self.frames.last().map_or(0, |f| f.sb);
                if !(1..=2).contains(&m) || !(1..=2).contains(&n) || len < sb + m + n {
                    return Err(Flow::Fatal(format!("swap_x {mn:#04x} in {}", self.here())));
                }
                let top: Vec<i16> = self.words.split_off(len - m);
                let at = len - m - n;
                for (k, w) in top.into_iter().enumerate() {
                    self.words.insert(at + k, w);
                }
                next(2)
            }
            0x41 => bin_s!(|a: i16, b: i16| a.wrapping_add(b)),
            0x42 => bin_i!(|a: i32, b: i32| a.wrapping_add(b)),
            0x43 => bin_s!(|a: i16, b: i16| a.wrapping_sub(b)),
            0x44 => bin_i!(|a: i32, b: i32| a.wrapping_sub(b)),
            0x45 => bin_s!(|a: i16, b: i16| a.wrapping_mul(b)),
            0x46 => bin_i!(|a: i32, b: i32| a.wrapping_mul(b)),
            0x47 | 0x49 => {
                let b = self.pop()?;
                let a = self.pop()?;
                if b == 0 {
                    return Err(self.throw_api("java.lang.ArithmeticException", 0));
                }
                self.push(if op == 0x47 {
                    a.wrapping_div(b)
                } else {
                    a.wrapping_rem(b)
                });
                next(1)
            }
            0x48 | 0x4A => {
                let b = self.pop_i()?;
                let a = self.pop_i()?;
                if b == 0 {
                    return Err(self.throw_api("java.lang.ArithmeticException", 0));
                }
                self.push_i(if op == 0x48 {
                    a.wrapping_div(b)
                } else {
                    a.wrapping_rem(b)
                });
                next(1)
            }
            0x4B => {
                let a = self.pop()?;
                self.push(a.wrapping_neg());
                next(1)
            }
            0x4C => {
                let a = self.pop_i()?;
                self.push_i(a.wrapping_neg());
                next(1)
            }
            0x4D => bin_s!(|a: i16, b: i16| (i32::from(a) << (b & 0x1F)) as i16),
            0x4E => bin_i!(|a: i32, b: i32| a.wrapping_shl((b & 0x1F) as u32)),
            0x4F => bin_s!(|a: i16, b: i16| (i32::from(a) >> (b & 0x1F)) as i16),
            0x50 => bin_i!(|a: i32, b: i32| a.wrapping_shr((b & 0x1F) as u32)),
            // sushr: the short is sign-extended to an int, shifted logically, then truncated.
            0x51 => bin_s!(|a: i16, b: i16| ((i32::from(a) as u32) >> (b & 0x1F)) as i16),
            0x52 => bin_i!(|a: i32, b: i32| ((a as u32) >> (b & 0x1F)) as i32),
            0x53 => bin_s!(|a: i16, b: i16| a & b),
            0x54 => bin_i!(|a: i32, b: i32| a & b),
            0x55 => bin_s!(|a: i16, b: i16| a | b),
            0x56 => bin_i!(|a: i32, b: i32| a | b),
            0x57 => bin_s!(|a: i16, b: i16| a ^ b),
            0x58 => bin_i!(|a: i32, b: i32| a ^ b),
            0x59 | 0x96 => {
                let i = usize::from(u1(code, pc + 1)?);
                let c = if op == 0x59 {
                    i16::from(u1(code, pc + 2)? as i8)
                } else {
                    s2(code, pc + 2)?
                };
                let v = self.local(i)?;
                self.set_local(i, v.wrapping_add(c))?;
                next(if op == 0x59 { 3 } else { 4 })
            }
            0x5A | 0x97 => {
                let i = usize::from(u1(code, pc + 1)?);
                let c = if op == 0x5A {
                    i32::from(u1(code, pc + 2)? as i8)
                } else {
                    i32::from(s2(code, pc + 2)?)
                };
                let v = (i32::from(self.local(i)?) << 16) | i32::from(self.local(i + 1)? as u16);
                let r = v.wrapping_add(c);
                self.set_local(i, (r >> 16) as i16)?;
                self.set_local(i + 1, r as i16)?;
                next(if op == 0x5A { 3 } else { 4 })
            }
            0x5B => {
                let a = self.pop()?;
                self.push(i16::from(a as i8));
                next(1)
            }
            0x5C => {
                let a = self.pop()?;
                self.push_i(i32::from(a));
                next(1)
            }
            0x5D => {
                let a = self.pop_i()?;
                self.push(i16::from(a as i8));
                next(1)
            }
            0x5E => {
                let a = self.pop_i()?;
                self.push(a as i16);
                next(1)
            }
            0x5F => {
                let b = self.pop_i()?;
                let a = self.pop_i()?;
                self.push(match a.cmp(&b) {
                    std::cmp::Ordering::Less => -1,
                    std::cmp::Ordering::Equal => 0,
                    std::cmp::Ordering::Greater => 1,
                });
                next(1)
            }
            0x60..=0x65 | 0x98..=0x9D => {
                let v = self.pop()?;
                let wide = op >= 0x98;
                let k = if wide { op - 0x98 } else { op - 0x60 };
                let c = match k {
                    0 => v == 0,
                    1 => v != 0,
                    2 => v < 0,
                    3 => v >= 0,
                    4 => v > 0,
                    _ => v <= 0,
                };
                cond!(c, wide)
            }
            0x66 | 0x67 | 0x9E | 0x9F => {
                let v = self.pop()?;
                let wide = op >= 0x9E;
                let c = if op == 0x66 || op == 0x9E {
                    v == 0
                } else {
                    v != 0
                };
                cond!(c, wide)
            }
            0x68..=0x6F | 0xA0..=0xA7 => {
                let b = self.pop()?;
                let a = self.pop()?;
                let wide = op >= 0xA0;
                let k = if wide { op - 0xA0 } else { op - 0x68 };
                let c = match k {
                    0 | 2 => a == b,
                    1 | 3 => a != b,
                    4 => a < b,
                    5 => a >= b,
                    6 => a > b,
                    _ => a <= b,
                };
                cond!(c, wide)
            }
            0x70 => cond!(true, false),
            0xA8 => cond!(true, true),
            0x73 => {
                let key = self.pop()?;
                let def = i32::from(s2(code, pc + 1)?);
                let low = s2(code, pc + 3)?;
                let high = s2(code, pc + 5)?;
                let off = if key >= low && key <= high {
                    i32::from(s2(code, pc + 7 + 2 * (key as i32 - low as i32) as usize)?)
                } else {
                    def
                };
                Ok(Some(self.branch(pc, off)?))
            }
            0x74 => {
                let key = self.pop_i()?;
                let def = i32::from(s2(code, pc + 1)?);
                let low = s4(code, pc + 3)?;
                let high = s4(code, pc + 7)?;
                let off = if key >= low && key <= high {
                    i32::from(s2(
                        code,
                        pc + 11 + 2 * (i64::from(key) - i64::from(low)) as usize,
                    )?)
                } else {
                    def
                };
                Ok(Some(self.branch(pc, off)?))
            }
            0x75 | 0x76 => {
                let key = if op == 0x75 {
                    i32::from(self.pop()?)
                } else {
                    self.pop_i()?
                };
                let def = i32::from(s2(code, pc + 1)?);
                let n = usize::from(s2(code, pc + 3)? as u16);
                let w = if op == 0x75 { 4 } else { 6 };
                let mut off = def;
                for k in 0..n {
                    let at = pc + 5 + w * k;
                    let m = if op == 0x75 {
                        i32::from(s2(code, at)?)
                    } else {
                        s4(code, at)?
                    };
                    if m == key {
                        off = i32::from(s2(code, at + w - 2)?);
                        break;
                    }
                }
                Ok(Some(self.branch(pc, off)?))
            }
            0x77 | 0x78 => self.ret(1),
            0x79 => self.ret(2),
            0x7A => self.ret(0),
            0x7B..=0x82 => {
                let cp = s2(code, pc + 1)? as u16;
                let kind = (op - 0x7B) & 3;
                let width = [2, 1, 2, 4][usize::from(kind)];
                if let Some(Cp::ApiStatic(_, _, Some(v))) = self.pkg.cp(cp)
                    && op <= 0x7E
                {
                    if kind == 3 {
                        self.push_i(v as i32);
                    } else {
                        self.push(v as i16);
                    }
                    return next(3);
                }
                let o = self.static_at(cp, width)?;
                if op <= 0x7E {
                    let s = &self.statics[o..o + width];
                    match kind {
                        1 => self.push(i16::from(s[0] as i8)),
                        3 => self.push_i(i32::from_be_bytes([s[0], s[1], s[2], s[3]])),
                        _ => self.push(i16::from_be_bytes([s[0], s[1]])),
                    }
                } else {
                    match kind {
                        1 => {
                            let v = self.pop()?;
                            self.statics[o] = v as u8;
                        }
                        3 => {
                            let v = self.pop_i()?;
                            self.statics[o..o + 4].copy_from_slice(&v.to_be_bytes());
                        }
                        _ => {
                            let v = self.pop()?;
                            self.statics[o..o + 2].copy_from_slice(&v.to_be_bytes());
                        }
                    }
                    self.statics_dirty = true;
                }
                next(3)
            }
            0x83..=0x86 | 0xA9..=0xAC | 0xAD..=0xB0 => {
                let (cp, len, this) = match op {
                    0x83..=0x86 => (u16::from(u1(code, pc + 1)?), 2, false),
                    0xA9..=0xAC => (s2(code, pc + 1)? as u16, 3, false),
                    _ => (u16::from(u1(code, pc + 1)?), 2, true),
                };
                let kind = b"absi"[usize::from((op - 0x83) & 3)];
                let kind = if (0xA9..=0xB0).contains(&op) {
                    b"absi"[usize::from((op - 0xA9) & 3)]
                } else {
                    kind
                };
                let obj = if this { self.local(0)? } else { self.pop()? };
                self.getfield(obj, cp, kind)?;
                next(len)
            }
            0x87..=0x8A | 0xB1..=0xB4 | 0xB5..=0xB8 => {
                let (cp, len, this) = match op {
                    0x87..=0x8A => (u16::from(u1(code, pc + 1)?), 2, false),
                    0xB1..=0xB4 => (s2(code, pc + 1)? as u16, 3, false),
                    _ => (u16::from(u1(code, pc + 1)?), 2, true),
                };
                let base = match op {
                    0x87..=0x8A => 0x87,
                    0xB1..=0xB4 => 0xB1,
                    _ => 0xB5,
                };
                let kind = b"absi"[usize::from(op - base)];
                let obj = if this { Some(self.local(0)?) } else { None };
                self.putfield(obj, cp, kind)?;
                next(len)
            }
            0x8B..=0x8E => self.invoke(p, op, pc, code),
            0x8F => {
                let cp = s2(code, pc + 1)? as u16;
                let class = match self.pkg.cp(cp) {
                    Some(Cp::Class(c)) => c,
                    other => {
                        return Err(Flow::Fatal(format!("new of {other:?} in {}", self.here())));
                    }
                };
                let size = match class {
                    ClassId::Pkg(o) => self.pkg.classes.get(&o).map_or(0, |c| c.size),
                    ClassId::Api(_) => 0,
                    ClassId::Ext(..) => {
                        return Err(Flow::Fatal(format!(
                            "new of another package's class in {}",
                            self.here()
                        )));
                    }
                };
                let h = self
                    .heap
                    .alloc(Obj::Instance {
                        class,
                        cells: vec![0; usize::from(size)],
                        reason: 0,
                        native: Default::default(),
                    })
                    .ok_or_else(|| Flow::Fatal("out of object handles".into()))?;
                self.dirty.insert(h);
                self.meta_dirty = true;
                self.push(h as i16);
                next(3)
            }
            0x90 | 0x91 => {
                let n = self.pop()?;
                if n < 0 {
                    return Err(self.throw_api("java.lang.NegativeArraySizeException", 0));
                }
                let n = n as usize;
                let (elem, data) = if op == 0x90 {
                    match u1(code, pc + 1)? {
                        10 => (Elem::Boolean, Data::Bytes(vec![0; n])),
                        11 => (Elem::Byte, Data::Bytes(vec![0; n])),
                        12 => (Elem::Short, Data::Shorts(vec![0; n])),
                        13 => (Elem::Int, Data::Ints(vec![0; n])),
                        t => {
                            return Err(Flow::Fatal(format!(
                                "newarray of type {t} in {}",
                                self.here()
                            )));
                        }
                    }
                } else {
                    let cp = s2(code, pc + 1)? as u16;
                    let c = match self.pkg.cp(cp) {
                        Some(Cp::Class(c)) => c,
                        _ => {
                            return Err(Flow::Fatal(format!(
                                "anewarray of a non-class in {}",
                                self.here()
                            )));
                        }
                    };
                    (Elem::Ref(Some(c)), Data::Refs(vec![0; n]))
                };
                let h = self
                    .heap
                    .alloc(Obj::Array {
                        elem,
                        data,
                        transient: None,
                    })
                    .ok_or_else(|| Flow::Fatal("out of object handles".into()))?;
                self.dirty.insert(h);
                self.meta_dirty = true;
                self.push(h as i16);
                next(if op == 0x90 { 2 } else { 3 })
            }
            0x92 => {
                let h = self.pop()?;
                let (data, _) = array!(self, h);
                let n = data.len() as i16;
                self.push(n);
                next(1)
            }
            0x93 => {
                let h = self.pop()? as u16;
                if h == 0 {
                    return Err(self.throw_api("java.lang.NullPointerException", 0));
                }
                Err(Flow::Throw(h))
            }
            0x71 => {
                // jsr: the return address (the next instruction) goes on the stack, then the
                // branch (JCVM §7.5.55; no converter emits it any more).
                let off = i32::from(s2(code, pc + 1)?);
                let back = u16::try_from(pc + 3)
                    .map_err(|_| Flow::Fatal(format!("jsr beyond the code in {}", self.here())))?;
                self.push(back as i16);
                Ok(Some(self.branch(pc, off)?))
            }
            0x72 => {
                // ret: back to the return address in the local variable (JCVM §7.5.83).
                let back = self.local(usize::from(u1(code, pc + 1)?))? as u16;
                Ok(Some(self.branch(usize::from(back), 0)?))
            }
            0x94 | 0x95 => {
                let atype = u1(code, pc + 1)?;
                let cp = s2(code, pc + 2)? as u16;
                let h = self.pop()? as u16;
                let ok = if h == 0 {
                    op == 0x94
                } else {
                    self.type_check(h, atype, cp)?
                };
                if op == 0x94 {
                    if !ok {
                        return Err(self.throw_api("java.lang.ClassCastException", 0));
                    }
                    self.push(h as i16);
                } else {
                    self.push(i16::from(ok));
                }
                next(4)
            }
            _ => {
                let name = kagi_cap::bytecode::info(op).map_or("undefined", |(n, _)| n);
                Err(Flow::Fatal(format!(
                    "unsupported bytecode {name} ({op:#04x}) in {}",
                    self.here()
                )))
            }
        }
    }

    fn type_check(&mut self, h: u16, atype: u8, cp: u16) -> Res<bool> {
        let target = match self.pkg.cp(cp) {
            Some(Cp::Class(c)) => Some(c),
            _ => None,
        };
        Ok(match (self.heap.objects.get(&h), atype) {
            // An object of another context is an Object, a Shareable and each shareable
            // interface its owner said it implements.
            (
                Some(Obj::Instance {
                    native: crate::heap::NativeState::Proxy { .. },
                    ..
                }),
                0,
            ) => match target {
                Some(t @ (ClassId::Ext(..) | ClassId::Pkg(_))) => self.proxy_implements(h, t),
                Some(ClassId::Api(i)) => matches!(
                    CLASSES[usize::from(i)].name,
                    "java.lang.Object" | "javacard.framework.Shareable"
                ),
                _ => target.is_none(),
            },
            (Some(Obj::Instance { class, .. }), 0) => {
                target.is_some_and(|t| self.pkg.is_instance(*class, t))
            }
            (Some(Obj::Array { elem, .. }), 0) => target.is_some_and(|t| {
                matches!(t, ClassId::Api(i) if CLASSES[usize::from(i)].name == "java.lang.Object")
            }) && !matches!(elem, Elem::Ref(None)) || target.is_none(),
            (Some(Obj::Array { elem, .. }), 10) => *elem == Elem::Boolean,
            (Some(Obj::Array { elem, .. }), 11) => *elem == Elem::Byte,
            (Some(Obj::Array { elem, .. }), 12) => *elem == Elem::Short,
            (Some(Obj::Array { elem, .. }), 13) => *elem == Elem::Int,
            (Some(Obj::Array { elem: Elem::Ref(e), .. }), 14) => match (e, target) {
                (_, None) => true,
                (None, Some(t)) => {
                    matches!(t, ClassId::Api(i) if CLASSES[usize::from(i)].name == "java.lang.Object")
                }
                (Some(e), Some(t)) => self.pkg.is_instance(*e, t),
            },
            (None, _) => return Err(self.throw_api("java.lang.NullPointerException", 0)),
            _ => false,
        })
    }
}
