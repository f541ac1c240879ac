//! The application signed with a My Number card's signature key: accepted from a valid card
//! (its serial from the certificate), refused — each with its own code — when revoked,
//! expired, forged or altered, from another CA, stale or replayed, for another SIM or
//! provider. The signatures here are made with the `rsa` crate directly over the documented
//! signed bytes (domain string + canonical body), independently of the checker.

use kagi_certs::Trust;
use kagi_certs::application::{
    Application, ApplicationError, Body, DOMAIN, DOMAIN_TRANSFER, Expect, NonceLog, VERSION, check,
    check_transfer,
};
use proptest::prelude::*;
use rsa::signature::{SignatureEncoding, Signer};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use test_pki::{BasicFacts, TestCa};

const ICCID: &str = "8981100000000000017";
const CONTACT: &str = "holder@example.jp";
const SP: &str = "demo-sp";

struct World {
    ca: TestCa,
    other_ca: TestCa,
    key: rsa::PrivateKey,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| World {
        ca: TestCa::new("JPKI for digital signature").unwrap(),
        other_ca: TestCa::new("JPKI for digital signature").unwrap(),
        key: test_pki::generate_rsa_key().unwrap(),
    })
}

fn cert(ca: &TestCa, serial: u32, from: SystemTime, until: SystemTime) -> Vec<u8> {
    use der::Encode;
    let w = world();
    ca.issue_sign(
        &w.key.to_public_key(),
        &BasicFacts::synthetic(),
        serial,
        from,
        until,
    )
    .unwrap()
    .to_der()
    .unwrap()
}

fn valid_cert(serial: u32) -> Vec<u8> {
    let now = SystemTime::now();
    cert(
        &world().ca,
        serial,
        now - Duration::from_secs(86400),
        now + Duration::from_secs(365 * 86400),
    )
}

/// The body's canonical encoding written out by hand (postcard: a byte, varint-length
/// strings, 16 raw bytes, a varint), so the layout is pinned by the test, not by the code.
fn body_bytes(b: &Body) -> Vec<u8> {
    fn varint(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let low = (n & 0x7F) as u8;
            n >>= 7;
            if n == 0 {
                out.push(low);
                return;
            }
            out.push(low | 0x80);
        }
    }
    let mut out = vec![b.version];
    for s in [&b.iccid, &b.provider, &b.subscriber_ref, &b.contact] {
        varint(s.len() as u64, &mut out);
        out.extend(s.as_bytes());
    }
    out.extend(b.nonce);
    varint(b.created_at, &mut out);
    out
}

fn sign(body: &Body) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend(body_bytes(body));
    rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(world().key.clone())
        .sign(&m)
        .to_vec()
}

fn application(body: Body, certificate: Vec<u8>) -> Vec<u8> {
    let signature = sign(&body);
    Application {
        body,
        certificate,
        signature,
    }
    .encode()
    .unwrap()
}

fn body_at(t: SystemTime) -> Body {
    Body::new(ICCID, SP, "user-42", CONTACT, t).unwrap()
}

fn trust() -> Trust {
    Trust {
        cas: vec![world().ca.certificate().clone()],
        ..Trust::default()
    }
}

fn expect() -> Expect<'static> {
    Expect {
        iccid: ICCID,
        provider: SP,
        now: SystemTime::now(),
        max_age: Duration::from_secs(600),
    }
}

fn refused(bytes: &[u8], trust: &Trust, e: &Expect) -> &'static str {
    check(bytes, trust, e).unwrap_err().code()
}

#[test]
fn a_valid_application_is_accepted_and_its_serial_is_the_certificates() {
    let body = body_at(SystemTime::now());
    assert_eq!(body.version, VERSION);
    let bytes = application(body.clone(), valid_cert(0x1234_5678));
    let v = check(&bytes, &trust(), &expect()).unwrap();
    assert_eq!(v.sign_serial, "12345678");
    assert_eq!(v.application.body, body);
    // The layout the card signs is the one written out by hand above.
    let mut m = DOMAIN.to_vec();
    m.extend(body_bytes(&body));
    assert_eq!(body.signed_bytes().unwrap(), m);
}

