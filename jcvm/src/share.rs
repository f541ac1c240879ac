//! Shareable interface objects across packages and the applet firewall between contexts.
//!
//! Each applet instance runs in its own context (its own [`Vm`] and heap). An object of one
//! context reaches another only as a **proxy** (an instance with [`NativeState::Proxy`]):
//! reading or writing its fields or elements throws `SecurityException`; the only thing a
//! holder can do with it is invoke a method of a **shareable interface** it implements, which
//! the card (through [`Persist::call_shareable`]) runs in the owner's context. A client obtains
//! a server's object with `JCSystem.getAppletShareableInterfaceObject(serverAID, parameter)`:
//! the card calls the server's `getShareableInterfaceObject(clientAID, parameter)`, and the
//! server decides (null refuses). During the call `JCSystem.getPreviousContextAID()` names the
//! client. References passed as arguments become proxies in the server (the APDU buffer, a
//! global array, is the server's own buffer with the same contents); references returned
//! become proxies in the client. Interfaces are named across packages by package AID and
//! class token (the server package's Export component).

use crate::heap::{self, NativeState, Obj};
use crate::interp::{Call, Flow, Target};
use crate::link::ClassId;
use crate::native::Ret;
use crate::{Answer, Persist, StoreFail, Vm, api};

/// A server's shareable object as a client gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sio {
    /// The object's handle in the server's heap.
    pub handle: u16,
    /// The server's package AID.
    pub package: Vec<u8>,
    /// Class tokens (the server package's Export component) of the shareable interfaces the
    /// object implements.
    pub interfaces: Vec<u8>,
    /// The shareable interfaces of other packages (package AID, class token) it implements.
    pub foreign: Vec<(Vec<u8>, u8)>,
}

/// A method of a shareable interface called from another context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareCall {
    /// The object (a handle in the server's heap).
    pub handle: u16,
    /// The interface's package AID.
    pub package: Vec<u8>,
    /// The interface's class token in that package.
    pub interface: u8,
    /// The interface method token.
    pub method: u8,
    /// The argument words, without `this`.
    pub words: Vec<i16>,
    /// The calling instance's AID.
    pub caller: Vec<u8>,
    /// The caller's handle of the APDU buffer (arguments equal to it are the global buffer).
    pub caller_buffer: u16,
    /// The APDU buffer's contents, in and out.
    pub buffer: Vec<u8>,
}

/// How a shareable call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareReturn {
    /// A `void` method returned.
    Void,
    /// A `boolean`, `byte` or `short` value.
    Word(i16),
    /// An `int` value.
    Int(i32),
    /// A `null` reference.
    Null,
    /// A reference to an object of the server (a proxy for the caller).
    Object(Sio),
    /// An API exception came out of the call: its class and reason.
    Throw(&'static str, i16),
    /// The firewall refused the call (no such shareable object or interface, the callee's
    /// context unreachable, or calls nested too deep): the caller gets `SecurityException`.
    Security,
    /// Power was lost during a write.
    Torn,
    /// Persistent memory is full.
    Full,
    /// The server failed (unsupported feature, corrupt code, budget); the reason.
    Failed(String),
}

/// The answer of a shareable call: how it ended and the APDU buffer after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareOutcome {
    /// How it ended.
    pub ret: ShareReturn,
    /// The APDU buffer's contents afterwards.
    pub buffer: Vec<u8>,
}

const SECURITY: &str = "java.lang.SecurityException";

/// The parameter and return types of a method type descriptor (JCVM 6.14 nibbles): for each
/// parameter its word count and whether it is a reference, and the return kind.
fn signature(nibbles: &[u8]) -> Option<(Vec<(usize, bool)>, u8)> {
    let mut params = Vec::new();
    let mut i = 0;
    let mut last = None;
    while i < nibbles.len() {
        let n = nibbles[i];
        let (words, is_ref, skip) = match n {
            0x1 => (0, false, 0),
            0x2..=0x4 => (1, false, 0),
            0x5 => (2, false, 0),
            0x6 | 0xE => (1, true, 4),
            0xA..=0xD => (1, true, 0),
            _ => return None,
        };
        last = Some(n);
        params.push((words, is_ref));
        i += 1 + skip;
    }
    // The last type is the return type.
    params.pop()?;
    Some((params, last?))
}

