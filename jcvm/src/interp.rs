//! The interpreter: the Java Card 3.0.5 bytecodes (JCVM specification chapter 7) over one
//! word array holding every frame's locals and operand stack, with exception handler search
//! across frames.

mod invoke;
mod ops;

use crate::api::{self, ApiMethod};
use crate::heap::Obj;
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
        let (r, flushed) = self.call_raw(p, call, args, true);
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

    /// Runs a call to completion and writes the changed objects. A `top` call (a command of
    /// the card) rolls back a transaction the applet left open; a shareable call from another
    /// context runs inside the caller's transaction and leaves it open.
    pub(crate) fn call_raw(
        &mut self,
        p: &mut dyn Persist,
        call: Call,
        args: &[i16],
        top: bool,
    ) -> (Res<Option<i32>>, Result<(), StoreFail>) {
        // A call back into this context while its own call is under way (a server calling a
        // shareable object of its caller's context) runs on fresh stacks, within what is
        // left of the running call's budget, and gives the suspended call its stacks back.
        let suspended = (!self.frames.is_empty()).then(|| {
            (
                std::mem::take(&mut self.frames),
                std::mem::take(&mut self.words),
            )
        });
        if suspended.is_none() {
            self.frames.clear();
            self.words.clear();
            self.last_error = None;
            self.budget = self.limits.budget;
        }
        let r = self.run(p, call, args);
        self.frames.clear();
        self.words.clear();
        let nested = suspended.is_some();
        if let Some((frames, words)) = suspended {
            self.frames = frames;
            self.words = words;
        } else if top && p.in_transaction() {
            p.abort();
            self.reload(p);
        }
        let mut flushed = self.flush(p);
        for op in std::mem::take(&mut self.charges) {
            p.charge(op);
        }
        // A suspended call's stacks hold references the collector cannot see: object
        // deletion waits for the end of the running call.
        if !nested && std::mem::take(&mut self.deletion_requested) && flushed.is_ok() {
            flushed = self.delete_unreachable(p).map(|_| ());
        }
        (r, flushed)
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
            // Data the applet already sent goes out with the status word (IsoApplet sends
            // 256 bytes, then throws 61xx for the rest).
            if !self.apdu.out.is_empty() {
                return Answer::Data(std::mem::take(&mut self.apdu.out), reason as u16);
            }
            return Answer::Sw(reason as u16);
        }
        let name = self.pkg.class_name(class);
        let msg = self.last_error.take().unwrap_or_else(|| {
            let at = self.throw_origin.take().unwrap_or_default();
            format!("uncaught {name} (reason {reason}) {at}")
                .trim_end()
                .to_string()
        });
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

    pub(crate) fn class_of(&self, h: u16) -> Res<ClassId> {
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
        let sb = self.frames.last().map_or(0, |f| f.sb);
        if self.words.len() < sb + nargs {
            return Err(Flow::Fatal(format!(
                "operand stack underflow at a call in {}",
                self.here()
            )));
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
        // Where it was thrown, for the message of an uncaught exception.
        let start = self
            .frames
            .last()
            .and_then(|f| self.pkg.model.methods.header(f.method).ok())
            .map_or(0, |m| usize::from(m.code));
        self.throw_origin = Some(format!(
            "thrown in {} at bytecode offset {}",
            self.here(),
            pc.saturating_sub(start)
        ));
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
            // Outside a transaction every persistent write is its own atomic store write, in
            // program order: power lost between two writes keeps the first.
            if self.pending() && !p.in_transaction() {
                self.flush(p).map_err(Flow::Store)?;
            }
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

impl Vm {
    /// Where the top `n` words (a call's arguments) start; they must lie in the current
    /// frame's operand stack.
    fn args_at(&self, n: usize) -> Res<usize> {
        let sb = self.frames.last().map_or(0, |f| f.sb);
        match self.words.len().checked_sub(n) {
            Some(at) if at >= sb => Ok(at),
            _ => Err(Flow::Fatal(format!(
                "operand stack underflow at a call in {}",
                self.here()
            ))),
        }
    }

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
            // An object of another context (its fields are not reachable from here).
            Some(Obj::Instance {
                native: crate::heap::NativeState::Proxy { .. },
                ..
            }) => Err(self.firewall()),
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

    fn cells(&mut self, h: u16) -> Res<&mut Vec<i16>> {
        self.dirty.insert(h);
        match self.heap.objects.get_mut(&h) {
            Some(Obj::Instance { cells, .. }) => Ok(cells),
            _ => Err(Flow::Fatal(format!("object {h} is not an instance"))),
        }
    }

    fn getfield(&mut self, obj: i16, cp: u16, kind: u8) -> Res<()> {
        let w = if kind == b'i' { 2 } else { 1 };
        // One look-up for the common case (a field of an instance of this context).
        let (a, b) = match (self.pkg.cp(cp), self.heap.objects.get(&(obj as u16))) {
            (
                Some(Cp::Field(c)),
                Some(Obj::Instance {
                    cells,
                    native: crate::heap::NativeState::None,
                    ..
                }),
            ) if usize::from(c) + w <= cells.len() => {
                let c = usize::from(c);
                (cells[c], cells.get(c + 1).copied().unwrap_or(0))
            }
            _ => {
                let (h, c) = self.field_cell(obj, cp, w)?;
                let cells = match self.heap.objects.get(&h) {
                    Some(Obj::Instance { cells, .. }) => cells,
                    _ => return Err(Flow::Fatal("field".into())),
                };
                (cells[c], cells.get(c + 1).copied().unwrap_or(0))
            }
        };
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
        let cells = self.cells(h)?;
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
}
