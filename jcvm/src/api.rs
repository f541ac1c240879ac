//! The Java Card 3.0.5 classic API and the GlobalPlatform Card API 1.6 (`org.globalplatform`)
//! as the converter links them: packages (AID, version), classes (token, superclasses,
//! interfaces), method and field tokens. Generated at build time from
//! `data/api-tokens-3.0.5.json` (the 3.0.5u3 kit's export files) and
//! `data/gp-api-tokens-1.6.json` (GlobalPlatform's export file), never typed by hand.

/// An API package.
#[derive(Debug)]
pub struct ApiPackage {
    /// Dotted name (`javacard.framework`).
    pub name: &'static str,
    /// Package AID.
    pub aid: &'static [u8],
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
    /// Index of its first class in [`CLASSES`].
    pub first_class: usize,
    /// Number of its classes.
    pub class_count: usize,
}

/// An API class or interface.
#[derive(Debug)]
pub struct ApiClass {
    /// Index of its package in [`PACKAGES`].
    pub package: usize,
    /// Fully qualified dotted name.
    pub name: &'static str,
    /// Class token.
    pub token: u8,
    /// Whether it is an interface.
    pub is_interface: bool,
    /// Superclasses, `java.lang.Object` first.
    pub supers: &'static [&'static str],
    /// Interfaces it implements.
    pub interfaces: &'static [&'static str],
    /// Methods (constructors count as static).
    pub methods: &'static [ApiMethod],
    /// Fields.
    pub fields: &'static [ApiField],
}

/// An API method.
#[derive(Debug)]
pub struct ApiMethod {
    /// Name (`<init>` for constructors).
    pub name: &'static str,
    /// JVM descriptor.
    pub descriptor: &'static str,
    /// Static or virtual method token.
    pub token: u8,
    /// Static methods and constructors (the static token space).
    pub is_static: bool,
    /// Operand-stack words of the parameters (an `int` takes two; `this` not counted).
    pub words: u8,
}

/// An API field.
#[derive(Debug)]
pub struct ApiField {
    /// Name.
    pub name: &'static str,
    /// Token.
    pub token: u8,
    /// The constant value of a `static final` primitive.
    pub value: Option<i64>,
}

include!(concat!(env!("OUT_DIR"), "/api_table.rs"));

/// The API package with this AID.
pub fn package_by_aid(aid: &[u8]) -> Option<usize> {
    PACKAGES.iter().position(|p| p.aid == aid)
}

/// The class of package `package` (index into [`PACKAGES`]) with token `token`, as an index
/// into [`CLASSES`].
pub fn class_by_token(package: usize, token: u8) -> Option<usize> {
    let p = PACKAGES.get(package)?;
    (p.first_class..p.first_class + p.class_count).find(|&i| CLASSES[i].token == token)
}

/// The class named `name`, as an index into [`CLASSES`].
pub fn class_by_name(name: &str) -> Option<usize> {
    CLASSES.iter().position(|c| c.name == name)
}

/// A method of class `class` by token space and token.
pub fn method(class: usize, is_static: bool, token: u8) -> Option<&'static ApiMethod> {
    CLASSES
        .get(class)?
        .methods
        .iter()
        .find(|m| m.is_static == is_static && m.token == token)
}

/// Whether API class `sub` is `sup` or inherits from or implements it.
pub fn is_subclass(sub: usize, sup: usize) -> bool {
    let (Some(a), Some(b)) = (CLASSES.get(sub), CLASSES.get(sup)) else {
        return false;
    };
    if sub == sup || b.name == "java.lang.Object" {
        return true;
    }
    a.supers.contains(&b.name)
        || a.interfaces.contains(&b.name)
        || a.supers
            .iter()
            .chain(a.interfaces.iter())
            .any(|s| class_by_name(s).is_some_and(|i| CLASSES[i].interfaces.contains(&b.name)))
}

/// The full name of a method, for errors: `javacard.framework.Util.arrayCopy([BS[BSS)S`.
pub fn method_name(class: usize, m: &ApiMethod) -> String {
    format!("{}.{}{}", CLASSES[class].name, m.name, m.descriptor)
}

/// The virtual method token of `class.name descriptor` (from the generated table).
pub fn virtual_token(class: &str, name: &str, descriptor: &str) -> Option<u8> {
    CLASSES
        .get(class_by_name(class)?)?
        .methods
        .iter()
        .find(|m| !m.is_static && m.name == name && m.descriptor == descriptor)
        .map(|m| m.token)
}