impl Vm {
    /// Whether the instance `aid` belongs to this context (it is the instance entered, or
    /// one registered in the context's state).
    pub fn serves(&self, aid: &[u8]) -> bool {
        self.aid == aid || self.applets.contains_key(aid)
    }

    /// Runs `f` for the instance `aid` of this context and enters the instance it had
    /// before again afterwards: a call back into a context whose own call is under way (the
    /// Java Card runtime environment lets a server call a shareable object of the context
    /// that called it).
    pub fn reenter<T>(&mut self, aid: &[u8], f: impl FnOnce(&mut Vm) -> T) -> T {
        let (was, applet) = (self.aid.clone(), self.applet);
        self.enter(aid);
        let out = f(self);
        self.aid = was;
        self.applet = applet;
        out
    }

    /// The AID object of `aid` in this context (a system object, one per AID: this
    /// instance's own, and those of other contexts it meets).
    pub(crate) fn aid_object(&mut self, aid: &[u8]) -> Result<u16, Flow> {
        if let Some(h) = self.aid_objects.get(aid) {
            return Ok(*h);
        }
        let class = api::class_by_name("javacard.framework.AID").unwrap_or(0) as u16;
        let h = self
            .heap
            .alloc_system(Obj::Instance {
                class: ClassId::Api(class),
                cells: Vec::new(),
                reason: 0,
                native: NativeState::Aid(aid.to_vec()),
            })
            .ok_or_else(|| Flow::Fatal("out of system object handles".into()))?;
        self.aid_objects.insert(aid.to_vec(), h);
        Ok(h)
    }

    /// A proxy in this context for object `sio.handle` of the context `owner`: a persistent
    /// object when `keep` (a shareable object the applet may store in a field), else a
    /// call-scoped one (a caller's argument, gone when the call ends).
    pub(crate) fn proxy(&mut self, owner: &[u8], sio: Sio, keep: bool) -> Result<u16, Flow> {
        let object = api::class_by_name("java.lang.Object").unwrap_or(0) as u16;
        let o = Obj::Instance {
            class: ClassId::Api(object),
            cells: Vec::new(),
            reason: 0,
            native: NativeState::Proxy {
                owner: owner.to_vec(),
                handle: sio.handle,
                package: sio.package,
                interfaces: sio.interfaces,
                foreign: sio.foreign,
            },
        };
        if !keep {
            let h = (heap::FIRST_CALL_SCOPED..u16::MAX)
                .find(|h| !self.heap.objects.contains_key(h))
                .ok_or_else(|| Flow::Fatal("too many references in one shareable call".into()))?;
            self.heap.objects.insert(h, o);
            return Ok(h);
        }
        // The same object of the owner is the same reference here (asking again, or a method
        // returning it again, makes no new object).
        if let Some(h) = self.heap.objects.iter().find_map(|(h, x)| match x {
            Obj::Instance {
                native:
                    NativeState::Proxy {
                        owner: o,
                        handle: oh,
                        ..
                    },
                ..
            } if *h < heap::FIRST_CALL_SCOPED && o.as_slice() == owner && *oh == sio.handle => {
                Some(*h)
            }
            _ => None,
        }) {
            return Ok(h);
        }
        let h = self
            .heap
            .alloc(o)
            .ok_or_else(|| Flow::Fatal("out of object handles".into()))?;
        self.meta_dirty = true;
        self.dirty.insert(h);
        Ok(h)
    }

    /// Whether `h` is an object of another context (then any access but a shareable call is
    /// refused with `SecurityException`).
    pub(crate) fn is_proxy(&self, h: u16) -> bool {
        matches!(
            self.heap.objects.get(&h),
            Some(Obj::Instance {
                native: NativeState::Proxy { .. },
                ..
            })
        )
    }

    /// `SecurityException`, the firewall's answer.
    pub(crate) fn firewall(&mut self) -> Flow {
        self.throw_api(SECURITY, 0)
    }

