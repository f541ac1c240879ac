//! The full contents of a CAP file's components (JCVM 3.0.5 specification chapter 6): what a
//! virtual machine needs to link and run the package. [`CapFile::model`](crate::CapFile::model)
//! parses every component present; every malformed input is a [`CapError`], never a panic.

use crate::component::{AppletRef, Component, PackageRef, Reader};
use crate::{CapError, CapFile};

/// A class reference (`class_ref`): a class of this package by its offset into the Class
/// component's info, or a class of an imported package by tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClassRef {
    /// Offset of the `interface_info`/`class_info` in the Class component.
    Internal(u16),
    /// Imported package (index into the Import component) and class token.
    External {
        /// Index of the package in the Import component.
        package: u8,
        /// The class token in that package.
        class: u8,
    },
}

impl ClassRef {
    fn parse(r: &mut Reader<'_>) -> Result<Self, CapError> {
        let hi = r.u1()?;
        let lo = r.u1()?;
        Ok(if hi & 0x80 != 0 {
            ClassRef::External {
                package: hi & 0x7F,
                class: lo,
            }
        } else {
            ClassRef::Internal(u16::from_be_bytes([hi, lo]))
        })
    }

    /// The `class_ref` of `java.lang.Object`'s missing superclass: `FFFF`.
    fn parse_opt(r: &mut Reader<'_>) -> Result<Option<Self>, CapError> {
        let hi = r.u1()?;
        let lo = r.u1()?;
        if hi == 0xFF && lo == 0xFF {
            return Ok(None);
        }
        Ok(Some(if hi & 0x80 != 0 {
            ClassRef::External {
                package: hi & 0x7F,
                class: lo,
            }
        } else {
            ClassRef::Internal(u16::from_be_bytes([hi, lo]))
        }))
    }
}

/// A static field or method reference: internal by offset (into the static field image or
/// the Method component), external by tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StaticRef {
    /// Offset in this package.
    Internal(u16),
    /// Imported package index, class token, field or method token.
    External {
        /// Index of the package in the Import component.
        package: u8,
        /// Class token.
        class: u8,
        /// Field or method token.
        token: u8,
    },
}

/// One constant pool entry (JCVM §6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpEntry {
    /// `CONSTANT_Classref` (1).
    Class(ClassRef),
    /// `CONSTANT_InstanceFieldref` (2): the declaring class and the field token.
    InstanceField(ClassRef, u8),
    /// `CONSTANT_VirtualMethodref` (3): class and virtual method token (high bit: package
    /// visible).
    VirtualMethod(ClassRef, u8),
    /// `CONSTANT_SuperMethodref` (4).
    SuperMethod(ClassRef, u8),
    /// `CONSTANT_StaticFieldref` (5).
    StaticField(StaticRef),
    /// `CONSTANT_StaticMethodref` (6).
    StaticMethod(StaticRef),
}

/// The Directory component.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Directory {
    /// The size of each component, by tag order (Header first).
    pub component_sizes: Vec<u16>,
    /// Static field image size in bytes.
    pub image_size: u16,
    /// Number of initialised arrays in the static field image.
    pub array_init_count: u16,
    /// Their total size in bytes.
    pub array_init_size: u16,
    /// Imported packages.
    pub import_count: u8,
    /// Applets.
    pub applet_count: u8,
    /// Custom components (tag and AID).
    pub custom: Vec<(u8, u16, Vec<u8>)>,
}

/// An interface (`interface_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// Offset in the Class component's info.
    pub offset: u16,
    /// `ACC_SHAREABLE`.
    pub shareable: bool,
    /// Its superinterfaces.
    pub supers: Vec<ClassRef>,
}

/// An interface a class implements, with the map from interface method token to the
/// class's public virtual method token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImplementedInterface {
    /// The interface.
    pub interface: ClassRef,
    /// `index[i]`: the virtual method token implementing interface method `i`.
    pub index: Vec<u8>,
}

