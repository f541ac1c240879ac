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
    // What the generated tsm.toml says: one provider (kvn 31, kdf3) and no issuer-domain keys
    // (they belong to the MNO-TSM), database next to the file.
    assert_eq!(
        *asked.lock().unwrap(),
        vec![("provider".to_string(), 0x31, Diversification::Kdf3)]
    );
    assert!(!dir.join("keys/isd.keys").exists());
    assert_eq!(loaded.config.providers.len(), 1);
    assert_eq!(loaded.config.operators.len(), 0);
    assert!(loaded.config.mno.is_empty());
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

fn file_keys(_: &str, kvn: u8, scheme: Diversification) -> Result<Arc<dyn CardKeys>, String> {
    Ok(Arc::new(DiversifiedMaster {
        master: StaticKeys::default_test_keys(kvn),
        scheme,
        kvn,
    }) as Arc<dyn CardKeys>)
}

/// An SP-TSM configuration from before the MNO-TSM split names the operator's issuer-domain
/// keys: refused with what to remove and where the keys went.
#[test]
fn an_sp_tsm_config_naming_issuer_domain_keys_is_refused() {
    let dir = std::env::temp_dir().join(format!("kagi-tsm-setup-isd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    setup::init(&dir, "127.0.0.1:0", None).unwrap();
    let path = dir.join("tsm.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // The lines as `kagi tsm init` wrote them before, in the [[operator]] table.
    let old = text.replacen(
        "public_key = \"mno.pub.pem\"\n",
        "public_key = \"mno.pub.pem\"\nisd_keys = \"isd\"\nisd_kvn = \"30\"\n",
        1,
    );
    assert_ne!(old, text, "the operator table has its public key line");
    std::fs::write(&path, old).unwrap();
    match setup::load(&path, &Overrides::default(), &file_keys) {
        Err(SetupError::Config { message, .. }) => {
            assert!(message.contains("remove isd_keys"), "{message}");
            assert!(message.contains("kagi mno-tsm init"), "{message}");
        }
        other => panic!(
            "issuer-domain keys at the SP-TSM must be refused: {:?}",
            other.err()
        ),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `init_mno` writes the operator's own TSM (secrets 0600) trusting the SP-TSM's key; the
/// link file makes the SP-TSM's configuration name it; `load_mno` asks for the issuer-domain
/// keys only.
#[test]
fn an_mno_tsm_is_its_own_configuration_and_the_sp_tsm_links_to_it() {
    let base = std::env::temp_dir().join(format!("kagi-tsm-setup-mno-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    // The SP-TSM deeper than the working directory, so that a path relative to the working
    // directory cannot happen to resolve from the SP-TSM's directory too.
    let (sp, mno) = (base.join("a/b/c/d/e/f/g/sp"), base.join("mno"));
    setup::init(&sp, "127.0.0.1:0", None).unwrap();
    let sp_tsm = tsm_protocol::PartyId::new("tsm:kagi").unwrap();
    // Given as a path relative to the working directory (as `kagi mno-tsm init --dir mno`
    // is typed): the link file must still name the MNO-TSM's key for the SP-TSM's directory.
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count() - 1);
    let relative = Path::new(&up).join(mno.strip_prefix("/").unwrap());
    assert!(relative.is_relative());
    setup::init_mno(
        &relative,
        "127.0.0.1:9",
        None,
        &sp_tsm,
        &sp.join("tsm.pub.pem"),
        None,
    )
    .unwrap();
    for private in [
        "mno-tsm.key.pem",
        "mno.key.pem",
        "state.key",
        "keys/isd.keys",
        "mno-tsm.toml",
        "operator.toml",
    ] {
        assert_eq!(mode(&mno.join(private)), 0o600, "{private}");
    }
    assert_eq!(
        std::fs::read(mno.join("sp-tsm.pub.pem")).unwrap(),
        std::fs::read(sp.join("tsm.pub.pem")).unwrap()
    );
    let asked = Mutex::new(Vec::new());
    let keys = |name: &str, kvn: u8, scheme: Diversification| {
        asked.lock().unwrap().push((name.to_string(), kvn, scheme));
        file_keys(name, kvn, scheme)
    };
    let loaded = setup::load_mno(&mno.join("mno-tsm.toml"), &Overrides::default(), &keys).unwrap();
    assert_eq!(
        *asked.lock().unwrap(),
        vec![("isd".to_string(), 0x30, Diversification::None)]
    );
    assert_eq!(loaded.config.operators.len(), 1);
    assert!(
        loaded.config.providers.is_empty(),
        "no provider's keys at the MNO-TSM"
    );
    let hosted = &loaded.config.hosted[&tsm_protocol::PartyId::new("sp:kagi-bank").unwrap()];
    assert_eq!(hosted.sp_tsm, sp_tsm);
    assert_eq!(hosted.sd_aid, hex::decode("A00000015153505001").unwrap());
    assert_eq!(
        loaded.database,
        mno.join("mno-tsm.db").display().to_string()
    );
    // The SP-TSM with the link appended: it knows the MNO-TSM, still without issuer keys.
    let link = std::fs::read_to_string(mno.join("sp-tsm-link.toml")).unwrap();
    let mut text = std::fs::read_to_string(sp.join("tsm.toml")).unwrap();
    text.push_str(&link);
    std::fs::write(sp.join("tsm.toml"), text).unwrap();
    let sp_loaded = setup::load(&sp.join("tsm.toml"), &Overrides::default(), &file_keys).unwrap();
    let m = sp_loaded.config.mno.first().expect("the MNO-TSM link");
    assert_eq!(m.party.0, setup::MNO_TSM_PARTY);
    assert_eq!(m.url, "http://127.0.0.1:9");
    assert!(sp_loaded.config.operators.is_empty());
    std::fs::remove_dir_all(&base).unwrap();
}
