//! The interpreter: the Java Card 3.0.5 bytecodes (JCVM specification chapter 7) over one
//! word array holding every frame's locals and operand stack, with exception handler search
//! across frames.

use crate::api::{self, ApiMethod, CLASSES};
use crate::heap::{Data, Elem, Obj};
use crate::link::{ClassId, Cp};
use crate::{Answer, Persist, SW_UNKNOWN, StoreFail, Vm};

/// What a host call starts with.
pub(crate) enum Call {
    /// A static method of the package, by Method offset.
    Static(u16),
    /// A virtual method (API token space) of an object.
    Virtual(u16, u8),
}

/// A frame: its return address (for callers) and where its locals and stack start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    pc: usize,
    lb: usize,
    sb: usize,
    /// Method offset (for error messages).
    method: u16,
}

/// Why execution left the normal path.
pub(crate) enum Flow {
    /// An exception object in flight.
    Throw(u16),
    /// A fatal error of the machine (unsupported feature, corrupt code, budget).
    Fatal(String),
    /// A persistent write failed.
    Store(StoreFail),
}

/// A method to run.
pub(crate) enum Target {
    /// Bytecode at a Method offset.
    Code(u16),
    /// An API method.
    Native(u16, &'static ApiMethod),
}

pub(crate) type Res<T> = Result<T, Flow>;

/// Argument words of an API method descriptor (`this` not included).
pub(crate) fn arg_words(desc: &str) -> usize {
    let params = desc
        .strip_prefix('(')
        .and_then(|d| d.split(')').next())
        .unwrap_or("");
    let b = params.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'I' => n += 2,
            b'[' => {
                while i < b.len() && b[i] == b'[' {
                    i += 1;
                }
                if b.get(i) == Some(&b'L') {
                    while i < b.len() && b[i] != b';' {
                        i += 1;
                    }
                }
                n += 1;
            }
            b'L' => {
                while i < b.len() && b[i] != b';' {
                    i += 1;
                }
                n += 1;
            }
            _ => n += 1,
        }
        i += 1;
    }
    n
}

fn s2(code: &[u8], at: usize) -> Res<i16> {
    match (code.get(at), code.get(at + 1)) {
        (Some(a), Some(b)) => Ok(i16::from_be_bytes([*a, *b])),
        _ => Err(Flow::Fatal(
            "the bytecode runs past the Method component".into(),
        )),
    }
}

fn u1(code: &[u8], at: usize) -> Res<u8> {
    code.get(at)
        .copied()
        .ok_or_else(|| Flow::Fatal("the bytecode runs past the Method component".into()))
}

fn s4(code: &[u8], at: usize) -> Res<i32> {
    Ok((i32::from(s2(code, at)?) << 16) | i32::from(s2(code, at + 2)? as u16))
}

impl Vm {
    /// Runs a host call to completion, then writes the changed objects and rolls back a
    /// transaction the applet left open.
    pub(crate) fn call(
        &mut self,
        p: &mut dyn Persist,
        call: Call,
        args: &[i16],
    ) -> Result<Option<i32>, Answer> {
        self.frames.clear();
        self.words.clear();
        self.last_error = None;
        self.budget = self.limits.budget;
        let r = self.run(p, call, args);
        self.frames.clear();
        self.words.clear();
        if p.in_transaction() {
            p.abort();
            self.reload(p);
        }
        let flushed = self.flush(p);
        let out = match r {
            Ok(v) => Ok(v),
            Err(Flow::Store(StoreFail::Torn)) => Err(Answer::Torn),
            Err(Flow::Store(StoreFail::Full)) => Err(Answer::Sw(0x6A84)),
            Err(Flow::Fatal(m)) => {
                self.last_error = Some(m);
                Err(Answer::Sw(SW_UNKNOWN))
            }
            Err(Flow::Throw(h)) => Err(self.uncaught(h)),
        };
        match flushed {
            Err(StoreFail::Torn) => Err(Answer::Torn),
            Err(StoreFail::Full) => Err(Answer::Sw(0x6A84)),
            Ok(()) => out,
        }
    }

    fn uncaught(&mut self, h: u16) -> Answer {
        let (class, reason) = match self.heap.objects.get(&h) {
            Some(Obj::Instance { class, reason, .. }) => (*class, *reason),
            _ => return Answer::Sw(SW_UNKNOWN),
        };
        if let ClassId::Api(i) = class
            && let Some(iso) = api::class_by_name("javacard.framework.ISOException")
            && api::is_subclass(usize::from(i), iso)
        {
            return Answer::Sw(reason as u16);
        }
        let name = self.pkg.class_name(class);
        let msg = self
            .last_error
            .take()
            .unwrap_or_else(|| format!("uncaught {name} (reason {reason})"));
        self.last_error = Some(msg);
        Answer::Sw(SW_UNKNOWN)
    }

