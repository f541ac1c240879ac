//! The native Java Card API: the methods of `javacard.framework` (and `java.lang`) an applet
//! calls, implemented in Rust. A method the API defines but kagi does not implement ends the
//! command with `6F00` and an error naming it ([`crate::Vm::last_error`]).

use crate::api::{self, ApiMethod, CLASSES};
use crate::heap::{Data, Elem, NativeState, Obj};
use crate::interp::{Flow, Res};
use crate::link::ClassId;
use crate::{ApduIn, Persist, Vm};

/// A native method's result.
pub(crate) enum Ret {
    Void,
    Word(i16),
    #[allow(dead_code)]
    Int(i32),
    /// The native's answer is that of a method of the package, run as if the applet had
    /// invoked it (its arguments, `this` first): a sibling instance's
    /// `getShareableInterfaceObject` in the same context.
    Code(u16, Vec<i16>),
}

impl Ret {
    pub(crate) fn push_to(&self, words: &mut Vec<i16>) {
        match self {
            Ret::Void => {}
            Ret::Word(w) => words.push(*w),
            Ret::Int(i) => {
                words.push((*i >> 16) as i16);
                words.push(*i as i16);
            }
            Ret::Code(..) => {}
        }
    }

    pub(crate) fn as_i32(&self) -> Option<i32> {
        match self {
            Ret::Void | Ret::Code(..) => None,
            Ret::Word(w) => Some(i32::from(*w)),
            Ret::Int(i) => Some(*i),
        }
    }
}

/// The `APDU` object's state for the current command.
#[derive(Debug, Default, Clone)]
pub(crate) struct ApduState {
    pub(crate) apdu: u16,
    pub(crate) buffer: u16,
    pub(crate) cmd: ApduIn,
    pub(crate) outgoing: bool,
    pub(crate) out_len: usize,
    pub(crate) out: Vec<u8>,
}

/// Applies `f` to the bytes `w` of a byte array object (a committed record being patched).
fn patch_bytes(o: &mut Obj, w: std::ops::Range<usize>, f: impl FnOnce(&mut [u8])) {
    if let Obj::Array {
        data: Data::Bytes(b),
        ..
    } = o
        && let Some(b) = b.get_mut(w)
    {
        f(b);
    }
}

const T_IN_PROGRESS: i16 = 1;
const T_NOT_IN_PROGRESS: i16 = 2;

impl Vm {
    /// Prepares the `APDU` object and its buffer for `cmd`; returns the `APDU` handle.
    pub(crate) fn begin_apdu(&mut self, cmd: &ApduIn) -> Result<u16, crate::Answer> {
        let size = (7 + cmd.data.len() + 2).max(261);
        let mut buf = vec![0u8; size];
        buf[..4].copy_from_slice(&cmd.header);
        let off = if cmd.extended {
            buf[4] = 0;
            buf[5..7].copy_from_slice(&(cmd.data.len() as u16).to_be_bytes());
            7
        } else {
            buf[4] = if cmd.data.is_empty() {
                cmd.ne as u8
            } else {
                cmd.data.len() as u8
            };
            5
        };
        buf[off..off + cmd.data.len()].copy_from_slice(&cmd.data);
        self.apdu_buffer()
            .map_err(|_| crate::Answer::Sw(crate::SW_UNKNOWN))?;
        if let Some(Obj::Array { data, .. }) = self.heap.objects.get_mut(&self.apdu.buffer) {
            *data = Data::Bytes(buf);
        }
        self.apdu.cmd = cmd.clone();
        self.apdu.outgoing = false;
        self.apdu.out_len = 0;
        self.apdu.out.clear();
        Ok(self.apdu.apdu)
    }

    /// The `APDU` object and its buffer (made on first use); returns the buffer's handle.
    pub(crate) fn apdu_buffer(&mut self) -> Res<u16> {
        if self.apdu.apdu == 0 {
            let apdu_class = api::class_by_name("javacard.framework.APDU").unwrap_or(0) as u16;
            self.apdu.apdu = self
                .heap
                .alloc_system(Obj::Instance {
                    class: ClassId::Api(apdu_class),
                    cells: Vec::new(),
                    reason: 0,
                    native: NativeState::None,
                })
                .ok_or_else(|| Flow::Fatal("out of system object handles".into()))?;
            self.apdu.buffer = self
                .heap
                .alloc_system(Obj::Array {
                    elem: Elem::Byte,
                    data: Data::Bytes(vec![0; 261]),
                    transient: Some(1),
                })
                .ok_or_else(|| Flow::Fatal("out of system object handles".into()))?;
        }
        Ok(self.apdu.buffer)
    }

