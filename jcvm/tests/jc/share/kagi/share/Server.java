package kagi.share;

import javacard.framework.AID;
import javacard.framework.APDU;
import javacard.framework.Applet;
import javacard.framework.ISO7816;
import javacard.framework.ISOException;
import javacard.framework.JCSystem;
import javacard.framework.Shareable;
import javacard.framework.Util;

/**
 * A server applet that shares a Counter with one client applet (AID F06B6167690401) when asked
 * with parameter 1, and with nobody else. INS 01 answers its total.
 */
public class Server extends Applet implements Counter {
    private static final byte[] CLIENT = {(byte) 0xF0, 0x6B, 0x61, 0x67, 0x69, 0x04, 0x01};
    private short total;

    public static void install(byte[] b, short off, byte len) {
        new Server().register();
    }

    public Shareable getShareableInterfaceObject(AID client, byte param) {
        if (param == 1 && client != null && client.equals(CLIENT, (short) 0, (byte) CLIENT.length)) {
            return this;
        }
        return null;
    }

    public short add(short v) {
        total += v;
        return total;
    }

    public short fill(byte[] buf, short off) {
        buf[off] = 'K';
        buf[(short) (off + 1)] = 'A';
        buf[(short) (off + 2)] = 'G';
        buf[(short) (off + 3)] = 'I';
        return (short) (off + 4);
    }

    public short caller(byte[] buf, short off) {
        AID who = JCSystem.getPreviousContextAID();
        if (who == null) {
            return 0;
        }
        return who.getBytes(buf, off);
    }

    public void process(APDU apdu) {
        if (selectingApplet()) {
            return;
        }
        byte[] buf = apdu.getBuffer();
        if (buf[ISO7816.OFFSET_INS] != 0x01) {
            ISOException.throwIt(ISO7816.SW_INS_NOT_SUPPORTED);
        }
        Util.setShort(buf, (short) 0, total);
        apdu.setOutgoingAndSend((short) 0, (short) 2);
    }
}
