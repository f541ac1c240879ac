// kagi's conformance applet for its Java Card VM: each instruction exercises a group of
// bytecodes or API methods; the Rust tests (jcvm/tests/conformance.rs) work out the
// expected answers from this source by hand.
package kagi.conf;

import javacard.framework.APDU;
import javacard.framework.CardRuntimeException;
import javacard.framework.SystemException;
import javacard.framework.TransactionException;
import javacard.framework.Applet;
import javacard.framework.ISO7816;
import javacard.framework.ISOException;
import javacard.framework.JCSystem;
import javacard.framework.OwnerPIN;
import javacard.framework.Util;
import javacard.security.AESKey;
import javacard.security.KeyBuilder;

public class Conf extends Applet {
    private byte[] persistent;
    private short counter;
    private int bigCounter;
    private byte[] onDeselect;
    private byte[] onReset;
    private Shape[] shapes;
    private OwnerPIN pin;
    private static short staticCounter = 7;
    private static final byte[] TABLE = {1, 2, 3, 4, 5};
    private static byte sb = 5;
    private static int si = 100000;
    private static Object sa;
    private byte fb;
    private byte[] nonAtomic;
    private short deselects;
    private Object kept;
    private AESKey tk;

    private Conf(byte[] b, short off, byte len) {
        persistent = new byte[8];
        nonAtomic = new byte[8];
        onDeselect = JCSystem.makeTransientByteArray((short) 4, JCSystem.CLEAR_ON_DESELECT);
        onReset = JCSystem.makeTransientByteArray((short) 4, JCSystem.CLEAR_ON_RESET);
        shapes = new Shape[3];
        shapes[0] = new Square((short) 5);
        shapes[1] = new Rect((short) 3, (short) 7);
        shapes[2] = new Cube((short) 2);
        pin = new OwnerPIN((byte) 3, (byte) 8);
        pin.update(new byte[] {0x31, 0x32, 0x33, 0x34}, (short) 0, (byte) 4);
        register(b, (short) (off + 1), b[off]);
    }

    public static void install(byte[] b, short off, byte len) {
        new Conf(b, off, len);
    }

    public void process(APDU apdu) {
        if (selectingApplet()) {
            return;
        }
        byte[] buf = apdu.getBuffer();
        short lc = apdu.setIncomingAndReceive();
        short n = 0;
        switch (buf[ISO7816.OFFSET_INS]) {
            case 0x01: n = shortMath(buf); break;
            case 0x02: n = intMath(buf); break;
            case 0x03: n = arrays(buf); break;
            case 0x04: n = switches(buf); break;
            case 0x05: n = dispatch(buf); break;
            case 0x06: n = throwing(buf); break;
            case 0x07: n = transactions(buf); break;
            case 0x08:
                onDeselect[0] = buf[ISO7816.OFFSET_P1];
                onReset[0] = buf[ISO7816.OFFSET_P2];
                break;
            case 0x09:
                buf[0] = onDeselect[0];
                buf[1] = onReset[0];
                n = 2;
                break;
            case 0x0A:
                while (buf[0] != 0x7F) {
                    counter++;
                }
                break;
            case 0x0B: n = recurse((short) 0); break;
            case 0x0C: ISOException.throwIt(Util.getShort(buf, ISO7816.OFFSET_P1)); break;
            case 0x0D:
                counter++;
                bigCounter += 100000;
                staticCounter++;
                Util.setShort(buf, (short) 0, counter);
                buf[2] = (byte) (bigCounter >> 24);
                buf[3] = (byte) (bigCounter >> 16);
                buf[4] = (byte) (bigCounter >> 8);
                buf[5] = (byte) bigCounter;
                Util.setShort(buf, (short) 6, staticCounter);
                n = 8;
                break;
            case 0x0E: n = loop(buf); break;
            case 0x0F: n = casts(buf); break;
            case 0x10: n = util(buf, lc); break;
            case 0x11: n = lc; Util.arrayCopyNonAtomic(buf, ISO7816.OFFSET_CDATA, buf, (short) 0, lc); break;
            case 0x12: n = pins(buf, lc); break;
            case 0x13: n = more(buf); break;
            case 0x14: n = aids(buf, lc); break;
            case 0x15: n = apiExceptions(buf); break;
            case 0x16: n = txSemantics(buf, lc); break;
            case 0x17: n = tearing(buf); break;
            case 0x18: n = Crypto.ecdsa(buf, lc); break;
            case 0x19: n = Crypto.rsaSign(buf, lc); break;
            case 0x1A: n = Crypto.aes(buf, lc); break;
            case 0x1B: n = Crypto.digest(buf, lc); break;
            case 0x1C: n = Crypto.ecdh(buf, lc); break;
            case 0x1D: n = Crypto.unsupported(buf); break;
            case 0x1E: n = Crypto.rsaCipher(buf, lc); break;
            case 0x1F: n = partial(apdu, buf); break;
            case 0x20: n = Crypto.pss(buf, lc); break;
            case 0x21: n = Crypto.oaep(buf, lc); break;
            case 0x22: n = Crypto.ecdsa384(buf, lc); break;
            case 0x23:
                Util.setShort(buf, (short) 0, deselects);
                buf[2] = onDeselect[0];
                n = 3;
                break;
            case 0x24: n = garbage(buf); break;
            case 0x25: n = Curves.run(buf, lc); break;
            case 0x26: n = aesKey(buf); break;
            case 0x27: n = Util.setShort(buf, (short) 0, jsrSlot(Util.getShort(buf, ISO7816.OFFSET_CDATA))); break;
            case (byte) 0xC0: n = rest(buf); break;
            default: ISOException.throwIt(ISO7816.SW_INS_NOT_SUPPORTED);
        }
        apdu.setOutgoingAndSend((short) 0, n);
    }