    /// The shareable interfaces of this package (class tokens of its Export component) that
    /// class `c` implements.
    fn shareable_tokens(&self, c: ClassId) -> Vec<u8> {
        let Some(shareable) = api::class_by_name("javacard.framework.Shareable") else {
            return Vec::new();
        };
        let shareable = ClassId::Api(shareable as u16);
        let mut out = Vec::new();
        for (token, e) in self.pkg.model.export.iter().enumerate() {
            let iface = ClassId::Pkg(e.class_offset);
            if self
                .pkg
                .model
                .classes
                .interface_at(e.class_offset)
                .is_some()
                && self.pkg.interface_extends(iface, shareable)
                && self.pkg.is_instance(c, iface)
                && let Ok(t) = u8::try_from(token)
            {
                out.push(t);
            }
        }
        out
    }

    /// The other packages' shareable interfaces class `c` (or a superclass) implements.
    fn foreign_interfaces(&self, c: ClassId) -> Vec<(Vec<u8>, u8)> {
        let mut out = Vec::new();
        let mut cur = Some(c);
        for _ in 0..256 {
            let Some(ClassId::Pkg(o)) = cur else { break };
            if let Some(lc) = self.pkg.classes.get(&o) {
                for ii in &self.pkg.model.classes.classes[lc.index].interfaces {
                    if let Ok(ClassId::Ext(i, t)) = self.pkg.class_ref(ii.interface)
                        && let Some(aid) = self.pkg.import_aid(i)
                        && !out.iter().any(|(a, x): &(Vec<u8>, u8)| a == aid && *x == t)
                    {
                        out.push((aid.to_vec(), t));
                    }
                }
            }
            cur = self.pkg.super_of(ClassId::Pkg(o));
        }
        out
    }

    /// The export token of this package's interface at class offset `o` (how other packages
    /// name it).
    pub(crate) fn export_token(&self, o: u16) -> Option<u8> {
        self.pkg
            .model
            .export
            .iter()
            .position(|e| e.class_offset == o)
            .and_then(|t| u8::try_from(t).ok())
    }

    /// Whether proxy `h` implements shareable interface `iface` as this package names it.
    pub(crate) fn proxy_implements(&self, h: u16, iface: ClassId) -> bool {
        let Some(Obj::Instance {
            native:
                NativeState::Proxy {
                    package,
                    interfaces,
                    foreign,
                    ..
                },
            ..
        }) = self.heap.objects.get(&h)
        else {
            return false;
        };
        let Some((aid, t)) = self.interface_name(iface) else {
            return false;
        };
        (aid == package.as_slice() && interfaces.contains(&t))
            || foreign.iter().any(|(a, x)| a.as_slice() == aid && *x == t)
    }

    /// A shareable interface as packages name it across the firewall: its package's AID
    /// and its class token there.
    fn interface_name(&self, iface: ClassId) -> Option<(&[u8], u8)> {
        match iface {
            ClassId::Ext(i, t) => Some((self.pkg.import_aid(i)?, t)),
            ClassId::Pkg(o) => Some((
                self.pkg.model.header.package.aid.as_slice(),
                self.export_token(o)?,
            )),
            ClassId::Api(_) => None,
        }
    }

    fn sio_of(&self, h: u16) -> Option<Sio> {
        match self.heap.objects.get(&h) {
            Some(Obj::Instance { class, native, .. })
                if !matches!(native, NativeState::Proxy { .. }) =>
            {
                Some(Sio {
                    handle: h,
                    package: self.pkg.model.header.package.aid.clone(),
                    interfaces: self.shareable_tokens(*class),
                    foreign: self.foreign_interfaces(*class),
                })
            }
            _ => None,
        }
    }