    pub(crate) fn bytes_of(&mut self, h: i16) -> Res<&mut Vec<u8>> {
        if self.is_proxy(h as u16) {
            return Err(self.firewall());
        }
        match self.heap.objects.get(&(h as u16)) {
            Some(Obj::Array {
                data: Data::Bytes(_),
                ..
            }) => {}
            Some(_) => return Err(Flow::Fatal("a byte array was expected".into())),
            None => return Err(self.throw_api("java.lang.NullPointerException", 0)),
        }
        match self.heap.objects.get_mut(&(h as u16)) {
            Some(Obj::Array {
                data: Data::Bytes(b),
                ..
            }) => Ok(b),
            _ => Err(Flow::Fatal("a byte array was expected".into())),
        }
    }

    pub(crate) fn range(&mut self, len: usize, off: i16, n: i16) -> Res<std::ops::Range<usize>> {
        if off < 0 || n < 0 || off as usize + n as usize > len {
            return Err(self.throw_api("java.lang.ArrayIndexOutOfBoundsException", 0));
        }
        Ok(off as usize..off as usize + n as usize)
    }

    fn transient_array(&mut self, elem: Elem, n: i16, event: i16) -> Res<Ret> {
        if n < 0 {
            return Err(self.throw_api("java.lang.NegativeArraySizeException", 0));
        }
        if !(1..=2).contains(&event) {
            // SystemException.ILLEGAL_VALUE
            return Err(self.throw_api("javacard.framework.SystemException", 1));
        }
        let n = n as usize;
        let data = match elem {
            Elem::Boolean | Elem::Byte => Data::Bytes(vec![0; n]),
            Elem::Short => Data::Shorts(vec![0; n]),
            Elem::Int => Data::Ints(vec![0; n]),
            Elem::Ref(_) => Data::Refs(vec![0; n]),
        };
        let h = self
            .heap
            .alloc(Obj::Array {
                elem,
                data,
                transient: Some(event as u8),
            })
            .ok_or_else(|| Flow::Fatal("out of object handles".into()))?;
        self.dirty.insert(h);
        self.meta_dirty = true;
        Ok(Ret::Word(h as i16))
    }

    fn store_fail(e: crate::StoreFail) -> Flow {
        Flow::Store(e)
    }