/// A class (`class_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassInfo {
    /// Offset in the Class component's info.
    pub offset: u16,
    /// Its flags nibble (`ACC_SHAREABLE` 4, `ACC_REMOTE` 2).
    pub flags: u8,
    /// The superclass (`None` only for `java.lang.Object`).
    pub super_class: Option<ClassRef>,
    /// Instance fields it declares, in 16-bit cells.
    pub declared_instance_size: u8,
    /// First reference field token (`FF`: none).
    pub first_reference_token: u8,
    /// Number of reference fields.
    pub reference_count: u8,
    /// First public virtual method token it defines.
    pub public_method_table_base: u8,
    /// Method offsets (into the Method component; `FFFF` none) of public tokens from the base.
    pub public_vtable: Vec<u16>,
    /// First package-visible token it defines.
    pub package_method_table_base: u8,
    /// Method offsets of package-visible tokens from the base.
    pub package_vtable: Vec<u16>,
    /// Interfaces it implements.
    pub interfaces: Vec<ImplementedInterface>,
}

/// The Class component.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClassComponent {
    /// Interfaces, in order.
    pub interfaces: Vec<InterfaceInfo>,
    /// Classes, in order.
    pub classes: Vec<ClassInfo>,
}

impl ClassComponent {
    /// The class at `offset`.
    pub fn class_at(&self, offset: u16) -> Option<&ClassInfo> {
        self.classes.iter().find(|c| c.offset == offset)
    }

    /// The interface at `offset`.
    pub fn interface_at(&self, offset: u16) -> Option<&InterfaceInfo> {
        self.interfaces.iter().find(|c| c.offset == offset)
    }
}

/// An exception handler (`exception_handler_info`); offsets into the Method component's info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handler {
    /// First covered bytecode.
    pub start: u16,
    /// Covered length.
    pub active_length: u16,
    /// Whether this ends a group of handlers of one try block nest.
    pub stop: bool,
    /// Handler code.
    pub handler: u16,
    /// Constant pool index of the caught class (0: any, `finally`).
    pub catch_type: u16,
}

/// A method header (`method_header_info` or its extended form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodHeader {
    /// `ACC_ABSTRACT`.
    pub is_abstract: bool,
    /// Whether the header is the extended (4-byte) form.
    pub extended: bool,
    /// Operand stack words.
    pub max_stack: u8,
    /// Argument words, `this` included.
    pub nargs: u8,
    /// Local variable words beyond the arguments.
    pub max_locals: u8,
    /// Offset of the first bytecode in the Method component's info.
    pub code: u16,
}

/// The Method component: the handler table and the raw info (methods are found by offset).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MethodComponent {
    /// Exception handlers, innermost first.
    pub handlers: Vec<Handler>,
    /// The whole info item (methods are addressed by offsets into it).
    pub info: Vec<u8>,
}

impl MethodComponent {
    /// The header of the method at `offset`.
    pub fn header(&self, offset: u16) -> Result<MethodHeader, CapError> {
        let o = usize::from(offset);
        if o < 1 + 8 * self.handlers.len() || o >= self.info.len() {
            return Err(CapError::Truncated {
                component: Component::Method,
            });
        }
        let mut r = Reader::new(&self.info[o..], Component::Method);
        let b0 = r.u1()?;
        let flags = b0 >> 4;
        if flags & 0x8 != 0 {
            let max_stack = r.u1()?;
            let nargs = r.u1()?;
            let max_locals = r.u1()?;
            Ok(MethodHeader {
                is_abstract: flags & 0x4 != 0,
                extended: true,
                max_stack,
                nargs,
                max_locals,
                code: offset.saturating_add(4),
            })
        } else {
            let b1 = r.u1()?;
            Ok(MethodHeader {
                is_abstract: flags & 0x4 != 0,
                extended: false,
                max_stack: b0 & 0xF,
                nargs: b1 >> 4,
                max_locals: b1 & 0xF,
                code: offset.saturating_add(2),
            })
        }
    }
}

