//! The cryptographic primitives behind the Java Card API, over RustCrypto: digests, raw RSA
//! with PKCS#1 v1.5 padding, P-256 ECDSA and ECDH, AES and triple DES block modes, HMAC.
//! Pure functions on byte strings; errors are the `CryptoException` reasons.

use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd};
use sha1::Sha1;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// `CryptoException` reasons (JC 3.0.5 API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CErr {
    /// `ILLEGAL_VALUE`.
    IllegalValue = 1,
    /// `UNINITIALIZED_KEY`.
    Uninitialized = 2,
    /// `NO_SUCH_ALGORITHM`.
    NoSuchAlgorithm = 3,
    /// `INVALID_INIT`.
    InvalidInit = 4,
    /// `ILLEGAL_USE`.
    IllegalUse = 5,
}

/// `MessageDigest.ALG_*` digests kagi implements.
pub(crate) fn digest(md: u8, data: &[u8]) -> Result<Vec<u8>, CErr> {
    Ok(match md {
        1 => Sha1::digest(data).to_vec(),
        4 => Sha256::digest(data).to_vec(),
        5 => Sha384::digest(data).to_vec(),
        6 => Sha512::digest(data).to_vec(),
        7 => Sha224::digest(data).to_vec(),
        _ => return Err(CErr::NoSuchAlgorithm),
    })
}

/// Digest length of `MessageDigest.ALG_*` (0 for unknown).
pub(crate) fn digest_len(md: u8) -> usize {
    match md {
        1 => 20,
        4 => 32,
        5 => 48,
        6 => 64,
        7 => 28,
        _ => 0,
    }
}

/// The DER `DigestInfo` prefix of a digest (RFC 8017 §9.2, note 1).
pub(crate) fn digest_info_prefix(md: u8) -> Result<&'static [u8], CErr> {
    Ok(match md {
        1 => &[
            0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
            0x14,
        ],
        7 => &[
            0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x04, 0x05, 0x00, 0x04, 0x1c,
        ],
        4 => &[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ],
        5 => &[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ],
        6 => &[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ],
        _ => return Err(CErr::NoSuchAlgorithm),
    })
}

fn strip(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[i..]
}

fn left_pad(b: &[u8], k: usize) -> Vec<u8> {
    let b = strip(b);
    let mut v = vec![0u8; k.saturating_sub(b.len())];
    v.extend_from_slice(b);
    v
}

/// `base^exp mod modulus` (an odd modulus; `base < modulus`), as `modulus.len()` bytes.
pub(crate) fn modpow(base: &[u8], exp: &[u8], modulus: &[u8]) -> Result<Vec<u8>, CErr> {
    let m = strip(modulus);
    if m.is_empty() || strip(exp).is_empty() {
        return Err(CErr::Uninitialized);
    }
    let n = BoxedUint::from_be_slice_vartime(m);
    let bits = n.bits_precision();
    let n = Option::<Odd<BoxedUint>>::from(Odd::new(n)).ok_or(CErr::IllegalValue)?;
    let b = strip(base);
    if b.len() > m.len() || (b.len() == m.len() && b >= m) {
        return Err(CErr::IllegalValue);
    }
    let b = BoxedUint::from_be_slice(b, bits).map_err(|_| CErr::IllegalValue)?;
    let params = BoxedMontyParams::new_vartime(n);
    let e = BoxedUint::from_be_slice_vartime(strip(exp));
    let r = BoxedMontyForm::new(b, &params).pow(&e).retrieve();
    Ok(left_pad(&r.to_be_bytes(), m.len()))
}

