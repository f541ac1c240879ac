//! The linker: a parsed CAP becomes an executable package. Imports resolve against the
//! native API ([`crate::api`]) by AID and version, every constant pool entry resolves (internal
//! references by offset, external ones by package/class/method token), classes get their
//! superclass chain and instance layout. Anything kagi does not provide is refused here, at
//! LOAD, with a message naming it.

use crate::api::{self, CLASSES, PACKAGES};
use kagi_cap::{CapFile, ClassRef, CpEntry, Model, StaticRef};
use std::collections::HashMap;
use thiserror::Error;

/// A class: one of the package's (by offset in its Class component) or of the API (index into
/// [`api::CLASSES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClassId {
    /// A class or interface of the package.
    Pkg(u16),
    /// An API class or interface.
    Api(u16),
    /// A shareable interface of another package on the card: import index and class token.
    Ext(u8, u8),
}

/// An import that is not the API: another package on the card (the card checked at LOAD
/// that it is there).
const LOADED: usize = usize::MAX;

/// Why a package cannot be linked (LOAD refuses it).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// The CAP's components are malformed.
    #[error("the CAP file is malformed: {0}")]
    Cap(#[from] kagi_cap::CapError),
    /// An imported package the card lacks, or a newer version of it.
    #[error(
        "imported package {aid} version {version} is not on this card (it provides the Java Card 3.0.5 API): convert the applet against the 3.0.5 export files or remove the import"
    )]
    Import {
        /// Package AID (hex).
        aid: String,
        /// Imported version.
        version: String,
    },
    /// A class, method or field token the API does not define.
    #[error(
        "{0} is not part of the Java Card 3.0.5 API this card provides; convert the applet against the 3.0.5 export files"
    )]
    Token(String),
    /// An internal reference that points nowhere.
    #[error("the CAP file is inconsistent: {0}")]
    Inconsistent(String),
}

/// A resolved constant pool entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cp {
    /// A class.
    Class(ClassId),
    /// An instance field of a package class: its cell in the instance.
    Field(u16),
    /// An instance field of an API class (none is accessible to applets).
    ApiField(u16, u8),
    /// A virtual method.
    Virtual(ClassId, u8),
    /// A superclass method: the class named in the reference and the token.
    Super(ClassId, u8),
    /// A static field of the package: offset in the static image.
    Static(u16),
    /// A static field of the API: its constant value when it has one.
    ApiStatic(u16, u8, Option<i64>),
    /// A static method of the package (offset in the Method component).
    Code(u16),
    /// A static method or constructor of the API.
    Native(u16, u8),
}

/// A linked class of the package.
#[derive(Debug, Clone)]
pub struct Class {
    /// Index into the model's class list.
    pub index: usize,
    /// Superclass.
    pub super_class: Option<ClassId>,
    /// Cells of the package superclasses' fields (this class's field tokens start here).
    pub base: u16,
    /// Total cells of an instance.
    pub size: u16,
}

/// An executable package.
#[derive(Debug)]
pub struct Package {
    /// The parsed components.
    pub model: Model,
    /// Import index → API package index (`usize::MAX` for another package on the card).
    pub imports: Vec<usize>,
    /// Import index → package AID.
    pub import_aids: Vec<Vec<u8>>,
    /// The resolved constant pool.
    pub cp: Vec<Cp>,
    /// Package classes by offset.
    pub classes: HashMap<u16, Class>,
}

fn api_class(imports: &[usize], package: u8, class: u8) -> Result<u16, LinkError> {
    let p = *imports
        .get(usize::from(package))
        .ok_or_else(|| LinkError::Inconsistent(format!("import index {package}")))?;
    if p == LOADED {
        return Err(LinkError::Token(format!(
            "a class, method or field of imported package {package} (another package on the card): kagi links only its shareable interfaces"
        )));
    }
    api::class_by_token(p, class)
        .map(|i| i as u16)
        .ok_or_else(|| LinkError::Token(format!("class token {class} of {}", PACKAGES[p].name)))
}

