//! The object heap: class instances and arrays by 16-bit handle (0 is `null`), their
//! persistence (one store record per persistent object) and transient arrays.

use crate::link::ClassId;
use crate::record::R;
use std::collections::BTreeMap;

/// When a transient array is cleared (`JCSystem.CLEAR_ON_RESET` 1, `CLEAR_ON_DESELECT` 2).
pub type Event = u8;

/// Array element kinds, by the `newarray` type codes (JCVM §7.5.64) and 14 for references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// `boolean[]` (10).
    Boolean,
    /// `byte[]` (11).
    Byte,
    /// `short[]` (12).
    Short,
    /// `int[]` (13).
    Int,
    /// A reference array with its element class (`None`: `Object[]`).
    Ref(Option<ClassId>),
}

/// An array's elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// Bytes (boolean and byte arrays).
    Bytes(Vec<u8>),
    /// Shorts.
    Shorts(Vec<i16>),
    /// Ints.
    Ints(Vec<i32>),
    /// Handles.
    Refs(Vec<u16>),
}

impl Data {
    /// Element count.
    pub fn len(&self) -> usize {
        match self {
            Data::Bytes(v) => v.len(),
            Data::Shorts(v) => v.len(),
            Data::Ints(v) => v.len(),
            Data::Refs(v) => v.len(),
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn zero(&mut self) {
        match self {
            Data::Bytes(v) => v.fill(0),
            Data::Shorts(v) => v.fill(0),
            Data::Ints(v) => v.fill(0),
            Data::Refs(v) => v.fill(0),
        }
    }
}

/// The native state of API objects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NativeState {
    /// None.
    #[default]
    None,
    /// `OwnerPIN`: try limit, max size, tries left, the PIN (validated is transient).
    Pin {
        /// Try limit.
        limit: u8,
        /// Maximum PIN size.
        max: u8,
        /// Tries remaining.
        left: u8,
        /// The PIN value.
        value: Vec<u8>,
    },
    /// `AID`: the bytes.
    Aid(Vec<u8>),
    /// A key of `javacard.security` (persistent; zeroized on drop).
    Key(crate::crypto::state::KeyState),
    /// A `Signature`, `Cipher`, `MessageDigest`, `RandomData` or `KeyAgreement` engine.
    Engine(crate::crypto::state::Engine),
    /// A `KeyPair`: algorithm, size and its two key objects.
    Pair {
        /// `KeyPair.ALG_*`.
        alg: u8,
        /// Key size in bits.
        bits: u16,
        /// The public key object.
        public: u16,
        /// The private key object.
        private: u16,
    },
    /// An object of another context (the applet firewall, `crate::share`): only shareable
    /// interface calls reach it, in its owner's context.
    Proxy {
        /// The owning applet instance's AID.
        owner: Vec<u8>,
        /// The object's handle in the owner's heap.
        handle: u16,
        /// The owner's package AID (empty for a caller's object seen by a server).
        package: Vec<u8>,
        /// The shareable interfaces (class tokens of that package) it implements.
        interfaces: Vec<u8>,
        /// The shareable interfaces of other packages it implements: package AID and class
        /// token.
        foreign: Vec<(Vec<u8>, u8)>,
    },
}

/// One heap object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Obj {
    /// An instance of a class.
    Instance {
        /// Its class.
        class: ClassId,
        /// Instance fields of the package's classes, in 16-bit cells.
        cells: Vec<i16>,
        /// `CardException`/`CardRuntimeException` reason.
        reason: i16,
        /// Native state of API classes.
        native: NativeState,
    },
    /// An array.
    Array {
        /// Element kind.
        elem: Elem,
        /// Elements.
        data: Data,
        /// `Some(event)` for a transient array.
        transient: Option<Event>,
    },
}

/// The heap. Handles 1..[`FIRST_PERSISTENT`] are the system's own objects (APDU, its buffer,
/// the API exception instances), never persisted.
#[derive(Debug, Default, Clone)]
pub struct Heap {
    /// Objects by handle.
    pub objects: BTreeMap<u16, Obj>,
    /// The next persistent handle to hand out.
    pub next: u16,
    /// Next system handle.
    pub next_system: u16,
}

/// The first handle of call-scoped objects: the caller's objects a shareable call passes to
/// this context, removed when the call ends (a handle there is always such a reference, so one
/// the applet kept can never reach anything but a caller's object, whose access is refused).
pub const FIRST_CALL_SCOPED: u16 = 0xFF00;

