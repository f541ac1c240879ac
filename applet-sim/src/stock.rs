//! The applet classes kagi's simulator ships, each registered by its own module: the security
//! domains ([`crate::security_domain::register`]), the echo test applet
//! ([`crate::echo::register`]), the JPKI and text APs ([`crate::jpki::register`]) and the ID
//! wallet ([`crate::wallet::register`]). A card made without its own table uses these.

use crate::class_table::ClassTable;
use std::sync::{Arc, OnceLock};

/// The issuer security domain.
pub const ISD: &str = crate::registry::ISD_CLASS;
/// A supplementary security domain.
pub const SD: &str = crate::registry::SD_CLASS;
/// The echo test applet.
pub const ECHO: &str = crate::echo::ECHO_CLASS;
/// The JPKI-style user-authentication applet.
pub const JPKI: &str = crate::jpki::JPKI_CLASS;
/// The text AP (card-face facts behind their own PIN).
pub const TEXT: &str = crate::jpki::TEXT_CLASS;
/// The ID wallet applet (member id, tickets, points).
pub const WALLET: &str = card_wire::wallet::WALLET_CLASS;

/// A new table with every stock class; add your own with [`ClassTable::register`].
pub fn classes() -> ClassTable {
    let mut t = ClassTable::new();
    let r = crate::security_domain::register(&mut t)
        .and_then(|_| crate::echo::register(&mut t))
        .and_then(|_| crate::jpki::register(&mut t))
        .and_then(|_| crate::wallet::register(&mut t));
    // Distinct, well-formed names registered into an empty table.
    r.unwrap_or_else(|e| unreachable!("stock classes: {e}"));
    t
}

/// The stock table, built once and shared by every card that uses it.
pub fn shared() -> Arc<ClassTable> {
    static STOCK: OnceLock<Arc<ClassTable>> = OnceLock::new();
    STOCK.get_or_init(|| Arc::new(classes())).clone()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_stock_class_is_registered() {
        let t = super::classes();
        let names: Vec<&str> = t.names().collect();
        // The class names the README and existing card images use.
        assert_eq!(
            names,
            [
                "gp.isd",
                "gp.sd",
                "jpki.ap",
                "jpki.text",
                "kagi.echo",
                "kagi.wallet"
            ]
        );
        assert!(t.is_privileged("gp.isd") && t.is_privileged("gp.sd"));
        assert!(!t.is_privileged("kagi.echo") && !t.is_privileged("jpki.ap"));
    }
}