/// An RSA-CRT private key from its Java Card components (the public exponent is not part of
/// them: `e` when the card generated the key, else 65537 — checked by the operation).
pub(crate) fn crt_key(
    p: &[u8],
    q: &[u8],
    dp: &[u8],
    e: Option<&[u8]>,
) -> Result<rsa::PrivateKey, CErr> {
    use rsa::traits::PrivateKeyParts;
    let p = BoxedUint::from_be_slice_vartime(strip(p));
    let q = BoxedUint::from_be_slice_vartime(strip(q));
    let e = BoxedUint::from_be_slice_vartime(strip(e.unwrap_or(&[1, 0, 1])));
    let k = rsa::PrivateKey::from_p_q(p, q, e).map_err(|_| CErr::IllegalValue)?;
    // The applet's DP1 must be the one of this exponent, else the key is not usable here.
    match k.dp() {
        Some(d) if strip(&d.to_be_bytes()) == strip(dp) => Ok(k),
        _ => Err(CErr::IllegalValue),
    }
}

/// The raw RSA private operation with a CRT key, `k` bytes out.
pub(crate) fn rsa_crt(key: &rsa::PrivateKey, input: &[u8]) -> Result<Vec<u8>, CErr> {
    use rsa::traits::PublicKeyParts;
    let k = key.size();
    let n = key.n_bytes();
    let i = strip(input);
    let m = strip(&n);
    if i.len() > m.len() || (i.len() == m.len() && i >= m) {
        return Err(CErr::IllegalValue);
    }
    let c = BoxedUint::from_be_slice(i, key.n_bits_precision()).map_err(|_| CErr::IllegalValue)?;
    let r = rsa::hazmat::rsa_decrypt_and_check(key, None::<&mut getrandom::SysRng>, &c)
        .map_err(|_| CErr::IllegalValue)?;
    Ok(left_pad(&r.to_be_bytes(), k))
}

/// PKCS#1 v1.5 encoding for `k` bytes: block type 1 (signatures, `0xFF` filler) or 2
/// (encryption, random non-zero filler).
pub(crate) fn pkcs1_pad(bt: u8, k: usize, data: &[u8]) -> Result<Vec<u8>, CErr> {
    if data.len() + 11 > k {
        return Err(CErr::IllegalUse);
    }
    let mut v = vec![0, bt];
    let n = k - 3 - data.len();
    if bt == 1 {
        v.extend(std::iter::repeat_n(0xFF, n));
    } else {
        let mut f = vec![0u8; n];
        random(&mut f)?;
        for b in &mut f {
            while *b == 0 {
                let mut x = [0u8; 1];
                random(&mut x)?;
                *b = x[0];
            }
        }
        v.extend_from_slice(&f);
    }
    v.push(0);
    v.extend_from_slice(data);
    Ok(v)
}

/// Removes PKCS#1 v1.5 block type `bt` padding.
pub(crate) fn pkcs1_unpad(bt: u8, em: &[u8]) -> Result<Vec<u8>, CErr> {
    if em.len() < 11 || em[0] != 0 || em[1] != bt {
        return Err(CErr::IllegalValue);
    }
    let sep = em[2..]
        .iter()
        .position(|b| *b == 0)
        .ok_or(CErr::IllegalValue)?
        + 2;
    if sep < 10 || (bt == 1 && em[2..sep].iter().any(|b| *b != 0xFF)) {
        return Err(CErr::IllegalValue);
    }
    Ok(em[sep + 1..].to_vec())
}

/// Random bytes from the operating system.
pub(crate) fn random(out: &mut [u8]) -> Result<(), CErr> {
    getrandom::fill(out).map_err(|_| CErr::IllegalUse)
}

/// Generates an RSA key of `bits`: (n, e, p, q, dp, dq, qinv), big-endian.
pub(crate) fn rsa_generate(bits: usize) -> Result<[Vec<u8>; 7], CErr> {
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    let k = rsa::PrivateKey::new(&mut getrandom::SysRng, bits).map_err(|_| CErr::IllegalValue)?;
    let primes = k.primes();
    let (Some(p), Some(q)) = (primes.first(), primes.get(1)) else {
        return Err(CErr::IllegalValue);
    };
    let half = bits.div_ceil(16);
    let b = |x: &BoxedUint| left_pad(&x.to_be_bytes(), half);
    let (Some(dp), Some(dq), Some(qinv)) = (k.dp(), k.dq(), k.crt_coefficient()) else {
        return Err(CErr::IllegalValue);
    };
    Ok([
        left_pad(&k.n_bytes(), bits.div_ceil(8)),
        strip(&k.e_bytes()).to_vec(),
        b(p.as_ref()),
        b(q.as_ref()),
        b(dp),
        b(dq),
        b(&qinv),
    ])
}