    /// Calls the API method `m` of class `class` with `args` (`this` first for instance
    /// methods and constructors).
    pub(crate) fn native(
        &mut self,
        p: &mut dyn Persist,
        class: u16,
        m: &'static ApiMethod,
        a: &[i16],
    ) -> Res<Ret> {
        let cname = CLASSES[usize::from(class)].name;
        let key = (cname, m.name, m.descriptor);
        let arg = |i: usize| a.get(i).copied().unwrap_or(0);
        Ok(match key {
            // AID.
            ("javacard.framework.JCSystem", "getAID", _) => Ret::Word(self.own_aid()? as i16),
            ("javacard.framework.JCSystem", "lookupAID", "([BSB)Ljavacard/framework/AID;") => {
                let b = self.bytes_of(arg(0))?.clone();
                let r = self.range(b.len(), arg(1), arg(2))?;
                if b[r.clone()] == self.aid[..] {
                    Ret::Word(self.own_aid()? as i16)
                } else if p.applet_exists(&b[r.clone()]) {
                    Ret::Word(self.aid_object(&b[r])? as i16)
                } else {
                    Ret::Word(0)
                }
            }
            (
                "javacard.framework.JCSystem",
                "getAppletShareableInterfaceObject",
                "(Ljavacard/framework/AID;B)Ljavacard/framework/Shareable;",
            ) => {
                let server = match self.heap.objects.get(&(arg(0) as u16)) {
                    Some(Obj::Instance {
                        native: NativeState::Aid(a),
                        ..
                    }) => a.clone(),
                    None => return Ok(Ret::Word(0)),
                    Some(_) => return Err(self.firewall()),
                };
                self.get_shareable(p, server, arg(1) as u8)?
            }
            ("javacard.framework.JCSystem", "getPreviousContextAID", _) => {
                Ret::Word(self.previous_context()?)
            }
            ("javacard.framework.AID", "<init>", "([BSB)V") => {
                let b = self.bytes_of(arg(1))?.clone();
                let r = self.range(b.len(), arg(2), arg(3))?;
                if !(5..=16).contains(&r.len()) {
                    return Err(self.throw_api("javacard.framework.SystemException", 1));
                }
                let h = arg(0) as u16;
                if let Some(Obj::Instance { native, .. }) = self.heap.objects.get_mut(&h) {
                    *native = NativeState::Aid(b[r].to_vec());
                }
                self.dirty.insert(h);
                Ret::Void
            }
            ("javacard.framework.AID", name, desc) => self.aid_method(name, desc, a)?,
            // org.globalplatform.GPSystem: the card manager's registry as the applet sees it.
            ("org.globalplatform.GPSystem", "getCardState", "()B") => {
                Ret::Word(i16::from(p.card_state() as i8))
            }
            ("org.globalplatform.GPSystem", "getCardContentState", "()B") => {
                Ret::Word(i16::from(p.life_cycle() as i8))
            }
            ("org.globalplatform.GPSystem", "setCardContentState", "(B)Z") => {
                let state = arg(0) as u8;
                // GP Card API: application-specific states are 0x07..=0x7F with the three low
                // bits set; INSTALLED and LOCKED (b8) are refused, as is any change of a
                // locked application.
                let allowed = state & 0x87 == 0x07 && p.life_cycle() & 0x80 == 0;
                let done = allowed && p.set_life_cycle(state).map_err(Self::store_fail)?;
                Ret::Word(i16::from(done))
            }
            // Without the Card Lock / Card Terminate privilege (kagi gives CAP applets
            // neither) the card manager refuses: `false`, the card unchanged.
            ("org.globalplatform.GPSystem", "lockCard" | "terminateCard", "()Z") => Ret::Word(0),
            // No Card Reset privilege either: the ATR stays.
            ("org.globalplatform.GPSystem", "setATRHistBytes", "([BSB)Z") => Ret::Word(0),
            // java.lang: constructors and Object.equals.
            (_, "<init>", "()V") => Ret::Void,
            (_, "equals", "(Ljava/lang/Object;)Z") => Ret::Word(i16::from(arg(0) == arg(1))),
            // Applet.
            ("javacard.framework.Applet", "register", "()V") => {
                self.register(arg(0) as u16);
                Ret::Void
            }
            ("javacard.framework.Applet", "register", "([BSB)V") => {
                let (off, n) = (arg(2), arg(3));
                let b = self.bytes_of(arg(1))?.clone();
                let r = self.range(b.len(), off, n)?;
                if !(5..=16).contains(&r.len()) || b[r.clone()] != self.aid[..] {
                    // SystemException.ILLEGAL_AID
                    return Err(self.throw_api("javacard.framework.SystemException", 2));
                }
                self.register(arg(0) as u16);
                Ret::Void
            }
            ("javacard.framework.Applet", "selectingApplet", "()Z") => {
                Ret::Word(i16::from(self.selecting))
            }
            ("javacard.framework.Applet", "reSelectingApplet", "()Z") => Ret::Word(0),
            ("javacard.framework.Applet", "select", "()Z") => Ret::Word(1),
            ("javacard.framework.Applet", "deselect", "()V") => Ret::Void,
            ("javacard.framework.Applet", "getShareableInterfaceObject", _) => Ret::Word(0),
            // Exceptions: throwIt, reasons, constructors with a reason.
            (_, "throwIt", "(S)V") => return Err(self.throw_api(cname, arg(0))),
            (_, "<init>", "(S)V") => {
                if let Some(Obj::Instance { reason, .. }) =
                    self.heap.objects.get_mut(&(arg(0) as u16))
                {
                    *reason = arg(1);
                }
                Ret::Void
            }
            (_, "getReason", "()S") => match self.heap.objects.get(&(arg(0) as u16)) {
                Some(Obj::Instance { reason, .. }) => Ret::Word(*reason),
                _ => return Err(self.throw_api("java.lang.NullPointerException", 0)),
            },
            (_, "setReason", "(S)V") => {
                if let Some(Obj::Instance { reason, .. }) =
                    self.heap.objects.get_mut(&(arg(0) as u16))
                {
                    *reason = arg(1);
                }
                Ret::Void
            }
            // APDU.
            ("javacard.framework.APDU", "getBuffer", "()[B") => Ret::Word(self.apdu.buffer as i16),
            ("javacard.framework.APDU", "getCurrentAPDU", _) => Ret::Word(self.apdu.apdu as i16),
            ("javacard.framework.APDU", "getCurrentAPDUBuffer", _) => {
                Ret::Word(self.apdu.buffer as i16)
            }
            ("javacard.framework.APDU", "getProtocol", "()B") => Ret::Word(1),
            ("javacard.framework.APDU", "getInBlockSize" | "getOutBlockSize", "()S") => {
                Ret::Word(261)
            }
            ("javacard.framework.APDU", "getNAD", "()B") => Ret::Word(0),
            ("javacard.framework.APDU", "getCLAChannel", "()B") => {
                Ret::Word(i16::from(self.apdu.cmd.header[0] & 3))
            }
            ("javacard.framework.APDU", "setIncomingAndReceive", "()S")
            | ("javacard.framework.APDU", "getIncomingLength", "()S") => {
                Ret::Word(self.apdu.cmd.data.len() as i16)
            }
            ("javacard.framework.APDU", "receiveBytes", "(S)S") => Ret::Word(0),
            ("javacard.framework.APDU", "getOffsetCdata", "()S") => {
                Ret::Word(if self.apdu.cmd.extended { 7 } else { 5 })
            }
            ("javacard.framework.APDU", "setOutgoing" | "setOutgoingNoChaining", "()S") => {
                if self.apdu.outgoing {
                    // APDUException.ILLEGAL_USE
                    return Err(self.throw_api("javacard.framework.APDUException", 1));
                }
                self.apdu.outgoing = true;
                let ne = match self.apdu.cmd.ne {
                    0 if self.apdu.cmd.extended => 65536,
                    0 => 256,
                    n => n,
                };
                Ret::Word(ne.min(32767) as i16)
            }
            ("javacard.framework.APDU", "setOutgoingLength", "(S)V") => {
                if !self.apdu.outgoing || arg(1) < 0 {
                    return Err(self.throw_api("javacard.framework.APDUException", 1));
                }
                self.apdu.out_len = arg(1) as usize;
                Ret::Void
            }
            ("javacard.framework.APDU", "sendBytes", "(SS)V") => {
                let h = self.apdu.buffer as i16;
                self.send(h, arg(1), arg(2))?;
                Ret::Void
            }
            ("javacard.framework.APDU", "sendBytesLong", "([BSS)V") => {
                self.send(arg(1), arg(2), arg(3))?;
                Ret::Void
            }
            ("javacard.framework.APDU", "setOutgoingAndSend", "(SS)V") => {
                self.apdu.outgoing = true;
                self.apdu.out_len = arg(2).max(0) as usize;
                let h = self.apdu.buffer as i16;
                self.send(h, arg(1), arg(2))?;
                Ret::Void
            }
            ("javacard.framework.APDU", "isISOInterindustryCLA", "()Z") => {
                Ret::Word(i16::from(self.apdu.cmd.header[0] & 0x80 == 0))
            }
            ("javacard.framework.APDU", "isCommandChainingCLA", "()Z") => {
                Ret::Word(i16::from(self.apdu.cmd.header[0] & 0x10 != 0))
            }
            ("javacard.framework.APDU", "isSecureMessagingCLA", "()Z") => {
                Ret::Word(i16::from(self.apdu.cmd.header[0] & 0x0C != 0))
            }
            // Util.
            (
                "javacard.framework.Util",
                op @ ("arrayCopy" | "arrayCopyNonAtomic"),
                "([BS[BSS)S",
            ) => {
                let (src, so, dst, d_o, n) = (arg(0), arg(1), arg(2), arg(3), arg(4));
                let s = self.bytes_of(src)?.clone();
                let r = self.range(s.len(), so, n)?;
                let dl = self.bytes_of(dst)?.len();
                let w = self.range(dl, d_o, n)?;
                let bytes = s[r].to_vec();
                self.bytes_of(dst)?[w.clone()].copy_from_slice(&bytes);
                self.touch(dst as u16);
                if op == "arrayCopyNonAtomic" {
                    // Not part of the open transaction (JC 3.0.5 API, Util): it survives an
                    // abort.
                    self.write_outside(p, dst as u16, |o| {
                        patch_bytes(o, w, |b| b.copy_from_slice(&bytes))
                    })
                    .map_err(Self::store_fail)?;
                }
                Ret::Word(d_o.wrapping_add(n))
            }
            ("javacard.framework.Util", "arrayFillNonAtomic", "([BSSB)S") => {
                let (dst, off, n, v) = (arg(0), arg(1), arg(2), arg(3));
                let dl = self.bytes_of(dst)?.len();
                let w = self.range(dl, off, n)?;
                self.bytes_of(dst)?[w.clone()].fill(v as u8);
                self.touch(dst as u16);
                self.write_outside(p, dst as u16, |o| patch_bytes(o, w, |b| b.fill(v as u8)))
                    .map_err(Self::store_fail)?;
                Ret::Word(off.wrapping_add(n))
            }
            ("javacard.framework.Util", "arrayCompare", "([BS[BSS)B") => {
                let s = self.bytes_of(arg(0))?.clone();
                let d = self.bytes_of(arg(2))?.clone();
                let r = self.range(s.len(), arg(1), arg(4))?;
                let w = self.range(d.len(), arg(3), arg(4))?;
                Ret::Word(match s[r].cmp(&d[w]) {
                    std::cmp::Ordering::Less => -1,
                    std::cmp::Ordering::Equal => 0,
                    std::cmp::Ordering::Greater => 1,
                })
            }
            ("javacard.framework.Util", "getShort", "([BS)S") => {
                let b = self.bytes_of(arg(0))?.clone();
                let r = self.range(b.len(), arg(1), 2)?;
                Ret::Word(i16::from_be_bytes([b[r.start], b[r.start + 1]]))
            }
            ("javacard.framework.Util", "setShort", "([BSS)S") => {
                let dst = arg(0);
                let dl = self.bytes_of(dst)?.len();
                let w = self.range(dl, arg(1), 2)?;
                self.bytes_of(dst)?[w].copy_from_slice(&arg(2).to_be_bytes());
                self.touch(dst as u16);
                Ret::Word(arg(1).wrapping_add(2))
            }
            ("javacard.framework.Util", "makeShort", "(BB)S") => {
                Ret::Word(i16::from_be_bytes([arg(0) as u8, arg(1) as u8]))
            }
            // JCSystem.
            ("javacard.framework.JCSystem", "makeTransientBooleanArray", _) => {
                self.transient_array(Elem::Boolean, arg(0), arg(1))?
            }
            ("javacard.framework.JCSystem", "makeTransientByteArray", _) => {
                self.transient_array(Elem::Byte, arg(0), arg(1))?
            }
            ("javacard.framework.JCSystem", "makeTransientShortArray", _) => {
                self.transient_array(Elem::Short, arg(0), arg(1))?
            }
            ("javacard.framework.JCSystem", "makeTransientObjectArray", _) => {
                self.transient_array(Elem::Ref(None), arg(0), arg(1))?
            }
            ("javacard.framework.JCSystem", "isTransient", _) => {
                Ret::Word(match self.heap.objects.get(&(arg(0) as u16)) {
                    Some(Obj::Array {
                        transient: Some(e), ..
                    }) => i16::from(*e),
                    _ => 0,
                })
            }
            ("javacard.framework.JCSystem", "beginTransaction", _) => {
                if p.in_transaction() {
                    return Err(
                        self.throw_api("javacard.framework.TransactionException", T_IN_PROGRESS)
                    );
                }
                self.flush(p).map_err(Self::store_fail)?;
                p.begin();
                Ret::Void
            }
            ("javacard.framework.JCSystem", "commitTransaction", _) => {
                if !p.in_transaction() {
                    return Err(self
                        .throw_api("javacard.framework.TransactionException", T_NOT_IN_PROGRESS));
                }
                self.flush(p).map_err(Self::store_fail)?;
                p.commit().map_err(Self::store_fail)?;
                Ret::Void
            }
            ("javacard.framework.JCSystem", "abortTransaction", _) => {
                if !p.in_transaction() {
                    return Err(self
                        .throw_api("javacard.framework.TransactionException", T_NOT_IN_PROGRESS));
                }
                p.abort();
                self.reload(p);
                Ret::Void
            }
            ("javacard.framework.JCSystem", "getTransactionDepth", _) => {
                Ret::Word(i16::from(p.in_transaction()))
            }
            ("javacard.framework.JCSystem", "getVersion", _) => Ret::Word(0x0305),
            ("javacard.framework.JCSystem", "getAvailableMemory", "(B)S") => Ret::Word(0x7FFF),
            (
                "javacard.framework.JCSystem",
                "getUnusedCommitCapacity" | "getMaxCommitCapacity",
                _,
            ) => Ret::Word(0x7FFF),
            ("javacard.framework.JCSystem", "isObjectDeletionSupported", _) => Ret::Word(1),
            ("javacard.framework.JCSystem", "requestObjectDeletion", _) => {
                self.deletion_requested = true;
                Ret::Void
            }
            ("javacard.framework.JCSystem", "getAssignedChannel", _) => {
                Ret::Word(i16::from(self.apdu.cmd.header[0] & 3))
            }
            // OwnerPIN.
            ("javacard.framework.OwnerPIN", "<init>", "(BB)V") => {
                let (limit, max) = (arg(1), arg(2));
                if limit < 1 || max < 1 {
                    return Err(self.throw_api("javacard.framework.PINException", 1));
                }
                let h = arg(0) as u16;
                if let Some(Obj::Instance { native, .. }) = self.heap.objects.get_mut(&h) {
                    *native = NativeState::Pin {
                        limit: limit as u8,
                        max: max as u8,
                        left: limit as u8,
                        value: Vec::new(),
                    };
                }
                self.dirty.insert(h);
                Ret::Void
            }
            ("javacard.framework.OwnerPIN", name, desc) => self.pin(p, name, desc, a)?,
            _ => {
                if let Some(r) = self.crypto_native(p, cname, m, a)? {
                    return Ok(r);
                }
                return Err(Flow::Fatal(format!(
                    "unsupported API method {} called from {}",
                    api::method_name(usize::from(class), m),
                    self.here()
                )));
            }
        })
    }

