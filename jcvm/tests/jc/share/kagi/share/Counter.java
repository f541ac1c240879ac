package kagi.share;

import javacard.framework.Shareable;

/** The server's shareable interface: what another package's applet may call. */
public interface Counter extends Shareable {
    /** Adds v to the server's persistent total; returns the new total. */
    short add(short v);

    /** Writes "KAGI" into buf at off; returns off + 4. */
    short fill(byte[] buf, short off);

    /** Writes the caller's AID (JCSystem.getPreviousContextAID) into buf at off; returns its length. */
    short caller(byte[] buf, short off);
}
