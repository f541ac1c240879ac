//! Keys: `KeyBuilder.buildKey`, the methods of the key interfaces, `KeyPair`.

use super::prim::{self, CErr};
use super::{KeyState, comp};
use crate::api;
use crate::heap::{NativeState, Obj};
use crate::interp::{Flow, Res};
use crate::link::ClassId;
use crate::native::Ret;
use crate::{Persist, Vm};

/// The persistent key type of a `KeyBuilder.TYPE_*` (transient variants are kept in
/// persistent memory here), with its interface.
fn key_type(t: u8) -> Option<(u8, &'static str)> {
    let base = match t {
        1..=3 => 3,
        4 => 4,
        5 | 22 | 23 => 5,
        6 | 24 | 25 => 6,
        11 => 11,
        12 | 30 | 31 => 12,
        13..=15 => 15,
        19..=21 => 21,
        _ => return None,
    };
    let class = match base {
        3 => "javacard.security.DESKey",
        4 => "javacard.security.RSAPublicKey",
        5 => "javacard.security.RSAPrivateKey",
        6 => "javacard.security.RSAPrivateCrtKey",
        11 => "javacard.security.ECPublicKey",
        12 => "javacard.security.ECPrivateKey",
        15 => "javacard.security.AESKey",
        _ => "javacard.security.HMACKey",
    };
    Some((base, class))
}

fn size_ok(ktype: u8, bits: i16) -> bool {
    match ktype {
        3 => matches!(bits, 64 | 128 | 192),
        4..=6 => (512..=4096).contains(&bits) && (bits as u16).is_multiple_of(8),
        11 | 12 => matches!(bits, 256 | 384 | 521),
        15 => matches!(bits, 128 | 192 | 256),
        21 => bits > 0,
        _ => false,
    }
}

/// Which components make a key of `ktype` initialised.
pub(crate) fn initialized(k: &KeyState) -> bool {
    let has = |ids: &[u8]| ids.iter().all(|i| k.get(*i).is_some_and(|b| !b.is_empty()));
    let domain = [comp::FIELD, comp::A, comp::B, comp::G, comp::R];
    match k.ktype {
        4 | 5 => has(&[comp::N, comp::E]),
        6 => has(&[comp::P, comp::Q, comp::DP, comp::DQ, comp::PQ]),
        11 => has(&domain) && has(&[comp::W]),
        12 => has(&domain) && has(&[comp::S]),
        _ => has(&[comp::KEY]),
    }
}

impl Vm {
    pub(crate) fn crypto_err(&mut self, e: CErr) -> Flow {
        self.throw_api("javacard.security.CryptoException", e as i16)
    }

    /// A new persistent API object of class `name` with native state `n`.
    pub(crate) fn new_native(&mut self, name: &str, n: NativeState) -> Res<u16> {
        let class = api::class_by_name(name)
            .ok_or_else(|| Flow::Fatal(format!("{name} is not in the API")))?
            as u16;
        let h = self
            .heap
            .alloc(Obj::Instance {
                class: ClassId::Api(class),
                cells: Vec::new(),
                reason: 0,
                native: n,
            })
            .ok_or_else(|| Flow::Fatal("out of object handles".into()))?;
        self.touch(h);
        self.meta_dirty = true;
        Ok(h)
    }

    /// `KeyBuilder.buildKey(type, bits, externalAccess)`.
    pub(crate) fn build_key(&mut self, t: i16, bits: i16) -> Res<Ret> {
        let Some((ktype, class)) = u8::try_from(t).ok().and_then(key_type) else {
            return Err(self.crypto_err(CErr::NoSuchAlgorithm));
        };
        if !size_ok(ktype, bits) {
            return Err(self.crypto_err(CErr::NoSuchAlgorithm));
        }
        let k = KeyState::new(ktype, t as u8, bits as u16);
        Ok(Ret::Word(
            self.new_native(class, NativeState::Key(k))? as i16
        ))
    }

    /// The key state of object `h` (a copy; the copy zeroizes itself when dropped).
    pub(crate) fn key_of(&mut self, h: i16) -> Res<KeyState> {
        match self.heap.objects.get(&(h as u16)) {
            Some(Obj::Instance {
                native: NativeState::Key(k),
                ..
            }) => Ok(k.clone()),
            None => Err(self.throw_api("java.lang.NullPointerException", 0)),
            Some(_) => Err(self.crypto_err(CErr::IllegalValue)),
        }
    }

    fn key_mut(&mut self, h: i16) -> Option<&mut KeyState> {
        match self.heap.objects.get_mut(&(h as u16)) {
            Some(Obj::Instance {
                native: NativeState::Key(k),
                ..
            }) => Some(k),
            _ => None,
        }
    }

