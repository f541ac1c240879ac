//! The catalogue of refusal codes the TSMs and the JPKI issuer answer in an
//! [`ErrorReport`](crate::ErrorReport) (`subject.reason`): what each means and what to do.
//! A code is a contract — scripts branch on it — so every code the services can answer is
//! listed here (a test scans the services' sources for codes missing from it, and for entries
//! nothing answers any more); `kagi` adds the entry's words to a refusal's `--json` as `hint`.
//!
//! Subjects: `application` (the holder's signed application), `business` (the request against
//! the TSM's records), `card` (what the card answered), `issuer` (the JPKI issuer's records),
//! `keygen` (the key made on the SIM), `protocol` (the signed-message layer and the wire),
//! `relay` (the phone's relay), `tsm` (the service itself; mostly worth a retry).

/// One refusal code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    /// The code (`business.locked`).
    pub code: &'static str,
    /// What it means and what to do, in words.
    pub meaning: &'static str,
}

const fn c(code: &'static str, meaning: &'static str) -> Code {
    Code { code, meaning }
}

/// Every refusal code, sorted by code.
pub const CODES: &[Code] = &[
    c(
        "application.bad-signature",
        "the application's signature does not verify with its certificate (or was made for another kind of application): sign it again with the My Number card",
    ),
    c(
        "application.certificate",
        "the application's signature certificate does not parse: sign it again with the My Number card",
    ),
    c(
        "application.contact",
        "the application's mail address is not usable: apply again with a valid address",
    ),
    c(
        "application.expired",
        "the My Number card's signature certificate has expired: renew the card's certificate, then apply again",
    ),
    c(
        "application.local",
        "the checker failed locally (randomness, its nonce log): retry; tell its operator if it persists",
    ),
    c(
        "application.malformed",
        "the application does not decode: make it again with kagi jpki apply",
    ),
    c(
        "application.other-card",
        "the application is signed by another My Number card than the one the phone certificate is linked to: sign with that card",
    ),
    c(
        "application.replayed",
        "the application was used before: make a fresh one",
    ),
    c(
        "application.revoked",
        "the My Number card's signature certificate is revoked: the card cannot apply",
    ),
    c(
        "application.stale",
        "the application is older than the checker accepts: make a fresh one",
    ),
    c(
        "application.unknown-issuer",
        "the signature certificate was not issued by the signature CA the checker trusts: apply with a My Number card",
    ),
    c(
        "application.version",
        "the application's format version is not supported: update kagi and apply again",
    ),
    c(
        "application.wrong-provider",
        "the application names another provider: apply for this provider",
    ),
    c(
        "application.wrong-sim",
        "the application names another SIM: apply for this SIM",
    ),
    c(
        "business.bad-card",
        "the SIM's ICCID is not valid (18-20 digits, Luhn check digit): correct it",
    ),
    c(
        "business.bad-card-certificate",
        "the SIM's key agreement certificate does not parse: send the DER certificate the card manufacturer issued",
    ),
    c(
        "business.bad-certificate",
        "the credential's certificate does not parse: send a DER X.509 certificate",
    ),
    c(
        "business.bad-privileges",
        "the requested privileges are not allowed for this install (a security domain needs the Security Domain privilege)",
    ),
    c(
        "business.card-not-active",
        "the SIM is not active (lost, changed or not yet prepared): nothing more is done on it",
    ),
    c(
        "business.card-taken",
        "the SIM is registered by another operator: only that operator may change it",
    ),
    c(
        "business.expired-certificate",
        "the credential's certificate has already expired: issue a new one",
    ),
    c(
        "business.in-progress",
        "another operation is running on the SIM: wait for it or cancel it",
    ),
    c(
        "business.locked",
        "too many wrong access codes or passwords: the download is locked; the provider must start again",
    ),
    c(
        "business.mno-not-prepared",
        "the operator's TSM could not prepare the SIM (create the domain, install the applet): see its operation, then try again",
    ),
    c(
        "business.no-card-certificate",
        "the SIM has no registered key agreement certificate: the operator registers it with the SIM",
    ),
    c(
        "business.no-issuer",
        "this SP-TSM has no JPKI issuer configured: configure [jpki_issuer] or bring a sealed credential",
    ),
    c(
        "business.no-mno-for-sim",
        "no MNO-TSM linked to this SP-TSM serves the SIM (by its ICCID prefix): the SIM's operator must be linked first ([[mno_tsm]] with its iccid_prefixes)",
    ),
    c(
        "business.no-outbox",
        "this SP-TSM has no outbox for the user's access code: configure [notify]",
    ),
    c(
        "business.not-a-provider",
        "the sender is not a service provider of this TSM",
    ),
    c(
        "business.not-active",
        "the credential is not active (suspended, revoked or not yet written)",
    ),
    c(
        "business.not-an-mno-tsm",
        "only an SP-TSM may read an MNO-TSM's SIM registry",
    ),
    c(
        "business.not-an-operator",
        "the sender may not send operator notices (lost or changed SIM)",
    ),
    c(
        "business.not-the-sims-provider",
        "the SIM is registered for another provider's security domain",
    ),
    c(
        "business.not-transferable",
        "only an active credential can be moved",
    ),
    c(
        "business.not-your-provider",
        "the sender does not act for the provider it names",
    ),
    c(
        "business.not-your-sim",
        "an operator's notice about a SIM its MNO-TSM does not serve (another operator's ICCID prefix): refused and audited",
    ),
    c(
        "business.nothing-to-do",
        "the request changes nothing (no updates given)",
    ),
    c(
        "business.nothing-to-retire",
        "no provider domain deletion was accepted for this SIM, so there is nothing to delete on it: a retire ticket exists only after a credential moved off the SIM",
    ),
    c(
        "business.op-over",
        "the operation ended (finished, cancelled or expired) while the SP-TSM was asking the issuer for its challenge: nothing was written; start a new download if it is still wanted",
    ),
    c(
        "business.pin-reset-needs-signature",
        "this SP-TSM resets a PIN only on the holder's fresh pin-reset application (kagi jpki apply --kind pin-reset, then kagi tsm provider apply-pin-reset)",
    ),
    c(
        "business.same-sim",
        "a transfer to the SIM the credential is already on: transfer to another SIM",
    ),
    c(
        "business.superseded-meanwhile",
        "the credential was moved or revoked while this transfer ran: the transfer is void and its certificate withdrawn",
    ),
    c(
        "business.unknown-card",
        "the SIM is not registered with this MNO-TSM: the operator registers it first",
    ),
    c(
        "business.unknown-credential",
        "no such credential of this provider",
    ),
    c(
        "business.unknown-operation",
        "no such operation of this party",
    ),
    c(
        "business.unknown-operator",
        "this TSM holds no issuer-domain keys of that operator",
    ),
    c(
        "business.unknown-provider",
        "this TSM holds no security-domain keys for that provider",
    ),
    c(
        "business.weak-access",
        "the access grant's attempt limit is out of range (1 to 10)",
    ),
    c(
        "business.weak-verifier",
        "the access grant's password verifier is weaker than the TSM accepts: make it with Argon2id at least at OWASP's minimum",
    ),
    c(
        "business.wrong-domain",
        "the request names another security domain than the provider's",
    ),
    c(
        "card.authentication",
        "the card refused mutual authentication (wrong keys?); not retried, as a card locks its keys after a few failures: check the key set",
    ),
    c(
        "card.identity",
        "the card on the relay is not the one the operation is for",
    ),
    c(
        "card.key-proof",
        "the key on the card does not match the certificate: the credential was not written; start again",
    ),
    c("card.malformed", "the card's answer does not parse"),
    c(
        "card.no-generated-key",
        "the applet did not answer the key it generated: is it a kagi JPKI applet with on-card key generation?",
    ),
    c(
        "card.no-key-proof",
        "the card did not answer the key proof: is the applet a kagi JPKI applet?",
    ),
    c(
        "card.no-security-domain",
        "the card has no such security domain: the operator's TSM prepares it first",
    ),
    c(
        "card.put-key",
        "PUT KEY: the card's key check values differ from the keys sent: the keys were not replaced",
    ),
    c(
        "card.refused",
        "the card refused a command (its status word is in the report)",
    ),
    c(
        "card.wallet",
        "the wallet applet did not account for every update",
    ),
    c(
        "issuer.card-certificate",
        "the SIM's key agreement certificate does not check against the card manufacturer's CA",
    ),
    c(
        "issuer.check-budget",
        "the SP-TSM made too many refused application checks within the issuer's window (refused_checks_per_minute): retry after the window (retry_after_ms), and find out why its applications are refused",
    ),
    c(
        "issuer.in-progress",
        "another request with the same idempotency key is still being answered: send it again later",
    ),
    c(
        "issuer.not-active",
        "the phone certificate is not active (revoked or suspended)",
    ),
    c(
        "issuer.not-your-provider",
        "the SP-TSM does not act for the provider it names at this issuer",
    ),
    c(
        "issuer.same-sim",
        "a transfer to the SIM the phone certificate is already on: transfer to another SIM",
    ),
    c(
        "issuer.sign-ca",
        "the issuer cannot read its signature CA or its revocation data: retry later; its operator checks the files",
    ),
    c(
        "issuer.unknown-certificate",
        "no phone certificate with that serial was issued to this SP-TSM",
    ),
    c(
        "issuer.unknown-sp-tsm",
        "the sender is not an SP-TSM this issuer serves: its operator must add it",
    ),
    c(
        "issuer.wrong-sim",
        "the transfer names another SIM than the one the phone certificate is on",
    ),
    c(
        "keygen.malformed",
        "the SIM's answer with the key it made does not decode",
    ),
    c(
        "keygen.not-this-sim",
        "the key's proof was not made by this SIM's manufacturer-certified key",
    ),
    c(
        "keygen.possession",
        "the proof of possession over the issuer's nonce does not verify with the key",
    ),
    c("keygen.random", "the issuer had no random numbers: retry"),
    c(
        "keygen.replayed",
        "this challenge was already used: ask for a fresh challenge and make the key again",
    ),
    c(
        "keygen.unknown-challenge",
        "no open challenge has this nonce for this SIM, applet and request (unknown or expired): ask for a fresh one",
    ),
    c(
        "protocol.bad-signature",
        "the message's signature does not verify with the sender's key",
    ),
    c(
        "protocol.clock-skew",
        "the message is dated in the future beyond the allowed skew: check the sender's clock",
    ),
    c(
        "protocol.expired",
        "the message's validity has passed: send a fresh one",
    ),
    c(
        "protocol.idempotency-conflict",
        "the idempotency key was used for another request: use a fresh key",
    ),
    c(
        "protocol.idempotency-key-missing",
        "a request that creates an operation needs an idempotency key",
    ),
    c(
        "protocol.issuer-answer",
        "the JPKI issuer answered something else than was asked: try again; tell the issuer's operator if it persists",
    ),
    c("protocol.malformed", "the message does not decode"),
    c(
        "protocol.misdirected",
        "the message is addressed to another party",
    ),
    c(
        "protocol.mno-answer",
        "the MNO-TSM answered something else than was asked: try again",
    ),
    c(
        "protocol.mno-sealed-keys",
        "the MNO-TSM's sealed initial keys do not open for this SP-TSM and operation: nothing was written; tell the operator",
    ),
    c(
        "protocol.not-an-answer",
        "the answer is not to the request it was expected for",
    ),
    c(
        "protocol.replayed",
        "the message was seen before (replay): send a fresh one",
    ),
    c(
        "protocol.reply-key",
        "no reply key could be made for the MNO-TSM's sealed answer: retry",
    ),
    c(
        "protocol.sp-tsm-answer",
        "the SP-TSM answered a notice with something else: it is sent again",
    ),
    c(
        "protocol.too-many",
        "too many items asked at once (at most 1000 serials)",
    ),
    c(
        "protocol.unexpected-report",
        "the relay sent a report while no order was outstanding",
    ),
    c(
        "protocol.unknown-key",
        "the sender's key is not in the receiver's trust list: its operator must add it",
    ),
    c(
        "protocol.unsupported",
        "the request is not supported by this service",
    ),
    c(
        "protocol.validity",
        "the message's validity window is wider than the receiver accepts",
    ),
    c(
        "protocol.version",
        "the message's protocol version is not supported: update the sender",
    ),
    c(
        "protocol.wrong-kind",
        "a request where an answer was expected, or the other way round",
    ),
    c(
        "relay.too-many-sessions",
        "the secure sessions of one relay session ran out; the operation continues in a new relay session",
    ),
    c(
        "relay.unavailable",
        "the relay could not reach the card: run the relay again when the card is there",
    ),
    c(
        "tsm.deadline",
        "the download stopped mid-session and its time ran out: issue it again",
    ),
    c(
        "tsm.issuer-unreachable",
        "the JPKI issuer did not answer: the download is interrupted, not failed; run the relay again later",
    ),
    c(
        "tsm.keys",
        "the TSM holds no keys for that domain (the operator's issuer-domain keys, or the provider's)",
    ),
    c(
        "tsm.mno-unreachable",
        "the MNO-TSM did not answer: run the relay again later",
    ),
    c(
        "tsm.no-mno",
        "this SP-TSM has no MNO-TSM configured: configure [mno_tsm]",
    ),
    c("tsm.random", "the TSM had no random numbers: retry"),
    c(
        "tsm.replay-store",
        "the receiver's replay log failed: retry",
    ),
    c(
        "tsm.script",
        "the TSM's operation script failed (not a SIM preparation, or an internal error): see its log",
    ),
    c(
        "tsm.sealed-content",
        "the operation's sealed content does not decode: the provider must send it again",
    ),
    c(
        "tsm.sp-tsm-unreachable",
        "the SP-TSM did not answer the operator's notice: it is sent again",
    ),
    c(
        "tsm.unknown-provider",
        "no keys for that provider at the MNO-TSM",
    ),
];

/// The catalogue entry of `code`, if it is one.
pub fn lookup(code: &str) -> Option<&'static Code> {
    CODES
        .binary_search_by(|c| c.code.cmp(code))
        .ok()
        .map(|i| &CODES[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_unique_and_well_formed() {
        for w in CODES.windows(2) {
            assert!(w[0].code < w[1].code, "{} before {}", w[0].code, w[1].code);
        }
        for c in CODES {
            let (subject, reason) = c.code.split_once('.').unwrap();
            assert!(!subject.is_empty() && !reason.is_empty(), "{}", c.code);
            assert!(
                c.code
                    .chars()
                    .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == '-' || x == '.'),
                "{}",
                c.code
            );
            assert!(!c.meaning.is_empty());
        }
        assert_eq!(
            lookup("business.locked").map(|c| c.code),
            Some("business.locked")
        );
        assert_eq!(lookup("business.lockedx"), None);
    }
}
