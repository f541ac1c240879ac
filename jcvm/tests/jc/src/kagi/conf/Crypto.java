// kagi's conformance applet, crypto part: each instruction uses javacard.security /
// javacardx.crypto and answers values the Rust tests (jcvm/tests/crypto.rs) check with
// independent RustCrypto computations.
package kagi.conf;

import javacard.framework.ISO7816;
import javacard.framework.Util;
import javacard.security.AESKey;
import javacard.security.CryptoException;
import javacard.security.ECPrivateKey;
import javacard.security.ECPublicKey;
import javacard.security.KeyAgreement;
import javacard.security.KeyBuilder;
import javacard.security.KeyPair;
import javacard.security.MessageDigest;
import javacard.security.RSAPublicKey;
import javacard.security.Signature;
import javacardx.crypto.Cipher;

final class Crypto {
    // P-256 domain parameters (SEC 2 v2 2.4.2), set by the applet as IsoApplet does.
    private static final byte[] P = {
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF,
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF};
    private static final byte[] A = {
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF,
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFC};
    private static final byte[] B = {
        0x5A, (byte) 0xC6, 0x35, (byte) 0xD8, (byte) 0xAA, 0x3A, (byte) 0x93, (byte) 0xE7,
        (byte) 0xB3, (byte) 0xEB, (byte) 0xBD, 0x55, 0x76, (byte) 0x98, (byte) 0x86, (byte) 0xBC,
        0x65, 0x1D, 0x06, (byte) 0xB0, (byte) 0xCC, 0x53, (byte) 0xB0, (byte) 0xF6, 0x3B,
        (byte) 0xCE, 0x3C, 0x3E, 0x27, (byte) 0xD2, 0x60, 0x4B};
    private static final byte[] G = {
        0x04, 0x6B, 0x17, (byte) 0xD1, (byte) 0xF2, (byte) 0xE1, 0x2C, 0x42, 0x47, (byte) 0xF8,
        (byte) 0xBC, (byte) 0xE6, (byte) 0xE5, 0x63, (byte) 0xA4, 0x40, (byte) 0xF2, 0x77, 0x03,
        0x7D, (byte) 0x81, 0x2D, (byte) 0xEB, 0x33, (byte) 0xA0, (byte) 0xF4, (byte) 0xA1, 0x39,
        0x45, (byte) 0xD8, (byte) 0x98, (byte) 0xC2, (byte) 0x96, 0x4F, (byte) 0xE3, 0x42,
        (byte) 0xE2, (byte) 0xFE, 0x1A, 0x7F, (byte) 0x9B, (byte) 0x8E, (byte) 0xE7, (byte) 0xEB,
        0x4A, 0x7C, 0x0F, (byte) 0x9E, 0x16, 0x2B, (byte) 0xCE, 0x33, 0x57, 0x6B, 0x31, 0x5E,
        (byte) 0xCE, (byte) 0xCB, (byte) 0xB6, 0x40, 0x68, 0x37, (byte) 0xBF, 0x51, (byte) 0xF5};
    private static final byte[] R = {
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, 0, 0, 0, 0, (byte) 0xFF, (byte) 0xFF,
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xBC,
        (byte) 0xE6, (byte) 0xFA, (byte) 0xAD, (byte) 0xA7, 0x17, (byte) 0x9E, (byte) 0x84,
        (byte) 0xF3, (byte) 0xB9, (byte) 0xCA, (byte) 0xC2, (byte) 0xFC, 0x63, 0x25, 0x51};