/// A transfer application from SIM `from` to the body's, signed over the layout written out
/// by hand: the transfer domain, the old ICCID as a length-prefixed string, the body.
fn transfer_application(body: Body, from: &str) -> Vec<u8> {
    let mut m = DOMAIN_TRANSFER.to_vec();
    m.push(from.len() as u8);
    m.extend(from.as_bytes());
    m.extend(body_bytes(&body));
    let signature = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(world().key.clone())
        .sign(&m)
        .to_vec();
    Application {
        body,
        certificate: valid_cert(0x77),
        signature,
    }
    .encode()
    .unwrap()
}

#[test]
fn a_transfer_application_binds_the_old_sim_and_passes_for_nothing_else() {
    const OLD: &str = "8981100000000000025";
    let body = body_at(SystemTime::now());
    let bytes = transfer_application(body.clone(), OLD);
    let v = check_transfer(&bytes, &trust(), &expect(), OLD).unwrap();
    assert_eq!(v.sign_serial, "77");
    assert_eq!(v.application.body.iccid, ICCID, "the new SIM");
    // Presented as the move of another SIM's credential, or as an issue application.
    let other = check_transfer(&bytes, &trust(), &expect(), "8981100000000000033");
    assert_eq!(other.unwrap_err(), ApplicationError::BadSignature);
    assert_eq!(refused(&bytes, &trust(), &expect()), "bad-signature");
    // An issue application does not pass for a transfer either.
    let issue = application(body.clone(), valid_cert(0x77));
    assert_eq!(
        check_transfer(&issue, &trust(), &expect(), OLD).unwrap_err(),
        ApplicationError::BadSignature
    );
    // The same checks as any application: the new SIM named, fresh.
    let e = Expect {
        iccid: OLD,
        ..expect()
    };
    assert_eq!(
        check_transfer(&bytes, &trust(), &e, OLD)
            .unwrap_err()
            .code(),
        "wrong-sim"
    );
    let stale = transfer_application(body_at(SystemTime::now() - Duration::from_secs(3600)), OLD);
    assert_eq!(
        check_transfer(&stale, &trust(), &expect(), OLD)
            .unwrap_err()
            .code(),
        "stale"
    );
}

#[test]
fn revoked_by_crl_or_list_is_refused() {
    let bytes = application(body_at(SystemTime::now()), valid_cert(77));
    let mut t = trust();
    t.crls.push(world().ca.crl(1, &[77]).unwrap());
    assert_eq!(refused(&bytes, &t, &expect()), "revoked");
    // A CRL of another serial leaves it alone.
    let mut t = trust();
    t.crls.push(world().ca.crl(1, &[78]).unwrap());
    assert!(check(&bytes, &t, &expect()).is_ok());
    let mut t = trust();
    t.add_revoked_list("77\n").unwrap();
    assert_eq!(refused(&bytes, &t, &expect()), "revoked");
}

#[test]
fn an_expired_certificate_is_refused() {
    let now = SystemTime::now();
    let old = cert(
        &world().ca,
        5,
        now - Duration::from_secs(400 * 86400),
        now - Duration::from_secs(86400),
    );
    let bytes = application(body_at(now), old);
    let e = check(&bytes, &trust(), &expect()).unwrap_err();
    assert_eq!(e.code(), "expired", "{e}");
    assert!(e.to_string().contains("expired"), "{e}");
}

#[test]
fn forged_or_altered_signatures_are_refused() {
    let body = body_at(SystemTime::now());
    let c = valid_cert(9);
    let mut a = Application::decode(&application(body.clone(), c.clone())).unwrap();
    a.signature[10] ^= 1;
    assert_eq!(
        refused(&a.encode().unwrap(), &trust(), &expect()),
        "bad-signature"
    );
    // The body altered after signing (another subscriber).
    let mut a = Application::decode(&application(body.clone(), c.clone())).unwrap();
    a.body.subscriber_ref = "user-43".into();
    assert_eq!(
        refused(&a.encode().unwrap(), &trust(), &expect()),
        "bad-signature"
    );
    // A signature by another key, with the victim's certificate.
    let other = test_pki::generate_rsa_key().unwrap();
    let mut m = DOMAIN.to_vec();
    m.extend(body_bytes(&body));
    let sig = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(other)
        .sign(&m)
        .to_vec();
    let forged = Application {
        body,
        certificate: c,
        signature: sig,
    };
    assert_eq!(
        refused(&forged.encode().unwrap(), &trust(), &expect()),
        "bad-signature"
    );
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let now = SystemTime::now();
    let c = cert(
        &world().other_ca,
        11,
        now - Duration::from_secs(60),
        now + Duration::from_secs(86400),
    );
    let bytes = application(body_at(now), c);
    assert_eq!(refused(&bytes, &trust(), &expect()), "unknown-issuer");
}

