//! The state of the crypto objects as the heap keeps it: keys (their components, zeroized
//! when dropped) and engines (Signature, Cipher, … with their buffers), and their records.

use crate::record::R;
use zeroize::Zeroize;

/// Secret bytes, zeroized on drop and never printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub Vec<u8>);

impl Secret {
    /// Whether the secret is `other`, compared in constant time.
    pub fn is(&self, other: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.len() == other.len() && bool::from(self.0.ct_eq(other))
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Key component identifiers.
pub(crate) mod comp {
    /// RSA modulus.
    pub const N: u8 = 1;
    /// RSA exponent (public `e`, or private `d` of a modulus/exponent private key).
    pub const E: u8 = 2;
    /// CRT prime P.
    pub const P: u8 = 3;
    /// CRT prime Q.
    pub const Q: u8 = 4;
    /// CRT exponent d mod (p-1).
    pub const DP: u8 = 5;
    /// CRT exponent d mod (q-1).
    pub const DQ: u8 = 6;
    /// CRT coefficient q⁻¹ mod p.
    pub const PQ: u8 = 7;
    /// The public exponent kept beside a generated CRT key (not visible to the applet).
    pub const CRT_E: u8 = 8;
    /// EC prime field.
    pub const FIELD: u8 = 10;
    /// EC coefficient a.
    pub const A: u8 = 11;
    /// EC coefficient b.
    pub const B: u8 = 12;
    /// EC generator (uncompressed).
    pub const G: u8 = 13;
    /// EC order.
    pub const R: u8 = 14;
    /// EC cofactor (2 bytes).
    pub const K: u8 = 15;
    /// EC public point (uncompressed).
    pub const W: u8 = 16;
    /// EC private scalar.
    pub const S: u8 = 17;
    /// Symmetric key bytes.
    pub const KEY: u8 = 20;
}

/// A key object's state: its `KeyBuilder.TYPE_*` (normalised to the persistent type), size
/// and components.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyState {
    /// `KeyBuilder.TYPE_*` (persistent variant).
    pub ktype: u8,
    /// The type the applet asked for (`getType`).
    pub asked: u8,
    /// Size in bits.
    pub bits: u16,
    comps: Vec<(u8, Secret)>,
}

impl KeyState {
    pub(crate) fn new(ktype: u8, asked: u8, bits: u16) -> Self {
        KeyState {
            ktype,
            asked,
            bits,
            comps: Vec::new(),
        }
    }

    /// A component's bytes.
    pub(crate) fn get(&self, id: u8) -> Option<&[u8]> {
        self.comps
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, s)| s.0.as_slice())
    }

    pub(crate) fn set(&mut self, id: u8, v: &[u8]) {
        match self.comps.iter_mut().find(|(i, _)| *i == id) {
            Some((_, s)) => {
                s.0.zeroize();
                s.0 = v.to_vec();
            }
            None => self.comps.push((id, Secret(v.to_vec()))),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.comps.clear();
    }

    /// When a transient key's material is cleared (`JCSystem.CLEAR_ON_RESET` 1 for the
    /// `TYPE_*_TRANSIENT_RESET` types, `CLEAR_ON_DESELECT` 2 for `TYPE_*_TRANSIENT_DESELECT`);
    /// `None` for a persistent key.
    pub fn transient(&self) -> Option<u8> {
        match self.asked {
            1 | 13 | 19 | 22 | 24 | 30 => Some(1),
            2 | 14 | 20 | 23 | 25 | 31 => Some(2),
            _ => None,
        }
    }

    /// Takes the key material of `old` (the same transient key as the machine held it in
    /// RAM before its persistent state was read again).
    pub(crate) fn keep_material(&mut self, old: &KeyState) {
        if self.transient().is_some() && self.asked == old.asked && self.bits == old.bits {
            self.comps = old
                .comps
                .iter()
                .map(|(i, s)| (*i, Secret(s.0.clone())))
                .collect();
        }
    }

    /// A transient key's record holds its type and size only: its material stays in RAM.
    pub(crate) fn encode(&self, v: &mut Vec<u8>) {
        v.extend_from_slice(&[self.ktype, self.asked]);
        v.extend_from_slice(&self.bits.to_be_bytes());
        let comps: &[(u8, Secret)] = if self.transient().is_some() {
            &[]
        } else {
            &self.comps
        };
        v.push(comps.len() as u8);
        for (id, s) in comps {
            v.push(*id);
            v.extend_from_slice(&(s.0.len() as u16).to_be_bytes());
            v.extend_from_slice(&s.0);
        }
    }

    pub(crate) fn decode(r: &mut R<'_>) -> Option<Self> {
        let mut k = KeyState::new(r.u1()?, r.u1()?, r.u2()?);
        for _ in 0..r.u1()? {
            let id = r.u1()?;
            let n = usize::from(r.u2()?);
            k.comps.push((id, Secret(r.bytes(n)?)));
        }
        Some(k)
    }
}

/// What a crypto engine object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// `javacard.security.Signature`.
    #[default]
    Signature,
    /// `javacardx.crypto.Cipher`.
    Cipher,
    /// `javacard.security.MessageDigest`.
    Digest,
    /// `javacard.security.RandomData`.
    Random,
    /// `javacard.security.KeyAgreement`.
    Agreement,
}

/// An engine object's state: its algorithm (split into cipher, digest and padding), the key
/// it was initialised with and its mode. The data accumulated by `update` and the chaining
/// value live in RAM only, as on a card.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Engine {
    /// Kind.
    pub kind: EngineKind,
    /// The algorithm byte `getAlgorithm` answers.
    pub alg: u8,
    /// Cipher (`Signature.SIG_CIPHER_*`, `Cipher.CIPHER_*`).
    pub cipher: u8,
    /// Message digest (`MessageDigest.ALG_*`, 0 for none).
    pub md: u8,
    /// Padding (`Cipher.PAD_*`).
    pub pad: u8,
    /// The key object (0 before `init`).
    pub key: u16,
    /// `MODE_*`.
    pub mode: u8,
    /// Data given to `update`.
    pub buf: Secret,
    /// The CBC chaining value.
    pub iv: Secret,
}

impl Engine {
    pub(crate) fn encode(&self, v: &mut Vec<u8>) {
        let kind = match self.kind {
            EngineKind::Signature => 1,
            EngineKind::Cipher => 2,
            EngineKind::Digest => 3,
            EngineKind::Random => 4,
            EngineKind::Agreement => 5,
        };
        v.extend_from_slice(&[kind, self.alg, self.cipher, self.md, self.pad]);
        v.extend_from_slice(&self.key.to_be_bytes());
        v.push(self.mode);
    }

    pub(crate) fn decode(r: &mut R<'_>) -> Option<Self> {
        let kind = match r.u1()? {
            1 => EngineKind::Signature,
            2 => EngineKind::Cipher,
            3 => EngineKind::Digest,
            4 => EngineKind::Random,
            5 => EngineKind::Agreement,
            _ => return None,
        };
        Some(Engine {
            kind,
            alg: r.u1()?,
            cipher: r.u1()?,
            md: r.u1()?,
            pad: r.u1()?,
            key: r.u2()?,
            mode: r.u1()?,
            buf: Secret::default(),
            iv: Secret::default(),
        })
    }
}
