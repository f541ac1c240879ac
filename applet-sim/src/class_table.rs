//! The applet classes a card can run: a table from class name to constructor, given to the
//! [`Runtime`](crate::Runtime). A Rust simulator cannot run CAP bytecode, so a load file names
//! classes from this table (see [`registry::LoadFile`](crate::registry::LoadFile)); LOAD
//! accepts a load file only when the table knows each class it names, INSTALL [for install]
//! runs the class's constructor with the instance AID and install parameters, and a card
//! image naming a class the table lacks is refused with [`ClassError::Unregistered`].
//!
//! The stock applets register themselves from their own modules (`echo::register`,
//! `security_domain::register`, …); [`crate::stock::classes`] collects them. An applet from
//! another crate is added with [`ClassTable::register`]:
//!
//! ```
//! use applet_sim::{Applet, AppletContext, ClassTable};
//! use card_wire::{Command, Response, StatusWord};
//!
//! struct Hello;
//! impl Applet for Hello {
//!     fn select(&mut self, _: &mut AppletContext<'_>) -> Result<Vec<u8>, StatusWord> {
//!         Ok(b"hello".to_vec())
//!     }
//!     fn process(&mut self, _: &Command, _: &mut AppletContext<'_>) -> Result<Response, StatusWord> {
//!         Err(StatusWord::INS_NOT_SUPPORTED)
//!     }
//! }
//! let mut table = applet_sim::stock::classes();
//! table.register("acme.hello", |_install| Ok(Box::new(Hello))).unwrap();
//! assert!(table.knows("acme.hello"));
//! ```

use crate::applet::{Aid, Applet, ClassCatalog};
pub use crate::class_error::ClassError;
use card_wire::sw::StatusWord;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a constructor gets: the instance being installed.
#[derive(Debug, Clone, Copy)]
pub struct Install<'a> {
    /// The class name the instance is made of.
    pub class: &'a str,
    /// The instance AID.
    pub aid: &'a Aid,
    /// The application-specific install parameters (INSTALL [for install] tag `C9`'s
    /// surroundings, as the card received them).
    pub params: &'a [u8],
}

/// Makes a fresh (transient) applet instance, or refuses the install parameters with the
/// status word INSTALL answers (like a Java Card `install` method throwing `ISOException`).
pub type Constructor =
    dyn Fn(&Install<'_>) -> Result<Box<dyn Applet>, StatusWord> + Send + Sync + 'static;

struct Class {
    make: Box<Constructor>,
    privileged: bool,
}

/// The applet classes a runtime can instantiate, by name.
#[derive(Default)]
pub struct ClassTable {
    classes: BTreeMap<String, Class>,
}

impl core::fmt::Debug for ClassTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_set().entries(self.classes.keys()).finish()
    }
}

fn check_name(name: &str) -> Result<(), ClassError> {
    let ok = !name.is_empty()
        && name.len() <= 127
        && name.bytes().all(|b| b.is_ascii_graphic())
        && name != crate::registry::CAP_CLASS;
    if ok {
        Ok(())
    } else {
        Err(ClassError::BadName(name.to_string()))
    }
}