/// The parts of a certificate its CA's signature does not cover have one allowed form
/// (RFC 5280 4.1.1.2: the outer signatureAlgorithm is the TBS `signature` field; an RSA
/// signature is whole octets, so its BIT STRING has no unused bits). Each is changed here in
/// the DER bytes themselves, located by the DER layout written out by hand: the certificate
/// ends with `30 0D 06 09 <sha256WithRSAEncryption> 05 00 03 82 01 01 00 <256 bytes>`.
#[test]
fn a_certificate_altered_outside_what_its_ca_signed_is_refused() {
    const TAIL_ALG: [u8; 15] = [
        0x30, 0x0D, 0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B, 0x05, 0x00,
    ];
    let good = valid_cert(23);
    let end = good.len();
    let alg_at = end - 256 - 5 - TAIL_ALG.len();
    assert_eq!(good[alg_at..alg_at + 15], TAIL_ALG);
    assert_eq!(
        good[alg_at + 15..alg_at + 20],
        [0x03, 0x82, 0x01, 0x01, 0x00]
    );
    let now = SystemTime::now();
    assert!(
        check(
            &application(body_at(now), good.clone()),
            &trust(),
            &expect()
        )
        .is_ok()
    );
    // The NULL parameters become an empty OCTET STRING (05 00 -> 04 00).
    let mut params = good.clone();
    params[alg_at + 13] = 0x04;
    // The BIT STRING claims one unused bit.
    let mut unused = good.clone();
    unused[alg_at + 19] = 0x01;
    for (what, c) in [("parameters", params), ("unused bits", unused)] {
        let e = check(&application(body_at(now), c.clone()), &trust(), &expect()).unwrap_err();
        assert_eq!(e.code(), "certificate", "{what}: {e}");
        let j = kagi_certs::judge(&c, &trust(), now);
        assert_eq!(
            j.verdict,
            kagi_certs::Verdict::NotAJpkiCard,
            "{what}: {j:?}"
        );
    }
}

#[test]
fn stale_future_and_replayed_applications_are_refused() {
    let now = SystemTime::now();
    let old = application(body_at(now - Duration::from_secs(601)), valid_cert(3));
    assert_eq!(refused(&old, &trust(), &expect()), "stale");
    let future = application(body_at(now + Duration::from_secs(3600)), valid_cert(3));
    assert_eq!(refused(&future, &trust(), &expect()), "stale");
    // Inside the window: accepted once.
    let dir = std::env::temp_dir().join(format!("kagi-app-nonces-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = NonceLog::open(&dir).unwrap();
    let fresh = application(body_at(now - Duration::from_secs(500)), valid_cert(3));
    let v = check(&fresh, &trust(), &expect()).unwrap();
    log.claim(&v).unwrap();
    let again = check(&fresh, &trust(), &expect()).unwrap();
    assert_eq!(log.claim(&again), Err(ApplicationError::Replayed));
    // Eight checkers race with one new application: exactly one wins.
    let racing = application(body_at(now), valid_cert(3));
    let v = check(&racing, &trust(), &expect()).unwrap();
    let wins = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let (log, v) = (log.clone(), v.clone());
                s.spawn(move || log.claim(&v).is_ok())
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .filter(|won| *won)
            .count()
    });
    assert_eq!(wins, 1, "one claim wins, the others are replays");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn another_sim_or_provider_is_refused() {
    let now = SystemTime::now();
    let other_sim = application(
        Body::new("8981100000000000099", SP, "u", CONTACT, now).unwrap(),
        valid_cert(4),
    );
    assert_eq!(refused(&other_sim, &trust(), &expect()), "wrong-sim");
    let other_sp = application(
        Body::new(ICCID, "other-sp", "u", CONTACT, now).unwrap(),
        valid_cert(4),
    );
    assert_eq!(refused(&other_sp, &trust(), &expect()), "wrong-provider");
}

#[test]
fn an_unknown_version_is_refused() {
    let mut body = body_at(SystemTime::now());
    body.version = 1;
    let bytes = application(body, valid_cert(4));
    assert_eq!(refused(&bytes, &trust(), &expect()), "version");
}

/// The contact the access code goes to: one bare address with a domain that has a dot, as
/// RFC 5322's addr-spec writes it; a display name, a line break (a header injection), two
/// addresses, no domain or an over-long one are refused — when the body is made and, for an
/// application made otherwise, by the checker.
#[test]
fn the_contact_must_be_one_bare_mail_address() {
    let now = SystemTime::now();
    for good in ["holder@example.jp", "a.b+tag@mail.example.co.jp"] {
        assert!(Body::new(ICCID, SP, "u", good, now).is_ok(), "{good}");
    }
    let long = format!("{}@example.jp", "a".repeat(250));
    for bad in [
        "",
        "holder",
        "holder@",
        "@example.jp",
        "holder@localhost",
        "Holder <holder@example.jp>",
        "holder@example.jp\r\nBcc: x@evil.example",
        "holder@example.jp, other@example.jp",
        " holder@example.jp",
        long.as_str(),
    ] {
        let e = Body::new(ICCID, SP, "u", bad, now).unwrap_err();
        assert_eq!(e.code(), "contact", "{bad:?}");
    }
    // Made without the constructor's check: the checker refuses it before anything else.
    let mut body = body_at(now);
    body.contact = "not an address".into();
    let bytes = application(body, valid_cert(4));
    assert_eq!(refused(&bytes, &trust(), &expect()), "contact");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Application::decode(&b);
        let _ = check(&b, &trust(), &expect());
    }
}