impl Package {
    /// Links the package in `cap`.
    pub fn link(cap: &CapFile) -> Result<Self, LinkError> {
        let model = cap.model()?;
        let mut imports = Vec::new();
        for i in &model.imports {
            let p = match api::package_by_aid(&i.aid) {
                Some(p) if PACKAGES[p].major == i.major && PACKAGES[p].minor >= i.minor => p,
                // An API package in a version the card lacks.
                Some(_) => {
                    return Err(LinkError::Import {
                        aid: i.aid.iter().map(|b| format!("{b:02X}")).collect(),
                        version: i.version(),
                    });
                }
                // Another package: the card manager checked that it is loaded.
                None => LOADED,
            };
            imports.push(p);
        }
        let import_aids: Vec<Vec<u8>> = model.imports.iter().map(|i| i.aid.clone()).collect();
        let class_id = |r: ClassRef| -> Result<ClassId, LinkError> {
            match r {
                ClassRef::Internal(o) => {
                    if model.classes.class_at(o).is_none()
                        && model.classes.interface_at(o).is_none()
                    {
                        return Err(LinkError::Inconsistent(format!("class offset {o}")));
                    }
                    Ok(ClassId::Pkg(o))
                }
                ClassRef::External { package, class } => {
                    if imports.get(usize::from(package)) == Some(&LOADED) {
                        return Ok(ClassId::Ext(package, class));
                    }
                    Ok(ClassId::Api(api_class(&imports, package, class)?))
                }
            }
        };
        // Of another package only its interfaces are linked (as types and for interface
        // calls): a class extending, or a field or method of, one of its classes is refused.
        let not_shared = |what: &str| {
            LinkError::Token(format!(
                "{what} of another package on the card: kagi links only its shareable interfaces"
            ))
        };
        // Classes: superclass chain and instance layout (superclasses may come later in the
        // component, so sizes are computed by walking the chain).
        let mut classes = HashMap::new();
        for (index, c) in model.classes.classes.iter().enumerate() {
            let super_class = c.super_class.map(class_id).transpose()?;
            if let Some(ClassId::Ext(..)) = super_class {
                return Err(not_shared("a superclass"));
            }
            classes.insert(
                c.offset,
                Class {
                    index,
                    super_class,
                    base: 0,
                    size: 0,
                },
            );
        }
        let offsets: Vec<u16> = classes.keys().copied().collect();
        for o in offsets {
            let mut base = 0u32;
            let mut cur = classes[&o].super_class;
            let mut depth = 0;
            while let Some(ClassId::Pkg(s)) = cur {
                let sc = classes
                    .get(&s)
                    .ok_or_else(|| LinkError::Inconsistent(format!("superclass offset {s}")))?;
                base += u32::from(model.classes.classes[sc.index].declared_instance_size);
                cur = sc.super_class;
                depth += 1;
                if depth > 256 {
                    return Err(LinkError::Inconsistent("a cyclic class hierarchy".into()));
                }
            }
            let own = u32::from(model.classes.classes[classes[&o].index].declared_instance_size);
            let c = classes
                .get_mut(&o)
                .ok_or_else(|| LinkError::Inconsistent(format!("class offset {o}")))?;
            c.base =
                u16::try_from(base).map_err(|_| LinkError::Inconsistent("huge class".into()))?;
            c.size = u16::try_from(base + own)
                .map_err(|_| LinkError::Inconsistent("huge class".into()))?;
        }
        let image = usize::from(model.static_fields.image_size);
        let method_ok = |o: u16| -> Result<u16, LinkError> {
            model
                .methods
                .header(o)
                .map_err(|_| LinkError::Inconsistent(format!("method offset {o}")))?;
            Ok(o)
        };
        let mut cp = Vec::with_capacity(model.constant_pool.len());
        for e in &model.constant_pool {
            cp.push(match *e {
                CpEntry::Class(r) => Cp::Class(class_id(r)?),
                CpEntry::InstanceField(r, t) => match class_id(r)? {
                    ClassId::Pkg(o) => {
                        let c = classes.get(&o).ok_or_else(|| {
                            LinkError::Inconsistent(format!("field of interface {o}"))
                        })?;
                        Cp::Field(c.base + u16::from(t))
                    }
                    ClassId::Api(i) => Cp::ApiField(i, t),
                    ClassId::Ext(..) => return Err(not_shared("an instance field")),
                },
                CpEntry::VirtualMethod(r, t) => {
                    let id = class_id(r)?;
                    if let ClassId::Ext(..) = id {
                        return Err(not_shared("a virtual method"));
                    }
                    if let ClassId::Api(i) = id
                        && api::method(usize::from(i), false, t).is_none()
                    {
                        return Err(LinkError::Token(format!(
                            "virtual method token {t} of {}",
                            CLASSES[usize::from(i)].name
                        )));
                    }
                    Cp::Virtual(id, t)
                }
                CpEntry::SuperMethod(r, t) => match class_id(r)? {
                    ClassId::Ext(..) => return Err(not_shared("a superclass method")),
                    id => Cp::Super(id, t),
                },
                CpEntry::StaticField(StaticRef::Internal(o)) => {
                    if usize::from(o) >= image {
                        return Err(LinkError::Inconsistent(format!("static field offset {o}")));
                    }
                    Cp::Static(o)
                }
                CpEntry::StaticField(StaticRef::External {
                    package,
                    class,
                    token,
                }) => {
                    let c = api_class(&imports, package, class)?;
                    let f = CLASSES[usize::from(c)]
                        .fields
                        .iter()
                        .find(|f| f.token == token)
                        .ok_or_else(|| {
                            LinkError::Token(format!(
                                "static field token {token} of {}",
                                CLASSES[usize::from(c)].name
                            ))
                        })?;
                    Cp::ApiStatic(c, token, f.value)
                }
                CpEntry::StaticMethod(StaticRef::Internal(o)) => Cp::Code(method_ok(o)?),
                CpEntry::StaticMethod(StaticRef::External {
                    package,
                    class,
                    token,
                }) => {
                    let c = api_class(&imports, package, class)?;
                    if api::method(usize::from(c), true, token).is_none() {
                        return Err(LinkError::Token(format!(
                            "static method token {token} of {}",
                            CLASSES[usize::from(c)].name
                        )));
                    }
                    Cp::Native(c, token)
                }
            });
        }
        for c in &model.classes.classes {
            for &o in c.public_vtable.iter().chain(&c.package_vtable) {
                if o != 0xFFFF {
                    method_ok(o)?;
                }
            }
        }
        for a in &model.applets {
            method_ok(a.install_method_offset)?;
        }
        Ok(Package {
            model,
            imports,
            import_aids,
            cp,
            classes,
        })
    }