/// An initialised static array (`array_init_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayInit {
    /// Element type: 2 boolean, 3 byte, 4 short, 5 int.
    pub kind: u8,
    /// The initial values, big-endian elements.
    pub values: Vec<u8>,
}

/// The StaticField component.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StaticFieldComponent {
    /// Size of the static field image in bytes.
    pub image_size: u16,
    /// Reference fields (2 bytes each, at the start of the image).
    pub reference_count: u16,
    /// Initialised arrays (the first `array_inits.len()` reference fields).
    pub array_inits: Vec<ArrayInit>,
    /// Primitive fields initialised to zero.
    pub default_value_count: u16,
    /// The bytes of the primitive fields with non-default values (the image's tail).
    pub non_default_values: Vec<u8>,
}

impl StaticFieldComponent {
    /// The initial static field image (references null, arrays not yet created).
    pub fn image(&self) -> Vec<u8> {
        let mut img = vec![0u8; usize::from(self.image_size)];
        let n = self.non_default_values.len().min(img.len());
        let start = img.len() - n;
        img[start..].copy_from_slice(&self.non_default_values[..n]);
        img
    }
}

/// The ReferenceLocation component: offsets (into the Method info) of bytecode operands that
/// are constant pool indices.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RefLocation {
    /// Offsets of 1-byte indices.
    pub byte_indices: Vec<u16>,
    /// Offsets of 2-byte indices.
    pub byte2_indices: Vec<u16>,
}

/// One exported class (`class_export_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassExport {
    /// Offset in the Class component.
    pub class_offset: u16,
    /// Static field offsets by token.
    pub static_fields: Vec<u16>,
    /// Static method offsets by token.
    pub static_methods: Vec<u16>,
}

/// A method in the Descriptor component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodDescriptor {
    /// Its token.
    pub token: u8,
    /// Access flags (`ACC_STATIC` 0x08, `ACC_ABSTRACT` 0x40, `ACC_INIT` 0x80, …).
    pub access: u8,
    /// Offset in the Method component (0 for abstract methods).
    pub offset: u16,
    /// Offset of its signature in the type descriptor table.
    pub type_offset: u16,
    /// Bytecode bytes.
    pub bytecode_count: u16,
    /// Handlers covering it.
    pub handler_count: u16,
    /// Index of its first handler.
    pub handler_index: u16,
}

/// A field in the Descriptor component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescriptor {
    /// Its token.
    pub token: u8,
    /// Access flags.
    pub access: u8,
    /// The raw 3-byte field reference.
    pub field_ref: [u8; 3],
    /// Type: primitive (`0x8002` boolean … ) or an offset into the type table.
    pub type_: u16,
}

/// A class in the Descriptor component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassDescriptor {
    /// Class token.
    pub token: u8,
    /// Access flags.
    pub access: u8,
    /// The class.
    pub this_class: ClassRef,
    /// Interfaces.
    pub interfaces: Vec<ClassRef>,
    /// Fields.
    pub fields: Vec<FieldDescriptor>,
    /// Methods.
    pub methods: Vec<MethodDescriptor>,
}

/// The Descriptor component (optional).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// Classes and interfaces.
    pub classes: Vec<ClassDescriptor>,
    /// The type of each constant pool entry (offset into the type table, `FFFF` none).
    pub cp_types: Vec<u16>,
    /// The type descriptors, as nibble strings, with their offsets.
    pub types: Vec<(u16, Vec<u8>)>,
}

/// Every component of a CAP file, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// Package and CAP format.
    pub header: crate::Header,
    /// Directory.
    pub directory: Directory,
    /// Imported packages.
    pub imports: Vec<PackageRef>,
    /// Applets and their `install` method offsets.
    pub applets: Vec<AppletRef>,
    /// Constant pool.
    pub constant_pool: Vec<CpEntry>,
    /// Classes and interfaces.
    pub classes: ClassComponent,
    /// Methods.
    pub methods: MethodComponent,
    /// Static fields.
    pub static_fields: StaticFieldComponent,
    /// Reference locations.
    pub ref_location: RefLocation,
    /// Export (library packages).
    pub export: Vec<ClassExport>,
    /// Descriptor, when present.
    pub descriptor: Option<Descriptor>,
}

