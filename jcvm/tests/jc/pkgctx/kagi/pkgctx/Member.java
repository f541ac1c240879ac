package kagi.pkgctx;

import javacard.framework.AID;
import javacard.framework.APDU;
import javacard.framework.Applet;
import javacard.framework.ISO7816;
import javacard.framework.ISOException;
import javacard.framework.JCSystem;
import javacard.framework.MultiSelectable;
import javacard.framework.Shareable;
import javacard.framework.Util;

/**
 * Two (or more) instances of this applet share their package's context (Java Card 3.0.5 runtime
 * environment specification, section 6.1.2: one context per package): its static fields and
 * every object either instance made.
 * INS 01: hits (a static) and own (a field) each one more; answers hits, own.
 * INS 02: board[P2] = P1, board a static array made by whichever instance comes first.
 * INS 03: answers board[P2] (00 when there is no board yet).
 * INS 04: data = a sibling instance's AID: gets its object through the JCRE (parameter 1) and
 *         answers its own field, read directly (a field of another context would throw
 *         SecurityException): 6982 when that happens, 6A83 when the sibling refuses.
 * INS 05: answers JCSystem.getAID().
 * INS 06: drops the board and requests object deletion.
 * INS 07: data = an applet's AID: gets its Peer (parameter 1) and answers its count(): a
 *         sibling's own field, or what another package's Peer answers (6A83: refused).
 * INS 08: scratch[0] = P1 (scratch: CLEAR_ON_DESELECT). INS 09: answers scratch[0] and how
 *         this instance was last selected: 00 Applet.select(), 01 MultiSelectable.select(false),
 *         02 MultiSelectable.select(true).
 */
public class Member extends Applet implements Peer, MultiSelectable {
    private static short hits;
    private static byte[] board;
    private short own;
    private byte how;
    private final byte[] scratch;

    private Member() {
        scratch = JCSystem.makeTransientByteArray((short) 2, JCSystem.CLEAR_ON_DESELECT);
    }

    public static void install(byte[] b, short off, byte len) {
        new Member().register(b, (short) (off + 1), b[off]);
    }

    public boolean select() {
        how = 0;
        return true;
    }

    public boolean select(boolean appInstAlreadyActive) {
        how = appInstAlreadyActive ? (byte) 2 : (byte) 1;
        return true;
    }

    public void deselect(boolean appInstStillActive) {
    }

    public Shareable getShareableInterfaceObject(AID client, byte param) {
        return param == 1 ? this : null;
    }

    public short count() {
        return own;
    }

    public void process(APDU apdu) {
        if (selectingApplet()) {
            return;
        }
        byte[] buf = apdu.getBuffer();
        switch (buf[ISO7816.OFFSET_INS]) {
            case 0x01:
                hits++;
                own++;
                Util.setShort(buf, (short) 0, hits);
                Util.setShort(buf, (short) 2, own);
                apdu.setOutgoingAndSend((short) 0, (short) 4);
                return;
            case 0x02:
                if (board == null) {
                    board = new byte[8];
                }
                board[buf[ISO7816.OFFSET_P2]] = buf[ISO7816.OFFSET_P1];
                return;
            case 0x03:
                buf[0] = board == null ? 0 : board[buf[ISO7816.OFFSET_P2]];
                apdu.setOutgoingAndSend((short) 0, (short) 1);
                return;
            case 0x04: {
                short n = apdu.setIncomingAndReceive();
                AID sibling = JCSystem.lookupAID(buf, ISO7816.OFFSET_CDATA, (byte) n);
                if (sibling == null) {
                    ISOException.throwIt(ISO7816.SW_FILE_NOT_FOUND);
                }
                Shareable s = JCSystem.getAppletShareableInterfaceObject(sibling, (byte) 1);
                if (s == null) {
                    ISOException.throwIt(ISO7816.SW_RECORD_NOT_FOUND);
                }
                short theirs = 0;
                try {
                    theirs = ((Member) s).own;
                } catch (SecurityException e) {
                    ISOException.throwIt(ISO7816.SW_SECURITY_STATUS_NOT_SATISFIED);
                }
                Util.setShort(buf, (short) 0, theirs);
                apdu.setOutgoingAndSend((short) 0, (short) 2);
                return;
            }
            case 0x05: {
                byte n = JCSystem.getAID().getBytes(buf, (short) 0);
                apdu.setOutgoingAndSend((short) 0, n);
                return;
            }
            case 0x06:
                board = null;
                JCSystem.requestObjectDeletion();
                return;
            case 0x07: {
                short n = apdu.setIncomingAndReceive();
                AID who = JCSystem.lookupAID(buf, ISO7816.OFFSET_CDATA, (byte) n);
                Peer peer = who == null ? null : (Peer) JCSystem.getAppletShareableInterfaceObject(who, (byte) 1);
                if (peer == null) {
                    ISOException.throwIt(ISO7816.SW_RECORD_NOT_FOUND);
                }
                Util.setShort(buf, (short) 0, peer.count());
                apdu.setOutgoingAndSend((short) 0, (short) 2);
                return;
            }
            case 0x08:
                scratch[0] = buf[ISO7816.OFFSET_P1];
                return;
            case 0x09:
                buf[0] = scratch[0];
                buf[1] = how;
                apdu.setOutgoingAndSend((short) 0, (short) 2);
                return;
            default:
                ISOException.throwIt(ISO7816.SW_INS_NOT_SUPPORTED);
        }
    }
}