    /// The server side of `JCSystem.getAppletShareableInterfaceObject`: runs this applet's
    /// `getShareableInterfaceObject(clientAID, parameter)` and returns its object, `None` when
    /// it answers null (or an object that implements none of its shareable interfaces).
    pub fn shareable_object(
        &mut self,
        p: &mut dyn Persist,
        client: &[u8],
        parameter: u8,
    ) -> Result<Option<Sio>, Answer> {
        self.load(p);
        if self.applet == 0 {
            return Ok(None);
        }
        let aid = self
            .aid_object(client)
            .map_err(|_| Answer::Sw(crate::SW_UNKNOWN))?;
        let token = api::virtual_token(
            "javacard.framework.Applet",
            "getShareableInterfaceObject",
            "(Ljavacard/framework/AID;B)Ljavacard/framework/Shareable;",
        )
        .unwrap_or(0);
        let previous = self.caller.replace(client.to_vec());
        // Inside the client's transaction, if one is open (not rolled back here).
        let (r, flushed) = self.call_raw(
            p,
            Call::Virtual(self.applet, token),
            &[aid as i16, i16::from(parameter as i8)],
            false,
        );
        self.caller = previous;
        match flushed {
            Err(StoreFail::Torn) => return Err(Answer::Torn),
            Err(StoreFail::Full) => return Err(Answer::Sw(0x6A84)),
            Ok(()) => {}
        }
        let h = match r {
            Ok(Some(v)) if v != 0 => v as u16,
            Err(Flow::Store(StoreFail::Torn)) => return Err(Answer::Torn),
            _ => return Ok(None),
        };
        Ok(self
            .sio_of(h)
            .filter(|s| !s.interfaces.is_empty() || !s.foreign.is_empty()))
    }

    /// The server side of a shareable call: checks the object and the interface, maps the
    /// arguments into this context, runs the method here (inside the caller's transaction, if
    /// one is open) and maps the result back.
    pub fn call_shareable(&mut self, p: &mut dyn Persist, call: ShareCall) -> ShareOutcome {
        self.load(p);
        let mut buffer = call.buffer.clone();
        let ret = self.serve(p, &call, &mut buffer);
        ShareOutcome { ret, buffer }
    }

    fn serve(
        &mut self,
        p: &mut dyn Persist,
        call: &ShareCall,
        buffer: &mut Vec<u8>,
    ) -> ShareReturn {
        let class = match self.heap.objects.get(&call.handle) {
            Some(Obj::Instance { class, native, .. })
                if !matches!(native, NativeState::Proxy { .. }) =>
            {
                *class
            }
            _ => return ShareReturn::Security,
        };
        let iface = if call.package == self.pkg.model.header.package.aid {
            let Some(e) = self.pkg.model.export.get(usize::from(call.interface)) else {
                return ShareReturn::Security;
            };
            if !self.shareable_tokens(class).contains(&call.interface) {
                return ShareReturn::Security;
            }
            ClassId::Pkg(e.class_offset)
        } else {
            // Another package's shareable interface the object implements.
            let wanted = (call.package.clone(), call.interface);
            if !self.foreign_interfaces(class).contains(&wanted) {
                return ShareReturn::Security;
            }
            let Some(i) =
                (0..=u8::MAX).find(|i| self.pkg.import_aid(*i) == Some(&call.package[..]))
            else {
                return ShareReturn::Security;
            };
            ClassId::Ext(i, call.interface)
        };
        let offset = match self.resolve_interface(class, iface, call.method) {
            Ok(Target::Code(o)) => o,
            _ => return ShareReturn::Failed("interface method not implemented".into()),
        };
        let Some((params, ret)) = self.method_signature(offset) else {
            return ShareReturn::Failed(
                "the server's CAP file has no Descriptor component: its shareable methods' \
                 parameter types are unknown"
                    .into(),
            );
        };
        // The arguments: references become proxies of the caller's objects, the caller's APDU
        // buffer this context's own.
        let own_buffer = match self.apdu_buffer() {
            Ok(h) => h,
            Err(_) => return ShareReturn::Failed("out of object handles".into()),
        };
        let scoped_before: Vec<u16> = self
            .heap
            .objects
            .range(heap::FIRST_CALL_SCOPED..)
            .map(|(h, _)| *h)
            .collect();
        let mut args = vec![call.handle as i16];
        let mut words = call.words.iter().copied();
        for (n, is_ref) in params {
            for _ in 0..n {
                let Some(w) = words.next() else {
                    return ShareReturn::Security;
                };
                let w = if !is_ref || w == 0 {
                    w
                } else if w as u16 == call.caller_buffer {
                    own_buffer as i16
                } else {
                    let sio = Sio {
                        handle: w as u16,
                        package: Vec::new(),
                        interfaces: Vec::new(),
                        foreign: Vec::new(),
                    };
                    match self.proxy(&call.caller, sio, false) {
                        Ok(h) => h as i16,
                        Err(_) => return ShareReturn::Failed("out of object handles".into()),
                    }
                };
                args.push(w);
            }
        }
        self.set_buffer(own_buffer, buffer);
        let previous = self.caller.replace(call.caller.clone());
        let (r, flushed) = self.call_raw(p, Call::Static(offset), &args, false);
        self.caller = previous;
        // The caller's objects this call was given; those of a call under way in this
        // context (this one called back into it) stay.
        self.heap
            .objects
            .retain(|h, _| *h < heap::FIRST_CALL_SCOPED || scoped_before.contains(h));
        if let Some(b) = self.buffer_bytes(own_buffer) {
            buffer.clone_from(b);
        }
        match flushed {
            Err(StoreFail::Torn) => return ShareReturn::Torn,
            Err(StoreFail::Full) => return ShareReturn::Full,
            Ok(()) => {}
        }
        match r {
            Ok(v) => match (ret, v) {
                (0x1, _) => ShareReturn::Void,
                (0x5, Some(v)) => ShareReturn::Int(v),
                (0x6 | 0xA..=0xE, Some(0)) | (0x6 | 0xA..=0xE, None) => ShareReturn::Null,
                (0x6 | 0xA..=0xE, Some(h)) => match self.sio_of(h as u16) {
                    Some(s) => ShareReturn::Object(s),
                    None => ShareReturn::Security,
                },
                (_, Some(v)) => ShareReturn::Word(v as i16),
                (_, None) => ShareReturn::Void,
            },
            Err(Flow::Throw(h)) => match self.heap.objects.get(&h) {
                Some(Obj::Instance {
                    class: ClassId::Api(i),
                    reason,
                    ..
                }) => ShareReturn::Throw(api::CLASSES[usize::from(*i)].name, *reason),
                _ => ShareReturn::Failed("an exception of the server's own class".into()),
            },
            Err(Flow::Store(StoreFail::Torn)) => ShareReturn::Torn,
            Err(Flow::Store(StoreFail::Full)) => ShareReturn::Full,
            Err(Flow::Fatal(m)) => ShareReturn::Failed(m),
        }
    }

