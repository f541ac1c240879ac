//! Engines: `Signature`, `Cipher`, `MessageDigest`, `RandomData`, `KeyAgreement`.

use super::prim::{self, CErr};
use super::{Engine, EngineKind, KeyState, Secret, comp, keys::initialized};
use crate::Vm;
use crate::heap::{NativeState, Obj};
use crate::interp::Res;
use crate::native::Ret;

/// `Signature.ALG_*` → (cipher, digest, padding).
fn signature_alg(alg: u8) -> Option<(u8, u8, u8)> {
    Some(match alg {
        10 => (3, 1, 7),
        39 => (3, 7, 7),
        40 => (3, 4, 7),
        41 => (3, 5, 7),
        42 => (3, 6, 7),
        21 => (3, 1, 8),
        44 => (3, 4, 8),
        45 => (3, 5, 8),
        46 => (3, 6, 8),
        17 => (5, 1, 0),
        37 => (5, 7, 0),
        33 => (5, 4, 0),
        34 => (5, 5, 0),
        38 => (5, 6, 0),
        18 => (6, 0, 1),
        24 => (7, 1, 0),
        25 => (7, 4, 0),
        26 => (7, 5, 0),
        27 => (7, 6, 0),
        _ => return None,
    })
}

/// `Cipher.ALG_*` → (cipher, padding).
fn cipher_alg(alg: u8) -> Option<(u8, u8)> {
    Some(match alg {
        10 => (7, 7),
        12 => (7, 1),
        15 => (7, 9),
        13 | 18 | 20 => (1, 1),
        14 | 19 | 21 => (2, 1),
        1 => (3, 1),
        5 => (4, 1),
        _ => return None,
    })
}

const MODE_SIGN: u8 = 1;
const MODE_DECRYPT: u8 = 1;

impl Vm {
    /// `getInstance` of an engine class (`cname`) with the descriptor `desc`.
    pub(crate) fn engine_instance(&mut self, cname: &str, desc: &str, a: &[i16]) -> Res<Ret> {
        let arg = |i: usize| a.get(i).copied().unwrap_or(0) as u8;
        let mut e = Engine::default();
        let ok = match (cname, desc) {
            ("javacard.security.Signature", "(BZ)Ljavacard/security/Signature;") => {
                e.kind = EngineKind::Signature;
                e.alg = arg(0);
                signature_alg(e.alg).map(|(c, m, p)| (e.cipher, e.md, e.pad) = (c, m, p))
            }
            ("javacard.security.Signature", _) => {
                e.kind = EngineKind::Signature;
                (e.md, e.cipher, e.pad) = (arg(0), arg(1), arg(2));
                let md_ok = e.md == 0 || prim::digest_len(e.md) > 0;
                ((e.cipher == 3 && (e.pad == 7 || (e.pad == 8 && e.md != 0))) || e.cipher == 5)
                    .then_some(())
                    .filter(|_| md_ok)
            }
            ("javacardx.crypto.Cipher", "(BZ)Ljavacardx/crypto/Cipher;") => {
                e.kind = EngineKind::Cipher;
                e.alg = arg(0);
                cipher_alg(e.alg).map(|(c, p)| (e.cipher, e.pad) = (c, p))
            }
            ("javacardx.crypto.Cipher", _) => {
                e.kind = EngineKind::Cipher;
                (e.cipher, e.pad) = (arg(0), arg(1));
                matches!((e.cipher, e.pad), (7, 1 | 7 | 9) | (1..=4, 1)).then_some(())
            }
            ("javacard.security.MessageDigest", _) => {
                e.kind = EngineKind::Digest;
                e.alg = arg(0);
                e.md = e.alg;
                (prim::digest_len(e.md) > 0).then_some(())
            }
            ("javacard.security.RandomData", _) => {
                e.kind = EngineKind::Random;
                e.alg = arg(0);
                (1..=6).contains(&e.alg).then_some(())
            }
            ("javacard.security.KeyAgreement", _) => {
                e.kind = EngineKind::Agreement;
                e.alg = arg(0);
                matches!(e.alg, 1 | 3).then_some(())
            }
            _ => None,
        };
        if ok.is_none() {
            return Err(self.crypto_err(CErr::NoSuchAlgorithm));
        }
        let class = match e.kind {
            EngineKind::Signature => "javacard.security.Signature",
            EngineKind::Cipher => "javacardx.crypto.Cipher",
            EngineKind::Digest => "javacard.security.MessageDigest",
            EngineKind::Random => "javacard.security.RandomData",
            EngineKind::Agreement => "javacard.security.KeyAgreement",
        };
        Ok(Ret::Word(
            self.new_native(class, NativeState::Engine(e))? as i16
        ))
    }