    /// The system `AID` object of this instance.
    /// `Applet.register`: `h` is the applet object of the instance being installed.
    fn register(&mut self, h: u16) {
        self.applet = h;
        self.applets.insert(self.aid.clone(), h);
        self.applets_dirty.insert(self.aid.clone());
    }

    pub(crate) fn own_aid(&mut self) -> Res<u16> {
        let aid = self.aid.clone();
        self.aid_object(&aid)
    }

    fn aid_bytes(&mut self, h: i16) -> Res<Vec<u8>> {
        match self.heap.objects.get(&(h as u16)) {
            Some(Obj::Instance {
                native: NativeState::Aid(b),
                ..
            }) => Ok(b.clone()),
            Some(_) => Ok(Vec::new()),
            None => Err(self.throw_api("java.lang.NullPointerException", 0)),
        }
    }

    fn aid_method(&mut self, name: &str, desc: &str, a: &[i16]) -> Res<Ret> {
        let arg = |i: usize| a.get(i).copied().unwrap_or(0);
        let mine = self.aid_bytes(arg(0))?;
        Ok(match (name, desc) {
            ("equals", "(Ljava/lang/Object;)Z") => {
                let other = match self.heap.objects.get(&(arg(1) as u16)) {
                    Some(Obj::Instance {
                        native: NativeState::Aid(b),
                        ..
                    }) => Some(b.clone()),
                    _ => None,
                };
                Ret::Word(i16::from(other.as_deref() == Some(&mine[..])))
            }
            ("RIDEquals", _) => {
                let other = self.aid_bytes(arg(1))?;
                Ret::Word(i16::from(
                    mine.len() >= 5 && other.len() >= 5 && mine[..5] == other[..5],
                ))
            }
            ("equals" | "partialEquals", "([BSB)Z") => {
                if arg(1) == 0 {
                    return Ok(Ret::Word(0));
                }
                let b = self.bytes_of(arg(1))?.clone();
                let r = self.range(b.len(), arg(2), arg(3))?;
                let ok = if name == "equals" {
                    b[r] == mine[..]
                } else {
                    r.len() <= mine.len() && b[r.clone()] == mine[..r.len()]
                };
                Ret::Word(i16::from(ok))
            }
            ("getBytes", "([BS)B") => {
                let dst = arg(1);
                let dl = self.bytes_of(dst)?.len();
                let w = self.range(dl, arg(2), mine.len() as i16)?;
                self.bytes_of(dst)?[w].copy_from_slice(&mine);
                self.touch(dst as u16);
                Ret::Word(mine.len() as i16)
            }
            _ => {
                return Err(Flow::Fatal(format!(
                    "unsupported API method javacard.framework.AID.{name}{desc} called from {}",
                    self.here()
                )));
            }
        })
    }