    /// Whether a class of the package implements the API interface `name`
    /// (`javacardx.apdu.ExtendedLength`, …).
    pub fn implements_api(&self, name: &str) -> bool {
        let Some(i) = api::class_by_name(name) else {
            return false;
        };
        self.classes
            .keys()
            .any(|o| self.is_instance(ClassId::Pkg(*o), ClassId::Api(i as u16)))
    }

    /// The AID of import `i`.
    pub fn import_aid(&self, i: u8) -> Option<&[u8]> {
        self.import_aids.get(usize::from(i)).map(Vec::as_slice)
    }

    /// The constant pool entry `i`.
    pub fn cp(&self, i: u16) -> Option<Cp> {
        self.cp.get(usize::from(i)).copied()
    }

    /// The superclass of `c`.
    pub fn super_of(&self, c: ClassId) -> Option<ClassId> {
        match c {
            ClassId::Pkg(o) => self.classes.get(&o).and_then(|c| c.super_class),
            ClassId::Api(i) => {
                let s = CLASSES.get(usize::from(i))?.supers.last()?;
                api::class_by_name(s).map(|x| ClassId::Api(x as u16))
            }
            ClassId::Ext(..) => None,
        }
    }

    /// Whether an object of class `sub` is an instance of `sup` (class or interface).
    pub fn is_instance(&self, sub: ClassId, sup: ClassId) -> bool {
        let mut cur = Some(sub);
        let mut depth = 0;
        while let Some(c) = cur {
            if c == sup {
                return true;
            }
            match c {
                ClassId::Api(i) => {
                    return match sup {
                        ClassId::Api(j) => api::is_subclass(usize::from(i), usize::from(j)),
                        ClassId::Pkg(_) | ClassId::Ext(..) => false,
                    };
                }
                // Another package's interface: its own super-interfaces are not linked here;
                // it is a Shareable (and an Object) by definition.
                ClassId::Ext(..) => {
                    return matches!(sup, ClassId::Api(j)
                        if matches!(CLASSES[usize::from(j)].name,
                            "javacard.framework.Shareable" | "java.lang.Object"));
                }
                ClassId::Pkg(o) => {
                    if let Some(info) = self
                        .classes
                        .get(&o)
                        .map(|c| &self.model.classes.classes[c.index])
                    {
                        for ii in &info.interfaces {
                            if let Ok(id) = self.class_ref(ii.interface)
                                && self.interface_extends(id, sup)
                            {
                                return true;
                            }
                        }
                    }
                }
            }
            cur = self.super_of(c);
            depth += 1;
            if depth > 256 {
                return false;
            }
        }
        false
    }