/// The P-256 domain parameters (SEC 2 v2 §2.4.2): p, a, b, G (uncompressed), n.
pub(crate) const P256: [&[u8]; 5] = [
    &hex32(b"ffffffff00000001000000000000000000000000ffffffffffffffffffffffff"),
    &hex32(b"ffffffff00000001000000000000000000000000fffffffffffffffffffffffc"),
    &hex32(b"5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b"),
    &P256_G,
    &hex32(b"ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551"),
];

const P256_G: [u8; 65] = {
    let x = hex32(b"6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296");
    let y = hex32(b"4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5");
    let mut g = [0u8; 65];
    g[0] = 4;
    let mut i = 0;
    while i < 32 {
        g[1 + i] = x[i];
        g[33 + i] = y[i];
        i += 1;
    }
    g
};

const fn hex32(h: &[u8; 64]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nib(h[2 * i]) << 4) | nib(h[2 * i + 1]);
        i += 1;
    }
    out
}

const fn nib(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => 0,
    }
}

/// The P-384 domain parameters (NIST SP 800-186 §G.1.3): p, a, b, G (uncompressed), n.
const P384: [&str; 5] = [
    "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff",
    "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000fffffffc",
    "b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef",
    "04aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab73617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f",
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
];

/// The P-521 domain parameters (NIST SP 800-186 §G.1.4, as `openssl ecparam -name secp521r1
/// -param_enc explicit` prints them): p, a, b, G (uncompressed), n.
const P521: [&str; 5] = [
    "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "01fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffc",
    "0051953eb9618e1c9a1f929a21a0b68540eea2da725b99b315f3b8b489918ef109e156193951ec7e937b1652c0bd3bb1bf073573df883d2c34f1ef451fd46b503f00",
    "0400c6858e06b70404e9cd9e3ecb662395b4429c648139053fb521f828af606b4d3dbaa14b5e77efe75928fe1dc127a2ffa8de3348b3c1856a429bf97e7e31c2e5bd66011839296a789a3bc0045c8a5fb42c7d1bd998f54449579b446817afbd17273e662c97ee72995ef42640c550b9013fad0761353c7086a272c24088be94769fd16650",
    "01fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409",
];

/// The brainpoolP256r1 domain parameters (RFC 5639 §3.4): p, a, b, G (uncompressed), q.
const BP256R1: [&str; 5] = [
    "a9fb57dba1eea9bc3e660a909d838d726e3bf623d52620282013481d1f6e5377",
    "7d5a0975fc2c3057eef67530417affe7fb8055c126dc5c6ce94a4b44f330b5d9",
    "26dc5c6ce94a4b44f330b5d9bbd77cbf958416295cf7e1ce6bccdc18ff8c07b6",
    "048bd2aeb9cb7e57cb2c4b482ffc81b7afb9de27e1e3bd23c23a4453bd9ace3262547ef835c3dac4fd97f8461a14611dc9c27745132ded8e545c1d54c72f046997",
    "a9fb57dba1eea9bc3e660a909d838d718c397aa3b561a6f7901e0e82974856a7",
];

/// The named prime curves kagi recognises from an applet's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Curve {
    /// NIST P-256 (secp256r1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
    /// brainpoolP256r1.
    Bp256,
}

fn unhex(h: &str) -> Vec<u8> {
    h.as_bytes()
        .chunks(2)
        .map(|c| (nib(c[0]) << 4) | nib(c[1]))
        .collect()
}

