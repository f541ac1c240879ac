//! `init` writes a development TSM whose secrets are the owner's only (0600, keys directory
//! 0700) while public keys stay readable; `load` reads it back with master keys from the
//! caller's source, asking for exactly the key sets the file names; a second `init` into the
//! same directory is refused and leaves the first configuration as it was.

use card_wire::scp03::{CardKeys, Diversification, DiversifiedMaster, StaticKeys};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tsm_server::setup::{self, Overrides, SetupError};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_writes_private_secrets_and_load_reads_them_back() {
    let dir = std::env::temp_dir().join(format!("kagi-tsm-setup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    setup::init(&dir, "127.0.0.1:0", None).unwrap();
    assert_eq!(mode(&dir.join("keys")), 0o700);
    for private in [
        "tsm.key.pem",
        "sp.key.pem",
        "mno.key.pem",
        "state.key",
        "keys/provider.keys",
        "keys/isd.keys",
        "tsm.toml",
        "sp.toml",
        "mno.toml",
    ] {
        assert_eq!(mode(&dir.join(private)), 0o600, "{private}");
    }
    for public in ["tsm.pub.pem", "sp.pub.pem", "mno.pub.pem"] {
        assert_eq!(mode(&dir.join(public)) & 0o044, 0o044, "{public} is public");
    }
    let asked = Mutex::new(Vec::new());
    let keys = |name: &str, kvn: u8, scheme: Diversification| {
        asked.lock().unwrap().push((name.to_string(), kvn, scheme));
        Ok(Arc::new(DiversifiedMaster {
            master: StaticKeys::default_test_keys(kvn),
            scheme,
            kvn,
        }) as Arc<dyn CardKeys>)
    };
    let loaded = setup::load(&dir.join("tsm.toml"), &Overrides::default(), &keys).unwrap();
    // What the generated tsm.toml says: one provider (kvn 31, kdf3) and one operator's issuer
    // domains (kvn 30, no diversification), database next to the file.
    assert_eq!(
        *asked.lock().unwrap(),
        vec![
            ("provider".to_string(), 0x31, Diversification::Kdf3),
            ("isd".to_string(), 0x30, Diversification::None),
        ]
    );
    assert_eq!(loaded.config.providers.len(), 1);
    assert_eq!(loaded.config.operators.len(), 1);
    assert_eq!(loaded.database, dir.join("tsm.db").display().to_string());
    assert!(loaded.tls.is_none());
    let before = std::fs::read(dir.join("tsm.toml")).unwrap();
    match setup::init(&dir, "127.0.0.1:1", None) {
        Err(SetupError::Config { message, .. }) => assert!(message.contains("already")),
        other => panic!("a second init must be refused: {:?}", other.err()),
    }
    assert_eq!(std::fs::read(dir.join("tsm.toml")).unwrap(), before);
    // A key source that refuses names the key set.
    let refuse = |_: &str, _: u8, _: Diversification| -> Result<Arc<dyn CardKeys>, String> {
        Err("no such label".into())
    };
    match setup::load(&dir.join("tsm.toml"), &Overrides::default(), &refuse) {
        Err(SetupError::Keys { name, .. }) => assert_eq!(name, "provider"),
        other => panic!("expected a key error, got {:?}", other.err()),
    }
    // No content key is made any more: content is sealed to each SIM's own key.
    assert!(!dir.join("content.key").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A configuration from before per-card sealing names a provider content key: it is refused
/// with a message that says which line to remove, never silently kept.
#[test]
fn an_old_provider_content_key_is_refused_with_what_to_remove() {
    let dir = std::env::temp_dir().join(format!("kagi-tsm-setup-old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    setup::init(&dir, "127.0.0.1:0", None).unwrap();
    let path = dir.join("tsm.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // The line as `kagi tsm init` wrote it before, in the [[provider]] table.
    let old = text.replacen(
        "kvn = \"31\"\n",
        "kvn = \"31\"\ncontent_key = \"content.key\"\n",
        1,
    );
    assert_ne!(old, text, "the provider table has its kvn line");
    std::fs::write(&path, old).unwrap();
    std::fs::write(dir.join("content.key"), "00112233445566778899AABBCCDDEEFF").unwrap();
    let keys = |_: &str, kvn: u8, scheme: Diversification| {
        Ok(Arc::new(DiversifiedMaster {
            master: StaticKeys::default_test_keys(kvn),
            scheme,
            kvn,
        }) as Arc<dyn CardKeys>)
    };
    match setup::load(&path, &Overrides::default(), &keys) {
        Err(SetupError::Config { message, .. }) => {
            assert!(message.contains("content_key"), "{message}");
            assert!(message.contains("remove the line"), "{message}");
        }
        other => panic!("an old content_key must be refused: {:?}", other.err()),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