    /// Whether interface `i` is `sup` or extends it.
    pub fn interface_extends(&self, i: ClassId, sup: ClassId) -> bool {
        if i == sup {
            return true;
        }
        match i {
            ClassId::Api(a) => match sup {
                ClassId::Api(b) => api::is_subclass(usize::from(a), usize::from(b)),
                ClassId::Pkg(_) | ClassId::Ext(..) => false,
            },
            ClassId::Ext(..) => self.is_instance(i, sup),
            ClassId::Pkg(o) => self.model.classes.interface_at(o).is_some_and(|ii| {
                ii.supers
                    .iter()
                    .any(|s| self.class_ref(*s).is_ok_and(|s| s == sup))
            }),
        }
    }

    /// A class reference resolved (the linker checked them all).
    pub fn class_ref(&self, r: ClassRef) -> Result<ClassId, LinkError> {
        match r {
            ClassRef::Internal(o) => Ok(ClassId::Pkg(o)),
            ClassRef::External { package, class } => {
                if self.imports.get(usize::from(package)) == Some(&LOADED) {
                    return Ok(ClassId::Ext(package, class));
                }
                Ok(ClassId::Api(api_class(&self.imports, package, class)?))
            }
        }
    }

    /// A readable name of a class (package classes by their token from the Descriptor
    /// component, when present).
    pub fn class_name(&self, c: ClassId) -> String {
        match c {
            ClassId::Api(i) => CLASSES
                .get(usize::from(i))
                .map_or_else(|| format!("api class {i}"), |c| c.name.to_string()),
            ClassId::Ext(p, t) => format!(
                "class token {t} of package {}",
                self.import_aid(p).map(hex_upper).unwrap_or_default()
            ),
            ClassId::Pkg(o) => {
                let token = self.model.descriptor.as_ref().and_then(|d| {
                    d.classes
                        .iter()
                        .find(|c| c.this_class == ClassRef::Internal(o))
                        .map(|c| c.token)
                });
                let pkg = self
                    .model
                    .header
                    .package_name
                    .clone()
                    .unwrap_or_else(|| "package".into());
                match token {
                    Some(t) => format!("{pkg} class token {t}"),
                    None => format!("{pkg} class at offset {o}"),
                }
            }
        }
    }

    /// The package class and method (by Descriptor) containing the Method offset `pc`.
    pub fn method_at(&self, pc: usize) -> String {
        let Some(d) = &self.model.descriptor else {
            return format!("method at offset {pc}");
        };
        let mut best: Option<(u16, u8, u8, bool)> = None;
        for c in &d.classes {
            for m in &c.methods {
                if m.offset != 0
                    && usize::from(m.offset) <= pc
                    && best.is_none_or(|b| b.0 < m.offset)
                {
                    best = Some((m.offset, c.token, m.token, m.access & 0x08 != 0));
                }
            }
        }
        match best {
            Some((o, c, t, st)) => format!(
                "class token {c}, {} method token {t} (offset {o})",
                if st { "static" } else { "virtual" }
            ),
            None => format!("method at offset {pc}"),
        }
    }
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}