/// The curve whose domain parameters (field, a, b, G, r) these are (leading zeros ignored).
pub(crate) fn curve_of(params: [&[u8]; 5]) -> Option<Curve> {
    if params
        .iter()
        .zip(P256.iter())
        .all(|(a, b)| strip(a) == strip(b))
    {
        return Some(Curve::P256);
    }
    if params
        .iter()
        .zip(P384.iter())
        .all(|(a, b)| strip(a) == strip(&unhex(b)))
    {
        return Some(Curve::P384);
    }
    for (named, curve) in [(&P521, Curve::P521), (&BP256R1, Curve::Bp256)] {
        if params
            .iter()
            .zip(named.iter())
            .all(|(a, b)| strip(a) == strip(&unhex(b)))
        {
            return Some(curve);
        }
    }
    None
}

/// Key generation, ECDSA over a hash (DER out) and ECDH (x of s·W) on one curve of the
/// RustCrypto `elliptic-curve` 0.14 generation, its scalars `$n` bytes long.
macro_rules! curve_ops {
    ($m:ident, $c:ty, $n:expr) => {
        mod $m {
            use super::{CErr, left_pad};
            use p256::elliptic_curve::Generate;

            pub(crate) fn generate() -> Result<(Vec<u8>, Vec<u8>), CErr> {
                let k = ecdsa::SigningKey::<$c>::try_generate_from_rng(&mut getrandom::SysRng)
                    .map_err(|_| CErr::IllegalUse)?;
                let w = k.verifying_key().to_sec1_point(false).as_bytes().to_vec();
                Ok((left_pad(&k.to_bytes(), $n), w))
            }

            pub(crate) fn sign(s: &[u8], hash: &[u8]) -> Result<Vec<u8>, CErr> {
                use ecdsa::signature::hazmat::PrehashSigner;
                let k = ecdsa::SigningKey::<$c>::from_slice(&left_pad(s, $n))
                    .map_err(|_| CErr::IllegalValue)?;
                let sig: ecdsa::Signature<$c> =
                    k.sign_prehash(hash).map_err(|_| CErr::IllegalValue)?;
                Ok(sig.to_der().as_bytes().to_vec())
            }

            pub(crate) fn verify(w: &[u8], hash: &[u8], der: &[u8]) -> bool {
                use ecdsa::signature::hazmat::PrehashVerifier;
                let (Ok(k), Ok(sig)) = (
                    ecdsa::VerifyingKey::<$c>::from_sec1_bytes(w),
                    ecdsa::Signature::<$c>::from_der(der),
                ) else {
                    return false;
                };
                k.verify_prehash(hash, &sig).is_ok()
            }

            pub(crate) fn dh(s: &[u8], w: &[u8]) -> Result<Vec<u8>, CErr> {
                let sk = p256::elliptic_curve::SecretKey::<$c>::from_slice(&left_pad(s, $n))
                    .map_err(|_| CErr::IllegalValue)?;
                let pk = p256::elliptic_curve::PublicKey::<$c>::from_sec1_bytes(w)
                    .map_err(|_| CErr::IllegalValue)?;
                let shared =
                    p256::elliptic_curve::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
                Ok(shared.raw_secret_bytes().to_vec())
            }
        }
    };
}

curve_ops!(p521_ops, p521::NistP521, 66);
curve_ops!(bp256_ops, bp256::BrainpoolP256r1, 32);

/// ECDSA over a hash on the curves without a key cache (P-384, P-521, brainpoolP256r1).
pub(crate) fn ec_sign_uncached(curve: Curve, s: &[u8], hash: &[u8]) -> Result<Vec<u8>, CErr> {
    match curve {
        Curve::P384 => p384_sign(s, hash),
        Curve::P521 => p521_ops::sign(s, hash),
        Curve::Bp256 => bp256_ops::sign(s, hash),
        Curve::P256 => p256_sign_with(&p256_key(s)?, hash),
    }
}

