//! The Java Card crypto API (`javacard.security`, `javacardx.crypto`) over the conformance
//! applet's `Crypto` class (`tests/jc/src/kagi/conf/Crypto.java`, INS 18–1E). Every result is
//! checked by an independent computation here (RustCrypto verifiers, published test vectors),
//! never by the VM's own code.

mod common;
use common::*;
use kagi_jcvm::{Answer, Limits, Vm};

const CAP: &str = "tests/jc/conf.cap";
const AID: [u8; 7] = [0xF0, 0x6B, 0x61, 0x67, 0x69, 0x01, 0x01];

fn card() -> (Vm, Mem) {
    let (mut vm, mut mem, _) = installed(CAP, Limits::default());
    assert_eq!(vm.select(&mut mem, &select_cmd(&AID)), Answer::Ok(vec![]));
    (vm, mem)
}

fn run(vm: &mut Vm, mem: &mut Mem, ins: u8, p1: u8, p2: u8, data: &[u8]) -> Vec<u8> {
    match vm.process(mem, &cmd([0x80, ins, p1, p2], data, 256)) {
        Answer::Ok(v) => v,
        other => panic!("expected 9000, got {other:?} ({:?})", vm.last_error()),
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn p256_verify(w: &[u8], msg: &[u8], der: &[u8], sha1: bool) {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use sha2::Digest;
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(w).expect("a P-256 point");
    let sig = p256::ecdsa::Signature::from_der(der).expect("a DER ECDSA signature");
    let h = if sha1 {
        sha1::Sha1::digest(msg).to_vec()
    } else {
        sha2::Sha256::digest(msg).to_vec()
    };
    key.verify_prehash(&h, &sig)
        .expect("the signature verifies");
}

/// The applet sets the P-256 parameters itself, generates a key pair and signs; p256's
/// verifier accepts the DER signature for the public point the applet reports. A flipped
/// message does not verify.
#[test]
fn ecdsa_p256_signatures_verify_with_an_independent_verifier() {
    let (mut vm, mut mem) = card();
    let msg = b"kagi ecdsa message";
    let r = run(&mut vm, &mut mem, 0x18, 0, 0, msg);
    let (w, der) = r.split_at(65);
    assert_eq!(w[0], 4, "uncompressed point");
    p256_verify(w, msg, der, false);
    // SHA-1 (IsoApplet's ALG_ECDSA_SHA) with the same key.
    let r = run(&mut vm, &mut mem, 0x18, 1, 1, msg);
    assert_eq!(&r[..65], w, "the key is kept");
    p256_verify(w, msg, &r[65..], true);
    // The key pair is a persistent object: after power loss it still signs as the same key.
    mem.power_up();
    vm.reset();
    let r = run(&mut vm, &mut mem, 0x18, 1, 0, b"after reset");
    assert_eq!(&r[..65], w);
    p256_verify(w, b"after reset", &r[65..], false);
}

/// RSA-CRT generation on the card and RSA-SHA256-PKCS1 signatures: the rsa crate verifies
/// against the modulus and exponent the applet answers.
#[test]
fn rsa_pkcs1_signatures_verify_with_the_rsa_crate() {
    use rsa::pkcs1v15::Pkcs1v15Sign;
    use sha2::Digest;
    for bits in [1024usize, 2048] {
        let (mut vm, mut mem) = card();
        let msg = b"kagi rsa message";
        let r = run(&mut vm, &mut mem, 0x19, 0, (bits / 256) as u8, msg);
        let el = usize::from(r[0]);
        let e = &r[1..1 + el];
        let k = bits / 8;
        let sig = &r[1 + el..];
        let n = &run(&mut vm, &mut mem, 0x19, 2, 0, &[])[..];
        assert_eq!(n.len(), k);
        assert_eq!(sig.len(), k);
        let pk = rsa::PublicKey::new(
            rsa::BoxedUint::from_be_slice_vartime(n),
            rsa::BoxedUint::from_be_slice_vartime(e),
        )
        .unwrap();
        assert_eq!(e, [1, 0, 1]);
        pk.verify(
            Pkcs1v15Sign::new::<sha2::Sha256>(),
            &sha2::Sha256::digest(msg),
            sig,
        )
        .expect("the signature verifies");
        // Cipher RSA PKCS#1: the public-key ciphertext decrypts with the card's private key.
        let got = run(&mut vm, &mut mem, 0x1E, 0, 0, b"secret");
        assert_eq!(got, b"secret");
    }
}

/// AES-128 ECB: FIPS 197 appendix C.1 and SP 800-38A F.1.1/F.1.2; CBC with a zero IV
/// checked against the aes crate's block function chained by hand.
#[test]
fn aes_matches_fips_197_and_sp_800_38a() {
    let (mut vm, mut mem) = card();
    let mut d = hex("000102030405060708090a0b0c0d0e0f");
    d.extend(hex("00112233445566778899aabbccddeeff"));
    assert_eq!(
        run(&mut vm, &mut mem, 0x1A, 0, 0, &d),
        hex("69c4e0d86a7b0430d8cdb78070b4c55a")
    );
    let key = hex("2b7e151628aed2a6abf7158809cf4f3c");
    let pt = hex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51");
    let ct = hex("3ad77bb40d7a3660a89ecaf32466ef97f5d3d58503b9699de785895a96fdbaaf");
    let mut d = key.clone();
    d.extend(&pt);
    assert_eq!(run(&mut vm, &mut mem, 0x1A, 0, 0, &d), ct);
    let mut d = key.clone();
    d.extend(&ct);
    assert_eq!(run(&mut vm, &mut mem, 0x1A, 1, 0, &d), pt);
    // CBC, zero IV: c1 = E(p1), c2 = E(p2 ^ c1).
    use aes::cipher::{BlockCipherEncrypt, KeyInit};
    let a = aes::Aes128::new_from_slice(&key).unwrap();
    let mut b1: [u8; 16] = pt[..16].try_into().unwrap();
    a.encrypt_block((&mut b1).into());
    let mut b2: [u8; 16] = pt[16..].try_into().unwrap();
    b2.iter_mut().zip(b1.iter()).for_each(|(x, y)| *x ^= y);
    a.encrypt_block((&mut b2).into());
    let mut want = b1.to_vec();
    want.extend(b2);
    let mut d = key.clone();
    d.extend(&pt);
    assert_eq!(run(&mut vm, &mut mem, 0x1A, 0, 1, &d), want);
    let mut d = key;
    d.extend(&want);
    assert_eq!(run(&mut vm, &mut mem, 0x1A, 1, 1, &d), pt);
}

/// MessageDigest over update + doFinal: FIPS 180 "abc" vectors, and sha1/sha2 for more.
#[test]
fn message_digests_match_fips_180() {
    use sha2::Digest;
    let (mut vm, mut mem) = card();
    assert_eq!(
        run(&mut vm, &mut mem, 0x1B, 4, 0, b"abc"),
        hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    assert_eq!(
        run(&mut vm, &mut mem, 0x1B, 1, 0, b"abc"),
        hex("a9993e364706816aba3e25717850c26c9cd0d89d")
    );
    let m: Vec<u8> = (0..200u8).collect();
    assert_eq!(
        run(&mut vm, &mut mem, 0x1B, 5, 0, &m),
        sha2::Sha384::digest(&m).to_vec()
    );
    assert_eq!(
        run(&mut vm, &mut mem, 0x1B, 6, 0, &m),
        sha2::Sha512::digest(&m).to_vec()
    );
}

/// ECDH: the card's shared x with our point equals ours with the card's point.
#[test]
fn ecdh_agrees_with_the_other_side() {
    use p256::elliptic_curve::Generate;
    let (mut vm, mut mem) = card();
    let r = run(&mut vm, &mut mem, 0x18, 0, 0, b"x");
    let card_w = p256::PublicKey::from_sec1_bytes(&r[..65]).unwrap();
    let mine = p256::ecdsa::SigningKey::generate();
    let my_w = mine.verifying_key().to_sec1_point(false);
    let got = run(&mut vm, &mut mem, 0x1C, 0, 0, my_w.as_bytes());
    let want = p256::ecdh::diffie_hellman(mine.as_nonzero_scalar(), card_w.as_affine());
    assert_eq!(got, want.raw_secret_bytes().to_vec());
}

/// An algorithm kagi lacks throws CryptoException.NO_SUCH_ALGORITHM (3) to the applet,
/// which catches it: the command still ends normally.
#[test]
fn an_unsupported_algorithm_throws_no_such_algorithm_to_the_applet() {
    let (mut vm, mut mem) = card();
    assert_eq!(run(&mut vm, &mut mem, 0x1D, 0, 0, &[]), [0, 3]);
}

/// RSA-PSS (SHA-256, salt = hash length) signatures verify with the rsa crate; RSA-OAEP
/// (SHA-1): a ciphertext the rsa crate made for the card's public key decrypts on the card.
#[test]
fn rsa_pss_and_oaep_interoperate_with_the_rsa_crate() {
    use sha2::Digest;
    let (mut vm, mut mem) = card();
    run(&mut vm, &mut mem, 0x19, 0, 4, b"x");
    let n = run(&mut vm, &mut mem, 0x19, 2, 0, &[]);
    let pk = rsa::PublicKey::new(
        rsa::BoxedUint::from_be_slice_vartime(&n),
        rsa::BoxedUint::from_be_slice_vartime(&[1, 0, 1]),
    )
    .unwrap();
    let msg = b"kagi pss message";
    let sig = run(&mut vm, &mut mem, 0x20, 0, 0, msg);
    pk.verify(
        rsa::pss::Pss::<sha2::Sha256>::new(),
        &sha2::Sha256::digest(msg),
        &sig,
    )
    .expect("the PSS signature verifies");
    let ct = pk
        .encrypt(
            &mut rand_core::UnwrapErr(getrandom::SysRng),
            rsa::Oaep::<sha1::Sha1>::new(),
            b"oaep secret",
        )
        .unwrap();
    assert_eq!(run(&mut vm, &mut mem, 0x21, 1, 0, &ct), b"oaep secret");
    assert_eq!(
        run(&mut vm, &mut mem, 0x21, 0, 0, b"round trip"),
        b"round trip"
    );
}

/// P-384: the applet sets the SP 800-186 parameters, generates a key pair and signs with
/// ECDSA-SHA-384; p384's verifier accepts the DER signature for the point it reports.
#[test]
fn ecdsa_p384_signatures_verify_with_an_independent_verifier() {
    use p384::ecdsa::signature::hazmat::PrehashVerifier;
    use sha2::Digest;
    let (mut vm, mut mem) = card();
    let msg = b"kagi p-384 message";
    let r = run(&mut vm, &mut mem, 0x22, 0, 0, msg);
    let (w, der) = r.split_at(97);
    let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(w).expect("a P-384 point");
    let sig = p384::ecdsa::Signature::from_der(der).expect("a DER signature");
    key.verify_prehash(&sha2::Sha384::digest(msg), &sig)
        .expect("the signature verifies");
}

/// DER with a definite length (short or long form).
fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    match body.len() {
        n if n < 0x80 => v.push(n as u8),
        n if n < 0x100 => v.extend([0x81, n as u8]),
        n => v.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    v.extend_from_slice(body);
    v
}

/// `openssl dgst` verifies the DER ECDSA signature `sig` over `msg` for the point `w` on the
/// named curve whose DER OID is `curve` (a SubjectPublicKeyInfo built here, RFC 5480).
fn openssl_verifies(curve: &[u8], w: &[u8], md: &str, msg: &[u8], sig: &[u8]) {
    let alg = der(0x30, &[&hex("06072A8648CE3D0201")[..], curve].concat());
    let spki = der(0x30, &[alg, der(0x03, &[&[0u8][..], w].concat())].concat());
    let dir = std::env::temp_dir().join(format!("kagi-jcvm-curves-{}-{}", std::process::id(), md));
    std::fs::create_dir_all(&dir).unwrap();
    for (f, b) in [("pub.der", &spki[..]), ("msg", msg), ("sig", sig)] {
        std::fs::write(dir.join(f), b).unwrap();
    }
    let o = std::process::Command::new("openssl")
        .args(["dgst", md, "-verify"])
        .arg(dir.join("pub.der"))
        .args(["-keyform", "DER", "-signature"])
        .arg(dir.join("sig"))
        .arg(dir.join("msg"))
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    let _ = std::fs::remove_dir_all(&dir);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("Verified OK"),
        "openssl: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// NIST P-521 and brainpoolP256r1, set by the applet through their domain parameters (`Curves`,
/// INS 25, the parameters as `openssl ecparam -param_enc explicit` prints them): the key pair
/// the applet generates gives ECDSA signatures (SHA-512 on P-521, SHA-256 on brainpoolP256r1)
/// that the RustCrypto verifiers accept for the point W the applet reports, and not for another
/// message; ECDH of the applet's key with a point made here equals ECDH of this side's own
/// secret with W.
#[test]
fn p521_and_brainpool_p256r1_sign_and_agree_as_an_independent_implementation_checks() {
    use ecdsa::signature::hazmat::PrehashVerifier;
    use p256::elliptic_curve::sec1::ToSec1Point;
    use sha2::Digest;
    let (mut vm, mut mem) = card();
    let msg = b"kagi named curves";
    // P-521.
    let w = run(&mut vm, &mut mem, 0x25, 0, 0, &[]);
    assert_eq!((w.len(), w[0]), (133, 4), "an uncompressed P-521 point");
    let der = run(&mut vm, &mut mem, 0x25, 0, 2, msg);
    let key = p521::ecdsa::VerifyingKey::from_sec1_bytes(&w).expect("a P-521 point");
    let sig = p521::ecdsa::Signature::from_der(&der).expect("a DER signature");
    key.verify_prehash(&sha2::Sha512::digest(msg), &sig)
        .expect("the P-521 signature verifies");
    // secp521r1 is OID 1.3.132.0.35.
    openssl_verifies(&hex("06052B81040023"), &w, "-sha512", msg, &der);
    assert!(
        key.verify_prehash(&sha2::Sha512::digest(b"other"), &sig)
            .is_err()
    );
    let mut s = [0x5Au8; 66];
    s[0] = 0;
    let ours = p521::SecretKey::from_slice(&s).unwrap();
    let q = ours.public_key().to_sec1_point(false);
    let x = run(&mut vm, &mut mem, 0x25, 0, 1, q.as_bytes());
    let pk = p521::PublicKey::from_sec1_bytes(&w).unwrap();
    let expect =
        p256::elliptic_curve::ecdh::diffie_hellman(ours.to_nonzero_scalar(), pk.as_affine());
    assert_eq!(x, expect.raw_secret_bytes().to_vec(), "P-521 ECDH");
    // brainpoolP256r1.
    type Bp = bp256::BrainpoolP256r1;
    let w = run(&mut vm, &mut mem, 0x25, 1, 0, &[]);
    assert_eq!(
        (w.len(), w[0]),
        (65, 4),
        "an uncompressed brainpoolP256r1 point"
    );
    let der = run(&mut vm, &mut mem, 0x25, 1, 2, msg);
    let key = ecdsa::VerifyingKey::<Bp>::from_sec1_bytes(&w).expect("a brainpoolP256r1 point");
    let sig = ecdsa::Signature::<Bp>::from_der(&der).expect("a DER signature");
    key.verify_prehash(&sha2::Sha256::digest(msg), &sig)
        .expect("the brainpoolP256r1 signature verifies");
    // brainpoolP256r1 is OID 1.3.36.3.3.2.8.1.1.7.
    openssl_verifies(&hex("06092B2403030208010107"), &w, "-sha256", msg, &der);
    assert!(
        key.verify_prehash(&sha2::Sha256::digest(b"other"), &sig)
            .is_err()
    );
    let ours = p256::elliptic_curve::SecretKey::<Bp>::from_slice(&[0x3C; 32]).unwrap();
    let q = ours.public_key().to_sec1_point(false);
    let x = run(&mut vm, &mut mem, 0x25, 1, 1, q.as_bytes());
    let pk = p256::elliptic_curve::PublicKey::<Bp>::from_sec1_bytes(&w).unwrap();
    let expect =
        p256::elliptic_curve::ecdh::diffie_hellman(ours.to_nonzero_scalar(), pk.as_affine());
    assert_eq!(
        x,
        expect.raw_secret_bytes().to_vec(),
        "brainpoolP256r1 ECDH"
    );
}