    fn put_out(&mut self, dst: i16, off: i16, v: &[u8]) -> Res<()> {
        let dl = self.bytes_of(dst)?.len();
        let w = self.range(dl, off, v.len() as i16)?;
        self.bytes_of(dst)?[w].copy_from_slice(v);
        self.touch(dst as u16);
        Ok(())
    }

    fn set_comp(&mut self, h: i16, id: u8, buf: i16, off: i16, n: i16) -> Res<()> {
        let b = self.bytes_of(buf)?.clone();
        let r = self.range(b.len(), off, n)?;
        let k = self.key_of(h)?;
        let v = &b[r];
        // Values longer than the key size are refused as a card does.
        let limit = match id {
            comp::N | comp::E => usize::from(k.bits).div_ceil(8),
            comp::P | comp::Q | comp::DP | comp::DQ | comp::PQ => usize::from(k.bits).div_ceil(16),
            comp::G | comp::W => 1 + 2 * usize::from(k.bits).div_ceil(8),
            _ => usize::from(k.bits).div_ceil(8) + 1,
        };
        if v.len() > limit.max(1) && id != comp::KEY {
            return Err(self.crypto_err(CErr::IllegalValue));
        }
        if let Some(k) = self.key_mut(h) {
            k.set(id, v);
        }
        self.forget_key(h as u16);
        self.touch(h as u16);
        Ok(())
    }

    fn get_comp(&mut self, h: i16, id: u8, buf: i16, off: i16) -> Res<Ret> {
        let k = self.key_of(h)?;
        let Some(v) = k.get(id) else {
            return Err(self.crypto_err(CErr::Uninitialized));
        };
        let v = v.to_vec();
        self.put_out(buf, off, &v)?;
        Ok(Ret::Word(v.len() as i16))
    }

    /// A method of a key interface on key object `a[0]`.
    pub(crate) fn key_method(&mut self, name: &str, desc: &str, a: &[i16]) -> Res<Option<Ret>> {
        let arg = |i: usize| a.get(i).copied().unwrap_or(0);
        let h = arg(0);
        let id = match name.get(3..).unwrap_or("") {
            "Modulus" => comp::N,
            "Exponent" => comp::E,
            "P" => comp::P,
            "Q" => comp::Q,
            "DP1" => comp::DP,
            "DQ1" => comp::DQ,
            "PQ" => comp::PQ,
            "FieldFP" | "Field" => comp::FIELD,
            "A" => comp::A,
            "B" => comp::B,
            "G" => comp::G,
            "R" => comp::R,
            "W" => comp::W,
            "S" => comp::S,
            "Key" => comp::KEY,
            _ => 0,
        };
        Ok(Some(match (name, desc) {
            ("clearKey", _) => {
                self.key_of(h)?;
                if let Some(k) = self.key_mut(h) {
                    k.clear();
                }
                self.forget_key(h as u16);
                self.touch(h as u16);
                Ret::Void
            }
            ("getSize", _) => Ret::Word(self.key_of(h)?.bits as i16),
            ("getType", _) => Ret::Word(i16::from(self.key_of(h)?.asked)),
            ("isInitialized", _) => Ret::Word(i16::from(initialized(&self.key_of(h)?))),
            ("setK", "(S)V") => {
                let k = arg(1).to_be_bytes();
                self.key_of(h)?;
                if let Some(key) = self.key_mut(h) {
                    key.set(comp::K, &k);
                }
                self.touch(h as u16);
                Ret::Void
            }
            ("getK", "()S") => {
                let k = self.key_of(h)?;
                match k.get(comp::K) {
                    Some([x, y]) => Ret::Word(i16::from_be_bytes([*x, *y])),
                    _ => return Err(self.crypto_err(CErr::Uninitialized)),
                }
            }
            ("setKey", "([BS)V") => {
                // AES and DES keys take their size in bytes from the key.
                let n = (self.key_of(h)?.bits / 8) as i16;
                self.set_comp(h, comp::KEY, arg(1), arg(2), n)?;
                Ret::Void
            }
            ("getKey", "([BS)B") => self.get_comp(h, comp::KEY, arg(1), arg(2))?,
            ("setFieldF2M", _) => return Err(self.crypto_err(CErr::NoSuchAlgorithm)),
            ("copyDomainParametersFrom", _) => {
                let src = self.key_of(arg(1))?;
                self.key_of(h)?;
                if let Some(k) = self.key_mut(h) {
                    for id in [comp::FIELD, comp::A, comp::B, comp::G, comp::R, comp::K] {
                        if let Some(v) = src.get(id) {
                            k.set(id, v);
                        }
                    }
                }
                self.touch(h as u16);
                Ret::Void
            }
            (n, "([BSS)V") if n.starts_with("set") && id != 0 => {
                self.set_comp(h, id, arg(1), arg(2), arg(3))?;
                Ret::Void
            }
            (n, "([BS)S") if n.starts_with("get") && id != 0 => {
                self.get_comp(h, id, arg(1), arg(2))?
            }
            _ => return Ok(None),
        }))
    }