/// Generates a key on `curve`: (scalar s, uncompressed point W).
pub(crate) fn ec_generate(curve: Curve) -> Result<(Vec<u8>, Vec<u8>), CErr> {
    match curve {
        Curve::P256 => p256_generate(),
        Curve::P384 => {
            use p384::elliptic_curve::Generate;
            let k = p384::ecdsa::SigningKey::try_generate_from_rng(&mut getrandom::SysRng)
                .map_err(|_| CErr::IllegalUse)?;
            let w = k.verifying_key().to_sec1_point(false).as_bytes().to_vec();
            Ok((k.to_bytes().to_vec(), w))
        }
        Curve::P521 => p521_ops::generate(),
        Curve::Bp256 => bp256_ops::generate(),
    }
}

/// ECDSA P-384 over a hash, DER out.
pub(crate) fn p384_sign(s: &[u8], hash: &[u8]) -> Result<Vec<u8>, CErr> {
    use p384::ecdsa::signature::hazmat::PrehashSigner;
    let k =
        p384::ecdsa::SigningKey::from_slice(&left_pad(s, 48)).map_err(|_| CErr::IllegalValue)?;
    let sig: p384::ecdsa::Signature = k.sign_prehash(hash).map_err(|_| CErr::IllegalValue)?;
    Ok(sig.to_der().as_bytes().to_vec())
}

/// Verifies a DER ECDSA signature over a hash on `curve`.
pub(crate) fn ec_verify(curve: Curve, w: &[u8], hash: &[u8], der: &[u8]) -> bool {
    match curve {
        Curve::P256 => p256_verify(w, hash, der),
        Curve::P384 => {
            use p384::ecdsa::signature::hazmat::PrehashVerifier;
            let (Ok(k), Ok(sig)) = (
                p384::ecdsa::VerifyingKey::from_sec1_bytes(w),
                p384::ecdsa::Signature::from_der(der),
            ) else {
                return false;
            };
            k.verify_prehash(hash, &sig).is_ok()
        }
        Curve::P521 => p521_ops::verify(w, hash, der),
        Curve::Bp256 => bp256_ops::verify(w, hash, der),
    }
}

/// ECDH on `curve`: the x coordinate of s·W.
pub(crate) fn ec_dh(curve: Curve, s: &[u8], w: &[u8]) -> Result<Vec<u8>, CErr> {
    match curve {
        Curve::P256 => p256_ecdh(s, w),
        Curve::P384 => {
            let sk =
                p384::SecretKey::from_slice(&left_pad(s, 48)).map_err(|_| CErr::IllegalValue)?;
            let pk = p384::PublicKey::from_sec1_bytes(w).map_err(|_| CErr::IllegalValue)?;
            let shared = p384::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
            Ok(shared.raw_secret_bytes().to_vec())
        }
        Curve::P521 => p521_ops::dh(s, w),
        Curve::Bp256 => bp256_ops::dh(s, w),
    }
}

/// Generates a P-256 key: (scalar s, uncompressed point W).
pub(crate) fn p256_generate() -> Result<(Vec<u8>, Vec<u8>), CErr> {
    use p256::elliptic_curve::Generate;
    let k = p256::ecdsa::SigningKey::try_generate_from_rng(&mut getrandom::SysRng)
        .map_err(|_| CErr::IllegalUse)?;
    let w = k.verifying_key().to_sec1_point(false).as_bytes().to_vec();
    Ok((k.to_bytes().to_vec(), w))
}

/// A P-256 signing key from its scalar.
pub(crate) fn p256_key(s: &[u8]) -> Result<p256::ecdsa::SigningKey, CErr> {
    p256::ecdsa::SigningKey::from_slice(&left_pad(s, 32)).map_err(|_| CErr::IllegalValue)
}

