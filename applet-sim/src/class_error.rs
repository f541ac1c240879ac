//! Errors about applet classes: registering one, or a card naming one its table lacks.

use card_wire::aid::Aid;
use card_wire::sw::StatusWord;

/// Why a class could not be registered, or a card names a class that is not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassError {
    /// The name is taken.
    #[error(
        "applet class '{0}' is already registered: choose another name (e.g. prefixed with your organisation)"
    )]
    Duplicate(String),
    /// Not a usable class name.
    #[error(
        "'{0}' is not a usable applet class name: use 1 to 127 printable ASCII characters without spaces, not 'jc.cap'"
    )]
    BadName(String),
    /// A card (image) has an instance or load file of a class the table lacks.
    #[error(
        "the card names applet class '{class}' ({what} {aid}), which is not registered: register it in the ClassTable given to the runtime (ClassTable::register, then SimCard::with_classes / SimCard::from_image_with)"
    )]
    Unregistered {
        /// The class name.
        class: String,
        /// "instance" or "load file module".
        what: &'static str,
        /// The instance or module AID.
        aid: Aid,
    },
    /// The class's constructor refused an installed instance's parameters.
    #[error(
        "applet class '{class}' refuses the install parameters of instance {aid} ({sw}): the card image was made with another version of this class"
    )]
    Refused {
        /// The class name.
        class: String,
        /// The instance AID.
        aid: Aid,
        /// What the constructor answered.
        sw: StatusWord,
    },
}