    public void deselect() {
        deselects++;
    }

    // P1 byte arrays made and dropped at once, then `kept` replaced by a new short[2] (the
    // old one dropped); P2 = 1: requestObjectDeletion. Answers isObjectDeletionSupported and
    // the length of the `kept` found on entry (0 when null).
    private short garbage(byte[] buf) {
        buf[1] = kept == null ? (byte) 0 : (byte) ((short[]) kept).length;
        byte n = buf[ISO7816.OFFSET_P1];
        for (byte i = 0; i < n; i++) {
            byte[] g = new byte[8];
            g[0] = i;
        }
        kept = new short[2];
        if (buf[ISO7816.OFFSET_P2] == 1) {
            JCSystem.requestObjectDeletion();
        }
        buf[0] = JCSystem.isObjectDeletionSupported() ? (byte) 1 : (byte) 0;
        return 2;
    }

    // INS 26: P1 0 builds an AES-128 key of KeyBuilder type P2 (15 persistent, 13 transient
    // clear-on-reset, 14 transient clear-on-deselect) set from the 16 data bytes; then (any
    // P1) answers whether the key is initialised.
    private short aesKey(byte[] buf) {
        if (buf[ISO7816.OFFSET_P1] == 0) {
            tk = (AESKey) KeyBuilder.buildKey(buf[ISO7816.OFFSET_P2], KeyBuilder.LENGTH_AES_128, false);
            tk.setKey(buf, ISO7816.OFFSET_CDATA);
        }
        buf[0] = tk.isInitialized() ? (byte) 1 : (byte) 0;
        return 1;
    }

    // INS 27: jsrSlot(x), x from the data. javac no longer emits jsr/ret: the VM's test
    // replaces this method's bytecode with a jsr/ret subroutine. As written: x * 3 + 7.
    private static short jsrSlot(short x) {
        short a = (short) (x * 3);
        short b = (short) (a + 7);
        short c = (short) (b - 1);
        short d = (short) (c + 1);
        return d;
    }

    private static short put(byte[] buf, short at, short v) {
        return Util.setShort(buf, at, v);
    }

