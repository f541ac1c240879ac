//! `kagi gp info`'s card data (IIN, CIN, CPLC decoded) and `kagi gp delete-key`.

use super::Failure;
use super::{Session, done};
use card_wire::cplc::CplcField;
use kagi::channel::ApduChannel;
use kagi::gp::{self, manage};
use kagi::keys;
use serde_json::json;
use std::path::Path;

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

/// `kagi gp delete-key KVN [--id N]`.
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

/// `kagi gp put-key --new-key-file F`: a whole key set.
pub(super) fn put_key(
    session: &Session,
    new_key_file: &Path,
    replace: Option<u8>,
    trace: bool,
    json_out: bool,
) -> Result<(), Failure> {
    // 00 is no key version: a file without `KVN=` is refused instead of silently
    // becoming some default set.
    let new = keys::read_key_file(new_key_file, 0x00)?;
    if new.kvn == 0 || new.kvn > 0x7F {
        return Err(format!(
            "{} names no usable key version: add a line KVN=hh (01..7F, e.g. KVN=31) \
             for the set PUT KEY writes",
            new_key_file.display()
        )
        .into());
    }
    let kcvs = session.run(trace, |sc, _, _| Ok(sc.put_key_set(&new, replace)?))?;
    // The answer is the KVN, then one 3-byte key check value per key (ENC, MAC, DEK).
    let kcvs: Vec<String> = kcvs
        .get(1..)
        .unwrap_or_default()
        .chunks(3)
        .map(hex::encode_upper)
        .collect();
    done(
        json_out,
        &format!(
            "key set {:02X} written; key check values ENC {} MAC {} DEK {}",
            new.kvn,
            kcvs.first().map_or("-", String::as_str),
            kcvs.get(1).map_or("-", String::as_str),
            kcvs.get(2).map_or("-", String::as_str)
        ),
        json!({"kvn": format!("{:02X}", new.kvn), "replaced": replace.map(|r| format!("{r:02X}")), "kcv": kcvs}),
    );
    Ok(())
}

/// `kagi gp put-key --dap-public-key F --new-kvn N`: a DAP verification key (key 01).
pub(super) fn put_dap_key(
    session: &Session,
    source: &str,
    kvn: u8,
    replace: Option<u8>,
    trace: bool,
    json_out: bool,
) -> Result<(), Failure> {
    use kagi::dap::DapSigner;
    if kvn == 0 || kvn > 0x7F {
        return Err(format!("--new-kvn {kvn:02X}: use a key version 01..7F").into());
    }
    let key = match source.strip_prefix("pkcs11:") {
        Some(uri) => super::dap::pkcs11(uri, Default::default())?.public_key()?,
        None => {
            let pem = std::fs::read_to_string(source).map_err(|e| format!("{source}: {e}"))?;
            kagi::dap::public_key_from_pem(&pem)?
        }
    };
    session.run(trace, |sc, _, _| {
        Ok(manage::put_dap_key(sc, kvn, replace, &key)?)
    })?;
    let kind = match &key {
        kagi::dap::DapPublicKey::Rsa { n, .. } => format!("RSA-{}", n.len() * 8),
        kagi::dap::DapPublicKey::P256(_) => "P-256".to_string(),
    };
    done(
        json_out,
        &format!("DAP key {kind} written as key 01 of version {kvn:02X}"),
        json!({"kvn": format!("{kvn:02X}"), "replaced": replace.map(|r| format!("{r:02X}")), "kcv": []}),
    );
    Ok(())
}