    /// The parameter words and return kind of the package method at `offset`, from the
    /// Descriptor component.
    fn method_signature(&self, offset: u16) -> Option<(Vec<(usize, bool)>, u8)> {
        let d = self.pkg.model.descriptor.as_ref()?;
        let m = d
            .classes
            .iter()
            .flat_map(|c| c.methods.iter())
            .find(|m| m.offset == offset)?;
        let (_, nibbles) = d.types.iter().find(|(o, _)| *o == m.type_offset)?;
        signature(nibbles)
    }

    /// The client side of a call on a proxy: the card runs it in the owner's context.
    pub(crate) fn invoke_proxy(
        &mut self,
        p: &mut dyn Persist,
        proxy: u16,
        iface: ClassId,
        method: u8,
        args: Vec<i16>,
    ) -> Result<(), Flow> {
        let Some(Obj::Instance {
            native: NativeState::Proxy { owner, handle, .. },
            ..
        }) = self.heap.objects.get(&proxy)
        else {
            return Err(self.firewall());
        };
        let (owner, handle) = (owner.clone(), *handle);
        let Some((package, interface)) = self.interface_name(iface).map(|(a, t)| (a.to_vec(), t))
        else {
            return Err(self.firewall());
        };
        let caller_buffer = self.apdu.buffer;
        let buffer = self
            .buffer_bytes(caller_buffer)
            .cloned()
            .unwrap_or_default();
        let out = p.call_shareable(
            &owner,
            ShareCall {
                handle,
                package,
                interface,
                method,
                words: args,
                caller: self.aid.clone(),
                caller_buffer,
                buffer,
            },
            self,
        );
        if caller_buffer != 0 {
            self.set_buffer(caller_buffer, &out.buffer);
        }
        match out.ret {
            ShareReturn::Void => {}
            ShareReturn::Word(v) => self.words.push(v),
            ShareReturn::Int(v) => {
                self.words.push((v >> 16) as i16);
                self.words.push(v as i16);
            }
            ShareReturn::Null => self.words.push(0),
            ShareReturn::Object(sio) => {
                let h = self.proxy(&owner, sio, true)?;
                self.words.push(h as i16);
            }
            ShareReturn::Throw(class, reason) => return Err(self.throw_api(class, reason)),
            ShareReturn::Security => return Err(self.firewall()),
            ShareReturn::Torn => return Err(Flow::Store(StoreFail::Torn)),
            ShareReturn::Full => return Err(Flow::Store(StoreFail::Full)),
            ShareReturn::Failed(m) => {
                return Err(Flow::Fatal(format!(
                    "the shareable object's applet failed: {m}"
                )));
            }
        }
        Ok(())
    }

