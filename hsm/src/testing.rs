//! Support for tests: run a test's body in a child process that has a private SoftHSM2 token
//! of its own (`scripts/softhsm-init.sh`), so that no test touches a token it did not make.

use std::path::Path;
use std::process::Command;

/// The variable that carries the token's user PIN to the child.
const CHILD_PIN: &str = "KAGI_SOFTHSM_CHILD_PIN";

/// In the child: `Some(user PIN)`, run the test's body. In the parent: makes a private token
/// under the temporary directory, runs the test `test` (its exact name) again as a child with
/// `SOFTHSM2_CONF` pointing at it, panics with the child's output unless it passed, and
/// returns `None`.
pub fn in_private_softhsm(test: &str) -> Option<String> {
    if let Ok(pin) = std::env::var(CHILD_PIN) {
        return Some(pin);
    }
    let dir = std::env::temp_dir().join(format!(
        "kagi-softhsm-{}-{}",
        test.replace("::", "-"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let init = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/softhsm-init.sh"))
        .arg(&dir)
        .output()
        .expect("bash");
    assert!(
        init.status.success(),
        "softhsm-init.sh: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let pin = std::fs::read_to_string(dir.join("user.pin")).expect("the token's user PIN");
    let out = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", test, "--nocapture"])
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
        .env(CHILD_PIN, pin.trim())
        .output()
        .expect("the test binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
    None
}

/// Makes a broker KEK of the older kind in the token: encrypt and decrypt only, no wrap or
/// unwrap rights (records kept inside the HSM cannot move under it). For tests of the
/// rotation guard; [`crate::create_kek`] makes the current kind.
pub fn create_encrypt_only_kek(
    config: &crate::HsmConfig,
    pin: &str,
    id: &str,
) -> crate::Result<()> {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    let (_ctx, _slot, session) = crate::session(&config.module, &config.token, pin, true)?;
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Label(format!("{}{id}", crate::KEK_PREFIX).into_bytes()),
            ],
        )
        .map_err(|e| crate::Error::Hsm(format!("C_GenerateKey (AES-256): {e}")))?;
    Ok(())
}

/// Encrypts `data` with AES-GCM (96-bit `iv`, additional data `aad`, 128-bit tag) under the
/// broker KEK `id` in the token: raw `C_Encrypt`, for tests that build stored records of
/// a given form themselves (the data-key form's wrapped data key is `iv ‖ this`, with the
/// KEK id as additional data).
pub fn encrypt_under_kek(
    config: &crate::HsmConfig,
    pin: &str,
    id: &str,
    iv: [u8; 12],
    aad: &[u8],
    data: &[u8],
) -> crate::Result<Vec<u8>> {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::mechanism::aead::GcmParams;
    use cryptoki::object::Attribute;
    let (_ctx, _slot, session) = crate::session(&config.module, &config.token, pin, false)?;
    let label = format!("{}{id}", crate::KEK_PREFIX).into_bytes();
    let found = session
        .find_objects(&[Attribute::Label(label)])
        .map_err(|e| crate::Error::Hsm(format!("C_FindObjects: {e}")))?;
    let kek = found
        .first()
        .copied()
        .ok_or_else(|| crate::Error::Hsm(format!("no KEK '{id}' in the token")))?;
    let mut iv = iv;
    let params = GcmParams::new(&mut iv, aad, 128.into())
        .map_err(|e| crate::Error::Hsm(format!("GCM parameters: {e}")))?;
    session
        .encrypt(&Mechanism::AesGcm(params), kek, data)
        .map_err(|e| crate::Error::Hsm(format!("C_Encrypt (AES-GCM): {e}")))
}
