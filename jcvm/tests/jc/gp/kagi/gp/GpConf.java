package kagi.gp;

import javacard.framework.APDU;
import javacard.framework.Applet;
import javacard.framework.ISO7816;
import javacard.framework.ISOException;
import org.globalplatform.GPSystem;

/**
 * Conformance applet for org.globalplatform.GPSystem (GlobalPlatform Card API 1.6): the card
 * manager's life-cycle states as an applet sees and changes them.
 *
 * INS 01: card state, own state now, own state seen in the constructor (during install).
 * INS 02: setCardContentState(P1): the result (01/00) and the state after.
 * INS 03: lockCard(), terminateCard() results and the card state after.
 */
public class GpConf extends Applet {
    private byte atInstall;

    private GpConf() {
        atInstall = GPSystem.getCardContentState();
    }

    public static void install(byte[] b, short off, byte len) {
        new GpConf().register();
    }

    public void process(APDU apdu) {
        if (selectingApplet()) {
            return;
        }
        byte[] buf = apdu.getBuffer();
        switch (buf[ISO7816.OFFSET_INS]) {
            case (byte) 0x01:
                buf[0] = GPSystem.getCardState();
                buf[1] = GPSystem.getCardContentState();
                buf[2] = atInstall;
                apdu.setOutgoingAndSend((short) 0, (short) 3);
                return;
            case (byte) 0x02:
                boolean ok = GPSystem.setCardContentState(buf[ISO7816.OFFSET_P1]);
                buf[0] = ok ? (byte) 1 : (byte) 0;
                buf[1] = GPSystem.getCardContentState();
                apdu.setOutgoingAndSend((short) 0, (short) 2);
                return;
            case (byte) 0x03:
                buf[0] = GPSystem.lockCard() ? (byte) 1 : (byte) 0;
                buf[1] = GPSystem.terminateCard() ? (byte) 1 : (byte) 0;
                buf[2] = GPSystem.getCardState();
                apdu.setOutgoingAndSend((short) 0, (short) 3);
                return;
            default:
                ISOException.throwIt(ISO7816.SW_INS_NOT_SUPPORTED);
        }
    }
}