    fn engine_of(&mut self, h: i16) -> Res<&mut Engine> {
        match self.heap.objects.get(&(h as u16)) {
            Some(Obj::Instance {
                native: NativeState::Engine(_),
                ..
            }) => {}
            None => return Err(self.throw_api("java.lang.NullPointerException", 0)),
            Some(_) => return Err(self.crypto_err(CErr::IllegalValue)),
        }
        match self.heap.objects.get_mut(&(h as u16)) {
            Some(Obj::Instance {
                native: NativeState::Engine(e),
                ..
            }) => Ok(e),
            _ => Err(crate::interp::Flow::Fatal("engine vanished".into())),
        }
    }

    fn input(&mut self, buf: i16, off: i16, n: i16) -> Res<Vec<u8>> {
        let b = self.bytes_of(buf)?.clone();
        let r = self.range(b.len(), off, n)?;
        Ok(b[r].to_vec())
    }

    fn output(&mut self, buf: i16, off: i16, v: &[u8]) -> Res<Ret> {
        let dl = self.bytes_of(buf)?.len();
        let w = self.range(dl, off, v.len() as i16)?;
        self.bytes_of(buf)?[w].copy_from_slice(v);
        self.touch(buf as u16);
        Ok(Ret::Word(v.len() as i16))
    }

