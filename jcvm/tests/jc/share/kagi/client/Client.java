package kagi.client;

import javacard.framework.AID;
import javacard.framework.APDU;
import javacard.framework.Applet;
import javacard.framework.ISO7816;
import javacard.framework.ISOException;
import javacard.framework.JCSystem;
import javacard.framework.Util;
import kagi.share.Counter;

/**
 * A client applet in another package: gets the server's Counter through the JCRE and calls it.
 * INS 01 (P1 = parameter): get the shareable object, answer 01 (got it) or 00 (refused).
 * INS 02 (P1P2 = v): add(v), answer the total. INS 03: fill(APDU buffer): answers "KAGI".
 * INS 04: fill(an array of the client's own): SecurityException expected, answered 6982.
 * INS 05: caller(APDU buffer): the AID the server saw calling.
 */
public class Client extends Applet {
    private static final byte[] SERVER = {(byte) 0xF0, 0x6B, 0x61, 0x67, 0x69, 0x03, 0x01};
    private Counter counter;
    private byte[] mine;

    private Client() {
        mine = new byte[8];
    }

    public static void install(byte[] b, short off, byte len) {
        new Client().register();
    }

    public void process(APDU apdu) {
        if (selectingApplet()) {
            return;
        }
        byte[] buf = apdu.getBuffer();
        byte ins = buf[ISO7816.OFFSET_INS];
        if (ins == 0x01) {
            AID server = JCSystem.lookupAID(SERVER, (short) 0, (byte) SERVER.length);
            if (server == null) {
                ISOException.throwIt(ISO7816.SW_FILE_NOT_FOUND);
            }
            counter = (Counter) JCSystem.getAppletShareableInterfaceObject(server, buf[ISO7816.OFFSET_P1]);
            buf[0] = counter == null ? (byte) 0 : (byte) 1;
            apdu.setOutgoingAndSend((short) 0, (short) 1);
            return;
        }
        if (counter == null) {
            ISOException.throwIt(ISO7816.SW_RECORD_NOT_FOUND);
        }
        switch (ins) {
            case 0x02:
                short total = counter.add(Util.getShort(buf, ISO7816.OFFSET_P1));
                Util.setShort(buf, (short) 0, total);
                apdu.setOutgoingAndSend((short) 0, (short) 2);
                return;
            case 0x03:
                short end = counter.fill(buf, (short) 0);
                apdu.setOutgoingAndSend((short) 0, end);
                return;
            case 0x04:
                try {
                    counter.fill(mine, (short) 0);
                } catch (SecurityException e) {
                    ISOException.throwIt(ISO7816.SW_SECURITY_STATUS_NOT_SATISFIED);
                }
                Util.arrayCopyNonAtomic(mine, (short) 0, buf, (short) 0, (short) 4);
                apdu.setOutgoingAndSend((short) 0, (short) 4);
                return;
            case 0x05:
                short n = counter.caller(buf, (short) 0);
                apdu.setOutgoingAndSend((short) 0, n);
                return;
            default:
                ISOException.throwIt(ISO7816.SW_INS_NOT_SUPPORTED);
        }
    }
}