impl ClassTable {
    /// An empty table (a card made with it has no security domain: start from
    /// [`crate::stock::classes`] instead unless that is what you want).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an application class. Its instances reach persistent memory only through
    /// the store scoped to their own AID ([`crate::AppletStore`]).
    pub fn register<F>(&mut self, name: &str, make: F) -> Result<(), ClassError>
    where
        F: Fn(&Install<'_>) -> Result<Box<dyn Applet>, StatusWord> + Send + Sync + 'static,
    {
        self.insert(name, Box::new(make), false)
    }

    /// Registers a class whose instances see the whole card's memory (security domains).
    pub(crate) fn register_privileged<F>(&mut self, name: &str, make: F) -> Result<(), ClassError>
    where
        F: Fn(&Install<'_>) -> Result<Box<dyn Applet>, StatusWord> + Send + Sync + 'static,
    {
        self.insert(name, Box::new(make), true)
    }

    fn insert(
        &mut self,
        name: &str,
        make: Box<Constructor>,
        privileged: bool,
    ) -> Result<(), ClassError> {
        check_name(name)?;
        if self.classes.contains_key(name) {
            return Err(ClassError::Duplicate(name.to_string()));
        }
        self.classes
            .insert(name.to_string(), Class { make, privileged });
        Ok(())
    }

    /// Whether `class` is registered.
    pub fn knows(&self, class: &str) -> bool {
        self.classes.contains_key(class)
    }

    /// The registered class names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.classes.keys().map(String::as_str)
    }

    /// Whether instances of `class` see the whole card's memory.
    pub fn is_privileged(&self, class: &str) -> bool {
        self.classes.get(class).is_some_and(|c| c.privileged)
    }

    /// A fresh instance of `class` for the instance `aid` with install parameters `params`:
    /// `None` when the class is not registered, `Some(Err)` when its constructor refuses.
    pub fn instantiate(
        &self,
        class: &str,
        aid: &Aid,
        params: &[u8],
    ) -> Option<Result<Box<dyn Applet>, StatusWord>> {
        let c = self.classes.get(class)?;
        Some((c.make)(&Install { class, aid, params }))
    }

    /// Shares the table between cards (the runtime holds it behind an [`Arc`]).
    pub fn shared(self) -> Arc<ClassTable> {
        Arc::new(self)
    }
}

impl ClassCatalog for ClassTable {
    fn knows(&self, class: &str) -> bool {
        ClassTable::knows(self, class)
    }

    fn check_install(&self, class: &str, aid: &Aid, params: &[u8]) -> Option<StatusWord> {
        match self.instantiate(class, aid, params) {
            None => Some(crate::registry::SW_CLASS_UNAVAILABLE),
            Some(Err(sw)) => Some(sw),
            Some(Ok(_)) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::applet::AppletContext;
    use card_wire::apdu::{Command, Response};

    struct Nop;
    impl Applet for Nop {
        fn select(&mut self, _: &mut AppletContext<'_>) -> Result<Vec<u8>, StatusWord> {
            Ok(Vec::new())
        }
        fn process(
            &mut self,
            _: &Command,
            _: &mut AppletContext<'_>,
        ) -> Result<Response, StatusWord> {
            Err(StatusWord::INS_NOT_SUPPORTED)
        }
    }

    #[test]
    fn names_are_checked_and_unique() {
        let mut t = ClassTable::new();
        t.register("acme.nop", |_| Ok(Box::new(Nop))).unwrap();
        assert_eq!(
            t.register("acme.nop", |_| Ok(Box::new(Nop))),
            Err(ClassError::Duplicate("acme.nop".into()))
        );
        let long = "x".repeat(128);
        for bad in ["", "acme nop", "jc.cap", "acme.\u{e9}", long.as_str()] {
            assert_eq!(
                t.register(bad, |_| Ok(Box::new(Nop))),
                Err(ClassError::BadName(bad.into())),
                "{bad:?}"
            );
        }
        assert!(t.register(&"x".repeat(127), |_| Ok(Box::new(Nop))).is_ok());
        assert!(t.knows("acme.nop") && !t.knows("acme.other"));
        assert!(!t.is_privileged("acme.nop"));
    }

    #[test]
    fn instantiate_and_catalog() {
        let mut t = ClassTable::new();
        t.register("acme.picky", |i| {
            if i.params.is_empty() {
                Ok(Box::new(Nop))
            } else {
                Err(StatusWord::INCORRECT_DATA)
            }
        })
        .unwrap();
        let aid = Aid::new(&[0xF0, 1, 2, 3, 4]).unwrap();
        assert!(t.instantiate("acme.none", &aid, &[]).is_none());
        assert!(matches!(
            t.instantiate("acme.picky", &aid, &[]),
            Some(Ok(_))
        ));
        let cat: &dyn ClassCatalog = &t;
        assert_eq!(cat.check_install("acme.picky", &aid, &[]), None);
        assert_eq!(
            cat.check_install("acme.picky", &aid, &[1]),
            Some(StatusWord::INCORRECT_DATA)
        );
        // A class the card lacks: 6A81, as for a CAP applet the simulator cannot run.
        assert_eq!(
            cat.check_install("acme.none", &aid, &[]),
            Some(StatusWord(0x6A81))
        );
    }
}