    /// An instance method of an engine object `a[0]`; `None` when it is not one.
    pub(crate) fn engine_method(&mut self, name: &str, desc: &str, a: &[i16]) -> Res<Option<Ret>> {
        let arg = |i: usize| a.get(i).copied().unwrap_or(0);
        let this = arg(0);
        let e = self.engine_of(this)?.clone();
        let r = match (name, desc) {
            ("getAlgorithm", _) => Ret::Word(i16::from(e.alg as i8)),
            ("getCipherAlgorithm", _) => Ret::Word(i16::from(e.cipher)),
            ("getPaddingAlgorithm", _) => Ret::Word(i16::from(e.pad)),
            ("getMessageDigestAlgorithm", _) => Ret::Word(i16::from(e.md)),
            ("getLength", "()B") => Ret::Word(prim::digest_len(e.md) as i16),
            ("getLength", "()S") => {
                let k = self.key_of(e.key as i16)?;
                Ret::Word(match e.cipher {
                    3 => (k.bits / 8) as i16,
                    5 => 104,
                    6 => 16,
                    _ => prim::digest_len(e.md) as i16,
                })
            }
            ("reset", _) => {
                self.engine_of(this)?.buf = Secret::default();
                Ret::Void
            }
            ("init", "(Ljavacard/security/Key;B)V" | "(Ljavacard/security/Key;B[BSS)V") => {
                let k = self.key_of(arg(1))?;
                let mode = arg(2) as u8;
                if !initialized(&k) {
                    return Err(self.crypto_err(CErr::Uninitialized));
                }
                let fits = match (e.kind, e.cipher) {
                    (EngineKind::Signature, 3) | (EngineKind::Cipher, 7) => {
                        matches!(k.ktype, 4..=6)
                    }
                    (EngineKind::Signature, 5) => matches!(k.ktype, 11 | 12),
                    (EngineKind::Signature, 6) | (EngineKind::Cipher, 1 | 2) => k.ktype == 15,
                    (EngineKind::Cipher, 3 | 4) => k.ktype == 3,
                    (EngineKind::Signature, 7) => k.ktype == 21,
                    _ => false,
                };
                if !fits || !(1..=2).contains(&mode) {
                    return Err(self.crypto_err(CErr::IllegalValue));
                }
                let iv = if desc.contains("[BSS") {
                    self.input(arg(3), arg(4), arg(5))?
                } else {
                    Vec::new()
                };
                let en = self.engine_of(this)?;
                // Only the key and the mode are persistent: an init with the same ones (an
                // applet re-initialising before each signature) writes nothing.
                let changed = en.key != arg(1) as u16 || en.mode != mode;
                en.key = arg(1) as u16;
                en.mode = mode;
                en.buf = Secret::default();
                en.iv = Secret(iv);
                if changed {
                    self.touch(this as u16);
                }
                Ret::Void
            }
            ("init", "(Ljavacard/security/PrivateKey;)V") => {
                let k = self.key_of(arg(1))?;
                if k.ktype != 12 || !initialized(&k) {
                    return Err(self.crypto_err(CErr::IllegalValue));
                }
                let en = self.engine_of(this)?;
                let changed = en.key != arg(1) as u16;
                en.key = arg(1) as u16;
                if changed {
                    self.touch(this as u16);
                }
                Ret::Void
            }
            ("update", "([BSS)V") => {
                let d = self.input(arg(1), arg(2), arg(3))?;
                self.engine_of(this)?.buf.0.extend_from_slice(&d);
                Ret::Void
            }
            ("update", "([BSS[BS)S") if e.kind == EngineKind::Cipher => {
                let d = self.input(arg(1), arg(2), arg(3))?;
                self.engine_of(this)?.buf.0.extend_from_slice(&d);
                if matches!(e.cipher, 1..=4) {
                    // Block ciphers answer the whole blocks now and keep the rest.
                    let out = self.cipher_blocks(this, false)?;
                    self.output(arg(4), arg(5), &out)?
                } else {
                    Ret::Word(0)
                }
            }
            ("doFinal", "([BSS[BS)S") if e.kind == EngineKind::Digest => {
                let mut d = std::mem::take(&mut self.engine_of(this)?.buf.0);
                d.extend_from_slice(&self.input(arg(1), arg(2), arg(3))?);
                let h = prim::digest(e.md, &d).map_err(|x| self.crypto_err(x))?;
                self.output(arg(4), arg(5), &h)?
            }
            ("doFinal", "([BSS[BS)S") => {
                let d = self.input(arg(1), arg(2), arg(3))?;
                self.engine_of(this)?.buf.0.extend_from_slice(&d);
                let out = self.cipher_final(this)?;
                self.output(arg(4), arg(5), &out)?
            }
            ("sign" | "signPreComputedHash", "([BSS[BS)S") => {
                let d = self.input(arg(1), arg(2), arg(3))?;
                let sig = self
                    .sign(this, d, name == "signPreComputedHash")
                    .map_err(|x| self.crypto_err(x))?;
                self.output(arg(4), arg(5), &sig)?
            }
            ("verify" | "verifyPreComputedHash", "([BSS[BSS)Z") => {
                let d = self.input(arg(1), arg(2), arg(3))?;
                let s = self.input(arg(4), arg(5), arg(6))?;
                let ok = self
                    .verify(this, d, &s, name == "verifyPreComputedHash")
                    .map_err(|x| self.crypto_err(x))?;
                Ret::Word(i16::from(ok))
            }
            ("generateData", "([BSS)V") | ("nextBytes", "([BSS)S") => {
                let n = arg(3);
                let dl = self.bytes_of(arg(1))?.len();
                let w = self.range(dl, arg(2), n)?;
                let mut v = vec![0u8; w.len()];
                prim::random(&mut v).map_err(|x| self.crypto_err(x))?;
                self.bytes_of(arg(1))?[w].copy_from_slice(&v);
                self.touch(arg(1) as u16);
                if name == "nextBytes" {
                    Ret::Word(arg(2).wrapping_add(n))
                } else {
                    Ret::Void
                }
            }
            ("setSeed", _) => Ret::Void,
            ("generateSecret", "([BSS[BS)S") => {
                let w = self.input(arg(1), arg(2), arg(3))?;
                let k = self.key_of(e.key as i16)?;
                let s = k.get(comp::S).unwrap_or(&[]);
                let curve = super::keys::key_curve(&k)
                    .ok_or(CErr::IllegalValue)
                    .map_err(|x| self.crypto_err(x))?;
                self.charge(crate::CardOp::Ecdh { bits: k.bits });
                let mut x = prim::ec_dh(curve, s, &w).map_err(|x| self.crypto_err(x))?;
                if e.alg == 1 {
                    // ALG_EC_SVDP_DH: the SHA-1 of the x coordinate.
                    x = prim::digest(1, &x).map_err(|x| self.crypto_err(x))?;
                }
                self.output(arg(4), arg(5), &x)?
            }
            _ => return Ok(None),
        };
        Ok(Some(r))
    }