    private static short putInt(byte[] buf, short at, int v) {
        buf[at] = (byte) (v >> 24);
        buf[(short) (at + 1)] = (byte) (v >> 16);
        buf[(short) (at + 2)] = (byte) (v >> 8);
        buf[(short) (at + 3)] = (byte) v;
        return (short) (at + 4);
    }

    private static int getInt(byte[] buf, short at) {
        return ((buf[at] & 0xFF) << 24) | ((buf[(short) (at + 1)] & 0xFF) << 16)
            | ((buf[(short) (at + 2)] & 0xFF) << 8) | (buf[(short) (at + 3)] & 0xFF);
    }

    private short shortMath(byte[] buf) {
        short a = Util.getShort(buf, (short) 5);
        short b = Util.getShort(buf, (short) 7);
        short o = 0;
        o = put(buf, o, (short) (a + b));
        o = put(buf, o, (short) (a - b));
        o = put(buf, o, (short) (a * b));
        o = put(buf, o, (short) (a / b));
        o = put(buf, o, (short) (a % b));
        o = put(buf, o, (short) (a << 3));
        o = put(buf, o, (short) (a >> 3));
        o = put(buf, o, (short) (a >>> 3));
        o = put(buf, o, (short) -a);
        o = put(buf, o, (short) (a & b));
        o = put(buf, o, (short) (a | b));
        o = put(buf, o, (short) (a ^ b));
        o = put(buf, o, (short) (byte) a);
        short c = a;
        c += 100;
        o = put(buf, o, c);
        c += 1000;
        o = put(buf, o, c);
        o = put(buf, o, (short) (a < b ? 1 : (a == b ? 2 : 3)));
        return o;
    }

    private short intMath(byte[] buf) {
        int a = getInt(buf, (short) 5);
        int b = getInt(buf, (short) 9);
        short o = 0;
        o = putInt(buf, o, a + b);
        o = putInt(buf, o, a - b);
        o = putInt(buf, o, a * b);
        o = putInt(buf, o, a / b);
        o = putInt(buf, o, a % b);
        o = putInt(buf, o, a << 5);
        o = putInt(buf, o, a >> 5);
        o = putInt(buf, o, a >>> 5);
        o = putInt(buf, o, -a);
        o = putInt(buf, o, a & b);
        o = putInt(buf, o, a | b);
        o = putInt(buf, o, a ^ b);
        int c = a;
        c += 70000;
        o = putInt(buf, o, c);
        o = put(buf, o, (short) a);
        buf[o++] = (byte) (a < b ? 1 : (a == b ? 2 : 3));
        return o;
    }

    private short arrays(byte[] buf) {
        short i = buf[ISO7816.OFFSET_P1];
        byte[] bs = new byte[4];
        short[] ss = new short[4];
        int[] is = new int[4];
        boolean[] zs = new boolean[4];
        Object[] os = new Object[2];
        for (short k = 0; k < 4; k++) {
            bs[k] = (byte) (k * 100);
            ss[k] = (short) (k * 10000);
            is[k] = k * 1000000;
            zs[k] = (k & 1) == 1;
        }
        os[0] = bs;
        short o = 0;
        try {
            o = put(buf, o, (short) bs[i]);
            o = put(buf, o, ss[i]);
            o = putInt(buf, o, is[i]);
            buf[o++] = (byte) (zs[i] ? 1 : 0);
            buf[o++] = (byte) (os[0] == bs ? 1 : 0);
            buf[o++] = (byte) (os[1] == null ? 1 : 0);
            o = put(buf, o, (short) (bs.length + ss.length + is.length + os.length + TABLE.length + TABLE[4]));
        } catch (ArrayIndexOutOfBoundsException e) {
            o = put(buf, (short) 0, (short) 0x0A0B);
        }
        try {
            byte[] none = (byte[]) os[1];
            buf[o++] = none[0];
        } catch (NullPointerException e) {
            o = put(buf, o, (short) 0x0E0E);
        }
        try {
            short[] neg = new short[(short) (i - 10)];
            o = put(buf, o, (short) neg.length);
        } catch (NegativeArraySizeException e) {
            o = put(buf, o, (short) 0x0D0D);
        }
        return o;
    }