fn directory(info: &[u8], cap_minor: u8) -> Result<Directory, CapError> {
    let mut r = Reader::new(info, Component::Directory);
    let n = if cap_minor >= 2 { 12 } else { 11 };
    let component_sizes = (0..n).map(|_| r.u2()).collect::<Result<_, _>>()?;
    let image_size = r.u2()?;
    let array_init_count = r.u2()?;
    let array_init_size = r.u2()?;
    let import_count = r.u1()?;
    let applet_count = r.u1()?;
    let custom_count = r.u1()?;
    let custom = (0..custom_count)
        .map(|_| Ok((r.u1()?, r.u2()?, r.aid()?)))
        .collect::<Result<_, CapError>>()?;
    Ok(Directory {
        component_sizes,
        image_size,
        array_init_count,
        array_init_size,
        import_count,
        applet_count,
        custom,
    })
}

fn constant_pool(info: &[u8]) -> Result<Vec<CpEntry>, CapError> {
    let mut r = Reader::new(info, Component::ConstantPool);
    let count = r.u2()?;
    (0..count)
        .map(|_| {
            let tag = r.u1()?;
            let e = match tag {
                1 => {
                    let c = ClassRef::parse(&mut r)?;
                    r.u1()?;
                    CpEntry::Class(c)
                }
                2..=4 => {
                    let c = ClassRef::parse(&mut r)?;
                    let t = r.u1()?;
                    match tag {
                        2 => CpEntry::InstanceField(c, t),
                        3 => CpEntry::VirtualMethod(c, t),
                        _ => CpEntry::SuperMethod(c, t),
                    }
                }
                5 | 6 => {
                    let a = r.u1()?;
                    let b = r.u1()?;
                    let c = r.u1()?;
                    let s = if a & 0x80 != 0 {
                        StaticRef::External {
                            package: a & 0x7F,
                            class: b,
                            token: c,
                        }
                    } else {
                        StaticRef::Internal(u16::from_be_bytes([b, c]))
                    };
                    if tag == 5 {
                        CpEntry::StaticField(s)
                    } else {
                        CpEntry::StaticMethod(s)
                    }
                }
                _ => return Err(CapError::Malformed(Component::ConstantPool, "unknown tag")),
            };
            Ok(e)
        })
        .collect()
}

fn classes(info: &[u8], cap_minor: u8) -> Result<ClassComponent, CapError> {
    let total = info.len();
    let mut r = Reader::new(info, Component::Class);
    if cap_minor >= 2 {
        // signature_pool (remote interfaces): skipped.
        let n = usize::from(r.u2()?);
        r.bytes(n)?;
    }
    let mut out = ClassComponent::default();
    while r.remaining() > 0 {
        let offset = u16::try_from(total - r.remaining())
            .map_err(|_| CapError::Malformed(Component::Class, "too large"))?;
        let bits = r.u1()?;
        let flags = bits >> 4;
        let count = bits & 0xF;
        if flags & 0x2 != 0 {
            return Err(CapError::Malformed(
                Component::Class,
                "remote (RMI) classes are not supported",
            ));
        }
        if flags & 0x8 != 0 {
            let supers = (0..count)
                .map(|_| ClassRef::parse(&mut r))
                .collect::<Result<_, _>>()?;
            out.interfaces.push(InterfaceInfo {
                offset,
                shareable: flags & 0x4 != 0,
                supers,
            });
            continue;
        }
        let super_class = ClassRef::parse_opt(&mut r)?;
        let declared_instance_size = r.u1()?;
        let first_reference_token = r.u1()?;
        let reference_count = r.u1()?;
        let public_method_table_base = r.u1()?;
        let public_count = r.u1()?;
        let package_method_table_base = r.u1()?;
        let package_count = r.u1()?;
        let public_vtable = (0..public_count)
            .map(|_| r.u2())
            .collect::<Result<_, _>>()?;
        let package_vtable = (0..package_count)
            .map(|_| r.u2())
            .collect::<Result<_, _>>()?;
        let interfaces = (0..count)
            .map(|_| {
                let interface = ClassRef::parse(&mut r)?;
                let n = usize::from(r.u1()?);
                Ok(ImplementedInterface {
                    interface,
                    index: r.bytes(n)?.to_vec(),
                })
            })
            .collect::<Result<_, CapError>>()?;
        out.classes.push(ClassInfo {
            offset,
            flags,
            super_class,
            declared_instance_size,
            first_reference_token,
            reference_count,
            public_method_table_base,
            public_vtable,
            package_method_table_base,
            package_vtable,
            interfaces,
        });
    }
    Ok(out)
}