    fn engine_key(&mut self, this: i16) -> Result<(Engine, KeyState), CErr> {
        let e = match self.heap.objects.get(&(this as u16)) {
            Some(Obj::Instance {
                native: NativeState::Engine(e),
                ..
            }) => e.clone(),
            _ => return Err(CErr::IllegalValue),
        };
        let k = match self.heap.objects.get(&e.key) {
            Some(Obj::Instance {
                native: NativeState::Key(k),
                ..
            }) => k.clone(),
            _ => return Err(CErr::InvalidInit),
        };
        if !initialized(&k) {
            return Err(CErr::Uninitialized);
        }
        Ok((e, k))
    }

    fn take_buf(&mut self, this: i16, more: Vec<u8>) -> Vec<u8> {
        match self.heap.objects.get_mut(&(this as u16)) {
            Some(Obj::Instance {
                native: NativeState::Engine(e),
                ..
            }) => {
                let mut d = std::mem::take(&mut e.buf.0);
                d.extend_from_slice(&more);
                d
            }
            _ => more,
        }
    }

    fn sign(&mut self, this: i16, data: Vec<u8>, precomputed: bool) -> Result<Vec<u8>, CErr> {
        let (e, k) = self.engine_key(this)?;
        if e.mode != MODE_SIGN {
            return Err(CErr::IllegalUse);
        }
        let data = self.take_buf(this, data);
        let hash = |md: u8, d: &[u8]| -> Result<Vec<u8>, CErr> {
            if precomputed || md == 0 {
                Ok(d.to_vec())
            } else {
                prim::digest(md, d)
            }
        };
        match e.cipher {
            3 if e.pad == 8 => {
                let h = hash(e.md, &data)?;
                self.charge(crate::CardOp::RsaPrivate { bits: k.bits });
                let key = self.crt_key_of(e.key, &k)?;
                prim::pss_sign(key, e.md, &h)
            }
            3 => {
                let h = hash(e.md, &data)?;
                let mut t = if e.md == 0 {
                    Vec::new()
                } else {
                    prim::digest_info_prefix(e.md)?.to_vec()
                };
                t.extend_from_slice(&h);
                let em = prim::pkcs1_pad(1, usize::from(k.bits / 8), &t)?;
                self.rsa_private(e.key, &k, &em)
            }
            5 => {
                let h = hash(e.md, &data)?;
                self.ec_sign(e.key, &k, &h)
            }
            6 => self.aes_mac(&k, &data),
            7 => prim::hmac(e.md, k.get(comp::KEY).ok_or(CErr::Uninitialized)?, &data),
            _ => Err(CErr::NoSuchAlgorithm),
        }
    }

    fn verify(
        &mut self,
        this: i16,
        data: Vec<u8>,
        sig: &[u8],
        precomputed: bool,
    ) -> Result<bool, CErr> {
        let (e, k) = self.engine_key(this)?;
        if e.mode == MODE_SIGN {
            return Err(CErr::IllegalUse);
        }
        let data = self.take_buf(this, data);
        let h = if precomputed || e.md == 0 || matches!(e.cipher, 6 | 7) {
            data.clone()
        } else {
            prim::digest(e.md, &data)?
        };
        Ok(match e.cipher {
            3 if e.pad == 8 => prim::pss_verify(
                k.get(comp::N).ok_or(CErr::Uninitialized)?,
                k.get(comp::E).ok_or(CErr::Uninitialized)?,
                e.md,
                &h,
                sig,
            )?,
            3 => {
                let Ok(em) = Vm::rsa_public(&k, sig) else {
                    return Ok(false);
                };
                let Ok(t) = prim::pkcs1_unpad(1, &em) else {
                    return Ok(false);
                };
                let mut want = if e.md == 0 {
                    Vec::new()
                } else {
                    prim::digest_info_prefix(e.md)?.to_vec()
                };
                want.extend_from_slice(&h);
                t == want
            }
            5 => prim::ec_verify(
                super::keys::key_curve(&k).ok_or(CErr::IllegalValue)?,
                k.get(comp::W).ok_or(CErr::Uninitialized)?,
                &h,
                sig,
            ),
            6 => self.aes_mac(&k, &data)? == sig,
            7 => prim::hmac(e.md, k.get(comp::KEY).ok_or(CErr::Uninitialized)?, &data)? == sig,
            _ => return Err(CErr::NoSuchAlgorithm),
        })
    }