    fn send(&mut self, h: i16, off: i16, n: i16) -> Res<()> {
        if !self.apdu.outgoing {
            return Err(self.throw_api("javacard.framework.APDUException", 1));
        }
        let b = self.bytes_of(h)?.clone();
        let r = self.range(b.len(), off, n)?;
        if self.apdu.out.len() + r.len() > self.apdu.out_len {
            return Err(self.throw_api("javacard.framework.APDUException", 3));
        }
        self.apdu.out.extend_from_slice(&b[r]);
        Ok(())
    }

    fn pin(&mut self, p: &mut dyn Persist, name: &str, desc: &str, a: &[i16]) -> Res<Ret> {
        let h = a.first().copied().unwrap_or(0) as u16;
        let arg = |i: usize| a.get(i).copied().unwrap_or(0);
        let (limit, max, left, value) = match self.heap.objects.get(&h) {
            Some(Obj::Instance {
                native:
                    NativeState::Pin {
                        limit,
                        max,
                        left,
                        value,
                    },
                ..
            }) => (*limit, *max, *left, value.clone()),
            _ => return Err(self.throw_api("java.lang.NullPointerException", 0)),
        };
        let set = |vm: &mut Vm, left2: u8, value2: Option<Vec<u8>>| {
            if let Some(Obj::Instance {
                native: NativeState::Pin { left, value, .. },
                ..
            }) = vm.heap.objects.get_mut(&h)
            {
                *left = left2;
                if let Some(v) = value2 {
                    *value = v;
                }
            }
            vm.dirty.insert(h);
        };
        Ok(match (name, desc) {
            ("getTriesRemaining", _) => Ret::Word(i16::from(left)),
            ("isValidated" | "getValidatedFlag", _) => {
                Ret::Word(i16::from(self.validated.contains(&h)))
            }
            ("setValidatedFlag", _) => {
                if arg(1) != 0 {
                    self.validated.insert(h);
                } else {
                    self.validated.remove(&h);
                }
                Ret::Void
            }
            ("reset", _) => {
                if self.validated.remove(&h) {
                    set(self, limit, None);
                }
                Ret::Void
            }
            ("resetAndUnblock", _) => {
                self.validated.remove(&h);
                set(self, limit, None);
                Ret::Void
            }
            ("update", "([BSB)V") => {
                // An administrative update joins an open transaction (JC 3.0.5 API,
                // OwnerPINx); its own record write is atomic.
                let b = self.bytes_of(arg(1))?.clone();
                if arg(3) < 0 || arg(3) > i16::from(max) {
                    return Err(self.throw_api("javacard.framework.PINException", 1));
                }
                let r = self.range(b.len(), arg(2), arg(3))?;
                self.validated.remove(&h);
                set(self, limit, Some(b[r].to_vec()));
                Ret::Void
            }
            ("check", "([BSB)Z") => {
                self.validated.remove(&h);
                if left == 0 {
                    return Ok(Ret::Word(0));
                }
                // The try counter drops before the comparison (tearing-safe order), and PIN
                // presentation never joins a transaction (JC 3.0.5 API, OwnerPIN): an applet
                // must not win its tries back by aborting.
                set(self, left - 1, None);
                self.write_outside(p, h, |o| pin_left(o, left - 1))
                    .map_err(Self::store_fail)?;
                self.flush(p).map_err(Self::store_fail)?;
                let b = self.bytes_of(arg(1))?.clone();
                let ok = arg(3) >= 0
                    && usize::from(arg(3) as u16) == value.len()
                    && arg(2) >= 0
                    && (arg(2) as usize + value.len()) <= b.len()
                    && b[arg(2) as usize..arg(2) as usize + value.len()] == value[..];
                if ok {
                    self.validated.insert(h);
                    set(self, limit, None);
                    self.write_outside(p, h, |o| pin_left(o, limit))
                        .map_err(Self::store_fail)?;
                }
                Ret::Word(i16::from(ok))
            }
            _ => {
                return Err(Flow::Fatal(format!(
                    "unsupported API method javacard.framework.OwnerPIN.{name}{desc} called from {}",
                    self.here()
                )));
            }
        })
    }
}

/// Sets the try counter of a PIN object (a committed record being patched).
fn pin_left(o: &mut Obj, n: u8) {
    if let Obj::Instance {
        native: NativeState::Pin { left, .. },
        ..
    } = o
    {
        *left = n;
    }
}
