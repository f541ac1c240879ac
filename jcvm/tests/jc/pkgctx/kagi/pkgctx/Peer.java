package kagi.pkgctx;

import javacard.framework.Shareable;

/** What a member offers to a member of another package (the same package needs no interface). */
public interface Peer extends Shareable {
    /** The member's own count. */
    short count();
}