/// The first handle of persistent objects.
pub const FIRST_PERSISTENT: u16 = 0x0100;

impl Heap {
    /// An empty heap.
    pub fn new() -> Self {
        Heap {
            objects: BTreeMap::new(),
            next: FIRST_PERSISTENT,
            next_system: 1,
        }
    }

    /// Allocates a persistent (or transient-array) object; `None` when handles run out.
    pub fn alloc(&mut self, o: Obj) -> Option<u16> {
        let h = self.next;
        if h >= FIRST_CALL_SCOPED {
            return None;
        }
        self.next += 1;
        self.objects.insert(h, o);
        Some(h)
    }

    /// Allocates a system object (never persisted).
    pub fn alloc_system(&mut self, o: Obj) -> Option<u16> {
        let h = self.next_system;
        if h >= FIRST_PERSISTENT {
            return None;
        }
        self.next_system += 1;
        self.objects.insert(h, o);
        Some(h)
    }

    /// Clears the transient arrays of `event` (and, for reset, the deselect ones too).
    pub fn clear_transient(&mut self, event: Event) {
        for o in self.objects.values_mut() {
            match o {
                Obj::Array {
                    data,
                    transient: Some(e),
                    ..
                } if *e == event || event == 1 => data.zero(),
                Obj::Instance {
                    native: NativeState::Key(k),
                    ..
                } if k.transient().is_some_and(|e| e == event || event == 1) => k.clear(),
                _ => {}
            }
        }
    }
}

fn class_bytes(c: ClassId, out: &mut Vec<u8>) {
    match c {
        ClassId::Pkg(o) => {
            out.push(0);
            out.extend_from_slice(&o.to_be_bytes());
        }
        ClassId::Api(i) => {
            out.push(1);
            out.extend_from_slice(&i.to_be_bytes());
        }
        ClassId::Ext(p, t) => out.extend_from_slice(&[2, p, t]),
    }
}

/// The store record of an object (a transient array's contents are not kept).
pub fn encode(o: &Obj) -> Vec<u8> {
    let mut v = Vec::new();
    match o {
        Obj::Instance {
            class,
            cells,
            reason,
            native,
        } => {
            v.push(1);
            class_bytes(*class, &mut v);
            v.extend_from_slice(&(cells.len() as u16).to_be_bytes());
            for c in cells {
                v.extend_from_slice(&c.to_be_bytes());
            }
            v.extend_from_slice(&reason.to_be_bytes());
            match native {
                NativeState::None => v.push(0),
                NativeState::Pin {
                    limit,
                    max,
                    left,
                    value,
                } => {
                    v.extend_from_slice(&[1, *limit, *max, *left, value.len() as u8]);
                    v.extend_from_slice(value);
                }
                NativeState::Aid(a) => {
                    v.extend_from_slice(&[2, a.len() as u8]);
                    v.extend_from_slice(a);
                }
                NativeState::Key(k) => {
                    v.push(3);
                    k.encode(&mut v);
                }
                NativeState::Engine(e) => {
                    v.push(4);
                    e.encode(&mut v);
                }
                NativeState::Pair {
                    alg,
                    bits,
                    public,
                    private,
                } => {
                    v.extend_from_slice(&[5, *alg]);
                    v.extend_from_slice(&bits.to_be_bytes());
                    v.extend_from_slice(&public.to_be_bytes());
                    v.extend_from_slice(&private.to_be_bytes());
                }
                NativeState::Proxy {
                    owner,
                    handle,
                    package,
                    interfaces,
                    foreign,
                } => {
                    v.push(6);
                    for part in [owner, package, interfaces] {
                        v.push(part.len() as u8);
                        v.extend_from_slice(part);
                    }
                    v.extend_from_slice(&handle.to_be_bytes());
                    // Records written before foreign interfaces end here.
                    if !foreign.is_empty() {
                        v.push(foreign.len() as u8);
                        for (aid, token) in foreign {
                            v.push(aid.len() as u8);
                            v.extend_from_slice(aid);
                            v.push(*token);
                        }
                    }
                }
            }
        }
        Obj::Array {
            elem,
            data,
            transient,
        } => {
            v.push(2);
            let code = match elem {
                Elem::Boolean => 10,
                Elem::Byte => 11,
                Elem::Short => 12,
                Elem::Int => 13,
                Elem::Ref(_) => 14,
            };
            v.push(code);
            v.push(transient.unwrap_or(0));
            v.extend_from_slice(&(data.len() as u16).to_be_bytes());
            if let Elem::Ref(c) = elem {
                match c {
                    Some(c) => class_bytes(*c, &mut v),
                    None => v.extend_from_slice(&[0xFF, 0, 0]),
                }
            }
            if transient.is_none() {
                match data {
                    Data::Bytes(b) => v.extend_from_slice(b),
                    Data::Shorts(s) => s.iter().for_each(|x| v.extend_from_slice(&x.to_be_bytes())),
                    Data::Ints(s) => s.iter().for_each(|x| v.extend_from_slice(&x.to_be_bytes())),
                    Data::Refs(s) => s.iter().for_each(|x| v.extend_from_slice(&x.to_be_bytes())),
                }
            }
        }
    }
    v
}

