// kagi's conformance applet for extended length APDUs (javacardx.apdu.ExtendedLength): it
// answers the command data, its length (2 bytes), then the data again.
package kagi.conf;

import javacard.framework.APDU;
import javacard.framework.Applet;
import javacard.framework.JCSystem;
import javacard.framework.Util;
import javacardx.apdu.ExtendedLength;

public class Ext extends Applet implements ExtendedLength {
    private byte[] len;

    private Ext() {
        len = JCSystem.makeTransientByteArray((short) 2, JCSystem.CLEAR_ON_DESELECT);
    }

    public static void install(byte[] b, short off, byte l) {
        new Ext().register(b, (short) (off + 1), b[off]);
    }

    public void process(APDU apdu) {
        if (selectingApplet()) {
            return;
        }
        byte[] buf = apdu.getBuffer();
        short lc = apdu.setIncomingAndReceive();
        short off = apdu.getOffsetCdata();
        Util.setShort(len, (short) 0, lc);
        apdu.setOutgoing();
        apdu.setOutgoingLength((short) (2 * lc + 2));
        apdu.sendBytesLong(buf, off, lc);
        apdu.sendBytesLong(len, (short) 0, (short) 2);
        apdu.sendBytesLong(buf, off, lc);
    }
}
