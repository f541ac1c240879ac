//! `kagi gp info`'s card data (IIN, CIN, CPLC decoded) and `kagi gp delete-key`.

use super::Failure;
use super::gp::{Session, done};
use card_wire::cplc::CplcField;
use kagi::channel::ApduChannel;
use kagi::gp::{self, manage};
use serde_json::json;

/// What a security domain tells about the card without authentication.
pub(super) struct CardData {
    /// Issuer identification number (`42`), hex.
    pub iin: Option<String>,
    /// Card image number (`45`), hex.
    pub cin: Option<String>,
    /// CPLC (`9F7F`): the 42 bytes as hex, and decoded.
    pub cplc: Option<(String, card_wire::cplc::Cplc)>,
}

/// Reads the IIN, CIN and CPLC of the selected security domain (dates relative to today).
pub(super) fn read(ch: &mut impl ApduChannel) -> Result<CardData, Failure> {
    Ok(CardData {
        iin: gp::issuer_identification_number(ch)?,
        cin: gp::card_image_number(ch)?,
        cplc: gp::cplc(ch, gp::today_utc())?,
    })
}

impl CardData {
    /// The JSON members `iin`, `cin`, `cplc` (hex) and `cplc_decoded`.
    pub(super) fn json(&self) -> [(&'static str, serde_json::Value); 4] {
        [
            ("iin", json!(self.iin)),
            ("cin", json!(self.cin)),
            ("cplc", json!(self.cplc.as_ref().map(|(raw, _)| raw))),
            (
                "cplc_decoded",
                json!(self.cplc.as_ref().map(|(_, c)| &c.fields)),
            ),
        ]
    }

    /// The text lines of `gp info`.
    pub(super) fn print(&self) {
        if let Some(i) = &self.iin {
            println!("IIN                 {i}");
        }
        if let Some(c) = &self.cin {
            println!("CIN                 {c}");
        }
        if let Some((raw, c)) = &self.cplc {
            println!("CPLC                {raw}");
            for f in &c.fields {
                println!("  {:<30} {}", field_label(f), field_value(f));
            }
        }
    }
}

fn field_label(f: &CplcField) -> String {
    f.name.replace('_', " ")
}

fn field_value(f: &CplcField) -> String {
    match (&f.date, f.name.ends_with("_date")) {
        (Some(d), _) => format!("{} ({d})", f.hex),
        (None, true) => format!("{} (no date)", f.hex),
        (None, false) => f.hex.clone(),
    }
}

/// `kagi gp delete-key --kvn N [--id N]`.
pub(super) fn delete_key(
    session: &Session,
    kvn: u8,
    id: Option<u8>,
    trace: bool,
    json_out: bool,
) -> Result<(), Failure> {
    session.run(trace, |sc, _, _| Ok(manage::delete_key(sc, kvn, id)?))?;
    let what = match id {
        Some(i) => format!("deleted key {i:02X} of key version {kvn:02X}"),
        None => format!("deleted key version {kvn:02X}"),
    };
    done(
        json_out,
        &what,
        json!({"deleted_key": {"kvn": format!("{kvn:02X}"), "id": id.map(|i| format!("{i:02X}"))}}),
    );
    Ok(())
}
