//! What every server's configuration shares: files named relative to the configuration file,
//! secrets read into zeroizing buffers, private files and directories (0600, 0700), TLS files.

use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// A configuration, key or certificate file could not be read, written or understood.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file system refused.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but its content is not what it must be.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to write instead.
        message: String,
    },
}

impl FileError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
        move |source| FileError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// An [`FileError::Invalid`] for `path`.
    pub fn invalid(path: &Path, message: impl Into<String>) -> FileError {
        FileError::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Reads a text file, naming it in the error.
pub fn read_text(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(FileError::io(path))
}

/// A path written in a configuration file, relative to that file (`base`).
pub fn rel(base: &Path, p: &str) -> PathBuf {
    base.parent().unwrap_or(Path::new(".")).join(p)
}

/// A secret read from a file: trimmed, zeroized when dropped.
pub fn read_secret(path: &Path) -> Result<Zeroizing<String>, FileError> {
    let s = Zeroizing::new(read_text(path)?);
    Ok(Zeroizing::new(s.trim().to_string()))
}

/// A key file holding hex: its bytes, zeroized when dropped.
pub fn read_hex_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, FileError> {
    let s = read_secret(path)?;
    hex::decode(s.as_bytes())
        .map(Zeroizing::new)
        .map_err(|_| FileError::invalid(path, "not a hex key: write the key as hex digits"))
}

/// Writes a file readable by its owner only (0600), replacing what was there. The bytes go
/// to a new file (created 0600, never through a link) that is then renamed over `path`: a file
/// already at `path` with a wider mode is replaced, not reused, and a symbolic link at `path`
/// is replaced itself, never followed.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    use std::io::Write;
    let name = path
        .file_name()
        .ok_or_else(|| FileError::invalid(path, "not a file name: name a file to write"))?;
    let suffix = random_hex(8).map_err(|e| FileError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", suffix.as_str()));
    let tmp = path.with_file_name(tmp_name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = opts
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(FileError::io(path))
}

/// Writes a file anyone may read (public keys, certificates, client configurations).
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    std::fs::write(path, bytes).map_err(FileError::io(path))
}

/// Writes a party's key pair as `DIR/NAME.key.pem` (private, 0600) and `DIR/NAME.pub.pem`.
pub fn write_key_pair(
    dir: &Path,
    name: &str,
    private_pem: &str,
    public_pem: &str,
) -> Result<(), FileError> {
    write_private(&dir.join(format!("{name}.key.pem")), private_pem.as_bytes())?;
    write_public(&dir.join(format!("{name}.pub.pem")), public_pem.as_bytes())
}

/// Creates a directory (and its missing parents) readable by its owner only (0700).
pub fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(FileError::io(dir))
}

/// `n` random bytes as upper-case hex, zeroized when dropped (state keys, development keys).
pub fn random_hex(n: usize) -> Result<Zeroizing<String>, getrandom::Error> {
    let mut b = Zeroizing::new(vec![0u8; n]);
    getrandom::fill(&mut b)?;
    Ok(Zeroizing::new(hex::encode_upper(&*b)))
}

/// A self-signed development certificate for a server's `init --tls`: (certificate PEM, key
/// PEM).
pub type DevTls = (String, Zeroizing<String>);

/// A server's `init --tls`: writes the development certificate and key into `dir`
/// (`tls.crt.pem`, `tls.key.pem` 0600). Returns the URL scheme, the server configuration's
/// lines naming the two files, and `ca_line()` (the line of a client's configuration that
/// trusts the certificate); without a certificate `http` and no lines.
pub fn write_dev_tls(
    dir: &Path,
    tls: Option<DevTls>,
    ca_line: impl FnOnce() -> String,
) -> Result<(&'static str, String, String), FileError> {
    let Some((cert, key)) = tls else {
        return Ok(("http", String::new(), String::new()));
    };
    write_public(&dir.join("tls.crt.pem"), cert.as_bytes())?;
    write_private(&dir.join("tls.key.pem"), key.as_bytes())?;
    Ok((
        "https",
        "tls_cert = \"tls.crt.pem\"\ntls_key = \"tls.key.pem\"\n".to_string(),
        ca_line(),
    ))
}

/// A server's certificate and key from its configuration's `tls_cert` and `tls_key` (relative
/// to the configuration file `base`); neither: plain HTTP.
pub fn tls_files(
    base: &Path,
    cert: &Option<String>,
    key: &Option<String>,
) -> Result<Option<crate::TlsFiles>, FileError> {
    match (cert, key) {
        (Some(c), Some(k)) => {
            let (c, k) = (rel(base, c), rel(base, k));
            Ok(Some(crate::TlsFiles {
                cert_pem: std::fs::read(&c).map_err(FileError::io(&c))?,
                key_pem: Zeroizing::new(std::fs::read(&k).map_err(FileError::io(&k))?),
            }))
        }
        (None, None) => Ok(None),
        _ => Err(FileError::invalid(
            base,
            "tls_cert and tls_key go together: give both, or neither for plain HTTP",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn private_files_and_directories_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("kagi-files-{}", std::process::id()));
        let inner = dir.join("a/b");
        create_private_dir(&inner).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&inner), 0o700);
        let f = inner.join("k");
        write_private(&f, b"00112233").unwrap();
        assert_eq!(mode(&f), 0o600);
        assert_eq!(&*read_hex_secret(&f).unwrap(), &[0x00, 0x11, 0x22, 0x33]);
        write_private(&f, b"zz").unwrap();
        assert!(matches!(
            read_hex_secret(&f),
            Err(FileError::Invalid { .. })
        ));
        // A file there with a wider mode is replaced by an owner-only one.
        let wide = inner.join("wide");
        std::fs::write(&wide, b"old").unwrap();
        std::fs::set_permissions(&wide, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&wide, b"new").unwrap();
        assert_eq!(mode(&wide), 0o600);
        assert_eq!(std::fs::read(&wide).unwrap(), b"new");
        // A link there is replaced, never followed: its target keeps its mode and bytes.
        let target = inner.join("target");
        std::fs::write(&target, b"theirs").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = inner.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_private(&link, b"secret").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"theirs");
        assert_eq!(mode(&target), 0o644);
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(mode(&link), 0o600);
        assert_eq!(std::fs::read(&link).unwrap(), b"secret");
        // Nothing else is left in the directory.
        let mut names: Vec<_> = std::fs::read_dir(&inner)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["k", "link", "target", "wide"]);
        assert!(matches!(
            read_text(&dir.join("none")),
            Err(FileError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn random_hex_is_n_fresh_bytes() {
        let (a, b) = (random_hex(16).unwrap(), random_hex(16).unwrap());
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        );
        assert_ne!(*a, *b);
    }

    #[test]
    fn paths_are_relative_to_the_configuration() {
        assert_eq!(
            rel(Path::new("/etc/kagi/tsm.toml"), "tsm.db"),
            Path::new("/etc/kagi/tsm.db")
        );
        assert_eq!(rel(Path::new("tsm.toml"), "k"), Path::new("k"));
    }
}
