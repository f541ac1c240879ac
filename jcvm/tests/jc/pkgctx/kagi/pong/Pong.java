package kagi.pong;

import javacard.framework.AID;
import javacard.framework.APDU;
import javacard.framework.Applet;
import javacard.framework.ISO7816;
import javacard.framework.ISOException;
import javacard.framework.JCSystem;
import javacard.framework.Shareable;
import javacard.framework.Util;
import kagi.pkgctx.Peer;

/**
 * A Peer that, asked for its count(), asks the Relay F06B6167690401 (in mode 2 Relay asks this
 * Pong again) and answers one more than Relay answers, or 1 when Relay cannot be reached or
 * throws: Pong and Relay call each other, each call back into a context whose call is under
 * way, until the card refuses to nest deeper. Every count() adds 1 to the persistent field
 * calls. INS 01 answers calls; INS 02 sets it to 0.
 */
public class Pong extends Applet implements Peer {
    private static final byte[] RELAY = {(byte) 0xF0, 0x6B, 0x61, 0x67, 0x69, 0x04, 0x01};
    private short calls;

    public static void install(byte[] b, short off, byte len) {
        new Pong().register(b, (short) (off + 1), b[off]);
    }

    public Shareable getShareableInterfaceObject(AID client, byte param) {
        return param == 1 ? this : null;
    }

    public short count() {
        calls++;
        AID r = JCSystem.lookupAID(RELAY, (short) 0, (byte) RELAY.length);
        Peer p = r == null ? null : (Peer) JCSystem.getAppletShareableInterfaceObject(r, (byte) 1);
        if (p == null) {
            return 1;
        }
        short n;
        try {
            n = p.count();
        } catch (SecurityException e) {
            return 1;
        }
        return n < 0 ? (short) 1 : (short) (n + 1);
    }

    public void process(APDU apdu) {
        if (selectingApplet()) {
            return;
        }
        byte[] buf = apdu.getBuffer();
        switch (buf[ISO7816.OFFSET_INS]) {
            case 0x01:
                Util.setShort(buf, (short) 0, calls);
                apdu.setOutgoingAndSend((short) 0, (short) 2);
                return;
            case 0x02:
                calls = 0;
                return;
            default:
                ISOException.throwIt(ISO7816.SW_INS_NOT_SUPPORTED);
        }
    }
}
