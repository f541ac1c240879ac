//! Envelope encryption of the per-service credentials: each record is encrypted (AES-256-GCM)
//! with a data key of its own, and the data key is wrapped by a key-encryption key (KEK) that
//! lives in an HSM. The database holds only wrapped data keys and ciphertexts: copied files
//! reveal nothing without the HSM. The additional data binds a record to its row (card,
//! service, version), so a ciphertext moved to another row does not open.
//!
//! [`Envelope`] is the seam. A store only wraps and unwraps 32-byte data keys with its KEKs;
//! sealing, opening and re-wrapping records are the same everywhere (provided methods). The
//! HSM store (`kagi_hsm::HsmEnvelope`, PKCS#11) wraps with `CKM_AES_GCM` inside the token,
//! where the KEKs are non-extractable; a data key is random, exists in host memory only while
//! its record is sealed or opened (zeroized after), and is never stored unwrapped. Re-wrapping
//! a record under a new KEK touches only its data key: the credential itself stays encrypted.
//! With a KEK that may wrap keys, the HSM store goes further: credentials are generated,
//! wrapped (`CKM_AES_KEY_WRAP_PAD`) and used only inside the token
//! ([`Envelope::generate`], [`Envelope::use_key`]); the broker never holds them.
//! [`FileEnvelope`] is the development store, and says so: it opens every credential in
//! memory.
//!
//! The trait, its error and the record format live in [`broker_protocol::envelope`] (so a key
//! store can implement them without depending on this server) and are re-exported here.

pub use broker_protocol::envelope::{
    Envelope, EnvelopeError, SealedRecord, gcm_open, gcm_seal, random,
};

use std::collections::BTreeMap;
use std::path::Path;
use zeroize::Zeroizing;

fn e(what: &str) -> EnvelopeError {
    EnvelopeError(what.into())
}

/// The development key store: KEKs as files `kek-ID.key` (64 hex digits) in a directory.
/// Data keys are wrapped with AES-256-GCM in software. Insecure: whoever reads the directory
/// opens every record. It is **not** the HSM mode of issue #17: every credential is
/// generated and opened in the broker's own memory for each use (the HSM store,
/// `kagi_hsm::HsmEnvelope`, keeps them inside the token).
pub struct FileEnvelope {
    keks: std::sync::RwLock<BTreeMap<String, Zeroizing<Vec<u8>>>>,
    dir: std::path::PathBuf,
}

impl FileEnvelope {
    /// Reads every `kek-ID.key` in `dir`.
    pub fn open_dir(dir: &Path) -> Result<FileEnvelope, EnvelopeError> {
        Ok(FileEnvelope {
            keks: std::sync::RwLock::new(Self::read_dir(dir)?),
            dir: dir.to_path_buf(),
        })
    }

    fn read_dir(dir: &Path) -> Result<BTreeMap<String, Zeroizing<Vec<u8>>>, EnvelopeError> {
        let mut keks = BTreeMap::new();
        let entries =
            std::fs::read_dir(dir).map_err(|x| EnvelopeError(format!("{}: {x}", dir.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_prefix("kek-")
                .and_then(|n| n.strip_suffix(".key"))
            else {
                continue;
            };
            let text = Zeroizing::new(
                std::fs::read_to_string(entry.path()).map_err(|x| EnvelopeError(x.to_string()))?,
            );
            let key = Zeroizing::new(
                hex::decode(text.trim()).map_err(|_| EnvelopeError(format!("{name}: not hex")))?,
            );
            if key.len() != 32 {
                return Err(EnvelopeError(format!("{name}: a KEK is 32 bytes")));
            }
            keks.insert(id.to_string(), key);
        }
        if keks.is_empty() {
            return Err(EnvelopeError(format!(
                "no kek-ID.key in {}: create one with `kagi broker new-kek`",
                dir.display()
            )));
        }
        Ok(keks)
    }

    /// Writes a new random KEK `kek-ID.key` into `dir` (mode 0600).
    pub fn new_kek(dir: &Path, id: &str) -> Result<(), EnvelopeError> {
        use std::io::Write;
        let path = dir.join(format!("kek-{id}.key"));
        if path.exists() {
            return Err(EnvelopeError(format!("{} exists", path.display())));
        }
        let key = random::<32>()?;
        let text = Zeroizing::new(hex::encode(*key));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        opts.open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|x| EnvelopeError(format!("{}: {x}", path.display())))
    }

    fn kek(&self, id: &str) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let find = || {
            self.keks
                .read()
                .map_err(|_| e("key store lock poisoned"))
                .map(|k| k.get(id).cloned())
        };
        if let Some(k) = find()? {
            return Ok(k);
        }
        self.refresh()?;
        find()?.ok_or_else(|| EnvelopeError(format!("no KEK '{id}' in {}", self.dir.display())))
    }
}

impl Envelope for FileEnvelope {
    fn keks(&self) -> Vec<String> {
        self.keks
            .read()
            .map(|k| k.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn refresh(&self) -> Result<(), EnvelopeError> {
        let fresh = Self::read_dir(&self.dir)?;
        *self
            .keks
            .write()
            .map_err(|_| e("key store lock poisoned"))? = fresh;
        Ok(())
    }

    fn wrap_dek(&self, kek: &str, dek: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let (n, ct) = gcm_seal(&self.kek(kek)?, kek.as_bytes(), dek)?;
        Ok([n, ct].concat())
    }

    fn unwrap_dek(&self, kek: &str, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        if wrapped.len() < 12 {
            return Err(e("malformed wrapped key"));
        }
        let (n, ct) = wrapped.split_at(12);
        gcm_open(&self.kek(kek)?, kek.as_bytes(), n, ct)
    }

    fn describe(&self) -> String {
        format!(
            "INSECURE file key store {} (credentials opened in this process's memory)",
            self.dir.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_rewrap_and_refusals() {
        let dir = std::env::temp_dir().join(format!("kagi-envelope-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        FileEnvelope::new_kek(&dir, "k1").unwrap();
        FileEnvelope::new_kek(&dir, "k2").unwrap();
        assert!(FileEnvelope::new_kek(&dir, "k1").is_err());
        let env = FileEnvelope::open_dir(&dir).unwrap();
        let r = env.seal("k1", b"card|svc|1", b"service key").unwrap();
        assert_eq!(
            env.open(b"card|svc|1", &r).unwrap().as_slice(),
            b"service key"
        );
        assert!(env.open(b"card|svc|2", &r).is_err(), "moved to another row");
        let mut bad = r.clone();
        bad.ciphertext[0] ^= 1;
        assert!(env.open(b"card|svc|1", &bad).is_err());
        let r2 = env.rewrap(&r, "k2").unwrap();
        assert_eq!((r2.kek.as_str(), &r2.ciphertext), ("k2", &r.ciphertext));
        assert_eq!(
            env.open(b"card|svc|1", &r2).unwrap().as_slice(),
            b"service key"
        );
        // The wrapped key names its KEK: claiming another KEK does not open it.
        let mut lie = r2.clone();
        lie.kek = "k1".into();
        assert!(env.open(b"card|svc|1", &lie).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
