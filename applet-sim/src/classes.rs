//! The applet classes this simulator provides. A Rust simulator cannot run CAP bytecode, so a
//! load file names classes from this list (see `registry::LoadFile`); INSTALL instantiates
//! them.

use crate::applet::{Aid, Applet};
use crate::echo::EchoApplet;
use crate::security_domain::SecurityDomain;

/// The issuer security domain.
pub const ISD: &str = "gp.isd";
/// A supplementary security domain.
pub const SD: &str = "gp.sd";
/// The echo test applet.
pub const ECHO: &str = "kagi.echo";
/// The JPKI-style user-authentication applet.
pub const JPKI: &str = "jpki.ap";
/// The text AP (card-face facts behind their own PIN).
pub const TEXT: &str = "jpki.text";

/// The ID wallet applet (member id, tickets, points).
pub const WALLET: &str = card_wire::wallet::WALLET_CLASS;

/// Every class name a load file may name.
pub const KNOWN: &[&str] = &[ISD, SD, ECHO, JPKI, TEXT, WALLET];

/// Whether a class exists.
pub fn known(class: &str) -> bool {
    KNOWN.contains(&class)
}

/// A fresh (transient) instance of `class` for the instance `aid`.
pub fn instantiate(class: &str, aid: &Aid) -> Option<Box<dyn Applet>> {
    match class {
        ISD => Some(Box::new(SecurityDomain::new(aid.clone(), true))),
        SD => Some(Box::new(SecurityDomain::new(aid.clone(), false))),
        ECHO => Some(Box::new(EchoApplet)),
        JPKI => Some(Box::new(crate::jpki::FileApplet::new(&crate::jpki::JPKI))),
        TEXT => Some(Box::new(crate::jpki::FileApplet::new(&crate::jpki::TEXT))),
        WALLET => Some(Box::new(crate::wallet::WalletApplet::default())),
        _ => None,
    }
}