    /// `new KeyPair(alg, bits)`: makes its two keys.
    pub(crate) fn key_pair_new(&mut self, this: i16, alg: i16, bits: i16) -> Res<Ret> {
        let (pt, st) = match alg {
            1 => (4, 5),
            2 => (4, 6),
            5 => (11, 12),
            _ => return Err(self.crypto_err(CErr::NoSuchAlgorithm)),
        };
        let public = match self.build_key(pt, bits)? {
            Ret::Word(h) => h as u16,
            _ => 0,
        };
        let private = match self.build_key(st, bits)? {
            Ret::Word(h) => h as u16,
            _ => 0,
        };
        self.set_pair(this, alg as u8, bits as u16, public, private);
        Ok(Ret::Void)
    }

    pub(crate) fn set_pair(&mut self, this: i16, alg: u8, bits: u16, public: u16, private: u16) {
        if let Some(Obj::Instance { native, .. }) = self.heap.objects.get_mut(&(this as u16)) {
            *native = NativeState::Pair {
                alg,
                bits,
                public,
                private,
            };
        }
        self.touch(this as u16);
    }

    /// `KeyPair` instance methods.
    pub(crate) fn key_pair_method(
        &mut self,
        _p: &mut dyn Persist,
        name: &str,
        a: &[i16],
    ) -> Res<Option<Ret>> {
        let this = a.first().copied().unwrap_or(0);
        let (public, private) = match self.heap.objects.get(&(this as u16)) {
            Some(Obj::Instance {
                native:
                    NativeState::Pair {
                        public, private, ..
                    },
                ..
            }) => (*public, *private),
            None => return Err(self.throw_api("java.lang.NullPointerException", 0)),
            _ => return Err(self.crypto_err(CErr::IllegalValue)),
        };
        Ok(Some(match name {
            "getPublic" => Ret::Word(public as i16),
            "getPrivate" => Ret::Word(private as i16),
            "genKeyPair" => {
                self.gen_key_pair(public as i16, private as i16)?;
                Ret::Void
            }
            _ => return Ok(None),
        }))
    }

    fn gen_key_pair(&mut self, public: i16, private: i16) -> Res<()> {
        let pk = self.key_of(public)?;
        let sk = self.key_of(private)?;
        match (pk.ktype, sk.ktype) {
            (4, 5 | 6) => {
                self.charge(crate::CardOp::RsaKeyGen { bits: sk.bits });
                let [n, e, p, q, dp, dq, qinv] =
                    prim::rsa_generate(usize::from(sk.bits)).map_err(|e| self.crypto_err(e))?;
                if let Some(k) = self.key_mut(public) {
                    k.set(comp::N, &n);
                    k.set(comp::E, &e);
                }
                if let Some(k) = self.key_mut(private) {
                    k.clear();
                    if k.ktype == 6 {
                        for (id, v) in [
                            (comp::P, &p),
                            (comp::Q, &q),
                            (comp::DP, &dp),
                            (comp::DQ, &dq),
                            (comp::PQ, &qinv),
                            (comp::CRT_E, &e),
                        ] {
                            k.set(id, v);
                        }
                    } else {
                        // A modulus/exponent private key: d from the CRT parts is not kept by
                        // the generator; refuse rather than guess.
                        return Err(self.crypto_err(CErr::NoSuchAlgorithm));
                    }
                }
            }
            (11, 12) => {
                self.charge(crate::CardOp::EcKeyGen { bits: sk.bits });
                // Domain parameters: from either key (the public one's win, as set first).
                let src = if pk.get(comp::FIELD).is_some() {
                    &pk
                } else {
                    &sk
                };
                let params = [comp::FIELD, comp::A, comp::B, comp::G, comp::R]
                    .map(|id| src.get(id).unwrap_or(&[]).to_vec());
                let Some(curve) = prim::curve_of(params.each_ref().map(|v| v.as_slice())) else {
                    return Err(self.crypto_err(CErr::IllegalValue));
                };
                let (s, w) = prim::ec_generate(curve).map_err(|e| self.crypto_err(e))?;
                let kk = src.get(comp::K).map(<[u8]>::to_vec);
                for (h, id, v) in [(public, comp::W, w), (private, comp::S, s)] {
                    if let Some(k) = self.key_mut(h) {
                        for (pid, pv) in [comp::FIELD, comp::A, comp::B, comp::G, comp::R]
                            .iter()
                            .zip(params.iter())
                        {
                            k.set(*pid, pv);
                        }
                        if let Some(kk) = &kk {
                            k.set(comp::K, kk);
                        }
                        k.set(id, &v);
                    }
                }
            }
            _ => return Err(self.crypto_err(CErr::IllegalValue)),
        }
        self.forget_key(private as u16);
        self.touch(public as u16);
        self.touch(private as u16);
        Ok(())
    }