    /// Where execution is, for messages.
    pub(crate) fn here(&self) -> String {
        match self.frames.last() {
            Some(f) => self.pkg.method_at(usize::from(f.method)),
            None => "the card runtime".into(),
        }
    }

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
            }
        }
        None
    }

    fn class_of(&self, h: u16) -> Res<ClassId> {
        match self.heap.objects.get(&h) {
            Some(Obj::Instance { class, .. }) => Ok(*class),
            Some(Obj::Array { .. }) => Ok(ClassId::Api(
                api::class_by_name("java.lang.Object").unwrap_or(0) as u16,
            )),
            None => Err(self.throw_api_err("java.lang.NullPointerException", 0)),
        }
    }

    /// Throws a system instance of an API exception class.
    pub(crate) fn throw_api_err(&self, _name: &str, _reason: i16) -> Flow {
        // The object is made by `throw_api`; this placeholder keeps `&self` borrows simple.
        Flow::Fatal(String::new())
    }

    /// The system instance of the API exception `name` with `reason`, as a [`Flow::Throw`].
    pub(crate) fn throw_api(&mut self, name: &str, reason: i16) -> Flow {
        let Some(i) = api::class_by_name(name) else {
            return Flow::Fatal(format!("{name} is not in the API"));
        };
        let i = i as u16;
        let h = match self.system.get(&i) {
            Some(h) => *h,
            None => {
                let Some(h) = self.heap.alloc_system(Obj::Instance {
                    class: ClassId::Api(i),
                    cells: Vec::new(),
                    reason: 0,
                    native: Default::default(),
                }) else {
                    return Flow::Fatal("out of system object handles".into());
                };
                self.system.insert(i, h);
                h
            }
        };
        if let Some(Obj::Instance { reason: r, .. }) = self.heap.objects.get_mut(&h) {
            *r = reason;
        }
        Flow::Throw(h)
    }

    fn push_frame(&mut self, method: u16, ret_pc: usize) -> Res<usize> {
        let h = self
            .pkg
            .model
            .methods
            .header(method)
            .map_err(|_| Flow::Fatal(format!("no method at offset {method}")))?;
        if h.is_abstract {
            return Err(self.throw_api("java.lang.SecurityException", 0));
        }
        let nargs = usize::from(h.nargs);
        if self.frames.len() >= self.limits.frames
            || self.words.len() + usize::from(h.max_locals) + usize::from(h.max_stack)
                > self.limits.stack_words
        {
            self.last_error = Some(format!(
                "stack overflow (frame depth {}, {} words) in {}",
                self.frames.len(),
                self.words.len(),
                self.here()
            ));
            return Err(self.throw_api("java.lang.SecurityException", 0));
        }
        if self.words.len() < nargs {
            return Err(Flow::Fatal("operand stack underflow at a call".into()));
        }
        if let Some(f) = self.frames.last_mut() {
            f.pc = ret_pc;
        }
        let lb = self.words.len() - nargs;
        self.words
            .resize(self.words.len() + usize::from(h.max_locals), 0);
        let sb = self.words.len();
        self.frames.push(Frame {
            pc: usize::from(h.code),
            lb,
            sb,
            method,
        });
        Ok(usize::from(h.code))
    }

    fn run(&mut self, p: &mut dyn Persist, call: Call, args: &[i16]) -> Res<Option<i32>> {
        self.words.extend_from_slice(args);
        let target = match call {
            Call::Static(o) => Target::Code(o),
            Call::Virtual(obj, token) => {
                self.words.insert(0, obj as i16);
                let c = self.class_of(obj)?;
                self.resolve_virtual(c, token)
                    .ok_or_else(|| Flow::Fatal(format!("no virtual method {token}")))?
            }
        };
        let nargs = self.words.len();
        match target {
            Target::Native(c, m) => {
                let a = self.words.clone();
                return self.native(p, c, m, &a).map(|r| r.as_i32());
            }
            Target::Code(o) => {
                let h = self
                    .pkg
                    .model
                    .methods
                    .header(o)
                    .map_err(|_| Flow::Fatal(format!("no method at offset {o}")))?;
                if usize::from(h.nargs) != nargs {
                    return Err(Flow::Fatal(format!(
                        "method at {o} takes {} argument words, the runtime passes {nargs}",
                        h.nargs
                    )));
                }
                self.push_frame(o, 0)?;
            }
        }
        self.exec(p)
    }

    /// Pops the current frame, returning to the caller (or out of `exec`).
    fn ret(&mut self, words: usize) -> Res<Option<usize>> {
        let Some(f) = self.frames.last().copied() else {
            return Ok(None);
        };
        if self.words.len() < f.sb + words {
            return Err(Flow::Fatal(format!(
                "operand stack underflow at a return in {}",
                self.here()
            )));
        }
        self.frames.pop();
        let n = self.words.len();
        let val: [i16; 2] = match words {
            1 => [self.words[n - 1], 0],
            2 => [self.words[n - 2], self.words[n - 1]],
            _ => [0, 0],
        };
        self.words.truncate(f.lb);
        self.words.extend_from_slice(&val[..words]);
        Ok(self.frames.last().map(|c| c.pc))
    }

    /// Finds a handler for exception `h` from the current frame outwards; returns the pc to
    /// continue at, or the exception when no frame catches it.
    fn catch(&mut self, h: u16, mut pc: usize) -> Res<usize> {
        let class = self.class_of(h)?;
        loop {
            let Some(f) = self.frames.last().copied() else {
                return Err(Flow::Throw(h));
            };
            for hd in &self.pkg.model.methods.handlers {
                let start = usize::from(hd.start);
                if pc < start || pc >= start + usize::from(hd.active_length) {
                    continue;
                }
                let ok = hd.catch_type == 0
                    || matches!(self.pkg.cp(hd.catch_type), Some(Cp::Class(c)) if self.pkg.is_instance(class, c));
                if ok {
                    self.words.truncate(f.sb);
                    self.words.push(h as i16);
                    return Ok(usize::from(hd.handler));
                }
            }
            self.frames.pop();
            self.words.truncate(f.lb);
            match self.frames.last() {
                Some(c) => pc = c.pc.saturating_sub(1),
                None => return Err(Flow::Throw(h)),
            }
        }
    }

    fn exec(&mut self, p: &mut dyn Persist) -> Res<Option<i32>> {
        let mut pc = self.frames.last().map_or(0, |f| f.pc);
        let pkg = self.pkg.clone();
        let code = &pkg.model.methods.info[..];
        loop {
            match self.step(p, pc, code) {
                Ok(Some(next)) => pc = next,
                Ok(None) => {
                    let n = self.words.len();
                    return Ok(match n {
                        0 => None,
                        1 => Some(i32::from(self.words[0])),
                        _ => Some(
                            (i32::from(self.words[n - 2]) << 16)
                                | i32::from(self.words[n - 1] as u16),
                        ),
                    });
                }
                Err(Flow::Throw(h)) => pc = self.catch(h, pc)?,
                Err(Flow::Fatal(m)) if m.is_empty() => {
                    let t = self.throw_api("java.lang.NullPointerException", 0);
                    match t {
                        Flow::Throw(h) => pc = self.catch(h, pc)?,
                        other => return Err(other),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads array element `i` of `h`.
macro_rules! array {
    ($vm:expr, $h:expr) => {
        match $vm.heap.objects.get_mut(&($h as u16)) {
            Some(Obj::Array { data, elem, .. }) => (data, *elem),
            Some(_) => return Err(Flow::Fatal("array access on a non-array".into())),
            None => return Err($vm.throw_api("java.lang.NullPointerException", 0)),
        }
    };
}

impl Vm {
    fn pop(&mut self) -> Res<i16> {
        let sb = self.frames.last().map_or(0, |f| f.sb);
        if self.words.len() <= sb {
            return Err(Flow::Fatal(format!(
                "operand stack underflow in {}",
                self.here()
            )));
        }
        Ok(self.words.pop().unwrap_or(0))
    }

    fn pop_i(&mut self) -> Res<i32> {
        let lo = self.pop()? as u16;
        let hi = self.pop()?;
        Ok((i32::from(hi) << 16) | i32::from(lo))
    }

    fn push(&mut self, v: i16) {
        self.words.push(v);
    }

    fn push_i(&mut self, v: i32) {
        self.words.push((v >> 16) as i16);
        self.words.push(v as i16);
    }

    fn local(&self, i: usize) -> Res<i16> {
        let f = self
            .frames
            .last()
            .ok_or_else(|| Flow::Fatal("no frame".into()))?;
        if f.lb + i >= f.sb {
            return Err(Flow::Fatal(format!(
                "local {i} out of range in {}",
                self.here()
            )));
        }
        Ok(self.words[f.lb + i])
    }

    fn set_local(&mut self, i: usize, v: i16) -> Res<()> {
        let f = *self
            .frames
            .last()
            .ok_or_else(|| Flow::Fatal("no frame".into()))?;
        if f.lb + i >= f.sb {
            return Err(Flow::Fatal(format!(
                "local {i} out of range in {}",
                self.here()
            )));
        }
        self.words[f.lb + i] = v;
        Ok(())
    }

    fn branch(&self, pc: usize, off: i32) -> Res<usize> {
        let t = pc as i64 + i64::from(off);
        if t < 0 || t as usize >= self.pkg.model.methods.info.len() {
            return Err(Flow::Fatal(format!(
                "a branch out of the code in {}",
                self.here()
            )));
        }
        Ok(t as usize)
    }

    fn field_cell(&mut self, obj: i16, cp: u16, width: usize) -> Res<(u16, usize)> {
        let cell = match self.pkg.cp(cp) {
            Some(Cp::Field(c)) => usize::from(c),
            other => {
                return Err(Flow::Fatal(format!(
                    "unsupported field reference {other:?} in {}",
                    self.here()
                )));
            }
        };
        match self.heap.objects.get(&(obj as u16)) {
            Some(Obj::Instance { cells, .. }) if cell + width <= cells.len() => {
                Ok((obj as u16, cell))
            }
            Some(_) => Err(Flow::Fatal(format!(
                "a field beyond its object in {}",
                self.here()
            ))),
            None => Err(self.throw_api("java.lang.NullPointerException", 0)),
        }
    }

    fn cells(&mut self, h: u16) -> &mut Vec<i16> {
        self.dirty.insert(h);
        match self.heap.objects.get_mut(&h) {
            Some(Obj::Instance { cells, .. }) => cells,
            _ => unreachable!("checked by field_cell"),
        }
    }

    fn getfield(&mut self, obj: i16, cp: u16, kind: u8) -> Res<()> {
        let w = if kind == b'i' { 2 } else { 1 };
        let (h, c) = self.field_cell(obj, cp, w)?;
        let cells = match self.heap.objects.get(&h) {
            Some(Obj::Instance { cells, .. }) => cells,
            _ => return Err(Flow::Fatal("field".into())),
        };
        let (a, b) = (cells[c], cells.get(c + 1).copied().unwrap_or(0));
        match kind {
            b'b' => self.push(i16::from(a as i8)),
            b'i' => {
                self.push(a);
                self.push(b);
            }
            _ => self.push(a),
        }
        Ok(())
    }

    fn putfield(&mut self, obj_from_stack: Option<i16>, cp: u16, kind: u8) -> Res<()> {
        let (v, lo) = if kind == b'i' {
            let lo = self.pop()?;
            (self.pop()?, lo)
        } else {
            (self.pop()?, 0)
        };
        let obj = match obj_from_stack {
            Some(o) => o,
            None => self.pop()?,
        };
        let w = if kind == b'i' { 2 } else { 1 };
        let (h, c) = self.field_cell(obj, cp, w)?;
        if kind == b'a' && v != 0 && !self.heap.objects.contains_key(&(v as u16)) {
            return Err(Flow::Fatal("a dangling reference".into()));
        }
        let cells = self.cells(h);
        cells[c] = if kind == b'b' { i16::from(v as i8) } else { v };
        if kind == b'i' {
            cells[c + 1] = lo;
        }
        Ok(())
    }

    fn static_at(&self, cp: u16, width: usize) -> Res<usize> {
        match self.pkg.cp(cp) {
            Some(Cp::Static(o)) if usize::from(o) + width <= self.statics.len() => {
                Ok(usize::from(o))
            }
            other => Err(Flow::Fatal(format!(
                "unsupported static field reference {other:?} in {}",
                self.here()
            ))),
        }
    }

    /// Executes one instruction at `pc`; the next pc, or `None` when the host call returned.
    fn step(&mut self, p: &mut dyn Persist, pc: usize, code: &[u8]) -> Res<Option<usize>> {
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
                self.dirty.insert(h);
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

    fn invoke(
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
                // The argument count comes from the statically named method.
                let nargs = match self.resolve_virtual(c, t) {
                    Some(Target::Code(o)) => usize::from(
                        self.pkg
                            .model
                            .methods
                            .header(o)
                            .map_err(|_| Flow::Fatal("bad method".into()))?
                            .nargs,
                    ),
                    Some(Target::Native(_, m)) => 1 + arg_words(m.descriptor),
                    None => {
                        return Err(Flow::Fatal(format!(
                            "no virtual method {t} in {}",
                            self.here()
                        )));
                    }
                };
                let at = self
                    .words
                    .len()
                    .checked_sub(nargs)
                    .ok_or_else(|| Flow::Fatal("operand stack underflow".into()))?;
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
                let at = self
                    .words
                    .len()
                    .checked_sub(nargs)
                    .ok_or_else(|| Flow::Fatal("operand stack underflow".into()))?;
                let obj = self.words[at] as u16;
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
                let n = arg_words(m.descriptor) + usize::from(!m.is_static || m.name == "<init>");
                let at = self
                    .words
                    .len()
                    .checked_sub(n)
                    .ok_or_else(|| Flow::Fatal("operand stack underflow".into()))?;
                let args: Vec<i16> = self.words.split_off(at);
                let r = self.native(p, c, m, &args)?;
                r.push_to(&mut self.words);
                Ok(Some(pc + len))
            }
        }
    }

    fn resolve_interface(&self, class: ClassId, iface: ClassId, token: u8) -> Res<Target> {
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
