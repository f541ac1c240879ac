//! Where static keys come from on the host. Keys are never accepted on the command line: they
//! come from a key file, from environment variables, or (for development cards and the
//! simulator only, with a warning) the published GP test keys.
//!
//! Key file format (one `NAME=HEX` per line, `#` comments):
//!
//! ```text
//! # either one key used as ENC, MAC and DEK
//! KEY=404142434445464748494A4B4C4D4E4F
//! # or three keys
//! ENC=...
//! MAC=...
//! DEK=...
//! # optional key version
//! KVN=30
//! ```
//!
//! Environment: `KAGI_KEY`, or `KAGI_KEY_ENC`, `KAGI_KEY_MAC`, `KAGI_KEY_DEK`.

use crate::error::{Error, Result};
use card_wire::scp03::crypto::AesKey;
use card_wire::scp03::keys::StaticKeys;
use std::collections::BTreeMap;
use std::path::Path;
use zeroize::Zeroizing;

/// Where a key set came from (printed, never the keys themselves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A key file.
    File(String),
    /// Environment variables.
    Environment,
    /// The published GP test keys `40..4F`.
    TestKeys,
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "key file {p}"),
            KeySource::Environment => write!(f, "environment (KAGI_KEY*)"),
            KeySource::TestKeys => write!(f, "GP default test keys 40..4F"),
        }
    }
}

fn from_map(
    map: &BTreeMap<String, Zeroizing<String>>,
    default_kvn: u8,
) -> Result<Option<StaticKeys>> {
    let key = |name: &str| -> Result<Option<AesKey>> {
        map.get(name)
            .map(|v| AesKey::from_hex(v).map_err(|e| Error::Keys(format!("{name}: {e}"))))
            .transpose()
    };
    let kvn = match map.get("KVN") {
        Some(v) => u8::from_str_radix(v.trim(), 16)
            .map_err(|_| Error::Keys(format!("KVN '{}' is not a hex byte", v.as_str())))?,
        None => default_kvn,
    };
    match (key("KEY")?, key("ENC")?, key("MAC")?, key("DEK")?) {
        (Some(k), None, None, None) => Ok(Some(StaticKeys::single(kvn, k))),
        (None, Some(e), Some(m), Some(d)) => StaticKeys::new(kvn, e, m, d)
            .map(Some)
            .map_err(|e| Error::Keys(e.to_string())),
        (None, None, None, None) => Ok(None),
        _ => Err(Error::Keys(
            "give either KEY, or all three of ENC, MAC and DEK".into(),
        )),
    }
}

/// Parses the text of a key file.
pub fn parse_key_file(text: &str, default_kvn: u8) -> Result<StaticKeys> {
    let mut map = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(Error::Keys(format!("line {}: expected NAME=HEX", n + 1)));
        };
        let name = name.trim().to_ascii_uppercase();
        if !matches!(name.as_str(), "KEY" | "ENC" | "MAC" | "DEK" | "KVN") {
            return Err(Error::Keys(format!(
                "line {}: unknown name '{name}' (use KEY, ENC, MAC, DEK, KVN)",
                n + 1
            )));
        }
        map.insert(name, Zeroizing::new(value.trim().to_string()));
    }
    from_map(&map, default_kvn)?.ok_or_else(|| Error::Keys("the key file holds no key".into()))
}

/// Reads a key file; warns on stderr when others can read it.
pub fn read_key_file(path: &Path, default_kvn: u8) -> Result<StaticKeys> {
    let text = read_secret_file(path, "key file")?;
    parse_key_file(&text, default_kvn)
}

/// Reads keys from `KAGI_KEY` or `KAGI_KEY_ENC`/`_MAC`/`_DEK` (and `KAGI_KVN`).
pub fn keys_from_env(default_kvn: u8) -> Result<Option<StaticKeys>> {
    let mut map = BTreeMap::new();
    for (var, name) in [
        ("KAGI_KEY", "KEY"),
        ("KAGI_KEY_ENC", "ENC"),
        ("KAGI_KEY_MAC", "MAC"),
        ("KAGI_KEY_DEK", "DEK"),
        ("KAGI_KVN", "KVN"),
    ] {
        if let Ok(v) = std::env::var(var) {
            map.insert(name.to_string(), Zeroizing::new(v));
        }
    }
    from_map(&map, default_kvn)
}

/// Resolves the keys for a session: file, then environment, then (only if `allow_test_keys`)
/// the GP test keys.
pub fn resolve(
    file: Option<&Path>,
    default_kvn: u8,
    allow_test_keys: bool,
) -> Result<(StaticKeys, KeySource)> {
    if let Some(p) = file {
        return Ok((
            read_key_file(p, default_kvn)?,
            KeySource::File(p.display().to_string()),
        ));
    }
    if let Some(k) = keys_from_env(default_kvn)? {
        return Ok((k, KeySource::Environment));
    }
    if allow_test_keys {
        return Ok((
            StaticKeys::default_test_keys(default_kvn),
            KeySource::TestKeys,
        ));
    }
    Err(Error::Keys(
        "no keys: give --key-file FILE or set KAGI_KEY (or KAGI_KEY_ENC/_MAC/_DEK); \
         --test-keys uses the published GP test keys on development cards"
            .into(),
    ))
}

/// Reads a file holding a secret (`what` names it in messages) into zeroized memory; warns on
/// stderr when others can read it.
pub fn read_secret_file(path: &Path, what: &str) -> Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| Error::Keys(format!("cannot read {}: {e}", path.display())))?,
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "warning: {what} {} is readable by others; chmod 600 it",
                path.display()
            );
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_forms() {
        let k = parse_key_file("# dev\nKEY=404142434445464748494A4B4C4D4E4F\nKVN=31\n", 0).unwrap();
        assert_eq!((k.kvn, k.enc().kcv()), (0x31, [0x50, 0x4A, 0x77]));
        let three = "ENC=000102030405060708090a0b0c0d0e0f\nMAC=101112131415161718191a1b1c1d1e1f\nDEK=202122232425262728292a2b2c2d2e2f";
        let k = parse_key_file(three, 0x30).unwrap();
        assert_eq!(k.dek().kcv(), [0x84, 0x0D, 0xE5]);
        assert!(parse_key_file("ENC=00", 0).is_err());
        assert!(
            parse_key_file(
                "KEY=404142434445464748494A4B4C4D4E4F\nENC=404142434445464748494A4B4C4D4E4F",
                0
            )
            .is_err()
        );
        assert!(parse_key_file("PIN=1234", 0).is_err());
        assert!(parse_key_file("", 0).is_err());
        // Bad key text is named (which entry, and that it is not hex) and never echoed: the
        // rest of a key with one typo is still secret.
        let err = parse_key_file("KEY=zz", 0).unwrap_err().to_string();
        assert!(err.contains("KEY") && err.contains("hexadecimal"), "{err}");
        assert!(!err.contains("zz"), "{err}");
        let err = parse_key_file("KEY=404142434445464748494A4B4C4D4Ezz", 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("KEY") && err.contains("hexadecimal"), "{err}");
        assert!(!err.to_uppercase().contains("4142434445"), "{err}");
    }
}