fn methods(info: &[u8]) -> Result<MethodComponent, CapError> {
    let mut r = Reader::new(info, Component::Method);
    let n = r.u1()?;
    let handlers = (0..n)
        .map(|_| {
            let start = r.u2()?;
            let bits = r.u2()?;
            Ok(Handler {
                start,
                stop: bits & 0x8000 != 0,
                active_length: bits & 0x7FFF,
                handler: r.u2()?,
                catch_type: r.u2()?,
            })
        })
        .collect::<Result<_, CapError>>()?;
    Ok(MethodComponent {
        handlers,
        info: info.to_vec(),
    })
}

fn static_fields(info: &[u8]) -> Result<StaticFieldComponent, CapError> {
    let mut r = Reader::new(info, Component::StaticField);
    let image_size = r.u2()?;
    let reference_count = r.u2()?;
    let n = r.u2()?;
    let array_inits: Vec<ArrayInit> = (0..n)
        .map(|_| {
            let kind = r.u1()?;
            let count = usize::from(r.u2()?);
            if !(2..=5).contains(&kind) {
                return Err(CapError::Malformed(
                    Component::StaticField,
                    "array init of an unknown type",
                ));
            }
            Ok(ArrayInit {
                kind,
                values: r.bytes(count)?.to_vec(),
            })
        })
        .collect::<Result<_, CapError>>()?;
    let default_value_count = r.u2()?;
    let nd = usize::from(r.u2()?);
    let non_default_values = r.bytes(nd)?.to_vec();
    let need = 2 * usize::from(reference_count) + usize::from(default_value_count) + nd;
    if need != usize::from(image_size) || array_inits.len() > usize::from(reference_count) {
        return Err(CapError::Malformed(
            Component::StaticField,
            "the image size disagrees with its parts",
        ));
    }
    Ok(StaticFieldComponent {
        image_size,
        reference_count,
        array_inits,
        default_value_count,
        non_default_values,
    })
}

fn ref_location(info: &[u8]) -> Result<RefLocation, CapError> {
    let mut r = Reader::new(info, Component::RefLocation);
    let list = |r: &mut Reader<'_>| -> Result<Vec<u16>, CapError> {
        let n = usize::from(r.u2()?);
        let mut at = 0u32;
        let mut out = Vec::new();
        for &d in r.bytes(n)? {
            at += u32::from(d);
            if d != 0xFF {
                out.push(u16::try_from(at).map_err(|_| {
                    CapError::Malformed(Component::RefLocation, "offset beyond 64K")
                })?);
            }
        }
        Ok(out)
    };
    let byte_indices = list(&mut r)?;
    let byte2_indices = list(&mut r)?;
    Ok(RefLocation {
        byte_indices,
        byte2_indices,
    })
}

fn export(info: &[u8]) -> Result<Vec<ClassExport>, CapError> {
    let mut r = Reader::new(info, Component::Export);
    let n = r.u1()?;
    (0..n)
        .map(|_| {
            let class_offset = r.u2()?;
            let nf = r.u1()?;
            let nm = r.u1()?;
            let static_fields = (0..nf).map(|_| r.u2()).collect::<Result<_, _>>()?;
            let static_methods = (0..nm).map(|_| r.u2()).collect::<Result<_, _>>()?;
            Ok(ClassExport {
                class_offset,
                static_fields,
                static_methods,
            })
        })
        .collect()
}