    fn aes_mac(&mut self, k: &KeyState, data: &[u8]) -> Result<Vec<u8>, CErr> {
        if !data.len().is_multiple_of(16) {
            return Err(CErr::IllegalUse);
        }
        let b = prim::Block::new(true, k.get(comp::KEY).ok_or(CErr::Uninitialized)?)?;
        let blocks = u32::try_from(data.len() / 16).unwrap_or(u32::MAX);
        self.charge(crate::CardOp::Aes { blocks });
        let mut d = data.to_vec();
        let mut iv = vec![0u8; 16];
        b.run(true, Some(&mut iv), &mut d);
        Ok(iv)
    }

    /// Block ciphers: processes the whole blocks of the buffered data (all of it when
    /// `last`, which must then be whole blocks).
    fn cipher_blocks(&mut self, this: i16, last: bool) -> Res<Vec<u8>> {
        let (e, k) = self.engine_key(this).map_err(|x| self.crypto_err(x))?;
        let b = prim::Block::new(matches!(e.cipher, 1 | 2), k.get(comp::KEY).unwrap_or(&[]))
            .map_err(|x| self.crypto_err(x))?;
        let n = b.size();
        let en = self.engine_of(this)?;
        let whole = en.buf.0.len() / n * n;
        if last && whole != en.buf.0.len() {
            en.buf = Secret::default();
            return Err(self.crypto_err(CErr::IllegalUse));
        }
        let mut d: Vec<u8> = en.buf.0.drain(..whole).collect();
        let cbc = matches!(e.cipher, 1 | 3);
        let encrypt = e.mode != MODE_DECRYPT;
        if cbc {
            b.run(encrypt, Some(&mut en.iv.0), &mut d);
        } else {
            b.run(encrypt, None, &mut d);
        }
        if n == 16 {
            let blocks = u32::try_from(d.len() / 16).unwrap_or(u32::MAX);
            self.charge(crate::CardOp::Aes { blocks });
        }
        Ok(d)
    }

    fn cipher_final(&mut self, this: i16) -> Res<Vec<u8>> {
        let (e, k) = self.engine_key(this).map_err(|x| self.crypto_err(x))?;
        if matches!(e.cipher, 1..=4) {
            return self.cipher_blocks(this, true);
        }
        let data = self.take_buf(this, Vec::new());
        let kb = usize::from(k.bits / 8);
        let private = matches!(k.ktype, 5 | 6);
        let r = match (e.pad, e.mode, private) {
            // Private key, encrypt: a PKCS#1 v1.5 type 1 block (a raw signature).
            (7, 2, true) => {
                prim::pkcs1_pad(1, kb, &data).and_then(|m| self.rsa_private(e.key, &k, &m))
            }
            (7, 2, false) => prim::pkcs1_pad(2, kb, &data).and_then(|m| Vm::rsa_public(&k, &m)),
            (7, 1, true) => self
                .rsa_private(e.key, &k, &data)
                .and_then(|m| prim::pkcs1_unpad(2, &m)),
            (7, 1, false) => Vm::rsa_public(&k, &data).and_then(|m| prim::pkcs1_unpad(1, &m)),
            (9, 2, false) => prim::oaep_encrypt(
                k.get(comp::N).unwrap_or(&[]),
                k.get(comp::E).unwrap_or(&[]),
                &data,
            ),
            (9, 1, true) => {
                self.charge(crate::CardOp::RsaPrivate { bits: k.bits });
                self.crt_key_of(e.key, &k)
                    .and_then(|key| prim::oaep_decrypt(key, &data))
            }
            (1, _, true) if data.len() == kb => self.rsa_private(e.key, &k, &data),
            (1, _, false) if data.len() == kb => Vm::rsa_public(&k, &data),
            _ => Err(CErr::IllegalUse),
        };
        r.map_err(|x| self.crypto_err(x))
    }
}