    /// `JCSystem.getAppletShareableInterfaceObject(server, parameter)` in this (client)
    /// context.
    pub(crate) fn get_shareable(
        &mut self,
        p: &mut dyn Persist,
        server: Vec<u8>,
        parameter: u8,
    ) -> Result<Ret, Flow> {
        if server == self.aid {
            return Ok(Ret::Word(0));
        }
        // Another instance of this package: the same context, so its object comes as it is
        // (no proxy); its getShareableInterfaceObject runs here as a call of the applet.
        if let Some(&sibling) = self.applets.get(&server) {
            if !p.applet_exists(&server) {
                return Ok(Ret::Word(0));
            }
            let aid = self.aid_object(&self.aid.clone())?;
            let token = api::virtual_token(
                "javacard.framework.Applet",
                "getShareableInterfaceObject",
                "(Ljavacard/framework/AID;B)Ljavacard/framework/Shareable;",
            )
            .unwrap_or(0);
            let class = self.class_of(sibling)?;
            return Ok(match self.resolve_virtual(class, token) {
                Some(Target::Code(o)) => Ret::Code(
                    o,
                    vec![sibling as i16, aid as i16, i16::from(parameter as i8)],
                ),
                // The API's own method: null.
                _ => Ret::Word(0),
            });
        }
        match p.shareable_object(&server, parameter, self) {
            Ok(Some(sio)) => Ok(Ret::Word(self.proxy(&server, sio, true)? as i16)),
            Ok(None) => Ok(Ret::Word(0)),
            Err(e) => Err(Flow::Store(e)),
        }
    }

    /// `JCSystem.getPreviousContextAID()`: the caller of a shareable call, else null.
    pub(crate) fn previous_context(&mut self) -> Result<i16, Flow> {
        match self.caller.clone() {
            Some(c) => Ok(self.aid_object(&c)? as i16),
            None => Ok(0),
        }
    }

    fn buffer_bytes(&self, h: u16) -> Option<&Vec<u8>> {
        match self.heap.objects.get(&h) {
            Some(Obj::Array {
                data: crate::heap::Data::Bytes(b),
                ..
            }) => Some(b),
            _ => None,
        }
    }

    fn set_buffer(&mut self, h: u16, bytes: &[u8]) {
        if let Some(Obj::Array {
            data: crate::heap::Data::Bytes(b),
            ..
        }) = self.heap.objects.get_mut(&h)
        {
            b.clear();
            b.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::signature;

    #[test]
    fn type_descriptors_give_parameter_words() {
        // (S)S: one short parameter, short return.
        assert_eq!(signature(&[0x4, 0x4]), Some((vec![(1, false)], 0x4)));
        // ([BS)S: a byte array (a reference) and a short.
        assert_eq!(
            signature(&[0xB, 0x4, 0x4]),
            Some((vec![(1, true), (1, false)], 0x4))
        );
        // (ILx/y;)V with a class reference of 4 nibbles, void return.
        assert_eq!(
            signature(&[0x5, 0x6, 0x0, 0x0, 0x1, 0x2, 0x1]),
            Some((vec![(2, false), (1, true)], 0x1))
        );
        assert_eq!(signature(&[0x7]), None);
        assert_eq!(signature(&[]), None);
    }
}
