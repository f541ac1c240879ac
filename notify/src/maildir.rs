//! Delivery into a maildir (the format of qmail's maildir(5)): the message is written whole
//! into `tmp/` under a unique name, synced, then renamed into `new/`, so a reader never sees a
//! part; files are 0600 and the directories 0700.

use crate::NotifyError;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

fn fail(path: &Path) -> impl Fn(std::io::Error) -> NotifyError + '_ {
    move |source| NotifyError::Maildir {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes the maildir's `tmp`, `new` and `cur` (0700) when missing.
pub(crate) fn prepare(path: &Path) -> Result<(), NotifyError> {
    for sub in ["tmp", "new", "cur"] {
        let dir = path.join(sub);
        let mut b = fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(&dir).map_err(fail(path))?;
    }
    Ok(())
}

/// Writes one message into `new/` through `tmp/`; returns its file name.
pub(crate) fn deliver(path: &Path, bytes: &[u8]) -> Result<String, NotifyError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| NotifyError::Build(format!("randomness: {e}")))?;
    let name = format!(
        "{}.M{}P{}Q{}R{:016x}.kagi",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        u64::from_be_bytes(r)
    );
    let tmp = path.join("tmp").join(&name);
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let written = o.open(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(fail(path)(e));
    }
    fs::rename(&tmp, path.join("new").join(&name)).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        fail(path)(e)
    })?;
    Ok(name)
}