/// Every one-bit change anywhere in a signed application (body, certificate, signature,
/// framing) is refused: all 8 × length of them, not a sample (a sample of 64 let the two
/// unsigned certificate fields above slip through in about one run in 20).
#[test]
fn every_flipped_bit_is_refused() {
    let good = application(body_at(SystemTime::now()), valid_cert(21));
    let (trust, expect) = (trust(), expect());
    assert!(check(&good, &trust, &expect).is_ok());
    let mut accepted = Vec::new();
    for i in 0..good.len() {
        for bit in 0..8 {
            let mut b = good.clone();
            b[i] ^= 1 << bit;
            if check(&b, &trust, &expect).is_ok() {
                accepted.push((i, bit));
            }
        }
    }
    assert!(
        accepted.is_empty(),
        "accepted with (byte, bit) flipped: {accepted:?}"
    );
}

/// The serials the JPKI issuer revokes linked phone certificates for: a trusted CA's CRL
/// (77 = 0x4D, 300 = 0x012C) and the plain list (0x1F), never a CRL no trusted CA signed.
#[test]
fn revoked_serials_come_from_trusted_crls_and_the_list_only() {
    let mut t = trust();
    t.crls.push(world().ca.crl(1, &[77, 300]).unwrap());
    t.crls.push(world().other_ca.crl(1, &[99]).unwrap());
    t.add_revoked_list("0x1f\n77\n").unwrap();
    assert_eq!(t.revoked_serials(), vec!["012C", "1F", "4D"]);
}

/// A CRL altered outside what its CA signed (the outer algorithm's NULL parameters, or the
/// signature BIT STRING's unused-bits count; the same DER tail as a certificate's) is not
/// taken as signed: `check_crls` refuses it.
#[test]
fn a_crl_altered_outside_what_its_ca_signed_is_refused() {
    use der::{Decode, Encode};
    let good = world().ca.crl(1, &[77]).unwrap().to_der().unwrap();
    let alg_at = good.len() - 256 - 5 - 15;
    assert_eq!(good[alg_at..alg_at + 4], [0x30, 0x0D, 0x06, 0x09]);
    assert_eq!(
        good[alg_at + 13..alg_at + 20],
        [0x05, 0x00, 0x03, 0x82, 0x01, 0x01, 0x00]
    );
    let with = |der: &[u8]| {
        let mut t = trust();
        t.crls
            .push(x509_cert::crl::CertificateList::from_der(der).unwrap());
        t
    };
    assert!(with(&good).check_crls().is_ok());
    for at in [alg_at + 13, alg_at + 19] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let t = with(&bad);
        assert!(t.check_crls().is_err(), "byte {at} changed");
        assert!(t.revoked_serials().is_empty(), "byte {at} changed");
    }
}