    private short switches(byte[] buf) {
        short p1 = buf[ISO7816.OFFSET_P1];
        short r1;
        switch (p1) {
            case 0: r1 = 10; break;
            case 1: r1 = 11; break;
            case 2: r1 = 12; break;
            case 3: r1 = 13; break;
            default: r1 = -1;
        }
        short r2;
        switch (p1) {
            case -100: r2 = 1; break;
            case 7: r2 = 2; break;
            case 1000: r2 = 3; break;
            case 31: r2 = 4; break;
            default: r2 = 0;
        }
        int key = p1 * 100000;
        short r3;
        switch (key) {
            case 0: r3 = 20; break;
            case 100000: r3 = 21; break;
            case 200000: r3 = 22; break;
            case 300000: r3 = 23; break;
            default: r3 = -2;
        }
        short r4;
        switch (key) {
            case -700000: r4 = 5; break;
            case 3100000: r4 = 6; break;
            default: r4 = -3;
        }
        short o = put(buf, (short) 0, r1);
        o = put(buf, o, r2);
        o = put(buf, o, r3);
        return put(buf, o, r4);
    }

    private short dispatch(byte[] buf) {
        short o = 0;
        for (short k = 0; k < 3; k++) {
            o = put(buf, o, shapes[k].area());
            o = put(buf, o, ((Named) shapes[k]).id());
            o = put(buf, o, shapes[k].twice());
        }
        return o;
    }

    private short recurseThrow(short depth, short at) throws Oops {
        if (depth == at) {
            Oops e = new Oops();
            e.depth = depth;
            throw e;
        }
        return (short) (recurseThrow((short) (depth + 1), at) + 1);
    }

    private short throwing(byte[] buf) {
        short at = buf[ISO7816.OFFSET_P1];
        short o = 0;
        short fin = 0;
        try {
            o = put(buf, o, recurseThrow((short) 0, at));
        } catch (Oops e) {
            o = put(buf, o, (short) (0x100 + e.depth));
        } finally {
            fin = 1;
        }
        o = put(buf, o, fin);
        try {
            ISOException.throwIt((short) 0x6A88);
        } catch (ISOException e) {
            o = put(buf, o, e.getReason());
        }
        try {
            short z = (short) (at - at);
            o = put(buf, o, (short) (at / z));
        } catch (ArithmeticException e) {
            o = put(buf, o, (short) 0xAE);
        }
        return o;
    }

    private short transactions(byte[] buf) {
        persistent[0] = 1;
        JCSystem.beginTransaction();
        persistent[0] = 2;
        counter = 500;
        buf[0] = JCSystem.getTransactionDepth();
        JCSystem.abortTransaction();
        buf[1] = persistent[0];
        JCSystem.beginTransaction();
        persistent[1] = 3;
        JCSystem.commitTransaction();
        buf[2] = persistent[1];
        buf[3] = JCSystem.getTransactionDepth();
        Util.setShort(buf, (short) 4, counter);
        buf[6] = JCSystem.isTransient(onDeselect);
        buf[7] = JCSystem.isTransient(persistent);
        return 8;
    }

    private short recurse(short d) {
        return (short) (recurse((short) (d + 1)) + 1);
    }

    private short loop(byte[] buf) {
        short n = Util.getShort(buf, (short) 5);
        short sum = 0;
        for (short i = 0; i < n; i++) {
            sum += (short) (i ^ 0x55);
        }
        return put(buf, (short) 0, sum);
    }