    private static final byte[] P384_P = {
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF,
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF,
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF,
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFE,
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF};
    private static final byte[] P384_A = {
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF,
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF,
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF,
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFE,
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFC};
    private static final byte[] P384_B = {
        (byte) 0xB3, 0x31, 0x2F, (byte) 0xA7, (byte) 0xE2, 0x3E, (byte) 0xE7, (byte) 0xE4,
        (byte) 0x98, (byte) 0x8E, 0x05, 0x6B, (byte) 0xE3, (byte) 0xF8, 0x2D, 0x19,
        0x18, 0x1D, (byte) 0x9C, 0x6E, (byte) 0xFE, (byte) 0x81, 0x41, 0x12,
        0x03, 0x14, 0x08, (byte) 0x8F, 0x50, 0x13, (byte) 0x87, 0x5A,
        (byte) 0xC6, 0x56, 0x39, (byte) 0x8D, (byte) 0x8A, 0x2E, (byte) 0xD1, (byte) 0x9D,
        0x2A, (byte) 0x85, (byte) 0xC8, (byte) 0xED, (byte) 0xD3, (byte) 0xEC, 0x2A, (byte) 0xEF};
    private static final byte[] P384_G = {
        0x04, (byte) 0xAA, (byte) 0x87, (byte) 0xCA, 0x22, (byte) 0xBE, (byte) 0x8B, 0x05,
        0x37, (byte) 0x8E, (byte) 0xB1, (byte) 0xC7, 0x1E, (byte) 0xF3, 0x20, (byte) 0xAD,
        0x74, 0x6E, 0x1D, 0x3B, 0x62, (byte) 0x8B, (byte) 0xA7, (byte) 0x9B,
        (byte) 0x98, 0x59, (byte) 0xF7, 0x41, (byte) 0xE0, (byte) 0x82, 0x54, 0x2A,
        0x38, 0x55, 0x02, (byte) 0xF2, 0x5D, (byte) 0xBF, 0x55, 0x29,
        0x6C, 0x3A, 0x54, 0x5E, 0x38, 0x72, 0x76, 0x0A,
        (byte) 0xB7, 0x36, 0x17, (byte) 0xDE, 0x4A, (byte) 0x96, 0x26, 0x2C,
        0x6F, 0x5D, (byte) 0x9E, (byte) 0x98, (byte) 0xBF, (byte) 0x92, (byte) 0x92, (byte) 0xDC,
        0x29, (byte) 0xF8, (byte) 0xF4, 0x1D, (byte) 0xBD, 0x28, (byte) 0x9A, 0x14,
        0x7C, (byte) 0xE9, (byte) 0xDA, 0x31, 0x13, (byte) 0xB5, (byte) 0xF0, (byte) 0xB8,
        (byte) 0xC0, 0x0A, 0x60, (byte) 0xB1, (byte) 0xCE, 0x1D, 0x7E, (byte) 0x81,
        (byte) 0x9D, 0x7A, 0x43, 0x1D, 0x7C, (byte) 0x90, (byte) 0xEA, 0x0E,
        0x5F};
    private static final byte[] P384_R = {
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF,
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF,
        (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF,
        (byte) 0xC7, 0x63, 0x4D, (byte) 0x81, (byte) 0xF4, 0x37, 0x2D, (byte) 0xDF,
        0x58, 0x1A, 0x0D, (byte) 0xB2, 0x48, (byte) 0xB0, (byte) 0xA7, 0x7A,
        (byte) 0xEC, (byte) 0xEC, 0x19, 0x6A, (byte) 0xCC, (byte) 0xC5, 0x29, 0x73};

    private static KeyPair ec;
    private static KeyPair rsa;

    private static void params(ECPublicKey k) {
        k.setFieldFP(P, (short) 0, (short) 32);
        k.setA(A, (short) 0, (short) 32);
        k.setB(B, (short) 0, (short) 32);
        k.setG(G, (short) 0, (short) 65);
        k.setR(R, (short) 0, (short) 32);
        k.setK((short) 1);
    }

    private static void params(ECPrivateKey k) {
        k.setFieldFP(P, (short) 0, (short) 32);
        k.setA(A, (short) 0, (short) 32);
        k.setB(B, (short) 0, (short) 32);
        k.setG(G, (short) 0, (short) 65);
        k.setR(R, (short) 0, (short) 32);
        k.setK((short) 1);
    }

    // INS 18: P1 0 makes a P-256 key pair (KeyBuilder keys + parameters), P1 1 keeps it; then
    // signs the command data with ECDSA-SHA-256 (P2 0) or SHA-1 (P2 1). Answer: W (65) ‖ DER.
    static short ecdsa(byte[] buf, short lc) {
        if (buf[ISO7816.OFFSET_P1] == 0 || ec == null) {
            ECPublicKey pub = (ECPublicKey) KeyBuilder.buildKey(
                KeyBuilder.TYPE_EC_FP_PUBLIC, KeyBuilder.LENGTH_EC_FP_256, false);
            ECPrivateKey priv = (ECPrivateKey) KeyBuilder.buildKey(
                KeyBuilder.TYPE_EC_FP_PRIVATE, KeyBuilder.LENGTH_EC_FP_256, false);
            params(pub);
            params(priv);
            ec = new KeyPair(pub, priv);
            ec.genKeyPair();
        }
        Signature s = Signature.getInstance(
            buf[ISO7816.OFFSET_P2] == 0 ? Signature.ALG_ECDSA_SHA_256 : Signature.ALG_ECDSA_SHA,
            false);
        s.init(ec.getPrivate(), Signature.MODE_SIGN);
        byte[] tmp = new byte[80];
        short n = s.sign(buf, ISO7816.OFFSET_CDATA, lc, tmp, (short) 0);
        short w = ((ECPublicKey) ec.getPublic()).getW(buf, (short) 0);
        Util.arrayCopyNonAtomic(tmp, (short) 0, buf, w, n);
        return (short) (w + n);
    }

    // INS 19: P1 0 generates an RSA-CRT key pair of P2*256 bits, P1 1 keeps it; signs the data
    // with RSA-SHA-256-PKCS1. Answer: exponent length, exponent, signature. P1 2: the modulus.
    static short rsaSign(byte[] buf, short lc) {
        byte p1 = buf[ISO7816.OFFSET_P1];
        if (p1 == 2) {
            return ((RSAPublicKey) rsa.getPublic()).getModulus(buf, (short) 0);
        }
        if (p1 == 0 || rsa == null) {
            rsa = new KeyPair(KeyPair.ALG_RSA_CRT, (short) ((buf[ISO7816.OFFSET_P2] & 0xFF) * 256));
            rsa.genKeyPair();
        }
        Signature s = Signature.getInstance(Signature.ALG_RSA_SHA_256_PKCS1, false);
        s.init(rsa.getPrivate(), Signature.MODE_SIGN);
        byte[] tmp = new byte[512];
        short n = s.sign(buf, ISO7816.OFFSET_CDATA, lc, tmp, (short) 0);
        short e = ((RSAPublicKey) rsa.getPublic()).getExponent(buf, (short) 1);
        buf[0] = (byte) e;
        short o = (short) (1 + e);
        Util.arrayCopyNonAtomic(tmp, (short) 0, buf, o, n);
        return (short) (o + n);
    }

    // INS 1A: AES ECB or CBC (P2 0/1, zero IV) encryption (P1 0) or decryption (P1 1); data
    // is key (16) ‖ blocks.
    static short aes(byte[] buf, short lc) {
        AESKey k = (AESKey) KeyBuilder.buildKey(KeyBuilder.TYPE_AES, KeyBuilder.LENGTH_AES_128, false);
        k.setKey(buf, ISO7816.OFFSET_CDATA);
        Cipher c = Cipher.getInstance(buf[ISO7816.OFFSET_P2] == 0
            ? Cipher.ALG_AES_BLOCK_128_ECB_NOPAD : Cipher.ALG_AES_BLOCK_128_CBC_NOPAD, false);
        c.init(k, buf[ISO7816.OFFSET_P1] == 0 ? Cipher.MODE_ENCRYPT : Cipher.MODE_DECRYPT);
        return c.doFinal(buf, (short) (ISO7816.OFFSET_CDATA + 16), (short) (lc - 16), buf, (short) 0);
    }

    // INS 1B: SHA-1 (P1 1), SHA-256 (4), SHA-384 (5), SHA-512 (6) of the data, in two parts.
    static short digest(byte[] buf, short lc) {
        MessageDigest d = MessageDigest.getInstance(buf[ISO7816.OFFSET_P1], false);
        short half = (short) (lc / 2);
        d.update(buf, ISO7816.OFFSET_CDATA, half);
        return d.doFinal(buf, (short) (ISO7816.OFFSET_CDATA + half), (short) (lc - half), buf, (short) 0);
    }

    // INS 1C: ECDH (plain x) of the P-256 key of INS 18 with the point in the data.
    static short ecdh(byte[] buf, short lc) {
        KeyAgreement ka = KeyAgreement.getInstance(KeyAgreement.ALG_EC_SVDP_DH_PLAIN, false);
        ka.init(ec.getPrivate());
        byte[] tmp = new byte[65];
        Util.arrayCopyNonAtomic(buf, ISO7816.OFFSET_CDATA, tmp, (short) 0, lc);
        return ka.generateSecret(tmp, (short) 0, lc, buf, (short) 0);
    }

    // INS 1D: an algorithm kagi lacks (DSA): the CryptoException reason, caught by the applet.
    static short unsupported(byte[] buf) {
        try {
            Signature.getInstance(Signature.ALG_DSA_SHA, false);
            return Util.setShort(buf, (short) 0, (short) 0);
        } catch (CryptoException e) {
            return Util.setShort(buf, (short) 0, e.getReason());
        }
    }

    // INS 1E: RSA PKCS#1 encryption with the public key of INS 19, then decryption with its
    // private key (P1 0); or the ciphertext only (P1 1).
    static short rsaCipher(byte[] buf, short lc) {
        Cipher c = Cipher.getInstance(Cipher.ALG_RSA_PKCS1, false);
        c.init(rsa.getPublic(), Cipher.MODE_ENCRYPT);
        byte[] tmp = new byte[512];
        short n = c.doFinal(buf, ISO7816.OFFSET_CDATA, lc, tmp, (short) 0);
        if (buf[ISO7816.OFFSET_P1] == 1) {
            Util.arrayCopyNonAtomic(tmp, (short) 0, buf, (short) 0, n);
            return n;
        }
        c.init(rsa.getPrivate(), Cipher.MODE_DECRYPT);
        return c.doFinal(tmp, (short) 0, n, buf, (short) 0);
    }

    // INS 20: RSA-SHA-256-PSS signature of the data with the key pair of INS 19.
    static short pss(byte[] buf, short lc) {
        Signature s = Signature.getInstance(Signature.ALG_RSA_SHA_256_PKCS1_PSS, false);
        s.init(rsa.getPrivate(), Signature.MODE_SIGN);
        byte[] tmp = new byte[512];
        short n = s.sign(buf, ISO7816.OFFSET_CDATA, lc, tmp, (short) 0);
        Util.arrayCopyNonAtomic(tmp, (short) 0, buf, (short) 0, n);
        return n;
    }

    // INS 21: RSA-OAEP (SHA-1) decryption of the data with the private key of INS 19 (P1 1),
    // or encryption with its public key then decryption (P1 0).
    static short oaep(byte[] buf, short lc) {
        Cipher c = Cipher.getInstance(Cipher.ALG_RSA_PKCS1_OAEP, false);
        byte[] tmp = new byte[512];
        short n = lc;
        Util.arrayCopyNonAtomic(buf, ISO7816.OFFSET_CDATA, tmp, (short) 0, lc);
        if (buf[ISO7816.OFFSET_P1] == 0) {
            c.init(rsa.getPublic(), Cipher.MODE_ENCRYPT);
            n = c.doFinal(buf, ISO7816.OFFSET_CDATA, lc, tmp, (short) 0);
        }
        c.init(rsa.getPrivate(), Cipher.MODE_DECRYPT);
        return c.doFinal(tmp, (short) 0, n, buf, (short) 0);
    }

    // INS 22: a P-384 key pair (parameters set by the applet, as for P-256), ECDSA-SHA-384 of
    // the data. Answer: W (97) ‖ DER signature.
    static short ecdsa384(byte[] buf, short lc) {
        KeyPair kp = new KeyPair(KeyPair.ALG_EC_FP, KeyBuilder.LENGTH_EC_FP_384);
        ECPublicKey pub = (ECPublicKey) kp.getPublic();
        ECPrivateKey priv = (ECPrivateKey) kp.getPrivate();
        pub.setFieldFP(P384_P, (short) 0, (short) 48);
        pub.setA(P384_A, (short) 0, (short) 48);
        pub.setB(P384_B, (short) 0, (short) 48);
        pub.setG(P384_G, (short) 0, (short) 97);
        pub.setR(P384_R, (short) 0, (short) 48);
        pub.setK((short) 1);
        priv.setFieldFP(P384_P, (short) 0, (short) 48);
        priv.setA(P384_A, (short) 0, (short) 48);
        priv.setB(P384_B, (short) 0, (short) 48);
        priv.setG(P384_G, (short) 0, (short) 97);
        priv.setR(P384_R, (short) 0, (short) 48);
        priv.setK((short) 1);
        kp.genKeyPair();
        Signature s = Signature.getInstance(Signature.ALG_ECDSA_SHA_384, false);
        s.init(priv, Signature.MODE_SIGN);
        byte[] tmp = new byte[112];
        short n = s.sign(buf, ISO7816.OFFSET_CDATA, lc, tmp, (short) 0);
        short w = pub.getW(buf, (short) 0);
        Util.arrayCopyNonAtomic(tmp, (short) 0, buf, w, n);
        return (short) (w + n);
    }
}