/// The class a record names.
fn read_class(r: &mut R<'_>) -> Option<Option<ClassId>> {
    let t = r.u1()?;
    let x = r.u2()?;
    Some(match t {
        0 => Some(ClassId::Pkg(x)),
        1 if usize::from(x) < crate::api::CLASSES.len() => Some(ClassId::Api(x)),
        2 => Some(ClassId::Ext((x >> 8) as u8, x as u8)),
        _ => None,
    })
}

/// Reads a store record back; `None` for a damaged record.
pub fn decode(b: &[u8]) -> Option<Obj> {
    let mut r = R(b);
    match r.u1()? {
        1 => {
            let class = read_class(&mut r)??;
            let n = usize::from(r.u2()?);
            let cells = (0..n)
                .map(|_| r.u2().map(|x| x as i16))
                .collect::<Option<_>>()?;
            let reason = r.u2()? as i16;
            let native = match r.u1()? {
                0 => NativeState::None,
                1 => {
                    let limit = r.u1()?;
                    let max = r.u1()?;
                    let left = r.u1()?;
                    let n = usize::from(r.u1()?);
                    NativeState::Pin {
                        limit,
                        max,
                        left,
                        value: r.bytes(n)?,
                    }
                }
                2 => {
                    let n = usize::from(r.u1()?);
                    NativeState::Aid(r.bytes(n)?)
                }
                3 => NativeState::Key(crate::crypto::state::KeyState::decode(&mut r)?),
                4 => NativeState::Engine(crate::crypto::state::Engine::decode(&mut r)?),
                5 => NativeState::Pair {
                    alg: r.u1()?,
                    bits: r.u2()?,
                    public: r.u2()?,
                    private: r.u2()?,
                },
                6 => {
                    let mut part = || {
                        let n = usize::from(r.u1()?);
                        r.bytes(n)
                    };
                    let (owner, package, interfaces) = (part()?, part()?, part()?);
                    let handle = r.u2()?;
                    let mut foreign = Vec::new();
                    if let Some(n) = r.u1() {
                        for _ in 0..n {
                            let len = usize::from(r.u1()?);
                            foreign.push((r.bytes(len)?, r.u1()?));
                        }
                    }
                    NativeState::Proxy {
                        owner,
                        handle,
                        package,
                        interfaces,
                        foreign,
                    }
                }
                _ => return None,
            };
            Some(Obj::Instance {
                class,
                cells,
                reason,
                native,
            })
        }
        2 => {
            let code = r.u1()?;
            let t = r.u1()?;
            let transient = (t != 0).then_some(t);
            let n = usize::from(r.u2()?);
            let elem = match code {
                10 => Elem::Boolean,
                11 => Elem::Byte,
                12 => Elem::Short,
                13 => Elem::Int,
                14 => Elem::Ref(read_class(&mut r)?),
                _ => return None,
            };
            let stored = transient.is_none();
            let data = match elem {
                Elem::Boolean | Elem::Byte => {
                    Data::Bytes(if stored { r.bytes(n)? } else { vec![0; n] })
                }
                Elem::Short => Data::Shorts(if stored {
                    (0..n)
                        .map(|_| r.u2().map(|x| x as i16))
                        .collect::<Option<_>>()?
                } else {
                    vec![0; n]
                }),
                Elem::Int => Data::Ints(if stored {
                    (0..n)
                        .map(|_| Some((u32::from(r.u2()?) << 16 | u32::from(r.u2()?)) as i32))
                        .collect::<Option<_>>()?
                } else {
                    vec![0; n]
                }),
                Elem::Ref(_) => Data::Refs(if stored {
                    (0..n).map(|_| r.u2()).collect::<Option<_>>()?
                } else {
                    vec![0; n]
                }),
            };
            Some(Obj::Array {
                elem,
                data,
                transient,
            })
        }
        _ => None,
    }
}
