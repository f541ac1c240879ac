//! Persistent memory: a key-value store with Java Card transaction semantics, tearing
//! injection and versioned card images.
//!
//! - Outside a transaction every write (put or remove of one object) is atomic on its own.
//! - Inside a transaction writes go to a journal; `commit` applies them all at once, and a power
//!   loss before the commit completes rolls all of them back at the next power-up.
//! - Tearing: [`Store::tear_at`] makes the Nth persistent write from now lose power instead of
//!   happening. The card is then mute until powered up again; every object is in its old or its
//!   new state.
//! - A memory budget: writes that would exceed it fail with [`StoreError::Full`] (`6A84`).
//! - Images: [`Store::to_image`] / [`Store::from_image`] serialise the committed state in a
//!   versioned, checksummed format; [`Store::save`] writes it atomically (temp file, fsync,
//!   rename).

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use zeroize::Zeroizing;

/// An object's bytes: overwritten with zeros when replaced, removed, rolled back or dropped,
/// as a card's EEPROM cell is rewritten, so an old key or PIN record does not linger in the
/// simulator's memory.
type Value = Zeroizing<Vec<u8>>;

/// Why a persistent write did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Power was cut (tearing injection): the card is mute until the next power-up.
    #[error("power lost during a persistent write")]
    Torn,
    /// Not enough persistent memory.
    #[error("not enough persistent memory: {need} bytes needed, {free} free")]
    Full {
        /// Bytes the write needs.
        need: usize,
        /// Bytes free.
        free: usize,
    },
}

