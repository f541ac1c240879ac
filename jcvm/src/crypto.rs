//! `javacard.security` and `javacardx.crypto` natively in Rust: keys (`KeyBuilder`, the key
//! interfaces), `KeyPair`, `Signature`, `Cipher`, `MessageDigest`, `RandomData` and
//! `KeyAgreement`, over RustCrypto ([`prim`]). Keys are persistent objects whose material is
//! zeroized when dropped. An algorithm kagi does not implement throws
//! `CryptoException.NO_SUCH_ALGORITHM` to the applet, as a card without it does.
//!
//! Implemented: RSA 512–4096 (modulus/exponent and CRT keys; PKCS#1 v1.5 signatures with
//! SHA-1/224/256/384/512, `Cipher` PKCS#1 and NOPAD), EC over P-256 (parameters set by the
//! applet are recognised by value; ECDSA with SHA-1/224/256/384/512 and precomputed hashes,
//! DER signatures; ECDH), AES 128/192/256 and DES/3DES ECB/CBC NOPAD, AES-MAC, HMAC
//! SHA-1/256/384/512, SHA-1/SHA-2 digests, random data.

mod engine;
mod keys;
pub(crate) mod prim;
pub(crate) mod state;

pub(crate) use state::comp;
pub use state::{Engine, EngineKind, KeyState, Secret};

impl crate::Vm {
    /// A method of `javacard.security` / `javacardx.crypto`; `None` when kagi has no such
    /// native (the caller reports the unsupported method).
    pub(crate) fn crypto_native(
        &mut self,
        p: &mut dyn crate::Persist,
        cname: &str,
        m: &crate::api::ApiMethod,
        a: &[i16],
    ) -> crate::interp::Res<Option<crate::native::Ret>> {
        use crate::heap::{NativeState, Obj};
        if !(cname.starts_with("javacard.security.") || cname.starts_with("javacardx.crypto.")) {
            return Ok(None);
        }
        let arg = |i: usize| a.get(i).copied().unwrap_or(0);
        Ok(Some(match (cname, m.name, m.descriptor) {
            ("javacard.security.KeyBuilder", "buildKey", "(BSZ)Ljavacard/security/Key;") => {
                self.build_key(arg(0), arg(1))?
            }
            ("javacard.security.KeyBuilder", "buildKey", "(BBSZ)Ljavacard/security/Key;") => {
                // KeyBuilder.ALG_TYPE_* → TYPE_*.
                let t = match arg(0) {
                    1 => 3,
                    2 => 15,
                    7 => 11,
                    8 => 12,
                    9 => 21,
                    11 => 4,
                    12 => 5,
                    13 => 6,
                    _ => 0,
                };
                self.build_key(t, arg(2))?
            }
            ("javacard.security.KeyPair", "<init>", "(BS)V") => {
                self.key_pair_new(arg(0), arg(1), arg(2))?
            }
            ("javacard.security.KeyPair", "<init>", _) => {
                let (pk, sk) = (self.key_of(arg(1))?, self.key_of(arg(2))?);
                let alg = match (pk.ktype, sk.ktype) {
                    (4, 5) => 1,
                    (4, 6) => 2,
                    (11, 12) => 5,
                    _ => return Err(self.crypto_err(prim::CErr::IllegalValue)),
                };
                self.set_pair(arg(0), alg, pk.bits, arg(1) as u16, arg(2) as u16);
                crate::native::Ret::Void
            }
            ("javacard.security.KeyPair", name, _) => {
                return self.key_pair_method(p, name, a);
            }
            (_, "getInstance" | "getInitializedMessageDigestInstance", desc) => {
                self.engine_instance(cname, desc, a)?
            }
            (_, name, desc) => match self.heap.objects.get(&(arg(0) as u16)) {
                Some(Obj::Instance {
                    native: NativeState::Key(_),
                    ..
                }) => return self.key_method(name, desc, a),
                Some(Obj::Instance {
                    native: NativeState::Engine(_),
                    ..
                }) => return self.engine_method(name, desc, a),
                None => return Err(self.throw_api("java.lang.NullPointerException", 0)),
                _ => return Ok(None),
            },
        }))
    }
}