    private short casts(byte[] buf) {
        Object a = shapes[0];
        Object b = shapes[2];
        Object c = persistent;
        short bits = 0;
        if (a instanceof Shape) bits |= 1;
        if (a instanceof Square) bits |= 2;
        if (a instanceof Rect) bits |= 4;
        if (b instanceof Square) bits |= 8;
        if (b instanceof Named) bits |= 0x10;
        if (c instanceof byte[]) bits |= 0x20;
        if (c instanceof short[]) bits |= 0x40;
        if (shapes instanceof Object[]) bits |= 0x80;
        short o = put(buf, (short) 0, bits);
        try {
            Rect r = (Rect) a;
            o = put(buf, o, r.area());
        } catch (ClassCastException e) {
            o = put(buf, o, (short) 0xCC);
        }
        Square s = (Square) b;
        return put(buf, o, s.area());
    }

    private short util(byte[] buf, short lc) {
        short o = 0;
        byte[] x = {1, 2, 3};
        byte[] y = {1, 2, 4};
        buf[o++] = Util.arrayCompare(x, (short) 0, y, (short) 0, (short) 3);
        buf[o++] = Util.arrayCompare(y, (short) 0, x, (short) 0, (short) 3);
        buf[o++] = Util.arrayCompare(x, (short) 0, y, (short) 0, (short) 2);
        o = put(buf, o, Util.makeShort((byte) 0x12, (byte) 0xF0));
        Util.arrayFillNonAtomic(buf, o, (short) 3, (byte) 0x5A);
        o += 3;
        o = Util.arrayCopy(x, (short) 0, buf, o, (short) 3);
        try {
            Util.arrayCopy(x, (short) 1, buf, o, (short) 3);
        } catch (ArrayIndexOutOfBoundsException e) {
            buf[o++] = (byte) 0xAA;
        }
        return o;
    }

    private int twice(int x) {
        return x * 2;
    }

    private Conf self() {
        return this;
    }

    private short more(byte[] buf) {
        byte key = buf[ISO7816.OFFSET_P2];
        short o = 0;
        sb += 3;
        si += 7;
        sa = persistent;
        fb = (byte) (sb * 2);
        buf[o++] = sb;
        o = putInt(buf, o, si);
        buf[o++] = self().fb;
        buf[o++] = (byte) (sa == persistent ? 1 : 0);
        Object none = null;
        buf[o++] = (byte) (none == null ? 1 : 0);
        short[] ss = new short[2];
        int[] is = new int[2];
        ss[1] += 9;
        is[1] += 70000;
        short k = 3;
        short m = (short) (ss[0] = k);
        twice(5);
        o = put(buf, o, ss[1]);
        o = putInt(buf, o, is[1]);
        o = put(buf, o, (short) (m + ss[0]));
        short r;
        switch (key) {
            case -100: r = 1; break;
            case 7: r = 2; break;
            case 100: r = 3; break;
            case 31: r = 4; break;
            default: r = 0;
        }
        return put(buf, o, r);
    }

    private short aids(byte[] buf, short lc) {
        javacard.framework.AID me = JCSystem.getAID();
        byte[] copy = new byte[16];
        byte len = me.getBytes(copy, (short) 0);
        buf[0] = (byte) (me.equals(buf, ISO7816.OFFSET_CDATA, (byte) lc) ? 1 : 0);
        buf[1] = (byte) (me.partialEquals(buf, ISO7816.OFFSET_CDATA, (byte) 5) ? 1 : 0);
        buf[2] = (byte) (JCSystem.lookupAID(copy, (short) 0, len) == me ? 1 : 0);
        buf[3] = len;
        Util.arrayCopyNonAtomic(copy, (short) 0, buf, (short) 4, len);
        return (short) (4 + len);
    }

    private short apiExceptions(byte[] buf) {
        short o = 0;
        try {
            JCSystem.commitTransaction();
        } catch (TransactionException e) {
            o = put(buf, o, e.getReason());
        }
        try {
            JCSystem.makeTransientByteArray((short) 2, (byte) 9);
        } catch (SystemException e) {
            o = put(buf, o, e.getReason());
        }
        try {
            ISOException.throwIt((short) 0x6A80);
        } catch (CardRuntimeException e) {
            o = put(buf, o, e.getReason());
        }
        Object x = null;
        try {
            buf[o] = (byte) (x.equals(buf) ? 1 : 2);
        } catch (NullPointerException e) {
            buf[o] = 0x4E;
        }
        o++;
        return o;
    }