/// Why a card image was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not a kagi card image.
    #[error("not a kagi card image (bad magic): check the file name")]
    BadMagic,
    /// Written by a newer kagi.
    #[error(
        "card image format {found} is newer than this kagi understands ({supported}); upgrade kagi"
    )]
    NewerVersion {
        /// The file's version.
        found: u16,
        /// The newest version this build reads.
        supported: u16,
    },
    /// Truncated or altered.
    #[error("card image is corrupt ({0}); restore it from a backup")]
    Corrupt(&'static str),
    /// The image names an applet class the card's class table lacks (or whose
    /// constructor refuses an instance's install parameters).
    #[error("card image {path}: {source}")]
    Classes {
        /// The file.
        path: String,
        /// Which class, and what to do.
        source: crate::class_error::ClassError,
    },
    /// File system error.
    #[error("card image {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

const MAGIC: &[u8; 8] = b"KAGICARD";
/// The card image format this build writes.
pub const IMAGE_VERSION: u16 = 1;

/// Overhead charged per stored object, on top of key and value bytes.
const OBJECT_OVERHEAD: usize = 8;

/// Default persistent memory of a simulated card.
pub const DEFAULT_BUDGET: usize = 256 * 1024;

/// The card's persistent memory.
#[derive(Debug, Clone)]
pub struct Store {
    committed: BTreeMap<String, Value>,
    journal: Option<BTreeMap<String, Option<Value>>>,
    budget: usize,
    writes: u64,
    tear_at: Option<u64>,
    torn: bool,
    generation: u64,
    /// Bytes written to persistent memory since the last [`Store::take_activity`].
    nvm_bytes: u64,
    /// Operations the chip did since then (for the timing model; not persistent).
    ops: Vec<kagi_jcvm::CardOp>,
}

fn cost(key: &str, value: &[u8]) -> usize {
    key.len() + value.len() + OBJECT_OVERHEAD
}

impl Store {
    /// An empty store with `budget` bytes of persistent memory.
    pub fn new(budget: usize) -> Self {
        Store {
            committed: BTreeMap::new(),
            journal: None,
            budget,
            writes: 0,
            tear_at: None,
            torn: false,
            generation: 0,
            nvm_bytes: 0,
            ops: Vec::new(),
        }
    }

    /// Reads an object (seeing the open transaction's writes).
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        if let Some(j) = &self.journal
            && let Some(v) = j.get(key)
        {
            return v.as_ref().map(|v| v.as_slice());
        }
        self.committed.get(key).map(|v| v.as_slice())
    }

    /// Every key that starts with `prefix`, in order (seeing the open transaction).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .committed
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        if let Some(j) = &self.journal {
            for (k, v) in j
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
            {
                match v {
                    Some(_) if !keys.contains(k) => keys.push(k.clone()),
                    None => keys.retain(|x| x != k),
                    _ => {}
                }
            }
            keys.sort();
        }
        keys
    }

    /// Bytes in use (with the open transaction's writes).
    pub fn used(&self) -> usize {
        let mut used: usize = self.committed.iter().map(|(k, v)| cost(k, v)).sum();
        if let Some(j) = &self.journal {
            for (k, v) in j {
                if let Some(old) = self.committed.get(k) {
                    used -= cost(k, old);
                }
                if let Some(v) = v {
                    used += cost(k, v);
                }
            }
        }
        used
    }

    /// Bytes free.
    pub fn free(&self) -> usize {
        self.budget.saturating_sub(self.used())
    }

    /// The memory budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Changes the memory budget (card configuration).
    pub fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
    }

    /// One persistent write: counts for tearing and fails once power is lost.
    fn write_cycle(&mut self) -> Result<(), StoreError> {
        if self.torn {
            return Err(StoreError::Torn);
        }
        self.writes += 1;
        if let Some(n) = self.tear_at {
            if n <= 1 {
                self.tear_at = None;
                self.torn = true;
                return Err(StoreError::Torn);
            }
            self.tear_at = Some(n - 1);
        }
        Ok(())
    }

    /// Writes an object.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let old = self.get(key).map(|v| cost(key, v)).unwrap_or(0);
        let new = cost(key, value);
        let free = self.free();
        if new > old && new - old > free {
            return Err(StoreError::Full {
                need: new - old,
                free,
            });
        }
        self.write_cycle()?;
        self.nvm_bytes += (key.len() + value.len()) as u64;
        match &mut self.journal {
            Some(j) => {
                j.insert(key.to_string(), Some(Zeroizing::new(value.to_vec())));
            }
            None => {
                self.committed
                    .insert(key.to_string(), Zeroizing::new(value.to_vec()));
                self.generation += 1;
            }
        }
        Ok(())
    }

    /// An object as last committed, ignoring the open transaction's writes.
    pub fn get_committed(&self, key: &str) -> Option<&[u8]> {
        self.committed.get(key).map(|v| v.as_slice())
    }

    /// Writes an object outside the open transaction: durable at once, not rolled back by
    /// an abort; a journaled write of the same key still applies at commit.
    pub fn put_outside(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let old = self.committed.get(key).map(|v| cost(key, v)).unwrap_or(0);
        let new = cost(key, value);
        let free = self.free();
        if new > old && new - old > free {
            return Err(StoreError::Full {
                need: new - old,
                free,
            });
        }
        self.write_cycle()?;
        self.nvm_bytes += (key.len() + value.len()) as u64;
        self.committed
            .insert(key.to_string(), Zeroizing::new(value.to_vec()));
        self.generation += 1;
        Ok(())
    }

    /// Removes an object (a no-op write when absent).
    pub fn remove(&mut self, key: &str) -> Result<(), StoreError> {
        if self.get(key).is_none() {
            return Ok(());
        }
        self.write_cycle()?;
        match &mut self.journal {
            Some(j) => {
                j.insert(key.to_string(), None);
            }
            None => {
                self.committed.remove(key);
                self.generation += 1;
            }
        }
        Ok(())
    }

    /// Removes every object whose key starts with `prefix`.
    pub fn remove_prefix(&mut self, prefix: &str) -> Result<(), StoreError> {
        for k in self.keys(prefix) {
            self.remove(&k)?;
        }
        Ok(())
    }

    /// Starts a transaction (nested calls join the open one, like Java Card's depth-1 model).
    pub fn begin(&mut self) {
        if self.journal.is_none() {
            self.journal = Some(BTreeMap::new());
        }
    }

    /// Whether a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.journal.is_some()
    }

    /// Commits the open transaction: one persistent write (the commit record), then every
    /// journaled write applies at once.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        let Some(j) = self.journal.take() else {
            return Ok(());
        };
        if j.is_empty() {
            return Ok(());
        }
        self.write_cycle()?;
        for (k, v) in j {
            match v {
                Some(v) => {
                    self.committed.insert(k, v);
                }
                None => {
                    self.committed.remove(&k);
                }
            }
        }
        self.generation += 1;
        Ok(())
    }

    /// Drops the open transaction's writes.
    pub fn abort(&mut self) {
        self.journal = None;
    }

    /// Runs `f` in a transaction: commits when it returns `Ok`, rolls back otherwise.
    pub fn atomically<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&mut Store) -> Result<T, E>,
    ) -> Result<T, E> {
        transact(self, f)
    }

    /// Cuts power at the `n`th persistent write from now (1 = the next one).
    pub fn tear_at(&mut self, n: u64) {
        self.tear_at = Some(n.max(1));
    }

    /// Whether power was lost.
    pub fn is_torn(&self) -> bool {
        self.torn
    }

    /// Persistent writes so far (to plan tearing tests).
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Bumped on every committed change (so the runtime knows to re-read its registry).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records an operation of the chip (the timing model charges its time).
    pub fn charge(&mut self, op: kagi_jcvm::CardOp) {
        self.ops.push(op);
    }

    /// The bytes written and the operations done since the last call, and starts counting
    /// afresh.
    pub fn take_activity(&mut self) -> (u64, Vec<kagi_jcvm::CardOp>) {
        (
            std::mem::take(&mut self.nvm_bytes),
            std::mem::take(&mut self.ops),
        )
    }

    /// Power-up: an interrupted transaction is rolled back; the card speaks again.
    pub fn power_up(&mut self) {
        self.journal = None;
        self.torn = false;
    }

    /// The committed state as a card image (zeroed when dropped: it holds the card's keys).
    pub fn to_image(&self) -> Zeroizing<Vec<u8>> {
        let mut body = Zeroizing::new(Vec::with_capacity(self.used() + 12));
        body.extend_from_slice(&(self.budget as u64).to_be_bytes());
        body.extend_from_slice(&(self.committed.len() as u32).to_be_bytes());
        for (k, v) in &self.committed {
            body.extend_from_slice(&(k.len() as u16).to_be_bytes());
            body.extend_from_slice(k.as_bytes());
            body.extend_from_slice(&(v.len() as u32).to_be_bytes());
            body.extend_from_slice(v);
        }
        let mut out = Zeroizing::new(Vec::with_capacity(body.len() + 42));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&IMAGE_VERSION.to_be_bytes());
        out.extend_from_slice(&body);
        let digest = Sha256::digest(out.as_slice());
        out.extend_from_slice(&digest);
        out
    }

    /// Reads a card image, rejecting bad magic, newer versions, truncation and alteration.
    pub fn from_image(bytes: &[u8]) -> Result<Store, ImageError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(ImageError::BadMagic);
        }
        if bytes.len() < MAGIC.len() + 2 + 32 {
            return Err(ImageError::Corrupt("truncated"));
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version > IMAGE_VERSION {
            return Err(ImageError::NewerVersion {
                found: version,
                supported: IMAGE_VERSION,
            });
        }
        let (content, digest) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(content).as_slice() != digest {
            return Err(ImageError::Corrupt("checksum mismatch"));
        }
        let mut r = Reader(&content[10..]);
        let budget = r.u64()? as usize;
        let n = r.u32()?;
        let mut committed = BTreeMap::new();
        for _ in 0..n {
            let klen = r.u16()? as usize;
            let key = String::from_utf8(r.take(klen)?.to_vec())
                .map_err(|_| ImageError::Corrupt("object name is not UTF-8"))?;
            let vlen = r.u32()? as usize;
            committed.insert(key, Zeroizing::new(r.take(vlen)?.to_vec()));
        }
        if !r.0.is_empty() {
            return Err(ImageError::Corrupt("trailing bytes"));
        }
        let mut s = Store::new(budget);
        s.committed = committed;
        Ok(s)
    }

    /// Writes the image atomically: a temporary file in the same directory (mode 0600: it
    /// holds keys), fsync, rename, fsync of the directory. A crash leaves the old image or the
    /// new one.
    pub fn save(&self, path: &Path) -> Result<(), ImageError> {
        let io = |source| ImageError::Io {
            path: path.display().to_string(),
            source,
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        // Images hold the card's keys: readable by the owner only.
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(&self.to_image()).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Reads an image file.
    pub fn load(path: &Path) -> Result<Store, ImageError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| ImageError::Io {
            path: path.display().to_string(),
            source,
        })?);
        Store::from_image(&bytes)
    }

    /// Whether two stores hold the same committed objects.
    pub fn same_content(&self, other: &Store) -> bool {
        self.committed == other.committed
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ImageError> {
        if self.0.len() < n {
            return Err(ImageError::Corrupt("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, ImageError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ImageError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, ImageError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

/// What runs a Java Card transaction: the card's store and an applet's view of it.
pub(crate) trait Transactional {
    /// Opens a transaction (nested ones join the outer one).
    fn begin_tx(&mut self);
    /// Whether a transaction is open.
    fn in_tx(&self) -> bool;
    /// Commits the open transaction.
    fn commit_tx(&mut self) -> Result<(), StoreError>;
    /// Rolls the open transaction back.
    fn abort_tx(&mut self);
}

impl Transactional for Store {
    fn begin_tx(&mut self) {
        self.begin()
    }
    fn in_tx(&self) -> bool {
        self.in_transaction()
    }
    fn commit_tx(&mut self) -> Result<(), StoreError> {
        self.commit()
    }
    fn abort_tx(&mut self) {
        self.abort()
    }
}

/// Runs `f` in a transaction of `s`: commits when it returns `Ok`, rolls back otherwise; inside
/// an open transaction, `f` joins it and the outer one decides.
pub(crate) fn transact<S: Transactional, T, E: From<StoreError>>(
    s: &mut S,
    f: impl FnOnce(&mut S) -> Result<T, E>,
) -> Result<T, E> {
    let outer = s.in_tx();
    s.begin_tx();
    match f(s) {
        Ok(v) => {
            if !outer {
                s.commit_tx()?;
            }
            Ok(v)
        }
        Err(e) => {
            if !outer {
                s.abort_tx();
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn transactions_commit_or_roll_back() {
        let mut s = Store::new(1000);
        s.put("a", b"1").unwrap();
        s.begin();
        s.put("a", b"2").unwrap();
        s.put("b", b"3").unwrap();
        assert_eq!(s.get("a"), Some(&b"2"[..]));
        assert_eq!(s.keys(""), vec!["a", "b"]);
        s.abort();
        assert_eq!((s.get("a"), s.get("b")), (Some(&b"1"[..]), None));
        s.begin();
        s.remove("a").unwrap();
        s.put("b", b"3").unwrap();
        assert_eq!(s.keys(""), vec!["b"]);
        s.commit().unwrap();
        assert_eq!((s.get("a"), s.get("b")), (None, Some(&b"3"[..])));
    }

    #[test]
    fn tearing_inside_a_transaction_rolls_back_at_power_up() {
        for n in 1..=4 {
            let mut s = Store::new(1000);
            s.put("x", b"old").unwrap();
            s.put("y", b"old").unwrap();
            s.tear_at(n);
            let r = s.atomically(|s| {
                s.put("x", b"new")?;
                s.put("y", b"new")?;
                Ok::<_, StoreError>(())
            });
            s.power_up();
            let state = (s.get("x").unwrap().to_vec(), s.get("y").unwrap().to_vec());
            // Writes 1-2 journal, write 3 is the commit record: tearing at 1..3 keeps the old
            // state, at 4 (after the commit) the new one.
            if n <= 3 {
                assert!(r.is_err());
                assert_eq!(state, (b"old".to_vec(), b"old".to_vec()), "n={n}");
            } else {
                assert!(r.is_ok());
                assert_eq!(state, (b"new".to_vec(), b"new".to_vec()), "n={n}");
            }
        }
    }

    #[test]
    fn budget_is_enforced() {
        let mut s = Store::new(45);
        s.put("k", &[0; 20]).unwrap();
        assert!(matches!(s.put("j", &[0; 20]), Err(StoreError::Full { .. })));
        // Replacing with a smaller value always fits.
        s.put("k", &[0; 5]).unwrap();
        s.put("j", &[0; 20]).unwrap();
    }

    #[test]
    fn image_round_trip_and_rejections() {
        let mut s = Store::new(5000);
        s.put("isd/keys/30", &[1, 2, 3]).unwrap();
        s.put("reg/F0", b"echo").unwrap();
        let img = s.to_image();
        let back = Store::from_image(&img).unwrap();
        assert!(back.same_content(&s));
        assert_eq!(back.budget(), 5000);
        assert!(matches!(
            Store::from_image(b"hello"),
            Err(ImageError::BadMagic)
        ));
        let mut newer = img.clone();
        newer[9] = 2;
        assert!(matches!(
            Store::from_image(&newer),
            Err(ImageError::NewerVersion { found: 2, .. })
        ));
        let mut flipped = img.clone();
        flipped[20] ^= 1;
        assert!(matches!(
            Store::from_image(&flipped),
            Err(ImageError::Corrupt(_))
        ));
        assert!(matches!(
            Store::from_image(&img[..img.len() - 1]),
            Err(ImageError::Corrupt(_))
        ));
        let dir = std::env::temp_dir().join(format!("kagi-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("card.img");
        s.save(&path).unwrap();
        assert!(Store::load(&path).unwrap().same_content(&s));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest! {
        #[test]
        fn images_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Store::from_image(&bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = Store::from_image(&with_magic);
        }
    }
}