fn descriptor(info: &[u8]) -> Result<Descriptor, CapError> {
    let total = info.len();
    let mut r = Reader::new(info, Component::Descriptor);
    let n = r.u1()?;
    let mut classes = Vec::new();
    for _ in 0..n {
        let token = r.u1()?;
        let access = r.u1()?;
        let this_class = ClassRef::parse(&mut r)?;
        let ni = r.u1()?;
        let nf = r.u2()?;
        let nm = r.u2()?;
        let interfaces = (0..ni)
            .map(|_| ClassRef::parse(&mut r))
            .collect::<Result<_, _>>()?;
        let fields = (0..nf)
            .map(|_| {
                let token = r.u1()?;
                let access = r.u1()?;
                let f = r.bytes(3)?;
                Ok(FieldDescriptor {
                    token,
                    access,
                    field_ref: [f[0], f[1], f[2]],
                    type_: r.u2()?,
                })
            })
            .collect::<Result<_, CapError>>()?;
        let methods = (0..nm)
            .map(|_| {
                Ok(MethodDescriptor {
                    token: r.u1()?,
                    access: r.u1()?,
                    offset: r.u2()?,
                    type_offset: r.u2()?,
                    bytecode_count: r.u2()?,
                    handler_count: r.u2()?,
                    handler_index: r.u2()?,
                })
            })
            .collect::<Result<_, CapError>>()?;
        classes.push(ClassDescriptor {
            token,
            access,
            this_class,
            interfaces,
            fields,
            methods,
        });
    }
    let types_start = total - r.remaining();
    let ncp = r.u2()?;
    let cp_types = (0..ncp).map(|_| r.u2()).collect::<Result<_, _>>()?;
    let mut types = Vec::new();
    while r.remaining() > 0 {
        let off = u16::try_from(total - r.remaining() - types_start)
            .map_err(|_| CapError::Malformed(Component::Descriptor, "too large"))?;
        let nibbles = r.u1()?;
        let bytes = r.bytes(usize::from(nibbles).div_ceil(2))?;
        let v = (0..usize::from(nibbles))
            .map(|i| {
                let b = bytes[i / 2];
                if i % 2 == 0 { b >> 4 } else { b & 0xF }
            })
            .collect();
        types.push((off, v));
    }
    Ok(Descriptor {
        classes,
        cp_types,
        types,
    })
}

impl CapFile {
    /// Every component parsed: what a virtual machine links and runs.
    pub fn model(&self) -> Result<Model, CapError> {
        let info = |c: Component| self.component(c).map(|b| &b[3..]);
        let req = |c: Component| info(c).ok_or(CapError::Missing(c));
        let minor = self.header().cap_minor;
        let directory = directory(req(Component::Directory)?, minor)?;
        let constant_pool = constant_pool(req(Component::ConstantPool)?)?;
        let classes = classes(req(Component::Class)?, minor)?;
        let methods = methods(req(Component::Method)?)?;
        let static_fields = static_fields(req(Component::StaticField)?)?;
        let ref_location = ref_location(req(Component::RefLocation)?)?;
        let export = match info(Component::Export) {
            Some(i) => export(i)?,
            None => Vec::new(),
        };
        let descriptor = info(Component::Descriptor).map(descriptor).transpose()?;
        if directory.import_count as usize != self.imports().len()
            || directory.applet_count as usize != self.applets().len()
        {
            return Err(CapError::Malformed(
                Component::Directory,
                "import or applet count disagrees with the components",
            ));
        }
        Ok(Model {
            header: self.header().clone(),
            directory,
            imports: self.imports().to_vec(),
            applets: self.applets().to_vec(),
            constant_pool,
            classes,
            methods,
            static_fields,
            ref_location,
            export,
            descriptor,
        })
    }
}
