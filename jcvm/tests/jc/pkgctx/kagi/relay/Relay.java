package kagi.relay;

import javacard.framework.AID;
import javacard.framework.APDU;
import javacard.framework.Applet;
import javacard.framework.ISO7816;
import javacard.framework.ISOException;
import javacard.framework.JCSystem;
import javacard.framework.Shareable;
import kagi.pkgctx.Peer;
import kagi.share.Counter;

/**
 * A Peer in a package of its own that, asked for its count(), calls on into a third context:
 * mode 0 (INS 01, P1 = 0) adds 1 to the kagi.share Server's total (the Server grants only to the
 * instance F06B6167690401, so install Relay under that AID) and answers it; mode 1 asks the
 * kagi.pkgctx member F06B6167690502 for its count (from a call that member's package started:
 * a call back into a context whose call is under way); mode 2 asks the kagi.pong Pong
 * F06B6167690701 (which asks Relay again). FFFE when the object is refused, FFFF for a
 * SecurityException.
 */
public class Relay extends Applet implements Peer {
    private static final byte[] SERVER = {(byte) 0xF0, 0x6B, 0x61, 0x67, 0x69, 0x03, 0x01};
    private static final byte[] MEMBER = {(byte) 0xF0, 0x6B, 0x61, 0x67, 0x69, 0x05, 0x02};
    private static final byte[] PONG = {(byte) 0xF0, 0x6B, 0x61, 0x67, 0x69, 0x07, 0x01};
    private byte mode;

    public static void install(byte[] b, short off, byte len) {
        new Relay().register(b, (short) (off + 1), b[off]);
    }

    public Shareable getShareableInterfaceObject(AID client, byte param) {
        return param == 1 ? this : null;
    }

    public short count() {
        try {
            if (mode == 0) {
                AID s = JCSystem.lookupAID(SERVER, (short) 0, (byte) SERVER.length);
                Counter c = s == null ? null : (Counter) JCSystem.getAppletShareableInterfaceObject(s, (byte) 1);
                return c == null ? (short) -2 : c.add((short) 1);
            }
            byte[] peer = mode == 1 ? MEMBER : PONG;
            AID m = JCSystem.lookupAID(peer, (short) 0, (byte) peer.length);
            Peer p = m == null ? null : (Peer) JCSystem.getAppletShareableInterfaceObject(m, (byte) 1);
            return p == null ? (short) -2 : p.count();
        } catch (SecurityException e) {
            return (short) -1;
        }
    }

    public void process(APDU apdu) {
        if (selectingApplet()) {
            return;
        }
        byte[] buf = apdu.getBuffer();
        if (buf[ISO7816.OFFSET_INS] != 0x01) {
            ISOException.throwIt(ISO7816.SW_INS_NOT_SUPPORTED);
        }
        mode = buf[ISO7816.OFFSET_P1];
    }
}