    /// The raw RSA private operation of key object `h`.
    pub(crate) fn rsa_private(
        &mut self,
        h: u16,
        k: &KeyState,
        input: &[u8],
    ) -> Result<Vec<u8>, CErr> {
        self.charge(crate::CardOp::RsaPrivate { bits: k.bits });
        match k.ktype {
            5 => prim::modpow(
                input,
                k.get(comp::E).ok_or(CErr::Uninitialized)?,
                k.get(comp::N).ok_or(CErr::Uninitialized)?,
            ),
            6 => prim::rsa_crt(self.crt_key_of(h, k)?, input),
            _ => Err(CErr::IllegalValue),
        }
    }

    /// The RSA-CRT key of private key object `h` ready for use (made once, kept while its
    /// primes stay the same).
    pub(crate) fn crt_key_of(&mut self, h: u16, k: &KeyState) -> Result<&rsa::PrivateKey, CErr> {
        if k.ktype != 6 {
            return Err(CErr::NoSuchAlgorithm);
        }
        let p = k.get(comp::P).ok_or(CErr::Uninitialized)?;
        let q = k.get(comp::Q).ok_or(CErr::Uninitialized)?;
        let mut id = p.to_vec();
        id.extend_from_slice(q);
        let id = super::Secret(id);
        if self.crt_cache.get(&h).is_none_or(|(c, _)| !c.is(&id.0)) {
            let dp = k.get(comp::DP).ok_or(CErr::Uninitialized)?;
            let key = prim::crt_key(p, q, dp, k.get(comp::CRT_E))?;
            self.crt_cache.insert(h, (id, Box::new(key)));
        }
        Ok(&self.crt_cache.get(&h).ok_or(CErr::Uninitialized)?.1)
    }

    /// Drops the ready-made primitives of key object `h` (its components changed).
    pub(crate) fn forget_key(&mut self, h: u16) {
        self.crt_cache.remove(&h);
        self.ec_cache.remove(&h);
    }

    /// ECDSA with the private key object `h` on its curve, over a hash; DER out.
    pub(crate) fn ec_sign(&mut self, h: u16, k: &KeyState, hash: &[u8]) -> Result<Vec<u8>, CErr> {
        self.charge(crate::CardOp::EcSign { bits: k.bits });
        let s = k.get(comp::S).ok_or(CErr::Uninitialized)?;
        // A key made ready before: only P-256 keys are kept, and any change of the key's
        // components (or a reload) drops them, so its curve was checked then.
        if let Some((c, key)) = self.ec_cache.get(&h)
            && c.is(s)
        {
            return prim::p256_sign_with(key, hash);
        }
        match key_curve(k) {
            Some(prim::Curve::P256) => {}
            Some(c) => return prim::ec_sign_uncached(c, s, hash),
            None => return Err(CErr::IllegalValue),
        }
        if self.ec_cache.get(&h).is_none_or(|(c, _)| !c.is(s)) {
            let key = prim::p256_key(s)?;
            self.ec_cache
                .insert(h, (super::Secret(s.to_vec()), Box::new(key)));
        }
        let key = &self.ec_cache.get(&h).ok_or(CErr::Uninitialized)?.1;
        prim::p256_sign_with(key, hash)
    }

    /// The raw RSA public operation of a public key.
    pub(crate) fn rsa_public(k: &KeyState, input: &[u8]) -> Result<Vec<u8>, CErr> {
        prim::modpow(
            input,
            k.get(comp::E).ok_or(CErr::Uninitialized)?,
            k.get(comp::N).ok_or(CErr::Uninitialized)?,
        )
    }
}

/// The curve of an EC key's domain parameters.
pub(crate) fn key_curve(k: &KeyState) -> Option<prim::Curve> {
    let p = [comp::FIELD, comp::A, comp::B, comp::G, comp::R].map(|id| k.get(id).unwrap_or(&[]));
    prim::curve_of(p)
}