/// ECDSA P-256 over a hash (truncated/left-padded per SEC 1), DER-encoded as Java Card
/// answers it.
pub(crate) fn p256_sign_with(k: &p256::ecdsa::SigningKey, hash: &[u8]) -> Result<Vec<u8>, CErr> {
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    let sig: p256::ecdsa::Signature = k.sign_prehash(hash).map_err(|_| CErr::IllegalValue)?;
    Ok(sig.to_der().as_bytes().to_vec())
}

/// Verifies a DER ECDSA P-256 signature over a hash.
pub(crate) fn p256_verify(w: &[u8], hash: &[u8], der: &[u8]) -> bool {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let (Ok(k), Ok(sig)) = (
        p256::ecdsa::VerifyingKey::from_sec1_bytes(w),
        p256::ecdsa::Signature::from_der(der),
    ) else {
        return false;
    };
    k.verify_prehash(hash, &sig).is_ok()
}

/// ECDH over P-256: the x coordinate of s·W.
pub(crate) fn p256_ecdh(s: &[u8], w: &[u8]) -> Result<Vec<u8>, CErr> {
    let sk = p256::SecretKey::from_slice(&left_pad(s, 32)).map_err(|_| CErr::IllegalValue)?;
    let pk = p256::PublicKey::from_sec1_bytes(w).map_err(|_| CErr::IllegalValue)?;
    let shared = p256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
    Ok(shared.raw_secret_bytes().to_vec())
}

/// A symmetric block cipher by key.
pub(crate) enum Block {
    A128(aes::Aes128),
    A192(aes::Aes192),
    A256(aes::Aes256),
    D2(des::TdesEde2),
    D3(des::TdesEde3),
    D1(des::Des),
}

macro_rules! each_block {
    ($self:expr, $c:ident => $body:expr) => {
        match $self {
            Block::A128($c) => $body,
            Block::A192($c) => $body,
            Block::A256($c) => $body,
            Block::D2($c) => $body,
            Block::D3($c) => $body,
            Block::D1($c) => $body,
        }
    };
}

impl Block {
    /// AES (16/24/32-byte key) or DES (8/16/24-byte key).
    pub(crate) fn new(aes_key: bool, key: &[u8]) -> Result<Block, CErr> {
        use aes::cipher::KeyInit;
        let bad = |_| CErr::IllegalValue;
        Ok(match (aes_key, key.len()) {
            (true, 16) => Block::A128(aes::Aes128::new_from_slice(key).map_err(bad)?),
            (true, 24) => Block::A192(aes::Aes192::new_from_slice(key).map_err(bad)?),
            (true, 32) => Block::A256(aes::Aes256::new_from_slice(key).map_err(bad)?),
            (false, 8) => Block::D1(des::Des::new_from_slice(key).map_err(bad)?),
            (false, 16) => Block::D2(des::TdesEde2::new_from_slice(key).map_err(bad)?),
            (false, 24) => Block::D3(des::TdesEde3::new_from_slice(key).map_err(bad)?),
            _ => return Err(CErr::Uninitialized),
        })
    }

    /// Block size.
    pub(crate) fn size(&self) -> usize {
        match self {
            Block::A128(_) | Block::A192(_) | Block::A256(_) => 16,
            _ => 8,
        }
    }

    fn enc(&self, b: &mut [u8]) {
        use aes::cipher::BlockCipherEncrypt;
        each_block!(self, c => {
            if let Ok(blk) = b.try_into() {
                c.encrypt_block(blk)
            }
        })
    }

    fn dec(&self, b: &mut [u8]) {
        use aes::cipher::BlockCipherDecrypt;
        each_block!(self, c => {
            if let Ok(blk) = b.try_into() {
                c.decrypt_block(blk)
            }
        })
    }

