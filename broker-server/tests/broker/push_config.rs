//! Push mode's client identity in `broker.toml`: both files or neither, the key file
//! readable by its owner only (else a clear refusal at start), and the certificate and key
//! read into the broker.

use super::*;

#[test]
#[cfg(unix)]
fn the_push_client_key_must_be_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let d = dir("push-config");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("pki")).unwrap();
    let ca = TestCa::new("push config CA").unwrap();
    std::fs::write(
        d.join("pki/auth-ca.crt.pem"),
        der::EncodePem::to_pem(ca.certificate(), der::pem::LineEnding::LF).unwrap(),
    )
    .unwrap();
    broker_server::setup::init(&d.join("b"), "127.0.0.1:0", &d.join("pki"), None, true).unwrap();
    let tls = test_pki::tls::TlsCa::new("broker clients").unwrap();
    let (cert, key) = tls
        .issue("broker:kagi", &[], &[], test_pki::tls::Usage::Client, 1)
        .unwrap();
    std::fs::write(d.join("b/push.crt.pem"), cert).unwrap();
    std::fs::write(d.join("b/push.key.pem"), key).unwrap();
    let toml = d.join("b/broker.toml");
    let base = std::fs::read_to_string(&toml).unwrap();
    let keys = || -> Result<Arc<dyn broker_server::Envelope>, String> {
        Ok(Arc::new(FileEnvelope::open_dir(&d.join("b/keys")).unwrap()))
    };
    let with = |lines: &str| {
        // Top-level keys go before the first table.
        let (head, tables) = base.split_once("[[admin]]").unwrap();
        std::fs::write(&toml, format!("{head}{lines}\n[[admin]]{tables}")).unwrap();
        broker_server::setup::load(&toml, &[], &keys)
    };
    let both = "push_client_cert = \"push.crt.pem\"\npush_client_key = \"push.key.pem\"\n";
    let set_mode = |m: u32| {
        std::fs::set_permissions(d.join("b/push.key.pem"), std::fs::Permissions::from_mode(m))
            .unwrap()
    };
    set_mode(0o644);
    let e = with(both).err().expect("a key others may read is refused");
    assert!(e.to_string().contains("chmod 600"), "{e}");
    set_mode(0o600);
    let loaded = with(both).unwrap();
    assert!(loaded.push.is_some());
    let e = with("push_client_cert = \"push.crt.pem\"\n")
        .err()
        .expect("a certificate without its key");
    assert!(e.to_string().contains("go together"), "{e}");
    assert!(with("").unwrap().push.is_none());
    std::fs::write(d.join("b/push.crt.pem"), "not a certificate").unwrap();
    let e = with(both).err().expect("no certificate");
    assert!(e.to_string().contains("push client certificate"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}