    private short pins(byte[] buf, short lc) {
        buf[0] = (byte) (pin.check(buf, ISO7816.OFFSET_CDATA, (byte) lc) ? 1 : 0);
        buf[1] = pin.getTriesRemaining();
        buf[2] = (byte) (pin.isValidated() ? 1 : 0);
        return 3;
    }

    // Transaction semantics of JC 3.0.5: PIN presentation and the non-atomic Util methods do
    // not join a transaction, transient arrays never do, fields and atomic copies do.
    private short txSemantics(byte[] buf, short lc) {
        if (buf[ISO7816.OFFSET_P1] == 0) {
            JCSystem.beginTransaction();
            buf[0] = (byte) (pin.check(buf, ISO7816.OFFSET_CDATA, (byte) lc) ? 1 : 0);
            JCSystem.abortTransaction();
            buf[1] = pin.getTriesRemaining();
            buf[2] = (byte) (pin.isValidated() ? 1 : 0);
            return 3;
        }
        byte[] a = nonAtomic;
        Util.arrayFillNonAtomic(a, (short) 0, (short) 8, (byte) 0);
        counter = 10;
        onReset[0] = 1;
        JCSystem.beginTransaction();
        a[0] = 0x11;
        Util.arrayFillNonAtomic(a, (short) 1, (short) 2, (byte) 0x22);
        Util.arrayCopyNonAtomic(TABLE, (short) 0, a, (short) 3, (short) 2);
        Util.arrayCopy(TABLE, (short) 2, a, (short) 5, (short) 2);
        a[7] = 0x77;
        counter = 77;
        onReset[0] = 5;
        JCSystem.abortTransaction();
        Util.arrayCopyNonAtomic(a, (short) 0, buf, (short) 0, (short) 8);
        put(buf, (short) 8, counter);
        buf[10] = onReset[0];
        return 11;
    }

    // Four persistent writes in one command (P1 0), the same inside a transaction (P1 1), or
    // read them back (P1 2): the tearing tests cut power between them.
    private short tearing(byte[] buf) {
        byte[] a = nonAtomic;
        byte p1 = buf[ISO7816.OFFSET_P1];
        if (p1 == 2) {
            Util.arrayCopyNonAtomic(a, (short) 0, buf, (short) 0, (short) 3);
            return put(buf, (short) 3, counter);
        }
        if (p1 == 1) {
            JCSystem.beginTransaction();
        }
        a[0] = buf[ISO7816.OFFSET_CDATA];
        a[1] = buf[(short) (ISO7816.OFFSET_CDATA + 1)];
        counter = Util.getShort(buf, (short) (ISO7816.OFFSET_CDATA + 2));
        a[2] = buf[(short) (ISO7816.OFFSET_CDATA + 4)];
        if (p1 == 1) {
            JCSystem.commitTransaction();
        }
        return 0;
    }

    // INS 1F: sends 256 bytes (0, 1, ... 255), then throws 612C: 44 more bytes wait for the
    // applet's own GET RESPONSE (INS C0: 44 bytes of C0), as IsoApplet answers long data.
    private short partial(APDU apdu, byte[] buf) {
        for (short i = 0; i < 256; i++) {
            buf[i] = (byte) i;
        }
        apdu.setOutgoing();
        apdu.setOutgoingLength((short) 256);
        apdu.sendBytes((short) 0, (short) 256);
        onDeselect[0] = 44;
        ISOException.throwIt((short) 0x612C);
        return 0;
    }

    private short rest(byte[] buf) {
        short n = onDeselect[0];
        if (n == 0) {
            ISOException.throwIt(ISO7816.SW_CONDITIONS_NOT_SATISFIED);
        }
        onDeselect[0] = 0;
        Util.arrayFillNonAtomic(buf, (short) 0, n, (byte) 0xC0);
        return n;
    }
}