    /// ECB or CBC (with `iv`, updated to chain on) over whole blocks, in place.
    pub(crate) fn run(&self, encrypt: bool, iv: Option<&mut Vec<u8>>, data: &mut [u8]) {
        let n = self.size();
        match iv {
            None => {
                for b in data.chunks_exact_mut(n) {
                    if encrypt { self.enc(b) } else { self.dec(b) }
                }
            }
            Some(iv) => {
                iv.resize(n, 0);
                for b in data.chunks_exact_mut(n) {
                    if encrypt {
                        b.iter_mut().zip(iv.iter()).for_each(|(x, y)| *x ^= y);
                        self.enc(b);
                        iv.copy_from_slice(b);
                    } else {
                        let c = b.to_vec();
                        self.dec(b);
                        b.iter_mut().zip(iv.iter()).for_each(|(x, y)| *x ^= y);
                        iv.copy_from_slice(&c);
                    }
                }
            }
        }
    }
}

/// HMAC with `MessageDigest.ALG_*` `md`.
pub(crate) fn hmac(md: u8, key: &[u8], data: &[u8]) -> Result<Vec<u8>, CErr> {
    use hmac::{KeyInit, Mac};
    macro_rules! mac {
        ($d:ty) => {{
            let mut m = hmac::Hmac::<$d>::new_from_slice(key).map_err(|_| CErr::IllegalValue)?;
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }};
    }
    Ok(match md {
        1 => mac!(Sha1),
        4 => mac!(Sha256),
        5 => mac!(Sha384),
        6 => mac!(Sha512),
        _ => return Err(CErr::NoSuchAlgorithm),
    })
}

macro_rules! by_digest {
    ($md:expr, $d:ident => $body:expr) => {
        match $md {
            1 => {
                type $d = Sha1;
                $body
            }
            4 => {
                type $d = Sha256;
                $body
            }
            5 => {
                type $d = Sha384;
                $body
            }
            6 => {
                type $d = Sha512;
                $body
            }
            _ => Err(CErr::NoSuchAlgorithm),
        }
    };
}

/// RSASSA-PSS (salt as long as the hash, MGF1 with the same hash) over a hash.
pub(crate) fn pss_sign(key: &rsa::PrivateKey, md: u8, hash: &[u8]) -> Result<Vec<u8>, CErr> {
    by_digest!(md, D => key
        .sign_with_rng(&mut getrandom::SysRng, rsa::pss::Pss::<D>::new(), hash)
        .map_err(|_| CErr::IllegalValue))
}

/// Verifies RSASSA-PSS over a hash with the public key (n, e).
pub(crate) fn pss_verify(
    n: &[u8],
    e: &[u8],
    md: u8,
    hash: &[u8],
    sig: &[u8],
) -> Result<bool, CErr> {
    let pk = public_key(n, e)?;
    by_digest!(md, D => Ok(pk.verify(rsa::pss::Pss::<D>::new(), hash, sig).is_ok()))
}

fn public_key(n: &[u8], e: &[u8]) -> Result<rsa::PublicKey, CErr> {
    rsa::PublicKey::new(
        BoxedUint::from_be_slice_vartime(strip(n)),
        BoxedUint::from_be_slice_vartime(strip(e)),
    )
    .map_err(|_| CErr::IllegalValue)
}

/// RSAES-OAEP with SHA-1 and MGF1-SHA-1 (Java Card's `ALG_RSA_PKCS1_OAEP`): encryption with
/// the public key (n, e).
pub(crate) fn oaep_encrypt(n: &[u8], e: &[u8], msg: &[u8]) -> Result<Vec<u8>, CErr> {
    public_key(n, e)?
        .encrypt(&mut getrandom::SysRng, rsa::Oaep::<Sha1>::new(), msg)
        .map_err(|_| CErr::IllegalUse)
}

/// RSAES-OAEP (SHA-1) decryption with a CRT key.
pub(crate) fn oaep_decrypt(key: &rsa::PrivateKey, ct: &[u8]) -> Result<Vec<u8>, CErr> {
    key.decrypt(rsa::Oaep::<Sha1>::new(), ct)
        .map_err(|_| CErr::IllegalValue)
}
